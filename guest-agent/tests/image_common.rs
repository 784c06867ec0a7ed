//! Shared by the image-pull integration tests and benchmarks (included with `#[path]`): a
//! loopback registry owned by a guard (stopped on drop), hand-built OCI layouts,
//! skopeo/umoci/openssl helpers, tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run a command; panic with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A docker-registry process started by `scripts/test-registry`, stopped on drop.
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("registry");
        let script = workspace_root().join("scripts/test-registry");
        let out = Command::new(&script)
            .arg("start")
            .env("PODVM_TEST_REGISTRY_STATE", &state)
            .output();
        let out = out.unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "the test registry could not be started ({}); these tests need docker-registry, skopeo, umoci (apt): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("export {name}="))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| panic!("test-registry start printed no {name}: {stdout}"))
        };
        Registry {
            addr: var("PODVM_TEST_REGISTRY"),
            storage: PathBuf::from(var("PODVM_TEST_REGISTRY_STORAGE")),
            state,
            _dir: dir,
        }
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    pub fn push(&self, layout: &Path, repo: &str, encrypt_with: Option<&Path>) {
        self.push_to(layout, repo, encrypt_with.as_slice());
    }

    /// Push encrypted to every public key in `recipients` (none: plain).
    pub fn push_to(&self, layout: &Path, repo: &str, recipients: &[&Path]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        for pubkey in recipients {
            cmd.arg("--encryption-key")
                .arg(format!("jwe:{}", pubkey.display()));
        }
        cmd.arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/{repo}:v1", self.addr));
        run(&mut cmd);
    }

    /// Copy an image from the registry into an OCI layout (decrypting with `key` if given).
    pub fn fetch_layout(&self, repo: &str, key: Option<&Path>, layout: &Path) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
        if let Some(k) = key {
            cmd.arg("--decryption-key").arg(k);
        }
        cmd.arg(format!("docker://{}/{repo}:v1", self.addr))
            .arg(format!("oci:{}:v1", layout.display()));
        run(&mut cmd);
    }

    /// skopeo copy (decrypting with `key` if given) + umoci unpack: the reference rootfs.
    pub fn reference_unpack(&self, repo: &str, key: Option<&Path>, work: &Path) -> PathBuf {
        std::fs::create_dir_all(work).unwrap();
        let layout = work.join("ref-layout");
        self.fetch_layout(repo, key, &layout);
        let bundle = work.join("ref-bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle));
        bundle.join("rootfs")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/test-registry"))
            .arg("stop")
            .env("PODVM_TEST_REGISTRY_STATE", &self.state)
            .status();
    }
}

/// An RSA key pair made with openssl: (private, public) PEM paths.
pub fn rsa_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(std::process::Stdio::null()));
    run(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .stderr(std::process::Stdio::null()));
    (private, public)
}

/// How [`ec_keypair`] writes the private key.
#[derive(Debug, Clone, Copy)]
pub enum EcKeyFormat {
    /// `openssl ecparam -genkey -noout`: PEM `EC PRIVATE KEY`.
    Sec1Pem,
    /// `openssl genpkey`: PEM `PRIVATE KEY`.
    Pkcs8Pem,
    /// `openssl genpkey -outform DER`.
    Pkcs8Der,
    /// `openssl ec -outform DER`.
    Sec1Der,
}

/// An EC key pair made with openssl on `curve` (`prime256v1`/`P-256`, `secp384r1`/`P-384`,
/// `secp521r1`/`P-521`): paths of the private key in `format`, the public key PEM, and the
/// private key as PKCS#8 PEM (skopeo 1.9's ocicrypt reads only PKCS#8 and PKCS#1 PEM).
pub fn ec_keypair(
    dir: &Path,
    name: &str,
    curve: &str,
    format: EcKeyFormat,
) -> (PathBuf, PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub.pem"));
    let pem = dir.join(format!("{name}.pem"));
    let quiet = || std::process::Stdio::null();
    match format {
        EcKeyFormat::Sec1Pem | EcKeyFormat::Sec1Der => {
            run(Command::new("openssl")
                .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
                .arg(&pem)
                .stderr(quiet()));
        }
        EcKeyFormat::Pkcs8Pem | EcKeyFormat::Pkcs8Der => {
            run(Command::new("openssl")
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                .arg(format!("ec_paramgen_curve:{curve}"))
                .arg("-out")
                .arg(&pem)
                .stderr(quiet()));
        }
    }
    match format {
        EcKeyFormat::Sec1Pem | EcKeyFormat::Pkcs8Pem => {
            std::fs::copy(&pem, &private).map(drop).unwrap()
        }
        EcKeyFormat::Pkcs8Der => {
            run(Command::new("openssl")
                .args(["pkey", "-outform", "DER", "-in"])
                .arg(&pem)
                .arg("-out")
                .arg(&private)
                .stderr(quiet()));
        }
        EcKeyFormat::Sec1Der => {
            run(Command::new("openssl")
                .args(["ec", "-outform", "DER", "-in"])
                .arg(&pem)
                .arg("-out")
                .arg(&private)
                .stderr(quiet()));
        }
    }
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&public)
        .stderr(quiet()));
    let pkcs8_pem = dir.join(format!("{name}.p8.pem"));
    run(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&pkcs8_pem)
        .stderr(quiet()));
    (private, public, pkcs8_pem)
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let d = sha256(data);
    let p = layout
        .join("blobs/sha256")
        .join(d.strip_prefix("sha256:").unwrap());
    std::fs::write(p, data).unwrap();
    d
}

/// Write an OCI layout (tag `v1`) of gzip-compressed `layers` (uncompressed tars).
pub fn build_layout(layout: &Path, layers: &[Vec<u8>]) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for tar in layers {
        diff_ids.push(sha256(tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let gz = gz.finish().unwrap();
        let d = write_blob(layout, &gz);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = write_blob(layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = write_blob(layout, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Wrap the layout's manifest in an image index with an arm64 decoy and the amd64 entry.
pub fn wrap_in_index(layout: &Path) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    let entry = |arch: &str| {
        serde_json::json!({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                           "platform": {"architecture": arch, "os": "linux"}})
    };
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64"), entry("amd64")],
    }))
    .unwrap();
    let ld = write_blob(layout, &list);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": ld, "size": list.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// The manifest of a single-image layout.
pub fn layout_manifest(layout: &Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(md.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap()
}

/// Apply `edit` to layer `i`'s blob bytes and fix up descriptor digests so the layout is valid.
pub fn edit_layer_blob(layout: &Path, i: usize, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut manifest = layout_manifest(layout);
    let d = manifest["layers"][i]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut data = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    edit(&mut data);
    manifest["layers"][i]["digest"] = write_blob(layout, &data).into();
    manifest["layers"][i]["size"] = data.len().into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(layout, &mbytes);
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = mbytes.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Everything about a tree that an unpacker must reproduce.
pub fn tree_summary(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file nlink={} {}",
                m.nlink(),
                sha256(&std::fs::read(&p).unwrap())
            )
        } else {
            format!("special rdev={:x}", m.rdev())
        };
        let mtime = if ft.is_dir() {
            String::new()
        } else {
            format!(" mtime={}", m.mtime())
        };
        let size = if ft.is_dir() { 0 } else { m.size() };
        out.insert(
            rel,
            format!(
                "{kind} mode={:o} uid={} gid={} size={size}{mtime}",
                m.mode(),
                m.uid(),
                m.gid()
            ),
        );
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Nothing at `dest` and no temporary unpack directory next to it.
pub fn assert_nothing_left(dest: &Path) {
    assert!(
        !dest.exists(),
        "{} exists after a failed pull",
        dest.display()
    );
    let name = dest.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(dest.parent().unwrap()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with(&format!(".{name}.unpacking")),
            "temporary {n} left behind"
        );
    }
}

/// Apply `edit` to the manifest of a single-image layout and fix up the index.
pub fn edit_manifest(layout: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut manifest = layout_manifest(layout);
    edit(&mut manifest);
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(layout, &mbytes);
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = mbytes.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}
