//! podvm measured boot: launch measurements computed from one launch plan.
//!
//! * SEV-SNP: [`SnpLaunchPlan`] lists the pages a QEMU/OVMF direct-boot launch loads, in order, with
//!   their SNP page types; [`SnpLaunchPlan::measure`] chains them into the launch digest exactly as
//!   the AMD firmware does. Legacy SEV/SEV-ES digests via [`SevLaunchPlan`].
//! * TDX: [`tdx`] parses TDVF metadata, computes MRTD, replays CC event logs into RTMRs and
//!   predicts the RTMR1/RTMR2 events of a direct kernel boot.
//! * [`refvals`]: reference-value export (optionally Ed25519-signed), trustee RVPS form, diff.
//! * [`idblock`]: SNP ID block and ID authentication information.
//!
//! ```no_run
//! use podvm_measured_boot::{Firmware, SnpLaunchPlan, VmmType};
//! let plan = SnpLaunchPlan::builder()
//!     .firmware(Firmware::from_path("OVMF.fd")?)
//!     .kernel_file("vmlinuz")
//!     .initrd_file("initrd.img")
//!     .cmdline("console=ttyS0")
//!     .vcpus(2)
//!     .vcpu_type("EPYC-v4")
//!     .vmm(VmmType::Qemu)
//!     .guest_features(0x1)
//!     .build()?;
//! println!("{}", plan.measure());
//! # Ok::<(), podvm_measured_boot::Error>(())
//! ```

pub mod emulated_firmware;
pub mod error;
pub mod explain;
pub mod guid;
pub mod idblock;
pub mod ovmf;
pub mod plan;
pub mod refvals;
pub mod sev_hashes;
pub mod snp;
pub mod tdx;
pub mod vmsa;

#[cfg(test)]
pub(crate) mod testdata;

pub use error::{Error, Result};
pub use ovmf::Firmware;
pub use plan::{LaunchInputs, LaunchPlanBuilder, Measurement, Mode, SevLaunchPlan, VcpuModel};
pub use sev_hashes::FileDigest;
pub use snp::{QemuSettings, SnpLaunchPlan, SnpMeasurement, SnpPage, SnpPageType, ovmf_digest};
pub use vmsa::VmmType;

/// Version of this crate, recorded in reference-value exports.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
