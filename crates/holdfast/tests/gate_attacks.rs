//! The gate under attack, message by message: a real PostgreSQL behind the real gate, and a
//! client that sends whatever protocol messages an attacker's own driver would. Each case tries
//! to destroy data without a second person — through portals re-bound under the gate's nose,
//! SQL FETCH/MOVE over protocol portals, multi-statement strings, writes that are not
//! UPDATE/DELETE (upserts, MERGE, functions, procedures, triggers, cascades), and many small
//! statements under a budget — and asserts the attack failed *and* the data is exactly as before.
//! Bob is no approver here, so anything that needs approval is refused at once.

use std::time::Duration;

mod gate_harness;
use gate_harness::*;

const POLICY: &str = "row_guard_max_rows = 10\nbudget_rows = 25\n";

/// Row count and a checksum of `orders`, read directly (not through the gate).
fn orders_state(g: &Gate) -> String {
    g.pg.psql("SELECT count(*) || '/' || coalesce(sum(total * id), 0) FROM orders").unwrap()
}

fn refused(r: &[Reply], what: &str) {
    let e = errors(r);
    assert!(
        e.iter().any(|m| m.starts_with("holdfast gate:") && (m.contains("not run") || m.contains("refused"))),
        "{what}: expected the gate to refuse it, got errors {e:?}"
    );
}

fn ok(r: &[Reply], what: &str) {
    let e = errors(r);
    assert!(e.is_empty(), "{what}: expected it to run, got errors {e:?}");
}

fn rows(r: &[Reply]) -> usize {
    r.iter().filter(|m| m.tag == b'D').count()
}

#[test]
fn portals_run_what_was_bound_and_fetch_move_cannot_drive_a_write() {
    let g = Gate::start_with("", POLICY, false);
    let before = orders_state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");

    // 1. Bind a portal over a DELETE, close and re-parse the statement name as something
    //    harmless, then execute the portal: judged by what was bound.
    let r = c.exchange(&[
        parse("s", "DELETE FROM orders"),
        bind("p", "s"),
        Msg::CloseStatement("s".into()),
        parse("s", "SELECT 1"),
        execute("p"),
        Msg::Sync,
    ]);
    refused(&r, "re-parsed statement name under a bound portal");
    assert_eq!(orders_state(&g), before);

    // The same across batches inside a transaction (the portal lives until its end).
    ok(&c.query("BEGIN"), "BEGIN");
    ok(&c.exchange(&[parse("s1", "DELETE FROM orders"), bind("p1", "s1"), Msg::Sync]), "bind");
    ok(&c.exchange(&[Msg::CloseStatement("s1".into()), parse("s1", "SELECT 2"), Msg::Sync]), "re-parse");
    refused(&c.exchange(&[execute("p1"), Msg::Sync]), "portal executed in a later batch");
    c.query("ROLLBACK");
    assert_eq!(orders_state(&g), before);

    // 2. The unnamed statement replaced after the unnamed portal was bound.
    let r = c.exchange(&[
        parse("", "DELETE FROM orders"),
        bind("", ""),
        parse("", "SELECT 1"),
        execute(""),
        Msg::Sync,
    ]);
    refused(&r, "unnamed statement replaced after Bind");
    assert_eq!(orders_state(&g), before);

    // 3. A portal over DELETE … RETURNING driven with SQL FETCH / MOVE (one namespace on the
    //    server): measured like any write — 100 rows is over the limit of 10.
    for drive in ["FETCH ALL FROM cur", "MOVE ALL IN cur", "FETCH 1 FROM cur", "FETCH FORWARD 5 IN \"cur\""] {
        ok(&c.query("BEGIN"), "BEGIN");
        ok(
            &c.exchange(&[
                Msg::CloseStatement("d".into()),
                parse("d", "DELETE FROM orders WHERE id > 0 RETURNING id"),
                bind("cur", "d"),
                Msg::Sync,
            ]),
            "bind a DELETE portal",
        );
        refused(&c.query(drive), drive);
        c.query("ROLLBACK");
        assert_eq!(orders_state(&g), before, "{drive}");
    }
    // …and a cursor opened by a function the gate cannot see into.
    g.pg.psql(
        "CREATE FUNCTION open_wipe() RETURNS refcursor LANGUAGE plpgsql AS $$DECLARE c refcursor := 'wipe'; BEGIN OPEN c FOR EXECUTE 'DELETE FROM orders WHERE id > 0 RETURNING id'; RETURN c; END$$;",
    )
    .unwrap();
    ok(&c.query("BEGIN"), "BEGIN");
    let r = c.query("SELECT open_wipe()");
    ok(&r, "open a cursor in a function");
    refused(&c.query("FETCH ALL FROM wipe"), "FETCH from a function's cursor");
    c.query("ROLLBACK");
    assert_eq!(orders_state(&g), before);

    // Startup options go through the guard too: a setting that would blind the row guard or
    // change identity ends the login; an ordinary one is forwarded, and the driver's
    // 'UNICODE' encoding name is UTF-8.
    for bad in ["-c track_counts=off", "-c session_replication_role=replica", "-c role=postgres", "-D /tmp"] {
        let e = Raw::try_connect(&g, "alice", "alice-password", &[("options", bad)]).err().expect(bad);
        assert!(e.contains("holdfast gate:") && e.contains("startup option"), "{bad}: {e}");
    }
    let mut o =
        Raw::try_connect(&g, "alice", "alice-password", &[("options", "-c statement_timeout=4s")]).unwrap();
    let r = o.query("SHOW statement_timeout");
    assert!(r.iter().any(|m| m.tag == b'D' && m.body.ends_with(b"4s")), "{r:?}");
    assert!(Raw::try_connect(&g, "alice", "alice-password", &[("client_encoding", "UNICODE")]).is_ok());

    // A portal over a FETCH from itself: refused, and the gate (every session) lives on.
    ok(&c.query("BEGIN"), "BEGIN");
    refused(
        &c.exchange(&[
            parse("self", "FETCH ALL FROM loop"),
            bind("loop", "self"),
            execute("loop"),
            Msg::Sync,
        ]),
        "a portal fetching from itself",
    );
    c.query("ROLLBACK");
    ok(&c.query("SELECT 1"), "the session goes on");

    // 4. A portal never bound, or closed, is not executed.
    refused(&c.exchange(&[execute("nobody"), Msg::Sync]), "unknown portal");

    // 5. What must keep working: cursors over reads, prepared writes within the limits are
    //    held (extended writes wait for a person), reads through portals run.
    ok(&c.query("BEGIN"), "BEGIN");
    ok(&c.query("DECLARE c CURSOR FOR SELECT id FROM orders ORDER BY id"), "DECLARE");
    assert_eq!(rows(&c.query("FETCH 5 FROM c")), 5);
    ok(&c.query("MOVE 10 IN c"), "MOVE over a read");
    ok(&c.query("CLOSE c"), "CLOSE");
    ok(&c.query("COMMIT"), "COMMIT");
    let r = c.exchange(&[parse("r", "SELECT id FROM orders WHERE id <= $1::int"), Msg::Sync]);
    ok(&r, "parse a read");
    let r = c.exchange(&[Msg::Bind { portal: "".into(), statement: "r".into() }, execute(""), Msg::Sync]);
    // No parameter value was sent: the server refuses the Bind itself — its own error.
    assert!(errors(&r).iter().any(|e| e.contains("parameters")), "{:?}", errors(&r));
    assert_eq!(orders_state(&g), before);
}

#[test]
fn extended_protocol_writes_are_measured_and_pgbench_prepared_runs() {
    let g = Gate::start_with("", "row_guard_max_rows = 10\nbudget_rows = 1000000\n", false);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let before = orders_state(&g);
    // Within the limit: runs, committed at Sync (outside a transaction).
    let r = c.exchange(&[
        parse("u", "UPDATE orders SET total = total + 1 WHERE id = 5 RETURNING id"),
        bind("", "u"),
        Msg::Describe { portal: "".into() },
        execute(""),
        Msg::Sync,
    ]);
    ok(&r, "a one-row extended UPDATE");
    assert_eq!(rows(&r), 1);
    assert_eq!(r.last().unwrap().body, b"I".to_vec(), "the session is outside a transaction again");
    assert_eq!(g.pg.psql("SELECT total FROM orders WHERE id = 5").unwrap(), "8.5");
    let before_big = orders_state(&g);
    assert_ne!(before, before_big);
    // Over it: rolled back and refused (nobody to approve), the rest of the batch skipped.
    for attack in [
        vec![parse("b", "DELETE FROM orders WHERE id > 50"), bind("", "b"), execute(""), Msg::Sync],
        vec![
            parse("", "BEGIN"),
            bind("", ""),
            execute(""),
            parse("b2", "DELETE FROM orders WHERE id > 50"),
            bind("p", "b2"),
            execute("p"),
            parse("", "COMMIT"),
            bind("", ""),
            execute(""),
            Msg::Sync,
        ],
        vec![
            parse(
                "f",
                "INSERT INTO orders SELECT id, merchant, total FROM orders ON CONFLICT (id) DO UPDATE SET total = 0",
            ),
            bind("", "f"),
            execute(""),
            Msg::Sync,
        ],
        vec![
            parse("small", "DELETE FROM orders WHERE id = 1"),
            bind("", "small"),
            execute(""),
            parse("big", "DELETE FROM orders WHERE id > 1"),
            bind("", "big"),
            execute(""),
            Msg::Sync,
        ],
    ] {
        let r = c.exchange(&attack);
        refused(&r, &format!("{attack:?}"));
        assert_eq!(orders_state(&g), before_big, "{attack:?}");
        // Outside a transaction as before; the client's own transaction aborted, as after
        // any error in it.
        let began = matches!(&attack[0], Msg::Parse { sql, .. } if sql == "BEGIN");
        assert_eq!(r.last().unwrap().body, if began { b"E".to_vec() } else { b"I".to_vec() }, "{attack:?}");
        if began {
            ok(&c.query("ROLLBACK"), "ROLLBACK");
        }
    }
    // A measured write after an error earlier in its batch: the server skips it (no hang, no
    // write). Found by the generator (seed 77, case 155).
    let r = c.exchange(&[
        parse("x", "EXECUTE nothing_prepared"),
        parse("u2", "UPDATE orders SET total = 0 WHERE id > 0"),
        bind("pu", "u2"),
        execute("pu"),
        execute("pu"),
        Msg::Sync,
    ]);
    refused(&r, "a refused Parse before a measured write");
    assert_eq!(orders_state(&g), before_big);

    // A client transaction over several batches (as JDBC sends it): BEGIN with the first
    // statement, measured writes, COMMIT.
    ok(
        &c.exchange(&[
            parse("", "BEGIN"),
            bind("", ""),
            execute(""),
            parse("", "DELETE FROM orders WHERE id = 2"),
            bind("", ""),
            execute(""),
            Msg::Sync,
        ]),
        "BEGIN and a small delete",
    );
    ok(
        &c.exchange(&[parse("", "DELETE FROM orders WHERE id = 3"), bind("", ""), execute(""), Msg::Sync]),
        "another",
    );
    ok(&c.exchange(&[parse("", "COMMIT"), bind("", ""), execute(""), Msg::Sync]), "COMMIT");
    assert_eq!(g.count("orders"), 98);

    // pgbench -M prepared, TPC-B: every UPDATE/INSERT measured, all transactions complete.
    let bench = |args: &[&str]| {
        std::process::Command::new(testkit::pg::bin("pgbench").unwrap())
            .arg(g.conninfo("alice", "require"))
            .args(args)
            .env("PGPASSWORD", "alice-password")
            .output()
            .unwrap()
    };
    g.pg.psql(
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
         CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
         CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
         INSERT INTO pgbench_branches VALUES (1, 0);
         INSERT INTO pgbench_tellers SELECT g, 1, 0 FROM generate_series(1, 10) g;
         INSERT INTO pgbench_accounts SELECT g, 1, 0 FROM generate_series(1, 10000) g;
         GRANT ALL ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO gate_app;",
    )
    .unwrap();
    let out = bench(&["-n", "-M", "prepared", "-t", "20", "-c", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("number of transactions actually processed: 40/40"), "{}", text(&out));
    assert_eq!(g.pg.psql("SELECT count(*) FROM pgbench_history").unwrap(), "40");
}

#[test]
fn every_write_is_measured_by_what_the_database_counted() {
    let mut g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id serial PRIMARY KEY, parent int REFERENCES parent ON DELETE CASCADE);
         INSERT INTO parent SELECT g FROM generate_series(1, 3) g;
         INSERT INTO child (parent) SELECT 1 FROM generate_series(1, 50);
         CREATE TABLE ledger (id int);
         INSERT INTO ledger SELECT g FROM generate_series(1, 50) g;
         CREATE FUNCTION wipe_ledger() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN DELETE FROM ledger; RETURN NEW; END$$;
         CREATE TABLE pings (id int);
         CREATE TRIGGER wipe AFTER INSERT ON pings FOR EACH ROW EXECUTE FUNCTION wipe_ledger();
         CREATE FUNCTION purge() RETURNS bigint LANGUAGE sql AS 'WITH d AS (DELETE FROM orders WHERE id > 0 RETURNING 1) SELECT count(*) FROM d';
         CREATE PROCEDURE purge_p() LANGUAGE sql AS 'DELETE FROM orders WHERE id > 0';
         CREATE FUNCTION trunc_scratch() RETURNS void LANGUAGE sql AS 'TRUNCATE scratch';
         CREATE TABLE small (id int);
         INSERT INTO small SELECT g FROM generate_series(1, 100) g;
         GRANT ALL ON parent, child, ledger, pings, small TO gate_app;",
    )
    .unwrap();
    let state = |g: &Gate| {
        format!(
            "{} {} {} {} {} {}",
            orders_state(g),
            g.count("parent"),
            g.count("child"),
            g.count("ledger"),
            g.count("scratch"),
            g.count("small")
        )
    };
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    for attack in [
        // cascade: 1 row named, 51 removed
        "DELETE FROM parent WHERE id = 1",
        // a trigger deleting elsewhere
        "INSERT INTO pings VALUES (1)",
        // functions and procedures that write (unknown_functions = write)
        "SELECT purge()",
        "CALL purge_p()",
        "SELECT 1 FROM (SELECT purge()) x",
        // TRUNCATE inside a function: no row counted, but an ACCESS EXCLUSIVE lock taken
        "SELECT trunc_scratch()",
        // writes that change existing rows without being UPDATE/DELETE
        "INSERT INTO orders SELECT id, merchant, total FROM orders ON CONFLICT (id) DO UPDATE SET total = 0",
        "MERGE INTO orders o USING (SELECT id FROM orders) s ON o.id = s.id WHEN MATCHED THEN DELETE",
        "MERGE INTO orders o USING (SELECT id FROM orders) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET total = 0",
        "UPDATE orders SET total = 0 WHERE id > 0",
        "DELETE FROM orders WHERE id IN (SELECT id FROM orders)",
        // multi-statement strings: a DML after a harmless statement, after ROLLBACK/COMMIT,
        // after an error, and a small DELETE followed by a big one (all-or-nothing)
        "SELECT 1; DELETE FROM orders WHERE id > 0",
        "ROLLBACK; DELETE FROM orders WHERE id > 0",
        "COMMIT; DELETE FROM orders WHERE id > 0; SELECT 1",
        "SAVEPOINT a; DELETE FROM orders WHERE id > 0; RELEASE a",
        "DELETE FROM orders WHERE id <= 3; DELETE FROM orders WHERE id > 3",
        "SELECT 1; SELECT purge(); SELECT 2",
        "PREPARE w AS DELETE FROM orders WHERE id > $1; EXECUTE w(0)",
    ] {
        let r = c.query(attack);
        refused(&r, attack);
        assert_eq!(state(&g), before, "{attack}");
        // The session goes on, outside a transaction.
        assert_eq!(r.last().map(|m| m.body.clone()), Some(b"I".to_vec()), "{attack}");
    }
    // An error first: nothing after it runs, and the gate says nothing of its own.
    let r = c.query("SELECT 1/0; DELETE FROM orders WHERE id > 0");
    assert!(errors(&r).iter().any(|e| e.contains("division by zero")), "{:?}", errors(&r));
    assert_eq!(state(&g), before);

    // Within the limits these run, each statement's results in order, in one transaction.
    let r = c.query("DELETE FROM parent WHERE id = 3; SELECT count(*) FROM parent; INSERT INTO orders VALUES (1000, 1, 1) ON CONFLICT (id) DO UPDATE SET total = 2");
    ok(&r, "within the limits");
    assert_eq!(rows(&r), 1);
    assert_eq!(g.count("parent"), 2);
    assert_eq!(g.count("orders"), 101);
    // A DELETE RETURNING within the limit returns its rows.
    let r = c.query("DELETE FROM orders WHERE id = 1000 RETURNING id");
    ok(&r, "delete returning");
    assert_eq!(rows(&r), 1);
    // Inside the client's transaction: measured under a savepoint, rolled back by the client.
    ok(&c.query("BEGIN"), "BEGIN");
    ok(&c.query("DELETE FROM orders WHERE id <= 2"), "small delete in a transaction");
    refused(&c.query("DELETE FROM orders WHERE id > 2"), "big delete in a transaction");
    c.query("ROLLBACK");
    assert_eq!(orders_state(&g), before.split(' ').next().unwrap());

    // Budgets: many small deletes add up per person and table (budget_rows = 25): eight of
    // three rows run, the ninth would pass 25 and is held like one big delete.
    for i in 0..8 {
        let (a, b) = (i * 3 + 1, i * 3 + 3);
        ok(&c.query(&format!("DELETE FROM small WHERE id BETWEEN {a} AND {b}")), "small delete");
    }
    assert_eq!(g.count("small"), 76);
    let r = c.query("DELETE FROM small WHERE id BETWEEN 25 AND 27");
    refused(&r, "the delete that passes the budget");
    assert!(errors(&r).iter().any(|e| e.contains("budget")), "{:?}", errors(&r));
    assert_eq!(g.count("small"), 76);
    // Another session of the same person shares the budget.
    let mut c2 = Raw::connect(&g, "alice", "alice-password");
    refused(&c2.query("DELETE FROM small WHERE id BETWEEN 90 AND 92"), "same person, other session");
    // The status shows what consumed it.
    let out = g.cli("alice", "alice-password", None, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used = v["budgets"]["used"].as_array().unwrap();
    let small = used.iter().find(|u| u["table"] == "public.small").expect("budget of public.small shown");
    assert_eq!(small["rows"], 24);
    assert_eq!(small["person"], "alice");
    // Restarting the gate (killed, as a crash or an insider would) hands out no fresh budget.
    drop((c, c2));
    g.restart();
    let mut c3 = Raw::connect(&g, "alice", "alice-password");
    let r = c3.query("DELETE FROM small WHERE id BETWEEN 25 AND 27");
    refused(&r, "the delete that passes the budget, after a restart");
    assert!(errors(&r).iter().any(|e| e.contains("budget")), "{:?}", errors(&r));
    assert_eq!(g.count("small"), 76);
    let _ = Duration::ZERO;
}

#[test]
fn every_statement_is_recorded_with_its_text_and_a_full_spool_lets_nothing_run() {
    // A vault that never answers: the spool only fills (300 kB allowed).
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    serve::tls::ensure_self_signed(&ca, &key).unwrap();
    std::fs::write(dir.path().join("token"), "nothing\n").unwrap();
    let g = Gate::start_with(
        &format!(
            "[audit]\nvault = \"https://127.0.0.1:9\"\nca = \"{}\"\ntoken_file = \"{}\"\nmax_pending_bytes = 300000\n",
            ca.display(),
            dir.path().join("token").display()
        ),
        POLICY,
        false,
    );
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Extended-protocol statements are recorded with their SQL text: the Parse before the
    // server sees it, the Execute with the text bound into the portal.
    ok(
        &c.exchange(&[
            parse("t", "SELECT count(*) FROM orders WHERE merchant = 3"),
            bind("pt", "t"),
            execute("pt"),
            Msg::Sync,
        ]),
        "an extended read",
    );
    let spool = || -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(g.dir.join("state/audit")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                all += &std::fs::read_to_string(p).unwrap();
            }
        }
        all
    };
    let recorded = spool();
    let lines: Vec<&str> = recorded.lines().filter(|l| l.contains("WHERE merchant = 3")).collect();
    assert!(lines.iter().any(|l| l.contains("\"parse\"")), "the Parse with its text: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("\"extended\"")), "the Execute with the bound text: {lines:?}");

    // Fill the spool: statements carrying a comment, smaller and smaller, each until the gate
    // refuses one (a record that does not fit is never written, and its statement never runs).
    let before = orders_state(&g);
    for size in [15000, 2000, 300] {
        let pad = "x".repeat(size);
        let mut refused_at = None;
        for i in 0..200 {
            let r = c.query(&format!("SELECT {i} -- {pad}"));
            if errors(&r).iter().any(|e| e.contains("audit log cannot take")) {
                refused_at = Some(i);
                break;
            }
            ok(&r, "a read while the spool has room");
        }
        assert!(refused_at.is_some(), "the spool never filled ({size})");
    }
    // Now nothing runs: reads, writes, destruction.
    let pad = "x".repeat(300);
    for sql in ["SELECT 1", "DELETE FROM orders WHERE id = 1", "DROP TABLE orders"] {
        let r = c.query(&format!("{sql} -- {pad}"));
        assert!(errors(&r).iter().any(|e| e.contains("audit log cannot take")), "{sql}: {:?}", errors(&r));
    }
    let r = c.exchange(&[parse("", &format!("SELECT 2 -- {pad}")), bind("", ""), execute(""), Msg::Sync]);
    assert!(errors(&r).iter().any(|e| e.contains("audit log cannot take")), "{:?}", errors(&r));
    assert_eq!(orders_state(&g), before);
}

/// The FunctionCall message (libpq's large-object API) is judged by the built-in it calls:
/// reads run, lo_unlink and friends wait for a second person (here: refused at once, and
/// answered, so psql's `\lo_unlink` does not hang), any other OID is held as destructive. The
/// client sees the server's BackendKeyData (pg_backend_pid() and a NOTIFY's pid agree with it)
/// and a CancelRequest reaches only the session whose pid AND secret it names.
#[test]
fn function_calls_are_judged_and_cancels_reach_only_their_own_session() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "SELECT lo_from_bytea(424242, 'keep me'); ALTER LARGE OBJECT 424242 OWNER TO gate_app;
         CREATE FUNCTION wipe() RETURNS int LANGUAGE sql AS 'DELETE FROM orders RETURNING 1';
         GRANT EXECUTE ON FUNCTION wipe() TO gate_app;",
    )
    .unwrap();
    let wipe_oid: u32 = g.pg.psql("SELECT 'wipe'::regproc::oid").unwrap().parse().unwrap();
    let before = orders_state(&g);
    let lo_exists = || g.pg.psql("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 424242").unwrap();
    let mut a = Raw::connect(&g, "alice", "alice-password");
    // lo_open(424242, INV_READ) and loread: run, the bytes come back.
    let text_arg = |s: &str| Some(s.as_bytes().to_vec());
    let r = a.exchange(&[q("BEGIN")]);
    ok(&r, "BEGIN");
    let r = a.exchange(&[Msg::FunctionCall { oid: 952, args: vec![text_arg("424242"), text_arg("262144")] }]);
    ok(&r, "lo_open");
    let fd = r.iter().find(|m| m.tag == b'V').expect("a FunctionCallResponse").body[4..].to_vec();
    let r = a.exchange(&[Msg::FunctionCall { oid: 954, args: vec![Some(fd.clone()), text_arg("100")] }]);
    ok(&r, "loread");
    let v = r.iter().find(|m| m.tag == b'V').expect("a FunctionCallResponse");
    // bytea in text format: hex of "keep me".
    assert!(String::from_utf8_lossy(&v.body).contains("6b656570206d65"), "{v:?}");
    ok(&a.exchange(&[q("COMMIT")]), "COMMIT");
    // lo_unlink and lowrite: refused (nobody can approve), answered with ReadyForQuery.
    let r = a.exchange(&[Msg::FunctionCall { oid: 964, args: vec![text_arg("424242")] }]);
    refused(&r, "lo_unlink by FunctionCall");
    assert!(errors(&r).iter().any(|e| e.contains("lo_unlink")), "{:?}", errors(&r));
    // A user function called by OID: held as destructive, it does not run.
    let r = a.exchange(&[Msg::FunctionCall { oid: wipe_oid, args: vec![] }]);
    refused(&r, "a user function by FunctionCall");
    assert!(errors(&r).iter().any(|e| e.contains(&format!("OID {wipe_oid}"))), "{:?}", errors(&r));
    assert_eq!(orders_state(&g), before);
    assert_eq!(lo_exists(), "1");
    // psql's \lo_unlink (libpq's lo_unlink, a FunctionCall): refused, and psql ends.
    let out = std::process::Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo("alice", "require"))
        .args(["-X", "-c", "\\lo_unlink 424242"])
        .env("PGPASSWORD", "alice-password")
        .output()
        .unwrap();
    assert!(text(&out).contains("holdfast gate") && text(&out).contains("lo_unlink"), "{}", text(&out));
    assert_eq!(lo_exists(), "1");

    // BackendKeyData: the server's own pid.
    let r = a.query("SELECT pg_backend_pid()");
    let pid: i32 = data_text(&r).parse().unwrap();
    assert_eq!(pid, a.backend_pid, "pg_backend_pid() is the pid the gate announced");
    let r = a.query("LISTEN ch; NOTIFY ch, 'hi'");
    let n = r.iter().find(|m| m.tag == b'A').expect("a NotificationResponse");
    assert_eq!(i32::from_be_bytes([n.body[0], n.body[1], n.body[2], n.body[3]]), a.backend_pid);

    // Cancels: a wrong secret, and bob's own key, leave alice's query running; hers stops it.
    let mut b = Raw::connect(&g, "bob", "bob-password");
    a.send(&[q("SELECT pg_sleep(60)")]);
    let running = || {
        g.pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active' AND query LIKE '%pg_sleep(60)%'"
        ))
        .unwrap()
    };
    let deadline = std::time::Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    while running() != "1" {
        assert!(std::time::Instant::now() < deadline, "alice's query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut wrong = a.backend_key.clone();
    wrong[0] ^= 0xff;
    cancel(&g, a.backend_pid, &wrong);
    cancel(&g, b.backend_pid, &b.backend_key);
    cancel(&g, a.backend_pid.wrapping_add(1), &a.backend_key);
    // Bob's session is idle: its own cancel changes nothing there either.
    ok(&b.query("SELECT 1"), "bob after his own cancel");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        running(),
        "1",
        "a cancel with the wrong secret or another session's key stopped alice's query"
    );
    let started = std::time::Instant::now();
    cancel(&g, a.backend_pid, &a.backend_key);
    let r = a.until_ready(1);
    assert!(errors(&r).iter().any(|e| e.contains("canceling statement")), "{:?}", errors(&r));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(orders_state(&g), before);
}

/// The text of the first column of the first DataRow.
fn data_text(r: &[Reply]) -> String {
    let d = r.iter().find(|m| m.tag == b'D').expect("a DataRow");
    let len = i32::from_be_bytes([d.body[2], d.body[3], d.body[4], d.body[5]]) as usize;
    String::from_utf8_lossy(&d.body[6..6 + len]).into_owned()
}

/// A measured write kept inside the client's transaction has its savepoint released ahead of
/// the client's next message (in the same flight), not before the client hears back: whatever
/// comes next — an extended-protocol batch, a write over the limit, the client's own savepoints,
/// COMMIT — sees exactly the answers and the rows it would without the deferral.
#[test]
fn a_kept_write_is_released_with_the_next_message_and_rollbacks_stay_exact() {
    let g = Gate::start_with("", "row_guard_max_rows = 10\nbudget_rows = 1000000\n", false);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let count = |c: &mut Raw| {
        let r = c.query("SELECT count(*) FROM orders");
        ok(&r, "count");
        data_text(&r)
    };
    assert_eq!(count(&mut c), "100");
    ok(&c.query("BEGIN"), "BEGIN");
    let r = c.query("DELETE FROM orders WHERE id <= 2");
    ok(&r, "kept write");
    assert_eq!(r.last().map(|m| m.body.clone()), Some(b"T".to_vec()), "still in the transaction");
    // Next, an extended-protocol batch: its answers are its own, none of the RELEASE's.
    let r = c.exchange(&[parse("", "SELECT count(*) FROM orders"), bind("", ""), execute(""), Msg::Sync]);
    ok(&r, "extended batch after a kept write");
    assert_eq!(data_text(&r), "98");
    assert_eq!(r.iter().filter(|m| m.tag == b'Z').count(), 1, "{r:?}");
    assert_eq!(r.iter().filter(|m| m.tag == b'C').count(), 1, "{r:?}");
    // Two kept writes in a row, then one over the limit: refused (which, like the server's own
    // errors, aborts the client's transaction), and nothing of it stays.
    ok(&c.query("DELETE FROM orders WHERE id BETWEEN 3 AND 4"), "kept write");
    assert_eq!(count(&mut c), "96");
    refused(&c.query("DELETE FROM orders WHERE id > 4"), "over the limit");
    c.query("ROLLBACK");
    assert_eq!(g.count("orders"), 100);
    // Kept writes, the client's own savepoint around one: rolled back exactly to it.
    ok(&c.query("BEGIN"), "BEGIN");
    ok(&c.query("DELETE FROM orders WHERE id <= 4"), "kept write");
    ok(&c.query("UPDATE orders SET total = 0 WHERE id = 5"), "kept write");
    ok(&c.query("SAVEPOINT mine"), "SAVEPOINT");
    ok(&c.query("DELETE FROM orders WHERE id = 6"), "kept write");
    ok(&c.query("ROLLBACK TO SAVEPOINT mine"), "ROLLBACK TO");
    assert_eq!(count(&mut c), "96");
    ok(&c.query("DELETE FROM orders WHERE id = 7"), "kept write");
    let r = c.query("COMMIT");
    ok(&r, "COMMIT");
    assert_eq!(r.last().map(|m| m.body.clone()), Some(b"I".to_vec()));
    assert_eq!(g.count("orders"), 95);
    assert_eq!(g.pg.psql("SELECT total FROM orders WHERE id = 5").unwrap(), "0");
    // The same through the extended protocol: a kept write's RELEASE goes to the server with
    // the client's answers on their way back, not in a round trip of its own; none of its
    // answers reach the client, and the next write in the same batch is measured after it.
    ok(&c.query("BEGIN"), "BEGIN");
    let r = c.exchange(&[
        parse("", "DELETE FROM orders WHERE id = 9"),
        bind("", ""),
        execute(""),
        parse("", "DELETE FROM orders WHERE id = 10"),
        bind("", ""),
        execute(""),
        parse("", "SELECT count(*) FROM orders"),
        bind("", ""),
        execute(""),
        Msg::Sync,
    ]);
    ok(&r, "two kept extended-protocol writes and a read in one batch");
    assert_eq!(data_text(&r), "93");
    for (tag, n) in [(b'1', 3), (b'2', 3), (b'C', 3), (b'Z', 1)] {
        assert_eq!(r.iter().filter(|m| m.tag == tag).count(), n, "{:?}: {r:?}", tag as char);
    }
    let r =
        c.exchange(&[parse("", "DELETE FROM orders WHERE id > 10"), bind("", ""), execute(""), Msg::Sync]);
    refused(&r, "an extended-protocol write over the limit");
    c.query("ROLLBACK");
    assert_eq!(g.count("orders"), 95);
    // A kept write and then the session ends: the server ends the transaction (rolled back).
    ok(&c.query("BEGIN"), "BEGIN");
    ok(&c.query("DELETE FROM orders WHERE id = 8"), "kept write");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(g.count("orders"), 95);
}

/// The row guard's counters read is prepared once per server connection under a `holdfast_`
/// name. A client can neither close it, nor parse over it, nor make the gate trust a
/// replacement: DEALLOCATE ALL and DISCARD ALL make the gate prepare it again, and a statement
/// that swaps in a `PREPARE` of its own returning made-up counters (through dynamic SQL the
/// gate cannot see) is held, so the rows it deleted come back.
#[test]
fn the_gates_prepared_counters_read_cannot_be_closed_dropped_or_replaced() {
    let g = Gate::start_with("", "row_guard_max_rows = 10\nbudget_rows = 1000000\n", false);
    // An application's helper that runs SQL it is given (executable by everyone).
    g.pg.psql(
        "CREATE FUNCTION run_sql(q text) RETURNS int LANGUAGE plpgsql AS $$BEGIN EXECUTE q; RETURN 1; END$$",
    )
    .unwrap();
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let kept = |c: &mut Raw, id: i64, what: &str| {
        let left = g.count("orders");
        ok(&c.query(&format!("DELETE FROM orders WHERE id = {id}")), what);
        assert_eq!(g.count("orders"), left - 1, "{what}");
    };
    let over = |c: &mut Raw, what: &str| {
        let before = orders_state(&g);
        refused(&c.query("DELETE FROM orders WHERE id > 50"), what);
        let r = c.exchange(&[
            parse("", "DELETE FROM orders WHERE id > 50"),
            bind("", ""),
            execute(""),
            Msg::Sync,
        ]);
        refused(&r, what);
        assert_eq!(orders_state(&g), before, "{what}");
    };
    kept(&mut c, 1, "first measured write (prepares the read)");
    over(&mut c, "over the limit");
    // Close and Parse of the gate's name: refused; the guard works as before.
    let name = "holdfast_row_guard_snapshot";
    refused(&c.exchange(&[Msg::CloseStatement(name.into()), Msg::Sync]), "Close of the gate's statement");
    refused(&c.exchange(&[Msg::ClosePortal("holdfast_p".into()), Msg::Sync]), "Close of the gate's portal");
    refused(&c.exchange(&[parse(name, "SELECT -1::int8, ''::text, 0::int8, 0::int8"), Msg::Sync]), "Parse");
    over(&mut c, "after a Close and a Parse of the gate's name");
    kept(&mut c, 2, "kept after a Close and a Parse of the gate's name");
    // DEALLOCATE ALL and DISCARD ALL drop it: prepared again, the client sees no error.
    ok(&c.query("DEALLOCATE ALL"), "DEALLOCATE ALL");
    kept(&mut c, 3, "kept after DEALLOCATE ALL");
    over(&mut c, "after DEALLOCATE ALL");
    ok(&c.query("DISCARD ALL"), "DISCARD ALL");
    kept(&mut c, 4, "kept after DISCARD ALL");
    over(&mut c, "after DISCARD ALL");
    ok(
        &c.exchange(&[
            parse("", "DEALLOCATE ALL"),
            bind("", ""),
            execute(""),
            parse("", "DELETE FROM orders WHERE id = 5"),
            bind("", ""),
            execute(""),
            Msg::Sync,
        ]),
        "DEALLOCATE ALL and a write in one extended batch",
    );
    assert_eq!(g.count("orders"), 95);
    // A statement that deletes 60 rows and swaps the gate's read for one of its own that
    // reports nothing changed: held (refused here), nothing deleted — both protocols.
    let swap = format!(
        "SELECT run_sql('DELETE FROM orders WHERE id > 40'), run_sql('DEALLOCATE {name}'), \
         run_sql('PREPARE {name} AS SELECT -1::int8, ''''::text, 0::int8, 0::int8')"
    );
    let before = orders_state(&g);
    refused(&c.query(&swap), "a write that replaces the gate's read");
    assert_eq!(orders_state(&g), before);
    // The made-up statement survives the rollback (PREPARE is not transactional): the gate
    // replaces it before its next read.
    over(&mut c, "after a replacement");
    let r = c.exchange(&[parse("", &swap), bind("", ""), execute(""), Msg::Sync]);
    refused(&r, "a write that replaces the gate's read (extended)");
    assert_eq!(orders_state(&g), before);
    over(&mut c, "after a replacement (extended)");
    kept(&mut c, 6, "kept after the replacements");
}

/// A statement the audit spool cannot take is refused, and what the client is told names the
/// kind of failure only: not the spool's directory, not the vault's address, not the gate's
/// database login or the database's address (those go to the gate's log). Nothing runs.
#[test]
fn a_full_spool_refuses_without_telling_the_client_the_gates_internals() {
    // A vault that is never reachable (loopback, nothing listens) and the smallest spool the
    // gate accepts (one largest record: 256 KiB).
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    serve::tls::ensure_self_signed(&ca, &key).unwrap();
    std::fs::write(dir.path().join("token"), "nothing\n").unwrap();
    let vault = "127.0.0.9:1";
    let g = Gate::start_with(
        &format!(
            "[audit]\nvault = \"https://{vault}\"\nca = \"{}\"\ntoken_file = \"{}\"\nmax_pending_bytes = 262144\n",
            ca.display(),
            dir.path().join("token").display()
        ),
        POLICY,
        false,
    );
    let scratch = || g.pg.psql("SELECT count(*) FROM scratch").unwrap();
    let (orders, rows) = (orders_state(&g), scratch());
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let mut told: Vec<Reply> = Vec::new();
    // Filled with reads, smaller and smaller, each size until the gate refuses one: at the end
    // not even the smallest statement's record fits.
    for size in [16_000, 2_000, 300, 0] {
        let pad = "x".repeat(size);
        let filled = (0..40).any(|i| {
            let r = c.query(&format!("SELECT {i} -- {pad}"));
            let refused = errors(&r).iter().any(|e| e.contains("audit log cannot take"));
            told.extend(r);
            refused
        });
        assert!(filled, "the 256 KiB spool never filled ({size})");
    }
    // Writes the guard would let run at once, through both protocols: refused, and not run.
    for sql in ["DELETE FROM scratch WHERE id = 1", "INSERT INTO orders VALUES (1000, 1, 1)"] {
        let r = c.query(sql);
        assert!(errors(&r).iter().any(|e| e.contains("audit log cannot take")), "{sql}: {:?}", errors(&r));
        told.extend(r);
        let r = c.exchange(&[parse("", sql), bind("", ""), execute(""), Msg::Sync]);
        assert!(errors(&r).iter().any(|e| e.contains("audit log cannot take")), "{sql}: {:?}", errors(&r));
        told.extend(r);
    }
    assert_eq!((orders_state(&g), scratch()), (orders, rows), "nothing ran");

    // Every byte the client got back (messages, details, hints, notices), as text.
    let all: String = told.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    assert!(all.contains("the audit spool is full"), "the client learns the kind of failure: {all}");
    // As the gate's condition (insufficient_resources), not as a permission an approver could
    // lift: no "ask an approver" hint.
    assert!(all.contains("C53000\0") && !all.contains("C42501\0"), "SQLSTATE 53000: {all:?}");
    assert!(!all.contains("ask an approver"), "{all}");
    let secrets = [
        ("the spool's directory", g.dir.join("state/audit").display().to_string()),
        ("the gate's state directory", g.dir.display().to_string()),
        ("the audit token's directory", dir.path().display().to_string()),
        ("the vault's address", vault.to_string()),
        ("the gate's database login", "gate_app".to_string()),
        ("the database's socket directory", g.pg.socket_dir().display().to_string()),
        ("the database's port", format!("port {}", g.pg.port())),
        ("the database's socket", ".s.PGSQL".to_string()),
    ];
    for (what, s) in secrets {
        assert!(!all.contains(&s), "the client was told {what} ({s}): {all}");
    }
}

/// One record per statement while statements keep coming: how a statement ended (its command
/// tags, rows, error) goes into the session's next `statement` record as `done`, written and
/// fsynced before that next statement runs; the last one, with no statement after it, is
/// written as a `statement_done` record of its own moments later. Nothing is lost either way.
#[test]
fn a_statements_outcome_rides_in_the_next_record_or_is_written_on_its_own() {
    let g = Gate::start_with("", POLICY, false);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Sent in one flight, so each next statement is waiting in the gate when the one before
    // it ends (a client slower than 10 ms gets its outcomes written on their own instead).
    c.send(&[q("SELECT 101"), q("SELECT 1/0"), q("SELECT 103")]);
    let r = c.until_ready(3);
    assert_eq!(errors(&r).len(), 1, "only the second statement fails: {:?}", errors(&r));
    let spool = g.dir.join("state/audit");
    let records = || audit::spool::read_spool(&spool).unwrap();
    let statement = |recs: &[audit::Record], sql: &str| {
        recs.iter()
            .find(|r| r.event.kind == audit::EventKind::Statement && r.event.detail["sql"] == sql)
            .unwrap_or_else(|| panic!("no statement record of {sql}"))
            .event
            .detail
            .clone()
    };
    let recs = records();
    let second = statement(&recs, "SELECT 1/0");
    let all: Vec<String> = recs.iter().map(|r| format!("{} {}", r.event.kind, r.event.detail)).collect();
    assert_eq!(second["done"].as_array().map(Vec::len), Some(1), "{second}\n{}", all.join("\n"));
    assert_eq!(second["done"][0]["sql"], "SELECT 101");
    assert_eq!(second["done"][0]["tags"], serde_json::json!(["SELECT 1"]));
    let third = statement(&recs, "SELECT 103");
    assert_eq!(third["done"][0]["sql"], "SELECT 1/0");
    assert_eq!(third["done"][0]["error"], "division by zero");
    // Folded outcomes are not written twice.
    let own = |recs: &[audit::Record], sql: &str| {
        recs.iter()
            .filter(|r| r.event.kind == audit::EventKind::StatementDone && r.event.detail["sql"] == sql)
            .count()
    };
    assert_eq!(own(&recs, "SELECT 101") + own(&recs, "SELECT 1/0"), 0);
    // The last statement's outcome: on its own once nothing follows it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let recs = records();
        if let Some(r) = recs.iter().find(|r| {
            r.event.kind == audit::EventKind::StatementDone && r.event.detail["sql"] == "SELECT 103"
        }) {
            assert_eq!(r.event.detail["tags"], serde_json::json!(["SELECT 1"]));
            assert_eq!(r.event.person.as_deref(), Some("alice"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the last outcome was never written");
        std::thread::sleep(Duration::from_millis(50));
    }
}
