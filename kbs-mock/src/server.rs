//! The HTTP(S) front: routes, sessions, tokens, admin API, `serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ed25519_dalek::{SigningKey, VerifyingKey};
use podvm_attestation::kbs_client::ResourceUri;
use podvm_attestation::kbs_client::jwe;
use podvm_attestation::kbs_client::protocol::{
    Attestation, Challenge, NONCE_LEN, PROTOCOL_VERSION, Request, SESSION_COOKIE, Tee, TeePubKey,
    b64_std, b64url_decode,
};
use podvm_measured_boot::refvals::ReferenceValues;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::jwt;
use crate::metrics::Metrics;
use crate::policy::{Appraiser, RegoPolicy, default_resource_policy};
use crate::store::{Store, atomic_write, read_optional};

/// State files.
const TOKEN_KEY_FILE: &str = "token-signing-key";
const RESOURCE_POLICY_FILE: &str = "resource-policy.rego";
const ATTESTATION_POLICY_FILE: &str = "attestation-policy.rego";
const REFERENCE_VALUES_FILE: &str = "reference-values.json";
/// At most this many live sessions (expired ones are dropped first).
const MAX_SESSIONS: usize = 100_000;

/// Server configuration (the `podvm-kbs serve` flags).
#[derive(Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Trust anchors for evidence (`allow_emulated` is taken from `allow_emulated` below).
    pub anchors: podvm_attestation::TrustAnchors,
    pub allow_emulated: bool,
    pub allow_sample: bool,
    pub allow_debug: bool,
    pub min_snp_tcb: Option<podvm_attestation::snp::TcbVersion>,
    pub require_tdx_collateral: bool,
    /// Reference values from the command line (added to those stored in the state dir).
    pub reference_values: Vec<ReferenceValues>,
    /// Rego attestation policy (overrides a stored one).
    pub attestation_policy: Option<String>,
    /// Rego resource policy (overrides a stored one); default: [`default_resource_policy`].
    pub resource_policy: Option<String>,
    /// Ed25519 admin public key; `None` disables the admin API.
    pub admin_key: Option<VerifyingKey>,
    pub session_ttl: Duration,
    pub token_ttl: Duration,
    /// Largest JSON request body.
    pub max_body: usize,
    /// Largest resource upload.
    pub max_resource: usize,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            anchors: Default::default(),
            allow_emulated: false,
            allow_sample: false,
            allow_debug: false,
            min_snp_tcb: None,
            require_tdx_collateral: true,
            reference_values: Vec::new(),
            attestation_policy: None,
            resource_policy: None,
            admin_key: None,
            session_ttl: Duration::from_secs(300),
            token_ttl: Duration::from_secs(300),
            max_body: 1 << 20,
            max_resource: 16 << 20,
        }
    }
}

enum SessionState {
    /// Challenge issued; its nonce not yet used.
    Fresh,
    /// An /attest consumed the nonce and failed.
    Used,
    Attested {
        claims: Value,
        pubkey: TeePubKey,
    },
}

struct Session {
    nonce: String,
    tee: Tee,
    expires: Instant,
    expires_wall: time::OffsetDateTime,
    state: SessionState,
}

/// The KBS.
pub struct Kbs {
    cfg: Config,
    store: Store,
    token_key: SigningKey,
    sessions: Mutex<HashMap<String, Session>>,
    appraiser: RwLock<Arc<Appraiser>>,
    resource_policy: RwLock<Arc<RegoPolicy>>,
    pub metrics: Metrics,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("random source: {e}")))?;
    Ok(b)
}

fn http_date(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

fn load_stored_refvals(store: &Store) -> anyhow::Result<Vec<ReferenceValues>> {
    use anyhow::Context as _;
    let p = store.file(REFERENCE_VALUES_FILE);
    match read_optional(&p)? {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_slice(&b).with_context(|| format!("{}", p.display())),
    }
}

impl Kbs {
    /// Open the state directory and build the KBS.
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let store = Store::open(&cfg.state_dir)
            .with_context(|| format!("state directory {}", cfg.state_dir.display()))?;
        let key_path = store.file(TOKEN_KEY_FILE);
        let token_key = match read_optional(&key_path)? {
            Some(b) => {
                let seed: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "{} is not a 32-byte key; delete it to make a new one",
                        key_path.display()
                    )
                })?;
                SigningKey::from_bytes(&seed)
            }
            None => {
                let seed: [u8; 32] = random_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
                atomic_write(&key_path, &seed)?;
                SigningKey::from_bytes(&seed)
            }
        };
        let mut refs = load_stored_refvals(&store)?;
        refs.extend(cfg.reference_values.iter().cloned());
        let att_src = match &cfg.attestation_policy {
            Some(s) => Some(s.clone()),
            None => read_optional(&store.file(ATTESTATION_POLICY_FILE))?
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        };
        let attestation_policy = match att_src {
            Some(s) => Some(
                RegoPolicy::new("attestation-policy.rego", &s)
                    .map_err(|e| anyhow::anyhow!("attestation policy: {e}"))?,
            ),
            None => None,
        };
        let res_src = match &cfg.resource_policy {
            Some(s) => s.clone(),
            None => match read_optional(&store.file(RESOURCE_POLICY_FILE))? {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => default_resource_policy(cfg.allow_emulated, cfg.allow_sample),
            },
        };
        let resource_policy = RegoPolicy::new("resource-policy.rego", &res_src)
            .map_err(|e| anyhow::anyhow!("resource policy: {e}"))?;
        let mut anchors = cfg.anchors.clone();
        anchors.allow_emulated = cfg.allow_emulated;
        let appraiser = Appraiser {
            anchors,
            allow_sample: cfg.allow_sample,
            allow_debug: cfg.allow_debug,
            min_snp_tcb: cfg.min_snp_tcb,
            require_tdx_collateral: cfg.require_tdx_collateral,
            reference_values: refs,
            attestation_policy,
        };
        Ok(Arc::new(Kbs {
            cfg,
            store,
            token_key,
            sessions: Mutex::new(HashMap::new()),
            appraiser: RwLock::new(Arc::new(appraiser)),
            resource_policy: RwLock::new(Arc::new(resource_policy)),
            metrics: Metrics::default(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn appraiser(&self) -> Arc<Appraiser> {
        self.appraiser
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn resource_policy(&self) -> Arc<RegoPolicy> {
        self.resource_policy
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The router (all endpoints).
pub fn router(kbs: Arc<Kbs>) -> Router {
    Router::new()
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route("/kbs/v0/resource/{*path}", get(get_resource).post(put_resource))
        .route("/kbs/v0/resource-policy", post(set_resource_policy))
        .route("/kbs/v0/attestation-policy", post(set_attestation_policy))
        .route("/kbs/v0/reference-values", post(set_reference_values))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::InvalidRequest(format!(
                "no endpoint {}; KBS 0.4.0 serves /kbs/v0/auth, /kbs/v0/attest, /kbs/v0/resource/<repo>/<type>/<tag>",
                uri.path()
            ))
            .into_response()
        })
        .with_state(kbs)
}

/// Read a body up to `limit` bytes (413 beyond).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::InvalidRequest(format!("{what}: {e}")))
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

fn fail(kbs: &Kbs, endpoint: &'static str, e: ApiError) -> Response {
    let (status, kind, reason) = e.classify();
    kbs.metrics.failure(endpoint, reason);
    tracing::info!(endpoint, %status, kind, "{e}");
    e.into_response()
}

fn set_cookie(id: &str, expires: time::OffsetDateTime) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Expires={}; Path=/kbs; HttpOnly",
        http_date(expires)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn auth(State(kbs): State<Arc<Kbs>>, headers: HeaderMap, body: Body) -> Response {
    match auth_inner(&kbs, &headers, body).await {
        Ok(r) => r,
        Err(e) => fail(&kbs, "auth", e),
    }
}

async fn auth_inner(kbs: &Kbs, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let b = read_body(headers, body, kbs.cfg.max_body).await?;
    let v: Value = parse_json("auth request", &b)?;
    // Check the version before the rest so an old client gets the precise reason.
    let version = v
        .get("version")
        .and_then(|x| x.as_str())
        .unwrap_or("<missing>");
    if version != PROTOCOL_VERSION {
        return Err(ApiError::ProtocolVersion(version.to_string()));
    }
    let req: Request = serde_json::from_value(v)
        .map_err(|e| ApiError::InvalidRequest(format!("auth request: {e}")))?;
    match req.tee {
        Tee::Snp | Tee::Tdx => {}
        Tee::Sample if kbs.cfg.allow_sample => {}
        Tee::Sample => {
            return Err(ApiError::TeeNotAccepted(
                "TEE sample (no hardware evidence) is not accepted; start podvm-kbs with --allow-sample to test with it".into(),
            ));
        }
        other => {
            return Err(ApiError::TeeNotAccepted(format!(
                "TEE {other:?} is not supported by this KBS (snp, tdx, sample)"
            )));
        }
    }
    let nonce = b64_std(&random_bytes::<NONCE_LEN>()?);
    let id = hex::encode(random_bytes::<16>()?);
    let expires_wall = time::OffsetDateTime::now_utc() + kbs.cfg.session_ttl;
    {
        let mut s = kbs.sessions();
        // Drop expired sessions every 1024 sessions, and before refusing for lack of room.
        if s.len() >= MAX_SESSIONS || (s.len() + 1).is_multiple_of(1024) {
            let now = Instant::now();
            s.retain(|_, v| v.expires > now);
            if s.len() >= MAX_SESSIONS {
                return Err(ApiError::Internal(format!(
                    "{MAX_SESSIONS} live sessions; retry after some expire"
                )));
            }
        }
        s.insert(
            id.clone(),
            Session {
                nonce: nonce.clone(),
                tee: req.tee,
                expires: Instant::now() + kbs.cfg.session_ttl,
                expires_wall,
                state: SessionState::Fresh,
            },
        );
    }
    kbs.metrics.auth();
    let challenge = Challenge {
        nonce,
        extra_params: Value::String(String::new()),
    };
    let mut r = axum::Json(challenge).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, expires_wall));
    Ok(r)
}

async fn attest(State(kbs): State<Arc<Kbs>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    match attest_inner(&kbs, &headers, body).await {
        Ok(r) => {
            kbs.metrics.attested(start.elapsed());
            r
        }
        Err(e) => fail(&kbs, "attest", e),
    }
}

async fn attest_inner(
    kbs: &Arc<Kbs>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(headers, body, kbs.cfg.max_body).await?;
    let att: Attestation = parse_json("attestation request", &b)?;
    let id = cookie(headers).ok_or_else(|| {
        ApiError::UnknownSession(format!(
            "no {SESSION_COOKIE} cookie; POST /kbs/v0/auth first and send its cookie"
        ))
    })?;
    // Consume the nonce before the (slow) appraisal: a session's nonce is used once.
    let (tee, expires_wall) = {
        let mut s = kbs.sessions();
        let sess = s.get_mut(&id).ok_or_else(|| {
            ApiError::UnknownSession(format!(
                "unknown {SESSION_COOKIE} (expired and dropped, or from another KBS instance); POST /kbs/v0/auth first"
            ))
        })?;
        if sess.expires <= Instant::now() {
            let at = http_date(sess.expires_wall);
            s.remove(&id);
            return Err(ApiError::SessionExpired(at));
        }
        if !matches!(sess.state, SessionState::Fresh) {
            return Err(ApiError::NonceReplayed);
        }
        sess.state = SessionState::Used;
        if att.runtime_data.nonce != sess.nonce {
            return Err(ApiError::NonceMismatch);
        }
        (sess.tee, sess.expires_wall)
    };
    let appraiser = kbs.appraiser();
    let att = Arc::new(att);
    let att2 = att.clone();
    let claims = tokio::task::spawn_blocking(move || appraiser.appraise(tee, &att2))
        .await
        .map_err(|e| ApiError::Internal(format!("appraisal task: {e}")))??;
    let now = jwt::now_unix();
    let token = jwt::sign(
        &kbs.token_key,
        &json!({
            "iss": "podvm-kbs",
            "iat": now,
            "exp": now + kbs.cfg.token_ttl.as_secs() as i64,
            "tee-pubkey": att.runtime_data.tee_pubkey,
            "claims": claims,
        }),
    );
    if let Some(sess) = kbs.sessions().get_mut(&id) {
        sess.state = SessionState::Attested {
            claims,
            pubkey: att.runtime_data.tee_pubkey.clone(),
        };
    }
    let mut r = axum::Json(json!({ "token": token })).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, expires_wall));
    Ok(r)
}

/// Claims and tee-pubkey from the session cookie, else from the Bearer token.
fn authorise(kbs: &Kbs, headers: &HeaderMap) -> Result<(Value, TeePubKey), ApiError> {
    let mut cookie_problem = None;
    if let Some(id) = cookie(headers) {
        let s = kbs.sessions();
        match s.get(&id) {
            Some(sess) if sess.expires <= Instant::now() => {
                cookie_problem = Some(ApiError::SessionExpired(http_date(sess.expires_wall)));
            }
            Some(Session {
                state: SessionState::Attested { claims, pubkey },
                ..
            }) => return Ok((claims.clone(), pubkey.clone())),
            Some(_) => {
                cookie_problem = Some(ApiError::UnknownSession(
                    "this session has not attested successfully; POST /kbs/v0/attest first".into(),
                ));
            }
            None => {}
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return Err(cookie_problem.unwrap_or(ApiError::TokenNotFound));
    };
    let c = jwt::verify(&kbs.token_key.verifying_key(), token)
        .map_err(|e| ApiError::TokenInvalid(format!("attestation token: {e}")))?;
    let pubkey: TeePubKey = serde_json::from_value(
        c.get("tee-pubkey").cloned().unwrap_or(Value::Null),
    )
    .map_err(|_| ApiError::TokenInvalid("attestation token has no valid tee-pubkey".into()))?;
    let claims = c.get("claims").cloned().unwrap_or(Value::Null);
    Ok((claims, pubkey))
}

fn resource_uri(path: &str) -> Result<ResourceUri, ApiError> {
    ResourceUri::from_path(path).map_err(|e| ApiError::InvalidResourcePath(e.to_string()))
}

async fn get_resource(
    State(kbs): State<Arc<Kbs>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match get_resource_inner(&kbs, &path, &headers).await {
        Ok(r) => r,
        Err(e) => fail(&kbs, "resource", e),
    }
}

async fn get_resource_inner(
    kbs: &Kbs,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let uri = resource_uri(path)?;
    let (claims, pubkey) = authorise(kbs, headers)?;
    let data = json!({ "resource-path": uri.path() });
    match kbs.resource_policy().allow(&claims, Some(&data)) {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::PolicyDeny {
                path: uri.path(),
                reason: format!(
                    "data.policy.allow is not true for claims tee={} emulated={} (default policy: verified non-emulated evidence only; --allow-emulated / --resource-policy)",
                    claims.get("tee").and_then(|v| v.as_str()).unwrap_or("?"),
                    claims
                        .get("emulated")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false)
                ),
            });
        }
        Err(e) => {
            return Err(ApiError::PolicyDeny {
                path: uri.path(),
                reason: e,
            });
        }
    }
    let secret = kbs
        .store
        .get_resource(&uri)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::ResourceNotFound(uri.path()))?;
    let jwe = jwe::encrypt(&pubkey, &secret).map_err(|e| ApiError::Jwe(e.to_string()))?;
    kbs.metrics.resource_released();
    Ok(axum::Json(jwe).into_response())
}

/// Admin: `Authorization: Bearer <EdDSA JWT>` signed by the admin key.
fn admin(kbs: &Kbs, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &kbs.cfg.admin_key else {
        return Err(ApiError::AdminAuth(
            "the admin API is disabled; start podvm-kbs with --admin-pubkey <Ed25519 public key PEM>".into(),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::AdminAuth(
                "no Authorization: Bearer <admin token> (podvm-kbs admin-token)".into(),
            )
        })?;
    jwt::verify(key, token).map_err(|e| ApiError::AdminAuth(format!("admin {e}")))?;
    Ok(())
}

async fn put_resource(
    State(kbs): State<Arc<Kbs>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        admin(&kbs, &headers)?;
        let uri = resource_uri(&path)?;
        let data = read_body(&headers, body, kbs.cfg.max_resource).await?;
        let store = kbs.store.clone();
        tokio::task::spawn_blocking(move || store.put_resource(&uri, &data))
            .await
            .map_err(|e| ApiError::Internal(format!("write task: {e}")))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        kbs.metrics.admin_write();
        Ok::<_, ApiError>(StatusCode::OK.into_response())
    }
    .await;
    r.unwrap_or_else(|e| fail(&kbs, "admin", e))
}

/// `{"policy": "<base64url Rego>"}` (trustee's form; `type`/`policy_id` ignored).
fn policy_text(b: &[u8]) -> Result<String, ApiError> {
    let v: Value = parse_json("policy request", b)?;
    let p = v.get("policy").and_then(|p| p.as_str()).ok_or_else(|| {
        ApiError::InvalidRequest("policy request has no \"policy\" string (base64url Rego)".into())
    })?;
    let raw = b64url_decode("policy", p).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    String::from_utf8(raw).map_err(|_| ApiError::InvalidRequest("policy is not UTF-8".into()))
}

/// The common part of the admin policy uploads: admin check, body, base64url Rego, compile,
/// persist atomically. Returns the compiled policy for the caller to install.
async fn accept_policy_upload(
    kbs: &Kbs,
    headers: &HeaderMap,
    body: Body,
    kind: &str,
    file: &str,
) -> Result<RegoPolicy, ApiError> {
    admin(kbs, headers)?;
    let b = read_body(headers, body, kbs.cfg.max_body).await?;
    let src = policy_text(&b)?;
    let p = RegoPolicy::new(&format!("{kind}.rego"), &src).map_err(|e| {
        ApiError::InvalidRequest(format!("{} does not compile: {e}", kind.replace('-', " ")))
    })?;
    atomic_write(&kbs.store.file(file), src.as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    kbs.metrics.admin_write();
    Ok(p)
}

async fn set_resource_policy(
    State(kbs): State<Arc<Kbs>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept_policy_upload(
        &kbs,
        &headers,
        body,
        "resource-policy",
        RESOURCE_POLICY_FILE,
    )
    .await
    {
        Ok(p) => {
            if let Ok(mut w) = kbs.resource_policy.write() {
                *w = Arc::new(p);
            }
            StatusCode::OK.into_response()
        }
        Err(e) => fail(&kbs, "admin", e),
    }
}

async fn set_attestation_policy(
    State(kbs): State<Arc<Kbs>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept_policy_upload(
        &kbs,
        &headers,
        body,
        "attestation-policy",
        ATTESTATION_POLICY_FILE,
    )
    .await
    {
        Ok(p) => {
            if let Ok(mut w) = kbs.appraiser.write() {
                let mut a = (**w).clone();
                a.attestation_policy = Some(p);
                *w = Arc::new(a);
            }
            StatusCode::OK.into_response()
        }
        Err(e) => fail(&kbs, "admin", e),
    }
}

/// Body: one podvm reference-value export (`podvm measure --export`); replaces the stored set.
async fn set_reference_values(
    State(kbs): State<Arc<Kbs>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        admin(&kbs, &headers)?;
        let b = read_body(&headers, body, kbs.cfg.max_body).await?;
        let rv = ReferenceValues::from_json("request body", &b)
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        let stored = vec![rv];
        let json =
            serde_json::to_vec_pretty(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
        atomic_write(&kbs.store.file(REFERENCE_VALUES_FILE), &json)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Ok(mut w) = kbs.appraiser.write() {
            let mut a = (**w).clone();
            a.reference_values = stored;
            a.reference_values
                .extend(kbs.cfg.reference_values.iter().cloned());
            *w = Arc::new(a);
        }
        kbs.metrics.admin_write();
        Ok::<_, ApiError>(StatusCode::OK.into_response())
    }
    .await;
    r.unwrap_or_else(|e| fail(&kbs, "admin", e))
}

async fn metrics(State(kbs): State<Arc<Kbs>>) -> Response {
    let mut r = kbs.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// TLS material for HTTPS.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject as _;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("TLS certificate PEM")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the TLS certificate file holds no certificate"
    );
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).context("TLS private key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serve on `listener` (HTTPS when `tls` is given) until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    kbs: Arc<Kbs>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let app = router(kbs);
    let Some(acceptor) = tls else {
        axum::serve(listener, app).await?;
        return Ok(());
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// A server running on a background task (tests, bench, embedding).
pub struct Running {
    pub addr: SocketAddr,
    pub kbs: Arc<Kbs>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `http://addr` or `https://addr`.
    pub fn url(&self, https: bool) -> String {
        format!("{}://{}", if https { "https" } else { "http" }, self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` (port 0 for any) and serve in the background.
pub async fn spawn(
    cfg: Config,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<Running> {
    let kbs = Kbs::new(cfg)?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let k = kbs.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, k, tls).await {
            tracing::error!("KBS server: {e:#}");
        }
    });
    Ok(Running { addr, kbs, task })
}
