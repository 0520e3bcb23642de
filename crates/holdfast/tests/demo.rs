//! The demo is the product's end-to-end test: a real primary and standby, a vault process
//! pulling their WAL (and keeping a warm standby), a gate process in front, a workload through
//! the gate, the insider's attacks, the incident, the warm standby stopped before it and
//! promoted, a restore to just before it and a merchant-by-merchant check of both; and, with
//! `--repair`, one merchant's orders deleted and repaired in the live database while the shop
//! trades. Its JSON verdict is asserted here, at a small size; so is that it leaves nothing
//! behind, after a normal end, after Ctrl-C, and after `--linger` (the consoles kept up until
//! Ctrl-C).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// The temporary directories the demo names in its output (clusters, vault).
fn started_dirs(stdout: &str) -> Vec<String> {
    let mut dirs: Vec<String> = stdout
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter_map(|w| {
            let start = w.find("/tmp/holdfast-pg-").or_else(|| w.find("/tmp/holdfast-vault-"))?;
            let w = &w[start..];
            // /tmp/holdfast-pg-XXXXXX
            let end = w[5..].find('/').map_or(w.len(), |i| i + 5);
            Some(w[..end].to_string())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn assert_nothing_left(stdout: &str, work: &Path) {
    let dirs = started_dirs(stdout);
    assert!(dirs.len() >= 3, "the demo names the primary, the standby and the vault: {dirs:?}\n{stdout}");
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    for d in dirs.iter().map(String::as_str).chain([work.to_str().unwrap()]) {
        loop {
            let left = processes_mentioning(d);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "still running after the demo ended: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for d in &dirs {
        assert!(!Path::new(d).exists(), "{d} was left behind");
    }
}

#[test]
fn the_demo_replays_the_incident_and_every_committed_row_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.html");
    let work = tmp.path().join("work");
    let out = Command::new(holdfast())
        .args(["demo", "--merchants", "20", "--business-seconds", "3", "--json", "--report"])
        .arg(&report)
        .arg("--dir")
        .arg(&work)
        .output()
        .expect("holdfast demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", out.status);
    let last = stdout.lines().last().expect("output");
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));

    assert_eq!(v["ok"], true, "{v:#}");
    // The attack destroyed every merchant's data (measured: production served none of their
    // rows after the DROP) …
    assert_eq!(v["merchants"], 20);
    assert_eq!(v["merchants_affected"], 20, "{v:#}");
    // … and every row of every table committed before it is back, merchant by merchant: the
    // initial load (7 tables: 20 merchants × (1 + 40 + 20 + 100·3 + 10) rows) plus 3 rows per
    // committed order.
    let committed = v["transactions_committed"].as_i64().unwrap();
    assert!(committed > 20, "the workload ran: {v:#}");
    let expected = v["rows_expected"].as_i64().unwrap();
    let in_doubt = v["in_doubt_found_committed"].as_i64().unwrap();
    assert_eq!(expected, 20 * (1 + 40 + 20 + 300 + 10) + 3 * (committed + in_doubt), "{v:#}");
    assert_eq!(v["rows_destroyed"].as_i64().unwrap(), 20 * (1 + 40 + 20 + 300 + 10) + 3 * committed, "{v:#}");
    assert_eq!(v["merchants_verified"], 20, "{v:#}");
    assert_eq!(v["rows_lost"], 0, "{v:#}");
    assert_eq!(v["values_wrong"], 0, "{v:#}");
    assert_eq!(v["rows_unexplained"], 0, "{v:#}");
    assert_eq!(v["acknowledged_transactions_missing"], 0, "{v:#}");
    // RPO is measured from the last commit in the restored database to the attack: the
    // workload committed up to the DROP, so it is well under the seconds the insider took.
    let rpo = v["rpo_seconds"].as_f64().expect("RPO measured");
    assert!((0.0..5.0).contains(&rpo), "{v:#}");
    assert!(v["last_restored_commit"].as_str().is_some(), "{v:#}");
    // RTO ends when the restored server answers; verification is timed apart.
    let (rto, verify) = (v["rto_seconds"].as_f64().unwrap(), v["verify_seconds"].as_f64().unwrap());
    assert!(rto > 0.0 && verify > 0.0, "{v:#}");
    assert!(v["attack_to_verified_seconds"].as_f64().unwrap() > rto + verify, "{v:#}");
    assert_eq!(v["mode"], "restore");
    assert!(v["repair"].is_null(), "{v:#}");
    // The vault's warm standby stopped just before the DROP (read-only, at once) and, promoted,
    // holds every row the workload saw committed: the same comparison as the cold restore's.
    let w = &v["warm_standby"];
    assert_eq!(w["paused_before_incident"], v["incident"]["number"], "{w:#}");
    assert_eq!(w["apply_delay_seconds"], 5, "{w:#}");
    assert_eq!(w["merchants_verified"], 20, "{w:#}");
    assert_eq!(w["rows_expected"], v["rows_expected"], "{w:#}");
    for k in ["rows_lost", "values_wrong", "rows_unexplained", "acknowledged_transactions_missing"] {
        assert_eq!(w[k], 0, "{k}: {w:#}");
    }
    let (read_only, promote, promoted) = (
        w["read_only_after_attack_seconds"].as_f64().unwrap(),
        w["promote_seconds"].as_f64().unwrap(),
        w["attack_to_promoted_seconds"].as_f64().unwrap(),
    );
    // Each clock measures what it names: promoted after the DROP includes the promote, and
    // came after the standby was seen read-only.
    assert!(read_only > 0.0 && promote > 0.0 && promoted > promote && promoted > read_only, "{w:#}");
    // The incident was found in the WAL, named, and alerted within seconds.
    assert_eq!(v["incident_found"], true);
    let i = &v["incident"];
    assert_eq!(i["kind"], "database_dropped", "{i:#}");
    assert_eq!(i["objects"], serde_json::json!(["shop"]), "{i:#}");
    assert!(i["xid"].as_u64().is_some() && i["lsn"].as_str().is_some(), "{i:#}");
    assert!(i["alerted_after_seconds"].as_f64().unwrap() < 5.0, "{i:#}");
    // The gate held both statements; neither ran; the audit trail names him and verifies.
    assert_eq!(v["gate_held"], 2, "{v:#}");
    assert_eq!(v["gate_executed"], 0, "{v:#}");
    for g in v["gate"].as_array().unwrap() {
        assert!(g["client_saw"].as_str().unwrap().contains("rejected by alice"), "{g:#}");
    }
    assert_eq!(v["audit_verified"], true);
    assert!(v["audit_records_for_insider"].as_u64().unwrap() >= 4, "{v:#}");
    // Every attack on the vault went to a route that exists and was refused by the vault
    // itself (its error body, the status of the guard named), and there were attacks with the
    // credentials found on the database hosts.
    let attacks = v["attacks"].as_array().unwrap();
    assert!(attacks.len() >= 12, "{v:#}");
    assert_eq!(v["vault_attacks_refused"], v["vault_attacks"]);
    assert_eq!(v["vault_intact"], true, "{v:#}");
    assert!(v["vault_objects_checked"].as_u64().unwrap() > 10, "{v:#}");
    for a in attacks {
        assert_eq!(
            (&a["refused"], &a["outcome"]),
            (&serde_json::json!(true), &serde_json::json!("refused")),
            "{a:#}"
        );
        let answer = a["answer"].as_str().unwrap();
        assert!(
            ["refused, 400:", "refused, 401:", "refused, 403:"].iter().any(|p| answer.starts_with(p)),
            "{a:#}"
        );
        assert!(
            !a["request"].as_str().unwrap().starts_with("DELETE"),
            "the vault has no DELETE route for data: {a:#}"
        );
    }
    assert!(
        attacks.iter().any(|a| a["credential"].as_str().unwrap().contains("postgresql.auto.conf")),
        "the standby's replication password was tried: {attacks:#?}"
    );
    // The overwrite with the append token is stopped by the content address, the early
    // deletion with one keyholder's signature by the quorum.
    assert!(
        attacks.iter().any(|a| a["request"].as_str().unwrap().starts_with("PUT /v1/objects/pack/")
            && a["answer"].as_str().unwrap().starts_with("refused, 400:")),
        "{attacks:#?}"
    );
    assert!(
        attacks.iter().any(|a| a["request"].as_str().unwrap().ends_with("/execute")
            && a["answer"].as_str().unwrap().contains("keyholder")),
        "{attacks:#?}"
    );

    // The HTML report: self-contained, naming the insider and the incident.
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for needle in
        ["he.ops", "database_dropped", "approval_requested", "Merchant by merchant", "warm standby: the DROP"]
    {
        assert!(html.contains(needle), "the report lacks {needle}");
    }
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("src="));
    assert!(html.matches("<td class=ok>yes</td>").count() >= 20, "every merchant row says ok");

    assert_nothing_left(&stdout, &work);

    // A second run, in the same --dir, works from scratch: `--repair`, where the insider deletes
    // one merchant's orders (and their items) while the shop trades, and `holdfast repair` puts
    // them back in the live database without rewinding anything else.
    // With `--linger` it then keeps the gate and the vault up, prints where their consoles are
    // (each answers with its sign-in page), and ends with its verdict on Ctrl-C.
    let mut child = Command::new(holdfast())
        .args([
            "demo",
            "--repair",
            "--merchants",
            "5",
            "--business-seconds",
            "2",
            "--json",
            "--linger",
            "--report",
        ])
        .arg(&report)
        .arg("--dir")
        .arg(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if line.contains("its certificate:") && stdout.contains("backup console (vault):") {
            break;
        }
    }
    let console = |what: &str| -> (String, String) {
        let at = |needle: &str| {
            let l = stdout.lines().skip_while(|l| !l.contains(what)).find(|l| l.contains(needle));
            l.unwrap_or_else(|| panic!("no {needle:?} after {what:?}:\n{stdout}")).to_string()
        };
        let url = at("/console/").split_whitespace().last().unwrap().to_string();
        let cert = at("its certificate:").split_whitespace().last().unwrap().to_string();
        (url, cert)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    for what in ["approvals console (gate):", "backup console (vault):"] {
        let (url, cert) = console(what);
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
        let page =
            rt.block_on(async { client.get(format!("{url}login")).send().await?.text().await }).unwrap();
        assert!(page.contains("Sign in"), "{what} {url}: {page}");
    }
    assert!(child.try_wait().unwrap().is_none(), "lingering");
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    assert!(status.success(), "second run failed:\n{stdout}");
    let json =
        stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no verdict:\n{stdout}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["rows_lost"].as_i64(), v["merchants_verified"].as_u64()),
        (Some(true), Some(0), Some(5)),
        "{v:#}"
    );
    assert_eq!(v["mode"], "repair");
    assert!(v["warm_standby"].is_null(), "{v:#}");
    let i = &v["incident"];
    assert_eq!(i["kind"], "mass_delete", "{i:#}");
    let objects = i["objects"].as_array().unwrap();
    for t in ["shop.public.orders", "shop.public.order_items"] {
        assert!(objects.iter().any(|o| o == t), "{t} not in {i:#}");
    }
    // One merchant lost data — the insider's — and every row of it is back, while every order
    // placed since (its own included) is still there and no other merchant was touched: the
    // live shop equals the initial load plus everything the workload saw committed.
    assert_eq!(v["merchants_affected"], 1, "{v:#}");
    let r = &v["repair"];
    assert_eq!(r["merchant"], 3, "{r:#}");
    assert_eq!(r["incident"], i["number"], "{r:#}");
    let deleted = r["rows_deleted"].as_u64().unwrap();
    // 100 orders of the initial load and their items, at least.
    assert!(deleted >= 200, "{r:#}");
    assert!(r["rows_reinserted"].as_u64().unwrap() >= deleted, "{r:#}");
    assert_eq!(
        (&r["rows_reverted"], &r["conflicts"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{r:#}"
    );
    assert_eq!(r["victim_whole"], true, "{r:#}");
    assert_eq!(
        (&r["other_merchants"], &r["other_merchants_whole"]),
        (&serde_json::json!(4), &serde_json::json!(4))
    );
    assert!(r["victim_orders_since_delete"].as_u64().unwrap() > 0, "the shop traded on: {r:#}");
    assert_eq!(r["victim_orders_since_delete_kept"], r["victim_orders_since_delete"], "{r:#}");
    assert_eq!(v["rows_unexplained"], 0, "{v:#}");
    assert_eq!(v["values_wrong"], 0, "{v:#}");
    assert_eq!(v["acknowledged_transactions_missing"], 0, "{v:#}");
    assert!(r["verdict"].as_str().unwrap().starts_with("OK"), "{r:#}");
    assert!(stdout.contains("holdfast repair --cluster shop --incident"), "{stdout}");
    assert_nothing_left(&stdout, &work);
}

#[test]
fn ctrl_c_stops_everything_the_demo_started() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let mut child = Command::new(holdfast())
        .args(["demo", "--merchants", "10", "--business-seconds", "30", "--report"])
        .arg(tmp.path().join("report.html"))
        .arg("--dir")
        .arg(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Interrupt while the workload runs through the gate: everything is up by then.
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if line.contains("orders committed through the gate") {
            break;
        }
    }
    assert!(stdout.contains("orders committed"), "the demo did not get to its workload:\n{stdout}");
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop within 60 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in lines.map_while(Result::ok) {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{stdout}");
    assert_nothing_left(&stdout, &work);
}

#[test]
fn the_demo_refuses_a_directory_it_did_not_make_and_an_unwritable_report() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let out = Command::new(holdfast())
        .args(["demo", "--report"])
        .arg(tmp.path().join("r.html"))
        .arg("--dir")
        .arg(&foreign)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty and was not made by holdfast demo"), "{err}");
    assert_eq!(std::fs::read_to_string(foreign.join("precious.txt")).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1, "nothing was added");

    let out =
        Command::new(holdfast()).args(["demo", "--report", "/nonexistent-dir/report.html"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write the report to /nonexistent-dir/report.html"), "{err}");
    // Nothing was started: the demo names no directory.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("/tmp/holdfast-"), "nothing should have started");
}
