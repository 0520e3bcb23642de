//! PostgreSQL formats without IO: positions, timelines, segment names, `backup_label`, the
//! backup manifest, WAL page/record headers, and heap tuples as the WAL logs them.
//!
//! ```
//! use pgfmt::{Lsn, TimelineId};
//! let lsn: Lsn = "16/B374D848".parse().unwrap();
//! let segno = pgfmt::lsn_to_segno(lsn, pgfmt::DEFAULT_WAL_SEGMENT_SIZE);
//! let name = pgfmt::segment_name(TimelineId(1), segno, pgfmt::DEFAULT_WAL_SEGMENT_SIZE);
//! assert_eq!(name, "0000000100000016000000B3");
//! assert_eq!(lsn.to_string(), "16/B374D848");
//! ```
//!
//! Architecture invariant: this crate does no IO and pulls in no async runtime; callers hand
//! it bytes and get values back.

pub mod backup_label;
mod lsn;
pub mod manifest;
mod segment;
pub mod tuple;
pub mod wal;

pub use backup_label::BackupLabel;
pub use lsn::Lsn;
pub use manifest::BackupManifest;
pub use segment::{
    DEFAULT_WAL_SEGMENT_SIZE, HistoryEntry, SegNo, TimelineHistory, TimelineId, check_segment_size,
    history_file_name, lsn_to_segno, parse_segment_name, segment_name, segment_offset, segment_start,
};

/// Text or bytes that are not in the PostgreSQL format they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not an LSN like `16/B374D848`.
    #[error("invalid LSN {0:?}: expected two hex numbers like 16/B374D848")]
    Lsn(String),
    /// Not a timeline id.
    #[error("invalid timeline id {0:?}: expected a positive integer")]
    Timeline(String),
    /// Not a valid `wal_segment_size`.
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    SegmentSize(u64),
    /// Not a WAL segment file name.
    #[error("invalid WAL segment file name {0:?}: expected 24 hex digits like 000000010000000000000003")]
    SegmentName(String),
    /// A malformed timeline history file.
    #[error("invalid timeline history file, line {line}: {why}")]
    History {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A malformed `backup_label`.
    #[error("invalid backup_label: {0}")]
    BackupLabel(String),
    /// A malformed or tampered backup manifest.
    #[error("invalid backup manifest: {0}")]
    Manifest(String),
    /// A file does not match its manifest entry.
    #[error("file {path:?} does not match the backup manifest: {why}")]
    FileMismatch {
        /// The file's path in the backup.
        path: String,
        /// What differs.
        why: String,
    },
}
