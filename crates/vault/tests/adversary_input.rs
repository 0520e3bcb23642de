//! A4 on the wire: forged timestamps, bytes that do not match their name, hostile names, and
//! malformed or oversized requests. Each is refused with a 4xx and a message, nothing is
//! stored, and the service keeps serving.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::Method;
use store::{ObjectKind, ObjectName, ObjectStore, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vault_api::Scope;

const DAY: u64 = 86_400;

#[tokio::test]
async fn forged_client_timestamps_do_not_change_retention_or_record_times() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let read = h.client(Scope::Read).await;
    let pack = h.pack(b"pack with forged headers").await;
    let (bytes, name) = (pack.bytes.to_vec(), pack.name);
    let r = append
        .request(Method::PUT, &format!("/v1/objects/{name}"))
        .header("Date", "Thu, 01 Jan 1970 00:00:00 GMT")
        .header("X-Retain-Until", "1970-01-02T00:00:00Z")
        .header("X-Holdfast-Retain-Until", "1970-01-02T00:00:00Z")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let expected = T0.plus(Duration::from_secs(30 * DAY));
    let meta = h.store().list(ObjectKind::Pack).await.unwrap();
    assert_eq!(meta[0].retain_until, expected, "retention must be vault clock + policy");

    // Timestamps inside a record body are data; the record's time is the vault's.
    h.clock.advance(Duration::from_secs(3600));
    let body = serde_json::json!({"written_at": "1970-01-01T00:00:00Z", "retain_until": "1970-01-01T00:00:00Z", "note": "audit"});
    let rec = append.append_record("audit.batch", body).await.unwrap();
    let now = T0.plus(Duration::from_secs(3600));
    assert_eq!(rec.written_at, now);
    assert_eq!(rec.retain_until, now.plus(Duration::from_secs(30 * DAY)));
    let listed = read.list_records(Some("audit.batch")).await.unwrap().records;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].written_at, now);
    assert_eq!(
        h.store().head(&rec.name).await.unwrap().unwrap().retain_until,
        now.plus(Duration::from_secs(30 * DAY))
    );

    // A forged top-level field is refused outright, and nothing is written.
    let before = h.listing().await;
    let r = append
        .request(Method::POST, "/v1/records")
        .json(&serde_json::json!({"kind": "audit.batch", "body": {}, "written_at": "1970-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("written_at"));
    assert_eq!(h.listing().await, before);
    // Re-uploading with a forged earlier retention cannot shorten it: the re-upload only
    // lengthens it to the vault's now + policy.
    let bytes = pack.bytes.to_vec();
    let r = append
        .request(Method::PUT, &format!("/v1/objects/{name}"))
        .header("X-Retain-Until", "1970-01-02T00:00:00Z")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meta = h.store().head(&name).await.unwrap().unwrap();
    assert_eq!(meta.retain_until, now.plus(Duration::from_secs(30 * DAY)));
}

#[tokio::test]
async fn mismatched_bytes_and_hostile_names_are_refused_and_nothing_is_stored() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let read = h.client(Scope::Read).await;
    let before = h.listing().await;
    // Bytes that do not hash to the name.
    let name = ObjectName::for_bytes(ObjectKind::Pack, b"what the name promises");
    let err = append.put_object(&name, "something else".into()).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("do not match"), "{err}");
    let good = "a".repeat(64);
    let hostile = [
        "/v1/objects/pack/..".to_string(),
        "/v1/objects/pack/..%2F..%2Fkeys".to_string(),
        format!("/v1/objects/pack/..%2F{good}"),
        format!("/v1/objects/pack%2F..%2F/{good}"),
        format!("/v1/objects/pack/{}/x", &good),
        format!("/v1/objects/pack/{}%00", &good[..63]),
        format!("/v1/objects/pack/{}", "a".repeat(5000)),
        format!("/v1/objects/pack/{}", "A".repeat(64)),
        format!("/v1/objects/PACK/{good}"),
        format!("/v1/objects/tmp/{good}"),
        format!("/v1/objects/retention/{good}"),
    ];
    for path in &hostile {
        for (c, m) in [(&append, Method::PUT), (&read, Method::GET)] {
            let r = c.request(m.clone(), path).body("x").send().await.unwrap();
            let code = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(code == 400 || code == 403, "{m} {path} got {code}: {text}");
            assert!(text.contains("\"error\""), "{m} {path}: no JSON error: {text}");
        }
    }
    assert_eq!(h.listing().await, before);
    assert!(
        std::fs::read_dir(h.store_dir().join("tmp")).unwrap().next().is_none(),
        "a partial upload was left in tmp/"
    );
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx_and_the_service_keeps_serving() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let read = h.client(Scope::Read).await;
    let pack = h.upload(&append, &vec![7u8; 1000]).await;
    let pack_size = h.store().head(&pack).await.unwrap().unwrap().size as usize;
    let before = h.listing().await;

    // Bad JSON, a wrong type, an unknown scope.
    for body in ["{not json", "[]", "{\"kind\": 5, \"body\": {}}", ""] {
        let r = append
            .request(Method::POST, "/v1/records")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert!(r.text().await.unwrap().contains("malformed JSON"));
    }
    let r = h
        .admin
        .request(Method::POST, "/v1/tokens")
        .body("{\"scope\": \"root\", \"label\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // 100 MB body: refused with 413 before it is read.
    let big = vec![0u8; 100 << 20];
    let big_name = ObjectName::for_bytes(ObjectKind::Pack, &big);
    let r = append.request(Method::PUT, &format!("/v1/objects/{big_name}")).body(big).send().await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert!(r.text().await.unwrap().contains("max_body_bytes"));
        }
        // The server may close the socket while the client is still sending: also a refusal.
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error {e}"),
    }

    // Bad ranges.
    for range in ["bytes=5000-6000", "bytes=9-3", "chunks=0-1", "bytes=0-1,4-5", "bytes=x-y"] {
        let r = read
            .request(Method::GET, &format!("/v1/objects/{pack}"))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{range}: {}", r.status());
        assert!(r.text().await.unwrap().contains("Range header"));
    }
    // A good range works.
    let part = read.get_object_range(&pack, 10, 19).await.unwrap();
    assert_eq!(part.len(), 10);

    // Bad queries: unknown or repeated parameters, a negative or non-numeric number, a kind
    // that is none. A JSON 400 each, and nothing listed or read.
    for url in [
        "/v1/objects?kind=pack&sneaky=1",
        "/v1/objects?kind=pack&kind=catalog",
        "/v1/objects?kind=..%2Fkeys",
        "/v1/records?limit=5",
        "/v1/backups/00/file?path=base/1&offset=-1",
        "/v1/backups/00/file?path=base/1&length=1e9",
        "/v1/backups/00/file?path=base/1&offset=1&offset=2",
    ] {
        let r = read.request(Method::GET, url).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{url}: {body}");
    }
    // Without a token, a bad query is a 401 first: the query is not looked at.
    let anon = h.admin.with_token(None);
    let r = anon.request(Method::GET, "/v1/objects?sneaky=1").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Garbage on the socket, without and with TLS.
    let addr = h.handle.as_ref().unwrap().addr();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\x00\x01\x02GARBAGE\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    let mut tls = tls_connect(addr, &std::fs::read(h.dir.path().join("vault/tls/cert.pem")).unwrap()).await;
    tls.write_all(b"GET /\x00\x7f HTTP/9.9\r\nHost\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 4"), "garbage HTTP got: {reply:?}");

    // Unknown endpoint and wrong method: JSON 4xx.
    let r = read.request(Method::GET, "/v2/everything").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = read.request(Method::PATCH, "/v1/retention").send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Still serving, nothing changed.
    assert_eq!(read.health().await.unwrap().status, "ok");
    assert_eq!(read.get_object(&pack).await.unwrap().len(), pack_size);
    assert_eq!(h.listing().await, before);
    let metrics = read.metrics().await.unwrap();
    assert!(metrics.contains("holdfast_vault_requests_total{status=\"400\"}"), "{metrics}");
    assert!(!metrics.contains("hft_"), "metrics must not leak tokens");
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
}

#[tokio::test]
async fn vault_clock_not_request_time_decides_retention_after_policy_change() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    h.admin.set_retention(90).await.unwrap();
    h.clock.set(Timestamp(T0.as_secs() + 5 * DAY as i64));
    let name = h.upload(&append, b"after policy change").await;
    let meta = h.store().head(&name).await.unwrap().unwrap();
    assert_eq!(meta.retain_until, Timestamp(T0.as_secs() + 95 * DAY as i64));
}
