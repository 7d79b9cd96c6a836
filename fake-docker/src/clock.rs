//! Wall-clock times derived from tokio's clock, so paused-time tests give deterministic output.

use time::{Duration, OffsetDateTime};

/// `base` is the wall-clock time the daemon pretends it started at.
#[derive(Debug, Clone)]
pub struct Clock {
    base: OffsetDateTime,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new(base: OffsetDateTime) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.base + Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
    }
}

/// Go's RFC3339Nano: trailing zeros of the fraction trimmed, `Z` for UTC.
pub fn rfc3339_nano(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The fixed-width form dockerd uses for log timestamps.
pub fn rfc3339_nano_fixed(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Go's `units.HumanDuration`, used in `Status` strings such as `Up 5 seconds`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.whole_seconds();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = d.whole_minutes();
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = d.whole_hours();
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    format!("{} days", hours / 24)
}

/// Parses dockerd's `since`/`until` (`sec[.nanos]`, `0` = unset) into a time.
pub fn parse_unix_ts(s: &str) -> Option<OffsetDateTime> {
    if s.is_empty() || s == "0" {
        return None;
    }
    let (secs, nanos) = match s.split_once('.') {
        Some((a, b)) => {
            let mut frac = b.to_string();
            frac.truncate(9);
            while frac.len() < 9 {
                frac.push('0');
            }
            (a.parse::<i64>().ok()?, frac.parse::<i64>().ok()?)
        }
        None => (s.parse::<i64>().ok()?, 0),
    };
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_like_go() {
        let t = datetime!(2024-01-02 03:04:05.120 UTC);
        assert_eq!(rfc3339_nano(t), "2024-01-02T03:04:05.12Z");
        assert_eq!(rfc3339_nano_fixed(t), "2024-01-02T03:04:05.120000000Z");
        assert_eq!(
            rfc3339_nano(datetime!(2024-01-02 03:04:05 UTC)),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(parse_unix_ts("0"), None);
        assert_eq!(
            parse_unix_ts("1.5").map(|t| t.nanosecond()),
            Some(500_000_000)
        );
    }
}
