//! Reference-value export: every input (file name, size, SHA-256/384), every parameter, the
//! measurements, the tool version and a timestamp, as JSON; optional detached Ed25519 signature;
//! conversion to trustee RVPS reference-value form; and a line-per-difference diff.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

use crate::error::{Error, Result};
use crate::plan::{LaunchInputs, Measurement, Mode, VcpuModel};
use crate::sev_hashes::{FileDigest, cmdline_bytes};
use crate::snp::SnpMeasurement;

/// Value of the `format` field.
pub const FORMAT: &str = "podvm-reference-values/v1";

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name (last path component) as given.
    pub name: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<String>,
}

impl FileRecord {
    /// From a digest; the name keeps only the last path component.
    pub fn from_digest(d: &FileDigest) -> Self {
        FileRecord {
            name: Path::new(&d.name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| d.name.clone()),
            size: d.size,
            sha256: hex::encode(d.sha256),
            sha384: d.sha384.map(hex::encode),
        }
    }
}

/// The kernel command line as measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdlineRecord {
    pub value: String,
    /// SHA-256 of the value plus its terminating NUL (what the SEV hash table holds).
    pub sha256: String,
}

/// All inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecords {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FileRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<FileRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<FileRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<CmdlineRecord>,
}

/// All parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_sig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_features: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovmf_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrtd_order: Option<String>,
    /// SNP HOST_DATA (hex); reported, not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// The measurements, named as trustee's reference values name them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp_launch_measurement: Option<String>,
    /// SEV / SEV-ES launch digest (SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sev_launch_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_td: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr_1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr_2: Option<String>,
}

/// Producer of the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub name: String,
    pub version: String,
}

/// A reference-value export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceValues {
    pub format: String,
    pub tool: ToolRecord,
    /// RFC 3339 UTC time of the export.
    pub created: String,
    pub inputs: InputRecords,
    pub parameters: Parameters,
    pub measurements: Measurements,
    /// Free-form notes (e.g. which values are predicted rather than measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl ReferenceValues {
    /// An empty export stamped with this tool's version and the current time.
    pub fn new(mode: impl Into<String>) -> Self {
        ReferenceValues {
            format: FORMAT.into(),
            tool: ToolRecord {
                name: "podvm-measured-boot".into(),
                version: crate::TOOL_VERSION.into(),
            },
            created: now_rfc3339(),
            inputs: InputRecords::default(),
            parameters: Parameters {
                mode: mode.into(),
                ..Parameters::default()
            },
            measurements: Measurements::default(),
            notes: Vec::new(),
        }
    }

    /// Records an SEV-family launch: its inputs, parameters and measurement.
    pub fn from_launch(
        mode: Mode,
        inputs: &LaunchInputs,
        seed: Option<SnpMeasurement>,
        m: Measurement,
    ) -> Self {
        let mut r = Self::new(mode.to_string());
        let fw = inputs.firmware.data();
        r.inputs.firmware = Some(FileRecord::from_digest(&FileDigest {
            name: inputs.firmware.name().to_string(),
            size: fw.len() as u64,
            sha256: Sha256::digest(fw).into(),
            sha384: Some(Sha384::digest(fw).into()),
        }));
        if mode != Mode::SnpOvmfHash {
            r.inputs.kernel = inputs.kernel.as_ref().map(FileRecord::from_digest);
            r.inputs.initrd = inputs.initrd.as_ref().map(FileRecord::from_digest);
            if inputs.kernel.is_some() {
                let c = inputs.cmdline.clone().unwrap_or_default();
                r.inputs.cmdline = Some(CmdlineRecord {
                    sha256: hex::encode(Sha256::digest(cmdline_bytes(Some(&c)))),
                    value: c,
                });
            }
        }
        if matches!(mode, Mode::Snp | Mode::SevEs) {
            let p = &mut r.parameters;
            p.vcpus = Some(inputs.vcpus);
            p.vcpu_type = match &inputs.vcpu_model {
                Some(VcpuModel::Named(n)) => Some(n.clone()),
                _ => None,
            };
            p.vcpu_sig = inputs
                .vcpu_model
                .as_ref()
                .map(|_| format!("{:#x}", inputs.vcpu_sig));
            p.vmm_type = Some(inputs.vmm.to_string());
            if mode == Mode::Snp {
                p.guest_features = Some(format!("{:#x}", inputs.guest_features));
                p.ovmf_hash = seed.map(|s| s.to_hex());
                p.host_data = inputs.host_data.map(hex::encode);
            }
        }
        match m {
            Measurement::Snp(s) => r.measurements.snp_launch_measurement = Some(s.to_hex()),
            Measurement::Sev(d) => r.measurements.sev_launch_digest = Some(hex::encode(d)),
            Measurement::TdxMrtd(d) => r.measurements.mr_td = Some(hex::encode(d)),
        }
        r
    }

    /// Records a TDX launch: firmware, MRTD, RTMR1/RTMR2 replayed from a golden boot's event log
    /// (if given) and the predicted direct-boot events (listed in `notes`, marked predicted).
    pub fn from_tdx(
        firmware: &crate::Firmware,
        mr_td: [u8; 48],
        order: crate::tdx::tdvf::MrtdOrder,
        rtmrs: Option<&[[u8; 48]; 4]>,
        predicted: &[crate::tdx::PredictedEvent],
    ) -> Self {
        let mut r = Self::new("tdx");
        let fw = firmware.data();
        r.inputs.firmware = Some(FileRecord::from_digest(&FileDigest {
            name: firmware.name().to_string(),
            size: fw.len() as u64,
            sha256: Sha256::digest(fw).into(),
            sha384: Some(Sha384::digest(fw).into()),
        }));
        r.parameters.mrtd_order = Some(
            match order {
                crate::tdx::tdvf::MrtdOrder::SinglePass => "single-pass",
                crate::tdx::tdvf::MrtdOrder::TwoPass => "two-pass",
            }
            .into(),
        );
        r.measurements.mr_td = Some(hex::encode(mr_td));
        if let Some(t) = rtmrs {
            r.measurements.rtmr_1 = Some(hex::encode(t[1]));
            r.measurements.rtmr_2 = Some(hex::encode(t[2]));
            r.notes
                .push("rtmr_1/rtmr_2 replayed from the given CC event log".into());
        }
        for e in predicted {
            r.notes.push(format!(
                "predicted RTMR{} event: {} sha384 {}",
                e.rtmr,
                e.description,
                hex::encode(e.sha384)
            ));
        }
        r
    }

    /// Pretty JSON (the bytes that are signed).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses an export; `name` appears in errors.
    pub fn from_json(name: &str, data: &[u8]) -> Result<Self> {
        let r: ReferenceValues = serde_json::from_slice(data).map_err(|e| Error::RefValues {
            name: name.into(),
            detail: format!("not a podvm reference-value export: {e}"),
        })?;
        if r.format != FORMAT {
            return Err(Error::RefValues {
                name: name.into(),
                detail: format!("format '{}' is not '{FORMAT}'", r.format),
            });
        }
        Ok(r)
    }

    /// Reads an export file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&path.display().to_string(), &data)
    }

    /// trustee RVPS reference-value form: reference-value name → accepted hex values.
    pub fn to_rvps(&self) -> BTreeMap<String, Vec<String>> {
        let m = &self.measurements;
        [
            ("snp_launch_measurement", &m.snp_launch_measurement),
            ("mr_td", &m.mr_td),
            ("rtmr_1", &m.rtmr_1),
            ("rtmr_2", &m.rtmr_2),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), vec![v.clone()])))
        .collect()
    }

    /// All measurement values with their names.
    pub fn measurement_values(&self) -> Vec<(&'static str, &str)> {
        let m = &self.measurements;
        [
            ("snp_launch_measurement", &m.snp_launch_measurement),
            ("sev_launch_digest", &m.sev_launch_digest),
            ("mr_td", &m.mr_td),
            ("rtmr_1", &m.rtmr_1),
            ("rtmr_2", &m.rtmr_2),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

fn key_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Key {
        name: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Loads an Ed25519 signing key: PKCS#8 PEM, 32 raw bytes, or 64 hex digits.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Ok(text) = std::str::from_utf8(&data) {
        if text.contains("-----BEGIN") {
            return SigningKey::from_pkcs8_pem(text)
                .map_err(|e| key_err(path, format!("not an Ed25519 PKCS#8 PEM private key: {e}")));
        }
        if let Ok(b) = hex::decode(text.trim())
            && let Ok(seed) = <[u8; 32]>::try_from(b.as_slice())
        {
            return Ok(SigningKey::from_bytes(&seed));
        }
    }
    let seed: [u8; 32] = data.as_slice().try_into().map_err(|_| {
        key_err(
            path,
            "expected an Ed25519 PKCS#8 PEM private key, 32 raw bytes or 64 hex digits",
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads an Ed25519 public key: SPKI PEM, 32 raw bytes, or 64 hex digits.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes: Vec<u8> = match std::str::from_utf8(&data) {
        Ok(t) if t.contains("-----BEGIN") => {
            return VerifyingKey::from_public_key_pem(t)
                .map_err(|e| key_err(path, format!("not an Ed25519 public key PEM: {e}")));
        }
        Ok(t) => hex::decode(t.trim()).unwrap_or(data.clone()),
        Err(_) => data.clone(),
    };
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        key_err(
            path,
            "expected an Ed25519 SPKI PEM, 32 raw bytes or 64 hex digits",
        )
    })?;
    VerifyingKey::from_bytes(&raw).map_err(|e| key_err(path, format!("invalid Ed25519 key: {e}")))
}

/// Detached signature over the exact export bytes, as one line of base64.
pub fn sign(export: &[u8], key: &SigningKey) -> String {
    let sig = key.sign(export);
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()) + "\n"
}

/// Verifies a detached signature produced by [`sign`].
pub fn verify(export: &[u8], signature: &str, key: &VerifyingKey) -> Result<()> {
    let bad = |detail: String| Error::RefValues {
        name: "signature".into(),
        detail,
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let raw: [u8; 64] = raw
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("{} bytes, expected 64", raw.len())))?;
    key.verify(export, &ed25519_dalek::Signature::from_bytes(&raw))
        .map_err(|_| {
            bad("does not verify: the export was modified or signed with another key".into())
        })
}

fn short(h: &str) -> String {
    if h.chars().count() > 12 {
        format!("{}..", h.chars().take(12).collect::<String>())
    } else {
        h.to_string()
    }
}

fn opt_str(v: Option<&str>) -> &str {
    v.unwrap_or("(none)")
}

fn diff_file(out: &mut Vec<String>, what: &str, a: &Option<FileRecord>, b: &Option<FileRecord>) {
    match (a, b) {
        (None, None) => {}
        (Some(a), None) => out.push(format!("{what} {} → (none)", a.name)),
        (None, Some(b)) => out.push(format!("{what} (none) → {}", b.name)),
        (Some(a), Some(b)) => {
            if a.name != b.name {
                out.push(format!("{what} name {} → {}", a.name, b.name));
            }
            if a.size != b.size {
                out.push(format!("{what} size {} → {}", a.size, b.size));
            }
            if a.sha256 != b.sha256 {
                out.push(format!(
                    "{what} sha256 {} → {}",
                    short(&a.sha256),
                    short(&b.sha256)
                ));
            }
        }
    }
}

/// One line per difference between two exports (empty when the launches are the same).
pub fn diff(a: &ReferenceValues, b: &ReferenceValues) -> Vec<String> {
    let mut out = Vec::new();
    let (ai, bi) = (&a.inputs, &b.inputs);
    diff_file(&mut out, "firmware", &ai.firmware, &bi.firmware);
    diff_file(&mut out, "kernel", &ai.kernel, &bi.kernel);
    diff_file(&mut out, "initrd", &ai.initrd, &bi.initrd);
    match (&ai.cmdline, &bi.cmdline) {
        (Some(x), Some(y)) if x.value != y.value => {
            let at = x
                .value
                .bytes()
                .zip(y.value.bytes())
                .position(|(p, q)| p != q)
                .unwrap_or(x.value.len().min(y.value.len()));
            out.push(format!(
                "cmdline differs at byte {at} (lengths {} and {})",
                x.value.len(),
                y.value.len()
            ));
        }
        (Some(_), None) => out.push("cmdline given → (none)".into()),
        (None, Some(_)) => out.push("cmdline (none) → given".into()),
        _ => {}
    }
    let (ap, bp) = (&a.parameters, &b.parameters);
    let vcpus = |p: &Parameters| p.vcpus.map(|v| v.to_string());
    let params: [(&str, Option<String>, Option<String>); 9] = [
        ("mode", Some(ap.mode.clone()), Some(bp.mode.clone())),
        ("vcpus", vcpus(ap), vcpus(bp)),
        ("vcpu_type", ap.vcpu_type.clone(), bp.vcpu_type.clone()),
        ("vcpu_sig", ap.vcpu_sig.clone(), bp.vcpu_sig.clone()),
        ("vmm_type", ap.vmm_type.clone(), bp.vmm_type.clone()),
        (
            "guest_features",
            ap.guest_features.clone(),
            bp.guest_features.clone(),
        ),
        ("ovmf_hash", ap.ovmf_hash.clone(), bp.ovmf_hash.clone()),
        ("mrtd_order", ap.mrtd_order.clone(), bp.mrtd_order.clone()),
        ("host_data", ap.host_data.clone(), bp.host_data.clone()),
    ];
    for (name, x, y) in params {
        if x != y {
            out.push(format!(
                "{name} {} → {}",
                opt_str(x.as_deref()),
                opt_str(y.as_deref())
            ));
        }
    }
    let (am, bm) = (a.measurement_values(), b.measurement_values());
    for (name, x) in &am {
        let y = bm.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        if Some(*x) != y {
            out.push(format!("{name} {} → {}", short(x), short(opt_str(y))));
        }
    }
    for (name, y) in &bm {
        if !am.iter().any(|(n, _)| n == name) {
            out.push(format!("{name} (none) → {}", short(y)));
        }
    }
    out
}

/// Says which export (if any) a measurement taken from a report matches.
pub fn explain_measurement(a: &ReferenceValues, b: &ReferenceValues, measured: &str) -> String {
    let m = measured.trim().to_ascii_lowercase();
    let hit = |r: &ReferenceValues| {
        r.measurement_values()
            .into_iter()
            .find(|(_, v)| v.eq_ignore_ascii_case(&m))
            .map(|(n, _)| n)
    };
    match (hit(a), hit(b)) {
        (Some(n), Some(_)) => format!("measurement {} matches both A and B ({n})", short(&m)),
        (Some(n), None) => format!("measurement {} matches A ({n})", short(&m)),
        (None, Some(n)) => format!("measurement {} matches B ({n})", short(&m)),
        (None, None) => format!(
            "measurement {} matches neither A nor B: the launch used other inputs or parameters than both exports",
            short(&m)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Firmware;
    use crate::plan::LaunchPlanBuilder;
    use crate::testdata;

    fn export(vcpus: u32, cmdline: &str, kernel: &[u8]) -> ReferenceValues {
        let fw = Firmware::from_path(testdata::AMDSEV_SUFFIX).unwrap();
        let plan = LaunchPlanBuilder::new()
            .firmware(fw)
            .kernel_digest(FileDigest::from_bytes("/boot/vmlinuz", kernel, true))
            .cmdline(cmdline)
            .vcpus(vcpus)
            .vcpu_type("EPYC-Milan")
            .host_data([vcpus as u8; 32])
            .build()
            .unwrap();
        ReferenceValues::from_launch(
            Mode::Snp,
            plan.inputs(),
            None,
            Measurement::Snp(plan.measure()),
        )
    }

    #[test]
    fn export_round_trips_and_records_everything() {
        let r = export(2, "console=ttyS0", b"kernel");
        let back = ReferenceValues::from_json("x", r.to_json().as_bytes()).unwrap();
        assert_eq!(back, r);
        let k = r.inputs.kernel.as_ref().unwrap();
        assert_eq!(k.name, "vmlinuz");
        assert_eq!(k.size, 6);
        assert_eq!(k.sha256, hex::encode(Sha256::digest(b"kernel")));
        assert_eq!(
            k.sha384.as_deref(),
            Some(hex::encode(Sha384::digest(b"kernel")).as_str())
        );
        assert_eq!(r.parameters.vcpu_sig.as_deref(), Some("0xa00f11"));
        assert_eq!(r.parameters.guest_features.as_deref(), Some("0x1"));
        assert_eq!(r.parameters.host_data, Some("02".repeat(32)));
        assert!(r.created.ends_with('Z'), "{}", r.created);
        let rvps = r.to_rvps();
        assert_eq!(
            rvps["snp_launch_measurement"],
            vec![r.measurements.snp_launch_measurement.clone().unwrap()]
        );
        assert!(
            ReferenceValues::from_json("bad.json", b"{}")
                .unwrap_err()
                .to_string()
                .contains("bad.json")
        );
    }

    #[test]
    fn diff_names_each_change() {
        let a = export(1, "console=ttyS0 quiet", b"kernel-a");
        let b = export(4, "console=ttyS0 debug", b"kernel-b");
        let d = diff(&a, &b);
        assert!(d.contains(&"vcpus 1 → 4".to_string()), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("host_data 0101")), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("kernel sha256 ")), "{d:?}");
        assert!(
            d.contains(&"cmdline differs at byte 14 (lengths 19 and 19)".to_string()),
            "{d:?}"
        );
        assert!(
            d.iter().any(|l| l.starts_with("snp_launch_measurement ")),
            "{d:?}"
        );
        assert!(diff(&a, &a).is_empty());
        let m = a.measurements.snp_launch_measurement.clone().unwrap();
        assert!(explain_measurement(&a, &b, &m).contains("matches A"));
        assert!(explain_measurement(&a, &b, &"00".repeat(48)).contains("neither"));
    }

    #[test]
    fn signature_verifies_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        std::fs::write(&key_path, hex::encode([7u8; 32])).unwrap();
        let key = load_signing_key(&key_path).unwrap();
        let pub_path = dir.path().join("k.pub");
        std::fs::write(&pub_path, key.verifying_key().to_bytes()).unwrap();
        let vk = load_verifying_key(&pub_path).unwrap();
        let json = export(1, "", b"k").to_json();
        let sig = sign(json.as_bytes(), &key);
        verify(json.as_bytes(), &sig, &vk).unwrap();
        let tampered = json.replace("\"vcpus\": 1", "\"vcpus\": 2");
        assert_ne!(tampered, json);
        assert!(verify(tampered.as_bytes(), &sig, &vk).is_err());
        std::fs::write(&key_path, b"short").unwrap();
        assert!(
            load_signing_key(&key_path)
                .unwrap_err()
                .to_string()
                .contains("Ed25519")
        );
    }
}
