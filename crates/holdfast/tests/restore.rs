//! Point-in-time restore from the vault with a read token, against a real PostgreSQL: to an
//! LSN, a time, an xid, a restore point and the latest WAL, each compared row for row with what was committed at
//! that moment and confirmed by the self-check; the refusals (target outside the window or in a
//! WAL gap, target directory not empty); restores before a WAL gap; the vault's own first
//! backup; `--port`, and no temporary directory left behind; a restore point name planted
//! twice (refused, both named; its LSN restores every row); a time across a DROP committed with
//! the server's clock set back (refused; `--before-incident` restores every row).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use pgfmt::Lsn;
use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres, psql_at};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const CHECKSUM: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || '=' || balance, ',' ORDER BY id)) FROM accounts";

struct Setup {
    pg: TempPg,
    v: TempVault,
    read_token: PathBuf,
}

impl Setup {
    fn remote_args(&self, token: &Path) -> Vec<String> {
        self.v.remote_args(token)
    }

    /// `holdfast restore …` with the read token; PGPASSWORD lets its self-check log in.
    fn restore(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(holdfast());
        cmd.arg("restore").args(["--cluster", "main"]).args(args).args(self.remote_args(&self.read_token));
        cmd.env("PGPASSWORD", self.pg.superuser_password());
        cmd.output().unwrap()
    }

    fn wait_durable(&self, flush: Lsn) {
        let admin = self.v.scratch().join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut args = vec!["status".to_string(), "--json".into()];
            args.extend(self.remote_args(&admin));
            let out = self.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|s| s.parse::<Lsn>().ok());
            if durable.is_some_and(|d| d >= flush) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the vault did not catch up to {flush}: {st}\n{}",
                self.v.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// psql against a restored server (socket dir and port from the restore report).
fn psql_restored(report: &serde_json::Value, password: &str, sql: &str) -> String {
    let (dir, port) = (report["socket_dir"].as_str().unwrap(), report["port"].as_u64().unwrap());
    psql_at(Path::new(dir), port as u16, password, "postgres", sql).unwrap()
}

/// The self-check confirmed the target, with evidence containing `evidence`.
fn assert_checked(report: &serde_json::Value, evidence: &str) {
    assert_eq!(report["reached"], true, "{report}");
    let check = report["target_check"].as_str().unwrap_or_default();
    assert!(check.contains(evidence), "self-check {check:?} lacks {evidence:?}");
}

fn stop_restored(dir: &Path) {
    let mut cmd = command_as_postgres(&bin("pg_ctl").unwrap());
    cmd.arg("-D").arg(dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = cmd.output();
}

/// Seconds from "pausing at the end of recovery" to "received promote request" in a restored
/// server's log (lines start with `%m`: `2026-12-05 06:23:56.757 UTC`).
fn promote_wait(log: &str) -> Option<f64> {
    let at = |needle: &str| {
        let line = log.lines().find(|l| l.contains(needle))?;
        let (h, m, s) = (line.get(11..13)?, line.get(14..16)?, line.get(17..23)?);
        Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
    };
    Some(at("received promote request")? - at("pausing at the end of recovery")?)
}

fn setup() -> Setup {
    let pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let (v, read_token) = vault_protecting(&pg);
    Setup { pg, v, read_token }
}

/// A vault streaming from `source`, and a read token for it.
fn vault_protecting(source: &TempPg) -> (TempVault, PathBuf) {
    let mut v = TempVault::start(holdfast()).unwrap();
    v.protect(source, "").unwrap();
    let read_token = v.scratch().join("read.token");
    v.create_token("read", "restore", &read_token).unwrap();
    (v, read_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_to_an_lsn_a_time_an_xid_a_restore_point_and_the_latest_row_for_row() {
    let s = setup();
    let pg = &s.pg;
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5000) g").unwrap();
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into(), "--json".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());

    // Three moments, at least two seconds apart, each with the table's checksum as committed.
    let mut moments = Vec::new();
    let mut xids = Vec::new();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(2100));
        // One transaction per round (psql -c sends one implicit transaction); its xid kept.
        let xid = pg
            .psql(&format!(
                "UPDATE accounts SET balance = balance + {} WHERE id % 7 = {round}; \
                 INSERT INTO accounts SELECT g, {round} FROM generate_series({}, {}) g; SELECT txid_current()",
                round + 1,
                10_000 + round * 100,
                10_099 + round * 100
            ))
            .unwrap();
        xids.push(xid.lines().last().unwrap().trim().to_string());
        if round == 0 {
            pg.psql("SELECT pg_create_restore_point('after-first-round')").unwrap();
        }
        let row = pg
            .psql(&format!(
                "SELECT pg_current_wal_lsn(), extract(epoch FROM clock_timestamp())::float8, ({CHECKSUM})"
            ))
            .unwrap();
        let f: Vec<&str> = row.split('|').collect();
        moments.push((f[0].parse::<Lsn>().unwrap(), f[1].parse::<f64>().unwrap(), f[2].to_string()));
    }
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // 1. To the LSN right after the first round: exactly the first round's rows.
    let dir = root.path().join("lsn");
    let out = s.restore(&[
        "--lsn",
        &moments[0].0.to_string(),
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "restore --lsn: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), CHECKSUM),
        moments[0].2,
        "rows at {}",
        moments[0].0
    );
    assert_checked(&report, "reached exactly: replayed to");
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), "SELECT pg_is_in_recovery()"),
        "t",
        "paused by default"
    );
    stop_restored(&dir);

    // 2. To a time between the second and third rounds (whole seconds): the second round's rows.
    let t = (moments[1].1.ceil() as i64).min(moments[2].1 as i64 - 1);
    let when = time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let dir = root.path().join("time");
    let out = s.restore(&[
        "--time",
        &when,
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--promote",
        "--verify",
        "--json",
    ]);
    assert!(out.status.success(), "restore --time {when}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verify"], "passed", "pg_amcheck on the restored copy: {report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(psql_restored(&report, pg.superuser_password(), CHECKSUM), moments[1].2, "rows at {when}");
    assert_checked(&report, "next transaction end in the WAL");
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), "SELECT pg_is_in_recovery()"),
        "f",
        "promoted"
    );
    assert!(!dir.join("holdfast_restore.json").exists(), "the read token is left behind after promotion");
    // Promoted as soon as it paused at the target: PostgreSQL looks for a promote request only
    // once a second while paused, unless woken (1.00 s in bench/restore.sh before the wake-up).
    let log = std::fs::read_to_string(dir.join("holdfast_restore.log")).unwrap_or_default();
    let waited = promote_wait(&log);
    assert!(waited.is_some_and(|w| w < 0.6), "pause → promote request: {waited:?} s\n{log}");
    stop_restored(&dir);

    // 3. To the commit of the second round's transaction (inclusive).
    let dir = root.path().join("xid");
    let out = s.restore(&["--xid", &xids[1], "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(out.status.success(), "restore --xid {}: {}", xids[1], String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), CHECKSUM),
        moments[1].2,
        "rows at xid {}",
        xids[1]
    );
    assert_checked(&report, "is committed on the restored server");
    stop_restored(&dir);

    // 3b. Just before that transaction committed (--exclusive): the first round's rows — how a
    //     destructive transaction is undone.
    let dir = root.path().join("xid-exclusive");
    let out = s.restore(&[
        "--xid",
        &xids[1],
        "--exclusive",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "restore --xid {} --exclusive: {}",
        xids[1],
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), CHECKSUM),
        moments[0].2,
        "rows just before xid {}",
        xids[1]
    );
    assert_checked(&report, "is not committed on the restored server");
    stop_restored(&dir);

    // 4. To the restore point made after the first round.
    let dir = root.path().join("name");
    let out = s.restore(&[
        "--restore-point",
        "after-first-round",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert!(out.status.success(), "restore --restore-point: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        psql_restored(&report, pg.superuser_password(), CHECKSUM),
        moments[0].2,
        "rows at the restore point"
    );
    assert_checked(&report, "is the last replayed and the only one of that name");
    stop_restored(&dir);

    // 5. Latest: everything.
    let dir = root.path().join("latest");
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(
        out.status.success(),
        "restore --latest: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, pg.superuser_password(), CHECKSUM), moments[2].2);
    assert_checked(&report, "replayed to");
    assert!(report["base"]["bytes"].as_u64().unwrap() > 10 << 20, "{report}");
    stop_restored(&dir);

    // Refusals: nothing is written.
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    let dir = root.path().join("early");
    let out = s.restore(&["--time", "2001-01-01T00:00:00Z", "--target-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside the restorable window"), "{err}");
    assert!(!dir.exists(), "a refused restore created its target directory");
}

/// DESIGN.md A1 + G5: root on the database host destroys the cluster — data directory and WAL
/// gone — and the vault's own key file is destroyed too. A vault brought back with only the
/// escrow identity serves the restore, and every committed row comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_after_the_cluster_and_the_vault_key_are_destroyed_with_only_the_escrow_key() {
    let mut s = setup();
    s.pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, g % 97 FROM generate_series(1, 20000) g").unwrap();
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    s.pg.psql(
        "UPDATE accounts SET balance = balance * 2 WHERE id % 3 = 0; DELETE FROM accounts WHERE id % 11 = 0",
    )
    .unwrap();
    let committed = s.pg.psql(CHECKSUM).unwrap();
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);

    // The attack: the server is killed, its data directory (with pg_wal) deleted.
    s.pg.kill().unwrap();
    let data = s.pg.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).unwrap();
    assert!(!data.exists());
    // And the vault's key is gone: the vault cannot open its repository any more …
    s.v.terminate();
    std::fs::remove_file(s.v.vault_dir().join("vault.key")).unwrap();
    assert!(s.v.restart().is_err(), "the vault started without its key");
    // … until it is brought back with the escrow identity, kept offline.
    let escrow = s.v.escrow_key_path();
    s.v.restart_with(&["--identity", escrow.to_str().unwrap()]).unwrap();

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("recovered");
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(out.status.success(), "restore: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, s.pg.superuser_password(), CHECKSUM), committed, "rows lost");
    stop_restored(&dir);
}

/// A standby is promoted (timeline 2) after the base backup: restoring the latest state follows
/// the history file onto timeline 2 — through the segment where timeline 2 began, which the
/// vault assembles from timeline 1's WAL up to the switch point and timeline 2's after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_across_a_timeline_switch() {
    let primary = TempPg::start_with(TempPgOptions::default()).unwrap();
    primary.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    primary.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 1 FROM generate_series(1, 3000) g").unwrap();
    let standby = TempPg::standby_of(&primary).unwrap();
    let (v, read_token) = vault_protecting(&standby);
    let s = Setup { pg: standby, v, read_token };
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(
        out.status.success(),
        "backup from the standby: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.v.log()
    );
    primary.psql("UPDATE accounts SET balance = 2 WHERE id <= 1000").unwrap();
    let on_primary: Lsn = primary.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(on_primary);

    s.pg.promote().unwrap();
    s.pg.psql("UPDATE accounts SET balance = 3 WHERE id > 2000; INSERT INTO accounts VALUES (5000, 5)")
        .unwrap();
    let on_new: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    let expected = s.pg.psql(CHECKSUM).unwrap();
    s.wait_durable(on_new);
    let st =
        s.v.holdfast(&[
            "status",
            "--json",
            "--url",
            s.v.url(),
            "--ca",
            s.v.ca_path().to_str().unwrap(),
            "--token-file",
            admin.to_str().unwrap(),
        ])
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["clusters"][0]["timeline"], 2, "{st}");

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("tl2");
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(out.status.success(), "restore: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, s.pg.superuser_password(), CHECKSUM), expected, "rows on timeline 2");
    stop_restored(&dir);
}

/// `holdfast backup` and its id.
fn backup_id(s: &Setup) -> String {
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into(), "--json".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn pack_files(v: &TempVault) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![v.vault_dir().join("store")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("/pack/") && !p.to_string_lossy().contains(".tmp") {
                out.insert(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_named_with_an_older_backup_that_avoids_it_and_the_rerun_starts_clean() {
    let s = setup();
    let pg = &s.pg;
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5000) g").unwrap();
    let older = backup_id(&s);
    // Data only the second backup holds: a new table, so new chunks in new packs.
    pg.psql("CREATE TABLE extra AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g")
        .unwrap();
    let before = pack_files(&s.v);
    let newer = backup_id(&s);
    let new_packs: Vec<PathBuf> = pack_files(&s.v).difference(&before).cloned().collect();
    assert!(!new_packs.is_empty(), "the second backup stored no new pack");
    pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id <= 10").unwrap();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let expected = pg.psql(&format!("SELECT ({CHECKSUM}) || '/' || (SELECT count(*) FROM extra)")).unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    // Damage the largest new pack a third of the way in (chunk data, not its trailing header).
    let victim = new_packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    let mut perms = std::fs::metadata(victim).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(victim, perms).unwrap();
    std::fs::write(victim, &bytes).unwrap();

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("latest");
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged backup restored: {err}");
    assert!(err.contains(&format!("backup {newer} is damaged")), "{err}");
    assert!(
        err.contains("chunk ") && err.contains(victim.file_name().unwrap().to_str().unwrap()),
        "names the chunk and its pack: {err}"
    );
    assert!(err.contains(&format!("rerun with --backup {older}")), "names the older backup: {err}");
    assert!(!dir.join("global/pg_control").exists(), "a cut-short restore could be started");
    assert!(dir.join("holdfast_restore.incomplete").exists());

    // The advice works: the same target directory (cleared: it holds our cut-short restore),
    // the older backup, every committed row.
    let out = s.restore(&[
        "--latest",
        "--backup",
        &older,
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert!(out.status.success(), "restore --backup {older}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup"], older.as_str());
    let got = psql_restored(
        &report,
        pg.superuser_password(),
        &format!("SELECT ({CHECKSUM}) || '/' || (SELECT count(*) FROM extra)"),
    );
    assert_eq!(got, expected, "rows restored from the older backup plus WAL");
    assert!(!dir.join("holdfast_restore.incomplete").exists());
    stop_restored(&dir);
    // A directory that is not a cut-short restore of ours is still refused.
    let out = s.restore(&["--latest", "--target-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_lost_mid_restore_fails_clearly_and_never_leaves_a_startable_cluster() {
    let mut s = setup();
    let pg = &s.pg;
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 20000) g").unwrap();
    backup_id(&s);
    pg.psql("UPDATE accounts SET balance = balance + 5 WHERE id % 3 = 0").unwrap();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let expected = pg.psql(CHECKSUM).unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // `retry`: how long the restore keeps retrying an unreachable vault (default 30 s).
    let spawn_restore = |s: &Setup, dir: &Path, retry: Option<&str>| {
        let mut cmd = std::process::Command::new(holdfast());
        if let Some(secs) = retry {
            cmd.env(restore::RETRY_SECONDS_ENV, secs);
        }
        cmd.arg("restore")
            .args(["--cluster", "main", "--latest", "--start", "--promote", "--json", "--parallel", "1"])
            .arg("--target-dir")
            .arg(dir)
            .args(s.remote_args(&s.read_token))
            .env("PGPASSWORD", s.pg.superuser_password())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("holdfast_restore.incomplete").exists() {
            assert!(Instant::now() < deadline, "the restore never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    };

    // 1. The vault is away for 3 s (restarted on the same address): the restore waits for it
    //    and finishes with every row.
    // On a port outside the ephemeral range: while the vault is down, no outgoing connection
    // (another test's) can take it, and the restart on the same address cannot fail.
    let port = testkit::net::port_to_reuse().unwrap().to_string();
    s.v.restart_with(&["--listen", &format!("127.0.0.1:{port}")]).unwrap();
    let dir = root.path().join("resumed");
    let child = spawn_restore(&s, &dir, None);
    s.v.kill();
    std::thread::sleep(Duration::from_secs(3));
    s.v.restart_with(&["--listen", &format!("127.0.0.1:{port}")]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the restore did not ride out a vault restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, pg.superuser_password(), CHECKSUM), expected);
    stop_restored(&dir);

    // 2. The vault stays away: a clear failure after the retries (3 s of them here; the
    //    default 30 s would only make the test slower).
    let dir = root.path().join("r");
    let child = spawn_restore(&s, &dir, Some("3"));
    s.v.kill();
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restore without its vault succeeded: {err}");
    assert!(
        err.contains("could not reach the vault") || err.contains("stopped during recovery"),
        "the failure says what happened: {err}"
    );
    assert!(
        !err.contains("could not reach the vault") || err.contains("gave up after retrying for 3 s"),
        "the retry budget is the one asked for: {err}"
    );
    eprintln!("restore without its vault, after {:?}: {err}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(120), "gave up only after {:?}", t0.elapsed());
    // Nothing runs on the directory, and nothing can start it as if it were complete: either
    // pg_control is missing, or recovery (which needs the vault) is still pending.
    assert!(!dir.join("postmaster.pid").exists(), "a server still runs on the cut-short restore");
    assert!(dir.join("holdfast_restore.incomplete").exists());
    assert!(
        !dir.join("global/pg_control").exists() || dir.join("recovery.signal").exists(),
        "a cut-short restore looks complete"
    );

    // The vault is back: the same command into the same directory starts clean.
    s.v.restart().unwrap();
    let out =
        s.restore(&["--latest", "--start", "--promote", "--json", "--target-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "rerun: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, pg.superuser_password(), CHECKSUM), expected);
    stop_restored(&dir);
}

/// Issue 15: WAL the server recycled before the vault stored it (the vault down, its slot
/// dropped) is a gap in the vault. Status shows two restorable intervals; everything before the
/// gap stays restorable — also after a newer backup was taken past the gap, which a restore to a
/// point before the gap must not pick — and a target inside the gap is refused, naming it. An
/// xid's position is unknown before replay, so it is planned in the newest interval: PostgreSQL
/// stops short, and the error quotes PostgreSQL's log and names the earlier interval's backup,
/// with which `--backup` brings the exact rows back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_before_a_wal_gap_after_a_newer_backup_exists() {
    let pg = TempPg::start_with(
        TempPgOptions::default()
            .setting("wal_keep_size", "0")
            .setting("min_wal_size", "32MB")
            .setting("max_wal_size", "32MB"),
    )
    .unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let (v, read_token) = vault_protecting(&pg);
    let mut s = Setup { pg, v, read_token };
    s.pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 10 FROM generate_series(1, 2000) g").unwrap();
    let before_gap_backup = backup_id(&s);
    let xid =
        s.pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id <= 500; SELECT txid_current()")
            .unwrap();
    let xid = xid.lines().last().unwrap().trim().to_string();
    let row = s.pg.psql(&format!("SELECT pg_current_wal_lsn(), ({CHECKSUM})")).unwrap();
    let (lsn_a, rows_a) = row.split_once('|').unwrap();
    let (lsn_a, rows_a) = (lsn_a.parse::<Lsn>().unwrap(), rows_a.to_string());
    s.pg.psql("SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);

    // The gap: the vault is down, its slot dropped, and checkpoints recycle the WAL it missed.
    s.v.terminate();
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    while let Err(e) = s.pg.psql("SELECT pg_drop_replication_slot('holdfast_main')") {
        assert!(Instant::now() < deadline, "cannot drop the slot: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.pg.psql("INSERT INTO accounts SELECT g, 1 FROM generate_series(3001, 4000) g").unwrap();
    let in_gap: Lsn = s.pg.psql("SELECT pg_current_wal_insert_lsn()").unwrap().parse().unwrap();
    for _ in 0..4 {
        s.pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id > 3000; SELECT pg_switch_wal()")
            .unwrap();
    }
    s.pg.psql("CHECKPOINT").unwrap();
    s.pg.psql("UPDATE accounts SET balance = 7 WHERE id = 1; SELECT pg_switch_wal()").unwrap();
    s.pg.psql("CHECKPOINT").unwrap();
    let seg = pgfmt::segment_name(pgfmt::TimelineId(1), flush.0 / (16 << 20), 16 << 20);
    assert!(
        !s.pg.data_dir().join("pg_wal").join(&seg).exists(),
        "the server kept segment {seg}: the test cannot make a gap"
    );
    s.v.restart().unwrap();
    s.pg.psql("UPDATE accounts SET balance = 8 WHERE id = 2").unwrap();
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    // A newer backup after the gap, and more changes.
    let after_gap_backup = backup_id(&s);
    s.pg.psql("UPDATE accounts SET balance = 0 WHERE id > 1500").unwrap();
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);

    // Status: two intervals, each with its backup; the human form says what lies between.
    let admin = s.v.scratch().join("admin.token");
    let st = s.v.cli(&admin, &["status", "--json"]).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let windows = st["clusters"][0]["windows"].as_array().cloned().unwrap_or_default();
    assert_eq!(windows.len(), 2, "{st}");
    assert!(windows[0]["backups"].to_string().contains(&before_gap_backup), "{st}");
    assert!(windows[1]["backups"].to_string().contains(&after_gap_backup), "{st}");
    let human = s.v.cli(&admin, &["status"]).unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("lacks WAL") && human.contains(&before_gap_backup), "{human}");

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // 1. A point before the gap: from the backup before it, the exact rows.
    let dir = root.path().join("before-gap");
    let out =
        s.restore(&["--lsn", &lsn_a.to_string(), "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(
        out.status.success(),
        "restore before the gap: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup"], before_gap_backup.as_str(), "{report}");
    assert_eq!(psql_restored(&report, s.pg.superuser_password(), CHECKSUM), rows_a, "rows before the gap");
    assert_checked(&report, "reached exactly");
    stop_restored(&dir);

    // 2. A point inside the gap: refused before anything is written, naming the gap.
    let dir = root.path().join("in-gap");
    let out = s.restore(&["--lsn", &in_gap.to_string(), "--target-dir", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("WAL gap"), "{err}");
    assert!(!dir.exists());

    // 3. The xid before the gap, position unknown: PostgreSQL stops short, and says so.
    let dir = root.path().join("xid-newest");
    let out = s.restore(&["--xid", &xid, "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("recovery ended before configured recovery target was reached"), "{err}");
    assert!(err.contains("--backup") && err.contains(&before_gap_backup), "{err}");
    assert!(!err.contains("psql"), "a connection error instead of PostgreSQL's account: {err}");
    println!("restore --xid {xid} planned in the newest interval, as reported:\n{err}");

    // 4. … and `--backup` from the earlier interval brings the rows back.
    let dir = root.path().join("xid-before-gap");
    let out = s.restore(&[
        "--xid",
        &xid,
        "--backup",
        &before_gap_backup,
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert!(out.status.success(), "restore --xid --backup: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, s.pg.superuser_password(), CHECKSUM), rows_a, "rows at xid {xid}");
    assert_checked(&report, "is committed");
    stop_restored(&dir);
}

/// Issue 15: a cluster the vault protects but nobody took a base backup of is restorable from
/// the start: the vault takes the first base backup itself at first connect and says so in
/// status and its log. The restore from it listens on 127.0.0.1 at `--port` as well as its
/// socket (and says so); its socket lives in the target directory when the path allows, and
/// the private /tmp directory used otherwise is gone after a failure and after Ctrl-C, which
/// also stops the server the interrupted restore had started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_backs_up_a_new_cluster_itself_and_restore_listens_on_its_port_and_leaves_nothing_behind() {
    let mut s = setup();
    s.pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 5 FROM generate_series(1, 3000) g").unwrap();
    // Nobody runs `holdfast backup`: the vault's own first backup makes the cluster restorable.
    let admin = s.v.scratch().join("admin.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let out = s.v.cli(&admin, &["status", "--json"]).unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if st["clusters"][0]["windows"].as_array().is_some_and(|w| !w.is_empty()) {
            break st;
        }
        assert!(Instant::now() < deadline, "no first backup: {st}\n{}", s.v.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let note = st["clusters"][0]["first_backup"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("taken by the vault itself"), "status does not say so: {st}");
    assert!(s.v.log().contains("taking the first one"), "the log does not say so:\n{}", s.v.log());
    let human = s.v.cli(&admin, &["status"]).unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("first backup:"));
    s.pg.psql("UPDATE accounts SET balance = 6 WHERE id % 2 = 0").unwrap();
    let expected = s.pg.psql(CHECKSUM).unwrap();
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    // The restores below get a private TMPDIR (the machine's /tmp is shared with other runs):
    // whatever is left in it, they left.
    let tmp = tempfile::tempdir().unwrap();
    let left_in_tmp = || -> Vec<PathBuf> {
        std::fs::read_dir(tmp.path()).unwrap().filter_map(Result::ok).map(|e| e.path()).collect()
    };

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // --port: TCP on 127.0.0.1 as well, said in the output; the socket in the target directory.
    let port = testkit::net::port_to_reuse().unwrap();
    let dir = root.path().join("latest");
    let out = s.restore(&[
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
        "--promote",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "restore: {}{text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("127.0.0.1:{port}")), "the output does not name the TCP address: {text}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "nothing listens on 127.0.0.1:{port}");
    assert!(dir.join(format!(".s.PGSQL.{port}")).exists(), "the socket is not in the target directory");
    let report = serde_json::json!({"socket_dir": dir.to_str().unwrap(), "port": port});
    assert_eq!(psql_restored(&report, s.pg.superuser_password(), CHECKSUM), expected);
    stop_restored(&dir);

    // A target directory too long for a socket path: a private /tmp directory, gone after a
    // refused restore …
    let long = root.path().join("x".repeat(90)).join("restored");
    let restore_cmd = |args: &[&str]| {
        let mut cmd = std::process::Command::new(holdfast());
        cmd.arg("restore")
            .args(["--cluster", "main", "--target-dir", long.to_str().unwrap(), "--start"])
            .args(args)
            .args(s.remote_args(&s.read_token))
            .env("PGPASSWORD", s.pg.superuser_password())
            .env("TMPDIR", tmp.path());
        cmd
    };
    let out = restore_cmd(&["--time", "2001-01-01T00:00:00Z"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the restorable window"));
    assert_eq!(left_in_tmp(), Vec::<PathBuf>::new(), "left behind in TMPDIR after a failure");
    // … and after Ctrl-C while the restored server replays: the vault goes away once the base
    // data is in place, so recovery waits on `restore_command` (retrying ~30 s) with the server
    // running — Ctrl-C then stops that server too.
    let mut cmd = restore_cmd(&["--latest"]);
    let stderr = root.path().join("interrupted.stderr");
    cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = cmd.spawn().unwrap();
    let said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !long.join("global/pg_control").exists() {
        assert!(Instant::now() < deadline, "the restore did not get its base data");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.v.terminate();
    while !long.join("postmaster.pid").exists() {
        assert!(Instant::now() < deadline, "the restored server did not start");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before the server started: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "not reported as interrupted");
    assert!(
        !long.join("postmaster.pid").exists(),
        "the server started by the interrupted restore still runs"
    );
    assert_eq!(left_in_tmp(), Vec::<PathBuf>::new(), "left behind in TMPDIR after Ctrl-C");
}

/// A restore point planted early under the name people will use later (PostgreSQL stops at the
/// first of a name): the vault lists both, `restore --restore-point` refuses naming both LSNs
/// and writes nothing, `--lsn` of the real one brings every row back, an unknown name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_point_name_planted_twice_is_refused_and_its_lsn_restores_every_row() {
    let s = setup();
    let pg = &s.pg;
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into(), "--json".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());

    // The insider plants the name early; rows are committed; people make the real one; more rows.
    let planted: Lsn =
        pg.psql("SELECT pg_create_restore_point('before-migration')").unwrap().parse().unwrap();
    pg.psql("INSERT INTO orders SELECT generate_series(1, 100)").unwrap();
    let real: Lsn = pg.psql("SELECT pg_create_restore_point('before-migration')").unwrap().parse().unwrap();
    pg.psql("INSERT INTO orders SELECT generate_series(101, 150)").unwrap();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);

    // The vault decoded both from its WAL: their ends are what PostgreSQL returned.
    let mut args = vec!["restore-points".to_string(), "--cluster".into(), "main".into(), "--json".into()];
    args.extend(s.remote_args(&s.read_token));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "restore-points: {}", String::from_utf8_lossy(&out.stderr));
    let points: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = points.iter().filter(|p| p["name"] == "before-migration").collect();
    let ends: Vec<Lsn> = ours.iter().map(|p| p["end_lsn"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ends, [planted, real], "{points:?}");
    let starts: Vec<String> = ours.iter().map(|p| p["lsn"].as_str().unwrap().to_string()).collect();

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // By name: refused, both occurrences named with what to do, nothing written.
    let dir = root.path().join("by-name");
    let out = s.restore(&["--restore-point", "before-migration", "--target-dir", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a name that occurs twice was restored: {err}");
    for l in &starts {
        assert!(err.contains(&format!("--lsn {l}")), "{err} lacks --lsn {l}");
    }
    assert!(!dir.exists(), "the refused restore wrote {}", dir.display());
    // A name that is not in the WAL: refused, nothing written.
    let out = s.restore(&["--restore-point", "before-migraton", "--target-dir", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not in the WAL"), "{err}");
    assert!(!dir.exists(), "the refused restore wrote {}", dir.display());

    // By the LSN of the real one: the 100 rows committed between the two, not the 50 after.
    let dir = root.path().join("by-lsn");
    let out = s.restore(&["--lsn", &starts[1], "--target-dir", dir.to_str().unwrap(), "--start", "--json"]);
    assert!(out.status.success(), "restore --lsn {}: {}", starts[1], String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, pg.superuser_password(), "SELECT count(*) FROM orders"), "100");
    assert_checked(&report, "reached exactly");
    stop_restored(&dir);
}

/// Root on the database host sets its clock back a day, DROPs `orders`, puts the clock right,
/// and the shop goes on. A restore "to just before the DROP" by time — a second after the last
/// order — used to apply the DROP: its commit is stamped a day early, so PostgreSQL's
/// `recovery_target_time` replays it, and the self-check, reading the same stamps, said
/// reached. Now the vault raised `server_clock`, the `--time` restore is refused before
/// anything is written, naming it, and `--before-incident` brings every order back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_restore_across_a_clock_set_back_for_a_drop_is_refused_and_before_incident_brings_every_row() {
    let clock = testkit::clock::ShiftedClock::new().unwrap();
    let pg = TempPg::start_with(clock.server_options(TempPgOptions::default())).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let (v, read_token) = vault_protecting(&pg);
    let s = Setup { pg, v, read_token };
    let pg = &s.pg;
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100)")
        .unwrap();
    let admin = s.v.scratch().join("admin.token");
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into(), "--json".into()];
    args.extend(s.remote_args(&admin));
    let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    pg.psql("INSERT INTO orders SELECT generate_series(101, 150)").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let before = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    clock.set(-86_400).unwrap();
    pg.psql("DROP TABLE orders").unwrap();
    clock.set(0).unwrap();
    pg.psql("CREATE TABLE later (x int); INSERT INTO later VALUES (1)").unwrap();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    s.wait_durable(flush);
    let incidents = |s: &Setup| -> Vec<serde_json::Value> {
        let mut args = vec!["incidents".to_string(), "--cluster".into(), "main".into(), "--json".into()];
        args.extend(s.remote_args(&s.read_token));
        let out = s.v.holdfast(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (clock_n, drop_n) = loop {
        let list = incidents(&s);
        let n = |kind: &str| list.iter().position(|i| i["kind"] == kind).map(|i| i + 1);
        if let (Some(c), Some(d)) = (n("server_clock"), n("relations_dropped")) {
            break (c, d);
        }
        assert!(
            Instant::now() < deadline,
            "no server_clock and relations_dropped incidents: {list:?}\n{}",
            s.v.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("by-time");
    let out = s.restore(&[
        "--time",
        &before,
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--promote",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let orders = psql_restored(
            &report,
            pg.superuser_password(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'",
        );
        stop_restored(&dir);
        panic!(
            "restore --time {before} across the lying clock was not refused: orders tables {orders}, report {report}"
        );
    }
    assert!(
        err.contains(&format!("server_clock incident {clock_n}")) && err.contains("--before-incident"),
        "{err}"
    );
    assert!(!dir.exists(), "the refused restore wrote {}", dir.display());

    let dir = root.path().join("before-incident");
    let n = drop_n.to_string();
    let out = s.restore(&[
        "--before-incident",
        &n,
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--promote",
        "--json",
    ]);
    assert!(out.status.success(), "restore --before-incident {n}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(psql_restored(&report, pg.superuser_password(), "SELECT count(*) FROM orders"), "150");
    stop_restored(&dir);
}
