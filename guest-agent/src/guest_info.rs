//! What the guest is: kernel, memory, vCPUs and TEE, read from the proc and sys filesystems.
//!
//! Every reader takes the filesystem root so that unit tests can run on a fake tree.

use std::fs;
use std::io;
use std::path::Path;

/// The TEE the guest runs in, as the agent API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    None,
    Snp,
    Tdx,
    /// SEV-SNP evidence signed by the host's emulated PSP (`podvm.tee=snp-emulated`): the formats
    /// and the checks of SNP, none of its protection.
    SnpEmulated,
}

impl Tee {
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::None => "none",
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
            Tee::SnpEmulated => "snp-emulated",
        }
    }
}

/// The guest's TEE: a guest device node of the TEE driver, or the CPU flag the kernel sets for it.
/// Never guesses: no device and no flag is [`Tee::None`].
pub fn detect_tee(root: &Path) -> Tee {
    if root.join("dev/sev-guest").exists() {
        return Tee::Snp;
    }
    if root.join("dev/tdx_guest").exists() {
        return Tee::Tdx;
    }
    let flags = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let flags = flags
        .lines()
        .find(|line| line.starts_with("flags"))
        .unwrap_or_default();
    if flags.split_whitespace().any(|f| f == "sev_snp") {
        Tee::Snp
    } else if flags.split_whitespace().any(|f| f == "tdx_guest") {
        Tee::Tdx
    } else if emulated_snp_requested(root) {
        Tee::SnpEmulated
    } else {
        Tee::None
    }
}

/// The kernel command line asks for the emulated SNP TEE (`podvm.tee=snp-emulated`). The command
/// line is part of the launch measurement, so a host that adds or drops it changes the
/// measurement the KBS checks.
pub fn emulated_snp_requested(root: &Path) -> bool {
    fs::read_to_string(root.join("proc/cmdline"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == "podvm.tee=snp-emulated")
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn memory_total_bytes(root: &Path) -> io::Result<u64> {
    let meminfo = fs::read_to_string(root.join("proc/meminfo"))?;
    parse_meminfo_total(&meminfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no MemTotal line in /proc/meminfo",
        )
    })
}

fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Number of online vCPUs, from `/sys/devices/system/cpu/online` (e.g. `0-3,5`).
pub fn online_vcpus(root: &Path) -> io::Result<u32> {
    let online = fs::read_to_string(root.join("sys/devices/system/cpu/online"))?;
    parse_cpu_list(online.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the online CPU list {online:?}"),
        )
    })
}

fn parse_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                count += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                count += 1;
            }
        }
    }
    Some(count)
}

/// `uname -r` and `uname -v`.
pub fn kernel_release_and_version() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.version().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

/// Time since boot (CLOCK_BOOTTIME), in microseconds.
pub fn uptime_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_parsed_in_bytes() {
        let meminfo = "MemTotal:         493476 kB\nMemFree:          466632 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(493476 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn tee_is_detected_from_device_nodes_and_cpu_flags() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::create_dir_all(root.path().join("dev")).unwrap();
        fs::write(root.path().join("proc/cpuinfo"), "flags\t: fpu vme sse\n").unwrap();
        assert_eq!(detect_tee(root.path()), Tee::None);
        fs::write(root.path().join("proc/cpuinfo"), "flags\t: fpu tdx_guest\n").unwrap();
        assert_eq!(detect_tee(root.path()), Tee::Tdx);
        fs::write(root.path().join("dev/sev-guest"), "").unwrap();
        assert_eq!(detect_tee(root.path()), Tee::Snp);
    }

    #[test]
    fn memory_and_vcpus_are_read_from_a_tree() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::create_dir_all(root.path().join("sys/devices/system/cpu")).unwrap();
        fs::write(root.path().join("proc/meminfo"), "MemTotal: 1024 kB\n").unwrap();
        fs::write(root.path().join("sys/devices/system/cpu/online"), "0-1\n").unwrap();
        assert_eq!(memory_total_bytes(root.path()).unwrap(), 1024 * 1024);
        assert_eq!(online_vcpus(root.path()).unwrap(), 2);
    }
}
