//! The server side of the PostgreSQL v3 protocol, sans-IO: the untyped startup packets
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), typed frames in both directions,
//! and the backend messages the gate itself sends (authentication, errors, notices).
//!
//! The gate relays most messages as raw frames; it decodes only what it must look at. Every
//! length is checked before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Codes of the untyped first packets.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3_0: i32 = 196_608;

/// The longest startup packet accepted (PostgreSQL's own limit is 10,000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {len} bytes is over the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: &'static str },
    #[error("unsupported protocol version {major}.{minor} (the gate speaks 3.0)")]
    Version { major: u16, minor: u16 },
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: Vec<u8> },
    Startup { params: Vec<(String, String)> },
}

/// Decodes a first packet from `buf` if it is complete (consuming it).
pub fn decode_first(buf: &mut BytesMut) -> Result<Option<FirstPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
        return Err(if len > MAX_STARTUP_LEN as i64 {
            WireError::TooLong { len: len as usize, max: MAX_STARTUP_LEN }
        } else {
            WireError::BadLength(len)
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut p = buf.split_to(len).freeze();
    p.advance(4);
    let code = p.get_i32();
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(FirstPacket::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(FirstPacket::GssEnc)),
        CANCEL_REQUEST if len >= 12 => {
            let pid = p.get_i32();
            Ok(Some(FirstPacket::Cancel { pid, key: p.to_vec() }))
        }
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            loop {
                let k = cstr(&mut p, "startup packet")?;
                if k.is_empty() {
                    break;
                }
                let v = cstr(&mut p, "startup packet")?;
                params.push((k, v));
            }
            Ok(Some(FirstPacket::Startup { params }))
        }
        other => {
            let (major, minor) = ((other >> 16) as u16, (other & 0xffff) as u16);
            if major == 3 {
                // 3.x with x > 0: PostgreSQL answers NegotiateProtocolVersion; we ask for 3.0
                // the same way by refusing clearly (clients fall back).
                return Err(WireError::Version { major, minor });
            }
            Err(WireError::Version { major, minor })
        }
    }
}

/// Reads a NUL-terminated UTF-8 string.
pub fn cstr(p: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let end = p.iter().position(|b| *b == 0).ok_or(WireError::Malformed { what, why: "missing NUL" })?;
    let s = std::str::from_utf8(&p[..end])
        .map_err(|_| WireError::Malformed { what, why: "not UTF-8" })?
        .to_owned();
    p.advance(end + 1);
    Ok(s)
}

/// One typed message: tag and body (without the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// The message as bytes on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag);
        out.put_u32(self.body.len() as u32 + 4);
        out.put_slice(&self.body);
    }
}

/// Decodes one typed message from `buf` if complete.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(WireError::BadLength(len as i64));
    }
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    let mut m = buf.split_to(len + 1);
    m.advance(5);
    Ok(Some(Frame { tag, body: m.freeze() }))
}

/// Moves the complete DataRow messages at the start of `buf` to `out` as they are, in one copy
/// (no frame is decoded, nothing allocated); returns how many bytes moved. Stops at the first
/// other message, incomplete one or malformed length (left for [`decode_frame`] to judge).
pub fn relay_data_rows(buf: &mut BytesMut, out: &mut BytesMut) -> usize {
    let mut end = 0;
    while buf.len() >= end + 5 && buf[end] == b'D' {
        let len = u32::from_be_bytes([buf[end + 1], buf[end + 2], buf[end + 3], buf[end + 4]]) as usize;
        if len < 4 || buf.len() < end + 1 + len {
            break;
        }
        end += 1 + len;
    }
    if end > 0 {
        out.extend_from_slice(&buf[..end]);
        buf.advance(end);
    }
    end
}

fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the client: drop it.
    out.extend(s.bytes().filter(|b| *b != 0));
    out.put_u8(0);
}

/// Backend messages the gate sends itself.
pub mod backend {
    use super::*;

    pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
        message(out, b'R', |o| {
            o.put_i32(10);
            for m in mechanisms {
                put_cstr(o, m);
            }
            o.put_u8(0);
        });
    }
    pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
        message(out, b'R', |o| {
            o.put_i32(11);
            o.put_slice(data);
        });
    }
    pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
        message(out, b'R', |o| {
            o.put_i32(12);
            o.put_slice(data);
        });
    }
    pub fn auth_ok(out: &mut BytesMut) {
        message(out, b'R', |o| o.put_i32(0));
    }
    pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
        message(out, b'S', |o| {
            put_cstr(o, name);
            put_cstr(o, value);
        });
    }
    pub fn backend_key(out: &mut BytesMut, pid: i32, key: &[u8]) {
        message(out, b'K', |o| {
            o.put_i32(pid);
            o.put_slice(key);
        });
    }
    pub fn ready(out: &mut BytesMut, status: u8) {
        message(out, b'Z', |o| o.put_u8(status));
    }

    /// Fields of an ErrorResponse / NoticeResponse.
    #[derive(Debug, Clone, Default)]
    pub struct Fields<'a> {
        pub severity: &'a str,
        pub code: &'a str,
        pub message: &'a str,
        pub detail: Option<&'a str>,
        pub hint: Option<&'a str>,
    }

    fn fields(o: &mut BytesMut, f: &Fields<'_>) {
        for (t, v) in [
            (b'S', Some(f.severity)),
            (b'V', Some(f.severity)),
            (b'C', Some(f.code)),
            (b'M', Some(f.message)),
        ]
        .into_iter()
        .chain([(b'D', f.detail), (b'H', f.hint)])
        {
            if let Some(v) = v {
                o.put_u8(t);
                put_cstr(o, v);
            }
        }
        o.put_u8(0);
    }

    pub fn error(out: &mut BytesMut, f: &Fields<'_>) {
        message(out, b'E', |o| fields(o, f));
    }
    pub fn notice(out: &mut BytesMut, f: &Fields<'_>) {
        message(out, b'N', |o| fields(o, f));
    }
}

/// Frontend messages the gate decodes.
pub mod frontend {
    use super::*;

    /// `Parse`: statement name and SQL.
    pub fn parse(body: &Bytes) -> Result<(String, String), WireError> {
        let mut p = body.clone();
        let name = cstr(&mut p, "Parse")?;
        let sql = cstr(&mut p, "Parse")?;
        Ok((name, sql))
    }
    /// `Parse`'s declared parameter type OIDs (0: unspecified); a malformed tail yields what
    /// could be read.
    pub fn parse_param_types(body: &Bytes) -> Vec<u32> {
        let mut p = body.clone();
        if cstr(&mut p, "Parse").is_err() || cstr(&mut p, "Parse").is_err() || p.len() < 2 {
            return Vec::new();
        }
        let n = i16::from_be_bytes([p[0], p[1]]).max(0) as usize;
        p[2..].chunks_exact(4).take(n).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    /// `Bind`: portal name and statement name.
    pub fn bind(body: &Bytes) -> Result<(String, String), WireError> {
        let mut p = body.clone();
        let portal = cstr(&mut p, "Bind")?;
        let statement = cstr(&mut p, "Bind")?;
        Ok((portal, statement))
    }
    /// `Bind`'s parameter values (None: NULL) with whether each is in binary format; a
    /// malformed tail yields what could be read.
    pub fn bind_values(body: &Bytes) -> Vec<(bool, Option<Bytes>)> {
        let mut p = body.clone();
        let mut out = Vec::new();
        if cstr(&mut p, "Bind").is_err() || cstr(&mut p, "Bind").is_err() {
            return out;
        }
        let i16_at = |p: &Bytes, at: usize| {
            p.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
        };
        let Some(nfmt) = i16_at(&p, 0) else { return out };
        let binary = |i: usize| {
            let f = match nfmt {
                0 => 0,
                1 => i16_at(&p, 2).unwrap_or(0),
                _ => i16_at(&p, 2 + 2 * i).unwrap_or(0),
            };
            f == 1
        };
        let mut at = 2 + 2 * nfmt;
        let Some(n) = i16_at(&p, at) else { return out };
        at += 2;
        for i in 0..n {
            let Some(l) = p.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])) else {
                break;
            };
            at += 4;
            if l < 0 {
                out.push((binary(i), None));
                continue;
            }
            let end = at + l as usize;
            if end > p.len() {
                break;
            }
            out.push((binary(i), Some(p.slice(at..end))));
            at = end;
        }
        out
    }
    /// `Execute`: portal name and row limit.
    pub fn execute(body: &Bytes) -> Result<(String, i32), WireError> {
        let mut p = body.clone();
        let portal = cstr(&mut p, "Execute")?;
        if p.remaining() < 4 {
            return Err(WireError::Malformed { what: "Execute", why: "short" });
        }
        Ok((portal, p.get_i32()))
    }
    /// `Close` / `Describe`: kind (`S` statement or `P` portal) and name.
    pub fn close(body: &Bytes) -> Result<(u8, String), WireError> {
        let mut p = body.clone();
        if p.is_empty() {
            return Err(WireError::Malformed { what: "Close", why: "empty" });
        }
        let kind = p.get_u8();
        Ok((kind, cstr(&mut p, "Close")?))
    }
    /// `Query`: the SQL.
    pub fn query(body: &Bytes) -> Result<String, WireError> {
        let mut p = body.clone();
        cstr(&mut p, "Query")
    }
    /// SASLInitialResponse: mechanism and data.
    pub fn sasl_initial(body: &Bytes) -> Result<(String, Bytes), WireError> {
        let mut p = body.clone();
        let mech = cstr(&mut p, "SASLInitialResponse")?;
        if p.remaining() < 4 {
            return Err(WireError::Malformed { what: "SASLInitialResponse", why: "short" });
        }
        let n = p.get_i32();
        if n < 0 || n as usize != p.remaining() {
            return Err(WireError::Malformed { what: "SASLInitialResponse", why: "bad length" });
        }
        Ok((mech, p))
    }
    /// Encodes a `Query`.
    pub fn encode_query(out: &mut BytesMut, sql: &str) {
        message(out, b'Q', |o| put_cstr(o, sql));
    }
    /// Encodes `Parse` of `sql` as the unnamed statement, no parameter types.
    pub fn encode_parse(out: &mut BytesMut, sql: &str) {
        message(out, b'P', |o| {
            o.put_u8(0);
            put_cstr(o, sql);
            o.put_i16(0);
        });
    }
    /// Encodes `Bind` of the unnamed statement to the unnamed portal, no parameters.
    pub fn encode_bind_unnamed(out: &mut BytesMut) {
        message(out, b'B', |o| {
            o.put_u8(0);
            o.put_u8(0);
            o.put_i16(0);
            o.put_i16(0);
            o.put_i16(0);
        });
    }
    /// Encodes the gate's own statement through the extended protocol under its reserved
    /// names (a client's unnamed statement and portal are left alone): Close, Parse, Bind,
    /// Execute, Close — five answers ending in CloseComplete, ParseComplete, BindComplete,
    /// CommandComplete, CloseComplete.
    pub fn encode_own_statement(out: &mut BytesMut, sql: &str) {
        encode_own_prepare(out, "holdfast_q", sql);
        encode_own_execute(out, "holdfast_q");
    }
    /// Encodes the gate's `Close` of a statement name and `Parse` of `sql` under it: two
    /// answers, CloseComplete and ParseComplete (the Close first, so the Parse succeeds whatever
    /// held the name).
    pub fn encode_own_prepare(out: &mut BytesMut, name: &str, sql: &str) {
        message(out, b'C', |o| {
            o.put_u8(b'S');
            put_cstr(o, name);
        });
        message(out, b'P', |o| {
            put_cstr(o, name);
            put_cstr(o, sql);
            o.put_i16(0);
        });
    }
    /// Encodes an execution of the gate's prepared statement `name` (no parameters, text
    /// results) through its reserved portal: Bind, Execute, Close — three answers ending in
    /// BindComplete, CommandComplete, CloseComplete.
    pub fn encode_own_execute(out: &mut BytesMut, name: &str) {
        message(out, b'B', |o| {
            put_cstr(o, "holdfast_p");
            put_cstr(o, name);
            o.put_i16(0);
            o.put_i16(0);
            o.put_i16(0);
        });
        message(out, b'E', |o| {
            put_cstr(o, "holdfast_p");
            o.put_i32(0);
        });
        message(out, b'C', |o| {
            o.put_u8(b'P');
            put_cstr(o, "holdfast_p");
        });
    }
    /// Encodes `Sync`.
    pub fn encode_sync(out: &mut BytesMut) {
        message(out, b'S', |_| {});
    }
    /// Encodes `Flush`.
    pub fn encode_flush(out: &mut BytesMut) {
        message(out, b'H', |_| {});
    }
    /// Encodes `Execute` of the unnamed portal.
    pub fn encode_execute_unnamed(out: &mut BytesMut) {
        message(out, b'E', |o| {
            o.put_u8(0);
            o.put_i32(0);
        });
    }
}

/// Parses the fields of a backend ErrorResponse/NoticeResponse body (`code`, `message`).
pub fn error_fields(body: &Bytes) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut p = body.clone();
    while p.has_remaining() {
        let t = p.get_u8();
        if t == 0 {
            break;
        }
        match cstr(&mut p, "ErrorResponse") {
            Ok(v) => out.push((t, v)),
            Err(_) => break,
        }
    }
    out
}

/// The row count in a CommandComplete tag (`DELETE 42`, `UPDATE 7`, `INSERT 0 1`).
pub fn command_rows(body: &Bytes) -> Option<u64> {
    let mut p = body.clone();
    let tag = cstr(&mut p, "CommandComplete").ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packets() {
        let mut b = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(decode_first(&mut b).unwrap(), Some(FirstPacket::Ssl));
        let mut v = Vec::new();
        pgproto::message::frontend::startup(&mut v, &[("user", "alice"), ("database", "shop")]);
        let mut b = BytesMut::from(&v[..5]);
        assert_eq!(decode_first(&mut b).unwrap(), None, "incomplete");
        let mut b = BytesMut::from(&v[..]);
        assert_eq!(
            decode_first(&mut b).unwrap(),
            Some(FirstPacket::Startup {
                params: vec![("user".into(), "alice".into()), ("database".into(), "shop".into())]
            })
        );
        let mut b = BytesMut::from(&[0x7f, 0, 0, 0][..]);
        assert!(matches!(decode_first(&mut b), Err(WireError::TooLong { .. })));
        let mut b = BytesMut::from(&[0, 0, 0, 2][..]);
        assert!(matches!(decode_first(&mut b), Err(WireError::BadLength(2))));
        let mut b = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert!(matches!(decode_first(&mut b), Err(WireError::Version { major: 2, .. })));
        // A startup packet without its final NUL.
        let mut b = BytesMut::from(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', 0, b'a', b'b'][..]);
        assert!(matches!(decode_first(&mut b), Err(WireError::Malformed { .. })));
    }

    #[test]
    fn frames_and_limits() {
        let mut out = BytesMut::new();
        frontend::encode_query(&mut out, "select 1");
        let mut b = out.clone();
        let f = decode_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(frontend::query(&f.body).unwrap(), "select 1");
        assert!(b.is_empty());
        let mut b = out.clone();
        assert!(matches!(decode_frame(&mut b, 8), Err(WireError::TooLong { .. })));
        let mut b = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(decode_frame(&mut b, 1024), Err(WireError::BadLength(3))));
        assert!(frontend::query(&Bytes::from_static(b"no nul")).is_err());
    }

    /// DataRows move as they are, up to the first other, incomplete or malformed message; what
    /// is left decodes as before.
    #[test]
    fn data_rows_are_relayed_as_they_came() {
        let row = |out: &mut BytesMut, v: &[u8]| {
            message(out, b'D', |o| {
                o.put_i16(1);
                o.put_i32(v.len() as i32);
                o.put_slice(v);
            })
        };
        let mut wire = BytesMut::new();
        row(&mut wire, b"1");
        row(&mut wire, b"22");
        let rows = wire.clone();
        message(&mut wire, b'C', |o| put_cstr(o, "SELECT 2"));
        let mut half = BytesMut::new();
        row(&mut half, b"333");
        wire.extend_from_slice(&half[..half.len() - 1]);
        let mut buf = wire.clone();
        let mut out = BytesMut::from(&b"x"[..]);
        assert_eq!(relay_data_rows(&mut buf, &mut out), rows.len());
        assert_eq!(&out[1..], &rows[..], "byte for byte, after what was there");
        assert_eq!(relay_data_rows(&mut buf, &mut out), 0, "a CommandComplete is decoded");
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'C');
        assert_eq!(relay_data_rows(&mut buf, &mut out), 0, "an incomplete row waits");
        assert_eq!(buf.len(), half.len() - 1);
        let mut bad = BytesMut::from(&[b'D', 0, 0, 0, 3, 0][..]);
        assert_eq!(relay_data_rows(&mut bad, &mut out), 0);
        assert!(matches!(decode_frame(&mut bad, 1024), Err(WireError::BadLength(3))));
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            let _ = decode_first(&mut b);
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = decode_frame(&mut b, 1 << 20) {
                let _ = frontend::parse(&f.body);
                let _ = frontend::bind(&f.body);
                let _ = frontend::execute(&f.body);
                let _ = frontend::close(&f.body);
                let _ = frontend::sasl_initial(&f.body);
                let _ = error_fields(&f.body);
                let _ = command_rows(&f.body);
            }
        }
    }
}
