//! Append latency and throughput of the audit spool on this machine's disk: each append is
//! fsynced before it is acknowledged, so this is what a gate waits per recorded statement.
//!
//! `cargo run --release -p audit --features spool --example append_rate [DIR]` (DIR: where to
//! put the throw-away spool, on the disk the gate would use; default: the system temp dir).

use std::time::{Duration, Instant};

use audit::{AuditLog, Event, EventKind, SpoolOptions};

fn statement() -> Event {
    Event::new(EventKind::Statement)
        .person("alice")
        .client("127.0.0.1:5000")
        .session(1)
        .detail(serde_json::json!({"sql": "UPDATE accounts SET balance = balance - 100 WHERE id = 42"}))
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("a temporary directory");
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let log = AuditLog::open(dir.path(), key, SpoolOptions::default()).expect("open the spool");
    for tasks in [1usize, 16, 64] {
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..(2000 / tasks).max(200) {
                    let t = Instant::now();
                    log.append(statement()).await.expect("append");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("task"));
        }
        all.sort();
        println!(
            "{tasks:>2} concurrent appenders: {:>6.0} appends/s, latency p50 {:?}, p99 {:?}",
            all.len() as f64 / start.elapsed().as_secs_f64(),
            percentile(&all, 50),
            percentile(&all, 99)
        );
    }
}
