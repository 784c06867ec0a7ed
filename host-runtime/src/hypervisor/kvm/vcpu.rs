//! The vCPU run loop and how it is stopped from outside.
//!
//! The loop runs on a thread of its own and ends on the first exit that is not port or MMIO I/O: an i8042
//! reset is a clean stop, everything else (HLT with no interrupt controller, triple fault,
//! internal error, failed entry, any other exit) is a [`KvmVmError`] naming the exit and RIP.
//!
//! Stopping: the controller sets the shared stop flag and sends the thread [`kick_signal`]
//! (a real-time signal with a no-op handler), which makes a blocked `KVM_RUN` return `EINTR`;
//! the loop then sees the flag. A signal that lands just before `KVM_RUN` is entered is lost, so
//! the controller repeats the kick until the thread reports (see `KvmVm::run`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::KVM_EXIT_INTERNAL_ERROR;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::bus::{IoAction, PioBus};
use super::error::{KvmVmError, Result};
use super::mmio::MmioBus;

/// How the vCPU loop ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest pulsed the i8042 reset line.
    Reset,
    /// The controller asked it to stop.
    Stopped,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`: `SIGRTMIN + 0` (real-time signals are
/// not used by the C runtime or Rust's std).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for [`kick_signal`] once per process, so the signal interrupts
/// `KVM_RUN` instead of killing the process.
pub fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), noop_handler).map_err(|e| e.errno()))
        .map_err(|errno| KvmVmError::Thread(std::io::Error::from_raw_os_error(errno)))
}

/// What one `KVM_RUN` led to, decided while the exit still borrows the vCPU.
enum Step {
    Continue,
    Stop(VcpuStop),
    Fail(Failure),
}

/// An exit that ends the VM with an error; turned into a [`KvmVmError`] once RIP can be read.
enum Failure {
    Halt,
    Shutdown,
    InternalError,
    FailEntry { reason: u64 },
    Unhandled(String),
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return u32::MAX;
    }
    // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so the kernel filled in the `internal`
    // member of the exit union; it is plain data (u32 + u32 + [u64; 16]).
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

fn error_for(vcpu: &mut VcpuFd, failure: Failure) -> KvmVmError {
    let rip = rip(vcpu);
    match failure {
        Failure::Halt => KvmVmError::GuestHalted { rip },
        Failure::Shutdown => KvmVmError::TripleFault { rip },
        Failure::InternalError => KvmVmError::InternalError {
            rip,
            suberror: internal_suberror(vcpu),
        },
        Failure::FailEntry { reason } => KvmVmError::FailEntry { rip, reason },
        Failure::Unhandled(exit) => KvmVmError::UnhandledExit { exit, rip },
    }
}

/// The port-I/O bus is shared by the vCPUs; a poisoned lock (a vCPU thread panicked inside a
/// device) still holds usable device state.
fn lock(bus: &std::sync::Mutex<PioBus>) -> std::sync::MutexGuard<'_, PioBus> {
    bus.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `vcpu` until the guest resets, fails, or `stop` is set.
pub fn run_loop(
    vcpu: &mut VcpuFd,
    bus: &std::sync::Mutex<PioBus>,
    mmio: &MmioBus,
    stop: &AtomicBool,
) -> Result<VcpuStop> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(VcpuStop::Stopped);
        }
        let step = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => match lock(bus).write(port, data)? {
                IoAction::Continue => Step::Continue,
                IoAction::Reset => Step::Stop(VcpuStop::Reset),
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                lock(bus).read(port, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::Hlt) => Step::Fail(Failure::Halt),
            Ok(VcpuExit::Shutdown) => Step::Fail(Failure::Shutdown),
            Ok(VcpuExit::InternalError) => Step::Fail(Failure::InternalError),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Step::Fail(Failure::FailEntry { reason }),
            Ok(other) => Step::Fail(Failure::Unhandled(format!("{other:?}"))),
            // A kick (signal) interrupted KVM_RUN: go round and look at the stop flag.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(source) => {
                return Err(KvmVmError::Ioctl {
                    what: "KVM_RUN",
                    source,
                });
            }
        };
        match step {
            Step::Continue => {}
            Step::Stop(how) => return Ok(how),
            Step::Fail(failure) => return Err(error_for(vcpu, failure)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_signal_is_real_time_and_handler_installs_idempotently() {
        assert!(kick_signal() >= SIGRTMIN());
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
    }
}
