//! The launch plan's page list: order, page types and page bytes.

use podvm_measured_boot::ovmf::{PAGE_SIZE, SevSectionType};
use podvm_measured_boot::sev_hashes::SevHashTable;
use podvm_measured_boot::snp::{PageSource, VMSA_GPA, VcpuRole};
use podvm_measured_boot::{FileDigest, Firmware, SnpLaunchPlan, SnpPageType, VmmType};

const AMDSEV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
);

fn plan(vmm: VmmType, vcpus: u32, kernel: bool) -> SnpLaunchPlan {
    let mut b = SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(AMDSEV).unwrap())
        .vcpus(vcpus)
        .vcpu_type("EPYC-Genoa")
        .vmm(vmm);
    if kernel {
        b = b
            .kernel_digest(FileDigest::from_bytes("k", b"kernel", false))
            .initrd_digest(FileDigest::from_bytes("i", b"initrd", false))
            .cmdline("console=ttyS0");
    }
    b.build().unwrap()
}

#[test]
fn qemu_plan_lists_firmware_metadata_then_vmsas() {
    let p = plan(VmmType::Qemu, 3, true);
    let pages = p.pages();
    assert_eq!(pages[0].gpa, 0xffff_f000);
    assert_eq!(pages[0].page_type, SnpPageType::Normal);
    assert_eq!(pages[0].source, PageSource::Firmware { offset: 0 });
    let vmsas: Vec<_> = pages
        .iter()
        .filter(|p| p.page_type == SnpPageType::Vmsa)
        .collect();
    assert_eq!(vmsas.len(), 3);
    assert!(vmsas.iter().all(|v| v.gpa == VMSA_GPA));
    assert_eq!(vmsas[0].source, PageSource::Vmsa(VcpuRole::Bsp));
    assert_eq!(vmsas[2].source, PageSource::Vmsa(VcpuRole::Ap(2)));
    assert_eq!(pages[pages.len() - 3..].len(), 3);
    assert!(
        pages[pages.len() - 3..]
            .iter()
            .all(|p| p.page_type == SnpPageType::Vmsa)
    );
    // BSP and AP VMSAs differ (reset EIP); all APs share one.
    assert_ne!(p.page_bytes(vmsas[0]), p.page_bytes(vmsas[1]));
    assert_eq!(p.page_bytes(vmsas[1]), p.page_bytes(vmsas[2]));

    // The kernel-hashes page carries the table at the announced offset.
    let hp = pages
        .iter()
        .find(|p| p.source == PageSource::KernelHashes)
        .unwrap();
    let bytes = p.page_bytes(hp).unwrap();
    assert_eq!(bytes.len(), PAGE_SIZE);
    let off = p.inputs().firmware.sev_hashes_table_gpa().unwrap() as usize % PAGE_SIZE;
    let t = SevHashTable::parse(&bytes[off..]).unwrap();
    assert_eq!(Some(t), p.inputs().hash_table());

    // Every metadata section appears, in metadata order, after the firmware page.
    let fw = &p.inputs().firmware;
    let meta_gpas: Vec<u64> = fw.sev_sections().iter().map(|s| s.gpa as u64).collect();
    let mut idx = 1;
    for g in meta_gpas {
        let at = pages[idx..].iter().position(|p| p.gpa == g).unwrap();
        idx += at + 1;
    }
}

#[test]
fn ec2_measures_cpuid_last_and_gce_leaves_sec_mem_unmeasured() {
    let ec2 = plan(VmmType::Ec2, 1, false);
    let cpuid = ec2
        .inputs()
        .firmware
        .sev_sections()
        .iter()
        .find(|s| s.section_type == SevSectionType::Cpuid)
        .unwrap()
        .gpa as u64;
    let pages = ec2.pages();
    let before_vmsa = &pages[pages.len() - 2];
    assert_eq!(
        (before_vmsa.gpa, before_vmsa.page_type),
        (cpuid, SnpPageType::Cpuid)
    );
    let gce = plan(VmmType::Gce, 1, false);
    assert!(
        gce.pages()
            .iter()
            .any(|p| p.page_type == SnpPageType::Unmeasured)
    );
    assert!(
        !plan(VmmType::Qemu, 1, false)
            .pages()
            .iter()
            .any(|p| p.page_type == SnpPageType::Unmeasured)
    );
    // Without a kernel the kernel-hashes section is zero pages and has no bytes.
    let q = plan(VmmType::Qemu, 1, false);
    assert!(
        !q.pages()
            .iter()
            .any(|p| p.source == PageSource::KernelHashes)
    );
}

#[test]
fn every_input_changes_the_measurement() {
    let base = plan(VmmType::Qemu, 2, true).measure();
    assert_ne!(base, plan(VmmType::Qemu, 3, true).measure());
    assert_ne!(base, plan(VmmType::Qemu, 2, false).measure());
    assert_ne!(base, plan(VmmType::Ec2, 2, true).measure());
    let features = SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(AMDSEV).unwrap())
        .vcpus(2)
        .vcpu_type("EPYC-Genoa")
        .guest_features(0x21)
        .kernel_digest(FileDigest::from_bytes("k", b"kernel", false))
        .initrd_digest(FileDigest::from_bytes("i", b"initrd", false))
        .cmdline("console=ttyS0")
        .build()
        .unwrap()
        .measure();
    assert_ne!(base, features);
}

#[test]
fn qemu_settings_follow_the_plan() {
    let with_kernel = plan(VmmType::Qemu, 3, true).qemu_settings();
    assert_eq!(with_kernel.smp, 3);
    assert_eq!(with_kernel.cpu.as_deref(), Some("EPYC-Genoa"));
    assert_eq!(with_kernel.sev_snp_guest_props, vec!["kernel-hashes=on"]);
    let hd = SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(AMDSEV).unwrap())
        .vcpus(1)
        .vcpu_sig(0x00a0_0f11)
        .host_data([0xff; 32])
        .build()
        .unwrap();
    let q = hd.qemu_settings();
    assert_eq!(q.cpu, None);
    assert_eq!(
        q.sev_snp_guest_props,
        vec![
            "kernel-hashes=off".to_string(),
            format!("host-data={}", "/".repeat(42) + "8="),
        ]
    );
    assert_eq!(hd.host_data(), Some([0xff; 32]));
}
