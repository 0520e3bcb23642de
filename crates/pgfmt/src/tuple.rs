//! Heap tuples as the WAL logs them, without IO: one attribute's bytes read out of a tuple
//! with the table's attribute layout (`heap_deform_tuple`), and rendered as text for the few
//! types a tenant key has. What the WAL carries: a heap DELETE's old tuple or replica-identity
//! key (`wal_level = logical`), an UPDATE's old key and new tuple ([`crate::wal::HeapChange`]).
//!
//! Little-endian servers only (varlena headers are read as x86 and ARM write them).

/// `SizeofHeapTupleHeader`: the WAL logs a tuple from this offset on (null bitmap, padding,
/// data), with `t_infomask2`, `t_infomask` and `t_hoff` in an `xl_heap_header` of their own.
pub const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;
const HEAP_HASNULL: u16 = 0x0001;
const HEAP_NATTS_MASK: u16 = 0x07FF;

/// A tuple as logged: `xl_heap_header` and the bytes after the tuple header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedTuple<'a> {
    pub infomask2: u16,
    pub infomask: u16,
    /// `t_hoff`: where the data starts, counted from the tuple header's start.
    pub hoff: u8,
    /// Null bitmap, padding, data.
    pub body: &'a [u8],
}

impl<'a> LoggedTuple<'a> {
    /// Parses `xl_heap_header` (5 bytes) and the tuple bytes after it.
    pub fn parse(b: &'a [u8]) -> Option<LoggedTuple<'a>> {
        let h = b.get(..5)?;
        Some(LoggedTuple {
            infomask2: u16::from_le_bytes([h[0], h[1]]),
            infomask: u16::from_le_bytes([h[2], h[3]]),
            hoff: h[4],
            body: &b[5..],
        })
    }

    /// Attributes the tuple holds (those added to the table later are absent).
    pub fn natts(&self) -> usize {
        usize::from(self.infomask2 & HEAP_NATTS_MASK)
    }
}

/// One column's storage as `pg_attribute` gives it (dropped columns too: their bytes are
/// still in old tuples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrLayout {
    /// `attlen`: bytes, or -1 (varlena), -2 (C string).
    pub len: i16,
    /// `attalign`: `c`, `s`, `i` or `d`.
    pub align: u8,
}

/// Why an attribute cannot be read out of a logged tuple.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TupleError {
    #[error("the tuple ends before attribute {attnum} (layout or tuple does not match)")]
    Short { attnum: usize },
    #[error("attribute {attnum} is not in the layout given ({known} columns)")]
    NoLayout { attnum: usize, known: usize },
    #[error("t_hoff {hoff} is inside the tuple header")]
    BadHoff { hoff: u8 },
}

fn align_to(off: usize, align: u8) -> usize {
    let a = match align {
        b's' => 2,
        b'i' => 4,
        b'd' => 8,
        _ => 1,
    };
    off.div_ceil(a) * a
}

/// A varlena's total size (header included) from its first bytes (`VARSIZE_ANY`).
fn varsize(b: &[u8]) -> Option<usize> {
    let first = *b.first()?;
    if first == 0x01 {
        // External TOAST pointer: a 2-byte header, then a struct of the tag's size.
        let tag = *b.get(1)?;
        let size = match tag {
            18 => 16,   // VARTAG_ONDISK: varatt_external
            1..=3 => 8, // INDIRECT, EXPANDED_RO, EXPANDED_RW: a pointer
            _ => return None,
        };
        Some(2 + size)
    } else if first & 0x01 == 0x01 {
        Some(usize::from(first >> 1))
    } else {
        let h = b.get(..4)?;
        Some((u32::from_le_bytes([h[0], h[1], h[2], h[3]]) >> 2) as usize)
    }
}

/// The bytes of attribute `attnum` (1-based) of `t`, with the table's layout; `None` when it
/// is NULL or the tuple predates the column (it then has the column's default).
pub fn attribute<'a>(
    t: &LoggedTuple<'a>,
    layout: &[AttrLayout],
    attnum: usize,
) -> Result<Option<&'a [u8]>, TupleError> {
    if attnum == 0 || attnum > layout.len() {
        return Err(TupleError::NoLayout { attnum, known: layout.len() });
    }
    if attnum > t.natts() {
        return Ok(None);
    }
    let start = usize::from(t.hoff)
        .checked_sub(SIZEOF_HEAP_TUPLE_HEADER)
        .ok_or(TupleError::BadHoff { hoff: t.hoff })?;
    let data = t.body.get(start..).ok_or(TupleError::Short { attnum })?;
    let null = |i: usize| {
        t.infomask & HEAP_HASNULL != 0 && t.body.get(i / 8).is_none_or(|b| b & (1 << (i % 8)) == 0)
    };
    let mut off = 0usize;
    for (i, a) in layout.iter().enumerate().take(attnum) {
        if null(i) {
            if i + 1 == attnum {
                return Ok(None);
            }
            continue;
        }
        // A varlena with a 1-byte header is not aligned (`att_align_pointer`): a non-zero byte
        // where padding would be is its header.
        if !(a.len == -1 && data.get(off).is_some_and(|b| *b != 0)) {
            off = align_to(off, a.align);
        }
        let rest = data.get(off..).ok_or(TupleError::Short { attnum })?;
        let size = match a.len {
            n if n > 0 => n as usize,
            -1 => varsize(rest).ok_or(TupleError::Short { attnum })?,
            -2 => rest.iter().position(|b| *b == 0).ok_or(TupleError::Short { attnum })? + 1,
            _ => return Err(TupleError::Short { attnum }),
        };
        let value = rest.get(..size).ok_or(TupleError::Short { attnum })?;
        if i + 1 == attnum {
            return Ok(Some(value));
        }
        off += size;
    }
    Ok(None)
}

/// An attribute's value as text, for the types a tenant key has: integers, text-like, `uuid`;
/// anything else (or a compressed or TOASTed value) as `\x…` hex of its stored bytes — still
/// one key per value, only less readable.
pub fn render(value: &[u8], type_oid: u32) -> String {
    let int = |n: usize| -> Option<i64> {
        let b = value.get(..n).filter(|_| value.len() == n)?;
        Some(match n {
            2 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            4 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => i64::from_le_bytes(b.try_into().ok()?),
        })
    };
    let text = || -> Option<String> {
        let first = *value.first()?;
        let inner = if first & 0x01 == 0x01 && first != 0x01 {
            value.get(1..)?
        } else if first & 0x03 == 0x00 {
            value.get(4..)?
        } else {
            return None; // compressed or external
        };
        String::from_utf8(inner.to_vec()).ok()
    };
    let shown = match type_oid {
        21 => int(2).map(|v| v.to_string()),
        23 => int(4).map(|v| v.to_string()),
        20 => int(8).map(|v| v.to_string()),
        25 | 1043 | 1042 => text().map(|s| if type_oid == 1042 { s.trim_end().to_string() } else { s }),
        19 => value.iter().position(|b| *b == 0).map(|n| String::from_utf8_lossy(&value[..n]).into_owned()),
        2950 if value.len() == 16 => {
            let h: String = value.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        _ => None,
    };
    shown.unwrap_or_else(|| format!("\\x{}", hex::encode(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(cols: &[(i16, u8)]) -> Vec<AttrLayout> {
        cols.iter().map(|&(len, align)| AttrLayout { len, align }).collect()
    }

    /// A logged tuple of (int4 id, text name, int8 merchant, NULL-able int4) built as
    /// PostgreSQL lays it out.
    fn tuple(name: &str, merchant: i64, last: Option<i32>) -> Vec<u8> {
        let natts = 4u16;
        let hasnull = last.is_none();
        // Header: 23 bytes + bitmap (1 byte when any null, else padding) rounded up to 8.
        let hoff: u8 = 24;
        let mut body = Vec::new();
        if hasnull {
            body.push(0b0111);
        } else {
            body.push(0); // padding to t_hoff = 24
        }
        let mut data = Vec::new();
        data.extend_from_slice(&7i32.to_le_bytes());
        data.push(((name.len() as u8 + 1) << 1) | 1); // 1-byte varlena header
        data.extend_from_slice(name.as_bytes());
        while data.len() % 8 != 0 {
            data.push(0);
        }
        data.extend_from_slice(&merchant.to_le_bytes());
        if let Some(v) = last {
            data.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&data);
        let infomask = if hasnull { HEAP_HASNULL } else { 0 };
        let mut out = Vec::new();
        out.extend_from_slice(&natts.to_le_bytes());
        out.extend_from_slice(&infomask.to_le_bytes());
        out.push(hoff);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn attributes_are_read_with_the_table_layout() {
        let l = layout(&[(4, b'i'), (-1, b'i'), (8, b'd'), (4, b'i')]);
        for (name, last) in [("ab", Some(3)), ("a longer name", None)] {
            let bytes = tuple(name, 4242, last);
            let t = LoggedTuple::parse(&bytes).unwrap();
            assert_eq!(t.natts(), 4);
            let m = attribute(&t, &l, 3).unwrap().unwrap();
            assert_eq!(render(m, 20), "4242");
            let n = attribute(&t, &l, 2).unwrap().unwrap();
            assert_eq!(render(n, 25), name);
            assert_eq!(attribute(&t, &l, 4).unwrap().map(|v| render(v, 23)), last.map(|v| v.to_string()));
        }
        // A column added after the tuple was written: absent, not garbage.
        let mut l5 = l.clone();
        l5.push(AttrLayout { len: 4, align: b'i' });
        let bytes = tuple("x", 1, Some(1));
        let t = LoggedTuple::parse(&bytes).unwrap();
        assert_eq!(attribute(&t, &l5, 5), Ok(None));
        assert!(attribute(&t, &l, 9).is_err());
        // Cut short: an error, never a wrong value.
        let t = LoggedTuple { body: &bytes[5..12], ..t };
        assert!(attribute(&t, &l, 3).is_err());
        assert_eq!(
            render(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7], 2950),
            "12345678-9abc-def0-0001-020304050607"
        );
        assert_eq!(render(&[1, 2], 700), "\\x0102");
    }
}
