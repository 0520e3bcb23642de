//! The gate's audit log end to end against a real vault process: records shipped as signed
//! batches with an append token; `holdfast audit verify` proves the chain and names the first
//! bad record after the store is tampered with behind the vault's back (altered, removed,
//! reordered) and after forged batches are appended with a stolen append token; `audit search`
//! answers who did what from where; with the vault down the spool fills to its bound, refuses
//! more, and ships everything in order once the vault is back.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use audit::{AuditError, AuditLog, Batch, Event, EventKind, SpoolOptions};
use store::{ObjectName, Timestamp};
use testkit::vault::TempVault;
use vault_api::{RecordEntry, Scope, VaultClient};

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

struct Setup {
    v: TempVault,
    read_token: PathBuf,
    append: VaultClient,
    read: VaultClient,
    key: ed25519_dalek::SigningKey,
    public: String,
}

impl Setup {
    async fn new() -> Setup {
        Setup::listening(None).await
    }

    /// With the vault on `listen` (`None`: a port the kernel picks).
    async fn listening(listen: Option<&str>) -> Setup {
        let mut v = TempVault::start(holdfast()).unwrap();
        if let Some(addr) = listen {
            v.restart_with(&["--listen", addr]).unwrap();
        }
        let admin = VaultClient::new(v.url(), &v.ca_pem(), Some(v.admin_token().to_string())).unwrap();
        let append_token = admin.create_token(Scope::Append, "gate-1 audit").await.unwrap().token;
        let read_token = admin.create_token(Scope::Read, "auditor").await.unwrap().token;
        let read_token_file = v.scratch().join("read.token");
        std::fs::write(&read_token_file, format!("{read_token}\n")).unwrap();
        // The gate's key, made by the CLI as an operator would.
        let key_file = v.scratch().join("gate-audit.key");
        let out = v.holdfast(&["audit", "keygen", "--out", key_file.to_str().unwrap()]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let key = audit::keyfile::load(&key_file).unwrap();
        assert_eq!(audit::key_hex(&key.verifying_key()), public);
        Setup {
            append: admin.with_token(Some(append_token)),
            read: admin.with_token(Some(read_token)),
            read_token: read_token_file,
            v,
            key,
            public,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.v.cli(&self.read_token, args).unwrap()
    }

    async fn batches(&self) -> Vec<RecordEntry> {
        self.read.list_records(Some(audit::BATCH_KIND)).await.unwrap().records
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stmt(person: &str, client: &str, session: u64, sql: &str) -> Event {
    Event::new(EventKind::Statement)
        .person(person)
        .client(client)
        .session(session)
        .detail(serde_json::json!({"sql": sql}))
}

/// The insider's evening, as the gate would record it: 20 records.
fn evening() -> Vec<Event> {
    let alice = "10.0.0.21:51000";
    let mallory = "10.8.0.66:40022";
    let mut v = vec![
        Event::new(EventKind::GateStart).detail(serde_json::json!({"version": "test"})),
        Event::new(EventKind::Connect).client(alice).session(1).detail(serde_json::json!({"tls": true})),
        Event::new(EventKind::Auth)
            .person("alice")
            .client(alice)
            .session(1)
            .detail(serde_json::json!({"ok": true})),
        stmt("alice", alice, 1, "SELECT count(*) FROM orders"),
        Event::new(EventKind::StatementDone)
            .person("alice")
            .client(alice)
            .session(1)
            .detail(serde_json::json!({"rows": 1})),
        Event::new(EventKind::Connect).client(mallory).session(2).detail(serde_json::json!({"tls": true})),
        Event::new(EventKind::Auth)
            .person("mallory")
            .client(mallory)
            .session(2)
            .detail(serde_json::json!({"ok": true})),
        stmt("mallory", mallory, 2, "DROP DATABASE shop"),
        Event::new(EventKind::Verdict)
            .person("mallory")
            .client(mallory)
            .session(2)
            .detail(serde_json::json!({"verdict": "destructive"})),
        Event::new(EventKind::ApprovalRequested)
            .person("mallory")
            .client(mallory)
            .session(2)
            .detail(serde_json::json!({"approval": "ap-1"})),
        stmt("mallory", mallory, 2, "DELETE FROM stored_value_cards"),
        Event::new(EventKind::Verdict)
            .person("mallory")
            .client(mallory)
            .session(2)
            .detail(serde_json::json!({"verdict": "destructive"})),
        Event::new(EventKind::Rejected)
            .person("alice")
            .session(2)
            .detail(serde_json::json!({"approval": "ap-1", "approver": "alice"})),
    ];
    while v.len() < 20 {
        let i = v.len();
        v.push(stmt("alice", alice, 1, &format!("SELECT * FROM orders WHERE id = {i}")));
    }
    v
}

/// Ships the evening through a real spool and shipper; returns the spool directory.
async fn ship_evening(s: &Setup) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        SpoolOptions { batch_max_records: 5, ship_interval: Duration::from_millis(30), ..Default::default() };
    let log = AuditLog::open(dir.path(), s.key.clone(), opts).unwrap();
    let shipper = log.spawn_shipper(s.append.clone(), "gate-1".into());
    let mut last = 0;
    for e in evening() {
        // Recorded before its effect: the gate awaits this before forwarding anything.
        last = log.append(e).await.unwrap().seq;
        // Let the shipper cut batches of various sizes.
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    assert_eq!(last, 20);
    assert!(log.wait_shipped(20, Duration::from_secs(30)).await, "not shipped: {:?}", log.status());
    let st = log.status();
    assert_eq!((st.pending_records, st.pending_bytes, st.shipped_seq), (0, 0, 20), "{st:?}");
    assert!(st.last_ship_error.is_none());
    shipper.abort();
    dir
}

/// The store behind the vault's back, opened with the escrow key (an insider on the vault host
/// with that key — stronger than A3 — or someone who can write the object directory).
struct Store {
    local: store::LocalDir,
    repo: store::Repository,
}

impl Store {
    async fn open(v: &TempVault) -> Store {
        let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
        let local = store::LocalDir::open(v.store_dir()).unwrap();
        let dynstore: Arc<dyn store::ObjectStore> = Arc::new(local.clone());
        let repo = store::Repository::open(dynstore, std::slice::from_ref(escrow.identity())).await.unwrap();
        Store { local, repo }
    }

    /// Replaces a batch by `body`, keeping its place in the vault's order (same `written_at`).
    /// Returns what to undo: (original name, original bytes, forged name).
    async fn replace(
        &self,
        orig: &RecordEntry,
        body: serde_json::Value,
    ) -> (ObjectName, Vec<u8>, ObjectName) {
        let forged = self
            .repo
            .append_record(audit::BATCH_KIND, body, orig.written_at, Timestamp::FOREVER)
            .await
            .unwrap();
        let bytes = self.remove(&orig.name);
        (orig.name, bytes, forged)
    }

    fn remove(&self, name: &ObjectName) -> Vec<u8> {
        let path = self.local.object_path(name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }

    fn undo(&self, (orig, bytes, forged): (ObjectName, Vec<u8>, ObjectName)) {
        std::fs::write(self.local.object_path(&orig), bytes).unwrap();
        std::fs::remove_file(self.local.object_path(&forged)).unwrap();
    }
}

fn batch_with(batches: &[RecordEntry], seq: u64) -> RecordEntry {
    batches
        .iter()
        .find(|b| {
            let (a, z) = (b.body["first_seq"].as_u64().unwrap(), b.body["last_seq"].as_u64().unwrap());
            a <= seq && seq <= z
        })
        .cloned()
        .expect("a batch holding that seq")
}

fn assert_damaged(out: &Output, needles: &[&str]) {
    eprintln!("{}", text(out));
    assert_eq!(out.status.code(), Some(3), "{}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first =
        stdout.lines().find(|l| l.contains("first bad record")).unwrap_or_else(|| panic!("{}", text(out)));
    for n in needles {
        assert!(first.contains(n), "{n:?} not in the first bad record line: {first}\n{}", text(out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_bad_record_and_search_finds_the_insider() {
    let s = Setup::new().await;
    let _spool = ship_evening(&s).await;
    let batches = s.batches().await;
    assert!(batches.len() >= 4, "{} batches", batches.len());

    // Intact, against the gate's real key.
    let out = s.cli(&["audit", "verify", "--trust-key", &s.public]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("gate gate-1: intact — 20 records (seq 1–20"), "{}", text(&out));
    assert!(stdout.contains("audit log intact"));
    // Without a key it passes too, but says loudly what that does not prove.
    let out = s.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only shows the chain is self-consistent"),
        "{}",
        text(&out)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&s.cli(&["audit", "verify", "--json", "--trust-key", &s.public]).stdout)
            .unwrap();
    assert_eq!(json["intact"], true);
    assert_eq!(json["gates"][0]["last_seq"], 20);

    // Who did what from where.
    let out = s.cli(&[
        "audit",
        "search",
        "--person",
        "mallory",
        "--kind",
        "statement",
        "--since",
        "1h",
        "--trust-key",
        &s.public,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "header + 2 statements:\n{table}");
    assert!(lines[0].starts_with("SEQ") && lines[0].contains("PERSON") && lines[0].contains("CLIENT"));
    assert!(
        lines[1].contains("mallory")
            && lines[1].contains("10.8.0.66:40022")
            && lines[1].contains("DROP DATABASE shop"),
        "{table}"
    );
    assert!(lines[2].contains("DELETE FROM stored_value_cards"), "{table}");
    assert!(!table.contains("alice"));
    let hits: serde_json::Value = serde_json::from_slice(
        &s.cli(&["audit", "search", "--json", "--text", "ap-1", "--trust-key", &s.public]).stdout,
    )
    .unwrap();
    let kinds: Vec<&str> = hits.as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["approval_requested", "rejected"]);
    assert_eq!(hits[1]["detail"]["approver"], "alice");
    let out = s.cli(&["audit", "search", "--since", "yesterday-ish"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a time"), "{}", text(&out));
    let out = s.cli(&["audit", "verify", "--gate", "gate-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no audit batches of gate \"gate-9\""),
        "{}",
        text(&out)
    );

    let st = Store::open(&s.v).await;

    // 1. Altered: mallory's DROP DATABASE (seq 8) rewritten to something harmless.
    let orig = batch_with(&batches, 8);
    let mut body = orig.body.clone();
    let i = 8 - body["first_seq"].as_u64().unwrap() as usize;
    body["records"][i]["event"]["detail"]["sql"] = "SELECT 1".into();
    let undo = st.replace(&orig, body).await;
    assert_damaged(
        &s.cli(&["audit", "verify", "--trust-key", &s.public]),
        &["gate gate-1, record seq 8", "altered"],
    );
    // Search warns and leaves the damaged batch out rather than showing the forgery.
    let out = s.cli(&["audit", "search", "--person", "mallory", "--trust-key", &s.public]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed verification"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SELECT 1"));
    st.undo(undo);
    assert_eq!(s.cli(&["audit", "verify", "--trust-key", &s.public]).status.code(), Some(0));

    // 2. Removed: the batch holding seq 11 deleted from the store.
    let orig = batch_with(&batches, 11);
    let first = orig.body["first_seq"].as_u64().unwrap();
    let bytes = st.remove(&orig.name);
    assert_damaged(
        &s.cli(&["audit", "verify", "--trust-key", &s.public]),
        &[&format!("record seq {first}"), "missing from the vault"],
    );
    std::fs::write(st.local.object_path(&orig.name), bytes).unwrap();

    // 3. Reordered: the first two records of a later batch swapped (the batch and its
    //    signature otherwise untouched).
    let orig = batches
        .iter()
        .filter(|b| {
            b.body["records"].as_array().unwrap().len() >= 2 && b.body["first_seq"].as_u64().unwrap() > 10
        })
        .min_by_key(|b| b.body["first_seq"].as_u64().unwrap())
        .cloned()
        .expect("a batch of two or more records after seq 10");
    let first = orig.body["first_seq"].as_u64().unwrap();
    let mut body = orig.body.clone();
    body["records"].as_array_mut().unwrap().swap(0, 1);
    let undo = st.replace(&orig, body).await;
    assert_damaged(
        &s.cli(&["audit", "verify", "--trust-key", &s.public]),
        &[&format!("record seq {first}"), &format!("holds seq {}", first + 1)],
    );
    st.undo(undo);

    // 4. Reordered in the vault: a batch re-stored after later ones (it "arrives" late).
    let orig = batch_with(&batches, 6);
    let later = Timestamp(orig.written_at.as_secs() + 3600);
    let moved =
        st.repo.append_record(audit::BATCH_KIND, orig.body.clone(), later, Timestamp::FOREVER).await.unwrap();
    let bytes = st.remove(&orig.name);
    assert_damaged(
        &s.cli(&["audit", "verify", "--trust-key", &s.public]),
        &[&format!("record seq {}", orig.body["first_seq"]), "reached the vault after records up to seq"],
    );
    st.undo((orig.name, bytes, moved));
    assert_eq!(s.cli(&["audit", "verify", "--trust-key", &s.public]).status.code(), Some(0));

    // 5. The append token stolen (A4): a batch claiming gate-1's seqs 21–22, with the thief's key.
    let thief = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let last = batches.iter().max_by_key(|b| b.body["last_seq"].as_u64()).unwrap();
    let last_rec: audit::Record =
        serde_json::from_value(last.body["records"].as_array().unwrap().last().unwrap().clone()).unwrap();
    let r21 = audit::Record::new(
        21,
        audit::AuditTime::now(),
        last_rec.hash,
        stmt("alice", "10.0.0.21:51000", 1, "DROP TABLE orders"),
    );
    let r22 = audit::Record::new(
        22,
        audit::AuditTime::now(),
        r21.hash,
        stmt("alice", "10.0.0.21:51000", 1, "COMMIT"),
    );
    let forged = Batch::sign("gate-1", vec![r21, r22], &thief).unwrap();
    s.append.append_record(audit::BATCH_KIND, serde_json::to_value(&forged).unwrap()).await.unwrap();
    assert_damaged(
        &s.cli(&["audit", "verify", "--trust-key", &s.public]),
        &["record seq 21", "not trusted", &audit::key_hex(&thief.verifying_key())],
    );
    // Without --trust-key a second key inside one gate's chain is still caught.
    assert_damaged(&s.cli(&["audit", "verify"]), &["record seq 21", "not trusted"]);

    // 6. The gate host taken (its key and append token): a re-signed batch claiming seqs 7–9
    //    with the DROP DATABASE gone. Both versions are reported, the original is kept.
    let mut recs: Vec<audit::Record> = (7..=9)
        .map(|seq| {
            let b = batches.iter().find(|b| {
                b.body["first_seq"].as_u64().unwrap() <= seq && seq <= b.body["last_seq"].as_u64().unwrap()
            });
            let b = b.unwrap();
            let i = (seq - b.body["first_seq"].as_u64().unwrap()) as usize;
            serde_json::from_value(b.body["records"][i].clone()).unwrap()
        })
        .collect();
    recs[1].event.detail["sql"] = "SELECT now()".into();
    for i in 1..recs.len() {
        let (prev, r) = (recs[i - 1].hash, recs[i].clone());
        recs[i] = audit::Record::new(r.seq, r.time, prev, r.event);
    }
    let forged = Batch::sign("gate-1", recs, &s.key).unwrap();
    s.append.append_record(audit::BATCH_KIND, serde_json::to_value(&forged).unwrap()).await.unwrap();
    let out = s.cli(&["audit", "verify", "--trust-key", &s.public]);
    assert_damaged(&out, &["record seq 8", "two different records claim this seq"]);
    let out = s.cli(&["audit", "search", "--text", "drop database", "--trust-key", &s.public]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("DROP DATABASE shop"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_the_spool_fills_to_its_bound_then_everything_ships_in_order() {
    // The vault comes back on the same address below: a port outside the ephemeral range, which
    // no outgoing connection (another test's) can take while the vault is down.
    let addr = format!("127.0.0.1:{}", testkit::net::port_to_reuse().unwrap());
    let mut s = Setup::listening(Some(&addr)).await;
    s.v.kill();
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        max_pending_bytes: 96 * 1024,
        max_record_bytes: 8 * 1024,
        batch_max_records: 50,
        ship_interval: Duration::from_millis(50),
        segment_bytes: 16 * 1024,
        ..Default::default()
    };
    let log = AuditLog::open(dir.path(), s.key.clone(), opts).unwrap();
    let _shipper = log.spawn_shipper(s.append.clone(), "gate-1".into());
    let mut acked = 0u64;
    let full = loop {
        let e = stmt(
            "bob",
            "10.0.0.9:5000",
            3,
            &format!("UPDATE accounts SET n = {acked} WHERE id = {acked} -- {}", "x".repeat(700)),
        );
        match log.append(e).await {
            Ok(r) => {
                acked += 1;
                assert_eq!(r.seq, acked);
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(full, AuditError::SpoolFull { limit: 98_304, .. }), "{full}");
    assert!(acked > 80, "{acked} records before the bound");
    // The shipper has been failing meanwhile (its first attempt may come after the spool filled).
    let deadline = std::time::Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    let st = loop {
        let st = log.status();
        if st.last_ship_error.is_some() || std::time::Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st.shipped_seq, 0);
    assert!(st.last_ship_error.as_deref().is_some_and(|e| e.contains("could not reach the vault")), "{st:?}");

    // The vault comes back on the same address: everything ships, in order, nothing lost.
    s.v.restart_with(&["--listen", &addr]).unwrap();
    assert!(log.wait_shipped(acked, Duration::from_secs(60)).await, "not shipped: {:?}", log.status());
    let st = log.status();
    assert_eq!((st.pending_records, st.pending_bytes), (0, 0), "{st:?}");
    assert!(st.last_ship_error.is_none());
    // Appends are accepted again, and shipped.
    let r = log.append(stmt("bob", "10.0.0.9:5000", 3, "COMMIT")).await.unwrap();
    assert_eq!(r.seq, acked + 1);
    assert!(log.wait_shipped(r.seq, Duration::from_secs(30)).await);
    // Shipped segments were removed from the gate host; the current one stays.
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".jsonl"))
        .count();
    assert_eq!(segments, 1);

    let out = s.cli(&["audit", "verify", "--trust-key", &s.public]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "intact — {} records (seq 1–{}",
            acked + 1,
            acked + 1
        )),
        "{}",
        text(&out)
    );
    // In the vault's own order, batch ranges only ever move forward.
    let mut next = 1;
    for b in s.batches().await {
        let (a, z) = (b.body["first_seq"].as_u64().unwrap(), b.body["last_seq"].as_u64().unwrap());
        assert!(a <= next, "a gap before seq {a}");
        next = next.max(z + 1);
    }
    assert_eq!(next, acked + 2);
}
