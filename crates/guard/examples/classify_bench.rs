//! How long the guard takes per statement, for the gate's latency budget (≤ 0.2 ms added p99).
//! Run it optimised: `cargo run --release -p guard --example classify_bench [ROUNDS]`.
//!
//! Three figures per set of statements: a cache miss (parse + analysis; each text is made unique
//! with a comment so the cache never answers), a cache hit (the same text again, as drivers
//! repeat statements), and the extended protocol's Execute of a statement parsed earlier; and,
//! for reference, libpg_query's parse alone.

#[path = "../tests/cases/mod.rs"]
mod cases;

use std::time::Instant;

use guard::{Guard, Policy, Session};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut us: Vec<f64>) {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    println!(
        "{label:<44} n={:<7} mean {:>7.1} µs  p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs",
        us.len(),
        mean,
        percentile(&us, 0.5),
        percentile(&us, 0.99),
        us[us.len() - 1]
    );
}

fn run(label: &str, statements: &[&str], rounds: usize) {
    let guard = Guard::new(Policy::default());
    let mut miss = Vec::new();
    let mut hit = Vec::new();
    let mut execute = Vec::new();
    let mut parse_only = Vec::new();
    for round in 0..rounds {
        for (i, sql) in statements.iter().enumerate() {
            let unique = format!("/* {round} {i} */ {sql}");
            let t = Instant::now();
            std::hint::black_box(pg_query::parse(&unique, 0).ok());
            parse_only.push(t.elapsed().as_secs_f64() * 1e6);
            let mut s = Session::default();
            let t = Instant::now();
            std::hint::black_box(guard.check_query(&mut s, &unique));
            miss.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            std::hint::black_box(guard.check_query(&mut s, sql));
            let first = t.elapsed();
            // Measure the hit once the text is certainly cached.
            let t = Instant::now();
            std::hint::black_box(guard.check_query(&mut s, sql));
            hit.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(first);
            guard.check_parse(&mut s, "s", sql);
            let t = Instant::now();
            std::hint::black_box(guard.check_execute(&s, "s"));
            execute.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    report(&format!("{label}: libpg_query parse alone"), parse_only);
    report(&format!("{label}: cache miss (parse + classify)"), miss);
    report(&format!("{label}: cache hit"), hit);
    report(&format!("{label}: Execute of a parsed statement"), execute);
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().expect("ROUNDS is a number")).unwrap_or(50);
    let pgbench = [
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        "BEGIN",
        "END",
    ];
    let corpus: Vec<&str> = cases::CASES.iter().map(|(s, ..)| *s).filter(|s| !s.contains('\0')).collect();
    println!("guard classification, {rounds} rounds, one thread");
    run("pgbench TPC-B statements", &pgbench, rounds * 20);
    run(&format!("bypass corpus ({} statements)", corpus.len()), &corpus, rounds);
}
