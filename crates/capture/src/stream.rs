//! Streaming WAL from PostgreSQL into the vault, resuming exactly where the durable WAL ends.
//!
//! The rule that makes this safe: the flush position reported to PostgreSQL is only ever the
//! end of WAL already durable in the vault's store. The slot therefore retains everything the
//! vault does not yet have, and in synchronous mode a commit returns only once its WAL is in
//! the vault. On restart the archive's newest byte is the resume point, so there is neither a
//! gap nor a duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfmt::{Lsn, TimelineId};
use pgproto::Error as PgError;
use pgproto::conn::{ReplicationConnection, StreamEvent};
use pgproto::replication::{StandbyStatusUpdate, pg_now};
use store::Timestamp;
use tokio::sync::watch;

use crate::CaptureError;
use crate::archive::TimelineRecord;
use crate::piece::PieceHeader;
use crate::runtime::ClusterRuntime;

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET: i64 = 946_684_800;
/// A piece is stored when this much WAL is pending, whatever the flush interval.
const MAX_PENDING: usize = 4 << 20;
/// At most this many messages are gathered into one piece in synchronous mode.
const MAX_GATHER: usize = 256;
/// Status updates are sent at least this often, so the server sees the vault alive.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Converts a PostgreSQL timestamp (µs since 2000-01-01) to a [`Timestamp`].
pub fn pg_time(t: i64) -> Timestamp {
    Timestamp(t.div_euclid(1_000_000) + PG_EPOCH_OFFSET)
}

/// Connects to the first reachable server of the cluster.
pub(crate) async fn connect(rt: &ClusterRuntime) -> Result<(ReplicationConnection, String), PgError> {
    let mut last = None;
    for cfg in &rt.cluster.connections {
        match ReplicationConnection::connect(cfg).await {
            Ok(c) => return Ok((c, cfg.host.to_string())),
            Err(e) => {
                tracing::debug!(cluster = %rt.cluster.name, server = %cfg.host, error = %e, "cannot connect");
                last = Some(e);
            }
        }
    }
    Err(last.expect("validated config has at least one host"))
}

/// Reads `wal_segment_size` (e.g. `16MB`).
pub(crate) async fn segment_size(conn: &mut ReplicationConnection) -> Result<u64, CaptureError> {
    let sets = conn.simple_query("SHOW wal_segment_size").await?;
    let text = sets.first().and_then(|s| s.get(0, "wal_segment_size")).unwrap_or("16MB").to_string();
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num.parse().map_err(|_| CaptureError::Protocol(format!("bad wal_segment_size {text:?}")))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        other => return Err(CaptureError::Protocol(format!("bad wal_segment_size unit {other:?}"))),
    };
    Ok(n * mult)
}

/// Whether the collector asked to stop. A dropped sender counts as a request to stop: without
/// that, `changed()` would return at once forever and the task would spin.
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Waits until the collector asks to stop (or is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// The vault's own share of a failure, in words that name it: the store refused to keep WAL
/// (a full disk, an I/O error) or the vault ran out of file descriptors. `None` for what lies on
/// the server's side or the network's.
fn vault_side(e: &CaptureError) -> Option<String> {
    fn fds(io: &std::io::Error) -> bool {
        // EMFILE (per process) and ENFILE (whole system).
        matches!(io.raw_os_error(), Some(24 | 23))
    }
    fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = cur {
            if let Some(io) = x.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(28 | 122))
            {
                return true;
            }
            cur = x.source();
        }
        false
    }
    match e {
        CaptureError::Store(_) | CaptureError::Repo(_) | CaptureError::Piece(_) => Some(if disk_full(e) {
            format!("the vault's store is full, WAL cannot be stored: {e}")
        } else {
            format!("the vault's store cannot keep WAL: {e}")
        }),
        CaptureError::Pg(PgError::Io(io) | PgError::Unreachable { source: io, .. }) if fds(io) => {
            Some(format!(
                "the vault ran out of file descriptors ({io}): this is the vault's limit, not PostgreSQL's; \
             raise its LimitNOFILE or find what holds its connections"
            ))
        }
        _ => None,
    }
}

/// Streams until `shutdown` becomes true, reconnecting with backoff and raising incidents.
pub async fn run(rt: Arc<ClusterRuntime>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    let mut down_since: Option<Instant> = None;
    // Since when the vault itself has been unable to store WAL. Unlike `down_since`, a
    // reconnect that gets the stream going again does not reset it: only WAL made durable does,
    // or a full disk would reconnect forever below the grace period, unseen.
    let mut stalled_since: Option<Instant> = None;
    while !stopping(&shutdown) {
        let durable_before = *rt.durable.borrow();
        let result = stream_once(&rt, &mut shutdown).await;
        if *rt.durable.borrow() != durable_before {
            if stalled_since.take().is_some() {
                tracing::info!(cluster = %rt.cluster.name, "WAL capture resumed: the vault stores WAL again");
            }
            rt.clear_incidents(&["capture_stalled"]);
            rt.record_unrecorded().await;
        }
        // A stream that got going ends the previous outage: the grace period restarts now.
        let was_streaming = rt.status().connected;
        if was_streaming {
            backoff = Duration::from_millis(250);
            down_since = None;
        }
        rt.update(|s| s.connected = false);
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(250);
                down_since = None;
            }
            Err(CaptureError::WalRemoved { .. }) => {
                // Reconnect at once; the next attempt records the gap and skips it.
                rt.skip_gap.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                if let Some(cause) = vault_side(&e) {
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    rt.update(|s| s.last_error = Some(cause.clone()));
                    tracing::error!(cluster = %rt.cluster.name, stalled_for_s = since.elapsed().as_secs(), cause = %cause, "WAL capture stalled on the vault's side; retrying");
                    if since.elapsed() >= rt.cluster.stall_grace {
                        let durable = rt.status().durable_lsn;
                        rt.incident(
                            "capture_stalled",
                            format!(
                                "the vault has stored no WAL for {}s: {cause}. The server keeps the WAL in the replication \
                                 slot meanwhile, so its own disk fills instead; capture resumes without a gap once the cause is fixed",
                                since.elapsed().as_secs()
                            ),
                            durable,
                        )
                        .await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop_requested(&mut shutdown) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                let msg = e.to_string();
                rt.update(|s| s.last_error = Some(msg.clone()));
                let since = *down_since.get_or_insert_with(Instant::now);
                // Losing access is an attack only once the vault has had it: a role that never
                // worked is a configuration error, shown in `last_error`.
                let had_access = !rt.archive.map().is_empty();
                match &e {
                    CaptureError::Pg(PgError::NoReplicationPrivilege { .. } | PgError::AuthFailed { .. })
                        if had_access =>
                    {
                        rt.incident(
                            "access_revoked",
                            format!("the vault can no longer replicate: {msg}"),
                            None,
                        )
                        .await;
                    }
                    CaptureError::SystemChanged { .. } => {
                        rt.incident("system_changed", msg.clone(), None).await;
                    }
                    // Credentials that never worked: `last_error` says what to fix; no incident.
                    CaptureError::Pg(
                        PgError::NoReplicationPrivilege { .. }
                        | PgError::AuthFailed { .. }
                        | PgError::PasswordRequired { .. },
                    ) => {}
                    _ if since.elapsed() >= rt.cluster.connection_grace => {
                        let durable = rt.status().durable_lsn;
                        rt.incident(
                            "connection_lost",
                            format!("no replication connection for {}s: {msg}", since.elapsed().as_secs()),
                            durable,
                        )
                        .await;
                    }
                    _ => {}
                }
                if matches!(e, CaptureError::Pg(PgError::StreamEnded)) {
                    // A clean shutdown or a switchover, not a failure: say so plainly. If the
                    // server stays away, `connection_lost` follows after the grace period.
                    tracing::info!(cluster = %rt.cluster.name, "the server ended the WAL stream (shutdown or switchover); reconnecting");
                } else {
                    tracing::warn!(cluster = %rt.cluster.name, error = %msg, "WAL stream interrupted; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_requested(&mut shutdown) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Where to resume: the timeline and LSN after the newest stored byte.
async fn resume_point(
    rt: &ClusterRuntime,
    conn: &mut ReplicationConnection,
    server_tli: TimelineId,
    system_id: &str,
    seg_size: u64,
) -> Result<Option<(TimelineId, Lsn)>, CaptureError> {
    let map = rt.archive.map();
    let Some(&tli) = map.timelines().last() else { return Ok(None) };
    let end = map.last(tli).map(|p| p.end).unwrap_or(Lsn(0));
    if tli == server_tli {
        return Ok(Some((tli, end)));
    }
    if tli > server_tli {
        return Err(CaptureError::SystemChanged {
            detail: format!(
                "the vault holds timeline {} but the server is on timeline {}",
                tli.0, server_tli.0
            ),
        });
    }
    // The server moved to a newer timeline (a standby was promoted): store the history and
    // finish our timeline up to its switch point, or move on to the next one.
    let hist = conn.timeline_history(server_tli).await?;
    let history = hist.history()?;
    store_history(rt, &hist.filename, &hist.content, server_tli, system_id).await?;
    let _ = seg_size;
    let pos = history.entries.iter().position(|e| e.parent == tli);
    match pos {
        Some(i) if end < history.entries[i].switchpoint => Ok(Some((tli, end))),
        Some(i) => {
            // The timeline that followed ours: the next ancestor, or the server's own.
            let next = history.entries.get(i + 1).map(|e| e.parent).unwrap_or(server_tli);
            Ok(Some((next, end)))
        }
        None => Err(CaptureError::SystemChanged {
            detail: format!(
                "timeline {} of the server does not descend from timeline {} held by the vault",
                server_tli.0, tli.0
            ),
        }),
    }
}

async fn store_history(
    rt: &ClusterRuntime,
    filename: &str,
    content: &[u8],
    tli: TimelineId,
    system_id: &str,
) -> Result<(), CaptureError> {
    let new = !rt.archive.has_history(tli);
    let rec = TimelineRecord {
        cluster: rt.cluster.name.clone(),
        system_id: system_id.to_string(),
        timeline: tli.0,
        filename: filename.to_string(),
        content: String::from_utf8_lossy(content).into_owned(),
    };
    rt.archive.store_history(rec, rt.now(), rt.host.retain_until()).await?;
    if new {
        // The switch from the timeline before: the history file's last entry.
        let last = pgfmt::TimelineHistory::parse(&String::from_utf8_lossy(content))
            .ok()
            .and_then(|h| h.entries.last().cloned());
        rt.timeline_switch(tli, last.as_ref().map(|e| e.switchpoint), last.map(|e| e.parent.0)).await;
    }
    Ok(())
}

/// Makes sure the vault's slot exists; returns its restart position. A slot that vanished
/// while the vault holds WAL is an incident: someone dropped it.
async fn ensure_slot(
    rt: &ClusterRuntime,
    conn: &mut ReplicationConnection,
    have_wal: bool,
) -> Result<Option<Lsn>, CaptureError> {
    let slot = rt.cluster.slot.clone();
    if conn.server_version_num() < 150000 {
        // PostgreSQL 14 has no READ_REPLICATION_SLOT: create, and treat "exists" as fine.
        return match conn.create_physical_slot(&slot, false).await {
            Ok(created) => Ok(created.consistent_point),
            Err(e) if e.sqlstate() == Some("42710") => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    match conn.read_replication_slot(&slot).await {
        Ok(info) if info.slot_type == "physical" => return Ok(info.restart_lsn),
        Ok(info) => {
            return Err(CaptureError::Config(format!(
                "replication slot {slot:?} exists but is a {} slot; drop it or name another slot",
                info.slot_type
            )));
        }
        Err(PgError::SlotNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if have_wal {
        rt.incident(
            "slot_dropped",
            format!(
                "replication slot {slot:?} disappeared from the server: someone dropped it; the vault re-created it, \
                 and any WAL the server recycled meanwhile is reported as a gap"
            ),
            rt.status().durable_lsn,
        )
        .await;
    }
    let created = conn.create_physical_slot(&slot, false).await?;
    tracing::info!(cluster = %rt.cluster.name, slot, "created replication slot");
    // A physical slot reports `0/0` as its consistent point; the WAL it reserved starts at its
    // restart_lsn, which only READ_REPLICATION_SLOT tells.
    match created.consistent_point {
        Some(p) if p.0 != 0 => Ok(Some(p)),
        _ => Ok(conn.read_replication_slot(&slot).await?.restart_lsn.filter(|p| p.0 != 0)),
    }
}

/// One connection's worth of streaming. Returns `Ok` on shutdown or at the end of a timeline.
async fn stream_once(rt: &ClusterRuntime, shutdown: &mut watch::Receiver<bool>) -> Result<(), CaptureError> {
    let (mut conn, server) = connect(rt).await?;
    let ident = conn.identify_system().await?;
    let system_id = ident.system_id.to_string();
    if let Some(stored) = rt.archive.system_id()
        && stored != system_id
    {
        return Err(CaptureError::SystemChanged {
            detail: format!(
                "server {server} has system identifier {system_id} but the vault's WAL for this cluster is from {stored}; \
                     refusing to mix them (point the cluster at the right server, or configure a new cluster name)"
            ),
        });
    }
    let seg_size = segment_size(&mut conn).await?;
    let have_wal = !rt.archive.map().is_empty();
    if have_wal {
        let n = rt.archive.summarise_pending(seg_size, &system_id, rt.now(), rt.host.retain_until()).await?;
        if n > 0 {
            tracing::info!(cluster = %rt.cluster.name, segments = n, "recorded segments completed before a restart");
        }
    }
    let slot_restart = ensure_slot(rt, &mut conn, have_wal).await?;
    let (tli, mut start) = match resume_point(rt, &mut conn, ident.timeline, &system_id, seg_size).await? {
        Some(p) => p,
        None => {
            // Nothing stored yet: begin at the start of the segment the slot holds, so the
            // first segment is whole.
            let from = slot_restart.unwrap_or(ident.xlogpos);
            (ident.timeline, Lsn(from.0 - from.0 % seg_size))
        }
    };
    if rt.skip_gap.swap(false, std::sync::atomic::Ordering::SeqCst) {
        // The server recycled WAL the vault never got: a gap that can no longer be filled.
        // Say so, then start again from the oldest WAL the server still keeps for the slot.
        let restart = conn
            .read_replication_slot(&rt.cluster.slot)
            .await
            .ok()
            .and_then(|s| s.restart_lsn)
            .unwrap_or(ident.xlogpos);
        let new_start = Lsn(restart.0 - restart.0 % seg_size).max(start);
        rt.incident(
            "wal_gap",
            format!(
                "WAL {start}..{new_start} on timeline {} was recycled by the server before the vault stored it; \
                 points in time inside that range cannot be restored",
                tli.0
            ),
            Some(start),
        )
        .await;
        start = new_start;
    }
    conn.start_replication(Some(&rt.cluster.slot), start, Some(tli))
        .await
        .map_err(|e| wal_removed(e, tli, start))?;
    tracing::info!(cluster = %rt.cluster.name, %server, timeline = tli.0, %start, "streaming WAL");
    // A healthy stream ends these episodes: the next occurrence is a new incident.
    rt.clear_incidents(&["connection_lost", "access_revoked", "slot_dropped", "wal_gap"]);
    rt.update(|s| {
        s.connected = true;
        s.server = Some(server.clone());
        s.system_id = Some(system_id.clone());
        s.timeline = Some(tli.0);
        s.last_error = None;
        s.durable_lsn = Some(start);
        s.received_lsn = Some(start);
    });

    let mut w = Writer {
        rt,
        system_id: system_id.clone(),
        tli,
        seg_size,
        pending: Vec::new(),
        pending_start: start,
        pending_since: None,
        last_send_time: 0,
        durable: start,
        durable_send_time: 0,
        server_end: start,
    };
    let flush_after = if rt.cluster.synchronous { Duration::ZERO } else { rt.cluster.flush_interval };
    let mut last_status = Instant::now();
    loop {
        let deadline = w.pending_since.map(|t| t + flush_after);
        let status_due = last_status + STATUS_INTERVAL;
        // Order matters: timers come before the socket, or a busy stream (always a message
        // ready) would starve the flush deadline and WAL would wait for a segment boundary.
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => {
                w.flush(&mut conn).await?;
                let _ = conn.stop_replication().await;
                return Ok(());
            }
            _ = sleep_until(deadline) => {
                w.flush(&mut conn).await?;
            }
            _ = tokio::time::sleep_until(status_due.into()) => {
                w.send_status(&mut conn).await?;
                last_status = Instant::now();
            }
            ev = conn.next_message() => {
                let mut ev = ev.map_err(|e| wal_removed(e, tli, start))?;
                let mut gathered = 0usize;
                loop {
                    match ev {
                        StreamEvent::XLogData(x) => {
                            w.accept(&mut conn, x.wal_start, &x.data, x.send_time).await?;
                            w.server_end = w.server_end.max(x.wal_end);
                        }
                        StreamEvent::Keepalive(k) => {
                            w.server_end = w.server_end.max(k.wal_end);
                            w.last_send_time = w.last_send_time.max(k.send_time);
                            if k.reply_requested {
                                w.flush(&mut conn).await?;
                                w.send_status(&mut conn).await?;
                                last_status = Instant::now();
                            }
                            w.publish();
                        }
                        StreamEvent::EndOfTimeline(next) => {
                            w.flush(&mut conn).await?;
                            tracing::info!(cluster = %rt.cluster.name, timeline = tli.0, next = ?next, "end of timeline");
                            if let Some(next) = next {
                                let hist = conn.timeline_history(next.timeline).await?;
                                store_history(rt, &hist.filename, &hist.content, next.timeline, &system_id).await?;
                            }
                            return Ok(());
                        }
                    }
                    // Synchronous mode flushes at once; first take in whatever has already
                    // arrived, so that commits the server flushed together become one piece and
                    // one fsync in the vault (group commit). Bounded, so a steady stream cannot
                    // hold back a flush.
                    gathered += 1;
                    if !rt.cluster.synchronous || w.pending.is_empty() || gathered >= MAX_GATHER {
                        break;
                    }
                    match arrived(conn.next_message()).await {
                        Some(next) => ev = next.map_err(|e| wal_removed(e, tli, start))?,
                        None => break,
                    }
                }
            }
        }
        rt.update(|s| s.last_contact = Some(rt.now()));
    }
}

/// The server may report recycled WAL either as START_REPLICATION's answer or as the first
/// message of the stream; both become [`CaptureError::WalRemoved`].
fn wal_removed(e: PgError, tli: TimelineId, from: Lsn) -> CaptureError {
    match &e {
        PgError::Server(s) if s.message.contains("has already been removed") => {
            CaptureError::WalRemoved { timeline: tli, from, detail: s.message.clone() }
        }
        _ => e.into(),
    }
}

/// The future's output if it is ready without waiting (data already received), else `None`.
/// Used only with [`ReplicationConnection::next_message`], which is cancel-safe: an unfinished
/// read leaves its bytes in the connection's buffer.
async fn arrived<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        v = fut => Some(v),
        _ = std::future::ready(()) => None,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Accumulates streamed WAL and stores it in pieces that never cross a segment boundary.
struct Writer<'a> {
    rt: &'a ClusterRuntime,
    system_id: String,
    tli: TimelineId,
    seg_size: u64,
    pending: Vec<u8>,
    pending_start: Lsn,
    pending_since: Option<Instant>,
    last_send_time: i64,
    durable: Lsn,
    durable_send_time: i64,
    server_end: Lsn,
}

impl Writer<'_> {
    fn received(&self) -> Lsn {
        Lsn(self.pending_start.0 + self.pending.len() as u64)
    }

    async fn accept(
        &mut self,
        conn: &mut ReplicationConnection,
        wal_start: Lsn,
        data: &[u8],
        send_time: i64,
    ) -> Result<(), CaptureError> {
        let expected = self.received();
        let mut data = data;
        let mut at = wal_start;
        if at < expected {
            // Bytes we already hold (a resend): skip them, never store twice.
            let skip = (expected.0 - at.0).min(data.len() as u64) as usize;
            data = &data[skip..];
            at = Lsn(at.0 + skip as u64);
        }
        if data.is_empty() {
            return Ok(());
        }
        if at > expected {
            return Err(CaptureError::Protocol(format!(
                "the server sent WAL from {at} but the vault expected {expected}: refusing to leave a gap"
            )));
        }
        self.last_send_time = self.last_send_time.max(send_time);
        while !data.is_empty() {
            let pos = self.received();
            let to_boundary = (self.seg_size - pos.0 % self.seg_size) as usize;
            let take = to_boundary.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            self.pending_since.get_or_insert_with(Instant::now);
            data = &data[take..];
            if take == to_boundary || self.pending.len() >= MAX_PENDING {
                self.flush(conn).await?;
            }
        }
        self.publish();
        Ok(())
    }

    /// Stores pending WAL as one piece, then tells the server it is flushed.
    async fn flush(&mut self, conn: &mut ReplicationConnection) -> Result<(), CaptureError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let end = self.received();
        let header = PieceHeader {
            version: 1,
            cluster: self.rt.cluster.name.clone(),
            system_id: self.system_id.clone(),
            timeline: self.tli.0,
            start: self.pending_start,
            end,
            segment_size: self.seg_size,
            server_time: pg_time(self.last_send_time),
        };
        self.rt.archive.store_piece(header, &self.pending, self.rt.host.retain_until()).await?;
        self.durable = end;
        self.durable_send_time = self.last_send_time;
        self.pending.clear();
        self.pending_start = end;
        self.pending_since = None;
        if end.0.is_multiple_of(self.seg_size) {
            let seg_start = Lsn(end.0 - self.seg_size);
            self.rt
                .archive
                .summarise_segment(
                    self.tli,
                    seg_start,
                    self.seg_size,
                    &self.system_id,
                    self.rt.now(),
                    self.rt.host.retain_until(),
                )
                .await?;
        }
        self.rt.durable.send_replace((self.tli, end));
        // The store takes writes again: record incidents raised while it did not.
        self.rt.record_unrecorded().await;
        // Status first: once the server hears "flushed", a synchronous commit returns, and
        // whoever asks the vault at that moment must already see the WAL as durable.
        self.publish();
        self.send_status(conn).await?;
        Ok(())
    }

    async fn send_status(&mut self, conn: &mut ReplicationConnection) -> Result<(), CaptureError> {
        conn.send_status(StandbyStatusUpdate {
            write: self.durable,
            flush: self.durable,
            apply: self.durable,
            client_time: pg_now(),
            reply_requested: false,
        })
        .await?;
        Ok(())
    }

    fn publish(&self) {
        let received = self.received();
        let durable = self.durable;
        let server_end = self.server_end.max(received);
        let lag_bytes = server_end.0.saturating_sub(durable.0);
        let lag_seconds = if lag_bytes == 0 {
            0.0
        } else {
            (self.last_send_time - self.durable_send_time).max(0) as f64 / 1e6
        };
        self.rt.update(|s| {
            s.received_lsn = Some(received);
            s.durable_lsn = Some(durable);
            s.server_lsn = Some(server_end);
            s.lag_bytes = Some(lag_bytes);
            s.lag_seconds = Some(lag_seconds);
        });
    }
}
