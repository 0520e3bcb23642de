//! `holdfast demo --repair` (issue 20): instead of destroying everything, the insider, as the
//! superuser on the primary, bulk-deletes one merchant's orders and their items in one
//! transaction while the shop keeps taking orders; the vault raises `mass_delete`, and the
//! operator runs `holdfast repair --incident N --tenant merchant_id=M`, which puts that
//! merchant's rows back without rewinding anything else — the shop still trading meanwhile.
//! Then the workload stops and the *live* shop gets the same merchant-by-merchant comparison
//! a restore gets: the initial load plus every order the workload saw committed, before the
//! DELETE and since.
//!
//! The clock: *repair* runs from starting `holdfast repair` to its exit with the repair
//! committed (the two scratch restores, the three-way comparison and the one verified
//! transaction); reading and comparing the live shop is timed apart.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::report::RepairFigures;
use super::shop::{self, Snapshot};
use super::{Business, Recovery, Stage, Story, Strike, blocking, credentials_on_hosts, text};

/// The merchant the insider picks: one in the middle.
pub(super) fn victim(merchants: i64) -> i64 {
    (merchants + 1) / 2
}

/// The insider's DELETE: one statement, one transaction, the items with their orders (they
/// reference the orders, so they must go first or the DELETE fails).
fn delete_sql(m: i64) -> String {
    format!(
        "WITH items AS (DELETE FROM order_items WHERE merchant_id = {m}) DELETE FROM orders WHERE merchant_id = {m}"
    )
}

/// Act 4 under `--repair`: the bulk DELETE as the superuser on the primary (not through the
/// gate), with the workload still placing orders for every merchant, this one included.
pub(super) async fn act_insider_deletes_one_merchant(
    s: &mut Story,
    st: &Stage,
    b: &mut Business,
    merchants: i64,
) -> Result<Strike> {
    let m = victim(merchants);
    s.step(&format!(
        "The insider, as the superuser on the primary, deletes merchant {m}'s orders while the shop keeps trading"
    ));
    let found = credentials_on_hosts(&[st.primary.data_dir(), st.standby.data_dir()]);
    let sql = delete_sql(m);
    let sent = Instant::now();
    // An order of this merchant committed between the two DELETEs' snapshots would be a
    // foreign-key error: the one statement avoids that; a retry covers the rest.
    let mut tries = 0;
    loop {
        tries += 1;
        match blocking(|| st.primary.psql_db("shop", &sql)) {
            Ok(_) => break,
            Err(e) if tries < 5 => s.say(format!("his DELETE failed ({e}); he runs it again")),
            Err(e) => return Err(e.context("the insider's DELETE")),
        }
    }
    let (at, wall) = (Instant::now(), std::time::SystemTime::now());
    let seconds = at.duration_since(sent).as_secs_f64();
    let t = s.t();
    s.event("insider", format!("psql as postgres on the primary: {sql};   ({seconds:.2} s)"));
    // The merchant's own till keeps selling too (with hundreds of merchants the shared
    // sessions would seldom pick this one): orders written after the DELETE that a restore
    // would rewind and the repair must keep.
    b.workers.spawn(shop::worker(b.cfg.clone(), merchants, Some(m), 0x5eed ^ m as u64, b.ledger.clone()));
    s.event("shop", format!("merchant {m}'s own till goes on selling through the gate"));
    // What production still serves: the orders acknowledged so far against what it holds (the
    // workload goes on, so rows written since count as neither lost nor destroyed here).
    let placed = b.ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked: Vec<shop::Placed> = placed.iter().filter(|p| p.acknowledged).cloned().collect();
    let left: Snapshot = blocking(|| shop::snapshot(&|q| st.primary.psql_db("shop", q)))?;
    let destroyed = shop::diff(&shop::expected(&st.base, &acked, &|_| false), &left);
    s.say(format!(
        "production no longer serves {} rows the shop had acknowledged: {} merchant(s) lost data; the shop keeps taking orders ({} so far)",
        destroyed.rows_lost,
        destroyed.merchants.iter().filter(|m| m.rows_lost > 0).count(),
        b.ledger.committed.load(Ordering::Relaxed)
    ));
    Ok(Strike { at, t, wall, drop_seconds: seconds, found, placed, destroyed, standby_watch: None })
}

/// Act 7 under `--repair`: `holdfast repair --incident N --tenant merchant_id=M` against the
/// live primary while the workload runs; then the workload stops and the live shop is compared
/// with everything committed.
pub(super) async fn act_repair(
    s: &mut Story,
    st: &Stage,
    b: &mut Business,
    strike: &Strike,
    number: usize,
    merchants: i64,
) -> Result<(Recovery, RepairFigures)> {
    let m = victim(merchants);
    s.step(&format!("The operator repairs merchant {m} in the live database, while the shop keeps trading"));
    let password = st.primary.superuser_password().to_string();
    // The live database, directly as its superuser: through this demo's gate the repair's
    // temporary tables (DDL) would wait for a second person's approval.
    let dsn = format!(
        "host={} port={} dbname=shop user=postgres password={password}",
        st.primary.socket_dir().display(),
        st.primary.port()
    );
    let tenant = format!("merchant_id={m}");
    let n = number.to_string();
    let mut args = vec!["repair".to_string()];
    args.extend(st.vault.remote_args(&st.read_file));
    for a in ["--cluster", "shop", "--incident", &n, "--tenant", &tenant, "--json"] {
        args.push(a.into());
    }
    s.event("operator", format!("holdfast repair --cluster shop --incident {number} --tenant {tenant}"));
    let committed_before = b.ledger.committed.load(Ordering::Relaxed);
    let started = Instant::now();
    let out = tokio::process::Command::new(&st.exe)
        .args(&args)
        .env("HOLDFAST_REPAIR_DSN", &dsn)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running holdfast repair")?;
    let repair_seconds = started.elapsed().as_secs_f64();
    let attack_to_repaired_seconds = strike.at.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("holdfast repair failed: {}", text(&out));
    }
    let during = b.ledger.committed.load(Ordering::Relaxed) - committed_before;
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading holdfast repair --json: {}", text(&out)))?;
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let tables: Vec<String> = rep["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}: {} re-inserted, {} reverted, {} conflicts",
                t["table"].as_str().unwrap_or("?"),
                num(t, "reinserted"),
                num(t, "reverted"),
                t["conflicts"].as_array().map_or(0, Vec::len)
            )
        })
        .collect();
    let reinserted: u64 = rep["tables"].as_array().into_iter().flatten().map(|t| num(t, "reinserted")).sum();
    let reverted: u64 = rep["tables"].as_array().into_iter().flatten().map(|t| num(t, "reverted")).sum();
    let conflicts: usize = rep["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["conflicts"].as_array().map_or(0, Vec::len))
        .sum();
    s.event(
        "operator",
        format!(
            "repair committed after {repair_seconds:.1} s ({}); {during} orders committed meanwhile; verdict: {}",
            tables.join("; "),
            rep["verdict"].as_str().unwrap_or("?")
        ),
    );

    // The shop trades a moment longer on the repaired database, then closes for the check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.ledger.stop.store(true, Ordering::Relaxed);
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        while b.workers.join_next().await.is_some() {}
    })
    .await;
    b.workers.abort_all();
    if stopped.is_err() {
        bail!("the shop workload did not stop within 30 s");
    }
    if let Some(why) = b.ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        bail!("a shop session failed during the repair act: {why}");
    }
    let placed = b.ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let verify_started = Instant::now();
    let live: Snapshot = blocking(|| shop::snapshot(&|q| st.primary.psql_db("shop", q)))?;
    let cmp = shop::compare(&st.base, &placed, &live);
    let verify_seconds = verify_started.elapsed().as_secs_f64();
    // The victim's orders acknowledged after the DELETE returned: written since, kept.
    let live_orders =
        live.table(shop::Table::Orders).ok_or_else(|| anyhow!("the live shop has no orders"))?;
    let since: Vec<&shop::Placed> =
        placed.iter().filter(|p| p.acknowledged && p.merchant == m && p.at > strike.at).collect();
    let since_kept = since.iter().filter(|p| live_orders.contains_key(&p.order_id.to_string())).count();
    let others_ok = cmp.merchants.iter().filter(|c| c.merchant_id != m && c.ok).count();
    let victim_ok = cmp.merchants.iter().any(|c| c.merchant_id == m && c.ok);
    s.event(
        "operator",
        format!(
            "live shop verified after the workload stopped: merchant {m} {} ({} of its orders placed since the DELETE kept), {others_ok} of {} other merchants whole; {} of {} rows lost, {} values wrong, {} rows nobody wrote ({verify_seconds:.1} s)",
            if victim_ok { "whole again" } else { "NOT whole" },
            since_kept,
            cmp.merchants.len().saturating_sub(1),
            cmp.rows_lost,
            cmp.rows_expected,
            cmp.values_wrong,
            cmp.rows_unexplained
        ),
    );
    let figures = RepairFigures {
        merchant: m,
        incident: number,
        rows_deleted: strike.destroyed.rows_lost,
        rows_reinserted: reinserted,
        rows_reverted: reverted,
        conflicts,
        tables,
        victim_orders_since_delete: since.len(),
        victim_orders_since_delete_kept: since_kept,
        orders_committed_during_repair: during,
        other_merchants: cmp.merchants.len().saturating_sub(1),
        other_merchants_whole: others_ok,
        victim_whole: victim_ok,
        repair_seconds,
        scratch_restore_seconds: rep["restore_seconds"].as_f64(),
        apply_seconds: rep["apply_seconds"].as_f64(),
        attack_to_repaired_seconds,
        verdict: rep["verdict"].as_str().unwrap_or("").to_string(),
    };
    let recovery = Recovery {
        rto: repair_seconds,
        verify_seconds,
        cmp,
        restore_target: format!(
            "{} (repair of merchant {m}: {})",
            rep["damage"].as_str().unwrap_or("?"),
            rep["before"].as_str().unwrap_or("?")
        ),
        last_commit: None,
        last_commit_source: "not applicable: a repair rewinds nothing".into(),
    };
    Ok((recovery, figures))
}
