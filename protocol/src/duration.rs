//! Go durations (`time.ParseDuration`, `7m`, `1h30m`, `500ms`): the one duration syntax of
//! the launcher's variables, the fake backend's CLI and scenario files. Pure text, no I/O.

use std::time::Duration;

/// Go's longest duration (`time.Duration` is an int64 of nanoseconds).
const GO_MAX_DURATION_NANOS: u128 = i64::MAX as u128;
const TOO_LONG: &str = "longer than the maximum, 2562047h47m16.854775807s";

/// Parses a Go duration (`time.ParseDuration`): `[-+]?(\d*(\.\d*)?(ns|us|µs|μs|ms|s|m|h))+`
/// or `0`, at most Go's maximum (so no later `Instant + Duration` can overflow). Negative
/// durations are rejected (we have no use for them).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty".into());
    }
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("expected a number before each unit".into());
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err("missing unit (ns, us, ms, s, m, h)".into()),
            other => return Err(format!("unknown unit {other:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| TOO_LONG.to_string())?
        };
        let mut value = int
            .checked_mul(nanos_per)
            .ok_or_else(|| TOO_LONG.to_string())?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let frac_num: u128 = frac[..digits as usize]
                .parse()
                .map_err(|_| "bad fraction".to_string())?;
            value = value
                .checked_add(frac_num * nanos_per / 10u128.pow(digits))
                .ok_or_else(|| TOO_LONG.to_string())?;
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= GO_MAX_DURATION_NANOS)
            .ok_or_else(|| TOO_LONG.to_string())?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| TOO_LONG.to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Writes `d` as a Go duration that [`parse_go_duration`] reads back exactly: its non-zero
/// parts from hours down to nanoseconds (`1h30m`, `1s500ms`), or `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let out: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if out.is_empty() {
        "0s".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("7m"), Ok(Duration::from_secs(420)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(d("3ns"), Ok(Duration::from_nanos(3)));
        assert_eq!(d("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert!(d("7").is_err());
        assert!(d("-7m").is_err());
        assert!(d("7d").is_err());
        assert!(d("m").is_err());
        assert!(d("").is_err());
        assert!(d("1..2s").is_err());
    }

    /// Go's `time.Duration` tops out at 2562047h47m16.854775807s; beyond it Go refuses,
    /// and so do we (an `Instant + Duration` that large would overflow later).
    #[test]
    fn durations_beyond_gos_maximum_are_refused() {
        let d = |s| parse_go_duration(s);
        assert_eq!(
            d("2562047h47m16.854775807s"),
            Ok(Duration::new(9_223_372_036, 854_775_807))
        );
        for s in [
            "2562048h",
            "2562047h47m16.854775808s",
            "18446744073709551615s",
        ] {
            let e = d(s).unwrap_err();
            assert!(e.contains("2562047h"), "{s}: {e}");
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::new(1, 500_000_123), "1s500ms123ns"),
            (Duration::from_secs(3 * 86_400), "72h"),
            (Duration::from_micros(2), "2us"),
        ] {
            assert_eq!(format_go_duration(d), text);
            assert_eq!(parse_go_duration(text), Ok(d));
        }
    }
}
