//! `Repository`: keys, config, index and catalog over an [`ObjectStore`]; backups and restore.
//!
//! Writers follow the ordering rules of docs/vault-format.md: keys and config before anything
//! sealed; packs durable before the index naming them; index before the record that
//! references its blobs; a backup's record last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{ObjectStore, StoreError};
use crate::catalog::CatalogRecord;
use crate::chunker::ChunkerConfig;
use crate::error::RepoError;
use crate::index::{self, Index};
use crate::keys::{ChunkId, KeysFile, MasterKeys};
use crate::name::{ObjectKind, ObjectName};
use crate::pack::DEFAULT_PACK_SIZE;
use crate::snapshot::{BackupRecord, FileEntry, LineSplitter};
use crate::timestamp::Timestamp;

/// The most bytes of one pack [`Repository::read_file_range`] reads in one request.
const RUN_BYTES: u64 = 16 << 20;

/// Envelopes back to back in one pack, read with one ranged read.
struct BlobRun {
    pack: ObjectName,
    start: u64,
    end: u64,
    blobs: Vec<RunBlob>,
}

/// One of them: where its envelope is in the pack and its plaintext span in the file.
struct RunBlob {
    id: ChunkId,
    offset: u64,
    length: u64,
    c_start: u64,
    c_end: u64,
}

pub use crate::backup::{BackupWriter, RestoreStats};

/// The plain-JSON content of the `config/<hash>` object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Format version, 1.
    pub version: u32,
    /// 32 random hex digits.
    pub repository: String,
    /// When the repository was created (vault clock).
    pub created: Timestamp,
    /// Chunking parameters.
    pub chunker: ChunkerConfig,
    /// Target pack size in bytes (default 16 MiB).
    #[serde(default = "default_pack_size")]
    pub pack_size: u64,
    /// zstd level for envelopes (default 3; 0 = no compression).
    #[serde(default = "default_level")]
    pub zstd_level: i32,
}

fn default_pack_size() -> u64 {
    DEFAULT_PACK_SIZE as u64
}

fn default_level() -> i32 {
    crate::envelope::DEFAULT_LEVEL
}

impl RepoConfig {
    fn validate(&self) -> Result<(), RepoError> {
        let what = "repository config";
        if self.version != 1 {
            return Err(RepoError::malformed(what, format!("unsupported version {}", self.version)));
        }
        self.chunker.validate().map_err(|e| RepoError::malformed(what, e))?;
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(RepoError::malformed(what, "pack_size must be between 1 MiB and 1 GiB"));
        }
        if !(0..=19).contains(&self.zstd_level) {
            return Err(RepoError::malformed(what, "zstd_level must be between 0 and 19"));
        }
        Ok(())
    }
}

/// Options for [`Repository::init_with`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunker parameters.
    pub chunker: ChunkerConfig,
    /// Target pack size.
    pub pack_size: u64,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerConfig::default(),
            pack_size: default_pack_size(),
            zstd_level: default_level(),
        }
    }
}

/// An open repository. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) keys: MasterKeys,
    pub(crate) config: RepoConfig,
    pub(crate) index: Arc<RwLock<Index>>,
    catalog: Mutex<BTreeMap<ObjectName, CatalogRecord>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("id", &self.inner.config.repository).finish_non_exhaustive()
    }
}

fn random_hex16() -> Result<String, RepoError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| RepoError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

impl Repository {
    /// Creates a repository: fresh master keys wrapped to `recipients` (the vault's own and at
    /// least one escrow recipient), then the config. Both objects are retained until `retain_until`.
    pub async fn init(
        store: Arc<dyn ObjectStore>,
        recipients: &[age::x25519::Recipient],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> Result<Repository, RepoError> {
        Self::init_with(store, recipients, now, retain_until, InitOptions::default()).await
    }

    /// [`Repository::init`] with non-default chunking, pack size or compression.
    pub async fn init_with(
        store: Arc<dyn ObjectStore>,
        recipients: &[age::x25519::Recipient],
        now: Timestamp,
        retain_until: Timestamp,
        options: InitOptions,
    ) -> Result<Repository, RepoError> {
        if let Some(existing) = store.list(ObjectKind::Config).await?.first() {
            return Err(RepoError::AlreadyInitialised(existing.name));
        }
        let config = RepoConfig {
            version: 1,
            repository: random_hex16()?,
            created: now,
            chunker: options.chunker,
            pack_size: options.pack_size,
            zstd_level: options.zstd_level,
        };
        config.validate()?;
        let keys = MasterKeys::generate()?;
        let keys_file = KeysFile::wrap(&keys, &config.repository, now, recipients)?;
        // Keys first: a config without keys would be a repository nobody can ever open.
        let kb = keys_file.to_bytes();
        store.put_if_absent(&ObjectName::for_bytes(ObjectKind::Keys, &kb), kb.into(), retain_until).await?;
        let cb = serde_json::to_vec_pretty(&config).map_err(|e| RepoError::malformed("config", e))?;
        store.put_if_absent(&ObjectName::for_bytes(ObjectKind::Config, &cb), cb.into(), retain_until).await?;
        Ok(Repository::from_parts(store, keys, config))
    }

    fn from_parts(store: Arc<dyn ObjectStore>, keys: MasterKeys, config: RepoConfig) -> Repository {
        Repository {
            inner: Arc::new(Inner {
                store,
                keys,
                config,
                index: Arc::new(RwLock::new(Index::default())),
                catalog: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Opens a repository with any one of `identities` (the vault's or an escrow identity),
    /// and loads every index file.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        identities: &[age::x25519::Identity],
    ) -> Result<Repository, RepoError> {
        let keys_objects = store.list(ObjectKind::Keys).await?;
        let mut opened = None;
        for meta in &keys_objects {
            let bytes = store.get(&meta.name).await?;
            meta.name.verify(&bytes).map_err(StoreError::from)?;
            let Ok(file) = KeysFile::from_bytes(&bytes) else {
                tracing::warn!(keys = %meta.name, "skipping malformed keys object");
                continue;
            };
            match file.unwrap_with(identities) {
                Ok(Some(k)) => {
                    opened = Some((k, file.repository.clone()));
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(keys = %meta.name, error = %e, "skipping unreadable keys object"),
            }
        }
        let Some((keys, repo_id)) = opened else {
            if store.list(ObjectKind::Config).await?.is_empty() {
                return Err(RepoError::NotInitialised);
            }
            return Err(RepoError::NoMatchingKey { identities: identities.len(), keys: keys_objects.len() });
        };
        let mut configs = Vec::new();
        for meta in store.list(ObjectKind::Config).await? {
            let bytes = store.get(&meta.name).await?;
            meta.name.verify(&bytes).map_err(StoreError::from)?;
            let config: RepoConfig = serde_json::from_slice(&bytes)
                .map_err(|e| RepoError::malformed(format!("config {}", meta.name), e))?;
            // A config for another repository id cannot be ours: ignore what someone slipped in.
            if config.repository == repo_id {
                configs.push(config);
            }
        }
        let config = match configs.len() {
            0 => return Err(RepoError::NotInitialised),
            1 => configs.remove(0),
            n => return Err(RepoError::AmbiguousConfig(n)),
        };
        config.validate()?;
        let repo = Repository::from_parts(store, keys, config);
        repo.refresh_index().await?;
        Ok(repo)
    }

    /// Loads index files written since open (by other writers sharing the store).
    /// Returns the index files that could not be read.
    pub async fn refresh_index(&self) -> Result<Vec<(ObjectName, String)>, RepoError> {
        index::load_new(self.inner.store.as_ref(), &self.inner.keys, &self.inner.index).await
    }

    /// The repository id (32 hex digits).
    pub fn id(&self) -> &str {
        &self.inner.config.repository
    }

    /// The object store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The repository config.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The master keys (for `check` and tools; never log them).
    pub fn keys(&self) -> &MasterKeys {
        &self.inner.keys
    }

    /// Number of blobs in the in-memory index.
    pub fn index_len(&self) -> usize {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Appends a catalog record. `written_at` and `retain_until` come from the vault's clock.
    pub async fn append_record(
        &self,
        kind: &str,
        body: serde_json::Value,
        written_at: Timestamp,
        retain_until: Timestamp,
    ) -> Result<ObjectName, RepoError> {
        self.append_record_by(kind, body, written_at, retain_until, None).await
    }

    /// [`Repository::append_record`] on behalf of a client token (`author`: its id), which the
    /// record keeps so that readers can tell client-written records from the vault's own.
    pub async fn append_record_by(
        &self,
        kind: &str,
        body: serde_json::Value,
        written_at: Timestamp,
        retain_until: Timestamp,
        author: Option<&str>,
    ) -> Result<ObjectName, RepoError> {
        let mut rec = CatalogRecord::new(kind, body, written_at)?;
        rec.author = author.map(str::to_string);
        let (name, bytes) = rec.seal(&self.inner.keys, self.inner.config.zstd_level)?;
        self.inner.store.put_if_absent(&name, bytes.into(), retain_until).await?;
        self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner()).insert(name, rec);
        Ok(name)
    }

    /// Every catalog record, sorted by `(written_at, seq, name)`. Records already read are cached;
    /// records no longer in the store (removed by a quorum deletion) leave the cache. A record
    /// that cannot be read or opened is skipped and logged, so that one damaged object does
    /// not stop the vault; `check` names it.
    pub async fn records(&self) -> Result<Vec<(ObjectName, CatalogRecord)>, RepoError> {
        let listed = self.inner.store.list(ObjectKind::Catalog).await?;
        let present: BTreeSet<ObjectName> = listed.iter().map(|m| m.name).collect();
        self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner()).retain(|n, _| present.contains(n));
        for meta in listed {
            if self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&meta.name) {
                continue;
            }
            let opened = match self.inner.store.get(&meta.name).await {
                Ok(bytes) => CatalogRecord::open(&self.inner.keys, &meta.name, &bytes),
                Err(e) => Err(e.into()),
            };
            match opened {
                Ok(rec) => {
                    self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner()).insert(meta.name, rec);
                }
                Err(e) => {
                    tracing::error!(object = %meta.name, error = %e, "unreadable catalog record skipped; run `holdfast vault check`");
                }
            }
        }
        let cache = self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(ObjectName, CatalogRecord)> = cache.iter().map(|(n, r)| (*n, r.clone())).collect();
        out.sort_by_key(|(name, rec)| (rec.order_key(), *name));
        Ok(out)
    }

    /// Starts a backup. The writer's methods block: call them from a blocking thread
    /// (`tokio::task::spawn_blocking`) or a plain thread, never from inside an async task.
    pub fn backup_writer(&self, label: &str, retain_until: Timestamp) -> BackupWriter {
        BackupWriter::new(self.clone(), label, retain_until)
    }

    /// Every backup record, oldest first.
    pub async fn backups(&self) -> Result<Vec<BackupRecord>, RepoError> {
        let mut out = Vec::new();
        for (name, rec) in self.records().await? {
            if rec.kind == "backup" {
                let b: BackupRecord = serde_json::from_value(rec.body)
                    .map_err(|e| RepoError::malformed(format!("backup record {name}"), e))?;
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Finds a backup by id.
    pub async fn backup(&self, backup_id: &str) -> Result<BackupRecord, RepoError> {
        self.backups()
            .await?
            .into_iter()
            .find(|b| b.id == backup_id)
            .ok_or_else(|| RepoError::NoSuchBackup(backup_id.to_string()))
    }

    /// Restores a backup into `target` (created if missing; existing files are overwritten).
    pub async fn restore(&self, backup_id: &str, target: &Path) -> Result<RestoreStats, RepoError> {
        let rec = self.backup(backup_id).await?;
        // The backup may come from another writer sharing the store: load its index files.
        self.refresh_index().await?;
        crate::backup::restore(self, &rec, target).await
    }

    /// Reads one blob, checks it against its id, and returns the plaintext.
    pub async fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let (pack, loc) = {
            let idx = self.inner.index.read().unwrap_or_else(|p| p.into_inner());
            let loc = idx.get(id).ok_or_else(|| RepoError::BlobNotFound(id.to_hex()))?;
            (idx.pack_name(loc.pack), loc)
        };
        let env = self
            .inner
            .store
            .get_range(&pack, loc.offset as u64..loc.offset as u64 + loc.length as u64)
            .await?;
        self.open_blob(id, pack, &env)
    }

    /// Opens one blob's envelope read from `pack` and checks the plaintext against its id.
    fn open_blob(&self, id: &ChunkId, pack: ObjectName, env: &[u8]) -> Result<Vec<u8>, RepoError> {
        let plain = self.inner.keys.open_named(env, format_args!("blob {id} in {pack}"))?;
        if self.inner.keys.chunk_id(&plain) != *id {
            return Err(RepoError::ChunkMismatch { id: id.to_hex(), pack });
        }
        Ok(plain)
    }

    /// Plaintext bytes `[offset, offset + len)` of a file of a backup (clipped to its size),
    /// read chunk by chunk; every chunk is checked against its id. Restore over the API uses
    /// it, so the reader needs no keys.
    pub async fn read_file_range(
        &self,
        entry: &FileEntry,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RepoError> {
        let end = offset.saturating_add(len).min(entry.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let lengths = match self.chunk_lengths(entry) {
            Ok(l) => l,
            Err(_) => {
                // Written by another process since the index was loaded.
                self.refresh_index().await?;
                self.chunk_lengths(entry).map_err(|id| RepoError::BlobNotFound(id.to_hex()))?
            }
        };
        self.read_chunks(entry, &lengths, offset, end).await
    }

    /// Plaintext length of every chunk of `entry`, or the first chunk the index lacks.
    fn chunk_lengths(&self, entry: &FileEntry) -> Result<Vec<u64>, ChunkId> {
        let idx = self.inner.index.read().unwrap_or_else(|p| p.into_inner());
        entry.chunks.iter().map(|id| idx.get(id).map(|l| l.raw_length as u64).ok_or(*id)).collect()
    }

    async fn read_chunks(
        &self,
        entry: &FileEntry,
        lengths: &[u64],
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, RepoError> {
        // The chunks overlapping [offset, end), with their plaintext span in the file.
        let mut wanted = Vec::new();
        let mut pos = 0u64;
        for (id, &n) in entry.chunks.iter().zip(lengths) {
            let (c_start, c_end) = (pos, pos + n);
            pos = c_end;
            if c_end <= offset {
                continue;
            }
            if c_start >= end {
                break;
            }
            wanted.push((*id, c_start, c_end));
        }
        // Envelopes that sit back to back in one pack are fetched with one ranged read (up to
        // RUN_BYTES): on an object store every read is a request, and chunk by chunk a 500 MB
        // restore from Ceph RGW made ~4,500 GETs and took 1.7× pgBackRest's time
        // (bench/s3.sh). The plaintext of the whole read is at most RUN_BYTES / compression
        // larger than the range asked for, and is dropped chunk by chunk as it is copied.
        let mut runs: Vec<BlobRun> = Vec::new();
        {
            let idx = self.inner.index.read().unwrap_or_else(|p| p.into_inner());
            for &(id, c_start, c_end) in &wanted {
                let unreadable = |cause: String| RepoError::ChunkUnreadable {
                    chunk: id.to_hex(),
                    file: entry.path.clone(),
                    cause,
                };
                let loc = idx
                    .get(&id)
                    .ok_or_else(|| unreadable(format!("blob {} is not in the index", id.to_hex())))?;
                let pack = idx.pack_name(loc.pack);
                let (s, l) = (loc.offset as u64, loc.length as u64);
                let blob = RunBlob { id, offset: s, length: l, c_start, c_end };
                match runs.last_mut() {
                    Some(r) if r.pack == pack && r.end == s && r.end - r.start < RUN_BYTES => {
                        r.end = s + l;
                        r.blobs.push(blob);
                    }
                    _ => runs.push(BlobRun { pack, start: s, end: s + l, blobs: vec![blob] }),
                }
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for run in runs {
            let fetched = self.inner.store.get_range(&run.pack, run.start..run.end).await;
            for b in &run.blobs {
                let read = match &fetched {
                    Ok(bytes) => {
                        let at = (b.offset - run.start) as usize;
                        match bytes.get(at..at + b.length as usize) {
                            Some(env) => self.open_blob(&b.id, run.pack, env),
                            None => Err(RepoError::Store(StoreError::BadRange {
                                name: run.pack,
                                start: b.offset,
                                end: b.offset + b.length,
                                size: run.start + bytes.len() as u64,
                            })),
                        }
                    }
                    // The run could not be read: read this chunk alone, so that a failure
                    // names the very chunk (and a passing fault may have passed).
                    Err(_) => self.read_blob(&b.id).await,
                };
                let plain = read.map_err(|e| match e {
                    // Damage (not a passing I/O failure): name the chunk, so the caller can find
                    // backups that do not use it.
                    RepoError::Tampered { .. }
                    | RepoError::Malformed { .. }
                    | RepoError::ChunkMismatch { .. }
                    | RepoError::BlobNotFound(_)
                    | RepoError::Store(StoreError::NotFound(_) | StoreError::BadRange { .. }) => {
                        RepoError::ChunkUnreadable {
                            chunk: b.id.to_hex(),
                            file: entry.path.clone(),
                            cause: e.to_string(),
                        }
                    }
                    e => e,
                })?;
                if plain.len() as u64 != b.c_end - b.c_start {
                    return Err(RepoError::malformed(
                        "backup manifest",
                        format!(
                            "chunk {} of {} is {} bytes, the index says {}",
                            b.id,
                            entry.path,
                            plain.len(),
                            b.c_end - b.c_start
                        ),
                    ));
                }
                let from = offset.saturating_sub(b.c_start) as usize;
                let to = (end.min(b.c_end) - b.c_start) as usize;
                out.extend_from_slice(&plain[from..to]);
            }
        }
        if (out.len() as u64) != end - offset {
            return Err(RepoError::malformed(
                "backup manifest",
                format!("{}: chunks hold {pos} bytes, the manifest says {}", entry.path, entry.size),
            ));
        }
        Ok(out)
    }

    /// Streams a backup's manifest entries to `f`, in order.
    pub async fn for_each_entry(
        &self,
        rec: &BackupRecord,
        mut f: impl FnMut(FileEntry) -> Result<(), RepoError>,
    ) -> Result<(), RepoError> {
        let mut split = LineSplitter::default();
        for t in &rec.tree {
            let bytes = self.read_blob(t).await?;
            for e in split.feed(&bytes)? {
                f(e)?;
            }
        }
        split.finish()
    }

    /// Every pack holding a blob used by any of `backups` (manifests and file content): the
    /// set the vault's retention must keep.
    pub async fn referenced_packs(
        &self,
        backups: &[BackupRecord],
    ) -> Result<BTreeSet<ObjectName>, RepoError> {
        self.refresh_index().await?;
        let mut ids: BTreeSet<ChunkId> = BTreeSet::new();
        for b in backups {
            ids.extend(b.tree.iter().copied());
            self.for_each_entry(b, |e| {
                ids.extend(e.chunks);
                Ok(())
            })
            .await?;
        }
        let idx = self.inner.index.read().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeSet::new();
        for id in ids {
            let loc = idx.get(&id).ok_or_else(|| RepoError::BlobNotFound(id.to_hex()))?;
            out.insert(idx.pack_name(loc.pack));
        }
        Ok(out)
    }
}
