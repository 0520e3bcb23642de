//! Destruction found in the live WAL stream of a real PostgreSQL under background load: a mass
//! DELETE, a mass UPDATE, TRUNCATE, DROP TABLE, DROP SCHEMA … CASCADE of 50 tables and DROP
//! DATABASE each become one incident with the right kind, named objects, transaction and LSN
//! (checked with `pg_waldump`), posted to a webhook in seconds (goal 5 s, printed; the three drops in a row are
//! also one `cumulative_drop`); `restore --before-incident N`
//! brings back every destroyed row and keeps every transaction committed before. Maintenance
//! rewrites and a small delete under the same load, and a pgbench run with aggressive
//! autovacuum, raise nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// `count:md5` of a table's rows in id order.
fn checksum(table: &str) -> String {
    format!(
        "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} t"
    )
}

/// Rows in the 50 tables of schema tenant7.
const TENANT_ROWS: &str = "SELECT count(*) || ':' || coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM tenant7.%I', table_name), false, true, '')))[1]::text::int), 0) FROM information_schema.tables WHERE table_schema = 'tenant7'";

use testkit::webhook::{Received, receiver as webhook_receiver};

fn cli(v: &TempVault, token: &Path, args: &[&str]) -> std::process::Output {
    v.cli(token, args).unwrap()
}

/// A PostgreSQL, a vault capturing it (catalog refreshed every 2 s), and a webhook receiver.
struct Setup {
    pg: TempPg,
    v: TempVault,
    admin: PathBuf,
    received: Received,
}

fn setup(pg: TempPg, extra: &str) -> Setup {
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let (hook, received) = webhook_receiver();
    let mut v = TempVault::start(holdfast()).unwrap();
    v.prepend_config(&format!("webhook = [{{ name = \"oncall\", url = \"{hook}\" }}]")).unwrap();
    v.protect(&pg, &format!("catalog_refresh_seconds = 2\n{extra}\n")).unwrap();
    let admin: PathBuf = v.scratch().join("admin.token");
    let out = cli(&v, &admin, &["backup", "--cluster", "main", "--json"]);
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    Setup { pg, v, admin, received }
}

impl Setup {
    fn incidents(&self) -> Vec<serde_json::Value> {
        let out = cli(&self.v, &self.admin, &["incidents", "--cluster", "main", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `sql` in `db` and returns its transaction id (the statement must not end it).
    fn xid_of(&self, db: &str, sql: &str) -> u32 {
        let out = self.pg.psql_db(db, &format!("BEGIN; {sql}; SELECT txid_current(); COMMIT")).unwrap();
        out.lines().last().unwrap().trim().parse().unwrap()
    }

    /// The cluster's status as `holdfast status --json` shows it.
    fn status(&self) -> serde_json::Value {
        let out = cli(&self.v, &self.admin, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        st["clusters"][0].clone()
    }

    /// Waits until the detector has decoded the WAL up to the server's current end (and so
    /// raised whatever it holds), and the catalog snapshot is loaded; returns that position.
    fn wait_decoded(&self) -> pgfmt::Lsn {
        let end: pgfmt::Lsn = self.pg.psql("SELECT pg_current_wal_insert_lsn()").unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            let lsn = |k: &str| st[k].as_str().and_then(|l| l.parse::<pgfmt::Lsn>().ok());
            if let (Some(durable), Some(decoded)) = (lsn("durable_lsn"), lsn("decoded_lsn"))
                && durable >= end
                && decoded >= durable
                && st["catalog_tables"].as_u64().is_some()
            {
                return end;
            }
            assert!(
                Instant::now() < deadline,
                "the detector did not decode up to {end}: {st}\n{}",
                self.v.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for an incident of `kind` beyond the first `known` incidents.
    fn wait_incident(&self, known: usize, kind: &str) -> serde_json::Value {
        let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(40));
        loop {
            let list = self.incidents();
            if let Some(i) = list.iter().skip(known).find(|i| i["kind"] == kind) {
                return i.clone();
            }
            assert!(Instant::now() < deadline, "no {kind} incident: {list:#?}\n{}", self.v.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// pg_waldump's line for the record at `lsn`.
    fn waldump(&self, lsn: &str) -> String {
        let mut cmd = command_as_postgres(&bin("pg_waldump").unwrap());
        cmd.arg("-p").arg(self.pg.data_dir().join("pg_wal")).args(["-s", lsn, "-n", "1"]);
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).to_string()
    }
}

/// A background writer: pgbench clients running `script` at `rate` transactions a second in
/// all (a steady load that leaves the 2-core CI machine room for the vault) until killed.
fn background_load(pg: &TempPg, clients: u32, rate: u32, seconds: u32, script: &str) -> std::process::Child {
    let dir = pg.scratch_dir("load").unwrap();
    let file = dir.join("load.sql");
    std::fs::write(&file, script).unwrap();
    testkit::pg::make_world_readable(&file).unwrap();
    let mut cmd = command_as_postgres(Path::new("env"));
    cmd.arg(format!("PGPASSWORD={}", pg.superuser_password()))
        .arg(bin("pgbench").unwrap())
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "-n", "-c", &clients.to_string()])
        .args(["-R", &rate.to_string(), "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg("postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

/// One destructive act and what must hold after undoing it.
struct Act {
    kind: &'static str,
    db: &'static str,
    sql: &'static str,
    /// (database, query) whose answer a restore just before must reproduce.
    check: (&'static str, String),
    before: String,
    /// ledger ids committed before the act.
    ledger: Vec<i64>,
    xid: u32,
    done: Option<Instant>,
}

#[test]
fn destruction_under_load_is_one_named_incident_each_alerted_in_seconds_and_undone() {
    let pg = TempPg::start_with(
        TempPgOptions::default()
            .setting("autovacuum_naptime", "1")
            .setting("autovacuum_vacuum_threshold", "50")
            .setting("autovacuum_vacuum_scale_factor", "0.01")
            .setting("autovacuum_analyze_threshold", "50")
            .setting("autovacuum_analyze_scale_factor", "0.01"),
    )
    .unwrap();
    pg.psql(
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 3000) g;
         CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, balance int NOT NULL);
         INSERT INTO customers SELECT g, 'customer ' || g, 50 FROM generate_series(1, 2000) g;
         CREATE TABLE points (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO points SELECT g, g FROM generate_series(1, 1000) g;
         CREATE TABLE audit_log AS SELECT g AS id, md5(g::text) AS what FROM generate_series(1, 100) g;
         CREATE TABLE events (id int PRIMARY KEY, v text);
         INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
         CREATE SCHEMA tenant7;",
    )
    .unwrap();
    pg.psql("DO $$ BEGIN FOR i IN 1..50 LOOP EXECUTE format('CREATE TABLE tenant7.t%s AS SELECT g AS id FROM generate_series(1, 20) g', i); END LOOP; END $$").unwrap();
    pg.psql("CREATE DATABASE scratch").unwrap();
    pg.psql_db("scratch", "CREATE TABLE keep (id int PRIMARY KEY, v text); INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 100) g").unwrap();
    pg.psql("ANALYZE").unwrap();
    // A mass UPDATE of 1500 rows is found by the share threshold (1500 of 2000 customers), not
    // the absolute one (10000 by default).
    let s = setup(pg, "mass_delete_rows = 1000\n");
    let mut load = background_load(&s.pg, 2, 200, 300, "INSERT INTO ledger DEFAULT VALUES;\n");

    // Maintenance under load: rewrites, and a delete of a table's tail that VACUUM truncates
    // away (what autovacuum does too). None of it is destruction.
    let pg = &s.pg;
    pg.psql("VACUUM FULL accounts").unwrap();
    pg.psql("CLUSTER customers USING customers_pkey").unwrap();
    pg.psql("REINDEX TABLE accounts").unwrap();
    pg.psql("ALTER TABLE points ALTER COLUMN v TYPE bigint").unwrap();
    let small = s.xid_of("postgres", "DELETE FROM events WHERE id > 2700");
    pg.psql("VACUUM events").unwrap();
    // The detector must know the rewritten files (and customers' row estimate) before the acts:
    // a table created after the maintenance shows in its catalog only through a refresh that
    // read the catalog after the maintenance too.
    s.wait_decoded();
    let tables = |s: &Setup| s.status()["catalog_tables"].as_u64();
    let known = tables(&s).expect("wait_decoded waits for the catalog");
    pg.psql("CREATE TABLE catalog_marker (id int)").unwrap();
    testkit::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the detector's catalog to be read after the maintenance",
        || tables(&s).filter(|n| *n > known),
    )
    .unwrap();

    let act = |kind, db, sql, check: (&'static str, String)| Act {
        kind,
        db,
        sql,
        check,
        before: String::new(),
        ledger: Vec::new(),
        xid: 0,
        done: None,
    };
    let mut acts = vec![
        act(
            "mass_delete",
            "postgres",
            "DELETE FROM accounts WHERE id <= 1500",
            ("postgres", checksum("accounts")),
        ),
        act(
            "mass_update",
            "postgres",
            "UPDATE customers SET balance = 0 WHERE id <= 1500",
            ("postgres", checksum("customers")),
        ),
        act("relations_dropped", "postgres", "TRUNCATE points", ("postgres", checksum("points"))),
        act("relations_dropped", "postgres", "DROP TABLE audit_log", ("postgres", checksum("audit_log"))),
        act(
            "relations_dropped",
            "postgres",
            "DROP SCHEMA tenant7 CASCADE",
            ("postgres", TENANT_ROWS.to_string()),
        ),
        act(
            "database_dropped",
            "postgres",
            "DROP DATABASE scratch WITH (FORCE)",
            ("scratch", checksum("keep")),
        ),
    ];
    for a in &mut acts {
        a.before = pg.psql_db(a.check.0, &a.check.1).unwrap();
        a.ledger = pg
            .psql("SELECT id FROM ledger ORDER BY id")
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        a.xid = if a.sql.starts_with("DROP DATABASE") {
            // Not inside a transaction block: its xid is the one pg_waldump shows on the drop.
            pg.psql(a.sql).unwrap();
            0
        } else {
            s.xid_of(a.db, a.sql)
        };
        a.done = Some(Instant::now());
        // Time passes between acts on purpose: the load commits rows in between, so each undo
        // is checked against a ledger of its own. But the three drops go back to back: the
        // TRUNCATE's drop waits for a catalog read (the table has an index: it could be a
        // rewrite), so the drops after it are judged first, and the `cumulative_drop` must still
        // restore to before the TRUNCATE (issue 15: it restored to before the DROP TABLE).
        if !(a.sql.starts_with("TRUNCATE") || a.sql.starts_with("DROP TABLE")) {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(acts[0].ledger.len() > 10, "the background load is running: {}", acts[0].ledger.len());

    // Six incidents, one per destructive transaction, and nothing else — but for one
    // `cumulative_drop`: three transactions dropped 52 tables holding data within seconds (over
    // `window_dropped_tables`), restoring to before the first of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let incidents = loop {
        let list = s.incidents();
        if list.iter().filter(|i| i["xid"].is_u64()).count() > acts.len() {
            break list;
        }
        assert!(Instant::now() < deadline, "incidents did not appear: {list:#?}\n{}", s.v.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    // This sleep is the point: time passes, and no further incident may appear.
    std::thread::sleep(Duration::from_secs(1));
    let incidents = {
        let again = s.incidents();
        assert_eq!(again.len(), incidents.len(), "more incidents than destructive acts: {again:#?}");
        again
    };
    let (cumulative, incidents): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
        incidents.into_iter().partition(|i| i["kind"] == "cumulative_drop");
    assert_eq!(cumulative.len(), 1, "{cumulative:#?}");
    let first_drop = acts.iter().find(|a| a.kind == "relations_dropped").unwrap().xid;
    assert_eq!(cumulative[0]["restore_target"]["xid"], first_drop, "{:#}", cumulative[0]);
    assert_eq!(
        incidents.len(),
        acts.len(),
        "one incident per destructive act, nothing for maintenance: {incidents:#?}"
    );
    assert!(!incidents.iter().any(|i| i["xid"] == small), "a 300-row delete became an incident");
    let dropdb = incidents.iter().find(|i| i["kind"] == "database_dropped").expect("DROP DATABASE");
    acts[5].xid = dropdb["xid"].as_u64().unwrap() as u32;
    // Incidents in the order of the acts (a drop judged against the catalog may be raised a
    // moment after a later act's): position of each act's incident, by transaction.
    let at: Vec<usize> = acts
        .iter()
        .map(|a| {
            incidents
                .iter()
                .position(|i| i["xid"] == a.xid)
                .unwrap_or_else(|| panic!("no incident for {}: {incidents:#?}", a.sql))
        })
        .collect();
    for (a, inc) in acts.iter().zip(at.iter().map(|&k| &incidents[k])) {
        assert_eq!(
            (inc["kind"].as_str(), inc["xid"].as_u64()),
            (Some(a.kind), Some(u64::from(a.xid))),
            "{}: {inc:#}",
            a.sql
        );
        // The LSN is the commit (the drop record for a database), as pg_waldump sees it.
        let line = s.waldump(inc["lsn"].as_str().unwrap());
        let what = if a.kind == "database_dropped" { "rmgr: Database" } else { "rmgr: Transaction" };
        assert!(line.contains(what) && line.contains(&format!("tx: {:>10}", a.xid)), "{}: {line}", a.sql);
        // Alerted in seconds. The goal is 5 s from the statement returning, printed below as a
        // figure; the assert allows 20 s (scaled by HOLDFAST_TEST_TIME_SCALE), because on a
        // loaded 2-core CI machine the tail of this wait measures the scheduler (the catalog
        // refresh a drop is judged against, a debug build, another heavy test), not the code. An
        // alert that waits for a poll or a batch of minutes still fails it.
        let hook_deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
        let arrived = loop {
            let got = s.received.lock().unwrap().clone();
            if let Some((at, _)) = got.iter().find(|(_, b)| b["alert"]["incident"]["xid"] == a.xid) {
                break *at;
            }
            assert!(Instant::now() < hook_deadline, "no webhook for {}: {got:?}", a.sql);
            std::thread::sleep(Duration::from_millis(50));
        };
        let latency = arrived.saturating_duration_since(a.done.unwrap());
        eprintln!("{}: returned → webhook {latency:?}", a.sql);
        let bound = testkit::wait::budget(Duration::from_secs(20));
        assert!(latency < bound, "{}: alert after {latency:?} (goal 5 s, bound {bound:?})", a.sql);
    }
    // Named objects.
    let obj = |i: usize| incidents[at[i]]["objects"].as_array().unwrap().clone();
    let name = |o: &serde_json::Value| {
        format!(
            "{}.{}.{}",
            o["database"].as_str().unwrap(),
            o["schema"].as_str().unwrap_or("?"),
            o["table"].as_str().unwrap_or("?")
        )
    };
    let o = obj(0);
    assert_eq!(
        (name(&o[0]), o[0]["deleted"].as_u64()),
        ("postgres.public.accounts".into(), Some(1500)),
        "{o:?}"
    );
    let o = obj(1);
    assert_eq!(
        (name(&o[0]), o[0]["updated"].as_u64(), o[0]["rows"].as_u64()),
        ("postgres.public.customers".into(), Some(1500), Some(2000)),
        "{o:?}"
    );
    let o = obj(2);
    assert_eq!(
        (o.len(), name(&o[0]), o[0]["dropped"].as_bool()),
        (1, "postgres.public.points".into(), Some(true)),
        "{o:?}"
    );
    let o = obj(3);
    assert_eq!((o.len(), name(&o[0])), (1, "postgres.public.audit_log".into()), "{o:?}");
    let o = obj(4);
    let mut tables: Vec<String> = o.iter().map(name).collect();
    tables.sort();
    let mut expected: Vec<String> = (1..=50).map(|i| format!("postgres.tenant7.t{i}")).collect();
    expected.sort();
    assert_eq!(tables, expected, "DROP SCHEMA CASCADE: one incident naming all 50 tables");
    let o = obj(5);
    assert_eq!(
        (o[0]["database"].as_str(), o[0]["dropped"].as_bool()),
        (Some("scratch"), Some(true)),
        "{o:?}"
    );
    assert!(o[0]["bytes"].as_u64().unwrap_or(0) > 0, "{o:?}");

    // Undo each: the destroyed rows are back, and every ledger row committed before the act.
    pg.psql("SELECT pg_switch_wal()").unwrap();
    s.wait_decoded();
    let read = s.v.scratch().join("read.token");
    let out = cli(
        &s.v,
        &s.admin,
        &[
            "vault",
            "token",
            "create",
            "--scope",
            "read",
            "--label",
            "restore",
            "--out",
            read.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (n, a) in acts.iter().enumerate() {
        let dir = root.path().join(format!("undo{n}"));
        let started = Instant::now();
        let mut cmd = std::process::Command::new(holdfast());
        cmd.arg("restore")
            // Promoted: paused just before a TRUNCATE or DROP commits, its lock on the table is
            // still held and a read would wait forever; promotion aborts that transaction.
            .args([
                "--cluster",
                "main",
                "--before-incident",
                &incidents[at[n]]["number"].to_string(),
                "--start",
                "--promote",
                "--json",
            ])
            .arg("--target-dir")
            .arg(&dir)
            .args(s.v.remote_args(&read))
            .env("PGPASSWORD", pg.superuser_password());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "restore --before-incident {}: {}",
            n + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let q = |db: &str, sql: &str| {
            let mut q = command_as_postgres(Path::new("env"));
            q.arg(format!("PGPASSWORD={}", pg.superuser_password()))
                .arg(bin("psql").unwrap())
                .arg("-h")
                .arg(report["socket_dir"].as_str().unwrap())
                .args([
                    "-p",
                    &report["port"].as_u64().unwrap().to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-XAtq",
                    "-c",
                    sql,
                ]);
            let out = q.output().unwrap();
            assert!(out.status.success(), "{sql} in {db}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(q(a.check.0, &a.check.1), a.before, "{}: the destroyed rows are back", a.sql);
        let ids: Vec<String> = a.ledger.iter().map(i64::to_string).collect();
        let kept = q(
            "postgres",
            &format!("SELECT count(*) FROM ledger WHERE id = ANY('{{{}}}'::bigint[])", ids.join(",")),
        );
        assert_eq!(
            kept,
            a.ledger.len().to_string(),
            "{}: every transaction committed before it is kept",
            a.sql
        );
        eprintln!("{}: undone in {:?}", a.sql, started.elapsed());
        let mut stop = command_as_postgres(&bin("pg_ctl").unwrap());
        stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = load.kill();
    let _ = load.wait();
}

/// No false alarms: pgbench (initialised while the vault watches) with aggressive autovacuum
/// for `HOLDFAST_DETECT_SOAK_SECS` seconds (default 15: with a 1 s autovacuum naptime, ~15
/// rounds of autovacuum; `./run soak` runs 600) raises no incident, though every byte of its WAL
/// was decoded.
#[test]
fn pgbench_with_aggressive_autovacuum_raises_no_incident() {
    let secs: u32 =
        std::env::var("HOLDFAST_DETECT_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let pg = TempPg::start_with(
        TempPgOptions::default()
            .setting("autovacuum_naptime", "1")
            .setting("autovacuum_vacuum_threshold", "50")
            .setting("autovacuum_vacuum_scale_factor", "0.01")
            .setting("autovacuum_analyze_threshold", "50")
            .setting("autovacuum_analyze_scale_factor", "0.01")
            .setting("checkpoint_timeout", "30"),
    )
    .unwrap();
    let s = setup(pg, "");
    let pg = &s.pg;
    let pgbench = |args: &[&str]| {
        let mut cmd = command_as_postgres(Path::new("env"));
        cmd.arg(format!("PGPASSWORD={}", pg.superuser_password()))
            .arg(bin("pgbench").unwrap())
            .arg("-h")
            .arg(pg.socket_dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    pgbench(&["-i", "-s", "5", "-q"]);
    let out = pgbench(&["-c", "4", "-j", "2", "-T", &secs.to_string(), "-n"]);
    let tps = out.lines().find(|l| l.starts_with("tps")).unwrap_or_default().to_string();
    let end: pgfmt::Lsn = pg.psql("SELECT pg_current_wal_insert_lsn()").unwrap().parse().unwrap();
    let vacuums: u64 =
        pg.psql("SELECT sum(autovacuum_count) FROM pg_stat_user_tables").unwrap().parse().unwrap_or(0);
    // Everything up to the end is durable in the vault, and so decoded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(&s.v, &s.admin, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|l| l.parse::<pgfmt::Lsn>().ok());
        if durable.is_some_and(|d| d >= end) {
            break;
        }
        assert!(Instant::now() < deadline, "the vault did not catch up to {end}: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // …and decoded: a dead or stuck detector would raise nothing either, so silence counts
    // only once the detector has read every byte of it.
    let decoded = s.wait_decoded();
    assert!(decoded >= end);
    eprintln!("pgbench {secs} s: {tps}; autovacuum runs: {vacuums}; WAL to {end}, all decoded");
    assert!(vacuums > 0, "autovacuum ran");
    let incidents = s.incidents();
    assert!(incidents.is_empty(), "false alarms: {incidents:#?}");
}

/// Which files hold data survives a vault restart (rebuilt from the newest backup and the
/// stored WAL since): a 50,000-row table created and filled after the backup, TRUNCATEd after
/// the restart, is an incident. DROP COLUMN of a populated column is an incident naming table
/// and column (not "table dropped", though its index goes with it). A table dropped while a
/// tenth of it is copied into a new table in the same transaction is an incident: rewrites are
/// told by the table a new file belongs to, not by volume. Maintenance rewrites, DROP INDEX
/// CONCURRENTLY and dropping an empty table with a primary key are not.
#[test]
fn detection_survives_a_restart_and_judges_structure_by_table() {
    let pg = TempPg::start().unwrap();
    pg.psql(
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL);
         INSERT INTO customers SELECT g, 'c' || g || '@example.com', 'customer ' || g FROM generate_series(1, 5000) g;
         CREATE INDEX customers_email ON customers (email);
         CREATE TABLE orders (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CREATE INDEX orders_v ON orders (v);
         CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE TABLE empty_pk (id int PRIMARY KEY);",
    )
    .unwrap();
    let s = setup(pg, "");
    let pg = &s.pg;
    // After the backup: a table created and filled, fully decoded before the restart.
    pg.psql("CREATE TABLE filled (id int NOT NULL, v text); INSERT INTO filled SELECT g, md5(g::text) FROM generate_series(1, 50000) g").unwrap();
    s.wait_decoded();
    let mut s = s;
    s.v.kill();
    s.v.restart().unwrap();
    s.wait_decoded();
    assert!(s.incidents().is_empty(), "nothing destructive yet: {:#?}", s.incidents());
    let pg = &s.pg;

    let truncated = s.xid_of("postgres", "TRUNCATE filled");
    let i = s.wait_incident(0, "relations_dropped");
    assert_eq!(i["xid"], truncated, "{i:#}");
    assert_eq!(i["objects"][0]["table"], "filled", "{i:#}");

    let dropped_column = s.xid_of("postgres", "ALTER TABLE customers DROP COLUMN email");
    let i = s.wait_incident(1, "column_dropped");
    assert_eq!(i["xid"], dropped_column, "{i:#}");
    assert_eq!(
        (&i["objects"][0]["table"], &i["objects"][0]["columns"]),
        (&"customers".into(), &serde_json::json!(["email"])),
        "{i:#}"
    );
    assert!(i["message"].as_str().unwrap().contains("customers column email"), "{i:#}");

    let lookalike =
        s.xid_of("postgres", "CREATE TABLE big_copy AS SELECT * FROM big WHERE id <= 2000; DROP TABLE big");
    let i = s.wait_incident(2, "relations_dropped");
    assert_eq!((&i["xid"], &i["objects"][0]["table"]), (&lookalike.into(), &"big".into()), "{i:#}");

    // Not destruction: dropping an index, an empty table with a primary key, and rewrites
    // back to back (the second rewrites the first's new files before the catalog saw them).
    pg.psql("DROP INDEX CONCURRENTLY orders_v").unwrap();
    pg.psql("DROP TABLE empty_pk").unwrap();
    pg.psql("VACUUM FULL orders").unwrap();
    pg.psql("CLUSTER customers USING customers_pkey").unwrap();
    pg.psql("ALTER TABLE orders ALTER COLUMN id TYPE bigint").unwrap();
    s.wait_decoded();
    let incidents = s.incidents();
    let kinds: Vec<&str> = incidents.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["relations_dropped", "column_dropped", "relations_dropped"],
        "{incidents:#?}\n{}",
        s.v.log()
    );
}

/// One tenant's customers (50,400 rows) and their orders (cascaded) deleted in 200 small
/// transactions, each far under the per-transaction thresholds: one `cumulative_delete`
/// incident with the default thresholds, whose restore target is before the first of them —
/// restoring to it brings every row back.
#[test]
fn a_slow_drip_of_small_deletes_is_one_incident_undone_from_before_the_first() {
    let pg = TempPg::start().unwrap();
    pg.psql(
        "CREATE TABLE customers (id int PRIMARY KEY, merchant_id int NOT NULL, name text NOT NULL);
         INSERT INTO customers SELECT g, CASE WHEN g <= 50400 THEN 7 ELSE 1 + g % 5 END, 'customer ' || g FROM generate_series(1, 80000) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE, total int NOT NULL);
         CREATE INDEX orders_customer ON orders (customer_id);
         INSERT INTO orders SELECT g, g, g % 100 FROM generate_series(1, 80000) g;
         ANALYZE;",
    )
    .unwrap();
    let s = setup(pg, "");
    let pg = &s.pg;
    let tenant = "SELECT count(*) || ':' || md5(coalesce(string_agg(c.id || '/' || o.id || '/' || o.total, ',' ORDER BY c.id), '')) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.merchant_id = 7";
    let before = pg.psql(tenant).unwrap();
    assert!(before.starts_with("50400:"), "{before}");
    s.wait_decoded();
    // 200 transactions of 252 customers (and 252 cascaded orders) each, from one session.
    let script: String = (0..200)
        .map(|i| {
            format!(
                "BEGIN; DELETE FROM customers WHERE merchant_id = 7 AND id > {} AND id <= {}; SELECT txid_current(); COMMIT;\n",
                i * 252,
                (i + 1) * 252
            )
        })
        .collect();
    let xids: Vec<u32> = pg.psql(&script).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(xids.len(), 200);
    assert_eq!(pg.psql("SELECT count(*) FROM customers WHERE merchant_id = 7").unwrap(), "0");
    s.wait_decoded();
    let incidents = s.incidents();
    assert_eq!(incidents.len(), 1, "one incident for the whole drip: {incidents:#?}");
    let i = &incidents[0];
    assert_eq!(i["kind"], "cumulative_delete", "{i:#}");
    assert_eq!(
        (&i["restore_target"]["kind"], &i["restore_target"]["xid"]),
        (&"before_xid".into(), &xids[0].into()),
        "restore target before the first: {i:#}"
    );
    assert!(xids.contains(&(i["xid"].as_u64().unwrap() as u32)), "{i:#}");
    let tables: Vec<&str> =
        i["objects"].as_array().unwrap().iter().filter_map(|o| o["table"].as_str()).collect();
    assert!(tables.contains(&"customers") && tables.contains(&"orders"), "{i:#}");

    // Undo: restore to before the first transaction of the drip; every row is back.
    pg.psql("SELECT pg_switch_wal()").unwrap();
    s.wait_decoded();
    let read = s.v.scratch().join("read.token");
    let out = cli(
        &s.v,
        &s.admin,
        &[
            "vault",
            "token",
            "create",
            "--scope",
            "read",
            "--label",
            "restore",
            "--out",
            read.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("undo");
    let out = std::process::Command::new(holdfast())
        .args(["restore", "--cluster", "main", "--before-incident", "1", "--start", "--promote", "--json"])
        .arg("--target-dir")
        .arg(&dir)
        .args(s.v.remote_args(&read))
        .env("PGPASSWORD", pg.superuser_password())
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let restored = testkit::pg::psql_at(
        Path::new(report["socket_dir"].as_str().unwrap()),
        report["port"].as_u64().unwrap() as u16,
        pg.superuser_password(),
        "postgres",
        tenant,
    )
    .unwrap();
    let mut stop = command_as_postgres(&bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
    assert_eq!(restored, before, "every row of the tenant is back");
}

/// `tenant_column = "merchant_id"` on a shop of 20 merchants: deleting one merchant's orders
/// (5 % of the table) in one transaction, zeroing one merchant's gift-card balances in one, and
/// another's in 30 small ones, are each an incident naming the merchant — though every one is
/// far under the whole-table thresholds; the dripped one restores to before its first
/// transaction. Ordinary per-merchant traffic raises nothing. A table whose deletes cannot
/// carry the tenant (replica identity without the column) is a `tenant_blind` incident naming
/// it. Twelve small tables dropped one by one are twelve incidents and one `cumulative_drop`
/// restoring to before the first.
#[test]
fn one_tenants_rows_deleted_or_overwritten_are_incidents_naming_the_tenant() {
    let pg = TempPg::start_with(TempPgOptions::default().setting("wal_level", "logical")).unwrap();
    let small_tables: String = (0..12)
        .map(|i| format!("CREATE TABLE scratch{i} AS SELECT g AS id FROM generate_series(1, 50) g;"))
        .collect();
    pg.psql(&format!(
        "CREATE TABLE orders (merchant_id int NOT NULL, id int NOT NULL, total int NOT NULL, PRIMARY KEY (merchant_id, id));
         INSERT INTO orders SELECT 1 + g % 20, g, g % 100 FROM generate_series(1, 20000) g;
         CREATE TABLE gift_cards (id int PRIMARY KEY, code text NOT NULL, merchant_id bigint NOT NULL, balance int NOT NULL);
         ALTER TABLE gift_cards REPLICA IDENTITY FULL;
         INSERT INTO gift_cards SELECT g, 'card-' || g, 1 + g % 20, 100 FROM generate_series(1, 6000) g;
         CREATE TABLE notes (id int PRIMARY KEY, merchant_id int NOT NULL, body text);
         INSERT INTO notes SELECT g, 1 + g % 20, 'n' FROM generate_series(1, 200) g;
         {small_tables}
         ANALYZE;"
    ))
    .unwrap();
    // pg_stats shows a column's statistics only to a role that may read the column (the
    // catalog role, created by `setup`: granted to every role here).
    pg.psql("GRANT SELECT (merchant_id) ON orders, gift_cards, notes TO PUBLIC").unwrap();
    let s = setup(pg, "tenant_column = \"merchant_id\"");
    let pg = &s.pg;
    s.wait_decoded();
    let i = s.wait_incident(0, "tenant_blind");
    let m = i["message"].as_str().unwrap();
    assert!(m.contains("public.notes") && m.contains("replica identity"), "{i:#}");
    assert!(!m.contains("public.orders") && !m.contains("gift_cards"), "{i:#}");

    // Ordinary traffic: many merchants, a few rows each (not the merchants attacked below:
    // their rows changed in the window would count with the attack, and the restore target
    // would rightly be before them).
    let ordinary: String = (0..40)
        .filter(|k| ![7, 9, 11].contains(&(1 + k % 20)))
        .map(|k| {
            let m = 1 + k % 20;
            format!(
                "BEGIN; DELETE FROM orders WHERE merchant_id = {m} AND id IN (SELECT id FROM orders WHERE merchant_id = {m} ORDER BY id LIMIT 3); \
                 UPDATE gift_cards SET balance = balance - 1 WHERE id IN (SELECT id FROM gift_cards WHERE merchant_id = {m} ORDER BY id LIMIT 5); COMMIT;\n"
            )
        })
        .collect();
    pg.psql(&ordinary).unwrap();
    s.wait_decoded();
    let kinds: Vec<String> = s.incidents().iter().map(|i| i["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["tenant_blind"], "ordinary traffic is no incident: {:#?}", s.incidents());

    // One merchant's orders: ~1000 rows of 20,000.
    let deleted = s.xid_of("postgres", "DELETE FROM orders WHERE merchant_id = 7");
    let i = s.wait_incident(1, "mass_delete");
    assert_eq!(i["xid"], deleted, "{i:#}");
    let o = &i["objects"][0];
    assert_eq!(
        (&o["table"], &o["tenants"][0]["column"], &o["tenants"][0]["value"]),
        (&"orders".into(), &"merchant_id".into(), &"7".into()),
        "{i:#}"
    );
    assert!(i["message"].as_str().unwrap().contains("merchant_id = 7"), "{i:#}");

    // One merchant's gift cards zeroed in one transaction: 300 of 6,000 rows.
    let zeroed = s.xid_of("postgres", "UPDATE gift_cards SET balance = 0 WHERE merchant_id = 9");
    let i = s.wait_incident(2, "mass_update");
    assert_eq!((&i["xid"], &i["objects"][0]["tenants"][0]["value"]), (&zeroed.into(), &"9".into()), "{i:#}");

    // Another's in 30 transactions of 10 cards.
    let drip: String = (0..30)
        .map(|k| {
            format!(
                "BEGIN; UPDATE gift_cards SET balance = 0 WHERE merchant_id = 11 AND id IN (SELECT id FROM gift_cards WHERE merchant_id = 11 ORDER BY id OFFSET {} LIMIT 10); SELECT txid_current(); COMMIT;\n",
                k * 10
            )
        })
        .collect();
    let xids: Vec<u32> = pg.psql(&drip).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(
        pg.psql("SELECT count(*) FROM gift_cards WHERE merchant_id = 11 AND balance <> 0").unwrap(),
        "0"
    );
    let i = s.wait_incident(3, "cumulative_update");
    assert_eq!(i["objects"][0]["tenants"][0]["value"], "11", "{i:#}");
    assert_eq!(i["restore_target"]["xid"], xids[0], "restore target before the first: {i:#}");

    // Twelve small tables dropped one by one.
    let mut drops = Vec::new();
    for t in 0..12 {
        drops.push(s.xid_of("postgres", &format!("DROP TABLE scratch{t}")));
    }
    let i = s.wait_incident(4, "cumulative_drop");
    assert_eq!(i["restore_target"]["xid"], drops[0], "before the first drop: {i:#}");
    s.wait_decoded();
    let incidents = s.incidents();
    let count = |k: &str| incidents.iter().filter(|i| i["kind"] == k).count();
    assert_eq!(
        (count("relations_dropped"), count("cumulative_drop"), incidents.len()),
        (12, 1, 17),
        "{incidents:#?}"
    );
}

/// The detector made to fail (`testing_detector_fault`): stalled, WAL durable for longer than
/// `detector_max_lag_seconds` (2) without being decoded is a `detector_behind` incident,
/// alerted within seconds; panicking, it is `detector_stopped`, alerted, and it restarts and
/// decodes again (a DELETE after it is still raised). A `tenant_column` no table has is
/// `tenant_blind`.
#[test]
fn a_stalled_or_stopped_detector_is_an_incident_alerted_in_seconds() {
    let pg = TempPg::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 20000)").unwrap();
    // A misspelt tenant column too: no table has it, which is `tenant_blind`, not silence.
    let mut s = setup(
        pg,
        "detector_max_lag_seconds = 2\ntesting_detector_fault = \"stall\"\ntenant_column = \"merchnat_id\"",
    );
    let alerted = |s: &Setup, kind: &str, since: Instant| -> Duration {
        let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(40));
        loop {
            let got = s.received.lock().unwrap().clone();
            if let Some((at, _)) =
                got.iter().find(|(at, b)| *at >= since && b["alert"]["incident"]["kind"] == kind)
            {
                return at.saturating_duration_since(since);
            }
            assert!(Instant::now() < deadline, "no {kind} alert: {got:?}\n{}", s.v.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Stalled: the WAL the backup wrote is durable and never decoded.
    let started = Instant::now();
    pg_write(&s.pg);
    let i = s.wait_incident(0, "detector_behind");
    assert!(i["message"].as_str().unwrap().contains("not decoded"), "{i:#}");
    let took = alerted(&s, "detector_behind", started);
    eprintln!("stalled detector: detector_behind alerted {took:?} after WAL was written");
    // Seconds (the figure is printed above); the bound leaves a loaded CI machine room.
    assert!(took < testkit::wait::budget(Duration::from_secs(20)), "{took:?}");
    let st = s.status();
    assert!(st["detector_lag_bytes"].as_u64().unwrap() > 0, "{st}");

    // Stopped: its first run panics; the incident, then it restarts and decodes.
    let text = std::fs::read_to_string(s.v.config_path()).unwrap().replace("\"stall\"", "\"panic\"");
    std::fs::write(s.v.config_path(), text).unwrap();
    // Counted before the restart: the restarted vault may raise detector_stopped (and others)
    // before a count taken after it could be read.
    let known = s.incidents().len();
    s.v.kill();
    let restarted = Instant::now();
    s.v.restart().unwrap();
    let i = s.wait_incident(known, "detector_stopped");
    assert!(i["message"].as_str().unwrap().contains("panicked"), "{i:#}");
    let took = alerted(&s, "detector_stopped", restarted);
    eprintln!("panicking detector: detector_stopped alerted {took:?} after the vault started");
    // Seconds (the figure is printed above); the bound leaves a loaded CI machine room.
    assert!(took < testkit::wait::budget(Duration::from_secs(20)), "{took:?}");
    s.wait_decoded();
    let i = s.wait_incident(0, "tenant_blind");
    assert!(
        i["message"]
            .as_str()
            .unwrap()
            .contains("no table in any database has a column named \"merchnat_id\""),
        "{i:#}"
    );
    let n = s.incidents().len();
    let xid = s.xid_of("postgres", "DELETE FROM t");
    let i = s.wait_incident(n, "mass_delete");
    assert_eq!(i["xid"], xid, "the restarted detector raises destruction again: {i:#}");
}

/// Some WAL: a small write and a segment switch.
fn pg_write(pg: &TempPg) {
    pg.psql("CREATE TABLE IF NOT EXISTS w (v int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()")
        .unwrap();
}
