//! Catalog records: sealed, append-only facts (backups, tokens, policies, deletions…).
//!
//! Each record is its own object `catalog/<hash>`; nothing is ever rewritten, and the state of
//! the vault is a fold over all records in `(written_at, seq, name)` order. A random 16-byte nonce
//! inside every record makes two records with identical content still distinct objects.

use crate::error::RepoError;
use crate::keys::MasterKeys;
use crate::name::{ObjectKind, ObjectName};
use crate::timestamp::Timestamp;

/// One catalog record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRecord {
    /// Format version, 1.
    pub version: u32,
    /// Lowercase dotted kind, e.g. "backup", "token.created".
    pub kind: String,
    /// When the vault wrote it (vault clock).
    pub written_at: Timestamp,
    /// Write order among records with the same `written_at`: nanoseconds since the epoch when
    /// written, forced strictly increasing within a writer. Without it, two records written in
    /// the same second (a token created, then revoked) could fold in the wrong order.
    #[serde(default)]
    pub seq: u64,
    /// 32 hex digits of randomness.
    pub nonce: String,
    /// Kind-specific content.
    pub body: serde_json::Value,
    /// The id of the token that had the vault append this record on its behalf (`POST
    /// /v1/records`); absent for records the vault wrote itself. Readers of vault-owned kinds
    /// (incidents, drills, tokens, …) ignore records that carry an author: a client can never
    /// write the vault's own history, even if an older vault let one through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// A strictly increasing write ordinal: wall-clock nanoseconds, never repeating or going back
/// within this process.
fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Checks a record kind: 1–64 characters of `[a-z0-9_]` words separated by single dots.
pub fn validate_kind(kind: &str) -> Result<(), RepoError> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind.split('.').all(|w| {
            !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if ok { Ok(()) } else { Err(RepoError::BadKind(kind.chars().take(80).collect())) }
}

impl CatalogRecord {
    /// A new record with a fresh nonce.
    pub fn new(
        kind: &str,
        body: serde_json::Value,
        written_at: Timestamp,
    ) -> Result<CatalogRecord, RepoError> {
        validate_kind(kind)?;
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| RepoError::Random(e.to_string()))?;
        Ok(CatalogRecord {
            version: 1,
            kind: kind.to_string(),
            written_at,
            seq: next_seq(),
            nonce: hex::encode(nonce),
            body,
            author: None,
        })
    }

    /// The order records are folded in: `(written_at, seq)`, then the object name.
    pub fn order_key(&self) -> (Timestamp, u64) {
        (self.written_at, self.seq)
    }

    /// Seals to object name and bytes.
    pub fn seal(&self, keys: &MasterKeys, level: i32) -> Result<(ObjectName, Vec<u8>), RepoError> {
        let json = serde_json::to_vec(self).map_err(|e| RepoError::malformed("catalog record", e))?;
        let sealed = keys.seal_checked(&json, level)?;
        Ok((ObjectName::for_bytes(ObjectKind::Catalog, &sealed), sealed))
    }

    /// Opens object bytes.
    pub fn open(keys: &MasterKeys, name: &ObjectName, bytes: &[u8]) -> Result<CatalogRecord, RepoError> {
        let what = format!("catalog record {name}");
        let plain = keys.open_named(bytes, &what)?;
        let rec: CatalogRecord =
            serde_json::from_slice(&plain).map_err(|e| RepoError::malformed(&what, e))?;
        validate_kind(&rec.kind).map_err(|e| RepoError::malformed(&what, e))?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for ok in ["backup", "token.created", "wal.range", "audit.batch", "a1.b_2"] {
            validate_kind(ok).unwrap();
        }
        for bad in ["", "Backup", "token..created", ".x", "x.", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_kind(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identical_records_get_distinct_names() {
        let keys = MasterKeys::from_bytes([1; 32], [2; 32]);
        let a = CatalogRecord::new("prune", serde_json::json!({"n": 1}), Timestamp(5)).unwrap();
        let b = CatalogRecord::new("prune", serde_json::json!({"n": 1}), Timestamp(5)).unwrap();
        let (na, ba) = a.seal(&keys, 3).unwrap();
        let (nb, _) = b.seal(&keys, 3).unwrap();
        assert_ne!(na, nb);
        assert_eq!(CatalogRecord::open(&keys, &na, &ba).unwrap(), a);
    }
}
