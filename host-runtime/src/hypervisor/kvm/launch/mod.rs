//! Confidential launch of a KVM guest: the SEV-SNP and TDX launch sequences, issued through
//! [`LaunchOps`], a trait whose methods mirror the kernel uAPI one for one.
//!
//! * [`KvmLaunchOps`] issues the real ioctls (`KVM_MEMORY_ENCRYPT_OP` with `KVM_SEV_*` /
//!   `KVM_TDX_*` commands, guest_memfd, memory attributes) on a VM created with
//!   `KVM_X86_SNP_VM` / `KVM_X86_TDX_VM`. It needs SEV-SNP or TDX hardware.
//! * [`RecordingLaunchOps`] records every call with its arguments and a copy of the bytes of
//!   every page it would encrypt and measure, and can fail at a chosen step.
//! * [`snp::launch`] and [`tdx::launch`] drive a launch through either; [`replay_snp`] and
//!   [`replay_tdx`] fold a recording into the launch digest / MRTD with
//!   `podvm_measured_boot`'s primitives, so a recorded launch can be compared byte for byte with
//!   what `podvm measure` predicts.

mod kvm_ops;
pub mod record;
pub mod snp;
pub mod tdx;

use std::fmt;

use podvm_measured_boot::SnpPageType;
use podvm_measured_boot::vmsa::ResetState;

pub use kvm_ops::{KvmLaunchOps, SEV_DEVICE, supported_vm_types};
pub use record::{LaunchCall, RecordingLaunchOps, ReplayError, replay_snp, replay_tdx};
pub use snp::{BootFiles, SnpLaunch, SnpLaunchOptions};
pub use tdx::{TdxInitVm, TdxLaunch};

/// Guest page size of every launch operation.
pub const PAGE_SIZE: usize = 4096;

/// One guest memory region to back with private memory: a guest_memfd bound to a KVM slot whose
/// shared half is the VMM's mapping at `host_addr` (`KVM_SET_USER_MEMORY_REGION2` with
/// `KVM_MEM_GUEST_MEMFD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateRegion {
    pub slot: u32,
    pub gpa: u64,
    pub size: u64,
    /// Host virtual address of the shared (VMM-visible) mapping; not recorded (not
    /// deterministic, and not part of any measurement).
    pub host_addr: u64,
}

/// Arguments of `KVM_SEV_SNP_LAUNCH_FINISH` (`struct kvm_sev_snp_launch_finish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpFinish {
    /// The 96-byte ID block, when `id_block_en`.
    pub id_block: Option<[u8; podvm_measured_boot::idblock::ID_BLOCK_SIZE]>,
    /// The 4096-byte ID authentication information, with the ID block.
    pub id_auth: Option<Box<[u8; podvm_measured_boot::idblock::ID_AUTH_SIZE]>>,
    /// Whether `id_auth` carries an author key (`auth_key_en`).
    pub auth_key_en: bool,
    /// HOST_DATA, reported in every attestation report.
    pub host_data: [u8; 32],
}

impl SnpFinish {
    /// `id_block_en`: an ID block is given.
    pub fn id_block_en(&self) -> bool {
        self.id_block.is_some()
    }
}

/// Why one launch operation failed (the errno and, where the kernel reports one, the PSP /
/// TDX-module status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure(pub String);

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result of one [`LaunchOps`] call.
pub type OpResult = std::result::Result<(), OpFailure>;

/// The confidential-launch ioctls, one method per kernel operation, arguments as in the uAPI
/// (Linux `arch/x86/include/uapi/asm/kvm.h`, 6.16). Byte sources are the VMM's own guest memory:
/// that is what KVM copies into private memory and what the PSP / TDX module measures.
pub trait LaunchOps {
    /// `KVM_CREATE_GUEST_MEMFD` + `KVM_SET_USER_MEMORY_REGION2` (`KVM_MEM_GUEST_MEMFD`).
    fn add_private_region(&mut self, region: &PrivateRegion) -> OpResult;
    /// `KVM_SET_MEMORY_ATTRIBUTES` with `KVM_MEMORY_ATTRIBUTE_PRIVATE` on `gpa..gpa + size`.
    fn set_memory_private(&mut self, gpa: u64, size: u64) -> OpResult;

    /// `KVM_SEV_INIT2` (`struct kvm_sev_init`).
    fn snp_init(&mut self, vmsa_features: u64, ghcb_version: u16) -> OpResult;
    /// `KVM_SEV_SNP_LAUNCH_START` (`struct kvm_sev_snp_launch_start`).
    fn snp_launch_start(&mut self, policy: u64, gosvw: [u8; 16], flags: u16) -> OpResult;
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of `source.len() / 4096` pages from `gfn_start`; `source` is
    /// the `uaddr`/`len` pair.
    fn snp_launch_update(
        &mut self,
        gfn_start: u64,
        source: &[u8],
        page_type: SnpPageType,
    ) -> OpResult;
    /// `KVM_SET_SREGS`/`KVM_SET_REGS` of vCPU `vcpu`'s reset state (creating the vCPU if
    /// needed); KVM turns it into the vCPU's VMSA at `KVM_SEV_SNP_LAUNCH_FINISH`.
    fn set_vcpu_reset_state(&mut self, vcpu: u32, state: &ResetState) -> OpResult;
    /// `KVM_SEV_SNP_LAUNCH_FINISH` (`struct kvm_sev_snp_launch_finish`).
    fn snp_launch_finish(&mut self, finish: &SnpFinish) -> OpResult;

    /// `KVM_TDX_INIT_VM` (`struct kvm_tdx_init_vm`).
    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> OpResult;
    /// `KVM_TDX_INIT_VCPU` on vCPU `vcpu` (creating it if needed); `rcx` is the `data` field,
    /// the vCPU's initial RCX (the TD HOB address).
    fn tdx_init_vcpu(&mut self, vcpu: u32, rcx: u64) -> OpResult;
    /// `KVM_TDX_INIT_MEM_REGION` of `source.len() / 4096` pages at `gpa`, with
    /// `KVM_TDX_MEASURE_MEMORY_REGION` when `measure`.
    fn tdx_init_mem_region(&mut self, gpa: u64, source: &[u8], measure: bool) -> OpResult;
    /// `KVM_TDX_FINALIZE_VM`.
    fn tdx_finalize_vm(&mut self) -> OpResult;
}

/// Why a confidential launch failed. One line each, naming the step, the ioctl and the GPA.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A launch operation failed; nothing was issued after it.
    #[error("{ioctl} failed at launch step {step}{}: {source}", gpa_suffix(*.gpa))]
    Op {
        step: usize,
        ioctl: &'static str,
        gpa: Option<u64>,
        #[source]
        source: OpFailure,
    },
    /// The launch inputs are inconsistent (plan, firmware, boot files, guest memory).
    #[error("cannot launch: {0}")]
    Invalid(String),
    /// A page the launch loads is not in guest memory.
    #[error("cannot {what} guest memory at GPA {gpa:#x} (+{len:#x}): {reason}")]
    GuestMemory {
        what: &'static str,
        gpa: u64,
        len: usize,
        reason: String,
    },
    /// This host cannot run such a launch.
    #[error("{0}")]
    Unsupported(String),
}

impl std::error::Error for OpFailure {}

fn gpa_suffix(gpa: Option<u64>) -> String {
    gpa.map(|g| format!(" (GPA {g:#x})")).unwrap_or_default()
}

/// Issues [`LaunchOps`] calls, numbering them (1-based) and turning a failure into
/// [`LaunchError::Op`].
pub(crate) struct Sequencer<'a> {
    ops: &'a mut dyn LaunchOps,
    step: usize,
}

impl<'a> Sequencer<'a> {
    pub(crate) fn new(ops: &'a mut dyn LaunchOps) -> Self {
        Sequencer { ops, step: 0 }
    }

    pub(crate) fn issue(
        &mut self,
        ioctl: &'static str,
        gpa: Option<u64>,
        op: impl FnOnce(&mut dyn LaunchOps) -> OpResult,
    ) -> Result<(), LaunchError> {
        self.step += 1;
        op(&mut *self.ops).map_err(|source| LaunchError::Op {
            step: self.step,
            ioctl,
            gpa,
            source,
        })
    }

    pub(crate) fn steps(&self) -> usize {
        self.step
    }
}

/// Backs every region of `memory` with private memory and marks it private, in address order.
pub(crate) fn make_private(
    seq: &mut Sequencer<'_>,
    memory: &vm_memory::GuestMemoryMmap,
) -> Result<(), LaunchError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for (slot, region) in memory.iter().enumerate() {
        let gpa = region.start_addr().0;
        let size = region.len();
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| LaunchError::GuestMemory {
                what: "map",
                gpa,
                len: size as usize,
                reason: e.to_string(),
            })? as u64;
        let r = PrivateRegion {
            slot: slot as u32,
            gpa,
            size,
            host_addr,
        };
        seq.issue("KVM_SET_USER_MEMORY_REGION2", Some(gpa), |o| {
            o.add_private_region(&r)
        })?;
        seq.issue("KVM_SET_MEMORY_ATTRIBUTES", Some(gpa), |o| {
            o.set_memory_private(gpa, size)
        })?;
    }
    Ok(())
}

/// Reads `len` bytes of guest memory at `gpa` (what an update passes to KVM).
pub(crate) fn read_guest(
    memory: &vm_memory::GuestMemoryMmap,
    gpa: u64,
    len: usize,
) -> Result<Vec<u8>, LaunchError> {
    use vm_memory::Bytes;
    let mut buf = vec![0u8; len];
    memory
        .read_slice(&mut buf, vm_memory::GuestAddress(gpa))
        .map_err(|e| LaunchError::GuestMemory {
            what: "read",
            gpa,
            len,
            reason: e.to_string(),
        })?;
    Ok(buf)
}

/// Writes `bytes` into guest memory at `gpa`.
pub(crate) fn write_guest(
    memory: &vm_memory::GuestMemoryMmap,
    gpa: u64,
    bytes: &[u8],
) -> Result<(), LaunchError> {
    use vm_memory::Bytes;
    memory
        .write_slice(bytes, vm_memory::GuestAddress(gpa))
        .map_err(|e| LaunchError::GuestMemory {
            what: "write",
            gpa,
            len: bytes.len(),
            reason: e.to_string(),
        })
}

/// What a confidential [`super::KvmVmBuilder`] launches.
#[derive(Debug, Clone)]
pub enum ConfidentialLaunch {
    /// An SEV-SNP guest (`KVM_X86_SNP_VM`).
    Snp(Box<SnpLaunch>),
    /// A TDX guest (`KVM_X86_TDX_VM`).
    Tdx(Box<TdxLaunch>),
}

impl ConfidentialLaunch {
    /// The KVM VM type.
    pub fn vm_type(&self) -> u32 {
        match self {
            ConfidentialLaunch::Snp(_) => kvm_bindings::KVM_X86_SNP_VM,
            ConfidentialLaunch::Tdx(_) => kvm_bindings::KVM_X86_TDX_VM,
        }
    }

    /// The technology, as messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            ConfidentialLaunch::Snp(_) => "SEV-SNP",
            ConfidentialLaunch::Tdx(_) => "TDX",
        }
    }

    /// The `KVM_X86_*_VM` constant name.
    pub fn vm_type_name(&self) -> &'static str {
        match self {
            ConfidentialLaunch::Snp(_) => "KVM_X86_SNP_VM",
            ConfidentialLaunch::Tdx(_) => "KVM_X86_TDX_VM",
        }
    }

    /// Refuses a host whose `KVM_CAP_VM_TYPES` bitmask (`vm_types`) lacks this launch's type.
    pub fn check_host(&self, vm_types: u64, device: &str) -> Result<(), LaunchError> {
        if vm_types & (1u64 << self.vm_type()) != 0 {
            return Ok(());
        }
        Err(LaunchError::Unsupported(format!(
            "{} launch needs a host with {} enabled in KVM (KVM_CAP_VM_TYPES lacks {}): {device} here offers VM types {}",
            self.name(),
            self.name(),
            self.vm_type_name(),
            describe_vm_types(vm_types)
        )))
    }
}

/// Names the VM types of a `KVM_CAP_VM_TYPES` bitmask, e.g. `{KVM_X86_DEFAULT_VM}`.
pub fn describe_vm_types(vm_types: u64) -> String {
    const NAMES: [&str; 6] = [
        "KVM_X86_DEFAULT_VM",
        "KVM_X86_SW_PROTECTED_VM",
        "KVM_X86_SEV_VM",
        "KVM_X86_SEV_ES_VM",
        "KVM_X86_SNP_VM",
        "KVM_X86_TDX_VM",
    ];
    if vm_types == 0 {
        return "none (KVM_CAP_VM_TYPES unsupported, i.e. only the default VM type)".into();
    }
    let names: Vec<String> = (0..64)
        .filter(|b| vm_types & (1u64 << b) != 0)
        .map(|b| {
            NAMES
                .get(b)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("type {b}"))
        })
        .collect();
    format!("{{{}}}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_error_names_ioctl_step_and_gpa() {
        let e = LaunchError::Op {
            step: 7,
            ioctl: "KVM_SEV_SNP_LAUNCH_UPDATE",
            gpa: Some(0xffff_3000),
            source: OpFailure("EIO, PSP status 0x16".into()),
        };
        assert_eq!(
            e.to_string(),
            "KVM_SEV_SNP_LAUNCH_UPDATE failed at launch step 7 (GPA 0xffff3000): EIO, PSP status 0x16"
        );
        let e = LaunchError::Op {
            step: 1,
            ioctl: "KVM_TDX_FINALIZE_VM",
            gpa: None,
            source: OpFailure("EBUSY".into()),
        };
        assert_eq!(
            e.to_string(),
            "KVM_TDX_FINALIZE_VM failed at launch step 1: EBUSY"
        );
    }

    #[test]
    fn vm_types_are_named() {
        assert_eq!(describe_vm_types(0b1), "{KVM_X86_DEFAULT_VM}");
        assert_eq!(
            describe_vm_types(0b11_0001),
            "{KVM_X86_DEFAULT_VM, KVM_X86_SNP_VM, KVM_X86_TDX_VM}"
        );
        assert!(describe_vm_types(0).starts_with("none"));
        assert!(describe_vm_types(1 << 9).contains("type 9"));
    }
}
