//! Protocol v1: the wire contract between the launcher and a Spacelift-like backend.
//!
//! Spacelift's real payload schemas are not public; this is our own, versioned protocol
//! (see `docs/protocol.md`). Both the launcher and the fake backend depend on this crate and
//! on nothing of each other. Every type tolerates unknown fields so either side can grow.
//!
//! - [`token`]: the `SPACELIFT_TOKEN` contents and its decoding.
//! - [`topics`]: MQTT topic names.
//! - [`messages`]: MQTT payloads, server -> worker and worker -> server.
//! - [`api`]: HTTPS request and response bodies and their paths.
//! - [`run_state`]: the run state machine.
//! - [`arch`]: CPU architectures as Docker and the backend name them.
//! - [`duration`]: Go durations (`1h30m`), the one duration syntax of the suite.

pub mod api;
pub mod arch;
pub mod duration;
pub mod error;
pub mod messages;
pub mod run_state;
#[doc(hidden)]
pub mod test_support;
pub mod token;
pub mod topics;

pub use arch::Arch;
pub use error::ProtocolError;
pub use run_state::{RunState, TransitionError};

/// The protocol version this crate speaks. Sent at registration; a backend may refuse others.
pub const PROTOCOL_VERSION: u32 = 1;
