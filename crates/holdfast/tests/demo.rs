//! The demo is the product's end-to-end test: a real PostgreSQL, a vault pulling its WAL and a
//! base backup, the insider's attack on both, and a restore to just before the first
//! destructive transaction that must bring every row back.

use std::process::Command;

#[test]
fn the_demo_restores_the_shop_to_just_before_the_attack() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("holdfast demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", out.status);
    // Every attack on the vault was refused, and the alert was raised.
    assert!(!stdout.contains("ACCEPTED"), "an attack on the vault succeeded:\n{stdout}");
    assert!(stdout.contains("ALERT raised"), "{stdout}");
    // The vault noticed the primary vanish.
    assert!(stdout.contains("INCIDENT connection_lost"), "{stdout}");
    // The first destructive transaction was found in the vault's WAL, and the restored shop
    // equals the shop as it was just before it.
    assert!(stdout.contains("first destructive commit: transaction"), "{stdout}");
    assert!(stdout.contains("deleted 8000 rows"), "{stdout}");
    assert!(
        stdout.contains("every order, order item, gift-card balance and loyalty point is back"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the restored shop holds 51000 orders, 50000 order items, 8000 gift cards"),
        "{stdout}"
    );
}
