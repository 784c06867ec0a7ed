//! `podvm-marker-init`: the trivial init of the bare-boot baseline (`podvm bench boot`) and of
//! the one-time KVM probe.
//!
//! It writes [`MARKER`] to the console and powers the VM off; nothing else. The time from launch
//! to this line is the floor against which the agent's readiness is compared.
//!
//! With `PODVM_MARKER_HANG=1` on the kernel command line (the kernel passes unknown `key=value`
//! parameters to init as environment variables) it stays up after the marker instead: a guest
//! whose agent never answers, for testing the host's boot timeout.

/// The line the host waits for.
const MARKER: &[u8] = b"podvm-marker-init: reached userspace\n";

fn main() {
    // The initramfs has /dev/console, which the kernel opened as fd 0, 1 and 2.
    // SAFETY: writing a static buffer to fd 1; no memory is shared.
    unsafe { libc::write(1, MARKER.as_ptr().cast(), MARKER.len()) };
    if std::env::var_os("PODVM_MARKER_HANG").is_some_and(|v| v == "1") {
        loop {
            std::thread::park();
        }
    }
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // Only reached when not PID 1 (the kernel refuses reboot): behave like a normal program.
}
