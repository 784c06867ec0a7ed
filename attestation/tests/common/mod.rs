//! Shared helpers for the integration tests: paths into ../shared/testdata.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::SystemTime;

use podvm_attestation::TrustAnchors;

pub const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(TESTDATA).join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read(rel)).expect("testdata JSON")
}

pub fn at(s: &str) -> SystemTime {
    SystemTime::from(
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("time"),
    )
}

/// AMD ARKs/ASKs from the SNP report folder (no VCEKs: those come per test).
pub fn amd_anchors() -> TrustAnchors {
    let mut a = TrustAnchors::default();
    for generation in ["milan", "genoa", "turin"] {
        for role in ["ark", "ask"] {
            let f = format!("snp/reports/{generation}_{role}.pem");
            a.add_cert_bytes(&read(&f), &f).expect("AMD cert");
        }
    }
    a
}

/// Intel root + TDX collateral.
pub fn intel_anchors() -> TrustAnchors {
    let mut a = TrustAnchors::default();
    a.add_cert_bytes(&read("tdx/quotes/trusted_root.pem"), "trusted_root.pem")
        .expect("root");
    a.add_collateral_dir(&path("tdx/quotes"))
        .expect("collateral");
    a
}
