//! Replication against a real PostgreSQL started by the test: SCRAM login, IDENTIFY_SYSTEM,
//! slots, WAL streaming checked against `pg_waldump`, BASE_BACKUP with manifest verification,
//! and the errors a user meets (wrong password, unreachable server, missing privilege, slot).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pgfmt::wal::{RecordKind, WalReader, rmgr};
use pgfmt::{BackupLabel, BackupManifest, Lsn, TimelineId};
use pgproto::Error;
use pgproto::basebackup::BackupEvent;
use pgproto::conn::{Buffered, Config, Host, ReplicationConnection, StreamEvent};
use pgproto::replication::{ReplicationMessage, StandbyStatusUpdate, commands::BaseBackupOptions, pg_now};
use testkit::pg::{TempPg, TempPgOptions};

const SEG: u64 = pgfmt::DEFAULT_WAL_SEGMENT_SIZE;
const REP_USER: &str = "holdfast_rep";
const REP_PASSWORD: &str = "rep 'pass\"word";

fn unix_config(pg: &TempPg, user: &str, password: &str) -> Config {
    Config::new(Host::Unix { dir: pg.socket_dir(), port: pg.port() }, user)
        .password(password, "the test's source settings")
}

async fn connect(pg: &TempPg) -> Result<ReplicationConnection> {
    Ok(ReplicationConnection::connect(&unix_config(pg, REP_USER, REP_PASSWORD)).await?)
}

/// What [`make_wal`] did.
struct Workload {
    dropped_db: u32,
    keep_filenode: u32,
    doomed_filenode: u32,
    switch: Lsn,
}

/// Generates WAL with every record kind the incident detector reads.
fn make_wal(pg: &TempPg) -> Result<Workload> {
    pg.psql(
        "create table keep (id int primary key, v text);
         create table doomed (id int, v text);
         insert into keep select g, md5(g::text) from generate_series(1, 2000) g;
         insert into doomed select g, repeat('x', 500) from generate_series(1, 3000) g",
    )?;
    let keep_filenode = pg.psql("select pg_relation_filenode('keep')")?.parse()?;
    let doomed_filenode = pg.psql("select pg_relation_filenode('doomed')")?.parse()?;
    pg.psql("checkpoint")?;
    // Updates: HOT (same page, no indexed column changed) and, through the index, not HOT.
    pg.psql("update keep set v = 'hot' where id <= 50")?;
    pg.psql("update keep set id = -id where id between 51 and 60")?;
    pg.psql("delete from keep where id > 1900")?;
    pg.psql("delete from doomed")?;
    // VACUUM of an emptied table truncates its file: an SMGR TRUNCATE record.
    pg.psql("vacuum doomed")?;
    pg.psql("truncate keep")?;
    pg.psql("drop table doomed")?;
    pg.psql("create database scratch")?;
    let oid: u32 = pg.psql("select oid from pg_database where datname = 'scratch'")?.parse()?;
    pg.psql("drop database scratch")?;
    let switch: Lsn = pg.psql("select pg_switch_wal()")?.parse()?;
    Ok(Workload { dropped_db: oid, keep_filenode, doomed_filenode, switch })
}

/// Streams WAL from `start` until `end` (exclusive) and returns the bytes.
async fn stream_wal(conn: &mut ReplicationConnection, slot: &str, start: Lsn, end: Lsn) -> Result<Vec<u8>> {
    conn.start_replication(Some(slot), start, Some(TimelineId(1))).await?;
    let mut wal = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while start.0 + (wal.len() as u64) < end.0 {
        ensure!(Instant::now() < deadline, "timed out streaming WAL");
        let ev = tokio::time::timeout(Duration::from_secs(30), conn.next_message())
            .await
            .context("no message from the server for 30 s")??;
        match ev {
            StreamEvent::XLogData(x) => {
                ensure!(
                    x.wal_start.0 == start.0 + wal.len() as u64,
                    "WAL arrived out of order: {} after {} bytes",
                    x.wal_start,
                    wal.len()
                );
                wal.extend_from_slice(&x.data);
            }
            StreamEvent::Keepalive(k) => {
                if k.reply_requested {
                    let pos = Lsn(start.0 + wal.len() as u64);
                    conn.send_status(StandbyStatusUpdate {
                        write: pos,
                        flush: pos,
                        apply: pos,
                        client_time: pg_now(),
                        reply_requested: false,
                    })
                    .await?;
                }
            }
            StreamEvent::EndOfTimeline(n) => bail!("unexpected end of timeline: {n:?}"),
        }
    }
    wal.truncate((end.0 - start.0) as usize);
    conn.send_status(StandbyStatusUpdate {
        write: end,
        flush: end,
        apply: end,
        client_time: pg_now(),
        reply_requested: false,
    })
    .await?;
    let next = conn.stop_replication().await?;
    ensure!(next.is_none(), "no timeline switch expected, got {next:?}");
    Ok(wal)
}

/// One line of `pg_waldump` output, reduced to what both sides know.
#[derive(Debug, PartialEq, Eq, Clone)]
struct DumpLine {
    rmgr: String,
    tot_len: u32,
    xid: u32,
    lsn: Lsn,
    desc: String,
}

fn parse_waldump(out: &str) -> Result<Vec<DumpLine>> {
    let mut lines = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("rmgr: ")) {
        // rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0151A8F0, prev 0/0151A8B8, desc: ...
        let field = |key: &str| -> Result<&str> {
            let at = line.find(key).with_context(|| format!("no {key} in {line:?}"))?;
            let rest = &line[at + key.len()..];
            Ok(rest.split(',').next().unwrap_or("").trim())
        };
        let rmgr = line["rmgr: ".len()..].split_whitespace().next().unwrap_or("").to_owned();
        let lens = field("len (rec/tot):")?;
        let tot_len = lens.rsplit('/').next().unwrap_or("").trim().parse()?;
        lines.push(DumpLine {
            rmgr,
            tot_len,
            xid: field("tx:")?.parse()?,
            lsn: field("lsn:")?.parse()?,
            desc: line.split_once("desc: ").map_or("", |(_, d)| d).to_owned(),
        });
    }
    Ok(lines)
}

#[tokio::test(flavor = "current_thread")]
async fn streams_wal_that_pg_waldump_agrees_with() -> Result<()> {
    let test_start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64;
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    let mut conn = connect(&pg).await?;
    assert!(conn.server_version_num() >= 140_000);

    let id = conn.identify_system().await?;
    assert_eq!(id.system_id, pg.system_identifier()?);
    assert_eq!(id.timeline, TimelineId(1));
    assert!(id.xlogpos.is_valid());

    conn.create_physical_slot("vault", false).await?;
    let slot = conn.read_replication_slot("vault").await?;
    assert_eq!(slot.slot_type, "physical");
    let restart = slot.restart_lsn.context("slot reserved no WAL")?;
    assert_eq!(slot.restart_tli, Some(TimelineId(1)));

    let work = make_wal(&pg)?;
    let (dropped_db, switch) = (work.dropped_db, work.switch);
    let start = pgfmt::segment_start(pgfmt::lsn_to_segno(restart, SEG), SEG);
    let end = pgfmt::segment_start(pgfmt::lsn_to_segno(switch, SEG) + 1, SEG);
    let wal = stream_wal(&mut conn, "vault", start, end).await?;
    assert_eq!(wal.len() as u64, end.0 - start.0);

    // The slot moved to what we reported as flushed.
    let slot = conn.read_replication_slot("vault").await?;
    assert_eq!(slot.restart_lsn, Some(end));

    // Decode with pgfmt.
    let mut reader = WalReader::new(&wal, start, SEG);
    let records: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
    assert!(records.len() > 100, "only {} records", records.len());

    // Write the segments out and ask pg_waldump.
    let dir = tempfile::tempdir()?;
    for (i, seg) in wal.chunks(SEG as usize).enumerate() {
        let segno = pgfmt::lsn_to_segno(start, SEG) + i as u64;
        std::fs::write(dir.path().join(pgfmt::segment_name(TimelineId(1), segno, SEG)), seg)?;
    }
    let out = std::process::Command::new(testkit::pg::bin("pg_waldump")?)
        .arg("-p")
        .arg(dir.path())
        .arg("-s")
        .arg(start.to_string())
        .arg("-e")
        .arg(end.to_string())
        .output()?;
    let dump = parse_waldump(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(!dump.is_empty(), "pg_waldump printed nothing: {}", String::from_utf8_lossy(&out.stderr));

    let ours: Vec<(Lsn, String, u32, u32)> = records
        .iter()
        .map(|r| (r.lsn, rmgr::name(r.header.rmid).to_owned(), r.header.tot_len, r.header.xid))
        .collect();
    let theirs: Vec<(Lsn, String, u32, u32)> =
        dump.iter().map(|d| (d.lsn, d.rmgr.clone(), d.tot_len, d.xid)).collect();
    assert_eq!(ours.len(), theirs.len(), "record counts differ");
    assert_eq!(ours, theirs);

    // The decoded kinds agree with pg_waldump's descriptions.
    let mut seen = BTreeMap::<&str, usize>::new();
    let mut deletes_by_rel = BTreeMap::<u32, usize>::new();
    for (rec, line) in records.iter().zip(&dump) {
        match rec.kind()? {
            RecordKind::XactCommit(c) => {
                *seen.entry("commit").or_default() += 1;
                assert!(line.desc.starts_with("COMMIT"), "{line:?}");
                assert!(
                    c.unix_micros() > test_start - 60_000_000,
                    "commit time {} is before the test started",
                    c.unix_micros()
                );
                let rels: Vec<String> = c.dropped_rels.iter().map(ToString::to_string).collect();
                let theirs: Vec<&str> = line
                    .desc
                    .split_once("rels: ")
                    .map(|(_, r)| r.split(';').next().unwrap_or("").split_whitespace().collect())
                    .unwrap_or_default();
                assert_eq!(rels, theirs, "{line:?}");
                if !rels.is_empty() {
                    *seen.entry("commit dropping files").or_default() += 1;
                }
            }
            RecordKind::XactAbort(_) => assert!(line.desc.starts_with("ABORT"), "{line:?}"),
            RecordKind::DbaseDrop { db_id, .. } => {
                *seen.entry("drop database").or_default() += 1;
                assert_eq!(db_id, dropped_db);
                assert!(line.desc.starts_with("DROP"), "{line:?}");
                assert!(line.desc.contains(&format!("/{db_id}")), "{line:?}");
            }
            RecordKind::SmgrTruncate { rel, block, .. } => {
                *seen.entry("truncate").or_default() += 1;
                assert!(line.desc.starts_with(&format!("TRUNCATE {rel} to {block} blocks")), "{line:?}");
            }
            RecordKind::HeapDelete { rel, .. } => {
                *seen.entry("heap delete").or_default() += 1;
                assert!(line.desc.starts_with("DELETE"), "{line:?}");
                let rel = rel.context("heap delete without a block reference")?;
                let theirs = format!("rel {}/{}/{} ", rel.spc, rel.db, rel.rel);
                assert!(line.desc.contains(&theirs), "{rel:?} vs {line:?}");
                *deletes_by_rel.entry(rel.rel).or_default() += 1;
            }
            RecordKind::HeapUpdate { rel, hot } => {
                *seen.entry(if hot { "hot update" } else { "heap update" }).or_default() += 1;
                // "+INIT": the new tuple starts a fresh page.
                let op = line.desc.split_whitespace().next().unwrap_or("").trim_end_matches("+INIT");
                assert_eq!(op, if hot { "HOT_UPDATE" } else { "UPDATE" }, "{line:?}");
                let rel = rel.context("heap update without a block reference")?;
                assert!(line.desc.contains(&format!("rel {}/{}/{} ", rel.spc, rel.db, rel.rel)), "{line:?}");
            }
            RecordKind::XlogSwitch => {
                *seen.entry("switch").or_default() += 1;
                assert_eq!(line.desc.trim_end(), "SWITCH");
            }
            RecordKind::Checkpoint(c) => {
                *seen.entry("checkpoint").or_default() += 1;
                assert!(line.desc.starts_with("CHECKPOINT_"), "{line:?}");
                assert!(
                    line.desc.contains(&format!("redo {}; tli {}; prev tli {}", c.redo, c.tli, c.prev_tli)),
                    "{c:?} vs {line:?}"
                );
                assert!(line.desc.contains(&format!("oid {}", c.next_oid)), "{line:?}");
            }
            RecordKind::Other => {
                assert!(
                    !(line.rmgr == "Heap"
                        && ["DELETE", "UPDATE", "HOT_UPDATE"]
                            .iter()
                            .any(|k| line.desc.starts_with(&format!("{k} ")))),
                    "missed a heap delete or update: {line:?}"
                );
            }
        }
    }
    assert_eq!(deletes_by_rel.get(&work.keep_filenode), Some(&100));
    assert_eq!(deletes_by_rel.get(&work.doomed_filenode), Some(&3000));
    let waldump_deletes = dump.iter().filter(|d| d.rmgr == "Heap" && d.desc.starts_with("DELETE")).count();
    assert_eq!(seen.get("heap delete"), Some(&waldump_deletes), "{seen:?}");
    let waldump_updates = dump
        .iter()
        .filter(|d| {
            d.rmgr == "Heap"
                && d.desc.split_whitespace().next().is_some_and(|op| op.trim_end_matches("+INIT") == "UPDATE")
        })
        .count();
    assert_eq!(seen.get("heap update").copied().unwrap_or(0), waldump_updates, "{seen:?}");
    for kind in ["commit dropping files", "drop database", "truncate", "switch", "checkpoint", "hot update"] {
        assert!(seen.contains_key(kind), "no {kind} record decoded: {seen:?}");
    }
    conn.close().await?;
    Ok(())
}

/// Regular files of a ustar archive: (path, content).
fn untar(tar: &[u8]) -> Result<Vec<(String, &[u8])>> {
    let mut files = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let text = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        ensure!(&h[257..262] == b"ustar", "not a ustar header at {at}");
        let size = u64::from_str_radix(text(124..136).trim(), 8)? as usize;
        let mut name = text(0..100);
        let prefix = text(345..500);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let data_at = at + 512;
        ensure!(data_at + size <= tar.len(), "tar member {name} is cut short");
        if matches!(h[156], b'0' | 0) {
            files.push((name, &tar[data_at..data_at + size]));
        }
        at = data_at + size.div_ceil(512) * 512;
    }
    Ok(files)
}

#[tokio::test(flavor = "current_thread")]
async fn base_backup_matches_its_manifest() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    pg.psql("create table t (id int); insert into t select generate_series(1, 1000)")?;
    let mut conn = connect(&pg).await?;

    // Watch the events as they come, then check the assembled backup.
    conn.start_base_backup(&BaseBackupOptions { progress: true, ..Default::default() }).await?;
    let mut kinds = Vec::new();
    let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut start = None;
    let mut end = None;
    while let Some(ev) = conn.next_backup_event().await? {
        match ev {
            BackupEvent::Started { start: s, tablespaces } => {
                assert_eq!(tablespaces.len(), 1);
                assert_eq!(tablespaces[0].oid, None);
                start = Some(s);
                kinds.push("started");
            }
            BackupEvent::ArchiveStart { name, location } => {
                assert_eq!(location, None);
                archives.push((name, Vec::new()));
                kinds.push("archive");
            }
            BackupEvent::ArchiveData(d) => archives.last_mut().context("data first")?.1.extend(&d),
            BackupEvent::Progress(_) => {}
            BackupEvent::ManifestStart => kinds.push("manifest"),
            BackupEvent::ManifestData(d) => manifest.extend_from_slice(&d),
            BackupEvent::Finished(e) => {
                end = Some(e);
                kinds.push("finished");
            }
        }
    }
    assert_eq!(kinds, ["started", "archive", "manifest", "finished"]);
    let (start, end) = (start.context("no start")?, end.context("no end")?);
    assert!(end.lsn >= start.lsn);
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0].0, "base.tar");

    // The manifest's own checksum holds, and a flipped byte is caught.
    let m = BackupManifest::parse(&manifest)?;
    let mut tampered = manifest.clone();
    let pos = tampered.windows(6).position(|w| w == b"\"Size\"").context("no Size")?;
    tampered[pos + 9] ^= 1;
    assert!(BackupManifest::parse(&tampered).is_err());
    assert_eq!(m.wal_ranges.len(), 1);
    assert_eq!(m.wal_ranges[0].start_lsn, start.lsn);
    assert_eq!(m.wal_ranges[0].end_lsn, end.lsn);

    // Every file in the tar matches its manifest entry, and the sets are equal.
    let files = untar(&archives[0].1)?;
    let tar_paths: BTreeSet<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let manifest_paths: BTreeSet<String> = m.files.iter().map(|f| f.path_lossy()).collect();
    let manifest_paths: BTreeSet<&str> = manifest_paths.iter().map(String::as_str).collect();
    assert_eq!(tar_paths, manifest_paths);
    let mut crc_checked = 0;
    for (path, content) in &files {
        let entry = m.file(path.as_bytes()).context("file missing from manifest")?;
        entry.verify(content)?;
        if entry.algorithm == pgfmt::manifest::ChecksumAlgorithm::Crc32c {
            crc_checked += 1;
        }
    }
    assert!(crc_checked > 500, "only {crc_checked} CRC32C checksums checked");

    // A corrupted file is caught.
    let (path, content) = files.iter().find(|(_, c)| !c.is_empty()).context("no data")?;
    let mut bad = content.to_vec();
    bad[0] ^= 0xFF;
    assert!(m.file(path.as_bytes()).context("entry")?.verify(&bad).is_err());

    // backup_label agrees with the protocol.
    let (_, label) = files.iter().find(|(p, _)| p == "backup_label").context("no backup_label")?;
    let label = BackupLabel::parse(std::str::from_utf8(label)?)?;
    assert_eq!(label.start_wal_location, start.lsn);
    assert_eq!(label.start_timeline, Some(TimelineId(1)));
    assert_eq!(label.backup_method.as_deref(), Some("streamed"));
    assert_eq!(label.label.as_deref(), Some("holdfast base backup"));

    // The connection is usable afterwards.
    conn.identify_system().await?;
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_is_reported_as_such() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    let err = ReplicationConnection::connect(&unix_config(&pg, REP_USER, "not it")).await.unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "authentication failed for user \"holdfast_rep\": check the password in the test's source settings"
    );
    // An unknown role looks the same to the client (PostgreSQL does not reveal which).
    let err = ReplicationConnection::connect(&unix_config(&pg, "nobody", "x")).await.unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_server_is_reported_as_such() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = Config::new(Host::Unix { dir: dir.path().to_path_buf(), port: 5432 }, "x");
    let err = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot reach PostgreSQL at "), "{err}");
    assert!(err.to_string().contains(".s.PGSQL.5432"), "{err}");

    // A TCP port nobody listens on (held, so no other test's server can take it meanwhile).
    let refusing = testkit::net::RefusingPort::new()?;
    let port = refusing.port();
    let cfg = Config::new(Host::Tcp { host: "127.0.0.1".into(), port }, "x");
    let err = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn role_without_replication_is_told_what_to_do() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_login_role("app", "app-pw")?;
    let err = ReplicationConnection::connect(&unix_config(&pg, "app", "app-pw")).await.unwrap_err();
    assert!(matches!(err, Error::NoReplicationPrivilege { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "role \"app\" lacks the REPLICATION attribute: run ALTER ROLE app REPLICATION"
    );
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn missing_slot_and_server_errors() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    let mut conn = connect(&pg).await?;
    let err = conn.start_replication(Some("nope"), Lsn(0x100_0000), None).await.unwrap_err();
    assert!(matches!(&err, Error::SlotNotFound { slot } if slot == "nope"), "{err:?}");
    let err = conn.read_replication_slot("nope").await.unwrap_err();
    assert!(matches!(err, Error::SlotNotFound { .. }), "{err:?}");
    let err = conn.drop_replication_slot("nope").await.unwrap_err();
    assert!(matches!(err, Error::SlotNotFound { .. }), "{err:?}");

    // Other server errors carry SQLSTATE and text; the connection stays usable.
    conn.create_physical_slot("dup", false).await?;
    let err = conn.create_physical_slot("dup", false).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err:?}");
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = conn.simple_query("START_REPLICATION PHYSICAL nope").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42601"), "{err:?}");
    let err = conn.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("0A000"), "{err:?}");
    assert_eq!(
        err.to_string(),
        "server error: ERROR 0A000: cannot execute SQL commands in WAL sender for physical replication"
    );
    conn.drop_replication_slot("dup").await?;
    assert!(conn.identify_system().await.is_ok());
    // Timeline 1 has no history file.
    assert!(conn.timeline_history(TimelineId(1)).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn timeline_history_after_promotion() -> Result<()> {
    let primary = TempPg::start()?;
    let standby = TempPg::standby_of(&primary)?;
    standby.promote()?;
    standby.create_replication_role(REP_USER, REP_PASSWORD)?;
    let mut conn = connect(&standby).await?;
    let id = conn.identify_system().await?;
    assert_eq!(id.timeline, TimelineId(2));
    let h = conn.timeline_history(TimelineId(2)).await?;
    assert_eq!(h.filename, pgfmt::history_file_name(TimelineId(2)));
    let history = h.history()?;
    assert_eq!(history.entries.len(), 1);
    assert_eq!(history.entries[0].parent, TimelineId(1));
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn tcp_login_with_tls_when_offered() -> Result<()> {
    let pg = TempPg::start_with(TempPgOptions::default().with_tcp())?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    let cfg = Config::new(Host::Tcp { host: "127.0.0.1".into(), port: pg.port() }, REP_USER)
        .password(REP_PASSWORD, "test");
    // The server has ssl = off: `prefer` falls back to plain TCP, `require` refuses.
    let mut conn = ReplicationConnection::connect(&cfg).await?;
    assert!(!conn.is_tls());
    assert_eq!(conn.identify_system().await?.timeline, TimelineId(1));
    let mut require = cfg.clone();
    require.ssl = pgproto::conn::SslMode::Require;
    let err = ReplicationConnection::connect(&require).await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn tls_require_and_verify_full() -> Result<()> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "holdfast test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let server_key = rcgen::KeyPair::generate()?;
    let server_cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&server_key, &ca)?;

    let pg = TempPg::start_with(TempPgOptions::default().with_tcp())?;
    pg.write_data_file("server.crt", server_cert.pem().as_bytes(), 0o644)?;
    pg.write_data_file("server.key", server_key.serialize_pem().as_bytes(), 0o600)?;
    pg.psql("alter system set ssl = on")?;
    pg.psql("select pg_reload_conf()")?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    // The reload is asynchronous: wait until new connections see it (a wait that fails when it
    // runs out, rather than going on to fail the TLS checks for a reason it would not say).
    testkit::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "ssl = on after the reload",
        || pg.psql("show ssl").ok().filter(|v| v == "on"),
    )?;

    let cfg = |ssl| {
        let mut c = Config::new(Host::Tcp { host: "localhost".into(), port: pg.port() }, REP_USER)
            .password(REP_PASSWORD, "test");
        c.ssl = ssl;
        c
    };
    let mut conn = ReplicationConnection::connect(&cfg(pgproto::conn::SslMode::VerifyFull {
        ca_pem: ca.pem().into_bytes(),
    }))
    .await?;
    assert!(conn.is_tls());
    assert_eq!(conn.identify_system().await?.system_id, pg.system_identifier()?);

    let conn = ReplicationConnection::connect(&cfg(pgproto::conn::SslMode::Require)).await?;
    assert!(conn.is_tls());

    // A certificate from another CA is refused under verify-full.
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new())?;
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = other.self_signed(&rcgen::KeyPair::generate()?)?;
    let err = ReplicationConnection::connect(&cfg(pgproto::conn::SslMode::VerifyFull {
        ca_pem: other.pem().into_bytes(),
    }))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_database_session_runs_read_only_queries() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    pg.psql("CREATE DATABASE shop")?;
    pg.psql_db("shop", "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")?;
    let cfg = unix_config(&pg, REP_USER, REP_PASSWORD);
    let mut conn = ReplicationConnection::connect_database(&cfg, "shop").await?;
    let sets = conn.simple_query("SELECT current_database() AS db, NULL::text AS nothing").await?;
    assert_eq!(sets[0].get(0, "db"), Some("shop"));
    assert_eq!(sets[0].get(0, "nothing"), None, "NULL");
    // Catalog reads need no grant: the file and size of a table the role may not read.
    let sets = conn
        .simple_query("SELECT pg_relation_filenode('orders') AS f, pg_relation_size('orders') AS b")
        .await?;
    assert!(sets[0].get(0, "f").unwrap().parse::<u32>()? > 0);
    assert_eq!(sets[0].get(0, "b"), Some("8192"));
    // The session cannot write, whatever it is asked.
    let err = conn.simple_query("CREATE TABLE x (id int)").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("25006"), "read-only transaction: {err:?}");
    let err = conn.simple_query("SELECT * FROM orders").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"), "no grant on the data: {err:?}");
    assert!(conn.simple_query("SELECT 1").await.is_ok(), "usable after errors");
    // A database that does not exist is named in the error.
    let err = ReplicationConnection::connect_database(&cfg, "nope").await.unwrap_err();
    assert!(err.to_string().contains("\"nope\" does not exist"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_clean_shutdown_ends_the_stream_in_plain_words() -> Result<()> {
    let mut pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    let mut conn = connect(&pg).await?;
    let ident = conn.identify_system().await?;
    conn.start_replication(None, Lsn(ident.xlogpos.0 - ident.xlogpos.0 % SEG), None).await?;
    let stopper = std::thread::spawn(move || {
        pg.stop().unwrap();
        pg
    });
    // The server waits for the client to confirm everything before it ends the stream.
    let mut received = Lsn(0);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), conn.next_message()).await? {
            Ok(StreamEvent::XLogData(x)) => received = received.max(Lsn(x.wal_start.0 + x.data.len() as u64)),
            Ok(StreamEvent::Keepalive(k)) if k.reply_requested => {
                let at = received.max(k.wal_end);
                let status = StandbyStatusUpdate {
                    write: at,
                    flush: at,
                    apply: at,
                    client_time: pg_now(),
                    reply_requested: false,
                };
                conn.send_status(status).await?;
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let _pg = stopper.join().unwrap();
    assert!(matches!(err, Error::StreamEnded), "{err:?}");
    assert!(err.to_string().starts_with("the server ended the WAL stream (it is shutting down"), "{err}");
    Ok(())
}

/// A thread reads the stream with blocking calls (the collector's synchronous mode) and reports
/// through a `StatusSender`; the connection refuses to read or send meanwhile, and once it takes
/// the stream back it ends it as usual and runs commands again.
#[tokio::test(flavor = "current_thread")]
async fn a_lent_reader_streams_wal_and_hands_the_stream_back() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_replication_role(REP_USER, REP_PASSWORD)?;
    pg.psql("create table t (x int)")?;
    let mut conn = connect(&pg).await?;
    let ident = conn.identify_system().await?;
    let start = Lsn(ident.xlogpos.0 - ident.xlogpos.0 % SEG);
    conn.start_replication(None, start, None).await?;
    let status = conn.status_sender().context("a plain socket has a status sender")?;
    let mut reader = conn.lend_reader(Duration::from_millis(100))?.context("a plain socket can be lent")?;
    ensure!(conn.lend_reader(Duration::from_millis(100))?.is_none(), "lent twice");
    let refused = conn.next_message().await;
    ensure!(matches!(refused, Err(Error::InvalidArgument(_))), "read while lent: {refused:?}");
    pg.psql("insert into t select generate_series(1, 20000)")?;
    let target: Lsn = pg.psql("select pg_current_wal_flush_lsn()")?.parse()?;

    let (reader, received) = tokio::task::spawn_blocking(move || -> Result<_> {
        let (mut received, t0) = (start, Instant::now());
        while received < target {
            ensure!(t0.elapsed() < Duration::from_secs(60), "streamed only up to {received}");
            match reader.next_buffered()? {
                Buffered::Message(ReplicationMessage::XLogData(x)) => {
                    ensure!(x.wal_start == received, "WAL from {} after {received}", x.wal_start);
                    received = Lsn(received.0 + x.data.len() as u64);
                }
                Buffered::Message(ReplicationMessage::PrimaryKeepalive(_)) => {}
                Buffered::NeedMore => {
                    reader.read()?;
                }
                Buffered::Other => bail!("the stream ended"),
            }
        }
        let at = StandbyStatusUpdate {
            write: received,
            flush: received,
            apply: received,
            client_time: pg_now(),
            reply_requested: false,
        };
        status.send(&at)?;
        Ok((reader, received))
    })
    .await??;
    // The status sent from the thread reached the server.
    testkit::wait::until(Duration::from_secs(30), Duration::from_millis(50), "the flush position", || {
        pg.psql(&format!("select flush_lsn >= '{target}' from pg_stat_replication")).ok().filter(|v| v == "t")
    })?;
    conn.take_back(reader)?;
    let next = conn.stop_replication().await?;
    ensure!(next.is_none(), "{next:?}");
    ensure!(conn.identify_system().await?.xlogpos >= received, "the connection works after the stream");
    Ok(())
}
