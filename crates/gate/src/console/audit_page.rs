//! The console's audit page: the gate's audit records as its spool holds them, searched by
//! person, time range, kind and text (`audit::Filter`, the same search as `holdfast audit
//! search`), each with its chain position (seq, hash) and whether the chain verifies up to it
//! (`audit::check_run`: the audit crate's own hash and link checks), 100 per page, newest
//! first, and the search's result as JSON Lines or CSV under the same session.
//!
//! What the gate still holds is what it has not yet shipped (all of it without `[audit]`): a
//! record the vault acknowledged leaves the spool with its segment, and is verified with its
//! signatures by `holdfast audit verify` against the vault's copy. The page says where the
//! spool begins. Only approvers see this page: the log holds everyone's SQL text.

use std::sync::Arc;

use audit::{AuditTime, EventKind, Filter, Record};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{layout, maud_html, refused, signed_in, to_login};
use crate::Shared;

/// Records per page.
const PAGE: usize = 100;

/// The search form's fields, as the query string carries them (empty means "any").
#[derive(serde::Deserialize, Default, Clone)]
pub(super) struct AuditQuery {
    #[serde(default)]
    person: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    page: usize,
}

impl AuditQuery {
    /// The filter, or what is wrong with the form.
    fn filter(&self) -> Result<Filter, String> {
        let when = |name: &str, t: &str| -> Result<Option<AuditTime>, String> {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Ok(at) = t.parse::<AuditTime>() {
                return Ok(Some(at));
            }
            serve::parse_duration(t).map(|d| Some(AuditTime::now().minus(d))).map_err(|_| {
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
    fn search_string(&self) -> String {
        let pairs = [
            ("person", &self.person),
            ("since", &self.since),
            ("until", &self.until),
            ("kind", &self.kind),
            ("text", &self.text),
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
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The spool's records with the chain's verdict: how far it verifies.
struct Chain {
    records: Vec<Record>,
    /// The first bad record's seq and why; every record before it verified.
    bad: Option<(u64, String)>,
}

impl Chain {
    fn verified(&self, seq: u64) -> bool {
        self.bad.as_ref().is_none_or(|(b, _)| seq < *b)
    }
}

fn read_chain(s: &Shared) -> Result<Chain, String> {
    let dir = s.config.state_dir.join("audit");
    let records = audit::spool::read_spool(&dir).map_err(|e| {
        // The page says what failed; the spool's paths go to the gate's log.
        tracing::warn!(error = %e, "the audit page cannot read the spool");
        vault_types::UserFacing::user_message(&e)
    })?;
    let bad = audit::check_run(&records).map(|(seq, kind, why)| (seq, format!("{kind:?}: {why}")));
    Ok(Chain { records, bad })
}

/// Signed in and an approver, or the response that says otherwise.
fn auditor(s: &Shared, headers: &HeaderMap) -> Result<super::Signed, Box<Response>> {
    let Some(w) = signed_in(s, headers) else { return Err(Box::new(to_login())) };
    if !w.person.approver {
        return Err(Box::new(refused(
            StatusCode::FORBIDDEN,
            "The audit log holds everyone's SQL: only approvers (approver = true in gate.toml) may search it.",
        )));
    }
    Ok(w)
}

pub(super) async fn page(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let w = match auditor(&s, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let chain = match read_chain(&s) {
        Ok(c) => c,
        Err(e) => {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, &format!("Cannot read the audit spool: {e}"));
        }
    };
    let filter = q.filter();
    let hits: Vec<&Record> = match &filter {
        Ok(f) => chain.records.iter().rev().filter(|r| f.matches(r)).collect(),
        Err(_) => vec![],
    };
    let pages = hits.len().div_ceil(PAGE).max(1);
    let page = q.page.min(pages - 1);
    let shown = &hits[(page * PAGE).min(hits.len())..((page + 1) * PAGE).min(hits.len())];
    let search = q.search_string();
    let link = |p: usize| {
        if search.is_empty() {
            format!("/console/audit?page={p}")
        } else {
            format!("/console/audit?{search}&page={p}")
        }
    };
    let export = |ext: &str| {
        if search.is_empty() {
            format!("/console/audit/export.{ext}")
        } else {
            format!("/console/audit/export.{ext}?{search}")
        }
    };
    let first_seq = chain.records.first().map(|r| r.seq);
    let body = html! {
        h1 { "Audit log " span.count id="hits" { (hits.len()) } }
        form.search id="search" method="get" action="/console/audit" {
            label { "Person" input id="q-person" name="person" value=(q.person) autocapitalize="none"; }
            label { "Kind" select id="q-kind" name="kind" {
                option value="" { "any" }
                @for k in EventKind::known_names() { option value=(k) selected[q.kind == k] { (k) } }
            } }
            label { "Since" input id="q-since" name="since" value=(q.since) placeholder="2026-11-23T09:00:00Z or 24h"; }
            label { "Until" input id="q-until" name="until" value=(q.until) placeholder="time or duration ago"; }
            label.wide { "Text (SQL, any detail, client address)" input id="q-text" name="text" value=(q.text); }
            div.buttons { button id="q-go" type="submit" { "Search" } a href="/console/audit" { "clear" } }
        }
        @if let Err(e) = &filter { p.flash.bad id="error" { (e) } }
        p id="chain" class=(if chain.bad.is_none() { "flash good" } else { "flash bad" }) {
            @match (&chain.bad, first_seq, chain.records.last()) {
                (None, Some(a), Some(last)) => {
                    "Chain verified: seq " (a) "–" (last.seq) ", every record's hash and link (ends with "
                    code { (last.hash.short()) } ")."
                }
                (None, _, _) => { "The spool holds no records." }
                (Some((seq, why)), _, _) => { "Chain BROKEN at seq " (seq) ": " (why) " — records from there on are not verified." }
            }
        }
        @if first_seq.is_some_and(|a| a > 1) {
            p.muted id="shipped-note" { "Records before seq " (first_seq.unwrap_or(1)) " were shipped to the vault and left this gate: "
                "search and verify them, signatures included, with " code { "holdfast audit search" } " / " code { "holdfast audit verify" } "." }
        }
        p.exports { "Export this search: "
            a id="export-jsonl" href=(export("jsonl")) download { "JSON Lines" } " · "
            a id="export-csv" href=(export("csv")) download { "CSV" } }
        div.scroll {
            table.list.audit id="records" {
                tr { th { "seq" } th { "time" } th { "person" } th { "client" } th { "kind" } th { "what" } th { "chain" } }
                @for r in shown {
                    tr id={ "rec-" (r.seq) } data-kind=(r.event.kind.to_string()) {
                        td { (r.seq) br; code.hash title=(r.hash.to_hex()) { (r.hash.short()) } }
                        td.time { (r.time) }
                        td.person { (r.event.person.as_deref().unwrap_or("-")) }
                        td { code { (r.event.client.as_deref().unwrap_or("-")) } }
                        td.kind-cell { (r.event.kind) }
                        td.what { code.summary { (r.event.summary()) } }
                        td.status {
                            @if chain.verified(r.seq) { span.ok { "verified" } } @else { span.bad { "NOT verified" } }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            p.pages id="pages" {
                @if page > 0 { a id="prev-page" href=(link(page - 1)) { "← newer" } " " }
                "page " (page + 1) " of " (pages)
                @if page + 1 < pages { " " a id="next-page" href=(link(page + 1)) { "older →" } }
            }
        }
        p.foot { a href="/console/approvals" { "Approvals" } }
    };
    maud_html(layout("Audit", Some(&w), body)).into_response()
}

/// The whole search result (not only one page), oldest first, as JSON Lines or CSV.
pub(super) async fn export(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Path(file): axum::extract::Path<String>,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Err(r) = auditor(&s, &headers) {
        return *r;
    }
    let csv = match file.as_str() {
        "export.jsonl" => false,
        "export.csv" => true,
        _ => return (StatusCode::NOT_FOUND, "no such export").into_response(),
    };
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let chain = match read_chain(&s) {
        Ok(c) => c,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the audit spool: {e}"))
                .into_response();
        }
    };
    let mut out = String::new();
    if csv {
        out.push_str("seq,time,person,client,session,kind,verified,hash,prev,detail\r\n");
    }
    for r in chain.records.iter().filter(|r| filter.matches(r)) {
        let verified = chain.verified(r.seq);
        if csv {
            let cells = [
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
            ];
            out.push_str(&cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        } else {
            let line = serde_json::json!({
                "seq": r.seq, "time": r.time, "person": r.event.person, "client": r.event.client,
                "session": r.event.session, "kind": r.event.kind, "detail": r.event.detail,
                "hash": r.hash, "prev": r.prev, "verified": verified,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    let (ctype, name) = if csv {
        ("text/csv; charset=utf-8", "attachment; filename=\"holdfast-audit.csv\"")
    } else {
        ("application/x-ndjson", "attachment; filename=\"holdfast-audit.jsonl\"")
    };
    ([(header::CONTENT_TYPE, ctype), (header::CONTENT_DISPOSITION, name)], out).into_response()
}

/// One CSV field (RFC 4180 quoting). A field a spreadsheet would run as a formula (`=`, `+`,
/// `-`, `@`, tab, CR at its start) gets a leading `'`: SQL text is attacker-chosen.
fn csv_cell(c: &str) -> String {
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{c}") } else { c.to_string() };
    if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
    }

    #[test]
    fn the_form_becomes_the_cli_filter() {
        let q = AuditQuery {
            person: " alice ".into(),
            kind: "approved".into(),
            since: "15m".into(),
            ..Default::default()
        };
        let f = q.filter().unwrap();
        assert_eq!(f.person.as_deref(), Some("alice"));
        assert_eq!(f.kind, vec![EventKind::Approved]);
        assert!(f.since.is_some() && f.until.is_none() && f.text.is_none());
        let bad = AuditQuery { until: "yesterday".into(), ..Default::default() };
        assert!(bad.filter().unwrap_err().contains("until"));
        let q = AuditQuery { text: "a&b =c".into(), person: "x".into(), ..Default::default() };
        assert_eq!(q.search_string(), "person=x&text=a%26b%20%3Dc");
    }
}
