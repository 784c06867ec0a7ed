//! From the request's OCI [`Spec`] (protobuf) and the pulled image's config JSON to what the
//! container helper runs: [`InitConfig`] (rootfs, mounts, hostname, ...), [`ProcessConfig`]
//! (command, environment, user, capabilities, rlimits, seccomp) and the cgroup [`Resources`].
//!
//! Everything the host sends is checked here, in the agent, so a bad spec fails
//! `CreateContainer` with one line before any process exists.
//!
//! Merging with the image config (`config` of an OCI image config):
//! - args: the spec's `Process.Args`, else the image's `Entrypoint` + `Cmd`;
//! - env: the image's `Env` overlaid by the spec's `Process.Env` (same name: the spec wins), plus
//!   a default `PATH` if neither has one;
//! - cwd: the spec's `Process.Cwd`, else the image's `WorkingDir`, else `/`;
//! - user: the spec's `Process.User` unless it is all zero (root, no extra groups), else the
//!   image's `User` (`uid[:gid]`, or names looked up in the image's `/etc/passwd` and
//!   `/etc/group`).

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use podvm_protocols::oci::{LinuxCapabilities, LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};

use super::rootfs::resolve_in_root;
use super::seccomp::{self, SeccompError, SeccompProgram};

/// The `PATH` a process gets when neither the spec nor the image sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities: what a process gets when the spec has no `Capabilities` (the
/// same list generated policies allow for unprivileged containers).
pub use podvm_policy::generate::DEFAULT_CAPABILITIES;

/// The largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// Why a spec cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec (or the image config) is wrong; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The spec asks for something this agent does not do (yet).
    #[error("{0} is not supported by this agent")]
    Unsupported(String),
    #[error("seccomp profile: {0}")]
    Seccomp(#[from] SeccompError),
}

fn invalid(message: impl Into<String>) -> SpecError {
    SpecError::Invalid(message.into())
}

/// User and groups of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The five capability sets, as bit masks (bit n = capability n).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// One `setrlimit(2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// A process the helper starts: the container's init or an exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: UserIds,
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub seccomp: Option<SeccompProgram>,
    /// `Process.Terminal`: the agent allocates a pseudo-terminal whose slave is the process's
    /// stdin, stdout and stderr and its controlling terminal.
    pub terminal: bool,
    /// `Process.ConsoleSize` as (rows, columns): the terminal's initial window size.
    pub console_size: Option<(u16, u16)>,
}

/// One mount of the container (destination inside the container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub destination: String,
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
}

/// A device node created in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub path: String,
    /// `c` (character) or `b` (block).
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Everything the helper needs to build the container and start its init process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// The unpacked image (stays untouched: it is the overlay's lower layer).
    pub image_rootfs: PathBuf,
    /// The container's state directory: `rootfs/` (where the root is assembled) and `scratch/`
    /// (the tmpfs holding the overlay's upper and work directories).
    pub bundle: PathBuf,
    pub readonly_root: bool,
    /// `private`, `rprivate`, `slave`, `rslave` (default), `shared`, `rshared`.
    pub rootfs_propagation: String,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<DeviceSpec>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctl: Vec<(String, String)>,
    /// Unshare a cgroup namespace once in the container's cgroup.
    pub new_cgroup_ns: bool,
    /// `/sys/fs/cgroup` is cgroup v2: a `cgroup` mount becomes a cgroup2 mount (else skipped).
    pub cgroup2: bool,
    /// `cgroup.procs` of the container's cgroup, if it has one.
    pub cgroup_procs: Option<PathBuf>,
    pub process: ProcessConfig,
}

/// cgroup v2 limits from `linux.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_max: Option<i64>,
    pub memory_low: Option<i64>,
    /// `memory.swap.max`: the spec's memory+swap limit minus the memory limit.
    pub memory_swap_max: Option<i64>,
    pub pids_max: Option<i64>,
    /// `cpu.max`: quota and period, in microseconds.
    pub cpu_max: Option<(i64, u64)>,
    pub cpu_weight: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// A container, decided from its spec: what [`InitConfig`] misses is the bundle and cgroup,
/// which the registry fills in.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub init: InitConfig,
    /// Namespaces the helper unshares before it forks the container's PID 1.
    pub unshare: CloneFlags,
    pub resources: Resources,
    /// The container's seccomp program, also applied to exec processes.
    pub seccomp: Option<SeccompProgram>,
}

/// The part of an OCI image config the runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRuntimeConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<ImageRuntimeConfig>,
}

/// Reads the runtime part of an image config JSON (`{"config": {...}}`).
pub fn parse_image_config(json: &[u8]) -> Result<ImageRuntimeConfig, SpecError> {
    let file: ImageConfigFile = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("the image config is not valid JSON: {e}")))?;
    Ok(file.config.unwrap_or_default())
}

/// Plans the container from its spec, the rootfs it runs on and its image's config.
pub fn plan_container(
    spec: &Spec,
    rootfs: &Path,
    image: Option<&ImageRuntimeConfig>,
) -> Result<ContainerPlan, SpecError> {
    let empty = ImageRuntimeConfig::default();
    let image = image.unwrap_or(&empty);
    let process = spec
        .Process
        .as_ref()
        .ok_or_else(|| invalid("OCI.Process is missing"))?;
    if let Some(hooks) = spec.Hooks.as_ref()
        && !(hooks.Prestart.is_empty() && hooks.Poststart.is_empty() && hooks.Poststop.is_empty())
    {
        return Err(SpecError::Unsupported("OCI.Hooks".into()));
    }
    let linux = spec.Linux.as_ref();
    let seccomp = match linux.and_then(|l| l.Seccomp.as_ref()) {
        Some(profile) => seccomp::compile(profile)?,
        None => None,
    };

    // Command, environment, working directory, user: the spec's, else the image's.
    let mut args = process.Args.clone();
    if args.is_empty() {
        args.extend(image.entrypoint.iter().flatten().cloned());
        args.extend(image.cmd.iter().flatten().cloned());
    }
    if args.is_empty() {
        return Err(invalid(
            "no command: OCI.Process.Args and the image's Entrypoint and Cmd are all empty",
        ));
    }
    let env = merge_env(image.env.as_deref().unwrap_or_default(), &process.Env)?;
    let cwd = if !process.Cwd.is_empty() {
        process.Cwd.clone()
    } else {
        match image.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => dir.to_string(),
            _ => "/".to_string(),
        }
    };
    let spec_user = process.User.as_ref().map(|u| UserIds {
        uid: u.UID,
        gid: u.GID,
        additional_gids: u.AdditionalGids.clone(),
    });
    let user = match (spec_user, image.user.as_deref()) {
        (Some(u), _) if u != UserIds::default() => u,
        (_, Some(name)) if !name.is_empty() => resolve_image_user(rootfs, name)?,
        (u, _) => u.unwrap_or_default(),
    };
    let mut process_config = process_config(process, args, env, cwd, user)?;
    process_config.seccomp = seccomp.clone();

    // Namespaces: always new mount, PID, UTS and IPC ones; network only if asked.
    let mut unshare = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    let mut new_cgroup_ns = false;
    for ns in linux.map(|l| l.Namespaces.as_slice()).unwrap_or_default() {
        match ns.Type.as_str() {
            "pid" | "mount" | "ipc" | "uts" => {
                if !ns.Path.is_empty() {
                    tracing::debug!(r#type = %ns.Type, "namespace path ignored: the container gets its own");
                }
            }
            "network" if ns.Path.is_empty() => unshare |= CloneFlags::CLONE_NEWNET,
            "network" => {
                tracing::debug!("network namespace path ignored: the container uses the pod's")
            }
            "cgroup" => new_cgroup_ns = true,
            "user" => return Err(SpecError::Unsupported("a user namespace".into())),
            "time" => return Err(SpecError::Unsupported("a time namespace".into())),
            other => {
                return Err(invalid(format!(
                    "OCI.Linux.Namespaces: unknown type {other:?}"
                )));
            }
        }
    }
    if linux.is_some_and(|l| !l.UIDMappings.is_empty() || !l.GIDMappings.is_empty()) {
        return Err(SpecError::Unsupported("UID/GID mappings".into()));
    }

    let mounts = if spec.Mounts.is_empty() {
        default_mounts()
    } else {
        spec.Mounts
            .iter()
            .map(|m| {
                if !m.destination.starts_with('/') {
                    return Err(invalid(format!(
                        "OCI.Mounts: destination {:?} is not absolute",
                        m.destination
                    )));
                }
                Ok(MountSpec {
                    destination: m.destination.clone(),
                    source: m.source.clone(),
                    fstype: m.type_.clone(),
                    options: m.options.clone(),
                })
            })
            .collect::<Result<_, _>>()?
    };
    let devices = linux
        .map(|l| l.Devices.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let kind = match d.Type.as_str() {
                "c" | "u" => 'c',
                "b" => 'b',
                other => {
                    return Err(SpecError::Unsupported(format!(
                        "device {:?} of type {other:?}",
                        d.Path
                    )));
                }
            };
            if !d.Path.starts_with("/dev/") {
                return Err(invalid(format!(
                    "OCI.Linux.Devices: {:?} is not below /dev",
                    d.Path
                )));
            }
            Ok(DeviceSpec {
                path: d.Path.clone(),
                kind,
                major: u64::try_from(d.Major)
                    .map_err(|_| invalid(format!("device {:?}: bad major", d.Path)))?,
                minor: u64::try_from(d.Minor)
                    .map_err(|_| invalid(format!("device {:?}: bad minor", d.Path)))?,
                mode: if d.FileMode == 0 {
                    0o666
                } else {
                    d.FileMode & 0o7777
                },
                uid: d.UID,
                gid: d.GID,
            })
        })
        .collect::<Result<_, _>>()?;
    let mut sysctl: Vec<(String, String)> = linux
        .map(|l| {
            l.Sysctl
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    sysctl.sort();
    for (key, _) in &sysctl {
        check_sysctl(key)?;
    }
    let rootfs_propagation = linux
        .map(|l| l.RootfsPropagation.clone())
        .unwrap_or_default();
    if !matches!(
        rootfs_propagation.as_str(),
        "" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
    ) {
        return Err(invalid(format!(
            "OCI.Linux.RootfsPropagation {rootfs_propagation:?} is not one of private, rprivate, slave, rslave, shared, rshared"
        )));
    }
    let resources = linux
        .and_then(|l| l.Resources.as_ref())
        .map(resources)
        .transpose()?
        .unwrap_or_default();

    Ok(ContainerPlan {
        init: InitConfig {
            image_rootfs: rootfs.to_path_buf(),
            bundle: PathBuf::new(),
            readonly_root: spec.Root.as_ref().is_some_and(|r| r.Readonly),
            rootfs_propagation,
            hostname: spec.Hostname.clone(),
            mounts,
            devices,
            masked_paths: linux.map(|l| l.MaskedPaths.clone()).unwrap_or_default(),
            readonly_paths: linux.map(|l| l.ReadonlyPaths.clone()).unwrap_or_default(),
            sysctl,
            new_cgroup_ns,
            cgroup2: false,
            cgroup_procs: None,
            process: process_config,
        },
        unshare,
        resources,
        seccomp,
    })
}

/// The configuration of an exec process (`ExecProcessRequest.process`): no image defaults; the
/// container's seccomp program applies.
pub fn plan_exec(
    process: &Process,
    seccomp: Option<SeccompProgram>,
) -> Result<ProcessConfig, SpecError> {
    if process.Args.is_empty() {
        return Err(invalid("process.Args is empty"));
    }
    let env = merge_env(&[], &process.Env)?;
    let cwd = if process.Cwd.is_empty() {
        "/".to_string()
    } else {
        process.Cwd.clone()
    };
    let user = process
        .User
        .as_ref()
        .map(|u| UserIds {
            uid: u.UID,
            gid: u.GID,
            additional_gids: u.AdditionalGids.clone(),
        })
        .unwrap_or_default();
    let mut config = process_config(process, process.Args.clone(), env, cwd, user)?;
    config.seccomp = seccomp;
    Ok(config)
}

fn process_config(
    process: &Process,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: UserIds,
) -> Result<ProcessConfig, SpecError> {
    if !cwd.starts_with('/') {
        return Err(invalid(format!(
            "the working directory {cwd:?} is not absolute"
        )));
    }
    if args
        .iter()
        .chain(&env)
        .chain([&cwd])
        .any(|s| s.contains('\0'))
    {
        return Err(invalid("a NUL byte in the process's args, env or cwd"));
    }
    let caps = match process.Capabilities.as_ref() {
        Some(c) => cap_sets(c),
        None => {
            let default = cap_mask("default", DEFAULT_CAPABILITIES.iter().copied());
            CapSets {
                bounding: default,
                effective: default,
                permitted: default,
                inheritable: 0,
                ambient: 0,
            }
        }
    };
    let rlimits = process
        .Rlimits
        .iter()
        .map(|r| {
            Ok(Rlimit {
                resource: rlimit_resource(&r.Type)?,
                soft: r.Soft,
                hard: r.Hard,
            })
        })
        .collect::<Result<_, SpecError>>()?;
    Ok(ProcessConfig {
        args,
        env,
        cwd,
        user,
        caps,
        rlimits,
        no_new_privileges: process.NoNewPrivileges,
        oom_score_adj: (process.OOMScoreAdj != 0)
            .then(|| i32::try_from(process.OOMScoreAdj))
            .transpose()
            .map_err(|_| invalid("OCI.Process.OOMScoreAdj is out of range"))?,
        seccomp: None,
        terminal: process.Terminal,
        console_size: console_size(process)?,
    })
}

/// `Process.ConsoleSize` of a terminal process, unless absent or 0x0.
fn console_size(process: &Process) -> Result<Option<(u16, u16)>, SpecError> {
    let Some(size) = process.ConsoleSize.as_ref().filter(|_| process.Terminal) else {
        return Ok(None);
    };
    if size.Height == 0 && size.Width == 0 {
        return Ok(None);
    }
    match (u16::try_from(size.Height), u16::try_from(size.Width)) {
        (Ok(rows), Ok(columns)) => Ok(Some((rows, columns))),
        _ => Err(invalid(format!(
            "OCI.Process.ConsoleSize {}x{} is larger than 65535x65535",
            size.Height, size.Width
        ))),
    }
}

/// `base` overlaid by `overlay`: a name set in both keeps its place and takes the overlay's value.
fn merge_env(base: &[String], overlay: &[String]) -> Result<Vec<String>, SpecError> {
    let mut merged: Vec<String> = Vec::with_capacity(base.len() + overlay.len() + 1);
    for entry in base.iter().chain(overlay) {
        let name = match entry.split_once('=') {
            Some((name, _)) if !name.is_empty() => name,
            // Never echo the entry: it may hold a secret.
            _ => return Err(invalid("an environment entry is not NAME=value")),
        };
        match merged
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(n, _)| n == name))
        {
            Some(existing) => *existing = entry.clone(),
            None => merged.push(entry.clone()),
        }
    }
    if !merged.iter().any(|e| e.starts_with("PATH=")) {
        merged.push(format!("PATH={DEFAULT_PATH}"));
    }
    Ok(merged)
}

fn cap_mask<'a>(set: &str, names: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut mask = 0;
    for name in names {
        let canonical = caps::to_canonical(name);
        match canonical.parse::<caps::Capability>() {
            Ok(cap) => mask |= cap.bitmask(),
            // As runc: a capability this agent does not know is skipped, not fatal.
            Err(_) => tracing::warn!(set, capability = name, "unknown capability ignored"),
        }
    }
    mask
}

fn cap_sets(c: &LinuxCapabilities) -> CapSets {
    let mask = |set, names: &[String]| cap_mask(set, names.iter().map(String::as_str));
    CapSets {
        bounding: mask("bounding", &c.Bounding),
        effective: mask("effective", &c.Effective),
        permitted: mask("permitted", &c.Permitted),
        inheritable: mask("inheritable", &c.Inheritable),
        ambient: mask("ambient", &c.Ambient),
    }
}

fn rlimit_resource(name: &str) -> Result<u32, SpecError> {
    let r = match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        other => {
            return Err(invalid(format!(
                "OCI.Process.Rlimits: unknown type {other:?}"
            )));
        }
    };
    #[allow(clippy::unnecessary_cast)] // u32 on glibc, i32 on musl
    Ok(r as u32)
}

/// Namespaced sysctls only (as runc): IPC ones, `fs.mqueue.*`, and `net.*` (the pod's network
/// namespace is the guest's, so they concern this pod alone).
fn check_sysctl(key: &str) -> Result<(), SpecError> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let ok = IPC.contains(&key)
        || key.starts_with("fs.mqueue.")
        || key.starts_with("net.")
        || key == "kernel.domainname";
    let safe_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !key.split(['.', '/']).any(|p| p.is_empty() || p == "..");
    if ok && safe_chars {
        Ok(())
    } else {
        Err(invalid(format!(
            "OCI.Linux.Sysctl {key:?} is not a namespaced sysctl this agent sets"
        )))
    }
}

fn resources(r: &LinuxResources) -> Result<Resources, SpecError> {
    let mut out = Resources::default();
    if let Some(m) = r.Memory.as_ref() {
        if m.Limit > 0 {
            out.memory_max = Some(m.Limit);
        }
        if m.Reservation > 0 {
            out.memory_low = Some(m.Reservation);
        }
        if m.Swap > 0 {
            match out.memory_max {
                Some(limit) if m.Swap >= limit => out.memory_swap_max = Some(m.Swap - limit),
                _ => {
                    return Err(invalid(
                        "OCI.Linux.Resources.Memory.Swap (memory+swap) needs a Limit no larger than it",
                    ));
                }
            }
        }
    }
    if let Some(p) = r.Pids.as_ref()
        && p.Limit > 0
    {
        out.pids_max = Some(p.Limit);
    }
    if let Some(c) = r.CPU.as_ref() {
        if c.Quota > 0 {
            let period = if c.Period > 0 { c.Period } else { 100_000 };
            out.cpu_max = Some((c.Quota, period));
        }
        if c.Shares > 0 {
            // runc's conversion of cgroup v1 shares [2, 262144] to v2 weight [1, 10000].
            let shares = c.Shares.clamp(2, 262_144);
            out.cpu_weight = Some(1 + ((shares - 2) * 9999) / 262_142);
        }
        if !c.Cpus.is_empty() {
            out.cpuset_cpus = Some(c.Cpus.clone());
        }
        if !c.Mems.is_empty() {
            out.cpuset_mems = Some(c.Mems.clone());
        }
    }
    Ok(out)
}

/// runc's default mounts, for a spec that has none.
pub fn default_mounts() -> Vec<MountSpec> {
    let m = |dest: &str, src: &str, fstype: &str, opts: &[&str]| MountSpec {
        destination: dest.into(),
        source: src.into(),
        fstype: fstype.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// One line of `/etc/passwd` or `/etc/group`.
struct Account {
    name: String,
    id: u32,
    gid: u32,
    members: Vec<String>,
}

/// Parses `name:x:id:...`: passwd lines give the primary gid (field 4), group lines the members.
fn read_accounts(rootfs: &Path, file: &str, group: bool) -> Vec<Account> {
    use std::io::Read;
    let Ok(path) = resolve_in_root(rootfs, Path::new(file)) else {
        return Vec::new();
    };
    let mut text = String::new();
    if std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_ACCOUNT_FILE).read_to_string(&mut text))
        .is_err()
    {
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let id = fields.get(2)?.parse().ok()?;
            Some(Account {
                name: fields[0].to_string(),
                id,
                gid: if group {
                    id
                } else {
                    fields.get(3)?.parse().ok()?
                },
                members: if group {
                    fields
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
            })
        })
        .collect()
}

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) against the image's files.
pub fn resolve_image_user(rootfs: &Path, user: &str) -> Result<UserIds, SpecError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_accounts(rootfs, "/etc/passwd", false);
    let entry =
        match u.parse::<u32>() {
            Ok(uid) => passwd.iter().find(|a| a.id == uid),
            Err(_) => Some(passwd.iter().find(|a| a.name == u).ok_or_else(|| {
                invalid(format!("the image's user {u:?} is not in its /etc/passwd"))
            })?),
        };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|a| a.id).unwrap_or_default(),
    };
    let groups = read_accounts(rootfs, "/etc/group", true);
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|a| a.name == g)
                .map(|a| a.id)
                .ok_or_else(|| {
                    invalid(format!("the image's group {g:?} is not in its /etc/group"))
                })?,
        },
        None => entry.map(|a| a.gid).unwrap_or(0),
    };
    let mut additional_gids: Vec<u32> = match entry {
        Some(a) => groups
            .iter()
            .filter(|grp| grp.id != gid && grp.members.contains(&a.name))
            .map(|grp| grp.id)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.dedup();
    Ok(UserIds {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_protocols::oci::{Linux, LinuxNamespace, User};

    fn spec_with(process: Process) -> Spec {
        Spec {
            Process: Some(process).into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_config_fills_what_the_spec_leaves_empty() {
        let image = parse_image_config(
            br#"{"architecture":"amd64","config":{"User":"1000:1001","Env":["PATH=/img/bin","A=image","B=image"],
                 "Entrypoint":["/bin/entry"],"Cmd":["--flag"],"WorkingDir":"/work"}}"#,
        )
        .unwrap();
        let spec = spec_with(Process {
            Env: vec!["B=spec".into(), "C=spec".into()],
            ..Default::default()
        });
        let plan = plan_container(&spec, Path::new("/nonexistent"), Some(&image)).unwrap();
        let p = &plan.init.process;
        assert_eq!(p.args, ["/bin/entry", "--flag"]);
        assert_eq!(p.env, ["PATH=/img/bin", "A=image", "B=spec", "C=spec"]);
        assert_eq!(p.cwd, "/work");
        assert_eq!(
            p.user,
            UserIds {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![]
            }
        );
        // Docker's default capabilities when the spec has none.
        assert_eq!(
            p.caps.effective.count_ones() as usize,
            DEFAULT_CAPABILITIES.len()
        );
        assert_eq!(p.caps.ambient, 0);
        assert_eq!(plan.init.mounts, default_mounts());
        assert!(plan.unshare.contains(CloneFlags::CLONE_NEWPID));
        assert!(!plan.unshare.contains(CloneFlags::CLONE_NEWNET));

        // The spec's own values win.
        let spec = spec_with(Process {
            Args: vec!["/bin/sh".into()],
            Cwd: "/tmp".into(),
            User: Some(User {
                UID: 5,
                GID: 6,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        });
        let plan = plan_container(&spec, Path::new("/nonexistent"), Some(&image)).unwrap();
        assert_eq!(plan.init.process.args, ["/bin/sh"]);
        assert_eq!(plan.init.process.cwd, "/tmp");
        assert_eq!(plan.init.process.user.uid, 5);
        assert_eq!(
            plan.init.process.env,
            ["PATH=/img/bin", "A=image", "B=image"]
        );
        // Neither sets PATH: Docker's default.
        let plan = plan_container(&spec, Path::new("/nonexistent"), None).unwrap();
        assert_eq!(plan.init.process.env, [format!("PATH={DEFAULT_PATH}")]);
    }

    #[test]
    fn image_user_names_come_from_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/srv:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nweb:x:102:\nlogs:x:200:web,other\n",
        )
        .unwrap();
        let ids = |u| resolve_image_user(root.path(), u);
        assert_eq!(
            ids("web").unwrap(),
            UserIds {
                uid: 101,
                gid: 102,
                additional_gids: vec![200]
            }
        );
        assert_eq!(ids("web:logs").unwrap().gid, 200);
        assert_eq!(ids("101").unwrap().gid, 102);
        assert_eq!(ids("4242").unwrap().gid, 0);
        assert!(
            ids("nobody")
                .unwrap_err()
                .to_string()
                .contains("/etc/passwd")
        );
    }

    #[test]
    fn bad_specs_fail_with_one_line() {
        let no_args = spec_with(Process::default());
        let e = plan_container(&no_args, Path::new("/"), None).unwrap_err();
        assert!(e.to_string().starts_with("no command"), "{e}");

        let mut userns = spec_with(Process {
            Args: vec!["x".into()],
            ..Default::default()
        });
        userns.Linux = Some(Linux {
            Namespaces: vec![LinuxNamespace {
                Type: "user".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .into();
        let e = plan_container(&userns, Path::new("/"), None).unwrap_err();
        assert!(matches!(e, SpecError::Unsupported(_)), "{e}");

        let secret_env = spec_with(Process {
            Args: vec!["x".into()],
            Env: vec!["s3cret-without-name".into()],
            ..Default::default()
        });
        let e = plan_container(&secret_env, Path::new("/"), None).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn terminal_processes_keep_their_env_and_size() {
        let tty = |size: Option<(u32, u32)>| Process {
            Args: vec!["sh".into()],
            Env: vec!["PATH=/bin".into()],
            Terminal: true,
            ConsoleSize: size
                .map(|(h, w)| podvm_protocols::oci::Box {
                    Height: h,
                    Width: w,
                    ..Default::default()
                })
                .into(),
            ..Default::default()
        };
        let plan = plan_container(&spec_with(tty(Some((40, 100)))), Path::new("/"), None).unwrap();
        assert!(plan.init.process.terminal);
        assert_eq!(plan.init.process.console_size, Some((40, 100)));
        // No TERM unless the spec sets one.
        assert_eq!(plan.init.process.env, ["PATH=/bin"]);

        let exec = plan_exec(&tty(None), None).unwrap();
        assert!(exec.terminal);
        assert_eq!(exec.console_size, None);
        assert_eq!(
            plan_exec(&tty(Some((0, 0))), None).unwrap().console_size,
            None
        );
        let e = plan_exec(&tty(Some((70_000, 80))), None).unwrap_err();
        assert!(e.to_string().contains("ConsoleSize"), "{e}");

        let no_tty = Process {
            Terminal: false,
            ..tty(Some((40, 100)))
        };
        let exec = plan_exec(&no_tty, None).unwrap();
        assert_eq!((exec.terminal, exec.console_size), (false, None));
    }
}
