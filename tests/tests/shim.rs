//! The containerd shim end to end: a private containerd (`scripts/containerd-test`) with
//! `io.containerd.podvm.v2`, a busybox image imported with `ctr`, and `ctr run --rm` of a command
//! that prints the kernel release and exits 3: the output is the guest's kernel, the exit code
//! comes back, and nothing of the task's VM is left afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use podvm_e2e::{guest_image, podvm_bin};

const NAMESPACE: &str = "podvm-test";
const IMAGE: &str = "docker.io/podvm/busybox:latest";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/containerd-test")
}

/// A private containerd, stopped (directories removed) when dropped.
struct Containerd {
    dir: PathBuf,
    socket: String,
    state: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = PathBuf::from(format!("/run/podvm-containerd-e2e-{}", std::process::id()));
        let state = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let shim = podvm_bin().with_file_name("containerd-shim-podvm-v2");
        assert!(
            shim.is_file(),
            "no shim at {}: cargo build --workspace --bins",
            shim.display()
        );
        let out = Command::new(script())
            .arg("start")
            .env("PODVM_CONTAINERD_DIR", &dir)
            .env("PODVM_SHIM", &shim)
            .env("PODVM_STATE_DIR", state.path())
            .env("PODVM_LOG_DIR", logs.path())
            .env("PODVM_GUEST_DIR", &guest_image().dir)
            // The defaults, whatever this machine's /etc/podvm says.
            .env("PODVM_SHIM_CONFIG", dir.join("absent.toml"))
            .output()
            .expect("run scripts/containerd-test");
        assert!(
            out.status.success(),
            "scripts/containerd-test start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(Path::new(&socket).exists(), "no socket at {socket:?}");
        Containerd {
            dir,
            socket,
            state,
            _logs: logs,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("300")
            .arg("ctr")
            .args(["--address", &self.socket, "-n", NAMESPACE])
            .args(args)
            .output()
            .expect("run ctr")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .env("PODVM_CONTAINERD_DIR", &self.dir)
            .status();
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn ctr_run_runs_the_container_in_a_pod_vm() {
    let containerd = Containerd::start();

    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    podvm_host_runtime::sample_image::build_layout(&layout, "shim-test").unwrap();
    let tarball = work.path().join("busybox.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let import = containerd.ctr(&[
        "image",
        "import",
        "--base-name",
        "docker.io/podvm/busybox",
        tarball.to_str().unwrap(),
    ]);
    assert!(
        import.status.success(),
        "ctr image import: {}{}",
        text(&import.stdout),
        text(&import.stderr)
    );

    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.podvm.v2",
        IMAGE,
        "t1",
        "/bin/sh",
        "-c",
        "uname -r; exit 3",
    ]);
    let stdout = text(&run.stdout);
    let host_release = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    assert_eq!(
        run.status.code(),
        Some(3),
        "ctr run: stdout {stdout:?}, stderr {:?}; containerd log:\n{}",
        text(&run.stderr),
        containerd.log()
    );
    let guest_release = stdout.lines().next().unwrap_or("").trim();
    assert!(!guest_release.is_empty(), "no output: {stdout:?}");
    assert_ne!(
        guest_release,
        host_release.trim(),
        "the command ran on the host's kernel"
    );

    // Nothing of the task's VM is left: no process, no state directory, no task.
    let state = containerd.state.path().to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&state).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(processes_mentioning(&state), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(containerd.state.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
    let tasks = containerd.ctr(&["task", "ls", "-q"]);
    assert_eq!(text(&tasks.stdout).trim(), "", "tasks left");
}
