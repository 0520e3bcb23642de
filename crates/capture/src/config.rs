//! Per-cluster settings, read from the vault's TOML config (`[[cluster]]` tables).

use std::path::PathBuf;
use std::time::Duration;

use pgproto::conn::{Config as PgConfig, Host, SslMode};

use crate::CaptureError;

/// One protected cluster, as written in the config file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// A transaction deleting more rows than this raises a `mass_delete` incident (default
    /// 10000).
    #[serde(default)]
    pub mass_delete_rows: Option<u64>,
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
    /// See [`ClusterConfig::mass_delete_rows`].
    pub mass_delete_rows: u64,
    /// How long the server may stay unreachable before a `connection_lost` incident
    /// (default 10 s).
    pub connection_grace: Duration,
    /// How long a finished base backup may wait for its WAL to be durable in the vault before
    /// it is reported as not complete (default 120 s).
    pub wal_wait: Duration,
}

/// Default of [`Cluster::connection_grace`].
pub const DEFAULT_CONNECTION_GRACE: Duration = Duration::from_secs(10);
/// Default of [`Cluster::mass_delete_rows`].
pub const DEFAULT_MASS_DELETE_ROWS: u64 = 10_000;
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
        let password = match (&self.password_file, &self.password_env) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| bad(format!("cannot read password_file {}: {e}", f.display())))?;
                Some((
                    text.lines().next().unwrap_or("").to_string(),
                    format!("password_file {}", f.display()),
                ))
            }
            (None, Some(var)) => {
                let v =
                    std::env::var(var).map_err(|_| bad(format!("environment variable {var} is not set")))?;
                Some((v, format!("environment variable {var}")))
            }
            (None, None) => None,
        };
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
            mass_delete_rows: self.mass_delete_rows.unwrap_or(DEFAULT_MASS_DELETE_ROWS),
            connection_grace: DEFAULT_CONNECTION_GRACE,
            wal_wait: DEFAULT_WAL_WAIT,
        })
    }
}
