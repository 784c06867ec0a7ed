//! A real VM: boot, call the agent both ways over vsock, shut down, and nothing is left.

use std::time::Duration;

use podvm_e2e::{alive, guest_image, wait_gone};
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::vm::{Vm, VmConfig};
use podvm_protocols::AGENT_PORT;

#[tokio::test]
async fn a_vm_boots_its_agent_answers_and_nothing_is_left_after_stop() {
    let state_root = tempfile::tempdir().unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::with_guest_image(&guest_image());
    config.vcpus = 2;
    config.memory_mib = 384;
    config.state_root = state_root.path().to_path_buf();
    config.log_dir = log_dir.path().to_path_buf();
    let qemu = QemuBackend::from_environment()
        .expect("QEMU and vhost-device-vsock (scripts/setup installs them)");

    let vm = Vm::start(&config, &qemu)
        .await
        .expect("the VM boots and its agent answers");
    let state_dir = vm.state_dir().to_path_buf();
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "QEMU and the vsock backend");
    assert!(pids.iter().all(|&p| alive(p)));
    let t = vm.timings();
    assert!(
        t.vmm_spawned_ms <= t.agent_connected_ms && t.agent_connected_ms <= t.agent_ready_ms,
        "{t:?}"
    );

    // The guest-initiated connection (how the agent announced itself).
    let details = vm.agent().guest_details().await.unwrap();
    assert_eq!(details.online_vcpus, 2);
    let mib = details.memory_total_bytes >> 20;
    assert!(
        (300..=384).contains(&mib),
        "MemTotal {mib} MiB for a 384 MiB guest"
    );
    assert_eq!(details.tee, "none");
    assert!(details.agent_details.init_daemon, "the agent is PID 1");
    assert!(
        details.kernel_release.starts_with("6.12"),
        "{}",
        details.kernel_release
    );
    assert!(
        details.agent_ready_uptime_us >= details.agent_start_uptime_us
            && details.agent_start_uptime_us > 0
    );
    assert_eq!(
        vm.agent().version().await.unwrap(),
        env!("CARGO_PKG_VERSION")
    );

    // A host-initiated connection (CONNECT 1024) to the agent's listener, after boot.
    let stream = vm
        .vsock()
        .connect(AGENT_PORT)
        .await
        .expect("CONNECT to the agent port");
    let second = podvm_host_runtime::agent_client::AgentClient::new(stream)
        .with_timeout(Duration::from_secs(20));
    second.check().await.unwrap();
    assert_eq!(second.guest_details().await.unwrap().online_vcpus, 2);

    let report = vm.stop().await;
    assert!(
        report.graceful,
        "the guest did not power off when asked: {report:?}"
    );
    assert_eq!(
        wait_gone(&pids, 5),
        Vec::<u32>::new(),
        "processes left after stop"
    );
    assert!(
        !state_dir.exists(),
        "state directory left: {}",
        state_dir.display()
    );
    assert_eq!(
        std::fs::read_dir(state_root.path()).unwrap().count(),
        0,
        "something left in the state root"
    );
}

#[tokio::test]
async fn the_q35_machine_boots_with_virtio_pci_vsock() {
    let state_root = tempfile::tempdir().unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::with_guest_image(&guest_image());
    config.machine = podvm_host_runtime::hypervisor::Machine::Q35;
    config.accel = podvm_host_runtime::accel::AccelChoice::Tcg;
    config.memory_mib = 256;
    config.state_root = state_root.path().to_path_buf();
    config.log_dir = log_dir.path().to_path_buf();
    let qemu = QemuBackend::from_environment().unwrap();
    let vm = Vm::start(&config, &qemu)
        .await
        .expect("q35 boots and its agent answers");
    assert!(
        !vm.spec().cmdline.contains("tsc_early_khz"),
        "q35 needs no TSC quirk: {}",
        vm.spec().cmdline
    );
    assert_eq!(vm.agent().guest_details().await.unwrap().online_vcpus, 1);
    let pids = vm.pids();
    assert!(vm.stop().await.graceful);
    assert!(wait_gone(&pids, 5).is_empty());
    assert_eq!(std::fs::read_dir(state_root.path()).unwrap().count(), 0);
}
