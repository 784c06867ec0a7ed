//! Containers end to end, on this machine (as root): an agent in this process serves its ttrpc API
//! on a Unix socket, with the default (permissive) policy, its container state in a temporary
//! directory and the `podvm-agent` binary as the container helper. The image is a rootfs made
//! from Debian's static busybox (`busybox-static`, installed by `scripts/setup --deps`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use podvm_guest_agent::container::{
    Containers, ContainersConfig,
    cgroup::{CGROUP_ROOT, is_cgroup2},
};
use podvm_guest_agent::service::Agent;
use podvm_guest_agent::transport;
use podvm_policy::AgentPolicy;
use podvm_protocols::agent::*;
use podvm_protocols::agent_ttrpc::AgentServiceClient;
use podvm_protocols::oci::{
    Linux, LinuxCapabilities, LinuxNamespace, LinuxSeccomp, LinuxSyscall, Process, Root, Spec,
    User, linux_syscall::ErrnoRet,
};
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "sleep", "mkdir", "hostname", "true", "tty", "stty", "readlink",
    "dd", "tr",
];

/// Docker's default capabilities as a `CapEff` mask.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// An agent serving on a Unix socket, with a busybox image.
struct Pod {
    api: AgentServiceClient,
    image: PathBuf,
    state: PathBuf,
    _server: Server,
    _agent: Arc<Agent>,
    _dir: tempfile::TempDir,
}

fn build_image(root: &Path) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install busybox-static (scripts/setup --deps)"
    );
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
}

async fn pod() -> Pod {
    pod_with_cgroups(Path::new(CGROUP_ROOT)).await
}

/// A pod whose containers get their cgroups below `cgroup_root`.
async fn pod_with_cgroups(cgroup_root: &Path) -> Pod {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container tests run as root (namespaces, mounts)"
    );
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    build_image(&image);
    let state = dir.path().join("state");
    let containers = Containers::new(ContainersConfig {
        state_dir: state.clone(),
        helper: PathBuf::from(env!("CARGO_BIN_EXE_podvm-agent")),
        cgroup_root: cgroup_root.to_path_buf(),
    });
    let agent = Agent::with_containers(
        PathBuf::from("/"),
        0,
        AgentPolicy::default_policy(),
        containers,
    );
    let socket = dir.path().join("agent.sock");
    let mut server = Server::new()
        .add_listener(Listener::new(transport::unix_incoming(&socket).unwrap()))
        .register_service(agent.services());
    server.start().await.unwrap();
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let api = AgentServiceClient::new(Client::new(Socket::new(stream)));
    Pod {
        api,
        image,
        state,
        _server: server,
        _agent: agent,
        _dir: dir,
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// `(code, message)` of a failed call.
fn failure<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

impl Pod {
    /// A spec for `args` on the pod's image: default mounts, own namespaces, no capabilities
    /// field (Docker's defaults), `no_new_privileges`.
    fn spec(&self, args: &[&str]) -> Spec {
        Spec {
            Version: "1.1.0".into(),
            Process: Some(Process {
                Args: args.iter().map(|s| s.to_string()).collect(),
                Env: vec!["PATH=/bin".into(), "SECRET=s3cret".into()],
                Cwd: "/".into(),
                NoNewPrivileges: true,
                ..Default::default()
            })
            .into(),
            Root: Some(Root {
                Path: self.image.display().to_string(),
                Readonly: false,
                ..Default::default()
            })
            .into(),
            Linux: Some(Linux {
                Namespaces: ["pid", "ipc", "uts", "mount"]
                    .iter()
                    .map(|t| LinuxNamespace {
                        Type: t.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                MaskedPaths: vec!["/proc/kcore".into()],
                ReadonlyPaths: vec!["/proc/sys".into()],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, spec: Spec) -> ttrpc::Result<()> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            exec_id: id.into(),
            OCI: Some(spec).into(),
            ..Default::default()
        };
        self.api.create_container(ctx(), &req).await.map(drop)
    }

    async fn start(&self, id: &str) -> ttrpc::Result<()> {
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.api.start_container(ctx(), &req).await.map(drop)
    }

    async fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let req = WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.api.wait_process(ctx(), &req).await.unwrap().status
    }

    async fn signal(&self, id: &str, exec_id: &str, signal: i32) {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: signal as u32,
            ..Default::default()
        };
        self.api.signal_process(ctx(), &req).await.unwrap();
    }

    async fn remove(&self, id: &str, timeout: u32) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            timeout,
            ..Default::default()
        };
        self.api.remove_container(ctx(), &req).await.unwrap();
    }

    /// Everything the process writes on stdout (or stderr), until EOF.
    async fn output(&self, id: &str, exec_id: &str, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req = ReadStreamRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                len: 7, // small: several reads
                ..Default::default()
            };
            let read = if stderr {
                self.api.read_stderr(ctx(), &req).await
            } else {
                self.api.read_stdout(ctx(), &req).await
            };
            match read {
                Ok(r) => {
                    assert!(!r.data.is_empty() && r.data.len() <= 7);
                    out.extend(r.data);
                }
                Err(e) => {
                    let (code, msg) = failure::<()>(Err(e));
                    assert_eq!(code, ttrpc::Code::OUT_OF_RANGE, "{msg}");
                    assert!(msg.ends_with(": EOF"), "{msg}");
                    break;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Creates, starts and waits for a container; removes it; returns (status, stdout, stderr).
    async fn run(&self, id: &str, spec: Spec) -> (i32, String, String) {
        self.create(id, spec).await.expect("CreateContainer");
        self.start(id).await.expect("StartContainer");
        let stdout = self.output(id, "", false).await;
        let stderr = self.output(id, "", true).await;
        let status = self.wait(id, "").await;
        self.remove(id, 0).await;
        (status, stdout, stderr)
    }

    /// Host mounts that mention the pod's state or image directories.
    fn leaked_mounts(&self) -> Vec<String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let (state, image) = (
            self.state.display().to_string(),
            self.image.display().to_string(),
        );
        mountinfo
            .lines()
            .filter(|l| l.contains(&state) || l.contains(&image))
            .map(String::from)
            .collect()
    }
}

/// Processes of this machine whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[tokio::test]
async fn output_status_pid_namespace_hostname_and_stdin() {
    let pod = pod().await;
    let mut spec = pod.spec(&[
        "sh",
        "-c",
        "echo hello; echo oops >&2; echo $$; hostname; exit 7",
    ]);
    spec.Hostname = "pod-host".into();
    let (status, stdout, stderr) = pod.run("c1", spec).await;
    assert_eq!(status, 7);
    assert_eq!(stdout, "hello\n1\npod-host\n");
    assert_eq!(stderr, "oops\n");

    // stdin reaches the process; closing it ends `cat`.
    pod.create("cat", pod.spec(&["cat"])).await.unwrap();
    pod.start("cat").await.unwrap();
    let write = WriteStreamRequest {
        container_id: "cat".into(),
        data: b"through stdin\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(pod.api.write_stdin(ctx(), &write).await.unwrap().len, 14);
    let close = CloseStdinRequest {
        container_id: "cat".into(),
        ..Default::default()
    };
    pod.api.close_stdin(ctx(), &close).await.unwrap();
    assert_eq!(pod.output("cat", "", false).await, "through stdin\n");
    assert_eq!(pod.wait("cat", "").await, 0);
    pod.remove("cat", 0).await;

    // The image stayed pristine (the container wrote mount points into an overlay).
    assert!(!pod.image.join("proc").exists() && !pod.image.join("dev").exists());
    assert_eq!(pod.leaked_mounts(), Vec::<String>::new());
}

#[tokio::test]
async fn seccomp_profile_denies_mkdir() {
    let pod = pod().await;
    let mut spec = pod.spec(&["sh", "-c", "mkdir /x; echo status $?"]);
    spec.Linux.mut_or_insert_default().Seccomp = Some(LinuxSeccomp {
        DefaultAction: "SCMP_ACT_ALLOW".into(),
        Syscalls: vec![LinuxSyscall {
            Names: vec!["mkdir".into(), "mkdirat".into()],
            Action: "SCMP_ACT_ERRNO".into(),
            ErrnoRet: Some(ErrnoRet::Errnoret(libc::EPERM as u32)),
            ..Default::default()
        }],
        ..Default::default()
    })
    .into();
    let (status, stdout, stderr) = pod.run("sec", spec).await;
    assert_eq!(status, 0);
    assert_eq!(stdout, "status 1\n");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    // Without the profile the same command works.
    let (_, stdout, _) = pod
        .run("nosec", pod.spec(&["sh", "-c", "mkdir /x; echo status $?"]))
        .await;
    assert_eq!(stdout, "status 0\n");
}

#[tokio::test]
async fn capabilities_and_user() {
    let pod = pod().await;
    let caps = |stdout: &str, field: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {field} in {stdout}"))
    };

    // No capabilities in the spec's (present, empty) sets: none at all.
    let mut spec = pod.spec(&["cat", "/proc/self/status"]);
    spec.Process.mut_or_insert_default().Capabilities = Some(LinuxCapabilities::new()).into();
    let (status, stdout, _) = pod.run("nocaps", spec).await;
    assert_eq!(status, 0);
    assert_eq!(caps(&stdout, "CapEff:"), "0000000000000000");
    assert_eq!(caps(&stdout, "CapBnd:"), "0000000000000000");
    assert_eq!(caps(&stdout, "NoNewPrivs:"), "1");

    // No Capabilities field: Docker's default set.
    let (_, stdout, _) = pod
        .run("defcaps", pod.spec(&["cat", "/proc/self/status"]))
        .await;
    assert_eq!(caps(&stdout, "CapEff:"), DOCKER_DEFAULT_CAPS);
    assert_eq!(caps(&stdout, "CapBnd:"), DOCKER_DEFAULT_CAPS);

    // User 1000 with an extra group; an unprivileged user keeps no capabilities.
    let mut spec = pod.spec(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; grep CapEff /proc/self/status",
    ]);
    spec.Process.mut_or_insert_default().User = Some(User {
        UID: 1000,
        GID: 1000,
        AdditionalGids: vec![2000],
        ..Default::default()
    })
    .into();
    let (status, stdout, stderr) = pod.run("user", spec).await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "1000\n1000\n1000 2000\nCapEff:\t0000000000000000\n");
}

#[tokio::test]
async fn exec_kill_and_remove() {
    let pod = pod().await;
    pod.create("app", pod.spec(&["sleep", "987651"]))
        .await
        .unwrap();
    pod.start("app").await.unwrap();

    // An exec process: same PID namespace (not PID 1), same hostname namespace.
    let exec = ExecProcessRequest {
        container_id: "app".into(),
        exec_id: "e1".into(),
        process: Some(Process {
            Args: vec![
                "sh".into(),
                "-c".into(),
                "echo hi; echo $$; cat /proc/1/cmdline".into(),
            ],
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    pod.api.exec_process(ctx(), &exec).await.unwrap();
    let out = pod.output("app", "e1", false).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_ne!(lines[1], "1");
    assert_eq!(lines[2].replace('\0', " ").trim_end(), "sleep 987651");
    assert_eq!(pod.wait("app", "e1").await, 0);
    // Waited for and read to the end: forgotten.
    let again = WaitProcessRequest {
        container_id: "app".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, msg) = failure(pod.api.wait_process(ctx(), &again).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");

    // SIGKILL to the container: 128 + 9.
    pod.signal("app", "", libc::SIGKILL).await;
    assert_eq!(pod.wait("app", "").await, 137);
    pod.remove("app", 0).await;

    // A running container removed with a timeout is killed, with everything in it.
    pod.create("busy", pod.spec(&["sleep", "987652"]))
        .await
        .unwrap();
    pod.start("busy").await.unwrap();
    let mut exec = exec.clone();
    exec.container_id = "busy".into();
    exec.exec_id = "e2".into();
    exec.process.mut_or_insert_default().Args = vec!["sleep".into(), "987653".into()];
    pod.api.exec_process(ctx(), &exec).await.unwrap();
    assert_eq!(
        processes_with("sleep 98765").len(),
        2,
        "{:?}",
        processes_with("sleep 98765")
    );
    assert!(pod.state.join("busy").is_dir());
    let started = std::time::Instant::now();
    pod.remove("busy", 1).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(processes_with("sleep 98765"), Vec::<String>::new());
    assert_eq!(pod.leaked_mounts(), Vec::<String>::new());
    assert!(!pod.state.join("busy").exists());
    let (code, _) = failure(
        pod.api
            .start_container(
                ctx(),
                &StartContainerRequest {
                    container_id: "busy".into(),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    // A container removed before it was started.
    pod.create("never", pod.spec(&["sleep", "987654"]))
        .await
        .unwrap();
    pod.remove("never", 0).await;
    let helpers: Vec<String> = processes_with("__container-init")
        .into_iter()
        .filter(|p| p.trim_end().ends_with(" never"))
        .collect();
    assert_eq!(helpers, Vec::<String>::new());
}

#[tokio::test]
async fn errors_are_one_actionable_line() {
    let pod = pod().await;
    pod.create("c1", pod.spec(&["/bin/nope"])).await.unwrap();
    let (code, msg) = failure(pod.start("c1").await);
    assert_eq!(
        msg,
        "StartContainer c1: exec \"/bin/nope\": No such file or directory"
    );
    assert_eq!(code, ttrpc::Code::INTERNAL);
    assert_eq!(pod.wait("c1", "").await, 127);
    pod.remove("c1", 0).await;

    pod.create("c2", pod.spec(&["nope"])).await.unwrap();
    let (_, msg) = failure(pod.start("c2").await);
    assert_eq!(
        msg,
        "StartContainer c2: exec \"nope\": executable file not found in $PATH"
    );
    pod.remove("c2", 0).await;

    // A working directory that does not exist in the image.
    let mut spec = pod.spec(&["true"]);
    spec.Process.mut_or_insert_default().Cwd = "/missing".into();
    pod.create("c3", spec).await.unwrap();
    let (_, msg) = failure(pod.start("c3").await);
    assert_eq!(
        msg,
        "StartContainer c3: chdir to \"/missing\": No such file or directory"
    );
    pod.remove("c3", 0).await;

    // Mistakes in the request, before any process exists.
    let mut no_process = pod.spec(&["true"]);
    no_process.Process.clear();
    let (code, msg) = failure(pod.create("c1", no_process).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert_eq!(msg, "CreateContainer c1: OCI.Process is missing");
    let (code, msg) = failure(pod.create("../x", pod.spec(&["true"])).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let mut no_root = pod.spec(&["true"]);
    no_root.Root.clear();
    let (code, msg) = failure(pod.create("c4", no_root).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("PullImage"), "{msg}");
    let (code, msg) = failure(pod.start("c9").await);
    assert_eq!(
        (code, msg.as_str()),
        (
            ttrpc::Code::NOT_FOUND,
            "StartContainer c9: no such container"
        )
    );
    // Nothing left behind.
    assert_eq!(std::fs::read_dir(&pod.state).unwrap().count(), 0);
    assert_eq!(pod.leaked_mounts(), Vec::<String>::new());
}

#[tokio::test]
async fn pulled_image_supplies_command_env_and_user() {
    let pod = pod().await;
    let config =
        br#"{"config":{"Entrypoint":["sh","-c"],"Cmd":["echo $GREETING from $(id -u) in $(pwd)"],
        "Env":["PATH=/bin","GREETING=hello"],"WorkingDir":"/etc","User":"1234"}}"#;
    pod._agent
        .containers()
        .register_image("img", pod.image.clone(), config.to_vec());
    let mut spec = pod.spec(&[]);
    spec.Process.mut_or_insert_default().Env.clear();
    spec.Process.mut_or_insert_default().Cwd.clear();
    spec.Root.mut_or_insert_default().Path = "/run/podvm/shared/containers/img/rootfs".into();
    let (status, stdout, stderr) = pod.run("img", spec).await;
    assert_eq!(
        (status, stdout.as_str()),
        (0, "hello from 1234 in /etc\n"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sandbox_pidns_containers_share_one_pid_namespace() {
    let pod = pod().await;
    let create = |id: &'static str, args: &'static [&'static str]| CreateContainerRequest {
        container_id: id.into(),
        exec_id: id.into(),
        OCI: Some(pod.spec(args)).into(),
        sandbox_pidns: true,
        ..Default::default()
    };
    // The first container's init is PID 1 of the pod's namespace.
    pod.api
        .create_container(ctx(), &create("first", &["sleep", "30"]))
        .await
        .expect("CreateContainer first");
    pod.start("first").await.expect("StartContainer first");
    // The second one joins it: it sees the first's init as PID 1 and is not PID 1 itself.
    pod.api
        .create_container(
            ctx(),
            &create(
                "second",
                &[
                    "/bin/sh",
                    "-c",
                    "echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '",
                ],
            ),
        )
        .await
        .expect("CreateContainer second");
    pod.start("second").await.expect("StartContainer second");
    let stdout = pod.output("second", "", false).await;
    assert_eq!(pod.wait("second", "").await, 0);
    assert!(!stdout.contains("pid=1\n"), "{stdout}");
    assert!(stdout.contains("sleep 30"), "{stdout}");
    pod.remove("second", 0).await;
    pod.signal("first", "", libc::SIGKILL).await;
    assert_eq!(pod.wait("first", "").await, 137);
    pod.remove("first", 0).await;
    // A container without sandbox_pidns keeps its own namespace.
    let (status, stdout, _) = pod
        .run("alone", pod.spec(&["/bin/sh", "-c", "echo pid=$$"]))
        .await;
    assert_eq!((status, stdout.as_str()), (0, "pid=1\n"));
    assert_eq!(pod.leaked_mounts(), Vec::<String>::new());
}

impl Pod {
    async fn resize(&self, id: &str, exec_id: &str, row: u32, column: u32) -> ttrpc::Result<()> {
        let req = TtyWinResizeRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            row,
            column,
            ..Default::default()
        };
        self.api.tty_win_resize(ctx(), &req).await.map(drop)
    }

    async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        let req = WriteStreamRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        self.api.write_stdin(ctx(), &req).await.map(|r| r.len)
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) {
        let req = CloseStdinRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.api.close_stdin(ctx(), &req).await.unwrap();
    }

    /// Reads stdout until `needle` shows up (or EOF); everything read.
    async fn output_until(&self, id: &str, exec_id: &str, needle: &str) -> String {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            let req = ReadStreamRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                len: 4096,
                ..Default::default()
            };
            match self.api.read_stdout(ctx(), &req).await {
                Ok(r) => out.extend(r.data),
                Err(e) => panic!(
                    "{needle:?} never came: {e:?} after {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8(out).unwrap()
    }

    async fn stats(&self, id: &str) -> ttrpc::Result<CgroupStats> {
        let req = StatsContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let resp = self.api.stats_container(ctx(), &req).await?;
        Ok(resp.cgroup_stats.into_option().unwrap_or_default())
    }
}

fn with_terminal(mut spec: Spec) -> Spec {
    spec.Process.mut_or_insert_default().Terminal = true;
    spec
}

#[tokio::test]
async fn terminal_for_a_containers_init() {
    let pod = pod().await;
    let spec = with_terminal(pod.spec(&[
        "sh",
        "-c",
        "readlink /proc/self/fd/0; stty size; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-tty; \
         (exec 3</dev/tty) 2>/dev/null && echo ctty-ok; echo term=[$TERM]; echo err >&2; echo done",
    ]));
    pod.create("t1", spec).await.unwrap();
    // The init waits for StartContainer: its terminal exists already.
    pod.resize("t1", "", 40, 100).await.unwrap();
    pod.start("t1").await.unwrap();
    let stdout = pod.output("t1", "", false).await;
    // The terminal merges stderr into stdout and turns \n into \r\n. fds 0-2 are a slave of
    // the agent's devpts: `readlink` shows its /dev/pts path; `tty` (ttyname) would say "not a
    // tty", as with Kata's agent, since the container's /dev/pts is a devpts of its own.
    let lines: Vec<&str> = stdout.split("\r\n").collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{stdout:?}");
    assert_eq!(
        lines[1..].join("\n"),
        "40 100\nall-tty\nctty-ok\nterm=[]\nerr\ndone\n",
        "{stdout:?}"
    );
    assert_eq!(pod.output("t1", "", true).await, "");
    assert_eq!(pod.wait("t1", "").await, 0);
    pod.remove("t1", 0).await;

    // Without a terminal: the resize is refused, and an unknown process is not found.
    pod.create("plain", pod.spec(&["true"])).await.unwrap();
    let (code, msg) = failure(pod.resize("plain", "", 24, 80).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert_eq!(
        msg,
        "TtyWinResize plain: the process has no terminal (it was not started with process.Terminal)"
    );
    let (code, msg) = failure(pod.resize("plain", "nope", 24, 80).await);
    assert_eq!(
        (code, msg.as_str()),
        (
            ttrpc::Code::NOT_FOUND,
            "TtyWinResize plain/nope: no such process \"nope\""
        )
    );
    let (code, _) = failure(pod.resize("ghost", "", 24, 80).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    pod.remove("plain", 0).await;
    assert_eq!(pod.leaked_mounts(), Vec::<String>::new());
}

#[tokio::test]
async fn terminal_for_an_exec_process() {
    let pod = pod().await;
    pod.create("app", pod.spec(&["sleep", "987661"]))
        .await
        .unwrap();
    pod.start("app").await.unwrap();
    let exec = |exec_id: &str, script: &str| ExecProcessRequest {
        container_id: "app".into(),
        exec_id: exec_id.into(),
        process: Some(Process {
            Args: vec!["sh".into(), "-c".into(), script.into()],
            Env: vec!["PATH=/bin".into(), "TERM=xterm".into()],
            Cwd: "/".into(),
            Terminal: true,
            ConsoleSize: Some(podvm_protocols::oci::Box {
                Height: 30,
                Width: 90,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    pod.api
        .exec_process(
            ctx(),
            &exec(
                "e1",
                "stty size; readlink /proc/self/fd/1; echo term=$TERM; echo $$",
            ),
        )
        .await
        .unwrap();
    let stdout = pod.output("app", "e1", false).await;
    let lines: Vec<&str> = stdout.split("\r\n").collect();
    assert_eq!(lines[0], "30 90", "{stdout:?}");
    assert!(lines[1].starts_with("/dev/pts/"), "{stdout:?}");
    assert_eq!(lines[2], "term=xterm", "{stdout:?}");
    assert_ne!(lines[3], "1", "{stdout:?}");
    assert_eq!(pod.output("app", "e1", true).await, "");
    assert_eq!(pod.wait("app", "e1").await, 0);

    // A resize while it runs reaches the process.
    pod.api
        .exec_process(ctx(), &exec("e2", "echo ready; read x; stty size"))
        .await
        .unwrap();
    pod.output_until("app", "e2", "ready").await;
    pod.resize("app", "e2", 50, 120).await.unwrap();
    let (code, _) = failure(pod.resize("app", "e2", 70_000, 120).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    pod.write_stdin("app", "e2", b"\n").await.unwrap();
    let rest = pod.output("app", "e2", false).await;
    assert!(rest.ends_with("50 120\r\n"), "{rest:?}");
    assert_eq!(pod.wait("app", "e2").await, 0);
    // The container's init has no terminal.
    let (code, _) = failure(pod.resize("app", "", 24, 80).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    pod.signal("app", "", libc::SIGKILL).await;
    pod.wait("app", "").await;
    pod.remove("app", 0).await;
}

#[tokio::test]
async fn terminal_stdin_write_and_close() {
    let pod = pod().await;
    pod.create(
        "rd",
        with_terminal(pod.spec(&["sh", "-c", "echo ready; read x; echo got:$x"])),
    )
    .await
    .unwrap();
    pod.start("rd").await.unwrap();
    // stderr is at EOF at once, while the process still runs.
    let stderr = tokio::time::timeout(Duration::from_secs(5), pod.output("rd", "", true))
        .await
        .expect("ReadStderr of a tty process waited");
    assert_eq!(stderr, "");
    pod.output_until("rd", "", "ready").await;
    assert_eq!(pod.write_stdin("rd", "", b"hello\n").await.unwrap(), 6);
    let out = pod.output("rd", "", false).await;
    // The terminal echoes the input, then the answer.
    assert_eq!(out, "hello\r\ngot:hello\r\n");
    assert_eq!(pod.wait("rd", "").await, 0);
    pod.remove("rd", 0).await;

    // CloseStdin on a terminal sends its EOF character: `cat` ends.
    pod.create("cat", with_terminal(pod.spec(&["cat"])))
        .await
        .unwrap();
    pod.start("cat").await.unwrap();
    pod.write_stdin("cat", "", b"abc\n").await.unwrap();
    pod.output_until("cat", "", "abc\r\nabc\r\n").await;
    pod.close_stdin("cat", "").await;
    let status = tokio::time::timeout(Duration::from_secs(10), pod.wait("cat", ""))
        .await
        .expect("cat did not see the end of its input");
    assert_eq!(status, 0);
    let (code, msg) = failure(pod.write_stdin("cat", "", b"more").await);
    assert_eq!(
        (code, msg.as_str()),
        (
            ttrpc::Code::FAILED_PRECONDITION,
            "WriteStdin cat: stdin is closed"
        )
    );
    pod.remove("cat", 0).await;

    // A write the process never reads fills the (raw) terminal and blocks; it ends with the
    // process.
    pod.create(
        "deaf",
        with_terminal(pod.spec(&["sh", "-c", "stty raw -echo; echo raw; sleep 2"])),
    )
    .await
    .unwrap();
    pod.start("deaf").await.unwrap();
    pod.output_until("deaf", "", "raw").await;
    let write = pod.write_stdin("deaf", "", &[b'x'; 512 << 10]);
    let result = tokio::time::timeout(Duration::from_secs(15), write)
        .await
        .expect("WriteStdin outlived the process");
    let (code, msg) = failure(result);
    assert_eq!(
        (code, msg.as_str()),
        (
            ttrpc::Code::FAILED_PRECONDITION,
            "WriteStdin deaf: the process has exited (its terminal is closed)"
        )
    );
    pod.close_stdin("deaf", "").await;
    assert_eq!(pod.wait("deaf", "").await, 0);
    pod.remove("deaf", 0).await;
}

/// A cgroup2 mount for the statistics test: the guest's `/sys/fs/cgroup`, or on a hybrid
/// (cgroup v1) host its `unified` hierarchy.
fn cgroup2_root() -> PathBuf {
    [CGROUP_ROOT, "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .expect("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

#[tokio::test]
async fn stats_of_a_running_container() {
    let root = cgroup2_root();
    let pod = pod_with_cgroups(&root).await;
    pod.create(
        "st",
        pod.spec(&[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; echo filled; sleep 30",
        ]),
    )
    .await
    .unwrap();
    pod.start("st").await.unwrap();
    pod.output_until("st", "", "filled").await;
    let stats = pod.stats("st").await.unwrap();
    let cpu = &stats.cpu_stats.cpu_usage;
    assert!(cpu.total_usage > 0, "{stats:?}");
    assert!(cpu.total_usage >= cpu.usage_in_usermode, "{stats:?}");
    assert!(
        cpu.usage_in_usermode + cpu.usage_in_kernelmode > 0,
        "{stats:?}"
    );
    // Memory and pids need their controllers, which a hybrid host keeps for cgroup v1.
    let controllers =
        std::fs::read_to_string(root.join("podvm/st/cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if has("memory") {
        let m = &stats.memory_stats;
        // 16 MiB of shmem in /dev/shm.
        assert!(m.usage.usage >= 16 << 20, "{stats:?}");
        assert_eq!(m.usage.limit, u64::MAX, "{stats:?}");
        assert!(
            m.stats.contains_key("anon") && m.stats.contains_key("file"),
            "{stats:?}"
        );
    } else {
        eprintln!(
            "no memory controller in {}: memory not checked",
            root.display()
        );
    }
    if has("pids") {
        assert!(stats.pids_stats.current >= 1, "{stats:?}");
    } else {
        eprintln!("no pids controller in {}: pids not checked", root.display());
    }

    let (code, msg) = failure(pod.stats("ghost").await);
    assert_eq!(
        (code, msg.as_str()),
        (
            ttrpc::Code::NOT_FOUND,
            "StatsContainer ghost: no such container"
        )
    );
    pod.signal("st", "", libc::SIGKILL).await;
    assert_eq!(pod.wait("st", "").await, 137);
    pod.remove("st", 0).await;
    // The parent cgroup this test may have created (an empty directory).
    if root != Path::new(CGROUP_ROOT) {
        let _ = std::fs::remove_dir(root.join("podvm"));
    }

    // Where containers get no cgroup (not a cgroup2 mount), the call says why.
    if !is_cgroup2(Path::new(CGROUP_ROOT)) {
        let plain = self::pod().await;
        plain.create("nocg", plain.spec(&["true"])).await.unwrap();
        let (code, msg) = failure(plain.stats("nocg").await);
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
        assert!(msg.contains("not a cgroup2 mount"), "{msg}");
        plain.remove("nocg", 0).await;
    }
}
