//! Shared fixtures: one emulated PSP per test binary, servers on 127.0.0.1:0, admin keys,
//! hand-built protocol messages for the negative tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_attestation::kbs_client::protocol::{self, HOST_DATA_LEN, TeePubKey};
use podvm_attestation::kbs_client::{
    AttesterSource, EmulatedSnpAttester, EvidenceSource, KbsClient, KbsClientConfig, TeeKey,
    TeeKeyAlg,
};
use podvm_kbs_mock::bench::reference_values_for;
use podvm_kbs_mock::{Config, Running, jwt, spawn};
use serde_json::{Value, json};

pub const MEASUREMENT: [u8; 48] = [0x6d; 48];
pub const OTHER_MEASUREMENT: [u8; 48] = [0xa1; 48];
pub const SECRET: &[u8] = b"s3cr3t-image-key-0123456789abcdef";
pub const INIT_DATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = \"\"\"\n[token_configs]\n\"\"\"\n";

/// The emulated PSP directory (generated once per test binary; RSA-4096 keys are slow).
pub fn psp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Reused across runs; creation is atomic (temporary name + rename).
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("podvm-kbs-test-psp");
        EmulatedPsp::open_or_create(&d).expect("emulated PSP");
        d
    })
}

pub fn psp() -> EmulatedPsp {
    EmulatedPsp::open_or_create(psp_dir()).expect("emulated PSP")
}

pub fn host_data(init_data: &str) -> [u8; 32] {
    protocol::init_data_field(init_data, HOST_DATA_LEN)
        .expect("init-data")
        .try_into()
        .expect("32 bytes")
}

pub fn template(measurement: [u8; 48]) -> ReportRequest {
    ReportRequest {
        measurement,
        host_data: host_data(INIT_DATA),
        ..Default::default()
    }
}

pub fn emulated_source(measurement: [u8; 48]) -> Arc<dyn EvidenceSource> {
    Arc::new(AttesterSource::new(EmulatedSnpAttester {
        psp: psp(),
        template: template(measurement),
    }))
}

pub fn admin_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

pub fn admin_token() -> String {
    let now = jwt::now_unix();
    jwt::sign(&admin_key(), &json!({"iat": now, "exp": now + 600}))
}

/// A KBS accepting emulated SNP with `MEASUREMENT`, admin key = [`admin_key`].
pub fn config(state: &Path) -> Config {
    let mut cfg = Config::new(state);
    cfg.anchors = psp().trust_anchors();
    cfg.allow_emulated = true;
    cfg.reference_values = vec![reference_values_for(&MEASUREMENT)];
    cfg.admin_key = Some(admin_key().verifying_key());
    cfg
}

pub async fn start(cfg: Config) -> Running {
    spawn(cfg, SocketAddr::from(([127, 0, 0, 1], 0)), None)
        .await
        .expect("start KBS")
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub async fn upload(url: &str, path: &str, data: &[u8]) -> reqwest::Response {
    http()
        .post(format!("{url}/kbs/v0/resource/{path}"))
        .bearer_auth(admin_token())
        .body(data.to_vec())
        .send()
        .await
        .expect("upload")
}

pub fn client(url: &str, source: Arc<dyn EvidenceSource>, alg: TeeKeyAlg) -> KbsClient {
    let mut c = KbsClientConfig::new(url);
    c.init_data = Some(INIT_DATA.to_string());
    c.key_alg = alg;
    c.retries = 1;
    KbsClient::new(c, source).expect("client")
}

/// RFC 7807 body: (status, kind, detail). Asserts trustee's `type` prefix.
pub async fn problem(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    let ty = body["type"].as_str().expect("type").to_string();
    let kind = ty
        .strip_prefix("https://github.com/confidential-containers/kbs/errors/")
        .unwrap_or_else(|| panic!("type {ty} lacks trustee's prefix"))
        .to_string();
    let detail = body["detail"].as_str().expect("detail").to_string();
    assert!(!detail.contains('\n'), "detail is one line: {detail}");
    assert!(
        !detail.contains(std::str::from_utf8(SECRET).expect("utf8")),
        "detail leaks the secret"
    );
    assert_eq!(
        body.as_object().expect("object").len(),
        2,
        "only type and detail: {body}"
    );
    (status, kind, detail)
}

/// POST /kbs/v0/auth → (cookie header value, nonce).
pub async fn auth(url: &str, body: Value) -> Result<(String, String), reqwest::Response> {
    let r = http()
        .post(format!("{url}/kbs/v0/auth"))
        .json(&body)
        .send()
        .await
        .expect("auth");
    if r.status() != 200 {
        return Err(r);
    }
    let cookie = r
        .headers()
        .get("set-cookie")
        .expect("set-cookie")
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("cookie")
        .to_string();
    assert!(cookie.starts_with("kbs-session-id="));
    let c: Value = r.json().await.expect("challenge");
    assert_eq!(
        c["extra-params"], "",
        "trustee sends extra-params as an empty string"
    );
    Ok((cookie, c["nonce"].as_str().expect("nonce").to_string()))
}

pub async fn auth_snp(url: &str) -> (String, String) {
    auth(
        url,
        json!({"version": "0.4.0", "tee": "snp", "extra-params": {}}),
    )
    .await
    .unwrap_or_else(|_| panic!("auth failed"))
}

/// An attestation body with emulated evidence whose REPORT_DATA is `bind_pubkey`'s binding.
pub fn attest_body(
    nonce: &str,
    pubkey: &TeePubKey,
    bind_pubkey: &TeePubKey,
    req: ReportRequest,
    init_data: Option<&str>,
) -> Value {
    let rd = protocol::report_data(nonce, bind_pubkey, "").expect("report data");
    let mut req = req;
    req.report_data = rd;
    let ev = psp()
        .evidence(&req)
        .expect("evidence")
        .to_json()
        .expect("json");
    let ev: Value = serde_json::from_str(&ev).expect("json");
    json!({
        "init-data": init_data.map(|b| json!({"format": "toml", "body": b})),
        "runtime-data": {"nonce": nonce, "tee-pubkey": pubkey},
        "tee-evidence": {"primary_evidence": ev, "additional_evidence": ""},
    })
}

pub async fn post_attest(url: &str, cookie: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{url}/kbs/v0/attest"))
        .header("cookie", cookie)
        .json(body)
        .send()
        .await
        .expect("attest")
}

pub fn tee_key() -> TeeKey {
    TeeKey::generate(TeeKeyAlg::EcP256).expect("key")
}
