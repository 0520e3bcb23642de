//! Base backups: `BASE_BACKUP` streamed through the store's chunking, checked against the
//! server's backup manifest, and marked complete only when its WAL is in the vault.
//!
//! The tar stream arrives on the async connection; the chunker is synchronous CPU work. A
//! blocking thread runs the tar reader and the [`store::BackupWriter`], fed through a bounded
//! channel, so memory stays bounded whatever the database size.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgfmt::manifest::ChecksumAlgorithm;
use pgfmt::{BackupManifest, Lsn, TimelineId};
use pgproto::basebackup::BackupEvent;
use pgproto::replication::commands::BaseBackupOptions;
use tokio::sync::watch;

use crate::runtime::ClusterRuntime;
use crate::status::BackupSummary;
use crate::tar::{EntryKind, TarReader};
use crate::{BACKUP_COMPLETE_RECORD, CaptureError};

/// Messages from the connection to the chunking thread.
enum Feed {
    Archive { name: String, oid: Option<u32> },
    Data(Bytes),
    End,
}

/// A `Read` over the data of the current archive; EOF at the next archive boundary.
struct FeedReader<'a> {
    rx: &'a Receiver<Feed>,
    buf: Bytes,
    next: &'a mut Option<(String, Option<u32>)>,
    ended: bool,
}

impl Read for FeedReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Feed::Data(b)) => self.buf = b,
                Ok(Feed::Archive { name, oid }) => {
                    *self.next = Some((name, oid));
                    self.ended = true;
                }
                Ok(Feed::End) | Err(_) => self.ended = true,
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct Hashing<'a, R> {
    inner: R,
    hasher: &'a mut pgfmt::manifest::FileHasher,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What the chunking thread learned.
struct Chunked {
    record: store::BackupRecord,
    /// Manifest path → (size, CRC-32C digest).
    digests: HashMap<Vec<u8>, (u64, Vec<u8>)>,
}

/// How a file (or directory) of the source's data directory is stored.
#[derive(Clone, Copy)]
pub enum Treat {
    /// As the server sent it.
    Keep,
    /// Not at all (and left out of the stored manifest).
    Skip,
    /// Rewritten by this function (and its manifest entry with it).
    Rewrite(fn(&[u8]) -> Vec<u8>),
}

/// What decides each path's [`Treat`] (paths relative to the data directory).
pub type TreatFn = Arc<dyn Fn(&str) -> Treat + Send + Sync>;

/// A base backup taken from a standby of the cluster (the vault's own warm standby) instead of
/// from production: where to connect, and what of its data directory is the standby's own.
pub struct StandbySource {
    /// A replication connection to the standby.
    pub conn: pgproto::conn::Config,
    /// Which of its files are not the database's (left out or cleaned).
    pub treat: TreatFn,
}

/// Runs on a blocking thread: tar archives in, backup record out.
fn chunk_archives(
    mut writer: store::BackupWriter,
    rx: Receiver<Feed>,
    manifest: Receiver<Vec<u8>>,
    host: Arc<dyn crate::VaultHost>,
    treat: Option<TreatFn>,
) -> Result<Chunked, CaptureError> {
    let mut digests = HashMap::new();
    // What the stored manifest says differently from the server's (skipped or rewritten files).
    let mut edits: HashMap<Vec<u8>, pgfmt::manifest::FileEdit> = HashMap::new();
    let mut next: Option<(String, Option<u32>)> = match rx.recv() {
        Ok(Feed::Archive { name, oid }) => Some((name, oid)),
        _ => None,
    };
    while let Some((name, oid)) = next.take() {
        // Files of a tablespace archive live under pg_tblspc/<oid>/ in the manifest.
        let prefix = oid.map(|o| format!("pg_tblspc/{o}/")).unwrap_or_default();
        let reader = FeedReader { rx: &rx, buf: Bytes::new(), next: &mut next, ended: false };
        let mut tar = TarReader::new(reader);
        while let Some(entry) =
            tar.next_entry().map_err(|e| CaptureError::Backup(format!("archive {name}: {e}")))?
        {
            // PostgreSQL names a few members with a leading `./` (`./pg_wal/archive_status`);
            // the manifest and the store use plain relative paths.
            let relative = entry.path.trim_start_matches("./").trim_end_matches('/');
            if relative.is_empty() || relative == "." {
                continue;
            }
            let path = format!("{prefix}{relative}");
            let how = treat.as_ref().map_or(Treat::Keep, |t| t(&path));
            match (entry.kind, how) {
                (EntryKind::File, Treat::Skip) => {
                    // Still read and hashed: the server's manifest is checked whole below.
                    let mut hasher = ChecksumAlgorithm::Crc32c.hasher();
                    let n =
                        io::copy(&mut Hashing { inner: tar.data(), hasher: &mut hasher }, &mut io::sink())
                            .map_err(|e| CaptureError::Backup(format!("archive {name}: {e}")))?;
                    digests.insert(path.clone().into_bytes(), (n, hasher.finish()));
                    edits.insert(path.into_bytes(), pgfmt::manifest::FileEdit::Drop);
                }
                (EntryKind::File, Treat::Rewrite(rewrite)) => {
                    let mut hasher = ChecksumAlgorithm::Crc32c.hasher();
                    let mut original = Vec::new();
                    Hashing { inner: tar.data(), hasher: &mut hasher }
                        .read_to_end(&mut original)
                        .map_err(|e| CaptureError::Backup(format!("archive {name}: {e}")))?;
                    digests.insert(path.clone().into_bytes(), (original.len() as u64, hasher.finish()));
                    let cleaned = rewrite(&original);
                    writer.add_stream(&path, &cleaned[..], entry.mode, entry.mtime)?;
                    let mut h = ChecksumAlgorithm::Crc32c.hasher();
                    h.update(&cleaned);
                    edits.insert(
                        path.into_bytes(),
                        pgfmt::manifest::FileEdit::Replace {
                            size: cleaned.len() as u64,
                            checksum: h.finish(),
                        },
                    );
                }
                (_, Treat::Skip) => {}
                (EntryKind::File, Treat::Keep) => {
                    let mut hasher = ChecksumAlgorithm::Crc32c.hasher();
                    let n = writer.add_stream(
                        &path,
                        Hashing { inner: tar.data(), hasher: &mut hasher },
                        entry.mode,
                        entry.mtime,
                    )?;
                    digests.insert(path.into_bytes(), (n, hasher.finish()));
                }
                (EntryKind::Directory, _) => writer.add_dir(&path, entry.mode, entry.mtime)?,
                (EntryKind::Symlink, _) => writer.add_symlink(&path, &entry.link_target, entry.mtime)?,
                (EntryKind::Other(t), _) => {
                    tracing::warn!(path, kind = %(t as char), "skipping unsupported tar member")
                }
            }
        }
        // Drain anything after the end-of-archive marker up to the next archive.
        let mut rest = tar_into_inner_drain(&rx, &mut next);
        rest.clear();
    }
    // The manifest is stored as a file of the backup too: restore puts it back for
    // pg_verifybackup.
    let mut manifest_bytes = manifest.recv().unwrap_or_default();
    if !manifest_bytes.is_empty() && !edits.is_empty() {
        // The stored manifest lists what was stored (pg_verifybackup checks a restore against it).
        manifest_bytes = pgfmt::manifest::edit_files(&manifest_bytes, |f| {
            edits.get(&f.path).cloned().unwrap_or(pgfmt::manifest::FileEdit::Keep)
        })
        .map_err(|e| CaptureError::Backup(format!("the server's backup manifest is not valid: {e}")))?;
    }
    if !manifest_bytes.is_empty() {
        writer.add_stream("backup_manifest", &manifest_bytes[..], 0o600, 0)?;
    }
    // The record is dated by the vault's clock, like every other catalog record.
    let record = writer.finish(host.now())?;
    Ok(Chunked { record, digests })
}

/// Consumes feed messages until the next archive starts or the stream ends.
fn tar_into_inner_drain(rx: &Receiver<Feed>, next: &mut Option<(String, Option<u32>)>) -> Vec<u8> {
    if next.is_some() {
        return Vec::new();
    }
    loop {
        match rx.recv() {
            Ok(Feed::Data(_)) => {}
            Ok(Feed::Archive { name, oid }) => {
                *next = Some((name, oid));
                return Vec::new();
            }
            Ok(Feed::End) | Err(_) => return Vec::new(),
        }
    }
}

/// Takes one base backup of the cluster and returns once it is complete.
pub async fn take(rt: &Arc<ClusterRuntime>) -> Result<BackupSummary, CaptureError> {
    take_then(rt, |_| {}).await
}

/// [`take`], with `complete` called once the backup is recorded and just before it becomes
/// visible in status (its window), so that what status says about it changes in the same
/// moment as the window.
pub(crate) async fn take_then(
    rt: &Arc<ClusterRuntime>,
    complete: impl FnOnce(&BackupSummary),
) -> Result<BackupSummary, CaptureError> {
    take_inner(rt, None, complete).await
}

/// Takes one base backup from a standby of the cluster (see [`StandbySource`]): the same
/// backup as from production — checked against the server's manifest, complete once its WAL
/// is in the vault, recorded in the catalog — with the standby's own files left out or cleaned.
/// Refused when the standby is not a copy of the cluster (another system identifier than the
/// cluster's backups).
pub async fn take_from_standby(
    rt: &Arc<ClusterRuntime>,
    source: &StandbySource,
) -> Result<BackupSummary, CaptureError> {
    take_inner(rt, Some(source), |_| {}).await
}

async fn take_inner(
    rt: &Arc<ClusterRuntime>,
    standby: Option<&StandbySource>,
    complete: impl FnOnce(&BackupSummary),
) -> Result<BackupSummary, CaptureError> {
    let _one_at_a_time = rt.backup_lock.lock().await;
    let started = rt.now();
    let (mut conn, server) = match standby {
        None => crate::stream::connect(rt).await?,
        Some(sb) => (
            pgproto::conn::ReplicationConnection::connect(&sb.conn).await?,
            format!("standby {}", sb.conn.host),
        ),
    };
    let ident = conn.identify_system().await?;
    let system_id = ident.system_id.to_string();
    if standby.is_some()
        && let Some(newest) = rt.newest_backup()
        && newest.system_id != system_id
    {
        let _ = conn.close().await;
        return Err(CaptureError::Backup(format!(
            "the standby is system {system_id}, the cluster's backups are of system {}: not a copy of this cluster",
            newest.system_id
        )));
    }
    let id_hint = format!("holdfast {} {}", rt.cluster.name, started);
    let options = BaseBackupOptions {
        label: id_hint,
        fast_checkpoint: true,
        manifest: true,
        manifest_checksums: Some("CRC32C".into()),
        wal: false,
        progress: true,
        wait: false,
        ..Default::default()
    };
    tracing::info!(cluster = %rt.cluster.name, %server, "base backup starting");
    conn.start_base_backup(&options).await?;

    let label = match standby {
        None => format!("base backup of {}", rt.cluster.name),
        Some(_) => format!("base backup of {} from the vault's warm standby", rt.cluster.name),
    };
    let mut writer = rt.repo.backup_writer(&label, rt.host.retain_until());
    writer.set_cluster(&rt.cluster.name);
    writer.set_started(started);
    let (tx, rx) = sync_channel::<Feed>(32);
    let (mtx, mrx) = sync_channel::<Vec<u8>>(1);
    let host = rt.host.clone();
    let treat = standby.map(|s| s.treat.clone());
    let worker = tokio::task::spawn_blocking(move || chunk_archives(writer, rx, mrx, host, treat));

    let mut start: Option<(TimelineId, Lsn)> = None;
    let mut stop: Option<(TimelineId, Lsn)> = None;
    let mut manifest = Vec::new();
    let mut total_kb = 0u64;
    let mut done = 0u64;
    let mut last_log = Instant::now();
    let chunker_stopped = std::sync::atomic::AtomicBool::new(false);
    let send = |tx: &SyncSender<Feed>, f: Feed| -> Result<(), CaptureError> {
        // Blocking send on a bounded channel: back-pressure from the chunker to the socket.
        tokio::task::block_in_place(|| tx.send(f)).map_err(|_| {
            chunker_stopped.store(true, std::sync::atomic::Ordering::Relaxed);
            CaptureError::Backup("the chunking thread stopped".into())
        })
    };
    let streamed: Result<(), CaptureError> = async {
        while let Some(ev) = conn.next_backup_event().await? {
            match ev {
                BackupEvent::Started { start: s, tablespaces } => {
                    start = Some((s.timeline, s.lsn));
                    total_kb = tablespaces.iter().filter_map(|t| t.size_kb).sum();
                    rt.update(|st| st.backup_progress = Some((0, total_kb * 1024)));
                }
                BackupEvent::ArchiveStart { name, location: _ } => {
                    let oid = name.strip_suffix(".tar").and_then(|n| n.parse().ok());
                    send(&tx, Feed::Archive { name, oid })?;
                }
                BackupEvent::ArchiveData(b) => {
                    done += b.len() as u64;
                    send(&tx, Feed::Data(b))?;
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        last_log = Instant::now();
                        tracing::info!(cluster = %rt.cluster.name, done_mb = done >> 20, total_mb = total_kb >> 10, "base backup progress");
                    }
                    rt.update(|st| st.backup_progress = Some((done, total_kb * 1024)));
                }
                BackupEvent::Progress(_) | BackupEvent::ManifestStart => {}
                BackupEvent::ManifestData(b) => manifest.extend_from_slice(&b),
                BackupEvent::Finished(s) => stop = Some((s.timeline, s.lsn)),
            }
        }
        Ok(())
    }
    .await;
    let _ = send(&tx, Feed::End);
    drop(tx);
    let _ = mtx.send(manifest.clone());
    drop(mtx);
    let chunked = worker.await.map_err(|e| CaptureError::Internal(e.to_string()));
    rt.update(|st| st.backup_progress = None);
    if let Err(e) = streamed {
        // When the chunker stopped first, its own error is the cause worth reporting.
        return Err(match chunked {
            Ok(Err(cause)) if chunker_stopped.load(std::sync::atomic::Ordering::Relaxed) => cause,
            _ => e,
        });
    }
    let chunked = chunked??;
    let _ = conn.close().await;

    let (Some((tli, start_lsn)), Some((_, stop_lsn))) = (start, stop) else {
        return Err(CaptureError::Backup(
            "the server ended the backup without start and stop positions".into(),
        ));
    };
    verify_manifest(&manifest, &chunked.digests)?;

    // pgBackRest's rule: complete only once every byte of WAL from start to stop is stored.
    wait_for_wal(rt, tli, start_lsn, stop_lsn).await?;
    let rec = &chunked.record;
    let summary = BackupSummary {
        id: rec.id.clone(),
        cluster: rt.cluster.name.clone(),
        system_id,
        timeline: tli.0,
        start_lsn,
        stop_lsn,
        started,
        finished: rt.now(),
        bytes: rec.bytes,
        stored_bytes: rec.stored_bytes,
    };
    rt.repo
        .append_record(
            BACKUP_COMPLETE_RECORD,
            serde_json::to_value(&summary).expect("serialises"),
            rt.now(),
            rt.host.retain_until(),
        )
        .await?;
    complete(&summary);
    rt.add_backup(summary.clone());
    tracing::info!(
        cluster = %rt.cluster.name, id = %summary.id, start = %start_lsn, stop = %stop_lsn,
        bytes = summary.bytes, stored = summary.stored_bytes, "base backup complete"
    );
    Ok(summary)
}

/// Checks the manifest's own checksum and every file's size and CRC-32C.
fn verify_manifest(text: &[u8], digests: &HashMap<Vec<u8>, (u64, Vec<u8>)>) -> Result<(), CaptureError> {
    let manifest = BackupManifest::parse(text)
        .map_err(|e| CaptureError::Backup(format!("the server's backup manifest is not valid: {e}")))?;
    for f in &manifest.files {
        let Some((size, digest)) = digests.get(&f.path) else {
            return Err(CaptureError::Backup(format!(
                "file {} is in the server's manifest but not in the backup stream",
                f.path_lossy()
            )));
        };
        if f.algorithm == ChecksumAlgorithm::Crc32c {
            f.verify_digest(*size, digest)
                .map_err(|e| CaptureError::Backup(format!("backup damaged in transit: {e}")))?;
        } else if *size != f.size {
            return Err(CaptureError::Backup(format!(
                "file {} has {size} bytes, the manifest says {}",
                f.path_lossy(),
                f.size
            )));
        }
    }
    Ok(())
}

async fn wait_for_wal(
    rt: &ClusterRuntime,
    tli: TimelineId,
    start: Lsn,
    stop: Lsn,
) -> Result<(), CaptureError> {
    let mut rx = rt.durable.subscribe();
    let wait = rt.cluster.wal_wait;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let map = rt.archive.map();
        // The backup's own timeline must hold start..stop: a promotion after the stop point
        // leaves that range on the old timeline, so this holds then too.
        if map.contiguous_end(tli, start) >= stop {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return Err(CaptureError::Backup(format!(
                "the backup's WAL {start}..{stop} on timeline {} did not reach the vault within {}s; \
                 the backup is stored but NOT marked complete: check `holdfast status` for the WAL stream",
                tli.0,
                wait.as_secs()
            )));
        }
    }
}

/// Asks production for a `CHECKPOINT` over the catalog login (a role with PostgreSQL 15's
/// `pg_checkpoint`, or a superuser) and returns the server's WAL position once it is done: a
/// standby that has replayed up to there can make a restartpoint of it, where a backup taken
/// from the standby starts. The only thing a standby-sourced backup asks of production.
pub async fn request_checkpoint(rt: &ClusterRuntime) -> Result<Lsn, CaptureError> {
    let mut last = None;
    for cfg in &rt.cluster.catalog_connections {
        let mut c = match pgproto::conn::ReplicationConnection::connect_database(cfg, "postgres").await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let r = async {
            c.simple_query("CHECKPOINT").await?;
            c.simple_query("SELECT pg_catalog.pg_current_wal_lsn()::text AS lsn").await
        }
        .await;
        let _ = c.close().await;
        let sets = r?;
        let text = sets.first().and_then(|s| s.get(0, "lsn")).unwrap_or_default().to_string();
        return text.parse().map_err(|_| {
            CaptureError::Protocol(format!("the server answered {text:?} for its WAL position"))
        });
    }
    Err(last
        .map(CaptureError::from)
        .unwrap_or_else(|| CaptureError::Backup("no catalog connection configured".into())))
}

/// How often the WAL volume since the newest backup is looked at.
const WAL_VOLUME_TICK: Duration = Duration::from_secs(2);

/// Whether the WAL stored since `newest` began (`durable` is its end) calls for a backup.
pub fn wal_volume_due(newest: &BackupSummary, durable: pgfmt::Lsn, share: f64) -> bool {
    let written = durable.0.saturating_sub(newest.start_lsn.0);
    // At least one segment: a backup per switched segment of an idle database is no help.
    written as f64 >= (share * newest.bytes as f64).max(16.0 * 1024.0 * 1024.0)
}

/// Whether the WAL stored since `newest` began would take longer than the replay budget to
/// replay (`budget_bytes`: the budget × the replay speed). Never below one segment.
pub fn replay_budget_exceeded(newest: &BackupSummary, durable: pgfmt::Lsn, budget_bytes: u64) -> bool {
    durable.0.saturating_sub(newest.start_lsn.0) >= budget_bytes.max(16 << 20)
}

/// Whether the replay budget's next backup is the warm standby's to take rather than
/// production's: the standby offers backups and is at most half the budget behind the stored
/// WAL (a backup from it starts at a checkpoint it replays about that much later, so it lands
/// inside the budget), and the WAL since the newest backup (`written`) is not yet twice the
/// budget — a standby that does not deliver never holds production's backups back for long.
pub fn budget_backup_is_the_standbys(written: u64, budget_bytes: u64, standby_lag: Option<u64>) -> bool {
    standby_lag.is_some_and(|lag| lag <= budget_bytes / 2) && written < budget_bytes.saturating_mul(2)
}

/// Takes a backup whenever the WAL stored since the newest one began exceeds `share` of its
/// size, or would take longer than `backup_replay_budget_seconds` to replay (unless the warm
/// standby takes that one: [`budget_backup_is_the_standbys`]) — one at a time (the cluster's
/// backup lock) and never sooner than `backup_min_interval_seconds` after the newest began — until
/// shutdown. A cluster with no backup yet is `first_backup`'s.
pub async fn on_wal_volume(rt: Arc<ClusterRuntime>, share: Option<f64>, mut shutdown: watch::Receiver<bool>) {
    let min_interval = rt.cluster.backup_min_interval;
    let mut last_started: Option<tokio::time::Instant> = None;
    let mut told_rate: Option<Option<f64>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WAL_VOLUME_TICK) => {}
            _ = shutdown.changed() => return,
        }
        let Some(newest) = rt.newest_backup() else { continue };
        let Some(durable) = rt.status().durable_lsn else { continue };
        let written = durable.0.saturating_sub(newest.start_lsn.0);
        let since_newest = rt.now().0.saturating_sub(newest.started.0);
        if last_started.is_some_and(|t| t.elapsed() < min_interval)
            || since_newest < min_interval.as_secs() as i64
        {
            continue;
        }
        let budget = rt.replay_budget_bytes();
        if let Some(bytes) = budget {
            // Say once (and again when it changes) which replay speed the budget assumes.
            let rate = rt.replay_rate();
            let key = rate.as_ref().map(|r| r.bytes_per_second);
            if told_rate != Some(key) {
                match &rate {
                    Some(r) => tracing::info!(
                        cluster = %rt.cluster.name, mib_per_second = r.bytes_per_second / 1048576.0, by = %r.measured_by, budget_wal_bytes = bytes,
                        "replay budget: using the replay speed measured"
                    ),
                    None => tracing::info!(
                        cluster = %rt.cluster.name, mib_per_second = crate::config::DEFAULT_REPLAY_BYTES_PER_SECOND / 1048576.0, budget_wal_bytes = bytes,
                        "replay budget: no replay measured yet (a drill measures one): assuming a conservative speed"
                    ),
                }
                told_rate = Some(key);
            }
        }
        if share.is_some_and(|s| wal_volume_due(&newest, durable, s)) {
            tracing::info!(
                cluster = %rt.cluster.name, since = %newest.id, wal_bytes = written,
                backup_bytes = newest.bytes, share, "taking a base backup: the WAL since the newest one exceeds backup_wal_share of its size"
            );
        } else if let Some(bytes) = budget.filter(|b| replay_budget_exceeded(&newest, durable, *b)) {
            if budget_backup_is_the_standbys(written, bytes, rt.standby_offer()) {
                continue;
            }
            tracing::info!(
                cluster = %rt.cluster.name, since = %newest.id, wal_bytes = written, budget_wal_bytes = bytes,
                standby_lag_bytes = ?rt.standby_offer(),
                "taking a base backup from production: the WAL since the newest one would take longer than backup_replay_budget_seconds to replay"
            );
        } else {
            continue;
        }
        last_started = Some(tokio::time::Instant::now());
        if let Err(e) = take(&rt).await {
            tracing::error!(cluster = %rt.cluster.name, error = %e, "WAL-volume base backup failed");
            // Not again at once: a failing backup must not hammer the server.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Takes a backup every `every`, forever.
pub async fn schedule(rt: Arc<ClusterRuntime>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = take(&rt).await {
            tracing::error!(cluster = %rt.cluster.name, error = %e, "scheduled base backup failed");
        }
    }
}

#[cfg(test)]
mod volume_tests {
    use super::*;

    #[test]
    fn a_backup_is_due_once_the_wal_exceeds_the_share_of_the_newest_backup() {
        let b = BackupSummary {
            id: "b".into(),
            cluster: "main".into(),
            system_id: "1".into(),
            timeline: 1,
            start_lsn: Lsn(0x1000_0000),
            stop_lsn: Lsn(0x1000_1000),
            started: store::Timestamp(0),
            finished: store::Timestamp(1),
            bytes: 100 << 20,
            stored_bytes: 10 << 20,
        };
        assert!(!wal_volume_due(&b, Lsn(0x1000_0000 + (49 << 20)), 0.5));
        assert!(wal_volume_due(&b, Lsn(0x1000_0000 + (50 << 20)), 0.5));
        // Never more often than one segment of WAL, however small the database.
        let tiny = BackupSummary { bytes: 1 << 20, ..b.clone() };
        assert!(!wal_volume_due(&tiny, Lsn(0x1000_0000 + (15 << 20)), 0.5));
        // The replay budget: 64 MiB of WAL (2 s at 32 MiB/s), at least a segment.
        assert!(!replay_budget_exceeded(&b, Lsn(0x1000_0000 + (63 << 20)), 64 << 20));
        assert!(replay_budget_exceeded(&b, Lsn(0x1000_0000 + (64 << 20)), 64 << 20));
        assert!(!replay_budget_exceeded(&b, Lsn(0x1000_0000 + (15 << 20)), 1 << 20));
    }

    #[test]
    fn the_budgets_backup_is_the_standbys_only_when_it_is_close_behind_and_delivers() {
        let budget = 64 << 20;
        // No standby offering backups: production's.
        assert!(!budget_backup_is_the_standbys(70 << 20, budget, None));
        // Close behind (≤ half the budget): the standby's.
        assert!(budget_backup_is_the_standbys(70 << 20, budget, Some(32 << 20)));
        // Too far behind: a backup from it would be outside the budget already.
        assert!(!budget_backup_is_the_standbys(70 << 20, budget, Some(33 << 20)));
        // Twice the budget without a backup: production's, whatever the standby says.
        assert!(!budget_backup_is_the_standbys(128 << 20, budget, Some(0)));
    }
}
