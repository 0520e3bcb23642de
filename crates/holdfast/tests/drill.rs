//! Restore drills run by the vault against a real PostgreSQL: a scheduled drill that passes,
//! an on-demand one that fails (an assertion that cannot hold), an overdue cluster — each
//! visible in `holdfast drill --list`, `holdfast status` and the alerts; reports signed, and
//! no token can write one.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use testkit::pg::{TempPg, TempPgOptions};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

struct Setup {
    pg: TempPg,
    v: TempVault,
    read_token: PathBuf,
    alerts: PathBuf,
    scratch: tempfile::TempDir,
}

impl Setup {
    fn cli(&self, token: &Path, args: &[&str]) -> Output {
        self.v.cli(token, args).unwrap()
    }

    fn admin(&self) -> PathBuf {
        self.v.scratch().join("admin.token")
    }

    fn json(&self, token: &Path, args: &[&str]) -> serde_json::Value {
        let out = self.cli(token, args);
        assert!(out.status.success(), "{args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.v.log());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn alerts(&self) -> String {
        std::fs::read_to_string(&self.alerts).unwrap_or_default()
    }

    /// Rewrites the `[[drill]]` table (the vault is restarted to read it).
    fn set_drill(&mut self, drill: &str) {
        let path = self.v.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let base = text.split("\n[[drill]]").next().unwrap().to_string();
        std::fs::write(&path, format!("{base}\n{drill}")).unwrap();
        self.v.kill();
        self.v.restart().unwrap();
    }
}

/// A vault streaming from a fresh cluster with 100 accounts, alerts appended to a file, and
/// `drill` as its `[[drill]]` table.
fn setup(drill: &str) -> Setup {
    let pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 100) g").unwrap();
    let mut v = TempVault::start(holdfast()).unwrap();
    let alerts = v.scratch().join("alerts.jsonl");
    // Scratch copies go where the `postgres` user can reach them.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    v.prepend_config(&format!(
        "alert_command = [\"/bin/sh\", \"-c\", \"printf '%s\\\\n' \\\"$(cat)\\\" >> {0}\"]",
        alerts.display()
    ))
    .unwrap();
    v.protect(&pg, &format!("\n{}", drill.replace("SCRATCH", &scratch.path().display().to_string())))
        .unwrap();
    let read_token = v.scratch().join("read.token");
    let s = Setup { pg, v, read_token: read_token.clone(), alerts, scratch };
    let out = s.cli(
        &s.admin(),
        &[
            "vault",
            "token",
            "create",
            "--scope",
            "read",
            "--label",
            "auditor",
            "--out",
            read_token.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    s
}

fn backup(s: &Setup) {
    let out = s.cli(&s.admin(), &["backup", "--cluster", "main", "--json"]);
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<serde_json::Value>,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

const DRILL: &str = r#"[[drill]]
cluster = "main"
every = "1h"
scratch_dir = "SCRATCH"

[[drill.check]]
name = "accounts are there"
sql = "SELECT count(*) >= 100 FROM accounts"
"#;

#[test]
fn a_scheduled_drill_passes_a_failing_one_is_reported_and_both_are_signed() {
    let mut s = setup(DRILL);
    backup(&s);
    s.pg.psql("INSERT INTO accounts SELECT g, 7 FROM generate_series(101, 110) g").unwrap();

    // The schedule starts the first drill once there is something to restore.
    let read = s.read_token.clone();
    let list = wait_for("the scheduled drill's report", Duration::from_secs(240), || {
        let l = s.json(&read, &["drill", "--list", "--json"]);
        (l["drills"].as_array().unwrap().len() == 1).then_some(l)
    });
    let d = &list["drills"][0];
    assert_eq!(d["signature_valid"], true, "{d}");
    let r = &d["report"];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["trigger"], "schedule");
    assert_eq!(r["target"], "latest");
    let checks: Vec<(&str, bool)> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
        .collect();
    for name in ["restore", "target reached", "pg_amcheck", "databases answer", "accounts are there"] {
        assert!(checks.contains(&(name, true)), "check {name} missing or failed: {r}");
    }
    assert!(r["rto_seconds"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["freshness_seconds"].as_f64().is_some(), "{r}");
    assert!(r["backup"].as_str().is_some(), "{r}");
    // Torn down: nothing left in the scratch directory, no server running.
    let left: Vec<_> = std::fs::read_dir(s.scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "scratch copies left behind: {left:?}");

    // Status shows it too.
    let st = s.json(&read, &["status", "--json"]);
    let drill = &st["clusters"][0]["drill"];
    assert_eq!(drill["last"]["ok"], true, "{st}");
    assert_eq!(drill["total"], 1);
    assert_eq!(drill["overdue"], false);
    assert_eq!(drill["every_seconds"], 3600);

    // Only an admin starts a drill; no token can write a report.
    let out = s.cli(&read, &["drill", "--cluster", "main"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token with scope admin"), "{out:?}");
    let append = s.v.scratch().join("append.token");
    let out = s.cli(
        &s.admin(),
        &[
            "vault",
            "token",
            "create",
            "--scope",
            "append",
            "--label",
            "gate",
            "--out",
            append.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let client = vault_api::VaultClient::new(
        s.v.url(),
        &std::fs::read(s.v.ca_path()).unwrap(),
        Some(std::fs::read_to_string(&append).unwrap().trim().to_string()),
    )
    .unwrap();
    let forged =
        serde_json::json!({"report": r.to_string(), "signature": "00", "public_key": list["signing_key"]});
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(client.append_record("drill.report", forged)).unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");

    // An assertion that cannot hold: the drill runs, fails, says which check and why, alerts.
    s.set_drill(&DRILL.replace("count(*) >= 100", "count(*) = 12345"));
    let out = s.cli(&s.admin(), &["drill", "--cluster", "main", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let failed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fr = &failed["report"];
    assert_eq!(fr["ok"], false);
    assert!(fr["trigger"].as_str().unwrap().starts_with("on demand"), "{fr}");
    let bad: Vec<&serde_json::Value> =
        fr["checks"].as_array().unwrap().iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{fr}");
    assert_eq!(bad[0]["name"], "accounts are there");
    assert!(bad[0]["detail"].as_str().unwrap().contains("returned \"f\""), "{fr}");
    assert!(fr["verdict"].as_str().unwrap().starts_with("FAILED"), "{fr}");
    // The rows written after the backup were replayed into the drilled copy (10 more).
    assert!(
        fr["checks"].as_array().unwrap().iter().any(|c| c["name"] == "target reached" && c["ok"] == true)
    );
    wait_for("the drill_failed alert", Duration::from_secs(20), || {
        s.alerts().contains("\"drill_failed\"").then_some(serde_json::Value::Null)
    });

    // Both in the history (the first survived the restart: the catalog is the record), signed.
    let l = s.json(&read, &["drill", "--list", "--json"]);
    let drills = l["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 2, "{l}");
    assert!(drills.iter().all(|d| d["signature_valid"] == true));
    assert_eq!(drills[0]["report"]["ok"], true);
    assert_eq!(drills[1]["report"]["ok"], false);
    let st = s.json(&read, &["status", "--json"]);
    let drill = &st["clusters"][0]["drill"];
    assert_eq!((drill["total"].as_u64(), drill["failed"].as_u64()), (Some(2), Some(1)), "{st}");
    assert_eq!(drill["last"]["ok"], false);
    // The human forms name the failure.
    let out = s.cli(&read, &["drill", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAILED") && text.contains("passed") && text.contains("valid"), "{text}");
    let out = s.cli(&read, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_cluster_without_a_passing_drill_becomes_overdue_and_alerts() {
    let s = setup(
        "[[drill]]\ncluster = \"main\"\noverdue_after = \"8s\"\npoint = \"random\"\nscratch_dir = \"SCRATCH\"\n",
    );
    // Nothing to restore yet: not overdue (that is capture's problem, shown by status).
    let st = s.json(&s.read_token, &["status", "--json"]);
    assert_eq!(st["clusters"][0]["drill"]["overdue"], false, "{st}");
    backup(&s);
    let read = s.read_token.clone();
    let st = wait_for("the cluster to be overdue", Duration::from_secs(30), || {
        let st = s.json(&read, &["status", "--json"]);
        (st["clusters"][0]["drill"]["overdue"] == true).then_some(st)
    });
    assert_eq!(st["clusters"][0]["drill"]["every_seconds"], serde_json::Value::Null);
    wait_for("the drill_overdue alert", Duration::from_secs(20), || {
        s.alerts().contains("\"drill_overdue\"").then_some(serde_json::Value::Null)
    });
    let out = s.cli(&read, &["drill", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OVERDUE"), "{text}");
    let out = s.cli(&read, &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OVERDUE"));
    // The Prometheus gauge says so as well (/metrics needs a read token).
    let token = std::fs::read_to_string(&s.read_token).unwrap().trim().to_string();
    let client =
        vault_api::VaultClient::new(s.v.url(), &std::fs::read(s.v.ca_path()).unwrap(), Some(token)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(client.metrics()).unwrap();
    assert!(m.contains("holdfast_drill_overdue{cluster=\"main\"} 1"), "{m}");
    // A passing drill clears it. This cluster drills a random point of the window: WAL after
    // the backup gives it a span to draw from.
    for _ in 0..3 {
        s.pg.psql("INSERT INTO accounts SELECT max(id) + 1, 1 FROM accounts").unwrap();
        s.pg.psql("SELECT pg_switch_wal()").unwrap();
    }
    let flush: pgfmt::Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    wait_for("the vault to hold the new WAL", Duration::from_secs(30), || {
        let st = s.json(&read, &["status", "--json"]);
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|l| l.parse::<pgfmt::Lsn>().ok());
        durable.is_some_and(|d| d >= flush).then_some(st)
    });
    let out = s.cli(&s.admin(), &["drill", "--cluster", "main", "--json"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.v.log());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let target = r["report"]["target"].as_str().unwrap();
    let lsn: pgfmt::Lsn = target.strip_prefix("lsn ").expect(target).parse().unwrap();
    let recovered: pgfmt::Lsn = r["report"]["recovered_lsn"].as_str().unwrap().parse().unwrap();
    assert!(recovered >= lsn && lsn <= flush, "{r}");
    let st = s.json(&read, &["status", "--json"]);
    assert_eq!(st["clusters"][0]["drill"]["overdue"], false, "{st}");
    assert_eq!(st["clusters"][0]["drill"]["last"]["ok"], true);
}
