//! `podvm vmm run`: one VM on the built-in KVM monitor (`hypervisor::kvm`) in this process, its
//! COM1 on stdout. Exit status 0 when the guest resets through the i8042; otherwise a one-line
//! error (the guest failed, the deadline passed, the kernel could not be loaded, …).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podvm_host_runtime::hypervisor::kvm::bench_guest::{self, BenchGuestEnd};
use podvm_host_runtime::hypervisor::kvm::{
    DEFAULT_MEMORY_MIB, ExitReason, KvmVm, KvmVmError, LinuxSpec, SeccompLevel, StopHandle,
};

#[derive(Subcommand)]
pub enum VmmCommand {
    /// Run one VM on the built-in KVM monitor, its serial console on stdout; exit 0 when the
    /// guest resets.
    Run(VmmRunArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct VmmRunArgs {
    /// The kernel: a bzImage, or an ELF (entered through PVH if it has the PVH note).
    #[arg(
        long,
        required_unless_present = "bench_guest",
        conflicts_with = "bench_guest"
    )]
    pub kernel: Option<PathBuf>,
    /// The built-in benchmark guest (a PVH ELF that prints one line to COM1) instead of a
    /// kernel: `spin` keeps running after its line, `reset` resets (exit status 0).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "spin")]
    pub bench_guest: Option<BenchGuestEnd>,
    /// Initial RAM disk for the kernel.
    #[arg(long, conflicts_with = "bench_guest")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory_mib: u64,
    /// Guest CID of a virtio-vsock device (with --vsock-socket).
    #[arg(long, requires = "vsock_socket")]
    pub vsock_cid: Option<u64>,
    /// The vsock device's hybrid Unix socket (created; removed when the VM ends).
    #[arg(long, requires = "vsock_cid")]
    pub vsock_socket: Option<PathBuf>,
    /// vCPUs (vCPU 0 starts at the entry, the others wait for the guest's INIT/SIPI).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// A read-only virtio-blk disk (repeatable); disks follow the vsock device in the
    /// virtio-mmio slots, read-only ones first, in the order given.
    #[arg(long, value_name = "PATH")]
    pub disk_ro: Vec<PathBuf>,
    /// A read-write virtio-blk disk (repeatable), after the read-only ones.
    #[arg(long, value_name = "PATH")]
    pub disk: Vec<PathBuf>,
    /// Seccomp allow-lists for the monitor's threads (`strict`: vCPU, device and controller
    /// threads each get their own list; anything else kills the process). `off` is for
    /// debugging.
    #[arg(long, value_enum, default_value_t = SeccompChoice::Strict)]
    pub seccomp: SeccompChoice,
    /// Drop to this user and group (`UID:GID`) once the VM is set up (before it runs).
    #[arg(long, value_name = "UID:GID", value_parser = parse_uid_gid)]
    pub run_as: Option<(u32, u32)>,
    /// Stop the VM with an error after this many seconds (default: no deadline).
    #[arg(long)]
    pub deadline_secs: Option<u64>,
}

/// `--seccomp`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompChoice {
    Strict,
    Off,
}

fn parse_uid_gid(s: &str) -> std::result::Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not UID:GID (e.g. 65534:65534)"))?;
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} in {s:?} is not a number (UID:GID, e.g. 65534:65534)"))
    };
    Ok((num(u)?, num(g)?))
}

/// Stops the VM when dropped: `podvm` drops the command's future on SIGINT/SIGTERM.
struct StopOnDrop(StopHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// COM1 → this process's stdout, one `write` per guest write, nothing buffered (so that the
/// first byte leaves the process as soon as the guest writes it).
fn unbuffered_stdout() -> Result<std::fs::File> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicate stdout for the serial console")?;
    Ok(std::fs::File::from(fd))
}

/// A [`KvmVmError`] as one line: its message already ends in its cause, which `{:#}` would
/// otherwise repeat.
fn one_line(e: KvmVmError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub async fn run(cmd: VmmCommand) -> Result<()> {
    let VmmCommand::Run(args) = cmd;
    let spec = match (&args.kernel, args.bench_guest) {
        (_, Some(end)) => LinuxSpec {
            kernel: bench_guest::elf(end),
            initrd: None,
            cmdline: args.cmdline.clone(),
        },
        (Some(kernel), None) => {
            LinuxSpec::from_files(kernel, args.initrd.as_deref(), args.cmdline.clone())
                .map_err(one_line)?
        }
        (None, None) => bail!("give --kernel PATH or --bench-guest"),
    };
    let mut builder = KvmVm::builder()
        .memory_mib(args.memory_mib)
        .vcpus(args.vcpus)
        .linux(spec)
        .serial(Box::new(unbuffered_stdout()?));
    if let (Some(cid), Some(path)) = (args.vsock_cid, &args.vsock_socket) {
        builder = builder.vsock(cid, path);
    }
    for path in &args.disk_ro {
        builder = builder.disk(path, true);
    }
    for path in &args.disk {
        builder = builder.disk(path, false);
    }
    if args.seccomp == SeccompChoice::Strict {
        builder = builder.seccomp(SeccompLevel::Strict);
    }
    if let Some((uid, gid)) = args.run_as {
        builder = builder.run_as(uid, gid);
    }
    let vm = builder.build().map_err(one_line)?;
    let stop = StopOnDrop(vm.stop_handle());
    let deadline = args
        .deadline_secs
        .map_or(Duration::MAX, Duration::from_secs);
    // KVM_RUN blocks: run it off the async thread so that a signal still ends the command (and
    // `stop` then stops the VM).
    let confined = args.seccomp == SeccompChoice::Strict;
    // The blocking thread only waits for the VM: with `strict` it is confined too.
    let report = tokio::task::spawn_blocking(move || {
        if confined {
            vm.run_confined(deadline)
        } else {
            vm.run(deadline)
        }
    })
    .await
    .context("the VM's controller thread failed")?
    .map_err(one_line)?;
    drop(stop);
    let _ = std::io::stdout().flush();
    match report.reason {
        ExitReason::Reset => Ok(()),
        ExitReason::Stopped => bail!("the VM was stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: VmmCommand,
    }

    fn parse(args: &[&str]) -> Result<VmmRunArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["podvm", "run"], args].concat())?;
        let VmmCommand::Run(a) = cli.cmd;
        Ok(a)
    }

    #[test]
    fn bench_guest_defaults_to_spin_and_takes_a_variant() {
        let a = parse(&["--bench-guest", "--memory-mib", "16"]).unwrap();
        assert_eq!(a.bench_guest, Some(BenchGuestEnd::Spin));
        assert_eq!(a.memory_mib, 16);
        assert_eq!(a.kernel, None);
        assert_eq!(a.deadline_secs, None);
        let a = parse(&["--bench-guest", "reset", "--deadline-secs", "5"]).unwrap();
        assert_eq!(a.bench_guest, Some(BenchGuestEnd::Reset));
        assert_eq!(a.deadline_secs, Some(5));
        assert_eq!(a.memory_mib, DEFAULT_MEMORY_MIB);
    }

    #[test]
    fn kernel_with_initrd_cmdline_and_vsock() {
        let a = parse(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--vsock-cid",
            "3",
            "--vsock-socket",
            "/tmp/v.sock",
        ])
        .unwrap();
        assert_eq!(a.kernel, Some(PathBuf::from("/k")));
        assert_eq!(a.initrd, Some(PathBuf::from("/i")));
        assert_eq!(a.cmdline, "console=ttyS0 quiet");
        assert_eq!(a.vsock_cid, Some(3));
        assert_eq!(a.vsock_socket, Some(PathBuf::from("/tmp/v.sock")));
    }

    #[test]
    fn refuses_missing_or_conflicting_guests_and_half_a_vsock() {
        assert!(parse(&[]).is_err(), "no guest");
        assert!(parse(&["--kernel", "/k", "--bench-guest"]).is_err());
        assert!(parse(&["--bench-guest", "--initrd", "/i"]).is_err());
        assert!(parse(&["--bench-guest", "--vsock-cid", "3"]).is_err());
        assert!(parse(&["--bench-guest", "--vsock-socket", "/s"]).is_err());
        assert!(parse(&["--bench-guest", "sometimes"]).is_err());
    }

    #[test]
    fn the_builtin_backends_arguments_are_what_vmm_run_takes() {
        use podvm_host_runtime::guest_image::validate::KernelFormat;
        use podvm_host_runtime::hypervisor::builtin::BuiltinBackend;
        use podvm_host_runtime::hypervisor::{Accel, Machine, VmSpec};
        use podvm_host_runtime::state::StateDir;

        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(dir.path(), "vm-test").unwrap();
        let spec = VmSpec {
            vcpus: 2,
            memory_mib: 256,
            kernel: "/g/vmlinux".into(),
            kernel_format: KernelFormat::PvhElf,
            initrd: "/g/initramfs.cpio".into(),
            cmdline: BuiltinBackend::cmdline("podvm.tee=none", true),
            machine: Machine::Microvm,
            accel: Accel::Kvm,
            initdata_disk: Some(state.file("initdata.img")),
        };
        let args = BuiltinBackend::vmm_args(&spec, &state);
        assert_eq!(args[..2], ["vmm", "run"]);
        let argv: Vec<std::ffi::OsString> = std::iter::once("podvm".into())
            .chain(args.into_iter().skip(1))
            .collect();
        let VmmCommand::Run(a) = Cli::try_parse_from(argv).unwrap().cmd;
        assert_eq!(a.kernel, Some(PathBuf::from("/g/vmlinux")));
        assert_eq!(a.initrd, Some(PathBuf::from("/g/initramfs.cpio")));
        assert_eq!(a.cmdline, spec.cmdline);
        assert_eq!((a.vcpus, a.memory_mib), (2, 256));
        assert_eq!(a.vsock_cid, Some(3));
        assert_eq!(a.vsock_socket, Some(state.file("vsock.sock")));
        assert_eq!(a.disk_ro, vec![state.file("initdata.img")]);
        assert!(a.disk.is_empty());
    }
}
