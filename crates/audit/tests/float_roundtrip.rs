//! A record whose detail holds floats still verifies after the JSON round trip it makes through
//! the spool and the vault (serde_json's default float parsing may be one ULP off, which once
//! made a real record fail its hash; the workspace enables `float_roundtrip`).

use audit::{AuditTime, Digest, Event, EventKind, Record};
use proptest::prelude::*;

proptest! {
    #[test]
    fn floats_survive_the_round_trip(x in proptest::num::f64::NORMAL, y in 0.0f64..100_000.0) {
        let ev = Event::new(EventKind::StatementDone).detail(serde_json::json!({"a": x, "duration_ms": y}));
        let r = Record::new(7, AuditTime::now(), Digest([1; 32]), ev);
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        prop_assert!(back.hash_is_valid());
    }
}
