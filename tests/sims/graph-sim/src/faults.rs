//! Injected faults: a per-tenant FIFO queue consumed by matching requests.

use std::collections::VecDeque;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::connection::KillSwitch;
use crate::errors::GraphError;

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Throttle,
    Unavailable,
    GatewayTimeout,
    /// Close the connection without sending any response.
    Drop,
    SyncState,
    Gone,
    /// A `200` page with no users and a nextLink back to the same request.
    EmptyPage,
    /// The real page, its users in reverse order and the first one sent again at the end.
    Reorder,
    /// A `200` HTML page, as a proxy or captive portal in the way answers.
    HtmlPage,
    /// A `200` JSON page with a nextLink but no `value`.
    MissingValue,
    /// A `200` JSON page whose `value` is an object, not an array.
    ValueNotArray,
    /// The real page, its first item without `id`.
    ItemWithoutId,
    /// The real page, cut after half its bytes: its Content-Length promises the
    /// whole, then the connection closes.
    Truncated,
    /// The real page, its next and delta links on another origin (`origin`).
    ForeignLink,
}

impl FaultKind {
    /// Kinds that change the real answer rather than replace it.
    pub fn transforms_answer(self) -> bool {
        matches!(
            self,
            FaultKind::Reorder | FaultKind::ItemWithoutId | FaultKind::Truncated | FaultKind::ForeignLink
        )
    }
}

/// Where `foreign_link` points links when the fault names no `origin`.
pub const DEFAULT_FOREIGN_ORIGIN: &str = "https://graph.example.invalid";

/// Body of `POST /_sim/tenants/{t}/faults`.
#[derive(Deserialize, Clone, Debug)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// Seconds, sent verbatim in `Retry-After` (may be fractional, e.g. "2.128").
    #[serde(default)]
    pub retry_after: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Only requests whose path starts with this prefix consume the fault.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Error code for `sync_state` (default `resyncRequired`).
    #[serde(default)]
    pub code: Option<String>,
    /// Matching requests to let through before the fault is served, e.g. to
    /// fail a round in its middle.
    #[serde(default)]
    pub skip: u32,
    /// Origin for `foreign_link`, e.g. `http://127.0.0.1:9` (another port).
    #[serde(default)]
    pub origin: Option<String>,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if let Some(retry_after) = &self.retry_after {
            let valid = retry_after
                .parse::<f64>()
                .is_ok_and(|secs| secs.is_finite() && secs >= 0.0);
            if !valid {
                return Err(format!("retry_after {retry_after:?} is not a number of seconds"));
            }
        }
        Ok(())
    }

    fn matches(&self, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
    }
}

#[derive(Default)]
pub struct FaultQueue(VecDeque<FaultSpec>);

impl FaultQueue {
    pub fn push(&mut self, fault: FaultSpec) {
        self.0.push_back(fault);
    }

    /// Consumes one use of the oldest fault that matches `path`; a fault still
    /// skipping lets this request through (and counts it).
    pub fn take(&mut self, path: &str) -> Option<FaultSpec> {
        let position = self.0.iter().position(|f| f.matches(path))?;
        let fault = self.0.get_mut(position)?;
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        fault.count -= 1;
        let served = fault.clone();
        if fault.count == 0 {
            self.0.remove(position);
        }
        Some(served)
    }
}

/// Builds the response for a fault. `restart_url` is where a `gone` fault
/// sends the client (a fresh round without any token); `request_url` is the
/// request itself. `Reorder` transforms the real answer: see [`reorder`].
pub fn fault_response(
    fault: &FaultSpec,
    restart_url: &str,
    request_url: &str,
    connection: &KillSwitch,
) -> Response {
    let origin = request_url.split("/v1.0/").next().unwrap_or_default();
    let page = |value: Option<serde_json::Value>| {
        let mut body = serde_json::json!({
            "@odata.context": format!("{origin}/v1.0/$metadata#users"),
            "@odata.nextLink": request_url,
        });
        if let Some(value) = value {
            body["value"] = value;
        }
        axum::Json(body).into_response()
    };
    let error = match fault.kind {
        // The transforming kinds are served by `transform`; reaching here, the
        // answer they would change is an empty page.
        FaultKind::EmptyPage
        | FaultKind::Reorder
        | FaultKind::ItemWithoutId
        | FaultKind::Truncated
        | FaultKind::ForeignLink => return page(Some(serde_json::json!([]))),
        FaultKind::MissingValue => return page(None),
        FaultKind::ValueNotArray => return page(Some(serde_json::json!({"id": "not-in-an-array"}))),
        FaultKind::HtmlPage => {
            let html = "<html><head><title>Access denied</title></head>\
                        <body><h1>Proxy authentication required</h1></body></html>";
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response();
        }
        FaultKind::Throttle => GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, please retry later.",
        ),
        FaultKind::Unavailable => GraphError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable.",
        ),
        FaultKind::GatewayTimeout => GraphError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gatewayTimeout",
            "The gateway did not receive a timely response.",
        ),
        FaultKind::SyncState => {
            let code = fault.code.as_deref().unwrap_or("resyncRequired");
            GraphError::bad_request(code, "The sync state cannot be used; start a new round.")
        }
        FaultKind::Gone => GraphError::new(
            StatusCode::GONE,
            "resyncRequired",
            "Resync required. Restart from the URL in the Location header.",
        )
        .with_location(restart_url),
        FaultKind::Drop => {
            // The connection fails its next write, so this body never leaves.
            connection.trip();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut response = error.into_response();
    if let Some(retry_after) = &fault.retry_after {
        if let Ok(value) = HeaderValue::from_str(retry_after) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// The real answer changed as a transforming fault says; an answer that is not
/// a JSON page is passed on unchanged.
pub async fn transform(fault: &FaultSpec, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(page) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let page = match fault.kind {
        FaultKind::ItemWithoutId => without_first_id(page),
        FaultKind::ForeignLink => {
            let origin = fault.origin.as_deref().unwrap_or(DEFAULT_FOREIGN_ORIGIN);
            with_links_on(page, origin)
        }
        FaultKind::Truncated => {
            let whole = serde_json::to_vec(&page).unwrap_or_default();
            parts.headers.insert(header::CONTENT_LENGTH, whole.len().into());
            parts.headers.remove(header::TRANSFER_ENCODING);
            return Response::from_parts(parts, cut_short(whole));
        }
        _ => reorder(page),
    };
    (parts.status, axum::Json(page)).into_response()
}

/// Half the bytes, then an error: hyper closes the connection short of the
/// promised Content-Length. The stream yields once in between, so hyper flushes
/// the head and the half first (it writes what it holds when the body is pending).
fn cut_short(mut whole: Vec<u8>) -> Body {
    whole.truncate(whole.len() / 2);
    let steps = futures::stream::unfold(Some(whole), |half| async move {
        match half {
            Some(half) => Some((Ok(half), None)),
            None => {
                tokio::task::yield_now().await;
                None
            }
        }
    });
    let cut = futures::stream::once(async {
        Err::<Vec<u8>, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "truncated fault",
        ))
    });
    Body::from_stream(futures::StreamExt::chain(steps, cut))
}

/// A page as Graph may send it: no order, and a user already sent (on this page
/// or an earlier one) sent again.
pub fn reorder(mut page: serde_json::Value) -> serde_json::Value {
    if let Some(items) = page.get_mut("value").and_then(serde_json::Value::as_array_mut) {
        let first = items.first().cloned();
        items.reverse();
        items.extend(first);
    }
    page
}

fn without_first_id(mut page: serde_json::Value) -> serde_json::Value {
    if let Some(first) = page["value"]
        .get_mut(0)
        .and_then(serde_json::Value::as_object_mut)
    {
        first.remove("id");
    }
    page
}

/// Keeps each link's path and query and moves it to `origin`.
fn with_links_on(mut page: serde_json::Value, origin: &str) -> serde_json::Value {
    for key in ["@odata.nextLink", "@odata.deltaLink"] {
        if let Some(link) = page.get(key).and_then(serde_json::Value::as_str) {
            let rest = link.find("/v1.0/").map_or("", |at| &link[at..]);
            page[key] = format!("{}{rest}", origin.trim_end_matches('/')).into();
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(count: u32, path_prefix: Option<&str>) -> FaultSpec {
        FaultSpec {
            kind: FaultKind::Throttle,
            retry_after: None,
            count,
            path_prefix: path_prefix.map(str::to_owned),
            code: None,
            skip: 0,
            origin: None,
        }
    }

    #[test]
    fn a_skipping_fault_lets_that_many_requests_through_first() {
        let mut queue = FaultQueue::default();
        let mut spec = fault(1, Some("/v1.0/users/delta"));
        spec.skip = 2;
        queue.push(spec);
        assert!(queue.take("/v1.0/groups").is_none());
        assert!(queue.take("/v1.0/users/delta").is_none());
        assert!(queue.take("/v1.0/users/delta").is_none());
        assert!(queue.take("/v1.0/users/delta").is_some());
        assert!(queue.take("/v1.0/users/delta").is_none());
    }

    #[test]
    fn faults_are_consumed_in_order_by_matching_paths() {
        let mut queue = FaultQueue::default();
        queue.push(fault(1, Some("/v1.0/groups")));
        queue.push(fault(2, None));
        let first = queue.take("/v1.0/users/delta").unwrap();
        assert_eq!(first.path_prefix, None);
        assert_eq!(
            queue.take("/v1.0/groups/delta").unwrap().path_prefix.as_deref(),
            Some("/v1.0/groups")
        );
        assert!(queue.take("/v1.0/users/delta").is_some());
        assert!(queue.take("/v1.0/users/delta").is_none());
    }

    #[test]
    fn reorder_reverses_and_repeats_the_first_user() {
        let page = serde_json::json!({"value": [{"id": "a"}, {"id": "b"}], "@odata.nextLink": "n"});
        let ids: Vec<_> = reorder(page)["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["b", "a", "a"]);
    }

    #[test]
    fn foreign_link_moves_both_links_and_keeps_path_and_query() {
        let page = serde_json::json!({
            "value": [],
            "@odata.nextLink": "http://127.0.0.1:8081/v1.0/users/delta?$skiptoken=a",
            "@odata.deltaLink": "http://127.0.0.1:8081/v1.0/users/delta?$deltatoken=b",
        });
        let moved = with_links_on(page, "https://evil.example:444/");
        assert_eq!(
            moved["@odata.nextLink"],
            "https://evil.example:444/v1.0/users/delta?$skiptoken=a"
        );
        assert_eq!(
            moved["@odata.deltaLink"],
            "https://evil.example:444/v1.0/users/delta?$deltatoken=b"
        );
    }

    #[test]
    fn item_without_id_drops_only_the_first_id() {
        let page = serde_json::json!({"value": [{"id": "a", "mail": "m"}, {"id": "b"}]});
        let changed = without_first_id(page);
        assert_eq!(changed["value"], serde_json::json!([{"mail": "m"}, {"id": "b"}]));
    }

    #[test]
    fn only_the_transforming_kinds_wait_for_the_real_answer() {
        for kind in [
            FaultKind::Reorder,
            FaultKind::ItemWithoutId,
            FaultKind::Truncated,
            FaultKind::ForeignLink,
        ] {
            assert!(kind.transforms_answer(), "{kind:?}");
        }
        for kind in [
            FaultKind::HtmlPage,
            FaultKind::MissingValue,
            FaultKind::ValueNotArray,
            FaultKind::Drop,
        ] {
            assert!(!kind.transforms_answer(), "{kind:?}");
        }
    }

    #[test]
    fn retry_after_must_be_seconds() {
        let mut spec = fault(1, None);
        spec.retry_after = Some("2.128".into());
        assert!(spec.validate().is_ok());
        spec.retry_after = Some("soon".into());
        assert!(spec.validate().is_err());
    }
}
