//! Verifications per second on one core: SNP (real Milan report + VCEK, AMD chain) and TDX
//! (quote v4 with PCK chain, CRLs, tcbInfo and QE identity), both full verifications.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podvm_attestation::snp::{CertEntry, CertKind};
use podvm_attestation::{Evidence, Expectations, TrustAnchors, verify};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ))
    .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).expect("testdata")
}

fn at(s: &str) -> SystemTime {
    SystemTime::from(
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("time"),
    )
}

fn bench(c: &mut Criterion) {
    let mut snp_anchors = TrustAnchors::default();
    snp_anchors
        .add_cert_bytes(&read("snp/reports/milan_ark.pem"), "ark")
        .expect("ark");
    snp_anchors
        .add_cert_bytes(&read("snp/reports/milan_ask.pem"), "ask")
        .expect("ask");
    let snp = Evidence::Snp {
        report: read("snp/reports/report_milan.bin"),
        cert_chain: Some(vec![CertEntry {
            kind: CertKind::Vcek,
            data: read("snp/reports/vcek_milan.der"),
        }]),
    };
    let snp_exp = Expectations {
        at: Some(at("2026-11-26T00:00:00Z")),
        ..Default::default()
    };
    verify(&snp, &snp_exp, &snp_anchors).expect("SNP evidence verifies");

    let mut tdx_anchors = TrustAnchors::default();
    tdx_anchors
        .add_cert_bytes(&read("tdx/quotes/trusted_root.pem"), "root")
        .expect("root");
    tdx_anchors
        .add_collateral_dir(&testdata("tdx/quotes"))
        .expect("collateral");
    let tdx = Evidence::Tdx {
        quote: read("tdx/quotes/tdx_quote_4.dat"),
        cc_eventlog: None,
    };
    let tdx_exp = Expectations {
        at: Some(at("2023-06-20T00:00:00Z")),
        allow_debug: true,
        ..Default::default()
    };
    verify(&tdx, &tdx_exp, &tdx_anchors).expect("TDX evidence verifies");

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("snp_milan_report", |b| {
        b.iter(|| verify(black_box(&snp), &snp_exp, &snp_anchors))
    });
    g.bench_function("tdx_quote_v4_with_collateral", |b| {
        b.iter(|| verify(black_box(&tdx), &tdx_exp, &tdx_anchors))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
