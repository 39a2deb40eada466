//! When to try a change again: what the PBX asked for (429 Retry-After), else
//! exponential backoff with jitter. The wait itself happens in the bus's
//! delayed-retry queues, never in a consumer.

use std::time::Duration;

use rand::Rng;

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
    fn backoff_is_spread() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| backoff(3, &mut rng).as_millis()).collect();
        assert!(delays.len() > 10, "jitter spreads the delays: {delays:?}");
    }
}
