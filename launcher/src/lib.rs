//! The Spacelift-compatible launcher.
//!
//! Code map:
//! - [`settings`]: the validated configuration every other module reads.
//! - [`ports`]: the traits the core talks to (`Backend`, `ContainerRuntime`, `BinaryStore`).
//! - The core, on those traits: [`supervisor`] (the event loop: dedupe, slots, drain,
//!   signals, status for heartbeats), [`run`] (one run from claim to removed container,
//!   with its lease and log batching), [`outbox`] (ordered, retrying delivery of a run's
//!   reports), [`container_spec`] (the run container as a pure function), [`masking`],
//!   [`reaper`] (leftovers of an earlier launcher), [`lifecycle`] (signal stages, exit
//!   outcome, the library's `Error`), [`metrics`].
//! - [`app`]: wires the production adapters to the core (`app::run`); `main.rs` is the CLI.
//!
//! See `docs/ARCHITECTURE.md` for the whole picture and the invariants.

pub mod app;
pub mod backend;
pub mod backoff;
pub mod binaries;
pub mod config;
pub mod container_spec;
pub mod credentials;
pub mod data_dir;
pub mod docker;
pub mod image_ref;
pub mod init_policy;
pub mod interruption;
pub mod lifecycle;
pub mod logging;
pub mod masking;
pub mod metrics;
pub mod outbox;
pub mod ports;
pub mod reaper;
pub mod run;
pub mod secret;
pub mod settings;
pub mod supervisor;
pub mod tls;

#[cfg(test)]
mod testing;

pub use lifecycle::{Error, ExitOutcome, Signal};
pub use supervisor::{status_channel, Ports, Supervisor};

/// Spacelift's documented default runner image.
pub const DEFAULT_RUNNER_IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:latest";

/// This launcher's version, sent at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
