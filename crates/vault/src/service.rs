//! The vault service's shared state and the operations on it that are not HTTP: token
//! reloads, write admission (rate and quota), catalog writes, alerts, cached listings.
//!
//! The HTTP layer ([`crate::api`]) and the drills ([`crate::drill`]) both work through
//! [`Shared`]; nothing here knows about requests, headers or status codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use store::{Expunge, ObjectKind, ObjectName, Repository, Timestamp};
use tokio::sync::RwLock;

use crate::clock::Clock;
use crate::config::Config;
use crate::state::{TokenEntry, VaultState, kinds};

/// A backup's file list by path.
pub type Entries = Arc<BTreeMap<String, store::FileEntry>>;

/// Everything the service's parts (HTTP handlers, drills, the collector's host) share.
pub struct Shared {
    pub repo: Repository,
    /// The same store as `repo.store()`, with the removal capability; used only by `retention`.
    pub store: Arc<dyn Expunge>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    /// Derived from the catalog; the write lock is held across "append record, apply it", so
    /// checks such as "retention only grows" see every earlier write.
    pub state: RwLock<VaultState>,
    pub metrics: Metrics,
    /// The collector pulling WAL and base backups, once started.
    pub collector: std::sync::OnceLock<Arc<capture::Collector>>,
    /// The retention policy in days, mirrored outside the state lock for the collector. Only
    /// ever raised, and raised before the new policy is acknowledged.
    pub retention_days_now: std::sync::atomic::AtomicU32,
    /// The file list of the backup read last (restore asks for many ranges of one backup).
    pub entries_cache: std::sync::Mutex<Option<(String, Entries)>>,
    /// Restore drills: running ones, the signing key.
    pub drills: crate::drill::Drills,
    /// Warm standbys (`[[standby]]`).
    pub standbys: crate::standby::Standbys,
    /// Alert delivery to the configured webhooks.
    pub webhooks: Arc<crate::alerts::Webhooks>,
    /// Writes per token in the current minute, and when each token was last alerted about a
    /// refused write (one alert per token per episode, not one per request).
    pub writes: std::sync::Mutex<BTreeMap<String, WriteWindow>>,
    /// Object counts and sizes for `/metrics`, listed at most once a minute.
    pub object_stats: tokio::sync::Mutex<Option<(std::time::Instant, Vec<KindStats>)>>,
    /// When the token records were last re-read for an unknown token id.
    pub token_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The store's copies: lock mode, retention floor, the upload queue (`store_watch`).
    pub stores: crate::store_watch::Stores,
}

/// Objects and bytes stored of one kind.
pub type KindStats = (ObjectKind, u64, u64);

/// One token's writes in the current one-minute window.
#[derive(Debug, Clone, Copy)]
pub struct WriteWindow {
    started: std::time::Instant,
    count: u32,
    last_alert: Option<std::time::Instant>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("repository", &self.repo.id()).finish_non_exhaustive()
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) requests: std::sync::Mutex<BTreeMap<u16, u64>>,
    pub(crate) proposals: AtomicU64,
    pub(crate) alerts: AtomicU64,
    pub(crate) uploaded_bytes: AtomicU64,
}

/// Why a client token's write was refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    /// More writes this minute than `limits.token_writes_per_minute`.
    RateLimited(String),
    /// Past `limits.token_quota_bytes_per_day` stored today.
    QuotaExceeded(String),
}

impl WriteRefusal {
    /// What the client is told: what was refused, why, and what to do.
    pub fn message(&self) -> &str {
        match self {
            WriteRefusal::RateLimited(m) | WriteRefusal::QuotaExceeded(m) => m,
        }
    }
}

/// How long `/metrics` reuses one listing of the store.
const OBJECT_STATS_TTL: Duration = Duration::from_secs(60);

impl Shared {
    /// The retention for something stored now.
    pub(crate) fn retain_until(&self, state: &VaultState, now: Timestamp) -> Timestamp {
        now.plus(Duration::from_secs(u64::from(state.retention_days(self.config.retention_days)) * 86_400))
    }

    /// Admits one write of `bytes` by client token `who`, or refuses it: more than
    /// `token_writes_per_minute` writes this minute (429), or past `token_quota_bytes_per_day`
    /// stored by this token today on the vault's clock (507). A refusal is alerted once per
    /// token per 10 minutes. Per day, not per life: a gate ships audit batches for years.
    pub(crate) fn charge(
        &self,
        state: &VaultState,
        who: &TokenEntry,
        bytes: u64,
    ) -> Result<(), WriteRefusal> {
        let limits = &self.config.limits;
        let now = std::time::Instant::now();
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let w =
            writes.entry(who.id.clone()).or_insert(WriteWindow { started: now, count: 0, last_alert: None });
        if now.duration_since(w.started) >= Duration::from_secs(60) {
            w.started = now;
            w.count = 0;
        }
        let used = state.used_today(&who.id, self.clock.now());
        let refusal = if w.count >= limits.token_writes_per_minute {
            Some((
                "token.rate_limited",
                WriteRefusal::RateLimited(format!(
                    "token {} made {} writes this minute, the limit is {} (limits.token_writes_per_minute): slow down and retry in a minute",
                    who.id, w.count, limits.token_writes_per_minute
                )),
            ))
        } else if used.saturating_add(bytes) > limits.token_quota_bytes_per_day {
            Some((
                "token.quota_exceeded",
                WriteRefusal::QuotaExceeded(format!(
                    "token {} has stored {used} bytes today; {bytes} more would pass its daily quota of {} bytes (limits.token_quota_bytes_per_day): nothing was stored — retry tomorrow (vault clock, UTC), or ask a vault admin to raise the quota",
                    who.id, limits.token_quota_bytes_per_day
                )),
            ))
        } else {
            None
        };
        let Some((alert, err)) = refusal else {
            w.count += 1;
            return Ok(());
        };
        let alert_now = w.last_alert.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(600));
        if alert_now {
            w.last_alert = Some(now);
        }
        drop(writes);
        if alert_now {
            self.alert(serde_json::json!({
                "alert": alert,
                "token": who.id,
                "label": who.label,
                "scope": who.scope,
                "stored_bytes_today": used,
                "quota_bytes_per_day": limits.token_quota_bytes_per_day,
                "writes_per_minute": limits.token_writes_per_minute,
                "message": err.message(),
                "what_to_do": "a client token is writing far more than its job needs: find who holds it, revoke it if it is not the gate",
            }));
        }
        Err(err)
    }

    /// Re-reads token records from the catalog, at most every 10 s: a token minted offline by
    /// `holdfast vault recover-admin` (a catalog record the running vault did not write) is
    /// accepted without a restart. Only `token.*` records written by the vault are applied;
    /// applying one twice changes nothing (first creation wins, a revocation sticks).
    pub(crate) async fn reload_tokens(&self) {
        let mut last = self.token_reload.lock().await;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let records = match self.repo.records().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "re-reading token records failed");
                return;
            }
        };
        let mut state = self.state.write().await;
        let before = state.tokens.len();
        for (name, r) in records {
            if r.author.is_none() && (r.kind == kinds::TOKEN_CREATED || r.kind == kinds::TOKEN_REVOKED) {
                state.apply(&name, &r.kind, r.written_at, &r.body);
            }
        }
        if state.tokens.len() > before {
            tracing::warn!(
                new = state.tokens.len() - before,
                "tokens created outside this process (recover-admin) are now accepted"
            );
        }
    }

    /// Appends a record stamped with the vault's clock and folds it into the state.
    pub(crate) async fn write_record(
        &self,
        state: &mut VaultState,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<(ObjectName, Timestamp, Timestamp), store::RepoError> {
        let now = self.clock.now();
        let until = self.retain_until(state, now);
        let name = self.repo.append_record(kind, body.clone(), now, until).await?;
        state.apply(&name, kind, now, &body);
        Ok((name, now, until))
    }

    /// Raises an alert: a WARN log line, a metric, and the configured alert command.
    /// Retention for an object written now: vault clock plus the current policy.
    pub fn retain_until_now(&self) -> Timestamp {
        let days = u64::from(self.retention_days_now.load(Ordering::SeqCst));
        self.clock.now().plus(Duration::from_secs(days * 86_400))
    }

    /// Raises an alert: WARN log, counter, and the configured alert command.
    pub fn alert(&self, event: serde_json::Value) {
        tracing::warn!(alert = %event, "ALERT");
        self.metrics.alerts.fetch_add(1, Ordering::Relaxed);
        let clock = self.clock.clone();
        self.webhooks.send(&event, move || clock.now());
        let Some(cmd) = self.config.alert_command.clone() else { return };
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let child = tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(program = %cmd[0], error = %e, "the alert command could not be started");
                    return;
                }
            };
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(event.to_string().as_bytes()).await;
            }
            match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::error!(program = %cmd[0], status = %s, "the alert command failed"),
                Ok(Err(e)) => tracing::error!(program = %cmd[0], error = %e, "the alert command failed"),
                Err(_) => {
                    tracing::error!(program = %cmd[0], "the alert command ran for over 60 s and was killed")
                }
            }
        });
    }

    /// Objects and bytes per kind, listed at most once per [`OBJECT_STATS_TTL`] however often
    /// `/metrics` is scraped (the lock makes concurrent scrapes share one listing).
    pub(crate) async fn object_stats(&self) -> Result<Vec<KindStats>, store::StoreError> {
        let mut cached = self.object_stats.lock().await;
        if let Some((at, stats)) = cached.as_ref()
            && at.elapsed() < OBJECT_STATS_TTL
        {
            return Ok(stats.clone());
        }
        let mut stats = Vec::new();
        for kind in ObjectKind::ALL {
            let list = self.store.list(kind).await?;
            stats.push((kind, list.len() as u64, list.iter().map(|m| m.size).sum::<u64>()));
        }
        *cached = Some((std::time::Instant::now(), stats.clone()));
        Ok(stats)
    }

    /// The file list of a backup, cached for the next request.
    pub(crate) async fn entries(&self, id: &str) -> Result<Entries, store::RepoError> {
        let s = self;
        if let Some((cached, entries)) = s.entries_cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && cached == id
        {
            return Ok(entries.clone());
        }
        let rec = s.repo.backup(id).await?;
        s.repo.refresh_index().await?;
        let mut map = BTreeMap::new();
        s.repo
            .for_each_entry(&rec, |e| {
                map.insert(e.path.clone(), e);
                Ok(())
            })
            .await?;
        let map = Arc::new(map);
        *s.entries_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((id.to_string(), map.clone()));
        Ok(map)
    }

    /// The other backups of `id`'s cluster whose files do not use chunk `chunk` (hex), newest
    /// first. Reads their manifests: only on the error path.
    pub(crate) async fn backups_without_chunk(&self, id: &str, chunk: &str) -> Vec<String> {
        let s = self;
        let Ok(all) = s.repo.backups().await else { return Vec::new() };
        let cluster = all.iter().find(|b| b.id == id).and_then(|b| b.cluster.clone());
        let mut out = Vec::new();
        for b in all.iter().rev().filter(|b| b.id != id && b.cluster == cluster) {
            let mut uses = false;
            let read = s
                .repo
                .for_each_entry(b, |e| {
                    uses |= e.chunks.iter().any(|c| c.to_hex() == chunk);
                    Ok(())
                })
                .await;
            if read.is_ok() && !uses {
                out.push(b.id.clone());
            }
        }
        out
    }
}
