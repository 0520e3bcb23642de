//! Restore drills, run by the vault itself: restore a cluster (its latest state or a random
//! point of the window) into a scratch directory, start it, check it, measure RTO and
//! freshness, tear it down, and keep a signed report in the catalog.
//!
//! Why the vault runs them (and not a tool holding a token): a report is evidence for an
//! auditor, so it must not be something a token holder can write. `drill.report` records are
//! written only here, signed with a key derived from the repository keys
//! ([`SIGNING_CONTEXT`]), so anyone holding the vault key or an escrow identity — or just the
//! published public key — can check them.
//!
//! The restore itself goes through the same path as `holdfast restore`: the `restore` crate,
//! over this vault's own HTTPS API on loopback, with a read token that exists only in memory
//! for the drill's duration. The restored copy listens on no TCP port, only on a private socket
//! directory, and its `pg_hba.conf` is replaced by `local all all trust`, so checks need none
//! of the source's passwords.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use store::Timestamp;
use vault_api::drill::{DrillCheck, DrillReport, DrillStatus, DrillSummary, RunningDrill, SignedDrillReport};
use vault_api::status::ClusterStatus;

use crate::config::{DrillConfig, DrillPoint};
use crate::service::Shared;
use crate::state::{TokenEntry, VaultState, kinds};

/// BLAKE3 key-derivation context of the drill-report signing key (see `docs/vault-format.md`).
pub const SIGNING_CONTEXT: &str = "holdfast 2026-11 drill report ed25519 signing key";

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(2);

/// The vault's drill machinery.
pub struct Drills {
    signing: SigningKey,
    running: Mutex<BTreeMap<String, RunningDrill>>,
    /// Drills restore a whole cluster: one at a time per vault.
    one_at_a_time: tokio::sync::Semaphore,
    overdue_alerted: Mutex<BTreeSet<String>>,
    /// `https://<loopback>:<port>` of this vault, once listening.
    url: OnceLock<String>,
    /// Drill-report records already checked: the report, or `None` if it did not verify.
    verified: Mutex<BTreeMap<String, Option<DrillReport>>>,
}

impl std::fmt::Debug for Drills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drills").field("public_key", &self.public_key()).finish()
    }
}

/// Why a drill could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown cluster {0:?}: it is not in the vault's configuration")]
    UnknownCluster(String),
    #[error(
        "a drill of cluster {cluster:?} is already running (id {id}); wait for it (`holdfast drill --list`)"
    )]
    Running { cluster: String, id: String },
    #[error("the random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
}

impl Drills {
    pub fn new(keys: &store::MasterKeys) -> Drills {
        Drills {
            signing: SigningKey::from_bytes(&keys.derive_key(SIGNING_CONTEXT)),
            running: Mutex::new(BTreeMap::new()),
            one_at_a_time: tokio::sync::Semaphore::new(1),
            overdue_alerted: Mutex::new(BTreeSet::new()),
            url: OnceLock::new(),
            verified: Mutex::new(BTreeMap::new()),
        }
    }

    /// The drill-report public key, hex.
    pub fn public_key(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Where drills reach this vault's API (set once it listens).
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let ip = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
        let _ = self.url.set(format!("https://{}", std::net::SocketAddr::new(ip, addr.port())));
    }

    fn set_phase(&self, cluster: &str, phase: String) {
        if let Some(r) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get_mut(cluster) {
            r.phase = phase;
        }
    }

    fn sign(&self, report: &DrillReport) -> SignedDrillReport {
        let text = serde_json::to_string(report).unwrap_or_default();
        let signature = self.signing.sign(text.as_bytes());
        SignedDrillReport {
            report: text,
            signature: hex::encode(signature.to_bytes()),
            public_key: self.public_key(),
        }
    }
}

/// The verified reports of `cluster`, oldest first (a report whose signature does not verify is
/// logged and left out: it cannot have been written by this vault). Each record is verified
/// once and remembered: status, metrics and the scheduler ask every few seconds.
pub fn reports(drills: &Drills, state: &VaultState, cluster: Option<&str>) -> Vec<DrillReport> {
    let key = drills.public_key();
    let mut cache = drills.verified.lock().unwrap_or_else(|p| p.into_inner());
    state
        .drills
        .iter()
        .filter_map(|e| {
            cache
                .entry(e.record.clone())
                .or_insert_with(|| match e.signed.verify(&key) {
                    Ok(r) => Some(r),
                    Err(err) => {
                        tracing::warn!(record = %e.record, error = %err, "a drill report does not verify; ignored");
                        None
                    }
                })
                .clone()
        })
        .filter(|r| cluster.is_none_or(|c| r.cluster == c))
        .collect()
}

/// A cluster's drill state at `now`. `capture` is its capture status (for the window: with no
/// passing drill yet, a cluster is overdue once its oldest restorable point is older than
/// `overdue_after`).
pub fn status(
    drills: &Drills,
    cfg: &DrillConfig,
    reports: &[DrillReport],
    capture: Option<&ClusterStatus>,
    now: Timestamp,
) -> DrillStatus {
    let last = reports.last();
    let last_passed_at = reports.iter().rev().find(|r| r.ok).map(|r| r.finished_at);
    let window = capture.and_then(|c| c.window.as_ref());
    let reference = last_passed_at.or(window.map(|w| w.earliest_time));
    let overdue = match (cfg.overdue_after, reference) {
        (Some(d), Some(r)) => now > r.plus(d),
        _ => false,
    };
    let next_due = cfg.every.and_then(|every| match last {
        Some(l) => Some(l.started_at.plus(every)),
        // The first drill runs as soon as there is something to restore.
        None => window.map(|_| now),
    });
    DrillStatus {
        cluster: cfg.cluster.clone(),
        every_seconds: cfg.every.map(|d| d.as_secs()),
        overdue_after_seconds: cfg.overdue_after.map(|d| d.as_secs()),
        running: drills.running.lock().unwrap_or_else(|p| p.into_inner()).get(&cfg.cluster).cloned(),
        last: last.map(|r| DrillSummary {
            id: r.id.clone(),
            started_at: r.started_at,
            ok: r.ok,
            rto_seconds: r.rto_seconds,
            verdict: r.verdict.clone(),
        }),
        last_passed_at,
        next_due,
        overdue,
        total: reports.len() as u64,
        failed: reports.iter().filter(|r| !r.ok).count() as u64,
    }
}

/// Every configured cluster's drill state.
pub async fn all_status(s: &Shared) -> Vec<DrillStatus> {
    let capture = s.collector.get().map(|c| c.status()).unwrap_or_default();
    let state = s.state.read().await;
    let all = reports(&s.drills, &state, None);
    drop(state);
    let now = s.clock.now();
    s.config
        .drills
        .iter()
        .map(|cfg| {
            let mine: Vec<DrillReport> = all.iter().filter(|r| r.cluster == cfg.cluster).cloned().collect();
            status(&s.drills, cfg, &mine, capture.iter().find(|c| c.name == cfg.cluster), now)
        })
        .collect()
}

/// Starts a drill of `cluster` in the background; returns its id.
pub fn start(s: &Arc<Shared>, cluster: &str, trigger: String) -> Result<String, StartError> {
    let Some(cfg) = s.config.drill(cluster).cloned() else {
        return Err(StartError::UnknownCluster(cluster.to_string()));
    };
    let id = random_hex(8)?;
    {
        let mut running = s.drills.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(cluster) {
            return Err(StartError::Running { cluster: cluster.to_string(), id: r.id.clone() });
        }
        running.insert(
            cluster.to_string(),
            RunningDrill {
                id: id.clone(),
                started_at: s.clock.now(),
                trigger: trigger.clone(),
                phase: "queued".into(),
            },
        );
    }
    tracing::info!(cluster, id, trigger, "drill started");
    let s = s.clone();
    let drill_id = id.clone();
    tokio::spawn(async move {
        let permit = s.drills.one_at_a_time.acquire().await;
        let report = run(&s, &cfg, &drill_id, &trigger).await;
        drop(permit);
        let signed = s.drills.sign(&report);
        let body = serde_json::to_value(&signed).unwrap_or_default();
        {
            let mut state = s.state.write().await;
            if let Err(e) = s.write_record(&mut state, kinds::DRILL_REPORT, body).await {
                tracing::error!(cluster = %cfg.cluster, id = %drill_id, error = %e, "the drill report could not be stored");
                s.alert(serde_json::json!({
                    "alert": "drill_report_not_stored", "cluster": cfg.cluster, "id": drill_id,
                    "error": e.to_string(),
                }));
            }
        }
        if report.ok {
            tracing::info!(cluster = %cfg.cluster, id = %drill_id, verdict = %report.verdict, "drill passed");
            s.drills.overdue_alerted.lock().unwrap_or_else(|p| p.into_inner()).remove(&cfg.cluster);
        } else {
            s.alert(serde_json::json!({
                "alert": "drill_failed", "cluster": cfg.cluster, "id": drill_id, "verdict": report.verdict,
            }));
        }
        s.drills.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&cfg.cluster);
    });
    Ok(id)
}

/// Starts scheduled drills when due and raises an alert when a cluster becomes overdue, until
/// `shutdown` changes.
pub async fn scheduler(s: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        let now = s.clock.now();
        for st in all_status(&s).await {
            if st.overdue {
                let newly = s
                    .drills
                    .overdue_alerted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(st.cluster.clone());
                if newly {
                    s.alert(serde_json::json!({
                        "alert": "drill_overdue", "cluster": st.cluster,
                        "last_passed_at": st.last_passed_at,
                        "overdue_after_seconds": st.overdue_after_seconds,
                    }));
                }
            }
            if st.running.is_none()
                && st.next_due.is_some_and(|d| d <= now)
                && let Err(e) = start(&s, &st.cluster, "schedule".into())
            {
                tracing::warn!(cluster = %st.cluster, error = %e, "a scheduled drill could not start");
            }
        }
    }
}

/// A drill's scratch directory: `<scratch_dir>/<repository id>-<drill id>`, so that vaults
/// sharing a scratch directory never touch each other's copies.
fn scratch_for(cfg: &DrillConfig, repo_id: &str, id: &str) -> PathBuf {
    cfg.scratch_dir.join(format!("{repo_id}-{id}"))
}

/// Stops servers and removes scratch copies a previous run of this vault left behind (it was
/// killed mid-drill).
pub fn clean_leftovers(cfgs: &[DrillConfig], repo_id: &str) {
    let dirs: BTreeSet<&PathBuf> = cfgs.iter().map(|c| &c.scratch_dir).collect();
    let prefix = format!("{repo_id}-");
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            stop_immediately(&e.path().join("data"));
            tracing::info!(dir = %e.path().display(), "removing a drill's leftover scratch copy");
            let _ = remove_drill_dir(&e.path());
        }
    }
}

/// Removes a drill's scratch copy (`<repository id>-<drill id>`) or socket directory
/// (`holdfast-drill-<drill id>`) — and refuses any other name, so that a wrong path can never
/// make this remove anything else (the only removal in the vault outside `retention`).
fn remove_drill_dir(dir: &Path) -> std::io::Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ours = match name.strip_prefix("holdfast-drill-") {
        Some(id) => hex(id),
        None => name.split_once('-').is_some_and(|(repo, id)| hex(repo) && hex(id)),
    };
    if !ours {
        return Err(std::io::Error::other(format!(
            "{} is not a drill directory; not removed",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir)
}

/// `pg_ctl stop -m immediate` on a drill's data directory, if a server runs there.
fn stop_immediately(data: &Path) {
    if !data.join("postmaster.pid").exists() {
        return;
    }
    if let Ok(bindir) = restore::pg::bindir() {
        let mut c = as_pg_user(&bindir.join("pg_ctl"));
        c.arg("-D").arg(data).args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

fn as_pg_user(exe: &Path) -> std::process::Command {
    match run_as() {
        Some(u) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &u, "--"]).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    }
}

/// PostgreSQL refuses to run as root: a vault running as root runs drills as `postgres`.
fn run_as() -> Option<String> {
    restore::pg::running_as_root().then(|| "postgres".to_string())
}

fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b)?;
    Ok(hex::encode(b))
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> DrillCheck {
    DrillCheck { name: name.into(), ok, detail: detail.into() }
}

/// One drill, start to teardown. Never fails: whatever goes wrong is a failed check.
async fn run(s: &Arc<Shared>, cfg: &DrillConfig, id: &str, trigger: &str) -> DrillReport {
    let started_at = s.clock.now();
    let t0 = Instant::now();
    let mut report = DrillReport {
        id: id.to_string(),
        cluster: cfg.cluster.clone(),
        trigger: trigger.to_string(),
        started_at,
        finished_at: started_at,
        target: "latest".into(),
        backup: None,
        recovered_lsn: None,
        last_commit: None,
        rto_seconds: None,
        base_seconds: None,
        base_bytes: None,
        replay_seconds: None,
        freshness_seconds: None,
        checks: Vec::new(),
        ok: false,
        verdict: String::new(),
        log_tail: None,
    };
    let scratch = scratch_for(cfg, s.repo.id(), id);
    let socket_dir = std::env::temp_dir().join(format!("holdfast-drill-{id}"));
    let token = crate::new_token();
    match (&token, s.drills.url.get()) {
        (Ok(token), Some(url)) => {
            restore_and_check(s, cfg, &mut report, url, token, &scratch, &socket_dir).await;
            s.state.write().await.tokens.remove(token.id());
        }
        (Err(e), _) => report.checks.push(check("restore", false, e.to_string())),
        (_, None) => report.checks.push(check("restore", false, "the vault is not listening yet")),
    }
    // Teardown, whatever happened.
    s.drills.set_phase(&cfg.cluster, "tearing down".into());
    let data = scratch.join("data");
    let (d2, sock2) = (data.clone(), socket_dir.clone());
    let _ = tokio::task::spawn_blocking(move || {
        stop_immediately(&d2);
        let _ = remove_drill_dir(&sock2);
    })
    .await;
    if let Err(e) = remove_drill_dir(&scratch)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        report.checks.push(check("teardown", false, format!("removing {}: {e}", scratch.display())));
    }
    report.finished_at = s.clock.now();
    report.ok = !report.checks.is_empty() && report.checks.iter().all(|c| c.ok);
    let passed = report.checks.iter().filter(|c| c.ok).count();
    report.verdict = if report.ok {
        format!(
            "PASSED: {} restored to {} from backup {} — RTO {:.1} s{}, {passed}/{} checks passed, drill took {:.0} s",
            cfg.cluster,
            report.target,
            report.backup.as_deref().unwrap_or("?"),
            report.rto_seconds.unwrap_or(0.0),
            report
                .freshness_seconds
                .map(|f| format!(", data {f:.0} s behind the vault's newest WAL at drill start"))
                .unwrap_or_default(),
            report.checks.len(),
            t0.elapsed().as_secs_f64(),
        )
    } else {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, first_line(&c.detail)))
            .collect();
        format!(
            "FAILED: {} ({passed}/{} checks passed) — {}",
            cfg.cluster,
            report.checks.len(),
            failed.join("; ")
        )
    };
    report
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[allow(clippy::too_many_arguments)]
async fn restore_and_check(
    s: &Arc<Shared>,
    cfg: &DrillConfig,
    report: &mut DrillReport,
    url: &str,
    token: &vault_api::Token,
    scratch: &Path,
    socket_dir: &Path,
) {
    let fail =
        |report: &mut DrillReport, name: &str, detail: String| report.checks.push(check(name, false, detail));
    // What to restore: the newest WAL, or a random point of the window.
    let inventory = match s.collector.get().map(|c| c.cluster(&cfg.cluster)) {
        Some(Ok(rt)) => rt.inventory(),
        _ => return fail(report, "restore", format!("cluster {} is not being captured", cfg.cluster)),
    };
    let Some(window) = inventory.window.clone() else {
        return fail(
            report,
            "restore",
            "nothing to restore: no complete base backup with unbroken WAL after it (see `holdfast status`)"
                .into(),
        );
    };
    let target = match cfg.point {
        DrillPoint::Latest => restore::Target::Latest,
        // A random point of the window, as the LSN of a WAL record: a time after the last
        // commit, or a position past the last record (e.g. in the zeroed tail of a switched
        // segment), cannot be reached — PostgreSQL ends such a recovery with an error. So a
        // position is drawn uniformly from the consistency point of the oldest usable backup
        // to the newest WAL, and moved to the next record start in its segment (the vault's
        // own WAL, decoded with `pgfmt`).
        DrillPoint::Random => random_record(s, cfg, &inventory, &window)
            .await
            .map_or(restore::Target::Latest, restore::Target::Lsn),
    };
    report.target = match &target {
        restore::Target::Latest => "latest".into(),
        restore::Target::Lsn(l) => format!("lsn {l}"),
        other => other.to_string(),
    };
    if target == restore::Target::Latest {
        report.freshness_seconds = Some((report.started_at.0 - window.latest_time.0).max(0) as f64);
    }
    // A read token that exists only in memory, for this drill.
    s.state.write().await.tokens.insert(
        token.id().to_string(),
        TokenEntry {
            id: token.id().to_string(),
            scope: vault_api::Scope::Read,
            hash: blake3::hash(token.secret()),
            label: format!("drill {} (in memory, removed after the drill)", report.id),
            created_at: report.started_at,
            created_by: "vault".into(),
            revoked_at: None,
        },
    );
    let run_as = run_as();
    // The scratch directory (mode 0755: the server's user must reach `data` inside it, which
    // the restore creates 0700 and gives to that user) and the private socket directory.
    for dir in [scratch, socket_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(report, "restore", format!("creating {}: {e}", dir.display()));
        }
    }
    if let Some(user) = &run_as {
        match restore::pg::user_ids(user) {
            Ok((uid, gid)) => {
                let _ = std::os::unix::fs::chown(socket_dir, Some(uid), Some(gid));
            }
            Err(e) => return fail(report, "restore", e.to_string()),
        }
    }
    let ca_pem = match std::fs::read_to_string(&s.config.tls.cert) {
        Ok(p) => p,
        Err(e) => return fail(report, "restore", format!("reading {}: {e}", s.config.tls.cert.display())),
    };
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return fail(report, "restore", format!("finding a free port: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(report, "restore", format!("locating the holdfast binary: {e}")),
    };
    let data = scratch.join("data");
    let opts = restore::Options {
        cluster: cfg.cluster.clone(),
        target: target.clone(),
        near: None,
        backup: None,
        exclusive: false,
        target_dir: data.clone(),
        action: restore::recovery::Action::Promote,
        start: Some(restore::StartOptions {
            port,
            socket_dir: socket_dir.to_path_buf(),
            run_as: run_as.clone(),
            timeout: cfg.timeout,
            tcp: None,
        }),
        parallel: 4,
        verify: cfg.verify,
        holdfast_exe: exe,
        url: url.to_string(),
        ca_pem,
        token: token.expose(),
        user: Some(cfg.user.clone()),
        trust_local: true,
    };
    let drills = &s.drills;
    let cluster = cfg.cluster.clone();
    let progress = move |phase: &str, done: u64, total: u64| {
        drills.set_phase(&cluster, format!("{phase} {} / {} MiB", done >> 20, total >> 20));
    };
    s.drills.set_phase(&cfg.cluster, "restoring".into());
    let restored = restore::run(&opts, &progress).await;
    let server = restore::pg::Server {
        bindir: restore::pg::bindir().unwrap_or_default(),
        data: data.clone(),
        port,
        socket_dir: socket_dir.to_path_buf(),
        run_as,
        log: data.join("holdfast_restore.log"),
        user: Some(cfg.user.clone()),
    };
    let r = match restored {
        Ok(r) => r,
        Err(e) => {
            fail(report, "restore", e.to_string());
            report.log_tail = Some(server.log_tail());
            return;
        }
    };
    report.backup = Some(r.backup.clone());
    report.recovered_lsn = r.recovered_lsn.clone();
    report.last_commit = r.last_replayed_commit.clone();
    report.rto_seconds = r.ready_seconds;
    report.base_seconds = Some(r.base.seconds);
    report.base_bytes = Some(r.base.bytes);
    report.replay_seconds = r.replay_seconds;
    // The replay speed this restore showed on the vault's host: the cluster's replay budget
    // (`backup_replay_budget_seconds`) converts into WAL bytes with it.
    let start = inventory.backups.iter().find(|b| b.backup.id == r.backup).map(|b| b.backup.start_lsn);
    let reached = r.recovered_lsn.as_deref().and_then(|l| l.parse::<pgfmt::Lsn>().ok());
    if let (Some(start), Some(reached), Some(secs), Some(Ok(rt))) =
        (start, reached, r.replay_seconds, s.collector.get().map(|c| c.cluster(&cfg.cluster)))
    {
        rt.note_replay(reached.0.saturating_sub(start.0), secs, format!("drill of backup {}", r.backup));
    }
    report.checks.push(check(
        "restore",
        true,
        format!(
            "backup {} ({} MiB) restored and started in {:.1} s",
            r.backup,
            r.base.bytes >> 20,
            r.ready_seconds.unwrap_or(0.0)
        ),
    ));
    report.checks.push(check(
        "target reached",
        r.reached,
        format!(
            "recovered to {}{}",
            r.recovered_lsn.as_deref().unwrap_or("?"),
            r.last_replayed_commit.as_deref().map(|c| format!(", last commit {c}")).unwrap_or_default()
        ),
    ));
    if let Some(v) = &r.verify {
        report.checks.push(check("pg_amcheck", v == "passed", v.clone()));
    }
    s.drills.set_phase(&cfg.cluster, "checks".into());
    let checks = cfg.checks.clone();
    let srv = server.clone();
    let more = tokio::task::spawn_blocking(move || run_checks(&srv, &checks))
        .await
        .unwrap_or_else(|e| vec![check("checks", false, format!("the check task failed: {e}"))]);
    report.checks.extend(more);
    if report.checks.iter().any(|c| !c.ok) {
        report.log_tail = Some(server.log_tail());
    }
}

/// A uniformly drawn WAL record start in the restorable window (see [`DrillPoint::Random`]);
/// `None` when the window holds no record after the oldest backup's consistency point.
async fn random_record(
    s: &Shared,
    cfg: &DrillConfig,
    inventory: &vault_api::status::Inventory,
    window: &vault_api::status::Window,
) -> Option<pgfmt::Lsn> {
    use pgfmt::{TimelineId, lsn_to_segno, segment_name, segment_start};
    let lo = inventory
        .backups
        .iter()
        .filter(|b| b.backup.stop_lsn >= window.earliest_lsn)
        .map(|b| b.backup.stop_lsn)
        .min()?;
    let hi = window.latest_lsn;
    if lo >= hi {
        return None;
    }
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).ok()?;
    let x = pgfmt::Lsn(lo.0 + u64::from_le_bytes(b) % (hi.0 - lo.0));
    let seg_size = inventory.segment_size?;
    let run = inventory.wal.iter().rev().find(|r| r.start <= x && x < r.end)?;
    let segno = lsn_to_segno(x, seg_size);
    let name = segment_name(TimelineId(run.timeline), segno, seg_size);
    let rt = s.collector.get()?.cluster(&cfg.cluster).ok()?;
    let (bytes, valid) = rt.wal_file(&name).await.ok()?;
    let start = segment_start(segno, seg_size);
    let mut reader = pgfmt::wal::WalReader::new(&bytes[..valid as usize], start, seg_size);
    let mut before = None;
    for rec in reader.by_ref() {
        let Ok(rec) = rec else { break };
        if rec.lsn < lo || rec.end_lsn > hi {
            continue;
        }
        if rec.lsn >= x {
            return Some(rec.lsn);
        }
        before = Some(rec.lsn);
    }
    before
}

/// Built-in checks (every database accepts connections and answers) and the configured SQL
/// assertions, on the restored server.
fn run_checks(server: &restore::pg::Server, checks: &[crate::config::DrillCheck]) -> Vec<DrillCheck> {
    let mut out = Vec::new();
    match server.query("SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database WHERE datallowconn")
    {
        Ok(Some(list)) => {
            let dbs: Vec<&str> = list.split_whitespace().collect();
            let bad: Vec<String> = dbs
                .iter()
                .filter_map(|db| match server.query_db(db, "SELECT 1") {
                    Ok(Some(v)) if v == "1" => None,
                    Ok(other) => Some(format!("{db}: {other:?}")),
                    Err(e) => Some(format!("{db}: {e}")),
                })
                .collect();
            out.push(if bad.is_empty() {
                check("databases answer", true, format!("{} databases: {}", dbs.len(), dbs.join(", ")))
            } else {
                check("databases answer", false, bad.join("; "))
            });
        }
        Ok(None) => out.push(check("databases answer", false, "the server does not accept connections")),
        Err(e) => out.push(check("databases answer", false, e.to_string())),
    }
    for c in checks {
        out.push(match server.query_db(&c.database, &c.sql) {
            Ok(Some(v)) if v == "t" || v == "true" => check(&c.name, true, "true"),
            Ok(Some(v)) => check(&c.name, false, format!("returned {v:?}, expected true ({})", c.sql)),
            Ok(None) => check(&c.name, false, "the server does not accept connections"),
            Err(e) => check(&c.name, false, e.to_string()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, started: i64, ok: bool) -> DrillReport {
        DrillReport {
            id: id.into(),
            cluster: "shop".into(),
            trigger: "schedule".into(),
            started_at: Timestamp(started),
            finished_at: Timestamp(started + 60),
            target: "latest".into(),
            backup: None,
            recovered_lsn: None,
            last_commit: None,
            rto_seconds: Some(30.0),
            base_seconds: None,
            base_bytes: None,
            replay_seconds: None,
            freshness_seconds: None,
            checks: vec![check("restore", ok, "x")],
            ok,
            verdict: String::new(),
            log_tail: None,
        }
    }

    fn capture_with_window(earliest: i64) -> ClusterStatus {
        ClusterStatus {
            name: "shop".into(),
            window: Some(vault_api::status::Window {
                earliest_lsn: pgfmt::Lsn(0),
                earliest_time: Timestamp(earliest),
                latest_lsn: pgfmt::Lsn(1),
                latest_time: Timestamp(earliest + 10),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn overdue_and_next_due_follow_the_last_passing_drill() {
        let keys = store::MasterKeys::from_bytes([1; 32], [2; 32]);
        let d = Drills::new(&keys);
        let mut cfg = DrillConfig::default_for("shop");
        cfg.every = Some(Duration::from_secs(3600));
        cfg.overdue_after = Some(Duration::from_secs(7200));
        let cap = capture_with_window(1_000);
        // Nothing drilled yet: due at once; overdue once the oldest restorable point is old.
        let st = status(&d, &cfg, &[], Some(&cap), Timestamp(2_000));
        assert_eq!(st.next_due, Some(Timestamp(2_000)));
        assert!(!st.overdue);
        assert!(status(&d, &cfg, &[], Some(&cap), Timestamp(1_000 + 7_201)).overdue);
        // No window (nothing to restore): not due, not overdue.
        let st = status(&d, &cfg, &[], None, Timestamp(100_000));
        assert_eq!((st.next_due, st.overdue), (None, false));
        // A failed drill does not reset the overdue clock; a passing one does.
        let reps = vec![report("a", 10_000, true), report("b", 14_000, false)];
        let st = status(&d, &cfg, &reps, Some(&cap), Timestamp(10_060 + 7_201));
        assert!(st.overdue);
        assert_eq!(st.next_due, Some(Timestamp(14_000 + 3_600)));
        assert_eq!((st.total, st.failed), (2, 1));
        assert!(!st.last.unwrap().ok);
        assert_eq!(st.last_passed_at, Some(Timestamp(10_060)));
    }

    #[test]
    fn only_drill_directories_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let mine = root.path().join("7c3bbfa1bbd9b280740979330092b29b-738599de77c09c8f");
        let sock = root.path().join("holdfast-drill-738599de77c09c8f");
        let other = root.path().join("store");
        for d in [&mine, &sock, &other] {
            std::fs::create_dir_all(d.join("x")).unwrap();
        }
        remove_drill_dir(&mine).unwrap();
        remove_drill_dir(&sock).unwrap();
        assert!(remove_drill_dir(&other).is_err());
        assert!(remove_drill_dir(root.path()).is_err());
        assert!(!mine.exists() && !sock.exists() && other.exists());
    }

    #[test]
    fn reports_verify_and_forgeries_are_left_out() {
        let keys = store::MasterKeys::from_bytes([1; 32], [2; 32]);
        let d = Drills::new(&keys);
        let good = d.sign(&report("a", 1, true));
        assert_eq!(good.verify(&d.public_key()).unwrap().id, "a");
        // Same key derived again (e.g. the vault rebuilt from escrow).
        assert_eq!(Drills::new(&keys).public_key(), d.public_key());
        let mut forged = good.clone();
        forged.report = forged.report.replace("\"ok\":true", "\"ok\":false");
        assert_eq!(forged.verify(&d.public_key()).unwrap_err(), vault_api::drill::ReportError::BadSignature);
        let other = Drills::new(&store::MasterKeys::from_bytes([3; 32], [2; 32])).sign(&report("c", 1, true));
        assert!(matches!(
            other.verify(&d.public_key()).unwrap_err(),
            vault_api::drill::ReportError::OtherKey { .. }
        ));
        let mut state = VaultState::default();
        for (i, signed) in [good, forged, other].into_iter().enumerate() {
            state.drills.push(vault_api::drill::DrillEntry {
                record: format!("catalog/{i}"),
                written_at: Timestamp(1),
                signed,
            });
        }
        let ids: Vec<String> = reports(&d, &state, Some("shop")).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a"]);
    }
}
