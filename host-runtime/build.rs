//! Builds the virtio test guest (`test-guest/virtio_guest.c`): freestanding 64-bit code for the
//! built-in KVM monitor's tests, compiled by the host's C compiler (`$CC`, default `cc`; the same
//! one rustc links with) with general-purpose registers only, linked into a flat image at 1 MiB
//! (`test-guest/link.ld`). Why C: see the comment at the top of the source.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let source = manifest.join("test-guest/virtio_guest.c");
    let script = manifest.join("test-guest/link.ld");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let image = out.join("virtio-test-guest.bin");
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .args([
            "-ffreestanding",
            "-fno-builtin",
            "-fno-tree-loop-distribute-patterns",
        ])
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-fno-stack-protector",
        ])
        .args([
            "-fno-asynchronous-unwind-tables",
            "-mgeneral-regs-only",
            "-mno-red-zone",
        ])
        .arg(format!("-Wl,-T,{}", script.display()))
        .args(["-Wl,--build-id=none", "-Wl,--oformat=binary", "-o"])
        .arg(&image)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C compiler {cc:?} to build the virtio test guest: {e} \
                 (install gcc: scripts/setup does)"
            )
        });
    assert!(
        status.success(),
        "building the virtio test guest ({}) with {cc:?} failed: {status}",
        source.display()
    );
}
