//! The destruction detector on WAL from a real PostgreSQL: a mass DELETE, DROP TABLE, TRUNCATE,
//! DROP DATABASE and a table dropped while a tenth of it is copied into a new table in the same
//! transaction (the rewrite lookalike) are each found with the right kind, transaction and LSN —
//! checked against `pg_waldump` — and a small DELETE, emptying an empty table, dropping an empty
//! table with a primary key, DROP INDEX CONCURRENTLY, VACUUM FULL, CLUSTER, REINDEX and a
//! rewriting ALTER TABLE are not. ALTER TABLE … DROP COLUMN is handed over as a `pg_attribute`
//! change for the catalog check. A server whose clock root on its host moved stamps commits
//! with it: the lie is reported and does not hide a drip of deletes.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use std::collections::HashMap;

use capture::detect::{Detector, Kind, RelMeta, RestoreTarget, Thresholds};
use pgfmt::Lsn;
use pgfmt::wal::{RelFileNode, WalReader};
use testkit::pg::{TempPg, TempPgOptions, bin};

const SEG: u64 = 16 << 20;

fn xid_of(pg: &TempPg, sql: &str) -> Result<u32> {
    let out = pg.psql(&format!("{sql}; SELECT txid_current()"))?;
    Ok(out.lines().last().context("no xid")?.trim().parse()?)
}

/// What the catalog says each relation file of database `postgres` is, merged into `rels`
/// (as the vault's catalog snapshot merges: a file keeps its table after it is dropped).
fn catalog(pg: &TempPg, rels: &mut HashMap<RelFileNode, RelMeta>) -> Result<()> {
    let out = pg.psql(
        "SELECT pg_relation_filenode(c.oid), CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END, \
         d.oid, COALESCE(i.indrelid, o.oid, c.oid), c.relkind \
         FROM pg_class c CROSS JOIN (SELECT oid, dattablespace FROM pg_database WHERE datname = current_database()) d \
         LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class o ON o.reltoastrelid = c.oid \
         WHERE pg_relation_filenode(c.oid) IS NOT NULL AND NOT c.relisshared",
    )?;
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 5, "{line}");
        rels.insert(
            RelFileNode { rel: f[0].parse()?, spc: f[1].parse()?, db: f[2].parse()? },
            RelMeta { table_oid: f[3].parse()?, relkind: f[4].chars().next().context("relkind")? },
        );
    }
    Ok(())
}

#[test]
fn destructive_transactions_are_found_with_their_xid_and_lsn() -> Result<()> {
    let pg = TempPg::start()?;
    // From before the tables exist, so that the detector sees them written (it reports only
    // files known to hold data).
    let start: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.parse()?;
    pg.psql("CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 5000) g")?;
    pg.psql("CREATE TABLE b AS SELECT g FROM generate_series(1, 100) g; CREATE TABLE c AS SELECT g FROM generate_series(1, 100) g")?;
    pg.psql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 4000) g")?;
    pg.psql("CREATE DATABASE victim")?;
    // What the catalog says, after each step that makes files (the vault refreshes its
    // snapshot when the WAL writes a file it does not know).
    let mut rels = HashMap::new();
    catalog(&pg, &mut rels)?;
    // A table created and emptied while still empty: nothing destroyed, no finding; nor
    // dropping an empty table whose primary key index holds its metapage, nor dropping an
    // index (indexes are rebuilt from their table).
    pg.psql("CREATE TABLE empty (id int)")?;
    pg.psql("CREATE TABLE empty_pk (id int PRIMARY KEY)")?;
    pg.psql("CREATE INDEX a_v ON a (v)")?;
    catalog(&pg, &mut rels)?;
    pg.psql("TRUNCATE empty")?;
    pg.psql("DROP TABLE empty_pk")?;
    pg.psql("DROP INDEX CONCURRENTLY a_v")?;
    // Maintenance rewrites drop files that held data too, but write the data into new files
    // of the same table first: not destruction.
    pg.psql("UPDATE a SET v = v || 'x' WHERE id % 2 = 0")?;
    for sql in [
        "VACUUM FULL a",
        "CLUSTER a USING a_pkey",
        "REINDEX TABLE a",
        "ALTER TABLE a ADD COLUMN z float8 DEFAULT random()",
        "VACUUM FULL b",
    ] {
        pg.psql(sql)?;
        catalog(&pg, &mut rels)?;
    }
    let mass = xid_of(&pg, "DELETE FROM a WHERE id <= 3000")?;
    let small = xid_of(&pg, "DELETE FROM a WHERE id > 4990")?;
    let dropped = xid_of(&pg, "DROP TABLE b")?;
    let truncated = xid_of(&pg, "TRUNCATE c")?;
    // The lookalike: a tenth of the table copied into a new table, the table dropped, in one
    // transaction. Not a rewrite: the new file belongs to another table.
    let lookalike = xid_of(&pg, "CREATE TABLE keep AS SELECT * FROM big WHERE id <= 400; DROP TABLE big")?;
    catalog(&pg, &mut rels)?;
    let column = xid_of(&pg, "ALTER TABLE a DROP COLUMN v")?;
    pg.psql("DROP DATABASE victim")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?.parse()?;

    // The server's own WAL files, from the page holding `start`.
    let page = Lsn(start.0 - start.0 % 8192);
    let mut wal = Vec::new();
    let mut seg = page.0 / SEG;
    while seg * SEG < end.0 {
        let name = pgfmt::segment_name(pgfmt::TimelineId(1), seg, SEG);
        let bytes = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).with_context(|| name.clone())?;
        let from = if seg == page.0 / SEG { (page.0 % SEG) as usize } else { 0 };
        wal.extend_from_slice(&bytes[from..]);
        seg += 1;
    }
    let mut detector = Detector::new(Thresholds { mass_delete_rows: 1000, ..Default::default() });
    detector.set_relations(rels);
    let mut pending = Vec::new();
    for rec in WalReader::new(&wal, page, SEG) {
        let rec = rec?;
        if rec.lsn >= end {
            break;
        }
        // Every record of the server's WAL decodes.
        if let Some(f) = detector.record(&rec)? {
            pending.push(f);
        }
    }
    // Judged with the catalog as it is after them (the vault reads it, then waits until it has
    // decoded the WAL up to where it read it).
    let found: Vec<_> = pending.into_iter().filter_map(|f| detector.resolve(f)).collect();
    let kinds: Vec<(Kind, u32)> = found.iter().map(|f| (f.kind, f.xid)).collect();
    ensure!(
        kinds[..4]
            == [
                (Kind::MassDelete, mass),
                (Kind::RelationsDropped, dropped),
                (Kind::RelationsDropped, truncated),
                (Kind::RelationsDropped, lookalike),
            ],
        "{kinds:?} (mass {mass}, small {small}, drop {dropped}, truncate {truncated}, lookalike {lookalike})"
    );
    ensure!(!kinds.iter().any(|(_, x)| *x == small), "a 10-row delete was reported");
    ensure!(found.len() == 5, "only the five destructive transactions: {kinds:?}");
    // DROP COLUMN changes pg_attribute: handed to the caller, which asks the catalog which
    // column (crates/holdfast/tests/incidents.rs shows the whole path).
    let changes = detector.take_attribute_changes();
    ensure!(changes.iter().any(|c| c.xid == column), "DROP COLUMN not handed over: {changes:?}");
    let db = found.iter().find(|f| f.kind == Kind::DatabaseDropped).context("DROP DATABASE not found")?;
    ensure!(found[0].deleted.iter().map(|(_, n)| n).sum::<u64>() == 3000, "{:?}", found[0].deleted);
    ensure!(found[0].restore_target == RestoreTarget::BeforeXid(mass));

    // pg_waldump agrees on where each is: commits of those transactions, the database drop.
    let out = Command::new(bin("pg_waldump")?)
        .arg("-p")
        .arg(pg.data_dir().join("pg_wal"))
        .args(["-s", &start.to_string(), "-e", &end.to_string()])
        .output()?;
    let dump = String::from_utf8_lossy(&out.stdout);
    // pg_waldump pads the low half: 0/01A3B620.
    let line_at = |lsn: Lsn| {
        let text = format!("lsn: {:X}/{:08X},", lsn.0 >> 32, lsn.0 & 0xffff_ffff);
        dump.lines().find(|l| l.contains(&text)).map(str::to_string)
    };
    for f in &found[..4] {
        let line = line_at(f.lsn).with_context(|| format!("pg_waldump has no record at {}", f.lsn))?;
        ensure!(
            line.contains("rmgr: Transaction")
                && line.contains(&format!("tx: {:>10}", f.xid))
                && line.contains("COMMIT"),
            "{line}"
        );
    }
    let line = line_at(db.lsn).context("pg_waldump has no record at the database drop")?;
    ensure!(line.contains("rmgr: Database") && line.contains("DROP"), "{line}");
    ensure!(line.contains(&format!("tx: {:>10}", db.xid)), "{line}");
    // Its restore target is before the in-place update that marks the database invalid
    // (PostgreSQL 15.4+), which comes before the transaction has an id: restoring to just
    // after it would bring the database back unusable.
    let RestoreTarget::BeforeLsn(target) = db.restore_target else {
        anyhow::bail!("{:?}", db.restore_target)
    };
    let line = line_at(target).context("pg_waldump has no record at the restore target")?;
    ensure!(
        line.contains("rmgr: Heap") && line.contains("INPLACE") && line.contains("rel 1664/0/1262"),
        "{line}"
    );
    Ok(())
}

/// Damaged WAL is never passed over silently: a record that fails its CRC is reported with
/// where reading goes on (the next page), and destruction after it — a DROP TABLE — is still
/// found. (The vault raises the report as a `detector_blind` incident.)
#[test]
fn damaged_wal_is_reported_and_reading_goes_on_after_it() -> Result<()> {
    let pg = TempPg::start()?;
    let start: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.parse()?;
    pg.psql("CREATE TABLE victim AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000) g")?;
    let damage_from: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.parse()?;
    pg.psql("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")?;
    let dropped = xid_of(&pg, "DROP TABLE victim")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?.parse()?;
    let page = Lsn(start.0 - start.0 % 8192);
    let mut wal = Vec::new();
    let mut seg = page.0 / SEG;
    while seg * SEG < end.0 {
        let name = pgfmt::segment_name(pgfmt::TimelineId(1), seg, SEG);
        let bytes = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).with_context(|| name.clone())?;
        let from = if seg == page.0 / SEG { (page.0 % SEG) as usize } else { 0 };
        wal.extend_from_slice(&bytes[from..]);
        seg += 1;
    }
    // One flipped byte in the middle of the filler's WAL (not a page header).
    let at = (damage_from.0 - page.0) as usize + 40_000;
    let at = at - at % 8192 + 4000;
    wal[at] ^= 0xff;

    let mut detector = Detector::new(Thresholds::default());
    let (mut next, mut found, mut unreadable) = (start, Vec::new(), Vec::new());
    while next < end {
        let from = Lsn(next.0 - next.0 % 8192);
        let s = capture::follow::decode_stretch(
            &mut detector,
            &wal[(from.0 - page.0) as usize..],
            from,
            next,
            SEG,
        );
        found.extend(s.found.into_iter().filter_map(|f| detector.resolve(f)));
        ensure!(s.undecodable.is_empty(), "{:?}", s.undecodable);
        match s.unreadable {
            Some((bad, resume, e)) => unreadable.push((bad, resume, e.to_string())),
            None => break,
        }
        next = s.next;
    }
    ensure!(unreadable.len() == 1, "the damage is reported once: {unreadable:?}");
    let (bad, resume, _) = &unreadable[0];
    let damaged = Lsn(page.0 + at as u64);
    ensure!(
        *bad <= damaged && damaged < *resume && resume.0 % 8192 == 0,
        "{unreadable:?} (damage at {damaged})"
    );
    ensure!(
        found.iter().any(|f| f.kind == Kind::RelationsDropped && f.xid == dropped),
        "the DROP after the damage is found: {found:?}"
    );
    Ok(())
}

/// The server's WAL from the page holding `start` to `end`, read from its `pg_wal`.
fn server_wal(pg: &TempPg, start: Lsn, end: Lsn) -> Result<(Lsn, Vec<u8>)> {
    let page = Lsn(start.0 - start.0 % 8192);
    let mut wal = Vec::new();
    let mut seg = page.0 / SEG;
    while seg * SEG < end.0 {
        let name = pgfmt::segment_name(pgfmt::TimelineId(1), seg, SEG);
        let bytes = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).with_context(|| name.clone())?;
        let from = if seg == page.0 / SEG { (page.0 % SEG) as usize } else { 0 };
        wal.extend_from_slice(&bytes[from..]);
        seg += 1;
    }
    Ok((page, wal))
}

/// Root on the database host moves its clock (here: the server's own, through
/// `testkit::clock`), and PostgreSQL stamps commits with it. One harmless DELETE committed with
/// the clock a year ahead made the detector's window end a year on, so that every later
/// commit fell before its start and the drip of deletes after it — 3,000 of a table's rows in
/// 120 transactions of 25, each far under the per-transaction threshold — was counted nowhere:
/// no finding. Now the drip is one `cumulative_delete` restoring to before its first
/// transaction, and the planted commit is reported as a clock lie (the vault's `server_clock`
/// incident).
#[test]
fn a_server_clock_set_a_year_ahead_is_reported_and_does_not_hide_a_drip_of_deletes() -> Result<()> {
    let clock = testkit::clock::ShiftedClock::new()?;
    let pg = TempPg::start_with(clock.server_options(TempPgOptions::default()))?;
    let start: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.parse()?;
    pg.psql("CREATE TABLE customers AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g")?;
    pg.psql("CREATE TABLE sessions AS SELECT g AS id FROM generate_series(1, 100) g")?;
    let year = 365 * 86_400;
    clock.set(year)?;
    let planted = xid_of(&pg, "DELETE FROM sessions WHERE id = 1")?;
    let stamped: i64 = pg.psql("SELECT extract(epoch FROM now())::bigint")?.parse()?;
    clock.set(0)?;
    let first = xid_of(&pg, "DELETE FROM customers WHERE id <= 25")?;
    pg.psql(
        "DO $$ BEGIN FOR i IN 1..119 LOOP DELETE FROM customers WHERE id > i * 25 AND id <= (i + 1) * 25; COMMIT; \
         END LOOP; END $$",
    )?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?.parse()?;
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    ensure!(
        stamped > real + year - 600,
        "the server's clock was moved: it said {stamped}, real time is {real}"
    );

    let (page, wal) = server_wal(&pg, start, end)?;
    let mut detector = Detector::new(Thresholds {
        mass_delete_rows: 1000,
        window_table_delete_rows: 2000,
        ..Default::default()
    });
    // The vault's clock: real time, as it decodes the WAL within a second of its commit.
    detector.set_clock(real * 1_000_000);
    let mut found = Vec::new();
    for rec in WalReader::new(&wal, page, SEG) {
        let rec = rec?;
        if rec.lsn >= end {
            break;
        }
        found.extend(detector.record(&rec)?);
        found.extend(detector.take_queued());
    }
    let kinds: Vec<(Kind, u32, RestoreTarget)> =
        found.iter().map(|f| (f.kind, f.xid, f.restore_target)).collect();
    ensure!(
        kinds.len() == 1
            && kinds[0].0 == Kind::CumulativeDelete
            && kinds[0].2 == RestoreTarget::BeforeXid(first),
        "the drip is one cumulative delete restoring to before transaction {first}: {kinds:?}"
    );
    let (lies, honest) = detector.take_clock_lies();
    ensure!(
        lies.len() == 1
            && lies[0].xid == planted
            && lies[0].ahead
            && lies[0].claimed_us / 1_000_000 >= stamped - 5,
        "the planted commit {planted} (stamped {stamped}) is the one lie: {lies:?}"
    );
    ensure!(honest, "the drip's stamps are honest");
    Ok(())
}
