//! JWE key agreement with key wrapping, `ECDH-ES+A128KW` / `+A192KW` / `+A256KW`
//! (RFC 7518 §4.6), for EC P-256, P-384 and P-521 private keys.
//!
//! containers/ocicrypt (go-jose) writes `ECDH-ES+A256KW` for every EC recipient of
//! `skopeo copy --encryption-key jwe:<ec-pub.pem>`, whatever the curve, with the ephemeral public
//! key as `epk` in the protected header and no `apu`/`apv` (checked on skopeo 1.9 output for all
//! three curves). The unwrap is: Z = ECDH(private key, epk) (the x coordinate, field-size bytes);
//! KEK = Concat KDF SHA-256 (Z, AlgorithmID = `alg`, PartyUInfo = `apu`, PartyVInfo = `apv`,
//! SuppPubInfo = KEK length in bits); CEK = AES key unwrap (RFC 3394) of `encrypted_key` under the
//! KEK. Every primitive comes from RustCrypto: p256/p384/p521 (point validation and ECDH),
//! concat-kdf, aes-kw.

use aes_kw::{KeyInit, KwAes128, KwAes192, KwAes256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// JWE `alg` values handled here, with the AES key-wrap KEK length in bytes.
pub const ECDH_ES_KW_ALGS: [(&str, usize); 3] = [
    ("ECDH-ES+A128KW", 16),
    ("ECDH-ES+A192KW", 24),
    ("ECDH-ES+A256KW", 32),
];

/// Uncompressed SEC1 point tag.
const SEC1_UNCOMPRESSED: u8 = 0x04;
/// AES key wrap adds one 64-bit integrity block.
const KW_OVERHEAD: usize = 8;

/// An EC private key for one of the NIST curves JWE defines.
pub enum EcPrivateKey {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

impl EcPrivateKey {
    /// The JWK `crv` name.
    pub fn curve(&self) -> &'static str {
        match self {
            EcPrivateKey::P256(_) => "P-256",
            EcPrivateKey::P384(_) => "P-384",
            EcPrivateKey::P521(_) => "P-521",
        }
    }

    /// Field element size in bytes (of Z and of the `epk` coordinates).
    fn field_len(&self) -> usize {
        match self {
            EcPrivateKey::P256(_) => 32,
            EcPrivateKey::P384(_) => 48,
            EcPrivateKey::P521(_) => 66,
        }
    }

    /// A DER private key, PKCS#8 `PrivateKeyInfo` or SEC1 `ECPrivateKey`; the curve comes from
    /// the key's named-curve OID. `None` if it is neither on any supported curve.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        if let Ok(k) = p256::SecretKey::from_der(der) {
            return Some(EcPrivateKey::P256(k));
        }
        if let Ok(k) = p384::SecretKey::from_der(der) {
            return Some(EcPrivateKey::P384(k));
        }
        p521::SecretKey::from_der(der).ok().map(EcPrivateKey::P521)
    }

    /// ECDH with the peer point (affine `x`, `y`); returns Z. The point is validated (on the
    /// curve, not the identity) by the curve crate.
    fn agree(&self, x: &[u8], y: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let n = self.field_len();
        if x.len() != n || y.len() != n {
            return Err(format!(
                "JWE epk coordinates are {}/{} bytes, {} needs {n}",
                x.len(),
                y.len(),
                self.curve()
            ));
        }
        let mut point = Vec::with_capacity(1 + 2 * n);
        point.push(SEC1_UNCOMPRESSED);
        point.extend_from_slice(x);
        point.extend_from_slice(y);
        let bad_point = || format!("JWE epk is not a valid {} point", self.curve());
        let z = match self {
            EcPrivateKey::P256(k) => {
                let pk = p256::PublicKey::from_sec1_bytes(&point).map_err(|_| bad_point())?;
                k.diffie_hellman(&pk).raw_secret_bytes().to_vec()
            }
            EcPrivateKey::P384(k) => {
                let pk = p384::PublicKey::from_sec1_bytes(&point).map_err(|_| bad_point())?;
                k.diffie_hellman(&pk).raw_secret_bytes().to_vec()
            }
            EcPrivateKey::P521(k) => {
                let pk = p521::PublicKey::from_sec1_bytes(&point).map_err(|_| bad_point())?;
                k.diffie_hellman(&pk).raw_secret_bytes().to_vec()
            }
        };
        Ok(Zeroizing::new(z))
    }

    /// Unwrap the content encryption key of one recipient whose `alg` is one of
    /// [`ECDH_ES_KW_ALGS`]; `header` is the recipient's joint header (`epk`, `apu`, `apv`).
    pub fn unwrap_cek(
        &self,
        alg: &str,
        header: &Map<String, Value>,
        encrypted_key: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let Some(&(_, kek_len)) = ECDH_ES_KW_ALGS.iter().find(|(a, _)| *a == alg) else {
            return Err(format!("JWE key algorithm {alg:?} is not ECDH-ES+A*KW"));
        };
        let epk = header
            .get("epk")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("JWE {alg} recipient has no epk"))?;
        let member = |name: &str| epk.get(name).and_then(Value::as_str).unwrap_or("");
        if member("kty") != "EC" {
            return Err(format!("JWE epk kty {:?} is not EC", member("kty")));
        }
        if member("crv") != self.curve() {
            return Err(format!(
                "JWE recipient is for curve {:?}, this key is {}",
                member("crv"),
                self.curve()
            ));
        }
        let x = b64url_member(member("x"), "epk x")?;
        let y = b64url_member(member("y"), "epk y")?;
        let party = |name: &str| -> Result<Vec<u8>, String> {
            match header.get(name) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => b64url_member(s, name),
                Some(_) => Err(format!("JWE {name} is not a string")),
            }
        };
        let apu = party("apu")?;
        let apv = party("apv")?;
        let z = self.agree(&x, &y)?;
        let kek = concat_kdf_sha256(&z, alg, &apu, &apv, kek_len)?;
        aes_key_unwrap(&kek, encrypted_key)
    }
}

fn b64url_member(s: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWE {what} is not base64url"))
}

/// A 32-bit big-endian length prefix followed by the data (RFC 7518 §4.6.2 `Datalen || Data`).
fn push_len_prefixed(out: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
    let len = u32::try_from(data.len()).map_err(|_| "Concat KDF input too long".to_string())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// The Concat KDF of RFC 7518 §4.6.2 (NIST SP 800-56A single-step KDF, SHA-256):
/// OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo, the first three
/// length-prefixed, SuppPubInfo = keydatalen in bits (32-bit big endian), no SuppPrivInfo.
/// `alg_id` is `alg` for key agreement with key wrapping, `enc` for direct key agreement.
pub fn concat_kdf_sha256(
    z: &[u8],
    alg_id: &str,
    apu: &[u8],
    apv: &[u8],
    key_len: usize,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let bits = key_len
        .checked_mul(8)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| "Concat KDF key length too large".to_string())?;
    let mut other_info = Vec::with_capacity(16 + alg_id.len() + apu.len() + apv.len());
    push_len_prefixed(&mut other_info, alg_id.as_bytes())?;
    push_len_prefixed(&mut other_info, apu)?;
    push_len_prefixed(&mut other_info, apv)?;
    other_info.extend_from_slice(&bits.to_be_bytes());
    let mut key = Zeroizing::new(vec![0u8; key_len]);
    concat_kdf::derive_key_into::<sha2_010::Sha256>(z, &other_info, &mut key)
        .map_err(|e| format!("Concat KDF: {e}"))?;
    Ok(key)
}

/// RFC 3394 AES key unwrap with a 16-, 24- or 32-byte KEK; fails if the integrity check does not
/// hold (wrong private key or tampered `encrypted_key`).
fn aes_key_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    if wrapped.len() < 2 * KW_OVERHEAD || !wrapped.len().is_multiple_of(KW_OVERHEAD) {
        return Err(format!(
            "JWE encrypted_key is {} bytes, not an AES key-wrap output",
            wrapped.len()
        ));
    }
    let mut out = Zeroizing::new(vec![0u8; wrapped.len() - KW_OVERHEAD]);
    let bad_kek = |_| "bad AES key-wrap KEK length".to_string();
    let unwrapped = match kek.len() {
        16 => KwAes128::new_from_slice(kek)
            .map_err(bad_kek)?
            .unwrap_key(wrapped, &mut out)
            .map(<[u8]>::len),
        24 => KwAes192::new_from_slice(kek)
            .map_err(bad_kek)?
            .unwrap_key(wrapped, &mut out)
            .map(<[u8]>::len),
        32 => KwAes256::new_from_slice(kek)
            .map_err(bad_kek)?
            .unwrap_key(wrapped, &mut out)
            .map(<[u8]>::len),
        n => return Err(format!("AES key-wrap KEK of {n} bytes")),
    };
    let len = unwrapped.map_err(|_| {
        "ECDH-ES AES key unwrap failed (a different EC key, or a tampered JWE)".to_string()
    })?;
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        b64url_member(s, "test").unwrap()
    }

    /// RFC 7518 Appendix C: Bob's static key, Alice's ephemeral key, Z and the derived key
    /// (there for direct `ECDH-ES` with `enc` A128GCM, apu "Alice", apv "Bob").
    #[test]
    fn rfc7518_appendix_c() {
        let bob_d = b64("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw");
        let bob = EcPrivateKey::P256(p256::SecretKey::from_slice(&bob_d).unwrap());
        let z = bob
            .agree(
                &b64("gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0"),
                &b64("SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"),
            )
            .unwrap();
        let expected_z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        assert_eq!(&z[..], &expected_z[..]);
        assert_eq!(b64("QWxpY2U"), b"Alice");
        assert_eq!(b64("Qm9i"), b"Bob");
        let key = concat_kdf_sha256(&z, "A128GCM", b"Alice", b"Bob", 16).unwrap();
        assert_eq!(
            &key[..],
            &[
                86, 170, 141, 234, 248, 35, 109, 32, 92, 34, 40, 205, 113, 167, 16, 26
            ]
        );
        assert_eq!(URL_SAFE_NO_PAD.encode(&key[..]), "VqqN6vgjbSBcIijNcacQGg");
    }

    fn header(alg: &str, crv: &str, x: &[u8], y: &[u8]) -> Map<String, Value> {
        serde_json::from_value(serde_json::json!({
            "alg": alg, "enc": "A256GCM",
            "epk": {"kty": "EC", "crv": crv, "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)},
            "apu": URL_SAFE_NO_PAD.encode(b"u"), "apv": URL_SAFE_NO_PAD.encode(b"v"),
        }))
        .unwrap()
    }

    /// Sender side with the same crates, for every alg on P-256: wrap under the KDF output of an
    /// ephemeral key, unwrap with the recipient key; a different key or epk fails.
    #[test]
    fn wrap_unwrap_every_alg() {
        let recipient = p256::SecretKey::from_slice(&[0x11; 32]).unwrap();
        let eph = p256::SecretKey::from_slice(&[0x22; 32]).unwrap();
        let point = eph.public_key().to_sec1_bytes();
        let (x, y) = (&point[1..33], &point[33..65]);
        let z = eph.diffie_hellman(&recipient.public_key());
        let cek = [0x5au8; 32];
        let key = EcPrivateKey::P256(recipient.clone());
        for (alg, kek_len) in ECDH_ES_KW_ALGS {
            let kek = concat_kdf_sha256(z.raw_secret_bytes().as_slice(), alg, b"u", b"v", kek_len)
                .unwrap();
            let mut wrapped = [0u8; 40];
            match kek_len {
                16 => KwAes128::new_from_slice(&kek)
                    .unwrap()
                    .wrap_key(&cek, &mut wrapped)
                    .unwrap(),
                24 => KwAes192::new_from_slice(&kek)
                    .unwrap()
                    .wrap_key(&cek, &mut wrapped)
                    .unwrap(),
                _ => KwAes256::new_from_slice(&kek)
                    .unwrap()
                    .wrap_key(&cek, &mut wrapped)
                    .unwrap(),
            };
            let h = header(alg, "P-256", x, y);
            assert_eq!(&key.unwrap_cek(alg, &h, &wrapped).unwrap()[..], &cek);
            let other = EcPrivateKey::P256(p256::SecretKey::from_slice(&[0x33; 32]).unwrap());
            assert!(other.unwrap_cek(alg, &h, &wrapped).is_err());
            // apu/apv are bound into the KEK.
            let mut h2 = h.clone();
            h2.remove("apu");
            assert!(key.unwrap_cek(alg, &h2, &wrapped).is_err());
        }
        // An off-curve epk is refused before any ECDH.
        let mut bad_y = y.to_vec();
        bad_y[31] ^= 1;
        let err = key
            .unwrap_cek(
                "ECDH-ES+A256KW",
                &header("ECDH-ES+A256KW", "P-256", x, &bad_y),
                &[0u8; 40],
            )
            .unwrap_err();
        assert!(err.contains("not a valid P-256 point"), "{err}");
        // A curve mismatch is reported as such.
        let err = key
            .unwrap_cek(
                "ECDH-ES+A256KW",
                &header("ECDH-ES+A256KW", "P-384", x, y),
                &[0u8; 40],
            )
            .unwrap_err();
        assert!(err.contains("P-384"), "{err}");
    }
}
