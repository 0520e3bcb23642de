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

/// How the vault answered one attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackOutcome {
    /// The vault answered with its error body and the status of the guard expected to stop it.
    Refused,
    /// The vault did what was asked.
    Accepted,
    /// No HTTP answer at all (connection refused, TLS failure, timeout): not a refusal.
    TransportError,
    /// Some other answer: another status, or one without the vault's error body (as a route
    /// that does not exist would give). Not a refusal.
    UnexpectedAnswer,
}

/// One try at the backups with a credential found on the database hosts (or stolen).
#[derive(Debug, Clone, Serialize)]
pub struct VaultAttack {
    pub credential: String,
    /// What he tried, in words.
    pub action: String,
    /// The HTTP request sent (method and path).
    pub request: String,
    /// What should stop it.
    pub expected: String,
    pub outcome: AttackOutcome,
    /// `outcome == Refused`.
    pub refused: bool,
    /// The status and the vault's message, or the transport error.
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

/// The vault's warm standby, stopped just before the DROP and promoted (default demo).
#[derive(Debug, Clone, Serialize)]
pub struct WarmStandby {
    pub apply_delay_seconds: u64,
    /// The incident it stopped before (the DROP's).
    pub paused_before_incident: usize,
    /// Where it stopped, as the vault reports it.
    pub target: String,
    /// The DROP returned → the standby's `shop` answered a query, paused before the incident
    /// (read-only; polled every 100 ms).
    pub read_only_after_attack_seconds: f64,
    /// `holdfast standby promote` started → the promoted standby answered in `shop`.
    pub promote_seconds: f64,
    /// The DROP returned → the promoted standby answered (includes the demo's acts between the
    /// attack and the promote: the vault's incident, the attacks on the vault).
    pub attack_to_promoted_seconds: f64,
    /// Reading and comparing every row of the promoted standby.
    pub verify_seconds: f64,
    /// The same per-merchant comparison as the cold restore's, on the promoted standby.
    pub merchants_verified: usize,
    pub rows_expected: i64,
    pub rows_lost: i64,
    pub values_wrong: i64,
    pub rows_unexplained: i64,
    pub acknowledged_transactions_missing: i64,
}

/// `--repair`: one merchant's orders deleted and repaired in the live database.
#[derive(Debug, Clone, Serialize)]
pub struct RepairFigures {
    pub merchant: i64,
    pub incident: usize,
    /// Acknowledged rows of the merchant that production no longer served after the DELETE.
    pub rows_deleted: i64,
    /// `holdfast repair`'s report: rows put back, rows set back, rows changed since (left).
    pub rows_reinserted: u64,
    pub rows_reverted: u64,
    pub conflicts: usize,
    /// Per table, as the repair reported it.
    pub tables: Vec<String>,
    /// The merchant's orders acknowledged after the DELETE returned, and how many of them the
    /// live shop still holds after the repair (all: nothing was rewound).
    pub victim_orders_since_delete: usize,
    pub victim_orders_since_delete_kept: usize,
    /// Orders (all merchants) the workload committed while `holdfast repair` ran.
    pub orders_committed_during_repair: u64,
    /// Merchants other than the victim, and how many of them equal their initial load plus
    /// every order the workload saw committed (untouched by the DELETE and by the repair).
    pub other_merchants: usize,
    pub other_merchants_whole: usize,
    pub victim_whole: bool,
    /// `holdfast repair` started → exited with the repair committed.
    pub repair_seconds: f64,
    /// Of that, restoring the two scratch copies (before and after the incident).
    pub scratch_restore_seconds: Option<f64>,
    /// Of that, the one verified transaction on the live database.
    pub apply_seconds: Option<f64>,
    /// The DELETE returned → the repair committed.
    pub attack_to_repaired_seconds: f64,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `restore` (the database destroyed, restored from the vault) or `repair` (`--repair`: one
    /// merchant's orders deleted and repaired in the live database).
    pub mode: String,
    /// Everything held: no row lost, wrong or unexplained, incident found and alerted, gate
    /// held every statement, every vault attack refused by the vault, store intact, audit
    /// verified, RPO measured.
    pub ok: bool,
    pub merchants: usize,
    /// Merchants with rows that production could no longer serve right after the attack
    /// (measured: what production still served against what it should have held).
    pub merchants_affected: usize,
    /// Rows acknowledged before the attack that production could no longer serve after it.
    pub rows_destroyed: i64,
    /// Merchants whose every row of every table came back as committed.
    pub merchants_verified: usize,
    /// Rows of all seven tables the restored shop should hold (initial load + committed orders).
    pub rows_expected: i64,
    /// Of those, rows missing from the restored shop.
    pub rows_lost: i64,
    /// Rows present with another value in any column.
    pub values_wrong: i64,
    /// Rows in the restored shop nobody committed.
    pub rows_unexplained: i64,
    /// Transactions whose COMMIT the workload saw succeed.
    pub transactions_committed: u64,
    /// Of those, transactions the restored shop lacks.
    pub acknowledged_transactions_missing: i64,
    pub transactions_in_doubt: usize,
    pub in_doubt_found_committed: i64,
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
    /// Attacks the vault itself refused (its error body, the expected status).
    pub vault_attacks_refused: usize,
    pub attacks: Vec<VaultAttack>,
    /// Seconds from the last commit in the restored database to the attack (the DROP
    /// returning); `None` if the restored database names no last commit.
    pub rpo_seconds: Option<f64>,
    pub last_restored_commit: Option<String>,
    /// How `last_restored_commit` was found.
    pub last_restored_commit_source: String,
    /// How long the attack's DROP DATABASE ran.
    pub attack_seconds: f64,
    /// `holdfast restore` started → the restored server answers a query at the target.
    pub rto_seconds: f64,
    /// Reading and comparing every row of the restored shop, after the RTO.
    pub verify_seconds: f64,
    /// The attack → the restored shop verified.
    pub attack_to_verified_seconds: f64,
    pub restore_target: String,
    /// The warm standby's figures beside the cold restore's (default demo).
    pub warm_standby: Option<WarmStandby>,
    /// `--repair`: the repair act's figures (then `rto_seconds` is the repair's time and the
    /// comparison is of the live shop).
    pub repair: Option<RepairFigures>,
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
    let (after, tail) = match &v.repair {
        Some(r) => (
            "the repair (the live shop)",
            format!(
                "nothing rewound: {} orders written since kept; repair {:.1} s",
                r.victim_orders_since_delete_kept, r.repair_seconds
            ),
        ),
        None => (
            "the restore",
            format!(
                "RPO {}; RTO {:.1} s{}",
                v.rpo_seconds.map(|r| format!("{r:.3} s")).unwrap_or_else(|| "unknown".into()),
                v.rto_seconds,
                v.warm_standby
                    .as_ref()
                    .map(|w| format!(
                        "; warm standby read-only {:.1} s after the attack",
                        w.read_only_after_attack_seconds
                    ))
                    .unwrap_or_default()
            ),
        ),
    };
    h.push_str(&format!(
        "<p class=big>Verdict: {} — the attack destroyed the data of {} of {} merchants ({} rows); after {after} {} merchants verified, rows lost: <b>{} of {}</b>; {}</p>",
        if v.ok { "<span class=ok>every row committed before the attack is back</span>" } else { "<span class=bad>FAILED</span>" },
        v.merchants_affected,
        v.merchants,
        v.rows_destroyed,
        v.merchants_verified,
        v.rows_lost,
        v.rows_expected,
        esc(&tail)
    ));
    h.push_str("<table>");
    let rows: Vec<(&str, String)> = vec![
        ("transactions committed through the gate", v.transactions_committed.to_string()),
        ("acknowledged transactions missing afterwards", v.acknowledged_transactions_missing.to_string()),
        (
            "in doubt at the attack (COMMIT sent, answer lost)",
            format!("{} ({} found committed)", v.transactions_in_doubt, v.in_doubt_found_committed),
        ),
        (
            "RPO: last restored commit → the attack",
            format!(
                "{} (last commit {}, {}; the attack ran {:.2} s)",
                v.rpo_seconds.map(|r| format!("{r:.3} s")).unwrap_or_else(|| "unknown".into()),
                v.last_restored_commit.as_deref().unwrap_or("?"),
                v.last_restored_commit_source,
                v.attack_seconds
            ),
        ),
        (
            if v.repair.is_some() {
                "holdfast repair started → repair committed"
            } else {
                "RTO: restore started → server answering at the target"
            },
            format!("{:.1} s", v.rto_seconds),
        ),
        ("verification of every row, after that", format!("{:.1} s", v.verify_seconds)),
        ("rows nobody committed in the recovered shop", v.rows_unexplained.to_string()),
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
        ("attack → recovered shop verified", format!("{:.1} s", v.attack_to_verified_seconds)),
    ];
    let mut rows = rows;
    if let Some(w) = &v.warm_standby {
        rows.extend([
            (
                "warm standby: the DROP → read-only at the target",
                format!(
                    "{:.1} s (stopped before incident {}: {}; apply_delay {} s)",
                    w.read_only_after_attack_seconds,
                    w.paused_before_incident,
                    w.target,
                    w.apply_delay_seconds
                ),
            ),
            (
                "warm standby: promote command → writable",
                format!(
                    "{:.1} s ({:.1} s after the DROP, the acts between included)",
                    w.promote_seconds, w.attack_to_promoted_seconds
                ),
            ),
            (
                "warm standby, promoted: rows lost / values wrong / rows nobody wrote",
                format!(
                    "{} of {} / {} / {}; {} merchants verified ({:.1} s)",
                    w.rows_lost,
                    w.rows_expected,
                    w.values_wrong,
                    w.rows_unexplained,
                    w.merchants_verified,
                    w.verify_seconds
                ),
            ),
        ]);
    }
    if let Some(r) = &v.repair {
        rows.extend([
            (
                "repair: merchant, rows deleted, re-inserted / reverted / conflicts",
                format!(
                    "merchant {}: {} rows deleted; {} / {} / {} ({})",
                    r.merchant,
                    r.rows_deleted,
                    r.rows_reinserted,
                    r.rows_reverted,
                    r.conflicts,
                    r.tables.join("; ")
                ),
            ),
            (
                "repair: written since, kept",
                format!(
                    "{} of the merchant's {} orders placed after the DELETE; {} orders committed during the repair",
                    r.victim_orders_since_delete_kept, r.victim_orders_since_delete, r.orders_committed_during_repair
                ),
            ),
            (
                "repair: other merchants whole",
                format!("{} of {}", r.other_merchants_whole, r.other_merchants),
            ),
            (
                "repair: holdfast repair started → committed",
                format!(
                    "{:.1} s (scratch restores {}, apply {}); the DELETE → repaired {:.1} s",
                    r.repair_seconds,
                    r.scratch_restore_seconds.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "?".into()),
                    r.apply_seconds.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "?".into()),
                    r.attack_to_repaired_seconds
                ),
            ),
        ]);
    }
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
    h.push_str("</table><h2>The insider at the vault</h2><p>An attack counts as refused only when the vault itself answered with its error and the status of the guard named; a transport error or any other answer is shown as such and not counted.</p><table><tr><th>credential</th><th>action</th><th>request</th><th>should be stopped by</th><th>refused</th><th>answer</th></tr>");
    for a in &v.attacks {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>{}<td>{}</td></tr>",
            esc(&a.credential),
            esc(&a.action),
            esc(&a.request),
            esc(&a.expected),
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
    h.push_str("</table><h2>Merchant by merchant</h2><p>Every row of the seven tables, compared with the initial load plus every transaction the workload saw committed (and the in-doubt ones the restored copy holds).</p><table><tr><th>merchant</th><th>rows expected</th><th>rows restored</th><th>rows lost</th><th>values wrong</th><th>rows nobody wrote</th><th>orders expected / restored</th><th>points expected / restored</th><th>gift cards expected / restored (cents)</th><th>ok</th></tr>");
    for m in merchants {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td><td>{} / {}</td>{}</tr>",
            m.merchant_id,
            m.rows_expected,
            m.rows_restored,
            m.rows_lost,
            if m.lost_by_table.is_empty() {
                String::new()
            } else {
                esc(&format!(
                    " ({})",
                    m.lost_by_table.iter().map(|(t, n)| format!("{}: {n}", t.name())).collect::<Vec<_>>().join(", ")
                ))
            },
            m.values_wrong,
            m.rows_unexplained,
            m.orders_expected,
            m.orders_restored,
            m.points_expected,
            m.points_restored,
            m.gift_cards_expected_cents,
            m.gift_cards_restored_cents,
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
            mode: "restore".into(),
            ok: false,
            merchants: 1,
            merchants_affected: 1,
            rows_destroyed: 3,
            merchants_verified: 0,
            rows_expected: 3,
            rows_lost: 3,
            values_wrong: 0,
            rows_unexplained: 0,
            transactions_committed: 1,
            acknowledged_transactions_missing: 1,
            transactions_in_doubt: 0,
            in_doubt_found_committed: 0,
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
            vault_attacks: 1,
            vault_attacks_refused: 0,
            attacks: vec![VaultAttack {
                credential: "<none>".into(),
                action: "read".into(),
                request: "GET /v1/status".into(),
                expected: "authorisation".into(),
                outcome: AttackOutcome::TransportError,
                refused: false,
                answer: "no answer".into(),
            }],
            rpo_seconds: None,
            last_restored_commit: None,
            last_restored_commit_source: String::new(),
            attack_seconds: 0.0,
            rto_seconds: 0.0,
            verify_seconds: 0.0,
            attack_to_verified_seconds: 0.0,
            restore_target: String::new(),
            warm_standby: None,
            repair: None,
            duration_seconds: 0.0,
            report: String::new(),
            timeline: vec![],
        };
        let h = html(&v, &[], &[serde_json::json!({"kind": "statement", "detail": {"sql": "<b>"}})]);
        assert!(!h.contains("<script>") && h.contains("&lt;script&gt;"));
        assert!(h.contains("FAILED") && h.contains("NOT FOUND") && h.contains("RPO unknown"));
        assert!(
            h.contains("&lt;none&gt;") && h.contains("<td class=bad>NO</td><td>no answer</td>"),
            "a transport error is not a refusal"
        );
        assert!(!h.contains("sql: <b>") && h.contains("sql: &lt;b&gt;"), "audit records are escaped");
    }
}
