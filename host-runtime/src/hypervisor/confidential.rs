//! Typed QEMU arguments for confidential launches on real hardware: AMD SEV-SNP (QEMU >= 9.1)
//! and Intel TDX (QEMU >= 10.1).
//!
//! Nothing here runs QEMU; it turns a [`ConfidentialLaunch`] into the confidential part of the
//! command line, after checking it the way QEMU and the hardware would, with one-line errors that
//! say what to change. The option syntax follows QEMU's `docs/system/i386/amd-memory-encryption.rst`
//! and `docs/system/i386/tdx.rst` and the `SevSnpGuestProperties` / `TdxGuestProperties` schemas
//! in `qapi/qom.json`.
//!
//! # SEV-SNP
//!
//! ```text
//! -machine q35,confidential-guest-support=sev0,memory-backend=ram1
//! -object memory-backend-memfd,id=ram1,size=<MiB>M,share=true,prealloc=false
//! -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on[,host-data=<base64>][,id-block=...,id-auth=...,author-key-enabled=on]
//! -bios <OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc>
//! ```
//!
//! SNP needs `q35` and OVMF: the launch digest covers the firmware, and the kernel, initrd and
//! command line only through the hash table OVMF announces (`kernel-hashes=on`), which OVMF checks
//! before it starts the kernel's EFI stub. So there is no `microvm` and no PVH direct boot: the
//! kernel must be a `bzImage`. Debian's `OVMF.fd` has no SNP kernel-hashes page; the AmdSev build
//! is needed. The `-smp` and `-cpu` values must be those of the launch plan
//! ([`podvm_measured_boot::SnpLaunchPlan::qemu_settings`]) for the hardware to produce the
//! measurement `podvm measure` predicts; [`SnpGuestConfig::for_plan`] takes `kernel-hashes` and
//! `host-data` from the same plan.
//!
//! # TDX
//!
//! ```text
//! -machine q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram1
//! -object memory-backend-memfd,id=ram1,size=<MiB>M,share=true,prealloc=false
//! -object {"qom-type":"tdx-guest","id":"tdx0","sept-ve-disable":true,"quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}
//! -bios <TDVF>
//! ```
//!
//! The `tdx-guest` object is given in QEMU's JSON form because `quote-generation-socket` is a
//! `SocketAddress`, which the `key=value` syntax cannot express.
//!
//! # Calling it from the QEMU backend
//!
//! Build a [`ConfidentialLaunch`] with [`ConfidentialLaunch::for_spec`] (the version from
//! [`QemuVersion::probe`] on the QEMU binary), call [`ConfidentialLaunch::qemu_args`], and in
//! `QemuBackend`'s argument list replace the `-M <machine>,memory-backend=mem` and
//! `-object memory-backend-memfd,id=mem,...` pair with the returned arguments; keep `-smp`, `-m`,
//! `-cpu`, `-kernel` (the bzImage), `-initrd` and `-append`. The memory stays a shared memfd, as
//! the vhost-user vsock backend needs; private guest memory comes from KVM's guest_memfd.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use base64::Engine as _;
use podvm_measured_boot::Firmware;
use podvm_measured_boot::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE, SignedIdBlock};
use podvm_measured_boot::ovmf::{SevSectionType, TDX_METADATA_OFFSET_GUID};

use super::{Accel, Machine, VmSpec};
use crate::guest_image::validate::KernelFormat;

/// QOM id of the `sev-snp-guest` object.
pub const SNP_OBJECT_ID: &str = "sev0";
/// QOM id of the `tdx-guest` object.
pub const TDX_OBJECT_ID: &str = "tdx0";
/// QOM id of the guest memory backend of a confidential launch.
pub const MEMORY_BACKEND_ID: &str = "ram1";

/// SNP guest policy QEMU uses by default: SMT allowed (bit 16), reserved bit 17 set, no debug, no
/// migration agent, ABI 0.0.
pub const DEFAULT_SNP_POLICY: u64 = 0x30000;
/// SNP policy bit 17: reserved, must be one (SNP firmware ABI, "Guest Policy").
pub const SNP_POLICY_RESERVED_MBO: u64 = 1 << 17;
/// SNP policy bit 19: debugging allowed.
pub const SNP_POLICY_DEBUG: u64 = 1 << 19;
/// TD attribute bit 28: SEPT_VE_DISABLE.
pub const TDX_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// Size of SNP HOST_DATA.
pub const HOST_DATA_SIZE: usize = 32;
/// Size of SNP guest-visible workarounds (`GOSVW`).
pub const GOSVW_SIZE: usize = 16;
/// Size of the TDX MRCONFIGID, MROWNER and MROWNERCONFIG values (SHA-384).
pub const TDX_MR_SIZE: usize = 48;
/// Longest Unix socket path (`sun_path` holds 108 bytes including the NUL).
const UNIX_PATH_MAX: usize = 107;

/// Why a confidential launch cannot be expressed. Each is one line that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfidentialError {
    #[error(
        "{tee} guests need QEMU >= {needed}, but this QEMU is {found}; install QEMU {needed} or newer and point PODVM_QEMU at it"
    )]
    QemuTooOld {
        tee: Tee,
        found: QemuVersion,
        needed: QemuVersion,
    },
    #[error(
        "cannot read a QEMU version from {output:?}; set PODVM_QEMU to a qemu-system-x86_64 binary"
    )]
    UnknownQemuVersion { output: String },
    #[error(
        "{tee} needs --machine q35: the guest starts in {firmware} and microvm has no firmware (PVH direct boot cannot be measured)"
    )]
    NeedsQ35 { tee: Tee, firmware: &'static str },
    #[error("{tee} needs --accel kvm on a {tee}-capable host; TCG cannot run confidential guests")]
    NeedsKvm { tee: Tee },
    #[error(
        "{tee} boots the kernel through the firmware's EFI stub, so it needs a bzImage, not a PVH vmlinux; pass --kernel <guest image>/bzImage"
    )]
    NeedsBzImage { tee: Tee },
    #[error("{tee} needs {firmware}; pass its path with --firmware PATH")]
    MissingFirmware { tee: Tee, firmware: &'static str },
    #[error("firmware {path}: {detail}")]
    BadFirmware { path: PathBuf, detail: String },
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} is not valid base64 ({detail}); give standard base64 with padding")]
    BadBase64 { what: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<ConfidentialError> for crate::VmError {
    fn from(e: ConfidentialError) -> Self {
        crate::VmError::InvalidConfig(e.to_string())
    }
}

/// The confidential-computing technologies QEMU can launch here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tee {
    Snp,
    Tdx,
}

impl Tee {
    /// The first QEMU release with upstream support.
    pub fn min_qemu(self) -> QemuVersion {
        match self {
            Tee::Snp => QemuVersion::new(9, 1, 0),
            Tee::Tdx => QemuVersion::new(10, 1, 0),
        }
    }

    /// The firmware a launch needs, as said in messages.
    pub fn firmware(self) -> &'static str {
        match self {
            Tee::Snp => "an OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc (with SNP kernel hashes)",
            Tee::Tdx => "a TDVF (OVMF with TDX metadata, e.g. OvmfPkg/IntelTdx/IntelTdxX64.dsc)",
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tee::Snp => "SEV-SNP",
            Tee::Tdx => "TDX",
        })
    }
}

/// A QEMU release, `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl QemuVersion {
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// Parses the output of `qemu-system-x86_64 --version`, e.g.
    /// `QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)`.
    pub fn from_version_output(output: &str) -> Result<Self, ConfidentialError> {
        let unknown = || ConfidentialError::UnknownQemuVersion {
            output: output.lines().next().unwrap_or("").trim().to_string(),
        };
        let line = output
            .lines()
            .find(|l| l.contains("QEMU emulator version "))
            .ok_or_else(unknown)?;
        let rest = &line[line.find("version ").ok_or_else(unknown)? + "version ".len()..];
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(unknown)
    }

    /// Runs `qemu --version` and parses its output.
    pub fn probe(qemu: &Path) -> Result<Self, ConfidentialError> {
        let out = Command::new(qemu).arg("--version").output().map_err(|e| {
            ConfidentialError::UnknownQemuVersion {
                output: format!("{} --version: {e}", qemu.display()),
            }
        })?;
        Self::from_version_output(&String::from_utf8_lossy(&out.stdout))
    }

    /// `Ok` if this release can launch `tee` guests.
    pub fn require(self, tee: Tee) -> Result<(), ConfidentialError> {
        let needed = tee.min_qemu();
        if self < needed {
            return Err(ConfidentialError::QemuTooOld {
                tee,
                found: self,
                needed,
            });
        }
        Ok(())
    }
}

impl FromStr for QemuVersion {
    type Err = ();
    /// `7.2.19`, `9.1`, `10.1.0`; anything after the numeric part of a component (`9.2.0-rc1`'s
    /// `-rc1`) is ignored.
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.');
        let mut num = |required: bool| -> Result<u32, ()> {
            match parts.next() {
                None if !required => Ok(0),
                None => Err(()),
                Some(p) => {
                    let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().map_err(|_| ())
                }
            }
        };
        let major = num(true)?;
        let minor = num(true)?;
        let micro = num(false)?;
        Ok(QemuVersion::new(major, minor, micro))
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], ConfidentialError> {
    bytes.try_into().map_err(|_| ConfidentialError::BadLength {
        what,
        expected: N,
        got: bytes.len(),
    })
}

fn check_base64(what: &'static str, value: &str, expected: usize) -> Result<(), ConfidentialError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| ConfidentialError::BadBase64 {
            what,
            detail: e.to_string(),
        })?;
    if bytes.len() != expected {
        return Err(ConfidentialError::BadLength {
            what,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// The `sev-snp-guest` object (QEMU `SevSnpGuestProperties` and `SevCommonProperties`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpGuestConfig {
    /// Guest policy (`policy=`); bit 17 must be set.
    pub policy: u64,
    /// Position of the C-bit in guest page-table entries (51 on Milan and Genoa).
    pub cbitpos: u32,
    /// Physical address bits the C-bit costs.
    pub reduced_phys_bits: u32,
    /// Let QEMU put the kernel/initrd/cmdline hashes in the page OVMF announces (measured).
    pub kernel_hashes: bool,
    /// HOST_DATA (e.g. the init-data digest), reported in every attestation report.
    pub host_data: Option<[u8; HOST_DATA_SIZE]>,
    /// Base64 of the 96-byte ID block.
    pub id_block: Option<String>,
    /// Base64 of the 4096-byte ID authentication information.
    pub id_auth: Option<String>,
    /// The ID auth information carries an author key.
    pub author_key_enabled: bool,
    /// Guest OS visible workarounds (16 bytes, `guest-visible-workarounds=`).
    pub guest_visible_workarounds: Option<[u8; GOSVW_SIZE]>,
    /// Forbid VCEK-signed reports (the guest must use a VLEK).
    pub vcek_disabled: bool,
}

impl Default for SnpGuestConfig {
    fn default() -> Self {
        SnpGuestConfig {
            policy: DEFAULT_SNP_POLICY,
            cbitpos: 51,
            reduced_phys_bits: 1,
            kernel_hashes: true,
            host_data: None,
            id_block: None,
            id_auth: None,
            author_key_enabled: false,
            guest_visible_workarounds: None,
            vcek_disabled: false,
        }
    }
}

impl SnpGuestConfig {
    /// The defaults with `kernel-hashes` and `host-data` as the launch plan measured them.
    pub fn for_plan(plan: &podvm_measured_boot::SnpLaunchPlan) -> Self {
        SnpGuestConfig {
            kernel_hashes: plan.inputs().kernel.is_some(),
            host_data: plan.host_data(),
            ..Self::default()
        }
    }

    /// Sets HOST_DATA; errors unless `bytes` is 32 bytes long.
    pub fn with_host_data(mut self, bytes: &[u8]) -> Result<Self, ConfidentialError> {
        self.host_data = Some(fixed("SNP host-data", bytes)?);
        Ok(self)
    }

    /// Sets the ID block and ID auth information (with the author key) of a signed ID block.
    pub fn with_id_block(mut self, signed: &SignedIdBlock) -> Self {
        self.id_block = Some(signed.id_block_base64());
        self.id_auth = Some(signed.id_auth_base64());
        self.author_key_enabled = true;
        self
    }

    /// Checks the values QEMU or the SNP firmware would refuse.
    pub fn validate(&self) -> Result<(), ConfidentialError> {
        if self.policy & SNP_POLICY_RESERVED_MBO == 0 {
            return Err(ConfidentialError::Invalid(format!(
                "SNP policy {:#x} has bit 17 clear, which the SNP firmware requires set; use e.g. {DEFAULT_SNP_POLICY:#x}",
                self.policy
            )));
        }
        if let Some(b) = &self.id_block {
            check_base64("SNP id-block", b, ID_BLOCK_SIZE)?;
        }
        if let Some(a) = &self.id_auth {
            check_base64("SNP id-auth", a, ID_AUTH_SIZE)?;
        }
        if self.id_auth.is_some() && self.id_block.is_none() {
            return Err(ConfidentialError::Invalid(
                "SNP id-auth was given without id-block; pass the ID block it signs as well".into(),
            ));
        }
        if self.author_key_enabled && self.id_auth.is_none() {
            return Err(ConfidentialError::Invalid(
                "SNP author-key-enabled needs id-auth carrying the author key; pass id-auth or turn author-key-enabled off".into(),
            ));
        }
        Ok(())
    }

    /// The `-object` value.
    pub fn object_arg(&self) -> Result<String, ConfidentialError> {
        self.validate()?;
        let onoff = |b: bool| if b { "on" } else { "off" };
        let mut props = vec![
            "sev-snp-guest".to_string(),
            format!("id={SNP_OBJECT_ID}"),
            format!("cbitpos={}", self.cbitpos),
            format!("reduced-phys-bits={}", self.reduced_phys_bits),
            format!("policy={:#x}", self.policy),
            format!("kernel-hashes={}", onoff(self.kernel_hashes)),
        ];
        if let Some(h) = &self.host_data {
            props.push(format!("host-data={}", b64(h)));
        }
        if let Some(b) = &self.id_block {
            props.push(format!("id-block={b}"));
        }
        if let Some(a) = &self.id_auth {
            props.push(format!("id-auth={a}"));
        }
        if self.author_key_enabled {
            props.push("author-key-enabled=on".into());
        }
        if let Some(w) = &self.guest_visible_workarounds {
            props.push(format!("guest-visible-workarounds={}", b64(w)));
        }
        if self.vcek_disabled {
            props.push("vcek-disabled=on".into());
        }
        Ok(props.join(","))
    }
}

/// Where QEMU reaches the TDX Quote Generation Service (a QEMU `SocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgsAddress {
    /// `vsock:CID:PORT`; QGS usually listens on the host, CID 2.
    Vsock { cid: u32, port: u32 },
    /// `unix:PATH`, e.g. `/var/run/tdx-qgs/qgs.socket`.
    Unix(PathBuf),
}

impl FromStr for QgsAddress {
    type Err = ConfidentialError;
    fn from_str(s: &str) -> Result<Self, ConfidentialError> {
        let bad = || {
            ConfidentialError::Invalid(format!(
                "quote generation socket {s:?} is neither vsock:CID:PORT nor unix:PATH; e.g. vsock:2:4050"
            ))
        };
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(QgsAddress::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("vsock:").ok_or_else(bad)?;
        let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
        Ok(QgsAddress::Vsock {
            cid: cid.parse().map_err(|_| bad())?,
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

impl QgsAddress {
    fn validate(&self) -> Result<(), ConfidentialError> {
        match self {
            QgsAddress::Unix(p) => {
                let len = p.as_os_str().len();
                if !p.is_absolute() || len > UNIX_PATH_MAX {
                    return Err(ConfidentialError::Invalid(format!(
                        "quote generation socket path {} must be absolute and at most {UNIX_PATH_MAX} bytes (it is {len})",
                        p.display()
                    )));
                }
            }
            QgsAddress::Vsock { cid, .. } if *cid == 0 || *cid == u32::MAX => {
                return Err(ConfidentialError::Invalid(format!(
                    "quote generation socket vsock CID {cid} is not an address; QGS on the host is CID 2"
                )));
            }
            QgsAddress::Vsock { .. } => {}
        }
        Ok(())
    }

    /// QEMU's `SocketAddress` (`cid` and `port` are strings in its schema).
    fn to_socket_address(&self) -> SocketAddress {
        match self {
            QgsAddress::Vsock { cid, port } => SocketAddress::Vsock {
                cid: cid.to_string(),
                port: port.to_string(),
            },
            QgsAddress::Unix(p) => SocketAddress::Unix {
                path: p.display().to_string(),
            },
        }
    }
}

/// QEMU `SocketAddress` in JSON, fields in a fixed order.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum SocketAddress {
    Vsock { cid: String, port: String },
    Unix { path: String },
}

/// The `tdx-guest` object (QEMU `TdxGuestProperties`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxGuestConfig {
    /// Raw TD attributes; `None` leaves QEMU's default. Bit 28 must agree with `sept_ve_disable`.
    pub attributes: Option<u64>,
    /// TD attribute SEPT_VE_DISABLE (bit 28); Linux TD guests refuse to boot without it.
    pub sept_ve_disable: bool,
    pub mrconfigid: Option<[u8; TDX_MR_SIZE]>,
    pub mrowner: Option<[u8; TDX_MR_SIZE]>,
    pub mrownerconfig: Option<[u8; TDX_MR_SIZE]>,
    /// Where QEMU forwards the guest's GetQuote requests; without it the guest gets no quotes.
    pub quote_generation_socket: Option<QgsAddress>,
}

impl Default for TdxGuestConfig {
    fn default() -> Self {
        TdxGuestConfig {
            attributes: None,
            sept_ve_disable: true,
            mrconfigid: None,
            mrowner: None,
            mrownerconfig: None,
            quote_generation_socket: None,
        }
    }
}

/// The `tdx-guest` object in QEMU's JSON `-object` form, fields in a fixed order.
#[derive(serde::Serialize)]
struct TdxObject {
    #[serde(rename = "qom-type")]
    qom_type: &'static str,
    id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<u64>,
    #[serde(rename = "sept-ve-disable")]
    sept_ve_disable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mrconfigid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mrowner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mrownerconfig: Option<String>,
    #[serde(
        rename = "quote-generation-socket",
        skip_serializing_if = "Option::is_none"
    )]
    quote_generation_socket: Option<SocketAddress>,
}

impl TdxGuestConfig {
    /// Sets MRCONFIGID; errors unless `bytes` is 48 bytes long.
    pub fn with_mrconfigid(mut self, bytes: &[u8]) -> Result<Self, ConfidentialError> {
        self.mrconfigid = Some(fixed("TDX mrconfigid", bytes)?);
        Ok(self)
    }

    /// Sets MROWNER; errors unless `bytes` is 48 bytes long.
    pub fn with_mrowner(mut self, bytes: &[u8]) -> Result<Self, ConfidentialError> {
        self.mrowner = Some(fixed("TDX mrowner", bytes)?);
        Ok(self)
    }

    /// Sets MROWNERCONFIG; errors unless `bytes` is 48 bytes long.
    pub fn with_mrownerconfig(mut self, bytes: &[u8]) -> Result<Self, ConfidentialError> {
        self.mrownerconfig = Some(fixed("TDX mrownerconfig", bytes)?);
        Ok(self)
    }

    /// Checks the values QEMU would refuse or silently override.
    pub fn validate(&self) -> Result<(), ConfidentialError> {
        if let Some(a) = self.attributes
            && (a & TDX_ATTR_SEPT_VE_DISABLE != 0) != self.sept_ve_disable
        {
            return Err(ConfidentialError::Invalid(format!(
                "TDX attributes {a:#x} {} SEPT_VE_DISABLE (bit 28) but sept-ve-disable is {}; make them agree",
                if a & TDX_ATTR_SEPT_VE_DISABLE != 0 {
                    "set"
                } else {
                    "clear"
                },
                if self.sept_ve_disable { "on" } else { "off" },
            )));
        }
        if let Some(q) = &self.quote_generation_socket {
            q.validate()?;
        }
        Ok(())
    }

    /// The `-object` value (JSON).
    pub fn object_arg(&self) -> Result<String, ConfidentialError> {
        self.validate()?;
        let obj = TdxObject {
            qom_type: "tdx-guest",
            id: TDX_OBJECT_ID,
            attributes: self.attributes,
            sept_ve_disable: self.sept_ve_disable,
            mrconfigid: self.mrconfigid.as_ref().map(|m| b64(m)),
            mrowner: self.mrowner.as_ref().map(|m| b64(m)),
            mrownerconfig: self.mrownerconfig.as_ref().map(|m| b64(m)),
            quote_generation_socket: self
                .quote_generation_socket
                .as_ref()
                .map(QgsAddress::to_socket_address),
        };
        Ok(serde_json::to_string(&obj).expect("serialising a plain struct cannot fail"))
    }
}

/// The confidential-guest object of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfidentialGuest {
    Snp(SnpGuestConfig),
    Tdx(TdxGuestConfig),
}

impl ConfidentialGuest {
    pub fn tee(&self) -> Tee {
        match self {
            ConfidentialGuest::Snp(_) => Tee::Snp,
            ConfidentialGuest::Tdx(_) => Tee::Tdx,
        }
    }

    /// The `-object` value.
    pub fn object_arg(&self) -> Result<String, ConfidentialError> {
        match self {
            ConfidentialGuest::Snp(c) => c.object_arg(),
            ConfidentialGuest::Tdx(c) => c.object_arg(),
        }
    }

    /// The `-machine` value.
    pub fn machine_arg(&self) -> String {
        match self {
            ConfidentialGuest::Snp(_) => format!(
                "q35,confidential-guest-support={SNP_OBJECT_ID},memory-backend={MEMORY_BACKEND_ID}"
            ),
            ConfidentialGuest::Tdx(_) => format!(
                "q35,kernel-irqchip=split,confidential-guest-support={TDX_OBJECT_ID},memory-backend={MEMORY_BACKEND_ID}"
            ),
        }
    }
}

/// Everything the confidential part of a QEMU command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfidentialLaunch {
    pub guest: ConfidentialGuest,
    /// OVMF AmdSev (SNP) or TDVF (TDX), loaded with `-bios`.
    pub firmware: Option<PathBuf>,
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Format of the directly booted kernel; `None` when the firmware boots from a disk.
    pub kernel_format: Option<KernelFormat>,
    /// The QEMU that will run the launch ([`QemuVersion::probe`]).
    pub qemu_version: QemuVersion,
}

impl ConfidentialLaunch {
    /// The launch of `spec` (machine, accelerator, memory, kernel format) as a `guest`.
    pub fn for_spec(
        guest: ConfidentialGuest,
        spec: &VmSpec,
        firmware: Option<PathBuf>,
        qemu_version: QemuVersion,
    ) -> Self {
        ConfidentialLaunch {
            guest,
            firmware,
            machine: spec.machine,
            accel: spec.accel,
            memory_mib: spec.memory_mib,
            kernel_format: Some(spec.kernel_format),
            qemu_version,
        }
    }

    /// Checks the launch; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfidentialError> {
        let tee = self.guest.tee();
        self.qemu_version.require(tee)?;
        if self.machine != Machine::Q35 {
            return Err(ConfidentialError::NeedsQ35 {
                tee,
                firmware: tee.firmware(),
            });
        }
        if self.accel != Accel::Kvm {
            return Err(ConfidentialError::NeedsKvm { tee });
        }
        if self.kernel_format == Some(KernelFormat::PvhElf) {
            return Err(ConfidentialError::NeedsBzImage { tee });
        }
        if let ConfidentialGuest::Snp(c) = &self.guest
            && self.kernel_format.is_some()
            && !c.kernel_hashes
        {
            return Err(ConfidentialError::Invalid(
                "SEV-SNP with a direct kernel boot and kernel-hashes=off leaves the kernel, initrd and command line unmeasured; turn kernel-hashes on".into(),
            ));
        }
        if self.memory_mib == 0 {
            return Err(ConfidentialError::Invalid(
                "guest memory is 0 MiB; pass --memory MiB".into(),
            ));
        }
        self.check_firmware()?;
        self.guest.object_arg().map(drop)
    }

    fn check_firmware(&self) -> Result<(), ConfidentialError> {
        let tee = self.guest.tee();
        let path = self
            .firmware
            .as_ref()
            .ok_or(ConfidentialError::MissingFirmware {
                tee,
                firmware: tee.firmware(),
            })?;
        let bad = |detail: String| ConfidentialError::BadFirmware {
            path: path.clone(),
            detail,
        };
        let fw = Firmware::from_path(path).map_err(|e| bad(e.to_string()))?;
        if fw
            .data()
            .starts_with(podvm_measured_boot::emulated_firmware::BODY_PATTERN)
        {
            return Err(bad(format!(
                "is podvm's emulated-SNP firmware, which only measures and cannot boot; pass {}",
                tee.firmware()
            )));
        }
        match tee {
            Tee::Snp => {
                let wants_hashes = matches!(&self.guest, ConfidentialGuest::Snp(c) if c.kernel_hashes)
                    && self.kernel_format.is_some();
                if wants_hashes
                    && (!fw.has_sev_section(SevSectionType::SnpKernelHashes)
                        || fw.sev_hashes_table_gpa().is_none())
                {
                    return Err(bad(format!(
                        "has no SNP kernel-hashes page, so the kernel could not be measured (Debian's OVMF.fd has none); pass {}",
                        tee.firmware()
                    )));
                }
                if !fw.has_sev_section(SevSectionType::SnpSecrets) {
                    return Err(bad(format!(
                        "declares no SNP secrets page, so it cannot run SEV-SNP guests; pass {}",
                        tee.firmware()
                    )));
                }
            }
            Tee::Tdx => {
                if fw.table_entry(&TDX_METADATA_OFFSET_GUID).is_none() {
                    return Err(bad(format!(
                        "has no TDX metadata, so it is not a TDVF; pass {}",
                        tee.firmware()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The confidential part of the QEMU command line: `-machine`, the memory backend, the
    /// confidential-guest object and `-bios` (see the module documentation for how it combines
    /// with the rest).
    pub fn qemu_args(&self) -> Result<Vec<OsString>, ConfidentialError> {
        self.validate()?;
        let firmware = self.firmware.as_ref().expect("validated");
        let mut args: Vec<OsString> = vec![
            "-machine".into(),
            self.guest.machine_arg().into(),
            "-object".into(),
            format!(
                "memory-backend-memfd,id={MEMORY_BACKEND_ID},size={}M,share=true,prealloc=false",
                self.memory_mib
            )
            .into(),
            "-object".into(),
            self.guest.object_arg()?.into(),
            "-bios".into(),
        ];
        args.push(firmware.clone().into_os_string());
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_measured_boot::ovmf::{FooterEntry, SEV_ES_RESET_BLOCK_GUID, encode_footer_table};

    const DEBIAN_VERSION: &str = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
    const AMDSEV_SUFFIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/snp/measurement/ovmf_AmdSev_suffix.bin"
    );
    const OVMFX64_SUFFIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/snp/measurement/ovmf_OvmfX64_suffix.bin"
    );

    fn launch(guest: ConfidentialGuest, firmware: &str) -> ConfidentialLaunch {
        ConfidentialLaunch {
            guest,
            firmware: Some(firmware.into()),
            machine: Machine::Q35,
            accel: Accel::Kvm,
            memory_mib: 2048,
            kernel_format: Some(KernelFormat::BzImage),
            qemu_version: QemuVersion::new(10, 1, 0),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn debian_qemu_version_parses_and_is_too_old_for_both() {
        let v = QemuVersion::from_version_output(DEBIAN_VERSION).unwrap();
        assert_eq!(v, QemuVersion::new(7, 2, 19));
        assert_eq!(v.to_string(), "7.2.19");
        let err = v.require(Tee::Snp).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SEV-SNP guests need QEMU >= 9.1.0, but this QEMU is 7.2.19; install QEMU 9.1.0 or newer and point PODVM_QEMU at it"
        );
        assert!(
            v.require(Tee::Tdx)
                .unwrap_err()
                .to_string()
                .contains("QEMU >= 10.1.0")
        );
    }

    #[test]
    fn version_comparison_is_numeric() {
        let parse = |s: &str| QemuVersion::from_version_output(s).unwrap();
        assert_eq!(
            parse("QEMU emulator version 9.1.0\n"),
            QemuVersion::new(9, 1, 0)
        );
        assert_eq!(
            parse("QEMU emulator version 10.1.2 (v10.1.2-dirty)"),
            QemuVersion::new(10, 1, 2)
        );
        assert_eq!(
            parse("QEMU emulator version 9.2.0-rc1"),
            QemuVersion::new(9, 2, 0)
        );
        assert!(
            parse("QEMU emulator version 9.1.0")
                .require(Tee::Snp)
                .is_ok()
        );
        assert!(
            parse("QEMU emulator version 9.0.50")
                .require(Tee::Snp)
                .is_err()
        );
        assert!(
            parse("QEMU emulator version 10.0.3")
                .require(Tee::Tdx)
                .is_err()
        );
        assert!(
            parse("QEMU emulator version 10.1.0")
                .require(Tee::Tdx)
                .is_ok()
        );
        assert!(
            parse("QEMU emulator version 10.0.0")
                .require(Tee::Snp)
                .is_ok()
        );
        for bad in ["", "qemu-img version 9.1.0", "QEMU emulator version x.y"] {
            let err = QemuVersion::from_version_output(bad).unwrap_err();
            assert!(err.to_string().contains("PODVM_QEMU"), "{err}");
        }
    }

    #[test]
    fn installed_qemu_version_can_be_probed() {
        // Debian 12's QEMU in this environment; skipped where no QEMU is installed.
        let Some(qemu) = crate::paths::find_executable("PODVM_QEMU", "qemu-system-x86_64", &[])
        else {
            return;
        };
        let v = QemuVersion::probe(&qemu).unwrap();
        assert!(v.major >= 7, "{v}");
    }

    #[test]
    fn snp_default_arguments() {
        let cfg = SnpGuestConfig::default()
            .with_host_data(&[0xab; 32])
            .unwrap();
        let args = strings(
            launch(ConfidentialGuest::Snp(cfg), AMDSEV_SUFFIX)
                .qemu_args()
                .unwrap(),
        );
        let host_data = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";
        assert_eq!(
            args,
            [
                "-machine",
                "q35,confidential-guest-support=sev0,memory-backend=ram1",
                "-object",
                "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false",
                "-object",
                &format!(
                    "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data={host_data}"
                ),
                "-bios",
                AMDSEV_SUFFIX,
            ]
        );
    }

    #[test]
    fn snp_host_data_is_standard_base64_of_32_bytes() {
        let data: Vec<u8> = (0u8..32).collect();
        let cfg = SnpGuestConfig::default().with_host_data(&data).unwrap();
        let obj = cfg.object_arg().unwrap();
        let b64 = obj.split("host-data=").nth(1).unwrap();
        assert_eq!(b64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            data
        );
        for n in [0, 31, 33, 48] {
            let err = SnpGuestConfig::default()
                .with_host_data(&vec![0; n])
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("SNP host-data must be 32 bytes, got {n}")
            );
        }
    }

    #[test]
    fn snp_full_object_with_id_block() {
        let cfg = SnpGuestConfig {
            policy: 0x30000,
            id_block: Some(b64(&[1; ID_BLOCK_SIZE])),
            id_auth: Some(b64(&[2; ID_AUTH_SIZE])),
            author_key_enabled: true,
            guest_visible_workarounds: Some([0; GOSVW_SIZE]),
            vcek_disabled: true,
            kernel_hashes: false,
            ..SnpGuestConfig::default()
        };
        let obj = cfg.object_arg().unwrap();
        assert!(obj.starts_with(
            "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=off,id-block=AQEB"
        ));
        assert!(obj.contains(",id-auth=AgIC"));
        assert!(obj.ends_with(
            ",author-key-enabled=on,guest-visible-workarounds=AAAAAAAAAAAAAAAAAAAAAA==,vcek-disabled=on"
        ));
        assert!(!obj.contains("host-data"));
    }

    #[test]
    fn snp_bad_inputs_are_refused() {
        let bad_policy = SnpGuestConfig {
            policy: 0x10000,
            ..SnpGuestConfig::default()
        };
        assert!(
            bad_policy
                .object_arg()
                .unwrap_err()
                .to_string()
                .contains("bit 17")
        );
        let short_block = SnpGuestConfig {
            id_block: Some(b64(&[0; 95])),
            ..SnpGuestConfig::default()
        };
        assert_eq!(
            short_block.validate().unwrap_err().to_string(),
            "SNP id-block must be 96 bytes, got 95"
        );
        let not_b64 = SnpGuestConfig {
            id_block: Some("not base64!".into()),
            ..SnpGuestConfig::default()
        };
        assert!(matches!(
            not_b64.validate(),
            Err(ConfidentialError::BadBase64 { .. })
        ));
        let author_without_auth = SnpGuestConfig {
            author_key_enabled: true,
            ..SnpGuestConfig::default()
        };
        assert!(
            author_without_auth
                .validate()
                .unwrap_err()
                .to_string()
                .contains("author-key-enabled")
        );
    }

    #[test]
    fn snp_launch_errors_say_what_to_change() {
        let snp = || ConfidentialGuest::Snp(SnpGuestConfig::default());
        let err = |l: ConfidentialLaunch| l.qemu_args().unwrap_err().to_string();

        let mut l = launch(snp(), AMDSEV_SUFFIX);
        l.machine = Machine::Microvm;
        let e = err(l);
        assert!(
            e.contains("needs --machine q35") && e.contains("microvm"),
            "{e}"
        );

        let mut l = launch(snp(), AMDSEV_SUFFIX);
        l.kernel_format = Some(KernelFormat::PvhElf);
        assert!(err(l).contains("bzImage"));

        let mut l = launch(snp(), AMDSEV_SUFFIX);
        l.accel = Accel::Tcg;
        assert!(err(l).contains("--accel kvm"));

        let mut l = launch(snp(), AMDSEV_SUFFIX);
        l.firmware = None;
        let e = err(l);
        assert!(e.contains("AmdSevX64") && e.contains("--firmware"), "{e}");

        let l = launch(snp(), "/nonexistent/OVMF.fd");
        assert!(err(l).starts_with("firmware /nonexistent/OVMF.fd: "));

        // Debian-like OVMF (no SNP kernel hashes) with a direct kernel boot.
        let l = launch(snp(), OVMFX64_SUFFIX);
        let e = err(l);
        assert!(e.contains("no SNP kernel-hashes page"), "{e}");

        let mut l = launch(snp(), AMDSEV_SUFFIX);
        l.qemu_version = QemuVersion::from_version_output(DEBIAN_VERSION).unwrap();
        assert!(err(l).contains("need QEMU >= 9.1.0, but this QEMU is 7.2.19"));

        let mut l = launch(
            ConfidentialGuest::Snp(SnpGuestConfig {
                kernel_hashes: false,
                ..SnpGuestConfig::default()
            }),
            AMDSEV_SUFFIX,
        );
        assert!(err(l.clone()).contains("unmeasured"));
        l.kernel_format = None;
        assert!(l.qemu_args().is_ok());
    }

    #[test]
    fn the_emulated_firmware_is_refused_for_real_launches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firmware-snp-emulated.fd");
        std::fs::write(
            &path,
            podvm_measured_boot::emulated_firmware::emulated_firmware_bytes(),
        )
        .unwrap();
        let l = launch(
            ConfidentialGuest::Snp(SnpGuestConfig::default()),
            path.to_str().unwrap(),
        );
        let e = l.qemu_args().unwrap_err().to_string();
        assert!(e.contains("cannot boot"), "{e}");
    }

    #[test]
    fn snp_config_follows_the_launch_plan() {
        let plan = podvm_measured_boot::SnpLaunchPlan::builder()
            .firmware(Firmware::from_path(AMDSEV_SUFFIX).unwrap())
            .kernel_digest(podvm_measured_boot::FileDigest::from_bytes(
                "k", b"kernel", false,
            ))
            .cmdline("console=ttyS0")
            .vcpus(1)
            .vcpu_type("EPYC-v4")
            .host_data([7; 32])
            .build()
            .unwrap();
        let cfg = SnpGuestConfig::for_plan(&plan);
        let obj = cfg.object_arg().unwrap();
        for prop in plan.qemu_settings().sev_snp_guest_props {
            assert!(obj.contains(&format!(",{prop}")), "{obj} lacks {prop}");
        }
    }

    fn tdvf() -> tempfile::TempDir {
        // A minimal image with the TDX metadata footer entry (contents are not inspected further).
        let dir = tempfile::tempdir().unwrap();
        let mut image = vec![0u8; 4096];
        let footer = encode_footer_table(&[
            FooterEntry {
                guid: TDX_METADATA_OFFSET_GUID,
                data: 0x200u32.to_le_bytes().to_vec(),
            },
            FooterEntry {
                guid: SEV_ES_RESET_BLOCK_GUID,
                data: 0u32.to_le_bytes().to_vec(),
            },
        ]);
        let end = image.len() - 32;
        image[end - footer.len()..end].copy_from_slice(&footer);
        std::fs::write(dir.path().join("TDVF.fd"), image).unwrap();
        dir
    }

    #[test]
    fn tdx_arguments_and_json_object() {
        let dir = tdvf();
        let fw = dir.path().join("TDVF.fd");
        let cfg = TdxGuestConfig {
            quote_generation_socket: Some("vsock:2:4050".parse().unwrap()),
            ..TdxGuestConfig::default()
        }
        .with_mrconfigid(&[0x11; 48])
        .unwrap();
        let args = strings(
            launch(ConfidentialGuest::Tdx(cfg), fw.to_str().unwrap())
                .qemu_args()
                .unwrap(),
        );
        assert_eq!(args[0], "-machine");
        assert_eq!(
            args[1],
            "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram1"
        );
        assert_eq!(
            args[3],
            "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false"
        );
        assert_eq!(args[4], "-object");
        assert_eq!(
            args[5],
            format!(
                r#"{{"qom-type":"tdx-guest","id":"tdx0","sept-ve-disable":true,"mrconfigid":"{}","quote-generation-socket":{{"type":"vsock","cid":"2","port":"4050"}}}}"#,
                "ERER".repeat(16)
            )
        );
        assert_eq!(args[6..], ["-bios".to_string(), fw.display().to_string()]);

        let v: serde_json::Value = serde_json::from_str(&args[5]).unwrap();
        assert_eq!(v["qom-type"], "tdx-guest");
        assert_eq!(v["id"], "tdx0");
        assert_eq!(v["sept-ve-disable"], true);
        assert_eq!(v["quote-generation-socket"]["type"], "vsock");
        assert_eq!(v["quote-generation-socket"]["cid"], "2");
        assert_eq!(v["quote-generation-socket"]["port"], "4050");
        let mrconfigid = base64::engine::general_purpose::STANDARD
            .decode(v["mrconfigid"].as_str().unwrap())
            .unwrap();
        assert_eq!(mrconfigid, [0x11; 48]);
        assert!(v.get("mrowner").is_none() && v.get("attributes").is_none());
    }

    #[test]
    fn tdx_unix_qgs_and_attributes() {
        let cfg = TdxGuestConfig {
            attributes: Some(TDX_ATTR_SEPT_VE_DISABLE),
            quote_generation_socket: Some("unix:/var/run/tdx-qgs/qgs.socket".parse().unwrap()),
            ..TdxGuestConfig::default()
        }
        .with_mrowner(&[0; 48])
        .unwrap()
        .with_mrownerconfig(&[0xff; 48])
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&cfg.object_arg().unwrap()).unwrap();
        assert_eq!(v["attributes"], 0x1000_0000u64);
        assert_eq!(
            v["quote-generation-socket"],
            serde_json::json!({"type": "unix", "path": "/var/run/tdx-qgs/qgs.socket"})
        );
        assert_eq!(v["mrowner"].as_str().unwrap().len(), 64);
        assert_eq!(v["mrownerconfig"], "/".repeat(64));
    }

    #[test]
    fn tdx_bad_inputs_are_refused() {
        assert_eq!(
            TdxGuestConfig::default()
                .with_mrconfigid(&[0; 32])
                .unwrap_err()
                .to_string(),
            "TDX mrconfigid must be 48 bytes, got 32"
        );
        let e = TdxGuestConfig {
            attributes: Some(0),
            ..TdxGuestConfig::default()
        }
        .object_arg()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SEPT_VE_DISABLE") && e.contains("make them agree"),
            "{e}"
        );
        for bad in [
            "vsock:2",
            "tcp:1.2.3.4:5",
            "vsock:x:1",
            "vsock:2:4294967296",
        ] {
            let e = bad.parse::<QgsAddress>().unwrap_err().to_string();
            assert!(e.contains("vsock:CID:PORT"), "{bad}: {e}");
        }
        let relative = TdxGuestConfig {
            quote_generation_socket: Some("unix:qgs.sock".parse().unwrap()),
            ..TdxGuestConfig::default()
        };
        assert!(
            relative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let long = TdxGuestConfig {
            quote_generation_socket: Some(QgsAddress::Unix(format!("/{}", "a".repeat(120)).into())),
            ..TdxGuestConfig::default()
        };
        assert!(long.validate().is_err());

        // A TDX launch with a firmware without TDX metadata, an old QEMU, or microvm.
        let tdx = || ConfidentialGuest::Tdx(TdxGuestConfig::default());
        let tdvf_dir = tdvf();
        let tdvf = tdvf_dir.path().join("TDVF.fd");
        let tdvf = tdvf.to_str().unwrap();
        assert!(launch(tdx(), tdvf).qemu_args().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.fd");
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let e = launch(tdx(), plain.to_str().unwrap())
            .qemu_args()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a TDVF"), "{e}");
        let mut l = launch(tdx(), tdvf);
        l.qemu_version = QemuVersion::new(9, 2, 0);
        assert!(
            l.qemu_args()
                .unwrap_err()
                .to_string()
                .contains("TDX guests need QEMU >= 10.1.0")
        );
        let mut l = launch(tdx(), tdvf);
        l.machine = Machine::Microvm;
        assert!(matches!(
            l.qemu_args(),
            Err(ConfidentialError::NeedsQ35 { .. })
        ));
    }

    #[test]
    fn errors_convert_to_vm_errors() {
        let e: crate::VmError = ConfidentialError::NeedsKvm { tee: Tee::Tdx }.into();
        assert_eq!(
            e.to_string(),
            "TDX needs --accel kvm on a TDX-capable host; TCG cannot run confidential guests"
        );
    }
}
