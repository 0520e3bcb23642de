//! The vault's configuration: a TOML file (`ConfigFile`, unknown keys refused) validated into
//! the runtime [`Config`]. Relative paths are resolved against the config file's directory.
//!
//! ```toml
//! listen = "127.0.0.1:8443"
//! key_file = "vault.key"
//! retention_days = 30
//! store = { path = "store" }
//! tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
//! [quorum]
//! threshold = 2
//! wait_hours = 72
//! keyholders = [{ name = "alice", public_key = "<64 hex>" }]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

/// Default largest request body: 64 MiB, four times the target pack size.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 << 20;

/// The file as written by people. Every table refuses unknown keys so a misspelling stops
/// startup instead of silently weakening a policy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    pub listen: String,
    /// The vault's age identity (wraps the repository keys together with escrow recipients).
    pub key_file: PathBuf,
    /// Initial retention policy in days; the catalog may only lengthen it.
    pub retention_days: u32,
    /// Program (and arguments) run with each alert's JSON on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_command: Option<Vec<String>>,
    /// Largest accepted request body in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    pub store: StoreFile,
    pub tls: TlsFile,
    pub quorum: QuorumFile,
    /// Protected PostgreSQL clusters the vault pulls WAL and base backups from.
    #[serde(default, rename = "cluster", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<capture::ClusterConfig>,
    /// Restore drills, one table per cluster that has a schedule or checks of its own
    /// (every protected cluster can be drilled on demand with the defaults).
    #[serde(default, rename = "drill", skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<DrillFile>,
    /// Warm standbys, at most one per cluster.
    #[serde(default, rename = "standby", skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyFile>,
    /// Where alerts are posted (besides the log, the metric and `alert_command`).
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookFile>,
    /// Per-token quotas and connection limits (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// Gates' public audit keys (`holdfast audit keygen` printed them): the console's audit
    /// page accepts only batches they signed. Without any, each gate's first stored batch's key
    /// is trusted and the page says the chain is only self-consistent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_trust_keys: Vec<String>,
    /// How long a console sign-in lasts from sign-in, e.g. `"15m"` (the default; 1 s to 12 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_session: Option<String>,
}

/// `[limits]`: what one token or one address can take from the vault.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Bytes each client (`append`) token may have the vault store per day of the vault's
    /// clock (UTC; default 50 GiB). Past it, writes with that token are refused and alerted.
    #[serde(default)]
    pub token_quota_bytes_per_day: Option<u64>,
    /// Writes (record appends, uploads) each token may make per minute (default 1200).
    #[serde(default)]
    pub token_writes_per_minute: Option<u32>,
    /// Connections one client address may hold open before it has authenticated a request
    /// (default 32). Further connections from it are closed at once.
    #[serde(default)]
    pub unauthenticated_per_address: Option<u32>,
    /// Seconds a TLS handshake may take (default 5).
    #[serde(default)]
    pub tls_handshake_seconds: Option<u64>,
}

/// Default of [`LimitsFile::token_quota_bytes_per_day`].
pub const DEFAULT_TOKEN_QUOTA_BYTES_PER_DAY: u64 = 50 << 30;
/// Default of [`LimitsFile::token_writes_per_minute`].
pub const DEFAULT_TOKEN_WRITES_PER_MINUTE: u32 = 1200;
/// Default of [`LimitsFile::unauthenticated_per_address`].
pub const DEFAULT_UNAUTHENTICATED_PER_ADDRESS: u32 = 32;
/// Default of [`LimitsFile::tls_handshake_seconds`].
pub const DEFAULT_TLS_HANDSHAKE_SECONDS: u64 = 5;
/// The shortest waiting period a quorum deletion may have: keyholders need a working day to
/// notice an alert and veto. Shorter only with `testing_allow_short_wait` (tests).
pub const MIN_WAIT_HOURS: u64 = 24;

/// Validated limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub token_quota_bytes_per_day: u64,
    pub token_writes_per_minute: u32,
    pub unauthenticated_per_address: u32,
    pub tls_handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token_quota_bytes_per_day: DEFAULT_TOKEN_QUOTA_BYTES_PER_DAY,
            token_writes_per_minute: DEFAULT_TOKEN_WRITES_PER_MINUTE,
            unauthenticated_per_address: DEFAULT_UNAUTHENTICATED_PER_ADDRESS,
            tls_handshake: Duration::from_secs(DEFAULT_TLS_HANDSHAKE_SECONDS),
        }
    }
}

pub use serve::alerts::WebhookFile;

/// `[[drill]]`: how a cluster's restore is rehearsed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillFile {
    /// A `[[cluster]]` name.
    pub cluster: String,
    /// Run a drill this often, e.g. `"24h"`, `"7d"`, `"90m"` (default: only on demand).
    #[serde(default)]
    pub every: Option<String>,
    /// No passing drill for this long is an alert (default: twice `every`).
    #[serde(default)]
    pub overdue_after: Option<String>,
    /// `latest` (default) or `random`: a WAL position drawn uniformly from the restorable
    /// window (from the oldest backup's consistency point to the newest WAL).
    #[serde(default)]
    pub point: Option<String>,
    /// Run pg_amcheck on every database of the restored copy (default true).
    #[serde(default)]
    pub verify: Option<bool>,
    /// How long the restore may take before the drill fails (default `"2h"`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Where scratch copies are restored (default `/var/tmp/holdfast-drills`). Needs room for
    /// one copy of the cluster, and must be reachable by the user PostgreSQL runs as
    /// (`postgres` when the vault runs as root).
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
    /// The restored cluster's superuser to run checks as (default `postgres`).
    #[serde(default)]
    pub user: Option<String>,
    /// SQL assertions run on the restored copy; each must return true.
    #[serde(default, rename = "check")]
    pub checks: Vec<DrillCheckFile>,
}

/// `[[standby]]`: a warm standby of a cluster, kept by the vault from its own stored WAL.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyFile {
    /// A `[[cluster]]` name.
    pub cluster: String,
    /// The standby's data directory (created by the vault; its parent must exist and be
    /// reachable by the user PostgreSQL runs as — `postgres` when the vault runs as root).
    pub data_dir: PathBuf,
    /// How far behind the vault's WAL the standby applies commits, e.g. `"10m"`: longer than
    /// detection takes, so a destroying transaction is seen before the standby would apply it.
    pub apply_delay: String,
    /// The port it listens on, on 127.0.0.1 only (and on a Unix socket in `data_dir`).
    pub port: u16,
    /// WAL the vault holds unreplayed for longer than `apply_delay` plus this is the
    /// `standby_behind` incident (default `"5m"`).
    #[serde(default)]
    pub max_lag: Option<String>,
    /// The superuser the vault checks the standby as over its socket (default `postgres`).
    #[serde(default)]
    pub user: Option<String>,
    /// Take a base backup from this standby (not from production) whenever the WAL stored
    /// since the newest backup began exceeds this share of its size (default 0.1; 0: never).
    /// It costs production one `CHECKPOINT` (asked over the catalog login when it may:
    /// `pg_checkpoint`), the vault one read of the standby; a restore then replays less.
    #[serde(default)]
    pub backup_wal_share: Option<f64>,
}

/// `[[standby]] backup_wal_share` when not set: a backup from the standby costs production a
/// checkpoint only, so it can come far more often than the cluster's own (0.5 in the example).
pub const DEFAULT_STANDBY_BACKUP_WAL_SHARE: f64 = 0.1;

/// Validated `[[standby]]`.
#[derive(Debug, Clone)]
pub struct StandbyConfig {
    pub cluster: String,
    pub data_dir: PathBuf,
    pub apply_delay: Duration,
    pub port: u16,
    pub max_lag: Duration,
    pub user: String,
    /// See [`StandbyFile::backup_wal_share`]; 0: no backups from the standby.
    pub backup_wal_share: f64,
}

impl StandbyFile {
    fn validate(&self, base: &Path) -> Result<StandbyConfig, String> {
        let apply_delay = parse_duration(&self.apply_delay).map_err(|e| format!("apply_delay: {e}"))?;
        if apply_delay < Duration::from_secs(1) {
            return Err("apply_delay must be at least 1s: without a delay the standby applies a \
                 destroying transaction before the vault can see it"
                .into());
        }
        let max_lag = match &self.max_lag {
            Some(m) => parse_duration(m).map_err(|e| format!("max_lag: {e}"))?,
            None => Duration::from_secs(300),
        };
        if self.port == 0 {
            return Err("port must be a fixed TCP port (1-65535)".into());
        }
        let data_dir = base.join(&self.data_dir);
        // The server's Unix socket goes into the data directory: socket paths are limited to
        // about 100 bytes.
        if data_dir.as_os_str().len() + "/.s.PGSQL.65535".len() >= 100 {
            return Err(format!(
                "data_dir {} is too long for the server's Unix socket inside it (at most ~84 bytes)",
                data_dir.display()
            ));
        }
        let backup_wal_share = self.backup_wal_share.unwrap_or(DEFAULT_STANDBY_BACKUP_WAL_SHARE);
        if !backup_wal_share.is_finite() || backup_wal_share < 0.0 {
            return Err(format!(
                "backup_wal_share = {backup_wal_share} is not a share of the database's size: use a number above 0 \
                 (e.g. 0.1: a backup from the standby once a tenth of the database's size in WAL was written), or 0 for none"
            ));
        }
        Ok(StandbyConfig {
            backup_wal_share,
            cluster: self.cluster.clone(),
            data_dir,
            apply_delay,
            port: self.port,
            max_lag,
            user: self.user.clone().unwrap_or_else(|| "postgres".into()),
        })
    }
}

/// `[[drill.check]]`: one assertion.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillCheckFile {
    pub name: String,
    /// Database to run it in (default `postgres`).
    #[serde(default)]
    pub database: Option<String>,
    /// One query returning one boolean, e.g. `SELECT count(*) > 0 FROM orders`.
    pub sql: String,
}

/// Default parent of drills' scratch copies (disk-backed on Debian, unlike `/tmp`).
pub const DEFAULT_SCRATCH_DIR: &str = "/var/tmp/holdfast-drills";

/// Where a drill restores to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPoint {
    Latest,
    /// A WAL position drawn uniformly from the restorable window.
    Random,
}

/// Validated drill settings of one cluster.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub cluster: String,
    pub every: Option<Duration>,
    pub overdue_after: Option<Duration>,
    pub point: DrillPoint,
    pub verify: bool,
    pub timeout: Duration,
    pub scratch_dir: PathBuf,
    pub user: String,
    pub checks: Vec<DrillCheck>,
}

/// A validated assertion.
#[derive(Debug, Clone)]
pub struct DrillCheck {
    pub name: String,
    pub database: String,
    pub sql: String,
}

pub use serve::parse_duration;

impl DrillConfig {
    /// The settings of a cluster with no `[[drill]]` table: on demand only.
    pub fn default_for(cluster: &str) -> DrillConfig {
        DrillConfig {
            cluster: cluster.to_string(),
            every: None,
            overdue_after: None,
            point: DrillPoint::Latest,
            verify: true,
            timeout: Duration::from_secs(2 * 3600),
            scratch_dir: PathBuf::from(DEFAULT_SCRATCH_DIR),
            user: "postgres".into(),
            checks: Vec::new(),
        }
    }
}

impl DrillFile {
    fn validate(&self, base: &Path) -> Result<DrillConfig, String> {
        let mut d = DrillConfig::default_for(&self.cluster);
        let dur = |what: &str, v: &Option<String>| {
            v.as_deref().map(parse_duration).transpose().map_err(|e| format!("{what}: {e}"))
        };
        d.every = dur("every", &self.every)?;
        d.overdue_after = dur("overdue_after", &self.overdue_after)?.or(d.every.map(|e| e * 2));
        if let Some(t) = dur("timeout", &self.timeout)? {
            d.timeout = t;
        }
        d.point = match self.point.as_deref().unwrap_or("latest") {
            "latest" => DrillPoint::Latest,
            "random" => DrillPoint::Random,
            other => return Err(format!("point = {other:?}: use \"latest\" or \"random\"")),
        };
        d.verify = self.verify.unwrap_or(true);
        if let Some(p) = &self.scratch_dir {
            d.scratch_dir = base.join(p);
        }
        if let Some(u) = &self.user {
            d.user = u.clone();
        }
        for c in &self.checks {
            if c.name.trim().is_empty() || c.sql.trim().is_empty() {
                return Err("every [[drill.check]] needs a name and sql".into());
            }
            if d.checks.iter().any(|k| k.name == c.name) {
                return Err(format!("check {:?} is listed twice", c.name));
            }
            d.checks.push(DrillCheck {
                name: c.name.clone(),
                database: c.database.clone().unwrap_or_else(|| "postgres".into()),
                sql: c.sql.clone(),
            });
        }
        Ok(d)
    }
}

/// `store = { path = "..." }`: a local directory; or an S3 bucket with Object Lock:
/// `[store] kind = "s3", endpoint, bucket, region, prefix, path_style, credentials_file,
/// ca_file, object_lock` (see `store::S3Config`; `object_lock = false` accepts a bucket without
/// a lock: software immutability only); or both, written through (`store::MirrorStore`):
/// `[store] kind = "mirror", path = "store"` (the hot local copy; a write is durable when it
/// is) with the bucket in `[store.remote]` (the S3 keys above) and the upload alerts'
/// thresholds `max_pending_objects`, `max_pending_bytes`, `upload_grace_seconds`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `"local"` (the default) or `"s3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<bool>,
    /// `kind = "mirror"`: alert when more objects than this wait for upload (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_objects: Option<u64>,
    /// `kind = "mirror"`: alert when more bytes than this wait for upload (default 10 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_bytes: Option<u64>,
    /// `kind = "mirror"`: alert when uploads have failed for this long (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_grace_seconds: Option<u64>,
    /// `kind = "mirror"`: the bucket the local copy is written through to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<store::S3Config>,
}

impl StoreFile {
    /// A local directory store.
    pub fn local(path: impl Into<PathBuf>) -> StoreFile {
        StoreFile { path: Some(path.into()), ..StoreFile::default() }
    }

    /// Reads the `[store]` table of a TOML file (for `vault init --store-config`). Relative
    /// paths in it are later resolved against the vault's directory, like the rest of vault.toml.
    pub fn from_file(path: &Path) -> Result<StoreFile, ConfigError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Only {
            store: StoreFile,
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.into(), source: e })?;
        toml::from_str::<Only>(&text).map(|o| o.store).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: format!("expected only a [store] table: {e}"),
        })
    }

    /// Checks the table and resolves its relative paths against `base` (the config's directory).
    pub fn to_config(&self, base: &Path) -> Result<StoreConfig, String> {
        let kind = self.kind.as_deref().unwrap_or("local");
        let mirror_keys = [
            self.max_pending_objects.is_some(),
            self.max_pending_bytes.is_some(),
            self.upload_grace_seconds.is_some(),
            self.remote.is_some(),
        ];
        if kind != "mirror" && mirror_keys.iter().any(|x| *x) {
            return Err(format!(
                "[store] has write-through settings (remote, max_pending_*, upload_grace_seconds) but kind = {kind:?}: use kind = \"mirror\""
            ));
        }
        match kind {
            "mirror" => {
                let s3_keys = [
                    self.endpoint.is_some(),
                    self.region.is_some(),
                    self.bucket.is_some(),
                    self.prefix.is_some(),
                    self.path_style.is_some(),
                    self.credentials_file.is_some(),
                    self.ca_file.is_some(),
                    self.object_lock.is_some(),
                ];
                if s3_keys.iter().any(|x| *x) {
                    return Err(
                        "[store] kind = \"mirror\": put the bucket's settings in a [store.remote] table"
                            .into(),
                    );
                }
                let path = self
                    .path
                    .as_ref()
                    .ok_or("[store] kind = \"mirror\" needs path = \"...\" (the local copy)")?;
                let mut remote = self.remote.clone().ok_or(
                    "[store] kind = \"mirror\" needs a [store.remote] table with endpoint and bucket (the S3 copy)",
                )?;
                if remote.endpoint.is_empty() || remote.bucket.is_empty() {
                    return Err("[store.remote] needs endpoint = \"...\" and bucket = \"...\"".into());
                }
                remote.credentials_file = remote.credentials_file.map(|p| base.join(p));
                remote.ca_file = remote.ca_file.map(|p| base.join(p));
                let alerts = UploadAlerts {
                    max_pending_objects: self.max_pending_objects.unwrap_or(10_000),
                    max_pending_bytes: self.max_pending_bytes.unwrap_or(10 << 30),
                    grace: Duration::from_secs(self.upload_grace_seconds.unwrap_or(300)),
                };
                if alerts.max_pending_objects == 0 || alerts.max_pending_bytes == 0 {
                    return Err("[store] max_pending_objects and max_pending_bytes must be above 0".into());
                }
                Ok(StoreConfig::Mirror { local: base.join(path), remote, alerts })
            }
            "local" => {
                let s3_keys = [
                    self.endpoint.is_some(),
                    self.region.is_some(),
                    self.bucket.is_some(),
                    self.prefix.is_some(),
                    self.path_style.is_some(),
                    self.credentials_file.is_some(),
                    self.ca_file.is_some(),
                    self.object_lock.is_some(),
                ];
                if s3_keys.iter().any(|x| *x) {
                    return Err("[store] has S3 settings but kind is not \"s3\": add kind = \"s3\"".into());
                }
                let path = self.path.as_ref().ok_or("[store] needs path = \"...\" (or kind = \"s3\")")?;
                Ok(StoreConfig::Local(base.join(path)))
            }
            "s3" => {
                if self.path.is_some() {
                    return Err("[store] kind = \"s3\" takes no path (one store per vault for now)".into());
                }
                let need = |v: &Option<String>, k: &str| {
                    v.clone()
                        .filter(|s| !s.is_empty())
                        .ok_or(format!("[store] kind = \"s3\" needs {k} = \"...\""))
                };
                Ok(StoreConfig::S3(store::S3Config {
                    endpoint: need(&self.endpoint, "endpoint")?,
                    region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
                    bucket: need(&self.bucket, "bucket")?,
                    prefix: self.prefix.clone().unwrap_or_default(),
                    path_style: self.path_style.unwrap_or(true),
                    credentials_file: self.credentials_file.as_ref().map(|p| base.join(p)),
                    ca_file: self.ca_file.as_ref().map(|p| base.join(p)),
                    object_lock: self.object_lock.unwrap_or(true),
                }))
            }
            other => Err(format!("[store] kind = {other:?} is unknown: use \"local\", \"s3\" or \"mirror\"")),
        }
    }
}

/// `tls = { cert, key }`: PEM files, generated self-signed on first start if both are missing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[quorum]`: who may authorise an early deletion and how long everyone gets to object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumFile {
    pub threshold: usize,
    /// At least [`MIN_WAIT_HOURS`].
    pub wait_hours: u64,
    #[serde(default)]
    pub keyholders: Vec<KeyholderFile>,
    /// Allows `wait_hours` below the floor. For tests only: the vault raises an alert at every
    /// start while it is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub testing_allow_short_wait: bool,
}

/// One enrolled keyholder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyholderFile {
    pub name: String,
    /// ed25519 public key, 64 hex digits (`holdfast keygen` prints it).
    pub public_key: String,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub key_file: PathBuf,
    pub retention_days: u32,
    pub alert_command: Option<Vec<String>>,
    pub max_body_bytes: u64,
    pub store: StoreConfig,
    pub tls: TlsPaths,
    pub quorum: QuorumConfig,
    pub clusters: Vec<capture::Cluster>,
    /// One per protected cluster (defaults where the file has no `[[drill]]` table).
    pub drills: Vec<DrillConfig>,
    /// `[[standby]]` tables.
    pub standbys: Vec<StandbyConfig>,
    pub webhooks: Vec<crate::alerts::Webhook>,
    pub limits: Limits,
    /// `audit_trust_keys`, parsed.
    pub audit_trust_keys: Vec<VerifyingKey>,
    /// How long a console sign-in lasts (`console_session`, 15 minutes by default).
    pub console_session: Duration,
}

impl Config {
    /// The drill settings of `cluster`.
    pub fn drill(&self, cluster: &str) -> Option<&DrillConfig> {
        self.drills.iter().find(|d| d.cluster == cluster)
    }
}

/// Where objects live.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket (Object Lock required unless `object_lock = false`).
    S3(store::S3Config),
    /// A local directory written through to an S3 bucket.
    Mirror { local: PathBuf, remote: store::S3Config, alerts: UploadAlerts },
}

/// When the write-through queue alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadAlerts {
    pub max_pending_objects: u64,
    pub max_pending_bytes: u64,
    /// How long uploads may fail before an alert.
    pub grace: Duration,
}

/// TLS certificate and private-key files (PEM).
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validated quorum rules.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub threshold: usize,
    pub wait: Duration,
    /// `wait` is below [`MIN_WAIT_HOURS`] by the testing override.
    pub short_wait_for_testing: bool,
    pub keyholders: Vec<Keyholder>,
}

/// An enrolled keyholder's name and key.
#[derive(Debug, Clone)]
pub struct Keyholder {
    pub name: String,
    pub key: VerifyingKey,
}

impl QuorumConfig {
    /// The enrolled keys.
    pub fn keys(&self) -> Vec<VerifyingKey> {
        self.keyholders.iter().map(|k| k.key).collect()
    }

    /// The keyholder with public key `hex`, if enrolled.
    pub fn keyholder(&self, hex_key: &str) -> Option<&Keyholder> {
        self.keyholders.iter().find(|k| hex::encode(k.key.as_bytes()) == hex_key)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.into(), source: e })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path: path.into(), message },
            other => other,
        })
    }

    /// Parses and validates TOML text; relative paths are taken relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        file.validate(base)
    }
}

impl ConfigFile {
    /// Checks every rule and resolves paths.
    pub fn validate(&self, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: PathBuf::new(), message };
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(format!(
                "listen = {:?} is not an address: write it as IP:PORT, e.g. \"127.0.0.1:8443\"",
                self.listen
            ))
        })?;
        if self.retention_days == 0 {
            return Err(invalid(
                "retention_days must be at least 1: a vault that keeps nothing protects nothing".into(),
            ));
        }
        let q = &self.quorum;
        let mut keyholders = Vec::new();
        for k in &q.keyholders {
            let key = store::quorum::parse_key(&k.public_key).ok_or_else(|| {
                invalid(format!(
                    "keyholder {:?} has public_key {:?}, which is not a 64-hex-digit ed25519 key (run `holdfast keygen`)",
                    k.name, k.public_key
                ))
            })?;
            if keyholders.iter().any(|h: &Keyholder| h.key == key || h.name == k.name) {
                return Err(invalid(format!(
                    "keyholder {:?} is listed twice (same name or same key)",
                    k.name
                )));
            }
            keyholders.push(Keyholder { name: k.name.clone(), key });
        }
        if q.threshold == 0 {
            return Err(invalid("quorum.threshold must be at least 1".into()));
        }
        if q.wait_hours < MIN_WAIT_HOURS && !q.testing_allow_short_wait {
            return Err(invalid(format!(
                "quorum.wait_hours = {} is below the floor of {MIN_WAIT_HOURS}: keyholders need time to see the \
                 alert and veto a deletion; set wait_hours = {MIN_WAIT_HOURS} or more",
                q.wait_hours
            )));
        }
        if !keyholders.is_empty() && q.threshold > keyholders.len() {
            return Err(invalid(format!(
                "quorum.threshold = {} but only {} keyholder(s) are enrolled: no deletion could ever be approved",
                q.threshold,
                keyholders.len()
            )));
        }
        if let Some(cmd) = &self.alert_command
            && (cmd.is_empty() || cmd[0].is_empty())
        {
            return Err(invalid(
                "alert_command must name a program: [\"/path/to/program\", \"arg\", …]".into(),
            ));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(invalid(format!("max_body_bytes = {max_body_bytes} is too small (at least 1024)")));
        }
        let mut clusters: Vec<capture::Cluster> = Vec::new();
        for c in &self.clusters {
            let mut c = c.clone();
            // Paths in a cluster table are relative to the config file, like every other path.
            c.password_file = c.password_file.map(|p| base.join(p));
            c.sslrootcert = c.sslrootcert.map(|p| base.join(p));
            c.catalog_password_file = c.catalog_password_file.map(|p| base.join(p));
            let cluster = c.validate().map_err(|e| invalid(e.to_string()))?;
            if clusters.iter().any(|k| k.name == cluster.name || k.slot == cluster.slot) {
                return Err(invalid(format!(
                    "cluster {:?} is listed twice (same name or slot)",
                    cluster.name
                )));
            }
            clusters.push(cluster);
        }
        let mut drills: Vec<DrillConfig> = Vec::new();
        for d in &self.drills {
            if !clusters.iter().any(|c| c.name == d.cluster) {
                return Err(invalid(format!(
                    "[[drill]] names cluster {:?}, which has no [[cluster]] table",
                    d.cluster
                )));
            }
            if drills.iter().any(|k| k.cluster == d.cluster) {
                return Err(invalid(format!("[[drill]] for cluster {:?} is listed twice", d.cluster)));
            }
            drills.push(
                d.validate(base)
                    .map_err(|e| invalid(format!("[[drill]] of cluster {:?}: {e}", d.cluster)))?,
            );
        }
        let mut standbys: Vec<StandbyConfig> = Vec::new();
        for sb in &self.standbys {
            if !clusters.iter().any(|c| c.name == sb.cluster) {
                return Err(invalid(format!(
                    "[[standby]] names cluster {:?}, which has no [[cluster]] table",
                    sb.cluster
                )));
            }
            let v = sb
                .validate(base)
                .map_err(|e| invalid(format!("[[standby]] of cluster {:?}: {e}", sb.cluster)))?;
            if let Some(k) = standbys
                .iter()
                .find(|k| k.cluster == v.cluster || k.data_dir == v.data_dir || k.port == v.port)
            {
                return Err(invalid(format!(
                    "[[standby]] of cluster {:?} shares its cluster, data_dir or port with the one of {:?}",
                    v.cluster, k.cluster
                )));
            }
            standbys.push(v);
        }
        let webhooks = crate::alerts::validate(&self.webhooks).map_err(|e| invalid(e.to_string()))?;
        let l = self.limits.clone().unwrap_or_default();
        let limits = Limits {
            token_quota_bytes_per_day: l
                .token_quota_bytes_per_day
                .unwrap_or(DEFAULT_TOKEN_QUOTA_BYTES_PER_DAY),
            token_writes_per_minute: l.token_writes_per_minute.unwrap_or(DEFAULT_TOKEN_WRITES_PER_MINUTE),
            unauthenticated_per_address: l
                .unauthenticated_per_address
                .unwrap_or(DEFAULT_UNAUTHENTICATED_PER_ADDRESS),
            tls_handshake: Duration::from_secs(
                l.tls_handshake_seconds.unwrap_or(DEFAULT_TLS_HANDSHAKE_SECONDS),
            ),
        };
        if limits.token_writes_per_minute == 0 || limits.unauthenticated_per_address == 0 {
            return Err(invalid(
                "limits.token_writes_per_minute and limits.unauthenticated_per_address must be at least 1"
                    .into(),
            ));
        }
        if limits.tls_handshake.is_zero() || limits.tls_handshake > Duration::from_secs(60) {
            return Err(invalid("limits.tls_handshake_seconds must be between 1 and 60".into()));
        }
        for c in &clusters {
            if !drills.iter().any(|d| d.cluster == c.name) {
                drills.push(DrillConfig::default_for(&c.name));
            }
        }
        let audit_trust_keys = self
            .audit_trust_keys
            .iter()
            .map(|k| {
                audit::parse_public_key(k).map_err(|e| {
                    invalid(format!("audit_trust_keys: {k:?} is not a gate's public audit key: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let console_session = match self.console_session.as_deref().map(parse_duration).transpose() {
            Ok(None) => Duration::from_secs(15 * 60),
            Ok(Some(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(12 * 3600) => d,
            _ => {
                return Err(invalid("console_session: write a duration from 1s to 12h, e.g. \"15m\"".into()));
            }
        };
        let store = self.store.to_config(base).map_err(invalid)?;
        // Synchronous mode's journal lives beside a local store's objects (`<store>/journal/`,
        // outside every object kind's folder, so never listed): an append there is one
        // fdatasync. An S3-only store has no local disk to put one on: its pieces are objects.
        if let StoreConfig::Local(dir) | StoreConfig::Mirror { local: dir, .. } = &store {
            for c in &mut clusters {
                c.journal = Some(dir.join("journal").join(format!("{}.journal", c.name)));
            }
        }
        Ok(Config {
            listen,
            key_file: base.join(&self.key_file),
            retention_days: self.retention_days,
            alert_command: self.alert_command.clone(),
            max_body_bytes,
            store,
            tls: TlsPaths { cert: base.join(&self.tls.cert), key: base.join(&self.tls.key) },
            quorum: QuorumConfig {
                threshold: q.threshold,
                wait: Duration::from_secs(q.wait_hours.saturating_mul(3600)),
                short_wait_for_testing: q.wait_hours < MIN_WAIT_HOURS,
                keyholders,
            },
            clusters,
            drills,
            standbys,
            webhooks,
            limits,
            audit_trust_keys,
            console_session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:8443"
key_file = "vault.key"
retention_days = 30
store = { path = "store" }
tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
[quorum]
threshold = 1
wait_hours = 72
keyholders = [{ name = "alice", public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" }]
"#;

    #[test]
    fn good_config_parses_and_resolves_paths() {
        let c = Config::from_toml(GOOD, Path::new("/etc/holdfast")).unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.key_file, Path::new("/etc/holdfast/vault.key"));
        assert_eq!(c.quorum.wait, Duration::from_secs(72 * 3600));
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.console_session, Duration::from_secs(15 * 60));
        let short = format!("console_session = \"10s\"\n{GOOD}");
        assert_eq!(
            Config::from_toml(&short, Path::new("/")).unwrap().console_session,
            Duration::from_secs(10)
        );
        for bad in ["0s", "13h", "soon"] {
            let err = Config::from_toml(&format!("console_session = \"{bad}\"\n{GOOD}"), Path::new("/"))
                .unwrap_err();
            assert!(err.to_string().contains("console_session"), "{bad}: {err}");
        }
    }

    #[test]
    fn s3_store_table_parses_and_bad_ones_are_refused() {
        let s3 = GOOD.replace(
            r#"store = { path = "store" }"#,
            r#"store = { kind = "s3", endpoint = "https://rgw.example:7480", bucket = "vault", credentials_file = "s3.creds", ca_file = "ca.pem" }"#,
        );
        let c = Config::from_toml(&s3, Path::new("/etc/holdfast")).unwrap();
        let StoreConfig::S3(s) = &c.store else { panic!("not s3: {:?}", c.store) };
        assert_eq!(
            (s.bucket.as_str(), s.region.as_str(), s.path_style, s.object_lock),
            ("vault", "us-east-1", true, true)
        );
        assert_eq!(s.credentials_file.as_deref(), Some(Path::new("/etc/holdfast/s3.creds")));
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/holdfast/ca.pem")));
        for (bad, why) in [
            (r#"store = { kind = "s3", bucket = "vault" }"#, "endpoint"),
            (r#"store = { kind = "s3", endpoint = "http://x" }"#, "bucket"),
            (r#"store = { kind = "s3", endpoint = "http://x", bucket = "b", path = "store" }"#, "no path"),
            (r#"store = { path = "store", bucket = "b" }"#, "kind = \"s3\""),
            (r#"store = { kind = "ftp", path = "store" }"#, "unknown"),
            (
                r#"store = { kind = "s3", endpoint = "http://x", bucket = "b", objectlock = false }"#,
                "objectlock",
            ),
        ] {
            let err = Config::from_toml(&GOOD.replace(r#"store = { path = "store" }"#, bad), Path::new("/"))
                .unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn misspelt_and_unsafe_configs_are_refused() {
        let misspelt = GOOD.replace("retention_days", "retention_dayz");
        assert!(matches!(Config::from_toml(&misspelt, Path::new(".")), Err(ConfigError::Parse { .. })));
        let zero = GOOD.replace("retention_days = 30", "retention_days = 0");
        assert!(Config::from_toml(&zero, Path::new(".")).is_err());
        let too_many = GOOD.replace("threshold = 1", "threshold = 2");
        let err = Config::from_toml(&too_many, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("no deletion could ever be approved"), "{err}");
        let bad_key = GOOD.replace("d75a98", "zz5a98");
        assert!(Config::from_toml(&bad_key, Path::new(".")).is_err());
        let extra = GOOD.replace("[quorum]", "[quorum]\nrequire_approval = false");
        assert!(Config::from_toml(&extra, Path::new(".")).is_err());
        let short = GOOD.replace("wait_hours = 72", "wait_hours = 0");
        let err = Config::from_toml(&short, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("below the floor"), "{err}");
        let testing = short.replace("wait_hours = 0", "wait_hours = 0\ntesting_allow_short_wait = true");
        assert!(Config::from_toml(&testing, Path::new(".")).unwrap().quorum.short_wait_for_testing);
        let orphan = format!("{GOOD}\n[[drill]]\ncluster = \"nope\"\n");
        let err = Config::from_toml(&orphan, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("has no [[cluster]] table"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in ["", "10", "h", "5x", "0s", "-1h", "1.5h"] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e, serve::DurationError(bad.to_string()));
            assert!(e.to_string().contains("is not a duration"), "{bad}: {e}");
        }
    }
}
