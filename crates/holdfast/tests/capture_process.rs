//! SIGKILL of the vault process while it streams WAL under load: after each restart the
//! stream resumes from the last durable byte, so the vault ends up with every byte of the
//! server's WAL, with no gap and no duplicate, identical to the server's own segment files.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::archive::WalArchive;
use pgfmt::{Lsn, TimelineId};
use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// Starts pgbench writing for `secs` seconds.
fn pgbench(pg: &TempPg, args: &[&str]) -> Child {
    let mut cmd = command_as_postgres(Path::new("env"));
    cmd.arg(format!("PGPASSWORD={}", pg.superuser_password()))
        .arg(bin("pgbench").unwrap())
        .arg("-h")
        .arg(pg.socket_dir())
        .arg("-p")
        .arg(pg.port().to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("pgbench starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_leaves_no_gap_and_identical_wal() {
    let kills: usize = std::env::var("HOLDFAST_STREAM_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    assert!(pgbench(&pg, &["-i", "-s", "2", "-q"]).wait().unwrap().success());

    let mut v = TempVault::start(holdfast()).unwrap();
    v.protect(&pg, "").unwrap();

    // Write steadily while the vault is killed and restarted at uneven moments.
    let mut load = pgbench(&pg, &["-c", "2", "-T", "30", "-N"]);
    for i in 0..kills {
        std::thread::sleep(Duration::from_millis(700 + 450 * (i as u64 % 3)));
        v.kill();
        std::thread::sleep(Duration::from_millis(100 * (i as u64 % 4)));
        v.restart().unwrap();
    }
    let _ = load.kill();
    let _ = load.wait();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();

    // Wait until the vault reports everything durable, through its own status output.
    let read_token = v.scratch().join("admin.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = v
            .holdfast(&[
                "status",
                "--json",
                "--url",
                v.url(),
                "--ca",
                v.ca_path().to_str().unwrap(),
                "--token-file",
                read_token.to_str().unwrap(),
            ])
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|s| s.parse::<Lsn>().ok());
        if durable.is_some_and(|d| d >= flush) {
            break;
        }
        assert!(Instant::now() < deadline, "vault never caught up to {flush}: {st}\n{}", v.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    v.terminate();

    // Read the vault's store with the escrow key (the vault is stopped) and compare.
    let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
    let store: Arc<dyn store::ObjectStore> = Arc::new(store::LocalDir::open(v.store_dir()).unwrap());
    let repo = store::Repository::open(store, std::slice::from_ref(escrow.identity())).await.unwrap();
    let archive = WalArchive::open(&repo, "main").await.unwrap();
    let map = archive.map();
    let tli = TimelineId(1);
    assert!(map.gaps(tli).is_empty(), "gaps in the stored WAL: {:?}", map.gaps(tli));
    let first = map.first(tli).unwrap().start;
    assert!(map.contiguous_end(tli, first) >= flush);
    // No duplicate: stored pieces never overlap.
    let pieces = map.pieces_in(tli, first, flush);
    for w in pieces.windows(2) {
        assert!(w[0].end <= w[1].start, "pieces overlap: {:?} and {:?}", w[0], w[1]);
    }
    // Byte-identical to the server's completed segment files.
    let seg_size = 16u64 << 20;
    let mut compared = 0;
    let mut seg = first.0.div_ceil(seg_size);
    while (seg + 1) * seg_size <= flush.0 {
        let name = pgfmt::segment_name(tli, seg, seg_size);
        let Ok(server) = std::fs::read(pg.data_dir().join("pg_wal").join(&name)) else {
            seg += 1;
            continue; // recycled by the server already
        };
        let ours = archive.read_range(tli, Lsn(seg * seg_size), Lsn((seg + 1) * seg_size)).await.unwrap();
        assert!(ours == server, "segment {name} differs from the server's");
        compared += 1;
        seg += 1;
    }
    assert!(compared >= 1, "no complete segment to compare");
    eprintln!(
        "{kills} SIGKILLs, {} pieces, {compared} segments byte-identical, durable to {flush}",
        pieces.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_wal_range_and_backup_a_damaged_piece_breaks() {
    let pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let mut v = TempVault::start(holdfast()).unwrap();
    v.protect(&pg, "").unwrap();
    let token = v.scratch().join("admin.token");
    let remote = |cmd: &[&str]| {
        let mut args: Vec<&str> = cmd.to_vec();
        let ca = v.ca_path();
        let (ca, token) = (ca.to_str().unwrap().to_string(), token.to_str().unwrap().to_string());
        args.extend(["--url", v.url(), "--ca", &ca, "--token-file", &token]);
        v.holdfast(&args).unwrap()
    };
    let out = remote(&["backup", "--cluster", "main", "--json"]);
    assert!(out.status.success(), "backup failed: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    let backup: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup_id = backup["id"].as_str().unwrap().to_string();
    // Finish the backup's segment so that a `wal.segment` record names its pieces.
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()").unwrap();
    let flush: Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(40));
    loop {
        let st: serde_json::Value =
            serde_json::from_slice(&remote(&["status", "--json"]).stdout).unwrap_or_default();
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|s| s.parse::<Lsn>().ok());
        if durable.is_some_and(|d| d >= flush) {
            break;
        }
        assert!(Instant::now() < deadline, "the vault did not catch up: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    v.terminate();

    // Find the piece holding the backup's start and flip one byte of it on disk.
    let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
    let local = store::LocalDir::open(v.store_dir()).unwrap();
    let store: Arc<dyn store::ObjectStore> = Arc::new(local.clone());
    let repo = store::Repository::open(store, std::slice::from_ref(escrow.identity())).await.unwrap();
    let start: Lsn = backup["start_lsn"].as_str().unwrap().parse().unwrap();
    let map = WalArchive::open(&repo, "main").await.unwrap().map();
    let piece = map.pieces_in(TimelineId(1), start, Lsn(start.0 + 1))[0];
    let path = local.object_path(&piece.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let out =
        v.holdfast(&["vault", "check", "--config", v.config_path().to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "check must exit 3 on damage: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let affected = report["affected_wal"].as_array().unwrap();
    let hit = affected
        .iter()
        .find(|a| a["object"] == piece.name.to_string())
        .unwrap_or_else(|| panic!("the damaged piece is not reported: {report}"));
    assert_eq!(hit["cluster"], "main");
    assert_eq!(hit["start"], piece.start.to_string());
    assert_eq!(hit["end"], piece.end.to_string());
    assert!(hit["backups"].as_array().unwrap().iter().any(|b| b == backup_id.as_str()), "{report}");
    assert!(report["damaged"].to_string().contains(&piece.name.to_string()));
}

/// Synchronous mode: whatever the vault acknowledged to PostgreSQL as flushed (what lets a
/// commit return) is in the vault after a SIGKILL right after the acknowledgement, under a
/// steady load of synchronous commits, so that WAL is still waiting in the synchronous journal
/// to be folded into objects. The server is killed before the vault starts again: none of that
/// WAL can be fetched twice, it must come from the vault's own disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_ack_survives_a_sigkill_of_the_vault() {
    let mut pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    assert!(pgbench(&pg, &["-i", "-s", "1", "-q"]).wait().unwrap().success());
    let mut v = TempVault::start(holdfast()).unwrap();
    v.protect(&pg, "synchronous = true\n").unwrap();
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'holdfast_main'").unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    while pg
        .psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'holdfast_main'")
        .unwrap()
        != "sync"
    {
        assert!(Instant::now() < deadline, "the vault never became the synchronous standby:\n{}", v.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: Lsn = pg.psql("SELECT pg_current_wal_insert_lsn()").unwrap().parse().unwrap();
    let mut load = pgbench(&pg, &["-c", "2", "-T", "60", "-N"]);
    std::thread::sleep(Duration::from_millis(1500));
    v.kill();
    // A physical slot's restart_lsn is the flush position its standby last reported: all the
    // vault acknowledged, which may not be lost.
    let acked: Lsn = pg
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'holdfast_main'")
        .unwrap()
        .parse()
        .unwrap();
    let _ = load.kill();
    let _ = load.wait();
    pg.kill().unwrap();
    assert!(acked > before, "no synchronous commit was acknowledged under load ({before} → {acked})");

    v.restart().unwrap();
    let token = v.scratch().join("admin.token");
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    loop {
        let out = v.cli(&token, &["status", "--json"]).unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|s| s.parse::<Lsn>().ok());
        if durable.is_some_and(|d| d >= acked) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the vault lost WAL it acknowledged: durable {durable:?} < acknowledged {acked}\n{}",
            v.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    v.terminate();
    let journal = v.store_dir().join("journal").join("main.journal");
    assert!(journal.exists(), "synchronous mode on a local store keeps its journal at {}", journal.display());
    let recovered = v.log().contains("the synchronous journal held");
    eprintln!("acknowledged {acked}; recovered from the synchronous journal: {recovered}");

    // The acknowledged WAL, byte for byte as the server wrote it, in the vault's objects.
    let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
    let store: Arc<dyn store::ObjectStore> = Arc::new(store::LocalDir::open(v.store_dir()).unwrap());
    let repo = store::Repository::open(store, std::slice::from_ref(escrow.identity())).await.unwrap();
    let archive = WalArchive::open(&repo, "main").await.unwrap();
    let seg_size = 16u64 << 20;
    let seg = (acked.0 - 1) / seg_size;
    let name = pgfmt::segment_name(TimelineId(1), seg, seg_size);
    let server = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).unwrap();
    let ours = archive.read_range(TimelineId(1), Lsn(seg * seg_size), acked).await.unwrap();
    assert!(
        ours[..] == server[..ours.len()],
        "the stored WAL before {acked} differs from the server's {name}"
    );
}
