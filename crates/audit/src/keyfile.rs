//! The gate's audit signing key: an ed25519 seed in a text file readable only by its owner.
//!
//! ```text
//! # holdfast gate audit signing key (ed25519)
//! # public key: <64 hex digits>
//! <64 hex digits of seed>
//! ```
//!
//! The verifier is told the public key (`holdfast audit verify --trust-key`), never the file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::batch::{key_hex, parse_public_key};
use crate::error::{AuditError, clip};

/// Creates a new key in a new file (mode 0600; refuses to overwrite) and returns it.
pub fn generate(path: &Path) -> Result<SigningKey, AuditError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| AuditError::KeyFile { path: path.into(), why: format!("no randomness: {e}") })?;
    let key = SigningKey::from_bytes(&seed);
    let text = format!(
        "# holdfast gate audit signing key (ed25519)\n# public key: {}\n{}\n",
        key_hex(&key.verifying_key()),
        hex::encode(seed)
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io("cannot create the key file", path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| AuditError::io("cannot write the key file", path, e))?;
    Ok(key)
}

/// Reads a key written by [`generate`]. Refuses a file others can read: the key is what makes
/// the gate's batches unforgeable.
pub fn load(path: &Path) -> Result<SigningKey, AuditError> {
    let meta = std::fs::metadata(path).map_err(|e| AuditError::io("cannot read the key file", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::KeyFile {
            path: path.into(),
            why: format!("the signing key is readable by others (mode {mode:03o}): run chmod 600 on it"),
        });
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| AuditError::io("cannot read the key file", path, e))?;
    let line = first_line(&text).ok_or_else(|| AuditError::KeyFile {
        path: path.into(),
        why: "holds no key (create one with `holdfast audit keygen --out FILE`)".into(),
    })?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(line, &mut seed).map_err(|_| AuditError::KeyFile {
        path: path.into(),
        why: "is not an audit signing key (64 hex digits expected)".into(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key to trust: 64 hex digits, or a file holding them (the `# public key:` line of a
/// key file counts too, so `--trust-key gate.key` works on the gate host; the public key alone
/// is what the verifier should be given elsewhere).
pub fn load_public(arg: &str) -> Result<VerifyingKey, AuditError> {
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(parse_public_key(arg)?);
    }
    let text = std::fs::read_to_string(Path::new(arg))
        .map_err(|source| AuditError::TrustKeyUnreadable { arg: clip(arg), source })?;
    let invalid = |source| AuditError::TrustKeyInvalid { arg: arg.to_string(), source };
    for l in text.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("# public key:") {
            return parse_public_key(rest).map_err(invalid);
        }
    }
    let line = first_line(&text).ok_or_else(|| AuditError::TrustKeyMissing { arg: arg.to_string() })?;
    parse_public_key(line).map_err(invalid)
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ParseError;

    #[test]
    fn generate_load_and_public() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gate.key");
        let k = generate(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&p).unwrap().to_bytes(), k.to_bytes());
        assert!(generate(&p).is_err(), "an existing key is never overwritten");
        let public = key_hex(&k.verifying_key());
        assert_eq!(load_public(&public).unwrap(), k.verifying_key());
        assert_eq!(load_public(p.to_str().unwrap()).unwrap(), k.verifying_key());
        let pubfile = dir.path().join("gate.pub");
        std::fs::write(&pubfile, format!("{public}\n")).unwrap();
        assert_eq!(load_public(pubfile.to_str().unwrap()).unwrap(), k.verifying_key());
        let e = load_public("not-a-key").unwrap_err();
        assert!(matches!(e, AuditError::TrustKeyUnreadable { .. }), "{e}");
        assert!(e.to_string().contains("neither 64 hex digits"), "{e}");
        let empty = dir.path().join("empty.pub");
        std::fs::write(&empty, "# nothing here\n").unwrap();
        let e = load_public(empty.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("holds no public key"), "{e}");
        std::fs::write(&empty, "# public key: 12ab\n").unwrap();
        let e = load_public(empty.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, AuditError::TrustKeyInvalid { source: ParseError::PublicKeyHex(_), .. }), "{e}");

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
