//! Differential test against the reference implementation, sev-snp-measure 0.0.13 (PyPI).
//!
//! The tool is found via `$PODVM_SEV_SNP_MEASURE` (path of the `sev-snp-measure` executable) or
//! `${PODVM_CACHE_DIR:-/var/cache/podvm}/sev-snp-measure-venv/bin/sev-snp-measure`
//! (`scripts/install-sev-snp-measure` creates it). The test FAILS if the tool is absent.
//!
//! To keep Python start-up cost down, all cases run in one interpreter: the executable's
//! `#!` interpreter runs the tool's own CLI entry point (`sevsnpmeasure.cli.main`) once per case
//! with that case's argv, exactly as the command line would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use podvm_measured_boot::{Firmware, LaunchPlanBuilder, Mode, SnpMeasurement, VmmType};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement"
);
const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const REFERENCE_VERSION: &str = "0.0.13";
const SEED: u64 = 0x5eed_2026_1126;

const VCPU_TYPES: &[&str] = &[
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
];

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

/// Deterministic xorshift64* generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Debug, Clone)]
enum Vcpu {
    None,
    Named(&'static str),
    Sig(u32),
}

#[derive(Debug, Clone)]
struct Case {
    mode: Mode,
    ovmf: PathBuf,
    ovmf_seed: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    vcpus: u32,
    vcpu: Vcpu,
    vmm: VmmType,
    features: u64,
}

impl Case {
    fn argv(&self) -> Vec<String> {
        let mut a = vec!["--mode".to_string(), self.mode.to_string()];
        a.extend(["--ovmf".into(), self.ovmf.display().to_string()]);
        if self.mode == Mode::SnpOvmfHash {
            return a;
        }
        if self.mode != Mode::Sev {
            a.extend(["--vcpus".into(), self.vcpus.to_string()]);
            match &self.vcpu {
                Vcpu::None => {}
                Vcpu::Named(n) => a.extend(["--vcpu-type".into(), n.to_string()]),
                Vcpu::Sig(s) => a.extend(["--vcpu-sig".into(), format!("{s:#x}")]),
            }
            let vmm = match self.vmm {
                VmmType::Qemu => "QEMU",
                VmmType::Ec2 => "ec2",
                VmmType::Gce => "gce",
            };
            a.extend(["--vmm-type".into(), vmm.into()]);
            a.extend(["--guest-features".into(), format!("{:#x}", self.features)]);
        }
        if let Some(k) = &self.kernel {
            a.extend(["--kernel".into(), k.display().to_string()]);
        }
        if let Some(i) = &self.initrd {
            a.extend(["--initrd".into(), i.display().to_string()]);
        }
        if let Some(c) = &self.append {
            // `--append=` form: argparse would take a value starting with '-' for an option.
            a.push(format!("--append={c}"));
        }
        if let Some(s) = &self.ovmf_seed {
            a.extend(["--snp-ovmf-hash".into(), s.clone()]);
        }
        a
    }

    fn podvm(&self) -> String {
        let mut b = LaunchPlanBuilder::new()
            .firmware(Firmware::from_path(&self.ovmf).unwrap())
            .vmm(self.vmm)
            .guest_features(self.features);
        if self.mode != Mode::Sev {
            b = b.vcpus(self.vcpus);
        }
        match &self.vcpu {
            Vcpu::None => {}
            Vcpu::Named(n) => b = b.vcpu_type(*n),
            Vcpu::Sig(s) => b = b.vcpu_sig(*s),
        }
        if let Some(k) = &self.kernel {
            b = b.kernel_file(k);
        }
        if let Some(i) = &self.initrd {
            b = b.initrd_file(i);
        }
        if let Some(c) = &self.append {
            b = b.cmdline(c.clone());
        }
        if let Some(s) = &self.ovmf_seed {
            b = b.ovmf_digest(s.parse::<SnpMeasurement>().unwrap());
        }
        b.measure(self.mode)
            .unwrap_or_else(|e| panic!("podvm failed on {self:?}: {e}"))
            .to_hex()
    }
}

/// Runs all argv lists through the reference CLI in one Python process; returns stdout per case.
fn run_reference(tool: &Path, cases: &[Vec<String>]) -> Vec<String> {
    let version = Command::new(tool).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string()
        + &String::from_utf8_lossy(&version.stderr);
    assert!(
        version.trim() == format!("sev-snp-measure {REFERENCE_VERSION}"),
        "{} reports '{}', expected version {REFERENCE_VERSION}; run scripts/install-sev-snp-measure",
        tool.display(),
        version.trim()
    );
    let script = std::fs::read_to_string(tool).unwrap_or_default();
    let interpreter = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(str::trim)
        .filter(|i| i.contains("python"));
    let Some(interpreter) = interpreter else {
        // Not a Python entry script: one process per case.
        return cases
            .iter()
            .map(|argv| {
                let o = Command::new(tool).args(argv).output().unwrap();
                assert!(
                    o.status.success(),
                    "{argv:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            })
            .collect();
    };
    const DRIVER: &str = r#"
import io, json, sys, contextlib
from sevsnpmeasure.cli import main
for line in sys.stdin:
    argv = json.loads(line)
    sys.argv = ["sev-snp-measure"] + argv
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main()
    except SystemExit as e:
        rc = e.code
    print(json.dumps({"rc": rc, "out": out.getvalue().strip(), "err": err.getvalue().strip()}), flush=True)
"#;
    let mut child = Command::new(interpreter)
        .args(["-c", DRIVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {interpreter}: {e}"));
    {
        let mut stdin = child.stdin.take().unwrap();
        for argv in cases {
            writeln!(stdin, "{}", serde_json::to_string(argv).unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference driver failed");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    lines
        .iter()
        .zip(cases)
        .map(|(r, argv)| {
            assert!(
                r["rc"].as_i64().unwrap_or(1) == 0,
                "sev-snp-measure {argv:?} failed: {}",
                r["err"]
            );
            r["out"].as_str().unwrap().to_string()
        })
        .collect()
}

fn generate(dir: &Path) -> Vec<Case> {
    let mut rng = Rng(SEED);
    let amdsev = PathBuf::from(format!("{FIXTURES}/ovmf_AmdSev_suffix.bin"));
    let debian = PathBuf::from(DEBIAN_OVMF);
    assert!(
        debian.exists(),
        "{DEBIAN_OVMF} missing; install Debian's ovmf package (apt-get install ovmf)"
    );
    let debian_seed = podvm_measured_boot::ovmf_digest(&Firmware::from_path(&debian).unwrap());
    let features = [0x1u64, 0x21, 0x5, 0x41, 0x1 | 0x80, 0x3, 0x1 | 0x200];
    let mut cases = Vec::new();
    for i in 0..72 {
        let write = |name: String, data: Vec<u8>| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let kernel_len = rng.below(200_000) as usize;
        let kernel = (rng.below(8) != 0).then(|| {
            let data = rng.bytes(kernel_len);
            write(format!("kernel{i}"), data)
        });
        let initrd = match (&kernel, rng.below(3)) {
            (Some(_), 0) => None,
            (Some(_), 1) => Some(write(format!("initrd{i}"), Vec::new())),
            (Some(_), _) => {
                let n = rng.below(300_000) as usize;
                Some(write(format!("initrd{i}"), rng.bytes(n)))
            }
            (None, _) => None,
        };
        let append = kernel.as_ref().and_then(|_| match rng.below(4) {
            0 => None,
            1 => Some(String::new()),
            _ => {
                let n = 1 + rng.below(120) as usize;
                Some(
                    (0..n)
                        .map(|_| (b' ' + rng.below(95) as u8) as char)
                        .collect::<String>(),
                )
            }
        });
        let vmm = [VmmType::Qemu, VmmType::Qemu, VmmType::Ec2, VmmType::Gce][rng.below(4) as usize];
        let vcpu = match (vmm, rng.below(5)) {
            (VmmType::Qemu, 0) => Vcpu::Sig(rng.next() as u32 & 0x0fff_3fff),
            (_, 0) => Vcpu::None,
            _ => Vcpu::Named(VCPU_TYPES[rng.below(VCPU_TYPES.len() as u64) as usize]),
        };
        let mut c = Case {
            mode: Mode::Snp,
            ovmf: amdsev.clone(),
            ovmf_seed: None,
            kernel,
            initrd,
            append,
            vcpus: 1 + rng.below(64) as u32,
            vcpu,
            vmm,
            features: features[rng.below(features.len() as u64) as usize],
        };
        match i % 12 {
            // Full-size Debian OVMF (no kernel hashes): measured without a kernel...
            3 | 9 => {
                c.ovmf = debian.clone();
                c.kernel = None;
                c.initrd = None;
                c.append = None;
            }
            // ...or its precomputed digest seeds a kernel launch measured with the AmdSev metadata.
            7 => c.ovmf_seed = Some(debian_seed.to_hex()),
            11 if i < 24 => {
                c.mode = Mode::SnpOvmfHash;
                c.ovmf = if i < 12 {
                    debian.clone()
                } else {
                    amdsev.clone()
                };
            }
            // Legacy modes on the AmdSev fixture.
            5 if i < 30 => c.mode = Mode::SevEs,
            1 if i < 30 => c.mode = Mode::Sev,
            _ => {}
        }
        if matches!(c.mode, Mode::SevEs) && !matches!(c.vcpu, Vcpu::Named(_)) {
            c.vcpu = Vcpu::Named("EPYC-v4");
        }
        cases.push(c);
    }
    cases
}

#[test]
fn matches_sev_snp_measure_on_generated_launches() {
    let tool = reference_tool();
    let dir = tempfile::tempdir().unwrap();
    let cases = generate(dir.path());
    let snp = cases
        .iter()
        .filter(|c| matches!(c.mode, Mode::Snp | Mode::SnpOvmfHash))
        .count();
    assert!(snp >= 50, "only {snp} SNP cases");
    let argvs: Vec<Vec<String>> = cases.iter().map(Case::argv).collect();
    let reference = run_reference(&tool, &argvs);
    let mut mismatches = Vec::new();
    for (case, want) in cases.iter().zip(&reference) {
        let got = case.podvm();
        if &got != want {
            mismatches.push(format!("{:?}\n  podvm {got}\n  ref   {want}", case.argv()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
