//! The vault as a real process: SIGKILL in the middle of uploads, on-disk damage found by
//! `holdfast vault check`, and restore with only the escrow key (G5).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use store::{ObjectKind, ObjectName};
use testkit::vault::TempVault;
use vault_api::{Scope, VaultClient};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn admin(v: &TempVault) -> VaultClient {
    VaultClient::new(v.url(), &v.ca_pem(), Some(v.admin_token().to_string())).unwrap()
}

/// Every object file under the store: each must hash to its name (no partial object visible).
fn assert_no_partial_objects(store: &Path) -> usize {
    let mut n = 0;
    for kind in ObjectKind::ALL {
        let dir = store.join(kind.as_str());
        let Ok(fan) = std::fs::read_dir(&dir) else { continue };
        for sub in fan.flatten() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                let name: ObjectName = format!("{kind}/{}", f.file_name().to_string_lossy()).parse().unwrap();
                let bytes = std::fs::read(f.path()).unwrap();
                name.verify(&bytes).unwrap_or_else(|e| panic!("partial or corrupt object visible: {e}"));
                assert!(
                    store
                        .join("retention")
                        .join(kind.as_str())
                        .join(sub.file_name())
                        .join(f.file_name())
                        .exists(),
                    "{name} has no retention file"
                );
                n += 1;
            }
        }
    }
    n
}

/// A valid one-blob pack, as a remote uploader would build it.
fn real_pack(repo: &store::Repository, plain: &[u8]) -> store::pack::FinishedPack {
    let keys = repo.keys();
    let sealed = keys.seal(plain, 0).unwrap();
    let mut p = store::pack::Packer::new(1 << 20);
    p.add(keys.chunk_id(plain), store::pack::BlobType::Data, &sealed, plain.len() as u64);
    p.finish(keys, 0).unwrap()
}

fn run(v: &TempVault, args: &[&str]) -> std::process::Output {
    v.holdfast(args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_uploads_leaves_no_partial_object() {
    let kills: usize = std::env::var("HOLDFAST_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut v = TempVault::start(bin()).unwrap();
    let append_token = admin(&v).create_token(Scope::Append, "uploader").await.unwrap().token;
    let config = v.config_path();
    // Upload real packs (sealed with the repository's keys, opened here with the escrow key) so
    // that `vault check` with keys can verify them fully.
    let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
    let local: Arc<dyn store::ObjectStore> = Arc::new(store::LocalDir::open(v.store_dir()).unwrap());
    let repo = store::Repository::open(local, std::slice::from_ref(escrow.identity())).await.unwrap();
    let mut seed = 0u64;
    let mut acknowledged: Vec<ObjectName> = Vec::new();
    for round in 0..kills {
        let client = VaultClient::new(v.url(), &v.ca_pem(), Some(append_token.clone())).unwrap();
        let mut tasks = Vec::new();
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for w in 0..6u64 {
            let client = client.clone();
            let repo = repo.clone();
            let acked = acked.clone();
            let base = seed + w * 1000;
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..1000u64 {
                    let pack =
                        real_pack(&repo, &noise(base + i, 64 * 1024 + ((base + i) as usize % 4) * 100_000));
                    match client.put_object(&pack.name, pack.bytes).await {
                        Ok(_) => {
                            done.push(pack.name);
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
                done
            }));
        }
        seed += 1_000_000;
        // Uploads are flowing (on a loaded machine that can take a while) …
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "no upload succeeded within 60 s:\n{}", v.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // … then kill at a different moment each round, while more are in flight.
        tokio::time::sleep(Duration::from_millis((round as u64 * 37) % 250)).await;
        v.kill();
        for t in tasks {
            acknowledged.extend(t.await.unwrap());
        }
        assert_no_partial_objects(&v.store_dir());
        v.restart().unwrap();
    }
    // Every upload the vault acknowledged survived the kills.
    let store = v.store_dir();
    for name in &acknowledged {
        let hex = name.id.to_hex();
        assert!(store.join("pack").join(&hex[..2]).join(&hex).exists(), "acknowledged {name} was lost");
    }
    let objects = assert_no_partial_objects(&store);
    assert!(objects > kills, "too few uploads happened to test anything ({objects})");
    let out = run(&v, &["vault", "check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check refused the store after {kills} kills: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the service is healthy after the last restart.
    assert_eq!(admin(&v).health().await.unwrap().status, "ok");
}

fn make_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, rel) in [
        "base/16384/1259",
        "base/16384/2619",
        "global/pg_control",
        "PG_VERSION",
        "pg_wal/000000010000000000000001",
    ]
    .iter()
    .enumerate()
    {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = noise(i as u64 + 7, 40_000 + i * 30_000);
        std::fs::write(&p, &bytes).unwrap();
        files.push((PathBuf::from(rel), bytes));
    }
    files
}

fn ingest(v: &TempVault, dir: &Path, label: &str) -> String {
    let out = run(
        v,
        &[
            "vault",
            "ingest",
            "--config",
            v.config_path().to_str().unwrap(),
            "--label",
            label,
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn check_reports_a_flipped_byte_naming_the_object_and_affected_backups() {
    let v = TempVault::start(bin()).unwrap();
    let data = v.scratch().join("data");
    make_tree(&data);
    let backup = ingest(&v, &data, "nightly");
    let config = v.config_path();
    let clean = run(&v, &["vault", "check", "--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stdout));

    // Flip one byte in the middle of a pack, on disk, behind the vault's back.
    let pack_dir = v.store_dir().join("pack");
    let sub = std::fs::read_dir(&pack_dir).unwrap().flatten().next().expect("ingest wrote a pack").path();
    let file = std::fs::read_dir(&sub).unwrap().flatten().next().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let pack_name = format!("pack/{}", file.file_name().unwrap().to_string_lossy());

    let out = run(&v, &["vault", "check", "--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "check must exit 3 on damage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged: Vec<&str> =
        report["damaged"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(damaged.contains(&pack_name.as_str()), "damaged {damaged:?} should name {pack_name}");
    let affected: Vec<&str> =
        report["affected_backups"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(affected, vec![backup.as_str()]);
}

#[test]
fn g5_restore_with_only_the_escrow_key_after_the_vault_key_is_destroyed() {
    let v = TempVault::start(bin()).unwrap();
    let data = v.scratch().join("data");
    let files = make_tree(&data);
    let backup = ingest(&v, &data, "before the incident");
    let config = v.config_path();
    std::fs::remove_file(v.vault_dir().join("vault.key")).unwrap();

    let target = v.scratch().join("restored-without-key");
    let out = run(
        &v,
        &[
            "vault",
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--backup",
            &backup,
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("vault.key"), "the error should say the vault key is missing: {msg}");

    let target = v.scratch().join("restored");
    let escrow = v.escrow_key_path();
    let out = run(
        &v,
        &[
            "vault",
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--backup",
            &backup,
            "--target",
            target.to_str().unwrap(),
            "--identity",
            escrow.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "restore with the escrow key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (rel, bytes) in files {
        assert_eq!(std::fs::read(target.join(&rel)).unwrap(), bytes, "{} differs", rel.display());
    }
}

#[test]
fn init_refuses_without_escrow_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["vault", "init", "--dir", dir.path().join("v").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("escrow-keygen") && msg.contains("--no-escrow-i-accept-key-loss"), "{msg}");
    assert!(!dir.path().join("v/vault.key").exists());
    // Usage errors exit 2.
    let out = std::process::Command::new(BIN).args(["vault", "init", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Sets this process's soft limit on open files (children inherit it) with `prlimit`.
fn set_soft_nofile(soft: u64) {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        .unwrap();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={soft}:{hard}")])
        .output()
        .expect("prlimit (util-linux) is needed");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

/// Soft and hard "Max open files" of process `pid`.
fn nofile(pid: u64) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// The WAL position the vault last reported as flushed (= durable in its store) to the server.
fn vault_flush_lsn(pg: &testkit::pg::TempPg) -> Option<pgfmt::Lsn> {
    pg.psql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'holdfast_main'")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// A4 without any token: 2,000 idle TCP connections and 200 TLS handshakes that never finish,
/// against a vault started with the common soft limit of 1,024 open files. The vault raises its
/// own limit to the hard limit, keeps at most `unauthenticated_per_address` such connections
/// per address and drops stalled handshakes after `tls_handshake_seconds`: WAL capture keeps
/// streaming through the flood (the flush position the server sees advances) and nothing in
/// the log blames PostgreSQL for a shortage of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_does_not_stop_wal_capture() {
    use std::io::Write as _;
    use tokio::io::AsyncWriteExt;
    let pg = testkit::pg::TempPg::start_with(testkit::pg::TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql("CREATE TABLE t (id serial primary key, note text)").unwrap();
    let mut v = TempVault::start(bin()).unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    let mut conf = std::fs::OpenOptions::new().append(true).open(v.config_path()).unwrap();
    write!(
        conf,
        "\n[limits]\nunauthenticated_per_address = 64\ntls_handshake_seconds = 2\n\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\n",
        pg.socket_dir().display(),
        pg.port(),
        pw.display()
    )
    .unwrap();
    drop(conf);
    v.kill();
    // The vault starts under the common soft limit; it must raise it itself.
    set_soft_nofile(1024);
    v.restart().unwrap();
    set_soft_nofile(16_384);
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(v.scratch().join("ready.json")).unwrap()).unwrap();
    let pid = ready["pid"].as_u64().unwrap();
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the vault did not raise its open-files limit");
    assert!(soft == "unlimited" || soft.parse::<u64>().unwrap() > 2_500, "soft limit {soft}");
    let flushed =
        pg.psql("INSERT INTO t (note) VALUES ('before'); SELECT pg_current_wal_flush_lsn()").unwrap();
    let target: pgfmt::Lsn = flushed.lines().last().unwrap().parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vault_flush_lsn(&pg).is_none_or(|l| l < target) {
        assert!(std::time::Instant::now() < deadline, "capture did not start:\n{}", v.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The flood: idle TCP connections, then handshakes that stop after the record header.
    let addr: std::net::SocketAddr = v.url().trim_start_matches("https://").parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            held.push(s);
        }
    }
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            // A handshake record announcing 16 KiB, of which 3 bytes ever arrive.
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f]).await;
            held.push(s);
        }
    }
    assert!(held.len() >= 2000, "the test itself could not open its connections: {}", held.len());
    // During the flood, commits keep reaching the vault's store.
    let flood_start = std::time::Instant::now();
    for round in 0..5 {
        let out = pg
            .psql(&format!("INSERT INTO t (note) SELECT 'flood {round}' FROM generate_series(1, 500); SELECT pg_current_wal_flush_lsn()"))
            .unwrap();
        let target: pgfmt::Lsn = out.lines().last().unwrap().parse().unwrap();
        let t0 = std::time::Instant::now();
        // A stall is what fails here: capture normally takes milliseconds, but the flood and a
        // heavy test beside this one on 2 cores can hold a round up for seconds.
        let stall = testkit::wait::budget(Duration::from_secs(30));
        while vault_flush_lsn(&pg).is_none_or(|l| l < target) {
            assert!(
                t0.elapsed() < stall,
                "WAL capture stalled during the flood (round {round}, held {} connections):\n{}",
                held.len(),
                v.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A fresh wave each round, so the flood lasts the whole test.
        for _ in 0..200 {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                held.push(s);
            }
        }
    }
    let flood_secs = flood_start.elapsed().as_secs_f64();
    drop(held);
    // The API answers a token holder again once the flood's connections are gone.
    let admin = admin(&v);
    let t0 = std::time::Instant::now();
    let status = loop {
        match admin.status().await {
            Ok(s) => break s,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(20), "the API stayed unreachable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = &status.clusters[0];
    assert!(c.connected, "{c:?}");
    let kinds: Vec<&str> = c.incidents.iter().map(|i| i.kind.as_str()).collect();
    assert!(kinds.is_empty(), "incidents during the flood: {kinds:?}");
    let log = v.log().to_lowercase();
    assert!(!log.contains("too many open files"), "the vault ran out of descriptors:\n{log}");
    eprintln!("flood of 3,200 unauthenticated connections over {flood_secs:.1} s: capture kept up");
}

/// The attack of issue 15: with the append token from the jump host, write an `incident`
/// whose restore target lies elsewhere, so that after a restart `restore --before-incident N`
/// follows it. Refused (nothing stored); after a restart the vault lists only the real
/// incident, and `restore --before-incident 1` brings back every row the real DROP destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_incident_is_refused_and_restore_before_incident_follows_the_real_one() {
    use testkit::pg::{TempPg, TempPgOptions, bin as pg_bin, command_as_postgres};
    let pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let mut v = TempVault::start(bin()).unwrap();
    v.protect(&pg, "catalog_refresh_seconds = 2\n").unwrap();
    let admin_file = v.scratch().join("admin.token");
    let out = v.cli(&admin_file, &["backup", "--cluster", "main", "--json"]).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    let admin_c = admin(&v);
    // The catalog snapshot names the table before it is dropped: the tables it knows, once it
    // has been read, then more of them once it has been read again after the CREATE.
    let known_tables = || async { admin_c.status().await.ok()?.clusters.first()?.catalog_tables };
    let (within, every) = (Duration::from_secs(30), Duration::from_millis(100));
    let before =
        testkit::wait::until_async(within, every, "the first catalog snapshot", known_tables).await.unwrap();
    pg.psql(
        "CREATE TABLE gift_cards AS SELECT g AS id, g * 100 AS balance_cents FROM generate_series(1, 3000) g",
    )
    .unwrap();
    testkit::wait::until_async(within, every, "a catalog snapshot naming gift_cards", || async {
        known_tables().await.filter(|n| *n > before)
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    pg.psql("DROP TABLE gift_cards").unwrap();
    let real = loop {
        let list = admin_c.incidents("main").await.unwrap();
        if let Some(i) = list.iter().find(|i| i.kind == "relations_dropped") {
            break i.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the real DROP raised no incident:\n{}", v.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The forgery: an incident "before" it whose target is the very start of the WAL.
    let append =
        admin_c.with_token(Some(admin_c.create_token(Scope::Append, "jump host").await.unwrap().token));
    let mut forged = serde_json::to_value(&real).unwrap();
    forged["message"] = "forged".into();
    forged["restore_target"] = serde_json::json!({"before_lsn": {"lsn": "0/1000000"}});
    forged["detected_at"] = serde_json::json!(0);
    let reader = admin_c.with_token(Some(admin_c.create_token(Scope::Read, "auditor").await.unwrap().token));
    for kind in ["incident", "drill", "backup.complete"] {
        let before = reader.list_records(Some(kind)).await.unwrap().records.len();
        let err = append.append_record(kind, forged.clone()).await.unwrap_err();
        assert_eq!(err.status(), Some(403), "{kind}: {err}");
        assert_eq!(reader.list_records(Some(kind)).await.unwrap().records.len(), before, "{kind} was stored");
    }
    v.kill();
    v.restart().unwrap();
    let admin = admin(&v);
    let list = admin.incidents("main").await.unwrap();
    let kinds: Vec<(&str, &str)> = list.iter().map(|i| (i.kind.as_str(), i.message.as_str())).collect();
    assert_eq!(list.len(), 1, "{kinds:?}");
    assert_eq!(list[0], real);

    let read = v.scratch().join("read.token");
    std::fs::write(&read, format!("{}\n", admin.create_token(Scope::Read, "restore").await.unwrap().token))
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("undo");
    let out = std::process::Command::new(bin())
        .arg("restore")
        .args(["--cluster", "main", "--before-incident", "1", "--start", "--promote", "--json"])
        .arg("--target-dir")
        .arg(&dir)
        .args(v.remote_args(&read))
        .env("PGPASSWORD", pg.superuser_password())
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut q = command_as_postgres(Path::new("env"));
    q.arg(format!("PGPASSWORD={}", pg.superuser_password()))
        .arg(pg_bin("psql").unwrap())
        .arg("-h")
        .arg(report["socket_dir"].as_str().unwrap())
        .args([
            "-p",
            &report["port"].as_u64().unwrap().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
        ])
        .args(["-c", "SELECT count(*) || ':' || sum(balance_cents) FROM gift_cards"]);
    let got = q.output().unwrap();
    let mut stop = command_as_postgres(&pg_bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "3000:450150000",
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
}

/// A keyholder asked to sign sees what would be deleted — the backup by id and label, object
/// kinds, bytes — and is asked; without a terminal and without `--yes` nothing is signed.
#[test]
fn vault_sign_lists_what_would_be_deleted_and_asks_first() {
    let scratch = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let path = scratch.path().join(format!("{name}.key"));
        let out = std::process::Command::new(bin())
            .args(["keygen", "--out", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        keys.push((name.to_string(), String::from_utf8(out.stdout).unwrap().trim().to_string(), path));
    }
    let opts = testkit::vault::TempVaultOptions {
        keyholders: keys.iter().map(|(n, k, _)| (n.clone(), k.clone())).collect(),
        threshold: Some(2),
        ..Default::default()
    };
    let v = TempVault::start_with(bin(), opts).unwrap();
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("orders.csv"), noise(7, 300_000)).unwrap();
    let config = v.config_path();
    let out = run(
        &v,
        &[
            "vault",
            "ingest",
            "--config",
            config.to_str().unwrap(),
            "--label",
            "nightly",
            data.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = v.scratch().join("admin.token");
    let cli = |args: &[&str], stdin: std::process::Stdio| {
        let mut c = std::process::Command::new(bin());
        c.args(args).args(v.remote_args(&token)).stdin(stdin);
        c.output().unwrap()
    };
    let out = cli(
        &["vault", "propose", "--backup", &backup, "--reason", "disk space"],
        std::process::Stdio::null(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = view["id"].as_str().unwrap().to_string();
    let key = keys[0].2.to_str().unwrap();
    let out = cli(&["vault", "sign", "--proposal", &id, "--key", key], std::process::Stdio::null());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "signed without being asked: {err}");
    for shown in
        [backup.as_str(), "\"nightly\"", "removed (no longer restorable)", "pack", "bytes", "disk space"]
    {
        assert!(err.contains(shown), "`vault sign` did not show {shown:?}:\n{err}");
    }
    assert!(err.contains("--yes"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(admin(&v).proposal(&id)).unwrap().signed_by.is_empty(), "a signature was recorded");
    let out = cli(&["vault", "sign", "--proposal", &id, "--key", key, "--yes"], std::process::Stdio::null());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rt.block_on(admin(&v).proposal(&id)).unwrap().signed_by.len(), 1);
}

/// A backup a quorum deleted is gone from status, inventory and the restorable window at once
/// and after a restart (a restore inside the old window cannot pick it and fail with a 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_deleted_backup_leaves_inventory_status_and_window() {
    use std::io::Write as _;
    let scratch = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let path = scratch.path().join(format!("{name}.key"));
        let out = std::process::Command::new(bin())
            .args(["keygen", "--out", path.to_str().unwrap()])
            .output()
            .unwrap();
        keys.push((name.to_string(), String::from_utf8(out.stdout).unwrap().trim().to_string(), path));
    }
    let opts = testkit::vault::TempVaultOptions {
        keyholders: keys.iter().map(|(n, k, _)| (n.clone(), k.clone())).collect(),
        threshold: Some(2),
        ..Default::default()
    };
    let pg = testkit::pg::TempPg::start_with(testkit::pg::TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let mut v = TempVault::start_with(bin(), opts).unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    // A test vault: no waiting period (refused without the override, which alerts).
    let text = std::fs::read_to_string(v.config_path()).unwrap();
    let text = text.replace("wait_hours = 72", "wait_hours = 0\ntesting_allow_short_wait = true");
    let mut conf = std::fs::File::create(v.config_path()).unwrap();
    write!(
        conf,
        "{text}\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\nfirst_backup = false\n",
        pg.socket_dir().display(),
        pg.port(),
        pw.display()
    )
    .unwrap();
    drop(conf);
    v.kill();
    v.restart().unwrap();
    assert!(v.log().contains("quorum.short_wait"), "the testing override was not alerted:\n{}", v.log());
    let client = admin(&v);
    let first = client.backup_cluster("main").await.unwrap();
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    let second = client.backup_cluster("main").await.unwrap();
    let ids = |inv: &vault_api::status::Inventory| -> Vec<String> {
        inv.backups.iter().map(|b| b.backup.id.clone()).collect()
    };
    let inv = client.inventory("main").await.unwrap();
    assert_eq!(ids(&inv), vec![first.id.clone(), second.id.clone()]);
    assert_eq!(inv.window.as_ref().unwrap().earliest_lsn, first.stop_lsn);

    let p = client
        .propose(&vault_api::ProposeRequest {
            objects: vec![],
            backup: Some(first.id.clone()),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let token = v.scratch().join("admin.token");
    for (_, _, key) in &keys {
        let out = std::process::Command::new(bin())
            .args(["vault", "sign", "--proposal", &p.id, "--key", key.to_str().unwrap(), "--yes"])
            .args(v.remote_args(&token))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    client.execute(&p.id).await.unwrap();
    let check = |inv: &vault_api::status::Inventory, when: &str| {
        assert_eq!(ids(inv), vec![second.id.clone()], "{when}");
        let w = inv.window.as_ref().unwrap_or_else(|| panic!("{when}: no window"));
        assert_eq!(w.earliest_lsn, second.stop_lsn, "{when}: the window still starts at the deleted backup");
    };
    check(&client.inventory("main").await.unwrap(), "right after the deletion");
    let st = client.status().await.unwrap();
    assert_eq!(st.clusters[0].last_backup.as_ref().map(|b| b.id.clone()), Some(second.id.clone()));
    v.kill();
    v.restart().unwrap();
    check(&admin(&v).inventory("main").await.unwrap(), "after a restart");
}
