//! The demo's verdict: one JSON object (`--json`, last line of stdout), a short text summary and
//! a self-contained HTML report (inline CSS, no scripts, no external resources).

use serde::Serialize;

use super::shop::MerchantCheck;

/// One line of the timeline: seconds since the demo started.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t: f64,
    /// Who acted: "holdfast", "shop", "insider", "operator", "vault".
    pub actor: String,
    pub what: String,
}

/// A statement the insider sent through the gate.
#[derive(Debug, Clone, Serialize)]
pub struct GateAttempt {
    pub sql: String,
    /// The gate's request id, once held.
    pub request: Option<String>,
    pub held: bool,
    pub executed: bool,
    /// What the insider's psql printed.
    pub client_saw: String,
}

/// One try at the backups with a credential found on the database hosts (or stolen).
#[derive(Debug, Clone, Serialize)]
pub struct VaultAttack {
    pub credential: String,
    pub action: String,
    pub refused: bool,
    pub answer: String,
}

/// The incident the vault raised for the attack.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentSeen {
    /// `holdfast restore --before-incident N`.
    pub number: usize,
    pub kind: String,
    pub lsn: Option<String>,
    pub xid: Option<u32>,
    pub time: Option<String>,
    pub objects: Vec<String>,
    /// The attack's statement returned → the webhook arrived.
    pub alerted_after_seconds: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Everything held: rows lost 0, values right, incident found, gate held both statements,
    /// every vault attack refused.
    pub ok: bool,
    pub merchants: usize,
    /// Merchants whose data the attack destroyed (the whole database: all of them).
    pub merchants_affected: usize,
    pub merchants_verified: usize,
    /// Rows committed before the attack missing from the restored shop.
    pub rows_lost: i64,
    pub values_wrong: i64,
    pub transactions_committed: u64,
    pub transactions_in_doubt: usize,
    pub in_doubt_found_committed: i64,
    pub unexplained_orders: i64,
    pub incident_found: bool,
    pub incident: Option<IncidentSeen>,
    pub other_incidents: Vec<String>,
    pub gate_held: usize,
    pub gate_executed: usize,
    pub gate: Vec<GateAttempt>,
    pub audit_records_for_insider: usize,
    pub audit_verified: bool,
    /// `holdfast vault check` after the attacks: no object damaged or missing.
    pub vault_intact: bool,
    pub vault_objects_checked: u64,
    pub vault_attacks: usize,
    pub vault_attacks_refused: usize,
    pub attacks: Vec<VaultAttack>,
    /// Seconds of committed work lost: 0 when every acknowledged transaction is back.
    pub rpo_seconds: f64,
    /// `holdfast restore` started → the restored shop answers queries.
    pub rto_seconds: f64,
    /// The attack → the restored shop verified.
    pub attack_to_verified_seconds: f64,
    pub restore_target: String,
    pub duration_seconds: f64,
    pub report: String,
    pub timeline: Vec<Event>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The HTML report: timeline, verdict, the insider's statements, the attacks on the vault, the
/// audit excerpt and the per-merchant table.
pub fn html(v: &Verdict, merchants: &[MerchantCheck], audit: &[serde_json::Value]) -> String {
    let mut h = String::new();
    let ok = |b: bool| if b { "<td class=ok>yes</td>" } else { "<td class=bad>NO</td>" };
    h.push_str(
        "<!doctype html><html><head><meta charset=utf-8><title>holdfast demo report</title><style>\
         body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
         th{background:#f3f3f3}.ok{color:#0a6b22;font-weight:600}.bad{color:#b00020;font-weight:700}\
         code,pre{font:12px ui-monospace,monospace}pre{background:#f6f6f6;padding:8px;overflow-x:auto}\
         .big{font-size:20px}</style></head><body>",
    );
    h.push_str("<h1>holdfast demo — the 删库跑路 incident, replayed</h1>");
    h.push_str(&format!(
        "<p class=big>Verdict: {} — {} merchants affected, {} verified; rows lost: <b>{}</b>; RPO {:.1} s; RTO {:.1} s</p>",
        if v.ok { "<span class=ok>everything committed before the attack is back</span>" } else { "<span class=bad>FAILED</span>" },
        v.merchants_affected,
        v.merchants_verified,
        v.rows_lost,
        v.rpo_seconds,
        v.rto_seconds
    ));
    h.push_str("<table>");
    let rows: Vec<(&str, String)> = vec![
        ("transactions committed through the gate", v.transactions_committed.to_string()),
        (
            "in doubt at the attack (COMMIT sent, answer lost)",
            format!("{} ({} found committed)", v.transactions_in_doubt, v.in_doubt_found_committed),
        ),
        ("values wrong", v.values_wrong.to_string()),
        (
            "incident",
            v.incident
                .as_ref()
                .map(|i| {
                    format!(
                        "#{} {} at LSN {} (xid {}), {}; alert after {}",
                        i.number,
                        i.kind,
                        i.lsn.as_deref().unwrap_or("?"),
                        i.xid.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                        i.time.as_deref().unwrap_or("?"),
                        i.alerted_after_seconds.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "—".into())
                    )
                })
                .unwrap_or_else(|| "NOT FOUND".into()),
        ),
        ("restore target", v.restore_target.clone()),
        ("gate: destructive statements held / executed", format!("{} / {}", v.gate_held, v.gate_executed)),
        ("vault attacks refused", format!("{} of {}", v.vault_attacks_refused, v.vault_attacks)),
        (
            "vault store after the attacks",
            format!(
                "{} objects re-hashed: {}",
                v.vault_objects_checked,
                if v.vault_intact { "intact" } else { "DAMAGED OR INCOMPLETE" }
            ),
        ),
        ("audit chain verified in the vault", v.audit_verified.to_string()),
        ("attack → restored shop verified", format!("{:.1} s", v.attack_to_verified_seconds)),
    ];
    for (k, val) in rows {
        h.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&val)));
    }
    h.push_str("</table><h2>Timeline</h2><table><tr><th>t (s)</th><th>who</th><th>what</th></tr>");
    for e in &v.timeline {
        h.push_str(&format!(
            "<tr><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            e.t,
            esc(&e.actor),
            esc(&e.what)
        ));
    }
    h.push_str("</table><h2>The insider at the gate</h2><table><tr><th>statement</th><th>request</th><th>held</th><th>executed</th><th>his psql saw</th></tr>");
    for g in &v.gate {
        h.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td>{}<td class={}>{}</td><td><code>{}</code></td></tr>",
            esc(&g.sql),
            esc(g.request.as_deref().unwrap_or("")),
            ok(g.held),
            if g.executed { "bad" } else { "ok" },
            if g.executed { "YES" } else { "no" },
            esc(&g.client_saw)
        ));
    }
    h.push_str("</table><h2>The insider at the vault</h2><table><tr><th>credential</th><th>action</th><th>refused</th><th>answer</th></tr>");
    for a in &v.attacks {
        h.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td>{}<td>{}</td></tr>",
            esc(&a.credential),
            esc(&a.action),
            ok(a.refused),
            esc(&a.answer)
        ));
    }
    h.push_str(&format!(
        "</table><h2>Audit log: the insider's records, read back from the vault (chain {})</h2>\
         <table><tr><th>seq</th><th>time</th><th>kind</th><th>person</th><th>client</th><th>what</th><th>record hash</th></tr>",
        if v.audit_verified { "verified" } else { "NOT verified" }
    ));
    for r in audit {
        let d = &r["detail"];
        let what = ["sql", "why", "error", "db_user", "method"]
            .iter()
            .find_map(|k| d[*k].as_str().map(|t| format!("{k}: {t}")))
            .unwrap_or_else(|| d.to_string());
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            r["seq"],
            esc(r["time"].as_str().unwrap_or("")),
            esc(r["kind"].as_str().unwrap_or("")),
            esc(r["person"].as_str().unwrap_or("")),
            esc(r["client"].as_str().unwrap_or("")),
            esc(&what),
            esc(r["hash"].as_str().unwrap_or("").get(..16).unwrap_or(""))
        ));
    }
    h.push_str("</table><h2>Merchant by merchant</h2><table><tr><th>merchant</th><th>orders expected</th><th>orders restored</th><th>points expected</th><th>points restored</th><th>gift cards expected (cents)</th><th>restored</th><th>rows lost</th><th>values wrong</th><th>ok</th></tr>");
    for m in merchants {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            m.merchant_id,
            m.orders_expected,
            m.orders_restored,
            m.points_expected,
            m.points_restored,
            m.gift_cards_expected_cents,
            m.gift_cards_restored_cents,
            m.rows_lost,
            m.values_wrong,
            ok(m.ok)
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_escapes_what_the_insider_typed() {
        let v = Verdict {
            ok: false,
            merchants: 1,
            merchants_affected: 1,
            merchants_verified: 0,
            rows_lost: 3,
            values_wrong: 0,
            transactions_committed: 1,
            transactions_in_doubt: 0,
            in_doubt_found_committed: 0,
            unexplained_orders: 0,
            incident_found: false,
            incident: None,
            other_incidents: vec![],
            gate_held: 1,
            gate_executed: 0,
            gate: vec![GateAttempt {
                sql: "DELETE FROM t WHERE a < 1 </pre><script>".into(),
                request: Some("g-1".into()),
                held: true,
                executed: false,
                client_saw: String::new(),
            }],
            audit_records_for_insider: 0,
            audit_verified: false,
            vault_intact: false,
            vault_objects_checked: 0,
            vault_attacks: 0,
            vault_attacks_refused: 0,
            attacks: vec![],
            rpo_seconds: 0.0,
            rto_seconds: 0.0,
            attack_to_verified_seconds: 0.0,
            restore_target: String::new(),
            duration_seconds: 0.0,
            report: String::new(),
            timeline: vec![],
        };
        let h = html(&v, &[], &[serde_json::json!({"kind": "statement", "detail": {"sql": "<b>"}})]);
        assert!(!h.contains("<script>") && h.contains("&lt;script&gt;"));
        assert!(h.contains("FAILED") && h.contains("NOT FOUND"));
        assert!(!h.contains("sql: <b>") && h.contains("sql: &lt;b&gt;"), "audit records are escaped");
    }
}
