//! The warm standby against a real PostgreSQL under a shop-shaped write load: the insider's
//! DROP TABLE and mass DELETE each stop the vault's standby just before the destroying
//! transaction — it never applies one, it shows every row read-only at once, and promoted it
//! equals the shop as it was just before, merchant by merchant (with what committed while the
//! destroying transaction ran), all without restarting PostgreSQL; `standby resume` makes it follow
//! again; killed, it is an incident and the vault starts it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::pg::{TempPg, command_as_postgres, psql_at};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const MERCHANTS: i64 = 20;

/// A small shop: merchants, their customers and orders, with ids chosen per merchant.
fn shop_schema() -> String {
    format!(
        "CREATE TABLE merchants (merchant_id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE customers (customer_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, name text NOT NULL);
         CREATE TABLE orders (order_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, customer_id bigint NOT NULL, total_cents int NOT NULL);
         CREATE TABLE points (entry_id bigserial PRIMARY KEY, merchant_id int NOT NULL, delta int NOT NULL);
         INSERT INTO points (merchant_id, delta) SELECT 1 + g % {MERCHANTS}, g % 100 FROM generate_series(1, {o}) g;
         INSERT INTO merchants SELECT g, 'merchant ' || g FROM generate_series(1, {MERCHANTS}) g;
         INSERT INTO customers SELECT g, 1 + g % {MERCHANTS}, 'customer ' || g FROM generate_series(1, {c}) g;
         INSERT INTO orders (merchant_id, customer_id, total_cents) SELECT 1 + g % {MERCHANTS}, g % {c}, 100 + g % 9000 FROM generate_series(1, {o}) g;
         ANALYZE;",
        c = MERCHANTS * 50,
        o = MERCHANTS * 200,
    )
}

/// Per-merchant fingerprint of every shop table that exists: `table merchant count md5` lines.
const FINGERPRINT: &str = "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
      SELECT 'orders ' || merchant_id || ' ' || count(*) || ' ' || md5(string_agg(o::text, ',' ORDER BY order_id)) AS line FROM orders o GROUP BY merchant_id
      UNION ALL
      SELECT 'customers ' || merchant_id || ' ' || count(*) || ' ' || md5(string_agg(c::text, ',' ORDER BY customer_id)) FROM customers c
        WHERE to_regclass('customers') IS NOT NULL GROUP BY merchant_id
      UNION ALL
      SELECT 'merchants ' || merchant_id || ' 1 ' || md5(m::text) FROM merchants m) x";

/// Without `customers` (after it was dropped, the query above cannot name it).
const FINGERPRINT_NO_CUSTOMERS: &str = "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
      SELECT 'orders ' || merchant_id || ' ' || count(*) || ' ' || md5(string_agg(o::text, ',' ORDER BY order_id)) AS line FROM orders o GROUP BY merchant_id
      UNION ALL
      SELECT 'merchants ' || merchant_id || ' 1 ' || md5(m::text) FROM merchants m) x";

/// The merchant a fingerprint line is about (`table merchant count md5`).
fn merchant_of(line: &str) -> i64 {
    line.split(' ').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Orders placed one transaction at a time, by merchant, until stopped.
struct Workload {
    stop: Arc<AtomicBool>,
    placed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(pg: &TempPg) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let placed = Arc::new(AtomicU64::new(0));
        let (socket, port, pw) = (pg.socket_dir(), pg.port(), pg.superuser_password().to_string());
        let (s, p) = (stop.clone(), placed.clone());
        let thread = std::thread::spawn(move || {
            let mut i: i64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let m = 1 + i % MERCHANTS;
                let sql = format!(
                    "INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES ({m}, {}, {})",
                    m + MERCHANTS * (i % 50),
                    100 + i % 5000
                );
                match psql_at(&socket, port, &pw, "postgres", &sql) {
                    Ok(_) => {}
                    // The test is over and PostgreSQL goes down under the last order.
                    Err(_) if s.load(Ordering::Relaxed) => break,
                    Err(e) => panic!("the shop workload failed: {e}"),
                }
                p.fetch_add(1, Ordering::Relaxed);
            }
        });
        Workload { stop, placed, thread: Some(thread) }
    }

    /// Stops it and waits for the last order: after this, production is quiet.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.placed.load(Ordering::Relaxed)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Stops the standby's PostgreSQL when the test ends, however it ends (the vault leaves its
/// standby running on purpose: it is a warm copy, not scratch).
struct StopStandby(PathBuf);

impl Drop for StopStandby {
    fn drop(&mut self) {
        for dir in [self.0.clone()].into_iter().chain(
            std::fs::read_dir(self.0.parent().unwrap())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".replaced-")),
        ) {
            if dir.join("postmaster.pid").exists() {
                let mut c = command_as_postgres(&testkit::pg::bin("pg_ctl").unwrap());
                c.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
                let _ = c.output();
            }
        }
    }
}

struct Setup {
    pg: TempPg,
    v: TempVault,
    admin: PathBuf,
    data: PathBuf,
    port: u16,
    _stop: StopStandby,
    _root: tempfile::TempDir,
}

impl Setup {
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.v.cli(&self.admin, args).unwrap();
        assert!(
            out.status.success() || out.status.code() == Some(3),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.v.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn standby(&self) -> serde_json::Value {
        self.json(&["standby", "status", "--json"])["standbys"][0].clone()
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        self.json(&["incidents", "--cluster", "main", "--json"]).as_array().unwrap().clone()
    }

    /// A query on the standby, over its socket (as production's superuser, with its password:
    /// the standby holds production's roles).
    fn on_standby(&self, sql: &str) -> anyhow::Result<String> {
        psql_at(&self.data, self.port, self.pg.superuser_password(), "postgres", sql)
    }

    /// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
    fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}\n{}",
                self.standby(),
                self.v.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the vault holds production's WAL up to its flush position now.
    fn wait_vault_holds_wal(&self, what: &str, secs: u64) {
        let flush: pgfmt::Lsn = self.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
        self.wait(what, secs, || {
            let st = self.json(&["status", "--json"]);
            let durable = st["clusters"][0]["durable_lsn"].as_str()?.parse::<pgfmt::Lsn>().ok()?;
            (durable >= flush).then_some(())
        });
    }

    fn wait_state(&self, state: &str, secs: u64) -> serde_json::Value {
        self.wait(&format!("the standby {state} and ready"), secs, || {
            let st = self.standby();
            (st["state"] == state && st["ready"] == true).then_some(st)
        })
    }

    /// Waits until the standby has replayed everything production wrote up to now (so a later
    /// change is the only thing it has not applied).
    fn wait_caught_up(&self, secs: u64) {
        let end: pgfmt::Lsn = self.pg.psql("SELECT pg_current_wal_lsn()").unwrap().parse().unwrap();
        self.wait("the standby to replay production's WAL", secs, || {
            let st = self.standby();
            let replay = st["replay_lsn"].as_str().and_then(|l| l.parse::<pgfmt::Lsn>().ok())?;
            (replay >= end).then_some(())
        });
    }

    /// Runs the insider's `sql` and, until the standby is paused before the incident it raises,
    /// checks every 100 ms that the standby still shows what `sql` destroys (`probe` answers).
    /// Returns the incident's number.
    fn destroy_and_watch(&self, sql: &str, kind: &str, probe: &str, expect: &str) -> usize {
        let known = self.incidents().len();
        self.pg.psql(sql).unwrap();
        self.wait_paused_after(known, kind, probe, expect)
    }

    /// Waits until the standby is paused before the first `kind` incident after the first
    /// `known`, checking all along that it still shows what was destroyed.
    fn wait_paused_after(&self, known: usize, kind: &str, probe: &str, expect: &str) -> usize {
        let t0 = Instant::now();
        let mut looks = 0;
        let n = self.wait(&format!("the standby to stop before the {kind} incident"), 60, || {
            // The standby never shows the destruction, at any moment, also while the vault has
            // not yet seen it (PostgreSQL restarts it at the target: it may not answer briefly).
            // A DROP's lock, replayed before its commit, may hold the table until the standby is
            // restarted at the target: a read that waits is not an answer.
            if let Ok(v) = self.on_standby(&format!("SET lock_timeout = '1s'; {probe}")) {
                assert_eq!(
                    v,
                    expect,
                    "the standby applied the destroying transaction ({kind}) after {:?}",
                    t0.elapsed()
                );
                looks += 1;
            }
            let st = self.standby();
            let list = self.incidents();
            let (i, _) = list.iter().enumerate().skip(known).find(|(_, i)| i["kind"] == kind)?;
            (st["state"] == "paused" && st["ready"] == true && st["paused_before_incident"] == i + 1)
                .then_some(i + 1)
        });
        eprintln!(
            "standby: {kind}: paused read-only before incident {n} {:.1} s after the statement returned",
            t0.elapsed().as_secs_f64()
        );
        assert!(looks > 0, "the standby was never looked at while it waited");
        assert_eq!(self.on_standby(probe).unwrap(), expect);
        n
    }
}

fn setup() -> Setup {
    setup_with("8s", "backup_wal_share = 0\n")
}

/// [`setup`] with the standby's `apply_delay` and more lines of its `[[standby]]` table.
fn setup_with(apply_delay: &str, standby_extra: &str) -> Setup {
    setup_maybe_standby(Some((apply_delay, standby_extra)))
}

/// [`setup_with`], or without a standby (`None`).
fn setup_maybe_standby(standby: Option<(&str, &str)>) -> Setup {
    let pg = TempPg::start().unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql(&shop_schema()).unwrap();
    let mut v = TempVault::start(holdfast()).unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    // The standby's parent directory: reachable by the `postgres` user.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = root.path().join("standby");
    // The standby's server restarts on this port (pause, promote): not an ephemeral one, which
    // an outgoing connection could take in between.
    let port = testkit::net::port_to_reuse().unwrap();
    let text = std::fs::read_to_string(v.config_path()).unwrap();
    std::fs::write(
        v.config_path(),
        format!(
            "{text}\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\n\
             sslmode = \"disable\"\ncatalog_refresh_seconds = 2\nmass_delete_rows = 500\n\n{}",
            pg.socket_dir().display(),
            pg.port(),
            pw.display(),
            standby.map_or(String::new(), |(apply_delay, standby_extra)| format!(
                "[[standby]]\ncluster = \"main\"\ndata_dir = \"{}\"\napply_delay = \"{apply_delay}\"\nport = {port}\nmax_lag = \"60s\"\n{standby_extra}",
                data.display()
            ))
        ),
    )
    .unwrap();
    v.kill();
    v.restart().unwrap();
    let admin = v.scratch().join("admin.token");
    let out = v.cli(&admin, &["backup", "--cluster", "main", "--json"]).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    Setup { pg, v, admin, _stop: StopStandby(data.clone()), data, port, _root: root }
}

#[test]
fn warm_standby_stops_before_destruction_under_load() {
    let mut s = setup();
    let st = s.wait_state("following", 90);
    assert_eq!(st["apply_delay_seconds"], 8);
    let mut load = Workload::start(&s.pg);
    eprintln!("standby: following; DROP TABLE next");

    // 1. DROP TABLE. The shop's state just before it, merchant by merchant (the workload is
    // stopped for the instant of the snapshot and the drop; it writes again right after).
    s.wait("orders placed", 30, || (load.placed.load(Ordering::Relaxed) > 20).then_some(()));
    load.stop();
    let before_drop = s.pg.psql(FINGERPRINT).unwrap();
    assert_eq!(before_drop.lines().filter(|l| l.starts_with("customers ")).count(), MERCHANTS as usize);
    let started = s.on_standby("SELECT pg_postmaster_start_time()").unwrap();
    let n1 = s.destroy_and_watch(
        "DROP TABLE customers",
        "relations_dropped",
        "SELECT count(*) FROM customers",
        &(MERCHANTS * 50).to_string(),
    );
    eprintln!("standby: paused before incident {n1}");
    let mut load = Workload::start(&s.pg);
    // WAL staged ahead of the feed is never handed over past it: production switches segment,
    // so the one holding the DROP is whole in the vault and the vault stages it (decrypted,
    // the DROP and the orders after it included); the standby is told to resume replay and
    // woken to ask for that segment again — it gets it from the stage, cut at the stop, and
    // still shows the table.
    let replay = |s: &Setup| -> pgfmt::Lsn { s.standby()["replay_lsn"].as_str().unwrap().parse().unwrap() };
    let at_stop = replay(&s);
    let seg = 16u64 << 20;
    let name = pgfmt::segment_name(pgfmt::TimelineId(1), at_stop.0 / seg, seg);
    s.pg.psql("SELECT pg_switch_wal()").unwrap();
    let staged = s.data.join("holdfast_wal_stage").join(&name);
    s.wait("the segment holding the stop, staged whole", 30, || staged.exists().then_some(()));
    let log = || std::fs::read_to_string(s.data.join("holdfast_standby.log")).unwrap();
    let restored = |l: &str| l.matches(&format!("restored log file \"{name}\"")).count();
    let before = restored(&log());
    s.on_standby("SELECT pg_wal_replay_resume(), pg_reload_conf()").unwrap();
    s.wait("the standby to take the staged segment", 30, || (restored(&log()) > before).then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.on_standby("SELECT count(*) FROM customers").unwrap(), (MERCHANTS * 50).to_string());
    assert_eq!(replay(&s), at_stop, "replay moved past the stop with the staged segment");
    // Read-only, at once, exactly the shop before the drop — and PostgreSQL was not restarted
    // for it (the feed holds it at the DROP's first record).
    assert_eq!(s.on_standby(FINGERPRINT).unwrap(), before_drop);
    assert_eq!(s.on_standby("SELECT pg_postmaster_start_time()").unwrap(), started);
    let refused = s.on_standby("INSERT INTO merchants VALUES (999, 'x')").unwrap_err().to_string();
    assert!(refused.contains("read-only"), "{refused}");
    let st = s.standby();
    assert!(st["target"].as_str().unwrap().contains("promoting stops just before xid"), "{st}");
    // Promoting before another incident than the one it stopped at is refused.
    let out =
        s.v.cli(
            &s.admin,
            &["standby", "promote", "--cluster", "main", "--before-incident", &(n1 + 5).to_string()],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("stopped before incident {n1}")));

    eprintln!("standby: resume next");
    // 2. Resume: it follows again and, after its delay, applies what happened since.
    let r = s.json(&["standby", "resume", "--cluster", "main", "--json"]);
    assert!(r["message"].as_str().unwrap().contains("follows the vault again"), "{r}");
    s.wait_state("following", 60);
    s.wait("the standby to apply the drop after resume", 60, || {
        s.on_standby("SELECT to_regclass('customers') IS NULL").ok().filter(|v| v == "t")
    });

    eprintln!("standby: kill next");
    // 3. Killed: an incident, and the vault starts it again.
    let known = s.incidents().len();
    let mut kill = command_as_postgres(&testkit::pg::bin("pg_ctl").unwrap());
    kill.arg("-D").arg(&s.data).args(["-m", "immediate", "-w", "stop"]);
    assert!(kill.output().unwrap().status.success());
    s.wait("a standby_stopped incident", 30, || {
        s.incidents().iter().skip(known).find(|i| i["kind"] == "standby_stopped").cloned()
    });
    s.wait_state("following", 60);

    // 4. An incident raised late: the vault is down when the insider strikes, so the detector
    // sees the TRUNCATE only after the vault is back, seconds after its commit. The standby,
    // which meanwhile keeps running on its own, is held by its delay until the vault stops it.
    eprintln!("standby: late incident next");
    load.stop();
    s.wait_caught_up(60);
    let points = s.pg.psql("SELECT count(*) FROM points").unwrap();
    let known = s.incidents().len();
    s.v.kill();
    s.pg.psql("TRUNCATE points").unwrap();
    let struck = Instant::now();
    // The vault stays down this long: the insider's head start, which the delay must cover.
    std::thread::sleep(Duration::from_secs(2));
    s.v.restart().unwrap();
    let n3 = s.wait_paused_after(known, "relations_dropped", "SELECT count(*) FROM points", &points);
    eprintln!(
        "standby: late incident {n3} stopped it {:.1} s after the commit",
        struck.elapsed().as_secs_f64()
    );
    assert_eq!(s.on_standby("SELECT count(*) FROM points").unwrap(), points);
    s.json(&["standby", "resume", "--cluster", "main", "--json"]);
    s.wait_state("following", 60);
    let mut load = Workload::start(&s.pg);

    eprintln!("standby: mass delete next");
    // 4. Mass DELETE, then promote: writable, and equal to the shop just before the delete's
    // commit — also an order another session committed while the DELETE was running (after
    // its first record, before its commit: the read-only stop does not show it, promotion
    // does). Neither the stop nor the promotion restarts PostgreSQL.
    load.stop();
    s.wait_caught_up(60);
    let before_delete = s.pg.psql(FINGERPRINT_NO_CUSTOMERS).unwrap();
    let low = |fp: &str| fp.lines().filter(|l| merchant_of(l) <= 10).collect::<Vec<_>>().join("\n");
    let high = |fp: &str| fp.lines().filter(|l| merchant_of(l) > 10).collect::<Vec<_>>().join("\n");
    let doomed = s.pg.psql("SELECT count(*) FROM orders WHERE merchant_id <= 10").unwrap();
    let last_order = s.pg.psql("SELECT max(order_id) FROM orders").unwrap();
    let started = s.on_standby("SELECT pg_postmaster_start_time()").unwrap();
    let known = s.incidents().len();
    let insider = {
        let (socket, port, pw) = (s.pg.socket_dir(), s.pg.port(), s.pg.superuser_password().to_string());
        std::thread::spawn(move || {
            psql_at(
                &socket,
                port,
                &pw,
                "postgres",
                "BEGIN; DELETE FROM orders WHERE merchant_id <= 10; SELECT pg_sleep(2); COMMIT;",
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    s.pg.psql("INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES (15, 15, 9999)").unwrap();
    insider.join().unwrap().unwrap();
    let after_delete = s.pg.psql(FINGERPRINT_NO_CUSTOMERS).unwrap();
    assert_ne!(high(&after_delete), high(&before_delete), "the concurrent order is in production");
    let n2 = s.wait_paused_after(
        known,
        "mass_delete",
        "SELECT count(*) FROM orders WHERE merchant_id <= 10",
        &doomed,
    );
    let _load = Workload::start(&s.pg);
    assert_eq!(s.on_standby(FINGERPRINT_NO_CUSTOMERS).unwrap(), before_delete);
    let t0 = Instant::now();
    let r =
        s.json(&["standby", "promote", "--cluster", "main", "--before-incident", &n2.to_string(), "--json"]);
    let promote_seconds = t0.elapsed().as_secs_f64();
    assert_eq!(r["status"]["state"], "promoted", "{r}");
    assert!(r["message"].as_str().unwrap().contains("copy"), "{r}");
    assert_eq!(s.on_standby("SELECT pg_is_in_recovery()").unwrap(), "f");
    let promoted = s.on_standby(FINGERPRINT_NO_CUSTOMERS).unwrap();
    assert_eq!(low(&promoted), low(&before_delete), "merchants 1-10 as before the DELETE");
    assert_eq!(
        high(&promoted),
        high(&after_delete),
        "the other merchants with the order committed meanwhile"
    );
    assert_eq!(s.on_standby("SELECT count(*) FROM orders WHERE total_cents = 9999").unwrap(), "1");
    assert_eq!(
        s.on_standby("SELECT pg_postmaster_start_time()").unwrap(),
        started,
        "stopped and promoted without restarting PostgreSQL"
    );
    s.on_standby("INSERT INTO merchants VALUES (999, 'reopened')").unwrap();
    // Production meanwhile lost the rows; the standby holds them.
    let lost = format!("SELECT count(*) FROM orders WHERE merchant_id <= 10 AND order_id <= {last_order}");
    assert_eq!(s.pg.psql(&lost).unwrap(), "0");
    assert_eq!(s.on_standby(&lost).unwrap(), doomed);
    eprintln!("standby: promoted in {promote_seconds:.2} s");
    let st = s.standby();
    assert_eq!(st["state"], "promoted", "{st}");
}

/// The insider's decoy: a table of no value dropped first (the standby stops before that
/// incident), then, while the standby waits there, the shop's `customers` (a second incident).
/// Someone sees the first was harmless and runs `standby resume`: the standby follows again
/// and stops before the second — it never shows `customers` dropped. (It used to mark every
/// incident raised so far as seen on resume, and applied the real DROP `apply_delay` later,
/// while saying it follows.)
#[test]
fn resuming_past_a_decoy_still_stops_before_the_drop_raised_while_paused() {
    let s = setup();
    s.wait_state("following", 90);
    s.pg.psql("CREATE TABLE decoy AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    s.wait_caught_up(60);
    let customers = (MERCHANTS * 50).to_string();
    let n1 =
        s.destroy_and_watch("DROP TABLE decoy", "relations_dropped", "SELECT count(*) FROM decoy", "1000");
    let known = s.incidents().len();
    s.pg.psql("DROP TABLE customers").unwrap();
    let n2 = s.wait("the real DROP's incident", 30, || {
        s.incidents()
            .iter()
            .enumerate()
            .skip(known)
            .find(|(_, i)| i["kind"] == "relations_dropped")
            .map(|(i, _)| i + 1)
    });
    assert!(n2 > n1);
    assert_eq!(s.standby()["paused_before_incident"], n1, "still paused before the decoy");
    let r = s.json(&["standby", "resume", "--cluster", "main", "--json"]);
    assert!(r["message"].as_str().unwrap().contains("also those raised while it was paused"), "{r}");
    // Past the decoy (its table gone on the standby too), and stopped before the real one —
    // `customers` there all along (a DROP applied makes the count query an error, which the
    // shared wait does not take for an answer: asked here by name).
    s.wait("the standby to stop before the real DROP", 60, || {
        if let Ok(v) = s.on_standby("SELECT to_regclass('customers') IS NOT NULL") {
            assert_eq!(v, "t", "the standby applied the DROP of customers after the resume: {}", s.standby());
        }
        let st = s.standby();
        (st["state"] == "paused" && st["ready"] == true && st["paused_before_incident"] == n2).then_some(())
    });
    assert_eq!(s.on_standby("SELECT to_regclass('decoy') IS NULL").unwrap(), "t");
    assert_eq!(s.on_standby("SELECT count(*) FROM customers").unwrap(), customers);
}

/// A fresh standby built after a promotion (`standby resume`) from a backup older than an
/// incident raised before it existed: the DROP lies in WAL it replays, on the timeline it
/// follows, so it stops before that incident too and shows `customers` read-only. (It counted
/// incidents from its creation and replayed through the DROP the vault already knew of,
/// `apply_delay` after it was built.)
#[test]
fn a_fresh_standby_stops_before_an_incident_raised_before_it_was_built() {
    let s = setup();
    s.wait_state("following", 90);
    let customers = (MERCHANTS * 50).to_string();
    let n = s.destroy_and_watch(
        "DROP TABLE customers",
        "relations_dropped",
        "SELECT count(*) FROM customers",
        &customers,
    );
    assert_eq!(s.incidents()[n - 1]["timeline"], 1, "the incident names its timeline");
    let p =
        s.json(&["standby", "promote", "--cluster", "main", "--before-incident", &n.to_string(), "--json"]);
    assert_eq!(p["status"]["state"], "promoted", "{p}");
    let r = s.json(&["standby", "resume", "--cluster", "main", "--json"]);
    assert!(r["message"].as_str().unwrap().contains("a fresh standby"), "{r}");
    // Built from the only backup, taken before the DROP.
    s.wait("the fresh standby to stop before the earlier incident", 120, || {
        if let Ok(v) = s.on_standby("SELECT to_regclass('customers') IS NOT NULL") {
            assert_eq!(
                v,
                "t",
                "the fresh standby applied the DROP the vault already knew of: {}",
                s.standby()
            );
        }
        let st = s.standby();
        (st["state"] == "paused" && st["ready"] == true && st["paused_before_incident"] == n).then_some(())
    });
    assert_eq!(s.on_standby("SELECT count(*) FROM customers").unwrap(), customers);
}

/// Base backups from the vault's own warm standby (issue 18): under a write load, production
/// asked for nothing but a `CHECKPOINT`, a backup streamed from the standby appears; a restore to
/// a moment after it starts from it and equals the source there, merchant by merchant; none of
/// the standby's own files is in the restored directory, its `pg_hba.conf` and
/// `postgresql.auto.conf` are production's, and the rest matches the stored manifest
/// (`pg_verifybackup`).
#[test]
fn backups_from_the_warm_standby_restore_the_source_without_the_standbys_files() {
    let s = setup_with("3s", "backup_wal_share = 0.01\n");
    s.pg.psql("GRANT pg_checkpoint TO holdfast_rep").unwrap();
    s.wait_state("following", 90);
    let from_standby = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("base backup taken from the warm standby"))
            .filter_map(|l| {
                l.split("id=").nth(1)?.split_whitespace().next().map(|id| id.trim_matches('"').to_string())
            })
            .collect()
    };
    assert!(from_standby(&s.v.log()).is_empty());
    // The load: orders one at a time, and about 30 MB of WAL (the standby's backups come once a
    // segment's worth of WAL past the newest backup's start).
    let mut load = Workload::start(&s.pg);
    s.pg.psql(
        "CREATE TABLE pad AS SELECT g, repeat(md5(g::text), 6) AS body FROM generate_series(1, 120000) g",
    )
    .unwrap();
    let t0 = Instant::now();
    let taken = s.wait("a base backup taken from the standby", 90, || {
        let ids = from_standby(&s.v.log());
        (!ids.is_empty()).then_some(ids)
    });
    eprintln!("standby backup {taken:?} {:.1} s after the load's WAL", t0.elapsed().as_secs_f64());
    assert!(s.v.log().contains("production checkpointed"), "{}", s.v.log());
    // The target: the shop as it is now; then more orders after it.
    load.stop();
    let at = s.pg.psql(&format!("SELECT pg_current_wal_lsn() || '|' || ({FINGERPRINT})")).unwrap();
    let (target, fingerprint) = at.split_once('|').unwrap();
    let mut load = Workload::start(&s.pg);
    s.wait("orders after the target", 30, || (load.placed.load(Ordering::Relaxed) > 10).then_some(()));
    load.stop();
    s.pg.psql("SELECT pg_switch_wal()").unwrap();
    s.wait_vault_holds_wal("the vault to hold the WAL", 60);
    let read = s.v.scratch().join("read.token");
    s.v.create_token("read", "restore", &read).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let restore = |dir: &Path, start: bool| -> serde_json::Value {
        let mut args =
            vec!["restore", "--cluster", "main", "--lsn", target, "--target-dir", dir.to_str().unwrap()];
        if start {
            args.push("--start");
        }
        args.push("--json");
        // The restored server's superuser is production's, with its password (the self-check).
        let out = std::process::Command::new(holdfast())
            .args(&args)
            .args(s.v.remote_args(&read))
            .env("PGPASSWORD", s.pg.superuser_password())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            s.v.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // 1. Not started: the files as restored, against the manifest stored with the backup.
    let files = root.path().join("files");
    let report = restore(&files, false);
    let chosen = report["backup"].as_str().unwrap().to_string();
    assert!(
        from_standby(&s.v.log()).contains(&chosen),
        "restore chose {chosen}, not a backup from the standby: {report}"
    );
    for own in [
        "holdfast_standby.conf",
        "holdfast_standby.json",
        "holdfast_standby.feed",
        "holdfast_standby.log",
        "holdfast_wal_stage",
        "standby.signal",
    ] {
        assert!(!files.join(own).exists(), "the standby's {own} is in the restored directory");
    }
    let read_text = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read_text(&files.join("pg_hba.conf")), read_text(&s.pg.data_dir().join("pg_hba.conf")));
    let auto = read_text(&files.join("postgresql.auto.conf"));
    let source_part = auto.split(restore::recovery::ADDED_MARK).next().unwrap();
    assert_eq!(source_part, read_text(&s.pg.data_dir().join("postgresql.auto.conf")), "{auto}");
    assert!(!auto.contains("holdfast_standby"), "{auto}");
    // (As the test's user: without --start, the restored files are not handed to `postgres`.)
    let mut verify = std::process::Command::new(testkit::pg::bin("pg_verifybackup").unwrap());
    verify.args(["-n", "-i", "holdfast_restore.json", "-i", "holdfast_spool", "-i", "holdfast_replay.conf"]);
    verify.arg(&files);
    let out = verify.output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. Started: the shop at the target, merchant by merchant.
    let dir = root.path().join("started");
    let report = restore(&dir, true);
    assert_eq!(report["backup"], chosen.as_str());
    assert_eq!(report["reached"], true, "{report}");
    let (sock, port) = (report["socket_dir"].as_str().unwrap(), report["port"].as_u64().unwrap() as u16);
    let got = psql_at(Path::new(sock), port, s.pg.superuser_password(), "postgres", FINGERPRINT);
    let mut stop = command_as_postgres(&testkit::pg::bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
    assert_eq!(got.unwrap(), fingerprint);
}

/// Production's superuser runs `CREATE TABLESPACE … LOCATION L` where L is a directory of the
/// database host that does not exist on the vault's host: the standby replays it there, its
/// PostgreSQL stops itself at that record on every start. That is one `standby_stopped` incident
/// quoting PostgreSQL's reason (not one a second blaming someone on the vault's host), the vault's
/// own capture goes on, and nothing is created at L on the vault's host.
/// (Production and the vault share this host here: production's directory is moved aside, its
/// tablespace link pointed at the new place, before the standby replays the record.)
#[test]
fn a_tablespace_missing_on_the_vaults_host_is_one_incident_naming_the_replay_failure() {
    let s = setup_with("3s", "backup_wal_share = 0\n");
    s.wait_state("following", 90);
    let tsroot = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tsroot.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let l = tsroot.path().join("ts");
    std::fs::create_dir(&l).unwrap();
    let (uid, gid) = restore::pg::user_ids("postgres").unwrap();
    std::os::unix::fs::chown(&l, Some(uid), Some(gid)).unwrap();
    let known = s.incidents().len();
    s.pg.psql(&format!("CREATE TABLESPACE far LOCATION '{}'", l.display())).unwrap();
    let oid = s.pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'far'").unwrap();
    let prod = tsroot.path().join("ts.prod");
    std::fs::rename(&l, &prod).unwrap();
    let link = s.pg.data_dir().join("pg_tblspc").join(&oid);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&prod, &link).unwrap();
    s.pg.psql("CREATE TABLE far_rows TABLESPACE far AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    let first = s.wait("a standby_stopped incident", 60, || {
        s.incidents().iter().skip(known).find(|i| i["kind"] == "standby_stopped").cloned()
    });
    // It fails again on every start (about one a second): still that one incident.
    std::thread::sleep(Duration::from_secs(12));
    let stops = s.incidents().iter().skip(known).filter(|i| i["kind"] == "standby_stopped").count();
    assert_eq!(stops, 1, "a crash loop flooded the incidents: {:#?}", s.incidents());
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains("stopped itself")
            && message.contains("does not exist")
            && message.contains("Tablespace/CREATE"),
        "{first}"
    );
    assert!(!l.exists(), "the standby created the tablespace's path on the vault's host");
    // The vault itself still captures production's WAL.
    s.wait_vault_holds_wal("the vault to hold production's WAL", 30);
}

/// Production's superuser creates a tablespace (at a path of the database host): every later
/// backup holds its files under `pg_tblspc/<oid>/` and a `tablespace_map` naming that path, and a
/// restore from one used to stop with `could not remove directory "pg_tblspc/<oid>": Directory
/// not empty`, so nothing after it could be restored. Restored in place instead: the rows in the
/// tablespace are there and nothing is written at the source's path.
#[test]
fn a_backup_of_a_server_with_a_tablespace_restores_it_inside_the_target_directory() {
    // No standby: on this one host it would replay the tablespace at production's own path.
    let s = setup_maybe_standby(None);
    let tsroot = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tsroot.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let l = tsroot.path().join("ts");
    std::fs::create_dir(&l).unwrap();
    let (uid, gid) = restore::pg::user_ids("postgres").unwrap();
    std::os::unix::fs::chown(&l, Some(uid), Some(gid)).unwrap();
    s.pg.psql(&format!("CREATE TABLESPACE far LOCATION '{}'", l.display())).unwrap();
    s.pg.psql("CREATE TABLE far_rows TABLESPACE far AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    let out = s.v.cli(&s.admin, &["backup", "--cluster", "main", "--json"]).unwrap();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    s.pg.psql("INSERT INTO far_rows SELECT 5000").unwrap();
    let target = s.pg.psql("SELECT pg_current_wal_lsn()").unwrap();
    s.pg.psql("SELECT pg_switch_wal()").unwrap();
    s.wait_vault_holds_wal("the vault to hold the WAL", 60);
    // Production's files at that path, as they are before the restore.
    let listing = |p: &Path| {
        let out =
            std::process::Command::new("ls").arg("-lR").arg("--time-style=full-iso").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = listing(&l);
    let read = s.v.scratch().join("read.token");
    s.v.create_token("read", "restore", &read).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("r");
    let out = std::process::Command::new(holdfast())
        .args([
            "restore",
            "--cluster",
            "main",
            "--lsn",
            &target,
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
            "--json",
        ])
        .args(s.v.remote_args(&read))
        .env("PGPASSWORD", s.pg.superuser_password())
        .output()
        .unwrap();
    let _stop = StopStandby(dir.clone());
    assert!(
        out.status.success(),
        "restore: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reached"], true, "{report}");
    let (sock, port) = (report["socket_dir"].as_str().unwrap(), report["port"].as_u64().unwrap() as u16);
    let got = psql_at(
        Path::new(sock),
        port,
        s.pg.superuser_password(),
        "postgres",
        "SELECT count(*) || ' ' || max(g) FROM far_rows",
    );
    assert_eq!(got.unwrap(), "1001 5000");
    let oid = s.pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'far'").unwrap();
    let in_place = dir.join("pg_tblspc").join(&oid);
    assert!(in_place.is_dir() && !in_place.is_symlink(), "{}", in_place.display());
    assert_eq!(listing(&l), before, "the restore wrote at the source's tablespace path");
}

/// Production's superuser sets commands that PostgreSQL runs during or at the end of recovery
/// (`ALTER SYSTEM SET recovery_end_command = …`, `archive_cleanup_command`): the setting travels
/// in every later backup's `postgresql.auto.conf`, and a restore, a drill or the standby's build
/// — on the vault's host — would run it there. A restore runs none of them.
#[test]
fn commands_the_source_set_for_recovery_are_not_run_by_a_restore() {
    let s = setup_maybe_standby(None);
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marks.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let end = marks.path().join("recovery_end_command_ran");
    let cleanup = marks.path().join("archive_cleanup_command_ran");
    s.pg.psql(&format!("ALTER SYSTEM SET recovery_end_command = 'touch {}'", end.display())).unwrap();
    s.pg.psql(&format!("ALTER SYSTEM SET archive_cleanup_command = 'touch {}'", cleanup.display())).unwrap();
    // A library planted in the source's data directory by its root, preloaded by a path: the
    // restoring host would run its code at start (its constructor runs before PostgreSQL looks
    // for a magic block). Plain names are kept: a WAL resource manager's library is one.
    let loaded = marks.path().join("planted_library_ran");
    let lib = s.pg.data_dir().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::set_permissions(&lib, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let src = marks.path().join("planted.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void ran(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            loaded.display()
        ),
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(lib.join("planted.so"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
    std::fs::set_permissions(lib.join("planted.so"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    s.pg.psql("ALTER SYSTEM SET shared_preload_libraries = pg_stat_statements, 'lib/planted.so'").unwrap();
    let out = s.v.cli(&s.admin, &["backup", "--cluster", "main", "--json"]).unwrap();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    s.pg.psql("CREATE TABLE after_backup AS SELECT 1 AS x; CHECKPOINT").unwrap();
    s.pg.psql("SELECT pg_switch_wal()").unwrap();
    s.wait_vault_holds_wal("the vault to hold the WAL", 60);
    let read = s.v.scratch().join("read.token");
    s.v.create_token("read", "restore", &read).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("r");
    let out = std::process::Command::new(holdfast())
        .args([
            "restore",
            "--cluster",
            "main",
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
            "--json",
        ])
        .args(s.v.remote_args(&read))
        .env("PGPASSWORD", s.pg.superuser_password())
        .output()
        .unwrap();
    let _stop = StopStandby(dir.clone());
    assert!(!loaded.exists(), "the restore loaded a library planted in the source's data directory");
    assert!(
        out.status.success(),
        "restore: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sock, port) = (report["socket_dir"].as_str().unwrap(), report["port"].as_u64().unwrap() as u16);
    // Recovery is over (a restartpoint or two on the way, the end of recovery): the restored
    // server is open for writes.
    let open = psql_at(
        Path::new(sock),
        port,
        s.pg.superuser_password(),
        "postgres",
        "SELECT pg_is_in_recovery()::text || ' ' || count(*) FROM after_backup",
    );
    assert_eq!(open.unwrap(), "false 1");
    let _ = psql_at(Path::new(sock), port, s.pg.superuser_password(), "postgres", "CHECKPOINT");
    assert!(!end.exists(), "the restore ran the source's recovery_end_command on this host");
    assert!(!cleanup.exists(), "the restore ran the source's archive_cleanup_command on this host");
    let preload = psql_at(
        Path::new(sock),
        port,
        s.pg.superuser_password(),
        "postgres",
        "SHOW shared_preload_libraries",
    );
    assert_eq!(preload.unwrap(), "\"pg_stat_statements\"", "the plain name is kept, the path dropped");
}
