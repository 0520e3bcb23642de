//! The backup pipeline and restore.
//!
//! ```text
//! caller thread: read → chunk → batch (8 MiB) ──▶ stage thread: rayon over the batch (chunk id,
//!   dedup lookup, seal new chunks; order kept) → packer → manifest lines ──▶ uploader thread:
//!   put_if_absent(pack) (durable)            finish(): index files → extend retention of
//!   reused packs → "backup" catalog record
//! ```
//!
//! Memory is bounded by the pipeline, not the input: one batch being filled, one being sealed
//! (plus its sealed output), one pack being filled, one queued and one being written —
//! about 8 + 16 + 17 × 3 ≈ 75 MiB at the default sizes — plus the index (≈ 100 bytes per blob
//! in the repository) and the set of blob ids written by this backup.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::backend::ObjectStore;
use crate::chunker::Chunker;
use crate::error::RepoError;
use crate::index::{Index, IndexFile, IndexPack};
use crate::keys::{ChunkId, MasterKeys};
use crate::name::ObjectName;
use crate::pack::{BlobType, FinishedPack, Packer};
use crate::repo::Repository;
use crate::snapshot::{BackupRecord, EntryKind, FileEntry, LineSplitter, TREE_BLOB_SIZE, check_rel_path};
use crate::timestamp::Timestamp;

/// Bytes of plaintext chunks handed to the sealing stage at once.
const BATCH_BYTES: usize = 8 << 20;

/// Runs futures to completion from blocking code: on the runtime the writer was created in,
/// or on a private one if it was created outside any runtime.
#[derive(Clone)]
enum Exec {
    Handle(tokio::runtime::Handle),
    Own(Arc<tokio::runtime::Runtime>),
}

impl Exec {
    fn new() -> Result<Exec, RepoError> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Ok(Exec::Handle(h)),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|r| Exec::Own(Arc::new(r)))
                .map_err(|e| RepoError::Pipeline(format!("cannot start a runtime: {e}"))),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Exec::Handle(h) => h.block_on(f),
            Exec::Own(r) => r.block_on(f),
        }
    }
}

enum Op {
    /// A manifest entry starts; its chunks follow.
    Begin(FileEntry),
    /// The next chunk of the batch belongs to the current entry.
    Chunk,
    /// The current entry is complete.
    End,
}

#[derive(Default)]
struct Batch {
    chunks: Vec<Vec<u8>>,
    ops: Vec<Op>,
    bytes: usize,
}

/// What the stage thread hands back at the end.
struct StageOutput {
    tree: Vec<ChunkId>,
    new_packs: Vec<IndexPack>,
    reused_packs: HashSet<ObjectName>,
    stored_bytes: u64,
}

/// Writes one backup. Create with [`Repository::backup_writer`]; finish with [`BackupWriter::finish`].
///
/// All methods block (they read input and wait for the store): call them from a blocking thread.
pub struct BackupWriter {
    repo: Repository,
    label: String,
    cluster: Option<String>,
    retain_until: Timestamp,
    started: Timestamp,
    batch: Batch,
    pipeline: Option<Pipeline>,
    failed: Option<String>,
    files: u64,
    bytes: u64,
}

struct Pipeline {
    exec: Exec,
    tx: SyncSender<Batch>,
    stage: JoinHandle<Result<StageOutput, RepoError>>,
}

impl BackupWriter {
    pub(crate) fn new(repo: Repository, label: &str, retain_until: Timestamp) -> BackupWriter {
        BackupWriter {
            repo,
            label: label.to_string(),
            cluster: None,
            retain_until,
            started: Timestamp::now(),
            batch: Batch::default(),
            pipeline: None,
            failed: None,
            files: 0,
            bytes: 0,
        }
    }

    /// Names the protected cluster in the record.
    pub fn set_cluster(&mut self, cluster: &str) {
        self.cluster = Some(cluster.to_string());
    }

    /// Sets the start time recorded (vault clock); defaults to the writer's creation.
    pub fn set_started(&mut self, started: Timestamp) {
        self.started = started;
    }

    fn pipeline(&mut self) -> Result<&mut Pipeline, RepoError> {
        if let Some(f) = &self.failed {
            return Err(RepoError::Poisoned(f.clone()));
        }
        if self.pipeline.is_none() {
            let exec = Exec::new()?;
            let (tx, rx) = sync_channel::<Batch>(1);
            let stage = Stage::new(&self.repo, exec.clone(), self.retain_until);
            let stage = std::thread::Builder::new()
                .name("backup-stage".into())
                .spawn(move || stage.run(rx))
                .map_err(|e| RepoError::Pipeline(format!("cannot start the sealing thread: {e}")))?;
            self.pipeline = Some(Pipeline { exec, tx, stage });
        }
        Ok(self.pipeline.as_mut().expect("pipeline just started"))
    }

    /// Sends the current batch to the stage; on failure collects the stage's own error.
    fn send_batch(&mut self) -> Result<(), RepoError> {
        let batch = std::mem::take(&mut self.batch);
        let p = self.pipeline()?;
        if p.tx.send(batch).is_ok() {
            return Ok(());
        }
        let p = self.pipeline.take().expect("pipeline exists");
        drop(p.tx);
        let err = match p.stage.join() {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => RepoError::Pipeline("the sealing thread stopped early".into()),
            Err(_) => RepoError::Pipeline("the sealing thread panicked".into()),
        };
        self.failed = Some(err.to_string());
        Err(err)
    }

    fn push_op(&mut self, op: Op) {
        self.batch.ops.push(op);
    }

    fn push_chunk(&mut self, chunk: Vec<u8>) -> Result<(), RepoError> {
        self.batch.bytes += chunk.len();
        self.batch.chunks.push(chunk);
        self.batch.ops.push(Op::Chunk);
        if self.batch.bytes >= BATCH_BYTES { self.send_batch() } else { Ok(()) }
    }

    fn check_usable(&self, rel_path: &str) -> Result<(), RepoError> {
        if let Some(f) = &self.failed {
            return Err(RepoError::Poisoned(f.clone()));
        }
        check_rel_path(rel_path)
    }

    /// Adds a regular file whose size is known. Fails if the reader yields a different length
    /// (the file changed while being read).
    pub fn add_file(
        &mut self,
        rel_path: &str,
        reader: impl Read,
        size: u64,
        mode: u32,
        mtime: i64,
    ) -> Result<(), RepoError> {
        let n = self.add_stream(rel_path, reader, mode, mtime)?;
        if n != size {
            tracing::warn!(path = rel_path, expected = size, read = n, "file changed size while being read");
        }
        Ok(())
    }

    /// Adds a regular file of unknown size (a member of a tar stream, a pipe). Returns its length.
    pub fn add_stream(
        &mut self,
        rel_path: &str,
        reader: impl Read,
        mode: u32,
        mtime: i64,
    ) -> Result<u64, RepoError> {
        self.check_usable(rel_path)?;
        let policy = self.repo.inner.config.chunker.policy_for(rel_path);
        // The stage adds up chunk lengths into the entry's size.
        self.push_op(Op::Begin(FileEntry {
            path: rel_path.to_string(),
            kind: EntryKind::File,
            size: 0,
            mode,
            mtime,
            target: None,
            chunks: Vec::new(),
        }));
        let mut total = 0u64;
        for chunk in Chunker::new(reader, policy) {
            let chunk = chunk.map_err(|e| RepoError::io(format!("reading {rel_path}"), e))?;
            total += chunk.len() as u64;
            self.push_chunk(chunk)?;
        }
        self.push_op(Op::End);
        self.files += 1;
        self.bytes += total;
        Ok(total)
    }

    /// Adds a directory entry (restored even when empty).
    pub fn add_dir(&mut self, rel_path: &str, mode: u32, mtime: i64) -> Result<(), RepoError> {
        self.check_usable(rel_path)?;
        self.push_op(Op::Begin(FileEntry {
            path: rel_path.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            mode,
            mtime,
            target: None,
            chunks: Vec::new(),
        }));
        self.push_op(Op::End);
        self.files += 1;
        Ok(())
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, rel_path: &str, target: &str, mtime: i64) -> Result<(), RepoError> {
        self.check_usable(rel_path)?;
        self.push_op(Op::Begin(FileEntry {
            path: rel_path.to_string(),
            kind: EntryKind::Symlink,
            size: 0,
            mode: 0o777,
            mtime,
            target: Some(target.to_string()),
            chunks: Vec::new(),
        }));
        self.push_op(Op::End);
        self.files += 1;
        Ok(())
    }

    /// Adds everything under `root` (files, directories, symlinks), in sorted path order.
    /// Files that vanish while walking are skipped (PostgreSQL removes files during a backup).
    pub fn add_tree(&mut self, root: &Path) -> Result<(), RepoError> {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RepoError::io(format!("listing {}", dir.display()), e)),
            };
            let mut names: Vec<String> = Vec::new();
            for e in rd {
                let e = e.map_err(|e| RepoError::io(format!("listing {}", dir.display()), e))?;
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|n| RepoError::BadPath(n.to_string_lossy().into_owned()))?;
                names.push(name);
            }
            names.sort();
            let mut subdirs = Vec::new();
            for name in names {
                let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let path = root.join(&rel_path);
                let meta = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(RepoError::io(format!("reading {}", path.display()), e)),
                };
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                let mode = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    self.add_dir(&rel_path, mode, mtime)?;
                    subdirs.push(rel_path);
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path)
                        .map_err(|e| RepoError::io(format!("reading link {}", path.display()), e))?;
                    let target = target
                        .to_str()
                        .ok_or_else(|| RepoError::BadPath(target.to_string_lossy().into_owned()))?;
                    self.add_symlink(&rel_path, target, mtime)?;
                } else if meta.is_file() {
                    let f = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(RepoError::io(format!("opening {}", path.display()), e)),
                    };
                    self.add_file(
                        &rel_path,
                        std::io::BufReader::with_capacity(1 << 20, f),
                        meta.len(),
                        mode,
                        mtime,
                    )?;
                }
            }
            // Depth-first in sorted order: push in reverse so the smallest name is visited first.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Completes the backup: flushes the last pack, writes index files, extends retention of the
    /// packs it reuses, then writes the "backup" catalog record (last). Returns the record.
    pub fn finish(mut self, now: Timestamp) -> Result<BackupRecord, RepoError> {
        if !self.batch.ops.is_empty() || self.pipeline.is_none() {
            self.send_batch()?;
        }
        let p = self
            .pipeline
            .take()
            .ok_or_else(|| RepoError::Poisoned(self.failed.clone().unwrap_or_default()))?;
        drop(p.tx);
        let out = p.stage.join().map_err(|_| RepoError::Pipeline("the sealing thread panicked".into()))??;
        let repo = self.repo.clone();
        let inner = &repo.inner;
        let store: &dyn ObjectStore = inner.store.as_ref();
        let mut stored_bytes = out.stored_bytes;
        // Index files only after every pack they name is durable (the uploader has finished).
        let files = IndexFile::split(out.new_packs);
        let mut written = Vec::new();
        for f in &files {
            let (name, bytes) = f.seal(&inner.keys, inner.config.zstd_level)?;
            stored_bytes += bytes.len() as u64;
            p.exec.block_on(store.put_if_absent(&name, bytes.into(), self.retain_until))?;
            written.push(name);
        }
        {
            let mut idx = inner.index.write().unwrap_or_else(|p| p.into_inner());
            for (f, name) in files.iter().zip(&written) {
                idx.add_file(f).map_err(|e| RepoError::malformed("new index file", e))?;
                idx.mark_file(name.id);
            }
        }
        // Packs written by earlier backups that this one uses must live as long as it does.
        for pack in &out.reused_packs {
            p.exec.block_on(store.extend_retention(pack, self.retain_until))?;
        }
        let rec = BackupRecord {
            id: random_id()?,
            label: self.label.clone(),
            cluster: self.cluster.clone(),
            started: self.started,
            finished: now,
            retain_until: self.retain_until,
            tree: out.tree,
            files: self.files,
            bytes: self.bytes,
            stored_bytes,
        };
        let body = serde_json::to_value(&rec).map_err(|e| RepoError::malformed("backup record", e))?;
        p.exec.block_on(repo.append_record("backup", body, now, self.retain_until))?;
        Ok(rec)
    }
}

fn random_id() -> Result<String, RepoError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| RepoError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

/// The sealing/packing stage, owned by its thread.
struct Stage {
    keys: MasterKeys,
    level: i32,
    index: Arc<RwLock<Index>>,
    packer: Packer,
    /// Blobs written by this backup (deduplicates within the backup).
    seen: HashSet<ChunkId>,
    reused_packs: HashSet<ObjectName>,
    new_packs: Vec<IndexPack>,
    stored_bytes: u64,
    current: Option<FileEntry>,
    manifest: Vec<u8>,
    tree: Vec<ChunkId>,
    upload_tx: Option<SyncSender<FinishedPack>>,
    uploader: Option<JoinHandle<Result<(), RepoError>>>,
    exec: Exec,
    store: Arc<dyn ObjectStore>,
    retain_until: Timestamp,
}

impl Stage {
    fn new(repo: &Repository, exec: Exec, retain_until: Timestamp) -> Stage {
        let inner = &repo.inner;
        Stage {
            keys: inner.keys.clone(),
            level: inner.config.zstd_level,
            index: inner.index.clone(),
            packer: Packer::new(inner.config.pack_size as usize),
            seen: HashSet::new(),
            reused_packs: HashSet::new(),
            new_packs: Vec::new(),
            stored_bytes: 0,
            current: None,
            manifest: Vec::new(),
            tree: Vec::new(),
            upload_tx: None,
            uploader: None,
            exec,
            store: inner.store.clone(),
            retain_until,
        }
    }

    fn run(mut self, rx: Receiver<Batch>) -> Result<StageOutput, RepoError> {
        let (utx, urx) = sync_channel::<FinishedPack>(1);
        let (exec, store, until) = (self.exec.clone(), self.store.clone(), self.retain_until);
        let uploader = std::thread::Builder::new()
            .name("backup-upload".into())
            .spawn(move || -> Result<(), RepoError> {
                for pack in urx {
                    exec.block_on(store.put_if_absent(&pack.name, pack.bytes, until))?;
                }
                Ok(())
            })
            .map_err(|e| RepoError::Pipeline(format!("cannot start the upload thread: {e}")))?;
        self.upload_tx = Some(utx);
        self.uploader = Some(uploader);
        let result = (|| -> Result<(), RepoError> {
            for batch in rx {
                self.process(batch)?;
            }
            // The manifest's tail, then the last partial pack.
            if !self.manifest.is_empty() {
                let part = std::mem::take(&mut self.manifest);
                self.add_tree_blob(part)?;
            }
            if !self.packer.is_empty() {
                self.flush_pack()?;
            }
            Ok(())
        })();
        // Close the upload queue and wait: every pack is durable once the uploader returns.
        self.upload_tx = None;
        let up = self.uploader.take().map(|h| h.join());
        result?;
        match up {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(RepoError::Pipeline("the upload thread panicked".into())),
            None => {}
        }
        Ok(StageOutput {
            tree: self.tree,
            new_packs: self.new_packs,
            reused_packs: self.reused_packs,
            stored_bytes: self.stored_bytes,
        })
    }

    fn flush_pack(&mut self) -> Result<(), RepoError> {
        let pack = self.packer.finish(&self.keys, self.level)?;
        self.stored_bytes += pack.bytes.len() as u64;
        self.new_packs.push(IndexPack { pack: pack.name.id.to_hex(), blobs: pack.blobs.clone() });
        let tx = self.upload_tx.as_ref().ok_or_else(|| RepoError::Pipeline("upload queue closed".into()))?;
        if tx.send(pack).is_err() {
            // The uploader stopped: report its error.
            self.upload_tx = None;
            if let Some(h) = self.uploader.take() {
                match h.join() {
                    Ok(Err(e)) => return Err(e),
                    _ => return Err(RepoError::Pipeline("the upload thread stopped".into())),
                }
            }
            return Err(RepoError::Pipeline("the upload thread stopped".into()));
        }
        Ok(())
    }

    /// Adds one blob unless this backup or the index already has it.
    fn add_blob(
        &mut self,
        id: ChunkId,
        blob_type: BlobType,
        sealed: Option<Vec<u8>>,
        raw_len: usize,
    ) -> Result<(), RepoError> {
        if self.seen.contains(&id) {
            return Ok(());
        }
        {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            if let Some(loc) = idx.get(&id) {
                self.reused_packs.insert(idx.pack_name(loc.pack));
                return Ok(());
            }
        }
        // The parallel step sealed every blob not yet known; index and `seen` only grow.
        let sealed =
            sealed.ok_or_else(|| RepoError::Pipeline("internal: a new blob was not sealed".into()))?;
        self.seen.insert(id);
        self.packer.add(id, blob_type, &sealed, raw_len as u64);
        if self.packer.is_full() {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn add_tree_blob(&mut self, plain: Vec<u8>) -> Result<(), RepoError> {
        let id = self.keys.chunk_id(&plain);
        let sealed = self.keys.seal_checked(&plain, self.level)?;
        self.tree.push(id);
        self.add_blob(id, BlobType::Tree, Some(sealed), plain.len())
    }

    fn process(&mut self, batch: Batch) -> Result<(), RepoError> {
        let Batch { chunks, ops, .. } = batch;
        // Parallel: ids for every chunk; seal only chunks nobody has stored yet.
        let sealed: Vec<(ChunkId, Option<Vec<u8>>)> = {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            let (keys, level, seen) = (&self.keys, self.level, &self.seen);
            chunks
                .par_iter()
                .map(|c| {
                    let id = keys.chunk_id(c);
                    if seen.contains(&id) || idx.contains(&id) {
                        return Ok((id, None));
                    }
                    keys.seal_checked(c, level).map(|s| (id, Some(s)))
                })
                .collect::<Result<Vec<_>, RepoError>>()?
        };
        let mut ids = Vec::with_capacity(sealed.len());
        for ((id, s), c) in sealed.into_iter().zip(&chunks) {
            ids.push((id, c.len()));
            self.add_blob(id, BlobType::Data, s, c.len())?;
        }
        drop(chunks);
        let mut next = ids.into_iter();
        for op in ops {
            match op {
                Op::Begin(e) => self.current = Some(e),
                Op::Chunk => {
                    let (id, len) = next
                        .next()
                        .ok_or_else(|| RepoError::Pipeline("internal: chunk count mismatch".into()))?;
                    if let Some(cur) = self.current.as_mut() {
                        cur.chunks.push(id);
                        cur.size += len as u64;
                    }
                }
                Op::End => {
                    if let Some(e) = self.current.take() {
                        serde_json::to_writer(&mut self.manifest, &e)
                            .map_err(|e| RepoError::malformed("manifest entry", e))?;
                        self.manifest.push(b'\n');
                        while self.manifest.len() >= TREE_BLOB_SIZE {
                            let rest = self.manifest.split_off(TREE_BLOB_SIZE);
                            let part = std::mem::replace(&mut self.manifest, rest);
                            self.add_tree_blob(part)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Blobs read and verified.
    pub blobs: u64,
}

/// A run of blobs stored back to back in one pack: read with one range request.
struct Run {
    pack: ObjectName,
    start: u64,
    end: u64,
    blobs: Vec<(ChunkId, u64, u64)>,
}

/// Restores `rec` into `target`.
pub(crate) async fn restore(
    repo: &Repository,
    rec: &BackupRecord,
    target: &Path,
) -> Result<RestoreStats, RepoError> {
    tokio::fs::create_dir_all(target)
        .await
        .map_err(|e| RepoError::io(format!("creating {}", target.display()), e))?;
    let mut stats = RestoreStats::default();
    let mut dirs: Vec<FileEntry> = Vec::new();
    let mut split = LineSplitter::default();
    for t in &rec.tree {
        let bytes = repo.read_blob(t).await?;
        for e in split.feed(&bytes)? {
            restore_entry(repo, &e, target, &mut stats).await?;
            if e.kind == EntryKind::Dir {
                dirs.push(FileEntry { chunks: Vec::new(), ..e });
            }
        }
    }
    split.finish()?;
    // Directory modes and times last: writing files into them would change their mtime.
    for d in dirs.iter().rev() {
        let path = target.join(&d.path);
        set_mode_mtime(&path, d.mode, d.mtime).await?;
    }
    Ok(stats)
}

async fn set_mode_mtime(path: &Path, mode: u32, mtime: i64) -> Result<(), RepoError> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
        std::fs::File::open(&p)?.set_modified(t)
    })
    .await
    .map_err(|e| RepoError::Pipeline(e.to_string()))?
    .map_err(|e| RepoError::io(format!("setting mode and mtime of {}", path.display()), e))
}

async fn restore_entry(
    repo: &Repository,
    e: &FileEntry,
    target: &Path,
    stats: &mut RestoreStats,
) -> Result<(), RepoError> {
    let path = target.join(&e.path);
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |err: std::io::Error| RepoError::io(what, err)
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io("creating"))?;
    }
    match e.kind {
        EntryKind::Dir => {
            tokio::fs::create_dir_all(&path).await.map_err(io("creating"))?;
            stats.dirs += 1;
        }
        EntryKind::Symlink => {
            let t = e.target.as_deref().ok_or_else(|| {
                RepoError::malformed("backup manifest", format!("symlink {} has no target", e.path))
            })?;
            let _ = tokio::fs::remove_file(&path).await;
            tokio::fs::symlink(t, &path).await.map_err(io("creating symlink"))?;
            stats.symlinks += 1;
        }
        EntryKind::File => {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::File::create(&path).await.map_err(io("creating"))?;
            // Group consecutive blobs that sit back to back in one pack.
            let mut runs: Vec<Run> = Vec::new();
            {
                let idx = repo.inner.index.read().unwrap_or_else(|p| p.into_inner());
                for id in &e.chunks {
                    let loc = idx.get(id).ok_or_else(|| RepoError::BlobNotFound(id.to_hex()))?;
                    let pack = idx.pack_name(loc.pack);
                    let (s, l) = (loc.offset as u64, loc.length as u64);
                    match runs.last_mut() {
                        Some(r) if r.pack == pack && r.end == s && r.end - r.start < (16 << 20) => {
                            r.end = s + l;
                            r.blobs.push((*id, s, l));
                        }
                        _ => runs.push(Run { pack, start: s, end: s + l, blobs: vec![(*id, s, l)] }),
                    }
                }
            }
            let mut written = 0u64;
            for run in runs {
                let bytes = repo.inner.store.get_range(&run.pack, run.start..run.end).await?;
                let keys = repo.inner.keys.clone();
                let pack = run.pack;
                let start = run.start;
                let blobs = run.blobs;
                // Decrypt, decompress and verify off the async threads.
                let plains = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, RepoError> {
                    let mut out = Vec::with_capacity(blobs.len());
                    for (id, s, l) in blobs {
                        let env = &bytes[(s - start) as usize..(s - start + l) as usize];
                        let plain = keys.open_named(env, format_args!("blob {id} in {pack}"))?;
                        if keys.chunk_id(&plain) != id {
                            return Err(RepoError::ChunkMismatch { id: id.to_hex(), pack });
                        }
                        out.push(plain);
                    }
                    Ok(out)
                })
                .await
                .map_err(|e| RepoError::Pipeline(e.to_string()))??;
                for p in plains {
                    f.write_all(&p).await.map_err(io("writing"))?;
                    written += p.len() as u64;
                    stats.blobs += 1;
                }
            }
            f.flush().await.map_err(io("writing"))?;
            drop(f);
            if written != e.size {
                return Err(RepoError::malformed(
                    "backup manifest",
                    format!("{} should hold {} bytes, chunks hold {written}", e.path, e.size),
                ));
            }
            set_mode_mtime(&path, e.mode, e.mtime).await?;
            stats.files += 1;
            stats.bytes += written;
        }
    }
    Ok(())
}
