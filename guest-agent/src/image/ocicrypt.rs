//! ocicrypt layer encryption as produced by `skopeo copy --encryption-key jwe:<pub.pem>`
//! (containers/ocicrypt) and by the Confidential Containers key provider.
//!
//! An encrypted layer has media type `<plain type>+encrypted` and annotations:
//! - `org.opencontainers.image.enc.keys.<scheme>`: comma-separated base64 of one wrapped blob per
//!   recipient; `jwe` holds a JWE (JSON serialization), `provider.attestation-agent` holds an
//!   [`AnnotationPacket`];
//! - `org.opencontainers.image.enc.pubopts`: base64 of the public options JSON
//!   (`cipher`, `hmac`, `cipheroptions`).
//!
//! Unwrapping yields the private options JSON (`symkey`, `digest`, `cipheroptions.nonce`). The
//! layer cipher `AES_256_CTR_HMAC_SHA256` is AES-256 in 128-bit big-endian counter mode with the
//! 16-byte nonce as IV and HMAC-SHA256 keyed with the same key over the *ciphertext*.

use std::collections::BTreeMap;
use std::io::{self, Read};

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::digest::Digest;
use super::ecdh_es::{ECDH_ES_KW_ALGS, EcPrivateKey};
use super::error::StreamIntegrity;

/// Suffix of encrypted layer media types.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
/// Annotation prefix of wrapped keys; the rest of the name is the key-wrap scheme.
pub const ANNOTATION_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// JWE-wrapped keys (skopeo `--encryption-key jwe:...`).
pub const ANNOTATION_KEYS_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Confidential Containers key provider (`provider.attestation-agent`).
pub const ANNOTATION_KEYS_ATTESTATION_AGENT: &str =
    "org.opencontainers.image.enc.keys.provider.attestation-agent";
/// Public cipher options.
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES256_CTR_HMAC_SHA256: &str = "AES_256_CTR_HMAC_SHA256";

const AES256_KEY_LEN: usize = 32;
const CTR_NONCE_LEN: usize = 16;
const HMAC_SHA256_LEN: usize = 32;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

type Aes256Ctr = ctr::Ctr128BE<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// One recipient's wrapped key, as found in a layer annotation.
#[derive(Debug, Clone)]
pub enum WrappedKey {
    /// A JWE in JSON serialization (general or flattened); payload = private options JSON.
    Jwe(Vec<u8>),
    /// The Confidential Containers attestation-agent key provider packet.
    AttestationAgent(AnnotationPacket),
}

/// `org.opencontainers.image.enc.keys.provider.attestation-agent` payload (guest-components
/// `AnnotationPacket`): the private options JSON encrypted with a key-encryption key that the
/// KBS releases under the resource URI `kid` after attestation.
#[derive(Debug, Clone, Deserialize)]
pub struct AnnotationPacket {
    /// KBS resource URI of the key-encryption key, e.g. `kbs:///default/image-kek/1`.
    pub kid: String,
    /// base64 of ciphertext || 16-byte GCM tag.
    pub wrapped_data: String,
    /// base64 of the 12-byte GCM IV.
    pub iv: String,
    /// Only `A256GCM` is defined.
    pub wrap_type: String,
}

impl AnnotationPacket {
    /// Decrypt `wrapped_data` with the key-encryption key released by the KBS.
    pub fn unwrap_with_kek(&self, kek: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        if self.wrap_type != "A256GCM" {
            return Err(format!(
                "unsupported wrap_type {:?} (only A256GCM)",
                self.wrap_type
            ));
        }
        let data = STANDARD
            .decode(&self.wrapped_data)
            .map_err(|_| "wrapped_data is not base64".to_string())?;
        let iv = STANDARD
            .decode(&self.iv)
            .map_err(|_| "iv is not base64".to_string())?;
        aes256gcm_open(kek, &iv, &data, b"")
            .map_err(|e| format!("key-encryption key rejected: {e}"))
    }
}

/// Encryption metadata of one layer.
#[derive(Debug, Clone)]
pub struct EncryptedLayer {
    /// Recipients, in annotation order.
    pub wrapped_keys: Vec<WrappedKey>,
    /// Public options (cipher, HMAC, public cipher options).
    pub public: PublicOptions,
    /// Media type without `+encrypted`.
    pub plain_media_type: String,
}

/// `org.opencontainers.image.enc.pubopts`.
#[derive(Debug, Clone, Default)]
pub struct PublicOptions {
    pub cipher: String,
    pub hmac: Vec<u8>,
}

/// The unwrapped private options: the layer's symmetric key and IV, and the digest of the
/// unencrypted blob. The key is zeroized on drop and never printed.
pub struct PrivateOptions {
    symkey: Zeroizing<Vec<u8>>,
    nonce: Vec<u8>,
    /// Digest of the plaintext (still compressed) blob.
    pub digest: Digest,
    legacy_hmac: Option<Vec<u8>>,
    legacy_cipher: Option<String>,
}

impl std::fmt::Debug for PrivateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateOptions")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawPublicOptions {
    #[serde(default)]
    cipher: String,
    #[serde(default)]
    hmac: Option<String>,
}

#[derive(Deserialize)]
struct RawPrivateOptions {
    symkey: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
    // Pre-1.0 ocicrypt put everything in the wrapped options.
    #[serde(default)]
    cipher: Option<String>,
    #[serde(default)]
    hmac: Option<String>,
}

impl PrivateOptions {
    /// Parse the private options JSON (from a JWE payload or a key provider).
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let raw: RawPrivateOptions = serde_json::from_slice(json)
            .map_err(|e| format!("private options are not valid JSON ({})", e.classify_name()))?;
        let symkey_b64 = Zeroizing::new(raw.symkey);
        let symkey = Zeroizing::new(
            STANDARD
                .decode(symkey_b64.as_bytes())
                .map_err(|_| "symkey is not base64".to_string())?,
        );
        if symkey.len() != AES256_KEY_LEN {
            return Err(format!(
                "symkey is {} bytes, AES-256 needs {AES256_KEY_LEN}",
                symkey.len()
            ));
        }
        let nonce = raw
            .cipheroptions
            .get("nonce")
            .ok_or("cipheroptions.nonce is missing")
            .and_then(|n| {
                STANDARD
                    .decode(n)
                    .map_err(|_| "cipheroptions.nonce is not base64")
            })?;
        if nonce.len() != CTR_NONCE_LEN {
            return Err(format!(
                "nonce is {} bytes, AES-CTR needs {CTR_NONCE_LEN}",
                nonce.len()
            ));
        }
        let digest = Digest::parse(&raw.digest)?;
        let legacy_hmac = match raw.hmac {
            Some(h) => Some(
                STANDARD
                    .decode(h)
                    .map_err(|_| "hmac is not base64".to_string())?,
            ),
            None => None,
        };
        Ok(PrivateOptions {
            symkey,
            nonce,
            digest,
            legacy_hmac,
            legacy_cipher: raw.cipher,
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}
impl ClassifyName for serde_json::Error {
    // serde_json errors can quote input; the input here is secret, so report only the category.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Is this media type an encrypted layer?
pub fn is_encrypted_media_type(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

/// Read the encryption metadata of a layer descriptor; `Ok(None)` for a plain layer.
pub fn encrypted_layer(
    media_type: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<EncryptedLayer>, String> {
    let Some(plain) = media_type.strip_suffix(ENCRYPTED_SUFFIX) else {
        return Ok(None);
    };
    let mut wrapped_keys = Vec::new();
    for (name, value) in annotations {
        let Some(scheme) = name.strip_prefix(ANNOTATION_KEYS_PREFIX) else {
            continue;
        };
        for part in value.split(',').filter(|p| !p.is_empty()) {
            let blob = STANDARD
                .decode(part)
                .map_err(|_| format!("annotation {name} is not base64"))?;
            match scheme {
                "jwe" => wrapped_keys.push(WrappedKey::Jwe(blob)),
                "provider.attestation-agent" => {
                    let packet: AnnotationPacket = serde_json::from_slice(&blob).map_err(|e| {
                        format!("annotation {name} is not an AnnotationPacket: {e}")
                    })?;
                    wrapped_keys.push(WrappedKey::AttestationAgent(packet));
                }
                // pgp, pkcs7, pkcs11 and other providers: not for a guest; other recipients may match.
                _ => {}
            }
        }
    }
    if wrapped_keys.is_empty() {
        return Err("no jwe or provider.attestation-agent wrapped key annotation".to_string());
    }
    let public = match annotations.get(ANNOTATION_PUBOPTS) {
        None => PublicOptions::default(),
        Some(b64) => {
            let json = STANDARD
                .decode(b64)
                .map_err(|_| "pubopts annotation is not base64".to_string())?;
            let raw: RawPublicOptions = serde_json::from_slice(&json)
                .map_err(|e| format!("pubopts annotation is not valid JSON: {e}"))?;
            let hmac = match raw.hmac {
                Some(h) => STANDARD
                    .decode(h)
                    .map_err(|_| "pubopts hmac is not base64".to_string())?,
                None => Vec::new(),
            };
            PublicOptions {
                cipher: raw.cipher,
                hmac,
            }
        }
    };
    Ok(Some(EncryptedLayer {
        wrapped_keys,
        public,
        plain_media_type: plain.to_string(),
    }))
}

/// Checks cipher and HMAC of a layer and builds its decrypting reader.
pub(crate) fn layer_decryptor<R: Read>(
    inner: R,
    public: &PublicOptions,
    private: &PrivateOptions,
) -> Result<DecryptReader<R>, String> {
    let cipher = if public.cipher.is_empty() {
        private.legacy_cipher.as_deref().unwrap_or("")
    } else {
        &public.cipher
    };
    if cipher != CIPHER_AES256_CTR_HMAC_SHA256 {
        return Err(format!(
            "unsupported layer cipher {cipher:?} (only {CIPHER_AES256_CTR_HMAC_SHA256})"
        ));
    }
    let hmac = if public.hmac.is_empty() {
        private.legacy_hmac.clone().unwrap_or_default()
    } else {
        public.hmac.clone()
    };
    if hmac.len() != HMAC_SHA256_LEN {
        return Err(format!(
            "layer HMAC is {} bytes, expected {HMAC_SHA256_LEN}",
            hmac.len()
        ));
    }
    DecryptReader::new(inner, &private.symkey, &private.nonce, hmac)
}

/// AES-256-CTR decryption with HMAC-SHA256 over the ciphertext, checked at end of stream: the
/// final `read` returning 0 fails with [`StreamIntegrity::Hmac`] instead if the HMAC differs.
pub(crate) struct DecryptReader<R> {
    inner: R,
    cipher: Aes256Ctr,
    mac: Option<HmacSha256>,
    expected_hmac: Vec<u8>,
}

impl<R: Read> DecryptReader<R> {
    fn new(inner: R, key: &[u8], nonce: &[u8], expected_hmac: Vec<u8>) -> Result<Self, String> {
        let cipher = Aes256Ctr::new_from_slices(key, nonce)
            .map_err(|_| "bad AES-CTR key or nonce length".to_string())?;
        let mac = <HmacSha256 as KeyInit>::new_from_slice(key)
            .map_err(|_| "bad HMAC key length".to_string())?;
        Ok(DecryptReader {
            inner,
            cipher,
            mac: Some(mac),
            expected_hmac,
        })
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mac) = self.mac.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            mac.update(&buf[..n]);
            self.cipher.apply_keystream(&mut buf[..n]);
            return Ok(n);
        }
        let mac = self.mac.take().expect("mac present");
        mac.verify_slice(&self.expected_hmac)
            .map_err(|_| StreamIntegrity::Hmac.into_io())?;
        Ok(0)
    }
}

/// AES-256-GCM open of `ciphertext || tag`.
fn aes256gcm_open(
    key: &[u8],
    iv: &[u8],
    data: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    use aes_gcm::aead::{Aead, Payload};
    if iv.len() != GCM_IV_LEN || data.len() < GCM_TAG_LEN {
        return Err("bad GCM IV or ciphertext length");
    }
    let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(key)
        .map_err(|_| "key is not 32 bytes")?;
    let nonce =
        aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(iv).map_err(|_| "bad GCM IV")?;
    cipher
        .decrypt(&nonce, Payload { msg: data, aad })
        .map(Zeroizing::new)
        .map_err(|_| "authentication failed")
}

/// A private key able to unwrap JWE recipients: RSA (`RSA-OAEP`, `RSA-OAEP-256`) or EC P-256,
/// P-384, P-521 (`ECDH-ES+A128KW`, `+A192KW`, `+A256KW`; see [`super::ecdh_es`]).
pub struct JwePrivateKey {
    kind: KeyKind,
}

enum KeyKind {
    Rsa(Box<rsa::PrivateKey>),
    Ec(EcPrivateKey),
}

impl std::fmt::Debug for JwePrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            KeyKind::Rsa(_) => f.write_str("JwePrivateKey(RSA)"),
            KeyKind::Ec(k) => write!(f, "JwePrivateKey(EC {})", k.curve()),
        }
    }
}

/// PEM labels of the private key formats [`JwePrivateKey::from_bytes`] reads.
const PEM_PKCS8: &str = "PRIVATE KEY";
const PEM_PKCS1: &str = "RSA PRIVATE KEY";
const PEM_SEC1: &str = "EC PRIVATE KEY";
const PEM_PKCS8_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";

/// One decoded PEM block.
struct PemBlock {
    label: String,
    der: Zeroizing<Vec<u8>>,
}

/// The private key PEM blocks of `text`, skipping others (`EC PARAMETERS` as written by
/// `openssl ecparam -genkey`, public keys, certificates).
fn pem_private_key_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let block = &rest[begin..];
        let label_end = block["-----BEGIN ".len()..]
            .find("-----")
            .ok_or("truncated PEM header")?;
        let label = &block["-----BEGIN ".len().."-----BEGIN ".len() + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| format!("PEM block {label:?} has no END line"))?
            + end_marker.len();
        if [PEM_PKCS8, PEM_PKCS1, PEM_SEC1, PEM_PKCS8_ENCRYPTED].contains(&label) {
            let (_, der) = rsa::pkcs8::der::pem::decode_vec(&block.as_bytes()[..end])
                .map_err(|_| format!("PEM block {label:?} is not valid base64"))?;
            out.push(PemBlock {
                label: label.to_string(),
                der: Zeroizing::new(der),
            });
        }
        rest = &block[end..];
    }
    Ok(out)
}

impl JwePrivateKey {
    /// Parse a private key as given to `skopeo copy --decryption-key`: PEM (PKCS#8
    /// `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`) or DER (PKCS#8, PKCS#1,
    /// SEC1). RSA, or EC on P-256, P-384 or P-521.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        const UNSUPPORTED: &str =
            "not an RSA (PKCS#8, PKCS#1) or EC P-256/P-384/P-521 (PKCS#8, SEC1) private key";
        let rsa = |k: rsa::PrivateKey| JwePrivateKey {
            kind: KeyKind::Rsa(Box::new(k)),
        };
        let ec = |k: EcPrivateKey| JwePrivateKey {
            kind: KeyKind::Ec(k),
        };
        let pem = std::str::from_utf8(data)
            .ok()
            .filter(|t| t.contains("-----BEGIN "));
        let Some(pem) = pem else {
            // DER: PKCS#8 (either kind), then PKCS#1, then SEC1.
            if let Ok(k) = rsa::PrivateKey::from_pkcs8_der(data) {
                return Ok(rsa(k));
            }
            if let Ok(k) = rsa::PrivateKey::from_pkcs1_der(data) {
                return Ok(rsa(k));
            }
            return EcPrivateKey::from_der(data)
                .map(ec)
                .ok_or_else(|| format!("DER: {UNSUPPORTED}"));
        };
        let blocks = pem_private_key_blocks(pem)?;
        let Some(PemBlock { label, der }) = blocks.first() else {
            return Err(format!(
                "no {PEM_PKCS8:?}, {PEM_PKCS1:?} or {PEM_SEC1:?} PEM block (a public key or certificate is not enough)"
            ));
        };
        match label.as_str() {
            PEM_PKCS8 => rsa::PrivateKey::from_pkcs8_der(der)
                .map(rsa)
                .ok()
                .or_else(|| EcPrivateKey::from_der(der).map(ec))
                .ok_or_else(|| format!("PEM {label:?}: {UNSUPPORTED}")),
            PEM_PKCS1 => rsa::PrivateKey::from_pkcs1_der(der)
                .map(rsa)
                .map_err(|_| format!("PEM {label:?} is not a valid PKCS#1 RSA key")),
            PEM_SEC1 => EcPrivateKey::from_der(der)
                .map(ec)
                .ok_or_else(|| format!("PEM {label:?}: not a SEC1 key on P-256, P-384 or P-521")),
            _ => Err(format!(
                "PEM {label:?}: password-protected keys are not supported; decrypt it first (openssl pkey -in key.pem -out plain.pem)"
            )),
        }
    }

    /// Unwrap one recipient's content encryption key; `header` is the recipient's joint header.
    fn unwrap_cek(
        &self,
        header: &JsonObject,
        encrypted_key: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
        match &self.kind {
            KeyKind::Rsa(rsa) => {
                let cek = match alg {
                    "RSA-OAEP" => rsa.decrypt(rsa::Oaep::<sha1::Sha1>::new(), encrypted_key),
                    "RSA-OAEP-256" => rsa.decrypt(rsa::Oaep::<Sha256>::new(), encrypted_key),
                    other => {
                        return Err(format!(
                            "JWE key algorithm {other:?} does not fit an RSA key (RSA-OAEP, RSA-OAEP-256)"
                        ));
                    }
                };
                cek.map(Zeroizing::new)
                    .map_err(|_| "RSA-OAEP decryption failed".to_string())
            }
            KeyKind::Ec(ec) => {
                if !ECDH_ES_KW_ALGS.iter().any(|(a, _)| *a == alg) {
                    return Err(format!(
                        "JWE key algorithm {alg:?} does not fit an EC key (ECDH-ES+A128KW, ECDH-ES+A192KW, ECDH-ES+A256KW)"
                    ));
                }
                ec.unwrap_cek(alg, header, encrypted_key)
            }
        }
    }
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

#[derive(Deserialize)]
struct JweJson {
    protected: Option<String>,
    unprotected: Option<JsonObject>,
    header: Option<JsonObject>,
    encrypted_key: Option<String>,
    recipients: Option<Vec<JweRecipient>>,
    iv: String,
    ciphertext: String,
    tag: String,
    aad: Option<String>,
}

#[derive(Deserialize)]
struct JweRecipient {
    header: Option<JsonObject>,
    encrypted_key: Option<String>,
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWE {what} is not base64url"))
}

/// Decrypt a JWE (JSON serialization, as ocicrypt writes it) with any of `keys`.
/// Returns the payload, or why no recipient could be opened.
pub fn jwe_decrypt(jwe: &[u8], keys: &[JwePrivateKey]) -> Result<Zeroizing<Vec<u8>>, String> {
    let jwe: JweJson = serde_json::from_slice(jwe)
        .map_err(|e| format!("wrapped key is not a JWE JSON serialization: {e}"))?;
    let protected_json = match &jwe.protected {
        Some(p) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b64url(
            p,
            "protected header",
        )?)
        .map_err(|_| "JWE protected header is not JSON".to_string())?,
        None => serde_json::Map::new(),
    };
    let mut recipients = Vec::new();
    if let Some(rs) = jwe.recipients {
        recipients.extend(rs.into_iter().map(|r| (r.header, r.encrypted_key)));
    } else {
        recipients.push((jwe.header.clone(), jwe.encrypted_key.clone()));
    }
    // The recipient's joint header: per-recipient over shared unprotected over protected.
    let joint_header = |per: &Option<JsonObject>| -> JsonObject {
        let mut h = protected_json.clone();
        for layer in [jwe.unprotected.as_ref(), per.as_ref()]
            .into_iter()
            .flatten()
        {
            h.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        h
    };
    let iv = b64url(&jwe.iv, "iv")?;
    let ciphertext = b64url(&jwe.ciphertext, "ciphertext")?;
    let tag = b64url(&jwe.tag, "tag")?;
    let mut aad = jwe.protected.clone().unwrap_or_default().into_bytes();
    if let Some(extra) = &jwe.aad {
        aad.push(b'.');
        aad.extend_from_slice(extra.as_bytes());
    }
    let mut last_err = "the JWE has no recipients".to_string();
    for (per, encrypted_key) in &recipients {
        let header = joint_header(per);
        let enc = header.get("enc").and_then(|v| v.as_str()).unwrap_or("");
        if enc != "A256GCM" {
            last_err = format!("JWE content encryption {enc:?} is not supported (A256GCM)");
            continue;
        }
        if header.contains_key("zip") {
            last_err = "compressed JWE payloads are not supported".to_string();
            continue;
        }
        let Some(ek) = encrypted_key else { continue };
        let ek = b64url(ek, "encrypted_key")?;
        for key in keys {
            match key.unwrap_cek(&header, &ek) {
                Ok(cek) => {
                    let mut data = ciphertext.clone();
                    data.extend_from_slice(&tag);
                    return aes256gcm_open(&cek, &iv, &data, &aad)
                        .map_err(|e| format!("JWE content decryption failed: {e}"));
                }
                Err(e) => last_err = e,
            }
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctr::cipher::StreamCipher;

    fn encrypt(key: &[u8; 32], nonce: &[u8; 16], plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut c = Aes256Ctr::new_from_slices(key, nonce).unwrap();
        let mut buf = plain.to_vec();
        c.apply_keystream(&mut buf);
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
        mac.update(&buf);
        (buf, mac.finalize().into_bytes().to_vec())
    }

    #[test]
    fn ctr_hmac_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let nonce = [9u8; 16];
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (ct, hmac) = encrypt(&key, &nonce, &plain);
        let mut out = Vec::new();
        DecryptReader::new(&ct[..], &key, &nonce, hmac.clone())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        let mut bad = ct.clone();
        bad[5000] ^= 1;
        let err = DecryptReader::new(&bad[..], &key, &nonce, hmac)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(matches!(
            StreamIntegrity::from_io(&err),
            Some(StreamIntegrity::Hmac)
        ));
    }

    #[test]
    fn private_options_parse_and_reject() {
        let d = Digest::of(b"x");
        let json = format!(
            r#"{{"symkey":"{}","digest":"{d}","cipheroptions":{{"nonce":"{}"}}}}"#,
            STANDARD.encode([1u8; 32]),
            STANDARD.encode([2u8; 16])
        );
        let p = PrivateOptions::parse(json.as_bytes()).unwrap();
        assert_eq!(p.digest, d);
        assert!(!format!("{p:?}").contains("symkey"));
        let short = json.replace(&STANDARD.encode([1u8; 32]), &STANDARD.encode([1u8; 16]));
        assert!(
            PrivateOptions::parse(short.as_bytes())
                .unwrap_err()
                .contains("symkey")
        );
    }

    #[test]
    fn ec_private_key_formats() {
        use p384::pkcs8::EncodePrivateKey;
        let p256 = p256::SecretKey::from_slice(&[0x21; 32]).unwrap();
        // `openssl ecparam -genkey` without -noout puts an EC PARAMETERS block first.
        let sec1 = p256.to_sec1_pem(Default::default()).unwrap();
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            &*sec1
        );
        let k = JwePrivateKey::from_bytes(with_params.as_bytes()).unwrap();
        assert_eq!(format!("{k:?}"), "JwePrivateKey(EC P-256)");
        let p384 = p384::SecretKey::from_slice(&[0x22; 48]).unwrap();
        let pkcs8 = p384.to_pkcs8_pem(Default::default()).unwrap();
        let k = JwePrivateKey::from_bytes(pkcs8.as_bytes()).unwrap();
        assert_eq!(format!("{k:?}"), "JwePrivateKey(EC P-384)");
        let p521 = p521::SecretKey::from_slice(&[0x01; 66]).unwrap();
        for der in [
            p521.to_sec1_der().unwrap().to_vec(),
            p521.to_pkcs8_der().unwrap().as_bytes().to_vec(),
        ] {
            let k = JwePrivateKey::from_bytes(&der).unwrap();
            assert_eq!(format!("{k:?}"), "JwePrivateKey(EC P-521)");
        }
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let err = JwePrivateKey::from_bytes(public.as_bytes()).unwrap_err();
        assert!(err.contains("public key"), "{err}");
        let encrypted = pkcs8.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        let err = JwePrivateKey::from_bytes(encrypted.as_bytes()).unwrap_err();
        assert!(err.contains("password-protected"), "{err}");
        let err = JwePrivateKey::from_bytes(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err();
        assert!(err.contains("EC P-256/P-384/P-521"), "{err}");
    }

    #[test]
    fn annotation_packet_unwraps_with_kek() {
        use aes_gcm::aead::{Aead, Payload};
        let kek = [3u8; 32];
        let iv = [4u8; 12];
        let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&kek).unwrap();
        let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(&iv[..]).unwrap();
        let wrapped = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: b"opts",
                    aad: b"",
                },
            )
            .unwrap();
        let p = AnnotationPacket {
            kid: "kbs:///default/key/1".into(),
            wrapped_data: STANDARD.encode(&wrapped),
            iv: STANDARD.encode(iv),
            wrap_type: "A256GCM".into(),
        };
        assert_eq!(&p.unwrap_with_kek(&kek).unwrap()[..], b"opts");
        assert!(p.unwrap_with_kek(&[5u8; 32]).is_err());
    }
}
