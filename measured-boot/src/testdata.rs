//! Paths of the shared public test vectors (../shared/testdata, a sibling of the repository).

pub const AMDSEV_SUFFIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
);
pub const OVMFX64_SUFFIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/snp/measurement/ovmf_OvmfX64_suffix.bin"
);
pub const CCEL_OVMF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tdx/ccel/CCEL_data_ovmf"
);
pub const CCEL_EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tdx/ccel/expected.json"
);
