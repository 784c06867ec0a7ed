//! `podvm measure`: launch measurements and reference values (crate `podvm-measured-boot`).
//!
//! ```text
//! podvm measure --mode snp --ovmf OVMF.fd --kernel K --initrd I --append "..." \
//!     --vcpus 4 --vcpu-type EPYC-Milan [--vmm-type qemu] [--guest-features 0x1] \
//!     [--output-format hex|base64|json] [--export refvals.json [--sign-key ed25519.pem]]
//! podvm measure --mode snp:ovmf-hash --ovmf OVMF.fd
//! podvm measure --mode tdx --ovmf TDVF.fd [--mrtd-two-pass] [--ccel CCEL] [--kernel K ...]
//! podvm measure diff A.json B.json [--measurement HEX]
//! podvm measure rvps refvals.json
//! podvm measure verify refvals.json --pub-key ed25519.pub [--signature refvals.json.sig]
//! podvm measure id-block --measurement HEX --id-key id.pem --author-key author.pem [--policy 0x30000]
//! ```
//!
//! The SEV flags mirror sev-snp-measure's, and the digest printed is the same.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use podvm_measured_boot::idblock::{IdBlock, SignedIdBlock, load_p384_key};
use podvm_measured_boot::refvals::{self, ReferenceValues};
use podvm_measured_boot::tdx::{ccel::EventLog, predict_direct_boot, tdvf};
use podvm_measured_boot::{
    FileDigest, Firmware, LaunchInputs, LaunchPlanBuilder, Measurement, Mode, SnpMeasurement,
    VmmType,
};

/// Compute launch measurements (SEV-SNP, SEV, SEV-ES, TDX) and manage reference values.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MeasureArgs {
    #[command(subcommand)]
    pub command: Option<MeasureCommand>,

    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Output formats of the measurement.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Hex,
    Base64,
    /// The full reference-value document.
    Json,
}

/// Flags describing one launch (sev-snp-measure compatible, plus TDX and export).
#[derive(clap::Args, Debug)]
pub struct LaunchArgs {
    /// Guest mode: snp, snp:ovmf-hash, sev, seves, tdx.
    #[arg(long)]
    pub mode: Option<String>,
    /// Number of guest vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// QEMU vCPU model (EPYC, EPYC-v1..v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...).
    #[arg(long, value_name = "CPUTYPE")]
    pub vcpu_type: Option<String>,
    /// Explicit vCPU signature (CPUID 1 EAX), decimal or 0x-hex.
    #[arg(long, value_name = "VALUE", value_parser = parse_u32)]
    pub vcpu_sig: Option<u32>,
    /// vCPU family (with --vcpu-model and --vcpu-stepping) instead of a type or signature.
    #[arg(long, value_name = "FAMILY")]
    pub vcpu_family: Option<u32>,
    #[arg(long, value_name = "MODEL")]
    pub vcpu_model: Option<u32>,
    #[arg(long, value_name = "STEPPING")]
    pub vcpu_stepping: Option<u32>,
    /// VMM type: qemu, ec2, gce.
    #[arg(long, value_name = "VMMTYPE", default_value = "qemu")]
    pub vmm_type: String,
    /// OVMF (or TDVF) firmware image.
    #[arg(long, value_name = "PATH")]
    pub ovmf: Option<PathBuf>,
    /// Kernel image.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd image (requires --kernel).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (requires --kernel).
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// VMSA SEV_FEATURES, decimal or 0x-hex.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64, default_value = "0x1")]
    pub guest_features: u64,
    /// SNP HOST_DATA (64 hex digits, e.g. the initdata digest): recorded in the export, not measured.
    #[arg(long, value_name = "HEX")]
    pub host_data: Option<String>,
    /// Precomputed OVMF digest (from --mode snp:ovmf-hash) used as the seed.
    #[arg(long, value_name = "HASH")]
    pub snp_ovmf_hash: Option<String>,
    /// How to print the measurement.
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
    /// Write the reference-value export (inputs, parameters, measurements) to FILE.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Ed25519 key (PKCS#8 PEM, or 32 raw/hex bytes) to sign the export; writes FILE.sig.
    #[arg(long, value_name = "FILE", requires = "export")]
    pub sign_key: Option<PathBuf>,
    /// TDX: use the older two-pass MRTD order (all PAGE.ADDs, then all MR.EXTENDs).
    #[arg(long)]
    pub mrtd_two_pass: bool,
    /// TDX: CC event log of a golden boot to replay into RTMR1/RTMR2 reference values.
    #[arg(long, value_name = "FILE")]
    pub ccel: Option<PathBuf>,
}

/// `podvm measure` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MeasureCommand {
    /// Explain, one line per difference, how two exports differ.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// A measurement from an attestation report: say which export it matches.
        #[arg(long, value_name = "HEX")]
        measurement: Option<String>,
    },
    /// Print an export in trustee RVPS reference-value form.
    Rvps { export: PathBuf },
    /// Verify the detached Ed25519 signature of an export.
    Verify {
        export: PathBuf,
        /// Ed25519 public key (SPKI PEM, or 32 raw/hex bytes).
        #[arg(long, value_name = "FILE")]
        pub_key: PathBuf,
        /// Signature file (default: EXPORT.sig).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// Create a signed SNP ID block and ID auth info (base64, for QEMU id-block=/id-auth=).
    IdBlock {
        /// The expected launch measurement (96 hex digits).
        #[arg(long, value_name = "HEX")]
        measurement: String,
        /// ID key, P-384 private key (PKCS#8 or SEC1 PEM).
        #[arg(long, value_name = "FILE")]
        id_key: PathBuf,
        /// Author key, P-384 private key (PKCS#8 or SEC1 PEM).
        #[arg(long, value_name = "FILE")]
        author_key: PathBuf,
        /// Guest policy.
        #[arg(long, value_parser = parse_u64, default_value = "0x30000")]
        policy: u64,
        /// Family ID (32 hex digits).
        #[arg(long, value_name = "HEX")]
        family_id: Option<String>,
        /// Image ID (32 hex digits).
        #[arg(long, value_name = "HEX")]
        image_id: Option<String>,
        /// Guest SVN.
        #[arg(long, default_value_t = 0)]
        svn: u32,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}' is not a decimal or 0x-hex number: {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    parse_u64(s)?
        .try_into()
        .map_err(|_| format!("'{s}' does not fit in 32 bits"))
}

/// Runs `podvm measure`.
pub fn run(args: MeasureArgs) -> anyhow::Result<()> {
    match args.command {
        Some(cmd) => run_command(cmd),
        None => run_launch(args.launch),
    }
}

fn run_command(cmd: MeasureCommand) -> anyhow::Result<()> {
    match cmd {
        MeasureCommand::Diff { a, b, measurement } => {
            let (ra, rb) = (ReferenceValues::load(&a)?, ReferenceValues::load(&b)?);
            let lines = refvals::diff(&ra, &rb);
            if lines.is_empty() {
                println!("no differences");
            }
            for l in lines {
                println!("{l}");
            }
            if let Some(m) = measurement {
                println!("{}", refvals::explain_measurement(&ra, &rb, &m));
            }
            Ok(())
        }
        MeasureCommand::Rvps { export } => {
            let r = ReferenceValues::load(&export)?;
            println!("{}", serde_json::to_string_pretty(&r.to_rvps())?);
            Ok(())
        }
        MeasureCommand::Verify {
            export,
            pub_key,
            signature,
        } => {
            let data =
                std::fs::read(&export).with_context(|| format!("reading {}", export.display()))?;
            let sig_path = signature.unwrap_or_else(|| sig_path_for(&export));
            let sig = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading signature {}", sig_path.display()))?;
            let key = refvals::load_verifying_key(&pub_key)?;
            refvals::verify(&data, &sig, &key)?;
            println!("{}: signature OK", export.display());
            Ok(())
        }
        MeasureCommand::IdBlock {
            measurement,
            id_key,
            author_key,
            policy,
            family_id,
            image_id,
            svn,
        } => {
            let id16 = |what: &str, v: Option<String>| -> anyhow::Result<[u8; 16]> {
                match v {
                    None => Ok([0; 16]),
                    Some(h) => hex::decode(&h)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .with_context(|| format!("--{what} '{h}' must be 32 hex digits")),
                }
            };
            let block = IdBlock {
                launch_digest: measurement.parse::<SnpMeasurement>()?,
                family_id: id16("family-id", family_id)?,
                image_id: id16("image-id", image_id)?,
                guest_svn: svn,
                policy,
            };
            let signed = SignedIdBlock::sign(
                &block,
                &load_p384_key(&id_key)?,
                &load_p384_key(&author_key)?,
            );
            let out = serde_json::json!({
                "id_block": signed.id_block_base64(),
                "id_auth": signed.id_auth_base64(),
                "id_key_digest": hex::encode(signed.id_key_digest),
                "author_key_digest": hex::encode(signed.author_key_digest),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn sig_path_for(export: &Path) -> PathBuf {
    let mut s = export.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn run_launch(a: LaunchArgs) -> anyhow::Result<()> {
    let Some(mode) = a.mode.as_deref() else {
        bail!(
            "missing --mode; use one of snp, snp:ovmf-hash, sev, seves, tdx (or a subcommand: diff, rvps, verify, id-block)"
        );
    };
    let Some(ovmf) = a.ovmf.as_ref() else {
        bail!("missing --ovmf PATH (the firmware image)");
    };
    let firmware = Firmware::from_path(ovmf)?;
    let (text, refvals) = if mode.eq_ignore_ascii_case("tdx") {
        measure_tdx(&a, firmware)?
    } else {
        measure_sev(&a, mode.parse()?, firmware)?
    };
    let json = refvals.to_json();
    if let Some(path) = &a.export {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        if let Some(key) = &a.sign_key {
            let key = refvals::load_signing_key(key)?;
            let sig_path = sig_path_for(path);
            std::fs::write(&sig_path, refvals::sign(json.as_bytes(), &key))
                .with_context(|| format!("writing {}", sig_path.display()))?;
        }
    }
    match a.output_format {
        OutputFormat::Json => print!("{json}"),
        _ => println!("{text}"),
    }
    Ok(())
}

fn measure_sev(
    a: &LaunchArgs,
    mode: Mode,
    firmware: Firmware,
) -> anyhow::Result<(String, ReferenceValues)> {
    let vmm: VmmType = a.vmm_type.parse()?;
    let mut b = LaunchPlanBuilder::new()
        .firmware(firmware.clone())
        .vmm(vmm)
        .guest_features(a.guest_features)
        .with_sha384(a.export.is_some() || a.output_format == OutputFormat::Json);
    if let Some(n) = a.vcpus {
        b = b.vcpus(n);
    }
    match (a.vcpu_family, &a.vcpu_sig, &a.vcpu_type) {
        (Some(f), _, _) => {
            let sig = podvm_measured_boot::vmsa::cpu_signature(
                f,
                a.vcpu_model.unwrap_or(0),
                a.vcpu_stepping.unwrap_or(0),
            );
            b = b.vcpu_sig(sig);
        }
        (None, Some(s), _) => b = b.vcpu_sig(*s),
        (None, None, Some(t)) => b = b.vcpu_type(t.clone()),
        (None, None, None) => {}
    }
    if let Some(k) = &a.kernel {
        b = b.kernel_file(k);
    }
    if let Some(i) = &a.initrd {
        b = b.initrd_file(i);
    }
    if let Some(c) = &a.append {
        b = b.cmdline(c.clone());
    }
    if let Some(h) = &a.host_data {
        let data: [u8; 32] = hex::decode(h)
            .ok()
            .and_then(|v| v.try_into().ok())
            .with_context(|| format!("--host-data '{h}' must be 64 hex digits (32 bytes)"))?;
        b = b.host_data(data);
    }
    let mut seed = None;
    if let Some(h) = &a.snp_ovmf_hash {
        if mode != Mode::Snp {
            bail!("--snp-ovmf-hash only applies to --mode snp");
        }
        let s: SnpMeasurement = h.parse()?;
        seed = Some(s);
        b = b.ovmf_digest(s);
    }
    let (m, inputs) = match mode {
        Mode::Snp => {
            let plan = b.build_snp()?;
            (Measurement::Snp(plan.measure()), plan.inputs().clone())
        }
        Mode::SnpOvmfHash => (
            Measurement::Snp(podvm_measured_boot::ovmf_digest(&firmware)),
            LaunchInputs::for_firmware(firmware),
        ),
        Mode::Sev | Mode::SevEs => {
            let plan = b.build_sev(mode == Mode::SevEs)?;
            (Measurement::Sev(plan.measure()), plan.inputs().clone())
        }
    };
    let text = match a.output_format {
        OutputFormat::Base64 => m.to_base64(),
        _ => m.to_hex(),
    };
    Ok((text, ReferenceValues::from_launch(mode, &inputs, seed, m)))
}

fn measure_tdx(a: &LaunchArgs, firmware: Firmware) -> anyhow::Result<(String, ReferenceValues)> {
    let desc = tdvf::TdvfDescriptor::from_firmware(&firmware)?;
    let order = if a.mrtd_two_pass {
        tdvf::MrtdOrder::TwoPass
    } else {
        tdvf::MrtdOrder::SinglePass
    };
    let mr_td = tdvf::mrtd(firmware.name(), firmware.data(), &desc, order)?;
    let rtmrs = match &a.ccel {
        Some(p) => {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let name = p.display().to_string();
            Some(EventLog::parse(&name, &data)?.replay_rtmrs(&name)?)
        }
        None => None,
    };
    let predicted = match &a.kernel {
        Some(k) => {
            let kernel = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            let initrd = match &a.initrd {
                Some(i) => {
                    Some(std::fs::read(i).with_context(|| format!("reading {}", i.display()))?)
                }
                None => None,
            };
            predict_direct_boot(
                &k.display().to_string(),
                &kernel,
                initrd.as_deref(),
                a.append.as_deref().unwrap_or(""),
            )?
        }
        None => Vec::new(),
    };
    let mut r = ReferenceValues::from_tdx(&firmware, mr_td, order, rtmrs.as_ref(), &predicted);
    if let Some(k) = &a.kernel {
        r.inputs.kernel = Some(refvals::FileRecord::from_digest(&FileDigest::from_path(
            k, true,
        )?));
    }
    if let Some(i) = &a.initrd {
        r.inputs.initrd = Some(refvals::FileRecord::from_digest(&FileDigest::from_path(
            i, true,
        )?));
    }
    let m = Measurement::TdxMrtd(mr_td);
    let text = match a.output_format {
        OutputFormat::Base64 => m.to_base64(),
        _ => m.to_hex(),
    };
    Ok((text, r))
}
