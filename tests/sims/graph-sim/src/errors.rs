//! Error bodies in the shapes Graph and Entra ID use.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde_json::json;
use uuid::Uuid;

/// `{"error":{"code","message","innerError":{"request-id","date"}}}`.
pub fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = Uuid::new_v4().to_string();
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "request-id": request_id,
                "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            }
        }
    });
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// A Graph error that also tells the client where to restart (410 Gone and friends).
pub fn graph_error_with_location(status: StatusCode, code: &str, message: &str, location: &str) -> Response {
    let mut response = graph_error(status, code, message);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

pub fn bad_request(code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, code, message)
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
