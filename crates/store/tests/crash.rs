//! Crash test: SIGKILL a writer at random moments; the store must stay whole every time.
//!
//! The test binary re-invokes itself as the child (`HOLDFAST_CRASH_CHILD` set), which writes
//! catalog records and small backups in a loop. After each kill the parent checks, through a
//! `LocalDir` it opened before the crashes (so nothing cleaned up for it): every listed object
//! hashes to its name, no temporary file is listed, and `check` with keys finds nothing damaged,
//! missing, or any backup affected. Seeds are fixed so a failure reproduces.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{InitOptions, LocalDir, ObjectKind, ObjectStore, Repository, Timestamp, check};

const KILLS: u64 = 32;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One `#[test]`, so every runner lists it; the child is this same test re-run with
/// `HOLDFAST_CRASH_CHILD` set (`--exact`, so nothing else runs in it).
#[test]
fn sigkill_mid_write_leaves_the_store_whole() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match std::env::var("HOLDFAST_CRASH_CHILD") {
        Ok(dir) => rt.block_on(child(dir)),
        Err(_) => rt.block_on(parent()),
    }
}

/// Kill count: 32 by default; `./run soak` raises it through `HOLDFAST_CRASH_KILLS`.
fn kills() -> u64 {
    std::env::var("HOLDFAST_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(KILLS)
}

/// Writes until killed.
async fn child(dir: String) {
    let identity: age::x25519::Identity =
        std::env::var("HOLDFAST_CRASH_IDENTITY").expect("identity").parse().expect("identity parses");
    let mut seed: u64 = std::env::var("HOLDFAST_CRASH_SEED").expect("seed").parse().expect("seed parses");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(&dir).expect("store opens"));
    let repo = Repository::open(store, &[identity]).await.expect("repository opens");
    let shared: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    loop {
        let n = xorshift(&mut seed);
        repo.append_record("crash.tick", serde_json::json!({"n": n}), Timestamp::now(), Timestamp::FOREVER)
            .await
            .expect("record");
        let r = repo.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = n;
            let mut w = r.backup_writer("crash", Timestamp::now().plus(Duration::from_secs(3600)));
            w.add_stream("shared", &shared[..], 0o600, 0).expect("shared");
            for f in 0..3 {
                let data: Vec<u8> = (0..60_000).map(|_| xorshift(&mut s) as u8).collect();
                w.add_stream(&format!("f{f}"), &data[..], 0o600, 0).expect("file");
            }
            w.finish(Timestamp::now()).expect("finish");
        })
        .await
        .expect("backup task");
    }
}

async fn parent() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vault");
    // Opened once, before any crash: its open-time cleanup of tmp/ never runs again.
    let local = LocalDir::open(&root).expect("store");
    let store: Arc<dyn ObjectStore> = Arc::new(local.clone());
    let identity = age::x25519::Identity::generate();
    let options = InitOptions { pack_size: 1 << 20, ..InitOptions::default() };
    Repository::init_with(
        store.clone(),
        &[identity.to_public()],
        Timestamp::now(),
        Timestamp::FOREVER,
        options,
    )
    .await
    .expect("init");
    let exe = std::env::current_exe().expect("current exe");
    let mut rng: u64 = 0x5eed_0001;
    let mut orphans_seen = 0;
    let kills = kills();
    for kill in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_mid_write_leaves_the_store_whole",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("HOLDFAST_CRASH_CHILD", &root)
            .env("HOLDFAST_CRASH_IDENTITY", age::secrecy::ExposeSecret::expose_secret(&identity.to_string()))
            .env("HOLDFAST_CRASH_SEED", (kill + 1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        // Mostly short runs (kills mid-write), every eighth long enough for backups to complete.
        let wait = if kill % 8 == 7 { 1500 } else { 30 + xorshift(&mut rng) % 400 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kill {kill}: the writer exited by itself ({status}) instead of being killed");
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        if std::fs::read_dir(root.join("tmp")).map(|d| d.count()).unwrap_or(0) > 0 {
            orphans_seen += 1;
        }
        for kind in ObjectKind::ALL {
            for meta in store.list(kind).await.expect("list") {
                let bytes = store.get(&meta.name).await.expect("get");
                meta.name.verify(&bytes).unwrap_or_else(|e| panic!("kill {kill}: {e}"));
                assert_eq!(meta.size, bytes.len() as u64);
            }
        }
        let repo =
            Repository::open(store.clone(), std::slice::from_ref(&identity)).await.expect("open after crash");
        let report = check(store.as_ref(), Some(&repo)).await;
        assert!(report.is_clean(), "kill {kill} after {wait} ms: {report:#?}");
    }
    let backups =
        Repository::open(store.clone(), &[identity]).await.expect("open").backups().await.expect("backups");
    assert!(!backups.is_empty(), "no backup ever completed: the kills came too early to test anything");
    eprintln!(
        "crash: {kills} kills, {} backups completed, {orphans_seen} kills left temp files, {:?}",
        backups.len(),
        started.elapsed()
    );
}
