//! `/metrics` gauges for every restorable interval of every cluster (not only the newest):
//! after a WAL gap the intervals before it are still restore points, and a dashboard or alert
//! rule must be able to see each one and when it starts and ends.

use std::fmt::Write;

/// Writes `holdfast_cluster_windows` (how many intervals) and, per interval (labelled by its
/// position, oldest first `0`), its earliest and latest restorable instants and LSNs.
pub fn write(out: &mut String, clusters: &[capture::ClusterStatus]) {
    let _ = writeln!(
        out,
        "# HELP holdfast_cluster_windows Restorable intervals (a WAL gap ends one, a base backup after it starts the next).\n# TYPE holdfast_cluster_windows gauge"
    );
    for c in clusters {
        let _ = writeln!(out, "holdfast_cluster_windows{{cluster=\"{}\"}} {}", c.name, c.windows.len());
    }
    type Getter = fn(&vault_api::window::Interval) -> f64;
    let gauges: [(&str, &str, Getter); 4] = [
        ("window_interval_earliest_timestamp_seconds", "Earliest restorable instant of the interval.", |i| {
            i.window.earliest_time.as_secs() as f64
        }),
        ("window_interval_latest_timestamp_seconds", "Latest restorable instant of the interval.", |i| {
            i.window.latest_time.as_secs() as f64
        }),
        (
            "window_interval_earliest_lsn_bytes",
            "Earliest restorable LSN of the interval, as a byte position.",
            |i| i.window.earliest_lsn.0 as f64,
        ),
        (
            "window_interval_latest_lsn_bytes",
            "Latest restorable LSN of the interval, as a byte position.",
            |i| i.window.latest_lsn.0 as f64,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP holdfast_cluster_{name} {help}\n# TYPE holdfast_cluster_{name} gauge");
        for c in clusters {
            for (n, i) in c.windows.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "holdfast_cluster_{name}{{cluster=\"{}\",interval=\"{n}\",timeline=\"{}\"}} {}",
                    c.name,
                    i.timeline,
                    get(i)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfmt::Lsn;
    use store::Timestamp;
    use vault_api::status::Window;
    use vault_api::window::Interval;

    #[test]
    fn every_interval_is_a_gauge_not_only_the_newest() {
        let interval = |from: u64, to: u64, at: i64| Interval {
            window: Window {
                earliest_lsn: Lsn(from),
                earliest_time: Timestamp(at),
                latest_lsn: Lsn(to),
                latest_time: Timestamp(at + 60),
            },
            timeline: 1,
            backups: vec!["b".into()],
        };
        let c = capture::ClusterStatus {
            name: "shop".into(),
            windows: vec![interval(100, 200, 1000), interval(500, 900, 5000)],
            ..Default::default()
        };
        let mut out = String::new();
        write(&mut out, &[c]);
        for line in [
            "holdfast_cluster_windows{cluster=\"shop\"} 2",
            "holdfast_cluster_window_interval_earliest_timestamp_seconds{cluster=\"shop\",interval=\"0\",timeline=\"1\"} 1000",
            "holdfast_cluster_window_interval_latest_timestamp_seconds{cluster=\"shop\",interval=\"0\",timeline=\"1\"} 1060",
            "holdfast_cluster_window_interval_earliest_lsn_bytes{cluster=\"shop\",interval=\"1\",timeline=\"1\"} 500",
            "holdfast_cluster_window_interval_latest_lsn_bytes{cluster=\"shop\",interval=\"1\",timeline=\"1\"} 900",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
