//! Helpers shared by the end-to-end tests: where the `podvm` binary and the guest image are, and
//! whether a process is still alive.
//!
//! `scripts/test` builds both and exports `PODVM_BIN` and `PODVM_GUEST_DIR`; without them the
//! tests look in the usual places and fail with a clear message if nothing is there.

use std::path::{Path, PathBuf};
use std::process::Command;

use podvm_host_runtime::guest_image::GuestImage;

/// The `podvm` binary under test.
pub fn podvm_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PODVM_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/<test> → target/<profile>/podvm
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("podvm"))
        .expect("a target directory");
    assert!(
        bin.is_file(),
        "no podvm binary at {}: run scripts/test (or cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// The guest image under test.
pub fn guest_image() -> GuestImage {
    let dir = std::env::var_os("PODVM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(podvm_host_runtime::paths::guest_dir);
    let image = GuestImage::new(&dir);
    assert!(
        image.vmlinux().is_file()
            && image.initramfs().is_file()
            && image.marker_initramfs().is_file(),
        "no guest image in {}: run scripts/test (it builds one into target/guest)",
        dir.display()
    );
    image
}

/// A `podvm` command whose state, logs and guest image are this test's own.
pub fn podvm(state_root: &Path, log_dir: &Path) -> Command {
    let mut cmd = Command::new(podvm_bin());
    cmd.env("PODVM_STATE_DIR", state_root)
        .env("PODVM_LOG_DIR", log_dir)
        .env("PODVM_GUEST_DIR", &guest_image().dir);
    cmd
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Waits up to `secs` for every pid to be gone; returns the ones still alive.
pub fn wait_gone(pids: &[u32], secs: u64) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The pids recorded in a VM's state directory (`*.pid` but the owner).
pub fn recorded_pids(state_dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid")
            && path.file_name().is_some_and(|n| n != "owner.pid")
            && let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    pids
}

/// The emulated SEV-SNP PSP the tests share (its RSA-4096 ARK/ASK take a while to generate, so
/// it is made once per machine and reused; creation is race-safe).
pub fn emulated_psp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("podvm-e2e-emulated-psp");
    podvm_attestation::emulated::EmulatedPsp::open_or_create(&dir)
        .unwrap_or_else(|e| panic!("the emulated PSP in {}: {e}", dir.display()));
    dir
}
