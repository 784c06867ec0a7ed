//! `podvm bench ctr`: containerd's `ctr run --rm` → the container's first output line, for a
//! podvm pod (`io.containerd.podvm.v2`) next to runc (`io.containerd.runc.v2`) on the same
//! containerd, and next to the bare QEMU boot of the same guest kernel to a marker init (the
//! floor any VM-based runtime starts from). Runs alternate so that host-load drift hits every
//! series alike; one unmeasured warm-up of each.
//!
//! The containerd is one the user runs with podvm registered (`scripts/containerd-test start`
//! starts a private one; its socket is the default `--address`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podvm_host_runtime::accel::MARKER;
use podvm_host_runtime::bench::Summary;
use podvm_host_runtime::hypervisor::qemu::QemuBackend;
use podvm_host_runtime::vm::Vm;

use super::vm::VmArgs;

const NAMESPACE: &str = "podvm-bench";
const IMAGE: &str = "docker.io/podvm/bench-busybox:latest";
const FIRST_LINE: &str = "podvm-bench-first-line";

#[derive(clap::Args)]
pub struct CtrBenchArgs {
    /// Measured runs of each (after one warm-up).
    #[arg(short = 'n', long, default_value_t = 5)]
    runs: usize,
    /// containerd's socket (podvm must be registered as io.containerd.podvm.v2).
    #[arg(long, default_value = "/run/podvm-containerd-test/containerd.sock")]
    address: PathBuf,
    /// The bare boot's VM (use the shim configuration's vCPUs and memory).
    #[command(flatten)]
    vm: VmArgs,
}

fn ctr(address: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(address).args(["-n", NAMESPACE]);
    c
}

/// Imports the busybox sample image into the bench namespace.
fn import_image(address: &Path) -> Result<()> {
    let work = std::env::temp_dir().join(format!("podvm-bench-ctr-{}", std::process::id()));
    let result = import_image_via(address, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn import_image_via(address: &Path, work: &Path) -> Result<()> {
    let tarball = work.join("image.tar");
    podvm_host_runtime::sample_image::write_tarball(work, &tarball, "podvm bench ctr")
        .context("build the sample image")?;
    let out = ctr(address)
        .args([
            "image",
            "import",
            "--base-name",
            "docker.io/podvm/bench-busybox",
        ])
        .arg(&tarball)
        .output()
        .context("cannot run ctr (install containerd)")?;
    if !out.status.success() {
        bail!(
            "ctr image import at {}: {} (is containerd running there? scripts/containerd-test start)",
            address.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One `ctr run --rm`: milliseconds to the first output line, and to the command's end.
fn run_once(address: &Path, runtime: &str, id: &str) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = ctr(address)
        .args(["run", "--rm", "--runtime", runtime, IMAGE, id])
        .args(["/bin/echo", FIRST_LINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ctr")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = lines.next().transpose()?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    for _ in lines {}
    let out = child.wait_with_output()?;
    let total_ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() || first.as_deref() != Some(FIRST_LINE) {
        bail!(
            "ctr run --runtime {runtime}: {} (first line {first:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((first_ms, total_ms))
}

pub async fn bench(args: CtrBenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("-n must be at least 1");
    }
    import_image(&args.address)?;
    let config = args.vm.config();
    let qemu = QemuBackend::from_environment()?;
    let plan = Vm::plan(&config, &qemu)?;
    let mut bare_spec = plan.spec.clone();
    bare_spec.initrd = config.marker_initrd.clone();
    bare_spec.initdata_disk = None;

    let (mut podvm, mut podvm_total, mut runc, mut bare) = (vec![], vec![], vec![], vec![]);
    for run in 0..=args.runs {
        let (p, p_total) = run_once(
            &args.address,
            "io.containerd.podvm.v2",
            &format!("bench-podvm-{run}"),
        )?;
        let (r, _) = run_once(
            &args.address,
            "io.containerd.runc.v2",
            &format!("bench-runc-{run}"),
        )?;
        let b = qemu
            .bare_boot(&bare_spec, MARKER, Duration::from_secs(60))?
            .context("the bare boot did not reach its marker within 60 s")?;
        if run > 0 {
            podvm.push(p);
            podvm_total.push(p_total);
            runc.push(r);
            bare.push(b.as_secs_f64() * 1000.0);
        }
    }
    let _ = ctr(&args.address)
        .args(["image", "rm", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let s = |v: &[f64]| Summary::of(v).expect("runs > 0");
    let (podvm, podvm_total, runc, bare) = (s(&podvm), s(&podvm_total), s(&runc), s(&bare));
    println!(
        "ctr run → first output line: {} runs each, {} vCPU, {} MiB guest, {}",
        args.runs,
        config.vcpus,
        config.memory_mib,
        plan.spec.accel.as_str()
    );
    println!("                                          min     median        max");
    for (name, v) in [
        ("podvm (io.containerd.podvm.v2)", podvm),
        ("runc (io.containerd.runc.v2)", runc),
        ("bare QEMU boot → marker init", bare),
        ("podvm ctr run, to exit and removal", podvm_total),
    ] {
        println!(
            "  {name:<36} {:>7.0} ms {:>7.0} ms {:>7.0} ms",
            v.min, v.median, v.max
        );
    }
    println!(
        "  podvm / bare VM boot (medians)       {:.2}  (+{:.0} ms: rootfs disk, agent, container)",
        podvm.median / bare.median,
        podvm.median - bare.median
    );
    println!(
        "  podvm / runc (medians)               {:.2}",
        podvm.median / runc.median
    );
    Ok(())
}
