//! Waiting for a condition instead of sleeping a fixed time: poll it until a deadline, and say
//! what was awaited when the deadline passes. Every budget scales with
//! `HOLDFAST_TEST_TIME_SCALE` (a positive number, default 1), so a loaded CI machine can give
//! real-time waits more room without editing tests.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The environment variable that scales every test wait budget.
pub const TIME_SCALE_ENV: &str = "HOLDFAST_TEST_TIME_SCALE";

/// `base` scaled by [`TIME_SCALE_ENV`] (unset, unparsable or not positive: 1).
pub fn budget(base: Duration) -> Duration {
    let scale = std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    base.mul_f64(scale)
}

/// Calls `check` every `every` until it returns `Some`, for at most `budget(within)`; the error
/// names `what` and the budget.
pub fn until<T>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let limit = budget(within);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not so after {:.1} s ({TIME_SCALE_ENV} scales this)", limit.as_secs_f64());
        }
        std::thread::sleep(every);
    }
}

/// [`until`] for async tests: `check` is awaited, and the wait between checks does not block
/// the runtime.
pub async fn until_async<T, F, Fut>(within: Duration, every: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let limit = budget(within);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not so after {:.1} s ({TIME_SCALE_ENV} scales this)", limit.as_secs_f64());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_when_true_and_names_what_timed_out() {
        let mut n = 0;
        let got = until(Duration::from_secs(5), Duration::from_millis(1), "third call", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
        let t0 = Instant::now();
        let err =
            until(Duration::from_millis(50), Duration::from_millis(5), "never", || None::<()>).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().starts_with("never: not so after"), "{err}");
    }
}
