//! The crate's errors: [`ParseError`] for values written as text (gate ids, keys, hashes, event
//! kinds, times), [`BatchError`] for signing and checking a batch, and [`AuditError`] for key
//! files and the local spool. Each `Display` is the whole story, for the log; what a client of
//! the gate may be told is [`vault_types::UserFacing::user_message`], without the gate host's
//! paths or the vault's answers.

use std::path::PathBuf;

/// The first 70 characters of a value quoted in an error: enough to recognise it, never a
/// whole pasted file.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(70).collect()
}

/// Why a gate id, public key, hash, event kind or time given as text was refused. The text is
/// kept (its first 70 characters) so the message can show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a gate id: 1–64 letters, digits, '.', '_' or '-'")]
    GateId(String),
    #[error("{0:?} is not an ed25519 public key (64 hex digits expected)")]
    PublicKeyHex(String),
    #[error(
        "{0} is 64 hex digits but not a valid ed25519 public key: copy the `# public key:` line of the gate's key file again"
    )]
    PublicKeyInvalid(String),
    #[error("{0:?} is not a hash (64 hex digits expected)")]
    Digest(String),
    #[error(
        "{0:?} is not an event kind (lowercase snake_case, e.g. {examples})",
        examples = crate::event::EventKind::known_names().take(6).collect::<Vec<_>>().join(", ")
    )]
    EventKind(String),
    #[error("bad time {text:?}: {why} (expected RFC 3339, e.g. 2026-11-23T09:00:00Z)")]
    Time { text: String, why: String },
    #[error("time {0:?} is out of range")]
    TimeRange(String),
}

impl vault_types::UserFacing for ParseError {}

/// Why a batch could not be signed, or its signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The gate id, or the batch's own public key, is not well-formed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the batch holds no records (a batch needs at least one)")]
    Empty,
    #[error("records {first}..{last} are not consecutive: {count} records for that range")]
    NotConsecutive { first: u64, last: u64, count: usize },
    #[error("the signature is not 128 hex digits")]
    SignatureNotHex,
    #[error("the signature does not match the batch")]
    SignatureMismatch,
}

impl vault_types::UserFacing for BatchError {}

/// Errors of key files and the spool. Messages say what failed, why, and what to do.
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
    /// A key to trust (`--trust-key`) that is neither 64 hex digits nor a file one can read.
    #[error("{arg:?} is neither 64 hex digits nor a readable file: {source}")]
    TrustKeyUnreadable {
        arg: String,
        #[source]
        source: std::io::Error,
    },
    /// A file given as a key to trust that holds no public key, or a malformed one.
    #[error("{arg}: {source}")]
    TrustKeyInvalid {
        arg: String,
        #[source]
        source: ParseError,
    },
    #[error("{arg}: holds no public key (give the gate's public key, 64 hex digits, or its key file)")]
    TrustKeyMissing { arg: String },
    /// A gate id that is not well-formed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The spool's chain already ships under another gate id.
    #[error(
        "this spool's chain is shipped as gate {shipped:?}, not {asked:?}: keep the gate id, or give the new id its own spool directory"
    )]
    GateMismatch { shipped: String, asked: String },
}

/// What a client of the gate is told when the audit log refuses: what failed and what to do,
/// without the gate host's paths, the spool's contents or the vault's answers (all in the
/// gate's log).
impl vault_types::UserFacing for AuditError {
    fn user_message(&self) -> String {
        match self {
            AuditError::Io { .. } => {
                "the gate's audit log cannot read or write its files on the gate host".into()
            }
            AuditError::KeyFile { .. } => "the gate's audit signing key cannot be used".into(),
            AuditError::Corrupt { .. } => "the gate's audit spool is damaged".into(),
            AuditError::SpoolFull { pending_bytes, limit, .. } => format!(
                "the audit spool is full: {pending_bytes} bytes not yet shipped to the vault (limit {limit}); \
                 nothing more can be recorded until the vault is reachable again"
            ),
            AuditError::Failed(_) => {
                "the audit log stopped after a failed write and accepts no more records".into()
            }
            AuditError::InUse { .. } => "the gate's audit spool is in use by another process".into(),
            other => other.to_string(),
        }
    }
}

impl AuditError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> AuditError {
        AuditError::Io { what, path: path.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_types::UserFacing;

    #[test]
    fn a_client_of_the_gate_is_told_what_failed_not_the_gate_hosts_paths() {
        let e = AuditError::io(
            "cannot write the audit record to",
            "/var/lib/holdfast/gate/audit/1.jsonl",
            std::io::Error::other("Input/output error"),
        );
        assert!(e.to_string().contains("/var/lib/holdfast"), "the log gets the whole story: {e}");
        let told = e.user_message();
        assert!(!told.contains("/var/lib") && !told.contains("Input/output"), "{told}");
        let e = AuditError::SpoolFull {
            pending_bytes: 2048,
            limit: 1024,
            last_error: Some("https://10.0.0.9:8443: connection refused".into()),
        };
        assert!(e.to_string().contains("10.0.0.9"), "{e}");
        let told = e.user_message();
        assert!(told.contains("the audit spool is full") && !told.contains("10.0.0.9"), "{told}");
        let e = AuditError::RecordTooLarge { size: 9, limit: 4 };
        assert_eq!(e.user_message(), e.to_string());
    }

    #[test]
    fn values_quoted_in_errors_are_clipped() {
        let long = "x".repeat(500);
        let e = ParseError::Digest(clip(&long));
        assert!(e.to_string().len() < 150, "{e}");
        let e = ParseError::EventKind("Drop Table".into());
        assert!(e.to_string().contains("lowercase snake_case, e.g. "), "{e}");
    }
}
