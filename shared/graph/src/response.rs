//! Turning Graph answers into pages or classified errors.

use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::pages::{self, Collection};
use crate::retry::{describe, is_transient_status, retry_after, transport_error, AttemptError, Transient};
use crate::{urls, GraphError};

/// Error codes (case-insensitive) with which Graph declares a delta token unusable.
const RESYNC_CODES: [&str; 3] = ["syncStateNotFound", "syncStateInvalid", "resyncRequired"];
const CONSENT_MISSING_CODE: &str = "Authorization_RequestDenied";

/// Graph's error body: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Reads a response: a success body as a collection page whose links point at
/// `graph_base_url`, anything else as a classified failure.
pub(crate) async fn read_page<T: DeserializeOwned>(
    graph_base_url: &str,
    request_url: &Url,
    response: reqwest::Response,
) -> Result<Collection<T>, AttemptError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(body) => body,
        // A connection cut mid-body, or a Content-Length the body never reaches.
        Err(error) if status.is_success() => {
            return Err(bad_body(
                status,
                format!(
                    "HTTP {status} to GET {}: the body was cut short ({})",
                    request_url.path(),
                    describe(&error.without_url())
                ),
            ))
        }
        Err(error) => return Err(transport_error(error)),
    };
    if !status.is_success() {
        return Err(failure(request_url, status, &headers, &body));
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok());
    decode_page(graph_base_url, request_url, status, content_type, &body)
}

/// The body of a success answer as a page. A body that is not JSON at all looks
/// like a proxy's or a cut answer and is retried; JSON of the wrong shape, or a
/// link to another host, is Graph's final word and fails at once.
pub(crate) fn decode_page<T: DeserializeOwned>(
    graph_base_url: &str,
    request_url: &Url,
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Collection<T>, AttemptError> {
    let path = request_url.path();
    let json: Value = serde_json::from_slice(body).map_err(|error| {
        let content_type = content_type.unwrap_or("none");
        bad_body(
            status,
            format!(
                "HTTP {status} to GET {path}: the body is not JSON (content-type {content_type}, {} bytes: {error})",
                body.len()
            ),
        )
    })?;
    let page = pages::collection(json).map_err(|reason| GraphError::InvalidResponse {
        reason: format!("HTTP {status} to GET {path}: {reason}"),
    })?;
    page.check_links(graph_base_url, path)?;
    Ok(page)
}

fn bad_body(status: StatusCode, reason: String) -> AttemptError {
    AttemptError::Retry(Transient {
        status: Some(status.as_u16()),
        reason,
        retry_after: None,
        bad_body: true,
    })
}

pub(crate) fn failure(
    request_url: &Url,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> AttemptError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    if is_transient_status(status) {
        return AttemptError::Retry(Transient {
            status: Some(status.as_u16()),
            reason: format!("HTTP {status} {}", detail.code).trim_end().to_string(),
            retry_after: retry_after(headers),
            bad_body: false,
        });
    }
    AttemptError::Stop(final_error(request_url, status, headers, detail))
}

fn final_error(
    request_url: &Url,
    status: StatusCode,
    headers: &HeaderMap,
    detail: ErrorDetail,
) -> GraphError {
    let is_resync_code = RESYNC_CODES
        .iter()
        .any(|code| code.eq_ignore_ascii_case(&detail.code));
    match status {
        StatusCode::GONE => GraphError::ResyncRequired {
            code: non_empty_or(detail.code, "Gone"),
            restart_url: headers
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|location| urls::resolve_location(request_url, location)),
        },
        StatusCode::BAD_REQUEST if is_resync_code => GraphError::ResyncRequired {
            code: detail.code,
            restart_url: None,
        },
        StatusCode::FORBIDDEN if detail.code.eq_ignore_ascii_case(CONSENT_MISSING_CODE) => {
            GraphError::ConsentMissing {
                message: detail.message,
            }
        }
        _ => GraphError::Http {
            status: status.as_u16(),
            code: detail.code,
            message: detail.message,
        },
    }
}

fn non_empty_or(code: String, fallback: &str) -> String {
    if code.is_empty() {
        fallback.to_string()
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn request_url() -> Url {
        Url::parse("https://graph.microsoft.com/v1.0/users/delta?$deltatoken=abc").expect("url")
    }

    fn classify(status: u16, headers: &HeaderMap, body: &str) -> AttemptError {
        let status = StatusCode::from_u16(status).expect("status");
        failure(&request_url(), status, headers, body.as_bytes())
    }

    #[test]
    fn gone_without_body_still_asks_for_a_resync() {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_static("/v1.0/users/delta"));
        let AttemptError::Stop(GraphError::ResyncRequired { code, restart_url }) =
            classify(410, &headers, "")
        else {
            panic!("expected ResyncRequired");
        };
        assert_eq!(code, "Gone");
        assert_eq!(
            restart_url.as_deref(),
            Some("https://graph.microsoft.com/v1.0/users/delta")
        );
    }

    #[test]
    fn resync_codes_match_case_insensitively() {
        let body = r#"{"error":{"code":"SyncStateInvalid","message":"x"}}"#;
        assert!(matches!(
            classify(400, &HeaderMap::new(), body),
            AttemptError::Stop(GraphError::ResyncRequired { .. })
        ));
    }

    #[test]
    fn other_bad_requests_keep_code_and_message() {
        let body = r#"{"error":{"code":"Request_BadRequest","message":"Invalid filter"}}"#;
        let AttemptError::Stop(GraphError::Http {
            status,
            code,
            message,
        }) = classify(400, &HeaderMap::new(), body)
        else {
            panic!("expected Http");
        };
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (400, "Request_BadRequest", "Invalid filter")
        );
    }

    #[test]
    fn server_errors_are_transient() {
        for status in [429, 500, 502, 503, 504] {
            assert!(matches!(
                classify(status, &HeaderMap::new(), "not json"),
                AttemptError::Retry(_)
            ));
        }
    }
}
