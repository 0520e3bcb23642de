//! The gate attacked where the row guard cannot see: a function that may write (the
//! application's own, which the guard does not know) run by a statement the gate does not
//! measure, or planted — in a view, a default, a CHECK, a row-level security policy, a foreign
//! key's cascade, an inheritance — where later statements run it unmeasured. A real PostgreSQL behind the real
//! gate, the database itself as the oracle (rows counted before and after), the audit spool as
//! the witness. Bob is no approver here, so anything that needs approval is refused at once.

mod gate_harness;
use gate_harness::*;

const POLICY: &str = "row_guard_max_rows = 10\nbudget_rows = 25\n";

/// Row count and a checksum of `orders`, and the rows of `scratch`, read directly.
fn state(g: &Gate) -> String {
    g.pg.psql(
        "SELECT (SELECT count(*) || '/' || coalesce(sum(total * id), 0) FROM orders) || ' ' || (SELECT count(*) FROM scratch)",
    )
    .unwrap()
}

fn refused(r: &[Reply], what: &str) {
    let e = errors(r);
    assert!(
        e.iter().any(|m| m.starts_with("holdfast gate:") && m.contains("not run")),
        "{what}: expected the gate to hold it, got errors {e:?}"
    );
}

#[test]
fn functions_that_may_write_run_only_where_measured_and_planted_ones_are_held() {
    let g = Gate::start_with("", POLICY, false);
    // The application's own objects, made by its owner (not through the gate): a function that
    // deletes every order, one in another schema named like a built-in, a small lookup table.
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS bigint LANGUAGE sql AS 'WITH d AS (DELETE FROM orders WHERE id > 0 RETURNING 1) SELECT count(*) FROM d';
         CREATE SCHEMA app; GRANT USAGE ON SCHEMA app TO gate_app;
         CREATE FUNCTION app.lower(text) RETURNS text LANGUAGE sql AS 'WITH d AS (DELETE FROM orders WHERE id > 0 RETURNING 1) SELECT count(*)::text FROM d';
         CREATE TABLE m (id int PRIMARY KEY); INSERT INTO m SELECT g FROM generate_series(1, 20) g; GRANT ALL ON m TO gate_app;
         CREATE TABLE expired (id int); ALTER TABLE expired OWNER TO gate_app;",
    )
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Each of these destroyed every order before the guard held them (found by playing them
    // against this gate: the statement ran, nothing was measured, `orders` was empty).
    for attack in [
        "EXPLAIN ANALYZE SELECT purge()",
        "CREATE TABLE t1 AS SELECT purge()",
        "SELECT purge() INTO t2",
        "CREATE MATERIALIZED VIEW mv AS SELECT purge()",
        "SELECT set_config('search_path', 'public', false), purge()",
        // planted: later reads, casts and ALTER TABLEs would run it
        "CREATE VIEW v AS SELECT purge() AS n",
        "CREATE DOMAIN d AS bigint CHECK (purge() >= 0)",
        "CREATE POLICY p ON scratch USING (purge() >= 0)",
        "ALTER TABLE scratch ADD COLUMN z bigint DEFAULT purge()",
        "ALTER TABLE scratch ADD CONSTRAINT ck CHECK (purge() >= 0)",
        // planted: a later DELETE on m (the application's, straight to the database) would
        // delete rows of scratch
        "ALTER TABLE scratch ADD FOREIGN KEY (id) REFERENCES m (id) ON DELETE CASCADE NOT VALID",
        // planted: the application's `DELETE FROM expired` would reach scratch's rows
        "ALTER TABLE scratch INHERIT expired",
    ] {
        let r = c.query(attack);
        refused(&r, attack);
        assert_eq!(state(&g), before, "{attack}");
    }
    // A WITH HOLD cursor runs the rest of its query at COMMIT, unmeasured: held at DECLARE.
    assert!(errors(&c.query("BEGIN")).is_empty());
    refused(&c.query("DECLARE hc CURSOR WITH HOLD FOR SELECT purge()"), "a WITH HOLD cursor");
    c.query("COMMIT");
    assert_eq!(state(&g), before, "WITH HOLD cursor");
    // Without HOLD the query runs at FETCH, which is measured: 100 orders is over the limit.
    assert!(errors(&c.query("BEGIN")).is_empty());
    assert!(errors(&c.query("DECLARE fc CURSOR FOR SELECT purge()")).is_empty());
    refused(&c.query("FETCH ALL FROM fc"), "FETCH from a cursor over purge()");
    c.query("ROLLBACK");
    assert_eq!(state(&g), before, "FETCH");
    // What destroys nothing still runs: the same kinds over built-ins, and a key without a cascade.
    for sql in [
        "CREATE TABLE t3 AS SELECT id, lower('X') AS x FROM orders WHERE id < 5",
        "CREATE VIEW v2 AS SELECT id, upper('y') FROM orders",
        "EXPLAIN ANALYZE SELECT count(*) FROM orders",
        "ALTER TABLE scratch ADD CONSTRAINT ck2 CHECK (id > 0)",
    ] {
        let r = c.query(sql);
        assert!(errors(&r).is_empty(), "{sql}: {:?}", errors(&r));
    }
    assert_eq!(state(&g), before);
    // A search_path that puts the application's schema first makes lower() its function: the
    // SELECT is measured like any unknown function (it used to run unmeasured).
    assert!(errors(&c.query("SET search_path = app, pg_catalog, public")).is_empty());
    refused(&c.query("SELECT lower('A')"), "lower() resolving to app.lower()");
    assert_eq!(state(&g), before, "app.lower()");
    // (From then on the guard counts this session's unqualified built-ins as unknown functions,
    // RESET or not.)
    assert!(errors(&c.query("RESET search_path")).is_empty());
    // The application deletes a row of m directly: no foreign key was planted, nothing cascades.
    // The application cleans up directly: no foreign key or inheritance was planted, nothing
    // reaches scratch.
    g.pg.psql("DELETE FROM m WHERE id = 1; DELETE FROM expired; TRUNCATE expired").unwrap();
    assert_eq!(state(&g), before, "after the application's own DELETE on m and expired");
    // The audit log says what was tried, by whom, and why it was held.
    let mut spool = String::new();
    for e in std::fs::read_dir(g.dir.join("state/audit")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            spool += &std::fs::read_to_string(p).unwrap();
        }
    }
    let held: Vec<&str> = spool.lines().filter(|l| l.contains("EXPLAIN ANALYZE SELECT purge()")).collect();
    assert!(
        held.iter().any(|l| l.contains("alice") && l.contains("cannot count the rows")),
        "the audit record of the EXPLAIN ANALYZE: {held:?}"
    );
}

/// A TRUNCATE or DROP inside a function changes no row counter; the gate sees it by the ACCESS
/// EXCLUSIVE lock it takes. Taking that lock first (`LOCK TABLE … IN ACCESS EXCLUSIVE MODE`,
/// a write that changes nothing) used to hide it: the function then took no *new* lock on a
/// table without an index or TOAST table, and the emptied table was kept. The gate now also
/// compares the file (relfilenode) of every relation it holds exclusively, and counts changed
/// columns (a DROP COLUMN changes no file).
#[test]
fn a_truncate_or_drop_in_a_function_is_seen_when_the_table_was_locked_first() {
    let g = Gate::start_with("", POLICY, false);
    // The application's maintenance functions (SECURITY DEFINER, owned by the superuser) and a
    // table of integers only: no index, no TOAST table.
    g.pg.psql(
        "CREATE TABLE cards (id int, balance bigint);
         INSERT INTO cards SELECT g, 100 FROM generate_series(1, 50) g;
         GRANT ALL ON cards TO gate_app;
         CREATE FUNCTION reset_cards() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'TRUNCATE cards';
         CREATE FUNCTION drop_cards() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DROP TABLE cards';
         CREATE FUNCTION drop_balance() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'ALTER TABLE cards DROP COLUMN balance';",
    )
    .unwrap();
    let cards = |g: &Gate| {
        g.pg.psql("SELECT count(*) FROM pg_class WHERE relname = 'cards'").unwrap()
            + "/"
            + &g.pg.psql("SELECT coalesce(sum(balance), 0) FROM cards").unwrap_or_default()
    };
    let before = cards(&g);
    assert_eq!(before, "1/5000");
    let mut c = Raw::connect(&g, "alice", "alice-password");
    for f in ["reset_cards", "drop_cards", "drop_balance"] {
        // Without the lock first: held, as before.
        refused(&c.query(&format!("SELECT {f}()")), f);
        assert_eq!(cards(&g), before, "{f}");
        // With the lock taken first, in the client's transaction.
        assert!(errors(&c.query("BEGIN")).is_empty());
        assert!(errors(&c.query("LOCK TABLE cards IN ACCESS EXCLUSIVE MODE")).is_empty());
        refused(&c.query(&format!("SELECT {f}()")), &format!("{f} after LOCK"));
        c.query("COMMIT");
        assert_eq!(cards(&g), before, "{f} after LOCK");
    }
    // pgbench -i's pattern still runs: TRUNCATE of an empty table (probed), then writes in the
    // same transaction, which change no file the transaction holds exclusively.
    g.pg.psql("CREATE TABLE fresh (id int PRIMARY KEY, v int); GRANT ALL ON fresh TO gate_app").unwrap();
    assert!(errors(&c.query("BEGIN")).is_empty());
    let r = c.query("TRUNCATE fresh");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    let r = c.query("INSERT INTO fresh VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET v = 2");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    let r = c.query("UPDATE fresh SET v = 3 WHERE id = 1");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert!(errors(&c.query("COMMIT")).is_empty());
    assert_eq!(g.pg.psql("SELECT v FROM fresh").unwrap(), "3");
}

/// The counters read looks at the session's ACCESS EXCLUSIVE locks (`pg_locks`, costly under
/// many sessions) only where the database has a foreign table or the transaction is not READ
/// COMMITTED; a TRUNCATE or DROP of a local relation is seen by the `pg_class` row it writes.
/// A TRUNCATE of a foreign table writes no local catalog row — the rows live on another server
/// — so inside a function it is seen by its lock alone: held, in an explicit transaction and
/// out of one, and a local TRUNCATE in a function is held the same in a REPEATABLE READ
/// transaction (where the read does look at the locks).
#[test]
fn a_truncate_of_a_foreign_table_inside_a_function_is_held() {
    let g = Gate::start_with("", POLICY, false);
    // The "other server" is this cluster's database `ledgers`, reached through postgres_fdw
    // as its own login; the application's SECURITY DEFINER maintenance function truncates the
    // foreign table.
    g.pg.psql("CREATE ROLE ledger_owner LOGIN PASSWORD 'ledger-secret'").unwrap();
    g.pg.psql("CREATE DATABASE ledgers OWNER ledger_owner").unwrap();
    g.pg.psql_db(
        "ledgers",
        "SET ROLE ledger_owner; CREATE TABLE ledger (id int, amount bigint);
         INSERT INTO ledger SELECT g, 10 FROM generate_series(1, 40) g;",
    )
    .unwrap();
    g.pg.psql(&format!(
        "CREATE EXTENSION postgres_fdw;
         CREATE SERVER ledgers FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '{}', port '{}', dbname 'ledgers');
         CREATE USER MAPPING FOR CURRENT_USER SERVER ledgers OPTIONS (user 'ledger_owner', password 'ledger-secret');
         CREATE FOREIGN TABLE ext_ledger (id int, amount bigint) SERVER ledgers OPTIONS (table_name 'ledger');
         CREATE FUNCTION clear_ledger() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'TRUNCATE ext_ledger';
         CREATE TABLE cards (id int, balance bigint);
         INSERT INTO cards SELECT g, 100 FROM generate_series(1, 50) g;
         GRANT ALL ON cards TO gate_app;
         CREATE FUNCTION reset_cards() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'TRUNCATE cards';",
        g.pg.socket_dir().display(),
        g.pg.port()
    ))
    .unwrap();
    let ledger = |g: &Gate| g.pg.psql_db("ledgers", "SELECT count(*) FROM ledger").unwrap();
    assert_eq!(ledger(&g), "40");
    let mut c = Raw::connect(&g, "alice", "alice-password");
    refused(&c.query("SELECT clear_ledger()"), "a foreign TRUNCATE in a function");
    assert_eq!(ledger(&g), "40");
    assert!(errors(&c.query("BEGIN")).is_empty());
    refused(&c.query("SELECT clear_ledger()"), "a foreign TRUNCATE in a function, in a transaction");
    c.query("ROLLBACK");
    assert_eq!(ledger(&g), "40");
    // No foreign table left: a local TRUNCATE in a function is held by its pg_class row, in a
    // REPEATABLE READ transaction too.
    g.pg.psql("DROP FOREIGN TABLE ext_ledger").unwrap();
    for begin in ["BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"] {
        assert!(errors(&c.query(begin)).is_empty());
        refused(&c.query("SELECT reset_cards()"), begin);
        c.query("ROLLBACK");
    }
    refused(&c.query("SELECT reset_cards()"), "reset_cards outside a transaction");
    assert_eq!(g.pg.psql("SELECT count(*) FROM cards").unwrap(), "50");
    // A foreign table made after a REPEATABLE READ transaction took its snapshot: the
    // transaction's reads cannot see it, its statements can (names are looked up in the
    // catalogs as they are now).
    assert!(errors(&c.query("BEGIN ISOLATION LEVEL REPEATABLE READ")).is_empty());
    assert!(errors(&c.query("SELECT count(*) FROM cards")).is_empty());
    g.pg.psql("CREATE FOREIGN TABLE ext_ledger (id int, amount bigint) SERVER ledgers OPTIONS (table_name 'ledger')")
        .unwrap();
    refused(&c.query("SELECT clear_ledger()"), "a foreign table newer than the snapshot");
    c.query("ROLLBACK");
    assert_eq!(ledger(&g), "40");
}

/// Large objects are rows of system catalogs (`pg_largeobject_metadata`, `pg_largeobject`),
/// which the row guard's per-table counters left out: `lo_unlink` called by the application's
/// own function (not by name, which is held) removed every large object with nothing counted.
/// They are counted now like any table's rows, against the same limits and budgets.
#[test]
fn large_objects_removed_inside_a_function_are_counted() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "SELECT pg_catalog.lo_from_bytea(0, pg_catalog.convert_to(g::text, 'UTF8')) FROM generate_series(1, 30) g;
         CREATE FUNCTION forget_file(o oid) RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT pg_catalog.lo_unlink(o)';",
    )
    .unwrap();
    let los = |g: &Gate| g.pg.psql("SELECT count(*) FROM pg_largeobject_metadata").unwrap();
    assert_eq!(los(&g), "30");
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // By name: held, as before.
    refused(&c.query("SELECT lo_unlink(oid) FROM pg_largeobject_metadata"), "lo_unlink by name");
    // Through the application's function: 30 large objects is over the limit of 10.
    let r = c.query("SELECT forget_file(oid) FROM pg_largeobject_metadata");
    refused(&r, "lo_unlink inside a function");
    assert_eq!(los(&g), "30");
    // One is within the limit, and the audit's outcome counts it.
    let r = c.query("SELECT forget_file(oid) FROM pg_largeobject_metadata ORDER BY oid LIMIT 1");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(los(&g), "29");
}

/// COPY FROM STDIN into a table whose trigger (the application's, made before the gate)
/// deletes elsewhere: the gate did not measure COPY at all ("inserts destroy nothing"), so one
/// COPY of 100 order ids emptied `orders` through the trigger with nothing counted — in the
/// simple protocol (psql's `\copy`) and in the extended one (Parse/Bind/Execute, the COPY's
/// data, Sync). COPY FROM STDIN is now measured like any write: savepoint and counters before,
/// the client's data streamed through, counters after; over the limits it is rolled back and
/// refused (its data is gone by then: it cannot wait for approval). Through the extended
/// protocol it is held (it cannot be measured there). Within the limits it runs, plain
/// COPY into a table without triggers changes nothing and runs, and a client that sends
/// another message in the middle of its COPY ends the COPY (failed) and nothing is lost.
#[test]
fn copy_from_stdin_is_measured_and_a_trigger_that_deletes_cannot_empty_a_table() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE TABLE cancellations (order_id int);
         CREATE FUNCTION cancel_order() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS
           'BEGIN DELETE FROM orders WHERE id = NEW.order_id; RETURN NEW; END';
         CREATE TRIGGER cancel AFTER INSERT ON cancellations FOR EACH ROW EXECUTE FUNCTION cancel_order();
         GRANT ALL ON cancellations TO gate_app;",
    )
    .unwrap();
    let orders = |g: &Gate| g.count("orders");
    assert_eq!(orders(&g), 100);
    let all: Vec<u8> = (1..=100).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Simple protocol, outside a transaction and inside the client's own.
    for txn in [false, true] {
        if txn {
            assert!(errors(&c.query("BEGIN")).is_empty());
        }
        c.send(&[q("COPY cancellations FROM STDIN")]);
        c.until(b'G', 1);
        c.send(&[Msg::CopyData(all[..150].to_vec()), Msg::CopyData(all[150..].to_vec()), Msg::CopyDone]);
        let r = c.until_ready(1);
        refused(&r, "COPY into a table whose trigger deletes every order");
        if txn {
            c.query("ROLLBACK");
        }
        assert_eq!(orders(&g), 100, "simple protocol, in a transaction: {txn}");
    }
    // Extended protocol (Parse/Bind/Execute, the data, Sync): it cannot be measured there, so
    // it is held (refused here: nobody can approve) before the server starts the COPY.
    c.send(&[parse("", "COPY cancellations FROM STDIN"), bind("", ""), execute(""), Msg::Sync]);
    let r = c.until_ready(1);
    refused(&r, "extended-protocol COPY into the trigger's table");
    assert_eq!(orders(&g), 100, "extended protocol");
    // COPY … FREEZE cannot be measured (it needs its table created or truncated in the current
    // subtransaction, and the gate's savepoint is a new one): held before the server sees it —
    // the gate's refusal, not the server's "cannot perform COPY FREEZE" (an empty table's
    // TRUNCATE first, as FREEZE needs, is itself held here: this one has held rows).
    assert!(errors(&c.query("BEGIN")).is_empty());
    c.send(&[q("COPY cancellations FROM STDIN WITH (FREEZE)")]);
    let r = c.until_ready(1);
    refused(&r, "COPY … FREEZE into the trigger's table");
    c.query("ROLLBACK");
    assert_eq!(orders(&g), 100, "COPY … FREEZE");
    // Within the limits: three orders cancelled, kept.
    c.send(&[q("COPY cancellations FROM STDIN")]);
    c.until(b'G', 1);
    c.send(&[Msg::CopyData(b"1\n2\n3\n".to_vec()), Msg::CopyDone]);
    let r = c.until_ready(1);
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert!(r.iter().any(|m| m.tag == b'C' && m.body.starts_with(b"COPY 3")), "{r:?}");
    assert_eq!(orders(&g), 97);
    // A plain COPY into a table without triggers changes nothing: any number of rows run.
    c.send(&[q("COPY scratch FROM STDIN")]);
    c.until(b'G', 1);
    c.send(&[Msg::CopyData(all.clone()), Msg::CopyDone]);
    let r = c.until_ready(1);
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(g.count("scratch"), 120);
    // Another message in the middle of a COPY: the COPY fails, nothing of it is kept, and the
    // message is answered after it.
    c.send(&[q("COPY cancellations FROM STDIN")]);
    c.until(b'G', 1);
    c.send(&[Msg::CopyData(all[..150].to_vec()), q("SELECT 1")]);
    let r = c.until_ready(2);
    assert!(!errors(&r).is_empty(), "{r:?}");
    assert_eq!(orders(&g), 97, "a COPY cut short by a Query");
    assert!(errors(&c.query("SELECT 1")).is_empty());
}

/// Maintenance and DDL run code that already exists, which the statement itself does not show:
/// ANALYZE, VACUUM (ANALYZE or FULL), REINDEX and CLUSTER evaluate a table's index expressions
/// and its extended statistics' expressions, REFRESH MATERIALIZED VIEW runs the view's query,
/// and every DDL statement runs the database's event triggers. Here each of those is the
/// application owner's (made before the gate): a function declared IMMUTABLE that calls a
/// VOLATILE one that deletes every order — PostgreSQL forbids writes in the non-volatile
/// function's own statements, not in a volatile function it calls. Each statement below
/// emptied `orders` through the gate, unmeasured (found by playing them against it); now what
/// can run inside a transaction block is measured (DDL by the relations' files as well as by
/// the counters, since it takes ACCESS EXCLUSIVE locks itself), and what cannot (VACUUM with
/// ANALYZE or FULL, CREATE INDEX CONCURRENTLY, a CLUSTER of every table) is held.
#[test]
fn maintenance_and_ddl_that_run_the_applications_code_are_measured_or_held() {
    let g = Gate::start_with("", POLICY, false);
    const REFILL: &str =
        "INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING";
    // Owned by gate_app where PostgreSQL needs the owner (ANALYZE, REINDEX, CLUSTER, REFRESH),
    // as an application's role owns its tables. Making the index runs the code once: refilled.
    g.pg.psql(&format!(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN $1; END$$;
         CREATE TABLE ledger (x int); INSERT INTO ledger SELECT generate_series(1, 10);
         CREATE INDEX ledger_tidy ON ledger ((tidy(x)));
         CREATE TABLE notes (x int); INSERT INTO notes SELECT generate_series(1, 10);
         CREATE STATISTICS notes_tidy ON (tidy(x)) FROM notes;
         CREATE MATERIALIZED VIEW totals AS SELECT tidy(1) AS n WITH NO DATA;
         CREATE MATERIALIZED VIEW plain_totals AS SELECT count(*) AS n FROM scratch;
         ALTER TABLE ledger OWNER TO gate_app; ALTER TABLE notes OWNER TO gate_app;
         ALTER MATERIALIZED VIEW totals OWNER TO gate_app; ALTER MATERIALIZED VIEW plain_totals OWNER TO gate_app;
         {REFILL};"
    ))
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Every attack is tried; what got through is listed (and the orders put back), so a failure
    // names them all.
    let mut through = Vec::new();
    let mut attempt = |c: &mut Raw, what: &str, r: Vec<Reply>| {
        if state(&g) != before {
            through.push(format!("{what}: {:?}", errors(&r)));
            g.pg.psql(REFILL).unwrap();
        } else if !errors(&r).iter().any(|m| m.starts_with("holdfast gate:") && m.contains("not run")) {
            through.push(format!("{what}: not held, errors {:?}", errors(&r)));
        }
        c.query("ROLLBACK");
    };
    for sql in [
        "ANALYZE ledger",
        "ANALYZE",
        "ANALYZE notes",
        "VACUUM (ANALYZE) ledger",
        "VACUUM ANALYZE notes",
        "VACUUM FULL ledger",
        "REINDEX TABLE ledger",
        "REINDEX INDEX ledger_tidy",
        "REINDEX TABLE CONCURRENTLY ledger",
        "CLUSTER ledger USING ledger_tidy",
        "CLUSTER",
        "REFRESH MATERIALIZED VIEW totals",
    ] {
        let r = c.query(sql);
        attempt(&mut c, sql, r);
    }
    // The same through the extended protocol.
    let r = c.exchange(&[parse("", "ANALYZE ledger"), bind("", ""), execute(""), Msg::Sync]);
    attempt(&mut c, "ANALYZE ledger (extended)", r);
    let r = c.exchange(&[parse("", "REINDEX TABLE ledger"), bind("", ""), execute(""), Msg::Sync]);
    attempt(&mut c, "REINDEX TABLE ledger (extended)", r);
    // What runs none of the application's code still runs, measured: maintenance of a table
    // without expressions, plain DDL, a refresh of a view over built-ins; a VACUUM without
    // ANALYZE or FULL evaluates no expression and is not measured.
    for sql in [
        "ANALYZE scratch",
        "VACUUM scratch",
        "VACUUM ledger",
        "CREATE INDEX scratch_id ON scratch (id)",
        "REINDEX TABLE scratch",
        "ALTER TABLE scratch ADD COLUMN note text",
        "CREATE TABLE fresh (id int PRIMARY KEY)",
        "COMMENT ON TABLE fresh IS 'made through the gate'",
        "REFRESH MATERIALIZED VIEW plain_totals",
        "ALTER SEQUENCE IF EXISTS no_such_seq RESTART",
    ] {
        let r = c.query(sql);
        assert!(errors(&r).is_empty(), "{sql}: {:?}", errors(&r));
    }
    let r =
        c.exchange(&[parse("", "CREATE INDEX fresh_id ON fresh (id)"), bind("", ""), execute(""), Msg::Sync]);
    assert!(errors(&r).is_empty(), "CREATE INDEX (extended): {:?}", errors(&r));
    assert_eq!(state(&g), before);
    // An event trigger (a superuser's, made before the gate) that empties orders after any DDL:
    // every DDL statement through the gate now destroys 100 orders.
    g.pg.psql(
        "CREATE FUNCTION wipe() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; END$$;
         CREATE EVENT TRIGGER wipe ON ddl_command_end EXECUTE FUNCTION wipe();",
    )
    .unwrap();
    assert_eq!(state(&g), before);
    for sql in [
        "CREATE TABLE t9 (id int)",
        "COMMENT ON TABLE scratch IS 'x'",
        "CREATE INDEX scratch_id2 ON scratch (id)",
        "CREATE INDEX CONCURRENTLY scratch_id3 ON scratch (id)",
        "ALTER TABLE scratch ADD COLUMN n2 int",
        "CREATE VIEW v9 AS SELECT 1 AS one",
        "BEGIN; CREATE TABLE t10 (id int); COMMIT",
    ] {
        let r = c.query(sql);
        attempt(&mut c, sql, r);
    }
    let r = c.exchange(&[parse("", "CREATE TABLE t11 (id int)"), bind("", ""), execute(""), Msg::Sync]);
    attempt(&mut c, "CREATE TABLE (extended)", r);
    assert!(through.is_empty(), "ran unmeasured and destroyed orders, or was not held: {through:#?}");
    assert_eq!(state(&g), before);
}

/// A deferred constraint trigger of the application's (made before the gate) runs at COMMIT —
/// the client's, or the gate's own right after it measured a write outside a transaction —
/// where nothing is measured: one row inserted into `inbox` emptied `orders` through the gate
/// (found by playing it). The gate now counts, with the same counters read, the rows changed in
/// tables that have a deferrable trigger of a user's, and holds a write that changes any: what
/// it queued would run unmeasured.
#[test]
fn a_write_that_queues_a_deferred_trigger_is_held() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE TABLE inbox (id int); GRANT ALL ON inbox TO gate_app;
         CREATE FUNCTION inbox_fn() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN NULL; END$$;
         CREATE CONSTRAINT TRIGGER inbox_later AFTER INSERT ON inbox DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION inbox_fn();",
    )
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    refused(&c.query("INSERT INTO inbox VALUES (1)"), "an insert outside a transaction");
    assert_eq!(state(&g), before, "the gate's own COMMIT");
    assert!(errors(&c.query("BEGIN")).is_empty());
    refused(&c.query("INSERT INTO inbox VALUES (2)"), "an insert inside a transaction");
    c.query("ROLLBACK");
    assert!(errors(&c.query("BEGIN")).is_empty());
    assert!(errors(&c.query("INSERT INTO scratch VALUES (21)")).is_empty());
    refused(&c.query("INSERT INTO inbox VALUES (3)"), "a second write of the transaction");
    c.query("ROLLBACK");
    let r = c.exchange(&[parse("", "INSERT INTO inbox VALUES (4)"), bind("", ""), execute(""), Msg::Sync]);
    refused(&r, "an insert through the extended protocol");
    assert_eq!(state(&g), before);
    assert_eq!(g.count("inbox"), 0);
    // Tables without such a trigger are written as before.
    assert!(errors(&c.query("INSERT INTO scratch VALUES (22)")).is_empty());
    assert!(errors(&c.query("DELETE FROM scratch WHERE id = 22")).is_empty());
    assert_eq!(state(&g), before);
}

/// PostgreSQL picks an overload of a built-in's name in another schema when its argument types
/// match better: `lower(5)` runs the application's `public.lower(int)`, `id = 'a'::text` its
/// `= (int, text)` operator — and the guard took both for built-ins, so the SELECTs ran as plain
/// reads, unmeasured, and emptied `orders` (found by playing them). The gate now reads once per
/// server connection whether the database holds such a name outside pg_catalog; if so, the
/// session's unqualified built-ins count as unknown functions: the SELECT is measured.
#[test]
fn overloads_of_built_in_names_are_measured() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION eq_purge(int, text) RETURNS bool LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN true; END$$;
         CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = text, FUNCTION = eq_purge);",
    )
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    refused(&c.query("SELECT lower(5)"), "lower(5) resolving to public.lower(int)");
    assert_eq!(state(&g), before, "lower(5)");
    refused(&c.query("SELECT count(*) FROM orders WHERE id = 'a'::text"), "= (int, text)");
    assert_eq!(state(&g), before, "= (int, text)");
    let r = c.exchange(&[parse("", "SELECT lower(7)"), bind("", ""), execute(""), Msg::Sync]);
    assert_eq!(state(&g), before, "lower(7) through the extended protocol");
    assert!(
        errors(&r).iter().any(|m| m.contains("Parse refused") && m.contains("simple Query")),
        "lower(7) through the extended protocol: expected the Parse refused, got {:?}",
        errors(&r)
    );
    // The built-ins themselves still run (measured: nothing changes).
    let r = c.query("SELECT lower('ABC'), count(*) FROM orders WHERE id = 3");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(state(&g), before);
}

/// A cast runs the CHECK constraints of the domain it casts to: `SELECT 5::checked` (a domain of
/// the application's whose CHECK calls a function declared IMMUTABLE that calls one deleting
/// every order) was a plain read, unmeasured, and emptied `orders` (found by playing it). The
/// gate's catalog read at connection start now also names the domains with CHECK constraints
/// (and those over one): a statement casting to one counts as calling an unknown function.
#[test]
fn casts_to_a_domain_with_checks_are_measured() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN $1; END$$;
         CREATE DOMAIN checked AS int CHECK (tidy(VALUE) > 0);
         CREATE DOMAIN also_checked AS checked;
         CREATE TYPE holder AS (a checked);
         CREATE TYPE mood AS ENUM ('ok', 'sad');",
    )
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    for sql in ["SELECT 5::checked", "SELECT CAST('7' AS also_checked)", "SELECT ARRAY[1, 2]::checked[]"] {
        refused(&c.query(sql), sql);
        assert_eq!(state(&g), before, "{sql}");
    }
    // A Parse alone runs the CHECK: PostgreSQL converts a literal to a composite or an array
    // at parse analysis, through record_in/array_in and the field's domain_in — before any
    // Bind the gate could refuse (found by the protocol fuzz generator, seed 20261205 case 95:
    // a Parse of `SELECT '(34)'::holder` and a Sync emptied `orders`). Such a Parse is refused.
    for sql in ["SELECT '(34)'::holder", "SELECT '{5}'::checked[]"] {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let r = c.exchange(&[parse("", sql), Msg::Sync]);
        assert_eq!(state(&g), before, "Parse alone: {sql}");
        assert!(
            errors(&r).iter().any(|m| m.contains("Parse refused") && m.contains("simple Query")),
            "{sql}: expected the Parse refused, got {:?}",
            errors(&r)
        );
        assert!(errors(&c.query("SELECT 1")).is_empty(), "{sql}");
    }
    let r = c.query("DECLARE h CURSOR WITH HOLD FOR SELECT 5::checked");
    refused(&r, "a WITH HOLD cursor over the cast");
    // A cast to a type without CHECKs runs as before.
    let r = c.query("SELECT 'ok'::mood, 5::int8");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(state(&g), before);
}

/// Reading runs code too: a view whose query calls the application's deleting function, a view
/// over that view, and a table with an index over `x + one()` — `one()` declared IMMUTABLE and
/// calling the deleting function, which PostgreSQL's planner evaluates when it loads the index
/// for any statement over the table, a plain `SELECT count(*)` included. Each was a plain read
/// through the gate and emptied `orders` (found by playing them). The gate's catalog read at
/// connection start now names the relations whose reading may run a user's code (views whose
/// rules depend on one, recursively; tables with such a policy or index), and a statement that
/// names one counts as calling an unknown function: the SELECT is measured.
#[test]
fn reads_of_views_and_tables_that_run_code_are_measured() {
    let g = Gate::start_with("", POLICY, false);
    const REFILL: &str =
        "INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING";
    g.pg.psql(&format!(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION one() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN 0; END$$;
         CREATE VIEW report AS SELECT purge() AS n; CREATE VIEW report_again AS SELECT * FROM report;
         CREATE TABLE ledger (x int); INSERT INTO ledger SELECT generate_series(1, 10);
         CREATE INDEX ledger_one ON ledger ((x + one()));
         GRANT SELECT ON report, report_again, ledger TO gate_app;
         {REFILL};"
    ))
    .unwrap();
    let before = state(&g);
    for sql in ["SELECT * FROM report", "SELECT n FROM report_again", "SELECT count(*) FROM ledger"] {
        // A new server connection each: the planner loads the index once per connection.
        let mut c = Raw::connect(&g, "alice", "alice-password");
        refused(&c.query(sql), sql);
        assert_eq!(state(&g), before, "{sql}");
    }
    // Through the extended protocol PostgreSQL plans at Bind, before the gate's measurement
    // begins with the Execute, and planning folds `one()` (IMMUTABLE, constant arguments) and
    // loads ledger's index: `SELECT one()` and `SELECT count(*) FROM ledger` emptied `orders`
    // that way with nothing measured. A Bind of a statement that runs code that is not built
    // in is now refused before the server sees it — also with a Flush between Bind and Execute,
    // a named portal, or no Execute at all.
    let batches: Vec<(&str, Vec<Msg>)> = vec![
        ("SELECT one()", vec![parse("", "SELECT one()"), bind("", ""), execute(""), Msg::Sync]),
        (
            "ledger",
            vec![parse("", "SELECT count(*) FROM public.ledger"), bind("", ""), execute(""), Msg::Sync],
        ),
        (
            "Flush between",
            vec![parse("s", "SELECT one() + 1"), bind("p", "s"), Msg::Flush, execute("p"), Msg::Sync],
        ),
        ("Bind alone", vec![parse("", "SELECT 2 + one()"), bind("", ""), Msg::Sync]),
        (
            "Describe",
            vec![
                parse("", "SELECT * FROM report"),
                bind("", ""),
                Msg::Describe { portal: String::new() },
                execute(""),
                Msg::Sync,
            ],
        ),
    ];
    for (what, msgs) in batches {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let r = c.exchange(&msgs);
        assert!(
            errors(&r)
                .iter()
                .any(|m| (m.contains("Bind refused") || m.contains("Parse refused"))
                    && m.contains("simple Query")),
            "{what}: expected the Parse or Bind refused, got {:?}",
            errors(&r)
        );
        assert_eq!(state(&g), before, "extended protocol: {what}");
        // The session goes on.
        assert!(errors(&c.query("SELECT 1")).is_empty(), "{what}");
    }
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Plain tables are read as before, in both protocols.
    let r = c.query("SELECT count(*) FROM orders");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    let r = c.exchange(&[
        parse("", "SELECT count(*) FROM orders WHERE id > $1"),
        bind("", ""),
        execute(""),
        Msg::Sync,
    ]);
    assert!(!errors(&r).iter().any(|m| m.contains("Bind refused")), "{:?}", errors(&r));
    // A cursor's query is planned at DECLARE: measured or held there, never run unmeasured.
    for sql in [
        "EXPLAIN SELECT one()",
        "EXPLAIN SELECT count(*) FROM ledger",
        "EXPLAIN (COSTS OFF) SELECT * FROM report",
        "BEGIN; DECLARE c CURSOR FOR SELECT one(); FETCH ALL FROM c; COMMIT",
        "BEGIN; DECLARE c CURSOR FOR SELECT * FROM report; FETCH ALL FROM c; COMMIT",
    ] {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let _ = c.query(sql);
        c.query("ROLLBACK");
        assert_eq!(state(&g), before, "{sql}");
    }
}

/// The gate reads the transaction's counters once per measured write, not twice: the last
/// measured write's counters *after* are the next one's *before* while nothing but allowed
/// reads ran in between. What such a read changed unmeasured — here a function the policy
/// declares read-only (`safe_functions`) that deletes ten orders — is then counted against the
/// next measured write, never hidden: 1 + 10 rows is over the limit of 10, so that write is
/// held (and refused: bob is no approver), the transaction fails, and the database, the
/// oracle, still has every order. Both protocols; and a LOCK in between (no read) does not
/// charge the next write with its lock.
#[test]
fn an_unmeasured_delete_between_two_measured_writes_is_counted_against_the_next() {
    let g = Gate::start_with(
        "",
        "row_guard_max_rows = 10\nbudget_rows = 100\nsafe_functions = [\"trim_orders\"]\n",
        false,
    );
    g.pg.psql(
        "CREATE FUNCTION trim_orders() RETURNS bigint LANGUAGE sql AS
           'WITH d AS (DELETE FROM orders WHERE id > 90 RETURNING 1) SELECT count(*) FROM d'",
    )
    .unwrap();
    let before = state(&g);
    let mut c = Raw::connect(&g, "alice", "alice-password");
    // Simple protocol.
    assert!(errors(&c.query("BEGIN")).is_empty());
    assert!(errors(&c.query("UPDATE orders SET total = total + 1 WHERE id = 1")).is_empty());
    let r = c.query("SELECT trim_orders()");
    assert!(errors(&r).is_empty(), "the declared-safe function runs unmeasured: {:?}", errors(&r));
    let r = c.query("UPDATE orders SET total = total + 1 WHERE id = 2");
    refused(&r, "the write after an unmeasured delete (simple protocol)");
    assert!(errors(&r).iter().any(|m| m.contains("11 rows")), "charged 1 + 10 rows: {:?}", errors(&r));
    c.query("COMMIT");
    assert_eq!(state(&g), before, "simple protocol");
    // Extended protocol, one batch per statement (as pgbench -M prepared sends them).
    let ext = |c: &mut Raw, sql: &str| c.exchange(&[parse("", sql), bind("", ""), execute(""), Msg::Sync]);
    assert!(errors(&ext(&mut c, "BEGIN")).is_empty());
    assert!(errors(&ext(&mut c, "UPDATE orders SET total = total + 1 WHERE id = 1")).is_empty());
    let r = ext(&mut c, "SELECT trim_orders()");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    let r = ext(&mut c, "UPDATE orders SET total = total + 1 WHERE id = 2");
    refused(&r, "the write after an unmeasured delete (extended protocol)");
    assert!(errors(&r).iter().any(|m| m.contains("11 rows")), "charged 1 + 10 rows: {:?}", errors(&r));
    ext(&mut c, "COMMIT");
    assert_eq!(state(&g), before, "extended protocol");
    // What voids the saved counters makes the next write read its own: a LOCK's new ACCESS
    // EXCLUSIVE lock is not charged to it, and writes within the limits are kept.
    assert!(errors(&c.query("BEGIN")).is_empty());
    assert!(errors(&c.query("UPDATE orders SET total = total + 1 WHERE id = 1")).is_empty());
    assert!(errors(&c.query("LOCK TABLE scratch IN ACCESS EXCLUSIVE MODE")).is_empty());
    let r = c.query("UPDATE orders SET total = total + 1 WHERE id = 2");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    let r = c.query("UPDATE orders SET total = total + 1 WHERE id = 3");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert!(errors(&c.query("COMMIT")).is_empty());
    assert_eq!(g.count("orders"), 100);
    assert_eq!(g.pg.psql("SELECT sum(total) - 5050 * 1.5 FROM orders").unwrap(), "3.0");
}

/// DDL that plants the application's code without calling it by name, so that its creation
/// through the gate changes no row and the code runs later where nothing measures it (each
/// found by playing it against this gate: allowed as plain `ddl`, and the later step emptied
/// `orders`): a column of a domain whose CHECK calls the application's function added to an
/// empty table the application fills (its own `INSERT` checks the NULL it leaves there); a
/// row-level security policy that reads a view calling it (any later read of the table runs
/// it); a range type whose `subtype_diff` is such a function (planning a range comparison and
/// ANALYZE — autovacuum's too — run it); a table made `LIKE` or as a partition of one whose
/// index runs it. Each is now held for a second person, with a reason naming what it plants.
/// And reads that convert to such a domain without a cast written — a function's column
/// definition list, a composite type holding the domain — are measured.
#[test]
fn ddl_that_plants_the_applications_code_is_held() {
    let g = Gate::start_with("", POLICY, false);
    const REFILL: &str =
        "INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING";
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN coalesce($1, 1); END$$;
         CREATE FUNCTION diff(float8, float8) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN $1 - $2; END$$;
         CREATE DOMAIN checked AS int CHECK (tidy(VALUE) > 0);
         CREATE TYPE holder AS (a checked);
         CREATE VIEW report AS SELECT purge() AS n; GRANT SELECT ON report TO gate_app;
         CREATE TABLE inbox (id int); ALTER TABLE inbox OWNER TO gate_app;
         CREATE TABLE guarded (x int); INSERT INTO guarded VALUES (1); ALTER TABLE guarded OWNER TO gate_app;
         CREATE TABLE ledger (x int); CREATE INDEX ledger_tidy ON ledger ((tidy(x))); GRANT SELECT ON ledger TO gate_app;
         CREATE TYPE app_range AS RANGE (subtype = float8, subtype_diff = diff);",
    )
    .unwrap();
    g.pg.psql(REFILL).unwrap();
    let before = state(&g);
    let mut through = Vec::new();
    // (the attack through the gate, what runs it later — the application straight to the
    // database, or a new session through the gate)
    let attacks: [(&str, &str, bool); 4] = [
        ("ALTER TABLE inbox ADD COLUMN z checked", "INSERT INTO inbox (id) VALUES (1)", false),
        (
            "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY; ALTER TABLE guarded FORCE ROW LEVEL SECURITY; CREATE POLICY p ON guarded USING (x IN (SELECT n FROM report))",
            "SELECT count(*) FROM guarded",
            true,
        ),
        (
            "CREATE TYPE fr AS RANGE (subtype = float8, subtype_diff = diff)",
            "CREATE TABLE rt (r fr); INSERT INTO rt SELECT fr(g, g + 1) FROM generate_series(1, 200) g; ANALYZE rt",
            false,
        ),
        // A new table's column of a range the application already has, whose subtype_diff is
        // its function: autovacuum's ANALYZE (here run by hand) calls it once the application
        // has filled the table — allowed as plain `ddl` before (a new table's column types were
        // all exempt), and `orders` emptied; now held. A column of a checked domain still is
        // exempt (below: ANALYZE does not convert values).
        (
            "CREATE TABLE rt2 (r app_range)",
            "INSERT INTO rt2 SELECT app_range(g, g + 1) FROM generate_series(1, 200) g; ANALYZE rt2",
            false,
        ),
    ];
    for (attack, later, through_gate) in attacks {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let r = c.query(attack);
        let held = errors(&r).iter().any(|m| m.starts_with("holdfast gate:") && m.contains("not run"));
        if through_gate {
            let mut c2 = Raw::connect(&g, "alice", "alice-password");
            let _ = c2.query(later);
        } else {
            let _ = g.pg.psql(later);
        }
        if state(&g) != before || !held {
            through.push(format!("{attack} (then {later}): held {held}, errors {:?}", errors(&r)));
            g.pg.psql(REFILL).unwrap();
        }
    }
    // Copies of a relation whose reading runs code: held (what they copy would run unmeasured).
    let mut c = Raw::connect(&g, "alice", "alice-password");
    for attack in
        ["CREATE TABLE copy1 (LIKE ledger INCLUDING ALL)", "CREATE TABLE copy2 () INHERITS (ledger)"]
    {
        let r = c.query(attack);
        if !errors(&r).iter().any(|m| m.starts_with("holdfast gate:") && m.contains("not run")) {
            through.push(format!("{attack}: not held, errors {:?}", errors(&r)));
        }
    }
    // Reads that convert to the domain without a cast to its name: measured (100 orders is
    // over the limit of 10, so refused), never run as plain reads.
    for sql in [
        "SELECT * FROM json_to_record('{\"a\": 5}') AS x(a checked)",
        "SELECT '(5)'::holder",
        "SELECT (ROW(5)::holder).a",
    ] {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let r = c.query(sql);
        if state(&g) != before {
            through.push(format!("{sql}: ran unmeasured, errors {:?}", errors(&r)));
            g.pg.psql(REFILL).unwrap();
        }
    }
    assert!(through.is_empty(), "planted or ran the application's code unmeasured: {through:#?}");
    // What plants nothing still runs: a new table with a column of the domain (only its own,
    // measured, writes run the CHECK), a range over built-ins, a policy over built-ins.
    let mut c = Raw::connect(&g, "alice", "alice-password");
    for sql in [
        "CREATE TABLE fresh (id int, z checked)",
        "CREATE TYPE plain_range AS RANGE (subtype = float8)",
        "CREATE POLICY q ON inbox USING (id > 0)",
        "CREATE TABLE copy3 (LIKE scratch INCLUDING ALL)",
    ] {
        let r = c.query(sql);
        assert!(errors(&r).is_empty(), "{sql}: {:?}", errors(&r));
    }
    assert_eq!(state(&g), before);
}

/// The pending approval request, if there is one now.
fn pending_now(g: &Gate) -> Option<String> {
    let out = g.cli("alice", "alice-password", None, &["pending", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"]["state"] == "pending")
        .map(|r| r["id"].as_str().unwrap().to_string())
}

/// Sends `sql` on `c` and waits until either the database shows it ran unmeasured (`orders`
/// changed: `Err`) or the gate holds it (then bob rejects it and the client gets the refusal).
fn held_not_run(g: &Gate, c: &mut Raw, sql: &str, before: &str) -> Result<(), String> {
    c.send(&[q(sql)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if state(g) != before {
            let _ = c.until_ready(1);
            return Err(format!("{sql}: ran unmeasured"));
        }
        if let Some(id) = pending_now(g) {
            let rej = g.bob(&["reject", &id]);
            assert!(rej.status.success(), "{}", text(&rej));
            let r = c.until_ready(1);
            assert!(errors(&r).iter().any(|m| m.contains("rejected")), "{sql}: {:?}", errors(&r));
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let r = c.until_ready(1);
            panic!("{sql}: neither ran nor held: {:?}", errors(&r));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A session learns at connect which relations' reading runs code; what is made after that
/// was unknown to it for as long as it stayed connected. Through the gate: session A's
/// `CREATE VIEW report2 AS SELECT purge()` (held, approved by bob) — session B, connected
/// before, then read `report2` as a plain read and emptied `orders`; the same inside B's
/// REPEATABLE READ transaction begun before the view existed (its catalog read would see its
/// snapshot, the executor sees the view). Straight in the database, by the owner: a view over
/// the deleting function, an overload `public.lower(int)`, a checked domain and an expression
/// index, made while sessions were connected — each of their reads emptied `orders` (found by
/// playing each against the gate). Now every statement that may change the catalog bumps the
/// gate's catalog epoch (when sent, and when its transaction ends); a session whose knowledge
/// is older reads it again before its next statement, and inside a REPEATABLE READ
/// transaction counts it unknown (reads measured); and knowledge older than
/// `catalog_max_age` is read again at the next statement outside a transaction block.
#[test]
fn catalog_knowledge_is_read_again_when_it_may_be_stale() {
    // Through the gate, with an approver; the age bound out of the way (1 h).
    let g = Gate::start_with("catalog_max_age = \"1h\"\n", POLICY, true);
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;",
    )
    .unwrap();
    let before = state(&g);
    let mut b = Raw::connect(&g, "alice", "alice-password");
    let mut b_rr = Raw::connect(&g, "alice", "alice-password");
    assert!(
        errors(&b_rr.query("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM scratch")).is_empty()
    );
    let mut a = Raw::connect(&g, "alice", "alice-password");
    a.send(&[q("CREATE VIEW report2 AS SELECT purge() AS n")]);
    let id = g.pending_id();
    let ok = g.bob(&["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let r = a.until_ready(1);
    assert!(errors(&r).is_empty(), "the approved CREATE VIEW: {:?}", errors(&r));
    assert_eq!(state(&g), before, "making the view ran nothing");
    let mut through = Vec::new();
    // (The transaction commits in the same message: what it deleted shows at once.)
    for (c, what, sql) in [
        (&mut b_rr, "session B in REPEATABLE READ", "SELECT * FROM report2; COMMIT"),
        (&mut b, "session B", "SELECT * FROM report2"),
    ] {
        if let Err(e) = held_not_run(&g, c, sql, &before) {
            through.push(format!("{what}: {e}"));
            g.pg.psql("INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING").unwrap();
        }
    }
    assert!(through.is_empty(), "{through:#?}");
    // Plain reads still run as reads, in a new transaction and in the same session.
    b_rr.query("ROLLBACK");
    for c in [&mut b, &mut b_rr] {
        let r = c.query("SELECT count(*) FROM orders");
        assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    }
    drop(g);

    // Straight in the database, while sessions are connected; the age bound at 1 s.
    let g = Gate::start_with("catalog_max_age = \"1s\"\n", POLICY, false);
    const REFILL: &str =
        "INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING";
    let before = state(&g);
    let reads =
        ["SELECT * FROM report", "SELECT lower(5)", "SELECT 5::checked", "SELECT count(*) FROM ledger"];
    let mut sessions: Vec<Raw> = reads.iter().map(|_| Raw::connect(&g, "alice", "alice-password")).collect();
    for c in &mut sessions {
        assert!(errors(&c.query("SELECT 1")).is_empty());
    }
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION one() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN 0; END$$;
         CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN $1; END$$;
         CREATE VIEW report AS SELECT purge() AS n; GRANT SELECT ON report TO gate_app;
         CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE DOMAIN checked AS int CHECK (tidy(VALUE) > 0);
         CREATE TABLE ledger (x int); INSERT INTO ledger SELECT generate_series(1, 10);
         CREATE INDEX ledger_one ON ledger ((x + one())); GRANT SELECT ON ledger TO gate_app;",
    )
    .unwrap();
    g.pg.psql(REFILL).unwrap();
    assert_eq!(state(&g), before);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let mut through = Vec::new();
    for (c, sql) in sessions.iter_mut().zip(reads) {
        let r = c.query(sql);
        if state(&g) != before {
            through.push(format!("{sql}: ran unmeasured, errors {:?}", errors(&r)));
            g.pg.psql(REFILL).unwrap();
        } else {
            refused(&r, sql);
        }
        let r = c.query("SELECT count(*) FROM orders");
        assert!(errors(&r).is_empty(), "{sql}, then a plain read: {:?}", errors(&r));
    }
    assert!(through.is_empty(), "{through:#?}");
    assert_eq!(state(&g), before);
}

/// PostgreSQL runs the application's functions where no function is written: a cast through a
/// function (`CREATE CAST (mt AS int) WITH FUNCTION mt_int(mt)`: `SELECT m::int FROM casted`)
/// and a type's default operator class (a btree comparison of the application's: a plain
/// `ORDER BY` or `DISTINCT` over the column). Each emptied `orders` as a plain read through the
/// gate (found by playing them). The catalog read now names such types (and what holds them)
/// and the tables with a column of one: those reads are measured.
#[test]
fn reads_through_the_applications_casts_and_operator_classes_are_measured() {
    let g = Gate::start_with("", POLICY, false);
    const REFILL: &str =
        "INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING";
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE TYPE mt AS (a int);
         CREATE FUNCTION mt_int(mt) RETURNS int LANGUAGE plpgsql AS $$BEGIN PERFORM purge(); RETURN ($1).a; END$$;
         CREATE CAST (mt AS int) WITH FUNCTION mt_int(mt);
         CREATE TABLE casted (m mt); INSERT INTO casted VALUES (ROW(1));
         CREATE TYPE mt2 AS (a int);
         CREATE FUNCTION mt2_cmp(mt2, mt2) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN 0; END$$;
         CREATE FUNCTION mt2_lt(mt2, mt2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT mt2_cmp($1, $2) < 0';
         CREATE FUNCTION mt2_le(mt2, mt2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT mt2_cmp($1, $2) <= 0';
         CREATE FUNCTION mt2_eq(mt2, mt2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT mt2_cmp($1, $2) = 0';
         CREATE FUNCTION mt2_ge(mt2, mt2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT mt2_cmp($1, $2) >= 0';
         CREATE FUNCTION mt2_gt(mt2, mt2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT mt2_cmp($1, $2) > 0';
         CREATE OPERATOR #< (LEFTARG = mt2, RIGHTARG = mt2, FUNCTION = mt2_lt);
         CREATE OPERATOR #<= (LEFTARG = mt2, RIGHTARG = mt2, FUNCTION = mt2_le);
         CREATE OPERATOR #= (LEFTARG = mt2, RIGHTARG = mt2, FUNCTION = mt2_eq);
         CREATE OPERATOR #>= (LEFTARG = mt2, RIGHTARG = mt2, FUNCTION = mt2_ge);
         CREATE OPERATOR #> (LEFTARG = mt2, RIGHTARG = mt2, FUNCTION = mt2_gt);
         CREATE OPERATOR CLASS mt2_ops DEFAULT FOR TYPE mt2 USING btree AS OPERATOR 1 #<, OPERATOR 2 #<=,
           OPERATOR 3 #=, OPERATOR 4 #>=, OPERATOR 5 #>, FUNCTION 1 mt2_cmp(mt2, mt2);
         CREATE TABLE sorted (m mt2); INSERT INTO sorted VALUES (ROW(1)), (ROW(2));
         GRANT SELECT ON casted, sorted TO gate_app;",
    )
    .unwrap();
    let before = state(&g);
    let mut through = Vec::new();
    for sql in [
        "SELECT m::int FROM casted",
        "SELECT * FROM sorted ORDER BY m",
        "SELECT DISTINCT m FROM sorted",
        "SELECT ROW(1)::mt::int",
    ] {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let r = c.query(sql);
        if state(&g) != before {
            through.push(format!("{sql}: ran unmeasured, errors {:?}", errors(&r)));
            g.pg.psql(REFILL).unwrap();
        } else {
            refused(&r, sql);
        }
    }
    assert!(through.is_empty(), "{through:#?}");
    // Tables without such columns are read as before.
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let r = c.query("SELECT id FROM orders ORDER BY id LIMIT 3");
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
}

/// Extended-protocol `Parse`s and `Bind`s of the statements and parameters PostgreSQL converts
/// through a type's input before any Execute — each played against the real server, `orders`
/// (100 rows) read after it: every case below emptied `orders` through the gate before this
/// fix, with nothing measured.
/// Every case is played (orders filled again after one that changed them) and every failure
/// reported.
fn run_code_at_parse_or_bind(g: &Gate, before: &str, cases: Vec<(&str, Vec<Msg>)>) {
    let mut failed = Vec::new();
    for (what, msgs) in cases {
        let mut c = Raw::connect(g, "alice", "alice-password");
        let r = c.exchange(&msgs);
        let after = state(g);
        if after != before {
            failed.push(format!("{what}: orders changed, {before} → {after}"));
            g.pg.psql("INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING")
                .unwrap();
        }
        if !errors(&r).iter().any(|m| {
            (m.contains("Parse refused") || m.contains("Bind refused")) && m.contains("simple Query")
        }) {
            failed.push(format!("{what}: expected the Parse or Bind refused, got {:?}", errors(&r)));
        }
        assert!(errors(&c.query("SELECT 1")).is_empty(), "{what}: the session goes on");
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

fn bind_text(values: &[Option<&str>]) -> Msg {
    Msg::BindParams {
        portal: String::new(),
        statement: String::new(),
        values: values.iter().map(|v| v.map(str::to_string)).collect(),
    }
}

/// Parse analysis converts an untyped literal to the type of the column it is assigned to or
/// compared with — `INSERT INTO holders VALUES (1, '(34)')`, `UPDATE … SET h = '(34)'`,
/// `WHERE h IN ('(34)')`, `COALESCE(h, '(34)')`, an array or range column — through
/// record_in/array_in/range_in and the field's domain_in, which runs the CHECK; and Bind
/// converts a parameter whose type PostgreSQL inferred from a column of a checked domain
/// (`INSERT INTO plain VALUES ($1)`, text or binary) or that the client declared of such a
/// type (`SELECT 1` declaring a parameter of `checked`, even bound to NULL). The gate did not
/// stop these: the target of an INSERT/UPDATE/DELETE was not among the relations the guard
/// looked up (pg_query gives it as a bare RangeVar), tables with a column of a checked type
/// were not code relations, and a declared parameter type was not looked at. PREPARE runs the
/// same parse analysis as a simple Query.
#[test]
fn literals_and_parameters_converted_to_a_checked_type_at_parse_or_bind_are_refused() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN coalesce($1, 1); END$$;
         CREATE DOMAIN checked AS int CHECK (tidy(VALUE) > 0);
         CREATE TYPE holder AS (a checked);
         CREATE TYPE crange AS RANGE (subtype = checked);
         CREATE TABLE holders (id int PRIMARY KEY, h holder);
         CREATE TABLE plain (c checked);
         CREATE TABLE arrs (a checked[]);
         CREATE TABLE rngs (r crange);
         CREATE DOMAIN dholder AS holder; CREATE TABLE dhs (d dholder);
         CREATE DOMAIN email AS text CHECK (VALUE ~ '@' AND length(VALUE) < 200);
         CREATE TABLE people (e email);
         GRANT ALL ON holders, plain, arrs, rngs, dhs, people TO gate_app;",
    )
    .unwrap();
    let checked: u32 = g.pg.psql("SELECT 'checked'::regtype::oid").unwrap().trim().parse().unwrap();
    let before = state(&g);
    assert!(before.starts_with("100/"), "{before}");
    let p = |sql: &str| vec![parse("", sql), Msg::Sync];
    let typed = |sql: &str, v: Option<&str>| {
        vec![
            Msg::ParseTyped { name: String::new(), sql: sql.into(), types: vec![checked] },
            bind_text(&[v]),
            Msg::Sync,
        ]
    };
    // PREPARE runs the same parse analysis as a Parse; EXECUTE converts its arguments to the
    // declared types: measured or held, never run unmeasured.
    for sql in [
        "PREPARE p AS INSERT INTO holders VALUES (1, '(34)')",
        "PREPARE p AS SELECT '(34)'::holder",
        "PREPARE p(checked) AS SELECT 1",
    ] {
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let _ = c.query(sql);
        let _ = c.query("EXECUTE p(5)");
        assert_eq!(state(&g), before, "{sql}");
    }
    run_code_at_parse_or_bind(
        &g,
        &before,
        vec![
            ("INSERT VALUES", p("INSERT INTO holders VALUES (1, '(34)')")),
            ("INSERT SELECT", p("INSERT INTO holders SELECT 1, '(34)'")),
            ("UPDATE SET", p("UPDATE holders SET h = '(34)' WHERE id = 1")),
            (
                "ON CONFLICT",
                p("INSERT INTO holders VALUES (1, NULL) ON CONFLICT (id) DO UPDATE SET h = '(34)'"),
            ),
            ("IN list", p("SELECT 1 FROM holders WHERE h IN ('(34)', '(35)')")),
            ("COALESCE", p("SELECT COALESCE(h, '(34)') FROM holders")),
            ("CASE", p("SELECT CASE WHEN id = 1 THEN h ELSE '(34)' END FROM holders")),
            ("GREATEST", p("SELECT GREATEST(h, '(34)') FROM holders")),
            ("domain over the composite", p("INSERT INTO dhs VALUES ('(34)')")),
            ("array column", p("INSERT INTO arrs VALUES ('{5}')")),
            ("range column", p("INSERT INTO rngs VALUES ('[1,5)')")),
            (
                "inferred parameter",
                vec![parse("", "INSERT INTO plain VALUES ($1)"), bind_text(&[Some("5")]), Msg::Sync],
            ),
            (
                "inferred binary parameter",
                vec![
                    parse("", "INSERT INTO plain VALUES ($1)"),
                    Msg::BindBinary {
                        portal: String::new(),
                        statement: String::new(),
                        values: vec![Some(5i32.to_be_bytes().to_vec())],
                    },
                    Msg::Sync,
                ],
            ),
            (
                "inferred array parameter",
                vec![parse("", "SELECT 1 FROM arrs WHERE a = $1"), bind_text(&[Some("{5}")]), Msg::Sync],
            ),
            (
                "polymorphic parameter",
                vec![parse("", "SELECT array_append(a, $1) FROM arrs"), bind_text(&[Some("5")]), Msg::Sync],
            ),
            ("declared parameter", typed("SELECT $1", Some("5"))),
            ("declared, unused, NULL", typed("SELECT 1", None)),
        ],
    );
    // Plain tables and built-in parameter types go through as before, and so does a table
    // with a column of a domain whose CHECK calls only built-ins the guard takes for safe.
    let mut c = Raw::connect(&g, "alice", "alice-password");
    let r = c.exchange(&[
        parse("", "INSERT INTO people VALUES ($1)"),
        bind_text(&[Some("a@b")]),
        execute(""),
        Msg::Sync,
    ]);
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(g.pg.psql("SELECT e FROM people").unwrap(), "a@b");
    let r = c.exchange(&[
        Msg::ParseTyped {
            name: String::new(),
            sql: "SELECT count(*) FROM orders WHERE id > $1".into(),
            types: vec![23],
        },
        bind_text(&[Some("0")]),
        execute(""),
        Msg::Sync,
    ]);
    assert!(errors(&r).is_empty(), "{:?}", errors(&r));
    assert_eq!(state(&g), before);
}

/// The planner folds a table's `DEFAULT one()` (IMMUTABLE, constant arguments) into an
/// INSERT's plan, and an index expression over `x + one()` of the table an UPDATE or DELETE
/// writes: through the extended protocol that happens at Bind, before the gate's measurement.
/// `INSERT INTO defs (x) VALUES (1)` and `UPDATE ledger SET x = x WHERE x = 5`, Parse/Bind/Sync
/// with no Execute, each emptied `orders` before this fix (the DML's target was not among the
/// relations the guard looked up; defaults were not in the catalog read).
#[test]
fn defaults_and_index_expressions_of_the_written_table_are_refused_at_bind() {
    let g = Gate::start_with("", POLICY, false);
    g.pg.psql(
        "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM orders WHERE id > 0; RETURN 1; END$$;
         CREATE FUNCTION one() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(); RETURN 0; END$$;
         CREATE TABLE defs (x int, y int DEFAULT one());
         CREATE TABLE ledger (x int); CREATE INDEX ledger_one ON ledger ((x + one()));
         GRANT ALL ON defs, ledger TO gate_app;
         INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;",
    )
    .unwrap();
    // CREATE INDEX ran one() (and emptied orders): filled again, then checked.
    let before = state(&g);
    assert!(before.starts_with("100/"), "{before}");
    let pb = |sql: &str| vec![parse("", sql), bind("", ""), Msg::Sync];
    run_code_at_parse_or_bind(
        &g,
        &before,
        vec![
            ("default", pb("INSERT INTO defs (x) VALUES (1)")),
            ("UPDATE over an index expression", pb("UPDATE ledger SET x = x WHERE x = 5")),
            ("DELETE over an index expression", pb("DELETE FROM ledger WHERE x = 5")),
        ],
    );
    // As simple Queries they are measured: the purge is counted and undone.
    let mut c = Raw::connect(&g, "alice", "alice-password");
    refused(&c.query("INSERT INTO defs (x) VALUES (1)"), "INSERT into defs");
    assert_eq!(state(&g), before);
}
