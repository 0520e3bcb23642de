//! `AuditLog`: the gate's durable local spool. An append is written and fsynced before it is
//! acknowledged; a shipper task sends signed batches to the vault and marks records shipped
//! only after the vault answered.
//!
//! On disk (one directory per gate):
//! - `NNNNNNNNNNNNNNNNNNNN.jsonl` — segments named by their first seq (20 digits), one record
//!   per line; only the last one is ever written to;
//! - `shipped.json` — seq, hash and time of the last record the vault acknowledged (replaced
//!   atomically; being behind only means a batch is sent twice, which `verify` accepts);
//! - `gate` — the gate id the chain is shipped under (a chain never changes gates);
//! - `lock` — the pid of the process using the spool.
//!
//! The directory is created 0700 and every file 0600: the spool holds SQL text.
//!
//! Appends go through one writer thread that takes every request waiting, writes them in one
//! `write` and one `fsync` (group commit), then answers each.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::AuditError;
use crate::event::{Event, EventKind};
use crate::record::{Digest, Record};
use crate::time::AuditTime;

/// Tuning of the spool and the shipper.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Unshipped bytes allowed on disk; beyond it `append` answers [`AuditError::SpoolFull`].
    pub max_pending_bytes: u64,
    /// Records per shipped batch at most.
    pub batch_max_records: usize,
    /// Bytes of records per batch at most (the vault's request limit is 64 MiB by default).
    pub batch_max_bytes: u64,
    /// How often the shipper sends what has accumulated.
    pub ship_interval: Duration,
    /// One record's size limit (its JSON line).
    pub max_record_bytes: u64,
    /// A new segment file is started past this size.
    pub segment_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_pending_bytes: 256 << 20,
            batch_max_records: 500,
            batch_max_bytes: 4 << 20,
            ship_interval: Duration::from_millis(200),
            max_record_bytes: 256 << 10,
            segment_bytes: 16 << 20,
        }
    }
}

impl SpoolOptions {
    fn validate(&self) -> Result<(), AuditError> {
        let bad = |m: &str| Err(AuditError::Options(m.to_string()));
        if self.batch_max_records == 0 {
            return bad("batch_max_records must be at least 1");
        }
        if self.max_record_bytes < 1024 {
            return bad("max_record_bytes must be at least 1024");
        }
        if self.max_pending_bytes < self.max_record_bytes {
            return bad("max_pending_bytes must be at least max_record_bytes");
        }
        if self.batch_max_bytes < self.max_record_bytes {
            return bad(
                "batch_max_bytes must be at least max_record_bytes, or a large record could never ship",
            );
        }
        if self.ship_interval.is_zero() {
            return bad("ship_interval must be positive");
        }
        Ok(())
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RecordRef {
    pub seq: u64,
    pub hash: Digest,
    pub time: AuditTime,
}

/// The spool's state, for the gate's status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpoolStatus {
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub max_pending_bytes: u64,
    pub last_seq: u64,
    pub shipped_seq: u64,
    pub last_ship_error: Option<String>,
    pub last_shipped_at: Option<AuditTime>,
    /// Set once a write failed: the log accepts nothing more.
    pub failed: Option<String>,
    pub public_key: String,
}

pub(crate) struct Shared {
    pub(crate) last_seq: u64,
    pub(crate) shipped: Position,
    pub(crate) pending_bytes: u64,
    /// Segment first seq → path.
    pub(crate) segments: BTreeMap<u64, PathBuf>,
    pub(crate) last_ship_error: Option<String>,
    pub(crate) last_shipped_at: Option<AuditTime>,
    pub(crate) failed: Option<String>,
}

/// A point in the chain: the last record's seq, hash and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Position {
    pub(crate) seq: u64,
    pub(crate) hash: Digest,
    pub(crate) time: AuditTime,
}

struct Request {
    event: Event,
    reply: tokio::sync::oneshot::Sender<Result<RecordRef, AuditError>>,
}

pub(crate) struct Inner {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) shared: Arc<Mutex<Shared>>,
    pub(crate) key: SigningKey,
    pub(crate) dir: PathBuf,
    pub(crate) opts: SpoolOptions,
}

impl Drop for Inner {
    /// Stops the writer and waits for it, so the spool is free to open again at once.
    fn drop(&mut self) {
        self.tx.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.get_mut().unwrap_or_else(|p| p.into_inner()).take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

impl Inner {
    pub(crate) fn shared(&self) -> MutexGuard<'_, Shared> {
        lock_shared(&self.shared)
    }
}

fn lock_shared(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gate's audit log: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct AuditLog {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("public_key", &crate::batch::key_hex(&self.public_key()))
            .finish_non_exhaustive()
    }
}

pub(crate) const SHIPPED_FILE: &str = "shipped.json";
pub(crate) const GATE_FILE: &str = "gate";
const LOCK_FILE: &str = "lock";

pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Spool directories open in this process (the lock file only tells processes apart).
static OPEN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn take_lock(dir: &Path) -> Result<(), AuditError> {
    let canonical = dir.canonicalize().map_err(|e| AuditError::io("cannot resolve", dir, e))?;
    let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if open.contains(&canonical) {
        return Err(AuditError::InUse { path: dir.into(), pid: std::process::id() });
    }
    let lock = dir.join(LOCK_FILE);
    if let Ok(text) = std::fs::read_to_string(&lock)
        && let Ok(pid) = text.trim().parse::<u32>()
        && pid != std::process::id()
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        return Err(AuditError::InUse { path: dir.into(), pid });
    }
    // Absent, ours from an earlier open in this process, or left by a process that is gone.
    write_atomically(dir, LOCK_FILE, format!("{}\n", std::process::id()).as_bytes())?;
    open.push(canonical);
    Ok(())
}

fn release_lock(dir: &Path) {
    if let Ok(c) = dir.canonicalize() {
        OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| *d != c);
    }
}

/// Writes `name` in `dir` through a temporary file, fsync and rename, then fsyncs the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AuditError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = private_file(&tmp).map_err(|e| AuditError::io("cannot create", &tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| AuditError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| AuditError::io("cannot rename into place", &path, e))?;
    sync_dir(dir)
}

/// Creates (or truncates) a file only its owner can read: the spool holds SQL text.
fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("cannot fsync the directory", dir, e))
}

/// What recovery found in the segments.
struct Recovered {
    last: Position,
    segments: BTreeMap<u64, PathBuf>,
    pending_bytes: u64,
    /// (segment, bytes dropped) of an unacknowledged torn tail.
    torn: Option<(PathBuf, u64)>,
    current_len: u64,
}

fn recover(dir: &Path, shipped: Position) -> Result<Recovered, AuditError> {
    let mut segments = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| AuditError::io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| AuditError::io("cannot list", dir, e))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.insert(first, entry.path());
        }
    }
    let mut last: Option<Position> = None;
    let mut pending_bytes = 0u64;
    let mut torn = None;
    let mut current_len = 0u64;
    let count = segments.len();
    for (i, (&first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| AuditError::io("cannot read", path, e))?;
        let corrupt = |line: usize, why: String| AuditError::Corrupt { path: path.clone(), line, why };
        let mut pos = 0usize;
        let mut line_no = 0usize;
        let mut expect_seq = first;
        let mut valid_end = 0usize;
        while pos < bytes.len() {
            line_no += 1;
            let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                // A write that never completed: no newline, never acknowledged.
                if !is_last {
                    return Err(corrupt(
                        line_no,
                        "an incomplete line in a segment that is not the last".into(),
                    ));
                }
                break;
            };
            let line = &bytes[pos..pos + nl];
            let checked = serde_json::from_slice::<Record>(line).map_err(|e| e.to_string()).and_then(|r| {
                if !r.hash_is_valid() {
                    return Err(format!("record seq {}: its hash does not match its content", r.seq));
                }
                if r.seq != expect_seq {
                    return Err(format!("seq {} where seq {expect_seq} belongs", r.seq));
                }
                match last {
                    Some(p) if r.prev != p.hash => {
                        Err(format!("record seq {} does not follow seq {} (prev hash differs)", r.seq, p.seq))
                    }
                    None if r.seq == 1 && r.prev != Digest::ZERO => {
                        Err("record seq 1 does not start a chain".into())
                    }
                    None if r.seq == shipped.seq + 1 && r.prev != shipped.hash => Err(format!(
                        "record seq {} does not follow the last shipped record (prev hash differs)",
                        r.seq
                    )),
                    _ => Ok(r),
                }
            });
            match checked {
                Ok(r) => {
                    if r.seq > shipped.seq {
                        pending_bytes += nl as u64 + 1;
                    }
                    last = Some(Position { seq: r.seq, hash: r.hash, time: r.time });
                    expect_seq += 1;
                    pos += nl + 1;
                    valid_end = pos;
                }
                Err(why) => {
                    // Only an unacknowledged tail may be dropped: the last segment, and nothing
                    // valid after it (a torn multi-record write leaves only garbage behind it).
                    if !is_last || later_record_is_valid(&bytes[pos + nl + 1..]) {
                        return Err(corrupt(line_no, why));
                    }
                    break;
                }
            }
        }
        if valid_end < bytes.len() {
            torn = Some((path.clone(), (bytes.len() - valid_end) as u64));
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| AuditError::io("cannot open", path, e))?;
            f.set_len(valid_end as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| AuditError::io("cannot truncate the torn tail of", path, e))?;
        }
        if valid_end == 0 && !is_last {
            return Err(corrupt(1, "an empty segment that is not the last".into()));
        }
        if valid_end == 0 {
            // An empty last segment: created at a rollover; it must continue the chain.
            let want = last.map(|p| p.seq).unwrap_or(shipped.seq) + 1;
            if first != want {
                return Err(corrupt(
                    1,
                    format!("an empty segment for seq {first} where seq {want} comes next"),
                ));
            }
        }
        if is_last {
            current_len = valid_end as u64;
        }
    }
    let last = match last {
        Some(p) if p.seq < shipped.seq => {
            return Err(AuditError::Corrupt {
                path: dir.join(SHIPPED_FILE),
                line: 1,
                why: format!("seq {} is marked shipped but the spool ends at seq {}", shipped.seq, p.seq),
            });
        }
        Some(p) => p,
        None => shipped,
    };
    if let Some((&first, path)) = segments.iter().next()
        && first > shipped.seq + 1
    {
        return Err(AuditError::Corrupt {
            path: path.clone(),
            line: 1,
            why: format!("the spool starts at seq {first} but only seqs up to {} were shipped", shipped.seq),
        });
    }
    Ok(Recovered { last, segments, pending_bytes, torn, current_len })
}

fn later_record_is_valid(rest: &[u8]) -> bool {
    rest.split(|&b| b == b'\n').any(|l| serde_json::from_slice::<Record>(l).is_ok_and(|r| r.hash_is_valid()))
}

pub(crate) fn read_shipped(dir: &Path) -> Result<Position, AuditError> {
    let path = dir.join(SHIPPED_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| AuditError::Corrupt { path, line: 1, why: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
        Err(e) => Err(AuditError::io("cannot read", path, e)),
    }
}

impl AuditLog {
    /// Opens (or creates) the spool in `dir`, recovers after a crash and resumes the chain.
    ///
    /// Every append was fsynced before it was acknowledged, so bytes after the last complete,
    /// valid record of the last segment are a write nobody was told succeeded: they are
    /// dropped and a `spool_recovered` record says how many. Damage anywhere else is an error.
    pub fn open(dir: &Path, key: SigningKey, opts: SpoolOptions) -> Result<AuditLog, AuditError> {
        opts.validate()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuditError::io("cannot create the spool directory", dir, e))?;
        take_lock(dir)?;
        let opened = Self::open_locked(dir, key, opts);
        if opened.is_err() {
            release_lock(dir);
        }
        opened
    }

    fn open_locked(dir: &Path, key: SigningKey, opts: SpoolOptions) -> Result<AuditLog, AuditError> {
        let shipped = read_shipped(dir)?;
        let mut rec = recover(dir, shipped)?;
        let current_first = match rec.segments.iter().next_back() {
            Some((&first, _)) => first,
            None => {
                let first = rec.last.seq + 1;
                let path = dir.join(segment_name(first));
                private_file(&path).map_err(|e| AuditError::io("cannot create", &path, e))?;
                sync_dir(dir)?;
                rec.segments.insert(first, path);
                first
            }
        };
        let path = rec.segments[&current_first].clone();
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| AuditError::io("cannot open", &path, e))?;
        let shared = Shared {
            last_seq: rec.last.seq,
            shipped,
            pending_bytes: rec.pending_bytes,
            segments: rec.segments,
            last_ship_error: None,
            last_shipped_at: None,
            failed: None,
        };
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            shared: Arc::new(Mutex::new(shared)),
            key,
            dir: dir.to_path_buf(),
            opts,
        });
        let writer = Writer {
            shared: inner.shared.clone(),
            dir: dir.to_path_buf(),
            file,
            current_len: rec.current_len,
            last: rec.last,
            segment_bytes: inner.opts.segment_bytes,
            max_record_bytes: inner.opts.max_record_bytes,
            max_pending_bytes: inner.opts.max_pending_bytes,
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::io("cannot start the writer thread for", dir, e))?;
        *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        let log = AuditLog { inner };
        if let Some((path, bytes)) = rec.torn {
            tracing::warn!(segment = %path.display(), bytes, "audit spool: dropped an unacknowledged torn write after a crash");
            let ev = Event::new(EventKind::SpoolRecovered).detail(serde_json::json!({
                "dropped_bytes": bytes,
                "segment": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "reason": "a write that was never acknowledged (the process stopped before its fsync completed)",
            }));
            log.append_blocking(ev)?;
        }
        Ok(log)
    }

    /// Appends durably (written and fsynced before this returns) and returns the record's
    /// place. [`AuditError::SpoolFull`] when the unshipped backlog would pass
    /// `max_pending_bytes`: nothing was recorded, and the caller must not perform the action.
    pub async fn append(&self, event: Event) -> Result<RecordRef, AuditError> {
        let rx = self.submit(event)?;
        rx.await.unwrap_or_else(|_| Err(AuditError::Failed("the audit writer thread is gone".into())))
    }

    /// Queues a record without waiting for it to be durable: for what follows an action that
    /// was itself appended (and waited for) before it ran, such as its outcome. Order is kept.
    pub fn submit_nowait(&self, event: Event) -> Result<(), AuditError> {
        self.submit(event).map(drop)
    }

    /// [`AuditLog::append`] for code outside an async runtime.
    pub fn append_blocking(&self, event: Event) -> Result<RecordRef, AuditError> {
        let rx = self.submit(event)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(AuditError::Failed("the audit writer thread is gone".into())))
    }

    fn submit(
        &self,
        event: Event,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<RecordRef, AuditError>>, AuditError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let tx = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref()
            .ok_or_else(|| AuditError::Failed("the audit log is closed".into()))?
            .send(Request { event, reply })
            .map_err(|_| AuditError::Failed("the audit writer thread is gone".into()))?;
        Ok(rx)
    }

    /// The spool's counters.
    pub fn status(&self) -> SpoolStatus {
        let s = self.inner.shared();
        SpoolStatus {
            pending_records: s.last_seq - s.shipped.seq,
            pending_bytes: s.pending_bytes,
            max_pending_bytes: self.inner.opts.max_pending_bytes,
            last_seq: s.last_seq,
            shipped_seq: s.shipped.seq,
            last_ship_error: s.last_ship_error.clone(),
            last_shipped_at: s.last_shipped_at,
            failed: s.failed.clone(),
            public_key: crate::batch::key_hex(&self.public_key()),
        }
    }

    /// The key batches are signed with: give it to whoever runs `holdfast audit verify`.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.key.verifying_key()
    }

    /// Waits until every record up to `seq` is acknowledged by the vault; false on timeout.
    pub async fn wait_shipped(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.shared().shipped.seq >= seq {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The single writer: owns the current segment file and the chain's head.
struct Writer {
    /// Not `Inner`: the writer must never be the one to drop it (its `Drop` joins the writer).
    shared: Arc<Mutex<Shared>>,
    dir: PathBuf,
    file: File,
    current_len: u64,
    last: Position,
    segment_bytes: u64,
    max_record_bytes: u64,
    max_pending_bytes: u64,
}

type Reply = tokio::sync::oneshot::Sender<Result<RecordRef, AuditError>>;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut reqs = vec![first];
            while reqs.len() < 4096 {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            self.write_group(reqs);
        }
        release_lock(&self.dir);
    }

    fn write_group(&mut self, reqs: Vec<Request>) {
        let (pending, failed, last_error) = {
            let s = lock_shared(&self.shared);
            (s.pending_bytes, s.failed.clone(), s.last_ship_error.clone())
        };
        let mut head = self.last;
        let mut buf: Vec<u8> = Vec::new();
        let mut acks: Vec<(Reply, RecordRef)> = Vec::new();
        for req in reqs {
            if let Some(f) = &failed {
                let _ = req.reply.send(Err(AuditError::Failed(f.clone())));
                continue;
            }
            let time = AuditTime::now().max(head.time);
            let rec = Record::new(head.seq + 1, time, head.hash, req.event);
            let mut line = match serde_json::to_vec(&rec) {
                Ok(l) => l,
                Err(e) => {
                    let _ = req.reply.send(Err(AuditError::Failed(format!("cannot encode the record: {e}"))));
                    continue;
                }
            };
            line.push(b'\n');
            let size = line.len() as u64;
            if size > self.max_record_bytes {
                let _ =
                    req.reply.send(Err(AuditError::RecordTooLarge { size, limit: self.max_record_bytes }));
                continue;
            }
            let would_be = pending + buf.len() as u64 + size;
            if would_be > self.max_pending_bytes {
                let _ = req.reply.send(Err(AuditError::SpoolFull {
                    pending_bytes: pending + buf.len() as u64,
                    limit: self.max_pending_bytes,
                    last_error: last_error.clone(),
                }));
                continue;
            }
            buf.extend_from_slice(&line);
            head = Position { seq: rec.seq, hash: rec.hash, time: rec.time };
            acks.push((req.reply, RecordRef { seq: rec.seq, hash: rec.hash, time: rec.time }));
        }
        if acks.is_empty() {
            return;
        }
        let first_seq = self.last.seq + 1;
        let written = self.rollover_if_needed(first_seq, buf.len() as u64).and_then(|_| {
            self.file
                .write_all(&buf)
                .and_then(|_| self.file.sync_data())
                .map_err(|e| AuditError::io("cannot write the audit record to", self.current_path(), e))
        });
        match written {
            Ok(()) => {
                self.current_len += buf.len() as u64;
                self.last = head;
                {
                    let mut s = lock_shared(&self.shared);
                    s.last_seq = head.seq;
                    s.pending_bytes += buf.len() as u64;
                }
                for (reply, r) in acks {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                // Take back whatever part of the write landed, so the file ends at the last
                // acknowledged record; if even that fails, recovery at the next start will.
                let _ = self.file.set_len(self.current_len).and_then(|_| self.file.sync_all());
                let msg = e.to_string();
                tracing::error!(error = %msg, "audit spool write failed; the audit log accepts no more records");
                lock_shared(&self.shared).failed = Some(msg.clone());
                for (reply, _) in acks {
                    let _ = reply.send(Err(AuditError::Failed(msg.clone())));
                }
            }
        }
    }

    fn current_path(&self) -> PathBuf {
        lock_shared(&self.shared).segments.values().next_back().cloned().unwrap_or_else(|| self.dir.clone())
    }

    /// Starts a new segment when the current one would pass `segment_bytes`.
    fn rollover_if_needed(&mut self, first_seq: u64, add: u64) -> Result<(), AuditError> {
        if self.current_len == 0 || self.current_len + add <= self.segment_bytes {
            return Ok(());
        }
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditError::io("cannot create", &path, e))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.current_len = 0;
        lock_shared(&self.shared).segments.insert(first_seq, path);
        Ok(())
    }
}

/// Where the shipper is in the spool: the next seq to send and, once known, the segment and
/// byte offset of its line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    pub(crate) next_seq: u64,
    pub(crate) at: Option<(u64, u64)>,
}

/// Reads up to `max_records` / `max_bytes` records from `cursor` on, none beyond `last_seq`
/// (everything up to it is complete and fsynced). Returns the records, their bytes on disk and
/// the cursor after them.
pub(crate) fn read_batch(
    segments: &BTreeMap<u64, PathBuf>,
    cursor: Cursor,
    last_seq: u64,
    max_records: usize,
    max_bytes: u64,
) -> Result<(Vec<Record>, u64, Cursor), AuditError> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut cur = cursor;
    while cur.next_seq <= last_seq && out.len() < max_records && bytes < max_bytes {
        // A cursor into a segment removed since (wholly shipped) starts over from the map.
        let at = cur.at.filter(|(seg, _)| segments.contains_key(seg));
        let (seg, offset) = match at {
            Some(a) => a,
            None => match segments.range(..=cur.next_seq).next_back() {
                Some((&first, _)) => (first, 0),
                None => {
                    return Err(AuditError::Corrupt {
                        path: PathBuf::from(segment_name(cur.next_seq)),
                        line: 0,
                        why: format!("no segment holds seq {}", cur.next_seq),
                    });
                }
            },
        };
        let path = &segments.get(&seg).cloned().ok_or_else(|| AuditError::Corrupt {
            path: PathBuf::from(segment_name(seg)),
            line: 0,
            why: format!("segment {seg} is gone while seq {} is unshipped", cur.next_seq),
        })?;
        let mut f = File::open(path).map_err(|e| AuditError::io("cannot open", path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| AuditError::io("cannot seek in", path, e))?;
        let mut r = BufReader::new(f);
        let mut pos = offset;
        let mut line = Vec::new();
        loop {
            if cur.next_seq > last_seq || out.len() >= max_records || bytes >= max_bytes {
                break;
            }
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(|e| AuditError::io("cannot read", path, e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                // End of this segment: the next seq starts the next one.
                match segments.get(&cur.next_seq) {
                    Some(_) if cur.next_seq != seg => {
                        cur.at = Some((cur.next_seq, 0));
                        break;
                    }
                    _ => {
                        return Err(AuditError::Corrupt {
                            path: path.clone(),
                            line: 0,
                            why: format!("seq {} is acknowledged but not in the spool", cur.next_seq),
                        });
                    }
                }
            }
            let rec: Record = serde_json::from_slice(&line[..n - 1]).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                line: 0,
                why: e.to_string(),
            })?;
            pos += n as u64;
            if rec.seq < cur.next_seq {
                continue; // already shipped, in the first segment read after a start
            }
            if rec.seq != cur.next_seq {
                return Err(AuditError::Corrupt {
                    path: path.clone(),
                    line: 0,
                    why: format!("seq {} where seq {} belongs", rec.seq, cur.next_seq),
                });
            }
            bytes += n as u64;
            cur.next_seq += 1;
            cur.at = Some((seg, pos));
            out.push(rec);
        }
    }
    Ok((out, bytes, cur))
}

/// Every complete record in a spool directory, in seq order, without opening it for writing
/// (no lock, no recovery): for inspection and tests. A torn last line is left out.
pub fn read_spool(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let mut segments = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| AuditError::io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| AuditError::io("cannot list", dir, e))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.insert(first, entry.path());
        }
    }
    let mut out = Vec::new();
    for path in segments.values() {
        let text = std::fs::read(path).map_err(|e| AuditError::io("cannot read", path, e))?;
        let complete = text.iter().rposition(|&b| b == b'\n').map(|p| &text[..p]).unwrap_or(&[]);
        for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let r: Record = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                line: i + 1,
                why: e.to_string(),
            })?;
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the whole spool in batches of `n`, dropping segments as a shipper would.
    fn ship_all(dir: &Path, shared: &Mutex<Shared>, n: usize, max_bytes: u64) -> Vec<u64> {
        let mut cursor = Cursor { next_seq: 1, at: None };
        let mut seen = Vec::new();
        loop {
            let (segments, last) = {
                let s = lock_shared(shared);
                (s.segments.clone(), s.last_seq)
            };
            let (recs, bytes, next) = read_batch(&segments, cursor, last, n, max_bytes).unwrap();
            if recs.is_empty() {
                return seen;
            }
            assert!(bytes > 0 && recs.len() <= n);
            seen.extend(recs.iter().map(|r| r.seq));
            cursor = next;
            // Drop wholly shipped segments, as `mark_shipped` does.
            let mut s = lock_shared(shared);
            let firsts: Vec<u64> = s.segments.keys().copied().collect();
            for w in firsts.windows(2) {
                if w[1] <= cursor.next_seq {
                    let p = s.segments.remove(&w[0]).unwrap();
                    assert!(p.starts_with(dir));
                }
            }
        }
    }

    #[test]
    fn batches_cross_segments_in_order_whatever_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SpoolOptions { segment_bytes: 2048, ..Default::default() };
        let log = AuditLog::open(dir.path(), SigningKey::from_bytes(&[1; 32]), opts).unwrap();
        for i in 0..60 {
            let e = Event::new(EventKind::Statement).detail(serde_json::json!({"sql": "x".repeat(i * 7)}));
            log.append_blocking(e).unwrap();
        }
        assert!(log.inner.shared().segments.len() > 5, "the test needs several segments");
        for n in [1, 2, 3, 7, 60, 500] {
            let shared = Mutex::new(Shared {
                last_seq: 60,
                shipped: Position::default(),
                pending_bytes: 0,
                segments: log.inner.shared().segments.clone(),
                last_ship_error: None,
                last_shipped_at: None,
                failed: None,
            });
            assert_eq!(
                ship_all(dir.path(), &shared, n, 1 << 20),
                (1..=60).collect::<Vec<_>>(),
                "batches of {n}"
            );
        }
        // A byte limit cuts batches too (always at least one record).
        let shared = Mutex::new(Shared {
            last_seq: 60,
            shipped: Position::default(),
            pending_bytes: 0,
            segments: log.inner.shared().segments.clone(),
            last_ship_error: None,
            last_shipped_at: None,
            failed: None,
        });
        assert_eq!(ship_all(dir.path(), &shared, 500, 1), (1..=60).collect::<Vec<_>>());
    }
}
