//! Client authentication: SCRAM-SHA-256 (via `postgres-protocol`), md5 and clear text.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use crate::Error;
use crate::message::{Authentication, frontend};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Answers the server's authentication requests for one user.
pub struct Authenticator {
    user: String,
    password: Option<Vec<u8>>,
    scram: Option<ScramSha256>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `user` with an optional password.
    pub fn new(user: &str, password: Option<&[u8]>) -> Self {
        Authenticator { user: user.to_owned(), password: password.map(<[u8]>::to_vec), scram: None }
    }

    fn password(&self) -> Result<&[u8], Error> {
        self.password.as_deref().ok_or_else(|| Error::PasswordRequired { user: self.user.clone() })
    }

    /// Handles one request; appends the reply (if any) to `out`. Returns true on
    /// `AuthenticationOk`.
    pub fn on_request(&mut self, req: Authentication, out: &mut Vec<u8>) -> Result<bool, Error> {
        match req {
            Authentication::Ok => return Ok(true),
            Authentication::CleartextPassword => {
                let pw = self.password()?.to_vec();
                frontend::password(out, &pw);
            }
            Authentication::Md5Password(salt) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?, salt);
                frontend::password(out, hash.as_bytes());
            }
            Authentication::Sasl(mechanisms) => {
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(Error::UnsupportedAuth(format!(
                        "SASL mechanisms {mechanisms:?} (only SCRAM-SHA-256 is supported)"
                    )));
                }
                // Channel binding is not offered: SCRAM-SHA-256 without -PLUS, flag 'n'.
                let scram = ScramSha256::new(self.password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(out, SCRAM_SHA_256, scram.message());
                self.scram = Some(scram);
            }
            Authentication::SaslContinue(data) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL continue before SASL start".into()))?;
                scram.update(&data).map_err(|e| Error::Protocol(format!("bad SCRAM challenge: {e}")))?;
                frontend::sasl_response(out, scram.message());
            }
            Authentication::SaslFinal(data) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL final before SASL start".into()))?;
                scram
                    .finish(&data)
                    .map_err(|e| Error::Protocol(format!("the server failed SCRAM verification: {e}")))?;
            }
            Authentication::Unsupported(code) => {
                return Err(Error::UnsupportedAuth(format!(
                    "authentication request code {code} (Kerberos, GSSAPI and SSPI are not supported)"
                )));
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_and_cleartext() {
        let mut a = Authenticator::new("alice", Some(b"pw"));
        let mut out = Vec::new();
        assert!(!a.on_request(Authentication::Md5Password([1, 2, 3, 4]), &mut out).unwrap());
        assert_eq!(out[0], b'p');
        assert!(out[5..].starts_with(b"md5"));
        out.clear();
        a.on_request(Authentication::CleartextPassword, &mut out).unwrap();
        assert_eq!(&out[5..], b"pw\0");
        assert!(a.on_request(Authentication::Ok, &mut out).unwrap());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let mut out = Vec::new();
        let mut a = Authenticator::new("bob", None);
        assert!(matches!(
            a.on_request(Authentication::CleartextPassword, &mut out),
            Err(Error::PasswordRequired { .. })
        ));
        let mut a = Authenticator::new("bob", Some(b"x"));
        assert!(a.on_request(Authentication::Sasl(vec!["OTHER".into()]), &mut out).is_err());
        assert!(a.on_request(Authentication::Unsupported(7), &mut out).is_err());
        assert!(a.on_request(Authentication::SaslContinue(bytes::Bytes::new()), &mut out).is_err());
        out.clear();
        a.on_request(Authentication::Sasl(vec![SCRAM_SHA_256.into()]), &mut out).unwrap();
        assert!(out.windows(13).any(|w| w == SCRAM_SHA_256.as_bytes()));
        // A forged server-first message must not be accepted.
        assert!(
            a.on_request(
                Authentication::SaslContinue(bytes::Bytes::from_static(b"r=bogus,s=AAAA,i=1")),
                &mut out
            )
            .is_err()
        );
    }
}
