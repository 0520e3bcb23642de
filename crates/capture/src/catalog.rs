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
}

/// One user column of a table (`pg_attribute`, `attnum > 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub attnum: i16,
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
SELECT a.attrelid AS table_oid, a.attnum, a.attname, a.attisdropped
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE a.attnum > 0 AND c.relkind IN ('r', 'm')
  AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
ORDER BY a.attrelid, a.attnum";

/// Reads one database's relations (and tables' columns) over an open session.
pub async fn read_relations(
    conn: &mut ReplicationConnection,
) -> Result<Vec<(RelFileNode, RelInfo)>, pgproto::Error> {
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
async fn refresh(rt: &ClusterRuntime, sessions: &mut Sessions, only: &[u32]) -> Result<(), String> {
    let known = rt.catalog();
    let names: Option<Vec<(u32, String)>> =
        only.iter().map(|oid| known.database(*oid).map(|n| (*oid, n.to_string()))).collect();
    if let Some(names) = names.filter(|n| !n.is_empty()) {
        let mut relations = Vec::new();
        let mut errors = Vec::new();
        for (_, name) in &names {
            let r = match sessions.get(rt, name).await {
                Ok(c) => match read_relations(c).await {
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
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        for (_, c) in sessions.by_db.drain() {
            let _ = c.close().await;
        }
        rt.merge_catalog(Vec::new(), relations);
        return if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) };
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
                errors.push(format!("{first}: {e}"));
            }
        }
    }
    let Some(sets) = list else {
        return Err(format!("cannot list the databases: {}", errors.join("; ")));
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
            Ok(c) => read_relations(c).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(rels) => relations.extend(rels),
            Err(e) => {
                sessions.by_db.remove(name);
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    // Sessions are closed after each refresh: one left open would make DROP DATABASE fail
    // ("being accessed by other users") on the server the vault protects.
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
    rt.merge_catalog(databases, relations);
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Refreshes databases `dbs` now, on sessions of its own (the detector asks, to judge a
/// transaction it just decoded).
/// Returns the server's WAL position read after the catalog: once the WAL up to it is
/// decoded, the detector has seen every transaction the catalog shows.
pub(crate) async fn refresh_now(rt: &ClusterRuntime, dbs: &[u32]) -> Result<Option<pgfmt::Lsn>, String> {
    let mut sessions = Sessions::default();
    let r = refresh(rt, &mut sessions, dbs).await;
    for (_, c) in sessions.by_db.drain() {
        let _ = c.close().await;
    }
    r.map(|()| sessions.lsn)
}

/// Keeps the cluster's catalog snapshot fresh: at start, every `catalog_refresh`, and soon
/// after the detector meets a relation file the snapshot does not know. Failures are logged
/// (once per episode) and leave names as OIDs; they never stop detection.
pub async fn keep_fresh(rt: Arc<ClusterRuntime>, mut shutdown: watch::Receiver<bool>) {
    let mut sessions = Sessions::default();
    let mut failing = false;
    let mut only: Vec<u32> = Vec::new();
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
        }
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
