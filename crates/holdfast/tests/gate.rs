//! The gate end to end: a real PostgreSQL, `holdfast gate serve` as its own process, real psql
//! and pgbench (libpq, extended protocol) as clients, approvals through the real CLI.
//!
//! What must hold: people log in as themselves over TLS; a destructive statement never runs
//! without a second person (self-approval refused, rejection and timeout leave the data
//! intact, approval runs it in the same session); the row-count guard rolls back a DELETE that
//! touched too many rows; a just-in-time grant ends its sessions when it expires; decisions
//! need a TOTP code; break-glass runs destruction without approval but alerts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod gate_harness;
use gate_harness::*;

/// ctrl-c for a child psql.
fn unsafe_sigint(pid: u32) {
    let ok = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(ok.success());
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

const POLICY: &str = "row_guard_max_rows = 10\n";

#[test]
fn destruction_waits_for_a_second_person_and_never_runs_without_one() {
    let g = Gate::start("", POLICY);
    // Identity: wrong password, no TLS, unknown person are refused; the right one works.
    let out = g.psql_as("alice", "wrong", "SELECT 1");
    assert!(!out.status.success());
    assert!(text(&out).contains("password authentication failed"), "{}", text(&out));
    let out = g.psql_as("nobody", "whatever", "SELECT 1");
    assert!(text(&out).contains("password authentication failed"), "{}", text(&out));
    let plain = Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("alice", "disable"))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "alice-password")
        .output()
        .unwrap();
    assert!(text(&plain).contains("only TLS"), "{}", text(&plain));
    let out = g.alice("SELECT count(*) FROM orders");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");

    // DROP TABLE is held; Alice cannot approve it herself; Bob rejects it: nothing dropped.
    let held = g.spawn_alice("DROP TABLE orders");
    let id = g.pending_id();
    let own = g.cli("alice", "alice-password", Some(ALICE_TOTP), &["approve", &id]);
    assert!(!own.status.success());
    assert!(text(&own).contains("may not approve their own"), "{}", text(&own));
    let no_code = g.cli("bob", "bob-password", None, &["approve", &id]);
    assert!(!no_code.status.success());
    assert!(text(&no_code).contains("one-time code"), "{}", text(&no_code));
    let rej = g.bob(&["reject", &id, "--reason", "not during business hours"]);
    assert!(rej.status.success(), "{}", text(&rej));
    let out = finish(held);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains(&id) && t.contains("rejected by bob"), "{t}");
    assert_eq!(g.count("orders"), 100);

    // Nobody decides: it times out, nothing deleted.
    let started = Instant::now();
    let out = g.alice("DELETE FROM scratch");
    assert!(!out.status.success());
    assert!(text(&out).contains("nobody approved it in time"), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(14), "{:?}", started.elapsed());
    assert_eq!(g.count("scratch"), 20);

    // Hidden in a multi-statement string or a CTE: still held.
    let held = g.spawn_alice("SELECT 1; WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d");
    let id = g.pending_id();
    g.bob(&["reject", &id]);
    assert!(!finish(held).status.success());
    assert_eq!(g.count("orders"), 100);

    // Approved: it runs, in the same session.
    let held = g.spawn_alice("TRUNCATE scratch");
    let id = g.pending_id();
    let ok = g.bob(&["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = finish(held);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.count("scratch"), 0);

    // Once the server says it lexes differently (standard_conforming_strings off), the gate
    // ends the session: it will not guard statements the server reads another way.
    let out = g.alice("SET standard_conforming_strings = off; SELECT 1");
    assert!(!out.status.success());
    assert!(text(&out).contains("statements can no longer be checked"), "{}", text(&out));
    let out = g.alice("SET client_encoding = 'SJIS'");
    assert!(!out.status.success(), "{}", text(&out));

    // Carol may connect only from 10.0.0.0/8: from 127.0.0.1 her session waits for a second
    // person, and starts once Bob lets it.
    let waiting = Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("carol", "require"))
        .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM orders"])
        .env("PGPASSWORD", "carol-password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = g.pending_id();
    assert!(id.starts_with('c'), "an access request: {id}");
    assert!(g.bob(&["approve", &id]).status.success());
    let out = finish(waiting);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("outside their networks"), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");

    // Inside a transaction, a rejection aborts it as any error would, and the session goes on.
    let held = g.spawn_alice("BEGIN; INSERT INTO orders VALUES (1000, 1, 1); DROP TABLE orders; COMMIT");
    let id = g.pending_id();
    g.bob(&["reject", &id]);
    assert!(!finish(held).status.success());
    assert_eq!(g.count("orders"), 100, "the whole string was refused, the INSERT with it");
}

#[test]
fn row_guard_rolls_back_deletes_over_the_limit_and_extended_protocol_is_guarded() {
    let g = Gate::start("", POLICY);
    // Within the limit: runs and commits.
    let out = g.alice("DELETE FROM orders WHERE id <= 5");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.count("orders"), 95);
    // In a transaction (statements sent one by one, as psql does from a script), within the limit.
    let mut script = Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("alice", "require"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .env("PGPASSWORD", "alice-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        script
            .stdin
            .take()
            .unwrap()
            .write_all(b"BEGIN;\nUPDATE orders SET total = 0 WHERE id = 6;\nUPDATE orders SET total = 1 WHERE id = 7;\nSELECT 1;\nCOMMIT;\n")
            .unwrap();
    }
    let out = finish(script);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.pg.psql("SELECT total FROM orders WHERE id = 7").unwrap(), "1");
    assert_eq!(g.pg.psql("SELECT total FROM orders WHERE id = 6").unwrap(), "0");
    // Over the limit: rolled back, held; rejected → still 95 rows.
    let held = g.spawn_alice("DELETE FROM orders WHERE id > 50");
    let id = g.pending_id();
    assert_eq!(g.count("orders"), 95, "rolled back while waiting");
    g.bob(&["reject", &id]);
    let out = finish(held);
    assert!(!out.status.success());
    assert!(text(&out).contains("over the limit of 10"), "{}", text(&out));
    assert_eq!(g.count("orders"), 95);

    // The same DELETE with its own COMMIT in one string cannot be counted before it commits:
    // it waits for a person instead.
    let held = g.spawn_alice("BEGIN; DELETE FROM orders WHERE id > 50; COMMIT");
    let id = g.pending_id();
    g.bob(&["reject", &id]);
    let out = finish(held);
    assert!(!out.status.success());
    assert!(text(&out).contains("transaction control"), "{}", text(&out));
    assert_eq!(g.count("orders"), 95);

    // COPY in both directions passes through.
    let out = g.alice("COPY (SELECT id FROM orders ORDER BY id) TO STDOUT");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 95);
    let mut copy_in = Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("alice", "require"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", "COPY scratch FROM STDIN"])
        .env("PGPASSWORD", "alice-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    copy_in.stdin.take().unwrap().write_all(b"101\n102\n103\n").unwrap();
    let out = finish(copy_in);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.count("scratch"), 23);

    // A held statement is withdrawn when the client cancels it (psql sends a CancelRequest on
    // ctrl-c, which the gate maps to the session).
    let held = g.spawn_alice("DROP TABLE scratch");
    let id = g.pending_id();
    unsafe_sigint(held.id());
    let out = finish(held);
    assert!(text(&out).contains("withdrawn"), "{}", text(&out));
    assert_eq!(g.count("scratch"), 23);
    let out = g.cli("alice", "alice-password", None, &["pending", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\"{id}\"")));

    // libpq's extended protocol (pgbench -M prepared): reads run, a destructive statement is
    // held and times out, and the data stays.
    let script = g.dir.join("read.sql");
    std::fs::write(&script, "SELECT count(*) FROM orders WHERE merchant = 3;\n").unwrap();
    let bench = |file: &Path| {
        Command::new(testkit::pg::bin("pgbench").unwrap())
            .arg(g.conninfo("alice", "require"))
            .args(["-n", "-M", "prepared", "-t", "5", "-f"])
            .arg(file)
            .env("PGPASSWORD", "alice-password")
            .output()
            .unwrap()
    };
    let out = bench(&script);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("number of transactions actually processed: 5/5"), "{}", text(&out));
    let script = g.dir.join("drop.sql");
    std::fs::write(&script, "DELETE FROM orders;\n").unwrap();
    let out = bench(&script);
    assert!(!out.status.success() || text(&out).contains("failed"), "{}", text(&out));
    assert!(text(&out).contains("nobody approved it in time"), "{}", text(&out));
    assert_eq!(g.count("orders"), 95);
}

/// A vault with an append token for the gate and a read token for the auditor.
fn vault_for_audit() -> (testkit::vault::TempVault, PathBuf, PathBuf) {
    use vault_api::{Scope, VaultClient};
    let v = testkit::vault::TempVault::start(holdfast()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (append, read) = rt.block_on(async {
        let admin = VaultClient::new(v.url(), &v.ca_pem(), Some(v.admin_token().to_string())).unwrap();
        let a = admin.create_token(Scope::Append, "gate audit").await.unwrap().token;
        let r = admin.create_token(Scope::Read, "auditor").await.unwrap().token;
        (a, r)
    });
    let (a, r) = (v.scratch().join("append.token"), v.scratch().join("read.token"));
    std::fs::write(&a, format!("{append}\n")).unwrap();
    std::fs::write(&r, format!("{read}\n")).unwrap();
    (v, a, r)
}

#[test]
fn grants_expire_and_end_their_sessions_break_glass_alerts_and_the_audit_trail_is_in_the_vault() {
    let (hook, received) = testkit::webhook::receiver();
    let (vault, append_token, read_token) = vault_for_audit();
    let ca = vault.scratch().join("vault-ca.pem");
    std::fs::write(&ca, vault.ca_pem()).unwrap();
    let g = Gate::start(
        &format!(
            "webhook = [{{ name = \"oncall\", url = \"{hook}\" }}]\n[audit]\nvault = \"{}\"\nca = \"{}\"\ntoken_file = \"{}\"\n",
            vault.url(),
            ca.display(),
            append_token.display()
        ),
        POLICY,
    );
    // No grant yet: alice@dba is refused with what to do.
    let out = g.psql_as("alice@dba", "alice-password", "SELECT current_user");
    assert!(text(&out).contains("holds no active grant of role dba"), "{}", text(&out));
    // A request needs a TOTP code and a reason; bob approves it.
    let out = g.cli(
        "alice",
        "alice-password",
        Some(ALICE_TOTP),
        &["request", "--role", "dba", "--for", "6s", "--reason", "rebuild an index"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(g.bob(&["approve", &id]).status.success());
    let out = g.psql_as("alice@dba", "alice-password", "SELECT current_user");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dba");
    // A session under the grant is ended when it expires, with a clear message.
    let started = Instant::now();
    let out = g.psql_as("alice@dba", "alice-password", "SELECT pg_sleep(30)");
    assert!(!out.status.success());
    assert!(text(&out).contains("has expired"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(20));

    // Break-glass: needs a reason; then destruction runs without approval, and alerts.
    let out =
        g.cli("alice", "alice-password", Some(ALICE_TOTP), &["break-glass", "--for", "5m", "--reason", "x"]);
    assert!(!out.status.success());
    let out = g.cli(
        "alice",
        "alice-password",
        Some(ALICE_TOTP),
        &["break-glass", "--for", "5m", "--reason", "primary disk full, dropping scratch data"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = g.alice("DROP TABLE scratch");
    assert!(out.status.success(), "{}", text(&out));
    // An extended-protocol statement (as drivers send them): its SQL text reaches the audit
    // trail in the vault, from the Parse and from the Execute (what was bound).
    let mut raw = Raw::connect(&g, "alice", "alice-password");
    let r = raw.exchange(&[
        parse("m", "SELECT count(*) FROM orders WHERE merchant = $1 AND 'extended-marker-42' <> ''"),
        Msg::BindParams { portal: "pm".into(), statement: "m".into(), values: vec![Some("3".into())] },
        execute("pm"),
        Msg::Sync,
    ]);
    assert!(errors(&r).is_empty(), "{r:?}");
    drop(raw);
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    loop {
        let kinds: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["alert"]["alert"].as_str().unwrap_or("").to_string())
            .collect();
        if kinds.iter().any(|k| k == "break_glass") && kinds.iter().any(|k| k == "break_glass_statement") {
            assert!(kinds.iter().any(|k| k == "grant_requested"), "{kinds:?}");
            break;
        }
        assert!(Instant::now() < deadline, "alerts: {kinds:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The audit trail reaches the vault (append token only), verifies end to end against the
    // gate's key, and answers who did what from where.
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(40));
    let key = loop {
        let out = g.cli("alice", "alice-password", None, &["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["audit"]["pending_records"] == 0 && v["audit"]["shipped_seq"].as_u64().unwrap_or(0) > 10 {
            break v["audit"]["public_key"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "audit not shipped: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = vault.cli(&read_token, &["audit", "verify", "--trust-key", &key]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = vault
        .cli(
            &read_token,
            &[
                "audit",
                "search",
                "--json",
                "--trust-key",
                &key,
                "--person",
                "alice",
                "--text",
                "DROP TABLE scratch",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.contains("\"statement\"")
            && found.contains("127.0.0.1:")
            && found.contains("\"break_glass\": true"),
        "{found}"
    );
    let out = vault
        .cli(&read_token, &["audit", "search", "--json", "--trust-key", &key, "--text", "extended-marker-42"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.contains("\"parse\"") && found.contains("\"extended\""), "{found}");
    assert!(found.contains("WHERE merchant = $1"), "{found}");
    let out =
        vault.cli(&read_token, &["audit", "search", "--trust-key", &key, "--kind", "break_glass"]).unwrap();
    assert!(text(&out).contains("primary disk full"), "{}", text(&out));
    let out = vault
        .cli(&read_token, &["audit", "search", "--trust-key", &key, "--kind", "grant_approved"])
        .unwrap();
    assert!(text(&out).contains("bob"), "{}", text(&out));
}

/// `pgbench -i` through the gate: its DROP TABLE IF EXISTS of absent tables and its TRUNCATE of
/// the empty tables it just created destroy nothing, so nothing waits for a person (here nobody
/// could approve: anything held is refused at once). Then TPC-B with `-M prepared` (parameterised
/// one-row UPDATEs, row-guarded) completes. The adversary's side: IF EXISTS and TRUNCATE
/// of tables that exist with data — directly, after locking them, next to an absent name,
/// through a TRUNCATE trigger on an empty table and through an event trigger on DROP — are held
/// (refused), and every row is still there.
#[test]
fn pgbench_init_and_tpcb_complete_through_the_gate_and_if_exists_destroys_nothing_real() {
    let g = Gate::start_with("", POLICY, false);
    // alice's login owns orders (as an application's role owns its tables): only the gate
    // stands between her and a DROP.
    g.pg.psql("ALTER TABLE orders OWNER TO gate_app").unwrap();
    let pgbench = |args: &[&str]| {
        Command::new(testkit::pg::bin("pgbench").unwrap())
            .arg(g.conninfo("alice", "require"))
            .args(args)
            .env("PGPASSWORD", "alice-password")
            .output()
            .unwrap()
    };
    // Data generated on the server (`G`): the default client-side step loads with COPY …
    // FREEZE, which the gate cannot measure and holds (see the guard's COPY cases). Its
    // vacuum step (`v`, `VACUUM ANALYZE` of each table) is held too: VACUUM cannot be measured
    // (no transaction block) and ANALYZE runs index expressions — the same work as VACUUM, then
    // ANALYZE (measured), which run; its CREATE TABLEs and primary keys are measured DDL.
    let out = pgbench(&["-i", "-I", "dtGp", "-s", "1"]);
    assert!(out.status.success(), "pgbench -i through the gate: {}", text(&out));
    assert_eq!(g.count("pgbench_accounts"), 100_000);
    for sql in ["VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history", "ANALYZE"] {
        let out = g.alice(sql);
        assert!(out.status.success(), "{sql}: {}", text(&out));
    }
    let out = pgbench(&["-i", "-I", "v"]);
    assert!(!out.status.success() && text(&out).contains("VACUUM with ANALYZE"), "{}", text(&out));
    let out = pgbench(&["-n", "-M", "prepared", "-t", "20", "-c", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("number of transactions actually processed: 40/40"), "{}", text(&out));
    assert_eq!(g.count("pgbench_history"), 40);

    // Initialising again drops tables that hold data: refused (nobody can approve).
    let out = pgbench(&["-i", "-s", "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("dropped or emptied"), "{}", text(&out));
    assert_eq!(g.count("pgbench_accounts"), 100_000);
    assert_eq!(g.count("pgbench_history"), 40);

    // Setup the trap: an empty table whose TRUNCATE trigger empties orders, and an event trigger
    // (a superuser's, planted earlier) that empties scratch whenever anyone drops a table.
    g.pg.psql(
        "CREATE TABLE bait (id int); GRANT ALL ON bait TO gate_app;
         CREATE FUNCTION bait_fn() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN TRUNCATE orders; RETURN NULL; END$$;
         CREATE TRIGGER bait_tr BEFORE TRUNCATE ON bait EXECUTE FUNCTION bait_fn();",
    )
    .unwrap();
    // (the statement, what the refusal says: measured and found destructive, or held whole)
    for (sql, why) in [
        ("DROP TABLE IF EXISTS orders", "dropped or emptied"),
        ("DROP TABLE IF EXISTS no_such_table, orders", "dropped or emptied"),
        ("BEGIN; LOCK orders IN ACCESS EXCLUSIVE MODE; DROP TABLE IF EXISTS orders", "DROP TABLE orders"),
        ("DROP VIEW IF EXISTS no_such_view; DROP TABLE IF EXISTS orders CASCADE", "dropped or emptied"),
        ("TRUNCATE orders", "dropped or emptied"),
        ("CREATE TABLE made_now (id int); TRUNCATE made_now, orders", "dropped or emptied"),
        ("TRUNCATE bait", "dropped or emptied"),
        ("DROP TABLE IF EXISTS no_such_table; DELETE FROM orders", "DELETE without WHERE"),
    ] {
        let out = g.alice(sql);
        assert!(!out.status.success(), "{sql}: {}", text(&out));
        assert!(text(&out).contains(why), "{sql}: {}", text(&out));
        assert_eq!(g.count("orders"), 100, "{sql}");
    }
    // psql's script mode: the LOCK in one statement, the DROP in the next, one transaction.
    let out = Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("alice", "require"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "BEGIN",
            "-c",
            "LOCK orders IN ACCESS EXCLUSIVE MODE",
            "-c",
            "DROP TABLE IF EXISTS orders",
            "-c",
            "COMMIT",
        ])
        .env("PGPASSWORD", "alice-password")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(g.count("orders"), 100);
    g.pg.psql(
        "CREATE FUNCTION trap() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN TRUNCATE scratch; END$$;
         CREATE EVENT TRIGGER trap ON ddl_command_start WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION trap();",
    )
    .unwrap();
    let out = g.alice("DROP TABLE IF EXISTS no_such_table");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("dropped or emptied"), "{}", text(&out));
    assert_eq!(g.count("scratch"), 20);
    g.pg.psql("DROP EVENT TRIGGER trap").unwrap();

    // What destroys nothing runs, with the server's own answers (its NOTICE included).
    let out = g.alice("DROP TABLE IF EXISTS no_such_table, no_such_either");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("does not exist, skipping"), "{}", text(&out));
    let out = g.alice("CREATE TABLE fresh (id int); TRUNCATE fresh; INSERT INTO fresh VALUES (1)");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.count("fresh"), 1);
    // A table with data cannot be emptied: refused, its row stays.
    let out = g.alice("TRUNCATE fresh");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("dropped or emptied"), "{}", text(&out));
    assert_eq!(g.count("fresh"), 1);
    assert_eq!(g.count("orders"), 100);
    assert_eq!(g.count("scratch"), 20);
}

/// An approval request for an extended-protocol statement shows its SQL text (what was bound,
/// not a statement name) and its parameters: their count, the values as `approval_parameters`
/// says (here hashed: SHA-256, comparable without being readable). Rejected, nothing changed.
#[test]
fn approval_requests_show_the_sql_and_the_bound_parameters() {
    let g = Gate::start("approval_parameters = \"hashed\"", POLICY);
    let mut a = Raw::connect(&g, "alice", "alice-password");
    a.send(&[
        parse("del", "DELETE FROM orders WHERE id > $1 AND merchant IS NOT NULL"),
        Msg::BindParams { portal: "p".into(), statement: "del".into(), values: vec![Some("0".into())] },
        execute("p"),
        Msg::Sync,
    ]);
    let id = g.pending_id();
    let out = g.cli("alice", "alice-password", None, &["pending", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let req = v["requests"].as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap().clone();
    assert_eq!(req["ask"]["sql"], "DELETE FROM orders WHERE id > $1 AND merchant IS NOT NULL", "{req}");
    assert_eq!(req["ask"]["parameters"]["count"], 1, "{req}");
    assert_eq!(req["ask"]["parameters"]["values_are"], "hashed", "{req}");
    // SHA-256 of the text "0".
    assert_eq!(
        req["ask"]["parameters"]["values"][0],
        "sha256:5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
        "{req}"
    );
    let listed = g.cli("alice", "alice-password", None, &["pending"]);
    assert!(text(&listed).contains("[1 parameters, hashed: \"sha256:5feceb66"), "{}", text(&listed));
    let out = g.bob(&["reject", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let r = a.until_ready(1);
    assert!(!errors(&r).is_empty(), "{r:?}");
    // Exactly the answers to its own messages: ParseComplete, BindComplete, the error in the
    // Execute's place, ReadyForQuery (none of the gate's own refusal statement's).
    let tags: Vec<u8> = r.iter().map(|m| m.tag).filter(|t| *t != b'N').collect();
    assert_eq!(tags, b"12EZ".to_vec(), "{r:?}");
    assert_eq!(g.count("orders"), 100);

    // Approved, a measured write runs as bound (its portal, run to its end by the measurement,
    // is bound again by the gate); the client gets exactly the answers it asked for.
    a.send(&[
        Msg::BindParams { portal: "p2".into(), statement: "del".into(), values: vec![Some("85".into())] },
        execute("p2"),
        Msg::Sync,
    ]);
    let id = g.pending_id();
    assert_eq!(g.count("orders"), 100, "rolled back while it waits");
    let out = g.bob(&["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let r = a.until_ready(1);
    assert!(errors(&r).is_empty(), "{r:?}");
    let tags: Vec<u8> = r.iter().map(|m| m.tag).filter(|t| *t != b'N').collect();
    assert_eq!(tags, b"2CZ".to_vec(), "BindComplete, CommandComplete, ReadyForQuery: {r:?}");
    assert_eq!(g.count("orders"), 85);
}
