//! Classification of everything that can go wrong talking to the PBX.
//!
//! The client never retries; it only tells the caller what kind of failure
//! happened so the caller can decide (retry queue, report, adopt, …).

use std::time::Duration;
use usersync_core::error_chain;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

/// Longest piece of an undocumented error body kept in [`PbxError::message`].
const MAX_BODY_CHARS: usize = 300;

/// What kind of failure a PBX call ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbxErrorKind {
    /// 400: malformed request; a bug on our side, retrying will not help.
    BadRequest,
    /// 401/403: missing or wrong token; stop for this tenant.
    Unauthorized,
    /// 404: company or user absent.
    NotFound,
    /// 409: a unique field is taken; `existing_id` names the holder.
    Conflict,
    /// 412: the `If-Match` version is old; re-read and re-apply.
    Stale,
    /// 422: a field is invalid; `field` names it.
    Validation,
    /// 429: wait `retry_after` (when given), then retry.
    RateLimited { retry_after: Option<Duration> },
    /// 500/502/503/504: transient on the PBX side.
    Unavailable,
    /// Connect failure, reset, timeout, or a connection cut mid-body.
    Transport,
    /// The call's success status with a body that is not the contract's
    /// shape: not JSON (a proxy's HTML page), cut short, a required field
    /// missing or of the wrong type. On a write the outcome is unknown.
    Malformed,
    /// Anything the contract does not describe.
    Unexpected,
}

impl PbxErrorKind {
    /// Kind for an HTTP error status, as the contract's error table says.
    pub(crate) fn from_status(status: u16, headers: &HeaderMap) -> Self {
        match status {
            400 => Self::BadRequest,
            401 | 403 => Self::Unauthorized,
            404 => Self::NotFound,
            409 => Self::Conflict,
            412 => Self::Stale,
            422 => Self::Validation,
            429 => Self::RateLimited {
                retry_after: retry_after_from(headers),
            },
            500 | 502 | 503 | 504 => Self::Unavailable,
            _ => Self::Unexpected,
        }
    }

    /// Short label, matching the contract's error codes where there is one.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Stale => "stale",
            Self::Validation => "validation",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Transport => "transport",
            Self::Malformed => "malformed",
            Self::Unexpected => "unexpected",
        }
    }
}

/// A failed PBX call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PbxError {
    pub kind: PbxErrorKind,
    /// HTTP status when the PBX answered at all.
    pub status: Option<u16>,
    pub message: String,
    /// The field the PBX refused (422) when it named one.
    pub field: Option<String>,
    /// The user holding a taken unique value (409) when the PBX named one.
    pub existing_id: Option<String>,
    /// `METHOD /path` of the call, when it got as far as an answer.
    pub request: Option<String>,
}

/// The documented error body; every member optional so a partial body still helps.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    message: Option<String>,
    field: Option<String>,
    existing_id: Option<String>,
}

impl PbxError {
    /// Builds the error for a non-success answer from its status, headers and body text.
    pub(crate) fn from_response(status: StatusCode, headers: &HeaderMap, body: &str) -> Self {
        let kind = PbxErrorKind::from_status(status.as_u16(), headers);
        let parsed = serde_json::from_str::<ErrorBody>(body).ok();
        // An empty message says nothing: fall back as for an undocumented body.
        let documented_message = parsed
            .as_ref()
            .and_then(|b| b.message.clone())
            .filter(|message| !message.trim().is_empty());
        let message = documented_message.unwrap_or_else(|| fallback_message(status, body.trim()));
        let ErrorBody {
            field, existing_id, ..
        } = parsed.unwrap_or_default();
        Self {
            kind,
            status: Some(status.as_u16()),
            message,
            field,
            existing_id,
            request: None,
        }
    }

    /// An answer that is not what the contract says: `detail` says what was
    /// wrong with it and reads on from "PBX answered {status} to {request}".
    pub(crate) fn answered(kind: PbxErrorKind, status: u16, detail: String) -> Self {
        Self {
            status: Some(status),
            ..Self::without_status(kind, detail)
        }
    }

    pub(crate) fn with_request(mut self, request: &str) -> Self {
        self.request = Some(request.to_owned());
        self
    }

    /// An error of `kind` made by the caller (for example a pause it keeps itself).
    pub fn from_kind(kind: PbxErrorKind, message: impl Into<String>) -> Self {
        Self::without_status(kind, message)
    }

    /// A failure without a usable answer from the PBX.
    pub(crate) fn without_status(kind: PbxErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            field: None,
            existing_id: None,
            request: None,
        }
    }

    /// Classifies an error raised by reqwest itself (no HTTP status to go by).
    pub(crate) fn from_reqwest(err: &reqwest::Error) -> Self {
        let kind = if err.is_builder() {
            // An unusable URL or header: configuration, not the network.
            PbxErrorKind::Unexpected
        } else {
            PbxErrorKind::Transport
        };
        Self::without_status(kind, error_chain(err))
    }

    /// Worth trying again later without changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            PbxErrorKind::RateLimited { .. }
                | PbxErrorKind::Unavailable
                | PbxErrorKind::Transport
                | PbxErrorKind::Malformed
        )
    }

    /// How long the PBX asked us to wait (429 with `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            PbxErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }

    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        let label = self.kind.label();
        let request = self.request.as_deref().unwrap_or("a request");
        let mut text = match (self.status, &self.field) {
            // Answers the contract does not describe: the message reads on.
            (Some(status), _) if self.kind == PbxErrorKind::Malformed => {
                format!("PBX answered {status} to {request} {}", self.message)
            }
            (Some(status), _) if self.kind == PbxErrorKind::Transport => {
                format!("PBX answered {status} to {request} but {}", self.message)
            }
            (Some(status), _) if self.kind == PbxErrorKind::Unexpected => {
                format!("PBX answered {status} to {request}, {}", self.message)
            }
            (Some(status), Some(field)) => {
                format!("PBX refused field {field} ({status} {label}): {}", self.message)
            }
            (Some(status), None) => format!("PBX answered {status} {label}: {}", self.message),
            (None, _) => match &self.request {
                Some(request) => format!("PBX call {request} failed ({label}): {}", self.message),
                None => format!("PBX call failed ({label}): {}", self.message),
            },
        };
        if let Some(holder) = &self.existing_id {
            text.push_str(&format!(" (held by user {holder})"));
        }
        text
    }
}

/// Message for a body that is not the documented shape: its text, cut short,
/// or the status reason when it is empty.
fn fallback_message(status: StatusCode, body: &str) -> String {
    if body.is_empty() {
        return status.canonical_reason().unwrap_or("no error body").to_string();
    }
    truncate_chars(body, MAX_BODY_CHARS)
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Reads `Retry-After` tolerantly, as PBXes send it: whole or fractional
/// seconds, or a date in any of HTTP's three formats (or RFC 2822 with an
/// offset). A date in the past means now; a negative or unreadable value is
/// no advice at all.
fn retry_after_from(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = match httpdate::parse_http_date(value) {
        Ok(at) => at,
        Err(_) => chrono::DateTime::parse_from_rfc2822(value).ok()?.into(),
    };
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers_with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn retry_after_accepts_whole_and_fractional_seconds() {
        assert_eq!(
            retry_after_from(&headers_with_retry_after("3")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after_from(&headers_with_retry_after("0.25")),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn retry_after_rejects_negative_and_garbage() {
        assert_eq!(retry_after_from(&headers_with_retry_after("-1")), None);
        assert_eq!(retry_after_from(&headers_with_retry_after("soon")), None);
        assert_eq!(retry_after_from(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_in_the_past_as_date_means_now() {
        for past in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Wed, 21 Oct 2015 09:28:00 +0200",
        ] {
            let headers = headers_with_retry_after(past);
            assert_eq!(retry_after_from(&headers), Some(Duration::ZERO), "{past}");
        }
    }

    #[test]
    fn retry_after_as_a_future_date_is_the_time_left() {
        let at = std::time::SystemTime::now() + Duration::from_secs(30);
        let imf = httpdate::fmt_http_date(at);
        let offset = chrono::DateTime::<chrono::Utc>::from(at)
            .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
            .to_rfc2822();
        for date in [imf, offset] {
            let wait = retry_after_from(&headers_with_retry_after(&date)).expect(&date);
            assert!(
                wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
                "{date}: {wait:?}"
            );
        }
    }

    #[test]
    fn retry_after_tolerates_spaces_and_refuses_nonsense_numbers() {
        assert_eq!(
            retry_after_from(&headers_with_retry_after(" 1.5 ")),
            Some(Duration::from_millis(1500))
        );
        for nonsense in ["NaN", "inf", "1e400"] {
            assert_eq!(
                retry_after_from(&headers_with_retry_after(nonsense)),
                None,
                "{nonsense}"
            );
        }
    }

    #[test]
    fn long_undocumented_body_is_cut_at_300_chars() {
        let body = "é".repeat(1000);
        let err = PbxError::from_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &body);
        assert_eq!(err.kind, PbxErrorKind::Unavailable);
        assert_eq!(err.message.chars().count(), MAX_BODY_CHARS + 1);
        assert!(err.message.ends_with('…'));
    }

    #[test]
    fn empty_body_falls_back_to_status_reason() {
        let err = PbxError::from_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), "");
        assert_eq!(err.message, "Service Unavailable");
    }

    #[test]
    fn describe_names_the_refused_field() {
        let body =
            r#"{"error":"validation","message":"not a number","field":"pstn_fixed","existing_id":null}"#;
        let err = PbxError::from_response(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), body);
        assert_eq!(
            err.to_string(),
            "PBX refused field pstn_fixed (422 validation): not a number"
        );
    }

    #[test]
    fn describe_names_the_conflicting_holder() {
        let body = r#"{"error":"conflict","message":"alias taken","field":"alias","existing_id":"u-7"}"#;
        let err = PbxError::from_response(StatusCode::CONFLICT, &HeaderMap::new(), body);
        assert_eq!(err.existing_id.as_deref(), Some("u-7"));
        assert!(err.describe().ends_with("(held by user u-7)"));
    }
}
