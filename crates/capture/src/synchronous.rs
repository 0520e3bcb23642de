//! The synchronous path on a local store: one OS thread makes streamed WAL durable in the
//! journal, the way `pg_receivewal --synchronous` does in its one loop (read, write,
//! `fdatasync`, report), while a folder task turns what the journal holds into ordinary WAL
//! objects.
//!
//! On a plain socket the thread reads the stream itself ([`Receiving`], a
//! [`BlockingReader`] the connection lends it): it waits for the server with a blocking read,
//! takes every whole message read, seals and appends the WAL among them with one write and one
//! `fdatasync`, publishes the durable LSN and sends the flush position (a [`Reporter`] on a
//! second handle of the socket). No async task stands between the socket and the
//! acknowledgement: a group commit waits for one thread to be scheduled, as with pg_receivewal,
//! not for a runtime worker and then the thread. WAL that arrives during an `fdatasync` is the
//! next group. Over TLS (its session lives in the async connection) the receive task reads and
//! puts what it read into the [`Shared`] inbox, waking the thread if it sleeps; the thread
//! appends and wakes the receive task (one `Notify`), which sends the flush position.
//!
//! The rule is the collector's: the durable LSN the thread publishes is the end of WAL whose
//! frames the journal's `fdatasync` has returned for, and nothing else moves it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use pgfmt::{Lsn, TimelineId};
use pgproto::conn::{BlockingReader, Buffered, StatusSender};
use pgproto::replication::{ReplicationMessage, StandbyStatusUpdate, XLogData, pg_now};
use store::{Journal, MasterKeys};
use tokio::sync::Notify;

use crate::CaptureError;
use crate::piece::{Piece, PieceHeader};
use crate::runtime::ClusterRuntime;
use crate::stream::{
    Cut, FOLD_AFTER, MAX_PENDING, STATUS_INTERVAL, after_stored, continuing, pg_time, raise,
};

/// At most this much WAL goes into one append (several frames, one `fdatasync`).
const MAX_BATCH: usize = 8 << 20;
/// The journal's frames are sealed (encrypted and authenticated, as everything in the store)
/// but not compressed: they live at most a few hundred milliseconds before they are folded into
/// `wal/` objects, which are compressed, and zstd was a commit's largest cost after the
/// `fdatasync` (35 µs median of an append's 470 µs on small frames, before this).
const JOURNAL_LEVEL: i32 = 0;

/// WAL in the journal and in no object yet: contiguous, on one timeline, inside one segment.
pub(crate) struct Run {
    pub(crate) header: PieceHeader,
    pub(crate) data: Vec<u8>,
    since: Instant,
    /// The journal's mark after this run's last frame: released once the run is an object.
    mark: u64,
}

/// Counters of the journal thread, logged when a stream ends.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Appends: one write and one `fdatasync` each.
    pub(crate) appends: u64,
    /// Frames (pieces) appended.
    pub(crate) frames: u64,
    /// WAL bytes appended.
    pub(crate) bytes: u64,
    /// Times the thread was woken from sleep.
    pub(crate) wakeups: u64,
}

struct Inbox {
    /// Cut WAL waiting for the thread, contiguous and in LSN order.
    cuts: VecDeque<Cut>,
    bytes: usize,
    /// The end of the WAL durable in the journal, and the server's clock when it sent it.
    durable: Lsn,
    durable_send_time: i64,
    /// Why the thread or the folder stopped; taken by the receive task.
    failed: Option<CaptureError>,
    /// Set when the stream ends: the thread appends what is queued and exits.
    stop: bool,
    /// Set once the thread has exited: the folder folds everything left and ends.
    fold_rest: bool,
    thread_sleeps: bool,
    /// The journal's WAL not yet folded, oldest first.
    unfolded: VecDeque<Run>,
    /// Frames before this mark are stored as objects: the thread releases them.
    release: Option<u64>,
    /// The thread waits for room in the journal: fold whatever is there.
    need_room: bool,
    /// The receive task wants to hear of the next append (it drains, or its queue is full).
    receiver_waits: bool,
    stats: Stats,
}

/// Tells the server (and the vault's status) how far WAL is durable, from any thread, never
/// backwards: the journal thread after each append, the receive task for keepalives.
pub(crate) struct Reporter {
    sender: StatusSender,
    last: Mutex<Lsn>,
    /// Runs before the server hears of it: whoever asks the vault once a commit returned
    /// must see its WAL durable.
    on_durable: Box<dyn Fn(Lsn) + Send + Sync>,
}

impl Reporter {
    pub(crate) fn new(sender: StatusSender, on_durable: Box<dyn Fn(Lsn) + Send + Sync>) -> Reporter {
        Reporter { sender, last: Mutex::new(Lsn(0)), on_durable }
    }

    /// Sends `durable` (or the last position sent, if that is further) as the flush position.
    pub(crate) fn report(&self, durable: Lsn) -> Result<(), CaptureError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let flush = durable.max(*last);
        (self.on_durable)(flush);
        self.sender.send(&StandbyStatusUpdate {
            write: flush,
            flush,
            apply: flush,
            client_time: pg_now(),
            reply_requested: false,
        })?;
        *last = flush;
        Ok(())
    }
}

/// What the receive task, the journal thread and the folder share.
pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    /// Set: the thread reports to the server itself.
    pub(crate) reporter: Option<Reporter>,
    thread_wake: Condvar,
    /// Wakes the receive task: WAL became durable, the inbox has room, or storing failed.
    pub(crate) durable_wake: Notify,
    /// Wakes the folder: a run began (its deadline starts), one is due, the thread needs room,
    /// or the stream ended.
    fold_wake: Notify,
}

impl Shared {
    /// The shared state of a stream whose WAL is durable up to `durable`.
    pub(crate) fn new(durable: Lsn, reporter: Option<Reporter>) -> Arc<Shared> {
        Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                cuts: VecDeque::new(),
                bytes: 0,
                durable,
                durable_send_time: 0,
                failed: None,
                stop: false,
                fold_rest: false,
                thread_sleeps: false,
                unfolded: VecDeque::new(),
                release: None,
                need_room: false,
                receiver_waits: false,
                stats: Stats::default(),
            }),
            reporter,
            thread_wake: Condvar::new(),
            durable_wake: Notify::new(),
            fold_wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues cut WAL for the thread (it must continue what was queued before) and wakes the
    /// thread if it sleeps. A cut that continues the last queued one inside its segment joins
    /// it: one frame, one seal.
    pub(crate) fn submit(&self, cuts: impl IntoIterator<Item = Cut>) {
        let mut g = self.lock();
        for cut in cuts {
            g.bytes += cut.data.len();
            if let Some(last) = g.cuts.back_mut()
                && last.header.end == cut.header.start
                && last.header.timeline == cut.header.timeline
                && !last.header.end.0.is_multiple_of(last.header.segment_size)
                && last.data.len() + cut.data.len() <= MAX_PENDING
            {
                last.data.extend_from_slice(&cut.data);
                last.header.end = cut.header.end;
                last.header.server_time = cut.header.server_time;
                last.send_time = cut.send_time;
                continue;
            }
            g.cuts.push_back(cut);
        }
        if g.thread_sleeps {
            self.thread_wake.notify_one();
        }
    }

    /// The end of the WAL durable in the journal and the server's send time of its last byte,
    /// or why storing failed (once).
    pub(crate) fn durable(&self) -> Result<(Lsn, i64), CaptureError> {
        let mut g = self.lock();
        match g.failed.take() {
            Some(e) => Err(e),
            None => Ok((g.durable, g.durable_send_time)),
        }
    }

    /// The end of the WAL durable in the journal, and the server's send time of its last byte.
    pub(crate) fn position(&self) -> (Lsn, i64) {
        let g = self.lock();
        (g.durable, g.durable_send_time)
    }

    /// Whether `ready(durable, queued bytes)` holds now; if not, the thread wakes the receive
    /// task after its next append (it always does on a failure, and after every append when it
    /// has no [`Reporter`]). Checked and asked under one lock, so no append slips between.
    pub(crate) fn ready_or_wake_me(&self, ready: impl Fn(Lsn, usize) -> bool) -> bool {
        let mut g = self.lock();
        if ready(g.durable, g.bytes) {
            return true;
        }
        g.receiver_waits = true;
        false
    }

    /// Whether the thread or the folder failed (the error stays for [`Shared::durable`]).
    pub(crate) fn has_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// The thread's counters so far.
    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Ends the thread once it has appended what is queued.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.thread_wake.notify_one();
    }

    /// After the thread has exited: the folder folds what is left and ends.
    pub(crate) fn fold_rest(&self) {
        self.lock().fold_rest = true;
        self.fold_wake.notify_one();
    }

    fn fail(&self, e: CaptureError) {
        let mut g = self.lock();
        g.failed.get_or_insert(e);
        drop(g);
        self.thread_wake.notify_one();
        self.durable_wake.notify_one();
    }

    /// The next run to fold, if one is due: closed (a later run exists or it ends a segment),
    /// big, older than [`FOLD_AFTER`], or wanted now (the journal is full, the stream ended).
    /// Otherwise when the oldest run falls due, and whether the folder is done.
    pub(crate) fn next_fold(&self) -> Fold {
        let mut g = self.lock();
        let urgent = g.need_room || g.fold_rest;
        let closed = g.unfolded.len() > 1;
        match g.unfolded.front() {
            Some(r)
                if urgent
                    || closed
                    || r.header.end.0.is_multiple_of(r.header.segment_size)
                    || r.data.len() >= MAX_PENDING
                    || r.since.elapsed() >= FOLD_AFTER =>
            {
                Fold::Run(g.unfolded.pop_front().expect("a run"))
            }
            Some(r) => Fold::At(r.since + FOLD_AFTER),
            None if g.fold_rest => Fold::Done,
            None => Fold::Idle,
        }
    }

    /// A run is stored as an object: its frames may be released.
    pub(crate) fn folded(&self, run_mark: u64) {
        let mut g = self.lock();
        g.release = Some(g.release.map_or(run_mark, |m| m.max(run_mark)));
        if g.thread_sleeps {
            self.thread_wake.notify_one();
        }
    }
}

/// What the folder does next.
pub(crate) enum Fold {
    Run(Run),
    At(Instant),
    Idle,
    Done,
}

/// Starts the journal thread: it appends what the receive task queues, or, given the
/// receiving side of the stream, reads the socket itself. It returns the journal and the
/// receiving side when it ends (the stream's end, or an error, which it leaves in `shared` for
/// the receive task), and wakes the receive task as it does.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    journal: Journal,
    keys: MasterKeys,
    receiving: Option<Receiving>,
) -> std::io::Result<JoinHandle<(Journal, Option<Receiving>)>> {
    std::thread::Builder::new().name("wal-journal".into()).spawn(move || {
        let (mut journal, mut receiving) = (journal, receiving);
        let worked = match &mut receiving {
            Some(r) => receive(&shared, &mut journal, &keys, r),
            None => run(&shared, &mut journal, &keys),
        };
        if let Err(e) = worked {
            shared.fail(e);
        }
        shared.durable_wake.notify_one();
        (journal, receiving)
    })
}

/// The thread's loop when the receive task reads the socket: appends whatever it queued.
fn run(shared: &Shared, journal: &mut Journal, keys: &MasterKeys) -> Result<(), CaptureError> {
    loop {
        let (batch, release) = {
            let mut g = shared.lock();
            while g.cuts.is_empty() && g.release.is_none() && !g.stop {
                g.thread_sleeps = true;
                g = shared.thread_wake.wait(g).unwrap_or_else(|p| p.into_inner());
                g.thread_sleeps = false;
                g.stats.wakeups += 1;
            }
            if g.failed.is_some() {
                return Ok(()); // the folder failed; the receive task reports it
            }
            let mut batch = Vec::new();
            let mut n = 0usize;
            while let Some(c) = g.cuts.front() {
                if !batch.is_empty() && n + c.data.len() > MAX_BATCH {
                    break;
                }
                n += c.data.len();
                batch.push(g.cuts.pop_front().expect("a cut"));
            }
            g.bytes -= n;
            if batch.is_empty() && g.release.is_none() {
                return Ok(()); // stopped, nothing left
            }
            (batch, g.release.take())
        };
        if let Some(mark) = release {
            journal.release_before(mark)?;
        }
        if !batch.is_empty() && !append(shared, journal, keys, batch)? {
            return Ok(());
        }
    }
}

/// Seals `batch` (contiguous cuts), appends it to the journal with one write and one
/// `fdatasync`, publishes the new durable LSN, hands the WAL to the folder and reports the
/// flush position. Returns `false` if the folder failed while the thread waited for room.
fn append(
    shared: &Shared,
    journal: &mut Journal,
    keys: &MasterKeys,
    batch: Vec<Cut>,
) -> Result<bool, CaptureError> {
    let t0 = Instant::now();
    let sealed = batch
        .iter()
        .map(|c| keys.seal(&Piece::encode_parts(&c.header, &c.data), JOURNAL_LEVEL))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaptureError::Internal(format!("sealing a WAL piece: {e}")))?;
    let seal_us = t0.elapsed().as_micros() as u64;
    let lens: Vec<usize> = sealed.iter().map(Vec::len).collect();
    while !journal.fits_all(&lens) {
        if journal.is_empty() {
            return Err(CaptureError::Internal(format!(
                "{} bytes of sealed WAL do not fit in the empty synchronous journal",
                lens.iter().sum::<usize>()
            )));
        }
        // Room comes from folding: ask for it now, and wait for the folder's release.
        let mark = {
            let mut g = shared.lock();
            g.need_room = true;
            shared.fold_wake.notify_one();
            while g.release.is_none() && g.failed.is_none() {
                g.thread_sleeps = true;
                g = shared.thread_wake.wait(g).unwrap_or_else(|p| p.into_inner());
                g.thread_sleeps = false;
                g.stats.wakeups += 1;
            }
            if g.failed.is_some() {
                return Ok(false);
            }
            g.release.take().expect("a release")
        };
        journal.release_before(mark)?;
    }
    let parts: Vec<&[u8]> = sealed.iter().map(Vec::as_slice).collect();
    let marks = journal.append_all(&parts)?;
    let append_us = t0.elapsed().as_micros() as u64;
    let bytes: usize = batch.iter().map(|c| c.data.len()).sum();
    let frames = batch.len();
    let last_end = batch.last().expect("a cut").header.end;
    let (wake_folder, wake_receiver) = {
        let mut g = shared.lock();
        let last = batch.last().expect("a cut");
        g.durable = last.header.end;
        g.durable_send_time = last.send_time;
        g.need_room = false;
        g.stats.appends += 1;
        g.stats.frames += frames as u64;
        g.stats.bytes += bytes as u64;
        let mut wake = false;
        for (cut, mark) in batch.into_iter().zip(marks) {
            match g.unfolded.back_mut() {
                Some(r)
                    if r.header.end == cut.header.start
                        && r.header.timeline == cut.header.timeline
                        && !r.header.end.0.is_multiple_of(r.header.segment_size) =>
                {
                    r.data.extend_from_slice(&cut.data);
                    r.header.end = cut.header.end;
                    r.header.server_time = cut.header.server_time;
                    r.mark = mark;
                }
                _ => {
                    g.unfolded.push_back(Run {
                        header: cut.header,
                        data: cut.data,
                        since: Instant::now(),
                        mark,
                    });
                    wake = true; // the folder learns the new run's deadline
                }
            }
        }
        let r = g.unfolded.back().expect("a run");
        let fold =
            wake || r.header.end.0.is_multiple_of(r.header.segment_size) || r.data.len() >= MAX_PENDING;
        let waits = std::mem::take(&mut g.receiver_waits);
        (fold, waits || shared.reporter.is_none())
    };
    // The server first: a commit is waiting for this.
    if let Some(r) = &shared.reporter {
        r.report(last_end)?;
    }
    if wake_receiver {
        shared.durable_wake.notify_one();
    }
    if wake_folder {
        shared.fold_wake.notify_one();
    }
    // What a synchronous commit waits for (`RUST_LOG=capture=debug`).
    tracing::debug!(
        bytes,
        frames,
        sealed = lens.iter().sum::<usize>(),
        seal_us,
        append_us,
        "WAL in the journal"
    );
    Ok(true)
}

/// What the journal thread needs to read the replication stream itself (a plain socket): the
/// lent receiving side, the header every piece of this stream carries, and where the WAL
/// received so far ends.
pub(crate) struct Receiving {
    pub(crate) reader: BlockingReader,
    pub(crate) rt: Arc<ClusterRuntime>,
    /// Cluster, system, timeline and segment size of this stream's pieces.
    pub(crate) template: PieceHeader,
    pub(crate) received: Lsn,
    pub(crate) server_end: Lsn,
    pub(crate) last_send_time: i64,
}

impl Receiving {
    /// Adds XLogData to `batch`: bytes already received are skipped (a resend), a gap is an
    /// error, and a cut never crosses a segment boundary; a cut that continues the last one
    /// inside its segment joins it.
    fn accept(&mut self, batch: &mut Vec<Cut>, x: &XLogData) -> Result<(), CaptureError> {
        let mut data = continuing(self.received, x.wal_start, &x.data)?;
        self.last_send_time = self.last_send_time.max(x.send_time);
        self.server_end = self.server_end.max(x.wal_end);
        let seg = self.template.segment_size;
        while !data.is_empty() {
            let at = self.received;
            let take = ((seg - at.0 % seg) as usize).min(data.len());
            let end = Lsn(at.0 + take as u64);
            match batch.last_mut() {
                Some(last)
                    if last.header.end == at
                        && !at.0.is_multiple_of(seg)
                        && last.data.len() + take <= MAX_PENDING =>
                {
                    last.data.extend_from_slice(&data[..take]);
                    last.header.end = end;
                    last.header.server_time = pg_time(self.last_send_time);
                    last.send_time = self.last_send_time;
                }
                _ => batch.push(Cut {
                    header: PieceHeader {
                        start: at,
                        end,
                        server_time: pg_time(self.last_send_time),
                        ..self.template.clone()
                    },
                    data: data[..take].to_vec(),
                    send_time: self.last_send_time,
                }),
            }
            self.received = end;
            data = &data[take..];
        }
        Ok(())
    }

    /// The stream's position in the vault's status, as the receive task publishes it.
    fn publish(&self, durable: Lsn, durable_send_time: i64) {
        let server_end = self.server_end.max(self.received);
        let lag_bytes = server_end.0.saturating_sub(durable.0);
        let lag_seconds =
            if lag_bytes == 0 { 0.0 } else { (self.last_send_time - durable_send_time).max(0) as f64 / 1e6 };
        let now = self.rt.now();
        self.rt.update(|s| {
            s.received_lsn = Some(self.received);
            raise(&mut s.durable_lsn, durable);
            s.server_lsn = Some(server_end);
            s.lag_bytes = Some(lag_bytes);
            s.lag_seconds = Some(lag_seconds);
            s.last_contact = Some(now);
        });
    }
}

/// The thread's loop when it reads the socket itself, `pg_receivewal`'s: wait for the server,
/// take every whole message read, append the WAL among them with one `fdatasync`, report the
/// flush position, and again. Ends when asked to stop (everything read is then durable), when
/// the server ends or interrupts the stream (that message is left for the receive task), or on
/// an error (left in `shared`).
fn receive(
    shared: &Shared,
    journal: &mut Journal,
    keys: &MasterKeys,
    r: &mut Receiving,
) -> Result<(), CaptureError> {
    let reporter = shared.reporter.as_ref().ok_or_else(|| {
        CaptureError::Internal("reading the stream on the journal thread needs a reporter".into())
    })?;
    let mut last_status = Instant::now();
    loop {
        let release = {
            let mut g = shared.lock();
            if g.failed.is_some() || g.stop {
                return Ok(());
            }
            g.release.take()
        };
        if let Some(mark) = release {
            journal.release_before(mark)?;
        }
        let (mut batch, mut bytes, mut reply, mut other) = (Vec::new(), 0usize, false, false);
        loop {
            match r.reader.next_buffered()? {
                Buffered::Message(ReplicationMessage::XLogData(x)) => {
                    bytes += x.data.len();
                    r.accept(&mut batch, &x)?;
                    if bytes >= MAX_BATCH {
                        break;
                    }
                }
                Buffered::Message(ReplicationMessage::PrimaryKeepalive(k)) => {
                    r.server_end = r.server_end.max(k.wal_end);
                    r.last_send_time = r.last_send_time.max(k.send_time);
                    reply |= k.reply_requested;
                }
                Buffered::Other => {
                    other = true;
                    break;
                }
                // Everything read so far is taken: make it durable before waiting for more
                // (group commit: what arrives during the fdatasync is the next group).
                Buffered::NeedMore if !batch.is_empty() || reply => break,
                Buffered::NeedMore => {
                    if !r.reader.read()? {
                        break; // nothing within the wait: look at stop and release
                    }
                }
            }
        }
        if !batch.is_empty() {
            if !append(shared, journal, keys, batch)? {
                return Ok(());
            }
            last_status = Instant::now();
        } else if reply || last_status.elapsed() >= STATUS_INTERVAL {
            reporter.report(shared.position().0)?;
            last_status = Instant::now();
        }
        let (durable, durable_send_time) = shared.position();
        r.publish(durable, durable_send_time);
        if other {
            return Ok(());
        }
    }
}

/// Folds the journal's WAL into ordinary objects, in LSN order, one run at a time, and tells the
/// thread which frames it may release; ends after [`Shared::fold_rest`] once nothing is left.
/// A failure is left in `shared` for the receive task. Returns whether it folded everything.
pub(crate) async fn folder(
    rt: Arc<ClusterRuntime>,
    shared: Arc<Shared>,
    seg_size: u64,
    system_id: String,
) -> bool {
    let worked: Result<(), CaptureError> = async {
        loop {
            let woken = shared.fold_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match shared.next_fold() {
                Fold::Done => return Ok(()),
                Fold::Idle => woken.await,
                Fold::At(t) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                Fold::Run(run) => {
                    let (tli, end) = (TimelineId(run.header.timeline), run.header.end);
                    rt.archive.store_piece(run.header, &run.data, rt.host.retain_until()).await?;
                    rt.durable.send_replace((tli, end));
                    shared.folded(run.mark);
                    after_stored(&rt, tli, end, seg_size, &system_id).await?;
                }
            }
        }
    }
    .await;
    match worked {
        Ok(()) => true,
        Err(e) => {
            shared.fail(e);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The WAL byte at `lsn` in these tests: a hash of its position, so that it does not
    /// compress and every byte read back can be checked.
    fn byte(lsn: u64) -> u8 {
        let mut z = lsn.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }

    fn cut(start: u64, len: u64) -> Cut {
        Cut {
            header: crate::piece::test_header(start, start + len),
            data: (start..start + len).map(byte).collect(),
            send_time: (start + len) as i64,
        }
    }

    /// What a crash would leave: the journal file read back as recovery reads it, every byte
    /// checked; the end of the contiguous WAL from `from` (the end of what is folded).
    fn journal_end(path: &std::path::Path, keys: &MasterKeys, from: u64) -> u64 {
        let (_, frames) = Journal::open(path, 0).unwrap();
        let mut end = from;
        for f in frames {
            let p = Piece::decode(&keys.open(&f).unwrap()).unwrap();
            let (s, e) = (p.header.start.0, p.header.end.0);
            assert!(p.data.iter().zip(s..e).all(|(&b, lsn)| b == byte(lsn)), "the bytes of {s}..{e}");
            if s <= end {
                end = end.max(e);
            }
        }
        end
    }

    /// Plays the folder: takes every run due (all of them while the thread waits for room) and
    /// releases it, in LSN order, until the durable LSN reaches `want` or `patience` passes.
    fn fold_until(shared: &Shared, folded: &mut u64, want: u64, patience: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            while let Fold::Run(r) = shared.next_fold() {
                assert_eq!(r.header.start.0, *folded, "runs are folded in LSN order");
                *folded = r.header.end.0;
                shared.folded(r.mark);
            }
            let d = shared.durable().unwrap().0.0;
            if d >= want || t0.elapsed() > patience {
                return d;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_durable(shared: &Shared, want: u64, patience: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let d = shared.durable().unwrap().0.0;
            if d >= want || t0.elapsed() > patience {
                return d;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The journal thread publishes a durable LSN only for WAL whose frames are in the journal
    /// file, read back as recovery reads it, whatever the interleaving of submissions; a full
    /// journal holds the durable LSN until the folder releases frames; WAL that can never fit
    /// fails without moving it.
    #[test]
    fn the_journal_thread_never_reports_wal_the_journal_does_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.journal");
        let keys = MasterKeys::from_bytes([1; 32], [2; 32]);
        let (journal, _) = Journal::open(&path, 256 << 10).unwrap();
        let shared = Shared::new(Lsn(0), None);
        let thread = spawn(shared.clone(), journal, keys.clone(), None).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };

        // Submissions of random sizes, the folder now and then.
        let (mut received, mut folded) = (0u64, 0u64);
        for i in 0..400 {
            // The receive task's backpressure, scaled to this journal: queued cuts merge, and
            // one bigger than the empty journal could never be appended.
            while !shared.ready_or_wake_me(|_, queued| queued < 64 << 10) {
                fold_until(&shared, &mut folded, 0, Duration::ZERO);
                std::thread::sleep(Duration::from_millis(1));
            }
            let len = 1 + next() % 3000;
            shared.submit([cut(received, len)]);
            received += len;
            let (d, send_time) = shared.durable().unwrap();
            assert!(d.0 <= received);
            assert!(journal_end(&path, &keys, folded) >= d.0, "published {d} beyond the journal");
            if d.0 > 0 {
                assert_eq!(send_time, d.0 as i64, "the send time is that of the durable WAL's last byte");
            }
            if i % 50 == 49 {
                fold_until(&shared, &mut folded, 0, Duration::ZERO);
            }
        }
        assert_eq!(fold_until(&shared, &mut folded, received, Duration::from_secs(20)), received);
        let stats = shared.stats();
        assert!(stats.appends >= 1 && stats.appends <= stats.frames && stats.frames <= 400, "{stats:?}");

        // No folder: the journal fills, and the durable LSN stops where the journal does.
        let mut queued = received;
        loop {
            shared.submit([cut(queued, 40_000)]);
            queued += 40_000;
            if wait_durable(&shared, queued, Duration::from_millis(500)) < queued {
                break;
            }
            assert!(queued < (4 << 20), "a 256 KiB journal never filled");
        }
        let stuck = shared.durable().unwrap().0.0;
        assert!(journal_end(&path, &keys, folded) >= stuck);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            shared.durable().unwrap().0.0,
            stuck,
            "nothing more is reported while the journal is full"
        );
        // The folder releases: the rest becomes durable.
        assert_eq!(fold_until(&shared, &mut folded, queued, Duration::from_secs(20)), queued);
        assert!(journal_end(&path, &keys, folded) >= queued);

        // WAL that can never fit (bigger than the empty journal): an error, the LSN stays.
        fold_until(&shared, &mut folded, 0, Duration::ZERO);
        shared.submit([cut(queued, 300_000)]);
        let t0 = Instant::now();
        let err = loop {
            while let Fold::Run(r) = shared.next_fold() {
                shared.folded(r.mark);
            }
            match shared.durable() {
                Err(e) => break e,
                Ok((d, _)) => assert_eq!(d.0, queued),
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no error");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(err.to_string().contains("do not fit"), "{err}");
        shared.stop();
        thread.join().unwrap();
        assert_eq!(shared.durable().unwrap().0.0, queued);
    }
}
