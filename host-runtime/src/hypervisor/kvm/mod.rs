//! podvm's built-in microVM monitor on KVM (first cut): guest memory laid out like a PC, a vCPU
//! entered directly in 64-bit mode (or 32-bit for a PVH kernel), COM1 and the i8042 reset line on
//! the port-I/O bus, and a vCPU thread that always ends — by a guest reset, a clear error, or the
//! caller's deadline. It runs freestanding payloads ([`test_guest`]) or loads Linux ([`loader`]:
//! bzImage or ELF/PVH, zero page or `hvm_start_info`, e820, initrd, MP table); see `README.md`
//! next to this file for what is verified where.
//!
//! ```no_run
//! use std::time::Duration;
//! use podvm_host_runtime::hypervisor::kvm::{KvmVm, cpu::PAYLOAD_START, test_guest};
//!
//! let report = KvmVm::builder()
//!     .memory_mib(16)
//!     .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
//!     .serial(Box::new(std::io::stdout()))
//!     .build()?
//!     .run(Duration::from_secs(5))?;
//! println!("{report:?}");
//! # Ok::<(), podvm_host_runtime::hypervisor::kvm::KvmVmError>(())
//! ```

pub mod bench_guest;
pub mod bus;
pub mod cpu;
pub mod cpuid;
pub mod e820;
pub mod error;
pub mod launch;
pub mod loader;
pub mod memory;
pub mod mmio;
pub mod mptable;
pub mod msrs;
pub mod platform;
pub mod privileges;
pub mod seccomp;
pub mod serial;
pub mod test_guest;
pub mod test_image;
pub mod vcpu;
pub mod virtio;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

pub use error::{KvmVmError, Result};
pub use loader::{BootMode, LinuxBoot, LinuxSpec};

use bus::PioBus;
use cpu::BootEntry;
use error::ioctl;
use launch::ConfidentialLaunch;
use mmio::MmioBus;
use seccomp::ThreadFilters;
pub use seccomp::{Refusal, SeccompLevel};
use serial::{FirstByteWriter, SerialDevice, SerialOut};
use vcpu::VcpuStop;
use virtio::VirtioDevice;
use virtio::mmio::{MmioTransport, reg};
use virtio::vsock::VsockDevice;

/// The KVM device opened unless [`KvmVmBuilder::kvm_device`] says otherwise.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// How often the controller re-checks the stop flag and deadline, and re-kicks a vCPU that is
/// being stopped.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long a vCPU thread may take to leave `KVM_RUN` once kicked before it is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How a VM ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset through the i8042 (port 0x64 ← 0xfe).
    Reset,
    /// [`StopHandle::stop`] was called.
    Stopped,
}

/// What [`KvmVm::run`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    pub reason: ExitReason,
    /// From the start of [`KvmVmBuilder::build`] (before `KVM_CREATE_VM`) to the first byte the
    /// guest wrote to the serial port: the first observable effect of guest code. `None` if it
    /// wrote nothing.
    pub first_output: Option<Duration>,
    /// From the start of `build` to the vCPU thread's end.
    pub total: Duration,
}

/// Stops a running [`KvmVm`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the VM to stop; [`KvmVm::run`] then returns [`ExitReason::Stopped`].
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a VM runs.
enum Guest {
    /// Freestanding 64-bit code at an address.
    Payload(Vec<u8>, GuestAddress),
    /// A Linux kernel ([`loader`]).
    Linux(LinuxSpec),
}

/// Configures a [`KvmVm`].
pub struct KvmVmBuilder {
    kvm_device: PathBuf,
    memory_mib: u64,
    guest: Option<Guest>,
    serial: Option<SerialOut>,
    vsock: Option<(u64, PathBuf)>,
    disks: Vec<(PathBuf, bool)>,
    vcpus: u8,
    confidential: Option<ConfidentialLaunch>,
    seccomp: SeccompLevel,
    refusal: Refusal,
    run_as: Option<(u32, u32)>,
}

impl KvmVmBuilder {
    /// The KVM device node (default [`KVM_DEVICE`]).
    pub fn kvm_device(mut self, path: impl Into<PathBuf>) -> Self {
        self.kvm_device = path.into();
        self
    }

    /// Guest memory in MiB (default [`DEFAULT_MEMORY_MIB`]); above 3 GiB it continues at 4 GiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Freestanding 64-bit code, loaded at `load_addr` and entered there in long mode.
    /// Replaces an earlier [`KvmVmBuilder::linux`].
    pub fn payload(mut self, bytes: Vec<u8>, load_addr: GuestAddress) -> Self {
        self.guest = Some(Guest::Payload(bytes, load_addr));
        self
    }

    /// A Linux kernel (bzImage or ELF vmlinux), initrd and command line, loaded by
    /// [`loader::load_linux`] with an MP table ([`mptable`]) and entered by the 64-bit boot
    /// protocol or PVH. Replaces an earlier [`KvmVmBuilder::payload`].
    pub fn linux(mut self, spec: LinuxSpec) -> Self {
        self.guest = Some(Guest::Linux(spec));
        self
    }

    /// Where COM1's output goes (default: discarded).
    pub fn serial(mut self, out: SerialOut) -> Self {
        self.serial = Some(out);
        self
    }

    /// A virtio-vsock device (the first virtio-mmio device: [`platform::VirtioMmioSlot`] 0,
    /// `0xd0000000`, IRQ 5) for guest CID `cid`, whose host side is the hybrid Unix socket at
    /// `uds_path` (see [`virtio::vsock`]); the socket is bound by [`Self::build`] and removed when
    /// the VM ends.
    pub fn vsock(mut self, cid: u64, uds_path: impl Into<PathBuf>) -> Self {
        self.vsock = Some((cid, uds_path.into()));
        self
    }

    /// The number of vCPUs (default 1, at most [`MAX_VCPUS`]). vCPU 0 starts at the entry; the
    /// others wait, as on a PC, for the guest to start them with INIT/SIPI (in-kernel LAPIC).
    pub fn vcpus(mut self, count: u8) -> Self {
        self.vcpus = count;
        self
    }

    /// A virtio-blk disk over the host file `path` (read-only if `read_only`). Disks follow the
    /// vsock device in the virtio-mmio slots, in the order given.
    pub fn disk(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.disks.push((path.into(), read_only));
        self
    }

    /// Launches a confidential guest instead of a payload: `build` creates a `KVM_X86_SNP_VM` /
    /// `KVM_X86_TDX_VM`, loads the firmware and runs the launch sequence
    /// ([`launch::snp::launch`] / [`launch::tdx::launch`]) through [`launch::KvmLaunchOps`].
    /// On a host without SEV-SNP / TDX in KVM, `build` fails at once naming what is missing.
    pub fn confidential(mut self, launch: ConfidentialLaunch) -> Self {
        self.confidential = Some(launch);
        self
    }

    /// Confines the monitor's threads with seccomp (default [`SeccompLevel::Off`]). With
    /// [`SeccompLevel::Strict`], [`KvmVm::run`] confines the vCPU thread when it starts and the
    /// vsock device thread confines itself when the driver activates it; the caller's thread is
    /// only confined by [`KvmVm::run_confined`] (see the README's "Hardening" section for the
    /// lists). Not supported with [`Self::confidential`] yet.
    pub fn seccomp(mut self, level: SeccompLevel) -> Self {
        self.seccomp = level;
        self
    }

    /// What a syscall outside a thread's allow-list does (default [`Refusal::KillProcess`];
    /// [`Refusal::Trap`] prints the syscall number and thread and exits with
    /// [`seccomp::SECCOMP_TRAP_EXIT_CODE`]).
    pub fn seccomp_refusal(mut self, refusal: Refusal) -> Self {
        self.refusal = refusal;
        self
    }

    /// Drops the whole process to `uid`/`gid` at the end of [`Self::build`] with
    /// [`privileges::drop_to`] (supplementary groups cleared, `no_new_privs` set, regaining root
    /// checked to fail). By then the KVM device is open, the VM, its memory slots, vCPU,
    /// irqchip, irqfds and ioeventfds exist, guest memory is mapped and loaded, and the vsock
    /// socket is bound (it is unlinked at the end only if the new uid may). Needs root.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.run_as = Some((uid, gid));
        self
    }

    /// Creates the VM and its vCPU, loads the payload or kernel and sets up its entry (or, with
    /// [`Self::confidential`], runs the confidential launch), then drops privileges if
    /// [`Self::run_as`] says so.
    pub fn build(self) -> Result<KvmVm> {
        let run_as = self.run_as;
        let vm = if self.confidential.is_some() {
            self.build_confidential()?
        } else {
            self.build_plain()?
        };
        if let Some((uid, gid)) = run_as {
            privileges::drop_to(uid, gid)?;
        }
        Ok(vm)
    }

    fn build_plain(self) -> Result<KvmVm> {
        let created = Instant::now();
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(KvmVmError::Config(format!(
                "{} vCPUs requested; use 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        let filters = match self.seccomp {
            SeccompLevel::Off => None,
            SeccompLevel::Strict => Some(ThreadFilters::new(self.refusal)?),
        };
        let guest = self.guest.ok_or_else(|| {
            KvmVmError::Config("no payload or kernel given (use .payload or .linux)".into())
        })?;
        if let Guest::Payload(payload, load_addr) = &guest {
            check_payload_placement(*load_addr, payload.len(), self.memory_mib)?;
        }

        // Declared before the VM so that, on an early return, the VM fd closes first.
        let memory = memory::allocate(self.memory_mib)?;
        let kvm = open_kvm(&self.kvm_device)?;
        let vm = kvm
            .create_vm()
            .map_err(|source| KvmVmError::KvmUnavailable {
                what: "KVM_CREATE_VM".into(),
                source,
            })?;
        memory::register(&vm, &memory)?;
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        if let Some((cid, path)) = &self.vsock {
            let filter = filters.as_ref().map(|f| f.vsock.clone());
            devices.push(Box::new(VsockDevice::with_filter(*cid, path, filter)?));
        }
        for (path, read_only) in &self.disks {
            let filter = filters.as_ref().map(|f| f.block.clone());
            devices.push(Box::new(virtio::block::BlockDevice::with_filter(
                path, *read_only, filter,
            )?));
        }
        // The in-kernel interrupt controllers (PIC, IOAPIC, a LAPIC per vCPU) whenever anything
        // needs interrupts: devices, more than one vCPU (APs wait for SIPI in the LAPIC), Linux.
        // A single-vCPU payload without devices gets none, so its HLT still exits.
        // Three pages for the TSS VMX needs to run real-mode code (APs after SIPI) without
        // unrestricted guest; at Firecracker's address, in the MMIO hole below the firmware.
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        let is_linux = matches!(guest, Guest::Linux(_));
        let irqchip = !devices.is_empty() || self.vcpus > 1 || is_linux;
        if irqchip {
            vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        }
        if is_linux {
            // The i8254 timer Linux calibrates against (the speaker port is a dummy).
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }
        let mmio = attach_virtio_mmio(&vm, &memory, devices)?;
        let entry = match &guest {
            Guest::Payload(payload, load_addr) => {
                memory.write_slice(payload, *load_addr).map_err(|e| {
                    KvmVmError::GuestMemoryWrite {
                        what: "payload",
                        addr: load_addr.0,
                        reason: e.to_string(),
                    }
                })?;
                BootMode::Long64 {
                    zero_page: cpu::ZERO_PAGE_START,
                }
                .at(*load_addr)
            }
            Guest::Linux(spec) => {
                let boot = loader::load_linux(&memory, spec)?;
                mptable::write(&memory, self.vcpus)?;
                boot.mode.at(boot.entry)
            }
        };

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(self.vcpus));
        for index in 0..self.vcpus {
            let vcpu =
                vm.create_vcpu(u64::from(index))
                    .map_err(|source| KvmVmError::KvmUnavailable {
                        what: format!("KVM_CREATE_VCPU {index}"),
                        source,
                    })?;
            let mut cpuid = supported_cpuid.clone();
            cpuid::set_topology(&mut cpuid, index, self.vcpus);
            vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
            msrs::set_boot_msrs(&vcpu)?;
            // Only the bootstrap processor gets an entry; with the in-kernel LAPIC, KVM keeps
            // the others waiting for INIT/SIPI from the guest (as a PC's firmware leaves them).
            if index == 0 {
                match entry {
                    Entry::Long64(entry) => cpu::setup_long_mode(&vcpu, &memory, entry)?,
                    Entry::Pvh32 { entry, start_info } => {
                        cpu::setup_protected_mode_32(&vcpu, &memory, entry, start_info)?
                    }
                }
            }
            vcpus.push(vcpu);
        }

        let writer = FirstByteWriter::new(self.serial.unwrap_or_else(|| Box::new(std::io::sink())));
        let first_byte = writer.first_byte();
        let serial = SerialDevice::new(writer)?;
        if irqchip {
            vm.register_irqfd(serial.interrupt_eventfd(), u32::from(platform::COM1_IRQ))
                .map_err(ioctl("KVM_IRQFD"))?;
        }
        let bus = PioBus::new(serial);
        vcpu::install_kick_handler()?;
        Ok(KvmVm {
            vcpus,
            bus,
            mmio,
            vm,
            _guest_memfds: Vec::new(),
            memory,
            _kvm: kvm,
            stop: Arc::new(AtomicBool::new(false)),
            first_byte,
            created,
            filters,
        })
    }

    fn build_confidential(mut self) -> Result<KvmVm> {
        let created = Instant::now();
        let Some(conf) = self.confidential.take() else {
            return Err(KvmVmError::Config("no confidential launch given".into()));
        };
        if self.guest.is_some() {
            return Err(KvmVmError::Config(
                "a confidential guest boots its firmware; give no payload".into(),
            ));
        }
        if self.seccomp != SeccompLevel::Off {
            return Err(KvmVmError::Config(
                "seccomp filters do not cover confidential launches yet; use SeccompLevel::Off"
                    .into(),
            ));
        }
        let kvm = open_kvm(&self.kvm_device)?;
        conf.check_host(
            launch::supported_vm_types(&kvm),
            &self.kvm_device.display().to_string(),
        )?;
        let fw_len = match &conf {
            ConfidentialLaunch::Snp(s) => s.plan.inputs().firmware.data().len(),
            ConfidentialLaunch::Tdx(t) => t.firmware.data().len(),
        };
        let memory = memory::allocate_with_firmware(self.memory_mib, fw_len)?;
        let vm = kvm
            .create_vm_with_type(conf.vm_type() as u64)
            .map_err(|source| KvmVmError::KvmUnavailable {
                what: format!("KVM_CREATE_VM({})", conf.vm_type_name()),
                source,
            })?;
        let mut ops = match &conf {
            ConfidentialLaunch::Snp(_) => {
                launch::KvmLaunchOps::snp(vm, Path::new(launch::SEV_DEVICE)).map_err(|e| {
                    launch::LaunchError::Unsupported(format!(
                        "SEV-SNP launch needs {}: {e}",
                        launch::SEV_DEVICE
                    ))
                })?
            }
            ConfidentialLaunch::Tdx(_) => launch::KvmLaunchOps::tdx(vm)
                .map_err(|e| launch::LaunchError::Unsupported(format!("TDX launch: {e}")))?,
        };
        match &conf {
            ConfidentialLaunch::Snp(s) => {
                launch::snp::launch(&s.plan, &s.boot, &s.options, &memory, &mut ops)?;
            }
            ConfidentialLaunch::Tdx(t) => {
                launch::tdx::launch(&t.firmware, &t.init_vm, t.vcpus, &memory, &mut ops)?;
            }
        }
        let (vm, vcpus, guest_memfds) = ops.into_parts();
        if vcpus.is_empty() {
            return Err(KvmVmError::Config("the launch created no vCPU".into()));
        }
        let writer = FirstByteWriter::new(self.serial.unwrap_or_else(|| Box::new(std::io::sink())));
        let first_byte = writer.first_byte();
        let bus = PioBus::new(SerialDevice::new(writer)?);
        vcpu::install_kick_handler()?;
        Ok(KvmVm {
            vcpus,
            bus,
            mmio: MmioBus::default(),
            vm,
            _guest_memfds: guest_memfds,
            memory,
            _kvm: kvm,
            stop: Arc::new(AtomicBool::new(false)),
            first_byte,
            created,
            filters: None,
        })
    }
}

/// Puts each device behind a virtio-mmio transport in the MMIO hole at its
/// [`platform::VirtioMmioSlot`] (device `i` at `0xd0000000 + i × 4 KiB`, IRQ `5 + i` raised
/// through an irqfd), each queue's `QueueNotify` write an ioeventfd.
fn attach_virtio_mmio(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<MmioBus> {
    let mut bus = MmioBus::default();
    for (i, device) in devices.into_iter().enumerate() {
        let slot = platform::VirtioMmioSlot::new(i)?;
        let (base, gsi) = (slot.addr.0, u32::from(slot.irq));
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| KvmVmError::Device {
            device: "virtio-mmio",
            reason: format!("eventfd: {e}"),
        })?;
        vm.register_irqfd(&irqfd, gsi).map_err(ioctl("KVM_IRQFD"))?;
        let transport = MmioTransport::new(device, memory.clone(), Arc::new(irqfd))?;
        for q in 0..transport.queue_count() {
            if let Some(evt) = transport.queue_notify_eventfd(q) {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(ioctl("KVM_IOEVENTFD"))?;
            }
        }
        bus.insert(base, slot.size, Arc::new(std::sync::Mutex::new(transport)))?;
    }
    Ok(bus)
}

/// `KVM_SET_TSS_ADDR`'s three pages.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// The most vCPUs a VM gets: the MP table's APIC ids (the IOAPIC's id follows the last vCPU's)
/// and what a pod asks for in practice.
pub const MAX_VCPUS: u8 = 64;

/// The register state a vCPU starts in.
enum Entry {
    Long64(BootEntry),
    Pvh32 {
        entry: GuestAddress,
        start_info: GuestAddress,
    },
}

impl BootMode {
    fn at(self, rip: GuestAddress) -> Entry {
        match self {
            BootMode::Long64 { zero_page } => Entry::Long64(BootEntry {
                rsi: zero_page,
                ..BootEntry::at(rip)
            }),
            BootMode::Pvh32 { start_info } => Entry::Pvh32 {
                entry: rip,
                start_info,
            },
        }
    }
}

fn open_kvm(path: &Path) -> Result<Kvm> {
    let unavailable = |source| KvmVmError::KvmUnavailable {
        what: format!("open {}", path.display()),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| unavailable(kvm_ioctls::Error::new(libc::EINVAL)))?;
    Kvm::new_with_path(c_path).map_err(unavailable)
}

/// The payload must sit in low RAM, above the boot structures, inside the identity map.
fn check_payload_placement(load_addr: GuestAddress, len: usize, memory_mib: u64) -> Result<()> {
    let ram = memory::ram_ranges(memory_mib)?;
    let low_end = ram[0].0.0 + ram[0].1 as u64;
    let end = load_addr.0.checked_add(len as u64);
    let ok = len > 0
        && load_addr >= cpu::PAYLOAD_START
        && end.is_some_and(|end| end <= low_end && end <= cpu::PD_COUNT << 30);
    if ok {
        Ok(())
    } else {
        Err(KvmVmError::Config(format!(
            "payload of {len} bytes at {:#x} must lie in {:#x}..{low_end:#x}",
            load_addr.0,
            cpu::PAYLOAD_START.0
        )))
    }
}

/// A VM ready to run: one vCPU in 64-bit mode at the payload's entry.
pub struct KvmVm {
    // Field order is drop order: the vCPU and VM file descriptors close before the guest memory
    // they point into is unmapped.
    /// vCPU 0 (the bootstrap processor) first.
    vcpus: Vec<VcpuFd>,
    bus: PioBus,
    /// The virtio-mmio devices; dropping it stops their threads.
    mmio: MmioBus,
    vm: VmFd,
    /// Private memory of a confidential guest (empty otherwise); closed after the VM.
    _guest_memfds: Vec<std::os::fd::OwnedFd>,
    memory: GuestMemoryMmap,
    _kvm: Kvm,
    stop: Arc<AtomicBool>,
    first_byte: Arc<OnceLock<Instant>>,
    created: Instant,
    /// The compiled filters with [`SeccompLevel::Strict`].
    filters: Option<ThreadFilters>,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// What the vCPU threads share; freed when the last of them (and the controller) lets go, in
/// field order: devices, then the VM fd, then the guest memory it points into.
struct SharedVm {
    bus: std::sync::Mutex<PioBus>,
    mmio: MmioBus,
    _vm: VmFd,
    _guest_memfds: Vec<std::os::fd::OwnedFd>,
    _memory: GuestMemoryMmap,
    _kvm: Kvm,
}

impl KvmVm {
    pub fn builder() -> KvmVmBuilder {
        KvmVmBuilder {
            kvm_device: PathBuf::from(KVM_DEVICE),
            memory_mib: DEFAULT_MEMORY_MIB,
            guest: None,
            serial: None,
            vsock: None,
            disks: Vec::new(),
            vcpus: 1,
            confidential: None,
            seccomp: SeccompLevel::Off,
            refusal: Refusal::KillProcess,
            run_as: None,
        }
    }

    /// A handle that stops this VM while [`KvmVm::run`] runs it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Runs the vCPU on a thread of its own until the guest resets (`Ok`), fails (`Err` naming
    /// the exit and RIP), the stop handle is used (`Ok`, [`ExitReason::Stopped`]) or `deadline`
    /// (counted from now) passes ([`KvmVmError::DeadlineExceeded`]). The VM is stopped and its
    /// thread joined before this returns, unless the thread does not leave `KVM_RUN` within a
    /// grace period, in which case it is abandoned (it still owns the guest memory, so nothing
    /// is unmapped under it).
    pub fn run(self, deadline: Duration) -> Result<ExitReport> {
        self.run_inner(deadline, false)
    }

    /// [`Self::run`], and confines the **calling thread** with the controller filter right
    /// after spawning the vCPU thread (needs [`SeccompLevel::Strict`]). Irreversible: the
    /// calling thread stays confined after this returns, so call it from a thread (or process)
    /// that only waits for the VM — `podvm vmm` — and afterwards does no more than the
    /// controller list allows (allocate, write to open fds, lock, exit). Threads it spawns later
    /// inherit the filter.
    pub fn run_confined(self, deadline: Duration) -> Result<ExitReport> {
        if self.filters.is_none() {
            return Err(KvmVmError::Config(
                "run_confined needs .seccomp(SeccompLevel::Strict) on the builder".into(),
            ));
        }
        self.run_inner(deadline, true)
    }

    fn run_inner(self, deadline: Duration, confine_caller: bool) -> Result<ExitReport> {
        let KvmVm {
            vcpus,
            bus,
            mmio,
            vm,
            _guest_memfds,
            memory,
            _kvm,
            stop,
            first_byte,
            created,
            filters,
        } = self;
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(SharedVm {
            bus: std::sync::Mutex::new(bus),
            mmio,
            _vm: vm,
            _guest_memfds,
            _memory: memory,
            _kvm,
        });
        let mut handles = Vec::new();
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let thread_stop = Arc::clone(&stop);
            let tx = tx.clone();
            let vcpu_filter = filters.as_ref().map(|f| f.vcpu.clone());
            let handle = std::thread::Builder::new()
                .name(format!("podvm-vcpu{index}"))
                .spawn(move || {
                    let result = match vcpu_filter.as_ref().map(|f| f.apply()) {
                        Some(Err(e)) => Err(e),
                        _ => vcpu::run_loop(&mut vcpu, &shared.bus, &shared.mmio, &thread_stop),
                    };
                    // Whatever ended this vCPU ends the VM: the others see the flag when kicked.
                    thread_stop.store(true, Ordering::SeqCst);
                    let ended = Instant::now();
                    // The vCPU fd closes before this thread's share of the VM and its memory.
                    drop(vcpu);
                    drop(shared);
                    let _ = tx.send((index, result, ended));
                })
                .map_err(KvmVmError::Thread);
            match handle {
                Ok(h) => handles.push(Some(h)),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    kick_until_joined(&mut handles);
                    return Err(e);
                }
            }
        }
        drop(tx);
        drop(shared);
        // After the spawns, so the vCPU threads do not inherit the controller filter. If it
        // cannot be installed, the VM is stopped and the error returned once the threads report.
        let mut confine_error = None;
        if confine_caller
            && let Some(f) = &filters
            && let Err(e) = f.controller.apply()
        {
            stop.store(true, Ordering::SeqCst);
            confine_error = Some(e);
        }

        let count = handles.len();
        let mut deadline_hit = false;
        let mut kicking_since: Option<Instant> = None;
        // The first vCPU to end decides how the VM ended; the rest stop because of it.
        let mut decisive: Option<(Result<VcpuStop>, Instant)> = None;
        let mut ended_last = created;
        let mut reported = 0;
        while reported < count {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok((index, result, ended)) => {
                    reported += 1;
                    ended_last = ended_last.max(ended);
                    if let Some(h) = handles.get_mut(index).and_then(Option::take) {
                        let _ = h.join();
                    }
                    if decisive.is_none() {
                        decisive = Some((result, ended));
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // A thread died without reporting (it panicked): name it.
                    for h in handles.iter_mut().filter_map(Option::take) {
                        if h.is_finished() {
                            let why = match h.join() {
                                Err(panic) => panic_message(&panic),
                                Ok(()) => "it exited without reporting".to_string(),
                            };
                            return Err(KvmVmError::VcpuThreadLost(why));
                        }
                    }
                    return Err(KvmVmError::VcpuThreadLost(
                        "it exited without reporting".into(),
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if !deadline_hit && decisive.is_none() && started.elapsed() >= deadline {
                deadline_hit = true;
                stop.store(true, Ordering::SeqCst);
            }
            if stop.load(Ordering::SeqCst) {
                let since = *kicking_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STOP_GRACE {
                    // Abandoned threads keep their share of the VM: nothing is unmapped under
                    // them.
                    return Err(if deadline_hit {
                        KvmVmError::DeadlineExceeded { deadline }
                    } else {
                        KvmVmError::VcpuThreadLost(format!(
                            "it did not leave KVM_RUN within {STOP_GRACE:?} of a stop request"
                        ))
                    });
                }
                // A kick that lands outside KVM_RUN is lost; repeat until every thread reports.
                for h in handles.iter().flatten() {
                    let _ = h.kill(vcpu::kick_signal());
                }
            }
        }
        let Some((result, ended)) = decisive else {
            return Err(KvmVmError::VcpuThreadLost("no vCPU reported".into()));
        };
        if let Some(e) = confine_error {
            return Err(e);
        }
        let stop_reason = result?;
        if deadline_hit && stop_reason == VcpuStop::Stopped {
            return Err(KvmVmError::DeadlineExceeded { deadline });
        }
        Ok(ExitReport {
            reason: match stop_reason {
                VcpuStop::Reset => ExitReason::Reset,
                VcpuStop::Stopped => ExitReason::Stopped,
            },
            first_output: first_byte.get().map(|t| t.duration_since(created)),
            total: ended.max(ended_last).duration_since(created),
        })
    }
}

/// Stops and joins threads started so far (used when starting a later one failed).
fn kick_until_joined(handles: &mut [Option<std::thread::JoinHandle<()>>]) {
    let until = Instant::now() + STOP_GRACE;
    for h in handles.iter_mut().filter_map(Option::take) {
        while !h.is_finished() && Instant::now() < until {
            let _ = h.kill(vcpu::kick_signal());
            std::thread::sleep(POLL_INTERVAL);
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("it panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("it panicked: {s}")
    } else {
        "it panicked".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_requires_a_payload() {
        let err = KvmVm::builder().build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VM configuration: no payload or kernel given (use .payload or .linux)"
        );
    }

    #[test]
    fn payload_must_not_overlap_boot_structures_or_leave_ram() {
        assert!(check_payload_placement(cpu::PAYLOAD_START, 100, 16).is_ok());
        assert!(check_payload_placement(GuestAddress(0x9000), 100, 16).is_err());
        assert!(check_payload_placement(cpu::PAYLOAD_START, 0, 16).is_err());
        assert!(check_payload_placement(GuestAddress(16 << 20), 1, 16).is_err());
        assert!(check_payload_placement(GuestAddress((16 << 20) - 1), 1, 16).is_ok());
    }
}
