//! When a tenant's nightly run is due: the schedule's wall-clock time in its
//! time zone, correct across daylight-saving changes.

use chrono::{DateTime, Days, LocalResult, TimeDelta, TimeZone, Utc};

use crate::Schedule;

/// The first instant strictly after `after` at which the schedule's local time
/// comes round.
///
/// - A local time that does not exist that day (the clock jumps forward over it)
///   runs at the first valid instant after the gap, so the night is not skipped.
/// - A local time that happens twice (the clock falls back) runs once, at its
///   first occurrence.
pub fn next_due(schedule: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
    let zone = schedule.timezone;
    let today = after.with_timezone(&zone).date_naive();
    // Yesterday too: a zone behind UTC can still be on the previous date.
    (0..4u64)
        .filter_map(|days| {
            let date = today
                .checked_sub_days(Days::new(1))?
                .checked_add_days(Days::new(days))?;
            Some(local_instant(&zone, date.and_time(schedule.at)))
        })
        .find(|at| *at > after)
        // Four consecutive days always hold one later occurrence.
        .expect("a due time within four days")
}

/// The instant of a local wall-clock time, resolving gaps and overlaps as above.
fn local_instant<Z: TimeZone>(zone: &Z, local: chrono::NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: walk forward minute by minute to where local time exists
            // again (gaps are at most a few hours).
            let mut probe = local;
            loop {
                probe += TimeDelta::minutes(1);
                if let Some(at) = zone.from_local_datetime(&probe).earliest() {
                    // The gap's end: the first valid minute, at its start.
                    return at.with_timezone(&Utc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveTime;
    use chrono_tz::{America::New_York, Europe::Stockholm, Tz};
    use proptest::prelude::*;

    use super::*;

    fn schedule(at: &str, timezone: Tz) -> Schedule {
        Schedule {
            at: NaiveTime::parse_from_str(at, "%H:%M").unwrap(),
            timezone,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn later_today_or_tomorrow_in_the_tenants_zone() {
        let s = schedule("02:00", Stockholm);
        // 00:30 UTC in winter is 01:30 in Stockholm: due at 01:00 UTC the same day.
        assert_eq!(
            next_due(&s, utc("2026-01-10T00:30:00Z")),
            utc("2026-01-10T01:00:00Z")
        );
        // Summer: 02:00 Stockholm is 00:00 UTC, the next day.
        assert_eq!(
            next_due(&s, utc("2026-07-10T12:00:00Z")),
            utc("2026-07-11T00:00:00Z")
        );
        // Strictly after: at the due instant itself, the next one is a day later.
        assert_eq!(
            next_due(&s, utc("2026-01-10T01:00:00Z")),
            utc("2026-01-11T01:00:00Z")
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_runs_when_the_clock_resumes() {
        // 2026-03-29 in Stockholm: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = schedule("02:30", Stockholm);
        let due = next_due(&s, utc("2026-03-28T12:00:00Z"));
        assert_eq!(due, utc("2026-03-29T01:00:00Z"));
        assert_eq!(due.with_timezone(&Stockholm).format("%H:%M").to_string(), "03:00");
        // The night after, 02:30 exists again (CEST).
        assert_eq!(next_due(&s, due), utc("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn a_time_repeated_on_fall_back_runs_once() {
        // 2026-10-25 in Stockholm: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = schedule("02:30", Stockholm);
        let first = next_due(&s, utc("2026-10-24T12:00:00Z"));
        assert_eq!(first, utc("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        // From the first run on, the next is the following night, not the second 02:30.
        assert_eq!(next_due(&s, first), utc("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn zones_behind_utc_use_their_own_date() {
        // 23:30 on 9 January in New York is 04:30 UTC on the 10th.
        let s = schedule("23:45", New_York);
        assert_eq!(
            next_due(&s, utc("2026-01-10T04:30:00Z")),
            utc("2026-01-10T04:45:00Z")
        );
    }

    proptest! {
        #[test]
        fn always_later_and_within_a_day_and_an_hour(secs in 1_700_000_000i64..1_900_000_000, h in 0u32..24, m in 0u32..60) {
            let s = Schedule { at: NaiveTime::from_hms_opt(h, m, 0).unwrap(), timezone: Stockholm };
            let after = DateTime::from_timestamp(secs, 0).unwrap();
            let due = next_due(&s, after);
            prop_assert!(due > after);
            prop_assert!(due - after <= TimeDelta::hours(25));
        }
    }
}
