//! The services around a confidential pod, started for `podvm demo` and the end-to-end tests: a
//! loopback OCI registry (Debian's `docker-registry`), the sample image pushed encrypted with
//! `skopeo --encryption-key jwe:` (containers/ocicrypt), and podvm's KBS holding the image's
//! private key and the pod's reference values. Everything runs under one work directory and is
//! stopped when the [`Testbed`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podvm_measured_boot::refvals::ReferenceValues;

use crate::process::OwnedChild;
use crate::sample_image;

/// The KBS resource holding the sample image's private key.
pub const IMAGE_KEY_URI: &str = "kbs:///default/image-key/podvm-demo";
/// The repository of the sample image.
pub const IMAGE_REPO: &str = "podvm-demo";
/// What the sample image's secret file says.
pub const SECRET: &str = "the host never saw this line: it was decrypted inside the pod VM";

/// A failed step: what, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestbedError(String);

fn err(what: impl Into<String>) -> TestbedError {
    TestbedError(what.into())
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it right after).
pub fn free_port() -> Result<u16, TestbedError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err(format!("find a free port: {e}")))
}

fn tool(var: &str, name: &str, apt: &str) -> Result<PathBuf, TestbedError> {
    crate::paths::find_executable(var, name, &[]).ok_or_else(|| {
        err(format!(
            "{name} was not found; install it (apt-get install {apt}) or run scripts/setup"
        ))
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String, TestbedError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("{what}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(err(format!("{what} failed ({}): {last}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for_port(port: u16, child: &mut OwnedChild, what: &str) -> Result<(), TestbedError> {
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(err(format!(
                "{what} exited ({status}) before listening on {port}"
            )));
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(err(format!("{what} is not listening on {port} after 20 s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The registry, the encrypted sample image in it, and (once started) the KBS.
pub struct Testbed {
    // Field order is drop order: the services stop before their directory goes.
    kbs: Option<OwnedChild>,
    _registry: OwnedChild,
    work: PathBuf,
    pub registry: String,
    /// `registry/podvm-demo:latest`, encrypted.
    pub image: String,
    pub kbs_port: u16,
    /// The `podvm-kbs` binary (default: `PODVM_KBS`, next to this executable, or on PATH).
    pub kbs_bin: Option<PathBuf>,
    private_key: PathBuf,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.kbs.take();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Testbed {
    /// Starts the registry under `work` (created; removed on drop), builds the sample image and
    /// pushes it encrypted. The KBS starts with [`Testbed::start_kbs`].
    pub fn start(work: &Path) -> Result<Self, TestbedError> {
        let registry_bin = tool(
            "PODVM_DOCKER_REGISTRY",
            "docker-registry",
            "docker-registry",
        )?;
        let skopeo = tool("PODVM_SKOPEO", "skopeo", "skopeo")?;
        let openssl = tool("PODVM_OPENSSL", "openssl", "openssl")?;
        std::fs::create_dir_all(work)
            .map_err(|e| err(format!("create {}: {e}", work.display())))?;
        let port = free_port()?;
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                work.join("registry").display()
            ),
        )
        .map_err(|e| err(format!("write {}: {e}", config.display())))?;
        let mut cmd = Command::new(registry_bin);
        cmd.arg("serve").arg(&config);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut registry = OwnedChild::spawn("docker-registry", cmd)
            .map_err(|e| err(format!("start docker-registry: {e}")))?;
        wait_for_port(port, &mut registry, "docker-registry")?;
        let registry_addr = format!("127.0.0.1:{port}");

        let private_key = work.join("image-key.pem");
        let public_key = work.join("image-key.pub.pem");
        run(
            Command::new(&openssl)
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&private_key),
            "openssl genpkey (the image key)",
        )?;
        run(
            Command::new(&openssl)
                .args(["pkey", "-pubout", "-in"])
                .arg(&private_key)
                .arg("-out")
                .arg(&public_key),
            "openssl pkey -pubout",
        )?;
        let layout = work.join("layout");
        sample_image::build_layout(&layout, SECRET)
            .map_err(|e| err(format!("build the sample image: {e}")))?;
        let image = format!("{registry_addr}/{IMAGE_REPO}:latest");
        run(
            Command::new(&skopeo)
                .args([
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    "--encryption-key",
                ])
                .arg(format!("jwe:{}", public_key.display()))
                .arg(format!("oci:{}:latest", layout.display()))
                .arg(format!("docker://{image}")),
            "skopeo copy --encryption-key (push the encrypted image)",
        )?;
        Ok(Testbed {
            kbs: None,
            _registry: registry,
            work: work.to_path_buf(),
            registry: registry_addr,
            image,
            kbs_port: free_port()?,
            kbs_bin: None,
            private_key,
        })
    }

    /// Where the registry stores the blob `digest` (`sha256:<hex>`): tests edit it to play a
    /// registry that serves other bytes under the same digest.
    pub fn registry_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.work
            .join("registry/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// The KBS URL (the KBS listens there once started).
    pub fn kbs_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.kbs_port)
    }

    /// Starts podvm's KBS (`podvm-kbs`, next to this executable or on PATH) trusting the emulated
    /// PSP's ARK, holding the image key, accepting `reference` launches.
    pub fn start_kbs(
        &mut self,
        psp_dir: &Path,
        reference: &ReferenceValues,
    ) -> Result<(), TestbedError> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("podvm-kbs")))
            .into_iter()
            .collect::<Vec<_>>();
        let kbs_bin = self
            .kbs_bin
            .clone()
            .or_else(|| crate::paths::find_executable("PODVM_KBS", "podvm-kbs", &beside))
            .ok_or_else(|| {
                err("podvm-kbs was not found; run scripts/setup (it installs it) or set PODVM_KBS")
            })?;
        let state = self.work.join("kbs");
        let resource = state.join("resources/default/image-key/podvm-demo");
        std::fs::create_dir_all(resource.parent().expect("has a parent"))
            .map_err(|e| err(format!("create the KBS state: {e}")))?;
        std::fs::copy(&self.private_key, &resource)
            .map_err(|e| err(format!("store the image key in the KBS: {e}")))?;
        let refvals = self.work.join("reference-values.json");
        std::fs::write(&refvals, reference.to_json())
            .map_err(|e| err(format!("write {}: {e}", refvals.display())))?;
        let mut cmd = Command::new(kbs_bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.kbs_port))
            .arg("--state-dir")
            .arg(&state)
            .arg("--reference-values")
            .arg(&refvals)
            .arg("--emulated-ark")
            .arg(psp_dir.join(podvm_attestation::emulated::ARK_CERT))
            .arg("--allow-emulated");
        let log = self.work.join("kbs.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| err(format!("create {}: {e}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut kbs = OwnedChild::spawn("podvm-kbs", cmd)
            .map_err(|e| err(format!("start podvm-kbs: {e}")))?;
        wait_for_port(self.kbs_port, &mut kbs, "podvm-kbs").map_err(|e| {
            let last = crate::hypervisor::qemu::last_line(&log);
            err(format!("{e}; its log says: {last}"))
        })?;
        self.kbs = Some(kbs);
        Ok(())
    }
}
