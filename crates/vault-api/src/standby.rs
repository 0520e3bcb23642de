//! Wire types of the warm standby: a PostgreSQL instance in the vault's domain that replays the
//! vault's stored WAL behind a delay and stops short of an incident's restore target.

use pgfmt::Lsn;
use vault_types::Timestamp;

/// What a standby is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StandbyState {
    /// Waiting for a restorable window, or restoring the newest base backup.
    Creating,
    /// Replaying the vault's WAL, `apply_delay` behind.
    Following,
    /// Restarting with an incident's restore target, replaying up to just before it.
    Stopping,
    /// Stopped (replay paused) just before an incident's restore target, read-only.
    Paused,
    /// Promoted for writes (`holdfast standby promote`): it no longer follows the vault.
    Promoted,
    /// The vault learnt of an incident whose target the standby had already replayed past (the
    /// detection came later than `apply_delay`): it is paused, but does not show the state
    /// before the incident. `holdfast standby resume` builds a fresh one; restore instead.
    Overrun,
    /// Not running, or could not be created or queried (see `error`).
    Failed,
}

/// `GET /v1/standbys`: one per `[[standby]]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StandbyStatus {
    pub cluster: String,
    pub state: StandbyState,
    pub data_dir: String,
    /// TCP port on 127.0.0.1 (and the Unix socket in `data_dir`).
    pub port: u16,
    pub apply_delay_seconds: u64,
    /// Accepts read-only (or, promoted, any) queries now.
    pub ready: bool,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()`: the commit time of the last transaction applied.
    pub last_replayed_commit: Option<Timestamp>,
    /// The end of the WAL the vault holds for the cluster.
    pub vault_lsn: Option<Lsn>,
    /// `vault_lsn − replay_lsn`.
    pub lag_bytes: Option<u64>,
    /// How long WAL the vault held has been waiting unreplayed (0 when caught up).
    pub behind_seconds: Option<u64>,
    /// The incident the standby stopped short of, numbered as `holdfast incidents` does.
    pub paused_before_incident: Option<usize>,
    /// The recovery target it stopped at (`xid 1234` / `lsn 0/3000060`, exclusive).
    pub target: Option<String>,
    /// The base backup it was built from.
    pub backup: Option<String>,
    /// What went wrong last, or what to do.
    pub message: Option<String>,
}

/// `POST /v1/clusters/{name}/standby/promote`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The incident the standby is paused before (a check that the person promotes what they
    /// looked at).
    pub before_incident: usize,
}

/// The answer to promote and resume.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StandbyActionResponse {
    pub status: StandbyStatus,
    /// What was done and what to do next (how to connect, how to move the data to production).
    pub message: String,
}

/// `GET /v1/standbys`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StandbysResponse {
    pub standbys: Vec<StandbyStatus>,
}
