//! The shape cache (one parse for texts that differ only in the values of constants) never
//! changes a verdict: over the bypass corpus, each statement with its constants replaced is
//! judged by a guard that has just seen the original exactly as by a guard that never saw it;
//! texts of different meaning (a WHERE clause or none, identifiers, comments, dollar quotes,
//! several statements, verdicts that rest on a constant's value) never share an analysis.

mod cases;

use cases::CASES;
use guard::{Decision, Guard, Policy, Session};
use pg_query::protobuf::Token;

fn verdict(d: &Decision) -> serde_json::Value {
    serde_json::to_value(d).expect("a decision serialises")
}

/// `b` judged by a guard that saw `a` first, and by a fresh one.
fn warm_and_cold(a: &str, b: &str) -> (serde_json::Value, serde_json::Value, Guard) {
    let warm = Guard::new(Policy::default());
    warm.check_query(&mut Session::default(), a);
    let w = verdict(&warm.check_query(&mut Session::default(), b));
    let cold = Guard::new(Policy::default());
    let c = verdict(&cold.check_query(&mut Session::default(), b));
    (w, c, warm)
}

/// `sql` with its constants replaced: all of them by one value of each kind, then each alone.
fn siblings(sql: &str) -> Vec<String> {
    let Ok(tokens) = pg_query::scan(sql).map(|r| r.tokens) else { return Vec::new() };
    let consts: Vec<(usize, usize, Token)> = tokens
        .iter()
        .filter_map(|t| {
            let k = Token::try_from(t.token).ok()?;
            matches!(k, Token::Iconst | Token::Fconst | Token::Sconst).then_some((
                t.start as usize,
                t.end as usize,
                k,
            ))
        })
        .collect();
    let alts = |k: Token| -> &'static [&'static str] {
        match k {
            Token::Iconst => &["0", "1", "2", "999999"],
            Token::Fconst => &["0.5", "1e3"],
            _ => &[
                "'%'",
                "''",
                "'x'",
                "'search_path'",
                "'a%'",
                "'on'",
                "'off'",
                "$q$ ; DROP TABLE orders; $q$",
            ],
        }
    };
    let replace = |pick: &dyn Fn(usize, Token) -> Option<&'static str>| {
        let mut out = String::new();
        let mut at = 0;
        for (i, (s, e, k)) in consts.iter().enumerate() {
            out.push_str(&sql[at..*s]);
            out.push_str(pick(i, *k).unwrap_or(&sql[*s..*e]));
            at = *e;
        }
        out.push_str(&sql[at..]);
        out
    };
    let mut v = Vec::new();
    for n in 0..8 {
        v.push(replace(&|_, k| alts(k).get(n % alts(k).len()).copied()));
        for j in 0..consts.len().min(6) {
            v.push(replace(&|i, k| (i == j).then(|| alts(k)[n % alts(k).len()])));
        }
    }
    v.sort();
    v.dedup();
    v.retain(|s| s != sql);
    v
}

#[test]
fn cached_shapes_give_the_uncached_verdict_over_the_corpus() {
    let extra = [
        "UPDATE pgbench_accounts SET abalance = abalance + 17 WHERE aid = 4711",
        "UPDATE pgbench_accounts SET abalance = abalance + -17 WHERE aid = 4711;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        "DELETE FROM orders WHERE id = 3 ;  ",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 4711, 17, CURRENT_TIMESTAMP)",
        "DELETE FROM orders WHERE id + 1 = id + 2",
        "DELETE FROM orders WHERE name LIKE 'a%'",
        "SELECT set_config('application_name', 'x', false)",
        "EXPLAIN (ANALYZE false) DELETE FROM orders",
        "SELECT * FROM orders WHERE note = 'it''s' AND code = E'\\x41'",
    ];
    let mut pairs = 0;
    let mut hits = 0;
    let mut failures = Vec::new();
    for sql in CASES.iter().map(|c| c.0).chain(extra) {
        for sib in siblings(sql) {
            let (w, c, warm) = warm_and_cold(sql, &sib);
            pairs += 1;
            hits += warm.cache_stats().shape_hits;
            if w != c {
                failures.push(format!("after {sql:?}, {sib:?}:\n  cached   {w}\n  uncached {c}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {pairs} verdicts differ:\n{}", failures.len(), failures.join("\n"));
    assert!(pairs > 500, "only {pairs} sibling texts were tried");
    assert!(hits > 100, "the shape cache answered only {hits} of {pairs}: it is not exercised");
}

#[test]
fn texts_of_different_meaning_never_share_a_verdict() {
    let pairs = [
        ("DELETE FROM orders WHERE id = 1", "DELETE FROM orders"),
        ("DELETE FROM orders WHERE id = 1", "DELETE FROM orders WHERE id = 1 OR 1 = 1"),
        ("DELETE FROM orders WHERE id + 1 = id + 2", "DELETE FROM orders WHERE id + 1 = id + 1"),
        ("DELETE FROM orders WHERE name LIKE 'a%'", "DELETE FROM orders WHERE name LIKE '%'"),
        (
            "SELECT set_config('application_name', 'x', false)",
            "SELECT set_config('search_path', 'evil, pg_catalog', false)",
        ),
        ("EXPLAIN (ANALYZE false) DELETE FROM orders", "EXPLAIN (ANALYZE true) DELETE FROM orders"),
        ("SELECT 1 FROM \"orders1\" WHERE id = 1", "DELETE FROM \"orders\" WHERE 'x' = 'x'"),
        ("SELECT 1 -- ; DROP TABLE orders", "SELECT 1 /* */ ; DROP TABLE orders"),
        ("SELECT 'x' FROM orders", "SELECT $$x$$ FROM orders; DROP TABLE orders"),
        ("SELECT $a$ ; DROP TABLE orders; $a$", "SELECT 1; DROP TABLE orders"),
        ("SELECT 1", "SELECT 1; DELETE FROM orders"),
        ("SELECT 1;", "SELECT 1; DELETE FROM orders;"),
        ("DELETE FROM orders WHERE id = 1;", "DELETE FROM orders;"),
        ("SELECT * FROM orders WHERE id = 1", "SELECT * FROM orders WHERE id = 1; DELETE FROM orders"),
        ("SELECT 1 FROM U&\"d!0061ta\" UESCAPE '!'", "SELECT 1 FROM U&\"d!0061ta\" UESCAPE '\\'"),
    ];
    let mut differ = 0;
    for (a, b) in pairs {
        for (x, y) in [(a, b), (b, a)] {
            let (w, c, _) = warm_and_cold(x, y);
            assert_eq!(w, c, "after {x:?}, {y:?} was judged by another text's verdict");
        }
        let cold = |s: &str| verdict(&Guard::new(Policy::default()).check_query(&mut Session::default(), s));
        if cold(a)["action"] != cold(b)["action"] {
            differ += 1;
        }
    }
    // The pairs are worth testing: most of them really are judged differently.
    assert!(differ >= 8, "only {differ} pairs differ in action");
}

#[test]
fn a_repeated_shape_is_not_parsed_again() {
    let g = Guard::new(Policy::default());
    let mut s = Session::default();
    for aid in [1, 42, 4711, 99999] {
        let d = g.check_query(
            &mut s,
            &format!("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = {aid}"),
        );
        assert_eq!(
            d.statements[0].text,
            format!("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = {aid}")
        );
    }
    let st = g.cache_stats();
    assert_eq!((st.parsed, st.shape_hits), (1, 3), "{st:?}");
    // A verdict that read a constant is never reused for the shape.
    for p in ["'%'", "'a%'", "'%'"] {
        g.check_query(&mut s, &format!("DELETE FROM orders WHERE name LIKE {p}"));
    }
    assert_eq!(g.cache_stats().shape_hits, 3);
}
