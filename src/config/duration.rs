//! Durations in Mosquitto's notation: a whole number followed by one unit letter.
//!
//! Mosquitto's `persistent_client_expiration` takes `h` (hours), `d` (days), `w` (weeks),
//! `m` (months of 30 days) and `y` (years of 365 days); ringmq adds `s` (seconds) and reads a
//! bare number as seconds. Note that `m` is a month, as in Mosquitto, not a minute. A value
//! is always printed back in `s`, `h`, `d` or `w` only, so printed configs are unambiguous.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const MINUTE_SECS: u64 = 60;
const HOUR_SECS: u64 = 60 * MINUTE_SECS;
const DAY_SECS: u64 = 24 * HOUR_SECS;
const WEEK_SECS: u64 = 7 * DAY_SECS;
const MONTH_SECS: u64 = 30 * DAY_SECS;
const YEAR_SECS: u64 = 365 * DAY_SECS;

/// A whole number of seconds, written as `90`, `90s`, `1h`, `2d`, `1w`, `1m` or `1y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurationValue", into = "String")]
pub struct DurationSecs(pub u64);

/// What a TOML file may hold for a duration: an integer (seconds) or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Secs(u64),
    Text(String),
}

impl TryFrom<DurationValue> for DurationSecs {
    type Error = String;

    fn try_from(value: DurationValue) -> Result<Self, String> {
        match value {
            DurationValue::Secs(secs) => Ok(Self(secs)),
            DurationValue::Text(text) => text.parse(),
        }
    }
}

impl FromStr for DurationSecs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || {
            format!(
                "invalid duration `{text}`: expected a whole number with an optional unit \
                 s, h, d, w, m (30 days) or y (365 days), e.g. `3600`, `12h`, `2d`, `1w`"
            )
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(invalid());
        }
        let count: u64 = digits.parse().map_err(|_| invalid())?;
        let unit_secs = match unit {
            "" | "s" => 1,
            "h" => HOUR_SECS,
            "d" => DAY_SECS,
            "w" => WEEK_SECS,
            "m" => MONTH_SECS,
            "y" => YEAR_SECS,
            _ => return Err(invalid()),
        };
        count
            .checked_mul(unit_secs)
            .map(Self)
            .ok_or_else(|| format!("duration `{text}` is too long"))
    }
}

impl fmt::Display for DurationSecs {
    /// The largest of `w`, `d`, `h` that divides the value exactly, else seconds; 0 is `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        if secs == 0 {
            return f.write_str("0");
        }
        for (unit_secs, unit) in [(WEEK_SECS, 'w'), (DAY_SECS, 'd'), (HOUR_SECS, 'h')] {
            if secs % unit_secs == 0 {
                return write!(f, "{}{unit}", secs / unit_secs);
            }
        }
        write!(f, "{secs}s")
    }
}

impl From<DurationSecs> for String {
    fn from(duration: DurationSecs) -> Self {
        duration.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<u64, String> {
        text.parse::<DurationSecs>().map(|d| d.0)
    }

    #[test]
    fn parses_mosquitto_units() {
        assert_eq!(parse("2h"), Ok(7_200));
        assert_eq!(parse("14d"), Ok(14 * 86_400));
        assert_eq!(parse("1w"), Ok(604_800));
        // Mosquitto's `m` is a month of 30 days, and `y` a year of 365 days.
        assert_eq!(parse("2m"), Ok(60 * 86_400));
        assert_eq!(parse("1y"), Ok(365 * 86_400));
    }

    #[test]
    fn parses_seconds_bare_or_with_unit() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("90"), Ok(90));
        assert_eq!(parse("90s"), Ok(90));
        assert_eq!(parse(" 5d "), Ok(5 * 86_400));
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in ["", "h", "-1d", "1.5h", "1 d", "1dd", "1D", "3min", "1h30"] {
            let error = parse(text).expect_err(text);
            assert!(error.contains("invalid duration"), "{text}: {error}");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
        assert!(parse("18446744073709551616").is_err());
        assert!(parse("18446744073709551615y").unwrap_err().contains("too long"));
    }

    #[test]
    fn prints_the_largest_exact_unit_and_round_trips() {
        for (secs, text) in [
            (0, "0"),
            (59, "59s"),
            (3_600, "1h"),
            (90_000, "25h"),
            (172_800, "2d"),
            (1_209_600, "2w"),
        ] {
            assert_eq!(DurationSecs(secs).to_string(), text);
            assert_eq!(parse(text), Ok(secs));
        }
        // A month is printed in days so that `m` never appears in output.
        assert_eq!(DurationSecs(30 * 86_400).to_string(), "30d");
    }

    #[test]
    fn deserializes_from_integer_or_string() {
        #[derive(Deserialize)]
        struct Holder {
            value: DurationSecs,
        }
        let from_int: Holder = toml::from_str("value = 3600").unwrap();
        assert_eq!(from_int.value, DurationSecs(3_600));
        let from_text: Holder = toml::from_str("value = \"1w\"").unwrap();
        assert_eq!(from_text.value, DurationSecs(604_800));
        let error = toml::from_str::<Holder>("value = \"soon\"").err().unwrap().to_string();
        assert!(error.contains("invalid duration `soon`"), "{error}");
    }
}
