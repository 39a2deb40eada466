//! The notifier's decisions, as plain functions: which mails a run needs and
//! their deterministic ids.

use chrono::NaiveDate;
use usersync_contract::RunCounts;
use usersync_core::NotificationLevel;
use uuid::Uuid;

/// Days before a client secret expires on which its tenant is warned, widest first.
pub const EXPIRY_WARNING_DAYS: [i64; 3] = [30, 14, 3];

/// What a finished run holds, for deciding whether the tenant hears of it.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary<'a> {
    pub failed: bool,
    pub counts: &'a RunCounts,
    pub warnings: &'a [String],
    /// Welcome mails of the tenant not yet reported (no address, refused, uncertain).
    pub mail_problems: bool,
}

/// The level of the most serious item of a run: a failed run is an `error`;
/// users skipped, failed or held, run warnings and undelivered welcome mails
/// are `warning`s; anything else is only worth an `info` summary.
pub fn run_level(run: &RunSummary<'_>) -> NotificationLevel {
    let counts = run.counts;
    if run.failed {
        NotificationLevel::Error
    } else if counts.skipped > 0
        || counts.failed > 0
        || counts.held > 0
        || !run.warnings.is_empty()
        || run.mail_problems
    {
        NotificationLevel::Warning
    } else {
        NotificationLevel::Info
    }
}

/// A tenant at level `wanted` gets a digest of every run whose level is at most `wanted`.
pub fn digest_wanted(wanted: NotificationLevel, run: &RunSummary<'_>) -> bool {
    run_level(run) <= wanted
}

/// The id of a run's digest. A failed run with an error code shares its id
/// with every failure of the same episode on the same (tenant-local) day, so a
/// standing error is mailed at most once a day.
pub fn digest_id(tenant_id: &str, run_id: Uuid, standing: Option<(&str, Uuid)>, today: NaiveDate) -> String {
    match standing {
        Some((code, opened_run)) => format!("error:{tenant_id}:{code}:{opened_run}:{today}"),
        None => format!("digest:{run_id}"),
    }
}

pub fn resolved_id(tenant_id: &str, code: &str, opened_run: Uuid) -> String {
    format!("resolved:{tenant_id}:{code}:{opened_run}")
}

pub fn welcome_id(tenant_id: &str, pbx_id: &str) -> String {
    format!("welcome:{tenant_id}:{pbx_id}")
}

pub fn welcome_copy_id(tenant_id: &str, pbx_id: &str) -> String {
    format!("welcome-copy:{tenant_id}:{pbx_id}")
}

/// The expiry warning due on `today`, if any: the narrowest threshold the
/// remaining days fall within (a tenant first checked 10 days out gets the
/// 14-day warning, not the 30-day one too). None once the secret has expired:
/// the failing runs report that.
pub fn expiry_warning(expires_on: NaiveDate, today: NaiveDate) -> Option<i64> {
    let days_left = (expires_on - today).num_days();
    if days_left < 0 {
        return None;
    }
    EXPIRY_WARNING_DAYS
        .into_iter()
        .rev()
        .find(|&days| days_left <= days)
}

/// One id per secret (its expiry date) and threshold: a renewed secret starts over.
pub fn expiry_id(tenant_id: &str, expires_on: NaiveDate, threshold: i64) -> String {
    format!("secret-expiry:{tenant_id}:{expires_on}:{threshold}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary<'a>(failed: bool, counts: &'a RunCounts, warnings: &'a [String]) -> RunSummary<'a> {
        RunSummary {
            failed,
            counts,
            warnings,
            mail_problems: false,
        }
    }

    #[test]
    fn levels_widen_from_error_to_info() {
        let clean = RunCounts::default();
        let skipped = RunCounts {
            skipped: 1,
            ..RunCounts::default()
        };
        let held = RunCounts {
            held: 3,
            ..RunCounts::default()
        };
        let none: [String; 0] = [];
        let warned = ["group Telephony matches 2 groups".to_owned()];
        use NotificationLevel::*;
        assert!(digest_wanted(Error, &summary(true, &clean, &none)));
        assert!(!digest_wanted(Error, &summary(false, &skipped, &none)));
        assert!(digest_wanted(Warning, &summary(false, &skipped, &none)));
        assert!(digest_wanted(Warning, &summary(false, &held, &none)));
        assert!(digest_wanted(Warning, &summary(false, &clean, &warned)));
        assert!(!digest_wanted(Warning, &summary(false, &clean, &none)));
        assert!(digest_wanted(Info, &summary(false, &clean, &none)));
        let mut undelivered = summary(false, &clean, &none);
        undelivered.mail_problems = true;
        assert_eq!(run_level(&undelivered), Warning);
    }

    #[test]
    fn a_standing_error_has_one_digest_a_day() {
        let run_a = Uuid::from_u128(1);
        let run_b = Uuid::from_u128(2);
        let opened = Uuid::from_u128(9);
        let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let same = digest_id("acme", run_a, Some(("entra.7000222", opened)), day);
        assert_eq!(
            same,
            digest_id("acme", run_b, Some(("entra.7000222", opened)), day)
        );
        assert_ne!(
            same,
            digest_id(
                "acme",
                run_b,
                Some(("entra.7000222", opened)),
                day.succ_opt().unwrap()
            )
        );
        assert_ne!(
            same,
            digest_id("acme", run_b, Some(("pbx.unauthorized", opened)), day)
        );
        assert_ne!(
            digest_id("acme", run_a, None, day),
            digest_id("acme", run_b, None, day)
        );
    }

    #[test]
    fn expiry_warnings_at_30_14_and_3_days() {
        let expires = NaiveDate::from_ymd_opt(2026, 4, 30).unwrap();
        let days_before = |n: i64| expires - chrono::Days::new(n as u64);
        assert_eq!(expiry_warning(expires, days_before(31)), None);
        assert_eq!(expiry_warning(expires, days_before(30)), Some(30));
        assert_eq!(expiry_warning(expires, days_before(15)), Some(30));
        assert_eq!(expiry_warning(expires, days_before(14)), Some(14));
        assert_eq!(expiry_warning(expires, days_before(4)), Some(14));
        assert_eq!(expiry_warning(expires, days_before(3)), Some(3));
        assert_eq!(expiry_warning(expires, expires), Some(3));
        assert_eq!(expiry_warning(expires, expires.succ_opt().unwrap()), None);
        assert_ne!(expiry_id("acme", expires, 30), expiry_id("acme", expires, 14));
    }
}
