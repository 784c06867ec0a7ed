//! The QEMU backend: `qemu-system-x86_64 -M microvm` (or q35) with direct kernel boot, shareable
//! memfd guest memory, the console in a log file, and virtio-vsock through the vhost-user backend
//! `vhost-device-vsock`, which exposes the hybrid vsock socket.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Accel, CONSOLE_LOG, Hypervisor, LaunchedVm, Machine, VSOCK_SOCKET, VmSpec};
use crate::VmError;
use crate::process::OwnedChild;
use crate::state::StateDir;
use crate::vsock::HybridVsock;

/// The guest's vsock CID (each VM has its own vsock backend, so every guest can use the same).
pub const GUEST_CID: u32 = 3;
/// The vhost-user socket between QEMU and the vsock backend, inside the state directory.
const VHOST_USER_SOCKET: &str = "vhost-vsock.sock";
/// How long the vsock backend may take to create its socket.
const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The QEMU backend and the binaries it runs.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
}

impl QemuBackend {
    /// Finds `qemu-system-x86_64` (`PODVM_QEMU` or `PATH`) and `vhost-device-vsock`
    /// (`PODVM_VHOST_VSOCK`, `PATH`, or the copy `scripts/setup` installs in the cache).
    pub fn from_environment() -> Result<Self, VmError> {
        let qemu = crate::paths::find_executable("PODVM_QEMU", "qemu-system-x86_64", &[]).ok_or(
            VmError::MissingBinary {
                what: "QEMU",
                name: "qemu-system-x86_64",
                hint: "run scripts/setup (apt-get install qemu-system-x86) or set PODVM_QEMU",
            },
        )?;
        let fallback = crate::paths::cache_dir().join("vhost-device-vsock/bin/vhost-device-vsock");
        let vhost_vsock =
            crate::paths::find_executable("PODVM_VHOST_VSOCK", "vhost-device-vsock", &[fallback])
                .ok_or(VmError::MissingBinary {
                what: "the vsock backend",
                name: "vhost-device-vsock",
                hint: "run scripts/setup (it installs vhost-device-vsock) or set PODVM_VHOST_VSOCK",
            })?;
        Ok(QemuBackend { qemu, vhost_vsock })
    }

    /// The kernel command line for `machine` and `accel`, followed by `extra`.
    pub fn kernel_cmdline(machine: Machine, accel: Accel, extra: &str) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
        ];
        if machine == Machine::Microvm {
            words.push("pci=off".into());
            if accel == Accel::Tcg {
                // microvm has no HPET or PM timer: under TCG the TSC calibration fails in about
                // one boot in three unless the frequency is given (ENVIRONMENT.md).
                if let Some(khz) = host_tsc_khz() {
                    words.push(format!("tsc_early_khz={khz}"));
                }
            }
        }
        if !extra.trim().is_empty() {
            words.push(extra.trim().to_string());
        }
        words.join(" ")
    }

    /// The arguments every launch shares: machine, accelerator, CPUs, memory, kernel.
    fn base_args(spec: &VmSpec) -> Vec<OsString> {
        let memory_backend = format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            spec.memory_mib
        );
        let machine = match spec.machine {
            Machine::Microvm => "microvm,memory-backend=mem",
            Machine::Q35 => "q35,memory-backend=mem",
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str| args.push(a.into());
        push("-nodefaults");
        push("-no-user-config");
        push("-display");
        push("none");
        push("-no-reboot");
        push("-M");
        push(machine);
        push("-accel");
        push(spec.accel.as_str());
        if spec.accel == Accel::Kvm {
            push("-cpu");
            push("host");
        }
        push("-smp");
        push(&spec.vcpus.to_string());
        push("-m");
        push(&format!("{}M", spec.memory_mib));
        push("-object");
        push(&memory_backend);
        push("-append");
        push(&spec.cmdline);
        args.push("-kernel".into());
        args.push(spec.kernel.clone().into_os_string());
        args.push("-initrd".into());
        args.push(spec.initrd.clone().into_os_string());
        args
    }

    /// Boots `spec` without any podvm device, with the console on a pipe, and returns how long it
    /// took until the console printed a line containing `marker` (`None`: it exited or `deadline`
    /// passed first). The baseline of `podvm bench boot`, and the KVM probe.
    pub fn bare_boot(
        &self,
        spec: &VmSpec,
        marker: &str,
        deadline: Duration,
    ) -> Result<Option<Duration>, VmError> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(Self::base_args(spec)).args(["-serial", "stdio"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut qemu = OwnedChild::spawn("QEMU", cmd).map_err(|source| VmError::Spawn {
            what: "QEMU",
            source,
        })?;
        let stdout = qemu.take_stdout().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let marker = marker.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(&marker) {
                    let _ = tx.send(started.elapsed());
                    return;
                }
            }
        });
        let reached = rx.recv_timeout(deadline).ok();
        if reached.is_some() {
            // The marker init powers off by itself; give it a moment, then make sure.
            let _ = qemu.wait_timeout(Duration::from_secs(5));
        }
        drop(qemu);
        Ok(reached)
    }
}

impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn choose_accel(
        &self,
        config: &crate::vm::VmConfig,
        kernel_format: crate::guest_image::validate::KernelFormat,
    ) -> (Accel, String) {
        crate::accel::resolve(
            config.accel,
            self,
            &config.kernel,
            kernel_format,
            &config.marker_initrd,
            &config.cache_dir,
        )
    }

    fn kernel_cmdline(&self, machine: Machine, accel: Accel, extra: &str, _: bool) -> String {
        Self::kernel_cmdline(machine, accel, extra)
    }

    fn launch(&self, spec: &VmSpec, state: &StateDir) -> Result<LaunchedVm, VmError> {
        let started = Instant::now();
        let vhost_socket = state.file(VHOST_USER_SOCKET);
        let vsock = HybridVsock::new(state.file(VSOCK_SOCKET));

        // 1. The vsock backend; it must be listening before QEMU starts.
        let backend_log = state.file("vsock-backend.log");
        let mut cmd = Command::new(&self.vhost_vsock);
        cmd.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_socket.display(),
            vsock.uds_path().display()
        ));
        cmd.stdin(Stdio::null())
            .stdout(log_file(&backend_log)?)
            .stderr(log_file(&backend_log)?);
        let mut backend =
            OwnedChild::spawn("vhost-device-vsock", cmd).map_err(|source| VmError::Spawn {
                what: "vhost-device-vsock",
                source,
            })?;
        state
            .record_pid("vsock-backend", backend.pid())
            .map_err(|e| VmError::State(e.to_string()))?;
        while !vhost_socket.exists() {
            if let Some(status) = backend.try_wait().map_err(|source| VmError::Spawn {
                what: "vhost-device-vsock",
                source,
            })? {
                return Err(VmError::ProcessExited {
                    what: "vhost-device-vsock",
                    status: status.to_string(),
                    detail: last_line(&backend_log),
                });
            }
            if started.elapsed() > BACKEND_READY_TIMEOUT {
                return Err(VmError::ProcessExited {
                    what: "vhost-device-vsock",
                    status: format!("no socket after {}s", BACKEND_READY_TIMEOUT.as_secs()),
                    detail: last_line(&backend_log),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let helpers_ready = started.elapsed();

        // 2. QEMU.
        let vmm_log = state.file("qemu.log");
        let mut cmd = Command::new(&self.qemu);
        cmd.args(Self::base_args(spec));
        cmd.arg("-name").arg(format!("podvm-{}", state.id()));
        cmd.arg("-chardev").arg(format!(
            "file,id=console,path={}",
            state.file(CONSOLE_LOG).display()
        ));
        cmd.args(["-serial", "chardev:console"]);
        cmd.arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vhost_socket.display()));
        let device = match spec.machine {
            Machine::Microvm => "vhost-user-vsock-device,chardev=vsock",
            Machine::Q35 => "vhost-user-vsock-pci,chardev=vsock",
        };
        cmd.args(["-device", device]);
        // Entropy for the guest: without it, its first getrandom() (a TLS or TEE key) can block
        // for a long time under TCG. The guest kernel mixes it in; in a TEE it is one source of
        // several (RDRAND/RDSEED are the guest's own).
        cmd.args(["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        cmd.args([
            "-device",
            match spec.machine {
                Machine::Microvm => "virtio-rng-device,rng=rng0",
                Machine::Q35 => "virtio-rng-pci,rng=rng0",
            },
        ]);
        if let Some(disk) = &spec.initdata_disk {
            let mut drive = OsString::from("file=");
            drive.push(disk.as_os_str());
            drive.push(",if=none,id=initdata,format=raw,readonly=on");
            cmd.arg("-drive").arg(drive);
            let device = match spec.machine {
                Machine::Microvm => "virtio-blk-device,drive=initdata",
                Machine::Q35 => "virtio-blk-pci,drive=initdata",
            };
            cmd.args(["-device", device]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&vmm_log)?);
        let vmm = OwnedChild::spawn("QEMU", cmd).map_err(|source| VmError::Spawn {
            what: "QEMU",
            source,
        })?;
        state
            .record_pid("qemu", vmm.pid())
            .map_err(|e| VmError::State(e.to_string()))?;
        Ok(LaunchedVm {
            vmm,
            helpers: vec![backend],
            vsock,
            vmm_log,
            helpers_ready,
        })
    }
}

pub(crate) fn log_file(path: &Path) -> Result<File, VmError> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| VmError::State(format!("cannot create {}: {e}", path.display())))
}

/// The last non-empty line of a log file (for one-line errors).
pub fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// The host's TSC frequency in kHz: `PODVM_TSC_KHZ`, else `cpu MHz` of /proc/cpuinfo (constant
/// on hosts with `constant_tsc`).
pub fn host_tsc_khz() -> Option<u64> {
    if let Some(khz) = std::env::var("PODVM_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(khz);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz_khz(&cpuinfo)
}

fn parse_cpu_mhz_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_frequency_comes_from_cpuinfo() {
        assert_eq!(
            parse_cpu_mhz_khz("processor\t: 0\ncpu MHz\t\t: 2100.000\n"),
            Some(2_100_000)
        );
        assert_eq!(
            parse_cpu_mhz_khz("cpu MHz\t\t: 2999.9996\n"),
            Some(3_000_000)
        );
        assert_eq!(parse_cpu_mhz_khz("processor: 0\n"), None);
    }

    #[test]
    fn microvm_under_tcg_gets_the_tsc_quirk_and_q35_does_not() {
        let microvm = QemuBackend::kernel_cmdline(Machine::Microvm, Accel::Tcg, "podvm.log=debug");
        assert!(microvm.starts_with("console=ttyS0 "), "{microvm}");
        assert!(microvm.ends_with(" podvm.log=debug"), "{microvm}");
        if host_tsc_khz().is_some() {
            assert!(microvm.contains("tsc_early_khz="), "{microvm}");
        }
        let q35 = QemuBackend::kernel_cmdline(Machine::Q35, Accel::Tcg, "");
        assert!(
            !q35.contains("tsc_early_khz") && !q35.contains("pci=off"),
            "{q35}"
        );
    }
}
