//! Streaming WAL from PostgreSQL into the vault, resuming exactly where the durable WAL ends.
//!
//! The rule that makes this safe: the flush position reported to PostgreSQL is only ever the
//! end of WAL already durable in the vault's store. The slot therefore retains everything the
//! vault does not yet have, and in synchronous mode a commit returns only once its WAL is in
//! the vault. On restart the archive's newest byte is the resume point, so there is neither a
//! gap nor a duplicate.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfmt::{Lsn, TimelineId};
use pgproto::Error as PgError;
use pgproto::conn::{ReplicationConnection, StreamEvent};
use pgproto::replication::{StandbyStatusUpdate, pg_now};
use store::{Journal, Timestamp};
use tokio::sync::{mpsc, watch};

use crate::CaptureError;
use crate::archive::TimelineRecord;
use crate::piece::{Piece, PieceHeader};
use crate::runtime::ClusterRuntime;
use crate::synchronous::{self, Shared};

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET: i64 = 946_684_800;
/// A piece is stored when this much WAL is pending, whatever the flush interval.
pub(crate) const MAX_PENDING: usize = 4 << 20;
/// At most this many messages are gathered into one piece in synchronous mode.
const MAX_GATHER: usize = 256;
/// Status updates are sent at least this often, so the server sees the vault alive.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(10);

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
async fn stream_once(
    rt: &Arc<ClusterRuntime>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), CaptureError> {
    // WAL acknowledged before a crash first (also after synchronous mode was switched off).
    let journal = match &rt.cluster.journal {
        Some(path) if rt.cluster.synchronous || path.exists() => Some(recover_journal(rt, path).await?),
        _ => None,
    }
    .filter(|_| rt.cluster.synchronous);
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

    // Synchronous mode on a local store: the journal thread and its folder. Otherwise the
    // durability task stores each piece as an object.
    let (sink, task, sync) = match journal {
        Some(journal) => {
            // On a plain socket the thread tells the server itself (no hop through the runtime).
            let reporter = conn.status_sender().map(|sender| {
                let rt = rt.clone();
                synchronous::Reporter::new(
                    sender,
                    Box::new(move |d| rt.update(|s| raise(&mut s.durable_lsn, d))),
                )
            });
            // And it reads the socket itself, pg_receivewal's one loop: no task between the
            // socket and the fdatasync. Over TLS the receive task reads and queues for it.
            let receiving = match &reporter {
                Some(_) => conn.lend_reader(READ_WAIT)?.map(|reader| synchronous::Receiving {
                    reader,
                    rt: rt.clone(),
                    template: PieceHeader {
                        version: 1,
                        cluster: rt.cluster.name.clone(),
                        system_id: system_id.clone(),
                        timeline: tli.0,
                        start,
                        end: start,
                        segment_size: seg_size,
                        server_time: pg_time(0),
                    },
                    received: start,
                    server_end: start,
                    last_send_time: 0,
                }),
                None => None,
            };
            let lent = receiving.is_some();
            let shared = Shared::new(start, reporter);
            let thread = synchronous::spawn(shared.clone(), journal, rt.repo.keys().clone(), receiving)
                .map_err(|e| CaptureError::Internal(format!("starting the WAL journal thread: {e}")))?;
            let folder =
                tokio::spawn(synchronous::folder(rt.clone(), shared.clone(), seg_size, system_id.clone()));
            (
                Sink::Journal { shared: shared.clone(), reported: start },
                None,
                Some((shared, thread, folder, lent)),
            )
        }
        None => {
            let (jobs, job_rx) = mpsc::channel(1);
            let (done_tx, done) = mpsc::channel(2);
            let task =
                tokio::spawn(durability_task(rt.clone(), job_rx, done_tx, seg_size, system_id.clone()));
            (
                Sink::Objects { pipeline: Pipeline::new(start), jobs, done, in_flight_send_time: 0 },
                Some(task),
                None,
            )
        }
    };
    let mut w = Writer {
        rt,
        system_id: system_id.clone(),
        tli,
        seg_size,
        flush_after: if rt.cluster.synchronous { Duration::ZERO } else { rt.cluster.flush_interval },
        pending: Vec::new(),
        pending_start: start,
        pending_since: None,
        last_send_time: 0,
        ready: VecDeque::new(),
        sink,
        durable_send_time: 0,
        server_end: start,
    };
    let lent = matches!(sync, Some((_, _, _, true)));
    let mut result = if lent { Ok(()) } else { stream_loop(&mut w, &mut conn, shutdown, tli, start).await };
    // Whatever ended the stream, the piece being stored finishes before the next connection
    // computes its resume point from the archive: a piece landing after that would overlap.
    drop(w);
    if let Some(task) = task {
        let _ = task.await;
    }
    if let Some((shared, thread, folder, lent)) = sync {
        // The journal thread reads the stream: wait for a stop request or for it to end.
        let stop_asked = lent
            && tokio::select! {
                biased;
                _ = stop_requested(shutdown) => true,
                _ = shared.durable_wake.notified() => false,
            };
        // The thread appends what is queued (or what it read) and exits; then everything the
        // journal holds is folded, and a journal left empty is reset (a clean end leaves it
        // empty). After a failure, what it holds stays there and the next connection stores it
        // first.
        shared.stop();
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        let (journal, receiving) = match joined {
            Ok(Ok((journal, receiving))) => (Ok(journal), receiving),
            _ => (Err(()), None),
        };
        if lent {
            result =
                end_of_lent_stream(rt, &mut conn, receiving, &shared, stop_asked, tli, start, &system_id)
                    .await;
        }
        shared.fold_rest();
        let folded_all = folder.await.unwrap_or(false);
        let stats = shared.stats();
        tracing::info!(
            cluster = %rt.cluster.name,
            appends = stats.appends,
            frames = stats.frames,
            bytes = stats.bytes,
            thread_wakeups = stats.wakeups,
            "synchronous journal: appends (one write + fdatasync each) this connection"
        );
        match journal {
            Ok(mut journal) if folded_all => {
                if let Err(e) = blocking(move || journal.reset()).await? {
                    tracing::warn!(cluster = %rt.cluster.name, error = %e, "resetting the synchronous journal; the next connection does it");
                }
            }
            Ok(_) => {
                tracing::warn!(cluster = %rt.cluster.name, "the synchronous journal keeps WAL for the next connection to store")
            }
            _ => tracing::error!(cluster = %rt.cluster.name, "the WAL journal thread panicked"),
        }
        if let Err(e) = shared.durable()
            && result.is_ok()
        {
            return Err(e);
        }
    }
    result
}

/// How long the journal thread's read of the socket waits before it looks whether it is asked
/// to stop.
const READ_WAIT: Duration = Duration::from_millis(100);

/// After the journal thread read the stream itself: takes the socket's receiving side back and
/// ends the stream as the receive loop would — stopping it when asked to, or reading what made
/// the thread hand it back (the end of the timeline, or the server's error).
#[allow(clippy::too_many_arguments)]
async fn end_of_lent_stream(
    rt: &ClusterRuntime,
    conn: &mut ReplicationConnection,
    receiving: Option<synchronous::Receiving>,
    shared: &Shared,
    stop_asked: bool,
    tli: TimelineId,
    start: Lsn,
    system_id: &str,
) -> Result<(), CaptureError> {
    let Some(r) = receiving else {
        return Err(CaptureError::Internal("the WAL journal thread panicked with the stream".into()));
    };
    conn.take_back(r.reader)?;
    if shared.has_failed() {
        return Ok(()); // the caller reports the thread's error
    }
    if stop_asked {
        let _ = conn.stop_replication().await;
        return Ok(());
    }
    match conn.next_message().await.map_err(|e| wal_removed(e, tli, start))? {
        StreamEvent::EndOfTimeline(next) => {
            tracing::info!(cluster = %rt.cluster.name, timeline = tli.0, next = ?next, "end of timeline");
            if let Some(next) = next {
                let hist = conn.timeline_history(next.timeline).await?;
                store_history(rt, &hist.filename, &hist.content, next.timeline, system_id).await?;
            }
            Ok(())
        }
        // The thread hands the stream back only before a message that is not WAL or a keepalive.
        _ => Err(CaptureError::Internal(
            "the WAL journal thread stopped reading in the middle of the WAL".into(),
        )),
    }
}

/// Where pieces go to be made durable.
enum Sink {
    /// Each piece stored as an object by the durability task, one at a time.
    Objects {
        pipeline: Pipeline,
        jobs: mpsc::Sender<Job>,
        done: mpsc::Receiver<Stored>,
        in_flight_send_time: i64,
    },
    /// The synchronous journal's thread; `reported` is the flush position last sent.
    Journal { shared: Arc<Shared>, reported: Lsn },
}

/// The durability task's next report (never, without one).
async fn object_done(sink: &mut Sink) -> Option<Stored> {
    match sink {
        Sink::Objects { done, .. } => done.recv().await,
        Sink::Journal { .. } => std::future::pending().await,
    }
}

/// The journal thread's next wake-up call (never, without one).
async fn journal_woken(shared: Option<&Shared>) {
    match shared {
        Some(s) => s.durable_wake.notified().await,
        None => std::future::pending().await,
    }
}

/// The receive loop of one connection: takes in WAL while the durability task makes the
/// previous piece durable, and reports the flush position the moment it is.
async fn stream_loop(
    w: &mut Writer<'_>,
    conn: &mut ReplicationConnection,
    shutdown: &mut watch::Receiver<bool>,
    tli: TimelineId,
    start: Lsn,
) -> Result<(), CaptureError> {
    let rt = w.rt;
    let mut last_status = Instant::now();
    let shared = match &w.sink {
        Sink::Journal { shared, .. } => Some(shared.clone()),
        Sink::Objects { .. } => None,
    };
    loop {
        // A flush deadline only while nothing is being stored: a piece in flight is followed at
        // once by the next one when it completes, and an armed past deadline would spin.
        let deadline = if w.busy() { None } else { w.pending_since.map(|t| t + w.flush_after) };
        let status_due = last_status + STATUS_INTERVAL;
        // Backpressure: with two pieces already cut and waiting (or as much queued for the
        // journal thread), stop reading the socket until the store catches up (the server's own
        // buffers and the slot hold the rest).
        let may_read = match &shared {
            None => w.ready.len() < 2,
            Some(s) => s.ready_or_wake_me(|_, queued| queued < 2 * MAX_PENDING),
        };
        // Order matters: completions first (a commit is waiting on each), timers before the
        // socket, or a busy stream (always a message ready) would starve the flush deadline.
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => {
                w.drain(conn).await?;
                let _ = conn.stop_replication().await;
                return Ok(());
            }
            stored = object_done(&mut w.sink) => {
                w.completed(conn, stored).await?;
                last_status = Instant::now();
            }
            _ = journal_woken(shared.as_deref()) => {
                if w.journal_progress(conn).await? {
                    last_status = Instant::now();
                }
            }
            _ = sleep_until(deadline) => {
                w.pump(true).await?;
            }
            _ = tokio::time::sleep_until(status_due.into()) => {
                w.send_status(conn).await?;
                last_status = Instant::now();
            }
            ev = conn.next_message(), if may_read => {
                let mut ev = ev.map_err(|e| wal_removed(e, tli, start))?;
                let mut gathered = 0usize;
                loop {
                    match ev {
                        StreamEvent::XLogData(x) => {
                            w.accept(x.wal_start, &x.data, x.send_time)?;
                            w.server_end = w.server_end.max(x.wal_end);
                        }
                        StreamEvent::Keepalive(k) => {
                            w.server_end = w.server_end.max(k.wal_end);
                            w.last_send_time = w.last_send_time.max(k.send_time);
                            if k.reply_requested {
                                // The server wants an answer now: what is durable, and start
                                // storing what is not.
                                w.pump(true).await?;
                                w.send_status(conn).await?;
                                last_status = Instant::now();
                            }
                            w.publish();
                        }
                        StreamEvent::EndOfTimeline(next) => {
                            w.drain(conn).await?;
                            tracing::info!(cluster = %rt.cluster.name, timeline = tli.0, next = ?next, "end of timeline");
                            if let Some(next) = next {
                                let hist = conn.timeline_history(next.timeline).await?;
                                store_history(rt, &hist.filename, &hist.content, next.timeline, &w.system_id).await?;
                            }
                            return Ok(());
                        }
                    }
                    // Synchronous mode stores at once; first take in whatever has already
                    // arrived, so that commits the server flushed together become one piece and
                    // one round of fsyncs in the vault (group commit). Bounded, so a steady
                    // stream cannot hold back a piece. While a piece is being stored, everything
                    // that arrives meanwhile joins the next one anyway.
                    gathered += 1;
                    if !rt.cluster.synchronous || w.pending.is_empty() || gathered >= MAX_GATHER {
                        break;
                    }
                    match arrived(conn.next_message()).await {
                        Some(next) => ev = next.map_err(|e| wal_removed(e, tli, start))?,
                        None => break,
                    }
                }
                w.pump(false).await?;
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

/// What the durability task reports: a piece durable up to this LSN, or why storing failed.
type Stored = Result<Lsn, CaptureError>;

/// A piece cut from the stream, waiting to be made durable.
pub(crate) struct Cut {
    pub(crate) header: PieceHeader,
    pub(crate) data: Vec<u8>,
    /// The server's clock (µs since 2000) when it sent the piece's last byte.
    pub(crate) send_time: i64,
}

/// The bookkeeping of the flush position, apart from IO so that a test can hold it to its
/// rule: the position reported to the server moves only when storing a piece completes, and
/// only to that piece's end. One piece at a time is being stored, in LSN order, so the stored
/// WAL never has a hole a crash could leave behind.
#[derive(Debug)]
pub(crate) struct Pipeline {
    durable: Lsn,
    in_flight: Option<(Lsn, Lsn)>,
}

impl Pipeline {
    /// A pipeline whose WAL is durable up to `durable`.
    pub(crate) fn new(durable: Lsn) -> Pipeline {
        Pipeline { durable, in_flight: None }
    }

    /// Whether a piece is being stored.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The end of the WAL durable in the store: the only flush position ever reported.
    pub(crate) fn durable(&self) -> Lsn {
        self.durable
    }

    /// Hands the piece `[start, end)` to the durability task. Refused while another piece is in
    /// flight, or when the piece does not begin where the durable WAL ends.
    pub(crate) fn submit(&mut self, start: Lsn, end: Lsn) -> Result<(), CaptureError> {
        if let Some((s, e)) = self.in_flight {
            return Err(CaptureError::Internal(format!(
                "WAL piece {start}..{end} submitted while {s}..{e} is still being stored"
            )));
        }
        if start != self.durable || end <= start {
            return Err(CaptureError::Internal(format!(
                "WAL piece {start}..{end} does not continue the durable WAL ending at {}",
                self.durable
            )));
        }
        self.in_flight = Some((start, end));
        Ok(())
    }

    /// The durability task says the piece ending at `end` is durable: the new flush position.
    /// Anything but the piece in flight is refused and moves nothing.
    pub(crate) fn complete(&mut self, end: Lsn) -> Result<Lsn, CaptureError> {
        match self.in_flight {
            Some((_, e)) if e == end => {
                self.in_flight = None;
                self.durable = end;
                Ok(end)
            }
            other => Err(CaptureError::Internal(format!(
                "the store reported WAL durable to {end} but the piece in flight is {other:?}"
            ))),
        }
    }
}

/// One piece for the durability task.
struct Job {
    header: PieceHeader,
    data: Vec<u8>,
}

/// Stores pieces as objects one after the other, while the stream task goes on receiving, and
/// reports each piece the moment it is durable (asynchronous mode, and synchronous mode on a
/// store without a journal; a local store's synchronous mode uses [`synchronous`]'s journal
/// thread). The segment's catalog record (once per segment) and incidents the store could not
/// take earlier come after the report: no commit waits for them.
async fn durability_task(
    rt: Arc<ClusterRuntime>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Stored>,
    seg_size: u64,
    system_id: String,
) {
    let worked: Result<(), CaptureError> = async {
        while let Some(Job { header, data }) = jobs.recv().await {
            let (tli, end) = (TimelineId(header.timeline), header.end);
            rt.archive.store_piece(header, &data, rt.host.retain_until()).await?;
            rt.durable.send_replace((tli, end));
            if done.send(Ok(end)).await.is_err() {
                break;
            }
            after_stored(&rt, tli, end, seg_size, &system_id).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = worked {
        let _ = done.send(Err(e)).await;
    }
}

/// How long WAL may wait in the synchronous journal before it is folded into an object (what
/// restores and the detector read; `durable_lsn` counts the journal too).
pub const FOLD_AFTER: Duration = Duration::from_millis(200);
/// Size of a cluster's synchronous journal: a few hundred milliseconds of heavy WAL.
pub const JOURNAL_BYTES: u64 = 64 << 20;

/// Runs blocking work (sealing, the journal's file IO) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, CaptureError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CaptureError::Internal(format!("a WAL storage task: {e}")))
}

/// After an object is stored: the segment's catalog record when it completes one, and incidents
/// the store could not take earlier.
pub(crate) async fn after_stored(
    rt: &ClusterRuntime,
    tli: TimelineId,
    end: Lsn,
    seg_size: u64,
    system_id: &str,
) -> Result<(), CaptureError> {
    if end.0.is_multiple_of(seg_size) {
        let seg_start = Lsn(end.0 - seg_size);
        rt.archive
            .summarise_segment(tli, seg_start, seg_size, system_id, rt.now(), rt.host.retain_until())
            .await?;
    }
    // The store takes writes again: record incidents raised while it did not.
    rt.record_unrecorded().await;
    Ok(())
}

/// Opens the cluster's synchronous journal and stores as objects the WAL it holds beyond what
/// the archive has (a vault killed after acknowledging WAL, before folding it), then empties it.
/// Runs before each connection, so nothing the vault acknowledged is ever asked of the server
/// again, nor lost.
pub(crate) async fn recover_journal(rt: &ClusterRuntime, path: &Path) -> Result<Journal, CaptureError> {
    let p = path.to_path_buf();
    let (mut journal, frames) = blocking(move || Journal::open(&p, JOURNAL_BYTES)).await??;
    let mut recovered = 0usize;
    for frame in frames {
        let piece = match rt
            .repo
            .keys()
            .open(&frame)
            .map_err(|e| e.to_string())
            .and_then(|p| Piece::decode(&p).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(cluster = %rt.cluster.name, journal = %path.display(), error = %e, "a frame of the synchronous journal cannot be read; the journal is read up to it");
                break;
            }
        };
        let system = rt.archive.system_id();
        if piece.header.cluster != rt.cluster.name
            || system.as_ref().is_some_and(|s| *s != piece.header.system_id)
        {
            tracing::error!(cluster = %rt.cluster.name, journal = %path.display(), piece_cluster = %piece.header.cluster, "the synchronous journal holds WAL of another cluster or system; ignored");
            break;
        }
        let tli = piece.timeline();
        let (mut header, mut data) = (piece.header, piece.data);
        if let Some(have) = rt.archive.with_map(|m| m.last(tli).map(|p| p.end)) {
            if header.end <= have {
                continue; // folded before the crash
            }
            if header.start > have {
                tracing::error!(cluster = %rt.cluster.name, %have, start = %header.start, "the synchronous journal does not continue the stored WAL; not storing it across a gap");
                break;
            }
            data.drain(..(have.0 - header.start.0) as usize);
            header.start = have;
        }
        let end = header.end;
        rt.archive.store_piece(header, &data, rt.host.retain_until()).await?;
        rt.durable.send_replace((tli, end));
        rt.update(|s| s.durable_lsn = Some(end));
        recovered += 1;
    }
    if !journal.is_empty() {
        journal = blocking(move || journal.reset().map(|_| journal)).await??;
    }
    if recovered > 0 {
        tracing::info!(cluster = %rt.cluster.name, pieces = recovered, "stored the WAL the synchronous journal held (acknowledged before the vault stopped)");
    }
    Ok(journal)
}

/// Accumulates streamed WAL, cuts it into pieces that never cross a segment boundary, and has
/// the durability task store them one at a time (or the journal thread, in groups) while more WAL
/// arrives.
struct Writer<'a> {
    rt: &'a ClusterRuntime,
    system_id: String,
    tli: TimelineId,
    seg_size: u64,
    /// How long WAL may wait before it is stored (zero in synchronous mode).
    flush_after: Duration,
    pending: Vec<u8>,
    pending_start: Lsn,
    pending_since: Option<Instant>,
    last_send_time: i64,
    /// Pieces cut (at a segment boundary or at `MAX_PENDING`) and not yet handed over.
    ready: VecDeque<Cut>,
    sink: Sink,
    durable_send_time: i64,
    server_end: Lsn,
}

impl Writer<'_> {
    fn received(&self) -> Lsn {
        Lsn(self.pending_start.0 + self.pending.len() as u64)
    }

    fn accept(&mut self, wal_start: Lsn, data: &[u8], send_time: i64) -> Result<(), CaptureError> {
        let mut data = continuing(self.received(), wal_start, data)?;
        if data.is_empty() {
            return Ok(());
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
                self.cut();
            }
        }
        self.publish();
        Ok(())
    }

    /// Closes the pending WAL into a piece waiting to be stored.
    fn cut(&mut self) {
        if self.pending.is_empty() {
            return;
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
        let data = std::mem::take(&mut self.pending);
        self.ready.push_back(Cut { header, data, send_time: self.last_send_time });
        self.pending_start = end;
        self.pending_since = None;
    }

    /// Whether a piece is being stored by the durability task (the journal thread is never
    /// waited for: what arrives joins its next group).
    fn busy(&self) -> bool {
        match &self.sink {
            Sink::Objects { pipeline, .. } => pipeline.busy(),
            Sink::Journal { .. } => false,
        }
    }

    /// The flush position: the end of the WAL the store said is durable, and the server's send
    /// time of its last byte.
    fn durable(&self) -> (Lsn, i64) {
        match &self.sink {
            Sink::Objects { pipeline, .. } => (pipeline.durable(), self.durable_send_time),
            Sink::Journal { shared, .. } => shared.position(),
        }
    }

    /// Hands the next piece to the durability task if it is idle: a piece already cut, else the
    /// pending WAL once it is due (at once in synchronous mode, or when `force`d). With the
    /// journal thread, everything cut goes to it at once. Returns whether a piece was handed
    /// over.
    async fn pump(&mut self, force: bool) -> Result<bool, CaptureError> {
        if self.busy() {
            return Ok(false);
        }
        if self.ready.is_empty() || matches!(self.sink, Sink::Journal { .. }) {
            let due = self.pending_since.is_some_and(|t| t.elapsed() >= self.flush_after);
            if force || due {
                self.cut();
            }
        }
        match &mut self.sink {
            Sink::Journal { shared, .. } => {
                if self.ready.is_empty() {
                    return Ok(false);
                }
                shared.submit(self.ready.drain(..));
                Ok(true)
            }
            Sink::Objects { pipeline, jobs, in_flight_send_time, .. } => {
                let Some(Cut { header, data, send_time }) = self.ready.pop_front() else { return Ok(false) };
                pipeline.submit(header.start, header.end)?;
                *in_flight_send_time = send_time;
                jobs.send(Job { header, data })
                    .await
                    .map_err(|_| CaptureError::Internal("the WAL durability task ended".into()))?;
                Ok(true)
            }
        }
    }

    /// A report from the durability task: on success, the new flush position is published and
    /// sent to the server at once (a synchronous commit is waiting for it, and waiting for the
    /// next status interval would add up to that much to its latency), then the next piece —
    /// everything that arrived meanwhile — is handed over.
    async fn completed(
        &mut self,
        conn: &mut ReplicationConnection,
        stored: Option<Stored>,
    ) -> Result<(), CaptureError> {
        let end = stored.ok_or_else(|| CaptureError::Internal("the WAL durability task ended".into()))??;
        let Sink::Objects { pipeline, in_flight_send_time, .. } = &mut self.sink else {
            return Err(CaptureError::Internal("a durability task report without one".into()));
        };
        pipeline.complete(end)?;
        self.durable_send_time = *in_flight_send_time;
        // Status first: once the server hears "flushed", a synchronous commit returns, and
        // whoever asks the vault at that moment must already see the WAL as durable.
        self.publish();
        self.send_status(conn).await?;
        self.pump(false).await?;
        Ok(())
    }

    /// The journal thread woke us: storing failed, the queue has room, or WAL became durable
    /// (without a [`synchronous::Reporter`], sent to the server at once, as in
    /// [`Writer::completed`]). Returns whether a status was sent.
    async fn journal_progress(&mut self, conn: &mut ReplicationConnection) -> Result<bool, CaptureError> {
        let Sink::Journal { shared, reported } = &mut self.sink else { return Ok(false) };
        let (durable, _) = shared.durable()?;
        if durable <= *reported {
            return Ok(false);
        }
        *reported = durable;
        self.publish();
        self.send_status(conn).await?;
        Ok(true)
    }

    /// Stores everything received, waiting for it to be durable (shutdown, end of timeline).
    async fn drain(&mut self, conn: &mut ReplicationConnection) -> Result<(), CaptureError> {
        loop {
            self.pump(true).await?;
            if let Sink::Journal { shared, .. } = &self.sink {
                let shared = shared.clone();
                self.journal_progress(conn).await?;
                let received = self.received();
                if shared.ready_or_wake_me(|durable, _| durable >= received) {
                    self.journal_progress(conn).await?;
                    return Ok(());
                }
                shared.durable_wake.notified().await;
                continue;
            }
            if !self.busy() {
                return Ok(());
            }
            let stored = object_done(&mut self.sink).await;
            self.completed(conn, stored).await?;
        }
    }

    async fn send_status(&mut self, conn: &mut ReplicationConnection) -> Result<(), CaptureError> {
        let (durable, _) = self.durable();
        if let Sink::Journal { shared, .. } = &self.sink
            && let Some(r) = &shared.reporter
        {
            // Through the reporter, which the journal thread writes on too: never backwards.
            return r.report(durable);
        }
        conn.send_status(StandbyStatusUpdate {
            write: durable,
            flush: durable,
            apply: durable,
            client_time: pg_now(),
            reply_requested: false,
        })
        .await?;
        Ok(())
    }

    fn publish(&self) {
        let received = self.received();
        let (durable, durable_send_time) = self.durable();
        let server_end = self.server_end.max(received);
        let lag_bytes = server_end.0.saturating_sub(durable.0);
        let lag_seconds =
            if lag_bytes == 0 { 0.0 } else { (self.last_send_time - durable_send_time).max(0) as f64 / 1e6 };
        self.rt.update(|s| {
            s.received_lsn = Some(received);
            // Never lowered within a stream: the journal thread may have raised it meanwhile.
            raise(&mut s.durable_lsn, durable);
            s.server_lsn = Some(server_end);
            s.lag_bytes = Some(lag_bytes);
            s.lag_seconds = Some(lag_seconds);
        });
    }
}

/// The part of WAL sent from `wal_start` that continues the WAL received up to `expected`:
/// bytes already held (a resend) are skipped, never stored twice; WAL beginning after
/// `expected` is refused, never stored across a gap.
pub(crate) fn continuing(expected: Lsn, wal_start: Lsn, data: &[u8]) -> Result<&[u8], CaptureError> {
    if wal_start > expected && !data.is_empty() {
        return Err(CaptureError::Protocol(format!(
            "the server sent WAL from {wal_start} but the vault expected {expected}: refusing to leave a gap"
        )));
    }
    let skip = (expected.0.saturating_sub(wal_start.0)).min(data.len() as u64) as usize;
    Ok(&data[skip..])
}

/// Sets `lsn` to `to` unless it is already further.
pub(crate) fn raise(lsn: &mut Option<Lsn>, to: Lsn) {
    *lsn = Some(lsn.map_or(to, |l| l.max(to)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flush position never runs ahead of what the store said is durable: not while a piece
    /// is in flight, not on a report for another piece, and not by accepting a second piece
    /// before the first completes.
    #[test]
    fn pipeline_never_reports_a_flush_beyond_what_is_durable() {
        let mut p = Pipeline::new(Lsn(100));
        p.submit(Lsn(100), Lsn(200)).unwrap();
        assert!(p.busy());
        assert_eq!(p.durable(), Lsn(100), "a piece in flight is not durable");
        assert!(p.submit(Lsn(200), Lsn(300)).is_err(), "one piece at a time");
        assert!(p.complete(Lsn(300)).is_err(), "a report for a piece never handed over");
        assert!(p.complete(Lsn(150)).is_err(), "a report for part of the piece");
        assert_eq!(p.durable(), Lsn(100));
        assert_eq!(p.complete(Lsn(200)).unwrap(), Lsn(200));
        assert_eq!(p.durable(), Lsn(200));
        assert!(p.complete(Lsn(200)).is_err(), "the same report twice");
        assert!(p.submit(Lsn(250), Lsn(300)).is_err(), "a piece leaving a hole");
        assert!(p.submit(Lsn(150), Lsn(300)).is_err(), "a piece overlapping durable WAL");
        assert!(p.submit(Lsn(200), Lsn(200)).is_err(), "an empty piece");

        // Random interleavings of receiving, cutting, completing and bogus reports: the flush
        // position only ever equals the end of the last completed piece.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut p = Pipeline::new(Lsn(0));
        let (mut received, mut completed) = (0u64, 0u64);
        for _ in 0..10_000 {
            match next() % 4 {
                0 => received += 1 + next() % 8192,
                1 if received > p.durable().0 && !p.busy() => p.submit(p.durable(), Lsn(received)).unwrap(),
                2 => {
                    if let Some((_, end)) = p.in_flight {
                        completed = end.0;
                        p.complete(end).unwrap();
                    }
                }
                _ => {
                    let _ = p.complete(Lsn(next() % (received + 1)));
                }
            }
            assert_eq!(p.durable().0, completed);
            assert!(p.durable().0 <= received);
        }
    }
}
