//! The emulated SEV-SNP TEE: a host-side software "PSP" for machines without SNP hardware.
//!
//! It owns an ARK → ASK → VCEK chain shaped like AMD's (RSA-4096 RSASSA-PSS/SHA-384 ARK and
//! ASK, P-384 VCEK carrying the AMD TCB SPL and hwID extensions), generated once into a
//! directory (keys 0600, the directory created atomically: written under a temporary name and
//! renamed, so it is never seen half-written) and loaded afterwards. Reports are byte-format
//! identical to hardware v3 reports, so the ordinary verifier checks them; only the trust anchor
//! differs, and a verifier accepts it only with `allow_emulated = true`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use der::asn1::{Ia5String, OctetString};
use der::{Decode, DecodePem, Encode, EncodePem};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use sha2::Sha384;
use signature::Signer as _;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder as _, CertificateBuilder};
use x509_cert::ext::{Extension, pkix::BasicConstraints};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::snp::report::{
    AttestationReport, FwVersion, KEY_INFO_SIGNING_KEY_SHIFT, SIG_ALGO_ECDSA_P384_SHA384,
    SIGNED_LEN,
};
use crate::snp::verify::{
    EMULATED_ARK_CN, OID_BL_SPL, OID_CSP_ID, OID_HWID, OID_PRODUCT_NAME, OID_SNP_SPL,
    OID_STRUCT_VERSION, OID_TEE_SPL, OID_UCODE_SPL, VekExtensions,
};
use crate::snp::{CertEntry, CertKind, TcbVersion, VekType};
use crate::verifier::{Evidence, TrustAnchors};

/// Files inside the emulated TEE directory.
pub const ARK_CERT: &str = "ark.pem";
pub const ASK_CERT: &str = "ask.pem";
pub const VCEK_CERT: &str = "vcek.der";
pub const ASVK_CERT: &str = "asvk.pem";
pub const VLEK_CERT: &str = "vlek.der";
pub const ASVK_KEY: &str = "asvk.key";
pub const VLEK_KEY: &str = "vlek.key";
/// Subject CN of the emulated ASVK (AMD's are "SEV-VLEK-<product>").
pub const EMULATED_ASVK_CN: &str = "SEV-VLEK-podvm-Emulated";
/// cspID extension of the emulated VLEK.
pub const CSP_ID: &str = "podvm-emulated";
pub const ARK_KEY: &str = "ark.key";
pub const ASK_KEY: &str = "ask.key";
pub const VCEK_KEY: &str = "vcek.key";
/// Subject CN of the emulated ASK (the VCEK keeps AMD's "SEV-VCEK").
pub const EMULATED_ASK_CN: &str = "SEV-podvm-Emulated";
/// RSA modulus size of the emulated ARK/ASK (as AMD's).
pub const RSA_BITS: usize = 4096;
/// VCEK productName of the emulated chip.
pub const PRODUCT_NAME: &str = "Milan-B0";
/// CPUID family/model/stepping written into emulated v3 reports (a Milan part).
pub const CPUID_FAM_MOD_STEP: [u8; 3] = [0x19, 0x01, 0x01];
/// The TCB the emulated chip reports and its VCEK certifies.
pub const DEFAULT_TCB: TcbVersion = TcbVersion {
    fmc: None,
    bootloader: 3,
    tee: 0,
    snp: 8,
    microcode: 115,
};
/// Firmware version written into CURRENT_* / COMMITTED_*.
pub const FW_VERSION: FwVersion = FwVersion {
    major: 1,
    minor: 55,
    build: 0,
};
/// PLATFORM_INFO: SMT enabled.
pub const PLATFORM_INFO: u64 = 0x1;
/// Certificate lifetime.
const VALIDITY: Duration = Duration::from_secs(25 * 365 * 24 * 3600);

/// Errors of the emulated PSP (setup and signing; never about evidence).
#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    #[error("emulated TEE {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("emulated TEE key {file}: {reason}")]
    Key { file: &'static str, reason: String },
    #[error("emulated TEE certificate {which}: {reason}")]
    Cert { which: &'static str, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmulatedError + '_ {
    move |source| EmulatedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the guest/host put into one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// MEASUREMENT: the launch digest from the measured-boot crate's launch plan.
    pub measurement: [u8; 48],
    /// HOST_DATA: the initdata digest.
    pub host_data: [u8; 32],
    /// REPORT_DATA supplied by the guest.
    pub report_data: [u8; 64],
    /// Guest POLICY (e.g. `0x30000`: SMT allowed, reserved bit 17 set, no debug).
    pub policy: u64,
    pub vmpl: u32,
    pub guest_svn: u32,
    /// Report CHIP_ID as all zero (the platform's MASK_CHIP_ID setting).
    pub mask_chip_id: bool,
    /// Sign with the VCEK (default) or the VLEK.
    pub signing_key: VekType,
}

impl Default for ReportRequest {
    fn default() -> Self {
        ReportRequest {
            measurement: [0; 48],
            host_data: [0; 32],
            report_data: [0; 64],
            policy: 0x30000,
            vmpl: 0,
            guest_svn: 0,
            mask_chip_id: false,
            signing_key: VekType::Vcek,
        }
    }
}

/// The emulated PSP with its loaded chain.
pub struct EmulatedPsp {
    dir: PathBuf,
    ark: Certificate,
    ask: Certificate,
    asvk: Certificate,
    vcek: Certificate,
    vlek: Certificate,
    vcek_key: p384::ecdsa::SigningKey,
    vlek_key: p384::ecdsa::SigningKey,
    chip_id: [u8; 64],
    tcb: TcbVersion,
}

impl std::fmt::Debug for EmulatedPsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedPsp")
            .field("dir", &self.dir)
            .field("tcb", &self.tcb)
            .finish_non_exhaustive()
    }
}

struct Profile {
    issuer: Name,
    subject: Name,
    ca: bool,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        if !self.ca {
            return Ok(Vec::new());
        }
        let bc = BasicConstraints {
            ca: true,
            path_len_constraint: None,
        };
        Ok(vec![Extension {
            extn_id: der::oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS,
            critical: true,
            extn_value: OctetString::new(bc.to_der()?)?,
        }])
    }
}

fn name(cn: &str) -> Result<Name, EmulatedError> {
    Name::from_str(&format!(
        "CN={cn},O=podvm emulated SEV-SNP,OU=Engineering,ST=CA,C=US"
    ))
    .map_err(|e| EmulatedError::Cert {
        which: "name",
        reason: e.to_string(),
    })
}

fn ext(oid: der::asn1::ObjectIdentifier, value: Vec<u8>) -> Result<Extension, EmulatedError> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value).map_err(cert_err("VCEK"))?,
    })
}

fn cert_err(which: &'static str) -> impl Fn(der::Error) -> EmulatedError {
    move |e| EmulatedError::Cert {
        which,
        reason: e.to_string(),
    }
}

fn build_err(which: &'static str) -> impl Fn(x509_cert::builder::Error) -> EmulatedError {
    move |e| EmulatedError::Cert {
        which,
        reason: e.to_string(),
    }
}

fn rsa_spki(key: &rsa::PrivateKey) -> Result<SubjectPublicKeyInfoOwned, EmulatedError> {
    let vk = rsa::pss::VerifyingKey::<Sha384>::new(key.to_public_key());
    SubjectPublicKeyInfoOwned::from_key(&vk).map_err(|e| EmulatedError::Cert {
        which: "RSA SPKI",
        reason: e.to_string(),
    })
}

fn p384_key(file: &'static str) -> Result<p384::ecdsa::SigningKey, EmulatedError> {
    let mut secret = [0u8; 48];
    loop {
        getrandom::fill(&mut secret).map_err(|e| EmulatedError::Key {
            file,
            reason: e.to_string(),
        })?;
        // A uniformly random 48-byte string is a valid scalar except with negligible probability.
        if let Ok(k) = p384::ecdsa::SigningKey::from_slice(&secret) {
            return Ok(k);
        }
    }
}

fn load_p384(
    pkcs8: &[u8],
    file: &'static str,
    cert: &Certificate,
) -> Result<p384::ecdsa::SigningKey, EmulatedError> {
    let key = p384::ecdsa::SigningKey::from_pkcs8_der(pkcs8).map_err(|e| EmulatedError::Key {
        file,
        reason: e.to_string(),
    })?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    if spki.subject_public_key.as_bytes()
        != Some(key.verifying_key().to_sec1_point(false).as_bytes())
    {
        return Err(EmulatedError::Key {
            file,
            reason: "does not match its certificate".into(),
        });
    }
    Ok(key)
}

/// A VCEK/VLEK: P-384 key, AMD extensions, signed (RSA-PSS SHA-384) by the ASK/ASVK.
fn leaf(
    which: &'static str,
    issuer: &Name,
    cn: &str,
    key: &p384::ecdsa::SigningKey,
    extensions: Vec<Extension>,
    issuer_key: &rsa::PrivateKey,
    validity: Validity,
) -> Result<Certificate, EmulatedError> {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).map_err(|e| {
        EmulatedError::Cert {
            which,
            reason: e.to_string(),
        }
    })?;
    let profile = Profile {
        issuer: issuer.clone(),
        subject: name(cn)?,
        ca: false,
    };
    let mut b = CertificateBuilder::new(profile, SerialNumber::from(0u32), validity, spki)
        .map_err(build_err(which))?;
    for e in extensions {
        b.add_extension(e).map_err(cert_err(which))?;
    }
    b.build::<_, rsa::pss::Signature>(&rsa::pss::SigningKey::<Sha384>::new(issuer_key.clone()))
        .map_err(build_err(which))
}

fn write_file(dir: &Path, file: &str, bytes: &[u8], mode: u32) -> Result<(), EmulatedError> {
    let path = dir.join(file);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(bytes).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))
}

impl EmulatedPsp {
    /// Load the chain from `dir`, generating it first (atomically) if the directory does not exist.
    pub fn open_or_create(dir: &Path) -> Result<Self, EmulatedError> {
        if !dir.exists() {
            Self::generate(dir, DEFAULT_TCB)?;
        }
        Self::load(dir)
    }

    /// Generate a new chain into `dir` (which must not exist). Concurrent creators race safely:
    /// each writes a private temporary directory and the first rename wins.
    pub fn generate(dir: &Path, tcb: TcbVersion) -> Result<(), EmulatedError> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io(parent))?;
        let base = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("emulated-snp");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let tmp = parent.join(format!(".{base}.tmp-{}-{nanos}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io(&tmp))?;
        let result =
            Self::write_chain(&tmp, tcb).and_then(|()| fs::rename(&tmp, dir).map_err(io(dir)));
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            // Lost a race against another creator: theirs is complete, use it.
            if dir.join(VCEK_CERT).exists() {
                return Ok(());
            }
        }
        result
    }

    fn write_chain(tmp: &Path, tcb: TcbVersion) -> Result<(), EmulatedError> {
        let rsa_key = |file: &'static str| {
            rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS).map_err(|e| EmulatedError::Key {
                file,
                reason: e.to_string(),
            })
        };
        let ark_key = rsa_key(ARK_KEY)?;
        let ask_key = rsa_key(ASK_KEY)?;
        let asvk_key = rsa_key(ASVK_KEY)?;
        let vcek_key = p384_key(VCEK_KEY)?;
        let vlek_key = p384_key(VLEK_KEY)?;
        let mut chip_id = [0u8; 64];
        getrandom::fill(&mut chip_id).map_err(|e| EmulatedError::Key {
            file: VCEK_KEY,
            reason: e.to_string(),
        })?;

        let validity = Validity::from_now(VALIDITY).map_err(cert_err("validity"))?;
        let ark_name = name(EMULATED_ARK_CN)?;
        let ark_signer = rsa::pss::SigningKey::<Sha384>::new(ark_key.clone());
        let ca = |which: &'static str,
                  issuer: &Name,
                  subject: &Name,
                  serial: u32,
                  key: &rsa::PrivateKey| {
            let profile = Profile {
                issuer: issuer.clone(),
                subject: subject.clone(),
                ca: true,
            };
            CertificateBuilder::new(
                profile,
                SerialNumber::from(serial),
                validity,
                rsa_spki(key)?,
            )
            .map_err(build_err(which))?
            .build::<_, rsa::pss::Signature>(&ark_signer)
            .map_err(build_err(which))
        };
        let ark = ca("ARK", &ark_name, &ark_name, 1, &ark_key)?;
        let ask = ca("ASK", &ark_name, &name(EMULATED_ASK_CN)?, 2, &ask_key)?;
        let asvk = ca("ASVK", &ark_name, &name(EMULATED_ASVK_CN)?, 3, &asvk_key)?;

        let int = |v: u8| v.to_der().map_err(cert_err("VEK"));
        let ia5 = |v: &str| {
            Ia5String::new(v)
                .map_err(cert_err("VEK"))?
                .to_der()
                .map_err(cert_err("VEK"))
        };
        let spls = || -> Result<Vec<Extension>, EmulatedError> {
            Ok(vec![
                ext(OID_STRUCT_VERSION, int(1)?)?,
                ext(OID_PRODUCT_NAME, ia5(PRODUCT_NAME)?)?,
                ext(OID_BL_SPL, int(tcb.bootloader)?)?,
                ext(OID_TEE_SPL, int(tcb.tee)?)?,
                ext(OID_SNP_SPL, int(tcb.snp)?)?,
                ext(OID_UCODE_SPL, int(tcb.microcode)?)?,
            ])
        };
        // VCEK: legacy AMD encoding of the hwID, the raw 64 bytes as the extension value.
        let mut vcek_ext = spls()?;
        vcek_ext.push(ext(OID_HWID, chip_id.to_vec())?);
        let vcek = leaf(
            "VCEK",
            ask.tbs_certificate().subject(),
            "SEV-VCEK",
            &vcek_key,
            vcek_ext,
            &ask_key,
            validity,
        )?;
        // VLEK: no hwID; the cloud provider id instead.
        let mut vlek_ext = spls()?;
        vlek_ext.push(ext(OID_CSP_ID, ia5(CSP_ID)?)?);
        let vlek = leaf(
            "VLEK",
            asvk.tbs_certificate().subject(),
            "SEV-VLEK",
            &vlek_key,
            vlek_ext,
            &asvk_key,
            validity,
        )?;

        let pem =
            |c: &Certificate, which| c.to_pem(der::pem::LineEnding::LF).map_err(cert_err(which));
        let der_of = |c: &Certificate, which| c.to_der().map_err(cert_err(which));
        write_file(tmp, ARK_CERT, pem(&ark, "ARK")?.as_bytes(), 0o644)?;
        write_file(tmp, ASK_CERT, pem(&ask, "ASK")?.as_bytes(), 0o644)?;
        write_file(tmp, ASVK_CERT, pem(&asvk, "ASVK")?.as_bytes(), 0o644)?;
        write_file(tmp, VCEK_CERT, &der_of(&vcek, "VCEK")?, 0o644)?;
        write_file(tmp, VLEK_CERT, &der_of(&vlek, "VLEK")?, 0o644)?;
        let k = |r: Result<der::SecretDocument, rsa::pkcs8::Error>, file| {
            r.map_err(|e| EmulatedError::Key {
                file,
                reason: e.to_string(),
            })
        };
        write_file(
            tmp,
            ARK_KEY,
            k(ark_key.to_pkcs8_der(), ARK_KEY)?.as_bytes(),
            0o600,
        )?;
        write_file(
            tmp,
            ASK_KEY,
            k(ask_key.to_pkcs8_der(), ASK_KEY)?.as_bytes(),
            0o600,
        )?;
        write_file(
            tmp,
            ASVK_KEY,
            k(asvk_key.to_pkcs8_der(), ASVK_KEY)?.as_bytes(),
            0o600,
        )?;
        write_file(
            tmp,
            VCEK_KEY,
            k(vcek_key.to_pkcs8_der(), VCEK_KEY)?.as_bytes(),
            0o600,
        )?;
        write_file(
            tmp,
            VLEK_KEY,
            k(vlek_key.to_pkcs8_der(), VLEK_KEY)?.as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// Load an existing chain. Key files must not be readable by group/others.
    pub fn load(dir: &Path) -> Result<Self, EmulatedError> {
        let read = |f: &str| {
            let p = dir.join(f);
            fs::read(&p).map_err(io(&p))
        };
        for f in [ARK_KEY, ASK_KEY, ASVK_KEY, VCEK_KEY, VLEK_KEY] {
            let p = dir.join(f);
            let mode = fs::metadata(&p).map_err(io(&p))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(EmulatedError::Key {
                    file: VCEK_KEY,
                    reason: format!("{} has mode {:o}, expected 0600", p.display(), mode & 0o777),
                });
            }
        }
        let ark = Certificate::from_pem(read(ARK_CERT)?).map_err(cert_err("ARK"))?;
        let ask = Certificate::from_pem(read(ASK_CERT)?).map_err(cert_err("ASK"))?;
        let asvk = Certificate::from_pem(read(ASVK_CERT)?).map_err(cert_err("ASVK"))?;
        let vcek = Certificate::from_der(&read(VCEK_CERT)?).map_err(cert_err("VCEK"))?;
        let vlek = Certificate::from_der(&read(VLEK_CERT)?).map_err(cert_err("VLEK"))?;
        let vcek_key = load_p384(&read(VCEK_KEY)?, VCEK_KEY, &vcek)?;
        let vlek_key = load_p384(&read(VLEK_KEY)?, VLEK_KEY, &vlek)?;
        let ext = VekExtensions::read(&vcek).map_err(|e| EmulatedError::Cert {
            which: "VCEK",
            reason: e.to_string(),
        })?;
        let chip_id: [u8; 64] =
            ext.hwid
                .as_deref()
                .and_then(|h| h.try_into().ok())
                .ok_or(EmulatedError::Cert {
                    which: "VCEK",
                    reason: "hwID extension missing or not 64 bytes".into(),
                })?;
        let tcb = TcbVersion {
            fmc: None,
            bootloader: ext.bl_spl,
            tee: ext.tee_spl,
            snp: ext.snp_spl,
            microcode: ext.ucode_spl,
        };
        Ok(EmulatedPsp {
            dir: dir.to_path_buf(),
            ark,
            ask,
            asvk,
            vcek,
            vlek,
            vcek_key,
            vlek_key,
            chip_id,
            tcb,
        })
    }

    /// Directory holding the chain.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The emulated ARK (the trust anchor a verifier needs with `allow_emulated`).
    pub fn ark(&self) -> &Certificate {
        &self.ark
    }

    /// The chip's CHIP_ID (= VCEK hwID).
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// The TCB the chip reports.
    pub fn tcb(&self) -> TcbVersion {
        self.tcb
    }

    /// The certificate table a guest's extended report request returns for reports signed by
    /// `key`: ARK, ASK and VCEK, or ARK, ASVK and VLEK (DER; the ASVK under the ASK GUID).
    pub fn cert_table(&self, key: VekType) -> Vec<CertEntry> {
        let (inter, leaf, leaf_kind) = match key {
            VekType::Vcek => (&self.ask, &self.vcek, CertKind::Vcek),
            VekType::Vlek => (&self.asvk, &self.vlek, CertKind::Vlek),
        };
        [
            (CertKind::Ark, &self.ark),
            (CertKind::Ask, inter),
            (leaf_kind, leaf),
        ]
        .into_iter()
        .filter_map(|(kind, c)| c.to_der().ok().map(|data| CertEntry { kind, data }))
        .collect()
    }

    /// Trust anchors that accept this emulated chain (and nothing else).
    pub fn trust_anchors(&self) -> TrustAnchors {
        TrustAnchors {
            emulated_root: Some(self.ark.clone()),
            allow_emulated: true,
            ..Default::default()
        }
    }

    /// Produce a signed 1184-byte v3 ATTESTATION_REPORT.
    pub fn report(&self, req: &ReportRequest) -> Result<Vec<u8>, EmulatedError> {
        let mut r = AttestationReport::zeroed(3);
        r.guest_svn = req.guest_svn;
        r.policy = req.policy;
        r.vmpl = req.vmpl;
        r.sig_algo = SIG_ALGO_ECDSA_P384_SHA384;
        let tcb = self.tcb.encode();
        r.current_tcb = tcb;
        r.reported_tcb = tcb;
        r.committed_tcb = tcb;
        r.launch_tcb = tcb;
        r.platform_info = PLATFORM_INFO;
        r.key_info = match req.signing_key {
            VekType::Vcek => 0,
            VekType::Vlek => 1 << KEY_INFO_SIGNING_KEY_SHIFT,
        };
        r.report_data = req.report_data;
        r.measurement = req.measurement;
        r.host_data = req.host_data;
        getrandom::fill(&mut r.report_id).map_err(|e| EmulatedError::Key {
            file: VCEK_KEY,
            reason: e.to_string(),
        })?;
        r.report_id_ma = [0xff; 32];
        [r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step] = CPUID_FAM_MOD_STEP;
        r.chip_id = if req.mask_chip_id {
            [0; 64]
        } else {
            self.chip_id
        };
        r.current = FW_VERSION;
        r.committed = FW_VERSION;
        let mut bytes = r.to_bytes();
        let key = match req.signing_key {
            VekType::Vcek => &self.vcek_key,
            VekType::Vlek => &self.vlek_key,
        };
        let sig: p384::ecdsa::Signature = key.sign(&bytes[..SIGNED_LEN]);
        let rs: [u8; 96] = sig.to_bytes().into();
        r.set_signature_be(&rs);
        bytes = r.to_bytes();
        Ok(bytes)
    }

    /// A report plus the certificate table, as SNP evidence.
    pub fn evidence(&self, req: &ReportRequest) -> Result<Evidence, EmulatedError> {
        Ok(Evidence::Snp {
            report: self.report(req)?,
            cert_chain: Some(self.cert_table(req.signing_key)),
        })
    }
}
