//! Seccomp confinement and privilege dropping of the built-in KVM monitor on this machine's
//! /dev/kvm (never skipped). Both are per thread / per process and irreversible, so every
//! scenario runs in a child: this binary re-executes itself with `PODVM_SECCOMP_CHILD=<scenario>`
//! and the parent checks the child's exit status, stdout and stderr. Own `main` (harness = false)
//! so there is no libtest "child" test that could not fail.

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use podvm_host_runtime::hypervisor::kvm::cpu::PAYLOAD_START;
use podvm_host_runtime::hypervisor::kvm::seccomp::{
    KVM_RUN, SECCOMP_TRAP_EXIT_CODE, ThreadFilter, ThreadKind,
};
use podvm_host_runtime::hypervisor::kvm::serial::CapturedOutput;
use podvm_host_runtime::hypervisor::kvm::{
    ExitReason, KvmVm, KvmVmBuilder, LinuxSpec, Refusal, SeccompLevel, test_guest, test_image,
};

const CHILD_ENV: &str = "PODVM_SECCOMP_CHILD";
const DEADLINE: Duration = Duration::from_secs(10);
/// `nobody`.
const NOBODY: u32 = 65534;

/// A serial writer that stats a file when the guest writes: a syscall no vCPU list allows.
struct OpensFiles;

impl Write for OpensFiles {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::fs::metadata("/proc/self/status")?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hello(serial: Box<dyn Write + Send>) -> KvmVmBuilder {
    KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
        .serial(serial)
}

/// Runs HELLO with `builder`'s settings and prints what the parent checks.
fn run_hello(builder: impl FnOnce(Box<dyn Write + Send>) -> KvmVmBuilder, confined: bool) {
    let out = CapturedOutput::default();
    let vm = builder(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot build the VM (this test needs /dev/kvm): {e}"));
    let report = if confined {
        vm.run_confined(DEADLINE)
    } else {
        vm.run(DEADLINE)
    }
    .unwrap_or_else(|e| panic!("the VM failed: {e}"));
    let serial = out.bytes();
    println!("reason={:?}", report.reason);
    println!("serial={:?}", String::from_utf8_lossy(&serial));
}

fn child(scenario: &str) -> ! {
    match scenario {
        "strict-hello" => run_hello(
            |s| {
                hello(s)
                    .seccomp(SeccompLevel::Strict)
                    .seccomp_refusal(Refusal::Trap)
            },
            true,
        ),
        "forbidden-on-vcpu" => run_hello(
            |_| {
                hello(Box::new(OpensFiles))
                    .seccomp(SeccompLevel::Strict)
                    .seccomp_refusal(Refusal::Trap)
            },
            true,
        ),
        "forbidden-on-controller" => {
            run_hello(
                |s| {
                    hello(s)
                        .seccomp(SeccompLevel::Strict)
                        .seccomp_refusal(Refusal::Trap)
                },
                true,
            );
            let _ = std::io::stdout().flush();
            let opened = std::fs::metadata("/proc/self/status");
            println!("controller opened a file: {opened:?}");
        }
        "ioctl-args" => {
            let kind = match std::env::var("PODVM_SECCOMP_KIND").as_deref() {
                Ok("vsock") => ThreadKind::Vsock,
                _ => ThreadKind::Vcpu,
            };
            let filter = ThreadFilter::new(kind, Refusal::Trap).expect("the filter compiles");
            let name = if kind == ThreadKind::Vsock {
                "podvm-vsock"
            } else {
                "podvm-vcpu0"
            };
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    filter.apply().expect("the filter installs");
                    // SAFETY: ioctl on fd -1 only returns EBADF (if the filter lets it through).
                    let rc = unsafe { libc::ioctl(-1, KVM_RUN as libc::c_ulong) };
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    println!("KVM_RUN on fd -1 returned {rc} errno {errno:?}");
                    let _ = std::io::stdout().flush();
                    // KVM_CREATE_VM = _IO(0xAE, 0x01): no thread list allows it.
                    // SAFETY: as above.
                    let rc = unsafe { libc::ioctl(-1, 0xAE01) };
                    println!("KVM_CREATE_VM on fd -1 returned {rc}");
                })
                .expect("spawn");
            let _ = t.join();
        }
        "strict-hello-with-vsock" => {
            // Chosen by the parent, which checks it afterwards: this thread may not stat files
            // once it is confined.
            let socket = std::env::var_os("PODVM_SECCOMP_SOCKET").expect("socket path");
            run_hello(
                |s| {
                    hello(s)
                        .vsock(3, &socket)
                        .seccomp(SeccompLevel::Strict)
                        .seccomp_refusal(Refusal::Trap)
                },
                true,
            );
        }
        "strict-spin-deadline" => {
            let vm = KvmVm::builder()
                .memory_mib(16)
                .payload(test_guest::SPIN.to_vec(), PAYLOAD_START)
                .seccomp(SeccompLevel::Strict)
                .seccomp_refusal(Refusal::Trap)
                .build()
                .unwrap_or_else(|e| panic!("cannot build the VM: {e}"));
            let deadline = vm.run_confined(Duration::from_millis(200));
            println!("deadline: {deadline:?}");
        }
        "strict-linux-pvh" => {
            let out = CapturedOutput::default();
            let spec = LinuxSpec {
                kernel: test_image::elf64(
                    0x100_0000,
                    &test_image::PROBE_START_INFO,
                    Some(0x100_0000),
                ),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            };
            let report = KvmVm::builder()
                .memory_mib(64)
                .linux(spec)
                .serial(Box::new(out.clone()))
                .seccomp(SeccompLevel::Strict)
                .seccomp_refusal(Refusal::Trap)
                .build()
                .unwrap_or_else(|e| panic!("cannot build the VM: {e}"))
                .run_confined(DEADLINE)
                .unwrap_or_else(|e| panic!("the VM failed: {e}"));
            let serial = out.bytes();
            println!("reason={:?}", report.reason);
            println!("probe={serial:02x?}");
        }
        "nobody" => {
            run_hello(|s| hello(s).run_as(NOBODY, NOBODY), false);
            let again = nix::unistd::setuid(nix::unistd::Uid::from_raw(0));
            println!("uid={} setuid0={again:?}", nix::unistd::getuid());
        }
        "nobody-strict-kill" => run_hello(
            |s| {
                hello(s)
                    .run_as(NOBODY, NOBODY)
                    .seccomp(SeccompLevel::Strict)
            },
            true,
        ),
        "strict-virtio-guest" => run_virtio_guest(),
        other => panic!("unknown scenario {other}"),
    }
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// The virtio test guest with a vsock round trip both ways and a read-write disk, every monitor
/// thread confined (Trap): the vCPU, vsock and block lists must allow a real device workload.
/// The host side runs on unconfined threads of this process.
fn run_virtio_guest() {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = std::path::PathBuf::from(std::env::var_os("PODVM_SECCOMP_DIR").expect("dir"));
    let socket = dir.join("vsock.sock");
    let disk = dir.join("disk.img");
    let listener = UnixListener::bind(dir.join("vsock.sock_1025")).expect("listen on _1025");
    let host = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let (mut s, _) = listener.accept().expect("the guest connects");
            let mut ping = vec![0u8; test_guest::VSOCK_GUEST_PING.len()];
            s.read_exact(&mut ping).expect("ping");
            s.write_all(b"pong").expect("pong");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            loop {
                let mut c = UnixStream::connect(&socket).expect("hybrid socket");
                c.write_all(b"CONNECT 1024\n").expect("connect line");
                let mut line = String::new();
                let mut r = BufReader::new(c.try_clone().expect("clone"));
                if r.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                    c.write_all(b"echo me").expect("write");
                    let mut echo = [0u8; 7];
                    c.read_exact(&mut echo).expect("echo");
                    return String::from_utf8_lossy(&echo).into_owned();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let out = CapturedOutput::default();
    let report = KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VIRTIO_GUEST.to_vec(), PAYLOAD_START)
        .vsock(3, &socket)
        .disk(&disk, false)
        .serial(Box::new(out.clone()))
        .seccomp(SeccompLevel::Strict)
        .seccomp_refusal(Refusal::Trap)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the VM (this test needs /dev/kvm): {e}"))
        .run(DEADLINE)
        .unwrap_or_else(|e| panic!("the VM failed: {e}"));
    let echo = host.join().expect("host side");
    let serial = out.bytes();
    println!("reason={:?}", report.reason);
    println!("echo={echo}");
    println!("serial={:?}", String::from_utf8_lossy(&serial));
}

/// Every monitor thread confined while the guest uses the vsock device both ways and writes
/// its disk: nothing is refused, and the work is done.
fn strict_filters_serve_vsock_and_block_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let mut image = vec![0u8; 8 * 512];
    image[..6].copy_from_slice(b"strict");
    std::fs::write(&disk, &image).expect("disk image");
    let (out, stdout, stderr) = spawn_child(
        "strict-virtio-guest",
        &[(
            "PODVM_SECCOMP_DIR",
            dir.path().to_str().expect("utf-8 path"),
        )],
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("reason=Reset"), "{stdout}");
    assert!(stdout.contains("echo=ECHO ME"), "{stdout}");
    for line in [
        "podvm test guest: disk sector 0: strict",
        "podvm test guest: disk write status 0",
        "podvm test guest: host said: pong",
        "podvm test guest: done",
    ] {
        assert!(stdout.contains(line), "{line:?} not in {stdout}");
    }
    let after = std::fs::read(&disk).expect("disk image");
    assert_eq!(&after[512..532], b"written by the guest");
}

fn spawn_child(scenario: &str, env: &[(&str, &str)]) -> (Output, String, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .env(CHILD_ENV, scenario)
        .envs(env.iter().copied())
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "  [{scenario}] status {:?}\n  stdout: {stdout:?}\n  stderr: {stderr:?}",
        out.status
    );
    (out, stdout, stderr)
}

fn expect_hello_reset(scenario: &str) {
    let (out, stdout, stderr) = spawn_child(scenario, &[]);
    assert_eq!(out.status.code(), Some(0), "{scenario}: {stderr}");
    assert!(
        stdout.contains(&format!("reason={:?}", ExitReason::Reset)),
        "{stdout}"
    );
    let serial = format!(
        "serial={:?}",
        String::from_utf8_lossy(test_guest::HELLO_MESSAGE)
    );
    assert!(stdout.contains(&serial), "{stdout}");
}

fn expect_trap(out: &Output, stderr: &str, syscall: i64, thread: &str) {
    assert_eq!(
        out.status.code(),
        Some(SECCOMP_TRAP_EXIT_CODE),
        "the child should have been stopped by the filter: {stderr}"
    );
    let msg = format!("podvm: seccomp refused syscall {syscall} on thread {thread}");
    assert!(stderr.contains(&msg), "{msg:?} not in {stderr:?}");
}

/// With Strict filters on all three threads the HELLO payload runs to its reset exactly as
/// without (the lists allow everything a real run needs).
fn strict_filters_run_hello_to_the_reset() {
    expect_hello_reset("strict-hello");
}

/// A vCPU thread that opens a file (the serial writer does) is refused and named.
fn forbidden_syscall_on_the_vcpu_thread_is_trapped() {
    let (out, stdout, stderr) = spawn_child("forbidden-on-vcpu", &[]);
    expect_trap(&out, &stderr, libc::SYS_statx, "podvm-vcpu0");
    assert!(!stdout.contains("reason="), "{stdout}");
}

/// The caller of `run_confined` stays confined: opening a file afterwards is refused.
fn run_confined_confines_the_calling_thread() {
    let (out, stdout, stderr) = spawn_child("forbidden-on-controller", &[]);
    assert!(stdout.contains("reason=Reset"), "{stdout}");
    assert!(!stdout.contains("controller opened a file"), "{stdout}");
    expect_trap(&out, &stderr, libc::SYS_statx, "main");
}

/// The vCPU filter checks ioctl arguments: KVM_RUN passes (EBADF on fd -1), KVM_CREATE_VM does not.
fn vcpu_filter_allows_kvm_run_but_not_other_kvm_ioctls() {
    let (out, stdout, stderr) = spawn_child("ioctl-args", &[("PODVM_SECCOMP_KIND", "vcpu")]);
    assert!(
        stdout.contains(&format!(
            "KVM_RUN on fd -1 returned -1 errno Some({})",
            libc::EBADF
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("KVM_CREATE_VM on fd -1"), "{stdout}");
    expect_trap(&out, &stderr, libc::SYS_ioctl, "podvm-vcpu0");
}

/// The vsock thread may not issue KVM_RUN.
fn vsock_filter_refuses_kvm_run() {
    let (out, stdout, stderr) = spawn_child("ioctl-args", &[("PODVM_SECCOMP_KIND", "vsock")]);
    assert!(!stdout.contains("KVM_RUN on fd -1"), "{stdout}");
    expect_trap(&out, &stderr, libc::SYS_ioctl, "podvm-vsock");
}

/// A VM with a vsock device its guest never activates: the idle device thread ends and the
/// vCPU thread removes the socket when the VM drops, all under the filters.
fn strict_filters_with_an_idle_vsock_device() {
    let socket = std::env::temp_dir().join(format!("podvm-seccomp-{}.sock", std::process::id()));
    let path = socket.to_string_lossy().into_owned();
    let (out, stdout, stderr) = spawn_child(
        "strict-hello-with-vsock",
        &[("PODVM_SECCOMP_SOCKET", &path)],
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("reason=Reset"), "{stdout}");
    assert!(
        !socket.exists(),
        "{path} was not removed when the VM dropped"
    );
}

/// Stopping under the filters: the controller's SIGRTMIN kick (tgkill) and the vCPU's return
/// from the handler and from an interrupted KVM_RUN are allowed; a spinning guest is stopped at
/// its deadline.
fn strict_filters_stop_a_spinning_guest_at_its_deadline() {
    let (out, stdout, stderr) = spawn_child("strict-spin-deadline", &[]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("deadline: Err(DeadlineExceeded { deadline: 200ms })"),
        "{stdout}"
    );
}

/// A Linux entry (the PVH probe ELF: zero page, start info, 32-bit entry) under the filters.
fn strict_filters_run_the_pvh_probe() {
    let (out, stdout, stderr) = spawn_child("strict-linux-pvh", &[]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("reason=Reset"), "{stdout}");
    let magic = format!("probe={:02x?}", 0x336e_c578u32.to_le_bytes());
    assert!(stdout.contains(&magic), "{stdout}");
}

/// After `run_as(nobody)` the VM still runs HELLO to its reset and root cannot be regained.
fn unprivileged_after_setup_runs_hello_and_cannot_regain_root() {
    let (out, stdout, stderr) = spawn_child("nobody", &[]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("reason=Reset"), "{stdout}");
    assert!(
        stdout.contains(&format!("uid={NOBODY} setuid0=Err(EPERM)")),
        "{stdout}"
    );
}

/// The production setting: nobody + Strict + KillProcess, caller confined too.
fn unprivileged_and_strict_with_kill_runs_hello() {
    expect_hello_reset("nobody-strict-kill");
}

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "strict_filters_serve_vsock_and_block_devices",
        strict_filters_serve_vsock_and_block_devices,
    ),
    (
        "strict_filters_run_hello_to_the_reset",
        strict_filters_run_hello_to_the_reset,
    ),
    (
        "forbidden_syscall_on_the_vcpu_thread_is_trapped",
        forbidden_syscall_on_the_vcpu_thread_is_trapped,
    ),
    (
        "run_confined_confines_the_calling_thread",
        run_confined_confines_the_calling_thread,
    ),
    (
        "vcpu_filter_allows_kvm_run_but_not_other_kvm_ioctls",
        vcpu_filter_allows_kvm_run_but_not_other_kvm_ioctls,
    ),
    ("vsock_filter_refuses_kvm_run", vsock_filter_refuses_kvm_run),
    (
        "strict_filters_stop_a_spinning_guest_at_its_deadline",
        strict_filters_stop_a_spinning_guest_at_its_deadline,
    ),
    (
        "strict_filters_run_the_pvh_probe",
        strict_filters_run_the_pvh_probe,
    ),
    (
        "strict_filters_with_an_idle_vsock_device",
        strict_filters_with_an_idle_vsock_device,
    ),
    (
        "unprivileged_after_setup_runs_hello_and_cannot_regain_root",
        unprivileged_after_setup_runs_hello_and_cannot_regain_root,
    ),
    (
        "unprivileged_and_strict_with_kill_runs_hello",
        unprivileged_and_strict_with_kill_runs_hello,
    ),
];

fn main() {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        child(&scenario);
    }
    // Like libtest: positional arguments are name filters; flags are ignored.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&Test> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected.iter().copied() {
        let result = std::panic::catch_unwind(test);
        println!(
            "test {name} ... {}",
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        if result.is_err() {
            failed.push(*name);
        }
    }
    let passed = selected.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}
