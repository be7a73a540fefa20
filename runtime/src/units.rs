//! Sizes and durations in the forms runc's flags take (`64m`, `1G`, `-1`; `5s`, `500ms`).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid size {0:?}: use bytes or a number with a suffix such as 512k, 64m, 1g, or -1 for unlimited")]
    Size(String),
    #[error("invalid duration {0:?}: use a number with a unit such as 500ms, 5s or 1m")]
    Duration(String),
}

/// Parses a memory size the way docker's `RAMInBytes` does: binary multiples, `-1` = unlimited.
pub fn parse_size(s: &str) -> Result<i64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, suffix) = lower.split_at(digits_end);
    let num: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match suffix.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        "p" => 1024.0f64.powi(5),
        _ => return Err(err()),
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
        return Err(err());
    }
    Ok(v as i64)
}

/// Parses a Go-style duration (`1h2m3s`, `500ms`, `5s`).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| err())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += Duration::from_secs_f64(n * secs);
        rest = &rest[u_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("-1").unwrap(), -1);
        for bad in ["", "m", "12x", "-5", "1..2m"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        for bad in ["", "5", "s", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
