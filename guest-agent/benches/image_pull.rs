//! Figures, not assertions: peak RSS of pulling a generated ~1 GiB encrypted image, and pull
//! throughput against raw crypto+gunzip and skopeo+umoci on a ~512 MiB encrypted image.
//!
//!     cargo bench -p podvm-guest-agent --bench image_pull
//!
//! Needs the test registry (scripts/test-registry: docker-registry, skopeo, umoci) and ~5 GB of
//! free space in $TMPDIR.

#[path = "../tests/image_common.rs"]
mod common;

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use aes::cipher::{KeyIvInit, StreamCipher};
use common::*;
use podvm_guest_agent::image::{ImagePuller, PrivateKeyProvider, PullOptions};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

/// Incompressible bytes from xorshift64*, fast enough not to dominate generation.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (buf.len() as u64).min(self.left) as usize
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex_of(h: Sha256) -> String {
    hex::encode(h.finalize())
}

/// Stream an OCI layout of `layers` gzip layers with `files` files of `file_mib` MiB each.
fn generate_layout(layout: &Path, layers: usize, files: usize, file_mib: u64, seed: u64) -> u64 {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut total = 0;
    for l in 0..layers {
        let tmp = layout.join("blobs/tmp");
        let file = HashWriter {
            inner: io::BufWriter::new(File::create(&tmp).unwrap()),
            hasher: Sha256::new(),
            len: 0,
        };
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(HashWriter {
            inner: gz,
            hasher: Sha256::new(),
            len: 0,
        });
        for f in 0..files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(file_mib * MIB);
            let noise = Noise {
                state: seed ^ ((l * 1000 + f) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                left: file_mib * MIB,
            };
            tar.append_data(&mut h, format!("layer{l}/file{f}.bin"), noise)
                .unwrap();
        }
        let tar_out = tar.into_inner().unwrap();
        diff_ids.push(format!("sha256:{}", hex_of(tar_out.hasher)));
        let mut file = tar_out.inner.finish().unwrap();
        file.flush().unwrap();
        let digest = hex_of(file.hasher);
        std::fs::rename(&tmp, layout.join("blobs/sha256").join(&digest)).unwrap();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{digest}"), "size": file.len}));
        total += file.len;
    }
    let write_blob = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(
            layout
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
            data,
        )
        .unwrap();
        d
    };
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})).unwrap();
    let cd = write_blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = write_blob(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    total
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

async fn timed_pull(reg: &Registry, repo: &str, key: &Path, work: &Path, name: &str) -> f64 {
    let puller = ImagePuller::new(
        work.join(format!("{name}-store")),
        PullOptions {
            insecure_http: true,
            ..Default::default()
        },
    )
    .unwrap()
    .with_key_provider(Arc::new(PrivateKeyProvider::from_files(&[key]).unwrap()));
    let t = Instant::now();
    puller
        .pull(&format!("{}/{repo}:v1", reg.addr), &work.join(name))
        .await
        .unwrap();
    t.elapsed().as_secs_f64()
}

/// sha256 + AES-256-CTR + gunzip of the same gzip blobs, one pass each, from the page cache.
fn raw_pipeline(layout: &Path) -> (u64, f64) {
    let manifest = layout_manifest(layout);
    let t = Instant::now();
    let mut bytes = 0;
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let mut f = File::open(layout.join("blobs/sha256").join(d)).unwrap();
        let mut cipher =
            ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&[7u8; 32], &[9u8; 16]).unwrap();
        let mut hasher = Sha256::new();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let gunzip = std::thread::spawn(move || {
            struct ChanReader(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>, usize);
            impl Read for ChanReader {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    if self.2 == self.1.len() {
                        match self.0.recv() {
                            Ok(v) => (self.1, self.2) = (v, 0),
                            Err(_) => return Ok(0),
                        }
                    }
                    let n = buf.len().min(self.1.len() - self.2);
                    buf[..n].copy_from_slice(&self.1[self.2..self.2 + n]);
                    self.2 += n;
                    Ok(n)
                }
            }
            let mut dec =
                flate2::read::MultiGzDecoder::new(BufReader::new(ChanReader(rx, Vec::new(), 0)));
            io::copy(&mut dec, &mut io::sink()).unwrap()
        });
        // The same plaintext bytes; decrypting them with a fixed key stands in for decryption
        // cost, then gunzip reads the original (not the keystream-xored) bytes.
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hasher.update(&buf);
            let mut scratch = buf.clone();
            cipher.apply_keystream(&mut scratch);
            std::hint::black_box(&scratch);
            bytes += n as u64;
            tx.send(buf).unwrap();
        }
        drop(tx);
        gunzip.join().unwrap();
        std::hint::black_box(hasher.finalize());
    }
    (bytes, t.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(image_pull_memory_and_throughput());
}

async fn image_pull_memory_and_throughput() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (private, public) = rsa_keypair(w, "bench");

    // ~1 GiB: 4 layers x 4 files x 64 MiB.
    let big = w.join("big-layout");
    let big_bytes = generate_layout(&big, 4, 4, 64, 1);
    reg.push(&big, "bench/big", Some(&public));
    std::fs::remove_dir_all(&big).unwrap();
    // ~512 MiB: 2 layers x 4 files x 64 MiB.
    let mid = w.join("mid-layout");
    let mid_bytes = generate_layout(&mid, 2, 4, 64, 2);
    reg.push(&mid, "bench/mid", Some(&public));

    std::fs::write("/proc/self/clear_refs", "5")
        .expect("reset the peak RSS (VmHWM) via /proc/self/clear_refs");
    let rss_before = status_kib("VmHWM:");
    let secs = timed_pull(&reg, "bench/big", &private, w, "big-rootfs").await;
    let peak = status_kib("VmHWM:");
    println!(
        "memory: pulled+decrypted+unpacked {:.0} MiB encrypted image in {secs:.1} s; peak RSS {:.1} MiB (before pull {:.1} MiB; goal < 64 MiB)",
        big_bytes as f64 / MIB as f64,
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    std::fs::remove_dir_all(w.join("big-rootfs")).unwrap();
    std::fs::remove_dir_all(w.join("big-rootfs-store")).unwrap();

    let mb = mid_bytes as f64 / 1e6;
    let ours = timed_pull(&reg, "bench/mid", &private, w, "mid-rootfs").await;
    let (raw_bytes, raw) = raw_pipeline(&mid);
    assert_eq!(raw_bytes, mid_bytes);
    let t = Instant::now();
    let ref_layout = w.join("ref-layout");
    reg.fetch_layout("bench/mid", Some(&private), &ref_layout);
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", ref_layout.display()))
        .arg(w.join("ref-bundle")));
    let skopeo = t.elapsed().as_secs_f64();
    println!("throughput on a {mb:.0} MB encrypted image (loopback registry):");
    println!(
        "  podvm pull+decrypt+unpack   {:7.1} MB/s ({ours:.2} s)",
        mb / ours
    );
    println!(
        "  raw sha256+AES-CTR+gunzip   {:7.1} MB/s ({raw:.2} s)",
        mb / raw
    );
    println!(
        "  skopeo copy + umoci unpack  {:7.1} MB/s ({skopeo:.2} s)",
        mb / skopeo
    );
    println!(
        "  ratios: podvm/raw {:.2}, podvm/skopeo+umoci {:.2}",
        raw / ours,
        skopeo / ours
    );
}
