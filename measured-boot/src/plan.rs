//! Launch inputs, the plan builder, and the mode-independent [`Measurement`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest, Sha256, Sha384};

use crate::error::{Error, Result};
use crate::ovmf::{Firmware, PAGE_SIZE, SevSectionType};
use crate::sev_hashes::{FileDigest, SevHashTable, cmdline_bytes};
use crate::snp::{
    LD_SIZE, PageSource, SnpLaunchPlan, SnpMeasurement, SnpPage, SnpPageType, VMSA_GPA, VcpuRole,
    ovmf_digest,
};
use crate::vmsa::{BSP_RESET_EIP, VmmType, build_vmsa, vcpu_signature};

/// sev-snp-measure's default guest features (SNPActive only).
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// Measurement modes, named as sev-snp-measure names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Full SEV-SNP launch digest (SHA-384).
    #[serde(rename = "snp")]
    Snp,
    /// The digest after the OVMF pages only (SHA-384), a seed for `snp` with `--snp-ovmf-hash`.
    #[serde(rename = "snp:ovmf-hash")]
    SnpOvmfHash,
    /// Legacy SEV launch digest (SHA-256 of firmware and hash table).
    #[serde(rename = "sev")]
    Sev,
    /// Legacy SEV-ES launch digest (SHA-256 of firmware, hash table and VMSAs).
    #[serde(rename = "seves")]
    SevEs,
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "snp" | "sev-snp" => Ok(Mode::Snp),
            "snp:ovmf-hash" | "sev-snp:ovmf-hash" => Ok(Mode::SnpOvmfHash),
            "sev" => Ok(Mode::Sev),
            "seves" | "sev-es" => Ok(Mode::SevEs),
            _ => Err(Error::UnknownMode { name: s.into() }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Snp => "snp",
            Mode::SnpOvmfHash => "snp:ovmf-hash",
            Mode::Sev => "sev",
            Mode::SevEs => "seves",
        })
    }
}

/// How the vCPU model was given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuModel {
    /// A QEMU CPU model name (see [`crate::vmsa::VCPU_TYPES`]).
    Named(String),
    /// An explicit CPUID signature.
    Signature(u32),
}

impl VcpuModel {
    /// The CPUID signature.
    pub fn signature(&self) -> Result<u32> {
        match self {
            VcpuModel::Named(n) => vcpu_signature(n),
            VcpuModel::Signature(s) => Ok(*s),
        }
    }
}

/// Every input of a launch, after validation and hashing. Export and diff read this.
#[derive(Debug, Clone)]
pub struct LaunchInputs {
    pub firmware: Firmware,
    pub kernel: Option<FileDigest>,
    pub initrd: Option<FileDigest>,
    pub cmdline: Option<String>,
    pub vcpus: u32,
    pub vcpu_model: Option<VcpuModel>,
    /// The signature that goes into RDX of the QEMU VMSAs (0 when no model was given).
    pub vcpu_sig: u32,
    pub vmm: VmmType,
    pub guest_features: u64,
    /// SNP HOST_DATA (e.g. the initdata digest). Not part of the launch digest: the host passes it
    /// at SNP_LAUNCH_FINISH and it appears in every attestation report.
    pub host_data: Option<[u8; 32]>,
}

impl LaunchInputs {
    /// Inputs with only a firmware image (for `snp:ovmf-hash` and TDX records).
    pub fn for_firmware(firmware: Firmware) -> Self {
        LaunchInputs {
            firmware,
            kernel: None,
            initrd: None,
            cmdline: None,
            vcpus: 0,
            vcpu_model: None,
            vcpu_sig: 0,
            vmm: VmmType::Qemu,
            guest_features: DEFAULT_GUEST_FEATURES,
            host_data: None,
        }
    }

    /// The SEV hash table for the kernel/initrd/cmdline, when a kernel is given.
    pub fn hash_table(&self) -> Option<SevHashTable> {
        let kernel = self.kernel.as_ref()?;
        let initrd = self
            .initrd
            .as_ref()
            .map(|d| d.sha256)
            .unwrap_or_else(|| Sha256::digest([]).into());
        let cmdline = Sha256::digest(cmdline_bytes(self.cmdline.as_deref())).into();
        Some(SevHashTable::new(kernel.sha256, initrd, cmdline))
    }
}

#[derive(Debug, Clone)]
enum FileInput {
    Path(PathBuf),
    Digest(FileDigest),
}

/// Builder for launch plans. Setters never fail; `build_*` validates and reads files.
#[derive(Debug, Clone, Default)]
pub struct LaunchPlanBuilder {
    firmware: Option<Firmware>,
    ovmf_seed: Option<[u8; LD_SIZE]>,
    kernel: Option<FileInput>,
    initrd: Option<FileInput>,
    cmdline: Option<String>,
    vcpus: Option<u32>,
    vcpu_model: Option<VcpuModel>,
    vmm: Option<VmmType>,
    guest_features: Option<u64>,
    host_data: Option<[u8; 32]>,
    with_sha384: bool,
}

impl LaunchPlanBuilder {
    /// An empty builder: VMM qemu, guest features 0x1 unless set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The OVMF image.
    pub fn firmware(mut self, fw: Firmware) -> Self {
        self.firmware = Some(fw);
        self
    }

    /// Seeds the SNP digest with a precomputed OVMF digest instead of hashing the firmware pages
    /// (the firmware's footer table and SEV metadata are still used).
    pub fn ovmf_digest(mut self, seed: SnpMeasurement) -> Self {
        self.ovmf_seed = Some(seed.0);
        self
    }

    /// The kernel file (read and hashed by `build_*`).
    pub fn kernel_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(FileInput::Path(path.into()));
        self
    }

    /// The kernel, already hashed.
    pub fn kernel_digest(mut self, d: FileDigest) -> Self {
        self.kernel = Some(FileInput::Digest(d));
        self
    }

    /// The initrd file (read and hashed by `build_*`).
    pub fn initrd_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(FileInput::Path(path.into()));
        self
    }

    /// The initrd, already hashed.
    pub fn initrd_digest(mut self, d: FileDigest) -> Self {
        self.initrd = Some(FileInput::Digest(d));
        self
    }

    /// The kernel command line (without the trailing NUL).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// Number of vCPUs (one VMSA each).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = Some(n);
        self
    }

    /// vCPU model by QEMU name, e.g. `EPYC-v4`.
    pub fn vcpu_type(mut self, name: impl Into<String>) -> Self {
        self.vcpu_model = Some(VcpuModel::Named(name.into()));
        self
    }

    /// vCPU model by explicit CPUID signature.
    pub fn vcpu_sig(mut self, sig: u32) -> Self {
        self.vcpu_model = Some(VcpuModel::Signature(sig));
        self
    }

    /// The VMM whose reset state the VMSAs carry (default qemu).
    pub fn vmm(mut self, vmm: VmmType) -> Self {
        self.vmm = Some(vmm);
        self
    }

    /// VMSA SEV_FEATURES (default 0x1).
    pub fn guest_features(mut self, features: u64) -> Self {
        self.guest_features = Some(features);
        self
    }

    /// SNP HOST_DATA for the launch (recorded in the plan and exports; not measured).
    pub fn host_data(mut self, data: [u8; 32]) -> Self {
        self.host_data = Some(data);
        self
    }

    /// Also compute SHA-384 of kernel and initrd (for reference-value exports).
    pub fn with_sha384(mut self, yes: bool) -> Self {
        self.with_sha384 = yes;
        self
    }

    fn inputs(self, need_vcpus: bool) -> Result<(LaunchInputs, Option<[u8; LD_SIZE]>)> {
        let firmware = self.firmware.ok_or(Error::Missing {
            what: "firmware",
            hint: "pass --ovmf PATH",
        })?;
        if self.kernel.is_none() {
            if self.initrd.is_some() {
                return Err(Error::Missing {
                    what: "kernel",
                    hint: "an initrd was given; pass --kernel PATH as well",
                });
            }
            if self.cmdline.as_deref().is_some_and(|c| !c.is_empty()) {
                return Err(Error::Missing {
                    what: "kernel",
                    hint: "a command line was given; pass --kernel PATH as well",
                });
            }
        }
        let vcpus = match (need_vcpus, self.vcpus) {
            (false, v) => v.unwrap_or(0),
            (true, None) => {
                return Err(Error::Missing {
                    what: "vCPU count",
                    hint: "pass --vcpus N (N >= 1)",
                });
            }
            (true, Some(0)) => {
                return Err(Error::Invalid {
                    what: "vCPU count",
                    value: "0".into(),
                    hint: "a guest needs at least one vCPU; pass --vcpus N with N >= 1".into(),
                });
            }
            (true, Some(n)) => n,
        };
        let vmm = self.vmm.unwrap_or(VmmType::Qemu);
        let vcpu_sig = match &self.vcpu_model {
            Some(m) => m.signature()?,
            None if need_vcpus && vmm == VmmType::Qemu => {
                return Err(Error::Missing {
                    what: "vCPU type",
                    hint: "VMM type qemu puts the vCPU signature in the VMSA; pass --vcpu-type NAME or --vcpu-sig VALUE",
                });
            }
            None => 0,
        };
        let with_sha384 = self.with_sha384;
        let hash = |f: Option<FileInput>| -> Result<Option<FileDigest>> {
            match f {
                None => Ok(None),
                Some(FileInput::Digest(d)) => Ok(Some(d)),
                Some(FileInput::Path(p)) => FileDigest::from_path(p, with_sha384).map(Some),
            }
        };
        // Kernel and initrd are hashed concurrently: they dominate the cost for real images.
        let (kernel, initrd) = std::thread::scope(|s| {
            let k = s.spawn(|| hash(self.kernel));
            let i = hash(self.initrd);
            // A panic in the hashing thread is a bug, not bad input: propagate it.
            let k = k.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (k, i)
        });
        let inputs = LaunchInputs {
            firmware,
            kernel: kernel?,
            initrd: initrd?,
            cmdline: self.cmdline,
            vcpus,
            vcpu_model: self.vcpu_model,
            vcpu_sig,
            vmm,
            guest_features: self.guest_features.unwrap_or(DEFAULT_GUEST_FEATURES),
            host_data: self.host_data,
        };
        Ok((inputs, self.ovmf_seed))
    }

    /// Builds the SNP launch plan.
    pub fn build_snp(self) -> Result<SnpLaunchPlan> {
        // The firmware page digests are hashed while the kernel and initrd are.
        let fw = self.firmware.clone().filter(|_| self.ovmf_seed.is_none());
        std::thread::scope(|s| {
            let digests = s.spawn(move || fw.map(|f| firmware_page_digests(&f)));
            let built = self.inputs(true);
            let digests = digests
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let (inputs, seed) = built?;
            build_snp_plan(inputs, seed, digests)
        })
    }

    /// Alias of [`Self::build_snp`].
    pub fn build(self) -> Result<SnpLaunchPlan> {
        self.build_snp()
    }

    /// Builds a legacy SEV (`es = false`) or SEV-ES (`es = true`) plan.
    pub fn build_sev(self, es: bool) -> Result<SevLaunchPlan> {
        if self.ovmf_seed.is_some() {
            return Err(Error::Invalid {
                what: "option",
                value: "--snp-ovmf-hash".into(),
                hint: "a precomputed OVMF digest only applies to mode snp".into(),
            });
        }
        let (inputs, _) = self.inputs(es)?;
        SevLaunchPlan::new(inputs, es)
    }

    /// Builds and measures in `mode`.
    pub fn measure(self, mode: Mode) -> Result<Measurement> {
        match mode {
            Mode::Snp => Ok(Measurement::Snp(self.build_snp()?.measure())),
            Mode::SnpOvmfHash => {
                let fw = self.firmware.ok_or(Error::Missing {
                    what: "firmware",
                    hint: "pass --ovmf PATH",
                })?;
                Ok(Measurement::Snp(ovmf_digest(&fw)))
            }
            Mode::Sev => Ok(Measurement::Sev(self.build_sev(false)?.measure())),
            Mode::SevEs => Ok(Measurement::Sev(self.build_sev(true)?.measure())),
        }
    }
}

fn pages(gpa: u32, size: u32, page_type: SnpPageType) -> impl Iterator<Item = SnpPage> {
    (0..(size as u64).div_ceil(PAGE_SIZE as u64)).map(move |i| SnpPage {
        gpa: gpa as u64 + i * PAGE_SIZE as u64,
        page_type,
        source: PageSource::None,
    })
}

/// SHA-384 of every firmware page, in order.
fn firmware_page_digests(fw: &Firmware) -> Vec<[u8; LD_SIZE]> {
    fw.data()
        .chunks_exact(PAGE_SIZE)
        .map(|p| Sha384::digest(p).into())
        .collect()
}

fn build_snp_plan(
    inputs: LaunchInputs,
    seed: Option<[u8; LD_SIZE]>,
    firmware_digests: Option<Vec<[u8; LD_SIZE]>>,
) -> Result<SnpLaunchPlan> {
    let fw = &inputs.firmware;
    let name = || fw.name().to_string();
    let ap_eip = fw.sev_es_reset_eip()?;
    if inputs.vcpus > 1 && ap_eip == 0 {
        return Err(Error::BadSevMetadata {
            name: name(),
            detail: "the SEV-ES reset block gives AP reset EIP 0, so APs cannot start; use --vcpus 1 or another OVMF build".into(),
        });
    }
    let table = inputs.hash_table();
    if table.is_some() && !fw.has_sev_section(SevSectionType::SnpKernelHashes) {
        return Err(Error::NoKernelHashesSection { name: name() });
    }

    let mut out = Vec::new();
    if seed.is_none() {
        out.extend((0..fw.data().len() / PAGE_SIZE).map(|i| SnpPage {
            gpa: fw.gpa() + (i * PAGE_SIZE) as u64,
            page_type: SnpPageType::Normal,
            source: PageSource::Firmware {
                offset: i * PAGE_SIZE,
            },
        }));
    }
    let mut hashes_page = None;
    for s in fw.sev_sections() {
        match s.section_type {
            SevSectionType::SnpSecMem if inputs.vmm == VmmType::Gce => {
                out.extend(pages(s.gpa, s.size, SnpPageType::Unmeasured))
            }
            SevSectionType::SnpSecMem | SevSectionType::SvsmCaa => {
                out.extend(pages(s.gpa, s.size, SnpPageType::Zero))
            }
            SevSectionType::SnpSecrets => out.extend(pages(s.gpa, 1, SnpPageType::Secrets)),
            SevSectionType::Cpuid if inputs.vmm == VmmType::Ec2 => {}
            SevSectionType::Cpuid => out.extend(pages(s.gpa, 1, SnpPageType::Cpuid)),
            SevSectionType::SnpKernelHashes => match &table {
                None => out.extend(pages(s.gpa, s.size, SnpPageType::Zero)),
                Some(t) => {
                    let table_gpa =
                        fw.sev_hashes_table_gpa()
                            .ok_or_else(|| Error::MissingFooterEntry {
                                name: name(),
                                entry: "SEV hash table",
                                guid: crate::ovmf::SEV_HASH_TABLE_RV_GUID.to_string(),
                            })?;
                    if s.size as usize != PAGE_SIZE {
                        return Err(Error::BadHashTableLocation {
                            name: name(),
                            detail: format!(
                                "SNP_KERNEL_HASHES section is {} bytes, expected one 4096-byte page",
                                s.size
                            ),
                        });
                    }
                    let page = t.page(table_gpa as usize % PAGE_SIZE).ok_or_else(|| {
                        Error::BadHashTableLocation {
                            name: name(),
                            detail: format!("hash table at {table_gpa:#x} crosses a page boundary"),
                        }
                    })?;
                    hashes_page = Some(page);
                    out.push(SnpPage {
                        gpa: s.gpa as u64,
                        page_type: SnpPageType::Normal,
                        source: PageSource::KernelHashes,
                    });
                }
            },
            SevSectionType::Unknown(t) => {
                return Err(Error::BadSevMetadata {
                    name: name(),
                    detail: format!("unknown SEV metadata section type {t:#x} at {:#x}", s.gpa),
                });
            }
        }
    }
    if inputs.vmm == VmmType::Ec2 {
        // EC2 measures the CPUID pages after all other metadata pages.
        for s in fw.sev_sections() {
            if s.section_type == SevSectionType::Cpuid {
                out.extend(pages(s.gpa, 1, SnpPageType::Cpuid));
            }
        }
    }
    for i in 0..inputs.vcpus {
        out.push(SnpPage {
            gpa: VMSA_GPA,
            page_type: SnpPageType::Vmsa,
            source: PageSource::Vmsa(if i == 0 {
                VcpuRole::Bsp
            } else {
                VcpuRole::Ap(i)
            }),
        });
    }
    let vmsa_bsp = build_vmsa(
        BSP_RESET_EIP,
        inputs.guest_features,
        inputs.vcpu_sig,
        inputs.vmm,
    );
    let vmsa_ap = (inputs.vcpus > 1)
        .then(|| build_vmsa(ap_eip, inputs.guest_features, inputs.vcpu_sig, inputs.vmm));
    let firmware_digests = match (seed, firmware_digests) {
        (Some(_), _) => Vec::new(),
        (None, Some(d)) => d,
        (None, None) => firmware_page_digests(fw),
    };
    Ok(SnpLaunchPlan {
        firmware: fw.shared_data(),
        firmware_digests,
        inputs,
        seed,
        pages: out,
        hashes_page,
        vmsa_bsp,
        vmsa_ap,
    })
}

/// A legacy SEV / SEV-ES launch: firmware, optional hash table, and (SEV-ES) VMSAs, hashed with
/// SHA-256 in that order.
#[derive(Debug, Clone)]
pub struct SevLaunchPlan {
    inputs: LaunchInputs,
    hash_table: Option<SevHashTable>,
    vmsas: Vec<Box<[u8; PAGE_SIZE]>>,
}

impl SevLaunchPlan {
    fn new(inputs: LaunchInputs, es: bool) -> Result<Self> {
        let fw = &inputs.firmware;
        let hash_table = inputs.hash_table();
        if hash_table.is_some() && fw.sev_hashes_table_gpa().is_none() {
            return Err(Error::NoSevHashTable {
                name: fw.name().to_string(),
            });
        }
        let mut vmsas = Vec::new();
        if es {
            let ap_eip = fw.sev_es_reset_eip()?;
            for i in 0..inputs.vcpus {
                let eip = if i == 0 { BSP_RESET_EIP } else { ap_eip };
                if eip == 0 {
                    return Err(Error::BadSevMetadata {
                        name: fw.name().to_string(),
                        detail: "the SEV-ES reset block gives AP reset EIP 0; use --vcpus 1 or another OVMF build".into(),
                    });
                }
                vmsas.push(build_vmsa(eip, 0, inputs.vcpu_sig, inputs.vmm));
            }
        }
        Ok(SevLaunchPlan {
            inputs,
            hash_table,
            vmsas,
        })
    }

    /// The inputs the plan was built from.
    pub fn inputs(&self) -> &LaunchInputs {
        &self.inputs
    }

    /// The SHA-256 launch digest.
    pub fn measure(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.inputs.firmware.data());
        if let Some(t) = &self.hash_table {
            h.update(t.to_bytes());
        }
        for v in &self.vmsas {
            h.update(&v[..]);
        }
        h.finalize().into()
    }
}

/// A launch measurement in any mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measurement {
    /// SEV-SNP (48 bytes).
    Snp(SnpMeasurement),
    /// SEV / SEV-ES (32 bytes).
    Sev([u8; 32]),
    /// TDX MRTD (48 bytes).
    TdxMrtd([u8; 48]),
}

impl Measurement {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Measurement::Snp(m) => &m.0,
            Measurement::Sev(d) => d,
            Measurement::TdxMrtd(d) => d,
        }
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Standard base64 (as sev-snp-measure prints it).
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.as_bytes())
    }
}
