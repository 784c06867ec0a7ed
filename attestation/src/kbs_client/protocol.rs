//! KBS protocol 0.4.0 wire pieces shared by the client and podvm's KBS: version, error shape,
//! resource URIs, the report_data binding and init-data digests.
//!
//! Request/Challenge/Attestation/TeePubKey come from the `kbs-types` crate. The JWE response
//! is typed here ([`crate::kbs_client::jwe::FlattenedJwe`]) because `kbs_types::Response` decodes
//! the protected header and re-serialises it, losing the exact bytes that are the GCM AAD.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};

pub use kbs_types::{
    Attestation, Challenge, CompositeEvidence, InitData, Request, RuntimeData, Tee, TeePubKey,
};

use super::KbsError;

/// The only protocol version spoken (trustee rejects anything else).
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Session cookie name.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Prefix of the RFC 7807 `type` of every KBS error.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
/// Nonce length in bytes (standard base64 on the wire).
pub const NONCE_LEN: usize = 32;
/// SNP/TDX REPORT_DATA size.
pub const REPORT_DATA_LEN: usize = 64;
/// SNP HOST_DATA size.
pub const HOST_DATA_LEN: usize = 32;
/// TDX MRCONFIGID size.
pub const MRCONFIGID_LEN: usize = 48;

/// podvm's key in an SNP/TDX `primary_evidence` object for what the guest reports about its own
/// launch (`{"cmdline": "...", "vcpus": N}`). Unauthenticated and ignored by trustee; podvm's KBS
/// uses it only to name the differing input once re-measuring the reference with it reproduces
/// the signed measurement.
pub const LAUNCH_HINT_KEY: &str = "podvm_launch_hint";

/// RFC 7807 error body as trustee sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub error_type: String,
    pub detail: String,
}

impl ErrorBody {
    pub fn new(kind: &str, detail: impl Into<String>) -> Self {
        ErrorBody {
            error_type: format!("{ERROR_TYPE_PREFIX}{kind}"),
            detail: detail.into(),
        }
    }

    /// The `<Kind>` at the end of `type`, if it has trustee's prefix.
    pub fn kind(&self) -> Option<&str> {
        self.error_type.strip_prefix(ERROR_TYPE_PREFIX)
    }
}

/// `kbs:///<repo>/<type>/<tag>` (an authority, as in `kbs://host/...`, is accepted and ignored:
/// the KBS URL is configured separately).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    pub repository: String,
    pub resource_type: String,
    pub tag: String,
}

/// Is `s` a safe resource path segment: `[A-Za-z0-9._-]+`, not `.` or `..`.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ResourceUri {
    /// From `repo/type/tag` (three safe segments).
    pub fn from_path(path: &str) -> Result<Self, KbsError> {
        let parts: Vec<&str> = path.split('/').collect();
        let [repo, ty, tag] = parts.as_slice() else {
            return Err(KbsError::InvalidUri(format!(
                "{path:?} has {} segments; expected <repository>/<type>/<tag>",
                parts.len()
            )));
        };
        for s in [repo, ty, tag] {
            if !valid_segment(s) {
                return Err(KbsError::InvalidUri(format!(
                    "segment {s:?} of {path:?} is not [A-Za-z0-9._-]+ (or is . / ..)"
                )));
            }
        }
        Ok(ResourceUri {
            repository: repo.to_string(),
            resource_type: ty.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The path under `/kbs/v0/resource/`.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.resource_type, self.tag)
    }
}

impl std::str::FromStr for ResourceUri {
    type Err = KbsError;
    fn from_str(s: &str) -> Result<Self, KbsError> {
        let rest = s
            .strip_prefix("kbs://")
            .ok_or_else(|| KbsError::InvalidUri(format!("{s:?} does not start with kbs:///")))?;
        // Skip an authority (`kbs://host/...`); `kbs:///...` has an empty one.
        let path = match rest.find('/') {
            Some(i) => &rest[i + 1..],
            None => {
                return Err(KbsError::InvalidUri(format!(
                    "{s:?} has no path; expected kbs:///<repository>/<type>/<tag>"
                )));
            }
        };
        Self::from_path(path)
    }
}

impl std::fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kbs:///{}", self.path())
    }
}

/// The JSON whose SHA-384 is the report_data: RFC 8785 canonical form of
/// `{"additional-evidence", "nonce", "tee-pubkey"}`.
pub fn runtime_data_json(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<String, KbsError> {
    let v = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    serde_json_canonicalizer::to_string(&v)
        .map_err(|e| KbsError::Protocol(format!("RFC 8785 canonicalisation: {e}")))
}

/// SHA-384 of [`runtime_data_json`] (48 bytes; SNP/TDX zero-pad it to 64).
pub fn report_data_digest(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<Vec<u8>, KbsError> {
    let json = runtime_data_json(nonce, tee_pubkey, additional_evidence)?;
    Ok(Sha384::digest(json.as_bytes()).to_vec())
}

/// [`report_data_digest`] zero-padded to the 64-byte REPORT_DATA field.
pub fn report_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; REPORT_DATA_LEN], KbsError> {
    let d = report_data_digest(nonce, tee_pubkey, additional_evidence)?;
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..d.len()].copy_from_slice(&d);
    Ok(out)
}

/// Digest algorithm named inside an init-data TOML (`algorithm = "sha384"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitDataAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl InitDataAlgorithm {
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            InitDataAlgorithm::Sha256 => Sha256::digest(data).to_vec(),
            InitDataAlgorithm::Sha384 => Sha384::digest(data).to_vec(),
            InitDataAlgorithm::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The `algorithm` key of an init-data TOML body (top-level `algorithm = "..."`).
pub fn init_data_algorithm(body: &str) -> Result<InitDataAlgorithm, KbsError> {
    for line in body.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            break; // top-level keys come before the first table
        }
        let Some(rest) = l.strip_prefix("algorithm") else {
            continue;
        };
        let Some(v) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let v = v
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['"', '\'']);
        return match v {
            "sha256" => Ok(InitDataAlgorithm::Sha256),
            "sha384" => Ok(InitDataAlgorithm::Sha384),
            "sha512" => Ok(InitDataAlgorithm::Sha512),
            other => Err(KbsError::Protocol(format!(
                "init-data algorithm {other:?} is not sha256, sha384 or sha512"
            ))),
        };
    }
    Err(KbsError::Protocol(
        "init-data TOML has no top-level algorithm = \"sha256|sha384|sha512\"".into(),
    ))
}

/// The init-data digest as the TEE field holds it: truncated or zero-padded to `field_len`
/// (32 for SNP HOST_DATA, 48 for TDX MRCONFIGID).
pub fn init_data_field(body: &str, field_len: usize) -> Result<Vec<u8>, KbsError> {
    let mut d = init_data_algorithm(body)?.digest(body.as_bytes());
    d.resize(field_len, 0);
    Ok(d)
}

/// Standard base64 (nonces, sample evidence).
pub fn b64_std(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Base64url without padding (JOSE).
pub fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Decode base64url (padding tolerated).
pub fn b64url_decode(what: &str, s: &str) -> Result<Vec<u8>, KbsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| KbsError::Protocol(format!("{what} is not base64url: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_key() -> TeePubKey {
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        }
    }

    #[test]
    fn canonical_runtime_data_is_sorted_and_compact() {
        let j = runtime_data_json("n0", &ec_key(), "").expect("json");
        assert_eq!(
            j,
            r#"{"additional-evidence":"","nonce":"n0","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#
        );
        let rd = report_data("n0", &ec_key(), "").expect("rd");
        assert_eq!(&rd[..48], Sha384::digest(j.as_bytes()).as_slice());
        assert_eq!(&rd[48..], &[0u8; 16]);
        assert_ne!(rd, report_data("n1", &ec_key(), "").expect("rd"));
    }

    #[test]
    fn resource_uris() {
        let u: ResourceUri = "kbs:///default/key/1".parse().expect("uri");
        assert_eq!(u.path(), "default/key/1");
        assert_eq!(u.to_string(), "kbs:///default/key/1");
        let h: ResourceUri = "kbs://kbs.example/a/b/c".parse().expect("uri");
        assert_eq!(h.path(), "a/b/c");
        for bad in [
            "kbs:///a/b",
            "kbs:///a/../c",
            "kbs:///a/b/c/d",
            "http://a/b/c",
            "kbs:///a/b%2f/c",
            "kbs:///a//c",
        ] {
            assert!(bad.parse::<ResourceUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn init_data_digests() {
        let body = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\nx = 1\n";
        let f = init_data_field(body, HOST_DATA_LEN).expect("digest");
        assert_eq!(f, Sha384::digest(body.as_bytes())[..32].to_vec());
        let f = init_data_field(body, MRCONFIGID_LEN).expect("digest");
        assert_eq!(f, Sha384::digest(body.as_bytes()).to_vec());
        let b256 = "algorithm = 'sha256'\n";
        let f = init_data_field(b256, MRCONFIGID_LEN).expect("digest");
        assert_eq!(&f[..32], Sha256::digest(b256.as_bytes()).as_slice());
        assert_eq!(&f[32..], &[0u8; 16]);
        assert!(init_data_field("algorithm = \"md5\"", 32).is_err());
        assert!(init_data_field("[data]\nalgorithm = \"sha256\"", 32).is_err());
    }
}
