//! The one error type of the KVM microVM monitor. Every variant renders as one line that says
//! what failed and, where there is one, the guest's instruction pointer.

use std::time::Duration;

/// Why a [`super::KvmVm`] could not be built or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum KvmVmError {
    /// `/dev/kvm` could not be opened or refused to create a VM / vCPU.
    #[error("KVM is not usable here: {what}: {source}")]
    KvmUnavailable {
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl on an existing VM or vCPU failed.
    #[error("KVM ioctl {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The builder was given something it cannot lay out.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    MemoryAllocation { mib: u64, reason: String },
    /// Writing boot structures or the payload into guest memory failed.
    #[error("cannot write {what} at guest address {addr:#x}: {reason}")]
    GuestMemoryWrite {
        what: &'static str,
        addr: u64,
        reason: String,
    },
    /// The vCPU thread could not be started or the stop signal could not be installed.
    #[error("cannot start the vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The guest executed `hlt` with interrupts that can never arrive (no interrupt controller).
    #[error("the guest halted (RIP={rip:#x}) and nothing can wake it")]
    GuestHalted { rip: u64 },
    /// KVM_EXIT_SHUTDOWN: on x86 this is a triple fault.
    #[error("the guest triple-faulted (RIP={rip:#x})")]
    TripleFault { rip: u64 },
    /// KVM_EXIT_INTERNAL_ERROR (e.g. an instruction KVM cannot emulate).
    #[error("KVM internal error in the guest (RIP={rip:#x}): suberror {suberror}")]
    InternalError { rip: u64, suberror: u32 },
    /// KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest.
    #[error("the CPU refused to enter the guest (RIP={rip:#x}): hardware reason {reason:#x}")]
    FailEntry { rip: u64, reason: u64 },
    /// An exit this monitor does not handle.
    #[error("unhandled vCPU exit {exit} (RIP={rip:#x})")]
    UnhandledExit { exit: String, rip: u64 },
    /// A device on the port-I/O bus failed (e.g. the serial writer returned an error).
    #[error("device {device} failed: {reason}")]
    Device {
        device: &'static str,
        reason: String,
    },
    /// The VM was still running when its deadline passed; it has been stopped.
    #[error("the VM did not stop within its deadline of {deadline:?}; stopped it")]
    DeadlineExceeded { deadline: Duration },
    /// The kernel, initrd or command line cannot be booted as given (the message says what to
    /// change).
    #[error("cannot boot this Linux kernel: {0}")]
    Linux(String),
    /// A kernel or initrd file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// KVM refused one of the boot MSRs ([`super::msrs`]).
    #[error("KVM refused to set MSR {index:#x} ({name}) to {value:#x}")]
    Msr {
        index: u32,
        name: &'static str,
        value: u64,
    },
    /// The vCPU thread panicked or vanished without a report.
    #[error("the vCPU thread ended without a report: {0}")]
    VcpuThreadLost(String),
    /// A seccomp filter could not be compiled or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// Dropping privileges after setup ([`super::KvmVmBuilder::run_as`]) failed.
    #[error("cannot drop privileges: {step} failed: {source} (run as root, or without .run_as)")]
    Privileges {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    /// The SEV-SNP or TDX launch failed or this host cannot run it.
    #[error(transparent)]
    Launch(#[from] super::launch::LaunchError),
}

/// `Result` with [`KvmVmError`].
pub type Result<T> = std::result::Result<T, KvmVmError>;

pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmVmError {
    move |source| KvmVmError::Ioctl { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triple_fault_message_names_rip() {
        let e = KvmVmError::TripleFault { rip: 0x10_0000 };
        assert_eq!(e.to_string(), "the guest triple-faulted (RIP=0x100000)");
    }

    #[test]
    fn kvm_unavailable_names_the_step() {
        let e = KvmVmError::KvmUnavailable {
            what: "open /dev/kvm".into(),
            source: kvm_ioctls::Error::new(libc::ENOENT),
        };
        assert!(
            e.to_string()
                .starts_with("KVM is not usable here: open /dev/kvm: "),
            "{e}"
        );
    }

    #[test]
    fn deadline_message_names_deadline() {
        let e = KvmVmError::DeadlineExceeded {
            deadline: Duration::from_millis(250),
        };
        assert_eq!(
            e.to_string(),
            "the VM did not stop within its deadline of 250ms; stopped it"
        );
    }
}
