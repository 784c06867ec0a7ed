//! The bundle's `config.json` (OCI runtime spec, JSON) → the agent's `CreateContainerRequest`
//! (Kata's protobuf OCI spec). This first cut carries the process (args, env, cwd, user, terminal,
//! capabilities, no_new_privileges), the hostname, the root's read-only flag and the annotations;
//! the spec's mounts, namespaces, resources and seccomp profile are left to the agent's defaults
//! (runc's default mounts, fresh namespaces, its default seccomp profile).

use anyhow::{Context, bail};
use podvm_protocols::agent::{CreateContainerRequest, Storage};
use podvm_protocols::oci;
use serde::Deserialize;

/// Where the guest mounts a task's rootfs disk (below the agent's storage root).
pub fn guest_rootfs(container_id: &str) -> String {
    format!("/run/podvm/storage/{container_id}")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeSpec {
    oci_version: String,
    process: Option<RuntimeProcess>,
    root: Option<RuntimeRoot>,
    hostname: String,
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeProcess {
    terminal: bool,
    user: RuntimeUser,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Option<RuntimeCapabilities>,
    no_new_privileges: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RuntimeUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
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
struct RuntimeRoot {
    readonly: bool,
}

/// Builds the agent's request for `container_id` from `config.json`'s text; the rootfs is the
/// disk the VM has as `disk` (`/dev/vda`), with the virtio-blk `driver` (`mmioblk` on microvm,
/// `blk` on q35).
pub fn create_container_request(
    container_id: &str,
    config_json: &[u8],
    disk: &str,
    driver: &str,
) -> anyhow::Result<CreateContainerRequest> {
    let runtime: RuntimeSpec =
        serde_json::from_slice(config_json).context("the bundle's config.json is not valid")?;
    let Some(p) = runtime.process else {
        bail!("the bundle's config.json has no process");
    };
    if p.args.is_empty() {
        bail!("the bundle's config.json has no process.args");
    }
    let mut process = oci::Process::new();
    process.Terminal = p.terminal;
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
    process.NoNewPrivileges = p.no_new_privileges;

    let mount_point = guest_rootfs(container_id);
    let mut spec = oci::Spec::new();
    spec.Version = runtime.oci_version;
    spec.Process = Some(process).into();
    spec.Root = Some(oci::Root {
        Path: mount_point.clone(),
        Readonly: runtime.root.is_some_and(|r| r.readonly),
        ..Default::default()
    })
    .into();
    spec.Hostname = runtime.hostname;
    spec.Annotations = runtime.annotations.into_iter().collect();
    Ok(CreateContainerRequest {
        container_id: container_id.to_string(),
        exec_id: container_id.to_string(),
        OCI: Some(spec).into(),
        storages: vec![Storage {
            driver: driver.to_string(),
            source: disk.to_string(),
            fstype: "ext4".to_string(),
            options: vec!["ro".to_string()],
            mount_point,
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let req =
            create_container_request("t1", CTR_CONFIG.as_bytes(), "/dev/vda", "mmioblk").unwrap();
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

    #[test]
    fn a_spec_without_a_process_is_refused() {
        let e = create_container_request("t1", br#"{"ociVersion":"1.0.2"}"#, "/dev/vda", "blk")
            .unwrap_err();
        assert!(e.to_string().contains("no process"), "{e}");
        assert!(create_container_request("t1", b"{", "/dev/vda", "blk").is_err());
    }
}
