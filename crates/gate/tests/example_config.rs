//! The example gate.toml parses, with its secret files in place; bad configurations say what
//! is wrong.

use std::path::Path;

fn with_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    for f in ["gate_app", "alice_db", "dba"] {
        std::fs::write(dir.join(format!("secrets/{f}.password")), "pw\n").unwrap();
    }
    std::fs::write(dir.join("secrets/vault-append.token"), "hft_0123456789abcdef_x\n").unwrap();
    std::fs::write(dir.join("vault-ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(dir.join("policy.toml"), "row_guard_max_rows = 500\n").unwrap();
}

#[test]
fn the_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    with_files(dir.path());
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gate.example.toml")).unwrap();
    let c = gate::Config::parse(&text, dir.path()).unwrap();
    assert_eq!(c.people.len(), 2);
    assert!(c.person("bob").unwrap().approver);
    assert_eq!(c.grant_roles[0].max_for.as_secs(), 4 * 3600);
    assert_eq!(c.upstream.config_for("dba").password.as_deref(), Some("pw"));
    assert!(c.require_tls);
    assert_eq!(c.catalog_max_age.as_secs(), 5);
    assert_eq!(c.webhooks.len(), 1);
    guard::Policy::from_toml(c.policy_text.as_deref().unwrap()).unwrap();
}

#[test]
fn mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    with_files(dir.path());
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gate.example.toml")).unwrap();
    let cases = [
        ("approver = true", "approver = true\nfavourite_colour = \"red\"", "unknown field"),
        ("totp_secret = \"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\"\n", "", "approvers need a second factor"),
        ("may_request = [\"dba\"]", "may_request = [\"root\"]", "has no [[grant_role]]"),
        ("networks = [\"10.1.0.0/16\"]", "networks = [\"10.1.0.0/40\"]", "prefix"),
        ("hours = \"07:00-21:00\"", "hours = \"7-21\"", "hours"),
        ("on_full = \"refuse_all\"", "on_full = \"drop\"", "on_full"),
        ("listen = \"0.0.0.0:6432\"", "listen = \"everywhere\"", "listen"),
        ("catalog_max_age = \"5s\"", "catalog_max_age = \"0s\"", "catalog_max_age: \"0s\" is not a duration"),
        (
            "catalog_max_age = \"5s\"",
            "catalog_max_age = \"soon\"",
            "catalog_max_age: \"soon\" is not a duration",
        ),
    ];
    for (from, to, want) in cases {
        assert!(text.contains(from), "{from}");
        let bad = text.replacen(from, to, 1);
        let e = gate::Config::parse(&bad, dir.path()).unwrap_err();
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
}
