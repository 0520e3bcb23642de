//! Protocol v3 framing: a backend-message decoder that never panics and frontend encoders.

use bytes::{Buf, Bytes, BytesMut};

use crate::Error;

/// The largest backend message accepted by default (a CopyData of WAL is at most 128 KiB;
/// a DataRow with a timeline history file can be larger, but not this large).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 << 20;

/// One message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendMessage {
    /// 'R': an authentication request or result.
    Authentication(Authentication),
    /// 'S': a run-time parameter's value.
    ParameterStatus {
        /// Parameter name, e.g. `server_version`.
        name: String,
        /// Its value.
        value: String,
    },
    /// 'K': the key for cancelling queries.
    BackendKeyData {
        /// The backend's process id.
        pid: i32,
        /// The secret key (4 bytes before protocol 3.2).
        key: Bytes,
    },
    /// 'Z': ready for a new query; the transaction status byte (`I`, `T` or `E`).
    ReadyForQuery(u8),
    /// 'T': the columns of the rows that follow.
    RowDescription(Vec<FieldDescription>),
    /// 'D': one row; `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    /// 'C': a command finished; the tag, e.g. `SELECT 1`.
    CommandComplete(String),
    /// 'I': the query string was empty.
    EmptyQueryResponse,
    /// 'E': an error.
    ErrorResponse(ServerError),
    /// 'N': a notice.
    NoticeResponse(ServerError),
    /// 'H': the server starts sending COPY data.
    CopyOutResponse(CopyFormat),
    /// 'G': the server expects COPY data.
    CopyInResponse(CopyFormat),
    /// 'W': COPY in both directions (streaming replication).
    CopyBothResponse(CopyFormat),
    /// 'd': a chunk of COPY data.
    CopyData(Bytes),
    /// 'c': the end of COPY data.
    CopyDone,
    /// Any other message, kept raw.
    Other {
        /// The type byte.
        tag: u8,
        /// The body.
        body: Bytes,
    },
}

impl BackendMessage {
    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Authentication(_) => "Authentication",
            Self::ParameterStatus { .. } => "ParameterStatus",
            Self::BackendKeyData { .. } => "BackendKeyData",
            Self::ReadyForQuery(_) => "ReadyForQuery",
            Self::RowDescription(_) => "RowDescription",
            Self::DataRow(_) => "DataRow",
            Self::CommandComplete(_) => "CommandComplete",
            Self::EmptyQueryResponse => "EmptyQueryResponse",
            Self::ErrorResponse(_) => "ErrorResponse",
            Self::NoticeResponse(_) => "NoticeResponse",
            Self::CopyOutResponse(_) => "CopyOutResponse",
            Self::CopyInResponse(_) => "CopyInResponse",
            Self::CopyBothResponse(_) => "CopyBothResponse",
            Self::CopyData(_) => "CopyData",
            Self::CopyDone => "CopyDone",
            Self::Other { .. } => "an unexpected message",
        }
    }
}

/// The 'R' message variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Authenticated.
    Ok,
    /// Send the password in clear text.
    CleartextPassword,
    /// Send `md5` of the password with this salt.
    Md5Password([u8; 4]),
    /// Start SASL with one of these mechanisms.
    Sasl(Vec<String>),
    /// A SASL challenge.
    SaslContinue(Bytes),
    /// The SASL outcome, to verify.
    SaslFinal(Bytes),
    /// A method this client does not implement (Kerberos, GSSAPI, SSPI…), by code.
    Unsupported(i32),
}

/// A column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// The format part of a Copy*Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyFormat {
    /// 0 textual, 1 binary.
    pub overall: u8,
    /// Per-column format codes.
    pub columns: Vec<i16>,
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`… (non-localised when the server sends it).
    pub severity: String,
    /// The SQLSTATE code, e.g. `28P01`.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

/// Splits a byte stream into backend messages.
///
/// ```
/// let mut d = pgproto::message::Decoder::new();
/// d.feed(b"Z\0\0\0\x05I");
/// assert_eq!(d.next_message().unwrap(), Some(pgproto::BackendMessage::ReadyForQuery(b'I')));
/// assert_eq!(d.next_message().unwrap(), None);
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with [`DEFAULT_MAX_MESSAGE_LEN`].
    pub fn new() -> Self {
        Decoder { buf: BytesMut::with_capacity(64 * 1024), max_len: DEFAULT_MAX_MESSAGE_LEN }
    }

    /// Sets the largest message accepted.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Appends bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly (for `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The type byte of the next message, if any of it has been read (without consuming it).
    pub fn peek_tag(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// The next complete message, `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<BackendMessage>, Error> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len < 4 {
            return Err(Error::Protocol(format!("message {:?} has invalid length {len}", tag as char)));
        }
        if len > self.max_len {
            return Err(Error::Protocol(format!(
                "message {:?} of {len} bytes exceeds the {} byte limit",
                tag as char, self.max_len
            )));
        }
        if self.buf.len() < 1 + len {
            self.buf.reserve(1 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let body = self.buf.split_to(len - 4).freeze();
        parse_backend(tag, body).map(Some)
    }
}

/// Decodes one message body; never panics, whatever the bytes.
pub fn parse_backend(tag: u8, body: Bytes) -> Result<BackendMessage, Error> {
    let mut r = BodyReader { tag, b: body.clone() };
    let msg = match tag {
        b'R' => {
            let code = r.i32()?;
            BackendMessage::Authentication(match code {
                0 => Authentication::Ok,
                3 => Authentication::CleartextPassword,
                5 => {
                    let s = r.take(4)?;
                    Authentication::Md5Password([s[0], s[1], s[2], s[3]])
                }
                10 => {
                    let mut mechs = Vec::new();
                    loop {
                        let m = r.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechs.push(m);
                    }
                    Authentication::Sasl(mechs)
                }
                11 => Authentication::SaslContinue(r.rest()),
                12 => Authentication::SaslFinal(r.rest()),
                other => Authentication::Unsupported(other),
            })
        }
        b'S' => BackendMessage::ParameterStatus { name: r.cstr()?, value: r.cstr()? },
        b'K' => BackendMessage::BackendKeyData { pid: r.i32()?, key: r.rest() },
        b'Z' => BackendMessage::ReadyForQuery(r.u8()?),
        b'T' => {
            let n = r.i16()?;
            let mut fields = Vec::with_capacity(n.clamp(0, 1024) as usize);
            for _ in 0..n {
                let name = r.cstr()?;
                let _table = r.i32()?;
                let _col = r.i16()?;
                let type_oid = r.i32()? as u32;
                let _typlen = r.i16()?;
                let _typmod = r.i32()?;
                let format = r.i16()?;
                fields.push(FieldDescription { name, type_oid, format });
            }
            BackendMessage::RowDescription(fields)
        }
        b'D' => {
            let n = r.i16()?;
            let mut cols = Vec::with_capacity(n.clamp(0, 1024) as usize);
            for _ in 0..n {
                let len = r.i32()?;
                cols.push(if len < 0 { None } else { Some(r.take(len as usize)?) });
            }
            BackendMessage::DataRow(cols)
        }
        b'C' => BackendMessage::CommandComplete(r.cstr()?),
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::ErrorResponse(r.error_fields()?),
        b'N' => BackendMessage::NoticeResponse(r.error_fields()?),
        b'H' => BackendMessage::CopyOutResponse(r.copy_format()?),
        b'G' => BackendMessage::CopyInResponse(r.copy_format()?),
        b'W' => BackendMessage::CopyBothResponse(r.copy_format()?),
        b'd' => return Ok(BackendMessage::CopyData(body)),
        b'c' => BackendMessage::CopyDone,
        _ => return Ok(BackendMessage::Other { tag, body }),
    };
    Ok(msg)
}

struct BodyReader {
    tag: u8,
    b: Bytes,
}

impl BodyReader {
    fn short(&self) -> Error {
        Error::Protocol(format!("message {:?} ends early", self.tag as char))
    }
    fn take(&mut self, n: usize) -> Result<Bytes, Error> {
        if n > self.b.len() {
            return Err(self.short());
        }
        Ok(self.b.split_to(n))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.b)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, Error> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, Error> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, Error> {
        let nul = self.b.iter().position(|&c| c == 0).ok_or_else(|| {
            Error::Protocol(format!("message {:?} has an unterminated string", self.tag as char))
        })?;
        let s = self.take(nul)?;
        self.b.advance(1);
        Ok(String::from_utf8_lossy(&s).into_owned())
    }
    fn copy_format(&mut self) -> Result<CopyFormat, Error> {
        let overall = self.u8()?;
        let n = self.i16()?;
        let mut columns = Vec::new();
        for _ in 0..n {
            columns.push(self.i16()?);
        }
        Ok(CopyFormat { overall, columns })
    }
    fn error_fields(&mut self) -> Result<ServerError, Error> {
        let mut e = ServerError::default();
        let mut localized_severity = String::new();
        loop {
            let code = self.u8()?;
            if code == 0 {
                break;
            }
            let value = self.cstr()?;
            match code {
                b'S' => localized_severity = value,
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity;
        }
        Ok(e)
    }
}

/// Frontend message encoders. Each appends one message to `out`.
pub mod frontend {
    fn with_len(out: &mut Vec<u8>, tag: Option<u8>, body: impl FnOnce(&mut Vec<u8>)) {
        if let Some(t) = tag {
            out.push(t);
        }
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        body(out);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// The SSLRequest code.
    pub const SSL_REQUEST_CODE: i32 = 80_877_103;
    /// Protocol version 3.0.
    pub const PROTOCOL_3_0: i32 = 196_608;

    /// StartupMessage with the given parameters (`user`, `database`, `replication`…).
    pub fn startup(out: &mut Vec<u8>, params: &[(&str, &str)]) {
        with_len(out, None, |o| {
            o.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
            for (k, v) in params {
                cstr(o, k);
                cstr(o, v);
            }
            o.push(0);
        });
    }

    /// SSLRequest.
    pub fn ssl_request(out: &mut Vec<u8>) {
        with_len(out, None, |o| o.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes()));
    }

    /// PasswordMessage (clear text or md5 hash).
    pub fn password(out: &mut Vec<u8>, password: &[u8]) {
        with_len(out, Some(b'p'), |o| {
            o.extend_from_slice(password);
            o.push(0);
        });
    }

    /// SASLInitialResponse.
    pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
        with_len(out, Some(b'p'), |o| {
            cstr(o, mechanism);
            o.extend_from_slice(&(data.len() as i32).to_be_bytes());
            o.extend_from_slice(data);
        });
    }

    /// SASLResponse.
    pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
        with_len(out, Some(b'p'), |o| o.extend_from_slice(data));
    }

    /// Query (simple query protocol; replication commands go here too).
    pub fn query(out: &mut Vec<u8>, sql: &str) {
        with_len(out, Some(b'Q'), |o| cstr(o, sql));
    }

    /// CopyData.
    pub fn copy_data(out: &mut Vec<u8>, data: &[u8]) {
        with_len(out, Some(b'd'), |o| o.extend_from_slice(data));
    }

    /// CopyDone.
    pub fn copy_done(out: &mut Vec<u8>) {
        with_len(out, Some(b'c'), |_| {});
    }

    /// Terminate.
    pub fn terminate(out: &mut Vec<u8>) {
        with_len(out, Some(b'X'), |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_split_messages() {
        let mut bytes = msg(b'S', b"server_version\x0015.8\x00");
        bytes
            .extend(msg(b'E', b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0"));
        bytes.extend(msg(b'D', b"\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff"));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            BackendMessage::ParameterStatus { name: "server_version".into(), value: "15.8".into() }
        );
        let BackendMessage::ErrorResponse(e) = &got[1] else { panic!("{:?}", got[1]) };
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert_eq!(got[2], BackendMessage::DataRow(vec![Some(Bytes::from_static(b"hi")), None]));
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut d = Decoder::new();
        d.feed(b"Z\0\0\0\x02");
        assert!(d.next_message().is_err());
        let mut d = Decoder::new().with_max_len(10);
        d.feed(b"d\0\0\x01\0");
        assert!(d.next_message().is_err());
        assert!(parse_backend(b'D', Bytes::from_static(b"\x00\x01\x00\x00\x00\x09ab")).is_err());
        assert!(parse_backend(b'S', Bytes::from_static(b"abc")).is_err());
    }

    #[test]
    fn encodes_frontend_messages() {
        let mut out = Vec::new();
        frontend::query(&mut out, "IDENTIFY_SYSTEM");
        assert_eq!(out, b"Q\0\0\0\x14IDENTIFY_SYSTEM\0");
        out.clear();
        frontend::ssl_request(&mut out);
        assert_eq!(out, [0, 0, 0, 8, 4, 210, 22, 47]);
        out.clear();
        frontend::startup(&mut out, &[("user", "u")]);
        assert_eq!(out, b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
        out.clear();
        frontend::copy_done(&mut out);
        assert_eq!(out, b"c\0\0\0\x04");
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut d = Decoder::new().with_max_len(4096);
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next_message() {}
        }

        #[test]
        fn any_body_never_panics(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_backend(tag, Bytes::from(body));
        }

        #[test]
        fn well_framed_bodies_never_panic(tag in prop::sample::select(b"RSKZTDCIENHGWdc".to_vec()), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut d = Decoder::new();
            d.feed(&msg(tag, &body));
            let _ = d.next_message();
        }
    }
}
