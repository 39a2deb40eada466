//! Faults injected into one company's /v1 traffic through the control API.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::ApiError;

/// Body of `POST /_sim/companies/{company}/faults`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultRequest {
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
        /// For 422: the field to blame (required) and the message.
        #[serde(default)]
        field: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    Drop {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
    },
    DropBefore {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
    },
    Latency {
        ms: u64,
        /// Handle the request at once and hold back only the answer, so the
        /// write has happened while the client still waits.
        #[serde(default)]
        after: bool,
    },
    RateLimit {
        per_second: u32,
    },
    /// A proxy's HTML page with a success status: in place of handling the
    /// request (200), or, with `after`, once it was handled (the handler's
    /// status, the write done), in place of its JSON.
    Html {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        after: bool,
    },
    /// Handle the request, send its status and the first half of its body,
    /// then cut the connection.
    Truncate {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
    },
    /// Handle the request, then answer its JSON with top-level `field`
    /// removed, or set to `value` (any JSON, `null` included) when given.
    Reshape {
        field: String,
        #[serde(default, deserialize_with = "present")]
        value: Option<Value>,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
    },
    /// Answer a status the contract does not list (418, 302 with `location`,
    /// 202, 507, ...) with a short text body, without handling the request.
    Unlisted {
        status: u16,
        #[serde(default)]
        location: Option<String>,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        method: Option<String>,
    },
    /// Every `every`-th matching request is answered 429 with `Retry-After`,
    /// as a PBX that throttles a steady share of its traffic does.
    Throttle {
        every: u32,
        #[serde(default = "one_second")]
        retry_after: u64,
        #[serde(default)]
        method: Option<String>,
    },
}

fn one() -> u32 {
    1
}

fn one_second() -> u64 {
    1
}

/// A value that was given, `null` included (absent stays `None`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The page a misconfigured proxy or a login portal answers with.
pub const PROXY_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Gateway</title></head>\n<body><h1>Session expired</h1><p>Please sign in to continue.</p></body></html>\n";

/// What the gate does with one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Handle the request; with `then`, the answer is spoilt afterwards, so
    /// the write is done while the client cannot read that it was.
    Proceed { then: Option<Spoil> },
    /// Cut the connection without handling the request.
    DropBefore,
    /// Answer with this error without handling the request.
    Reject(ApiError),
    /// Answer this, not the contract's, without handling the request.
    Forge(Forged),
}

/// What becomes of the answer of a handled request.
#[derive(Debug, Clone, PartialEq)]
pub enum Spoil {
    /// Thrown away and the connection cut before its first byte.
    Drop,
    /// Its body replaced by [`PROXY_PAGE`], its status kept.
    Html,
    /// Half its body sent, then the connection cut.
    Truncate,
    /// A top-level field of its JSON removed, or replaced by a value.
    Reshape { field: String, value: Option<Value> },
}

/// An answer made up in place of the PBX's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forged {
    /// [`PROXY_PAGE`] with 200.
    Html,
    /// A status the contract does not list, with `Location` when given.
    Unlisted {
        status: StatusCode,
        location: Option<String>,
    },
}

#[derive(Debug, Clone)]
enum CountedAction {
    Reject(ApiError),
    DropBefore,
    Spoil(Spoil),
    Forge(Forged),
}

#[derive(Debug)]
struct CountedFault {
    action: CountedAction,
    remaining: u32,
    method: Option<Method>,
}

/// Counts the matching requests and throttles every `every`-th.
#[derive(Debug)]
struct Throttle {
    every: u32,
    retry_after: u64,
    method: Option<Method>,
    seen: u32,
}

#[derive(Debug)]
struct RateLimit {
    per_second: u32,
    window_start: Instant,
    used: u32,
}

/// A delay on every request, before handling it or before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub delay: Duration,
    pub after: bool,
}

#[derive(Debug, Default)]
pub struct Faults {
    counted: Vec<CountedFault>,
    latency: Option<Latency>,
    rate_limit: Option<RateLimit>,
    throttle: Option<Throttle>,
}

impl Faults {
    /// Adds a fault; errors describe a request the control API rejects.
    pub fn add(&mut self, request: FaultRequest, now: Instant) -> Result<(), ApiError> {
        match request {
            FaultRequest::Status {
                status,
                retry_after,
                count,
                method,
                field,
                message,
            } => {
                let error =
                    ApiError::injected(status, retry_after, field.as_deref(), message).ok_or_else(|| {
                        ApiError::bad_field(
                            "status",
                            "status must be one of 401, 429, 500, 502, 503, 504, or 422 with a field",
                        )
                    })?;
                self.add_counted(CountedAction::Reject(error), count, method)
            }
            FaultRequest::Drop { count, method } => {
                self.add_counted(CountedAction::Spoil(Spoil::Drop), count, method)
            }
            FaultRequest::Html { count, method, after } => {
                let action = if after {
                    CountedAction::Spoil(Spoil::Html)
                } else {
                    CountedAction::Forge(Forged::Html)
                };
                self.add_counted(action, count, method)
            }
            FaultRequest::Truncate { count, method } => {
                self.add_counted(CountedAction::Spoil(Spoil::Truncate), count, method)
            }
            FaultRequest::Reshape {
                field,
                value,
                count,
                method,
            } => {
                if field.is_empty() {
                    return Err(ApiError::bad_field("field", "field must name a top-level field"));
                }
                self.add_counted(
                    CountedAction::Spoil(Spoil::Reshape { field, value }),
                    count,
                    method,
                )
            }
            FaultRequest::Unlisted {
                status,
                location,
                count,
                method,
            } => {
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|status| (200..600).contains(&status.as_u16()))
                    .ok_or_else(|| ApiError::bad_field("status", "status must be from 200 to 599"))?;
                let location = match location {
                    Some(location) if axum::http::HeaderValue::from_str(&location).is_err() => {
                        return Err(ApiError::bad_field("location", "location must be header text"))
                    }
                    other => other,
                };
                self.add_counted(
                    CountedAction::Forge(Forged::Unlisted { status, location }),
                    count,
                    method,
                )
            }
            FaultRequest::DropBefore { count, method } => {
                self.add_counted(CountedAction::DropBefore, count, method)
            }
            FaultRequest::Latency { ms, after } => {
                self.latency = Some(Latency {
                    delay: Duration::from_millis(ms),
                    after,
                });
                Ok(())
            }
            FaultRequest::RateLimit { per_second } => {
                if per_second == 0 {
                    return Err(ApiError::bad_field("per_second", "per_second must be >= 1"));
                }
                self.rate_limit = Some(RateLimit {
                    per_second,
                    window_start: now,
                    used: 0,
                });
                Ok(())
            }
            FaultRequest::Throttle {
                every,
                retry_after,
                method,
            } => {
                if every == 0 {
                    return Err(ApiError::bad_field("every", "every must be >= 1"));
                }
                self.throttle = Some(Throttle {
                    every,
                    retry_after,
                    method: parse_method(method)?,
                    seen: 0,
                });
                Ok(())
            }
        }
    }

    fn add_counted(
        &mut self,
        action: CountedAction,
        count: u32,
        method: Option<String>,
    ) -> Result<(), ApiError> {
        if count == 0 {
            return Err(ApiError::bad_field("count", "count must be >= 1"));
        }
        self.counted.push(CountedFault {
            action,
            remaining: count,
            method: parse_method(method)?,
        });
        Ok(())
    }

    pub fn latency(&self) -> Option<Latency> {
        self.latency
    }

    /// Decides the fate of one request, consuming rate-limit budget, the
    /// throttle's count and one use of the oldest counted fault that matches
    /// its method.
    pub fn judge(&mut self, method: &Method, now: Instant) -> Verdict {
        if let Some(limit) = &mut self.rate_limit {
            if let Some(retry_after) = limit.take(now) {
                return Verdict::Reject(ApiError::rate_limited(Some(retry_after)));
            }
        }
        if let Some(throttle) = &mut self.throttle {
            if let Some(retry_after) = throttle.take(method) {
                return Verdict::Reject(ApiError::rate_limited(Some(retry_after)));
            }
        }
        let Some(position) = self
            .counted
            .iter()
            .position(|fault| fault.method.as_ref().is_none_or(|m| m == method))
        else {
            return Verdict::Proceed { then: None };
        };
        let fault = &mut self.counted[position];
        fault.remaining -= 1;
        let action = fault.action.clone();
        if fault.remaining == 0 {
            self.counted.remove(position);
        }
        match action {
            CountedAction::Reject(error) => Verdict::Reject(error),
            CountedAction::Spoil(spoil) => Verdict::Proceed { then: Some(spoil) },
            CountedAction::DropBefore => Verdict::DropBefore,
            CountedAction::Forge(forged) => Verdict::Forge(forged),
        }
    }
}

fn parse_method(method: Option<String>) -> Result<Option<Method>, ApiError> {
    method
        .map(|name| Method::from_bytes(name.to_ascii_uppercase().as_bytes()))
        .transpose()
        .map_err(|_| ApiError::bad_field("method", "method is not an HTTP method"))
}

impl Spoil {
    /// The body to send instead of `body`; for [`Spoil::Truncate`] the part
    /// sent before the cut.
    pub fn body(&self, body: &Bytes) -> Bytes {
        match self {
            Self::Drop => Bytes::new(),
            Self::Html => Bytes::from_static(PROXY_PAGE.as_bytes()),
            Self::Truncate => body.slice(..body.len() / 2),
            Self::Reshape { field, value } => reshape(body, field, value.as_ref()),
        }
    }
}

/// `body` with top-level `field` removed or set to `value`; a body that is no
/// JSON object is left as it is.
fn reshape(body: &Bytes, field: &str, value: Option<&Value>) -> Bytes {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    match value {
        Some(value) => object.insert(field.to_owned(), value.clone()),
        None => object.remove(field),
    };
    Bytes::from(Value::Object(object).to_string())
}

impl Throttle {
    /// Counts a matching request; `Some(seconds)` when it is the one to throttle.
    fn take(&mut self, method: &Method) -> Option<u64> {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        self.seen += 1;
        self.seen.is_multiple_of(self.every).then_some(self.retry_after)
    }
}

impl RateLimit {
    const WINDOW: Duration = Duration::from_secs(1);

    /// Counts a request in the current one-second window; `Some(seconds)` to
    /// wait when the window's budget is spent.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            self.window_start = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            return None;
        }
        let left = Self::WINDOW.saturating_sub(elapsed);
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_fault(count: u32, method: Option<&str>) -> FaultRequest {
        FaultRequest::Status {
            status: 503,
            retry_after: None,
            count,
            method: method.map(str::to_owned),
            field: None,
            message: None,
        }
    }

    fn is_proceed(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Proceed { then: None })
    }

    fn fault(json: Value) -> FaultRequest {
        serde_json::from_value(json).expect("a fault request")
    }

    #[test]
    fn html_answers_in_place_of_the_request_or_after_it() {
        let now = Instant::now();
        let mut faults = Faults::default();
        faults
            .add(fault(serde_json::json!({"kind": "html", "method": "get"})), now)
            .expect("valid");
        faults
            .add(
                fault(serde_json::json!({"kind": "html", "after": true, "count": 2})),
                now,
            )
            .expect("valid");
        assert!(matches!(
            faults.judge(&Method::GET, now),
            Verdict::Forge(Forged::Html)
        ));
        for _ in 0..2 {
            assert!(matches!(
                faults.judge(&Method::POST, now),
                Verdict::Proceed {
                    then: Some(Spoil::Html)
                }
            ));
        }
        assert!(is_proceed(&faults.judge(&Method::POST, now)));
        assert!(Spoil::Html
            .body(&Bytes::from_static(b"{}"))
            .starts_with(b"<!DOCTYPE html>"));
    }

    #[test]
    fn truncate_keeps_the_first_half_of_the_body() {
        let body = Bytes::from_static(br#"{"id":"u1","alias":"a"}"#);
        assert_eq!(Spoil::Truncate.body(&body), body.slice(..11));
        let mut faults = Faults::default();
        faults
            .add(
                fault(serde_json::json!({"kind": "truncate", "method": "post"})),
                Instant::now(),
            )
            .expect("valid");
        assert!(matches!(
            faults.judge(&Method::POST, Instant::now()),
            Verdict::Proceed {
                then: Some(Spoil::Truncate)
            }
        ));
    }

    #[test]
    fn reshape_removes_a_field_or_gives_it_another_value_null_included() {
        let body = Bytes::from_static(br#"{"id":"u1","version":1}"#);
        let removed = fault(serde_json::json!({"kind": "reshape", "field": "id"}));
        let nulled = fault(serde_json::json!({"kind": "reshape", "field": "id", "value": null}));
        let retyped = fault(serde_json::json!({"kind": "reshape", "field": "version", "value": "7"}));
        let mut bodies = Vec::new();
        for request in [removed, nulled, retyped] {
            let mut faults = Faults::default();
            faults.add(request, Instant::now()).expect("valid");
            let Verdict::Proceed { then: Some(spoil) } = faults.judge(&Method::POST, Instant::now()) else {
                panic!("a reshape handles the request");
            };
            let spoilt: Value = serde_json::from_slice(&spoil.body(&body)).expect("still JSON");
            bodies.push(spoilt);
        }
        assert_eq!(bodies[0], serde_json::json!({"version": 1}));
        assert_eq!(bodies[1], serde_json::json!({"id": null, "version": 1}));
        assert_eq!(bodies[2], serde_json::json!({"id": "u1", "version": "7"}));
        assert_eq!(
            reshape(&Bytes::from_static(b"[1]"), "id", None),
            Bytes::from_static(b"[1]")
        );
        let unnamed = fault(serde_json::json!({"kind": "reshape", "field": ""}));
        assert!(Faults::default().add(unnamed, Instant::now()).is_err());
    }

    #[test]
    fn unlisted_statuses_are_answered_as_asked() {
        let now = Instant::now();
        let mut faults = Faults::default();
        let redirect = fault(
            serde_json::json!({"kind": "unlisted", "status": 302, "location": "http://elsewhere.example/x"}),
        );
        faults.add(redirect, now).expect("valid");
        assert_eq!(
            match faults.judge(&Method::GET, now) {
                Verdict::Forge(forged) => forged,
                other => panic!("not forged: {other:?}"),
            },
            Forged::Unlisted {
                status: StatusCode::FOUND,
                location: Some("http://elsewhere.example/x".into())
            }
        );
        for status in [99, 101, 600] {
            let request = fault(serde_json::json!({"kind": "unlisted", "status": status}));
            assert!(faults.add(request, now).is_err(), "{status}");
        }
    }

    #[test]
    fn counted_fault_applies_only_to_its_method_and_runs_out() {
        let now = Instant::now();
        let mut faults = Faults::default();
        faults.add(status_fault(2, Some("post")), now).expect("valid");
        assert!(is_proceed(&faults.judge(&Method::GET, now)));
        assert!(matches!(faults.judge(&Method::POST, now), Verdict::Reject(_)));
        assert!(matches!(faults.judge(&Method::POST, now), Verdict::Reject(_)));
        assert!(is_proceed(&faults.judge(&Method::POST, now)));
    }

    #[test]
    fn rate_limit_resets_each_second() {
        let start = Instant::now();
        let mut faults = Faults::default();
        faults
            .add(FaultRequest::RateLimit { per_second: 2 }, start)
            .expect("valid");
        assert!(is_proceed(&faults.judge(&Method::GET, start)));
        assert!(is_proceed(&faults.judge(&Method::GET, start)));
        let Verdict::Reject(error) = faults.judge(&Method::GET, start) else {
            panic!("third request in the window must be limited");
        };
        assert_eq!(error, ApiError::rate_limited(Some(1)));
        let later = start + Duration::from_millis(1000);
        assert!(is_proceed(&faults.judge(&Method::GET, later)));
    }

    #[test]
    fn throttle_answers_every_nth_matching_request() {
        let now = Instant::now();
        let mut faults = Faults::default();
        let throttle = FaultRequest::Throttle {
            every: 3,
            retry_after: 2,
            method: Some("post".into()),
        };
        faults.add(throttle, now).expect("valid");
        let verdicts: Vec<bool> = (0..9)
            .map(|_| matches!(faults.judge(&Method::POST, now), Verdict::Reject(_)))
            .collect();
        assert_eq!(
            verdicts,
            [false, false, true, false, false, true, false, false, true]
        );
        assert!(
            is_proceed(&faults.judge(&Method::GET, now)),
            "other methods are neither throttled nor counted"
        );
        let Verdict::Reject(error) = (0..3)
            .map(|_| faults.judge(&Method::POST, now))
            .last()
            .expect("three verdicts")
        else {
            panic!("the third POST after a GET is throttled");
        };
        assert_eq!(error, ApiError::rate_limited(Some(2)));
        let zero = FaultRequest::Throttle {
            every: 0,
            retry_after: 1,
            method: None,
        };
        assert!(faults.add(zero, now).is_err());
    }

    #[test]
    fn unsupported_status_is_refused() {
        let mut faults = Faults::default();
        let request = FaultRequest::Status {
            status: 418,
            retry_after: None,
            count: 1,
            method: None,
            field: None,
            message: None,
        };
        assert!(faults.add(request, Instant::now()).is_err());
    }

    #[test]
    fn an_injected_422_needs_the_field_it_blames() {
        let now = Instant::now();
        let mut faults = Faults::default();
        let validation = |field: Option<&str>| FaultRequest::Status {
            status: 422,
            retry_after: None,
            count: 1,
            method: None,
            field: field.map(str::to_owned),
            message: Some("not in the number plan".into()),
        };
        assert!(faults.add(validation(None), now).is_err());
        faults.add(validation(Some("pstn_fixed")), now).expect("valid");
        let Verdict::Reject(error) = faults.judge(&Method::POST, now) else {
            panic!("the 422 must be answered");
        };
        assert_eq!(
            error,
            ApiError::validation("pstn_fixed", "not in the number plan")
        );
    }

    #[test]
    fn latency_after_handling_is_kept_apart() {
        let mut faults = Faults::default();
        let latency = FaultRequest::Latency {
            ms: 1500,
            after: true,
        };
        faults.add(latency, Instant::now()).expect("valid");
        assert_eq!(
            faults.latency(),
            Some(Latency {
                delay: Duration::from_millis(1500),
                after: true
            })
        );
    }
}
