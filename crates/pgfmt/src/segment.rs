//! Timelines and WAL segment files: `000000010000000000000003`, `00000002.history`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{FormatError, Lsn};

/// The default WAL segment size (16 MiB), `wal_segment_size` unless initdb was told otherwise.
pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A timeline id. Timeline 1 is the one initdb creates; each promotion starts a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>().map(TimelineId).map_err(|_| FormatError::Timeline(s.to_owned()))
    }
}

/// A WAL segment number: `lsn / wal_segment_size`.
pub type SegNo = u64;

/// Checks that `seg_size` is a size PostgreSQL allows (a power of two from 1 MiB to 1 GiB).
pub fn check_segment_size(seg_size: u64) -> Result<(), FormatError> {
    if seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size) {
        Ok(())
    } else {
        Err(FormatError::SegmentSize(seg_size))
    }
}

fn segments_per_xlog_id(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// The segment holding `lsn` (`XLByteToSeg`).
pub fn lsn_to_segno(lsn: Lsn, seg_size: u64) -> SegNo {
    lsn.0 / seg_size
}

/// The first byte of segment `segno` (`XLogSegNoOffsetToRecPtr` with offset 0).
pub fn segment_start(segno: SegNo, seg_size: u64) -> Lsn {
    Lsn(segno * seg_size)
}

/// The offset of `lsn` within its segment (`XLogSegmentOffset`).
pub fn segment_offset(lsn: Lsn, seg_size: u64) -> u64 {
    lsn.0 % seg_size
}

/// The file name of a WAL segment (`XLogFileName`): 24 uppercase hex digits.
///
/// `seg_size` must be valid (see [`check_segment_size`]).
pub fn segment_name(tli: TimelineId, segno: SegNo, seg_size: u64) -> String {
    let per = segments_per_xlog_id(seg_size);
    format!("{:08X}{:08X}{:08X}", tli.0, segno / per, segno % per)
}

/// Parses a WAL segment file name back into its timeline and segment number.
pub fn parse_segment_name(name: &str, seg_size: u64) -> Result<(TimelineId, SegNo), FormatError> {
    check_segment_size(seg_size)?;
    let bad = || FormatError::SegmentName(name.to_owned());
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let field = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).map_err(|_| bad());
    let tli = field(0..8)?;
    let log = u64::from(field(8..16)?);
    let seg = u64::from(field(16..24)?);
    let per = segments_per_xlog_id(seg_size);
    if seg >= per {
        return Err(bad());
    }
    Ok((TimelineId(tli), log * per + seg))
}

/// The file name of a timeline history file (`TLHistoryFileName`): `00000002.history`.
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

/// One line of a timeline history file: timeline `parent` ended at `switchpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub parent: TimelineId,
    /// The first position that belongs to the next timeline.
    pub switchpoint: Lsn,
    /// Free text PostgreSQL wrote, e.g. `no recovery target specified`.
    pub reason: String,
}

/// A parsed timeline history file: the ancestors of one timeline, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineHistory {
    /// The ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses the text of a `.history` file; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |why: &str| FormatError::History { line: i + 1, why: why.to_owned() };
            let mut parts = trimmed.splitn(3, '\t');
            let parent: u32 = parts
                .next()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| bad("expected a numeric timeline id"))?;
            let switchpoint: Lsn = parts
                .next()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| bad("expected a switchpoint like 0/3000000"))?;
            let reason = parts.next().unwrap_or("").trim_end().to_owned();
            if let Some(prev) = entries.last().map(|e: &HistoryEntry| e.parent)
                && parent <= prev.0
            {
                return Err(bad("timeline ids must increase"));
            }
            entries.push(HistoryEntry { parent: TimelineId(parent), switchpoint, reason });
        }
        Ok(TimelineHistory { entries })
    }

    /// The timeline that `lsn` was written on, for a server now on `current`.
    pub fn timeline_of(&self, lsn: Lsn, current: TimelineId) -> TimelineId {
        self.entries.iter().find(|e| lsn < e.switchpoint).map_or(current, |e| e.parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: u64 = DEFAULT_WAL_SEGMENT_SIZE;

    #[test]
    fn names_like_postgres() {
        assert_eq!(segment_name(TimelineId(1), 3, SEG), "000000010000000000000003");
        assert_eq!(segment_name(TimelineId(1), 256, SEG), "000000010000000100000000");
        assert_eq!(segment_name(TimelineId(0x1A), 0x1_05, SEG), "0000001A0000000100000005");
        // 1 GiB segments: four per "xlog id".
        assert_eq!(segment_name(TimelineId(2), 5, 1 << 30), "000000020000000100000001");
        assert_eq!(history_file_name(TimelineId(2)), "00000002.history");
        assert_eq!(history_file_name(TimelineId(0xAB)), "000000AB.history");
    }

    #[test]
    fn lsn_and_segments() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        let segno = lsn_to_segno(lsn, SEG);
        assert_eq!(segment_name(TimelineId(1), segno, SEG), "0000000100000016000000B3");
        assert_eq!(segment_start(segno, SEG), "16/B3000000".parse().unwrap());
        assert_eq!(segment_offset(lsn, SEG), 0x74_D848);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000030",
            "00000001000000000000000G",
            "000000010000000000000100", // segment 0x100 does not exist with 16 MiB segments
        ] {
            assert!(parse_segment_name(bad, SEG).is_err(), "{bad:?}");
        }
        assert!(parse_segment_name("000000010000000000000003", 12345).is_err());
    }

    #[test]
    fn parses_history() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tat restore point \"x\"\n";
        let h = TimelineHistory::parse(text).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0].parent, TimelineId(1));
        assert_eq!(h.entries[0].switchpoint, Lsn(0x300_0158));
        assert_eq!(h.entries[0].reason, "no recovery target specified");
        assert_eq!(h.entries[1].reason, "at restore point \"x\"");
        assert_eq!(h.timeline_of(Lsn(0x100_0000), TimelineId(3)), TimelineId(1));
        assert_eq!(h.timeline_of(Lsn(0x300_0158), TimelineId(3)), TimelineId(2));
        assert_eq!(h.timeline_of(Lsn(0x600_0000), TimelineId(3)), TimelineId(3));
        assert!(TimelineHistory::parse("x\t0/1\n").is_err());
        assert!(TimelineHistory::parse("1\tnope\n").is_err());
        assert!(TimelineHistory::parse("2\t0/1\n1\t0/2\n").is_err());
    }

    proptest! {
        #[test]
        fn segment_name_round_trip(tli in 1u32.., segno in 0u64..(1 << 40), shift in 20u32..=30) {
            let seg = 1u64 << shift;
            let segno = segno % (u64::from(u32::MAX) * (0x1_0000_0000 / seg));
            let name = segment_name(TimelineId(tli), segno, seg);
            prop_assert_eq!(name.len(), 24);
            prop_assert_eq!(parse_segment_name(&name, seg).unwrap(), (TimelineId(tli), segno));
        }

        #[test]
        fn lsn_segment_arithmetic(v in any::<u64>(), shift in 20u32..=30) {
            let seg = 1u64 << shift;
            let lsn = Lsn(v);
            let segno = lsn_to_segno(lsn, seg);
            prop_assert_eq!(segment_start(segno, seg).0 + segment_offset(lsn, seg), v);
            prop_assert!(segment_offset(lsn, seg) < seg);
        }
    }
}
