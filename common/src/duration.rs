//! Durations as Istio resources write them (`2s`, `500ms`, `1m`, `1h`, `1m30s`, `0.5s`).
//!
//! Istio's protobuf `Duration` fields accept Go-style strings in YAML; we parse the same forms
//! so resources exported from a real cluster load unchanged.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration parsed from an Istio-style string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason} (expected forms like 2s, 500ms, 1m, 1h, 1m30s)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

impl Duration {
    pub const ZERO: Duration = Duration(StdDuration::ZERO);

    pub fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }

    pub fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }

    pub fn as_std(&self) -> StdDuration {
        self.0
    }

    /// Parses `2s`, `1.5s`, `500ms`, `10us`, `1m30s`, `1h`, `0` (Go's `time.ParseDuration` forms,
    /// without a sign: a negative timeout has no meaning in any resource we read).
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut total_nanos: u128 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if start == i {
                return Err(err("expected a number"));
            }
            let num: f64 = s[start..i].parse().map_err(|_| err("bad number"))?;
            let ustart = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit_nanos: f64 = match &s[ustart..i] {
                "h" => 3_600e9,
                "m" => 60e9,
                "s" => 1e9,
                "ms" => 1e6,
                "us" | "µs" => 1e3,
                "ns" => 1.0,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            total_nanos += (num * unit_nanos).round() as u128;
        }
        let nanos = u64::try_from(total_nanos).map_err(|_| err("too large"))?;
        Ok(Duration(StdDuration::from_nanos(nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as 2s, 500ms or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::ZERO)
                } else {
                    Err(E::custom(format!(
                        "invalid duration `{v}`: missing unit (expected forms like 2s, 500ms, 1m)"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_forms() {
        assert_eq!(Duration::parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(
            Duration::parse("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(Duration::parse("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(Duration::parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(Duration::parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(Duration::parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in ["", "2", "abc", "-1s", "2x", "s"] {
            assert!(Duration::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
