//! `holdfast vault check`: verify every object, report damage and the backups it affects.

use std::time::Duration;

use anyhow::Result;
use vault::clock::{Clock, SystemClock};
use vault::config::Config;

/// Runs the check and returns the exit code (0 clean, 3 damage).
pub async fn run(cfg: &Config, identities: Option<Vec<age::x25519::Identity>>, json: bool) -> Result<u8> {
    let (store, mirror) = vault::open_store_parts(cfg).await?;
    // Check with keys if we can open the repository; a store whose keys are damaged is still
    // checked object by object, and the failure to open is reported.
    let (repo, open_error) = match vault::open_repository(cfg, identities).await {
        Ok((repo, _)) => (Some(repo), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut report = store::check::check(store.as_ref(), repo.as_ref()).await;
    if let Some(e) = &open_error {
        report
            .warnings
            .push(format!("the repository could not be opened, so only object hashes were checked: {e}"));
    }
    // Two copies (kind = "mirror"): the check above read the union; now each copy on its own.
    let copies = match &mirror {
        Some(m) => Some(m.verify_copies().await),
        None => None,
    };
    let clean = report.is_clean() && copies.as_ref().is_none_or(|c| c.is_clean());
    if let Some(repo) = &repo {
        let now = SystemClock.now();
        let body =
            serde_json::json!({"ok": clean, "damaged": (report.damaged.len() + report.missing.len()) as u64});
        let until = now.plus(Duration::from_secs(u64::from(cfg.retention_days) * 86_400));
        if let Err(e) = repo.append_record(vault::state::kinds::CHECK, body, now, until).await {
            tracing::warn!(error = %e, "could not record the check result in the catalog");
        }
    }
    // Broken WAL pieces break points in time, not files: say which.
    let broken: std::collections::BTreeSet<store::ObjectName> =
        report.damaged.iter().chain(&report.missing).filter_map(|p| p.name.parse().ok()).collect();
    let affected_wal = match &repo {
        Some(repo) => capture::archive::affected_wal(repo, &broken).await?,
        None => Vec::new(),
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["affected_wal"] = serde_json::to_value(&affected_wal)?;
        if let Some(c) = &copies {
            v["copies"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "checked {} objects ({} bytes) and {} backups{}",
            report.objects_checked,
            report.bytes_checked,
            report.backups_checked,
            if report.with_keys { "" } else { " (without keys: hashes only)" }
        );
        for p in &report.damaged {
            println!("DAMAGED {}: {}", p.name, p.why);
        }
        for p in &report.missing {
            println!("MISSING {}: {}", p.name, p.why);
        }
        for b in &report.affected_backups {
            println!("AFFECTED backup {} ({}): depends on {}", b.id, b.label, b.because.join(", "));
        }
        for a in &affected_wal {
            match (a.start, a.end) {
                (Some(start), Some(end)) => println!(
                    "AFFECTED WAL of cluster {} timeline {}: {start}..{end} (sent around {}) is in {}; \
                     instants after {start} cannot be reached through it{}",
                    a.cluster,
                    a.timeline,
                    a.server_time.map(|t| t.to_string()).unwrap_or_default(),
                    a.object,
                    if a.backups.is_empty() {
                        String::new()
                    } else {
                        format!("; backups {} cannot be made consistent", a.backups.join(", "))
                    }
                ),
                _ => println!(
                    "AFFECTED WAL: {} (its LSN range is unknown: it was not yet summarised)",
                    a.object
                ),
            }
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
        if let Some(c) = &copies {
            println!(
                "copies: {} object(s) in the local directory and/or the bucket; {} waiting for upload",
                c.objects,
                c.remote_pending.len()
            );
            for n in &c.local_missing {
                println!("MISSING locally (the bucket has it; reads fall back to it): {n}");
            }
            for n in &c.local_damaged {
                println!("DAMAGED locally (the bucket's copy is read instead): {n}");
            }
            for n in &c.remote_missing {
                println!("MISSING in the bucket (and not queued for upload): {n}");
            }
            for e in &c.errors {
                println!("ERROR {e}");
            }
        }
        println!(
            "{}",
            if clean {
                "store is consistent"
            } else {
                "DAMAGE FOUND: restore the named objects from a replica, or see docs/threat-model.md"
            }
        );
    }
    Ok(if clean { 0 } else { crate::EXIT_DAMAGE })
}
