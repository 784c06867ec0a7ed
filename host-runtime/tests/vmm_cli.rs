//! `podvm vmm run` and `podvm bench vmm`, through the real binary on the real `/dev/kvm` (never
//! skipped: a host where KVM cannot run the bench guest fails with the reason). The bench runs
//! QEMU too (`scripts/setup` installs it). No timing is asserted.

use std::process::{Command, Output};

use podvm_host_runtime::hypervisor::kvm::bench_guest::{self, BenchGuestEnd, MESSAGE};

const PODVM: &str = env!("CARGO_BIN_EXE_podvm");

fn podvm(args: &[&str]) -> Output {
    Command::new(PODVM)
        .args(args)
        .output()
        .expect("run the podvm binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bench_guest_prints_its_line_and_resets_with_exit_status_0() {
    let out = podvm(&[
        "vmm",
        "run",
        "--bench-guest",
        "reset",
        "--memory-mib",
        "16",
        "--deadline-secs",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(out.stdout, MESSAGE);
}

#[test]
fn kernel_path_runs_a_pvh_elf_file() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, bench_guest::elf(BenchGuestEnd::Reset)).unwrap();
    let out = podvm(&[
        "vmm",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--deadline-secs",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(out.stdout, MESSAGE);
}

#[test]
fn spinning_bench_guest_ends_at_its_deadline_with_an_error() {
    let out = podvm(&["vmm", "run", "--bench-guest", "--deadline-secs", "1"]);
    assert!(!out.status.success());
    assert_eq!(out.stdout, MESSAGE);
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("deadline of 1s"), "{err}");
}

#[test]
fn bad_kernel_path_is_a_one_line_error_naming_it() {
    let out = podvm(&["vmm", "run", "--kernel", "/nonexistent/podvm-kernel"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("podvm: error: ") && err.contains("/nonexistent/podvm-kernel"),
        "{err}"
    );
}

#[test]
fn bench_vmm_prints_both_monitors() {
    let out = podvm(&["bench", "vmm", "-n", "1"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}{stdout}",
        out.status,
        text(&out.stderr)
    );
    println!("{stdout}");
    let rows = |name: &str| {
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(name))
            .count()
    };
    // start, RSS, anonymous RSS: one row each per monitor.
    assert_eq!(rows("podvm vmm run"), 3, "{stdout}");
    assert_eq!(rows("QEMU "), 3, "{stdout}");
    assert!(
        stdout.contains("podvm / QEMU (medians): start "),
        "{stdout}"
    );
    assert!(stdout.contains("ExitReport::first_output"), "{stdout}");
}
