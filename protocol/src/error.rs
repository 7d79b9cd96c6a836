use thiserror::Error;

/// Errors from decoding protocol data.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// Text that should be base64 is not; `offset` is the first bad byte.
    #[error("{what}: unable to base64 decode: illegal base64 data at input byte {offset}")]
    Base64 { what: String, offset: usize },
    /// Base64 decoded, but the bytes are not the JSON we expect.
    #[error("{what}: not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// JSON parsed, but a required value is missing or empty.
    #[error("{what}: {field} is missing or empty")]
    MissingField { what: String, field: &'static str },
    /// A value that parsed but is not one we accept.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}
