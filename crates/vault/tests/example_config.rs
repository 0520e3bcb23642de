//! Every example config in the repository parses and validates.

use std::path::Path;

#[test]
fn example_vault_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vault.toml");
    let c = vault::config::Config::load(&path).unwrap();
    assert_eq!(c.quorum.threshold, 2);
    assert_eq!(c.quorum.keyholders.len(), 3);
    assert_eq!(c.listen.port(), 8443);
    assert!(c.alert_command.is_some());
    // Debug output never carries key material: the config holds only paths and public keys.
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("AGE-SECRET-KEY"));
}
