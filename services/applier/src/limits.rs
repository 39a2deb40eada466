//! Per-tenant limits on PBX calls within one replica: a cap on calls in
//! flight, an optional pace (calls per second), and a pause after a 429, so
//! one company's slow or throttling PBX never holds the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use usersync_core::{PbxLimits, TenantConfig};
use usersync_pbx::{PbxError, PbxErrorKind};

/// The longest pause one 429 gets: a PBX that asks for more is asked again
/// then (and its 429s count against the changes that meet them).
pub const LONGEST_PAUSE: Duration = Duration::from_secs(300);
/// The pause after a 429 that did not say how long.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// The gates of every tenant this replica has written for.
#[derive(Default)]
pub struct TenantGates {
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

impl TenantGates {
    /// The tenant's gate; a new one when its limits changed.
    pub fn gate(&self, tenant: &TenantConfig) -> Arc<Gate> {
        let mut gates = self.gates.lock();
        match gates.get(&tenant.id) {
            Some(gate) if gate.limits == tenant.pbx_limits => Arc::clone(gate),
            _ => {
                let gate = Arc::new(Gate::new(tenant.pbx_limits));
                gates.insert(tenant.id.clone(), Arc::clone(&gate));
                gate
            }
        }
    }
}

pub struct Gate {
    limits: PbxLimits,
    in_flight: Arc<Semaphore>,
    pace: Option<Mutex<Pace>>,
    paused_until: Mutex<Option<Instant>>,
}

impl Gate {
    fn new(limits: PbxLimits) -> Gate {
        Gate {
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight() as usize)),
            pace: limits.requests_per_second.map(|rate| Mutex::new(Pace::new(rate))),
            paused_until: Mutex::new(None),
        }
    }

    pub fn max_in_flight(&self) -> usize {
        self.limits.max_in_flight() as usize
    }

    /// A slot for one change's PBX calls.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for the tenant's pace to allow one more call.
    pub async fn pace(&self) {
        let Some(pace) = &self.pace else { return };
        let wait = pace.lock().reserve(Instant::now());
        if !wait.is_zero() {
            throttled(wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// No calls for `wait` (the PBX answered 429 with Retry-After), at most
    /// [`LONGEST_PAUSE`].
    pub fn pause(&self, wait: Duration) {
        let wait = wait.min(LONGEST_PAUSE);
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock();
        if paused.is_none_or(|current| current < until) {
            throttled(wait);
            *paused = Some(until);
        }
    }

    /// One PBX call as the gate allows: after the tenant's pause and pace, and
    /// again after each 429 (which pauses the tenant) while that pause ends
    /// before `until`; past `until` the 429 is the answer.
    pub async fn call<T, Fut>(&self, until: Instant, mut call: impl FnMut() -> Fut) -> Result<T, PbxError>
    where
        Fut: Future<Output = Result<T, PbxError>>,
    {
        loop {
            if let Some(wait) = self.paused_for() {
                if Instant::now() + wait > until {
                    return Err(PbxError::from_kind(
                        PbxErrorKind::RateLimited {
                            retry_after: Some(wait),
                        },
                        format!("the tenant is paused for {wait:.1?} more after a 429"),
                    ));
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            self.pace().await;
            match call().await {
                Err(err) if matches!(err.kind, PbxErrorKind::RateLimited { .. }) => {
                    self.pause(err.retry_after().unwrap_or(DEFAULT_PAUSE));
                    if Instant::now() + self.paused_for().unwrap_or_default() > until {
                        return Err(err);
                    }
                }
                other => return other,
            }
        }
    }

    /// How much longer the tenant is paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock())?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Adds a throttling wait to the seconds counter. The counter takes whole
/// numbers, so the fractions are carried until they make a second.
fn throttled(wait: Duration) {
    static WAITED_MICROS: AtomicU64 = AtomicU64::new(0);
    let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
    let before = WAITED_MICROS.fetch_add(micros, Ordering::Relaxed);
    let whole_seconds = (before.saturating_add(micros)) / 1_000_000 - before / 1_000_000;
    if whole_seconds > 0 {
        metrics::counter!("usersync_throttle_wait_seconds_total", "target" => "pbx").increment(whole_seconds);
    }
}

/// Evenly spaced calls: each call reserves the next free instant.
struct Pace {
    interval: Duration,
    next: Option<Instant>,
}

impl Pace {
    fn new(per_second: f64) -> Pace {
        Pace {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: None,
        }
    }

    /// How long to wait from `now` before the reserved call.
    fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.next.map_or(now, |next| next.max(now));
        self.next = Some(at + self.interval);
        at - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spaces_calls_evenly_and_forgets_idle_time() {
        let start = Instant::now();
        let mut pace = Pace::new(10.0);
        let waits: Vec<_> = (0..4).map(|_| pace.reserve(start)).collect();
        assert_eq!(
            waits,
            [0, 100, 200, 300].map(Duration::from_millis),
            "10 per second: one call every 100 ms"
        );
        // After a quiet second the next call goes at once, with no burst saved up.
        let later = start + Duration::from_secs(2);
        assert_eq!(pace.reserve(later), Duration::ZERO);
        assert_eq!(pace.reserve(later), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_gate_caps_calls_in_flight_and_follows_changed_limits() {
        let gates = TenantGates::default();
        let mut tenant: TenantConfig = serde_json::from_value(crate::apply::tests::tenant_json()).unwrap();
        tenant.pbx_limits.max_in_flight = Some(2);
        let gate = gates.gate(&tenant);
        let _a = gate.slot().await;
        let _b = gate.slot().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), gate.slot())
                .await
                .is_err(),
            "a third call must wait"
        );
        assert!(Arc::ptr_eq(&gate, &gates.gate(&tenant)));
        tenant.pbx_limits.max_in_flight = Some(3);
        let changed = gates.gate(&tenant);
        assert_eq!(changed.max_in_flight(), 3);
    }

    #[tokio::test]
    async fn a_call_waits_out_the_429s_it_meets_until_its_deadline() {
        let gate = Gate::new(PbxLimits::default());
        let throttled = || {
            Err::<(), _>(PbxError::from_kind(
                PbxErrorKind::RateLimited {
                    retry_after: Some(Duration::from_millis(20)),
                },
                "too many requests",
            ))
        };
        let mut answers = vec![Ok(()), throttled(), throttled()];
        let calls = std::sync::atomic::AtomicU32::new(0);
        let soon = Instant::now() + Duration::from_secs(5);
        let answer = gate
            .call(soon, || {
                calls.fetch_add(1, Ordering::Relaxed);
                let next = answers.pop().expect("an answer");
                async move { next }
            })
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(calls.load(Ordering::Relaxed), 3, "called again after each pause");

        // A 429 whose pause ends past the deadline is the answer, and no
        // call goes out while the tenant is paused beyond it.
        let now = Instant::now();
        let answer = gate.call(now, || async { throttled() }).await;
        assert!(
            matches!(answer, Err(ref err) if err.retry_after().is_some()),
            "{answer:?}"
        );
        let answer: Result<(), _> = gate
            .call(Instant::now(), || async { panic!("called while paused") })
            .await;
        assert!(answer.is_err());
    }

    #[test]
    fn a_pause_runs_out() {
        let gate = Gate::new(PbxLimits::default());
        assert_eq!(gate.paused_for(), None);
        gate.pause(Duration::from_secs(5));
        let left = gate.paused_for().expect("paused");
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        gate.pause(Duration::from_millis(1));
        assert!(
            gate.paused_for().expect("still paused") > Duration::from_secs(4),
            "a shorter pause does not cut a longer one"
        );
        gate.pause(Duration::from_secs(86_400));
        assert!(
            gate.paused_for().expect("paused") <= LONGEST_PAUSE,
            "a day's Retry-After is honoured for five minutes"
        );
    }
}
