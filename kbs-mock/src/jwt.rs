//! Compact JWS with EdDSA (Ed25519): the attestation-result token podvm's KBS issues, and the
//! admin token trustee's tooling sends (`{"alg":"EdDSA"}`, claims with `exp`). Signing and
//! verification are ed25519-dalek's; this module only does the JOSE framing.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token is not a compact JWS (header.payload.signature)")]
    Shape,
    #[error("token {0} is not base64url JSON")]
    Encoding(&'static str),
    #[error("token alg is {0:?}; expected EdDSA")]
    Alg(String),
    #[error("token signature does not verify with the configured key")]
    Signature,
    #[error("token has no numeric exp claim")]
    NoExpiry,
    #[error("token expired at {0} (unix time); attest again")]
    Expired(i64),
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Sign `claims` as a compact JWS.
pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let header = B64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = B64.encode(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

/// Verify signature and `exp`; returns the claims.
pub fn verify(key: &VerifyingKey, token: &str) -> Result<Value, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let header: Value = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Encoding("header"))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    if alg != "EdDSA" {
        return Err(JwtError::Alg(alg.to_string()));
    }
    let sig = B64
        .decode(s)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(JwtError::Encoding("signature"))?;
    key.verify_strict(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    let claims: Value = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Encoding("payload"))?;
    let exp = claims
        .get("exp")
        .and_then(|e| e.as_i64())
        .ok_or(JwtError::NoExpiry)?;
    if exp <= now_unix() {
        return Err(JwtError::Expired(exp));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_expire() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let t = sign(&k, &serde_json::json!({"exp": now_unix() + 60, "a": 1}));
        assert_eq!(verify(&k.verifying_key(), &t).expect("ok")["a"], 1);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert_eq!(verify(&other.verifying_key(), &t), Err(JwtError::Signature));
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = B64.encode(br#"{"exp":9999999999,"a":2}"#);
        assert_eq!(
            verify(&k.verifying_key(), &parts.join(".")),
            Err(JwtError::Signature)
        );
        let old = sign(&k, &serde_json::json!({"exp": now_unix() - 1}));
        assert!(matches!(
            verify(&k.verifying_key(), &old),
            Err(JwtError::Expired(_))
        ));
        let noexp = sign(&k, &serde_json::json!({}));
        assert_eq!(verify(&k.verifying_key(), &noexp), Err(JwtError::NoExpiry));
        assert_eq!(verify(&k.verifying_key(), "a.b"), Err(JwtError::Shape));
    }
}
