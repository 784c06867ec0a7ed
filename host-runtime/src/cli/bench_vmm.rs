//! `podvm bench vmm`: the built-in KVM monitor (`podvm vmm run`) against QEMU, both starting the
//! same guest the same way ([`bench_guest`]: a PVH ELF that prints one line to COM1 and spins).
//! Per run and monitor, as a real process start: `spawn()` → the first byte of the guest's line
//! on the child's stdout pipe, and the child's `VmRSS` once the whole line has arrived (the guest
//! is running; then the child is killed). Runs alternate after one unmeasured warm-up of each, so
//! that host-load drift hits both series alike. Figures are printed, never asserted.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podvm_host_runtime::accel::AccelChoice;
use podvm_host_runtime::bench::Summary;
use podvm_host_runtime::hypervisor::kvm::bench_guest::{self, BenchGuestEnd, MESSAGE};
use podvm_host_runtime::hypervisor::kvm::{KvmVm, LinuxSpec};
use podvm_host_runtime::process::OwnedChild;

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct VmmBenchArgs {
    /// Measured runs of each monitor (after one warm-up).
    #[arg(short = 'n', long, default_value_t = 10)]
    pub runs: usize,
    /// Guest memory in MiB (both monitors).
    #[arg(long, default_value_t = 16)]
    pub memory_mib: u64,
    /// QEMU's accelerator: auto uses KVM if QEMU runs the bench guest with it here, TCG otherwise.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub qemu_accel: AccelChoice,
    /// Seconds a monitor may take to print the guest's line.
    #[arg(long, default_value_t = 20)]
    pub timeout_secs: u64,
}

/// One measured start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// `spawn()` → the first byte on the child's stdout, in ms.
    first_byte_ms: f64,
    /// The child's `VmRSS` with the guest running, in KiB.
    rss_kib: u64,
    /// Its anonymous part (`RssAnon`: heap, stacks, touched guest memory), in KiB; the rest is
    /// mostly the executable's and libraries' pages.
    anon_kib: u64,
}

/// What a benchmark measured.
#[derive(Debug, Clone, PartialEq)]
struct VmmBenchReport {
    runs: usize,
    memory_mib: u64,
    /// `qemu-system-x86_64 --version`'s first line.
    qemu_version: String,
    qemu_accel: &'static str,
    qemu_accel_reason: String,
    podvm: Vec<Sample>,
    qemu: Vec<Sample>,
    /// `ExitReport::first_output` of in-process runs (VM creation → first byte), in ms.
    in_process_ms: Vec<f64>,
}

/// A `kB` field (`VmRSS`, `RssAnon`, …) from the text of `/proc/PID/status`.
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let mut words = rest.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

/// `(VmRSS, RssAnon)` of a process, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field =
        |name| parse_status_kib(&status, name).with_context(|| format!("no {name} line in {path}"));
    Ok((field("VmRSS")?, field("RssAnon")?))
}

/// QEMU starting the bench guest: microvm without option ROMs or RTC, COM1 on stdout.
fn qemu_command(qemu: &Path, accel: &str, guest: &Path, memory_mib: u64) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-M", "microvm,x-option-roms=off,rtc=off"])
        .args(["-accel", accel]);
    if accel == "kvm" {
        cmd.args(["-cpu", "host"]);
    }
    cmd.args([
        "-m",
        &format!("{memory_mib}M"),
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(guest);
    cmd
}

/// `podvm vmm run` starting the bench guest (spinning after its line).
fn podvm_command(podvm: &Path, memory_mib: u64) -> Command {
    let mut cmd = Command::new(podvm);
    cmd.args(["vmm", "run", "--bench-guest", "spin", "--memory-mib"])
        .arg(memory_mib.to_string());
    cmd
}

/// Starts `cmd`, times `spawn()` → the first byte on its stdout, waits for the whole bench guest
/// line, reads the child's RSS and kills it.
fn measure(
    what: &'static str,
    mut cmd: Command,
    stderr: &Path,
    timeout: Duration,
) -> Result<Sample> {
    let log =
        File::create(stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let start = Instant::now();
    let mut child = OwnedChild::spawn(what, cmd).with_context(|| format!("cannot start {what}"))?;
    let mut stdout = child
        .take_stdout()
        .context("the child's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let mut first = None;
    while out.len() < MESSAGE.len() {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((at, bytes)) => {
                first.get_or_insert(at);
                out.extend_from_slice(&bytes);
            }
            Err(why) => {
                let _ = child.kill();
                let how = match why {
                    RecvTimeoutError::Timeout => format!("did not print within {timeout:?}"),
                    RecvTimeoutError::Disconnected => "exited".to_string(),
                };
                bail!(
                    "{what} {how} (guest output {:?}); its stderr: {}",
                    String::from_utf8_lossy(&out),
                    last_line(stderr)
                );
            }
        }
    }
    if !out.starts_with(MESSAGE) {
        bail!(
            "{what} printed {:?}, not the bench guest's line",
            String::from_utf8_lossy(&out)
        );
    }
    let (rss_kib, anon_kib) = rss_kib(child.pid())?;
    drop(child);
    let first = first.context("no output")?;
    Ok(Sample {
        first_byte_ms: first.duration_since(start).as_secs_f64() * 1000.0,
        rss_kib,
        anon_kib,
    })
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(empty)".into())
}

/// One in-process run of the reset variant: `ExitReport::first_output`, in ms.
fn in_process_first_output_ms(memory_mib: u64) -> Result<f64> {
    let report = KvmVm::builder()
        .memory_mib(memory_mib)
        .linux(LinuxSpec {
            kernel: bench_guest::elf(BenchGuestEnd::Reset),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        })
        .build()
        .and_then(|vm| vm.run(Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("the in-process run failed: {e}"))?;
    let first = report
        .first_output
        .context("the in-process bench guest printed nothing")?;
    Ok(first.as_secs_f64() * 1000.0)
}

fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| qemu.display().to_string())
}

pub fn bench(args: VmmBenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("-n must be at least 1");
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let qemu = podvm_host_runtime::paths::find_executable("PODVM_QEMU", "qemu-system-x86_64", &[])
        .context(
            "QEMU not found: run scripts/setup (apt-get install qemu-system-x86) or set PODVM_QEMU",
        )?;
    let podvm = std::env::current_exe().context("cannot find the podvm executable")?;
    let work = tempfile_dir()?;
    let result = run_bench(&args, &qemu, &podvm, &work, timeout);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    print!("{}", table(&report)?);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("podvm-bench-vmm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn run_bench(
    args: &VmmBenchArgs,
    qemu: &Path,
    podvm: &Path,
    work: &Path,
    timeout: Duration,
) -> Result<VmmBenchReport> {
    let guest = work.join("bench-guest.elf");
    std::fs::write(&guest, bench_guest::elf(BenchGuestEnd::Spin))
        .with_context(|| format!("cannot write {}", guest.display()))?;
    let stderr = work.join("stderr.log");
    let qemu_run = |accel: &str| {
        measure(
            "QEMU",
            qemu_command(qemu, accel, &guest, args.memory_mib),
            &stderr,
            timeout,
        )
    };
    let podvm_run = || {
        measure(
            "podvm vmm run",
            podvm_command(podvm, args.memory_mib),
            &stderr,
            timeout,
        )
    };
    // The warm-up of QEMU doubles as the KVM probe.
    let (accel, reason) = match args.qemu_accel {
        AccelChoice::Kvm => {
            qemu_run("kvm").context("QEMU with KVM")?;
            ("kvm", "asked for".to_string())
        }
        AccelChoice::Tcg => {
            qemu_run("tcg").context("QEMU with TCG")?;
            ("tcg", "asked for".to_string())
        }
        AccelChoice::Auto => match qemu_run("kvm") {
            Ok(_) => ("kvm", "QEMU ran the bench guest with KVM here".to_string()),
            Err(e) => {
                qemu_run("tcg").context("QEMU with TCG")?;
                ("tcg", format!("QEMU with KVM failed here: {e:#}"))
            }
        },
    };
    podvm_run().context("podvm vmm run")?;

    let mut report = VmmBenchReport {
        runs: args.runs,
        memory_mib: args.memory_mib,
        qemu_version: qemu_version(qemu),
        qemu_accel: accel,
        qemu_accel_reason: reason,
        podvm: Vec::with_capacity(args.runs),
        qemu: Vec::with_capacity(args.runs),
        in_process_ms: Vec::with_capacity(args.runs),
    };
    for _ in 0..args.runs {
        report.podvm.push(podvm_run().context("podvm vmm run")?);
        report.qemu.push(qemu_run(accel).context("QEMU")?);
        report
            .in_process_ms
            .push(in_process_first_output_ms(args.memory_mib)?);
    }
    Ok(report)
}

/// The printed table: min / median / max of each series and the podvm / QEMU median ratios.
fn table(r: &VmmBenchReport) -> Result<String> {
    use std::fmt::Write;
    let s = |v: Vec<f64>| Summary::of(&v).context("no runs");
    let start = |v: &[Sample]| s(v.iter().map(|x| x.first_byte_ms).collect());
    let rss = |v: &[Sample]| s(v.iter().map(|x| x.rss_kib as f64 / 1024.0).collect());
    let anon = |v: &[Sample]| s(v.iter().map(|x| x.anon_kib as f64 / 1024.0).collect());
    let (p_start, q_start) = (start(&r.podvm)?, start(&r.qemu)?);
    let (p_rss, q_rss) = (rss(&r.podvm)?, rss(&r.qemu)?);
    let (p_anon, q_anon) = (anon(&r.podvm)?, anon(&r.qemu)?);
    let in_process = s(r.in_process_ms.clone())?;
    let mut t = String::new();
    let row = |t: &mut String, name: &str, v: Summary, unit: &str| {
        let _ = writeln!(
            t,
            "    {name:<24} {:>8.1} {unit:<3} {:>8.1} {unit:<3} {:>8.1} {unit}",
            v.min, v.median, v.max
        );
    };
    let _ = writeln!(
        t,
        "vmm benchmark: {} runs each, bench guest (PVH ELF: one line on COM1, then jmp $), {} MiB",
        r.runs, r.memory_mib
    );
    let _ = writeln!(
        t,
        "  QEMU: {}, -M microvm, {} ({})",
        r.qemu_version, r.qemu_accel, r.qemu_accel_reason
    );
    let _ = writeln!(
        t,
        "                                  min          median          max"
    );
    let _ = writeln!(t, "  process start → first guest byte");
    row(&mut t, "podvm vmm run", p_start, "ms");
    row(&mut t, "QEMU", q_start, "ms");
    let _ = writeln!(t, "  monitor RSS, guest running");
    row(&mut t, "podvm vmm run", p_rss, "MiB");
    row(&mut t, "QEMU", q_rss, "MiB");
    let _ = writeln!(t, "  of which anonymous (RssAnon)");
    row(&mut t, "podvm vmm run", p_anon, "MiB");
    row(&mut t, "QEMU", q_anon, "MiB");
    let _ = writeln!(
        t,
        "  podvm / QEMU (medians): start {:.3}, RSS {:.3}, anonymous {:.3}",
        p_start.median / q_start.median,
        p_rss.median / q_rss.median,
        p_anon.median / q_anon.median
    );
    let _ = writeln!(
        t,
        "  in process, VM creation → first guest byte (ExitReport::first_output): median {:.2} ms (min {:.2}, max {:.2})",
        in_process.median, in_process.min, in_process.max
    );
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tqemu\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(1));
        assert_eq!(parse_status_kib(status, "Rss"), None);
        assert_eq!(parse_status_kib("Name:\tx\n", "VmRSS"), None);
        assert_eq!(parse_status_kib("VmRSS:\t12 MB\n", "VmRSS"), None);
        // Our own process has both.
        let (rss, anon) = rss_kib(std::process::id()).unwrap();
        assert!(rss >= anon && anon > 0, "{rss} {anon}");
    }

    fn sample(first_byte_ms: f64, rss_kib: u64) -> Sample {
        Sample {
            first_byte_ms,
            rss_kib,
            anon_kib: rss_kib / 2,
        }
    }

    #[test]
    fn table_has_medians_extremes_and_ratios() {
        let report = VmmBenchReport {
            runs: 3,
            memory_mib: 16,
            qemu_version: "QEMU emulator version 7.2.22".into(),
            qemu_accel: "kvm",
            qemu_accel_reason: "QEMU ran the bench guest with KVM here".into(),
            podvm: vec![sample(9.0, 4096), sample(5.0, 2048), sample(7.0, 3072)],
            qemu: vec![
                sample(40.0, 40960),
                sample(20.0, 30720),
                sample(30.0, 20480),
            ],
            in_process_ms: vec![1.5, 0.5, 1.0],
        };
        let t = table(&report).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("3 runs each") && lines[0].contains("16 MiB"),
            "{t}"
        );
        assert!(
            lines[1].contains("7.2.22") && lines[1].contains("kvm"),
            "{t}"
        );
        let find = |from: usize, name: &str| {
            lines[from..]
                .iter()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap()
        };
        let start_at = lines
            .iter()
            .position(|l| l.contains("first guest byte"))
            .unwrap();
        let rss_at = lines.iter().position(|l| l.contains("RSS, guest")).unwrap();
        // name words, then min unit median unit max unit.
        assert_eq!(
            find(start_at, "podvm")[3..],
            ["5.0", "ms", "7.0", "ms", "9.0", "ms"]
        );
        assert_eq!(
            find(start_at, "QEMU")[1..],
            ["20.0", "ms", "30.0", "ms", "40.0", "ms"]
        );
        assert_eq!(
            find(rss_at, "podvm")[3..],
            ["2.0", "MiB", "3.0", "MiB", "4.0", "MiB"]
        );
        assert_eq!(
            find(rss_at, "QEMU")[1..],
            ["20.0", "MiB", "30.0", "MiB", "40.0", "MiB"]
        );
        // 7/30 and 3/30.
        let anon_at = lines.iter().position(|l| l.contains("RssAnon")).unwrap();
        assert_eq!(
            find(anon_at, "podvm")[3..],
            ["1.0", "MiB", "1.5", "MiB", "2.0", "MiB"]
        );
        assert!(t.contains("start 0.233, RSS 0.100, anonymous 0.100"), "{t}");
        assert!(t.contains("median 1.00 ms (min 0.50, max 1.50)"), "{t}");
    }

    #[test]
    fn table_needs_samples() {
        let report = VmmBenchReport {
            runs: 0,
            memory_mib: 16,
            qemu_version: String::new(),
            qemu_accel: "tcg",
            qemu_accel_reason: String::new(),
            podvm: vec![],
            qemu: vec![],
            in_process_ms: vec![],
        };
        assert!(table(&report).is_err());
    }

    #[test]
    fn commands_start_the_same_guest() {
        let args = |c: &Command| {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let q = qemu_command(Path::new("qemu"), "kvm", Path::new("/w/g.elf"), 16);
        assert!(args(&q).contains("-accel kvm -cpu host"), "{}", args(&q));
        assert!(args(&q).ends_with("-m 16M -serial stdio -kernel /w/g.elf"));
        let q = qemu_command(Path::new("qemu"), "tcg", Path::new("/w/g.elf"), 16);
        assert!(!args(&q).contains("-cpu"));
        let p = podvm_command(Path::new("podvm"), 16);
        assert_eq!(args(&p), "vmm run --bench-guest spin --memory-mib 16");
    }

    #[test]
    fn args_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: VmmBenchArgs,
        }
        use clap::Parser;
        let a = Cli::try_parse_from(["bench", "-n", "3", "--qemu-accel", "tcg"])
            .unwrap()
            .args;
        assert_eq!(a.runs, 3);
        assert_eq!(a.qemu_accel, AccelChoice::Tcg);
        assert_eq!(a.memory_mib, 16);
        assert!(Cli::try_parse_from(["bench", "--qemu-accel", "hvf"]).is_err());
    }
}
