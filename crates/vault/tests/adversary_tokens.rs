//! A4 / A3 with the wrong token: append, read and stolen or revoked tokens cannot destroy
//! anything, lengthen nothing they should not, or mint tokens. The store listing (names, sizes,
//! retention) is compared before and after every attack.

mod common;

use common::*;
use reqwest::Method;
use store::{ObjectKind, ObjectName};
use vault_api::{ProposeRequest, Scope};

#[tokio::test]
async fn append_and_read_tokens_cannot_delete_overwrite_shorten_or_mint() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let read = h.client(Scope::Read).await;
    let pack = h.upload(&append, b"precious pack bytes").await;
    let before = h.listing().await;

    for (who, c) in [("append", &append), ("read", &read)] {
        // Delete an object: no such operation exists, for anyone.
        let r = c.request(Method::DELETE, &format!("/v1/objects/{pack}")).send().await.unwrap();
        assert!(r.status().is_client_error(), "{who}: DELETE got {}", r.status());
        // Overwrite: other bytes under the existing name.
        let r = c.request(Method::PUT, &format!("/v1/objects/{pack}")).body("evil").send().await.unwrap();
        assert!([400, 403].contains(&r.status().as_u16()), "{who}: overwrite got {}", r.status());
        // Shorten retention.
        assert_eq!(status(c.set_retention(1).await), 403, "{who}");
        assert_eq!(status(c.extend_retention(store::Timestamp(0)).await), 403, "{who}");
        // Mint tokens, revoke the admin's.
        assert_eq!(status(c.create_token(Scope::Admin, "mine").await), 403, "{who}");
        assert_eq!(status(c.list_tokens().await), 403, "{who}");
        let admin_id = &h.admin.list_tokens().await.unwrap().tokens[0].id;
        assert_eq!(status(c.revoke_token(admin_id).await), 403, "{who}");
        // Forge vault-only records.
        for kind in [
            "token.created",
            "token.revoked",
            "retention.policy",
            "deletion.proposed",
            "deletion.signed",
            "deletion.executed",
            "backup",
            "backup.complete",
            "wal.segment",
            "prune",
            "incident",
            "drill",
            "drill.report",
            "token.upload",
        ] {
            let body = serde_json::json!({"id": "0123456789abcdef", "scope": "admin", "hash": "00", "label": "x", "created_by": "x", "days": 1});
            let code = status(c.append_record(kind, body).await);
            assert!([403].contains(&code), "{who} wrote {kind}: {code}");
        }
        // Propose or execute deletions.
        let req = ProposeRequest { objects: vec![pack], backup: None, reason: "cleanup".into() };
        assert_eq!(status(c.propose(&req).await), 403, "{who}");
        assert_eq!(status(c.execute("0123456789abcdef").await), 403, "{who}");
        // Upload objects the vault writes itself.
        let cat = ObjectName::for_bytes(ObjectKind::Catalog, b"forged record");
        let r =
            c.request(Method::PUT, &format!("/v1/objects/{cat}")).body("forged record").send().await.unwrap();
        assert!([403].contains(&r.status().as_u16()), "{who}: catalog upload got {}", r.status());
    }
    // A read token cannot upload; an append token cannot read.
    assert_eq!(
        status(read.put_object(&ObjectName::for_bytes(ObjectKind::Pack, b"x"), "x".into()).await),
        403
    );
    let err = append.get_object(&pack).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("scope read"), "the message names the scope needed: {err}");
    assert_eq!(h.listing().await, before, "the store changed under attack");
}

#[tokio::test]
async fn unknown_malformed_and_revoked_tokens_get_401() {
    let mut h = start(Opts::default()).await;
    let read_token = h.admin.create_token(Scope::Read, "soon revoked").await.unwrap();
    let read = h.admin.with_token(Some(read_token.token.clone()));
    let before = h.listing().await;
    let none = h.admin.with_token(None);
    assert_eq!(status(none.list_objects(ObjectKind::Pack).await), 401);
    let garbage = h.admin.with_token(Some("hft_garbage".into()));
    assert_eq!(status(garbage.list_objects(ObjectKind::Pack).await), 401);
    // A well-formed token with a guessed secret for a real id.
    let id = h.admin.list_tokens().await.unwrap().tokens[0].id.clone();
    let forged = vault_api::Token::new(id, [0x41; 32]).unwrap().expose();
    assert_eq!(status(h.admin.with_token(Some(forged)).list_tokens().await), 401);
    // Revocation takes effect at once.
    read.list_objects(ObjectKind::Pack).await.unwrap();
    h.admin.revoke_token(&read_token.id).await.unwrap();
    assert_eq!(status(read.list_objects(ObjectKind::Pack).await), 401);
    let after = h.listing().await;
    // Revoking wrote one catalog record and removed nothing.
    assert!(before.iter().all(|o| after.contains(o)), "revocation removed something");
    assert_eq!(after.len(), before.len() + 1);

    // ... and survives a restart: state is rebuilt from the catalog, not kept on the side.
    h.handle.take().unwrap().shutdown().await;
    let handle = vault::serve(h.config.clone(), h.clock.clone()).await.unwrap();
    let url = format!("https://{}", handle.addr());
    let ca = std::fs::read(h.dir.path().join("vault/tls/cert.pem")).unwrap();
    let revoked = vault_api::VaultClient::new(&url, &ca, Some(read_token.token)).unwrap();
    assert_eq!(status(revoked.list_objects(ObjectKind::Pack).await), 401);
    assert_eq!(revoked.health().await.unwrap().status, "ok");
    handle.shutdown().await;
}
