//! Error bodies in the shapes Graph and Entra ID use.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde_json::json;
use uuid::Uuid;

/// A Graph failure, rendered as
/// `{"error":{"code","message","innerError":{"request-id","date"}}}`.
#[derive(Debug)]
pub struct GraphError {
    status: StatusCode,
    code: String,
    message: String,
    /// Where to restart (410 Gone).
    location: Option<String>,
}

impl GraphError {
    pub fn new(status: StatusCode, code: &str, message: &str) -> Self {
        GraphError {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            location: None,
        }
    }

    pub fn bad_request(code: &str, message: &str) -> Self {
        GraphError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_location(mut self, location: &str) -> Self {
        self.location = Some(location.to_owned());
        self
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let request_id = Uuid::new_v4().to_string();
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "request-id": request_id,
                    "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                }
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert("request-id", value);
        }
        if let Some(value) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(header::LOCATION, value);
        }
        response
    }
}

/// An Entra ID (AADSTS) token endpoint failure.
pub struct EntraError {
    pub status: StatusCode,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
}

impl EntraError {
    pub fn bad_request(error: &'static str, code: u32, text: String) -> Self {
        EntraError {
            status: StatusCode::BAD_REQUEST,
            error,
            code,
            text,
        }
    }

    pub fn invalid_client(code: u32, text: String) -> Self {
        EntraError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            code,
            text,
        }
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let trace_id = Uuid::new_v4().to_string();
        let correlation_id = Uuid::new_v4().to_string();
        let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.code, self.text
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        (self.status, Json(body)).into_response()
    }
}
