//! `verify`: checks every `audit.batch` the vault holds — signatures by trusted keys, each
//! record's hash, the chain from seq 1 without gaps, reordering or conflicting duplicates — and
//! names the first bad record of each gate.
//!
//! What it cannot see: records removed from the *end* of a chain leave no trace in the chain
//! itself; the report shows each gate's last seq and time so they can be compared with the
//! gate's own `status`. Batches signed by an untrusted key are reported, never used.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::batch::{Batch, key_hex};
use crate::record::{Digest, Record};
use crate::time::AuditTime;

/// One catalog record as the vault lists it: its object name, the vault's clock when stored,
/// and the body (an `audit.batch` body, or anything an attacker put there).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredBatch {
    pub name: String,
    pub written_at: String,
    pub body: serde_json::Value,
}

impl StoredBatch {
    /// The gate the body claims, if it has one.
    pub fn gate(&self) -> Option<&str> {
        self.body.get("gate").and_then(|g| g.as_str())
    }
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The stored body is not a batch this version can read.
    Malformed,
    /// Signed by a key that is not trusted.
    UntrustedKey,
    /// The batch's records do not match its claimed range (cut short or padded).
    Truncated,
    /// A record's hash does not match its content.
    Altered,
    /// Inside a batch, a record does not follow the one before it.
    BrokenLink,
    /// The signature does not verify.
    BadSignature,
    /// Two different records with the same seq, both signed by trusted keys.
    Conflict,
    /// A batch reached the vault after later records (the gate never ships out of order).
    OutOfOrder,
    /// Seqs absent from the vault (removed).
    Missing,
    /// A record whose `prev` is not the hash of the record before it (reordered or replaced).
    ChainBroken,
    /// A record dated before the one before it.
    TimeBackwards,
}

/// One finding, as specific as the evidence allows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub gate: Option<String>,
    /// The first record concerned.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
    /// The vault's catalog object holding the evidence.
    pub batch: Option<String>,
    /// When the vault stored that object (vault clock).
    pub written_at: Option<String>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.gate, self.seq) {
            (Some(g), Some(s)) => write!(f, "gate {g}, record seq {s}: ")?,
            (Some(g), None) => write!(f, "gate {g}: ")?,
            (None, _) => {}
        }
        write!(f, "{}", self.what)?;
        if let Some(b) = &self.batch {
            write!(f, " [vault record {b}")?;
            if let Some(w) = &self.written_at {
                write!(f, ", stored {w}")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// Which keys were trusted.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "keys")]
pub enum Trust {
    /// The caller named these keys.
    Given(Vec<String>),
    /// None named: each gate's first stored batch's key. The chain is then only proved
    /// self-consistent — someone who rewrote everything with their own key would pass.
    FirstBatch,
}

/// The outcome for one gate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateReport {
    pub gate: String,
    pub intact: bool,
    /// Keys whose batches were accepted.
    pub keys: Vec<String>,
    /// True when no key was given and the gate's first batch's key was trusted.
    pub self_consistent_only: bool,
    pub batches: usize,
    /// Batches whose records were all already present, identical (a retried upload).
    pub duplicate_batches: usize,
    /// Distinct records accepted.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_time: Option<AuditTime>,
    pub last_time: Option<AuditTime>,
    pub first_problem: Option<Problem>,
    /// Every finding, by seq.
    pub problems: Vec<Problem>,
    /// The accepted records in seq order (each seq once; for a conflict, the one stored first).
    #[serde(skip)]
    pub accepted: Vec<Record>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub intact: bool,
    pub trust: Trust,
    pub gates: Vec<GateReport>,
    /// Stored records that cannot be read and name no gate.
    pub unattributed: Vec<Problem>,
}

impl VerifyReport {
    /// The first problem: unattributed ones first, then each gate's first bad record.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.unattributed.first().or_else(|| self.gates.iter().find_map(|g| g.first_problem.as_ref()))
    }
}

/// Verifies every batch (in the vault's order) against `trusted_keys`; with no keys, each
/// gate's first stored batch's key is trusted and the report says so ([`Trust::FirstBatch`]).
pub fn verify(batches: &[StoredBatch], trusted_keys: &[VerifyingKey]) -> VerifyReport {
    let mut malformed = Vec::new();
    let mut by_gate: BTreeMap<String, Vec<(&StoredBatch, Batch)>> = BTreeMap::new();
    for sb in batches {
        match serde_json::from_value::<Batch>(sb.body.clone()) {
            Ok(b) if b.format == crate::batch::BATCH_FORMAT => {
                by_gate.entry(b.gate.clone()).or_default().push((sb, b))
            }
            Ok(b) => malformed.push(Problem {
                gate: Some(b.gate.clone()),
                seq: Some(b.first_seq),
                kind: ProblemKind::Malformed,
                batch: Some(sb.name.clone()),
                written_at: Some(sb.written_at.clone()),
                what: format!("batch format {} is not one this version reads (1)", b.format),
            }),
            Err(e) => malformed.push(Problem {
                gate: sb.gate().map(String::from),
                seq: sb.body.get("first_seq").and_then(|v| v.as_u64()),
                kind: ProblemKind::Malformed,
                batch: Some(sb.name.clone()),
                written_at: Some(sb.written_at.clone()),
                what: format!("not an audit batch this version can read: {e}"),
            }),
        }
    }
    // An unreadable body that names a gate damages that gate's log; one that names none is
    // reported on its own.
    let mut unattributed = Vec::new();
    let mut extra: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    for p in malformed {
        match &p.gate {
            Some(g) => {
                by_gate.entry(g.clone()).or_default();
                extra.entry(g.clone()).or_default().push(p);
            }
            None => unattributed.push(p),
        }
    }
    let gates: Vec<GateReport> = by_gate
        .into_iter()
        .map(|(gate, list)| {
            let mut g = verify_gate(&gate, &list, trusted_keys);
            if let Some(mut more) = extra.remove(&gate) {
                g.problems.append(&mut more);
                g.problems.sort_by_key(|p| (p.seq.unwrap_or(0), p.kind));
                g.first_problem = g.problems.first().cloned();
                g.intact = false;
            }
            g
        })
        .collect();
    let trust = if trusted_keys.is_empty() {
        Trust::FirstBatch
    } else {
        Trust::Given(trusted_keys.iter().map(key_hex).collect())
    };
    VerifyReport {
        intact: unattributed.is_empty() && gates.iter().all(|g| g.intact),
        trust,
        gates,
        unattributed,
    }
}

fn verify_gate(gate: &str, list: &[(&StoredBatch, Batch)], trusted_keys: &[VerifyingKey]) -> GateReport {
    let self_consistent_only = trusted_keys.is_empty();
    let trusted: Vec<VerifyingKey> = if self_consistent_only {
        list.first().and_then(|(_, b)| b.claimed_key().ok()).into_iter().collect()
    } else {
        trusted_keys.to_vec()
    };
    let mut problems: Vec<Problem> = Vec::new();
    let problem = |sb: &StoredBatch, seq: u64, kind: ProblemKind, what: String| Problem {
        gate: Some(gate.to_string()),
        seq: Some(seq),
        kind,
        batch: Some(sb.name.clone()),
        written_at: Some(sb.written_at.clone()),
        what,
    };
    // seq → (record, index of the batch it came from)
    let mut chain: BTreeMap<u64, (Record, usize)> = BTreeMap::new();
    let mut rejected: Vec<(u64, u64)> = Vec::new();
    let mut keys_used: Vec<String> = Vec::new();
    let mut duplicate_batches = 0;
    let mut highest = 0u64;
    for (idx, (sb, b)) in list.iter().enumerate() {
        let range = format!("seqs {}–{}", b.first_seq, b.last_seq);
        let key = match b.claimed_key() {
            Ok(k) => k,
            Err(e) => {
                problems.push(problem(
                    sb,
                    b.first_seq,
                    ProblemKind::Malformed,
                    format!("batch of {range}: {e}"),
                ));
                rejected.push((b.first_seq, b.last_seq));
                continue;
            }
        };
        if !trusted.contains(&key) {
            problems.push(problem(
                sb,
                b.first_seq,
                ProblemKind::UntrustedKey,
                format!(
                    "a batch of {range} is signed by key {}, which is not trusted (a forged batch)",
                    b.public_key
                ),
            ));
            rejected.push((b.first_seq, b.last_seq));
            continue;
        }
        if let Some((seq, what)) = structure_error(b) {
            problems.push(problem(sb, seq, ProblemKind::Truncated, what));
            rejected.push((b.first_seq, b.last_seq));
            continue;
        }
        if let Some((seq, kind, what)) = content_error(b) {
            problems.push(problem(sb, seq, kind, what));
            rejected.push((b.first_seq, b.last_seq));
            continue;
        }
        if let Err(e) = b.check_signature() {
            problems.push(problem(
                sb,
                b.first_seq,
                ProblemKind::BadSignature,
                format!("batch of {range}: {e}"),
            ));
            rejected.push((b.first_seq, b.last_seq));
            continue;
        }
        if !keys_used.contains(&b.public_key) {
            keys_used.push(b.public_key.clone());
        }
        let mut new_records = 0;
        let mut out_of_order_reported = false;
        for r in &b.records {
            match chain.get(&r.seq) {
                Some((existing, _)) if existing.hash == r.hash => {}
                Some((_, other)) => {
                    let (osb, _) = &list[*other];
                    problems.push(problem(
                        sb,
                        r.seq,
                        ProblemKind::Conflict,
                        format!(
                            "two different records claim this seq, both signed by a trusted key: the one in vault record {} (stored {}) and this one — a forged or forked log",
                            osb.name, osb.written_at
                        ),
                    ));
                }
                None => {
                    if r.seq < highest && !out_of_order_reported {
                        problems.push(problem(
                            sb,
                            r.seq,
                            ProblemKind::OutOfOrder,
                            format!(
                                "this record reached the vault after records up to seq {highest} were stored: the gate ships in order, so it was held back or inserted later"
                            ),
                        ));
                        out_of_order_reported = true;
                    }
                    chain.insert(r.seq, (r.clone(), idx));
                    new_records += 1;
                }
            }
        }
        if new_records == 0 {
            duplicate_batches += 1;
        }
        highest = highest.max(b.last_seq);
    }

    // Walk the accepted chain from seq 1.
    let mut expected = 1u64;
    let mut prev_hash = Digest::ZERO;
    let mut prev_time: Option<AuditTime> = None;
    for (&seq, (r, idx)) in &chain {
        let (sb, _) = &list[*idx];
        if seq != expected {
            let covered = rejected.iter().any(|&(a, b)| a <= expected && expected <= b);
            if !covered {
                let what = if expected + 1 == seq {
                    format!(
                        "record seq {expected} is missing from the vault (removed); the next present is seq {seq}"
                    )
                } else {
                    format!(
                        "records seq {expected}–{} are missing from the vault (removed); the next present is seq {seq}",
                        seq - 1
                    )
                };
                problems.push(Problem {
                    gate: Some(gate.to_string()),
                    seq: Some(expected),
                    kind: ProblemKind::Missing,
                    batch: None,
                    written_at: None,
                    what,
                });
            }
        } else if r.prev != prev_hash {
            let what = if seq == 1 {
                "the first record does not start a chain (its prev hash is not zero)".to_string()
            } else {
                format!(
                    "does not follow seq {}: its prev hash {} is not seq {}'s hash {} (records reordered, replaced or inserted)",
                    seq - 1,
                    r.prev.short(),
                    seq - 1,
                    prev_hash.short()
                )
            };
            problems.push(problem(sb, seq, ProblemKind::ChainBroken, what));
        }
        if let Some(t) = prev_time
            && r.time < t
        {
            problems.push(problem(
                sb,
                seq,
                ProblemKind::TimeBackwards,
                format!("dated {} — before the record preceding it ({t})", r.time),
            ));
        }
        prev_hash = r.hash;
        prev_time = Some(r.time);
        expected = seq + 1;
    }
    // A chain whose only records were rejected: the problems already say so.
    problems.sort_by_key(|p| (p.seq.unwrap_or(0), p.kind));
    let accepted: Vec<Record> = chain.into_values().map(|(r, _)| r).collect();
    GateReport {
        gate: gate.to_string(),
        intact: problems.is_empty(),
        keys: keys_used,
        self_consistent_only,
        batches: list.len(),
        duplicate_batches,
        records: accepted.len() as u64,
        first_seq: accepted.first().map(|r| r.seq),
        last_seq: accepted.last().map(|r| r.seq),
        first_time: accepted.first().map(|r| r.time),
        last_time: accepted.last().map(|r| r.time),
        first_problem: problems.first().cloned(),
        problems,
        accepted,
    }
}

/// Checks a run of consecutive records as a gate still holds them (its spool, before or
/// without shipping): each record's hash and each link, with the same checks [`verify`] makes
/// inside a batch, and that seqs follow without gaps. No signature is involved — these records
/// were never signed — so this proves the run self-consistent, not that the vault holds it.
/// Returns the first bad record: its seq, what is wrong, and why.
pub fn check_run(records: &[Record]) -> Option<(u64, ProblemKind, String)> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else { return None };
    let run = Batch {
        format: crate::batch::BATCH_FORMAT,
        gate: String::new(),
        first_seq: first.seq,
        last_seq: last.seq,
        records: records.to_vec(),
        public_key: String::new(),
        signature: String::new(),
    };
    if let Some((seq, why)) = structure_error(&run) {
        return Some((seq, ProblemKind::Missing, why));
    }
    content_error(&run)
}

/// The batch's records against its claimed range: returns the first seq that is off.
fn structure_error(b: &Batch) -> Option<(u64, String)> {
    let claimed = b.last_seq.checked_sub(b.first_seq).map(|d| d.saturating_add(1));
    let Some(claimed) = claimed else {
        return Some((
            b.first_seq,
            format!("batch claims seqs {}–{} (an empty range)", b.first_seq, b.last_seq),
        ));
    };
    for (i, r) in b.records.iter().enumerate() {
        let want = b.first_seq + i as u64;
        if r.seq != want {
            return Some((
                want,
                format!(
                    "batch of seqs {}–{}: where seq {want} belongs it holds seq {} (records removed or reordered)",
                    b.first_seq, b.last_seq, r.seq
                ),
            ));
        }
    }
    if b.records.len() as u64 != claimed {
        let at = b.first_seq + b.records.len() as u64;
        return Some((
            at,
            format!(
                "batch claims seqs {}–{} ({claimed} records) but holds {}: cut short from seq {at}",
                b.first_seq,
                b.last_seq,
                b.records.len()
            ),
        ));
    }
    None
}

/// Each record's hash and the links inside the batch.
fn content_error(b: &Batch) -> Option<(u64, ProblemKind, String)> {
    for (i, r) in b.records.iter().enumerate() {
        if !r.hash_is_valid() {
            return Some((
                r.seq,
                ProblemKind::Altered,
                format!(
                    "the record's content does not match its hash {} (altered after it was written)",
                    r.hash.short()
                ),
            ));
        }
        if i > 0 && r.prev != b.records[i - 1].hash {
            return Some((
                r.seq,
                ProblemKind::BrokenLink,
                format!("does not follow seq {} inside its batch (prev hash differs)", r.seq - 1),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn records(n: u64) -> Vec<Record> {
        let mut prev = Digest::ZERO;
        (1..=n)
            .map(|s| {
                let e = Event::new(EventKind::Statement)
                    .person(if s % 2 == 0 { "alice" } else { "bob" })
                    .client("10.0.0.5:40000")
                    .session(1)
                    .detail(serde_json::json!({"sql": format!("select {s}")}));
                let r = Record::new(s, AuditTime(1_000_000 * s as i64), prev, e);
                prev = r.hash;
                r
            })
            .collect()
    }

    fn stored(batches: Vec<Batch>) -> Vec<StoredBatch> {
        batches
            .into_iter()
            .enumerate()
            .map(|(i, b)| StoredBatch {
                name: format!("catalog/{i:064x}"),
                written_at: format!("2026-11-23T10:00:{i:02}Z"),
                body: serde_json::to_value(b).unwrap(),
            })
            .collect()
    }

    /// Nine records in three signed batches of three.
    fn good() -> Vec<Batch> {
        let r = records(9);
        r.chunks(3).map(|c| Batch::sign("g1", c.to_vec(), &key(1)).unwrap()).collect()
    }

    fn first(report: &VerifyReport) -> (u64, ProblemKind) {
        let p = report.first_problem().expect("a problem is reported");
        (p.seq.unwrap(), p.kind)
    }

    #[test]
    fn intact_chain_passes() {
        let r = verify(&stored(good()), &[key(1).verifying_key()]);
        assert!(r.intact, "{:?}", r.first_problem());
        let g = &r.gates[0];
        assert_eq!((g.records, g.first_seq, g.last_seq, g.batches), (9, Some(1), Some(9), 3));
        assert!(!g.self_consistent_only);
        assert_eq!(g.accepted.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn without_trusted_keys_it_is_only_self_consistent() {
        let r = verify(&stored(good()), &[]);
        assert!(r.intact);
        assert!(r.gates[0].self_consistent_only);
        assert!(matches!(r.trust, Trust::FirstBatch));
        // Someone who rewrote everything with their own key passes this mode — which is why it
        // is flagged — but not a verification with the gate's real key.
        let forged: Vec<Batch> =
            records(9).chunks(3).map(|c| Batch::sign("g1", c.to_vec(), &key(9)).unwrap()).collect();
        assert!(verify(&stored(forged.clone()), &[]).intact);
        let r = verify(&stored(forged), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (1, ProblemKind::UntrustedKey));
    }

    #[test]
    fn altered_field_names_that_record() {
        let mut b = good();
        b[1].records[1].event.detail["sql"] = "select 'innocent'".into(); // seq 5
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (5, ProblemKind::Altered));
        assert!(!r.intact);
        let mut b = good();
        b[2].records[0].event.person = Some("carol".into()); // seq 7
        assert_eq!(first(&verify(&stored(b), &[key(1).verifying_key()])), (7, ProblemKind::Altered));
    }

    #[test]
    fn altered_and_rehashed_fails_the_signature_or_the_chain() {
        // The attacker recomputes seq 5's hash (and the rest of its batch) but cannot re-sign.
        let mut b = good();
        let mut recs = b[1].records.clone();
        recs[1].event.detail["sql"] = "select 'innocent'".into();
        for i in 1..recs.len() {
            let prev = recs[i - 1].hash;
            let e = recs[i].event.clone();
            recs[i] = Record::new(recs[i].seq, recs[i].time, prev, e);
        }
        b[1].records = recs;
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::BadSignature), "{:?}", r.first_problem());
    }

    #[test]
    fn removed_batch_names_the_first_missing_seq() {
        let mut b = good();
        b.remove(1); // seqs 4–6
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::Missing));
        assert!(r.first_problem().unwrap().what.contains("4–6"));
    }

    #[test]
    fn removed_record_inside_a_batch() {
        let mut b = good();
        b[1].records.remove(1); // seq 5
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (5, ProblemKind::Truncated));
    }

    #[test]
    fn truncated_batch() {
        let mut b = good();
        b[2].records.pop(); // seq 9 gone, batch still claims 7–9
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (9, ProblemKind::Truncated));
        assert!(r.first_problem().unwrap().what.contains("cut short"));
    }

    #[test]
    fn swapped_records_are_reported_at_the_first() {
        // Swap seqs 4 and 5 inside a batch, keeping their numbers: content order is wrong.
        let mut b = good();
        b[1].records.swap(0, 1);
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::Truncated));
        // An insider with the gate's key re-chains the records in another order (7–9 before
        // 4–6), re-signs and appends them: the vault still holds the originals.
        let r9 = records(9);
        let mut moved: Vec<Record> = Vec::new();
        let mut prev = Digest::ZERO;
        for (i, r) in r9[0..3].iter().chain(&r9[6..9]).chain(&r9[3..6]).enumerate() {
            let n = Record::new(i as u64 + 1, r.time, prev, r.event.clone());
            prev = n.hash;
            moved.push(n);
        }
        let forged: Vec<Batch> =
            moved.chunks(3).map(|c| Batch::sign("g1", c.to_vec(), &key(1)).unwrap()).collect();
        let mut all = good();
        all.extend(forged.clone());
        let r = verify(&stored(all), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::Conflict), "{:?}", r.first_problem());
        // Even if the originals were gone, the gate's clock never runs backwards in a chain.
        let r = verify(&stored(forged), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (7, ProblemKind::TimeBackwards), "{:?}", r.first_problem());
    }

    #[test]
    fn batches_stored_out_of_order() {
        let mut b = good();
        b.swap(1, 2);
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::OutOfOrder));
    }

    #[test]
    fn identical_duplicate_batch_is_fine_conflicting_one_is_not() {
        let mut b = good();
        b.push(b[1].clone()); // a retried upload
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert!(r.intact, "{:?}", r.first_problem());
        assert_eq!(r.gates[0].duplicate_batches, 1);

        // The gate's key and append token stolen: a batch re-signed with the real key claims
        // seq 5 with other content.
        let mut b = good();
        let mut recs = b[1].records.clone();
        recs[1].event.detail["sql"] = "select 'nothing happened'".into();
        for i in 1..recs.len() {
            let (prev, e) = (recs[i - 1].hash, recs[i].event.clone());
            recs[i] = Record::new(recs[i].seq, recs[i].time, prev, e);
        }
        b.push(Batch::sign("g1", recs, &key(1)).unwrap());
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (5, ProblemKind::Conflict));
        assert!(!r.intact);
        // The original stays the accepted record: the forgery is not silently preferred.
        assert_eq!(r.gates[0].accepted[4].event.detail["sql"], "select 5");
    }

    #[test]
    fn forged_batch_with_another_key() {
        let mut b = good();
        let recs = records(9)[3..6].to_vec();
        b.insert(2, Batch::sign("g1", recs, &key(2)).unwrap());
        let r = verify(&stored(b), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (4, ProblemKind::UntrustedKey));
        // Even with no key given, a second key in one gate's chain is reported.
        let mut b = good();
        b.push(Batch::sign("g1", records(10)[9..].to_vec(), &key(2)).unwrap());
        let r = verify(&stored(b), &[]);
        assert_eq!(first(&r), (10, ProblemKind::UntrustedKey));
    }

    #[test]
    fn wrong_key_given() {
        let r = verify(&stored(good()), &[key(3).verifying_key()]);
        assert_eq!(first(&r), (1, ProblemKind::UntrustedKey));
    }

    #[test]
    fn a_run_of_records_is_checked_like_a_batch() {
        let rs = records(5);
        assert!(check_run(&rs).is_none());
        assert!(check_run(&rs[2..]).is_none(), "a run may start after seq 1 (the rest shipped)");
        let mut altered = rs.clone();
        altered[2].event.person = Some("mallory".into());
        assert_eq!(check_run(&altered).map(|(s, k, _)| (s, k)), Some((3, ProblemKind::Altered)));
        let mut gap = rs.clone();
        gap.remove(1);
        assert_eq!(check_run(&gap).map(|(s, _, _)| s), Some(2));
        assert!(check_run(&[]).is_none());
    }

    #[test]
    fn chain_must_start_at_one() {
        let b = good();
        let r = verify(&stored(b[1..].to_vec()), &[key(1).verifying_key()]);
        assert_eq!(first(&r), (1, ProblemKind::Missing));
    }

    #[test]
    fn garbage_bodies_are_named() {
        let mut s = stored(good());
        s.push(StoredBatch {
            name: "catalog/ff".into(),
            written_at: "2026-11-23T10:01:00Z".into(),
            body: serde_json::json!({"gate": "g1", "first_seq": 10, "records": "nope"}),
        });
        let r = verify(&s, &[key(1).verifying_key()]);
        let p = r.first_problem().unwrap();
        assert_eq!(p.kind, ProblemKind::Malformed);
        assert_eq!(p.batch.as_deref(), Some("catalog/ff"));
        assert!(!r.intact);
        // It names gate g1, so g1's log is the one reported damaged, at seq 10.
        assert!(r.unattributed.is_empty());
        assert!(!r.gates[0].intact);
        assert_eq!(r.gates[0].first_problem.as_ref().unwrap().seq, Some(10));
        // A body naming no gate is reported on its own.
        s.push(StoredBatch {
            name: "catalog/ee".into(),
            written_at: "x".into(),
            body: serde_json::json!([1]),
        });
        let r = verify(&s, &[key(1).verifying_key()]);
        assert_eq!(r.unattributed.len(), 1);
        assert_eq!(r.first_problem().unwrap().batch.as_deref(), Some("catalog/ee"));
    }

    #[test]
    fn gates_are_separate_chains() {
        let mut b = good();
        let other: Vec<Batch> =
            records(4).chunks(2).map(|c| Batch::sign("g2", c.to_vec(), &key(2)).unwrap()).collect();
        b.extend(other);
        let r = verify(&stored(b), &[key(1).verifying_key(), key(2).verifying_key()]);
        assert!(r.intact, "{:?}", r.first_problem());
        assert_eq!(r.gates.len(), 2);
        assert_eq!(r.gates[1].records, 4);
    }
}
