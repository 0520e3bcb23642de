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

/// The search form (`audit::SearchForm`, shared with the vault's console).
pub(super) type AuditQuery = audit::SearchForm;

/// The form's filter; a duration means that long before now.
fn filter_of(q: &AuditQuery) -> Result<Filter, String> {
    q.filter(AuditTime::now(), |t| serve::parse_duration(t).ok())
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
    let filter = filter_of(&q);
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
    let vault = s
        .config
        .audit
        .as_ref()
        .map(|a| a.vault.trim_end_matches('/').to_string())
        .filter(|v| v.starts_with("https://"));
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
                "search and verify them, signatures included, with " code { "holdfast audit search" } " / " code { "holdfast audit verify" }
                @if let Some(v) = &vault { " or on " a id="vault-audit" href={ (v) "/console/audit" } { "the vault's audit page" } }
                "." }
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
    let filter = match filter_of(&q) {
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
    let mut out = if csv { audit::export::csv_header(false) } else { String::new() };
    for r in chain.records.iter().filter(|r| filter.matches(r)) {
        let verified = chain.verified(r.seq);
        out.push_str(&if csv {
            audit::export::csv_row(None, r, verified)
        } else {
            audit::export::jsonl_line(None, r, verified)
        });
    }
    let (ctype, name) = if csv {
        ("text/csv; charset=utf-8", "attachment; filename=\"holdfast-audit.csv\"")
    } else {
        ("application/x-ndjson", "attachment; filename=\"holdfast-audit.jsonl\"")
    };
    ([(header::CONTENT_TYPE, ctype), (header::CONTENT_DISPOSITION, name)], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_means_that_long_ago() {
        let q = AuditQuery { since: "15m".into(), until: "yesterday".into(), ..Default::default() };
        assert!(filter_of(&q).unwrap_err().contains("until"));
        let q = AuditQuery { since: "15m".into(), ..Default::default() };
        let since = filter_of(&q).unwrap().since.unwrap();
        let expected = AuditTime::now().minus(std::time::Duration::from_secs(900));
        assert!((since.as_micros() - expected.as_micros()).abs() < 5_000_000, "{since} vs {expected}");
    }
}
