//! `podvm-agent`: PID 1 of a podvm guest.
//!
//! As PID 1 it mounts the API filesystems, logs to the console, serves the agent API over vsock
//! (see [`podvm_guest_agent::transport`]) and powers the VM off when the host asks or on a fatal
//! error. `podvm-agent --listen unix:<path>` serves the same API on a Unix socket, for tests.
//!
//! Before serving, the agent reads the pod's initdata (`podvm.initdata=<device>` on the kernel
//! command line, or `--initdata <image>`), checks its digest against the TEE evidence (refusing to
//! start on a mismatch) and enforces its `policy.rego`, else the built-in default policy.
//! `--policy-log <path>` appends every policy decision as JSON lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use podvm_attestation::attester::{self, Attester, AttesterPaths};
use podvm_guest_agent::egress::Egress;
use podvm_guest_agent::emulated_tee::{EmulatedSnpAttester, PspEndpoint};
use podvm_guest_agent::guest_info::{self, uptime_us};
use podvm_guest_agent::init::{self, AgentParams};
use podvm_guest_agent::initdata::{self, Binding};
use podvm_guest_agent::pod_image::{AttesterFactory, ImageSettings, PodImages};
use podvm_guest_agent::service::Agent;
use podvm_guest_agent::transport;
use podvm_policy::{AgentPolicy, PolicyOrigin};
use podvm_protocols::AGENT_PORT;
use tokio::signal::unix::{SignalKind, signal};
use ttrpc::r#async::Server;
use ttrpc::r#async::transport::Listener;

/// Where the agent serves its API.
enum Endpoint {
    /// In a VM: vsock, dialling the host and listening.
    Vsock,
    /// For tests: a Unix socket.
    Unix(PathBuf),
}

struct Args {
    endpoint: Endpoint,
    /// An initdata device image (instead of the kernel command line's `podvm.initdata`).
    initdata: Option<PathBuf>,
    policy_log: Option<PathBuf>,
    /// The emulated PSP on a Unix socket (tests), instead of the kernel command line's
    /// `podvm.tee=snp-emulated` (vsock).
    emulated_psp: Option<PathBuf>,
    /// Where pulled images are stored and unpacked.
    image_dir: PathBuf,
}

const USAGE: &str = "usage: podvm-agent [--listen unix:<path>] [--initdata <image>] [--policy-log <path>] [--emulated-psp unix:<path>] [--image-dir <dir>]";

/// Where the agent keeps pulled images in the guest (guest memory).
const DEFAULT_IMAGE_DIR: &str = "/run/podvm/images";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        endpoint: Endpoint::Vsock,
        initdata: None,
        policy_log: None,
        emulated_psp: None,
        image_dir: PathBuf::from(DEFAULT_IMAGE_DIR),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            bail!("{flag} needs a value; {USAGE}");
        };
        match flag.as_str() {
            "--listen" => match value.strip_prefix("unix:") {
                Some(path) => args.endpoint = Endpoint::Unix(PathBuf::from(path)),
                None => bail!("--listen takes unix:<path>, got {value:?}"),
            },
            "--initdata" => args.initdata = Some(PathBuf::from(value)),
            "--policy-log" => args.policy_log = Some(PathBuf::from(value)),
            "--emulated-psp" => match value.strip_prefix("unix:") {
                Some(path) => args.emulated_psp = Some(PathBuf::from(path)),
                None => bail!("--emulated-psp takes unix:<path>, got {value:?}"),
            },
            "--image-dir" => args.image_dir = PathBuf::from(value),
            _ => bail!("unknown option {flag:?}; {USAGE}"),
        }
    }
    Ok(args)
}

/// How this guest attests: the emulated PSP (`podvm.tee=snp-emulated` or `--emulated-psp`), the
/// hardware TEE's attester, or none.
fn attester_factory(args: &Args, root: &Path) -> AttesterFactory {
    if let Some(path) = &args.emulated_psp {
        let endpoint = PspEndpoint::Unix(path.clone());
        return Arc::new(move || {
            Some(Box::new(EmulatedSnpAttester {
                endpoint: endpoint.clone(),
            }) as Box<dyn Attester>)
        });
    }
    if guest_info::emulated_snp_requested(root) {
        return Arc::new(|| Some(Box::new(EmulatedSnpAttester::default()) as Box<dyn Attester>));
    }
    Arc::new(|| attester::attester(&AttesterPaths::default()).ok())
}

/// What the agent starts with: the policy the initdata measures (else the default), the
/// initdata itself and how the guest attests.
struct Startup {
    policy: AgentPolicy,
    initdata: Option<podvm_policy::InitData>,
    attester: AttesterFactory,
}

/// Reads and checks the initdata, and picks the policy it measures (else the default).
fn load_policy(args: &Args) -> Result<Startup> {
    let root = Path::new("/");
    let initdata = match &args.initdata {
        Some(image) => Some(initdata::load_device(image)?),
        None => initdata::load(root)?,
    };
    let attester = attester_factory(args, root);
    let emulated = args.emulated_psp.is_some() || guest_info::emulated_snp_requested(root);
    let binding = if emulated {
        let a = attester().context("the emulated SNP attester")?;
        initdata::verify_with_attester(initdata.as_ref(), a.as_ref(), "snp-emulated")?
    } else {
        initdata::verify_at_start(initdata.as_ref(), root, &AttesterPaths::default())?
    };
    match binding {
        Binding::NoTee if initdata.is_some() => tracing::warn!(
            "no TEE: the initdata is used but nothing binds it (a non-confidential pod trusts its host)"
        ),
        Binding::NoTee => {}
        Binding::Bound { field, value_hex } => {
            tracing::info!(field, value = %value_hex, "initdata matches the TEE evidence")
        }
    }
    let policy = match initdata.as_ref().and_then(|i| i.policy()) {
        Some(rego) => {
            AgentPolicy::new(rego, PolicyOrigin::InitData).context("load the initdata policy")?
        }
        None => AgentPolicy::default_policy(),
    };
    tracing::info!(policy = %policy.origin(), "agent policy loaded");
    Ok(Startup {
        policy,
        initdata,
        attester,
    })
}

fn main() {
    // `podvm-agent __container-init ...`: the agent re-executed as a container helper. First, so
    // that the helper stays single-threaded and logs nothing (its stdio is the container's).
    if let Some(code) = podvm_guest_agent::container::main_if_helper() {
        std::process::exit(code);
    }
    let start_uptime_us = uptime_us();
    let pid1 = std::process::id() == 1;
    if pid1 {
        // Before logging: the console and /proc come from these mounts.
        let mounted = init::mount_api_filesystems();
        init::attach_console();
        if let Err(e) = mounted {
            eprintln!("podvm-agent: fatal: {e:#}; powering off");
            init::power_off();
        }
        std::panic::set_hook(Box::new(|info| {
            eprintln!("podvm-agent: fatal: {info}; powering off");
            init::power_off();
        }));
    }
    let params = AgentParams::from_proc(std::path::Path::new("/"));
    let level = params
        .log_level
        .as_deref()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();

    let result = parse_args().and_then(|args| {
        let startup = load_policy(&args)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(serve(args, startup, pid1, start_uptime_us))
    });
    match (result, pid1) {
        (Ok(()), true) => {
            tracing::info!("powering off");
            let e = init::power_off();
            eprintln!("podvm-agent: power off failed: {e}");
        }
        (Ok(()), false) => {}
        (Err(e), true) => {
            tracing::error!("fatal: {e:#}; powering off");
            init::power_off();
        }
        (Err(e), false) => {
            eprintln!("podvm-agent: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn serve(args: Args, startup: Startup, pid1: bool, start_uptime_us: u64) -> Result<()> {
    let settings = ImageSettings::from_initdata(startup.initdata.as_ref())?;
    // In a VM the guest reaches the host's loopback services through the vsock egress relay.
    let egress = matches!(args.endpoint, Endpoint::Vsock).then(|| Arc::new(Egress::default()));
    let images = PodImages::new(
        settings,
        startup.initdata.as_ref(),
        startup.attester,
        egress,
        &args.image_dir,
    );
    let agent =
        Agent::with_policy(PathBuf::from("/"), start_uptime_us, startup.policy).with_images(images);
    if let Some(log) = &args.policy_log {
        agent.gate().log_requests_to(log)?;
    }
    let mut servers = Vec::new();
    match &args.endpoint {
        Endpoint::Vsock => {
            let listening = transport::vsock_incoming(AGENT_PORT)
                .with_context(|| format!("listen on vsock port {AGENT_PORT}"))?;
            servers.push(start_server(Listener::new(listening), &agent).await?);
            agent.mark_ready(uptime_us());
            servers
                .push(start_server(Listener::new(transport::dial_host(AGENT_PORT)), &agent).await?);
        }
        Endpoint::Unix(path) => {
            let listening = transport::unix_incoming(path)
                .with_context(|| format!("listen on {}", path.display()))?;
            servers.push(start_server(Listener::new(listening), &agent).await?);
            agent.mark_ready(uptime_us());
        }
    }
    tracing::info!(
        version = podvm_guest_agent::AGENT_VERSION,
        uptime_ms = uptime_us() / 1000,
        "agent ready"
    );

    let mut shutdown = agent.shutdown_requested();
    let mut sigchld = signal(SignalKind::child()).context("watch SIGCHLD")?;
    let mut sigterm = signal(SignalKind::terminate()).context("watch SIGTERM")?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sigchld.recv(), if pid1 => { init::reap_zombies(); }
            _ = sigterm.recv(), if !pid1 => break,
        }
    }
    // Let the answer to DestroySandbox reach the host before the connections close.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for mut server in servers {
        let _ = server.shutdown().await;
    }
    Ok(())
}

async fn start_server(listener: Listener, agent: &Arc<Agent>) -> Result<Server> {
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(agent.services());
    server.start().await.context("start the ttrpc server")?;
    Ok(server)
}
