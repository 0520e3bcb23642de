//! Destruction in the WAL, without IO: fed decoded records in WAL order, [`Detector`] reports
//! transactions that destroyed data — a dropped database (at once, from `XLOG_DBASE_DROP`),
//! table files that held data dropped at commit (DROP TABLE/SCHEMA, TRUNCATE; not maintenance
//! rewrites, not index drops, see below), mass deletes and updates (more heap tuples deleted or
//! updated in one transaction than a threshold, or at least a share of a table's estimated
//! rows), deletes dripped over many small transactions (cumulative per table and per database
//! over a sliding window of commit time — kept within the vault's clock and WAL order, since the
//! primary's clock is the attacker's: see [`Detector::set_clock`]), and committed changes to
//! `pg_attribute` for the caller to check against the catalog (DROP COLUMN) — each with the
//! point to restore to: just before the transaction, or before the window's first contributing
//! transaction by commit (whatever order drops were judged in: see [`Detector::resolve`]). One
//! transaction is one finding, however many tables it touched.
//!
//! Names are not this module's business: the caller maps relation files to tables with the
//! catalog snapshot ([`crate::catalog`]) and hands the detector only what its rules need: the
//! table each file belongs to and its kind ([`Detector::set_relations`]), and tables' estimated
//! rows ([`Detector::set_table_rows`]). The task that feeds it the stored WAL is
//! [`crate::follow`].

use std::collections::{HashMap, VecDeque};

use pgfmt::Lsn;
use pgfmt::wal::{RecordKind, RelFileNode};

/// `pg_attribute`'s OID (`AttributeRelationId`): an update of its rows is how DROP COLUMN
/// shows in the WAL (`attisdropped` set, the name replaced).
pub const PG_ATTRIBUTE_OID: u32 = 1249;

/// What kind of destruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DatabaseDropped,
    RelationsDropped,
    MassDelete,
    MassUpdate,
    /// Many transactions, each under the per-transaction thresholds, that together deleted
    /// more than the window thresholds allow.
    CumulativeDelete,
    /// The same for rows updated (each row counted once however often it was updated).
    CumulativeUpdate,
    /// More tables' data dropped within the window than its thresholds allow (each drop is
    /// an incident of its own too; this one restores to before the first).
    CumulativeDrop,
    /// A populated column dropped (found by the caller, see [`AttributeChange`]).
    ColumnDropped,
}

impl Kind {
    /// The incident kind: `database_dropped`, `relations_dropped`, `mass_delete`,
    /// `mass_update`, `cumulative_delete`, `cumulative_update`, `cumulative_drop`,
    /// `column_dropped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DatabaseDropped => "database_dropped",
            Kind::RelationsDropped => "relations_dropped",
            Kind::MassDelete => "mass_delete",
            Kind::MassUpdate => "mass_update",
            Kind::CumulativeDelete => "cumulative_delete",
            Kind::CumulativeUpdate => "cumulative_update",
            Kind::CumulativeDrop => "cumulative_drop",
            Kind::ColumnDropped => "column_dropped",
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

/// What the catalog says a relation file is: the OID of the table it belongs to (itself for a
/// table; the owning table for its indexes and TOAST) and its `relkind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelMeta {
    pub table_oid: u32,
    pub relkind: char,
}

/// One destructive transaction (or, for [`Kind::CumulativeDelete`], the transaction that
/// crossed a window threshold, with the window's totals).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destruction {
    pub kind: Kind,
    pub xid: u32,
    /// The transaction's first record seen (the window's first contributing transaction's).
    pub first_lsn: Lsn,
    /// The record that made it a finding: the drop record, or the commit.
    pub lsn: Lsn,
    /// Commit time (microseconds since the Unix epoch), when committed: the record's, unless
    /// the primary's clock lied (then the time the detector trusted, see
    /// [`Detector::set_clock`]).
    pub commit_time_us: Option<i64>,
    /// The database: the dropped one, or the one the transaction ran in.
    pub database: Option<u32>,
    /// Relation files dropped at commit, with their size in pages as far as the detector saw
    /// (base backup, WAL writes).
    pub dropped: Vec<(RelFileNode, u64)>,
    /// Heap tuples deleted, per relation file, most first.
    pub deleted: Vec<(RelFileNode, u64)>,
    /// Heap tuples updated, per relation file, most first.
    pub updated: Vec<(RelFileNode, u64)>,
    /// Columns dropped: (the table's main file, column name).
    pub columns: Vec<(RelFileNode, String)>,
    /// Rows deleted and updated per tenant (when a tenant column is configured), most first.
    pub tenants: Vec<TenantCount>,
    /// Transactions that make up the finding (1 but for a window).
    pub transactions: u64,
    /// For a window: its first contributing transaction's commit time (µs since the epoch).
    pub window_start_us: Option<i64>,
    pub restore_target: RestoreTarget,
    /// Files this transaction wrote data into that were new (not known to hold data before):
    /// a drop is a rewrite when one of them belongs to the same table.
    #[serde(skip)]
    pub new_files: Vec<RelFileNode>,
    /// The drops could not be judged yet: a new file is not in the catalog. The caller
    /// refreshes the catalog and calls [`Detector::resolve`].
    #[serde(skip)]
    pub unresolved: bool,
    /// What the transaction is if its drops turn out to be a rewrite (a mass change, or nothing).
    #[serde(skip)]
    pub otherwise: Option<Kind>,
}

impl Destruction {
    fn new(kind: Kind, xid: u32, first_lsn: Lsn, lsn: Lsn, restore_target: RestoreTarget) -> Self {
        Destruction {
            kind,
            xid,
            first_lsn,
            lsn,
            commit_time_us: None,
            database: None,
            dropped: Vec::new(),
            deleted: Vec::new(),
            updated: Vec::new(),
            columns: Vec::new(),
            tenants: Vec::new(),
            transactions: 1,
            window_start_us: None,
            restore_target,
            new_files: Vec::new(),
            unresolved: false,
            otherwise: None,
        }
    }
}

/// One tenant's rows changed in one table (a finding's detail).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantCount {
    /// The table's main file.
    pub rel: RelFileNode,
    /// The tenant column's value, as text.
    pub tenant: String,
    pub deleted: u64,
    pub updated: u64,
    /// The tenant's estimated rows in the table, when known.
    pub rows: Option<u64>,
}

/// Where a table keeps its tenant column, for reading it out of logged rows: its number and
/// type, and the storage of every column up to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantColumn {
    pub attnum: usize,
    pub type_oid: u32,
    pub layout: Vec<pgfmt::tuple::AttrLayout>,
}

/// The tenants' estimated rows in one table: the most common values' (from the planner's
/// statistics), and the rest's average.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantRows {
    pub common: HashMap<String, u64>,
    pub other: Option<u64>,
}

impl TenantRows {
    pub fn of(&self, tenant: &str) -> Option<u64> {
        self.common.get(tenant).copied().or(self.other)
    }
}

/// A committed transaction that updated `pg_attribute` rows: DROP COLUMN (among other DDL).
/// The caller compares the catalog's columns before and after to find out which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeChange {
    pub xid: u32,
    pub first_lsn: Lsn,
    pub lsn: Lsn,
    pub db: u32,
    pub commit_time_us: i64,
}

/// How far a commit's time may lie ahead of the vault's clock, or behind the newest commit time
/// before it in the WAL, before it is taken for a clock that lies: generous for hosts whose
/// clocks are kept by NTP (milliseconds apart) and for commits racing for the WAL (their times
/// are taken just before their records are inserted), far under the windows (minutes).
pub const CLOCK_TOLERANCE_US: i64 = 10_000_000;

/// A commit whose time the primary's clock made up: ahead of the vault's clock, or behind a
/// commit earlier in the WAL (someone set the clock back or forward — root on the database
/// host — or its time synchronisation broke). Commit times are what `recovery_target_time`
/// and the detector's windows go by, so the caller raises it (`server_clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockLie {
    pub xid: u32,
    /// The commit record.
    pub lsn: Lsn,
    /// The time the commit record carries (µs since the Unix epoch).
    pub claimed_us: i64,
    /// What it was measured against: the vault's clock (`ahead`) or the newest commit time
    /// before it in the WAL.
    pub reference_us: i64,
    pub ahead: bool,
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
    /// Also the floor for [`Thresholds::window_delete_share`].
    pub mass_change_min_rows: u64,
    /// The sliding window, in seconds of commit time, over which deletes add up.
    pub window_seconds: u64,
    /// More rows than this deleted from one table within the window is a cumulative delete.
    pub window_table_delete_rows: u64,
    /// More rows than this deleted in one database within the window is one too.
    pub window_database_delete_rows: u64,
    /// At least this share of one table's estimated rows deleted within the window is one too.
    pub window_delete_share: f64,
    /// More rows than this updated in one table within the window (each row once, however
    /// often) is a cumulative update.
    pub window_table_update_rows: u64,
    /// More rows than this updated in one database within the window is one too.
    pub window_database_update_rows: u64,
    /// At least this share of one table's estimated rows updated within the window is one too.
    pub window_update_share: f64,
    /// More bytes than this of tables' data dropped in one database within the window is a
    /// cumulative drop.
    pub window_dropped_bytes: u64,
    /// More tables than this with data dropped in one database within the window is one too.
    pub window_dropped_tables: u64,
    /// The share rules apply to a tenant's rows in a table as to a table, for tenants of at
    /// least this many rows (estimated).
    pub tenant_min_rows: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        use crate::config as c;
        Thresholds {
            mass_delete_rows: c::DEFAULT_MASS_DELETE_ROWS,
            mass_update_rows: c::DEFAULT_MASS_UPDATE_ROWS,
            mass_change_share: c::DEFAULT_MASS_CHANGE_SHARE,
            mass_change_min_rows: c::DEFAULT_MASS_CHANGE_MIN_ROWS,
            window_seconds: c::DEFAULT_WINDOW_SECONDS,
            window_table_delete_rows: c::DEFAULT_WINDOW_TABLE_DELETE_ROWS,
            window_database_delete_rows: c::DEFAULT_WINDOW_DATABASE_DELETE_ROWS,
            window_delete_share: c::DEFAULT_WINDOW_DELETE_SHARE,
            window_table_update_rows: c::DEFAULT_WINDOW_TABLE_UPDATE_ROWS,
            window_database_update_rows: c::DEFAULT_WINDOW_DATABASE_UPDATE_ROWS,
            window_update_share: c::DEFAULT_WINDOW_UPDATE_SHARE,
            window_dropped_bytes: c::DEFAULT_WINDOW_DROPPED_BYTES,
            window_dropped_tables: c::DEFAULT_WINDOW_DROPPED_TABLES,
            tenant_min_rows: c::DEFAULT_TENANT_MIN_ROWS,
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
            || counts
                .iter()
                .any(|(rel, n)| self.share_crossed(*n, rows.get(rel).copied(), self.mass_change_share))
    }

    fn share_crossed(&self, n: u64, rows: Option<u64>, share: f64) -> bool {
        Self::share_over(n, rows, share, self.mass_change_min_rows)
    }

    fn share_over(n: u64, rows: Option<u64>, share: f64, floor: u64) -> bool {
        rows.is_some_and(|r| r >= floor && r > 0 && n as f64 >= share * r as f64)
    }
}

#[derive(Debug, Default)]
struct Open {
    first_lsn: Lsn,
    deleted: HashMap<RelFileNode, u64>,
    updated: HashMap<RelFileNode, u64>,
    /// Rows updated that no earlier update in the window had updated (the row's first).
    updated_rows: HashMap<RelFileNode, u64>,
    tenant_deleted: HashMap<(RelFileNode, String), u64>,
    tenant_updated: HashMap<(RelFileNode, String), u64>,
    /// Files this transaction wrote that were not known to hold data before: pages written.
    new_pages: HashMap<RelFileNode, u64>,
}

/// What a window counts: rows deleted or updated per table, per tenant of a table and per
/// database, and tables' data dropped per database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    TableDeleted(RelFileNode),
    TableUpdated(RelFileNode),
    TenantDeleted(RelFileNode, String),
    TenantUpdated(RelFileNode, String),
    DbDeleted(u32),
    DbUpdated(u32),
    DbDroppedBytes(u32),
    DbDroppedTables(u32),
}

impl Key {
    /// The finding it makes when it crosses.
    fn kind(&self) -> Kind {
        match self {
            Key::TableDeleted(_) | Key::TenantDeleted(..) | Key::DbDeleted(_) => Kind::CumulativeDelete,
            Key::TableUpdated(_) | Key::TenantUpdated(..) | Key::DbUpdated(_) => Kind::CumulativeUpdate,
            Key::DbDroppedBytes(_) | Key::DbDroppedTables(_) => Kind::CumulativeDrop,
        }
    }
}

/// The keys of a database's drop window.
fn drop_keys(db: u32) -> Vec<Key> {
    vec![Key::DbDroppedBytes(db), Key::DbDroppedTables(db)]
}

/// One committed transaction's counts, as the window keeps them.
#[derive(Debug)]
struct Entry {
    xid: u32,
    first_lsn: Lsn,
    /// Its commit record: the window is kept in this order, which is the order a restore
    /// replays commits in.
    commit_lsn: Lsn,
    commit_us: i64,
    db: u32,
    counts: Vec<(Key, u64)>,
    /// Tables' files holding data it dropped (for a cumulative drop).
    dropped: Vec<(RelFileNode, u64)>,
}

/// Counts of committed transactions within the window, in commit (WAL) order — not in the order
/// they were judged: a drop judged against the catalog joins after drops committed later —
/// with running sums.
#[derive(Debug, Default)]
struct Window {
    /// (database, kind) whose window was reported, with the last contribution since: further
    /// ones belong to the same episode (one incident; restoring before its first transaction
    /// undoes them too) until the database has been quiet for a whole window.
    reported: HashMap<(u32, Kind), i64>,
    entries: VecDeque<Entry>,
    sums: HashMap<Key, u64>,
    /// The newest commit time counted: the window ends there.
    newest_us: i64,
}

impl Window {
    fn add(&mut self, e: Entry) {
        for (k, n) in &e.counts {
            *self.sums.entry(k.clone()).or_default() += n;
        }
        let at = self.entries.partition_point(|x| x.commit_lsn <= e.commit_lsn);
        self.entries.insert(at, e);
    }

    fn subtract(sums: &mut HashMap<Key, u64>, e: &Entry) {
        for (k, n) in &e.counts {
            if let Some(v) = sums.get_mut(k) {
                *v = v.saturating_sub(*n);
                if *v == 0 {
                    sums.remove(k);
                }
            }
        }
    }

    /// Forgets transactions committed before `from_us`.
    fn expire(&mut self, from_us: i64) {
        while self.entries.front().is_some_and(|e| e.commit_us < from_us) {
            let e = self.entries.pop_front().expect("checked");
            Self::subtract(&mut self.sums, &e);
        }
    }

    /// Takes the counts of `kind` of database `db` out of the window (they have been
    /// reported): the entries' other counts stay.
    fn take(&mut self, db: u32, kind: Kind) -> Vec<Entry> {
        let mut taken = Vec::new();
        for e in self.entries.iter_mut().filter(|e| e.db == db) {
            type Counts = Vec<(Key, u64)>;
            let (mine, rest): (Counts, Counts) =
                std::mem::take(&mut e.counts).into_iter().partition(|(k, _)| k.kind() == kind);
            e.counts = rest;
            if mine.is_empty() {
                continue;
            }
            let t = Entry {
                xid: e.xid,
                first_lsn: e.first_lsn,
                commit_lsn: e.commit_lsn,
                commit_us: e.commit_us,
                db: e.db,
                counts: mine,
                dropped: if kind == Kind::CumulativeDrop {
                    std::mem::take(&mut e.dropped)
                } else {
                    Vec::new()
                },
            };
            Self::subtract(&mut self.sums, &t);
            taken.push(t);
        }
        self.entries.retain(|e| !e.counts.is_empty());
        taken
    }
}

/// The state across records: one entry per transaction in progress, the relation files known
/// to hold data, what the catalog said about files, and the window of recent deletes.
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
    /// What the catalog said about relation files, merged over every snapshot (a file keeps
    /// the table it belonged to after it is dropped).
    rels: HashMap<RelFileNode, RelMeta>,
    /// Files first written since [`Detector::take_new_files`] was last called.
    new_files: Vec<RelFileNode>,
    /// `pg_database` rows (block, offset) updated in place, with the record's LSN.
    db_row_marked: HashMap<(u32, u16), Lsn>,
    window: Window,
    attribute_changes: Vec<AttributeChange>,
    /// Files first written in the WAL followed: the transaction that wrote them first, and
    /// the pages it wrote.
    born: HashMap<RelFileNode, (u32, u64)>,
    /// Files holding data each transaction dropped at commit.
    dropped_by: HashMap<u32, Vec<(RelFileNode, u64)>>,
    /// Tables (by main file) whose tenant column is read out of logged rows.
    tenant_columns: HashMap<RelFileNode, TenantColumn>,
    tenant_rows: HashMap<RelFileNode, TenantRows>,
    /// Deletes and updates of tenant tables whose record did not carry the tenant (wal_level
    /// or replica identity do not allow it), since the last [`Detector::take_tenant_unread`].
    tenant_unread: HashMap<RelFileNode, u64>,
    /// Row versions made by updates (a hash of file, block, line pointer: 8 bytes each) in
    /// this and the previous window: an update starting from one is the same row updated
    /// again, not a new row. A hash collision makes one row count as a repeat (an undercount
    /// of one row, at odds of about n²/2⁶⁴).
    update_tids: [std::collections::HashSet<u64>; 2],
    update_tids_since_us: i64,
    /// See [`Detector::take_queued`].
    queued: Vec<Destruction>,
    /// Drops returned `unresolved`, not yet given back to [`Detector::resolve`]: a cumulative
    /// drop of their database that one of them committed before waits for its judgement.
    judging: Vec<Judging>,
    /// The vault's clock (µs since the Unix epoch), set by the caller before each stretch:
    /// no commit time is trusted beyond it (see [`Detector::set_clock`]).
    clock_us: Option<i64>,
    /// The newest commit time trusted so far, in WAL order: commit times never go back.
    newest_commit_us: Option<i64>,
    /// See [`Detector::take_clock_lies`].
    clock_lies: Vec<ClockLie>,
    /// Commits whose time was within the tolerance since the last lie.
    honest_commits: u64,
}

/// A drop waiting for the caller's catalog ([`Destruction::unresolved`]).
#[derive(Debug, Clone, Copy)]
struct Judging {
    xid: u32,
    commit_lsn: Lsn,
    commit_us: i64,
    db: u32,
}

/// At most this many drops waiting for their judgement are remembered (the caller resolves
/// each within seconds); beyond it the oldest is forgotten, and the cumulative drop no longer
/// waits for it.
const JUDGING_LIMIT: usize = 1024;

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

fn most_first(m: HashMap<RelFileNode, u64>) -> Vec<(RelFileNode, u64)> {
    let mut v: Vec<(RelFileNode, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.rel.cmp(&b.0.rel)));
    v
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Detector {
        Detector { thresholds, ..Default::default() }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The estimated rows of tables (by main file), for the share thresholds; replaces what
    /// was set before.
    pub fn set_table_rows(&mut self, rows: impl IntoIterator<Item = (RelFileNode, u64)>) {
        self.rows = rows.into_iter().collect();
    }

    /// What the catalog says relation files are; merged into what was set before (a file
    /// dropped since still belongs to its table).
    pub fn set_relations(&mut self, rels: impl IntoIterator<Item = (RelFileNode, RelMeta)>) {
        self.rels.extend(rels);
    }

    /// Tables that have the tenant column: where it is in their rows. Replaces what was set.
    pub fn set_tenant_columns(&mut self, cols: impl IntoIterator<Item = (RelFileNode, TenantColumn)>) {
        self.tenant_columns = cols.into_iter().collect();
    }

    /// The tenants' estimated rows per table (by main file). Replaces what was set.
    pub fn set_tenant_rows(&mut self, rows: impl IntoIterator<Item = (RelFileNode, TenantRows)>) {
        self.tenant_rows = rows.into_iter().collect();
    }

    /// Tenant tables whose deletes or updates did not carry the tenant since the last call,
    /// with how many: blind to the tenant rules there.
    pub fn take_tenant_unread(&mut self) -> HashMap<RelFileNode, u64> {
        std::mem::take(&mut self.tenant_unread)
    }

    /// What the catalog said about a file.
    pub fn relation(&self, rel: &RelFileNode) -> Option<RelMeta> {
        self.rels.get(rel).copied()
    }

    /// Whether the file is known to hold data.
    pub fn holds_data(&self, rel: &RelFileNode) -> bool {
        self.nonempty.contains_key(rel)
    }

    /// Relation files first written (seen in the WAL, not seeded) since the last call: the
    /// caller refreshes its catalog when one is new to it too.
    pub fn take_new_files(&mut self) -> Vec<RelFileNode> {
        std::mem::take(&mut self.new_files)
    }

    /// Committed transactions that updated `pg_attribute` since the last call.
    pub fn take_attribute_changes(&mut self) -> Vec<AttributeChange> {
        std::mem::take(&mut self.attribute_changes)
    }

    /// The vault's clock now (µs since the Unix epoch). Commit times come from the primary's
    /// clock, which root on the database host sets: one commit dated a year ahead would end
    /// every window there (later deletes counted nowhere), a clock set back would spread a
    /// drip over days. So the time the windows go by is the commit's, kept within the vault's
    /// clock and never before the newest one trusted earlier in the WAL; a commit outside the
    /// tolerance is a [`ClockLie`]. Without a clock (tests) only the WAL order bounds it.
    pub fn set_clock(&mut self, now_us: i64) {
        self.clock_us = Some(now_us);
    }

    /// Commits whose time lied (see [`Detector::set_clock`]) since the last call, and whether
    /// a commit within the tolerance has been seen since the last of them (the clock is
    /// honest again: a later lie is a new episode).
    pub fn take_clock_lies(&mut self) -> (Vec<ClockLie>, bool) {
        (std::mem::take(&mut self.clock_lies), self.honest_commits > 0)
    }

    /// The time a commit counts at: its own, but never ahead of the vault's clock nor before
    /// the newest commit time trusted before it; a commit off by more than
    /// [`CLOCK_TOLERANCE_US`] is remembered as a lie.
    fn trusted_time(&mut self, lsn: Lsn, xid: u32, claimed_us: i64) -> i64 {
        let mut at = claimed_us;
        let mut lie = None;
        if let Some(now) = self.clock_us
            && claimed_us > now.saturating_add(CLOCK_TOLERANCE_US)
        {
            lie = Some(ClockLie { xid, lsn, claimed_us, reference_us: now, ahead: true });
            at = now;
        }
        if let Some(newest) = self.newest_commit_us {
            if lie.is_none() && claimed_us < newest.saturating_sub(CLOCK_TOLERANCE_US) {
                lie = Some(ClockLie { xid, lsn, claimed_us, reference_us: newest, ahead: false });
            }
            at = at.max(newest);
        }
        self.newest_commit_us = Some(at);
        match lie {
            Some(l) => {
                self.honest_commits = 0;
                if self.clock_lies.len() < 1024 {
                    self.clock_lies.push(l);
                }
            }
            None => self.honest_commits += 1,
        }
        at
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

    /// One record: the blocks it writes, then its kind. What callers use. A record whose body
    /// or kind cannot be decoded is an error: the caller must not pass over it silently (what
    /// it did is unknown), though the records after it can still be read.
    pub fn record(
        &mut self,
        rec: &pgfmt::wal::WalRecord,
    ) -> Result<Option<Destruction>, pgfmt::wal::WalError> {
        let body = rec.body()?;
        let kind = rec.kind()?;
        self.database_row(rec, &body, &kind);
        self.open_xact(rec.lsn, rec.header.xid);
        self.note_written(rec.header.xid, body.blocks.iter().map(|b| (b.rel, b.block)));
        let xid = rec.header.xid;
        if xid != 0
            && matches!(kind, RecordKind::HeapDelete { .. } | RecordKind::HeapUpdate { .. })
            && let Some(change) = rec.heap_change(&body)
        {
            self.heap_change(xid, &change, matches!(kind, RecordKind::HeapUpdate { .. }));
        }
        Ok(self.feed(rec.lsn, xid, &kind))
    }

    /// A heap delete or update: whether an update changed a row the window has not seen
    /// updated, and the tenant whose row it was.
    fn heap_change(&mut self, xid: u32, c: &pgfmt::wal::HeapChange<'_>, update: bool) {
        // The old row's tenant (REPLICA IDENTITY FULL, or a key holding the column); for an
        // update without it, the new row's (the same unless the update moved the row to
        // another tenant).
        let tenant = self.tenant_columns.get(&c.rel).map(|col| {
            let read = |t: &Option<pgfmt::tuple::LoggedTuple<'_>>| {
                t.as_ref()
                    .and_then(|t| pgfmt::tuple::attribute(t, &col.layout, col.attnum).ok().flatten())
                    .map(|v| pgfmt::tuple::render(v, col.type_oid))
            };
            read(&c.old).or_else(|| if update { read(&c.new) } else { None })
        });
        let new_tid = if update { c.new_tid } else { None };
        self.heap_row(xid, c.rel, update.then_some(c.old_tid), new_tid, tenant);
    }

    /// One row deleted (`old_tid` `None`) or updated by `xid`: an update whose old row version
    /// was made by an update in the window is the same row again (not counted as another row);
    /// `tenant`: `None` for a table without the tenant column, `Some(None)` when the record did
    /// not carry the tenant.
    fn heap_row(
        &mut self,
        xid: u32,
        rel: RelFileNode,
        old_tid: Option<(u32, u16)>,
        new_tid: Option<(u32, u16)>,
        tenant: Option<Option<String>>,
    ) {
        let update = old_tid.is_some();
        let key = |(b, o): (u32, u16)| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (rel, b, o).hash(&mut h);
            h.finish()
        };
        let repeat = old_tid.is_some_and(|t| self.update_tids.iter().any(|s| s.contains(&key(t))));
        if let Some(t) = new_tid {
            if self.update_tids[0].len() >= 1 << 22 {
                // Bounded (~80 MB at most for both generations): forgetting makes later updates
                // of those rows count as new rows (more findings, never fewer).
                self.update_tids.swap(0, 1);
                self.update_tids[0].clear();
            }
            self.update_tids[0].insert(key(t));
        }
        if update
            && !repeat
            && let Some(open) = self.open.get_mut(&xid)
        {
            *open.updated_rows.entry(rel).or_default() += 1;
        }
        let Some(tenant) = tenant else { return };
        let Some(tenant) = tenant else {
            *self.tenant_unread.entry(rel).or_default() += 1;
            return;
        };
        // A tenant's row updated again counts once (like a table's, see `updated_rows`).
        if let Some(open) = self.open.get_mut(&xid).filter(|_| !repeat) {
            let m = if update { &mut open.tenant_updated } else { &mut open.tenant_deleted };
            // Bounded per transaction: a transaction touching more tenants than this is over
            // the table thresholds long before.
            if m.len() < 100_000 || m.contains_key(&(rel, tenant.clone())) {
                *m.entry((rel, tenant)).or_default() += 1;
            }
        }
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

    /// Whether a file belongs to a user table (not a system catalog): by its table's OID when
    /// the catalog said, else by the file number (`FirstNormalObjectId`).
    fn is_user_file(&self, f: &RelFileNode) -> bool {
        const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
        self.rels.get(f).map_or(f.rel, |m| m.table_oid) >= FIRST_NORMAL_OBJECT_ID
    }

    /// Transactions in progress (bounded by the server's concurrency).
    pub fn in_progress(&self) -> usize {
        self.open.len()
    }

    /// The table a file belongs to: as the catalog said (`None` for an index: indexes are
    /// rebuilt from their table, an index metapage is not data), or, for a file the catalog
    /// never saw (it lived between two snapshots), the table whose files the transaction that
    /// first wrote it dropped (a rewrite's new file, rewritten again before the catalog looked).
    fn table_of(&self, f: &RelFileNode, depth: u32) -> Option<u32> {
        match self.rels.get(f) {
            Some(m) if m.relkind == 'i' => None,
            Some(m) => Some(m.table_oid),
            None if depth > 0 => {
                let (y, _) = self.born.get(f)?;
                self.dropped_by.get(y)?.iter().find_map(|(g, _)| self.table_of(g, depth - 1))
            }
            None => None,
        }
    }

    /// Whether transaction `xid` rewrote table `table` (whose files holding `pages` pages it
    /// dropped): a file the catalog says is that table's (not an index) was first written by
    /// `xid` — or by a later rewrite that dropped a file `xid` first wrote — with at least 5 %
    /// of those pages. Told by the table the new file belongs to, never by volume alone: a
    /// copy written into another table is not a rewrite.
    /// `any_kind`: the dropped file's kind is unknown (it lived between two catalog
    /// snapshots), so the table's index files count too (REINDEX of a rewrite's new index).
    fn rewrote(&self, xid: u32, table: u32, pages: u64, any_kind: bool) -> bool {
        let mut frontier: Vec<RelFileNode> = self
            .rels
            .iter()
            .filter(|(_, m)| m.table_oid == table && (any_kind || m.relkind != 'i'))
            .map(|(f, _)| *f)
            .collect();
        let mut seen: std::collections::HashSet<RelFileNode> = frontier.iter().copied().collect();
        while let Some(f) = frontier.pop() {
            let Some(&(y, written)) = self.born.get(&f) else { continue };
            if y == xid {
                if written.saturating_mul(20) >= pages {
                    return true;
                }
                continue;
            }
            for (g, _) in self.dropped_by.get(&y).into_iter().flatten() {
                if self.rels.get(g).is_none_or(|m| m.relkind != 'i') && seen.insert(*g) {
                    frontier.push(*g);
                }
            }
        }
        false
    }

    /// Judges the files a transaction dropped at commit that held data: a file is destroyed
    /// unless it is an index, or its table was rewritten by the transaction (see
    /// [`Detector::rewrote`]).
    fn judge_drops(&self, xid: u32, dropped: &[(RelFileNode, u64)]) -> Vec<(RelFileNode, u64)> {
        let mut destroyed = Vec::new();
        for &(f, pages) in dropped {
            let meta = self.rels.get(&f);
            if meta.is_some_and(|m| m.relkind == 'i') {
                continue;
            }
            match self.table_of(&f, 8) {
                Some(t) if self.rewrote(xid, t, pages, meta.is_none()) => {}
                _ => destroyed.push((f, pages)),
            }
        }
        destroyed
    }

    /// Judges a finding returned with `unresolved` set, once the caller has given the catalog
    /// as it is after the transaction ([`Detector::set_relations`]) and fed the WAL up to
    /// the point the catalog was read at. `None`: it was a rewrite and nothing else. A drop
    /// judged destruction joins the window of drops in its commit's place (see
    /// [`Detector::take_queued`]).
    ///
    /// Every unresolved finding must be given back here, judged or not (with what is known
    /// when the catalog cannot be read): a cumulative drop of its database whose first drop
    /// committed after it is held until then, so that its restore target is before the
    /// earliest drop it counts, whatever order drops are judged in.
    pub fn resolve(&mut self, mut d: Destruction) -> Option<Destruction> {
        if !d.unresolved {
            return Some(d);
        }
        self.judging.retain(|j| (j.xid, j.commit_lsn) != (d.xid, d.lsn));
        let destroyed = self.judge_drops(d.xid, &d.dropped);
        d.unresolved = false;
        let db = d.database.or(d.dropped.first().map(|(f, _)| f.db)).filter(|db| *db != 0);
        if let (Some(db), Some(at)) = (db, d.commit_time_us)
            && !destroyed.is_empty()
        {
            self.window_drops(d.xid, d.first_lsn, at, db, &destroyed, d.lsn);
        }
        // A cumulative drop held for this judgement is due now, whether or not the drop joined
        // it (a rewrite, or committed before the window).
        if let Some(db) = db {
            let window_us = self.window_us();
            let found = self.window_report(db, drop_keys(db), window_us, true);
            self.queued.extend(found);
        }
        if destroyed.is_empty() {
            d.kind = d.otherwise?;
            d.dropped.clear();
        } else {
            d.dropped = destroyed;
        }
        Some(d)
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
                let mut d = Destruction::new(
                    Kind::DatabaseDropped,
                    xid,
                    first_lsn,
                    lsn,
                    RestoreTarget::BeforeLsn(first_lsn),
                );
                d.database = Some(*db_id);
                Some(d)
            }
            RecordKind::XactAbort(x) => {
                self.open.remove(&xid);
                for sub in &x.subxacts {
                    self.open.remove(sub);
                }
                None
            }
            RecordKind::XactCommit(x) => self.commit(lsn, xid, x),
            _ => None,
        }
    }

    fn commit(&mut self, lsn: Lsn, xid: u32, x: &pgfmt::wal::XactEnd) -> Option<Destruction> {
        let mut open = self.open.remove(&xid).unwrap_or(Open { first_lsn: lsn, ..Default::default() });
        // Work done in subtransactions (savepoints, PL/pgSQL exception blocks) counts for the
        // transaction that commits it.
        for sub in &x.subxacts {
            if let Some(o) = self.open.remove(sub) {
                open.first_lsn = open.first_lsn.min(o.first_lsn);
                for (rel, n) in o.deleted {
                    *open.deleted.entry(rel).or_default() += n;
                }
                for (rel, n) in o.updated {
                    *open.updated.entry(rel).or_default() += n;
                }
                for (rel, n) in o.updated_rows {
                    *open.updated_rows.entry(rel).or_default() += n;
                }
                for (k, n) in o.tenant_deleted {
                    *open.tenant_deleted.entry(k).or_default() += n;
                }
                for (k, n) in o.tenant_updated {
                    *open.tenant_updated.entry(k).or_default() += n;
                }
                for (rel, n) in o.new_pages {
                    let p = open.new_pages.entry(rel).or_default();
                    *p = (*p).max(n);
                }
            }
        }
        // The primary's clock is the attacker's: the time windows go by is kept honest first.
        let commit_us = self.trusted_time(lsn, xid, x.unix_micros());
        let db = x.db.map(|(db, _)| db).or_else(|| open.updated.keys().map(|f| f.db).find(|d| *d != 0));
        // pg_attribute rows updated: possibly DROP COLUMN; the caller asks the catalog.
        if let Some(db) = db
            && open.updated.keys().any(|f| {
                self.rels
                    .get(f)
                    .map_or(f.rel == PG_ATTRIBUTE_OID && f.db == db, |m| m.table_oid == PG_ATTRIBUTE_OID)
            })
            && self.attribute_changes.len() < 4096
        {
            self.attribute_changes.push(AttributeChange {
                xid,
                first_lsn: open.first_lsn,
                lsn,
                db,
                commit_time_us: commit_us,
            });
        }
        let mut dropped: Vec<(RelFileNode, u64)> = Vec::new();
        for r in &x.dropped_rels {
            if let Some(pages) = self.nonempty.remove(r) {
                dropped.push((*r, pages));
            }
        }
        let mut new_files: Vec<RelFileNode> = open.new_pages.keys().copied().collect();
        new_files.sort_by_key(|r| r.rel);
        // Which transaction first wrote which file, and what it dropped: the lineage that
        // ties a rewrite's new file to its table (bounded: old lineage is of no more use).
        if self.born.len() > 1 << 16 || self.dropped_by.len() > 1 << 16 {
            self.born.clear();
            self.dropped_by.clear();
        }
        for (f, pages) in &open.new_pages {
            self.born.entry(*f).or_insert((xid, *pages));
        }
        if !dropped.is_empty() {
            self.dropped_by.insert(xid, dropped.clone());
        }
        // Data files dropped while new files were written: a rewrite or not is decided once
        // the catalog shows where the new files went (the caller resolves it). Without new
        // files (DROP TABLE, TRUNCATE of a table without indexes) it is decided now.
        // Only a new file with at least 5 % of a dropped data file's pages can make that file
        // a rewrite (TRUNCATE's new index metapages cannot): otherwise decided now, at once.
        let unresolved = dropped.iter().any(|(f, pages)| {
            self.rels.get(f).is_none_or(|m| m.relkind != 'i')
                && open.new_pages.values().any(|w| w.saturating_mul(20) >= *pages)
        });
        let destroyed = if unresolved { Vec::new() } else { self.judge_drops(xid, &dropped) };
        if unresolved && let Some(db) = db.or(dropped.first().map(|(f, _)| f.db)).filter(|d| *d != 0) {
            if self.judging.len() >= JUDGING_LIMIT {
                self.judging.remove(0);
            }
            self.judging.push(Judging { xid, commit_lsn: lsn, commit_us, db });
        }
        if !dropped.is_empty() {
            tracing::debug!(
                xid,
                ?dropped,
                ?new_files,
                unresolved,
                destroyed = destroyed.len(),
                "files dropped at commit"
            );
        }
        let t = self.thresholds;
        let mass = if t.crossed(&open.deleted, t.mass_delete_rows, &self.rows)
            || self.tenant_crossed(&open.tenant_deleted, t.mass_change_share)
        {
            Some(Kind::MassDelete)
        } else if t.crossed(&open.updated, t.mass_update_rows, &self.rows)
            || self.tenant_crossed(&open.tenant_updated, t.mass_change_share)
        {
            Some(Kind::MassUpdate)
        } else {
            None
        };
        let db_of_files = open.deleted.keys().chain(open.updated.keys()).map(|f| f.db).find(|d| *d != 0);
        if !unresolved && !destroyed.is_empty() {
            // Decided now: the drop joins the window of drops (a later cumulative finding).
            if let Some(db) = db.or(destroyed.first().map(|(f, _)| f.db)).filter(|d| *d != 0) {
                self.window_drops(xid, open.first_lsn, commit_us, db, &destroyed, lsn);
            }
        }
        let kind = if unresolved || !destroyed.is_empty() {
            Kind::RelationsDropped
        } else if let Some(k) = mass {
            k
        } else {
            // Not destructive on its own: its deletes and updates join the window.
            // Rows of the system catalogs are DDL's bookkeeping (temporary tables come and go
            // by the thousand), not the user's data.
            let mut counts: Vec<(Key, u64)> = Vec::new();
            let (mut del, mut upd) = (0, 0);
            for (f, n) in open.deleted.into_iter().filter(|(f, _)| self.is_user_file(f)) {
                del += n;
                counts.push((Key::TableDeleted(f), n));
            }
            for (f, n) in open.updated_rows.into_iter().filter(|(f, _)| self.is_user_file(f)) {
                upd += n;
                counts.push((Key::TableUpdated(f), n));
            }
            counts.extend(open.tenant_deleted.into_iter().map(|((f, t), n)| (Key::TenantDeleted(f, t), n)));
            counts.extend(open.tenant_updated.into_iter().map(|((f, t), n)| (Key::TenantUpdated(f, t), n)));
            // A commit names its database only when it logs invalidations; the files it
            // changed do always (a transaction writes in one database).
            let db = db_of_files.or(db).filter(|d| *d != 0)?;
            if del > 0 {
                counts.push((Key::DbDeleted(db), del));
            }
            if upd > 0 {
                counts.push((Key::DbUpdated(db), upd));
            }
            if counts.is_empty() {
                return None;
            }
            let e = Entry {
                xid,
                first_lsn: open.first_lsn,
                commit_lsn: lsn,
                commit_us,
                db,
                counts,
                dropped: Vec::new(),
            };
            let mut found = self.window_commit(e);
            let first = found.pop();
            self.queued.extend(found);
            return first;
        };
        let mut d = Destruction::new(kind, xid, open.first_lsn, lsn, RestoreTarget::BeforeXid(xid));
        d.commit_time_us = Some(commit_us);
        d.database = db;
        // While unresolved, keep every dropped file with data: the judgement is made again.
        d.dropped = if unresolved { dropped } else { destroyed };
        d.deleted = most_first(open.deleted);
        d.updated = most_first(open.updated);
        d.tenants = self.tenant_counts(open.tenant_deleted, open.tenant_updated);
        d.new_files = new_files;
        d.unresolved = unresolved;
        d.otherwise = mass;
        Some(d)
    }

    /// Whether one tenant's rows changed in a table are at least `share` of the tenant's rows
    /// there (for tenants of at least `tenant_min_rows`).
    fn tenant_crossed(&self, m: &HashMap<(RelFileNode, String), u64>, share: f64) -> bool {
        m.iter().any(|((f, tenant), n)| self.tenant_share_crossed(f, tenant, *n, share))
    }

    fn tenant_share_crossed(&self, f: &RelFileNode, tenant: &str, n: u64, share: f64) -> bool {
        let rows = self.tenant_rows.get(f).and_then(|r| r.of(tenant));
        Thresholds::share_over(n, rows, share, self.thresholds.tenant_min_rows)
    }

    fn tenant_counts(
        &self,
        deleted: HashMap<(RelFileNode, String), u64>,
        updated: HashMap<(RelFileNode, String), u64>,
    ) -> Vec<TenantCount> {
        let mut by: HashMap<(RelFileNode, String), (u64, u64)> = HashMap::new();
        for (k, n) in deleted {
            by.entry(k).or_default().0 += n;
        }
        for (k, n) in updated {
            by.entry(k).or_default().1 += n;
        }
        let mut v: Vec<TenantCount> = by
            .into_iter()
            .map(|((rel, tenant), (deleted, updated))| {
                let rows = self.tenant_rows.get(&rel).and_then(|r| r.of(&tenant));
                TenantCount { rel, tenant, deleted, updated, rows }
            })
            .collect();
        v.sort_by(|a, b| (b.deleted + b.updated).cmp(&(a.deleted + a.updated)).then(a.tenant.cmp(&b.tenant)));
        v.truncate(20);
        v
    }

    /// Findings made by the window alongside the one a record returned (rare: two windows
    /// crossing at one commit, a drop crossing the drop window); the caller drains them after
    /// each record.
    pub fn take_queued(&mut self) -> Vec<Destruction> {
        std::mem::take(&mut self.queued)
    }

    /// A transaction's drops of tables' data (each already a finding) join the drop window.
    fn window_drops(
        &mut self,
        xid: u32,
        first_lsn: Lsn,
        commit_us: i64,
        db: u32,
        destroyed: &[(RelFileNode, u64)],
        lsn: Lsn,
    ) {
        let bytes: u64 = destroyed.iter().map(|(_, p)| p.saturating_mul(8192)).sum();
        let tables: std::collections::HashSet<u32> =
            destroyed.iter().map(|(f, _)| self.rels.get(f).map_or(f.rel, |m| m.table_oid)).collect();
        let counts = vec![(Key::DbDroppedBytes(db), bytes), (Key::DbDroppedTables(db), tables.len() as u64)];
        let e = Entry { xid, first_lsn, commit_lsn: lsn, commit_us, db, counts, dropped: destroyed.to_vec() };
        let found = self.window_commit(e);
        self.queued.extend(found);
    }

    /// Whether a window sum is over its threshold.
    fn window_crossed(&self, k: &Key, n: u64) -> bool {
        let t = &self.thresholds;
        match k {
            Key::TableDeleted(f) => {
                n > t.window_table_delete_rows
                    || t.share_crossed(n, self.rows.get(f).copied(), t.window_delete_share)
            }
            Key::TableUpdated(f) => {
                n > t.window_table_update_rows
                    || t.share_crossed(n, self.rows.get(f).copied(), t.window_update_share)
            }
            Key::TenantDeleted(f, tenant) => self.tenant_share_crossed(f, tenant, n, t.window_delete_share),
            Key::TenantUpdated(f, tenant) => self.tenant_share_crossed(f, tenant, n, t.window_update_share),
            Key::DbDeleted(_) => n > t.window_database_delete_rows,
            Key::DbUpdated(_) => n > t.window_database_update_rows,
            Key::DbDroppedBytes(_) => n > t.window_dropped_bytes,
            Key::DbDroppedTables(_) => n > t.window_dropped_tables,
        }
    }

    /// Adds a committed transaction's counts to the window (in its commit's place) and reports
    /// what crossed (see [`Detector::window_report`]).
    fn window_us(&self) -> i64 {
        self.thresholds.window_seconds as i64 * 1_000_000
    }

    fn window_commit(&mut self, mut e: Entry) -> Vec<Destruction> {
        let window_us = self.window_us();
        let (db, now_us) = (e.db, e.commit_us);
        if now_us.saturating_sub(self.update_tids_since_us) > window_us {
            self.update_tids.swap(0, 1);
            self.update_tids[0].clear();
            self.update_tids_since_us = now_us;
        }
        // The window ends at the newest commit seen: a drop judged late that committed before
        // the window's start is not counted with what followed it by more than a window.
        let newest = self.window.newest_us.max(now_us);
        self.window.newest_us = newest;
        if now_us < newest.saturating_sub(window_us) {
            return Vec::new();
        }
        // Counts of a kind already reported in this database belong to its episode.
        let reported = &mut self.window.reported;
        reported.retain(|(d, _), last| *d != db || newest.saturating_sub(*last) <= window_us);
        e.counts.retain(|(k, _)| match reported.get_mut(&(db, k.kind())) {
            Some(last) => {
                *last = (*last).max(now_us);
                false
            }
            None => true,
        });
        if e.counts.is_empty() {
            return Vec::new();
        }
        // A cumulative drop still held for a judgement while the window moves past its first
        // drop (a judgement slower than a whole window: a detector far behind): reported now,
        // before the earliest drop known, rather than expired unreported.
        let cutoff = newest.saturating_sub(window_us);
        let mut out = Vec::new();
        let mut held: Vec<u32> = Vec::new();
        for e in self.window.entries.iter().take_while(|e| e.commit_us < cutoff) {
            if e.counts.iter().any(|(k, _)| k.kind() == Kind::CumulativeDrop) && !held.contains(&e.db) {
                held.push(e.db);
            }
        }
        for held in held {
            out.extend(self.window_report(held, drop_keys(held), window_us, false));
        }
        self.window.expire(cutoff);
        let touched: Vec<Key> = e.counts.iter().map(|(k, _)| k.clone()).collect();
        self.window.add(e);
        out.extend(self.window_report(db, touched, window_us, true));
        out
    }

    /// Reports each kind (deletes, updates, drops) of database `db` whose sums, among the
    /// `touched` keys, cross a threshold: once, with the restore target before the first
    /// transaction (by commit) of the window that touched what crossed, after which that
    /// database's window of that kind starts afresh. A cumulative drop is held while a drop
    /// of the database that committed before its first is still waiting for its judgement
    /// (see [`Detector::resolve`]): reported now, its target would be after that drop
    /// (`hold` false: not held).
    fn window_report(&mut self, db: u32, touched: Vec<Key>, window_us: i64, hold: bool) -> Vec<Destruction> {
        let mut crossed: Vec<Key> = Vec::new();
        for k in touched {
            let n = self.window.sums.get(&k).copied().unwrap_or(0);
            if self.window_crossed(&k, n) && !crossed.iter().any(|c| c.kind() == k.kind()) {
                crossed.push(k);
            }
        }
        let mut out = Vec::new();
        for key in crossed {
            let kind = key.kind();
            let mut mine = self
                .window
                .entries
                .iter()
                .filter(|e| e.db == db && e.counts.iter().any(|(k, _)| k.kind() == kind));
            let Some(earliest) = mine.next().map(|e| e.commit_lsn) else { continue };
            // One transaction's drops are its own finding already (DROP SCHEMA … CASCADE of
            // fifty tables): a cumulative drop takes at least two.
            if kind == Kind::CumulativeDrop && mine.next().is_none() {
                continue;
            }
            let from_us = self.window.newest_us.saturating_sub(window_us);
            if kind == Kind::CumulativeDrop
                && hold
                && let Some(j) = self
                    .judging
                    .iter()
                    .find(|j| j.db == db && j.commit_lsn < earliest && j.commit_us >= from_us)
            {
                tracing::debug!(db, waiting_xid = j.xid, waiting_lsn = %j.commit_lsn, %earliest, "cumulative drop held for an earlier drop's judgement");
                continue;
            }
            let entries = self.window.take(db, kind);
            let db_level = matches!(
                key,
                Key::DbDeleted(_) | Key::DbUpdated(_) | Key::DbDroppedBytes(_) | Key::DbDroppedTables(_)
            );
            // The first transaction (by commit) that contributed to what crossed; and the one
            // that crossed, the last counted.
            let (Some(first), Some(last)) = (
                entries
                    .iter()
                    .find(|e| db_level || e.counts.iter().any(|(k, _)| *k == key))
                    .or(entries.first()),
                entries.last(),
            ) else {
                continue;
            };
            let (xid, lsn, now_us) = (last.xid, last.commit_lsn, last.commit_us);
            tracing::debug!(
                db,
                kind = kind.as_str(),
                contributors = ?entries.iter().map(|e| (e.xid, e.commit_lsn.to_string(), e.commit_us)).collect::<Vec<_>>(),
                "window finding: (xid, commit LSN, commit time) of each transaction counted"
            );
            self.window.reported.insert((db, kind), now_us);
            let mut deleted: HashMap<RelFileNode, u64> = HashMap::new();
            let mut updated: HashMap<RelFileNode, u64> = HashMap::new();
            let mut tenant_deleted: HashMap<(RelFileNode, String), u64> = HashMap::new();
            let mut tenant_updated: HashMap<(RelFileNode, String), u64> = HashMap::new();
            let mut dropped: Vec<(RelFileNode, u64)> = Vec::new();
            for e in &entries {
                for (k, n) in &e.counts {
                    match k {
                        Key::TableDeleted(f) => *deleted.entry(*f).or_default() += n,
                        Key::TableUpdated(f) => *updated.entry(*f).or_default() += n,
                        Key::TenantDeleted(f, t) => *tenant_deleted.entry((*f, t.clone())).or_default() += n,
                        Key::TenantUpdated(f, t) => *tenant_updated.entry((*f, t.clone())).or_default() += n,
                        _ => {}
                    }
                }
                dropped.extend(e.dropped.iter().copied());
            }
            let mut d =
                Destruction::new(kind, xid, first.first_lsn, lsn, RestoreTarget::BeforeXid(first.xid));
            d.commit_time_us = Some(now_us);
            d.database = Some(db);
            d.deleted = most_first(deleted);
            d.updated = most_first(updated);
            // The tenant that crossed first, then the others.
            let mut tenants = self.tenant_counts(tenant_deleted, tenant_updated);
            if let Key::TenantDeleted(f, t) | Key::TenantUpdated(f, t) = &key
                && let Some(i) = tenants.iter().position(|c| c.rel == *f && c.tenant == *t)
            {
                let c = tenants.remove(i);
                tenants.insert(0, c);
            }
            d.tenants = tenants;
            d.dropped = dropped;
            d.transactions = entries.len() as u64;
            d.window_start_us = Some(first.commit_us);
            out.push(d);
        }
        out
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

    /// A commit at `secs` seconds after the PostgreSQL epoch.
    fn commit_at(secs: i64) -> RecordKind {
        // Like a plain DML commit, it names no database (no invalidations to log).
        RecordKind::XactCommit(XactEnd { time: secs * 1_000_000, db: None, ..end(vec![], vec![]) })
    }

    #[test]
    fn a_primary_clock_set_ahead_or_back_neither_blinds_the_windows_nor_goes_unreported() {
        // Root on the database host owns the clock commit records are stamped with; the vault's
        // clock is real time (seconds since the PostgreSQL epoch, as `commit_at` takes them).
        let t = Thresholds { window_seconds: 60, window_table_delete_rows: 1000, ..Default::default() };
        let now: i64 = 900_000_000;
        let unix = |secs: i64| (secs + pgfmt::wal::POSTGRES_EPOCH_UNIX_SECS) * 1_000_000;
        let del = |r| RecordKind::HeapDelete { rel: Some(rel(r)), block: Some(0) };
        let mut lsn = 1000;
        // A transaction deleting `n` rows of `r`, stamped `at`, decoded at real time `real`.
        let mut xact = |d: &mut Detector, xid: u32, real: i64, at: i64, r: u32, n: u64| {
            d.set_clock(unix(real));
            for _ in 0..n {
                lsn += 1;
                d.feed(Lsn(lsn), xid, &del(r));
            }
            lsn += 1;
            d.feed(Lsn(lsn), xid, &commit_at(at))
        };
        let year = 365 * 86_400;
        // A drip of 200 × 10 rows from one table, one every 0.1 s of real time (2,000 rows in
        // 20 s, twice the window's 1,000): (what the clock does, its stamp at real time `now +
        // i / 10` for the i-th)
        type Stamp = Box<dyn Fn(i64, i64) -> i64>;
        let cases: Vec<(&str, Option<i64>, Stamp)> = vec![
            // One commit dated a year ahead ended every window there: the drip after it, on the
            // right time, was counted nowhere.
            ("one commit a year ahead, then the drip", Some(now + year), Box::new(|_, real| real)),
            // Set back two minutes (two windows) before each delete: every commit fell before
            // the window's start and was skipped.
            ("set back before each delete", None, Box::new(|i, real| real - 120 * i)),
            // Set forward two minutes before each delete: one delete per window.
            ("set forward before each delete", None, Box::new(|i, real| real + 120 * i)),
        ];
        for (what, planted, stamp) in cases {
            let mut d = Detector::new(t);
            if let Some(at) = planted {
                assert_eq!(xact(&mut d, 90, now - 1, at, 16399, 1), None, "{what}");
            }
            let found: Vec<Destruction> = (0..200u32)
                .filter_map(|i| {
                    let (i, real) = (i64::from(i), now + i64::from(i) / 10);
                    xact(&mut d, 100 + i as u32, real, stamp(i, real), 16384, 10)
                })
                .collect();
            assert_eq!(found.len(), 1, "{what}: the drip is one cumulative delete: {found:#?}");
            let f = &found[0];
            assert_eq!(
                (f.kind, f.restore_target),
                (Kind::CumulativeDelete, RestoreTarget::BeforeXid(100)),
                "{what}"
            );
            assert!(
                f.commit_time_us.is_some_and(|c| c <= unix(now + 20) + CLOCK_TOLERANCE_US),
                "{what}: no time past the vault's clock: {f:?}"
            );
            let (lies, honest) = d.take_clock_lies();
            let first = lies.first().copied();
            assert!(first.is_some(), "{what}: the clock's lie is reported");
            let first = first.unwrap();
            match planted {
                Some(at) => {
                    assert_eq!((first.xid, first.ahead, first.claimed_us), (90, true, unix(at)), "{what}");
                    assert_eq!(first.reference_us, unix(now - 1), "{what}");
                    assert_eq!(lies.len(), 1, "{what}: only the planted commit lied");
                    assert!(honest, "{what}: the drip's own stamps are honest");
                }
                None => {
                    assert_eq!((first.xid, first.ahead), (101, stamp(1, now) > now), "{what}: {first:?}");
                    assert_eq!(lies.len(), 199, "{what}: every commit after the first lied");
                    assert!(!honest, "{what}: no honest commit since");
                }
            }
        }
        // An honest primary: commits racing for the WAL a few milliseconds out of order, a
        // clock a second ahead of the vault's, a catch-up of WAL an hour old: no lie.
        let mut d = Detector::new(t);
        for (i, at) in
            [now - 3600, now - 3599, now - 3600, now - 10, now + 1, now, now + 1].into_iter().enumerate()
        {
            xact(&mut d, 500 + i as u32, now, at, 16390, 1);
        }
        assert_eq!(d.take_clock_lies(), (Vec::new(), true));
    }

    #[test]
    fn deletes_dripped_over_many_transactions_add_up_to_one_finding() {
        let t = Thresholds {
            mass_delete_rows: 100,
            window_seconds: 60,
            window_table_delete_rows: 1000,
            window_database_delete_rows: 1500,
            window_delete_share: 0.2,
            mass_change_min_rows: 100,
            ..Default::default()
        };
        let mut d = Detector::new(t);
        let del = |r| RecordKind::HeapDelete { rel: Some(rel(r)), block: Some(0) };
        let mut lsn = 1000;
        let mut xact = |d: &mut Detector, xid: u32, at: i64, rows: &[(u32, u64)]| {
            for (r, n) in rows {
                for _ in 0..*n {
                    lsn += 1;
                    d.feed(Lsn(lsn), xid, &del(*r));
                }
            }
            lsn += 1;
            d.feed(Lsn(lsn), xid, &commit_at(at))
        };
        // 200 transactions of 10 rows each, 0.1 s apart: the 101st crosses 1000 rows in the
        // table; one finding, restoring to before the first.
        let mut found = Vec::new();
        for i in 0..200u32 {
            if let Some(f) = xact(&mut d, 100 + i, 1000 + i64::from(i) / 10, &[(16384, 10)]) {
                found.push(f);
            }
        }
        assert_eq!(found.len(), 1, "one finding for the whole drip: {found:#?}");
        // After a quiet window, a new drip is a new episode.
        let again: Vec<_> = (0..101u32)
            .filter_map(|i| xact(&mut d, 600 + i, 2000 + i64::from(i) / 10, &[(16384, 10)]))
            .collect();
        assert_eq!(again.len(), 1);
        let f = &found[0];
        assert_eq!(
            (f.kind, f.xid, f.restore_target, f.transactions, f.deleted.clone()),
            (Kind::CumulativeDelete, 200, RestoreTarget::BeforeXid(100), 101, vec![(rel(16384), 1010)])
        );
        assert_eq!(f.first_lsn, Lsn(1001), "the first contributing transaction's first record");
        // The same rate spread so that no window holds 1000 rows: nothing.
        let mut d = Detector::new(t);
        for i in 0..200u32 {
            assert_eq!(xact(&mut d, 1000 + i, 5000 + i64::from(i) * 7, &[(16385, 10)]), None, "{i}");
        }
        // The database rule: two tables, neither over 1000, together over 1500.
        let mut d = Detector::new(t);
        let mut found = Vec::new();
        for i in 0..100u32 {
            found.extend(xact(&mut d, 3000 + i, 9000, &[(16386, 8), (16387, 8)]));
        }
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].restore_target, found[0].deleted.len()), (RestoreTarget::BeforeXid(3000), 2));
        // The share rule: 300 of a tenant's… of a 1000-row table is over 20 %, though far under
        // every row count; system catalogs (rows of DDL's bookkeeping) never count.
        let mut d = Detector::new(t);
        d.set_table_rows([(rel(16388), 1000)]);
        let mut found = Vec::new();
        for i in 0..30u32 {
            found.extend(xact(&mut d, 4000 + i, 9000, &[(16388, 10), (1249, 50)]));
        }
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].xid, found[0].restore_target), (4019, RestoreTarget::BeforeXid(4000)));
        assert_eq!(found[0].deleted, vec![(rel(16388), 200)]);
        // A transaction reported on its own does not count again in the window.
        let mut d = Detector::new(t);
        assert_eq!(xact(&mut d, 5000, 9000, &[(16389, 900)]).map(|f| f.kind), Some(Kind::MassDelete));
        assert_eq!(xact(&mut d, 5001, 9000, &[(16389, 90)]), None);
    }

    #[test]
    fn updates_add_up_per_row_and_tenant_and_drops_add_up_per_database() {
        let t = Thresholds {
            mass_update_rows: 100,
            mass_change_min_rows: 100,
            window_seconds: 60,
            window_table_update_rows: 1000,
            window_database_update_rows: 5000,
            window_update_share: 0.5,
            window_delete_share: 0.2,
            tenant_min_rows: 50,
            window_dropped_tables: 3,
            window_dropped_bytes: 1 << 30,
            ..Default::default()
        };
        let upd = RecordKind::HeapUpdate { rel: Some(rel(16384)), hot: true };
        let del = RecordKind::HeapDelete { rel: Some(rel(16385)), block: Some(0) };
        // A 1000-row table whose 10 hot rows are updated all day: never a finding (each row
        // once), though 5000 updates in a minute is five times the table.
        let mut d = Detector::new(t);
        d.set_table_rows([(rel(16384), 1000)]);
        let mut lsn = 10;
        let mut tids: HashMap<u16, (u32, u16)> = (0..10).map(|r| (r, (0, r))).collect();
        let mut next_off = 100u16;
        for x in 0..500u32 {
            for r in 0..10u16 {
                lsn += 1;
                d.feed(Lsn(lsn), 100 + x, &RecordKind::Other);
                let new = (1, next_off);
                next_off = next_off.wrapping_add(1);
                d.heap_row(100 + x, rel(16384), Some(tids[&r]), Some(new), None);
                tids.insert(r, new);
                d.feed(Lsn(lsn), 100 + x, &upd);
            }
            lsn += 1;
            assert_eq!(d.feed(Lsn(lsn), 100 + x, &commit_at(1000)), None, "{x}");
        }
        // 600 distinct rows, 20 per transaction: with the 10 hot rows (each counted once, by
        // its first update) the 25th crosses half the table; the restore target is before the
        // first transaction that contributed (the hot rows' first).
        let mut found = Vec::new();
        for x in 0..30u32 {
            for r in 0..20u32 {
                lsn += 1;
                d.feed(Lsn(lsn), 1000 + x, &RecordKind::Other);
                d.heap_row(1000 + x, rel(16384), Some((10 + x, r as u16)), Some((500 + x, r as u16)), None);
                d.feed(Lsn(lsn), 1000 + x, &upd);
            }
            lsn += 1;
            found.extend(d.feed(Lsn(lsn), 1000 + x, &commit_at(1001)));
        }
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(
            (found[0].kind, found[0].xid, found[0].restore_target),
            (Kind::CumulativeUpdate, 1024, RestoreTarget::BeforeXid(100))
        );
        // Tenants: a 10,000-row table, tenant "7" ~200 rows, the others ~1000. 10 of its rows deleted per
        // transaction: 0.2 × 200 = 40 rows cross at the 4th; other tenants' deletes do not.
        let mut d = Detector::new(t);
        d.set_table_rows([(rel(16385), 10_000)]);
        d.set_tenant_rows([(
            rel(16385),
            TenantRows { common: [("7".to_string(), 200)].into(), other: Some(1000) },
        )]);
        let mut found = Vec::new();
        for x in 0..6u32 {
            for (n, who) in [(10, "7"), (10, "8"), (1, "9")] {
                for _ in 0..n {
                    lsn += 1;
                    d.feed(Lsn(lsn), 2000 + x, &RecordKind::Other);
                    d.heap_row(2000 + x, rel(16385), None, None, Some(Some(who.to_string())));
                    d.feed(Lsn(lsn), 2000 + x, &del);
                }
            }
            lsn += 1;
            found.extend(d.feed(Lsn(lsn), 2000 + x, &commit_at(1002)));
        }
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(
            (f.kind, f.xid, f.restore_target),
            (Kind::CumulativeDelete, 2003, RestoreTarget::BeforeXid(2000))
        );
        assert_eq!(
            (f.tenants[0].tenant.as_str(), f.tenants[0].deleted, f.tenants[0].rows),
            ("7", 40, Some(200))
        );
        // One transaction deleting half of a tenant's rows: a mass delete naming it.
        for _ in 0..100 {
            lsn += 1;
            d.feed(Lsn(lsn), 3000, &RecordKind::Other);
            d.heap_row(3000, rel(16385), None, None, Some(Some("7".to_string())));
            d.feed(Lsn(lsn), 3000, &del);
        }
        lsn += 1;
        let f = d.feed(Lsn(lsn), 3000, &commit_at(1003)).unwrap();
        assert_eq!((f.kind, f.tenants[0].tenant.as_str()), (Kind::MassDelete, "7"));
        // Rows whose record did not carry the tenant are counted for the caller to raise.
        d.feed(Lsn(lsn + 1), 3001, &RecordKind::Other);
        d.heap_row(3001, rel(16385), None, None, Some(None));
        assert_eq!(d.take_tenant_unread().get(&rel(16385)), Some(&1));
        // One transaction dropping five tables: one finding, not also a cumulative drop.
        let mut d = Detector::new(t);
        d.seed((0..5).map(|i| (rel(21000 + i), 1)));
        let end5 =
            XactEnd { time: 1004 * 1_000_000, ..end((0..5).map(|i| rel(21000 + i)).collect(), vec![]) };
        assert_eq!(
            d.feed(Lsn(lsn), 3999, &RecordKind::XactCommit(end5)).map(|f| f.kind),
            Some(Kind::RelationsDropped)
        );
        assert!(d.take_queued().is_empty());
        // Drops: each a finding; the 4th table in the window also one cumulative drop,
        // restoring to before the first.
        let mut d = Detector::new(t);
        let mut found = Vec::new();
        for i in 0..5u32 {
            d.seed([(rel(20000 + i), 1)]);
            lsn += 1;
            d.feed(Lsn(lsn), 4000 + i, &RecordKind::Other);
            lsn += 1;
            let end = XactEnd { time: 1004 * 1_000_000, ..end(vec![rel(20000 + i)], vec![]) };
            found.extend(d.feed(Lsn(lsn), 4000 + i, &RecordKind::XactCommit(end)));
            found.extend(d.take_queued());
        }
        let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == Kind::RelationsDropped).count(), 5);
        let c: Vec<&Destruction> = found.iter().filter(|f| f.kind == Kind::CumulativeDrop).collect();
        assert_eq!(c.len(), 1, "{kinds:?}");
        assert_eq!((c[0].restore_target, c[0].dropped.len()), (RestoreTarget::BeforeXid(4000), 4));
    }

    /// A drop judged against the catalog (a new file written: TRUNCATE of a table with an
    /// index, or a rewrite?) is judged after later drops that were decided at their commit. The
    /// cumulative drop must still restore to before the earliest drop by commit — whatever
    /// order judgements arrive in — or restoring to it brings back only some of the tables.
    #[test]
    fn a_cumulative_drop_restores_before_its_earliest_drop_whatever_order_judgements_arrive_in() {
        let t = Thresholds { window_seconds: 60, window_dropped_tables: 10, ..Default::default() };
        let meta = |table_oid, relkind| RelMeta { table_oid, relkind };
        let at = |s: i64| s * 1_000_000;
        // xid `x` drops tables `tables` at commit `lsn`, `secs` in; `new`: also writes a new
        // file of 50 pages, `rel(x * 100)`, so that its drops wait for the catalog.
        let drop =
            |d: &mut Detector, x: u32, lsn: u64, secs: i64, tables: std::ops::Range<u32>, new: bool| {
                let files: Vec<RelFileNode> = tables.map(rel).collect();
                d.set_relations(files.iter().map(|f| (*f, meta(f.rel, 'r'))));
                d.seed(files.iter().map(|f| (*f, 100)));
                d.feed(Lsn(lsn - 1), x, &RecordKind::Other);
                if new {
                    d.note_written(x, (0..50).map(|b| (rel(x * 100), b)));
                }
                let end = XactEnd { time: at(secs), ..end(files, vec![]) };
                let mut found: Vec<Destruction> =
                    d.feed(Lsn(lsn), x, &RecordKind::XactCommit(end)).into_iter().collect();
                found.extend(d.take_queued());
                found
            };
        let cumulative = |found: &[Destruction]| -> Vec<(RestoreTarget, u64, usize)> {
            found
                .iter()
                .filter(|f| f.kind == Kind::CumulativeDrop)
                .map(|f| (f.restore_target, f.transactions, f.dropped.len()))
                .collect()
        };
        // (the first is a TRUNCATE rather than a rewrite, the third waits for the catalog too)
        for (truncate, third_waits) in [(true, false), (false, false), (true, true)] {
            // xid 10 TRUNCATEs a table (new index files: waits for the catalog); 11 drops a
            // table, 12 a schema of 10 tables: 12 tables over 10, in three transactions.
            let mut d = Detector::new(t);
            let first = drop(&mut d, 10, 100, 1000, 16000..16001, true);
            assert!(first[0].unresolved && first.len() == 1, "{first:#?}");
            let mut found = drop(&mut d, 11, 200, 1001, 16001..16002, false);
            let third = drop(&mut d, 12, 300, 1002, 16010..16020, third_waits);
            let mut waiting = vec![first.into_iter().next().unwrap()];
            if third_waits {
                waiting.extend(third);
            } else {
                found.extend(third);
            }
            // The catalog is read: the new file is another table's (TRUNCATE: destruction) or
            // the dropped table's own (a rewrite: not destruction). Judged in WAL order.
            d.set_relations([(rel(1000), meta(if truncate { 99_999 } else { 16000 }, 'r'))]);
            for w in waiting {
                let judged = d.resolve(w);
                found.extend(judged);
                found.extend(d.take_queued());
            }
            assert_eq!(found.iter().any(|f| f.xid == 10), truncate, "{found:#?}");
            let expected = if truncate {
                // All three transactions, all 12 tables: before the first.
                (RestoreTarget::BeforeXid(10), 3, 12)
            } else {
                (RestoreTarget::BeforeXid(11), 2, 11)
            };
            assert_eq!(cumulative(&found), vec![expected], "truncate: {truncate}: {found:#?}");
            // After it, more drops are the same episode: no second cumulative drop.
            let more = drop(&mut d, 13, 400, 1003, 16030..16032, false);
            assert_eq!(cumulative(&more), vec![], "{more:#?}");
        }
        // A drop waiting for the catalog that committed *after* the window's first drop cannot
        // move its target: the cumulative drop is not held for it.
        let mut d = Detector::new(t);
        let mut found = drop(&mut d, 20, 100, 1000, 17000..17001, false);
        let waiting = drop(&mut d, 21, 200, 1001, 17001..17002, true);
        found.extend(drop(&mut d, 22, 300, 1002, 17010..17020, false));
        assert_eq!(cumulative(&found), vec![(RestoreTarget::BeforeXid(20), 2, 11)], "{found:#?}");
        let late: Vec<Destruction> = waiting.into_iter().filter_map(|f| d.resolve(f)).collect();
        assert_eq!(late.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![Kind::RelationsDropped]);
        assert!(d.take_queued().is_empty(), "it joins the episode already raised");
        // A drop judged late that committed longer than the window before the newest drop is not
        // counted with them (the window is of commit time, not of judgement time).
        let mut d = Detector::new(t);
        let old = drop(&mut d, 30, 100, 1000, 18000..18001, true);
        let mut found = drop(&mut d, 31, 200, 1100, 18001..18002, false);
        found.extend(drop(&mut d, 32, 300, 1101, 18010..18019, false));
        found.extend(old.into_iter().filter_map(|f| d.resolve(f)));
        found.extend(d.take_queued());
        assert_eq!(cumulative(&found), vec![], "10 tables in the window, not 11: {found:#?}");
        // A judgement slower than a whole window (a detector far behind): the cumulative drop
        // held for it is not lost when the window moves on — reported with what is known.
        let mut d = Detector::new(t);
        let slow = drop(&mut d, 40, 100, 1000, 19000..19001, true);
        let mut found = drop(&mut d, 41, 200, 1001, 19001..19002, false);
        found.extend(drop(&mut d, 42, 300, 1002, 19010..19020, false));
        assert_eq!(cumulative(&found), vec![], "held for xid 40's judgement");
        let later = XactEnd { time: at(1100), ..end(vec![], vec![]) };
        d.feed(Lsn(399), 43, &RecordKind::HeapDelete { rel: Some(rel(19100)), block: Some(0) });
        found.extend(d.feed(Lsn(400), 43, &RecordKind::XactCommit(later)));
        found.extend(d.take_queued());
        assert_eq!(cumulative(&found), vec![(RestoreTarget::BeforeXid(41), 2, 11)], "{found:#?}");
        found.extend(slow.into_iter().filter_map(|f| d.resolve(f)));
        found.extend(d.take_queued());
        assert_eq!(cumulative(&found).len(), 1, "{found:#?}");
    }

    #[test]
    fn pg_attribute_updates_are_handed_to_the_caller() {
        let mut d = Detector::default();
        let upd = |r| RecordKind::HeapUpdate { rel: Some(rel(r)), hot: false };
        d.feed(Lsn(10), 7, &upd(1249));
        d.feed(Lsn(11), 7, &commit_at(5));
        d.feed(Lsn(12), 8, &upd(16384));
        d.feed(Lsn(13), 8, &commit_at(6));
        // pg_attribute rewritten (VACUUM FULL): known by its table OID.
        d.set_relations([(rel(20000), RelMeta { table_oid: PG_ATTRIBUTE_OID, relkind: 'r' })]);
        d.feed(Lsn(14), 9, &upd(20000));
        d.feed(Lsn(15), 9, &commit_at(7));
        let c = d.take_attribute_changes();
        assert_eq!(
            c.iter().map(|c| (c.xid, c.lsn, c.db)).collect::<Vec<_>>(),
            vec![(7, Lsn(11), 5), (9, Lsn(15), 5)]
        );
        assert!(d.take_attribute_changes().is_empty());
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
            ..Default::default()
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
        // A rewrite: the transaction wrote the data into new files of the same table (same
        // table OID, new files) before dropping the old: VACUUM FULL, CLUSTER, ALTER TABLE.
        let meta = |table_oid, relkind| RelMeta { table_oid, relkind };
        d.set_relations([(rel(20), meta(500, 'r')), (rel(21), meta(500, 't')), (rel(22), meta(500, 'i'))]);
        d.set_relations([(rel(30), meta(500, 'r')), (rel(31), meta(500, 't'))]);
        d.seed([(rel(20), 100), (rel(21), 30), (rel(22), 10)]);
        d.feed(Lsn(90), 9, &RecordKind::Other);
        d.note_written(9, (0..60).map(|b| (rel(30), b)).chain((0..20).map(|b| (rel(31), b))));
        let f = d.feed(Lsn(95), 9, &commit(vec![rel(20), rel(21), rel(22)])).unwrap();
        assert!(f.unresolved, "new files written: judged once the catalog is read");
        assert_eq!(d.resolve(f), None, "VACUUM FULL-like");
        // The lookalike: a table dropped while its rows are copied into a *different* table in
        // the same transaction, however much is written: destruction.
        d.set_relations([(rel(60), meta(600, 'r')), (rel(61), meta(601, 'r'))]);
        d.seed([(rel(60), 100)]);
        d.feed(Lsn(96), 11, &RecordKind::Other);
        d.note_written(11, (0..100).map(|b| (rel(61), b)));
        let f = d.feed(Lsn(97), 11, &commit(vec![rel(60)])).unwrap();
        let f = d.resolve(f).unwrap();
        assert_eq!((f.kind, f.dropped.clone()), (Kind::RelationsDropped, vec![(rel(60), 100)]));
        // A rewrite's new file rewritten again before the catalog saw it (VACUUM FULL then
        // ALTER TABLE in quick succession): the lineage ties both to the table.
        d.set_relations([(rel(62), meta(602, 'r'))]);
        d.seed([(rel(62), 40)]);
        d.feed(Lsn(98), 15, &RecordKind::Other);
        d.note_written(15, (0..40).map(|b| (rel(63), b)));
        let first = d.feed(Lsn(99), 15, &commit(vec![rel(62)])).unwrap();
        d.feed(Lsn(99), 16, &RecordKind::Other);
        d.note_written(16, (0..40).map(|b| (rel(64), b)));
        let second = d.feed(Lsn(99), 16, &commit(vec![rel(63)])).unwrap();
        d.set_relations([(rel(64), meta(602, 'r'))]);
        assert_eq!((d.resolve(first), d.resolve(second)), (None, None), "two rewrites in a row");
        // TRUNCATE: new files get one metapage per index, nothing else — too little to hold
        // the table, so no catalog is needed; the table's file is destroyed, not its index.
        d.set_relations([(rel(40), meta(700, 'r')), (rel(41), meta(700, 'i'))]);
        d.seed([(rel(40), 100), (rel(41), 30)]);
        d.feed(Lsn(100), 10, &RecordKind::Other);
        d.note_written(10, [(rel(51), 0)]);
        let f = d.feed(Lsn(105), 10, &commit(vec![rel(40), rel(41)])).unwrap();
        assert!(!f.unresolved, "a metapage cannot hold a 100-page table: decided at once");
        assert_eq!(
            (f.kind, f.dropped.clone()),
            (Kind::RelationsDropped, vec![(rel(40), 100)]),
            "TRUNCATE-like"
        );
        // Had the new file been the table's own (a rewrite), resolving clears it.
        d.seed([(rel(42), 100)]);
        d.set_relations([(rel(42), meta(701, 'r'))]);
        d.feed(Lsn(106), 12, &RecordKind::Other);
        d.note_written(12, (0..50).map(|b| (rel(52), b)));
        let f = d.feed(Lsn(107), 12, &commit(vec![rel(42)])).unwrap();
        d.set_relations([(rel(52), meta(701, 'r'))]);
        assert_eq!(d.resolve(f), None, "a rewrite once the catalog knows the new file");
        // Index files are not data: DROP INDEX (CONCURRENTLY), or dropping an empty table whose
        // only non-empty file is its primary key's metapage.
        d.set_relations([(rel(80), meta(800, 'i')), (rel(90), meta(900, 'r')), (rel(91), meta(900, 'i'))]);
        d.seed([(rel(80), 500), (rel(91), 1)]);
        assert_eq!(d.feed(Lsn(108), 13, &commit(vec![rel(80)])), None, "DROP INDEX");
        assert_eq!(
            d.feed(Lsn(109), 14, &commit(vec![rel(90), rel(91)])),
            None,
            "empty table with a primary key"
        );
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
