//! `podvm-marker-init`: the trivial init of the bare-boot baseline (`podvm bench boot`).
//!
//! It writes [`MARKER`] to the console and powers the VM off; nothing else. The time from launch
//! to this line is the floor against which the agent's readiness is compared.

/// The line the host waits for.
const MARKER: &[u8] = b"podvm-marker-init: reached userspace\n";

fn main() {
    // The initramfs has /dev/console, which the kernel opened as fd 0, 1 and 2.
    // SAFETY: writing a static buffer to fd 1, then sync and reboot: no memory is shared.
    unsafe {
        libc::write(1, MARKER.as_ptr().cast(), MARKER.len());
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // Only reached when not PID 1 (the kernel refuses reboot): behave like a normal program.
}
