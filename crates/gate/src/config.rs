//! `gate.toml`: where the gate listens, the database behind it, the people who may use it, the
//! roles they can be granted for a while, the guard policy, the audit destination and webhooks.
//! Every table refuses unknown fields; every error names the field and what to write.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scram::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateFile {
    /// Where clients connect (PostgreSQL protocol), e.g. `127.0.0.1:6432`.
    pub listen: String,
    /// The HTTPS control API (approvals, grants, status, `/metrics`), e.g. `127.0.0.1:6433`.
    pub control_listen: String,
    /// The gate's own files: TLS pair (generated if absent), audit spool and signing key.
    pub state_dir: PathBuf,
    /// Refuse clients that do not negotiate TLS (default true; loopback-only test setups may
    /// turn it off).
    #[serde(default)]
    pub require_tls: Option<bool>,
    /// TLS certificate and key (PEM); default `<state_dir>/tls/{cert,key}.pem`, self-signed.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// The guard's policy file (see `crates/guard/policy.example.toml`); default policy if absent.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// How long a held statement waits for a decision (default `10m`).
    #[serde(default)]
    pub approval_timeout: Option<String>,
    /// The largest client message accepted (default 64 MiB).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// How old a session's knowledge of the database's catalog (built-in names overloaded,
    /// types with CHECKs, relations whose reading runs code) may grow before the session reads
    /// it again, at its next statement outside a transaction block (default `5s`, at least
    /// `1s`). What is made through the gate is seen at once (see the gate's catalog epoch);
    /// this bounds how long objects made straight in the database go unseen.
    #[serde(default)]
    pub catalog_max_age: Option<String>,
    /// Single-threaded runtimes the client sessions are spread over, each session pinned to
    /// one (default: one per core this process may run on; 0: sessions run on the main
    /// multi-threaded runtime with the control API).
    #[serde(default)]
    pub session_threads: Option<usize>,
    /// How long a sign-in to the console (`https://<control_listen>/console/`) lasts, from
    /// sign-in, not from last use (default `15m`, at most `12h`).
    #[serde(default)]
    pub console_session: Option<String>,
    /// What an approval request shows of a held statement's bound parameters (extended
    /// protocol): always their count, and their values "redacted" (the default), "hashed"
    /// (SHA-256, so an approver can match a value they know without seeing it) or "shown".
    #[serde(default)]
    pub approval_parameters: Option<String>,
    /// The database behind the gate.
    pub upstream: UpstreamFile,
    /// The people who may connect, each with their own identity.
    #[serde(rename = "person")]
    pub people: Vec<PersonFile>,
    /// Roles a person can be granted for a limited time, with another person's approval.
    #[serde(default, rename = "grant_role")]
    pub grant_roles: Vec<GrantRoleFile>,
    /// Where the audit log goes.
    #[serde(default)]
    pub audit: Option<AuditFile>,
    /// Alert receivers (same format as vault.toml).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<serve::alerts::WebhookFile>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Host name or IP, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    /// The login the gate uses for people without their own `db_user`.
    pub user: String,
    /// A file holding that login's password (only the gate can read it).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `disable`, `prefer` (default) or `require`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// Passwords of other logins the gate may use (`db_user` of a person or a grant role).
    #[serde(default, rename = "login")]
    pub logins: Vec<LoginFile>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFile {
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonFile {
    /// The name the person logs in with (`psql "user=alice …"`).
    pub name: String,
    /// SCRAM-SHA-256 verifier of their gate password (`holdfast gate hash-password`).
    pub scram: String,
    /// May approve other people's statements and grants (requires `totp_secret`).
    #[serde(default)]
    pub approver: bool,
    /// Their own database role, so the database's grants and logs witness them too.
    #[serde(default)]
    pub db_user: Option<String>,
    /// Base32 TOTP secret (`holdfast gate totp-secret`): required for approvers and grants.
    #[serde(default)]
    pub totp_secret: Option<String>,
    /// Addresses they may connect from (CIDR, e.g. `10.1.0.0/16`); empty = any. Anything else
    /// needs another person's approval before the session starts.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Hours they may connect in, UTC, e.g. `08:00-20:00`; outside them, approval is needed.
    #[serde(default)]
    pub hours: Option<String>,
    /// Grant roles they may request.
    #[serde(default)]
    pub may_request: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRoleFile {
    /// e.g. `dba`; connect as `<person>@<role>` while the grant lasts.
    pub name: String,
    /// The database role sessions under this grant log in as.
    pub db_user: String,
    /// The longest grant that may be requested (default `4h`).
    #[serde(default)]
    pub max_for: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// The vault's URL, e.g. `https://vault.internal:8443`.
    pub vault: String,
    /// The vault's CA certificate (PEM).
    pub ca: PathBuf,
    /// A file holding an `append`-scoped vault token.
    pub token_file: PathBuf,
    /// The most audit data kept locally while the vault is unreachable (default 256 MiB).
    #[serde(default)]
    pub max_pending_bytes: Option<u64>,
    /// When that bound is reached (or the spool fails): `refuse_all` (default: nothing runs
    /// without its record) or `refuse_writes` (reads go on, unaudited).
    #[serde(default)]
    pub on_full: Option<String>,
}

/// Why a network (`10.1.0.0/16`, an address) or hours (`08:00-20:00`) in the config were
/// refused; the text is kept to name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{0:?} is not an address or CIDR network")]
    NotANetwork(String),
    #[error("{0:?}: bad prefix (write e.g. 10.1.0.0/16)")]
    BadPrefix(String),
    #[error("{text:?}: prefix over {max}")]
    PrefixTooLong { text: String, max: u8 },
    #[error("hours {0:?}: write e.g. \"08:00-20:00\" (UTC)")]
    Hours(String),
}

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, RangeError> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| RangeError::NotANetwork(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            if p.is_empty() { max } else { p.parse().map_err(|_| RangeError::BadPrefix(s.to_string()))? };
        if prefix > max {
            return Err(RangeError::PrefixTooLong { text: s.to_string(), max });
        }
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `HH:MM-HH:MM` in UTC (may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub from_min: u32,
    pub to_min: u32,
}

impl Hours {
    pub fn parse(s: &str) -> Result<Hours, RangeError> {
        let bad = || RangeError::Hours(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let m = |t: &str| -> Result<u32, RangeError> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 24 || m > 59 || (h == 24 && m != 0) {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        Ok(Hours { from_min: m(a)?, to_min: m(b)? })
    }

    /// Whether `unix_secs` (UTC) is inside.
    pub fn contains(&self, unix_secs: u64) -> bool {
        let min = ((unix_secs % 86_400) / 60) as u32;
        if self.from_min <= self.to_min {
            (self.from_min..self.to_min).contains(&min)
        } else {
            min >= self.from_min || min < self.to_min
        }
    }
}

/// A person, checked.
#[derive(Debug, Clone)]
pub struct Person {
    pub name: String,
    pub verifier: Verifier,
    pub approver: bool,
    pub db_user: Option<String>,
    pub totp_secret: Option<Vec<u8>>,
    pub networks: Vec<Network>,
    pub hours: Option<Hours>,
    pub may_request: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GrantRole {
    pub name: String,
    pub db_user: String,
    pub max_for: Duration,
}

/// What an approval request shows of bound parameter values (their count always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamDisplay {
    Redacted,
    Hashed,
    Shown,
}

/// What to do when the audit spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAuditFull {
    RefuseWrites,
    RefuseAll,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub vault: String,
    pub ca_pem: Vec<u8>,
    pub token: String,
    pub max_pending_bytes: u64,
    pub on_full: OnAuditFull,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: pgproto::conn::Host,
    pub user: String,
    pub password: Option<String>,
    pub ssl: pgproto::conn::SslMode,
    /// Passwords by login name.
    pub logins: Vec<(String, Option<String>)>,
}

impl Upstream {
    /// Connection settings for one login.
    pub fn config_for(&self, user: &str) -> pgproto::conn::Config {
        let password = if user == self.user {
            self.password.clone()
        } else {
            self.logins.iter().find(|(u, _)| u == user).and_then(|(_, p)| p.clone())
        };
        let mut c = pgproto::conn::Config::new(self.host.clone(), user);
        if let Some(p) = password {
            c = c.password(&p, "the gate's [upstream] password files");
        }
        c.ssl = self.ssl.clone();
        c.application_name = "holdfast-gate".into();
        c.connect_timeout = Duration::from_secs(10);
        c
    }
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub control_listen: String,
    pub state_dir: PathBuf,
    pub require_tls: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub policy_text: Option<String>,
    pub approval_timeout: Duration,
    pub max_message_bytes: usize,
    pub catalog_max_age: Duration,
    /// 0: sessions on the main runtime.
    pub session_threads: usize,
    pub console_session: Duration,
    pub approval_parameters: ParamDisplay,
    pub upstream: Upstream,
    pub people: Vec<Person>,
    pub grant_roles: Vec<GrantRole>,
    pub audit: Option<Audit>,
    pub webhooks: Vec<serve::alerts::Webhook>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.into(), source: e })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|message| ConfigError::Invalid { path: path.into(), message })
    }

    /// Parses and checks; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let f: GateFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let read_secret = |p: &Path, what: &str| -> Result<String, String> {
            let p = abs(p);
            std::fs::read_to_string(&p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("{what}: reading {}: {e}", p.display()))
        };
        let dur = |v: &Option<String>, default: u64, what: &str| -> Result<Duration, String> {
            match v {
                Some(s) => serve::parse_duration(s).map_err(|e| format!("{what}: {e}")),
                None => Ok(Duration::from_secs(default)),
            }
        };
        for (what, addr) in [("listen", &f.listen), ("control_listen", &f.control_listen)] {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("{what} = {addr:?}: write an address and port, e.g. \"127.0.0.1:6432\"")
            })?;
        }
        let state_dir = abs(&f.state_dir);
        let (tls_cert, tls_key) = match &f.tls {
            Some(t) => (abs(&t.cert), abs(&t.key)),
            None => (state_dir.join("tls/cert.pem"), state_dir.join("tls/key.pem")),
        };
        let policy_text = match &f.policy {
            Some(p) => Some(read_secret(p, "policy")?),
            None => None,
        };
        let u = &f.upstream;
        let host = if u.host.starts_with('/') {
            pgproto::conn::Host::Unix { dir: u.host.clone().into(), port: u.port }
        } else {
            pgproto::conn::Host::Tcp { host: u.host.clone(), port: u.port }
        };
        let ssl = match u.sslmode.as_deref().unwrap_or("prefer") {
            "disable" => pgproto::conn::SslMode::Disable,
            "prefer" => pgproto::conn::SslMode::Prefer,
            "require" => pgproto::conn::SslMode::Require,
            other => return Err(format!("[upstream] sslmode {other:?}: write disable, prefer or require")),
        };
        let password =
            u.password_file.as_deref().map(|p| read_secret(p, "[upstream] password_file")).transpose()?;
        let mut logins = Vec::new();
        for l in &u.logins {
            let p = l
                .password_file
                .as_deref()
                .map(|p| read_secret(p, "[[upstream.login]] password_file"))
                .transpose()?;
            logins.push((l.user.clone(), p));
        }
        let upstream = Upstream { host, user: u.user.clone(), password, ssl, logins };
        let known_login =
            |user: &str| user == upstream.user || upstream.logins.iter().any(|(u, _)| u == user);

        let mut grant_roles: Vec<GrantRole> = Vec::new();
        for g in &f.grant_roles {
            if !valid_name(&g.name) || grant_roles.iter().any(|x| x.name == g.name) {
                return Err(format!(
                    "[[grant_role]] name {:?}: empty, listed twice, or not [a-z0-9_-]",
                    g.name
                ));
            }
            if !known_login(&g.db_user) {
                return Err(format!(
                    "[[grant_role]] {:?}: db_user {:?} has no [[upstream.login]] (the gate needs its password)",
                    g.name, g.db_user
                ));
            }
            let max_for = dur(&g.max_for, 4 * 3600, &format!("[[grant_role]] {:?} max_for", g.name))?;
            grant_roles.push(GrantRole { name: g.name.clone(), db_user: g.db_user.clone(), max_for });
        }

        let mut people: Vec<Person> = Vec::new();
        for p in &f.people {
            let what = format!("[[person]] {:?}", p.name);
            if !valid_name(&p.name) || people.iter().any(|x| x.name == p.name) {
                return Err(format!("{what}: name empty, listed twice, or not [a-z0-9_.-]"));
            }
            let verifier: Verifier = p.scram.parse().map_err(|e| format!("{what}: scram: {e}"))?;
            let totp_secret = match &p.totp_secret {
                Some(s) => Some(
                    crate::totp::base32_decode(s)
                        .filter(|k| k.len() >= 10)
                        .ok_or_else(|| format!("{what}: totp_secret is not base32 of at least 10 bytes"))?,
                ),
                None => None,
            };
            if p.approver && totp_secret.is_none() {
                return Err(format!(
                    "{what}: approvers need a second factor: set totp_secret (make one with `holdfast gate totp-secret`)"
                ));
            }
            if !p.may_request.is_empty() && totp_secret.is_none() {
                return Err(format!("{what}: people who may request grants need totp_secret"));
            }
            for r in &p.may_request {
                if !grant_roles.iter().any(|g| &g.name == r) {
                    return Err(format!("{what}: may_request names {r:?}, which has no [[grant_role]]"));
                }
            }
            if let Some(u) = &p.db_user
                && !known_login(u)
            {
                return Err(format!(
                    "{what}: db_user {u:?} has no [[upstream.login]] (the gate needs its password)"
                ));
            }
            let networks = p
                .networks
                .iter()
                .map(|n| Network::parse(n).map_err(|e| format!("{what}: networks: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let hours =
                p.hours.as_deref().map(Hours::parse).transpose().map_err(|e| format!("{what}: {e}"))?;
            people.push(Person {
                name: p.name.clone(),
                verifier,
                approver: p.approver,
                db_user: p.db_user.clone(),
                totp_secret,
                networks,
                hours,
                may_request: p.may_request.clone(),
            });
        }
        if people.is_empty() {
            return Err("no [[person]]: the gate has nobody to let in".into());
        }
        let audit = match &f.audit {
            Some(a) => Some(Audit {
                vault: a.vault.clone(),
                ca_pem: std::fs::read(abs(&a.ca))
                    .map_err(|e| format!("[audit] ca: reading {}: {e}", a.ca.display()))?,
                token: read_secret(&a.token_file, "[audit] token_file")?,
                max_pending_bytes: a.max_pending_bytes.unwrap_or(256 << 20),
                on_full: match a.on_full.as_deref().unwrap_or("refuse_all") {
                    "refuse_writes" => OnAuditFull::RefuseWrites,
                    "refuse_all" => OnAuditFull::RefuseAll,
                    o => return Err(format!("[audit] on_full {o:?}: write refuse_writes or refuse_all")),
                },
            }),
            None => None,
        };
        let webhooks = serve::alerts::validate(&f.webhooks).map_err(|e| e.to_string())?;
        Ok(Config {
            listen: f.listen,
            control_listen: f.control_listen,
            state_dir,
            require_tls: f.require_tls.unwrap_or(true),
            tls_cert,
            tls_key,
            policy_text,
            approval_timeout: dur(&f.approval_timeout, 600, "approval_timeout")?,
            max_message_bytes: f.max_message_bytes.unwrap_or(64 << 20),
            // Whole seconds: parse_duration takes no zero and no unit below a second.
            catalog_max_age: dur(&f.catalog_max_age, 5, "catalog_max_age")?,
            session_threads: match f.session_threads {
                Some(n) if n > 1024 => return Err(format!("session_threads = {n}: at most 1024")),
                Some(n) => n,
                None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            },
            console_session: match dur(&f.console_session, 15 * 60, "console_session")? {
                d if d.is_zero() || d > Duration::from_secs(12 * 3600) => {
                    return Err("console_session: write a duration from 1s to 12h, e.g. \"15m\"".into());
                }
                d => d,
            },
            approval_parameters: match f.approval_parameters.as_deref() {
                None | Some("redacted") => ParamDisplay::Redacted,
                Some("hashed") => ParamDisplay::Hashed,
                Some("shown") => ParamDisplay::Shown,
                Some(other) => {
                    return Err(format!(
                        "approval_parameters = {other:?}: use \"redacted\", \"hashed\" or \"shown\""
                    ));
                }
            },
            upstream,
            people,
            grant_roles,
            audit,
            webhooks,
        })
    }

    pub fn person(&self, name: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.name == name)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_hours() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Network::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert_eq!(
            Network::parse("10.0.0.0/33"),
            Err(RangeError::PrefixTooLong { text: "10.0.0.0/33".into(), max: 32 })
        );
        assert_eq!(Network::parse("10.0.0.0/x"), Err(RangeError::BadPrefix("10.0.0.0/x".into())));
        assert_eq!(Network::parse("office"), Err(RangeError::NotANetwork("office".into())));
        let h = Hours::parse("08:00-20:00").unwrap();
        assert!(h.contains(9 * 3600));
        assert!(!h.contains(21 * 3600));
        let night = Hours::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 3600) && night.contains(3600) && !night.contains(12 * 3600));
        assert_eq!(Hours::parse("8-20"), Err(RangeError::Hours("8-20".into())));
        assert!(Hours::parse("08:00-24:30").is_err());
    }
}
