//! `podvm pod run` end to end in real VMs: an encrypted image from a loopback registry, emulated
//! SEV-SNP, podvm's KBS, a generated policy; and the refusals: wrong reference measurement, a
//! policy that forbids the command, an image whose bytes changed in the registry. (Tampered
//! initdata: tests/confidential_launch.rs.)

use std::process::Output;

use podvm_e2e::{emulated_psp_dir, podvm, podvm_bin};
use podvm_host_runtime::testbed::{IMAGE_KEY_URI, SECRET, Testbed};
use podvm_measured_boot::refvals::ReferenceValues;

struct Pod {
    testbed: Testbed,
    state: tempfile::TempDir,
    logs: tempfile::TempDir,
    psp: std::path::PathBuf,
}

const COMMAND: &[&str] = &[
    "/bin/sh",
    "-c",
    "cat /etc/podvm-demo/secret.txt; echo pid=$$; exit 3",
];

impl Pod {
    fn new() -> Pod {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The testbed creates this directory and removes it when dropped.
        let work = std::env::temp_dir().join(format!("podvm-testbed-{}-{n}", std::process::id()));
        let mut testbed = Testbed::start(&work).expect("registry and image");
        testbed.kbs_bin = Some(podvm_bin().with_file_name("podvm-kbs"));
        let psp = emulated_psp_dir();
        Pod {
            testbed,
            state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            psp,
        }
    }

    fn podvm(&self) -> std::process::Command {
        let mut cmd = podvm(self.state.path(), self.logs.path());
        cmd.env("PODVM_EMULATED_PSP_DIR", &self.psp);
        cmd
    }

    fn run_args(&self, image: &str, extra: &[&str], command: &[&str]) -> Vec<String> {
        let kbs = self.testbed.kbs_url();
        let mut args: Vec<String> = [
            "pod",
            "run",
            "--image",
            image,
            "--tee",
            "snp-emulated",
            "--kbs",
            &kbs,
            "--image-key-uri",
            IMAGE_KEY_URI,
            "--insecure-registry",
            &self.testbed.registry,
            "--memory",
            "512",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    }

    /// The reference values of the launch `args` describe (`--plan-only --export-refvals`).
    fn reference(&self, args: &[String]) -> ReferenceValues {
        let out_file = self.state.path().join("refvals.json");
        let mut a = args.to_vec();
        let at = a.iter().position(|s| s == "--").unwrap();
        a.insert(at, out_file.display().to_string());
        a.insert(at, "--export-refvals".into());
        a.insert(at, "--plan-only".into());
        let out = self.podvm().args(&a).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ReferenceValues::load(&out_file).unwrap()
    }

    fn start_kbs(&mut self, reference: &ReferenceValues) {
        self.testbed.start_kbs(&self.psp, reference).expect("KBS");
    }

    fn run(&self, args: &[String]) -> Output {
        self.podvm().args(args).output().unwrap()
    }

    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(self.state.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "state left behind: {left:?}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_encrypted_image_runs_in_an_emulated_snp_pod_and_its_exit_code_propagates() {
    let mut pod = Pod::new();
    let args = pod.run_args(
        &pod.testbed.image.clone(),
        &["--generate-policy", "--timings"],
        COMMAND,
    );
    let reference = pod.reference(&args);
    pod.start_kbs(&reference);
    let out = pod.run(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains(SECRET),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("pid=1"),
        "the container is PID 1 of its namespace: {stdout}"
    );
    assert!(stderr.contains("attestation + key release"), "{stderr}");
    pod.assert_nothing_left();
}

#[test]
fn a_wrong_reference_measurement_gets_no_key_and_the_kbs_names_the_input() {
    let mut pod = Pod::new();
    let args = pod.run_args(&pod.testbed.image.clone(), &["--generate-policy"], COMMAND);
    // The KBS knows the launch with another command line.
    let mut reference_args = args.clone();
    let at = reference_args.iter().position(|s| s == "--").unwrap();
    reference_args.insert(at, "podvm.test=reference".into());
    reference_args.insert(at, "--cmdline".into());
    let reference = pod.reference(&reference_args);
    pod.start_kbs(&reference);
    let out = pod.run(&args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains(SECRET));
    assert!(stderr.contains("measurement mismatch"), "{stderr}");
    assert!(
        stderr.contains("the kernel command line differs"),
        "{stderr}"
    );
    pod.assert_nothing_left();
}

const NO_CONTAINERS: &str = r#"package agent_policy

default CheckRequest := true
default GuestDetailsRequest := true
default DestroySandboxRequest := true
default PullImageRequest := true
default RemoveContainerRequest := true
default CreateContainerRequest := false

CreateContainerRequest_reasons := "this pod may pull its image but not run it"
"#;

#[test]
fn a_policy_that_forbids_the_command_denies_it_with_its_reason() {
    let mut pod = Pod::new();
    let policy = pod.state.path().join("policy.rego");
    std::fs::write(&policy, NO_CONTAINERS).unwrap();
    let policy = policy.display().to_string();
    let args = pod.run_args(&pod.testbed.image.clone(), &["--policy", &policy], COMMAND);
    let reference = pod.reference(&args);
    pod.start_kbs(&reference);
    let out = pod.run(&args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .contains("CreateContainerRequest denied: this pod may pull its image but not run it"),
        "{stderr}"
    );
    pod.assert_nothing_left();
}

#[test]
fn an_image_changed_in_the_registry_is_refused() {
    let mut pod = Pod::new();
    // Pin the image as the policy will, then change the layer's bytes in the registry.
    let args = pod.run_args(&pod.testbed.image.clone(), &["--generate-policy"], COMMAND);
    let reference = pod.reference(&args);
    let plan = pod
        .podvm()
        .args(args.iter().map(String::as_str).take_while(|s| *s != "--"))
        .arg("--plan-only")
        .arg("--")
        .args(COMMAND)
        .output()
        .unwrap();
    let plan = text(&plan.stdout);
    let pinned = plan
        .lines()
        .find_map(|l| l.strip_prefix("image: "))
        .unwrap_or_else(|| panic!("{plan}"))
        .to_string();
    pod.start_kbs(&reference);
    let manifest_blob = pod
        .testbed
        .registry_blob(pinned.rsplit_once('@').unwrap().1);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_blob).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = pod.testbed.registry_blob(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let pinned_args = pod.run_args(&pinned, &["--generate-policy"], COMMAND);
    let out = pod.run(&pinned_args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains(SECRET));
    assert!(
        stderr.contains(&layer),
        "the error names the layer: {stderr}"
    );
    assert!(stderr.to_ascii_lowercase().contains("digest"), "{stderr}");
    pod.assert_nothing_left();
}
