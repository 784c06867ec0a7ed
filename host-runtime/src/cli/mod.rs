//! The `podvm` command line (clap derive; errors are one line via anyhow).

mod attest;
mod bench_ctr;
mod bench_vmm;
mod cleanup;
mod demo;
mod image;
mod image_pull;
mod install;
mod kbs;
mod measure;
mod pod;
mod policy;
mod vm;
mod vmm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "podvm",
    version,
    about = "Confidential pod VMs: launch, measure, attest"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, env = "PODVM_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pod VMs.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// The built-in KVM microVM monitor, as a process of its own.
    #[command(subcommand)]
    Vmm(vmm::VmmCommand),
    /// Build the guest image (kernel, initramfs with the agent).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(vm::BenchCommand),
    /// The confidential pod end to end: encrypted image, KBS, emulated SNP, policy; then a
    /// tampered launch refused.
    Demo(vm::VmArgs),
    /// Launch measurements (SEV-SNP, SEV, SEV-ES, TDX) and reference values.
    Measure(Box<measure::MeasureArgs>),
    /// Verify attestation evidence (SNP reports, TDX quotes, emulated SNP).
    Attest(attest::AttestArgs),
    /// Talk to a key broker (KBS protocol 0.4.0): attest and fetch a resource.
    Kbs(kbs::KbsArgs),
    /// Agent policies: generate the Rego policy and initdata for a pod.
    Policy(policy::PolicyArgs),
    /// Confidential pods: run one end to end.
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Register podvm with a container runtime (containerd's CRI config, shim configuration).
    #[command(subcommand)]
    Install(install::InstallCommand),
    /// Remove podvm's registration from a container runtime.
    #[command(subcommand)]
    Uninstall(install::UninstallCommand),
    /// Remove a crashed node's leftovers: state directories whose owner is dead, their VMM
    /// processes and mounts. Running VMs are left alone.
    Cleanup(cleanup::CleanupArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    // One thread: child processes die with the thread that spawned them (PR_SET_PDEATHSIG), and
    // this one lives as long as the command.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podvm: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => return Err(anyhow::anyhow!("cannot install signal handlers")).map(|()| None),
        };
        // Dropping the command's future on a signal drops its VMs: their processes are killed
        // and their state removed before podvm exits.
        tokio::select! {
            result = run(cli.command) => result.map(|()| None),
            _ = term.recv() => Ok(Some(("SIGTERM", 143))),
            _ = int.recv() => Ok(Some(("SIGINT", 130))),
        }
    });
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some((signal, code))) => {
            eprintln!("podvm: stopped by {signal}; the VM was shut down and its state removed");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("podvm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Vm(cmd) => vm::run(cmd).await,
        Command::Vmm(cmd) => vmm::run(cmd).await,
        Command::Image(cmd) => image::run(cmd).await,
        Command::Bench(cmd) => vm::bench(cmd).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Measure(args) => measure::run(*args),
        Command::Attest(args) => attest::run(args),
        Command::Kbs(args) => kbs::run(args).await,
        Command::Policy(args) => policy::run(args),
        Command::Pod(cmd) => pod::run(cmd).await,
        Command::Install(cmd) => install::install(cmd),
        Command::Uninstall(cmd) => install::uninstall(cmd),
        Command::Cleanup(args) => cleanup::run(args),
    }
}
