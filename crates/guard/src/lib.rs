//! The guard: every statement that reaches production through the gate is parsed with
//! PostgreSQL's own grammar (libpg_query) and classified from its whole parse tree as `read`,
//! `write`, `ddl` or `destructive`; the policy turns that into an [`Action`]. No IO, no async.
//!
//! ```
//! use guard::{Action, Class, Guard, Policy, Session};
//!
//! let guard = Guard::new(Policy::default());
//! let mut session = Session::default();
//! let d = guard.check_query(&mut session, "SELECT 1; /* harmless */ DROP TABLE orders");
//! assert_eq!(d.class, Class::Destructive);
//! assert_eq!(d.action, Action::Approve);
//! assert_eq!(d.statements[1].kind, "DROP TABLE");
//!
//! let d = guard.check_query(&mut session, "DELETE FROM orders WHERE id = 7");
//! assert_eq!(d.action, Action::RowGuard { max_rows: 1000 });
//! ```
//!
//! Fail closed: a parse failure, oversized input, a NUL byte, too many statements, an unknown
//! prepared statement or a parse-tree node the guard does not recognise never yields `Allow`.

mod classify;
mod functions;
mod policy;
mod shape;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use classify::{Analysis, Effect, StmtAnalysis};
pub use functions::builtin_names;
pub use policy::{ClassRules, KindRule, Policy, PolicyError, Rule, UnknownFunctions};

/// What a statement can do, from least to most dangerous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Read,
    Write,
    Ddl,
    Destructive,
}

/// What the gate does with a statement (or a whole Query message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    Allow,
    /// A write the gate runs under a savepoint and measures by the database's own counters (rows
    /// updated and deleted in every table, cascades and triggers included): kept if within
    /// `max_rows` (and the person's budgets), otherwise rolled back and held for approval.
    RowGuard {
        max_rows: u64,
    },
    /// Needs a second person's approval.
    Approve,
    /// Never runs (parse failure, oversized input, forbidden by policy) — fail closed.
    Deny,
}

impl Action {
    fn rank(&self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::RowGuard { .. } => 1,
            Action::Approve => 2,
            Action::Deny => 3,
        }
    }
}

/// Why a protocol Bind names nothing the guard can judge. The portal is left as it was: the
/// server fails the Bind too, so nothing runs under the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("prepared statement {0:?} is unknown to the gate: prepare it (Parse) before binding it")]
    UnknownStatement(String),
    #[error("prepared statement {0:?} was closed earlier in this batch: prepare it again before binding it")]
    Closed(String),
}

/// One statement of a decision.
#[derive(Debug, Clone, Serialize)]
pub struct StatementInfo {
    /// `SELECT`, `DELETE`, `DROP TABLE`, `SET ROLE`… (the policy key is this in snake case).
    pub kind: String,
    /// The statement's own text within the message (trimmed), e.g. to run one statement of a
    /// multi-statement Query under a savepoint.
    pub text: String,
    pub class: Class,
    pub action: Action,
    /// Why the statement is more than a read, for people.
    pub reasons: Vec<String>,
    /// Tables and other objects it names, as written.
    pub objects: Vec<String>,
    /// DROP … IF EXISTS of relations or TRUNCATE: destroys something only if what it names
    /// exists (TRUNCATE: holds data). The gate may measure it instead of holding it.
    pub probe: bool,
    /// A measured DDL statement (or REFRESH MATERIALIZED VIEW), action `RowGuard`: the gate
    /// judges it as it judges a probe — by the row counters and by the relations' files (none
    /// that existed may be gone, no table that held data may have a new file) — not by the
    /// ACCESS EXCLUSIVE locks it takes itself. What it runs that the statement does not show
    /// (event triggers, index expressions, a materialized view's query) is counted.
    pub by_files: bool,
    /// Runs code that is not built in — a function or operator the guard does not know, a
    /// built-in name the database overloads, a cast to a domain with CHECK constraints, a
    /// relation whose reading runs such code — measured (or held) where it runs. PostgreSQL
    /// may run it while *planning* (an IMMUTABLE or STABLE function with constant arguments
    /// is folded, an index expression simplified), which for the extended protocol happens at
    /// Bind, before the gate's measurement begins with the Execute: the gate refuses such a
    /// Bind (see the gate's session module).
    pub runs_code: bool,
}

/// How the reason of a refusal begins when PostgreSQL's own parser rejected the text (the
/// gate then answers with the server's SQLSTATE for it, 42601).
pub const PARSER_REJECTED: &str = "PostgreSQL's parser rejected the SQL";

/// The guard's verdict on a Query message, a Parse or an Execute.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub action: Action,
    /// The highest class over all statements (`destructive` when the text was refused unparsed).
    pub class: Class,
    pub statements: Vec<StatementInfo>,
    /// Human-readable, e.g. "DELETE without WHERE on public.orders".
    pub reasons: Vec<String>,
    /// Prepared-statement changes (PREPARE/DEALLOCATE/DISCARD ALL) of a message held for
    /// approval: applied by [`Session::apply`] when the gate sends it on.
    #[serde(skip)]
    pending: Option<Arc<Overlay>>,
}

impl Decision {
    fn refused(reason: String) -> Decision {
        Decision {
            action: Action::Deny,
            class: Class::Destructive,
            statements: Vec::new(),
            reasons: vec![reason],
            pending: None,
        }
    }

    /// The reasons as one line, for a NOTICE or an error message.
    pub fn summary(&self) -> String {
        if self.reasons.is_empty() {
            let kinds: Vec<&str> = self.statements.iter().map(|s| s.kind.as_str()).collect();
            format!("{:?}: {}", self.class, kinds.join("; ")).to_lowercase()
        } else {
            self.reasons.join("; ")
        }
    }
}

/// Up to this many parsed texts are kept, in two generations of half the size each.
const CACHE_ENTRIES: usize = 1024;
/// Longer texts are not cached (their analysis is not worth the memory).
const CACHE_MAX_TEXT: usize = 8 * 1024;
/// A name re-prepared this often without the server confirming is refused.
const MAX_STALE: usize = 8;
/// EXECUTE of a prepared statement that executes another…: at most this deep.
const MAX_EXECUTE_DEPTH: usize = 4;

/// A bounded cache of analyses by SQL text: two generations; a hit in the old one moves to the
/// new one; when the new one is full the old one is dropped. Memory stays under
/// `CACHE_ENTRIES` entries of at most `CACHE_MAX_TEXT` bytes of text each.
#[derive(Default)]
struct Cache {
    young: HashMap<Box<str>, Arc<Analysis>>,
    old: HashMap<Box<str>, Arc<Analysis>>,
}

impl Cache {
    fn get(&mut self, sql: &str) -> Option<Arc<Analysis>> {
        if let Some(a) = self.young.get(sql) {
            return Some(a.clone());
        }
        let a = self.old.remove(sql)?;
        self.insert(sql, a.clone());
        Some(a)
    }

    fn insert(&mut self, sql: &str, a: Arc<Analysis>) {
        if self.young.len() >= CACHE_ENTRIES / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(sql.into(), a);
    }
}

/// Classifies statements under one policy. Shared by every connection (`&self` everywhere).
pub struct Guard {
    policy: Policy,
    /// One cache per lexing (standard_conforming_strings on, off).
    caches: [Mutex<Cache>; 2],
    /// Analyses by shape ([`shape::key`]): texts that differ from a seen one only in the values
    /// of constants, under standard_conforming_strings on, one statement, and an analysis that
    /// never read a constant's value. Bounded like the text cache.
    shapes: Mutex<Cache>,
    stats: [AtomicU64; 3],
}

/// How the guard's analyses were obtained, since it started (for the gate's metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CacheStats {
    /// Full parses and classifications.
    pub parsed: u64,
    /// Answered from the text cache (the same text seen before).
    pub text_hits: u64,
    /// Answered from the shape cache (the same text but for constants' values): no parse.
    pub shape_hits: u64,
}

/// Per connection: the prepared statements the server may hold (by name) and settings that
/// change how later statements must be read.
///
/// The guard records a Parse/PREPARE/Close/DEALLOCATE as soon as it is checked, but the server
/// may skip it (an error earlier in a pipeline makes it discard messages up to Sync). So a name
/// whose binding changed keeps its previous bindings as "stale" until the gate reports, with
/// [`Session::synced`], that the batch went through without error; EXECUTE of a name is judged
/// by the strictest of its current and stale bindings. A gate that never calls `synced` is
/// merely stricter.
#[derive(Default)]
pub struct Session {
    statements: HashMap<String, Binding>,
    /// Names whose binding changed, with the sync point they were sent after.
    changed: HashMap<String, u64>,
    /// Portals by name — protocol portals (Bind) and SQL cursors (DECLARE) share one namespace
    /// on the server, so here too. Each holds what was bound into it *at Bind time*.
    portals: HashMap<String, Portal>,
    portals_changed: HashMap<String, u64>,
    /// Sync points (Query or Sync messages) sent to the server so far ([`Session::sync_sent`]).
    sent: u64,
    /// ReadyForQuery messages seen so far ([`Session::ready`]).
    answered: u64,
    search_path_tampered: bool,
    /// The database holds, outside pg_catalog, a function or operator named like a built-in
    /// the guard takes for safe ([`builtin_names`]).
    builtins_shadowed: bool,
    /// Domains (by name) with CHECK constraints: a cast to one runs them.
    checked_domains: std::collections::HashSet<String>,
    /// Relations (by name) whose reading may run code that is not built in.
    code_relations: std::collections::HashSet<String>,
    /// Types (by name) whose comparison or statistics run code that is not built in (a range's
    /// `subtype_diff`, a default operator class or a cast of a user's, or a type holding one):
    /// ANALYZE — autovacuum's too, with no statement at all — runs it over a column of one.
    code_types: std::collections::HashSet<String>,
    /// The gate's knowledge of the catalog may be out of date and cannot be read again now
    /// (a REPEATABLE READ transaction's snapshot, a pipelined batch): every statement naming a
    /// relation or a type, or calling a built-in by an unqualified name, counts as running
    /// code (see [`Session::set_catalog_unknown`]).
    catalog_unknown: bool,
    lexing: Lexing,
}

/// What a portal may run: every analysis that may have been bound into it, each with the sync
/// point its Bind (or DECLARE) was sent after.
#[derive(Default)]
struct Portal {
    current: Vec<(Arc<Analysis>, u64)>,
    stale: Vec<(Arc<Analysis>, u64)>,
    /// DECLARE … WITH HOLD: survives the end of its transaction.
    hold: bool,
    /// Re-bound too often without the server confirming: what it runs is no longer tracked,
    /// so it is refused until the server confirms a binding.
    overflow: bool,
}

impl Portal {
    fn all(&self) -> Vec<Arc<Analysis>> {
        self.current.iter().chain(self.stale.iter()).map(|(a, _)| a.clone()).collect()
    }
}

/// How the server lexes string literals (standard_conforming_strings).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Lexing {
    /// `on`, PostgreSQL's default since 9.1.
    #[default]
    Standard,
    /// `off`: a backslash escapes inside '…'.
    Backslash,
    /// A message may have changed it and the server has not reported the value yet.
    Unknown,
}

#[derive(Default)]
struct Binding {
    current: Option<Arc<Analysis>>,
    stale: Vec<Arc<Analysis>>,
    overflow: bool,
}

impl Session {
    /// Protocol Close of a statement (or the effect of `DEALLOCATE name`).
    pub fn close_statement(&mut self, name: &str) {
        if let Some(b) = self.statements.get_mut(name) {
            if let Some(cur) = b.current.take() {
                push_stale(b, cur);
            }
            self.changed.insert(name.to_string(), self.sent);
        }
    }

    /// The gate sent the server a message that ends in ReadyForQuery (Query or Sync). Changes
    /// checked after this call belong to the next batch.
    pub fn sync_sent(&mut self) {
        self.sent += 1;
    }

    /// The server answered ReadyForQuery. `no_error`: no ErrorResponse since the previous
    /// ReadyForQuery, so every Parse/Close/PREPARE/DEALLOCATE checked since then took effect and
    /// the earlier bindings of those names are gone. After an error they stay suspected.
    pub fn synced(&mut self, no_error: bool) {
        self.ready(no_error, false);
    }

    /// ReadyForQuery with its transaction status: `idle` ('I') means the transaction ended, and
    /// with it every portal bound before this sync point except cursors declared WITH HOLD.
    /// Bindings sent after this sync point (a pipelining client) are kept.
    pub fn ready(&mut self, no_error: bool, idle: bool) {
        self.answered += 1;
        let k = self.answered;
        let mine: Vec<String> =
            self.changed.iter().filter(|(_, e)| **e < k).map(|(n, _)| n.clone()).collect();
        for name in mine {
            self.changed.remove(&name);
            if !no_error {
                continue;
            }
            if let Some(b) = self.statements.get_mut(&name) {
                b.stale.clear();
                b.overflow = false;
                if b.current.is_none() {
                    self.statements.remove(&name);
                }
            }
        }
        let mine: Vec<String> =
            self.portals_changed.iter().filter(|(_, e)| **e < k).map(|(n, _)| n.clone()).collect();
        for name in mine {
            self.portals_changed.remove(&name);
            if no_error && let Some(p) = self.portals.get_mut(&name) {
                p.stale.clear();
                p.overflow = false;
            }
        }
        if idle {
            for p in self.portals.values_mut() {
                if !p.hold {
                    p.current.retain(|(_, e)| *e >= k);
                    p.stale.retain(|(_, e)| *e >= k);
                }
            }
        }
        self.portals.retain(|_, p| !p.current.is_empty() || !p.stale.is_empty());
    }

    /// Protocol Bind: portal `portal` now runs what statement `statement` may be bound to
    /// (judged later by this, never by the statement's name at Execute). Unknown statement:
    /// `Err` (the server fails the Bind too).
    pub fn bind_portal(&mut self, portal: &str, statement: &str) -> Result<(), BindError> {
        let Some((mut analyses, _)) = self.lookup(statement) else {
            return Err(BindError::UnknownStatement(statement.to_string()));
        };
        if self.changed.get(statement) == Some(&self.sent) {
            // The statement was (re)parsed in this very batch: had that failed, the server
            // would skip this Bind too (everything up to Sync), so only the new text can be
            // bound. Earlier versions matter only across a Sync the server has not confirmed.
            match self.statements.get(statement).and_then(|b| b.current.clone()) {
                Some(a) => analyses = vec![a],
                None => return Err(BindError::Closed(statement.to_string())),
            }
        }
        let sent = self.sent;
        self.set_portal(portal, analyses.into_iter().map(|a| (a, sent)).collect(), false);
        Ok(())
    }

    fn set_portal(&mut self, portal: &str, bound: Vec<(Arc<Analysis>, u64)>, hold: bool) {
        let p = self.portals.entry(portal.to_string()).or_default();
        let old = std::mem::take(&mut p.current);
        // The server refuses to re-bind an open named portal (the old one stays) and replaces
        // the unnamed one; either way, until the server confirms, the old binding may run.
        p.stale.extend(old);
        if p.stale.len() > 4 * MAX_STALE {
            p.stale.truncate(4 * MAX_STALE);
            p.overflow = true;
        }
        p.current = bound;
        p.hold |= hold;
        self.portals_changed.insert(portal.to_string(), self.sent);
    }

    /// Protocol Close of a portal, or `CLOSE name`.
    pub fn close_portal(&mut self, portal: &str) {
        if let Some(p) = self.portals.get_mut(portal) {
            let old = std::mem::take(&mut p.current);
            p.stale.extend(old);
            self.portals_changed.insert(portal.to_string(), self.sent);
        }
    }

    fn close_all_portals(&mut self) {
        let names: Vec<String> = self.portals.keys().cloned().collect();
        for n in names {
            self.close_portal(&n);
        }
    }

    /// How many portals (and cursors) the session tracks.
    pub fn portal_count(&self) -> usize {
        self.portals.len()
    }

    /// A ParameterStatus from the server (at connection start and whenever a reported setting
    /// changes). The guard uses `standard_conforming_strings` to lex statements as the server
    /// will; the gate should pass every ParameterStatus it sees.
    pub fn server_parameter(&mut self, name: &str, value: &str) {
        if name.eq_ignore_ascii_case("standard_conforming_strings") {
            self.lexing =
                if value.eq_ignore_ascii_case("off") { Lexing::Backslash } else { Lexing::Standard };
        }
    }

    /// How many statement names the session tracks.
    pub fn prepared_count(&self) -> usize {
        self.statements.len()
    }

    /// Whether search_path was set so that another schema comes before pg_catalog (from then on,
    /// unqualified calls to built-in functions count as unknown functions).
    pub fn search_path_tampered(&self) -> bool {
        self.search_path_tampered
    }

    /// The gate found in the session's database a function or operator outside pg_catalog
    /// named like a built-in the guard takes for safe ([`builtin_names`]): PostgreSQL may pick it
    /// over the built-in by its argument types (`lower(5)` runs `public.lower(int)`), so from now
    /// on unqualified calls of built-ins count as unknown functions (measured in a SELECT).
    pub fn set_builtins_shadowed(&mut self) {
        self.builtins_shadowed = true;
    }

    /// The gate found these domains (names, as PostgreSQL stores them) with CHECK constraints
    /// in the session's database, or over such a domain: a cast to one runs its CHECK — a
    /// function of the application's among them — so a statement casting to one counts as
    /// calling an unknown function (a SELECT is measured).
    pub fn set_checked_domains(&mut self, names: impl IntoIterator<Item = String>) {
        self.checked_domains.extend(names);
    }

    /// The gate found these relations (names, as PostgreSQL stores them) in the session's
    /// database whose reading may run code that is not built in: a view whose query calls a
    /// function or operator of a user's (or reads such a relation), a table with a row-level
    /// security policy that does, or with an index whose expression or predicate does (the
    /// planner evaluates its constant parts when it loads the index), or a default that does
    /// (folded into an INSERT's plan), or with a column of a checked or code type (a literal
    /// or parameter converted to it runs the type's input). A statement naming one — writing
    /// it included — counts as calling an unknown function: a SELECT is measured.
    pub fn set_code_relations(&mut self, names: impl IntoIterator<Item = String>) {
        self.code_relations.extend(names);
    }

    /// The gate found these types (names) whose comparison or statistics run code that is not
    /// built in: a table created with a column of one plants that code where autovacuum's
    /// ANALYZE runs it unmeasured, so such a CREATE TABLE counts as running code (held).
    pub fn set_code_types(&mut self, names: impl IntoIterator<Item = String>) {
        self.code_types.extend(names);
    }

    /// The gate read the catalog again: what it found replaces what the session knew (an
    /// object dropped no longer counts), and the knowledge is current.
    pub fn set_catalog(
        &mut self,
        shadowed: bool,
        domains: Vec<String>,
        relations: Vec<String>,
        code_types: Vec<String>,
    ) {
        self.builtins_shadowed = shadowed;
        self.checked_domains = domains.into_iter().collect();
        self.code_relations = relations.into_iter().collect();
        self.code_types = code_types.into_iter().collect();
        self.catalog_unknown = false;
    }

    /// The gate's knowledge of the catalog may be out of date and it cannot read it again
    /// before the next statements run (inside a REPEATABLE READ or SERIALIZABLE transaction
    /// the catalog read sees the transaction's snapshot while PostgreSQL's executor uses a
    /// fresh one; a client pipelining behind unanswered messages): until the next
    /// [`Session::set_catalog`], a statement that names any relation or type, or calls a
    /// built-in by an unqualified name, counts as running code (measured, or held where it
    /// cannot be; a Bind of it is refused).
    pub fn set_catalog_unknown(&mut self) {
        self.catalog_unknown = true;
    }

    /// See [`Session::set_catalog_unknown`].
    pub fn catalog_unknown(&self) -> bool {
        self.catalog_unknown
    }

    fn bind(&mut self, name: &str, analysis: Arc<Analysis>) {
        let b = self.statements.entry(name.to_string()).or_default();
        if let Some(cur) = b.current.take() {
            push_stale(b, cur);
        }
        b.current = Some(analysis);
        self.changed.insert(name.to_string(), self.sent);
    }

    fn close_all(&mut self) {
        let names: Vec<String> = self.statements.keys().cloned().collect();
        for n in names {
            self.close_statement(&n);
        }
    }

    /// Every analysis the server may have bound to `name`, and whether too many were.
    fn lookup(&self, name: &str) -> Option<(Vec<Arc<Analysis>>, bool)> {
        let b = self.statements.get(name)?;
        let all: Vec<Arc<Analysis>> = b.current.iter().chain(b.stale.iter()).cloned().collect();
        if all.is_empty() { None } else { Some((all, b.overflow)) }
    }
}

/// Prepared-statement changes made by one message, in effect for the statements after them in
/// the same message (PostgreSQL runs a message's statements in order and stops at the first
/// error, so within a message this view is exact).
#[derive(Debug, Default)]
struct Overlay {
    /// `Some` = (re)prepared, `None` = deallocated.
    names: HashMap<String, Option<Arc<Analysis>>>,
    /// DEALLOCATE ALL or DISCARD ALL came before every entry of `names`.
    cleared: bool,
    /// Cursors: `Some((query, hold))` = declared, `None` = closed.
    portals: HashMap<String, Option<(Arc<Analysis>, bool)>>,
    /// CLOSE ALL / DISCARD ALL came before every entry of `portals`.
    portals_cleared: bool,
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.cleared && self.portals.is_empty() && !self.portals_cleared
    }
}

/// The session as the statements of one message see it.
#[derive(Clone, Copy)]
struct View<'a> {
    session: &'a Session,
    overlay: Option<&'a Overlay>,
}

impl View<'_> {
    fn lookup(&self, name: &str) -> Option<(Vec<Arc<Analysis>>, bool)> {
        if let Some(o) = self.overlay {
            match o.names.get(name) {
                Some(Some(a)) => return Some((vec![a.clone()], false)),
                Some(None) => return None,
                None if o.cleared => return None,
                None => {}
            }
        }
        self.session.lookup(name)
    }

    /// What portal (or cursor) `name` may run; `None` when the gate never saw it bound.
    fn lookup_portal(&self, name: &str) -> Option<Vec<Arc<Analysis>>> {
        if let Some(o) = self.overlay {
            match o.portals.get(name) {
                Some(Some((a, _))) => return Some(vec![a.clone()]),
                Some(None) => return Some(Vec::new()),
                None if o.portals_cleared => return Some(Vec::new()),
                None => {}
            }
        }
        self.session.portals.get(name).map(Portal::all)
    }
}

impl Session {
    /// The gate sends on a message that was held for approval (`Action::Approve`): its
    /// PREPARE/DEALLOCATE/DISCARD ALL now take effect in the guard's view too. A message that is
    /// never sent changes no binding.
    pub fn apply(&mut self, decision: &Decision) {
        if let Some(o) = &decision.pending {
            self.commit(o);
        }
    }

    fn commit(&mut self, o: &Overlay) {
        if o.cleared {
            self.close_all();
        }
        for (name, a) in &o.names {
            match a {
                Some(a) => self.bind(name, a.clone()),
                None => self.close_statement(name),
            }
        }
        if o.portals_cleared {
            self.close_all_portals();
        }
        for (name, p) in &o.portals {
            match p {
                Some((a, hold)) => {
                    let sent = self.sent;
                    self.set_portal(name, vec![(a.clone(), sent)], *hold)
                }
                None => self.close_portal(name),
            }
        }
    }

    /// A Parse of text that would prepare statements when executed: the new bindings become
    /// possible ones, never replacing what the server may hold.
    fn add_candidates(&mut self, o: &Overlay) {
        for (name, a) in &o.names {
            if let Some(a) = a {
                let b = self.statements.entry(name.clone()).or_default();
                push_stale(b, a.clone());
            }
        }
        for (name, p) in &o.portals {
            if let Some((a, hold)) = p {
                let sent = self.sent;
                let portal = self.portals.entry(name.clone()).or_default();
                portal.stale.push((a.clone(), sent));
                portal.hold |= *hold;
            }
        }
    }
}

fn push_stale(b: &mut Binding, a: Arc<Analysis>) {
    if b.stale.iter().any(|s| Arc::ptr_eq(s, &a)) {
        return;
    }
    if b.stale.len() >= MAX_STALE {
        b.overflow = true;
    } else {
        b.stale.push(a);
    }
}

/// Statement kinds that start, end or cut a transaction.
pub const TRANSACTION_CONTROL: &[&str] = &[
    "BEGIN",
    "START TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "ROLLBACK TO SAVEPOINT",
    "PREPARE TRANSACTION",
    "COMMIT PREPARED",
    "ROLLBACK PREPARED",
    "TRANSACTION",
];

/// Kinds of DDL whose column types are those of the object they create: a domain's CHECKs
/// named there run only when the new object is written (measured), not in anything that
/// exists already (see `classify::StmtAnalysis::type_names`).
const CREATES_ITS_TYPES: &[&str] = &["CREATE TABLE", "CREATE FOREIGN TABLE", "CREATE TYPE", "CREATE DOMAIN"];

/// Kinds of DDL (measured by the relations' files) whose new object refers to or copies the
/// relations the statement names: a view's query, a policy's expressions, `CREATE TABLE …
/// (LIKE src)`, `INHERITS (src)`, `PARTITION OF src` (indexes, statistics, CHECKs and defaults
/// come along). Naming a relation whose reading runs code that is not built in plants that
/// code where later statements run it.
const PLANTS_RELATIONS: &[&str] = &["CREATE VIEW", "CREATE POLICY", "ALTER POLICY", "CREATE TABLE"];

/// Whether the analysis of `sql` holds for every text of its shape: one plain query or DML
/// statement (no session effects, no EXECUTE/FETCH of other statements), whose verdict never
/// read a constant's value, and whose text is the message's (up to a final `;`).
fn shape_reusable(a: &Analysis, text: &str) -> bool {
    let [st] = a.statements.as_slice() else { return false };
    a.error.is_none()
        && !a.reads_constants
        && matches!(st.kind.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE")
        && st.effects.is_empty()
        && st.executes.is_empty()
        && st.fetches.is_empty()
        && st.text == text
}

/// A statement resolved against a session.
struct Resolved {
    class: Class,
    reasons: Vec<String>,
    row_guard: Option<String>,
    /// Run under a savepoint and measured by the database's counters.
    measure: bool,
    /// Measured by the counters and the relations' files (DDL): see [`StatementInfo::by_files`].
    by_files: bool,
    /// See [`StatementInfo::runs_code`].
    runs_code: bool,
    deny: Option<String>,
}

/// Which session changes a checked text makes.
#[derive(Clone, Copy, PartialEq)]
enum Apply {
    /// A Query message: it runs now, in order.
    All,
    /// A Parse: nothing runs until Execute, so only changes that make the guard stricter.
    TightenOnly,
}

impl Guard {
    pub fn new(policy: Policy) -> Guard {
        Guard {
            policy,
            caches: [Mutex::new(Cache::default()), Mutex::new(Cache::default())],
            shapes: Mutex::new(Cache::default()),
            stats: Default::default(),
        }
    }

    /// How many analyses were parsed, and how many came from the caches.
    pub fn cache_stats(&self) -> CacheStats {
        let n = |i: usize| self.stats[i].load(Ordering::Relaxed);
        CacheStats { parsed: n(0), text_hits: n(1), shape_hits: n(2) }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A simple-protocol Query message (may hold several statements) or SQL run via the CLI.
    pub fn check_query(&self, session: &mut Session, sql: &str) -> Decision {
        // A simple Query destroys the unnamed prepared statement and the unnamed portal on the
        // server.
        session.close_statement("");
        session.close_portal("");
        let analysis = self.analysis_for(session, sql);
        self.decide(&analysis, session, Apply::All)
    }

    /// Extended protocol Parse: classifies `sql`, remembers the decision under statement `name`
    /// ("" = unnamed). The decision says what executing it would need; the gate enforces it at
    /// Execute ([`Guard::check_execute`]).
    pub fn check_parse(&self, session: &mut Session, name: &str, sql: &str) -> Decision {
        if !session.statements.contains_key(name)
            && session.statements.len() >= self.policy.max_prepared_statements
        {
            return Decision::refused(format!(
                "this session already holds {} prepared statements (policy max_prepared_statements); close some first",
                session.statements.len()
            ));
        }
        let analysis = self.analysis_for(session, sql);
        let decision = self.decide(&analysis, session, Apply::TightenOnly);
        session.bind(name, analysis);
        decision
    }

    /// Extended protocol Execute of portal `portal`: judged by every text that may have been
    /// bound into it (at Bind, or by DECLARE), never by the statement's name now. An unknown
    /// portal is refused (fail closed).
    pub fn check_execute_portal(&self, session: &Session, portal: &str) -> Decision {
        let view = View { session, overlay: None };
        if session.portals.get(portal).is_some_and(|p| p.overflow) {
            return Decision::refused(format!(
                "portal {portal:?} was re-bound too often without the server confirming; Sync and Bind it again"
            ));
        }
        let bound_now = session.portals_changed.get(portal) == Some(&session.sent);
        let found = if bound_now {
            // Bound in this batch: a failed Bind would make the server skip this Execute too.
            session.portals.get(portal).map(|p| p.current.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
        } else {
            view.lookup_portal(portal)
        };
        match found {
            None => Decision::refused(format!(
                "portal {portal:?} was never bound through the gate; it is not run (Bind it again)"
            )),
            Some(analyses) if analyses.is_empty() => {
                Decision::refused(format!("portal {portal:?} was closed; it is not run (Bind it again)"))
            }
            Some(analyses) => {
                let mut decisions: Vec<Decision> =
                    analyses.iter().map(|a| self.decide_readonly(a, view, 0)).collect();
                let strictest = decisions
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, d)| (d.action.rank(), d.class))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                let mut d = decisions.swap_remove(strictest);
                if analyses.len() > 1 {
                    d.reasons.insert(
                        0,
                        format!("portal {portal:?} was re-bound, but the server has not confirmed it: an earlier binding may still run"),
                    );
                }
                d
            }
        }
    }

    /// Extended protocol Execute of a portal bound from prepared statement `name`: the decision
    /// remembered at Parse, judged against the session as it is now (unknown name ⇒ Deny, fail
    /// closed).
    pub fn check_execute(&self, session: &Session, statement: &str) -> Decision {
        match session.lookup(statement) {
            None => Decision::refused(format!(
                "prepared statement {statement:?} is unknown to the gate; it is not run (Parse it again)"
            )),
            Some((_, true)) => Decision::refused(format!(
                "prepared statement {statement:?} was re-prepared too often without the server confirming; Sync and Parse it again"
            )),
            Some((analyses, false)) => {
                let mut decisions: Vec<Decision> = analyses
                    .iter()
                    .map(|a| self.decide_readonly(a, View { session, overlay: None }, 0))
                    .collect();
                let strictest = decisions
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, d)| (d.action.rank(), d.class))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                let mut d = decisions.swap_remove(strictest);
                if analyses.len() > 1 && strictest != 0 {
                    d.reasons.insert(
                        0,
                        format!("prepared statement {statement:?} was re-prepared, but the server has not confirmed it: an earlier version may still be bound"),
                    );
                }
                d
            }
        }
    }

    /// The analysis of `sql`, from the cache when the same text (or, under standard lexing, the
    /// same shape: the same text but for the values of constants) was seen recently.
    fn analysis(&self, sql: &str, standard_strings: bool) -> Arc<Analysis> {
        let cache = &self.caches[usize::from(!standard_strings)];
        let cacheable = sql.len() <= CACHE_MAX_TEXT;
        if cacheable && let Some(a) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(sql) {
            self.stats[1].fetch_add(1, Ordering::Relaxed);
            return a;
        }
        // The scanner lexes as standard_conforming_strings = on: the other lexing never shares.
        let shape = if cacheable && standard_strings { shape::shape(sql) } else { None };
        if let Some(sh) = &shape
            && let Some(a) = self.shapes.lock().unwrap_or_else(|e| e.into_inner()).get(&sh.key)
        {
            self.stats[2].fetch_add(1, Ordering::Relaxed);
            // Everything but the statement's text is the same for every text of the shape.
            let mut st = a.statements[0].clone();
            st.text = shape::statement_text(sql, sh).to_string();
            return Arc::new(Analysis { error: None, statements: vec![st], reads_constants: false });
        }
        self.stats[0].fetch_add(1, Ordering::Relaxed);
        let a = Arc::new(classify::analyze(sql, &self.policy, standard_strings));
        match shape {
            Some(sh) if shape_reusable(&a, shape::statement_text(sql, &sh)) => {
                // One entry per shape; the text cache would only fill with one-off literals.
                self.shapes.lock().unwrap_or_else(|e| e.into_inner()).insert(&sh.key, a.clone());
            }
            _ if cacheable => cache.lock().unwrap_or_else(|e| e.into_inner()).insert(sql, a.clone()),
            _ => {}
        }
        a
    }

    /// The analysis of `sql` lexed as the session's server will. When that is unknown (a message
    /// may have changed standard_conforming_strings) and the text holds a backslash — the only
    /// case where the two lexings differ — both are analysed and the stricter one counts.
    fn analysis_for(&self, session: &Session, sql: &str) -> Arc<Analysis> {
        match session.lexing {
            Lexing::Standard => self.analysis(sql, true),
            Lexing::Backslash => self.analysis(sql, false),
            Lexing::Unknown => {
                let on = self.analysis(sql, true);
                if !sql.contains('\\') {
                    return on;
                }
                let off = self.analysis(sql, false);
                let rank = |a: &Analysis| (a.error.is_some(), a.statements.iter().map(|s| s.class).max());
                if rank(&off) > rank(&on) { off } else { on }
            }
        }
    }

    fn decide(&self, analysis: &Arc<Analysis>, session: &mut Session, apply: Apply) -> Decision {
        if let Some(e) = &analysis.error {
            return Decision::refused(e.clone());
        }
        let mut overlay = Overlay::default();
        let mut resolved = Vec::with_capacity(analysis.statements.len());
        for st in &analysis.statements {
            resolved.push(self.resolve(st, View { session, overlay: Some(&overlay) }, 0));
            for effect in &st.effects {
                match effect {
                    Effect::Prepare { name, analysis } => {
                        let held = session.statements.len() + overlay.names.len();
                        if !session.statements.contains_key(name)
                            && !overlay.names.contains_key(name)
                            && held >= self.policy.max_prepared_statements
                        {
                            let r = resolved.last_mut().expect("pushed above");
                            r.deny = Some(format!(
                                "this session already holds {held} prepared statements (policy max_prepared_statements)"
                            ));
                        } else {
                            overlay.names.insert(name.clone(), Some(analysis.clone()));
                        }
                    }
                    Effect::Deallocate(name) => {
                        overlay.names.insert(name.clone(), None);
                    }
                    Effect::DeallocateAll => {
                        overlay.names.clear();
                        overlay.cleared = true;
                    }
                    Effect::Declare { name, analysis, hold } => {
                        overlay.portals.insert(name.clone(), Some((analysis.clone(), *hold)));
                    }
                    Effect::ClosePortal(Some(name)) => {
                        overlay.portals.insert(name.clone(), None);
                    }
                    Effect::ClosePortal(None) => {
                        overlay.portals.clear();
                        overlay.portals_cleared = true;
                    }
                    // Only ever makes the guard stricter: applied even if the message never runs.
                    Effect::SearchPathTampered => session.search_path_tampered = true,
                    Effect::LexingUncertain => session.lexing = Lexing::Unknown,
                }
            }
        }
        let mut d = self.assemble(&analysis.statements, resolved);
        if !overlay.is_empty() {
            match (apply, &d.action) {
                (Apply::All, Action::Allow | Action::RowGuard { .. }) => session.commit(&overlay),
                (Apply::All, Action::Approve) => d.pending = Some(Arc::new(overlay)),
                (Apply::All, Action::Deny) => {}
                (Apply::TightenOnly, _) => session.add_candidates(&overlay),
            }
        }
        d
    }

    fn decide_readonly(&self, analysis: &Analysis, view: View<'_>, depth: usize) -> Decision {
        if let Some(e) = &analysis.error {
            return Decision::refused(e.clone());
        }
        let resolved = analysis.statements.iter().map(|st| self.resolve(st, view, depth)).collect();
        self.assemble(&analysis.statements, resolved)
    }

    /// A statement's class against the session: prepared statements it executes, and a
    /// search_path that makes unqualified built-ins suspect.
    fn resolve(&self, st: &StmtAnalysis, view: View<'_>, depth: usize) -> Resolved {
        let session = view.session;
        let mut r = Resolved {
            class: st.class,
            reasons: st.reasons.clone(),
            row_guard: st.row_guard.clone(),
            measure: st.measure,
            by_files: st.by_files,
            runs_code: false,
            deny: None,
        };
        for name in &st.fetches {
            if depth >= MAX_EXECUTE_DEPTH {
                // A portal over `FETCH … FROM` itself (or a chain of them): refused, not
                // followed forever.
                r.deny = Some("portals and prepared statements drive each other too deeply".into());
                continue;
            }
            if session.portals.get(name).is_some_and(|p| p.overflow) {
                r.deny =
                    Some(format!("portal {name:?} was re-bound too often without the server confirming"));
                continue;
            }
            match view.lookup_portal(name) {
                None => {
                    // A cursor the gate never saw opened: a function may have opened it over a
                    // DELETE … RETURNING, which runs at the first FETCH. Counted like any write.
                    r.class = r.class.max(Class::Write);
                    r.measure = true;
                    r.reasons.push(format!(
                        "FETCH/MOVE from {name:?}, a cursor the gate did not see opened: what it changes is counted"
                    ));
                }
                Some(analyses) => {
                    for a in analyses {
                        let d = self.decide_readonly(&a, view, depth + 1);
                        if d.action == Action::Deny {
                            r.deny = Some(format!("FETCH/MOVE from {name:?}: {}", d.summary()));
                        }
                        if d.class > Class::Read {
                            r.measure = true;
                            r.reasons.push(
                                format!(
                                    "FETCH/MOVE runs portal {name:?}, bound to a {:?} statement",
                                    d.class
                                )
                                .to_lowercase(),
                            );
                        }
                        r.class = r.class.max(d.class);
                        if let Some(t) = a.statements.iter().find_map(|s| s.row_guard.clone()) {
                            r.row_guard = Some(t);
                        }
                    }
                }
            }
        }
        // Calls that may change rows and that the gate must therefore measure.
        // Code the session knows the statement runs (from the server's catalog or its own
        // settings), beyond the calls the statement names: judged as an unknown function call.
        let mut runs_known_code: Vec<String> = Vec::new();
        if (session.search_path_tampered || session.builtins_shadowed) && st.unqualified_builtins {
            runs_known_code.push(if session.search_path_tampered {
                "calls built-in functions by unqualified name after search_path put another schema before pg_catalog: they may resolve to someone's function".into()
            } else {
                "calls built-in functions or operators by unqualified name, and the database holds a function or operator of such a name outside pg_catalog: PostgreSQL may pick it by its argument types".into()
            });
        }
        if let Some(t) = st.cast_types.iter().find(|t| session.checked_domains.contains(*t)) {
            runs_known_code.push(format!(
                "casts to {t}, a type with CHECK constraints (a domain, or one holding a domain): they run with the cast and may call the application's functions"
            ));
        } else if !CREATES_ITS_TYPES.contains(&st.kind.as_str())
            && let Some(t) = st.type_names.iter().find(|t| session.checked_domains.contains(*t))
        {
            runs_known_code.push(format!(
                "names {t}, a type with CHECK constraints (a domain, or one holding a domain), as the type of a column or of a function's result columns: its CHECKs run whenever a value is converted to it — for a column of an existing table, in every later INSERT, the application's own included"
            ));
        }
        // A new table's column types are exempt above (a column of a checked domain runs its
        // CHECKs only when the table is written, measured), but not a code type's: ANALYZE —
        // autovacuum's, with no statement to measure — runs its comparison or subtype_diff.
        if matches!(st.kind.as_str(), "CREATE TABLE" | "CREATE FOREIGN TABLE")
            && let Some(t) = st.type_names.iter().find(|t| session.code_types.contains(*t))
        {
            runs_known_code.push(format!(
                "gives the new table a column of {t}, a type whose comparison or statistics run code that is not built in (a range's subtype_diff, an operator class or cast of the application's): ANALYZE, autovacuum's included, runs it with no statement the gate could measure"
            ));
        }
        // DDL measured by the relations' files runs such code under measurement; DDL that
        // copies or refers to such a relation plants it (a view over it, a policy reading it, a
        // table made LIKE it, inheriting from it or a partition of it: this session does not
        // know the new object yet); a cursor's query runs at FETCH, which is judged by the
        // same rule.
        let cursor = st.kind == "DECLARE CURSOR"
            && !st.effects.iter().any(|e| matches!(e, Effect::Declare { hold: true, .. }));
        if (!st.by_files || PLANTS_RELATIONS.contains(&st.kind.as_str()))
            && !cursor
            && let Some(t) = st.relations.iter().find(|t| session.code_relations.contains(*t))
        {
            runs_known_code.push(format!(
                "reads {t}, a view or table whose reading runs code that is not built in (a view's query, a policy, an index expression, a default, a column of a type whose input runs a domain's CHECK): it may change rows"
            ));
        }
        if session.catalog_unknown
            && runs_known_code.is_empty()
            && (((!st.by_files || PLANTS_RELATIONS.contains(&st.kind.as_str()))
                && !cursor
                && !st.relations.is_empty())
                || (!CREATES_ITS_TYPES.contains(&st.kind.as_str()) && !st.type_names.is_empty())
                || !st.cast_types.is_empty()
                || st.unqualified_builtins)
        {
            runs_known_code.push(
                "the gate's knowledge of the database's catalog may be out of date here (it changed since this session read it, inside a REPEATABLE READ or SERIALIZABLE transaction or a pipelined batch, where the gate cannot read it again): what the statement names may run code that is not built in".into(),
            );
        }
        let unknown_calls = st.unknown_calls || !runs_known_code.is_empty();
        if !runs_known_code.is_empty() {
            let c = self.policy.unknown_functions.class();
            if c > r.class {
                r.class = c;
                r.row_guard = r.row_guard.filter(|_| c == Class::Write);
            }
            if c == Class::Write && classify::MEASURED_KINDS.contains(&st.kind.as_str()) {
                r.measure = true;
            }
            r.reasons.extend(runs_known_code);
        }
        for (name, direct) in &st.executes {
            if depth >= MAX_EXECUTE_DEPTH {
                r.deny = Some("prepared statements execute each other too deeply".into());
                continue;
            }
            let Some((analyses, overflow)) = view.lookup(name) else {
                r.deny = Some(format!(
                    "EXECUTE {name}: no prepared statement of that name is known to the gate (fail closed)"
                ));
                continue;
            };
            if overflow {
                r.deny = Some(format!(
                    "prepared statement {name:?} was re-prepared too often without the server confirming"
                ));
                continue;
            }
            for a in analyses {
                let d = self.decide_readonly(&a, view, depth + 1);
                if d.action == Action::Deny {
                    r.deny = Some(format!("EXECUTE {name}: {}", d.summary()));
                }
                if d.class > r.class {
                    r.class = d.class;
                }
                r.reasons.extend(d.reasons.iter().map(|x| format!("EXECUTE {name}: {x}")));
                let inner_guard = a.statements.iter().find_map(|s| s.row_guard.clone());
                let inner_measure = a.statements.iter().any(|s| s.measure) || d.class == Class::Write;
                if *direct {
                    if let Some(t) = inner_guard {
                        r.row_guard = Some(t);
                    }
                    r.measure |= inner_measure;
                } else if inner_guard.is_some() || d.class == Class::Write {
                    r.class = Class::Destructive;
                    r.reasons.push(format!(
                        "EXECUTE {name} inside another statement runs a write whose changes cannot be counted"
                    ));
                }
            }
        }
        if r.class != Class::Write {
            r.row_guard = None;
            r.measure = false;
        }
        if r.measure || !matches!(r.class, Class::Ddl | Class::Write) {
            r.by_files = false;
        }
        r.runs_code = unknown_calls;
        if unknown_calls && !r.measure && r.class < Class::Destructive {
            // A function that may change rows, run where the gate does not count what changed
            // (EXPLAIN ANALYZE, CREATE TABLE AS, SELECT INTO, a WITH HOLD cursor at COMMIT, a
            // statement that also changes search_path) or planted where later statements run
            // it unmeasured — reads of a view or a table with a policy, casts to a domain,
            // defaults and CHECKs filled in by ALTER TABLE or COPY.
            r.class = Class::Destructive;
            r.row_guard = None;
            r.by_files = false;
            r.reasons.push(format!(
                "{} runs or plants a call of a function the guard does not know where the gate cannot count the rows it changes; call it in a plain SELECT or CALL, where it is measured",
                st.kind
            ));
        }
        r
    }

    fn assemble(&self, stmts: &[StmtAnalysis], resolved: Vec<Resolved>) -> Decision {
        let mut out = Vec::with_capacity(stmts.len());
        let mut reasons = Vec::new();
        let mut class = Class::Read;
        let mut action = Action::Allow;
        let mut guarded = 0;
        let mut transaction_control = false;
        for (st, r) in stmts.iter().zip(resolved) {
            let mut reasons_here = r.reasons;
            let mut rule = self.policy.classes.rule(r.class);
            if let Some(k) = self.policy.kinds.get(&classify::key(&st.kind))
                && Rule::from(*k) > rule
            {
                rule = (*k).into();
                reasons_here
                    .push(format!("policy: kinds.{} = {:?}", classify::key(&st.kind), k).to_lowercase());
            }
            let a = match (&r.deny, rule, r.measure || r.row_guard.is_some() || r.by_files) {
                (Some(why), _, _) => {
                    reasons_here.push(why.clone());
                    Action::Deny
                }
                (None, Rule::Deny, _) => Action::Deny,
                (None, Rule::Approve, _) => Action::Approve,
                (None, Rule::Allow, true) => {
                    guarded += 1;
                    Action::RowGuard {
                        max_rows: r
                            .row_guard
                            .as_deref()
                            .map(|t| self.policy.max_rows_for(t))
                            .unwrap_or(self.policy.row_guard_max_rows),
                    }
                }
                (None, Rule::Allow, false) => Action::Allow,
            };
            if TRANSACTION_CONTROL.contains(&st.kind.as_str()) {
                transaction_control = true;
            }
            class = class.max(r.class);
            if a.rank() > action.rank() {
                action = a.clone();
            } else if let (Action::RowGuard { max_rows: m }, Action::RowGuard { max_rows: n }) =
                (&mut action, &a)
            {
                *m = (*m).min(*n);
            }
            reasons.extend(reasons_here.iter().cloned());
            let by_files = r.by_files && matches!(a, Action::RowGuard { .. });
            out.push(StatementInfo {
                kind: st.kind.clone(),
                text: st.text.clone(),
                class: r.class,
                action: a,
                reasons: reasons_here,
                objects: st.objects.clone(),
                probe: st.probe,
                by_files,
                runs_code: r.runs_code,
            });
        }
        if guarded > 0 && transaction_control && stmts.len() > 1 && action.rank() < Action::Approve.rank() {
            // The gate measures the writes of a multi-statement string one by one inside one
            // transaction; a COMMIT/ROLLBACK/SAVEPOINT in the string would end or cut that.
            action = Action::Approve;
            reasons.push(
                "a string that mixes transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT…) with writes is held whole: its writes cannot be measured one by one; send them as separate statements".into(),
            );
        }
        Decision { action, class, statements: out, reasons, pending: None }
    }
}
