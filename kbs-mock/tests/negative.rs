//! Every rejection has its own error, trustee's RFC 7807 shape, one line, and releases nothing.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use podvm_attestation::kbs_client::FlattenedJwe;
use podvm_attestation::kbs_client::protocol::b64url;
use serde_json::{Value, json};

async fn server() -> (tempfile::TempDir, podvm_kbs_mock::Running) {
    let d = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d.path());
    cfg.max_body = 64 << 10;
    let s = start(cfg).await;
    assert_eq!(
        upload(&s.url(false), "default/key/1", SECRET)
            .await
            .status(),
        200
    );
    (d, s)
}

/// A successful attestation: (cookie, token, key).
async fn attested(url: &str) -> (String, String, podvm_attestation::kbs_client::TeeKey) {
    let (cookie, nonce) = auth_snp(url).await;
    let key = tee_key();
    let pk = key.public_jwk();
    let body = attest_body(&nonce, &pk, &pk, template(MEASUREMENT), Some(INIT_DATA));
    let r = post_attest(url, &cookie, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("token");
    (cookie, v["token"].as_str().expect("token").to_string(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let (cookie, nonce) = auth_snp(&url).await;
    let key = tee_key();
    let pk = key.public_jwk();
    let body = attest_body(&nonce, &pk, &pk, template(MEASUREMENT), Some(INIT_DATA));
    assert_eq!(post_attest(&url, &cookie, &body).await.status(), 200);
    // The same message again on the same session.
    let (st, kind, detail) = problem(post_attest(&url, &cookie, &body).await).await;
    assert_eq!((st, kind.as_str()), (401, "AttestationError"));
    assert!(detail.contains("already used (replay)"), "{detail}");
    // The same message on a fresh session (its nonce differs).
    let (cookie2, _) = auth_snp(&url).await;
    let (st, _, detail) = problem(post_attest(&url, &cookie2, &body).await).await;
    assert_eq!(st, 401);
    assert!(
        detail.contains("not this session's challenge nonce"),
        "{detail}"
    );
    // No cookie at all.
    let r = http()
        .post(format!("{url}/kbs/v0/attest"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let (_, _, detail) = problem(r).await;
    assert!(detail.contains("no kbs-session-id cookie"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session() {
    let d = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d.path());
    cfg.session_ttl = Duration::from_millis(300);
    let s = start(cfg).await;
    let url = s.url(false);
    let (cookie, nonce) = auth_snp(&url).await;
    let key = tee_key();
    let pk = key.public_jwk();
    let body = attest_body(&nonce, &pk, &pk, template(MEASUREMENT), Some(INIT_DATA));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (st, kind, detail) = problem(post_attest(&url, &cookie, &body).await).await;
    assert_eq!((st, kind.as_str()), (401, "AttestationError"));
    assert!(detail.starts_with("session expired at "), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_version_and_tee() {
    let (_d, s) = server().await;
    let url = s.url(false);
    for v in ["0.3.0", "0.4.1", "0.4"] {
        let r = auth(
            &url,
            json!({"version": v, "tee": "snp", "extra-params": ""}),
        )
        .await
        .expect_err("version");
        let (st, kind, detail) = problem(r).await;
        assert_eq!((st, kind.as_str()), (401, "AttestationError"));
        assert!(
            detail.contains(&format!("{v:?}")) && detail.contains("exactly 0.4.0"),
            "{detail}"
        );
    }
    let r = auth(
        &url,
        json!({"version": "0.4.0", "tee": "sample", "extra-params": ""}),
    )
    .await
    .expect_err("sample");
    let (_, _, detail) = problem(r).await;
    assert!(detail.contains("--allow-sample"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_data_not_bound_to_tee_pubkey() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let (cookie, nonce) = auth_snp(&url).await;
    let key = tee_key();
    let attacker = tee_key();
    // Evidence binds the guest's key; the request swaps in the attacker's key.
    let body = attest_body(
        &nonce,
        &attacker.public_jwk(),
        &key.public_jwk(),
        template(MEASUREMENT),
        Some(INIT_DATA),
    );
    let (st, kind, detail) = problem(post_attest(&url, &cookie, &body).await).await;
    assert_eq!((st, kind.as_str()), (401, "AttestationError"));
    assert!(
        detail.starts_with("report_data is not bound to this nonce and tee-pubkey"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_data_digest_mismatch() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let (cookie, nonce) = auth_snp(&url).await;
    let key = tee_key();
    let pk = key.public_jwk();
    let other = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = \"y\"\n";
    let body = attest_body(&nonce, &pk, &pk, template(MEASUREMENT), Some(other));
    let (st, kind, detail) = problem(post_attest(&url, &cookie, &body).await).await;
    assert_eq!((st, kind.as_str()), (401, "AttestationError"));
    assert!(
        detail.starts_with("init-data digest mismatch: Sha256"),
        "{detail}"
    );
    assert!(
        detail.contains(&hex::encode(host_data(INIT_DATA))),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_jwe_is_refused_by_the_client() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let (_cookie, token, key) = attested(&url).await;
    let r = http()
        .get(format!("{url}/kbs/v0/resource/default/key/1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let raw: Value = r.json().await.expect("jwe");
    assert!(raw.get("aad").is_none(), "no aad member, as trustee");
    let jwe: FlattenedJwe = serde_json::from_value(raw).expect("jwe shape");
    assert_eq!(key.decrypt(&jwe).expect("decrypt"), SECRET);
    let mut t = jwe.clone();
    let mut ct =
        podvm_attestation::kbs_client::protocol::b64url_decode("ct", &t.ciphertext).expect("b64");
    ct[3] ^= 0x80;
    t.ciphertext = b64url(&ct);
    let e = key.decrypt(&t).expect_err("tampered");
    assert!(e.to_string().contains("tampered"), "{e}");
    // A token is bound to its key: another key cannot decrypt.
    assert!(tee_key().decrypt(&jwe).is_err());
    // Forged token (signature of another key) is refused.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_sig = b64url(&[0u8; 64]);
    parts[2] = &forged_sig;
    let r = http()
        .get(format!("{url}/kbs/v0/resource/default/key/1"))
        .bearer_auth(parts.join("."))
        .send()
        .await
        .expect("get");
    let (st, kind, detail) = problem(r).await;
    assert_eq!((st, kind.as_str()), (401, "TokenParseFailed"));
    assert!(detail.contains("signature does not verify"), "{detail}");
    // No credentials at all.
    let r = http()
        .get(format!("{url}/kbs/v0/resource/default/key/1"))
        .send()
        .await
        .expect("get");
    let (st, kind, _) = problem(r).await;
    assert_eq!((st, kind.as_str()), (401, "TokenNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_oversize_bodies() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let r = http()
        .post(format!("{url}/kbs/v0/auth"))
        .body("{\"version\": ")
        .send()
        .await
        .expect("post");
    let (st, kind, detail) = problem(r).await;
    assert_eq!((st, kind.as_str()), (400, "InvalidRequest"));
    assert!(
        detail.starts_with("malformed request: auth request:"),
        "{detail}"
    );
    let (cookie, _) = auth_snp(&url).await;
    let r = http()
        .post(format!("{url}/kbs/v0/attest"))
        .header("cookie", &cookie)
        .body("{\"runtime-data\": 7}")
        .send()
        .await
        .expect("post");
    let (st, _, detail) = problem(r).await;
    assert_eq!(st, 400);
    assert!(
        detail.starts_with("malformed request: attestation request:"),
        "{detail}"
    );
    // 100 KiB > the 64 KiB limit, with and without Content-Length.
    let big = vec![b' '; 100 << 10];
    let r = http()
        .post(format!("{url}/kbs/v0/attest"))
        .body(big.clone())
        .send()
        .await
        .expect("post");
    let (st, kind, detail) = problem(r).await;
    assert_eq!((st, kind.as_str()), (413, "PayloadTooLarge"));
    assert!(detail.contains("65536-byte limit"), "{detail}");
    // Chunked (no Content-Length): the limit is enforced while reading.
    let addr = s.addr;
    let (st, body) = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        write!(c, "POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").expect("write");
        for chunk in big.chunks(8192) {
            if write!(c, "{:x}\r\n", chunk.len()).is_err() || c.write_all(chunk).is_err() || c.write_all(b"\r\n").is_err() {
                break; // the server may answer and close early
            }
        }
        let _ = c.write_all(b"0\r\n\r\n");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        (out[9..12].parse::<u16>().expect("status"), out)
    })
    .await
    .expect("join");
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("PayloadTooLarge"), "{body}");
}

/// Raw HTTP/1.1 (clients normalise `..` away, so send the bytes ourselves).
fn raw_get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kbs\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out[9..12].parse().expect("status");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_rejected() {
    let (d, s) = server().await;
    let url = s.url(false);
    // A file outside the resource tree that traversal would reach.
    std::fs::write(d.path().join("token-signing-key-copy"), SECRET).expect("write");
    let (_c, token, _k) = attested(&url).await;
    let addr = s.addr;
    for p in [
        "/kbs/v0/resource/../../token-signing-key",
        "/kbs/v0/resource/default/../token-signing-key-copy",
        "/kbs/v0/resource/%2e%2e/%2e%2e/token-signing-key-copy",
        "/kbs/v0/resource/default/key%2f..%2f..%2f/x",
        "/kbs/v0/resource/default/key/1/extra",
        "/kbs/v0/resource/default/key/.",
    ] {
        let (st, body) = tokio::task::spawn_blocking({
            let (p, t) = (p.to_string(), token.clone());
            move || raw_get(addr, &p, &t)
        })
        .await
        .expect("join");
        assert!(st == 400 || st == 404, "{p}: {st} {body}");
        assert!(
            !body.contains("s3cr3t") && !body.contains("ciphertext"),
            "{p}: {body}"
        );
        if st == 400 {
            let v: Value = serde_json::from_str(&body).expect("json");
            assert!(
                v["detail"]
                    .as_str()
                    .expect("detail")
                    .starts_with("invalid resource path"),
                "{p}: {body}"
            );
        }
    }
    // The admin API refuses traversal too.
    let r = upload(&url, "a/..%2f..%2fx/y", b"evil").await;
    assert_eq!(problem(r).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_admin_key() {
    let (_d, s) = server().await;
    let url = s.url(false);
    let r = http()
        .post(format!("{url}/kbs/v0/resource/a/b/c"))
        .body("x")
        .send()
        .await
        .expect("post");
    let (st, kind, detail) = problem(r).await;
    assert_eq!((st, kind.as_str()), (401, "AdminAuth"));
    assert!(detail.contains("no Authorization"), "{detail}");
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now = podvm_kbs_mock::jwt::now_unix();
    let bad = podvm_kbs_mock::jwt::sign(&other, &json!({"exp": now + 60}));
    let r = http()
        .post(format!("{url}/kbs/v0/resource/a/b/c"))
        .bearer_auth(bad)
        .body("x")
        .send()
        .await
        .expect("post");
    let (st, _, detail) = problem(r).await;
    assert_eq!(st, 401);
    assert!(detail.contains("signature does not verify"), "{detail}");
    // A policy update with the right key takes effect: deny everything.
    let deny = b64url(b"package policy\nimport rego.v1\ndefault allow := false\n");
    let r = http()
        .post(format!("{url}/kbs/v0/resource-policy"))
        .bearer_auth(admin_token())
        .json(&json!({"policy": deny}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let (_c, token, _k) = attested(&url).await;
    let r = http()
        .get(format!("{url}/kbs/v0/resource/default/key/1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    let (st, kind, _) = problem(r).await;
    assert_eq!((st, kind.as_str()), (401, "PolicyDeny"));
    // A policy that does not compile is refused and the old one kept.
    let r = http()
        .post(format!("{url}/kbs/v0/resource-policy"))
        .bearer_auth(admin_token())
        .json(&json!({"policy": b64url(b"package policy\nallow if {")}))
        .send()
        .await
        .expect("post");
    assert_eq!(problem(r).await.0, 400);
}
