//! One client session after authentication: every client message is looked at before it
//! reaches the database, server messages are relayed back as they come.
//!
//! How the gate refuses a statement without breaking the session: it sends the database a
//! statement that fails with the gate's message instead (`DO … RAISE`), in the refused
//! statement's place. The database then does exactly what it does for any failed statement —
//! an explicit transaction is aborted, an extended-protocol batch is skipped up to its `Sync`,
//! pipelined messages before it keep their answers in order — so the client's view and the
//! server's state never disagree.
//!
//! How the gate measures a write (the row guard): the statement runs inside a savepoint (a
//! transaction the gate opens, outside one) between two reads of the transaction's own
//! counters — rows updated and deleted per table (`pg_stat_xact_user_tables`, so cascades and
//! triggers count), the `pg_class` and `pg_attribute` rows it wrote (a CREATE, DROP, TRUNCATE or
//! ALTER inside a function) and, where a foreign table exists or the transaction is not READ
//! COMMITTED, the ACCESS EXCLUSIVE locks the session holds (a TRUNCATE of a foreign table
//! inside a function). All four go to the server in one flight; the read before is left out when
//! the last measured write of the same transaction read it already (see `Session::counters`).
//! Within the limits and the person's
//! budgets the savepoint is released and the client gets the statement's answers; over them it
//! is rolled back and held for a second person. A Query holding several statements is split at
//! the parser's statement boundaries and run one by one inside one transaction, each write
//! measured on its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{Event, EventKind};
use bytes::{Bytes, BytesMut};
use guard::{Action, Class, Decision};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::approvals::{Ask, State, state_name};
use crate::wire::{self, Frame, backend, frontend};
use crate::{Io, Shared};

/// Who is on the other end, decided at login.
pub struct Identity {
    pub session: u64,
    pub person: crate::config::Person,
    pub client: String,
    pub db_user: String,
    pub application_name: String,
    /// When the grant this session runs under ends (unix seconds).
    pub grant_until: Option<u64>,
    pub grant_role: Option<String>,
}

/// A statement waiting for a decision.
struct Held {
    id: String,
    rx: watch::Receiver<State>,
    deadline: tokio::time::Instant,
    /// What to send the server if approved.
    on_approve: Bytes,
    /// How to refuse it (simple or extended protocol).
    extended: bool,
    sql: String,
    /// The guard's decision, applied to its session view once the statement is sent on.
    decision: Decision,
    /// Part of a run (a measured write over its limits): on approval it runs as is and the run
    /// goes on; otherwise the run ends with the refusal.
    resume_run: bool,
    /// Nobody but the requester could approve it: refused at once.
    no_approver: bool,
    /// Answers of the gate's own messages sent with `on_approve` (a Close and a re-Bind of a
    /// portal the measurement consumed), not the client's: dropped, in order.
    drop_tags: Vec<u8>,
}

/// (The text of [`SNAPSHOT_SQL`], for `concat!`.)
macro_rules! snapshot_sql {
    () => {
        "SELECT c.oid::pg_catalog.int8, (n.nspname::pg_catalog.text OPERATOR(pg_catalog.||) '.'::pg_catalog.text OPERATOR(pg_catalog.||) c.relname::pg_catalog.text),      x.n, c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace,      LATERAL (SELECT (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid))::pg_catalog.int8 AS n) x      WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,t,m,p}'::pg_catalog.\"char\"[])      AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[])      AND n.nspname OPERATOR(pg_catalog.!~) '^pg_toast'::pg_catalog.text AND x.n OPERATOR(pg_catalog.<>) 0      UNION ALL SELECT c.oid::pg_catalog.int8, ('pg_catalog.'::pg_catalog.text OPERATOR(pg_catalog.||) c.relname::pg_catalog.text),      (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid))::pg_catalog.int8,      c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c      WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_largeobject'::pg_catalog.regclass, 'pg_catalog.pg_largeobject_metadata'::pg_catalog.regclass]::pg_catalog.oid[])      AND (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)) OPERATOR(pg_catalog.<>) 0      UNION ALL SELECT -1, COALESCE(pg_catalog.string_agg(l.relation::pg_catalog.text OPERATOR(pg_catalog.||) ':'::pg_catalog.text      OPERATOR(pg_catalog.||) COALESCE(c.relfilenode::pg_catalog.text, 'gone'::pg_catalog.text), ','), ''), pg_catalog.count(*), 0      FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation      WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.locktype OPERATOR(pg_catalog.=) 'relation'      AND l.mode OPERATOR(pg_catalog.=) 'AccessExclusiveLock'      AND (pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'::pg_catalog.text      OR EXISTS (SELECT FROM pg_catalog.pg_foreign_table))      UNION ALL SELECT -4, '', (pg_catalog.pg_stat_get_xact_tuples_updated('pg_catalog.pg_attribute'::pg_catalog.regclass)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted('pg_catalog.pg_attribute'::pg_catalog.regclass))::pg_catalog.int8, 0      UNION ALL SELECT -6, '', (pg_catalog.pg_stat_get_xact_tuples_inserted('pg_catalog.pg_class'::pg_catalog.regclass)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated('pg_catalog.pg_class'::pg_catalog.regclass)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted('pg_catalog.pg_class'::pg_catalog.regclass))::pg_catalog.int8, 0"
    };
}
/// The gate's read of what the transaction changed so far: per table (oid) its name, rows
/// updated + deleted and estimated size — user tables (the rows of `pg_stat_xact_user_tables`,
/// read straight from `pg_class` and the counter functions: the view's joins with `pg_index`
/// and its grouping cost twice as much, 0.13–0.21 against 0.07–0.08 ms on PostgreSQL 15), and the two catalogs that hold large
/// objects (`pg_largeobject_metadata`: one row per large object; `pg_largeobject`: one per
/// 2 KB page), whose rows `lo_unlink`, `lowrite` or `lo_truncate` inside a function change; (oid
/// -6) the rows of `pg_class` the transaction inserted, updated or deleted — every CREATE, DROP,
/// TRUNCATE (a new relfilenode), rewrite or ALTER of a relation writes its row, also on a
/// relation the transaction had locked already (`LOCK TABLE … IN ACCESS EXCLUSIVE MODE` first),
/// and the counter is the backend's own (no shared lock taken to read it); (oid -4) the rows of
/// `pg_attribute` the transaction updated or deleted (a DROP COLUMN writes no `pg_class` row);
/// and (oid -1) the ACCESS EXCLUSIVE relation locks held, each as `oid:relfilenode`
/// (`oid:gone` once dropped) — read only where the database has a foreign table (a TRUNCATE of
/// one empties a table on another server and writes no local catalog row: its lock is what
/// shows it) or the transaction is not READ COMMITTED (its snapshot could miss a foreign table
/// created since it began). `pg_locks` takes every lock-manager partition and every backend's
/// fast-path lock to list the locks, and under 16 sessions it cost as much as the rest of the
/// read; otherwise the row is `('', 0)`. A TRUNCATE in place (no new file, no `pg_class`
/// write) happens only to a relation created or emptied earlier in the same subtransaction —
/// inside the measured statement, whose own rows are all it can remove. Every
/// name is schema-qualified and every operator spelt `OPERATOR(pg_catalog.…)`, so a session's
/// search_path or its own objects cannot change what it reads.
const SNAPSHOT_SQL: &str = snapshot_sql!();

/// [`SNAPSHOT_SQL`] with one more row (oid -5): the number of tables with a deferrable trigger of
/// a user's (`CREATE CONSTRAINT TRIGGER … DEFERRABLE`), and the rows the transaction inserted,
/// updated or deleted in them — such a change queues code that runs at COMMIT (the client's, or
/// the gate's own after a write outside a transaction) or at `SET CONSTRAINTS … IMMEDIATE`, where
/// nothing is measured. A scan of `pg_trigger` (about 12 µs with none, 50 µs with 400 foreign-key
/// triggers, per read): a server connection uses it until a read shows that the database has no
/// such table, then [`SNAPSHOT_SQL`] — once per server connection, no round trip of its own.
const SNAPSHOT_DEFERRED_SQL: &str = concat!(
    snapshot_sql!(),
    "      UNION ALL SELECT -5, pg_catalog.count(*)::pg_catalog.text, COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact_tuples_inserted(t.tgrelid)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated(t.tgrelid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(t.tgrelid)), 0)::pg_catalog.int8, 0      FROM (SELECT DISTINCT tgrelid FROM pg_catalog.pg_trigger WHERE tgdeferrable AND NOT tgisinternal) t"
);

/// As [`SNAPSHOT_SQL`], plus one row (oid -2) listing every user relation (OID ≥ 16384) as
/// `oid`, or `oid:relfilenode` when it is a table (or a TOAST table) whose file holds at least
/// one page. A DROP or TRUNCATE removes an entry or changes a relfilenode; a TRUNCATE of an
/// empty table (no page) and a DROP … IF EXISTS of nothing change no entry. Materialized views
/// and sequences are listed by oid only: their files are derived or hold no rows, and a REFRESH
/// or `ALTER SEQUENCE … RESTART` — DDL the gate measures with this read (see
/// `StatementInfo::by_files`) — gives them new ones. The row of [`SNAPSHOT_DEFERRED_SQL`]
/// (oid -5). And
/// one row (oid -3): the ACCESS EXCLUSIVE locks the session holds on foreign tables (a TRUNCATE
/// of one empties a table on another server, which no local entry shows).
const SNAPSHOT_PROBE_SQL: &str = "SELECT c.oid::pg_catalog.int8, (n.nspname::pg_catalog.text OPERATOR(pg_catalog.||) '.'::pg_catalog.text OPERATOR(pg_catalog.||) c.relname::pg_catalog.text),      x.n, c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace,      LATERAL (SELECT (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid))::pg_catalog.int8 AS n) x      WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,t,m,p}'::pg_catalog.\"char\"[])      AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[])      AND n.nspname OPERATOR(pg_catalog.!~) '^pg_toast'::pg_catalog.text AND x.n OPERATOR(pg_catalog.<>) 0      UNION ALL SELECT c.oid::pg_catalog.int8, ('pg_catalog.'::pg_catalog.text OPERATOR(pg_catalog.||) c.relname::pg_catalog.text),      (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid))::pg_catalog.int8,      c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c      WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_largeobject'::pg_catalog.regclass, 'pg_catalog.pg_largeobject_metadata'::pg_catalog.regclass]::pg_catalog.oid[])      AND (pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)) OPERATOR(pg_catalog.<>) 0      UNION ALL SELECT -1, COALESCE(pg_catalog.string_agg(l.relation::pg_catalog.text OPERATOR(pg_catalog.||) ':'::pg_catalog.text      OPERATOR(pg_catalog.||) COALESCE(c.relfilenode::pg_catalog.text, 'gone'::pg_catalog.text), ','), ''), pg_catalog.count(*), 0      FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation      WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.locktype OPERATOR(pg_catalog.=) 'relation'      AND l.mode OPERATOR(pg_catalog.=) 'AccessExclusiveLock'      UNION ALL SELECT -2, COALESCE(pg_catalog.string_agg(c.oid::pg_catalog.text OPERATOR(pg_catalog.||)      CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{r,t}'::pg_catalog.\"char\"[])      AND pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog.>) 0      THEN ':'::pg_catalog.text OPERATOR(pg_catalog.||) c.relfilenode::pg_catalog.text ELSE ''::pg_catalog.text END, ','), ''), 0, 0      FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid      UNION ALL SELECT -3, '', pg_catalog.count(*), 0 FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c      ON c.oid OPERATOR(pg_catalog.=) l.relation WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()      AND l.locktype OPERATOR(pg_catalog.=) 'relation' AND l.mode OPERATOR(pg_catalog.=) 'AccessExclusiveLock'      AND c.relkind OPERATOR(pg_catalog.=) 'f'      UNION ALL SELECT -4, '', (pg_catalog.pg_stat_get_xact_tuples_updated('pg_catalog.pg_attribute'::pg_catalog.regclass)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted('pg_catalog.pg_attribute'::pg_catalog.regclass))::pg_catalog.int8, 0      UNION ALL SELECT -5, pg_catalog.count(*)::pg_catalog.text, COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact_tuples_inserted(t.tgrelid)      OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated(t.tgrelid) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(t.tgrelid)), 0)::pg_catalog.int8, 0      FROM (SELECT DISTINCT tgrelid FROM pg_catalog.pg_trigger WHERE tgdeferrable AND NOT tgisinternal) t";

/// The name [`SNAPSHOT_SQL`] is prepared under on the server connection, once (parsed and
/// planned once, not twice per measured write). Clients may not Parse, Bind or Close a
/// `holdfast_` name; SQL run by a client (a `DO` block's dynamic `DEALLOCATE`/`PREPARE`) could
/// still drop or replace it, which is why every measurement ends with [`VERIFY_SQL`].
const SNAPSHOT_STMT: &str = "holdfast_row_guard_snapshot";

/// Run unprepared after a measurement's second read, in the same flight: one row, `1` when
/// the statement under [`SNAPSHOT_STMT`] is still the one the gate parsed through the protocol
/// (`from_sql` is false only for a protocol-level Parse, which a client cannot send under a
/// `holdfast_` name). Anything else — the statement deallocated, or replaced by a `PREPARE` of
/// the client's that returns made-up counters — and the measurement is not trusted: the write
/// is held, and the gate prepares its statement again (Close + Parse) for the next one.
const VERIFY_SQL: &str = "SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements      WHERE name OPERATOR(pg_catalog.=) 'holdfast_row_guard_snapshot'::pg_catalog.text AND NOT from_sql";

const SAVEPOINT: &str = "SAVEPOINT holdfast_row_guard";
const RELEASE: &str = "RELEASE SAVEPOINT holdfast_row_guard";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT holdfast_row_guard";

#[derive(Default, Debug, Clone)]
struct Snap {
    /// oid → (schema.table, rows updated + deleted, estimated rows).
    tables: HashMap<i64, (String, u64, i64)>,
    exclusive_locks: u64,
    /// The relations locked ACCESS EXCLUSIVE, as `oid:relfilenode` (or `oid:gone`).
    exclusive_files: std::collections::HashSet<String>,
    /// Rows of `pg_attribute` the transaction updated or deleted: a column dropped or
    /// redefined (no DML does that; DDL in a function on a table already locked does).
    column_changes: u64,
    /// Rows of `pg_class` the transaction inserted, updated or deleted: a relation created,
    /// dropped, emptied (TRUNCATE gives it a new file), rewritten or altered.
    relation_writes: u64,
    /// Rows changed in tables with a deferrable user trigger, and how many such tables exist
    /// (`None`: not read; see [`SNAPSHOT_DEFERRED_SQL`]).
    deferred_rows: u64,
    deferred_tables: Option<u64>,
    rows_seen: bool,
    /// The relations' entries (see [`SNAPSHOT_PROBE_SQL`]), when probed.
    relations: Option<std::collections::HashSet<String>>,
    /// ACCESS EXCLUSIVE locks held on foreign tables, when probed.
    foreign_locks: Option<u64>,
    /// Not read for the statement it is the before of: the previous measurement's after
    /// (`Session::counters`).
    stale: bool,
}

impl Snap {
    fn add_row(&mut self, body: &Bytes) {
        let cols = data_row(body);
        let get = |i: usize| cols.get(i).cloned().flatten().unwrap_or_default();
        let oid: i64 = get(0).parse().unwrap_or(0);
        let n: u64 = get(2).parse().unwrap_or(0);
        self.rows_seen = true;
        if oid == -1 {
            self.exclusive_locks = n;
            self.exclusive_files = get(1).split(',').filter(|e| !e.is_empty()).map(str::to_string).collect();
        } else if oid == -4 {
            self.column_changes = n;
        } else if oid == -6 {
            self.relation_writes = n;
        } else if oid == -5 {
            self.deferred_rows = n;
            self.deferred_tables = get(1).parse().ok();
        } else if oid == -3 {
            self.foreign_locks = Some(n);
        } else if oid == -2 {
            self.relations = Some(get(1).split(',').filter(|e| !e.is_empty()).map(str::to_string).collect());
        } else {
            self.tables.insert(oid, (get(1), n, get(3).parse().unwrap_or(0)));
        }
    }
}

/// Whether a statement the gate sends on unmeasured keeps the last measurement's counters
/// usable as the next measured write's before (see `Session::counters`): an allowed read. What
/// it may still change (a function the policy declares safe) is then counted against the next
/// measured write; anything else — transaction control, DDL, LOCK, SET, DEALLOCATE, a held
/// or refused statement — voids them.
fn keeps_counters(st: &guard::StatementInfo) -> bool {
    st.action == Action::Allow
        && st.class == Class::Read
        && matches!(st.kind.as_str(), "SELECT" | "SHOW" | "FETCH" | "EXPLAIN")
}

/// [`VERIFY_SQL`]'s row: exactly one statement under the gate's name, parsed by the gate.
fn verify_row(body: &Bytes) -> bool {
    data_row(body).first().cloned().flatten().as_deref() == Some("1")
}

/// The columns of a DataRow (text format), `None` for NULL.
fn data_row(body: &Bytes) -> Vec<Option<String>> {
    let b = &body[..];
    let mut out = Vec::new();
    if b.len() < 2 {
        return out;
    }
    let n = i16::from_be_bytes([b[0], b[1]]).max(0) as usize;
    let mut at = 2;
    for _ in 0..n {
        if at + 4 > b.len() {
            break;
        }
        let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = (at + len as usize).min(b.len());
        out.push(Some(String::from_utf8_lossy(&b[at..end]).into_owned()));
        at = end;
    }
    out
}

/// One piece of a client's Query as the gate runs it.
enum Unit {
    /// Sent as is; its answers go to the client. `reads`: an allowed read, which keeps the last
    /// measurement's counters usable as the next one's before (see `Session::counters`).
    Plain(String, bool),
    /// A write run under a savepoint and measured; `max_rows` from the guard. `probe`: a DROP …
    /// IF EXISTS or TRUNCATE, kept only if it dropped and emptied nothing that existed with
    /// data (the relations' entries before and after). `copy`: a COPY FROM STDIN, whose
    /// counters after are read once the client's data has gone through (see `Session::copy_in`).
    Measured { sql: String, max_rows: u64, probe: bool, copy: bool },
}

/// Who the answers to each Query the gate sent during a run belong to (one ReadyForQuery each).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// The gate's own (BEGIN, SAVEPOINT, RELEASE, ROLLBACK): answers swallowed.
    Quiet,
    /// The gate's COMMIT of the transaction it opened: an error (a deferred constraint) is the
    /// client's.
    Commit,
    /// A statement of the client's that is not measured: answers go to the client.
    Plain,
    /// The counters before a measured statement.
    Before,
    /// The measured statement: answers buffered until it is judged.
    Stmt,
    /// The counters after it, then [`VERIFY_SQL`] (the counters were read by the gate's own
    /// statement) in the same Sync: the rows before the read's CommandComplete are the
    /// counters', the one after it the check's.
    After,
}

/// Who owns the answers to a message sent during an extended-protocol measurement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum XOwner {
    /// Answers the client's own Parse/Bind/Describe/Close of this batch still owed when the
    /// measurement was sent: relayed as they come.
    Pass,
    Quiet,
    Before,
    After,
    Verify,
    Client,
}

/// A measured write sent through the extended protocol: the gate's own statements (under its
/// reserved names) around the client's Execute, in the client's batch.
struct XRun {
    /// Owner and the answers still to come (a message ends at its terminal answer).
    entries: VecDeque<(XOwner, u32)>,
    buffered: BytesMut,
    before: Snap,
    after: Snap,
    /// [`VERIFY_SQL`] confirmed the counters were read by the gate's own statement.
    verified: bool,
    sql: String,
    max_rows: u64,
    decision: Decision,
    exec: Frame,
    phase: XPhase,
    pending_hold: Option<(Vec<String>, u64)>,
    /// A DDL statement measured as a probe is (`StatementInfo::by_files`): read with
    /// [`SNAPSHOT_PROBE_SQL`], judged by the relations' files instead of the locks it takes.
    probe: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum XPhase {
    Measuring,
    RollingBack,
}

/// A client Query the gate runs itself, statement by statement (see the module doc).
struct Run {
    what: String,
    units: VecDeque<Unit>,
    /// The gate opened a transaction (the client was outside one): it commits or rolls back.
    opened: bool,
    steps: VecDeque<Step>,
    /// The measured statement whose numbers are awaited (text, row limit, probe).
    current: Option<(String, u64, bool)>,
    buffered: BytesMut,
    stmt_failed: bool,
    snap_failed: bool,
    /// [`VERIFY_SQL`] confirmed the counters were read by the gate's own statement (a probe,
    /// read unprepared, needs no confirmation).
    verified: bool,
    /// The counters' read after the statement is complete (its CommandComplete came): a row
    /// now is [`VERIFY_SQL`]'s.
    after_read: bool,
    before: Snap,
    after: Snap,
    /// A client statement failed: nothing more of the Query runs (as on the server).
    failed: bool,
    finishing: bool,
    /// Over the limits: rolled back; hold once the rollback is answered.
    pending_hold: Option<(String, Vec<String>, u64)>,
    started: Instant,
    tags: Vec<String>,
    error: Option<String>,
    /// The guard's decision on the whole Query (class, for an approval request).
    decision: Decision,
    /// The measured statement is a COPY FROM STDIN: over the limits it is refused, not held
    /// (its data went through the gate and is gone; the client sends it again once allowed).
    copy: bool,
    /// Its counters after are still to send (after its ReadyForQuery, not pipelined behind it:
    /// the server would take them for the end of the COPY's data).
    copy_after: bool,
}

/// Where the current statement's time goes, from the gate taking up the client's first message
/// to the client's ReadyForQuery (then observed into `Shared::metrics.timing` and reset).
/// The server's time is attributed answer by answer: from `mark` — the later of the flight that
/// started the server's work and the previous answer attributed — to an answer that ends a
/// message's work, to the client (`server`) or the gate (`own`) by whose message it answers.
/// Time the server is idle (nothing of the gate's outstanding) is not attributed: it is the
/// gate's own CPU and wake-ups, or the wait for the audit record (`audit`).
#[derive(Default)]
struct Timing {
    started: Option<Instant>,
    audit: Duration,
    server: Duration,
    own: Duration,
    mark: Option<Instant>,
}

/// A Query or an extended-protocol batch sent to the database, until its ReadyForQuery: what
/// `statement_done` records (command tags, rows, duration, error).
struct InFlight {
    what: String,
    started: Instant,
    tags: Vec<String>,
    error: Option<String>,
}

pub struct Session<'a> {
    shared: &'a Arc<Shared>,
    id: Identity,
    client: Box<dyn Io>,
    server: Box<dyn pgproto::conn::Io>,
    cbuf: BytesMut,
    sbuf: BytesMut,
    cout: BytesMut,
    sout: BytesMut,
    guard: guard::Session,
    /// The transaction status of the last ReadyForQuery.
    txn: u8,
    held: Option<Held>,
    run: Option<Run>,
    /// Query/Sync/FunctionCall messages sent to the server not yet answered by ReadyForQuery.
    outstanding: u32,
    /// Extended-protocol messages were sent since the last Sync.
    batch_open: bool,
    /// Terminal answers still owed for extended-protocol messages of the current batch.
    ext_pending: u32,
    /// The server reported an error in the current batch: it skips everything up to Sync.
    skipping: bool,
    /// A measured Execute waiting until everything sent before it is answered.
    pending_exec: Option<(Frame, String, Decision, u64)>,
    xrun: Option<XRun>,
    /// The gate opened a transaction in this batch (for its savepoints): it ends it at Sync.
    batch_began: bool,
    /// Transaction control the gate cannot follow (or a Query) ran in this batch: its
    /// transaction state is unknown.
    batch_txn_control: bool,
    /// The transaction state after the BEGIN/COMMIT/ROLLBACK executed so far in this batch.
    batch_state: Option<u8>,
    /// 1: the client's Sync of a batch the gate opened a transaction in was sent; 2: the gate's
    /// COMMIT/ROLLBACK of it was sent, whose ReadyForQuery the client gets.
    commit_pending: u8,
    cancel: Arc<tokio::sync::Notify>,
    holding: Arc<std::sync::atomic::AtomicBool>,
    /// The client has been told why the session ends (a FATAL sent), or can no longer be told.
    ended: bool,
    statements: u64,
    inflight: VecDeque<InFlight>,
    /// Statements executed since the last Sync (extended protocol).
    batch: Vec<String>,
    /// An ErrorResponse came since the last ReadyForQuery (the guard then keeps suspecting
    /// statement names whose Parse/Close the server may have skipped).
    error_since_ready: bool,
    /// Answers (CommandComplete … ReadyForQuery) to the gate's own queries still to swallow.
    swallow: u32,
    /// The last measured write of a run was kept inside the client's transaction: its savepoint
    /// is released in the same flight as whatever the client sends next (before it), not in a
    /// round trip of its own before the client hears back.
    release_pending: bool,
    /// The Bind message body of each portal (its parameters for an approval request, and to
    /// bind it again when a measured write is approved), at most `MAX_BOUND` portals.
    bound: HashMap<String, Bytes>,
    /// `drop_tags` for the next hold.
    next_hold_drop: Vec<u8>,
    /// Server answers that are the gate's own, not the client's, to drop instead of relaying:
    /// (the index of the terminal answer in `answers`' count, its tag). The ParseComplete and
    /// BindComplete of a refusal's `DO … RAISE`, the CloseComplete and BindComplete of a
    /// re-bound portal (see `Held::drop_tags`). A strict driver (PgJDBC) fails on any answer to
    /// a message it did not send.
    drop_tags: VecDeque<(u64, u8)>,
    /// Terminal answers to extended-protocol messages received so far.
    answers: u64,
    /// The portal of the last Execute.
    last_exec_portal: String,
    /// [`SNAPSHOT_STMT`] is prepared on the server connection, as far as the gate knows (the
    /// last measurement confirmed it, and no DEALLOCATE or DISCARD ran since).
    snap_prepared: bool,
    /// The counters the last kept measurement read after its statement (verified, not a
    /// probe's), while they can serve as the next measured write's counters *before*, saving
    /// that read: within one transaction every counter the read returns only grows — rows
    /// updated + deleted survive ROLLBACK TO SAVEPOINT and RELEASE (PostgreSQL counts attempted
    /// changes), ACCESS EXCLUSIVE locks are released only when a subtransaction that took them
    /// aborts —, so a stale before can only charge the next statement with more: whatever ran
    /// unmeasured in between (an allowed read calling a function the policy declares safe)
    /// is counted against it, never hidden. The two exceptions are seen: a TRUNCATE or DROP
    /// resets a table's counters (the judge holds a statement whose counters went back), and
    /// locks taken after a savepoint are released by ROLLBACK TO (no ROLLBACK TO keeps this).
    /// Void (`None`) at anything else: a transaction's end or failure (every ReadyForQuery not
    /// `T`, every error — the counters of earlier transactions may still be pending in the
    /// next, and are flushed to zero once the backend is idle, so the first measured write of
    /// a transaction always reads), every client statement but an allowed read (`SELECT`,
    /// `SHOW`, `FETCH`, `EXPLAIN`), a held measurement (rolled back to its savepoint).
    counters: Option<Snap>,
    /// [`SNAPSHOT_STMT`] is (to be) prepared as [`SNAPSHOT_DEFERRED_SQL`]: until a read showed
    /// that the database has no table with a deferrable user trigger.
    deferred_check: bool,
    /// Terminal answers still to come for the gate's own extended-protocol RELEASE of a kept
    /// measured write, sent with the client's answers instead of in a round trip of its own:
    /// swallowed before anything else is accounted (an error is the client's, as it would
    /// have been before).
    own_answers: u32,
    /// Outcomes of statements that ended (`statement_done` details), not yet in the log: folded
    /// into this session's next `statement` record as its `done` list — one record per
    /// statement while statements keep coming —, or written as `statement_done` records of
    /// their own, in order, ahead of any other record of the session, when the session ends,
    /// and when no statement follows within [`audit::spool::NOWAIT_FLUSH`] (`outcome_deadline`).
    outcomes: Vec<serde_json::Value>,
    outcome_deadline: Option<tokio::time::Instant>,
    timing: Timing,
    /// The server is in the COPY FROM STDIN of a measured COPY (its CopyInResponse was relayed):
    /// the client's CopyData, CopyDone and CopyFail go through while the run waits for the COPY's
    /// end; Flush and Sync are dropped (the server ignores them in COPY); any other message ends
    /// the COPY with a CopyFail and waits for the run to finish. (COPY was not measured at all
    /// before; pipelined behind it, the counters read would be taken by the server for an
    /// unexpected message in its data.)
    copy_in: bool,
    /// The gate's catalog epoch (`Shared::catalog_epoch`) this session's knowledge of the
    /// catalog was read at, and when (see [`Session::catalog_current`]).
    catalog_epoch: u64,
    catalog_read: Instant,
    /// The OIDs of the types whose input runs code that is not built in (the catalog read's,
    /// `server::CatalogRow::type_oids`; `None`: an entry it could not read, any user type
    /// counts): a parameter the client declares of one is converted through it at Bind.
    code_type_oids: std::collections::HashSet<Option<u32>>,
    /// This session sent, in its current transaction, something that may have changed the
    /// catalog: the epoch is bumped again when the transaction ends (its changes are visible
    /// to others only then).
    catalog_dirty: bool,
    /// The knowledge was read inside a REPEATABLE READ or SERIALIZABLE transaction, whose
    /// snapshot the catalog read sees: unknown until the transaction ends.
    catalog_snapshot_txn: bool,
}

/// Whether a statement the gate sends on may change the database's catalog: DDL and what
/// needs approval (sent on only once approved). Settings change no catalog. A call of the
/// application's own function does not count — it may create objects, but bumping the epoch
/// on every such call would make every session read the catalog before nearly every
/// statement of an application that calls its functions; what such a function makes is seen
/// like what the owner makes outside the gate, within `catalog_max_age`.
fn may_change_catalog(st: &guard::StatementInfo) -> bool {
    st.class >= Class::Ddl
        && !st.kind.starts_with("SET")
        && !st.kind.starts_with("RESET")
        && st.kind != "SHOW"
        && st.kind != "DISCARD"
}

/// The session's catalog read ([`crate::server::builtins_shadowed_sql`]) with one more column:
/// the transaction's isolation level (a read inside a REPEATABLE READ or SERIALIZABLE
/// transaction sees its snapshot).
fn catalog_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "{}, pg_catalog.current_setting('transaction_isolation'::pg_catalog.text)",
            crate::server::builtins_shadowed_sql()
        )
    })
}

/// Outcomes folded into one `statement` record at most (a pipelining client's); the rest are
/// written as records of their own first.
const MAX_FOLDED: usize = 16;

/// Portals whose bound parameters the gate remembers for approval requests.
const MAX_BOUND: usize = 256;

enum Flow {
    Continue,
    End,
}

impl Drop for Session<'_> {
    /// However the session ended, the outcomes it still holds go to the log.
    fn drop(&mut self) {
        self.flush_outcomes();
    }
}

impl<'a> Session<'a> {
    pub fn new(
        shared: &'a Arc<Shared>,
        id: Identity,
        client: Box<dyn Io>,
        server: Box<dyn pgproto::conn::Io>,
        leftover: BytesMut,
        cancel: Arc<tokio::sync::Notify>,
        holding: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Session {
            shared,
            id,
            client,
            server,
            cbuf: leftover,
            sbuf: BytesMut::with_capacity(16 * 1024),
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
            guard: guard::Session::default(),
            txn: b'I',
            held: None,
            run: None,
            outstanding: 0,
            batch_open: false,
            ext_pending: 0,
            skipping: false,
            pending_exec: None,
            xrun: None,
            batch_began: false,
            batch_txn_control: false,
            batch_state: None,
            commit_pending: 0,
            cancel,
            holding,
            ended: false,
            statements: 0,
            inflight: VecDeque::new(),
            batch: Vec::new(),
            error_since_ready: false,
            swallow: 0,
            release_pending: false,
            bound: HashMap::new(),
            next_hold_drop: Vec::new(),
            drop_tags: VecDeque::new(),
            answers: 0,
            last_exec_portal: String::new(),
            snap_prepared: false,
            counters: None,
            deferred_check: true,
            own_answers: 0,
            outcomes: Vec::new(),
            outcome_deadline: None,
            timing: Timing::default(),
            copy_in: false,
            catalog_epoch: 0,
            catalog_read: Instant::now(),
            code_type_oids: std::collections::HashSet::new(),
            catalog_dirty: false,
            catalog_snapshot_txn: false,
        }
    }

    fn event(&self, kind: EventKind, detail: serde_json::Value) -> Event {
        Event::new(kind)
            .person(self.id.person.name.clone())
            .client(self.id.client.clone())
            .session(self.id.session)
            .detail(detail)
    }

    /// Appends a record durably. A `statement` record carries the outcomes of the statements
    /// before it that are not yet in the log (`done`); before any other record they are
    /// written as `statement_done` records of their own, so the log keeps the session's order.
    async fn audit(
        &mut self,
        kind: EventKind,
        mut detail: serde_json::Value,
    ) -> Result<(), audit::AuditError> {
        let folded = if kind == EventKind::Statement
            && !self.outcomes.is_empty()
            && self.outcomes.len() <= MAX_FOLDED
            && let serde_json::Value::Object(m) = &mut detail
        {
            m.insert("done".into(), serde_json::Value::Array(std::mem::take(&mut self.outcomes)));
            self.outcome_deadline = None;
            true
        } else {
            self.flush_outcomes();
            false
        };
        let e = self.event(kind, detail);
        let waited = Instant::now();
        let r = self.shared.audit_event(e).await;
        self.timing.audit += waited.elapsed();
        self.shared.metrics.timing.audit_waits.inc();
        if folded && let Err(e) = &r {
            // The record they were folded into was refused: so would be records of their own
            // (a full or failed spool refuses every record).
            tracing::warn!(error = %e, "the outcomes of earlier statements were not recorded: the audit log refused the record they were folded into");
        }
        r
    }

    /// Writes the outcomes not yet folded into a `statement` record as `statement_done`
    /// records (queued in order, not waited for: their statements were recorded before they
    /// ran).
    fn flush_outcomes(&mut self) {
        self.outcome_deadline = None;
        for detail in std::mem::take(&mut self.outcomes) {
            let ev = self.event(EventKind::StatementDone, detail);
            self.shared.audit_nowait(ev);
        }
    }

    /// Runs the session to its end; returns why it ended.
    pub async fn run(mut self) -> String {
        let max = self.shared.config.max_message_bytes;
        let grant_end = self.id.grant_until.map(|u| {
            let left = u.saturating_sub(crate::approvals::unix_now());
            tokio::time::Instant::now() + Duration::from_secs(left)
        });
        loop {
            // Client frames already buffered are handled first, one at a time, unless a
            // statement is held or under the row guard (then the client waits, and so does
            // everything it pipelined after it).
            if self.pending_exec.is_some()
                && self.ext_pending == 0
                && self.outstanding == 0
                && self.own_answers == 0
                && let Err(e) = self.start_xrun().await
            {
                return e;
            }
            if self.copy_in
                && let Err(e) = self.copy_from_client()
            {
                return self.fatal("08P01", &format!("protocol violation from the client: {e}"), None).await;
            }
            while self.held.is_none()
                && self.run.is_none()
                && self.xrun.is_none()
                && self.pending_exec.is_none()
                && self.commit_pending == 0
            {
                // A Query starts only once the server answered everything before it: the gate
                // then knows the transaction state it runs in (and a run owns every answer).
                if self.cbuf.first() == Some(&b'Q') && self.outstanding > 0 && !self.batch_open {
                    break;
                }
                match wire::decode_frame(&mut self.cbuf, max) {
                    Ok(Some(f)) => match self.on_client(f).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::End) => {
                            let _ = self.flush_server().await;
                            return "client ended the session".into();
                        }
                        Err(e) => {
                            // A malformed message: this connection ends, with the reason; no
                            // other session is affected. (A failure between the gate and the
                            // database has already told the client, in words of its own.)
                            let _ = self.flush_server().await;
                            if self.ended {
                                return e;
                            }
                            return self
                                .fatal("08P01", &format!("protocol violation from the client: {e}"), None)
                                .await;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        return self
                            .fatal("08P01", &format!("protocol violation from the client: {e}"), None)
                            .await;
                    }
                }
            }
            if self.pending_exec.is_some()
                && self.ext_pending == 0
                && self.outstanding == 0
                && self.own_answers == 0
            {
                // Nothing more will come from the server for it (everything before it is
                // answered): start it now rather than wait for a frame that never comes.
                continue;
            }
            if let Err(e) = self.flush_server().await {
                return e;
            }
            let held_deadline = self.held.as_ref().map(|h| h.deadline);
            let outcome_deadline = self.outcome_deadline;
            tokio::select! {
                r = self.server.read_buf(&mut self.sbuf) => {
                    match r {
                        Ok(0) | Err(_) => {
                            return self.fatal("57P01", "the database closed the connection", None).await;
                        }
                        Ok(_) => {
                            if let Err(e) = self.on_server().await { return e; }
                        }
                    }
                }
                r = self.client.read_buf(&mut self.cbuf), if self.cbuf.len() < max + 5 => {
                    match r {
                        Ok(0) | Err(_) => {
                            if let Some(h) = self.held.take() {
                                self.shared.approvals.close(&h.id, true);
                            }
                            return "client disconnected".into();
                        }
                        Ok(_) => {}
                    }
                }
                changed = async { self.held.as_mut().expect("guarded").rx.changed().await }, if self.held.is_some() => {
                    let state = if changed.is_ok() { self.held.as_ref().expect("held").rx.borrow().clone() } else { State::Expired { at: 0 } };
                    if state != State::Pending
                        && let Err(e) = self.decided(state).await { return e; }
                }
                _ = sleep_until_opt(held_deadline), if held_deadline.is_some() => {
                    let id = self.held.as_ref().expect("held").id.clone();
                    let state = self.shared.approvals.close(&id, false);
                    if let Err(e) = self.decided(state).await { return e; }
                }
                _ = self.cancel.notified(), if self.held.is_some() => {
                    let id = self.held.as_ref().expect("held").id.clone();
                    self.shared.approvals.close(&id, true);
                    if let Err(e) = self.decided(State::Withdrawn { at: 0 }).await { return e; }
                }
                _ = sleep_until_opt(outcome_deadline), if outcome_deadline.is_some() => {
                    // No statement came to carry them: they go on their own.
                    self.flush_outcomes();
                }
                _ = sleep_until_opt(grant_end), if grant_end.is_some() => {
                    let role = self.id.grant_role.clone().unwrap_or_default();
                    let _ = self.audit(EventKind::GrantExpired, serde_json::json!({"role": role})).await;
                    return self.fatal(
                        "57P01",
                        &format!("holdfast gate: the grant of role {role} to {} has expired; this session is ended", self.id.person.name),
                        Some("request a new grant: holdfast gate request --role <role> --for <duration> --reason <why>"),
                    ).await;
                }
            }
        }
    }

    /// The client's messages while the server is in the COPY FROM STDIN of a measured COPY (see
    /// `copy_in`).
    fn copy_from_client(&mut self) -> Result<(), String> {
        while self.copy_in {
            match self.cbuf.first() {
                None => return Ok(()),
                Some(b'd' | b'c' | b'f' | b'H' | b'S') => {}
                Some(_) => {
                    // Left for after the measurement; the server would fail the COPY on it and
                    // drop it, so the gate fails the COPY itself.
                    let mut body = b"holdfast gate: another message came in the middle of COPY".to_vec();
                    body.push(0);
                    Frame { tag: b'f', body: Bytes::from(body) }.encode(&mut self.sout);
                    self.copy_in = false;
                    return Ok(());
                }
            }
            let Some(f) = wire::decode_frame(&mut self.cbuf, self.shared.config.max_message_bytes)
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            match f.tag {
                b'd' => f.encode(&mut self.sout),
                b'c' | b'f' => {
                    f.encode(&mut self.sout);
                    self.copy_in = false;
                }
                // Flush and Sync: ignored by the server during COPY.
                _ => {}
            }
        }
        Ok(())
    }

    /// The server's parameters at login (the guard lexes as they say).
    pub fn with_server_parameters(mut self, params: &[(String, String)]) -> Self {
        for (k, v) in params {
            self.guard.server_parameter(k, v);
        }
        self
    }

    /// Settings the client's `options` startup parameter set (already allowed by the guard):
    /// the session's guard view starts as if they were SET (search_path, lexing).
    /// The session's database holds a function or operator named like a built-in outside
    /// pg_catalog (see `server::builtins_shadowed`).
    /// And the domains with CHECK constraints it holds (a cast to one runs them).
    /// And the relations whose reading may run code that is not built in.
    /// `epoch`: the gate's catalog epoch read before that catalog read.
    /// And the OIDs of the types whose input runs such code.
    pub fn with_builtins_shadowed(mut self, epoch: u64, catalog: crate::server::CatalogRow) -> Self {
        if catalog.shadowed {
            self.guard.set_builtins_shadowed();
        }
        self.guard.set_checked_domains(catalog.domains);
        self.guard.set_code_relations(catalog.relations);
        self.guard.set_code_types(catalog.code_types);
        self.code_type_oids = catalog.type_oids.into_iter().collect();
        self.catalog_epoch = epoch;
        self.catalog_read = Instant::now();
        self
    }

    /// Before a client message the guard judges: the session's knowledge of the catalog
    /// (built-in names overloaded, types with CHECKs, relations whose reading runs code) is
    /// read again when it is stale — the gate's catalog epoch moved since (a session sent DDL,
    /// an approved statement or unknown code), or, outside a transaction block, it is older than
    /// `catalog_max_age` (objects made straight in the database). Read through the extended
    /// protocol under the gate's own names (the client's unnamed statement and portal are left
    /// alone), in one round trip, only when the server owes the client nothing; otherwise — a
    /// pipelined batch, a failed transaction — and inside a REPEATABLE READ or SERIALIZABLE
    /// transaction (whose snapshot the read would see, while the executor uses a fresh one)
    /// the knowledge counts as unknown: what a statement names counts as running code.
    async fn catalog_current(&mut self) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        let epoch = self.shared.catalog_epoch.load(SeqCst);
        if self.catalog_snapshot_txn {
            if self.txn != b'I' {
                return Ok(());
            }
            self.catalog_snapshot_txn = false;
        } else {
            let old = self.txn == b'I' && self.catalog_read.elapsed() > self.shared.config.catalog_max_age;
            if epoch == self.catalog_epoch && !old {
                return Ok(());
            }
        }
        let quiet = self.outstanding == 0
            && self.swallow == 0
            && self.own_answers == 0
            && self.run.is_none()
            && self.xrun.is_none()
            && self.held.is_none()
            && self.pending_exec.is_none()
            && !self.batch_open
            && self.commit_pending == 0
            && !self.copy_in
            && self.sout.is_empty()
            && self.txn != b'E';
        if !quiet {
            self.guard.set_catalog_unknown();
            return Ok(());
        }
        frontend::encode_own_statement(&mut self.sout, catalog_sql());
        frontend::encode_sync(&mut self.sout);
        self.guard.sync_sent();
        self.flush_server().await?;
        let mut row: Option<Vec<String>> = None;
        let mut failed: Option<String> = None;
        let read = async {
            loop {
                while let Some(f) =
                    wire::decode_frame(&mut self.sbuf, usize::MAX >> 1).map_err(|e| e.to_string())?
                {
                    match f.tag {
                        b'D' => row = Some(crate::server::data_row_text(&f.body)),
                        b'E' => {
                            failed = Some(
                                wire::error_fields(&f.body)
                                    .into_iter()
                                    .find(|(t, _)| *t == b'M')
                                    .map(|(_, m)| m)
                                    .unwrap_or_default(),
                            )
                        }
                        b'Z' => {
                            self.txn = f.body.first().copied().unwrap_or(b'I');
                            return Ok::<_, String>(());
                        }
                        // Asynchronous messages are the client's.
                        b'A' | b'N' => f.encode(&mut self.cout),
                        b'S' => {
                            f.encode(&mut self.cout);
                            self.server_parameter(&f).await?;
                        }
                        _ => {}
                    }
                }
                if self.server.read_buf(&mut self.sbuf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the database closed the connection".to_string());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| "the gate's catalog read timed out".to_string())??;
        self.guard.ready(failed.is_none(), self.txn == b'I');
        match (row, failed) {
            (Some(cols), None) => {
                let row = crate::server::catalog_row(&cols);
                self.guard.set_catalog(row.shadowed, row.domains, row.relations, row.code_types);
                self.code_type_oids = row.type_oids.into_iter().collect();
                self.catalog_epoch = epoch;
                self.catalog_read = Instant::now();
                if self.txn == b'T' && cols.get(5).is_some_and(|i| i != "read committed") {
                    self.guard.set_catalog_unknown();
                    self.catalog_snapshot_txn = true;
                }
            }
            (_, why) => {
                tracing::warn!(person = %self.id.person.name, error = ?why, "the gate's catalog read failed; the session's knowledge counts as unknown");
                self.guard.set_catalog_unknown();
            }
        }
        Ok(())
    }

    pub fn with_startup_settings(mut self, settings: &[(String, String)]) -> Self {
        for (k, v) in settings {
            let _ = self.shared.guard.check_query(&mut self.guard, &crate::server::set_sql(k, v));
        }
        self
    }

    /// Sends what is queued for the database. A failure ends the session: the client is told
    /// that the database connection failed, the IO error goes to the gate's log.
    async fn flush_server(&mut self) -> Result<(), String> {
        if !self.sout.is_empty() {
            if let Err(e) = self.server.write_all(&self.sout).await {
                tracing::warn!(person = %self.id.person.name, error = %e, "writing to the database failed");
                if !self.ended {
                    self.fatal(
                        "08006",
                        "holdfast gate: the connection to the database failed; the gate's operator can see why in its log",
                        None,
                    )
                    .await;
                }
                return Err(format!("writing to the database: {e}"));
            }
            self.sout.clear();
            self.shared.metrics.timing.server_flights.inc();
            if self.timing.mark.is_none() {
                self.timing.mark = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// The server finished work for a message of the client's (`own` false) or of the gate's:
    /// the time since `mark` is attributed to it (see [`Timing`]). `idle`: nothing the gate sent
    /// is still outstanding.
    fn attribute(&mut self, own: bool, idle: bool) {
        let now = Instant::now();
        if let Some(m) = self.timing.mark {
            let d = now.saturating_duration_since(m);
            if own {
                self.timing.own += d;
            } else {
                self.timing.server += d;
            }
        }
        self.timing.mark = if idle { None } else { Some(now) };
    }

    /// The client got a ReadyForQuery: the statement's times go to the metrics.
    fn timing_done(&mut self) {
        let t = std::mem::take(&mut self.timing);
        self.timing.mark = t.mark;
        if let Some(started) = t.started {
            let m = &self.shared.metrics.timing;
            m.total.observe(started.elapsed());
            m.audit_wait.observe(t.audit);
            m.server.observe(t.server);
            m.own.observe(t.own);
        }
    }

    async fn flush_client(&mut self) -> Result<(), String> {
        if !self.cout.is_empty() {
            if let Err(e) = self.client.write_all(&self.cout).await {
                // Nothing more can reach this client.
                self.ended = true;
                return Err(format!("writing to the client: {e}"));
            }
            self.cout.clear();
        }
        Ok(())
    }

    /// Sends a FATAL error to the client and ends.
    async fn fatal(&mut self, code: &str, message: &str, hint: Option<&str>) -> String {
        backend::error(
            &mut self.cout,
            &backend::Fields { severity: "FATAL", code, message, detail: None, hint },
        );
        self.ended = true;
        let _ = self.flush_client().await;
        message.to_string()
    }

    fn notice(&mut self, message: &str, hint: Option<&str>) {
        backend::notice(
            &mut self.cout,
            &backend::Fields { severity: "NOTICE", code: "01000", message, detail: None, hint },
        );
    }

    /// Relays complete server frames to the client, watching ReadyForQuery (and the row guard).
    async fn on_server(&mut self) -> Result<(), String> {
        loop {
            if self.swallow == 0
                && self.own_answers == 0
                && self.xrun.is_none()
                && self.run.is_none()
                && self.commit_pending == 0
                && wire::relay_data_rows(&mut self.sbuf, &mut self.cout) > 0
            {
                // Rows of a statement the gate only relays (no run, measurement or answers of
                // its own in the way): copied to the client as they came, no frame decoded.
                if self.cout.len() > 64 * 1024 {
                    self.flush_client().await?;
                }
                continue;
            }
            let f = match wire::decode_frame(&mut self.sbuf, usize::MAX >> 1) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(format!("protocol error from the database: {e}")),
            };
            match f.tag {
                b'Z' => {
                    // Every ReadyForQuery, whoever it answers: the transaction state, the
                    // guard's view of what the server confirmed (names, portals at its end).
                    self.outstanding = self.outstanding.saturating_sub(1);
                    let own = self.swallow > 0
                        || self.run.as_ref().is_some_and(|r| {
                            matches!(r.steps.front(), Some(Step::Quiet | Step::Before | Step::After))
                        });
                    let idle = self.outstanding == 0 && self.xrun.is_none() && self.own_answers == 0;
                    self.attribute(own, idle);
                    self.txn = f.body.first().copied().unwrap_or(b'I');
                    if self.txn != b'T' {
                        // The transaction ended or failed: the next one reads its own.
                        self.counters = None;
                    }
                    if self.txn == b'I' && self.catalog_dirty {
                        // What it changed in the catalog is now visible to every session.
                        self.catalog_dirty = false;
                        self.shared.catalog_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    self.guard.ready(!self.error_since_ready, self.txn == b'I');
                    self.error_since_ready = false;
                }
                b'E' => {
                    self.error_since_ready = true;
                    self.counters = None;
                }
                b'S' => self.server_parameter(&f).await?,
                _ => {}
            }
            if self.swallow > 0 {
                // The answers to a deferred RELEASE, sent before anything of the client's that
                // followed it: never counted as the client's (extended-protocol answers, drops).
                match f.tag {
                    b'Z' => self.swallow -= 1,
                    b'S' | b'A' => f.encode(&mut self.cout),
                    b'E' => {
                        tracing::warn!(fields = ?wire::error_fields(&f.body), "the gate's own statement failed")
                    }
                    _ => {}
                }
                continue;
            }
            if self.own_answers > 0 && !matches!(f.tag, b'S' | b'A' | b'N') {
                // The deferred RELEASE of a kept extended-protocol write: sent before anything
                // of the client's that followed, so its answers come first.
                match f.tag {
                    b'E' => {
                        // The server skips to the client's Sync: the client's transaction failed.
                        self.own_answers = 0;
                        self.skipping = true;
                        self.ext_pending = 0;
                        self.relay_error(f);
                    }
                    b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'n' => {
                        self.own_answers -= 1;
                        if self.own_answers == 0 {
                            let idle = self.outstanding == 0;
                            self.attribute(true, idle);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if self.xrun.is_some() && !matches!(f.tag, b'S' | b'A') {
                self.on_xrun_frame(f).await?;
                continue;
            }
            if let Some(&(at, want)) = self.drop_tags.front()
                && self.swallow == 0
                && self.run.is_none()
            {
                if f.tag == want && self.answers == at {
                    self.drop_tags.pop_front();
                    self.answers += 1;
                    self.ext_pending = self.ext_pending.saturating_sub(1);
                    continue;
                }
                if matches!(f.tag, b'E' | b'Z') {
                    // The server failed one of them (and skips to Sync): nothing more to drop.
                    self.drop_tags.clear();
                }
            }
            match f.tag {
                b'Z' => {
                    self.ext_pending = 0;
                    self.skipping = false;
                }
                b'E' if self.batch_open || self.ext_pending > 0 => {
                    self.ext_pending = 0;
                    self.skipping = true;
                }
                b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'n' | b'T' => {
                    self.ext_pending = self.ext_pending.saturating_sub(1);
                    self.answers += 1;
                }
                _ => {}
            }
            if self.commit_pending > 0 && self.swallow == 0 && self.run.is_none() {
                match (self.commit_pending, f.tag) {
                    (1, b'Z') => {
                        // The batch is over; end the transaction the gate opened in it, as the
                        // implicit one would have ended.
                        let end = if self.txn == b'T' { "COMMIT" } else { "ROLLBACK" };
                        self.send_query(end);
                        self.commit_pending = 2;
                        self.flush_server().await?;
                        continue;
                    }
                    (2, b'Z') => {
                        self.commit_pending = 0;
                    }
                    (2, b'E') => {
                        // A deferred constraint failing at COMMIT: the client's error.
                        self.relay_error(f);
                        continue;
                    }
                    (2, _) => continue,
                    _ => {}
                }
            }
            if matches!(f.tag, b'S' | b'A') && (self.swallow > 0 || self.run.is_some()) {
                // Asynchronous: the client's, whoever's statement is running.
                f.encode(&mut self.cout);
                continue;
            }
            if self.run.is_some() {
                self.on_run_frame(f).await?;
                continue;
            }
            match f.tag {
                b'Z' => {
                    f.encode(&mut self.cout);
                    self.timing_done();
                    if let Some(done) = self.inflight.pop_front() {
                        self.statement_done(done);
                    }
                }
                b'C' => {
                    if let Some(cur) = self.inflight.front_mut()
                        && cur.tags.len() < 100
                    {
                        let mut b = f.body.clone();
                        cur.tags.push(wire::cstr(&mut b, "CommandComplete").unwrap_or_default());
                    }
                    f.encode(&mut self.cout);
                }
                b'E' => {
                    if let Some(cur) = self.inflight.front_mut() {
                        let fields = wire::error_fields(&f.body);
                        cur.error = fields.iter().find(|(t, _)| *t == b'M').map(|(_, m)| truncate(m, 1000));
                    }
                    self.relay_error(f)
                }
                _ => f.encode(&mut self.cout),
            }
            if self.cout.len() > 64 * 1024 {
                self.flush_client().await?;
            }
        }
        self.flush_client().await
    }

    /// A ParameterStatus: the guard follows it; a session the guard can no longer read as the
    /// server does is ended. Encoding names are compared as PostgreSQL does (case, `-`, `_`
    /// ignored; `UNICODE` is UTF8).
    async fn server_parameter(&mut self, f: &Frame) -> Result<(), String> {
        let mut b = f.body.clone();
        let name = wire::cstr(&mut b, "ParameterStatus").unwrap_or_default();
        let value = wire::cstr(&mut b, "ParameterStatus").unwrap_or_default();
        self.guard.server_parameter(&name, &value);
        let enc = value.to_lowercase().replace(['-', '_'], "");
        let lexes_differently = (name == "standard_conforming_strings" && value != "on")
            || (name == "client_encoding" && enc != "utf8" && enc != "unicode");
        if lexes_differently {
            // The guard reads statements as the server does with these defaults; it cannot
            // guard a session that changed them (even with approval).
            return Err(self
                .fatal(
                    "55000",
                    &format!("holdfast gate: the session's {name} is now {value}; statements can no longer be checked, so the session is ended"),
                    None,
                )
                .await);
        }
        Ok(())
    }

    /// Notes how a statement ended, for the session's next record (see `outcomes`; never
    /// waited for: the statement was audited before it ran).
    fn statement_done(&mut self, done: InFlight) {
        let rows: u64 = done.tags.iter().filter_map(|t| t.rsplit(' ').next()?.parse::<u64>().ok()).sum();
        self.outcomes.push(serde_json::json!({
            "sql": done.what,
            "tags": done.tags,
            "rows": rows,
            "duration_us": done.started.elapsed().as_micros() as u64,
            "error": done.error,
        }));
        if self.outcome_deadline.is_none() {
            self.outcome_deadline = Some(tokio::time::Instant::now() + audit::spool::NOWAIT_FLUSH);
        }
    }

    fn sent(&mut self, what: &str) {
        if self.inflight.len() < 10_000 {
            self.inflight.push_back(InFlight {
                what: truncate(what, 200),
                started: Instant::now(),
                tags: Vec::new(),
                error: None,
            });
        }
    }

    /// Relays an ErrorResponse, dropping PL/pgSQL's CONTEXT line from the gate's own refusals.
    fn relay_error(&mut self, f: Frame) {
        let fields = wire::error_fields(&f.body);
        let ours = fields.iter().any(|(t, v)| *t == b'M' && v.starts_with("holdfast gate:"));
        if !ours {
            f.encode(&mut self.cout);
            return;
        }
        let get = |t: u8| fields.iter().find(|(k, _)| *k == t).map(|(_, v)| v.as_str());
        backend::error(
            &mut self.cout,
            &backend::Fields {
                severity: get(b'S').unwrap_or("ERROR"),
                code: get(b'C').unwrap_or("42501"),
                message: get(b'M').unwrap_or(""),
                detail: get(b'D'),
                hint: get(b'H'),
            },
        );
    }

    /// Sends one of the gate's own Queries (or a client's statement the gate runs itself).
    fn send_query(&mut self, sql: &str) {
        frontend::encode_query(&mut self.sout, sql);
        self.outstanding += 1;
        self.guard.sync_sent();
    }

    /// Whether a parameter type OID a client declared may run code that is not built in at
    /// its conversion: one of the catalog read's checked or code types, or any user type
    /// (OID ≥ 16384) while the session's knowledge of the catalog is unknown or incomplete.
    fn code_type(&self, oid: u32) -> bool {
        self.code_type_oids.contains(&Some(oid))
            || (oid >= 16384 && (self.guard.catalog_unknown() || self.code_type_oids.contains(&None)))
    }

    /// Names the gate uses on the server; a client may not use them (fail closed).
    fn reserved(name: &str) -> bool {
        name.to_ascii_lowercase().starts_with("holdfast_")
    }

    async fn on_client(&mut self, f: Frame) -> Result<Flow, String> {
        if self.timing.started.is_none() {
            self.timing.started = Some(Instant::now());
        }
        if matches!(f.tag, b'Q' | b'P' | b'B' | b'E' | b'F') {
            self.catalog_current().await?;
        }
        if self.release_pending {
            // Ahead of the client's message, in the same flight; its answers are swallowed.
            self.release_pending = false;
            self.send_query(RELEASE);
            self.swallow += 1;
        }
        match f.tag {
            b'Q' => {
                if self.batch_open {
                    self.batch_txn_control = true;
                }
                let sql = frontend::query(&f.body).map_err(|e| e.to_string())?;
                let d = self.shared.guard.check_query(&mut self.guard, &sql);
                self.statement(sql, d, f, false).await?;
            }
            b'P' => {
                self.batch_open = true;
                let (name, sql) = frontend::parse(&f.body).map_err(|e| e.to_string())?;
                let mut d = self.shared.guard.check_parse(&mut self.guard, &name, &sql);
                if Self::reserved(&name) {
                    d.action = Action::Deny;
                    d.reasons.push(format!("statement names starting with holdfast_ are the gate's own ({name:?}); use another name"));
                } else if d.action != Action::Deny
                    && let Some(oid) =
                        frontend::parse_param_types(&f.body).into_iter().find(|o| self.code_type(*o))
                {
                    // A parameter declared of a type whose input runs code (a domain with a
                    // CHECK, a composite or an array holding one…) is converted through that
                    // input at Bind — `SELECT 1` declaring one parameter of such a domain, bound
                    // to '5' (or NULL: domain_in checks NULL too), emptied `orders` before any
                    // Execute. The client's declaration is not trusted: judged by the OID.
                    d.action = Action::Deny;
                    d.reasons = vec![format!(
                        "Parse refused: it declares a parameter of type OID {oid}, a type whose input runs code that is not built in (a domain with CHECK constraints, or a type holding one) — PostgreSQL converts the parameter's value through it at Bind, before the gate can measure what it changes; declare the parameter as the domain's base type (or leave its type unspecified), or send the statement as a simple Query, where it is measured"
                    )];
                } else if d.action != Action::Deny
                    && let Some(st) = d.statements.iter().find(|st| st.runs_code)
                {
                    // PostgreSQL's parse analysis already runs code: a literal converted to a
                    // composite, an array or a range goes through record_in / array_in /
                    // range_in — a field's domain CHECK, a range's canonical function — at
                    // Parse, before any measurement (a Parse of `SELECT '(34)'::holder` and a
                    // Sync emptied `orders`: found by the protocol fuzz generator). Its Bind
                    // would be refused anyway (planning runs more: see 'B'); so the Parse is.
                    let why = st.reasons.last().cloned().unwrap_or_default();
                    d.action = Action::Deny;
                    d.reasons = vec![format!(
                        "Parse refused: {} runs code that is not built in ({why}); through the extended protocol PostgreSQL converts its literals at Parse and plans it at Bind, before the gate can measure what it changes — send it as a simple Query (e.g. JDBC preferQueryMode=simple, psql without \\bind), where it is measured",
                        st.kind
                    )];
                }
                if d.action == Action::Deny {
                    // Refused at Parse: the server fails it there, and skips to Sync.
                    self.statement(sql, d, f, true).await?;
                } else {
                    // Recorded with its text before the server sees it (Execute is judged
                    // and recorded again, by what was bound).
                    let detail = serde_json::json!({
                        "protocol": "parse", "statement": name, "sql": truncate(&sql, 16 * 1024),
                        "class": d.class, "action": "parse",
                    });
                    if let Err(e) = self.audit(EventKind::Statement, detail).await {
                        self.shared.metrics.refused.inc();
                        // The client learns what kind of failure; the spool's paths and the
                        // vault's address stay in the gate's log.
                        tracing::warn!(person = %self.id.person.name, error = %e, "statement refused: the audit log cannot take it");
                        let why = vault_types::UserFacing::user_message(&e);
                        self.refuse_with(&format!("holdfast gate: the audit log cannot take this statement ({why}); nothing runs until it can"), AUDIT_UNAVAILABLE, true);
                    } else {
                        f.encode(&mut self.sout);
                        self.owe(1);
                    }
                }
            }
            b'B' => {
                self.batch_open = true;
                let (portal, statement) = frontend::bind(&f.body).map_err(|e| e.to_string())?;
                if Self::reserved(&portal) {
                    self.refuse(&format!("holdfast gate: portal names starting with holdfast_ are the gate's own ({portal:?}); use another name"), true);
                } else {
                    // What the portal runs is fixed here, from what the statement may be now;
                    // an unknown statement leaves the portal unknown (Execute is refused).
                    let _ = self.guard.bind_portal(&portal, &statement);
                    // PostgreSQL plans the statement now, at Bind — before the measurement,
                    // which begins with the Execute — and planning runs what it can fold: an
                    // IMMUTABLE or STABLE function of the application's with constant
                    // arguments, an index expression. So a statement that runs code that is
                    // not built in is refused here, unplanned; as a simple Query it is planned
                    // inside the measurement.
                    let d = self.shared.guard.check_execute_portal(&self.guard, &portal);
                    if let Some(st) = d.statements.iter().find(|st| st.runs_code) {
                        let why = st.reasons.last().cloned().unwrap_or_default();
                        self.guard.close_portal(&portal);
                        self.refuse(&format!("holdfast gate: statement not run: Bind refused: {} runs code that is not built in ({why}); through the extended protocol PostgreSQL plans it at Bind, before the gate can measure what it changes — send it as a simple Query (e.g. JDBC preferQueryMode=simple, psql without \\bind), where it is measured", st.kind), true);
                        return Ok(Flow::Continue);
                    }
                    if self.bound.len() >= MAX_BOUND && !self.bound.contains_key(&portal) {
                        self.bound.clear();
                    }
                    self.bound.insert(portal.clone(), f.body.clone());
                    f.encode(&mut self.sout);
                    self.owe(1);
                }
            }
            b'E' => {
                self.batch_open = true;
                let (portal, _) = frontend::execute(&f.body).map_err(|e| e.to_string())?;
                self.last_exec_portal.clone_from(&portal);
                let d = self.shared.guard.check_execute_portal(&self.guard, &portal);
                let texts: Vec<&str> =
                    d.statements.iter().map(|s| s.text.as_str()).filter(|t| !t.is_empty()).collect();
                let sql =
                    if texts.is_empty() { format!("EXECUTE portal {portal:?}") } else { texts.join("; ") };
                self.statement(sql, d, f, true).await?;
            }
            b'C' => {
                self.batch_open = true;
                let (kind, name) = frontend::close(&f.body).map_err(|e| e.to_string())?;
                if Self::reserved(&name) {
                    // The gate's own statements and portals: a client may not close them.
                    self.refuse(&format!("holdfast gate: Close refused: statement and portal names starting with holdfast_ are the gate's own ({name:?})"), true);
                } else if kind == b'S' {
                    self.guard.close_statement(&name);
                } else {
                    self.guard.close_portal(&name);
                    self.bound.remove(&name);
                }
                f.encode(&mut self.sout);
                self.owe(1);
            }
            b'F' => {
                // FunctionCall by OID (libpq's large-object API: lo_open, loread, lo_unlink…).
                // Judged as the SQL call of the same built-in would be; answered as a
                // FunctionCall is (refused: an error, then ReadyForQuery, so psql's
                // \lo_unlink does not hang).
                let (sql, d) = self.function_call(&f.body);
                self.statement(sql, d, f, false).await?;
            }
            b'X' => {
                f.encode(&mut self.sout);
                return Ok(Flow::End);
            }
            b'S' => {
                let what = if self.batch.is_empty() { "Sync".to_string() } else { self.batch.join("; ") };
                self.batch.clear();
                self.sent(&what);
                self.batch_open = false;
                f.encode(&mut self.sout);
                self.outstanding += 1;
                self.guard.sync_sent();
                if self.batch_began {
                    self.batch_began = false;
                    self.commit_pending = 1;
                }
                self.batch_txn_control = false;
                self.batch_state = None;
            }
            b'D' => {
                self.batch_open = true;
                f.encode(&mut self.sout);
                self.owe(1);
            }
            b'H' => f.encode(&mut self.sout),
            // COPY data/done/fail pass through.
            b'd' | b'c' | b'f' => f.encode(&mut self.sout),
            other => {
                let e = self
                    .fatal(
                        "08P01",
                        &format!("unexpected message type {:?} from the client", other as char),
                        None,
                    )
                    .await;
                return Err(e);
            }
        }
        Ok(Flow::Continue)
    }

    /// A FunctionCall message: its text for the audit and the approver, and the guard's decision.
    /// Built-in functions have fixed OIDs (below 16384, the same on every PostgreSQL 15
    /// server), so OID → name is a table, not a catalog lookup a session could influence. The
    /// large-object functions are judged as `SELECT pg_catalog.<name>(…)` would be (`lo_unlink`,
    /// `lowrite`, `lo_truncate` are destructive); a call the guard would measure runs as is,
    /// since large objects live in `pg_largeobject`, which no user table counter sees and no
    /// such function can reach past. Any other OID (user functions above all) is held as
    /// destructive: the gate cannot measure a FunctionCall, and SELECT f() is measured.
    fn function_call(&mut self, body: &Bytes) -> (String, Decision) {
        let b = &body[..];
        let oid = b.get(..4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]])).unwrap_or(0);
        let nargs = (|| {
            let nfmt = i16::from_be_bytes([*b.get(4)?, *b.get(5)?]).max(0) as usize;
            let at = 6 + 2 * nfmt;
            Some(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]).max(0) as usize)
        })()
        .unwrap_or(0);
        match large_object_function(oid) {
            Some((name, arity)) => {
                let sql = format!("SELECT pg_catalog.{name}({})", vec!["NULL"; arity].join(", "));
                let mut d = self.shared.guard.check_query(&mut guard::Session::default(), &sql);
                if matches!(d.action, Action::RowGuard { .. }) {
                    d.action = Action::Allow;
                }
                (format!("FunctionCall pg_catalog.{name} (OID {oid}, {nargs} arguments)"), d)
            }
            None => {
                // The policy's action for a destructive call, with the reason for this one.
                let mut d = self
                    .shared
                    .guard
                    .check_query(&mut guard::Session::default(), "SELECT pg_catalog.lo_unlink(NULL)");
                d.reasons = vec![format!(
                    "a FunctionCall message calls function OID {oid}, which is not one of the large-object functions the gate knows: held as destructive (call it with SELECT, where the gate measures what it changes)"
                )];
                for st in &mut d.statements {
                    st.kind = "FunctionCall".into();
                    st.text = format!("FunctionCall OID {oid}");
                    st.reasons = d.reasons.clone();
                }
                (format!("FunctionCall OID {oid} ({nargs} arguments)"), d)
            }
        }
    }

    /// Decides what happens to one statement: run, run under the row guard, hold for a second
    /// person, or refuse. The audit record is written before anything reaches the database.
    async fn statement(&mut self, sql: String, d: Decision, f: Frame, extended: bool) -> Result<(), String> {
        self.statements += 1;
        if d.statements.iter().any(may_change_catalog) {
            // Every session reads the catalog again before its next statement — now, and
            // once more when this transaction ends (see `catalog_current`).
            self.catalog_dirty = true;
            self.shared.catalog_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let break_glass = self.shared.approvals.break_glass_active(&self.id.person.name);
        let mut action = d.action.clone();
        let mut reasons_extra: Vec<String> = Vec::new();
        if action == Action::Approve && break_glass {
            action = Action::Allow;
        }
        if matches!(action, Action::RowGuard { .. }) && !extended && self.batch_open {
            // A Query inside an unfinished extended-protocol batch runs in that batch's
            // implicit transaction, where the gate cannot put a savepoint.
            action = Action::Approve;
            reasons_extra.push("a write sent as a Query inside an unfinished extended-protocol batch cannot be measured: send Sync first".to_string());
        }
        if matches!(action, Action::RowGuard { .. })
            && extended
            && d.statements.iter().any(|st| st.kind == "COPY")
        {
            // Measured only as a Query (see `copy_in`): through the extended protocol the gate's
            // counters read would have to wait for the COPY's data inside the client's batch.
            action = Action::Approve;
            reasons_extra.push(
                "a COPY FROM STDIN through the extended protocol cannot be measured: send it as a simple Query (psql's \\copy, COPY … FROM STDIN)".to_string(),
            );
        }
        if matches!(action, Action::RowGuard { .. })
            && d.statements.len() > 1
            && d.statements.iter().any(|st| st.kind == "COPY")
        {
            // COPY FROM STDIN needs the client's data while the gate runs the string itself.
            action = Action::Approve;
            reasons_extra.push(
                "a COPY in a string with writes the gate measures cannot be split: send the COPY on its own"
                    .to_string(),
            );
        }
        // Setup that destroys nothing (DROP … IF EXISTS of what is absent, TRUNCATE of an empty
        // table, as `pgbench -i` sends) is not held: it runs under a savepoint and is held only
        // if the catalog shows it dropped or emptied something that existed. Simple protocol,
        // outside an extended batch, and a string without transaction control or COPY (the
        // gate runs it statement by statement inside one transaction).
        let probe = action == Action::Approve
            && !extended
            && !self.batch_open
            && self.txn != b'E'
            && d.statements.iter().any(|st| st.probe && st.action == Action::Approve)
            && d.statements.iter().all(|st| match st.action {
                Action::Allow | Action::RowGuard { .. } => {
                    d.statements.len() == 1
                        || !(st.kind == "COPY" || guard::TRANSACTION_CONTROL.contains(&st.kind.as_str()))
                }
                Action::Approve => st.probe,
                Action::Deny => false,
            });
        if probe {
            action = Action::RowGuard { max_rows: self.shared.guard.policy().row_guard_max_rows };
            // Its prepared-statement and cursor changes, as for any statement sent on.
            self.guard.apply(&d);
        }
        if d.statements.iter().any(|st| st.kind == "DEALLOCATE" || st.kind == "DISCARD") {
            // It may drop the gate's prepared counters read: prepared again before the next
            // measurement (a drop the gate does not see fails that measurement's check).
            self.snap_prepared = false;
        }
        if extended {
            // Follow the transaction state through the batch (JDBC sends BEGIN in the same
            // batch as the first statement); anything the gate cannot follow makes it unknown.
            for st in &d.statements {
                match st.kind.as_str() {
                    "BEGIN" | "START TRANSACTION" => {
                        self.batch_state = Some(b'T');
                        // A block the gate opened becomes the client's: it stays open.
                        self.batch_began = false;
                    }
                    "COMMIT" | "ROLLBACK" | "PREPARE TRANSACTION" => {
                        self.batch_state = Some(b'I');
                        // The client ended the block the gate may have opened.
                        self.batch_began = false;
                    }
                    "SAVEPOINT" | "RELEASE" | "ROLLBACK TO SAVEPOINT" => {}
                    k if guard::TRANSACTION_CONTROL.contains(&k) => self.batch_txn_control = true,
                    _ => {}
                }
            }
        }
        if !matches!(action, Action::RowGuard { .. }) && !d.statements.iter().all(keeps_counters) {
            // It runs unmeasured (or fails): it may end the transaction, take or release locks,
            // so the next measured write reads its counters before (see `counters`). A
            // measured one takes them up itself (`run_next`, `start_xrun`).
            self.counters = None;
        }
        let detail = serde_json::json!({
            "sql": truncate(&sql, 16 * 1024),
            "class": d.class,
            "action": action_name(&action),
            "reasons": d.reasons,
            "txn": (self.txn as char).to_string(),
            "protocol": if extended { "extended" } else { "simple" },
            "break_glass": break_glass && d.action == Action::Approve,
            "probe": probe,
        });
        // Recorded before it takes effect, every statement, reads included: the record is
        // fsynced before the server sees anything (group commit in the spool keeps this cheap
        // under many sessions). A record the spool cannot take means the statement does not run
        // (unless the operator chose on_full = "refuse_writes", which lets reads run unaudited).
        let audited = self.audit(EventKind::Statement, detail).await;
        if let Err(e) = audited {
            let refuse = match self.shared.on_audit_full() {
                crate::config::OnAuditFull::RefuseAll => true,
                crate::config::OnAuditFull::RefuseWrites => d.class > Class::Read,
            };
            if refuse {
                self.shared.metrics.refused.inc();
                tracing::warn!(person = %self.id.person.name, error = %e, "statement refused: the audit log cannot take it");
                let why = vault_types::UserFacing::user_message(&e);
                self.refuse_with(&format!("holdfast gate: the audit log cannot take this statement ({why}); nothing runs until the vault takes the backlog"), AUDIT_UNAVAILABLE, extended);
                return Ok(());
            }
        }
        if break_glass && d.action == Action::Approve {
            self.shared.alert(serde_json::json!({
                "alert": "break_glass_statement", "person": self.id.person.name, "client": self.id.client,
                "sql": truncate(&sql, 2000), "class": d.class,
            }));
        }
        match action {
            Action::Allow => {
                self.shared.metrics.allowed.inc();
                self.track(&sql, extended);
                f.encode(&mut self.sout);
                if f.tag == b'Q' || f.tag == b'F' {
                    self.outstanding += 1;
                    self.guard.sync_sent();
                } else {
                    self.owe(1);
                }
            }
            Action::Deny => {
                self.shared.metrics.refused.inc();
                let why = d.reasons.join("; ");
                // Text the server's own parser would reject gets the server's SQLSTATE
                // (syntax_error), so drivers and tools react as they would without the gate.
                let code = if why.starts_with(guard::PARSER_REJECTED) { "42601" } else { "42501" };
                self.refuse_with(
                    &format!("holdfast gate: statement refused by policy: {why}"),
                    code,
                    extended,
                );
            }
            Action::RowGuard { .. } if self.txn == b'E' && !extended => {
                // An aborted transaction: it fails anyway, as the server says.
                self.track(&sql, extended);
                f.encode(&mut self.sout);
                self.outstanding += 1;
                self.guard.sync_sent();
            }
            Action::RowGuard { max_rows } if extended => {
                // Measured once the gate knows the transaction state and that the server is
                // not skipping to Sync: at once when all this batch sent before it is Parse,
                // Bind, Describe and Close (their answers, still owed, are relayed first; if
                // one fails the server skips the measurement too, and the client gets that
                // error), otherwise once everything sent before it is answered.
                self.shared.metrics.row_guarded.inc();
                self.pending_exec = Some((f, sql, d, max_rows));
                let knows_state = self.outstanding == 0
                    && self.own_answers == 0
                    && !self.skipping
                    && self.drop_tags.is_empty()
                    && self.batch.is_empty()
                    && !self.batch_txn_control
                    && self.batch_state.is_none()
                    && self.txn != b'E';
                if knows_state {
                    self.start_xrun().await?;
                } else {
                    // The server sends what it owes only at Sync or Flush.
                    frontend::encode_flush(&mut self.sout);
                }
            }
            Action::RowGuard { max_rows } => {
                self.shared.metrics.row_guarded.inc();
                self.start_run(sql, &d, max_rows);
            }
            Action::Approve => {
                let mut raw = BytesMut::new();
                f.encode(&mut raw);
                let mut d = d;
                d.reasons.extend(reasons_extra);
                self.hold(sql, &d, raw.freeze(), extended, None, false).await?;
            }
        }
        Ok(())
    }

    /// Runs a Query holding measured writes: split into its statements (the parser's
    /// boundaries), each write measured on its own, inside one transaction (the client's, or
    /// one the gate opens so that the string stays all-or-nothing as a Query is).
    fn start_run(&mut self, sql: String, d: &Decision, max_rows: u64) {
        let mut units = VecDeque::new();
        if d.statements.len() <= 1 {
            // A probe (DROP … IF EXISTS, TRUNCATE) or DDL: judged by the relations' files.
            let probe = d
                .statements
                .first()
                .is_some_and(|st| (st.probe && st.action == Action::Approve) || st.by_files);
            // (A COPY in a string with other statements is held whole: see `statement`.)
            let copy = d.statements.first().is_some_and(|st| st.kind == "COPY");
            units.push_back(Unit::Measured { sql: sql.clone(), max_rows, probe, copy });
        } else {
            for st in &d.statements {
                match st.action {
                    Action::RowGuard { max_rows } => units.push_back(Unit::Measured {
                        sql: st.text.clone(),
                        max_rows,
                        probe: st.by_files,
                        copy: false,
                    }),
                    Action::Approve if st.probe => units.push_back(Unit::Measured {
                        sql: st.text.clone(),
                        max_rows,
                        probe: true,
                        copy: false,
                    }),
                    _ => units.push_back(Unit::Plain(st.text.clone(), keeps_counters(st))),
                }
            }
        }
        let opened = self.txn == b'I';
        self.run = Some(Run {
            what: truncate(&sql, 200),
            units,
            opened,
            steps: VecDeque::new(),
            current: None,
            buffered: BytesMut::new(),
            stmt_failed: false,
            snap_failed: false,
            verified: false,
            after_read: false,
            before: Snap::default(),
            after: Snap::default(),
            failed: false,
            finishing: false,
            pending_hold: None,
            started: Instant::now(),
            tags: Vec::new(),
            error: None,
            decision: d.clone(),
            copy: false,
            copy_after: false,
        });
        if opened {
            self.run_send(Step::Quiet, "BEGIN");
        }
        self.run_next();
    }

    fn run_send(&mut self, step: Step, sql: &str) {
        self.send_query(sql);
        if let Some(r) = self.run.as_mut() {
            r.steps.push_back(step);
        }
    }

    /// The counters after the measured statement, and the check that they were the gate's own,
    /// in one Sync (one ReadyForQuery, not two: if the read fails, the server skips the check,
    /// and the measurement is not trusted either way).
    fn run_send_after(&mut self) {
        frontend::encode_own_execute(&mut self.sout, SNAPSHOT_STMT);
        frontend::encode_own_statement(&mut self.sout, VERIFY_SQL);
        if let Some(r) = self.run.as_mut() {
            r.after_read = false;
        }
        self.run_sync(Step::After);
    }

    /// Ends the extended-protocol messages just encoded with a Sync, as one step of the run.
    fn run_sync(&mut self, step: Step) {
        frontend::encode_sync(&mut self.sout);
        self.outstanding += 1;
        self.guard.sync_sent();
        if let Some(r) = self.run.as_mut() {
            r.steps.push_back(step);
        }
    }

    /// Sends what the run can send now: statements up to and including the next measured one
    /// (pipelined, one flight), or the end of the transaction the gate opened.
    fn run_next(&mut self) {
        loop {
            let Some(r) = self.run.as_mut() else { return };
            if r.failed {
                r.units.clear();
            }
            match r.units.pop_front() {
                Some(Unit::Plain(sql, reads)) => {
                    if !reads {
                        self.counters = None;
                    }
                    self.run_send(Step::Plain, &sql)
                }
                Some(Unit::Measured { sql, max_rows, probe, copy }) => {
                    // The last measurement's counters after, if nothing voided them since: this
                    // statement's before (a probe reads the relations' entries too: always read).
                    let cached = self.counters.take().filter(|_| !probe);
                    let r = self.run.as_mut().expect("run");
                    r.current = Some((sql.clone(), max_rows, probe));
                    r.copy = copy;
                    r.copy_after = copy;
                    let read = cached.is_none();
                    r.before = cached.unwrap_or_default();
                    r.after = Snap::default();
                    r.stmt_failed = false;
                    r.snap_failed = false;
                    r.verified = probe;
                    r.after_read = false;
                    self.run_send(Step::Quiet, SAVEPOINT);
                    if probe {
                        // Rare (setup): read unprepared.
                        self.run_send(Step::Before, SNAPSHOT_PROBE_SQL);
                        self.run_send(Step::Stmt, &sql);
                        self.run_send(Step::After, SNAPSHOT_PROBE_SQL);
                    } else {
                        // The prepared reads go as extended-protocol messages between the
                        // Queries, each group ending in its own Sync (one ReadyForQuery each).
                        if !self.snap_prepared {
                            let snapshot = self.snapshot_sql();
                            frontend::encode_own_prepare(&mut self.sout, SNAPSHOT_STMT, snapshot);
                            self.run_sync(Step::Quiet);
                        }
                        if read {
                            frontend::encode_own_execute(&mut self.sout, SNAPSHOT_STMT);
                            self.run_sync(Step::Before);
                        }
                        self.run_send(Step::Stmt, &sql);
                        if !copy {
                            self.run_send_after();
                        }
                    }
                    return;
                }
                None => {
                    if r.finishing {
                        return;
                    }
                    r.finishing = true;
                    if r.opened {
                        if r.failed {
                            self.run_send(Step::Quiet, "ROLLBACK");
                        } else {
                            self.run_send(Step::Commit, "COMMIT");
                        }
                    }
                    return;
                }
            }
        }
    }

    /// A server frame while a run is active: routed to the step it answers.
    async fn on_run_frame(&mut self, f: Frame) -> Result<(), String> {
        let r = self.run.as_mut().expect("run");
        let Some(&step) = r.steps.front() else {
            // Nothing of ours is waiting (cannot happen: a run starts with the server idle).
            f.encode(&mut self.cout);
            return Ok(());
        };
        match (step, f.tag) {
            (_, b'Z') => {
                r.steps.pop_front();
                if r.steps.is_empty() {
                    self.run_step_done().await?;
                }
            }
            (Step::Quiet, b'E') => {
                tracing::debug!(fields = ?wire::error_fields(&f.body), "the gate's own statement failed");
            }
            (Step::Quiet, _) => {}
            (Step::Before, b'D') => r.before.add_row(&f.body),
            (Step::After, b'D') if r.after_read => r.verified = verify_row(&f.body),
            (Step::After, b'D') => r.after.add_row(&f.body),
            (Step::After, b'C') => r.after_read = true,
            (Step::Before | Step::After, b'E') => r.snap_failed = true,
            (Step::Before | Step::After, _) => {}
            (Step::Stmt, b'G') if r.copy => {
                // CopyInResponse: the client sends its data now (through `copy_from_client`).
                f.encode(&mut self.cout);
                self.copy_in = true;
            }
            (Step::Stmt, b'E') => {
                r.stmt_failed = true;
                self.copy_in = false;
                f.encode(&mut r.buffered);
            }
            (Step::Stmt, b'C') => {
                self.copy_in = false;
                let mut b = f.body.clone();
                if r.tags.len() < 100 {
                    r.tags.push(wire::cstr(&mut b, "CommandComplete").unwrap_or_default());
                }
                f.encode(&mut r.buffered);
            }
            (Step::Stmt, _) => {
                f.encode(&mut r.buffered);
                if r.buffered.len() > self.shared.config.max_message_bytes.max(16 << 20) {
                    // A statement returning more than this is not kept in the gate's memory:
                    // it is judged as over its limits (rolled back, held).
                    r.snap_failed = true;
                    r.buffered.clear();
                }
            }
            (Step::Plain | Step::Commit, b'E') => {
                let first = !r.failed;
                r.failed = true;
                if first {
                    let fields = wire::error_fields(&f.body);
                    r.error = fields.iter().find(|(t, _)| *t == b'M').map(|(_, m)| truncate(m, 1000));
                    self.relay_error(f);
                }
            }
            (Step::Plain, b'C') => {
                if !r.failed {
                    let mut b = f.body.clone();
                    if r.tags.len() < 100 {
                        r.tags.push(wire::cstr(&mut b, "CommandComplete").unwrap_or_default());
                    }
                    f.encode(&mut self.cout);
                }
            }
            (Step::Plain, _) => {
                if !r.failed {
                    f.encode(&mut self.cout);
                }
            }
            (Step::Commit, _) => {}
        }
        Ok(())
    }

    /// Every Query the run sent so far is answered: judge the measured statement, hold, go on
    /// or finish.
    async fn run_step_done(&mut self) -> Result<(), String> {
        let r = self.run.as_mut().expect("run");
        if let Some((sql, reasons, rows)) = r.pending_hold.take() {
            if r.copy {
                // Rolled back to the savepoint; the COPY's data is gone, so it cannot wait for
                // a person: refused in its place, and the rest of the Query is skipped.
                let message = copy_refused(&reasons, rows);
                r.units.push_front(Unit::Plain(raise_sql(&message), false));
                let _ = self
                    .audit(
                        EventKind::Rejected,
                        serde_json::json!({"state": "refused", "why": message, "sql": truncate(&sql, 16 * 1024)}),
                    )
                    .await;
                self.shared.metrics.refused.inc();
                self.run_next();
                return self.flush_server().await;
            }
            // Rolled back to the savepoint: now wait for a person.
            let mut d = r.decision.clone();
            d.reasons = reasons;
            return self.hold(sql, &d, Bytes::new(), false, Some(rows), true).await;
        }
        if r.copy_after && r.current.is_some() {
            // The COPY's data went through and it is answered: now the counters after.
            r.copy_after = false;
            if !r.stmt_failed && !r.failed {
                self.run_send_after();
                return self.flush_server().await;
            }
        }
        if let Some((sql, max_rows, probe)) = r.current.take() {
            if !probe {
                // Prepared again next time unless this measurement confirmed it.
                self.snap_prepared = r.verified;
            }
            if r.failed {
                r.buffered.clear();
            } else if r.stmt_failed {
                let buf = std::mem::take(&mut r.buffered);
                self.cout.extend_from_slice(&buf);
                r.failed = true;
                r.error = Some("failed (see the client's error)".into());
            } else {
                let (before, after, snap_failed) =
                    (r.before.clone(), r.after.clone(), r.snap_failed || !r.verified);
                let (over, rows) = self.judge(&before, &after, snap_failed, &sql, max_rows, probe);
                if over.is_empty() && !probe {
                    // The next measured write's before, unless something voids it first.
                    self.counters = Some(Snap { stale: true, ..after });
                }
                let r = self.run.as_mut().expect("run");
                r.tags.push(format!("ROWS CHANGED {rows}"));
                if over.is_empty() {
                    let buf = std::mem::take(&mut r.buffered);
                    self.cout.extend_from_slice(&buf);
                    self.shared.metrics.allowed.inc();
                    if !r.units.is_empty() {
                        // More of the string follows: released in the same flight as it.
                        self.run_send(Step::Quiet, RELEASE);
                    } else if !r.opened {
                        // The client's transaction goes on: released ahead of the client's
                        // next message, so the client hears back now.
                        self.release_pending = true;
                    }
                    // (In a transaction the gate opened, its COMMIT releases the savepoint.)
                } else {
                    r.buffered.clear();
                    r.tags.clear();
                    r.pending_hold = Some((sql, over, rows));
                    let _ = self
                        .audit(EventKind::Verdict, serde_json::json!({"row_guard": "over", "rows": rows}))
                        .await;
                    self.run_send(Step::Quiet, ROLLBACK_TO);
                    self.run_send(Step::Quiet, RELEASE);
                    return Ok(());
                }
            }
        }
        let r = self.run.as_mut().expect("run");
        if r.finishing && r.steps.is_empty() && r.units.is_empty() {
            return self.run_complete().await;
        }
        self.run_next();
        let r = self.run.as_ref().expect("run");
        if r.steps.is_empty() {
            // Nothing left to send (no transaction of the gate's to end).
            return self.run_complete().await;
        }
        self.flush_server().await
    }

    /// The counters read [`SNAPSHOT_STMT`] is prepared as on this server connection.
    fn snapshot_sql(&self) -> &'static str {
        if self.deferred_check { SNAPSHOT_DEFERRED_SQL } else { SNAPSHOT_SQL }
    }

    /// The changes of the measured statement against the row limits and the person's budgets:
    /// the reasons it is over them (none: keep it, and it is recorded in the budgets), and the
    /// rows it changed.
    fn judge(
        &mut self,
        before: &Snap,
        after: &Snap,
        snap_failed: bool,
        sql: &str,
        max_rows: u64,
        probe: bool,
    ) -> (Vec<String>, u64) {
        let mut over = Vec::new();
        if snap_failed || !after.rows_seen || !before.rows_seen {
            over.push("the gate could not read what the statement changed (its counters query failed or its result was too large), so it is held".to_string());
            return (over, 0);
        }
        if before.stale {
            // A stale before only ever charges more, except where a TRUNCATE or DROP reset a
            // table's counters since it was read: then what changed cannot be told apart.
            let back = before
                .tables
                .iter()
                .filter(|(oid, (_, n, _))| after.tables.get(*oid).map(|(_, a, _)| *a).unwrap_or(0) < *n)
                .count();
            if back > 0
                || after.column_changes < before.column_changes
                || after.relation_writes < before.relation_writes
                || after.exclusive_locks < before.exclusive_locks
            {
                over.push(format!(
                    "the transaction's row counters of {back} table(s) went back since the gate last read them (a TRUNCATE or DROP, e.g. inside a function, ran between two measured writes), so what this statement changed cannot be told, and it is held"
                ));
            }
        }
        if probe {
            // A DROP … IF EXISTS / TRUNCATE: kept only if every relation that existed before it
            // still exists, and every one whose file held data still has that file.
            match (&before.relations, &after.relations) {
                (Some(b), Some(a)) => {
                    let gone = b.iter().filter(|e| !a.contains(*e)).count();
                    if gone > 0 {
                        over.push(format!(
                            "it dropped or emptied {gone} existing relation(s) (tables with data, or any relation it dropped; a table rewritten — CLUSTER, ALTER TABLE … SET LOGGED — has a new file too and looks the same)"
                        ));
                    }
                }
                _ => over.push(
                    "the gate could not read which relations the statement dropped or emptied, so it is held"
                        .to_string(),
                ),
            }
            if after.foreign_locks.unwrap_or(u64::MAX) > before.foreign_locks.unwrap_or(0) {
                over.push(
                    "it locked a foreign table exclusively (a TRUNCATE there empties a table on another server)"
                        .to_string(),
                );
            }
        }
        if !probe && self.deferred_check && after.deferred_tables == Some(0) {
            // No table has a deferrable user trigger: the leaner read from the next measurement
            // on (prepared again in its flight). One made later is seen by server connections
            // opened after it.
            self.deferred_check = false;
            self.snap_prepared = false;
        }
        let policy = self.shared.guard.policy();
        let limits = crate::budget::Limits::from_policy(policy);
        let mut changed: Vec<(String, u64, i64)> = Vec::new();
        for (oid, (name, n, size)) in &after.tables {
            let before = before.tables.get(oid).map(|(_, b, _)| *b).unwrap_or(0);
            let d = n.saturating_sub(before);
            if d > 0 {
                changed.push((name.clone(), d, *size));
            }
        }
        changed.sort();
        let total: u64 = changed.iter().map(|(_, d, _)| d).sum();
        // A probed DROP/TRUNCATE takes its lock even when it destroys nothing; what it did
        // destroy is in the relations' entries above.
        if !probe && after.exclusive_locks > before.exclusive_locks {
            over.push(format!(
                "it took an ACCESS EXCLUSIVE lock on {} more relation(s): a DROP, TRUNCATE or rewrite (e.g. inside a function)",
                after.exclusive_locks - before.exclusive_locks
            ));
        }
        // A relation the transaction already held exclusively takes no new lock: its file
        // changed (TRUNCATE, rewrite) or it is gone (DROP). For a probe, the relations' entries
        // above judge the same.
        let replaced = before.exclusive_files.iter().filter(|e| !after.exclusive_files.contains(*e)).count();
        if !probe && after.relation_writes > before.relation_writes {
            over.push(
                "it created, dropped, emptied, rewrote or altered a relation (a CREATE, DROP, TRUNCATE or ALTER TABLE, e.g. inside a function)".to_string(),
            );
        }
        if !probe && after.column_changes > before.column_changes {
            over.push(
                "it dropped or redefined a table's columns (ALTER TABLE … DROP COLUMN, e.g. inside a function)".to_string(),
            );
        }
        if !probe && replaced > 0 {
            over.push(format!(
                "it emptied, rewrote or dropped {replaced} relation(s) the transaction had locked exclusively (a TRUNCATE or DROP, e.g. inside a function)"
            ));
        }
        if after.deferred_rows > before.deferred_rows {
            // Its trigger runs at COMMIT (the client's, or the gate's own right after this),
            // or at SET CONSTRAINTS … IMMEDIATE: neither is measured.
            over.push(format!(
                "it changed {} row(s) of a table with a deferrable trigger (CREATE CONSTRAINT TRIGGER … DEFERRABLE), whose code would run at COMMIT, where the gate cannot count what it changes",
                after.deferred_rows - before.deferred_rows
            ));
        }
        if total > max_rows {
            over.push(format!("row guard: it updated or deleted {total} rows, over the limit of {max_rows}"));
        }
        let person = self.id.person.name.clone();
        for (table, d, size) in &changed {
            let lim = policy.max_rows_for(table);
            if *d > lim {
                over.push(format!(
                    "row guard: {d} rows of {table} updated or deleted, over its limit of {lim}"
                ));
            }
            let used = self.shared.budgets.used(&person, table, limits.window);
            let budget = limits.limit_for((*size).max(0) as u64 + d);
            if used + d > budget {
                over.push(format!(
                    "budget: {person} already updated or deleted {used} rows of {table} in the last {} s; these {d} more would pass the budget of {budget}",
                    limits.window.as_secs()
                ));
            }
        }
        if over.is_empty() {
            for (table, d, _) in &changed {
                self.shared.budgets.record(&person, table, *d, sql);
            }
        }
        (over, total)
    }

    /// Answers the server owes for extended-protocol messages just sent (none while it skips).
    fn owe(&mut self, n: u32) {
        if !self.skipping {
            self.ext_pending += n;
        }
    }

    /// The measured Execute can start: everything before it is answered.
    async fn start_xrun(&mut self) -> Result<(), String> {
        let Some((f, sql, d, max_rows)) = self.pending_exec.take() else { return Ok(()) };
        if self.skipping {
            // The server skips it anyway (an error came earlier in the batch).
            self.track(&sql, true);
            f.encode(&mut self.sout);
            return Ok(());
        }
        let state = self.batch_state.unwrap_or(self.txn);
        if self.batch_txn_control || state == b'E' {
            let mut raw = BytesMut::new();
            f.encode(&mut raw);
            let mut d = d;
            d.reasons.push("a write after transaction control in the same extended-protocol batch cannot be measured: send Sync first".into());
            return self.hold(sql, &d, raw.freeze(), true, None, false).await;
        }
        let mut entries = VecDeque::new();
        if self.ext_pending > 0 {
            entries.push_back((XOwner::Pass, self.ext_pending));
        }
        // The last measurement's counters after, if nothing voided them since (see `counters`).
        let mut cached = self.counters.take();
        if state == b'I' && !self.batch_began {
            cached = None;
            // The batch's implicit transaction becomes a block the gate ends at Sync.
            frontend::encode_own_statement(&mut self.sout, "BEGIN");
            entries.push_back((XOwner::Quiet, 5));
            self.batch_began = true;
        }
        frontend::encode_own_statement(&mut self.sout, SAVEPOINT);
        entries.push_back((XOwner::Quiet, 5));
        // DDL (rare): its relations' files read by the gate's own statement, parsed in this
        // flight under the gate's reserved name, so nothing of the client's can stand in for it.
        let probe = d.statements.iter().any(|st| st.by_files);
        if probe {
            // A probe always reads its own before (its read lists the relations too).
            cached = None;
            frontend::encode_own_statement(&mut self.sout, SNAPSHOT_PROBE_SQL);
            entries.push_back((XOwner::Before, 5));
            f.encode(&mut self.sout);
            entries.push_back((XOwner::Client, 1));
            frontend::encode_own_statement(&mut self.sout, SNAPSHOT_PROBE_SQL);
            entries.push_back((XOwner::After, 5));
        } else {
            if !self.snap_prepared {
                let snapshot = self.snapshot_sql();
                frontend::encode_own_prepare(&mut self.sout, SNAPSHOT_STMT, snapshot);
                entries.push_back((XOwner::Quiet, 2));
            }
            if cached.is_none() {
                frontend::encode_own_execute(&mut self.sout, SNAPSHOT_STMT);
                entries.push_back((XOwner::Before, 3));
            }
            f.encode(&mut self.sout);
            entries.push_back((XOwner::Client, 1));
            frontend::encode_own_execute(&mut self.sout, SNAPSHOT_STMT);
            entries.push_back((XOwner::After, 3));
            frontend::encode_own_statement(&mut self.sout, VERIFY_SQL);
            entries.push_back((XOwner::Verify, 5));
        }
        frontend::encode_flush(&mut self.sout);
        self.xrun = Some(XRun {
            entries,
            buffered: BytesMut::new(),
            before: cached.unwrap_or_default(),
            after: Snap::default(),
            verified: false,
            sql,
            max_rows,
            decision: d,
            exec: f,
            phase: XPhase::Measuring,
            pending_hold: None,
            probe,
        });
        self.flush_server().await
    }

    /// A server frame during an extended-protocol measurement.
    async fn on_xrun_frame(&mut self, f: Frame) -> Result<(), String> {
        let x = self.xrun.as_mut().expect("xrun");
        let Some(&(owner, _)) = x.entries.front() else {
            f.encode(&mut self.cout);
            return Ok(());
        };
        if f.tag == b'E' {
            // The server now skips to the client's Sync: whatever failed, the client's Execute
            // did not run or will be undone with the transaction (aborted, as after any error).
            let x = self.xrun.take().expect("xrun");
            // Whether the gate's statement is still there is unknown: prepared again next time.
            self.snap_prepared = false;
            if owner == XOwner::Client {
                self.cout.extend_from_slice(&x.buffered);
            }
            self.error_since_ready = true;
            self.skipping = true;
            self.ext_pending = 0;
            self.relay_error(f);
            return self.flush_client().await;
        }
        let terminal = matches!(f.tag, b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'n')
            || (owner == XOwner::Pass && f.tag == b'T');
        if owner == XOwner::Pass && terminal {
            // Counted as the relay would have (see `on_server`).
            self.ext_pending = self.ext_pending.saturating_sub(1);
            self.answers += 1;
        }
        match (owner, f.tag) {
            (XOwner::Pass, _) => f.encode(&mut self.cout),
            (XOwner::Before, b'D') => x.before.add_row(&f.body),
            (XOwner::After, b'D') => x.after.add_row(&f.body),
            (XOwner::Verify, b'D') => x.verified = verify_row(&f.body),
            (XOwner::Client, _) => f.encode(&mut x.buffered),
            _ => {}
        }
        if terminal {
            let head = x.entries.front_mut().expect("entry");
            head.1 -= 1;
            let ended = head.1 == 0;
            if ended {
                x.entries.pop_front();
            }
            let done = x.entries.is_empty();
            if ended {
                let idle = done && self.outstanding == 0;
                self.attribute(!matches!(owner, XOwner::Pass | XOwner::Client), idle);
            }
            if done {
                self.xrun_step_done().await?;
            }
        }
        Ok(())
    }

    async fn xrun_step_done(&mut self) -> Result<(), String> {
        let x = self.xrun.as_mut().expect("xrun");
        match x.phase {
            XPhase::Measuring => {
                let (before, after, sql, max_rows, verified, probe) =
                    (x.before.clone(), x.after.clone(), x.sql.clone(), x.max_rows, x.verified, x.probe);
                if !probe {
                    self.snap_prepared = verified;
                }
                let (over, rows) = self.judge(&before, &after, !(verified || probe), &sql, max_rows, probe);
                if over.is_empty() && !probe {
                    // The next measured write's before, unless something voids it first.
                    self.counters = Some(Snap { stale: true, ..after });
                }
                let x = self.xrun.as_mut().expect("xrun");
                if over.is_empty() {
                    let buf = std::mem::take(&mut x.buffered);
                    self.cout.extend_from_slice(&buf);
                    // Released in the same flight as the client's next messages (its Sync,
                    // usually already here), not in a round trip of its own: queued now and
                    // sent when the session next writes to the server — after the client's
                    // answers went out, before anything of the client's that follows —, its
                    // five answers swallowed first.
                    frontend::encode_own_statement(&mut self.sout, RELEASE);
                    self.own_answers += 5;
                    let sql = std::mem::take(&mut x.sql);
                    self.xrun = None;
                    self.shared.metrics.allowed.inc();
                    self.track(&format!("{} (rows changed: {rows})", truncate(&sql, 150)), true);
                } else {
                    x.buffered.clear();
                    x.phase = XPhase::RollingBack;
                    x.pending_hold = Some((over, rows));
                    x.entries.push_back((XOwner::Quiet, 5));
                    x.entries.push_back((XOwner::Quiet, 5));
                    frontend::encode_own_statement(&mut self.sout, ROLLBACK_TO);
                    frontend::encode_own_statement(&mut self.sout, RELEASE);
                    frontend::encode_flush(&mut self.sout);
                    let _ = self
                        .audit(EventKind::Verdict, serde_json::json!({"row_guard": "over", "rows": rows}))
                        .await;
                    self.flush_server().await?;
                }
                self.flush_client().await
            }
            XPhase::RollingBack => {
                let x = self.xrun.take().expect("xrun");
                let (over, rows) = x.pending_hold.unwrap_or_default();
                let mut d = x.decision;
                d.reasons = over;
                let mut raw = BytesMut::new();
                // The measurement ran the portal to its end: approved, it is closed and bound
                // again from the client's own Bind (same statement, same parameters) before the
                // Execute; the Close and Bind answers are the gate's, not the client's.
                let portal = frontend::execute(&x.exec.body).map(|(p, _)| p).unwrap_or_default();
                if let Some(bind) = self.bound.get(&portal) {
                    let mut close = vec![b'P'];
                    close.extend_from_slice(portal.as_bytes());
                    close.push(0);
                    Frame { tag: b'C', body: Bytes::from(close) }.encode(&mut raw);
                    Frame { tag: b'B', body: bind.clone() }.encode(&mut raw);
                    self.next_hold_drop = vec![b'3', b'2'];
                }
                x.exec.encode(&mut raw);
                self.hold(x.sql, &d, raw.freeze(), true, Some(rows), false).await
            }
        }
    }

    /// The run is over: the client gets its ReadyForQuery and the outcome is recorded.
    async fn run_complete(&mut self) -> Result<(), String> {
        let r = self.run.take().expect("run");
        backend::ready(&mut self.cout, self.txn);
        self.timing_done();
        let done = InFlight { what: r.what, started: r.started, tags: r.tags, error: r.error };
        self.statement_done(done);
        self.flush_server().await?;
        self.flush_client().await
    }

    /// Opens an approval request and parks the statement.
    async fn hold(
        &mut self,
        sql: String,
        d: &Decision,
        on_approve: Bytes,
        extended: bool,
        rows: Option<u64>,
        resume_run: bool,
    ) -> Result<(), String> {
        let mut reasons = d.reasons.clone();
        if let Some(n) = rows {
            reasons.push(format!("it updated or deleted {n} rows (rolled back while it waits)"));
        }
        // An Execute's bound parameters: their count always, their values as configured.
        let parameters = if extended {
            self.bound.get(&self.last_exec_portal).map(|b| {
                crate::approvals::Parameters::new(
                    &frontend::bind_values(b),
                    self.shared.config.approval_parameters,
                )
            })
        } else {
            None
        };
        let ask = Ask::Statement {
            sql: sql.clone(),
            class: format!("{:?}", d.class).to_lowercase(),
            reasons: reasons.clone(),
            parameters: parameters.clone(),
        };
        let timeout = self.shared.config.approval_timeout;
        let (req, rx) = self.shared.approvals.open(
            &self.id.person.name,
            &self.id.client,
            Some(self.id.session),
            ask,
            None,
            timeout,
        );
        self.shared.metrics.held.inc();
        // A cancel that came before this hold (for an earlier statement) must not withdraw it.
        let _ = tokio::time::timeout(Duration::ZERO, self.cancel.notified()).await;
        let _ = self
            .audit(
                EventKind::ApprovalRequested,
                serde_json::json!({"approval": req.id, "sql": truncate(&sql, 16 * 1024), "reasons": reasons, "parameters": parameters}),
            )
            .await;
        let approvers: Vec<String> = self
            .shared
            .config
            .people
            .iter()
            .filter(|p| p.approver && p.name != self.id.person.name)
            .map(|p| p.name.clone())
            .collect();
        self.shared.alert(serde_json::json!({
            "alert": "approval_requested", "approval": req.id, "person": self.id.person.name,
            "client": self.id.client, "sql": truncate(&sql, 2000), "reasons": reasons,
        }));
        let msg = format!(
            "holdfast gate: statement held for approval {} ({}); waiting up to {}s",
            req.id,
            reasons.join("; "),
            timeout.as_secs()
        );
        let hint = format!(
            "approvers: {} — `holdfast gate approve {}` or `holdfast gate reject {}`; cancel the query to withdraw it",
            if approvers.is_empty() { "(none configured)".into() } else { approvers.join(", ") },
            req.id,
            req.id
        );
        let no_approver = approvers.is_empty();
        if !no_approver {
            self.notice(&msg, Some(&hint));
            self.flush_client().await?;
        }
        self.holding.store(true, std::sync::atomic::Ordering::SeqCst);
        let id = req.id.clone();
        self.held = Some(Held {
            id: req.id,
            rx,
            deadline: tokio::time::Instant::now() + timeout,
            on_approve,
            extended,
            sql,
            decision: d.clone(),
            resume_run,
            no_approver,
            drop_tags: std::mem::take(&mut self.next_hold_drop),
        });
        if no_approver {
            // Nobody but the requester could ever approve it: refused now, not after the
            // timeout.
            let state = self.shared.approvals.close(&id, false);
            return self.decided(state).await;
        }
        Ok(())
    }

    /// A held statement was decided (or timed out, or withdrawn).
    async fn decided(&mut self, state: State) -> Result<(), String> {
        let Some(h) = self.held.take() else { return Ok(()) };
        self.holding.store(false, std::sync::atomic::Ordering::SeqCst);
        match &state {
            State::Approved { by, .. } => {
                let _ = self.audit(EventKind::Approved, serde_json::json!({"approval": h.id, "approver": by, "sql": truncate(&h.sql, 16 * 1024)})).await;
                self.notice(&format!("holdfast gate: approval {} granted by {by}; running it", h.id), None);
                self.flush_client().await?;
                self.guard.apply(&h.decision);
                if h.resume_run {
                    // The measured statement runs as approved; the rest of its Query goes on.
                    if let Some(r) = self.run.as_mut() {
                        r.units.push_front(Unit::Plain(h.sql.clone(), false));
                    }
                    self.run_next();
                } else {
                    self.track(&h.sql, h.extended);
                    self.sout.extend_from_slice(&h.on_approve);
                    if !h.extended {
                        self.outstanding += 1;
                        self.guard.sync_sent();
                    } else {
                        let first = self.answers + u64::from(self.ext_pending);
                        self.drop_tags
                            .extend(h.drop_tags.iter().enumerate().map(|(i, t)| (first + i as u64, *t)));
                        self.owe(1 + h.drop_tags.len() as u32);
                    }
                }
            }
            other => {
                let (kind, text) = match other {
                    State::Rejected { by, reason, .. } => (
                        EventKind::Rejected,
                        format!(
                            "rejected by {by}{}",
                            reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    ),
                    State::Withdrawn { .. } => {
                        (EventKind::Rejected, "withdrawn (query canceled)".to_string())
                    }
                    _ if h.no_approver => (
                        EventKind::ApprovalExpired,
                        "it needs a second person's approval and no other approver is configured".to_string(),
                    ),
                    _ => (EventKind::ApprovalExpired, "nobody approved it in time".to_string()),
                };
                let _ = self
                    .audit(
                        kind,
                        serde_json::json!({"approval": h.id, "state": state_name(other), "why": text}),
                    )
                    .await;
                self.shared.metrics.refused.inc();
                let message = format!(
                    "holdfast gate: statement {} not run: {text} (held because: {})",
                    h.id,
                    h.decision.summary()
                );
                if h.resume_run {
                    // The refusal fails in the statement's place; the rest of the Query is
                    // skipped, as after any error.
                    if let Some(r) = self.run.as_mut() {
                        r.units.push_front(Unit::Plain(raise_sql(&message), false));
                    }
                    self.run_next();
                } else {
                    self.refuse(&message, h.extended);
                }
            }
        }
        self.flush_server().await
    }

    fn track(&mut self, sql: &str, extended: bool) {
        if extended {
            if self.batch.len() < 50 {
                self.batch.push(truncate(sql, 200));
            }
        } else {
            self.sent(sql);
        }
    }

    /// Puts a failing statement carrying `message` where the refused one was.
    fn refuse(&mut self, message: &str, extended: bool) {
        self.refuse_with(message, "42501", extended)
    }

    /// As `refuse`, with the SQLSTATE the client gets.
    fn refuse_with(&mut self, message: &str, code: &str, extended: bool) {
        self.track("(refused by the gate)", extended);
        let sql = raise_sql_code(message, code);
        if extended {
            if !self.skipping {
                // The client gets the error in its message's place, not the gate's own
                // ParseComplete and BindComplete before it.
                let first = self.answers + u64::from(self.ext_pending);
                self.drop_tags.extend([(first, b'1'), (first + 1, b'2')]);
            }
            frontend::encode_parse(&mut self.sout, &sql);
            frontend::encode_bind_unnamed(&mut self.sout);
            frontend::encode_execute_unnamed(&mut self.sout);
            self.owe(3);
        } else {
            self.send_query(&sql);
        }
    }
}

/// Why a COPY FROM STDIN over the limits was refused (not held: its data is gone).
fn copy_refused(reasons: &[String], rows: u64) -> String {
    format!(
        "holdfast gate: statement not run: {} (it updated or deleted {rows} rows through the table's triggers, rules or defaults; rolled back). A COPY cannot wait for approval, its data has gone through: have it approved as INSERT … VALUES or SELECT, or send fewer rows at a time",
        reasons.join("; ")
    )
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The built-in large-object functions by OID (pg_proc.dat: fixed for a major version; user
/// objects get OIDs from 16384 up, so none can take these) with their arity.
fn large_object_function(oid: u32) -> Option<(&'static str, usize)> {
    Some(match oid {
        715 => ("lo_create", 1),
        764 => ("lo_import", 1),
        765 => ("lo_export", 2),
        767 => ("lo_import", 2),
        952 => ("lo_open", 2),
        953 => ("lo_close", 1),
        954 => ("loread", 2),
        955 => ("lowrite", 2),
        956 => ("lo_lseek", 3),
        957 => ("lo_creat", 1),
        958 => ("lo_tell", 1),
        964 => ("lo_unlink", 1),
        1004 => ("lo_truncate", 2),
        3170 => ("lo_lseek64", 3),
        3171 => ("lo_tell64", 1),
        3172 => ("lo_truncate64", 2),
        3457 => ("lo_from_bytea", 2),
        3458 => ("lo_get", 1),
        3459 => ("lo_get", 3),
        3460 => ("lo_put", 3),
        _ => return None,
    })
}

/// The SQLSTATE of a statement refused because the audit log cannot record it:
/// insufficient_resources (a full or failing spool is the gate's condition, not the person's
/// permission; drivers treat class 53 as retryable later, as it is).
pub const AUDIT_UNAVAILABLE: &str = "53000";

/// The hint a refusal carries, by its SQLSTATE: only a refusal by policy is something an
/// approver can lift.
fn refusal_hint(code: &str) -> Option<&'static str> {
    match code {
        "42501" => Some("ask an approver, or see holdfast gate pending"),
        AUDIT_UNAVAILABLE => Some("the gate's operators see why in holdfast gate status and the gate's log"),
        _ => None,
    }
}

/// `DO` block raising `message` (SQLSTATE 42501); the message cannot escape its quoting.
pub fn raise_sql(message: &str) -> String {
    raise_sql_code(message, "42501")
}

/// As `raise_sql` with another SQLSTATE (five characters from [0-9A-Z], else 42501).
pub fn raise_sql_code(message: &str, code: &str) -> String {
    let code = if code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        code
    } else {
        "42501"
    };
    let clean: String = message.chars().filter(|c| *c != '\0').collect::<String>().replace('$', "＄");
    let quoted = clean.replace('\'', "''");
    let hint =
        refusal_hint(code).map(|h| format!(", HINT = '{}'", h.replace('\'', "''"))).unwrap_or_default();
    format!(
        "DO $holdfast$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{quoted}'{hint}; END$holdfast$"
    )
}

pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::RowGuard { .. } => "row_guard",
        Action::Approve => "approve",
        Action::Deny => "deny",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
