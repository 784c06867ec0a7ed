//! The confidential side of a launch: which TEE, the kernel command-line words that tell the agent
//! where its initdata is and how to attest, and the launch measurement the TEE will report.
//!
//! For `snp-emulated` the launch is a direct boot (microvm, PVH vmlinux, initramfs, command line);
//! its MEASUREMENT is the SEV-SNP launch digest of exactly those inputs, computed by
//! `podvm-measured-boot` over the emulated firmware image that `podvm image build-guest` writes
//! (`firmware-snp-emulated.fd`: the OVMF metadata layout with kernel hashes; it is never executed).
//! `podvm measure --mode snp --ovmf <guest>/firmware-snp-emulated.fd --kernel <guest>/vmlinux
//! --initrd <guest>/initramfs.cpio --append "<cmdline>" --vcpus N --vcpu-type EPYC-v4` prints the
//! same digest, so reference values come from the same tool auditors use.

use std::path::{Path, PathBuf};

use podvm_measured_boot::refvals::ReferenceValues;
use podvm_measured_boot::{Firmware, LaunchPlanBuilder, Measurement, Mode, SnpMeasurement};

use crate::VmError;
use crate::hypervisor::VmSpec;

/// The vCPU model an emulated SNP launch is measured with (QEMU's `EPYC-v4`).
pub const EMULATED_VCPU_TYPE: &str = "EPYC-v4";
/// The guest policy of emulated SNP launches: SMT allowed, no debug, no migration agent.
pub const EMULATED_POLICY: u64 = 0x30000;
/// The emulated firmware's file name in the guest image directory.
pub const EMULATED_FIRMWARE: &str = "firmware-snp-emulated.fd";
/// The kernel parameter that tells the agent how it attests (`snp-emulated`).
pub const TEE_PARAM: &str = "podvm.tee";
/// The kernel parameter that names the initdata disk.
pub const INITDATA_PARAM: &str = "podvm.initdata";
/// The guest device of the initdata disk (the first virtio-blk disk).
pub const INITDATA_DEVICE: &str = "/dev/vda";

/// The TEE a pod runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeMode {
    /// No TEE: the host is trusted (development, non-confidential pods).
    None,
    /// SEV-SNP evidence in the real formats, signed by an emulated PSP the host holds (CI; not
    /// confidential).
    SnpEmulated,
    /// AMD SEV-SNP (needs SNP hardware, QEMU ≥ 9.1, an OVMF with kernel hashes).
    Snp,
    /// Intel TDX (needs TDX hardware, QEMU ≥ 10.1, TDVF).
    Tdx,
}

impl TeeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TeeMode::None => "none",
            TeeMode::SnpEmulated => "snp-emulated",
            TeeMode::Snp => "snp",
            TeeMode::Tdx => "tdx",
        }
    }
}

impl std::str::FromStr for TeeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            TeeMode::None,
            TeeMode::SnpEmulated,
            TeeMode::Snp,
            TeeMode::Tdx,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("unknown TEE mode {s:?} (one of none, snp-emulated, snp, tdx)"))
    }
}

/// What a confidential launch needs besides the VM itself.
#[derive(Debug, Clone)]
pub enum TeeLaunch {
    None,
    /// The emulated PSP's key directory and the emulated firmware to measure with.
    SnpEmulated {
        psp_dir: PathBuf,
        firmware: PathBuf,
    },
}

impl TeeLaunch {
    pub fn mode(&self) -> TeeMode {
        match self {
            TeeLaunch::None => TeeMode::None,
            TeeLaunch::SnpEmulated { .. } => TeeMode::SnpEmulated,
        }
    }
}

/// The kernel command-line words a launch adds for `tee` and an initdata disk.
pub fn cmdline_words(tee: TeeMode, has_initdata: bool) -> Vec<String> {
    let mut words = Vec::new();
    if has_initdata {
        words.push(format!("{INITDATA_PARAM}={INITDATA_DEVICE}"));
    }
    if tee == TeeMode::SnpEmulated {
        words.push(format!("{TEE_PARAM}={}", tee.as_str()));
    }
    words
}

/// The SEV-SNP launch measurement of `spec` booted with `firmware` (emulated SNP), and the
/// reference-value export recording its inputs. `host_data` is recorded, not measured.
pub fn emulated_snp_reference(
    spec: &VmSpec,
    firmware: &Path,
    host_data: [u8; 32],
) -> Result<(SnpMeasurement, ReferenceValues), VmError> {
    let fw = Firmware::from_path(firmware).map_err(|e| {
        VmError::InvalidConfig(format!(
            "the emulated SNP firmware {} is unusable: {e}; run `podvm image build-guest`",
            firmware.display()
        ))
    })?;
    let plan = LaunchPlanBuilder::new()
        .firmware(fw)
        .kernel_file(&spec.kernel)
        .initrd_file(&spec.initrd)
        .cmdline(spec.cmdline.clone())
        .vcpus(spec.vcpus)
        .vcpu_type(EMULATED_VCPU_TYPE)
        .host_data(host_data)
        .with_sha384(true)
        .build_snp()
        .map_err(|e| VmError::InvalidConfig(format!("measure the emulated SNP launch: {e}")))?;
    let digest = plan.measure();
    let refvals =
        ReferenceValues::from_launch(Mode::Snp, plan.inputs(), None, Measurement::Snp(digest));
    Ok((digest, refvals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words_name_the_initdata_disk_and_the_emulated_tee() {
        assert!(cmdline_words(TeeMode::None, false).is_empty());
        assert_eq!(
            cmdline_words(TeeMode::SnpEmulated, true),
            ["podvm.initdata=/dev/vda", "podvm.tee=snp-emulated"]
        );
        assert_eq!(
            cmdline_words(TeeMode::None, true),
            ["podvm.initdata=/dev/vda"]
        );
    }
}
