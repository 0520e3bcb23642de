//! The warm standby: a PostgreSQL instance the vault keeps replaying its own stored WAL, held
//! back by `apply_delay`, and stops short of an incident's restore target — so that the
//! database as it was just before the destruction is seconds away, whatever its size.
//!
//! It is the long-lived cousin of a drill (`vault::drill`): built from the newest base backup
//! through the `restore` crate over this vault's own API on loopback, with a read token that
//! exists only in memory. Its `restore_command` is `holdfast restore-wal` in standby mode (the
//! vault's WAL only; "not yet" for what the vault lacks, never fatal), so:
//!
//! - it is never connected to production and holds no production credential;
//! - it can never be ahead of what the vault holds;
//! - commits are applied only `apply_delay` after they were made (`recovery_min_apply_delay`),
//!   so a destroying transaction is seen by the detector before the standby would apply it.
//!
//! On a new incident with a restore target, the vault pauses replay at once
//! (`pg_wal_replay_pause()`, honoured during the delay wait) and stops it short of the
//! destroying transaction **without restarting PostgreSQL**: the WAL feed is held at the
//! transaction's first record (the segment holding it is served zeroed from there, which
//! PostgreSQL reads as WAL not written yet), the delay is lifted with a reload, and replay
//! applies every record before the stop and waits there, read-only. `promote` raises the feed
//! to the transaction's commit record and calls `pg_promote()` once replay is there: the
//! transaction is never applied, everything before its commit is, and there is no restart nor
//! end-of-recovery checkpoint. Only when the standby already holds WAL past the stop (an
//! incident learnt later than `apply_delay`, a transaction that ran longer) is the stop a
//! recovery target (`recovery_target_xid`/`_lsn`, exclusive, action `pause`) read by a
//! restart. `resume` makes it follow again (a fresh standby from the newest backup when it was
//! promoted; the old data directory is kept, renamed).
//!
//! A standby that stops (killed) or falls behind its window is an incident (`standby_stopped`,
//! `standby_behind`); a stopped one is started again.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgfmt::Lsn;
use store::Timestamp;
use vault_api::standby::{StandbyState, StandbyStatus};
use vault_api::status::{Incident, IncidentTarget};

use crate::config::StandbyConfig;
use crate::service::Shared;
use crate::state::TokenEntry;

/// How often each standby is looked at.
const TICK: Duration = Duration::from_millis(500);

/// Settings the vault owns, included last from `postgresql.auto.conf` and rewritten whole.
const SETTINGS_FILE: &str = "holdfast_standby.conf";
/// Decrypted WAL staged ahead of the feed, for `restore_command` to copy instead of asking the
/// vault (inside the data directory: the server's user reads it; plaintext WAL there is no
/// more than the data directory itself holds).
pub const STAGE_DIR: &str = "holdfast_wal_stage";
/// At most this much WAL is staged ahead of the feed (64 segments of 16 MiB).
const STAGE_MAX_BYTES: u64 = 1 << 30;
/// The feed's segment, held by the vault only in part, is staged again at most this often.
const PARTIAL_EVERY: Duration = Duration::from_secs(2);
/// How often the stager looks at the feed and the vault's WAL end.
const STAGE_TICK: Duration = Duration::from_millis(250);
/// What the vault remembers about the standby (next to its data: survives vault restarts).
const STATE_FILE: &str = "holdfast_standby.json";
/// The server's log.
const LOG_FILE: &str = "holdfast_standby.log";
/// The LSN up to which `restore_command` hands WAL over: what the vault held `apply_delay`
/// ago (only ever raised).
const FEED_FILE: &str = "holdfast_standby.feed";

/// What the vault puts before production's own `pg_hba.conf` lines in the standby: it checks
/// the standby and takes base backups from it over the socket in its data directory (mode
/// 0700, the server's user). Left out of those backups again ([`clean_hba`]).
const HBA_PREFIX: &str = "# holdfast warm standby (2): the vault checks it and takes backups from it over the socket in its data directory\n\
                          local all all trust\nlocal replication all trust\n";
/// The same, as standbys built before backups were taken from them have it (no replication).
const HBA_PREFIX_1: &str = "# holdfast warm standby: the vault checks it over the socket in its data directory\nlocal all all trust\n";

/// How often the WAL volume since the newest backup is looked at for a backup from the standby.
const BACKUP_TICK: Duration = Duration::from_secs(2);

/// Every configured standby.
pub struct Standbys {
    all: BTreeMap<String, Arc<Standby>>,
    /// `https://<loopback>:<port>` of this vault, once listening.
    url: OnceLock<String>,
}

impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standbys").field("clusters", &self.all.keys().collect::<Vec<_>>()).finish()
    }
}

struct Standby {
    cfg: StandbyConfig,
    /// Held by the loop for each look and by promote/resume: one actor at a time.
    inner: tokio::sync::Mutex<Inner>,
    /// The last status, for status and metrics without waiting on `inner`.
    status: std::sync::Mutex<StandbyStatus>,
    /// When the stager last staged the feed's segment in part (a whole-segment decryption).
    partial_at: std::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Inner {
    /// The read token its `restore_command` uses (in memory only; a fresh one per vault run).
    token: Option<vault_api::Token>,
    /// (when the vault first held it, WAL end) — not yet replayed by the standby.
    unreplayed: VecDeque<(Instant, Lsn)>,
    /// (when, WAL end the vault held then), for the feed limit: kept for `apply_delay`.
    held: VecDeque<(Instant, Lsn)>,
    /// The newest WAL end the vault has held for `apply_delay`: the feed goes up to it, or to
    /// the detector's judged position if that is lower.
    aged: Option<Lsn>,
    /// When the vault last started it after finding it not running: until it has run
    /// [`STEADY`] since, the `standby_stopped` episode stays open (a crash loop is one incident).
    restarted: Option<Instant>,
}

/// How long a standby the vault started again must run before a later stop is a new incident.
const STEADY: Duration = Duration::from_secs(30);

/// PostgreSQL's own reason for its last stop: when its last run (after the last `starting
/// PostgreSQL`) ended with its startup process — the one replaying WAL — exiting, that process's
/// FATAL/PANIC lines with their HINT/CONTEXT/DETAIL, joined; `None` otherwise (stopped or killed
/// from outside; a client's failed login is not a reason).
fn last_failure(log: &str) -> Option<String> {
    let run = log.rsplit_once("starting PostgreSQL").map_or(log, |(_, r)| r);
    let (_, after) = run.rsplit_once("startup process (PID ")?;
    let pid = after.split(')').next()?;
    let tag = format!("[{pid}]");
    let out: Vec<&str> = run
        .lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            // Without the log line prefix (time, pid): `FATAL:  …`.
            ["FATAL:", "PANIC:", "HINT:", "CONTEXT:", "DETAIL:"]
                .iter()
                .filter_map(|k| l.find(k))
                .min()
                .map(|at| l[at..].trim())
        })
        .collect();
    (!out.is_empty()).then(|| {
        out[out.len().saturating_sub(6)..].join(" / ").split_whitespace().collect::<Vec<_>>().join(" ")
    })
}

/// Persisted in the data directory.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    /// Incidents of the cluster already considered (numbered from 1: the next is this + 1).
    incidents_seen: usize,
    /// Started at least once: from then on, finding it not running is an incident.
    started: bool,
    #[serde(default)]
    paused_before_incident: Option<usize>,
    #[serde(default)]
    target: Option<String>,
    /// The incident's own restore target: promotion replays up to just before it.
    #[serde(default)]
    exact: Option<IncidentTarget>,
    #[serde(default)]
    promoted: bool,
    #[serde(default)]
    overrun: bool,
    #[serde(default)]
    backup: Option<String>,
    /// Stopped by the feed alone, without a restart: the feed is held at this LSN (the
    /// destroying transaction's first record, or its commit's) and replay applies everything
    /// before it, then waits for WAL that does not come.
    #[serde(default)]
    stop_lsn: Option<Lsn>,
    /// Where promotion ends replay, when known (the destroying transaction's commit record,
    /// or an LSN target): promoting raises the feed to it and calls `pg_promote()`, no restart.
    #[serde(default)]
    promote_lsn: Option<Lsn>,
    /// How many incidents there were when `resume` was last asked for: among those, one whose
    /// transaction the standby has already applied (the one it was stopped before, or the same
    /// destruction raised again as a window) is passed, not an overrun. Those it has not applied
    /// still stop it — a decoy must not carry the standby through the destruction raised while
    /// it was paused.
    #[serde(default)]
    resumed_with: Option<usize>,
    /// The stop LSN of the backup this standby was built from, and how many incidents there
    /// were then. Those raised before it concern it only where their destroying record lies in
    /// WAL it replays: at or past that LSN, on the timeline history it follows ([`concerns`]).
    /// `None` for a standby built before this was kept (it counted incidents from its creation).
    #[serde(default)]
    built_from: Option<(Lsn, usize)>,
}

/// The timeline a standby follows (the newest the vault streams: it recovers with
/// `recovery_target_timeline = 'latest'`) and that timeline's history when the vault holds it.
type Followed = (u32, Option<pgfmt::TimelineHistory>);

/// Whether an incident raised before the standby was built concerns it: its destroying record
/// (`lsn`) lies in WAL the standby will replay — at or past `from` (the stop LSN of the backup it
/// was built from: what lies before is in the backup already, and the standby cannot stop
/// short of it), on the timeline history it follows (an incident on a timeline it branches off
/// before the incident's LSN — production restored from a promoted standby — is never
/// replayed). Where that cannot be told (no LSN, no timeline recorded, the followed timeline or
/// its history unknown), it concerns it: stopping a standby that would not have applied the
/// transaction costs a `standby resume`; not stopping one that would have costs the copy.
fn concerns(inc: &Incident, from: Lsn, followed: Option<&Followed>) -> bool {
    let Some(at) = inc.lsn else { return true };
    if at < from {
        return false;
    }
    let (Some(tli), Some((latest, history))) = (inc.timeline, followed) else { return true };
    if tli == *latest {
        return true;
    }
    let Some(history) = history else { return true };
    history.entries.iter().any(|e| e.parent.0 == tli && at < e.switchpoint)
}

/// What the vault's settings file tells the standby.
#[derive(Debug, Clone, Copy)]
enum Settings<'a> {
    /// Following, commits held back by `recovery_min_apply_delay`.
    Following,
    /// Held by the feed alone (no recovery target: the feed limit is the stop), no delay:
    /// taking effect with a reload, no restart.
    Held,
    /// Stopped at a recovery target (`recovery_target_*` line, exclusive, then the action —
    /// `pause` or `promote` —, no delay); PostgreSQL reads targets only when it starts.
    Target(&'a str, &'a str),
}

/// Whether replay, held by the feed at `stop` (a record's start), has applied every record
/// before it. `pg_last_wal_replay_lsn()` is the end of the last record applied (its next
/// record's start, or the page boundary when that record is the first on a new WAL page,
/// after the page header: 24 bytes, 40 at a segment's start).
fn reached(replay: Lsn, stop: Lsn) -> bool {
    const LONG_PAGE_HEADER: u64 = 40;
    let page = stop.0 - stop.0 % pgfmt::wal::DEFAULT_XLOG_BLCKSZ;
    replay >= stop || (stop.0 - page <= LONG_PAGE_HEADER && replay.0 >= page)
}

/// Why promote or resume was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cluster {0:?} has no [[standby]] table in the vault's configuration")]
    NoStandby(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
}

impl Standbys {
    pub fn new(cfgs: &[StandbyConfig]) -> Standbys {
        let all = cfgs
            .iter()
            .map(|c| {
                let status = StandbyStatus {
                    cluster: c.cluster.clone(),
                    state: StandbyState::Creating,
                    data_dir: c.data_dir.display().to_string(),
                    port: c.port,
                    apply_delay_seconds: c.apply_delay.as_secs(),
                    ready: false,
                    replay_lsn: None,
                    last_replayed_commit: None,
                    vault_lsn: None,
                    lag_bytes: None,
                    behind_seconds: None,
                    paused_before_incident: None,
                    target: None,
                    backup: None,
                    message: Some("starting".into()),
                };
                let sb = Standby {
                    cfg: c.clone(),
                    inner: tokio::sync::Mutex::new(Inner::default()),
                    status: std::sync::Mutex::new(status),
                    partial_at: std::sync::Mutex::new(None),
                };
                (c.cluster.clone(), Arc::new(sb))
            })
            .collect();
        Standbys { all, url: OnceLock::new() }
    }

    /// Where the standbys' restore reaches this vault's API (set once it listens).
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let ip = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
        let _ = self.url.set(format!("https://{}", std::net::SocketAddr::new(ip, addr.port())));
    }

    /// Every standby's last status.
    pub fn status(&self) -> Vec<StandbyStatus> {
        self.all.values().map(|s| s.status.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// Starts one task per standby, until `shutdown` changes. The standbys keep running when the
/// vault stops (a restarted vault takes them over): they are warm copies, not scratch.
pub fn start(s: &Arc<Shared>, shutdown: &tokio::sync::watch::Receiver<bool>) {
    for sb in s.standbys.all.values() {
        if sb.cfg.backup_wal_share > 0.0 {
            tokio::spawn(backups(s.clone(), sb.clone(), shutdown.clone()));
        }
        let (s2, sb2, mut shutdown2) = (s.clone(), sb.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = stage(&s2, &sb2).await {
                    tracing::warn!(cluster = %sb2.cfg.cluster, error = %e, "standby: staging WAL ahead of the feed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(STAGE_TICK) => {}
                    _ = shutdown2.changed() => return,
                }
            }
        });
        let (s, sb, mut shutdown) = (s.clone(), sb.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                {
                    let mut inner = sb.inner.lock().await;
                    if let Err(e) = tick(&s, &sb, &mut inner).await {
                        tracing::warn!(cluster = %sb.cfg.cluster, error = %e, "standby");
                        sb.set(|st| {
                            st.state = StandbyState::Failed;
                            st.ready = false;
                            st.message = Some(e);
                        });
                    }
                }
                // The next look after TICK, or at once when the cluster raises an incident.
                let rt = s.collector.get().and_then(|c| c.cluster(&sb.cfg.cluster).ok());
                let incident = async {
                    match &rt {
                        Some(rt) => rt.next_incident().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = incident => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

impl Standby {
    fn set(&self, f: impl FnOnce(&mut StandbyStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn data(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn server(&self) -> Result<restore::pg::Server, String> {
        Ok(restore::pg::Server {
            bindir: restore::pg::bindir().map_err(|e| e.to_string())?,
            data: self.cfg.data_dir.clone(),
            port: self.cfg.port,
            socket_dir: self.cfg.data_dir.clone(),
            run_as: run_as(),
            log: self.cfg.data_dir.join(LOG_FILE),
            user: Some(self.cfg.user.clone()),
        })
    }

    fn load(&self) -> Persisted {
        std::fs::read(self.data().join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, p: &Persisted) -> Result<(), String> {
        let path = self.data().join(STATE_FILE);
        let tmp = self.data().join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(p).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Rewrites the vault's settings file (see [`Settings`]).
    fn write_settings(&self, mode: Settings<'_>) -> Result<(), String> {
        let mut s = String::from(
            "# Written by the holdfast vault (vault::standby): rewritten whole, do not edit.\n\
             hot_standby = 'on'\n",
        );
        // How soon it asks again for the segment it is in. Following, every second: the WAL is
        // staged (the feed's own segment too, staged again once the feed passes the copy), so
        // an ask is a local copy, and the standby trails the feed by at most that — every
        // second more is WAL to replay at an incident. Held at a stop, once a minute: nothing
        // more comes until the vault raises the feed, and the reload that goes with that wakes
        // it at once.
        let retry = Duration::from_secs(1);
        match mode {
            Settings::Following => {
                s += &format!("wal_retrieve_retry_interval = '{}ms'\n", retry.as_millis());
                s += &format!("recovery_min_apply_delay = '{}ms'\n", self.cfg.apply_delay.as_millis())
            }
            Settings::Held => {
                s += "# Held before an incident by the WAL feed (holdfast_standby.feed), not by a delay.\n";
                s += "wal_retrieve_retry_interval = '60s'\n";
                s += "recovery_min_apply_delay = '0'\n";
            }
            Settings::Target(t, action) => {
                s += "wal_retrieve_retry_interval = '1s'\n";
                s += "recovery_min_apply_delay = '0'\n";
                s += t;
                s += &format!("recovery_target_inclusive = 'false'\nrecovery_target_action = '{action}'\n");
            }
        }
        let path = self.data().join(SETTINGS_FILE);
        std::fs::write(&path, s).map_err(|e| format!("writing {}: {e}", path.display()))?;
        chown_to_server(&path)
    }

    /// A fresh read token for `restore_command`, in memory only, written into the helper's
    /// config in the data directory (replacing the previous vault run's, which no longer works).
    async fn arm_token(&self, s: &Shared, inner: &mut Inner) -> Result<(), String> {
        if inner.token.is_some() {
            return Ok(());
        }
        let token = crate::new_token().map_err(|e| e.to_string())?;
        s.state.write().await.tokens.insert(
            token.id().to_string(),
            TokenEntry {
                id: token.id().to_string(),
                scope: vault_api::Scope::Read,
                hash: blake3::hash(token.secret()),
                label: format!("warm standby of {} (in memory)", self.cfg.cluster),
                created_at: s.clock.now(),
                created_by: "vault".into(),
                revoked_at: None,
            },
        );
        let url = s.standbys.url.get().ok_or("the vault is not listening yet")?;
        let ca_pem = std::fs::read_to_string(&s.config.tls.cert)
            .map_err(|e| format!("reading {}: {e}", s.config.tls.cert.display()))?;
        let helper = restore::wal::HelperConfig {
            url: url.clone(),
            ca_pem,
            token: token.expose(),
            cluster: self.cfg.cluster.clone(),
            expected: Vec::new(),
            spool: self.data().join(restore::recovery::SPOOL_DIR),
            standby: true,
            feed_until: Some(self.data().join(FEED_FILE)),
            stage: Some(self.data().join(STAGE_DIR)),
        };
        let path = self.data().join(restore::recovery::HELPER_CONFIG);
        write_private(&path, &serde_json::to_vec_pretty(&helper).unwrap_or_default())?;
        chown_to_server(&path)?;
        inner.token = Some(token);
        Ok(())
    }
}

impl Standby {
    fn feed(&self) -> Option<Lsn> {
        std::fs::read_to_string(self.data().join(FEED_FILE)).ok().and_then(|t| t.trim().parse().ok())
    }

    /// Raises the feed limit to `to` (never lowers it).
    fn raise_feed(&self, to: Lsn) -> Result<(), String> {
        if self.feed().is_some_and(|f| f >= to) {
            return Ok(());
        }
        let path = self.data().join(FEED_FILE);
        let tmp = self.data().join(format!("{FEED_FILE}.tmp"));
        std::fs::write(&tmp, format!("{to}\n"))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        chown_to_server(&path)
    }
}

/// Starts the server and waits until its postmaster runs (`pg_ctl -W` returns before it
/// writes its pid file; a look in between would take it for stopped).
fn start_server(server: &restore::pg::Server) -> Result<(), String> {
    server
        .start_listening(Some(std::net::IpAddr::from([127, 0, 0, 1])))
        .map_err(|e| format!("starting the standby: {e}"))?;
    let t0 = Instant::now();
    while !server.running() {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("the standby did not start within 30 s{}", server.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// PostgreSQL refuses to run as root: a vault running as root runs its standby as `postgres`.
fn run_as() -> Option<String> {
    restore::pg::running_as_root().then(|| "postgres".to_string())
}

fn chown_to_server(path: &Path) -> Result<(), String> {
    if let Some(user) = run_as() {
        let (uid, gid) = restore::pg::user_ids(&user).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("changing the owner of {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Writes `path` with mode 0600 (it holds a read token), replacing what was there.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// The recovery target lines for an incident's target.
fn target_lines(t: IncidentTarget) -> (String, String) {
    match t {
        IncidentTarget::BeforeXid { xid } => {
            (format!("recovery_target_xid = '{xid}'\n"), format!("xid {xid}"))
        }
        IncidentTarget::BeforeLsn { lsn } => {
            (format!("recovery_target_lsn = '{lsn}'\n"), format!("lsn {lsn}"))
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("a blocking task failed: {e}"))
}

/// What one look at a running standby shows.
#[derive(Debug, Default)]
struct Seen {
    in_recovery: bool,
    replay: Option<Lsn>,
    commit: Option<Timestamp>,
    paused: bool,
}

fn look(server: &restore::pg::Server) -> Result<Option<Seen>, String> {
    let sql = "SELECT pg_is_in_recovery()::text || '|' || coalesce(pg_last_wal_replay_lsn()::text, '') || '|' || \
               coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::bigint::text, '') || '|' || \
               CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END";
    let Some(v) = server.query(sql).map_err(|e| e.to_string())? else { return Ok(None) };
    let f: Vec<&str> = v.split('|').collect();
    if f.len() != 4 {
        return Err(format!("unexpected answer from the standby: {v:?}"));
    }
    Ok(Some(Seen {
        in_recovery: f[0] == "true",
        replay: f[1].parse().ok(),
        commit: f[2].parse().ok().map(Timestamp),
        paused: f[3] == "paused",
    }))
}

/// Builds the standby from the newest base backup (the restore crate, over the vault's own
/// API), in standby mode with the delay, and leaves it ready to start.
async fn create(s: &Arc<Shared>, sb: &Standby, inner: &mut Inner) -> Result<(), String> {
    let cluster = &sb.cfg.cluster;
    let rt = s
        .collector
        .get()
        .and_then(|c| c.cluster(cluster).ok())
        .ok_or_else(|| format!("cluster {cluster} is not being captured"))?;
    if rt.inventory().window.is_none() {
        sb.set(|st| {
            st.state = StandbyState::Creating;
            st.message = Some("waiting for a complete base backup with its WAL in the vault".into());
        });
        return Ok(());
    }
    sb.set(|st| {
        st.state = StandbyState::Creating;
        st.ready = false;
        st.message = Some("restoring the newest base backup".into());
    });
    inner.token = None;
    let token = crate::new_token().map_err(|e| e.to_string())?;
    s.state.write().await.tokens.insert(
        token.id().to_string(),
        TokenEntry {
            id: token.id().to_string(),
            scope: vault_api::Scope::Read,
            hash: blake3::hash(token.secret()),
            label: format!("warm standby of {cluster}: building (in memory)"),
            created_at: s.clock.now(),
            created_by: "vault".into(),
            revoked_at: None,
        },
    );
    let result = build(s, sb, &token).await;
    s.state.write().await.tokens.remove(token.id());
    let (backup, from) = result?;
    // Incidents raised before the standby existed are looked at too, but only those whose
    // destruction lies in WAL it will replay stop it ([`concerns`]): a fresh standby after a
    // promotion, built from a backup older than the incident, must not replay through it.
    let p = Persisted {
        incidents_seen: 0,
        built_from: Some((from, rt.incidents().len())),
        backup: Some(backup),
        ..Default::default()
    };
    sb.save(&p)?;
    tracing::info!(cluster, data = %sb.data().display(), "warm standby built");
    Ok(())
}

/// Returns the backup's id and its stop LSN.
async fn build(s: &Arc<Shared>, sb: &Standby, token: &vault_api::Token) -> Result<(String, Lsn), String> {
    let url = s.standbys.url.get().ok_or("the vault is not listening yet")?;
    let ca_pem = std::fs::read_to_string(&s.config.tls.cert)
        .map_err(|e| format!("reading {}: {e}", s.config.tls.cert.display()))?;
    let opts = restore::Options {
        cluster: sb.cfg.cluster.clone(),
        target: restore::Target::Latest,
        near: None,
        backup: None,
        exclusive: false,
        target_dir: sb.data().to_path_buf(),
        action: restore::recovery::Action::Pause,
        start: None,
        parallel: 4,
        verify: false,
        holdfast_exe: std::env::current_exe().map_err(|e| format!("locating the holdfast binary: {e}"))?,
        url: url.clone(),
        ca_pem,
        token: token.expose(),
        user: Some(sb.cfg.user.clone()),
        trust_local: false,
    };
    let report =
        restore::run(&opts, &|_, _, _| {}).await.map_err(|e| format!("building the standby: {e}"))?;
    let data = sb.data();
    // The vault checks its standby over the Unix socket in the data directory (mode 0700, the
    // server's user): trusted there; TCP on 127.0.0.1 keeps production's own rules and roles.
    let hba = data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap_or_default();
    std::fs::write(&hba, format!("{HBA_PREFIX}{original}"))
        .map_err(|e| format!("writing {}: {e}", hba.display()))?;
    // Standby mode (it never ends recovery by itself), with the vault's settings included last.
    std::fs::write(data.join("standby.signal"), b"").map_err(|e| format!("writing standby.signal: {e}"))?;
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text += &format!("include = '{SETTINGS_FILE}'\n");
    std::fs::write(&auto, text).map_err(|e| format!("writing {}: {e}", auto.display()))?;
    sb.write_settings(Settings::Following)?;
    // The restore's replay-only checkpoint distance is not for a standby that replays for
    // good: it keeps the WAL it restored until a restartpoint, and restarts from the last one.
    let replay = data.join(restore::recovery::REPLAY_CONFIG);
    std::fs::write(
        &replay,
        "# Emptied by the holdfast vault: a warm standby checkpoints as the source's settings say.\n",
    )
    .map_err(|e| format!("writing {}: {e}", replay.display()))?;
    // WAL up to the backup's end at once (to be consistent); later WAL once `apply_delay` old.
    let stop: Lsn = report.backup_stop_lsn.parse().map_err(|e| format!("the backup's stop LSN: {e}"))?;
    std::fs::write(data.join(FEED_FILE), format!("{stop}\n"))
        .map_err(|e| format!("writing the feed limit: {e}"))?;
    if let Some(user) = run_as() {
        let (uid, gid) = restore::pg::user_ids(&user).map_err(|e| e.to_string())?;
        restore::pg::chown_tree(data, uid, gid).map_err(|e| e.to_string())?;
    }
    Ok((report.backup, stop))
}

/// What a standby of `rt`'s cluster follows ([`Followed`]), if the vault knows its timeline.
fn followed_by(rt: &capture::ClusterRuntime) -> Option<Followed> {
    let tli = rt.status().timeline?;
    let history = rt
        .archive
        .history(pgfmt::TimelineId(tli))
        .and_then(|(_, text)| pgfmt::TimelineHistory::parse(&text).ok());
    Some((tli, history))
}

/// One look: build, start, watch incidents, measure, raise.
async fn tick(s: &Arc<Shared>, sb: &Standby, inner: &mut Inner) -> Result<(), String> {
    let cluster = sb.cfg.cluster.clone();
    let Some(rt) = s.collector.get().and_then(|c| c.cluster(&cluster).ok()) else {
        return Err(format!("cluster {cluster} is not being captured"));
    };
    let data = sb.data();
    if !data.join("PG_VERSION").exists() || data.join(restore::INCOMPLETE_MARKER).exists() {
        return create(s, sb, inner).await;
    }
    let mut p = sb.load();
    let server = sb.server()?;
    if p.promoted {
        let srv = server.clone();
        let seen = blocking(move || if srv.running() { look(&srv).ok().flatten() } else { None }).await?;
        sb.set(|st| {
            st.state = StandbyState::Promoted;
            st.ready = seen.is_some();
            st.paused_before_incident = p.paused_before_incident;
            st.target = p.target.clone();
            st.message = Some(format!(
                "promoted: it no longer follows the vault; `holdfast standby resume --cluster {cluster}` builds a fresh standby"
            ));
        });
        return Ok(());
    }
    sb.arm_token(s, inner).await?;
    let srv = server.clone();
    if !blocking(move || srv.running()).await? {
        if p.started {
            let log = server.log.clone();
            let why =
                blocking(move || last_failure(&std::fs::read_to_string(log).unwrap_or_default())).await?;
            let message = match why {
                // Its own replay failed: production's WAL asked this host for something it cannot
                // do (a tablespace directory that does not exist here, one it may not use).
                Some(why) => format!(
                    "the warm standby of {cluster} (data {}, port {}) stopped itself: its PostgreSQL logged: {why}. \
                     Replaying production's WAL failed on the vault's host; the vault starts it again and raises this \
                     once until it has run {} s. Fix what the log names on this host (for a tablespace: create its \
                     directory, owned by the standby's user); the vault's own capture is not affected",
                    data.display(),
                    sb.cfg.port,
                    STEADY.as_secs()
                ),
                None => format!(
                    "the warm standby of {cluster} (data {}, port {}) was not running: stopped or killed outside the vault. \
                     The vault starts it again; find out who stopped it",
                    data.display(),
                    sb.cfg.port
                ),
            };
            rt.raise_incident("standby_stopped", message).await;
        }
        sb.set(|st| {
            st.ready = false;
            st.message = Some("starting PostgreSQL".into());
        });
        let srv = server.clone();
        blocking(move || start_server(&srv)).await??;
        if p.started {
            inner.restarted = Some(Instant::now());
        }
        p.started = true;
        sb.save(&p)?;
        inner.unreplayed.clear();
        return Ok(());
    }
    // Running again: a new episode only once it has stayed up (a crash loop — a replay that fails
    // at the same record on each start — is one incident, not one a second).
    if inner.restarted.is_none_or(|t| t.elapsed() >= STEADY) {
        inner.restarted = None;
        rt.end_incident_episode("standby_stopped");
    }
    let srv = server.clone();
    let mut seen = blocking(move || look(&srv)).await??;
    // New incidents: the first with a restore target stops the standby short of it.
    let incidents = rt.incidents();
    if !p.overrun && p.paused_before_incident.is_none() {
        let mut followed: Option<Option<Followed>> = None;
        for (i, inc) in incidents.iter().enumerate().skip(p.incidents_seen) {
            if let Some(t) = inc.restore_target {
                if let Some((from, n)) = p.built_from
                    && i < n
                    && !concerns(inc, from, followed.get_or_insert_with(|| followed_by(rt)).as_ref())
                {
                    // Raised before the standby was built, in WAL it never replays.
                    p.incidents_seen = i + 1;
                    continue;
                }
                let passable = p.resumed_with.is_some_and(|k| i < k);
                if !stop_before(sb, &server, &mut p, i + 1, inc, t, rt.status().durable_lsn, passable).await?
                {
                    // Known when it was resumed and already applied: passed.
                    p.incidents_seen = i + 1;
                    sb.save(&p)?;
                    continue;
                }
                p.incidents_seen = p.incidents_seen.max(incidents.len());
                sb.save(&p)?;
                if p.stop_lsn.is_some() {
                    // Stopped without a restart: shown as it is now, without waiting for the
                    // next look.
                    let srv = server.clone();
                    seen = blocking(move || look(&srv)).await??;
                    break;
                }
                // What it showed before the restart is no longer true: the next look tells.
                sb.set(|st| {
                    st.state = if p.overrun { StandbyState::Overrun } else { StandbyState::Stopping };
                    st.ready = false;
                    st.paused_before_incident = p.paused_before_incident;
                    st.target = p.target.clone();
                    st.message = Some(format!("stopping just before incident {}", i + 1));
                });
                return Ok(());
            }
        }
    }
    p.incidents_seen = p.incidents_seen.max(incidents.len());
    sb.save(&p)?;
    // Lag: how long WAL the vault holds has waited unreplayed.
    let vault_lsn = rt.status().durable_lsn;
    let now = Instant::now();
    // The feed: what the vault held `apply_delay` ago. (After a vault restart nothing is
    // known about the WAL's age: the limit stays until a sample is old enough.) Stopped before
    // an incident, the feed is the stop: it stays where it is.
    let following = p.paused_before_incident.is_none() && !p.overrun;
    if let Some(stop) = p.stop_lsn.filter(|_| !following) {
        // Held by the feed: at the stop (a vault stopped between saving the stop and raising
        // the feed to it finishes the job here; never lowered, so a promotion's is kept).
        sb.raise_feed(stop)?;
    }
    if let Some(v) = vault_lsn {
        if inner.held.back().is_none_or(|(_, l)| *l < v) {
            inner.held.push_back((now, v));
        }
        while following
            && inner.held.front().is_some_and(|(t, _)| now.duration_since(*t) >= sb.cfg.apply_delay)
        {
            inner.aged = inner.held.pop_front().map(|(_, l)| l);
        }
    }
    // Never past what the detector has judged: WAL it has not decoded, or a drop whose verdict
    // waits for the catalog, may hold the destruction the standby exists to stop short of. A
    // detector that falls behind holds the standby back with it (and both are incidents:
    // `detector_behind`, `standby_behind`) rather than letting it apply unjudged WAL.
    if following && let Some(aged) = inner.aged {
        match rt.status().judged_lsn {
            Some(judged) => sb.raise_feed(aged.min(judged))?,
            None => {
                tracing::debug!(cluster = %cluster, "standby feed held: the detector has not reported a position yet")
            }
        }
    }
    if let Some(v) = vault_lsn
        && inner.unreplayed.back().is_none_or(|(_, l)| *l < v)
    {
        inner.unreplayed.push_back((now, v));
    }
    let replay = seen.as_ref().and_then(|x| x.replay);
    if let Some(r) = replay {
        while inner.unreplayed.front().is_some_and(|(_, l)| *l <= r) {
            inner.unreplayed.pop_front();
        }
    }
    let behind = if following { inner.unreplayed.front().map(|(t, _)| now - *t) } else { None };
    let window = sb.cfg.apply_delay + sb.cfg.max_lag;
    if following && seen.is_some() && behind.is_some_and(|b| b > window) {
        let message = format!(
            "the warm standby of {cluster} has not replayed WAL the vault has held for {} s (apply_delay {} s + max_lag {} s): \
             it is no longer seconds from the database. Its log: {}",
            behind.unwrap_or_default().as_secs(),
            sb.cfg.apply_delay.as_secs(),
            sb.cfg.max_lag.as_secs(),
            server.log.display()
        );
        rt.raise_incident("standby_behind", message).await;
    } else if behind.is_none_or(|b| b <= window) {
        rt.end_incident_episode("standby_behind");
    }
    sb.set(|st| {
        st.state = if seen.as_ref().is_some_and(|x| !x.in_recovery) {
            StandbyState::Failed
        } else if p.overrun {
            StandbyState::Overrun
        } else if p.paused_before_incident.is_some() {
            if seen.as_ref().is_some_and(|x| x.paused || stopped_at(&p, x.replay)) {
                StandbyState::Paused
            } else {
                StandbyState::Stopping
            }
        } else {
            StandbyState::Following
        };
        st.ready = seen.is_some();
        st.replay_lsn = replay;
        st.last_replayed_commit = seen.as_ref().and_then(|x| x.commit);
        st.vault_lsn = vault_lsn;
        st.lag_bytes = vault_lsn.zip(replay).map(|(v, r)| v.0.saturating_sub(r.0));
        st.behind_seconds = behind.map(|b| b.as_secs());
        st.paused_before_incident = p.paused_before_incident;
        st.target = p.target.clone();
        st.backup = p.backup.clone();
        st.message = match (&seen, p.paused_before_incident, p.overrun) {
            (None, ..) => Some("PostgreSQL is starting".into()),
            (Some(x), ..) if !x.in_recovery => Some(
                "it left recovery without `holdfast standby promote` (promoted by someone on the vault host?): it no \
                 longer follows the vault; `holdfast standby resume` builds a fresh one"
                    .into(),
            ),
            (_, _, true) => Some(format!(
                "incident {} was learnt after the standby had applied past its target: it does not show the state \
                 before it. Restore instead (`holdfast restore --before-incident`), then `holdfast standby resume`",
                p.paused_before_incident.map_or_else(|| "?".into(), |n| n.to_string())
            )),
            (Some(x), Some(n), _) => Some(if x.paused || stopped_at(&p, x.replay) {
                format!(
                    "paused just before incident {n} ({}), read-only on 127.0.0.1:{}; `holdfast standby promote --cluster {cluster} --before-incident {n}` opens it for writes",
                    p.target.as_deref().unwrap_or("?"),
                    sb.cfg.port
                )
            } else {
                format!("replaying up to just before incident {n}")
            }),
            (Some(_), None, _) => None,
        };
    });
    Ok(())
}

// --- Base backups from the standby -------------------------------------------------------------

/// How a file of the standby's data directory goes into a backup taken from it: the vault's own
/// files are left out, and the lines it added to production's configuration taken out again, so
/// that a restore from it holds production's files only. PostgreSQL 15's `BASE_BACKUP` already
/// leaves out `standby.signal`, `recovery.signal`, `postmaster.pid`/`.opts`, `pg_internal.init`,
/// temporary files and what is in `pg_wal`, `pg_replslot`, `pg_stat_tmp` and the like
/// (`basebackup.c`'s exclude lists); the signals are named here too, should that change.
pub fn treat(path: &str) -> capture::basebackup::Treat {
    use capture::basebackup::Treat;
    let top = path.split('/').next().unwrap_or(path);
    // holdfast_standby.{conf,json,log,feed}, holdfast_wal_stage/, and the restore's
    // holdfast_restore.json (a read token), holdfast_spool/, holdfast_replay.conf.
    if top.starts_with("holdfast_") || top == "standby.signal" || top == "recovery.signal" {
        Treat::Skip
    } else if path == "pg_hba.conf" {
        Treat::Rewrite(clean_hba)
    } else if path == "postgresql.auto.conf" {
        Treat::Rewrite(clean_auto_conf)
    } else {
        Treat::Keep
    }
}

/// `pg_hba.conf` without the lines the vault put before production's.
fn clean_hba(text: &[u8]) -> Vec<u8> {
    [HBA_PREFIX, HBA_PREFIX_1].iter().find_map(|p| text.strip_prefix(p.as_bytes())).unwrap_or(text).to_vec()
}

/// `postgresql.auto.conf` as the backup the standby was made from had it: without the recovery
/// settings the restore appended nor the vault's include after them.
fn clean_auto_conf(text: &[u8]) -> Vec<u8> {
    let mark = restore::recovery::ADDED_MARK.as_bytes();
    match text.windows(mark.len()).rposition(|w| w == mark) {
        Some(at) => text[..at].to_vec(),
        None => {
            let include = format!("include = '{SETTINGS_FILE}'");
            let mut out = Vec::with_capacity(text.len());
            for line in text.split_inclusive(|b| *b == b'\n') {
                if line.trim_ascii() != include.as_bytes() {
                    out.extend_from_slice(line);
                }
            }
            out
        }
    }
}

/// Takes a base backup from the standby whenever the WAL stored since the newest backup began
/// exceeds `backup_wal_share` of its size, or the cluster's `backup_replay_budget_seconds` when
/// the standby is close enough behind for a backup from it to be inside the budget
/// ([`capture::basebackup::budget_backup_is_the_standbys`]; it tells the collector so every
/// tick, and production's trigger leaves that backup to it), until shutdown. A backup taken on a standby starts at
/// its last restartpoint, i.e. at the last checkpoint record of production it replayed: so
/// first production is asked for a `CHECKPOINT` (over the catalog login; without the right to,
/// production's own checkpoints serve, later), then once the standby has replayed past it (about
/// `apply_delay` later) it makes a restartpoint there and the backup is streamed from it over
/// its socket. Production is never read; the backup is of the vault's own WAL, replayed.
async fn backups(s: Arc<Shared>, sb: Arc<Standby>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let share = sb.cfg.backup_wal_share;
    let cluster = sb.cfg.cluster.clone();
    // A CHECKPOINT asked of production that the standby has not replayed yet: (when, the
    // server's WAL position once it was done).
    let mut asked: Option<(Instant, Lsn)> = None;
    let mut told_no_checkpoint = false;
    let mut not_before = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BACKUP_TICK) => {}
            _ = shutdown.changed() => return,
        }
        if Instant::now() < not_before {
            continue;
        }
        let Some(rt) = s.collector.get().and_then(|c| c.cluster(&cluster).ok()).cloned() else { continue };
        let (Some(newest), Some(durable)) = (rt.newest_backup(), rt.status().durable_lsn) else { continue };
        let st = sb.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Only while following. Not while it is built, restarted or promoted, nor after it
        // replayed past an incident — and not while it is paused before one: then it is the
        // responders' copy, to be read and promoted at once, and a backup streaming from it
        // made the first read there 4.7 → 19.3 s after the destruction in bench/restore.sh
        // (scale 50), and was cut by the promotion anyway.
        let following = st.ready && st.state == StandbyState::Following;
        // Tell the collector how far behind it is, so that the replay budget's next backup
        // comes from here when a backup from here would be inside the budget.
        let lag = st.replay_lsn.filter(|_| following).map(|r| durable.0.saturating_sub(r.0));
        rt.offer_standby_backups(lag);
        let written = durable.0.saturating_sub(newest.start_lsn.0);
        let for_budget = rt.replay_budget_bytes().is_some_and(|b| {
            capture::basebackup::replay_budget_exceeded(&newest, durable, b)
                && capture::basebackup::budget_backup_is_the_standbys(written, b, lag)
        });
        if !capture::basebackup::wal_volume_due(&newest, durable, share) && !for_budget {
            asked = None;
            continue;
        }
        if !following {
            asked = None;
            continue;
        }
        if asked.is_none() {
            match capture::basebackup::request_checkpoint(&rt).await {
                Ok(lsn) => {
                    tracing::info!(cluster, after = %lsn, "standby backup: production checkpointed; waiting for the standby to replay it");
                    asked = Some((Instant::now(), lsn));
                    told_no_checkpoint = false;
                }
                Err(e) if !told_no_checkpoint => {
                    tracing::warn!(
                        cluster, error = %e,
                        "standby backup: cannot ask production for a CHECKPOINT (GRANT pg_checkpoint TO the catalog role); \
                         backups from the standby wait for production's own checkpoints"
                    );
                    told_no_checkpoint = true;
                }
                Err(_) => {}
            }
        }
        if let Some((at, lsn)) = asked {
            let replayed = st.replay_lsn.is_some_and(|r| r >= lsn);
            if !replayed && at.elapsed() < sb.cfg.apply_delay + sb.cfg.max_lag {
                continue;
            }
            asked = None;
        }
        match backup_once(&sb, &rt, &newest).await {
            Ok(Some(b)) => tracing::info!(
                cluster, id = %b.id, start = %b.start_lsn, stop = %b.stop_lsn, bytes = b.bytes, stored = b.stored_bytes,
                "base backup taken from the warm standby"
            ),
            Ok(None) => not_before = Instant::now() + Duration::from_secs(30),
            Err(e) => {
                tracing::warn!(cluster, error = %e, "base backup from the warm standby failed");
                not_before = Instant::now() + Duration::from_secs(60);
            }
        }
    }
}

/// One backup from the standby, if its newest restartpoint is at least a segment past where the
/// newest backup starts (`None`: not yet).
async fn backup_once(
    sb: &Standby,
    rt: &Arc<capture::ClusterRuntime>,
    newest: &capture::BackupSummary,
) -> Result<Option<capture::BackupSummary>, String> {
    let server = sb.server()?;
    let data = sb.data().to_path_buf();
    let srv = server.clone();
    let redo = blocking(move || -> Result<Option<Lsn>, String> {
        // A standby built before backups were taken from it lets the vault in, not its
        // replication connections: its pg_hba.conf gets the line, and is read again.
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|e| format!("reading {}: {e}", hba.display()))?;
        if !text.starts_with(HBA_PREFIX) {
            let Some(rest) = text.strip_prefix(HBA_PREFIX_1) else {
                return Err(format!(
                    "{} does not start with the vault's lines (edited by hand?): no backups from this standby",
                    hba.display()
                ));
            };
            std::fs::write(&hba, format!("{HBA_PREFIX}{rest}")).map_err(|e| format!("writing {}: {e}", hba.display()))?;
            chown_to_server(&hba)?;
            srv.query("SELECT pg_reload_conf()").map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(500));
        }
        // The restartpoint: at the last checkpoint record it replayed, if newer than its last.
        srv.query("CHECKPOINT").map_err(|e| e.to_string())?;
        let redo = srv.query("SELECT redo_lsn FROM pg_control_checkpoint()").map_err(|e| e.to_string())?;
        Ok(redo.and_then(|r| r.parse().ok()))
    })
    .await??;
    let Some(redo) = redo else { return Ok(None) };
    if redo.0 < newest.start_lsn.0 + (16 << 20) {
        tracing::debug!(cluster = %sb.cfg.cluster, %redo, newest = %newest.start_lsn, "standby backup: no restartpoint past the newest backup yet");
        return Ok(None);
    }
    let mut conn = pgproto::conn::Config::new(
        pgproto::conn::Host::Unix { dir: server.socket_dir.clone(), port: sb.cfg.port },
        &sb.cfg.user,
    );
    conn.application_name = "holdfast_standby_backup".into();
    conn.ssl = pgproto::conn::SslMode::Disable;
    let source = capture::basebackup::StandbySource { conn, treat: Arc::new(treat) };
    capture::basebackup::take_from_standby(rt, &source).await.map(Some).map_err(|e| e.to_string())
}

/// Keeps the segments the standby will be fed next decrypted in its staging directory: every
/// whole segment the vault holds from the one holding the feed on (at most
/// [`STAGE_MAX_BYTES`]), so that when an incident raises the feed by `apply_delay`'s worth of
/// WAL at once, `restore_command` copies local files instead of asking the vault for one
/// segment after another (each a new process, a TLS connection and a decryption on the
/// vault). Staging ahead of the feed hands PostgreSQL nothing: the helper cuts a staged
/// segment at the feed exactly as it cuts the vault's copy. Segments behind the feed's are
/// removed (a restarted standby asks the vault for them). Segments the vault holds to their
/// end are staged whole (their bytes never change); the feed's own segment, while the vault
/// holds only part of it, as a partial copy named with its end, used only up to there.
async fn stage(s: &Shared, sb: &Standby) -> Result<(), String> {
    let data = sb.data();
    if !data.join("PG_VERSION").exists() || data.join(restore::INCOMPLETE_MARKER).exists() {
        return Ok(());
    }
    let dir = data.join(STAGE_DIR);
    if sb.load().promoted {
        // Its restore_command is no longer used.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        return Ok(());
    }
    let Some(rt) = s.collector.get().and_then(|c| c.cluster(&sb.cfg.cluster).ok()) else { return Ok(()) };
    let (Some(feed), st) = (sb.feed(), rt.status()) else { return Ok(()) };
    let (Some(tli), Some(durable), Some(seg)) = (st.timeline, st.durable_lsn, rt.inventory().segment_size)
    else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        chown_to_server(&dir)?;
    }
    let first = feed.0 / seg;
    // The staged copy of the segment holding the feed while the vault holds only part of it
    // (`<segment>.partial.<end LSN, 16 hex>`): the newest whose end reaches the feed is kept.
    let mut partial: Option<(PathBuf, Lsn)> = None;
    for e in std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (segment, end) = match restore::wal::parse_partial(&name) {
            Some((segment, end)) => (segment, Some(end)),
            None => (name.as_str(), None),
        };
        let keep = match pgfmt::parse_segment_name(segment, seg) {
            Ok((t, n)) => t.0 == tli && (n > first || (n == first && end.is_none_or(|e| e >= feed))),
            // A write cut short (the vault stopped between writing and renaming).
            Err(_) => false,
        };
        match end {
            _ if !keep => {
                let _ = std::fs::remove_file(e.path());
            }
            // Two copies of the feed's segment: the one holding less goes.
            Some(end) => match partial.take() {
                Some((older, e0)) if e0 < end => {
                    let _ = std::fs::remove_file(older);
                    partial = Some((e.path(), end));
                }
                Some(newer) => {
                    let _ = std::fs::remove_file(e.path());
                    partial = Some(newer);
                }
                None => partial = Some((e.path(), end)),
            },
            None => {}
        }
    }
    let tli = pgfmt::TimelineId(tli);
    for segno in first..first + (STAGE_MAX_BYTES / seg).max(1) {
        let name = pgfmt::segment_name(tli, segno, seg);
        if pgfmt::segment_start(segno + 1, seg) > durable {
            // The vault holds part of it. Only the feed's own segment is worth staging so (the
            // standby asks for it again and again while following a quiet database), and only
            // once the feed has passed what the staged copy holds.
            // At most every PARTIAL_EVERY: a slowly written segment would otherwise be
            // decrypted again at each of the feed's small steps.
            let due = sb
                .partial_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|t| t.elapsed() >= PARTIAL_EVERY);
            if due && segno == first && partial.is_none() && durable >= feed && !dir.join(&name).exists() {
                *sb.partial_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                let (bytes, valid) = match rt.wal_file(&name).await {
                    Ok(got) => got,
                    Err(capture::CaptureError::NotFound(_)) => break,
                    Err(e) => return Err(format!("reading {name}: {e}")),
                };
                let end = Lsn(pgfmt::segment_start(segno, seg).0 + valid);
                if end >= feed {
                    put(&dir, &restore::wal::partial_name(&name, end), &bytes)?;
                }
            }
            break;
        }
        let path = dir.join(&name);
        if path.exists() {
            continue;
        }
        let bytes = match rt.wal_file(&name).await {
            Ok((bytes, _)) => bytes,
            // Not on this timeline (the segment in which it began is assembled by the vault;
            // one before it is not): the helper asks the vault for what it needs.
            Err(capture::CaptureError::NotFound(_)) => continue,
            Err(e) => return Err(format!("reading {name}: {e}")),
        };
        put(&dir, &name, &bytes)?;
        tracing::debug!(cluster = %sb.cfg.cluster, segment = %name, %feed, "standby: staged ahead of the feed");
    }
    Ok(())
}

/// Writes a staged file whole or not at all (temp file, owner, rename).
fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    chown_to_server(&tmp)?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// Stops the standby just before incident `n`'s target: pause now, then let it replay up to
/// the stop and no further. If it already replayed past the target (learnt too late), it stays
/// paused where it is and says so.
///
/// Without a restart when it can: the feed (what `restore_command` hands over) is held at the
/// stop — the segment holding it is served zeroed from there, which PostgreSQL reads as WAL
/// not written yet —, the delay is lifted with a reload, and replay applies every record before
/// the stop and waits there, read-only, for WAL that never comes. A restart would replay again
/// everything since the last restartpoint (at bench sizes, slower than a cold restore). That
/// needs the standby not to hold WAL past the stop yet (the feed lags `apply_delay` behind the
/// vault: the rule, unless the incident is learnt later than that or the transaction ran
/// longer); otherwise the stop is a recovery target and PostgreSQL is restarted.
///
/// `passable`: an incident known when the standby was resumed; if it already applied the
/// target, replay goes on and `false` is returned (nothing is stopped).
#[allow(clippy::too_many_arguments)]
async fn stop_before(
    sb: &Standby,
    server: &restore::pg::Server,
    p: &mut Persisted,
    n: usize,
    inc: &Incident,
    t: IncidentTarget,
    vault_lsn: Option<Lsn>,
    passable: bool,
) -> Result<bool, String> {
    let cluster = &sb.cfg.cluster;
    tracing::warn!(cluster, incident = n, kind = %inc.kind, "stopping the warm standby short of the incident");
    // At once: replay pauses, also while it waits out the delay before a commit.
    let srv = server.clone();
    let _ = blocking(move || srv.query("SELECT pg_wal_replay_pause()")).await?;
    // Did it already apply the destroying transaction (or, for a window, its first one)?
    let srv = server.clone();
    let past = blocking(move || -> Result<(Option<Lsn>, Lsn), String> {
        let seen = look(&srv)?.ok_or("the standby does not answer")?;
        let replay = seen.replay.unwrap_or(Lsn(0));
        let applied = match t {
            IncidentTarget::BeforeLsn { lsn } => replay > lsn,
            IncidentTarget::BeforeXid { xid } => {
                let xmax = srv
                    .query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
                    .map_err(|e| e.to_string())?
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("the standby reports no snapshot")?;
                match restore::check::full_xid(xid, xmax) {
                    // Not started as far as the standby knows.
                    None => false,
                    Some(full) => {
                        srv.query(&format!("SELECT coalesce(pg_xact_status('{full}'::xid8), 'unknown')"))
                            .map_err(|e| e.to_string())?
                            .as_deref()
                            == Some("committed")
                    }
                }
            }
        };
        Ok((applied.then_some(replay), replay))
    })
    .await?;
    let replayed = past.as_ref().ok().map(|(_, r)| *r);
    let past = past.map(|(p, _)| p);
    if passable && matches!(past, Ok(Some(_))) {
        let srv = server.clone();
        blocking(move || srv.query("SELECT pg_wal_replay_resume()"))
            .await?
            .map_err(|e| format!("resuming replay: {e}"))?;
        tracing::info!(
            cluster,
            incident = n,
            "the warm standby was resumed past incident {n}: not stopped for it"
        );
        return Ok(false);
    }
    let (lines, label) = target_lines(t);
    p.paused_before_incident = Some(n);
    p.incidents_seen = n;
    match past {
        Ok(Some(replay)) => {
            // Hold it where it is, also across restarts.
            sb.write_settings(Settings::Target(&format!("recovery_target_lsn = '{replay}'\n"), "pause"))?;
            p.overrun = true;
            p.target = Some(format!("{label} (already applied: held at {replay})"));
            sb.save(p)?;
            tracing::error!(
                cluster,
                incident = n,
                "the warm standby had already applied the incident's target"
            );
            return Ok(true);
        }
        Ok(None) => {}
        // Not able to tell: the target in the settings still stops it before the transaction.
        Err(e) => tracing::warn!(cluster, error = %e, "could not check the standby against the incident"),
    }
    // Read-only, it stops before the destroying transaction's first record: stopped just before
    // its commit, the transaction would still hold its locks (a DROP or TRUNCATE its table's,
    // the very table people need to read). Transactions that committed while it ran appear
    // once promoted: promotion replays up to just before its commit exactly. That needs the
    // standby not to have replayed that record yet (PostgreSQL cannot go back): the feed's
    // delay makes that the rule. A transaction that ran for longer than the delay is stopped
    // before its commit instead.
    p.exact = Some(t);
    // Where promotion ends replay: an LSN target, or the destroying transaction's own commit
    // record (a window's first transaction's commit is not known: promotion then restarts
    // with `recovery_target_xid`).
    p.promote_lsn = match t {
        IncidentTarget::BeforeLsn { lsn } => Some(lsn),
        IncidentTarget::BeforeXid { xid } => inc.lsn.filter(|_| inc.xid == Some(xid)),
    };
    let first = inc.first_lsn.filter(|f| replayed.is_some_and(|r| r <= *f));
    let stop = first.or(p.promote_lsn.filter(|l| replayed.is_some_and(|r| r <= *l)));
    let feed = sb.feed();
    if let Some(stop) = stop.filter(|s| feed.is_some_and(|f| f <= *s)) {
        sb.write_settings(Settings::Held)?;
        p.stop_lsn = Some(stop);
        p.target = Some(match first {
            Some(first) => {
                format!(
                    "lsn {first}, the destroying transaction's first record; promoting stops just before {label}"
                )
            }
            None => label,
        });
        sb.save(p)?;
        sb.raise_feed(stop)?;
        // The reload lifts the delay and wakes the startup process from its wait for WAL: it
        // asks for the segment again at once and gets it cut at the stop.
        let srv = server.clone();
        blocking(move || -> Result<(), String> {
            srv.query("SELECT pg_reload_conf(), pg_wal_replay_resume()").map_err(|e| e.to_string())?;
            Ok(())
        })
        .await??;
        return wait_stopped(sb, server, stop).await.map(|()| true);
    }
    match first {
        Some(first) => {
            sb.write_settings(Settings::Target(&format!("recovery_target_lsn = '{first}'\n"), "pause"))?;
            p.target = Some(format!(
                "lsn {first}, the destroying transaction's first record; promoting stops just before {label}"
            ));
        }
        None => {
            sb.write_settings(Settings::Target(&lines, "pause"))?;
            p.target = Some(label);
        }
    }
    // Promotion restarts it too (the running server's target would otherwise stop it).
    p.promote_lsn = None;
    sb.save(p)?;
    // The target is in the settings: the standby may now read up to it at once (it has to read
    // the record at the target to stop before it).
    if let Some(v) = vault_lsn {
        sb.raise_feed(v)?;
    }
    tracing::warn!(
        cluster,
        incident = n,
        "the warm standby holds WAL past the stop: restarting it at the target"
    );
    restart(server).await.map(|()| true)
}

/// Waits (at most 2 minutes; the loop's looks take over after that) until replay, held by
/// the feed, has reached `stop`, then asks it to pause there as well: were the feed raised by
/// mistake, it would still apply nothing more.
async fn wait_stopped(sb: &Standby, server: &restore::pg::Server, stop: Lsn) -> Result<(), String> {
    let srv = server.clone();
    let cluster = sb.cfg.cluster.clone();
    blocking(move || -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let seen = look(&srv)?;
            if seen.as_ref().and_then(|x| x.replay).is_some_and(|r| reached(r, stop)) {
                srv.query("SELECT pg_wal_replay_pause()").map_err(|e| e.to_string())?;
                tracing::info!(cluster, %stop, seconds = t0.elapsed().as_secs_f64(), "the warm standby stopped short of the incident");
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                tracing::warn!(cluster, %stop, "the warm standby has not reached its stop within 2 minutes");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await?
}

/// Whether the running server has no recovery target (one read at its start — after a crash
/// while an older vault had written one — stays until it restarts).
fn running_target_free(server: restore::pg::Server) -> impl FnOnce() -> Result<bool, String> {
    move || {
        let v = server
            .query(
                "SELECT count(*) FROM pg_settings WHERE name IN ('recovery_target_lsn', 'recovery_target_xid', \
                 'recovery_target_time', 'recovery_target_name') AND setting <> ''",
            )
            .map_err(|e| e.to_string())?;
        Ok(v.as_deref() == Some("0"))
    }
}

/// Stopped by the feed (no restart) and replay has reached the stop.
fn stopped_at(p: &Persisted, replay: Option<Lsn>) -> bool {
    p.stop_lsn.zip(replay).is_some_and(|(s, r)| reached(r, s))
}

async fn restart(server: &restore::pg::Server) -> Result<(), String> {
    let srv = server.clone();
    blocking(move || -> Result<(), String> {
        srv.stop().map_err(|e| format!("stopping the standby: {e}"))?;
        start_server(&srv)
    })
    .await?
}

fn find<'a>(s: &'a Shared, cluster: &str) -> Result<&'a Arc<Standby>, ActionError> {
    s.standbys.all.get(cluster).ok_or_else(|| ActionError::NoStandby(cluster.to_string()))
}

/// Opens the standby, paused before incident `n`, for writes (`pg_promote()`).
pub async fn promote(
    s: &Arc<Shared>,
    cluster: &str,
    n: usize,
) -> Result<(StandbyStatus, String), ActionError> {
    let sb = find(s, cluster)?;
    let mut inner = sb.inner.lock().await;
    let mut p = sb.load();
    if p.promoted {
        return Err(ActionError::Conflict(format!("the standby of {cluster} is already promoted")));
    }
    if p.overrun {
        return Err(ActionError::Conflict(format!(
            "the standby of {cluster} applied past incident {n}'s target: it does not hold the state before it; \
             restore with `holdfast restore --cluster {cluster} --before-incident {n}` instead"
        )));
    }
    match p.paused_before_incident {
        Some(k) if k == n => {}
        Some(k) => {
            return Err(ActionError::Conflict(format!(
                "the standby of {cluster} is stopped before incident {k}, not {n}: promote with --before-incident {k}, \
                 or restore to incident {n} with `holdfast restore --before-incident {n}`"
            )));
        }
        None => {
            return Err(ActionError::Conflict(format!(
                "the standby of {cluster} is following, not stopped before incident {n} (it stops only for \
                 incidents raised while it follows); see `holdfast standby status`"
            )));
        }
    }
    let server = sb.server().map_err(ActionError::Failed)?;
    // Up to just before the destroying transaction's commit, exactly, then open: recovery
    // ends there and the transaction is rolled back (its locks go with it).
    let exact = p.exact.map(target_lines);
    if let (Some(stop), Some(to)) = (p.stop_lsn, p.promote_lsn) {
        // Held by the feed: the feed goes up to the commit record (served zeroed from there),
        // replay applies everything before it, and `pg_promote()` ends recovery there — no
        // restart, and no end-of-recovery checkpoint to wait for.
        tracing::info!(cluster, %stop, %to, "promoting the warm standby");
        sb.raise_feed(to).map_err(ActionError::Failed)?;
        let srv = server.clone();
        blocking(move || -> Result<(), String> {
            srv.query("SELECT pg_reload_conf(), pg_wal_replay_resume()").map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            loop {
                let replay = look(&srv)?.and_then(|x| x.replay);
                if replay.is_some_and(|r| reached(r, to)) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(600) {
                    return Err(format!(
                        "replay did not reach {to} within 10 minutes (at {}){}",
                        replay.map_or_else(|| "?".into(), |r| r.to_string()),
                        srv.log_tail()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            srv.query("SELECT pg_promote(true, 300)").map_err(|e| e.to_string())?;
            srv.wait_recovered(true, Duration::from_secs(600)).map_err(|e| e.to_string())
        })
        .await
        .map_err(ActionError::Failed)?
        .map_err(|e| ActionError::Failed(format!("promoting the standby of {cluster}: {e}")))?;
    } else if let Some((lines, _)) = &exact {
        sb.write_settings(Settings::Target(lines, "promote")).map_err(ActionError::Failed)?;
        if let Some(v) =
            s.collector.get().and_then(|c| c.cluster(cluster).ok()).and_then(|rt| rt.status().durable_lsn)
        {
            sb.raise_feed(v).map_err(ActionError::Failed)?;
        }
        restart(&server).await.map_err(ActionError::Failed)?;
        let srv = server.clone();
        blocking(move || srv.wait_recovered(true, Duration::from_secs(600)).map_err(|e| e.to_string()))
            .await
            .map_err(ActionError::Failed)?
            .map_err(|e| ActionError::Failed(format!("promoting the standby of {cluster}: {e}")))?;
    } else {
        let srv = server.clone();
        blocking(move || -> Result<(), String> {
            srv.wait_recovered(false, Duration::from_secs(600)).map_err(|e| e.to_string())?;
            srv.query("SELECT pg_promote(true, 300)").map_err(|e| e.to_string())?;
            srv.wait_recovered(true, Duration::from_secs(600)).map_err(|e| e.to_string())
        })
        .await
        .map_err(ActionError::Failed)?
        .map_err(|e| ActionError::Failed(format!("promoting the standby of {cluster}: {e}")))?;
    }
    p.promoted = true;
    sb.save(&p).map_err(ActionError::Failed)?;
    // Its restore_command is no longer used: the read token goes.
    if let Some(t) = inner.token.take() {
        s.state.write().await.tokens.remove(t.id());
    }
    drop(inner);
    let message = format!(
        "the standby of {cluster} is promoted: it accepts writes on 127.0.0.1:{} (socket in {}), holding the data as \
         it was just before incident {n} ({}). Either point applications at it, or stop it (pg_ctl -D {} stop) and \
         copy {} to the production host (e.g. rsync -a) and start PostgreSQL there. It no longer follows the vault: \
         `holdfast standby resume --cluster {cluster}` builds a fresh standby and keeps this directory, renamed",
        sb.cfg.port,
        sb.data().display(),
        exact.map_or_else(|| p.target.clone().unwrap_or_default(), |(_, label)| label),
        sb.data().display(),
        sb.data().display(),
    );
    let mut st = sb.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    st.state = StandbyState::Promoted;
    Ok((st, message))
}

/// Makes the standby follow again: clears its stop, or — promoted or overrun — stops it,
/// renames its data directory aside (never removed: it may be the production copy now) and
/// lets the next look build a fresh one from the newest backup.
pub async fn resume(s: &Arc<Shared>, cluster: &str) -> Result<(StandbyStatus, String), ActionError> {
    let sb = find(s, cluster)?;
    let mut inner = sb.inner.lock().await;
    let mut p = sb.load();
    let server = sb.server().map_err(ActionError::Failed)?;
    let incidents =
        s.collector.get().and_then(|c| c.cluster(cluster).ok()).map_or(0, |rt| rt.incidents().len());
    let message = if p.promoted || p.overrun {
        let srv = server.clone();
        blocking(move || srv.stop())
            .await
            .map_err(ActionError::Failed)?
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        let aside = PathBuf::from(format!("{}.replaced-{}", sb.data().display(), s.clock.now().as_secs()));
        std::fs::rename(sb.data(), &aside).map_err(|e| {
            ActionError::Failed(format!("renaming {} to {}: {e}", sb.data().display(), aside.display()))
        })?;
        if let Some(t) = inner.token.take() {
            s.state.write().await.tokens.remove(t.id());
        }
        inner.unreplayed.clear();
        sb.set(|st| {
            st.state = StandbyState::Creating;
            st.ready = false;
            st.paused_before_incident = None;
            st.target = None;
        });
        format!(
            "the old standby's data directory is kept as {}; a fresh standby of {cluster} is being built from the newest backup",
            aside.display()
        )
    } else if p.paused_before_incident.is_some() {
        sb.write_settings(Settings::Following).map_err(ActionError::Failed)?;
        // Held by the feed alone, the running server has no target: a reload restores the
        // delay, and the feed is raised again by the loop. Stopped at a recovery target, it
        // must be restarted without it.
        let held = p.stop_lsn.is_some();
        // From the incident it was stopped before on: those raised since (while it was paused)
        // stop it again unless it has already applied them — resuming past a decoy must not
        // carry it through the destruction that followed.
        p.incidents_seen = p.paused_before_incident.map_or(incidents, |n| n.min(incidents));
        p.resumed_with = Some(incidents);
        p.paused_before_incident = None;
        p.target = None;
        p.exact = None;
        p.stop_lsn = None;
        p.promote_lsn = None;
        sb.save(&p).map_err(ActionError::Failed)?;
        // Not able to tell: restart (always right, only slower).
        let target_free = held
            && blocking(running_target_free(server.clone()))
                .await
                .map_err(ActionError::Failed)?
                .unwrap_or(false);
        if target_free {
            let srv = server.clone();
            blocking(move || srv.query("SELECT pg_reload_conf(), pg_wal_replay_resume()"))
                .await
                .map_err(ActionError::Failed)?
                .map_err(|e| ActionError::Failed(format!("resuming the standby of {cluster}: {e}")))?;
        } else {
            restart(&server).await.map_err(ActionError::Failed)?;
        }
        inner.unreplayed.clear();
        format!(
            "the standby of {cluster} follows the vault again, {} s behind; it stops before any later incident whose \
             transaction it has not applied, also those raised while it was paused",
            sb.cfg.apply_delay.as_secs()
        )
    } else {
        format!("the standby of {cluster} is already following the vault")
    };
    drop(inner);
    let st = sb.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((st, message))
}

/// Per-cluster standby gauges.
pub fn metrics(out: &mut String, all: &[StandbyStatus]) {
    use std::fmt::Write;
    if all.is_empty() {
        return;
    }
    let mut gauge = |name: &str, help: &str, value: &dyn Fn(&StandbyStatus) -> Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for b in all {
            if let Some(v) = value(b) {
                let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", b.cluster);
            }
        }
    };
    gauge("holdfast_standby_ready", "1 if the warm standby answers queries.", &|b| {
        Some(f64::from(u8::from(b.ready)))
    });
    gauge(
        "holdfast_standby_following",
        "1 while the warm standby follows the vault's WAL (0: creating, paused before an incident, promoted, failed).",
        &|b| Some(f64::from(u8::from(b.state == StandbyState::Following))),
    );
    gauge(
        "holdfast_standby_paused_before_incident",
        "The incident the standby stopped short of (0: none).",
        &|b| Some(b.paused_before_incident.unwrap_or(0) as f64),
    );
    gauge(
        "holdfast_standby_replay_lsn_bytes",
        "pg_last_wal_replay_lsn() of the standby, as a byte position.",
        &|b| b.replay_lsn.map(|l| l.0 as f64),
    );
    gauge("holdfast_standby_lag_bytes", "WAL the vault holds that the standby has not replayed.", &|b| {
        b.lag_bytes.map(|l| l as f64)
    });
    gauge("holdfast_standby_behind_seconds", "How long WAL the vault holds has waited unreplayed.", &|b| {
        b.behind_seconds.map(|l| l as f64)
    });
    gauge("holdfast_standby_apply_delay_seconds", "The configured apply delay.", &|b| {
        Some(b.apply_delay_seconds as f64)
    });
    gauge(
        "holdfast_standby_last_replayed_commit_timestamp_seconds",
        "Commit time of the last transaction the standby applied.",
        &|b| b.last_replayed_commit.map(|t| t.as_secs() as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_runs_replay_failure_is_named_and_a_kill_is_not() {
        let log = "2026-12-05 06:53:10.1 UTC [10500] FATAL:  directory \"/old\" does not exist
2026-12-05 06:53:15.1 UTC [10558] LOG:  starting PostgreSQL 15.18
2026-12-05 06:53:15.2 UTC [10612] FATAL:  the database system is starting up
2026-12-05 06:53:15.231 UTC [10558] LOG:  database system is ready to accept read-only connections
2026-12-05 06:53:15.233 UTC [10611] FATAL:  directory \"/tmp/x/ts\" does not exist
2026-12-05 06:53:15.233 UTC [10611] HINT:  Create this directory for the tablespace before restarting the server.
2026-12-05 06:53:15.233 UTC [10611] CONTEXT:  WAL redo at 0/40002F8 for Tablespace/CREATE: 16431 \"/tmp/x/ts\"
2026-12-05 06:53:15.243 UTC [10558] LOG:  startup process (PID 10611) exited with exit code 1
";
        let why = last_failure(log).unwrap();
        assert_eq!(
            why,
            "FATAL: directory \"/tmp/x/ts\" does not exist / HINT: Create this directory for the tablespace \
             before restarting the server. / CONTEXT: WAL redo at 0/40002F8 for Tablespace/CREATE: 16431 \"/tmp/x/ts\""
        );
        // Killed from outside: its last run's startup process did not fail (an earlier run's
        // failure and a client's failed login are not this stop's reason).
        let killed = format!(
            "{log}2026-12-05 06:54:00.0 UTC [10700] LOG:  starting PostgreSQL 15.18\n\
            2026-12-05 06:54:00.5 UTC [10700] LOG:  database system is ready to accept read-only connections\n\
            2026-12-05 06:54:01.0 UTC [10800] FATAL:  password authentication failed for user \"x\"\n"
        );
        assert_eq!(last_failure(&killed), None);
    }

    #[test]
    fn replay_reaches_a_stop_at_the_record_before_it() {
        // The record before the stop ends where the stop begins…
        assert!(reached(Lsn(0x0300_1F40), Lsn(0x0300_1F40)));
        assert!(!reached(Lsn(0x0300_1F00), Lsn(0x0300_1F40)));
        // …or, when the stop is the first record on its page, at the page boundary (the page
        // header lies between): 24 bytes in a segment, 40 at a segment's start.
        assert!(reached(Lsn(0x0300_2000), Lsn(0x0300_2018)));
        assert!(reached(Lsn(0x0400_0000), Lsn(0x0400_0028)));
        assert!(!reached(Lsn(0x0300_1FF0), Lsn(0x0300_2018)));
        // A stop further into its page is not reached from the page boundary.
        assert!(!reached(Lsn(0x0300_2000), Lsn(0x0300_2060)));
    }

    /// Incidents raised before a standby was built: only destruction in WAL it replays stops
    /// it — past its backup's stop, on the timeline history it follows; what cannot be told
    /// stops it.
    #[test]
    fn an_earlier_incident_concerns_a_fresh_standby_only_on_its_path() {
        let inc = |lsn: Option<u64>, timeline: Option<u32>| Incident {
            cluster: "main".into(),
            kind: "relations_dropped".into(),
            detected_at: Timestamp(0),
            message: String::new(),
            lsn: lsn.map(Lsn),
            xid: Some(900),
            restore_target: Some(IncidentTarget::BeforeXid { xid: 900 }),
            first_lsn: lsn.map(Lsn),
            timeline,
            objects: Vec::new(),
        };
        let from = Lsn(0x0300_0000);
        let on_1: Followed = (1, None);
        // On the timeline it follows: past the backup it concerns it, inside the backup not.
        assert!(concerns(&inc(Some(0x0500_0000), Some(1)), from, Some(&on_1)));
        assert!(concerns(&inc(Some(0x0300_0000), Some(1)), from, Some(&on_1)));
        assert!(!concerns(&inc(Some(0x02FF_FFF0), Some(1)), from, Some(&on_1)));
        // Production restored from the promoted standby: timeline 2 branched off timeline 1
        // at 0/4000000. Destruction on 1 after the branch is never replayed; before it, it is.
        let history = pgfmt::TimelineHistory::parse("1\t0/4000000\tbefore transaction 900\n").unwrap();
        let on_2: Followed = (2, Some(history));
        assert!(!concerns(&inc(Some(0x0400_0100), Some(1)), from, Some(&on_2)));
        assert!(concerns(&inc(Some(0x0380_0000), Some(1)), from, Some(&on_2)));
        assert!(concerns(&inc(Some(0x0500_0000), Some(2)), from, Some(&on_2)));
        // A timeline not in its history (a sibling branch) is not followed.
        assert!(!concerns(&inc(Some(0x0500_0000), Some(3)), from, Some(&on_2)));
        // What cannot be told stops it: no timeline recorded, the followed timeline or its
        // history unknown, no LSN.
        assert!(concerns(&inc(Some(0x0500_0000), None), from, Some(&on_2)));
        assert!(concerns(&inc(Some(0x0500_0000), Some(1)), from, None));
        assert!(concerns(&inc(Some(0x0500_0000), Some(1)), from, Some(&(2, None))));
        assert!(concerns(&inc(None, Some(1)), from, Some(&on_1)));
    }

    #[test]
    fn an_incident_target_becomes_exclusive_recovery_settings() {
        let (l, label) = target_lines(IncidentTarget::BeforeXid { xid: 812 });
        assert_eq!((l.as_str(), label.as_str()), ("recovery_target_xid = '812'\n", "xid 812"));
        let (l, _) = target_lines(IncidentTarget::BeforeLsn { lsn: Lsn(0x3000060) });
        assert_eq!(l, "recovery_target_lsn = '0/3000060'\n");
    }

    #[test]
    fn a_backup_from_the_standby_holds_productions_files_not_the_vaults() {
        use capture::basebackup::Treat;
        for own in [
            "holdfast_standby.conf",
            "holdfast_standby.json",
            "holdfast_standby.log",
            "holdfast_standby.feed",
            "holdfast_wal_stage",
            "holdfast_wal_stage/000000010000000000000003",
            "holdfast_restore.json",
            "holdfast_spool/x",
            "holdfast_replay.conf",
            "standby.signal",
        ] {
            assert!(matches!(treat(own), Treat::Skip), "{own}");
        }
        for kept in ["base/5/1259", "global/pg_control", "PG_VERSION", "postgresql.conf", "pg_ident.conf"] {
            assert!(matches!(treat(kept), Treat::Keep), "{kept}");
        }
        // pg_hba.conf: production's lines, without the vault's before them (either version).
        let production = "# TYPE DATABASE USER ADDRESS METHOD\nhost all all 0.0.0.0/0 scram-sha-256\n";
        for prefix in [HBA_PREFIX, HBA_PREFIX_1] {
            assert_eq!(clean_hba(format!("{prefix}{production}").as_bytes()), production.as_bytes());
        }
        assert_eq!(clean_hba(production.as_bytes()), production.as_bytes());
        assert!(matches!(treat("pg_hba.conf"), Treat::Rewrite(_)));
        // postgresql.auto.conf: production's, without the restore's recovery settings and the
        // vault's include after them (production's own earlier restore block stays).
        let auto = "# Do not edit this file manually!\nwork_mem = '64MB'\n";
        let restored = format!(
            "{auto}{}restore_command = 'x'\ninclude_if_exists = 'holdfast_replay.conf'\ninclude = '{SETTINGS_FILE}'\n",
            restore::recovery::ADDED_MARK
        );
        assert_eq!(clean_auto_conf(restored.as_bytes()), auto.as_bytes());
        let twice = format!("{auto}{}restore_command = 'old'\n{restored}", restore::recovery::ADDED_MARK);
        assert_eq!(
            clean_auto_conf(twice.as_bytes()),
            format!("{auto}{}restore_command = 'old'\n{auto}", restore::recovery::ADDED_MARK).as_bytes()
        );
        assert_eq!(
            clean_auto_conf(format!("{auto}include = '{SETTINGS_FILE}'\n").as_bytes()),
            auto.as_bytes()
        );
    }
}
