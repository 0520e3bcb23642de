//! Bearer tokens and their scopes: `hft_<16 hex id>_<base64url secret>`.
//!
//! The id is public (it names the token in listings and revocations); the secret is 32 random
//! bytes shown once at creation. The vault stores only the BLAKE3 hash of the secret, in a
//! catalog record, so a copy of the store never yields a usable token.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a token may do. Scopes do not nest: an admin token cannot upload packs, so a stolen
/// admin token cannot also be used to plant data, and the writer of backups cannot manage tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Upload packs and append allow-listed catalog records (audit batches, drills, incidents).
    Append,
    /// Read objects, records and backups.
    Read,
    /// Manage tokens, lengthen retention, propose and execute quorum deletions.
    Admin,
}

impl Scope {
    /// The lowercase name used on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Append => "append",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Scope, TokenError> {
        match s {
            "append" => Ok(Scope::Append),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(TokenError::BadScope(other.chars().take(40).collect())),
        }
    }
}

/// Length of a token secret in bytes.
pub const SECRET_LEN: usize = 32;

/// A parsed bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: [u8; SECRET_LEN],
}

/// Why a token string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token: expected hft_<16 hex digits>_<43 base64url characters>")]
    Malformed,
    #[error("unknown scope {0:?}: expected append, read or admin")]
    BadScope(String),
}

impl Token {
    /// Builds a token from an id (16 lowercase hex digits) and a secret.
    pub fn new(id: String, secret: [u8; SECRET_LEN]) -> Result<Token, TokenError> {
        if !is_token_id(&id) {
            return Err(TokenError::Malformed);
        }
        Ok(Token { id, secret })
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret bytes; the vault hashes them and compares hashes.
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// The full token text, as given to users and sent in `Authorization: Bearer`.
    pub fn expose(&self) -> String {
        format!("hft_{}_{}", self.id, URL_SAFE_NO_PAD.encode(self.secret))
    }
}

/// Whether `s` is a well-formed token id: 16 lowercase hex digits.
pub fn is_token_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        let rest = s.strip_prefix("hft_").ok_or(TokenError::Malformed)?;
        // The secret is base64url and may itself contain '_', so split by position.
        if rest.len() < 17 || !rest.is_char_boundary(16) || rest.as_bytes()[16] != b'_' {
            return Err(TokenError::Malformed);
        }
        let (id, secret) = (&rest[..16], &rest[17..]);
        let bytes = URL_SAFE_NO_PAD.decode(secret).map_err(|_| TokenError::Malformed)?;
        let secret: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        Token::new(id.to_string(), secret)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token {{ id: {}, secret: [redacted] }}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        // 0xff bytes encode to '_' characters in base64url: the parser must cope.
        let t = Token::new("0123456789abcdef".into(), [0xff; SECRET_LEN]).unwrap();
        let s = t.expose();
        assert!(s.starts_with("hft_0123456789abcdef_"));
        assert_eq!(s.parse::<Token>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&s[21..]));
        for bad in [
            "",
            "hft_",
            "hft_0123456789abcdef",
            "hft_0123456789ABCDEF_AAAA",
            "xyz_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "hft_0123456789abcdef_short",
            "hft_0123456789abcde\u{e9}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(bad.parse::<Token>().is_err(), "accepted {bad:?}");
        }
        assert_eq!("read".parse::<Scope>().unwrap(), Scope::Read);
        assert!("root".parse::<Scope>().is_err());
    }
}
