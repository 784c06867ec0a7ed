//! Bad input and faults, through the `podvm` CLI: each is one clear line on stderr, exit status
//! 1, and no process or state left behind.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use podvm_e2e::{guest_image, podvm, recorded_pids, wait_gone};

struct Run {
    state: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        Run {
            state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn vm_run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = podvm(self.state.path(), self.logs.path());
        cmd.args(["vm", "run"]).args(args).envs(env.iter().copied());
        cmd.output().unwrap()
    }

    /// The single error line; asserts exit 1, a one-line stderr, and an empty state root.
    fn error_line(&self, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
        assert!(lines[0].starts_with("podvm: error: "), "{}", lines[0]);
        assert_eq!(
            std::fs::read_dir(self.state.path()).unwrap().count(),
            0,
            "state left behind"
        );
        lines[0].to_string()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel() {
    let run = Run::new();
    let line = run.error_line(&run.vm_run(&["--kernel", "/nonexistent/vmlinux"], &[]));
    assert!(
        line.contains("kernel /nonexistent/vmlinux cannot be read"),
        "{line}"
    );
}

#[test]
fn corrupt_kernel() {
    let run = Run::new();
    let kernel = write(
        run.logs.path(),
        "vmlinux",
        &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
    );
    let line = run.error_line(&run.vm_run(&["--kernel", &kernel], &[]));
    assert!(
        line.contains("is neither an x86-64 ELF vmlinux nor a bzImage")
            && line.contains("de ad be ef"),
        "{line}"
    );
}

#[test]
fn truncated_kernel() {
    let run = Run::new();
    let bytes = std::fs::read(guest_image().vmlinux()).unwrap();
    let kernel = write(run.logs.path(), "vmlinux", &bytes[..200]);
    let line = run.error_line(&run.vm_run(&["--kernel", &kernel], &[]));
    assert!(line.contains(&kernel), "{line}");
}

#[test]
fn corrupt_and_truncated_initrd() {
    let run = Run::new();
    let initrd = write(
        run.logs.path(),
        "junk.cpio",
        b"this is not an initramfs at all, not even close....",
    );
    let line = run.error_line(&run.vm_run(&["--initrd", &initrd], &[]));
    assert!(
        line.contains("is not a usable initramfs") && line.contains("bad magic"),
        "{line}"
    );

    let bytes = std::fs::read(guest_image().initramfs()).unwrap();
    let initrd = write(run.logs.path(), "cut.cpio", &bytes[..bytes.len() / 2]);
    let line = run.error_line(&run.vm_run(&["--initrd", &initrd], &[]));
    assert!(
        line.contains("is not a usable initramfs") && line.contains("truncated"),
        "{line}"
    );
}

#[test]
fn memory_too_small_and_zero_vcpus() {
    let run = Run::new();
    let line = run.error_line(&run.vm_run(&["--memory", "64"], &[]));
    assert!(line.contains("--memory 64 MiB is too small"), "{line}");
    let line = run.error_line(&run.vm_run(&["--vcpus", "0"], &[]));
    assert!(line.contains("--vcpus 0 is out of range"), "{line}");
    let line = run.error_line(&run.vm_run(&["--vcpus", "65"], &[]));
    assert!(line.contains("--vcpus 65 is out of range"), "{line}");
}

#[test]
fn qemu_or_vsock_backend_missing() {
    let run = Run::new();
    let line = run.error_line(&run.vm_run(&[], &[("PODVM_QEMU", "/nonexistent/qemu")]));
    assert!(
        line.contains("QEMU (qemu-system-x86_64) was not found") && line.contains("scripts/setup"),
        "{line}"
    );
    let line = run.error_line(&run.vm_run(
        &[],
        &[("PODVM_VHOST_VSOCK", "/nonexistent/vhost-device-vsock")],
    ));
    assert!(
        line.contains("vsock backend (vhost-device-vsock) was not found"),
        "{line}"
    );
}

#[test]
fn an_agent_that_never_answers_times_out_with_the_console_named() {
    let run = Run::new();
    let marker = guest_image().marker_initramfs();
    let out = run.vm_run(
        &[
            "--initrd",
            marker.to_str().unwrap(),
            "--cmdline",
            "PODVM_MARKER_HANG=1",
            "--boot-timeout",
            "15",
            "--accel",
            "tcg",
        ],
        &[],
    );
    let line = run.error_line(&out);
    assert!(
        line.contains("the agent did not become ready within 15s"),
        "{line}"
    );
    // The console log was kept for diagnosis and shows the guest reached userspace.
    assert!(
        line.contains(&run.logs.path().to_string_lossy().into_owned())
            && line.contains("reached userspace"),
        "{line}"
    );
}

#[test]
fn a_guest_that_powers_off_during_boot_is_reported() {
    let run = Run::new();
    let marker = guest_image().marker_initramfs();
    let out = run.vm_run(
        &[
            "--initrd",
            marker.to_str().unwrap(),
            "--boot-timeout",
            "60",
            "--accel",
            "tcg",
        ],
        &[],
    );
    let line = run.error_line(&out);
    assert!(
        line.contains("QEMU exited") && line.contains("before the agent was ready"),
        "{line}"
    );
}

/// Starts `podvm vm run` and waits until its VM's processes are recorded.
fn start_and_wait_for_vm(run: &Run) -> (std::process::Child, Vec<u32>) {
    let mut cmd = podvm(run.state.path(), run.logs.path());
    cmd.args(["vm", "run", "--accel", "tcg"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let dirs: Vec<_> = std::fs::read_dir(run.state.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let pids = dirs
            .first()
            .map(|dir| recorded_pids(dir))
            .unwrap_or_default();
        if pids.len() == 2 {
            break pids;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the VM's processes never appeared");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (child, pids)
}

#[test]
fn killing_the_cli_mid_boot_leaves_no_orphan() {
    let run = Run::new();
    let (mut cli, pids) = start_and_wait_for_vm(&run);
    cli.kill().unwrap(); // SIGKILL: no cleanup code runs in podvm.
    assert_eq!(cli.wait().unwrap().signal(), Some(9));
    assert_eq!(
        wait_gone(&pids, 5),
        Vec::<u32>::new(),
        "QEMU or the vsock backend outlived the CLI"
    );
    // Its state directory is swept by the next podvm that creates one.
    let leftovers = podvm_host_runtime::state::sweep_stale(run.state.path());
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(std::fs::read_dir(run.state.path()).unwrap().count(), 0);
}

#[test]
fn sigterm_mid_boot_shuts_down_and_cleans_up() {
    let run = Run::new();
    let (cli, pids) = start_and_wait_for_vm(&run);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = cli.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert_eq!(wait_gone(&pids, 5), Vec::<u32>::new());
    assert_eq!(
        std::fs::read_dir(run.state.path()).unwrap().count(),
        0,
        "state left behind"
    );
}
