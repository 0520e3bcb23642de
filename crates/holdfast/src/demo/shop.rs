//! The shop of the incident (DESIGN.md §4): schema, a deterministic initial load sized by the
//! number of merchants, the order workload that runs through the gate while remembering every
//! transaction it committed, and the merchant-by-merchant comparison of a restored copy with
//! what was committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The shop as the merchants see it, read with five `GROUP BY`s and two per-row listings.
/// The same queries read the live shop before the workload and the restored copy after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// merchant → (count, md5) of the orders that existed before the workload.
    pub base_orders: BTreeMap<i64, String>,
    /// Orders placed by the workload: id → (merchant, customer, total).
    pub new_orders: BTreeMap<i64, (i64, i64, i64)>,
    /// merchant → order items.
    pub items: BTreeMap<i64, i64>,
    /// merchant → points ledger entries.
    pub point_entries: BTreeMap<i64, i64>,
    /// customer → points balance.
    pub points: HashMap<i64, i64>,
    /// card → balance.
    pub cards: HashMap<i64, i64>,
    /// card → merchant.
    pub card_merchant: HashMap<i64, i64>,
    /// customer → merchant.
    pub customer_merchant: HashMap<i64, i64>,
    pub merchants: Vec<i64>,
}

/// Reads a snapshot with `query` (a function running SQL and returning psql's unaligned
/// output, fields separated by `|`). `base_max`: the last order id of the initial load.
pub fn snapshot(query: &dyn Fn(&str) -> Result<String>, base_max: i64) -> Result<Snapshot> {
    let rows = |sql: &str| -> Result<Vec<Vec<i64>>> {
        let out = query(sql)?;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split('|')
                    .map(|f| {
                        f.parse::<i64>().map_err(|e| anyhow!("unexpected {f:?} in {l:?} from {sql}: {e}"))
                    })
                    .collect()
            })
            .collect()
    };
    let mut s = Snapshot::default();
    for l in query(&format!(
        "SELECT merchant_id || '|' || count(*) || ':' || md5(string_agg(order_id || '/' || customer_id || '/' || total_cents, ',' ORDER BY order_id)) \
         FROM orders WHERE order_id <= {base_max} GROUP BY merchant_id ORDER BY 1"
    ))?
    .lines()
    {
        let (m, sum) = l.split_once('|').ok_or_else(|| anyhow!("unexpected line {l:?}"))?;
        s.base_orders.insert(m.parse()?, sum.to_string());
    }
    for r in rows(&format!(
        "SELECT order_id, merchant_id, customer_id, total_cents FROM orders WHERE order_id > {base_max}"
    ))? {
        s.new_orders.insert(r[0], (r[1], r[2], r[3]));
    }
    for r in rows("SELECT merchant_id, count(*) FROM order_items GROUP BY 1")? {
        s.items.insert(r[0], r[1]);
    }
    for r in rows("SELECT merchant_id, count(*) FROM points_ledger GROUP BY 1")? {
        s.point_entries.insert(r[0], r[1]);
    }
    for r in rows(
        "SELECT customer_id, merchant_id, coalesce((SELECT sum(delta) FROM points_ledger p WHERE p.customer_id = c.customer_id), 0) FROM customers c",
    )? {
        s.customer_merchant.insert(r[0], r[1]);
        s.points.insert(r[0], r[2]);
    }
    for r in rows("SELECT card_id, merchant_id, balance_cents FROM stored_value_cards")? {
        s.card_merchant.insert(r[0], r[1]);
        s.cards.insert(r[0], r[2]);
    }
    s.merchants = rows("SELECT merchant_id FROM merchants ORDER BY 1")?.into_iter().map(|r| r[0]).collect();
    Ok(s)
}

/// One order the workload placed: everything it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub order_id: i64,
    pub merchant: i64,
    pub customer: i64,
    pub total: i64,
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
/// DROP DATABASE ends it) or the task is aborted.
/// Each order is one transaction of five statements — the order, its item, the points it
/// earns, the gift-card payment — sent one by one as an application would.
pub async fn worker(cfg: Config, merchants: i64, seed: u64, ledger: Arc<Ledger>) {
    let mut conn = match ReplicationConnection::connect_read_write(&cfg, "shop").await {
        Ok(c) => c,
        Err(e) => {
            ledger.ended_by.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(format!("connect: {e}"));
            return;
        }
    };
    let mut rng = Rng(seed | 1);
    loop {
        let merchant = 1 + rng.below(merchants);
        let customer = merchant + merchants * rng.below(CUSTOMERS);
        let product = merchant + merchants * rng.below(PRODUCTS);
        let card = merchant + merchants * rng.below(CARDS);
        let qty = 1 + rng.below(3);
        let total = qty * (100 + rng.below(9900));
        let paid = 1 + rng.below(300);
        let points = total / 100;
        let mut order_id = None;
        let mut commit_sent = false;
        let result: Result<()> = async {
            conn.simple_query("BEGIN").await?;
            let r = conn
                .simple_query(&format!(
                    "INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES ({merchant}, {customer}, {total}) RETURNING order_id"
                ))
                .await?;
            let id: i64 = r
                .first()
                .and_then(|s| s.rows.first())
                .and_then(|row| row.first().cloned().flatten())
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                .ok_or_else(|| anyhow!("INSERT … RETURNING order_id returned no id"))?;
            order_id = Some(id);
            conn.simple_query(&format!(
                "INSERT INTO order_items (order_id, merchant_id, product_id, qty, price_cents) VALUES ({id}, {merchant}, {product}, {qty}, {total})"
            ))
            .await?;
            conn.simple_query(&format!(
                "INSERT INTO points_ledger (merchant_id, customer_id, delta, reason) VALUES ({merchant}, {customer}, {points}, 'order {id}')"
            ))
            .await?;
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
        let placed = |acknowledged| Placed {
            order_id: order_id.unwrap_or(0),
            merchant,
            customer,
            total,
            points,
            card,
            paid,
            acknowledged,
            at: Instant::now(),
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

/// One merchant's row in the verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MerchantCheck {
    pub merchant_id: i64,
    /// Orders committed before the attack (initial load + acknowledged workload orders).
    pub orders_expected: i64,
    pub orders_restored: i64,
    pub points_expected: i64,
    pub points_restored: i64,
    pub gift_cards_expected_cents: i64,
    pub gift_cards_restored_cents: i64,
    /// Rows committed before the attack that the restored copy lacks.
    pub rows_lost: i64,
    /// Customers, cards or orders whose values differ.
    pub values_wrong: i64,
    pub ok: bool,
}

/// The comparison of a restored copy with the base snapshot plus what the workload committed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub merchants: Vec<MerchantCheck>,
    pub rows_lost: i64,
    pub values_wrong: i64,
    /// Acknowledged orders the restored copy lacks.
    pub acknowledged_orders_lost: i64,
    /// In-doubt orders (COMMIT sent, answer lost) found committed in the restored copy.
    pub in_doubt_committed: i64,
    /// Orders in the restored copy that the workload never placed.
    pub unexplained_orders: i64,
}

/// Compares `restored` with `base` plus the workload's `placed` orders, merchant by merchant.
/// An in-doubt order counts as committed exactly when the restored copy holds it.
pub fn compare(base: &Snapshot, placed: &[Placed], restored: &Snapshot) -> Comparison {
    let by_id: HashMap<i64, &Placed> = placed.iter().map(|p| (p.order_id, p)).collect();
    let committed: Vec<&Placed> =
        placed.iter().filter(|p| p.acknowledged || restored.new_orders.contains_key(&p.order_id)).collect();
    let unexplained = restored.new_orders.keys().filter(|id| !by_id.contains_key(id)).count() as i64;
    let in_doubt_committed = committed.iter().filter(|p| !p.acknowledged).count() as i64;
    let mut points = base.points.clone();
    let mut cards = base.cards.clone();
    let mut new_per_merchant: HashMap<i64, i64> = HashMap::new();
    for p in &committed {
        *points.entry(p.customer).or_default() += p.points;
        *cards.entry(p.card).or_default() -= p.paid;
        *new_per_merchant.entry(p.merchant).or_default() += 1;
    }
    let base_count = |m: i64, s: &Snapshot| -> i64 {
        s.base_orders.get(&m).and_then(|v| v.split(':').next()?.parse().ok()).unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut lost_acked = 0;
    for &m in &base.merchants {
        let mut wrong = 0i64;
        let mut lost = 0i64;
        // Historical orders: the same rows, byte for byte.
        let base_n = base_count(m, base);
        let restored_base_n = base_count(m, restored);
        if base.base_orders.get(&m) != restored.base_orders.get(&m) {
            lost += (base_n - restored_base_n).max(0);
            if base_n == restored_base_n {
                wrong += 1;
            }
        }
        // The workload's orders: each committed one present with its values.
        let mine: Vec<&&Placed> = committed.iter().filter(|p| p.merchant == m).collect();
        let mut present = 0;
        for p in &mine {
            match restored.new_orders.get(&p.order_id) {
                Some(&(rm, rc, rt)) => {
                    present += 1;
                    if (rm, rc, rt) != (p.merchant, p.customer, p.total) {
                        wrong += 1;
                    }
                }
                None => {
                    // Order, item and points entry.
                    lost += 3;
                    lost_acked += 1;
                }
            }
        }
        let new_n = new_per_merchant.get(&m).copied().unwrap_or(0);
        let items_expected = base.items.get(&m).copied().unwrap_or(0) + new_n;
        let entries_expected = base.point_entries.get(&m).copied().unwrap_or(0) + new_n;
        let items_restored = restored.items.get(&m).copied().unwrap_or(0);
        let entries_restored = restored.point_entries.get(&m).copied().unwrap_or(0);
        // Missing items/entries not already counted with a missing order.
        let missing_orders = mine.len() as i64 - present;
        lost += (items_expected - items_restored - missing_orders).max(0);
        lost += (entries_expected - entries_restored - missing_orders).max(0);
        let points_tally = tally(&base.customer_merchant, m, &points, &restored.points);
        let cards_tally = tally(&base.card_merchant, m, &cards, &restored.cards);
        lost += points_tally.lost + cards_tally.lost;
        wrong += points_tally.wrong + cards_tally.wrong;
        let (points_expected, points_restored) = (points_tally.expected, points_tally.restored);
        let (cards_expected, cards_restored) = (cards_tally.expected, cards_tally.restored);
        out.push(MerchantCheck {
            merchant_id: m,
            orders_expected: base_n + new_n,
            orders_restored: restored_base_n + present,
            points_expected,
            points_restored,
            gift_cards_expected_cents: cards_expected,
            gift_cards_restored_cents: cards_restored,
            rows_lost: lost,
            values_wrong: wrong,
            ok: lost == 0 && wrong == 0,
        });
    }
    if restored.merchants != base.merchants {
        // A merchant row missing is a lost row too.
        let missing = base.merchants.iter().filter(|m| !restored.merchants.contains(m)).count() as i64;
        if let Some(first) = out.first_mut() {
            first.rows_lost += missing;
            first.ok = false;
        }
    }
    Comparison {
        rows_lost: out.iter().map(|c| c.rows_lost).sum(),
        values_wrong: out.iter().map(|c| c.values_wrong).sum(),
        merchants: out,
        acknowledged_orders_lost: lost_acked,
        in_doubt_committed,
        unexplained_orders: unexplained,
    }
}

/// Balances of one merchant's customers (points) or cards, expected against restored.
struct Tally {
    expected: i64,
    restored: i64,
    /// Customers or cards missing from the restored copy.
    lost: i64,
    /// Customers or cards with another balance.
    wrong: i64,
}

/// Compares the balances of the keys `owner` assigns to merchant `m`.
fn tally(
    owner: &HashMap<i64, i64>,
    m: i64,
    expected: &HashMap<i64, i64>,
    restored: &HashMap<i64, i64>,
) -> Tally {
    let mut t = Tally { expected: 0, restored: 0, lost: 0, wrong: 0 };
    for (key, _) in owner.iter().filter(|(_, owner)| **owner == m) {
        let e = expected.get(key).copied().unwrap_or(0);
        let r = restored.get(key).copied();
        t.expected += e;
        t.restored += r.unwrap_or(0);
        match r {
            None => t.lost += 1,
            Some(r) if r != e => t.wrong += 1,
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Snapshot {
        let mut s = Snapshot { merchants: vec![1, 2], ..Default::default() };
        s.base_orders.insert(1, "2:aa".into());
        s.base_orders.insert(2, "2:bb".into());
        s.items.insert(1, 2);
        s.items.insert(2, 2);
        s.point_entries.insert(1, 2);
        s.point_entries.insert(2, 2);
        for (c, m) in [(1, 1), (2, 2)] {
            s.customer_merchant.insert(c, m);
            s.points.insert(c, 10);
        }
        for (k, m) in [(1, 1), (2, 2)] {
            s.card_merchant.insert(k, m);
            s.cards.insert(k, 1000);
        }
        s
    }

    fn order(id: i64, merchant: i64, acknowledged: bool) -> Placed {
        Placed {
            order_id: id,
            merchant,
            customer: merchant,
            total: 500,
            points: 5,
            card: merchant,
            paid: 7,
            acknowledged,
            at: Instant::now(),
        }
    }

    /// The restored copy the workload's orders should produce.
    fn apply(base: &Snapshot, placed: &[&Placed]) -> Snapshot {
        let mut s = base.clone();
        for p in placed {
            s.new_orders.insert(p.order_id, (p.merchant, p.customer, p.total));
            *s.items.get_mut(&p.merchant).unwrap() += 1;
            *s.point_entries.get_mut(&p.merchant).unwrap() += 1;
            *s.points.get_mut(&p.customer).unwrap() += p.points;
            *s.cards.get_mut(&p.card).unwrap() -= p.paid;
        }
        s
    }

    #[test]
    fn a_faithful_restore_loses_nothing_and_in_doubt_orders_may_go_either_way() {
        let b = base();
        let placed = vec![order(3, 1, true), order(4, 2, true), order(5, 1, false), order(6, 2, false)];
        let restored = apply(&b, &[&placed[0], &placed[1], &placed[2]]);
        let c = compare(&b, &placed, &restored);
        assert_eq!((c.rows_lost, c.values_wrong, c.unexplained_orders), (0, 0, 0), "{c:?}");
        assert_eq!(c.in_doubt_committed, 1);
        assert!(c.merchants.iter().all(|m| m.ok));
        assert_eq!(c.merchants[0].orders_expected, 4);
    }

    #[test]
    fn a_lost_order_a_wrong_balance_and_a_stranger_are_each_found() {
        let b = base();
        let placed = vec![order(3, 1, true), order(4, 2, true)];
        // Order 3 lost entirely.
        let restored = apply(&b, &[&placed[1]]);
        let c = compare(&b, &placed, &restored);
        assert_eq!(c.acknowledged_orders_lost, 1);
        assert!(c.rows_lost >= 3, "{c:?}");
        assert!(!c.merchants[0].ok && c.merchants[1].ok);
        // A gift card with the wrong balance.
        let mut restored = apply(&b, &[&placed[0], &placed[1]]);
        *restored.cards.get_mut(&2).unwrap() += 1;
        let c = compare(&b, &placed, &restored);
        assert_eq!((c.rows_lost, c.values_wrong), (0, 1));
        // An order nobody placed.
        let mut restored = apply(&b, &[&placed[0], &placed[1]]);
        restored.new_orders.insert(99, (1, 1, 1));
        assert_eq!(compare(&b, &placed, &restored).unexplained_orders, 1);
        // Historical orders of a merchant gone.
        let mut restored = apply(&b, &[&placed[0], &placed[1]]);
        restored.base_orders.remove(&2);
        let c = compare(&b, &placed, &restored);
        assert_eq!(c.rows_lost, 2, "{c:?}");
    }
}
