//! One error enum for every KBS failure, mapped to HTTP status + trustee's RFC 7807 shape in one
//! place ([`ApiError::into_response`]). Each detail is one actionable line and never contains
//! secret material (resource bytes, keys, session ids, tokens).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use podvm_attestation::kbs_client::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    InvalidRequest(String),
    #[error("request body exceeds the {0}-byte limit (--max-body / --max-resource)")]
    PayloadTooLarge(usize),
    #[error("protocol version {0:?} is not supported; this KBS speaks exactly 0.4.0")]
    ProtocolVersion(String),
    #[error("{0}")]
    UnknownSession(String),
    #[error("session expired at {0}; POST /kbs/v0/auth for a new challenge")]
    SessionExpired(String),
    #[error(
        "the challenge nonce of this session was already used (replay); POST /kbs/v0/auth for a new one"
    )]
    NonceReplayed,
    #[error(
        "runtime-data nonce is not this session's challenge nonce (replayed or foreign evidence); POST /kbs/v0/auth and attest with its nonce"
    )]
    NonceMismatch,
    #[error("{0}")]
    TeeNotAccepted(String),
    #[error("evidence rejected: {0}")]
    Evidence(String),
    #[error(
        "report_data is not bound to this nonce and tee-pubkey: expected SHA-384(RFC 8785 JSON of additional-evidence, nonce, tee-pubkey) = {expected}, got {got}"
    )]
    ReportDataUnbound { expected: String, got: String },
    #[error("{0}")]
    InitData(String),
    #[error("{0}")]
    Measurement(String),
    #[error("attestation policy: {0}")]
    AttestationPolicy(String),
    #[error(
        "no attestation token: send the kbs-session-id cookie of an attested session or Authorization: Bearer <token> (POST /kbs/v0/auth, /kbs/v0/attest first)"
    )]
    TokenNotFound,
    #[error("{0}")]
    TokenInvalid(String),
    #[error("resource policy denied {path}: {reason}")]
    PolicyDeny { path: String, reason: String },
    #[error("resource {0} does not exist on this KBS (upload it with POST /kbs/v0/resource/{0})")]
    ResourceNotFound(String),
    #[error("invalid resource path: {0}")]
    InvalidResourcePath(String),
    #[error("admin authentication: {0}")]
    AdminAuth(String),
    #[error("encrypting the resource to the tee-pubkey: {0}")]
    Jwe(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status, trustee error kind, metrics reason label.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        let unauth = StatusCode::UNAUTHORIZED;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "InvalidRequest", "malformed"),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "too_large",
            ),
            ProtocolVersion(_) => (unauth, "AttestationError", "version"),
            UnknownSession(_) => (unauth, "AttestationError", "session"),
            SessionExpired(_) => (unauth, "AttestationError", "expired"),
            NonceReplayed => (unauth, "AttestationError", "replay"),
            NonceMismatch => (unauth, "AttestationError", "nonce"),
            TeeNotAccepted(_) => (unauth, "AttestationError", "tee"),
            Evidence(_) => (unauth, "AttestationError", "evidence"),
            ReportDataUnbound { .. } => (unauth, "AttestationError", "report_data"),
            InitData(_) => (unauth, "AttestationError", "init_data"),
            Measurement(_) => (unauth, "AttestationError", "measurement"),
            AttestationPolicy(_) => (unauth, "AttestationError", "attestation_policy"),
            TokenNotFound => (unauth, "TokenNotFound", "token_missing"),
            TokenInvalid(_) => (unauth, "TokenParseFailed", "token_invalid"),
            PolicyDeny { .. } => (unauth, "PolicyDeny", "policy_deny"),
            ResourceNotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFound", "not_found"),
            InvalidResourcePath(_) => (StatusCode::BAD_REQUEST, "InvalidRequest", "path"),
            AdminAuth(_) => (unauth, "AdminAuth", "admin_auth"),
            Jwe(_) => (StatusCode::INTERNAL_SERVER_ERROR, "JWEFailed", "jwe"),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "PluginInternalError",
                "internal",
            ),
        }
    }

    /// The RFC 7807 body.
    pub fn body(&self) -> ErrorBody {
        let (_, kind, _) = self.classify();
        // One line, whatever the underlying error text held.
        let detail = self.to_string().replace(['\n', '\r'], " ");
        ErrorBody::new(kind, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.classify();
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}
