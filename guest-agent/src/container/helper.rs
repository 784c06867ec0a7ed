//! The container helper: `podvm-agent __container-init <fd> <container id>`, re-executed by the
//! agent for every container process (see [`super::runner`]). It is single-threaded from its
//! first instruction, so after `fork` its child may allocate, mount and `setns` freely, which a
//! child forked from the multi-threaded agent could not.
//!
//! Control socket (fd `<fd>`), one JSON value per line:
//! agent → helper: [`HelperConfig`], then [`Command::Start`] (init processes);
//! helper → agent: [`Report::Pid`], [`Report::Ready`] (init: root assembled, waiting for Start),
//! [`Report::Started`] (the user's command was exec'd), [`Report::Error`] (one line),
//! [`Report::Exited`] (status, `128 + n` for signal n).
//!
//! - **init**: the agent started the helper in new mount, UTS, IPC (and maybe network)
//!   namespaces and with `CLONE_NEWPID` for its children. The helper forks the container's PID 1,
//!   moves it into the container's cgroup, and relays: the child builds the root
//!   ([`super::rootfs::setup`]), reports Ready, waits for Start, applies the process settings and
//!   execs. The helper stays as the container's parent, to report its exit status.
//! - **exec**: the helper joins the namespaces of the container's PID 1 (`setns`), forks the
//!   process (which lands in the container's PID namespace), moves it into the cgroup, and the
//!   child execs at once.
//!
//! Process settings, in order: signals reset, a new session with the terminal as controlling
//! terminal (`Process.Terminal`), umask 022, cwd, rlimits, oom_score_adj, seccomp (if
//! `noNewPrivileges` is off: while CAP_SYS_ADMIN is still held, as runc), bounding set,
//! groups/gid/uid (keeping the permitted set), effective/permitted/inheritable, ambient,
//! `no_new_privs`, seccomp (if `noNewPrivileges`: the last thing before `execve`).

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execve, fork, setgroups, setresgid, setresuid};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::rootfs::{self, sys_msg};
use super::seccomp;
use super::spec::{DEFAULT_PATH, InitConfig, ProcessConfig};

/// The hidden subcommand of `podvm-agent` that runs the helper.
pub const HELPER_SUBCOMMAND: &str = "__container-init";

/// What the agent sends first.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperConfig {
    Init(Box<InitConfig>),
    Exec(Box<ExecConfig>),
}

/// An extra process in a running container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The container's PID 1, as the agent sees it.
    pub target_pid: i32,
    pub cgroup_procs: Option<PathBuf>,
    pub process: ProcessConfig,
}

/// Agent → helper (and helper → its child).
#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    /// (to the child) You are in the cgroup: go on.
    Go,
    /// Exec the user's command.
    Start,
}

/// Helper → agent (and child → helper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    Pid(i32),
    Ready { rootfs: String },
    Started,
    Error(String),
    Exited(i32),
}

/// One JSON value per line over a Unix stream socket (blocking).
struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    fn new(stream: UnixStream) -> io::Result<Self> {
        Ok(Channel {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    fn send<T: Serialize>(&mut self, message: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }

    /// The next message; `None` at end of stream.
    fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// In a forked child: closes this process's copies without touching the parent's.
    fn close_in_child(&self) {
        // SAFETY: the child never uses this channel again and leaves with `_exit`, so nothing
        // closes these descriptors a second time.
        unsafe {
            libc::close(self.reader.get_ref().as_raw_fd());
            libc::close(self.writer.as_raw_fd());
        }
    }
}

fn io_msg(what: impl std::fmt::Display, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => sys_msg(what, Errno::from_raw(n)),
        None => format!("{what}: {e}"),
    }
}

/// Runs the helper if this process was started as one; returns its exit code.
pub fn main_if_helper() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(HELPER_SUBCOMMAND)) {
        return None;
    }
    let fd = args
        .next()
        .and_then(|a| a.to_str()?.parse::<RawFd>().ok())
        .filter(|fd| *fd > 2);
    Some(match fd {
        Some(fd) => run(fd),
        None => {
            eprintln!("{HELPER_SUBCOMMAND} is started by podvm-agent, not by hand");
            2
        }
    })
}

fn run(fd: RawFd) -> i32 {
    // SAFETY: the agent put its end of the control socket on `fd` (`pre_exec`); nothing else in
    // this new process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    if nix::fcntl::fcntl(
        &stream,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .is_err()
    {
        return 2;
    }
    let Ok(mut ctl) = Channel::new(stream) else {
        return 2;
    };
    let result = match ctl.recv::<HelperConfig>() {
        Ok(Some(HelperConfig::Init(c))) => run_init(&mut ctl, &c),
        Ok(Some(HelperConfig::Exec(c))) => run_exec(&mut ctl, &c),
        Ok(None) => return 0,
        Err(e) => Err(format!("read the helper's configuration: {e}")),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            let _ = ctl.send(&Report::Error(message));
            1
        }
    }
}

fn open_devnull() -> Result<File, String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io_msg("open /dev/null", &e))
}

fn open_procs(path: Option<&Path>) -> Result<Option<File>, String> {
    path.map(|p| {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(|e| io_msg(format!("open {}", p.display()), &e))
    })
    .transpose()
}

fn run_init(ctl: &mut Channel, cfg: &InitConfig) -> Result<i32, String> {
    let devnull = open_devnull()?;
    let procs = open_procs(cfg.cgroup_procs.as_deref())?;
    let (parent_end, child_end) = UnixStream::pair().map_err(|e| io_msg("socketpair", &e))?;
    // SAFETY: this process is single-threaded (a fresh exec that started no thread).
    match unsafe { fork() }.map_err(|e| sys_msg("fork the container's init", e))? {
        ForkResult::Child => {
            ctl.close_in_child();
            drop(parent_end);
            let code = child_init(child_end, cfg);
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            supervise(ctl, parent_end, child, procs, devnull, true)
        }
    }
}

fn run_exec(ctl: &mut Channel, cfg: &ExecConfig) -> Result<i32, String> {
    // Opened before the mount namespace changes.
    let devnull = open_devnull()?;
    let procs = open_procs(cfg.cgroup_procs.as_deref())?;
    join_namespaces(cfg.target_pid)?;
    let (parent_end, child_end) = UnixStream::pair().map_err(|e| io_msg("socketpair", &e))?;
    // SAFETY: as in `run_init`.
    match unsafe { fork() }.map_err(|e| sys_msg("fork the exec process", e))? {
        ForkResult::Child => {
            ctl.close_in_child();
            drop(parent_end);
            let code = child_exec(child_end, &cfg.process);
            // SAFETY: as in `run_init`.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            supervise(ctl, parent_end, child, procs, devnull, false)
        }
    }
}

/// Joins the namespaces of `pid` this process is not already in (mount last).
fn join_namespaces(pid: i32) -> Result<(), String> {
    const KINDS: &[(&str, CloneFlags)] = &[
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut files = Vec::new();
    for (name, flag) in KINDS {
        let target = format!("/proc/{pid}/ns/{name}");
        let theirs = match fs::metadata(&target) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err("the container's init process has exited".to_string());
            }
            // A kernel without this namespace type.
            Err(_) if *name == "cgroup" => continue,
            Err(e) => return Err(io_msg(format!("read {target}"), &e)),
        };
        let ours = fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(|e| io_msg(format!("read /proc/self/ns/{name}"), &e))?;
        if (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()) {
            let file = File::open(&target).map_err(|e| io_msg(format!("open {target}"), &e))?;
            files.push((*name, *flag, file));
        }
    }
    for (name, flag, file) in files {
        setns(file.as_fd(), flag)
            .map_err(|e| sys_msg(format!("join the container's {name} namespace"), e))?;
    }
    Ok(())
}

/// Waits for `pid`; its exit status, `128 + n` for signal n.
fn reap(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The helper's side, after `fork`.
fn supervise(
    ctl: &mut Channel,
    to_child: UnixStream,
    child: Pid,
    procs: Option<File>,
    devnull: File,
    wait_for_start: bool,
) -> Result<i32, String> {
    let mut ch = Channel::new(to_child).map_err(|e| io_msg("socket", &e))?;
    let give_up = |message: String| {
        let _ = kill(child, Signal::SIGKILL);
        reap(child);
        Err(message)
    };
    if ctl.send(&Report::Pid(child.as_raw())).is_err() {
        return give_up("the agent went away".into());
    }
    if let Some(mut procs) = procs
        && let Err(e) = procs.write_all(child.as_raw().to_string().as_bytes())
    {
        return give_up(io_msg("join the container's cgroup", &e));
    }
    // The container process keeps the stdio pipes; the helper lets go of them, so their ends
    // close when the container's processes are done with them.
    for fd in 0..3 {
        // SAFETY: dup2 onto this process's standard descriptors.
        unsafe { libc::dup2(devnull.as_raw_fd(), fd) };
    }
    drop(devnull);
    if ch.send(&Command::Go).is_err() {
        return give_up("the container process died before setup".into());
    }
    if wait_for_start {
        match ch.recv::<Report>() {
            Ok(Some(Report::Ready { rootfs })) => {
                let _ = ctl.send(&Report::Ready { rootfs });
            }
            Ok(Some(Report::Error(m))) => {
                reap(child);
                return Err(m);
            }
            _ => {
                let status = reap(child);
                return Err(format!(
                    "the container's init died while its root was set up (status {status})"
                ));
            }
        }
        match ctl.recv::<Command>() {
            Ok(Some(Command::Start)) => {}
            // The agent removed the container before starting it (or went away).
            _ => {
                let _ = kill(child, Signal::SIGKILL);
                let status = reap(child);
                let _ = ctl.send(&Report::Exited(status));
                return Ok(0);
            }
        }
        if ch.send(&Command::Start).is_err() {
            let status = reap(child);
            let _ = ctl.send(&Report::Error(format!(
                "the container's init died before it was started (status {status})"
            )));
            let _ = ctl.send(&Report::Exited(status));
            return Ok(0);
        }
    }
    // The channel closes at a successful exec (close-on-exec); an error comes as a message.
    let started = match ch.recv::<Report>() {
        Ok(None) => Report::Started,
        Ok(Some(Report::Error(m))) => Report::Error(m),
        Ok(Some(other)) => Report::Error(format!("unexpected message from the process: {other:?}")),
        Err(e) => Report::Error(format!("read from the process: {e}")),
    };
    let _ = ctl.send(&started);
    drop(ch);
    let status = reap(child);
    let _ = ctl.send(&Report::Exited(status));
    Ok(0)
}

/// Common start of both children: die with the helper, wait until placed in the cgroup.
fn child_prologue(sync: UnixStream) -> Option<Channel> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut ch = Channel::new(sync).ok()?;
    match ch.recv::<Command>() {
        Ok(Some(Command::Go)) => Some(ch),
        _ => None,
    }
}

fn child_init(sync: UnixStream, cfg: &InitConfig) -> i32 {
    let Some(mut ch) = child_prologue(sync) else {
        return 1;
    };
    umask(Mode::empty());
    let built = (|| {
        if cfg.new_cgroup_ns {
            unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| sys_msg("unshare the cgroup namespace", e))?;
        }
        rootfs::setup(cfg)
    })();
    match built {
        Ok(mode) => {
            if ch
                .send(&Report::Ready {
                    rootfs: mode.into(),
                })
                .is_err()
            {
                return 1;
            }
        }
        Err(m) => {
            let _ = ch.send(&Report::Error(m));
            return 1;
        }
    }
    match ch.recv::<Command>() {
        Ok(Some(Command::Start)) => {}
        _ => return 1,
    }
    let Err(message) = exec_process(&cfg.process);
    let _ = ch.send(&Report::Error(message));
    127
}

fn child_exec(sync: UnixStream, process: &ProcessConfig) -> i32 {
    let Some(mut ch) = child_prologue(sync) else {
        return 1;
    };
    let Err(message) = exec_process(process);
    let _ = ch.send(&Report::Error(message));
    127
}

/// Default dispositions and an empty mask (the agent ignores SIGPIPE, as every Rust program).
fn reset_signals() {
    for signal in Signal::iterator() {
        if !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: installing the default disposition.
            let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| "a NUL byte in the process's args or env".to_string())
}

/// `argv[0]` as `execve` needs it: as given if it has a slash, else searched in the process's
/// `PATH`.
fn find_executable(arg0: &str, env: &[String]) -> Result<CString, String> {
    if arg0.contains('/') {
        return cstring(arg0);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(arg0);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return cstring(&candidate.to_string_lossy());
        }
    }
    Err(format!("exec {arg0:?}: executable file not found in $PATH"))
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    let mut cap = 0;
    // SAFETY: prctl with integer arguments.
    while cap < 63 && unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap + 1, 0, 0, 0) } >= 0 {
        cap += 1;
    }
    cap as u32
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: a v3 header and the two data words it expects, both live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

fn prctl(
    what: &str,
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
) -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(option, arg2, arg3, 0, 0) } < 0 {
        return Err(sys_msg(what, Errno::last()));
    }
    Ok(())
}

fn set_user_and_capabilities(p: &ProcessConfig) -> Result<(), String> {
    let last = last_cap();
    let supported = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    prctl(
        "keep capabilities across setuid",
        libc::PR_SET_KEEPCAPS,
        1,
        0,
    )?;
    for cap in 0..=last {
        if p.caps.bounding & (1 << cap) == 0 {
            prctl(
                "drop a capability from the bounding set",
                libc::PR_CAPBSET_DROP,
                cap.into(),
                0,
            )?;
        }
    }
    let groups: Vec<Gid> = p
        .user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(|e| sys_msg("setgroups", e))?;
    let gid = Gid::from_raw(p.user.gid);
    setresgid(gid, gid, gid).map_err(|e| sys_msg(format!("setgid {gid}"), e))?;
    let uid = Uid::from_raw(p.user.uid);
    setresuid(uid, uid, uid).map_err(|e| sys_msg(format!("setuid {uid}"), e))?;
    prctl("reset keep-capabilities", libc::PR_SET_KEEPCAPS, 0, 0)?;
    capset(
        p.caps.effective & supported,
        p.caps.permitted & supported,
        p.caps.inheritable & supported,
    )
    .map_err(|e| sys_msg("set the capabilities", e))?;
    prctl(
        "clear the ambient capabilities",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )?;
    for cap in 0..=last {
        if p.caps.ambient & (1 << cap) != 0 {
            prctl(
                "raise an ambient capability",
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap.into(),
            )?;
        }
    }
    Ok(())
}

/// Applies the process settings and execs; returns only on failure, with one line.
fn exec_process(p: &ProcessConfig) -> Result<Infallible, String> {
    reset_signals();
    if p.terminal {
        // fds 0–2 are the slave of the terminal the agent allocated (a descriptor: no path in
        // this root is involved).
        super::tty::make_controlling_terminal()
            .map_err(|e| sys_msg("make the terminal the controlling terminal", e))?;
    }
    umask(Mode::from_bits_truncate(0o022));
    std::env::set_current_dir(&p.cwd).map_err(|e| io_msg(format!("chdir to {:?}", p.cwd), &e))?;
    for r in &p.rlimits {
        let limit = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(r.resource as _, &limit) } != 0 {
            return Err(sys_msg(format!("setrlimit {}", r.resource), Errno::last()));
        }
    }
    if let Some(adj) = p.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| io_msg("set oom_score_adj", &e))?;
    }
    let arg0 = p.args.first().ok_or("no command")?;
    let path = find_executable(arg0, &p.env)?;
    let argv = p
        .args
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = p
        .env
        .iter()
        .map(|e| cstring(e))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(program) = p.seccomp.as_ref().filter(|_| !p.no_new_privileges) {
        seccomp::install(program).map_err(|e| sys_msg("install the seccomp filter", e))?;
    }
    set_user_and_capabilities(p)?;
    if p.no_new_privileges {
        prctl("set no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1, 0)?;
    }
    // Nothing but stdio crosses into the user's command.
    // SAFETY: marks descriptors close-on-exec; no memory is involved.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if let Some(program) = p.seccomp.as_ref().filter(|_| p.no_new_privileges) {
        seccomp::install(program).map_err(|e| sys_msg("install the seccomp filter", e))?;
    }
    let e = match execve(&path, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(sys_msg(format!("exec {arg0:?}"), e))
}
