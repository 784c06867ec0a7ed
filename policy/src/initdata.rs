//! CoCo initdata (version 0.1.0): the TOML document the pod owner gives the pod (agent policy,
//! KBS and attestation-agent settings), and its digest, which the host binds into the launch
//! (SEV-SNP HOST_DATA, TDX MRCONFIGID, the emulated TEE's HOST_DATA) so the guest and the KBS can
//! tell whether the host passed the document unchanged.
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"          # sha256 | sha384 | sha512
//! [data]
//! "policy.rego" = '''package agent_policy ...'''
//! "aa.toml" = '''...'''
//! ```
//!
//! As in guest-components and trustee, the digest is `algorithm(<the exact TOML bytes>)`: not of a
//! re-serialisation, so the document must travel byte for byte. HOST_DATA is the digest truncated
//! or zero-padded to 32 bytes, MRCONFIGID to 48 bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The only initdata version.
pub const INITDATA_VERSION: &str = "0.1.0";
/// The pod annotation that carries base64(gzip(initdata TOML)).
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// The `[data]` key of the agent policy.
pub const POLICY_KEY: &str = "policy.rego";
/// Size of SEV-SNP HOST_DATA.
pub const HOST_DATA_LEN: usize = 32;
/// Size of TDX MRCONFIGID.
pub const MR_CONFIG_ID_LEN: usize = 48;
/// Largest initdata accepted (decompressed), against gzip bombs.
pub const MAX_INITDATA_LEN: usize = 4 << 20;

/// The initdata block device (a read-only virtio-blk disk the host attaches):
/// `DEVICE_MAGIC` (8 bytes) ‖ payload length (u64 little-endian) ‖ gzip(initdata TOML) ‖ zero
/// padding to a multiple of [`DEVICE_SECTOR`]. The payload is the annotation value, base64-decoded.
pub const DEVICE_MAGIC: &[u8; 8] = b"PODVMID1";
pub const DEVICE_OFF_LEN: usize = 8;
pub const DEVICE_OFF_PAYLOAD: usize = 16;
pub const DEVICE_SECTOR: usize = 512;

/// The digest algorithm named by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            Algorithm::Sha384 => sha2::Sha384::digest(bytes).to_vec(),
            Algorithm::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = InitDataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha384" => Ok(Algorithm::Sha384),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(InitDataError::Algorithm(other.to_string())),
        }
    }
}

/// Malformed initdata: one line each.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    #[error("initdata is not valid TOML{0}")]
    Toml(String),
    #[error("initdata version {0:?} is not supported (only \"0.1.0\")")]
    Version(String),
    #[error("initdata algorithm {0:?} is not supported (sha256, sha384 or sha512)")]
    Algorithm(String),
    #[error("initdata is not UTF-8")]
    NotUtf8,
    #[error("initdata annotation is not base64: {0}")]
    Base64(String),
    #[error("initdata annotation is not gzip: {0}")]
    Gzip(String),
    #[error("initdata is larger than {MAX_INITDATA_LEN} bytes")]
    TooLarge,
    #[error("initdata device: {0}")]
    Device(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(rename = "version")]
    _version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RawOut<'a> {
    version: &'a str,
    algorithm: &'a str,
    data: BTreeMap<&'a str, &'a str>,
}

/// A parsed initdata document, with its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    toml: String,
    algorithm: Algorithm,
    data: BTreeMap<String, String>,
}

fn toml_error(e: &toml::de::Error, text: &str) -> InitDataError {
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    InitDataError::Toml(format!("{at}: {}", e.message().trim()))
}

impl InitData {
    /// Parses initdata TOML bytes (kept as they are, for the digest).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, InitDataError> {
        if bytes.len() > MAX_INITDATA_LEN {
            return Err(InitDataError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InitDataError::NotUtf8)?;
        Self::parse(text)
    }

    /// Parses initdata TOML (kept as it is, for the digest).
    pub fn parse(toml_text: &str) -> Result<Self, InitDataError> {
        // Version and algorithm first, so their errors are not hidden by a `[data]` problem.
        let table: toml::Table =
            toml::from_str(toml_text).map_err(|e| toml_error(&e, toml_text))?;
        match table.get("version") {
            Some(toml::Value::String(v)) if v == INITDATA_VERSION => {}
            Some(toml::Value::String(v)) => return Err(InitDataError::Version(v.clone())),
            Some(other) => return Err(InitDataError::Version(other.to_string())),
            None => return Err(InitDataError::Toml(": missing `version`".into())),
        }
        match table.get("algorithm") {
            Some(toml::Value::String(a)) => {
                a.parse::<Algorithm>()?;
            }
            Some(other) => return Err(InitDataError::Algorithm(other.to_string())),
            None => return Err(InitDataError::Toml(": missing `algorithm`".into())),
        }
        let raw: Raw = toml::from_str(toml_text).map_err(|e| toml_error(&e, toml_text))?;
        Ok(InitData {
            toml: toml_text.to_string(),
            algorithm: raw.algorithm.parse()?,
            data: raw.data,
        })
    }

    /// Builds a document from `[data]` entries.
    pub fn build(
        algorithm: Algorithm,
        entries: &[(String, String)],
    ) -> Result<Self, InitDataError> {
        let out = RawOut {
            version: INITDATA_VERSION,
            algorithm: algorithm.as_str(),
            data: entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        let text = toml::to_string(&out).map_err(|e| InitDataError::Toml(format!(": {e}")))?;
        Self::parse(&text)
    }

    /// Decodes the annotation value: base64(gzip(TOML)).
    pub fn from_annotation(value: &str) -> Result<Self, InitDataError> {
        let gz = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| InitDataError::Base64(e.to_string()))?;
        Self::gunzip(&gz)
    }

    /// The annotation value: base64(gzip(TOML)).
    pub fn annotation(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.gzip())
    }

    fn gzip(&self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(self.toml.as_bytes()).expect("gzip to memory");
        gz.finish().expect("gzip to memory")
    }

    fn gunzip(gz: &[u8]) -> Result<Self, InitDataError> {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .take(MAX_INITDATA_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| InitDataError::Gzip(e.to_string()))?;
        Self::parse_bytes(&bytes)
    }

    /// The image of the initdata block device (see [`DEVICE_MAGIC`]).
    pub fn to_device_image(&self) -> Vec<u8> {
        let payload = self.gzip();
        let mut out = Vec::with_capacity(DEVICE_OFF_PAYLOAD + payload.len() + DEVICE_SECTOR);
        out.extend_from_slice(DEVICE_MAGIC);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        out.resize(out.len().div_ceil(DEVICE_SECTOR) * DEVICE_SECTOR, 0);
        out
    }

    /// Reads the initdata block device (its first bytes suffice).
    pub fn from_device_image(image: &[u8]) -> Result<Self, InitDataError> {
        if image.len() < DEVICE_OFF_PAYLOAD || &image[..DEVICE_OFF_LEN] != DEVICE_MAGIC {
            return Err(InitDataError::Device(format!(
                "no {:?} magic at offset 0: not an initdata device",
                String::from_utf8_lossy(DEVICE_MAGIC)
            )));
        }
        let len = u64::from_le_bytes(
            image[DEVICE_OFF_LEN..DEVICE_OFF_PAYLOAD]
                .try_into()
                .expect("8 bytes"),
        );
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| DEVICE_OFF_PAYLOAD.checked_add(l))
            .filter(|&end| end <= image.len())
            .ok_or_else(|| {
                InitDataError::Device(format!(
                    "payload length {len} exceeds the device ({} bytes)",
                    image.len()
                ))
            })?;
        Self::gunzip(&image[DEVICE_OFF_PAYLOAD..end])
    }

    /// The exact TOML text.
    pub fn toml(&self) -> &str {
        &self.toml
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `[data]` entries.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }

    /// The agent policy (`[data]."policy.rego"`), if any.
    pub fn policy(&self) -> Option<&str> {
        self.data.get(POLICY_KEY).map(String::as_str)
    }

    /// `algorithm(TOML bytes)`.
    pub fn digest(&self) -> Vec<u8> {
        self.algorithm.digest(self.toml.as_bytes())
    }

    /// SEV-SNP HOST_DATA: the digest truncated or zero-padded to 32 bytes.
    pub fn host_data(&self) -> [u8; HOST_DATA_LEN] {
        fit(&self.digest())
    }

    /// TDX MRCONFIGID: the digest truncated or zero-padded to 48 bytes.
    pub fn mr_config_id(&self) -> [u8; MR_CONFIG_ID_LEN] {
        fit(&self.digest())
    }
}

fn fit<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = digest.len().min(N);
    out[..n].copy_from_slice(&digest[..n]);
    out
}

/// The evidence field the digest is bound to (HOST_DATA for SNP, MRCONFIGID for TDX), compared
/// with the digest adjusted to its size. Returns the expected value on mismatch.
pub fn check_bound(initdata: Option<&InitData>, field: &[u8]) -> Result<(), Vec<u8>> {
    let expected: Vec<u8> = match (initdata, field.len()) {
        (Some(i), HOST_DATA_LEN) => i.host_data().to_vec(),
        (Some(i), MR_CONFIG_ID_LEN) => i.mr_config_id().to_vec(),
        (Some(i), n) => {
            let mut d = i.digest();
            d.resize(n, 0);
            d
        }
        // No initdata: the host must have bound nothing (all zeroes).
        (None, n) => vec![0u8; n],
    };
    if expected == field {
        Ok(())
    } else {
        Err(expected)
    }
}
