//! Value parsers shared by the components' flag groups. A bad value stops the start with a
//! message naming it. This module imports nothing of the crate, so every component can use it.

use std::time::Duration;

/// Parses a positive human-friendly duration such as `15s`, `500ms` or `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(format!("{value:?} must be longer than zero")),
        Err(e) => Err(format!("{value:?} is not a duration such as 15s or 500ms ({e})")),
    }
}

/// A count from one to `max`: zero would refuse everything, or configure nothing.
pub fn count(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=max)
}
