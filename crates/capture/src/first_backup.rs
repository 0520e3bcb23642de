//! The first base backup: a cluster with none in the vault cannot be restored at all, and
//! the detector cannot tell which tables held data. So when the vault streams from a cluster
//! that has no complete base backup, it takes one itself at once — and says so in its log and
//! in status — instead of waiting for someone to remember `holdfast backup`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::runtime::ClusterRuntime;

/// Waits until the cluster streams; if it has no complete base backup, takes one (retrying
/// with backoff up to 5 minutes apart while it fails). Returns once one exists.
pub async fn run(rt: Arc<ClusterRuntime>, mut shutdown: watch::Receiver<bool>) {
    let name = rt.cluster.name.clone();
    let mut retry = Duration::from_secs(2);
    loop {
        if rt.newest_backup_id().is_some() {
            return;
        }
        if !rt.status().connected {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        {
            // An explicit backup that got there first is enough.
            let _one_at_a_time = rt.backup_lock.lock().await;
            if rt.newest_backup_id().is_some() {
                return;
            }
        }
        let note = "the cluster has no base backup in the vault: the vault is taking the first one now \
                    (nothing is restorable until it completes)";
        tracing::warn!(cluster = %name, "{note}");
        rt.update(|s| s.first_backup = Some(note.to_string()));
        // Status says the backup was taken in the same moment its window appears: never
        // "nothing is restorable" beside a window that is.
        let taken = tokio::select! {
            r = crate::basebackup::take_then(&rt, |b| {
                let note = format!(
                    "first base backup {} taken by the vault itself (the cluster had none): restorable from {}",
                    b.id, b.stop_lsn
                );
                tracing::info!(cluster = %name, "{note}");
                rt.update(|s| s.first_backup = Some(note));
            }) => r,
            _ = shutdown.changed() => return,
        };
        match taken {
            Ok(_) => return,
            Err(e) => {
                let note = format!(
                    "the cluster has no base backup and the vault's first one failed ({e}); retrying in {retry:?} \
                     (nothing is restorable until one completes)"
                );
                tracing::error!(cluster = %name, "{note}");
                rt.update(|s| s.first_backup = Some(note));
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(300));
            }
        }
    }
}
