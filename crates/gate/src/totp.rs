//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits — what every
//! authenticator app does), secrets in base32 as `otpauth://` URIs carry them. Written here:
//! the algorithm is ten lines over `hmac`, and the crates that wrap it pull in image and URL
//! libraries for QR codes.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Decodes RFC 4648 base32 (no padding needed; spaces and case ignored).
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in s.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase() as u8)? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Encodes RFC 4648 base32 without padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for b in data {
        buf = (buf << 8) | *b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The 6-digit code for a 30-second step.
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(&step.to_be_bytes());
    let h = m.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 1_000_000
}

/// Checks `code` at `unix_secs`, accepting one step either side for clock skew. Returns the
/// step that matched, so a caller can refuse a code used twice.
pub fn verify(secret: &[u8], code: &str, unix_secs: u64) -> Option<u64> {
    let code: u32 = code.trim().parse().ok().filter(|_| code.trim().len() == 6)?;
    let step = unix_secs / 30;
    [step.saturating_sub(1), step, step + 1].into_iter().find(|s| code_at(secret, *s) == code)
}

/// A new random 20-byte secret, base32.
pub fn new_secret() -> String {
    let mut s = [0u8; 20];
    getrandom::getrandom(&mut s).expect("the OS random source works");
    base32_encode(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA1, secret "12345678901234567890" (8 digits there; the last 6 here).
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59 / 30), 287082);
        assert_eq!(code_at(secret, 1111111109 / 30), 81804);
        assert_eq!(code_at(secret, 1234567890 / 30), 5924);
        assert_eq!(code_at(secret, 2000000000 / 30), 279037);
        assert_eq!(verify(secret, "287082", 59), Some(1));
        assert_eq!(verify(secret, "287082", 59 + 30), Some(1), "one step of skew is accepted");
        assert_eq!(verify(secret, "287082", 59 + 90), None);
        assert_eq!(verify(secret, "28708", 59), None);
        assert_eq!(verify(secret, "abcdef", 59), None);
    }

    #[test]
    fn base32_round_trip() {
        assert_eq!(base32_encode(b"12345678901234567890"), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            base32_decode("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap(),
            b"12345678901234567890"
        );
        assert_eq!(base32_decode("1!"), None);
        let s = new_secret();
        assert_eq!(base32_decode(&s).unwrap().len(), 20);
    }
}
