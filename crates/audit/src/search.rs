//! `search`: "who did what from where" — records filtered by person, time, kind and text.

use crate::event::EventKind;
use crate::record::Record;
use crate::time::AuditTime;

/// What to look for; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exactly this person.
    pub person: Option<String>,
    /// At or after.
    pub since: Option<AuditTime>,
    /// Before.
    pub until: Option<AuditTime>,
    /// One of these kinds (empty: any).
    pub kind: Vec<EventKind>,
    /// This text, case-insensitively, in the client address or any string of the detail (the
    /// SQL text, the verdict, an approver, an error…).
    pub text: Option<String>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &Record) -> bool {
        if let Some(p) = &self.person
            && r.event.person.as_deref() != Some(p.as_str())
        {
            return false;
        }
        if self.since.is_some_and(|s| r.time < s) || self.until.is_some_and(|u| r.time >= u) {
            return false;
        }
        if !self.kind.is_empty() && !self.kind.contains(&r.event.kind) {
            return false;
        }
        if let Some(t) = &self.text {
            let needle = t.to_lowercase();
            let mut found = r.event.client.as_deref().is_some_and(|c| c.to_lowercase().contains(&needle));
            if !found {
                found = any_string(&r.event.detail, &mut |s| s.to_lowercase().contains(&needle));
            }
            if !found {
                return false;
            }
        }
        true
    }
}

fn any_string(v: &serde_json::Value, f: &mut impl FnMut(&str) -> bool) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => f(s),
        Value::Number(n) => f(&n.to_string()),
        Value::Array(a) => a.iter().any(|x| any_string(x, f)),
        Value::Object(m) => m.iter().any(|(k, x)| f(k) || any_string(x, f)),
        Value::Null | Value::Bool(_) => false,
    }
}

/// The records that match, in the order given (seq order for a verified chain).
pub fn search<'a>(records: impl IntoIterator<Item = &'a Record>, filter: &Filter) -> Vec<Record> {
    records.into_iter().filter(|r| filter.matches(r)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::record::Digest;

    fn rec(seq: u64, t: i64, kind: EventKind, person: Option<&str>, sql: &str) -> Record {
        let mut e =
            Event::new(kind).client(format!("10.1.2.{seq}:5432")).detail(serde_json::json!({"sql": sql}));
        e.person = person.map(String::from);
        Record::new(seq, AuditTime(t), Digest::ZERO, e)
    }

    #[test]
    fn filters_combine() {
        let rs = vec![
            rec(1, 100, EventKind::Connect, None, ""),
            rec(2, 200, EventKind::Statement, Some("mallory"), "DROP DATABASE shop"),
            rec(3, 300, EventKind::Statement, Some("alice"), "select * from orders"),
            rec(4, 400, EventKind::Statement, Some("mallory"), "DELETE FROM stored_value_cards"),
            rec(5, 500, EventKind::Verdict, Some("mallory"), "DELETE FROM stored_value_cards"),
        ];
        let seqs = |f: &Filter| search(&rs, f).iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&Filter::default()), vec![1, 2, 3, 4, 5]);
        let mallory = Filter { person: Some("mallory".into()), ..Default::default() };
        assert_eq!(seqs(&mallory), vec![2, 4, 5]);
        let stmts = Filter { kind: vec![EventKind::Statement], ..mallory.clone() };
        assert_eq!(seqs(&stmts), vec![2, 4]);
        let window = Filter { since: Some(AuditTime(200)), until: Some(AuditTime(400)), ..mallory.clone() };
        assert_eq!(seqs(&window), vec![2]);
        let text = Filter { text: Some("drop database".into()), ..Default::default() };
        assert_eq!(seqs(&text), vec![2]);
        let from = Filter { text: Some("10.1.2.3:".into()), ..Default::default() };
        assert_eq!(seqs(&from), vec![3]);
        assert!(seqs(&Filter { person: Some("Mallory".into()), ..Default::default() }).is_empty());
    }
}
