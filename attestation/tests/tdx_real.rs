//! The real TDX quotes in ../shared/testdata/tdx/quotes with the Intel root and PCS collateral.

mod common;

use common::*;
use podvm_attestation::tdx::{Quote, TcbStatus};
use podvm_attestation::{Evidence, Expectations, Rejection, TrustAnchors, verify};

fn quote(n: u32) -> Vec<u8> {
    read(&format!("tdx/quotes/tdx_quote_{n}.dat"))
}

fn fields(n: usize) -> serde_json::Value {
    json("tdx/quotes/quotes.json")["quotes"][n]["fields"].clone()
}

fn exp() -> Expectations {
    Expectations {
        at: Some(at("2023-06-20T00:00:00Z")),
        allow_debug: true,
        ..Default::default()
    }
}

fn ev(q: Vec<u8>) -> Evidence {
    Evidence::Tdx {
        quote: q,
        cc_eventlog: None,
    }
}

#[test]
fn parse_round_trip_and_fields() {
    for (i, n) in [4u32, 5].into_iter().enumerate() {
        let bytes = quote(n);
        let q = Quote::parse(&bytes).expect("parse");
        assert_eq!(q.to_bytes(), bytes, "byte-exact round trip");
        let f = fields(i);
        assert_eq!(
            u64::from(q.header.version),
            f["version"].as_u64().expect("v")
        );
        assert_eq!(
            hex::encode(q.header.user_data),
            f["user_data"].as_str().expect("ud")
        );
        assert_eq!(hex::encode(q.body.mrtd), f["mrtd"].as_str().expect("mrtd"));
        assert_eq!(
            hex::encode(q.body.mrseam),
            f["mrseam"].as_str().expect("mrseam")
        );
        assert_eq!(
            hex::encode(q.body.tee_tcb_svn),
            f["tee_tcb_svn"].as_str().expect("svn")
        );
        assert_eq!(
            hex::encode(q.body.rtmr[0]),
            f["rtmr0"].as_str().expect("rtmr0")
        );
        assert_eq!(
            hex::encode(q.body.rtmr[1]),
            f["rtmr1"].as_str().expect("rtmr1")
        );
        assert_eq!(
            hex::encode(q.body.report_data),
            f["report_data"].as_str().expect("rd")
        );
        assert_eq!(
            format!("{:#x}", q.body.td_attributes_u64()),
            f["td_attributes_u64"].as_str().expect("attr")
        );
        if n == 5 {
            assert_eq!(q.body_type, Some(3));
            assert_eq!(
                hex::encode(q.body.mrservicetd.expect("1.5")),
                f["mrservicetd"].as_str().expect("svc")
            );
        }
    }
}

#[test]
fn quote4_verifies_up_to_date_with_collateral() {
    let claims = verify(&ev(quote(4)), &exp(), &intel_anchors()).expect("quote 4 verifies");
    assert_eq!(claims.details["tcb_status"], "UpToDate");
    assert_eq!(claims.details["fmspc"], "50806f000000");
    assert_eq!(claims.details["pce_svn"], 11);
    assert!(claims.debug);
    assert_eq!(
        claims.measurement,
        fields(0)["mrtd"].as_str().expect("mrtd")
    );
    assert_eq!(claims.details["rtmr1"], fields(0)["rtmr1"]);
}

#[test]
fn quote4_debug_rejected_by_default() {
    let x = Expectations {
        allow_debug: false,
        ..exp()
    };
    let e = verify(&ev(quote(4)), &x, &intel_anchors()).expect_err("debug TD");
    assert!(e.to_string().starts_with("policy debug:"), "{e}");
}

#[test]
fn quote5_chain_and_signatures_verify_without_its_collateral() {
    // Quote 5's PCK is valid from 2024-03-18; there is no tcbInfo for its FMSPC (90c06f000000).
    let t = at("2024-03-20T00:00:00Z");
    let x = Expectations {
        at: Some(t),
        ..exp()
    };
    let e = verify(&ev(quote(5)), &x, &intel_anchors()).expect_err("stale PCK CRL");
    assert!(
        e.to_string()
            .starts_with("PCK CRL not valid at 2024-03-20T00:00:00Z"),
        "{e}"
    );
    // Root + root CRL only: with collateral required the missing tcbInfo is a precise error...
    let mut a = TrustAnchors::default();
    a.add_cert_bytes(&read("tdx/quotes/trusted_root.pem"), "root")
        .expect("root");
    a.tdx_collateral
        .add_bytes(&read("tdx/quotes/rootcrl.der"), "rootcrl")
        .expect("crl");
    a.tdx_collateral
        .add_bytes(&read("tdx/quotes/sample_tcbInfo_response"), "tcbinfo")
        .expect("tcbinfo");
    let e = verify(&ev(quote(5)), &x, &a).expect_err("no PCK CRL");
    assert_eq!(
        e.to_string(),
        "missing collateral: CRL of Intel SGX PCK Platform CA"
    );
    // ...and with collateral optional the signatures, PCK chain and root CRL verify.
    let x = Expectations {
        require_tdx_collateral: false,
        ..x
    };
    let claims = verify(&ev(quote(5)), &x, &a).expect("quote 5 verifies");
    assert_eq!(claims.details["tcb_status"], "Unknown (no collateral)");
    assert_eq!(claims.details["quote_version"], 5);
    assert_eq!(claims.details["fmspc"], "90c06f000000");
    assert!(!claims.debug);
}

#[test]
fn expired_collateral_rejected_at_real_time() {
    let x = Expectations {
        at: Some(at("2026-11-26T00:00:00Z")),
        ..exp()
    };
    let e = verify(&ev(quote(4)), &x, &intel_anchors()).expect_err("expired");
    assert!(matches!(e, Rejection::Expired { .. }), "{e}");
}

#[test]
fn tcb_status_policy() {
    let x = Expectations {
        accepted_tdx_tcb_status: vec![TcbStatus::SWHardeningNeeded],
        ..exp()
    };
    let e = verify(&ev(quote(4)), &x, &intel_anchors()).expect_err("UpToDate not accepted");
    assert_eq!(e.to_string(), "policy TCB status: UpToDate is not accepted");
}

#[test]
fn missing_root_and_distinct_tamper_errors() {
    let e = verify(&ev(quote(4)), &exp(), &TrustAnchors::default()).expect_err("no root");
    assert!(matches!(e, Rejection::UntrustedRoot(_)), "{e}");
    let a = intel_anchors();
    // body byte (MRTD) -> quote signature
    let mut q = quote(4);
    q[0x30 + 0x88] ^= 1;
    assert_eq!(
        verify(&ev(q), &exp(), &a).expect_err("body"),
        Rejection::Signature { what: "TDX quote" }
    );
    // QE report byte -> QE report signature
    let mut q = quote(4);
    q[0x30 + 584 + 4 + 64 + 64 + 6 + 10] ^= 1;
    assert_eq!(
        verify(&ev(q), &exp(), &a).expect_err("qe"),
        Rejection::Signature { what: "QE report" }
    );
    // attestation key byte -> binding
    let mut q = quote(4);
    q[0x30 + 584 + 4 + 64 + 3] ^= 1;
    let e = verify(&ev(q), &exp(), &a).expect_err("att key");
    assert!(e.to_string().starts_with("QE report_data"), "{e}");
}

#[test]
fn expectations_on_tdx_fields() {
    let mut x = exp();
    x.rtmr[2] = Some(vec![1; 48]);
    let e = verify(&ev(quote(4)), &x, &intel_anchors()).expect_err("rtmr2");
    assert!(e.to_string().starts_with("rtmr2: expected 0101"), "{e}");
    let mut x = exp();
    x.init_data = Some(vec![7; 48]);
    let e = verify(&ev(quote(4)), &x, &intel_anchors()).expect_err("mrconfigid");
    assert!(
        e.to_string().starts_with("mr_config_id: expected 0707"),
        "{e}"
    );
}

#[test]
fn tdx_json_shape() {
    let e = ev(quote(4));
    let j = e.to_json().expect("json");
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    assert!(v["quote"].is_string() && v["cc_eventlog"].is_null());
    assert_eq!(Evidence::from_json_any(j.as_bytes()).expect("parse"), e);
}
