//! A small OCI image layout built in-process, for `podvm demo` and the end-to-end tests: one
//! gzip layer with Debian's static busybox as `/bin/busybox`, its applet links (`sh`, `echo`,
//! `cat`, `uname`, ...), and a file only the decrypted image contains. Deterministic: the same
//! busybox gives the same digests.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Where the static busybox comes from (`apt-get install busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";
/// The applets linked into `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "uname", "ls", "id", "sleep", "hostname", "true", "false", "env", "ps",
];
/// A file in the image whose content proves the decrypted image runs.
pub const SECRET_PATH: &str = "etc/podvm-demo/secret.txt";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_blob(layout: &Path, data: &[u8]) -> std::io::Result<String> {
    let hex = sha256_hex(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&hex), data)?;
    Ok(format!("sha256:{hex}"))
}

fn header(path: &str, mode: u32, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("static path");
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes the sample image as an OCI layout tarball at `tarball` (what `ctr image import`
/// takes), built in `work` (created if missing).
pub fn write_tarball(work: &Path, tarball: &Path, secret: &str) -> std::io::Result<()> {
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout)?;
    build_layout(&layout, secret)?;
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(tarball)
        .arg(".")
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "tar of {} failed ({status})",
            layout.display()
        )));
    }
    Ok(())
}

/// Writes an OCI image layout with the tag `latest` at `layout`; `secret` goes to
/// [`SECRET_PATH`]. Returns the manifest digest.
pub fn build_layout(layout: &Path, secret: &str) -> std::io::Result<String> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("read {BUSYBOX}: {e}; install Debian's busybox-static (scripts/setup does)"),
        )
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "etc/podvm-demo", "tmp", "proc", "sys", "dev"] {
        let mut h = header(
            &format!("{dir}/"),
            if dir == "tmp" { 0o1777 } else { 0o755 },
            tar::EntryType::Directory,
            0,
        );
        h.set_cksum();
        tar.append(&h, std::io::empty())?;
    }
    let mut h = header(
        "bin/busybox",
        0o755,
        tar::EntryType::Regular,
        busybox.len() as u64,
    );
    h.set_cksum();
    tar.append(&h, busybox.as_slice())?;
    for applet in APPLETS {
        let mut h = header(&format!("bin/{applet}"), 0o777, tar::EntryType::Symlink, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        tar.append(&h, std::io::empty())?;
    }
    let secret = format!("{secret}\n");
    let mut h = header(
        SECRET_PATH,
        0o644,
        tar::EntryType::Regular,
        secret.len() as u64,
    );
    h.set_cksum();
    tar.append(&h, secret.as_bytes())?;
    let layer_tar = tar.into_inner()?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish()?;

    let layer_digest = write_blob(layout, &layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = write_blob(layout, &config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob(layout, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_complete() {
        if !Path::new(BUSYBOX).exists() {
            panic!(
                "{BUSYBOX} is missing: apt-get install busybox-static (scripts/setup installs it)"
            );
        }
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let da = build_layout(a.path(), "s3cret").unwrap();
        let db = build_layout(b.path(), "s3cret").unwrap();
        assert_eq!(da, db);
        assert!(a.path().join("index.json").exists());
        let blob = a
            .path()
            .join("blobs/sha256")
            .join(da.trim_start_matches("sha256:"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    }
}
