//! A3: one vault operator with the admin token (and at most one keyholder key) cannot delete
//! unexpired data or shorten retention. Early deletion needs M distinct keyholders and the
//! waiting period (vault clock, moved by a ManualClock), and any one keyholder can veto.

mod common;

use std::time::Duration;

use common::*;
use vault_api::{ProposalStatus, ProposeRequest, Scope};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn admin_cannot_shorten_retention_or_delete_without_quorum() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    h.upload(&append, b"pack one").await;
    let before = h.listing().await;
    let err = h.admin.set_retention(1).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(
        err.to_string()
            .contains("retention can only be lengthened; shortening needs a quorum deletion proposal"),
        "{err}"
    );
    // Lengthening is fine, and then the old value is "shortening".
    assert_eq!(h.admin.set_retention(60).await.unwrap().days, 60);
    assert_eq!(status(h.admin.set_retention(30).await), 403);
    assert_eq!(h.admin.retention().await.unwrap().days, 60);
    // Extending retention into the past changes nothing.
    assert_eq!(h.admin.extend_retention(store::Timestamp(0)).await.unwrap().extended, 0);
    let after = h.listing().await;
    // Only the one retention.policy record was added.
    assert!(before.iter().all(|o| after.contains(o)));
    assert_eq!(after.len(), before.len() + 1);
}

#[tokio::test]
async fn deletion_needs_distinct_signatures_and_the_wait_and_removes_only_named_objects() {
    let alerts = tempfile::tempdir().unwrap();
    let alert_file = alerts.path().join("alerts.jsonl");
    let h = start(Opts {
        alert_command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("printf '%s\\n' \"$(cat)\" >> {}", alert_file.display()),
        ]),
        ..Opts::default()
    })
    .await;
    let append = h.client(Scope::Append).await;
    let doomed = h.upload(&append, b"doomed pack").await;
    let kept = h.upload(&append, b"kept pack").await;
    let before = h.listing().await;
    let alerts_before = alerts_total(&h.admin).await;

    let p = h
        .admin
        .propose(&ProposeRequest {
            objects: vec![doomed],
            backup: None,
            reason: "GDPR erasure request 17".into(),
        })
        .await
        .unwrap();
    assert_eq!(p.statement.not_before, common::T0.plus(72 * HOUR));
    // The proposal raised an alert: log, metric, and the alert command.
    let metrics = h.admin.metrics().await.unwrap();
    assert!(metrics.contains("holdfast_vault_deletion_proposals_total 1"), "{metrics}");
    assert_eq!(alerts_total(&h.admin).await, alerts_before + 1, "{metrics}");
    // The alert command is a process the vault spawns: on a loaded machine, seconds.
    testkit::wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(25),
        "the alert command's file",
        || {
            let seen = std::fs::read_to_string(&alert_file).unwrap_or_default().contains(&p.id);
            std::future::ready(seen.then_some(()))
        },
    )
    .await
    .unwrap();

    // Nothing yet.
    assert_eq!(status(h.admin.execute(&p.id).await), 403);
    // The same keyholder twice counts once.
    let s0 = h.signature(0, &p.id).await;
    h.admin.sign(&p.id, &s0).await.unwrap();
    let v = h.admin.sign(&p.id, &s0).await.unwrap();
    assert_eq!(v.signed_by.len(), 1);
    h.clock.advance(100 * HOUR);
    let err = h.admin.execute(&p.id).await.unwrap_err();
    assert!(err.to_string().contains("only 1 distinct"), "{err}");
    // A stranger's key or a signature over other bytes is refused.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[99; 32]);
    let mut forged = h.signature(1, &p.id).await;
    forged.public_key = hex::encode(stranger.verifying_key().as_bytes());
    assert_eq!(status(h.admin.sign(&p.id, &forged).await), 403);
    let mut bad = h.signature(1, &p.id).await;
    bad.signature = s0.signature.clone();
    assert_eq!(status(h.admin.sign(&p.id, &bad).await), 400);
    assert_eq!(h.listing().await.len(), before.len() + 2, "only proposal and one signature recorded");

    // A second proposal, fully signed at once, still waits 72 hours from its own proposal time.
    let p2 = h
        .admin
        .propose(&ProposeRequest { objects: vec![doomed], backup: None, reason: "again".into() })
        .await
        .unwrap();
    for i in 0..2 {
        let s = h.signature(i, &p2.id).await;
        h.admin.sign(&p2.id, &s).await.unwrap();
    }
    let err = h.admin.execute(&p2.id).await.unwrap_err();
    assert!(err.to_string().contains("waiting period"), "{err}");
    h.clock.advance(71 * HOUR);
    assert_eq!(status(h.admin.execute(&p2.id).await), 403);
    assert!(h.store().object_path(&doomed).exists());

    // The first proposal gets its second distinct signature: past the wait, it executes.
    let s1 = h.signature(1, &p.id).await;
    h.admin.sign(&p.id, &s1).await.unwrap();
    let done = h.admin.execute(&p.id).await.unwrap();
    assert_eq!(done.removed, vec![doomed]);
    assert_eq!(h.admin.proposal(&p.id).await.unwrap().status, ProposalStatus::Executed);
    assert_eq!(status(h.admin.execute(&p.id).await), 409, "a proposal executes once");

    // Only the named object is gone; everything else is as before (plus new records).
    let after = h.listing().await;
    let removed: Vec<_> = before.iter().filter(|o| !after.contains(o)).collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].0, doomed);
    assert!(after.iter().any(|o| o.0 == kept));
}

#[tokio::test]
async fn a_single_veto_kills_a_fully_signed_proposal() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let target = h.upload(&append, b"wanted by the attacker").await;
    let p = h
        .admin
        .propose(&ProposeRequest { objects: vec![target], backup: None, reason: "space".into() })
        .await
        .unwrap();
    for i in 0..2 {
        let s = h.signature(i, &p.id).await;
        h.admin.sign(&p.id, &s).await.unwrap();
    }
    let before = h.listing().await;
    // A veto signed over the wrong message is refused.
    let mut wrong = h.veto(2, &p.id);
    wrong.signature = h.veto(2, "0000000000000000").signature;
    assert_eq!(status(h.admin.veto(&p.id, &wrong).await), 400);
    // Any token may carry a keyholder's veto (the keyholder may hold only a read token).
    let read = h.client(Scope::Read).await;
    let v = read.veto(&p.id, &h.veto(2, &p.id)).await.unwrap();
    assert_eq!(v.status, ProposalStatus::Vetoed);
    h.clock.advance(200 * HOUR);
    let err = h.admin.execute(&p.id).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("vetoed"), "{err}");
    let after = h.listing().await;
    assert!(before.iter().all(|o| after.contains(o)), "a vetoed proposal removed something");
    // Signatures after a veto are refused.
    let s = h.signature(2, &p.id).await;
    assert_eq!(status(h.admin.sign(&p.id, &s).await), 409);
}
