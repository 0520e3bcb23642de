//! Per-cluster settings, read from the vault's TOML config (`[[cluster]]` tables).

use std::path::PathBuf;
use std::time::Duration;

use pgproto::conn::{Config as PgConfig, Host, SslMode};

use crate::CaptureError;
use crate::detect::Thresholds;

/// Reads a password from a file (first line) or an environment variable; with where it came
/// from, for error messages.
fn read_password(
    file: Option<&PathBuf>,
    env: Option<&String>,
    key: &str,
    bad: &dyn Fn(String) -> CaptureError,
) -> Result<Option<(String, String)>, CaptureError> {
    Ok(match (file, env) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| bad(format!("cannot read {key} {}: {e}", f.display())))?;
            Some((text.lines().next().unwrap_or("").to_string(), format!("{key} {}", f.display())))
        }
        (None, Some(var)) => {
            let v = std::env::var(var).map_err(|_| bad(format!("environment variable {var} is not set")))?;
            Some((v, format!("environment variable {var}")))
        }
        (None, None) => None,
    })
}

/// One protected cluster, as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A short name used in commands, records and metrics, e.g. `shop`.
    pub name: String,
    /// Server addresses tried in order: `host:port`, or an absolute Unix-socket directory
    /// followed by `:port` (e.g. `/var/run/postgresql:5432`). List the standby too, so that the
    /// collector follows a promotion.
    pub hosts: Vec<String>,
    /// A role with the REPLICATION attribute (and nothing else).
    pub user: String,
    /// File holding the password (first line). Preferred over `password_env`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `disable`, `prefer` (default), `require` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// CA certificate (PEM) for `verify-full`.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Physical replication slot the vault owns on the server. Default `holdfast_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// `application_name`; list it in `synchronous_standby_names` for RPO 0. Default
    /// `holdfast_<name>`.
    #[serde(default)]
    pub application_name: Option<String>,
    /// Report WAL as flushed the moment it is durable, without batching: set this when the
    /// vault is a synchronous standby.
    #[serde(default)]
    pub synchronous: bool,
    /// How long WAL may wait in memory before it is stored, in milliseconds (default 200).
    #[serde(default)]
    pub flush_interval_ms: Option<u64>,
    /// Take a base backup this often, in minutes (default: only on demand).
    #[serde(default)]
    pub backup_interval_minutes: Option<u64>,
    /// Also take a base backup once the WAL stored since the newest one began exceeds this
    /// share of that backup's size (e.g. 0.5; default: by time only). A restore replays the WAL
    /// after its backup, so this bounds replay by the database's own size; backups are cheap
    /// (deduplicated: unchanged pages are stored once).
    #[serde(default)]
    pub backup_wal_share: Option<f64>,
    /// Also take a base backup once replaying the WAL stored since the newest one began would
    /// take longer than this many seconds (e.g. 2), at the replay speed the vault last measured
    /// in a drill of this cluster ([`DEFAULT_REPLAY_BYTES_PER_SECOND`] until one ran; the log
    /// says which). From the vault's warm standby when it is close enough behind to give a
    /// backup inside the budget, else from production — a full read of the database each time,
    /// at most one at a time and never sooner than `backup_min_interval_seconds` after the
    /// previous one. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_replay_budget_seconds: Option<f64>,
    /// The shortest time between two base backups triggered by WAL (`backup_wal_share`,
    /// `backup_replay_budget_seconds`), from the start of one to the start of the next, in
    /// seconds (default 60): what bounds what those triggers cost production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_min_interval_seconds: Option<u64>,
    /// When the cluster has no complete base backup in the vault, take one as soon as
    /// streaming starts (default true): until one exists nothing is restorable.
    #[serde(default)]
    pub first_backup: Option<bool>,
    /// A transaction deleting more rows than this raises a `mass_delete` incident (default
    /// 10000).
    #[serde(default)]
    pub mass_delete_rows: Option<u64>,
    /// A transaction updating more rows than this raises a `mass_update` incident (default
    /// 10000).
    #[serde(default)]
    pub mass_update_rows: Option<u64>,
    /// A transaction deleting or updating at least this share of one table's rows (0 < share
    /// ≤ 1; default 0.5) is a mass delete/update too, whatever the absolute count — for
    /// tables of at least `mass_change_min_rows` rows (estimated, `reltuples`) only.
    #[serde(default)]
    pub mass_change_share: Option<f64>,
    /// See `mass_change_share` (default 1000).
    #[serde(default)]
    pub mass_change_min_rows: Option<u64>,
    /// Deletes of many small transactions add up over this sliding window of commit time, in
    /// seconds (default 600).
    #[serde(default)]
    pub window_seconds: Option<u64>,
    /// More rows than this deleted from one table within the window, by transactions each
    /// under the per-transaction thresholds, raise one `cumulative_delete` incident (default
    /// 50000).
    #[serde(default)]
    pub window_table_delete_rows: Option<u64>,
    /// More rows than this deleted in one database within the window raise one too (default
    /// 100000).
    #[serde(default)]
    pub window_database_delete_rows: Option<u64>,
    /// At least this share of one table's estimated rows deleted within the window raises one
    /// too (0 < share ≤ 1, default 0.2; tables of at least `mass_change_min_rows` rows).
    #[serde(default)]
    pub window_delete_share: Option<f64>,
    /// More rows than this updated in one table within the window (each row counted once
    /// however often it was updated), by transactions each under the per-transaction
    /// thresholds, raise one `cumulative_update` incident (default 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_table_update_rows: Option<u64>,
    /// More rows than this updated in one database within the window raise one too (default
    /// 2000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_database_update_rows: Option<u64>,
    /// At least this share of one table's estimated rows updated within the window raises one
    /// too (0 < share ≤ 1, default 1.0: as many rows as the table has, each once — ordinary
    /// traffic updating the same rows again and again does not add up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_update_share: Option<f64>,
    /// More bytes than this of tables' data dropped in one database within the window, by at
    /// least two transactions, raise one `cumulative_drop` incident, restoring to before the
    /// first drop (default 1 GiB;
    /// every drop of a table holding data is an incident of its own too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_dropped_bytes: Option<u64>,
    /// More tables than this with data dropped in one database within the window raise one
    /// too (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_dropped_tables: Option<u64>,
    /// The column that says which tenant a row belongs to (e.g. `merchant_id`): in every table
    /// that has it, each tenant's rows count as a table of their own for the share rules
    /// (`mass_change_share`, `window_delete_share`, `window_update_share`), so that deleting
    /// or overwriting one tenant's rows is an incident though it is a small share of the
    /// table. Needs `wal_level = logical` and, for deletes, a replica identity that includes
    /// the column (`REPLICA IDENTITY FULL`, or a key or `USING INDEX` covering it); for
    /// updates, `wal_level = logical` alone. Tables that do not allow it are a
    /// `tenant_blind` incident, never a silent blind spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_column: Option<String>,
    /// The tenant share rules apply to tenants with at least this many rows in a table
    /// (estimated from the planner's statistics; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_min_rows: Option<u64>,
    /// Tests only: makes the destruction detector fail, to prove that its failures are
    /// incidents — `"stall"` (it never decodes: `detector_behind`) or `"panic"` (its first run
    /// panics: `detector_stopped`, then it restarts). Logged as an error at start; never set
    /// it in production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing_detector_fault: Option<String>,
    /// WAL durable in the vault and not decoded by the destruction detector for longer than
    /// this raises `detector_behind`, in seconds (default 30).
    #[serde(default)]
    pub detector_max_lag_seconds: Option<u64>,
    /// The role of the read-only catalog sessions that name databases and tables in incidents
    /// (default: `user`, with its password). It needs LOGIN and CONNECT on the databases, and
    /// a `pg_hba.conf` line for ordinary (not `replication`) connections; no grant on any
    /// table: it reads only `pg_database`, `pg_class` and `pg_relation_size`.
    #[serde(default)]
    pub catalog_user: Option<String>,
    /// File holding the catalog role's password (with `catalog_user`).
    #[serde(default)]
    pub catalog_password_file: Option<PathBuf>,
    /// Environment variable holding the catalog role's password (with `catalog_user`).
    #[serde(default)]
    pub catalog_password_env: Option<String>,
    /// How often the catalog snapshot is refreshed, in seconds (default 15; also at once when
    /// the WAL writes a relation file the snapshot does not know).
    #[serde(default)]
    pub catalog_refresh_seconds: Option<u64>,
    /// How long WAL capture may be stalled on the vault's side (store errors such as a full
    /// disk, no file descriptors left) before a `capture_stalled` incident, in seconds
    /// (default 10). Reconnecting does not restart this clock; only WAL made durable does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_grace_seconds: Option<u64>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub connections: Vec<PgConfig>,
    pub slot: String,
    pub application_name: String,
    pub synchronous: bool,
    pub flush_interval: Duration,
    pub backup_interval: Option<Duration>,
    /// See [`ClusterConfig::backup_wal_share`].
    pub backup_wal_share: Option<f64>,
    /// See [`ClusterConfig::backup_replay_budget_seconds`].
    pub backup_replay_budget: Option<Duration>,
    /// See [`ClusterConfig::backup_min_interval_seconds`].
    pub backup_min_interval: Duration,
    /// See [`ClusterConfig::first_backup`].
    pub first_backup: bool,
    /// Mass delete/update thresholds (see [`ClusterConfig::mass_delete_rows`] and the fields
    /// after it).
    pub thresholds: Thresholds,
    /// Read-only sessions for the catalog snapshot, one config per host (database unset).
    pub catalog_connections: Vec<PgConfig>,
    /// See [`ClusterConfig::catalog_refresh_seconds`].
    pub catalog_refresh: Duration,
    /// How long the server may stay unreachable before a `connection_lost` incident
    /// (default 10 s).
    pub connection_grace: Duration,
    /// See [`ClusterConfig::stall_grace_seconds`].
    pub stall_grace: Duration,
    /// See [`ClusterConfig::detector_max_lag_seconds`].
    pub detector_max_lag: Duration,
    /// See [`ClusterConfig::tenant_column`].
    pub tenant_column: Option<String>,
    /// See [`ClusterConfig::testing_detector_fault`].
    pub testing_detector_fault: Option<DetectorFault>,
    /// How long a finished base backup may wait for its WAL to be durable in the vault before
    /// it is reported as not complete (default 120 s).
    pub wal_wait: Duration,
    /// The synchronous journal's file (set by the vault for a store on a local directory): in
    /// synchronous mode WAL is durable once appended there, one `fdatasync`, and is folded into
    /// objects within [`crate::stream::FOLD_AFTER`]. `None`: every piece is stored as an object
    /// before it is acknowledged.
    pub journal: Option<std::path::PathBuf>,
}

/// A failure injected into the destruction detector (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorFault {
    Stall,
    Panic,
}

/// Default of [`ClusterConfig::stall_grace_seconds`].
pub const DEFAULT_STALL_GRACE: Duration = Duration::from_secs(10);
/// Default of [`Cluster::connection_grace`].
pub const DEFAULT_CONNECTION_GRACE: Duration = Duration::from_secs(10);
/// Default of [`ClusterConfig::mass_delete_rows`].
/// `backup_min_interval_seconds` when not set.
pub const DEFAULT_BACKUP_MIN_INTERVAL_SECONDS: u64 = 60;
/// The replay speed `backup_replay_budget_seconds` assumes until a drill of the cluster measured
/// one: 32 MiB/s, below what a loaded 2-core box replayed in `bench/restore.sh` (60–155 MB/s), so
/// that the budget errs on the side of more backups, not longer restores.
pub const DEFAULT_REPLAY_BYTES_PER_SECOND: f64 = 32.0 * 1024.0 * 1024.0;
pub const DEFAULT_MASS_DELETE_ROWS: u64 = 10_000;
/// Default of [`ClusterConfig::mass_update_rows`].
pub const DEFAULT_MASS_UPDATE_ROWS: u64 = 10_000;
/// Default of [`ClusterConfig::mass_change_share`].
pub const DEFAULT_MASS_CHANGE_SHARE: f64 = 0.5;
/// Default of [`ClusterConfig::mass_change_min_rows`].
pub const DEFAULT_MASS_CHANGE_MIN_ROWS: u64 = 1000;
/// Default of [`ClusterConfig::window_seconds`].
pub const DEFAULT_WINDOW_SECONDS: u64 = 600;
/// Default of [`ClusterConfig::window_table_delete_rows`].
pub const DEFAULT_WINDOW_TABLE_DELETE_ROWS: u64 = 50_000;
/// Default of [`ClusterConfig::window_database_delete_rows`].
pub const DEFAULT_WINDOW_DATABASE_DELETE_ROWS: u64 = 100_000;
/// Default of [`ClusterConfig::window_delete_share`].
pub const DEFAULT_WINDOW_DELETE_SHARE: f64 = 0.2;
/// Default of [`ClusterConfig::window_table_update_rows`].
pub const DEFAULT_WINDOW_TABLE_UPDATE_ROWS: u64 = 1_000_000;
/// Default of [`ClusterConfig::window_database_update_rows`].
pub const DEFAULT_WINDOW_DATABASE_UPDATE_ROWS: u64 = 2_000_000;
/// Default of [`ClusterConfig::window_update_share`].
pub const DEFAULT_WINDOW_UPDATE_SHARE: f64 = 1.0;
/// Default of [`ClusterConfig::window_dropped_bytes`].
pub const DEFAULT_WINDOW_DROPPED_BYTES: u64 = 1 << 30;
/// Default of [`ClusterConfig::window_dropped_tables`].
pub const DEFAULT_WINDOW_DROPPED_TABLES: u64 = 10;
/// Default of [`ClusterConfig::tenant_min_rows`].
pub const DEFAULT_TENANT_MIN_ROWS: u64 = 100;
/// Default of [`ClusterConfig::detector_max_lag_seconds`].
pub const DEFAULT_DETECTOR_MAX_LAG: Duration = Duration::from_secs(30);
/// Default of [`ClusterConfig::catalog_refresh_seconds`].
pub const DEFAULT_CATALOG_REFRESH: Duration = Duration::from_secs(15);
/// Default of [`Cluster::wal_wait`].
pub const DEFAULT_WAL_WAIT: Duration = Duration::from_secs(120);

impl ClusterConfig {
    /// Checks the settings and reads the password.
    pub fn validate(&self) -> Result<Cluster, CaptureError> {
        let bad = |msg: String| CaptureError::Config(format!("cluster {:?}: {msg}", self.name));
        if self.name.is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad("name must be non-empty letters, digits, '_' or '-'".into()));
        }
        if self.hosts.is_empty() {
            return Err(bad("`hosts` is empty: list at least one `host:port`".into()));
        }
        let password =
            read_password(self.password_file.as_ref(), self.password_env.as_ref(), "password_file", &bad)?;
        let catalog_password = match &self.catalog_user {
            Some(_) => read_password(
                self.catalog_password_file.as_ref(),
                self.catalog_password_env.as_ref(),
                "catalog_password_file",
                &bad,
            )?,
            None if self.catalog_password_file.is_some() || self.catalog_password_env.is_some() => {
                return Err(bad(
                    "catalog_password_file/catalog_password_env need catalog_user (without it the catalog \
                     sessions use `user` and its password)"
                        .into(),
                ));
            }
            None => password.clone(),
        };
        let share = self.mass_change_share.unwrap_or(DEFAULT_MASS_CHANGE_SHARE);
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(format!(
                "mass_change_share = {share} is not a share of a table's rows: use a number above 0 and at most 1, e.g. 0.5"
            )));
        }
        if let Some(s) = self.backup_wal_share
            && !(s > 0.0 && s <= 100.0)
        {
            return Err(bad(format!(
                "backup_wal_share = {s} is not a share of the database's size: use a number above 0, e.g. 0.5 (a backup once half the database's size in WAL was written)"
            )));
        }
        if let Some(b) = self.backup_replay_budget_seconds
            && !(b.is_finite() && b > 0.0 && b <= 86_400.0)
        {
            return Err(bad(format!(
                "backup_replay_budget_seconds = {b} is not a replay time: use a number of seconds above 0, e.g. 2 (a backup once the WAL since the newest would take 2 s to replay)"
            )));
        }
        let window_share = self.window_delete_share.unwrap_or(DEFAULT_WINDOW_DELETE_SHARE);
        if !(window_share > 0.0 && window_share <= 1.0) {
            return Err(bad(format!(
                "window_delete_share = {window_share} is not a share of a table's rows: use a number above 0 and at most 1, e.g. 0.2"
            )));
        }
        let update_share = self.window_update_share.unwrap_or(DEFAULT_WINDOW_UPDATE_SHARE);
        if !(update_share > 0.0 && update_share <= 1.0) {
            return Err(bad(format!(
                "window_update_share = {update_share} is not a share of a table's rows: use a number above 0 and at most 1, e.g. 1.0"
            )));
        }
        if let Some(c) = &self.tenant_column
            && (c.is_empty() || c.len() > 63 || c.contains('\0'))
        {
            return Err(bad(format!(
                "tenant_column = {c:?} is not a column name: write the column as it is in the tables, e.g. \"merchant_id\""
            )));
        }
        let testing_detector_fault = match self.testing_detector_fault.as_deref() {
            None => None,
            Some("stall") => Some(DetectorFault::Stall),
            Some("panic") => Some(DetectorFault::Panic),
            Some(other) => {
                return Err(bad(format!(
                    "testing_detector_fault = {other:?}: use \"stall\" or \"panic\" (tests only), or leave it out"
                )));
            }
        };
        let window_seconds = self.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS);
        if window_seconds == 0 {
            return Err(bad(
                "window_seconds must be at least 1 (deletes add up over that many seconds)".into()
            ));
        }
        let max_lag = self.detector_max_lag_seconds.map_or(DEFAULT_DETECTOR_MAX_LAG, Duration::from_secs);
        if max_lag.is_zero() {
            return Err(bad("detector_max_lag_seconds must be at least 1".into()));
        }
        let refresh = self.catalog_refresh_seconds.map_or(DEFAULT_CATALOG_REFRESH, Duration::from_secs);
        if refresh.is_zero() {
            return Err(bad("catalog_refresh_seconds must be at least 1".into()));
        }
        let ssl = match self.sslmode.as_deref().unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-full" => {
                let path = self
                    .sslrootcert
                    .as_ref()
                    .ok_or_else(|| bad("sslmode verify-full needs sslrootcert".into()))?;
                let ca_pem = std::fs::read(path)
                    .map_err(|e| bad(format!("cannot read sslrootcert {}: {e}", path.display())))?;
                SslMode::VerifyFull { ca_pem }
            }
            other => {
                return Err(bad(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require or verify-full"
                )));
            }
        };
        let application_name =
            self.application_name.clone().unwrap_or_else(|| format!("holdfast_{}", self.name));
        let mut connections = Vec::new();
        let mut catalog_connections = Vec::new();
        for h in &self.hosts {
            let (host, port) =
                h.rsplit_once(':').ok_or_else(|| bad(format!("host {h:?} has no port: write host:port")))?;
            let port: u16 =
                port.parse().map_err(|_| bad(format!("host {h:?}: {port:?} is not a port number")))?;
            let host = if host.starts_with('/') {
                Host::Unix { dir: PathBuf::from(host), port }
            } else {
                Host::Tcp { host: host.to_string(), port }
            };
            let mut c = PgConfig::new(host, &self.user);
            if let Some((pw, source)) = &password {
                c = c.password(pw, source);
            }
            c.application_name = application_name.clone();
            c.ssl = ssl.clone();
            c.connect_timeout = Duration::from_secs(10);
            let mut cat = c.clone();
            if let Some(user) = &self.catalog_user {
                cat.user = user.clone();
            }
            cat.password = None;
            if let Some((pw, source)) = &catalog_password {
                cat = cat.password(pw, source);
            }
            catalog_connections.push(cat);
            connections.push(c);
        }
        let slot = self.slot.clone().unwrap_or_else(|| format!("holdfast_{}", self.name.replace('-', "_")));
        Ok(Cluster {
            name: self.name.clone(),
            connections,
            slot,
            application_name,
            synchronous: self.synchronous,
            flush_interval: Duration::from_millis(self.flush_interval_ms.unwrap_or(200)),
            backup_interval: self.backup_interval_minutes.map(|m| Duration::from_secs(m * 60)),
            backup_wal_share: self.backup_wal_share,
            backup_replay_budget: self.backup_replay_budget_seconds.map(Duration::from_secs_f64),
            backup_min_interval: Duration::from_secs(
                self.backup_min_interval_seconds.unwrap_or(DEFAULT_BACKUP_MIN_INTERVAL_SECONDS),
            ),
            first_backup: self.first_backup.unwrap_or(true),
            thresholds: Thresholds {
                mass_delete_rows: self.mass_delete_rows.unwrap_or(DEFAULT_MASS_DELETE_ROWS),
                mass_update_rows: self.mass_update_rows.unwrap_or(DEFAULT_MASS_UPDATE_ROWS),
                mass_change_share: share,
                mass_change_min_rows: self.mass_change_min_rows.unwrap_or(DEFAULT_MASS_CHANGE_MIN_ROWS),
                window_seconds,
                window_table_delete_rows: self
                    .window_table_delete_rows
                    .unwrap_or(DEFAULT_WINDOW_TABLE_DELETE_ROWS),
                window_database_delete_rows: self
                    .window_database_delete_rows
                    .unwrap_or(DEFAULT_WINDOW_DATABASE_DELETE_ROWS),
                window_delete_share: window_share,
                window_table_update_rows: self
                    .window_table_update_rows
                    .unwrap_or(DEFAULT_WINDOW_TABLE_UPDATE_ROWS),
                window_database_update_rows: self
                    .window_database_update_rows
                    .unwrap_or(DEFAULT_WINDOW_DATABASE_UPDATE_ROWS),
                window_update_share: update_share,
                window_dropped_bytes: self.window_dropped_bytes.unwrap_or(DEFAULT_WINDOW_DROPPED_BYTES),
                window_dropped_tables: self.window_dropped_tables.unwrap_or(DEFAULT_WINDOW_DROPPED_TABLES),
                tenant_min_rows: self.tenant_min_rows.unwrap_or(DEFAULT_TENANT_MIN_ROWS),
            },
            tenant_column: self.tenant_column.clone(),
            testing_detector_fault,
            detector_max_lag: max_lag,
            catalog_connections,
            catalog_refresh: refresh,
            connection_grace: DEFAULT_CONNECTION_GRACE,
            stall_grace: self.stall_grace_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_STALL_GRACE),
            wal_wait: DEFAULT_WAL_WAIT,
            journal: None,
        })
    }
}
