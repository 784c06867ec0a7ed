//! Bad input never panics: every parser returns an error (or a value) on arbitrary bytes and on
//! randomly corrupted real samples.

use podvm_measured_boot::tdx::ccel::EventLog;
use podvm_measured_boot::tdx::pe_authenticode_sha384;
use podvm_measured_boot::tdx::tdvf::{MrtdOrder, TdvfDescriptor, mrtd};
use podvm_measured_boot::{Firmware, LaunchPlanBuilder};
use proptest::prelude::*;

const AMDSEV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
);
const OVMFX64: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_OvmfX64_suffix.bin"
);
const CCEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tdx/ccel/CCEL_data_ovmf"
);

/// Overwrites `n` bytes of the last 512 (where the tables live) with random values.
fn corrupt(mut data: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    let len = data.len();
    for &(at, v) in edits {
        data[len - 1 - at % 512.min(len)] = v;
    }
    data
}

fn exercise_firmware(data: Vec<u8>) {
    let Ok(fw) = Firmware::from_bytes("fuzz.fd", data) else {
        return;
    };
    let _ = fw.sev_es_reset_eip();
    let _ = LaunchPlanBuilder::new()
        .firmware(fw.clone())
        .vcpus(2)
        .vcpu_type("EPYC")
        .kernel_digest(podvm_measured_boot::FileDigest::from_bytes(
            "k", b"k", false,
        ))
        .build()
        .map(|p| p.measure());
    if let Ok(d) = TdvfDescriptor::from_firmware(&fw) {
        let _ = mrtd("fuzz.fd", fw.data(), &d, MrtdOrder::SinglePass);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn corrupted_amdsev_firmware(edits in prop::collection::vec((0usize..512, any::<u8>()), 1..6)) {
        exercise_firmware(corrupt(std::fs::read(AMDSEV).unwrap(), &edits));
    }

    #[test]
    fn corrupted_ovmfx64_firmware(edits in prop::collection::vec((0usize..512, any::<u8>()), 1..6)) {
        exercise_firmware(corrupt(std::fs::read(OVMFX64).unwrap(), &edits));
    }

    #[test]
    fn arbitrary_firmware(data in prop::collection::vec(any::<u8>(), 0..9000)) {
        exercise_firmware(data);
    }

    #[test]
    fn corrupted_event_log(edits in prop::collection::vec((0usize..2120, any::<u8>()), 1..6), cut in 0usize..2200) {
        let mut data = std::fs::read(CCEL).unwrap();
        for (at, v) in edits {
            data[at] = v;
        }
        data.truncate(cut.max(1));
        if let Ok(log) = EventLog::parse("fuzz", &data) {
            let _ = log.replay_rtmrs("fuzz");
        }
    }

    #[test]
    fn arbitrary_pe(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = pe_authenticode_sha384("fuzz", &data);
    }
}
