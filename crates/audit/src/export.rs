//! `export`: what the two web consoles (the gate's spool, the vault's shipped batches) share to
//! search and export audit records — the search form as a query string ([`SearchForm`]) and one
//! record as a JSON Lines line or a CSV row ([`jsonl_line`], [`csv_row`]), with CSV cells that a
//! spreadsheet will not run as formulas (SQL text is attacker-chosen). Pure: the caller says
//! what "now" is and how a duration is spelt.

use std::time::Duration;

use crate::event::EventKind;
use crate::record::Record;
use crate::search::Filter;
use crate::time::AuditTime;

/// The console's search form, as its query string carries it (empty means "any").
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    pub person: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub text: String,
    /// Only this gate's chain (the vault's console, which holds several gates' logs).
    #[serde(default)]
    pub gate: String,
    /// Page number from 0 (not part of the search).
    #[serde(default)]
    pub page: usize,
}

impl SearchForm {
    /// The filter, or what is wrong with the form. `since`/`until` are a time (RFC 3339) or a
    /// duration before `now`, read by `ago` (e.g. `serve::parse_duration`).
    pub fn filter(&self, now: AuditTime, ago: impl Fn(&str) -> Option<Duration>) -> Result<Filter, String> {
        let when = |name: &str, t: &str| -> Result<Option<AuditTime>, String> {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Ok(at) = t.parse::<AuditTime>() {
                return Ok(Some(at));
            }
            ago(t).map(|d| Some(now.minus(d))).ok_or_else(|| {
                format!(
                    "{name} {t:?} is neither a time (2026-11-23T09:00:00Z) nor a duration ago (15m, 24h, 7d)"
                )
            })
        };
        let kind = match self.kind.trim() {
            "" => vec![],
            k => vec![k.parse::<EventKind>().map_err(|e| format!("kind: {e}"))?],
        };
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(Filter {
            person: opt(&self.person),
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            kind,
            text: opt(&self.text),
        })
    }

    /// The query string of this search (for links), without the page.
    pub fn search_string(&self) -> String {
        let pairs = [
            ("person", &self.person),
            ("since", &self.since),
            ("until", &self.until),
            ("kind", &self.kind),
            ("text", &self.text),
            ("gate", &self.gate),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One CSV field (RFC 4180 quoting). A field a spreadsheet would run as a formula (`=`, `+`,
/// `-`, `@`, tab, CR at its start) gets a leading `'`: SQL text is attacker-chosen.
pub fn csv_cell(c: &str) -> String {
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{c}") } else { c.to_string() };
    if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c }
}

/// The CSV header line (with `gate` first when the records come from several gates' chains).
pub fn csv_header(with_gate: bool) -> String {
    let cols = "seq,time,person,client,session,kind,verified,hash,prev,detail\r\n";
    if with_gate { format!("gate,{cols}") } else { cols.to_string() }
}

/// One record as a CSV row (CRLF-terminated).
pub fn csv_row(gate: Option<&str>, r: &Record, verified: bool) -> String {
    let mut cells: Vec<String> = gate.map(|g| vec![g.to_string()]).unwrap_or_default();
    cells.extend([
        r.seq.to_string(),
        r.time.to_string(),
        r.event.person.clone().unwrap_or_default(),
        r.event.client.clone().unwrap_or_default(),
        r.event.session.map(|s| s.to_string()).unwrap_or_default(),
        r.event.kind.to_string(),
        verified.to_string(),
        r.hash.to_hex(),
        r.prev.to_hex(),
        r.event.detail.to_string(),
    ]);
    let mut line = cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// One record as a JSON Lines line (newline-terminated).
pub fn jsonl_line(gate: Option<&str>, r: &Record, verified: bool) -> String {
    let mut v = serde_json::json!({
        "seq": r.seq, "time": r.time, "person": r.event.person, "client": r.event.client,
        "session": r.event.session, "kind": r.event.kind, "detail": r.event.detail,
        "hash": r.hash, "prev": r.prev, "verified": verified,
    });
    if let (Some(g), Some(m)) = (gate, v.as_object_mut()) {
        m.insert("gate".into(), serde_json::Value::String(g.to_string()));
    }
    let mut line = v.to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::record::Digest;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn a_row_carries_the_gate_and_defuses_the_person() {
        let ev = Event::new(EventKind::Statement)
            .person("=cmd|' /C calc'!A0")
            .detail(serde_json::json!({"sql": "x"}));
        let r = Record::new(7, AuditTime(1_795_000_000_000_000), Digest::ZERO, ev);
        let row = csv_row(Some("gate-1"), &r, true);
        assert!(row.starts_with("gate-1,7,2026-11-18T11:06:40.000000Z,'=cmd|' /C calc'!A0,"), "{row}");
        assert!(row.ends_with("\r\n") && row.contains(",true,"), "{row}");
        let line: serde_json::Value = serde_json::from_str(&jsonl_line(Some("gate-1"), &r, false)).unwrap();
        assert_eq!(
            (&line["gate"], &line["seq"], &line["verified"]),
            (&"gate-1".into(), &7.into(), &false.into())
        );
        assert!(csv_header(true).starts_with("gate,seq,"));
    }

    #[test]
    fn the_form_becomes_the_cli_filter() {
        let ago = |t: &str| {
            t.strip_suffix('m').and_then(|n| n.parse().ok()).map(|m: u64| Duration::from_secs(m * 60))
        };
        let now = AuditTime(1_000_000_000_000);
        let q = SearchForm {
            person: " alice ".into(),
            kind: "approved".into(),
            since: "15m".into(),
            ..Default::default()
        };
        let f = q.filter(now, ago).unwrap();
        assert_eq!(f.person.as_deref(), Some("alice"));
        assert_eq!(f.kind, vec![EventKind::Approved]);
        assert_eq!(f.since, Some(AuditTime(1_000_000_000_000 - 900_000_000)));
        assert!(f.until.is_none() && f.text.is_none());
        let bad = SearchForm { until: "yesterday".into(), ..Default::default() };
        assert!(bad.filter(now, ago).unwrap_err().contains("until"));
        let q = SearchForm { text: "a&b =c".into(), person: "x".into(), ..Default::default() };
        assert_eq!(q.search_string(), "person=x&text=a%26b%20%3Dc");
    }
}
