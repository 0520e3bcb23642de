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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use classify::{Analysis, Effect, StmtAnalysis};
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
    /// One DELETE/UPDATE with a WHERE clause (and nothing else destructive in the string): the
    /// gate runs it under a savepoint and holds it for approval if it affected more than
    /// `max_rows` rows.
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
}

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
    changed: HashSet<String>,
    search_path_tampered: bool,
    lexing: Lexing,
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
            self.changed.insert(name.to_string());
        }
    }

    /// The server answered ReadyForQuery. `no_error`: no ErrorResponse since the previous
    /// ReadyForQuery, so every Parse/Close/PREPARE/DEALLOCATE checked since then took effect and
    /// the earlier bindings of those names are gone. After an error they stay suspected.
    pub fn synced(&mut self, no_error: bool) {
        let changed = std::mem::take(&mut self.changed);
        if !no_error {
            return;
        }
        for name in changed {
            if let Some(b) = self.statements.get_mut(&name) {
                b.stale.clear();
                b.overflow = false;
                if b.current.is_none() {
                    self.statements.remove(&name);
                }
            }
        }
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

    fn bind(&mut self, name: &str, analysis: Arc<Analysis>) {
        let b = self.statements.entry(name.to_string()).or_default();
        if let Some(cur) = b.current.take() {
            push_stale(b, cur);
        }
        b.current = Some(analysis);
        self.changed.insert(name.to_string());
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
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.cleared
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

/// A statement resolved against a session.
struct Resolved {
    class: Class,
    reasons: Vec<String>,
    row_guard: Option<String>,
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
        Guard { policy, caches: [Mutex::new(Cache::default()), Mutex::new(Cache::default())] }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A simple-protocol Query message (may hold several statements) or SQL run via the CLI.
    pub fn check_query(&self, session: &mut Session, sql: &str) -> Decision {
        // A simple Query destroys the unnamed prepared statement on the server.
        session.close_statement("");
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

    /// The analysis of `sql`, from the cache when the same text was seen recently.
    fn analysis(&self, sql: &str, standard_strings: bool) -> Arc<Analysis> {
        let cache = &self.caches[usize::from(!standard_strings)];
        let cacheable = sql.len() <= CACHE_MAX_TEXT;
        if cacheable && let Some(a) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(sql) {
            return a;
        }
        let a = Arc::new(classify::analyze(sql, &self.policy, standard_strings));
        if cacheable {
            cache.lock().unwrap_or_else(|e| e.into_inner()).insert(sql, a.clone());
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
            deny: None,
        };
        if session.search_path_tampered && st.unqualified_builtins {
            let c = self.policy.unknown_functions.class();
            if c > r.class {
                r.class = c;
                r.row_guard = r.row_guard.filter(|_| c == Class::Write);
            }
            r.reasons.push(
                "calls built-in functions by unqualified name after search_path put another schema before pg_catalog: they may resolve to someone's function".into(),
            );
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
                if let Some(t) = inner_guard {
                    if *direct {
                        r.row_guard = Some(t);
                    } else {
                        r.class = Class::Destructive;
                        r.reasons.push(format!("EXECUTE {name} inside another statement runs a DELETE/UPDATE whose row count cannot be checked"));
                    }
                }
            }
        }
        if r.class != Class::Write {
            r.row_guard = None;
        }
        r
    }

    fn assemble(&self, stmts: &[StmtAnalysis], resolved: Vec<Resolved>) -> Decision {
        let mut out = Vec::with_capacity(stmts.len());
        let mut reasons = Vec::new();
        let mut class = Class::Read;
        let mut action = Action::Allow;
        let mut guarded = 0;
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
            let a = match (&r.deny, rule, &r.row_guard) {
                (Some(why), _, _) => {
                    reasons_here.push(why.clone());
                    Action::Deny
                }
                (None, Rule::Deny, _) => Action::Deny,
                (None, Rule::Approve, _) => Action::Approve,
                (None, Rule::Allow, Some(t)) => {
                    guarded += 1;
                    Action::RowGuard { max_rows: self.policy.max_rows_for(t) }
                }
                (None, Rule::Allow, None) => Action::Allow,
            };
            class = class.max(r.class);
            if a.rank() > action.rank() {
                action = a.clone();
            } else if let (Action::RowGuard { max_rows: m }, Action::RowGuard { max_rows: n }) =
                (&mut action, &a)
            {
                *m = (*m).min(*n);
            }
            reasons.extend(reasons_here.iter().cloned());
            out.push(StatementInfo {
                kind: st.kind.clone(),
                text: st.text.clone(),
                class: r.class,
                action: a,
                reasons: reasons_here,
                objects: st.objects.clone(),
            });
        }
        if guarded > 1 && action.rank() <= Action::Approve.rank() {
            action = Action::Approve;
            reasons.push(format!(
                "{guarded} DELETE/UPDATE statements in one message: the row guard checks one at a time"
            ));
        }
        Decision { action, class, statements: out, reasons, pending: None }
    }
}
