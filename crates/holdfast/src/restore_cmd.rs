//! `holdfast restore` and `holdfast restore-wal` (the `restore_command` helper).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use restore::recovery::Action;
use restore::{Target, wal};

/// Arguments of `holdfast restore`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["time", "lsn", "xid", "restore_point", "latest", "before_incident"])))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub remote: crate::Remote,
    /// The cluster's name in the vault's config.
    #[arg(long)]
    pub cluster: String,
    /// Recover to this time (RFC 3339, e.g. 2026-11-23T09:41:07Z; server clock, whole seconds).
    #[arg(long)]
    pub time: Option<store::Timestamp>,
    /// Recover to this WAL position (e.g. 0/3000060).
    #[arg(long)]
    pub lsn: Option<String>,
    /// Recover to the commit of this transaction.
    #[arg(long)]
    pub xid: Option<u32>,
    /// Recover to a restore point made with pg_create_restore_point(). Refused when the name
    /// occurs more than once in the vault's WAL (PostgreSQL would stop at the first): each
    /// occurrence is listed; restore the one meant with --lsn (see `holdfast restore-points`).
    #[arg(long)]
    pub restore_point: Option<String>,
    /// Recover everything the vault holds.
    #[arg(long)]
    pub latest: bool,
    /// Recover to just before the destructive transaction of incident N (`holdfast incidents`).
    #[arg(long)]
    pub before_incident: Option<usize>,
    /// Stop just before the target instead of just after it: with --xid, the state before
    /// that transaction committed (the undo of a destructive transaction); with --lsn, before
    /// the record at that position; with --time, only commits strictly before it.
    #[arg(long, conflicts_with_all = ["latest", "restore_point"])]
    pub exclusive: bool,
    /// Restore from this base backup (e.g. an older one when the newest is damaged) instead
    /// of the newest that reaches the target.
    #[arg(long)]
    pub backup: Option<String>,
    /// Where to restore: must be empty or absent (or hold a holdfast restore that was cut
    /// short, which is cleared so the rerun starts clean).
    #[arg(long)]
    pub target_dir: PathBuf,
    /// Start PostgreSQL on the restored data and wait until recovery reached the target.
    #[arg(long)]
    pub start: bool,
    /// Port for --start: the server then also listens on 127.0.0.1 at it (default: a free
    /// port, Unix socket only).
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// At the target, end recovery and open for writes (default: pause, read-only, to inspect).
    #[arg(long, conflicts_with = "pause")]
    pub promote: bool,
    /// At the target, stay paused in recovery (the default).
    #[arg(long)]
    pub pause: bool,
    /// With --start: run pg_amcheck on every database once the target is reached.
    #[arg(long, requires = "start")]
    pub verify: bool,
    /// Concurrent fetches of base data.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Minutes recovery may take with --start.
    #[arg(long, default_value_t = 60)]
    pub timeout_minutes: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub async fn restore(a: RestoreArgs) -> Result<u8> {
    let mut exclusive = a.exclusive;
    // Where the incident's transaction lies: the plan picks a backup of the interval holding it.
    let mut near = None;
    let before = match a.before_incident {
        Some(n) => {
            let incidents =
                a.remote.client()?.incidents(&a.cluster).await.context("reading the cluster's incidents")?;
            let i = n.checked_sub(1).and_then(|k| incidents.get(k)).ok_or_else(|| {
                anyhow!(
                    "cluster {} has no incident {n} (it has {}: see `holdfast incidents`)",
                    a.cluster,
                    incidents.len()
                )
            })?;
            exclusive = true;
            near = i.lsn;
            Some(match i.restore_target {
                Some(vault_api::status::IncidentTarget::BeforeXid { xid }) => Target::Xid(xid),
                Some(vault_api::status::IncidentTarget::BeforeLsn { lsn }) => Target::Lsn(lsn),
                None => anyhow::bail!(
                    "incident {n} ({}) names no destructive transaction to restore to just before; use --time or --lsn",
                    i.kind
                ),
            })
        }
        None => None,
    };
    let target = match (&a.time, &a.lsn, &a.xid, &a.restore_point, a.latest) {
        _ if before.is_some() => before.clone().unwrap_or(Target::Latest),
        (Some(t), ..) => Target::Time(*t),
        (_, Some(l), ..) => Target::Lsn(l.parse().map_err(|e| anyhow!("--lsn {l:?}: {e} (e.g. 0/3000060)"))?),
        (_, _, Some(x), ..) => Target::Xid(*x),
        (_, _, _, Some(n), _) => Target::Name(n.clone()),
        _ => Target::Latest,
    };
    let ca_pem = std::fs::read_to_string(&a.remote.ca)
        .with_context(|| format!("reading the vault certificate {}", a.remote.ca.display()))?;
    let token = std::fs::read_to_string(&a.remote.token_file)
        .with_context(|| format!("reading the token file {}", a.remote.token_file.display()))?
        .trim()
        .to_string();
    let target_dir = std::path::absolute(&a.target_dir)
        .with_context(|| format!("resolving {}", a.target_dir.display()))?;
    // The server's Unix socket goes into the target directory (its data directory) when the
    // path fits the ~100-byte limit of socket paths, so that nothing is left elsewhere; else
    // into a private directory under /tmp, removed again when the restore fails or is
    // interrupted (after a successful --start the server uses it; the output names it).
    let socket_in_target = target_dir.as_os_str().len() + "/.s.PGSQL.65535".len() < 100;
    let start = if a.start {
        let socket_dir = if socket_in_target {
            target_dir.clone()
        } else {
            let d = std::env::temp_dir().join(format!("holdfast-restore-{}", std::process::id()));
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        };
        let run_as = restore::pg::running_as_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as
            && !socket_in_target
        {
            let (uid, gid) = restore::pg::user_ids(user)?;
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))?;
        }
        Some(restore::StartOptions {
            port: match a.port {
                Some(p) => p,
                None => free_port()?,
            },
            socket_dir,
            run_as,
            timeout: Duration::from_secs(a.timeout_minutes * 60),
            // --port: reachable at 127.0.0.1:port as well (the socket is private to this user).
            tcp: a.port.map(|_| std::net::IpAddr::from([127, 0, 0, 1])),
        })
    } else {
        None
    };
    let opts = restore::Options {
        cluster: a.cluster.clone(),
        target,
        near,
        backup: a.backup.clone(),
        exclusive,
        target_dir,
        action: if a.promote { Action::Promote } else { Action::Pause },
        start,
        parallel: a.parallel,
        verify: a.verify,
        holdfast_exe: std::env::current_exe().context("locating the holdfast binary for restore_command")?,
        url: a.remote.url.clone(),
        ca_pem,
        token,
        user: None,
        trust_local: false,
    };
    let tty = std::io::stderr().is_terminal();
    let progress = move |phase: &str, done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let line = format!("{phase}: {} / {} MiB ({pct}%)", done >> 20, total >> 20);
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    };
    // The temporary socket directory, if one was made: removed whenever no server uses it.
    let temp_socket = opts.start.as_ref().map(|s| s.socket_dir.clone()).filter(|_| !socket_in_target);
    let cleanup = |stop_server: bool| {
        if stop_server && opts.target_dir.join("postmaster.pid").exists() {
            let server = restore::pg::Server {
                bindir: restore::pg::bindir().unwrap_or_default(),
                data: opts.target_dir.clone(),
                port: 0,
                socket_dir: opts.target_dir.clone(),
                run_as: opts.start.as_ref().and_then(|s| s.run_as.clone()),
                log: opts.target_dir.join("holdfast_restore.log"),
                user: None,
            };
            if let Err(e) = server.stop() {
                eprintln!("stopping the restored server: {e}");
            }
        }
        if let Some(d) = &temp_socket {
            let _ = std::fs::remove_dir(d);
        }
    };
    let report = tokio::select! {
        r = restore::run(&opts, &progress) => match r {
            Ok(r) => r,
            Err(e) => {
                cleanup(false);
                return Err(anyhow!("{e}"));
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Interrupted: stop a server started on the copy, remove what is not the user's.
            cleanup(true);
            eprintln!(
                "\ninterrupted: {} holds an incomplete restore (a rerun into it starts clean)",
                opts.target_dir.display()
            );
            return Ok(130);
        }
    };
    if tty {
        eprintln!();
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "base data   {:>8.1} s  {} files, {} MiB",
            report.base.seconds,
            report.base.files,
            report.base.bytes >> 20
        );
        if let Some(r) = report.replay_seconds {
            println!(
                "WAL fetch   {:>8.1} s  {} segments prefetched, {} MiB (overlapping replay)",
                report.wal_fetch_seconds,
                report.wal_prefetched_segments,
                report.wal_prefetched_bytes >> 20
            );
            println!("replay      {r:>8.1} s");
        }
        println!("total       {:>8.1} s", report.total_seconds);
        if let Some(c) = &report.target_check {
            println!("target      {}: {c}", if report.reached { "reached" } else { "NOT CONFIRMED" });
        }
        if let (Some(port), Some(dir)) = (report.port, &report.socket_dir) {
            println!(
                "connect     psql -h {} -p {port}{}",
                dir.display(),
                report
                    .tcp
                    .as_deref()
                    .map(|t| format!("   or   psql -h 127.0.0.1 -p {port} (listening on {t})"))
                    .unwrap_or_default()
            );
        }
        println!("{}", report.verdict);
    }
    Ok(if report.ok { 0 } else { 3 })
}

/// `holdfast restore-wal --config FILE %f %p`: PostgreSQL's `restore_command`.
pub async fn restore_wal(config: &Path, file: &str, dest: &Path) -> u8 {
    let cfg = match wal::HelperConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("holdfast restore-wal: {e}");
            return wal::ABORT_RECOVERY as u8;
        }
    };
    match wal::fetch(&cfg, file, dest).await {
        Ok(wal::Fetched::Delivered { .. }) => 0,
        Ok(wal::Fetched::Absent) => 1,
        Err(e) => {
            eprintln!("holdfast restore-wal: {file}: {e}");
            wal::ABORT_RECOVERY as u8
        }
    }
}
