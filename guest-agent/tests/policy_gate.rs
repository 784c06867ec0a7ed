//! The policy gate end to end: the agent binary on a Unix socket, with the initdata the generator
//! makes for `policy/testdata/pod.yaml`, called through ttrpc like the host does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use podvm_policy::{GenerateOptions, generate};
use podvm_protocols::agent::*;
use podvm_protocols::agent_ttrpc::AgentServiceClient;
use podvm_protocols::health::CheckRequest;
use podvm_protocols::health_ttrpc::HealthClient;
use podvm_protocols::protobuf::{Message, MessageFull};
use ttrpc::r#async::Client;
use ttrpc::r#async::transport::Socket;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/testdata")
}

/// The agent process; killed and reaped on drop.
struct AgentProcess {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(initdata: Option<&podvm_policy::InitData>) -> AgentProcess {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podvm-agent"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", socket.display()));
    cmd.arg("--policy-log")
        .arg(dir.path().join("requests.jsonl"));
    if let Some(i) = initdata {
        let image = dir.path().join("initdata.img");
        std::fs::write(&image, i.to_device_image()).unwrap();
        cmd.arg("--initdata").arg(&image);
    }
    let child = cmd.spawn().expect("start podvm-agent");
    let mut agent = AgentProcess {
        child,
        socket,
        _dir: dir,
    };
    for _ in 0..200 {
        if agent.socket.exists() {
            return agent;
        }
        if let Some(status) = agent.child.try_wait().unwrap() {
            panic!("podvm-agent exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("podvm-agent did not listen on {}", agent.socket.display());
}

async fn clients(agent: &AgentProcess) -> (HealthClient, AgentServiceClient) {
    let stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .expect("connect to the agent");
    let client = Client::new(Socket::new(stream));
    (
        HealthClient::new(client.clone()),
        AgentServiceClient::new(client),
    )
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

/// `(code, message)` of a failed call.
fn failure<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

fn from_json<M: MessageFull>(json: &serde_json::Value) -> M {
    protobuf_json_mapping::parse_from_str::<M>(&json.to_string())
        .expect("request JSON in the API's shape")
}

fn web_request() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(testdata().join("CreateContainerRequest/web.json")).unwrap(),
    )
    .unwrap()
}

fn measured_initdata(allow_exec: bool) -> podvm_policy::InitData {
    let manifest = std::fs::read_to_string(testdata().join("pod.yaml")).unwrap();
    let g = generate(
        &manifest,
        &GenerateOptions {
            allow_exec,
            ..Default::default()
        },
    )
    .unwrap();
    podvm_policy::InitData::parse(&g.initdata_toml).unwrap()
}

#[tokio::test]
async fn measured_policy_gates_every_call() {
    let agent = spawn_agent(Some(&measured_initdata(false)));
    let (health, api) = clients(&agent).await;

    // What the lead's VM test needs stays allowed.
    health
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Health.Check");
    health
        .version(ctx(), &CheckRequest::new())
        .await
        .expect("Health.Version");
    api.get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");

    // Exec is denied, with one line naming the call and the rule.
    let exec = ExecProcessRequest {
        container_id: "c0ffee01".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, msg) = failure(api.exec_process(ctx(), &exec).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(
        msg.starts_with("ExecProcessRequest denied: exec is not allowed by the pod policy"),
        "{msg}"
    );
    assert!(
        msg.contains("data.agent_policy.ExecProcessRequest") && !msg.contains('\n'),
        "{msg}"
    );

    // Reading logs is denied.
    let read = ReadStreamRequest {
        container_id: "c0ffee01".into(),
        exec_id: "c0ffee01".into(),
        len: 10,
        ..Default::default()
    };
    let (code, msg) = failure(api.read_stdout(ctx(), &read).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");

    // CopyFile outside the shared directory.
    let copy = CopyFileRequest {
        path: "/etc/passwd".into(),
        data: b"root::0:0::/:/bin/sh\n".to_vec(),
        ..Default::default()
    };
    let (code, msg) = failure(api.copy_file(ctx(), &copy).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(
        msg.contains("CopyFileRequest.path \"/etc/passwd\""),
        "{msg}"
    );

    // The pod's own container passes the policy, then reaches the container runner (which finds
    // no rootfs: no image was pulled here).
    let web: CreateContainerRequest = from_json(&web_request());
    let (code, msg) = failure(api.create_container(ctx(), &web).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.starts_with("CreateContainer c0ffee01: rootfs "),
        "{msg}"
    );

    // A different image digest, an extra env var, a privileged mount.
    for (mutate, fragment) in [
        (
            Box::new(|r: &mut serde_json::Value| {
                r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] =
                    format!("registry.example/shop/web@sha256:{}", "4".repeat(64)).into()
            }) as Box<dyn Fn(&mut serde_json::Value)>,
            "is not the pinned image",
        ),
        (
            Box::new(|r: &mut serde_json::Value| {
                r["OCI"]["Process"]["Env"]
                    .as_array_mut()
                    .unwrap()
                    .push("LD_PRELOAD=/x.so".into())
            }),
            "OCI.Process.Env \"LD_PRELOAD=/x.so\"",
        ),
        (
            Box::new(|r: &mut serde_json::Value| {
                r["OCI"]["Mounts"].as_array_mut().unwrap().push(serde_json::json!(
                    {"destination": "/host", "source": "/", "type": "bind", "options": ["rbind", "rw"]}))
            }),
            "OCI.Mounts /host",
        ),
    ] {
        let mut json = web_request();
        json["container_id"] = "c0ffee77".into();
        mutate(&mut json);
        let req: CreateContainerRequest = from_json(&json);
        let (code, msg) = failure(api.create_container(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
        assert!(
            msg.starts_with("CreateContainerRequest denied: ") && msg.contains(fragment),
            "{msg}"
        );
    }

    // A request with a field this agent does not know: the policy cannot see it, so it is denied.
    let mut smuggled: CreateContainerRequest = from_json(&web_request());
    smuggled
        .OCI
        .mut_or_insert_default()
        .Process
        .mut_or_insert_default()
        .special_fields
        .mut_unknown_fields()
        .add_length_delimited(99, b"--privileged".to_vec());
    let bytes = smuggled.write_to_bytes().unwrap();
    let reparsed = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    let (code, msg) = failure(api.create_container(ctx(), &reparsed).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(msg.contains("Process field #99"), "{msg}");

    // The measured policy cannot be replaced.
    let set = SetPolicyRequest {
        policy: "package agent_policy\ndefault ExecProcessRequest := true\n".into(),
        ..Default::default()
    };
    let (code, msg) = failure(api.set_policy(ctx(), &set).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(msg.contains("measured"), "{msg}");
    let (code, _) = failure(api.exec_process(ctx(), &exec).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);

    // DestroySandbox is answered, then the agent stops.
    api.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    drop(agent);
}

#[tokio::test]
async fn default_policy_serves_the_vm_test_and_accepts_a_stricter_policy() {
    let mut agent = spawn_agent(None);
    let (health, api) = clients(&agent).await;
    health
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Health.Check");
    api.get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");

    // The default policy allows exec (a non-confidential pod): the call reaches the handler.
    let exec = ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, _) = failure(api.exec_process(ctx(), &exec).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    // A policy that does not compile is refused and the old one stays.
    let bad = SetPolicyRequest {
        policy: "package agent_policy\nthis is not rego".into(),
        ..Default::default()
    };
    let (code, msg) = failure(api.set_policy(ctx(), &bad).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    // A trusted host installs a stricter policy; from then on it decides.
    let strict = "package agent_policy\ndefault CheckRequest := true\ndefault GuestDetailsRequest := true\ndefault DestroySandboxRequest := true\n";
    api.set_policy(
        ctx(),
        &SetPolicyRequest {
            policy: strict.into(),
            ..Default::default()
        },
    )
    .await
    .expect("SetPolicy");
    let (code, msg) = failure(api.exec_process(ctx(), &exec).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(msg.contains("does not mention ExecProcessRequest"), "{msg}");
    let (code, _) = failure(
        api.set_policy(
            ctx(),
            &SetPolicyRequest {
                policy: strict.into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);

    // The request log kept going across SetPolicy, and replays as a policy test would.
    let log = std::fs::read_to_string(agent._dir.path().join("requests.jsonl")).unwrap();
    let execs: Vec<podvm_policy::LogEntry> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &podvm_policy::LogEntry| e.request_type == "ExecProcessRequest")
        .collect();
    assert_eq!(
        execs.iter().map(|e| e.allowed).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(execs[0].request["container_id"], "c1");

    api.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(s) = agent.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not stop after DestroySandbox: {status:?}"
    );
}

#[test]
fn tampered_initdata_refuses_to_start() {
    use podvm_attestation::Evidence;
    use podvm_attestation::snp::AttestationReport;
    use podvm_guest_agent::initdata::{Binding, InitDataCheckError, check_evidence};

    let initdata = measured_initdata(false);
    let mut report = AttestationReport::zeroed(3);
    report.host_data = initdata.host_data();
    let evidence = Evidence::Snp {
        report: report.to_bytes(),
        cert_chain: None,
    };
    assert!(matches!(
        check_evidence(Some(&initdata), &evidence),
        Ok(Binding::Bound {
            field: "HOST_DATA",
            ..
        })
    ));

    // One byte of the TOML changed by the host: the digest no longer matches HOST_DATA.
    let mut toml = initdata.toml().as_bytes().to_vec();
    let at = toml.iter().position(|&b| b == b'/').unwrap();
    toml[at] = b'_';
    let tampered = podvm_policy::InitData::parse_bytes(&toml).unwrap();
    let err = check_evidence(Some(&tampered), &evidence).unwrap_err();
    assert!(matches!(
        err,
        InitDataCheckError::Mismatch {
            field: "HOST_DATA",
            ..
        }
    ));
    let line = err.to_string();
    assert!(
        line.contains("refusing to start") && !line.contains('\n'),
        "{line}"
    );

    // Initdata dropped while a digest was bound.
    assert!(check_evidence(None, &evidence).is_err());
    // No initdata and nothing bound.
    let zero = Evidence::Snp {
        report: AttestationReport::zeroed(3).to_bytes(),
        cert_chain: None,
    };
    assert!(check_evidence(None, &zero).is_ok());
}

#[test]
fn initdata_device_from_the_kernel_command_line() {
    use podvm_guest_agent::initdata::{device_from_cmdline, load};
    assert_eq!(
        device_from_cmdline("console=hvc0 podvm.initdata=/dev/vdb quiet"),
        Some(PathBuf::from("/dev/vdb"))
    );
    assert_eq!(
        device_from_cmdline("podvm.initdata= podvm.initdatax=/dev/vdc"),
        None
    );

    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    std::fs::create_dir_all(root.path().join("dev")).unwrap();
    std::fs::write(root.path().join("proc/cmdline"), "console=hvc0\n").unwrap();
    assert!(load(root.path()).unwrap().is_none());
    let initdata = measured_initdata(true);
    std::fs::write(root.path().join("dev/vdb"), initdata.to_device_image()).unwrap();
    std::fs::write(
        root.path().join("proc/cmdline"),
        "console=hvc0 podvm.initdata=/dev/vdb\n",
    )
    .unwrap();
    assert_eq!(load(root.path()).unwrap().unwrap(), initdata);
    std::fs::write(root.path().join("dev/vdb"), vec![0u8; 1024]).unwrap();
    let err = load(root.path()).unwrap_err().to_string();
    assert!(err.contains("not an initdata device"), "{err}");
}
