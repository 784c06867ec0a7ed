//! `podvm vm run`, `podvm bench boot`, `podvm demo`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podvm_host_runtime::accel::AccelChoice;
use podvm_host_runtime::bench;
use podvm_host_runtime::guest_image::GuestImage;
use podvm_host_runtime::hypervisor::HypervisorKind;
use podvm_host_runtime::hypervisor::Machine;
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::paths;
use podvm_host_runtime::vm::{Vm, VmConfig};
use serde_json::json;

/// The VM every command boots.
#[derive(Args, Clone)]
pub struct VmArgs {
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub(crate) vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub(crate) memory: u32,
    /// Guest kernel (default: the installed guest image's vmlinux).
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs with the agent as /init (default: the installed guest image's).
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    /// The installed guest image.
    #[arg(long, env = "PODVM_GUEST_DIR", default_value_os_t = paths::guest_dir())]
    pub guest_dir: PathBuf,
    /// Machine model.
    #[arg(long, value_enum, default_value_t = Machine::Microvm)]
    pub(crate) machine: Machine,
    /// The hypervisor: QEMU, or podvm's built-in KVM monitor (a `podvm vmm run` process; needs a
    /// KVM that boots Linux).
    #[arg(long, value_enum, env = "PODVM_HYPERVISOR", default_value_t = HypervisorKind::Qemu)]
    pub(crate) hypervisor: HypervisorKind,
    /// CPU accelerator: auto uses KVM only where it was proven to boot a guest.
    #[arg(long, value_enum, env = "PODVM_ACCEL", default_value_t = AccelChoice::Auto)]
    pub(crate) accel: AccelChoice,
    /// Seconds the agent may take to become ready.
    #[arg(long, default_value_t = 60)]
    pub(crate) boot_timeout: u64,
    /// Extra kernel command-line parameters (e.g. podvm.log=debug).
    #[arg(long, default_value = "")]
    pub(crate) cmdline: String,
}

impl VmArgs {
    pub fn config(&self) -> VmConfig {
        let image = GuestImage::new(&self.guest_dir);
        let mut config = VmConfig::with_guest_image(&image);
        config.vcpus = self.vcpus;
        config.memory_mib = self.memory;
        if let Some(kernel) = &self.kernel {
            config.kernel = kernel.clone();
        }
        if let Some(initrd) = &self.initrd {
            config.initrd = initrd.clone();
        }
        config.machine = self.machine;
        config.accel = self.accel;
        config.boot_timeout = Duration::from_secs(self.boot_timeout);
        config.extra_cmdline = self.cmdline.clone();
        config
    }
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Boot a VM, wait for its agent, print the guest details and boot timings, shut it down.
    Run {
        #[command(flatten)]
        vm: VmArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Launch → agent-ready against the bare QEMU boot of the same kernel to a marker init.
    Boot {
        /// Measured runs of each (after one warm-up).
        #[arg(short = 'n', long, default_value_t = 10)]
        runs: usize,
        #[command(flatten)]
        vm: VmArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The confidential pod's timeline (`podvm pod run --timings`), median over runs: encrypted
    /// image, emulated SNP, KBS, generated policy; and the share that is not the VM boot.
    Pod {
        /// Measured runs (after one warm-up).
        #[arg(short = 'n', long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// containerd's `ctr run` → first output line: podvm's shim next to runc and to the bare
    /// VM boot of the same kernel (needs a containerd with podvm registered:
    /// `scripts/containerd-test start`).
    Ctr(super::bench_ctr::CtrBenchArgs),
    /// The built-in KVM monitor (`podvm vmm run`) against QEMU starting the same PVH guest:
    /// process start → first guest output byte, and the monitor's RSS with the guest running.
    Vmm(super::bench_vmm::VmmBenchArgs),
}

pub async fn run(cmd: VmCommand) -> Result<()> {
    let VmCommand::Run { vm, json } = cmd;
    run_vm(&vm, json, false).await
}

async fn run_vm(args: &VmArgs, json: bool, narrate: bool) -> Result<()> {
    let config = args.config();
    let backend = podvm_host_runtime::hypervisor::from_environment(args.hypervisor)?;
    if narrate {
        println!(
            "podvm demo: booting a pod VM ({} vCPU, {} MiB, {}) whose PID 1 is the podvm agent…",
            config.vcpus,
            config.memory_mib,
            config.machine.as_str()
        );
    }
    let vm = Vm::start(&config, backend.as_ref()).await?;
    let details = vm
        .agent()
        .guest_details()
        .await
        .context("ask the agent for the guest details")?;
    let version = vm
        .agent()
        .version()
        .await
        .context("ask the agent for its version")?;
    let timings = vm.timings().clone();
    let (accel, accel_reason) = vm.accel();
    let (accel, accel_reason) = (accel.as_str(), accel_reason.to_string());
    let id = vm.id().to_string();
    let stop = vm.stop().await;

    let uptime_ms = |us: u64| us as f64 / 1000.0;
    if json {
        let out = json!({
            "id": id,
            "accel": accel,
            "accel_reason": accel_reason,
            "machine": config.machine,
            "guest": {
                "agent_version": version,
                "agent_is_pid1": details.agent_details.init_daemon,
                "kernel_release": details.kernel_release,
                "kernel_version": details.kernel_version,
                "memory_total_bytes": details.memory_total_bytes,
                "online_vcpus": details.online_vcpus,
                "tee": details.tee,
                "agent_start_uptime_ms": uptime_ms(details.agent_start_uptime_us),
                "agent_ready_uptime_ms": uptime_ms(details.agent_ready_uptime_us),
            },
            "timings_ms": timings,
            "stop": stop,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "VM {id} ready: the agent answered {:.0} ms after launch ({accel}: {accel_reason})",
        timings.agent_ready_ms
    );
    println!(
        "  agent    {version}{}",
        if details.agent_details.init_daemon {
            " (PID 1)"
        } else {
            ""
        }
    );
    println!(
        "  kernel   {} {}",
        details.kernel_release, details.kernel_version
    );
    println!(
        "  guest    {} MiB RAM, {} vCPU{}, TEE {}",
        details.memory_total_bytes >> 20,
        details.online_vcpus,
        if details.online_vcpus == 1 { "" } else { "s" },
        details.tee
    );
    println!(
        "  boot     vsock backend {:.0} ms · QEMU started {:.0} ms · agent connected {:.0} ms · agent ready {:.0} ms",
        timings.helpers_ready_ms,
        timings.vmm_spawned_ms,
        timings.agent_connected_ms,
        timings.agent_ready_ms
    );
    println!(
        "  guest    agent started at {:.0} ms of guest uptime, serving at {:.0} ms",
        uptime_ms(details.agent_start_uptime_us),
        uptime_ms(details.agent_ready_uptime_us)
    );
    match &stop.forced_because {
        None => println!(
            "VM {id} stopped in {:.0} ms: the guest powered off when asked; no process or state left",
            stop.stop_ms
        ),
        Some(why) => println!(
            "VM {id} killed after {:.0} ms ({why}); no process or state left",
            stop.stop_ms
        ),
    }
    if narrate {
        println!(
            "next: `podvm bench boot -n 10` compares this with a bare QEMU boot of the same kernel"
        );
    }
    Ok(())
}

pub async fn bench(cmd: BenchCommand) -> Result<()> {
    let (runs, vm, json) = match cmd {
        BenchCommand::Boot { runs, vm, json } => (runs, vm, json),
        BenchCommand::Pod { runs, vm } => return super::demo::bench(runs, vm).await,
        BenchCommand::Ctr(args) => return super::bench_ctr::bench(args).await,
        BenchCommand::Vmm(args) => return super::bench_vmm::bench(args),
    };
    if vm.hypervisor != HypervisorKind::Qemu {
        anyhow::bail!(
            "podvm bench boot compares podvm's QEMU boot with a bare QEMU boot; for the built-in monitor use `podvm bench vmm`"
        );
    }
    let config = vm.config();
    let qemu = QemuBackend::from_environment()?;
    let report = bench::boot(&config, &qemu, runs).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "boot benchmark: {} runs each, {}, {}, {} vCPU, {} MiB",
        report.runs, report.machine, report.accel, config.vcpus, config.memory_mib
    );
    println!("                                   min     median        max");
    for (name, s) in [
        ("podvm launch → agent ready", report.podvm),
        ("bare QEMU boot → marker init", report.bare),
    ] {
        println!(
            "  {name:<28} {:>7.0} ms {:>7.0} ms {:>7.0} ms",
            s.min, s.median, s.max
        );
    }
    println!(
        "  ratio podvm/bare (medians)   {:.3}  (podvm's own overhead {:+.1} % of the bare boot; goal ≤ 10 %)",
        report.ratio, report.overhead_percent
    );
    Ok(())
}
