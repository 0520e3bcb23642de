//! The envelope: how every sealed blob and object is compressed and encrypted.
//!
//! ```text
//! 0x01 | nonce (24 random bytes) | XChaCha20-Poly1305(data_key, nonce, aad = "holdfast-v1",
//!                                                      plaintext = flag || body) incl. 16-byte tag
//! flag 0: body is the data as is; flag 1: body is one zstd frame of the data
//! ```
//!
//! Compression is tried first and kept only if it shrinks the data. One zstd context per thread
//! is reused, because creating a context costs more than compressing an 8 KiB page.

use std::cell::RefCell;
use std::io::Cursor;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

/// The version byte every envelope starts with.
pub const VERSION: u8 = 0x01;
/// Additional authenticated data: binds ciphertexts to this format.
pub const AAD: &[u8] = b"holdfast-v1";
/// Bytes added around the body: version, nonce, flag, tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;
/// Default zstd level: level 3 is zstd's own default and the best size/speed trade-off measured.
pub const DEFAULT_LEVEL: i32 = 3;
/// Largest plaintext an envelope may claim (guards against decompression bombs).
pub const MAX_PLAINTEXT: usize = 256 << 20;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Why an envelope did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("too short to be an envelope ({0} bytes)")]
    TooShort(usize),
    #[error("unknown envelope version {0:#04x}")]
    Version(u8),
    #[error("authentication failed")]
    Auth,
    #[error("unknown compression flag {0}")]
    Flag(u8),
    #[error("bad zstd frame: {0}")]
    Zstd(String),
    #[error("randomness unavailable: {0}")]
    Random(String),
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static SAMPLER: RefCell<Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Inputs at least this long are sampled before being compressed.
const SAMPLE_FROM: usize = 128 << 10;
const SAMPLE_LEN: usize = 32 << 10;

/// Whether a 32 KiB sample from the middle of `data` shrinks by at least 3 % at zstd level 1.
/// Encrypted, already-compressed or random data fails in a few microseconds instead of costing
/// a full compression pass (which made incompressible input as slow as compressible input).
fn looks_compressible(data: &[u8]) -> bool {
    let mid = data.len() / 2;
    let sample = &data[mid - SAMPLE_LEN / 2..mid + SAMPLE_LEN / 2];
    SAMPLER.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = zstd::bulk::Compressor::new(1).ok().map(|z| (z, Vec::with_capacity(SAMPLE_LEN + 1024)));
        }
        let Some((z, buf)) = s.as_mut() else { return true };
        buf.clear();
        match z.compress_to_buffer(sample, buf) {
            Ok(n) => n < SAMPLE_LEN * 97 / 100,
            Err(_) => false,
        }
    })
}

/// Compresses `data` into `out` after its current contents if that saves space.
/// Returns whether compression was kept.
fn compress_into(out: &mut Vec<u8>, data: &[u8], level: i32) -> bool {
    if level == 0 || data.len() < 64 {
        return false;
    }
    if data.len() >= SAMPLE_FROM && !looks_compressible(data) {
        return false;
    }
    let start = out.len();
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = zstd::bulk::Compressor::new(level).ok().map(|z| (level, z));
        }
        let Some((_, z)) = c.as_mut() else { return false };
        // zstd writes only into spare capacity and fails rather than grow the buffer; a frame
        // that does not shrink the data is dropped below.
        out.reserve(data.len());
        let mut cursor = Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        match z.compress_to_buffer(data, &mut cursor) {
            Ok(n) if n < data.len() => true,
            _ => {
                out.truncate(start);
                false
            }
        }
    })
}

/// Seals `plaintext` under `key` with zstd at `level` (0 = never compress).
pub fn seal(key: &[u8; 32], plaintext: &[u8], level: i32) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| EnvelopeError::Random(e.to_string()))?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.push(FLAG_ZSTD);
    if !compress_into(&mut out, plaintext, level) {
        out[HEADER_LEN] = FLAG_RAW;
        out.extend_from_slice(plaintext);
    }
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), AAD, &mut out[HEADER_LEN..])
        .map_err(|_| EnvelopeError::Auth)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens an envelope, returning the plaintext. Fails if anything was altered or the key is wrong.
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if sealed.len() < OVERHEAD {
        return Err(EnvelopeError::TooShort(sealed.len()));
    }
    if sealed[0] != VERSION {
        return Err(EnvelopeError::Version(sealed[0]));
    }
    let nonce = XNonce::from_slice(&sealed[1..HEADER_LEN]);
    let (ct, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
    let mut buf = ct.to_vec();
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(nonce, AAD, &mut buf, Tag::from_slice(tag))
        .map_err(|_| EnvelopeError::Auth)?;
    match buf[0] {
        FLAG_RAW => {
            buf.remove(0);
            Ok(buf)
        }
        FLAG_ZSTD => decompress(&buf[1..]),
        f => Err(EnvelopeError::Flag(f)),
    }
}

fn decompress(frame: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n as usize <= MAX_PLAINTEXT => n as usize,
        Ok(Some(n)) => {
            return Err(EnvelopeError::Zstd(format!(
                "frame claims {n} bytes, over the {MAX_PLAINTEXT} limit"
            )));
        }
        Ok(None) => return Err(EnvelopeError::Zstd("frame does not state its size".into())),
        Err(_) => return Err(EnvelopeError::Zstd("not a zstd frame".into())),
    };
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| EnvelopeError::Zstd(e.to_string()))?);
        }
        let Some(z) = d.as_mut() else { return Err(EnvelopeError::Zstd("no decompressor".into())) };
        let mut out = Vec::with_capacity(size);
        let n = z.decompress_to_buffer(frame, &mut out).map_err(|e| EnvelopeError::Zstd(e.to_string()))?;
        if n != size {
            return Err(EnvelopeError::Zstd(format!("frame says {size} bytes but holds {n}")));
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7; 32];

    #[test]
    fn round_trip_compressible_and_not() {
        let text = b"INSERT INTO orders VALUES (1, 'a');\n".repeat(500);
        let mut random = vec![0u8; 10_000];
        getrandom::getrandom(&mut random).unwrap();
        let mut big_random = vec![0u8; 1 << 20];
        getrandom::getrandom(&mut big_random).unwrap();
        let big_text = b"COPY public.orders (id, merchant_id) FROM stdin;\n".repeat(20_000);
        for data in [&text[..], &random[..], b"", b"x", &big_random[..], &big_text[..]] {
            let s = seal(&K, data, DEFAULT_LEVEL).unwrap();
            assert_eq!(open(&K, &s).unwrap(), data);
        }
        let s = seal(&K, &text, DEFAULT_LEVEL).unwrap();
        assert!(s.len() < text.len() / 5, "text should compress: {}", s.len());
        let s = seal(&K, &random, DEFAULT_LEVEL).unwrap();
        assert_eq!(s.len(), random.len() + OVERHEAD, "random data is kept raw");
        // Large inputs are sampled: random stays raw, text is compressed.
        assert_eq!(seal(&K, &big_random, DEFAULT_LEVEL).unwrap().len(), big_random.len() + OVERHEAD);
        assert!(seal(&K, &big_text, DEFAULT_LEVEL).unwrap().len() < big_text.len() / 10);
        // Two seals of the same data differ (random nonce).
        assert_ne!(seal(&K, &text, 3).unwrap(), seal(&K, &text, 3).unwrap());
    }

    #[test]
    fn tamper_is_detected() {
        let s = seal(&K, &b"hello world ".repeat(100), DEFAULT_LEVEL).unwrap();
        for i in [0, 1, 10, 25, 26, s.len() / 2, s.len() - 1] {
            let mut t = s.clone();
            t[i] ^= 0x01;
            assert!(open(&K, &t).is_err(), "flip at {i} not detected");
        }
        assert!(open(&K, &s[..s.len() - 1]).is_err());
        assert!(open(&K, &s[..10]).is_err());
    }

    #[test]
    fn wrong_key_is_refused() {
        let s = seal(&K, b"secret", DEFAULT_LEVEL).unwrap();
        assert_eq!(open(&[8; 32], &s), Err(EnvelopeError::Auth));
    }
}
