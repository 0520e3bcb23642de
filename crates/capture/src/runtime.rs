//! One protected cluster at run time: its archive, its live status, and incidents.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use pgfmt::{Lsn, TimelineId};
use store::{Repository, Timestamp};
use tokio::sync::watch;

use crate::archive::WalArchive;
use crate::catalog::Snapshot;
use crate::config::Cluster;
use crate::status::{BackupSummary, ClusterStatus, Incident, Inventory, InventoryBackup, WalRun};
use crate::{BACKUP_COMPLETE_RECORD, CaptureError, INCIDENT_RECORD, VaultHost};

/// A cluster being captured.
pub struct ClusterRuntime {
    pub cluster: Cluster,
    pub archive: WalArchive,
    pub(crate) repo: Repository,
    pub(crate) host: Arc<dyn VaultHost>,
    status: Mutex<ClusterStatus>,
    /// Every incident, oldest first (status shows the last 20).
    all_incidents: Mutex<Vec<Incident>>,
    /// Incident kinds raised and not yet cleared by a healthy stream: raised once per episode.
    open_incidents: Mutex<BTreeSet<String>>,
    /// Incidents whose catalog record could not be written (the store was full: exactly when
    /// `capture_stalled` is raised); written once the store takes WAL again.
    unrecorded: Mutex<Vec<Incident>>,
    /// (timeline, durable end) after every flush; base backups wait on it.
    pub(crate) durable: watch::Sender<(TimelineId, Lsn)>,
    /// Completed backups of this cluster, oldest first.
    backups: Mutex<Vec<BackupSummary>>,
    /// Serialises base backups of this cluster.
    pub(crate) backup_lock: tokio::sync::Mutex<()>,
    /// Set when the server said the WAL to resume from is gone: the next attempt records the
    /// gap as an incident and resumes from what the server still has.
    pub(crate) skip_gap: std::sync::atomic::AtomicBool,
    /// Names for relation files and databases ([`crate::catalog::keep_fresh`] refreshes it).
    catalog: Mutex<Arc<Snapshot>>,
    /// Asks for a catalog refresh now (a relation file the snapshot does not know)…
    pub(crate) catalog_wanted: tokio::sync::Notify,
    /// …in these databases.
    catalog_wanted_dbs: Mutex<BTreeSet<u32>>,
    /// Wakes whoever waits for the next incident (the vault's warm standby stops at once).
    incident_raised: tokio::sync::Notify,
    /// Restore points in the stored WAL ([`crate::restore_points`]), read lazily.
    pub(crate) restore_point_index: tokio::sync::Mutex<crate::restore_points::Index>,
    /// The replay speed last measured for this cluster (a drill's restore): what
    /// `backup_replay_budget_seconds` converts into bytes of WAL.
    replay_rate: Mutex<Option<ReplayRate>>,
    /// The vault's warm standby's distance behind the stored WAL, in bytes, and when it was
    /// said: set by the standby's backup task while it can take backups, so that the replay
    /// budget takes the next backup from it rather than from production when it is close
    /// enough behind.
    standby_offer: Mutex<Option<(std::time::Instant, u64)>>,
}

/// A measured replay speed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRate {
    pub bytes_per_second: f64,
    /// What measured it, for the log (e.g. `drill at 2026-12-05T06:00:00Z`).
    pub measured_by: String,
}

/// How long a standby's offer ([`ClusterRuntime::offer_standby_backups`]) holds.
const STANDBY_OFFER_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime").field("cluster", &self.cluster.name).finish()
    }
}

impl ClusterRuntime {
    /// Loads what the repository holds for the cluster.
    pub async fn load(
        repo: &Repository,
        cluster: Cluster,
        host: Arc<dyn VaultHost>,
    ) -> Result<Self, CaptureError> {
        let archive = WalArchive::open(repo, &cluster.name).await?;
        let mut incidents = Vec::new();
        let mut backups = Vec::new();
        // A backup whose `backup` record a quorum deletion removed is gone, even if an older
        // vault left its `backup.complete` record behind.
        let existing: BTreeSet<String> = repo.backups().await?.into_iter().map(|b| b.id).collect();
        for (_, rec) in repo.records().await? {
            // Records a client token appended are never the vault's history, whatever their kind.
            if rec.author.is_some() {
                continue;
            }
            match rec.kind.as_str() {
                INCIDENT_RECORD => {
                    if let Ok(i) = serde_json::from_value::<Incident>(rec.body)
                        && i.cluster == cluster.name
                    {
                        incidents.push(i);
                    }
                }
                BACKUP_COMPLETE_RECORD => {
                    if let Ok(b) = serde_json::from_value::<BackupSummary>(rec.body)
                        && b.cluster == cluster.name
                        && existing.contains(&b.id)
                    {
                        backups.push(b);
                    }
                }
                _ => {}
            }
        }
        let all_incidents = incidents.clone();
        let keep_from = incidents.len().saturating_sub(20);
        let map = archive.map();
        let last = map.timelines().last().copied();
        let durable = last.and_then(|t| map.last(t).map(|p| (t, p.end))).unwrap_or((TimelineId(1), Lsn(0)));
        let status = ClusterStatus {
            name: cluster.name.clone(),
            system_id: archive.system_id(),
            timeline: last.map(|t| t.0),
            durable_lsn: last.and_then(|t| map.last(t)).map(|p| p.end),
            incidents: incidents.split_off(keep_from),
            ..Default::default()
        };
        Ok(ClusterRuntime {
            cluster,
            archive,
            repo: repo.clone(),
            host,
            status: Mutex::new(status),
            all_incidents: Mutex::new(all_incidents),
            open_incidents: Mutex::new(BTreeSet::new()),
            unrecorded: Mutex::new(Vec::new()),
            durable: watch::channel(durable).0,
            backups: Mutex::new(backups),
            backup_lock: tokio::sync::Mutex::new(()),
            skip_gap: std::sync::atomic::AtomicBool::new(false),
            catalog: Mutex::new(Arc::new(Snapshot::default())),
            catalog_wanted: tokio::sync::Notify::new(),
            incident_raised: tokio::sync::Notify::new(),
            catalog_wanted_dbs: Mutex::new(BTreeSet::new()),
            restore_point_index: tokio::sync::Mutex::new(Default::default()),
            replay_rate: Mutex::new(None),
            standby_offer: Mutex::new(None),
        })
    }

    /// Records a replay measured on this cluster's WAL: `bytes` of WAL replayed in `seconds`
    /// (the whole replay phase, start-up included: an underestimate of the speed, which errs on
    /// the side of more backups). Ignored below one segment or a tenth of a second.
    pub fn note_replay(&self, bytes: u64, seconds: f64, measured_by: String) {
        if bytes < 16 << 20 || seconds.is_nan() || seconds < 0.1 {
            return;
        }
        let rate = ReplayRate { bytes_per_second: bytes as f64 / seconds, measured_by };
        tracing::info!(
            cluster = %self.cluster.name, mib_per_second = rate.bytes_per_second / 1048576.0, by = %rate.measured_by,
            "replay speed measured: the replay budget uses it"
        );
        *self.replay_rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(rate);
    }

    /// The replay speed the budget uses: the last measured one, else `None` (then
    /// [`crate::config::DEFAULT_REPLAY_BYTES_PER_SECOND`]).
    pub fn replay_rate(&self) -> Option<ReplayRate> {
        self.replay_rate.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The WAL, in bytes, that `backup_replay_budget_seconds` allows after the newest backup
    /// (`None`: no budget set).
    pub fn replay_budget_bytes(&self) -> Option<u64> {
        let budget = self.cluster.backup_replay_budget?;
        let rate =
            self.replay_rate().map_or(crate::config::DEFAULT_REPLAY_BYTES_PER_SECOND, |r| r.bytes_per_second);
        Some((budget.as_secs_f64() * rate) as u64)
    }

    /// Said by the vault's warm standby task, every few seconds while the standby follows and
    /// may take backups: it is `lag_bytes` behind the stored WAL (`None`: it cannot take one
    /// now).
    pub fn offer_standby_backups(&self, lag_bytes: Option<u64>) {
        *self.standby_offer.lock().unwrap_or_else(|p| p.into_inner()) =
            lag_bytes.map(|l| (std::time::Instant::now(), l));
    }

    /// The standby's lag behind the stored WAL, if it offered backups within the last few
    /// seconds.
    pub fn standby_offer(&self) -> Option<u64> {
        let offer = *self.standby_offer.lock().unwrap_or_else(|p| p.into_inner());
        offer.filter(|(at, _)| at.elapsed() < STANDBY_OFFER_TTL).map(|(_, lag)| lag)
    }

    /// Updates the live status.
    pub(crate) fn update(&self, f: impl FnOnce(&mut ClusterStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Status as shown to people: live fields plus the restorable window, computed from the
    /// inventory so that status advertises exactly what a restore can use.
    pub fn status(&self) -> ClusterStatus {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let inventory = self.inventory();
        s.last_backup = self.backups.lock().unwrap_or_else(|p| p.into_inner()).last().cloned();
        s.window = inventory.window;
        s.windows = inventory.windows;
        s
    }

    /// What the vault holds for this cluster, for restore planning; its restorable intervals
    /// ([`vault_api::window`]) are computed from its own backups and WAL runs.
    pub fn inventory(&self) -> Inventory {
        let map = self.archive.map();
        let backups = self.backups.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut wal = Vec::new();
        for tli in map.timelines() {
            for (start, end, start_time, end_time) in map.runs(tli) {
                wal.push(WalRun { timeline: tli.0, start, end, start_time, end_time });
            }
        }
        let backups = backups
            .into_iter()
            .map(|b| {
                // The piece holding the stop LSN's last byte before it: its send time.
                let stop = Lsn(b.stop_lsn.0.saturating_sub(1));
                let consistent_time =
                    map.pieces_in(TimelineId(b.timeline), stop, b.stop_lsn).first().map(|p| p.server_time);
                InventoryBackup { backup: b, consistent_time }
            })
            .collect();
        let mut inventory = Inventory {
            cluster: self.cluster.name.clone(),
            system_id: self.archive.system_id(),
            segment_size: self.archive.segment_size(),
            backups,
            wal,
            histories: self.archive.histories(),
            window: None,
            windows: Vec::new(),
        };
        inventory.refresh_windows();
        inventory
    }

    /// A file `restore_command` asks for, by PostgreSQL's name: a WAL segment (whole; zeros
    /// past the stored WAL) or a timeline history file. Returns the bytes and how many of
    /// them are stored WAL.
    pub async fn wal_file(&self, file: &str) -> Result<(Vec<u8>, u64), CaptureError> {
        if let Some(hex) = file.strip_suffix(".history") {
            let tli = (hex.len() == 8)
                .then(|| u32::from_str_radix(hex, 16).ok())
                .flatten()
                .filter(|t| *t > 0)
                .ok_or_else(|| {
                    CaptureError::InvalidName(format!(
                        "{file:?} is not a timeline history file name (e.g. 00000002.history)"
                    ))
                })?;
            let (_, content) = self.archive.history(TimelineId(tli)).ok_or_else(|| {
                CaptureError::NotFound(format!("the vault holds no history file for timeline {tli}"))
            })?;
            let n = content.len() as u64;
            return Ok((content.into_bytes(), n));
        }
        let seg_size = self.archive.segment_size().ok_or_else(|| {
            CaptureError::NotFound(format!("the vault holds no WAL for cluster {}", self.cluster.name))
        })?;
        let (tli, segno) = pgfmt::parse_segment_name(file, seg_size).map_err(|e| {
            CaptureError::InvalidName(format!("{file:?} is not a WAL segment or history file name: {e}"))
        })?;
        match self.archive.segment(tli, pgfmt::segment_start(segno, seg_size), seg_size).await {
            Err(CaptureError::MissingWal { .. }) => {
                Err(CaptureError::NotFound(format!("WAL segment {file} is not in the vault")))
            }
            other => other,
        }
    }

    /// The newest complete backup.
    pub fn newest_backup(&self) -> Option<BackupSummary> {
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
    }

    /// The id of the newest complete backup.
    pub fn newest_backup_id(&self) -> Option<String> {
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).last().map(|b| b.id.clone())
    }

    /// The non-empty relation files of backup `id`.
    pub(crate) async fn backup_relation_files(
        &self,
        id: &str,
    ) -> Result<Vec<(pgfmt::wal::RelFileNode, u64)>, CaptureError> {
        let rec = self.repo.backup(id).await?;
        let mut out = Vec::new();
        self.repo
            .for_each_entry(&rec, |e| {
                if e.size > 0
                    && let Some(rel) = crate::detect::relfilenode_of(&e.path)
                {
                    // Segment N of a relation starts at page N × 131072 (1 GiB segments).
                    let seg: u64 = e.path.rsplit_once('.').and_then(|(_, n)| n.parse().ok()).unwrap_or(0);
                    out.push((rel, seg * 131_072 + e.size.div_ceil(8192)));
                }
                Ok(())
            })
            .await?;
        Ok(out)
    }

    /// Forgets backup `id` (a quorum deletion removed it): it leaves status, the inventory and
    /// the restorable window at once.
    pub fn forget_backup(&self, id: &str) -> bool {
        let mut b = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        let before = b.len();
        b.retain(|x| x.id != id);
        b.len() != before
    }

    /// Records a completed backup.
    pub(crate) fn add_backup(&self, b: BackupSummary) {
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }

    /// Raises an incident once per episode: catalog record, status, log, alert.
    pub(crate) async fn incident(&self, kind: &str, message: String, lsn: Option<Lsn>) {
        if !self.open_incidents.lock().unwrap_or_else(|p| p.into_inner()).insert(kind.to_string()) {
            return;
        }
        let now = self.host.now();
        let incident = Incident {
            cluster: self.cluster.name.clone(),
            kind: kind.into(),
            detected_at: now,
            message,
            lsn,
            xid: None,
            restore_target: None,
            first_lsn: None,
            timeline: None,
            objects: Vec::new(),
        };
        self.record_incident(incident).await;
    }

    /// Records an incident: catalog, status, log, alert.
    async fn record_incident(&self, incident: Incident) {
        let now = incident.detected_at;
        let kind = incident.kind.clone();
        tracing::error!(cluster = %incident.cluster, kind, message = %incident.message, "incident");
        let body = serde_json::to_value(&incident).expect("serialises");
        if let Err(e) = self.repo.append_record(INCIDENT_RECORD, body, now, self.host.retain_until()).await {
            tracing::error!(error = %e, "could not record the incident in the catalog; it is alerted now and recorded once the store takes writes again");
            self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()).push(incident.clone());
        }
        self.host.alert(&incident);
        self.all_incidents.lock().unwrap_or_else(|p| p.into_inner()).push(incident.clone());
        self.update(|s| {
            s.incidents.push(incident);
            let excess = s.incidents.len().saturating_sub(20);
            s.incidents.drain(..excess);
        });
        self.incident_raised.notify_waiters();
    }

    /// Returns when the next incident of this cluster has been raised (those raised before
    /// the call do not count: read [`ClusterRuntime::incidents`] after it returns).
    pub async fn next_incident(&self) {
        self.incident_raised.notified().await
    }

    /// Writes the catalog records of incidents raised while the store refused writes.
    pub(crate) async fn record_unrecorded(&self) {
        let pending = std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, incident) in pending.iter().enumerate() {
            let body = serde_json::to_value(incident).expect("serialises");
            if let Err(e) = self
                .repo
                .append_record(INCIDENT_RECORD, body, incident.detected_at, self.host.retain_until())
                .await
            {
                tracing::error!(error = %e, "still cannot record an incident in the catalog");
                self.unrecorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(pending[i..].iter().cloned());
                return;
            }
        }
    }

    /// Asks for a catalog refresh of database `db` soon.
    pub(crate) fn want_catalog(&self, db: u32) {
        self.catalog_wanted_dbs.lock().unwrap_or_else(|p| p.into_inner()).insert(db);
        self.catalog_wanted.notify_one();
    }

    /// The databases asked for since the last call.
    pub(crate) fn take_catalog_wanted_dbs(&self) -> Vec<u32> {
        std::mem::take(&mut *self.catalog_wanted_dbs.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// The catalog snapshot as last merged.
    pub fn catalog(&self) -> Arc<Snapshot> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Merges a catalog refresh into the snapshot.
    pub(crate) fn merge_catalog(
        &self,
        databases: Vec<(u32, String)>,
        relations: Vec<(pgfmt::wal::RelFileNode, crate::catalog::RelInfo)>,
    ) {
        let mut cur = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Snapshot::clone(&cur);
        next.merge(databases, relations);
        *cur = Arc::new(next);
    }

    /// An incident for a destructive transaction found in the WAL: one per transaction, its
    /// objects named from the catalog snapshot (what it does not know stays an OID).
    pub(crate) async fn destruction(
        &self,
        d: &crate::detect::Destruction,
        catalog: &Snapshot,
        tli: TimelineId,
    ) {
        use crate::detect::{Kind, RestoreTarget};
        use crate::status::IncidentTarget;
        let number = self.all_incidents.lock().unwrap_or_else(|p| p.into_inner()).len() + 1;
        let objects = incident_objects(d, catalog, self.cluster.tenant_column.as_deref());
        let names: Vec<String> = objects
            .iter()
            .map(|o| {
                let name = match o.columns.as_slice() {
                    [] => o.name(),
                    cols => format!("{} column {}", o.name(), cols.join(", ")),
                };
                match o.tenants.first() {
                    None => name,
                    Some(t) => {
                        let did = match (t.deleted, t.updated) {
                            (Some(d), Some(u)) => format!("{d} rows deleted, {u} updated"),
                            (Some(d), None) => format!("{d} rows deleted"),
                            (None, Some(u)) => format!("{u} rows updated"),
                            (None, None) => String::new(),
                        };
                        let of = t.rows.map(|r| format!(" of ~{r}")).unwrap_or_default();
                        let more = match o.tenants.len() {
                            1 => String::new(),
                            n => format!(", and {} other tenant(s)", n - 1),
                        };
                        format!("{name} tenant {} = {} ({did}{of}{more})", t.column, t.value)
                    }
                }
            })
            .collect();
        let listed = match names.len() {
            0..=5 => names.join(", "),
            n => format!("{} and {} more", names[..5].join(", "), n - 5),
        };
        let sum = |v: &[(pgfmt::wal::RelFileNode, u64)]| v.iter().map(|(_, n)| n).sum::<u64>();
        let what = match d.kind {
            Kind::DatabaseDropped => format!("transaction {} dropped {listed}", d.xid),
            Kind::RelationsDropped => format!(
                "transaction {} dropped or emptied {} table(s) at commit (DROP TABLE/SCHEMA, TRUNCATE): {listed}",
                d.xid,
                objects.len()
            ),
            Kind::MassDelete => format!("transaction {} deleted {} rows: {listed}", d.xid, sum(&d.deleted)),
            Kind::MassUpdate => format!("transaction {} updated {} rows: {listed}", d.xid, sum(&d.updated)),
            Kind::CumulativeDelete => format!(
                "{} transactions, the last {}, deleted {} rows within {} s (each under the per-transaction \
                 thresholds, together over the window's): {listed}",
                d.transactions,
                d.xid,
                sum(&d.deleted),
                d.commit_time_us.zip(d.window_start_us).map_or(0, |(a, b)| (a - b).max(0) / 1_000_000)
            ),
            Kind::CumulativeUpdate => format!(
                "{} transactions, the last {}, updated {} distinct rows within {} s (each under the per-transaction \
                 thresholds, together over the window's): {listed}",
                d.transactions,
                d.xid,
                sum(&d.updated).max(d.tenants.iter().map(|t| t.updated).sum()),
                d.commit_time_us.zip(d.window_start_us).map_or(0, |(a, b)| (a - b).max(0) / 1_000_000)
            ),
            Kind::CumulativeDrop => format!(
                "{} transactions, the last {}, dropped or emptied {} table(s) holding data within {} s (each an \
                 incident of its own too; this one restores to before the first): {listed}",
                d.transactions,
                d.xid,
                objects.iter().filter(|o| o.dropped).count(),
                d.commit_time_us.zip(d.window_start_us).map_or(0, |(a, b)| (a - b).max(0) / 1_000_000)
            ),
            Kind::ColumnDropped => format!("transaction {} dropped populated column(s): {listed}", d.xid),
        };
        let when = d
            .commit_time_us
            .map(|us| format!(", committed {}", Timestamp(us.div_euclid(1_000_000))))
            .unwrap_or_default();
        let incident = Incident {
            cluster: self.cluster.name.clone(),
            kind: d.kind.as_str().into(),
            detected_at: self.host.now(),
            message: format!(
                "{what} at {}{when}; undo with `holdfast restore --cluster {} --before-incident {number} …`",
                d.lsn, self.cluster.name
            ),
            lsn: Some(d.lsn),
            xid: Some(d.xid),
            restore_target: Some(match d.restore_target {
                RestoreTarget::BeforeXid(xid) => IncidentTarget::BeforeXid { xid },
                RestoreTarget::BeforeLsn(lsn) => IncidentTarget::BeforeLsn { lsn },
            }),
            first_lsn: Some(d.first_lsn),
            timeline: Some(tli.0),
            objects,
        };
        self.record_incident(incident).await;
    }

    /// The server moved to a new timeline (a promotion): always an incident, one per timeline.
    pub(crate) async fn timeline_switch(
        &self,
        tli: TimelineId,
        switchpoint: Option<Lsn>,
        parent: Option<u32>,
    ) {
        let at = switchpoint.map(|l| format!(" at {l}")).unwrap_or_default();
        let from = parent.map(|p| format!(" from timeline {p}")).unwrap_or_default();
        let incident = Incident {
            cluster: self.cluster.name.clone(),
            kind: "timeline_switch".into(),
            detected_at: self.host.now(),
            message: format!(
                "the server switched to timeline {}{from}{at}: a standby was promoted. Expected after a planned \
                 switchover or failover; otherwise find out who promoted it — promoting a standby is what \
                 someone who destroyed the primary would do next",
                tli.0
            ),
            lsn: switchpoint,
            xid: None,
            restore_target: None,
            first_lsn: None,
            timeline: None,
            objects: Vec::new(),
        };
        self.record_incident(incident).await;
    }

    /// Every incident of this cluster, oldest first (numbered from 1 by `holdfast incidents`).
    pub fn incidents(&self) -> Vec<Incident> {
        self.all_incidents.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Raises an incident the vault found outside the collector (its warm standby stopped or
    /// fell behind), once per episode of `kind`: catalog record, status, log, alert.
    pub async fn raise_incident(&self, kind: &str, message: String) {
        self.incident(kind, message, None).await;
    }

    /// Ends the episode of `kind` (the standby runs again), so the next one is raised anew.
    pub fn end_incident_episode(&self, kind: &str) {
        self.clear_incidents(&[kind]);
    }

    /// A healthy stream closes the connection-related incident episodes.
    pub(crate) fn clear_incidents(&self, kinds: &[&str]) {
        let mut open = self.open_incidents.lock().unwrap_or_else(|p| p.into_inner());
        for k in kinds {
            open.remove(*k);
        }
    }

    /// Now, on the vault's clock.
    pub(crate) fn now(&self) -> Timestamp {
        self.host.now()
    }
}

/// OIDs (and initial relfilenodes) below this belong to the system (`FirstNormalObjectId`).
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// One object per table (indexes and TOAST folded into their table) or dropped database.
fn incident_objects(
    d: &crate::detect::Destruction,
    catalog: &Snapshot,
    tenant_column: Option<&str>,
) -> Vec<crate::status::IncidentObject> {
    use crate::status::IncidentObject;
    use pgfmt::wal::RelFileNode;
    let db_name = |oid: u32| catalog.database(oid).map_or_else(|| oid.to_string(), str::to_string);
    let mut out: Vec<IncidentObject> = Vec::new();
    if let Some(db) = d.database.filter(|_| d.kind == crate::detect::Kind::DatabaseDropped) {
        let bytes: u64 = catalog.relations_in(db).map(|(_, r)| r.bytes).sum();
        out.push(IncidentObject {
            database: db_name(db),
            bytes: (bytes > 0).then_some(bytes),
            dropped: true,
            ..Default::default()
        });
        return out;
    }
    // The object a relation file belongs to: its table when the catalog knows it.
    let mut index: std::collections::HashMap<RelFileNode, usize> = std::collections::HashMap::new();
    let mut slot = |out: &mut Vec<IncidentObject>, file: RelFileNode| -> usize {
        let info = catalog.relation(&file);
        let key = info.map_or(file, |i| i.table_file);
        *index.entry(key).or_insert_with(|| {
            let table = catalog.relation(&key).or(info);
            out.push(IncidentObject {
                database: db_name(file.db),
                schema: table.map(|t| t.schema.clone()),
                table: table.map(|t| t.table.clone()),
                relfilenode: Some(key.to_string()),
                rows: table.and_then(|t| t.rows),
                ..Default::default()
            });
            out.len() - 1
        })
    };
    for (f, pages) in &d.dropped {
        let i = slot(&mut out, *f);
        let o = &mut out[i];
        o.dropped = true;
        // The larger of what the catalog last said and the pages the WAL and backup showed.
        let b = catalog.relation(f).map_or(0, |r| r.bytes).max(pages * 8192);
        *o.bytes.get_or_insert(0) += b;
        if o.relfilenode.as_deref() != Some(&f.to_string()) {
            o.files.push(f.to_string());
        }
    }
    // Rows changed in the system catalogs are the bookkeeping of DDL, not the user's data.
    let user_table = |f: &RelFileNode| match catalog.relation(f) {
        Some(r) => !matches!(r.schema.as_str(), "pg_catalog" | "pg_toast" | "information_schema"),
        None => f.rel >= FIRST_NORMAL_OBJECT_ID,
    };
    for (f, n) in d.deleted.iter().filter(|(f, _)| user_table(f)) {
        let i = slot(&mut out, *f);
        *out[i].deleted.get_or_insert(0) += n;
    }
    for (f, n) in
        d.updated.iter().filter(|(f, _)| user_table(f) && d.kind != crate::detect::Kind::ColumnDropped)
    {
        let i = slot(&mut out, *f);
        *out[i].updated.get_or_insert(0) += n;
    }
    for (f, column) in &d.columns {
        let i = slot(&mut out, *f);
        out[i].columns.push(column.clone());
    }
    for t in &d.tenants {
        let i = slot(&mut out, t.rel);
        out[i].tenants.push(crate::status::IncidentTenant {
            column: tenant_column.unwrap_or("tenant").to_string(),
            value: t.tenant.clone(),
            deleted: (t.deleted > 0).then_some(t.deleted),
            updated: (t.updated > 0).then_some(t.updated),
            rows: t.rows,
        });
    }
    // A table that was only changed: its main file's size, for a sense of scale.
    for (key, &i) in &index {
        if !out[i].dropped {
            out[i].bytes = catalog.relation(key).map(|r| r.bytes);
        }
    }
    out
}
