//! An async replication connection on tokio: Unix socket or TCP, optional TLS, SCRAM / md5 /
//! trust authentication, replication commands, WAL streaming and `BASE_BACKUP`.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfmt::{Lsn, TimelineId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::Authenticator;
use crate::basebackup::{BackupEvent, BaseBackupStream};
use crate::message::{BackendMessage, Decoder, frontend};
use crate::replication::{
    CreatedSlot, IdentifySystem, LsnTimeline, MIN_SERVER_VERSION_NUM, ReplicationMessage, ResultSet,
    SlotInfo, StandbyStatusUpdate, TimelineHistoryFile, commands,
};
use crate::{Error, classify_slot_error, classify_startup_error};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A Unix socket `<dir>/.s.PGSQL.<port>`.
    Unix {
        /// The socket directory (`unix_socket_directories`).
        dir: PathBuf,
        /// The port that names the socket file.
        port: u16,
    },
    /// A TCP address.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
            Host::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// TLS policy, as libpq's `sslmode` (TLS is never used over Unix sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// TLS required, certificate not verified (protects against passive eavesdroppers only).
    Require,
    /// TLS required and the certificate verified against these PEM CA certificates and the
    /// host name.
    VerifyFull {
        /// PEM-encoded CA certificates.
        ca_pem: Vec<u8>,
    },
}

/// How to connect.
#[derive(Clone)]
pub struct Config {
    /// The server.
    pub host: Host,
    /// The role.
    pub user: String,
    /// The password, if the server asks for one.
    pub password: Option<String>,
    /// Where the password came from, named in "authentication failed" messages.
    pub password_source: String,
    /// `application_name`, shown in `pg_stat_replication`.
    pub application_name: String,
    /// TLS policy.
    pub ssl: SslMode,
    /// The time allowed for connecting and authenticating.
    pub connect_timeout: Duration,
    /// `None`: a replication connection (`replication=true`). `Some(db)`: an ordinary,
    /// read-only session to database `db` (simple queries only), as
    /// [`ReplicationConnection::connect_database`] opens.
    pub database: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("application_name", &self.application_name)
            .field("ssl", &self.ssl)
            .field("database", &self.database)
            .finish()
    }
}

impl Config {
    /// A config with defaults: no password, `application_name` `holdfast`, `sslmode` prefer,
    /// 30 s connect timeout.
    pub fn new(host: Host, user: &str) -> Self {
        Config {
            host,
            user: user.to_owned(),
            password: None,
            password_source: "the connection settings".into(),
            application_name: "holdfast".into(),
            ssl: SslMode::default(),
            connect_timeout: Duration::from_secs(30),
            database: None,
        }
    }

    /// Sets the password and where it came from.
    pub fn password(mut self, password: &str, source: &str) -> Self {
        self.password = Some(password.to_owned());
        self.password_source = source.to_owned();
        self
    }
}

/// A byte stream to the server: Unix socket, TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What [`ReplicationConnection::next_message`] returns while streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes.
    XLogData(crate::replication::XLogData),
    /// A keepalive; answer with [`ReplicationConnection::send_status`] when it asks.
    Keepalive(crate::replication::PrimaryKeepalive),
    /// The server ended the stream at the end of a timeline; the next one starts here.
    EndOfTimeline(Option<LsnTimeline>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Streaming,
    /// The server sent CopyDone at the end of a timeline; our CopyDone and the result set
    /// that follows are in progress (kept here so that a cancelled read loses nothing).
    Ending,
    BaseBackup,
    /// Streaming, with the receiving side lent to a [`BlockingReader`].
    Lent,
}

/// A connection in replication mode (`replication=true`).
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    decoder: Decoder,
    out: Vec<u8>,
    params: HashMap<String, String>,
    version_num: u32,
    backend_pid: i32,
    tls: bool,
    mode: Mode,
    backup: Option<BaseBackupStream>,
    notices: Vec<crate::ServerError>,
    /// Messages read so far after the end of a timeline (see [`Mode::Ending`]).
    ending: Vec<BackendMessage>,
    /// A second handle on a plain (not TLS) socket, for [`ReplicationConnection::status_sender`]
    /// and [`ReplicationConnection::lend_reader`].
    plain: Option<PlainSocket>,
    /// The socket handle status updates are written on once a [`StatusSender`] exists; `None`
    /// inside once the stream ends on this side.
    status_sock: Option<Arc<Mutex<Option<std::fs::File>>>>,
}

/// Writes standby status updates on a plain (not TLS) streaming connection from any thread,
/// with ordinary blocking calls on a second handle of the socket: for a WAL receiver that makes
/// WAL durable on its own thread and reports it from there, with no hop through the async
/// runtime (as `pg_receivewal` does in its one loop). Each update is written whole under a lock
/// that the connection's own status updates take too, so their bytes never interleave; once the
/// connection ends the stream (its CopyDone), updates are dropped, never sent after it.
#[derive(Clone)]
pub struct StatusSender {
    sock: Arc<Mutex<Option<std::fs::File>>>,
}

impl std::fmt::Debug for StatusSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSender").finish_non_exhaustive()
    }
}

impl StatusSender {
    /// Sends one status update (blocking). `Ok` without sending once the stream has ended.
    pub fn send(&self, status: &StandbyStatusUpdate) -> Result<(), Error> {
        let mut msg = Vec::with_capacity(40);
        frontend::copy_data(&mut msg, &status.encode());
        write_status(&self.sock, &msg)
    }
}

/// Writes `msg` whole on the shared socket handle. The socket is non-blocking (tokio's): a full
/// send buffer is waited out in short sleeps, for at most 30 s.
fn write_status(sock: &Mutex<Option<std::fs::File>>, msg: &[u8]) -> Result<(), Error> {
    let guard = sock.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut file) = guard.as_ref() else { return Ok(()) };
    let (mut buf, t0) = (msg, Instant::now());
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(Error::Closed),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock && t0.elapsed() < Duration::from_secs(30) =>
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How much a [`BlockingReader`] reads at most with one call.
const READ_CHUNK: usize = 256 << 10;

/// A second handle on a plain socket, and what kind of socket it is.
enum PlainSocket {
    Tcp(OwnedFd),
    Unix(OwnedFd),
}

impl PlainSocket {
    fn fd(&self) -> &OwnedFd {
        match self {
            PlainSocket::Tcp(fd) | PlainSocket::Unix(fd) => fd,
        }
    }

    /// A third handle, as a std socket (blocking calls, timeouts).
    fn blocking(&self) -> Result<BlockingSocket, Error> {
        Ok(match self {
            PlainSocket::Tcp(fd) => BlockingSocket::Tcp(std::net::TcpStream::from(fd.try_clone()?)),
            PlainSocket::Unix(fd) => {
                BlockingSocket::Unix(std::os::unix::net::UnixStream::from(fd.try_clone()?))
            }
        })
    }
}

/// A std socket of either kind.
enum BlockingSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl BlockingSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        match self {
            BlockingSocket::Tcp(s) => s.read(buf),
            BlockingSocket::Unix(s) => s.read(buf),
        }
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            BlockingSocket::Tcp(s) => s.set_nonblocking(on),
            BlockingSocket::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            BlockingSocket::Tcp(s) => s.set_read_timeout(t),
            BlockingSocket::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            BlockingSocket::Tcp(s) => s.set_write_timeout(t),
            BlockingSocket::Unix(s) => s.set_write_timeout(t),
        }
    }
}

/// What a [`BlockingReader`] holds next.
#[derive(Debug)]
pub enum Buffered {
    /// WAL or a keepalive.
    Message(ReplicationMessage),
    /// No whole message yet: [`BlockingReader::read`] more.
    NeedMore,
    /// A message that ends or interrupts the stream (CopyDone, an error, CommandComplete…):
    /// left unread for the connection, after [`ReplicationConnection::take_back`].
    Other,
}

/// The receiving side of a plain streaming connection, lent to a thread
/// ([`ReplicationConnection::lend_reader`]): blocking reads, no async runtime.
pub struct BlockingReader {
    sock: BlockingSocket,
    decoder: Decoder,
    scratch: Vec<u8>,
    /// ParameterStatus values and notices read meanwhile, handed back with the stream.
    params: Vec<(String, String)>,
    notices: Vec<crate::ServerError>,
}

impl std::fmt::Debug for BlockingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingReader").finish_non_exhaustive()
    }
}

/// Notices kept while streaming (the first 100: a server that floods them cannot grow memory).
fn keep_notice(notices: &mut Vec<crate::ServerError>, n: crate::ServerError) {
    if notices.len() < 100 {
        notices.push(n);
    }
}

impl BlockingReader {
    /// The next whole message already read, without IO.
    pub fn next_buffered(&mut self) -> Result<Buffered, Error> {
        loop {
            match self.decoder.peek_tag() {
                None => return Ok(Buffered::NeedMore),
                Some(b'd' | b'S' | b'N') => {}
                Some(_) => return Ok(Buffered::Other),
            }
            match self.decoder.next_message()? {
                None => return Ok(Buffered::NeedMore),
                Some(BackendMessage::CopyData(data)) => {
                    return Ok(Buffered::Message(ReplicationMessage::parse(&data)?));
                }
                Some(BackendMessage::ParameterStatus { name, value }) => self.params.push((name, value)),
                Some(BackendMessage::NoticeResponse(n)) => keep_notice(&mut self.notices, n),
                Some(other) => {
                    return Err(Error::Protocol(format!("unexpected {} while streaming", other.name())));
                }
            }
        }
    }

    /// Reads what the socket holds (one call, at most 256 KiB), waiting for it at most the
    /// time given to [`ReplicationConnection::lend_reader`]. Returns `false` if nothing came.
    pub fn read(&mut self) -> Result<bool, Error> {
        loop {
            match self.sock.read(&mut self.scratch) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => {
                    self.decoder.feed(&self.scratch[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("server_version_num", &self.version_num)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ReplicationConnection {
    /// Connects, negotiates TLS, authenticates, and checks the server is 14 or later.
    pub async fn connect(cfg: &Config) -> Result<Self, Error> {
        let target = cfg.host.to_string();
        tokio::time::timeout(cfg.connect_timeout, Self::connect_inner(cfg, true))
            .await
            .map_err(|_| Error::Timeout(target))?
    }

    /// Opens an ordinary read-write session to database `database`, without the catalog
    /// session's read-only default and timeouts: for a client application (the demo's shop
    /// workload, which writes through the gate). Only [`simple_query`](Self::simple_query) is
    /// meaningful on it.
    pub async fn connect_read_write(cfg: &Config, database: &str) -> Result<Self, Error> {
        let mut cfg = cfg.clone();
        cfg.database = Some(database.to_owned());
        let target = cfg.host.to_string();
        tokio::time::timeout(cfg.connect_timeout, Self::connect_inner(&cfg, false))
            .await
            .map_err(|_| Error::Timeout(target))?
    }

    /// Opens an ordinary (non-replication) session to database `database` with the same
    /// settings, for catalog queries. Its transactions are read-only by default
    /// (`default_transaction_read_only`, set at startup, a guard against mistakes — the real
    /// limit is a role without grants), and it gives up on locks after 2 s and on statements
    /// after 60 s, so that it never holds up the server it watches. Only
    /// [`simple_query`](Self::simple_query) is meaningful on it.
    pub async fn connect_database(cfg: &Config, database: &str) -> Result<Self, Error> {
        let mut cfg = cfg.clone();
        cfg.database = Some(database.to_owned());
        Self::connect(&cfg).await
    }

    async fn connect_inner(cfg: &Config, guarded: bool) -> Result<Self, Error> {
        let (io, tls, plain) = open_io(cfg).await?;
        let mut conn = ReplicationConnection {
            io,
            decoder: Decoder::new(),
            out: Vec::new(),
            params: HashMap::new(),
            version_num: 0,
            backend_pid: 0,
            tls,
            mode: Mode::Idle,
            backup: None,
            notices: Vec::new(),
            ending: Vec::new(),
            plain,
            status_sock: None,
        };
        conn.startup(cfg, guarded).await?;
        Ok(conn)
    }

    async fn startup(&mut self, cfg: &Config, guarded: bool) -> Result<(), Error> {
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("application_name", cfg.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        match &cfg.database {
            None => params.push(("replication", "true")),
            Some(db) if !guarded => params.push(("database", db.as_str())),
            Some(db) => {
                params.push(("database", db.as_str()));
                // Never wait long behind someone else's lock on the protected server.
                params.push((
                    "options",
                    "-c default_transaction_read_only=on -c lock_timeout=2s -c statement_timeout=60s",
                ));
            }
        }
        frontend::startup(&mut self.out, &params);
        self.flush().await?;
        let mut auth = Authenticator::new(&cfg.user, cfg.password.as_deref().map(str::as_bytes));
        loop {
            match self.read_message().await? {
                BackendMessage::Authentication(req) => {
                    auth.on_request(req, &mut self.out)?;
                    self.flush().await?;
                }
                BackendMessage::BackendKeyData { pid, .. } => self.backend_pid = pid,
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::ErrorResponse(e) => {
                    return Err(classify_startup_error(e, &cfg.user, &cfg.password_source));
                }
                BackendMessage::NoticeResponse(_) => {}
                other => {
                    return Err(Error::Protocol(format!("unexpected {} during startup", other.name())));
                }
            }
        }
        let version = self.params.get("server_version").cloned().unwrap_or_default();
        self.version_num = parse_server_version(&version)
            .ok_or_else(|| Error::Protocol(format!("unparseable server_version {version:?}")))?;
        if self.version_num < MIN_SERVER_VERSION_NUM {
            return Err(Error::ServerTooOld { version });
        }
        Ok(())
    }

    /// `server_version_num` of the server, e.g. 150008.
    pub fn server_version_num(&self) -> u32 {
        self.version_num
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`…).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server process id of this connection's WAL sender.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Notices received so far (drained).
    pub fn take_notices(&mut self) -> Vec<crate::ServerError> {
        std::mem::take(&mut self.notices)
    }

    /// Writes out what is queued. Cancel-safe: bytes leave the queue only once written, so a
    /// cancelled flush resumes where it stopped and never sends anything twice. The transport is
    /// flushed every time (a no-op when nothing is buffered), so a flush cancelled after the
    /// last write still pushes out what a TLS layer holds on the next call.
    async fn flush(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            let n = self.io.write(&self.out).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.out.drain(..n);
        }
        self.io.flush().await?;
        Ok(())
    }

    async fn read_message(&mut self) -> Result<BackendMessage, Error> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                match m {
                    BackendMessage::ParameterStatus { name, value } => {
                        self.params.insert(name, value);
                    }
                    BackendMessage::NoticeResponse(n) if self.mode != Mode::Idle => {
                        keep_notice(&mut self.notices, n)
                    }
                    m => return Ok(m),
                }
                continue;
            }
            let buf = self.decoder.buffer_mut();
            if buf.capacity() - buf.len() < 8192 {
                buf.reserve(64 * 1024);
            }
            let n = self.io.read_buf(buf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    fn check_idle(&self) -> Result<(), Error> {
        if self.mode != Mode::Idle {
            return Err(Error::InvalidArgument(format!(
                "the connection is busy ({:?}): finish that first",
                self.mode
            )));
        }
        Ok(())
    }

    /// Runs a simple query (a replication command or, on a database connection, SQL) and
    /// collects its result sets. An ErrorResponse becomes [`Error::Server`].
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<ResultSet>, Error> {
        self.check_idle()?;
        frontend::query(&mut self.out, sql);
        self.flush().await?;
        let mut msgs = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::ErrorResponse(e) => error = Some(e),
                m @ (BackendMessage::CopyBothResponse(_)
                | BackendMessage::CopyOutResponse(_)
                | BackendMessage::CopyInResponse(_)) => {
                    return Err(Error::Protocol(format!(
                        "{sql:?} started a COPY ({}); use the dedicated method",
                        m.name()
                    )));
                }
                m => msgs.push(m),
            }
        }
        match error {
            Some(e) => Err(Error::Server(e)),
            None => Ok(ResultSet::collect(&msgs)),
        }
    }

    async fn single_result(&mut self, sql: &str) -> Result<ResultSet, Error> {
        self.simple_query(sql)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol(format!("{sql:?} returned no result")))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, Error> {
        IdentifySystem::from_result(&self.single_result(&commands::identify_system()).await?)
    }

    /// `TIMELINE_HISTORY tli` (there is none for timeline 1).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<TimelineHistoryFile, Error> {
        TimelineHistoryFile::from_result(&self.single_result(&commands::timeline_history(tli)).await?)
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL (RESERVE_WAL)`.
    pub async fn create_physical_slot(&mut self, name: &str, temporary: bool) -> Result<CreatedSlot, Error> {
        let cmd = commands::create_physical_slot(name, temporary, true, self.version_num)?;
        CreatedSlot::from_result(&self.single_result(&cmd).await?)
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+); [`Error::SlotNotFound`] when missing.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<SlotInfo, Error> {
        let cmd = commands::read_replication_slot(name, self.version_num)?;
        SlotInfo::from_result(&self.single_result(&cmd).await?)?
            .ok_or_else(|| Error::SlotNotFound { slot: name.to_owned() })
    }

    /// `DROP_REPLICATION_SLOT name WAIT`.
    pub async fn drop_replication_slot(&mut self, name: &str) -> Result<(), Error> {
        let cmd = commands::drop_replication_slot(name, true)?;
        self.simple_query(&cmd)
            .await
            .map_err(|e| match e {
                Error::Server(s) => classify_slot_error(s, name),
                e => e,
            })
            .map(drop)
    }

    /// `START_REPLICATION [SLOT name] PHYSICAL start [TIMELINE tli]`; then call
    /// [`next_message`](Self::next_message) until done.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<TimelineId>,
    ) -> Result<(), Error> {
        self.check_idle()?;
        let cmd = commands::start_replication(slot, start, timeline)?;
        frontend::query(&mut self.out, &cmd);
        self.flush().await?;
        loop {
            match self.read_message().await? {
                BackendMessage::CopyBothResponse(_) => {
                    self.mode = Mode::Streaming;
                    return Ok(());
                }
                BackendMessage::ErrorResponse(e) => {
                    self.drain_until_ready().await?;
                    return Err(match slot {
                        Some(s) => classify_slot_error(e, s),
                        None => Error::Server(e),
                    });
                }
                BackendMessage::NoticeResponse(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} after START_REPLICATION",
                        other.name()
                    )));
                }
            }
        }
    }

    async fn drain_until_ready(&mut self) -> Result<Vec<BackendMessage>, Error> {
        let mut msgs = Vec::new();
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery(_) => return Ok(msgs),
                m => msgs.push(m),
            }
        }
    }

    /// The next streaming message: WAL, a keepalive, or the end of the timeline.
    ///
    /// Cancel-safe (it is meant for `tokio::select!`): every await either completes or leaves
    /// its progress in the connection (bytes in the decoder's buffer, the queued CopyDone, the
    /// messages after it), and the next call goes on from there.
    pub async fn next_message(&mut self) -> Result<StreamEvent, Error> {
        match self.mode {
            Mode::Streaming => {}
            Mode::Ending => return self.finish_stream().await.map(StreamEvent::EndOfTimeline),
            _ => return Err(Error::InvalidArgument("not streaming".into())),
        }
        match self.read_message().await? {
            BackendMessage::CopyData(data) => match ReplicationMessage::parse(&data)? {
                ReplicationMessage::XLogData(x) => Ok(StreamEvent::XLogData(x)),
                ReplicationMessage::PrimaryKeepalive(k) => Ok(StreamEvent::Keepalive(k)),
            },
            BackendMessage::CopyDone => {
                // The server reached the end of the timeline; acknowledge and read on.
                self.end_status_sender();
                frontend::copy_done(&mut self.out);
                self.mode = Mode::Ending;
                self.ending.clear();
                let next = self.finish_stream().await?;
                Ok(StreamEvent::EndOfTimeline(next))
            }
            BackendMessage::ErrorResponse(e) => {
                self.mode = Mode::Idle;
                Err(Error::Server(e))
            }
            // A clean shutdown (or a switchover) ends the stream with CommandComplete and no
            // CopyDone: the server ended it, nothing went wrong on this side.
            BackendMessage::CommandComplete(_) => {
                self.mode = Mode::Idle;
                Err(Error::StreamEnded)
            }
            other => Err(Error::Protocol(format!("unexpected {} while streaming", other.name()))),
        }
    }

    async fn finish_stream(&mut self) -> Result<Option<LsnTimeline>, Error> {
        self.flush().await?;
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery(_) => break,
                m => self.ending.push(m),
            }
        }
        let msgs = std::mem::take(&mut self.ending);
        self.mode = Mode::Idle;
        if let Some(BackendMessage::ErrorResponse(e)) =
            msgs.iter().find(|m| matches!(m, BackendMessage::ErrorResponse(_)))
        {
            return Err(Error::Server(e.clone()));
        }
        let sets = ResultSet::collect(&msgs);
        sets.iter()
            .find(|s| s.columns.iter().any(|c| c.name == "next_tli"))
            .map(LsnTimeline::from_next_timeline_result)
            .transpose()
    }

    /// Sends a standby status update (answer keepalives that ask, and report progress so the
    /// slot can release WAL).
    pub async fn send_status(&mut self, status: StandbyStatusUpdate) -> Result<(), Error> {
        if self.mode != Mode::Streaming {
            return Err(Error::InvalidArgument("not streaming".into()));
        }
        if let Some(sock) = self.status_sock.clone() {
            // A status sender exists: through its lock, so that updates never interleave.
            self.flush().await?;
            let mut msg = Vec::with_capacity(40);
            frontend::copy_data(&mut msg, &status.encode());
            return write_status(&sock, &msg);
        }
        frontend::copy_data(&mut self.out, &status.encode());
        self.flush().await
    }

    /// A [`StatusSender`] for this streaming connection, if it is a plain socket (none over TLS:
    /// the TLS session's state lives in this connection). From then on this connection's own
    /// [`send_status`](Self::send_status) writes through the same lock.
    pub fn status_sender(&mut self) -> Option<StatusSender> {
        if let Some(sock) = &self.status_sock {
            return Some(StatusSender { sock: sock.clone() });
        }
        let file = std::fs::File::from(self.plain.as_ref()?.fd().try_clone().ok()?);
        let sock = Arc::new(Mutex::new(Some(file)));
        self.status_sock = Some(sock.clone());
        Some(StatusSender { sock })
    }

    /// Lends the receiving side of this plain streaming connection to a [`BlockingReader`]: a
    /// thread reads the stream with ordinary blocking calls (as `pg_receivewal` does in its one
    /// loop), with no async runtime between the socket and what it does with the WAL. `None`
    /// over TLS (the TLS session's state lives in this connection) or when not streaming.
    ///
    /// Until [`take_back`](Self::take_back), this connection refuses to read or send (its mode
    /// says the stream is lent) and the socket is in blocking mode, reads waiting at most `wait`;
    /// status updates go through a [`StatusSender`].
    pub fn lend_reader(&mut self, wait: Duration) -> Result<Option<BlockingReader>, Error> {
        if self.mode != Mode::Streaming || !self.out.is_empty() {
            return Ok(None);
        }
        let Some(plain) = &self.plain else { return Ok(None) };
        let sock = plain.blocking()?;
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(wait))?;
        // What a status update may wait for a full send buffer (as `write_status` without it).
        sock.set_write_timeout(Some(Duration::from_secs(30)))?;
        self.mode = Mode::Lent;
        Ok(Some(BlockingReader {
            sock,
            decoder: std::mem::take(&mut self.decoder),
            scratch: vec![0; READ_CHUNK],
            params: Vec::new(),
            notices: Vec::new(),
        }))
    }

    /// Takes back the receiving side lent to `reader`: what it read and did not take (a message
    /// other than WAL or a keepalive, which [`next_message`](Self::next_message) then returns)
    /// stays buffered, and the socket is non-blocking again.
    pub fn take_back(&mut self, reader: BlockingReader) -> Result<(), Error> {
        if self.mode != Mode::Lent {
            return Err(Error::InvalidArgument("the stream was not lent".into()));
        }
        let BlockingReader { sock, decoder, params, notices, .. } = reader;
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        sock.set_nonblocking(true)?;
        self.decoder = decoder;
        self.params.extend(params);
        for n in notices {
            keep_notice(&mut self.notices, n);
        }
        self.mode = Mode::Streaming;
        Ok(())
    }

    /// Stops every [`StatusSender`]: nothing may follow this side's CopyDone.
    fn end_status_sender(&mut self) {
        if let Some(sock) = self.status_sock.take() {
            sock.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Ends streaming from the client side (CopyDone) and returns the connection to idle.
    pub async fn stop_replication(&mut self) -> Result<Option<LsnTimeline>, Error> {
        if self.mode != Mode::Streaming {
            return Err(Error::InvalidArgument("not streaming".into()));
        }
        self.end_status_sender();
        frontend::copy_done(&mut self.out);
        self.flush().await?;
        // WAL already in flight is discarded until the server's CopyDone.
        loop {
            match self.read_message().await? {
                BackendMessage::CopyDone => break,
                BackendMessage::CopyData(_) => {}
                BackendMessage::ErrorResponse(e) => {
                    self.drain_until_ready().await?;
                    self.mode = Mode::Idle;
                    return Err(Error::Server(e));
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} while stopping replication",
                        other.name()
                    )));
                }
            }
        }
        self.finish_stream().await
    }

    /// Sends `BASE_BACKUP` in the server's syntax; then call
    /// [`next_backup_event`](Self::next_backup_event) until it returns `None`.
    pub async fn start_base_backup(&mut self, options: &commands::BaseBackupOptions) -> Result<(), Error> {
        self.check_idle()?;
        let cmd = commands::base_backup(options, self.version_num)?;
        frontend::query(&mut self.out, &cmd);
        self.flush().await?;
        self.mode = Mode::BaseBackup;
        self.backup = Some(BaseBackupStream::new(self.version_num));
        Ok(())
    }

    /// The next base backup event; `None` once the backup has ended and the connection is
    /// idle again.
    pub async fn next_backup_event(&mut self) -> Result<Option<BackupEvent>, Error> {
        loop {
            let Some(stream) = self.backup.as_mut() else {
                return Ok(None);
            };
            if let Some(e) = stream.next_event() {
                return Ok(Some(e));
            }
            if stream.is_done() {
                self.backup = None;
                self.mode = Mode::Idle;
                return Ok(None);
            }
            let msg = self.read_message().await?;
            let stream = self.backup.as_mut().expect("checked above");
            if let Err(e) = stream.on_message(msg) {
                self.backup = None;
                if matches!(e, Error::Server(_)) {
                    self.drain_until_ready().await?;
                    self.mode = Mode::Idle;
                }
                return Err(e);
            }
        }
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), Error> {
        frontend::terminate(&mut self.out);
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

/// `15.8 (Debian 15.8-1)` → 150008; `9.6.24` → 90624; `17devel` → 170000.
pub fn parse_server_version(v: &str) -> Option<u32> {
    let head: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = head.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let second: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + second)
    } else {
        let third: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(major * 10_000 + second * 100 + third)
    }
}

async fn tls_connect(
    tcp: tokio::net::TcpStream,
    host: &str,
    mode: &SslMode,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Error> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let config = match mode {
        SslMode::VerifyFull { ca_pem } => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
                roots.add(cert).map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Tls("no CA certificate given for verify-full".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Tls(format!("invalid server name {host:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {host} failed: {e}")))
}

/// `sslmode=require`/`prefer`: encrypt without checking who is at the other end, as libpq
/// does. Signatures are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Bytes of a base backup, collected per archive, for callers that want it all in memory.
#[derive(Clone, Debug, Default)]
pub struct CollectedBackup {
    /// The start position.
    pub start: Option<LsnTimeline>,
    /// (archive name, content) in order.
    pub archives: Vec<(String, Vec<u8>)>,
    /// The manifest, if one was requested.
    pub manifest: Option<Vec<u8>>,
    /// The end position.
    pub end: Option<LsnTimeline>,
}

impl ReplicationConnection {
    /// Takes a whole base backup into memory (for tests and small clusters).
    pub async fn base_backup_to_memory(
        &mut self,
        options: &commands::BaseBackupOptions,
    ) -> Result<CollectedBackup, Error> {
        self.start_base_backup(options).await?;
        let mut b = CollectedBackup::default();
        while let Some(ev) = self.next_backup_event().await? {
            match ev {
                BackupEvent::Started { start, .. } => b.start = Some(start),
                BackupEvent::ArchiveStart { name, .. } => b.archives.push((name, Vec::new())),
                BackupEvent::ArchiveData(d) => match b.archives.last_mut() {
                    Some((_, buf)) => buf.extend_from_slice(&d),
                    None => return Err(Error::Protocol("archive data before an archive".into())),
                },
                BackupEvent::Progress(_) => {}
                BackupEvent::ManifestStart => b.manifest = Some(Vec::new()),
                BackupEvent::ManifestData(d) => {
                    b.manifest.get_or_insert_with(Vec::new).extend_from_slice(&d);
                }
                BackupEvent::Finished(end) => b.end = Some(end),
            }
        }
        Ok(b)
    }
}

/// Opens the byte stream to the server: Unix socket or TCP, with TLS as `cfg.ssl` says.
/// The stream, whether it is TLS, and for a plain socket a second handle on it.
async fn open_io(cfg: &Config) -> Result<(Box<dyn Io>, bool, Option<PlainSocket>), Error> {
    let unreachable = |source| Error::Unreachable { target: cfg.host.to_string(), source };
    let opened: (Box<dyn Io>, bool, Option<PlainSocket>) = match &cfg.host {
        Host::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = tokio::net::UnixStream::connect(&path).await.map_err(unreachable)?;
            let fd = s.as_fd().try_clone_to_owned()?;
            (Box::new(s), false, Some(PlainSocket::Unix(fd)))
        }
        Host::Tcp { host, port } => {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(unreachable)?;
            s.set_nodelay(true)?;
            if cfg.ssl == SslMode::Disable {
                let fd = s.as_fd().try_clone_to_owned()?;
                (Box::new(s), false, Some(PlainSocket::Tcp(fd)))
            } else {
                let mut req = Vec::new();
                frontend::ssl_request(&mut req);
                s.write_all(&req).await?;
                let mut answer = [0u8; 1];
                s.read_exact(&mut answer).await?;
                match answer[0] {
                    b'S' => (Box::new(tls_connect(s, host, &cfg.ssl).await?), true, None),
                    b'N' if cfg.ssl == SslMode::Prefer => {
                        let fd = s.as_fd().try_clone_to_owned()?;
                        (Box::new(s), false, Some(PlainSocket::Tcp(fd)))
                    }
                    b'N' => {
                        return Err(Error::Tls(format!(
                            "the server at {host}:{port} does not accept TLS connections (ssl = off)"
                        )));
                    }
                    other => {
                        return Err(Error::Protocol(format!(
                            "unexpected answer {:?} to SSLRequest",
                            other as char
                        )));
                    }
                }
            }
        }
    };
    Ok(opened)
}

/// An authenticated, ordinary (not replication) session handed over as a byte stream: what a
/// proxy relays messages on. The server has sent `ReadyForQuery`; nothing else is pending.
pub struct RawSession {
    /// The stream, positioned after the first `ReadyForQuery`.
    pub io: Box<dyn Io>,
    /// `ParameterStatus` values the server reported during startup, in order.
    pub params: Vec<(String, String)>,
    /// `BackendKeyData`: the server process id and cancel key.
    pub backend_pid: i32,
    /// The cancel key bytes.
    pub backend_key: Vec<u8>,
    /// Whether the stream is encrypted.
    pub tls: bool,
}

impl std::fmt::Debug for RawSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSession").field("backend_pid", &self.backend_pid).field("tls", &self.tls).finish()
    }
}

/// Connects and authenticates an ordinary session with these startup parameters (`user` is
/// taken from `cfg`; pass `database`, `application_name`, `options`…).
pub async fn connect_raw(cfg: &Config, params: &[(&str, &str)]) -> Result<RawSession, Error> {
    let target = cfg.host.to_string();
    tokio::time::timeout(cfg.connect_timeout, connect_raw_inner(cfg, params))
        .await
        .map_err(|_| Error::Timeout(target))?
}

async fn connect_raw_inner(cfg: &Config, params: &[(&str, &str)]) -> Result<RawSession, Error> {
    let (mut io, tls, _) = open_io(cfg).await?;
    let mut out = Vec::new();
    let mut all: Vec<(&str, &str)> = vec![("user", &cfg.user)];
    all.extend(params.iter().filter(|(k, _)| *k != "user" && *k != "replication"));
    frontend::startup(&mut out, &all);
    io.write_all(&out).await?;
    out.clear();
    let mut decoder = Decoder::new();
    let mut auth = Authenticator::new(&cfg.user, cfg.password.as_deref().map(str::as_bytes));
    let mut session = RawSession { io, params: Vec::new(), backend_pid: 0, backend_key: Vec::new(), tls };
    let mut buf = vec![0u8; 8192];
    loop {
        let msg = match decoder.next_message()? {
            Some(m) => m,
            None => {
                let n = session.io.read(&mut buf).await?;
                if n == 0 {
                    return Err(Error::Closed);
                }
                decoder.feed(&buf[..n]);
                continue;
            }
        };
        match msg {
            BackendMessage::Authentication(req) => {
                auth.on_request(req, &mut out)?;
                if !out.is_empty() {
                    session.io.write_all(&out).await?;
                    out.clear();
                }
            }
            BackendMessage::ParameterStatus { name, value } => session.params.push((name, value)),
            BackendMessage::BackendKeyData { pid, key } => {
                session.backend_pid = pid;
                session.backend_key = key.to_vec();
            }
            BackendMessage::ReadyForQuery(_) => break,
            BackendMessage::ErrorResponse(e) => {
                return Err(classify_startup_error(e, &cfg.user, &cfg.password_source));
            }
            BackendMessage::NoticeResponse(_) => {}
            other => return Err(Error::Protocol(format!("unexpected {} during startup", other.name()))),
        }
    }
    Ok(session)
}

/// Sends a CancelRequest for a backend (a fresh connection, no authentication, as libpq does)
/// and returns once the server has closed that connection, which it does after acting on the
/// request. Like libpq's `PQcancel`, this is what lets a caller send its next statement without
/// the cancel zapping that one instead of the one it meant; a server that keeps the connection
/// open longer than [`CANCEL_ACK_WAIT`] is not waited for further.
pub async fn send_cancel(cfg: &Config, pid: i32, key: &[u8]) -> Result<(), Error> {
    let unreachable = |source| Error::Unreachable { target: cfg.host.to_string(), source };
    let mut msg = Vec::with_capacity(16 + key.len());
    msg.extend_from_slice(&((12 + key.len()) as u32).to_be_bytes());
    msg.extend_from_slice(&80_877_102i32.to_be_bytes());
    msg.extend_from_slice(&pid.to_be_bytes());
    msg.extend_from_slice(key);
    match &cfg.host {
        Host::Unix { dir, port } => {
            let mut s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                .await
                .map_err(unreachable)?;
            s.write_all(&msg).await?;
            await_close(&mut s).await;
        }
        Host::Tcp { host, port } => {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(unreachable)?;
            s.write_all(&msg).await?;
            await_close(&mut s).await;
        }
    }
    Ok(())
}

/// How long [`send_cancel`] waits for the server to close the cancel connection.
pub const CANCEL_ACK_WAIT: Duration = Duration::from_secs(10);

/// Reads (and drops) whatever comes until the peer closes the connection, an error, or
/// [`CANCEL_ACK_WAIT`]: a reset is as good an answer as a close here.
async fn await_close(s: &mut (impl AsyncRead + Unpin)) {
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CANCEL_ACK_WAIT, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_server_version("15.8 (Debian 15.8-1.pgdg120+1)"), Some(150_008));
        assert_eq!(parse_server_version("14.0"), Some(140_000));
        assert_eq!(parse_server_version("17devel"), Some(170_000));
        assert_eq!(parse_server_version("9.6.24"), Some(90_624));
        assert_eq!(parse_server_version("x"), None);
    }
}
