//! `holdfast demo`: the February 2020 incident, replayed against holdfast on one machine.
//!
//! Everything is real and started here: a PostgreSQL primary with a streaming standby, a vault
//! (its own `holdfast vault serve` process, its own port) pulling the WAL stream and a base
//! backup, and a gate (`holdfast gate serve`) through which a shop workload places orders. Then
//! the insider strikes: through the gate he sends `DROP DATABASE` and a bulk `DELETE` (held,
//! rejected by the on-call DBA, audited under his name); as root on the database hosts he drops
//! the database, drops the vault's slot, erases both data directories and turns every credential
//! found there (and the gate's audit token) on the vault. The vault raises the incident; the
//! operator restores to just before it with `holdfast restore --before-incident N`; every
//! order, points balance and gift-card balance is compared, merchant by merchant, with what
//! the workload saw committed. The verdict is printed (and with `--json` is the last line),
//! and an HTML report is written.
//!
//! Everything started is owned by a value whose `Drop` stops it, so an error or Ctrl-C (the
//! future is dropped) leaves nothing running.

mod report;
mod shop;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use report::{Event, GateAttempt, IncidentSeen, VaultAttack, Verdict};
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
}

impl Story {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn step(&self, n: u32, text: &str) {
        println!("\n==> {n}. {text}");
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
    tokio::select! {
        r = story(&opts, work.path()) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping everything the demo started");
            Ok(130)
        }
    }
}

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
        Ok(Gate { _proc: proc, addr, control, cert: dir.join("state/tls/cert.pem") })
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

async fn story(o: &Options, work: &Path) -> Result<u8> {
    let mut s = Story { start: Instant::now(), events: Vec::new() };
    let exe = std::env::current_exe().context("locating the holdfast binary")?;
    println!("holdfast demo: the 删库跑路 incident of February 2020, replayed on this machine.");
    println!(
        "work files: {}{}",
        work.display(),
        if o.dir.is_some() { "" } else { " (removed at the end; --dir DIR keeps them)" }
    );

    // ------------------------------------------------------------------------------------
    s.step(1, "Production: a PostgreSQL 15 primary and a streaming standby; a vault; a gate");
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
    let base_max = o.merchants * shop::ORDERS;
    let base: Snapshot = blocking(|| shop::snapshot(&|sql| primary.psql_db("shop", sql), base_max))?;
    s.event(
        "shop",
        format!(
            "loaded {} merchants: {} customers, {} orders, {} gift cards",
            o.merchants,
            base.customer_merchant.len(),
            base_max,
            base.cards.len()
        ),
    );

    // The vault: keys wrapped to an offline escrow key, 2-of-3 keyholders for early deletion.
    let mut keyholders = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let key = ed25519_dalek::SigningKey::from_bytes(&random::<32>()?);
        keyholders.push((name.to_string(), hex::encode(key.verifying_key().as_bytes())));
    }
    let mut vault = blocking(|| {
        TempVault::start_with(
            &exe,
            TempVaultOptions { keyholders, threshold: Some(2), retention_days: 30, wait_hours: 72 },
        )
    })?;
    let (hook, alerts) = testkit::webhook::receiver();
    let rep_pw_file = vault.scratch().join("rep.password");
    std::fs::write(&rep_pw_file, format!("{rep_password}\n"))?;
    let config = std::fs::read_to_string(vault.config_path())?;
    std::fs::write(
        vault.config_path(),
        format!(
            "webhook = [{{ name = \"oncall\", url = \"{hook}\" }}]\n{config}\n[[cluster]]\nname = \"shop\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\ncatalog_refresh_seconds = 5\n",
            primary.socket_dir().display(),
            primary.port(),
            rep_pw_file.display()
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
    let backup: serde_json::Value = serde_json::from_slice(&blocking(|| {
        vault_cli(&vault, &admin_token, &["backup", "--cluster", "shop", "--json"])
    })?)
    .context("reading holdfast backup --json")?;
    s.event(
        "vault",
        format!(
            "base backup {} pulled (BASE_BACKUP → chunked, compressed, encrypted); complete once its WAL is stored",
            backup["id"].as_str().unwrap_or("?")
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

    // ------------------------------------------------------------------------------------
    s.step(2, "Business as usual: orders, points and gift-card payments through the gate");
    let mut cfg = pgproto::conn::Config::new(
        pgproto::conn::Host::Tcp { host: "127.0.0.1".into(), port: gate.port()? },
        APP,
    )
    .password(APP_PASSWORD, "the demo");
    cfg.ssl = pgproto::conn::SslMode::VerifyFull { ca_pem: std::fs::read(&gate.cert)? };
    cfg.application_name = "shop".into();
    let ledger = Arc::new(Ledger::default());
    let mut workers = tokio::task::JoinSet::new();
    let seed = u64::from_le_bytes(random::<8>()?);
    for i in 0..o.workers {
        workers.spawn(shop::worker(
            cfg.clone(),
            o.merchants,
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
        bail!(
            "the workload committed nothing in {} s; see {}",
            o.business_seconds,
            gate_dir.join("gate.log").display()
        );
    }
    s.event(
        "shop",
        format!(
            "{committed} orders committed in {} s ({:.0}/s), each remembered with its points and gift-card payment",
            o.business_seconds,
            committed as f64 / business_start.elapsed().as_secs_f64()
        ),
    );

    // ------------------------------------------------------------------------------------
    s.step(3, &format!("The insider ({INSIDER}) strikes through the gate"));
    let before_insider = ledger.committed.load(Ordering::Relaxed);
    let insider_sql = ["DROP DATABASE shop", "DELETE FROM stored_value_cards"];
    let mut psqls = Vec::new();
    for sql in insider_sql {
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
        let out = blocking(|| gate.dba(&dba_totp, &["pending", "--json"]))?;
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, _) in &held {
        let out = blocking(|| {
            gate.dba(
                &dba_totp,
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
        blocking(|| primary.psql_db("shop", "SELECT count(*) FROM stored_value_cards"))?.parse()?;
    s.say(format!(
        "the shop still holds {still_there} gift cards; {} more orders were committed while he waited",
        ledger.committed.load(Ordering::Relaxed) - before_insider
    ));

    // ------------------------------------------------------------------------------------
    s.step(4, "The insider strikes as root on the database hosts (A1: every host, the superuser)");
    // He reads every file on those hosts first: these are the credentials he will try.
    let found = credentials_on_hosts(&[primary.data_dir(), standby.data_dir()]);
    s.say(format!(
        "credentials found in the data directories: {}",
        if found.is_empty() {
            "none".to_string()
        } else {
            found.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(", ")
        }
    ));
    let attack_sql = "DROP DATABASE shop WITH (FORCE)";
    blocking(|| primary.psql(attack_sql))?;
    let attack_at = Instant::now();
    let attack_t = s.t();
    s.event("insider", format!("psql as postgres on the primary: {attack_sql};"));
    let drop_end: pgfmt::Lsn = blocking(|| primary.psql("SELECT pg_current_wal_flush_lsn()"))?.parse()?;
    // The vault pulls the WAL as it is written: by the time he reaches for the slot, the DROP
    // is normally stored (the timeline shows when).
    let stored_in = wait_durable(&admin, drop_end, Duration::from_secs(5)).await;
    match stored_in {
        Some(d) => s.event(
            "vault",
            format!(
                "WAL of the DROP (to {drop_end}) stored in the vault {} ms after it returned",
                d.as_millis()
            ),
        ),
        None => s.event("vault", format!("WAL of the DROP (to {drop_end}) NOT stored within 5 s")),
    }
    blocking(|| drop_vault_slot(&primary))?;
    s.event("insider", "pg_terminate_backend(walsender); pg_drop_replication_slot('holdfast_shop');");
    let mut primary = primary;
    let mut standby = standby;
    for (name, pg) in [("primary", &mut primary), ("standby", &mut standby)] {
        let data = pg.data_dir().to_path_buf();
        blocking(|| pg.kill())?;
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        s.event("insider", format!("kill -9 postgres; rm -rf {}   ({name})", data.display()));
    }
    // The workload's sessions died with the database.
    let _ =
        tokio::time::timeout(Duration::from_secs(15), async { while workers.join_next().await.is_some() {} })
            .await;
    workers.abort_all();
    let placed = ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked = placed.iter().filter(|p| p.acknowledged).count();
    let in_doubt = placed.len() - acked;
    s.say(format!(
        "the workload had {acked} orders acknowledged; {in_doubt} in flight when the database went (COMMIT sent, no answer)"
    ));

    // ------------------------------------------------------------------------------------
    s.step(5, "What the vault saw");
    let deadline = Instant::now() + Duration::from_secs(60);
    let alerted = loop {
        let hit = alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(at, body)| {
                *at >= attack_at - Duration::from_secs(1) && body.to_string().contains("database_dropped")
            })
            .map(|(at, _)| at.saturating_duration_since(attack_at));
        if hit.is_some() || Instant::now() > deadline {
            break hit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let incidents: Vec<vault_api::status::Incident> = serde_json::from_slice(&blocking(|| {
        vault_cli(&vault, &read_file, &["incidents", "--cluster", "shop", "--json"])
    })?)
    .context("reading holdfast incidents --json")?;
    let incident =
        incidents.iter().enumerate().find(|(_, i)| i.kind == "database_dropped").map(|(n, i)| IncidentSeen {
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
    let alert_t = alerted.map(|d| attack_t + d.as_secs_f64()).unwrap_or_else(|| s.t());
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
                    .map(|a| format!("{a:.2} s after the DROP returned"))
                    .unwrap_or_else(|| "not received".into())
            ),
        ),
        None => s.event("vault", "NO database_dropped incident was raised"),
    }
    let other_incidents: Vec<String> = incidents
        .iter()
        .filter(|i| i.kind != "database_dropped")
        .map(|i| format!("{}: {}", i.kind, i.message))
        .collect();
    for i in &other_incidents {
        s.say(format!("incident {i}"));
    }

    // ------------------------------------------------------------------------------------
    s.step(6, "The insider turns on the backups with every credential he found");
    let mut attacks = attack_vault(&vault, &found, &append).await?;
    // And had he talked a vault operator into it (A3): the admin token cannot delete early either.
    let backup_id = backup["id"].as_str().unwrap_or("").to_string();
    let who = "the vault operator's admin token (A3: another person)";
    attacks.push(refusal(who, "shorten retention to 1 day", admin.set_retention(1).await.map(|_| ())));
    let proposal = admin
        .propose(&vault_api::wire::ProposeRequest {
            objects: Vec::new(),
            backup: Some(backup_id.clone()),
            reason: "cleanup".into(),
        })
        .await?;
    s.say(format!(
        "admin token: propose deleting backup {backup_id} -> recorded as {}, ALERT sent; it needs 2 of alice, bob, carol and 72 h in which any one can veto",
        proposal.id
    ));
    attacks.push(refusal(
        who,
        &format!("execute deletion proposal {} now", proposal.id),
        admin.execute(&proposal.id).await.map(|_| ()),
    ));
    for a in &attacks {
        s.say(format!(
            "{} with {}: {}",
            a.action,
            a.credential,
            if a.refused { format!("refused ({})", a.answer) } else { format!("ACCEPTED ({})", a.answer) }
        ));
    }
    let refused = attacks.iter().filter(|a| a.refused).count();
    s.event("vault", format!("{refused} of {} attacks on the vault refused", attacks.len()));
    // And the store is whole: every object re-hashed, every backup's chunks present.
    let config = vault.config_path().display().to_string();
    let out = blocking(|| vault.holdfast(&["vault", "check", "--config", &config, "--json"]))?;
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
    let (audit, audit_verified) = blocking(|| audit_excerpt(&gate, &dba_totp, &vault, &read_file))?;
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
            r["detail"]["sql"].as_str().or(r["detail"]["reason"].as_str()).unwrap_or("")
        ));
    }

    // ------------------------------------------------------------------------------------
    s.step(7, "The operator restores the shop to just before the incident");
    let number = incident.as_ref().map(|i| i.number).ok_or_else(|| {
        anyhow!("the vault raised no database_dropped incident; vault log:\n{}", vault.log())
    })?;
    let target_dir = work.join("restored");
    let mut args = vec!["restore".to_string()];
    args.extend(vault.remote_args(&read_file));
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
    let out = tokio::process::Command::new(&exe)
        .args(&args)
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", primary.superuser_password())
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
    let restore_target = format!(
        "{} (recovered to {}, last commit replayed {})",
        rep["target"].as_str().unwrap_or("?"),
        rep["recovered_lsn"].as_str().unwrap_or("?"),
        rep["last_replayed_commit"].as_str().unwrap_or("?")
    );
    s.event(
        "operator",
        format!(
            "restored backup {} and replayed the vault's WAL to {}; server open on port {port}",
            rep["backup"].as_str().unwrap_or("?"),
            rep["target"].as_str().unwrap_or("?")
        ),
    );
    let password = primary.superuser_password().to_string();
    let restored: Snapshot = blocking(|| {
        shop::snapshot(&|sql| testkit::pg::psql_at(&socket, port, &password, "shop", sql), base_max)
    })?;
    let rto = restore_started.elapsed().as_secs_f64();
    let cmp = shop::compare(&base, &placed, &restored);
    let attack_to_verified = attack_at.elapsed().as_secs_f64();
    s.event(
        "operator",
        format!(
            "verified {} merchants: {} rows lost, {} values wrong, {} of {in_doubt} in-doubt orders had committed",
            cmp.merchants.len(),
            cmp.rows_lost,
            cmp.values_wrong,
            cmp.in_doubt_committed
        ),
    );
    drop(restored_server);
    let _ = std::fs::remove_dir(&socket);

    // ------------------------------------------------------------------------------------
    s.step(8, "Verdict");
    // Seconds of acknowledged work lost: from the oldest acknowledged order missing to the attack.
    let lost_since = placed
        .iter()
        .filter(|p| p.acknowledged && !restored.new_orders.contains_key(&p.order_id))
        .map(|p| p.at)
        .min();
    let rpo = lost_since.map(|at| attack_at.saturating_duration_since(at).as_secs_f64()).unwrap_or(0.0);
    let verified = cmp.merchants.iter().filter(|m| m.ok).count();
    let gate_held = gate_attempts.iter().filter(|g| g.held).count();
    let gate_executed = gate_attempts.iter().filter(|g| g.executed).count();
    let ok = cmp.rows_lost == 0
        && cmp.values_wrong == 0
        && cmp.unexplained_orders == 0
        && incident.is_some()
        && alerted.is_some()
        && gate_held == insider_sql.len()
        && gate_executed == 0
        && refused == attacks.len()
        && vault_intact
        && vault_objects > 0
        && !attacks.is_empty()
        && audit_verified
        && audit.iter().filter(|r| r["kind"] == "approval_requested").count() >= insider_sql.len()
        && verified == cmp.merchants.len();
    let report_path = std::path::absolute(&o.report)?;
    let mut verdict = Verdict {
        ok,
        merchants: base.merchants.len(),
        merchants_affected: base.merchants.len(),
        merchants_verified: verified,
        rows_lost: cmp.rows_lost,
        values_wrong: cmp.values_wrong,
        transactions_committed: acked as u64,
        transactions_in_doubt: in_doubt,
        in_doubt_found_committed: cmp.in_doubt_committed,
        unexplained_orders: cmp.unexplained_orders,
        incident_found: incident.is_some(),
        incident,
        other_incidents,
        gate_held,
        gate_executed,
        gate: gate_attempts,
        audit_records_for_insider: audit.len(),
        audit_verified,
        vault_intact,
        vault_objects_checked: vault_objects,
        vault_attacks: attacks.len(),
        vault_attacks_refused: refused,
        attacks,
        rpo_seconds: rpo,
        rto_seconds: rto,
        attack_to_verified_seconds: attack_to_verified,
        restore_target,
        duration_seconds: 0.0,
        report: report_path.display().to_string(),
        timeline: Vec::new(),
    };
    verdict.duration_seconds = s.t();
    verdict.timeline = s.events.clone();
    verdict.timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
    std::fs::write(&report_path, report::html(&verdict, &cmp.merchants, &audit))
        .with_context(|| format!("writing the report {}", report_path.display()))?;

    println!("    timeline:");
    for e in &verdict.timeline {
        println!("      {:6.1} s  {:<8} {}", e.t, e.actor, e.what);
    }
    println!(
        "\n    merchants affected {}, verified {}; rows lost {}; values wrong {}; RPO {:.1} s; RTO {:.1} s (attack → verified {:.1} s)",
        verdict.merchants_affected,
        verdict.merchants_verified,
        verdict.rows_lost,
        verdict.values_wrong,
        verdict.rpo_seconds,
        verdict.rto_seconds,
        verdict.attack_to_verified_seconds
    );
    println!(
        "    gate held {} of {} destructive statements, executed {}; vault refused {} of {} attacks",
        verdict.gate_held,
        insider_sql.len(),
        verdict.gate_executed,
        verdict.vault_attacks_refused,
        verdict.vault_attacks
    );
    println!(
        "    {}",
        if ok {
            "VERDICT: every order, points balance and gift-card balance committed before the attack is back"
        } else {
            "VERDICT: FAILED — see the report"
        }
    );
    println!("    report: {}   ({:.0} s in all)", report_path.display(), verdict.duration_seconds);
    if o.json {
        println!("{}", serde_json::to_string(&verdict)?);
    }
    drop(gate);
    drop(vault);
    Ok(if ok { 0 } else { 1 })
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

/// Every credential the insider holds, turned on the vault: read, delete, overwrite, escalate,
/// shorten retention. Each answer is recorded; an attack counts as refused only if the vault
/// answered with an error.
async fn attack_vault(v: &TempVault, found: &[(String, String)], append: &str) -> Result<Vec<VaultAttack>> {
    let client = VaultClient::new(v.url(), &v.ca_pem(), None)?;
    let pack = first_object(&v.store_dir().join("pack"))
        .ok_or_else(|| anyhow!("the vault's store holds no pack"))?;
    let name = format!("pack/{pack}");
    let mut creds: Vec<(String, Option<String>)> = vec![("no credential".into(), None)];
    creds.extend(found.iter().map(|(w, p)| (w.clone(), Some(p.clone()))));
    let mut out = Vec::new();
    for (what, token) in &creds {
        let c = client.with_token(token.clone());
        for (action, method, path) in [
            ("read the vault's status", reqwest::Method::GET, "/v1/status".to_string()),
            ("read the backups", reqwest::Method::GET, "/v1/clusters/shop/inventory".to_string()),
            ("delete a pack", reqwest::Method::DELETE, format!("/v1/objects/{name}")),
        ] {
            let r = c.request(method, &path).send().await;
            out.push(answer(what, &format!("{action}: {path}"), r));
        }
    }
    // The gate's append-only audit token, had he reached the jump host too.
    let what = "the gate's append-only audit token (from the jump host)";
    let thief = client.with_token(Some(append.to_string()));
    let r = thief.request(reqwest::Method::DELETE, &format!("/v1/objects/{name}")).send().await;
    out.push(answer(what, &format!("delete a pack: DELETE /v1/objects/{name}"), r));
    let parsed: store::ObjectName = name.parse().map_err(|e| anyhow!("{name}: {e:?}"))?;
    let r = thief.put_object(&parsed, bytes::Bytes::from_static(b"ransom note")).await;
    out.push(refusal(what, "overwrite that pack", r.map(|_| ())));
    let r = thief.create_token(Scope::Admin, "escalate").await;
    out.push(refusal(what, "mint an admin token", r.map(|_| ())));
    let r = thief.set_retention(1).await;
    out.push(refusal(what, "shorten retention to 1 day", r.map(|_| ())));
    let r = thief.request(reqwest::Method::GET, "/v1/clusters/shop/inventory").send().await;
    out.push(answer(what, "read the backups: GET /v1/clusters/shop/inventory", r));
    Ok(out)
}

fn answer(credential: &str, action: &str, r: reqwest::Result<reqwest::Response>) -> VaultAttack {
    let (refused, answer) = match r {
        Ok(resp) => (!resp.status().is_success(), resp.status().to_string()),
        Err(e) => (true, format!("no answer: {e}")),
    };
    VaultAttack { credential: credential.into(), action: action.into(), refused, answer }
}

fn refusal(
    credential: &str,
    action: &str,
    r: std::result::Result<(), vault_api::client::ClientError>,
) -> VaultAttack {
    let (refused, answer) = match r {
        Ok(()) => (false, "accepted".into()),
        Err(e) => (true, e.to_string()),
    };
    VaultAttack { credential: credential.into(), action: action.into(), refused, answer }
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
    let key = loop {
        let out = gate.dba(totp, &["status", "--json"])?;
        if !out.status.success() {
            bail!("holdfast gate status failed: {}", text(&out));
        }
        let st: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if st["audit"]["pending_records"] == 0 {
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
