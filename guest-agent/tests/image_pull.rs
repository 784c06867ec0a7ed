//! Image pull against a real registry (Debian's docker-registry on 127.0.0.1), images pushed
//! plain and encrypted by skopeo, results compared with skopeo + umoci.

#[path = "image_common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use podvm_guest_agent::image::{ImageError, ImagePuller, PrivateKeyProvider, PullOptions};

fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, uid: u64, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, mode, uid);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, &b""[..]).unwrap();
}

/// Two layers exercising every entry type, permissions, ownership and both whiteout kinds.
fn test_layers() -> Vec<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc/", 0o755);
    file(
        &mut b,
        "etc/passwd",
        0o644,
        0,
        b"root:x:0:0::/root:/bin/sh\n",
    );
    dir(&mut b, "bin/", 0o755);
    file(&mut b, "bin/tool", 0o755, 0, b"#!/bin/sh\necho tool\n");
    file(&mut b, "bin/suid", 0o4755, 0, b"suid");
    file(&mut b, "home/user/secret", 0o600, 1000, b"s3cret");
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file(&mut b, "data/big.bin", 0o644, 0, &big);
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/rel-link", "passwd").unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "abs-link", "/etc/passwd").unwrap();
    let mut h = header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "etc/hard", "etc/passwd").unwrap();
    let mut h = header(tar::EntryType::Fifo, 0o640, 0);
    b.append_data(&mut h, "run/fifo", &b""[..]).unwrap();
    let mut h = header(tar::EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", &b""[..]).unwrap();
    file(&mut b, "gone", 0o644, 0, b"removed by layer 2");
    file(&mut b, "opq/old", 0o644, 0, b"hidden by opaque");
    file(&mut b, "opq/sub/old2", 0o644, 0, b"hidden by opaque");
    let layer1 = b.into_inner().unwrap();

    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, ".wh.gone", 0o644, 0, b"");
    dir(&mut b, "opq/", 0o750);
    file(&mut b, "opq/.wh..wh..opq", 0o644, 0, b"");
    file(&mut b, "opq/new", 0o644, 0, b"new");
    file(
        &mut b,
        "etc/passwd",
        0o640,
        0,
        b"root:x:0:0::/root:/bin/bash\n",
    );
    let layer2 = b.into_inner().unwrap();
    vec![layer1, layer2]
}

struct Fixture {
    reg: Registry,
    work: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
}

fn fixture() -> Fixture {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keypair(work.path(), "image-key");
    let layout = work.path().join("layout");
    build_layout(&layout, &test_layers());
    reg.push(&layout, "test/plain", None);
    reg.push(&layout, "test/enc", Some(&public));
    Fixture {
        reg,
        work,
        private,
        public,
    }
}

fn puller(store: &Path, key: Option<&Path>) -> ImagePuller {
    let opts = PullOptions {
        insecure_http: true,
        ..Default::default()
    };
    let p = ImagePuller::new(store, opts).unwrap();
    match key {
        Some(k) => p.with_key_provider(Arc::new(PrivateKeyProvider::from_files(&[k]).unwrap())),
        None => p,
    }
}

async fn pull_err(f: &Fixture, repo: &str, key: Option<&Path>, name: &str) -> ImageError {
    let dest = f.work.path().join(name);
    let store = f.work.path().join(format!("{name}-store"));
    let err = puller(&store, key)
        .pull(&format!("{}/{repo}:v1", f.reg.addr), &dest)
        .await
        .unwrap_err();
    assert_nothing_left(&dest);
    eprintln!("{name}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_encrypted_match_skopeo_umoci() {
    let f = fixture();
    let w = f.work.path();
    let reference = tree_summary(&f.reg.reference_unpack(
        "test/enc",
        Some(&f.private),
        &w.join("ref"),
    ));
    assert!(
        reference.contains_key("dev/null")
            && reference.contains_key("opq/new")
            && !reference.contains_key("gone")
    );
    assert!(
        !reference.contains_key("opq/old"),
        "umoci applied the opaque whiteout"
    );

    let store = w.join("store");
    let enc = puller(&store, Some(&f.private))
        .pull(&format!("{}/test/enc:v1", f.reg.addr), &w.join("enc"))
        .await
        .unwrap();
    assert_eq!(
        tree_summary(&enc.rootfs),
        reference,
        "encrypted pull differs from skopeo --decryption-key + umoci unpack"
    );

    let plain = puller(&store, None)
        .pull(&format!("{}/test/plain:v1", f.reg.addr), &w.join("plain"))
        .await
        .unwrap();
    assert_eq!(
        tree_summary(&plain.rootfs),
        reference,
        "plain pull differs from skopeo + umoci unpack"
    );
    assert_eq!(plain.diff_ids, enc.diff_ids);

    // By digest, and a second container of the pod sharing the store (all blobs cached).
    let by_digest = format!("{}/test/plain@{}", f.reg.addr, plain.manifest_digest);
    let again = puller(&store, None)
        .pull(&by_digest, &w.join("again"))
        .await
        .unwrap();
    assert_eq!(tree_summary(&again.rootfs), reference);

    // A non-empty destination is refused and left alone.
    let err = puller(&store, None)
        .pull(&by_digest, &w.join("again"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DestinationExists { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_selects_linux_amd64() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    build_layout(&layout, &test_layers()[..1]);
    wrap_in_index(&layout);
    reg.push(&layout, "test/multi", None);
    let img = puller(&work.path().join("store"), None)
        .pull(
            &format!("{}/test/multi:v1", reg.addr),
            &work.path().join("rootfs"),
        )
        .await
        .unwrap();
    assert!(img.rootfs.join("etc/passwd").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_errors_are_distinct() {
    let f = fixture();
    let (wrong, _) = rsa_keypair(f.work.path(), "wrong");
    let e = pull_err(&f, "test/enc", Some(&wrong), "wrong-key").await;
    assert!(matches!(e, ImageError::NoMatchingKey { .. }), "{e}");
    let e = pull_err(&f, "test/enc", None, "no-key").await;
    assert!(matches!(e, ImageError::MissingKeyProvider { .. }), "{e}");
    // The key material never appears in an error.
    let pem = std::fs::read_to_string(&f.private).unwrap();
    let line = pem.lines().nth(1).unwrap();
    assert!(!e.to_string().contains(line));
    let _ = &f.public;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ciphertext_fails_hmac() {
    let f = fixture();
    // Re-push the encrypted image with one ciphertext byte flipped and digests fixed up, so
    // only the ocicrypt HMAC can notice.
    let layout = f.work.path().join("tampered-layout");
    f.reg.fetch_layout("test/enc", None, &layout);
    edit_layer_blob(&layout, 0, |data| {
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
    });
    f.reg.push(&layout, "test/tampered", None);
    let e = pull_err(&f, "test/tampered", Some(&f.private), "tampered").await;
    assert!(matches!(e, ImageError::HmacMismatch { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_corruption_is_detected() {
    let f = fixture();
    let layout = f.work.path().join("plain-layout");
    f.reg.fetch_layout("test/plain", None, &layout);
    let layers = layout_manifest(&layout)["layers"].clone();
    let d0 = layers[0]["digest"].as_str().unwrap();
    let d1 = layers[1]["digest"].as_str().unwrap();

    let data = f.reg.blob_data(d0);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x80;
    std::fs::write(&data, &bytes).unwrap();
    let e = pull_err(&f, "test/plain", None, "corrupt").await;
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");

    let data = f.reg.blob_data(d1);
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Layer 0 is still corrupt; pull only what fails on truncation by repairing it first.
    bytes[mid] ^= 0x80;
    std::fs::write(f.reg.blob_data(d0), &bytes).unwrap();
    let e = pull_err(&f, "test/plain", None, "truncated").await;
    assert!(matches!(e, ImageError::Truncated { .. }), "{e}");
}

fn raw_path_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = header(kind, 0o644, 0);
    h.set_size(size);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_are_refused() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();

    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "ok", 0o644, 0, b"fine");
    b.append(
        &raw_path_header("../../escaped", tar::EntryType::Regular, 4),
        &b"evil"[..],
    )
    .unwrap();
    let traversal = b.into_inner().unwrap();

    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "loop1", "/loop2").unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "loop2", "loop1").unwrap();
    file(&mut b, "loop1/x", 0o644, 0, b"evil");
    let symlink_loop = b.into_inner().unwrap();

    for (repo, layer) in [("evil/traversal", traversal), ("evil/loop", symlink_loop)] {
        let layout = work.path().join(repo.replace('/', "-"));
        build_layout(&layout, &[layer]);
        reg.push(&layout, repo, None);
        let dest = work
            .path()
            .join(format!("{}-rootfs", repo.replace('/', "-")));
        let err = puller(&work.path().join("store"), None)
            .pull(&format!("{}/{repo}:v1", reg.addr), &dest)
            .await
            .unwrap_err();
        eprintln!("{repo}: {err}");
        match repo {
            "evil/traversal" => assert!(matches!(err, ImageError::PathTraversal { .. }), "{err}"),
            _ => assert!(
                matches!(err, ImageError::Unpack { .. })
                    && err.to_string().contains("symbolic links"),
                "{err}"
            ),
        }
        assert_nothing_left(&dest);
    }
    assert!(!work.path().join("escaped").exists());
}

/// Symlinks resolve as if the rootfs were `/`, as umoci (and runc, containerd) do: entries
/// through absolute symlinks land where the image means, and escape attempts through absolute
/// symlinks or `..` land inside the root too, never on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_resolve_in_root_like_umoci() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let outside = w.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let rel_outside = outside.strip_prefix("/").unwrap().display().to_string();
    let symlink = |b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str| {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, path, target).unwrap();
    };

    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "run/", 0o755);
    dir(&mut b, "var/", 0o755);
    symlink(&mut b, "var/run", "/run");
    file(&mut b, "var/run/foo", 0o644, 0, b"through /run");
    let mut h = header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "var/run/hard", "var/run/foo")
        .unwrap();
    symlink(&mut b, "var/lock", "/run/lock");
    file(&mut b, "var/lock/pid", 0o644, 0, b"1");
    // Escape attempts: absolute symlink to a host directory, absolute with `..`, relative `..`.
    symlink(&mut b, "abs", outside.to_str().unwrap());
    file(&mut b, "abs/pwned-abs", 0o644, 0, b"evil");
    symlink(&mut b, "evil", &format!("/../../../{rel_outside}"));
    file(&mut b, "evil/pwned-dotdot", 0o644, 0, b"evil");
    symlink(&mut b, "up", "../../../../../../..");
    file(
        &mut b,
        &format!("up/{rel_outside}/pwned-rel"),
        0o644,
        0,
        b"evil",
    );
    let layer1 = b.into_inner().unwrap();
    // A later layer writing through the symlinks of the first.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "var/run/later", 0o600, 0, b"layer 2");
    file(&mut b, "var/run/.wh.foo", 0o644, 0, b"");
    let layer2 = b.into_inner().unwrap();

    let layout = w.join("layout");
    build_layout(&layout, &[layer1, layer2]);
    reg.push(&layout, "test/symlinks", None);
    let reference = tree_summary(&reg.reference_unpack("test/symlinks", None, &w.join("ref")));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let img = puller(&w.join("store"), None)
        .pull(&format!("{}/test/symlinks:v1", reg.addr), &w.join("rootfs"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the root"
    );
    let got = tree_summary(&img.rootfs);
    for p in ["run/later", "run/hard", "run/lock/pid"] {
        assert!(got.contains_key(p), "{p} missing: {got:#?}");
    }
    assert!(!got.contains_key("run/foo"), "whiteout through var/run");
    for p in ["pwned-abs", "pwned-dotdot", "pwned-rel"] {
        assert!(
            got.contains_key(&format!("{rel_outside}/{p}")),
            "{p} is not inside the root: {got:#?}"
        );
    }
    assert_eq!(got, reference, "differs from skopeo + umoci unpack");
}

/// Images encrypted by skopeo to EC public keys (ocicrypt: `ECDH-ES+A256KW`) pull with the EC
/// private key in every format openssl writes, and match skopeo --decryption-key + umoci.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_keys_decrypt_like_skopeo() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layout = w.join("layout");
    build_layout(&layout, &test_layers());
    let keys = [
        ("p256", "prime256v1", EcKeyFormat::Sec1Pem),
        ("p384", "P-384", EcKeyFormat::Pkcs8Pem),
        ("p521", "P-521", EcKeyFormat::Pkcs8Der),
        ("p256der", "P-256", EcKeyFormat::Sec1Der),
    ];
    let mut reference = None;
    for (name, curve, format) in keys {
        let (private, public, pkcs8_pem) = ec_keypair(w, name, curve, format);
        let repo = format!("test/ec-{name}");
        reg.push(&layout, &repo, Some(&public));
        let jwe = layer_jwe(&reg, &repo, w);
        assert_eq!(jwe["protected"]["alg"], "ECDH-ES+A256KW", "{name}: {jwe}");
        // The reference decrypts with the PKCS#8 PEM form of the same key.
        let want = tree_summary(&reg.reference_unpack(
            &repo,
            Some(&pkcs8_pem),
            &w.join(format!("ref-{name}")),
        ));
        let img = puller(&w.join(format!("store-{name}")), Some(&private))
            .pull(
                &format!("{}/{repo}:v1", reg.addr),
                &w.join(format!("rootfs-{name}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            tree_summary(&img.rootfs),
            want,
            "{name}: differs from skopeo + umoci"
        );
        assert_eq!(reference.get_or_insert(want), &tree_summary(&img.rootfs));
    }

    // RSA and EC recipients in one JWE (general serialization): either key opens it.
    let (rsa_private, rsa_public) = rsa_keypair(w, "rsa");
    let (ec_private, ec_public, _) = ec_keypair(w, "both-ec", "P-256", EcKeyFormat::Pkcs8Pem);
    reg.push_to(&layout, "test/ec-both", &[&rsa_public, &ec_public]);
    let jwe = layer_jwe(&reg, "test/ec-both", w);
    let algs: Vec<_> = jwe["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["header"]["alg"].as_str().unwrap())
        .collect();
    assert_eq!(algs, ["RSA-OAEP", "ECDH-ES+A256KW"], "{jwe}");
    for (name, key) in [("both-ec", &ec_private), ("both-rsa", &rsa_private)] {
        let img = puller(&w.join(format!("store-{name}")), Some(key))
            .pull(&format!("{}/test/ec-both:v1", reg.addr), &w.join(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Some(tree_summary(&img.rootfs)), reference, "{name}");
    }

    // A different EC key (same curve, other curve) or an RSA key: no key can unwrap.
    let (other_ec, ..) = ec_keypair(w, "other", "P-256", EcKeyFormat::Sec1Pem);
    let (other_curve, ..) = ec_keypair(w, "other384", "P-384", EcKeyFormat::Sec1Pem);
    for (name, key) in [
        ("wrong-ec", &other_ec),
        ("wrong-curve", &other_curve),
        ("rsa-for-ec", &rsa_private),
    ] {
        let dest = w.join(name);
        let err = puller(&w.join(format!("store-{name}")), Some(key))
            .pull(&format!("{}/test/ec-p256:v1", reg.addr), &dest)
            .await
            .unwrap_err();
        eprintln!("{name}: {err}");
        assert!(
            matches!(err, ImageError::NoMatchingKey { .. }),
            "{name}: {err}"
        );
        assert_nothing_left(&dest);
    }
    // An EC key for an RSA-only image.
    let rsa_only = "test/rsa-only";
    reg.push(&layout, rsa_only, Some(&rsa_public));
    let dest = w.join("ec-for-rsa");
    let err = puller(&w.join("store-ec-for-rsa"), Some(&ec_private))
        .pull(&format!("{}/{rsa_only}:v1", reg.addr), &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NoMatchingKey { .. }), "{err}");
    assert_nothing_left(&dest);
}

/// The first layer's JWE as skopeo wrote it, with `protected` decoded in place.
fn layer_jwe(reg: &Registry, repo: &str, work: &Path) -> serde_json::Value {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let layout = work.join(format!("{}-raw", repo.replace('/', "-")));
    reg.fetch_layout(repo, None, &layout);
    let m = layout_manifest(&layout);
    let ann = m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"]
        .as_str()
        .unwrap();
    let mut jwe: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(ann).unwrap()).unwrap();
    let protected = URL_SAFE_NO_PAD
        .decode(jwe["protected"].as_str().unwrap())
        .unwrap();
    jwe["protected"] = serde_json::from_slice(&protected).unwrap();
    jwe
}

/// A KBS stand-in: resources by URI, as the attestation client would return them.
struct FakeKbs(std::collections::HashMap<String, Vec<u8>>);

#[async_trait::async_trait]
impl podvm_guest_agent::image::ResourceFetcher for FakeKbs {
    async fn get_resource(&self, uri: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        self.0
            .get(uri)
            .cloned()
            .map(zeroize::Zeroizing::new)
            .ok_or_else(|| format!("resource {uri} not found (401)"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_agent_key_provider_annotation() {
    use aes_gcm::aead::{Aead, Payload};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use podvm_guest_agent::image::KbsKeyProvider;
    use podvm_guest_agent::image::ocicrypt::{
        ANNOTATION_KEYS_ATTESTATION_AGENT, ANNOTATION_KEYS_JWE, JwePrivateKey, jwe_decrypt,
    };

    let f = fixture();
    let w = f.work.path();
    // Re-wrap each layer's private options the way CoCo's keyprovider does: AES-256-GCM under a
    // key-encryption key that the KBS holds at `kid`.
    let layout = w.join("aa-layout");
    f.reg.fetch_layout("test/enc", None, &layout);
    let key = JwePrivateKey::from_bytes(&std::fs::read(&f.private).unwrap()).unwrap();
    let kek = [0x42u8; 32];
    let kid = "kbs:///default/image-kek/1";
    edit_manifest(&layout, |m| {
        for (i, layer) in m["layers"].as_array_mut().unwrap().iter_mut().enumerate() {
            let ann = layer["annotations"].as_object_mut().unwrap();
            let jwe = STANDARD
                .decode(ann.remove(ANNOTATION_KEYS_JWE).unwrap().as_str().unwrap())
                .unwrap();
            let opts = jwe_decrypt(&jwe, std::slice::from_ref(&key)).unwrap();
            let iv = [i as u8 + 1; 12];
            let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&kek).unwrap();
            let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(&iv[..]).unwrap();
            let wrapped = cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &opts,
                        aad: b"",
                    },
                )
                .unwrap();
            let packet = serde_json::json!({"kid": kid, "wrapped_data": STANDARD.encode(&wrapped),
                                            "iv": STANDARD.encode(iv), "wrap_type": "A256GCM"});
            ann.insert(
                ANNOTATION_KEYS_ATTESTATION_AGENT.into(),
                STANDARD.encode(serde_json::to_vec(&packet).unwrap()).into(),
            );
        }
    });
    f.reg.push(&layout, "test/aa", None);
    let reference = tree_summary(&f.reg.reference_unpack("test/plain", None, &w.join("ref")));

    let pull = |kbs: FakeKbs, name: &str| {
        let provider = KbsKeyProvider::new(kbs, Vec::new());
        let p = ImagePuller::new(
            w.join(format!("{name}-store")),
            PullOptions {
                insecure_http: true,
                ..Default::default()
            },
        )
        .unwrap()
        .with_key_provider(Arc::new(provider));
        let dest = w.join(name);
        let image = format!("{}/test/aa:v1", f.reg.addr);
        async move { (p.pull(&image, &dest).await, dest) }
    };
    let (ok, _) = pull(FakeKbs([(kid.to_string(), kek.to_vec())].into()), "aa-ok").await;
    assert_eq!(tree_summary(&ok.unwrap().rootfs), reference);

    let (err, dest) = pull(
        FakeKbs([(kid.to_string(), vec![0x43; 32])].into()),
        "aa-wrong",
    )
    .await;
    let err = err.unwrap_err();
    assert!(matches!(err, ImageError::NoMatchingKey { .. }), "{err}");
    assert_nothing_left(&dest);

    let (err, dest) = pull(FakeKbs(Default::default()), "aa-denied").await;
    let err = err.unwrap_err();
    assert!(
        matches!(err, ImageError::KeyProvider { .. }) && err.to_string().contains(kid),
        "{err}"
    );
    assert_nothing_left(&dest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umoci_built_image_matches_umoci_unpack() {
    // umoci writes layer tars without trailing padding or end-of-archive blocks.
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let content = w.join("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/hello"), b"hi\n").unwrap();
    let layout = w.join("layout");
    run(std::process::Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(std::process::Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:v1", layout.display())));
    run(std::process::Command::new("umoci")
        .args(["insert", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(content.join("etc"))
        .arg("/etc"));
    reg.push(&layout, "test/umoci", None);
    let reference = tree_summary(&reg.reference_unpack("test/umoci", None, &w.join("ref")));
    let img = puller(&w.join("store"), None)
        .pull(&format!("{}/test/umoci:v1", reg.addr), &w.join("rootfs"))
        .await
        .unwrap();
    assert_eq!(tree_summary(&img.rootfs), reference);
}
