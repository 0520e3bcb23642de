//! Faults of the write-through store (`MirrorStore`: local directory → S3 bucket with Object
//! Lock) on a real Ceph RGW: the bucket going away under writes, the process dying with uploads
//! pending or in flight, and the local copy erased by root. Each asserts nothing was lost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{
    LocalDir, MirrorStore, ObjectKind, ObjectName, ObjectStore, PutOutcome, S3Config, S3Store, Timestamp,
};

/// `n` objects of `size` pseudo-random bytes (distinct per `tag`).
fn objects(tag: u64, n: u64, size: usize) -> Vec<(ObjectName, Bytes)> {
    (0..n)
        .map(|i| {
            let mut x = (tag << 32) ^ i ^ 0x9e37_79b9_7f4a_7c15;
            let b: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (ObjectName::for_bytes(ObjectKind::Pack, &b), Bytes::from(b))
        })
        .collect()
}

async fn poll(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RGW stops under writes: every write still succeeds (durable locally), the queue grows and
/// says uploads fail; RGW returns: it drains. RGW stops again and the process "dies" with the
/// queue in memory: a new store on the same directory finds what the bucket lacks by comparing
/// listings, and uploads it. Then root erases the local directory: every object is read from the
/// bucket (verified by hash), listings still show everything, and new writes still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_outage_queues_drains_and_a_restart_resumes_from_the_listings() {
    let mut ceph = testkit::ceph::TempCeph::start().unwrap();
    let cfg = testkit::s3::config(&ceph, "mirror-faults", "db1/").unwrap();
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let until = Timestamp::now().plus(Duration::from_secs(3 * 86_400));
    let m = MirrorStore::open(LocalDir::open(&root).unwrap(), S3Store::open(cfg.clone()).await.unwrap());
    let first = objects(1, 4, 300_000);
    for (n, b) in &first {
        assert_eq!(m.put_if_absent(n, b.clone(), until).await.unwrap(), PutOutcome::Created);
    }
    assert!(m.wait_drained(Duration::from_secs(60)).await);

    // Outage 1: writes succeed, the queue grows, the failure is visible; reads are local.
    ceph.stop_rgw().unwrap();
    let during = objects(2, 6, 300_000);
    for (n, b) in &during {
        assert_eq!(m.put_if_absent(n, b.clone(), until).await.unwrap(), PutOutcome::Created);
    }
    poll("the failure to show", Duration::from_secs(30), async || m.upload_status().failing_since.is_some())
        .await;
    let st = m.upload_status();
    assert_eq!(st.pending_objects, Some(6), "{st:?}");
    assert_eq!(st.pending_bytes, Some(6 * 300_000));
    assert!(st.last_error.as_deref().unwrap_or("").contains("is the S3 endpoint up"), "{st:?}");
    for (n, b) in first.iter().chain(&during) {
        assert_eq!(&m.get(n).await.unwrap(), b);
    }
    ceph.start_rgw().unwrap();
    assert!(m.wait_drained(Duration::from_secs(60)).await, "{:?}", m.upload_status());
    assert!(m.upload_status().failing_since.is_none());

    // Outage 2, and the process dies with the queue only in memory.
    ceph.stop_rgw().unwrap();
    let lost_queue = objects(3, 5, 300_000);
    for (n, b) in &lost_queue {
        m.put_if_absent(n, b.clone(), until).await.unwrap();
    }
    assert_eq!(m.pending().0, 5);
    drop(m);
    ceph.start_rgw().unwrap();
    let m = MirrorStore::open(LocalDir::open(&root).unwrap(), S3Store::open(cfg.clone()).await.unwrap());
    assert!(m.wait_drained(Duration::from_secs(60)).await, "{:?}", m.upload_status());

    // The bucket alone (a fresh handle: nothing cached) holds every object, with its lock.
    let all: Vec<_> = first.iter().chain(&during).chain(&lost_queue).cloned().collect();
    let bucket = S3Store::open(cfg.clone()).await.unwrap();
    for (n, b) in &all {
        assert_eq!(&bucket.get(n).await.unwrap(), b, "{n} in the bucket");
        assert!(bucket.head(n).await.unwrap().unwrap().retain_until >= until);
    }

    // Root erases the local copy: reads come from the bucket, object by object.
    std::fs::remove_dir_all(&root).unwrap();
    let listed: Vec<ObjectName> =
        m.list(ObjectKind::Pack).await.unwrap().into_iter().map(|x| x.name).collect();
    let mut want: Vec<ObjectName> = all.iter().map(|(n, _)| *n).collect();
    want.sort();
    assert_eq!(listed, want);
    for (n, b) in &all {
        assert_eq!(&m.get(n).await.unwrap(), b);
        assert_eq!(&m.get_range(n, 10..20).await.unwrap()[..], &b[10..20]);
    }
    assert!(m.upload_status().fallback_reads >= 2 * all.len() as u64);
    // A write after the erasure is still acknowledged only once durable somewhere, and uploaded.
    let (n, b) = objects(4, 1, 1000).remove(0);
    m.put_if_absent(&n, b.clone(), until).await.unwrap();
    assert!(m.wait_drained(Duration::from_secs(60)).await);
    assert_eq!(bucket.get(&n).await.unwrap(), b);
    // `check` of the copies names what is missing where.
    let copies = m.verify_copies().await;
    assert_eq!(copies.local_missing.len(), all.len(), "{copies:?}");
    assert!(copies.remote_missing.is_empty() && copies.errors.is_empty(), "{copies:?}");
}

const CHILD: &str = "HOLDFAST_MIRROR_CHILD";
const OBJECTS: u64 = 24;
const SIZE: usize = 4 << 20;

/// SIGKILL of the process while it uploads: no version in the bucket is partial (every version
/// of every key has the object's full size and the bucket's reader verifies each by hash), and
/// a new process resumes from the listings and uploads the rest, exactly once per object.
/// The child is this test re-run with `HOLDFAST_MIRROR_CHILD` set: it opens the mirror on a
/// directory of not-yet-uploaded objects and uploads until killed.
#[test]
fn sigkill_mid_upload_leaves_nothing_half_written() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match std::env::var(CHILD) {
        Ok(spec) => rt.block_on(child(spec)),
        Err(_) => rt.block_on(parent()),
    }
}

async fn child(spec: String) {
    let (root, cfg) = spec.split_once('\n').expect("root\\nconfig");
    let cfg: S3Config = serde_json::from_str(cfg).expect("config");
    let _m = MirrorStore::open(LocalDir::open(root).unwrap(), S3Store::open(cfg).await.unwrap());
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn parent() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let cfg = testkit::s3::config(&ceph, "mirror-sigkill", "db1/").unwrap();
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let until = Timestamp::now().plus(Duration::from_secs(86_400));
    let local = LocalDir::open(&root).unwrap();
    let all = objects(7, OBJECTS, SIZE);
    for (n, b) in &all {
        local.put_if_absent(n, b.clone(), until).await.unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "mirror_faults::sigkill_mid_upload_leaves_nothing_half_written", "--nocapture"])
        .env(CHILD, format!("{}\n{}", root.display(), serde_json::to_string(&cfg).unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bucket = S3Store::open(cfg.clone()).await.unwrap();
    let keys = async || {
        let v = bucket.list_versions(&cfg.prefix).await.unwrap();
        v.iter().map(|e| e.key.clone()).collect::<std::collections::BTreeSet<_>>().len() as u64
    };
    poll("the child's first uploads", Duration::from_secs(60), async || keys().await >= 2).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = keys().await;
    assert!(at_kill < OBJECTS, "the child uploaded everything before the kill: no kill mid-upload");

    // Nothing half-written: every version there has the full size and reads back valid.
    let versions = bucket.list_versions(&cfg.prefix).await.unwrap();
    for v in &versions {
        assert_eq!(v.size, SIZE as u64, "a partial version of {} is in the bucket", v.key);
    }
    for m in bucket.list(ObjectKind::Pack).await.unwrap() {
        let b = bucket.get(&m.name).await.unwrap();
        assert!(m.name.verify(&b).is_ok());
    }

    // A new process resumes: every object uploaded, one version each.
    let m = MirrorStore::open(LocalDir::open(&root).unwrap(), S3Store::open(cfg.clone()).await.unwrap());
    assert!(m.wait_drained(Duration::from_secs(120)).await, "{:?}", m.upload_status());
    let versions = bucket.list_versions(&cfg.prefix).await.unwrap();
    assert_eq!(versions.len() as u64, OBJECTS, "one version per object: {versions:?}");
    let fresh = S3Store::open(cfg).await.unwrap();
    for (n, b) in &all {
        assert_eq!(&fresh.get(n).await.unwrap(), b);
    }
}
