//! `Lsn`: a position in the write-ahead log, printed the way PostgreSQL prints it (`16/B374D848`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FormatError;

/// A log sequence number: a byte position in the (conceptually infinite) WAL stream.
///
/// Displays and parses as PostgreSQL's `%X/%X` form: the upper and lower 32 bits in
/// uppercase hexadecimal without leading zeros. Serialises as that string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, PostgreSQL's `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is `0/0`, which PostgreSQL uses for "no position".
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The position `bytes` further on, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// The position `bytes` earlier, or `None` below `0/0`.
    pub fn checked_sub(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_sub(bytes).map(Lsn)
    }

    /// The number of bytes from `earlier` to `self` (0 when `earlier` is later).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Rounds up to a multiple of `align` (a power of two), as PostgreSQL's `MAXALIGN` does.
    pub fn align_up(self, align: u64) -> Lsn {
        debug_assert!(align.is_power_of_two());
        Lsn((self.0 + align - 1) & !(align - 1))
    }

    /// Rounds down to a multiple of `align` (a power of two).
    pub fn align_down(self, align: u64) -> Lsn {
        debug_assert!(align.is_power_of_two());
        Lsn(self.0 & !(align - 1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FormatError::Lsn(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0100_0028).to_string(), "0/1000028");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_postgres_forms() {
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("0/1000028".parse::<Lsn>().unwrap(), Lsn(0x0100_0028));
        // PostgreSQL's own parser accepts lowercase and leading zeros.
        assert_eq!("00000016/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        for bad in ["", "/", "1/", "/1", "1", "1/2/3", "G/0", "123456789/0", "+1/0", " 1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&Lsn(0x16_B374_D848)).unwrap();
        assert_eq!(json, "\"16/B374D848\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), Lsn(0x16_B374_D848));
        assert!(serde_json::from_str::<Lsn>("\"nope\"").is_err());
    }

    #[test]
    fn arithmetic() {
        assert_eq!(Lsn(10).checked_add(5), Some(Lsn(15)));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(3).checked_sub(5), None);
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
        assert_eq!(Lsn(9).align_up(8), Lsn(16));
        assert_eq!(Lsn(16).align_up(8), Lsn(16));
        assert_eq!(Lsn(15).align_down(8), Lsn(8));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v in any::<u64>()) {
            let s = Lsn(v).to_string();
            prop_assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(v));
            prop_assert_eq!(s.to_uppercase(), s.clone());
        }

        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Lsn>();
        }
    }
}
