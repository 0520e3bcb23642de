//! Destruction found in the live WAL stream: a mass DELETE and a DROP TABLE on a real
//! PostgreSQL become incidents with the right kind, transaction and LSN, posted to a webhook
//! within 5 s, and `restore --before-incident N` brings back every deleted row while keeping
//! what was committed before.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::pg::{TempPg, bin, command_as_postgres};
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const CHECKSUM: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || '=' || balance, ',' ORDER BY id)) FROM accounts";

/// (arrival, body) of every POST a receiver got.
type Received = Arc<Mutex<Vec<(Instant, serde_json::Value)>>>;

/// A tiny HTTP receiver: records every POST.
fn webhook_receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                g.lock().unwrap().push((Instant::now(), v));
            }
            let _ =
                r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn cli(v: &TempVault, token: &Path, args: &[&str]) -> std::process::Output {
    v.cli(token, args).unwrap()
}

#[test]
fn a_mass_delete_and_a_dropped_table_are_incidents_alerted_in_seconds_and_undone() {
    let pg = TempPg::start().unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 3000) g").unwrap();
    pg.psql("CREATE TABLE audit_log AS SELECT g AS id FROM generate_series(1, 100) g").unwrap();
    let (hook, received) = webhook_receiver();
    let mut v = TempVault::start(holdfast()).unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    let text = std::fs::read_to_string(v.config_path()).unwrap();
    std::fs::write(
        v.config_path(),
        format!(
            "webhook = [{{ name = \"oncall\", url = \"{hook}\" }}]\n{text}\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\nmass_delete_rows = 500\n",
            pg.socket_dir().display(),
            pg.port(),
            pw.display()
        ),
    )
    .unwrap();
    v.kill();
    v.restart().unwrap();
    let admin: PathBuf = v.scratch().join("admin.token");
    let out = cli(&v, &admin, &["backup", "--cluster", "main", "--json"]);
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());

    // Ordinary work, then the attack: a mass DELETE (its commit returns at t0), a small delete
    // (not an incident), a dropped table.
    pg.psql("UPDATE accounts SET balance = 7 WHERE id <= 10; INSERT INTO accounts VALUES (5000, 1)").unwrap();
    let before = pg.psql(CHECKSUM).unwrap();
    let xid_of = |sql: &str| -> u32 {
        pg.psql(&format!("{sql}; SELECT txid_current()"))
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mass = xid_of("DELETE FROM accounts WHERE id <= 1500");
    let t0 = Instant::now();
    let small = xid_of("DELETE FROM accounts WHERE id = 5000");
    let dropped = xid_of("DROP TABLE audit_log");

    // Both incidents, numbered, with transaction, LSN and restore target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let incidents = loop {
        let out = cli(&v, &admin, &["incidents", "--cluster", "main", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if list.iter().filter(|i| i["xid"].is_u64()).count() >= 2 {
            break list;
        }
        assert!(Instant::now() < deadline, "incidents did not appear: {list:?}\n{}", v.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_xid = |x: u32| incidents.iter().find(|i| i["xid"] == x).cloned();
    let m = by_xid(mass).unwrap_or_else(|| panic!("no incident for the mass delete {mass}: {incidents:?}"));
    assert_eq!(m["kind"], "mass_delete", "{m}");
    assert_eq!(m["restore_target"], serde_json::json!({"kind": "before_xid", "xid": mass}));
    assert_eq!(m["objects"][0]["deleted"], 1500, "{m}");
    assert_eq!(
        (m["objects"][0]["database"].as_str(), m["objects"][0]["schema"].as_str(), m["objects"][0]["table"].as_str()),
        (Some("postgres"), Some("public"), Some("accounts")),
        "{m}"
    );
    let d = by_xid(dropped).unwrap_or_else(|| panic!("no incident for DROP TABLE {dropped}: {incidents:?}"));
    assert_eq!(d["kind"], "relations_dropped", "{d}");
    assert!(by_xid(small).is_none(), "a one-row delete became an incident");
    // The LSN is the commit record of that transaction, as pg_waldump sees it.
    let lsn: pgfmt::Lsn = m["lsn"].as_str().unwrap().parse().unwrap();
    let mut cmd = command_as_postgres(&bin("pg_waldump").unwrap());
    cmd.arg("-p").arg(pg.data_dir().join("pg_wal")).args(["-s", &lsn.to_string(), "-n", "1"]);
    let dump = String::from_utf8_lossy(&cmd.output().unwrap().stdout).to_string();
    assert!(
        dump.contains("rmgr: Transaction")
            && dump.contains(&format!("tx: {mass:>10}"))
            && dump.contains("COMMIT"),
        "{dump}"
    );

    // The webhook got the mass delete within 5 s of its commit returning.
    let deadline = Instant::now() + Duration::from_secs(10);
    let arrived = loop {
        let got = received.lock().unwrap().clone();
        if let Some((at, _)) = got.iter().find(|(_, b)| b["alert"]["incident"]["xid"] == mass) {
            break *at;
        }
        assert!(Instant::now() < deadline, "no webhook for the mass delete: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let latency = arrived.duration_since(t0);
    eprintln!("mass delete committed → webhook: {latency:?}");
    assert!(latency < Duration::from_secs(5), "alert after {latency:?}");

    // Undo: restore to just before incident N; every deleted row back, the earlier update and
    // insert kept.
    let n = incidents.iter().position(|i| i["xid"] == mass).unwrap() + 1;
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("undo");
    pg.psql("SELECT pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let read = v.scratch().join("read.token");
    let out = cli(
        &v,
        &admin,
        &[
            "vault",
            "token",
            "create",
            "--scope",
            "read",
            "--label",
            "restore",
            "--out",
            read.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = std::process::Command::new(holdfast());
    cmd.arg("restore")
        .args(["--cluster", "main", "--before-incident", &n.to_string(), "--start", "--json"])
        .arg("--target-dir")
        .arg(&dir)
        .args(v.remote_args(&read))
        .env("PGPASSWORD", pg.superuser_password());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "restore --before-incident {n}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut q = command_as_postgres(Path::new("env"));
    q.arg(format!("PGPASSWORD={}", pg.superuser_password()))
        .arg(bin("psql").unwrap())
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
            "-c",
            CHECKSUM,
        ]);
    let restored = String::from_utf8_lossy(&q.output().unwrap().stdout).trim().to_string();
    assert_eq!(restored, before, "the state just before the mass delete");
    let mut stop = command_as_postgres(&bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
}
