//! `holdfast status` and `holdfast backup`: what the vault holds for each cluster.

use std::time::Duration;

use anyhow::{Context, Result};
use vault_api::client::VaultClient;
use vault_api::status::ClusterStatus;

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Prints one cluster in the human form.
fn print_cluster(c: &ClusterStatus) {
    let state =
        if c.connected { format!("streaming from {}", opt(&c.server)) } else { "NOT CONNECTED".into() };
    println!("cluster {}: {state}", c.name);
    if let Some(e) = &c.last_error {
        println!("  last error:    {e}");
    }
    println!("  system id:     {}   timeline: {}", opt(&c.system_id), opt(&c.timeline));
    println!(
        "  received LSN:  {}   durable LSN: {}   server LSN: {}",
        opt(&c.received_lsn),
        opt(&c.durable_lsn),
        opt(&c.server_lsn)
    );
    println!(
        "  lag:           {} / {}",
        c.lag_bytes.map(bytes).unwrap_or_else(|| "-".into()),
        c.lag_seconds.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
    );
    println!(
        "  detector:      decoded to {} ({} behind the durable WAL)",
        opt(&c.decoded_lsn),
        c.detector_lag_bytes.map(bytes).unwrap_or_else(|| "-".into())
    );
    match &c.last_backup {
        Some(b) => println!(
            "  last backup:   {} finished {} ({} read, {} new) start {} stop {}",
            b.id,
            b.finished,
            bytes(b.bytes),
            bytes(b.stored_bytes),
            b.start_lsn,
            b.stop_lsn
        ),
        None => println!("  last backup:   none complete"),
    }
    // Every interval: a WAL gap ends one, a backup after it opens the next.
    if c.windows.is_empty() {
        match &c.window {
            Some(w) => println!(
                "  restorable:    [{} ({}), {} ({})]",
                w.earliest_time, w.earliest_lsn, w.latest_time, w.latest_lsn
            ),
            None => println!("  restorable:    nothing yet (needs a complete base backup)"),
        }
    }
    for (n, i) in c.windows.iter().enumerate() {
        let w = &i.window;
        println!(
            "  {:<15}[{} ({}), {} ({})] timeline {}, from backup {}",
            if n == 0 { "restorable:" } else { "" },
            w.earliest_time,
            w.earliest_lsn,
            w.latest_time,
            w.latest_lsn,
            i.timeline,
            i.backups.join(", ")
        );
    }
    if c.windows.len() > 1 {
        println!(
            "                 (between these intervals the vault lacks WAL: those points cannot be restored)"
        );
    }
    if let Some(note) = &c.first_backup {
        println!("  first backup:  {note}");
    }
    if let Some((done, total)) = c.backup_progress {
        println!("  backup running: {} of ~{}", bytes(done), bytes(total));
    }
    if let Some(b) = &c.standby {
        println!("  standby:       {}", crate::standby_cmd::line(b).replace('\n', "\n                 "));
    }
    if let Some(d) = &c.drill {
        println!("  drills:        {}", crate::drill_cmd::drill_line(d));
    }
    for i in &c.incidents {
        println!(
            "  INCIDENT {} at {}: {}{}",
            i.kind,
            i.detected_at,
            i.message,
            i.lsn.map(|l| format!(" (LSN {l})")).unwrap_or_default()
        );
    }
}

/// Prints one copy of the store: what protects it, its retention floor, its upload queue.
fn print_store(s: &store::StoreStatus) {
    let lock = match s.lock_mode.as_str() {
        "object_lock_compliance" => {
            format!(
                "Object Lock COMPLIANCE{}",
                s.lock_default_rule.as_ref().map(|r| format!(" (default {r})")).unwrap_or_default()
            )
        }
        "none" => "NO LOCK (object_lock = false: the S3 credential can delete)".into(),
        other => format!("{other} (the vault's code keeps objects; root on this host can delete them)"),
    };
    println!("store {} at {}: {lock}", s.role, s.location);
    println!("  min retain-until: {} over {} object(s)", opt(&s.min_retain_until), s.objects);
    if let (Some(n), Some(b)) = (s.pending_objects, s.pending_bytes) {
        let state = match (&s.failing_since, s.reconciled) {
            (Some(t), _) => format!("UPLOADS FAILING since {t}"),
            (None, Some(false)) => "comparing the local and bucket listings".into(),
            _ => "uploading".into(),
        };
        println!(
            "  pending upload:   {n} object(s), {} — {state}; uploaded {} object(s), {} by this process",
            bytes(b),
            s.uploaded_objects,
            bytes(s.uploaded_bytes)
        );
        if let Some(e) = &s.last_error {
            println!("  last error:       {e}");
        }
        if s.fallback_reads > 0 {
            println!("  reads served from the bucket (local copy missing or damaged): {}", s.fallback_reads);
        }
        if s.lost_before_upload > 0 {
            println!("  LOST before upload (erased locally first): {} object(s)", s.lost_before_upload);
        }
    } else if let Some(e) = &s.last_error {
        println!("  last error:       {e}");
    }
}

/// `holdfast status`.
pub async fn show(client: &VaultClient, json: bool) -> Result<u8> {
    let status = client.status().await.context("asking the vault for status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    if status.clusters.is_empty() {
        println!("this vault protects no cluster yet: add a [[cluster]] table to vault.toml and restart it");
    }
    for c in &status.clusters {
        print_cluster(c);
    }
    for st in &status.stores {
        print_store(st);
    }
    for h in &status.webhooks {
        let failed = match (&h.last_failure_at, &h.last_error) {
            (Some(at), Some(e)) => format!("; LAST FAILURE {at}: {e}"),
            _ => String::new(),
        };
        println!("webhook {} ({}): {} delivered, {} failed{failed}", h.name, h.format, h.delivered, h.failed);
    }
    Ok(0)
}

/// `holdfast backup --cluster NAME`: starts the backup and shows progress until it completes.
pub async fn backup(client: &VaultClient, cluster: &str, json: bool) -> Result<u8> {
    let run = client.backup_cluster(cluster);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let summary = loop {
        tokio::select! {
            r = &mut run => break r.with_context(|| format!("base backup of cluster {cluster}"))?,
            _ = tick.tick() => {
                if let Ok(s) = client.status().await
                    && let Some((done, total)) = s.clusters.iter().find(|c| c.name == cluster).and_then(|c| c.backup_progress) {
                        let pct = if total > 0 { (done as f64 / total as f64 * 100.0).min(100.0) } else { 0.0 };
                        eprintln!("backup {cluster}: {} of ~{} ({pct:.0}%)", bytes(done), bytes(total));
                    }
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "base backup {} of {} complete: {} read, {} new in the vault, WAL {}..{} on timeline {} is stored",
            summary.id,
            cluster,
            bytes(summary.bytes),
            bytes(summary.stored_bytes),
            summary.start_lsn,
            summary.stop_lsn,
            summary.timeline
        );
    }
    Ok(0)
}

/// `holdfast incidents`.
/// `holdfast restore-points`: the restore points in the vault's WAL of one cluster; a name that
/// occurs more than once is marked (a restore by that name is refused).
pub async fn restore_points(client: &VaultClient, cluster: &str, json: bool) -> Result<u8> {
    let points = client
        .restore_points(cluster)
        .await
        .with_context(|| format!("reading the restore points of {cluster}"))?;
    if json {
        println!("{}", serde_json::to_string(&points)?);
        return Ok(0);
    }
    if points.is_empty() {
        println!("no restore points in the vault's WAL of {cluster}");
    }
    for p in &points {
        let twice = points.iter().filter(|q| q.name == p.name && q.lsn != p.lsn).count() > 0;
        println!(
            "{:?} at {} (ends {}) timeline {} created {}{}",
            p.name,
            p.lsn,
            p.end_lsn,
            p.timeline,
            p.time,
            if twice { "  [name occurs more than once: restore by --lsn]" } else { "" }
        );
    }
    Ok(0)
}

pub async fn incidents(client: &VaultClient, cluster: Option<&str>, json: bool) -> Result<u8> {
    let names: Vec<String> = match cluster {
        Some(c) => vec![c.to_string()],
        None => client
            .status()
            .await
            .context("asking the vault for its clusters")?
            .clusters
            .into_iter()
            .map(|c| c.name)
            .collect(),
    };
    let mut all = Vec::new();
    for name in &names {
        let list =
            client.incidents(name).await.with_context(|| format!("reading the incidents of {name}"))?;
        for (i, inc) in list.into_iter().enumerate() {
            all.push((i + 1, inc));
        }
    }
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(n, i)| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                v["number"] = (*n).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    if all.is_empty() {
        println!("no incidents");
    }
    for (n, i) in &all {
        println!("{} #{n} {} at {}: {}", i.cluster, i.kind, i.detected_at, i.message);
        for o in &i.objects {
            println!("      {o}");
        }
    }
    Ok(0)
}
