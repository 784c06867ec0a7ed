//! Per-thread seccomp allow-lists of the monitor (Firecracker's model), kept **as data** and
//! compiled to classic BPF with `seccompiler`.
//!
//! Three thread kinds ([`ThreadKind`]), each with its own list:
//!
//! - **vCPU** (`podvm-vcpu0`): `KVM_RUN` and `KVM_GET_REGS` only as ioctls, the device work done on
//!   MMIO/PIO exits (serial output, eventfd writes), and activating the vsock device (its eventfds,
//!   epoll instance and queue eventfd duplicates are created on this thread when the driver sets
//!   DRIVER_OK), then dropping the VM (closing fds, unmapping memory, removing the vsock socket).
//! - **vsock** (`podvm-vsock`): the muxer's epoll loop, the hybrid socket's `accept4`, guest→host
//!   `socket` + `connect`, stream I/O, `FIONBIO` as the only ioctl.
//! - **controller** (the thread that calls [`super::KvmVm::run_confined`]): waiting on the vCPU
//!   thread's report (futex) and kicking it (`tgkill`); no ioctls, no file system.
//!
//! Everything else ends in the refusal action: [`Refusal::KillProcess`] (production) or
//! [`Refusal::Trap`] (tests), whose `SIGSYS` handler writes
//! `podvm: seccomp refused syscall N on thread NAME` to stderr and exits with
//! [`SECCOMP_TRAP_EXIT_CODE`].
//!
//! Where the entries come from (each entry's `source` says which): **strace** = seen under
//! `strace -f -ff` of `cargo test -p podvm-host-runtime --test kvm_vmm` and `--test kvm_vsock`
//! (debug build, glibc, x86_64) on the thread of that kind after the point its filter is
//! installed; **code** = from the code the thread runs where the test run did not reach it (the
//! vsock muxer's socket paths: the end-to-end vsock test did not get that far when these lists
//! were made). `kvm_linux_boot` was not traced (`PODVM_GUEST_DIR` unset); a Linux guest runs the
//! same vCPU loop and devices.
//!
//! A filter applies to the calling thread only (no TSYNC) and is inherited by threads it spawns,
//! so no confined thread spawns another: the vsock thread is spawned unconfined when the device is
//! created and confines itself when it is handed its work.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::error::{KvmVmError, Result};

/// Whether the monitor's threads are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// No filters (the default, so library users and tests are unaffected).
    #[default]
    Off,
    /// Every monitor thread runs under its allow-list ([`ThreadKind`]).
    Strict,
}

/// What happens to a syscall outside a thread's allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refusal {
    /// `SECCOMP_RET_KILL_PROCESS`: the whole monitor dies at once (production).
    #[default]
    KillProcess,
    /// `SIGSYS`, whose handler prints the syscall number and thread name and exits with
    /// [`SECCOMP_TRAP_EXIT_CODE`] (tests, debugging a missing entry).
    Trap,
}

/// The exit status of a process whose thread made a refused syscall under [`Refusal::Trap`]
/// (Firecracker's `BadSyscall` code).
pub const SECCOMP_TRAP_EXIT_CODE: i32 = 148;

/// The thread kinds of the monitor, one allow-list each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The vCPU thread (`podvm-vcpu0`).
    Vcpu,
    /// The virtio-vsock device thread (`podvm-vsock`).
    Vsock,
    /// A virtio-blk device thread (`podvm-block`).
    Block,
    /// The thread that runs the VM and waits for / kicks the vCPU thread.
    Controller,
}

/// Which calls of an allowed syscall are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Argument `index` (compared as 32 bits) equals one of `values` (each with its name).
    OneOf {
        index: u8,
        values: &'static [(u64, &'static str)],
    },
}

/// One allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The syscall number (x86_64).
    pub nr: i64,
    pub name: &'static str,
    pub args: Args,
    /// Why it is there / where it was seen.
    pub source: &'static str,
}

const fn any(nr: libc::c_long, name: &'static str, source: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        args: Args::Any,
        source,
    }
}

const fn one_of(
    nr: libc::c_long,
    name: &'static str,
    index: u8,
    values: &'static [(u64, &'static str)],
    source: &'static str,
) -> Allowed {
    Allowed {
        nr,
        name,
        args: Args::OneOf { index, values },
        source,
    }
}

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl request number.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_READ: u64 = 2;

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
/// `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = kvm_ioc(
    IOC_READ,
    0x81,
    std::mem::size_of::<kvm_bindings::kvm_regs>(),
);

/// On every thread: what Rust's std, glibc's allocator and thread exit need.
const COMMON: &[Allowed] = &[
    any(
        libc::SYS_futex,
        "futex",
        "strace: Mutex/Condvar, mpsc channels, thread join (FUTEX_WAIT_BITSET, FUTEX_WAKE_PRIVATE)",
    ),
    any(
        libc::SYS_mmap,
        "mmap",
        "strace: malloc arenas and large allocations, sigaltstack pages",
    ),
    any(
        libc::SYS_munmap,
        "munmap",
        "strace: freeing allocations, guest memory and the kvm_run page when the VM drops",
    ),
    any(
        libc::SYS_mremap,
        "mremap",
        "strace (controller): growing a large Vec",
    ),
    any(
        libc::SYS_mprotect,
        "mprotect",
        "strace: malloc arena growth",
    ),
    any(
        libc::SYS_madvise,
        "madvise",
        "strace: MADV_DONTNEED of the stack at thread exit",
    ),
    any(libc::SYS_brk, "brk", "code: glibc malloc's main arena"),
    any(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "strace: thread exit blocks signals",
    ),
    any(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "strace: std removes the thread's signal stack at exit",
    ),
    any(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "strace: return from the kick (SIGRTMIN) handler",
    ),
    one_of(
        libc::SYS_fcntl,
        "fcntl",
        1,
        &[
            (libc::F_GETFD as u64, "F_GETFD"),
            (libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC"),
        ],
        "strace: F_GETFD = std's debug check when an OwnedFd closes; F_DUPFD_CLOEXEC = EventFd::try_clone",
    ),
    any(
        libc::SYS_close,
        "close",
        "strace: dropping fds (VM, vCPU, eventfds, streams)",
    ),
    any(
        libc::SYS_write,
        "write",
        "strace: serial output, eventfd signals (irqfd, kill), streams, the trap message",
    ),
    any(libc::SYS_exit, "exit", "strace: thread exit"),
    any(
        libc::SYS_exit_group,
        "exit_group",
        "code: process exit, the trap handler's _exit",
    ),
    any(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "code: Instant::now when the vDSO falls back to the syscall",
    ),
    any(
        libc::SYS_openat,
        "openat",
        "test (strict_filters_serve_vsock_and_block_devices): glibc's free() reads \
         /proc/sys/vm/overcommit_memory once when it shrinks a thread's heap; the second filter \
         (EACCES_SYSCALLS) answers every openat with EACCES, which glibc handles",
    ),
];

/// Calls that pass the allow-lists but are answered `EACCES` by a second filter installed with
/// each list (the kernel applies the stricter of the two answers): no thread ever opens a file.
pub const EACCES_SYSCALLS: &[(i64, &str)] = &[(libc::SYS_openat, "openat")];

/// The second filter: [`EACCES_SYSCALLS`] → `EACCES`, everything else passes to the allow-list.
fn eacces_program() -> Result<BpfProgram> {
    let err = |e: &dyn std::fmt::Display| {
        KvmVmError::Seccomp(format!("cannot compile the EACCES filter: {e}"))
    };
    let rules = EACCES_SYSCALLS
        .iter()
        .map(|(nr, _)| (*nr, Vec::new()))
        .collect::<BTreeMap<i64, Vec<SeccompRule>>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// The vCPU thread, on top of [`COMMON`].
const VCPU: &[Allowed] = &[
    one_of(
        libc::SYS_ioctl,
        "ioctl",
        1,
        &[(KVM_RUN, "KVM_RUN"), (KVM_GET_REGS, "KVM_GET_REGS")],
        "strace: KVM_RUN = the run loop; KVM_GET_REGS = the RIP of a failing exit",
    ),
    any(
        libc::SYS_eventfd2,
        "eventfd2",
        "strace: vsock activation (the muxer's kill eventfd)",
    ),
    any(
        libc::SYS_epoll_create1,
        "epoll_create1",
        "strace: vsock activation (the muxer's epoll)",
    ),
    one_of(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        1,
        &[(libc::EPOLL_CTL_ADD as u64, "EPOLL_CTL_ADD")],
        "strace: vsock activation registers its fds",
    ),
    any(
        libc::SYS_getrandom,
        "getrandom",
        "strace: the muxer's HashMaps (RandomState), first use on this thread",
    ),
    any(
        libc::SYS_unlink,
        "unlink",
        "strace: VsockDevice drop removes the hybrid socket",
    ),
];

/// The vsock device thread, on top of [`COMMON`].
const VSOCK: &[Allowed] = &[
    any(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "strace: the muxer's loop",
    ),
    one_of(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        1,
        &[
            (libc::EPOLL_CTL_ADD as u64, "EPOLL_CTL_ADD"),
            (libc::EPOLL_CTL_MOD as u64, "EPOLL_CTL_MOD"),
            (libc::EPOLL_CTL_DEL as u64, "EPOLL_CTL_DEL"),
        ],
        "code: muxer register / update_interest / remove",
    ),
    any(
        libc::SYS_read,
        "read",
        "strace: draining queue eventfds; code: stream reads",
    ),
    any(
        libc::SYS_recvfrom,
        "recvfrom",
        "code: std socket reads may use recv(2)",
    ),
    any(
        libc::SYS_sendto,
        "sendto",
        "test (strict_filters_serve_vsock_and_block_devices): std's UnixStream writes use send(2)",
    ),
    any(
        libc::SYS_accept4,
        "accept4",
        "code: UnixListener::accept on the hybrid socket (SOCK_CLOEXEC)",
    ),
    any(
        libc::SYS_socket,
        "socket",
        "code: UnixStream::connect to <uds_path>_<port> (guest → host)",
    ),
    any(
        libc::SYS_connect,
        "connect",
        "code: UnixStream::connect (guest → host)",
    ),
    any(
        libc::SYS_shutdown,
        "shutdown",
        "code: guest SHUTDOWN of one direction",
    ),
    one_of(
        libc::SYS_ioctl,
        "ioctl",
        1,
        &[(libc::FIONBIO, "FIONBIO")],
        "strace/code: std's set_nonblocking is ioctl(FIONBIO) (accepted streams)",
    ),
];

/// A virtio-blk device thread, on top of [`COMMON`].
const BLOCK: &[Allowed] = &[
    any(
        libc::SYS_epoll_create1,
        "epoll_create1",
        "code: the worker's epoll, created on its own thread",
    ),
    one_of(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        1,
        &[(libc::EPOLL_CTL_ADD as u64, "EPOLL_CTL_ADD")],
        "code: the worker registers the kill and queue eventfds",
    ),
    any(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "code: the worker's loop",
    ),
    any(libc::SYS_read, "read", "code: draining the queue eventfd"),
    any(
        libc::SYS_pread64,
        "pread64",
        "code: FileExt::read_exact_at (VIRTIO_BLK_T_IN)",
    ),
    any(
        libc::SYS_pwrite64,
        "pwrite64",
        "code: FileExt::write_all_at (VIRTIO_BLK_T_OUT)",
    ),
    any(
        libc::SYS_fsync,
        "fsync",
        "code: File::sync_all (VIRTIO_BLK_T_FLUSH)",
    ),
];

/// The controller thread, on top of [`COMMON`].
const CONTROLLER: &[Allowed] = &[
    any(
        libc::SYS_tgkill,
        "tgkill",
        "strace: the SIGRTMIN kick of the vCPU thread (pthread_kill)",
    ),
    any(
        libc::SYS_getpid,
        "getpid",
        "strace: pthread_kill's tgkill argument",
    ),
    any(
        libc::SYS_sched_yield,
        "sched_yield",
        "code: std's spin-then-park in channels",
    ),
];

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::Vsock,
        ThreadKind::Block,
        ThreadKind::Controller,
    ];

    /// The name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Vsock => "vsock",
            ThreadKind::Block => "block",
            ThreadKind::Controller => "controller",
        }
    }

    /// This kind's allow-list: the common entries, then its own.
    pub fn allowed(self) -> impl Iterator<Item = &'static Allowed> {
        let own = match self {
            ThreadKind::Vcpu => VCPU,
            ThreadKind::Vsock => VSOCK,
            ThreadKind::Block => BLOCK,
            ThreadKind::Controller => CONTROLLER,
        };
        COMMON.iter().chain(own.iter())
    }

    /// Whether the list lets `syscall` through with argument `index` = `value` (for tests and
    /// documentation; the kernel evaluates the compiled filter).
    pub fn allows(self, nr: i64, arg: Option<(u8, u64)>) -> bool {
        self.allowed().any(|a| {
            a.nr == nr
                && match a.args {
                    Args::Any => true,
                    Args::OneOf { index, values } => arg.is_some_and(|(i, v)| {
                        i == index && values.iter().any(|(allowed, _)| *allowed == v)
                    }),
                }
        })
    }

    /// Compiles this kind's list to BPF: listed calls are allowed, everything else gets
    /// `refusal`.
    pub fn compile(self, refusal: Refusal) -> Result<BpfProgram> {
        let err = |e: &dyn std::fmt::Display| {
            KvmVmError::Seccomp(format!("cannot compile the {} filter: {e}", self.name()))
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for a in self.allowed() {
            if rules.contains_key(&a.nr) {
                return Err(err(&format!("{} is listed twice", a.name)));
            }
            let chain = match a.args {
                // An empty chain matches unconditionally.
                Args::Any => Vec::new(),
                Args::OneOf { index, values } => values
                    .iter()
                    .map(|(value, _)| {
                        let cond = SeccompCondition::new(
                            index,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            *value,
                        )
                        .map_err(|e| err(&e))?;
                        SeccompRule::new(vec![cond]).map_err(|e| err(&e))
                    })
                    .collect::<Result<Vec<_>>>()?,
            };
            rules.insert(a.nr, chain);
        }
        let on_refusal = match refusal {
            Refusal::KillProcess => SeccompAction::KillProcess,
            Refusal::Trap => SeccompAction::Trap,
        };
        let filter =
            SeccompFilter::new(rules, on_refusal, SeccompAction::Allow, TargetArch::x86_64)
                .map_err(|e| err(&e))?;
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| err(&e))
    }
}

/// A compiled filter for one thread kind, cheap to clone and hand to the thread it confines.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Arc<BpfProgram>,
    eacces: Arc<BpfProgram>,
}

impl ThreadFilter {
    /// Compiles `kind`'s list; with [`Refusal::Trap`] also installs the process's `SIGSYS`
    /// handler.
    pub fn new(kind: ThreadKind, refusal: Refusal) -> Result<Self> {
        let program = kind.compile(refusal)?;
        if refusal == Refusal::Trap {
            install_trap_handler()?;
        }
        Ok(ThreadFilter {
            kind,
            program: Arc::new(program),
            eacces: Arc::new(eacces_program()?),
        })
    }

    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Confines the **calling thread** (only it, and threads it spawns later) for good; also sets
    /// its `no_new_privs`. Irreversible.
    pub fn apply(&self) -> Result<()> {
        remember_thread_name(self.kind);
        // The EACCES filter first: installing a filter needs prctl/seccomp, which the allow-list
        // (installed last) forbids.
        for program in [&self.eacces, &self.program] {
            seccompiler::apply_filter(program).map_err(|e| {
                KvmVmError::Seccomp(format!(
                    "cannot install the {} filter on this thread: {e} (the kernel needs CONFIG_SECCOMP_FILTER)",
                    self.kind.name()
                ))
            })?;
        }
        Ok(())
    }
}

/// The filters of one VM, compiled by `KvmVmBuilder::build` with [`SeccompLevel::Strict`].
#[derive(Debug, Clone)]
pub struct ThreadFilters {
    pub vcpu: ThreadFilter,
    pub vsock: ThreadFilter,
    pub block: ThreadFilter,
    pub controller: ThreadFilter,
}

impl ThreadFilters {
    pub fn new(refusal: Refusal) -> Result<Self> {
        Ok(ThreadFilters {
            vcpu: ThreadFilter::new(ThreadKind::Vcpu, refusal)?,
            vsock: ThreadFilter::new(ThreadKind::Vsock, refusal)?,
            block: ThreadFilter::new(ThreadKind::Block, refusal)?,
            controller: ThreadFilter::new(ThreadKind::Controller, refusal)?,
        })
    }
}

thread_local! {
    /// The confined thread's name, NUL-padded, for the `SIGSYS` handler (which must not allocate
    /// or make syscalls the filter refuses).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn remember_thread_name(kind: ThreadKind) {
    let current = std::thread::current();
    let name = current.name().unwrap_or(kind.name()).as_bytes();
    let mut buf = [0u8; 16];
    let n = name.len().min(buf.len());
    buf[..n].copy_from_slice(&name[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// A fixed buffer `core::fmt::Write` can format into without allocating.
struct StackBuf {
    buf: [u8; 128],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `siginfo_t` of a `SIGSYS` from seccomp: `si_syscall` is the `int` at byte 24 on x86_64
/// (`struct { void *_call_addr; int _syscall; unsigned int _arch; }` after the 16-byte header).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::fmt::Write as _;
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (128 bytes) for SA_SIGINFO handlers; for a
        // seccomp SIGSYS the syscall number is the i32 at SI_SYSCALL_OFFSET.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let name = THREAD_NAME.with(|c| c.get());
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let name = std::str::from_utf8(&name[..end]).unwrap_or("?");
    let mut msg = StackBuf {
        buf: [0; 128],
        len: 0,
    };
    let _ = writeln!(msg, "podvm: seccomp refused syscall {nr} on thread {name}");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed on every thread.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(SECCOMP_TRAP_EXIT_CODE);
    }
}

/// Installs the `SIGSYS` handler of [`Refusal::Trap`] once per process.
pub fn install_trap_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigsys as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
            }
            Ok(())
        })
        .map_err(|errno| {
            KvmVmError::Seccomp(format!(
                "cannot install the SIGSYS handler: {}",
                std::io::Error::from_raw_os_error(errno)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_filter_compiles_for_both_refusals() {
        for kind in ThreadKind::ALL {
            for refusal in [Refusal::KillProcess, Refusal::Trap] {
                let bpf = kind.compile(refusal).unwrap();
                assert!(bpf.len() > 10, "{kind:?}: {} instructions", bpf.len());
            }
        }
    }

    #[test]
    fn allow_lists_have_no_duplicates() {
        for kind in ThreadKind::ALL {
            let mut seen = HashSet::new();
            for a in kind.allowed() {
                assert!(seen.insert(a.nr), "{kind:?} lists {} twice", a.name);
                assert!(!a.source.is_empty(), "{} has no source", a.name);
                if let Args::OneOf { values, .. } = a.args {
                    let distinct: HashSet<_> = values.iter().map(|v| v.0).collect();
                    assert_eq!(distinct.len(), values.len(), "{kind:?}: {} values", a.name);
                }
            }
        }
    }

    #[test]
    fn kvm_run_is_allowed_on_the_vcpu_thread_only() {
        let ioctl = libc::SYS_ioctl;
        assert!(ThreadKind::Vcpu.allows(ioctl, Some((1, KVM_RUN))));
        assert!(!ThreadKind::Vsock.allows(ioctl, Some((1, KVM_RUN))));
        assert!(!ThreadKind::Controller.allows(ioctl, Some((1, KVM_RUN))));
        // Other KVM ioctls (creating VMs, setting registers) are refused on the vCPU thread.
        assert!(!ThreadKind::Vcpu.allows(ioctl, Some((1, 0xAE01))));
        assert!(!ThreadKind::Vcpu.allows(ioctl, None));
    }

    #[test]
    fn ioctl_numbers_match_kvm_ioctls() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
    }

    #[test]
    fn no_thread_may_open_files_or_exec() {
        for kind in ThreadKind::ALL {
            for nr in [libc::SYS_open, libc::SYS_execve, libc::SYS_clone3] {
                assert!(!kind.allows(nr, None), "{kind:?} allows {nr}");
            }
            // openat passes the list only to be answered EACCES by the second filter.
            assert!(
                EACCES_SYSCALLS
                    .iter()
                    .any(|(nr, _)| *nr == libc::SYS_openat)
            );
        }
    }
}
