//! Point-in-time restore from the vault, over its API with a read token.
//!
//! The restore side of the trust boundary: it holds no key and never touches the vault's
//! store; the vault decrypts and checks every chunk and serves plaintext over TLS. The steps:
//!
//! 1. [`plan`] (pure): from the vault's inventory and a [`Target`], pick the newest base
//!    backup that can reach the target, check the target lies in the restorable window and
//!    that the WAL from the backup onwards has no gap — refusing, with the segment named,
//!    before anything is written.
//! 2. [`materialize`]: the backup's files, fetched in parallel ranges and written in place
//!    (memory bounded by `parallel × range`).
//! 3. [`recovery`]: `recovery.signal` and the recovery settings; `restore_command` calls
//!    `holdfast restore-wal`, which takes segments from a prefetch spool or the vault
//!    ([`wal`]) and makes PostgreSQL abort — never silently stop early — when the vault is
//!    unreachable or a segment it should have is missing.
//! 4. [`pg`]: optionally start PostgreSQL and wait until recovery reached the target.
//!
//! `store` is a dependency for its `Timestamp` type only (re-exported through `vault-api`'s
//! wire types); nothing here reads a repository.

pub mod check;
pub mod materialize;
pub mod pg;
pub mod plan;
pub mod recovery;
pub mod wal;

pub use plan::{Plan, PlanError, Target, plan};

/// Errors of a restore, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Boxed: a refusal carries the restorable intervals, and every `Result` here would carry
    /// their size.
    #[error(transparent)]
    Plan(Box<PlanError>),
    #[error("the vault: {0}")]
    Vault(#[from] vault_api::ClientError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("{0}")]
    Damaged(String),
    /// The restored server stopped during recovery; the caller adds what was asked.
    #[error(
        "PostgreSQL stopped during recovery{}; its log ({}) says:\n  {}",
        if *ended_before_target { " before reaching the target" } else { "" },
        log.display(),
        postgres.join("\n  ")
    )]
    StoppedShort { postgres: Vec<String>, ended_before_target: bool, log: PathBuf },
}

impl From<PlanError> for RestoreError {
    fn from(e: PlanError) -> Self {
        RestoreError::Plan(Box::new(e))
    }
}

impl RestoreError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
        let what = what.into();
        move |source| RestoreError::Io { what, source }
    }
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_api::VaultClient;

/// Starting the restored server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub port: u16,
    /// Where the server's Unix socket goes.
    pub socket_dir: PathBuf,
    /// PostgreSQL refuses root: when holdfast runs as root, the data directory is given to
    /// this user and the server runs as it.
    pub run_as: Option<String>,
    /// How long recovery may take.
    pub timeout: Duration,
    /// Also listen on TCP at this address (and `port`), e.g. `127.0.0.1`; `None`: the Unix
    /// socket only.
    pub tcp: Option<std::net::IpAddr>,
}

/// One restore.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: String,
    pub target: Target,
    /// Where an xid or restore point target lies, when known (an incident's LSN): the backup
    /// is chosen in the restorable interval holding it.
    pub near: Option<pgfmt::Lsn>,
    /// Restore from this backup instead of the newest that reaches the target.
    pub backup: Option<String>,
    /// Stop just before the target (`recovery_target_inclusive = false`): for `--xid`, the
    /// state before that transaction committed; for `--lsn`, before the record there.
    pub exclusive: bool,
    pub target_dir: PathBuf,
    pub action: recovery::Action,
    pub start: Option<StartOptions>,
    /// Concurrent range fetches.
    pub parallel: usize,
    /// Run `pg_amcheck` on the started server.
    pub verify: bool,
    /// The holdfast binary `restore_command` runs.
    pub holdfast_exe: PathBuf,
    pub url: String,
    pub ca_pem: String,
    pub token: String,
    /// The role the self-check logs in as (`None`: `PGUSER`, else `postgres`).
    pub user: Option<String>,
    /// Replace the restored `pg_hba.conf` by one line, `local all all trust`: for a scratch
    /// copy (a drill) that is reachable only through its private socket directory, so that it
    /// can be checked without the source's passwords. The original is kept beside it.
    pub trust_local: bool,
}

/// What a restore did, with its timing breakdown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub target: String,
    pub backup: String,
    pub backup_stop_lsn: String,
    pub target_dir: PathBuf,
    pub base: materialize::Materialized,
    pub wal_segments_planned: usize,
    pub wal_prefetched_segments: u64,
    pub wal_prefetched_bytes: u64,
    pub wal_fetch_seconds: f64,
    pub replay_seconds: Option<f64>,
    /// Command start → the server accepts connections at the target (the RTO).
    pub ready_seconds: Option<f64>,
    pub total_seconds: f64,
    /// Where recovery stopped (when the server was started).
    pub recovered_lsn: Option<String>,
    pub last_replayed_commit: Option<String>,
    pub port: Option<u16>,
    pub socket_dir: Option<PathBuf>,
    /// `address:port` the server also listens on, when asked.
    pub tcp: Option<String>,
    pub action: recovery::Action,
    /// `pg_amcheck` outcome with `--verify`: "passed", or what it found, or why it was skipped.
    pub verify: Option<String>,
    /// One line: what was restored and whether the self-check passed.
    pub verdict: String,
    /// Recovery reached the target and stopped before anything after it — only when checked
    /// ([`check`]).
    pub reached: bool,
    /// How reaching the target was checked and what that showed, or what could not be checked.
    pub target_check: Option<String>,
    /// `reached`, and `--verify` (if asked) passed.
    pub ok: bool,
}

/// The environment variable that sets how long one request keeps retrying an unreachable
/// vault, in seconds (default [`DEFAULT_RETRY_SECONDS`]). The `restore_command` helper inherits
/// it from the server `holdfast restore --start` starts.
pub const RETRY_SECONDS_ENV: &str = "HOLDFAST_VAULT_RETRY_SECONDS";

/// 30 s: long enough for a vault restart.
pub const DEFAULT_RETRY_SECONDS: u64 = 30;

/// How long one request keeps retrying an unreachable vault: [`RETRY_SECONDS_ENV`] if set to a
/// number, else [`DEFAULT_RETRY_SECONDS`].
pub fn retry_budget() -> Duration {
    let secs = std::env::var(RETRY_SECONDS_ENV).ok().and_then(|v| v.trim().parse().ok());
    Duration::from_secs(secs.unwrap_or(DEFAULT_RETRY_SECONDS))
}

/// Runs `f` until it succeeds or fails other than by the vault being unreachable, waiting
/// 200 ms, then twice as long each time up to 5 s, for at most [`retry_budget`] in all.
pub(crate) async fn with_retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, vault_api::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, vault_api::ClientError>>,
{
    let budget = retry_budget();
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(vault_api::ClientError::Transport { .. }) if started.elapsed() + delay <= budget => {
                tracing::warn!(attempt, "{what}: the vault is unreachable; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Aborts a task when dropped (a restore that fails or is cancelled leaves no prefetcher behind).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Segments the prefetcher keeps ready ahead of replay (16 MiB each by default)…
const PREFETCH_AHEAD: usize = 8;
/// …fetched this many at a time (the vault assembles and decrypts each; two cores here).
const PREFETCH_PARALLEL: usize = 3;

/// Left in the target directory from the start of a restore until it has succeeded: a
/// directory holding it is a restore cut short, which a rerun may clear and start again.
pub const INCOMPLETE_MARKER: &str = "holdfast_restore.incomplete";

/// Refuses a non-empty target directory — unless it holds only a restore of ours that was cut
/// short (the marker is there and no server runs on it), which is cleared so the rerun starts
/// clean.
fn ensure_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => {
            if d.next().is_none() {
                return Ok(());
            }
            if dir.join(INCOMPLETE_MARKER).exists() && !dir.join("postmaster.pid").exists() {
                tracing::warn!(dir = %dir.display(), "clearing a restore that was cut short, to start clean");
                clear_incomplete(dir)?;
                return Ok(());
            }
            Err(RestoreError::Refused(format!(
                "the target directory {} is not empty: restore into an empty or new directory (nothing was written)",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Io { what: format!("reading {}", dir.display()), source: e }),
    }
}

/// Removes everything inside `dir` (a restore of ours cut short: checked by the caller).
fn clear_incomplete(dir: &Path) -> Result<(), RestoreError> {
    for e in std::fs::read_dir(dir).map_err(RestoreError::io(format!("reading {}", dir.display())))? {
        let p = e.map_err(RestoreError::io(format!("reading {}", dir.display())))?.path();
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(RestoreError::io(format!("clearing {}", p.display())))?;
    }
    Ok(())
}

/// What to say when the chosen backup turns out damaged: which other backups avoid the
/// damaged chunk and still reach the target.
fn damaged(
    inventory: &vault_api::status::Inventory,
    opts: &Options,
    message: &str,
    without: &[String],
) -> RestoreError {
    let usable: Vec<String> = without
        .iter()
        .filter(|id| plan::plan_near(inventory, &opts.target, Some(id), opts.near).is_ok())
        .cloned()
        .collect();
    let advice = match usable.first() {
        Some(id) => format!(
            "backup {id} does not use the damaged chunk and also reaches {}: rerun with --backup {id}",
            opts.target
        ),
        None => format!("no other complete backup avoids the damaged chunk and reaches {}", opts.target),
    };
    RestoreError::Damaged(format!(
        "{message}. {advice}. The target directory holds an incomplete restore that cannot be started \
         (global/pg_control is not in place); a rerun into it starts clean"
    ))
}

/// The context of PostgreSQL stopping short: what was asked, from which backup, and where else
/// the target may lie.
fn stopped_short(plan: &Plan, e: &RestoreError) -> RestoreError {
    let w = &plan.window;
    let others: Vec<&vault_api::window::Interval> =
        plan.intervals.iter().filter(|i| i.window.latest_lsn != w.latest_lsn).collect();
    let elsewhere = if others.is_empty() {
        String::new()
    } else {
        format!(
            " Other restorable intervals: {} (their backups: {}); rerun with --backup from the one holding the target.",
            vault_api::window::describe(&others.iter().map(|i| (*i).clone()).collect::<Vec<_>>()),
            others.iter().map(|i| i.backups.join(", ")).collect::<Vec<_>>().join("; ")
        )
    };
    RestoreError::Postgres(format!(
        "recovery from backup {} did not reach {}: the WAL it can replay runs from {} ({}) to {} ({}).{elsewhere} \
         The target directory holds a half-recovered copy that is marked incomplete: a rerun into it starts clean.\n{e}",
        plan.backup.backup.id, plan.target, w.earliest_time, w.earliest_lsn, w.latest_time, w.latest_lsn
    ))
}

/// The vault's WAL records around `at` (from the start of the segment holding the position
/// 64 KiB before it, to 64 KiB after it), decoded with
/// `pg_waldump` in a scratch directory inside the target directory, removed afterwards.
/// Why the self-check could not read the WAL around the replay position.
#[derive(Debug, thiserror::Error)]
enum WalCheckError {
    #[error("no segment holds the replay position")]
    NoSegment,
    #[error("the vault has none of the WAL around it")]
    NoWal,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching {name}: {source}")]
    Fetch {
        name: String,
        #[source]
        source: vault_api::ClientError,
    },
    #[error(transparent)]
    Client(#[from] vault_api::ClientError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the pg_waldump task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Waldump(#[from] check::WaldumpError),
}

async fn wal_around(
    opts: &Options,
    plan: &Plan,
    at: pgfmt::Lsn,
) -> Result<Vec<check::Record>, WalCheckError> {
    let seg = plan.segment_size;
    let lo = pgfmt::Lsn(at.0.saturating_sub(64 << 10).max(plan.backup.backup.start_lsn.0));
    let hi = pgfmt::Lsn(at.0 + (64 << 10));
    // The timeline of the segment holding `at`, from the plan (the last one names it if
    // recovery went past the plan, for --latest).
    let name_of = |segno: u64| -> Option<(u32, String)> {
        plan.segments
            .iter()
            .rev()
            .filter_map(|n| pgfmt::parse_segment_name(n, seg).ok().map(|(t, s)| (t, s, n)))
            .find(|(_, s, _)| *s == segno)
            .map(|(t, _, n)| (t.0, n.clone()))
            .or_else(|| {
                let (t, _) = pgfmt::parse_segment_name(plan.segments.last()?, seg).ok()?;
                Some((t.0, pgfmt::segment_name(t, segno, seg)))
            })
    };
    let (tli, _) = name_of(pgfmt::lsn_to_segno(at, seg)).ok_or(WalCheckError::NoSegment)?;
    let dir = opts.target_dir.join("holdfast_check_wal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| WalCheckError::Io { what: format!("creating {}", dir.display()), source: e })?;
    let result = async {
        let client = VaultClient::new(&opts.url, opts.ca_pem.as_bytes(), Some(opts.token.clone()))?;
        let mut first = None;
        for segno in pgfmt::lsn_to_segno(lo, seg)..=pgfmt::lsn_to_segno(hi, seg) {
            let Some((t, name)) = name_of(segno) else { continue };
            if t != tli {
                continue;
            }
            match with_retry(&name, || client.wal_file(&opts.cluster, &name)).await {
                Ok((bytes, _)) => {
                    std::fs::write(dir.join(&name), &bytes)
                        .map_err(|e| WalCheckError::Io { what: format!("writing {name}"), source: e })?;
                    first.get_or_insert(segno);
                }
                Err(vault_api::ClientError::Api { status: 404, .. }) => break,
                Err(e) => return Err(WalCheckError::Fetch { name, source: e }),
            }
        }
        let Some(first) = first else { return Err(WalCheckError::NoWal) };
        // From a segment's start: pg_waldump finds the first record there from the page
        // header, where an arbitrary position may lie in a switched segment's zeroed tail.
        let start = pgfmt::segment_start(first, seg).max(plan.backup.backup.start_lsn);
        let bindir = pg::bindir()?;
        let d = dir.clone();
        Ok(tokio::task::spawn_blocking(move || check::waldump(&bindir, &d, tli, start, hi)).await??)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Restores `opts.cluster` to `opts.target` into `opts.target_dir`; with `opts.start`, starts
/// PostgreSQL and waits until recovery has reached the target. `progress` is called now and
/// then with (phase, done, total).
pub async fn run(opts: &Options, progress: &(dyn Fn(&str, u64, u64) + Sync)) -> Result<Report, RestoreError> {
    let t0 = Instant::now();
    ensure_empty(&opts.target_dir)?;
    let client = VaultClient::new(&opts.url, opts.ca_pem.as_bytes(), Some(opts.token.clone()))?;
    let inventory = client.inventory(&opts.cluster).await?;
    // A restore point by name: through the vault's index of the restore points in its WAL,
    // refused unless the name occurs exactly once (PostgreSQL stops at the first of a name).
    let mut opts = opts.clone();
    let point = match &opts.target {
        Target::Name(n) => {
            let points = client.restore_points(&opts.cluster).await?;
            let p = plan::resolve_restore_point(&opts.cluster, &points, n)?;
            opts.near = Some(p.lsn);
            Some(p.lsn)
        }
        _ => None,
    };
    let opts = &opts;
    let plan = plan::plan_near(&inventory, &opts.target, opts.backup.as_deref(), opts.near)?;
    // A time goes by the server's commit stamps: refused where the vault saw its clock lie.
    if matches!(opts.target, Target::Time(_)) {
        plan::check_time_target(&plan, &client.incidents(&opts.cluster).await?)?;
    }
    tracing::info!(
        cluster = %opts.cluster, backup = %plan.backup.backup.id, segments = plan.segments.len(),
        "restoring {}", opts.target
    );
    {
        // Missing parents with the usual mode (0700 on them would keep the server's user, when
        // it is not ours, from reaching its data directory); the directory itself 0700, as
        // PostgreSQL requires.
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = opts.target_dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(RestoreError::io(format!("creating {}", parent.display())))?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.target_dir)
            .map_err(RestoreError::io(format!("creating {}", opts.target_dir.display())))?;
    }
    let marker = opts.target_dir.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, format!("holdfast restore of {} to {} started\n", opts.cluster, opts.target))
        .map_err(RestoreError::io(format!("writing {}", marker.display())))?;
    let helper = wal::HelperConfig {
        url: opts.url.clone(),
        ca_pem: opts.ca_pem.clone(),
        token: opts.token.clone(),
        cluster: opts.cluster.clone(),
        expected: plan.segments.clone(),
        spool: opts.target_dir.join(recovery::SPOOL_DIR),
        standby: false,
        feed_until: None,
        stage: None,
    };
    // Base data, with progress.
    let shared = Arc::new(materialize::Progress::default());
    let fetch = materialize::materialize(
        &client,
        &plan.backup.backup.id,
        &opts.target_dir,
        opts.parallel,
        shared.clone(),
    );
    tokio::pin!(fetch);
    let base = loop {
        tokio::select! {
            r = &mut fetch => break match r {
                Ok(m) => m,
                Err(RestoreError::Vault(vault_api::ClientError::Damaged { message, backups_without_it })) => {
                    return Err(damaged(&inventory, opts, &message, &backups_without_it));
                }
                Err(RestoreError::Vault(e @ vault_api::ClientError::Transport { .. })) => {
                    return Err(RestoreError::Refused(format!(
                        "{e}; gave up after retrying for {} s (set {RETRY_SECONDS_ENV} to wait longer). The target directory holds an incomplete restore \
                         that cannot be started (global/pg_control is not in place); rerun the same command once the \
                         vault is reachable: it starts clean",
                        retry_budget().as_secs()
                    )));
                }
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                progress("base data", shared.done.load(std::sync::atomic::Ordering::Relaxed), shared.total.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    };
    // Restoring and starting to a target with promotion: PostgreSQL pauses at the target and
    // this process calls `pg_promote()`. Both end recovery at the same record; the difference
    // is the checkpoint: `recovery_target_action = 'promote'` writes an end-of-recovery
    // checkpoint (every page replay dirtied, flushed while nobody can connect), a promotion
    // writes an end-of-recovery record and lets the checkpointer flush in the background.
    // Without `--start` the person starting the server gets PostgreSQL's own promotion.
    let promote_here =
        opts.start.is_some() && opts.action == recovery::Action::Promote && plan.target != Target::Latest;
    let written_action = if promote_here { recovery::Action::Pause } else { opts.action };
    let helper_path = recovery::write(
        &opts.target_dir,
        &plan,
        written_action,
        opts.exclusive,
        &opts.holdfast_exe,
        &helper,
    )?;
    let mut report = Report {
        cluster: opts.cluster.clone(),
        target: opts.target.to_string(),
        backup: plan.backup.backup.id.clone(),
        backup_stop_lsn: plan.backup.backup.stop_lsn.to_string(),
        target_dir: opts.target_dir.clone(),
        base,
        wal_segments_planned: plan.segments.len(),
        wal_prefetched_segments: 0,
        wal_prefetched_bytes: 0,
        wal_fetch_seconds: 0.0,
        replay_seconds: None,
        ready_seconds: None,
        total_seconds: 0.0,
        recovered_lsn: None,
        last_replayed_commit: None,
        port: None,
        socket_dir: None,
        tcp: None,
        action: opts.action,
        verify: None,
        verdict: String::new(),
        reached: false,
        target_check: None,
        ok: true,
    };
    if opts.trust_local {
        let hba = opts.target_dir.join("pg_hba.conf");
        let _ = std::fs::rename(&hba, opts.target_dir.join("pg_hba.conf.source"));
        std::fs::write(&hba, "# holdfast drill: a scratch copy reachable only through its private socket\nlocal all all trust\n")
            .map_err(RestoreError::io(format!("writing {}", hba.display())))?;
    }
    let Some(start) = &opts.start else {
        let _ = std::fs::remove_file(&marker);
        report.total_seconds = t0.elapsed().as_secs_f64();
        report.verdict = format!(
            "restored backup {} into {}; start PostgreSQL on it to replay WAL to {} (restore_command fetches from the vault)",
            report.backup,
            opts.target_dir.display(),
            opts.target
        );
        return Ok(report);
    };
    let server = pg::Server {
        bindir: pg::bindir()?,
        data: opts.target_dir.clone(),
        port: start.port,
        socket_dir: start.socket_dir.clone(),
        run_as: start.run_as.clone(),
        log: opts.target_dir.join("holdfast_restore.log"),
        user: opts.user.clone(),
    };
    let owner = match &start.run_as {
        Some(user) => {
            let (uid, gid) = pg::user_ids(user)?;
            pg::chown_tree(&opts.target_dir, uid, gid)?;
            Some((uid, gid))
        }
        None => None,
    };
    // The prefetcher starts with the server, not with the base data: started with it (tried
    // in issue 18), it took the vault's CPU from the base data on two cores and the restore
    // was slower (bench/restore.sh, scale 10: base data 3.3-4.0 s -> 9.0-11.5 s, replay no
    // faster).
    let stats = Arc::new(wal::PrefetchStats::default());
    let prefetcher = AbortOnDrop(tokio::spawn(wal::prefetch(
        helper.clone(),
        PREFETCH_AHEAD,
        PREFETCH_PARALLEL,
        owner,
        stats.clone(),
    )));
    let t_replay = Instant::now();
    let promote = opts.action == recovery::Action::Promote || opts.target == Target::Latest;
    let s2 = server.clone();
    let timeout = start.timeout;
    let tcp = start.tcp;
    let waited = tokio::task::spawn_blocking(move || {
        s2.start_listening(tcp)?;
        if promote_here {
            s2.promote_when_paused(timeout)?;
        }
        s2.wait_recovered(promote, timeout)
    })
    .await
    .map_err(|e| RestoreError::Postgres(e.to_string()))?;
    drop(prefetcher);
    if let Err(e) = waited {
        return Err(match e {
            RestoreError::StoppedShort { .. } => stopped_short(&plan, &e),
            e => e,
        });
    }
    report.replay_seconds = Some(t_replay.elapsed().as_secs_f64());
    report.ready_seconds = Some(t0.elapsed().as_secs_f64());
    if promote {
        // Replay is over: the promoted server checkpoints as the source's settings say again.
        let replay = opts.target_dir.join(recovery::REPLAY_CONFIG);
        std::fs::write(&replay, "# Emptied by holdfast restore once the server was promoted.\n")
            .map_err(RestoreError::io(format!("writing {}", replay.display())))?;
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.query("SELECT pg_reload_conf()"))
            .await
            .map_err(|e| RestoreError::Postgres(e.to_string()))??;
    }
    report.wal_prefetched_segments = stats.segments.load(std::sync::atomic::Ordering::Relaxed);
    report.wal_prefetched_bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
    report.wal_fetch_seconds = stats.busy_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
    report.port = Some(start.port);
    report.socket_dir = Some(start.socket_dir.clone());
    report.tcp = start.tcp.map(|a| std::net::SocketAddr::new(a, start.port).to_string());
    // Self-check: where did recovery stop, and is that the target?
    let s3 = server.clone();
    let xid = match opts.target {
        Target::Xid(x) => Some(x),
        _ => None,
    };
    let (lsn, commit, xid_status) = tokio::task::spawn_blocking(move || -> Result<_, RestoreError> {
        let lsn = s3.query("SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text")?;
        let commit = s3.query(
            "SELECT coalesce((extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint::text, '')",
        )?;
        let xid_status = match xid {
            Some(x) => {
                let xmax = s3
                    .query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")?
                    .and_then(|v| v.parse::<u64>().ok());
                match xmax.map(|m| check::full_xid(x, m)) {
                    Some(Some(full)) => Some(s3.query(&format!("SELECT coalesce(txid_status({full}), 'unknown (too old)')"))?),
                    Some(None) => Some(None),
                    None => Some(Some("unknown (no snapshot)".to_string())),
                }
            }
            None => None,
        };
        Ok((lsn, commit, xid_status))
    })
    .await
    .map_err(|e| RestoreError::Postgres(e.to_string()))??;
    report.recovered_lsn = lsn.clone();
    let commit_us = commit.as_deref().and_then(|c| c.parse::<i64>().ok());
    report.last_replayed_commit = commit_us.map(|us| {
        let t = vault_types::Timestamp(us.div_euclid(1_000_000)).to_string();
        format!("{}.{:06}Z", t.trim_end_matches('Z'), us.rem_euclid(1_000_000))
    });
    let replay = lsn.as_deref().and_then(|l| l.parse::<pgfmt::Lsn>().ok());
    let outcome = match (&opts.target, replay, xid_status) {
        (_, None, _) => check::Outcome {
            reached: false,
            detail: format!("could not check: the restored server reported no replay position ({lsn:?})"),
        },
        (Target::Xid(x), Some(_), Some(status)) => check::judge_xid(*x, opts.exclusive, status.as_deref()),
        (_, Some(at), _) => {
            let end = match opts.target {
                Target::Lsn(l) => l,
                _ => plan.window.latest_lsn,
            };
            match wal_around(opts, &plan, at).await {
                Ok(records) => {
                    check::judge_wal(&opts.target, point, opts.exclusive, at, commit_us, end, &records)
                }
                Err(e) => check::Outcome {
                    reached: false,
                    detail: format!("could not check {} against the vault's WAL: {e}", opts.target),
                },
            }
        }
    };
    let reached = outcome.reached;
    report.target_check = Some(outcome.detail);
    report.reached = reached;
    report.ok = reached;
    // Recovery reached its target: this is no longer a restore cut short.
    let _ = std::fs::remove_file(&marker);
    if opts.verify {
        let s4 = server.clone();
        let checked = tokio::task::spawn_blocking(move || s4.amcheck(promote))
            .await
            .map_err(|e| RestoreError::Postgres(e.to_string()))?;
        report.verify = Some(match checked {
            Ok(None) => "passed".into(),
            Ok(Some(findings)) => {
                report.ok = false;
                format!("corruption found: {findings}")
            }
            // Read-only (paused) and amcheck not installed in the source: nothing to run with.
            Err(e) if !promote => {
                format!("skipped: {e} (the server is paused read-only; use --promote to install amcheck)")
            }
            Err(e) => {
                report.ok = false;
                format!("failed: {e}")
            }
        });
    }
    if promote {
        // Recovery is over: the read token and spool are no longer needed on this host.
        let _ = std::fs::remove_file(&helper_path);
        let _ = std::fs::remove_dir_all(opts.target_dir.join(recovery::SPOOL_DIR));
    }
    report.total_seconds = t0.elapsed().as_secs_f64();
    report.verdict = format!(
        "{}: cluster {} restored to {} from backup {} — recovered to {}{}, {} in {:.1} s (base data {:.1} s, replay {:.1} s){}; \
         target check: {}; running on port {} (socket in {}{})",
        if report.ok { "OK" } else { "CHECK FAILED" },
        opts.cluster,
        opts.target,
        report.backup,
        report.recovered_lsn.as_deref().unwrap_or("?"),
        report.last_replayed_commit.as_deref().map(|c| format!(", last commit {c}")).unwrap_or_default(),
        if promote { "promoted" } else { "paused at the target" },
        report.total_seconds,
        report.base.seconds,
        report.replay_seconds.unwrap_or(0.0),
        report.verify.as_deref().map(|v| format!("; pg_amcheck {v}")).unwrap_or_default(),
        report.target_check.as_deref().unwrap_or("not run"),
        start.port,
        start.socket_dir.display(),
        report.tcp.as_deref().map(|a| format!(", and TCP {a}")).unwrap_or_default(),
    );
    Ok(report)
}
