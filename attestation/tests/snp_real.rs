//! The real SEV-SNP reports in ../shared/testdata/snp/reports: round trip, verification,
//! and the upstream negative cases (each with its own distinct error).

mod common;

use common::*;
use podvm_attestation::snp::{AttestationReport, CertEntry, CertKind, Generation, TcbVersion};
use podvm_attestation::{Evidence, Expectations, Rejection, verify};

struct Case {
    report: Vec<u8>,
    vcek: Vec<u8>,
    fields: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let meta = json("snp/reports/reports.json");
    meta["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| Case {
            report: read(&format!(
                "snp/reports/{}",
                r["file"].as_str().expect("file")
            )),
            vcek: read(&format!(
                "snp/reports/{}",
                r["vek"]["file"].as_str().expect("vek")
            )),
            fields: r["fields"].clone(),
        })
        .collect()
}

fn evidence(report: Vec<u8>, vcek: Vec<u8>) -> Evidence {
    Evidence::Snp {
        report,
        cert_chain: Some(vec![CertEntry {
            kind: CertKind::Vcek,
            data: vcek,
        }]),
    }
}

fn exp() -> Expectations {
    Expectations {
        at: Some(at("2026-11-26T00:00:00Z")),
        ..Default::default()
    }
}

#[test]
fn parse_round_trip_and_fields() {
    for c in cases() {
        let r = AttestationReport::parse(&c.report).expect("parse");
        assert_eq!(r.to_bytes(), c.report, "byte-exact round trip");
        let f = &c.fields;
        assert_eq!(
            u64::from(r.version),
            f["version"].as_u64().expect("version")
        );
        assert_eq!(
            format!("{:#x}", r.policy),
            f["policy"].as_str().expect("policy")
        );
        assert_eq!(
            hex::encode(r.measurement),
            f["measurement"].as_str().expect("m")
        );
        assert_eq!(
            hex::encode(r.report_data),
            f["report_data"].as_str().expect("rd")
        );
        assert_eq!(
            hex::encode(r.host_data),
            f["host_data"].as_str().expect("hd")
        );
        assert_eq!(hex::encode(r.chip_id), f["chip_id"].as_str().expect("chip"));
        assert_eq!(
            hex::encode(r.reported_tcb.to_le_bytes()),
            f["reported_tcb"].as_str().expect("tcb")
        );
        assert_eq!(
            hex::encode(r.current_tcb.to_le_bytes()),
            f["current_tcb"].as_str().expect("ctcb")
        );
        let d = &f["reported_tcb_decoded"];
        let t = TcbVersion::decode(r.reported_tcb, Generation::Milan);
        assert_eq!(
            u64::from(t.bootloader),
            d["bootloader"].as_u64().expect("bl")
        );
        assert_eq!(u64::from(t.snp), d["snp"].as_u64().expect("snp"));
        assert_eq!(u64::from(t.microcode), d["microcode"].as_u64().expect("uc"));
    }
}

#[test]
fn both_reports_verify() {
    let anchors = amd_anchors();
    for c in cases() {
        let claims = verify(
            &evidence(c.report.clone(), c.vcek.clone()),
            &exp(),
            &anchors,
        )
        .expect("verifies");
        assert!(!claims.emulated);
        assert_eq!(
            claims.measurement,
            c.fields["measurement"].as_str().expect("m")
        );
        assert_eq!(claims.details["root"], "ARK-Milan");
        assert_eq!(claims.details["generation"], "Milan");
    }
}

#[test]
fn vcek_from_cache_dir_and_json_round_trip() {
    let mut anchors = podvm_attestation::TrustAnchors::default();
    anchors
        .add_cert_dir(&path("snp/reports"))
        .expect("cert dir");
    for c in cases() {
        let e = Evidence::Snp {
            report: c.report.clone(),
            cert_chain: None,
        };
        let json = e.to_json().expect("json");
        let back = Evidence::from_json_any(json.as_bytes()).expect("parse json");
        assert_eq!(
            back, e,
            "sev-crate JSON shape round trips to the same bytes"
        );
        verify(&back, &exp(), &anchors).expect("verifies with VCEK from the cache dir");
    }
}

#[test]
fn upstream_negative_cases_have_distinct_errors() {
    let anchors = amd_anchors();
    let cs = cases();
    // virtee/sev: byte 21 ^= 0x80 in report_milan.
    let mut r = cs[0].report.clone();
    r[21] ^= 0x80;
    let e1 =
        verify(&evidence(r, cs[0].vcek.clone()), &exp(), &anchors).expect_err("flipped family id");
    assert_eq!(e1, Rejection::Signature { what: "SNP report" });
    // trustee: byte 42 += 1 (IMAGE_ID).
    let mut r = cs[1].report.clone();
    r[42] = r[42].wrapping_add(1);
    let e2 = verify(&evidence(r, cs[1].vcek.clone()), &exp(), &anchors).expect_err("image id");
    assert_eq!(e2, Rejection::Signature { what: "SNP report" });
    // trustee: REPORTED_TCB boot loader += 1.
    let mut r = cs[1].report.clone();
    r[0x180] = r[0x180].wrapping_add(1);
    let e3 = verify(&evidence(r, cs[1].vcek.clone()), &exp(), &anchors).expect_err("tcb");
    assert!(
        matches!(&e3, Rejection::Mismatch { field, .. } if field.contains("REPORTED_TCB.bootloader")),
        "{e3}"
    );
    // trustee: VCEK byte 42 += 1 (still parses).
    let mut v = cs[1].vcek.clone();
    v[42] = v[42].wrapping_add(1);
    let e4 = verify(&evidence(cs[1].report.clone(), v), &exp(), &anchors).expect_err("vcek");
    assert!(matches!(&e4, Rejection::CertSignature { .. }), "{e4}");
    let msgs: std::collections::HashSet<_> = [&e1, &e3, &e4]
        .iter()
        .map(|e| std::mem::discriminant(*e))
        .collect();
    assert_eq!(msgs.len(), 3, "{e1} / {e3} / {e4}");
}

#[test]
fn expectation_mismatch_names_field() {
    let anchors = amd_anchors();
    let c = &cases()[0];
    let mut x = exp();
    x.measurement = Some(vec![0xaa; 48]);
    let e =
        verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors).expect_err("mismatch");
    let msg = e.to_string();
    assert!(msg.starts_with("measurement: expected aaaa"), "{msg}");
    assert!(
        msg.contains(&format!(
            "got {}",
            c.fields["measurement"].as_str().expect("m")
        )),
        "{msg}"
    );
    let mut x = exp();
    x.init_data = Some(vec![1]);
    let e =
        verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors).expect_err("host data");
    assert!(
        e.to_string().starts_with("host_data: expected 01000000"),
        "{e}"
    );
    let mut x = exp();
    x.report_data = Some(vec![0; 64]);
    let e =
        verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors).expect_err("report data");
    assert!(
        e.to_string().starts_with("report_data: expected 0000"),
        "{e}"
    );
}

#[test]
fn policy_checks() {
    let anchors = amd_anchors();
    let c = &cases()[0];
    let mut x = exp();
    x.min_snp_tcb = Some(TcbVersion {
        fmc: None,
        bootloader: 3,
        tee: 0,
        snp: 9,
        microcode: 0,
    });
    let e = verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors).expect_err("min tcb");
    assert!(e.to_string().contains("REPORTED_TCB (minimum)"), "{e}");
    let mut x = exp();
    x.vmpl = Some(1);
    let e = verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors).expect_err("vmpl");
    assert_eq!(e.to_string(), "VMPL: expected 1, got 0");
    let mut x = exp();
    x.at = Some(at("2031-01-01T00:00:00Z"));
    let e = verify(&evidence(c.report.clone(), c.vcek.clone()), &x, &anchors)
        .expect_err("expired vcek");
    assert!(matches!(e, Rejection::Expired { .. }), "{e}");
}

#[test]
fn missing_root_is_untrusted() {
    let c = &cases()[0];
    let mut a = podvm_attestation::TrustAnchors::default();
    a.add_cert_bytes(&read("snp/reports/milan_ask.pem"), "ask")
        .expect("ask");
    let e = verify(&evidence(c.report.clone(), c.vcek.clone()), &exp(), &a).expect_err("no ARK");
    assert!(matches!(e, Rejection::UntrustedRoot(_)), "{e}");
}
