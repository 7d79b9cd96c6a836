//! The crate's one error type at the library boundary.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error("PKI: {0}")]
    Pki(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("state file {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("external broker: {0}")]
    Broker(String),
    #[error("not supported with this broker: {0}")]
    Unsupported(String),
}

impl BackendError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BackendError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;
