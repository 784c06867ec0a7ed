//! `StatsContainer`: a container's cgroup v2 files, parsed into typed values, then mapped onto
//! the agent API's `CgroupStats` (as Kata's agent fills it on cgroup v2).
//!
//! | file | field |
//! |---|---|
//! | `cpu.stat` `usage_usec`, `user_usec`, `system_usec` | `cpu_usage.total_usage`, `usage_in_usermode`, `usage_in_kernelmode` (ns) |
//! | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec` | `throttling_data.periods`, `throttled_periods`, `throttled_time` (ns) |
//! | `memory.current`, `memory.max`, `memory.peak` | `memory_stats.usage.usage`, `.limit`, `.max_usage` |
//! | `memory.swap.current`, `memory.swap.max` | `memory_stats.swap_usage.usage`, `.limit` |
//! | `memory.stat` | `memory_stats.stats` (every key), `memory_stats.cache` (`file`) |
//! | `pids.current`, `pids.max` | `pids_stats.current`, `.limit` |
//! | `io.stat` `rbytes`/`wbytes`, `rios`/`wios` | `blkio_stats.io_service_bytes_recursive`, `io_serviced_recursive` (`Read`/`Write`) |
//!
//! A limit of `max` is `u64::MAX`. `cpu.stat` is the one file every cgroup v2 directory has;
//! the others belong to a controller that may not be enabled (then the fields stay 0).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use podvm_protocols::agent::{
    BlkioStats, BlkioStatsEntry, CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats,
    PidsStats, ThrottlingData,
};

/// Why the statistics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {}: {why}", path.display())]
    Parse { path: PathBuf, why: String },
}

/// `cpu.stat` (the fields this agent reports; absent ones are 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// One line of `io.stat`: a device and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStatLine {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// A flat-keyed file (`cpu.stat`, `memory.stat`): `key value` lines, in order.
pub fn parse_flat_keyed(text: &str) -> Result<Vec<(String, u64)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(key), Some(value), None) => value
                    .parse::<u64>()
                    .map(|v| (key.to_string(), v))
                    .map_err(|_| format!("{key}: {value:?} is not a number")),
                _ => Err(format!("{line:?} is not \"key value\"")),
            }
        })
        .collect()
}

/// `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, String> {
    let mut stat = CpuStat::default();
    for (key, value) in parse_flat_keyed(text)? {
        let field = match key.as_str() {
            "usage_usec" => &mut stat.usage_usec,
            "user_usec" => &mut stat.user_usec,
            "system_usec" => &mut stat.system_usec,
            "nr_periods" => &mut stat.nr_periods,
            "nr_throttled" => &mut stat.nr_throttled,
            "throttled_usec" => &mut stat.throttled_usec,
            _ => continue,
        };
        *field = value;
    }
    Ok(stat)
}

/// A single-value file (`memory.current`, `pids.current`): a number.
pub fn parse_value(text: &str) -> Result<u64, String> {
    let value = text.trim();
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))
}

/// A limit (`memory.max`, `pids.max`): a number, or `max` (no limit) as `u64::MAX`.
pub fn parse_limit(text: &str) -> Result<u64, String> {
    match text.trim() {
        "max" => Ok(u64::MAX),
        other => parse_value(other),
    }
}

/// `io.stat`: `MAJ:MIN key=value ...` lines (keys other than the four reported are skipped).
pub fn parse_io_stat(text: &str) -> Result<Vec<IoStatLine>, String> {
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let device = words.next().unwrap_or_default();
        let (major, minor) = device
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| format!("{device:?} is not a MAJOR:MINOR device"))?;
        let mut entry = IoStatLine {
            major,
            minor,
            ..Default::default()
        };
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value"))?;
            let field = match key {
                "rbytes" => &mut entry.rbytes,
                "wbytes" => &mut entry.wbytes,
                "rios" => &mut entry.rios,
                "wios" => &mut entry.wios,
                _ => continue,
            };
            *field = value
                .parse()
                .map_err(|_| format!("{key}: {value:?} is not a number"))?;
        }
        lines.push(entry);
    }
    Ok(lines)
}

/// Reads `dir/name` and parses it; `None` if the file does not exist (and `optional`).
fn read<T>(
    dir: &Path,
    name: &str,
    optional: bool,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, StatsError> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StatsError::Read { path, source }),
    };
    parse(&text)
        .map(Some)
        .map_err(|why| StatsError::Parse { path, why })
}

const NS_PER_USEC: u64 = 1000;

/// The statistics of the cgroup v2 directory `dir`.
pub fn read_cgroup(dir: &Path) -> Result<CgroupStats, StatsError> {
    let cpu = read(dir, "cpu.stat", false, parse_cpu_stat)?.unwrap_or_default();
    let memory_current = read(dir, "memory.current", true, parse_value)?;
    let memory_max = read(dir, "memory.max", true, parse_limit)?;
    let memory_peak = read(dir, "memory.peak", true, parse_value)?;
    let memory_stat = read(dir, "memory.stat", true, parse_flat_keyed)?.unwrap_or_default();
    let swap_current = read(dir, "memory.swap.current", true, parse_value)?;
    let swap_max = read(dir, "memory.swap.max", true, parse_limit)?;
    let pids_current = read(dir, "pids.current", true, parse_value)?;
    let pids_max = read(dir, "pids.max", true, parse_limit)?;
    let io = read(dir, "io.stat", true, parse_io_stat)?.unwrap_or_default();

    let memory_stats: HashMap<String, u64> = memory_stat.into_iter().collect();
    let entry = |line: &IoStatLine, op: &str, value: u64| BlkioStatsEntry {
        major: line.major,
        minor: line.minor,
        op: op.to_string(),
        value,
        ..Default::default()
    };
    Ok(CgroupStats {
        cpu_stats: Some(CpuStats {
            cpu_usage: Some(CpuUsage {
                total_usage: cpu.usage_usec.saturating_mul(NS_PER_USEC),
                usage_in_usermode: cpu.user_usec.saturating_mul(NS_PER_USEC),
                usage_in_kernelmode: cpu.system_usec.saturating_mul(NS_PER_USEC),
                ..Default::default()
            })
            .into(),
            throttling_data: Some(ThrottlingData {
                periods: cpu.nr_periods,
                throttled_periods: cpu.nr_throttled,
                throttled_time: cpu.throttled_usec.saturating_mul(NS_PER_USEC),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory_stats: Some(MemoryStats {
            cache: memory_stats.get("file").copied().unwrap_or(0),
            usage: Some(MemoryData {
                usage: memory_current.unwrap_or(0),
                max_usage: memory_peak.unwrap_or(0),
                limit: memory_max.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            swap_usage: Some(MemoryData {
                usage: swap_current.unwrap_or(0),
                limit: swap_max.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            use_hierarchy: true,
            stats: memory_stats,
            ..Default::default()
        })
        .into(),
        pids_stats: Some(PidsStats {
            current: pids_current.unwrap_or(0),
            limit: pids_max.unwrap_or(0),
            ..Default::default()
        })
        .into(),
        blkio_stats: Some(BlkioStats {
            io_service_bytes_recursive: io
                .iter()
                .flat_map(|l| [entry(l, "Read", l.rbytes), entry(l, "Write", l.wbytes)])
                .collect(),
            io_serviced_recursive: io
                .iter()
                .flat_map(|l| [entry(l, "Read", l.rios), entry(l, "Write", l.wios)])
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Contents as a 6.x kernel writes them.
    const CPU_STAT: &str = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n\
        core_sched.force_idle_usec 0\nnr_periods 50\nnr_throttled 3\nthrottled_usec 7000\n\
        nr_bursts 0\nburst_usec 0\n";
    const MEMORY_STAT: &str = "anon 1048576\nfile 4096000\nkernel 262144\nkernel_stack 32768\n\
        pagetables 65536\nsock 0\nshmem 0\nfile_mapped 1228800\nfile_dirty 0\npgfault 1520\n\
        pgmajfault 3\nworkingset_refault_anon 0\n";
    const IO_STAT: &str = "254:0 rbytes=1458176 wbytes=8192 rios=178 wios=2 dbytes=0 dios=0\n\
        8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n";

    #[test]
    fn cpu_stat_is_typed() {
        assert_eq!(
            parse_cpu_stat(CPU_STAT).unwrap(),
            CpuStat {
                usage_usec: 123456,
                user_usec: 100000,
                system_usec: 23456,
                nr_periods: 50,
                nr_throttled: 3,
                throttled_usec: 7000,
            }
        );
        // Without the cpu controller only the first three lines exist.
        let base = parse_cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!((base.usage_usec, base.nr_periods), (5, 0));
        assert!(
            parse_cpu_stat("usage_usec lots\n")
                .unwrap_err()
                .contains("usage_usec")
        );
        assert!(parse_cpu_stat("usage_usec\n").is_err());
    }

    #[test]
    fn values_limits_and_flat_keyed_files() {
        assert_eq!(parse_value("8392704\n"), Ok(8392704));
        assert_eq!(parse_limit("max\n"), Ok(u64::MAX));
        assert_eq!(parse_limit("268435456\n"), Ok(268435456));
        assert!(parse_value("max\n").is_err());
        assert!(parse_limit("-1\n").is_err());
        let stat = parse_flat_keyed(MEMORY_STAT).unwrap();
        assert_eq!(stat.len(), 12);
        assert_eq!(stat[1], ("file".to_string(), 4096000));
    }

    #[test]
    fn io_stat_lines() {
        let lines = parse_io_stat(IO_STAT).unwrap();
        assert_eq!(
            lines,
            [
                IoStatLine {
                    major: 254,
                    minor: 0,
                    rbytes: 1458176,
                    wbytes: 8192,
                    rios: 178,
                    wios: 2
                },
                IoStatLine {
                    major: 8,
                    minor: 16,
                    rbytes: 4096,
                    wbytes: 0,
                    rios: 1,
                    wios: 0
                },
            ]
        );
        assert_eq!(parse_io_stat(""), Ok(vec![]));
        assert!(parse_io_stat("sda rbytes=1\n").is_err());
        assert!(parse_io_stat("8:0 rbytes\n").is_err());
    }

    #[test]
    fn a_cgroup_directory_maps_onto_cgroup_stats() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
        // Only cpu.stat is required.
        let e = read_cgroup(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with("read ") && e.to_string().contains("cpu.stat"));
        write("cpu.stat", CPU_STAT);
        let bare = read_cgroup(dir.path()).unwrap();
        assert_eq!(bare.cpu_stats.cpu_usage.total_usage, 123_456_000);
        assert_eq!(bare.memory_stats.usage.usage, 0);
        assert!(bare.blkio_stats.io_service_bytes_recursive.is_empty());

        write("memory.current", "8392704\n");
        write("memory.max", "max\n");
        write("memory.peak", "9437184\n");
        write("memory.stat", MEMORY_STAT);
        write("memory.swap.current", "0\n");
        write("memory.swap.max", "max\n");
        write("pids.current", "2\n");
        write("pids.max", "100\n");
        write("io.stat", IO_STAT);
        let s = read_cgroup(dir.path()).unwrap();
        let cpu = &s.cpu_stats;
        assert_eq!(cpu.cpu_usage.usage_in_usermode, 100_000_000);
        assert_eq!(cpu.cpu_usage.usage_in_kernelmode, 23_456_000);
        assert_eq!(
            (
                cpu.throttling_data.periods,
                cpu.throttling_data.throttled_periods,
                cpu.throttling_data.throttled_time
            ),
            (50, 3, 7_000_000)
        );
        let m = &s.memory_stats;
        assert_eq!(
            (m.usage.usage, m.usage.limit, m.usage.max_usage),
            (8392704, u64::MAX, 9437184)
        );
        assert_eq!((m.swap_usage.usage, m.swap_usage.limit), (0, u64::MAX));
        assert_eq!(m.cache, 4096000);
        assert_eq!(m.stats.len(), 12);
        assert_eq!(m.stats["pgmajfault"], 3);
        assert_eq!((s.pids_stats.current, s.pids_stats.limit), (2, 100));
        let b = &s.blkio_stats;
        let summary = |entries: &[BlkioStatsEntry]| {
            entries
                .iter()
                .map(|e| format!("{}:{} {} {}", e.major, e.minor, e.op, e.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            summary(&b.io_service_bytes_recursive),
            [
                "254:0 Read 1458176",
                "254:0 Write 8192",
                "8:16 Read 4096",
                "8:16 Write 0"
            ]
        );
        assert_eq!(
            summary(&b.io_serviced_recursive),
            [
                "254:0 Read 178",
                "254:0 Write 2",
                "8:16 Read 1",
                "8:16 Write 0"
            ]
        );

        // A file that is there but garbled is an error naming it.
        write("pids.current", "lots\n");
        let e = read_cgroup(dir.path()).unwrap_err().to_string();
        assert!(e.contains("pids.current") && e.contains("\"lots\""), "{e}");
    }
}
