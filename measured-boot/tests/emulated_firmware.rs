//! The emulated-SNP firmware image: it parses, it measures a direct kernel launch, and the
//! reference tool sev-snp-measure 0.0.13 computes the same digests from the same file.
//!
//! The reference tool is found as in `differential.rs` (`$PODVM_SEV_SNP_MEASURE`, or
//! `${PODVM_CACHE_DIR:-/var/cache/podvm}/sev-snp-measure-venv/bin/sev-snp-measure`, created by
//! `scripts/install-sev-snp-measure`); the differential test FAILS if it is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

use podvm_measured_boot::emulated_firmware::{
    self, FILE_NAME, emulated_firmware, emulated_firmware_bytes,
};
use podvm_measured_boot::ovmf::SevSectionType;
use podvm_measured_boot::{FileDigest, Firmware, LaunchPlanBuilder, Mode, SnpPageType};

const REFERENCE_VERSION: &str = "0.0.13";

#[test]
fn parses_with_the_four_snp_sections() {
    let fw = Firmware::from_bytes("emulated", emulated_firmware_bytes()).unwrap();
    for ty in [
        SevSectionType::SnpSecMem,
        SevSectionType::SnpSecrets,
        SevSectionType::Cpuid,
        SevSectionType::SnpKernelHashes,
    ] {
        assert!(fw.has_sev_section(ty), "{ty:?} missing");
    }
    assert!(!fw.has_sev_section(SevSectionType::SvsmCaa));
    assert_eq!(fw.data().len(), emulated_firmware::IMAGE_SIZE);
    assert_eq!(fw.gpa() + fw.data().len() as u64, 0x1_0000_0000);
    assert!(fw.sev_es_reset_eip().unwrap() != 0);
    assert!(fw.sev_hashes_table_gpa().is_some());
    assert_eq!(emulated_firmware().name(), FILE_NAME);
}

fn builder(cmdline: &str) -> LaunchPlanBuilder {
    LaunchPlanBuilder::new()
        .firmware(emulated_firmware())
        .kernel_digest(FileDigest::from_bytes("vmlinux", b"\x7fELF kernel", false))
        .initrd_digest(FileDigest::from_bytes(
            "initramfs.cpio",
            b"070701 initrd",
            false,
        ))
        .cmdline(cmdline)
        .vcpus(2)
        .vcpu_type("EPYC-v4")
}

#[test]
fn measures_a_direct_kernel_launch_and_every_cmdline_byte_counts() {
    let cmdline = "console=ttyS0 quiet panic=-1 pci=off";
    let plan = builder(cmdline).build_snp().unwrap();
    let hashes = plan
        .pages()
        .iter()
        .filter(|p| p.page_type == SnpPageType::Normal)
        .filter(|p| p.gpa == 0x9_0000)
        .count();
    assert_eq!(
        hashes, 1,
        "the kernel-hashes page is measured as a NORMAL page"
    );
    assert_eq!(
        plan.qemu_settings().sev_snp_guest_props[0],
        "kernel-hashes=on"
    );
    let digest = plan.measure();
    assert_eq!(digest, builder(cmdline).build_snp().unwrap().measure());

    let mut changed = cmdline.as_bytes().to_vec();
    changed[8] ^= 0x01; // "ttyS0" -> "ttyR0"
    let changed = String::from_utf8(changed).unwrap();
    assert_ne!(
        digest,
        builder(&changed).build_snp().unwrap().measure(),
        "a one-byte command-line change must change the measurement"
    );
    let longer = format!("{cmdline} ");
    assert_ne!(digest, builder(&longer).build_snp().unwrap().measure());
}

fn reference_tool() -> PathBuf {
    if let Some(p) = std::env::var_os("PODVM_SEV_SNP_MEASURE") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "PODVM_SEV_SNP_MEASURE={} does not exist; run scripts/install-sev-snp-measure or fix the variable",
            p.display()
        );
        return p;
    }
    let cache = std::env::var_os("PODVM_CACHE_DIR").unwrap_or_else(|| "/var/cache/podvm".into());
    let p = Path::new(&cache).join("sev-snp-measure-venv/bin/sev-snp-measure");
    assert!(
        p.exists(),
        "reference tool sev-snp-measure not found at {} and PODVM_SEV_SNP_MEASURE is unset; run scripts/install-sev-snp-measure (needs PyPI access)",
        p.display()
    );
    p
}

fn run_reference(tool: &Path, argv: &[String]) -> String {
    let o = Command::new(tool)
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        o.status.success(),
        "sev-snp-measure {argv:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// One launch measured by podvm and by sev-snp-measure.
struct Case {
    mode: Mode,
    vcpus: u32,
    vcpu_type: &'static str,
    kernel: bool,
    initrd: bool,
    append: Option<&'static str>,
}

#[test]
fn sev_snp_measure_computes_the_same_digests() {
    let tool = reference_tool();
    let version = Command::new(&tool).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string()
        + &String::from_utf8_lossy(&version.stderr);
    assert_eq!(
        version.trim(),
        format!("sev-snp-measure {REFERENCE_VERSION}"),
        "{}: unexpected version; run scripts/install-sev-snp-measure",
        tool.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join(FILE_NAME);
    std::fs::write(&fw_path, emulated_firmware_bytes()).unwrap();
    let kernel = dir.path().join("vmlinux");
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(
        &kernel,
        (0..150_001u32)
            .map(|i| ((i * 31) >> 3) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(
        &initrd,
        (0..70_007u32)
            .map(|i| (i * 7 + 1) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let cmdline = "console=ttyS0 quiet panic=-1 pci=off podvm.log=info";

    let cases = [
        Case {
            mode: Mode::Snp,
            vcpus: 1,
            vcpu_type: "EPYC-v4",
            kernel: true,
            initrd: true,
            append: Some(cmdline),
        },
        Case {
            mode: Mode::Snp,
            vcpus: 1,
            vcpu_type: "EPYC-v4",
            kernel: true,
            initrd: true,
            append: Some("console=ttyS0 quiet panic=-1 pci=off podvm.log=infO"),
        },
        Case {
            mode: Mode::Snp,
            vcpus: 2,
            vcpu_type: "EPYC-v4",
            kernel: true,
            initrd: true,
            append: Some(cmdline),
        },
        Case {
            mode: Mode::Snp,
            vcpus: 4,
            vcpu_type: "EPYC-Milan",
            kernel: true,
            initrd: true,
            append: Some(cmdline),
        },
        Case {
            mode: Mode::Snp,
            vcpus: 8,
            vcpu_type: "EPYC-Genoa",
            kernel: true,
            initrd: false,
            append: Some(""),
        },
        Case {
            mode: Mode::Snp,
            vcpus: 3,
            vcpu_type: "EPYC-Rome",
            kernel: true,
            initrd: true,
            append: None,
        },
        Case {
            mode: Mode::Snp,
            vcpus: 1,
            vcpu_type: "EPYC",
            kernel: false,
            initrd: false,
            append: None,
        },
        Case {
            mode: Mode::SnpOvmfHash,
            vcpus: 1,
            vcpu_type: "EPYC-v4",
            kernel: false,
            initrd: false,
            append: None,
        },
    ];
    let mut mismatches = Vec::new();
    let mut digests = Vec::new();
    for c in &cases {
        let mut argv = vec![
            "--mode".to_string(),
            c.mode.to_string(),
            "--ovmf".into(),
            fw_path.display().to_string(),
        ];
        let mut b = LaunchPlanBuilder::new()
            .firmware(Firmware::from_path(&fw_path).unwrap())
            .vcpus(c.vcpus)
            .vcpu_type(c.vcpu_type);
        if c.mode == Mode::Snp {
            argv.extend([
                "--vcpus".into(),
                c.vcpus.to_string(),
                "--vcpu-type".into(),
                c.vcpu_type.into(),
            ]);
        }
        if c.kernel {
            argv.extend(["--kernel".into(), kernel.display().to_string()]);
            b = b.kernel_file(&kernel);
        }
        if c.initrd {
            argv.extend(["--initrd".into(), initrd.display().to_string()]);
            b = b.initrd_file(&initrd);
        }
        if let Some(a) = c.append {
            argv.push(format!("--append={a}"));
            b = b.cmdline(a);
        }
        let want = run_reference(&tool, &argv);
        let got = b.measure(c.mode).unwrap().to_hex();
        if got != want {
            mismatches.push(format!("{argv:?}\n  podvm {got}\n  ref   {want}"));
        }
        digests.push(got);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The two launches that differ only in one command-line byte measure differently.
    assert_ne!(digests[0], digests[1]);
}
