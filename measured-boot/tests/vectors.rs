//! Every case of ../shared/testdata/snp/measurement/vectors.json (values from sev-snp-measure's
//! tests/test_guest.py), through the public launch-plan API.

use podvm_measured_boot::{Error, Firmware, LaunchPlanBuilder, Measurement, Mode, VmmType};
use serde_json::Value;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement"
);

fn run_case(case: &Value, empty: &std::path::Path) -> Result<Measurement, Error> {
    let s = |k: &str| case[k].as_str();
    let fw = Firmware::from_path(format!("{DIR}/{}", s("ovmf").unwrap()))?;
    let mode: Mode = s("mode").unwrap().parse()?;
    let mut b = LaunchPlanBuilder::new().firmware(fw);
    if let Some(n) = case["vcpus"].as_u64() {
        b = b.vcpus(n as u32);
    }
    if let Some(t) = s("vcpu_type") {
        b = b.vcpu_type(t);
    }
    if let Some(v) = s("vmm") {
        b = b.vmm(v.parse::<VmmType>()?);
    }
    let file = |v: &str| {
        assert_eq!(v, "empty", "vectors only use empty files");
        empty.to_path_buf()
    };
    if let Some(k) = s("kernel") {
        b = b.kernel_file(file(k));
    }
    if let Some(i) = s("initrd") {
        b = b.initrd_file(file(i));
    }
    if let Some(a) = s("append") {
        b = b.cmdline(a);
    }
    if let Some(g) = s("guest_features") {
        b = b.guest_features(u64::from_str_radix(g.trim_start_matches("0x"), 16).unwrap());
    }
    if let Some(h) = s("ovmf_hash") {
        b = b.ovmf_digest(h.parse()?);
    }
    b.measure(mode)
}

#[test]
fn all_published_vectors() {
    let v: Value =
        serde_json::from_slice(&std::fs::read(format!("{DIR}/vectors.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 11);
    for case in cases {
        let id = &case["id"];
        let got = run_case(case, &empty);
        match &case["expected"] {
            Value::String(hex) => {
                let got = got.unwrap_or_else(|e| panic!("case {id}: {e}"));
                assert_eq!(&got.to_hex(), hex, "case {id}");
            }
            Value::Object(o) => {
                let want = o["error"].as_str().unwrap();
                let err = got.expect_err(&format!("case {id} must fail")).to_string();
                assert!(err.contains(want), "case {id}: '{err}' lacks '{want}'");
                assert!(err.contains("ovmf_OvmfX64_suffix.bin"), "case {id}: {err}");
                assert!(!err.contains('\n'), "case {id}: one line");
            }
            other => panic!("case {id}: unexpected expectation {other}"),
        }
    }
}

#[test]
fn seeded_and_full_computation_agree() {
    let fw = Firmware::from_path(format!("{DIR}/ovmf_AmdSev_suffix.bin")).unwrap();
    let seed = podvm_measured_boot::ovmf_digest(&fw);
    let base = || {
        LaunchPlanBuilder::new()
            .firmware(fw.clone())
            .vcpus(3)
            .vcpu_sig(0x00a0_0f11)
            .guest_features(0x21)
    };
    let full = base().build().unwrap();
    let seeded = base().ovmf_digest(seed).build().unwrap();
    assert_eq!(full.measure(), seeded.measure());
    assert_eq!(full.pages().len(), seeded.pages().len() + 1);
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let fw = || Firmware::from_path(format!("{DIR}/ovmf_AmdSev_suffix.bin")).unwrap();
    let one_line = |e: Error, needles: &[&str]| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        for n in needles {
            assert!(s.contains(n), "'{s}' lacks '{n}'");
        }
    };
    let e = LaunchPlanBuilder::new()
        .firmware(fw())
        .vcpus(0)
        .vcpu_type("EPYC")
        .build()
        .unwrap_err();
    one_line(e, &["vCPU", "--vcpus"]);
    let e = LaunchPlanBuilder::new()
        .firmware(fw())
        .vcpus(1)
        .vcpu_type("Pentium-II")
        .build()
        .unwrap_err();
    one_line(e, &["Pentium-II", "EPYC-Milan"]);
    let e = LaunchPlanBuilder::new()
        .firmware(fw())
        .vcpus(1)
        .build()
        .unwrap_err();
    one_line(e, &["--vcpu-type"]);
    let data = std::fs::read(format!("{DIR}/ovmf_AmdSev_suffix.bin")).unwrap();
    let e = Firmware::from_bytes("half.fd", data[2048..].to_vec()).unwrap_err();
    one_line(e, &["half.fd", "truncated"]);
    let fw0 = Firmware::from_bytes("blank.fd", vec![0u8; 8192]).unwrap();
    let e = LaunchPlanBuilder::new()
        .firmware(fw0)
        .vcpus(1)
        .vcpu_type("EPYC")
        .build()
        .unwrap_err();
    one_line(e, &["blank.fd", "footer table"]);
    let e = LaunchPlanBuilder::new()
        .firmware(fw())
        .vcpus(1)
        .vcpu_type("EPYC")
        .kernel_file("/nonexistent/vmlinuz")
        .build()
        .unwrap_err();
    one_line(e, &["/nonexistent/vmlinuz"]);
    let e = LaunchPlanBuilder::new()
        .firmware(fw())
        .vcpus(1)
        .vcpu_type("EPYC")
        .initrd_file("/tmp/x")
        .build()
        .unwrap_err();
    one_line(e, &["--kernel"]);
}
