//! The shop of the incident (DESIGN.md §4): schema, a deterministic initial load sized by the
//! number of merchants, the order workload that runs through the gate while remembering every
//! transaction it committed, and the merchant-by-merchant comparison of a restored copy with
//! what was committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use pgproto::conn::{Config, ReplicationConnection};

/// Customers, products, historical orders and gift cards per merchant in the initial load.
pub const CUSTOMERS: i64 = 40;
pub const PRODUCTS: i64 = 20;
pub const ORDERS: i64 = 100;
pub const CARDS: i64 = 10;

/// The schema and the initial load for `m` merchants. Ids are chosen, not drawn from
/// sequences, so that the workload can name a merchant's customers, products and cards:
/// the j-th customer of merchant m is `m + M·j`, and so on.
pub fn schema_and_load(m: i64) -> String {
    format!(
        "
CREATE TABLE merchants (merchant_id int PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE customers (customer_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, name text NOT NULL, phone text);
CREATE TABLE products (product_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, title text NOT NULL, price_cents int NOT NULL);
CREATE TABLE orders (order_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, customer_id bigint NOT NULL REFERENCES customers, total_cents int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders, merchant_id int NOT NULL, product_id bigint NOT NULL REFERENCES products, qty int NOT NULL, price_cents int NOT NULL);
CREATE TABLE points_ledger (entry_id bigserial PRIMARY KEY, merchant_id int NOT NULL, customer_id bigint NOT NULL REFERENCES customers, delta int NOT NULL, reason text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE stored_value_cards (card_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, customer_id bigint NOT NULL REFERENCES customers, balance_cents bigint NOT NULL CHECK (balance_cents >= 0));
CREATE INDEX ON orders (merchant_id);
CREATE INDEX ON order_items (order_id);
CREATE INDEX ON points_ledger (customer_id);
INSERT INTO merchants SELECT g, 'merchant ' || g FROM generate_series(1, {m}) g;
INSERT INTO customers SELECT g, 1 + (g - 1) % {m}, 'customer ' || g, '138' || lpad(g::text, 8, '0') FROM generate_series(1, {c}) g;
INSERT INTO products SELECT g, 1 + (g - 1) % {m}, 'product ' || g, 100 + g % 9900 FROM generate_series(1, {p}) g;
INSERT INTO orders (order_id, merchant_id, customer_id, total_cents)
  SELECT g, mm, mm + {m} * (g % {CUSTOMERS}), 100 + g % 50000 FROM (SELECT g, 1 + (g - 1) % {m} AS mm FROM generate_series(1, {o}) g) s;
SELECT setval('orders_order_id_seq', {o});
INSERT INTO order_items SELECT order_id, merchant_id, merchant_id + {m} * (order_id % {PRODUCTS}), 1 + order_id % 3, total_cents FROM orders;
INSERT INTO points_ledger (merchant_id, customer_id, delta, reason)
  SELECT mm, mm + {m} * (g % {CUSTOMERS}), g % 100, 'purchase' FROM (SELECT g, 1 + (g - 1) % {m} AS mm FROM generate_series(1, {o}) g) s;
INSERT INTO stored_value_cards SELECT g, mm, mm + {m} * (g % {CUSTOMERS}), 10000 + g % 90000 FROM (SELECT g, 1 + (g - 1) % {m} AS mm FROM generate_series(1, {k}) g) s;
ANALYZE;
",
        c = m * CUSTOMERS,
        p = m * PRODUCTS,
        o = m * ORDERS,
        k = m * CARDS,
    )
}

/// The grants for the gate's upstream login.
pub const GRANTS: &str = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gate_app; \
     GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gate_app;";

/// The shop's tables, in the order they are read and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Merchants,
    Customers,
    Products,
    Orders,
    OrderItems,
    PointsLedger,
    StoredValueCards,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Merchants,
        Table::Customers,
        Table::Products,
        Table::Orders,
        Table::OrderItems,
        Table::PointsLedger,
        Table::StoredValueCards,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Merchants => "merchants",
            Table::Customers => "customers",
            Table::Products => "products",
            Table::Orders => "orders",
            Table::OrderItems => "order_items",
            Table::PointsLedger => "points_ledger",
            Table::StoredValueCards => "stored_value_cards",
        }
    }

    /// Every row of the table as `key|merchant|value|value…`: the key identifies the row, the
    /// values are every other column (timestamps as integer microseconds since the epoch, so
    /// that the text does not depend on a session's TimeZone or DateStyle). `order_items` has
    /// no primary key: its rows are keyed by order and product, with every (qty, price) pair
    /// of that key in the values, so a duplicated row is a wrong value, not a hidden one.
    fn query(self) -> &'static str {
        match self {
            Table::Merchants => {
                "SELECT merchant_id, merchant_id, name, (extract(epoch FROM created_at) * 1000000)::bigint FROM merchants"
            }
            Table::Customers => {
                "SELECT customer_id, merchant_id, name, coalesce(phone, '<null>') FROM customers"
            }
            Table::Products => "SELECT product_id, merchant_id, title, price_cents FROM products",
            Table::Orders => {
                "SELECT order_id, merchant_id, customer_id, total_cents, (extract(epoch FROM created_at) * 1000000)::bigint FROM orders"
            }
            Table::OrderItems => {
                "SELECT order_id || '/' || product_id, merchant_id, string_agg(qty || ':' || price_cents, ',' ORDER BY qty, price_cents) \
                 FROM order_items GROUP BY order_id, product_id, merchant_id"
            }
            Table::PointsLedger => {
                "SELECT entry_id, merchant_id, customer_id, delta, reason, (extract(epoch FROM created_at) * 1000000)::bigint FROM points_ledger"
            }
            Table::StoredValueCards => {
                "SELECT card_id, merchant_id, customer_id, balance_cents FROM stored_value_cards"
            }
        }
    }
}

/// One row: the merchant it belongs to and its other columns as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub merchant: i64,
    pub values: Vec<String>,
}

/// Every row of every table of the shop, read with one query per table. The same queries
/// read the live shop before the workload and the restored copy after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub tables: BTreeMap<Table, BTreeMap<String, Row>>,
}

impl Snapshot {
    pub fn table(&self, t: Table) -> Option<&BTreeMap<String, Row>> {
        self.tables.get(&t)
    }

    pub fn rows(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// Merchants with at least one row anywhere.
    pub fn merchants(&self) -> BTreeSet<i64> {
        self.tables.values().flat_map(|t| t.values().map(|r| r.merchant)).collect()
    }

    fn insert(&mut self, t: Table, key: impl Into<String>, merchant: i64, values: Vec<String>) {
        self.tables.entry(t).or_default().insert(key.into(), Row { merchant, values });
    }
}

/// Reads a snapshot with `query` (a function running SQL and returning psql's unaligned
/// output, fields separated by `|`).
pub fn snapshot(query: &dyn Fn(&str) -> Result<String>) -> Result<Snapshot> {
    let mut s = Snapshot::default();
    for t in Table::ALL {
        let out = query(t.query())?;
        let rows = s.tables.entry(t).or_default();
        for l in out.lines().filter(|l| !l.is_empty()) {
            let mut f = l.split('|');
            let (Some(key), Some(merchant)) = (f.next(), f.next()) else {
                bail!("unexpected line {l:?} from {}", t.name());
            };
            let merchant =
                merchant.parse().map_err(|e| anyhow!("unexpected merchant {merchant:?} in {l:?}: {e}"))?;
            if rows.insert(key.to_string(), Row { merchant, values: f.map(String::from).collect() }).is_some()
            {
                bail!("{} holds key {key} twice", t.name());
            }
        }
    }
    Ok(s)
}

/// `extract(epoch FROM created_at)` in microseconds, as the snapshot and the workload read it.
const EPOCH_US: &str = "(extract(epoch FROM created_at) * 1000000)::bigint";

/// One order the workload placed: every row it wrote, with the values the database chose
/// (order id, points entry id, the transaction's timestamp) read back with `RETURNING`.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub order_id: i64,
    pub merchant: i64,
    pub customer: i64,
    pub product: i64,
    pub qty: i64,
    pub total: i64,
    /// `orders.created_at` and `points_ledger.created_at` (the same transaction's `now()`), µs.
    pub created_us: i64,
    pub entry_id: i64,
    pub points: i64,
    pub card: i64,
    pub paid: i64,
    /// The client heard COMMIT succeed (`false`: the session died after COMMIT was sent, so the
    /// transaction may or may not have committed — "in doubt").
    pub acknowledged: bool,
    pub at: Instant,
}

/// What the workload did, shared by its workers.
#[derive(Default)]
pub struct Ledger {
    pub placed: Mutex<Vec<Placed>>,
    pub committed: AtomicU64,
    /// The first error that ended a worker (expected once the insider drops the database).
    pub ended_by: Mutex<Option<String>>,
    /// Set to end every worker after its current order (`--repair`: the shop closes for the
    /// final check).
    pub stop: AtomicBool,
}

/// A tiny PRNG (xorshift64*): the workload needs varied, not secret, numbers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as i64
    }
}

/// Runs one order-placing session through the gate until the session dies (the insider's
/// DROP DATABASE ends it), `ledger.stop` is set, or the task is aborted.
/// Each order is one transaction of five statements — the order, its item, the points it
/// earns, the gift-card payment — sent one by one as an application would.
/// With `only`, every order is that merchant's (its own till); otherwise merchants at random.
pub async fn worker(cfg: Config, merchants: i64, only: Option<i64>, seed: u64, ledger: Arc<Ledger>) {
    let mut conn = match ReplicationConnection::connect_read_write(&cfg, "shop").await {
        Ok(c) => c,
        Err(e) => {
            ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(format!("connect: {e}"));
            return;
        }
    };
    let mut rng = Rng(seed | 1);
    while !ledger.stop.load(Ordering::Relaxed) {
        let merchant = only.unwrap_or_else(|| 1 + rng.below(merchants));
        let customer = merchant + merchants * rng.below(CUSTOMERS);
        let product = merchant + merchants * rng.below(PRODUCTS);
        let card = merchant + merchants * rng.below(CARDS);
        let qty = 1 + rng.below(3);
        let total = qty * (100 + rng.below(9900));
        let paid = 1 + rng.below(300);
        let points = total / 100;
        // What the database chose, read back as the statements return.
        let mut ids: Option<(i64, i64)> = None;
        let mut entry_id = None;
        let mut commit_sent = false;
        let first_int = |r: &[pgproto::replication::ResultSet], col: usize| -> Option<i64> {
            r.first()
                .and_then(|s| s.rows.first())
                .and_then(|row| row.get(col).cloned().flatten())
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        };
        let result: Result<()> = async {
            conn.simple_query("BEGIN").await?;
            let r = conn
                .simple_query(&format!(
                    "INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES ({merchant}, {customer}, {total}) RETURNING order_id, {EPOCH_US}"
                ))
                .await?;
            let (id, created) = first_int(&r, 0)
                .zip(first_int(&r, 1))
                .ok_or_else(|| anyhow!("INSERT … RETURNING order_id, created_at returned no row"))?;
            ids = Some((id, created));
            conn.simple_query(&format!(
                "INSERT INTO order_items (order_id, merchant_id, product_id, qty, price_cents) VALUES ({id}, {merchant}, {product}, {qty}, {total})"
            ))
            .await?;
            let r = conn
                .simple_query(&format!(
                    "INSERT INTO points_ledger (merchant_id, customer_id, delta, reason) VALUES ({merchant}, {customer}, {points}, 'order {id}') RETURNING entry_id"
                ))
                .await?;
            entry_id = Some(first_int(&r, 0).ok_or_else(|| anyhow!("INSERT … RETURNING entry_id returned no row"))?);
            conn.simple_query(&format!(
                "UPDATE stored_value_cards SET balance_cents = balance_cents - {paid} WHERE card_id = {card}"
            ))
            .await?;
            commit_sent = true;
            let r = conn.simple_query("COMMIT").await?;
            // A transaction that failed inside reports ROLLBACK for COMMIT.
            if r.first().map(|s| s.tag.as_str()) != Some("COMMIT") {
                bail!("COMMIT answered {:?}", r.first().map(|s| &s.tag));
            }
            Ok(())
        }
        .await;
        let placed = |acknowledged| {
            let (order_id, created_us) = ids.unwrap_or_default();
            Placed {
                order_id,
                merchant,
                customer,
                product,
                qty,
                total,
                created_us,
                entry_id: entry_id.unwrap_or_default(),
                points,
                card,
                paid,
                acknowledged,
                at: Instant::now(),
            }
        };
        match result {
            Ok(()) => {
                ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).push(placed(true));
                ledger.committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if commit_sent {
                    // Whatever answered COMMIT (or nothing, if the session died), it may have
                    // committed: the comparison accepts it either way.
                    ledger.placed.lock().unwrap_or_else(|p| p.into_inner()).push(placed(false));
                }
                // A statement refused (e.g. a card without enough balance) leaves the session
                // usable; a dead session ends the worker.
                if conn.simple_query("ROLLBACK").await.is_ok() {
                    continue;
                }
                ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                return;
            }
        }
    }
}

/// What the shop should hold: the initial load plus every transaction of `placed` that
/// committed — the acknowledged ones, and those in doubt (COMMIT sent, answer lost) that
/// `committed_in_doubt` says committed (for a restored copy: the ones it holds).
pub fn expected(
    base: &Snapshot,
    placed: &[Placed],
    committed_in_doubt: &dyn Fn(&Placed) -> bool,
) -> Snapshot {
    let mut e = base.clone();
    for p in placed.iter().filter(|p| p.acknowledged || committed_in_doubt(p)) {
        let id = p.order_id;
        let s = |v: i64| v.to_string();
        e.insert(Table::Orders, s(id), p.merchant, vec![s(p.customer), s(p.total), s(p.created_us)]);
        e.insert(
            Table::OrderItems,
            format!("{id}/{}", p.product),
            p.merchant,
            vec![format!("{}:{}", p.qty, p.total)],
        );
        e.insert(
            Table::PointsLedger,
            s(p.entry_id),
            p.merchant,
            vec![s(p.customer), s(p.points), format!("order {id}"), s(p.created_us)],
        );
        // The card's balance is the only column an order updates.
        if let Some(card) = e.tables.get_mut(&Table::StoredValueCards).and_then(|t| t.get_mut(&s(p.card)))
            && let Some(balance) = card.values.get_mut(1)
        {
            *balance = (balance.parse::<i64>().unwrap_or(i64::MIN) - p.paid).to_string();
        }
    }
    e
}

/// One merchant's row in the verdict: every row of every table that belongs to it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MerchantCheck {
    pub merchant_id: i64,
    /// Rows of all seven tables the merchant should have (initial load + committed orders).
    pub rows_expected: i64,
    pub rows_restored: i64,
    /// Expected rows the restored copy lacks.
    pub rows_lost: i64,
    /// Rows present with other values (any column).
    pub values_wrong: i64,
    /// Rows in the restored copy nobody committed.
    pub rows_unexplained: i64,
    /// Rows lost, per table (tables with none lost are left out).
    pub lost_by_table: BTreeMap<Table, i64>,
    pub orders_expected: i64,
    pub orders_restored: i64,
    /// The sum of the merchant's points ledger (every customer's balance added up).
    pub points_expected: i64,
    pub points_restored: i64,
    pub gift_cards_expected_cents: i64,
    pub gift_cards_restored_cents: i64,
    pub ok: bool,
}

/// The comparison of a copy of the shop with what it should hold.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Comparison {
    pub merchants: Vec<MerchantCheck>,
    pub rows_expected: i64,
    pub rows_lost: i64,
    pub values_wrong: i64,
    pub rows_unexplained: i64,
    /// Acknowledged orders the copy lacks.
    pub acknowledged_orders_lost: i64,
    /// In-doubt orders (COMMIT sent, answer lost) found committed in the copy.
    pub in_doubt_committed: i64,
}

/// Compares `copy` with `base` plus the workload's `placed` orders, every table, merchant by
/// merchant. An in-doubt order counts as committed exactly when the copy holds it.
pub fn compare(base: &Snapshot, placed: &[Placed], copy: &Snapshot) -> Comparison {
    let holds_order =
        |p: &Placed| copy.table(Table::Orders).is_some_and(|t| t.contains_key(&p.order_id.to_string()));
    let want = expected(base, placed, &holds_order);
    let mut c = diff(&want, copy);
    c.acknowledged_orders_lost = placed.iter().filter(|p| p.acknowledged && !holds_order(p)).count() as i64;
    c.in_doubt_committed = placed.iter().filter(|p| !p.acknowledged && holds_order(p)).count() as i64;
    c
}

/// Row-by-row difference of `copy` from `want`, per merchant (every merchant either names).
pub fn diff(want: &Snapshot, copy: &Snapshot) -> Comparison {
    let mut per: BTreeMap<i64, MerchantCheck> = want
        .merchants()
        .union(&copy.merchants())
        .map(|&m| (m, MerchantCheck { merchant_id: m, ..Default::default() }))
        .collect();
    let empty = BTreeMap::new();
    for t in Table::ALL {
        let w = want.table(t).unwrap_or(&empty);
        let g = copy.table(t).unwrap_or(&empty);
        for (key, row) in w {
            let m = per.get_mut(&row.merchant).expect("every merchant has an entry");
            m.rows_expected += 1;
            match g.get(key) {
                None => {
                    m.rows_lost += 1;
                    *m.lost_by_table.entry(t).or_default() += 1;
                }
                Some(r) if r != row => m.values_wrong += 1,
                Some(_) => {}
            }
        }
        for (key, row) in g {
            let m = per.get_mut(&row.merchant).expect("every merchant has an entry");
            m.rows_restored += 1;
            if !w.contains_key(key) {
                m.rows_unexplained += 1;
            }
        }
        // The figures a merchant reads: orders, points, gift-card money.
        let sum = |rows: &BTreeMap<String, Row>, m: i64, col: usize| -> i64 {
            rows.values()
                .filter(|r| r.merchant == m)
                .filter_map(|r| r.values.get(col)?.parse::<i64>().ok())
                .sum()
        };
        for (m, check) in per.iter_mut() {
            let count =
                |rows: &BTreeMap<String, Row>| rows.values().filter(|r| r.merchant == *m).count() as i64;
            match t {
                Table::Orders => (check.orders_expected, check.orders_restored) = (count(w), count(g)),
                Table::PointsLedger => {
                    (check.points_expected, check.points_restored) = (sum(w, *m, 1), sum(g, *m, 1))
                }
                Table::StoredValueCards => {
                    (check.gift_cards_expected_cents, check.gift_cards_restored_cents) =
                        (sum(w, *m, 1), sum(g, *m, 1))
                }
                _ => {}
            }
        }
    }
    let merchants: Vec<MerchantCheck> = per
        .into_values()
        .map(|mut m| {
            m.ok = m.rows_lost == 0 && m.values_wrong == 0 && m.rows_unexplained == 0;
            m
        })
        .collect();
    Comparison {
        rows_expected: merchants.iter().map(|m| m.rows_expected).sum(),
        rows_lost: merchants.iter().map(|m| m.rows_lost).sum(),
        values_wrong: merchants.iter().map(|m| m.values_wrong).sum(),
        rows_unexplained: merchants.iter().map(|m| m.rows_unexplained).sum(),
        merchants,
        acknowledged_orders_lost: 0,
        in_doubt_committed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two merchants, one row in each table each, as `snapshot` would read them.
    fn base() -> Snapshot {
        let mut s = Snapshot::default();
        for m in [1i64, 2] {
            let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            s.insert(Table::Merchants, m.to_string(), m, v(&["merchant", "0"]));
            s.insert(Table::Customers, m.to_string(), m, v(&["customer", "138"]));
            s.insert(Table::Products, m.to_string(), m, v(&["product", "100"]));
            s.insert(Table::Orders, m.to_string(), m, v(&[&m.to_string(), "100", "0"]));
            s.insert(Table::OrderItems, format!("{m}/{m}"), m, v(&["1:100"]));
            s.insert(Table::PointsLedger, m.to_string(), m, v(&[&m.to_string(), "10", "purchase", "0"]));
            s.insert(Table::StoredValueCards, m.to_string(), m, v(&[&m.to_string(), "1000"]));
        }
        s
    }

    fn order(id: i64, merchant: i64, acknowledged: bool) -> Placed {
        Placed {
            order_id: id,
            merchant,
            customer: merchant,
            product: merchant,
            qty: 1,
            total: 500,
            created_us: 1_000 + id,
            entry_id: 100 + id,
            points: 5,
            card: merchant,
            paid: 7,
            acknowledged,
            at: Instant::now(),
        }
    }

    /// The copy a faithful restore of `placed` produces.
    fn apply(base: &Snapshot, placed: &[&Placed]) -> Snapshot {
        let ids: Vec<i64> = placed.iter().map(|p| p.order_id).collect();
        let all: Vec<Placed> = placed.iter().map(|p| Placed { acknowledged: true, ..(*p).clone() }).collect();
        let s = expected(base, &all, &|_| false);
        assert_eq!(s.table(Table::Orders).unwrap().len(), 2 + ids.len());
        s
    }

    #[test]
    fn a_faithful_restore_loses_nothing_and_in_doubt_orders_may_go_either_way() {
        let b = base();
        let placed = vec![order(3, 1, true), order(4, 2, true), order(5, 1, false), order(6, 2, false)];
        let restored = apply(&b, &[&placed[0], &placed[1], &placed[2]]);
        let c = compare(&b, &placed, &restored);
        assert_eq!((c.rows_lost, c.values_wrong, c.rows_unexplained), (0, 0, 0), "{c:?}");
        assert_eq!(c.in_doubt_committed, 1);
        assert!(c.merchants.iter().all(|m| m.ok));
        assert_eq!(c.merchants[0].orders_expected, 3);
        // 7 rows per merchant + 3 per committed order (order, item, points entry).
        assert_eq!(c.rows_expected, 14 + 3 * 3);
        assert_eq!(c.merchants[0].gift_cards_expected_cents, 1000 - 7 - 7);
    }

    #[test]
    fn a_loss_in_any_table_is_found_for_the_merchant_it_belongs_to() {
        let b = base();
        let placed = vec![order(3, 1, true), order(4, 2, true)];
        // An acknowledged order lost entirely: its order, item and points rows, merchant 1 only.
        let c = compare(&b, &placed, &apply(&b, &[&placed[1]]));
        assert_eq!((c.acknowledged_orders_lost, c.rows_lost), (1, 3), "{c:?}");
        assert!(!c.merchants[0].ok && c.merchants[1].ok);
        // A product (untouched by the workload) lost; an item's value changed; a gift card's
        // balance wrong; a row nobody wrote.
        let full = apply(&b, &[&placed[0], &placed[1]]);
        for (t, key) in [(Table::Products, "2"), (Table::Customers, "1"), (Table::Merchants, "2")] {
            let mut r = full.clone();
            r.tables.get_mut(&t).unwrap().remove(key);
            let c = compare(&b, &placed, &r);
            assert_eq!((c.rows_lost, c.values_wrong), (1, 0), "{t:?}: {c:?}");
            assert_eq!(c.merchants.iter().filter(|m| !m.ok).count(), 1);
            assert_eq!(c.merchants.iter().find(|m| !m.ok).unwrap().lost_by_table[&t], 1);
        }
        let mut r = full.clone();
        r.tables.get_mut(&Table::OrderItems).unwrap().get_mut("3/1").unwrap().values[0] = "2:500".into();
        assert_eq!(compare(&b, &placed, &r).values_wrong, 1);
        let mut r = full.clone();
        r.tables.get_mut(&Table::StoredValueCards).unwrap().get_mut("2").unwrap().values[1] = "1".into();
        let c = compare(&b, &placed, &r);
        assert_eq!((c.rows_lost, c.values_wrong), (0, 1));
        assert!(c.merchants[0].ok && !c.merchants[1].ok);
        let mut r = full.clone();
        r.insert(Table::Orders, "99", 1, vec!["1".into(), "1".into(), "0".into()]);
        assert_eq!(compare(&b, &placed, &r).rows_unexplained, 1);
    }

    #[test]
    fn a_dropped_database_destroys_every_row_of_every_merchant() {
        let b = base();
        let placed = vec![order(3, 1, true)];
        let c = compare(&b, &placed, &Snapshot::default());
        assert_eq!(c.rows_lost, c.rows_expected);
        assert_eq!(c.rows_expected, 17);
        assert_eq!(c.merchants.iter().filter(|m| m.rows_lost > 0).count(), 2);
    }
}
