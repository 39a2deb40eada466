//! Retrying transient failures (throttling, outages, broken connections) with backon.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::GraphError;

/// How long and how often a failing request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: usize,
    /// First backoff wait when the server names none.
    pub min_delay: Duration,
    /// Longest computed backoff wait (a server's `Retry-After` is honoured as given).
    pub max_delay: Duration,
    /// A long outage ends with an error instead of spinning forever.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_total_wait: Duration::from_secs(600),
        }
    }
}

/// One wait before a retry, handed to the retry hook (e.g. to count it in a metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryEvent {
    /// HTTP status of the failed attempt; `None` for a transport error.
    pub status: Option<u16>,
    /// How long the client waits before the next attempt.
    pub wait: Duration,
    /// Number of the attempt that failed (1 = the first).
    pub attempt: usize,
    pub reason: String,
}

/// Called before every retry wait.
pub type RetryHook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// A failure that is worth another attempt.
#[derive(Debug)]
pub(crate) struct Transient {
    pub status: Option<u16>,
    pub reason: String,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// A success answer with a broken body (cut short, or not JSON, as from a
    /// proxy): once retries are used up it is an invalid response, not an outage.
    pub bad_body: bool,
}

/// Outcome of one failed attempt.
#[derive(Debug)]
pub(crate) enum AttemptError {
    Retry(Transient),
    Stop(GraphError),
}

impl From<GraphError> for AttemptError {
    fn from(error: GraphError) -> Self {
        Self::Stop(error)
    }
}

/// Statuses Graph and Entra ID use for throttling and passing outages.
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// A transport error: connection refused or reset, timeout, truncated body.
pub(crate) fn transport_error(error: reqwest::Error) -> AttemptError {
    let error = error.without_url();
    if error.is_builder() {
        return AttemptError::Stop(GraphError::InvalidLink {
            reason: describe(&error),
        });
    }
    AttemptError::Retry(Transient {
        status: None,
        reason: describe(&error),
        retry_after: None,
        bad_body: false,
    })
}

/// The error and its causes, without the URL (links carry long delta tokens).
pub(crate) fn describe(error: &reqwest::Error) -> String {
    usersync_core::error_chain(error)
}

/// Parses `Retry-After`: seconds (possibly fractional, e.g. `2.128`) or an HTTP-date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let until = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(until.to_std().unwrap_or(Duration::ZERO))
}

/// Runs `attempt` until it succeeds, fails for good, or the policy gives up.
///
/// Throttling (429 with `Retry-After`) is Graph pacing us, not failing: its
/// waits are honoured as given and count against `max_total_wait` only, so a
/// storm of short `Retry-After`s slows a round down without failing it. Every
/// other transient failure also uses up one of `max_attempts`.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    hook: Option<&RetryHook>,
    mut attempt: F,
) -> Result<T, GraphError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let mut backoffs = backoff(policy).build();
    let mut waited = Duration::ZERO;
    let mut retries = 0;
    let last = loop {
        let transient = match attempt().await {
            Ok(value) => return Ok(value),
            Err(AttemptError::Stop(error)) => return Err(error),
            Err(AttemptError::Retry(transient)) => transient,
        };
        let Some(wait) = next_wait(policy, &transient, &mut backoffs, &mut waited) else {
            break transient;
        };
        retries += 1;
        report_retry(hook, &transient, wait, retries);
        tokio::time::sleep(wait).await;
    };
    Err(if last.bad_body {
        GraphError::InvalidResponse {
            reason: format!("{} (on each of {} attempt(s))", last.reason, retries + 1),
        }
    } else {
        GraphError::Unavailable {
            attempts: retries + 1,
            last: last.reason,
        }
    })
}

fn backoff(policy: &RetryPolicy) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_attempts.saturating_sub(1))
        .with_jitter()
}

/// The least a throttled retry counts against `max_total_wait`, so a server
/// that keeps answering `Retry-After: 0` cannot keep a round spinning forever.
const MIN_THROTTLE_WAIT: Duration = Duration::from_millis(100);

/// The wait before the next attempt, or `None` to give up: the attempts are
/// used up (throttling uses none), or the wait would pass `max_total_wait`.
fn next_wait(
    policy: &RetryPolicy,
    transient: &Transient,
    backoffs: &mut impl Iterator<Item = Duration>,
    waited: &mut Duration,
) -> Option<Duration> {
    let wait = match (transient.status, transient.retry_after) {
        (Some(429), Some(retry_after)) => retry_after.max(MIN_THROTTLE_WAIT),
        // Jitter may push backon's value past max_delay; the server's own figure is kept as is.
        (_, retry_after) => {
            let computed = backoffs.next()?;
            retry_after.unwrap_or_else(|| computed.min(policy.max_delay))
        }
    };
    let total = waited.checked_add(wait)?;
    if total > policy.max_total_wait {
        return None;
    }
    *waited = total;
    Some(wait)
}

fn report_retry(hook: Option<&RetryHook>, transient: &Transient, wait: Duration, attempt: usize) {
    tracing::warn!(
        status = transient.status,
        wait_ms = wait.as_millis() as u64,
        attempt,
        reason = %transient.reason,
        "Graph request failed; retrying after a wait"
    );
    // Every wait spent on Graph's Retry-After or on backoff. A gauge that only
    // grows: the metrics facade's counters take whole numbers, waits are fractional.
    metrics::gauge!("usersync_throttle_wait_seconds_total", "target" => "graph")
        .increment(wait.as_secs_f64());
    if let Some(hook) = hook {
        hook(&RetryEvent {
            status: transient.status,
            wait,
            attempt,
            reason: transient.reason.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers_with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("header"));
        headers
    }

    fn transient(status: u16, retry_after: Option<Duration>) -> Transient {
        Transient {
            status: Some(status),
            reason: format!("HTTP {status}"),
            retry_after,
            bad_body: false,
        }
    }

    #[test]
    fn retry_after_accepts_fractional_seconds() {
        let parsed = retry_after(&headers_with_retry_after("2.128"));
        assert_eq!(parsed, Some(Duration::from_millis(2128)));
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let later = chrono::Utc::now() + chrono::TimeDelta::seconds(30);
        let value = later.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let parsed = retry_after(&headers_with_retry_after(&value)).expect("parsed");
        assert!(parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30));
    }

    #[test]
    fn retry_after_in_the_past_means_now_and_garbage_means_none() {
        let past = retry_after(&headers_with_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(retry_after(&headers_with_retry_after("-3")), None);
        assert_eq!(retry_after(&headers_with_retry_after("soon")), None);
    }

    #[test]
    fn server_wait_is_honoured_exactly_even_above_max_delay() {
        let policy = RetryPolicy::default();
        let mut waited = Duration::ZERO;
        let mut backoffs = [Duration::from_secs(1)].into_iter();
        let wait = next_wait(
            &policy,
            &transient(503, Some(Duration::from_secs(90))),
            &mut backoffs,
            &mut waited,
        );
        assert_eq!(wait, Some(Duration::from_secs(90)));
        assert_eq!(waited, Duration::from_secs(90));
    }

    #[test]
    fn computed_wait_is_capped_at_max_delay() {
        let policy = RetryPolicy::default();
        let mut waited = Duration::ZERO;
        let mut backoffs = [Duration::from_secs(100)].into_iter();
        let wait = next_wait(&policy, &transient(503, None), &mut backoffs, &mut waited);
        assert_eq!(wait, Some(policy.max_delay));
    }

    #[test]
    fn gives_up_when_the_total_wait_would_be_passed() {
        let policy = RetryPolicy::default();
        let mut waited = Duration::from_secs(590);
        let mut backoffs = [Duration::from_secs(1)].into_iter();
        let wait = next_wait(
            &policy,
            &transient(429, Some(Duration::from_secs(11))),
            &mut backoffs,
            &mut waited,
        );
        assert_eq!(wait, None);
    }

    #[test]
    fn gives_up_when_attempts_are_used_up() {
        let policy = RetryPolicy::default();
        let mut waited = Duration::ZERO;
        let wait = next_wait(
            &policy,
            &transient(503, Some(Duration::ZERO)),
            &mut std::iter::empty(),
            &mut waited,
        );
        assert_eq!(wait, None);
    }

    #[test]
    fn throttling_uses_no_attempt_and_counts_at_least_a_tenth_of_a_second() {
        let policy = RetryPolicy::default();
        let mut waited = Duration::ZERO;
        let mut backoffs = std::iter::empty();
        for _ in 0..100 {
            let wait = next_wait(
                &policy,
                &transient(429, Some(Duration::ZERO)),
                &mut backoffs,
                &mut waited,
            );
            assert_eq!(wait, Some(MIN_THROTTLE_WAIT));
        }
        assert_eq!(waited, MIN_THROTTLE_WAIT * 100);
        // A 429 without Retry-After is an ordinary failure: it needs an attempt.
        assert_eq!(
            next_wait(&policy, &transient(429, None), &mut backoffs, &mut waited),
            None
        );
    }

    #[tokio::test]
    async fn a_storm_of_short_retry_afters_ends_in_success() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let mut calls = 0;
        let outcome = with_retries(&policy, None, || {
            calls += 1;
            let n = calls;
            async move {
                if n <= 10 {
                    Err(AttemptError::Retry(transient(429, Some(Duration::ZERO))))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(outcome.expect("throttling alone never fails the request"), 11);
    }
}
