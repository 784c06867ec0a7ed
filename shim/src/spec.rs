//! The bundle's `config.json` (OCI runtime spec, JSON) → the agent's `CreateContainerRequest`
//! (Kata's protobuf OCI spec), and an exec's process JSON → `ExecProcessRequest`.
//!
//! What crosses into the guest: the process (args, env, cwd, user, terminal, capabilities,
//! rlimits, no_new_privileges, OOM score), the hostname, the root's read-only flag, the
//! annotations, and from `linux`: the namespace types, the cgroup resources (memory, CPU, pids,
//! hugepages), the seccomp profile, sysctls, masked and read-only paths. Mounts of kernel
//! filesystems (proc, sysfs, tmpfs, devpts, mqueue, cgroup) are passed as they are; bind mounts
//! name host paths the guest does not have and are left out (logged; host volumes are the
//! networking/volumes work). Namespace *paths* name host namespaces and are dropped (the agent
//! makes the guest's own). Devices, hooks and ID mappings are host-side and are not passed.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use podvm_protocols::agent::{CreateContainerRequest, ExecProcessRequest, Storage};
use podvm_protocols::oci;
use serde::Deserialize;

/// Where the guest mounts a task's rootfs disk (below the agent's storage root).
pub fn guest_rootfs(container_id: &str) -> String {
    format!("/run/podvm/storage/{container_id}")
}

/// The CRI plugin's annotations: which sandbox a container belongs to, and whether it is the
/// sandbox (pause) container itself.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Where a container's root filesystem comes from in the guest.
#[derive(Debug, Clone, Copy)]
pub enum GuestRoot<'a> {
    /// The VM's rootfs disk (the pod's first container), with its virtio-blk driver
    /// (`mmioblk` on microvm, `blk` on q35).
    Disk { disk: &'a str, driver: &'a str },
    /// Copied into the guest with `CopyFile` (a container that joined the running pod).
    Copied,
    /// Pulled inside the guest for this container (`PullImage`): the agent runs the container
    /// on that image whatever `OCI.Root.Path` says.
    Pulled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeSpec {
    oci_version: String,
    process: Option<RuntimeProcess>,
    root: Option<RuntimeRoot>,
    hostname: String,
    mounts: Vec<RuntimeMount>,
    annotations: BTreeMap<String, String>,
    linux: Option<RuntimeLinux>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeProcess {
    terminal: bool,
    console_size: Option<RuntimeBox>,
    user: RuntimeUser,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Option<RuntimeCapabilities>,
    rlimits: Vec<RuntimeRlimit>,
    no_new_privileges: bool,
    oom_score_adj: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeBox {
    height: u32,
    width: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    username: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeCapabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeRlimit {
    #[serde(rename = "type")]
    kind: String,
    hard: u64,
    soft: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeRoot {
    readonly: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeMount {
    destination: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeLinux {
    sysctl: BTreeMap<String, String>,
    resources: Option<RuntimeResources>,
    namespaces: Vec<RuntimeNamespace>,
    seccomp: Option<RuntimeSeccomp>,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimeNamespace {
    #[serde(rename = "type")]
    kind: String,
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeResources {
    memory: Option<RuntimeMemory>,
    cpu: Option<RuntimeCpu>,
    pids: Option<RuntimePids>,
    hugepage_limits: Vec<RuntimeHugepageLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeMemory {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
    swappiness: Option<u64>,
    disable_oom_killer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeCpu {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: String,
    mems: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuntimePids {
    limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeHugepageLimit {
    page_size: String,
    limit: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeSeccomp {
    default_action: String,
    architectures: Vec<String>,
    flags: Vec<String>,
    syscalls: Vec<RuntimeSyscall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeSyscall {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    args: Vec<RuntimeSeccompArg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeSeccompArg {
    index: u64,
    value: u64,
    value_two: u64,
    op: String,
}

/// Filesystem types the guest provides itself; other mounts (binds) name host paths.
const GUEST_FILESYSTEMS: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

fn process(p: RuntimeProcess) -> anyhow::Result<oci::Process> {
    if p.args.is_empty() {
        bail!("no process.args");
    }
    let mut process = oci::Process::new();
    process.Terminal = p.terminal;
    if let Some(size) = p.console_size {
        process.ConsoleSize = Some(oci::Box {
            Height: size.height,
            Width: size.width,
            ..Default::default()
        })
        .into();
    }
    process.Args = p.args;
    process.Env = p.env;
    process.Cwd = if p.cwd.is_empty() {
        "/".to_string()
    } else {
        p.cwd
    };
    process.User = Some(oci::User {
        UID: p.user.uid,
        GID: p.user.gid,
        AdditionalGids: p.user.additional_gids,
        Username: p.user.username,
        ..Default::default()
    })
    .into();
    if let Some(c) = p.capabilities {
        process.Capabilities = Some(oci::LinuxCapabilities {
            Bounding: c.bounding,
            Effective: c.effective,
            Inheritable: c.inheritable,
            Permitted: c.permitted,
            Ambient: c.ambient,
            ..Default::default()
        })
        .into();
    }
    process.Rlimits = p
        .rlimits
        .into_iter()
        .map(|r| oci::POSIXRlimit {
            Type: r.kind,
            Hard: r.hard,
            Soft: r.soft,
            ..Default::default()
        })
        .collect();
    process.NoNewPrivileges = p.no_new_privileges;
    process.OOMScoreAdj = p.oom_score_adj.unwrap_or(0);
    Ok(process)
}

fn resources(r: RuntimeResources) -> oci::LinuxResources {
    let mut out = oci::LinuxResources::new();
    if let Some(m) = r.memory {
        out.Memory = Some(oci::LinuxMemory {
            Limit: m.limit.unwrap_or(0),
            Reservation: m.reservation.unwrap_or(0),
            Swap: m.swap.unwrap_or(0),
            Swappiness: m.swappiness.unwrap_or(0),
            DisableOOMKiller: m.disable_oom_killer.unwrap_or(false),
            ..Default::default()
        })
        .into();
    }
    if let Some(c) = r.cpu {
        out.CPU = Some(oci::LinuxCPU {
            Shares: c.shares.unwrap_or(0),
            Quota: c.quota.unwrap_or(0),
            Period: c.period.unwrap_or(0),
            // Host CPU and NUMA numbers mean nothing in the guest.
            Cpus: String::new(),
            Mems: String::new(),
            ..Default::default()
        })
        .into();
        if !c.cpus.is_empty() || !c.mems.is_empty() {
            log::info!(
                "cpuset {:?}/{:?} names host CPUs: not passed to the guest",
                c.cpus,
                c.mems
            );
        }
    }
    if let Some(p) = r.pids {
        out.Pids = Some(oci::LinuxPids {
            Limit: p.limit,
            ..Default::default()
        })
        .into();
    }
    out.HugepageLimits = r
        .hugepage_limits
        .into_iter()
        .map(|h| oci::LinuxHugepageLimit {
            Pagesize: h.page_size,
            Limit: h.limit,
            ..Default::default()
        })
        .collect();
    out
}

fn seccomp(s: RuntimeSeccomp) -> oci::LinuxSeccomp {
    oci::LinuxSeccomp {
        DefaultAction: s.default_action,
        Architectures: s.architectures,
        Flags: s.flags,
        Syscalls: s
            .syscalls
            .into_iter()
            .map(|c| oci::LinuxSyscall {
                Names: c.names,
                Action: c.action,
                ErrnoRet: c.errno_ret.map(oci::linux_syscall::ErrnoRet::Errnoret),
                Args: c
                    .args
                    .into_iter()
                    .map(|a| oci::LinuxSeccompArg {
                        Index: a.index,
                        Value: a.value,
                        ValueTwo: a.value_two,
                        Op: a.op,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn linux(l: RuntimeLinux) -> oci::Linux {
    let mut out = oci::Linux::new();
    out.Sysctl = l.sysctl.into_iter().collect();
    if let Some(r) = l.resources {
        out.Resources = Some(resources(r)).into();
    }
    out.Namespaces = l
        .namespaces
        .into_iter()
        // The guest has no cgroup namespace setup of the host's kind to join; the agent makes
        // its own mount/PID/UTS/IPC (and network if asked) namespaces.
        .filter(|n| n.kind != "cgroup")
        .map(|n| oci::LinuxNamespace {
            Type: n.kind,
            Path: String::new(),
            ..Default::default()
        })
        .collect();
    if let Some(s) = l.seccomp {
        out.Seccomp = Some(seccomp(s)).into();
    }
    out.MaskedPaths = l.masked_paths;
    out.ReadonlyPaths = l.readonly_paths;
    out
}

/// The bundle's annotations (the pod's, for a CRI container).
pub fn annotations(config_json: &[u8]) -> anyhow::Result<BTreeMap<String, String>> {
    let runtime: RuntimeSpec =
        serde_json::from_slice(config_json).context("the bundle's config.json is not valid")?;
    Ok(runtime.annotations)
}

/// Builds the agent's request for `container_id` from `config.json`'s text, with its root
/// filesystem from `root`.
///
/// PID namespaces of a pod: the CRI sandbox container creates the pod's shared one
/// (`sandbox_pidns`), and a container whose spec joins the sandbox's PID namespace (a namespace
/// *path*: `shareProcessNamespace`) joins it in the guest.
pub fn create_container_request(
    container_id: &str,
    config_json: &[u8],
    root: GuestRoot,
) -> anyhow::Result<CreateContainerRequest> {
    let runtime: RuntimeSpec =
        serde_json::from_slice(config_json).context("the bundle's config.json is not valid")?;
    let Some(p) = runtime.process else {
        bail!("the bundle's config.json has no process");
    };
    let process = process(p).context("the bundle's config.json")?;

    let is_sandbox = runtime
        .annotations
        .get(CRI_CONTAINER_TYPE)
        .is_some_and(|t| t == "sandbox");
    let joins_pidns = runtime.linux.as_ref().is_some_and(|l| {
        l.namespaces
            .iter()
            .any(|n| n.kind == "pid" && !n.path.is_empty())
    });
    let (root_path, storages) = match root {
        GuestRoot::Disk { disk, driver } => {
            let mount_point = guest_rootfs(container_id);
            let storage = Storage {
                driver: driver.to_string(),
                source: disk.to_string(),
                fstype: "ext4".to_string(),
                options: vec!["ro".to_string()],
                mount_point: mount_point.clone(),
                ..Default::default()
            };
            (mount_point, vec![storage])
        }
        GuestRoot::Copied => (crate::rootfs::guest_copied_rootfs(container_id), vec![]),
        GuestRoot::Pulled => (String::new(), vec![]),
    };
    let mut spec = oci::Spec::new();
    spec.Version = runtime.oci_version;
    spec.Process = Some(process).into();
    spec.Root = Some(oci::Root {
        Path: root_path,
        Readonly: runtime.root.is_some_and(|r| r.readonly),
        ..Default::default()
    })
    .into();
    spec.Hostname = runtime.hostname;
    spec.Mounts = runtime
        .mounts
        .into_iter()
        .filter(|m| {
            let guest = GUEST_FILESYSTEMS.contains(&m.kind.as_str());
            if !guest {
                log::info!(
                    "mount {} ({} from {}) names a host path: not passed to the guest",
                    m.destination,
                    m.kind,
                    m.source
                );
            }
            guest
        })
        .map(|m| oci::Mount {
            destination: m.destination,
            source: m.source,
            type_: m.kind,
            options: m.options,
            ..Default::default()
        })
        .collect();
    spec.Annotations = runtime.annotations.into_iter().collect();
    if let Some(l) = runtime.linux {
        spec.Linux = Some(linux(l)).into();
    }
    Ok(CreateContainerRequest {
        container_id: container_id.to_string(),
        exec_id: container_id.to_string(),
        OCI: Some(spec).into(),
        storages,
        sandbox_pidns: is_sandbox || joins_pidns,
        ..Default::default()
    })
}

/// Builds the agent's `ExecProcess` for an exec's process (containerd's `ExecProcessRequest.spec`,
/// the OCI process as JSON).
pub fn exec_process_request(
    container_id: &str,
    exec_id: &str,
    process_json: &[u8],
) -> anyhow::Result<ExecProcessRequest> {
    let p: RuntimeProcess =
        serde_json::from_slice(process_json).context("the exec's process spec is not valid")?;
    Ok(ExecProcessRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        process: Some(process(p).context("the exec's process spec")?).into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: GuestRoot = GuestRoot::Disk {
        disk: "/dev/vda",
        driver: "mmioblk",
    };

    /// What `ctr run` writes (abridged from containerd 1.6's default spec).
    const CTR_CONFIG: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
            "args": ["/bin/sh", "-c", "uname -r; exit 3"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "t1",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}]}
    }"#;

    #[test]
    fn ctr_run_spec_becomes_an_agent_request_with_the_rootfs_disk() {
        let req = create_container_request("t1", CTR_CONFIG.as_bytes(), DISK).unwrap();
        assert_eq!(req.container_id, "t1");
        assert_eq!(req.exec_id, "t1");
        let spec = req.OCI.as_ref().unwrap();
        let process = spec.Process.as_ref().unwrap();
        assert_eq!(process.Args, ["/bin/sh", "-c", "uname -r; exit 3"]);
        assert_eq!(process.Cwd, "/");
        assert!(process.NoNewPrivileges);
        assert_eq!(process.User.AdditionalGids, [10]);
        assert_eq!(process.Capabilities.Bounding, ["CAP_CHOWN"]);
        assert_eq!(spec.Root.Path, "/run/podvm/storage/t1");
        assert!(!spec.Root.Readonly);
        assert_eq!(spec.Hostname, "t1");
        assert_eq!(req.storages.len(), 1);
        let s = &req.storages[0];
        assert_eq!(
            (s.driver.as_str(), s.source.as_str(), s.fstype.as_str()),
            ("mmioblk", "/dev/vda", "ext4")
        );
        assert_eq!(s.mount_point, spec.Root.Path);
    }

    /// What the CRI plugin writes, abridged: limits, seccomp, a host bind mount, namespace paths.
    const CRI_CONFIG: &str = r#"{
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 1000, "gid": 1000},
            "args": ["/app"], "cwd": "/srv",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
            "oomScoreAdj": 999
        },
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/x/hosts", "options": ["rbind", "ro"]}
        ],
        "annotations": {"io.kubernetes.cri.container-type": "container"},
        "linux": {
            "resources": {
                "memory": {"limit": 67108864},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-3"},
                "pids": {"limit": 64}
            },
            "namespaces": [
                {"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "cgroup"}
            ],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ]
            },
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    }"#;

    #[test]
    fn limits_seccomp_and_guest_mounts_cross_host_paths_do_not() {
        let req = create_container_request("c1", CRI_CONFIG.as_bytes(), GuestRoot::Copied).unwrap();
        let spec = req.OCI.as_ref().unwrap();
        let process = spec.Process.as_ref().unwrap();
        assert_eq!(process.User.UID, 1000);
        assert_eq!(process.Cwd, "/srv");
        assert_eq!(process.OOMScoreAdj, 999);
        assert_eq!(process.Rlimits.len(), 1);
        assert_eq!(
            (process.Rlimits[0].Type.as_str(), process.Rlimits[0].Soft),
            ("RLIMIT_NOFILE", 1024)
        );
        assert!(spec.Root.Readonly);
        // The proc mount crosses; the bind mount of a host file does not.
        assert_eq!(spec.Mounts.len(), 1);
        assert_eq!(spec.Mounts[0].destination, "/proc");
        assert_eq!(spec.Mounts[0].options, ["nosuid"]);
        let linux = spec.Linux.as_ref().unwrap();
        let r = linux.Resources.as_ref().unwrap();
        assert_eq!(r.Memory.Limit, 64 << 20);
        assert_eq!(
            (r.CPU.Shares, r.CPU.Quota, r.CPU.Period),
            (512, 50000, 100000)
        );
        assert_eq!(r.CPU.Cpus, "", "host CPU numbers do not cross");
        assert_eq!(r.Pids.Limit, 64);
        // Namespace types cross, host paths do not; no cgroup namespace.
        let ns: Vec<_> = linux
            .Namespaces
            .iter()
            .map(|n| (n.Type.as_str(), n.Path.as_str()))
            .collect();
        assert_eq!(ns, [("pid", ""), ("ipc", ""), ("network", "")]);
        let seccomp = linux.Seccomp.as_ref().unwrap();
        assert_eq!(seccomp.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(seccomp.Syscalls.len(), 3);
        assert_eq!(seccomp.Syscalls[1].Args[0].Value, 8);
        assert_eq!(seccomp.Syscalls[1].Args[0].Op, "SCMP_CMP_EQ");
        assert_eq!(seccomp.Syscalls[2].errnoret(), 1);
        assert_eq!(linux.Sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(linux.MaskedPaths, ["/proc/kcore"]);
        assert_eq!(linux.ReadonlyPaths, ["/proc/sys"]);
        assert_eq!(
            annotations(CRI_CONFIG.as_bytes()).unwrap()["io.kubernetes.cri.container-type"],
            "container"
        );
        // Copied into the guest: no storage, the root below the shared directory.
        assert_eq!(spec.Root.Path, "/run/podvm/shared/c1/rootfs");
        assert!(req.storages.is_empty());
        assert!(
            !req.sandbox_pidns,
            "its own PID namespace (no path to join)"
        );
    }

    #[test]
    fn the_sandbox_makes_the_pods_pid_namespace_and_sharing_containers_join_it() {
        let sandbox = r#"{"process": {"args": ["/pause"]},
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "linux": {"namespaces": [{"type": "pid"}]}}"#;
        let req = create_container_request("s", sandbox.as_bytes(), DISK).unwrap();
        assert!(req.sandbox_pidns);
        let sharing = r#"{"process": {"args": ["/app"]},
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/7/ns/pid"}]}}"#;
        let req = create_container_request("c", sharing.as_bytes(), GuestRoot::Copied).unwrap();
        assert!(req.sandbox_pidns);
        let own = r#"{"process": {"args": ["/app"]}, "linux": {"namespaces": [{"type": "pid"}]}}"#;
        let req = create_container_request("c", own.as_bytes(), GuestRoot::Copied).unwrap();
        assert!(!req.sandbox_pidns);
    }

    #[test]
    fn an_exec_process_becomes_an_agent_exec_request() {
        let process =
            br#"{"args": ["/bin/sh", "-c", "id"], "env": ["A=1"], "cwd": "", "terminal": true,
            "consoleSize": {"height": 40, "width": 100}, "user": {"uid": 5, "gid": 6}}"#;
        let req = exec_process_request("c1", "x1", process).unwrap();
        assert_eq!(
            (req.container_id.as_str(), req.exec_id.as_str()),
            ("c1", "x1")
        );
        let p = req.process.as_ref().unwrap();
        assert_eq!(p.Args, ["/bin/sh", "-c", "id"]);
        assert_eq!(p.Cwd, "/");
        assert!(p.Terminal);
        assert_eq!((p.ConsoleSize.Height, p.ConsoleSize.Width), (40, 100));
        assert_eq!((p.User.UID, p.User.GID), (5, 6));
        let e = exec_process_request("c1", "x1", br#"{"args": []}"#).unwrap_err();
        assert!(format!("{e:#}").contains("no process.args"), "{e:#}");
    }

    #[test]
    fn a_spec_without_a_process_is_refused() {
        let e = create_container_request("t1", br#"{"ociVersion":"1.0.2"}"#, DISK).unwrap_err();
        assert!(e.to_string().contains("no process"), "{e}");
        assert!(create_container_request("t1", b"{", DISK).is_err());
    }
}
