//! SNP launch digest of a full-size OVMF + a 14 MB kernel + a 30 MB initrd, and the same
//! computation by the reference tool `sev-snp-measure` (timed with `std::process::Command`).
//!
//! Debian's `/usr/share/ovmf/OVMF.fd` (2 MiB) has no SNP_KERNEL_HASHES section, so a kernel cannot
//! be measured with it as is. The bench therefore measures a 2 MiB image made of Debian's OVMF.fd
//! with its last 4 KiB replaced by the AmdSev fixture page (footer table + SEV metadata with
//! SNP_KERNEL_HASHES): same page count as the real firmware, kernel hashes supported.
//!
//! Reference tool: `$PODVM_SEV_SNP_MEASURE` or `${PODVM_CACHE_DIR:-/var/cache/podvm}/sev-snp-measure-venv/bin/sev-snp-measure`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use podvm_measured_boot::{Firmware, SnpLaunchPlan, VmmType};

const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const AMDSEV_SUFFIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
);
const KERNEL_SIZE: usize = 14 * 1000 * 1000;
const INITRD_SIZE: usize = 30 * 1000 * 1000;
const CMDLINE: &str = "console=ttyS0 root=/dev/vda1 ro quiet";
const VCPUS: u32 = 4;

/// Deterministic pseudo-random bytes (xorshift64*), so both tools hash the same files every run.
fn det_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Inputs {
    _dir: tempfile::TempDir,
    ovmf: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ovmf = std::fs::read(DEBIAN_OVMF)
        .unwrap_or_else(|e| panic!("{DEBIAN_OVMF}: {e}; install Debian's ovmf package"));
    let suffix = std::fs::read(AMDSEV_SUFFIX).expect("AmdSev fixture (../shared/testdata)");
    let n = ovmf.len();
    ovmf[n - suffix.len()..].copy_from_slice(&suffix);
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("OVMF.fd"), &ovmf).expect("write ovmf");
    std::fs::write(p("vmlinuz"), det_bytes(14, KERNEL_SIZE)).expect("write kernel");
    std::fs::write(p("initrd.img"), det_bytes(30, INITRD_SIZE)).expect("write initrd");
    Inputs {
        ovmf: p("OVMF.fd"),
        kernel: p("vmlinuz"),
        initrd: p("initrd.img"),
        _dir: dir,
    }
}

fn podvm_digest(i: &Inputs) -> String {
    SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(&i.ovmf).expect("ovmf"))
        .kernel_file(&i.kernel)
        .initrd_file(&i.initrd)
        .cmdline(CMDLINE)
        .vcpus(VCPUS)
        .vcpu_type("EPYC-Milan")
        .vmm(VmmType::Qemu)
        .guest_features(0x1)
        .build()
        .expect("plan")
        .measure()
        .to_hex()
}

fn reference_tool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PODVM_SEV_SNP_MEASURE") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("PODVM_CACHE_DIR").unwrap_or_else(|| "/var/cache/podvm".into());
    let p = Path::new(&cache).join("sev-snp-measure-venv/bin/sev-snp-measure");
    p.exists().then_some(p)
}

fn reference_digest(tool: &Path, i: &Inputs) -> String {
    let out = Command::new(tool)
        .args([
            "--mode",
            "snp",
            "--vcpus",
            &VCPUS.to_string(),
            "--vcpu-type",
            "EPYC-Milan",
        ])
        .args([
            "--vmm-type",
            "QEMU",
            "--guest-features",
            "0x1",
            "--append",
            CMDLINE,
        ])
        .arg("--ovmf")
        .arg(&i.ovmf)
        .arg("--kernel")
        .arg(&i.kernel)
        .arg("--initrd")
        .arg(&i.initrd)
        .output()
        .expect("run sev-snp-measure");
    assert!(
        out.status.success(),
        "sev-snp-measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let i = inputs();
    let mut g = c.benchmark_group("snp_digest");
    g.sample_size(20);
    g.bench_function("ovmf2M_kernel14M_initrd30M", |b| {
        b.iter(|| podvm_digest(&i))
    });
    // The page chain alone (kernel/initrd SHA-256 already in the plan): what re-measuring a
    // launch with other vCPU counts or features costs once the inputs are hashed.
    let plan = SnpLaunchPlan::builder()
        .firmware(Firmware::from_path(&i.ovmf).expect("ovmf"))
        .kernel_file(&i.kernel)
        .initrd_file(&i.initrd)
        .cmdline(CMDLINE)
        .vcpus(VCPUS)
        .vcpu_type("EPYC-Milan")
        .build()
        .expect("plan");
    g.bench_function("page_chain_only", |b| b.iter(|| plan.measure()));
    g.finish();

    const RUNS: usize = 5;
    let ours = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(podvm_digest(&i));
                t.elapsed()
            })
            .collect(),
    );
    let Some(tool) = reference_tool() else {
        println!(
            "reference: sev-snp-measure not found (set PODVM_SEV_SNP_MEASURE or run scripts/install-sev-snp-measure); podvm median {ours:?}"
        );
        return;
    };
    let mut ref_digest = String::new();
    let theirs = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                ref_digest = reference_digest(&tool, &i);
                t.elapsed()
            })
            .collect(),
    );
    let our_digest = podvm_digest(&i);
    assert_eq!(our_digest, ref_digest, "podvm and sev-snp-measure disagree");
    println!(
        "same inputs, median of {RUNS} wall-clock runs: podvm {ours:?}, sev-snp-measure {theirs:?} (process), ratio {:.1}x; digest {our_digest}",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
