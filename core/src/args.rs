//! Parsers for command-line settings shared by the binaries.

use std::time::Duration;

/// A humantime duration (`500ms`, `30s`, `5m`) that must be more than zero: for intervals and
/// time limits, where zero would mean "never wait" or, for tokio's interval, a panic.
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err(format!("{raw:?} is zero; it must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_zero_is_refused() {
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(positive_duration("0s").unwrap_err().contains("must be more than zero"));
        assert!(positive_duration("0").is_err());
        assert!(positive_duration("soon").is_err());
    }
}
