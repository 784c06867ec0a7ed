//! Hypervisor backends. A backend starts the VMM process(es) for a [`VmSpec`] and exposes the
//! guest's vsock device as a hybrid vsock socket at `<state dir>/vsock.sock` (see
//! [`crate::vsock`]); everything above this module is backend-agnostic.

pub mod builtin;
pub mod confidential;
pub mod kvm;
pub mod qemu;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::guest_image::validate::KernelFormat;
use crate::process::OwnedChild;
use crate::state::StateDir;
use crate::vsock::HybridVsock;

/// The hybrid vsock socket's name inside the state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The guest console's log file inside the state directory.
pub const CONSOLE_LOG: &str = "console.log";

/// The machine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// QEMU `microvm`: no PCI, no firmware tables beyond what Linux needs (default).
    Microvm,
    /// QEMU `q35` with virtio-pci.
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// The CPU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub kernel_format: KernelFormat,
    pub initrd: PathBuf,
    /// The complete kernel command line.
    pub cmdline: String,
    pub machine: Machine,
    pub accel: Accel,
    /// A raw disk image attached read-only as the first virtio-blk disk (`/dev/vda`).
    pub initdata_disk: Option<PathBuf>,
}

/// A launched VM: the VMM process, its helper processes, and the host side of its vsock device.
/// Dropping it kills them all (VMM first).
#[derive(Debug)]
pub struct LaunchedVm {
    pub vmm: OwnedChild,
    pub helpers: Vec<OwnedChild>,
    pub vsock: HybridVsock,
    /// The VMM's own diagnostics (stderr).
    pub vmm_log: PathBuf,
    /// How long the helpers took to be ready before the VMM could start.
    pub helpers_ready: Duration,
}

impl LaunchedVm {
    /// The first helper or VMM process that has exited, with its status.
    pub fn exited(&mut self) -> std::io::Result<Option<(&'static str, ExitStatus)>> {
        if let Some(status) = self.vmm.try_wait()? {
            return Ok(Some((self.vmm.name(), status)));
        }
        for helper in &mut self.helpers {
            if let Some(status) = helper.try_wait()? {
                return Ok(Some((helper.name(), status)));
            }
        }
        Ok(None)
    }
}

/// Which hypervisor backend runs the pods (`[vm] hypervisor` in the shim configuration,
/// `--hypervisor` on the command line).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// QEMU (`microvm` or `q35`), KVM or TCG, with `vhost-device-vsock` (default).
    #[default]
    Qemu,
    /// podvm's built-in KVM microVM monitor (`podvm vmm run`, [`kvm`]); KVM only.
    Builtin,
}

impl HypervisorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::Builtin => "builtin",
        }
    }
}

/// The backend of `kind`, with the binaries it needs found in the environment.
pub fn from_environment(kind: HypervisorKind) -> Result<Box<dyn Hypervisor>, crate::VmError> {
    Ok(match kind {
        HypervisorKind::Qemu => Box::new(qemu::QemuBackend::from_environment()?),
        HypervisorKind::Builtin => Box::new(builtin::BuiltinBackend::from_environment()?),
    })
}

/// A hypervisor backend.
pub trait Hypervisor: Send + Sync {
    fn name(&self) -> &'static str;
    /// The accelerator for `config` and why (QEMU probes once whether KVM boots a kernel here;
    /// the built-in monitor is KVM only).
    fn choose_accel(
        &self,
        config: &crate::vm::VmConfig,
        kernel_format: KernelFormat,
    ) -> (Accel, String);
    /// The complete kernel command line: the backend's console and platform words, then
    /// `extra`. `initdata_disk`: whether the launch attaches the initdata disk.
    fn kernel_cmdline(
        &self,
        machine: Machine,
        accel: Accel,
        extra: &str,
        initdata_disk: bool,
    ) -> String;
    /// Starts the VM. Guest connections to host vsock ports arrive on `<state>/vsock.sock_<port>`;
    /// listeners for them must exist before this is called.
    fn launch(&self, spec: &VmSpec, state: &StateDir) -> Result<LaunchedVm, crate::VmError>;
}
