//! Names for what the WAL calls by number: a snapshot of each database's catalog (database
//! OID → name; relation file → schema, table, kind, size, estimated rows), kept fresh by a
//! short read-only session per database at each refresh (closed at once, so that the vault never
//! stands in the way of DROP DATABASE), and merged rather than replaced, so that a table dropped
//! since the last refresh can still be named in the incident about it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfmt::wal::RelFileNode;
use pgproto::conn::ReplicationConnection;
use tokio::sync::watch;

use crate::runtime::ClusterRuntime;

/// Relations not seen in this many refreshes are forgotten (about an hour at the default
/// interval): long enough to name anything the detector reports, which it does within seconds.
const KEEP_UNSEEN: u64 = 240;
/// The soonest a refresh asked for by an unknown relation file follows the previous one (bulk
/// loads create files by the hundred: the catalog must not compete with streaming for CPU).
const MIN_GAP: Duration = Duration::from_secs(3);

/// What the catalog said about one relation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelInfo {
    /// Schema of the table it belongs to.
    pub schema: String,
    /// The table it belongs to (itself for a table; the table for its indexes and TOAST).
    pub table: String,
    /// The relation's own name (`orders_pkey`, `pg_toast_16390`).
    pub relation: String,
    /// `relkind`: `r` table, `i` index, `t` TOAST, `m` materialized view, `S` sequence.
    pub relkind: char,
    /// The main file of the table it belongs to.
    pub table_file: RelFileNode,
    /// Main-fork size in bytes, from `relpages` (an estimate, 0 until first vacuumed or
    /// analysed).
    pub bytes: u64,
    /// The table's estimated rows (`reltuples`), `None` when never analysed.
    pub rows: Option<u64>,
    /// The OID of the table it belongs to (stays when the table gets a new file: a rewrite
    /// or TRUNCATE).
    pub table_oid: u32,
    /// For a table's own file: its user columns, dropped ones included (`attisdropped`).
    pub columns: Vec<Column>,
    /// For a table's own file that has the configured tenant column: how it is logged.
    pub tenant: Option<TenantInfo>,
}

/// A table with the tenant column: whether its deletes and updates carry the tenant in the
/// WAL, and the tenants' estimated rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// The column's number (`attnum`) and type.
    pub attnum: i16,
    pub type_oid: u32,
    /// `wal_level = logical`: updates log the new row whole, deletes the replica identity.
    pub wal_logical: bool,
    /// The replica identity holds the column: `REPLICA IDENTITY FULL`, or the primary key
    /// (default) or `USING INDEX` index covers it.
    pub identity_has_column: bool,
    /// The tenants' estimated rows, from the planner's statistics (`pg_stats`); `None`
    /// when the table was never analysed or the catalog role may not see its statistics.
    pub rows: Option<crate::detect::TenantRows>,
}

impl TenantInfo {
    /// What keeps the tenant rules from working on this table, if anything.
    pub fn blind_spot(&self) -> Option<&'static str> {
        if !self.wal_logical {
            Some(
                "wal_level is not logical, so deletes and updates do not log the rows' tenant (set wal_level = logical and restart)",
            )
        } else if !self.identity_has_column {
            Some(
                "its replica identity does not include the column, so deletes do not log the tenant (ALTER TABLE … REPLICA IDENTITY FULL, or a primary key or REPLICA IDENTITY USING INDEX covering the column)",
            )
        } else if self.rows.is_none() {
            Some(
                "no statistics on the column are visible, so tenants' sizes are unknown (ANALYZE the table, and GRANT SELECT (column) ON the table TO the catalog role: pg_stats shows only columns it may read)",
            )
        } else {
            None
        }
    }
}

/// One user column of a table (`pg_attribute`, `attnum > 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub attnum: i16,
    /// Storage (`attlen`, `attalign`) and type: what reading the column out of a logged row
    /// takes.
    pub len: i16,
    pub align: u8,
    pub type_oid: u32,
    /// Its name; a dropped column's is PostgreSQL's placeholder (`........pg.dropped.N........`).
    pub name: String,
    pub dropped: bool,
}

/// The merged catalog of every database of a cluster.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    databases: HashMap<u32, String>,
    relations: HashMap<RelFileNode, (RelInfo, u64)>,
    /// (database, table OID) → the table's current main file.
    tables: HashMap<(u32, u32), RelFileNode>,
    /// Refreshes merged so far.
    generation: u64,
}

impl Snapshot {
    /// How many refreshes have been merged (0: none yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A database's name.
    pub fn database(&self, oid: u32) -> Option<&str> {
        self.databases.get(&oid).map(String::as_str)
    }

    /// What is known of a relation file.
    pub fn relation(&self, rel: &RelFileNode) -> Option<&RelInfo> {
        self.relations.get(rel).map(|(r, _)| r)
    }

    /// Relation files known in database `db`, with what is known of them.
    pub fn relations_in(&self, db: u32) -> impl Iterator<Item = (&RelFileNode, &RelInfo)> {
        self.relations.iter().filter(move |(k, _)| k.db == db).map(|(k, (r, _))| (k, r))
    }

    /// Every relation file known (dropped ones too, for a while).
    pub fn relations(&self) -> impl Iterator<Item = (&RelFileNode, &RelInfo)> {
        self.relations.iter().map(|(k, (r, _))| (k, r))
    }

    /// The current main file of table `table_oid` in database `db`.
    pub fn table_file_of(&self, db: u32, table_oid: u32) -> Option<RelFileNode> {
        self.tables.get(&(db, table_oid)).copied()
    }

    /// The columns of table `table_oid` in database `db`, as last read.
    pub fn columns_of(&self, db: u32, table_oid: u32) -> Option<&[Column]> {
        let file = self.tables.get(&(db, table_oid))?;
        self.relations.get(file).map(|(r, _)| r.columns.as_slice())
    }

    /// Every table's columns: ((database, table OID), columns).
    pub fn columns(&self) -> impl Iterator<Item = (&(u32, u32), &[Column])> {
        self.tables.iter().filter_map(|(k, f)| Some((k, self.relations.get(f)?.0.columns.as_slice())))
    }

    /// Tables (main files) with the tenant column, with how it is logged.
    pub fn tenant_tables(&self) -> impl Iterator<Item = (RelFileNode, &RelInfo, &TenantInfo)> + '_ {
        self.tables.values().filter_map(|f| {
            let (r, _) = self.relations.get(f)?;
            Some((*f, r, r.tenant.as_ref()?))
        })
    }

    /// Where a table's tenant column is, for reading it out of logged rows.
    pub fn tenant_column_of(r: &RelInfo) -> Option<crate::detect::TenantColumn> {
        let t = r.tenant.as_ref()?;
        let mut cols: Vec<&Column> =
            r.columns.iter().filter(|c| c.attnum > 0 && c.attnum <= t.attnum).collect();
        cols.sort_by_key(|c| c.attnum);
        // Every column up to it, dropped ones too: their bytes are in the rows.
        if cols.len() != t.attnum as usize || cols.iter().enumerate().any(|(i, c)| c.attnum as usize != i + 1)
        {
            return None;
        }
        Some(crate::detect::TenantColumn {
            attnum: t.attnum as usize,
            type_oid: t.type_oid,
            layout: cols.iter().map(|c| pgfmt::tuple::AttrLayout { len: c.len, align: c.align }).collect(),
        })
    }

    /// The estimated rows of each table's main file, for the detector's share threshold.
    pub fn table_rows(&self) -> impl Iterator<Item = (RelFileNode, u64)> + '_ {
        self.relations.iter().filter_map(|(k, (r, _))| (r.table_file == *k).then_some((*k, r.rows?)))
    }

    /// Merges one refresh: what it lists replaces what was known; what it no longer lists is
    /// kept (dropped tables must stay nameable) until unseen for [`KEEP_UNSEEN`] refreshes.
    pub fn merge(
        &mut self,
        databases: impl IntoIterator<Item = (u32, String)>,
        relations: impl IntoIterator<Item = (RelFileNode, RelInfo)>,
    ) {
        self.generation += 1;
        let g = self.generation;
        self.databases.extend(databases);
        for (k, r) in relations {
            if r.table_file == k && matches!(r.relkind, 'r' | 'm') {
                self.tables.insert((k.db, r.table_oid), k);
            }
            self.relations.insert(k, (r, g));
        }
        self.relations.retain(|_, (_, seen)| g - *seen <= KEEP_UNSEEN);
        let relations = &self.relations;
        self.tables.retain(|_, f| relations.contains_key(f));
    }
}

/// The query run in each database: every relation with storage, keyed by its file, named by
/// the table it belongs to. Reads only catalogs, which need no grant, and takes no lock on any
/// user table: sizes are `relpages` (as of the last VACUUM, ANALYZE or CREATE INDEX), not
/// `pg_relation_size`, which would lock every relation for the length of the query and make
/// DDL on the protected server wait for the vault.
const RELATIONS_SQL: &str = "\
SELECT pg_relation_filenode(c.oid) AS filenode,
       CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END AS spc,
       d.oid AS db,
       tn.nspname AS schema, t.relname AS table_name, c.relname AS relation, c.relkind AS relkind,
       pg_relation_filenode(t.oid) AS table_filenode, t.oid AS table_oid,
       CASE WHEN t.reltablespace = 0 THEN d.dattablespace ELSE t.reltablespace END AS table_spc,
       c.relpages::bigint * current_setting('block_size')::bigint AS bytes,
       t.reltuples::bigint AS rows
FROM pg_class c
CROSS JOIN (SELECT oid, dattablespace FROM pg_database WHERE datname = current_database()) d
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class owner ON owner.reltoastrelid = COALESCE(i.indrelid, c.oid) AND owner.reltoastrelid <> 0
JOIN pg_class t ON t.oid = COALESCE(owner.oid, i.indrelid, c.oid)
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.relkind IN ('r', 'i', 't', 'm', 'S') AND NOT c.relisshared
  AND pg_relation_filenode(c.oid) IS NOT NULL";

/// Every user table's columns, dropped ones too: what DROP COLUMN is told by. Catalogs only.
const COLUMNS_SQL: &str = "\
SELECT a.attrelid AS table_oid, a.attnum, a.attname, a.attisdropped, a.attlen, a.attalign, a.atttypid
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE a.attnum > 0 AND c.relkind IN ('r', 'm')
  AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
ORDER BY a.attrelid, a.attnum";

/// Tables with the tenant column (`$1`, spliced in as a literal): their replica identity,
/// the server's `wal_level`, and the column's statistics. Catalogs only; `pg_stats` shows a
/// column's statistics only to a role that may read the column.
const TENANT_SQL: &str = "\
SELECT c.oid AS table_oid, a.attnum, a.atttypid, current_setting('wal_level') AS wal_level,
       CASE c.relreplident
         WHEN 'f' THEN true
         WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey::int2[]))
         WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident AND a.attnum = ANY (i.indkey::int2[]))
         ELSE false END AS identity_has_column,
       s.most_common_vals::text AS mcv, s.most_common_freqs::text AS mcf, s.n_distinct, c.reltuples::bigint AS rows
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname AND NOT s.inherited
WHERE a.attname = $1 AND NOT a.attisdropped AND a.attnum > 0 AND c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// The elements of an array's text form (`{1,2,"a b"}`): quotes and backslashes undone.
pub fn array_elements(text: &str) -> Vec<String> {
    let inner = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or("");
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for ch in inner.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            quoted = !quoted;
            any = true;
        } else if ch == ',' && !quoted {
            out.push(std::mem::take(&mut cur));
            any = false;
        } else {
            cur.push(ch);
            any = true;
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The tenants' estimated rows from the column's statistics: each most common value's
/// frequency times the table's rows, and the rest spread evenly over the other distinct values.
pub fn tenant_rows(
    mcv: Option<&str>,
    mcf: Option<&str>,
    n_distinct: Option<f64>,
    rows: u64,
) -> crate::detect::TenantRows {
    let vals = mcv.map(array_elements).unwrap_or_default();
    let freqs: Vec<f64> =
        mcf.map(array_elements).unwrap_or_default().iter().filter_map(|f| f.parse().ok()).collect();
    let mut t = crate::detect::TenantRows::default();
    for (v, f) in vals.iter().zip(&freqs) {
        t.common.insert(v.clone(), (f * rows as f64).round() as u64);
    }
    let distinct = match n_distinct {
        Some(d) if d > 0.0 => d,
        Some(d) if d < 0.0 => -d * rows as f64,
        _ => 0.0,
    };
    let others = distinct - vals.len() as f64;
    let share: f64 = 1.0 - freqs.iter().sum::<f64>();
    if others >= 1.0 && share > 0.0 {
        t.other = Some((share * rows as f64 / others).round().max(1.0) as u64);
    }
    t
}

/// Reads one database's relations (and tables' columns) over an open session.
pub async fn read_relations(
    conn: &mut ReplicationConnection,
    tenant_column: Option<&str>,
) -> Result<Vec<(RelFileNode, RelInfo)>, pgproto::Error> {
    let mut tenants: HashMap<u32, TenantInfo> = HashMap::new();
    if let Some(col) = tenant_column {
        let sql = TENANT_SQL.replace("$1", &format!("'{}'", col.replace('\'', "''")));
        for set in conn.simple_query(&sql).await? {
            for row in 0..set.rows.len() {
                let Some(oid) = set.get(row, "table_oid").and_then(|v| v.parse::<u32>().ok()) else {
                    continue;
                };
                let rows = set.get(row, "rows").and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
                let mcv = set.get(row, "mcv");
                let n_distinct = set.get(row, "n_distinct").and_then(|v| v.parse::<f64>().ok());
                tenants.insert(
                    oid,
                    TenantInfo {
                        attnum: set.get(row, "attnum").and_then(|v| v.parse().ok()).unwrap_or(0),
                        type_oid: set.get(row, "atttypid").and_then(|v| v.parse().ok()).unwrap_or(0),
                        wal_logical: set.get(row, "wal_level") == Some("logical"),
                        identity_has_column: set.get(row, "identity_has_column") == Some("t"),
                        rows: (rows >= 0 && (mcv.is_some() || n_distinct.is_some()))
                            .then(|| tenant_rows(mcv, set.get(row, "mcf"), n_distinct, rows as u64)),
                    },
                );
            }
        }
    }
    let mut columns: HashMap<u32, Vec<Column>> = HashMap::new();
    for set in conn.simple_query(COLUMNS_SQL).await? {
        for row in 0..set.rows.len() {
            let (Some(oid), Some(attnum)) = (
                set.get(row, "table_oid").and_then(|v| v.parse::<u32>().ok()),
                set.get(row, "attnum").and_then(|v| v.parse::<i16>().ok()),
            ) else {
                continue;
            };
            columns.entry(oid).or_default().push(Column {
                attnum,
                len: set.get(row, "attlen").and_then(|v| v.parse().ok()).unwrap_or(0),
                align: set.get(row, "attalign").and_then(|v| v.bytes().next()).unwrap_or(b'c'),
                type_oid: set.get(row, "atttypid").and_then(|v| v.parse().ok()).unwrap_or(0),
                name: set.get(row, "attname").unwrap_or_default().to_string(),
                dropped: set.get(row, "attisdropped") == Some("t"),
            });
        }
    }
    let mut out = Vec::new();
    for set in conn.simple_query(RELATIONS_SQL).await? {
        for row in 0..set.rows.len() {
            let num = |name: &str| set.get(row, name).and_then(|v| v.parse::<i64>().ok());
            let text = |name: &str| set.get(row, name).unwrap_or_default().to_string();
            let (Some(file), Some(spc), Some(db)) = (num("filenode"), num("spc"), num("db")) else {
                continue;
            };
            let key = RelFileNode { spc: spc as u32, db: db as u32, rel: file as u32 };
            let table_file = RelFileNode {
                spc: num("table_spc").unwrap_or(spc) as u32,
                db: db as u32,
                rel: num("table_filenode").unwrap_or(file) as u32,
            };
            out.push((
                key,
                RelInfo {
                    schema: text("schema"),
                    table: text("table_name"),
                    relation: text("relation"),
                    relkind: text("relkind").chars().next().unwrap_or('?'),
                    table_file,
                    bytes: num("bytes").unwrap_or(0).max(0) as u64,
                    // -1: never vacuumed or analysed.
                    rows: num("rows").filter(|r| *r >= 0).map(|r| r as u64),
                    table_oid: num("table_oid").unwrap_or(0) as u32,
                    tenant: if table_file == key {
                        num("table_oid").and_then(|o| tenants.get(&(o as u32)).cloned())
                    } else {
                        None
                    },
                    columns: if table_file == key {
                        num("table_oid").and_then(|o| columns.remove(&(o as u32))).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }
    Ok(out)
}

/// Why a catalog refresh read nothing, or not every database: each database that could not be
/// read, with the connection's or the server's error. What was read is merged all the same;
/// what was not stays named by OID until a refresh works (see `catalog_user` in the README).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Neither `postgres` nor `template1` answered the list of databases.
    #[error("cannot list the databases: {}", failures(.0))]
    NoDatabaseList(Vec<(String, pgproto::Error)>),
    /// These databases could not be read; the others were.
    #[error("{}", failures(.0))]
    Databases(Vec<(String, pgproto::Error)>),
}

fn failures(list: &[(String, pgproto::Error)]) -> String {
    list.iter().map(|(db, e)| format!("{db}: {e}")).collect::<Vec<_>>().join("; ")
}

/// Sessions opened during one refresh, one per database.
#[derive(Default)]
struct Sessions {
    by_db: HashMap<String, ReplicationConnection>,
    /// The server's WAL position read after the catalog (see [`refresh_now`]).
    lsn: Option<pgfmt::Lsn>,
}

/// The server's WAL position: every commit the catalog showed before this is in the WAL
/// before it.
const LSN_SQL: &str =
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn";

impl Sessions {
    async fn get(
        &mut self,
        rt: &ClusterRuntime,
        db: &str,
    ) -> Result<&mut ReplicationConnection, pgproto::Error> {
        if !self.by_db.contains_key(db) {
            let mut last = None;
            for cfg in &rt.cluster.catalog_connections {
                match ReplicationConnection::connect_database(cfg, db).await {
                    Ok(c) => {
                        self.by_db.insert(db.to_string(), c);
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(self.by_db.get_mut(db).expect("inserted above"))
    }
}

/// One refresh: the database list, then each database's relations — or, when `only` names
/// databases already known by name, just those.
async fn refresh(rt: &ClusterRuntime, sessions: &mut Sessions, only: &[u32]) -> Result<(), CatalogError> {
    let known = rt.catalog();
    let names: Option<Vec<(u32, String)>> =
        only.iter().map(|oid| known.database(*oid).map(|n| (*oid, n.to_string()))).collect();
    if let Some(names) = names.filter(|n| !n.is_empty()) {
        let mut relations = Vec::new();
        let mut errors = Vec::new();
        for (_, name) in &names {
            let r = match sessions.get(rt, name).await {
                Ok(c) => match read_relations(c, rt.cluster.tenant_column.as_deref()).await {
                    // Read after the catalog: the catalog shows no commit after it.
                    Ok(rels) => c.simple_query(LSN_SQL).await.map(|sets| (rels, sets)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match r {
                Ok((rels, sets)) => {
                    relations.extend(rels);
                    let lsn = sets.first().and_then(|s| s.get(0, "lsn")).and_then(|l| l.parse().ok());
                    sessions.lsn = sessions.lsn.max(lsn);
                }
                Err(e) => errors.push((name.clone(), e)),
            }
        }
        for (_, c) in sessions.by_db.drain() {
            let _ = c.close().await;
        }
        rt.merge_catalog(Vec::new(), relations);
        return if errors.is_empty() { Ok(()) } else { Err(CatalogError::Databases(errors)) };
    }
    let mut list = None;
    let mut errors = Vec::new();
    for first in ["postgres", "template1"] {
        let r = match sessions.get(rt, first).await {
            Ok(c) => c.simple_query("SELECT oid, datname FROM pg_database WHERE datallowconn").await,
            Err(e) => Err(e),
        };
        match r {
            Ok(sets) => {
                list = Some(sets);
                break;
            }
            Err(e) => {
                sessions.by_db.remove(first);
                errors.push((first.to_string(), e));
            }
        }
    }
    let Some(sets) = list else {
        return Err(CatalogError::NoDatabaseList(errors));
    };
    let mut databases = Vec::new();
    if let Some(set) = sets.first() {
        for row in 0..set.rows.len() {
            if let (Some(oid), Some(name)) =
                (set.get(row, "oid").and_then(|v| v.parse().ok()), set.get(row, "datname"))
            {
                databases.push((oid, name.to_string()));
            }
        }
    }
    let mut relations = Vec::new();
    for (_, name) in &databases {
        let r = match sessions.get(rt, name).await {
            Ok(c) => read_relations(c, rt.cluster.tenant_column.as_deref()).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(rels) => relations.extend(rels),
            Err(e) => {
                sessions.by_db.remove(name);
                errors.push((name.clone(), e));
            }
        }
    }
    // Sessions are closed after each refresh: one left open would make DROP DATABASE fail
    // ("being accessed by other users") on the server the vault protects.
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
    rt.merge_catalog(databases, relations);
    if errors.is_empty() { Ok(()) } else { Err(CatalogError::Databases(errors)) }
}

/// Refreshes databases `dbs` now, on sessions of its own (the detector asks, to judge a
/// transaction it just decoded).
/// Returns the server's WAL position read after the catalog: once the WAL up to it is
/// decoded, the detector has seen every transaction the catalog shows.
pub(crate) async fn refresh_now(
    rt: &ClusterRuntime,
    dbs: &[u32],
) -> Result<Option<pgfmt::Lsn>, CatalogError> {
    let mut sessions = Sessions::default();
    let r = refresh(rt, &mut sessions, dbs).await;
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
    r.map(|()| sessions.lsn)
}

/// What the server says about the vault as its synchronous standby: its settings (which
/// standbys commits wait for, and `synchronous_commit` for everyone and per role or database)
/// and, where the catalog login may see it (superuser, `pg_read_all_stats`), the vault's own
/// walsender's `sync_state`.
const SYNCHRONOUS_SQL: &str = "SELECT current_setting('synchronous_standby_names') AS names, \
     (SELECT setting FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) 'synchronous_commit' AND source OPERATOR(pg_catalog.<>) 'session') AS commit, \
     (SELECT pg_catalog.string_agg(COALESCE(r.rolname, '*') OPERATOR(pg_catalog.||) '@' OPERATOR(pg_catalog.||) COALESCE(d.datname, '*') OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) c, ', ') \
        FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) c \
        LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.setrole LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase \
        WHERE c OPERATOR(pg_catalog.~*) '^synchronous_commit=(off|local|false|no|0)') AS overrides, \
     (SELECT sync_state FROM pg_catalog.pg_stat_replication WHERE application_name OPERATOR(pg_catalog.=) $APP LIMIT 1) AS state";

/// Whether `synchronous_standby_names` can make commits wait for `app`: the names it lists
/// (`a, b`, `FIRST n (a, b)`, `ANY n (a, b)`, `n (a, b)`, quoted or not; `*` is any standby),
/// compared as PostgreSQL does, without regard to case.
pub fn names_standby(setting: &str, app: &str) -> bool {
    let mut names = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in setting.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' | '(' | ')' | ' ' | '\t' | '\n' if !quoted => {
                if !cur.is_empty() {
                    names.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        names.push(cur);
    }
    names.iter().any(|n| n == "*" || n.eq_ignore_ascii_case(app))
}

/// Why `synchronous_standby_names` (as PostgreSQL parses it: `a, b` is `FIRST 1 (a, b)`,
/// `n (…)` is `FIRST n (…)`) lets commits return without the vault `app` even with every other
/// listed standby connected once: the vault not named; named only after the first `n` of a
/// `FIRST n` list (a standby listed before it takes the synchronous place whenever it is
/// connected); or in an `ANY n` quorum that `n` other listed standbys (or `*`) can make up.
/// `None` when every commit waits for the vault. A `*` before the vault's own name counts as the
/// vault's place (PostgreSQL gives the vault that priority); a second standby connecting under
/// the vault's own name is left to the `sync_state` look.
pub fn not_waited_for(setting: &str, app: &str) -> Option<String> {
    if !names_standby(setting, app) {
        return Some(format!(
            "synchronous_standby_names = '{setting}' does not name the vault's application_name {app}: commits do not wait for it"
        ));
    }
    // Tokens: names (quoted or not, `*`), numbers, parentheses; commas separate.
    let mut tokens: Vec<(String, bool)> = Vec::new();
    let (mut cur, mut quoted, mut was_quoted) = (String::new(), false, false);
    let mut chars = setting.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '(' | ')' | ',' | ' ' | '\t' | '\n' | '\r' if !quoted => {
                if !cur.is_empty() || was_quoted {
                    tokens.push((std::mem::take(&mut cur), was_quoted));
                }
                was_quoted = false;
                if matches!(ch, '(' | ')') {
                    tokens.push((ch.to_string(), true));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() || was_quoted {
        tokens.push((cur, was_quoted));
    }
    let word = |i: usize| tokens.get(i).filter(|(_, q)| !q).map(|(t, _)| t.as_str());
    let is_num = |i: usize| word(i).is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    let open = |i: usize| tokens.get(i).is_some_and(|(t, q)| *q && t == "(");
    // [FIRST|ANY] n ( list ) | n ( list ) | list
    let (any, n, from) = match word(0).map(str::to_ascii_lowercase).as_deref() {
        Some(k @ ("first" | "any")) if is_num(1) && open(2) => {
            (k == "any", word(1)?.parse::<usize>().ok()?, 3)
        }
        _ if is_num(0) && open(1) => (false, word(0)?.parse::<usize>().ok()?, 2),
        _ => (false, 1, 0),
    };
    let names: Vec<&str> = tokens[from..]
        .iter()
        .filter(|(t, q)| !(*q && (t == "(" || t == ")")))
        .map(|(t, _)| t.as_str())
        .collect();
    let vault = |name: &str| name.eq_ignore_ascii_case(app);
    if any {
        let others = names.iter().filter(|n| !vault(n)).count();
        if names.contains(&"*") || others >= n {
            return Some(format!(
                "synchronous_standby_names = '{setting}': a quorum of {n} without the vault ({others} other standby name(s) listed{}) lets commits return before the vault has their WAL",
                if names.contains(&"*") { ", and *" } else { "" }
            ));
        }
        return None;
    }
    let place = names.iter().position(|n| vault(n) || *n == "*")? + 1;
    (place > n).then(|| {
        format!(
            "synchronous_standby_names = '{setting}' lists the vault in place {place}, after the first {n}: commits wait for it only while a standby listed before it is not connected"
        )
    })
}

/// In synchronous mode: why commits may not wait for the vault, if they may not — read from the
/// server's settings, which the database superuser (root on its host) can change without the
/// vault's consent: removed from `synchronous_standby_names`, `synchronous_commit` set to `off`
/// or `local` for everyone or for a role or database, or (where the catalog login may see
/// it) another standby taking the synchronous place. `strikes` counts consecutive looks at a
/// `sync_state` that is not `sync`/`quorum` (a reconnect is transient: two in a row count).
async fn synchronous_downgrade(
    rt: &ClusterRuntime,
    sessions: &mut Sessions,
    strikes: &mut u32,
) -> Result<Option<String>, pgproto::Error> {
    let app = &rt.cluster.application_name;
    let sql = SYNCHRONOUS_SQL.replace("$APP", &format!("'{}'", app.replace('\'', "''")));
    let c = sessions.get(rt, "postgres").await?;
    let sets = c.simple_query(&sql).await;
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
    let sets = sets?;
    let Some(set) = sets.first() else { return Ok(None) };
    let names = set.get(0, "names").unwrap_or_default().to_string();
    let commit = set.get(0, "commit").unwrap_or("on").to_string();
    let overrides = set.get(0, "overrides").unwrap_or_default().to_string();
    let state = set.get(0, "state").map(str::to_string);
    let mut why = Vec::new();
    if let Some(not) = not_waited_for(&names, app) {
        why.push(not);
    }
    if matches!(commit.as_str(), "off" | "local") {
        why.push(format!(
            "synchronous_commit = {commit} for the whole server: commits do not wait for any standby"
        ));
    }
    if !overrides.is_empty() {
        why.push(format!(
            "synchronous_commit is set not to wait for standbys for some roles or databases ({overrides})"
        ));
    }
    match state.as_deref() {
        Some("sync" | "quorum") | None => *strikes = 0,
        Some(other) => {
            *strikes += 1;
            if *strikes >= 2 {
                why.push(format!(
                    "the server reports the vault's stream as {other}, not sync: another standby takes the synchronous place"
                ));
            }
        }
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// Keeps the cluster's catalog snapshot fresh: at start, every `catalog_refresh`, and soon
/// after the detector meets a relation file the snapshot does not know. Failures are logged
/// (once per episode) and leave names as OIDs; they never stop detection.
pub async fn keep_fresh(rt: Arc<ClusterRuntime>, mut shutdown: watch::Receiver<bool>) {
    let mut sessions = Sessions::default();
    let mut failing = false;
    let mut only: Vec<u32> = Vec::new();
    let mut strikes = 0;
    loop {
        let started = Instant::now();
        match refresh(&rt, &mut sessions, &only).await {
            Ok(()) => {
                if failing {
                    tracing::info!(cluster = %rt.cluster.name, "catalog snapshot refreshed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(cluster = %rt.cluster.name, error = %e, "cannot refresh the catalog snapshot: incidents name objects by OID until it works (see catalog_user in the README)");
                }
                failing = true;
            }
        }
        if rt.cluster.synchronous && only.is_empty() {
            match synchronous_downgrade(&rt, &mut sessions, &mut strikes).await {
                Ok(Some(why)) => {
                    rt.raise_incident(
                        "synchronous_off",
                        format!("the vault is configured as a synchronous standby (RPO 0), but {why}; commits can return before their WAL is in the vault — restore the server's settings"),
                    )
                    .await
                }
                Ok(None) => rt.end_incident_episode("synchronous_off"),
                Err(e) => tracing::warn!(cluster = %rt.cluster.name, error = %e, "cannot read the server's synchronous settings"),
            }
        }
        tracing::debug!(cluster = %rt.cluster.name, took = ?started.elapsed(), "catalog refreshed");
        let next = started + rt.cluster.catalog_refresh;
        only.clear();
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = rt.catalog_wanted.notified() => {
                tokio::time::sleep_until((started + MIN_GAP).into()).await;
                only = rt.take_catalog_wanted_dbs();
            }
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
        if *shutdown.borrow() {
            break;
        }
    }
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(table: &str, file: u32) -> RelInfo {
        RelInfo {
            schema: "public".into(),
            table: table.into(),
            relation: table.into(),
            relkind: 'r',
            table_file: RelFileNode { spc: 1663, db: 5, rel: file },
            bytes: 8192,
            rows: Some(10),
            table_oid: file,
            columns: Vec::new(),
            tenant: None,
        }
    }

    #[test]
    fn synchronous_standby_names_are_read_as_postgresql_reads_them() {
        for (setting, named) in [
            ("holdfast_shop", true),
            ("HOLDFAST_SHOP", true),
            ("other, holdfast_shop", true),
            ("FIRST 1 (other, holdfast_shop)", true),
            ("ANY 2 (\"holdfast_shop\", b)", true),
            ("*", true),
            ("", false),
            ("other", false),
            ("holdfast_shop2", false),
            ("\"holdfast shop\"", false),
            ("2 (a, b)", false),
        ] {
            assert_eq!(names_standby(setting, "holdfast_shop"), named, "{setting:?}");
        }
    }

    /// Named is not enough: after the first n of a FIRST list, or in an ANY quorum other
    /// standbys can make up, commits return without the vault.
    #[test]
    fn synchronous_standby_names_that_let_commits_skip_the_vault_are_told() {
        for (setting, waited) in [
            ("holdfast_shop", true),
            ("HOLDFAST_SHOP, other", true),
            ("*", true),
            ("FIRST 1 (holdfast_shop, other)", true),
            ("first 2 (other, \"holdfast_shop\")", true),
            ("2 (other, holdfast_shop, third)", true),
            ("ANY 1 (holdfast_shop)", true),
            ("ANY 2 (holdfast_shop, other)", true),
            ("other, holdfast_shop", false),
            ("FIRST 1 (other, holdfast_shop)", false),
            ("2 (a, b, holdfast_shop)", false),
            ("ANY 1 (holdfast_shop, other)", false),
            ("ANY 2 (holdfast_shop, a, b)", false),
            ("ANY 2 (holdfast_shop, *)", false),
            ("", false),
            ("other", false),
        ] {
            let why = not_waited_for(setting, "holdfast_shop");
            assert_eq!(why.is_none(), waited, "{setting:?}: {why:?}");
            if let Some(w) = why {
                assert!(w.contains(setting), "{w}");
            }
        }
    }

    #[test]
    fn tenants_sizes_come_from_the_columns_statistics() {
        assert_eq!(array_elements(r#"{1,22,"a b","q\"x",NULL}"#), ["1", "22", "a b", "q\"x", "NULL"]);
        assert!(array_elements("{}").is_empty());
        // 10,000 rows; merchants 7 and 8 hold 30 % and 10 %; 60 % spread over 98 others.
        let t = tenant_rows(Some("{7,8}"), Some("{0.3,0.1}"), Some(100.0), 10_000);
        assert_eq!((t.of("7"), t.of("8"), t.of("55")), (Some(3000), Some(1000), Some(61)));
        // n_distinct as a negative share of the rows; no statistics: unknown.
        assert_eq!(tenant_rows(None, None, Some(-0.5), 1000).of("x"), Some(2));
        assert_eq!(tenant_rows(None, None, None, 1000).of("x"), None);
    }

    #[test]
    fn a_dropped_table_stays_nameable_for_a_while() {
        let f = |r| RelFileNode { spc: 1663, db: 5, rel: r };
        let mut s = Snapshot::default();
        s.merge([(5, "shop".to_string())], [(f(100), info("orders", 100)), (f(200), info("items", 200))]);
        // The next refresh no longer lists orders (dropped): it is still known.
        s.merge([], [(f(200), info("items", 200))]);
        assert_eq!(s.relation(&f(100)).unwrap().table, "orders");
        assert_eq!(s.database(5), Some("shop"));
        assert_eq!(s.table_rows().count(), 2);
        for _ in 0..KEEP_UNSEEN {
            s.merge([], [(f(200), info("items", 200))]);
        }
        assert!(s.relation(&f(100)).is_none(), "forgotten after {KEEP_UNSEEN} refreshes unseen");
        assert!(s.relation(&f(200)).is_some());
    }
}
