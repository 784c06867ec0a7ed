//! `podvm install containerd` / `podvm uninstall containerd`: podvm's runtimes in containerd's
//! CRI configuration (see `podvm_host_runtime::install`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podvm_host_runtime::install::{
    self, Applied, ConfigFileOutcome, RUNTIMES, SHIM_BINARY, add_runtimes, remove_runtimes,
};

const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

#[derive(Subcommand)]
pub enum InstallCommand {
    /// Register podvm's runtimes (podvm, podvm-snp, podvm-tdx, podvm-emulated) in containerd's
    /// CRI config and write podvm's shim configuration files. Idempotent.
    Containerd(InstallArgs),
}

#[derive(Subcommand)]
pub enum UninstallCommand {
    /// Remove podvm's four runtimes from containerd's CRI config (nothing else).
    Containerd(UninstallArgs),
}

#[derive(Args)]
pub struct InstallArgs {
    /// containerd's configuration file (created if absent).
    #[arg(long, default_value = DEFAULT_CONTAINERD_CONFIG)]
    config: PathBuf,
    /// The shim binary containerd runs. Default: containerd-shim-podvm-v2 next to this podvm
    /// binary, else on PATH.
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Where the shim configuration files are (written there if absent, never overwritten).
    #[arg(long, default_value = "/etc/podvm")]
    podvm_config_dir: PathBuf,
    /// Say what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restart containerd (systemctl) when its configuration changed.
    #[arg(long)]
    restart: bool,
}

#[derive(Args)]
pub struct UninstallArgs {
    /// containerd's configuration file.
    #[arg(long, default_value = DEFAULT_CONTAINERD_CONFIG)]
    config: PathBuf,
    /// Say what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restart containerd (systemctl) when its configuration changed.
    #[arg(long)]
    restart: bool,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    // Drops `.` components (`/a/./b` → `/a/b`); `..` is kept (it may cross a symlink).
    Ok(path.components().collect())
}

/// The shim: `--shim`, else next to this binary, else on PATH.
fn find_shim(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        let path = absolute(path)?;
        if !path.is_file() {
            bail!(
                "--shim {}: no such file; build it (cargo build -p podvm-shim) or pass the right path",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the running podvm binary")?;
    if let Some(beside) = exe.parent().map(|d| d.join(SHIM_BINARY))
        && beside.is_file()
    {
        return Ok(beside);
    }
    podvm_host_runtime::paths::find_executable("PODVM_SHIM", SHIM_BINARY, &[]).with_context(|| {
        format!(
            "{SHIM_BINARY} is neither next to {} nor on PATH; install it there or pass --shim PATH",
            exe.display()
        )
    })
}

fn names(list: &[&str]) -> String {
    list.join(", ")
}

/// Prints what happened to containerd's configuration file.
fn report_config(path: &Path, applied: &Applied, dry_run: bool, removing: bool) {
    let p = path.display();
    let version = applied.edited.version.number();
    if !applied.changed {
        if removing {
            println!("{p}: podvm's runtimes are not there; nothing changed");
        } else {
            println!("{p}: podvm's runtimes are already installed; nothing changed");
        }
        return;
    }
    let verb = match (removing, dry_run) {
        (true, true) => "would remove",
        (true, false) => "removed",
        (false, true) => "would add or update",
        (false, false) => "added or updated",
    };
    let created = if applied.existed {
        ""
    } else if dry_run {
        " (would create the file)"
    } else {
        " (created the file)"
    };
    println!(
        "{p}: {verb} runtimes {} (containerd config version {version}){created}",
        names(&applied.edited.touched)
    );
    if let Some(backup) = &applied.backup {
        println!("{p}: previous content saved as {}", backup.display());
    }
}

/// `systemctl restart containerd` when systemd runs this machine.
fn restart_containerd(changed: bool, dry_run: bool) -> Result<()> {
    if !changed {
        println!("containerd's configuration is unchanged; not restarting containerd");
        return Ok(());
    }
    if dry_run {
        println!("would restart containerd (systemctl restart containerd)");
        return Ok(());
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        eprintln!(
            "podvm: could not restart containerd: systemd is not PID 1 here (PID 1 is {:?}); restart containerd yourself",
            pid1.trim()
        );
        return Ok(());
    }
    let status = std::process::Command::new("systemctl")
        .args(["restart", "containerd"])
        .status()
        .context("cannot run systemctl restart containerd")?;
    if !status.success() {
        bail!(
            "systemctl restart containerd failed ({status}); see `journalctl -u containerd` and fix the config, whose backup is beside it"
        );
    }
    println!("restarted containerd");
    Ok(())
}

pub fn install(command: InstallCommand) -> Result<()> {
    let InstallCommand::Containerd(args) = command;
    let shim = find_shim(args.shim.as_deref())?;
    let config_dir = absolute(&args.podvm_config_dir)?;
    let applied = install::apply(&args.config, args.dry_run, |text| {
        add_runtimes(text, &args.config, &shim, &config_dir)
    })?;
    report_config(&args.config, &applied, args.dry_run, false);
    if applied.changed {
        println!("  shim: {}", shim.display());
    }
    let outcomes = install::write_shim_configs(&config_dir, args.dry_run)?;
    for (runtime, outcome) in RUNTIMES.iter().zip(&outcomes) {
        match outcome {
            ConfigFileOutcome::Written(p) => {
                println!("wrote {} (tee mode {})", p.display(), runtime.tee_mode)
            }
            ConfigFileOutcome::WouldWrite(p) => {
                println!(
                    "would write {} (tee mode {})",
                    p.display(),
                    runtime.tee_mode
                )
            }
            ConfigFileOutcome::Kept(p) => println!("kept {} (already present)", p.display()),
        }
    }
    if args.dry_run {
        println!("dry run: nothing was written");
    }
    if args.restart {
        restart_containerd(applied.changed, args.dry_run)?;
    }
    Ok(())
}

pub fn uninstall(command: UninstallCommand) -> Result<()> {
    let UninstallCommand::Containerd(args) = command;
    if !args.config.exists() {
        println!(
            "{}: no such file; nothing to uninstall",
            args.config.display()
        );
        return Ok(());
    }
    let applied = install::apply(&args.config, args.dry_run, |text| {
        remove_runtimes(text.unwrap_or_default(), &args.config)
    })?;
    report_config(&args.config, &applied, args.dry_run, true);
    println!("podvm's shim configuration files (/etc/podvm/configuration*.toml) are left in place");
    if args.dry_run {
        println!("dry run: nothing was written");
    }
    if args.restart {
        restart_containerd(applied.changed, args.dry_run)?;
    }
    Ok(())
}
