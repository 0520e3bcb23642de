//! Destruction in the WAL, without IO: fed decoded records in WAL order, [`Detector`] reports
//! transactions that destroyed data — a dropped database (at once, from `XLOG_DBASE_DROP`),
//! relation files that held data dropped at commit (DROP TABLE/SCHEMA, TRUNCATE; not the
//! maintenance rewrites, see below), and mass deletes and updates (more heap tuples deleted or
//! updated in one transaction than a threshold, or at least a share of a table's estimated
//! rows) — each with the point to restore to: just before that transaction. One transaction is
//! one finding, however many tables it touched.
//!
//! Names are not this module's business: the caller maps relation files to tables with the
//! catalog snapshot ([`crate::catalog`]) and hands the detector only the row estimates
//! ([`Detector::set_table_rows`]) the share threshold needs.

use std::collections::HashMap;

use pgfmt::Lsn;
use pgfmt::wal::{RecordKind, RelFileNode};

/// What kind of destruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DatabaseDropped,
    RelationsDropped,
    MassDelete,
    MassUpdate,
}

impl Kind {
    /// The incident kind: `database_dropped`, `relations_dropped`, `mass_delete`, `mass_update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DatabaseDropped => "database_dropped",
            Kind::RelationsDropped => "relations_dropped",
            Kind::MassDelete => "mass_delete",
            Kind::MassUpdate => "mass_update",
        }
    }
}

/// Where to restore to, to undo a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreTarget {
    /// Stop before the record at this LSN (`recovery_target_lsn`, exclusive): a database's
    /// files are removed when the drop record is replayed, before its commit.
    BeforeLsn(Lsn),
    /// Stop just before this transaction commits (`recovery_target_xid`, exclusive).
    BeforeXid(u32),
}

/// One destructive transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destruction {
    pub kind: Kind,
    pub xid: u32,
    /// The transaction's first record seen.
    pub first_lsn: Lsn,
    /// The record that made it a finding: the drop record, or the commit.
    pub lsn: Lsn,
    /// Commit time (microseconds since the Unix epoch), when committed.
    pub commit_time_us: Option<i64>,
    /// The dropped database's OID.
    pub database: Option<u32>,
    /// Relation files dropped at commit, with their size in pages as far as the detector saw
    /// (base backup, WAL writes).
    pub dropped: Vec<(RelFileNode, u64)>,
    /// Heap tuples deleted, per relation file, most first.
    pub deleted: Vec<(RelFileNode, u64)>,
    /// Heap tuples updated, per relation file, most first.
    pub updated: Vec<(RelFileNode, u64)>,
    pub restore_target: RestoreTarget,
}

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A transaction deleting more heap tuples than this is a mass delete.
    pub mass_delete_rows: u64,
    /// A transaction updating more heap tuples than this is a mass update.
    pub mass_update_rows: u64,
    /// A transaction deleting (updating) at least this share of one table's estimated rows is
    /// a mass delete (update) too…
    pub mass_change_share: f64,
    /// …when that table has at least this many rows (deleting 3 of 4 rows is not an incident).
    pub mass_change_min_rows: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            mass_delete_rows: crate::config::DEFAULT_MASS_DELETE_ROWS,
            mass_update_rows: crate::config::DEFAULT_MASS_UPDATE_ROWS,
            mass_change_share: crate::config::DEFAULT_MASS_CHANGE_SHARE,
            mass_change_min_rows: crate::config::DEFAULT_MASS_CHANGE_MIN_ROWS,
        }
    }
}

impl Thresholds {
    /// Whether `counts` (tuples per relation file) are a mass change, with `total_limit` the
    /// absolute threshold and `rows` the tables' estimated rows.
    fn crossed(
        &self,
        counts: &HashMap<RelFileNode, u64>,
        total_limit: u64,
        rows: &HashMap<RelFileNode, u64>,
    ) -> bool {
        let total: u64 = counts.values().sum();
        total > total_limit
            || counts.iter().any(|(rel, n)| {
                rows.get(rel).is_some_and(|&r| {
                    r >= self.mass_change_min_rows && r > 0 && *n as f64 >= self.mass_change_share * r as f64
                })
            })
    }
}

#[derive(Debug, Default)]
struct Open {
    first_lsn: Lsn,
    deleted: HashMap<RelFileNode, u64>,
    updated: HashMap<RelFileNode, u64>,
    /// Files this transaction wrote that were not known to hold data before: pages written.
    new_pages: HashMap<RelFileNode, u64>,
}

/// The state across records: one entry per transaction in progress, and the relation files
/// known to hold data.
#[derive(Debug, Default)]
pub struct Detector {
    thresholds: Thresholds,
    open: HashMap<u32, Open>,
    /// Relation files known to hold data, with their size in pages as far as known: non-empty
    /// in a base backup, or written in the WAL followed since. Dropping a file that never held
    /// data (TRUNCATE of a table created empty, as `pgbench -i` does) destroys nothing.
    nonempty: HashMap<RelFileNode, u64>,
    /// Estimated rows per table file, from the catalog snapshot.
    rows: HashMap<RelFileNode, u64>,
    /// Files first written since [`Detector::take_new_files`] was last called.
    new_files: Vec<RelFileNode>,
    /// `pg_database` rows (block, offset) updated in place, with the record's LSN.
    db_row_marked: HashMap<(u32, u16), Lsn>,
}

/// The relation file a backup path belongs to (`base/5/16384.1`, `global/1262_vm`,
/// `pg_tblspc/16400/PG_15_202209061/5/16401`), if it is one.
pub fn relfilenode_of(path: &str) -> Option<RelFileNode> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, file) = match parts.as_slice() {
        ["base", db, file] => (1663, db.parse().ok()?, *file),
        ["global", file] => (1664, 0, *file),
        ["pg_tblspc", spc, _version, db, file] => (spc.parse().ok()?, db.parse().ok()?, *file),
        _ => return None,
    };
    let stem = file.split(['.', '_']).next()?;
    Some(RelFileNode { spc, db, rel: stem.parse().ok()? })
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Detector {
        Detector { thresholds, ..Default::default() }
    }

    /// The estimated rows of tables (by main file), for the share threshold; replaces what
    /// was set before.
    pub fn set_table_rows(&mut self, rows: impl IntoIterator<Item = (RelFileNode, u64)>) {
        self.rows = rows.into_iter().collect();
    }

    /// Relation files first written (seen in the WAL, not seeded) since the last call: the
    /// caller refreshes its catalog when one is new to it too.
    pub fn take_new_files(&mut self) -> Vec<RelFileNode> {
        std::mem::take(&mut self.new_files)
    }

    /// Relation files known to hold data, with their size in pages (e.g. the non-empty files
    /// of a base backup).
    pub fn seed(&mut self, rels: impl IntoIterator<Item = (RelFileNode, u64)>) {
        for (rel, pages) in rels {
            let p = self.nonempty.entry(rel).or_default();
            *p = (*p).max(pages);
        }
    }

    /// Transaction `xid` wrote these blocks (a record's block references): the files hold
    /// data; files new to the detector count as written by this transaction.
    pub fn note_written(&mut self, xid: u32, blocks: impl IntoIterator<Item = (RelFileNode, u32)>) {
        for (rel, block) in blocks {
            let pages = u64::from(block) + 1;
            let known = self.nonempty.contains_key(&rel);
            if !known && self.new_files.len() < 1024 {
                self.new_files.push(rel);
            }
            if let Some(open) = self.open.get_mut(&xid).filter(|_| xid != 0)
                && (!known || open.new_pages.contains_key(&rel))
            {
                let p = open.new_pages.entry(rel).or_default();
                *p = (*p).max(pages);
            }
            let p = self.nonempty.entry(rel).or_default();
            *p = (*p).max(pages);
        }
    }

    /// One decoded record: the blocks it writes, then its kind. What callers use.
    pub fn record(&mut self, rec: &pgfmt::wal::WalRecord) -> Option<Destruction> {
        let kind = rec.kind().ok()?;
        if let Ok(body) = rec.body() {
            self.database_row(rec, &body, &kind);
            self.open_xact(rec.lsn, rec.header.xid);
            self.note_written(rec.header.xid, body.blocks.iter().map(|b| (b.rel, b.block)));
        }
        self.feed(rec.lsn, rec.header.xid, &kind)
    }

    /// DROP DATABASE (PostgreSQL 15.4 and later) first marks the database invalid with an
    /// in-place update of its `pg_database` row, before its transaction has an id, then deletes
    /// the row. Restoring to just before the transaction's first record would bring the
    /// database back invalid, so its transaction starts at that in-place update: matched by the
    /// row (block, offset) the delete then removes.
    fn database_row(
        &mut self,
        rec: &pgfmt::wal::WalRecord,
        body: &pgfmt::wal::DecodedBody<'_>,
        kind: &RecordKind,
    ) {
        const PG_DATABASE: RelFileNode = RelFileNode { spc: 1664, db: 0, rel: 1262 };
        const XLOG_HEAP_INPLACE: u8 = 0x70;
        let Some(b) = body.blocks.first().filter(|b| b.rel == PG_DATABASE) else { return };
        let offset = |at: usize| body.main_data.get(at..at + 2).map(|o| u16::from_le_bytes([o[0], o[1]]));
        if rec.header.rmid == pgfmt::wal::rmgr::HEAP && rec.rm_info() & 0x70 == XLOG_HEAP_INPLACE {
            if let Some(off) = offset(0) {
                if self.db_row_marked.len() >= 64 {
                    self.db_row_marked.clear();
                }
                self.db_row_marked.insert((b.block, off), rec.lsn);
            }
        } else if let RecordKind::HeapDelete { .. } = kind {
            // xl_heap_delete: xmax (4 bytes), then the offset.
            let marked = offset(4).and_then(|off| self.db_row_marked.remove(&(b.block, off)));
            if let Some(at) =
                marked.filter(|_| rec.header.xid != 0 && !self.open.contains_key(&rec.header.xid))
            {
                self.open.insert(rec.header.xid, Open { first_lsn: at, ..Default::default() });
            }
        }
    }

    fn open_xact(&mut self, lsn: Lsn, xid: u32) {
        if xid != 0 {
            self.open.entry(xid).or_insert_with(|| Open { first_lsn: lsn, ..Default::default() });
        }
    }

    /// Transactions in progress (bounded by the server's concurrency).
    pub fn in_progress(&self) -> usize {
        self.open.len()
    }

    /// Feeds one record (its start LSN, `xl_xid`, decoded kind); returns what it reveals.
    pub fn feed(&mut self, lsn: Lsn, xid: u32, kind: &RecordKind) -> Option<Destruction> {
        self.open_xact(lsn, xid);
        match kind {
            RecordKind::HeapDelete { rel: Some(rel), .. } if xid != 0 => {
                *self.open.get_mut(&xid)?.deleted.entry(*rel).or_default() += 1;
                None
            }
            RecordKind::HeapUpdate { rel: Some(rel), .. } if xid != 0 => {
                *self.open.get_mut(&xid)?.updated.entry(*rel).or_default() += 1;
                None
            }
            RecordKind::DbaseDrop { db_id, .. } => {
                let first_lsn = self.open.get(&xid).map_or(lsn, |o| o.first_lsn);
                Some(Destruction {
                    kind: Kind::DatabaseDropped,
                    xid,
                    first_lsn,
                    lsn,
                    commit_time_us: None,
                    database: Some(*db_id),
                    dropped: Vec::new(),
                    deleted: Vec::new(),
                    updated: Vec::new(),
                    restore_target: RestoreTarget::BeforeLsn(first_lsn),
                })
            }
            RecordKind::XactAbort(x) => {
                self.open.remove(&xid);
                for sub in &x.subxacts {
                    self.open.remove(sub);
                }
                None
            }
            RecordKind::XactCommit(x) => {
                let mut open =
                    self.open.remove(&xid).unwrap_or(Open { first_lsn: lsn, ..Default::default() });
                // Work done in subtransactions (savepoints, PL/pgSQL exception blocks) counts
                // for the transaction that commits it.
                for sub in &x.subxacts {
                    if let Some(o) = self.open.remove(sub) {
                        open.first_lsn = open.first_lsn.min(o.first_lsn);
                        for (rel, n) in o.deleted {
                            *open.deleted.entry(rel).or_default() += n;
                        }
                        for (rel, n) in o.updated {
                            *open.updated.entry(rel).or_default() += n;
                        }
                        for (rel, n) in o.new_pages {
                            let p = open.new_pages.entry(rel).or_default();
                            *p = (*p).max(n);
                        }
                    }
                }
                let mut dropped: Vec<(RelFileNode, u64)> = Vec::new();
                let mut dropped_pages = 0;
                for r in &x.dropped_rels {
                    if let Some(pages) = self.nonempty.remove(r) {
                        dropped.push((*r, pages));
                        dropped_pages += pages;
                    }
                }
                // A rewrite (VACUUM FULL, CLUSTER, REINDEX, ALTER TABLE that rewrites) writes
                // the data into new files in the same transaction before dropping the old
                // ones; TRUNCATE leaves the new files empty but for one metapage per index.
                // So dropped files were rewritten when their transaction wrote at least 5 % of
                // their pages into new files, and more pages than it dropped files (the index
                // metapages a TRUNCATE writes) — unless every dropped file held a single page,
                // where any page written is the data itself.
                let new_pages: u64 = open.new_pages.values().sum();
                let files = dropped.len() as u64;
                if !dropped.is_empty()
                    && new_pages >= 1
                    && new_pages * 20 >= dropped_pages
                    && (new_pages > files || dropped_pages <= files)
                {
                    tracing::debug!(
                        xid,
                        dropped = dropped.len(),
                        dropped_pages,
                        new_pages,
                        "relation files rewritten, not destroyed"
                    );
                    dropped.clear();
                }
                let t = self.thresholds;
                let kind = if !dropped.is_empty() {
                    Kind::RelationsDropped
                } else if t.crossed(&open.deleted, t.mass_delete_rows, &self.rows) {
                    Kind::MassDelete
                } else if t.crossed(&open.updated, t.mass_update_rows, &self.rows) {
                    Kind::MassUpdate
                } else {
                    return None;
                };
                let most_first = |m: HashMap<RelFileNode, u64>| {
                    let mut v: Vec<(RelFileNode, u64)> = m.into_iter().collect();
                    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.rel.cmp(&b.0.rel)));
                    v
                };
                let deleted = most_first(open.deleted);
                let updated = most_first(open.updated);
                Some(Destruction {
                    kind,
                    xid,
                    first_lsn: open.first_lsn,
                    lsn,
                    commit_time_us: Some(x.unix_micros()),
                    database: x.db.map(|(db, _)| db),
                    dropped,
                    deleted,
                    updated,
                    restore_target: RestoreTarget::BeforeXid(xid),
                })
            }
            _ => None,
        }
    }
}

/// Follows a cluster's durable WAL as it is stored, decodes it and raises an incident for each
/// destructive transaction, within moments of its WAL becoming durable. Starts at the WAL
/// durable when it starts (what was stored before is not re-read: a transaction under way
/// across a vault restart is judged only on what follows); restarts on a new timeline.
pub async fn follow(
    rt: std::sync::Arc<crate::runtime::ClusterRuntime>,
    thresholds: Thresholds,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    /// More undecoded WAL than this in one step means the decoder is stuck: skip ahead.
    const MAX_STEP: u64 = 64 << 20;
    let mut durable = rt.durable.subscribe();
    let (mut tli, mut next) = *durable.borrow_and_update();
    let mut detector = Detector::new(thresholds);
    let mut seeded_from: Option<String> = None;
    let mut catalog_generation = 0;
    loop {
        tokio::select! {
            r = durable.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let (t, end) = *durable.borrow_and_update();
        if t != tli {
            tli = t;
            next = rt.archive.map().first(t).map_or(end, |p| p.start);
            detector = Detector::new(thresholds);
            seeded_from = None;
        }
        // Files holding data that the WAL since may never touch: the newest base backup's.
        let newest = rt.newest_backup_id();
        if newest.is_some() && newest != seeded_from {
            if let Some(id) = &newest {
                match rt.backup_relation_files(id).await {
                    Ok(rels) => detector.seed(rels),
                    Err(e) => {
                        tracing::warn!(cluster = %rt.cluster.name, error = %e, "could not read the backup's file list")
                    }
                }
            }
            seeded_from = newest;
        }
        let Some(seg_size) = rt.archive.segment_size() else { continue };
        if next.0 == 0 {
            next = rt.archive.map().first(t).map_or(end, |p| p.start);
        }
        if end <= next {
            continue;
        }
        if end.0 - next.0 > MAX_STEP {
            tracing::warn!(cluster = %rt.cluster.name, from = %next, to = %end, "destruction detector skipping WAL it could not decode");
            next = end;
            continue;
        }
        let page = Lsn(next.0 - next.0 % 8192);
        let wal = match rt.archive.read_range(tli, page, end).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(cluster = %rt.cluster.name, error = %e, "destruction detector could not read WAL");
                continue;
            }
        };
        let mut reader = pgfmt::wal::WalReader::new(&wal, page, seg_size);
        let mut found = Vec::new();
        let catalog = rt.catalog();
        if catalog.generation() != catalog_generation {
            catalog_generation = catalog.generation();
            detector.set_table_rows(catalog.table_rows());
        }
        for rec in reader.by_ref() {
            let Ok(rec) = rec else { break };
            if rec.lsn < next {
                continue;
            }
            if let Some(d) = detector.record(&rec) {
                found.push(d);
            }
        }
        if let Some(n) = reader.next_lsn() {
            next = next.max(n);
        }
        // A file the catalog does not know (a new table, a TRUNCATE's or a rewrite's new
        // file): refresh now, so that it has a name if it is destroyed later.
        for f in detector.take_new_files() {
            if f.db != 0 && catalog.relation(&f).is_none() {
                rt.want_catalog(f.db);
            }
        }
        for d in found {
            rt.destruction(&d, &catalog).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfmt::wal::XactEnd;

    fn rel(r: u32) -> RelFileNode {
        RelFileNode { spc: 1663, db: 5, rel: r }
    }

    fn end(dropped: Vec<RelFileNode>, subxacts: Vec<u32>) -> XactEnd {
        XactEnd {
            time: 0,
            xinfo: 0,
            db: Some((5, 1663)),
            subxacts,
            dropped_rels: dropped,
            twophase_xid: None,
        }
    }

    fn commit(dropped: Vec<RelFileNode>) -> RecordKind {
        RecordKind::XactCommit(end(dropped, vec![]))
    }

    #[test]
    fn mass_delete_counts_per_transaction_and_aborts_forget() {
        let mut d = Detector::new(Thresholds { mass_delete_rows: 3, ..Default::default() });
        let del = RecordKind::HeapDelete { rel: Some(rel(16384)), block: Some(0) };
        // Interleaved: xid 10 deletes 4 rows, xid 11 deletes 4 and aborts, xid 12 deletes 2.
        for i in 0..4 {
            assert_eq!(d.feed(Lsn(100 + i * 3), 10, &del), None);
            assert_eq!(d.feed(Lsn(101 + i * 3), 11, &del), None);
        }
        d.feed(Lsn(200), 12, &del);
        d.feed(Lsn(201), 12, &del);
        assert_eq!(d.feed(Lsn(300), 11, &RecordKind::XactAbort(end(vec![], vec![]))), None);
        assert_eq!(d.feed(Lsn(301), 12, &commit(vec![])), None, "2 rows is under the threshold");
        let f = d.feed(Lsn(302), 10, &commit(vec![])).unwrap();
        assert_eq!((f.kind, f.xid, f.first_lsn, f.lsn), (Kind::MassDelete, 10, Lsn(100), Lsn(302)));
        assert_eq!(f.deleted, vec![(rel(16384), 4)]);
        assert_eq!(f.restore_target, RestoreTarget::BeforeXid(10));
        assert_eq!(d.in_progress(), 0, "finished transactions are forgotten");
        // Deletes in subtransactions count for the top-level commit.
        d.feed(Lsn(400), 20, &RecordKind::Other);
        for i in 0..2 {
            d.feed(Lsn(401 + i), 21, &del);
            d.feed(Lsn(410 + i), 22, &del);
        }
        let f = d.feed(Lsn(420), 20, &RecordKind::XactCommit(end(vec![], vec![21, 22]))).unwrap();
        assert_eq!(
            (f.kind, f.first_lsn, f.deleted.clone()),
            (Kind::MassDelete, Lsn(400), vec![(rel(16384), 4)])
        );
        assert_eq!(d.in_progress(), 0);
    }

    #[test]
    fn mass_updates_and_the_share_of_a_table() {
        let t = Thresholds {
            mass_delete_rows: 100,
            mass_update_rows: 100,
            mass_change_share: 0.5,
            mass_change_min_rows: 10,
        };
        let mut d = Detector::new(t);
        let upd = |r| RecordKind::HeapUpdate { rel: Some(rel(r)), hot: false };
        let del = |r| RecordKind::HeapDelete { rel: Some(rel(r)), block: Some(0) };
        // 101 updates over two tables: over the absolute threshold.
        for i in 0..101 {
            d.feed(Lsn(10 + i), 30, &upd(if i % 2 == 0 { 1 } else { 2 }));
        }
        let f = d.feed(Lsn(200), 30, &commit(vec![])).unwrap();
        assert_eq!(f.kind, Kind::MassUpdate);
        assert_eq!(f.updated, vec![(rel(1), 51), (rel(2), 50)], "per table, most first");
        // Without row estimates, 60 updates of one table is nothing.
        for i in 0..60 {
            d.feed(Lsn(300 + i), 31, &upd(3));
        }
        assert_eq!(d.feed(Lsn(400), 31, &commit(vec![])), None);
        // With them: 60 of 100 rows is over half the table; 3 of 4 rows is a tiny table.
        d.set_table_rows([(rel(3), 100), (rel(4), 4), (rel(5), 1000)]);
        for i in 0..60 {
            d.feed(Lsn(500 + i), 32, &upd(3));
        }
        let f = d.feed(Lsn(600), 32, &commit(vec![])).unwrap();
        assert_eq!((f.kind, f.updated.clone()), (Kind::MassUpdate, vec![(rel(3), 60)]));
        for i in 0..3 {
            d.feed(Lsn(700 + i), 33, &del(4));
        }
        assert_eq!(d.feed(Lsn(710), 33, &commit(vec![])), None, "3 of 4 rows");
        for i in 0..60 {
            d.feed(Lsn(800 + i), 34, &del(5));
        }
        assert_eq!(d.feed(Lsn(900), 34, &commit(vec![])), None, "60 of 1000 rows");
        // Deletes win over updates when both cross: the transaction is reported once.
        for i in 0..70 {
            d.feed(Lsn(1000 + i), 35, &del(3));
            d.feed(Lsn(1100 + i), 35, &upd(3));
        }
        let f = d.feed(Lsn(1200), 35, &commit(vec![])).unwrap();
        assert_eq!((f.kind, f.deleted.len(), f.updated.len()), (Kind::MassDelete, 1, 1));
        assert_eq!(d.in_progress(), 0);
    }

    #[test]
    fn dropped_files_and_databases() {
        let mut d = Detector::default();
        // Files that never held data: dropping them destroys nothing.
        assert_eq!(d.feed(Lsn(40), 6, &commit(vec![rel(8), rel(9)])), None);
        d.seed([(rel(1), 10)]);
        d.note_written(0, [(rel(2), 4)]);
        let f = d.feed(Lsn(50), 7, &commit(vec![rel(1), rel(2), rel(3)])).unwrap();
        assert_eq!(f.kind, Kind::RelationsDropped);
        assert_eq!(f.dropped, vec![(rel(1), 10), (rel(2), 5)]);
        // A rewrite: the transaction wrote the data into new files before dropping the old.
        d.seed([(rel(20), 100), (rel(21), 30)]);
        d.feed(Lsn(90), 9, &RecordKind::Other);
        d.note_written(9, (0..60).map(|b| (rel(30), b)).chain((0..20).map(|b| (rel(31), b))));
        assert_eq!(d.feed(Lsn(95), 9, &commit(vec![rel(20), rel(21)])), None, "VACUUM FULL-like");
        // TRUNCATE: new files get one metapage per index, nothing else.
        d.seed([(rel(40), 100), (rel(41), 30)]);
        d.feed(Lsn(100), 10, &RecordKind::Other);
        d.note_written(10, [(rel(51), 0)]);
        let f = d.feed(Lsn(105), 10, &commit(vec![rel(40), rel(41)])).unwrap();
        assert_eq!(f.dropped, vec![(rel(40), 100), (rel(41), 30)], "TRUNCATE-like");
        assert_eq!(relfilenode_of("base/5/16384.12"), Some(RelFileNode { spc: 1663, db: 5, rel: 16384 }));
        assert_eq!(relfilenode_of("global/1262_vm"), Some(RelFileNode { spc: 1664, db: 0, rel: 1262 }));
        assert_eq!(
            relfilenode_of("pg_tblspc/16400/PG_15_202209061/5/16401_fsm"),
            Some(RelFileNode { spc: 16400, db: 5, rel: 16401 })
        );
        assert_eq!(relfilenode_of("base/5/PG_VERSION"), None);
        assert_eq!(relfilenode_of("pg_wal/000000010000000000000001"), None);
        // DROP DATABASE: reported at the drop record, restore to before the transaction began.
        assert_eq!(d.feed(Lsn(60), 8, &RecordKind::Other), None);
        let f = d.feed(Lsn(70), 8, &RecordKind::DbaseDrop { db_id: 16400, tablespaces: vec![1663] }).unwrap();
        assert_eq!(
            (f.kind, f.database, f.restore_target),
            (Kind::DatabaseDropped, Some(16400), RestoreTarget::BeforeLsn(Lsn(60)))
        );
        // Its commit drops no relation files of its own: nothing more.
        assert_eq!(d.feed(Lsn(80), 8, &commit(vec![])), None);
    }
}
