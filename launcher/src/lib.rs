//! The Spacelift-compatible launcher: registers one worker with a Spacelift worker pool,
//! takes its runs over MQTT and HTTPS, and runs each in a Docker container, with the core
//! (supervisor, runs, outbox) on the traits of [`ports`] and the production adapters wired
//! by [`app::run`]. The code map, boundaries and invariants are in `docs/ARCHITECTURE.md`.

pub mod app;
pub mod backend;
pub mod backoff;
pub mod binaries;
pub mod cache_counters;
pub mod config;
pub mod container_spec;
pub mod cred_helper;
pub mod credentials;
pub mod data_dir;
pub mod docker;
pub mod error;
pub mod image_ref;
pub mod init_policy;
pub mod interruption;
pub mod lifecycle;
pub mod logging;
pub mod masking;
pub mod metrics;
mod net;
pub mod outbox;
pub mod ports;
pub mod reaper;
pub mod registry_auth;
pub mod run;
pub mod secret;
pub mod settings;
pub mod supervisor;
pub mod tls;
pub mod workspace;

mod clock;
#[cfg(test)]
mod testing;

pub use error::{Error, Fatal};
pub use lifecycle::{ExitOutcome, Signal};
pub use supervisor::{status_channel, Ports, Supervisor};

/// Spacelift's documented default runner image.
pub const DEFAULT_RUNNER_IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:latest";

/// This launcher's version, sent at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
