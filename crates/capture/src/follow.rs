//! The detector's task per cluster: reads the WAL stored in the vault in order, feeds it to the
//! [`Detector`] and raises each finding as an incident — and fails closed: WAL it cannot read or
//! decode, a detector that falls behind the durable WAL or stops, are incidents themselves
//! (`detector_blind`, `detector_behind`, `detector_stopped`), and its progress (decoded LSN
//! against durable LSN) is in status and `/metrics`.
//!
//! At start it re-reads the stored WAL from the newest base backup's start (or the first stored
//! WAL when there is no backup yet), so that which files hold data — a table created or filled
//! since that backup — survives a vault restart; findings already recorded are not raised twice.
//! After a gap in the stored WAL it goes on with the first stored WAL after it: WAL that is in
//! the vault is never skipped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgfmt::wal::{ReaderStop, RelFileNode, WalReader};
use pgfmt::{Lsn, TimelineId};
use store::Timestamp;
use tokio::sync::watch;

use crate::config::DetectorFault;
use crate::detect::{AttributeChange, Destruction, Detector, Kind, RelMeta, RestoreTarget};
use crate::runtime::ClusterRuntime;

/// Stored WAL read per step (grown when one record is larger): bounds memory while re-reading
/// everything since the newest backup at start.
const STEP: u64 = 16 << 20;
/// WAL stored in the vault but not decoded or unreadable.
pub const BLIND: &str = "detector_blind";
/// Commit times the database server's clock made up (ahead of the vault's, or going back).
pub const SERVER_CLOCK: &str = "server_clock";
/// WAL durable for longer than the bound and not decoded yet.
pub const BEHIND: &str = "detector_behind";
/// The detector task ended without being asked to (a panic).
pub const STOPPED: &str = "detector_stopped";

/// The detector's position, shared with the watchdog: the LSN up to which the durable WAL has
/// been decoded.
#[derive(Debug, Default)]
pub struct Progress {
    decoded: AtomicU64,
}

impl Progress {
    pub fn decoded(&self) -> Lsn {
        Lsn(self.decoded.load(Ordering::Relaxed))
    }
}

/// Runs the detector for one cluster, restarting it (and raising `detector_stopped`) if it ever
/// ends without a shutdown; and the watchdog beside it.
pub async fn run(rt: Arc<ClusterRuntime>, mut shutdown: watch::Receiver<bool>) {
    let progress = Arc::new(Progress::default());
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(
        rt.clone(),
        progress.clone(),
        rt.cluster.detector_max_lag,
        shutdown.clone(),
    )));
    let mut fault = rt.cluster.testing_detector_fault;
    if let Some(f) = fault {
        tracing::error!(cluster = %rt.cluster.name, fault = ?f, "testing_detector_fault is set: the destruction detector is made to fail (tests only; never in production)");
    }
    loop {
        let mut task = match fault.take() {
            Some(DetectorFault::Panic) => AbortOnDrop(tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("testing_detector_fault = \"panic\"");
            })),
            Some(DetectorFault::Stall) => {
                let mut s = shutdown.clone();
                AbortOnDrop(tokio::spawn(async move {
                    let _ = s.wait_for(|stop| *stop).await;
                }))
            }
            None => AbortOnDrop(tokio::spawn(follow(rt.clone(), progress.clone(), shutdown.clone()))),
        };
        let ended = tokio::select! {
            r = &mut task.0 => r,
            _ = shutdown.changed() => return,
        };
        if *shutdown.borrow() {
            return;
        }
        let why = match ended {
            Err(e) if e.is_panic() => "panicked",
            _ => "ended",
        };
        rt.incident(
            STOPPED,
            format!(
                "the destruction detector {why}: until it is back, destruction in the WAL is not raised. \
                 It restarts now and re-reads the stored WAL since the newest base backup; see the vault log"
            ),
            Some(progress.decoded()),
        )
        .await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Aborts a task when dropped (the collector aborts `run` on drop; its children must go too).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tracks, from observations of (time, durable LSN, decoded LSN), whether WAL has been durable
/// for longer than `max_lag` without being decoded.
#[derive(Debug)]
pub struct LagCheck {
    max_lag: Duration,
    /// Durable positions not yet decoded, with when they were first seen durable.
    pending: VecDeque<(Instant, Lsn)>,
}

impl LagCheck {
    pub fn new(max_lag: Duration) -> Self {
        LagCheck { max_lag, pending: VecDeque::new() }
    }

    /// One observation; returns how long the oldest undecoded durable WAL has waited when that
    /// is over the bound.
    pub fn observe(&mut self, now: Instant, durable: Lsn, decoded: Lsn) -> Option<Duration> {
        while self.pending.front().is_some_and(|(_, d)| *d <= decoded) {
            self.pending.pop_front();
        }
        if durable > decoded && self.pending.back().is_none_or(|(_, d)| *d < durable) {
            self.pending.push_back((now, durable));
        }
        let waited = now.saturating_duration_since(self.pending.front()?.0);
        (waited > self.max_lag).then_some(waited)
    }
}

/// Every second: the detector's lag into status, and `detector_behind` when WAL durable for
/// longer than `max_lag` is still not decoded (a stuck or dead detector is blind).
async fn watchdog(
    rt: Arc<ClusterRuntime>,
    progress: Arc<Progress>,
    max_lag: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut check = LagCheck::new(max_lag);
    let mut behind = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let durable = rt.durable.borrow().1;
        let decoded = progress.decoded();
        let lag = durable.0.saturating_sub(decoded.0);
        rt.update(|s| s.detector_lag_bytes = Some(lag));
        match check.observe(Instant::now(), durable, decoded) {
            Some(waited) if !behind => {
                behind = true;
                rt.incident(
                    BEHIND,
                    format!(
                        "the destruction detector is behind: WAL durable in the vault for {} s is not decoded \
                         (decoded up to {decoded}, durable up to {durable}, {lag} bytes behind); destruction in \
                         that WAL is not raised until it catches up. See the vault log (CPU starved, stuck or \
                         stopped detector)",
                        waited.as_secs()
                    ),
                    Some(decoded),
                )
                .await;
            }
            None if behind && lag == 0 => {
                behind = false;
                tracing::info!(cluster = %rt.cluster.name, "the destruction detector caught up");
                rt.clear_incidents(&[BEHIND]);
            }
            _ => {}
        }
    }
}

/// The detector's state while following one cluster.
struct Follower {
    rt: Arc<ClusterRuntime>,
    progress: Arc<Progress>,
    detector: Detector,
    tli: TimelineId,
    /// The next record to decode (or the page to start reading from).
    next: Lsn,
    step: u64,
    seeded_from: Option<String>,
    catalog_generation: u64,
    /// WAL before this was durable when the detector started: its findings may already be
    /// recorded.
    replay_until: Lsn,
    /// (kind, LSN) of every incident recorded: never raised twice.
    recorded: HashSet<(String, Lsn)>,
    /// Live user columns per (database, table OID) as last seen in the catalog: the baseline
    /// that tells which column a DROP COLUMN dropped.
    live_columns: HashMap<(u32, u32), BTreeMap<i16, String>>,
    /// An error was met in this step (the blind episode stays open).
    blind_now: bool,
    /// Findings waiting for the catalog, in WAL order.
    pending: VecDeque<Pending>,
    /// `pg_attribute` changes whose catalog check failed, with when first tried.
    columns_pending: Vec<(AttributeChange, Instant)>,
    /// The stored WAL before this is decoded.
    decoded: Lsn,
    /// Tables with the tenant column where the tenant rules cannot work, and why (from the
    /// catalog, or from records that did not carry the tenant).
    tenant_blind_spots: BTreeMap<(u32, u32, u32), String>,
    /// Those already raised in a `tenant_blind` incident.
    tenant_blind_raised: BTreeMap<(u32, u32, u32), String>,
    started: Instant,
}

/// Tables with the tenant column whose deletes or updates cannot be told by tenant.
pub const TENANT_BLIND: &str = "tenant_blind";
/// How long the tenant rules wait for a first catalog read before they are `tenant_blind`.
const CATALOG_WAIT: Duration = Duration::from_secs(60);

/// A finding whose drops are judged once the catalog is read and the WAL up to `ready_at`
/// decoded.
struct Pending {
    d: Destruction,
    ready_at: Option<Lsn>,
    since: Instant,
}

/// The longest a finding waits for the WAL up to the catalog's position before it is judged
/// with what is known.
const PENDING_LIMIT: Duration = Duration::from_secs(10);

/// Follows the cluster's stored WAL until shutdown.
async fn follow(rt: Arc<ClusterRuntime>, progress: Arc<Progress>, mut shutdown: watch::Receiver<bool>) {
    let mut durable = rt.durable.subscribe();
    let (tli, end) = *durable.borrow_and_update();
    let start = start_of(&rt, tli).unwrap_or(end);
    let recorded = rt.incidents().into_iter().filter_map(|i| Some((i.kind, i.lsn?))).collect::<HashSet<_>>();
    tracing::info!(cluster = %rt.cluster.name, from = %start, to = %end, "destruction detector starting: re-reading the stored WAL since the newest base backup");
    progress.decoded.store(start.0, Ordering::Relaxed);
    let mut f = Follower {
        detector: Detector::new(rt.cluster.thresholds),
        rt,
        progress,
        tli,
        next: start,
        step: STEP,
        seeded_from: None,
        catalog_generation: 0,
        replay_until: end,
        recorded,
        live_columns: HashMap::new(),
        blind_now: false,
        pending: VecDeque::new(),
        columns_pending: Vec::new(),
        decoded: start,
        tenant_blind_spots: BTreeMap::new(),
        tenant_blind_raised: BTreeMap::new(),
        started: Instant::now(),
    };
    loop {
        // As much as is stored, in steps; then wait for more.
        let caught_up = f.step().await;
        if !caught_up {
            tokio::task::yield_now().await;
            if *shutdown.borrow() {
                return;
            }
            continue;
        }
        tokio::select! {
            r = durable.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
            // Errors are retried, and a catalog refresh may be due: look again now and then.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Where to start reading timeline `tli`: the newest base backup's start when it is on this
/// timeline, else the first stored WAL.
fn start_of(rt: &ClusterRuntime, tli: TimelineId) -> Option<Lsn> {
    let map = rt.archive.map();
    let first = map.first(tli).map(|p| p.start);
    match rt.status().last_backup.filter(|b| b.timeline == tli.0) {
        Some(b) => Some(first.map_or(b.start_lsn, |f| f.max(b.start_lsn))),
        None => first,
    }
}

const PAGE: u64 = 8192;

impl Follower {
    async fn blind(&mut self, message: String, lsn: Lsn) {
        self.blind_now = true;
        tracing::error!(cluster = %self.rt.cluster.name, %lsn, "{message}");
        self.rt.incident(BLIND, message, Some(lsn)).await;
    }

    /// The catalog as last merged, into the detector and the column baseline.
    fn sync_catalog(&mut self) -> Arc<crate::catalog::Snapshot> {
        let catalog = self.rt.catalog();
        if catalog.generation() != self.catalog_generation {
            self.catalog_generation = catalog.generation();
            self.detector.set_table_rows(catalog.table_rows());
            self.detector.set_relations(
                catalog
                    .relations()
                    .map(|(f, r)| (*f, RelMeta { table_oid: r.table_oid, relkind: r.relkind })),
            );
            for ((db, table), cols) in catalog.columns() {
                let live = self.live_columns.entry((*db, *table)).or_default();
                for c in cols.iter().filter(|c| !c.dropped) {
                    live.insert(c.attnum, c.name.clone());
                }
            }
            self.live_columns.retain(|k, _| catalog.columns_of(k.0, k.1).is_some());
            let tenant_tables: Vec<_> = catalog.tenant_tables().collect();
            self.detector.set_tenant_columns(
                tenant_tables
                    .iter()
                    .filter_map(|(f, r, _)| Some((*f, crate::catalog::Snapshot::tenant_column_of(r)?))),
            );
            self.detector
                .set_tenant_rows(tenant_tables.iter().filter_map(|(f, _, t)| Some((*f, t.rows.clone()?))));
            let column = self.rt.cluster.tenant_column.clone().unwrap_or_default();
            let none = (tenant_tables.is_empty() && self.rt.cluster.tenant_column.is_some()).then(|| {
                (
                    (0, 0, 0),
                    format!(
                        "no table in any database has a column named {column:?}: tenant_column is misspelt, or the \
                         catalog role cannot see the tables"
                    ),
                )
            });
            self.tenant_blind_spots = none
                .into_iter()
                .chain(tenant_tables.iter().filter_map(|(f, r, t)| {
                    let why = t.blind_spot().or_else(|| {
                        crate::catalog::Snapshot::tenant_column_of(r)
                            .is_none()
                            .then_some("its columns' layout was not read completely")
                    })?;
                    Some(((f.spc, f.db, f.rel), format!("{}.{}: {why}", r.schema, r.table)))
                }))
                .collect();
            let tables = catalog.columns().count() as u64;
            self.rt.update(|s| s.catalog_tables = Some(tables));
        }
        catalog
    }

    /// Reads and decodes the next stretch of stored WAL; true when everything stored is
    /// decoded (or an error waits for a retry).
    async fn step(&mut self) -> bool {
        let rt = self.rt.clone();
        let (t, end) = *rt.durable.borrow();
        if t != self.tli {
            tracing::info!(cluster = %rt.cluster.name, timeline = t.0, "destruction detector follows the new timeline");
            self.tli = t;
            self.next = rt.archive.map().first(t).map_or(end, |p| p.start);
            self.detector = Detector::new(rt.cluster.thresholds);
            self.seeded_from = None;
            self.catalog_generation = 0;
        }
        // Files holding data that the WAL since may never touch: the newest base backup's.
        let newest = rt.newest_backup_id();
        if newest.is_some() && newest != self.seeded_from {
            if let Some(id) = &newest {
                match rt.backup_relation_files(id).await {
                    Ok(rels) => self.detector.seed(rels),
                    Err(e) => {
                        self.blind(
                            format!(
                                "the destruction detector cannot read base backup {id}'s file list: {e}. Tables \
                                 not written since that backup are not known to hold data, so dropping them \
                                 would not be raised"
                            ),
                            self.next,
                        )
                        .await;
                        return true;
                    }
                }
            }
            self.seeded_from = newest;
        }
        let catalog = self.sync_catalog();
        let Some(seg_size) = rt.archive.segment_size() else { return true };
        if self.next.0 == 0 {
            match rt.archive.with_map(|m| m.first(self.tli)) {
                Some(p) => self.next = p.start,
                None => return true,
            }
        }
        let page = Lsn(self.next.0 - self.next.0 % PAGE);
        let run_end = rt.archive.with_map(|m| m.contiguous_end(self.tli, page));
        if run_end <= self.next {
            // Nothing stored from here: caught up, or a gap (the stream's `wal_gap` incident
            // says what is missing).
            self.publish(self.next, end);
            if !self.pending.is_empty() {
                self.resolve_pending().await;
            }
            for (c, since) in std::mem::take(&mut self.columns_pending) {
                self.check_columns(c, since).await;
            }
            return !self.past_gap();
        }
        let step_end = Lsn(run_end.0.min(page.0 + self.step));
        let wal = match rt.archive.read_range(self.tli, page, step_end).await {
            Ok(w) => w,
            Err(e) => {
                self.blind(
                    format!(
                        "the destruction detector cannot read the stored WAL {page}..{step_end}: {e}. Destruction \
                         in it is not raised until it can"
                    ),
                    page,
                )
                .await;
                return true;
            }
        };
        self.blind_now = false;
        let before = self.next;
        self.detector.set_clock(rt.now().0.saturating_mul(1_000_000));
        let stretch = decode_stretch(&mut self.detector, &wal, page, self.next, seg_size);
        let found = stretch.found;
        self.next = stretch.next;
        for (lsn, xid, e) in stretch.undecodable {
            self.blind(
                format!(
                    "the destruction detector cannot decode the WAL record at {lsn} (transaction {xid}): {e}. What it \
                     did is unknown; the records after it are still checked"
                ),
                lsn,
            )
            .await;
        }
        let resynced = stretch.unreadable.is_some();
        if let Some((at, resume, e)) = stretch.unreadable {
            self.blind(
                format!(
                    "the destruction detector cannot read the stored WAL at {at}: {e}. WAL {at}..{resume} was not checked \
                     for destruction; it goes on from the next page"
                ),
                at,
            )
            .await;
        } else if stretch.stop == ReaderStop::NeedMoreData && self.next == before && step_end < run_end {
            // One record larger than the step: read more at once.
            self.step = self.step.saturating_mul(2).min(2 << 30);
        } else {
            self.step = STEP;
        }
        let more = step_end < run_end || (resynced && self.next < run_end);
        let catalog = {
            let new = self.detector.take_new_files();
            let mut wanted = HashSet::new();
            for f in new {
                if f.db != 0 && catalog.relation(&f).is_none() && wanted.insert(f.db) {
                    rt.want_catalog(f.db);
                }
            }
            catalog
        };
        for d in found {
            if d.unresolved {
                self.pending.push_back(Pending { d, ready_at: None, since: Instant::now() });
            } else {
                // Not held behind one that waits for the catalog: alerting now matters more than
                // incidents numbered in WAL order.
                self.raise(d, &catalog).await;
            }
        }
        self.clock_lies().await;
        // One catalog read per database per step, however many DDL transactions it holds (a
        // migration): the columns found dropped go to the step's first such transaction of that
        // database, whose restore target is then before every one of them.
        let mut firsts: Vec<AttributeChange> = Vec::new();
        for c in self.detector.take_attribute_changes() {
            if !firsts.iter().any(|f| f.db == c.db) {
                firsts.push(c);
            }
        }
        // Checks that failed (the server restarting, say) are retried at each step; only a
        // catalog unreachable for longer than the bound makes the detector blind to DROP COLUMN.
        let retry: Vec<(AttributeChange, Instant)> = std::mem::take(&mut self.columns_pending);
        for (c, since) in retry.into_iter().chain(firsts.into_iter().map(|c| (c, Instant::now()))) {
            self.check_columns(c, since).await;
        }
        if !self.blind_now {
            rt.clear_incidents(&[BLIND]);
        }
        self.check_tenants().await;
        // Everything read was decoded: up to the end of what was read unless a record is cut.
        let decoded = if self.next >= step_end { step_end } else { self.next };
        self.publish(decoded, end);
        if !self.pending.is_empty() {
            self.resolve_pending().await;
        }
        if more {
            return false;
        }
        // All of this run is read; a record cut by a gap after it cannot be completed.
        !(self.next == before && self.past_gap())
    }

    /// When stored WAL follows a gap after the current position, moves there (from the first
    /// page boundary: a run starting mid-page cannot be parsed before it) and returns true.
    fn past_gap(&mut self) -> bool {
        // The first stored piece after the end of the stored run holding (or ending at) here:
        // the next run, after a gap (range queries: cheap when caught up).
        let (tli, next) = (self.tli, self.next);
        let after = self.rt.archive.with_map(|m| {
            let end = m.contiguous_end(tli, Lsn(next.0 - next.0 % PAGE)).max(next);
            m.pieces_in(tli, end, Lsn(u64::MAX)).into_iter().map(|p| p.start).find(|s| *s >= end && *s > next)
        });
        let Some(s) = after else {
            return false;
        };
        let resume = if s.0 % PAGE == 0 { s } else { Lsn(s.0 + PAGE - s.0 % PAGE) };
        tracing::warn!(cluster = %self.rt.cluster.name, from = %self.next, to = %resume, "WAL missing from the vault: the destruction detector goes on after the gap");
        self.next = resume;
        true
    }

    /// A tenant column is configured: tables where the tenant rules cannot work are a
    /// `tenant_blind` incident (raised again, listing all, when another table joins them).
    async fn check_tenants(&mut self) {
        let Some(column) = self.rt.cluster.tenant_column.clone() else { return };
        let catalog = self.rt.catalog();
        if catalog.generation() == 0 && self.started.elapsed() > CATALOG_WAIT {
            self.tenant_blind_spots.entry((0, 0, 1)).or_insert_with(|| {
                format!(
                    "the catalog has not been read for {} s, so no table's {column} is known (see catalog_user and \
                     the vault log)",
                    CATALOG_WAIT.as_secs()
                )
            });
        }
        for (f, n) in self.detector.take_tenant_unread() {
            let name =
                catalog.relation(&f).map_or_else(|| f.to_string(), |r| format!("{}.{}", r.schema, r.table));
            self.tenant_blind_spots.entry((f.spc, f.db, f.rel)).or_insert_with(|| {
                format!("{name}: {n} deletes or updates did not log the row's {column} (replica identity or wal_level changed?)")
            });
        }
        if self.tenant_blind_spots.keys().all(|f| self.tenant_blind_raised.contains_key(f)) {
            return;
        }
        for (f, w) in &self.tenant_blind_spots {
            self.tenant_blind_raised.insert(*f, w.clone());
        }
        let list: Vec<&str> = self.tenant_blind_raised.values().map(String::as_str).collect();
        let message = format!(
            "tenant_column = {column:?} is configured, but deleting or overwriting one tenant's rows is not told \
             apart in {} table(s) — only the whole-table thresholds apply there: {}",
            list.len(),
            list.join("; ")
        );
        tracing::error!(cluster = %self.rt.cluster.name, "{message}");
        self.rt.clear_incidents(&[TENANT_BLIND]);
        self.rt.incident(TENANT_BLIND, message, None).await;
    }

    fn publish(&mut self, decoded: Lsn, durable: Lsn) {
        self.decoded = decoded;
        self.progress.decoded.store(decoded.0, Ordering::Relaxed);
        // Judged: decoded, but not past the first record of a finding still waiting for the
        // catalog (a drop, a dropped column): whoever acts on "the detector has seen this WAL"
        // (the warm standby's feed) must not act on WAL whose verdict is still open.
        let judged = self
            .pending
            .iter()
            .map(|p| p.d.first_lsn)
            .chain(self.columns_pending.iter().map(|(c, _)| c.first_lsn))
            .fold(decoded, Lsn::min);
        self.rt.update(|s| {
            s.decoded_lsn = Some(decoded);
            s.judged_lsn = Some(judged);
            s.detector_lag_bytes = Some(durable.0.saturating_sub(decoded.0));
        });
    }

    /// Findings whose drops wait for the catalog: read it (with the server's WAL position
    /// after it), then judge each once the WAL up to that position is decoded, so that the
    /// detector has seen every transaction the catalog shows (a rewrite's new file may have
    /// been rewritten again since). A catalog that cannot be read, or WAL that does not come
    /// within [`PENDING_LIMIT`], leaves the drop standing (fail closed).
    async fn resolve_pending(&mut self) {
        let dbs: Vec<u32> = {
            let mut v: Vec<u32> =
                self.pending.iter().filter(|p| p.ready_at.is_none()).filter_map(|p| p.d.database).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if self.pending.iter().any(|p| p.ready_at.is_none()) {
            let mut at = crate::catalog::refresh_now(&self.rt, &dbs).await;
            if matches!(at, Ok(None)) {
                // The first read only learnt the databases' names: read again, by name.
                at = crate::catalog::refresh_now(&self.rt, &dbs).await;
            }
            let at = match at {
                Ok(Some(l)) => l,
                Ok(None) => self.decoded,
                Err(e) => {
                    tracing::warn!(cluster = %self.rt.cluster.name, error = %e, "cannot ask the catalog whether dropped files were rewritten: judging with what is known");
                    self.decoded
                }
            };
            for p in self.pending.iter_mut().filter(|p| p.ready_at.is_none()) {
                p.ready_at = Some(at);
            }
        }
        while let Some(p) = self.pending.front() {
            let ready = p.ready_at.is_some_and(|at| self.decoded >= at) || p.since.elapsed() > PENDING_LIMIT;
            if !ready {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let catalog = self.sync_catalog();
            tracing::debug!(cluster = %self.rt.cluster.name, xid = p.d.xid, dropped = ?p.d.dropped, new = ?p.d.new_files, "judging dropped files against the catalog");
            if let Some(d) = self.detector.resolve(p.d) {
                self.raise(d, &catalog).await;
            }
            for d in self.detector.take_queued() {
                self.raise(d, &catalog).await;
            }
        }
    }

    /// Commits whose time the primary's clock made up: one `server_clock` incident per
    /// episode (until a commit's time is honest again), naming the first; not raised again for
    /// WAL re-read after a restart.
    async fn clock_lies(&mut self) {
        let (lies, honest) = self.detector.take_clock_lies();
        if let Some(l) = lies.first() {
            let again = l.lsn < self.replay_until
                && self.recorded.iter().any(|(k, at)| k == SERVER_CLOCK && *at <= l.lsn);
            if !again {
                let when = |us: i64| Timestamp(us.div_euclid(1_000_000));
                let off = (l.claimed_us - l.reference_us).abs() / 1_000_000;
                let how = if l.ahead {
                    format!("{off} s ahead of the vault's clock ({})", when(l.reference_us))
                } else {
                    format!(
                        "{off} s before a transaction committed earlier in the WAL ({})",
                        when(l.reference_us)
                    )
                };
                let message = format!(
                    "the database server's clock lies: transaction {} committed at {} stamped {}, {how}{}. Commit \
                     times are what `restore --time` stops by and what the detector's windows add up over: the \
                     detector now counts such commits at the vault's clock and the WAL's order, and `holdfast restore \
                     --time` across {} is refused (restore by --lsn, --xid or --before-incident). Someone with root \
                     on the database host set its clock, or its time synchronisation is broken",
                    l.xid,
                    l.lsn,
                    when(l.claimed_us),
                    if lies.len() > 1 {
                        format!("; {} more commits since", lies.len() - 1)
                    } else {
                        String::new()
                    },
                    l.lsn
                );
                self.recorded.insert((SERVER_CLOCK.to_string(), l.lsn));
                self.rt.incident(SERVER_CLOCK, message, Some(l.lsn)).await;
            }
        }
        if honest && lies.is_empty() {
            self.rt.clear_incidents(&[SERVER_CLOCK]);
        }
    }

    /// A finding: not raised twice, recorded as an incident.
    async fn raise(&mut self, d: Destruction, catalog: &crate::catalog::Snapshot) {
        if self.recorded.contains(&(d.kind.as_str().to_string(), d.lsn)) {
            return;
        }
        // Re-read WAL (durable before this start) whose dropped files the catalog never knew:
        // they were dropped before the vault restarted, and whether that was a rewrite can no
        // longer be told. Had it been destruction, it was raised then.
        if d.lsn < self.replay_until
            && d.kind == Kind::RelationsDropped
            && d.dropped.iter().all(|(f, _)| self.detector.relation(f).is_none())
        {
            tracing::info!(cluster = %self.rt.cluster.name, xid = d.xid, lsn = %d.lsn, "re-read WAL: a drop of files unknown to the catalog, from before the restart, not raised again");
            return;
        }
        self.recorded.insert((d.kind.as_str().to_string(), d.lsn));
        self.rt.destruction(&d, catalog, self.tli).await;
    }

    /// A committed transaction updated `pg_attribute`: which columns (live in the baseline)
    /// does the catalog now show dropped? Those of tables holding data are an incident.
    async fn check_columns(&mut self, c: AttributeChange, since: Instant) {
        if c.lsn < self.replay_until && self.recorded.iter().any(|(_, l)| *l == c.lsn) {
            return;
        }
        if !self.live_columns.keys().any(|(db, _)| *db == c.db) {
            // Nothing known of this database's columns yet: the catalog refresh fills it.
            return;
        }
        if let Err(e) = crate::catalog::refresh_now(&self.rt, &[c.db]).await {
            if since.elapsed() < self.rt.cluster.detector_max_lag {
                tracing::warn!(cluster = %self.rt.cluster.name, error = %e, xid = c.xid, "cannot read the catalog to check a pg_attribute change: retrying");
                self.columns_pending.push((c, since));
                return;
            }
            self.blind(
                format!(
                    "transaction {} changed columns (pg_attribute) at {}, and the catalog cannot be asked which: {e}. \
                     A dropped column would not be raised",
                    c.xid, c.lsn
                ),
                c.lsn,
            )
            .await;
            return;
        }
        let catalog = self.rt.catalog();
        let mut columns: Vec<(RelFileNode, String)> = Vec::new();
        for ((db, table), live) in self.live_columns.iter_mut().filter(|((db, _), _)| *db == c.db) {
            let Some(now) = catalog.columns_of(*db, *table) else { continue };
            let gone: Vec<i16> = live
                .keys()
                .copied()
                .filter(|n| now.iter().any(|col| col.attnum == *n && col.dropped))
                .collect();
            let Some(file) = catalog.table_file_of(*db, *table) else { continue };
            let rows = catalog.relation(&file).and_then(|r| r.rows).unwrap_or(0);
            for n in gone {
                if let Some(name) = live.remove(&n)
                    && (self.detector.holds_data(&file) || rows > 0)
                {
                    columns.push((file, name));
                }
            }
        }
        if columns.is_empty() {
            return;
        }
        columns.sort_by(|a, b| (a.0.rel, &a.1).cmp(&(b.0.rel, &b.1)));
        let mut d = Destruction {
            kind: Kind::ColumnDropped,
            xid: c.xid,
            first_lsn: c.first_lsn,
            lsn: c.lsn,
            commit_time_us: Some(c.commit_time_us),
            database: Some(c.db),
            dropped: Vec::new(),
            deleted: Vec::new(),
            updated: Vec::new(),
            columns: Vec::new(),
            tenants: Vec::new(),
            transactions: 1,
            window_start_us: None,
            restore_target: RestoreTarget::BeforeXid(c.xid),
            new_files: Vec::new(),
            unresolved: false,
            otherwise: None,
        };
        d.columns = columns;
        if self.recorded.insert((d.kind.as_str().to_string(), d.lsn)) {
            self.rt.destruction(&d, &catalog, self.tli).await;
        }
    }
}

/// What one stretch of stored WAL held, for [`decode_stretch`].
#[derive(Debug)]
pub struct Stretch {
    /// Findings, in WAL order.
    pub found: Vec<Destruction>,
    /// Records whose body the detector cannot decode: (LSN, xid, why).
    pub undecodable: Vec<(Lsn, u32, pgfmt::wal::WalError)>,
    /// WAL that cannot be read (a page or record that fails its checks): where, where reading
    /// goes on (the next page: its header says how much of a continued record to skip), why.
    pub unreadable: Option<(Lsn, Lsn, pgfmt::wal::WalError)>,
    /// Where the next record starts (or reading goes on).
    pub next: Lsn,
    /// Why the reader stopped.
    pub stop: ReaderStop,
}

/// Feeds the records of `wal` (stored WAL starting at page `page`) from `next` on to the
/// detector. Never passes over anything silently: records it cannot decode and WAL it cannot
/// read are returned for the caller to raise; after unreadable WAL, reading can go on from the
/// next page.
pub fn decode_stretch(detector: &mut Detector, wal: &[u8], page: Lsn, next: Lsn, seg_size: u64) -> Stretch {
    let mut reader = WalReader::new(wal, page, seg_size);
    let mut out = Stretch {
        found: Vec::new(),
        undecodable: Vec::new(),
        unreadable: None,
        next,
        stop: ReaderStop::NotYet,
    };
    let mut error = None;
    for rec in reader.by_ref() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        if rec.lsn < next {
            continue;
        }
        match detector.record(&rec) {
            Ok(Some(d)) => out.found.push(d),
            Ok(None) => {}
            Err(e) => out.undecodable.push((rec.lsn, rec.header.xid, e)),
        }
        out.found.extend(detector.take_queued());
    }
    if let Some(n) = reader.next_lsn() {
        out.next = out.next.max(n);
    }
    out.stop = reader.stop_reason();
    if let Some(e) = error {
        let at = match &e {
            pgfmt::wal::WalError::BadPage { lsn, .. } | pgfmt::wal::WalError::BadRecord { lsn, .. } => *lsn,
            pgfmt::wal::WalError::Unaligned(l) => *l,
        };
        let at = at.max(out.next);
        let resume = Lsn(at.0 - at.0 % PAGE + PAGE);
        out.next = resume;
        out.unreadable = Some((at, resume, e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_from_when_wal_became_durable() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut c = LagCheck::new(Duration::from_secs(30));
        // Decoding keeps up: never behind, however long it runs.
        for i in 0..100 {
            assert_eq!(c.observe(s(i), Lsn(1000 + i * 10), Lsn(1000 + i * 10)), None);
        }
        // A stuck detector: WAL keeps arriving, the decoded position stays.
        for i in 100..131 {
            assert_eq!(c.observe(s(i), Lsn(1000 + i * 10), Lsn(1990)), None, "{i}");
        }
        assert_eq!(c.observe(s(131), Lsn(2400), Lsn(1990)), Some(Duration::from_secs(31)));
        // A dead one with no new WAL either: still behind.
        assert!(c.observe(s(200), Lsn(2400), Lsn(1990)).is_some());
        // Caught up past what waited: fine again; slow but within the bound: fine.
        assert_eq!(c.observe(s(201), Lsn(2400), Lsn(2400)), None);
        assert_eq!(c.observe(s(202), Lsn(3000), Lsn(2400)), None);
        assert_eq!(c.observe(s(231), Lsn(3100), Lsn(3000)), None, "what waited 29 s was decoded");
    }
}
