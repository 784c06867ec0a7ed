//! The SEV-SNP and TDX launch sequences of the built-in KVM monitor, proven without hardware:
//! the launch runs through `RecordingLaunchOps`, and the recording replays to exactly the digest
//! the real `podvm measure` binary prints for the same inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use podvm_host_runtime::hypervisor::kvm::launch::{
    self, BootFiles, ConfidentialLaunch, LaunchCall, LaunchError, RecordingLaunchOps, SnpLaunch,
    SnpLaunchOptions, TdxInitVm, TdxLaunch, replay_snp, replay_tdx,
};
use podvm_host_runtime::hypervisor::kvm::{KvmVm, KvmVmError, memory};
use podvm_measured_boot::emulated_firmware::emulated_firmware_bytes;
use podvm_measured_boot::idblock::{IdBlock, SignedIdBlock};
use podvm_measured_boot::ovmf::{
    FooterEntry, PAGE_SIZE, TDX_METADATA_OFFSET_GUID, encode_footer_table,
};
use podvm_measured_boot::snp::PageSource;
use podvm_measured_boot::tdx::tdvf::{
    ATTR_MR_EXTEND, ATTR_PAGE_AUG, TdvfDescriptor, TdvfSection, TdvfSectionType,
};
use podvm_measured_boot::{Firmware, SnpLaunchPlan, SnpPageType};

const AMDSEV_SUFFIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
);
const HOST_DATA: [u8; 32] = [0x5a; 32];
const CMDLINE: &str = "console=ttyS0 podvm.test=1";
const MEMORY_MIB: u64 = 16;

struct Inputs {
    _dir: tempfile::TempDir,
    firmware: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes the firmware, a kernel and an initrd to a temporary directory.
fn inputs(firmware: &[u8]) -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("OVMF.fd");
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&fw, firmware).unwrap();
    std::fs::write(&kernel, pattern(300_000, 7)).unwrap();
    std::fs::write(&initrd, pattern(70_001, 99)).unwrap();
    Inputs {
        _dir: dir,
        firmware: fw,
        kernel,
        initrd,
    }
}

fn amdsev_suffix() -> Vec<u8> {
    std::fs::read(AMDSEV_SUFFIX).unwrap_or_else(|e| {
        panic!("the shared AmdSev OVMF vector {AMDSEV_SUFFIX} is part of the test data: {e}")
    })
}

/// What `podvm measure` prints (hex), run as the real binary.
fn podvm_measure(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_podvm"))
        .arg("measure")
        .args(args)
        .output()
        .expect("run podvm");
    assert!(
        out.status.success(),
        "podvm measure {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn podvm_measure_snp(i: &Inputs, vcpus: u32) -> String {
    let vcpus = vcpus.to_string();
    let host_data = hex::encode(HOST_DATA);
    podvm_measure(&[
        "--mode",
        "snp",
        "--ovmf",
        path(&i.firmware),
        "--kernel",
        path(&i.kernel),
        "--initrd",
        path(&i.initrd),
        "--append",
        CMDLINE,
        "--vcpus",
        &vcpus,
        "--vcpu-type",
        "EPYC-Milan",
        "--host-data",
        &host_data,
        "--output-format",
        "hex",
    ])
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn plan(i: &Inputs, vcpus: u32) -> SnpLaunchPlan {
    SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(&i.firmware).unwrap())
        .kernel_file(&i.kernel)
        .initrd_file(&i.initrd)
        .cmdline(CMDLINE)
        .vcpus(vcpus)
        .vcpu_type("EPYC-Milan")
        .host_data(HOST_DATA)
        .build()
        .unwrap()
}

fn boot_files(i: &Inputs) -> BootFiles {
    BootFiles {
        kernel: Some(std::fs::read(&i.kernel).unwrap()),
        initrd: Some(std::fs::read(&i.initrd).unwrap()),
        cmdline: Some(CMDLINE.into()),
    }
}

/// Runs the SNP launch of `plan` into fresh guest memory through a recorder.
fn record_snp(
    plan: &SnpLaunchPlan,
    boot: &BootFiles,
    ops: &mut RecordingLaunchOps,
) -> Result<(), LaunchError> {
    let fw_len = plan.inputs().firmware.data().len();
    let mem = memory::allocate_with_firmware(MEMORY_MIB, fw_len).unwrap();
    launch::snp::launch(plan, boot, &SnpLaunchOptions::default(), &mem, ops).map(|_| ())
}

fn assert_snp_replay_matches_podvm_measure(firmware: &[u8]) {
    for vcpus in [1, 4] {
        let i = inputs(firmware);
        let plan = plan(&i, vcpus);
        let mut rec = RecordingLaunchOps::new();
        record_snp(&plan, &boot_files(&i), &mut rec).unwrap();
        let replayed = replay_snp(rec.calls()).unwrap();
        let printed = podvm_measure_snp(&i, vcpus);
        assert_eq!(replayed.to_hex(), printed, "{vcpus} vCPUs");
        assert_eq!(replayed, plan.measure());
    }
}

#[test]
fn snp_recorded_launch_replays_to_podvm_measure_emulated_firmware() {
    assert_snp_replay_matches_podvm_measure(&emulated_firmware_bytes());
}

#[test]
fn snp_recorded_launch_replays_to_podvm_measure_amdsev_ovmf() {
    assert_snp_replay_matches_podvm_measure(&amdsev_suffix());
}

#[test]
fn snp_kernel_changed_after_planning_changes_the_replayed_digest() {
    let i = inputs(&emulated_firmware_bytes());
    let plan = plan(&i, 2);
    let mut boot = boot_files(&i);
    if let Some(k) = boot.kernel.as_mut() {
        k[1234] ^= 0x01;
    }
    let mut rec = RecordingLaunchOps::new();
    record_snp(&plan, &boot, &mut rec).unwrap();
    let replayed = replay_snp(rec.calls()).unwrap();
    assert_ne!(replayed, plan.measure());
    assert_ne!(replayed.to_hex(), podvm_measure_snp(&i, 2));

    // So does a command line that differs from the planned one.
    let mut boot = boot_files(&i);
    boot.cmdline = Some(format!("{CMDLINE} "));
    let mut rec = RecordingLaunchOps::new();
    record_snp(&plan, &boot, &mut rec).unwrap();
    assert_ne!(replay_snp(rec.calls()).unwrap(), plan.measure());
}

#[test]
fn snp_launch_sequence_has_the_kernel_shape() {
    let i = inputs(&amdsev_suffix());
    let plan = plan(&i, 4);
    let mut rec = RecordingLaunchOps::new();
    record_snp(&plan, &boot_files(&i), &mut rec).unwrap();
    let calls = rec.calls();

    // INIT2 and START first, then the private memory regions (RAM and firmware), ..., FINISH last.
    assert!(matches!(
        calls[0],
        LaunchCall::SnpInit {
            vmsa_features: 0,
            ghcb_version: 2
        }
    ));
    assert!(matches!(
        calls[1],
        LaunchCall::SnpLaunchStart {
            policy: 0x30000,
            ..
        }
    ));
    assert!(matches!(
        calls[2],
        LaunchCall::AddPrivateRegion {
            slot: 0,
            gpa: 0,
            size: 0x100_0000
        }
    ));
    assert!(matches!(
        calls[3],
        LaunchCall::SetMemoryPrivate {
            gpa: 0,
            size: 0x100_0000
        }
    ));
    assert!(matches!(
        calls[4],
        LaunchCall::AddPrivateRegion {
            slot: 1,
            gpa: 0xffff_f000,
            size: 0x1000
        }
    ));
    assert!(matches!(
        calls[5],
        LaunchCall::SetMemoryPrivate {
            gpa: 0xffff_f000,
            size: 0x1000
        }
    ));
    assert!(matches!(calls[6], LaunchCall::SnpLaunchUpdate { .. }));
    match calls.last().unwrap() {
        LaunchCall::SnpLaunchFinish(f) => {
            assert_eq!(f.host_data, HOST_DATA);
            assert!(!f.id_block_en() && !f.auth_key_en);
        }
        other => panic!("last call is {other:?}"),
    }

    // The updates cover every non-VMSA plan page exactly once, with its type, in plan order.
    let mut updated: Vec<(u64, SnpPageType)> = Vec::new();
    for c in calls {
        if let LaunchCall::SnpLaunchUpdate {
            gfn_start,
            page_type,
            bytes,
        } = c
        {
            assert_eq!(bytes.len() % PAGE_SIZE, 0);
            for p in 0..bytes.len() / PAGE_SIZE {
                updated.push(((gfn_start + p as u64) * PAGE_SIZE as u64, *page_type));
            }
        }
    }
    let planned: Vec<(u64, SnpPageType)> = plan
        .pages()
        .iter()
        .filter(|p| p.page_type != SnpPageType::Vmsa)
        .map(|p| (p.gpa, p.page_type))
        .collect();
    assert_eq!(updated, planned);
    let mut gpas: Vec<u64> = updated.iter().map(|(g, _)| *g).collect();
    gpas.sort_unstable();
    gpas.dedup();
    assert_eq!(gpas.len(), planned.len(), "a page was updated twice");

    // The bytes of NORMAL pages are what the plan says the firmware / hash page holds.
    let mut at = 0;
    for c in calls {
        if let LaunchCall::SnpLaunchUpdate {
            page_type: SnpPageType::Normal,
            bytes,
            gfn_start,
        } = c
        {
            for (p, page) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                let gpa = (gfn_start + p as u64) * PAGE_SIZE as u64;
                let planned = plan
                    .pages()
                    .iter()
                    .find(|pg| pg.gpa == gpa && pg.page_type == SnpPageType::Normal)
                    .unwrap();
                assert_eq!(Some(page), plan.page_bytes(planned), "GPA {gpa:#x}");
                at += 1;
            }
        }
    }
    let normal_pages = plan
        .pages()
        .iter()
        .filter(|p| {
            matches!(
                p.source,
                PageSource::Firmware { .. } | PageSource::KernelHashes
            )
        })
        .count();
    assert_eq!(at, normal_pages);

    // One reset state per vCPU: the BSP at the reset vector, APs at the SEV-ES reset EIP.
    let states: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            LaunchCall::SetVcpuResetState { vcpu, state } => Some((*vcpu, *state)),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 4);
    assert_eq!(states[0].0, 0);
    assert_eq!(states[0].1.eip(), Some(0xffff_fff0));
    for (n, (v, s)) in states.iter().enumerate().skip(1) {
        assert_eq!(*v, n as u32);
        assert_eq!(s.eip(), Some(0x0080_b004));
        assert_eq!(s.rdx, 0x00a0_0f11, "EPYC-Milan signature in RDX");
    }
}

#[test]
fn snp_failing_ioctl_aborts_naming_ioctl_gpa_and_step() {
    let i = inputs(&emulated_firmware_bytes());
    let plan = plan(&i, 2);
    // The complete launch, to pick the steps.
    let mut full = RecordingLaunchOps::new();
    record_snp(&plan, &boot_files(&i), &mut full).unwrap();
    let total = full.calls().len();
    let update_step = full
        .calls()
        .iter()
        .position(|c| {
            matches!(
                c,
                LaunchCall::SnpLaunchUpdate {
                    page_type: SnpPageType::Secrets,
                    ..
                }
            )
        })
        .unwrap()
        + 1;

    let mut rec = RecordingLaunchOps::failing_at(update_step);
    let err = record_snp(&plan, &boot_files(&i), &mut rec).unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "KVM_SEV_SNP_LAUNCH_UPDATE failed at launch step {update_step} (GPA 0x8d000): EIO (injected by the recorder at step {update_step})"
        )
    );
    assert!(!msg.contains('\n'));
    assert_eq!(
        rec.attempts(),
        update_step,
        "nothing issued after the failure"
    );
    assert_eq!(rec.calls(), &full.calls()[..update_step - 1]);

    // Failing the last step (FINISH) and the first (the first memory region).
    let mut rec = RecordingLaunchOps::failing_at(total);
    let msg = record_snp(&plan, &boot_files(&i), &mut rec)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&format!(
            "KVM_SEV_SNP_LAUNCH_FINISH failed at launch step {total}:"
        )),
        "{msg}"
    );
    let mut rec = RecordingLaunchOps::failing_at(1);
    let msg = record_snp(&plan, &boot_files(&i), &mut rec)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("KVM_SEV_INIT2 failed at launch step 1:"),
        "{msg}"
    );
    assert!(rec.calls().is_empty());
    let mut rec = RecordingLaunchOps::failing_at(3);
    let msg = record_snp(&plan, &boot_files(&i), &mut rec)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("KVM_SET_USER_MEMORY_REGION2 failed at launch step 3 (GPA 0x0):"),
        "{msg}"
    );
    assert_eq!(rec.calls().len(), 2);
}

#[test]
fn snp_launch_finish_carries_the_id_block_whose_digest_the_launch_produces() {
    let i = inputs(&emulated_firmware_bytes());
    let plan = plan(&i, 2);
    let id_key = p384::ecdsa::SigningKey::from_slice(&[0x11; 48]).unwrap();
    let author_key = p384::ecdsa::SigningKey::from_slice(&[0x22; 48]).unwrap();
    let block = IdBlock {
        launch_digest: plan.measure(),
        family_id: [1; 16],
        image_id: [2; 16],
        guest_svn: 3,
        policy: 0x30000,
    };
    let signed = SignedIdBlock::sign(&block, &id_key, &author_key);
    let options = SnpLaunchOptions {
        id_block: Some(signed.clone()),
        author_key: true,
        ..SnpLaunchOptions::default()
    };
    let mem =
        memory::allocate_with_firmware(MEMORY_MIB, plan.inputs().firmware.data().len()).unwrap();
    let mut rec = RecordingLaunchOps::new();
    launch::snp::launch(&plan, &boot_files(&i), &options, &mem, &mut rec).unwrap();
    let Some(LaunchCall::SnpLaunchFinish(finish)) = rec.calls().last() else {
        panic!("no LAUNCH_FINISH last: {:?}", rec.calls().last());
    };
    assert!(finish.id_block_en() && finish.auth_key_en);
    assert_eq!(finish.id_block, Some(signed.id_block));
    assert_eq!(finish.id_auth.as_deref(), Some(&*signed.id_auth));
    assert_eq!(finish.host_data, HOST_DATA);
    // The PSP refuses LAUNCH_FINISH unless the ID block's digest is the launch digest.
    let replayed = replay_snp(rec.calls()).unwrap();
    let parsed = IdBlock::parse(&signed.id_block).unwrap();
    assert_eq!(parsed.launch_digest, replayed);
}

#[test]
fn snp_launch_needs_the_metadata_pages_in_guest_memory() {
    let i = inputs(&amdsev_suffix());
    let plan = plan(&i, 1);
    // 2 MiB of RAM: AmdSev's sections at 8 MiB are not backed.
    let mem = memory::allocate_with_firmware(2, PAGE_SIZE).unwrap();
    let mut rec = RecordingLaunchOps::new();
    let err = launch::snp::launch(
        &plan,
        &boot_files(&i),
        &SnpLaunchOptions::default(),
        &mem,
        &mut rec,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot write guest memory at GPA 0x810000"),
        "{err}"
    );
    assert_eq!(rec.attempts(), 0);
}

/// A synthetic TDVF image: 3 firmware pages (BFV, measured) + 1 (CFV, unmeasured) ending at
/// 4 GiB, a TempMem and a TD HOB section in RAM, a PermMem section (not added), and the footer
/// table pointing at the descriptor (built with measured-boot's `TdvfDescriptor::to_bytes`).
fn synthetic_tdvf() -> Vec<u8> {
    let size = 4 * PAGE_SIZE;
    let gpa = 0x1_0000_0000u64 - size as u64;
    let desc = TdvfDescriptor {
        version: 1,
        sections: vec![
            TdvfSection {
                data_offset: 0,
                raw_data_size: PAGE_SIZE as u32,
                memory_address: gpa,
                memory_data_size: PAGE_SIZE as u64,
                section_type: TdvfSectionType::Cfv,
                attributes: 0,
            },
            TdvfSection {
                data_offset: PAGE_SIZE as u32,
                raw_data_size: 3 * PAGE_SIZE as u32,
                memory_address: gpa + PAGE_SIZE as u64,
                memory_data_size: 3 * PAGE_SIZE as u64,
                section_type: TdvfSectionType::Bfv,
                attributes: ATTR_MR_EXTEND,
            },
            TdvfSection {
                data_offset: 0,
                raw_data_size: 0,
                memory_address: 0x80_0000,
                memory_data_size: 2 * PAGE_SIZE as u64,
                section_type: TdvfSectionType::TempMem,
                attributes: 0,
            },
            TdvfSection {
                data_offset: 0,
                raw_data_size: 0,
                memory_address: 0x80_2000,
                memory_data_size: PAGE_SIZE as u64,
                section_type: TdvfSectionType::TdHob,
                attributes: 0,
            },
            TdvfSection {
                data_offset: 0,
                raw_data_size: 0,
                memory_address: 0x100_0000,
                memory_data_size: 0x10_0000,
                section_type: TdvfSectionType::PermMem,
                attributes: ATTR_PAGE_AUG,
            },
        ],
    };
    let mut image = pattern(size, 3);
    let desc_bytes = desc.to_bytes();
    // Descriptor in the first page of the BFV, 0x100 bytes in.
    let desc_at = PAGE_SIZE + 0x100;
    image[desc_at..desc_at + desc_bytes.len()].copy_from_slice(&desc_bytes);
    let offset_from_end = (size - desc_at) as u32;
    let footer = encode_footer_table(&[FooterEntry {
        guid: TDX_METADATA_OFFSET_GUID,
        data: offset_from_end.to_le_bytes().to_vec(),
    }]);
    let end = size - podvm_measured_boot::ovmf::FOOTER_OFFSET_FROM_END;
    image[end - footer.len()..end].copy_from_slice(&footer);
    image
}

fn record_tdx(fw: &Firmware, vcpus: u32, ops: &mut RecordingLaunchOps) -> Result<(), LaunchError> {
    let mem = memory::allocate_with_firmware(MEMORY_MIB, fw.data().len()).unwrap();
    launch::tdx::launch(fw, &TdxInitVm::default(), vcpus, &mem, ops).map(|_| ())
}

#[test]
fn tdx_recorded_launch_replays_to_podvm_measure_mrtd() {
    let i = inputs(&synthetic_tdvf());
    let fw = Firmware::from_path(&i.firmware).unwrap();
    let mut rec = RecordingLaunchOps::new();
    record_tdx(&fw, 2, &mut rec).unwrap();
    let mrtd = replay_tdx(rec.calls()).unwrap();
    let printed = podvm_measure(&[
        "--mode",
        "tdx",
        "--ovmf",
        path(&i.firmware),
        "--output-format",
        "hex",
    ]);
    assert_eq!(hex::encode(mrtd), printed);

    // Shape: INIT_VM, one INIT_VCPU per vCPU (RCX = TD HOB), the added sections in descriptor
    // order with MEASURE only for the BFV, FINALIZE last; PermMem is never added.
    let launch_calls: Vec<_> = rec
        .calls()
        .iter()
        .filter(|c| {
            !matches!(
                c,
                LaunchCall::AddPrivateRegion { .. } | LaunchCall::SetMemoryPrivate { .. }
            )
        })
        .collect();
    assert!(matches!(launch_calls[0], LaunchCall::TdxInitVm(_)));
    assert!(matches!(
        launch_calls[1],
        LaunchCall::TdxInitVcpu {
            vcpu: 0,
            rcx: 0x80_2000
        }
    ));
    assert!(matches!(
        launch_calls[2],
        LaunchCall::TdxInitVcpu {
            vcpu: 1,
            rcx: 0x80_2000
        }
    ));
    let regions: Vec<(u64, bool, usize)> = launch_calls
        .iter()
        .filter_map(|c| match c {
            LaunchCall::TdxInitMemRegion {
                gpa,
                measure,
                bytes,
            } => Some((*gpa, *measure, bytes.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        regions,
        vec![
            (0xffff_c000, false, PAGE_SIZE),
            (0xffff_d000, true, 3 * PAGE_SIZE),
            (0x80_0000, false, 2 * PAGE_SIZE),
            (0x80_2000, false, PAGE_SIZE),
        ]
    );
    assert!(matches!(
        launch_calls.last(),
        Some(LaunchCall::TdxFinalizeVm)
    ));
}

#[test]
fn tdx_wrong_firmware_byte_in_guest_memory_changes_mrtd() {
    // The recorded bytes come from guest memory: a BFV byte that differs from the measured
    // image gives another MRTD than `podvm measure` predicts for the image.
    let image = synthetic_tdvf();
    let fw = Firmware::from_bytes("tdvf", image.clone()).unwrap();
    let mut rec = RecordingLaunchOps::new();
    record_tdx(&fw, 1, &mut rec).unwrap();
    let good = replay_tdx(rec.calls()).unwrap();
    let mut calls = rec.into_calls();
    for c in calls.iter_mut() {
        if let LaunchCall::TdxInitMemRegion {
            measure: true,
            bytes,
            ..
        } = c
        {
            bytes[17] ^= 0x80;
        }
    }
    assert_ne!(replay_tdx(&calls).unwrap(), good);
    let mut bad_image = image;
    bad_image[PAGE_SIZE * 2] ^= 1; // inside the BFV
    let bad_fw = Firmware::from_bytes("tdvf", bad_image).unwrap();
    let mut rec = RecordingLaunchOps::new();
    record_tdx(&bad_fw, 1, &mut rec).unwrap();
    assert_ne!(replay_tdx(rec.calls()).unwrap(), good);
}

#[test]
fn tdx_failing_ioctl_aborts_naming_ioctl_gpa_and_step() {
    let fw = Firmware::from_bytes("tdvf", synthetic_tdvf()).unwrap();
    let mut full = RecordingLaunchOps::new();
    record_tdx(&fw, 1, &mut full).unwrap();
    let step = full
        .calls()
        .iter()
        .position(|c| matches!(c, LaunchCall::TdxInitMemRegion { measure: true, .. }))
        .unwrap()
        + 1;
    let mut rec = RecordingLaunchOps::failing_at(step);
    let msg = record_tdx(&fw, 1, &mut rec).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "KVM_TDX_INIT_MEM_REGION failed at launch step {step} (GPA 0xffffd000): EIO (injected by the recorder at step {step})"
        )
    );
    assert_eq!(rec.attempts(), step);
}

#[test]
fn builder_refuses_snp_and_tdx_on_a_host_without_them() {
    let i = inputs(&emulated_firmware_bytes());
    let snp = ConfidentialLaunch::Snp(Box::new(SnpLaunch {
        plan: plan(&i, 1),
        boot: boot_files(&i),
        options: SnpLaunchOptions::default(),
    }));
    let err = KvmVm::builder()
        .memory_mib(MEMORY_MIB)
        .confidential(snp)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, KvmVmError::Launch(LaunchError::Unsupported(_))),
        "{msg}"
    );
    assert!(
        msg.starts_with(
            "SEV-SNP launch needs a host with SEV-SNP enabled in KVM (KVM_CAP_VM_TYPES lacks KVM_X86_SNP_VM): /dev/kvm here offers VM types "
        ),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let tdx = ConfidentialLaunch::Tdx(Box::new(TdxLaunch {
        firmware: Firmware::from_bytes("tdvf", synthetic_tdvf()).unwrap(),
        init_vm: TdxInitVm::default(),
        vcpus: 1,
    }));
    let msg = KvmVm::builder()
        .memory_mib(MEMORY_MIB)
        .confidential(tdx)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("TDX launch needs a host with TDX enabled in KVM (KVM_CAP_VM_TYPES lacks KVM_X86_TDX_VM): /dev/kvm here offers VM types "),
        "{msg}"
    );
}
