//! The object-store contract: put-if-absent, get, get-range, head, list, lengthen retention.
//!
//! There is deliberately no `delete` here. Every backend enforces three rules itself, so that
//! no caller (and no bug in a caller) can break them: the bytes must hash to the name, an
//! existing object is never replaced, and retention can only grow. Removal lives in the
//! separate [`Expunge`] trait, which backends implement and which only the vault's retention
//! module calls (a test scans the source tree for other callers).

use std::ops::Range;

use bytes::Bytes;

use crate::name::{NameError, ObjectKind, ObjectName};
use crate::timestamp::Timestamp;

pub use vault_types::{ObjectMeta, PutOutcome, StoreStatus};

/// Errors from a backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("object {0} not found")]
    NotFound(ObjectName),
    #[error("range {start}..{end} is outside object {name} of {size} bytes")]
    BadRange { name: ObjectName, start: u64, end: u64, size: u64 },
    #[error("refused: {0}")]
    Refused(String),
    #[error("storage I/O failed on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io { what: what.into(), source }
    }
}

/// A store of immutable, content-addressed objects. No method removes or replaces anything.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `name` if nothing is there yet, retained until `retain_until`.
    ///
    /// The backend MUST refuse bytes that do not hash to `name` (nothing is stored), MUST NOT
    /// replace an existing object, and MUST make the object durable before returning `Created`.
    /// If the object exists, its retention is lengthened to `retain_until` if that is later.
    async fn put_if_absent(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError>;

    /// The whole object.
    async fn get(&self, name: &ObjectName) -> Result<Bytes, StoreError>;

    /// A byte range of the object (for reading one blob out of a pack).
    async fn get_range(&self, name: &ObjectName, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Size and retention, or `None` if absent.
    async fn head(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError>;

    /// Every object of one kind, in name order.
    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Lengthens retention to `until` if that is later than the current value; never shortens.
    /// Returns the retention now in force.
    async fn extend_retention(&self, name: &ObjectName, until: Timestamp) -> Result<Timestamp, StoreError>;

    /// Each copy this store writes to: where, what protects it, what is pending (for status and
    /// metrics; may list the store, so callers cache it). Empty for stores that do not say.
    async fn status(&self) -> Vec<StoreStatus> {
        Vec::new()
    }
}

/// The earlier of two optional instants (`None` = unknown, not "never").
pub(crate) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why an object may be removed. Constructed only by the vault's retention module.
#[derive(Debug)]
pub enum ExpungeAuthority<'a> {
    /// Its retention has passed by `now`, read from the vault's clock. The backend re-checks.
    Expired { now: Timestamp },
    /// A quorum of keyholders signed a deletion naming this object, the waiting period passed
    /// and nobody vetoed.
    Quorum(&'a crate::quorum::QuorumWarrant),
}

/// Removal. Implemented by backends; called only by `vault::retention`.
#[async_trait::async_trait]
pub trait Expunge: ObjectStore {
    /// Removes `name` if `authority` allows it: an `Expired` authority is refused while the
    /// object's retention is in the future; a `Quorum` warrant must name the object.
    async fn expunge(&self, name: &ObjectName, authority: ExpungeAuthority<'_>) -> Result<(), StoreError>;
}

/// What a vault client is told: a backend failure is named, its detail (paths, endpoints, the
/// backend's own message) stays in the vault's log.
impl vault_types::UserFacing for StoreError {
    fn user_message(&self) -> String {
        match self {
            StoreError::Io { .. } => "the vault's storage backend failed".into(),
            other => other.to_string(),
        }
    }
}
