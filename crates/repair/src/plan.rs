//! From the damage to a plan (scratch copies restored, rows compared, the SQL written), and
//! from the plan to the live database (one transaction, verified before COMMIT) or to CSV files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use restore::Target;
use vault_api::VaultClient;

use crate::db::{Conn, SESSION_SETTINGS, ident, literal};
use crate::diff::{self, Conflict, Diff, Op};
use crate::{Damage, Options, Prefer, RepairError, TEST_HOOK_ENV, Triggers};

/// The scratch copies' superuser: restored with a local-trust `pg_hba.conf` on a private
/// socket, so no password is needed.
const SCRATCH_USER: &str = "postgres";

/// Conflict keys listed per table in the printed plan (all of them are in `--json`).
const SHOWN_KEYS: usize = 20;

/// A table, schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct QName {
    schema: String,
    table: String,
}

impl QName {
    fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }
}

impl std::fmt::Display for QName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// What the catalog says about one table on one side.
#[derive(Debug, Clone)]
struct Shape {
    columns: Vec<String>,
    /// `name type` of each column, in order: two sides must agree for rows to move between
    /// them.
    signature: String,
    pk: Vec<String>,
}

/// What happens to one table.
#[derive(Debug)]
enum Work {
    Rows {
        shape: Shape,
        diff: Diff,
        prefer: Prefer,
    },
    /// Dropped by the incident: recreated from the copy before it.
    Recreate {
        pre_and_data: String,
        post: String,
        foreign_keys: Vec<String>,
        rows: u64,
        checksum: String,
    },
}

#[derive(Debug)]
struct TablePlan {
    name: QName,
    /// Created under this name (`--as`), else `name`.
    created_as: Option<QName>,
    work: Work,
    sequences: Vec<(String, String)>,
}

/// Per table: what the repair does (or did).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    /// `rows` (re-insert and revert rows) or `recreate` (the table was dropped).
    pub action: String,
    /// Rows are matched by primary key (`false`: whole rows, the table has none).
    pub keyed: bool,
    pub reinserted: u64,
    pub reverted: u64,
    pub conflicts: Vec<Conflict>,
    /// Rows the incident itself added: never touched.
    pub added_by_incident: u64,
    pub prefer: Prefer,
    /// For a recreated table: its rows as of before the incident.
    pub recreated_rows: Option<u64>,
    /// Recreated under this name (`--as`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_as: Option<String>,
}

/// What a repair planned, and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    /// `incident 3 (mass_delete, transaction 1234)` or the window.
    pub damage: String,
    pub before: String,
    pub after: String,
    pub database: String,
    pub tenant: Option<String>,
    /// Whether user triggers fire during the repair.
    pub triggers: String,
    pub tables: Vec<TableReport>,
    /// The script, with the rows themselves left out.
    pub sql: String,
    pub applied: bool,
    pub exported: Option<PathBuf>,
    /// Restoring the two scratch copies.
    pub restore_seconds: f64,
    /// Reading and comparing the rows, writing the script.
    pub plan_seconds: f64,
    pub apply_seconds: Option<f64>,
    /// What the in-transaction verification reported (one line per table).
    pub verified: Vec<String>,
    pub notes: Vec<String>,
    pub verdict: String,
}

impl Report {
    pub fn reinserted(&self) -> u64 {
        self.tables.iter().map(|t| t.reinserted + t.recreated_rows.unwrap_or(0)).sum()
    }
    pub fn reverted(&self) -> u64 {
        self.tables.iter().map(|t| t.reverted).sum()
    }
    pub fn conflicts(&self) -> usize {
        self.tables.iter().map(|t| t.conflicts.len()).sum()
    }

    /// The plan as people read it: per table, then the SQL.
    pub fn plan_text(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "repair of cluster {}, database {}: {}", self.cluster, self.database, self.damage);
        let _ = writeln!(s, "  before: {}", self.before);
        let _ = writeln!(s, "  after:  {}", self.after);
        if let Some(t) = &self.tenant {
            let _ = writeln!(s, "  tenant: {t}");
        }
        let _ = writeln!(s, "  triggers: {}", self.triggers);
        let _ = writeln!(
            s,
            "\n{:<36} {:>10} {:>10} {:>10} {:>10}",
            "table", "re-insert", "revert", "conflicts", "left alone"
        );
        for t in &self.tables {
            let name = match &t.created_as {
                Some(a) => format!("{} (as {a})", t.table),
                None => t.table.clone(),
            };
            if t.action == "recreate" {
                let _ = writeln!(
                    s,
                    "{name:<36} {:>10} {:>10} {:>10} {:>10}   recreated (dropped by the incident)",
                    t.recreated_rows.unwrap_or(0),
                    "-",
                    "-",
                    "-"
                );
                continue;
            }
            let _ = writeln!(
                s,
                "{name:<36} {:>10} {:>10} {:>10} {:>10}{}",
                t.reinserted,
                t.reverted,
                t.conflicts.len(),
                t.added_by_incident,
                if t.keyed { "" } else { "   (no primary key: whole rows compared)" }
            );
            for c in t.conflicts.iter().take(SHOWN_KEYS) {
                let _ = writeln!(
                    s,
                    "    conflict {}: {}{}",
                    c.key,
                    c.reason,
                    if c.resolved_before {
                        " → set back to before (--prefer before)"
                    } else {
                        " → left as it is now"
                    }
                );
            }
            if t.conflicts.len() > SHOWN_KEYS {
                let _ = writeln!(s, "    … and {} more (see --json)", t.conflicts.len() - SHOWN_KEYS);
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(s, "\nSQL (one transaction; rows elided):\n{}", self.sql);
        s
    }
}

/// Scratch copies and their directory: stopped and removed when dropped.
struct Scratch {
    root: PathBuf,
    servers: Vec<restore::pg::Server>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Immediate: the copies are thrown away, a shutdown checkpoint would be wasted work.
        for s in &self.servers {
            if !s.data.join("postmaster.pid").exists() {
                continue;
            }
            let pg_ctl = s.bindir.join("pg_ctl");
            let mut c = match &s.run_as {
                Some(user) => {
                    let mut c = std::process::Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(pg_ctl);
                    c
                }
                None => std::process::Command::new(pg_ctl),
            };
            c.arg("-D").arg(&s.data).args(["-m", "immediate", "-w", "stop"]);
            match c.output() {
                Ok(o) if o.status.success() => {}
                _ => {
                    if let Err(e) = s.stop() {
                        tracing::warn!("stopping the scratch copy in {}: {e}", s.data.display());
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A planned repair, its scratch copies still running (dropping it stops and removes them).
pub struct Prepared {
    report: Report,
    script: String,
    bindir: PathBuf,
    live: Conn,
    before: Conn,
    scope: Vec<(QName, String)>,
    _scratch: Scratch,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RepairError {
    let what = what.into();
    move |source| RepairError::Io { what, source }
}

fn free_port() -> Result<u16, RepairError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// `db.schema.table`, `schema.table` or `table`.
fn parse_table(s: &str, db: &str) -> Result<QName, RepairError> {
    let parts: Vec<&str> = s.split('.').collect();
    let (d, schema, table) = match parts.as_slice() {
        [t] => (None, "public", *t),
        [s, t] => (None, *s, *t),
        [d, s, t] => (Some(*d), *s, *t),
        _ => {
            return Err(RepairError::Refused(format!(
                "--table {s:?}: expected db.schema.table, schema.table or table"
            )));
        }
    };
    if let Some(d) = d
        && d != db
    {
        return Err(RepairError::Refused(format!(
            "--table {s}: database {d} is not the one --dsn connects to ({db}); connect to {d} to repair it"
        )));
    }
    if schema.is_empty() || table.is_empty() {
        return Err(RepairError::Refused(format!("--table {s:?}: empty schema or table name")));
    }
    Ok(QName { schema: schema.to_string(), table: table.to_string() })
}

const REL: &str = "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p') AND n.nspname = {s} AND c.relname = {t}";

fn rel(q: &QName) -> String {
    REL.replace("{s}", &literal(&q.schema)).replace("{t}", &literal(&q.table))
}

/// The table's shape on `conn`, or `None` when it does not exist there.
async fn shape(conn: &Conn, bindir: &Path, q: &QName) -> Result<Option<Shape>, RepairError> {
    let sql = format!(
        "SELECT coalesce((SELECT string_agg(a.attname, E'\\x1e' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped), ''), \
         coalesce((SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped), ''), \
         coalesce((SELECT string_agg(a.attname, E'\\x1e' ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) WHERE i.indrelid = r.oid AND i.indisprimary), '') \
         FROM ({}) r",
        rel(q)
    );
    let rows = conn.query(bindir, &sql).await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let split = |s: &str| -> Vec<String> {
        if s.is_empty() { Vec::new() } else { s.split('\u{1e}').map(str::to_string).collect() }
    };
    Ok(Some(Shape {
        columns: split(&r[0]),
        signature: r.get(1).cloned().unwrap_or_default(),
        pk: split(r.get(2).map(String::as_str).unwrap_or_default()),
    }))
}

/// Tables whose rows a delete from `q` changes through their foreign keys (ON DELETE CASCADE,
/// SET NULL, SET DEFAULT).
async fn cascade_children(conn: &Conn, bindir: &Path, q: &QName) -> Result<Vec<QName>, RepairError> {
    let sql = format!(
        "SELECT DISTINCT cn.nspname, cc.relname FROM pg_catalog.pg_constraint k \
         JOIN pg_catalog.pg_class cc ON cc.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace \
         WHERE k.contype = 'f' AND k.confdeltype IN ('c', 'n', 'd') AND k.conrelid <> k.confrelid AND k.confrelid = ({})",
        rel(q)
    );
    Ok(conn
        .query(bindir, &sql)
        .await?
        .into_iter()
        .map(|r| QName { schema: r[0].clone(), table: r[1].clone() })
        .collect())
}

/// Tables `q` references by foreign key (its parents).
async fn parents(conn: &Conn, bindir: &Path, q: &QName) -> Result<Vec<QName>, RepairError> {
    let sql = format!(
        "SELECT DISTINCT pn.nspname, pc.relname FROM pg_catalog.pg_constraint k \
         JOIN pg_catalog.pg_class pc ON pc.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
         WHERE k.contype = 'f' AND k.conrelid <> k.confrelid AND k.conrelid = ({})",
        rel(q)
    );
    Ok(conn
        .query(bindir, &sql)
        .await?
        .into_iter()
        .map(|r| QName { schema: r[0].clone(), table: r[1].clone() })
        .collect())
}

/// Sequences feeding `q`'s columns (serial and identity columns, and any `nextval` default):
/// (column, sequence as a qualified SQL name).
async fn sequences(conn: &Conn, bindir: &Path, q: &QName) -> Result<Vec<(String, String)>, RepairError> {
    let sql = format!(
        "SELECT DISTINCT a.attname, pg_catalog.format('%I.%I', sn.nspname, s.relname) FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_depend d ON ((d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = (SELECT ad.oid FROM pg_catalog.pg_attrdef ad WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum)) \
              OR (d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'i' AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum)) \
         JOIN pg_catalog.pg_class s ON s.relkind = 'S' AND s.oid = CASE WHEN d.classid = 'pg_catalog.pg_attrdef'::regclass THEN d.refobjid ELSE d.objid END \
         JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace \
         WHERE a.attrelid = ({}) AND a.attnum > 0 AND NOT a.attisdropped",
        rel(q)
    );
    Ok(conn.query(bindir, &sql).await?.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect())
}

/// What can be checked on the live side before anything is restored: each table's shape
/// (absent: dropped), the tenant column, the login's rights. With `lenient_tenant` (the scope
/// is every table) tables without the tenant column leave the scope instead of refusing.
async fn check_live(
    live: &Conn,
    bindir: &Path,
    scope: &mut Vec<QName>,
    tenant: &Option<crate::Tenant>,
    lenient_tenant: bool,
    login: &str,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<QName, Shape>, RepairError> {
    let mut live_shapes: BTreeMap<QName, Shape> = BTreeMap::new();
    for q in scope.iter() {
        if let Some(s) = shape(live, bindir, q).await? {
            live_shapes.insert(q.clone(), s);
        }
    }
    if let Some(t) = tenant {
        let lacking: Vec<String> = live_shapes
            .iter()
            .filter(|(_, s)| !s.columns.contains(&t.column))
            .map(|(q, _)| q.to_string())
            .collect();
        if !lacking.is_empty() {
            if lenient_tenant {
                scope.retain(|q| live_shapes.get(q).is_none_or(|s| s.columns.contains(&t.column)));
                notes.push(format!(
                    "tables without a column {}: not in scope ({})",
                    t.column,
                    lacking.join(", ")
                ));
            } else {
                return Err(RepairError::Refused(format!(
                    "--tenant {}={}: table{} {} ha{} no column {:?}; choose the tenant column these tables share, or narrow the scope with --table",
                    t.column,
                    t.value,
                    if lacking.len() > 1 { "s" } else { "" },
                    lacking.join(", "),
                    if lacking.len() > 1 { "ve" } else { "s" },
                    t.column
                )));
            }
        }
    }
    for q in live_shapes.keys() {
        let rows = live
            .query(
                bindir,
                &format!(
                    "SELECT has_table_privilege(({0}), 'SELECT'), has_table_privilege(({0}), 'INSERT'), has_table_privilege(({0}), 'UPDATE')",
                    rel(q)
                ),
            )
            .await?;
        let r = rows.first().cloned().unwrap_or_default();
        let missing: Vec<&str> = ["SELECT", "INSERT", "UPDATE"]
            .iter()
            .zip(r.iter())
            .filter(|(_, v)| v.as_str() != "t")
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            return Err(RepairError::Refused(format!(
                "the live login {login} lacks {} on {q}: the repair reads, re-inserts and reverts rows there; GRANT {} ON {} TO {} or repair with a login that has them",
                missing.join(", "),
                missing.join(", "),
                q.sql(),
                ident(login)
            )));
        }
    }
    for q in scope.iter().filter(|q| !live_shapes.contains_key(*q)) {
        let may = live
            .query(
                bindir,
                &format!(
                    "SELECT coalesce((SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_catalog.pg_namespace n WHERE n.nspname = {}), false)",
                    literal(&q.schema)
                ),
            )
            .await?;
        if may.first().and_then(|r| r.first()).map(String::as_str) != Some("t") {
            return Err(RepairError::Refused(format!(
                "table {q} is gone from the live database and the live login {login} may not create it in schema {} (missing, or no CREATE right)",
                q.schema
            )));
        }
    }

    Ok(live_shapes)
}

/// Plans the repair: resolves the damage, checks the input and the live login's rights,
/// restores the two scratch copies, compares the rows and writes the script. Nothing is
/// changed in the live database.
pub async fn prepare(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Prepared, RepairError> {
    let t0 = Instant::now();
    let bindir = restore::pg::bindir().map_err(|e| RepairError::Restore { which: "before", source: e })?;
    let client = VaultClient::new(&opts.url, opts.ca_pem.as_bytes(), Some(opts.token.clone()))?;
    let mut notes = Vec::new();

    // 1. The damage.
    let (damage, before_t, before_excl, after_t, near, objects) = match &opts.damage {
        Damage::Incident(n) => {
            let incidents = client.incidents(&opts.cluster).await?;
            let i = n.checked_sub(1).and_then(|k| incidents.get(k)).ok_or_else(|| {
                RepairError::Refused(format!(
                    "cluster {} has no incident {n} (it has {}: see `holdfast incidents --cluster {}`)",
                    opts.cluster,
                    incidents.len(),
                    opts.cluster
                ))
            })?;
            let (b, a) = match i.restore_target {
                Some(vault_api::status::IncidentTarget::BeforeXid { xid }) => {
                    (Target::Xid(xid), Target::Xid(xid))
                }
                Some(vault_api::status::IncidentTarget::BeforeLsn { lsn }) => {
                    (Target::Lsn(lsn), Target::Lsn(lsn))
                }
                None => {
                    return Err(RepairError::Refused(format!(
                        "incident {n} ({}) names no destructive transaction to repair; use --before and --after for a window",
                        i.kind
                    )));
                }
            };
            let what = format!(
                "incident {n} ({}{}): {}",
                i.kind,
                i.xid.map(|x| format!(", transaction {x}")).unwrap_or_default(),
                i.message
            );
            (what, b, true, a, i.lsn, Some(i.objects.clone()))
        }
        Damage::Window { before, after } => {
            (format!("the window from {before} to {after}"), before.clone(), false, after.clone(), None, None)
        }
    };

    // 2. The live database and the login's rights.
    let live = Conn::Live { dsn: opts.dsn.clone() };
    let who = live
        .query(
            &bindir,
            "SELECT current_database(), current_user, current_setting('is_superuser') = 'on' \
             OR has_parameter_privilege('session_replication_role', 'SET'), has_database_privilege(current_database(), 'TEMP'), \
             (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
        )
        .await
        .map_err(|e| RepairError::Refused(format!("cannot use the live database with --dsn: {e}")))?;
    let who = who
        .into_iter()
        .next()
        .ok_or_else(|| RepairError::Refused("the live database answered nothing".into()))?;
    let (database, login, may_replica, may_temp, db_oid) =
        (who[0].clone(), who[1].clone(), who[2] == "t", who[3] == "t", who[4].clone());
    let triggers_off = match opts.triggers {
        Triggers::On => false,
        Triggers::Auto => may_replica,
        Triggers::Off if may_replica => true,
        Triggers::Off => {
            return Err(RepairError::Refused(format!(
                "--without-triggers: the live login {login} may not set session_replication_role (superuser, or GRANT SET ON PARAMETER session_replication_role); \
                 use --with-triggers or another login"
            )));
        }
    };
    if !may_temp {
        return Err(RepairError::Refused(format!(
            "the live login {login} may not create temporary tables in {database} (the repair stages rows in them): GRANT TEMPORARY ON DATABASE {} TO {}",
            ident(&database),
            ident(&login)
        )));
    }

    // 3. The scope: the incident's tables (and tables its cascades changed), narrowed by --table.
    let incident_tables: Option<Vec<QName>> = objects.as_ref().map(|objs| {
        let mut v: Vec<QName> = objs
            .iter()
            .filter(|o| o.database == database)
            .filter_map(|o| Some(QName { schema: o.schema.clone()?, table: o.table.clone()? }))
            .collect();
        v.sort();
        v.dedup();
        v
    });
    // Files the collector could not name (a table created after its last catalog snapshot):
    // named from the copy before, where they still exist.
    let unnamed: Vec<u64> = objects
        .iter()
        .flatten()
        .filter(|o| o.table.is_none())
        .filter_map(|o| {
            let path = o.relfilenode.as_deref()?;
            let mut parts = path.strip_prefix("base/")?.split('/');
            let (db, node) = (parts.next()?, parts.next()?);
            (db == db_oid).then(|| node.parse().ok()).flatten()
        })
        .collect();
    let mut allowed: Option<BTreeSet<QName>> = None;
    if let Some(tables) = &incident_tables {
        if tables.is_empty() && unnamed.is_empty() {
            let others: BTreeSet<&str> = objects.iter().flatten().map(|o| o.database.as_str()).collect();
            return Err(RepairError::Refused(format!(
                "{damage} names no table in database {database}{}; connect --dsn to the database it touched, or use --before/--after with --table",
                if others.is_empty() {
                    String::new()
                } else {
                    format!(" (it touched: {})", others.into_iter().collect::<Vec<_>>().join(", "))
                }
            )));
        }
        let mut set: BTreeSet<QName> = tables.iter().cloned().collect();
        let mut todo: Vec<QName> = tables.clone();
        while let Some(q) = todo.pop() {
            for c in cascade_children(&live, &bindir, &q).await? {
                if set.insert(c.clone()) {
                    todo.push(c);
                }
            }
        }
        allowed = Some(set);
    }
    let mut scope: Vec<QName> = if opts.tables.is_empty() {
        match &allowed {
            Some(set) => set.iter().cloned().collect(),
            None => live
                .query(
                    &bindir,
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
                )
                .await?
                .into_iter()
                .map(|r| QName { schema: r[0].clone(), table: r[1].clone() })
                .collect(),
        }
    } else {
        let mut v = Vec::new();
        for t in &opts.tables {
            let q = parse_table(t, &database)?;
            if let Some(set) = &allowed
                && !set.contains(&q)
                && unnamed.is_empty()
            {
                return Err(RepairError::Refused(format!(
                    "table {database}.{q} is not among the objects of {damage} (those are: {}); repair it with --before/--after instead",
                    set.iter().map(|q| format!("{database}.{q}")).collect::<Vec<_>>().join(", ")
                )));
            }
            if !v.contains(&q) {
                v.push(q);
            }
        }
        v
    };
    if opts.rename.is_some() && scope.len() != 1 {
        return Err(RepairError::Refused(format!(
            "--as renames one recreated table: name it with one --table (the scope holds {})",
            scope.len()
        )));
    }

    // 4. What can be checked on the live side before restoring anything.
    let lenient_tenant = opts.tables.is_empty() && objects.is_none();
    let mut live_shapes =
        check_live(&live, &bindir, &mut scope, &opts.tenant, lenient_tenant, &login, &mut notes).await?;

    // 5. The two scratch copies.
    let root = match &opts.scratch {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "holdfast-repair-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )),
    };
    if root.exists()
        && std::fs::read_dir(&root).map_err(io(format!("reading {}", root.display())))?.next().is_some()
    {
        return Err(RepairError::Refused(format!(
            "the scratch directory {} is not empty: name an empty or new one with --scratch",
            root.display()
        )));
    }
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The servers run as postgres when we are root: they must reach their directories.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("setting the mode of {}", root.display())))?;
    }
    let mut scratch = Scratch { root: root.clone(), servers: Vec::new() };
    let run_as = restore::pg::running_as_root().then(|| "postgres".to_string());
    let mut conns = Vec::new();
    let mut jobs = Vec::new();
    for (which, target, exclusive) in [("before", &before_t, before_excl), ("after", &after_t, false)] {
        let dir = root.join(which);
        if dir.as_os_str().len() + "/.s.PGSQL.65535".len() >= 100 {
            return Err(RepairError::Refused(format!(
                "the scratch directory {} is too deep for a Unix socket path: choose a shorter --scratch",
                root.display()
            )));
        }
        let port = free_port()?;
        progress(&format!(
            "restoring the copy {which} the damage ({target}{})",
            if exclusive { ", exclusive" } else { "" }
        ));
        let ropts = restore::Options {
            cluster: opts.cluster.clone(),
            target: target.clone(),
            near,
            backup: None,
            exclusive,
            target_dir: dir.clone(),
            // The copy before is promoted: paused just before a DROP or TRUNCATE, a hot standby
            // still holds the replayed ACCESS EXCLUSIVE lock of that unfinished transaction,
            // and every read of the table would wait for it forever. Ending recovery there
            // aborts it. The copy after is paused past the commit, where the locks are gone.
            action: if which == "before" {
                restore::recovery::Action::Promote
            } else {
                restore::recovery::Action::Pause
            },
            start: Some(restore::StartOptions {
                port,
                socket_dir: dir.clone(),
                run_as: run_as.clone(),
                timeout: opts.restore_timeout,
                tcp: None,
            }),
            parallel: 4,
            verify: false,
            holdfast_exe: opts.holdfast_exe.clone(),
            url: opts.url.clone(),
            ca_pem: opts.ca_pem.clone(),
            token: opts.token.clone(),
            user: Some(SCRATCH_USER.to_string()),
            trust_local: true,
        };
        scratch.servers.push(restore::pg::Server {
            bindir: bindir.clone(),
            data: dir.clone(),
            port,
            socket_dir: dir.clone(),
            run_as: run_as.clone(),
            log: dir.join("holdfast_restore.log"),
            user: Some(SCRATCH_USER.to_string()),
        });
        jobs.push((which, ropts));
        conns.push(Conn::Scratch {
            socket_dir: dir,
            port,
            user: SCRATCH_USER.to_string(),
            db: database.clone(),
        });
    }
    // Both copies at once: each waits mostly on the vault and on WAL replay, not on one core.
    let quiet = |phase: &str, done: u64, total: u64| {
        if total > 0 && done >= total {
            progress(&format!("  {phase}: {} MiB", total >> 20));
        }
    };
    let (rb, ra) = tokio::join!(restore::run(&jobs[0].1, &quiet), restore::run(&jobs[1].1, &quiet));
    for ((which, _), r) in jobs.iter().zip([rb, ra]) {
        let r = r.map_err(|e| RepairError::Restore { which, source: e })?;
        if !r.reached {
            return Err(RepairError::Restore {
                which,
                source: restore::RestoreError::Refused(format!(
                    "recovery did not confirm the target: {}",
                    r.target_check.unwrap_or_default()
                )),
            });
        }
        progress(&format!("  the copy {which} is ready ({:.1} s)", r.total_seconds));
    }
    let restore_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let after_conn = conns.pop().expect("two copies");
    let before_conn = conns.pop().expect("two copies");

    // 5b. Name the files the collector could not, from the copy before; check them as above.
    if !unnamed.is_empty() {
        let mut found = Vec::new();
        for node in &unnamed {
            let rows = before_conn
                .query(
                    &bindir,
                    &format!(
                        "WITH a AS (SELECT pg_catalog.pg_filenode_relation(0, {node}) AS oid), \
                         b AS (SELECT coalesce((SELECT i.indrelid FROM pg_catalog.pg_index i, a WHERE i.indexrelid = a.oid), (SELECT oid FROM a)) AS oid), \
                         c AS (SELECT coalesce((SELECT t.oid FROM pg_catalog.pg_class t, b WHERE t.reltoastrelid = b.oid), (SELECT oid FROM b)) AS oid) \
                         SELECT n.nspname, k.relname FROM pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace, c \
                         WHERE k.oid = c.oid AND k.relkind IN ('r', 'p')"
                    ),
                )
                .await?;
            for r in rows {
                let q = QName { schema: r[0].clone(), table: r[1].clone() };
                if !found.contains(&q) {
                    found.push(q);
                }
            }
        }
        let set = allowed.get_or_insert_with(BTreeSet::new);
        let mut new: Vec<QName> = found.into_iter().filter(|q| set.insert(q.clone())).collect();
        if opts.tables.is_empty() {
            new.retain(|q| !scope.contains(q));
            let extra = check_live(&live, &bindir, &mut new, &opts.tenant, false, &login, &mut notes).await?;
            live_shapes.extend(extra);
            scope.extend(new);
        } else if let Some(q) = scope.iter().find(|q| !set.contains(*q)) {
            return Err(RepairError::Refused(format!(
                "table {database}.{q} is not among the objects of {damage} (those are: {}); repair it with --before/--after instead",
                set.iter().map(|q| format!("{database}.{q}")).collect::<Vec<_>>().join(", ")
            )));
        }
        if scope.is_empty() {
            return Err(RepairError::Refused(format!(
                "{damage} names no table of database {database}, neither in the vault's catalog nor in the copy before it"
            )));
        }
    }

    // 6. Cascades seen in the copy before (a dropped table's children are known only there).
    if opts.tables.is_empty() && allowed.is_some() {
        let mut set: BTreeSet<QName> = scope.iter().cloned().collect();
        let mut todo = scope.clone();
        while let Some(q) = todo.pop() {
            for c in cascade_children(&before_conn, &bindir, &q).await? {
                if set.insert(c.clone()) {
                    todo.push(c.clone());
                    scope.push(c);
                }
            }
        }
    }

    // 7. Per table: compare rows, or plan the table's recreation.
    let tenant_cond = |alias: &str| match &opts.tenant {
        Some(t) => format!(" WHERE {alias}.{} = {}", ident(&t.column), literal(&t.value)),
        None => String::new(),
    };
    let mut plans: Vec<TablePlan> = Vec::new();
    let mut order_parents: BTreeMap<QName, Vec<QName>> = BTreeMap::new();
    for q in &scope {
        let Some(bshape) = shape(&before_conn, &bindir, q).await? else {
            notes.push(format!("{q} did not exist before the damage: left alone"));
            continue;
        };
        if let Some(t) = &opts.tenant
            && !bshape.columns.contains(&t.column)
        {
            return Err(RepairError::Refused(format!(
                "--tenant {}={}: table {q} has no column {:?} (as of before the damage)",
                t.column, t.value, t.column
            )));
        }
        order_parents.insert(q.clone(), parents(&before_conn, &bindir, q).await?);
        let prefer = opts
            .prefer_table
            .iter()
            .find(|(t, _)| parse_table(t, &database).ok().as_ref() == Some(q))
            .map(|(_, p)| *p)
            .unwrap_or(opts.prefer);
        // `--as`: recreated beside whatever holds the name now.
        match live_shapes.get(q).filter(|_| opts.rename.is_none()) {
            Some(lshape) => {
                if lshape.signature != bshape.signature {
                    return Err(RepairError::Refused(format!(
                        "table {q} changed shape since the damage (before: {}; now: {}): rows cannot move back as they were; use --export and merge by hand",
                        bshape.signature, lshape.signature
                    )));
                }
                progress(&format!("comparing {q}"));
                let keyed = !bshape.pk.is_empty();
                let key_expr = if keyed {
                    format!(
                        "ROW({})::text",
                        bshape.pk.iter().map(|c| format!("t.{}", ident(c))).collect::<Vec<_>>().join(", ")
                    )
                } else {
                    "''".to_string()
                };
                let select = format!("SELECT {key_expr}, t FROM ONLY {} t{}", q.sql(), tenant_cond("t"));
                let b = diff::parse_copy(&before_conn.copy_out(&bindir, &select, false).await?);
                let a = match shape(&after_conn, &bindir, q).await? {
                    Some(s) if s.signature == bshape.signature => {
                        diff::parse_copy(&after_conn.copy_out(&bindir, &select, false).await?)
                    }
                    _ => Vec::new(),
                };
                let l = diff::parse_copy(&live.copy_out(&bindir, &select, false).await?);
                let d = diff::three_way(keyed, &b, &a, &l, prefer == Prefer::Before);
                let seqs = if d.reinserted() > 0 { sequences(&live, &bindir, q).await? } else { Vec::new() };
                plans.push(TablePlan {
                    name: q.clone(),
                    created_as: None,
                    work: Work::Rows { shape: lshape.clone(), diff: d, prefer },
                    sequences: seqs,
                });
            }
            None => {
                progress(&format!("{q} is gone: dumping it from the copy before"));
                if opts.tenant.is_some() {
                    notes.push(format!(
                        "{q} was dropped: it is recreated whole (every tenant's rows as of before), since it is missing for every tenant"
                    ));
                }
                let created_as =
                    opts.rename.as_ref().map(|n| QName { schema: q.schema.clone(), table: n.clone() });
                if let Some(n) = &created_as
                    && shape(&live, &bindir, n).await?.is_some()
                {
                    return Err(RepairError::Refused(format!(
                        "--as {}: table {n} already exists in the live database",
                        n.table
                    )));
                }
                if !may_replica {
                    notes.push(format!(
                        "{q} is recreated owned by the live login {login}, not its original owner (only a superuser, or a login granted SET on session_replication_role, keeps the owner)"
                    ));
                }
                // Under another name the table is a copy beside the live one: other tables'
                // foreign keys stay as they are.
                let foreign_keys: Vec<String> = if created_as.is_some() {
                    Vec::new()
                } else {
                    before_conn
                    .query_in(
                        &bindir,
                        Some("pg_catalog"),
                        &format!(
                            "SELECT pg_catalog.format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s;', cn.nspname, cc.relname, k.conname, pg_catalog.pg_get_constraintdef(k.oid)) \
                             FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class cc ON cc.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace \
                             WHERE k.contype = 'f' AND k.conrelid <> k.confrelid AND k.confrelid = ({})",
                            rel(q)
                        ),
                    )
                    .await?
                    .into_iter()
                    .map(|r| r[0].clone())
                    .collect()
                };
                let sum = before_conn
                    .query(
                        &bindir,
                        &format!(
                            "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\")), '') FROM ONLY {} t",
                            q.sql()
                        ),
                    )
                    .await?;
                let sum = sum.into_iter().next().unwrap_or_default();
                // `--as`: renamed in the copy before (promoted, so writable) with its indexes
                // and sequences, whose names would otherwise collide with the live table's;
                // then dumped under the new names.
                let dumped = match &created_as {
                    Some(n) => {
                        let rename = |from: &str| {
                            format!("replace({from}, {}, {})", literal(&q.table), literal(&n.table))
                        };
                        before_conn
                            .query(
                                &bindir,
                                &format!(
                                    "DO $holdfast$ DECLARE x record; BEGIN \
                                     FOR x IN SELECT c.oid::regclass AS r, c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = ({rel}) LOOP \
                                       EXECUTE pg_catalog.format('ALTER INDEX %s RENAME TO %I', x.r, {ri}); END LOOP; \
                                     FOR x IN SELECT DISTINCT s.oid::regclass AS r, s.relname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                                       WHERE d.refobjid = ({rel}) AND d.deptype IN ('a', 'i') LOOP \
                                       EXECUTE pg_catalog.format('ALTER SEQUENCE %s RENAME TO %I', x.r, {ri}); END LOOP; \
                                     EXECUTE pg_catalog.format('ALTER TABLE %I.%I RENAME TO %I', {s}, {t}, {nt}); END $holdfast$",
                                    rel = rel(q),
                                    ri = rename("x.relname"),
                                    s = literal(&q.schema),
                                    t = literal(&q.table),
                                    nt = literal(&n.table)
                                ),
                            )
                            .await?;
                        n.sql()
                    }
                    None => q.sql(),
                };
                let (pre, post) = (
                    before_conn.dump_table(&bindir, &dumped, &["pre-data", "data"], !may_replica).await?,
                    before_conn.dump_table(&bindir, &dumped, &["post-data"], !may_replica).await?,
                );
                plans.push(TablePlan {
                    name: q.clone(),
                    created_as,
                    work: Work::Recreate {
                        pre_and_data: pre,
                        post,
                        foreign_keys,
                        rows: sum.first().and_then(|v| v.parse().ok()).unwrap_or(0),
                        checksum: sum.get(1).cloned().unwrap_or_default(),
                    },
                    sequences: Vec::new(),
                });
            }
        }
    }
    // Parents before children.
    let names: BTreeSet<QName> = plans.iter().map(|p| p.name.clone()).collect();
    let mut ordered = Vec::new();
    let mut placed = BTreeSet::new();
    while ordered.len() < plans.len() {
        let before_len = ordered.len();
        for p in &plans {
            if placed.contains(&p.name) {
                continue;
            }
            let ready = order_parents
                .get(&p.name)
                .into_iter()
                .flatten()
                .all(|parent| parent == &p.name || !names.contains(parent) || placed.contains(parent));
            if ready {
                placed.insert(p.name.clone());
                ordered.push(p.name.clone());
            }
        }
        if ordered.len() == before_len {
            // A cycle of foreign keys: the rest in name order (the checks are at the end of
            // the statement; with triggers off they do not run at all).
            for p in &plans {
                if placed.insert(p.name.clone()) {
                    ordered.push(p.name.clone());
                }
            }
        }
    }
    plans.sort_by_key(|p| ordered.iter().position(|n| n == &p.name));

    let (script, shown) = write_script(opts, &plans, triggers_off, &tenant_cond("t"));
    let tables = plans
        .iter()
        .map(|p| match &p.work {
            Work::Rows { shape, diff, prefer } => TableReport {
                table: p.name.to_string(),
                action: "rows".into(),
                keyed: !shape.pk.is_empty(),
                reinserted: diff.reinserted(),
                reverted: diff.reverted(),
                conflicts: diff.conflicts.clone(),
                added_by_incident: diff.added_by_incident,
                prefer: *prefer,
                recreated_rows: None,
                created_as: None,
            },
            Work::Recreate { rows, .. } => TableReport {
                table: p.name.to_string(),
                action: "recreate".into(),
                keyed: true,
                reinserted: 0,
                reverted: 0,
                conflicts: Vec::new(),
                added_by_incident: 0,
                prefer: Prefer::Before,
                recreated_rows: Some(*rows),
                created_as: p.created_as.as_ref().map(|n| n.to_string()),
            },
        })
        .collect();
    if opts.triggers == Triggers::Auto && !triggers_off {
        notes.push(format!(
            "the live login {login} may not set session_replication_role: user triggers fire during the repair (a trigger that rewrites rows makes the verification fail and roll back)"
        ));
    }
    let report = Report {
        cluster: opts.cluster.clone(),
        damage,
        before: format!("{before_t}{}", if before_excl { " (exclusive: just before it)" } else { "" }),
        after: format!(
            "{after_t}{}",
            if matches!(opts.damage, Damage::Incident(_)) { " (inclusive: just after it)" } else { "" }
        ),
        database,
        tenant: opts.tenant.as_ref().map(|t| format!("{}={}", t.column, t.value)),
        triggers: if triggers_off { "off (session_replication_role = replica)".into() } else { "on".into() },
        tables,
        sql: shown,
        applied: false,
        exported: None,
        restore_seconds,
        plan_seconds: t1.elapsed().as_secs_f64(),
        apply_seconds: None,
        verified: Vec::new(),
        notes,
        verdict: String::new(),
    };
    let scope = plans.iter().map(|p| (p.name.clone(), tenant_cond("t"))).collect();
    Ok(Prepared { report, script, bindir, live, before: before_conn, scope, _scratch: scratch })
}

/// Lines of a `pg_dump` script that would undo the repair's own limits.
fn keep_dump_line(l: &str) -> bool {
    ![
        "SET statement_timeout",
        "SET lock_timeout",
        "SET idle_in_transaction_session_timeout",
        "SET transaction_timeout",
    ]
    .iter()
    .any(|p| l.starts_with(p))
}

/// The repair's script (with the rows) and the same without them, for people.
fn write_script(
    opts: &Options,
    plans: &[TablePlan],
    triggers_off: bool,
    tenant_where: &str,
) -> (String, String) {
    let mut full = String::new();
    let mut shown = String::new();
    let ms = opts.statement_timeout.as_millis().max(1);
    fn both(full: &mut String, shown: &mut String, s: &str) {
        full.push_str(s);
        shown.push_str(s);
    }
    let mut settings =
        format!("SET LOCAL statement_timeout = {ms};\nSET LOCAL lock_timeout = {};\n", ms.min(30_000));
    for s in SESSION_SETTINGS {
        settings.push_str(&s.replacen("SET ", "SET LOCAL ", 1));
        settings.push_str(";\n");
    }
    if triggers_off {
        settings.push_str("SET LOCAL session_replication_role = replica;\n");
    }
    both(
        &mut full,
        &mut shown,
        "-- holdfast repair: one transaction; any error or a failed verification rolls it all back\nBEGIN;\n",
    );
    both(&mut full, &mut shown, &settings);
    let mut shown_buf = String::new();
    // Recreated tables first (their rows included), constraints and indexes after every row is
    // back.
    for p in plans {
        if let Work::Recreate { pre_and_data, .. } = &p.work {
            let text: String =
                pre_and_data.lines().filter(|l| keep_dump_line(l)).map(|l| format!("{l}\n")).collect();
            full.push_str(&format!(
                "-- recreate {} (pg_dump of the copy before: definition and rows)\n",
                p.name
            ));
            full.push_str(&text);
            shown_buf.push_str(&format!(
                "-- recreate {}: pg_dump --section=pre-data --section=data of the copy before ({} lines, rows elided)\n",
                p.name,
                text.lines().count()
            ));
            full.push_str(&settings);
        }
    }
    shown.push_str(&shown_buf);
    let mut n = 0;
    let mut verify = String::new();
    for p in plans {
        let Work::Rows { shape, diff, .. } = &p.work else { continue };
        if diff.fixes.is_empty() {
            continue;
        }
        n += 1;
        let tmp = format!("holdfast_fix_{n}");
        let t = p.name.sql();
        let head = format!(
            "-- {}: {} to re-insert, {} to revert\nCREATE TEMP TABLE {tmp} (k text, r {t}, expect text, want bigint) ON COMMIT DROP;\nCOPY {tmp} (k, r, expect, want) FROM STDIN;\n",
            p.name,
            diff.reinserted(),
            diff.reverted()
        );
        both(&mut full, &mut shown, &head);
        let mut lines = 0;
        for f in &diff.fixes {
            let copies = if f.op == Op::Insert { f.copies.max(1) } else { 1 };
            for _ in 0..copies {
                let _ = writeln!(
                    full,
                    "{}\t{}\t{}\t{}",
                    f.key,
                    f.row,
                    f.expect.as_deref().unwrap_or("\\N"),
                    f.want
                );
                lines += 1;
            }
        }
        full.push_str("\\.\n");
        let _ = writeln!(shown, "… {lines} rows as of before the damage …\n\\.");
        let cols: Vec<String> = shape.columns.iter().map(|c| ident(c)).collect();
        let pk_match = |l: &str| {
            shape
                .pk
                .iter()
                .map(|c| format!("{l}.{0} = (x.r).{0}", ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let mut sql = String::new();
        if diff.reinserted() > 0 {
            let _ = writeln!(
                sql,
                "INSERT INTO {t} OVERRIDING SYSTEM VALUE SELECT (x.r).* FROM {tmp} x WHERE x.expect IS NULL;"
            );
        }
        if !shape.pk.is_empty() && diff.reverted() > 0 {
            let _ = writeln!(
                sql,
                "UPDATE ONLY {t} AS t SET ({}) = ROW({}) FROM {tmp} x WHERE x.expect IS NOT NULL AND {} AND t::text = x.expect;",
                cols.join(", "),
                cols.iter().map(|c| format!("(x.r).{c}")).collect::<Vec<_>>().join(", "),
                pk_match("t")
            );
        }
        both(&mut full, &mut shown, &sql);
        // Verification: every repaired row reads as before (and the checksums agree).
        let name = literal(&p.name.to_string());
        if shape.pk.is_empty() {
            // Without a key, rows are counted: each re-inserted row must now appear as many
            // times (in the tenant's rows) as it did before the damage.
            let _ = write!(
                verify,
                "DO $holdfast$\nDECLARE bad bigint; n bigint;\nBEGIN\n\
                 \x20 SELECT count(*) INTO bad FROM (SELECT (x.r)::text AS v, max(x.want) AS w FROM {tmp} x GROUP BY 1) e \
                 LEFT JOIN (SELECT t::text AS v, count(*) AS c FROM ONLY {t} t{tenant_where} GROUP BY 1) l USING (v) WHERE coalesce(l.c, 0) <> e.w;\n\
                 \x20 SELECT count(*) INTO n FROM {tmp} x;\n\
                 \x20 IF bad > 0 THEN RAISE EXCEPTION 'holdfast repair verification failed on %: % re-inserted rows do not appear as many times as before the damage (written concurrently since the plan?)', {name}, bad; END IF;\n\
                 \x20 RAISE NOTICE 'holdfast verified %: % re-inserted rows, each now as many times as before the damage (no primary key: counted)', {name}, n;\nEND $holdfast$;\n"
            );
        } else {
            // With a key: every repaired row reads as before, and the checksum of the repaired
            // rows equals that of the rows before.
            let _ = write!(
                verify,
                "DO $holdfast$\nDECLARE bad bigint; n bigint; want text; got text;\nBEGIN\n\
                 \x20 SELECT count(*) INTO bad FROM {tmp} x WHERE NOT EXISTS (SELECT 1 FROM ONLY {t} t WHERE {m} AND t::text = (x.r)::text);\n\
                 \x20 SELECT count(*), md5(string_agg((x.r)::text, E'\\n' ORDER BY (x.r)::text COLLATE \"C\")) INTO n, want FROM {tmp} x;\n\
                 \x20 SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\")) INTO got FROM ONLY {t} t JOIN {tmp} x ON {m};\n\
                 \x20 IF bad > 0 THEN RAISE EXCEPTION 'holdfast repair verification failed on %: % repaired rows do not read as they did before the damage (written concurrently since the plan?)', {name}, bad; END IF;\n\
                 \x20 IF want IS DISTINCT FROM got THEN RAISE EXCEPTION 'holdfast repair verification failed on %: checksum % of the repaired rows, % expected', {name}, got, want; END IF;\n\
                 \x20 RAISE NOTICE 'holdfast verified %: % repaired rows equal the state before, checksum %', {name}, n, got;\nEND $holdfast$;\n",
                m = pk_match("t")
            );
        }
    }
    for p in plans {
        if let Work::Recreate { post, foreign_keys, rows, checksum, .. } = &p.work {
            let text: String = post.lines().filter(|l| keep_dump_line(l)).map(|l| format!("{l}\n")).collect();
            full.push_str(&format!("-- {}: indexes, constraints, triggers, grants\n{text}", p.name));
            shown.push_str(&format!(
                "-- {}: pg_dump --section=post-data of the copy before (indexes, constraints, triggers):\n{text}",
                p.name
            ));
            both(&mut full, &mut shown, &settings);
            for fk in foreign_keys {
                both(&mut full, &mut shown, &format!("{fk}\n"));
            }
            let name = literal(&p.name.to_string());
            let _ = write!(
                verify,
                "DO $holdfast$\nDECLARE got text;\nBEGIN\n\
                 \x20 SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\")), '') INTO got FROM ONLY {} t;\n\
                 \x20 IF got <> {} THEN RAISE EXCEPTION 'holdfast repair verification failed on recreated %: count:checksum % , % expected', {name}, got, {}; END IF;\n\
                 \x20 RAISE NOTICE 'holdfast verified % (recreated): % rows, checksum %', {name}, {rows}, {};\nEND $holdfast$;\n",
                p.created_as.as_ref().unwrap_or(&p.name).sql(),
                literal(&format!("{rows}:{checksum}")),
                literal(&format!("{rows}:{checksum}")),
                literal(checksum)
            );
        }
    }
    // Sequences only ever move forward, past every id now in the table.
    for p in plans {
        for (col, seq) in &p.sequences {
            both(
                &mut full,
                &mut shown,
                &format!(
                    "SELECT pg_catalog.setval({}, m, true) FROM (SELECT max({}) AS m FROM ONLY {}) s WHERE s.m >= (SELECT last_value FROM {seq});\n",
                    literal(seq),
                    ident(col),
                    p.name.sql()
                ),
            );
        }
    }
    both(&mut full, &mut shown, &verify);
    both(&mut full, &mut shown, "COMMIT;\n");
    (full, shown)
}

impl Prepared {
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Whether there is anything to change.
    pub fn is_empty(&self) -> bool {
        self.report.reinserted() == 0 && self.report.reverted() == 0
    }

    /// Applies the plan in one transaction on the live database; on any error (the final
    /// verification included) everything is rolled back and the error says why.
    pub async fn apply(mut self) -> Result<Report, RepairError> {
        let t = Instant::now();
        if let Ok(sql) = std::env::var(TEST_HOOK_ENV) {
            self.live.query(&self.bindir, &sql).await?;
        }
        let path = self._scratch.root.join("repair.sql");
        std::fs::write(&path, &self.script).map_err(io(format!("writing {}", path.display())))?;
        let notices = self.live.run_script(&self.bindir, &path).await.map_err(|e| match e {
            RepairError::Postgres { message, .. } => RepairError::RolledBack(message),
            e => e,
        })?;
        self.report.verified = notices
            .lines()
            .filter_map(|l| l.split_once("NOTICE:  ").map(|(_, m)| m.trim().to_string()))
            .filter(|m| m.starts_with("holdfast verified"))
            .collect();
        self.report.applied = true;
        self.report.apply_seconds = Some(t.elapsed().as_secs_f64());
        self.report.verdict = format!(
            "OK: repaired {} of cluster {} in one transaction: {} rows re-inserted, {} reverted, {} conflicts {}; verified before COMMIT",
            self.report
                .tenant
                .as_deref()
                .map(|t| format!("tenant {t}"))
                .unwrap_or_else(|| "the scope".into()),
            self.report.cluster,
            self.report.reinserted(),
            self.report.reverted(),
            self.report.conflicts(),
            if self.report.tables.iter().any(|t| t.prefer == Prefer::Before && !t.conflicts.is_empty()) {
                "(resolved by --prefer before where asked, else left as they are now)"
            } else {
                "left as they are now"
            }
        );
        Ok(self.report)
    }

    /// Writes the scope as of before the damage, one CSV (with a header) per table, into
    /// `dir`; the live database is not touched.
    pub async fn export(mut self, dir: &Path) -> Result<Report, RepairError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut files = 0;
        for (q, cond) in &self.scope {
            let csv = self
                .before
                .copy_out(&self.bindir, &format!("SELECT * FROM ONLY {} t{cond}", q.sql()), true)
                .await?;
            let path = dir.join(format!("{}.{}.{}.csv", self.report.database, q.schema, q.table));
            std::fs::write(&path, csv).map_err(io(format!("writing {}", path.display())))?;
            files += 1;
        }
        self.report.exported = Some(dir.to_path_buf());
        self.report.verdict = format!(
            "exported {files} table(s) as of before the damage into {} (the live database was not changed)",
            dir.display()
        );
        Ok(self.report)
    }

    /// The plan only.
    pub fn dry_run(mut self) -> Report {
        self.report.verdict = format!(
            "dry run: {} rows to re-insert, {} to revert, {} conflicts; nothing was changed",
            self.report.reinserted(),
            self.report.reverted(),
            self.report.conflicts()
        );
        self.report
    }
}
