//! Emulated SNP TEE: chain generated once (RSA-4096 is slow), then report → verify round trips.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::OnceLock;

use podvm_attestation::emulated::{self, EmulatedPsp, ReportRequest};
use podvm_attestation::snp::{AttestationReport, CertKind, VekType};
use podvm_attestation::{Evidence, Expectations, Rejection, TrustAnchors, verify};

struct Shared {
    _tmp: tempfile::TempDir,
    psp: EmulatedPsp,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let psp =
            EmulatedPsp::open_or_create(&tmp.path().join("snp-emulated")).expect("generate chain");
        Shared { _tmp: tmp, psp }
    })
}

fn request() -> ReportRequest {
    let mut measurement = [0u8; 48];
    measurement
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    ReportRequest {
        measurement,
        host_data: [0x11; 32],
        report_data: [0x22; 64],
        ..Default::default()
    }
}

#[test]
fn chain_files_and_permissions() {
    let psp = &shared().psp;
    for f in [emulated::ARK_KEY, emulated::ASK_KEY, emulated::VCEK_KEY] {
        let mode = std::fs::metadata(psp.dir().join(f))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Loading again gives the same chip and chain; no temporary directory is left behind.
    let again = EmulatedPsp::load(psp.dir()).expect("load");
    assert_eq!(again.chip_id(), psp.chip_id());
    let parent = psp.dir().parent().expect("parent");
    let names: Vec<_> = std::fs::read_dir(parent)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
        "{names:?}"
    );
    // The emulated root's shape matches AMD's: RSA-PSS, 4096-bit.
    let ark = psp.ark();
    assert_eq!(
        ark.signature_algorithm().oid,
        podvm_attestation::x509::OID_RSASSA_PSS
    );
    // A loosened key mode is refused.
    let copy = parent.join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    for e in std::fs::read_dir(psp.dir()).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
    }
    std::fs::set_permissions(
        copy.join(emulated::VCEK_KEY),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    assert!(EmulatedPsp::load(&copy).is_err());
}

#[test]
fn report_is_hardware_v3_format_and_verifies() {
    let psp = &shared().psp;
    let ev = psp.evidence(&request()).expect("evidence");
    let Evidence::Snp { report, .. } = &ev else {
        panic!("snp evidence")
    };
    let r = AttestationReport::parse(report).expect("parse");
    assert_eq!(r.version, 3);
    assert_eq!(r.to_bytes(), *report);
    assert_eq!(r.chip_id, psp.chip_id());
    assert_eq!(
        r.generation_from_cpuid(),
        Some(podvm_attestation::snp::Generation::Milan)
    );

    let x = Expectations {
        measurement: Some(request().measurement.to_vec()),
        init_data: Some(vec![0x11; 32]),
        report_data: Some(vec![0x22; 64]),
        ..Default::default()
    };
    let claims = verify(&ev, &x, &psp.trust_anchors()).expect("emulated verifies");
    assert!(claims.emulated);
    assert_eq!(claims.measurement, hex::encode(request().measurement));
    assert_eq!(claims.init_data, hex::encode([0x11; 32]));

    // Through the CoCo JSON shape as well.
    let json = ev.to_json().expect("json");
    let back = Evidence::from_json_any(json.as_bytes()).expect("json parse");
    assert_eq!(back, ev);
    assert!(
        verify(&back, &x, &psp.trust_anchors())
            .expect("verifies")
            .emulated
    );
}

#[test]
fn emulated_rejected_unless_allowed() {
    let psp = &shared().psp;
    let ev = psp.evidence(&request()).expect("evidence");
    let mut anchors = common::amd_anchors();
    let e = verify(&ev, &Expectations::default(), &anchors).expect_err("not allowed");
    assert!(matches!(e, Rejection::EmulatedNotAllowed(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "emulated SNP root ARK-podvm-Emulated is not accepted (allow_emulated = false)"
    );
    // Allowed, but with no emulated root configured: still rejected.
    anchors.allow_emulated = true;
    assert!(matches!(
        verify(&ev, &Expectations::default(), &anchors),
        Err(Rejection::UntrustedRoot(_))
    ));
    // The emulated root loaded from the chain directory (as `--certs DIR --allow-emulated` does).
    let mut other = TrustAnchors::default();
    other
        .add_cert_bytes(
            &std::fs::read(psp.dir().join(emulated::ARK_CERT)).expect("ark"),
            "ark",
        )
        .expect("add");
    assert!(other.emulated_root.is_some());
    other.allow_emulated = true;
    assert!(verify(&ev, &Expectations::default(), &other).is_ok());
    // Another emulated chain (same root name, different key) does not accept this evidence.
    let tmp = tempfile::tempdir().expect("tmp");
    let second = EmulatedPsp::open_or_create(&tmp.path().join("other")).expect("second chain");
    let e =
        verify(&ev, &Expectations::default(), &second.trust_anchors()).expect_err("foreign root");
    assert!(matches!(e, Rejection::UntrustedRoot(_)), "{e}");
    let Evidence::Snp { report, .. } = &ev else {
        panic!("snp")
    };
    let bare = Evidence::Snp {
        report: report.clone(),
        cert_chain: Some(psp.cert_table(VekType::Vcek).into_iter().skip(1).collect()),
    };
    let e = verify(&bare, &Expectations::default(), &second.trust_anchors())
        .expect_err("foreign root, no ARK in evidence");
    assert!(matches!(e, Rejection::CertSignature { .. }), "{e}");
}

#[test]
fn emulated_mismatch_and_debug_policy() {
    let psp = &shared().psp;
    let ev = psp.evidence(&request()).expect("evidence");
    let x = Expectations {
        measurement: Some(vec![0; 48]),
        ..Default::default()
    };
    let e = verify(&ev, &x, &psp.trust_anchors()).expect_err("measurement");
    assert_eq!(
        e.to_string(),
        format!(
            "measurement: expected {}, got {}",
            "00".repeat(48),
            hex::encode(request().measurement)
        )
    );
    let debug = ReportRequest {
        policy: 0x30000 | (1 << 19),
        ..request()
    };
    let e = verify(
        &psp.evidence(&debug).expect("ev"),
        &Expectations::default(),
        &psp.trust_anchors(),
    )
    .expect_err("debug");
    assert!(e.to_string().starts_with("policy debug:"), "{e}");
    let x = Expectations {
        allow_debug: true,
        ..Default::default()
    };
    assert!(
        verify(&psp.evidence(&debug).expect("ev"), &x, &psp.trust_anchors())
            .expect("allowed")
            .debug
    );
}

#[test]
fn masked_chip_id_verifies() {
    // The sev crate refuses v2 reports with a zero CHIP_ID; a masked CHIP_ID is valid and the
    // hwID comparison is skipped (the VCEK still has to chain to the root and sign the report).
    let psp = &shared().psp;
    let ev = psp
        .evidence(&ReportRequest {
            mask_chip_id: true,
            ..request()
        })
        .expect("evidence");
    let claims =
        verify(&ev, &Expectations::default(), &psp.trust_anchors()).expect("masked verifies");
    assert_eq!(claims.details["chip_id"], "00".repeat(64));
}

#[test]
fn vlek_chain_ark_asvk_vlek_verifies() {
    let psp = &shared().psp;
    let req = ReportRequest {
        signing_key: VekType::Vlek,
        ..request()
    };
    let ev = psp.evidence(&req).expect("evidence");
    let claims =
        verify(&ev, &Expectations::default(), &psp.trust_anchors()).expect("VLEK verifies");
    assert_eq!(claims.details["signing_key"], "VLEK");
    assert_eq!(
        claims.details["root"],
        podvm_attestation::snp::verify::EMULATED_ARK_CN
    );
    // A VLEK-signed report with only the VCEK chain available: no VLEK to check it with.
    let Evidence::Snp { report, .. } = &ev else {
        panic!("snp")
    };
    let vcek_only = Evidence::Snp {
        report: report.clone(),
        cert_chain: Some(psp.cert_table(VekType::Vcek)),
    };
    let e =
        verify(&vcek_only, &Expectations::default(), &psp.trust_anchors()).expect_err("no VLEK");
    assert!(matches!(e, Rejection::MissingCertificate(_)), "{e}");
    // The VLEK presented for a VCEK-signed report (KEY_INFO says VCEK): rejected.
    let vcek_report = psp.report(&request()).expect("report");
    let mut table = psp.cert_table(VekType::Vlek);
    table
        .iter_mut()
        .filter(|c| c.kind == CertKind::Vlek)
        .for_each(|c| c.kind = CertKind::Vcek);
    let e = verify(
        &Evidence::Snp {
            report: vcek_report,
            cert_chain: Some(table),
        },
        &Expectations::default(),
        &psp.trust_anchors(),
    )
    .expect_err("VLEK posing as VCEK");
    assert!(matches!(e, Rejection::MissingCertificate(_)), "{e}");
}
