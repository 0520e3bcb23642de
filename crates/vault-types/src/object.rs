//! Facts about stored objects that the store reports and the API carries.

use crate::name::ObjectName;
use crate::timestamp::Timestamp;

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// The object is new.
    Created,
    /// An object with this name (and therefore these bytes) was already there; nothing changed.
    AlreadyPresent,
}

/// Facts about a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub name: ObjectName,
    /// Stored size in bytes.
    pub size: u64,
    /// The object may not be removed before this instant (vault clock).
    pub retain_until: Timestamp,
}
