//! The vault's clock: the only source of time for retention and waiting periods.
//!
//! Clients' timestamps (HTTP `Date`, body fields) are never consulted. Tests run the vault
//! in-process with a [`ManualClock`] and move time forward to cross waiting periods.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use store::Timestamp;

/// A source of "now" for every retention decision.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to. For tests.
#[derive(Debug)]
pub struct ManualClock {
    secs: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { secs: AtomicI64::new(start.as_secs()) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self.secs.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.secs.store(t.as_secs(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.secs.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        assert_eq!(c.now(), Timestamp(1000));
        c.advance(Duration::from_secs(3600));
        assert_eq!(c.now(), Timestamp(4600));
        c.set(Timestamp(5));
        assert_eq!(c.now(), Timestamp(5));
        assert!(SystemClock.now() > Timestamp(1_700_000_000));
    }
}
