//! `Timestamp`: whole seconds since the Unix epoch, shown as RFC 3339 UTC.
//!
//! Retention is decided by the vault's own clock; clients never supply a timestamp that the
//! store trusts. Seconds are precise enough for retention and keep the on-disk form trivial.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The far future: "retain forever".
    pub const FOREVER: Timestamp = Timestamp(253_402_300_799); // 9999-12-31T23:59:59Z

    /// The system clock now. Only the vault's clock may call this for retention decisions.
    pub fn now() -> Timestamp {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp(d.as_secs() as i64)
    }

    /// This instant plus a duration, saturating at [`Timestamp::FOREVER`].
    pub fn plus(self, d: Duration) -> Timestamp {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(secs).min(Self::FOREVER.0))
    }

    /// Seconds since the epoch.
    pub fn as_secs(self) -> i64 {
        self.0
    }

    fn to_offset(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(self.0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self
            .to_offset()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

/// A timestamp that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad timestamp {text:?}: {why} (expected RFC 3339, e.g. 2026-11-23T09:00:00Z)")]
pub struct TimestampError {
    pub text: String,
    pub why: String,
}

impl crate::UserFacing for TimestampError {}

impl FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, TimestampError> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| TimestampError { text: s.to_string(), why: e.to_string() })?;
        Ok(Timestamp(t.unix_timestamp()))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let t = Timestamp(1_782_000_000);
        let s = t.to_string();
        assert_eq!(s, "2026-06-21T00:00:00Z");
        assert_eq!(s.parse::<Timestamp>().unwrap(), t);
        assert_eq!(Timestamp::FOREVER.to_string(), "9999-12-31T23:59:59Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn plus_saturates() {
        assert_eq!(Timestamp(10).plus(Duration::from_secs(5)), Timestamp(15));
        assert_eq!(Timestamp(10).plus(Duration::MAX), Timestamp::FOREVER);
    }
}
