//! Repository round trips: init/open with escrow keys, catalog order, backup, dedup, restore.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use store::{LocalDir, ObjectKind, ObjectStore, Repository, Timestamp};

fn rng_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small fake PostgreSQL data directory.
fn make_datadir(root: &Path) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // A relation of 40 pages with text-like content, a WAL segment, a config file, random data.
    let mut rel = Vec::new();
    for page in 0..40u32 {
        let mut p = format!("page {page} ").repeat(8192 / 10).into_bytes();
        p.resize(8192, b' ');
        rel.extend_from_slice(&p);
    }
    w("base/5/16384", &rel, 0o600);
    w("base/5/16384_fsm", &rel[..8192 * 3], 0o600);
    w("pg_wal/000000010000000000000001", &rng_bytes(3 << 20, 1), 0o600);
    w("postgresql.conf", b"shared_buffers = 128MB\n", 0o644);
    w("big.bin", &rng_bytes(5 << 20, 2), 0o640);
    w("empty", b"", 0o600);
    std::fs::create_dir_all(root.join("pg_notify")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/tblspc", root.join("tblspc_link")).unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut stack = vec![std::path::PathBuf::new()];
    let mut n = 0;
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let (ma, mb) = (
                std::fs::symlink_metadata(a.join(&r)).unwrap(),
                std::fs::symlink_metadata(b.join(&r)).unwrap(),
            );
            assert_eq!(ma.file_type(), mb.file_type(), "{r:?}");
            if ma.is_dir() {
                stack.push(r.clone());
            } else if ma.file_type().is_symlink() {
                assert_eq!(std::fs::read_link(a.join(&r)).unwrap(), std::fs::read_link(b.join(&r)).unwrap());
            } else {
                assert_eq!(std::fs::read(a.join(&r)).unwrap(), std::fs::read(b.join(&r)).unwrap(), "{r:?}");
                assert_eq!(ma.permissions().mode() & 0o7777, mb.permissions().mode() & 0o7777, "{r:?}");
                assert_eq!(
                    ma.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
                    mb.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
                    "{r:?}"
                );
            }
            n += 1;
        }
    }
    assert!(n >= 8, "walked only {n} entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_open_catalog_backup_restore() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDir::open(dir.path().join("vault")).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(local.clone());
    let vault_id = age::x25519::Identity::generate();
    let escrow = age::x25519::Identity::generate();
    let now = Timestamp::now();
    let until = now.plus(std::time::Duration::from_secs(86400));
    let repo =
        Repository::init(store.clone(), &[vault_id.to_public(), escrow.to_public()], now, Timestamp::FOREVER)
            .await
            .unwrap();
    assert_eq!(repo.id().len(), 32);
    // A second init is refused.
    assert!(Repository::init(store.clone(), &[vault_id.to_public()], now, until).await.is_err());

    // Catalog: order by (written_at, name), identical records distinct.
    let r2 = repo
        .append_record("token.created", serde_json::json!({"t": 2}), Timestamp(now.0 + 2), until)
        .await
        .unwrap();
    let r1 = repo
        .append_record("token.created", serde_json::json!({"t": 1}), Timestamp(now.0 + 1), until)
        .await
        .unwrap();
    let r1b = repo
        .append_record("token.created", serde_json::json!({"t": 1}), Timestamp(now.0 + 1), until)
        .await
        .unwrap();
    assert_ne!(r1, r1b);
    assert!(repo.append_record("Bad Kind", serde_json::json!({}), now, until).await.is_err());

    // Open with the escrow identity alone (G5): same id, same records.
    let reopened = Repository::open(store.clone(), std::slice::from_ref(&escrow)).await.unwrap();
    assert_eq!(reopened.id(), repo.id());
    let recs = reopened.records().await.unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2].0, r2);
    assert!(recs[0].1.written_at <= recs[1].1.written_at);
    // A stranger cannot open it.
    let err = Repository::open(store.clone(), &[age::x25519::Identity::generate()]).await.unwrap_err();
    assert!(err.to_string().contains("escrow"), "{err}");

    // Backup a data directory.
    let src = dir.path().join("src");
    make_datadir(&src);
    let (r, s) = (reopened.clone(), src.clone());
    let rec1 = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("first", until);
        w.add_tree(&s).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    assert!(rec1.files >= 8);
    assert!(rec1.bytes > 8 << 20);
    let backups = reopened.backups().await.unwrap();
    assert_eq!(backups, vec![rec1.clone()]);

    // Restore and compare: content, modes, mtimes, empty dir, symlink.
    let out = dir.path().join("restored");
    let stats = reopened.restore(&rec1.id, &out).await.unwrap();
    assert_eq!(stats.bytes, rec1.bytes);
    assert_same_tree(&src, &out);
    assert!(out.join("pg_notify").is_dir());

    // Change one page of the relation: the second backup stores about one page.
    let relp = src.join("base/5/16384");
    let mut rel = std::fs::read(&relp).unwrap();
    rel[8192 * 7 + 100] ^= 0xff;
    std::fs::write(&relp, &rel).unwrap();
    let packs_before = store.list(ObjectKind::Pack).await.unwrap();
    let later = Timestamp(until.0 + 1000);
    let (r, s) = (reopened.clone(), src.clone());
    let rec2 = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("second", later);
        w.add_tree(&s).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    assert!(rec2.stored_bytes < 64 << 10, "second backup stored {} bytes", rec2.stored_bytes);
    // Reused packs now live as long as the second backup.
    for p in &packs_before {
        assert_eq!(store.head(&p.name).await.unwrap().unwrap().retain_until, later, "{}", p.name);
    }
    let out2 = dir.path().join("restored2");
    reopened.restore(&rec2.id, &out2).await.unwrap();
    assert_same_tree(&src, &out2);
    let refd = reopened.referenced_packs(&[rec1.clone(), rec2.clone()]).await.unwrap();
    assert_eq!(refd.len(), store.list(ObjectKind::Pack).await.unwrap().len());

    // A fresh open loads the index files and can restore too; a damaged pack fails the restore.
    let third = Repository::open(store.clone(), &[vault_id]).await.unwrap();
    assert_eq!(third.backups().await.unwrap().len(), 2);
    let victim = refd.iter().next().unwrap();
    let path = local.object_path(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200] ^= 1;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let err1 = third.restore(&rec1.id, &dir.path().join("r3")).await;
    let err2 = third.restore(&rec2.id, &dir.path().join("r4")).await;
    assert!(err1.is_err() || err2.is_err(), "a damaged pack went unnoticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_stream_and_unknown_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(dir.path()).unwrap());
    let id = age::x25519::Identity::generate();
    let repo =
        Repository::init(store, &[id.to_public()], Timestamp::now(), Timestamp::FOREVER).await.unwrap();
    let r = repo.clone();
    let data = rng_bytes(2 << 20, 9);
    let d2 = data.clone();
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("stream", Timestamp::FOREVER);
        assert!(w.add_stream("../escape", &d2[..], 0o600, 0).is_err());
        assert_eq!(w.add_stream("base.tar", &d2[..], 0o600, 0).unwrap(), d2.len() as u64);
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    let out = dir.path().join("out");
    repo.restore(&rec.id, &out).await.unwrap();
    assert_eq!(std::fs::read(out.join("base.tar")).unwrap(), data);
    assert!(repo.restore("nope", &out).await.is_err());
}

/// Ranges of a backed-up file read through the repository equal the same ranges of the
/// original, wherever they start and end relative to chunk boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_ranges_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_datadir(&src);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(dir.path().join("repo")).unwrap());
    let id = age::x25519::Identity::generate();
    let repo =
        Repository::init(store, &[id.to_public()], Timestamp::now(), Timestamp::FOREVER).await.unwrap();
    let (r, s) = (repo.clone(), src.clone());
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("ranges", Timestamp::FOREVER);
        w.add_tree(&s).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    let mut entries = Vec::new();
    repo.for_each_entry(&rec, |e| {
        entries.push(e);
        Ok(())
    })
    .await
    .unwrap();
    let mut checked = 0;
    for e in entries.iter().filter(|e| e.kind == store::snapshot::EntryKind::File) {
        let original = std::fs::read(src.join(&e.path)).unwrap();
        let size = original.len() as u64;
        for (offset, len) in [
            (0, size),
            (0, 1),
            (1, 8191),
            (8191, 2),
            (131_071, 131_073),
            (size / 2, size),
            (size, 10),
            (size + 5, 1),
        ] {
            let got = repo.read_file_range(e, offset, len).await.unwrap();
            let from = offset.min(size) as usize;
            let to = offset.saturating_add(len).min(size) as usize;
            assert_eq!(got, original[from..to], "{} [{offset}, +{len})", e.path);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} ranges checked");
}

/// Counts the ranged reads that reach the store (an object store answers each with a request).
struct CountingStore {
    inner: LocalDir,
    ranged_reads: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_if_absent(
        &self,
        name: &store::ObjectName,
        bytes: bytes::Bytes,
        retain_until: Timestamp,
    ) -> Result<store::PutOutcome, store::StoreError> {
        self.inner.put_if_absent(name, bytes, retain_until).await
    }
    async fn get(&self, name: &store::ObjectName) -> Result<bytes::Bytes, store::StoreError> {
        self.inner.get(name).await
    }
    async fn get_range(
        &self,
        name: &store::ObjectName,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, store::StoreError> {
        self.ranged_reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get_range(name, range).await
    }
    async fn head(&self, name: &store::ObjectName) -> Result<Option<store::ObjectMeta>, store::StoreError> {
        self.inner.head(name).await
    }
    async fn list(&self, kind: ObjectKind) -> Result<Vec<store::ObjectMeta>, store::StoreError> {
        self.inner.list(kind).await
    }
    async fn extend_retention(
        &self,
        name: &store::ObjectName,
        until: Timestamp,
    ) -> Result<Timestamp, store::StoreError> {
        self.inner.extend_retention(name, until).await
    }
}

/// Reading a file's range over the repository (what a restore through the vault does) reads the
/// chunks that sit back to back in a pack with one ranged read, not one per chunk: on S3 each
/// read is a request (found by bench/s3.sh: ~4,500 GETs for a 500 MB restore from Ceph RGW).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_range_reads_each_pack_once_not_each_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_datadir(&src);
    // A relation of 400 pages (3.2 MB, incompressible): 25 fixed-size chunks of 16 pages.
    std::fs::write(src.join("base/5/16390"), rng_bytes(400 * 8192, 3)).unwrap();
    let counting = Arc::new(CountingStore {
        inner: LocalDir::open(dir.path().join("repo")).unwrap(),
        ranged_reads: Default::default(),
    });
    let store: Arc<dyn ObjectStore> = counting.clone();
    let id = age::x25519::Identity::generate();
    let repo =
        Repository::init(store, &[id.to_public()], Timestamp::now(), Timestamp::FOREVER).await.unwrap();
    let (r, s) = (repo.clone(), src.clone());
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("runs", Timestamp::FOREVER);
        w.add_tree(&s).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    let mut entries = Vec::new();
    repo.for_each_entry(&rec, |e| {
        entries.push(e);
        Ok(())
    })
    .await
    .unwrap();
    let big = entries.iter().find(|e| e.path == "base/5/16390").expect("the relation in the backup");
    assert!(
        big.chunks.len() >= 20,
        "the relation is only {} chunks: the test would prove nothing",
        big.chunks.len()
    );
    let before = counting.ranged_reads.load(std::sync::atomic::Ordering::SeqCst);
    let got = repo.read_file_range(big, 0, big.size).await.unwrap();
    let reads = counting.ranged_reads.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(got, std::fs::read(src.join("base/5/16390")).unwrap());
    // 3.2 MB of incompressible data: in one pack, or across the boundary of two.
    assert!(reads <= 2, "{reads} ranged reads for {} chunks of one file", big.chunks.len());
}
