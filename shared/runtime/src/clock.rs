//! The services' clock. Production reads the system time; tests move time
//! across every process of a stack by writing an RFC 3339 instant into the file
//! named by `USERSYNC_CLOCK_FILE` (grace periods, schedules and daily limits are
//! tested without waiting days).

use chrono::{DateTime, Utc};

/// The variable that names the clock file.
pub const CLOCK_FILE_VAR: &str = "USERSYNC_CLOCK_FILE";

/// Now: the instant in the clock file when one is configured and readable,
/// the system time otherwise.
pub fn now() -> DateTime<Utc> {
    std::env::var_os(CLOCK_FILE_VAR)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
        .map_or_else(Utc::now, |time| time.with_timezone(&Utc))
}
