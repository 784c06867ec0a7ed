//! Property tests: a random byte flip anywhere in a report, quote, VCEK or evidence JSON never
//! verifies and never panics.

mod common;

use common::*;
use podvm_attestation::snp::{CertEntry, CertKind};
use podvm_attestation::{Evidence, Expectations, verify};
use proptest::prelude::*;

fn snp_exp() -> Expectations {
    Expectations {
        at: Some(at("2026-11-26T00:00:00Z")),
        ..Default::default()
    }
}

fn tdx_exp() -> Expectations {
    Expectations {
        at: Some(at("2023-06-20T00:00:00Z")),
        allow_debug: true,
        ..Default::default()
    }
}

fn snp(report: Vec<u8>, vcek: Vec<u8>) -> Evidence {
    Evidence::Snp {
        report,
        cert_chain: Some(vec![CertEntry {
            kind: CertKind::Vcek,
            data: vcek,
        }]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn snp_report_flip_never_verifies(idx in 0usize..1184, mask in 1u8..=255, which in 0usize..2) {
        let (r, v) = [("report_milan.bin", "vcek_milan.der"), ("test-report.bin", "test-vcek.der")][which];
        let mut report = read(&format!("snp/reports/{r}"));
        report[idx] ^= mask;
        let res = verify(&snp(report, read(&format!("snp/reports/{v}"))), &snp_exp(), &amd_anchors());
        prop_assert!(res.is_err(), "flip {idx} ^ {mask:#x} verified");
    }

    #[test]
    fn vcek_flip_never_verifies(idx in 0usize..1360, mask in 1u8..=255) {
        let mut vcek = read("snp/reports/vcek_milan.der");
        vcek[idx] ^= mask;
        let res = verify(&snp(read("snp/reports/report_milan.bin"), vcek), &snp_exp(), &amd_anchors());
        prop_assert!(res.is_err(), "flip {idx} ^ {mask:#x} verified");
    }

    #[test]
    fn ask_flip_never_verifies(idx in 0usize..1600, mask in 1u8..=255) {
        // The ASK travels in the evidence (as in a GHCB cert table); the ARK is the anchor.
        let ask_pem = read("snp/reports/milan_ask.pem");
        let mut ask = podvm_attestation::x509::to_der(&podvm_attestation::x509::parse_cert(&ask_pem, "ask").expect("ask")).expect("der");
        let i = idx % ask.len();
        ask[i] ^= mask;
        let mut anchors = podvm_attestation::TrustAnchors::default();
        anchors.add_cert_bytes(&read("snp/reports/milan_ark.pem"), "ark").expect("ark");
        let ev = Evidence::Snp {
            report: read("snp/reports/report_milan.bin"),
            cert_chain: Some(vec![
                CertEntry { kind: CertKind::Ask, data: ask },
                CertEntry { kind: CertKind::Vcek, data: read("snp/reports/vcek_milan.der") },
            ]),
        };
        prop_assert!(verify(&ev, &snp_exp(), &anchors).is_err(), "flip {i} ^ {mask:#x} verified");
    }

    #[test]
    fn tdx_quote_flip_never_verifies(idx in 0usize..5006, mask in 1u8..=255, which in 0usize..2) {
        let n = [4, 5][which];
        let mut q = read(&format!("tdx/quotes/tdx_quote_{n}.dat"));
        let i = idx % q.len();
        q[i] ^= mask;
        let x = if n == 4 { tdx_exp() } else { Expectations { require_tdx_collateral: false, at: Some(at("2024-03-20T00:00:00Z")), ..tdx_exp() } };
        let anchors = if n == 4 { intel_anchors() } else {
            let mut a = podvm_attestation::TrustAnchors::default();
            a.add_cert_bytes(&read("tdx/quotes/trusted_root.pem"), "root").expect("root");
            a
        };
        let res = verify(&Evidence::Tdx { quote: q, cc_eventlog: None }, &x, &anchors);
        prop_assert!(res.is_err(), "quote {n} flip {i} ^ {mask:#x} verified");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let _ = podvm_attestation::snp::AttestationReport::parse(&bytes);
        let _ = podvm_attestation::tdx::Quote::parse(&bytes);
        let _ = Evidence::from_json_any(&bytes);
        let _ = verify(&Evidence::Tdx { quote: bytes.clone(), cc_eventlog: None }, &tdx_exp(), &intel_anchors());
        let _ = podvm_attestation::attester::parse_cert_table(&bytes);
    }
}

#[test]
fn unflipped_inputs_verify() {
    // The property tests above are only meaningful if the unmodified inputs verify.
    assert!(
        verify(
            &snp(
                read("snp/reports/report_milan.bin"),
                read("snp/reports/vcek_milan.der")
            ),
            &snp_exp(),
            &amd_anchors()
        )
        .is_ok()
    );
    assert!(
        verify(
            &Evidence::Tdx {
                quote: read("tdx/quotes/tdx_quote_4.dat"),
                cc_eventlog: None
            },
            &tdx_exp(),
            &intel_anchors()
        )
        .is_ok()
    );
}
