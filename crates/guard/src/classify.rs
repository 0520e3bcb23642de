//! From SQL text to a session-independent analysis: PostgreSQL's own parser (libpg_query) builds
//! the tree, which is turned into a generic JSON value so that *every* node is visited — a
//! hand-written walk over typed nodes would silently skip the fields nobody listed. Each node
//! name is looked up in the tables below; a name the guard does not know makes the statement
//! destructive.

use std::collections::BTreeSet;
use std::sync::Arc;

use pg_query::protobuf::{
    AExprKind, AlterTableType, BoolExprType, BoolTestType, CmdType, DiscardMode, ObjectType,
    ReindexObjectType, TransactionStmtKind, VariableSetKind,
};
use serde_json::{Map, Value};

use crate::functions::{builtin_operator, classify_function, classify_setting};
use crate::{Class, Policy};

/// The analysis of one SQL string, independent of any session (so it can be cached).
#[derive(Debug)]
pub(crate) struct Analysis {
    /// Why the whole string is refused unparsed (syntax error, size, NUL byte, too many
    /// statements); `None` when it parsed.
    pub error: Option<String>,
    pub statements: Vec<StmtAnalysis>,
    /// Some verdict above was reached by reading a constant's value (`LIKE '%'`,
    /// `set_config('search_path', …)`, `EXPLAIN (ANALYZE off)`, a comparison whose two sides
    /// differ only in constants…): the analysis holds for this text only, never for its shape.
    pub reads_constants: bool,
}

std::thread_local! {
    /// Set by every function that looks at a constant's value, during one [`analyze`] (which
    /// runs start to end on one thread, with no await): the guard then never reuses the
    /// analysis for another text of the same shape.
    static READS_CONSTANTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn constant_read() {
    READS_CONSTANTS.with(|c| c.set(true));
}

/// One top-level statement.
#[derive(Debug, Clone)]
pub(crate) struct StmtAnalysis {
    pub kind: String,
    /// The statement's own text, cut from the message at the parser's offsets.
    pub text: String,
    pub class: Class,
    pub reasons: Vec<String>,
    pub objects: Vec<String>,
    /// The table, when this is a DELETE/UPDATE/MERGE with a WHERE (or ON) clause that does not
    /// trivially match every row: the gate can count its rows under a savepoint.
    pub row_guard: Option<String>,
    /// Prepared statements this statement runs: (name, whether the EXECUTE is the statement
    /// itself rather than nested in EXPLAIN ANALYZE or CREATE TABLE AS).
    pub executes: Vec<(String, bool)>,
    /// Portals (SQL cursors and protocol portals share one namespace on the server) this
    /// statement drives with FETCH or MOVE: it runs whatever was bound into them.
    pub fetches: Vec<String>,
    /// A DROP … IF EXISTS of relations, or a TRUNCATE: destructive only if what it names
    /// exists (and, for TRUNCATE, holds data). The gate may run it under a savepoint and keep it
    /// when the catalog shows it destroyed nothing (see the gate's session module).
    pub probe: bool,
    /// A write whose effect the gate measures with the database's own counters (under a
    /// savepoint): DML, calls, EXECUTE, FETCH — every write kind that can change existing rows.
    pub measure: bool,
    /// Changes to the session, in order.
    pub effects: Vec<Effect>,
    /// Calls a safe built-in by an unqualified name: a session whose search_path puts another
    /// schema before pg_catalog may resolve it to someone's function.
    pub unqualified_builtins: bool,
    /// Runs — or plants where later statements run it: a view, a default, a CHECK, a policy, a
    /// domain — a function or operator the guard does not know, which may change rows. Such a
    /// call is only ever let through where the gate measures the statement (see
    /// `Guard::resolve`): anywhere else it is destructive. A cursor's query (not WITH HOLD) is
    /// not counted: it runs at FETCH, which is measured.
    pub unknown_calls: bool,
    /// The types it casts to (the last part of each name, as written): a cast to a domain runs
    /// the domain's CHECK constraints, which the session may know to call functions (see
    /// `Session::set_checked_domains`).
    pub cast_types: Vec<String>,
    /// The other types it names (the last part of each name, as written): a column's type, a
    /// column definition list's (`json_to_record(…) AS x(a checked)` coerces to it, running a
    /// domain's CHECKs), a range's subtype. Judged like `cast_types` except in a statement that
    /// creates the object whose type it is (a new table's column runs its domain's CHECKs
    /// only when that table is written: measured); an `ALTER TABLE … ADD COLUMN` of such a
    /// domain plants them into every later INSERT into an existing table — the application's
    /// own among them, with no default: a NULL is checked too.
    pub type_names: Vec<String>,
    /// The relations it names (the last part of each name, as written), the table an
    /// INSERT/UPDATE/DELETE/MERGE writes included, and for a PREPARE those its query names:
    /// reading a view, or a table with a policy, an index expression, a default or a column of
    /// a checked type, may run code (see `Session::set_code_relations`).
    pub relations: Vec<String>,
    /// DDL (and REFRESH MATERIALIZED VIEW) that the gate measures by the relations' files as
    /// well as the row counters — as it probes a DROP … IF EXISTS — rather than by the locks it
    /// takes: such a statement locks (and may rewrite) relations itself, and it runs code the
    /// statement does not show — the database's event triggers, the expressions of the indexes
    /// it builds, a materialized view's query. See [`by_files`].
    pub by_files: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// `PREPARE name AS …`: the analysis of the prepared statement.
    Prepare {
        name: String,
        analysis: Arc<Analysis>,
    },
    Deallocate(String),
    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    DeallocateAll,
    /// `DECLARE name CURSOR FOR query`: a portal named `name` over `analysis`.
    Declare {
        name: String,
        analysis: Arc<Analysis>,
        hold: bool,
    },
    /// `CLOSE name`, or `CLOSE ALL` / `DISCARD ALL` (`None`).
    ClosePortal(Option<String>),
    /// search_path now puts another schema before pg_catalog.
    SearchPathTampered,
    /// standard_conforming_strings may have changed: until the server reports its value, the
    /// session's messages are lexed both ways.
    LexingUncertain,
}

impl Analysis {
    pub(crate) fn refused(reason: String) -> Analysis {
        Analysis { error: Some(reason), statements: Vec::new(), reads_constants: false }
    }
}

/// Parses and analyses `sql` under `policy`.
pub(crate) fn analyze(sql: &str, policy: &Policy, standard_strings: bool) -> Analysis {
    if sql.len() > policy.max_statement_bytes {
        return Analysis::refused(format!(
            "the SQL text is {} bytes, over the policy's max_statement_bytes ({}); split it into smaller statements",
            sql.len(),
            policy.max_statement_bytes
        ));
    }
    if sql.contains('\0') {
        return Analysis::refused(
            "the SQL text contains a NUL byte, which PostgreSQL cannot receive; remove it".into(),
        );
    }
    // With standard_conforming_strings off, a backslash escapes a quote inside '…': the same
    // text splits into different statements, so it must be lexed as the server will.
    let options = if standard_strings {
        pg_query::ParserOptions::DEFAULT
    } else {
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    };
    let parsed = match pg_query::parse(sql, options) {
        Ok(p) => p,
        Err(pg_query::Error::Decode(e)) => {
            return Analysis::refused(format!(
                "the statement is nested too deeply for the guard to check ({e}); simplify it"
            ));
        }
        Err(e) => {
            let msg = match e {
                pg_query::Error::Parse(m) => m,
                other => other.to_string(),
            };
            return Analysis::refused(format!("{}: {msg}; nothing was run", crate::PARSER_REJECTED));
        }
    };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() > policy.max_statements {
        return Analysis::refused(format!(
            "the SQL text holds {} statements, over the policy's max_statements ({}); send them in smaller batches",
            stmts.len(),
            policy.max_statements
        ));
    }
    let mut statements = Vec::with_capacity(stmts.len());
    READS_CONSTANTS.with(|c| c.set(false));
    for raw in stmts {
        let tree = match raw.stmt.as_ref().map(serde_json::to_value) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                return Analysis::refused(format!("the guard could not read the parse tree ({e})"));
            }
            None => return Analysis::refused("the parser returned an empty statement node".into()),
        };
        let mut st = analyze_statement(&tree, policy);
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(n) => start.saturating_add(n).min(sql.len()),
        };
        st.text = sql.get(start..end).unwrap_or("").trim().to_string();
        statements.push(st);
    }
    Analysis { error: None, statements, reads_constants: READS_CONSTANTS.with(|c| c.replace(false)) }
}

/// Analyses one statement given as a `Node` value (`{"node": {"DeleteStmt": {…}}}`).
fn analyze_statement(tree: &Value, policy: &Policy) -> StmtAnalysis {
    let mut w = Walker {
        policy,
        class: Class::Read,
        reasons: Vec::new(),
        objects: Vec::new(),
        row_guard: None,
        executes: Vec::new(),
        fetches: Vec::new(),
        effects: Vec::new(),
        unqualified_builtins: false,
        copy_from: false,
        copy_freeze: false,
        unknown_calls: false,
        cast_types: Vec::new(),
        type_names: Vec::new(),
        relations: Vec::new(),
    };
    let kind = match as_node(tree) {
        Some((name, body)) => {
            let kind = kind_of(name, body);
            w.node(name, body, Ctx { top: true, executed: true, planned: true });
            kind
        }
        None => {
            w.raise(Class::Destructive, "the parser returned a statement the guard cannot read".to_string());
            "UNKNOWN".into()
        }
    };
    if w.class != Class::Write {
        // Only a write (not a read, and never destruction) is sent on under the row guard.
        w.row_guard = None;
    }
    if kind == "COPY" && w.class == Class::Write && !w.copy_from {
        // COPY (query) TO: the query calls functions that may write, and its output streams to
        // the client as it runs, so its changes cannot be counted before the client sees them.
        w.raise(
            Class::Destructive,
            "COPY (…) TO runs functions that may write; their changes cannot be counted before they are streamed".into(),
        );
    }
    if kind == "COPY" && w.class == Class::Write && w.copy_freeze {
        // COPY … FREEZE needs its table created or truncated in the current subtransaction,
        // which the gate's measurement savepoint never is, so it cannot be measured; left
        // unmeasured, `BEGIN; TRUNCATE t; COPY t FROM STDIN WITH (FREEZE)` runs t's triggers
        // (which may empty other tables) with nothing counting: held for a second person.
        w.raise(
            Class::Destructive,
            "COPY … WITH (FREEZE) cannot be measured (it needs its table created or truncated in the current subtransaction): the table's triggers, rules and defaults would run unmeasured — load without FREEZE, or have it approved".into(),
        );
    }
    if let Some((name, body)) = as_node(tree)
        && let Some(why) = unmeasurable(name, body)
    {
        w.raise(Class::Destructive, why);
    }
    let measure = w.class == Class::Write && MEASURED_KINDS.contains(&kind.as_str());
    let by_files = !measure && by_files(&kind, w.class);
    let probe = match as_node(tree) {
        Some(("TruncateStmt", _)) => true,
        Some(("DropStmt", body)) => {
            body.get("missing_ok").and_then(Value::as_bool).unwrap_or(false)
                && matches!(
                    ObjectType::try_from(int_field(body, "remove_type")),
                    Ok(ObjectType::ObjectTable
                        | ObjectType::ObjectView
                        | ObjectType::ObjectMatview
                        | ObjectType::ObjectIndex
                        | ObjectType::ObjectSequence
                        | ObjectType::ObjectForeignTable)
                )
        }
        _ => false,
    };
    // A cursor's query runs at FETCH (measured), except WITH HOLD: then whatever is left of it
    // runs at COMMIT, unmeasured.
    let fetch_runs_it = kind == "DECLARE CURSOR"
        && !w.effects.iter().any(|e| matches!(e, Effect::Declare { hold: true, .. }));
    let unknown_calls = w.unknown_calls && !fetch_runs_it;
    dedup(&mut w.reasons);
    dedup(&mut w.objects);
    StmtAnalysis {
        kind,
        text: String::new(),
        class: w.class,
        reasons: w.reasons,
        objects: w.objects,
        row_guard: w.row_guard,
        executes: w.executes,
        fetches: w.fetches,
        measure,
        probe,
        effects: w.effects,
        unqualified_builtins: w.unqualified_builtins,
        unknown_calls,
        cast_types: w.cast_types,
        type_names: w.type_names,
        relations: w.relations,
        by_files,
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

#[derive(Clone, Copy)]
struct Ctx {
    /// This node is the top-level statement.
    top: bool,
    /// The statement will run (false under EXPLAIN without ANALYZE).
    executed: bool,
    /// The statement will be planned (also under EXPLAIN without ANALYZE): the planner runs
    /// what it can fold — an IMMUTABLE or STABLE function with constant arguments, an index
    /// expression of a relation it reads — so calls and relations count as run.
    planned: bool,
}

impl Ctx {
    fn inner(self) -> Ctx {
        Ctx { top: false, ..self }
    }
}

struct Walker<'p> {
    policy: &'p Policy,
    class: Class,
    reasons: Vec<String>,
    objects: Vec<String>,
    row_guard: Option<String>,
    executes: Vec<(String, bool)>,
    fetches: Vec<String>,
    effects: Vec<Effect>,
    unqualified_builtins: bool,
    copy_from: bool,
    /// COPY … FROM STDIN WITH (FREEZE): cannot be measured, so held (see `classify`).
    copy_freeze: bool,
    unknown_calls: bool,
    cast_types: Vec<String>,
    type_names: Vec<String>,
    relations: Vec<String>,
}

/// Write kinds the gate runs under a savepoint and measures by what the database counted
/// (rows updated and deleted in every table, cascades and triggers included). Other write
/// kinds change no existing rows by themselves (LOCK, NOTIFY, VACUUM, REFRESH MATERIALIZED VIEW,
/// DISCARD TEMP, PREPARE TRANSACTION). COPY is one only as COPY FROM STDIN (a COPY TO that may
/// write is destructive): the triggers, defaults and rules of the table it fills may change
/// other rows, which the gate counts while the client's data streams through.
/// ANALYZE evaluates the expressions of the table's indexes and extended statistics (the
/// application's functions among them) and takes no ACCESS EXCLUSIVE lock: measured like DML.
pub(crate) const MEASURED_KINDS: &[&str] =
    &["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "CALL", "EXECUTE", "FETCH", "COPY", "ANALYZE"];

/// DDL kinds that cannot run inside a transaction block, where the gate measures, and that run
/// none of the application's code (no event trigger fires for a database or a tablespace);
/// `DISCARD ALL` resets the session. Any other DDL is measured (see [`by_files`]); what cannot
/// run in a transaction block and may run code is held (see [`unmeasurable`]).
const DDL_NOT_MEASURED: &[&str] = &["CREATE DATABASE", "CREATE TABLESPACE", "DISCARD"];

/// Whether a statement of `kind` and `class` (that is not measured like DML) is measured by
/// the relations' files: every DDL statement that can run inside a transaction block — each
/// fires the database's event triggers, and CREATE INDEX, REINDEX, CLUSTER and ALTER TABLE
/// evaluate index expressions — and REFRESH MATERIALIZED VIEW (it runs the view's query).
/// Settings (SET, RESET) run no code.
fn by_files(kind: &str, class: Class) -> bool {
    match class {
        Class::Ddl => {
            !DDL_NOT_MEASURED.contains(&kind) && !kind.starts_with("SET") && !kind.starts_with("RESET")
        }
        Class::Write => kind == "REFRESH MATERIALIZED VIEW",
        _ => false,
    }
}

/// Why a maintenance statement can neither be measured nor let through: it cannot run inside a
/// transaction block (the gate measures under a savepoint) and it evaluates the expressions of
/// indexes or extended statistics — the application's functions among them — or fires event
/// triggers. `None` for everything else.
fn unmeasurable(name: &str, body: &Value) -> Option<String> {
    let option_on = |list_name: &str, opt: &str| {
        list(body, list_name).iter().any(|o| match as_node(o) {
            Some(("DefElem", d)) => str_field(d, "defname") == opt && !option_off(field(d, "arg")),
            _ => false,
        })
    };
    const WHY: &str = "cannot run inside a transaction block, where the gate measures, and it runs code the statement does not show (the expressions of indexes and extended statistics, event triggers), which may change rows";
    match name {
        "VacuumStmt" if bool_field(body, "is_vacuumcmd") => {
            let what = match (option_on("options", "full"), option_on("options", "analyze")) {
                (true, _) => "VACUUM FULL (it rebuilds the indexes)",
                (false, true) => "VACUUM with ANALYZE",
                (false, false) => return None,
            };
            Some(format!(
                "{what} {WHY}: run VACUUM without FULL or ANALYZE, then ANALYZE (measured), or have it approved"
            ))
        }
        "IndexStmt" if bool_field(body, "concurrent") => Some(format!(
            "CREATE INDEX CONCURRENTLY {WHY}: create it without CONCURRENTLY (measured), or have it approved"
        )),
        "ReindexStmt" => {
            let whole = matches!(
                ReindexObjectType::try_from(int_field(body, "kind")),
                Ok(ReindexObjectType::ReindexObjectSchema
                    | ReindexObjectType::ReindexObjectSystem
                    | ReindexObjectType::ReindexObjectDatabase)
            );
            (whole || option_on("params", "concurrently")).then(|| {
                format!("REINDEX CONCURRENTLY, or of a whole schema or database, {WHY}: reindex a table or an index without CONCURRENTLY (measured), or have it approved")
            })
        }
        "ClusterStmt" if body.get("relation").is_none_or(|r| !r.is_object()) => {
            Some(format!("CLUSTER of every table {WHY}: cluster one table (measured), or have it approved"))
        }
        _ => None,
    }
}

/// `{"node": {"Name": body}}` → (Name, body).
fn as_node(v: &Value) -> Option<(&str, &Value)> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    let inner = m.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn field<'a>(body: &'a Value, name: &str) -> &'a Value {
    body.get(name).unwrap_or(&Value::Null)
}

fn str_field<'a>(body: &'a Value, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or("")
}

fn int_field(body: &Value, name: &str) -> i32 {
    body.get(name).and_then(Value::as_i64).and_then(|i| i32::try_from(i).ok()).unwrap_or(0)
}

fn bool_field(body: &Value, name: &str) -> bool {
    body.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn list<'a>(body: &'a Value, name: &str) -> &'a [Value] {
    body.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// The strings of a list of `String` nodes (a qualified name).
fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|n| match as_node(n) {
            Some(("String", b)) => Some(str_field(b, "sval").to_string()),
            _ => None,
        })
        .collect()
}

/// `schema.table` as written, from a RangeVar body.
fn range_var(body: &Value) -> Option<String> {
    let rel = str_field(body, "relname");
    if rel.is_empty() {
        return None;
    }
    let schema = str_field(body, "schemaname");
    Some(if schema.is_empty() { rel.to_string() } else { format!("{schema}.{rel}") })
}

/// A printable name for an object in a DROP/TRUNCATE list.
fn object_name(v: &Value) -> String {
    match as_node(v) {
        Some(("RangeVar", b)) => range_var(b).unwrap_or_default(),
        Some(("List", b)) => names(list(b, "items")).join("."),
        Some(("String", b)) => str_field(b, "sval").to_string(),
        Some(("TypeName", b)) => names(list(b, "names")).join("."),
        Some(("ObjectWithArgs", b)) => names(list(b, "objname")).join("."),
        Some(("RoleSpec", b)) => str_field(b, "rolename").to_string(),
        _ => String::new(),
    }
}

/// A constant string argument (`'role'`), if the node is one.
fn const_string(v: &Value) -> Option<&str> {
    constant_read();
    match as_node(v) {
        Some(("AConst", b)) => b.get("val")?.get("Sval")?.get("sval")?.as_str(),
        Some(("TypeCast", b)) => const_string(field(b, "arg")),
        _ => None,
    }
}

fn object_type(i: i32) -> String {
    match ObjectType::try_from(i) {
        Ok(ObjectType::ObjectMatview) => "MATERIALIZED VIEW".into(),
        Ok(ObjectType::ObjectFdw) => "FOREIGN DATA WRAPPER".into(),
        Ok(ObjectType::ObjectForeignServer) => "SERVER".into(),
        Ok(ObjectType::ObjectStatisticExt) => "STATISTICS".into(),
        Ok(ObjectType::ObjectTsconfiguration) => "TEXT SEARCH CONFIGURATION".into(),
        Ok(ObjectType::ObjectTsdictionary) => "TEXT SEARCH DICTIONARY".into(),
        Ok(ObjectType::ObjectTsparser) => "TEXT SEARCH PARSER".into(),
        Ok(ObjectType::ObjectTstemplate) => "TEXT SEARCH TEMPLATE".into(),
        Ok(ObjectType::ObjectLargeobject) => "LARGE OBJECT".into(),
        Ok(o) => o.as_str_name().trim_start_matches("OBJECT_").replace('_', " "),
        Err(_) => "OBJECT".into(),
    }
}

/// Statements whose class does not depend on their contents: (node, kind, class, reason).
const FIXED: &[(&str, &str, Class, &str)] = &[
    ("DropdbStmt", "DROP DATABASE", Class::Destructive, "drops a database"),
    ("DropRoleStmt", "DROP ROLE", Class::Destructive, "drops a role"),
    ("DropOwnedStmt", "DROP OWNED", Class::Destructive, "drops every object a role owns"),
    (
        "ReassignOwnedStmt",
        "REASSIGN OWNED",
        Class::Destructive,
        "hands every object of a role to another role",
    ),
    ("DropTableSpaceStmt", "DROP TABLESPACE", Class::Destructive, "drops a tablespace"),
    ("DropSubscriptionStmt", "DROP SUBSCRIPTION", Class::Destructive, "drops a subscription"),
    ("DropUserMappingStmt", "DROP USER MAPPING", Class::Destructive, "drops a user mapping"),
    (
        "AlterSystemStmt",
        "ALTER SYSTEM",
        Class::Destructive,
        "ALTER SYSTEM rewrites the server's configuration",
    ),
    (
        "DoStmt",
        "DO",
        Class::Destructive,
        "a DO block runs procedural code (dynamic SQL the guard cannot see)",
    ),
    (
        "CreateFunctionStmt",
        "CREATE FUNCTION",
        Class::Destructive,
        "a function body can run any SQL (dynamic SQL the guard cannot see) whenever it is called",
    ),
    (
        "AlterFunctionStmt",
        "ALTER FUNCTION",
        Class::Destructive,
        "changes how a function runs (SECURITY DEFINER, settings)",
    ),
    (
        "CreateTrigStmt",
        "CREATE TRIGGER",
        Class::Destructive,
        "a trigger hides writes inside later statements",
    ),
    (
        "CreateEventTrigStmt",
        "CREATE EVENT TRIGGER",
        Class::Destructive,
        "an event trigger runs code on every DDL statement",
    ),
    ("AlterEventTrigStmt", "ALTER EVENT TRIGGER", Class::Destructive, "enables or disables an event trigger"),
    (
        "RuleStmt",
        "CREATE RULE",
        Class::Destructive,
        "a rule rewrites later statements into others (hidden writes)",
    ),
    ("GrantRoleStmt", "GRANT ROLE", Class::Destructive, "changes role membership"),
    (
        "AlterDefaultPrivilegesStmt",
        "ALTER DEFAULT PRIVILEGES",
        Class::Destructive,
        "changes the privileges of objects created later",
    ),
    (
        "AlterOwnerStmt",
        "ALTER OWNER",
        Class::Destructive,
        "hands an object to another role (who may then drop it)",
    ),
    (
        "AlterRoleStmt",
        "ALTER ROLE",
        Class::Destructive,
        "changes a role's attributes, password or membership",
    ),
    (
        "AlterRoleSetStmt",
        "ALTER ROLE SET",
        Class::Destructive,
        "changes settings of every later session of a role",
    ),
    (
        "AlterDatabaseStmt",
        "ALTER DATABASE",
        Class::Destructive,
        "changes a database's connection and template settings",
    ),
    (
        "AlterDatabaseSetStmt",
        "ALTER DATABASE SET",
        Class::Destructive,
        "changes settings of every later session in a database",
    ),
    ("CreateExtensionStmt", "CREATE EXTENSION", Class::Destructive, "runs an extension's install script"),
    ("AlterExtensionStmt", "ALTER EXTENSION", Class::Destructive, "runs an extension's update script"),
    (
        "AlterExtensionContentsStmt",
        "ALTER EXTENSION",
        Class::Destructive,
        "changes which objects an extension owns (dropped with it)",
    ),
    ("CreatePlangStmt", "CREATE LANGUAGE", Class::Destructive, "installs a procedural language"),
    ("CreateFdwStmt", "CREATE FOREIGN DATA WRAPPER", Class::Destructive, "installs a foreign-data handler"),
    ("AlterFdwStmt", "ALTER FOREIGN DATA WRAPPER", Class::Destructive, "changes a foreign-data handler"),
    ("CreateCastStmt", "CREATE CAST", Class::Destructive, "a cast runs a function implicitly"),
    ("CreateTransformStmt", "CREATE TRANSFORM", Class::Destructive, "a transform runs functions implicitly"),
    ("CreateAmStmt", "CREATE ACCESS METHOD", Class::Destructive, "installs an access-method handler"),
    (
        "CreateOpClassStmt",
        "CREATE OPERATOR CLASS",
        Class::Destructive,
        "an operator class runs functions implicitly",
    ),
    (
        "CreateOpFamilyStmt",
        "CREATE OPERATOR FAMILY",
        Class::Destructive,
        "an operator family runs functions implicitly",
    ),
    ("AlterOpFamilyStmt", "ALTER OPERATOR FAMILY", Class::Destructive, "changes functions run implicitly"),
    ("AlterOperatorStmt", "ALTER OPERATOR", Class::Destructive, "changes functions an operator runs"),
    (
        "CreateSubscriptionStmt",
        "CREATE SUBSCRIPTION",
        Class::Destructive,
        "a subscription writes another server's changes into tables",
    ),
    (
        "AlterSubscriptionStmt",
        "ALTER SUBSCRIPTION",
        Class::Destructive,
        "changes where replicated writes come from",
    ),
    (
        "AlterObjectDependsStmt",
        "ALTER DEPENDS ON EXTENSION",
        Class::Destructive,
        "makes an object disappear when an extension is dropped",
    ),
    ("LoadStmt", "LOAD", Class::Destructive, "LOAD runs a shared library's code in the server"),
    ("CreateStmt", "CREATE TABLE", Class::Ddl, ""),
    ("IndexStmt", "CREATE INDEX", Class::Ddl, ""),
    ("ViewStmt", "CREATE VIEW", Class::Ddl, ""),
    ("CreateSeqStmt", "CREATE SEQUENCE", Class::Ddl, ""),
    ("AlterSeqStmt", "ALTER SEQUENCE", Class::Ddl, ""),
    ("CreateSchemaStmt", "CREATE SCHEMA", Class::Ddl, ""),
    ("CreateDomainStmt", "CREATE DOMAIN", Class::Ddl, ""),
    ("CompositeTypeStmt", "CREATE TYPE", Class::Ddl, ""),
    ("CreateEnumStmt", "CREATE TYPE", Class::Ddl, ""),
    ("CreateRangeStmt", "CREATE TYPE", Class::Ddl, ""),
    ("AlterEnumStmt", "ALTER TYPE", Class::Ddl, ""),
    ("AlterTypeStmt", "ALTER TYPE", Class::Ddl, ""),
    ("AlterDomainStmt", "ALTER DOMAIN", Class::Ddl, ""),
    ("CommentStmt", "COMMENT", Class::Ddl, ""),
    ("SecLabelStmt", "SECURITY LABEL", Class::Ddl, ""),
    ("CreateStatsStmt", "CREATE STATISTICS", Class::Ddl, ""),
    ("AlterStatsStmt", "ALTER STATISTICS", Class::Ddl, ""),
    ("CreatePolicyStmt", "CREATE POLICY", Class::Ddl, ""),
    ("AlterPolicyStmt", "ALTER POLICY", Class::Ddl, ""),
    ("RenameStmt", "RENAME", Class::Ddl, ""),
    ("AlterObjectSchemaStmt", "ALTER SET SCHEMA", Class::Ddl, ""),
    ("CreatePublicationStmt", "CREATE PUBLICATION", Class::Ddl, ""),
    ("AlterPublicationStmt", "ALTER PUBLICATION", Class::Ddl, ""),
    ("CreateTableSpaceStmt", "CREATE TABLESPACE", Class::Ddl, ""),
    ("AlterTableSpaceOptionsStmt", "ALTER TABLESPACE", Class::Ddl, ""),
    ("AlterTableMoveAllStmt", "ALTER TABLE ALL IN TABLESPACE", Class::Ddl, ""),
    ("AlterCollationStmt", "ALTER COLLATION", Class::Ddl, ""),
    ("AlterTsdictionaryStmt", "ALTER TEXT SEARCH DICTIONARY", Class::Ddl, ""),
    ("AlterTsconfigurationStmt", "ALTER TEXT SEARCH CONFIGURATION", Class::Ddl, ""),
    ("CreateConversionStmt", "CREATE CONVERSION", Class::Ddl, ""),
    ("ReplicaIdentityStmt", "REPLICA IDENTITY", Class::Ddl, ""),
    ("AlterDatabaseRefreshCollStmt", "ALTER DATABASE REFRESH COLLATION VERSION", Class::Ddl, ""),
    ("ImportForeignSchemaStmt", "IMPORT FOREIGN SCHEMA", Class::Ddl, ""),
    ("CreateForeignTableStmt", "CREATE FOREIGN TABLE", Class::Ddl, ""),
    ("CreateForeignServerStmt", "CREATE SERVER", Class::Ddl, ""),
    ("AlterForeignServerStmt", "ALTER SERVER", Class::Ddl, ""),
    ("CreateUserMappingStmt", "CREATE USER MAPPING", Class::Ddl, ""),
    ("AlterUserMappingStmt", "ALTER USER MAPPING", Class::Ddl, ""),
    ("CreatedbStmt", "CREATE DATABASE", Class::Ddl, ""),
    (
        "ClusterStmt",
        "CLUSTER",
        Class::Ddl,
        "CLUSTER rewrites the table under an exclusive lock (no rows are lost)",
    ),
    ("ReindexStmt", "REINDEX", Class::Ddl, ""),
    ("RefreshMatViewStmt", "REFRESH MATERIALIZED VIEW", Class::Write, ""),
    (
        "LockStmt",
        "LOCK",
        Class::Write,
        "LOCK blocks other sessions until the transaction ends (no data changes)",
    ),
    ("NotifyStmt", "NOTIFY", Class::Write, ""),
    ("CheckPointStmt", "CHECKPOINT", Class::Write, ""),
    ("ListenStmt", "LISTEN", Class::Read, ""),
    ("UnlistenStmt", "UNLISTEN", Class::Read, ""),
    ("VariableShowStmt", "SHOW", Class::Read, ""),
    ("ClosePortalStmt", "CLOSE", Class::Read, ""),
    ("FetchStmt", "FETCH", Class::Read, ""),
    ("DeclareCursorStmt", "DECLARE CURSOR", Class::Read, ""),
    ("ConstraintsSetStmt", "SET CONSTRAINTS", Class::Read, ""),
    ("CallStmt", "CALL", Class::Read, ""),
    ("ExecuteStmt", "EXECUTE", Class::Read, ""),
    ("PrepareStmt", "PREPARE", Class::Read, ""),
    ("DeallocateStmt", "DEALLOCATE", Class::Read, ""),
    ("ExplainStmt", "EXPLAIN", Class::Read, ""),
    ("InsertStmt", "INSERT", Class::Write, ""),
    ("DeleteStmt", "DELETE", Class::Write, ""),
    ("UpdateStmt", "UPDATE", Class::Write, ""),
    ("MergeStmt", "MERGE", Class::Write, ""),
    ("SelectStmt", "SELECT", Class::Read, ""),
    ("CopyStmt", "COPY", Class::Read, ""),
];

/// Parts of statements and expressions that do nothing by themselves (their children are still
/// visited). Nodes that appear only in analysed trees (Query, Var, FuncExpr…) are deliberately
/// absent: the raw parser never produces them, so meeting one means something is off.
const INERT: &[&str] = &[
    "Alias",
    "IntoClause",
    "JoinExpr",
    "GroupingFunc",
    "MergeSupportFunc",
    "NamedArgExpr",
    "BoolExpr",
    "SubLink",
    "CaseExpr",
    "CaseWhen",
    "CaseTestExpr",
    "ArrayExpr",
    "RowExpr",
    "RowCompareExpr",
    "CoalesceExpr",
    "MinMaxExpr",
    "SqlvalueFunction",
    "XmlExpr",
    "JsonFormat",
    "JsonReturning",
    "JsonValueExpr",
    "JsonBehavior",
    "JsonIsPredicate",
    "NullTest",
    "BooleanTest",
    "SetToDefault",
    "CurrentOfExpr",
    "TypeName",
    "ColumnRef",
    "ParamRef",
    "CollateClause",
    "RoleSpec",
    "AStar",
    "AIndices",
    "AIndirection",
    "AArrayExpr",
    "ResTarget",
    "MultiAssignRef",
    "SortBy",
    "WindowDef",
    "RangeSubselect",
    "RangeFunction",
    "RangeTableFunc",
    "RangeTableFuncCol",
    "RangeTableSample",
    "ColumnDef",
    "TableLikeClause",
    "IndexElem",
    "DefElem",
    "LockingClause",
    "XmlSerialize",
    "PartitionElem",
    "PartitionSpec",
    "PartitionBoundSpec",
    "PartitionRangeDatum",
    "PartitionCmd",
    "GroupingSet",
    "WithClause",
    "InferClause",
    "OnConflictClause",
    "CtesearchClause",
    "CtecycleClause",
    "CommonTableExpr",
    "MergeWhenClause",
    "ReturningOption",
    "ReturningClause",
    "TriggerTransition",
    "JsonOutput",
    "JsonArgument",
    "JsonFuncExpr",
    "JsonTablePathSpec",
    "JsonTable",
    "JsonTableColumn",
    "JsonKeyValue",
    "JsonParseExpr",
    "JsonScalarExpr",
    "JsonSerializeExpr",
    "JsonObjectConstructor",
    "JsonArrayConstructor",
    "JsonArrayQueryConstructor",
    "JsonAggConstructor",
    "JsonObjectAgg",
    "JsonArrayAgg",
    "Constraint",
    "ObjectWithArgs",
    "AccessPriv",
    "FunctionParameter",
    "CreateOpClassItem",
    "StatsElem",
    "VacuumRelation",
    "PublicationTable",
    "PublicationObjSpec",
    "AtalterConstraint",
    "Integer",
    "Float",
    "Boolean",
    "String",
    "BitString",
    "List",
    "AConst",
    "AlterTableCmd",
];

/// Every kind a statement can have, as policy keys (`drop_table`).
pub(crate) fn known_kinds() -> BTreeSet<String> {
    let mut kinds: BTreeSet<String> = FIXED.iter().map(|(_, k, _, _)| key(k)).collect();
    for i in 0..=200 {
        if ObjectType::try_from(i).is_ok() && i != 0 {
            let o = object_type(i);
            for verb in ["DROP", "ALTER", "CREATE"] {
                kinds.insert(key(&format!("{verb} {o}")));
            }
        }
    }
    for k in [
        "TRUNCATE",
        "CREATE TABLE AS",
        "CREATE MATERIALIZED VIEW",
        "SELECT INTO",
        "SET",
        "RESET",
        "SET ROLE",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION",
        "RESET SESSION AUTHORIZATION",
        "RESET ALL",
        "SET TRANSACTION",
        "GRANT",
        "REVOKE",
        "REVOKE ROLE",
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
        "VACUUM",
        "ANALYZE",
        "CREATE ROLE",
        "DISCARD",
    ] {
        kinds.insert(key(k));
    }
    kinds
}

/// The policy key of a kind: `DROP TABLE` → `drop_table`.
pub(crate) fn key(kind: &str) -> String {
    kind.to_lowercase().replace(' ', "_")
}

fn kind_of(name: &str, body: &Value) -> String {
    match name {
        "DropStmt" => format!("DROP {}", object_type(int_field(body, "remove_type"))),
        "AlterTableStmt" => format!("ALTER {}", object_type(int_field(body, "objtype"))),
        "DefineStmt" => format!("CREATE {}", object_type(int_field(body, "kind"))),
        "TruncateStmt" => "TRUNCATE".into(),
        "CreateTableAsStmt" => {
            if bool_field(body, "is_select_into") {
                "SELECT INTO".into()
            } else if int_field(body, "objtype") == ObjectType::ObjectMatview as i32 {
                "CREATE MATERIALIZED VIEW".into()
            } else {
                "CREATE TABLE AS".into()
            }
        }
        "VariableSetStmt" => {
            let setting = str_field(body, "name").to_lowercase();
            let reset = matches!(
                VariableSetKind::try_from(int_field(body, "kind")),
                Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
            );
            match (VariableSetKind::try_from(int_field(body, "kind")), setting.as_str(), reset) {
                (Ok(VariableSetKind::VarResetAll), _, _) => "RESET ALL".into(),
                (Ok(VariableSetKind::VarSetMulti), _, _) => "SET TRANSACTION".into(),
                (_, "role", false) => "SET ROLE".into(),
                (_, "role", true) => "RESET ROLE".into(),
                (_, "session_authorization", false) => "SET SESSION AUTHORIZATION".into(),
                (_, "session_authorization", true) => "RESET SESSION AUTHORIZATION".into(),
                (_, _, true) => "RESET".into(),
                _ => "SET".into(),
            }
        }
        "GrantStmt" => if bool_field(body, "is_grant") { "GRANT" } else { "REVOKE" }.into(),
        "GrantRoleStmt" => if bool_field(body, "is_grant") { "GRANT ROLE" } else { "REVOKE ROLE" }.into(),
        "TransactionStmt" => match TransactionStmtKind::try_from(int_field(body, "kind")) {
            Ok(TransactionStmtKind::TransStmtBegin) => "BEGIN",
            Ok(TransactionStmtKind::TransStmtStart) => "START TRANSACTION",
            Ok(TransactionStmtKind::TransStmtCommit) => "COMMIT",
            Ok(TransactionStmtKind::TransStmtRollback) => "ROLLBACK",
            Ok(TransactionStmtKind::TransStmtSavepoint) => "SAVEPOINT",
            Ok(TransactionStmtKind::TransStmtRelease) => "RELEASE",
            Ok(TransactionStmtKind::TransStmtRollbackTo) => "ROLLBACK TO SAVEPOINT",
            Ok(TransactionStmtKind::TransStmtPrepare) => "PREPARE TRANSACTION",
            Ok(TransactionStmtKind::TransStmtCommitPrepared) => "COMMIT PREPARED",
            Ok(TransactionStmtKind::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
            _ => "TRANSACTION",
        }
        .into(),
        "VacuumStmt" => if bool_field(body, "is_vacuumcmd") { "VACUUM" } else { "ANALYZE" }.into(),
        "CreateRoleStmt" => "CREATE ROLE".into(),
        "DiscardStmt" => "DISCARD".into(),
        _ => FIXED
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, k, ..)| (*k).to_string())
            .unwrap_or_else(|| name.to_string()),
    }
}

impl Walker<'_> {
    fn raise(&mut self, class: Class, reason: String) {
        self.class = self.class.max(class);
        if !reason.is_empty() {
            self.reasons.push(reason);
        }
    }

    /// Visits any value: a node goes to `node`, a plain struct or list to its members.
    fn visit(&mut self, v: &Value, ctx: Ctx) {
        match v {
            Value::Object(m) => {
                if let Some((name, body)) = as_node(v) {
                    self.node(name, body, ctx.inner());
                } else {
                    if m.contains_key("typemod") && m.contains_key("array_bounds") {
                        // A TypeName held as a plain struct (a column's type, a coldeflist's).
                        self.type_name(v, ctx);
                    }
                    self.visit_fields(m, &[], ctx);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| self.visit(x, ctx)),
            _ => {}
        }
    }

    fn visit_fields(&mut self, m: &Map<String, Value>, skip: &[&str], ctx: Ctx) {
        for (k, v) in m {
            if !skip.contains(&k.as_str()) {
                self.visit(v, ctx.inner());
            }
        }
    }

    fn visit_body(&mut self, body: &Value, skip: &[&str], ctx: Ctx) {
        if let Some(m) = body.as_object() {
            self.visit_fields(m, skip, ctx);
        }
    }

    fn node(&mut self, name: &str, body: &Value, ctx: Ctx) {
        match name {
            "SelectStmt" => self.select(body, ctx),
            "InsertStmt" => {
                let table = body.get("relation").and_then(range_var).unwrap_or_default();
                if ctx.executed {
                    self.raise(Class::Write, String::new());
                }
                self.objects.push(table);
                self.target(body, ctx);
                self.visit_body(body, &[], ctx);
            }
            "DeleteStmt" | "UpdateStmt" => self.delete_update(name, body, ctx),
            "MergeStmt" => self.merge(body, ctx),
            "CopyStmt" => self.copy(body, ctx),
            "ExplainStmt" => self.explain(body, ctx),
            "PrepareStmt" => self.prepare(body, ctx),
            "ExecuteStmt" => {
                self.executes.push((str_field(body, "name").to_string(), ctx.top));
                self.visit_body(body, &[], ctx);
            }
            "DeclareCursorStmt" => {
                // The query runs at FETCH, not here: its class is what a FETCH from it runs.
                let name = str_field(body, "portalname").to_string();
                let query = field(body, "query");
                let inner = analyze_statement(query, self.policy);
                // CURSOR_OPT_HOLD: the cursor outlives its transaction.
                let hold = int_field(body, "options") & 0x0020 != 0;
                // Its functions are still classified here, so that a cursor over something
                // destructive is held at DECLARE already.
                self.visit(query, ctx.inner());
                self.effects.push(Effect::Declare {
                    name,
                    analysis: Arc::new(Analysis {
                        error: None,
                        statements: vec![inner],
                        reads_constants: false,
                    }),
                    hold,
                });
            }
            "ClosePortalStmt" => {
                let name = str_field(body, "portalname");
                self.effects.push(Effect::ClosePortal((!name.is_empty()).then(|| name.to_string())));
            }
            "FetchStmt" => {
                self.fetches.push(str_field(body, "portalname").to_string());
            }
            "DeallocateStmt" => {
                if bool_field(body, "isall") {
                    self.effects.push(Effect::DeallocateAll);
                } else {
                    self.effects.push(Effect::Deallocate(str_field(body, "name").to_string()));
                }
            }
            "CallStmt" => {
                // `funccall` is a FuncCall struct, not a Node: it would escape the generic walk.
                if let Some(f) = body.get("funccall").filter(|f| f.is_object()) {
                    self.func_call(f, ctx);
                }
            }
            "FuncCall" => self.func_call(body, ctx),
            "RangeVar" => {
                let rel = str_field(body, "relname");
                if (ctx.executed || ctx.planned) && !rel.is_empty() && !self.relations.iter().any(|r| r == rel) {
                    self.relations.push(rel.to_string());
                }
                self.visit_body(body, &[], ctx);
            }
            "TypeName" => {
                self.type_name(body, ctx);
                self.visit_body(body, &[], ctx);
            }
            "TableLikeClause" => {
                // `CREATE TABLE t (LIKE src INCLUDING ALL)` copies src's index expressions,
                // statistics, CHECKs and defaults — the code its reading or writing runs.
                if let Some(rel) = body.get("relation").and_then(|r| r.get("relname")).and_then(Value::as_str)
                    && !rel.is_empty()
                    && !self.relations.iter().any(|r| r == rel)
                {
                    self.relations.push(rel.to_string());
                }
                self.visit_body(body, &[], ctx);
            }
            "CreateRangeStmt" => {
                // A range's subtype_diff runs in ANALYZE (autovacuum's too) and while planning
                // a range comparison; its canonical function in every input of the type: a
                // function of the application's named there is planted like a call.
                for p in list(body, "params") {
                    if let Some(("DefElem", d)) = as_node(p)
                        && matches!(str_field(d, "defname"), "subtype_diff" | "canonical")
                        && let Some(("TypeName", t)) = as_node(field(d, "arg"))
                    {
                        let parts = names(list(t, "names"));
                        let v = classify_function(&parts, self.policy);
                        self.unknown_calls |= v.unknown;
                        self.raise(v.class, v.reason.unwrap_or_default());
                        if v.unknown {
                            self.raise(
                                self.policy.unknown_functions.class(),
                                format!(
                                    "CREATE TYPE … AS RANGE names {}() as its {}: it runs whenever the type is analysed, planned over or read",
                                    parts.join("."),
                                    str_field(d, "defname")
                                ),
                            );
                        }
                    }
                }
                self.fixed(name, body, ctx, true);
            }
            "TypeCast" => {
                if ctx.executed
                    && let Some(t) = names(list(field(body, "type_name"), "names")).pop()
                    && !self.cast_types.contains(&t)
                {
                    self.cast_types.push(t);
                }
                self.visit_body(body, &[], ctx);
            }
            "AExpr" => {
                let op = names(list(body, "name"));
                if builtin_operator(&op) {
                    // Another schema's operator of the same name may match the operands better.
                    self.unqualified_builtins |= op.len() < 2;
                } else {
                    self.unknown_calls |= ctx.executed || ctx.planned;
                    self.raise(
                        self.policy.unknown_functions.class(),
                        format!(
                            "uses operator {}, which is not a built-in one (an operator runs a function)",
                            op.join(".")
                        ),
                    );
                }
                self.visit_body(body, &[], ctx);
            }
            "DropStmt" => {
                let what = object_type(int_field(body, "remove_type"));
                let objs: Vec<String> = list(body, "objects").iter().map(object_name).collect();
                self.raise(Class::Destructive, format!("DROP {what} {}", objs.join(", ")));
                self.objects.extend(objs);
            }
            "TruncateStmt" => {
                let objs: Vec<String> = list(body, "relations").iter().map(object_name).collect();
                self.raise(Class::Destructive, format!("TRUNCATE empties {}", objs.join(", ")));
                self.objects.extend(objs);
            }
            "AlterTableStmt" => self.alter_table(body, ctx),
            "DefineStmt" => {
                let kind = ObjectType::try_from(int_field(body, "kind"));
                let harmless = matches!(
                    kind,
                    Ok(ObjectType::ObjectCollation
                        | ObjectType::ObjectTsconfiguration
                        | ObjectType::ObjectTsdictionary)
                );
                if harmless {
                    self.raise(Class::Ddl, String::new());
                } else {
                    self.raise(
                        Class::Destructive,
                        format!(
                            "CREATE {} defines functions that run implicitly",
                            object_type(int_field(body, "kind"))
                        ),
                    );
                }
            }
            "CreateTableAsStmt" => {
                if ctx.executed {
                    self.raise(Class::Ddl, String::new());
                }
                if let Some(t) = body.get("into").and_then(|i| i.get("rel")).and_then(range_var) {
                    self.objects.push(t);
                }
                self.visit_body(body, &[], ctx);
            }
            "VariableSetStmt" => self.set(body),
            "GrantStmt" => {
                self.raise(
                    Class::Destructive,
                    format!(
                        "{} changes who may do what",
                        if bool_field(body, "is_grant") { "GRANT" } else { "REVOKE" }
                    ),
                );
            }
            "TransactionStmt" => match TransactionStmtKind::try_from(int_field(body, "kind")) {
                Ok(TransactionStmtKind::TransStmtPrepare) => self.raise(
                    Class::Write,
                    "PREPARE TRANSACTION leaves a transaction holding its locks after the session".into(),
                ),
                // Any session's prepared transaction, which its coordinator may already count
                // as committed: discarding it loses that work, and ending it either way takes
                // the coordinator's decision from it.
                Ok(TransactionStmtKind::TransStmtRollbackPrepared) => self.raise(
                    Class::Destructive,
                    format!(
                        "ROLLBACK PREPARED {:?} discards a prepared transaction, perhaps another session's, whose coordinator may count it as committed",
                        str_field(body, "gid")
                    ),
                ),
                Ok(TransactionStmtKind::TransStmtCommitPrepared) => self.raise(
                    Class::Write,
                    "COMMIT PREPARED commits a prepared transaction, perhaps another session's".into(),
                ),
                _ => {}
            },
            "VacuumStmt" => {
                let full = list(body, "options").iter().any(|o| match as_node(o) {
                    Some(("DefElem", d)) => str_field(d, "defname") == "full" && !option_off(field(d, "arg")),
                    _ => false,
                });
                if full {
                    self.raise(
                        Class::Ddl,
                        "VACUUM FULL rewrites tables under an exclusive lock (no rows are lost)".into(),
                    );
                } else {
                    self.raise(Class::Write, String::new());
                }
                self.visit_body(body, &[], ctx);
            }
            "CreateRoleStmt" => {
                let grants: Vec<String> = list(body, "options")
                    .iter()
                    .filter_map(|o| match as_node(o) {
                        Some(("DefElem", d)) => {
                            let n = str_field(d, "defname");
                            let powerful = matches!(
                                n,
                                "superuser"
                                    | "createrole"
                                    | "isreplication"
                                    | "replication"
                                    | "bypassrls"
                                    | "addroleto"
                                    | "rolemembers"
                                    | "adminmembers"
                            );
                            (powerful && !option_off(field(d, "arg"))).then(|| n.to_string())
                        }
                        _ => None,
                    })
                    .collect();
                if grants.is_empty() {
                    self.raise(Class::Ddl, String::new());
                } else {
                    self.raise(
                        Class::Destructive,
                        format!(
                            "CREATE ROLE {} with {}: a new identity with powers or memberships",
                            str_field(body, "role"),
                            grants.join(", ")
                        ),
                    );
                }
            }
            "DiscardStmt" => match DiscardMode::try_from(int_field(body, "target")) {
                Ok(DiscardMode::DiscardAll) => {
                    self.raise(
                        Class::Ddl,
                        "DISCARD ALL resets the session's role, settings and prepared statements".into(),
                    );
                    self.effects.push(Effect::DeallocateAll);
                    self.effects.push(Effect::ClosePortal(None));
                    self.effects.push(Effect::LexingUncertain);
                }
                Ok(DiscardMode::DiscardTemp) => {
                    self.raise(Class::Write, "DISCARD TEMP drops this session's temporary tables".into())
                }
                Ok(_) => {}
                Err(_) => self.raise(Class::Destructive, "DISCARD of an unknown kind".into()),
            },
            // Destructive or definitional statements whose contents do not matter: the class
            // comes from the table; no need to look inside (a function body, a rule action).
            "DoStmt" | "CreateFunctionStmt" | "RuleStmt" | "CreateTrigStmt" | "CreateEventTrigStmt" => {
                self.fixed(name, body, ctx, false);
            }
            "RenameStmt"
                if ObjectType::try_from(int_field(body, "rename_type")) == Ok(ObjectType::ObjectRole) =>
            {
                self.raise(
                    Class::Destructive,
                    format!("ALTER ROLE {} RENAME: changes a role's identity", str_field(body, "subname")),
                );
            }
            "RenameStmt" | "AlterObjectSchemaStmt"
                if routine(int_field(body, if name == "RenameStmt" { "rename_type" } else { "object_type" })) =>
            {
                // What the application calls by name would run another function: a time bomb
                // like CREATE OR REPLACE FUNCTION, for whoever calls it next.
                let what = object_type(int_field(body, if name == "RenameStmt" { "rename_type" } else { "object_type" }));
                let verb = if name == "RenameStmt" { "RENAME" } else { "SET SCHEMA" };
                self.raise(
                    Class::Destructive,
                    format!("ALTER {what} … {verb}: later calls by a name may run another {}", what.to_lowercase()),
                );
                self.visit_body(body, &[], ctx);
            }
            "CreateSchemaStmt" | "ViewStmt" | "CreateStmt" | "IndexStmt" => self.fixed(name, body, ctx, true),
            _ if FIXED.iter().any(|(n, ..)| *n == name) => self.fixed(name, body, ctx, true),
            _ if INERT.contains(&name) => self.visit_body(body, &[], ctx),
            _ => {
                self.raise(
                    Class::Destructive,
                    format!("the parse tree holds a {name} node, which the guard does not recognise (unknown means destructive)"),
                );
                self.visit_body(body, &[], ctx);
            }
        }
    }

    fn fixed(&mut self, name: &str, body: &Value, ctx: Ctx, look_inside: bool) {
        if let Some((_, kind, class, reason)) = FIXED.iter().find(|(n, ..)| *n == name) {
            if ctx.executed || *class == Class::Destructive {
                let reason = if *class == Class::Destructive && reason.is_empty() {
                    (*kind).to_string()
                } else {
                    (*reason).to_string()
                };
                self.raise(*class, reason);
            }
            if let Some(t) = body.get("relation").and_then(range_var) {
                self.objects.push(t);
            }
        }
        if look_inside {
            self.visit_body(body, &[], ctx);
        }
    }

    fn select(&mut self, body: &Value, ctx: Ctx) {
        if ctx.executed {
            if let Some(into) = body.get("into_clause").filter(|v| v.is_object()) {
                let t = into.get("rel").and_then(range_var).unwrap_or_default();
                self.raise(Class::Ddl, format!("SELECT INTO creates table {t}"));
                self.objects.push(t);
            }
            if !list(body, "locking_clause").is_empty() {
                self.raise(Class::Write, "SELECT … FOR UPDATE/SHARE locks rows".into());
            }
        }
        // UNION arms are SelectStmt structs, not Nodes: walk them as selects.
        for arm in ["larg", "rarg"] {
            if let Some(a) = body.get(arm).filter(|a| a.is_object()) {
                self.select(a, ctx.inner());
            }
        }
        self.visit_body(body, &["larg", "rarg"], ctx);
    }

    /// The target of an INSERT, UPDATE, DELETE or MERGE is a relation the statement reads for
    /// PostgreSQL too: parse analysis converts literals to its columns' types (a composite's
    /// record_in, an array's array_in run a field's domain CHECK), the rewriter adds its
    /// defaults and policies, the planner folds its index expressions and defaults — all before
    /// the Execute through the extended protocol. pg_query gives the target as a bare RangeVar
    /// struct (not a node), which the generic walk does not see: named here.
    fn target(&mut self, body: &Value, ctx: Ctx) {
        let rel = str_field(field(body, "relation"), "relname");
        if (ctx.executed || ctx.planned) && !rel.is_empty() && !self.relations.iter().any(|r| r == rel) {
            self.relations.push(rel.to_string());
        }
    }

    fn delete_update(&mut self, name: &str, body: &Value, ctx: Ctx) {
        let verb = if name == "DeleteStmt" { "DELETE" } else { "UPDATE" };
        let table = body.get("relation").and_then(range_var).unwrap_or_default();
        self.objects.push(table.clone());
        self.target(body, ctx);
        if ctx.executed {
            if !ctx.top {
                self.raise(
                    Class::Destructive,
                    format!("{verb} on {table} inside another statement (WITH, COPY or EXPLAIN ANALYZE): a hidden write whose row count cannot be checked"),
                );
            } else {
                let alias = body
                    .get("relation")
                    .and_then(|r| r.get("alias"))
                    .and_then(|a| a.get("aliasname"))
                    .and_then(Value::as_str);
                let targets: Vec<&str> = [Some(str_field(field(body, "relation"), "relname")), alias]
                    .into_iter()
                    .flatten()
                    .collect();
                match field(body, "where_clause") {
                    Value::Null => self.raise(Class::Destructive, format!("{verb} without WHERE on {table}")),
                    w => match all_rows(w, &targets) {
                        Some(why) => self.raise(
                            Class::Destructive,
                            format!("{verb} on {table} with a WHERE clause that matches every row ({why})"),
                        ),
                        None => {
                            self.raise(Class::Write, String::new());
                            self.row_guard = Some(table);
                        }
                    },
                }
            }
        }
        self.visit_body(body, &[], ctx);
    }

    fn merge(&mut self, body: &Value, ctx: Ctx) {
        let table = body.get("relation").and_then(range_var).unwrap_or_default();
        self.objects.push(table.clone());
        self.target(body, ctx);
        if ctx.executed {
            let changes = list(body, "merge_when_clauses").iter().any(|c| match as_node(c) {
                Some(("MergeWhenClause", b)) => !matches!(
                    CmdType::try_from(int_field(b, "command_type")),
                    Ok(CmdType::CmdInsert | CmdType::CmdNothing)
                ),
                _ => true,
            });
            if !ctx.top && changes {
                self.raise(Class::Destructive, format!("MERGE on {table} inside another statement: a hidden write whose row count cannot be checked"));
            } else if changes {
                let targets = [str_field(field(body, "relation"), "relname")];
                match all_rows(field(body, "join_condition"), &targets) {
                    Some(why) => self.raise(
                        Class::Destructive,
                        format!("MERGE on {table} whose ON condition matches every row ({why})"),
                    ),
                    None => {
                        self.raise(Class::Write, String::new());
                        if ctx.top {
                            self.row_guard = Some(table);
                        }
                    }
                }
            } else {
                self.raise(Class::Write, String::new());
            }
        }
        self.visit_body(body, &[], ctx);
    }

    fn copy(&mut self, body: &Value, ctx: Ctx) {
        let table = body.get("relation").and_then(range_var);
        if let Some(t) = &table {
            self.objects.push(t.clone());
        }
        let file = str_field(body, "filename");
        if bool_field(body, "is_program") {
            self.raise(
                Class::Destructive,
                format!("COPY … PROGRAM runs a shell command on the database server ({file})"),
            );
        } else if !file.is_empty() {
            self.raise(
                Class::Destructive,
                format!("COPY reads or writes a file on the database server ({file})"),
            );
        } else if bool_field(body, "is_from") {
            self.copy_from = true;
            self.copy_freeze = list(body, "options").iter().any(|o| match as_node(o) {
                Some(("DefElem", d)) => str_field(d, "defname") == "freeze" && !option_off(field(d, "arg")),
                _ => false,
            });
            self.raise(
                Class::Write,
                format!("COPY FROM STDIN inserts rows into {}", table.unwrap_or_default()),
            );
        }
        self.visit_body(body, &[], ctx);
    }

    fn explain(&mut self, body: &Value, ctx: Ctx) {
        let analyze = list(body, "options").iter().any(|o| match as_node(o) {
            Some(("DefElem", d)) => str_field(d, "defname") == "analyze" && !option_off(field(d, "arg")),
            _ => false,
        });
        if analyze {
            self.reasons.push("EXPLAIN ANALYZE runs the statement".into());
        }
        // Without ANALYZE nothing runs, but the planner may still evaluate functions: calls are
        // classified either way.
        let inner = Ctx { top: false, executed: ctx.executed && analyze, planned: ctx.planned };
        self.visit(field(body, "query"), inner);
    }

    fn prepare(&mut self, body: &Value, ctx: Ctx) {
        let name = str_field(body, "name").to_string();
        let query = field(body, "query");
        let mut inner = analyze_statement(query, self.policy);
        // PREPARE runs the query's parse analysis now — a literal converted to a column's or a
        // cast's composite, array or range type runs a field's domain CHECK — and EXECUTE
        // converts its arguments to the declared parameter types: what the query names and
        // the declared types count for both (the PREPARE itself, and the prepared query that
        // EXECUTE runs).
        for t in list(body, "argtypes") {
            if let Some(("TypeName", b)) = as_node(t)
                && let Some(n) = names(list(b, "names")).pop()
                && !inner.type_names.contains(&n)
            {
                inner.type_names.push(n);
            }
        }
        if ctx.executed || ctx.planned {
            for r in &inner.relations {
                if !self.relations.contains(r) {
                    self.relations.push(r.clone());
                }
            }
            for t in inner.cast_types.iter().chain(&inner.type_names) {
                if !self.type_names.contains(t) {
                    self.type_names.push(t.clone());
                }
            }
        }
        self.effects.push(Effect::Prepare {
            name,
            analysis: Arc::new(Analysis { error: None, statements: vec![inner], reads_constants: false }),
        });
    }

    /// A type named anywhere but in a cast (see [`StmtAnalysis::type_names`]).
    fn type_name(&mut self, body: &Value, ctx: Ctx) {
        if (ctx.executed || ctx.planned)
            && let Some(t) = names(list(body, "names")).pop()
            && !self.type_names.contains(&t)
        {
            self.type_names.push(t);
        }
    }

    fn func_call(&mut self, body: &Value, ctx: Ctx) {
        let parts = names(list(body, "funcname"));
        let args = list(body, "args");
        let lname = parts.last().map(|s| s.to_lowercase()).unwrap_or_default();
        let catalog = parts.len() < 2 || parts[parts.len() - 2] == "pg_catalog";
        if lname == "set_config" && catalog {
            self.set_config(args);
        } else {
            let v = classify_function(&parts, self.policy);
            self.unqualified_builtins |= v.unqualified_builtin;
            self.unknown_calls |= v.unknown && (ctx.executed || ctx.planned);
            self.raise(v.class, v.reason.unwrap_or_default());
        }
        self.visit_body(body, &["funcname"], ctx);
    }

    fn set_config(&mut self, args: &[Value]) {
        let Some(setting) = args.first().and_then(const_string) else {
            self.raise(Class::Destructive, "set_config() with a computed setting name".into());
            return;
        };
        let setting = setting.to_lowercase();
        if setting == "standard_conforming_strings" {
            self.effects.push(Effect::LexingUncertain);
        }
        let (class, reason) = classify_setting(&setting);
        self.raise(class, reason.map(|r| format!("set_config: {r}")).unwrap_or_default());
        if setting == "client_encoding" {
            match args.get(1).and_then(const_string) {
                Some(v) => self.client_encoding(v),
                None => self
                    .raise(Class::Destructive, "set_config: client_encoding set to a computed value".into()),
            }
        }
        if setting == "search_path" {
            match args.get(1).and_then(const_string) {
                Some(v) => {
                    // PostgreSQL folds unquoted names in the list to lower case.
                    let schemas: Vec<String> = v
                        .split(',')
                        .map(str::trim)
                        .map(|s| {
                            if s.starts_with('"') {
                                s.trim_matches('"').to_string()
                            } else {
                                s.to_lowercase()
                            }
                        })
                        .collect();
                    self.search_path(&schemas);
                }
                None => {
                    self.reasons.push("set_config: search_path set to a computed value".into());
                    self.effects.push(Effect::SearchPathTampered);
                }
            }
        }
    }

    fn search_path(&mut self, schemas: &[String]) {
        if let Some(pos) = schemas.iter().position(|s| s == "pg_catalog")
            && pos > 0
        {
            self.reasons.push(format!(
                "search_path puts {} before pg_catalog: in this session, unqualified calls to built-in functions count as unknown functions",
                schemas[..pos].join(", ")
            ));
            self.effects.push(Effect::SearchPathTampered);
        }
    }

    fn set(&mut self, body: &Value) {
        let kind = VariableSetKind::try_from(int_field(body, "kind"));
        let setting = str_field(body, "name").to_lowercase();
        if setting == "standard_conforming_strings" || kind == Ok(VariableSetKind::VarResetAll) {
            self.effects.push(Effect::LexingUncertain);
        }
        match kind {
            Ok(VariableSetKind::VarResetAll) => self.raise(
                Class::Ddl,
                "RESET ALL resets every session setting (timeouts, search_path, …)".into(),
            ),
            Ok(VariableSetKind::VarSetMulti) => {}
            Ok(_) => {
                let (class, reason) = classify_setting(&setting);
                self.raise(class, reason.unwrap_or_default());
                if setting == "search_path" && kind == Ok(VariableSetKind::VarSetValue) {
                    let schemas: Vec<String> =
                        list(body, "args").iter().filter_map(const_string).map(str::to_string).collect();
                    self.search_path(&schemas);
                }
                if setting == "client_encoding" && kind == Ok(VariableSetKind::VarSetValue) {
                    let value = list(body, "args").first().and_then(const_string).unwrap_or("");
                    self.client_encoding(value);
                }
            }
            Err(_) => self.raise(Class::Destructive, format!("SET of an unknown kind on {setting}")),
        }
    }

    /// The gate hands the guard UTF-8 text. In another client encoding the server converts the
    /// bytes before lexing, and in GBK, SJIS or BIG5 a quote or backslash byte can hide inside a
    /// multibyte character: the server would read other statements than the guard checked.
    fn client_encoding(&mut self, value: &str) {
        let v = value.to_lowercase().replace(['-', '_'], "");
        if !matches!(v.as_str(), "utf8" | "unicode") {
            self.raise(
                Class::Destructive,
                format!("SET client_encoding = {value:?}: the guard checks statements as UTF-8, the server would read them in another encoding"),
            );
        }
    }

    fn alter_table(&mut self, body: &Value, ctx: Ctx) {
        let table = body.get("relation").and_then(range_var).unwrap_or_default();
        self.objects.push(table.clone());
        self.raise(Class::Ddl, String::new());
        for cmd in list(body, "cmds") {
            let Some(("AlterTableCmd", c)) = as_node(cmd) else {
                self.raise(Class::Destructive, "ALTER TABLE with a command the guard cannot read".into());
                continue;
            };
            let col = str_field(c, "name");
            use AlterTableType as T;
            match AlterTableType::try_from(int_field(c, "subtype")) {
                Ok(T::AtDropColumn) => self.raise(Class::Destructive, format!("ALTER TABLE {table} DROP COLUMN {col}")),
                Ok(T::AtAlterColumnType) => self.raise(
                    Class::Destructive,
                    format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE rewrites the column: a USING expression or narrowing cast can destroy its values"),
                ),
                Ok(T::AtChangeOwner) => self.raise(Class::Destructive, format!("ALTER TABLE {table} OWNER TO hands the table to another role")),
                Ok(T::AtSetUnLogged) => self.raise(
                    Class::Destructive,
                    format!("ALTER TABLE {table} SET UNLOGGED: its changes leave the WAL (and the vault) and it is emptied after a crash"),
                ),
                Ok(
                    T::AtDisableTrig
                    | T::AtDisableTrigAll
                    | T::AtDisableTrigUser
                    | T::AtEnableReplicaTrig
                    | T::AtDisableRule
                    | T::AtEnableReplicaRule
                    | T::AtDisableRowSecurity
                    | T::AtNoForceRowSecurity,
                ) => self.raise(Class::Destructive, format!("ALTER TABLE {table} switches off a trigger, rule or row-level security")),
                Ok(T::AtAddInherit | T::AtAttachPartition) => self.raise(
                    Class::Destructive,
                    format!("ALTER TABLE {table} puts another table's rows under this one (INHERIT, ATTACH PARTITION): later DELETE, UPDATE and TRUNCATE of it — retention jobs included — reach them"),
                ),
                Ok(T::AtAddConstraint) => {
                    if let Some(action) = cascading_foreign_key(field(c, "def")) {
                        self.raise(
                            Class::Destructive,
                            format!("ALTER TABLE {table} adds a foreign key whose {action} makes later statements on another table change or delete rows of {table}: a hidden write, like a trigger"),
                        );
                    }
                }
                Ok(T::Undefined) | Err(_) => {
                    self.raise(Class::Destructive, format!("ALTER TABLE {table} with a command the guard does not recognise"))
                }
                Ok(_) => {}
            }
            self.visit_body(c, &[], ctx);
        }
    }
}

/// The referential action of a FOREIGN KEY constraint that changes the referencing rows
/// (`ON DELETE CASCADE`, `ON UPDATE SET NULL`…), if it has one.
fn cascading_foreign_key(def: &Value) -> Option<String> {
    let Some(("Constraint", b)) = as_node(def) else { return None };
    if pg_query::protobuf::ConstrType::try_from(int_field(b, "contype"))
        != Ok(pg_query::protobuf::ConstrType::ConstrForeign)
    {
        return None;
    }
    let action = |code: &str| match code {
        "c" => Some("CASCADE"),
        "n" => Some("SET NULL"),
        "d" => Some("SET DEFAULT"),
        _ => None,
    };
    action(str_field(b, "fk_del_action"))
        .map(|a| format!("ON DELETE {a}"))
        .or_else(|| action(str_field(b, "fk_upd_action")).map(|a| format!("ON UPDATE {a}")))
}

/// Whether an object type is something called by name (a function, procedure, aggregate or
/// operator): renaming or moving one changes what a later call runs.
fn routine(object_type: i32) -> bool {
    matches!(
        ObjectType::try_from(object_type),
        Ok(ObjectType::ObjectFunction
            | ObjectType::ObjectProcedure
            | ObjectType::ObjectRoutine
            | ObjectType::ObjectAggregate
            | ObjectType::ObjectOperator)
    )
}

/// An option argument that turns it off (`ANALYZE false`, `FULL off`, `NOSUPERUSER`). PostgreSQL
/// accepts true/false/on/off/1/0; anything that is not clearly off counts as on.
fn option_off(arg: &Value) -> bool {
    constant_read();
    match as_node(arg) {
        Some(("Boolean", b)) => !bool_field(b, "boolval"),
        Some(("Integer", b)) => int_field(b, "ival") == 0,
        Some(("String", b)) => {
            matches!(str_field(b, "sval").to_lowercase().as_str(), "false" | "off" | "0" | "no")
        }
        _ => false,
    }
}

fn has_column_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            if let Some((n, _)) = as_node(v)
                && matches!(n, "ColumnRef" | "CurrentOfExpr")
            {
                return true;
            }
            m.values().any(has_column_ref)
        }
        Value::Array(a) => a.iter().any(has_column_ref),
        _ => false,
    }
}

/// A canonical text for comparing expressions: locations dropped, a column qualified with the
/// target table (or its alias) written as the bare column.
fn canonical(v: &Value, targets: &[&str], mask: bool, out: &mut String) {
    match v {
        Value::Object(m) => {
            if mask && let Some(("AConst", _)) = as_node(v) {
                out.push_str("const");
                return;
            }
            if let Some(("ColumnRef", b)) = as_node(v) {
                let mut f = names(list(b, "fields"));
                if f.len() == 2 && targets.contains(&f[0].as_str()) {
                    f.remove(0);
                }
                out.push_str("col:");
                out.push_str(&f.join("."));
                return;
            }
            out.push('{');
            for (k, x) in m {
                if k != "location" {
                    out.push_str(k);
                    out.push(':');
                    canonical(x, targets, mask, out);
                    out.push(',');
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, targets, mask, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Why a WHERE (or MERGE ON) clause matches every row, if it trivially does.
fn all_rows(e: &Value, targets: &[&str]) -> Option<String> {
    if e.is_null() {
        return Some("there is no condition".into());
    }
    if !has_column_ref(e) {
        return Some("it does not refer to any column, so it is the same for every row".into());
    }
    match as_node(e)? {
        ("BoolExpr", b) => {
            let args = list(b, "args");
            match BoolExprType::try_from(int_field(b, "boolop")) {
                Ok(BoolExprType::OrExpr) => {
                    args.iter().find_map(|a| all_rows(a, targets)).map(|w| format!("one side of OR: {w}"))
                }
                Ok(BoolExprType::AndExpr) => {
                    let all: Option<Vec<String>> = args.iter().map(|a| all_rows(a, targets)).collect();
                    all.map(|w| w.join("; "))
                }
                _ => None,
            }
        }
        ("AExpr", b) => {
            let op = names(list(b, "name"));
            let op = op.last().map(String::as_str).unwrap_or("");
            let kind = AExprKind::try_from(int_field(b, "kind"));
            let (l, r) = (field(b, "lexpr"), field(b, "rexpr"));
            match kind {
                Ok(AExprKind::AexprOp | AExprKind::AexprNotDistinct) if matches!(op, "=" | ">=" | "<=") => {
                    let (mut a, mut c) = (String::new(), String::new());
                    canonical(l, targets, false, &mut a);
                    canonical(r, targets, false, &mut c);
                    // With every constant masked, equal sides mean the verdict rests on the
                    // constants' values (`id + 1 = id + 1` against `id + 1 = id + 2`).
                    let (mut ma, mut mc) = (String::new(), String::new());
                    canonical(l, targets, true, &mut ma);
                    canonical(r, targets, true, &mut mc);
                    if ma == mc && (a != ma || c != mc) {
                        constant_read();
                    }
                    (a == c).then(|| "it compares a value with itself".to_string())
                }
                Ok(AExprKind::AexprLike | AExprKind::AexprIlike) if matches!(op, "~~" | "~~*") => {
                    const_string(r)
                        .filter(|p| !p.is_empty() && p.chars().all(|ch| ch == '%'))
                        .map(|_| "LIKE '%' matches every value".to_string())
                }
                _ => None,
            }
        }
        ("BooleanTest", b) => {
            // IS TRUE and IS NOT FALSE keep whatever the argument matches.
            if matches!(
                BoolTestType::try_from(int_field(b, "booltesttype")),
                Ok(BoolTestType::IsTrue | BoolTestType::IsNotFalse)
            ) {
                all_rows(field(b, "arg"), targets)
            } else {
                None
            }
        }
        _ => None,
    }
}
