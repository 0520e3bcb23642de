//! The vault's collector: pulls WAL and base backups from PostgreSQL over the replication
//! protocol and stores them in the vault's repository.
//!
//! The database hosts hold no credential for the vault: this crate connects *out* to
//! PostgreSQL with a replication-only role. WAL is stored in pieces as it arrives
//! ([`piece`], [`archive`]), and the [`walmap`] says exactly which LSN ranges are durable,
//! which is the only position ever reported back to PostgreSQL as flushed ([`stream`]).
//! Base backups arrive as tar streams and go through the store's chunking ([`basebackup`]);
//! one is marked complete only when all the WAL it needs is in the vault.

pub mod archive;
pub mod basebackup;
pub mod catalog;
pub mod config;
pub mod detect;
pub mod first_backup;
pub mod follow;
pub mod piece;
pub mod restore_points;
pub mod runtime;
pub mod status;
pub mod stream;
mod synchronous;
pub mod tar;
pub mod walmap;

use std::collections::BTreeMap;
use std::sync::Arc;

use pgfmt::{Lsn, TimelineId};
use store::{Repository, Timestamp};
use tokio::sync::watch;

pub use config::{Cluster, ClusterConfig};
pub use runtime::ClusterRuntime;
pub use status::{BackupSummary, ClusterStatus, Incident, Inventory, Window};

/// Catalog record kind of an incident.
pub const INCIDENT_RECORD: &str = "incident";
/// Catalog record kind marking a base backup complete (all its WAL is stored).
pub const BACKUP_COMPLETE_RECORD: &str = "backup.complete";

/// What the collector needs from the vault that hosts it.
pub trait VaultHost: Send + Sync + 'static {
    /// Now, on the vault's clock.
    fn now(&self) -> Timestamp;
    /// Retention for objects written now, from the vault's policy and clock.
    fn retain_until(&self) -> Timestamp;
    /// Raise an alert (log, alert command, metric).
    fn alert(&self, incident: &Incident);
}

/// Errors of the collector.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pg(#[from] pgproto::Error),
    #[error(transparent)]
    Repo(#[from] store::RepoError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Piece(#[from] piece::PieceError),
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("the server does not match the WAL the vault holds: {detail}")]
    SystemChanged { detail: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("WAL {start}..{end} on timeline {} is not in the vault", timeline.0)]
    MissingWal { timeline: TimelineId, start: Lsn, end: Lsn },
    #[error("the server no longer has the WAL from {from} on timeline {}: {detail}", timeline.0)]
    WalRemoved { timeline: TimelineId, from: Lsn, detail: String },
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unknown cluster {0:?}: it is not in the vault's configuration")]
    UnknownCluster(String),
    #[error("base backup failed: {0}")]
    Backup(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a client of the vault is told (e.g. of a base backup it asked for): storage failures by
/// their kind, not the vault host's paths or the backend's messages, and no internal detail;
/// the whole error goes to the vault's log.
impl store::UserFacing for CaptureError {
    fn user_message(&self) -> String {
        match self {
            CaptureError::Repo(e) => e.user_message(),
            CaptureError::Store(e) => e.user_message(),
            CaptureError::Internal(_) => "an internal error in the vault's collector".into(),
            other => other.to_string(),
        }
    }
}

impl From<pgfmt::FormatError> for CaptureError {
    fn from(e: pgfmt::FormatError) -> Self {
        CaptureError::Protocol(e.to_string())
    }
}

/// Every cluster the vault captures, with their streaming tasks.
pub struct Collector {
    clusters: BTreeMap<String, Arc<ClusterRuntime>>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("clusters", &self.clusters.keys().collect::<Vec<_>>()).finish()
    }
}

/// Dropping the collector without [`Collector::shutdown`] stops its tasks at once, as a
/// crash would; the next start resumes from what is durable.
impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl Collector {
    /// Loads every cluster's archive and starts streaming and the backup schedules.
    pub async fn start(
        repo: &Repository,
        clusters: Vec<Cluster>,
        host: Arc<dyn VaultHost>,
    ) -> Result<Arc<Collector>, CaptureError> {
        let (shutdown, rx) = watch::channel(false);
        let mut map = BTreeMap::new();
        let mut tasks = Vec::new();
        for c in clusters {
            let rt = Arc::new(ClusterRuntime::load(repo, c, host.clone()).await?);
            tasks.push(tokio::spawn(stream::run(rt.clone(), rx.clone())));
            tasks.push(tokio::spawn(follow::run(rt.clone(), rx.clone())));
            // On a thread of its own: logging in (SCRAM) and reading large catalogs take CPU
            // that must never delay streaming WAL.
            let (crt, crx) = (rt.clone(), rx.clone());
            tasks.push(tokio::task::spawn_blocking(
                move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(local) => local.block_on(catalog::keep_fresh(crt, crx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the catalog snapshot thread"),
                },
            ));
            if rt.cluster.first_backup {
                tasks.push(tokio::spawn(first_backup::run(rt.clone(), rx.clone())));
            }
            if let Some(every) = rt.cluster.backup_interval {
                tasks.push(tokio::spawn(basebackup::schedule(rt.clone(), every, rx.clone())));
            }
            if rt.cluster.backup_wal_share.is_some() || rt.cluster.backup_replay_budget.is_some() {
                let share = rt.cluster.backup_wal_share;
                tasks.push(tokio::spawn(basebackup::on_wal_volume(rt.clone(), share, rx.clone())));
            }
            map.insert(rt.cluster.name.clone(), rt);
        }
        Ok(Arc::new(Collector { clusters: map, shutdown, tasks: std::sync::Mutex::new(tasks) }))
    }

    /// Status of every cluster, by name.
    pub fn status(&self) -> Vec<ClusterStatus> {
        self.clusters.values().map(|c| c.status()).collect()
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Result<&Arc<ClusterRuntime>, CaptureError> {
        self.clusters.get(name).ok_or_else(|| CaptureError::UnknownCluster(name.to_string()))
    }

    /// Takes a base backup of `name` now; returns once it is complete.
    pub async fn backup_now(&self, name: &str) -> Result<BackupSummary, CaptureError> {
        basebackup::take(self.cluster(name)?).await
    }

    /// Stops streaming after storing what is pending. WAL not yet stored is not lost: it was
    /// never reported as flushed, so the slot keeps it for the next start.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::UserFacing;

    #[test]
    fn a_client_is_told_what_failed_not_the_vault_hosts_paths() {
        let io = std::io::Error::other("No space left on device");
        let e = CaptureError::Repo(store::RepoError::Io {
            what: "writing /srv/vault/store/pack/ab".into(),
            source: io,
        });
        assert!(e.to_string().contains("/srv/vault"), "the log gets the whole story: {e}");
        let told = e.user_message();
        assert!(!told.contains("/srv/vault") && !told.contains("No space"), "{told}");
        let e = CaptureError::Internal("the chunking thread panicked at src/basebackup.rs:238".into());
        assert!(!e.user_message().contains("basebackup.rs"), "{}", e.user_message());
        // What is the client's to know stays as it was.
        let e = CaptureError::UnknownCluster("shop".into());
        assert_eq!(e.user_message(), e.to_string());
    }
}
