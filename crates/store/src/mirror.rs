//! `MirrorStore`: two copies, one vault — a local directory (hot: fast restores, durable first)
//! written through to an S3 bucket with Object Lock (off-host: what root on the vault host
//! cannot destroy).
//!
//! - **Writes** are durable when the local copy is (a `LocalDir` put: fsync + link). The name
//!   then joins an upload queue; one background task uploads it with the S3 backend's
//!   `put_if_absent` (COMPLIANCE lock, retain-until from the local copy). If the local copy
//!   cannot be written at all (its directory was erased or the disk failed), the write goes
//!   to the bucket synchronously instead, so a write is never acknowledged on no copy.
//! - **The queue survives restarts without a journal**: the local copy *is* the queue's data.
//!   At start (and every 5 minutes while idle) the task compares the local listing with
//!   the bucket's (ListObjectVersions: a name whose key has a version of the local size counts
//!   as uploaded), so nothing written before a crash or SIGKILL is forgotten. A PUT is atomic in
//!   S3 and carries Content-MD5, and readers take only a version whose bytes hash to its name:
//!   a killed upload leaves nothing that reads as valid. Uploads go in write order (keys and
//!   config, packs before the index naming them, the catalog record last), so the bucket alone
//!   always holds a usable prefix of the history. The queue holds names only (the bytes stay on
//!   the local disk), so its memory is bounded by a few dozen bytes per object; the operator's
//!   bound (`max_pending_*`) is an alert threshold, not a reason to refuse backups.
//! - **Reads** use the local copy and fall back to the bucket object by object when the local
//!   object is missing, unreadable or does not hash to its name (whole-object reads are
//!   re-hashed; a range of a damaged pack fails its AEAD one layer up, and a missing one falls
//!   back). Listings are the union of both copies, so a vault whose local store was erased
//!   still sees every backup in the bucket.
//! - **Retention** is raised on both; **expunge** asks the bucket first, so a COMPLIANCE lock
//!   that refuses leaves the local copy untouched too.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{
    Expunge, ExpungeAuthority, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreStatus, earliest,
};
use crate::local::LocalDir;
use crate::name::{ObjectKind, ObjectName};
use crate::s3::S3Store;
use crate::timestamp::Timestamp;

/// Upload order: what a reader of the bucket alone needs first.
const UPLOAD_ORDER: [ObjectKind; 6] = [
    ObjectKind::Config,
    ObjectKind::Keys,
    ObjectKind::Pack,
    ObjectKind::Wal,
    ObjectKind::Index,
    ObjectKind::Catalog,
];

/// How often an idle queue compares the two listings again.
const RECOMPARE_EVERY: Duration = Duration::from_secs(300);

/// The longest pause between upload attempts while the bucket fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A local directory written through to an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct MirrorStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MirrorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorStore")
            .field("local", &self.inner.local.root())
            .field("remote", &self.inner.remote)
            .finish_non_exhaustive()
    }
}

struct Inner {
    local: LocalDir,
    remote: S3Store,
    queue: Mutex<Queue>,
    wake: Arc<tokio::sync::Notify>,
    /// Held by the uploader around one upload and by `expunge`: an object being expunged is
    /// never uploaded again behind its back.
    uploading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Queue {
    /// Names in write order, each once.
    order: VecDeque<ObjectName>,
    /// name → size, for `order`'s members.
    sizes: BTreeMap<ObjectName, u64>,
    bytes: u64,
    /// Queued again while being uploaded (its retention grew): upload once more.
    again: HashSet<ObjectName>,
    /// The listings were compared since start (until then, `order` holds only new writes).
    reconciled: bool,
    /// When the current streak of failed uploads (or listings) began.
    failing_since: Option<Timestamp>,
    last_error: Option<String>,
    uploaded_objects: u64,
    uploaded_bytes: u64,
    fallback_reads: u64,
    lost_before_upload: u64,
}

impl Queue {
    fn push(&mut self, name: ObjectName, size: u64) {
        if self.sizes.insert(name, size).is_none() {
            self.order.push_back(name);
            self.bytes += size;
        } else {
            self.again.insert(name);
        }
    }

    /// An upload of `name` succeeded: done, unless it was queued again meanwhile.
    fn uploaded(&mut self, name: &ObjectName) {
        if self.again.remove(name) {
            if let Some(i) = self.order.iter().position(|n| n == name) {
                self.order.remove(i);
                self.order.push_back(*name);
            }
        } else {
            self.remove(name);
        }
    }

    fn remove(&mut self, name: &ObjectName) {
        self.again.remove(name);
        if let Some(size) = self.sizes.remove(name) {
            self.bytes -= size;
            self.order.retain(|n| n != name);
        }
    }
}

fn other(what: impl Into<String>, msg: impl std::fmt::Display) -> StoreError {
    StoreError::io(what, std::io::Error::other(msg.to_string()))
}

impl MirrorStore {
    /// Opens the pair and starts the upload task (which first compares both listings). Must be
    /// called inside a tokio runtime. The task ends when the last clone of the store is dropped.
    pub fn open(local: LocalDir, remote: S3Store) -> MirrorStore {
        let inner = Arc::new(Inner {
            local,
            remote,
            queue: Mutex::new(Queue::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            uploading: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(uploader(Arc::downgrade(&inner), inner.wake.clone()));
        MirrorStore { inner }
    }

    /// The hot copy.
    pub fn local(&self) -> &LocalDir {
        &self.inner.local
    }

    /// The off-host copy.
    pub fn remote(&self) -> &S3Store {
        &self.inner.remote
    }

    /// Objects and bytes not yet confirmed in the bucket, and whether the listings were
    /// compared since start (before that, older pending objects are not counted yet).
    pub fn pending(&self) -> (u64, u64, bool) {
        let q = self.inner.queue.lock().expect("queue lock");
        (q.order.len() as u64, q.bytes, q.reconciled)
    }

    /// Waits until the queue is empty after a comparison of the listings, or `limit` passes.
    /// Returns whether it drained.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (n, _, reconciled) = self.pending();
            if n == 0 && reconciled {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The bucket's copy as status shows it, with the queue's figures; costs no request.
    pub fn upload_status(&self) -> StoreStatus {
        let mut remote = self.inner.remote.status_now("mirror.remote");
        let q = self.inner.queue.lock().expect("queue lock");
        remote.pending_objects = Some(q.order.len() as u64);
        remote.pending_bytes = Some(q.bytes);
        remote.failing_since = q.failing_since;
        remote.last_error = q.last_error.clone();
        remote.uploaded_objects = q.uploaded_objects;
        remote.uploaded_bytes = q.uploaded_bytes;
        remote.fallback_reads = q.fallback_reads;
        remote.lost_before_upload = q.lost_before_upload;
        remote.reconciled = Some(q.reconciled);
        remote
    }

    fn enqueue(&self, name: ObjectName, size: u64) {
        self.inner.queue.lock().expect("queue lock").push(name, size);
        self.inner.wake.notify_one();
    }

    fn note_fallback(&self, name: &ObjectName, why: &dyn std::fmt::Display) {
        tracing::warn!(object = %name, local = %why, "the local copy cannot serve this object: reading it from the bucket");
        self.inner.queue.lock().expect("queue lock").fallback_reads += 1;
    }

    /// Both copies, object by object: which names are missing or damaged in which copy. Reads
    /// every object of both (the bucket's are verified by hash as the S3 backend reads them).
    pub async fn verify_copies(&self) -> CopiesReport {
        let mut r = CopiesReport::default();
        // Pending and missing differ only once the queue knows what the bucket lacks.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.pending().2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut names = Vec::new();
        for kind in ObjectKind::ALL {
            match self.list(kind).await {
                Ok(l) => names.extend(l.into_iter().map(|m| m.name)),
                Err(e) => r.errors.push(format!("listing {kind}: {e}")),
            }
        }
        let pending: HashSet<ObjectName> =
            self.inner.queue.lock().expect("queue lock").sizes.keys().copied().collect();
        for name in names {
            r.objects += 1;
            match self.inner.local.get(&name).await {
                Ok(b) if name.verify(&b).is_ok() => {}
                Ok(_) => r.local_damaged.push(name.to_string()),
                Err(StoreError::NotFound(_)) => r.local_missing.push(name.to_string()),
                Err(e) => r.local_damaged.push(format!("{name}: {e}")),
            }
            match self.inner.remote.get(&name).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) if pending.contains(&name) => {
                    r.remote_pending.push(name.to_string())
                }
                Err(StoreError::NotFound(_)) => r.remote_missing.push(name.to_string()),
                Err(e) => r.errors.push(format!("reading {name} from the bucket: {e}")),
            }
        }
        r
    }
}

/// What [`MirrorStore::verify_copies`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopiesReport {
    /// Distinct objects in either copy.
    pub objects: u64,
    /// In the bucket (or named by it) but not in the local directory.
    pub local_missing: Vec<String>,
    /// In the local directory with bytes that do not hash to the name.
    pub local_damaged: Vec<String>,
    /// In the local directory, no valid version in the bucket, and not waiting in the queue.
    pub remote_missing: Vec<String>,
    /// Not in the bucket yet, waiting in the upload queue.
    pub remote_pending: Vec<String>,
    /// Copies that could not be read at all (the bucket is down, …).
    pub errors: Vec<String>,
}

impl CopiesReport {
    /// Both copies hold every object (pending uploads are not damage).
    pub fn is_clean(&self) -> bool {
        self.local_missing.is_empty()
            && self.local_damaged.is_empty()
            && self.remote_missing.is_empty()
            && self.errors.is_empty()
    }
}

/// Compares the local listing with the bucket's and queues what the bucket lacks, in upload
/// order. A key with a version of the local object's size counts as uploaded: downloading the
/// whole bucket at every start to re-hash it is what `vault check` is for.
async fn reconcile(inner: &Inner) -> Result<(), StoreError> {
    let prefix = inner.remote.config().prefix.clone();
    let mut missing = Vec::new();
    for kind in UPLOAD_ORDER {
        let local = inner.local.list(kind).await?;
        if local.is_empty() {
            continue;
        }
        let there: HashSet<(String, u64)> = inner
            .remote
            .list_versions(&format!("{prefix}{kind}/"))
            .await?
            .into_iter()
            .map(|v| (v.key, v.size))
            .collect();
        for m in local {
            if !there.contains(&(format!("{prefix}{}", m.name), m.size)) {
                missing.push((m.name, m.size));
            }
        }
    }
    let mut q = inner.queue.lock().expect("queue lock");
    // Writes queued while listing keep their place after the older objects found missing.
    let newer: Vec<(ObjectName, u64)> = q.order.iter().map(|n| (*n, q.sizes[n])).collect();
    q.order.clear();
    q.sizes.clear();
    q.again.clear();
    q.bytes = 0;
    for (n, s) in missing.into_iter().chain(newer) {
        q.push(n, s);
    }
    q.reconciled = true;
    tracing::info!(pending = q.order.len(), bytes = q.bytes, "upload queue rebuilt from both listings");
    Ok(())
}

/// Uploads one queued object: the local bytes and retention, through the S3 backend's
/// put-if-absent (which also raises the lock of a version already there).
async fn upload(inner: &Inner, name: &ObjectName) -> Result<u64, StoreError> {
    let bytes = inner.local.get(name).await?;
    name.verify(&bytes)
        .map_err(|_| other(format!("uploading {name}"), "the local copy does not hash to its name"))?;
    let meta = inner.local.head(name).await?.ok_or(StoreError::NotFound(*name))?;
    let size = bytes.len() as u64;
    inner.remote.put_if_absent(name, bytes, meta.retain_until).await?;
    Ok(size)
}

async fn uploader(weak: std::sync::Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    let mut backoff = Duration::from_millis(200);
    let mut last_compare = tokio::time::Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (reconciled, next) = {
            let q = inner.queue.lock().expect("queue lock");
            (q.reconciled, q.order.front().copied())
        };
        // Also compare now and then while idle: another process on the same directory (a CLI
        // command next to the running vault) may have written objects this queue never saw.
        let stale = next.is_none() && last_compare.elapsed() >= RECOMPARE_EVERY;
        let result = if !reconciled || stale {
            last_compare = tokio::time::Instant::now();
            reconcile(&inner).await.map(|_| None)
        } else if let Some(name) = next {
            let guard = inner.uploading.lock().await;
            // Expunged (or uploaded) while we waited for the lock: nothing to do.
            if !inner.queue.lock().expect("queue lock").sizes.contains_key(&name) {
                continue;
            }
            let r = upload(&inner, &name).await;
            drop(guard);
            match r {
                Ok(size) => Ok(Some((name, size))),
                Err(StoreError::NotFound(_)) => {
                    // Gone from the local copy before it reached the bucket (erased by hand):
                    // lost from both unless it is in the bucket already. Counted and logged
                    // (status shows it; the vault alerts on it); the queue goes on.
                    let there = inner.remote.head(&name).await.ok().flatten().is_some();
                    let mut q = inner.queue.lock().expect("queue lock");
                    q.remove(&name);
                    if !there {
                        q.lost_before_upload += 1;
                        tracing::error!(object = %name, "an object vanished from the local store before it was uploaded");
                    }
                    continue;
                }
                Err(e) => Err(e),
            }
        } else {
            // Idle: wait for a write, waking now and then to notice the store was dropped.
            drop(inner);
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        match result {
            Ok(done) => {
                backoff = Duration::from_millis(200);
                let mut q = inner.queue.lock().expect("queue lock");
                if q.failing_since.take().is_some() {
                    tracing::info!("uploads to the bucket succeed again");
                }
                q.last_error = None;
                if let Some((name, size)) = done {
                    q.uploaded(&name);
                    q.uploaded_objects += 1;
                    q.uploaded_bytes += size;
                }
            }
            Err(e) => {
                {
                    let mut q = inner.queue.lock().expect("queue lock");
                    if q.failing_since.is_none() {
                        q.failing_since = Some(Timestamp::now());
                        tracing::warn!(error = %e, "uploading to the bucket fails: objects wait in the local store");
                    }
                    q.last_error = Some(e.to_string());
                }
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for MirrorStore {
    async fn put_if_absent(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        name.verify(&bytes)?;
        let size = bytes.len() as u64;
        match self.inner.local.put_if_absent(name, bytes.clone(), retain_until).await {
            Ok(out) => {
                // Also when it was already present: its retention may have grown, and the
                // upload raises the bucket's lock to match.
                self.enqueue(*name, size);
                Ok(out)
            }
            Err(local) => {
                // The local directory cannot take it (erased, full, failing): the bucket is then
                // the only copy, so write it there before answering.
                tracing::warn!(object = %name, error = %local, "the local store refused a write: writing it to the bucket directly");
                if let Ok(again) = LocalDir::open(self.inner.local.root())
                    && again.put_if_absent(name, bytes.clone(), retain_until).await.is_ok()
                {
                    self.enqueue(*name, size);
                    return Ok(PutOutcome::Created);
                }
                self.inner.remote.put_if_absent(name, bytes, retain_until).await.map_err(|remote| {
                    other(
                        format!("writing {name}"),
                        format!("the local store failed ({local}) and so did the bucket ({remote})"),
                    )
                })
            }
        }
    }

    async fn get(&self, name: &ObjectName) -> Result<Bytes, StoreError> {
        match self.inner.local.get(name).await {
            Ok(b) if name.verify(&b).is_ok() => Ok(b),
            Ok(_) => {
                self.note_fallback(name, &"bytes do not hash to the name");
                self.inner.remote.get(name).await
            }
            Err(e) => {
                if !matches!(e, StoreError::NotFound(_)) {
                    self.note_fallback(name, &e);
                } else {
                    self.inner.queue.lock().expect("queue lock").fallback_reads += 1;
                }
                self.inner.remote.get(name).await
            }
        }
    }

    async fn get_range(&self, name: &ObjectName, range: Range<u64>) -> Result<Bytes, StoreError> {
        match self.inner.local.get_range(name, range.clone()).await {
            Ok(b) => Ok(b),
            Err(e @ StoreError::BadRange { .. }) => Err(e),
            Err(e) => {
                if !matches!(e, StoreError::NotFound(_)) {
                    self.note_fallback(name, &e);
                } else {
                    self.inner.queue.lock().expect("queue lock").fallback_reads += 1;
                }
                self.inner.remote.get_range(name, range).await
            }
        }
    }

    async fn head(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError> {
        match self.inner.local.head(name).await {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => self.inner.remote.head(name).await,
            Err(e) => {
                self.note_fallback(name, &e);
                self.inner.remote.head(name).await
            }
        }
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError> {
        let local = match self.inner.local.list(kind).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, %kind, "cannot list the local store: listing the bucket alone");
                Vec::new()
            }
        };
        let mut out: BTreeMap<ObjectName, ObjectMeta> = local.into_iter().map(|m| (m.name, m)).collect();
        // Names only the bucket has (the local store lost them): verified by hash as the S3
        // backend resolves them. A bucket that cannot be listed leaves the local listing.
        let prefix = self.inner.remote.config().prefix.clone();
        match self.inner.remote.list_versions(&format!("{prefix}{kind}/")).await {
            Ok(versions) => {
                let only_remote: std::collections::BTreeSet<ObjectName> = versions
                    .iter()
                    .filter_map(|v| v.key[prefix.len()..].parse::<ObjectName>().ok())
                    .filter(|n| n.kind == kind && !out.contains_key(n))
                    .collect();
                for name in only_remote {
                    if let Some(m) = self.inner.remote.head(&name).await? {
                        out.insert(name, m);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %kind, "cannot list the bucket: listing the local store alone")
            }
        }
        Ok(out.into_values().collect())
    }

    async fn extend_retention(&self, name: &ObjectName, until: Timestamp) -> Result<Timestamp, StoreError> {
        match self.inner.local.extend_retention(name, until).await {
            Ok(t) => {
                // The bucket's lock follows through the queue (put-if-absent raises it).
                let size = self.inner.local.head(name).await?.map(|m| m.size).unwrap_or(0);
                self.enqueue(*name, size);
                Ok(t)
            }
            Err(StoreError::NotFound(_)) => self.inner.remote.extend_retention(name, until).await,
            Err(e) => Err(e),
        }
    }

    async fn status(&self) -> Vec<StoreStatus> {
        let mut local = self.inner.local.status().await;
        for s in &mut local {
            s.role = "mirror.local".into();
        }
        local.push(self.upload_status());
        local
    }
}

#[async_trait::async_trait]
impl Expunge for MirrorStore {
    async fn expunge(&self, name: &ObjectName, authority: ExpungeAuthority<'_>) -> Result<(), StoreError> {
        let _no_upload = self.inner.uploading.lock().await;
        let (local_has, remote_has) =
            (self.inner.local.head(name).await?.is_some(), self.inner.remote.head(name).await?.is_some());
        if !local_has && !remote_has {
            return Err(StoreError::NotFound(*name));
        }
        // The bucket first: if its lock refuses, the local copy stays too.
        let authority = match authority {
            ExpungeAuthority::Expired { now } => {
                if remote_has {
                    self.inner.remote.expunge(name, ExpungeAuthority::Expired { now }).await?;
                }
                ExpungeAuthority::Expired { now }
            }
            ExpungeAuthority::Quorum(w) => {
                if remote_has {
                    self.inner.remote.expunge(name, ExpungeAuthority::Quorum(w)).await?;
                }
                ExpungeAuthority::Quorum(w)
            }
        };
        self.inner.queue.lock().expect("queue lock").remove(name);
        if local_has {
            self.inner.local.expunge(name, authority).await?;
        }
        Ok(())
    }
}

/// The earliest known retention over both copies (for a one-line summary).
pub fn min_retention(statuses: &[StoreStatus]) -> Option<Timestamp> {
    statuses.iter().fold(None, |acc, s| earliest(acc, s.min_retain_until))
}
