//! `holdfast drill`: run a restore drill in the vault now, or list the signed drill history.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vault_api::VaultClient;
use vault_api::drill::{DrillReport, DrillStatus};

/// Exit code of a drill that ran and failed.
pub const EXIT_DRILL_FAILED: u8 = 4;

/// One line for `status` and `drill --list`: last result, schedule, overdue.
pub fn drill_line(d: &DrillStatus) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &d.running {
        parts.push(format!("RUNNING {} ({})", r.id, r.phase));
    }
    match &d.last {
        Some(l) => parts.push(format!(
            "last {} {} at {}{}",
            l.id,
            if l.ok { "passed" } else { "FAILED" },
            l.started_at,
            l.rto_seconds.map(|r| format!(", RTO {r:.1} s")).unwrap_or_default()
        )),
        None => parts.push("never drilled".into()),
    }
    parts.push(format!("{} run, {} failed", d.total, d.failed));
    match d.every_seconds {
        Some(e) => parts.push(format!(
            "every {}{}",
            human(e),
            d.next_due.map(|n| format!(", next {n}")).unwrap_or_default()
        )),
        None => parts.push("on demand only".into()),
    }
    if d.overdue {
        parts.push(format!(
            "OVERDUE: no passing drill within {}",
            d.overdue_after_seconds.map(human).unwrap_or_default()
        ));
    }
    parts.join("; ")
}

fn human(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn print_report(r: &DrillReport, signature: &str) {
    println!("drill {} of {}: {}", r.id, r.cluster, r.verdict);
    println!(
        "  trigger {}; started {}, finished {}; signature {signature}",
        r.trigger, r.started_at, r.finished_at
    );
    println!(
        "  target {}; backup {}; recovered to {}{}",
        r.target,
        r.backup.as_deref().unwrap_or("-"),
        r.recovered_lsn.as_deref().unwrap_or("-"),
        r.last_commit.as_deref().map(|c| format!(", last commit {c}")).unwrap_or_default()
    );
    if let Some(rto) = r.rto_seconds {
        println!(
            "  RTO {rto:.1} s (base data {:.1} s for {}, replay {:.1} s){}",
            r.base_seconds.unwrap_or(0.0),
            crate::status::bytes(r.base_bytes.unwrap_or(0)),
            r.replay_seconds.unwrap_or(0.0),
            r.freshness_seconds.map(|f| format!("; freshness {f:.0} s")).unwrap_or_default()
        );
    }
    for c in &r.checks {
        println!(
            "  [{}] {}: {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail.lines().next().unwrap_or("")
        );
    }
}

/// `holdfast drill --cluster NAME`: starts a drill in the vault and waits for its report.
pub async fn run(client: &VaultClient, cluster: &str, json: bool) -> Result<u8> {
    let started = client.start_drill(cluster).await.context("starting the drill")?;
    let tty = std::io::stderr().is_terminal();
    eprintln!("drill {} of {cluster} started in the vault", started.id);
    let mut last_phase = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let list = client.drills().await.context("asking the vault for the drill's progress")?;
        if let Some(e) = list.drills.iter().rev().find(|e| e.signed.report.contains(&started.id)) {
            let report = e.signed.verify(&list.signing_key).map_err(|err| {
                anyhow::anyhow!("the vault's report of drill {} does not verify: {err}", started.id)
            })?;
            if report.id != started.id {
                continue;
            }
            if tty {
                eprintln!();
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "record": e.record, "signature_valid": true, "signing_key": list.signing_key, "report": report,
                    }))?
                );
            } else {
                print_report(&report, "valid");
            }
            return Ok(if report.ok { 0 } else { EXIT_DRILL_FAILED });
        }
        let phase = list
            .clusters
            .iter()
            .find(|c| c.cluster == cluster)
            .and_then(|c| c.running.as_ref())
            .filter(|r| r.id == started.id)
            .map(|r| r.phase.clone());
        match phase {
            Some(p) if p != last_phase => {
                if tty {
                    eprint!("\r{p:<60}");
                } else {
                    eprintln!("{p}");
                }
                last_phase = p;
            }
            Some(_) => {}
            None => {
                // Finished between the two reads: the next round finds the report.
                let again = client.drills().await?;
                if !again.drills.iter().any(|e| e.signed.report.contains(&started.id))
                    && !again.clusters.iter().any(|c| c.running.as_ref().is_some_and(|r| r.id == started.id))
                {
                    bail!(
                        "drill {} is neither running nor reported: was the vault restarted? see its log",
                        started.id
                    );
                }
            }
        }
    }
}

/// `holdfast drill --list`.
pub async fn list(client: &VaultClient, cluster: Option<&str>, json: bool) -> Result<u8> {
    let list = client.drills().await.context("listing drills")?;
    let mut rows = Vec::new();
    for e in &list.drills {
        let (report, valid) = match e.signed.verify(&list.signing_key) {
            Ok(r) => (serde_json::to_value(&r)?, None),
            Err(err) => (serde_json::from_str(&e.signed.report).unwrap_or_default(), Some(err.to_string())),
        };
        if cluster.is_some_and(|c| report["cluster"] != c) {
            continue;
        }
        rows.push((e, report, valid));
    }
    let clusters: Vec<&DrillStatus> =
        list.clusters.iter().filter(|c| cluster.is_none_or(|n| c.cluster == n)).collect();
    if json {
        let drills: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, r, err)| {
                serde_json::json!({
                    "record": e.record, "written_at": e.written_at, "signature_valid": err.is_none(),
                    "signature_error": err, "signature": e.signed.signature, "report": r,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "signing_key": list.signing_key, "clusters": clusters, "drills": drills,
            }))?
        );
    } else {
        println!("drill-report signing key: {}", list.signing_key);
        for c in &clusters {
            println!("cluster {}: {}", c.cluster, drill_line(c));
        }
        println!(
            "{:<16} {:<10} {:<20} {:<7} {:>8} {:>7} {:<9} trigger",
            "id", "cluster", "started", "result", "RTO s", "checks", "signature"
        );
        for (e, r, err) in &rows {
            let checks = r["checks"]
                .as_array()
                .map(|a| format!("{}/{}", a.iter().filter(|c| c["ok"] == true).count(), a.len()));
            println!(
                "{:<16} {:<10} {:<20} {:<7} {:>8} {:>7} {:<9} {}",
                r["id"].as_str().unwrap_or("?"),
                r["cluster"].as_str().unwrap_or("?"),
                r["started_at"].as_str().unwrap_or("?"),
                if r["ok"] == true { "passed" } else { "FAILED" },
                r["rto_seconds"].as_f64().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
                checks.unwrap_or_default(),
                if err.is_none() { "valid" } else { "INVALID" },
                r["trigger"].as_str().unwrap_or("?"),
            );
            if r["ok"] != true {
                println!("    {}", r["verdict"].as_str().unwrap_or(""));
            }
            let _ = e;
        }
    }
    let bad = rows.iter().any(|(_, _, err)| err.is_some());
    if bad {
        eprintln!("warning: some drill reports do not verify against the vault's key");
    }
    Ok(0)
}
