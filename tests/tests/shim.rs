//! The containerd shim end to end: a private containerd (`scripts/containerd-test`) with
//! `io.containerd.podvm.v2` and a busybox image imported with `ctr`.
//!
//! - `ctr run --rm` of a command that prints the kernel release and exits 3: the output is the
//!   guest's kernel, the exit code comes back, nothing of the task's VM is left afterwards;
//! - `ctr task exec` into a running pod (output, exit code, stdin), `ctr task metrics`, then
//!   `kill` + `delete` leave no process, mount, socket or state directory;
//! - five pods started at once all run; killing one pod's QEMU is reported as that task's exit
//!   (137) and the other four go on;
//! - the containers of one CRI sandbox (its annotations) share one pod VM;
//! - a confidential pod (`[tee] mode = "snp-emulated"`) runs the encrypted image pulled inside
//!   the guest after attestation, not containerd's copy of an image on the host;
//! - `ctr run -t` / `ctr task exec -t`: a terminal in the guest, sized like the client's;
//! - a crashed shim takes its VM along; `podvm cleanup` removes the leftovers.

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
    // Released after `drop` has stopped this containerd.
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: PathBuf,
    socket: String,
    state: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        // One test at a time: each boots up to five TCG guests on a 2-core machine.
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/run/podvm-containerd-e2e-{}-{n}",
            std::process::id()
        ));
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
            .env("PODVM_EMULATED_PSP_DIR", podvm_e2e::emulated_psp_dir())
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
            _serial: serial,
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

    /// `ctr` with `input` on its stdin.
    fn ctr_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new("timeout")
            .arg("300")
            .arg("ctr")
            .args(["--address", &self.socket, "-n", NAMESPACE])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ctr");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Imports the busybox sample image as [`IMAGE`].
    fn import_busybox(&self) {
        let work = tempfile::tempdir().unwrap();
        let tarball = work.path().join("busybox.tar");
        podvm_host_runtime::sample_image::write_tarball(work.path(), &tarball, "shim-test")
            .unwrap();
        let import = self.ctr(&[
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
    }

    /// `ctr run -d` of `cmd` (a shell command line) with `extra` flags, until it runs.
    fn run_detached(&self, id: &str, extra: &[&str], cmd: &str) {
        let mut args = vec!["run", "-d", "--runtime", "io.containerd.podvm.v2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id, "/bin/sh", "-c", cmd]);
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run -d {id}: {}{}; containerd log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
        self.wait_status(id, "RUNNING");
    }

    /// `ctr task kill -s SIGKILL`, then the task and the container deleted.
    fn kill_and_remove(&self, id: &str) {
        let kill = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        assert!(kill.status.success(), "{}", text(&kill.stderr));
        self.wait_status(id, "STOPPED");
        self.ctr(&["task", "delete", id]);
        let rm = self.ctr(&["container", "delete", id]);
        assert!(rm.status.success(), "{}", text(&rm.stderr));
    }

    /// The tasks `ctr task ls` lists: id → (pid, status).
    fn tasks(&self) -> std::collections::BTreeMap<String, (u32, String)> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| {
                    (
                        f[0].to_string(),
                        (f[1].parse().unwrap_or(0), f[2].to_string()),
                    )
                })
            })
            .collect()
    }

    /// Waits until task `id` has `status`.
    fn wait_status(&self, id: &str, status: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let tasks = self.tasks();
            if tasks.get(id).is_some_and(|(_, s)| s == status) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {id} never reached {status}: {tasks:?}; containerd log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Checks that no process, mount or state of the pods is left.
    fn assert_nothing_left(&self) {
        let state = self.state.path().to_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !processes_mentioning(&state).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(processes_mentioning(&state), Vec::<String>::new());
        let left: Vec<_> = std::fs::read_dir(self.state.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "state left behind: {left:?}");
        let tasks = self.ctr(&["task", "ls", "-q"]);
        assert_eq!(text(&tasks.stdout).trim(), "", "tasks left");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let bundles = self.dir.join("state");
        let left: Vec<_> = mounts
            .lines()
            .filter(|l| l.contains(bundles.to_str().unwrap()))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
        // A shim exits once containerd has told it to shut down.
        let shim = format!("-address {} ", self.socket);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !processes_mentioning(&shim).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let shims = processes_mentioning(&shim);
        assert!(shims.is_empty(), "shims left: {shims:?}");
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

    containerd.import_busybox();

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
    containerd.assert_nothing_left();
}

#[test]
fn ctr_task_exec_runs_in_the_pod_vm_and_kill_delete_leave_nothing() {
    let containerd = Containerd::start();
    containerd.import_busybox();
    containerd.run_detached("e1", &[], "echo started; sleep 600");

    // An exec: output from the guest, exit code back.
    let exec = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        "e1",
        "/bin/sh",
        "-c",
        "uname -r; exit 5",
    ]);
    let host_release = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    assert_eq!(
        exec.status.code(),
        Some(5),
        "ctr task exec: {}{}; containerd log:\n{}",
        text(&exec.stdout),
        text(&exec.stderr),
        containerd.log()
    );
    let release = text(&exec.stdout);
    assert!(
        !release.trim().is_empty() && release.trim() != host_release.trim(),
        "{release:?}"
    );

    // stdin reaches the exec'd process and its EOF closes the process's stdin.
    let cat = containerd.ctr_with_stdin(
        &[
            "task",
            "exec",
            "--exec-id",
            "x2",
            "e1",
            "/bin/sh",
            "-c",
            "read x; echo got:$x; cat; echo eof",
        ],
        b"hello\nrest\n",
    );
    assert_eq!(
        text(&cat.stdout),
        "got:hello\nrest\neof\n",
        "stderr {}",
        text(&cat.stderr)
    );
    assert!(cat.status.success());

    // The exec'd process sees the container's processes: same PID namespace.
    let ps = containerd.ctr(&["task", "exec", "--exec-id", "x3", "e1", "/bin/ps"]);
    assert!(
        text(&ps.stdout).contains("sleep 600"),
        "{}",
        text(&ps.stdout)
    );

    // Metrics come from the container's cgroup in the guest.
    let metrics = containerd.ctr(&["task", "metrics", "e1"]);
    let table = text(&metrics.stdout);
    assert!(
        metrics.status.success(),
        "ctr task metrics: {table}{}",
        text(&metrics.stderr)
    );
    let pids_current: u64 = table
        .lines()
        .find(|l| l.starts_with("pids.current"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pids.current in {table}"));
    assert!(pids_current >= 1, "{table}");

    let kill = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "e1"]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    containerd.wait_status("e1", "STOPPED");
    let delete = containerd.ctr(&["task", "delete", "e1"]);
    assert!(
        text(&delete.stderr).contains("exit code 137"),
        "{}",
        text(&delete.stderr)
    );
    let rm = containerd.ctr(&["container", "delete", "e1"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    containerd.assert_nothing_left();
}

#[test]
fn five_pods_run_at_once_and_a_killed_vmm_ends_only_its_pod() {
    let containerd = Containerd::start();
    containerd.import_busybox();
    // The pods' configuration comes from the runtime options' ConfigPath (as the CRI plugin
    // passes it per RuntimeClass): smaller VMs than the defaults.
    let config = containerd.dir.join("configuration-small.toml");
    std::fs::write(
        &config,
        "[vm]\nmemory_mib = 256\n[timeouts]\nboot_secs = 240\n",
    )
    .unwrap();
    let ids: Vec<String> = (1..=5).map(|i| format!("p{i}")).collect();
    std::thread::scope(|scope| {
        let runs: Vec<_> = ids
            .iter()
            .map(|id| {
                let containerd = &containerd;
                let config = config.to_str().unwrap();
                scope.spawn(move || {
                    containerd.ctr(&[
                        "run",
                        "-d",
                        "--runtime",
                        "io.containerd.podvm.v2",
                        "--runtime-config-path",
                        config,
                        IMAGE,
                        id,
                        "/bin/sh",
                        "-c",
                        "sleep 600",
                    ])
                })
            })
            .collect();
        for (id, run) in ids.iter().zip(runs) {
            let out = run.join().unwrap();
            assert!(
                out.status.success(),
                "ctr run -d {id}: {}; containerd log:\n{}",
                text(&out.stderr),
                containerd.log()
            );
        }
    });
    for id in &ids {
        containerd.wait_status(id, "RUNNING");
    }
    let tasks = containerd.tasks();
    let victim = tasks["p3"].0;
    assert!(victim > 0, "{tasks:?}");
    let cmdline = std::fs::read(format!("/proc/{victim}/cmdline")).unwrap();
    assert!(
        text(&cmdline).contains("qemu"),
        "pid {victim} is not QEMU: {}",
        text(&cmdline)
    );
    // The memory from the ConfigPath file reached QEMU.
    assert!(
        text(&cmdline).replace('\0', " ").contains("-m 256M"),
        "{}",
        text(&cmdline)
    );
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();

    containerd.wait_status("p3", "STOPPED");
    // ctr reports the exit status on stderr ("exit with non-zero exit code 137").
    let delete = containerd.ctr(&["task", "delete", "p3"]);
    assert!(
        text(&delete.stderr).contains("exit code 137"),
        "{}",
        text(&delete.stderr)
    );
    // The others are untouched and still answer.
    let tasks = containerd.tasks();
    for id in ids.iter().filter(|id| *id != "p3") {
        assert_eq!(tasks[id].1, "RUNNING", "{tasks:?}");
        let exec = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "alive",
            id,
            "/bin/echo",
            "alive",
        ]);
        assert_eq!(
            text(&exec.stdout),
            "alive\n",
            "{id}: {}",
            text(&exec.stderr)
        );
    }
    for id in ids.iter().filter(|id| *id != "p3") {
        containerd.kill_and_remove(id);
    }
    let rm = containerd.ctr(&["container", "delete", "p3"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    containerd.assert_nothing_left();
}

#[test]
fn containers_of_one_cri_sandbox_share_its_pod_vm() {
    let containerd = Containerd::start();
    containerd.import_busybox();
    let run = |id: &str, kind: &str, cmd: &str| {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let sandbox = "io.kubernetes.cri.sandbox-id=pod1";
        containerd.run_detached(id, &["--annotation", &kind, "--annotation", sandbox], cmd);
    };
    run("pod1", "sandbox", "sleep 600");
    run("app1", "container", "sleep 600");
    run("app2", "container", "sleep 600");

    // One VM: the same VMM pid, the same guest boot id in every container.
    let tasks = containerd.tasks();
    assert_eq!(tasks["pod1"].0, tasks["app1"].0, "{tasks:?}");
    assert_eq!(tasks["pod1"].0, tasks["app2"].0, "{tasks:?}");
    let boot_id = |id: &str| {
        let out = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "boot",
            id,
            "/bin/cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let pod_boot = boot_id("pod1");
    assert_eq!(pod_boot.len(), 36, "{pod_boot:?}");
    assert_eq!(boot_id("app1"), pod_boot);
    assert_eq!(boot_id("app2"), pod_boot);
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(pod_boot, host_boot.trim());

    // A container's end leaves the pod running; the pod ends with its last container.
    for id in ["app1", "pod1", "app2"] {
        containerd.kill_and_remove(id);
        if id == "app1" {
            assert_eq!(containerd.tasks()["app2"].1, "RUNNING");
            assert_eq!(boot_id("app2"), pod_boot);
        }
    }
    containerd.assert_nothing_left();
}

#[test]
fn a_confidential_pod_runs_the_image_pulled_in_the_guest_not_the_hosts_copy() {
    use podvm_host_runtime::testbed::{IMAGE_KEY_URI, SECRET, Testbed};
    let work = std::env::temp_dir().join(format!("podvm-shim-testbed-{}", std::process::id()));
    let mut testbed = Testbed::start(&work).expect("registry and encrypted image");
    testbed.kbs_bin = Some(podvm_bin().with_file_name("podvm-kbs"));
    let psp = podvm_e2e::emulated_psp_dir();
    let kbs = testbed.kbs_url();

    // The reference value of exactly this launch (the default 1 vCPU), as `podvm pod run` plans it.
    let logs = tempfile::tempdir().unwrap();
    let refvals = logs.path().join("refvals.json");
    let plan = podvm_e2e::podvm(logs.path(), logs.path())
        .env("PODVM_EMULATED_PSP_DIR", &psp)
        .args([
            "pod",
            "run",
            "--image",
            &testbed.image,
            "--tee",
            "snp-emulated",
        ])
        .args(["--kbs", &kbs, "--image-key-uri", IMAGE_KEY_URI])
        .args(["--insecure-registry", &testbed.registry, "--plan-only"])
        .arg("--export-refvals")
        .arg(&refvals)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let reference = podvm_measured_boot::refvals::ReferenceValues::load(&refvals).unwrap();
    testbed.start_kbs(&psp, &reference).expect("KBS");

    let containerd = Containerd::start();
    // containerd's image (a busybox whose secret file says "shim-test") is only what ctr needs
    // to create a container; the pod must not run it.
    containerd.import_busybox();
    let config = containerd.dir.join("configuration-snp-emulated.toml");
    std::fs::write(
        &config,
        format!(
            "[tee]\nmode = \"snp-emulated\"\nkbs_url = \"{kbs}\"\nimage_key_uris = [\"{IMAGE_KEY_URI}\"]\ninsecure_registries = [\"{}\"]\n",
            testbed.registry
        ),
    )
    .unwrap();
    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.podvm.v2",
        "--runtime-config-path",
        config.to_str().unwrap(),
        "--annotation",
        &format!("io.kubernetes.cri.image-name={}", testbed.image),
        IMAGE,
        "c1",
        "/bin/sh",
        "-c",
        "cat /etc/podvm-demo/secret.txt; exit 4",
    ]);
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(4),
        "ctr run: {stdout:?} {}; containerd log:\n{}",
        text(&run.stderr),
        containerd.log()
    );
    assert!(
        stdout.contains(SECRET),
        "not the decrypted image: {stdout:?}"
    );
    assert!(!stdout.contains("shim-test"), "{stdout:?}");

    // Without the image annotation, a confidential pod is refused with the reason.
    let refused = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.podvm.v2",
        "--runtime-config-path",
        config.to_str().unwrap(),
        IMAGE,
        "c2",
        "/bin/true",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("io.kubernetes.cri.image-name"),
        "{}",
        text(&refused.stderr)
    );
    containerd.ctr(&["container", "delete", "c2"]);
    containerd.assert_nothing_left();
}

#[test]
fn a_crashed_shim_takes_its_vm_along_and_containerd_reports_the_exit() {
    let containerd = Containerd::start();
    containerd.import_busybox();
    containerd.run_detached("crash1", &[], "sleep 600");
    let vmm = containerd.tasks()["crash1"].0;
    let shims = processes_mentioning(&format!("-id crash1 -address {} ", containerd.socket));
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim_pid: u32 = shims[0].split(':').next().unwrap().parse().unwrap();
    Command::new("kill")
        .args(["-KILL", &shim_pid.to_string()])
        .status()
        .unwrap();

    // The VMM dies with its shim (it never outlives the pod's sandbox) ...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while podvm_e2e::alive(vmm) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!podvm_e2e::alive(vmm), "QEMU {vmm} outlived its shim");
    // ... and containerd sees the task end: it runs the shim's cleanup (`delete`) and drops
    // the task.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while containerd
        .tasks()
        .get("crash1")
        .is_some_and(|(_, status)| status != "STOPPED")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd never saw the task end: {:?}",
            containerd.tasks()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    containerd.ctr(&["task", "delete", "crash1"]);
    let rm = containerd.ctr(&["container", "delete", "crash1"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    // The VM's state directory is a crashed node's leftover: `podvm cleanup` removes it.
    let cleanup = Command::new(podvm_bin())
        .arg("cleanup")
        .env("PODVM_STATE_DIR", containerd.state.path())
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{}", text(&cleanup.stderr));
    containerd.assert_nothing_left();
}

#[test]
fn ctr_run_and_exec_with_a_terminal() {
    let containerd = Containerd::start();
    containerd.import_busybox();
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let ctr_in_terminal = |args: &str| {
        Command::new("timeout")
            .arg("300")
            .args(["script", "-qec"])
            .arg(format!(
                "stty cols 100 rows 40; ctr --address {} -n {NAMESPACE} {args}",
                containerd.socket
            ))
            .arg("/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script")
    };
    let run = ctr_in_terminal(&format!(
        "run --rm -t --runtime io.containerd.podvm.v2 {IMAGE} tty1 /bin/sh -c 'readlink /proc/self/fd/0; stty size; [ -t 1 ] && echo is-a-terminal; exit 7'"
    ));
    let out = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(7),
        "{out:?} {}; containerd log:\n{}",
        text(&run.stderr),
        containerd.log()
    );
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // The size of ctr's terminal reached the guest's (ResizePty).
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("is-a-terminal"), "{out:?}");

    containerd.run_detached("tty2", &[], "sleep 600");
    // (ctr resizes an exec's terminal only after it started it: give that a moment.)
    let exec = ctr_in_terminal(
        "task exec -t --exec-id t1 tty2 /bin/sh -c '[ -t 0 ] && echo exec-terminal; sleep 2; stty size; exit 6'",
    );
    let out = text(&exec.stdout);
    assert_eq!(
        exec.status.code(),
        Some(6),
        "{out:?} {}",
        text(&exec.stderr)
    );
    assert!(out.contains("exec-terminal"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    containerd.kill_and_remove("tty2");
    containerd.assert_nothing_left();
}
