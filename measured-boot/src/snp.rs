//! The SEV-SNP launch digest: a SHA-384 chain over one PAGE_INFO structure per page the launch
//! loads (SNP ABI spec, SNP_LAUNCH_UPDATE, "PAGE_INFO" layout), and [`SnpLaunchPlan`], the ordered
//! list of those pages.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha384};

use crate::error::{Error, Result};
use crate::ovmf::{Firmware, PAGE_SIZE};
use crate::plan::LaunchInputs;

/// Size of a launch digest (SHA-384).
pub const LD_SIZE: usize = 48;

// PAGE_INFO layout (SNP ABI spec, table "PAGE_INFO Structure").
const PI_OFF_DIGEST_CUR: usize = 0x00;
const PI_OFF_CONTENTS: usize = 0x30;
const PI_OFF_LENGTH: usize = 0x60;
const PI_OFF_PAGE_TYPE: usize = 0x62;
const PI_OFF_IMI_PAGE: usize = 0x63;
const PI_OFF_VMPL3_PERMS: usize = 0x64;
const PI_OFF_VMPL2_PERMS: usize = 0x65;
const PI_OFF_VMPL1_PERMS: usize = 0x66;
const PI_OFF_GPA: usize = 0x68;
/// Size of PAGE_INFO.
pub const PAGE_INFO_SIZE: usize = 0x70;

/// The GPA recorded for VMSA pages: (u64)-1, page aligned, bits above 51 cleared.
pub const VMSA_GPA: u64 = 0x0000_ffff_ffff_f000;

/// SNP page types (SNP ABI spec, SNP_LAUNCH_UPDATE PAGE_TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnpPageType {
    Normal = 0x01,
    Vmsa = 0x02,
    Zero = 0x03,
    Unmeasured = 0x04,
    Secrets = 0x05,
    Cpuid = 0x06,
}

impl SnpPageType {
    /// The type for a PAGE_TYPE byte (the values of the SNP ABI and of KVM's
    /// `KVM_SEV_SNP_PAGE_TYPE_*`), `None` for a reserved value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Normal,
            0x02 => Self::Vmsa,
            0x03 => Self::Zero,
            0x04 => Self::Unmeasured,
            0x05 => Self::Secrets,
            0x06 => Self::Cpuid,
            _ => return None,
        })
    }
}

/// One PAGE_INFO record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    pub digest_cur: [u8; LD_SIZE],
    pub contents: [u8; LD_SIZE],
    pub page_type: u8,
    pub imi_page: bool,
    pub vmpl3_perms: u8,
    pub vmpl2_perms: u8,
    pub vmpl1_perms: u8,
    pub gpa: u64,
}

impl PageInfo {
    /// Serialises to the 0x70-byte structure that is hashed.
    pub fn to_bytes(&self) -> [u8; PAGE_INFO_SIZE] {
        let mut b = [0u8; PAGE_INFO_SIZE];
        b[PI_OFF_DIGEST_CUR..PI_OFF_CONTENTS].copy_from_slice(&self.digest_cur);
        b[PI_OFF_CONTENTS..PI_OFF_LENGTH].copy_from_slice(&self.contents);
        b[PI_OFF_LENGTH..PI_OFF_PAGE_TYPE].copy_from_slice(&(PAGE_INFO_SIZE as u16).to_le_bytes());
        b[PI_OFF_PAGE_TYPE] = self.page_type;
        b[PI_OFF_IMI_PAGE] = self.imi_page as u8;
        b[PI_OFF_VMPL3_PERMS] = self.vmpl3_perms;
        b[PI_OFF_VMPL2_PERMS] = self.vmpl2_perms;
        b[PI_OFF_VMPL1_PERMS] = self.vmpl1_perms;
        b[PI_OFF_GPA..PI_OFF_GPA + 8].copy_from_slice(&self.gpa.to_le_bytes());
        b
    }

    /// Parses a 0x70-byte structure; `None` if its length field is wrong.
    pub fn parse(b: &[u8; PAGE_INFO_SIZE]) -> Option<Self> {
        let len = u16::from_le_bytes([b[PI_OFF_LENGTH], b[PI_OFF_LENGTH + 1]]);
        if len as usize != PAGE_INFO_SIZE {
            return None;
        }
        Some(PageInfo {
            digest_cur: b[PI_OFF_DIGEST_CUR..PI_OFF_CONTENTS].try_into().ok()?,
            contents: b[PI_OFF_CONTENTS..PI_OFF_LENGTH].try_into().ok()?,
            page_type: b[PI_OFF_PAGE_TYPE],
            imi_page: b[PI_OFF_IMI_PAGE] != 0,
            vmpl3_perms: b[PI_OFF_VMPL3_PERMS],
            vmpl2_perms: b[PI_OFF_VMPL2_PERMS],
            vmpl1_perms: b[PI_OFF_VMPL1_PERMS],
            gpa: u64::from_le_bytes(b[PI_OFF_GPA..PI_OFF_GPA + 8].try_into().ok()?),
        })
    }
}

/// An SNP launch measurement (the MEASUREMENT field of the attestation report).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnpMeasurement(pub [u8; LD_SIZE]);

impl SnpMeasurement {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SnpMeasurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnpMeasurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnpMeasurement({})", self.to_hex())
    }
}

impl FromStr for SnpMeasurement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::Invalid {
            what: "SNP measurement",
            value: s.into(),
            hint: "give 96 hex digits (48 bytes)".into(),
        };
        let v = hex::decode(s.trim()).map_err(|_| invalid())?;
        Ok(SnpMeasurement(v.try_into().map_err(|_| invalid())?))
    }
}

/// The running launch digest (guest context LD).
#[derive(Debug, Clone)]
pub struct LaunchDigest {
    ld: [u8; LD_SIZE],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// Starts from 48 zero bytes.
    pub fn new() -> Self {
        LaunchDigest { ld: [0; LD_SIZE] }
    }

    /// Starts from a precomputed digest (e.g. the OVMF-only digest).
    pub fn with_seed(seed: [u8; LD_SIZE]) -> Self {
        LaunchDigest { ld: seed }
    }

    /// Extends with one page: `contents` is SHA-384 of the page for NORMAL/VMSA pages, zero otherwise.
    pub fn update(&mut self, page_type: SnpPageType, gpa: u64, contents: [u8; LD_SIZE]) {
        let info = PageInfo {
            digest_cur: self.ld,
            contents,
            page_type: page_type as u8,
            imi_page: false,
            vmpl3_perms: 0,
            vmpl2_perms: 0,
            vmpl1_perms: 0,
            gpa,
        };
        self.ld = Sha384::digest(info.to_bytes()).into();
    }

    /// Extends with one page given by its bytes, applying the SNP rule for the page's
    /// contents: SHA-384 of the page for NORMAL and VMSA pages, 48 zero bytes for every other
    /// type (ZERO, UNMEASURED, SECRETS, CPUID), whose bytes the PSP does not measure.
    pub fn update_page(&mut self, page_type: SnpPageType, gpa: u64, page: &[u8]) {
        let contents = match page_type {
            SnpPageType::Normal | SnpPageType::Vmsa => Sha384::digest(page).into(),
            _ => [0; LD_SIZE],
        };
        self.update(page_type, gpa, contents);
    }

    /// The current value.
    pub fn value(&self) -> SnpMeasurement {
        SnpMeasurement(self.ld)
    }
}

/// Which vCPU a VMSA page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRole {
    /// The bootstrap processor (vCPU 0), reset at 0xfffffff0.
    Bsp,
    /// An application processor, reset at the firmware's SEV-ES reset block EIP.
    Ap(u32),
}

/// Where a page's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    /// `PAGE_SIZE` bytes of the firmware image at this offset.
    Firmware { offset: usize },
    /// The page holding the SEV kernel/initrd/cmdline hash table.
    KernelHashes,
    /// The initial VMSA of a vCPU.
    Vmsa(VcpuRole),
    /// No data (ZERO, UNMEASURED, SECRETS, CPUID pages: the firmware/PSP fills them).
    None,
}

/// One page a launch loads, in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpPage {
    pub gpa: u64,
    pub page_type: SnpPageType,
    pub source: PageSource,
}

/// The ordered pages of an SNP launch and everything needed to produce their bytes.
///
/// Built with [`crate::LaunchPlanBuilder::build_snp`] (or [`SnpLaunchPlan::builder`]); the host
/// runtime launches from it, the emulated TEE signs [`SnpLaunchPlan::measure`], and `podvm measure`
/// exports it: one code path.
#[derive(Debug, Clone)]
pub struct SnpLaunchPlan {
    pub(crate) inputs: LaunchInputs,
    pub(crate) seed: Option<[u8; LD_SIZE]>,
    pub(crate) firmware: Arc<[u8]>,
    /// SHA-384 of each firmware page (empty when seeded), computed once at build time.
    pub(crate) firmware_digests: Vec<[u8; LD_SIZE]>,
    pub(crate) pages: Vec<SnpPage>,
    pub(crate) hashes_page: Option<Box<[u8; PAGE_SIZE]>>,
    pub(crate) vmsa_bsp: Box<[u8; PAGE_SIZE]>,
    pub(crate) vmsa_ap: Option<Box<[u8; PAGE_SIZE]>>,
}

impl SnpLaunchPlan {
    /// Starts a builder (same as [`crate::LaunchPlanBuilder::new`]).
    pub fn builder() -> crate::plan::LaunchPlanBuilder {
        crate::plan::LaunchPlanBuilder::new()
    }

    /// The pages in launch order. Firmware pages are absent when the plan was seeded with a
    /// precomputed OVMF digest.
    pub fn pages(&self) -> &[SnpPage] {
        &self.pages
    }

    /// The inputs the plan was built from.
    pub fn inputs(&self) -> &LaunchInputs {
        &self.inputs
    }

    /// SNP HOST_DATA to pass at launch finish (and to put in emulated reports), if any.
    pub fn host_data(&self) -> Option<[u8; 32]> {
        self.inputs.host_data
    }

    /// The QEMU settings that must agree with this plan for the launch to produce
    /// [`Self::measure`]: `-smp N`, `-cpu MODEL` (when the vCPU model was given by name) and the
    /// `sev-snp-guest` object properties `kernel-hashes=on|off` and `host-data=<base64>`. The
    /// caller adds the object id, `cbitpos`, `reduced-phys-bits`, policy and the file paths.
    pub fn qemu_settings(&self) -> QemuSettings {
        use base64::Engine as _;
        let i = &self.inputs;
        let mut object_props = vec![format!(
            "kernel-hashes={}",
            if i.kernel.is_some() { "on" } else { "off" }
        )];
        if let Some(h) = i.host_data {
            object_props.push(format!(
                "host-data={}",
                base64::engine::general_purpose::STANDARD.encode(h)
            ));
        }
        QemuSettings {
            smp: i.vcpus,
            cpu: match &i.vcpu_model {
                Some(crate::plan::VcpuModel::Named(n)) => Some(n.clone()),
                _ => None,
            },
            sev_snp_guest_props: object_props,
        }
    }

    /// The OVMF digest seed, if the plan uses one instead of the firmware pages.
    pub fn ovmf_seed(&self) -> Option<SnpMeasurement> {
        self.seed.map(SnpMeasurement)
    }

    /// The bytes of a page with data (NORMAL and VMSA pages); `None` for pages without data.
    pub fn page_bytes(&self, page: &SnpPage) -> Option<&[u8]> {
        match page.source {
            PageSource::Firmware { offset } => self.firmware.get(offset..offset + PAGE_SIZE),
            PageSource::KernelHashes => self.hashes_page.as_deref().map(|p| &p[..]),
            PageSource::Vmsa(VcpuRole::Bsp) => Some(&self.vmsa_bsp[..]),
            PageSource::Vmsa(VcpuRole::Ap(_)) => self.vmsa_ap.as_deref().map(|p| &p[..]),
            PageSource::None => None,
        }
    }

    /// Computes the launch digest over the pages.
    pub fn measure(&self) -> SnpMeasurement {
        let mut ld = match self.seed {
            Some(s) => LaunchDigest::with_seed(s),
            None => LaunchDigest::new(),
        };
        let bsp_digest: [u8; LD_SIZE] = Sha384::digest(&self.vmsa_bsp[..]).into();
        let ap_digest: Option<[u8; LD_SIZE]> =
            self.vmsa_ap.as_ref().map(|p| Sha384::digest(&p[..]).into());
        for page in &self.pages {
            let contents = match page.source {
                PageSource::Vmsa(VcpuRole::Bsp) => bsp_digest,
                PageSource::Vmsa(VcpuRole::Ap(_)) => ap_digest.unwrap_or([0; LD_SIZE]),
                PageSource::None => [0; LD_SIZE],
                PageSource::Firmware { offset } => self
                    .firmware_digests
                    .get(offset / PAGE_SIZE)
                    .copied()
                    .unwrap_or_else(|| {
                        self.page_bytes(page)
                            .map(|b| Sha384::digest(b).into())
                            .unwrap_or([0; LD_SIZE])
                    }),
                PageSource::KernelHashes => self
                    .page_bytes(page)
                    .map(|b| Sha384::digest(b).into())
                    .unwrap_or([0; LD_SIZE]),
            };
            ld.update(page.page_type, page.gpa, contents);
        }
        ld.value()
    }
}

/// QEMU settings derived from a launch plan (see [`SnpLaunchPlan::qemu_settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSettings {
    /// `-smp` value.
    pub smp: u32,
    /// `-cpu` model, when the plan names one (an explicit signature has no QEMU model name).
    pub cpu: Option<String>,
    /// `key=value` properties for `-object sev-snp-guest,...`.
    pub sev_snp_guest_props: Vec<String>,
}

/// The OVMF-only launch digest (`snp:ovmf-hash` mode): the chain over the firmware pages alone,
/// starting from zero. Usable as the seed of a later launch digest.
pub fn ovmf_digest(firmware: &Firmware) -> SnpMeasurement {
    let mut ld = LaunchDigest::new();
    for (i, page) in firmware.data().chunks_exact(PAGE_SIZE).enumerate() {
        ld.update(
            SnpPageType::Normal,
            firmware.gpa() + (i * PAGE_SIZE) as u64,
            Sha384::digest(page).into(),
        );
    }
    ld.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_info_round_trips() {
        let pi = PageInfo {
            digest_cur: [1; LD_SIZE],
            contents: [2; LD_SIZE],
            page_type: SnpPageType::Vmsa as u8,
            imi_page: false,
            vmpl3_perms: 3,
            vmpl2_perms: 4,
            vmpl1_perms: 5,
            gpa: VMSA_GPA,
        };
        let b = pi.to_bytes();
        assert_eq!(&b[0x60..0x62], &[0x70, 0x00]);
        assert_eq!(b[0x62], 2);
        assert_eq!(&b[0x68..0x70], &VMSA_GPA.to_le_bytes());
        assert_eq!(PageInfo::parse(&b), Some(pi));
    }

    #[test]
    fn digest_chain_is_sha384_of_page_info() {
        let mut ld = LaunchDigest::new();
        ld.update(SnpPageType::Zero, 0x1000, [0; LD_SIZE]);
        let mut expect = [0u8; PAGE_INFO_SIZE];
        expect[0x60] = 0x70;
        expect[0x62] = 3;
        expect[0x69] = 0x10;
        let want: [u8; LD_SIZE] = Sha384::digest(expect).into();
        assert_eq!(ld.value().0, want);
    }

    #[test]
    fn update_page_hashes_only_measured_types() {
        let page = [7u8; PAGE_SIZE];
        let mut a = LaunchDigest::new();
        a.update_page(SnpPageType::Normal, 0x1000, &page);
        let mut b = LaunchDigest::new();
        b.update(SnpPageType::Normal, 0x1000, Sha384::digest(page).into());
        assert_eq!(a.value(), b.value());
        let mut z = LaunchDigest::new();
        z.update_page(SnpPageType::Zero, 0x1000, &page);
        let mut z0 = LaunchDigest::new();
        z0.update(SnpPageType::Zero, 0x1000, [0; LD_SIZE]);
        assert_eq!(z.value(), z0.value());
        assert_eq!(SnpPageType::from_u8(6), Some(SnpPageType::Cpuid));
        assert_eq!(SnpPageType::from_u8(0), None);
    }

    #[test]
    fn measurement_parses_hex() {
        let m: SnpMeasurement = "ab".repeat(48).parse().unwrap();
        assert_eq!(m.0, [0xab; 48]);
        assert!("abc".parse::<SnpMeasurement>().is_err());
    }
}
