//! What keyholders sign to authorise an early deletion: plain data, so that the API and its
//! clients can show and sign it without linking the store (which verifies the signatures).

use std::collections::BTreeSet;

use crate::name::ObjectName;
use crate::timestamp::Timestamp;

/// What keyholders sign to authorise an early deletion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionStatement {
    /// Always "holdfast-deletion-v1": a signature over anything else is never a deletion.
    pub purpose: String,
    /// The vault (repository id) this statement applies to: signatures do not transfer.
    pub repository: String,
    /// The proposal this statement belongs to.
    pub proposal: String,
    /// When the vault recorded the proposal (vault clock).
    pub proposed_at: Timestamp,
    /// The deletion may not run before this instant (vault clock).
    pub not_before: Timestamp,
    /// Exactly the objects to remove.
    pub objects: BTreeSet<ObjectName>,
    /// Free text: why.
    pub reason: String,
}

/// The purpose string of a deletion statement.
pub const DELETION_PURPOSE: &str = "holdfast-deletion-v1";

impl DeletionStatement {
    /// The bytes keyholders sign: compact JSON with fields in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statement serialises")
    }
}
