//! The adversarial differential test the project owns: random sequences of frontend messages —
//! Queries with several statements, Parse/Bind/Describe/Execute/Close/Sync/Flush with names
//! reused, FETCH/MOVE, DECLARE, PREPARE/EXECUTE, savepoints, ROLLBACK and COMMIT mid-string,
//! errors mid-pipeline, pipelined batches, COPY FROM STDIN (simple and extended protocol) with its
//! data cut by CopyDone, CopyFail or another message, COPY TO STDOUT, DDL and maintenance that
//! run the application's code (an event trigger, an expression index) — mixing reads, writes
//! and destruction, sent through the real gate (example-like policy, nobody to approve) to a
//! shop-like database whose `cancellations` table has the application's trigger that deletes
//! the order named by each inserted row (a COPY of many rows deletes as many orders).
//!
//! The oracle is the database itself, read directly after each sequence: every table still
//! exists with its columns, and the rows deleted or changed in each table (a diff by primary key
//! of the row hashes before and after) are at most what the statements sent could change within
//! the row guard's limit (`MAX_ROWS` per executed statement). A destructive statement or a write
//! over the limit that ran would change at least `BIG` rows of some table: a bypass, reported
//! with the seed and the message sequence.
//!
//! `HOLDFAST_GATE_FUZZ_CASES` (default 40) and `HOLDFAST_GATE_FUZZ_SEED` choose the campaign;
//! `./run soak` runs many more.

use std::collections::BTreeMap;

mod gate_harness;
use gate_harness::*;

const MAX_ROWS: u64 = 2;
/// Each "big" write and each destructive statement touches at least this many rows.
const BIG: u64 = 100;

const SCHEMA: &str = "
DROP TABLE orders;
CREATE TABLE customers (id int PRIMARY KEY, merchant_id int NOT NULL, points int NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers ON DELETE CASCADE, total int NOT NULL);
CREATE TABLE cards (id int PRIMARY KEY, customer_id int, balance int NOT NULL);
CREATE FUNCTION purge(n int) RETURNS bigint LANGUAGE sql AS
  'WITH d AS (DELETE FROM orders WHERE id > n RETURNING 1) SELECT count(*) FROM d';
CREATE FUNCTION open_wipe() RETURNS refcursor LANGUAGE plpgsql AS
  $$DECLARE c refcursor := 'wipe'; BEGIN OPEN c FOR EXECUTE 'DELETE FROM cards WHERE id > 0 RETURNING id'; RETURN c; END$$;
CREATE TABLE cancellations (order_id int);
CREATE FUNCTION cancel_order() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS
  'BEGIN DELETE FROM orders WHERE id = NEW.order_id; RETURN NEW; END';
CREATE TRIGGER cancel AFTER INSERT ON cancellations FOR EACH ROW EXECUTE FUNCTION cancel_order();
GRANT ALL ON customers, orders, cards, cancellations TO gate_app;
CREATE FUNCTION chk(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
  $$BEGIN PERFORM purge(200); RETURN coalesce($1, 1); END$$;
CREATE DOMAIN checked AS int CHECK (chk(VALUE) > 0);
CREATE TYPE holder AS (a checked);
CREATE TYPE mt AS (a int);
CREATE FUNCTION mt_int(mt) RETURNS int LANGUAGE plpgsql AS $$BEGIN PERFORM purge(200); RETURN ($1).a; END$$;
CREATE CAST (mt AS int) WITH FUNCTION mt_int(mt);
CREATE TABLE casted (m mt); INSERT INTO casted VALUES (ROW(1));
GRANT SELECT ON casted TO gate_app;
CREATE TABLE holders (id int PRIMARY KEY, h holder, a checked[], c checked);
GRANT ALL ON holders TO gate_app;
";

const RESET: &str = "
TRUNCATE customers, orders, cards, cancellations;
INSERT INTO customers SELECT g, g % 5, g FROM generate_series(1, 150) g;
INSERT INTO cards SELECT g, g, 100 FROM generate_series(1, 150) g;
INSERT INTO orders SELECT g, (g % 150) + 1, g FROM generate_series(1, 300) g;
";

const TABLES: &[&str] = &["customers", "orders", "cards"];

/// xorshift64*: a seeded generator without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// A statement of the pool, with `{k}` replaced by a small id.
fn statement(r: &mut Rng) -> String {
    const READS: &[&str] = &[
        "SELECT count(*) FROM orders",
        "SELECT * FROM customers WHERE id = {k}",
        "VALUES (1)",
        "SELECT purge(100000)",
        "COPY orders TO STDOUT",
        "COPY (SELECT purge({k})) TO STDOUT",
        // Reads that run the application's code without naming a function (the schema's
        // domain CHECK, a composite holding the domain, a cast through a function).
        "SELECT * FROM json_to_record('{\"a\": {k}}') AS x(a checked)",
        "SELECT '({k})'::holder",
        "SELECT m::int FROM casted",
        // Untyped literals and parameters PostgreSQL converts to `holders`' column types (the
        // composite, the array of the domain, the domain) at Parse or Bind.
        "SELECT 1 FROM holders WHERE h IN ('({k})', '(1)')",
        "SELECT COALESCE(h, '({k})') FROM holders",
        "SELECT 1 FROM holders WHERE a = '{{k}}'",
        "SELECT 1 FROM holders WHERE a = $1",
        "SELECT $1",
    ];
    const SMALL: &[&str] = &[
        "DELETE FROM orders WHERE id = {k}",
        "UPDATE cards SET balance = balance + 1 WHERE id = {k}",
        "INSERT INTO orders VALUES (1000 + {k}, 1, 5) ON CONFLICT (id) DO UPDATE SET total = 0",
        "UPDATE customers SET points = 0 WHERE id = {k} RETURNING id",
        "DELETE FROM cards WHERE id IN ({k}, {k} + 1) RETURNING *",
        "INSERT INTO holders VALUES ({k}, '({k})', '{{k}}') ON CONFLICT (id) DO UPDATE SET h = '({k})'",
        "UPDATE holders SET a = '{{k}}' WHERE id = {k}",
        "INSERT INTO holders (id, h) VALUES ({k}, $1) ON CONFLICT DO NOTHING",
        "UPDATE holders SET c = $1 WHERE id = {k}",
    ];
    const BIG_WRITES: &[&str] = &[
        "DELETE FROM orders WHERE id > {k}",
        "UPDATE cards SET balance = 0 WHERE id > {k}",
        "DELETE FROM customers WHERE id > {k}",
        "SELECT purge({k})",
        "INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET total = 0",
        "MERGE INTO cards c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE",
        "DELETE FROM orders WHERE id > {k} RETURNING id",
        "WITH d AS (DELETE FROM orders WHERE id > {k} RETURNING *) SELECT count(*) FROM d",
    ];
    const DESTROY: &[&str] = &[
        "DROP TABLE cards",
        "TRUNCATE orders",
        "DELETE FROM cards",
        "UPDATE cards SET balance = 0",
        "ALTER TABLE cards DROP COLUMN balance",
        "DELETE FROM orders WHERE 1 = 1",
        "DROP TABLE IF EXISTS customers CASCADE",
    ];
    const CONTROL: &[&str] = &[
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT sp",
        "ROLLBACK TO SAVEPOINT sp",
        "RELEASE SAVEPOINT sp",
        "SELECT 1/0",
        "SELECT * FROM no_such_table",
    ];
    // DDL and maintenance, measured by the gate (the schema's event trigger deletes 100 orders
    // after any DDL, so each must be held; ANALYZE runs `cards`' expression index, which does too).
    const DDL: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS extra (id int)",
        "COMMENT ON TABLE orders IS 'fuzz'",
        "CREATE INDEX IF NOT EXISTS orders_total ON orders (total)",
        "ANALYZE cards",
        "ANALYZE customers",
        "REINDEX TABLE customers",
        "VACUUM ANALYZE cards",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_points ON customers (points)",
    ];
    const CURSORS: &[&str] = &[
        "DECLARE c CURSOR FOR SELECT id FROM orders",
        "DECLARE c CURSOR WITH HOLD FOR SELECT id FROM cards",
        "FETCH ALL FROM c",
        "MOVE ALL IN c",
        "FETCH 2 FROM p1",
        "FETCH ALL FROM p1",
        "MOVE ALL IN p1",
        "FETCH ALL FROM \"\"",
        "SELECT open_wipe()",
        "FETCH ALL FROM wipe",
        "CLOSE c",
        "CLOSE ALL",
        "PREPARE w AS DELETE FROM orders WHERE id > $1",
        "PREPARE w AS SELECT 1",
        "EXECUTE w(0)",
        "EXECUTE w(299)",
        "DEALLOCATE w",
        "DEALLOCATE ALL",
    ];
    let pool = match r.below(10) {
        0 | 1 => READS,
        2 | 3 => SMALL,
        4 | 5 => BIG_WRITES,
        6 => DESTROY,
        7 => {
            if r.below(2) == 0 {
                DDL
            } else {
                CONTROL
            }
        }
        _ => CURSORS,
    };
    let k = 1 + r.below(40);
    r.pick(pool).replace("{k}", &k.to_string())
}

/// A COPY FROM STDIN into `cancellations` and its data: 1, 2, 3, 50 or 300 order ids (each
/// row's trigger deletes that order), in one to three CopyData, ended by CopyDone, CopyFail, or
/// another message (a Query, or an extended-protocol batch; simple protocol only) that the gate
/// answers after failing the COPY. In a Query, alone or with other statements around it; or through the extended
/// protocol (Parse/Bind/Execute, the data, Sync). No Sync or Flush while the COPY may be open:
/// the server ignores them there, and whether it is open depends on the session's state.
fn copy_action(r: &mut Rng, out: &mut Vec<Msg>) {
    let copy = "COPY cancellations FROM STDIN";
    let extended = r.below(4) == 0;
    if extended {
        out.push(Msg::Parse { name: String::new(), sql: copy.into() });
        out.push(Msg::Bind { portal: String::new(), statement: String::new() });
        out.push(Msg::Execute { portal: String::new(), max_rows: 0 });
    } else {
        let sql = match r.below(4) {
            0 => format!("{}; {copy}", statement(r)),
            1 => format!("{copy}; {}", statement(r)),
            _ => copy.to_string(),
        };
        out.push(Msg::Query(sql));
    }
    let rows = [1u64, 2, 3, 50, 300][r.below(5) as usize];
    let data: Vec<u8> =
        (0..rows).flat_map(|i| format!("{}\n", 1 + (i * 7 + r.below(300)) % 300).into_bytes()).collect();
    let pieces = 1 + r.below(3) as usize;
    let step = data.len().div_ceil(pieces);
    for chunk in data.chunks(step.max(1)) {
        out.push(Msg::CopyData(chunk.to_vec()));
    }
    // After an extended-protocol COPY that the gate holds, the server skips every message up
    // to the Sync: only CopyDone or CopyFail end it there.
    match if extended { r.below(2) * 5 } else { r.below(6) } {
        0 => out.push(Msg::CopyFail("the client gave up".into())),
        1 => out.push(Msg::Query(statement(r))),
        2 => {
            out.push(Msg::Parse { name: String::new(), sql: statement(r) });
            out.push(Msg::Bind { portal: String::new(), statement: String::new() });
            out.push(Msg::Execute { portal: String::new(), max_rows: 0 });
            out.push(Msg::Sync);
        }
        _ => out.push(Msg::CopyDone),
    }
    if extended {
        out.push(Msg::Sync);
    }
}

/// The type OIDs a Parse may declare for its parameters: unspecified, int4, and the schema's
/// `checked`, `holder` and `checked[]` (read after the schema is made).
static PARAM_TYPES: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// One action: a Query (1–3 statements), an extended-protocol batch ending in Sync, or a COPY
/// with its data.
fn action(r: &mut Rng, out: &mut Vec<Msg>) {
    if r.below(8) == 0 {
        copy_action(r, out);
        return;
    }
    if r.below(2) == 0 {
        let n = 1 + r.below(3);
        let s: Vec<String> = (0..n).map(|_| statement(r)).collect();
        out.push(Msg::Query(s.join("; ")));
        return;
    }
    let names = ["", "s1", "s2"];
    let portals = ["", "p1", "c"];
    let n = 1 + r.below(6);
    for _ in 0..n {
        let m = match r.below(9) {
            0 | 1 => {
                let (name, sql) = (r.pick(&names).to_string(), statement(r));
                let types = PARAM_TYPES.get().map(Vec::as_slice).unwrap_or(&[]);
                if sql.contains("$1") && !types.is_empty() && r.below(2) == 0 {
                    let t = types[r.below(types.len() as u64) as usize];
                    Msg::ParseTyped { name, sql, types: vec![t] }
                } else {
                    Msg::Parse { name, sql }
                }
            }
            2 | 3 => {
                let (portal, statement) = (r.pick(&portals).to_string(), r.pick(&names).to_string());
                // A parameter value (text) for the statements with `$1`; a statement without
                // one fails the Bind, which the server answers with an error.
                if r.below(2) == 0 {
                    let v = ["(5)", "{5}", "5"][r.below(3) as usize];
                    let value = (r.below(4) != 0).then(|| v.to_string());
                    Msg::BindParams { portal, statement, values: vec![value] }
                } else {
                    Msg::Bind { portal, statement }
                }
            }
            4 | 5 => Msg::Execute { portal: r.pick(&portals).into(), max_rows: r.below(2) as i32 },
            6 => Msg::Describe { portal: r.pick(&portals).into() },
            7 => {
                if r.below(2) == 0 {
                    Msg::CloseStatement(r.pick(&names).into())
                } else {
                    Msg::ClosePortal(r.pick(&portals).into())
                }
            }
            _ => {
                if r.below(2) == 0 {
                    Msg::Sync
                } else {
                    Msg::Flush
                }
            }
        };
        out.push(m);
    }
    out.push(Msg::Sync);
}

/// Per table: id → md5 of the row; `None` when the table is gone. Two psql calls in all.
fn contents(g: &Gate) -> BTreeMap<String, Option<BTreeMap<String, String>>> {
    let exists =
        g.pg.psql(
            &TABLES
                .iter()
                .map(|t| format!("SELECT to_regclass('public.{t}') IS NOT NULL"))
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
        )
        .unwrap();
    let present: Vec<&str> =
        TABLES.iter().zip(exists.lines()).filter(|(_, e)| *e == "t").map(|(t, _)| *t).collect();
    let mut out: BTreeMap<String, Option<BTreeMap<String, String>>> =
        TABLES.iter().map(|t| (t.to_string(), None)).collect();
    for t in &present {
        out.insert(t.to_string(), Some(BTreeMap::new()));
    }
    if present.is_empty() {
        return out;
    }
    let sql = present
        .iter()
        .map(|t| format!("SELECT '{t}' || ' ' || id || ' ' || md5(x::text) FROM {t} x"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    for l in g.pg.psql(&sql).unwrap().lines() {
        let mut p = l.splitn(3, ' ');
        if let (Some(t), Some(id), Some(h)) = (p.next(), p.next(), p.next())
            && let Some(Some(m)) = out.get_mut(t)
        {
            m.insert(id.to_string(), h.to_string());
        }
    }
    out
}

/// Rows of `before` deleted or changed in `after`, per table; `None` when a table is gone.
fn changed(
    before: &BTreeMap<String, Option<BTreeMap<String, String>>>,
    after: &BTreeMap<String, Option<BTreeMap<String, String>>>,
    t: &str,
) -> Option<u64> {
    let b = before[t].as_ref().expect("tables exist before");
    let a = after[t].as_ref()?;
    Some(b.iter().filter(|(id, h)| a.get(*id) != Some(*h)).count() as u64)
}

#[test]
fn random_message_sequences_never_destroy_more_than_the_limits_allow() {
    let cases: u64 =
        std::env::var("HOLDFAST_GATE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("HOLDFAST_GATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    let g = Gate::start_with("", &format!("row_guard_max_rows = {MAX_ROWS}\nbudget_rows = 1000000\n"), false);
    g.pg.psql(SCHEMA).unwrap();
    let oid =
        |t: &str| -> u32 { g.pg.psql(&format!("SELECT '{t}'::regtype::oid")).unwrap().parse().unwrap() };
    let _ = PARAM_TYPES.set(vec![0, 23, oid("checked"), oid("holder"), oid("checked[]")]);
    // The oracle can fail: a big delete and a drop made directly are seen.
    g.pg.psql(RESET).unwrap();
    let before = contents(&g);
    g.pg.psql("DELETE FROM orders WHERE id > 150").unwrap();
    assert!(changed(&before, &contents(&g), "orders").unwrap() >= BIG);
    g.pg.psql("ALTER TABLE cards RENAME TO cards_gone").unwrap();
    assert_eq!(changed(&before, &contents(&g), "cards"), None);
    g.pg.psql("ALTER TABLE cards_gone RENAME TO cards").unwrap();
    // Code of the application's that DDL and ANALYZE run (see `DDL`), made before the gate:
    // an expression index over an IMMUTABLE function that calls a deleting one (on `cards`,
    // gate_app's, so that its ANALYZE runs it; RESET fills `cards` before `orders`), and an
    // event trigger.
    g.pg.psql(
        "CREATE FUNCTION tidy(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM purge(200); RETURN $1; END$$;
         CREATE INDEX cards_tidy ON cards ((tidy(id)));
         ALTER TABLE cards OWNER TO gate_app;
         CREATE FUNCTION wipe() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN PERFORM purge(200); END$$;
         CREATE EVENT TRIGGER wipe ON ddl_command_end EXECUTE FUNCTION wipe();",
    )
    .unwrap();
    let mut statements_sent = 0u64;
    let mut rows_changed = 0u64;
    let mut copies_opened = 0u64;
    let first: u64 = std::env::var("HOLDFAST_GATE_FUZZ_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    for case in first..first + cases {
        let mut r = Rng(seed ^ (case.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        g.pg.psql(RESET).unwrap();
        // Cursors WITH HOLD and prepared statements die with the session: one per case.
        let before = contents(&g);
        let mut c = Raw::connect(&g, "alice", "alice-password");
        let mut sent: Vec<Msg> = Vec::new();
        let actions = 2 + r.below(6);
        let mut i = 0;
        while i < actions {
            let mut batch = Vec::new();
            action(&mut r, &mut batch);
            // Sometimes pipelined: the next action goes out before this one is answered.
            if r.below(3) == 0 && i + 1 < actions {
                action(&mut r, &mut batch);
                i += 1;
            }
            i += 1;
            sent.extend(batch.iter().cloned());
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.exchange(&batch)));
            let Ok(replies) = answered else {
                panic!(
                    "HANG or broken session (seed {seed}, case {case}): the gate did not answer\nsequence: {sent:#?}"
                );
            };
            // CopyInResponse: a COPY FROM STDIN the gate let start.
            copies_opened += replies.iter().filter(|m| m.tag == b'G').count() as u64;
        }
        drop(c);
        // Executed statements: every statement of every Query, every Execute.
        let executed: u64 = sent
            .iter()
            .map(|m| match m {
                Msg::Query(s) => s.split("; ").count() as u64,
                Msg::Execute { .. } => 1,
                _ => 0,
            })
            .sum();
        statements_sent += executed;
        // The session is closed: wait until the server ended it (its transaction with it).
        let deadline = std::time::Instant::now() + testkit::wait::budget(std::time::Duration::from_secs(30));
        while g.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'gate_app'").unwrap() != "0" {
            assert!(std::time::Instant::now() < deadline, "the session did not end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let after = contents(&g);
        for t in TABLES {
            let Some(changed) = changed(&before, &after, t) else {
                panic!("BYPASS (seed {seed}, case {case}): table {t} was dropped\nsequence: {sent:#?}");
            };
            rows_changed += changed;
            let bound = MAX_ROWS * executed;
            assert!(
                changed <= bound && changed < BIG,
                "BYPASS (seed {seed}, case {case}): {changed} rows of {t} deleted or changed, more than {executed} statements within the limit of {MAX_ROWS} rows can\nsequence: {sent:#?}"
            );
        }
    }
    // The writes within the limits did run (a gate refusing everything would pass otherwise).
    if cases >= 20 {
        assert!(rows_changed > 0, "no allowed write changed anything in {cases} sequences");
        assert!(
            copies_opened > 0,
            "no COPY FROM STDIN started in {cases} sequences: the generator does not reach it"
        );
    }
    eprintln!(
        "gate fuzz: {cases} sequences, {statements_sent} statements, {copies_opened} COPY FROM STDIN started, {rows_changed} rows changed within the limits, seed {seed}: no bypass"
    );
}
