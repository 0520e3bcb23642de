//! `Record`: an event with its place in the chain — sequence number, time, previous hash and
//! its own hash, BLAKE3 over a canonical encoding of all four.
//!
//! The encoding is byte-exact and independent of how JSON happens to be spelt (key order,
//! whitespace, escapes), so a record read back from the vault hashes as it did on the gate.

use std::fmt;

use crate::error::ParseError;
use crate::event::Event;
use crate::time::AuditTime;

/// Domain separation: a record hash can never be confused with any other BLAKE3 use.
const RECORD_DOMAIN: &[u8] = b"holdfast audit record v1\0";

/// A 32-byte BLAKE3 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prev` of record 1.
    pub const ZERO: Digest = Digest([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| ParseError::Digest(crate::error::clip(s)))?;
        Ok(Digest(b))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// From 1, gap-free, per gate.
    pub seq: u64,
    /// The gate's clock when recorded; never earlier than the previous record's.
    pub time: AuditTime,
    /// The previous record's hash ([`Digest::ZERO`] for seq 1).
    pub prev: Digest,
    /// BLAKE3 over the canonical encoding of (seq, time, prev, event).
    pub hash: Digest,
    pub event: Event,
}

impl Record {
    /// Builds the record that follows `prev_hash` and computes its hash.
    pub fn new(seq: u64, time: AuditTime, prev: Digest, event: Event) -> Record {
        let hash = Record::compute_hash(seq, time, &prev, &event);
        Record { seq, time, prev, hash, event }
    }

    /// The hash this record's content calls for.
    pub fn compute_hash(seq: u64, time: AuditTime, prev: &Digest, event: &Event) -> Digest {
        let mut detail = Vec::with_capacity(256);
        canonical_json(&event.detail, &mut detail);
        Record::hash_of(seq, time, prev, &Record::canonical_bytes(event, &detail))
    }

    /// The event's two encodings from one serialisation of its detail (the bulk of a record):
    /// the canonical bytes its hash covers — the part of the hashed bytes that does not depend
    /// on the record's place in the chain, so the spool computes it before it takes its lock —
    /// and its JSON as serde writes it (the spool's line).
    /// serde_json's objects are sorted by key (the workspace does not enable its
    /// `preserve_order`), so the canonical JSON of the detail is exactly what serde writes for
    /// it (`encodings_are_what_serde_writes` keeps that true).
    pub(crate) fn encodings(event: &Event) -> (Vec<u8>, Vec<u8>) {
        let mut detail = Vec::with_capacity(256);
        canonical_json(&event.detail, &mut detail);
        let mut json = Vec::with_capacity(detail.len() + 96);
        json.extend_from_slice(b"{\"kind\":");
        write_json_string(event.kind.as_str(), &mut json);
        json.extend_from_slice(b",\"person\":");
        write_opt_json_string(event.person.as_deref(), &mut json);
        json.extend_from_slice(b",\"client\":");
        write_opt_json_string(event.client.as_deref(), &mut json);
        json.extend_from_slice(b",\"session\":");
        match event.session {
            Some(s) => {
                let _ = std::io::Write::write_fmt(&mut json, format_args!("{s}"));
            }
            None => json.extend_from_slice(b"null"),
        }
        json.extend_from_slice(b",\"detail\":");
        json.extend_from_slice(&detail);
        json.push(b'}');
        (Record::canonical_bytes(event, &detail), json)
    }

    /// The hashed bytes of an event whose detail's canonical JSON is `detail`.
    fn canonical_bytes(event: &Event, detail: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(detail.len() + 96);
        put_str(&mut buf, event.kind.as_str());
        put_opt_str(&mut buf, event.person.as_deref());
        put_opt_str(&mut buf, event.client.as_deref());
        match event.session {
            None => buf.push(0),
            Some(s) => {
                buf.push(1);
                buf.extend_from_slice(&s.to_be_bytes());
            }
        }
        put_bytes(&mut buf, detail);
        buf
    }

    /// The hash of a record at (seq, time, prev) whose event encodes as `event_bytes`.
    pub(crate) fn hash_of(seq: u64, time: AuditTime, prev: &Digest, event_bytes: &[u8]) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(RECORD_DOMAIN);
        h.update(&seq.to_be_bytes());
        h.update(&time.as_micros().to_be_bytes());
        h.update(&prev.0);
        h.update(event_bytes);
        Digest(*h.finalize().as_bytes())
    }

    /// Whether `hash` matches the content.
    pub fn hash_is_valid(&self) -> bool {
        Record::compute_hash(self.seq, self.time, &self.prev, &self.event) == self.hash
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
    buf.extend_from_slice(b);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

/// JSON with object keys sorted by their UTF-8 bytes and no whitespace. Strings and numbers are
/// written as serde_json writes them (numbers round-trip exactly: integers as integers, floats
/// in their shortest exact form), so parsing and re-encoding never changes the bytes.
pub fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // serde_json writes a number as its Display does; into the buffer, no String.
            let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                canonical_json(&m[k], out);
            }
            out.push(b'}');
        }
    }
}

fn write_opt_json_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => write_json_string(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; a &str always serializes (written into
    // the buffer directly: no allocation per string).
    let at = out.len();
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.truncate(at);
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn ev() -> Event {
        Event::new(EventKind::Statement)
            .person("alice")
            .client("127.0.0.1:5000")
            .session(7)
            .detail(serde_json::json!({"sql": "select 1", "n": 1.5, "z": [1, {"b": 2, "a": null}]}))
    }

    #[test]
    fn hash_survives_json_round_trip_and_key_order() {
        let r = Record::new(1, AuditTime(1_795_000_000_000_001), Digest::ZERO, ev());
        let text = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        assert!(back.hash_is_valid());
        assert_eq!(back, r);
        // The same record with detail keys in another order and extra whitespace.
        let reordered = text.replace(
            r#"{"n":1.5,"sql":"select 1","z":[1,{"a":null,"b":2}]}"#,
            r#"{ "z": [1, {"b": 2, "a": null}], "sql": "select 1", "n": 1.5 }"#,
        );
        assert_ne!(reordered, text, "the test must actually reorder the keys");
        let back: Record = serde_json::from_str(&reordered).unwrap();
        assert!(back.hash_is_valid());
    }

    #[test]
    fn every_field_is_covered() {
        let r = Record::new(3, AuditTime(10), Digest([9; 32]), ev());
        let mut variants = Vec::new();
        variants.push(Record { seq: 4, ..r.clone() });
        variants.push(Record { time: AuditTime(11), ..r.clone() });
        variants.push(Record { prev: Digest([8; 32]), ..r.clone() });
        let mut e = r.clone();
        e.event.kind = EventKind::Verdict;
        variants.push(e);
        let mut e = r.clone();
        e.event.person = Some("mallory".into());
        variants.push(e);
        let mut e = r.clone();
        e.event.person = None;
        variants.push(e);
        let mut e = r.clone();
        e.event.client = Some("127.0.0.1:5001".into());
        variants.push(e);
        let mut e = r.clone();
        e.event.session = None;
        variants.push(e);
        let mut e = r.clone();
        e.event.detail["sql"] = "select 2".into();
        variants.push(e);
        for v in variants {
            assert!(!v.hash_is_valid(), "a change went unnoticed: {v:?}");
        }
        assert!(r.hash_is_valid());
    }

    /// The spool writes an event's JSON from the detail's canonical bytes: it must be byte for
    /// byte what serde writes (keys out of order, escapes, non-ASCII keys, floats, integers at
    /// their limits, every optional field absent and present).
    #[test]
    fn encodings_are_what_serde_writes() {
        let detail = serde_json::json!({
            "z": 1, "é": "ü\u{1}\"\\\n", "A": [1.5, -0.0, 1e300, 5e-324, null, true],
            "": {"b": u64::MAX, "a": i64::MIN, "\u{7f}": {}}, "sql": "select '\t' -- \u{2028}",
        });
        let full = Event::new(EventKind::Other("custom_kind".into()))
            .person("alice \"the\" admin")
            .client("[::1]:5000")
            .session(u64::MAX)
            .detail(detail.clone());
        for e in [full, Event::new(EventKind::Statement).detail(detail), ev(), Event::new(EventKind::Connect)]
        {
            let (bytes, json) = Record::encodings(&e);
            assert_eq!(String::from_utf8(json).unwrap(), serde_json::to_string(&e).unwrap());
            let mut canonical = Vec::new();
            canonical_json(&e.detail, &mut canonical);
            assert_eq!(bytes, Record::canonical_bytes(&e, &canonical));
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Moving bytes between person and client must change the hash.
        let a = Event::new(EventKind::Auth).person("ab").client("c");
        let b = Event::new(EventKind::Auth).person("a").client("bc");
        assert_ne!(
            Record::compute_hash(1, AuditTime(0), &Digest::ZERO, &a),
            Record::compute_hash(1, AuditTime(0), &Digest::ZERO, &b)
        );
    }
}
