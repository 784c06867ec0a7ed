//! `podvm bench boot`: launch → agent-ready of a pod VM, against the bare QEMU boot of the same
//! kernel (same machine, memory, vCPUs, command line) to a trivial marker init.

use serde::Serialize;

use crate::VmError;
use crate::accel::MARKER;
use crate::hypervisor::VmSpec;
use crate::hypervisor::qemu::QemuBackend;
use crate::vm::{Vm, VmConfig};

/// Min, median and max of a series, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty series.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Summary {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// The result of a boot benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BootBenchReport {
    pub runs: usize,
    pub accel: String,
    pub machine: String,
    /// Launch → agent-ready of `podvm`, per run.
    pub podvm_ms: Vec<f64>,
    /// Launch → marker line of the bare boot, per run.
    pub bare_ms: Vec<f64>,
    pub podvm: Summary,
    pub bare: Summary,
    /// podvm median / bare median.
    pub ratio: f64,
    /// podvm's own overhead, (podvm median − bare median) / bare median, in percent.
    pub overhead_percent: f64,
}

/// Runs `runs` pod VM boots and `runs` bare boots, alternating (after one unmeasured warm-up of
/// each), so that drift in host load affects both series alike.
pub async fn boot(
    config: &VmConfig,
    qemu: &QemuBackend,
    runs: usize,
) -> Result<BootBenchReport, VmError> {
    if runs == 0 {
        return Err(VmError::InvalidConfig("-n must be at least 1".into()));
    }
    let mut podvm_ms = Vec::with_capacity(runs);
    let mut bare_ms = Vec::with_capacity(runs);
    let mut bare_spec: Option<VmSpec> = None;
    let mut accel = String::new();
    for run in 0..=runs {
        let vm = Vm::start(config, qemu).await?;
        let ready = vm.timings().agent_ready_ms;
        let spec = bare_spec
            .get_or_insert_with(|| VmSpec {
                initrd: config.marker_initrd.clone(),
                ..vm.spec().clone()
            })
            .clone();
        accel = vm.accel().0.as_str().to_string();
        vm.stop().await;
        let bare = qemu
            .bare_boot(&spec, MARKER, config.boot_timeout)?
            .ok_or_else(|| {
                VmError::InvalidConfig(format!(
                    "the bare boot of {} did not reach its marker within {}s",
                    spec.kernel.display(),
                    config.boot_timeout.as_secs()
                ))
            })?;
        if run > 0 {
            podvm_ms.push(ready);
            bare_ms.push(bare.as_secs_f64() * 1000.0);
        }
    }
    let podvm = Summary::of(&podvm_ms).expect("runs > 0");
    let bare = Summary::of(&bare_ms).expect("runs > 0");
    Ok(BootBenchReport {
        runs,
        accel,
        machine: config.machine.as_str().to_string(),
        podvm_ms,
        bare_ms,
        podvm,
        bare,
        ratio: podvm.median / bare.median,
        overhead_percent: (podvm.median - bare.median) / bare.median * 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_even_and_empty_series() {
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Some(Summary {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            Summary::of(&[4.0, 1.0, 2.0, 3.0]),
            Some(Summary {
                min: 1.0,
                median: 2.5,
                max: 4.0
            })
        );
        assert_eq!(Summary::of(&[]), None);
    }
}
