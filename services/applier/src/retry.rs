//! When to try a change again, and when to give it up. A change is given up
//! only once its own writes have failed (transient PBX errors) for the whole
//! give-up bound; until then it is tried again after exponential backoff with
//! jitter, waited in the bus's delayed-retry queues. Pauses the PBX asks for
//! (429 Retry-After) are the gate's business, not a failure (see `limits`).

use std::time::Duration;

use rand::Rng;

/// How long a change's own writes may keep failing before it is recorded as failed.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);

/// What becomes of a change whose own write just failed with a transient error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try it again, not before this (a 429 waits for its pause instead).
    TryAgain(Duration),
    /// Its own writes have failed for the whole bound: record it as failed.
    GiveUp,
}

/// Failed writes of its own a change needs, besides the bound, to be given up:
/// two failures with a long wait between them (the tenant paused for its
/// neighbours' 429s) are not yet a PBX that keeps failing this change.
pub const MIN_TRIES_TO_GIVE_UP: u32 = 3;

/// The give-up rule: only the change's own failures count, measured from its
/// first, so a change is never given up for the time it waited for others or
/// for a pause, and never before at least [`MIN_TRIES_TO_GIVE_UP`] failures
/// span `bound`.
pub fn after_failure(
    tries: u32,
    failing_for: Duration,
    bound: Duration,
    jitter: &mut impl Rng,
) -> AfterFailure {
    if failing_for >= bound && tries >= MIN_TRIES_TO_GIVE_UP {
        AfterFailure::GiveUp
    } else {
        AfterFailure::TryAgain(backoff(tries, jitter))
    }
}

/// The reason a given-up change carries: its own last error and how long it was tried.
pub fn gave_up_reason(last_error: &str, tries: u32, failing_for: Duration) -> String {
    format!(
        "{last_error} (tried {tries} times over {}; the next run tries again)",
        whole_seconds(failing_for)
    )
}

/// "42 s", "15 min 3 s", "2 h 5 min".
pub fn whole_seconds(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

const FIRST_DELAY: Duration = Duration::from_secs(1);
const LONGEST_DELAY: Duration = Duration::from_secs(300);

/// The delay before try `attempt + 1`: 1 s, 2 s, 4 s, … up to 5 minutes, each
/// spread by ±50 % so that replicas and tenants hit by the same outage do not
/// come back in step.
pub fn backoff(attempt: u32, jitter: &mut impl Rng) -> Duration {
    let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    let base = FIRST_DELAY.saturating_mul(doubling).min(LONGEST_DELAY);
    base.mul_f64(jitter.gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn backoff_doubles_within_its_jitter_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let base = (1u64 << (attempt - 1)).min(300) as f64;
            for _ in 0..50 {
                let delay = backoff(attempt, &mut rng).as_secs_f64();
                assert!(
                    delay >= base * 0.5 && delay < base * 1.5,
                    "attempt {attempt}: {delay} s is outside {base} s ± 50 %"
                );
            }
        }
    }

    #[test]
    fn a_change_is_given_up_only_once_its_own_failures_span_the_bound() {
        let mut rng = StdRng::seed_from_u64(3);
        let bound = Duration::from_secs(900);
        // However many tries: under the bound it goes on, with growing backoff.
        for (tries, failing_for) in [(1, 0), (2, 1), (40, 899), (2, 1200)] {
            let next = after_failure(tries, Duration::from_secs(failing_for), bound, &mut rng);
            let AfterFailure::TryAgain(after) = next else {
                panic!("{tries} tries over {failing_for} s must go on: {next:?}");
            };
            let base = (1u64 << (tries - 1).min(16)).min(300) as f64;
            assert!(after.as_secs_f64() >= base * 0.5 && after.as_secs_f64() < base * 1.5);
        }
        for (tries, failing_for) in [(3, 900), (12, 961)] {
            assert_eq!(
                after_failure(tries, Duration::from_secs(failing_for), bound, &mut rng),
                AfterFailure::GiveUp,
                "{tries} tries over {failing_for} s"
            );
        }
    }

    #[test]
    fn a_given_up_change_names_its_error_and_how_long_it_was_tried() {
        let reason = gave_up_reason("PBX answered 503 unavailable: down", 9, Duration::from_secs(963));
        assert_eq!(
            reason,
            "PBX answered 503 unavailable: down (tried 9 times over 16 min 3 s; the next run tries again)"
        );
        assert_eq!(whole_seconds(Duration::from_millis(3400)), "3 s");
        assert_eq!(whole_seconds(Duration::from_secs(900)), "15 min");
        assert_eq!(whole_seconds(Duration::from_secs(7500)), "2 h 5 min");
    }

    #[test]
    fn backoff_is_spread() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| backoff(3, &mut rng).as_millis()).collect();
        assert!(delays.len() > 10, "jitter spreads the delays: {delays:?}");
    }
}
