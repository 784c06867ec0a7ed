//! Acceptance: client + server + emulated SNP evidence, policy, restart, concurrency, HTTPS.

mod common;

use std::sync::Arc;

use common::*;
use podvm_attestation::kbs_client::{
    KbsClient, KbsClientConfig, KbsError, SampleEvidence, TeeKeyAlg,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_snp_end_to_end_releases_resource_ec_and_rsa() {
    let d = tempfile::tempdir().expect("tmp");
    let s = start(config(d.path())).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    for alg in [TeeKeyAlg::EcP256, TeeKeyAlg::Rsa] {
        let c = client(&url, emulated_source(MEASUREMENT), alg);
        let got = c
            .get_resource_uri("kbs:///default/key/1")
            .await
            .expect("resource");
        assert_eq!(got, SECRET, "{alg:?}");
    }
    // A missing resource is a 404 with its own error.
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    let e = c
        .get_resource_uri("kbs:///default/key/nope")
        .await
        .expect_err("missing");
    assert!(matches!(e, KbsError::ResourceNotFound(_)), "{e}");
    // Metrics and health.
    let m = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = m.text().await.expect("text");
    assert!(text.contains("kbs_attestations_total 3"), "{text}");
    assert!(
        text.contains("kbs_attestation_duration_seconds_count 3"),
        "{text}"
    );
    assert!(text.contains("reason=\"not_found\""), "{text}");
    let h = http()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_reference_measurement_is_401_naming_the_field() {
    let d = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d.path());
    cfg.reference_values = vec![podvm_kbs_mock::bench::reference_values_for(
        &OTHER_MEASUREMENT,
    )];
    let s = start(cfg).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    let e = c
        .get_resource_uri("kbs:///default/key/1")
        .await
        .expect_err("denied");
    assert_eq!(e.status(), Some(401), "{e}");
    assert_eq!(e.kind(), Some("AttestationError"));
    let msg = e.to_string();
    assert!(
        msg.contains("measurement mismatch (snp_launch_measurement)"),
        "{msg}"
    );
    assert!(msg.contains(&hex::encode(OTHER_MEASUREMENT)), "{msg}");
    assert!(msg.contains(&hex::encode(MEASUREMENT)), "{msg}");
    assert!(!msg.contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_rejects_emulated_without_allow_emulated() {
    let d = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d.path());
    cfg.allow_emulated = false;
    let s = start(cfg).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    let e = c
        .get_resource_uri("kbs:///default/key/1")
        .await
        .expect_err("emulated");
    assert_eq!(e.kind(), Some("AttestationError"), "{e}");
    assert!(e.to_string().contains("not accepted"), "{e}");

    // A resource policy that denies this path → PolicyDeny (401) naming the path.
    let d2 = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d2.path());
    cfg.resource_policy = Some(
        "package policy\nimport rego.v1\ndefault allow := false\nallow if data[\"resource-path\"] == \"default/key/open\"\n".into(),
    );
    let s = start(cfg).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    assert_eq!(
        upload(&url, "default/key/open", b"public").await.status(),
        200
    );
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    assert_eq!(
        c.get_resource_uri("kbs:///default/key/open")
            .await
            .expect("open"),
        b"public"
    );
    let e = c
        .get_resource_uri("kbs:///default/key/1")
        .await
        .expect_err("deny");
    assert_eq!(e.kind(), Some("PolicyDeny"), "{e}");
    assert!(e.to_string().contains("default/key/1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_tee_only_when_allowed() {
    let d = tempfile::tempdir().expect("tmp");
    let s = start(config(d.path())).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let mut cc = KbsClientConfig::new(&url);
    cc.retries = 0;
    let c = KbsClient::new(cc.clone(), Arc::new(SampleEvidence::default())).expect("client");
    let e = c
        .get_resource_uri("kbs:///default/key/1")
        .await
        .expect_err("sample");
    assert!(e.to_string().contains("--allow-sample"), "{e}");

    let d2 = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d2.path());
    cfg.allow_sample = true;
    let s2 = start(cfg).await;
    cc.url = s2.url(false);
    assert_eq!(upload(&cc.url, "default/key/1", SECRET).await.status(), 200);
    let c = KbsClient::new(cc, Arc::new(SampleEvidence::default())).expect("client");
    assert_eq!(
        c.get_resource_uri("kbs:///default/key/1")
            .await
            .expect("sample ok"),
        SECRET
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_and_token_survive_restart() {
    let d = tempfile::tempdir().expect("tmp");
    let s = start(config(d.path())).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "repo/secret/v1", SECRET).await.status(), 200);
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    let token = c.attest().await.expect("attest");
    drop(s);
    let s2 = start(config(d.path())).await;
    let url2 = s2.url(false);
    // A fresh client attests against the restarted KBS and gets the resource.
    let c2 = client(&url2, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    assert_eq!(
        c2.get_resource_uri("kbs:///repo/secret/v1")
            .await
            .expect("after restart"),
        SECRET
    );
    // The token signed before the restart is still valid (the signing key is persisted).
    let r = http()
        .get(format!("{url2}/kbs/v0/resource/repo/secret/v1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let mode = std::fs::metadata(d.path().join("resources/repo/secret/v1")).expect("file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_clients() {
    let d = tempfile::tempdir().expect("tmp");
    let s = start(config(d.path())).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let source = emulated_source(MEASUREMENT);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let c = client(&url, source.clone(), TeeKeyAlg::EcP256);
        tasks.push(tokio::spawn(async move {
            c.get_resource_uri("kbs:///default/key/1").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("resource"), SECRET);
    }
    assert_eq!(s.kbs.metrics.attestations_ok(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_given_certificate() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("cert");
    let cert_pem = ck.cert.pem();
    let key_pem = ck.signing_key.serialize_pem();
    let tls = podvm_kbs_mock::tls_acceptor(cert_pem.as_bytes(), key_pem.as_bytes()).expect("tls");
    let d = tempfile::tempdir().expect("tmp");
    let s = podvm_kbs_mock::spawn(config(d.path()), ([127, 0, 0, 1], 0).into(), Some(tls))
        .await
        .expect("start");
    let mut cc = KbsClientConfig::new(s.url(true));
    cc.ca_cert_pem = Some(cert_pem.into_bytes());
    cc.init_data = Some(INIT_DATA.into());
    let c = KbsClient::new(cc.clone(), emulated_source(MEASUREMENT)).expect("client");
    // Upload through the admin API over HTTPS, then fetch.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cc.ca_cert_pem.as_deref().expect("pem")).expect("ca"),
        )
        .build()
        .expect("client");
    let r = admin
        .post(format!("{}/kbs/v0/resource/default/key/1", s.url(true)))
        .bearer_auth(admin_token())
        .body(SECRET)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get_resource_uri("kbs:///default/key/1")
            .await
            .expect("https"),
        SECRET
    );
    // Without the CA the client refuses the server.
    cc.ca_cert_pem = None;
    cc.retries = 0;
    let c = KbsClient::new(cc, emulated_source(MEASUREMENT)).expect("client");
    let e = c.attest().await.expect_err("untrusted");
    assert!(matches!(e, KbsError::Transport { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_triggers_a_new_handshake() {
    let d = tempfile::tempdir().expect("tmp");
    let mut cfg = config(d.path());
    cfg.session_ttl = std::time::Duration::from_secs(1);
    cfg.token_ttl = std::time::Duration::from_secs(1);
    let s = start(cfg).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let c = client(&url, emulated_source(MEASUREMENT), TeeKeyAlg::EcP256);
    let first = c.attest().await.expect("attest");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Session and token have expired: the GET answers 401, the client attests again.
    assert_eq!(
        c.get_resource_uri("kbs:///default/key/1")
            .await
            .expect("re-handshake"),
        SECRET
    );
    assert_eq!(s.kbs.metrics.attestations_ok(), 2);
    assert_ne!(c.token().await.expect("token"), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_and_timeouts() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut cc = KbsClientConfig::new(format!("http://127.0.0.1:{port}"));
    cc.retries = 2;
    cc.backoff = std::time::Duration::from_millis(100);
    let c = KbsClient::new(cc, emulated_source(MEASUREMENT)).expect("client");
    let t = std::time::Instant::now();
    let e = c.attest().await.expect_err("refused");
    assert!(
        matches!(
            e,
            KbsError::Transport {
                attempts: 3,
                step: "auth",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(300),
        "backoff 100 + 200 ms"
    );
    // A server that accepts but never answers: the request timeout fires.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let mut cc = KbsClientConfig::new(format!("http://{addr}"));
    cc.retries = 0;
    cc.request_timeout = std::time::Duration::from_millis(300);
    let c = KbsClient::new(cc, emulated_source(MEASUREMENT)).expect("client");
    let e = c.attest().await.expect_err("timeout");
    assert!(e.to_string().contains("timed out"), "{e}");
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_full_handshakes() {
    let d = tempfile::tempdir().expect("tmp");
    let r = podvm_kbs_mock::bench::run(d.path(), &[2], std::time::Duration::from_millis(500))
        .await
        .expect("bench");
    assert_eq!(r.len(), 1);
    assert!(r[0].attestations > 0 && r[0].per_second() > 0.0, "{r:?}");
}
