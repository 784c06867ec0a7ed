//! The built-in backend: each VM is a `podvm vmm run` process — podvm's own KVM microVM monitor
//! ([`super::kvm`]) — with the kernel and initrd loaded directly, COM1 as the console (its stdout
//! goes to `<state>/console.log`), the vsock device's hybrid socket at `<state>/vsock.sock` (bound
//! by the monitor itself: no `vhost-device-vsock`) and the initdata disk as a read-only
//! virtio-blk device. A process per VM, like QEMU: a crash takes one pod, pidfds and `podvm
//! cleanup` work unchanged, and the monitor can confine itself (seccomp, an unprivileged user)
//! without touching the caller.
//!
//! Devices are virtio-mmio, announced on the kernel command line
//! (`virtio_mmio.device=4K@0xd0000000:5` …, [`super::kvm::platform`]): vsock in slot 0, the
//! initdata disk in slot 1, so the guest sees it as `/dev/vda` as it does under QEMU.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::kvm::platform::VirtioMmioSlot;
use super::{Accel, CONSOLE_LOG, Hypervisor, LaunchedVm, Machine, VSOCK_SOCKET, VmSpec};
use crate::VmError;
use crate::guest_image::validate::KernelFormat;
use crate::process::OwnedChild;
use crate::state::StateDir;
use crate::vsock::HybridVsock;

/// The guest's vsock CID (each VM has its own monitor, so every guest can use the same).
pub const GUEST_CID: u32 = 3;
/// The monitor's own diagnostics inside the state directory.
pub const VMM_LOG: &str = "vmm.log";
/// How long the monitor may take to bind the vsock socket (VM created, kernel loaded).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The built-in backend and the `podvm` binary that runs the monitor.
#[derive(Debug, Clone)]
pub struct BuiltinBackend {
    pub podvm: PathBuf,
}

impl BuiltinBackend {
    /// Finds the `podvm` binary: `PODVM_BIN`, this process if it is `podvm`, or `PATH`.
    pub fn from_environment() -> Result<Self, VmError> {
        let this = std::env::current_exe()
            .ok()
            .filter(|p| p.file_name().is_some_and(|n| n == "podvm"));
        let podvm = crate::paths::find_executable("PODVM_BIN", "podvm", &[])
            .or(this)
            .ok_or(VmError::MissingBinary {
                what: "the built-in monitor",
                name: "podvm",
                hint: "run scripts/setup (it installs /usr/local/bin/podvm) or set PODVM_BIN",
            })?;
        Ok(BuiltinBackend { podvm })
    }

    /// The kernel command line: console, no PCI, the virtio-mmio devices, then `extra`.
    pub fn cmdline(extra: &str, initdata_disk: bool) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
            "pci=off".into(),
        ];
        let devices = 1 + usize::from(initdata_disk);
        for i in 0..devices {
            // Slots 0 and 1 always exist (19 are available).
            if let Ok(arg) = VirtioMmioSlot::new(i).and_then(|s| s.cmdline_arg()) {
                words.push(arg);
            }
        }
        if !extra.trim().is_empty() {
            words.push(extra.trim().to_string());
        }
        words.join(" ")
    }

    /// The `podvm vmm run` arguments for `spec` in `state`.
    pub fn vmm_args(spec: &VmSpec, state: &StateDir) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["vmm".into(), "run".into()];
        let mut push = |k: &str, v: std::ffi::OsString| {
            args.push(k.into());
            args.push(v);
        };
        push("--kernel", spec.kernel.clone().into());
        push("--initrd", spec.initrd.clone().into());
        push("--cmdline", spec.cmdline.clone().into());
        push("--memory-mib", spec.memory_mib.to_string().into());
        push("--vcpus", spec.vcpus.to_string().into());
        push("--vsock-cid", GUEST_CID.to_string().into());
        push("--vsock-socket", state.file(VSOCK_SOCKET).into());
        if let Some(disk) = &spec.initdata_disk {
            push("--disk-ro", disk.clone().into());
        }
        args
    }
}

impl Hypervisor for BuiltinBackend {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn choose_accel(&self, _: &crate::vm::VmConfig, _: KernelFormat) -> (Accel, String) {
        (Accel::Kvm, "the built-in monitor runs on KVM only".into())
    }

    fn kernel_cmdline(&self, _: Machine, _: Accel, extra: &str, initdata_disk: bool) -> String {
        Self::cmdline(extra, initdata_disk)
    }

    fn launch(&self, spec: &VmSpec, state: &StateDir) -> Result<LaunchedVm, VmError> {
        if spec.machine != Machine::Microvm {
            return Err(VmError::InvalidConfig(format!(
                "the built-in monitor has no {} machine (no PCI); use --machine microvm or the qemu hypervisor",
                spec.machine.as_str()
            )));
        }
        let started = Instant::now();
        let vsock = HybridVsock::new(state.file(VSOCK_SOCKET));
        let vmm_log = state.file(VMM_LOG);
        let mut cmd = Command::new(&self.podvm);
        cmd.args(Self::vmm_args(spec, state));
        cmd.stdin(Stdio::null())
            .stdout(super::qemu::log_file(&state.file(CONSOLE_LOG))?)
            .stderr(super::qemu::log_file(&vmm_log)?);
        let mut vmm = OwnedChild::spawn("podvm vmm", cmd).map_err(|source| VmError::Spawn {
            what: "podvm vmm",
            source,
        })?;
        state
            .record_pid("vmm", vmm.pid())
            .map_err(|e| VmError::State(e.to_string()))?;
        // The monitor binds the vsock socket once the VM exists and the kernel is loaded.
        while !vsock.uds_path().exists() {
            if let Some(status) = vmm.try_wait().map_err(|source| VmError::Spawn {
                what: "podvm vmm",
                source,
            })? {
                return Err(VmError::ProcessExited {
                    what: "podvm vmm",
                    status: status.to_string(),
                    detail: super::qemu::last_line(&vmm_log),
                });
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(VmError::ProcessExited {
                    what: "podvm vmm",
                    status: format!("no vsock socket after {}s", READY_TIMEOUT.as_secs()),
                    detail: super::qemu::last_line(&vmm_log),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(LaunchedVm {
            vmm,
            helpers: Vec::new(),
            vsock,
            vmm_log,
            helpers_ready: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_announces_vsock_and_the_initdata_disk_in_their_slots() {
        assert_eq!(
            BuiltinBackend::cmdline("podvm.tee=none", false),
            "console=ttyS0 quiet panic=-1 pci=off virtio_mmio.device=4K@0xd0000000:5 podvm.tee=none"
        );
        assert_eq!(
            BuiltinBackend::cmdline("", true),
            "console=ttyS0 quiet panic=-1 pci=off virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
