//! The KBS client: RCAR handshake (auth → attest → token), resource fetch with the token and
//! session cookie, a fresh TEE key per handshake, re-handshake on 401 (up to 3 GETs, as
//! trustee's client), retries with exponential backoff on transport errors and 5xx, timeouts.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use serde_json::Value;

use super::jwe::{FlattenedJwe, TeeKey, TeeKeyAlg};
use super::protocol::{
    Attestation, Challenge, CompositeEvidence, ErrorBody, InitData, PROTOCOL_VERSION, Request,
    ResourceUri, RuntimeData, SESSION_COOKIE, report_data_digest,
};
use super::{EvidenceSource, KbsError};

/// GETs per resource (the first plus re-handshakes after a 401), as trustee's client.
const MAX_GETS: u32 = 3;

/// Client settings.
#[derive(Debug, Clone)]
pub struct KbsClientConfig {
    /// `http://host:port` or `https://host:port` (no path).
    pub url: String,
    /// PEM CA certificate(s) to trust for HTTPS; `None` = the platform's roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after a transport error or a 5xx answer.
    pub retries: u32,
    /// First backoff delay; doubles per attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Init-data TOML sent as `init-data` (its digest must be the TEE's HOST_DATA/MRCONFIGID).
    pub init_data: Option<String>,
    /// TEE key type (EC P-256 by default).
    pub key_alg: TeeKeyAlg,
}

impl KbsClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        KbsClientConfig {
            url: url.into(),
            ca_cert_pem: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            init_data: None,
            key_alg: TeeKeyAlg::EcP256,
        }
    }
}

struct Session {
    key: TeeKey,
    token: String,
    cookie: Option<String>,
}

/// A KBS client bound to one KBS and one evidence source.
pub struct KbsClient {
    http: reqwest::Client,
    cfg: KbsClientConfig,
    base: String,
    source: Arc<dyn EvidenceSource>,
    session: tokio::sync::Mutex<Option<Session>>,
}

fn build_http(cfg: &KbsClientConfig) -> Result<reqwest::Client, KbsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut b = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.connect_timeout);
    if let Some(pem) = &cfg.ca_cert_pem {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| KbsError::Config(format!("CA certificate PEM: {e}")))?;
            roots
                .add(c)
                .map_err(|e| KbsError::Config(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(KbsError::Config("CA file holds no PEM certificate".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KbsError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        b = b.tls_backend_preconfigured(tls);
    } else {
        // Platform roots through reqwest's verifier, with ring as the process provider. (In a
        // guest the agent provides them: see podvm-guest-agent's `init::install_ca_bundle`.)
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    b.build()
        .map_err(|e| KbsError::Config(format!("HTTP client: {e}")))
}

fn cookie_from(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .find(|kv| kv.starts_with(&format!("{SESSION_COOKIE}=")))
        .map(str::to_string)
}

/// Turn a non-success answer into a one-line error (the body must be trustee's RFC 7807 shape).
async fn rejection(step: &'static str, resp: reqwest::Response) -> KbsError {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => KbsError::Rejected {
            step,
            status,
            kind: e.kind().unwrap_or(&e.error_type).to_string(),
            detail: e.detail,
        },
        Err(_) => KbsError::Protocol(format!(
            "{step}: HTTP {status} with a body that is not a KBS error object ({} bytes)",
            body.len()
        )),
    }
}

impl KbsClient {
    pub fn new(cfg: KbsClientConfig, source: Arc<dyn EvidenceSource>) -> Result<Self, KbsError> {
        let base = cfg.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(KbsError::Config(format!(
                "KBS URL {base:?} must start with http:// or https://"
            )));
        }
        Ok(KbsClient {
            http: build_http(&cfg)?,
            base,
            cfg,
            source,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// Send with retries on transport errors and 5xx answers (exponential backoff).
    async fn send(
        &self,
        step: &'static str,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, KbsError> {
        let mut delay = self.cfg.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = build().send().await;
            let retry_reason = match &outcome {
                Ok(r) if r.status().is_server_error() => Some(format!("HTTP {}", r.status())),
                Ok(_) => None,
                Err(e) if e.is_timeout() => Some(format!(
                    "timed out (request timeout {:?})",
                    self.cfg.request_timeout
                )),
                Err(e) => Some(format!("{e}")),
            };
            match retry_reason {
                None => return outcome.map_err(|e| KbsError::Protocol(e.to_string())),
                Some(_) if attempt <= self.cfg.retries => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.max_backoff);
                }
                Some(reason) => {
                    return match outcome {
                        Ok(r) => Err(rejection(step, r).await),
                        Err(_) => Err(KbsError::Transport {
                            step,
                            url: url.to_string(),
                            detail: reason,
                            attempts: attempt,
                        }),
                    };
                }
            }
        }
    }

    /// The full RCAR handshake with a fresh TEE key; returns the attestation token.
    pub async fn attest(&self) -> Result<String, KbsError> {
        let mut guard = self.session.lock().await;
        let s = self.handshake().await?;
        let token = s.token.clone();
        *guard = Some(s);
        Ok(token)
    }

    async fn handshake(&self) -> Result<Session, KbsError> {
        let auth_url = format!("{}/kbs/v0/auth", self.base);
        let req = Request {
            version: PROTOCOL_VERSION.into(),
            tee: self.source.tee(),
            extra_params: Value::Object(Default::default()),
        };
        let body = serde_json::to_vec(&req).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let resp = self
            .send("auth", &auth_url, || {
                self.http
                    .post(&auth_url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(rejection("auth", resp).await);
        }
        let cookie = cookie_from(&resp);
        let challenge: Challenge = resp
            .json()
            .await
            .map_err(|e| KbsError::Protocol(format!("auth: challenge is not JSON: {e}")))?;

        let key_alg = self.cfg.key_alg;
        let key = tokio::task::spawn_blocking(move || TeeKey::generate(key_alg))
            .await
            .map_err(|e| KbsError::Config(format!("key generation task: {e}")))??;
        let pubkey = key.public_jwk();
        let digest = report_data_digest(&challenge.nonce, &pubkey, "")?;
        let source = self.source.clone();
        let primary = tokio::task::spawn_blocking(move || source.primary_evidence(&digest))
            .await
            .map_err(|e| KbsError::Evidence(format!("evidence task: {e}")))??;
        let att = Attestation {
            init_data: self.cfg.init_data.as_ref().map(|b| InitData {
                format: "toml".into(),
                body: b.clone(),
            }),
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey: pubkey,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: primary,
                additional_evidence: String::new(),
            },
        };
        let body = serde_json::to_vec(&att).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let attest_url = format!("{}/kbs/v0/attest", self.base);
        let resp = self
            .send("attest", &attest_url, || {
                let mut r = self
                    .http
                    .post(&attest_url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(c) = &cookie {
                    r = r.header(COOKIE, c);
                }
                r
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(rejection("attest", resp).await);
        }
        let cookie = cookie_from(&resp).or(cookie);
        let v: Value = resp
            .json()
            .await
            .map_err(|e| KbsError::Protocol(format!("attest: reply is not JSON: {e}")))?;
        let token = v
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| KbsError::Protocol("attest: reply has no token".into()))?
            .to_string();
        Ok(Session { key, token, cookie })
    }

    /// Fetch and decrypt a resource, attesting first if needed. A 401 (expired session or
    /// token, or a policy denial) triggers a new handshake, up to 3 GETs in all.
    pub async fn get_resource(&self, uri: &ResourceUri) -> Result<Vec<u8>, KbsError> {
        let url = format!("{}/kbs/v0/resource/{}", self.base, uri.path());
        let mut guard = self.session.lock().await;
        let mut last = None;
        for _ in 0..MAX_GETS {
            if guard.is_none() {
                *guard = Some(self.handshake().await?);
            }
            let Some(s) = guard.as_ref() else { continue };
            let resp = self
                .send("resource", &url, || {
                    let mut r = self
                        .http
                        .get(&url)
                        .header(AUTHORIZATION, format!("Bearer {}", s.token));
                    if let Some(c) = &s.cookie {
                        r = r.header(COOKIE, c);
                    }
                    r
                })
                .await?;
            match resp.status() {
                StatusCode::OK => {
                    let jwe: FlattenedJwe = resp.json().await.map_err(|e| {
                        KbsError::Protocol(format!("resource {uri}: reply is not a JWE: {e}"))
                    })?;
                    return s.key.decrypt(&jwe);
                }
                StatusCode::UNAUTHORIZED => {
                    last = Some(rejection("resource", resp).await);
                    *guard = None;
                }
                StatusCode::NOT_FOUND => {
                    return Err(match rejection("resource", resp).await {
                        KbsError::Rejected { detail, .. } => {
                            KbsError::ResourceNotFound(format!("{uri} ({detail})"))
                        }
                        _ => KbsError::ResourceNotFound(uri.to_string()),
                    });
                }
                _ => return Err(rejection("resource", resp).await),
            }
        }
        Err(last.unwrap_or_else(|| KbsError::Protocol("resource: no attempt made".into())))
    }

    /// [`Self::get_resource`] for a `kbs:///repo/type/tag` string.
    pub async fn get_resource_uri(&self, uri: &str) -> Result<Vec<u8>, KbsError> {
        self.get_resource(&uri.parse()?).await
    }

    /// The token of the current session, if attested.
    pub async fn token(&self) -> Option<String> {
        self.session.lock().await.as_ref().map(|s| s.token.clone())
    }
}
