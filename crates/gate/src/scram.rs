//! Server-side SCRAM-SHA-256 (RFC 5802, RFC 7677) against PostgreSQL-format verifiers
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), so a person's password never
//! reaches the gate in clear and a verifier can be made with `holdfast gate hash-password` or
//! copied from `pg_authid`.
//!
//! Written here because the crates that speak SCRAM (postgres-protocol, pgwire) offer the client
//! side or a whole server framework; the server side is two messages and a few HMACs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The mechanism name in `AuthenticationSASL`.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A parsed verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

/// A stored password verifier that is not one. The text is not kept: it is a secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a SCRAM-SHA-256 verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> \
     (make one with `holdfast gate hash-password`)"
)]
pub struct VerifierError;

impl std::str::FromStr for Verifier {
    type Err = VerifierError;
    fn from_str(s: &str) -> Result<Verifier, VerifierError> {
        let bad = || VerifierError;
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iter.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err(bad());
        }
        let salt = B64.decode(salt).map_err(|_| bad())?;
        let key = |k: &str| -> Result<[u8; 32], VerifierError> {
            B64.decode(k).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(bad)
        };
        Ok(Verifier { iterations, salt, stored_key: key(stored)?, server_key: key(server)? })
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

impl Verifier {
    /// A new verifier for `password` (random 16-byte salt, 4096 iterations as PostgreSQL).
    pub fn generate(password: &str) -> Verifier {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt).expect("the OS random source works");
        Verifier::with_salt(password, salt, 4096)
    }

    fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let salted = hi(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, &[b"Server Key"]);
        Verifier { iterations, salt, stored_key, server_key }
    }

    /// Checks a password given in clear (the control API's basic authentication), in constant
    /// time. Passwords are used as their UTF-8 bytes (no SASLprep).
    pub fn check_password(&self, password: &str) -> bool {
        let other = Verifier::with_salt(password, self.salt.clone(), self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }
}

/// What went wrong in an exchange. Every variant ends the connection with "password
/// authentication failed" towards the client (no detail that helps guessing).
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding requested, but the gate does not offer SCRAM-SHA-256-PLUS")]
    ChannelBinding,
    #[error("wrong password")]
    WrongPassword,
}

/// One server-side exchange.
pub struct ServerExchange {
    verifier: Verifier,
    /// False for an unknown user: the exchange runs on a made-up verifier and always fails at
    /// the end, so the answer does not reveal whether the person exists.
    real: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Starts from the client's first message (the SASLInitialResponse data).
    pub fn start(
        verifier: Option<&Verifier>,
        mock_seed: &[u8],
        client_first: &[u8],
    ) -> Result<Self, ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let bare = match msg.as_bytes().first() {
            Some(b'n') | Some(b'y') => {
                // gs2-header: "n,," or "y,," (no authzid supported).
                let rest = &msg[1..];
                let rest = rest.strip_prefix(',').ok_or(ScramError::Malformed("gs2 header"))?;
                let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("gs2 header"))?;
                if !authzid.is_empty() {
                    return Err(ScramError::Malformed("authzid is not supported"));
                }
                bare
            }
            Some(b'p') => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        };
        // PostgreSQL ignores the user name here (it came in the startup packet): so do we.
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut server_nonce = [0u8; 18];
        getrandom::getrandom(&mut server_nonce).expect("the OS random source works");
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let (verifier, real) = match verifier {
            Some(v) => (v.clone(), true),
            None => {
                // A stable fake salt per unknown name, as PostgreSQL does.
                let salt = fake_salt(mock_seed);
                (Verifier { iterations: 4096, salt, stored_key: [0; 32], server_key: [0; 32] }, false)
            }
        };
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        Ok(ServerExchange { verifier, real, client_first_bare: bare.to_owned(), server_first, nonce })
    }

    /// The server-first-message (AuthenticationSASLContinue data).
    pub fn server_first(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// Checks the client's final message; on success returns the server-final-message
    /// (AuthenticationSASLFinal data).
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("channel binding"))?;
        if binding != "biws" && binding != "eSws" {
            // "n,," or "y,," base64-encoded: anything else is a binding we did not offer.
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof encoding"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !self.real || !bool::from(computed.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

fn fake_salt(seed: &[u8]) -> Vec<u8> {
    Sha256::digest(seed)[..16].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(verifier: Option<&Verifier>, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let ex = ServerExchange::start(verifier, b"alice", client.message())?;
        client.update(ex.server_first()).map_err(|_| ScramError::Malformed("client"))?;
        let fin = ex.finish(client.message())?;
        client.finish(&fin).map_err(|_| ScramError::Malformed("server signature rejected by the client"))?;
        Ok(())
    }

    #[test]
    fn postgres_client_authenticates_against_our_verifier_and_postgres_verifier() {
        let v = Verifier::generate("correct horse");
        run(Some(&v), "correct horse").unwrap();
        assert!(matches!(run(Some(&v), "wrong"), Err(ScramError::WrongPassword)));
        assert!(matches!(run(None, "anything"), Err(ScramError::WrongPassword)));
        // A verifier made by postgres-protocol (the same code PostgreSQL's format follows).
        let pg: Verifier = postgres_protocol::password::scram_sha_256(b"s3cret").parse().unwrap();
        run(Some(&pg), "s3cret").unwrap();
        assert!(pg.check_password("s3cret"));
        assert!(!pg.check_password("s3cret "));
        assert_eq!(pg.to_string().parse::<Verifier>().unwrap(), pg);
    }

    #[test]
    fn malformed_messages_and_verifiers_are_refused() {
        let v = Verifier::generate("pw");
        for bad in
            [&b""[..], b"x", b"n,,", b"p=tls-server-end-point,,n=,r=abc", b"n,a=bob,n=,r=abc", b"n,,n=,r="]
        {
            assert!(ServerExchange::start(Some(&v), b"", bad).is_err(), "{bad:?}");
        }
        let ex = ServerExchange::start(Some(&v), b"", b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(b"c=biws,r=abc,p=AAAA").is_err());
        for bad in ["", "md5abc", "SCRAM-SHA-256$0:AA==$AA==:AA==", "SCRAM-SHA-256$4096:!!$x:y"] {
            assert_eq!(bad.parse::<Verifier>(), Err(VerifierError), "{bad}");
        }
    }
}
