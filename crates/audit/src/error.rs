//! `AuditError`: everything that can go wrong with key files and the local spool.

use std::path::PathBuf;

/// Errors of this crate. Messages say what failed, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    /// The spool holds a record that is damaged somewhere other than an unacknowledged tail.
    #[error(
        "the audit spool is damaged at {path} line {line}: {why}; the gate refuses to start rather than \
         rewrite history — records up to the last shipped one are in the vault (`holdfast audit verify`); \
         move the spool directory aside to start a new chain"
    )]
    Corrupt { path: PathBuf, line: usize, why: String },
    /// The unshipped backlog would exceed `max_pending_bytes`: the vault has not acknowledged
    /// what is already spooled. Nothing was recorded; the caller must refuse the action.
    #[error(
        "the audit spool is full: {pending_bytes} bytes not yet shipped to the vault (limit {limit}); \
         nothing more can be recorded until the vault is reachable again{}",
        last_error.as_deref().map(|e| format!(" (last shipping error: {e})")).unwrap_or_default()
    )]
    SpoolFull { pending_bytes: u64, limit: u64, last_error: Option<String> },
    #[error(
        "an audit record of {size} bytes exceeds the limit of {limit} bytes: shorten the detail (e.g. truncate the SQL text and keep its hash)"
    )]
    RecordTooLarge { size: u64, limit: u64 },
    /// A write failed; the log stopped accepting records, so none is ever lost silently.
    #[error("the audit log stopped after a failed write and accepts no more records: {0}")]
    Failed(String),
    #[error("the audit spool {path} is in use by process {pid}; one gate per spool directory")]
    InUse { path: PathBuf, pid: u32 },
    #[error("invalid audit options: {0}")]
    Options(String),
}

impl AuditError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> AuditError {
        AuditError::Io { what, path: path.into(), source }
    }
}
