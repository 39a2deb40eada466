//! The error body every PBX endpoint answers with, plus the status it travels with.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: HTTP status, machine-readable code and the optional
/// `field` / `existing_id` / `Retry-After` details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    existing_id: Option<String>,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    field: Option<&'a str>,
    existing_id: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            existing_id: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_field(field)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(field: &str, existing_id: &str) -> Self {
        let mut error = Self::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{field} is already used by user {existing_id}"),
        )
        .with_field(field);
        error.existing_id = Some(existing_id.to_owned());
        error
    }

    pub fn stale(current_version: u64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "stale",
            format!("If-Match does not match the current version {current_version}"),
        )
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message).with_field(field)
    }

    pub fn rate_limited(retry_after: Option<u64>) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests");
        error.retry_after = retry_after;
        error
    }

    /// The error an injected status fault answers with, or `None` when the
    /// status is not one the contract lets a PBX send spontaneously.
    pub fn injected(
        status: u16,
        retry_after: Option<u64>,
        field: Option<&str>,
        message: Option<String>,
    ) -> Option<Self> {
        let mut error = match status {
            422 => Self::validation(
                field?,
                message.unwrap_or_else(|| format!("{} is not accepted", field.unwrap_or_default())),
            ),
            401 => Self::unauthorized(),
            429 => Self::rate_limited(None),
            500 | 502 | 503 | 504 => Self::new(
                StatusCode::from_u16(status).ok()?,
                "unavailable",
                "the PBX is temporarily unavailable",
            ),
            _ => return None,
        };
        error.retry_after = retry_after;
        Some(error)
    }

    /// A 429: the PBX asked the client to slow down.
    pub fn is_rate_limited(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body the error is answered with.
    pub fn body(&self) -> Bytes {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
            existing_id: self.existing_id.as_deref(),
        };
        crate::company::to_json_bytes(&body)
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let mut response = (self.status, headers, self.body()).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
