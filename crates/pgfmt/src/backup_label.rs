//! The `backup_label` file a base backup carries: where recovery must start.

use serde::{Deserialize, Serialize};

use crate::{FormatError, Lsn, TimelineId};

/// A parsed `backup_label`.
///
/// ```
/// let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
///             CHECKPOINT LOCATION: 0/2000060\n\
///             BACKUP METHOD: streamed\n\
///             BACKUP FROM: primary\n\
///             START TIME: 2026-11-22 10:00:00 UTC\n\
///             LABEL: nightly\n\
///             START TIMELINE: 1\n";
/// let label = pgfmt::BackupLabel::parse(text).unwrap();
/// assert_eq!(label.checkpoint_location.to_string(), "0/2000060");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the redo pointer recovery starts from.
    pub start_wal_location: Lsn,
    /// The segment file named after the start location.
    pub start_wal_file: Option<String>,
    /// `CHECKPOINT LOCATION`: the checkpoint record the backup began with.
    pub checkpoint_location: Lsn,
    /// `BACKUP METHOD`: `streamed` for pg_basebackup / `BASE_BACKUP`.
    pub backup_method: Option<String>,
    /// `BACKUP FROM`: `primary` or `standby`.
    pub backup_from: Option<String>,
    /// `START TIME`, as PostgreSQL wrote it (`2026-11-22 10:00:00 UTC`).
    pub start_time: Option<String>,
    /// `LABEL`.
    pub label: Option<String>,
    /// `START TIMELINE` (PostgreSQL 11 and later).
    pub start_timeline: Option<TimelineId>,
    /// Lines with keys this parser does not know, kept verbatim as (key, value).
    pub other: Vec<(String, String)>,
}

impl BackupLabel {
    /// Parses the text of a `backup_label` file.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let bad = |why: String| FormatError::BackupLabel(why);
        let mut start = None;
        let mut start_file = None;
        let mut checkpoint = None;
        let mut label = BackupLabel {
            start_wal_location: Lsn::INVALID,
            start_wal_file: None,
            checkpoint_location: Lsn::INVALID,
            backup_method: None,
            backup_from: None,
            start_time: None,
            label: None,
            start_timeline: None,
            other: Vec::new(),
        };
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) =
                line.split_once(": ").ok_or_else(|| bad(format!("line without \"KEY: value\": {line:?}")))?;
            let value = value.trim_end();
            match key {
                "START WAL LOCATION" => {
                    // "0/2000028 (file 000000010000000000000002)"
                    let (lsn, rest) = value.split_once(' ').unwrap_or((value, ""));
                    start = Some(
                        lsn.parse::<Lsn>().map_err(|_| bad(format!("bad START WAL LOCATION {value:?}")))?,
                    );
                    start_file =
                        rest.strip_prefix("(file ").and_then(|r| r.strip_suffix(')')).map(str::to_owned);
                }
                "CHECKPOINT LOCATION" => {
                    checkpoint = Some(
                        value
                            .parse::<Lsn>()
                            .map_err(|_| bad(format!("bad CHECKPOINT LOCATION {value:?}")))?,
                    );
                }
                "BACKUP METHOD" => label.backup_method = Some(value.to_owned()),
                "BACKUP FROM" => label.backup_from = Some(value.to_owned()),
                "START TIME" => label.start_time = Some(value.to_owned()),
                "LABEL" => label.label = Some(value.to_owned()),
                "START TIMELINE" => {
                    label.start_timeline =
                        Some(value.parse().map_err(|_| bad(format!("bad START TIMELINE {value:?}")))?);
                }
                _ => label.other.push((key.to_owned(), value.to_owned())),
            }
        }
        label.start_wal_location = start.ok_or_else(|| bad("no START WAL LOCATION".into()))?;
        label.checkpoint_location = checkpoint.ok_or_else(|| bad("no CHECKPOINT LOCATION".into()))?;
        label.start_wal_file = start_file;
        Ok(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-22 10:00:00 UTC
LABEL: holdfast base backup
START TIMELINE: 1
";

    #[test]
    fn parses_pg15_label() {
        let l = BackupLabel::parse(PG15).unwrap();
        assert_eq!(l.start_wal_location, Lsn(0x200_0028));
        assert_eq!(l.start_wal_file.as_deref(), Some("000000010000000000000002"));
        assert_eq!(l.checkpoint_location, Lsn(0x200_0060));
        assert_eq!(l.backup_method.as_deref(), Some("streamed"));
        assert_eq!(l.backup_from.as_deref(), Some("primary"));
        assert_eq!(l.start_time.as_deref(), Some("2026-11-22 10:00:00 UTC"));
        assert_eq!(l.label.as_deref(), Some("holdfast base backup"));
        assert_eq!(l.start_timeline, Some(TimelineId(1)));
        assert!(l.other.is_empty());
    }

    #[test]
    fn keeps_unknown_keys_and_rejects_garbage() {
        let text = format!("{PG15}INCREMENTAL FROM LSN: 0/1000000\n");
        let l = BackupLabel::parse(&text).unwrap();
        assert_eq!(l.other, vec![("INCREMENTAL FROM LSN".into(), "0/1000000".into())]);
        assert!(BackupLabel::parse("hello\n").is_err());
        assert!(BackupLabel::parse("CHECKPOINT LOCATION: 0/1\n").is_err());
        assert!(BackupLabel::parse(&PG15.replace("0/2000060", "zz")).is_err());
    }
}
