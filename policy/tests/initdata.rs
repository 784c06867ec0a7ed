//! CoCo initdata 0.1.0: parsing, the digest of the exact bytes, HOST_DATA / MRCONFIGID, the
//! annotation and the block device.

use podvm_policy::initdata::{self, ANNOTATION, InitData, check_bound};
use podvm_policy::{Algorithm, InitDataError};
use sha2::Digest;

const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault CheckRequest := true\n'''\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs.example:8080\"\n'''\n";

#[test]
fn digest_is_over_the_exact_toml_bytes() {
    for (alg, len) in [("sha256", 32), ("sha384", 48), ("sha512", 64)] {
        let doc = DOC.replace("sha256", alg);
        let i = InitData::parse(&doc).unwrap();
        let want: Vec<u8> = match alg {
            "sha256" => sha2::Sha256::digest(doc.as_bytes()).to_vec(),
            "sha384" => sha2::Sha384::digest(doc.as_bytes()).to_vec(),
            _ => sha2::Sha512::digest(doc.as_bytes()).to_vec(),
        };
        assert_eq!(i.digest(), want, "{alg}");
        assert_eq!(i.digest().len(), len);
        // HOST_DATA: truncated (or exact) to 32 bytes; MRCONFIGID: zero-padded or truncated to 48.
        assert_eq!(i.host_data().to_vec(), want[..32].to_vec());
        let mut mr = want.clone();
        mr.resize(48, 0);
        assert_eq!(i.mr_config_id().to_vec(), mr);
        assert!(check_bound(Some(&i), &i.host_data()).is_ok());
        assert!(check_bound(Some(&i), &i.mr_config_id()).is_ok());
    }
    // A semantically equal document with other bytes has another digest.
    let a = InitData::parse(DOC).unwrap();
    let b = InitData::parse(&DOC.replace("algorithm = \"sha256\"", "algorithm   = \"sha256\""))
        .unwrap();
    assert_eq!(a.data(), b.data());
    assert_ne!(a.digest(), b.digest());
}

#[test]
fn known_answer() {
    // sha256 of these exact bytes, computed with `printf '...' | sha256sum`.
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
    let i = InitData::parse(doc).unwrap();
    assert_eq!(
        hex::encode(i.digest()),
        "af398df379eb475aff9f02cd056d0d1f5d496b7a073927cb3ea92407d8ad61a3"
    );
    assert_eq!(i.policy(), None);
    assert!(i.data().is_empty());
}

#[test]
fn one_tampered_byte_changes_the_binding() {
    let good = InitData::parse(DOC).unwrap();
    let bound = good.host_data();
    let tampered = InitData::parse(&DOC.replace("kbs.example", "kbs.examplf")).unwrap();
    assert!(check_bound(Some(&tampered), &bound).is_err());
    assert!(
        check_bound(None, &bound).is_err(),
        "dropping the initdata must not pass"
    );
    assert!(check_bound(None, &[0u8; 32]).is_ok());
}

#[test]
fn malformed_documents_are_one_line_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n",
            "algorithm \"md5\" is not supported",
        ),
        (
            "version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
            "version \"0.2.0\" is not supported",
        ),
        ("algorithm = \"sha256\"\n[data]\n", "missing `version`"),
        ("version = \"0.1.0\"\n[data]\n", "missing `algorithm`"),
        (
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data\n",
            "not valid TOML (line 3)",
        ),
        (
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n",
            "not valid TOML",
        ),
        (
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 1\n[data]\n",
            "not valid TOML",
        ),
    ];
    for (doc, want) in cases {
        let e = InitData::parse(doc).unwrap_err().to_string();
        assert!(e.contains(want), "{doc:?}: {e}");
        assert!(!e.contains('\n'), "{doc:?}: not one line: {e}");
    }
    assert!(matches!(
        InitData::parse_bytes(&[0xff, 0xfe]),
        Err(InitDataError::NotUtf8)
    ));
}

#[test]
fn annotation_and_device_round_trip_byte_for_byte() {
    let i = InitData::build(
        Algorithm::Sha384,
        &[("policy.rego".into(), "package agent_policy\n".into())],
    )
    .unwrap();
    assert_eq!(
        ANNOTATION,
        "io.katacontainers.config.hypervisor.cc_init_data"
    );
    let back = InitData::from_annotation(&i.annotation()).unwrap();
    assert_eq!(back.toml(), i.toml());
    assert_eq!(back.digest(), i.digest());
    let image = i.to_device_image();
    assert_eq!(image.len() % initdata::DEVICE_SECTOR, 0);
    assert_eq!(&image[..8], initdata::DEVICE_MAGIC);
    assert_eq!(InitData::from_device_image(&image).unwrap(), i);
    let mut bad = image.clone();
    bad[8] = 0xff;
    bad[15] = 0x7f;
    assert!(
        InitData::from_device_image(&bad)
            .unwrap_err()
            .to_string()
            .contains("exceeds the device")
    );
    assert!(InitData::from_annotation("not base64!").is_err());
    assert!(
        InitData::from_annotation("aGVsbG8=")
            .unwrap_err()
            .to_string()
            .contains("not gzip")
    );
}
