//! JWE as trustee's KBS sends resources: flattened JSON serialisation, `enc` = A256GCM with the
//! tag separate and AAD = the ASCII of the `protected` member, key management
//! `ECDH-ES+A256KW` (P-256, Concat KDF SHA-256 with empty apu/apv, AES-256 key wrap) or
//! `RSA-OAEP-256`. No `aad` member. All primitives come from RustCrypto crates.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_kw::KwAes256;
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep, PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::KbsError;
use super::protocol::{TeePubKey, b64url, b64url_decode};

pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
pub const ENC_A256GCM: &str = "A256GCM";
/// RSA modulus size of generated TEE keys.
pub const RSA_BITS: usize = 2048;
const CEK_LEN: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Largest RSA modulus accepted from a peer (bits).
const RSA_MAX_BITS: usize = 8192;

/// A flattened JWE (`protected` kept as the exact base64url string: it is the GCM AAD).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlattenedJwe {
    pub protected: String,
    pub encrypted_key: String,
    pub iv: String,
    pub ciphertext: String,
    pub tag: String,
}

fn jwe_err(detail: impl Into<String>) -> KbsError {
    KbsError::Jwe(detail.into())
}

fn random<const N: usize>() -> Result<[u8; N], KbsError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| jwe_err(format!("random source: {e}")))?;
    Ok(b)
}

fn random_p256() -> Result<p256::SecretKey, KbsError> {
    loop {
        let b: [u8; 32] = random()?;
        // Rejects zero and values >= n (probability ~2^-32); draw again.
        if let Ok(k) = p256::SecretKey::from_slice(&b) {
            return Ok(k);
        }
    }
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for ECDH-ES+A256KW with empty apu/apv.
fn concat_kdf_kek(z: &[u8]) -> Result<[u8; 32], KbsError> {
    let mut info = Vec::with_capacity(4 + ALG_ECDH_ES_A256KW.len() + 12);
    info.extend_from_slice(&(ALG_ECDH_ES_A256KW.len() as u32).to_be_bytes());
    info.extend_from_slice(ALG_ECDH_ES_A256KW.as_bytes());
    info.extend_from_slice(&0u32.to_be_bytes()); // PartyUInfo: empty
    info.extend_from_slice(&0u32.to_be_bytes()); // PartyVInfo: empty
    info.extend_from_slice(&256u32.to_be_bytes()); // SuppPubInfo: keydatalen in bits
    let mut kek = [0u8; 32];
    concat_kdf::derive_key_into::<sha2_010::Sha256>(z, &info, &mut kek)
        .map_err(|e| jwe_err(format!("Concat KDF: {e}")))?;
    Ok(kek)
}

fn p256_from_jwk(crv: &str, x: &str, y: &str) -> Result<p256::PublicKey, KbsError> {
    if crv != "P-256" {
        return Err(jwe_err(format!("EC key curve {crv:?} is not P-256")));
    }
    let x = b64url_decode("EC key x", x)?;
    let y = b64url_decode("EC key y", y)?;
    if x.len() != 32 || y.len() != 32 {
        return Err(jwe_err("EC key x/y are not 32 bytes each"));
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| jwe_err("EC key is not a P-256 point"))
}

fn p256_xy(pk: &p256::PublicKey) -> (String, String) {
    let sec1 = pk.to_sec1_bytes(); // 0x04 || x || y
    (b64url(&sec1[1..33]), b64url(&sec1[33..65]))
}

fn rsa_from_jwk(n: &str, e: &str) -> Result<RsaPublicKey, KbsError> {
    let n = b64url_decode("RSA key n", n)?;
    let e = b64url_decode("RSA key e", e)?;
    let nb = BoxedUint::from_be_slice(&n, (n.len() * 8) as u32)
        .map_err(|e| jwe_err(format!("RSA modulus: {e}")))?;
    let eb = BoxedUint::from_be_slice(&e, (e.len().max(1) * 8) as u32)
        .map_err(|e| jwe_err(format!("RSA exponent: {e}")))?;
    RsaPublicKey::new_with_size_limits(nb, eb, 2048..=RSA_MAX_BITS)
        .map_err(|e| jwe_err(format!("RSA key: {e}")))
}

/// Encrypt `plaintext` to the TEE public key (the KBS side).
pub fn encrypt(tee_pubkey: &TeePubKey, plaintext: &[u8]) -> Result<FlattenedJwe, KbsError> {
    let cek: [u8; CEK_LEN] = random()?;
    let (protected_json, encrypted_key) = match tee_pubkey {
        TeePubKey::EC { crv, alg, x, y } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(jwe_err(format!(
                    "EC tee-pubkey alg {alg:?} is not {ALG_ECDH_ES_A256KW}"
                )));
            }
            let peer = p256_from_jwk(crv, x, y)?;
            let eph = random_p256()?;
            let z = eph.diffie_hellman(&peer);
            let kek = concat_kdf_kek(z.raw_secret_bytes().as_slice())?;
            let kw = KwAes256::new_from_slice(&kek).map_err(|e| jwe_err(format!("KEK: {e}")))?;
            let mut wrapped = [0u8; CEK_LEN + 8];
            let w = kw
                .wrap_key(&cek, &mut wrapped)
                .map_err(|e| jwe_err(format!("AES key wrap: {e}")))?
                .to_vec();
            let (ex, ey) = p256_xy(&eph.public_key());
            // Keys in sorted order, as kbs-types' `ProtectedHeader` serialises (trustee and
            // its client compute the AAD from that serialisation).
            let protected = format!(
                r#"{{"alg":"{ALG_ECDH_ES_A256KW}","enc":"{ENC_A256GCM}","epk":{{"crv":"P-256","kty":"EC","x":"{ex}","y":"{ey}"}}}}"#
            );
            (protected, w)
        }
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            if alg != ALG_RSA_OAEP_256 {
                return Err(jwe_err(format!(
                    "RSA tee-pubkey alg {alg:?} is not {ALG_RSA_OAEP_256}"
                )));
            }
            let pk = rsa_from_jwk(k_mod, k_exp)?;
            let w = pk
                .encrypt(&mut getrandom::SysRng, Oaep::<Sha256>::new(), &cek)
                .map_err(|e| jwe_err(format!("RSA-OAEP-256: {e}")))?;
            let protected = format!(r#"{{"alg":"{ALG_RSA_OAEP_256}","enc":"{ENC_A256GCM}"}}"#);
            (protected, w)
        }
        TeePubKey::AKP { alg, .. } => {
            return Err(jwe_err(format!(
                "tee-pubkey type AKP ({alg}) is not supported"
            )));
        }
    };
    let protected = b64url(protected_json.as_bytes());
    let iv: [u8; IV_LEN] = random()?;
    let gcm = Aes256Gcm::new_from_slice(&cek).map_err(|e| jwe_err(format!("CEK: {e}")))?;
    let mut buf = plaintext.to_vec();
    let tag = gcm
        .encrypt_inout_detached(
            &Nonce::from(iv),
            protected.as_bytes(),
            buf.as_mut_slice().into(),
        )
        .map_err(|_| jwe_err("A256GCM encryption failed"))?;
    Ok(FlattenedJwe {
        protected,
        encrypted_key: b64url(&encrypted_key),
        iv: b64url(&iv),
        ciphertext: b64url(&buf),
        tag: b64url(tag.as_slice()),
    })
}

/// The TEE key pair the client generates per handshake.
pub enum TeeKey {
    Ec(p256::SecretKey),
    Rsa(Box<RsaPrivateKey>),
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKey::Ec(_) => "TeeKey::Ec(<secret>)",
            TeeKey::Rsa(_) => "TeeKey::Rsa(<secret>)",
        })
    }
}

/// Which TEE key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeeKeyAlg {
    /// EC P-256, `ECDH-ES+A256KW` (trustee's default).
    #[default]
    EcP256,
    /// RSA-2048, `RSA-OAEP-256`.
    Rsa,
}

impl std::str::FromStr for TeeKeyAlg {
    type Err = KbsError;
    fn from_str(s: &str) -> Result<Self, KbsError> {
        match s {
            "ec" | "p256" | "ECDH-ES+A256KW" => Ok(TeeKeyAlg::EcP256),
            "rsa" | "RSA-OAEP-256" => Ok(TeeKeyAlg::Rsa),
            other => Err(KbsError::Config(format!(
                "TEE key algorithm {other:?} is not ec (ECDH-ES+A256KW) or rsa (RSA-OAEP-256)"
            ))),
        }
    }
}

impl TeeKey {
    pub fn generate(alg: TeeKeyAlg) -> Result<Self, KbsError> {
        match alg {
            TeeKeyAlg::EcP256 => Ok(TeeKey::Ec(random_p256()?)),
            TeeKeyAlg::Rsa => Ok(TeeKey::Rsa(Box::new(
                RsaPrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
                    .map_err(|e| jwe_err(format!("RSA key generation: {e}")))?,
            ))),
        }
    }

    /// The public JWK sent as `tee-pubkey`.
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            TeeKey::Ec(k) => {
                let (x, y) = p256_xy(&k.public_key());
                TeePubKey::EC {
                    crv: "P-256".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x,
                    y,
                }
            }
            TeeKey::Rsa(k) => TeePubKey::RSA {
                alg: ALG_RSA_OAEP_256.into(),
                k_mod: b64url(&k.n_bytes()),
                k_exp: b64url(&k.e_bytes()),
            },
        }
    }

    /// Decrypt a JWE addressed to this key.
    pub fn decrypt(&self, jwe: &FlattenedJwe) -> Result<Vec<u8>, KbsError> {
        let header_bytes = b64url_decode("JWE protected header", &jwe.protected)?;
        let header: serde_json::Value = serde_json::from_slice(&header_bytes)
            .map_err(|e| jwe_err(format!("JWE protected header is not JSON: {e}")))?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        let enc = header.get("enc").and_then(|a| a.as_str()).unwrap_or("");
        if enc != ENC_A256GCM {
            return Err(jwe_err(format!("JWE enc {enc:?} is not {ENC_A256GCM}")));
        }
        let ek = b64url_decode("JWE encrypted_key", &jwe.encrypted_key)?;
        let cek: Vec<u8> = match (self, alg) {
            (TeeKey::Ec(k), ALG_ECDH_ES_A256KW) => {
                let epk = header
                    .get("epk")
                    .ok_or_else(|| jwe_err("JWE header has no epk"))?;
                let s = |n: &str| epk.get(n).and_then(|v| v.as_str()).unwrap_or("");
                let peer = p256_from_jwk(s("crv"), s("x"), s("y"))?;
                let z = k.diffie_hellman(&peer);
                let kek = concat_kdf_kek(z.raw_secret_bytes().as_slice())?;
                let kw =
                    KwAes256::new_from_slice(&kek).map_err(|e| jwe_err(format!("KEK: {e}")))?;
                let mut out = vec![0u8; ek.len().saturating_sub(8)];
                kw.unwrap_key(&ek, &mut out)
                    .map_err(|_| jwe_err("AES key unwrap failed (wrong key or tampered JWE)"))?
                    .to_vec()
            }
            (TeeKey::Rsa(k), ALG_RSA_OAEP_256) => {
                k.decrypt(Oaep::<Sha256>::new(), &ek).map_err(|_| {
                    jwe_err("RSA-OAEP-256 decryption failed (wrong key or tampered JWE)")
                })?
            }
            (_, other) => {
                return Err(jwe_err(format!(
                    "JWE alg {other:?} does not match this TEE key ({})",
                    match self {
                        TeeKey::Ec(_) => ALG_ECDH_ES_A256KW,
                        TeeKey::Rsa(_) => ALG_RSA_OAEP_256,
                    }
                )));
            }
        };
        if cek.len() != CEK_LEN {
            return Err(jwe_err("content encryption key is not 32 bytes"));
        }
        let iv = b64url_decode("JWE iv", &jwe.iv)?;
        let iv: [u8; IV_LEN] = iv
            .try_into()
            .map_err(|_| jwe_err("JWE iv is not 12 bytes"))?;
        let tag = b64url_decode("JWE tag", &jwe.tag)?;
        let tag: [u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| jwe_err("JWE tag is not 16 bytes"))?;
        let mut buf = b64url_decode("JWE ciphertext", &jwe.ciphertext)?;
        let gcm = Aes256Gcm::new_from_slice(&cek).map_err(|e| jwe_err(format!("CEK: {e}")))?;
        gcm.decrypt_inout_detached(
            &Nonce::from(iv),
            jwe.protected.as_bytes(),
            buf.as_mut_slice().into(),
            &tag.into(),
        )
        .map_err(|_| jwe_err("A256GCM authentication failed: the JWE was tampered with"))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(s: &str) -> String {
        let mut b = b64url_decode("t", s).expect("b64");
        b[0] ^= 1;
        b64url(&b)
    }

    #[test]
    fn ec_and_rsa_round_trip_and_tamper() {
        for alg in [TeeKeyAlg::EcP256, TeeKeyAlg::Rsa] {
            let key = TeeKey::generate(alg).expect("key");
            let jwe = encrypt(&key.public_jwk(), b"secret bytes").expect("encrypt");
            assert_eq!(key.decrypt(&jwe).expect("decrypt"), b"secret bytes");
            let v = serde_json::to_value(&jwe).expect("json");
            assert!(v.get("aad").is_none());
            for field in 0..4 {
                let mut t = jwe.clone();
                match field {
                    0 => t.ciphertext = flip(&t.ciphertext),
                    1 => t.tag = flip(&t.tag),
                    2 => t.encrypted_key = flip(&t.encrypted_key),
                    _ => t.iv = flip(&t.iv),
                }
                assert!(key.decrypt(&t).is_err(), "{alg:?} field {field}");
            }
            // A different but valid protected header changes the AAD.
            let mut t = jwe.clone();
            let h = String::from_utf8(b64url_decode("h", &t.protected).expect("h")).expect("utf8");
            t.protected = b64url(format!("{h} ").as_bytes());
            assert!(key.decrypt(&t).is_err());
            let other = TeeKey::generate(alg).expect("key");
            assert!(other.decrypt(&jwe).is_err());
        }
    }

    #[test]
    fn header_shapes() {
        let key = TeeKey::generate(TeeKeyAlg::EcP256).expect("key");
        let jwe = encrypt(&key.public_jwk(), b"x").expect("encrypt");
        let h: serde_json::Value =
            serde_json::from_slice(&b64url_decode("h", &jwe.protected).expect("h")).expect("json");
        assert_eq!(h["alg"], ALG_ECDH_ES_A256KW);
        assert_eq!(h["enc"], ENC_A256GCM);
        assert_eq!(h["epk"]["crv"], "P-256");
        assert_eq!(b64url_decode("k", &jwe.encrypted_key).expect("k").len(), 40);
        // The protected header is exactly kbs-types' serialisation (sorted keys, compact).
        let p: kbs_types::ProtectedHeader = serde_json::from_value(h.clone()).expect("header");
        let reserialised = serde_json::to_string(&p).expect("json");
        let sorted = serde_json_canonicalizer::to_string(&h).expect("jcs");
        assert_eq!(reserialised, sorted);
        assert_eq!(
            String::from_utf8(b64url_decode("h", &jwe.protected).expect("h")).expect("utf8"),
            sorted
        );
    }
}
