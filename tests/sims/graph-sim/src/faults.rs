//! Injected faults: a per-tenant FIFO queue consumed by matching requests.

use std::collections::VecDeque;

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
}

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
    let error = match fault.kind {
        FaultKind::EmptyPage | FaultKind::Reorder => {
            let origin = request_url.split("/v1.0/").next().unwrap_or_default();
            let body = serde_json::json!({
                "@odata.context": format!("{origin}/v1.0/$metadata#users"),
                "@odata.nextLink": request_url,
                "value": [],
            });
            return axum::Json(body).into_response();
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
    fn retry_after_must_be_seconds() {
        let mut spec = fault(1, None);
        spec.retry_after = Some("2.128".into());
        assert!(spec.validate().is_ok());
        spec.retry_after = Some("soon".into());
        assert!(spec.validate().is_err());
    }
}
