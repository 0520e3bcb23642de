//! `holdfast demo`: the February 2020 incident, replayed against holdfast on one machine.
//!
//! Everything is real and started here: a PostgreSQL primary with a streaming standby, a vault
//! (its own `holdfast vault serve` process, its own port) pulling the WAL stream and a base
//! backup, and a gate (`holdfast gate serve`) through which a shop workload places orders. Then
//! the insider strikes: through the gate he sends `DROP DATABASE` and a bulk `DELETE` (held,
//! rejected by the on-call DBA, audited under his name); as root on the database hosts he drops
//! the database, drops the vault's slot, erases both data directories and turns every credential
//! found there (and the gate's audit token) on the vault. The vault raises the incident and
//! stops its warm standby just before it (`standby_act`); the operator promotes the standby
//! (`holdfast standby promote`) and also restores to just before it with `holdfast restore
//! --before-incident N`; every order, points balance and gift-card balance of both copies is
//! compared, merchant by merchant, with what the workload saw committed. Under `--repair`
//! (`repair_act`) the insider instead bulk-deletes one merchant's orders while the shop keeps
//! trading, and `holdfast repair --incident N --tenant merchant_id=M` puts them back in the live
//! database. The verdict is printed (and with `--json` is the last line, unless `--linger` adds
//! the consoles' addresses after it), and an HTML report is written.
//!
//! Everything started is owned by a value whose `Drop` stops it, so an error or Ctrl-C (the
//! future is dropped) leaves nothing running.

mod repair_act;
mod report;
mod s3_act;
mod shop;
mod standby_act;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use report::{AttackOutcome, Event, GateAttempt, IncidentSeen, VaultAttack, Verdict};
use shop::{Ledger, Snapshot};
use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres};
use testkit::vault::{TempVault, TempVaultOptions};
use vault_api::client::VaultClient;
use vault_api::token::Scope;

/// `holdfast demo` options.
pub struct Options {
    pub merchants: i64,
    /// Seconds of ordinary business before the insider strikes.
    pub business_seconds: u64,
    pub workers: usize,
    pub json: bool,
    pub report: PathBuf,
    /// Keep the work files here (default: a temporary directory, removed at the end).
    pub dir: Option<PathBuf>,
    /// `--store s3`: the vault writes through to a locked bucket on a Ceph RGW the demo starts,
    /// and an extra act erases the vault's local store before the restore.
    pub s3: bool,
    /// `--repair`: the insider bulk-deletes one merchant's orders instead of destroying
    /// everything, and `holdfast repair` puts them back in the live database (instead of the
    /// restore and the warm standby).
    pub repair: bool,
    /// `--linger`: after the verdict, keep the gate and the vault (and the consoles they serve)
    /// running until Ctrl-C.
    pub linger: bool,
}

/// The insider's gate account and the on-call DBA who is asked to approve.
const INSIDER: &str = "he.ops";
const INSIDER_PASSWORD: &str = "insider-password";
const DBA: &str = "alice";
const DBA_PASSWORD: &str = "alice-password";
const APP: &str = "shop-app";
const APP_PASSWORD: &str = "shop-app-password";

/// The guard policy of the demo's gate: reads and writes pass, row-changing statements with a
/// WHERE clause are counted (a gift card at a time), destruction waits for a second person.
const POLICY: &str = r#"row_guard_max_rows = 1000
[classes]
read = "allow"
write = "allow"
ddl = "approve"
destructive = "approve"
[row_guard_tables]
"public.stored_value_cards" = 10
"#;

/// The story's clock and narration.
struct Story {
    start: Instant,
    events: Vec<Event>,
    /// The number of the last act announced.
    act: u32,
}

impl Story {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Announces the next act (numbered in order: which acts run depends on the options).
    fn step(&mut self, text: &str) {
        self.act += 1;
        println!("\n==> {}. {text}", self.act);
    }

    fn say(&self, text: impl AsRef<str>) {
        println!("    {}", text.as_ref());
    }

    /// A line that also goes into the timeline.
    fn event(&mut self, actor: &str, what: impl Into<String>) {
        let t = self.t();
        self.event_at(t, actor, what);
    }

    /// A timeline line for something that happened at `t` (e.g. an alert that arrived while
    /// the demo was busy elsewhere).
    fn event_at(&mut self, t: f64, actor: &str, what: impl Into<String>) {
        let what = what.into();
        println!("    [{t:6.1} s] {actor:<8} {what}");
        self.events.push(Event { t, actor: actor.into(), what });
    }
}

/// Runs blocking work (psql, pg_ctl, child processes) without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `holdfast demo`.
pub async fn run(opts: Options) -> Result<u8> {
    if opts.merchants < 1 || opts.workers < 1 {
        bail!("--merchants and --workers must be at least 1");
    }
    // Fail before starting anything if PostgreSQL is not installed.
    testkit::pg::bindir()?;
    // The report is written at the end: find out now if it cannot be.
    std::fs::File::create(&opts.report).with_context(|| {
        format!("cannot write the report to {}; pick another --report", opts.report.display())
    })?;
    let work = Work::new(opts.dir.clone())?;
    // One Ctrl-C listener for the whole run. A second one inside `--linger` raced this one:
    // both woke on the same signal and now and then this branch won, so a lingering run that
    // had already passed ended with 130 (seen once in CI). The verdict, once known, is kept here.
    let exit_code = std::sync::atomic::AtomicU8::new(NO_VERDICT);
    tokio::select! {
        r = story(&opts, work.path(), &exit_code) => r,
        _ = tokio::signal::ctrl_c() => match exit_code.load(std::sync::atomic::Ordering::SeqCst) {
            NO_VERDICT => {
                eprintln!("\ninterrupted: stopping everything the demo started");
                Ok(130)
            }
            code => {
                println!("\nstopping the gate, the vault and the databases");
                Ok(code)
            }
        },
    }
}

/// No verdict yet: an interrupt then stops the demo unfinished (exit 130).
const NO_VERDICT: u8 = u8::MAX;

/// The demo's work directory: temporary unless `--dir` names one.
struct Work {
    _tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Work {
    /// Marks a `--dir` as the demo's own, so that a later run may clear it.
    const MARK: &str = ".holdfast-demo";

    fn new(dir: Option<PathBuf>) -> Result<Work> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                let d = std::path::absolute(&d)?;
                let has_files = std::fs::read_dir(&d)?.next().is_some();
                if has_files && !d.join(Self::MARK).exists() {
                    bail!(
                        "--dir {}: the directory is not empty and was not made by holdfast demo; name an empty or new one",
                        d.display()
                    );
                }
                // An earlier run's files: the demo's own, cleared so this run starts clean.
                for own in ["gate", "restored"] {
                    let p = d.join(own);
                    if p.exists() {
                        std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
                    }
                }
                std::fs::write(
                    d.join(Self::MARK),
                    "made by holdfast demo; a later run clears gate/ and restored/\n",
                )?;
                Ok(Work { _tmp: None, path: d })
            }
            None => {
                let t = tempfile::Builder::new().prefix("holdfast-demo-").tempdir()?;
                Ok(Work { path: t.path().to_path_buf(), _tmp: Some(t) })
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// A child process killed (and waited for) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL started by `holdfast restore --start`: stopped on drop.
struct Restored {
    data: PathBuf,
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists()
            && let Ok(pg_ctl) = bin("pg_ctl")
        {
            let _ = command_as_postgres(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The gate as its own process.
struct Gate {
    _proc: Proc,
    log: PathBuf,
    addr: String,
    control: String,
    cert: PathBuf,
}

impl Gate {
    fn start(dir: &Path) -> Result<Gate> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["gate", "serve", "--config"])
            .arg(dir.join("gate.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting holdfast gate serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let mut log = std::fs::File::create(dir.join("gate.log"))?;
        let proc = Proc(child);
        let (addr, control) = loop {
            let Some(line) = lines.next() else {
                bail!(
                    "holdfast gate serve exited before listening; log in {}",
                    dir.join("gate.log").display()
                )
            };
            let line = line?;
            writeln!(log, "{line}")?;
            if let Some(rest) = line.split("gate listening on ").nth(1) {
                let (a, c) = rest
                    .split_once(" (control API https://")
                    .ok_or_else(|| anyhow!("unexpected gate start line {line:?}"))?;
                break (a.to_string(), c.trim_end_matches(')').to_string());
            }
        };
        // Keep the log, and never let the gate block on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });
        Ok(Gate {
            _proc: proc,
            log: dir.join("gate.log"),
            addr,
            control,
            cert: dir.join("state/tls/cert.pem"),
        })
    }

    /// `holdfast gate …` as the on-call DBA.
    fn dba(&self, totp_secret: &str, args: &[&str]) -> Result<std::process::Output> {
        let key = gate::totp::base32_decode(totp_secret).ok_or_else(|| anyhow!("bad TOTP secret"))?;
        let code = format!("{:06}", gate::totp::code_at(&key, gate::approvals::unix_now() / 30));
        Command::new(std::env::current_exe()?)
            .arg("gate")
            .args(args)
            .env("HOLDFAST_GATE_URL", format!("https://{}", self.control))
            .env("HOLDFAST_GATE_CA", &self.cert)
            .env("HOLDFAST_GATE_USER", DBA)
            .env("HOLDFAST_GATE_PASSWORD", DBA_PASSWORD)
            .env("HOLDFAST_GATE_TOTP", code)
            .output()
            .context("running holdfast gate")
    }

    fn port(&self) -> Result<u16> {
        Ok(self.addr.rsplit_once(':').ok_or_else(|| anyhow!("gate address {}", self.addr))?.1.parse()?)
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("the random number generator failed: {e}"))?;
    Ok(b)
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).trim().to_string()
}

/// Runs a remote `holdfast` command against the vault with a token file; fails on error.
fn vault_cli(v: &TempVault, token: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = v.cli(token, args)?;
    if !out.status.success() {
        bail!("holdfast {} failed: {}", args.join(" "), text(&out));
    }
    Ok(out.stdout)
}

/// What act 1 sets up and the later acts use.
struct Stage {
    exe: PathBuf,
    primary: TempPg,
    standby: TempPg,
    vault: TempVault,
    /// The vault's warm standby of the shop (not under `--repair`); declared after the vault so
    /// that it is stopped after it (a running vault would start it again).
    warm: Option<standby_act::Warm>,
    /// Alerts the vault and the gate posted to the on-call webhook.
    alerts: testkit::webhook::Received,
    admin: VaultClient,
    /// The gate's append-only audit token.
    append: String,
    /// The operator's read token, as a file for `holdfast restore`.
    read_file: PathBuf,
    backup_id: String,
    /// Keyholder alice's signing key: in act 6 the insider has talked her into signing.
    alice: ed25519_dalek::SigningKey,
    gate: Gate,
    dba_totp: String,
    /// The shop as loaded, before the workload.
    base: Snapshot,
    /// `--store s3`: the RGW and bucket (dropped last, after the vault).
    s3: Option<s3_act::S3Side>,
}

/// The workload's outcome at the attack.
struct Business {
    ledger: Arc<Ledger>,
    workers: tokio::task::JoinSet<()>,
    /// How the shop's sessions log in through the gate (`--repair` starts one more).
    cfg: pgproto::conn::Config,
}

/// Act 4: when the attack happened and what it destroyed.
struct Strike {
    /// The DROP DATABASE returned (the attack had done its work).
    at: Instant,
    t: f64,
    /// The same moment on the wall clock, to compare with commit timestamps.
    wall: std::time::SystemTime,
    /// How long the DROP ran.
    drop_seconds: f64,
    /// Credentials found on the database hosts: (where, secret).
    found: Vec<(String, String)>,
    placed: Vec<shop::Placed>,
    /// The shop's rows the attack made unreadable, per merchant (what production still
    /// served right after the DROP, against what it should have held).
    destroyed: shop::Comparison,
    /// Started as the DROP returned: waits for the warm standby to answer at the target.
    standby_watch: Option<tokio::task::JoinHandle<Result<standby_act::ReadOnly>>>,
}

/// Act 7: the restore and its check.
struct Recovery {
    rto: f64,
    verify_seconds: f64,
    cmp: shop::Comparison,
    restore_target: String,
    /// Commit timestamp of the last transaction in the restored database, if it names one.
    last_commit: Option<time::OffsetDateTime>,
    /// How the last commit was found.
    last_commit_source: String,
}

async fn story(o: &Options, work: &Path, exit_code: &std::sync::atomic::AtomicU8) -> Result<u8> {
    let mut s = Story { start: Instant::now(), events: Vec::new(), act: 0 };
    println!("holdfast demo: the 删库跑路 incident of February 2020, replayed on this machine.");
    println!(
        "work files: {}{}",
        work.display(),
        if o.dir.is_some() { "" } else { " (removed at the end; --dir DIR keeps them)" }
    );
    let mut stage = act_production(&mut s, o, work).await?;
    let mut business = act_business(&mut s, o, &stage).await?;
    let insider_sql = ["DROP DATABASE shop", "DELETE FROM stored_value_cards"];
    let gate_attempts = act_insider_at_the_gate(&mut s, &stage, &business, &insider_sql).await?;
    if stage.warm.is_some() {
        standby_act::wait_following(&mut s, &stage).await?;
    }
    let (mut strike, kind) = if o.repair {
        (
            repair_act::act_insider_deletes_one_merchant(&mut s, &stage, &mut business, o.merchants).await?,
            "mass_delete",
        )
    } else {
        (act_insider_as_root(&mut s, &mut stage, &mut business).await?, "database_dropped")
    };
    let (incident, alerted, other_incidents) = act_vault_sees(&mut s, &stage, &strike, kind).await?;
    let defence = act_insider_turns_on_the_backups(&mut s, &stage, &strike).await?;
    let number = incident
        .as_ref()
        .map(|i| i.number)
        .ok_or_else(|| anyhow!("the vault raised no {kind} incident; vault log:\n{}", stage.vault.log()))?;
    let (recovery, warm_standby, repair) = if o.repair {
        let (r, f) =
            repair_act::act_repair(&mut s, &stage, &mut business, &strike, number, o.merchants).await?;
        (r, None, Some(f))
    } else {
        let warm = standby_act::act_warm_standby(&mut s, &stage, &mut strike, number).await?;
        if let Some(side) = stage.s3.take() {
            s3_act::act_root_erases_the_local_store(&mut s, &mut stage, &side).await?;
            stage.s3 = Some(side);
        }
        (act_restore(&mut s, &stage, &strike, work, number).await?, warm, None)
    };

    // ------------------------------------------------------------------------------------
    s.step("Verdict");
    let cmp = &recovery.cmp;
    let placed = &strike.placed;
    let acked = placed.iter().filter(|p| p.acknowledged).count();
    let in_doubt = placed.len() - acked;
    // RPO: from the last commit the restored database holds to the attack.
    let rpo = recovery.last_commit.map(|c| {
        let wall = time::OffsetDateTime::from(strike.wall);
        (wall - c).as_seconds_f64()
    });
    let verified = cmp.merchants.iter().filter(|m| m.ok).count();
    let affected = strike.destroyed.merchants.iter().filter(|m| m.rows_lost > 0).count();
    let gate_held = gate_attempts.iter().filter(|g| g.held).count();
    let gate_executed = gate_attempts.iter().filter(|g| g.executed).count();
    let attacks = defence.attacks;
    let refused = attacks.iter().filter(|a| a.refused).count();
    let standby_ok = warm_standby.as_ref().is_none_or(|w| {
        w.rows_lost == 0
            && w.values_wrong == 0
            && w.rows_unexplained == 0
            && w.acknowledged_transactions_missing == 0
            && w.merchants_verified == cmp.merchants.len()
    });
    let repair_ok = repair.as_ref().is_none_or(|r| {
        r.victim_whole
            && r.other_merchants_whole == r.other_merchants
            && r.rows_reinserted > 0
            && r.conflicts == 0
            && r.victim_orders_since_delete_kept == r.victim_orders_since_delete
    });
    let ok = cmp.rows_lost == 0
        && cmp.values_wrong == 0
        && cmp.rows_unexplained == 0
        && cmp.acknowledged_orders_lost == 0
        && incident.is_some()
        && alerted.is_some()
        && gate_held == insider_sql.len()
        && gate_executed == 0
        && refused == attacks.len()
        && defence.vault_intact
        && defence.vault_objects > 0
        && !attacks.is_empty()
        && defence.audit_verified
        && defence.audit.iter().filter(|r| r["kind"] == "approval_requested").count() >= insider_sql.len()
        && verified == cmp.merchants.len()
        && (rpo.is_some() || repair.is_some())
        && standby_ok
        && repair_ok
        && (o.repair || warm_standby.is_some());
    let report_path = std::path::absolute(&o.report)?;
    let mut verdict = Verdict {
        mode: if o.repair { "repair" } else { "restore" }.into(),
        ok,
        merchants: stage.base.merchants().len(),
        merchants_affected: affected,
        rows_destroyed: strike.destroyed.rows_lost,
        merchants_verified: verified,
        rows_expected: cmp.rows_expected,
        rows_lost: cmp.rows_lost,
        values_wrong: cmp.values_wrong,
        rows_unexplained: cmp.rows_unexplained,
        transactions_committed: acked as u64,
        acknowledged_transactions_missing: cmp.acknowledged_orders_lost,
        transactions_in_doubt: in_doubt,
        in_doubt_found_committed: cmp.in_doubt_committed,
        incident_found: incident.is_some(),
        incident,
        other_incidents,
        gate_held,
        gate_executed,
        gate: gate_attempts,
        audit_records_for_insider: defence.audit.len(),
        audit_verified: defence.audit_verified,
        vault_intact: defence.vault_intact,
        vault_objects_checked: defence.vault_objects,
        vault_attacks: attacks.len(),
        vault_attacks_refused: refused,
        attacks,
        rpo_seconds: rpo,
        last_restored_commit: recovery
            .last_commit
            .and_then(|c| c.format(&time::format_description::well_known::Rfc3339).ok()),
        last_restored_commit_source: recovery.last_commit_source.clone(),
        attack_seconds: strike.drop_seconds,
        rto_seconds: recovery.rto,
        verify_seconds: recovery.verify_seconds,
        attack_to_verified_seconds: strike.at.elapsed().as_secs_f64(),
        restore_target: recovery.restore_target.clone(),
        warm_standby,
        repair,
        duration_seconds: 0.0,
        report: report_path.display().to_string(),
        timeline: Vec::new(),
    };
    verdict.duration_seconds = s.t();
    verdict.timeline = s.events.clone();
    verdict.timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
    std::fs::write(&report_path, report::html(&verdict, &cmp.merchants, &defence.audit))
        .with_context(|| format!("writing the report {}", report_path.display()))?;
    print_verdict(&verdict, insider_sql.len());
    if o.json {
        println!("{}", serde_json::to_string(&verdict)?);
    }
    let code = if ok { 0 } else { 1 };
    if o.linger {
        exit_code.store(code, std::sync::atomic::Ordering::SeqCst);
        linger(&stage).await;
    }
    drop(stage);
    Ok(code)
}

/// `--linger`: says where the two consoles are and how to sign in to them, then waits for
/// Ctrl-C with the gate and the vault still serving.
async fn linger(stage: &Stage) {
    println!("\n==> The gate and the vault keep running (--linger); Ctrl-C stops everything.");
    println!("    approvals console (gate): https://{}/console/", stage.gate.control);
    println!(
        "      sign in as {DBA}, password {DBA_PASSWORD}, one-time codes from the TOTP secret {} (any authenticator app)",
        stage.dba_totp
    );
    println!("      its certificate: {}", stage.gate.cert.display());
    println!("    backup console (vault):   {}/console/", stage.vault.url());
    println!(
        "      sign in with the token in {} (read) or {} (admin)",
        stage.read_file.display(),
        stage.vault.scratch().join("admin.token").display()
    );
    println!("      its certificate: {}", stage.vault.ca_path().display());
    // Until the run's one Ctrl-C listener (in `run`) ends the demo with its verdict; dropping
    // this future drops the stage, which stops the gate, the vault and the databases.
    std::future::pending::<()>().await;
}

/// The verdict's text summary (the JSON and the report carry the same figures).
fn print_verdict(v: &Verdict, insider_statements: usize) {
    println!("    timeline:");
    for e in &v.timeline {
        println!("      {:6.1} s  {:<8} {}", e.t, e.actor, e.what);
    }
    println!(
        "\n    merchants whose data the attack destroyed {} of {} ({} rows); after the {}: {} merchants verified, rows lost {} of {}, values wrong {}, rows nobody wrote {}",
        v.merchants_affected,
        v.merchants,
        v.rows_destroyed,
        if v.repair.is_some() { "repair (the live shop, once the workload stopped)" } else { "restore" },
        v.merchants_verified,
        v.rows_lost,
        v.rows_expected,
        v.values_wrong,
        v.rows_unexplained
    );
    if let Some(w) = &v.warm_standby {
        println!(
            "    warm standby (apply_delay {} s): read-only at the target {:.1} s after the DROP returned; promoted {:.1} s after `holdfast standby promote` ({:.1} s after the DROP, the acts between included); promoted copy: {} merchants verified, rows lost {} of {}, values wrong {}, rows nobody wrote {}, acknowledged transactions missing {}",
            w.apply_delay_seconds,
            w.read_only_after_attack_seconds,
            w.promote_seconds,
            w.attack_to_promoted_seconds,
            w.merchants_verified,
            w.rows_lost,
            w.rows_expected,
            w.values_wrong,
            w.rows_unexplained,
            w.acknowledged_transactions_missing
        );
    }
    if let Some(r) = &v.repair {
        println!(
            "    repair of merchant {} (incident {}): {} rows deleted; holdfast repair re-inserted {}, reverted {}, conflicts {} in {:.1} s (scratch restores {}, apply {}); the DELETE → repaired {:.1} s",
            r.merchant,
            r.incident,
            r.rows_deleted,
            r.rows_reinserted,
            r.rows_reverted,
            r.conflicts,
            r.repair_seconds,
            r.scratch_restore_seconds.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "?".into()),
            r.apply_seconds.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "?".into()),
            r.attack_to_repaired_seconds
        );
        println!(
            "    written since, kept: {} of the merchant's {} orders placed after the DELETE; {} orders committed while the repair ran; other merchants whole {} of {}; {} acknowledged transactions missing",
            r.victim_orders_since_delete_kept,
            r.victim_orders_since_delete,
            r.orders_committed_during_repair,
            r.other_merchants_whole,
            r.other_merchants,
            v.acknowledged_transactions_missing
        );
    } else {
        println!(
            "    cold restore: RPO {} ({} acknowledged transactions missing); RTO {:.1} s from `holdfast restore` to a server answering at the target, then {:.1} s to verify (attack → verified {:.1} s)",
            v.rpo_seconds
                .map(|r| format!("{:.3} s from the last restored commit to the attack", r))
                .unwrap_or_else(|| "unknown (the restored database names no last commit)".into()),
            v.acknowledged_transactions_missing,
            v.rto_seconds,
            v.verify_seconds,
            v.attack_to_verified_seconds
        );
    }
    println!(
        "    gate held {} of {insider_statements} destructive statements, executed {}; vault refused {} of {} attacks",
        v.gate_held, v.gate_executed, v.vault_attacks_refused, v.vault_attacks
    );
    println!(
        "    {}",
        match (v.ok, &v.repair) {
            (true, Some(r)) => format!(
                "VERDICT: merchant {}'s orders are back in the live shop; nothing written since was rewound, no other merchant touched",
                r.merchant
            ),
            (true, None) => "VERDICT: every row of every merchant committed before the attack is back".into(),
            (false, _) => "VERDICT: FAILED — see the report".into(),
        }
    );
    println!("    report: {}   ({:.0} s in all)", v.report, v.duration_seconds);
}

/// Act 1: a primary and a standby with the shop loaded, a vault pulling their WAL and a base
/// backup, tokens, and the gate in front.
async fn act_production(s: &mut Story, o: &Options, work: &Path) -> Result<Stage> {
    let exe = std::env::current_exe().context("locating the holdfast binary")?;
    s.step("Production: a PostgreSQL 15 primary and a streaming standby; a vault; a gate");
    let primary = blocking(|| TempPg::start_with(TempPgOptions::default()))?;
    let standby = blocking(|| TempPg::standby_of(&primary))?;
    s.event(
        "shop",
        format!(
            "primary {} and streaming standby {} started",
            primary.data_dir().display(),
            standby.data_dir().display()
        ),
    );
    let rep_password = hex::encode(random::<16>()?);
    let app_db_password = hex::encode(random::<16>()?);
    blocking(|| -> Result<()> {
        primary.create_replication_role("holdfast_rep", &rep_password)?;
        primary.psql(&format!("CREATE ROLE gate_app LOGIN PASSWORD '{app_db_password}'"))?;
        primary.psql("CREATE DATABASE shop")?;
        primary.psql_db("shop", &shop::schema_and_load(o.merchants))?;
        primary.psql_db("shop", shop::GRANTS)?;
        Ok(())
    })?;
    let base: Snapshot = blocking(|| shop::snapshot(&|sql| primary.psql_db("shop", sql)))?;
    s.event(
        "shop",
        format!(
            "loaded {} merchants: {} rows in 7 tables (customers, products, orders and their items, points, gift cards)",
            base.merchants().len(),
            base.rows()
        ),
    );

    // The vault: keys wrapped to an offline escrow key, 2-of-3 keyholders for early deletion.
    let mut keyholders = Vec::new();
    let mut keys = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let key = ed25519_dalek::SigningKey::from_bytes(&random::<32>()?);
        keyholders.push((name.to_string(), hex::encode(key.verifying_key().as_bytes())));
        keys.push(key);
    }
    let alice = keys.swap_remove(0);
    let s3 = if o.s3 { Some(s3_act::start(s, work).await?) } else { None };
    // The warm standby (not under --repair, where nothing is rewound): the vault keeps it
    // APPLY_DELAY_SECONDS behind the shop, fed from its own store. Declared before the vault so
    // that, should the demo stop during this act, the vault goes first (it would start the
    // standby again).
    let warm = if o.repair { None } else { Some(standby_act::Warm::new()?) };
    let store_config = s3.as_ref().map(|x| x.store_config.clone());
    let mut vault = blocking(|| {
        TempVault::start_with(
            &exe,
            TempVaultOptions { keyholders, threshold: Some(2), store_config, ..TempVaultOptions::default() },
        )
    })?;
    let (hook, alerts) = testkit::webhook::receiver();
    let rep_pw_file = vault.scratch().join("rep.password");
    std::fs::write(&rep_pw_file, format!("{rep_password}\n"))?;
    let config = std::fs::read_to_string(vault.config_path())?;
    // A mass DELETE is one of more than 50 rows in one transaction: the workload deletes
    // nothing, one merchant's orders are 100 and more.
    std::fs::write(
        vault.config_path(),
        format!(
            "webhook = [{{ name = \"oncall\", url = \"{hook}\" }}]\n{config}\n[[cluster]]\nname = \"shop\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\ncatalog_refresh_seconds = 5\nmass_delete_rows = 50\n{}",
            primary.socket_dir().display(),
            primary.port(),
            rep_pw_file.display(),
            warm.as_ref().map(standby_act::Warm::config).unwrap_or_default()
        ),
    )?;
    vault.kill();
    blocking(|| vault.restart())?;
    let admin_token = vault.scratch().join("admin.token");
    s.event(
        "vault",
        format!(
            "vault serving {} (own process), store {}; pulls WAL as holdfast_rep (REPLICATION only)",
            vault.url(),
            vault.store_dir().display()
        ),
    );
    s.event(
        "vault",
        format!(
            "backup console: {}/console/ (sign in with a vault token: {})",
            vault.url(),
            admin_token.display()
        ),
    );
    let backup: serde_json::Value = serde_json::from_slice(&blocking(|| {
        vault_cli(&vault, &admin_token, &["backup", "--cluster", "shop", "--json"])
    })?)
    .context("reading holdfast backup --json")?;
    let backup_id = backup["id"].as_str().unwrap_or("").to_string();
    s.event(
        "vault",
        format!(
            "base backup {backup_id} pulled (BASE_BACKUP → chunked, compressed, encrypted); complete once its WAL is stored"
        ),
    );
    let admin = VaultClient::new(vault.url(), &vault.ca_pem(), Some(vault.admin_token().to_string()))?;
    let append = admin.create_token(Scope::Append, "gate audit").await?.token;
    let read = admin.create_token(Scope::Read, "operator restore").await?.token;
    let append_file = work.join("gate-append.token");
    let read_file = work.join("operator-read.token");
    std::fs::write(&append_file, format!("{append}\n"))?;
    std::fs::write(&read_file, format!("{read}\n"))?;

    // The gate: the only door to production SQL for people and the application.
    let gate_dir = work.join("gate");
    std::fs::create_dir_all(&gate_dir)?;
    std::fs::write(gate_dir.join("policy.toml"), POLICY)?;
    std::fs::write(gate_dir.join("gate_app.password"), format!("{app_db_password}\n"))?;
    let dba_totp = gate::totp::new_secret();
    let v = |pw: &str| gate::scram::Verifier::generate(pw).to_string();
    std::fs::write(
        gate_dir.join("gate.toml"),
        format!(
            r#"listen = "127.0.0.1:0"
control_listen = "127.0.0.1:0"
state_dir = "{state}"
policy = "policy.toml"
approval_timeout = "5m"

[upstream]
host = "{sock}"
port = {port}
user = "gate_app"
password_file = "gate_app.password"
sslmode = "disable"

[[person]]
name = "{APP}"
scram = "{app}"

[[person]]
name = "{INSIDER}"
scram = "{insider}"

[[person]]
name = "{DBA}"
scram = "{dba}"
totp_secret = "{dba_totp}"
approver = true

[audit]
vault = "{vault_url}"
ca = "{ca}"
token_file = "{append}"

[[webhook]]
name = "oncall"
url = "{hook}"
"#,
            state = gate_dir.join("state").display(),
            sock = primary.socket_dir().display(),
            port = primary.port(),
            app = v(APP_PASSWORD),
            insider = v(INSIDER_PASSWORD),
            dba = v(DBA_PASSWORD),
            vault_url = vault.url(),
            ca = vault.ca_path().display(),
            append = append_file.display(),
        ),
    )?;
    let gate = blocking(|| Gate::start(&gate_dir))?;
    s.event(
        "gate",
        format!(
            "gate listening on {} (TLS; people log in as themselves; audit shipped to the vault)",
            gate.addr
        ),
    );
    s.event(
        "gate",
        format!(
            "approvals console: https://{}/console/ (sign in with a gate name, password and TOTP)",
            gate.control
        ),
    );
    Ok(Stage {
        exe,
        primary,
        standby,
        vault,
        warm,
        alerts,
        admin,
        append,
        read_file,
        backup_id,
        alice,
        gate,
        dba_totp,
        base,
        s3,
    })
}

/// Act 2: application sessions place orders through the gate for `business_seconds`.
async fn act_business(s: &mut Story, o: &Options, st: &Stage) -> Result<Business> {
    s.step("Business as usual: orders, points and gift-card payments through the gate");
    let mut cfg = pgproto::conn::Config::new(
        pgproto::conn::Host::Tcp { host: "127.0.0.1".into(), port: st.gate.port()? },
        APP,
    )
    .password(APP_PASSWORD, "the demo");
    cfg.ssl = pgproto::conn::SslMode::VerifyFull { ca_pem: std::fs::read(&st.gate.cert)? };
    cfg.application_name = "shop".into();
    let ledger = Arc::new(Ledger::default());
    let mut workers = tokio::task::JoinSet::new();
    let seed = u64::from_le_bytes(random::<8>()?);
    for i in 0..o.workers {
        workers.spawn(shop::worker(
            cfg.clone(),
            o.merchants,
            None,
            seed.wrapping_add(i as u64 * 7919),
            ledger.clone(),
        ));
    }
    let business_start = Instant::now();
    let mut next = 2;
    while business_start.elapsed() < Duration::from_secs(o.business_seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if workers.is_empty() || ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            let why = ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("the shop workload stopped before the attack: {}", why.unwrap_or_default());
        }
        if business_start.elapsed() >= Duration::from_secs(next) {
            s.say(format!("{} orders committed through the gate", ledger.committed.load(Ordering::Relaxed)));
            next += 2;
        }
    }
    let committed = ledger.committed.load(Ordering::Relaxed);
    if committed == 0 {
        bail!("the workload committed nothing in {} s; see {}", o.business_seconds, st.gate.log.display());
    }
    s.event(
        "shop",
        format!(
            "{committed} orders committed in {} s ({:.0}/s), each remembered with every row it wrote",
            o.business_seconds,
            committed as f64 / business_start.elapsed().as_secs_f64()
        ),
    );
    Ok(Business { ledger, workers, cfg })
}

/// Act 3: the insider sends destructive statements through the gate; they are held, the
/// on-call DBA rejects them.
async fn act_insider_at_the_gate(
    s: &mut Story,
    st: &Stage,
    b: &Business,
    insider_sql: &[&str],
) -> Result<Vec<GateAttempt>> {
    s.step(&format!("The insider ({INSIDER}) strikes through the gate"));
    let gate = &st.gate;
    let before_insider = b.ledger.committed.load(Ordering::Relaxed);
    let mut psqls = Vec::new();
    for &sql in insider_sql {
        let child = tokio::process::Command::new(bin("psql")?)
            .arg(format!(
                "host=127.0.0.1 port={} user={INSIDER} dbname=shop sslmode=verify-full sslrootcert={} connect_timeout=10",
                gate.port()?,
                gate.cert.display()
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", INSIDER_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting psql")?;
        s.event("insider", format!("psql → gate: {sql};"));
        psqls.push((sql, child));
    }
    // Both wait for a second person; the on-call DBA sees them and says no.
    let deadline = Instant::now() + Duration::from_secs(30);
    let held: Vec<(String, String)> = loop {
        let out = blocking(|| gate.dba(&st.dba_totp, &["pending", "--json"]))?;
        if !out.status.success() {
            bail!("holdfast gate pending failed: {}", text(&out));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let reqs: Vec<(String, String)> = v["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["person"] == INSIDER && r["state"]["state"] == "pending")
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["ask"]["sql"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if reqs.len() >= insider_sql.len() || Instant::now() > deadline {
            break reqs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (id, sql) in &held {
        s.event("gate", format!("held {id} for a second person's approval: {sql}; on-call alerted"));
    }
    for (id, _) in &held {
        let out = blocking(|| {
            gate.dba(
                &st.dba_totp,
                &["reject", id, "--reason", "no change ticket; this would destroy every merchant's data"],
            )
        })?;
        if !out.status.success() {
            bail!("holdfast gate reject {id} failed: {}", text(&out));
        }
        s.event("operator", format!("{DBA} rejected {id} (password + TOTP)"));
    }
    let mut gate_attempts = Vec::new();
    for (sql, child) in psqls {
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("the insider's psql did not return after the rejection"))??;
        let all = text(&out);
        let saw =
            all.lines().find(|l| l.starts_with("ERROR")).or(all.lines().last()).unwrap_or("").to_string();
        s.event("insider", format!("psql: {saw}"));
        gate_attempts.push(GateAttempt {
            sql: sql.to_string(),
            request: held.iter().find(|(_, q)| q.trim_end_matches(';') == sql).map(|(id, _)| id.clone()),
            held: held.iter().any(|(_, q)| q.trim_end_matches(';') == sql),
            executed: out.status.success(),
            client_saw: saw,
        });
    }
    let still_there: i64 =
        blocking(|| st.primary.psql_db("shop", "SELECT count(*) FROM stored_value_cards"))?.parse()?;
    s.say(format!(
        "the shop still holds {still_there} gift cards; {} more orders were committed while he waited",
        b.ledger.committed.load(Ordering::Relaxed) - before_insider
    ));
    Ok(gate_attempts)
}

/// Act 4: as root on the database hosts he drops the database, the vault's slot, and both
/// data directories. What production still serves right after the DROP is measured.
async fn act_insider_as_root(s: &mut Story, st: &mut Stage, b: &mut Business) -> Result<Strike> {
    s.step("The insider strikes as root on the database hosts (A1: every host, the superuser)");
    // He reads every file on those hosts first: these are the credentials he will try.
    let found = credentials_on_hosts(&[st.primary.data_dir(), st.standby.data_dir()]);
    s.say(format!(
        "credentials found in the data directories: {}",
        if found.is_empty() {
            "none".to_string()
        } else {
            found.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(", ")
        }
    ));
    let attack_sql = "DROP DATABASE shop WITH (FORCE)";
    let sent = Instant::now();
    blocking(|| st.primary.psql(attack_sql))?;
    let (at, wall) = (Instant::now(), std::time::SystemTime::now());
    let standby_watch = standby_act::watch(st, at);
    let drop_seconds = at.duration_since(sent).as_secs_f64();
    let t = s.t();
    s.event("insider", format!("psql as postgres on the primary: {attack_sql};   ({drop_seconds:.2} s)"));
    let drop_end: pgfmt::Lsn = blocking(|| st.primary.psql("SELECT pg_current_wal_flush_lsn()"))?.parse()?;
    // What production still serves: nothing, if the database is gone; otherwise its rows.
    let left = blocking(|| -> Result<Snapshot> {
        if st.primary.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop'")? == "0" {
            return Ok(Snapshot::default());
        }
        shop::snapshot(&|sql| st.primary.psql_db("shop", sql))
    })?;
    // The vault pulls the WAL as it is written: by the time he reaches for the slot, the DROP
    // is normally stored (the timeline shows when).
    match wait_durable(&st.admin, drop_end, Duration::from_secs(5)).await {
        Some(d) => s.event(
            "vault",
            format!(
                "WAL of the DROP (to {drop_end}) stored in the vault {} ms after it returned",
                d.as_millis()
            ),
        ),
        None => s.event("vault", format!("WAL of the DROP (to {drop_end}) NOT stored within 5 s")),
    }
    blocking(|| drop_vault_slot(&st.primary))?;
    s.event("insider", "pg_terminate_backend(walsender); pg_drop_replication_slot('holdfast_shop');");
    for (name, pg) in [("primary", &mut st.primary), ("standby", &mut st.standby)] {
        let data = pg.data_dir().to_path_buf();
        blocking(|| pg.kill())?;
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        s.event("insider", format!("kill -9 postgres; rm -rf {}   ({name})", data.display()));
    }
    // The workload's sessions died with the database.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while b.workers.join_next().await.is_some() {}
    })
    .await;
    b.workers.abort_all();
    let placed = b.ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked: Vec<shop::Placed> = placed.iter().filter(|p| p.acknowledged).cloned().collect();
    let destroyed = shop::diff(&shop::expected(&st.base, &acked, &|_| false), &left);
    s.say(format!(
        "the workload had {} orders acknowledged; {} in flight when the database went (COMMIT sent, no answer)",
        acked.len(),
        placed.len() - acked.len()
    ));
    s.say(format!(
        "production now serves {} of the {} rows acknowledged before the attack: {} merchants lost data",
        destroyed.rows_expected - destroyed.rows_lost,
        destroyed.rows_expected,
        destroyed.merchants.iter().filter(|m| m.rows_lost > 0).count()
    ));
    Ok(Strike { at, t, wall, drop_seconds, found, placed, destroyed, standby_watch })
}

/// Act 5: the incident the vault raised and when the alert arrived.
async fn act_vault_sees(
    s: &mut Story,
    st: &Stage,
    strike: &Strike,
    kind: &str,
) -> Result<(Option<IncidentSeen>, Option<Duration>, Vec<String>)> {
    s.step("What the vault saw");
    let deadline = Instant::now() + Duration::from_secs(60);
    let alerted = loop {
        let hit = st
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(at, body)| *at >= strike.at - Duration::from_secs(1) && body.to_string().contains(kind))
            .map(|(at, _)| at.saturating_duration_since(strike.at));
        if hit.is_some() || Instant::now() > deadline {
            break hit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let incidents: Vec<vault_api::status::Incident> = serde_json::from_slice(&blocking(|| {
        vault_cli(&st.vault, &st.read_file, &["incidents", "--cluster", "shop", "--json"])
    })?)
    .context("reading holdfast incidents --json")?;
    let incident = incidents.iter().enumerate().find(|(_, i)| i.kind == kind).map(|(n, i)| IncidentSeen {
        number: n + 1,
        kind: i.kind.clone(),
        lsn: i.lsn.map(|l| l.to_string()),
        xid: i.xid,
        time: Some(i.detected_at.to_string()),
        objects: i
            .objects
            .iter()
            .map(|ob| match (&ob.schema, &ob.table) {
                (Some(sc), Some(t)) => format!("{}.{sc}.{t}", ob.database),
                _ => ob.database.clone(),
            })
            .collect(),
        alerted_after_seconds: alerted.map(|d| d.as_secs_f64()),
        message: i.message.clone(),
    });
    let alert_t = alerted.map(|d| strike.t + d.as_secs_f64()).unwrap_or_else(|| s.t());
    match &incident {
        Some(i) => s.event_at(
            alert_t,
            "vault",
            format!(
                "INCIDENT {} {}: {} — webhook {}",
                i.number,
                i.kind,
                i.message,
                i.alerted_after_seconds
                    .map(|a| format!("{a:.2} s after his statement returned"))
                    .unwrap_or_else(|| "not received".into())
            ),
        ),
        None => s.event("vault", format!("NO {kind} incident was raised")),
    }
    let other: Vec<String> =
        incidents.iter().filter(|i| i.kind != kind).map(|i| format!("{}: {}", i.kind, i.message)).collect();
    for i in &other {
        s.say(format!("incident {i}"));
    }
    Ok((incident, alerted, other))
}

/// Act 6's outcome.
struct Defence {
    attacks: Vec<VaultAttack>,
    vault_intact: bool,
    vault_objects: u64,
    audit: Vec<serde_json::Value>,
    audit_verified: bool,
}

/// Act 6: every credential he found or could steal, turned on the backups; then the store is
/// re-hashed and the audit trail read back.
async fn act_insider_turns_on_the_backups(s: &mut Story, st: &Stage, strike: &Strike) -> Result<Defence> {
    s.step("The insider turns on the backups with every credential he found");
    let attacks = attack_vault(s, st, &strike.found).await?;
    for a in &attacks {
        s.say(format!("{} — with {}: {}", a.action, a.credential, a.answer));
    }
    let refused = attacks.iter().filter(|a| a.refused).count();
    s.event(
        "vault",
        format!("{refused} of {} attacks on the vault refused by the vault itself", attacks.len()),
    );
    // And the store is whole: every object re-hashed, every backup's chunks present.
    let config = st.vault.config_path().display().to_string();
    let out = blocking(|| st.vault.holdfast(&["vault", "check", "--config", &config, "--json"]))?;
    let check: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading holdfast vault check --json: {}", text(&out)))?;
    let count = |k: &str| check[k].as_array().map_or(0, Vec::len);
    let vault_intact = out.status.success() && count("damaged") == 0 && count("missing") == 0;
    let vault_objects = check["objects_checked"].as_u64().unwrap_or(0);
    s.event(
        "vault",
        format!(
            "vault check: {vault_objects} objects re-hashed, {} damaged, {} missing",
            count("damaged"),
            count("missing")
        ),
    );
    // The gate's audit trail, read back from the vault by an auditor and verified.
    let (audit, audit_verified) =
        blocking(|| audit_excerpt(&st.gate, &st.dba_totp, &st.vault, &st.read_file))?;
    s.event(
        "vault",
        format!(
            "audit log in the vault: {} records name {INSIDER}, chain {}",
            audit.len(),
            if audit_verified { "verified" } else { "NOT verified" }
        ),
    );
    for r in audit.iter().filter(|r| matches!(r["kind"].as_str(), Some("approval_requested" | "rejected"))) {
        s.say(format!(
            "{} {:<18} {} from {}: {}",
            r["time"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["person"].as_str().unwrap_or(""),
            r["client"].as_str().unwrap_or(""),
            r["detail"]["sql"].as_str().or(r["detail"]["why"].as_str()).unwrap_or("")
        ));
    }
    Ok(Defence { attacks, vault_intact, vault_objects, audit, audit_verified })
}

/// Act 7: `holdfast restore --before-incident N --start --promote`, timed to a server
/// answering at the target; then the restored shop compared row by row (timed apart).
async fn act_restore(
    s: &mut Story,
    st: &Stage,
    strike: &Strike,
    work: &Path,
    number: usize,
) -> Result<Recovery> {
    s.step("The operator restores the shop to just before the incident");
    let target_dir = work.join("restored");
    let mut args = vec!["restore".to_string()];
    args.extend(st.vault.remote_args(&st.read_file));
    let n = number.to_string();
    for a in ["--cluster", "shop", "--before-incident", &n, "--target-dir"] {
        args.push(a.into());
    }
    args.push(target_dir.display().to_string());
    args.extend(["--start", "--promote", "--json"].map(String::from));
    s.event(
        "operator",
        format!("holdfast restore --cluster shop --before-incident {number} --start --promote"),
    );
    let restore_started = Instant::now();
    let restored_server = Restored { data: target_dir.clone() };
    // The operator knows production's superuser password: the restore logs in to check.
    let password = st.primary.superuser_password().to_string();
    let out = tokio::process::Command::new(&st.exe)
        .args(&args)
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", &password)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running holdfast restore")?;
    if !out.status.success() {
        bail!("holdfast restore failed: {}", text(&out));
    }
    let rep: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading holdfast restore --json")?;
    let port = rep["port"].as_u64().ok_or_else(|| anyhow!("the restore report names no port: {rep}"))? as u16;
    let socket: PathBuf = rep["socket_dir"].as_str().ok_or_else(|| anyhow!("no socket_dir: {rep}"))?.into();
    // RTO ends when the restored server answers a query in the shop database.
    let answer = blocking(|| testkit::pg::psql_at(&socket, port, &password, "shop", "SELECT 1"))?;
    if answer != "1" {
        bail!("the restored server answered {answer:?} to SELECT 1");
    }
    let rto = restore_started.elapsed().as_secs_f64();
    let restore_target = format!(
        "{} (recovered to {}, last commit replayed {})",
        rep["target"].as_str().unwrap_or("?"),
        rep["recovered_lsn"].as_str().unwrap_or("?"),
        rep["last_replayed_commit"].as_str().unwrap_or("?")
    );
    s.event(
        "operator",
        format!(
            "restored backup {} and replayed the vault's WAL to {}; server answering on port {port} after {rto:.1} s",
            rep["backup"].as_str().unwrap_or("?"),
            rep["target"].as_str().unwrap_or("?")
        ),
    );
    let verify_started = Instant::now();
    let restored: Snapshot =
        blocking(|| shop::snapshot(&|sql| testkit::pg::psql_at(&socket, port, &password, "shop", sql)))?;
    let cmp = shop::compare(&st.base, &strike.placed, &restored);
    let verify_seconds = verify_started.elapsed().as_secs_f64();
    // The last commit the restored database holds: the commit timestamp of the last
    // transaction recovery replayed (PostgreSQL's pg_last_xact_replay_timestamp, as the restore
    // reports it); failing that, the start of the newest restored order's transaction (earlier
    // than its commit, so the RPO is then an upper bound).
    let rfc = &time::format_description::well_known::Rfc3339;
    let (last_commit, last_commit_source) =
        match rep["last_replayed_commit"].as_str().and_then(|c| time::OffsetDateTime::parse(c, rfc).ok()) {
            Some(c) => (Some(c), "commit timestamp of the last transaction replayed".to_string()),
            None => {
                let newest = restored
                    .table(shop::Table::Orders)
                    .into_iter()
                    .flat_map(|t| t.values())
                    .filter_map(|r| r.values.get(2)?.parse::<i128>().ok())
                    .max();
                (
                    newest.and_then(|us| time::OffsetDateTime::from_unix_timestamp_nanos(us * 1000).ok()),
                    "start of the newest restored order's transaction".to_string(),
                )
            }
        };
    s.event(
        "operator",
        format!(
            "verified {} merchants, every row of 7 tables: {} of {} rows lost, {} values wrong, {} rows nobody wrote; {} of {} in-doubt orders had committed ({verify_seconds:.1} s)",
            cmp.merchants.len(),
            cmp.rows_lost,
            cmp.rows_expected,
            cmp.values_wrong,
            cmp.rows_unexplained,
            cmp.in_doubt_committed,
            strike.placed.iter().filter(|p| !p.acknowledged).count()
        ),
    );
    drop(restored_server);
    let _ = std::fs::remove_dir(&socket);
    Ok(Recovery { rto, verify_seconds, cmp, restore_target, last_commit, last_commit_source })
}

/// Waits until the vault's durable WAL reaches `lsn`; how long it took.
async fn wait_durable(admin: &VaultClient, lsn: pgfmt::Lsn, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(st) = admin.status().await
            && st.clusters.iter().any(|c| c.durable_lsn.is_some_and(|d| d >= lsn))
        {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Terminates the vault's WAL sender and drops its slot, retrying while the vault reconnects.
fn drop_vault_slot(pg: &TempPg) -> Result<()> {
    for _ in 0..100 {
        let _ = pg.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'holdfast_shop' AND active_pid IS NOT NULL");
        if pg.psql("SELECT pg_drop_replication_slot('holdfast_shop')").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("could not drop the vault's replication slot")
}

/// Passwords in the configuration files of the database hosts' data directories (the standby's
/// `primary_conninfo` holds one), as (where, secret).
fn credentials_on_hosts(dirs: &[&Path]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for dir in dirs {
        for file in ["postgresql.auto.conf", "postgresql.conf", "pg_hba.conf"] {
            let Ok(text) = std::fs::read_to_string(dir.join(file)) else { continue };
            for word in text.split(|c: char| c.is_whitespace() || c == '\'') {
                if let Some(pw) = word.strip_prefix("password=") {
                    let pw = pw.trim_matches('\'').to_string();
                    if !found.iter().any(|(_, p)| p == &pw) {
                        found.push((format!("the password in {}/{file}", dir.display()), pw));
                    }
                }
            }
        }
    }
    found
}

/// What must answer an attack for it to count as refused by the vault.
#[derive(Debug, Clone, Copy)]
enum Guard {
    /// The vault's authorisation: no, unknown or revoked token (401) or a token whose scope
    /// does not allow the request (403).
    Authorisation,
    /// A rule the vault keeps whatever the token (retention only lengthens; early deletion
    /// needs a quorum and a waiting period; an object's bytes must hash to its name), answering
    /// this status.
    Rule(u16, &'static str),
}

impl Guard {
    fn answers(self, status: u16) -> bool {
        match self {
            Guard::Authorisation => status == 401 || status == 403,
            Guard::Rule(s, _) => s == status,
        }
    }

    fn describe(self) -> String {
        match self {
            Guard::Authorisation => "the vault's authorisation (401/403)".into(),
            Guard::Rule(s, why) => format!("the vault's rule that {why} ({s})"),
        }
    }
}

/// Sends one attack and records exactly what answered. It counts as refused only when the
/// vault itself answered with its JSON error body and the status of the guard expected to stop
/// it; a transport error, a status without the vault's error body (e.g. a route that does not
/// exist) or another status is reported as such and not counted.
async fn attempt(credential: &str, action: &str, guard: Guard, rb: reqwest::RequestBuilder) -> VaultAttack {
    let request = rb
        .try_clone()
        .and_then(|r| r.build().ok())
        .map(|r| format!("{} {}", r.method(), r.url().path()))
        .unwrap_or_default();
    let (outcome, answer) = match rb.send().await {
        Err(e) => (AttackOutcome::TransportError, format!("no answer from the vault: {e}")),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let vault_error = serde_json::from_str::<vault_api::wire::ErrorBody>(&body).ok().map(|b| b.error);
            match vault_error {
                _ if (200..300).contains(&status) => (AttackOutcome::Accepted, format!("{status}: ACCEPTED")),
                Some(msg) if guard.answers(status) => {
                    (AttackOutcome::Refused, format!("refused, {status}: {msg}"))
                }
                Some(msg) => (
                    AttackOutcome::UnexpectedAnswer,
                    format!("{status}: {msg} (expected a refusal by {})", guard.describe()),
                ),
                None => (
                    AttackOutcome::UnexpectedAnswer,
                    format!("{status} without the vault's error body: {:.200}", body),
                ),
            }
        }
    };
    VaultAttack {
        credential: credential.into(),
        action: action.into(),
        request,
        expected: guard.describe(),
        refused: outcome == AttackOutcome::Refused,
        outcome,
        answer,
    }
}

/// Every credential the insider holds, turned on the vault through its real routes: read,
/// overwrite a stored pack, shorten retention, mint a token, propose and execute a deletion.
async fn attack_vault(s: &mut Story, st: &Stage, found: &[(String, String)]) -> Result<Vec<VaultAttack>> {
    use reqwest::Method;
    let v = &st.vault;
    let client = VaultClient::new(v.url(), &v.ca_pem(), None)?;
    let pack = first_object(&v.store_dir().join("pack"))
        .ok_or_else(|| anyhow!("the vault's store holds no pack"))?;
    let object = format!("/v1/objects/pack/{pack}");
    let shorten = serde_json::json!({ "days": 1 });
    let mut out = Vec::new();
    let mut creds: Vec<(String, Option<String>)> = vec![("no credential".into(), None)];
    creds.extend(found.iter().map(|(w, p)| (w.clone(), Some(p.clone()))));
    for (what, token) in &creds {
        let c = client.with_token(token.clone());
        let auth = Guard::Authorisation;
        out.push(attempt(what, "read the vault's status", auth, c.request(Method::GET, "/v1/status")).await);
        out.push(
            attempt(what, "read the backups", auth, c.request(Method::GET, "/v1/clusters/shop/inventory"))
                .await,
        );
        out.push(
            attempt(
                what,
                "overwrite a stored pack with other bytes",
                auth,
                c.request(Method::PUT, &object).body("ransom note"),
            )
            .await,
        );
        out.push(
            attempt(
                what,
                "shorten retention to 1 day",
                auth,
                c.request(Method::PUT, "/v1/retention").json(&shorten),
            )
            .await,
        );
    }
    // The gate's append-only audit token, had he reached the jump host too. It may upload
    // packs, so the overwrite is stopped by the content address, not by the scope.
    let what = "the gate's append-only audit token (from the jump host)";
    let c = client.with_token(Some(st.append.clone()));
    out.push(
        attempt(
            what,
            "overwrite a stored pack with other bytes",
            Guard::Rule(400, "an object's bytes hash to its name, and nothing is replaced"),
            c.request(Method::PUT, &object).body("ransom note"),
        )
        .await,
    );
    let auth = Guard::Authorisation;
    out.push(
        attempt(
            what,
            "mint an admin token",
            auth,
            c.request(Method::POST, "/v1/tokens")
                .json(&serde_json::json!({ "scope": "admin", "label": "escalate" })),
        )
        .await,
    );
    out.push(
        attempt(
            what,
            "shorten retention to 1 day",
            auth,
            c.request(Method::PUT, "/v1/retention").json(&shorten),
        )
        .await,
    );
    out.push(
        attempt(
            what,
            "propose deleting the base backup",
            auth,
            c.request(Method::POST, "/v1/proposals").json(&vault_api::wire::ProposeRequest {
                objects: Vec::new(),
                backup: Some(st.backup_id.clone()),
                reason: "cleanup".into(),
            }),
        )
        .await,
    );
    out.push(
        attempt(what, "read the backups", auth, c.request(Method::GET, "/v1/clusters/shop/inventory")).await,
    );

    // Had he talked a vault operator (A3) and one keyholder into it: the admin token and
    // alice's signature still cannot shorten retention or delete early.
    let what = "the vault operator's admin token and keyholder alice's signature (A3: other people)";
    let c = client.with_token(Some(st.vault.admin_token().to_string()));
    out.push(
        attempt(
            what,
            "shorten retention to 1 day",
            Guard::Rule(403, "retention only lengthens"),
            c.request(Method::PUT, "/v1/retention").json(&shorten),
        )
        .await,
    );
    let proposal = st
        .admin
        .propose(&vault_api::wire::ProposeRequest {
            objects: Vec::new(),
            backup: Some(st.backup_id.clone()),
            reason: "cleanup".into(),
        })
        .await?;
    let signed = {
        use ed25519_dalek::Signer;
        let req = vault_api::wire::SignRequest {
            public_key: hex::encode(st.alice.verifying_key().as_bytes()),
            signature: hex::encode(st.alice.sign(&proposal.statement.canonical_bytes()).to_bytes()),
        };
        st.admin.sign(&proposal.id, &req).await?
    };
    s.say(format!(
        "admin token: proposal {} to delete backup {} recorded (ALERT sent), signed by {} of the {} keyholders needed; 72 h in which any one can veto",
        proposal.id,
        st.backup_id,
        signed.signed_by.len(),
        signed.threshold
    ));
    out.push(
        attempt(
            what,
            &format!("execute deletion proposal {} now, with one signature", proposal.id),
            Guard::Rule(403, "early deletion needs 2 of 3 keyholders and 72 h"),
            c.request(Method::POST, &format!("/v1/proposals/{}/execute", proposal.id)),
        )
        .await,
    );
    Ok(out)
}

/// The name (hex) of some object under a store kind directory.
fn first_object(dir: &Path) -> Option<String> {
    for sub in std::fs::read_dir(dir).ok()?.flatten() {
        for f in std::fs::read_dir(sub.path()).ok()?.flatten() {
            let n = f.file_name().to_string_lossy().to_string();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(n);
            }
        }
    }
    None
}

/// Waits until the gate has shipped its audit log, then reads the insider's records back from
/// the vault with `holdfast audit search` and checks the chain with `holdfast audit verify`.
fn audit_excerpt(
    gate: &Gate,
    totp: &str,
    v: &TempVault,
    read: &Path,
) -> Result<(Vec<serde_json::Value>, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Everything recorded up to now: under --repair the shop keeps trading through the gate,
    // so records keep coming and the spool is never empty.
    let mut upto = None;
    let key = loop {
        let out = gate.dba(totp, &["status", "--json"])?;
        if !out.status.success() {
            bail!("holdfast gate status failed: {}", text(&out));
        }
        let st: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let last = *upto.get_or_insert(st["audit"]["last_seq"].as_u64().unwrap_or(0));
        if st["audit"]["pending_records"] == 0
            || st["audit"]["shipped_seq"].as_u64().is_some_and(|s| s >= last)
        {
            break st["audit"]["public_key"].as_str().unwrap_or("").to_string();
        }
        if Instant::now() > deadline {
            bail!("the gate did not ship its audit log to the vault within 30 s: {}", st["audit"]);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let verified = v.cli(read, &["audit", "verify", "--trust-key", &key])?.status.success();
    let out = vault_cli(v, read, &["audit", "search", "--trust-key", &key, "--person", INSIDER, "--json"])?;
    Ok((serde_json::from_slice(&out).context("reading holdfast audit search --json")?, verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on a local port that answers every request with `response`.
    fn answering(response: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        url
    }

    /// Only the vault's own refusal, with the status of the guard named, counts: a route that
    /// does not exist (a 404 without the vault's error body), a refusal with another status, an
    /// acceptance and no answer at all are each reported as what they were.
    #[tokio::test]
    async fn only_the_vaults_own_refusal_counts_as_refused() {
        let http = reqwest::Client::new();
        let auth = Guard::Authorisation;
        let vault_401 = answering(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 26\r\nconnection: close\r\n\r\n{\"error\":\"missing token\"}\n",
        );
        let a = attempt("none", "read", auth, http.get(format!("{vault_401}/v1/status"))).await;
        assert_eq!((a.outcome, a.refused), (AttackOutcome::Refused, true), "{a:?}");
        assert_eq!(a.request, "GET /v1/status");
        assert!(a.answer.starts_with("refused, 401: missing token"), "{a:?}");
        // The same refusal where the guard expected is a rule answering 403: not counted.
        let a =
            attempt("none", "read", Guard::Rule(403, "x"), http.get(format!("{vault_401}/v1/status"))).await;
        assert_eq!((a.outcome, a.refused), (AttackOutcome::UnexpectedAnswer, false), "{a:?}");

        let no_route = answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let a = attempt("none", "delete", auth, http.delete(format!("{no_route}/v1/objects/pack/x"))).await;
        assert_eq!((a.outcome, a.refused), (AttackOutcome::UnexpectedAnswer, false), "{a:?}");
        assert!(a.answer.contains("without the vault's error body"), "{a:?}");

        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        let a = attempt("none", "read", auth, http.get(format!("{ok}/v1/status"))).await;
        assert_eq!((a.outcome, a.refused), (AttackOutcome::Accepted, false), "{a:?}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let a = attempt("none", "read", auth, http.get(format!("{closed}/v1/status"))).await;
        assert_eq!((a.outcome, a.refused), (AttackOutcome::TransportError, false), "{a:?}");
        assert!(a.answer.starts_with("no answer from the vault"), "{a:?}");
    }
}
