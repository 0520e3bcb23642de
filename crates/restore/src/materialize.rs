//! Writing a base backup's files into the target directory.
//!
//! Files are cut into ranges fetched by `parallel` workers and written in place at their
//! offsets, so memory stays at `parallel × range` whatever the backup's size; directories
//! get their modes and times last (writing into them would change their mtime).

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use vault_api::{BackupEntry, VaultClient};

use crate::RestoreError;

/// Bytes per range request.
pub const RANGE: u64 = 16 << 20;

/// PostgreSQL will not start without this file: it is written under another name and renamed
/// only once every other byte is in place, so a restore cut short cannot be started by mistake
/// (and `holdfast restore` refuses the non-empty directory: a rerun starts clean).
const CONTROL_FILE: &str = "global/pg_control";
const CONTROL_PARTIAL: &str = "global/pg_control.holdfast-incomplete";

/// What materializing wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Materialized {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Progress shared with whoever reports it.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

/// The path of `rel` under `root`, refusing anything that would leave it.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, RestoreError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(RestoreError::Refused(format!(
            "the backup names a path {rel:?} outside the target directory; nothing was written for it"
        )));
    }
    Ok(root.join(p))
}

/// Writes every entry of backup `id` under `target` (which must exist and be empty).
pub async fn materialize(
    client: &VaultClient,
    id: &str,
    target: &Path,
    parallel: usize,
    progress: Arc<Progress>,
) -> Result<Materialized, RestoreError> {
    let t0 = Instant::now();
    let entries = crate::with_retry("the backup's file list", || client.backup_entries(id)).await?.entries;
    let mut out = Materialized::default();
    let mut dirs: Vec<&BackupEntry> = Vec::new();
    let mut jobs: Vec<(Arc<std::fs::File>, String, u64, u64)> = Vec::new();
    progress
        .total
        .store(entries.iter().filter(|e| e.kind == "file").map(|e| e.size).sum(), Ordering::Relaxed);
    for e in &entries {
        let path = inside(target, &e.path)?;
        match e.kind.as_str() {
            "dir" => {
                std::fs::create_dir_all(&path)
                    .map_err(RestoreError::io(format!("creating {}", path.display())))?;
                dirs.push(e);
                out.dirs += 1;
            }
            "symlink" => {
                let to = e.target.as_deref().ok_or_else(|| {
                    RestoreError::Refused(format!("symlink {} in backup {id} has no target", e.path))
                })?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(RestoreError::io(format!("creating {}", parent.display())))?;
                }
                std::os::unix::fs::symlink(to, &path)
                    .map_err(RestoreError::io(format!("creating symlink {}", path.display())))?;
                out.symlinks += 1;
            }
            "file" => {
                let path = if e.path == CONTROL_FILE { inside(target, CONTROL_PARTIAL)? } else { path };
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(RestoreError::io(format!("creating {}", parent.display())))?;
                }
                let f = std::fs::File::create_new(&path)
                    .map_err(RestoreError::io(format!("creating {}", path.display())))?;
                f.set_len(e.size).map_err(RestoreError::io(format!("sizing {}", path.display())))?;
                f.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
                    .map_err(RestoreError::io(format!("setting the mode of {}", path.display())))?;
                let f = Arc::new(f);
                let mut off = 0;
                while off < e.size {
                    jobs.push((f.clone(), e.path.clone(), off, RANGE.min(e.size - off)));
                    off += RANGE;
                }
                out.files += 1;
                out.bytes += e.size;
            }
            other => {
                return Err(RestoreError::Refused(format!(
                    "backup {id} has an entry {} of unknown kind {other:?}: upgrade holdfast",
                    e.path
                )));
            }
        }
    }
    // Largest ranges first would balance better; file order keeps the disk writes sequential.
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter().rev().collect::<Vec<_>>()));
    let (flush_tx, flusher) = flusher();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (jobs, client, id, progress) = (jobs.clone(), client.clone(), id.to_string(), progress.clone());
        let flush_tx = flush_tx.clone();
        workers.spawn(async move {
            loop {
                let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((file, path, off, len)) = job else { return Ok::<(), RestoreError>(()) };
                let bytes = fetch_with_retry(&client, &id, &path, off, len).await?;
                if bytes.len() as u64 != len {
                    return Err(RestoreError::Refused(format!(
                        "the vault returned {} bytes for {path} at {off}, expected {len}",
                        bytes.len()
                    )));
                }
                let what = format!("writing {path}");
                let written = file.clone();
                tokio::task::spawn_blocking(move || file.write_all_at(&bytes, off))
                    .await
                    .map_err(|e| RestoreError::Refused(format!("{what}: {e}")))?
                    .map_err(RestoreError::io(what))?;
                let _ = flush_tx.send((written, len));
                progress.done.fetch_add(len, Ordering::Relaxed);
            }
        });
    }
    drop(flush_tx);
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                workers.abort_all();
                return Err(e);
            }
            Err(e) => return Err(RestoreError::Refused(format!("a fetch worker failed: {e}"))),
        }
    }
    // The last files' writeback: what PostgreSQL's own sync before redo would otherwise do.
    tokio::task::spawn_blocking(move || flusher.join())
        .await
        .map_err(|e| RestoreError::Refused(format!("the flusher failed: {e}")))?
        .map_err(|_| RestoreError::Refused("the flusher panicked".into()))?
        .map_err(RestoreError::io("flushing the restored files"))?;
    // File contents are written; now modes and times, directories last and deepest first.
    for e in entries.iter().filter(|e| e.kind == "file") {
        let path = inside(target, if e.path == CONTROL_FILE { CONTROL_PARTIAL } else { &e.path })?;
        set_mtime(&path, e.mtime)?;
    }
    let partial = target.join(CONTROL_PARTIAL);
    if partial.exists() {
        let control = target.join(CONTROL_FILE);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&partial, &control))
            .map_err(RestoreError::io(format!("putting {} in place", control.display())))?;
    }
    for e in dirs.iter().rev() {
        let path = inside(target, &e.path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(RestoreError::io(format!("setting the mode of {}", path.display())))?;
        set_mtime(&path, e.mtime)?;
    }
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// What the fetch workers tell the flusher: a file and how many bytes were just written to it.
type FlushSender = std::sync::mpsc::Sender<(Arc<std::fs::File>, u64)>;

/// Bytes written to one file between two of the flusher's `fdatasync`s of it.
const FLUSH_EVERY: u64 = 64 << 20;

/// A thread that makes the restored files durable while the rest is still being fetched: it
/// `fdatasync`s a file once [`FLUSH_EVERY`] bytes were written to it since the last time, and
/// when the senders are gone every file still holding an eighth of that unflushed. PostgreSQL
/// syncs the whole data directory before redo (`recovery_init_sync_method = syncfs`: it did
/// not shut the copy down itself) — with the base data already written back that finds little
/// to do, and the disk's writeback overlaps the fetch (decryption and decompression keep the
/// cores busy, not the disk). Without it `syncfs` wrote the whole restored gigabyte after the
/// fetch (~0.7 s at scale 50 in `bench/restore.sh`).
fn flusher() -> (FlushSender, std::thread::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = std::sync::mpsc::channel::<(Arc<std::fs::File>, u64)>();
    let handle = std::thread::spawn(move || {
        let mut pending: Vec<(Arc<std::fs::File>, u64)> = Vec::new();
        for (file, len) in rx {
            let i = match pending.iter().position(|(f, _)| Arc::ptr_eq(f, &file)) {
                Some(i) => i,
                None => {
                    pending.push((file, 0));
                    pending.len() - 1
                }
            };
            pending[i].1 += len;
            if pending[i].1 >= FLUSH_EVERY {
                pending[i].0.sync_data()?;
                pending[i].1 = 0;
            }
        }
        // Small files are left to PostgreSQL's one `syncfs`: thousands of `fdatasync`s of a
        // few kilobytes each would cost more than they save.
        for (file, n) in pending {
            if n >= FLUSH_EVERY / 8 {
                file.sync_data()?;
            }
        }
        Ok(())
    });
    (tx, handle)
}

fn set_mtime(path: &Path, mtime: i64) -> Result<(), RestoreError> {
    let t = UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(RestoreError::io(format!("setting the time of {}", path.display())))
}

/// A range, retried with backoff when the vault is unreachable (not when it answers an error).
async fn fetch_with_retry(
    client: &VaultClient,
    id: &str,
    path: &str,
    off: u64,
    len: u64,
) -> Result<bytes::Bytes, RestoreError> {
    Ok(crate::with_retry(path, || client.backup_file_range(id, path, off, len)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_target() {
        let root = Path::new("/tmp/x");
        assert_eq!(inside(root, "base/1/2").unwrap(), Path::new("/tmp/x/base/1/2"));
        for bad in ["", "../etc/passwd", "/etc/passwd", "base/../../x", "./a"] {
            assert!(inside(root, bad).is_err(), "{bad}");
        }
    }
}
