//! Naming the input that changed: a guest reports, unauthenticated, what it can see of its own
//! launch (its kernel command line, its vCPU count). A verifier re-measures the reference launch
//! with those values; if that reproduces the measurement the TEE signed, the report is
//! authenticated by the measurement itself and the differing inputs can be named ("the kernel
//! command line differs at byte 57"); if it does not, the kernel, initrd or firmware differ.
//!
//! This needs the reference's firmware bytes (for the SEV metadata and page digests): the KBS has
//! them for podvm's emulated firmware, which it regenerates; for other firmware it says so.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::emulated_firmware;
use crate::plan::LaunchPlanBuilder;
use crate::refvals::{FileRecord, ReferenceValues};
use crate::sev_hashes::FileDigest;
use crate::vmsa::VmmType;

/// What a guest reports about its launch (`/proc/cmdline`, online vCPUs). Unauthenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchHint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
}

fn file_digest(r: &FileRecord) -> Option<FileDigest> {
    Some(FileDigest {
        name: r.name.clone(),
        size: r.size,
        sha256: hex::decode(&r.sha256).ok()?.try_into().ok()?,
        sha384: None,
    })
}

fn parse_hex_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Re-measures `reference` with the hint's command line and vCPU count. `Ok(true)`: that
/// reproduces `measured` (hex); `Err`: the reference cannot be re-measured (why).
fn remeasure(
    reference: &ReferenceValues,
    hint: &LaunchHint,
    measured: &str,
) -> Result<bool, String> {
    let inputs = &reference.inputs;
    let params = &reference.parameters;
    if params.mode != "snp" {
        return Err(format!("mode {} is not snp", params.mode));
    }
    let firmware = inputs
        .firmware
        .as_ref()
        .ok_or("the reference records no firmware")?;
    let emulated = emulated_firmware::emulated_firmware();
    if hex::encode(Sha256::digest(emulated.data())) != firmware.sha256 {
        return Err(format!(
            "the reference firmware {} is not podvm's emulated firmware, and this verifier has no copy of it",
            firmware.name
        ));
    }
    let kernel = inputs
        .kernel
        .as_ref()
        .ok_or("the reference records no kernel")?;
    let mut b = LaunchPlanBuilder::new()
        .firmware(emulated)
        .kernel_digest(file_digest(kernel).ok_or("bad kernel digest in the reference")?);
    if let Some(initrd) = &inputs.initrd {
        b = b.initrd_digest(file_digest(initrd).ok_or("bad initrd digest in the reference")?);
    }
    let cmdline = hint
        .cmdline
        .clone()
        .or_else(|| inputs.cmdline.as_ref().map(|c| c.value.clone()))
        .unwrap_or_default();
    b = b.cmdline(cmdline);
    if let Some(n) = hint.vcpus.or(params.vcpus) {
        b = b.vcpus(n);
    }
    if let Some(t) = &params.vcpu_type {
        b = b.vcpu_type(t.clone());
    } else if let Some(sig) = params.vcpu_sig.as_deref().and_then(parse_hex_u64) {
        b = b.vcpu_sig(sig as u32);
    }
    if let Some(v) = &params.vmm_type {
        b = b.vmm(v.parse::<VmmType>().map_err(|e| e.to_string())?);
    }
    if let Some(f) = params.guest_features.as_deref().and_then(parse_hex_u64) {
        b = b.guest_features(f);
    }
    let plan = b.build_snp().map_err(|e| e.to_string())?;
    Ok(plan
        .measure()
        .to_hex()
        .eq_ignore_ascii_case(measured.trim()))
}

/// A few characters around byte `at` of `s`, quoted.
fn around(s: &str, at: usize) -> String {
    let start = s[..at.min(s.len())].rfind(' ').map(|i| i + 1).unwrap_or(0);
    let end = s[at.min(s.len())..]
        .find(' ')
        .map(|i| i + at)
        .unwrap_or(s.len());
    format!("{:?}", &s[start..end])
}

/// One phrase naming what differs between `reference` and the launch that produced `measured`,
/// using the guest's `hint`; `None` if the reference cannot be re-measured here.
pub fn explain_snp_mismatch(
    reference: &ReferenceValues,
    hint: &LaunchHint,
    measured: &str,
) -> Option<String> {
    match remeasure(reference, hint, measured) {
        Err(_) => None,
        Ok(false) => Some(
            "the kernel, the initrd or the firmware differ from the reference (re-measuring the reference with the guest's command line and vCPU count does not reproduce the measurement)"
                .to_string(),
        ),
        Ok(true) => {
            let mut changed = Vec::new();
            if let (Some(got), Some(want)) = (&hint.cmdline, &reference.inputs.cmdline) {
                let want = &want.value;
                if got != want {
                    let at = got
                        .bytes()
                        .zip(want.bytes())
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    changed.push(format!(
                        "the kernel command line differs at byte {at}: {} instead of {}",
                        around(got, at),
                        around(want, at)
                    ));
                }
            }
            if let (Some(got), Some(want)) = (hint.vcpus, reference.parameters.vcpus)
                && got != want
            {
                changed.push(format!("{got} vCPUs instead of {want}"));
            }
            if changed.is_empty() {
                changed.push("no input differs (the measurement is the reference's)".into());
            }
            Some(format!(
                "the launch differs from the reference only in: {}",
                changed.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Measurement, Mode};

    fn digest(name: &str, byte: u8) -> FileDigest {
        let data = vec![byte; 4096];
        FileDigest {
            name: name.into(),
            size: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
            sha384: None,
        }
    }

    fn launch(kernel: u8, cmdline: &str, vcpus: u32) -> (ReferenceValues, String) {
        let plan = LaunchPlanBuilder::new()
            .firmware(emulated_firmware::emulated_firmware())
            .kernel_digest(digest("vmlinux", kernel))
            .initrd_digest(digest("initramfs.cpio", 7))
            .cmdline(cmdline)
            .vcpus(vcpus)
            .vcpu_type("EPYC-v4")
            .build_snp()
            .unwrap();
        let m = plan.measure();
        let r = ReferenceValues::from_launch(Mode::Snp, plan.inputs(), None, Measurement::Snp(m));
        (r, m.to_hex())
    }

    #[test]
    fn a_changed_command_line_byte_is_named() {
        let (reference, _) = launch(1, "console=ttyS0 podvm.demo=1 quiet", 1);
        let (_, measured) = launch(1, "console=ttyS0 podvm.demo=2 quiet", 1);
        let hint = LaunchHint {
            cmdline: Some("console=ttyS0 podvm.demo=2 quiet".into()),
            vcpus: Some(1),
        };
        let why = explain_snp_mismatch(&reference, &hint, &measured).unwrap();
        assert_eq!(
            why,
            "the launch differs from the reference only in: the kernel command line differs at byte 25: \"podvm.demo=2\" instead of \"podvm.demo=1\""
        );
    }

    #[test]
    fn a_changed_vcpu_count_is_named() {
        let (reference, _) = launch(1, "x", 1);
        let (_, measured) = launch(1, "x", 2);
        let hint = LaunchHint {
            cmdline: Some("x".into()),
            vcpus: Some(2),
        };
        let why = explain_snp_mismatch(&reference, &hint, &measured).unwrap();
        assert!(why.ends_with("2 vCPUs instead of 1"), "{why}");
    }

    #[test]
    fn a_lying_hint_or_another_kernel_is_not_believed() {
        let (reference, _) = launch(1, "podvm.demo=1", 1);
        // Another kernel: no hint reproduces the measurement.
        let (_, measured) = launch(2, "podvm.demo=1", 1);
        let hint = LaunchHint {
            cmdline: Some("podvm.demo=1".into()),
            vcpus: Some(1),
        };
        let why = explain_snp_mismatch(&reference, &hint, &measured).unwrap();
        assert!(
            why.starts_with("the kernel, the initrd or the firmware differ"),
            "{why}"
        );
        // A hint claiming a different command line than the one measured is not reproduced.
        let (_, measured) = launch(1, "podvm.demo=2", 1);
        let lying = LaunchHint {
            cmdline: Some("podvm.demo=3".into()),
            vcpus: Some(1),
        };
        let why = explain_snp_mismatch(&reference, &lying, &measured).unwrap();
        assert!(
            why.starts_with("the kernel, the initrd or the firmware differ"),
            "{why}"
        );
    }
}
