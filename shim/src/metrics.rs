//! The agent's `StatsContainerResponse` (Kata's cgroup stats, read from the container's cgroup in
//! the guest) → containerd's `io.containerd.cgroups.v1.Metrics`, the type `ctr task metrics` and
//! the CRI plugin decode (Kata's shim answers with the same type).

use containerd_shim::protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics,
    PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use podvm_protocols::agent::{BlkioStatsEntry, MemoryData, StatsContainerResponse};

/// The type URL containerd expects for cgroup v1 metrics.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

fn memory_entry(d: &MemoryData) -> MemoryEntry {
    MemoryEntry {
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.failcnt,
        limit: d.limit,
        ..Default::default()
    }
}

fn blkio(entries: &[BlkioStatsEntry]) -> Vec<BlkIOEntry> {
    entries
        .iter()
        .map(|e| BlkIOEntry {
            op: e.op.clone(),
            major: e.major,
            minor: e.minor,
            value: e.value,
            ..Default::default()
        })
        .collect()
}

/// Maps the agent's stats; memory.stat keys of cgroup v2 fill the v1 fields they correspond to.
pub fn from_agent(stats: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    let Some(cg) = stats.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(cpu) = cg.cpu_stats.as_ref() {
        let mut out = CPUStat::new();
        if let Some(u) = cpu.cpu_usage.as_ref() {
            out.usage = Some(CPUUsage {
                total: u.total_usage,
                kernel: u.usage_in_kernelmode,
                user: u.usage_in_usermode,
                per_cpu: u.percpu_usage.clone(),
                ..Default::default()
            })
            .into();
        }
        if let Some(t) = cpu.throttling_data.as_ref() {
            out.throttling = Some(Throttle {
                periods: t.periods,
                throttled_periods: t.throttled_periods,
                throttled_time: t.throttled_time,
                ..Default::default()
            })
            .into();
        }
        m.cpu = Some(out).into();
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let stat = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
        let mut out = MemoryStat {
            cache: mem.cache,
            rss: stat("anon"),
            rss_huge: stat("anon_thp"),
            mapped_file: stat("file_mapped"),
            dirty: stat("file_dirty"),
            writeback: stat("file_writeback"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            ..Default::default()
        };
        if let Some(u) = mem.usage.as_ref() {
            out.usage = Some(memory_entry(u)).into();
            out.hierarchical_memory_limit = u.limit;
        }
        if let Some(s) = mem.swap_usage.as_ref() {
            out.swap = Some(memory_entry(s)).into();
        }
        if let Some(k) = mem.kernel_usage.as_ref() {
            out.kernel = Some(memory_entry(k)).into();
        }
        m.memory = Some(out).into();
    }
    if let Some(p) = cg.pids_stats.as_ref() {
        m.pids = Some(PidsStat {
            current: p.current,
            // The agent reports cgroup v2's "max" as u64::MAX; containerd (as runc) says 0.
            limit: if p.limit == u64::MAX { 0 } else { p.limit },
            ..Default::default()
        })
        .into();
    }
    if let Some(b) = cg.blkio_stats.as_ref() {
        m.blkio = Some(BlkIOStat {
            io_service_bytes_recursive: blkio(&b.io_service_bytes_recursive),
            io_serviced_recursive: blkio(&b.io_serviced_recursive),
            io_queued_recursive: blkio(&b.io_queued_recursive),
            io_service_time_recursive: blkio(&b.io_service_time_recursive),
            io_wait_time_recursive: blkio(&b.io_wait_time_recursive),
            io_merged_recursive: blkio(&b.io_merged_recursive),
            io_time_recursive: blkio(&b.io_time_recursive),
            sectors_recursive: blkio(&b.sectors_recursive),
            ..Default::default()
        })
        .into();
    }
    m.hugetlb = cg
        .hugetlb_stats
        .iter()
        .map(|(size, h)| HugetlbStat {
            usage: h.usage,
            max: h.max_usage,
            failcnt: h.failcnt,
            pagesize: size.clone(),
            ..Default::default()
        })
        .collect();
    m
}

/// The metrics as the `Any` a `Stats` reply carries.
pub fn to_any(metrics: &Metrics) -> Any {
    Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics.write_to_bytes().expect("in-memory encoding"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_protocols::agent::{CgroupStats, CpuStats, CpuUsage, MemoryStats, PidsStats};

    #[test]
    fn agent_stats_map_to_v1_metrics_and_round_trip() {
        let mut mem = MemoryStats {
            cache: 4096,
            usage: Some(MemoryData {
                usage: 1 << 20,
                max_usage: 2 << 20,
                limit: 64 << 20,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        mem.stats.insert("anon".into(), 12288);
        mem.stats.insert("pgfault".into(), 77);
        let stats = StatsContainerResponse {
            cgroup_stats: Some(CgroupStats {
                cpu_stats: Some(CpuStats {
                    cpu_usage: Some(CpuUsage {
                        total_usage: 5_000_000,
                        usage_in_kernelmode: 1_000_000,
                        usage_in_usermode: 4_000_000,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                })
                .into(),
                memory_stats: Some(mem).into(),
                pids_stats: Some(PidsStats {
                    current: 3,
                    limit: 100,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let m = from_agent(&stats);
        assert_eq!(m.cpu.usage.total, 5_000_000);
        assert_eq!(m.cpu.usage.user, 4_000_000);
        assert_eq!(m.memory.usage.usage, 1 << 20);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.memory.rss, 12288);
        assert_eq!(m.memory.pg_fault, 77);
        assert_eq!((m.pids.current, m.pids.limit), (3, 100));
        let any = to_any(&m);
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }

    #[test]
    fn no_cgroup_stats_give_empty_metrics() {
        assert_eq!(
            from_agent(&StatsContainerResponse::default()),
            Metrics::new()
        );
    }
}
