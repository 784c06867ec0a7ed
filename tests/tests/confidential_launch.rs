//! Emulated SEV-SNP launches in real VMs: the initdata disk, its digest in HOST_DATA, the agent's
//! check at start, and the guest's evidence from the host's emulated PSP over vsock.

use podvm_e2e::{emulated_psp_dir, guest_image};
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::launch::{EMULATED_FIRMWARE, TeeLaunch};
use podvm_host_runtime::vm::{Vm, VmConfig};
use podvm_policy::initdata::{Algorithm, InitData};

fn initdata(marker: &str) -> InitData {
    InitData::build(
        Algorithm::Sha256,
        &[("cdh.toml".to_string(), format!("[image]\n# {marker}\n"))],
    )
    .unwrap()
}

fn config(state: &std::path::Path, logs: &std::path::Path, psp: &std::path::Path) -> VmConfig {
    let image = guest_image();
    let mut config = VmConfig::with_guest_image(&image);
    config.memory_mib = 384;
    config.state_root = state.to_path_buf();
    config.log_dir = logs.to_path_buf();
    config.boot_timeout = std::time::Duration::from_secs(90);
    config.tee = TeeLaunch::SnpEmulated {
        psp_dir: psp.to_path_buf(),
        firmware: image.vmlinux().with_file_name(EMULATED_FIRMWARE),
    };
    config
}

#[tokio::test]
async fn bound_initdata_boots_and_the_guest_reports_snp_emulated() {
    let (state, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = config(state.path(), logs.path(), &emulated_psp_dir());
    config.initdata = Some(initdata("good"));
    let qemu = QemuBackend::from_environment().unwrap();
    let vm = Vm::start(&config, &qemu)
        .await
        .expect("the agent accepts initdata whose digest the launch bound");
    let details = vm.agent().guest_details().await.unwrap();
    assert_eq!(details.tee, "snp-emulated");
    let refvals = vm
        .reference_values()
        .expect("a TEE launch has reference values");
    assert!(refvals.measurements.snp_launch_measurement.is_some());
    assert!(
        vm.spec().cmdline.contains("podvm.initdata=/dev/vda"),
        "{}",
        vm.spec().cmdline
    );
    vm.stop().await;
}

#[tokio::test]
async fn tampered_initdata_makes_the_agent_refuse_to_start() {
    let (state, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = config(state.path(), logs.path(), &emulated_psp_dir());
    config.initdata = Some(initdata("good"));
    let qemu = QemuBackend::from_environment().unwrap();
    // The launch binds the digest of one initdata; the host then attaches another, one byte apart.
    let plan = Vm::plan(&config, &qemu).unwrap();
    config.initdata = Some(initdata("gooe"));
    let err = Vm::start_planned(&config, plan, &qemu)
        .await
        .err()
        .expect("the agent must refuse initdata that does not match HOST_DATA");
    let text = err.to_string();
    // The error names the kept console; the console says why the agent stopped.
    let console = std::fs::read_dir(logs.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_else(|| panic!("no console kept for {text}"));
    assert!(
        console.contains("initdata does not match the TEE evidence: HOST_DATA is"),
        "{text}\n{console}"
    );
}
