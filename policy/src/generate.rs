//! `podvm policy generate`: from a Kubernetes Pod (or Deployment) manifest, the pod's agent policy
//! (`rego/rules.rego` + the pod's `policy_data`), its initdata and the annotation value.
//!
//! What the policy pins, per container: the image (by digest: a tag is refused), the command
//! (`command` + `args`), the environment (`env` values; `valueFrom` names take any value, since the
//! host resolves them), the volume mounts (destination, read-only), privilege (capabilities beyond
//! the runtime's defaults need `privileged: true`) and the working directory. Exec (and stdin)
//! is denied unless `allow_exec`; reading container output unless `allow_logs`.

use serde::Serialize;
use serde_json::Value;

use crate::initdata::{Algorithm, InitData};

/// The rules every generated policy shares.
pub const RULES: &str = include_str!("../rego/rules.rego");

/// Environment variables the runtime (containerd, kubelet) adds to every container; their values
/// come from the host and are not pinned.
pub const HOST_ENV_NAMES: &[&str] = &[
    "PATH",
    "HOSTNAME",
    "HOME",
    "TERM",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_SERVICE_PORT_HTTPS",
    "KUBERNETES_PORT",
    "KUBERNETES_PORT_443_TCP",
    "KUBERNETES_PORT_443_TCP_PROTO",
    "KUBERNETES_PORT_443_TCP_PORT",
    "KUBERNETES_PORT_443_TCP_ADDR",
];

/// The capabilities containerd gives an unprivileged container.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The command of the pause (sandbox) container, which comes from the guest image.
pub const PAUSE_ARGS: &[&str] = &["/pause"];

/// Options of the generator.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub allow_exec: bool,
    pub allow_logs: bool,
    /// The initdata digest algorithm (sha384 if `None`).
    pub algorithm: Option<Algorithm>,
    /// Extra initdata `[data]` entries (e.g. `aa.toml`, `cdh.toml` with the KBS URL).
    pub extra_data: Vec<(String, String)>,
}

/// What the generator produces.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The Rego policy (`policy.rego` of the initdata).
    pub rego: String,
    /// The initdata TOML.
    pub initdata_toml: String,
    /// `io.katacontainers.config.hypervisor.cc_init_data`: base64(gzip(initdata TOML)).
    pub annotation: String,
    /// The pod's data in the policy, for display.
    pub policy_data: Value,
}

/// A manifest the generator cannot turn into a policy: one line, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the manifest is not YAML: {0}")]
    Yaml(String),
    #[error("the manifest has no Pod or Deployment (found kinds: {0})")]
    NoPod(String),
    #[error("{0}")]
    Field(String),
    #[error(transparent)]
    InitData(#[from] crate::initdata::InitDataError),
}

#[derive(Debug, Serialize)]
struct PolicyData {
    pod_name: String,
    pod_name_is_prefix: bool,
    namespace: String,
    allow_exec: bool,
    allow_logs: bool,
    images: Vec<String>,
    containers: Vec<Container>,
    pause_args: Vec<String>,
    host_env_names: Vec<String>,
    default_capabilities: Vec<String>,
    default_mounts: Vec<DefaultMount>,
}

#[derive(Debug, Serialize)]
struct Container {
    name: String,
    image: String,
    args: Vec<String>,
    env: Vec<String>,
    env_from_host: Vec<String>,
    mounts: Vec<VolumeMount>,
    privileged: bool,
    working_dir: String,
}

#[derive(Debug, Serialize)]
struct VolumeMount {
    destination: String,
    readonly: bool,
}

/// A mount the runtime adds to every container. An empty `source` means "a canonical path below
/// the shared directory" (files the host copies in with CopyFile: /etc/hosts, ...).
#[derive(Debug, Clone, Copy, Serialize)]
struct DefaultMount {
    destination: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
}

const DEFAULT_MOUNTS: &[DefaultMount] = &[
    DefaultMount {
        destination: "/proc",
        kind: "proc",
        source: "proc",
    },
    DefaultMount {
        destination: "/dev",
        kind: "tmpfs",
        source: "tmpfs",
    },
    DefaultMount {
        destination: "/dev/pts",
        kind: "devpts",
        source: "devpts",
    },
    DefaultMount {
        destination: "/dev/mqueue",
        kind: "mqueue",
        source: "mqueue",
    },
    DefaultMount {
        destination: "/sys",
        kind: "sysfs",
        source: "sysfs",
    },
    DefaultMount {
        destination: "/sys/fs/cgroup",
        kind: "cgroup",
        source: "cgroup",
    },
    DefaultMount {
        destination: "/dev/shm",
        kind: "tmpfs",
        source: "shm",
    },
    DefaultMount {
        destination: "/etc/hosts",
        kind: "bind",
        source: "",
    },
    DefaultMount {
        destination: "/etc/hostname",
        kind: "bind",
        source: "",
    },
    DefaultMount {
        destination: "/etc/resolv.conf",
        kind: "bind",
        source: "",
    },
    DefaultMount {
        destination: "/dev/termination-log",
        kind: "bind",
        source: "",
    },
];

fn field(msg: String) -> GenerateError {
    GenerateError::Field(msg)
}

fn str_list(v: Option<&Value>, what: &str) -> Result<Vec<String>, GenerateError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(field(format!("{what}: every entry must be a string"))),
            })
            .collect(),
        Some(_) => Err(field(format!("{what} must be a list of strings"))),
    }
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Whether `image` is pinned by a digest (`name@sha256:<64 hex>` or sha384/sha512).
pub fn is_pinned(image: &str) -> bool {
    let Some((_, digest)) = image.rsplit_once('@') else {
        return false;
    };
    let Some((alg, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Finds the first Pod or Deployment in a (multi-document) manifest: `(pod name, is a prefix,
/// namespace, pod spec)`.
fn find_pod(manifest: &str) -> Result<(String, bool, String, Value), GenerateError> {
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let doc: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| GenerateError::Yaml(e.to_string()))?;
        if doc.is_null() {
            continue;
        }
        let kind = get_str(&doc, "kind").unwrap_or("<none>").to_string();
        let meta = doc.get("metadata").cloned().unwrap_or(Value::Null);
        let name = get_str(&meta, "name").unwrap_or("").to_string();
        let namespace = get_str(&meta, "namespace").unwrap_or("").to_string();
        match kind.as_str() {
            "Pod" => {
                let spec = doc
                    .get("spec")
                    .cloned()
                    .ok_or_else(|| field("Pod has no spec".into()))?;
                if name.is_empty() {
                    return Err(field("Pod metadata.name is missing".into()));
                }
                return Ok((name, false, namespace, spec));
            }
            "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet" | "Job" => {
                let spec = doc
                    .pointer("/spec/template/spec")
                    .cloned()
                    .ok_or_else(|| field(format!("{kind} has no spec.template.spec")))?;
                if name.is_empty() {
                    return Err(field(format!("{kind} metadata.name is missing")));
                }
                return Ok((name, true, namespace, spec));
            }
            _ => kinds.push(kind),
        }
    }
    Err(GenerateError::NoPod(if kinds.is_empty() {
        "none".into()
    } else {
        kinds.join(", ")
    }))
}

fn container(c: &Value, index: usize) -> Result<Container, GenerateError> {
    let name = get_str(c, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| field(format!("containers[{index}].name is missing")))?
        .to_string();
    let image = get_str(c, "image")
        .ok_or_else(|| field(format!("container {name}: image is missing")))?
        .to_string();
    if !is_pinned(&image) {
        return Err(field(format!(
            "container {name}: image {image:?} is not pinned by digest; use <name>@sha256:<digest>"
        )));
    }
    let mut args = str_list(c.get("command"), &format!("container {name}: command"))?;
    if args.is_empty() {
        return Err(field(format!(
            "container {name}: no command; the policy pins the command line, so set `command` \
             (the image's entrypoint is not read offline)"
        )));
    }
    args.extend(str_list(c.get("args"), &format!("container {name}: args"))?);

    let mut env = Vec::new();
    let mut env_from_host = Vec::new();
    if let Some(list) = c.get("env").and_then(Value::as_array) {
        for (i, e) in list.iter().enumerate() {
            let ename = get_str(e, "name")
                .ok_or_else(|| field(format!("container {name}: env[{i}].name is missing")))?;
            if e.get("valueFrom").is_some() {
                env_from_host.push(ename.to_string());
            } else {
                let value = match e.get("value") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                env.push(format!("{ename}={value}"));
            }
        }
    }
    if c.get("envFrom").is_some() {
        return Err(field(format!(
            "container {name}: envFrom cannot be pinned (its names are unknown offline); list the variables in env"
        )));
    }
    let mut mounts = Vec::new();
    if let Some(list) = c.get("volumeMounts").and_then(Value::as_array) {
        for (i, m) in list.iter().enumerate() {
            let destination = get_str(m, "mountPath").ok_or_else(|| {
                field(format!(
                    "container {name}: volumeMounts[{i}].mountPath is missing"
                ))
            })?;
            mounts.push(VolumeMount {
                destination: destination.to_string(),
                readonly: m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
            });
        }
    }
    let privileged = c
        .pointer("/securityContext/privileged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Container {
        name,
        image,
        args,
        env,
        env_from_host,
        mounts,
        privileged,
        working_dir: get_str(c, "workingDir").unwrap_or("").to_string(),
    })
}

/// Generates the policy, initdata and annotation for the first Pod/Deployment in `manifest`.
pub fn generate(manifest: &str, options: &GenerateOptions) -> Result<Generated, GenerateError> {
    let (pod_name, pod_name_is_prefix, namespace, spec) = find_pod(manifest)?;
    let mut containers = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec.get(key).and_then(Value::as_array) {
            for c in list {
                containers.push(container(c, containers.len())?);
            }
        }
    }
    if containers.is_empty() {
        return Err(field(format!("{pod_name}: the pod spec has no containers")));
    }
    let mut images: Vec<String> = containers.iter().map(|c| c.image.clone()).collect();
    images.sort();
    images.dedup();
    let data = PolicyData {
        pod_name,
        pod_name_is_prefix,
        namespace,
        allow_exec: options.allow_exec,
        allow_logs: options.allow_logs,
        images,
        containers,
        pause_args: PAUSE_ARGS.iter().map(|s| s.to_string()).collect(),
        host_env_names: HOST_ENV_NAMES.iter().map(|s| s.to_string()).collect(),
        default_capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        default_mounts: DEFAULT_MOUNTS.to_vec(),
    };
    let policy_data = serde_json::to_value(&data).expect("policy data serialises");
    let rego = format!(
        "{RULES}\npolicy_data := {}\n",
        serde_json::to_string_pretty(&policy_data).expect("policy data serialises")
    );
    let mut entries = vec![("policy.rego".to_string(), rego.clone())];
    entries.extend(options.extra_data.iter().cloned());
    let initdata = InitData::build(options.algorithm.unwrap_or(Algorithm::Sha384), &entries)?;
    Ok(Generated {
        rego,
        annotation: initdata.annotation(),
        initdata_toml: initdata.toml().to_string(),
        policy_data,
    })
}
