//! Base backups triggered by WAL volume (`backup_wal_share`): under a write load the vault takes
//! new backups on its own, each once the WAL since the newest exceeds a share of its size, and a
//! restore picks the newest backup that reaches its target — so replay stays short whatever the
//! database's size.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::pg::TempPg;
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// Complete backups the vault lists, oldest first (from `holdfast status --json`).
fn backups(v: &TempVault, token: &Path) -> Vec<String> {
    let out = v.cli(token, &["status", "--json"]).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ids: Vec<String> = st["clusters"][0]["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["backups"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b.as_str().map(String::from))
        .collect();
    ids.dedup();
    ids
}

#[test]
fn wal_volume_triggers_backups_under_load_and_restore_picks_the_newest() {
    let pg = TempPg::start().unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql("CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)").unwrap();
    let mut v = TempVault::start(holdfast()).unwrap();
    // A backup as soon as the share is passed (the default minimum interval is 60 s).
    v.protect(&pg, "backup_wal_share = 0.5\nbackup_min_interval_seconds = 1\n").unwrap();
    let admin = v.scratch().join("admin.token");
    let wait = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", v.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // The vault's own first backup (first_backup), then nothing more while the database is idle.
    wait("the first backup", 60, &|| backups(&v, &admin).len() == 1);
    let first = backups(&v, &admin);
    // The write load: about 3 × the database's size in WAL, in steps, each committed.
    for step in 0..6 {
        pg.psql(&format!(
            "INSERT INTO events SELECT g, repeat(md5(g::text), 8) FROM generate_series({}, {}) g",
            step * 40_000 + 1,
            (step + 1) * 40_000
        ))
        .unwrap();
    }
    wait("backups triggered by the WAL volume", 120, &|| backups(&v, &admin).len() >= 2);
    let all = backups(&v, &admin);
    assert_eq!(all[0], first[0]);
    assert!(v.log().contains("exceeds backup_wal_share"), "{}", v.log());
    // A restore of the latest state starts from the newest backup (no start: planning and base
    // data are what is checked here).
    let read = v.scratch().join("read.token");
    let out = v
        .cli(
            &admin,
            &[
                "vault",
                "token",
                "create",
                "--scope",
                "read",
                "--label",
                "dba",
                "--out",
                read.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("restored");
    let out = v
        .cli(
            &read,
            &["restore", "--cluster", "main", "--latest", "--target-dir", target.to_str().unwrap(), "--json"],
        )
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The newest listed before the restore, or one completed since (the load's own WAL can
    // trigger one more while the restore plans).
    let after = backups(&v, &admin);
    let at = |id: &str| after.iter().position(|b| b == id);
    let chosen = report["backup"].as_str().unwrap_or_default();
    assert!(
        at(chosen).is_some() && at(chosen) >= at(all.last().unwrap()),
        "{report}\nbefore {all:?}\nafter {after:?}"
    );
    assert_ne!(chosen, first[0]);
}

/// An LSN as status shows it (`16/B374D848`).
fn lsn(v: &serde_json::Value) -> Option<u64> {
    v.as_str()?.parse::<pgfmt::Lsn>().ok().map(|l| l.0)
}

#[test]
fn replay_budget_triggers_backups_under_load_and_restore_replays_within_it() {
    let pg = TempPg::start().unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql("CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)").unwrap();
    let mut v = TempVault::start(holdfast()).unwrap();
    // 1 s at the assumed replay speed (no drill ran): 32 MiB of WAL; no share trigger.
    v.protect(&pg, "backup_replay_budget_seconds = 1\nbackup_min_interval_seconds = 1\n").unwrap();
    let budget: u64 = 32 << 20;
    let admin = v.scratch().join("admin.token");
    let status = || -> serde_json::Value {
        let out = v.cli(&admin, &["status", "--json"]).unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["clusters"][0].clone()
    };
    let wait = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", v.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("the first backup", 60, &|| backups(&v, &admin).len() == 1);
    let first = backups(&v, &admin);
    let first_start = lsn(&status()["last_backup"]["start_lsn"]).unwrap();
    // The write load: a few × the budget in WAL, in committed steps. Paced by the vault: on a
    // fast idle box the whole load was written between two of the trigger's looks (every 2 s)
    // and one backup after it was enough; so after each step, once the vault holds its WAL and
    // the WAL since the newest backup is past the budget, the next step waits for that backup.
    for step in 0..8 {
        pg.psql(&format!(
            "INSERT INTO events SELECT g, repeat(md5(g::text), 8) FROM generate_series({}, {}) g",
            step * 40_000 + 1,
            (step + 1) * 40_000
        ))
        .unwrap();
        let end: u64 = pg.psql("SELECT pg_current_wal_lsn()").unwrap().parse::<pgfmt::Lsn>().unwrap().0;
        wait("the vault to hold the step's WAL", 60, &|| {
            lsn(&status()["durable_lsn"]).is_some_and(|d| d >= end)
        });
        let newest = lsn(&status()["last_backup"]["start_lsn"]).unwrap_or_default();
        if end.saturating_sub(newest) >= budget {
            wait("a backup past the replay budget", 60, &|| {
                lsn(&status()["last_backup"]["start_lsn"]).is_some_and(|s| s > newest)
            });
        }
    }
    // Once the load is over, the WAL after the newest backup is inside the budget again.
    wait("a backup within the replay budget", 120, &|| {
        let st = status();
        match (lsn(&st["durable_lsn"]), lsn(&st["last_backup"]["start_lsn"])) {
            (Some(d), Some(s)) => d.saturating_sub(s) < budget && s > first_start,
            _ => false,
        }
    });
    let st = status();
    let written = lsn(&st["durable_lsn"]).unwrap() - first_start;
    assert!(written > 4 * budget, "the load wrote {written} bytes of WAL: too little to show the budget");
    let all = backups(&v, &admin);
    assert_eq!(all[0], first[0]);
    assert!(all.len() >= 3, "backups along the load, not only at its end: {all:?}\n{}", v.log());
    let log = v.log();
    assert!(log.contains("would take longer than backup_replay_budget_seconds"), "{log}");
    assert!(log.contains("no replay measured yet"), "the assumed speed is said: {log}");
    // A restore of the latest state starts from the newest backup and plans at most the
    // budget's segments (+ the partial ones at either end), not the whole load's.
    let read = v.scratch().join("read.token");
    v.create_token("read", "dba", &read).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("restored");
    let out = v
        .cli(
            &read,
            &["restore", "--cluster", "main", "--latest", "--target-dir", target.to_str().unwrap(), "--json"],
        )
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup"], st["last_backup"]["id"], "{report}");
    let planned = report["wal_segments_planned"].as_u64().unwrap();
    assert!(planned <= budget / (16 << 20) + 2, "{planned} segments planned: {report}");
}
