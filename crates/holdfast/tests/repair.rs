//! `holdfast repair` against a real PostgreSQL and a real vault, on shop data: an insider's
//! transaction deletes one merchant's orders (their items cascade) and zeroes that merchant's
//! gift cards, the shop keeps trading, and the repair brings back exactly what the incident
//! destroyed — leaving every order placed since, the cards topped up since (conflicts,
//! reported) and every other merchant untouched. Bad input and a repair whose verification
//! fails change nothing. A dropped table comes back with its indexes, constraints, grants,
//! sequence position and the foreign key that pointed at it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use testkit::pg::TempPg;
use testkit::vault::TempVault;

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const MERCHANTS: i64 = 8;
/// The merchant the insider wipes.
const VICTIM: i64 = 3;

/// A small shop (DESIGN.md §4): merchants, customers, orders with their items (which cascade
/// with the order and have no primary key, as in the demo's shop), gift cards.
fn shop() -> String {
    format!(
        "CREATE TABLE merchants (merchant_id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE customers (customer_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, name text NOT NULL);
         CREATE TABLE orders (order_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants,
             customer_id bigint NOT NULL REFERENCES customers, total_cents int NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE, merchant_id int NOT NULL,
             product text NOT NULL, qty int NOT NULL, price_cents int NOT NULL);
         CREATE TABLE stored_value_cards (card_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants,
             customer_id bigint NOT NULL REFERENCES customers, balance_cents bigint NOT NULL CHECK (balance_cents >= 0));
         CREATE INDEX ON orders (merchant_id);
         CREATE INDEX ON order_items (order_id);
         INSERT INTO merchants SELECT g, 'merchant ' || g FROM generate_series(1, {m}) g;
         INSERT INTO customers SELECT g, 1 + g % {m}, 'customer ' || g FROM generate_series(1, {m} * 20) g;
         INSERT INTO orders (order_id, merchant_id, customer_id, total_cents, note, created_at)
           SELECT g, 1 + g % {m}, 1 + g % {m} + {m} * (g % 20), 100 + g * 7 % 5000,
                  CASE WHEN g % 5 = 0 THEN 'gift, \"wrapped\"' || E'\\n' || 'tab\\there' END, '2026-11-01 10:00:00+00'::timestamptz + g * interval '1 minute'
           FROM generate_series(1, {m} * 60) g;
         SELECT setval('orders_order_id_seq', {m} * 60);
         INSERT INTO order_items SELECT order_id, merchant_id, 'product ' || (order_id % 13), 1 + order_id % 3, total_cents FROM orders;
         INSERT INTO order_items SELECT order_id, merchant_id, 'bag', 1, 10 FROM orders;
         INSERT INTO stored_value_cards SELECT g, 1 + g % {m}, 1 + g % {m} + {m} * (g % 20), 1000 + g * 13 % 9000 FROM generate_series(1, {m} * 10) g;
         ANALYZE;",
        m = MERCHANTS
    )
}

/// Every row of a merchant, table by table, in a stable order: its fingerprint.
fn fingerprint(pg: &TempPg, merchant: i64) -> String {
    let mut out = String::new();
    for (t, order) in [
        ("orders", "order_id"),
        ("order_items", "t::text"),
        ("stored_value_cards", "card_id"),
        ("customers", "customer_id"),
    ] {
        out.push_str(
            &pg.psql(&format!(
                "SELECT '{t}:' || count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order})), '') FROM {t} t WHERE merchant_id = {merchant}"
            ))
            .unwrap(),
        );
        out.push('\n');
    }
    out
}

/// Every row of every table: nothing changed when this is equal.
fn everything(pg: &TempPg) -> String {
    (1..=MERCHANTS).map(|m| fingerprint(pg, m)).collect::<Vec<_>>().join("")
        + &pg
            .psql("SELECT (SELECT last_value FROM orders_order_id_seq), (SELECT count(*) FROM merchants)")
            .unwrap()
}

struct Setup {
    pg: TempPg,
    v: TempVault,
    admin: PathBuf,
    read: PathBuf,
}

impl Setup {
    /// A vault protecting `pg` (catalog refreshed every 2 s, small mass-change thresholds), a
    /// base backup taken, and a read token.
    fn new(pg: TempPg) -> Setup {
        pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
        let mut v = TempVault::start(holdfast()).unwrap();
        v.protect(&pg, "catalog_refresh_seconds = 2\nmass_delete_rows = 100\n").unwrap();
        let admin = v.scratch().join("admin.token");
        let out = v.cli(&admin, &["backup", "--cluster", "main", "--json"]).unwrap();
        assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
        let read = v.scratch().join("read.token");
        v.create_token("read", "repair", &read).unwrap();
        Setup { pg, v, admin, read }
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        let out = self.v.cli(&self.admin, &["incidents", "--cluster", "main", "--json"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The number of tables in the collector's catalog snapshot (0 before the first).
    fn catalog_tables(&self) -> u64 {
        let out = self.v.cli(&self.admin, &["status", "--json"]).unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        st["clusters"][0]["catalog_tables"].as_u64().unwrap_or(0)
    }

    /// Runs `sql` (creating `tables` new tables) and waits until the collector's catalog
    /// snapshot knows them, so that incidents name them.
    fn create(&self, sql: &str, tables: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut known = self.catalog_tables();
        while known == 0 {
            assert!(Instant::now() < deadline, "no catalog snapshot\n{}", self.v.log());
            std::thread::sleep(Duration::from_millis(100));
            known = self.catalog_tables();
        }
        self.pg.psql(sql).unwrap();
        loop {
            let now = self.catalog_tables();
            if now >= known + tables {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the catalog snapshot has {now} tables, not {known} + {tables}\n{}",
                self.v.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for an incident of `kind` after the first `known`; returns it and its number.
    fn wait_incident(&self, known: usize, kind: &str) -> (serde_json::Value, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.incidents();
            if let Some(k) = list.iter().skip(known).position(|i| i["kind"] == kind) {
                return (list[known + k].clone(), (known + k + 1).to_string());
            }
            assert!(Instant::now() < deadline, "no {kind} incident: {list:#?}\n{}", self.v.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dsn(&self, user: &str, password: &str) -> String {
        format!(
            "host={} port={} dbname=postgres user={user} password={password}",
            self.pg.socket_dir().display(),
            self.pg.port()
        )
    }

    /// `holdfast repair --cluster main …` with the read token, as the superuser unless `dsn`.
    fn repair(&self, args: &[&str], dsn: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = std::process::Command::new(holdfast());
        let own = self.dsn("postgres", self.pg.superuser_password());
        cmd.arg("repair")
            .args(["--cluster", "main", "--dsn", dsn.unwrap_or(&own)])
            .args(args)
            .args(self.v.remote_args(&self.read));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn repairing_one_merchant_brings_back_what_the_incident_destroyed_and_keeps_everything_since() {
    let s = Setup::new(TempPg::start().unwrap());
    s.create(
        &format!("{}\nCREATE ROLE clerk LOGIN PASSWORD 'clerk-pw'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO clerk;", shop()),
        5,
    );
    let victim_orders_before =
        s.pg.psql(&format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY order_id) FROM orders t WHERE merchant_id = {VICTIM}"
        ))
        .unwrap();
    let victim_items_before = s
        .pg
        .psql(&format!("SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM order_items t WHERE merchant_id = {VICTIM}"))
        .unwrap();
    let cards_before: Vec<(i64, i64)> = s
        .pg
        .psql(&format!("SELECT card_id, balance_cents FROM stored_value_cards WHERE merchant_id = {VICTIM} ORDER BY card_id"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('|').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(cards_before.len(), 10);

    let known = s.incidents().len();
    // The insider: one transaction.
    s.pg.psql(&format!(
        "BEGIN; DELETE FROM orders WHERE merchant_id = {VICTIM}; UPDATE stored_value_cards SET balance_cents = 0 WHERE merchant_id = {VICTIM}; COMMIT"
    ))
    .unwrap();
    let (incident, n) = s.wait_incident(known, "mass_delete");
    let n = n.as_str();
    eprintln!("incident: {incident:#}");

    // Business goes on for every merchant, the victim included: new orders with items, and
    // three of the victim's zeroed cards topped up (and one of another merchant's).
    for round in 0..3 {
        for m in 1..=MERCHANTS {
            s.pg.psql(&format!(
                "WITH o AS (INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES ({m}, {c}, {t}) RETURNING order_id, merchant_id, total_cents)
                 INSERT INTO order_items SELECT order_id, merchant_id, 'new ' || {round}, 1, total_cents FROM o",
                c = m + MERCHANTS,
                t = 500 + round
            ))
            .unwrap();
        }
    }
    let topped: Vec<i64> = cards_before.iter().take(3).map(|(id, _)| *id).collect();
    for id in &topped {
        s.pg.psql(&format!(
            "UPDATE stored_value_cards SET balance_cents = balance_cents + 2500 WHERE card_id = {id}"
        ))
        .unwrap();
    }
    s.pg.psql(&format!(
        "UPDATE stored_value_cards SET balance_cents = balance_cents + 1 WHERE merchant_id = {}",
        VICTIM + 1
    ))
    .unwrap();
    let since: Vec<String> = s
        .pg
        .psql(&format!("SELECT t::text FROM orders t WHERE order_id > {} ORDER BY order_id", MERCHANTS * 60))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(since.len() as i64, 3 * MERCHANTS);
    let others: Vec<String> =
        (1..=MERCHANTS).filter(|m| *m != VICTIM).map(|m| fingerprint(&s.pg, m)).collect();
    let untouched = everything(&s.pg);

    // Bad input: refused with a clear message, nothing changed.
    for (args, dsn, expect) in [
        (vec!["--incident", "9"], None, "has no incident 9"),
        (vec!["--incident", n, "--tenant", "shop_id=3"], None, "no column \"shop_id\""),
        (
            vec!["--incident", n, "--table", "postgres.public.customers"],
            None,
            "is not among the objects of incident",
        ),
        (
            vec!["--incident", n, "--tenant", "merchant_id=3"],
            Some(s.dsn("clerk", "clerk-pw")),
            "lacks INSERT, UPDATE on public.",
        ),
    ] {
        let out = s.repair(&args, dsn.as_deref(), &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out.stdout));
        assert!(err.contains(expect) && err.contains("nothing was changed"), "{args:?}: {err}");
        assert_eq!(everything(&s.pg), untouched, "{args:?} changed the live database");
    }

    // A concurrent write between the plan and the repair (a zeroed card the plan reverts):
    // the verification inside the transaction fails and everything rolls back.
    let raced = cards_before[5].0;
    let tenant = format!("merchant_id={VICTIM}");
    let out = s.repair(
        &["--incident", n, "--tenant", &tenant],
        None,
        &[(
            repair::TEST_HOOK_ENV,
            &format!(
                "UPDATE stored_value_cards SET balance_cents = balance_cents + 7 WHERE card_id = {raced}"
            ),
        )],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the raced repair committed: {}", text(&out.stdout));
    assert!(
        err.contains("verification failed on public.stored_value_cards") && err.contains("rolled back"),
        "{err}"
    );
    s.pg.psql(&format!(
        "UPDATE stored_value_cards SET balance_cents = balance_cents - 7 WHERE card_id = {raced}"
    ))
    .unwrap();
    assert_eq!(everything(&s.pg), untouched, "a failed repair left changes behind");

    // The repair.
    let t = Instant::now();
    let report_file = s.v.scratch().join("repair-report.json");
    let out = s.repair(
        &["--incident", n, "--tenant", &tenant, "--report", report_file.to_str().unwrap()],
        None,
        &[],
    );
    assert!(out.status.success(), "repair failed: {}\n{}", text(&out.stderr), text(&out.stdout));
    eprintln!("repair of merchant {VICTIM}: {:?}\n{}\n{}", t.elapsed(), text(&out.stderr), text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    assert_eq!(report["applied"], true);
    let table = |name: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {report:#}"))
    };
    assert_eq!(
        (table("public.orders")["reinserted"].as_u64(), table("public.orders")["reverted"].as_u64()),
        (Some(60), Some(0))
    );
    assert_eq!(table("public.order_items")["reinserted"].as_u64(), Some(120));
    assert_eq!(table("public.order_items")["keyed"], false);
    let cards = table("public.stored_value_cards");
    assert_eq!(cards["reverted"].as_u64(), Some(7));
    let mut conflict_keys: Vec<String> = cards["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    let mut want_keys: Vec<String> = topped.iter().map(|id| format!("({id})")).collect();
    conflict_keys.sort();
    want_keys.sort();
    assert_eq!(conflict_keys, want_keys);
    assert_eq!(report["verified"].as_array().unwrap().len(), 3, "{report:#}");

    // Every deleted order and item is back, exactly as it was.
    let orders_now = s
        .pg
        .psql(&format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY order_id) FROM orders t WHERE merchant_id = {VICTIM} AND order_id <= {}",
            MERCHANTS * 60
        ))
        .unwrap();
    assert_eq!(orders_now, victim_orders_before);
    let items_now = s
        .pg
        .psql(&format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM order_items t WHERE merchant_id = {VICTIM} AND order_id <= {}",
            MERCHANTS * 60
        ))
        .unwrap();
    assert_eq!(items_now, victim_items_before);
    // Balances back, except the cards topped up since: left at what the customer paid in.
    for (id, was) in &cards_before {
        let now: i64 =
            s.pg.psql(&format!("SELECT balance_cents FROM stored_value_cards WHERE card_id = {id}"))
                .unwrap()
                .parse()
                .unwrap();
        let want = if topped.contains(id) { 2500 } else { *was };
        assert_eq!(now, want, "card {id}");
    }
    // Every order placed since the incident is still there, unchanged.
    let since_now: Vec<String> = s
        .pg
        .psql(&format!("SELECT t::text FROM orders t WHERE order_id > {} ORDER BY order_id", MERCHANTS * 60))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(since_now, since);
    // Every other merchant exactly as before the repair.
    let others_now: Vec<String> =
        (1..=MERCHANTS).filter(|m| *m != VICTIM).map(|m| fingerprint(&s.pg, m)).collect();
    assert_eq!(others_now, others);
    // The application's next order gets a fresh id.
    s.pg.psql(&format!(
        "INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES ({VICTIM}, {}, 1)",
        VICTIM + MERCHANTS
    ))
    .unwrap();
}

#[test]
fn a_dropped_table_is_recreated_with_indexes_constraints_grants_sequence_and_the_foreign_key_to_it() {
    let s = Setup::new(TempPg::start().unwrap());
    s.create(&format!(
        "{}
         CREATE ROLE app LOGIN PASSWORD 'app-pw';
         CREATE TABLE coupons (coupon_id serial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants,
             code text NOT NULL UNIQUE, pct int NOT NULL DEFAULT 10 CHECK (pct BETWEEN 1 AND 90));
         CREATE INDEX coupons_by_merchant ON coupons (merchant_id, pct);
         CREATE TABLE redemptions (redemption_id serial PRIMARY KEY, coupon_id int NOT NULL REFERENCES coupons, order_id bigint);
         INSERT INTO coupons (merchant_id, code, pct) SELECT 1 + g % {MERCHANTS}, 'C' || g, 5 + g % 50 FROM generate_series(1, 400) g;
         INSERT INTO redemptions (coupon_id, order_id) SELECT g, g FROM generate_series(1, 40) g;
         GRANT SELECT, INSERT ON coupons, redemptions TO app;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;",
        shop()
    ), 7);
    let describe = "SELECT (SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'coupons'), \
                    (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\\n' ORDER BY conname) FROM pg_constraint WHERE conrelid IN ('coupons'::regclass, 'redemptions'::regclass)), \
                    (SELECT string_agg(grantee || ':' || privilege_type, ',' ORDER BY grantee, privilege_type) FROM information_schema.role_table_grants WHERE table_name = 'coupons'), \
                    (SELECT column_default FROM information_schema.columns WHERE table_name = 'coupons' AND column_name = 'pct'), \
                    (SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY coupon_id)) FROM coupons t)";
    let before = s.pg.psql(describe).unwrap();
    // Whole-second times around the DROP, for the window form (--before T --after T2) below:
    // T after every commit of the set-up, T2 after the DROP.
    let utc_now = "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
    std::thread::sleep(Duration::from_millis(1100));
    let t_before = s.pg.psql(utc_now).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let known = s.incidents().len();
    s.pg.psql("DROP TABLE coupons CASCADE").unwrap();
    let (_, n) = s.wait_incident(known, "relations_dropped");
    let n = n.as_str();
    std::thread::sleep(Duration::from_millis(1100));
    let t_after = s.pg.psql(utc_now).unwrap();
    // The shop goes on (orders elsewhere); the redemptions table lost its foreign key.
    s.pg.psql("INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES (1, 9, 100)").unwrap();
    assert!(s.pg.psql("SELECT to_regclass('coupons') IS NULL").unwrap() == "t");

    // The application re-created an empty `coupons` of its own: `--as` brings the old one
    // back beside it, under another name (its indexes and sequence renamed too), the new one
    // untouched.
    s.pg.psql("CREATE TABLE coupons (coupon_id serial PRIMARY KEY, code text); INSERT INTO coupons (code) VALUES ('fresh')")
        .unwrap();
    let out = s.repair(&["--incident", n, "--table", "public.coupons", "--as", "coupons_before"], None, &[]);
    assert!(out.status.success(), "repair --as: {}\n{}", text(&out.stderr), text(&out.stdout));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("public.coupons (as public.coupons_before)")
            && plan.contains("coupons_before_by_merchant"),
        "{plan}"
    );
    assert_eq!(
        s.pg.psql(
            "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY coupon_id)) FROM coupons_before t"
        )
        .unwrap(),
        before.rsplit('|').next().unwrap()
    );
    assert_eq!(s.pg.psql("SELECT string_agg(t::text, ',') FROM coupons t").unwrap(), "(1,fresh)");
    assert_eq!(
        s.pg.psql("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'coupons_before'").unwrap(),
        "coupons_before_by_merchant,coupons_before_code_key,coupons_before_pkey"
    );
    s.pg.psql("DROP TABLE coupons, coupons_before").unwrap();

    let out = s.repair(&["--incident", n, "--json"], None, &[]);
    assert!(out.status.success(), "repair: {}\n{}", text(&out.stderr), text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let coupons = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.coupons")
        .cloned()
        .unwrap();
    assert_eq!(
        (coupons["action"].as_str(), coupons["recreated_rows"].as_u64()),
        (Some("recreate"), Some(400)),
        "{report:#}"
    );
    assert_eq!(s.pg.psql(describe).unwrap(), before, "the table did not come back as it was");
    // The sequence is where recovery left it: PostgreSQL logs sequences 32 values ahead, so a
    // recovered sequence continues at most that far past its last id; never behind.
    let seq: i64 = s.pg.psql("SELECT last_value FROM coupons_coupon_id_seq").unwrap().parse().unwrap();
    assert!((400..=432).contains(&seq), "sequence at {seq}");
    // The application's inserts work: its own login, the sequence's next id.
    let out = std::process::Command::new(testkit::pg::bin("psql").unwrap())
        .arg("-d")
        .arg(s.dsn("app", "app-pw"))
        .args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "INSERT INTO coupons (merchant_id, code) VALUES (2, 'NEW') RETURNING coupon_id, pct",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "the app cannot insert: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{}|10", seq + 1));
    // The foreign key from redemptions is back and enforced.
    let bad = s.pg.psql("INSERT INTO redemptions (coupon_id) VALUES (99999)");
    assert!(bad.is_err(), "redemptions accepts a coupon that does not exist");

    // --export, with the damage named by a window instead of the incident: the table as of
    // before, as CSV for one merchant; nothing changes.
    let live = s
        .pg
        .psql("SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY coupon_id)) FROM coupons t")
        .unwrap();
    let dir = s.v.scratch().join("export");
    let out = s.repair(
        &[
            "--before",
            &t_before,
            "--after",
            &t_after,
            "--table",
            "public.coupons",
            "--tenant",
            "merchant_id=2",
            "--export",
            dir.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert!(out.status.success(), "export: {}\n{}", text(&out.stderr), text(&out.stdout));
    let csv = std::fs::read_to_string(dir.join("postgres.public.coupons.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "coupon_id,merchant_id,code,pct");
    assert_eq!(lines.len(), 1 + 400 / MERCHANTS as usize, "{csv}");
    assert!(lines[1..].iter().all(|l| l.split(',').nth(1) == Some("2")), "{csv}");
    assert_eq!(
        s.pg.psql(
            "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY coupon_id)) FROM coupons t"
        )
        .unwrap(),
        live,
        "an export changed the live table"
    );
}
