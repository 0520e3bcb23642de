//! A streaming reader for the tar archives `BASE_BACKUP` sends.
//!
//! Written by hand rather than with the `tar` crate because only a small, fixed subset is
//! needed (PostgreSQL's own `tarCreateHeader`: ustar, names under 100 bytes, base-256 sizes for
//! files over 8 GiB) and because entries must be consumed strictly in order from a stream
//! without seeking, with each file's bytes handed straight to the chunker.

use std::io::{self, Read};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other(u8),
}

/// One archive member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub kind: EntryKind,
    pub link_target: String,
}

/// Reads entries one after another; call [`TarReader::next_entry`], then read the entry's
/// bytes from [`TarReader::data`] (unread bytes are skipped automatically).
pub struct TarReader<R> {
    inner: R,
    /// Bytes of the current entry not yet read, and its padding to 512.
    remaining: u64,
    padding: u64,
    done: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Parses a numeric field: octal text, or GNU base-256 when the high bit of the first byte is set.
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("tar number overflows"))?;
        }
        return Ok(v);
    }
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad(format!("bad octal number {text:?} in tar header")))
}

impl<R: Read> TarReader<R> {
    /// Wraps a stream positioned at the start of an archive.
    pub fn new(inner: R) -> Self {
        TarReader { inner, remaining: 0, padding: 0, done: false }
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let take = n.min(buf.len() as u64) as usize;
            self.inner.read_exact(&mut buf[..take])?;
            n -= take as u64;
        }
        Ok(())
    }

    /// Advances to the next entry, skipping what is left of the current one. `None` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<EntryHeader>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut h = [0u8; 512];
        match read_full(&mut self.inner, &mut h)? {
            0 => {
                // A stream that simply ends is accepted as the end of the archive.
                self.done = true;
                return Ok(None);
            }
            512 => {}
            n => return Err(bad(format!("tar archive truncated inside a header ({n} of 512 bytes)"))),
        }
        if h.iter().all(|&b| b == 0) {
            self.done = true;
            return Ok(None);
        }
        let stored: u64 = number(&h[148..156])?;
        let computed: u64 =
            h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
        if stored != computed {
            return Err(bad(format!("tar header checksum mismatch (stored {stored}, computed {computed})")));
        }
        let name = cstr(&h[0..100]);
        let prefix = if &h[257..262] == b"ustar" { cstr(&h[345..500]) } else { String::new() };
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let kind = match h[156] {
            b'0' | 0 => EntryKind::File,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink,
            other => EntryKind::Other(other),
        };
        let size = number(&h[124..136])?;
        let header = EntryHeader {
            path,
            size,
            mode: number(&h[100..108])? as u32,
            mtime: number(&h[136..148])? as i64,
            kind,
            link_target: cstr(&h[157..257]),
        };
        // Only regular files carry data; others may still declare a size we must skip.
        self.remaining = size;
        self.padding = (512 - size % 512) % 512;
        Ok(Some(header))
    }

    /// The current entry's bytes.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tar: self }
    }
}

/// Reader over the current entry's bytes.
pub struct EntryData<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tar.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.tar.remaining.min(usize::MAX as u64) as usize);
        let n = self.tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tar archive truncated inside a file"));
        }
        self.tar.remaining -= n as u64;
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ustar archive the way PostgreSQL's tarCreateHeader does (for tests).
    pub(crate) fn archive(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000600\0");
            h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
            h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
            h[156] = *kind;
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn reads_entries_in_order_and_skips_unread_data() {
        let big = vec![5u8; 10_000];
        let a = archive(&[("PG_VERSION", b'0', b"15\n"), ("base", b'5', b""), ("base/1/1259", b'0', &big)]);
        let mut t = TarReader::new(&a[..]);
        let e = t.next_entry().unwrap().unwrap();
        assert_eq!((e.path.as_str(), e.size, e.kind, e.mode), ("PG_VERSION", 3, EntryKind::File, 0o600));
        let mut s = String::new();
        t.data().read_to_string(&mut s).unwrap();
        assert_eq!(s, "15\n");
        assert_eq!(t.next_entry().unwrap().unwrap().kind, EntryKind::Directory);
        let e = t.next_entry().unwrap().unwrap();
        assert_eq!(e.size, 10_000);
        // Not reading the data: the next call skips it.
        assert!(t.next_entry().unwrap().is_none());
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut a = archive(&[("x", b'0', b"hello")]);
        a[10] ^= 1;
        assert!(TarReader::new(&a[..]).next_entry().is_err());
        let a = archive(&[("x", b'0', &[1u8; 2000])]);
        let mut t = TarReader::new(&a[..700]);
        t.next_entry().unwrap();
        let mut v = Vec::new();
        assert!(t.data().read_to_end(&mut v).is_err());
        for n in [1, 100, 511] {
            assert!(TarReader::new(&a[..n]).next_entry().is_err());
        }
    }
}
