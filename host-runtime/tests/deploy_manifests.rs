//! deploy/*.yaml parse and say what podvm's installer and runtimes expect: a broken manifest
//! fails CI.

use std::path::PathBuf;

use podvm_host_runtime::install::RUNTIMES;
use serde::Deserialize;
use serde_yaml::Value;

fn documents(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

#[test]
fn runtime_classes_match_podvms_runtimes() {
    let docs = documents("runtimeclasses.yaml");
    assert_eq!(docs.len(), 4);
    let names: Vec<&str> = docs
        .iter()
        .map(|d| str_at(d, &["metadata", "name"]).unwrap())
        .collect();
    let expected: Vec<&str> = RUNTIMES.iter().map(|r| r.name).collect();
    assert_eq!(names, expected);
    for doc in &docs {
        let name = str_at(doc, &["metadata", "name"]).unwrap();
        assert_eq!(
            str_at(doc, &["apiVersion"]),
            Some("node.k8s.io/v1"),
            "{name}"
        );
        assert_eq!(str_at(doc, &["kind"]), Some("RuntimeClass"), "{name}");
        assert_eq!(str_at(doc, &["handler"]), Some(name), "{name}");
        assert_eq!(
            str_at(doc, &["overhead", "podFixed", "memory"]),
            Some("160Mi"),
            "{name}"
        );
        assert_eq!(
            str_at(doc, &["overhead", "podFixed", "cpu"]),
            Some("250m"),
            "{name}"
        );
        let selector = doc["scheduling"]["nodeSelector"].as_mapping().unwrap();
        assert_eq!(
            str_at(doc, &["scheduling", "nodeSelector", "podvm.io/runtime"]),
            Some("true"),
            "{name}"
        );
        let hardware = match name {
            "podvm-snp" => Some("podvm.io/snp"),
            "podvm-tdx" => Some("podvm.io/tdx"),
            _ => None,
        };
        assert_eq!(
            selector.len(),
            1 + usize::from(hardware.is_some()),
            "{name}"
        );
        if let Some(label) = hardware {
            assert_eq!(
                str_at(doc, &["scheduling", "nodeSelector", label]),
                Some("true"),
                "{name}"
            );
        }
    }
}

#[test]
fn the_node_installer_is_a_privileged_host_pid_daemonset() {
    let docs = documents("node-installer.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, &["kind"]).unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "DaemonSet"]);
    assert_eq!(
        str_at(&docs[0], &["metadata", "name"]),
        Some("podvm-system")
    );
    for doc in &docs[1..] {
        assert_eq!(
            str_at(doc, &["metadata", "namespace"]),
            Some("podvm-system")
        );
    }
    let ds = &docs[2];
    assert_eq!(str_at(ds, &["apiVersion"]), Some("apps/v1"));
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(
            labels.get(k.as_str().unwrap()),
            Some(v),
            "the selector does not match the pod"
        );
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(
        str_at(pod, &["serviceAccountName"]),
        str_at(&docs[1], &["metadata", "name"])
    );
    assert_eq!(
        str_at(pod, &["nodeSelector", "podvm.io/runtime"]),
        Some("true")
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
    let script: String = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        script.contains(
            "nsenter -t 1 -m -u -i -n -p -- /usr/local/bin/podvm install containerd --restart"
        ),
        "{script}"
    );
    for artifact in ["podvm", "containerd-shim-podvm-v2", "/opt/podvm/guest"] {
        assert!(script.contains(artifact), "{artifact} is not copied");
    }
    // Every mount has a hostPath volume, and the host paths are the ones podvm uses.
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mut host_paths: Vec<&str> = Vec::new();
    for mount in c["volumeMounts"].as_sequence().unwrap() {
        let name = str_at(mount, &["name"]).unwrap();
        let volume = volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"));
        let host = str_at(volume, &["hostPath", "path"]).unwrap();
        assert_eq!(
            str_at(mount, &["mountPath"]),
            Some(format!("/host{host}").as_str())
        );
        host_paths.push(host);
    }
    host_paths.sort();
    assert_eq!(
        host_paths,
        [
            "/etc/containerd",
            "/etc/podvm",
            "/run/podvm",
            "/usr/local/bin",
            "/var/lib/podvm"
        ]
    );
}

#[test]
fn the_dockerfile_copies_the_three_artifacts() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/node-installer/Dockerfile");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("COPY podvm containerd-shim-podvm-v2 /opt/podvm/bin/"));
    assert!(text.contains("COPY guest/ /opt/podvm/guest/"));
}
