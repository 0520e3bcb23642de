//! Request and response bodies of every vault endpoint (JSON).
//!
//! Requests use `deny_unknown_fields`: a client that sends a field the vault does not know
//! (say a forged `retain_until`) is told so instead of being silently ignored.

use store::quorum::DeletionStatement;
use store::{ObjectMeta, ObjectName, PutOutcome, Timestamp};

use crate::token::Scope;

/// On a 500 answer for a damaged chunk: the other backups of the cluster that do not use it,
/// comma-separated (possibly empty).
pub const UNDAMAGED_BACKUPS_HEADER: &str = "x-holdfast-backups-without-damage";

/// Every error response: what failed, why, and what to do.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub status: String,
    /// The repository id of this vault.
    pub repository: String,
}

/// `PUT /v1/objects/{kind}/{hex}` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PutObjectResponse {
    pub name: ObjectName,
    pub outcome: PutOutcome,
    pub size: u64,
    /// Retention now in force, decided by the vault's clock.
    pub retain_until: Timestamp,
}

/// `GET /v1/objects?kind=` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListObjectsResponse {
    pub objects: Vec<ObjectMeta>,
}

/// Catalog record kinds an `append` token may write: what its one real client, the gate, ships
/// (signed audit batches). Everything else — incidents, drills, backups, WAL summaries,
/// retention, tokens, deletions — is the vault's own history and written only by the vault's
/// code; a record a client appended carries the client's token id, and readers of vault-owned
/// kinds ignore such records.
pub const APPENDABLE_RECORD_KINDS: &[&str] = &["audit.batch"];

/// `POST /v1/records` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRecordRequest {
    /// One of [`APPENDABLE_RECORD_KINDS`].
    pub kind: String,
    /// Opaque JSON; stored as given. Timestamps inside it are data, never retention.
    pub body: serde_json::Value,
}

/// `POST /v1/records` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppendRecordResponse {
    pub name: ObjectName,
    /// The vault's clock when it stored the record.
    pub written_at: Timestamp,
    pub retain_until: Timestamp,
}

/// One catalog record as served by `GET /v1/records`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordEntry {
    pub name: ObjectName,
    pub kind: String,
    pub written_at: Timestamp,
    pub body: serde_json::Value,
}

/// `GET /v1/records[?kind=]` response, in catalog order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListRecordsResponse {
    pub records: Vec<RecordEntry>,
}

/// A backup as listed by `GET /v1/backups`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    pub id: String,
    pub label: String,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub retain_until: Timestamp,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// Its retention has passed by the vault's clock; prune may have removed its data.
    pub expired: bool,
}

/// `GET /v1/backups` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListBackupsResponse {
    pub backups: Vec<BackupSummary>,
}

/// `POST /v1/tokens` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub scope: Scope,
    pub label: String,
}

/// `POST /v1/tokens` response: the only time the secret is shown.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateTokenResponse {
    pub id: String,
    pub scope: Scope,
    pub label: String,
    /// The full token (`hft_<id>_<secret>`). Store it now: the vault keeps only a hash.
    pub token: String,
}

/// A token as listed by `GET /v1/tokens` (never the secret).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub scope: Scope,
    pub label: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
}

/// `GET /v1/tokens` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListTokensResponse {
    pub tokens: Vec<TokenInfo>,
}

/// `GET/PUT /v1/retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// New objects are retained this many days from the vault's clock when they are stored.
    pub days: u32,
}

/// `POST /v1/retention/extend` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRetentionRequest {
    /// Every existing object is retained at least until this instant.
    pub until: Timestamp,
}

/// `POST /v1/retention/extend` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExtendRetentionResponse {
    /// How many objects had their retention lengthened.
    pub extended: u64,
    pub until: Timestamp,
}

/// `POST /v1/proposals` request: either explicit objects or one backup.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
    #[serde(default)]
    pub objects: Vec<ObjectName>,
    #[serde(default)]
    pub backup: Option<String>,
    pub reason: String,
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    /// Collecting signatures or waiting.
    Pending,
    /// A keyholder vetoed it; it can never execute.
    Vetoed,
    /// It ran.
    Executed,
}

/// `GET /v1/proposals/{id}` and the responses of proposal endpoints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProposalView {
    pub id: String,
    pub status: ProposalStatus,
    pub statement: DeletionStatement,
    /// Hex of the statement's canonical bytes: exactly what keyholders sign.
    pub canonical_hex: String,
    /// Public keys (hex) of distinct enrolled keyholders whose signatures verified.
    pub signed_by: Vec<String>,
    pub threshold: usize,
    pub vetoed_by: Option<String>,
    pub executed_at: Option<Timestamp>,
    /// What executing it would remove, worked out by the vault when asked (what `vault sign`
    /// shows before asking for confirmation). Absent in answers that do not compute it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<ProposalEffects>,
}

/// What a deletion proposal would remove, in the terms people decide on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProposalEffects {
    /// Objects named, by object kind (`pack`, `wal`, `catalog`, …).
    pub objects_by_kind: std::collections::BTreeMap<String, u64>,
    /// Catalog records named, by record kind (`backup`, `backup.complete`, …).
    pub records_by_kind: std::collections::BTreeMap<String, u64>,
    /// Backups that would lose their record or data: id, label, cluster, time.
    pub backups: Vec<AffectedBackup>,
    /// WAL that would be removed: cluster, timeline, byte range.
    pub wal: Vec<AffectedWal>,
    /// Bytes that would be removed.
    pub bytes: u64,
    /// Objects named that are no longer in the store.
    pub absent: u64,
}

/// A backup a proposal affects.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AffectedBackup {
    pub id: String,
    pub label: String,
    pub cluster: Option<String>,
    pub started: Timestamp,
    /// `record` (its catalog entry goes: it can no longer be restored) or `data` (packs it uses).
    pub how: String,
}

/// A stretch of WAL a proposal would remove.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AffectedWal {
    pub cluster: String,
    pub timeline: u32,
    pub start: String,
    pub end: String,
}

/// `POST /v1/proposals/{id}/signatures` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// ed25519 signature over the statement's canonical bytes, 128 hex digits.
    pub signature: String,
}

/// `POST /v1/proposals/{id}/veto` request: a signature over [`veto_message`].
pub type VetoRequest = SignRequest;

/// The bytes a keyholder signs to veto proposal `id`.
pub fn veto_message(proposal_id: &str) -> Vec<u8> {
    format!("holdfast-veto-v1:{proposal_id}").into_bytes()
}

/// `POST /v1/proposals/{id}/execute` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecuteResponse {
    pub proposal: String,
    /// Objects removed.
    pub removed: Vec<ObjectName>,
    /// Named objects that were already absent.
    pub absent: Vec<ObjectName>,
}

/// One entry of a backup's file list (`GET /v1/backups/{id}/entries`): what restore creates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Content length (files).
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `GET /v1/backups/{id}/entries` response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupEntriesResponse {
    pub backup: String,
    pub entries: Vec<BackupEntry>,
}

/// Response header of `GET /v1/clusters/{name}/wal/{segment}`: how many leading bytes of the
/// (always whole) segment are stored WAL; the rest is zeros.
pub const WAL_VALID_HEADER: &str = "x-holdfast-wal-valid";
