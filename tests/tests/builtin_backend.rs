//! The built-in backend (`podvm vmm run`, podvm's own KVM monitor) launching the real guest
//! image: as far as this machine can take it. Its /dev/kvm (nested PVM) cannot boot Linux, so
//! the agent never connects here; what is checked is everything before that — the backend
//! starts the monitor process with the guest image's kernel, initramfs, command line (virtio-mmio
//! devices announced), the vsock device and the initdata disk; the monitor loads them into a KVM
//! VM, binds the hybrid vsock socket and runs; dropping the launch kills it.
//! Booting to the agent needs a KVM that boots Linux (`hypervisor/kvm/README.md`).

use podvm_e2e::{alive, guest_image, wait_gone};
use podvm_host_runtime::guest_image::validate::KernelFormat;
use podvm_host_runtime::hypervisor::builtin::BuiltinBackend;
use podvm_host_runtime::hypervisor::{Accel, Hypervisor, Machine, VmSpec};
use podvm_host_runtime::state::StateDir;

#[test]
fn the_builtin_backend_starts_the_monitor_with_the_guest_image_and_its_devices() {
    let image = guest_image();
    let root = tempfile::tempdir().unwrap();
    let state = StateDir::create(root.path(), "vm-builtin").unwrap();
    let initdata = state.file("initdata.img");
    std::fs::write(&initdata, vec![0u8; 4096]).unwrap();
    let backend =
        BuiltinBackend::from_environment().expect("the podvm binary (scripts/test sets PODVM_BIN)");
    let spec = VmSpec {
        vcpus: 2,
        memory_mib: 256,
        kernel: image.vmlinux(),
        kernel_format: KernelFormat::PvhElf,
        initrd: image.initramfs(),
        cmdline: backend.kernel_cmdline(Machine::Microvm, Accel::Kvm, "podvm.tee=none", true),
        machine: Machine::Microvm,
        accel: Accel::Kvm,
        initdata_disk: Some(initdata),
    };
    assert!(
        spec.cmdline
            .contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "{}",
        spec.cmdline
    );
    let launched = backend
        .launch(&spec, &state)
        .unwrap_or_else(|e| panic!("the monitor did not come up: {e}"));
    // `launch` returns once the monitor has built the VM (kernel, initramfs and disk loaded,
    // devices attached) and bound the vsock socket.
    assert!(launched.vsock.uds_path().exists());
    let pid = launched.vmm.pid();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        alive(pid),
        "the monitor exited early: {}",
        std::fs::read_to_string(&launched.vmm_log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&launched.vmm_log).unwrap_or_default();
    assert!(!log.contains("error"), "{log}");
    drop(launched);
    assert!(
        wait_gone(&[pid], 5).is_empty(),
        "the monitor outlived its launch"
    );
}

#[test]
fn the_builtin_backend_refuses_q35() {
    let root = tempfile::tempdir().unwrap();
    let state = StateDir::create(root.path(), "vm-q35").unwrap();
    let image = guest_image();
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        kernel: image.vmlinux(),
        kernel_format: KernelFormat::PvhElf,
        initrd: image.initramfs(),
        cmdline: String::new(),
        machine: Machine::Q35,
        accel: Accel::Kvm,
        initdata_disk: None,
    };
    let err = BuiltinBackend::from_environment()
        .unwrap()
        .launch(&spec, &state)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the built-in monitor has no q35 machine (no PCI); use --machine microvm or the qemu hypervisor"
    );
}
