//! `podvm vm run --json` and `podvm demo` through the real binary.

use podvm_e2e::podvm;

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
fn demo_narrates_a_boot() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out = podvm(state.path(), logs.path())
        .args(["demo", "--memory", "256"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ready: the agent answered")
            && stdout.contains("(PID 1)")
            && stdout.contains("powered off when asked"),
        "{stdout}"
    );
}
