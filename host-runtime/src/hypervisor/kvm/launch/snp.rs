//! The SEV-SNP launch of an OVMF guest with kernel hashes, as QEMU and KVM do it:
//!
//! 1. the firmware image is copied to its GPA (ending at 4 GiB, in the MMIO hole) and the SEV
//!    hash table of the kernel, initrd and command line the VMM hands to the firmware is written
//!    into the `SNP_KERNEL_HASHES` page;
//! 2. `KVM_SEV_INIT2`, `KVM_SEV_SNP_LAUNCH_START`;
//! 3. every guest memory region gets a guest_memfd and is marked private;
//! 4. one `KVM_SEV_SNP_LAUNCH_UPDATE` per run of contiguous plan pages of one type, in the plan's
//!    order (firmware NORMAL pages, then the OVMF metadata sections: ZERO / SECRETS / CPUID /
//!    UNMEASURED / kernel-hashes NORMAL), the bytes read from guest memory;
//! 5. each vCPU's reset state (BSP at `0xfffffff0`, APs at the firmware's SEV-ES reset EIP,
//!    `RDX` = CPUID signature), from which KVM builds the VMSAs;
//! 6. `KVM_SEV_SNP_LAUNCH_FINISH` with HOST_DATA and, if given, the ID block and auth info.

use podvm_measured_boot::idblock::SignedIdBlock;
use podvm_measured_boot::ovmf::FIRMWARE_END_GPA;
use podvm_measured_boot::snp::{PageSource, VcpuRole};
use podvm_measured_boot::vmsa::{BSP_RESET_EIP, ResetState};
use podvm_measured_boot::{FileDigest, SnpLaunchPlan, SnpPage, SnpPageType};
use vm_memory::GuestMemoryMmap;

use super::{
    LaunchError, LaunchOps, PAGE_SIZE, Sequencer, SnpFinish, make_private, read_guest, write_guest,
};

/// SEV_FEATURES bit 0, SNPActive: KVM sets it itself for a `KVM_X86_SNP_VM`, so it is not passed
/// in `KVM_SEV_INIT2`'s `vmsa_features`.
pub const SEV_FEATURE_SNP_ACTIVE: u64 = 1;
/// The guest policy QEMU's `sev-snp-guest` uses by default (SMT allowed, ABI 0.0, bit 17 set).
pub const DEFAULT_POLICY: u64 = 0x30000;
/// GHCB protocol version SNP guests need.
pub const GHCB_VERSION: u16 = 2;

/// The kernel, initrd and command line the VMM hands to the firmware (QEMU: fw_cfg), whose
/// SHA-256 hashes go into the SEV hash table page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: Option<String>,
}

/// Launch parameters that are not part of the measurement plan.
#[derive(Debug, Clone)]
pub struct SnpLaunchOptions {
    /// Guest policy (`KVM_SEV_SNP_LAUNCH_START`), default [`DEFAULT_POLICY`].
    pub policy: u64,
    /// GHCB version for `KVM_SEV_INIT2`, default [`GHCB_VERSION`].
    pub ghcb_version: u16,
    /// The signed ID block and auth info for `KVM_SEV_SNP_LAUNCH_FINISH`, if any.
    pub id_block: Option<SignedIdBlock>,
    /// Whether the ID auth info carries the author key (`auth_key_en`).
    pub author_key: bool,
}

impl Default for SnpLaunchOptions {
    fn default() -> Self {
        SnpLaunchOptions {
            policy: DEFAULT_POLICY,
            ghcb_version: GHCB_VERSION,
            id_block: None,
            author_key: false,
        }
    }
}

/// Everything an SNP launch needs (for [`super::ConfidentialLaunch::Snp`]).
#[derive(Debug, Clone)]
pub struct SnpLaunch {
    pub plan: SnpLaunchPlan,
    pub boot: BootFiles,
    pub options: SnpLaunchOptions,
}

/// What [`launch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpLaunchReport {
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` calls issued.
    pub updates: usize,
    /// Pages they covered.
    pub pages: usize,
    /// vCPUs whose reset state was set (one VMSA each).
    pub vcpus: u32,
    /// Launch operations issued in all.
    pub steps: usize,
}

/// Runs the SNP launch of `plan` into `memory` through `ops` (see the module documentation).
///
/// `memory` must hold the firmware region ([`crate::hypervisor::kvm::memory::allocate_with_firmware`])
/// and the RAM the firmware's SEV metadata sections lie in. The first failing operation ends the
/// launch with an error naming it; nothing is issued after it.
pub fn launch(
    plan: &SnpLaunchPlan,
    boot: &BootFiles,
    options: &SnpLaunchOptions,
    memory: &GuestMemoryMmap,
    ops: &mut dyn LaunchOps,
) -> Result<SnpLaunchReport, LaunchError> {
    let inputs = plan.inputs();
    let fw = &inputs.firmware;
    if plan.ovmf_seed().is_some() {
        return Err(LaunchError::Invalid(
            "the plan was seeded with a precomputed OVMF digest, so it lists no firmware pages; build it from the firmware image".into(),
        ));
    }
    if fw.gpa() + fw.data().len() as u64 != FIRMWARE_END_GPA {
        return Err(LaunchError::Invalid(format!(
            "firmware {} does not end at 4 GiB",
            fw.name()
        )));
    }

    // 1. Load the firmware and the hash table page into (shared) guest memory.
    write_guest(memory, fw.gpa(), fw.data())?;
    for page in plan.pages() {
        if page.source == PageSource::KernelHashes {
            write_guest(memory, page.gpa, &hashes_page(plan, boot)?[..])?;
        }
    }

    let mut seq = Sequencer::new(ops);
    // 2. INIT2 and LAUNCH_START (QEMU issues both when the accelerator starts, before any
    //    memory region exists).
    let vmsa_features = inputs.guest_features & !SEV_FEATURE_SNP_ACTIVE;
    seq.issue("KVM_SEV_INIT2", None, |o| {
        o.snp_init(vmsa_features, options.ghcb_version)
    })?;
    seq.issue("KVM_SEV_SNP_LAUNCH_START", None, |o| {
        o.snp_launch_start(options.policy, [0; 16], 0)
    })?;
    // 3. Private memory: a guest_memfd per region, every range private.
    make_private(&mut seq, memory)?;

    // 4. LAUNCH_UPDATE per run of contiguous same-type pages, in plan order.
    let mut updates = 0;
    let mut pages = 0;
    for run in update_runs(plan.pages()) {
        let gpa = run.gpa;
        let bytes = read_guest(memory, gpa, run.pages * PAGE_SIZE)?;
        seq.issue("KVM_SEV_SNP_LAUNCH_UPDATE", Some(gpa), |o| {
            o.snp_launch_update(gpa / PAGE_SIZE as u64, &bytes, run.page_type)
        })?;
        updates += 1;
        pages += run.pages;
    }

    // 5. vCPU reset states (KVM builds the VMSAs from them at LAUNCH_FINISH).
    let mut vcpus = 0u32;
    for page in plan.pages() {
        let PageSource::Vmsa(role) = page.source else {
            continue;
        };
        let (index, eip) = match role {
            VcpuRole::Bsp => (0, BSP_RESET_EIP),
            VcpuRole::Ap(i) => (i, ap_reset_eip(plan)?),
        };
        let state = ResetState::at_eip(eip, inputs.vcpu_sig);
        seq.issue("KVM_SET_SREGS", None, |o| {
            o.set_vcpu_reset_state(index, &state)
        })?;
        vcpus += 1;
    }

    // 6. LAUNCH_FINISH.
    let finish = SnpFinish {
        id_block: options.id_block.as_ref().map(|s| s.id_block),
        id_auth: options.id_block.as_ref().map(|s| s.id_auth.clone()),
        auth_key_en: options.id_block.is_some() && options.author_key,
        host_data: plan.host_data().unwrap_or([0; 32]),
    };
    seq.issue("KVM_SEV_SNP_LAUNCH_FINISH", None, |o| {
        o.snp_launch_finish(&finish)
    })?;
    Ok(SnpLaunchReport {
        updates,
        pages,
        vcpus,
        steps: seq.steps(),
    })
}

fn ap_reset_eip(plan: &SnpLaunchPlan) -> Result<u32, LaunchError> {
    let fw = &plan.inputs().firmware;
    match fw.sev_es_reset_eip() {
        Ok(0) => Err(LaunchError::Invalid(format!(
            "firmware {} gives AP reset EIP 0; APs cannot start",
            fw.name()
        ))),
        Ok(eip) => Ok(eip),
        Err(e) => Err(LaunchError::Invalid(e.to_string())),
    }
}

/// The kernel-hashes page for the files actually handed to the firmware, built by
/// `podvm_measured_boot` (the plan's inputs with the digests of `boot`).
fn hashes_page(
    plan: &SnpLaunchPlan,
    boot: &BootFiles,
) -> Result<Box<[u8; PAGE_SIZE]>, LaunchError> {
    let fw = &plan.inputs().firmware;
    let Some(kernel) = &boot.kernel else {
        return Err(LaunchError::Invalid(
            "the plan measures a kernel-hashes page but the launch was given no kernel".into(),
        ));
    };
    let mut inputs = plan.inputs().clone();
    inputs.kernel = Some(FileDigest::from_bytes("kernel", kernel, false));
    inputs.initrd = boot
        .initrd
        .as_ref()
        .map(|i| FileDigest::from_bytes("initrd", i, false));
    inputs.cmdline = boot.cmdline.clone();
    let table = inputs
        .hash_table()
        .ok_or_else(|| LaunchError::Invalid("no SEV hash table without a kernel".into()))?;
    let table_gpa = fw.sev_hashes_table_gpa().ok_or_else(|| {
        LaunchError::Invalid(format!(
            "firmware {} announces no SEV hash table GPA",
            fw.name()
        ))
    })?;
    table.page(table_gpa as usize % PAGE_SIZE).ok_or_else(|| {
        LaunchError::Invalid(format!(
            "the SEV hash table at {table_gpa:#x} crosses a page boundary"
        ))
    })
}

/// A run of contiguous pages of one type: one `KVM_SEV_SNP_LAUNCH_UPDATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UpdateRun {
    gpa: u64,
    pages: usize,
    page_type: SnpPageType,
}

/// Groups the plan's non-VMSA pages, in order, into runs of contiguous same-type pages.
fn update_runs(pages: &[SnpPage]) -> Vec<UpdateRun> {
    let mut runs: Vec<UpdateRun> = Vec::new();
    for p in pages.iter().filter(|p| p.page_type != SnpPageType::Vmsa) {
        match runs.last_mut() {
            Some(r)
                if r.page_type == p.page_type && r.gpa + (r.pages * PAGE_SIZE) as u64 == p.gpa =>
            {
                r.pages += 1
            }
            _ => runs.push(UpdateRun {
                gpa: p.gpa,
                pages: 1,
                page_type: p.page_type,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_measured_boot::snp::PageSource;

    fn page(gpa: u64, page_type: SnpPageType) -> SnpPage {
        SnpPage {
            gpa,
            page_type,
            source: PageSource::None,
        }
    }

    #[test]
    fn runs_merge_only_contiguous_pages_of_one_type() {
        let pages = [
            page(0xffff_e000, SnpPageType::Normal),
            page(0xffff_f000, SnpPageType::Normal),
            page(0x8_0000, SnpPageType::Zero),
            page(0x8_1000, SnpPageType::Zero),
            page(0x8_d000, SnpPageType::Secrets),
            page(0x8_e000, SnpPageType::Cpuid),
            page(0x8_f000, SnpPageType::Zero),
            page(0x8_1000, SnpPageType::Zero),
            page(0xffff_ffff_f000, SnpPageType::Vmsa),
        ];
        let runs = update_runs(&pages);
        let got: Vec<_> = runs.iter().map(|r| (r.gpa, r.pages, r.page_type)).collect();
        assert_eq!(
            got,
            vec![
                (0xffff_e000, 2, SnpPageType::Normal),
                (0x8_0000, 2, SnpPageType::Zero),
                (0x8_d000, 1, SnpPageType::Secrets),
                (0x8_e000, 1, SnpPageType::Cpuid),
                (0x8_f000, 1, SnpPageType::Zero),
                (0x8_1000, 1, SnpPageType::Zero),
            ]
        );
    }
}
