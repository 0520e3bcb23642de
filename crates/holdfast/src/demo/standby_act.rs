//! The demo's warm standby (`vault::standby`, issue 18): the vault keeps a PostgreSQL replaying
//! its stored WAL `APPLY_DELAY` behind production; when the insider's DROP is detected it stops
//! just before it, read-only, and the operator promotes it with `holdfast standby promote`. Its
//! RTO is shown beside the cold restore's, and its rows get the same merchant-by-merchant
//! comparison with what the workload saw committed.
//!
//! The clocks: *read-only* runs from the DROP DATABASE returning (the same instant every other
//! "after the attack" figure starts from) to the first query answered by the standby's `shop`
//! database after the vault reports it paused before the incident (polled every 100 ms, so up
//! to ~0.1 s late); *promote* from starting `holdfast standby promote` to the promoted server
//! answering a query in `shop`. Reading and comparing its rows is timed apart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::pg::{bin, command_as_postgres, psql_at};
use vault_api::client::VaultClient;
use vault_api::standby::{StandbyState, StandbyStatus};

use super::report::WarmStandby;
use super::shop::{self, Snapshot};
use super::{Stage, Story, Strike, blocking, text};

/// How far behind production the standby replays: longer than detection takes (well under a
/// second here), short enough that the demo need not wait for it.
pub(super) const APPLY_DELAY_SECONDS: u64 = 5;

/// The standby's data directory, in a directory of its own the `postgres` user can reach
/// (the demo's work directory is private). The vault starts the standby and leaves it running
/// on purpose (a warm copy, not scratch), so dropping this stops it — after the vault, which
/// would otherwise start it again.
pub(super) struct Warm {
    pub data: PathBuf,
    pub port: u16,
    _root: tempfile::TempDir,
}

impl Warm {
    pub(super) fn new() -> Result<Warm> {
        // `holdfast-pg-` like every other cluster the demo starts, so its test finds it too.
        let root = tempfile::Builder::new().prefix("holdfast-pg-standby-").tempdir()?;
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Warm { data: root.path().join("data"), port, _root: root })
    }

    /// The vault's `[[standby]]` table for the shop. No base backups from it
    /// (`backup_wal_share = 0`): the demo's cold restore starts from the backups the demo takes
    /// itself, as its script says.
    pub(super) fn config(&self) -> String {
        format!(
            "\n[[standby]]\ncluster = \"shop\"\ndata_dir = \"{}\"\napply_delay = \"{APPLY_DELAY_SECONDS}s\"\nport = {}\nmax_lag = \"60s\"\nbackup_wal_share = 0\n",
            self.data.display(),
            self.port
        )
    }

    fn query(&self, password: &str, sql: &str) -> Result<String> {
        psql_at(&self.data, self.port, password, "shop", sql)
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists()
            && let Ok(pg_ctl) = bin("pg_ctl")
        {
            let _ = command_as_postgres(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn shop_standby(admin: &VaultClient) -> Option<StandbyStatus> {
    admin.standbys().await.ok()?.standbys.into_iter().find(|b| b.cluster == "shop")
}

/// Waits until the standby follows the vault and answers (built from the base backup), so
/// that it is there when the insider strikes.
pub(super) async fn wait_following(s: &mut Story, st: &Stage) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let b = shop_standby(&st.admin).await;
        if let Some(b) = &b
            && b.state == StandbyState::Following
            && b.ready
        {
            s.event(
                "vault",
                format!(
                    "warm standby of shop following the vault's WAL {APPLY_DELAY_SECONDS} s behind, read-only on 127.0.0.1:{}, data {} (built from backup {})",
                    b.port,
                    b.data_dir,
                    b.backup.as_deref().unwrap_or("?")
                ),
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the vault's warm standby was not following within 180 s: {b:?}\nvault log:\n{}",
                st.vault.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The standby seen read-only at the target.
pub(super) struct ReadOnly {
    /// The DROP returned → the standby's `shop` answered, paused before the incident.
    pub seconds: f64,
    pub incident: usize,
    pub target: String,
    pub orders: i64,
}

/// Started the moment the DROP returns: polls the vault's standby status every 100 ms until it
/// is paused before an incident, then asks its `shop` database a question.
pub(super) fn watch(st: &Stage, from: Instant) -> Option<tokio::task::JoinHandle<Result<ReadOnly>>> {
    let warm = st.warm.as_ref()?;
    let (admin, data, port) = (st.admin.clone(), warm.data.clone(), warm.port);
    let password = st.primary.superuser_password().to_string();
    Some(tokio::spawn(async move {
        let deadline = from + Duration::from_secs(120);
        loop {
            let b = shop_standby(&admin).await;
            if let Some(b) = &b {
                if b.state == StandbyState::Overrun {
                    bail!("the warm standby had applied the DROP before the vault stopped it: {b:?}");
                }
                if b.state == StandbyState::Paused
                    && b.ready
                    && let Some(n) = b.paused_before_incident
                {
                    let (d, pw) = (data.clone(), password.clone());
                    let answer = tokio::task::spawn_blocking(move || {
                        psql_at(&d, port, &pw, "shop", "SELECT count(*) FROM orders")
                    })
                    .await?;
                    if let Ok(orders) = answer {
                        return Ok(ReadOnly {
                            seconds: from.elapsed().as_secs_f64(),
                            incident: n,
                            target: b.target.clone().unwrap_or_default(),
                            orders: orders.parse().unwrap_or(-1),
                        });
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the warm standby did not stop before the incident within 120 s of the DROP: {b:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// The act: the standby, paused read-only before the DROP since `read_only.seconds` after it,
/// is promoted by the operator and its shop compared with what the workload committed.
pub(super) async fn act_warm_standby(
    s: &mut Story,
    st: &Stage,
    strike: &mut Strike,
    number: usize,
) -> Result<Option<WarmStandby>> {
    let (Some(warm), Some(watch)) = (st.warm.as_ref(), strike.standby_watch.take()) else { return Ok(None) };
    s.step("The vault's warm standby: stopped just before the DROP, promoted by the operator");
    let ro = watch.await.context("the standby watcher")??;
    s.event_at(
        strike.t + ro.seconds,
        "vault",
        format!(
            "warm standby paused before incident {} ({}), read-only: `SELECT count(*) FROM orders` answered {} — {:.1} s after the DROP returned",
            ro.incident, ro.target, ro.orders, ro.seconds
        ),
    );
    if ro.incident != number {
        bail!("the warm standby stopped before incident {}, not the DROP's incident {number}", ro.incident);
    }
    let admin_token = st.vault.scratch().join("admin.token");
    let n = number.to_string();
    s.event("operator", format!("holdfast standby promote --cluster shop --before-incident {number}"));
    let started = Instant::now();
    let out = blocking(|| {
        st.vault.cli(
            &admin_token,
            &["standby", "promote", "--cluster", "shop", "--before-incident", &n, "--json"],
        )
    })?;
    if !out.status.success() {
        bail!("holdfast standby promote failed: {}", text(&out));
    }
    let password = st.primary.superuser_password().to_string();
    let writable = blocking(|| warm.query(&password, "SELECT NOT pg_is_in_recovery()"))?;
    let promote_seconds = started.elapsed().as_secs_f64();
    let attack_to_promoted_seconds = strike.at.elapsed().as_secs_f64();
    if writable != "t" {
        bail!("the promoted standby is still in recovery");
    }
    s.event(
        "operator",
        format!(
            "standby promoted: accepts writes on 127.0.0.1:{} {promote_seconds:.1} s after the command ({attack_to_promoted_seconds:.1} s after the DROP, the acts between included)",
            warm.port
        ),
    );
    let verify_started = Instant::now();
    let copy: Snapshot = blocking(|| shop::snapshot(&|sql| warm.query(&password, sql)))?;
    let cmp = shop::compare(&st.base, &strike.placed, &copy);
    let verify_seconds = verify_started.elapsed().as_secs_f64();
    s.event(
        "operator",
        format!(
            "promoted standby verified: {} of {} merchants whole, {} of {} rows lost, {} values wrong, {} rows nobody wrote ({verify_seconds:.1} s)",
            cmp.merchants.iter().filter(|m| m.ok).count(),
            cmp.merchants.len(),
            cmp.rows_lost,
            cmp.rows_expected,
            cmp.values_wrong,
            cmp.rows_unexplained
        ),
    );
    Ok(Some(WarmStandby {
        apply_delay_seconds: APPLY_DELAY_SECONDS,
        paused_before_incident: ro.incident,
        target: ro.target,
        read_only_after_attack_seconds: ro.seconds,
        promote_seconds,
        attack_to_promoted_seconds,
        verify_seconds,
        merchants_verified: cmp.merchants.iter().filter(|m| m.ok).count(),
        rows_expected: cmp.rows_expected,
        rows_lost: cmp.rows_lost,
        values_wrong: cmp.values_wrong,
        rows_unexplained: cmp.rows_unexplained,
        acknowledged_transactions_missing: cmp.acknowledged_orders_lost,
    }))
}
