//! The generator: the policy for `testdata/pod.yaml` admits exactly that pod's containers.

use podvm_policy::{AgentPolicy, GenerateOptions, InitData, PolicyOrigin, generate};
use serde_json::{Value, json};

fn testdata(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

fn web() -> Value {
    serde_json::from_str(&testdata("CreateContainerRequest/web.json")).unwrap()
}

/// A CreateContainerRequest as containerd would send it for container `name` of the manifest.
fn request_for(
    id: &str,
    name: &str,
    image: &str,
    args: &[&str],
    env: &[&str],
    mounts: &[(&str, bool)],
) -> Value {
    let mut r = web();
    r["container_id"] = id.into();
    r["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = name.into();
    r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = image.into();
    r["OCI"]["Process"]["Args"] = json!(args);
    let mut all_env = vec!["PATH=/usr/bin:/bin".to_string(), "HOSTNAME=web".into()];
    all_env.extend(env.iter().map(|s| s.to_string()));
    r["OCI"]["Process"]["Env"] = json!(all_env);
    let mut m: Vec<Value> = web()["OCI"]["Mounts"].as_array().unwrap()[..10].to_vec();
    for (dest, ro) in mounts {
        m.push(json!({"destination": dest, "source": format!("/run/podvm/shared/containers/{id}{}", dest.replace('/', "-")),
            "type": "bind", "options": ["rbind", if *ro { "ro" } else { "rw" }]}));
    }
    r["OCI"]["Mounts"] = Value::Array(m);
    r
}

const DEPLOYMENT: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: prod}
spec:
  template:
    spec:
      initContainers:
        - name: migrate
          image: registry.example/api@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
          command: ["/migrate", "--up"]
      containers:
        - name: api
          image: registry.example/api@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
          command: ["/api"]
          env:
            - {name: LEVEL, value: "3"}
          workingDir: /srv
          securityContext: {privileged: true}
"#;

#[test]
fn generated_policy_admits_exactly_the_pods_containers() {
    let g = generate(DEPLOYMENT, &GenerateOptions::default()).unwrap();
    let mut p = AgentPolicy::new(&g.rego, PolicyOrigin::Other("deployment".into())).unwrap();
    let a = "registry.example/api@sha256:".to_string() + &"a".repeat(64);
    let b = "registry.example/api@sha256:".to_string() + &"b".repeat(64);
    let with_pod = |mut r: Value| {
        r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = "api-7d9f-x2x".into();
        r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"] = "prod".into();
        r
    };
    let mut migrate = with_pod(request_for(
        "m1",
        "migrate",
        &a,
        &["/migrate", "--up"],
        &[],
        &[],
    ));
    migrate["OCI"]["Process"]["Cwd"] = "/".into();
    let d = p.evaluate("CreateContainerRequest", &migrate);
    assert!(d.allowed, "{d}");
    let mut api = with_pod(request_for("a1", "api", &b, &["/api"], &["LEVEL=3"], &[]));
    api["OCI"]["Process"]["Cwd"] = "/srv".into();
    // Privileged: capabilities beyond the defaults are fine.
    api["OCI"]["Process"]["Capabilities"]["Bounding"]
        .as_array_mut()
        .unwrap()
        .push("CAP_SYS_ADMIN".into());
    let d = p.evaluate("CreateContainerRequest", &api);
    assert!(d.allowed, "{d}");

    // Anything else is refused: the images swapped, another working dir, another pod name.
    let mut swapped = api.clone();
    swapped["container_id"] = "a2".into();
    swapped["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = a.clone().into();
    assert!(!p.evaluate("CreateContainerRequest", &swapped).allowed);
    let mut cwd = api.clone();
    cwd["container_id"] = "a3".into();
    cwd["OCI"]["Process"]["Cwd"] = "/tmp".into();
    let d = p.evaluate("CreateContainerRequest", &cwd);
    assert!(!d.allowed && d.reason.contains("OCI.Process.Cwd"), "{d}");
    let mut other = api.clone();
    other["container_id"] = "a4".into();
    other["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = "apix-1".into();
    assert!(!p.evaluate("CreateContainerRequest", &other).allowed);
    assert!(p.evaluate("PullImageRequest", &json!({"image": a})).allowed);
    assert!(
        !p.evaluate(
            "PullImageRequest",
            &json!({"image": "registry.example/api:latest"})
        )
        .allowed
    );
}

#[test]
fn sample_pod_containers_pass_and_others_do_not() {
    let g = generate(&testdata("pod.yaml"), &GenerateOptions::default()).unwrap();
    let mut p = AgentPolicy::new(&g.rego, PolicyOrigin::Other("pod".into())).unwrap();
    let web_image = "registry.example/shop/web@sha256:".to_string() + &"1".repeat(64);
    let proxy_image = "registry.example/shop/proxy@sha256:".to_string() + &"2".repeat(64);
    let web = |id: &str| {
        let mut r = request_for(
            id,
            "web",
            &web_image,
            &["/usr/bin/web-server", "--port", "8080"],
            &["MODE=production", "DB_PASSWORD=from-a-secret"],
            &[("/etc/web", true), ("/var/cache/web", false)],
        );
        r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"] = "shop".into();
        r
    };
    let sidecar = |id: &str| {
        let mut r = request_for(
            id,
            "sidecar",
            &proxy_image,
            &["/proxy", "--upstream", "127.0.0.1:8080"],
            &[],
            &[],
        );
        r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"] = "shop".into();
        r
    };
    assert!(p.evaluate("CreateContainerRequest", &web("w1")).allowed);
    assert!(p.evaluate("CreateContainerRequest", &sidecar("s1")).allowed);
    // Each container only with its own image, command and volumes.
    let mut crossed = sidecar("s2");
    crossed["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = "web".into();
    assert!(!p.evaluate("CreateContainerRequest", &crossed).allowed);
    let mut vol = sidecar("s3");
    vol["OCI"]["Mounts"].as_array_mut().unwrap().push(json!({"destination": "/etc/web", "source": "/run/podvm/shared/containers/s3-etc-web", "type": "bind", "options": ["ro"]}));
    let d = p.evaluate("CreateContainerRequest", &vol);
    assert!(
        !d.allowed && d.reason.contains("OCI.Mounts /etc/web"),
        "{d}"
    );
    // The initdata carries the policy, byte for byte.
    let i = InitData::parse(&g.initdata_toml).unwrap();
    assert_eq!(i.policy(), Some(g.rego.as_str()));
    assert_eq!(
        InitData::from_annotation(&g.annotation).unwrap().digest(),
        i.digest()
    );
}

#[test]
fn manifests_that_cannot_be_pinned_are_refused() {
    let base = testdata("pod.yaml");
    for (from, to, want) in [
        (
            "@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            ":v1",
            "is not pinned by digest",
        ),
        (
            "      command: [\"/usr/bin/web-server\"]\n",
            "",
            "no command",
        ),
        ("kind: Pod", "kind: Service", "no Pod or Deployment"),
        (
            "      env:\n",
            "      envFrom: [{configMapRef: {name: x}}]\n      env:\n",
            "envFrom cannot be pinned",
        ),
    ] {
        let manifest = base.replacen(from, to, 1);
        assert_ne!(manifest, base, "{from:?} not in pod.yaml");
        let e = generate(&manifest, &GenerateOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    assert!(generate("{not: [yaml", &GenerateOptions::default()).is_err());
}
