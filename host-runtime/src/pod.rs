//! One confidential pod, end to end: initdata (policy + KBS settings) → launch plan and its
//! measurement → VM → the agent checks the initdata against its evidence → PullImage (attest to
//! the KBS, key release, pull, verify, decrypt, unpack in the guest) → CreateContainer /
//! StartContainer under the policy → output streamed → exit code → teardown.
//!
//! The host never sees the image's plaintext or its key: it only relays bytes (vsock egress) and
//! sends requests the measured policy checks.

use std::io::Write;
use std::time::{Duration, Instant};

use podvm_policy::initdata::Algorithm;
use podvm_policy::{GenerateOptions, InitData};
use podvm_protocols::agent::CreateContainerRequest;
use podvm_protocols::oci;
use serde::Serialize;

use crate::VmError;
use crate::hypervisor::qemu::QemuBackend;
use crate::vm::{Vm, VmConfig};

/// The pod's name in generated policies and CRI annotations.
pub const POD_NAME: &str = "podvm-run";
/// The namespace in generated policies and CRI annotations.
pub const POD_NAMESPACE: &str = "default";
/// The container's name.
pub const CONTAINER_NAME: &str = "main";

/// The pod's KBS and image settings, written into the initdata (`cdh.toml`, `aa.toml`).
#[derive(Debug, Clone, Default)]
pub struct KbsSettings {
    /// `http(s)://host:port` of the KBS.
    pub url: String,
    /// KBS resources holding JWE private keys of encrypted images.
    pub jwe_key_uris: Vec<String>,
    /// KBS resource with registry credentials (`auth.json`).
    pub credentials_uri: Option<String>,
}

/// The initdata TOML entries for `kbs` and the plain-HTTP registries.
pub fn initdata_entries(
    kbs: Option<&KbsSettings>,
    insecure_registries: &[String],
) -> Vec<(String, String)> {
    let quoted = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut cdh = String::new();
    let mut entries = Vec::new();
    if let Some(kbs) = kbs {
        cdh.push_str(&format!(
            "[kbc]\nname = \"cc_kbc\"\nurl = {:?}\n\n",
            kbs.url
        ));
        entries.push((
            "aa.toml".to_string(),
            format!("[token_configs.kbs]\nurl = {:?}\n", kbs.url),
        ));
    }
    cdh.push_str("[image]\n");
    if let Some(kbs) = kbs {
        if !kbs.jwe_key_uris.is_empty() {
            cdh.push_str(&format!("jwe_key_uris = [{}]\n", quoted(&kbs.jwe_key_uris)));
        }
        if let Some(uri) = &kbs.credentials_uri {
            cdh.push_str(&format!(
                "authenticated_registry_credentials_uri = {uri:?}\n"
            ));
        }
    }
    if !insecure_registries.is_empty() {
        cdh.push_str(&format!(
            "insecure_registries = [{}]\n",
            quoted(insecure_registries)
        ));
    }
    entries.push(("cdh.toml".to_string(), cdh));
    entries
}

/// The host services a confidential pod's guest may reach through the egress relay: the KBS
/// and the registry of `image` (port 80 for a plain-HTTP registry, else 443).
pub fn egress_allow_list(
    kbs_url: &str,
    image: &str,
    insecure_registries: &[String],
) -> Result<Vec<String>, String> {
    let (host, port) = podvm_guest_agent::pod_image::url_host_port(kbs_url)
        .ok_or_else(|| format!("KBS URL {kbs_url:?} is not an http(s)://host[:port] URL"))?;
    Ok(vec![
        format!("{host}:{port}"),
        registry_endpoint(image, insecure_registries),
    ])
}

/// `host:port` of the registry of `image` (or of a registry name): port 80 for a plain-HTTP
/// registry, else 443, unless the name has one.
pub fn registry_endpoint(image: &str, insecure_registries: &[String]) -> String {
    let registry = image.split('/').next().unwrap_or_default();
    let insecure = insecure_registries.iter().any(|r| r == registry);
    let (host, port) =
        podvm_guest_agent::pod_image::split_host_port(registry, if insecure { 80 } else { 443 });
    format!("{host}:{port}")
}

/// A Pod manifest for one container running `args` from `image` (pinned by digest).
pub fn pod_manifest(image: &str, args: &[String], env: &[(String, String)]) -> String {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": POD_NAMESPACE},
        "spec": {"containers": [{
            "name": CONTAINER_NAME,
            "image": image,
            "command": args,
            "env": env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
        }]},
    });
    // JSON is YAML.
    manifest.to_string()
}

/// The policy of a pod: none (the built-in default), a given Rego text, or generated.
#[derive(Debug, Clone)]
pub enum PolicyChoice {
    Default,
    Rego(String),
    /// Generated for exactly this pod's image and command; output may be read.
    Generate {
        allow_exec: bool,
    },
}

/// Builds the pod's initdata: the policy (if any) and the KBS/image settings.
pub fn build_initdata(
    policy: &PolicyChoice,
    pinned_image: &str,
    args: &[String],
    env: &[(String, String)],
    kbs: Option<&KbsSettings>,
    insecure_registries: &[String],
) -> Result<InitData, String> {
    let mut entries = initdata_entries(kbs, insecure_registries);
    match policy {
        PolicyChoice::Default => {}
        PolicyChoice::Rego(text) => entries.push(("policy.rego".to_string(), text.clone())),
        PolicyChoice::Generate { allow_exec } => {
            let generated = podvm_policy::generate(
                &pod_manifest(pinned_image, args, env),
                &GenerateOptions {
                    allow_exec: *allow_exec,
                    allow_logs: true,
                    algorithm: Some(Algorithm::Sha256),
                    extra_data: entries,
                },
            )
            .map_err(|e| format!("generate the pod policy: {e}"))?;
            return InitData::parse(&generated.initdata_toml)
                .map_err(|e| format!("the generated initdata: {e}"));
        }
    }
    InitData::build(Algorithm::Sha256, &entries).map_err(|e| format!("build the initdata: {e}"))
}

/// The CreateContainer request for the pod's container, shaped as containerd/Kata send it.
pub fn create_container_request(
    container_id: &str,
    pinned_image: &str,
    args: &[String],
    env: &[(String, String)],
) -> CreateContainerRequest {
    let mut process = oci::Process::new();
    process.Args = args.to_vec();
    // The PATH every container gets (the runtime default, as containerd sets it).
    let path = format!("PATH={}", podvm_guest_agent::container::spec::DEFAULT_PATH);
    process.Env = std::iter::once(path)
        .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    process.Cwd = "/".to_string();
    let mut spec = oci::Spec::new();
    spec.Version = "1.1.0".to_string();
    spec.Process = Some(process).into();
    spec.Hostname = POD_NAME.to_string();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-name", POD_NAME),
        ("io.kubernetes.cri.sandbox-namespace", POD_NAMESPACE),
        ("io.kubernetes.cri.container-name", CONTAINER_NAME),
        ("io.kubernetes.cri.image-name", pinned_image),
    ] {
        spec.Annotations.insert(k.to_string(), v.to_string());
    }
    CreateContainerRequest {
        container_id: container_id.to_string(),
        exec_id: container_id.to_string(),
        OCI: Some(spec).into(),
        ..Default::default()
    }
}

/// One phase of the pod's timeline, in milliseconds since `podvm pod run` began.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// What a pod run produced.
#[derive(Debug, Clone, Serialize)]
pub struct PodOutcome {
    pub exit_code: i32,
    pub image_ref: String,
    /// The launch measurement the TEE reported (hex), for a TEE launch.
    pub measurement: Option<String>,
    pub phases: Vec<Phase>,
    pub total_ms: f64,
}

/// Why a pod run failed, with the phase it failed in.
#[derive(Debug, thiserror::Error)]
#[error("{phase}: {message}")]
pub struct PodError {
    pub phase: &'static str,
    pub message: String,
}

fn fail(phase: &'static str) -> impl FnOnce(String) -> PodError {
    move |message| PodError { phase, message }
}

struct Timeline {
    origin: Instant,
    phases: Vec<Phase>,
}

impl Timeline {
    fn ms(&self, at: Instant) -> f64 {
        at.duration_since(self.origin).as_secs_f64() * 1000.0
    }
    fn add(&mut self, name: &'static str, start: Instant, end: Instant) {
        let (start_ms, end_ms) = (self.ms(start), self.ms(end));
        self.add_ms(name, start_ms, end_ms);
    }
    fn add_ms(&mut self, name: &'static str, start_ms: f64, end_ms: f64) {
        self.phases.push(Phase {
            name,
            start_ms,
            end_ms,
        });
    }
}

/// The pod's one container.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// The image pinned by digest (what the policy pins).
    pub pinned_image: String,
    /// The command (empty: the image's entrypoint and cmd).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How long attestation, pull, decryption and unpack may take.
    pub pull_timeout: Duration,
}

/// Where the container's output goes, as it arrives.
pub struct Output<'a> {
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
}

/// Runs the pod: `vm` carries the TEE, initdata and egress.
pub async fn run(
    vm: &VmConfig,
    qemu: &QemuBackend,
    container: &ContainerRun,
    output: Output<'_>,
) -> Result<PodOutcome, PodError> {
    let origin = Instant::now();
    let mut timeline = Timeline {
        origin,
        phases: Vec::new(),
    };
    let plan = Vm::plan(vm, qemu).map_err(|e| fail("launch plan")(e.to_string()))?;
    let measurement = plan.measurement.map(hex::encode);
    timeline.add("measure launch", origin, Instant::now());

    let vm_start = Instant::now();
    let running = Vm::start_planned(vm, plan, qemu)
        .await
        .map_err(|e: VmError| fail("VM start")(e.to_string()))?;
    let boot = running.timings().clone();
    let base = timeline.ms(vm_start);
    timeline.add_ms("VMM start", base, base + boot.vmm_spawned_ms);
    // The guest kernel's share: from QEMU's start to the agent's first instruction.
    if let Ok(details) = running.agent().guest_details().await {
        let agent_start =
            base + boot.vmm_spawned_ms + details.agent_start_uptime_us as f64 / 1000.0;
        timeline.add_ms(
            "guest kernel",
            base + boot.vmm_spawned_ms,
            agent_start.min(base + boot.agent_ready_ms),
        );
        timeline.add_ms(
            "agent ready",
            agent_start.min(base + boot.agent_ready_ms),
            base + boot.agent_ready_ms,
        );
    }

    let mut result = run_container(&running, &mut timeline, container, output).await;
    if let Err(e) = &mut result
        && let Some(kept) = running.keep_console(&vm.log_dir)
    {
        e.message = format!("{}; guest console: {}", e.message, kept.display());
    }

    let teardown = Instant::now();
    running.stop().await;
    timeline.add("teardown", teardown, Instant::now());
    let (exit_code, image_ref) = result?;
    Ok(PodOutcome {
        exit_code,
        image_ref,
        measurement,
        total_ms: timeline.ms(Instant::now()),
        phases: timeline.phases,
    })
}

async fn run_container(
    vm: &Vm,
    timeline: &mut Timeline,
    container: &ContainerRun,
    output: Output<'_>,
) -> Result<(i32, String), PodError> {
    let ContainerRun {
        pinned_image,
        args,
        env,
        pull_timeout,
    } = container;
    let Output { stdout, stderr } = output;
    let agent = vm.agent();
    let cid = CONTAINER_NAME;
    let pull_start = Instant::now();
    let pulled = agent
        .pull_image(pinned_image, cid, *pull_timeout)
        .await
        .map_err(|e| fail("image pull")(e.to_string()))?;
    let pull_end = Instant::now();
    let attest_ms = pulled.attestation_us as f64 / 1000.0;
    let p0 = timeline.ms(pull_start);
    if attest_ms > 0.0 {
        timeline.add_ms("attestation + key release", p0, p0 + attest_ms);
    }
    timeline.add_ms(
        "pull + verify + decrypt + unpack",
        p0 + attest_ms,
        p0 + attest_ms + pulled.pull_us as f64 / 1000.0,
    );
    let _ = pull_end;

    let create = Instant::now();
    agent
        .create_container(&create_container_request(cid, pinned_image, args, env))
        .await
        .map_err(|e| fail("container create")(e.to_string()))?;
    agent
        .start_container(cid)
        .await
        .map_err(|e| fail("container start")(e.to_string()))?;
    let started = Instant::now();
    timeline.add("container create + start", create, started);

    // Stream stdout and stderr until both end, then collect the exit status. Each stream is
    // pumped by its own loop, run concurrently: a `select!` over the two reads would drop the
    // other stream's in-flight ReadStdout/ReadStderr call whenever one completes, and the bytes
    // the agent had already put in that reply would be lost.
    async fn pump(
        agent: &crate::agent_client::AgentClient,
        cid: &str,
        is_stderr: bool,
        out: &mut (dyn Write + Send),
    ) -> Result<Option<Instant>, PodError> {
        let mut first: Option<Instant> = None;
        while let Some(data) = agent
            .read_stream(cid, cid, is_stderr, 32 * 1024)
            .await
            .map_err(|e| fail("container output")(e.to_string()))?
        {
            first.get_or_insert_with(Instant::now);
            let _ = out.write_all(&data);
            let _ = out.flush();
        }
        Ok(first)
    }
    let (out_first, err_first) = tokio::join!(
        pump(agent, cid, false, stdout),
        pump(agent, cid, true, stderr)
    );
    let first_output = match (out_first?, err_first?) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(first) = first_output {
        timeline.add("first output", started, first);
    }
    let exit_code = agent
        .wait_process(cid, cid)
        .await
        .map_err(|e| fail("container wait")(e.to_string()))?;
    timeline.add("container run", started, Instant::now());
    let _ = agent.remove_container(cid).await;
    Ok((exit_code, pulled.image_ref))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_allow_list_names_the_kbs_and_the_registry() {
        assert_eq!(
            egress_allow_list(
                "http://127.0.0.1:8080",
                "127.0.0.1:5000/app:1",
                &["127.0.0.1:5000".to_string()]
            )
            .unwrap(),
            ["127.0.0.1:8080", "127.0.0.1:5000"]
        );
        assert_eq!(
            egress_allow_list("https://kbs.example", "registry.example/app", &[]).unwrap(),
            ["kbs.example:443", "registry.example:443"]
        );
        assert!(egress_allow_list("kbs.example", "r/app", &[]).is_err());
    }

    const IMAGE: &str = "127.0.0.1:5000/demo@sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn initdata_carries_the_kbs_and_the_generated_policy() {
        let kbs = KbsSettings {
            url: "http://127.0.0.1:8080".into(),
            jwe_key_uris: vec!["kbs:///default/image-key/demo".into()],
            credentials_uri: None,
        };
        let args = vec!["/bin/echo".to_string(), "hi".to_string()];
        let initdata = build_initdata(
            &PolicyChoice::Generate { allow_exec: false },
            IMAGE,
            &args,
            &[],
            Some(&kbs),
            &["127.0.0.1:5000".to_string()],
        )
        .unwrap();
        let cdh = &initdata.data()["cdh.toml"];
        assert!(cdh.contains("url = \"http://127.0.0.1:8080\""), "{cdh}");
        assert!(
            cdh.contains("jwe_key_uris = [\"kbs:///default/image-key/demo\"]"),
            "{cdh}"
        );
        assert!(
            cdh.contains("insecure_registries = [\"127.0.0.1:5000\"]"),
            "{cdh}"
        );
        let mut policy = podvm_policy::AgentPolicy::new(
            initdata.policy().unwrap(),
            podvm_policy::PolicyOrigin::InitData,
        )
        .unwrap();
        // The request `pod run` sends is admitted by the policy generated for it ...
        let json =
            |r: &CreateContainerRequest| podvm_guest_agent::policy_gate::request_json(r).unwrap();
        let req = create_container_request("main", IMAGE, &args, &[]);
        let decision = policy.evaluate("CreateContainerRequest", &json(&req));
        assert!(decision.allowed, "{decision:?}");
        // ... and another command is not.
        let other = create_container_request("main", IMAGE, &["/bin/sh".to_string()], &[]);
        let decision = policy.evaluate("CreateContainerRequest", &json(&other));
        assert!(!decision.allowed, "{decision:?}");
        assert!(decision.reason.contains("OCI.Process.Args"), "{decision:?}");
    }
}
