//! Restore drills as the vault reports them: signed reports (`GET /v1/drills`), the per-cluster
//! drill state shown by `status`, and how to check a report's signature.
//!
//! A report is stored in the catalog as a `drill.report` record whose body is a
//! [`SignedDrillReport`]: the report's JSON text exactly as signed, an ed25519 signature over
//! those bytes, and the public key. The key is the vault's drill-report key, derived from the
//! repository keys, so a report verifies the same way after the vault is rebuilt from escrow.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use vault_types::Timestamp;

/// One check of a drill.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillCheck {
    pub name: String,
    pub ok: bool,
    /// What was seen: "passed", the value returned, or the error.
    pub detail: String,
}

/// What one drill did and found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillReport {
    pub id: String,
    pub cluster: String,
    /// `schedule`, or `on demand (<token label>)`.
    pub trigger: String,
    /// Vault clock.
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// What was restored: `latest`, or `lsn <position>` for a random point of the window.
    pub target: String,
    pub backup: Option<String>,
    pub recovered_lsn: Option<String>,
    /// The last transaction commit replayed (server clock).
    pub last_commit: Option<String>,
    /// Drill start → the restored server accepted connections at the target.
    pub rto_seconds: Option<f64>,
    pub base_seconds: Option<f64>,
    pub base_bytes: Option<u64>,
    pub replay_seconds: Option<f64>,
    /// For `latest`: how far the newest restorable WAL lagged behind the drill's start.
    pub freshness_seconds: Option<f64>,
    pub checks: Vec<DrillCheck>,
    pub ok: bool,
    /// One line.
    pub verdict: String,
    /// The restored server's log tail when the drill failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// A report with its signature, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SignedDrillReport {
    /// The report's JSON, exactly the bytes signed.
    pub report: String,
    /// ed25519 signature over `report`'s UTF-8 bytes, 128 hex digits.
    pub signature: String,
    /// The signing key, 64 hex digits.
    pub public_key: String,
}

impl SignedDrillReport {
    /// Checks the signature against `expected_key` (hex) and parses the report.
    pub fn verify(&self, expected_key: &str) -> Result<DrillReport, ReportError> {
        if !self.public_key.eq_ignore_ascii_case(expected_key) {
            return Err(ReportError::OtherKey {
                signed_by: self.public_key.clone(),
                expected: expected_key.to_string(),
            });
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.public_key, &mut key).map_err(|_| ReportError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| ReportError::InvalidKey)?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| ReportError::MalformedSignature)?;
        key.verify(self.report.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| ReportError::BadSignature)?;
        serde_json::from_str(&self.report).map_err(|e| ReportError::NotAReport(e.to_string()))
    }
}

/// Why a signed drill report was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("signed by key {signed_by}, not the vault's drill-report key {expected}")]
    OtherKey { signed_by: String, expected: String },
    #[error("malformed public key")]
    MalformedKey,
    #[error("invalid public key")]
    InvalidKey,
    #[error("malformed signature")]
    MalformedSignature,
    #[error("the signature does not match the report")]
    BadSignature,
    #[error("the signed report is not a drill report: {0}")]
    NotAReport(String),
}

impl vault_types::UserFacing for ReportError {}

/// A stored report as listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillEntry {
    /// The catalog record holding it.
    pub record: String,
    pub written_at: Timestamp,
    pub signed: SignedDrillReport,
}

/// `GET /v1/drills`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillsResponse {
    /// The vault's drill-report key (hex): pin it to check reports independently.
    pub signing_key: String,
    /// Oldest first.
    pub drills: Vec<DrillEntry>,
    /// Per protected cluster.
    pub clusters: Vec<DrillStatus>,
}

/// `POST /v1/clusters/{name}/drills` answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillStarted {
    pub id: String,
}

/// A drill in progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningDrill {
    pub id: String,
    pub started_at: Timestamp,
    pub trigger: String,
    /// e.g. `base data 120 / 1600 MiB`, `replaying WAL`, `checks`.
    pub phase: String,
}

/// The last drill, in short.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillSummary {
    pub id: String,
    pub started_at: Timestamp,
    pub ok: bool,
    pub rto_seconds: Option<f64>,
    pub verdict: String,
}

/// A cluster's drill state (in `status` and `/v1/drills`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DrillStatus {
    pub cluster: String,
    /// The schedule, if any.
    pub every_seconds: Option<u64>,
    /// A cluster with no passing drill for this long is overdue.
    pub overdue_after_seconds: Option<u64>,
    pub running: Option<RunningDrill>,
    pub last: Option<DrillSummary>,
    pub last_passed_at: Option<Timestamp>,
    /// When the scheduler starts the next one.
    pub next_due: Option<Timestamp>,
    pub overdue: bool,
    pub total: u64,
    pub failed: u64,
}
