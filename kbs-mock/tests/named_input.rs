//! A measurement mismatch names the differing launch input when the guest's launch hint,
//! re-measured against the reference, reproduces the signed measurement.

mod common;

use std::sync::Arc;

use common::*;
use podvm_attestation::kbs_client::TeeKeyAlg;
use podvm_attestation::kbs_client::{
    AttesterSource, EmulatedSnpAttester, EvidenceSource, KbsError, WithLaunchHint,
};
use podvm_measured_boot::emulated_firmware::emulated_firmware;
use podvm_measured_boot::refvals::ReferenceValues;
use podvm_measured_boot::{FileDigest, LaunchPlanBuilder, Measurement, Mode};
use sha2::{Digest, Sha256};

fn file(name: &str, byte: u8) -> FileDigest {
    let data = vec![byte; 8192];
    FileDigest {
        name: name.into(),
        size: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
        sha384: None,
    }
}

fn launch(cmdline: &str, kernel: u8) -> (ReferenceValues, [u8; 48]) {
    let plan = LaunchPlanBuilder::new()
        .firmware(emulated_firmware())
        .kernel_digest(file("vmlinux", kernel))
        .initrd_digest(file("initramfs.cpio", 9))
        .cmdline(cmdline)
        .vcpus(1)
        .vcpu_type("EPYC-v4")
        .build_snp()
        .unwrap();
    let m = plan.measure();
    (
        ReferenceValues::from_launch(Mode::Snp, plan.inputs(), None, Measurement::Snp(m)),
        m.0,
    )
}

fn hinted(measurement: [u8; 48], cmdline: &str) -> Arc<dyn EvidenceSource> {
    Arc::new(WithLaunchHint {
        inner: Box::new(AttesterSource::new(EmulatedSnpAttester {
            psp: psp(),
            template: template(measurement),
        })),
        hint: serde_json::json!({"cmdline": cmdline, "vcpus": 1}),
    })
}

async fn refusal(reference: ReferenceValues, source: Arc<dyn EvidenceSource>) -> String {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path());
    cfg.reference_values = vec![reference];
    let s = start(cfg).await;
    let c = client(&s.url(false), source, TeeKeyAlg::EcP256);
    match c.attest().await {
        Err(KbsError::Rejected { detail, .. }) => detail,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_command_line_byte_is_named_by_the_kbs() {
    let (reference, _) = launch("console=ttyS0 podvm.demo=1", 1);
    let (_, measured) = launch("console=ttyS0 podvm.demo=2", 1);
    let detail = refusal(reference, hinted(measured, "console=ttyS0 podvm.demo=2")).await;
    assert!(
        detail.starts_with("measurement mismatch (snp_launch_measurement "),
        "{detail}"
    );
    assert!(
        detail.ends_with(
            "the launch differs from the reference only in: the kernel command line differs at byte 25: \"podvm.demo=2\" instead of \"podvm.demo=1\""
        ),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_does_not_reproduce_the_measurement_is_not_believed() {
    let (reference, _) = launch("podvm.demo=1", 1);
    // Another kernel, and a hint that pretends only the command line changed.
    let (_, measured) = launch("podvm.demo=2", 2);
    let detail = refusal(reference, hinted(measured, "podvm.demo=2")).await;
    assert!(
        detail.contains("the kernel, the initrd or the firmware differ from the reference"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hint_the_generic_reason_stays() {
    let (reference, _) = launch("podvm.demo=1", 1);
    let (_, measured) = launch("podvm.demo=2", 1);
    let detail = refusal(reference, emulated_source(measured)).await;
    assert!(detail.contains("differing input unknown"), "{detail}");
}
