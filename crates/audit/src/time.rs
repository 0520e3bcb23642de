//! `AuditTime`: the gate's clock at the moment an event was recorded, in microseconds since the
//! Unix epoch, written as RFC 3339 UTC with six fractional digits.
//!
//! Seconds (the store's `Timestamp`) are too coarse to order the statements of one session; the
//! hash covers the integer, so how the text is spelt never changes a record's hash.

use std::fmt;
use std::str::FromStr;

use crate::error::{ParseError, clip};

/// A point in time, microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AuditTime(pub i64);

impl AuditTime {
    /// The system clock now.
    pub fn now() -> AuditTime {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        AuditTime(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant minus a duration (saturating).
    pub fn minus(self, d: std::time::Duration) -> AuditTime {
        AuditTime(self.0.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }
}

impl fmt::Display for AuditTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0) * 1000;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| fmt::Error)?;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

impl FromStr for AuditTime {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| ParseError::Time { text: clip(s), why: e.to_string() })?;
        let micros = t.unix_timestamp_nanos() / 1000;
        i64::try_from(micros).map(AuditTime).map_err(|_| ParseError::TimeRange(clip(s)))
    }
}

impl serde::Serialize for AuditTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AuditTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_microseconds() {
        let t = AuditTime(1_795_000_000_123_456);
        let s = t.to_string();
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(s.parse::<AuditTime>().unwrap(), t);
        // Other spellings of the same instant mean the same time.
        assert_eq!("2026-11-18T12:06:40.123456+01:00".parse::<AuditTime>().unwrap(), t);
        let e = "yesterday".parse::<AuditTime>().unwrap_err();
        assert!(matches!(&e, ParseError::Time { text, .. } if text == "yesterday"), "{e}");
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}
