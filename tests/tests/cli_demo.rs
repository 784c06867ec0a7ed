//! `podvm vm run --json` and `podvm demo` through the real binary.

use podvm_e2e::{emulated_psp_dir, podvm};
use podvm_host_runtime::testbed::SECRET;

#[test]
fn vm_run_json_reports_the_guest_and_the_timings() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out = podvm(state.path(), logs.path())
        .args(["vm", "run", "--json", "--vcpus", "1", "--memory", "256"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["guest"]["online_vcpus"], 1);
    assert_eq!(report["guest"]["agent_is_pid1"], true);
    assert_eq!(report["stop"]["graceful"], true);
    let ready = report["timings_ms"]["agent_ready_ms"].as_f64().unwrap();
    let connected = report["timings_ms"]["agent_connected_ms"].as_f64().unwrap();
    assert!(ready >= connected && connected > 0.0, "{report}");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

#[test]
fn demo_runs_the_confidential_pod_and_the_kbs_names_the_tampered_byte() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out = podvm(state.path(), logs.path())
        .env("PODVM_EMULATED_PSP_DIR", emulated_psp_dir())
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "SNP launch measurement: ",
        // The decrypted image's file, printed by the container in the guest.
        SECRET,
        "PID 1 in its own namespace",
        "attestation: accepted by the KBS",
        "attestation + key release",
        "measurement mismatch",
        "the kernel command line differs at byte",
        "\"podvm.demo=2\" instead of \"podvm.demo=1\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    // The registry, the KBS, both VMs and their state are gone.
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}
