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
//! - `lock` — the pid of the process using the spool;
//! - `next-segment.tmp` — the next segment, written with zeros ahead of its use (see below).
//!
//! The directory is created 0700 and every file 0600: the spool holds SQL text.
//!
//! Appends are group-committed by one writer thread per spool (`audit-writer`): an appender
//! gives its record a seq and adds its line to the records not yet written (under a short
//! lock), asks the writer for a write unless one is already asked for, and awaits the
//! completion — no appender's thread ever blocks in a write or an `fdatasync`, so a session's
//! runtime thread goes on serving other sessions meanwhile. The writer takes *everything*
//! waiting and makes it durable with one `write` and one `fdatasync`; records that arrive
//! while it syncs form the next group. Nobody is told a record is durable before that
//! `fdatasync` returned. Records queued without waiting ([`AuditLog::submit_nowait`]) go with
//! the next group, or after at most [`NOWAIT_FLUSH`] on the writer's own.
//!
//! Segments are *pre-zeroed*, as PostgreSQL's WAL segments are: at open, the current segment
//! (a new spool's first one included) is filled with zeros up to `segment_bytes`; once it is
//! half full, a background thread (`audit-flusher`) writes the next one's `segment_bytes`
//! of zeros and fsyncs it, and the rollover renames it into place. A group write then
//! overwrites blocks the file already has, so its `fdatasync` flushes data only, not the
//! journal commit a growing file needs for its new size and blocks (measured on this
//! project's disk with `bench/fsync-latency.py`). Readers stop at the zeros after the last
//! line (no record starts with a NUL byte); a closed spool's segment is cut back to its lines.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// A new segment file is started past this size (each one after the first is written with
    /// this many zeros before it is used).
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
    /// Group writes (one `write` + one `fdatasync` each) since the spool was opened:
    /// `last_seq` over it is how many records one fsync made durable.
    pub group_writes: u64,
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
    /// The chain's head: the last record given a seq, written or not (`last_seq` is the last
    /// one written and fsynced).
    pub(crate) head: Position,
    /// The lines of the records after `last_seq` up to `head`, in order, not yet written.
    pub(crate) unwritten: Vec<u8>,
    /// Bytes a group write has taken out of `unwritten` and is writing: still unshipped, so they
    /// count against `max_pending_bytes` until they join `pending_bytes` (without them an
    /// append during a group write saw the spool emptier than it was, and passed the bound).
    pub(crate) in_flight: u64,
    pub(crate) group_writes: u64,
}

/// A point in the chain: the last record's seq, hash and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Position {
    pub(crate) seq: u64,
    pub(crate) hash: Digest,
    pub(crate) time: AuditTime,
}

/// The longest a record queued without waiting ([`AuditLog::submit_nowait`]) stays unwritten
/// when no appender comes to write it with its own.
pub const NOWAIT_FLUSH: Duration = Duration::from_millis(10);

/// What appenders share: the counters, the unwritten records, and the file (written by the
/// writer thread; by blocking callers and at close too, under its lock).
pub(crate) struct Core {
    pub(crate) shared: Mutex<Shared>,
    disk: Mutex<Disk>,
    /// `Shared::last_seq`, readable without the lock: waiting appenders check it when woken.
    durable: AtomicU64,
    /// Woken after every group write (or failure).
    written: tokio::sync::Notify,
    /// What the writer thread is asked to do, and whether it sleeps (then it needs a wake-up).
    wake: Mutex<WriterState>,
    wake_cv: Condvar,
    /// `Disk::current_len`, readable without the file's lock: the flusher prepares the next
    /// segment once the current one is half full.
    current_len: AtomicU64,
    /// A pre-zeroed file ready to become the next segment (`next-segment.tmp`).
    spare: Mutex<Option<PathBuf>>,
    dir: PathBuf,
    segment_bytes: u64,
    max_record_bytes: u64,
    max_pending_bytes: u64,
}

#[derive(Default)]
struct WriterState {
    /// An appender waits for a write.
    want: bool,
    /// The writer waits on `wake_cv` (a request must wake it; otherwise it looks again anyway).
    sleeping: bool,
    stop: bool,
}

/// The current segment file; only ever touched with its lock held.
struct Disk {
    file: File,
    current_len: u64,
    /// Swapped with `Shared::unwritten` for a write, so neither allocates once warmed up.
    spare: Vec<u8>,
}

pub(crate) struct Inner {
    pub(crate) core: Arc<Core>,
    /// The writer thread (every group write while the spool is open); stopped on drop.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The background thread that prepares the next segment's zeros; stopped on drop.
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    pub(crate) key: SigningKey,
    pub(crate) dir: PathBuf,
    pub(crate) opts: SpoolOptions,
}

impl Drop for Inner {
    /// Writes what is still unwritten, stops the writer and the flusher and frees the spool, so
    /// it can be opened again at once.
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        {
            self.core.wake.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            self.core.wake_cv.notify_all();
        }
        for t in [&mut self.writer, &mut self.flusher] {
            if let Some(h) = t.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = h.join();
            }
        }
        self.core.write_blocking();
        self.core.close_files();
        release_lock(&self.dir);
    }
}

impl Inner {
    pub(crate) fn shared(&self) -> MutexGuard<'_, Shared> {
        lock_shared(&self.core.shared)
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
const SPARE_FILE: &str = "next-segment.tmp";

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
            if bytes[pos..].iter().all(|&b| b == 0) {
                // The zeros of a pre-zeroed segment after its last record: not a torn write.
                break;
            }
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
                    // A NUL byte in it is a hole in a pre-zeroed segment: blocks of the last
                    // group write that never reached the disk (power lost before its fsync
                    // returned, so nothing after it was acknowledged either).
                    let hole = line.contains(&0);
                    if !is_last || (!hole && later_record_is_valid(&bytes[pos + nl + 1..])) {
                        return Err(corrupt(line_no, why));
                    }
                    break;
                }
            }
        }
        let tail = &bytes[valid_end..];
        let zeros = tail.iter().rev().take_while(|&&b| b == 0).count();
        if zeros < tail.len() {
            torn = Some((path.clone(), (tail.len() - zeros) as u64));
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
        // A spare left by an earlier run: made again when needed.
        let _ = std::fs::remove_file(dir.join(SPARE_FILE));
        // Written at `current_len` (not appended): the file may be longer, its zeros.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| AuditError::io("cannot open", &path, e))?;
        // The current segment — a new spool's first one, or the last one a closed spool cut back
        // to its lines — is filled with zeros up to its size before the first group write, as
        // every later segment is before it is used.
        file.metadata()
            .and_then(|m| fill_with_zeros(&file, m.len().max(rec.current_len), opts.segment_bytes))
            .map_err(|e| AuditError::io("cannot write the zeros of", &path, e))?;
        let shared = Shared {
            last_seq: rec.last.seq,
            shipped,
            pending_bytes: rec.pending_bytes,
            segments: rec.segments,
            last_ship_error: None,
            last_shipped_at: None,
            failed: None,
            head: rec.last,
            unwritten: Vec::with_capacity(64 * 1024),
            in_flight: 0,
            group_writes: 0,
        };
        let core = Arc::new(Core {
            shared: Mutex::new(shared),
            disk: Mutex::new(Disk {
                file,
                current_len: rec.current_len,
                spare: Vec::with_capacity(64 * 1024),
            }),
            durable: AtomicU64::new(rec.last.seq),
            written: tokio::sync::Notify::new(),
            wake: Mutex::new(WriterState::default()),
            wake_cv: Condvar::new(),
            current_len: AtomicU64::new(rec.current_len),
            spare: Mutex::new(None),
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes,
            max_record_bytes: opts.max_record_bytes,
            max_pending_bytes: opts.max_pending_bytes,
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let writer = {
            let core = core.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || core.write_groups())
                .map_err(|e| AuditError::io("cannot start the writer thread for", dir, e))?
        };
        let handle = {
            let (core, stop) = (core.clone(), stop.clone());
            std::thread::Builder::new()
                .name("audit-flusher".into())
                .spawn(move || core.prepare_segments(&stop))
                .map_err(|e| AuditError::io("cannot start the flusher thread for", dir, e))
        };
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                core.wake.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
                core.wake_cv.notify_all();
                let _ = writer.join();
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            core,
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(handle)),
            stop,
            key,
            dir: dir.to_path_buf(),
            opts,
        });
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
    ///
    /// The writer thread makes it durable with the group it is in; the caller's task waits
    /// for that without holding a thread.
    pub async fn append(&self, event: Event) -> Result<RecordRef, AuditError> {
        let r = self.inner.core.enqueue(event)?;
        self.inner.core.durable(r.seq).await?;
        Ok(r)
    }

    /// Queues a record without waiting for it to be durable: for what follows an action that
    /// was itself appended (and waited for) before it ran, such as its outcome. Order is kept;
    /// it is written with the next group, at the latest [`NOWAIT_FLUSH`] later.
    pub fn submit_nowait(&self, event: Event) -> Result<(), AuditError> {
        self.inner.core.enqueue(event).map(drop)
    }

    /// [`AuditLog::append`] for code outside an async runtime.
    pub fn append_blocking(&self, event: Event) -> Result<RecordRef, AuditError> {
        let core = &self.inner.core;
        let r = core.enqueue(event)?;
        while core.durable.load(Ordering::Acquire) < r.seq {
            if let Some(f) = core.failed() {
                return Err(AuditError::Failed(f));
            }
            core.write_blocking();
        }
        Ok(r)
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
            group_writes: s.group_writes,
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

impl Core {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock_shared(&self.shared)
    }

    fn failed(&self) -> Option<String> {
        self.shared().failed.clone()
    }

    /// Gives the event the next seq and time, and queues its line. The event's encodings (its
    /// JSON and the canonical bytes its hash covers) are made before the lock is taken; under
    /// it only what depends on the chain's head: one BLAKE3 of a few hundred bytes and the
    /// record's line prefix.
    fn enqueue(&self, event: Event) -> Result<RecordRef, AuditError> {
        let (event_bytes, event_json) = Record::encodings(&event);
        let mut s = self.shared();
        if let Some(f) = &s.failed {
            return Err(AuditError::Failed(f.clone()));
        }
        let seq = s.head.seq + 1;
        let time = AuditTime::now().max(s.head.time);
        let hash = Record::hash_of(seq, time, &s.head.hash, &event_bytes);
        let prefix = line_prefix(seq, time, &s.head.hash, &hash);
        let size = (prefix.len() + event_json.len() + 2) as u64;
        if size > self.max_record_bytes {
            return Err(AuditError::RecordTooLarge { size, limit: self.max_record_bytes });
        }
        let waiting = s.pending_bytes + s.in_flight + s.unwritten.len() as u64;
        if waiting + size > self.max_pending_bytes {
            return Err(AuditError::SpoolFull {
                pending_bytes: waiting,
                limit: self.max_pending_bytes,
                last_error: s.last_ship_error.clone(),
            });
        }
        s.unwritten.extend_from_slice(&prefix);
        s.unwritten.extend_from_slice(&event_json);
        s.unwritten.extend_from_slice(b"}\n");
        s.head = Position { seq, hash, time };
        Ok(RecordRef { seq, hash, time })
    }

    /// Waits until every record up to `seq` is written and fsynced by the writer thread.
    async fn durable(&self, seq: u64) -> Result<(), AuditError> {
        let mut asked = false;
        loop {
            // Registered before looking, so a write that ends after the look wakes us.
            let woken = self.written.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.durable.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if let Some(f) = self.failed() {
                return Err(AuditError::Failed(f));
            }
            if !asked {
                asked = true;
                self.ask_writer();
            }
            woken.await;
        }
    }

    /// Asks the writer thread for a group write; wakes it only when it sleeps (while it
    /// writes, it looks for more records before it sleeps again).
    fn ask_writer(&self) {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if w.want {
            return;
        }
        w.want = true;
        if w.sleeping {
            self.wake_cv.notify_one();
        }
    }

    /// The writer thread: a group write whenever an appender waits for one, and records
    /// queued without waiting that are still unwritten after [`NOWAIT_FLUSH`]; at stop, once
    /// more, then returns.
    fn write_groups(&self) {
        loop {
            let stopping = {
                let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
                if !w.want && !w.stop {
                    w.sleeping = true;
                    w = self.wake_cv.wait_timeout(w, NOWAIT_FLUSH).unwrap_or_else(|p| p.into_inner()).0;
                    w.sleeping = false;
                }
                w.want = false;
                w.stop
            };
            if self.durable.load(Ordering::Acquire) < self.shared().head.seq {
                self.write_blocking();
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes whatever is unwritten, waiting for the file if another write holds it (the writer
    /// thread; threads that are not async tasks: `append_blocking`, drop).
    fn write_blocking(&self) {
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        self.write_and_wake(disk);
    }

    /// One group write: everything unwritten, one `write` and one `fdatasync`; then the file
    /// is released and everyone waiting is woken.
    fn write_and_wake(&self, mut disk: MutexGuard<'_, Disk>) {
        self.write_group(&mut disk);
        drop(disk);
        self.written.notify_waiters();
    }

    fn write_group(&self, disk: &mut Disk) {
        let (first_seq, head) = {
            let mut s = self.shared();
            if s.unwritten.is_empty() || s.failed.is_some() {
                return;
            }
            disk.spare.clear();
            std::mem::swap(&mut s.unwritten, &mut disk.spare);
            s.in_flight = disk.spare.len() as u64;
            (s.last_seq + 1, s.head.seq)
        };
        let len = disk.spare.len() as u64;
        let written = self.rollover_if_needed(disk, first_seq, len).and_then(|_| {
            disk.file
                .write_all_at(&disk.spare, disk.current_len)
                .and_then(|_| disk.file.sync_data())
                .map_err(|e| AuditError::io("cannot write the audit record to", self.current_path(), e))
        });
        match written {
            Ok(()) => {
                disk.current_len += len;
                self.current_len.store(disk.current_len, Ordering::Relaxed);
                {
                    let mut s = self.shared();
                    s.last_seq = head;
                    s.pending_bytes += len;
                    s.in_flight = 0;
                    s.group_writes += 1;
                }
                self.durable.store(head, Ordering::Release);
            }
            Err(e) => {
                // Take back whatever part of the write landed, so the file ends at the last
                // acknowledged record; if even that fails, recovery at the next start will.
                let _ = disk.file.set_len(disk.current_len).and_then(|_| disk.file.sync_all());
                let msg = e.to_string();
                tracing::error!(error = %msg, "audit spool write failed; the audit log accepts no more records");
                self.shared().failed = Some(msg);
            }
        }
    }

    /// The flusher thread: prepares the next segment's zeros once the current one is half
    /// full (looked at every [`NOWAIT_FLUSH`]); returns at stop.
    fn prepare_segments(&self, stop: &(Mutex<bool>, Condvar)) {
        let (lock, cv) = stop;
        loop {
            {
                let g = lock.lock().unwrap_or_else(|p| p.into_inner());
                if *g || *cv.wait_timeout(g, NOWAIT_FLUSH).unwrap_or_else(|p| p.into_inner()).0 {
                    return;
                }
            }
            self.prepare_spare();
        }
    }

    fn current_path(&self) -> PathBuf {
        self.shared().segments.values().next_back().cloned().unwrap_or_else(|| self.dir.clone())
    }

    /// Starts a new segment when the current one would pass `segment_bytes`: the pre-zeroed
    /// spare renamed into place when the flusher has one ready, else a new empty file.
    fn rollover_if_needed(&self, disk: &mut Disk, first_seq: u64, add: u64) -> Result<(), AuditError> {
        if disk.current_len == 0 || disk.current_len + add <= self.segment_bytes {
            return Ok(());
        }
        let path = self.dir.join(segment_name(first_seq));
        if path.exists() {
            return Err(AuditError::io(
                "cannot create",
                &path,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let file = match spare {
            Some(spare) => std::fs::rename(&spare, &path)
                .and_then(|_| OpenOptions::new().write(true).open(&path))
                .map_err(|e| AuditError::io("cannot put the next segment in place as", &path, e))?,
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| AuditError::io("cannot create", &path, e))?,
        };
        sync_dir(&self.dir)?;
        // The old segment's unused zeros go (not synced: zeros after the last line are
        // skipped by every reader anyway).
        let _ = disk.file.set_len(disk.current_len);
        disk.file = file;
        disk.current_len = 0;
        self.current_len.store(0, Ordering::Relaxed);
        self.shared().segments.insert(first_seq, path);
        Ok(())
    }

    /// Once the current segment is half full, writes the next one's zeros and fsyncs them
    /// (the flusher thread, off every session's path), so the rollover only renames it.
    fn prepare_spare(&self) {
        if self.current_len.load(Ordering::Relaxed) < self.segment_bytes / 2
            || self.spare.lock().unwrap_or_else(|p| p.into_inner()).is_some()
        {
            return;
        }
        let path = self.dir.join(SPARE_FILE);
        let zeroed = private_file(&path).and_then(|f| fill_with_zeros(&f, 0, self.segment_bytes));
        match zeroed {
            Ok(()) => *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(path),
            Err(e) => {
                // Not a failure of the log: the rollover then starts an empty file.
                tracing::warn!(error = %e, path = %path.display(), "audit spool: cannot prepare the next segment");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// At close: the current segment is cut back to its lines and the spare removed.
    fn close_files(&self) {
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let _ = disk.file.set_len(disk.current_len).and_then(|_| disk.file.sync_all());
        if let Some(spare) = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::fs::remove_file(spare);
        }
    }
}

/// Writes zeros into `file` from `from` up to `to` (nothing when it is that long already) and
/// fsyncs it: blocks a later positional write overwrites without growing the file.
fn fill_with_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    if from >= to {
        return Ok(());
    }
    let chunk = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// A record's line up to its event: `{"seq":…,"time":"…","prev":"…","hash":"…","event":` —
/// exactly what serde writes for [`Record`] (a test compares them), without building one.
fn line_prefix(seq: u64, time: AuditTime, prev: &Digest, hash: &Digest) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    let mut hex = [0u8; 64];
    let _ =
        std::io::Write::write_fmt(&mut out, format_args!("{{\"seq\":{seq},\"time\":\"{time}\",\"prev\":\""));
    if hex::encode_to_slice(prev.0, &mut hex).is_ok() {
        out.extend_from_slice(&hex);
    }
    out.extend_from_slice(b"\",\"hash\":\"");
    if hex::encode_to_slice(hash.0, &mut hex).is_ok() {
        out.extend_from_slice(&hex);
    }
    out.extend_from_slice(b"\",\"event\":");
    out
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
    fn a_queued_line_is_what_serde_writes_for_the_record() {
        let ev = Event::new(EventKind::Statement)
            .person("alice \"the\" admin")
            .client("10.0.0.1:5000")
            .session(3)
            .detail(serde_json::json!({"sql": "SELECT '\\n' -- é\u{1}", "n": 1.5, "z": [null, true]}));
        for (seq, time) in [(1, AuditTime(0)), (u64::MAX, AuditTime(1_795_000_000_123_456))] {
            let prev = Digest([7; 32]);
            let rec = Record::new(seq, time, prev, ev.clone());
            let mut line = line_prefix(seq, time, &prev, &rec.hash);
            line.extend_from_slice(&serde_json::to_vec(&ev).unwrap());
            line.push(b'}');
            assert_eq!(String::from_utf8(line).unwrap(), serde_json::to_string(&rec).unwrap());
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
                head: Position::default(),
                unwritten: Vec::new(),
                in_flight: 0,
                group_writes: 0,
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
            head: Position::default(),
            unwritten: Vec::new(),
            in_flight: 0,
            group_writes: 0,
        });
        assert_eq!(ship_all(dir.path(), &shared, 500, 1), (1..=60).collect::<Vec<_>>());
    }
}
