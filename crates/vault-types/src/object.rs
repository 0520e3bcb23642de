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

/// One copy of the vault's objects, as `vault status` and `/metrics` show it: where it is,
/// what protects it, and (for an off-host copy written through a queue) what has not reached it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    /// `local`, `s3`, `mirror.local` (the hot copy) or `mirror.remote` (the off-host copy).
    pub role: String,
    /// A directory, or `endpoint/bucket/prefix`.
    pub location: String,
    /// `software` (the vault's code keeps objects; root on the host can delete them),
    /// `object_lock_compliance` (the store refuses deletion before retain-until, whoever asks)
    /// or `none` (an S3 bucket without a lock accepted by `object_lock = false`).
    pub lock_mode: String,
    /// The bucket's default Object Lock rule, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_default_rule: Option<String>,
    /// The earliest retain-until among the objects known to be in this copy: nothing here can
    /// be deleted (by the store, for a COMPLIANCE lock) before it.
    pub min_retain_until: Option<Timestamp>,
    /// How many objects that minimum covers (for `mirror.remote`: those whose lock this
    /// process has read back from the store; the rest are counted as pending or unconfirmed).
    pub objects: u64,
    /// Objects written to the hot copy and not yet confirmed in this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_objects: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_bytes: Option<u64>,
    /// Since when uploads have been failing without a success (`None` while they succeed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Objects and bytes uploaded by this process.
    #[serde(default)]
    pub uploaded_objects: u64,
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Reads the hot copy could not serve (missing or damaged) that this copy served instead.
    #[serde(default)]
    pub fallback_reads: u64,
    /// Objects that vanished from the hot copy before they were uploaded: lost from both.
    #[serde(default)]
    pub lost_before_upload: u64,
    /// Whether the queue was rebuilt (hot listing compared with this copy's) since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<bool>,
}
