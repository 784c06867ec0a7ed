//! The SNP evidence JSON is exactly what the `sev` crate's serde produces (the type CoCo's
//! attestation-agent serialises and trustee deserialises), for the real reports.

mod common;

use common::*;
use podvm_attestation::snp::AttestationReport;
use podvm_attestation::snp::json::SevAttestationReport;
use sev::parser::ByteParser as _;

#[test]
fn report_json_matches_sev_crate() {
    for f in ["report_milan.bin", "test-report.bin"] {
        let bytes = read(&format!("snp/reports/{f}"));
        let theirs =
            sev::firmware::guest::AttestationReport::from_bytes(&bytes).expect("sev parses");
        let theirs_json = serde_json::to_value(theirs).expect("sev serde");
        let ours =
            SevAttestationReport::from_report(&AttestationReport::parse(&bytes).expect("parse"));
        let ours_json = serde_json::to_value(&ours).expect("our serde");
        assert_eq!(ours_json, theirs_json, "{f}");
        // And their JSON parses back into our report, byte-identical.
        let back: SevAttestationReport =
            serde_json::from_value(theirs_json).expect("parse sev JSON");
        assert_eq!(
            back.to_report().expect("to report").to_bytes(),
            bytes,
            "{f}"
        );
    }
}

#[test]
fn cert_table_json_matches_sev_crate() {
    use podvm_attestation::snp::json::SevCertTableEntry;
    use podvm_attestation::snp::{CertEntry, CertKind};
    let vcek = read("snp/reports/vcek_milan.der");
    let theirs =
        sev::firmware::host::CertTableEntry::new(sev::firmware::host::CertType::VCEK, vcek.clone());
    let ours = SevCertTableEntry::from(&CertEntry {
        kind: CertKind::Vcek,
        data: vcek,
    });
    assert_eq!(
        serde_json::to_value(&ours).expect("ours"),
        serde_json::to_value(&theirs).expect("theirs")
    );
}
