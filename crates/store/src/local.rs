//! `LocalDir`: the object store on a local directory, the embedded default.
//!
//! Layout (see docs/vault-format.md): `<root>/<kind>/<hh>/<hex>` for objects, where `hh` is the
//! first two hex digits; `<root>/retention/<kind>/<hh>/<hex>` holds the retain-until instant as
//! decimal Unix seconds; `<root>/tmp/` holds writes in progress and is never listed.
//!
//! Durability: each file is written to `tmp/`, fsynced, then *hard-linked* into place and the
//! directory fsynced (an object's bytes and its retention file are written and fsynced in
//! parallel; the retention file is named first). `link(2)` fails if the target exists, so publishing is atomic and can
//! never replace an object, even between two writers racing for the same name. A crash leaves
//! at worst an orphan in `tmp/`, which is cleared at open. Retention is written before the
//! object, so a visible object always has its retention on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::backend::{
    Expunge, ExpungeAuthority, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreStatus,
};
use crate::name::{ObjectId, ObjectKind, ObjectName};
use crate::timestamp::Timestamp;

/// An object store on a local directory. Cheap to clone: clones share one state.
#[derive(Debug, Clone)]
pub struct LocalDir {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Serialises read-compare-write of retention files within this process.
    retention_lock: Mutex<()>,
}

impl LocalDir {
    /// Opens (creating if needed) a store rooted at `root`, clearing abandoned temporary files.
    pub fn open(root: impl AsRef<Path>) -> Result<LocalDir, StoreError> {
        Ok(LocalDir { inner: std::sync::Arc::new(Inner::open(root)?) })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where an object's bytes live (useful to tests that tamper with the disk).
    pub fn object_path(&self, name: &ObjectName) -> PathBuf {
        self.inner.object_path(name)
    }
}

impl Inner {
    /// Opens (creating if needed) a store rooted at `root`, clearing abandoned temporary files.
    fn open(root: impl AsRef<Path>) -> Result<Inner, StoreError> {
        let root = root.as_ref().to_path_buf();
        for sub in ["tmp", "retention"] {
            fs::create_dir_all(root.join(sub))
                .map_err(|e| StoreError::io(format!("creating {}", root.join(sub).display()), e))?;
        }
        for kind in ObjectKind::ALL {
            let d = root.join(kind.as_str());
            fs::create_dir_all(&d).map_err(|e| StoreError::io(format!("creating {}", d.display()), e))?;
        }
        // Writes in progress when a previous process died: never published, safe to clear.
        // Temporary names start with the writer's pid; another live process (a server while
        // the CLI runs `check`) keeps its files.
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.split('-').next()).and_then(|p| p.parse::<u32>().ok());
                let alive =
                    pid.is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Inner { root, retention_lock: Mutex::new(()) })
    }

    fn object_path(&self, name: &ObjectName) -> PathBuf {
        let hex = name.id.to_hex();
        self.root.join(name.kind.as_str()).join(&hex[..2]).join(hex)
    }

    fn retention_path(&self, name: &ObjectName) -> PathBuf {
        let hex = name.id.to_hex();
        self.root.join("retention").join(name.kind.as_str()).join(&hex[..2]).join(hex)
    }

    fn tmp_path(&self) -> PathBuf {
        // One counter per process: two stores open on the same directory never collide.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Writes `bytes` to a new temporary file and fsyncs it.
    fn write_tmp(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_path();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(format!("writing {}", tmp.display()), e)
        })?;
        Ok(tmp)
    }

    fn read_retention(&self, name: &ObjectName) -> Result<Timestamp, StoreError> {
        let p = self.retention_path(name);
        match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse::<i64>().map(Timestamp).map_err(|_| {
                StoreError::io(
                    format!("reading {}", p.display()),
                    io::Error::other("retention file is corrupt"),
                )
            }),
            // No retention file: treat as retained forever, the safe reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Timestamp::FOREVER),
            Err(e) => Err(StoreError::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Sets retention to `until` if later than what is on disk. Returns the value in force.
    fn raise_retention(
        &self,
        name: &ObjectName,
        until: Timestamp,
        exists: bool,
    ) -> Result<Timestamp, StoreError> {
        let _guard = self.retention_lock.lock().unwrap_or_else(|p| p.into_inner());
        let p = self.retention_path(name);
        let current = match fs::metadata(&p) {
            Ok(_) => Some(self.read_retention(name)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(format!("reading {}", p.display()), e)),
        };
        let current = match (current, exists) {
            (Some(c), _) => Some(c),
            // An existing object without a retention file is retained forever.
            (None, true) => Some(Timestamp::FOREVER),
            (None, false) => None,
        };
        if let Some(c) = current
            && c >= until
        {
            return Ok(c);
        }
        let tmp = self.write_tmp(format!("{}\n", until.as_secs()).as_bytes())?;
        let dir = p.parent().expect("retention path has a parent");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        // Replacing the retention file is allowed: the new value is strictly later.
        fs::rename(&tmp, &p).map_err(|e| StoreError::io(format!("publishing {}", p.display()), e))?;
        sync_dir(dir)?;
        Ok(until)
    }

    fn put_blocking(
        &self,
        name: &ObjectName,
        bytes: &[u8],
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        name.verify(bytes)?;
        let path = self.object_path(name);
        if path.exists() {
            self.raise_retention(name, retain_until, true)?;
            return Ok(PutOutcome::AlreadyPresent);
        }
        // The retention file and the object's bytes are written and fsynced at once, on two
        // threads (a journaling filesystem commits both in one go): each must be durable before
        // it is named, and nothing orders the two against each other. What is ordered is the
        // naming: the retention file is in place (its directory fsynced) before the object is
        // linked, so a visible object always has its retention. A WAL piece in synchronous mode
        // waits for this on every commit: three rounds of fsync instead of four.
        let (retention, tmp) = std::thread::scope(|s| {
            let object = s.spawn(|| self.write_tmp(bytes));
            let retention = self.raise_retention(name, retain_until, false);
            (retention, object.join())
        });
        let tmp = tmp.unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        if let Err(e) = retention {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let dir = path.parent().expect("object path has a parent");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir)?;
                Ok(PutOutcome::Created)
            }
            // Someone else published the same name (hence the same bytes) first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyPresent),
            Err(e) => Err(StoreError::io(format!("publishing {}", path.display()), e)),
        }
    }

    fn open_object(&self, name: &ObjectName) -> Result<File, StoreError> {
        let path = self.object_path(name);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound(*name)
            } else {
                StoreError::io(format!("opening {}", path.display()), e)
            }
        })
    }

    fn head_blocking(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.object_path(name);
        match fs::metadata(&path) {
            Ok(m) => {
                Ok(Some(ObjectMeta { name: *name, size: m.len(), retain_until: self.read_retention(name)? }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn list_blocking(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError> {
        let dir = self.root.join(kind.as_str());
        let mut out = Vec::new();
        let fanout = match fs::read_dir(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        for sub in fanout {
            let sub = sub.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            let Ok(files) = fs::read_dir(sub.path()) else { continue };
            for f in files.flatten() {
                // Anything that is not a well-formed name is not an object of this store.
                let Some(id) = f.file_name().to_str().and_then(|s| ObjectId::from_hex(s).ok()) else {
                    continue;
                };
                let name = ObjectName { kind, id };
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(ObjectMeta { name, size, retain_until: self.read_retention(&name)? });
            }
        }
        out.sort_by_key(|m| m.name);
        Ok(out)
    }

    fn expunge_blocking(&self, name: &ObjectName, authority: ExpungeAuthority<'_>) -> Result<(), StoreError> {
        let meta = self.head_blocking(name)?.ok_or(StoreError::NotFound(*name))?;
        match authority {
            ExpungeAuthority::Expired { now } => {
                if meta.retain_until > now {
                    return Err(StoreError::Refused(format!(
                        "{name} is retained until {}; it cannot be removed at {now}",
                        meta.retain_until
                    )));
                }
            }
            ExpungeAuthority::Quorum(w) => {
                if !w.covers(name) {
                    return Err(StoreError::Refused(format!("the quorum warrant does not name {name}")));
                }
            }
        }
        let path = self.object_path(name);
        fs::remove_file(&path).map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        sync_dir(path.parent().expect("object path has a parent"))?;
        let _ = fs::remove_file(self.retention_path(name));
        Ok(())
    }
}

/// Makes a directory's entries (names created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))
}

/// Runs blocking filesystem work off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::io("a storage task", io::Error::other(e.to_string()))))
}

#[async_trait::async_trait]
impl ObjectStore for LocalDir {
    async fn put_if_absent(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        let (me, name) = (self.inner.clone(), *name);
        blocking(move || me.put_blocking(&name, &bytes, retain_until)).await
    }

    async fn get(&self, name: &ObjectName) -> Result<Bytes, StoreError> {
        let (me, name) = (self.inner.clone(), *name);
        blocking(move || {
            let mut f = me.open_object(&name)?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(|e| StoreError::io(format!("reading {name}"), e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_range(&self, name: &ObjectName, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (me, name) = (self.inner.clone(), *name);
        blocking(move || {
            let mut f = me.open_object(&name)?;
            let size = f.metadata().map_err(|e| StoreError::io(format!("reading {name}"), e))?.len();
            if range.start > range.end || range.end > size {
                return Err(StoreError::BadRange { name, start: range.start, end: range.end, size });
            }
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.seek(SeekFrom::Start(range.start))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| StoreError::io(format!("reading {name}"), e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError> {
        let (me, name) = (self.inner.clone(), *name);
        blocking(move || me.head_blocking(&name)).await
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError> {
        let me = self.inner.clone();
        blocking(move || me.list_blocking(kind)).await
    }

    async fn extend_retention(&self, name: &ObjectName, until: Timestamp) -> Result<Timestamp, StoreError> {
        let (me, name) = (self.inner.clone(), *name);
        blocking(move || {
            if !me.object_path(&name).exists() {
                return Err(StoreError::NotFound(name));
            }
            me.raise_retention(&name, until, true)
        })
        .await
    }

    async fn status(&self) -> Vec<StoreStatus> {
        let mut st = StoreStatus {
            role: "local".into(),
            location: self.root().display().to_string(),
            lock_mode: "software".into(),
            ..StoreStatus::default()
        };
        for kind in ObjectKind::ALL {
            match self.list(kind).await {
                Ok(list) => {
                    st.objects += list.len() as u64;
                    st.min_retain_until = crate::backend::earliest(
                        st.min_retain_until,
                        list.iter().map(|m| m.retain_until).min(),
                    );
                }
                Err(e) => st.last_error = Some(e.to_string()),
            }
        }
        vec![st]
    }
}

#[async_trait::async_trait]
impl Expunge for LocalDir {
    async fn expunge(&self, name: &ObjectName, authority: ExpungeAuthority<'_>) -> Result<(), StoreError> {
        // The warrant is borrowed, so this runs on the current thread: removal is rare and small.
        self.inner.expunge_blocking(name, authority)
    }
}
