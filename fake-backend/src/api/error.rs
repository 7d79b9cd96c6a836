//! The HTTPS API's error answer, and how the rules' refusals map to status codes: kept
//! here so the rules know nothing of HTTP.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::api::{error_codes, ErrorBody};

use crate::rules::RuleError;

/// An HTTPS error answer: status, protocol error body, optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(code, message),
            retry_after_s: None,
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> ApiError {
        match e {
            RuleError::Invalid(m) => ApiError::new(400, error_codes::BAD_REQUEST, m),
            RuleError::NotRegistered(m) => ApiError::new(403, error_codes::FORBIDDEN, m),
            RuleError::NotFound(m) => ApiError::new(404, error_codes::NOT_FOUND, m),
            RuleError::Conflict { message, current } => {
                let mut e = ApiError::new(409, error_codes::CONFLICT, message);
                e.body.error.current_state = Some(current);
                e
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body)).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
