//! Acceptance: launch plan (measured-boot crate) → emulated report → verify → the claims carry
//! exactly the measurement the launch plan computes (what `podvm measure` prints), checked
//! against the published sev-snp-measure vector.

mod common;

use common::*;
use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_attestation::{Expectations, verify};
use podvm_measured_boot::{Firmware, SnpLaunchPlan, VmmType};

#[test]
fn launch_plan_measurement_round_trips_through_emulated_report() {
    let vectors = json("snp/measurement/vectors.json");
    let case = vectors["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == 7)
        .expect("case 7")
        .clone();
    let plan = SnpLaunchPlan::builder()
        .firmware(
            Firmware::from_path(path("snp/measurement/ovmf_AmdSev_suffix.bin")).expect("ovmf"),
        )
        .vcpus(1)
        .vcpu_type("EPYC-v4")
        .vmm(VmmType::Qemu)
        .guest_features(0x1)
        .build()
        .expect("plan");
    let measurement = plan.measure().0;
    assert_eq!(
        hex::encode(measurement),
        case["expected"].as_str().expect("expected")
    );

    let tmp = tempfile::tempdir().expect("tmp");
    let psp = EmulatedPsp::open_or_create(&tmp.path().join("tee")).expect("psp");
    let host_data = [0x5a; 32];
    let ev = psp
        .evidence(&ReportRequest {
            measurement,
            host_data,
            report_data: [1; 64],
            ..Default::default()
        })
        .expect("report");
    let x = Expectations {
        measurement: Some(measurement.to_vec()),
        init_data: Some(host_data.to_vec()),
        ..Default::default()
    };
    let claims = verify(&ev, &x, &psp.trust_anchors()).expect("verifies");
    assert!(claims.emulated);
    assert_eq!(
        claims.measurement,
        case["expected"].as_str().expect("expected")
    );
}
