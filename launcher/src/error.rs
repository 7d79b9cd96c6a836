//! The launcher library's one error type, and the fatal failures that end the process
//! (apart from `lifecycle` so that every layer can name them without the signal machinery).

use thiserror::Error;

use crate::ports::{BackendError, RuntimeError};

/// The launcher library's error. Messages say what to check; none carries a secret.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "the Spacelift backend refused this worker pool's credentials ({0}); check that \
         SPACELIFT_TOKEN and SPACELIFT_POOL_PRIVATE_KEY belong to the same worker pool, that \
         the pool still exists, and that its certificate has not been reset"
    )]
    Unauthorized(String),
    #[error("Docker daemon: {0} (check DOCKER_HOST and that the daemon is running)")]
    Docker(#[from] RuntimeError),
    #[error("Spacelift backend: {0}")]
    Backend(BackendError),
    #[error("the backend's message channel (MQTT) closed and will not reconnect")]
    EventsClosed,
    /// The MQTT session stopped for good (its message says what to check).
    #[error("{0}")]
    Mqtt(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        match e {
            BackendError::Unauthorized { message } => Error::Unauthorized(message),
            other => Error::Backend(other),
        }
    }
}

/// A failure that ends the process (retrying cannot help): what kind, and its message. The
/// one type on both paths to the supervisor: the core's own backend calls send it through
/// [`crate::outbox::FatalTx`], the MQTT session's end comes through
/// [`crate::supervisor::Supervisor::with_fatal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// The backend (HTTPS or MQTT) refused the pool's credentials; its own words.
    Unauthorized(String),
    /// The MQTT session stopped for good for another reason; its message says what to check.
    Mqtt(String),
    /// The backend's message channel closed with no error recorded.
    EventsClosed,
}

impl From<Fatal> for Error {
    fn from(f: Fatal) -> Error {
        match f {
            Fatal::Unauthorized(m) => Error::Unauthorized(m),
            Fatal::Mqtt(m) => Error::Mqtt(m),
            Fatal::EventsClosed => Error::EventsClosed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_says_what_to_check() {
        let e: Error = BackendError::Unauthorized {
            message: "401".into(),
        }
        .into();
        let msg = e.to_string();
        assert!(msg.contains("SPACELIFT_TOKEN") && msg.contains("SPACELIFT_POOL_PRIVATE_KEY"));
    }
}
