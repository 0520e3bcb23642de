//! The local spool: durable before acknowledged, survives SIGKILL, bounded backlog, one owner.
//!
//! The crash test re-runs this test binary as a child (`spool_writer` with
//! `AUDIT_SPOOL_CHILD_DIR` set) that appends in a loop and prints every acknowledged record,
//! then SIGKILLs it at random moments.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit::spool::read_spool;
use audit::{AuditError, AuditLog, Digest, Event, EventKind, Record, SpoolOptions};
use ed25519_dalek::SigningKey;

const CHILD_ENV: &str = "AUDIT_SPOOL_CHILD_DIR";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn event(i: u64, pad: usize) -> Event {
    Event::new(EventKind::Statement)
        .person(format!("user{}", i % 5))
        .client(format!("127.0.0.1:{}", 40000 + i % 1000))
        .session(i % 7)
        .detail(serde_json::json!({"sql": format!("UPDATE t SET x = {i} WHERE id = {i}"), "pad": "x".repeat(pad)}))
}

/// Checks a spool's records form one chain from seq 1; returns seq → hash.
fn check_chain(records: &[Record]) -> BTreeMap<u64, Digest> {
    let mut prev = Digest::ZERO;
    let mut out = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "seqs are gap-free from 1");
        assert_eq!(r.prev, prev, "seq {} follows seq {}", r.seq, r.seq - 1);
        assert!(r.hash_is_valid(), "seq {} hash", r.seq);
        prev = r.hash;
        out.insert(r.seq, r.hash);
    }
    out
}

/// Normally: appends from many tasks at once, reopens, and finds one chain that resumes.
/// As the crash test's child: appends forever, printing `ack SEQ HASH` after each ack, each
/// append followed by one queued without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_writer() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_loop(Path::new(&dir)).await;
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("spool");
    let log = AuditLog::open(&dir, key(), SpoolOptions::default()).unwrap();
    // The spool holds SQL text: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(format!("{:020}.jsonl", 1))), 0o600);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(log.append(event(t * 1000 + i, 10)).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=400).collect::<Vec<_>>(), "every append got its own seq");
    let st = log.status();
    assert_eq!((st.last_seq, st.shipped_seq, st.pending_records), (400, 0, 400));
    assert!(st.pending_bytes > 400 * 50);
    // Group commit: while one appender writes and fsyncs, the others' records wait for the
    // next write, which takes them all.
    assert!(st.group_writes < 400, "{} writes for 400 appends by 8 tasks", st.group_writes);
    eprintln!("400 appends by 8 tasks in {} group writes", st.group_writes);
    // A record queued without waiting is written without anyone appending after it.
    log.submit_nowait(event(7, 1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.status().last_seq < 401 {
        assert!(Instant::now() < deadline, "a record queued without waiting was never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(read_spool(&dir).unwrap().len(), 401);
    // And one queued just before the log is closed is written as it closes.
    log.submit_nowait(event(8, 1)).unwrap();
    drop(log);
    let log = AuditLog::open(&dir, key(), SpoolOptions::default()).unwrap();
    assert_eq!(log.append(event(9, 1)).await.unwrap().seq, 403);
    check_chain(&read_spool(&dir).unwrap());
}

async fn child_loop(dir: &Path) {
    let log = AuditLog::open(dir, key(), SpoolOptions::default()).expect("child opens the spool");
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (log, out) = (log.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                i += 1;
                let r = log.append(event(t * 1_000_000 + i, (i as usize % 8) * 512)).await.expect("append");
                {
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {} {}", r.seq, r.hash).unwrap();
                    o.flush().unwrap();
                }
                // As the gate does with a statement's outcome: queued, not waited for (never
                // acknowledged, so it may be lost in a crash, but never the chain with it).
                log.submit_nowait(event(t * 1_000_000 + i, 3)).expect("queue");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<u64, Digest> = BTreeMap::new();
    let mut seed = std::process::id() as u64;
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args(["--exact", "spool_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, Digest)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (s, h) = rest.split_once(' ').unwrap();
                    let _ = tx.send((s.parse::<u64>().unwrap(), h.parse::<Digest>().unwrap()));
                }
            }
        });
        // Once it acknowledged its first record (recovery done), let it write 50–450 ms more,
        // then SIGKILL.
        let mut got = Vec::new();
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => got.push(a),
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("round {round}: the child acknowledged nothing within 60 s; its stderr:\n{err}");
            }
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let run_for = Duration::from_millis(50 + (seed >> 33) % 400);
        let start = Instant::now();
        while start.elapsed() < run_for {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("round {round}: the child exited by itself ({status}): {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        got.extend(rx.try_iter());
        for (s, h) in got {
            assert!(
                acked.insert(s, h).is_none_or(|old| old == h),
                "seq {s} acknowledged twice with different hashes"
            );
        }
        // Every record ever acknowledged is on disk, unchanged, in one chain.
        let on_disk = check_chain(&read_spool(dir.path()).unwrap());
        for (s, h) in &acked {
            assert_eq!(on_disk.get(s), Some(h), "round {round}: acknowledged seq {s} lost or changed");
        }
    }
    // The last child's torn tail (if any) is recovered on open, and the chain resumes.
    let log = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap();
    let last = *acked.keys().next_back().unwrap();
    let r = log.append_blocking(event(1, 1)).unwrap();
    assert!(r.seq > last);
    let records = read_spool(dir.path()).unwrap();
    check_chain(&records);
    eprintln!(
        "{} records acknowledged over 6 SIGKILLs; {} spool_recovered records",
        acked.len(),
        records.iter().filter(|r| r.event.kind == EventKind::SpoolRecovered).count()
    );
}

#[test]
fn torn_tail_is_dropped_and_said_damage_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap();
    for i in 0..5 {
        log.append_blocking(event(i, 10)).unwrap();
    }
    drop(log);
    let seg = dir.path().join(format!("{:020}.jsonl", 1));
    let clean = std::fs::read(&seg).unwrap();
    // Half a record after the last acknowledged one: a write cut short by a crash.
    let mut torn = clean.clone();
    torn.extend_from_slice(br#"{"seq":6,"time":"2026-11-23T10:00:00.000000Z","prev":"#);
    std::fs::write(&seg, &torn).unwrap();
    let log = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap();
    assert_eq!(log.status().last_seq, 6, "the recovery itself is recorded as seq 6");
    drop(log);
    let records = read_spool(dir.path()).unwrap();
    check_chain(&records);
    assert_eq!(records[5].event.kind, EventKind::SpoolRecovered);
    assert_eq!(records[5].event.detail["dropped_bytes"], 53);

    // An altered acknowledged record in the middle is not a torn tail: refuse to start.
    let text = String::from_utf8(std::fs::read(&seg).unwrap()).unwrap();
    let altered = text.replacen("UPDATE t SET x = 2 ", "UPDATE t SET x = 9 ", 1);
    assert_ne!(altered, text);
    std::fs::write(&seg, altered).unwrap();
    let e = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap_err();
    assert!(matches!(e, AuditError::Corrupt { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("hash does not match"), "{e}");
}

#[test]
fn one_spool_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap();
    let e = AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap_err();
    assert!(matches!(e, AuditError::InUse { .. }), "{e}");
    drop(log);
    AuditLog::open(dir.path(), key(), SpoolOptions::default()).unwrap();
}

#[test]
fn bad_options_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SpoolOptions { batch_max_records: 0, ..Default::default() };
    assert!(AuditLog::open(dir.path(), key(), bad).unwrap_err().to_string().contains("batch_max_records"));
    let opts = SpoolOptions { max_record_bytes: 4096, ..Default::default() };
    let log = AuditLog::open(dir.path(), key(), opts).unwrap();
    let e = log.append_blocking(event(1, 8000)).unwrap_err();
    assert!(matches!(e, AuditError::RecordTooLarge { limit: 4096, .. }), "{e}");
    // Nothing was recorded, and the chain goes on.
    assert_eq!(log.append_blocking(event(2, 10)).unwrap().seq, 1);
}

#[tokio::test]
async fn with_the_vault_unreachable_appends_stop_at_the_bound_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        max_pending_bytes: 64 * 1024,
        max_record_bytes: 8 * 1024,
        ship_interval: Duration::from_millis(20),
        segment_bytes: 8 * 1024,
        ..Default::default()
    };
    let log = AuditLog::open(dir.path(), key(), opts.clone()).unwrap();
    // A vault nobody listens for: a port held bound but not listening (a port merely closed
    // again could be taken by another test's server, which would answer).
    let refusing = testkit::net::RefusingPort::new().unwrap();
    let port = refusing.port();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let client = vault_api::VaultClient::new(
        &format!("https://127.0.0.1:{port}"),
        cert.cert.pem().as_bytes(),
        Some("t".into()),
    )
    .unwrap();
    let shipper = log.spawn_shipper(client, "gate-a".into());
    let mut ok = 0u64;
    let full = loop {
        match log.append(event(ok, 900)).await {
            Ok(r) => {
                ok += 1;
                assert_eq!(r.seq, ok);
            }
            Err(e) => break e,
        }
        assert!(ok < 1000, "the bound was never reached");
    };
    let AuditError::SpoolFull { pending_bytes, limit, .. } = full else {
        panic!("expected SpoolFull, got {full}")
    };
    assert_eq!(limit, 64 * 1024);
    assert!(pending_bytes <= limit && pending_bytes > limit - 2048, "{pending_bytes}");
    // The shipper has been failing all along, and says why. The appends can
    // outrun its first attempt (they take microseconds, it tries every 20 ms),
    // so wait for it to have tried at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.status().last_ship_error.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = log.status();
    assert_eq!((st.last_seq, st.shipped_seq), (ok, 0));
    assert!(st.last_ship_error.as_deref().is_some_and(|e| e.contains("could not reach the vault")), "{st:?}");
    let e = log.append(event(0, 900)).await.unwrap_err().to_string();
    assert!(e.contains("spool is full") && e.contains("could not reach the vault"), "{e}");
    // Every acknowledged record is still there, across several segments.
    shipper.abort();
    let _ = shipper.await;
    drop(log);
    let records = read_spool(dir.path()).unwrap();
    assert_eq!(records.len() as u64, ok);
    check_chain(&records);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 3, "several segments were written");
    // Still full after a restart: the backlog is counted from disk.
    let log = AuditLog::open(dir.path(), key(), opts).unwrap();
    assert!(matches!(log.append(event(0, 900)).await, Err(AuditError::SpoolFull { .. })));
}

/// Copies a spool's files as they are on disk this instant (what a crash would leave: every
/// acknowledged write is in them), without closing the spool.
fn snapshot(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(from.join("gate"), to.join("gate")).ok();
}

/// Segments are pre-zeroed: a new spool's first one and a reopened spool's current one at
/// open, every later one by the flusher once the current one is half full (the rollover
/// renames it into place), so group writes overwrite blocks the file already has. The zeros after the last record are no torn write: a spool
/// left as a crash leaves it reopens with every record and no `spool_recovered`. A hole of
/// zeros inside the last group write (blocks that never reached the disk before a power
/// loss) is dropped as the torn write it is, even with a valid record after it; a closed
/// spool's segment is cut back to its records.
#[test]
fn pre_zeroed_segments_and_their_zeros_are_no_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions { segment_bytes: 64 * 1024, ..Default::default() };
    let log = AuditLog::open(dir.path(), key(), opts.clone()).unwrap();
    let first = dir.path().join(format!("{:020}.jsonl", 1));
    assert_eq!(
        std::fs::metadata(&first).unwrap().len(),
        opts.segment_bytes,
        "a new spool's first segment is pre-zeroed at open"
    );
    let count_segments = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".jsonl"))
            .count()
    };
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Past half the first segment; then the flusher prepares the spare (waited for here, so the
    // rollover finds it), and on until the rollover put it in place.
    while count_segments() < 2 {
        n += 1;
        log.append_blocking(event(n, 400)).unwrap();
        if log.status().pending_bytes * 2 >= opts.segment_bytes {
            while !dir.path().join("next-segment.tmp").exists() && count_segments() < 2 {
                assert!(Instant::now() < deadline, "no spare segment prepared");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(Instant::now() < deadline, "no rollover after {n} records");
    }
    for _ in 0..3 {
        n += 1;
        log.append_blocking(event(n, 400)).unwrap();
    }
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "{segments:?}");
    let current = segments.last().unwrap();
    let bytes = std::fs::read(current).unwrap();
    assert_eq!(bytes.len() as u64, opts.segment_bytes, "the segment after the first is pre-zeroed");
    assert!(bytes.ends_with(&[0; 1024]), "and its end is still zeros");

    // As a crash leaves it: every record back, no torn write reported.
    let copy = tempfile::tempdir().unwrap();
    snapshot(dir.path(), copy.path());
    let reopened = AuditLog::open(copy.path(), key(), opts.clone()).unwrap();
    assert_eq!(reopened.status().last_seq, n);
    drop(reopened);
    let records = read_spool(copy.path()).unwrap();
    check_chain(&records);
    assert_eq!(records.len() as u64, n);
    assert!(records.iter().all(|r| r.event.kind != EventKind::SpoolRecovered));

    // A hole in the last group write: the second-to-last record's first bytes zeros.
    let hole = tempfile::tempdir().unwrap();
    snapshot(dir.path(), hole.path());
    let seg = hole.path().join(current.file_name().unwrap());
    let mut b = std::fs::read(&seg).unwrap();
    let end = b.iter().rposition(|&c| c == b'\n').unwrap();
    let last_start = b[..end].iter().rposition(|&c| c == b'\n').unwrap() + 1;
    let second_start = b[..last_start - 1].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    b[second_start..second_start + 100].fill(0);
    std::fs::write(&seg, &b).unwrap();
    let reopened = AuditLog::open(hole.path(), key(), opts.clone()).unwrap();
    assert_eq!(reopened.status().last_seq, n - 1, "seq n-1 is the recovery's own record");
    drop(reopened);
    let records = read_spool(hole.path()).unwrap();
    check_chain(&records);
    assert_eq!(records.last().unwrap().event.kind, EventKind::SpoolRecovered);

    // Closed: the segment holds its records and nothing more.
    drop(log);
    let closed = std::fs::read(current).unwrap();
    assert_eq!(closed.last(), Some(&b'\n'));
    assert!(!closed.contains(&0));

    // Reopened: the current segment is filled with zeros up to its size again, records kept.
    let log = AuditLog::open(dir.path(), key(), opts.clone()).unwrap();
    let reopened = std::fs::read(current).unwrap();
    assert_eq!(reopened.len() as u64, opts.segment_bytes, "the current segment is pre-zeroed at open");
    assert_eq!(&reopened[..closed.len()], &closed[..]);
    assert!(reopened[closed.len()..].iter().all(|&b| b == 0));
    log.append_blocking(event(n + 1, 400)).unwrap();
    drop(log);
    let records = read_spool(dir.path()).unwrap();
    check_chain(&records);
    assert_eq!(records.last().unwrap().seq, n + 1);
}
