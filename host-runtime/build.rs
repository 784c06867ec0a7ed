//! Builds the vsock test guest (`test-guest/vsock_guest.rs`): freestanding 64-bit code for the
//! built-in KVM monitor's tests and `podvm bench vmm`, compiled by the same rustc for the host
//! target with no standard library, linked by the host's `cc` into a flat image at 1 MiB.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let source = manifest.join("test-guest/vsock_guest.rs");
    let script = manifest.join("test-guest/link.ld");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", script.display());
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let image = out.join("vsock-test-guest.bin");
    let link = |arg: String| ["-C".to_string(), format!("link-arg={arg}")];
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2024", "--crate-type", "bin"])
        .args(["--crate-name", "podvm_vsock_test_guest"])
        .args(["-C", "opt-level=2", "-C", "panic=abort", "-C", "debuginfo=0"])
        .args(["-C", "relocation-model=static", "-C", "code-model=small"])
        .args(link("-nostdlib".into()))
        .args(link("-nostartfiles".into()))
        .args(link("-static".into()))
        .args(link("-no-pie".into()))
        .args(link(format!("-Wl,-T,{}", script.display())))
        .args(link("-Wl,--build-id=none".into()))
        .args(link("-Wl,--oformat=binary".into()))
        .arg("-o")
        .arg(&image)
        .arg(&source)
        // The guest is not part of the crate's own build flags (e.g. coverage instrumentation).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run rustc to build the vsock test guest: {e}"));
    assert!(
        status.success(),
        "building the vsock test guest ({}) failed: {status}",
        source.display()
    );
}
