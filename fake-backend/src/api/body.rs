//! JSON in and out for the HTTPS API: bodies are capped at 1 MiB (413), malformed ones
//! get 400, and every error is a `protocol::api::ErrorBody`.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use protocol::api::error_codes;
use serde::de::DeserializeOwned;

use super::ApiError;

pub const MAX_BODY: usize = 1 << 20;

/// A JSON body of type `T`, or a protocol error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let too_large = || {
            ApiError::new(
                413,
                error_codes::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                if format!("{e:?}").contains("LengthLimit")
                    || e.to_string().contains("length limit")
                {
                    too_large()
                } else {
                    ApiError::new(400, error_codes::BAD_REQUEST, format!("reading body: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError::new(
                400,
                error_codes::BAD_REQUEST,
                format!("request body is not the expected JSON: {e}"),
            )
        })
    }
}
