//! One pod VM: validated configuration → state directory → hypervisor launch → the agent dials
//! in → ready; and the orderly stop (agent-requested power-off with a deadline, then kill).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::VmError;
use crate::accel::AccelChoice;
use crate::agent_client::AgentClient;
use crate::guest_image::GuestImage;
use crate::guest_image::validate::{self, KernelFormat};
use crate::guest_services::{EmulatedPspService, GuestServices, GuestServicesConfig};
use crate::hypervisor::{
    Accel, CONSOLE_LOG, Hypervisor, LaunchedVm, Machine, VSOCK_SOCKET, VmSpec,
};
use crate::launch::{self, TeeLaunch};
use crate::state::StateDir;
use crate::vsock::HybridVsock;
use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_measured_boot::refvals::ReferenceValues;
use podvm_policy::InitData;
use podvm_protocols::AGENT_PORT;

/// vCPUs the guest kernel supports (CONFIG_NR_CPUS of guest/kernel/config-6.12).
pub const MAX_VCPUS: u32 = 64;
/// The least memory the guest boots with.
pub const MIN_MEMORY_MIB: u32 = 128;

/// How to run a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The VM's id (state directory name); generated when `None`.
    pub id: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The marker initramfs used by the one-time KVM probe.
    pub marker_initrd: PathBuf,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    pub machine: Machine,
    pub accel: AccelChoice,
    /// How long the agent may take to become ready.
    pub boot_timeout: Duration,
    /// How long the guest may take to power off after `DestroySandbox`, before it is killed.
    pub shutdown_timeout: Duration,
    pub state_root: PathBuf,
    pub log_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The TEE and what its launch needs.
    pub tee: TeeLaunch,
    /// The pod's initdata, attached as a read-only disk and bound into the launch (HOST_DATA).
    pub initdata: Option<InitData>,
    /// `host:port` TCP addresses the guest may reach through the egress relay (KBS, registries).
    pub egress: Vec<String>,
}

impl VmConfig {
    /// Defaults: 1 vCPU, 512 MiB, microvm, the installed guest image, podvm's standard paths.
    pub fn with_guest_image(image: &GuestImage) -> Self {
        VmConfig {
            id: None,
            vcpus: 1,
            memory_mib: 512,
            kernel: image.vmlinux(),
            initrd: image.initramfs(),
            marker_initrd: image.marker_initramfs(),
            extra_cmdline: String::new(),
            machine: Machine::Microvm,
            accel: AccelChoice::Auto,
            boot_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            state_root: crate::paths::state_root(),
            log_dir: crate::paths::log_dir(),
            cache_dir: crate::paths::cache_dir(),
            tee: TeeLaunch::None,
            initdata: None,
            egress: Vec::new(),
        }
    }

    /// Checks everything that can be checked before a VM starts.
    pub fn validate(&self) -> Result<KernelFormat, VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::InvalidConfig(format!(
                "--vcpus {} is out of range: the guest supports 1 to {MAX_VCPUS} vCPUs",
                self.vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::InvalidConfig(format!(
                "--memory {} MiB is too small: the guest needs at least {MIN_MEMORY_MIB} MiB",
                self.memory_mib
            )));
        }
        if let Some(host_mib) = host_memory_mib()
            && u64::from(self.memory_mib) > host_mib
        {
            return Err(VmError::InvalidConfig(format!(
                "--memory {} MiB is more than this host has ({host_mib} MiB)",
                self.memory_mib
            )));
        }
        let format = validate::check_kernel(&self.kernel)?;
        validate::check_initrd(&self.initrd)?;
        let initrd_mib = std::fs::metadata(&self.initrd)
            .map(|m| m.len() >> 20)
            .unwrap_or(0);
        if initrd_mib * 2 + 64 > u64::from(self.memory_mib) {
            return Err(VmError::InvalidConfig(format!(
                "--memory {} MiB is too small for the {initrd_mib} MiB initrd {}: give at least {} MiB",
                self.memory_mib,
                self.initrd.display(),
                initrd_mib * 2 + 64
            )));
        }
        Ok(format)
    }
}

fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Milliseconds from the start of the launch to each boot milestone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootTimings {
    /// The vsock backend is listening.
    pub helpers_ready_ms: f64,
    /// The VMM process was started.
    pub vmm_spawned_ms: f64,
    /// The agent's connection arrived.
    pub agent_connected_ms: f64,
    /// The agent answered its first health check: launch → agent-ready.
    pub agent_ready_ms: f64,
}

/// How a VM stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// The guest powered off by itself after `DestroySandbox`.
    pub graceful: bool,
    pub stop_ms: f64,
    /// Why the guest was killed, if it was.
    pub forced_because: Option<String>,
}

/// A running VM whose agent answered. Dropping it kills the VM and removes its state.
pub struct Vm {
    // Field order is drop order: processes die before their state directory goes.
    launched: LaunchedVm,
    _services: GuestServices,
    state: StateDir,
    agent: AgentClient,
    reference_values: Option<ReferenceValues>,
    accel: Accel,
    accel_reason: String,
    spec: VmSpec,
    timings: BootTimings,
    shutdown_timeout: Duration,
}

/// The initdata disk image's name in the state directory.
const INITDATA_DISK: &str = "initdata.img";

/// Everything decided about a launch before anything starts ([`Vm::plan`]).
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub spec: VmSpec,
    pub accel_reason: String,
    /// The initdata digest bound into the launch (zero without initdata).
    pub host_data: [u8; 32],
    /// The launch measurement a TEE will report.
    pub measurement: Option<[u8; 48]>,
    /// The same, with its inputs, as `podvm measure --export` writes it.
    pub reference_values: Option<ReferenceValues>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A short random VM id.
pub fn new_vm_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the kernel's random source");
    format!("vm-{}", hex::encode(bytes))
}

impl Vm {
    /// Decides everything about a launch without starting anything: accelerator, kernel command
    /// line, and (for a TEE) the launch measurement and its reference values.
    pub fn plan(config: &VmConfig, hypervisor: &dyn Hypervisor) -> Result<LaunchPlan, VmError> {
        let kernel_format = config.validate()?;
        let (accel, accel_reason) = hypervisor.choose_accel(config, kernel_format);
        tracing::info!(accel = accel.as_str(), reason = %accel_reason, "accelerator");
        let mut extra = launch::cmdline_words(config.tee.mode(), config.initdata.is_some());
        if !config.extra_cmdline.trim().is_empty() {
            extra.push(config.extra_cmdline.trim().to_string());
        }
        let spec = VmSpec {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            kernel: config.kernel.clone(),
            kernel_format,
            initrd: config.initrd.clone(),
            cmdline: hypervisor.kernel_cmdline(
                config.machine,
                accel,
                &extra.join(" "),
                config.initdata.is_some(),
            ),
            machine: config.machine,
            accel,
            initdata_disk: None,
        };
        let host_data = config
            .initdata
            .as_ref()
            .map(|i| i.host_data())
            .unwrap_or([0; 32]);
        let reference = match &config.tee {
            TeeLaunch::None => None,
            TeeLaunch::SnpEmulated { firmware, .. } => {
                Some(launch::emulated_snp_reference(&spec, firmware, host_data)?)
            }
        };
        Ok(LaunchPlan {
            spec,
            accel_reason,
            host_data,
            measurement: reference.as_ref().map(|(m, _)| m.0),
            reference_values: reference.map(|(_, r)| r),
        })
    }

    /// Validates `config`, launches the VM with `hypervisor` and waits for its agent.
    pub async fn start(config: &VmConfig, hypervisor: &dyn Hypervisor) -> Result<Vm, VmError> {
        let plan = Self::plan(config, hypervisor)?;
        Self::start_planned(config, plan, hypervisor).await
    }

    /// Launches a [`LaunchPlan`] made by [`Vm::plan`] for the same `config`.
    pub async fn start_planned(
        config: &VmConfig,
        plan: LaunchPlan,
        hypervisor: &dyn Hypervisor,
    ) -> Result<Vm, VmError> {
        let LaunchPlan {
            mut spec,
            accel_reason,
            host_data,
            measurement,
            reference_values,
        } = plan;
        let accel = spec.accel;
        let started = Instant::now();
        let id = config.id.clone().unwrap_or_else(new_vm_id);
        let state = StateDir::create(&config.state_root, &id).map_err(|e| {
            VmError::State(format!(
                "cannot create the state directory {}/{id}: {e}",
                config.state_root.display()
            ))
        })?;
        if let Some(initdata) = &config.initdata {
            let disk = state.file(INITDATA_DISK);
            std::fs::write(&disk, initdata.to_device_image()).map_err(|e| {
                VmError::State(format!(
                    "cannot write the initdata disk {}: {e}",
                    disk.display()
                ))
            })?;
            spec.initdata_disk = Some(disk);
        }
        // The agent dials the host as soon as it is ready: listen before the VM exists.
        let vsock = HybridVsock::new(state.file(VSOCK_SOCKET));
        let listener = vsock.listen(AGENT_PORT)?;
        let emulated_psp = match (&config.tee, measurement) {
            (TeeLaunch::SnpEmulated { psp_dir, .. }, Some(measurement)) => {
                let psp = EmulatedPsp::open_or_create(psp_dir).map_err(|e| {
                    VmError::InvalidConfig(format!(
                        "the emulated PSP in {} is unusable: {e}",
                        psp_dir.display()
                    ))
                })?;
                Some(EmulatedPspService {
                    psp: std::sync::Arc::new(psp),
                    template: ReportRequest {
                        measurement,
                        host_data,
                        policy: launch::EMULATED_POLICY,
                        ..Default::default()
                    },
                })
            }
            _ => None,
        };
        let services = GuestServices::start(
            &GuestServicesConfig {
                emulated_psp,
                egress: config.egress.clone(),
            },
            &vsock,
        )?;
        let mut launched = hypervisor.launch(&spec, &state)?;
        let mut timings = BootTimings {
            helpers_ready_ms: ms(launched.helpers_ready),
            vmm_spawned_ms: ms(started.elapsed()),
            ..Default::default()
        };

        let boot = async {
            let stream = loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        break accepted.map_err(|e| VmError::State(format!("accepting the agent's connection failed: {e}")))?.0;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {
                        if let Some((what, status)) = launched.exited().map_err(|e| VmError::State(e.to_string()))? {
                            let detail = crate::hypervisor::qemu::last_line(&launched.vmm_log);
                            return Err(VmError::ProcessExited { what, status: status.to_string(), detail });
                        }
                    }
                }
            };
            timings.agent_connected_ms = ms(started.elapsed());
            let agent = AgentClient::new(stream);
            agent.check().await?;
            timings.agent_ready_ms = ms(started.elapsed());
            Ok(agent)
        };
        let agent = match tokio::time::timeout(config.boot_timeout, boot).await {
            Ok(Ok(agent)) => agent,
            Ok(Err(e)) => return Err(keep_console(&state, &config.log_dir, e)),
            Err(_) => {
                let e = VmError::AgentTimeout {
                    timeout: config.boot_timeout,
                    console: String::new(),
                };
                return Err(keep_console(&state, &config.log_dir, e));
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(
            HybridVsock::new(state.file(VSOCK_SOCKET)).listener_path(AGENT_PORT),
        );
        Ok(Vm {
            launched,
            _services: services,
            reference_values,
            state,
            agent,
            accel,
            accel_reason,
            spec,
            timings,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn id(&self) -> &str {
        self.state.id()
    }
    /// Copies the guest console into the log directory (before a stop removes the state
    /// directory) and returns where it went.
    pub fn keep_console(&self, log_dir: &Path) -> Option<PathBuf> {
        let kept = log_dir.join(format!("{}.console.log", self.id()));
        std::fs::create_dir_all(log_dir).ok()?;
        std::fs::copy(self.state.file(CONSOLE_LOG), &kept).ok()?;
        Some(kept)
    }

    /// The reference values of this launch (a TEE launch only): what `podvm measure` prints.
    pub fn reference_values(&self) -> Option<&ReferenceValues> {
        self.reference_values.as_ref()
    }
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }
    pub fn timings(&self) -> &BootTimings {
        &self.timings
    }
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }
    pub fn accel(&self) -> (Accel, &str) {
        (self.accel, &self.accel_reason)
    }
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
    /// The host processes of this VM (VMM first).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.launched.vmm.pid())
            .chain(self.launched.helpers.iter().map(|h| h.pid()))
            .collect()
    }
    /// The host side of the VM's vsock device (for further connections with `CONNECT`).
    pub fn vsock(&self) -> &HybridVsock {
        &self.launched.vsock
    }

    /// Asks the agent to power the guest off, waits up to the shutdown timeout, then kills what
    /// is left and removes the state directory.
    pub async fn stop(mut self) -> StopReport {
        let started = Instant::now();
        let mut forced_because = None;
        if let Err(e) = self.agent.destroy_sandbox().await {
            forced_because = Some(e.to_string());
        } else {
            loop {
                match self.launched.vmm.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if started.elapsed() < self.shutdown_timeout => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Ok(None) => {
                        forced_because = Some(format!(
                            "the guest did not power off within {}s",
                            self.shutdown_timeout.as_secs()
                        ));
                        break;
                    }
                    Err(e) => {
                        forced_because = Some(format!("cannot wait for the VMM: {e}"));
                        break;
                    }
                }
            }
        }
        let _ = self.launched.vmm.kill();
        let stop_ms = ms(started.elapsed());
        drop(self);
        StopReport {
            graceful: forced_because.is_none(),
            stop_ms,
            forced_because,
        }
    }
}

/// Copies the console log out of the state directory (which is about to go) and names it in the
/// error.
fn keep_console(state: &StateDir, log_dir: &Path, error: VmError) -> VmError {
    let console = state.file(CONSOLE_LOG);
    let kept = log_dir.join(format!("{}.console.log", state.id()));
    let where_ =
        match std::fs::create_dir_all(log_dir).and_then(|()| std::fs::copy(&console, &kept)) {
            Ok(_) => format!(
                "guest console: {} (last line: {:?})",
                kept.display(),
                crate::hypervisor::qemu::last_line(&kept)
            ),
            Err(_) => "no guest console output".to_string(),
        };
    match error {
        VmError::AgentTimeout { timeout, .. } => VmError::AgentTimeout {
            timeout,
            console: where_,
        },
        VmError::ProcessExited {
            what,
            status,
            detail,
        } => VmError::ProcessExited {
            what,
            status,
            detail: format!("{detail}; {where_}"),
        },
        other => other,
    }
}
