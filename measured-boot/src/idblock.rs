//! SNP ID block and ID authentication information (SNP ABI spec, SNP_LAUNCH_FINISH: "ID_BLOCK",
//! "ID_AUTH_INFO", and the ECDSA signature / public key formats of its appendix). Passed to QEMU
//! as `-object sev-snp-guest,id-block=<base64>,id-auth=<base64>,...` to pin a launch.

use std::path::Path;

use p384::ecdsa::{Signature, SigningKey, VerifyingKey, signature::Signer};
use p384::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha384};

use crate::error::{Error, Result};
use crate::snp::SnpMeasurement;

/// Size of ID_BLOCK.
pub const ID_BLOCK_SIZE: usize = 0x60;
const IDB_OFF_LD: usize = 0x00;
const IDB_OFF_FAMILY_ID: usize = 0x30;
const IDB_OFF_IMAGE_ID: usize = 0x40;
const IDB_OFF_VERSION: usize = 0x50;
const IDB_OFF_GUEST_SVN: usize = 0x54;
const IDB_OFF_POLICY: usize = 0x58;
/// The only ID block version defined.
pub const ID_BLOCK_VERSION: u32 = 1;

/// Size of ID_AUTH_INFO.
pub const ID_AUTH_SIZE: usize = 0x1000;
const AUTH_OFF_ID_KEY_ALGO: usize = 0x00;
const AUTH_OFF_AUTH_KEY_ALGO: usize = 0x04;
const AUTH_OFF_ID_BLOCK_SIG: usize = 0x40;
const AUTH_OFF_ID_KEY: usize = 0x240;
const AUTH_OFF_ID_KEY_SIG: usize = 0x680;
const AUTH_OFF_AUTHOR_KEY: usize = 0x880;

/// Signature algorithm ECDSA P-384 with SHA-384.
pub const ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Curve identifier P-384.
pub const CURVE_P384: u32 = 2;

/// Size of the signature structure; R and S are 72-byte little-endian fields.
pub const SIGNATURE_SIZE: usize = 0x200;
const SIG_OFF_R: usize = 0x00;
const SIG_OFF_S: usize = 0x48;
/// Size of the public-key structure; QX and QY are 72-byte little-endian fields.
pub const PUBKEY_SIZE: usize = 0x404;
const KEY_OFF_CURVE: usize = 0x00;
const KEY_OFF_QX: usize = 0x04;
const KEY_OFF_QY: usize = 0x4c;
const COMPONENT_SIZE: usize = 72;
const P384_BYTES: usize = 48;

/// The ID block contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdBlock {
    pub launch_digest: SnpMeasurement,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub guest_svn: u32,
    pub policy: u64,
}

impl IdBlock {
    /// Serialises (VERSION = 1).
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_SIZE] {
        let mut b = [0u8; ID_BLOCK_SIZE];
        b[IDB_OFF_LD..IDB_OFF_FAMILY_ID].copy_from_slice(&self.launch_digest.0);
        b[IDB_OFF_FAMILY_ID..IDB_OFF_IMAGE_ID].copy_from_slice(&self.family_id);
        b[IDB_OFF_IMAGE_ID..IDB_OFF_VERSION].copy_from_slice(&self.image_id);
        b[IDB_OFF_VERSION..IDB_OFF_GUEST_SVN].copy_from_slice(&ID_BLOCK_VERSION.to_le_bytes());
        b[IDB_OFF_GUEST_SVN..IDB_OFF_POLICY].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[IDB_OFF_POLICY..ID_BLOCK_SIZE].copy_from_slice(&self.policy.to_le_bytes());
        b
    }

    /// Parses; `None` if the version is not 1.
    pub fn parse(b: &[u8; ID_BLOCK_SIZE]) -> Option<Self> {
        let version = u32::from_le_bytes(b[IDB_OFF_VERSION..IDB_OFF_GUEST_SVN].try_into().ok()?);
        if version != ID_BLOCK_VERSION {
            return None;
        }
        Some(IdBlock {
            launch_digest: SnpMeasurement(b[IDB_OFF_LD..IDB_OFF_FAMILY_ID].try_into().ok()?),
            family_id: b[IDB_OFF_FAMILY_ID..IDB_OFF_IMAGE_ID].try_into().ok()?,
            image_id: b[IDB_OFF_IMAGE_ID..IDB_OFF_VERSION].try_into().ok()?,
            guest_svn: u32::from_le_bytes(b[IDB_OFF_GUEST_SVN..IDB_OFF_POLICY].try_into().ok()?),
            policy: u64::from_le_bytes(b[IDB_OFF_POLICY..ID_BLOCK_SIZE].try_into().ok()?),
        })
    }
}

/// Writes a big-endian 48-byte value as a zero-extended 72-byte little-endian field.
fn put_le_component(dst: &mut [u8], be: &[u8]) {
    for (i, byte) in be.iter().rev().enumerate() {
        dst[i] = *byte;
    }
}

fn get_be_component(src: &[u8]) -> [u8; P384_BYTES] {
    let mut be = [0u8; P384_BYTES];
    for i in 0..P384_BYTES {
        be[P384_BYTES - 1 - i] = src[i];
    }
    be
}

/// The SNP public-key structure of a P-384 key.
pub fn public_key_struct(key: &VerifyingKey) -> [u8; PUBKEY_SIZE] {
    let mut b = [0u8; PUBKEY_SIZE];
    b[KEY_OFF_CURVE..KEY_OFF_QX].copy_from_slice(&CURVE_P384.to_le_bytes());
    let point = key.to_sec1_point(false);
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        put_le_component(&mut b[KEY_OFF_QX..KEY_OFF_QX + COMPONENT_SIZE], x);
        put_le_component(&mut b[KEY_OFF_QY..KEY_OFF_QY + COMPONENT_SIZE], y);
    }
    b
}

/// SHA-384 of the public-key structure: the ID_KEY_DIGEST / AUTHOR_KEY_DIGEST of the report.
pub fn key_digest(key: &VerifyingKey) -> [u8; 48] {
    Sha384::digest(public_key_struct(key)).into()
}

/// Signs `msg` (ECDSA P-384, SHA-384, RFC 6979) into the SNP signature structure.
pub fn signature_struct(key: &SigningKey, msg: &[u8]) -> [u8; SIGNATURE_SIZE] {
    let sig: Signature = key.sign(msg);
    let (r, s) = sig.split_bytes();
    let mut b = [0u8; SIGNATURE_SIZE];
    put_le_component(&mut b[SIG_OFF_R..SIG_OFF_R + COMPONENT_SIZE], &r);
    put_le_component(&mut b[SIG_OFF_S..SIG_OFF_S + COMPONENT_SIZE], &s);
    b
}

/// Decodes an SNP signature structure.
pub fn parse_signature(b: &[u8]) -> Option<Signature> {
    if b.len() < SIG_OFF_S + COMPONENT_SIZE {
        return None;
    }
    let r = get_be_component(&b[SIG_OFF_R..]);
    let s = get_be_component(&b[SIG_OFF_S..]);
    Signature::from_scalars(r, s).ok()
}

/// Loads a P-384 private key from PKCS#8 or SEC1 PEM.
pub fn load_p384_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let secret = p384::SecretKey::from_pkcs8_pem(&text)
        .or_else(|_| p384::SecretKey::from_sec1_pem(&text))
        .map_err(|_| Error::Key {
            name: path.display().to_string(),
            detail: "not a P-384 private key in PKCS#8 or SEC1 PEM; create one with `openssl ecparam -name secp384r1 -genkey -noout`".into(),
        })?;
    Ok(SigningKey::from(secret))
}

/// The signed ID block and ID auth info, ready for QEMU.
#[derive(Debug, Clone)]
pub struct SignedIdBlock {
    pub id_block: [u8; ID_BLOCK_SIZE],
    pub id_auth: Box<[u8; ID_AUTH_SIZE]>,
    /// ID_KEY_DIGEST as the attestation report shows it.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST as the attestation report shows it (with AUTHOR_KEY_EN = 1).
    pub author_key_digest: [u8; 48],
}

impl SignedIdBlock {
    /// Signs `block` with the ID key and the ID key with the author key.
    pub fn sign(block: &IdBlock, id_key: &SigningKey, author_key: &SigningKey) -> Self {
        let id_block = block.to_bytes();
        let mut auth = Box::new([0u8; ID_AUTH_SIZE]);
        auth[AUTH_OFF_ID_KEY_ALGO..AUTH_OFF_ID_KEY_ALGO + 4]
            .copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        auth[AUTH_OFF_AUTH_KEY_ALGO..AUTH_OFF_AUTH_KEY_ALGO + 4]
            .copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        auth[AUTH_OFF_ID_BLOCK_SIG..AUTH_OFF_ID_BLOCK_SIG + SIGNATURE_SIZE]
            .copy_from_slice(&signature_struct(id_key, &id_block));
        let id_pub = public_key_struct(id_key.verifying_key());
        auth[AUTH_OFF_ID_KEY..AUTH_OFF_ID_KEY + PUBKEY_SIZE].copy_from_slice(&id_pub);
        auth[AUTH_OFF_ID_KEY_SIG..AUTH_OFF_ID_KEY_SIG + SIGNATURE_SIZE]
            .copy_from_slice(&signature_struct(author_key, &id_pub));
        let author_pub = public_key_struct(author_key.verifying_key());
        auth[AUTH_OFF_AUTHOR_KEY..AUTH_OFF_AUTHOR_KEY + PUBKEY_SIZE].copy_from_slice(&author_pub);
        SignedIdBlock {
            id_block,
            id_auth: auth,
            id_key_digest: Sha384::digest(id_pub).into(),
            author_key_digest: Sha384::digest(author_pub).into(),
        }
    }

    /// Base64 of the ID block (QEMU `id-block=`).
    pub fn id_block_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.id_block)
    }

    /// Base64 of the ID auth info (QEMU `id-auth=`).
    pub fn id_auth_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.id_auth[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::Verifier;

    fn key(byte: u8) -> SigningKey {
        let mut b = [byte; 48];
        b[0] = 0x01; // keep the scalar below the group order
        SigningKey::from_slice(&b).unwrap()
    }

    #[test]
    fn id_block_round_trips() {
        let blk = IdBlock {
            launch_digest: SnpMeasurement([0x5a; 48]),
            family_id: [1; 16],
            image_id: [2; 16],
            guest_svn: 7,
            policy: 0x30000,
        };
        let b = blk.to_bytes();
        assert_eq!(&b[0x50..0x54], &[1, 0, 0, 0]);
        assert_eq!(&b[0x58..0x60], &0x30000u64.to_le_bytes());
        assert_eq!(IdBlock::parse(&b), Some(blk));
    }

    #[test]
    fn auth_info_signatures_verify() {
        let (idk, authk) = (key(0x11), key(0x22));
        let blk = IdBlock {
            launch_digest: SnpMeasurement([0xa5; 48]),
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            policy: 0x30000,
        };
        let s = SignedIdBlock::sign(&blk, &idk, &authk);
        let a = &s.id_auth;
        assert_eq!(&a[0..4], &ALGO_ECDSA_P384_SHA384.to_le_bytes());
        let sig = parse_signature(&a[AUTH_OFF_ID_BLOCK_SIG..]).unwrap();
        idk.verifying_key().verify(&s.id_block, &sig).unwrap();
        let id_pub = &a[AUTH_OFF_ID_KEY..AUTH_OFF_ID_KEY + PUBKEY_SIZE];
        let sig2 = parse_signature(&a[AUTH_OFF_ID_KEY_SIG..]).unwrap();
        authk.verifying_key().verify(id_pub, &sig2).unwrap();
        // QX is little-endian: its first byte is the last byte of the SEC1 X coordinate.
        let pt = idk.verifying_key().to_sec1_point(false);
        assert_eq!(id_pub[KEY_OFF_QX], pt.x().unwrap()[47]);
        assert_eq!(&id_pub[0..4], &CURVE_P384.to_le_bytes());
        assert_eq!(s.id_key_digest, key_digest(idk.verifying_key()));
        assert!(idk.verifying_key().verify(b"other", &sig).is_err());
        assert_eq!(s.id_auth_base64().len(), 5464);
    }
}
