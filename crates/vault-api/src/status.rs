//! Capture status as the vault reports it (`GET /v1/status`, `holdfast status`): per cluster,
//! the WAL stream, lag, the last complete base backup and the restorable window.

use pgfmt::Lsn;
use vault_types::Timestamp;

/// A protected cluster's capture state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    /// Streaming right now.
    pub connected: bool,
    /// The server streamed from, if connected.
    pub server: Option<String>,
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    /// Last WAL byte + 1 received from the server.
    pub received_lsn: Option<Lsn>,
    /// Last WAL byte + 1 durable in the vault (what the server is told is flushed).
    pub durable_lsn: Option<Lsn>,
    /// The server's end of WAL, from its last message.
    pub server_lsn: Option<Lsn>,
    /// WAL the server holds for the vault that the vault does not yet have, in bytes.
    pub lag_bytes: Option<u64>,
    /// Seconds between the server sending the newest durable WAL and now (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// The last base backup that is complete (all its WAL is stored).
    pub last_backup: Option<BackupSummary>,
    /// The newest restorable interval (the one a `--latest` restore reaches), if any.
    pub window: Option<Window>,
    /// Every restorable interval, oldest first: a WAL gap ends one, a backup after it starts
    /// the next (see [`crate::window`]).
    #[serde(default)]
    pub windows: Vec<crate::window::Interval>,
    /// The last error, while not connected.
    pub last_error: Option<String>,
    /// Incidents recorded for this cluster, newest last (at most 20).
    pub incidents: Vec<Incident>,
    /// When the vault last heard from the server (vault clock).
    pub last_contact: Option<Timestamp>,
    /// A base backup in progress: (bytes received, bytes expected).
    pub backup_progress: Option<(u64, u64)>,
    /// The vault's own first base backup of a cluster that had none: running, taken, or
    /// failing (and retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_backup: Option<String>,
    /// Restore drills: last result, schedule, overdue (filled by the vault).
    #[serde(default)]
    pub drill: Option<crate::drill::DrillStatus>,
    /// The warm standby, when the cluster has a `[[standby]]` table (filled by the vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<crate::standby::StandbyStatus>,
    /// The destruction detector's position: the stored WAL before it has been decoded and
    /// checked (compare with `durable_lsn`).
    #[serde(default)]
    pub decoded_lsn: Option<Lsn>,
    /// The detector's verdicts are final up to here: `decoded_lsn`, held back to the first
    /// record of a finding that still waits for the catalog. The warm standby is never fed
    /// past it.
    #[serde(default)]
    pub judged_lsn: Option<Lsn>,
    /// Durable WAL not yet decoded by the destruction detector, in bytes.
    #[serde(default)]
    pub detector_lag_bytes: Option<u64>,
    /// Tables the detector knows from the catalog snapshot (names, columns, which table a
    /// file belongs to); `None` until the first snapshot.
    #[serde(default)]
    pub catalog_tables: Option<u64>,
}

/// The restorable window.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub earliest_lsn: Lsn,
    pub earliest_time: Timestamp,
    pub latest_lsn: Lsn,
    pub latest_time: Timestamp,
}

/// A completed base backup, as status shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    pub id: String,
    pub cluster: String,
    pub system_id: String,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub bytes: u64,
    pub stored_bytes: u64,
}

/// Something that needs a person: recorded in the catalog, shown by status, alerted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    pub cluster: String,
    /// `slot_dropped`, `wal_gap`, `connection_lost`, `access_revoked`, `system_changed`,
    /// `timeline_switch`, `capture_stalled`; from the WAL: `database_dropped`, `relations_dropped`, `mass_delete`,
    /// `mass_update`, `cumulative_delete`, `column_dropped`; the detector's own blindness:
    /// `detector_blind`, `detector_behind`, `detector_stopped`; commits stamped by a database
    /// server clock that lies: `server_clock`; the vault's warm standby:
    /// `standby_stopped`, `standby_behind`; in synchronous mode, the server's settings letting
    /// commits stop waiting for the vault: `synchronous_off`.
    pub kind: String,
    pub detected_at: Timestamp,
    pub message: String,
    /// Where in the WAL it happened, when known.
    pub lsn: Option<Lsn>,
    /// For destruction found in the WAL: the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// For destruction found in the WAL: where to restore to undo it (just before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_target: Option<IncidentTarget>,
    /// For destruction found in the WAL: the destroying transaction's first record (for a
    /// window, its first contributing transaction's). A standby stopped here shows the data
    /// without the transaction's locks (a DROP or TRUNCATE holds its table's until it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_lsn: Option<Lsn>,
    /// For destruction found in the WAL: the timeline its LSNs are on (recorded since
    /// 2026-12-05; `None` in incidents raised before). A warm standby built later checks it
    /// against the timeline history it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// What it touched: one entry per table (its indexes and TOAST folded in) or database,
    /// named from the collector's catalog snapshot when it knew them.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "objects_or_legacy")]
    pub objects: Vec<IncidentObject>,
}

/// One database or table an incident touched. Names come from the collector's catalog
/// snapshot (kept after a table is gone, which is the point); what it did not know stays an
/// OID or a file path, and never stops the incident.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IncidentObject {
    /// Database name, or its OID (as text) when unknown.
    pub database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table's main file (`base/16384/16390`), as `pg_waldump` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relfilenode: Option<String>,
    /// Size on disk when last seen (the table with its indexes and TOAST; a whole database for
    /// a dropped one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The table's estimated rows when last seen (`reltuples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Whether its files were dropped or emptied (DROP, TRUNCATE, DROP DATABASE).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// Rows the transaction deleted from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// Rows the transaction updated in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// Columns of it that were dropped (DROP COLUMN), by their name before the drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Files of it that were dropped, when not only the main file (indexes, TOAST), or what an
    /// older vault recorded as text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The tenants whose rows it counted (when a tenant column is configured), most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<IncidentTenant>,
}

/// One tenant's rows changed in a table: `merchant_id = 42`, rows deleted and updated, and
/// the tenant's estimated rows in the table.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IncidentTenant {
    pub column: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

impl IncidentObject {
    /// `shop.public.orders`, or as much of it as is known (`db 16384`, a file path).
    pub fn name(&self) -> String {
        match (&self.schema, &self.table) {
            (Some(s), Some(t)) => format!("{}.{s}.{t}", self.database),
            _ => match &self.relfilenode {
                Some(f) => format!("{f} (name unknown)"),
                None if self.database.is_empty() => self.files.join(", "),
                None => format!("database {}", self.database),
            },
        }
    }
}

impl std::fmt::Display for IncidentObject {
    /// `shop.public.orders: 1500 of ~3000 rows deleted (base/16384/16390, 245760 bytes)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        let of = self.rows.map(|r| format!(" of ~{r}")).unwrap_or_default();
        let mut what = Vec::new();
        if self.dropped {
            what.push(match self.rows {
                Some(r) => format!("dropped or emptied (~{r} rows)"),
                None => "dropped or emptied".to_string(),
            });
        }
        if let Some(n) = self.deleted {
            what.push(format!("{n}{of} rows deleted"));
        }
        if let Some(n) = self.updated {
            what.push(format!("{n}{of} rows updated"));
        }
        if !self.columns.is_empty() {
            what.push(format!("column(s) {} dropped", self.columns.join(", ")));
        }
        if !what.is_empty() {
            write!(f, ": {}", what.join(", "))?;
        }
        let mut detail = Vec::new();
        if let (Some(file), Some(_)) = (&self.relfilenode, &self.table) {
            detail.push(file.clone());
        }
        if let Some(b) = self.bytes {
            detail.push(format!("{b} bytes"));
        }
        if !detail.is_empty() {
            write!(f, " ({})", detail.join(", "))?;
        }
        Ok(())
    }
}

/// Incidents recorded before objects were structured listed them as text: keep reading them.
fn objects_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IncidentObject>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Object(Box<IncidentObject>),
        Text(String),
    }
    let items: Vec<Either> = serde::Deserialize::deserialize(d)?;
    Ok(items
        .into_iter()
        .map(|e| match e {
            Either::Object(o) => *o,
            Either::Text(t) => IncidentObject { files: vec![t], ..Default::default() },
        })
        .collect())
}

/// The point just before a destructive transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IncidentTarget {
    /// Stop before this transaction commits (`recovery_target_xid`, exclusive).
    BeforeXid { xid: u32 },
    /// Stop before the record at this LSN (`recovery_target_lsn`, exclusive).
    BeforeLsn { lsn: Lsn },
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StatusResponse {
    pub clusters: Vec<ClusterStatus>,
    /// Alert delivery, per configured webhook.
    #[serde(default)]
    pub webhooks: Vec<WebhookStatus>,
    /// The store's copies: lock mode, minimum retain-until, uploads pending to the bucket.
    #[serde(default)]
    pub stores: Vec<vault_types::StoreStatus>,
}

/// How alert delivery to one webhook has gone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookStatus {
    pub name: String,
    /// `generic`, `wecom`, `dingtalk` or `slack`.
    pub format: String,
    pub delivered: u64,
    /// Alerts given up on after every retry.
    pub failed: u64,
    pub last_delivered_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// What the vault holds for one cluster — what a restore plans from
/// (`GET /v1/clusters/{name}/inventory`, read scope).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    pub cluster: String,
    pub system_id: Option<String>,
    /// WAL segment size of the cluster, once any WAL is stored.
    pub segment_size: Option<u64>,
    /// Complete base backups, oldest first.
    pub backups: Vec<InventoryBackup>,
    /// Contiguous runs of stored WAL, by timeline then LSN.
    pub wal: Vec<WalRun>,
    /// Timelines whose history file is stored.
    pub histories: Vec<u32>,
    /// The newest restorable interval.
    pub window: Option<Window>,
    /// Every restorable interval, oldest first ([`Inventory::refresh_windows`]).
    #[serde(default)]
    pub windows: Vec<crate::window::Interval>,
}

/// A complete base backup with the server's clock at its consistency point.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InventoryBackup {
    #[serde(flatten)]
    pub backup: BackupSummary,
    /// The server's clock when the WAL at the backup's stop LSN was sent: the earliest time a
    /// restore from this backup can reach. `None` when that WAL is not stored.
    pub consistent_time: Option<Timestamp>,
}

/// A contiguous run of stored WAL on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalRun {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
    /// Server clock when the run's first piece was sent.
    pub start_time: Timestamp,
    /// Server clock when the run's last byte was sent.
    pub end_time: Timestamp,
}

/// A restore point (`pg_create_restore_point(name)`) the vault decoded from the WAL it stores
/// (`GET /v1/clusters/{name}/restore-points`, `holdfast restore-points`). PostgreSQL's
/// `recovery_target_name` stops at the *first* record of a name, so `restore` resolves a name
/// through these and refuses one that occurs more than once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePoint {
    pub name: String,
    /// The timeline whose stored WAL holds the record.
    pub timeline: u32,
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the next record may start (its end, MAXALIGNed: what `pg_create_restore_point()`
    /// returned): replay reached the restore point when it got this far.
    pub end_lsn: Lsn,
    /// `rp_time`, on the server's clock (whole seconds, Unix).
    pub time: Timestamp,
}
