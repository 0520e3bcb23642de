//! The vault console's audit page: the records every gate shipped into this vault (`audit.batch`
//! catalog records), checked with the audit crate's own verification (`audit::verify`, what
//! `holdfast audit verify` runs: trusted signatures, each record's hash, the chain from seq 1
//! with no gap, reordering or conflicting duplicate) against `audit_trust_keys` from vault.toml
//! — or, without any, each gate's first batch's key, and the page says the chain is then only
//! self-consistent. Searched like the gate's own page (person, time range, kind, text, and
//! gate: `audit::SearchForm`), each record with its chain position and whether it verified,
//! 100 a page, newest first; the whole search as JSON Lines or CSV (`audit::export`, the same
//! formula defusing as the gate's). A `read` token is enough: this is what an auditor reads.
//!
//! [`around`] gives an incident's card the gate's records of the minutes before it (who ran
//! what), with a link to this page filtered to that window.

use std::sync::Arc;
use std::time::Duration;

use audit::{AuditTime, EventKind, Filter, GateReport, Record, SearchForm, StoredBatch, VerifyReport};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use vault_api::Scope;

use super::{Console, PAGE, Shared, layout, page, refused, signed_in};

/// How far before an incident's detection its card looks for the gate's records, and after.
const BEFORE_INCIDENT: Duration = Duration::from_secs(15 * 60);
const AFTER_INCIDENT: Duration = Duration::from_secs(60);
/// Records an incident's card shows (the newest of its window; the link has them all).
const AROUND_SHOWN: usize = 8;

/// Every gate's verified chain, as the vault holds it now.
pub(super) struct Shipped {
    pub report: VerifyReport,
    /// Every accepted record as (gate index, record index, verified), newest first.
    by_time: Vec<(usize, usize, bool)>,
}

/// The last verification, by a digest of the catalog's object names: any record appended (a
/// batch, an incident, an acknowledgement) makes it stale, and nothing else can change it, as
/// catalog objects are immutable and named by their hash. One load at a time (the lock is held
/// while verifying), so ten tabs opened at once verify once.
#[derive(Default)]
pub(super) struct Cache(tokio::sync::Mutex<Option<([u8; 32], Arc<Shipped>)>>);

impl Shipped {
    /// Lists the `audit.batch` records and verifies them (or the cached verification of the
    /// same catalog).
    pub async fn load(s: &Shared, cache: &Cache) -> Result<Arc<Shipped>, String> {
        let listed = s.store.list(store::ObjectKind::Catalog).await.map_err(|e| e.to_string())?;
        let mut names: Vec<String> = listed.iter().map(|m| m.name.to_string()).collect();
        names.sort();
        let mut h = blake3::Hasher::new();
        for n in &names {
            h.update(n.as_bytes());
            h.update(b"\n");
        }
        let key = *h.finalize().as_bytes();
        let mut cached = cache.0.lock().await;
        if let Some((k, v)) = cached.as_ref()
            && *k == key
        {
            return Ok(v.clone());
        }
        let records = s.repo.records().await.map_err(|e| e.to_string())?;
        let batches: Vec<StoredBatch> = records
            .into_iter()
            .filter(|(_, r)| r.kind == audit::BATCH_KIND)
            .map(|(name, r)| StoredBatch {
                name: name.to_string(),
                written_at: r.written_at.to_string(),
                body: r.body,
            })
            .collect();
        let keys = s.config.audit_trust_keys.clone();
        // Hashing and signature checks of every record: off the async workers.
        let shipped = tokio::task::spawn_blocking(move || Shipped::new(audit::verify(&batches, &keys)))
            .await
            .map_err(|e| format!("verifying the audit batches: {e}"))?;
        let shipped = Arc::new(shipped);
        *cached = Some((key, shipped.clone()));
        Ok(shipped)
    }

    fn new(report: VerifyReport) -> Shipped {
        let mut by_time: Vec<(usize, usize, bool)> = Vec::new();
        for (gi, g) in report.gates.iter().enumerate() {
            by_time.extend(g.accepted.iter().enumerate().map(|(ri, r)| (gi, ri, verified(g, r.seq))));
        }
        let key = |&(gi, ri, _): &(usize, usize, bool)| {
            let r = &report.gates[gi].accepted[ri];
            (std::cmp::Reverse(r.time), gi, std::cmp::Reverse(r.seq))
        };
        by_time.sort_by_key(key);
        Shipped { report, by_time }
    }

    /// Every accepted record with its gate and whether the chain verifies up to it, newest
    /// first.
    fn all(&self) -> impl Iterator<Item = (&GateReport, &Record, bool)> + '_ {
        self.by_time.iter().map(|&(gi, ri, ok)| {
            let g = &self.report.gates[gi];
            (g, &g.accepted[ri], ok)
        })
    }

    /// The records with `since <= time < until`, newest first.
    fn between(
        &self,
        since: AuditTime,
        until: AuditTime,
    ) -> impl Iterator<Item = (&GateReport, &Record, bool)> + '_ {
        // Newest first: skip the records at or after `until`, then take them down to `since`.
        let from =
            self.by_time.partition_point(|&(gi, ri, _)| self.report.gates[gi].accepted[ri].time >= until);
        self.all().skip(from).take_while(move |(_, r, _)| r.time >= since)
    }
}

/// Whether `seq` of gate `g` lies before the gate's first problem (a problem that names no
/// record makes none of them verified).
fn verified(g: &GateReport, seq: u64) -> bool {
    match &g.first_problem {
        None => true,
        Some(p) => p.seq.is_some_and(|bad| seq < bad),
    }
}

fn filter_of(q: &SearchForm) -> Result<Filter, String> {
    q.filter(AuditTime::now(), |t| serve::parse_duration(t).ok())
}

fn key_short(k: &str) -> String {
    format!("{}…", k.get(..16).unwrap_or(k))
}

/// The hits of a search, newest first.
fn hits<'a>(shipped: &'a Shipped, q: &SearchForm, f: &Filter) -> Vec<(&'a GateReport, &'a Record, bool)> {
    let gate = q.gate.trim();
    shipped.all().filter(|(g, r, _)| (gate.is_empty() || g.gate == gate) && f.matches(r)).collect()
}

pub(super) async fn audit_page(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    Extension(cache): Extension<Arc<Cache>>,
    headers: HeaderMap,
    Query(q): Query<SearchForm>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "reading the audit log")
        .await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let shipped = match Shipped::load(&s, &cache).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "console: reading the audit batches");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Could not read the audit batches (see the vault's log).",
            );
        }
    };
    let filter = filter_of(&q);
    let found = match &filter {
        Ok(f) => hits(&shipped, &q, f),
        Err(_) => vec![],
    };
    let pages = found.len().div_ceil(PAGE).max(1);
    let pg = q.page.min(pages - 1);
    let shown = &found[(pg * PAGE).min(found.len())..((pg + 1) * PAGE).min(found.len())];
    let search = q.search_string();
    let with = |path: &str, extra: &str| match (search.is_empty(), extra.is_empty()) {
        (true, true) => path.to_string(),
        (true, false) => format!("{path}?{extra}"),
        (false, true) => format!("{path}?{search}"),
        (false, false) => format!("{path}?{search}&{extra}"),
    };
    let r = &shipped.report;
    let multi = r.gates.len() > 1;
    let body = html! {
        h1 { "Gate audit log " span.count id="hits" { (found.len()) } }
        p.muted { "The records the gates shipped into this vault, out of reach of whoever runs a gate host, verified with "
            code { "holdfast audit verify" } "'s checks on every page load." }
        form.search id="search" method="get" action="/console/audit" {
            label { "Person" input id="q-person" name="person" value=(q.person) autocapitalize="none"; }
            label { "Kind" select id="q-kind" name="kind" {
                option value="" { "any" }
                @for k in EventKind::known_names() { option value=(k) selected[q.kind == k] { (k) } }
            } }
            label { "Since" input id="q-since" name="since" value=(q.since) placeholder="2026-11-23T09:00:00Z or 24h"; }
            label { "Until" input id="q-until" name="until" value=(q.until) placeholder="time or duration ago"; }
            @if multi {
                label { "Gate" select id="q-gate" name="gate" {
                    option value="" { "any" }
                    @for g in &r.gates { option value=(g.gate) selected[q.gate == g.gate] { (g.gate) } }
                } }
            }
            label.wide { "Text (SQL, any detail, client address)" input id="q-text" name="text" value=(q.text); }
            div.buttons { button id="q-go" type="submit" { "Search" } a href="/console/audit" { "clear" } }
        }
        @if let Err(e) = &filter { p.flash.bad id="error" { (e) } }
        div id="chains" {
            @if r.gates.is_empty() && r.unattributed.is_empty() { p.muted id="no-batches" { "No gate has shipped its audit log to this vault yet." } }
            @for g in &r.gates {
                p.chain.(if g.intact { "flash good" } else { "flash bad" }) id={ "chain-" (g.gate) } {
                    "Gate " strong { (g.gate) } ": "
                    @if g.intact {
                        "chain verified — " (g.records) " records"
                        @if let (Some(a), Some(b)) = (g.first_seq, g.last_seq) { ", seq " (a) "–" (b) }
                        ", " (g.batches) " signed batches"
                        @if g.self_consistent_only {
                            " (self-consistent only: no " code { "audit_trust_keys" } " in vault.toml, so the first batch's key "
                            @for k in &g.keys { code { (key_short(k)) } } " was trusted)"
                        } @else {
                            ", signed by a trusted key " @for k in &g.keys { code { (key_short(k)) } }
                        }
                        "."
                    } @else {
                        "DAMAGED — " @if let Some(p) = &g.first_problem { (p.to_string()) }
                        " Records from there on are not verified."
                    }
                }
            }
            @for p in &r.unattributed { p.flash.bad { "Unreadable batch: " (p.to_string()) } }
        }
        p.exports { "Export this search: "
            a id="export-jsonl" href=(with("/console/audit/export.jsonl", "")) download { "JSON Lines" } " · "
            a id="export-csv" href=(with("/console/audit/export.csv", "")) download { "CSV" } }
        div.scroll {
            table.list.audit id="records" {
                tr { th { @if multi { "gate#seq" } @else { "seq" } } th { "time" } th { "person" } th { "client" } th { "kind" } th { "what" } th { "chain" } }
                @for (g, rec, ok) in shown {
                    tr id={ "rec-" (g.gate) "-" (rec.seq) } data-kind=(rec.event.kind.to_string()) {
                        td { @if multi { (g.gate) "#" } (rec.seq) br; code.hash title=(rec.hash.to_hex()) { (rec.hash.short()) } }
                        td.time { (rec.time) }
                        td.person { (rec.event.person.as_deref().unwrap_or("-")) }
                        td { code { (rec.event.client.as_deref().unwrap_or("-")) } }
                        td.kind-cell { (rec.event.kind) }
                        td.what { code.summary { (rec.event.summary()) } }
                        td.status { @if *ok { span.good { "verified" } } @else { strong.bad { "NOT verified" } } }
                    }
                }
            }
        }
        @if pages > 1 {
            p id="pages" {
                @if pg > 0 { a id="prev-page" href=(with("/console/audit", &format!("page={}", pg - 1))) { "← newer" } " " }
                "page " (pg + 1) " of " (pages)
                @if pg + 1 < pages { " " a id="next-page" href=(with("/console/audit", &format!("page={}", pg + 1))) { "older →" } }
            }
        }
    };
    page(StatusCode::OK, layout("Audit", Some(&w), body))
}

/// The whole search result (every page), oldest first, as JSON Lines or CSV.
pub(super) async fn export(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    Extension(cache): Extension<Arc<Cache>>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(q): Query<SearchForm>,
) -> Response {
    if let Err(r) =
        signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "exporting the audit log").await
    {
        return r;
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
    let shipped = match Shipped::load(&s, &cache).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "console: reading the audit batches");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read the audit batches (see the vault's log)",
            )
                .into_response();
        }
    };
    let mut found = hits(&shipped, &q, &filter);
    found.reverse();
    let mut out = if csv { audit::export::csv_header(true) } else { String::new() };
    for (g, r, ok) in found {
        out.push_str(&if csv {
            audit::export::csv_row(Some(&g.gate), r, ok)
        } else {
            audit::export::jsonl_line(Some(&g.gate), r, ok)
        });
    }
    let (ctype, name) = if csv {
        ("text/csv; charset=utf-8", "attachment; filename=\"holdfast-vault-audit.csv\"")
    } else {
        ("application/x-ndjson", "attachment; filename=\"holdfast-vault-audit.jsonl\"")
    };
    ([(header::CONTENT_TYPE, ctype), (header::CONTENT_DISPOSITION, name)], out).into_response()
}

/// The audit page's address for the window around an incident detected at `detected` (seconds).
pub(super) fn window_link(detected: i64) -> String {
    let (since, until) = window(detected);
    format!(
        "/console/audit?since={}&until={}",
        audit::export::percent(&since.to_string()),
        audit::export::percent(&until.to_string())
    )
}

fn window(detected: i64) -> (AuditTime, AuditTime) {
    let at = AuditTime(detected.saturating_mul(1_000_000));
    let after = i64::try_from(AFTER_INCIDENT.as_micros()).unwrap_or(0);
    (at.minus(BEFORE_INCIDENT), AuditTime(at.0.saturating_add(after)))
}

/// An incident card's "who ran what": the gate records of the window before its detection
/// (the newest few), each verified or not, and the link to all of them on the audit page.
pub(super) fn around(shipped: Option<&Shipped>, detected: i64) -> Markup {
    let (since, until) = window(detected);
    let Some(shipped) = shipped else {
        return html! { p.muted { "The gates' audit records could not be read." } };
    };
    let near: Vec<_> = shipped.between(since, until).collect();
    let total = near.len();
    html! {
        div.around {
            p { strong { "At the gate" } " in the 15 minutes before (and the minute after): "
                a.audit-window href=(window_link(detected)) { (total) " audit record(s) →" } }
            @if total > 0 {
                table.list.near {
                    @for (g, r, ok) in near.iter().take(AROUND_SHOWN) {
                        tr data-kind=(r.event.kind.to_string()) {
                            td.time { (r.time) }
                            td.person { strong { (r.event.person.as_deref().unwrap_or("-")) } }
                            td { code { (r.event.client.as_deref().unwrap_or("-")) } }
                            td { (r.event.kind) }
                            td.what { code.summary { (r.event.summary()) } }
                            td { @if *ok { span.good { "verified" } } @else { strong.bad { "NOT verified" } } " " span.muted { (g.gate) "#" (r.seq) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit::{Batch, Digest, Event};

    fn shipped(sql: &str) -> Shipped {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let at = 1_795_000_000i64;
        let ev = Event::new(EventKind::Statement)
            .person("<b>mallory</b>")
            .client("10.0.0.9:5555")
            .detail(serde_json::json!({"sql": sql}));
        let r1 = Record::new(1, AuditTime((at - 60) * 1_000_000), Digest::ZERO, ev);
        let early =
            Event::new(EventKind::Statement).person("alice").detail(serde_json::json!({"sql": "SELECT 1"}));
        let r2 = Record::new(2, AuditTime((at + 3600) * 1_000_000), r1.hash, early);
        let b = Batch::sign("gate-1", vec![r1, r2], &key).unwrap();
        let stored = StoredBatch {
            name: "catalog/x".into(),
            written_at: "2026-11-18T11:06:40Z".into(),
            body: serde_json::to_value(&b).unwrap(),
        };
        Shipped::new(audit::verify(&[stored], &[key.verifying_key()]))
    }

    #[test]
    fn an_incident_shows_who_ran_what_just_before_it_escaped() {
        let s = shipped("DROP TABLE customers; -- <script>alert(1)</script>");
        let html = around(Some(&s), 1_795_000_000).into_string();
        assert!(html.contains("1 audit record(s)"), "only the record inside the window: {html}");
        assert!(html.contains("&lt;b&gt;mallory&lt;/b&gt;") && !html.contains("<b>mallory"), "{html}");
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        assert!(html.contains("verified") && !html.contains("NOT verified"), "{html}");
        assert!(html.contains("/console/audit?since=2026-11-18T10%3A51%3A40.000000Z&amp;until="), "{html}");
    }

    #[test]
    fn a_problem_unverifies_from_its_record_on() {
        let s = shipped("x");
        let g = &s.report.gates[0];
        assert!(verified(g, 1) && verified(g, 2));
        let mut broken = g.clone();
        broken.first_problem = Some(audit::Problem {
            gate: None,
            seq: Some(2),
            kind: audit::ProblemKind::Missing,
            batch: None,
            written_at: None,
            what: String::new(),
        });
        assert!(verified(&broken, 1) && !verified(&broken, 2));
        broken.first_problem.as_mut().unwrap().seq = None;
        assert!(!verified(&broken, 1));
    }
}
