//! The destruction detector on WAL from a real PostgreSQL: a mass DELETE, DROP TABLE, TRUNCATE
//! and DROP DATABASE are each found with the right kind, transaction and LSN — checked against
//! `pg_waldump` — and a small DELETE, emptying an empty table, VACUUM FULL, CLUSTER, REINDEX and
//! a rewriting ALTER TABLE are not.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use capture::detect::{Detector, Kind, RestoreTarget, Thresholds};
use pgfmt::Lsn;
use pgfmt::wal::WalReader;
use testkit::pg::{TempPg, bin};

const SEG: u64 = 16 << 20;

fn xid_of(pg: &TempPg, sql: &str) -> Result<u32> {
    let out = pg.psql(&format!("{sql}; SELECT txid_current()"))?;
    Ok(out.lines().last().context("no xid")?.trim().parse()?)
}

#[test]
fn destructive_transactions_are_found_with_their_xid_and_lsn() -> Result<()> {
    let pg = TempPg::start()?;
    // From before the tables exist, so that the detector sees them written (it reports only
    // files known to hold data).
    let start: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.parse()?;
    pg.psql("CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 5000) g")?;
    pg.psql("CREATE TABLE b AS SELECT g FROM generate_series(1, 100) g; CREATE TABLE c AS SELECT g FROM generate_series(1, 100) g")?;
    pg.psql("CREATE DATABASE victim")?;
    // A table created and emptied while still empty: nothing destroyed, no finding.
    pg.psql("CREATE TABLE empty (id int)")?;
    pg.psql("TRUNCATE empty")?;
    // Maintenance rewrites drop files that held data too, but write the data into new ones
    // first: not destruction.
    pg.psql("UPDATE a SET v = v || 'x' WHERE id % 2 = 0")?;
    pg.psql("VACUUM FULL a")?;
    pg.psql("CLUSTER a USING a_pkey")?;
    pg.psql("REINDEX TABLE a")?;
    pg.psql("ALTER TABLE a ADD COLUMN z float8 DEFAULT random()")?;
    pg.psql("VACUUM FULL b")?;
    let mass = xid_of(&pg, "DELETE FROM a WHERE id <= 3000")?;
    let small = xid_of(&pg, "DELETE FROM a WHERE id > 4990")?;
    let dropped = xid_of(&pg, "DROP TABLE b")?;
    let truncated = xid_of(&pg, "TRUNCATE c")?;
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
    let mut found = Vec::new();
    for rec in WalReader::new(&wal, page, SEG) {
        let Ok(rec) = rec else { break };
        if rec.lsn >= end {
            break;
        }
        if let Some(f) = detector.record(&rec) {
            found.push(f);
        }
    }
    let kinds: Vec<(Kind, u32)> = found.iter().map(|f| (f.kind, f.xid)).collect();
    ensure!(
        kinds[..3]
            == [
                (Kind::MassDelete, mass),
                (Kind::RelationsDropped, dropped),
                (Kind::RelationsDropped, truncated)
            ],
        "{kinds:?} (mass {mass}, small {small}, drop {dropped}, truncate {truncated})"
    );
    ensure!(!kinds.iter().any(|(_, x)| *x == small), "a 10-row delete was reported");
    ensure!(found.len() == 4, "only the four destructive transactions: {kinds:?}");
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
    for f in &found[..3] {
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
