//! One client session after authentication: every client message is looked at before it
//! reaches the database, server messages are relayed back as they come.
//!
//! How the gate refuses a statement without breaking the session: it sends the database a
//! statement that fails with the gate's message instead (`DO … RAISE`), in the refused
//! statement's place. The database then does exactly what it does for any failed statement —
//! an explicit transaction is aborted, an extended-protocol batch is skipped up to its `Sync`,
//! pipelined messages before it keep their answers in order — so the client's view and the
//! server's state never disagree.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{Event, EventKind};
use bytes::{Bytes, BytesMut};
use guard::{Action, Class, Decision};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::approvals::{Ask, State, state_name};
use crate::wire::{self, Frame, backend, frontend};
use crate::{Io, Shared};

/// Who is on the other end, decided at login.
pub struct Identity {
    pub session: u64,
    pub person: crate::config::Person,
    pub client: String,
    pub db_user: String,
    pub application_name: String,
    /// When the grant this session runs under ends (unix seconds).
    pub grant_until: Option<u64>,
    pub grant_role: Option<String>,
}

/// A statement waiting for a decision.
struct Held {
    id: String,
    rx: watch::Receiver<State>,
    deadline: tokio::time::Instant,
    /// What to send the server if approved.
    on_approve: Bytes,
    /// How to refuse it (simple or extended protocol).
    extended: bool,
    sql: String,
    /// The guard's decision, applied to its session view once the statement is sent on.
    decision: Decision,
}

/// A DELETE/UPDATE running under the row-count guard.
struct RowGuardRun {
    sql: String,
    max_rows: u64,
    /// `BEGIN` (outside a transaction) or `SAVEPOINT` (inside one).
    began: bool,
    /// Server frames seen so far: the first CommandComplete is ours (BEGIN/SAVEPOINT).
    ours_done: bool,
    rows: Option<u64>,
    data_rows: u64,
    failed: bool,
    buffered: BytesMut,
    started: Instant,
    decision: Decision,
    /// After the decision: our COMMIT/RELEASE/ROLLBACK answers are being swallowed.
    finishing: Option<Finish>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Count within the limit: forward what was buffered once our closing command is done.
    Keep,
    /// Over the limit: rolled back, then hold for approval.
    Over,
    /// The statement failed: forward the error.
    Failed,
}

/// A Query or an extended-protocol batch sent to the database, until its ReadyForQuery: what
/// `statement_done` records (command tags, rows, duration, error).
struct InFlight {
    what: String,
    started: Instant,
    tags: Vec<String>,
    error: Option<String>,
}

pub struct Session<'a> {
    shared: &'a Arc<Shared>,
    id: Identity,
    client: Box<dyn Io>,
    server: Box<dyn pgproto::conn::Io>,
    cbuf: BytesMut,
    sbuf: BytesMut,
    cout: BytesMut,
    sout: BytesMut,
    guard: guard::Session,
    /// Portal name → statement name (extended protocol).
    portals: HashMap<String, String>,
    /// The transaction status of the last ReadyForQuery.
    txn: u8,
    held: Option<Held>,
    row_guard: Option<RowGuardRun>,
    cancel: Arc<tokio::sync::Notify>,
    holding: Arc<std::sync::atomic::AtomicBool>,
    statements: u64,
    inflight: VecDeque<InFlight>,
    /// Statements executed since the last Sync (extended protocol).
    batch: Vec<String>,
    /// An ErrorResponse came since the last ReadyForQuery (the guard then keeps suspecting
    /// statement names whose Parse/Close the server may have skipped).
    error_since_ready: bool,
    /// A row-guarded statement inside a transaction block kept its result: its savepoint is
    /// released by a Query sent ahead of the client's next message (no extra round trip).
    release_pending: bool,
    /// Answers (CommandComplete … ReadyForQuery) to the gate's own queries still to swallow.
    swallow: u32,
}

enum Flow {
    Continue,
    End,
}

impl<'a> Session<'a> {
    pub fn new(
        shared: &'a Arc<Shared>,
        id: Identity,
        client: Box<dyn Io>,
        server: Box<dyn pgproto::conn::Io>,
        leftover: BytesMut,
        cancel: Arc<tokio::sync::Notify>,
        holding: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Session {
            shared,
            id,
            client,
            server,
            cbuf: leftover,
            sbuf: BytesMut::with_capacity(16 * 1024),
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
            guard: guard::Session::default(),
            portals: HashMap::new(),
            txn: b'I',
            held: None,
            row_guard: None,
            cancel,
            holding,
            statements: 0,
            inflight: VecDeque::new(),
            batch: Vec::new(),
            error_since_ready: false,
            release_pending: false,
            swallow: 0,
        }
    }

    fn event(&self, kind: EventKind, detail: serde_json::Value) -> Event {
        Event::new(kind)
            .person(self.id.person.name.clone())
            .client(self.id.client.clone())
            .session(self.id.session)
            .detail(detail)
    }

    async fn audit(&mut self, kind: EventKind, detail: serde_json::Value) -> Result<(), audit::AuditError> {
        let e = self.event(kind, detail);
        self.shared.audit_event(e).await
    }

    /// Runs the session to its end; returns why it ended.
    pub async fn run(mut self) -> String {
        let max = self.shared.config.max_message_bytes;
        let grant_end = self.id.grant_until.map(|u| {
            let left = u.saturating_sub(crate::approvals::unix_now());
            tokio::time::Instant::now() + Duration::from_secs(left)
        });
        loop {
            // Client frames already buffered are handled first, one at a time, unless a
            // statement is held or under the row guard (then the client waits, and so does
            // everything it pipelined after it).
            while self.held.is_none() && self.row_guard.is_none() {
                match wire::decode_frame(&mut self.cbuf, max) {
                    Ok(Some(f)) => match self.on_client(f).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::End) => {
                            let _ = self.flush_server().await;
                            return "client ended the session".into();
                        }
                        Err(e) => {
                            // A malformed message: this connection ends, with the reason; no
                            // other session is affected.
                            let _ = self.flush_server().await;
                            return self
                                .fatal("08P01", &format!("protocol violation from the client: {e}"), None)
                                .await;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        return self
                            .fatal("08P01", &format!("protocol violation from the client: {e}"), None)
                            .await;
                    }
                }
            }
            if let Err(e) = self.flush_server().await {
                return e;
            }
            let held_deadline = self.held.as_ref().map(|h| h.deadline);
            tokio::select! {
                r = self.server.read_buf(&mut self.sbuf) => {
                    match r {
                        Ok(0) | Err(_) => {
                            return self.fatal("57P01", "the database closed the connection", None).await;
                        }
                        Ok(_) => {
                            if let Err(e) = self.on_server().await { return e; }
                        }
                    }
                }
                r = self.client.read_buf(&mut self.cbuf), if self.cbuf.len() < max + 5 => {
                    match r {
                        Ok(0) | Err(_) => {
                            if let Some(h) = self.held.take() {
                                self.shared.approvals.close(&h.id, true);
                            }
                            return "client disconnected".into();
                        }
                        Ok(_) => {}
                    }
                }
                changed = async { self.held.as_mut().expect("guarded").rx.changed().await }, if self.held.is_some() => {
                    let state = if changed.is_ok() { self.held.as_ref().expect("held").rx.borrow().clone() } else { State::Expired { at: 0 } };
                    if state != State::Pending
                        && let Err(e) = self.decided(state).await { return e; }
                }
                _ = sleep_until_opt(held_deadline), if held_deadline.is_some() => {
                    let id = self.held.as_ref().expect("held").id.clone();
                    let state = self.shared.approvals.close(&id, false);
                    if let Err(e) = self.decided(state).await { return e; }
                }
                _ = self.cancel.notified(), if self.held.is_some() => {
                    let id = self.held.as_ref().expect("held").id.clone();
                    self.shared.approvals.close(&id, true);
                    if let Err(e) = self.decided(State::Withdrawn { at: 0 }).await { return e; }
                }
                _ = sleep_until_opt(grant_end), if grant_end.is_some() => {
                    let role = self.id.grant_role.clone().unwrap_or_default();
                    let _ = self.audit(EventKind::GrantExpired, serde_json::json!({"role": role})).await;
                    return self.fatal(
                        "57P01",
                        &format!("holdfast gate: the grant of role {role} to {} has expired; this session is ended", self.id.person.name),
                        Some("request a new grant: holdfast gate request --role <role> --for <duration> --reason <why>"),
                    ).await;
                }
            }
        }
    }

    /// The server's parameters at login (the guard lexes as they say).
    pub fn with_server_parameters(mut self, params: &[(String, String)]) -> Self {
        for (k, v) in params {
            self.guard.server_parameter(k, v);
        }
        self
    }

    async fn flush_server(&mut self) -> Result<(), String> {
        if !self.sout.is_empty() {
            self.server.write_all(&self.sout).await.map_err(|e| format!("writing to the database: {e}"))?;
            self.sout.clear();
        }
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), String> {
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await.map_err(|e| format!("writing to the client: {e}"))?;
            self.cout.clear();
        }
        Ok(())
    }

    /// Sends a FATAL error to the client and ends.
    async fn fatal(&mut self, code: &str, message: &str, hint: Option<&str>) -> String {
        backend::error(
            &mut self.cout,
            &backend::Fields { severity: "FATAL", code, message, detail: None, hint },
        );
        let _ = self.flush_client().await;
        message.to_string()
    }

    fn notice(&mut self, message: &str, hint: Option<&str>) {
        backend::notice(
            &mut self.cout,
            &backend::Fields { severity: "NOTICE", code: "01000", message, detail: None, hint },
        );
    }

    /// Relays complete server frames to the client, watching ReadyForQuery (and the row guard).
    async fn on_server(&mut self) -> Result<(), String> {
        loop {
            let f = match wire::decode_frame(&mut self.sbuf, usize::MAX >> 1) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(format!("protocol error from the database: {e}")),
            };
            if self.swallow > 0 {
                match f.tag {
                    b'Z' => {
                        self.swallow -= 1;
                        self.txn = f.body.first().copied().unwrap_or(self.txn);
                    }
                    b'E' => {
                        tracing::warn!(fields = ?wire::error_fields(&f.body), "the gate's own statement failed")
                    }
                    _ => {}
                }
                continue;
            }
            if self.row_guard.is_some() {
                self.on_row_guard_frame(f).await?;
                continue;
            }
            match f.tag {
                b'Z' => {
                    self.txn = f.body.first().copied().unwrap_or(b'I');
                    self.guard.synced(!self.error_since_ready);
                    self.error_since_ready = false;
                    f.encode(&mut self.cout);
                    if let Some(done) = self.inflight.pop_front() {
                        self.statement_done(done);
                    }
                }
                b'C' => {
                    if let Some(cur) = self.inflight.front_mut()
                        && cur.tags.len() < 100
                    {
                        let mut b = f.body.clone();
                        cur.tags.push(wire::cstr(&mut b, "CommandComplete").unwrap_or_default());
                    }
                    f.encode(&mut self.cout);
                }
                b'S' => {
                    let mut b = f.body.clone();
                    let name = wire::cstr(&mut b, "ParameterStatus").unwrap_or_default();
                    let value = wire::cstr(&mut b, "ParameterStatus").unwrap_or_default();
                    self.guard.server_parameter(&name, &value);
                    let lexes_differently = (name == "standard_conforming_strings" && value != "on")
                        || (name == "client_encoding" && !value.eq_ignore_ascii_case("UTF8"));
                    if lexes_differently {
                        // The guard reads statements as the server does with these defaults;
                        // it cannot guard a session that changed them (even with approval).
                        return Err(self
                            .fatal(
                                "55000",
                                &format!("holdfast gate: the session's {name} is now {value}; statements can no longer be checked, so the session is ended"),
                                None,
                            )
                            .await);
                    }
                    f.encode(&mut self.cout);
                }
                b'E' => {
                    self.error_since_ready = true;
                    if let Some(cur) = self.inflight.front_mut() {
                        let fields = wire::error_fields(&f.body);
                        cur.error = fields.iter().find(|(t, _)| *t == b'M').map(|(_, m)| truncate(m, 1000));
                    }
                    self.relay_error(f)
                }
                _ => f.encode(&mut self.cout),
            }
            if self.cout.len() > 64 * 1024 {
                self.flush_client().await?;
            }
        }
        self.flush_client().await
    }

    /// Records how a statement ended (not waited for: the statement was audited before it ran).
    fn statement_done(&mut self, done: InFlight) {
        let rows: u64 = done.tags.iter().filter_map(|t| t.rsplit(' ').next()?.parse::<u64>().ok()).sum();
        let ev = self.event(
            EventKind::StatementDone,
            serde_json::json!({
                "sql": done.what,
                "tags": done.tags,
                "rows": rows,
                "duration_us": done.started.elapsed().as_micros() as u64,
                "error": done.error,
            }),
        );
        self.shared.audit_nowait(ev);
    }

    fn sent(&mut self, what: &str) {
        if self.inflight.len() < 10_000 {
            self.inflight.push_back(InFlight {
                what: truncate(what, 200),
                started: Instant::now(),
                tags: Vec::new(),
                error: None,
            });
        }
    }

    /// Relays an ErrorResponse, dropping PL/pgSQL's CONTEXT line from the gate's own refusals.
    fn relay_error(&mut self, f: Frame) {
        let fields = wire::error_fields(&f.body);
        let ours = fields.iter().any(|(t, v)| *t == b'M' && v.starts_with("holdfast gate:"));
        if !ours {
            f.encode(&mut self.cout);
            return;
        }
        let get = |t: u8| fields.iter().find(|(k, _)| *k == t).map(|(_, v)| v.as_str());
        backend::error(
            &mut self.cout,
            &backend::Fields {
                severity: get(b'S').unwrap_or("ERROR"),
                code: get(b'C').unwrap_or("42501"),
                message: get(b'M').unwrap_or(""),
                detail: get(b'D'),
                hint: get(b'H'),
            },
        );
    }

    async fn on_client(&mut self, f: Frame) -> Result<Flow, String> {
        if self.release_pending && f.tag != b'X' {
            self.release_pending = false;
            frontend::encode_query(&mut self.sout, "RELEASE SAVEPOINT holdfast_row_guard");
            self.swallow += 1;
        }
        match f.tag {
            b'Q' => {
                let sql = frontend::query(&f.body).map_err(|e| e.to_string())?;
                let d = self.shared.guard.check_query(&mut self.guard, &sql);
                self.statement(sql, d, f, false).await?;
            }
            b'P' => {
                let (name, sql) = frontend::parse(&f.body).map_err(|e| e.to_string())?;
                let d = self.shared.guard.check_parse(&mut self.guard, &name, &sql);
                if d.action == Action::Deny {
                    // Refused at Parse: the server fails it there, and skips to Sync.
                    self.statement(sql, d, f, true).await?;
                } else {
                    f.encode(&mut self.sout);
                }
            }
            b'B' => {
                let (portal, statement) = frontend::bind(&f.body).map_err(|e| e.to_string())?;
                self.portals.insert(portal, statement);
                f.encode(&mut self.sout);
            }
            b'E' => {
                let (portal, _) = frontend::execute(&f.body).map_err(|e| e.to_string())?;
                let statement = self.portals.get(&portal).cloned();
                let d = match &statement {
                    Some(s) => self.shared.guard.check_execute(&self.guard, s),
                    None => self.shared.guard.check_execute(&self.guard, "\u{0}unbound portal"),
                };
                let sql = statement.map(|s| format!("EXECUTE {s:?}")).unwrap_or_default();
                self.statement(sql, d, f, true).await?;
            }
            b'C' => {
                let (kind, name) = frontend::close(&f.body).map_err(|e| e.to_string())?;
                if kind == b'S' {
                    self.guard.close_statement(&name);
                } else {
                    self.portals.remove(&name);
                }
                f.encode(&mut self.sout);
            }
            b'F' => {
                // FunctionCall by OID: nothing to classify it with. Fail closed.
                let d = self.shared.guard.check_query(&mut self.guard, "\u{0}function call");
                self.statement("<FunctionCall message>".into(), d, f, true).await?;
            }
            b'X' => {
                f.encode(&mut self.sout);
                return Ok(Flow::End);
            }
            b'S' => {
                let what = if self.batch.is_empty() { "Sync".to_string() } else { self.batch.join("; ") };
                self.batch.clear();
                self.sent(&what);
                f.encode(&mut self.sout);
            }
            // Flush, Describe and COPY data/done/fail pass through.
            b'H' | b'D' | b'd' | b'c' | b'f' => f.encode(&mut self.sout),
            other => {
                let e = self
                    .fatal(
                        "08P01",
                        &format!("unexpected message type {:?} from the client", other as char),
                        None,
                    )
                    .await;
                return Err(e);
            }
        }
        Ok(Flow::Continue)
    }

    /// Decides what happens to one statement: run, run under the row guard, hold for a second
    /// person, or refuse. The audit record is written before anything reaches the database.
    async fn statement(&mut self, sql: String, d: Decision, f: Frame, extended: bool) -> Result<(), String> {
        self.statements += 1;
        let break_glass = self.shared.approvals.break_glass_active(&self.id.person.name);
        let mut action = d.action.clone();
        let mut reasons_extra: Vec<String> = Vec::new();
        if action == Action::Approve && break_glass {
            action = Action::Allow;
        }
        if matches!(action, Action::RowGuard { .. }) && d.statements.len() != 1 {
            // Rows are counted for a Query that is exactly one DELETE/UPDATE: with a COMMIT in
            // the same string, the count would come after the commit.
            action = Action::Approve;
            reasons_extra.push("the row count of a DELETE/UPDATE in a multi-statement string cannot be checked before it commits: send it on its own".to_string());
        }
        if extended && matches!(action, Action::RowGuard { .. }) {
            // Rows are counted only for simple-protocol statements: an extended-protocol
            // DELETE/UPDATE that could not be counted waits for a person instead.
            action = Action::Approve;
        }
        let detail = serde_json::json!({
            "sql": truncate(&sql, 16 * 1024),
            "class": d.class,
            "action": action_name(&action),
            "reasons": d.reasons,
            "txn": (self.txn as char).to_string(),
            "break_glass": break_glass && d.action == Action::Approve,
        });
        // Recorded before it takes effect. A statement whose effect could outlive a gate crash
        // waits until its record is fsynced: anything outside a transaction block (it commits
        // on its own), DDL and destruction, and the end of a transaction (COMMIT, PREPARE
        // TRANSACTION, COMMIT PREPARED — whose record being durable makes every earlier record
        // of the transaction durable: the log is written in order). Reads, and writes inside a
        // block that only a later COMMIT can make last, are queued in order without waiting
        // for the disk. When the spool is near its bound, everything waits (and is refused).
        let ends_txn = d.statements.iter().any(|st| {
            matches!(st.kind.as_str(), "COMMIT" | "END" | "PREPARE TRANSACTION" | "COMMIT PREPARED")
        });
        let spool = self.shared.audit.status();
        let spool_ok = spool.failed.is_none() && spool.pending_bytes + (1 << 20) < spool.max_pending_bytes;
        let must_wait = (d.class > Class::Read && (self.txn == b'I' || d.class >= Class::Ddl))
            || ends_txn
            || !spool_ok
            || self.shared.on_audit_full() == crate::config::OnAuditFull::RefuseAll;
        let audited = if must_wait {
            self.audit(EventKind::Statement, detail).await
        } else {
            self.shared.audit.submit_nowait(self.event(EventKind::Statement, detail))
        };
        if let Err(e) = audited {
            // The spool is full or failing: never run unaudited writes.
            let refuse = match self.shared.on_audit_full() {
                crate::config::OnAuditFull::RefuseAll => true,
                crate::config::OnAuditFull::RefuseWrites => d.class > Class::Read,
            };
            if refuse {
                self.shared.metrics.refused.inc();
                self.refuse(&format!("holdfast gate: the audit log cannot take this statement ({e}); writes are refused until the vault takes the backlog"), extended);
                return Ok(());
            }
        }
        if break_glass && d.action == Action::Approve {
            self.shared.alert(serde_json::json!({
                "alert": "break_glass_statement", "person": self.id.person.name, "client": self.id.client,
                "sql": truncate(&sql, 2000), "class": d.class,
            }));
        }
        match action {
            Action::Allow => {
                self.shared.metrics.allowed.inc();
                self.track(&sql, extended);
                f.encode(&mut self.sout);
            }
            Action::Deny => {
                self.shared.metrics.refused.inc();
                let why = d.reasons.join("; ");
                self.refuse(&format!("holdfast gate: statement refused by policy: {why}"), extended);
            }
            Action::RowGuard { max_rows } if self.txn != b'E' => {
                self.shared.metrics.row_guarded.inc();
                let began = self.txn == b'I';
                let wrapper = if began { "BEGIN" } else { "SAVEPOINT holdfast_row_guard" };
                frontend::encode_query(&mut self.sout, &format!("{wrapper}; {sql}"));
                self.row_guard = Some(RowGuardRun {
                    sql,
                    max_rows,
                    began,
                    ours_done: false,
                    rows: None,
                    data_rows: 0,
                    failed: false,
                    buffered: BytesMut::new(),
                    started: Instant::now(),
                    decision: d.clone(),
                    finishing: None,
                });
            }
            Action::RowGuard { .. } => {
                // An aborted transaction: it fails anyway.
                self.track(&sql, extended);
                f.encode(&mut self.sout)
            }
            Action::Approve => {
                let mut raw = BytesMut::new();
                f.encode(&mut raw);
                let mut d = d;
                d.reasons.extend(reasons_extra);
                self.hold(sql, &d, raw.freeze(), extended, None).await?;
            }
        }
        Ok(())
    }

    /// Opens an approval request and parks the statement.
    async fn hold(
        &mut self,
        sql: String,
        d: &Decision,
        on_approve: Bytes,
        extended: bool,
        rows: Option<u64>,
    ) -> Result<(), String> {
        let mut reasons = d.reasons.clone();
        if let Some(n) = rows {
            reasons.push(format!("it changed {n} rows, over the limit (rolled back)"));
        }
        let ask = Ask::Statement {
            sql: sql.clone(),
            class: format!("{:?}", d.class).to_lowercase(),
            reasons: reasons.clone(),
        };
        let timeout = self.shared.config.approval_timeout;
        let (req, rx) = self.shared.approvals.open(
            &self.id.person.name,
            &self.id.client,
            Some(self.id.session),
            ask,
            None,
            timeout,
        );
        self.shared.metrics.held.inc();
        // A cancel that came before this hold (for an earlier statement) must not withdraw it.
        let _ = tokio::time::timeout(Duration::ZERO, self.cancel.notified()).await;
        let _ = self
            .audit(
                EventKind::ApprovalRequested,
                serde_json::json!({"approval": req.id, "sql": truncate(&sql, 16 * 1024), "reasons": reasons}),
            )
            .await;
        let approvers: Vec<String> = self
            .shared
            .config
            .people
            .iter()
            .filter(|p| p.approver && p.name != self.id.person.name)
            .map(|p| p.name.clone())
            .collect();
        self.shared.alert(serde_json::json!({
            "alert": "approval_requested", "approval": req.id, "person": self.id.person.name,
            "client": self.id.client, "sql": truncate(&sql, 2000), "reasons": reasons,
        }));
        let msg = format!(
            "holdfast gate: statement held for approval {} ({}); waiting up to {}s",
            req.id,
            reasons.join("; "),
            timeout.as_secs()
        );
        let hint = format!(
            "approvers: {} — `holdfast gate approve {}` or `holdfast gate reject {}`; cancel the query to withdraw it",
            if approvers.is_empty() { "(none configured)".into() } else { approvers.join(", ") },
            req.id,
            req.id
        );
        self.notice(&msg, Some(&hint));
        self.flush_client().await?;
        self.holding.store(true, std::sync::atomic::Ordering::SeqCst);
        self.held = Some(Held {
            id: req.id,
            rx,
            deadline: tokio::time::Instant::now() + timeout,
            on_approve,
            extended,
            sql,
            decision: d.clone(),
        });
        Ok(())
    }

    /// A held statement was decided (or timed out, or withdrawn).
    async fn decided(&mut self, state: State) -> Result<(), String> {
        let Some(h) = self.held.take() else { return Ok(()) };
        self.holding.store(false, std::sync::atomic::Ordering::SeqCst);
        match &state {
            State::Approved { by, .. } => {
                let _ = self.audit(EventKind::Approved, serde_json::json!({"approval": h.id, "approver": by, "sql": truncate(&h.sql, 16 * 1024)})).await;
                self.notice(&format!("holdfast gate: approval {} granted by {by}; running it", h.id), None);
                self.flush_client().await?;
                self.track(&h.sql, h.extended);
                self.guard.apply(&h.decision);
                self.sout.extend_from_slice(&h.on_approve);
            }
            other => {
                let (kind, text) = match other {
                    State::Rejected { by, reason, .. } => (
                        EventKind::Rejected,
                        format!(
                            "rejected by {by}{}",
                            reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    ),
                    State::Withdrawn { .. } => {
                        (EventKind::Rejected, "withdrawn (query canceled)".to_string())
                    }
                    _ => (EventKind::ApprovalExpired, "nobody approved it in time".to_string()),
                };
                let _ = self
                    .audit(
                        kind,
                        serde_json::json!({"approval": h.id, "state": state_name(other), "why": text}),
                    )
                    .await;
                self.shared.metrics.refused.inc();
                self.refuse(&format!("holdfast gate: statement {} not run: {text}", h.id), h.extended);
            }
        }
        self.flush_server().await
    }

    fn track(&mut self, sql: &str, extended: bool) {
        if extended {
            if self.batch.len() < 50 {
                self.batch.push(truncate(sql, 200));
            }
        } else {
            self.sent(sql);
        }
    }

    /// Puts a failing statement carrying `message` where the refused one was.
    fn refuse(&mut self, message: &str, extended: bool) {
        self.track("(refused by the gate)", extended);
        let sql = raise_sql(message);
        if extended {
            frontend::encode_parse(&mut self.sout, &sql);
            frontend::encode_bind_unnamed(&mut self.sout);
            frontend::encode_execute_unnamed(&mut self.sout);
        } else {
            frontend::encode_query(&mut self.sout, &sql);
        }
    }

    /// Server frames while a DELETE/UPDATE runs under the row guard.
    async fn on_row_guard_frame(&mut self, f: Frame) -> Result<(), String> {
        let run = self.row_guard.as_mut().expect("row guard");
        if let Some(finish) = run.finishing {
            // Answers to our COMMIT / RELEASE / ROLLBACK: swallowed up to ReadyForQuery.
            if f.tag == b'Z' {
                let run = self.row_guard.take().expect("row guard");
                self.txn = f.body.first().copied().unwrap_or(b'I');
                match finish {
                    Finish::Keep | Finish::Failed => {
                        self.cout.extend_from_slice(&run.buffered);
                        f.encode(&mut self.cout);
                        if finish == Finish::Keep {
                            self.shared.metrics.allowed.inc();
                        }
                        let done = InFlight {
                            what: truncate(&run.sql, 200),
                            started: run.started,
                            tags: run.rows.map(|r| vec![format!("ROWS {r}")]).unwrap_or_default(),
                            error: run.failed.then(|| "failed (see the client's error)".to_string()),
                        };
                        self.statement_done(done);
                    }
                    Finish::Over => {
                        // Hold the original for approval; on approval it runs again, as is.
                        let mut raw = BytesMut::new();
                        frontend::encode_query(&mut raw, &run.sql);
                        let mut d = run.decision.clone();
                        d.reasons.push(format!("row-count guard: more than {} rows", run.max_rows));
                        self.hold(run.sql.clone(), &d, raw.freeze(), false, run.rows).await?;
                    }
                }
            }
            return Ok(());
        }
        match f.tag {
            b'C' if !run.ours_done => run.ours_done = true,
            b'C' => {
                run.rows = wire::command_rows(&f.body);
                f.encode(&mut run.buffered);
            }
            b'D' => {
                run.data_rows += 1;
                // RETURNING rows are kept only while they could still be within the limit.
                if run.data_rows <= run.max_rows {
                    f.encode(&mut run.buffered);
                }
            }
            b'E' => {
                run.failed = true;
                f.encode(&mut run.buffered);
            }
            b'Z' => {
                let status = f.body.first().copied().unwrap_or(b'I');
                let rows = run.rows.unwrap_or(run.data_rows);
                let (finish, sql) = if run.failed {
                    // Outside a transaction we roll our BEGIN back; inside, the client's
                    // transaction is aborted, as it would be without the gate.
                    (Finish::Failed, if run.began { Some("ROLLBACK") } else { None })
                } else if rows > run.max_rows {
                    (
                        Finish::Over,
                        Some(if run.began {
                            "ROLLBACK"
                        } else {
                            "ROLLBACK TO SAVEPOINT holdfast_row_guard; RELEASE SAVEPOINT holdfast_row_guard"
                        }),
                    )
                } else if run.began {
                    (Finish::Keep, Some("COMMIT"))
                } else {
                    // Released ahead of the client's next message (see `release_pending`).
                    (Finish::Keep, None)
                };
                let rows_seen = rows;
                match sql {
                    Some(sql) => {
                        run.finishing = Some(finish);
                        frontend::encode_query(&mut self.sout, sql);
                        self.flush_server().await?;
                    }
                    None => {
                        let run = self.row_guard.take().expect("row guard");
                        self.txn = status;
                        self.cout.extend_from_slice(&run.buffered);
                        f.encode(&mut self.cout);
                        if finish == Finish::Keep {
                            self.shared.metrics.allowed.inc();
                            self.release_pending = true;
                        }
                        let done = InFlight {
                            what: truncate(&run.sql, 200),
                            started: run.started,
                            tags: run.rows.map(|r| vec![format!("ROWS {r}")]).unwrap_or_default(),
                            error: run.failed.then(|| "failed (see the client's error)".to_string()),
                        };
                        self.statement_done(done);
                    }
                }
                if finish == Finish::Over {
                    let _ = self
                        .audit(
                            EventKind::Verdict,
                            serde_json::json!({"row_guard": "over", "rows": rows_seen}),
                        )
                        .await;
                }
            }
            // RowDescription and anything else belonging to the statement.
            _ => f.encode(&mut run.buffered),
        }
        Ok(())
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `DO` block raising `message` (SQLSTATE 42501); the message cannot escape its quoting.
pub fn raise_sql(message: &str) -> String {
    let clean: String = message.chars().filter(|c| *c != '\0').collect::<String>().replace('$', "＄");
    let quoted = clean.replace('\'', "''");
    format!(
        "DO $holdfast$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '{quoted}', \
         HINT = 'ask an approver, or see holdfast gate pending'; END$holdfast$"
    )
}

pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::RowGuard { .. } => "row_guard",
        Action::Approve => "approve",
        Action::Deny => "deny",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
