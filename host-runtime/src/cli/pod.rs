//! `podvm pod run`: one confidential pod, end to end (see `podvm_host_runtime::pod`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podvm_guest_agent::image::{ImagePuller, PullOptions};
use podvm_host_runtime::hypervisor::confidential;
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::launch::{EMULATED_FIRMWARE, TeeLaunch, TeeMode};
use podvm_host_runtime::paths;
use podvm_host_runtime::pod::{self, KbsSettings, PodOutcome, PolicyChoice};
use podvm_host_runtime::vm::VmConfig;

use super::vm::VmArgs;

#[derive(Subcommand)]
pub enum PodCommand {
    /// Run one container in a pod VM: measure, launch, attest, pull and decrypt in the guest,
    /// run under the pod policy, stream its output, exit with its code, tear down.
    Run(Box<RunArgs>),
}

#[derive(Args)]
pub struct RunArgs {
    /// The image (`registry/repo:tag` or `@sha256:...`); resolved to its digest before launch.
    #[arg(long)]
    pub image: String,
    /// The TEE.
    #[arg(long, value_enum, default_value_t = TeeMode::None)]
    pub tee: TeeMode,
    /// The KBS (`http(s)://host:port`) that releases image keys after attestation.
    #[arg(long)]
    pub kbs: Option<String>,
    /// KBS resources holding the JWE private keys of encrypted images; repeatable.
    #[arg(long = "image-key-uri", value_name = "kbs:///REPO/TYPE/TAG")]
    pub image_key_uris: Vec<String>,
    /// KBS resource with registry credentials (a docker auth.json).
    #[arg(long, value_name = "kbs:///REPO/TYPE/TAG")]
    pub registry_credentials_uri: Option<String>,
    /// Registries spoken to over plain HTTP (loopback test registries), `host:port`; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// The pod policy (Rego, `package agent_policy`), measured in the initdata.
    #[arg(long, conflicts_with = "generate_policy")]
    pub policy: Option<PathBuf>,
    /// Generate the policy for exactly this image and command (output readable, exec denied).
    #[arg(long)]
    pub generate_policy: bool,
    /// With --generate-policy: allow exec into the container.
    #[arg(long, requires = "generate_policy")]
    pub allow_exec: bool,
    /// Environment variables for the container (`NAME=VALUE`); repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Seconds the in-guest attestation, pull, decryption and unpack may take.
    #[arg(long, default_value_t = 600)]
    pub pull_timeout: u64,
    /// Print the phase timeline on stderr.
    #[arg(long)]
    pub timings: bool,
    /// Print the outcome (exit code, measurement, timeline) as JSON on stderr at the end.
    #[arg(long)]
    pub json: bool,
    /// Write the launch's reference values (as `podvm measure --export` does) to FILE.
    #[arg(long, value_name = "FILE")]
    pub export_refvals: Option<PathBuf>,
    /// Plan only: print the launch (cmdline, measurement, HOST_DATA) and exit without launching.
    #[arg(long)]
    pub plan_only: bool,
    #[command(flatten)]
    pub vm: VmArgs,
    /// The command and its arguments (default: the image's entrypoint and cmd).
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_env(env: &[String]) -> Result<Vec<(String, String)>> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--env {e:?} is not NAME=VALUE"),
        })
        .collect()
}

/// Everything `pod run` derives from its arguments before it launches.
pub struct Prepared {
    pub vm: VmConfig,
    pub pinned_image: String,
    /// The container the pod runs.
    pub container: pod::ContainerRun,
}

/// Resolves the image, builds the initdata and the VM configuration.
pub async fn prepare(args: &RunArgs) -> Result<Prepared> {
    let env = parse_env(&args.env)?;
    let registry = args.image.split('/').next().unwrap_or_default().to_string();
    let insecure = args.insecure_registries.contains(&registry);
    let pinned_image = if args.image.contains('@') {
        args.image.clone()
    } else {
        // Resolving downloads nothing; the puller only needs a (scratch) blob store.
        let store = std::env::temp_dir().join(format!("podvm-resolve-{}", std::process::id()));
        let puller = ImagePuller::new(
            &store,
            PullOptions {
                insecure_http: insecure,
                ..Default::default()
            },
        )?;
        let resolved = puller.resolve(&args.image).await;
        let _ = std::fs::remove_dir_all(&store);
        resolved.with_context(|| format!("resolve {} to a digest on the host", args.image))?
    };

    let kbs = args.kbs.as_ref().map(|url| KbsSettings {
        url: url.clone(),
        jwe_key_uris: args.image_key_uris.clone(),
        credentials_uri: args.registry_credentials_uri.clone(),
    });
    if kbs.is_none() && !args.image_key_uris.is_empty() {
        bail!("--image-key-uri needs --kbs (the keys are KBS resources)");
    }
    let policy = match (&args.policy, args.generate_policy) {
        (Some(path), _) => PolicyChoice::Rego(
            std::fs::read_to_string(path)
                .with_context(|| format!("read the policy {}", path.display()))?,
        ),
        (None, true) => {
            if args.command.is_empty() {
                bail!(
                    "--generate-policy pins the command line: give the command after `--` (the image's entrypoint is not known to the host)"
                );
            }
            PolicyChoice::Generate {
                allow_exec: args.allow_exec,
            }
        }
        (None, false) => PolicyChoice::Default,
    };
    let initdata = pod::build_initdata(
        &policy,
        &pinned_image,
        &args.command,
        &env,
        kbs.as_ref(),
        &args.insecure_registries,
    )
    .map_err(anyhow::Error::msg)?;

    let mut vm = args.vm.config();
    vm.tee = match args.tee {
        TeeMode::None => TeeLaunch::None,
        TeeMode::SnpEmulated => TeeLaunch::SnpEmulated {
            psp_dir: paths::emulated_psp_dir(),
            firmware: args.vm.guest_dir.join(EMULATED_FIRMWARE),
        },
        TeeMode::Snp | TeeMode::Tdx => {
            let tee = if args.tee == TeeMode::Snp {
                confidential::Tee::Snp
            } else {
                confidential::Tee::Tdx
            };
            let qemu = QemuBackend::from_environment()?;
            confidential::QemuVersion::probe(&qemu.qemu)?.require(tee)?;
            let (device, what) = if tee == confidential::Tee::Snp {
                ("/dev/sev", "AMD SEV-SNP")
            } else {
                ("/sys/firmware/tdx", "Intel TDX")
            };
            if !std::path::Path::new(device).exists() {
                bail!(
                    "--tee {}: this host has no {what} ({device} is missing); use --tee snp-emulated to run the same chain with an emulated PSP",
                    args.tee.as_str()
                );
            }
            bail!(
                "--tee {}: the hardware launch (q35 + {} + bzImage) is not wired into `pod run` yet; its QEMU arguments are built by host-runtime/src/hypervisor/confidential.rs",
                args.tee.as_str(),
                tee.firmware()
            )
        }
    };
    vm.initdata = Some(initdata);
    // The guest reaches the KBS and the registry through the host's egress relay.
    vm.egress = match &args.kbs {
        Some(url) => pod::egress_allow_list(url, &args.image, &args.insecure_registries)
            .map_err(|e| anyhow::anyhow!("--kbs: {e}"))?,
        None => vec![pod::registry_endpoint(
            &args.image,
            &args.insecure_registries,
        )],
    };
    Ok(Prepared {
        vm,
        container: pod::ContainerRun {
            pinned_image: pinned_image.clone(),
            args: args.command.clone(),
            env,
            pull_timeout: std::time::Duration::from_secs(args.pull_timeout),
        },
        pinned_image,
    })
}

pub async fn run(cmd: PodCommand) -> Result<()> {
    let PodCommand::Run(args) = cmd;
    let prepared = prepare(&args).await?;
    let qemu = QemuBackend::from_environment()?;
    if args.export_refvals.is_some() || args.plan_only {
        let plan = podvm_host_runtime::vm::Vm::plan(&prepared.vm, &qemu)?;
        if let Some(path) = &args.export_refvals {
            let refvals = plan
                .reference_values
                .as_ref()
                .context("--export-refvals needs a TEE launch (--tee snp-emulated)")?;
            std::fs::write(path, refvals.to_json())
                .with_context(|| format!("write {}", path.display()))?;
        }
        if args.plan_only {
            println!("image: {}", prepared.pinned_image);
            println!("kernel cmdline: {}", plan.spec.cmdline);
            if let Some(m) = plan.measurement {
                println!("launch measurement: {}", hex::encode(m));
            }
            println!(
                "host data (initdata digest): {}",
                hex::encode(plan.host_data)
            );
            return Ok(());
        }
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let outcome = pod::run(
        &prepared.vm,
        &qemu,
        &prepared.container,
        pod::Output {
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    )
    .await?;
    if args.timings {
        eprint!("{}", timeline_text(&outcome));
    }
    if args.json {
        eprintln!("{}", serde_json::to_string(&outcome)?);
    }
    if outcome.exit_code != 0 {
        // The VM is gone; exit with the container's code.
        std::process::exit(outcome.exit_code.clamp(0, 255));
    }
    Ok(())
}

/// The phase timeline as text.
pub fn timeline_text(outcome: &PodOutcome) -> String {
    let mut out = String::from("podvm pod run timeline (ms since start):\n");
    for p in &outcome.phases {
        out.push_str(&format!(
            "  {:>8.1} – {:>8.1}  {:>8.1}  {}\n",
            p.start_ms,
            p.end_ms,
            p.end_ms - p.start_ms,
            p.name
        ));
    }
    out.push_str(&format!("  total {:.1} ms\n", outcome.total_ms));
    out
}
