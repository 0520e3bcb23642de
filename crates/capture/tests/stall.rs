//! Blindness is an incident: when the vault itself cannot store WAL (a full disk, here a store
//! that answers ENOSPC the way a full filesystem does), capture raises `capture_stalled` with
//! an alert within seconds — reconnecting does not restart the clock — and once space is back
//! it resumes where the durable WAL ends: no gap, nothing lost. Also: records a client token
//! appended are never loaded as the vault's incidents or backups.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use capture::{Cluster, ClusterConfig, Collector, INCIDENT_RECORD, Incident, VaultHost};
use pgfmt::{Lsn, TimelineId};
use store::{
    LocalDir, ObjectKind, ObjectMeta, ObjectName, ObjectStore, PutOutcome, Repository, StoreError, Timestamp,
};
use testkit::pg::{TempPg, TempPgOptions};

const REP: &str = "holdfast_rep";
const REP_PW: &str = "rep-secret";

#[derive(Default)]
struct TestHost {
    alerts: Mutex<Vec<Incident>>,
}

impl VaultHost for TestHost {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
    fn retain_until(&self) -> Timestamp {
        Timestamp::now().plus(Duration::from_secs(86_400))
    }
    fn alert(&self, incident: &Incident) {
        self.alerts.lock().unwrap().push(incident.clone());
    }
}

/// A local directory that, while `full` is set, refuses every new object with ENOSPC, as the
/// filesystem under a full vault does. Reads keep working.
struct FullableStore {
    inner: LocalDir,
    full: AtomicBool,
    refused: AtomicU64,
}

#[async_trait::async_trait]
impl ObjectStore for FullableStore {
    async fn put_if_absent(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        if self.full.load(Ordering::SeqCst) && self.inner.head(name).await?.is_none() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io {
                what: format!("writing {name}"),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        self.inner.put_if_absent(name, bytes, retain_until).await
    }
    async fn get(&self, name: &ObjectName) -> Result<Bytes, StoreError> {
        self.inner.get(name).await
    }
    async fn get_range(&self, name: &ObjectName, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(name, range).await
    }
    async fn head(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(name).await
    }
    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(kind).await
    }
    async fn extend_retention(&self, name: &ObjectName, until: Timestamp) -> Result<Timestamp, StoreError> {
        self.inner.extend_retention(name, until).await
    }
}

fn cluster(dir: &std::path::Path, pg: &TempPg, stall_grace_seconds: u64) -> Result<Cluster> {
    let pwfile = dir.join("main.password");
    std::fs::write(&pwfile, format!("{REP_PW}\n"))?;
    let cfg = ClusterConfig {
        name: "main".into(),
        hosts: vec![format!("{}:{}", pg.socket_dir().display(), pg.port())],
        user: REP.into(),
        password_file: Some(pwfile),
        stall_grace_seconds: Some(stall_grace_seconds),
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

fn flush_lsn(pg: &TempPg) -> Result<Lsn> {
    Ok(pg.psql("select pg_current_wal_flush_lsn()")?.parse()?)
}

async fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    testkit::wait::until_async(limit, Duration::from_millis(20), what, || std::future::ready(f())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_an_incident_within_seconds_and_capture_resumes_without_a_gap() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FullableStore {
        inner: LocalDir::open(dir.path().join("store"))?,
        full: AtomicBool::new(false),
        refused: AtomicU64::new(0),
    });
    let plain: Arc<dyn ObjectStore> = store.clone();
    let id = age::x25519::Identity::generate();
    let now = Timestamp::now();
    let repo = Repository::init(plain, &[id.to_public()], now, now.plus(Duration::from_secs(86_400))).await?;
    let pg = TempPg::start_with(TempPgOptions::default())?;
    pg.create_replication_role(REP, REP_PW)?;
    pg.psql("create table t (id int primary key, note text)")?;
    let host = Arc::new(TestHost::default());
    let collector = Collector::start(&repo, vec![cluster(dir.path(), &pg, 2)?], host.clone()).await?;
    let rt = collector.cluster("main")?.clone();
    let durable = |rt: &capture::runtime::ClusterRuntime| rt.status().durable_lsn.unwrap_or(Lsn(0));
    let target = flush_lsn(&pg)?;
    wait_for(Duration::from_secs(30), "the stream to store the first WAL", || {
        (durable(&rt) >= target).then_some(())
    })
    .await?;

    // The disk fills; the database keeps committing.
    store.full.store(true, Ordering::SeqCst);
    let full_at = Instant::now();
    pg.psql("insert into t select g, repeat('x', 200) from generate_series(1, 5000) g")?;
    let during = flush_lsn(&pg)?;
    // What was durable once the store refused a write: a write already past the check when the
    // disk filled may still have finished (under load it did), none after the refusal can.
    wait_for(Duration::from_secs(30), "the store to refuse a write", || {
        (store.refused.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await?;
    let stalled_at = durable(&rt);
    let incident = wait_for(Duration::from_secs(30), "a capture_stalled alert", || {
        host.alerts.lock().unwrap().iter().find(|i| i.kind == "capture_stalled").cloned()
    })
    .await
    .with_context(|| format!("status: {:?}", rt.status()))?;
    let took = full_at.elapsed();
    // Seconds, not the 30 s wait: the bound leaves room for a loaded CI machine (the insert
    // above is inside it too), the figure printed below is what it took.
    let bound = testkit::wait::budget(Duration::from_secs(20));
    ensure!(took < bound, "the alert took {took:?} (grace 2 s, bound {bound:?})");
    eprintln!("disk full → capture_stalled alert after {:.2} s (grace 2 s)", took.as_secs_f64());
    ensure!(incident.message.contains("full"), "the incident must name the cause: {}", incident.message);
    ensure!(incident.message.contains("No space left"), "{}", incident.message);
    let st = rt.status();
    ensure!(st.last_error.as_deref().unwrap_or("").contains("store is full"), "status: {:?}", st.last_error);
    ensure!(st.incidents.iter().any(|i| i.kind == "capture_stalled"), "status lists it: {st:?}");
    ensure!(durable(&rt) == stalled_at, "nothing can have become durable on a full disk");
    ensure!(store.refused.load(Ordering::SeqCst) >= 2, "the collector retried while full");
    // One incident per episode, however many reconnects. This sleep is the point: time passes
    // beyond the 2 s grace while the collector keeps retrying, and no second alert may come.
    let refused = store.refused.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(store.refused.load(Ordering::SeqCst) > refused, "the collector kept retrying while full");
    let n = host.alerts.lock().unwrap().iter().filter(|i| i.kind == "capture_stalled").count();
    ensure!(n == 1, "{n} capture_stalled alerts for one episode");

    // Space comes back: capture resumes from the durable end, the slot kept everything.
    store.full.store(false, Ordering::SeqCst);
    pg.psql("insert into t select g, 'after' from generate_series(5001, 5100) g")?;
    let target = flush_lsn(&pg)?;
    ensure!(target > during);
    wait_for(Duration::from_secs(30), "capture to resume after the disk was freed", || {
        (durable(&rt) >= target).then_some(())
    })
    .await
    .with_context(|| format!("status: {:?}", rt.status()))?;
    let map = rt.archive.map();
    let runs = map.runs(TimelineId(1));
    ensure!(runs.len() == 1, "the stored WAL has a gap: {runs:?}");
    ensure!(runs[0].0 <= stalled_at && runs[0].1 >= target, "{runs:?}");
    // Every byte of the stall's WAL is readable from the vault.
    let wal = rt.archive.read_range(TimelineId(1), stalled_at, during).await?;
    ensure!(wal.len() as u64 == during.0 - stalled_at.0);
    let kinds: Vec<String> = host.alerts.lock().unwrap().iter().map(|i| i.kind.clone()).collect();
    ensure!(!kinds.iter().any(|k| k == "wal_gap" || k == "connection_lost"), "{kinds:?}");
    ensure!(rt.status().last_error.is_none(), "{:?}", rt.status().last_error);
    // The incident raised while nothing could be written is in the catalog now.
    let recorded = repo
        .records()
        .await?
        .into_iter()
        .filter(|(_, r)| r.kind == INCIDENT_RECORD && r.body["kind"] == "capture_stalled")
        .count();
    ensure!(recorded == 1, "{recorded} capture_stalled records in the catalog");
    collector.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_written_incident_and_backup_records_are_not_the_vaults() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(dir.path().join("store"))?);
    let id = age::x25519::Identity::generate();
    let now = Timestamp::now();
    let until = now.plus(Duration::from_secs(86_400));
    let repo = Repository::init(store, &[id.to_public()], now, until).await?;
    let incident = |msg: &str| {
        serde_json::json!({"cluster": "main", "kind": "relations_dropped", "detected_at": now,
            "message": msg, "lsn": null, "xid": null, "restore_target": null, "objects": []})
    };
    repo.append_record(INCIDENT_RECORD, incident("real"), now, until).await?;
    // What an older vault let an append token write: it carries the token as its author.
    repo.append_record_by(INCIDENT_RECORD, incident("forged"), now, until, Some("0123456789abcdef")).await?;
    // Never connected to: loading reads only the repository.
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "unused\n")?;
    let cfg = ClusterConfig {
        name: "main".into(),
        hosts: vec!["127.0.0.1:1".into()],
        user: REP.into(),
        password_file: Some(pwfile),
        ..Default::default()
    };
    let cluster = cfg.validate()?;
    let rt = capture::runtime::ClusterRuntime::load(&repo, cluster, Arc::new(TestHost::default())).await?;
    let got: Vec<String> = rt.incidents().into_iter().map(|i| i.message).collect();
    ensure!(got == vec!["real".to_string()], "incidents: {got:?}");
    Ok(())
}
