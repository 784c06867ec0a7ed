//! [`KvmLaunchOps`]: the launch operations as real KVM ioctls. Compiled and layout-tested here;
//! it only runs on a host with SEV-SNP or TDX enabled in KVM.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use kvm_bindings::{
    KVM_CAP_VM_TYPES, KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, kvm_create_guest_memfd,
    kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish,
    kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
    sev_cmd_id_KVM_SEV_INIT2, sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_START, sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use podvm_measured_boot::SnpPageType;
use podvm_measured_boot::vmsa::ResetState;
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

use super::tdx::{
    KVM_TDX_FINALIZE_VM, KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU, KVM_TDX_INIT_VM,
    KVM_TDX_MEASURE_MEMORY_REGION, KvmTdxCmd, KvmTdxInitMemRegion,
};
use super::{LaunchOps, OpFailure, OpResult, PAGE_SIZE, PrivateRegion, SnpFinish, TdxInitVm};

/// The SEV device whose fd goes into every `struct kvm_sev_cmd`.
pub const SEV_DEVICE: &str = "/dev/sev";

/// `KVMIO`.
const KVMIO: u32 = 0xAE;
// `KVM_MEMORY_ENCRYPT_OP` = _IOWR(KVMIO, 0xba, unsigned long), for vCPU-scoped TDX commands
// (kvm-ioctls only offers it on the VM fd).
vmm_sys_util::ioctl_iowr_nr!(KVM_MEMORY_ENCRYPT_OP, KVMIO, 0xba, std::os::raw::c_ulong);

/// A page-aligned copy of launch bytes: KVM refuses a `uaddr` / `source_addr` that is not page
/// aligned (`SNP_LAUNCH_UPDATE`, `KVM_TDX_INIT_MEM_REGION`).
struct PageBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl PageBuf {
    /// Copies `bytes` (a non-empty whole number of pages) into a page-aligned allocation.
    fn copy_of(bytes: &[u8]) -> Result<Self, OpFailure> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(PAGE_SIZE) {
            return Err(OpFailure(format!(
                "{} bytes are not a whole number of pages",
                bytes.len()
            )));
        }
        let layout = std::alloc::Layout::from_size_align(bytes.len(), PAGE_SIZE)
            .map_err(|e| OpFailure(format!("{} bytes: {e}", bytes.len())))?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = std::ptr::NonNull::new(raw)
            .ok_or_else(|| OpFailure(format!("cannot allocate {} bytes", bytes.len())))?;
        // SAFETY: `ptr` is a fresh allocation of `bytes.len()` bytes that cannot overlap
        // `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        Ok(PageBuf { ptr, layout })
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `copy_of` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The `KVM_CAP_VM_TYPES` bitmask of `kvm` (0 when the capability is unknown: default VMs only).
pub fn supported_vm_types(kvm: &Kvm) -> u64 {
    let v = kvm.check_extension_raw(KVM_CAP_VM_TYPES as std::os::raw::c_ulong);
    u64::try_from(v).unwrap_or(0)
}

/// The launch operations on a real confidential VM: a `VmFd` created with
/// `KVM_X86_SNP_VM` / `KVM_X86_TDX_VM`, its vCPUs (created on first use) and the guest_memfds
/// backing its private memory.
pub struct KvmLaunchOps {
    // Drop order: vCPUs, then the VM, then guest_memfds and /dev/sev.
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    guest_memfds: Vec<OwnedFd>,
    sev: Option<File>,
    tdx_cpuid: Option<kvm_bindings::CpuId>,
}

impl std::fmt::Debug for KvmLaunchOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmLaunchOps")
            .field("vcpus", &self.vcpus.len())
            .field("guest_memfds", &self.guest_memfds.len())
            .finish_non_exhaustive()
    }
}

fn errno(what: &str, e: kvm_ioctls::Error) -> OpFailure {
    OpFailure(format!("{what}: {e}"))
}

impl KvmLaunchOps {
    /// For an SNP VM: opens the SEV device (`/dev/sev`) for `kvm_sev_cmd.sev_fd`.
    pub fn snp(vm: VmFd, sev_device: &Path) -> std::io::Result<Self> {
        let sev = File::options().read(true).write(true).open(sev_device)?;
        Ok(KvmLaunchOps {
            vcpus: Vec::new(),
            vm,
            guest_memfds: Vec::new(),
            sev: Some(sev),
            tdx_cpuid: None,
        })
    }

    /// For a TDX VM: enables the split IRQ chip (`KVM_CAP_SPLIT_IRQCHIP`, 24 IOAPIC pins), which
    /// KVM requires before it creates a TD vCPU.
    pub fn tdx(vm: VmFd) -> Result<Self, OpFailure> {
        let mut cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = 24;
        vm.enable_cap(&cap)
            .map_err(|e| errno("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", e))?;
        Ok(KvmLaunchOps {
            vcpus: Vec::new(),
            vm,
            guest_memfds: Vec::new(),
            sev: None,
            tdx_cpuid: None,
        })
    }

    /// The VM, its vCPUs (index order) and the guest_memfds (which must outlive the VM's use of
    /// them).
    pub fn into_parts(self) -> (VmFd, Vec<VcpuFd>, Vec<OwnedFd>) {
        (self.vm, self.vcpus, self.guest_memfds)
    }

    fn vcpu(&mut self, index: u32) -> Result<&VcpuFd, OpFailure> {
        while self.vcpus.len() <= index as usize {
            let id = self.vcpus.len() as u64;
            let v = self
                .vm
                .create_vcpu(id)
                .map_err(|e| errno("KVM_CREATE_VCPU", e))?;
            if let Some(cpuid) = &self.tdx_cpuid {
                v.set_cpuid2(cpuid)
                    .map_err(|e| errno("KVM_SET_CPUID2", e))?;
            }
            self.vcpus.push(v);
        }
        self.vcpus
            .get(index as usize)
            .ok_or_else(|| OpFailure(format!("no vCPU {index}")))
    }

    fn sev_cmd(&self, id: u32, data: u64) -> Result<kvm_sev_cmd, OpFailure> {
        let sev = self
            .sev
            .as_ref()
            .ok_or_else(|| OpFailure("not an SNP VM (no /dev/sev fd)".into()))?;
        Ok(kvm_sev_cmd {
            id,
            data,
            sev_fd: sev.as_raw_fd() as u32,
            ..Default::default()
        })
    }

    fn sev_op(&self, id: u32, data: u64) -> OpResult {
        let mut cmd = self.sev_cmd(id, data)?;
        self.vm
            .encrypt_op_sev(&mut cmd)
            .map_err(|e| OpFailure(format!("{e}, firmware error {:#x}", cmd.error)))
    }

    fn tdx_vm_op(&self, id: u32, flags: u32, data: u64) -> OpResult {
        let mut cmd = KvmTdxCmd {
            id,
            flags,
            data,
            hw_error: 0,
        };
        // SAFETY: `cmd` is a live `struct kvm_tdx_cmd` (layout tested); `data` points to a
        // structure that outlives the call, of the type the sub-command expects.
        unsafe { self.vm.encrypt_op(&mut cmd) }
            .map_err(|e| OpFailure(format!("{e}, SEAMCALL status {:#x}", cmd.hw_error)))
    }

    /// `KVM_MEMORY_ENCRYPT_OP` on vCPU `vcpu`; the error carries the errno, read right after
    /// the call.
    fn tdx_vcpu_raw(&mut self, vcpu: u32, cmd: &mut KvmTdxCmd) -> Result<(), OpFailure> {
        let fd = self.vcpu(vcpu)?;
        // SAFETY: `fd` is a KVM vCPU fd, `cmd` a live `struct kvm_tdx_cmd` the kernel reads and
        // writes (`hw_error`); `cmd.data` is an immediate or points to a live structure of the
        // type the sub-command expects.
        let ret = unsafe { ioctl_with_mut_ref(fd, KVM_MEMORY_ENCRYPT_OP(), cmd) };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        let retry = matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR));
        Err(OpFailure(format!(
            "{}{err}, SEAMCALL status {:#x}",
            if retry { RETRY } else { "" },
            cmd.hw_error
        )))
    }

    fn tdx_vcpu_op(&mut self, vcpu: u32, id: u32, flags: u32, data: u64) -> OpResult {
        let mut cmd = KvmTdxCmd {
            id,
            flags,
            data,
            hw_error: 0,
        };
        self.tdx_vcpu_raw(vcpu, &mut cmd)
    }
}

/// Prefix of a vCPU TDX failure that may be retried (EAGAIN / EINTR).
const RETRY: &str = "retry: ";

impl LaunchOps for KvmLaunchOps {
    fn add_private_region(&mut self, r: &PrivateRegion) -> OpResult {
        let gmem = kvm_create_guest_memfd {
            size: r.size,
            ..Default::default()
        };
        let fd = self
            .vm
            .create_guest_memfd(gmem)
            .map_err(|e| errno("KVM_CREATE_GUEST_MEMFD", e))?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let region = kvm_userspace_memory_region2 {
            slot: r.slot,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: r.gpa,
            memory_size: r.size,
            userspace_addr: r.host_addr,
            guest_memfd_offset: 0,
            guest_memfd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `host_addr..+size` is the caller's live guest-memory mapping (the launch
        // drivers pass the regions of a `GuestMemoryMmap` that the VM's owner keeps mapped for
        // the VM's lifetime); the guest_memfd is kept open in `self.guest_memfds`.
        unsafe { self.vm.set_user_memory_region2(region) }
            .map_err(|e| errno("KVM_SET_USER_MEMORY_REGION2", e))?;
        self.guest_memfds.push(fd);
        Ok(())
    }

    fn set_memory_private(&mut self, gpa: u64, size: u64) -> OpResult {
        self.vm
            .set_memory_attributes(kvm_memory_attributes {
                address: gpa,
                size,
                attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE as u64,
                flags: 0,
            })
            .map_err(|e| errno("KVM_SET_MEMORY_ATTRIBUTES", e))
    }

    fn snp_init(&mut self, vmsa_features: u64, ghcb_version: u16) -> OpResult {
        let init = kvm_sev_init {
            vmsa_features,
            ghcb_version,
            ..Default::default()
        };
        self.sev_op(sev_cmd_id_KVM_SEV_INIT2, &init as *const _ as u64)
    }

    fn snp_launch_start(&mut self, policy: u64, gosvw: [u8; 16], flags: u16) -> OpResult {
        let start = kvm_sev_snp_launch_start {
            policy,
            gosvw,
            flags,
            ..Default::default()
        };
        self.sev_op(
            sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
            &start as *const _ as u64,
        )
    }

    fn snp_launch_update(
        &mut self,
        gfn_start: u64,
        source: &[u8],
        page_type: SnpPageType,
    ) -> OpResult {
        let buf = PageBuf::copy_of(source)?;
        let mut update = kvm_sev_snp_launch_update {
            gfn_start,
            uaddr: buf.addr(),
            len: buf.len() as u64,
            type_: page_type as u8,
            ..Default::default()
        };
        // KVM advances gfn_start/uaddr/len and returns EAGAIN when it stops early.
        loop {
            let mut cmd = self.sev_cmd(
                sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE,
                &mut update as *mut _ as u64,
            )?;
            match self.vm.encrypt_op_sev(&mut cmd) {
                Ok(()) if update.len == 0 => return Ok(()),
                Ok(()) => continue,
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => continue,
                Err(e) => {
                    return Err(OpFailure(format!("{e}, firmware error {:#x}", cmd.error)));
                }
            }
        }
    }

    fn set_vcpu_reset_state(&mut self, vcpu: u32, state: &ResetState) -> OpResult {
        let fd = self.vcpu(vcpu)?;
        let mut sregs = fd.get_sregs().map_err(|e| errno("KVM_GET_SREGS", e))?;
        sregs.cs.selector = state.cs_selector;
        sregs.cs.base = state.cs_base;
        fd.set_sregs(&sregs)
            .map_err(|e| errno("KVM_SET_SREGS", e))?;
        let mut regs = fd.get_regs().map_err(|e| errno("KVM_GET_REGS", e))?;
        regs.rip = state.rip;
        regs.rdx = state.rdx;
        fd.set_regs(&regs).map_err(|e| errno("KVM_SET_REGS", e))
    }

    fn snp_launch_finish(&mut self, f: &SnpFinish) -> OpResult {
        let finish = kvm_sev_snp_launch_finish {
            id_block_uaddr: f.id_block.as_ref().map_or(0, |b| b.as_ptr() as u64),
            id_auth_uaddr: f.id_auth.as_ref().map_or(0, |a| a.as_ptr() as u64),
            id_block_en: f.id_block_en() as u8,
            auth_key_en: f.auth_key_en as u8,
            host_data: f.host_data,
            ..Default::default()
        };
        self.sev_op(
            sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH,
            &finish as *const _ as u64,
        )
    }

    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> OpResult {
        let buf = init.to_uapi();
        self.tdx_vm_op(KVM_TDX_INIT_VM, 0, buf.as_ptr() as u64)?;
        self.tdx_cpuid = Some(
            kvm_bindings::CpuId::from_entries(&init.cpuid)
                .map_err(|e| OpFailure(format!("CPUID for the vCPUs: {e:?}")))?,
        );
        Ok(())
    }

    fn tdx_init_vcpu(&mut self, vcpu: u32, rcx: u64) -> OpResult {
        self.tdx_vcpu_op(vcpu, KVM_TDX_INIT_VCPU, 0, rcx)
    }

    fn tdx_init_mem_region(&mut self, gpa: u64, source: &[u8], measure: bool) -> OpResult {
        let buf = PageBuf::copy_of(source)?;
        let mut region = KvmTdxInitMemRegion {
            source_addr: buf.addr(),
            gpa,
            nr_pages: (buf.len() / PAGE_SIZE) as u64,
        };
        let flags = if measure {
            KVM_TDX_MEASURE_MEMORY_REGION
        } else {
            0
        };
        // A vCPU-scoped command since Linux 6.16; KVM advances the region and returns EAGAIN
        // when it stops early.
        loop {
            let data = &mut region as *mut KvmTdxInitMemRegion as u64;
            match self.tdx_vcpu_op(0, KVM_TDX_INIT_MEM_REGION, flags, data) {
                Ok(()) if region.nr_pages == 0 => return Ok(()),
                Ok(()) => continue,
                Err(e) if e.0.starts_with(RETRY) && region.nr_pages > 0 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn tdx_finalize_vm(&mut self) -> OpResult {
        self.tdx_vm_op(KVM_TDX_FINALIZE_VM, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The SEV structures come from kvm-bindings; check the fields this module fills against
    /// `arch/x86/include/uapi/linux/kvm.h` / `asm/kvm.h`.
    #[test]
    fn sev_uapi_layouts() {
        assert_eq!(size_of::<kvm_sev_cmd>(), 24);
        assert_eq!(offset_of!(kvm_sev_cmd, data), 8);
        assert_eq!(offset_of!(kvm_sev_cmd, error), 16);
        assert_eq!(offset_of!(kvm_sev_cmd, sev_fd), 20);
        assert_eq!(size_of::<kvm_sev_init>(), 48);
        assert_eq!(offset_of!(kvm_sev_init, ghcb_version), 12);
        assert_eq!(size_of::<kvm_sev_snp_launch_start>(), 64);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, gosvw), 8);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, flags), 24);
        assert_eq!(size_of::<kvm_sev_snp_launch_update>(), 64);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, type_), 24);
        assert_eq!(size_of::<kvm_sev_snp_launch_finish>(), 88);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, id_block_en), 16);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, auth_key_en), 17);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, host_data), 19);
        assert_eq!(size_of::<kvm_userspace_memory_region2>(), 160);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, guest_memfd), 40);
        assert_eq!(size_of::<kvm_memory_attributes>(), 32);
        // SNP page types: KVM's values are the ABI's, which SnpPageType carries.
        assert_eq!(
            SnpPageType::Normal as u32,
            kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_NORMAL
        );
        assert_eq!(
            SnpPageType::Zero as u32,
            kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO
        );
        assert_eq!(
            SnpPageType::Unmeasured as u32,
            kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED
        );
        assert_eq!(
            SnpPageType::Secrets as u32,
            kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_SECRETS
        );
        assert_eq!(
            SnpPageType::Cpuid as u32,
            kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_CPUID
        );
    }

    #[test]
    fn launch_bytes_are_passed_page_aligned() {
        let bytes: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        // A slice that is deliberately not page aligned.
        let mut padded = vec![0u8; 1];
        padded.extend_from_slice(&bytes);
        let buf = PageBuf::copy_of(&padded[1..]).unwrap();
        assert_eq!(buf.addr() % PAGE_SIZE as u64, 0);
        assert_eq!(buf.len(), 2 * PAGE_SIZE);
        // SAFETY: `buf` owns `buf.len()` initialised bytes.
        let copy = unsafe { std::slice::from_raw_parts(buf.addr() as *const u8, buf.len()) };
        assert_eq!(copy, &bytes[..]);
        assert!(PageBuf::copy_of(&bytes[..100]).is_err());
        assert!(PageBuf::copy_of(&[]).is_err());
    }

    #[test]
    fn memory_encrypt_op_number_matches_the_uapi() {
        // _IOWR(0xAE, 0xba, unsigned long) on x86-64.
        assert_eq!(KVM_MEMORY_ENCRYPT_OP(), 0xc008_aeba);
    }
}
