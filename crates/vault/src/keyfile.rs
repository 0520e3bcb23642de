//! Key and certificate files: the vault's age identity and its self-signed TLS certificate.
//!
//! These (with the config) are the only files in the vault's directory that matter; all other
//! state is rebuilt from the store at start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::ExposeSecret;

/// Errors reading or creating key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no age identity (a line starting with AGE-SECRET-KEY-1): {why}")]
    BadIdentity { path: PathBuf, why: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] serve::tls::TlsError),
}

/// An age X25519 identity read from a file. Debug never shows the secret.
#[derive(Clone)]
pub struct AgeKey(Arc<age::x25519::Identity>);

impl std::fmt::Debug for AgeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeKey({}, secret: [redacted])", self.recipient())
    }
}

impl AgeKey {
    /// A fresh identity.
    pub fn generate() -> AgeKey {
        AgeKey(Arc::new(age::x25519::Identity::generate()))
    }

    /// The identity.
    pub fn identity(&self) -> &age::x25519::Identity {
        &self.0
    }

    /// Its public recipient (`age1…`).
    pub fn recipient(&self) -> age::x25519::Recipient {
        self.0.to_public()
    }

    /// Reads an identity file in age's format (comments start with `#`).
    pub fn load(path: &Path) -> Result<AgeKey, KeyFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KeyFileError::Read { path: path.into(), source: e })?;
        let line =
            text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).ok_or_else(|| {
                KeyFileError::BadIdentity { path: path.into(), why: "the file is empty".into() }
            })?;
        let id = age::x25519::Identity::from_str(line)
            .map_err(|e| KeyFileError::BadIdentity { path: path.into(), why: e.to_string() })?;
        Ok(AgeKey(Arc::new(id)))
    }

    /// Writes the identity to a new file readable only by its owner; refuses to overwrite.
    pub fn write_new(&self, path: &Path, created: &str) -> Result<(), KeyFileError> {
        let text = format!(
            "# created: {created}\n# public key: {}\n{}\n",
            self.recipient(),
            self.0.to_string().expose_secret()
        );
        write_private(path, text.as_bytes())
    }
}

/// Creates `path` with mode 0600 and writes `bytes`; fails if it exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| KeyFileError::Write { path: path.into(), source: e })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| KeyFileError::Write { path: path.into(), source: e })
}

/// Creates a self-signed certificate for 127.0.0.1 and localhost if neither file exists.
/// Returns whether it created one.
pub fn ensure_tls(cert: &Path, key: &Path) -> Result<bool, KeyFileError> {
    serve::tls::ensure_self_signed(cert, key).map_err(KeyFileError::from)
}

/// A rustls server config from PEM files (HTTP/1.1 by ALPN).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, KeyFileError> {
    let mut cfg = serve::tls::server_config(cert, key).map_err(KeyFileError::from)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_is_private_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = AgeKey::generate();
        k.write_new(&p, "now").unwrap();
        assert!(k.write_new(&p, "now").is_err(), "must not overwrite");
        let back = AgeKey::load(&p).unwrap();
        assert_eq!(back.recipient().to_string(), k.recipient().to_string());
        assert!(!format!("{k:?}").contains("AGE-SECRET-KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn tls_pair_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls/cert.pem"), dir.path().join("tls/key.pem"));
        assert!(ensure_tls(&c, &k).unwrap());
        assert!(!ensure_tls(&c, &k).unwrap());
        server_config(&c, &k).unwrap();
        std::fs::remove_file(&k).unwrap();
        assert!(ensure_tls(&c, &k).is_err());
    }
}
