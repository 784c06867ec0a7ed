//! `podvm image build-guest`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use podvm_host_runtime::guest_image::{BuildGuest, GuestImage};
use podvm_host_runtime::paths;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel (cached by source version and config hash) and the initramfs.
    BuildGuest(BuildGuestArgs),
    /// Pull an image from an OCI registry, verify, decrypt (ocicrypt) and unpack it.
    Pull(crate::cli::image_pull::PullArgs),
}

#[derive(Args)]
pub struct BuildGuestArgs {
    /// The statically linked agent to put in the initramfs as /init.
    #[arg(long, default_value = "/usr/local/lib/podvm/podvm-agent")]
    agent: PathBuf,
    /// The statically linked marker init (baseline of `podvm bench boot`, KVM probe).
    #[arg(long, default_value = "/usr/local/lib/podvm/podvm-marker-init")]
    marker_init: PathBuf,
    /// A kernel configuration instead of the one built into podvm (guest/kernel/config-6.12).
    #[arg(long)]
    kernel_config: Option<PathBuf>,
    /// Where to put the image.
    #[arg(long, env = "PODVM_GUEST_DIR", default_value_os_t = paths::guest_dir())]
    out: PathBuf,
    /// Parallel kernel build jobs (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: ImageCommand) -> Result<()> {
    let args = match cmd {
        ImageCommand::BuildGuest(args) => args,
        ImageCommand::Pull(args) => return crate::cli::image_pull::run(args).await,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = std::time::Instant::now();
    let manifest = BuildGuest {
        agent: args.agent,
        marker_init: args.marker_init,
        kernel_config: args.kernel_config,
        cache_dir: paths::cache_dir(),
        out_dir: args.out.clone(),
        jobs,
    }
    .run()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let image = GuestImage::new(&args.out);
    println!(
        "guest image in {} ({:.1} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  kernel     {} {} (config {}, built in {:.0} s)",
        manifest.kernel_source_package,
        manifest.kernel_source_version,
        &manifest.kernel_config_sha256[..16],
        manifest.kernel_build_seconds
    );
    for (path, digest) in [
        (image.vmlinux(), &manifest.vmlinux),
        (image.bzimage(), &manifest.bzimage),
        (image.initramfs(), &manifest.initramfs),
        (image.marker_initramfs(), &manifest.marker_initramfs),
    ] {
        println!(
            "  {:<28} {:>10} bytes  sha256 {}",
            path.file_name().unwrap().to_string_lossy(),
            digest.size,
            digest.sha256
        );
    }
    Ok(())
}
