//! The gate's once-per-connection catalog read of built-in names overloaded outside
//! pg_catalog and of domains with CHECK constraints (`server::builtins_shadowed_sql`), against
//! a real PostgreSQL.

use testkit::pg::TempPg;

#[test]
fn overloads_of_built_in_names_are_found_and_copies_are_not() {
    let pg = TempPg::start().unwrap();
    let full = gate::server::builtins_shadowed_sql();
    // The first three columns (the fourth, the types' OIDs, is checked at the end).
    let sql = format!("SELECT a, b, c FROM ({full}) r(a, b, c, d, e)");
    assert_eq!(pg.psql(&sql).unwrap(), "f||", "a fresh database");
    assert_eq!(pg.psql(&full).unwrap(), "f||||", "a fresh database");
    // The same argument types as the built-in: pg_catalog, first in search_path, wins.
    pg.psql("CREATE SCHEMA app; CREATE FUNCTION app.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'")
        .unwrap();
    assert_eq!(pg.psql(&sql).unwrap(), "f||", "a copy of lower(text)");
    pg.psql("CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql AS 'SELECT $1'").unwrap();
    assert_eq!(pg.psql(&sql).unwrap(), "t||", "lower(int)");
    pg.psql("DROP FUNCTION public.lower(int); CREATE FUNCTION f(int, text) RETURNS bool LANGUAGE sql AS 'SELECT true';
             CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = text, FUNCTION = f)")
        .unwrap();
    assert_eq!(pg.psql(&sql).unwrap(), "t||", "= (int, text)");
    // Domains with CHECK constraints that may run code that is not built in — a user's
    // function, a built-in the guard does not take for safe —, and a domain over one; not one
    // without a CHECK, nor one whose CHECK calls only safe built-ins and operators.
    pg.psql(
        "CREATE FUNCTION pos(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
         CREATE DOMAIN positive AS int CHECK (pos(VALUE) > 0); CREATE DOMAIN small_positive AS positive;
         CREATE DOMAIN killing AS int CHECK (pg_terminate_backend(VALUE));
         CREATE DOMAIN plain AS int; CREATE TYPE mood AS ENUM ('ok');
         CREATE DOMAIN plain_checked AS text CHECK (VALUE ~ '@' AND length(VALUE) < 200 AND VALUE = lower(VALUE));
         CREATE DOMAIN plain_positive AS int CHECK (VALUE > 0)",
    )
    .unwrap();
    assert_eq!(pg.psql(&sql).unwrap(), "t|killing,positive,small_positive|");
    // Relations whose reading runs a user's code: a view calling f (and a view over it), a table
    // with an index over it; not a view or an index over built-ins only.
    pg.psql(
        "CREATE FUNCTION g(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
         CREATE VIEW calls AS SELECT g(1) AS n; CREATE VIEW over_calls AS SELECT * FROM calls;
         CREATE TABLE indexed (x int); CREATE INDEX ON indexed ((g(x)));
         CREATE TABLE plain_t (x int); CREATE INDEX ON plain_t ((x + 1)); CREATE VIEW plain_v AS SELECT lower('a')",
    )
    .unwrap();
    assert_eq!(pg.psql(&sql).unwrap(), "t|killing,positive,small_positive|calls,indexed,over_calls");
    // Types whose conversion runs a domain's CHECKs without the domain's name being cast to: a
    // composite type (or a table's row type) with such a field, a range over such a domain; and
    // a range whose subtype_diff is a user's function (ANALYZE and the planner run it: a table
    // with a column of it is read with code too). Not a composite of plain fields.
    pg.psql(
        "CREATE TYPE holder AS (p positive, q int[]); CREATE TABLE inbox (id int, z small_positive);
         CREATE TYPE pos_range AS RANGE (subtype = positive);
         CREATE TYPE plain_pair AS (a int, b text);
         CREATE FUNCTION diff(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS 'SELECT $1 - $2';
         CREATE TYPE user_range AS RANGE (subtype = float8, subtype_diff = diff);
         CREATE TYPE builtin_range AS RANGE (subtype = float8, subtype_diff = float8mi);
         CREATE TABLE ranged (r user_range); CREATE TABLE builtin_ranged (r builtin_range)",
    )
    .unwrap();
    assert_eq!(
        pg.psql(&sql).unwrap(),
        "t|holder,inbox,killing,pos_multirange,pos_range,positive,ranged,small_positive,user_multirange,user_range|calls,inbox,indexed,over_calls,ranged"
    );
    // A table whose row-level security policy reads a relation that runs code (a view over g):
    // reading the table runs it; a policy over built-ins only does not count.
    pg.psql(
        "CREATE TABLE guarded (x int); CREATE POLICY p ON guarded USING (x IN (SELECT n FROM calls));
         CREATE TABLE plain_guarded (x int); CREATE POLICY p ON plain_guarded USING (x > 0)",
    )
    .unwrap();
    assert!(
        pg.psql(&sql).unwrap().ends_with("|calls,guarded,inbox,indexed,over_calls,ranged"),
        "{}",
        pg.psql(&sql).unwrap()
    );
    // User types whose conversion or comparison runs a user's function: a cast through one
    // (`m::int` of a column), a default btree operator class (a plain ORDER BY or DISTINCT
    // runs its comparison); tables with such a column. Not a cast or class over built-ins.
    pg.psql(
        "CREATE TYPE mt AS (a int); CREATE FUNCTION mt_int(mt) RETURNS int LANGUAGE sql AS 'SELECT ($1).a';
         CREATE CAST (mt AS int) WITH FUNCTION mt_int(mt); CREATE TABLE casted (m mt);
         CREATE TYPE mt2 AS (a int); CREATE FUNCTION mt2_cmp(mt2, mt2) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 0';
         CREATE OPERATOR CLASS mt2_ops DEFAULT FOR TYPE mt2 USING btree AS FUNCTION 1 mt2_cmp(mt2, mt2);
         CREATE TABLE sorted (m mt2); CREATE TYPE plain_mt AS (a int); CREATE TABLE plain_typed (m plain_mt)",
    )
    .unwrap();
    let row = pg.psql(&sql).unwrap();
    let cols: Vec<&str> = row.split('|').collect();
    let types: Vec<&str> = cols[1].split(',').collect();
    let relations: Vec<&str> = cols[2].split(',').collect();
    for t in ["mt", "mt2", "casted", "sorted"] {
        assert!(types.contains(&t), "{t} in {row}");
    }
    for r in ["casted", "sorted"] {
        assert!(relations.contains(&r), "{r} in {row}");
    }
    assert!(!row.contains("plain_"), "{row}");
    // A table with a default over a user's function (the planner folds `DEFAULT g(1)` into an
    // INSERT's plan), and a table with a column of a checked domain (a parameter PostgreSQL
    // infers of its type is converted through domain_in at Bind); not a default over built-ins.
    pg.psql(
        "CREATE TABLE defaulted (x int DEFAULT g(1)); CREATE TABLE plain_defaulted (x int DEFAULT 1 + 1);
         CREATE TABLE domained (x positive); CREATE TABLE plain_domained (x plain_checked, y plain_positive)",
    )
    .unwrap();
    let row = pg.psql(&sql).unwrap();
    let relations: Vec<&str> = row.split('|').nth(2).unwrap().split(',').collect();
    for r in ["defaulted", "domained"] {
        assert!(relations.contains(&r), "{r} in {row}");
    }
    assert!(!row.contains("plain_"), "{row}");
    // The fourth column: the OIDs of the checked and code types, arrays included — a Parse
    // declaring a parameter of one is refused — not of plain types.
    let oids = pg.psql(&format!("SELECT d FROM ({full}) r(a, b, c, d, e)")).unwrap();
    let oids: Vec<&str> = oids.split(',').collect();
    let oid = |t: &str| pg.psql(&format!("SELECT '{t}'::regtype::oid")).unwrap();
    for t in ["positive", "positive[]", "small_positive", "holder", "holder[]", "pos_range", "mt", "inbox"] {
        assert!(oids.contains(&oid(t).as_str()), "{t} among {oids:?}");
    }
    for t in ["plain", "mood", "plain_pair", "plain_mt", "int4", "plain_checked", "plain_positive"] {
        assert!(!oids.contains(&oid(t).as_str()), "{t} not among {oids:?}");
    }
    // The fifth: the code types alone (what ANALYZE runs), not the checked domains.
    let code = pg.psql(&format!("SELECT e FROM ({full}) r(a, b, c, d, e)")).unwrap();
    let code: Vec<&str> = code.split(',').collect();
    for t in ["user_range", "mt", "mt2", "casted", "sorted"] {
        assert!(code.contains(&t), "{t} among {code:?}");
    }
    for t in ["positive", "holder", "pos_range", "plain_mt", "builtin_range"] {
        assert!(!code.contains(&t), "{t} not among {code:?}");
    }
}
