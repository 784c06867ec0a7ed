//! Guest-side attesters: SEV-SNP and TDX through configfs-tsm
//! (`/sys/kernel/config/tsm/report`), SEV-SNP via the `/dev/sev-guest` `SNP_GET_REPORT` ioctl as
//! fallback, and the TDREPORT via `/dev/tdx_guest`. Detection returns an explicit TEE kind or
//! an error — it never falls back to emulation (the emulated TEE is chosen by configuration).
//! Every path is injectable ([`AttesterPaths`]) so the logic runs on a fake directory tree.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::snp::{CertEntry, CertKind};
use crate::verifier::{Evidence, TeeKind};

/// Default configfs-tsm report directory.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
pub const SEV_GUEST_DEV: &str = "/dev/sev-guest";
pub const TDX_GUEST_DEV: &str = "/dev/tdx_guest";
/// The TDX CC event log (ACPI CCEL table data).
pub const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// configfs-tsm provider names.
pub const PROVIDER_SNP: &str = "sev_guest";
pub const PROVIDER_TDX: &str = "tdx_guest";

/// `SNP_GET_REPORT` = `_IOWR('S', 0x0, struct snp_guest_request_ioctl)` (32 bytes).
pub const SNP_GET_REPORT: u64 = 0xC020_5300;
/// `TDX_CMD_GET_REPORT0` = `_IOWR('T', 1, struct tdx_report_req)` (64 + 1024 bytes).
pub const TDX_CMD_GET_REPORT0: u64 = 0xC440_5401;
/// `snp_report_req`: user_data[64], vmpl u32, reserved[28].
pub const SNP_REPORT_REQ_LEN: usize = 96;
/// `snp_report_resp`: 4000 bytes; MSG_REPORT_RSP has the report at offset 0x20.
pub const SNP_REPORT_RESP_LEN: usize = 4000;
pub const SNP_REPORT_RESP_OFF_STATUS: usize = 0x0;
pub const SNP_REPORT_RESP_OFF_SIZE: usize = 0x4;
pub const SNP_REPORT_RESP_OFF_REPORT: usize = 0x20;
/// TDREPORT size.
pub const TDREPORT_LEN: usize = 1024;

/// GHCB certificate table GUIDs (the auxblob of an SNP configfs-tsm report).
pub const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
pub const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
pub const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
pub const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
pub const GUID_CRL: &str = "92f81bc3-5811-4d3d-97ff-d19f88dc67ea";
/// Cert table entry: guid[16], offset u32, length u32.
pub const CERT_TABLE_ENTRY_LEN: usize = 24;

/// Attester errors: one line each.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    #[error("no TEE found (checked {0}); the emulated TEE must be configured explicitly")]
    NoTee(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configfs-tsm provider {got} does not match the {want:?} attester")]
    WrongProvider { want: TeeKind, got: String },
    #[error("configfs-tsm entry {0} was written concurrently (generation {1}, expected {2})")]
    Concurrent(PathBuf, u64, u64),
    #[error("report_data is {0} bytes; at most 64")]
    ReportDataTooLong(usize),
    #[error("{0}")]
    Device(String),
    #[error("certificate table: {0}")]
    CertTable(String),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AttesterError + 'a {
    move |source| AttesterError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Filesystem locations used by the attesters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttesterPaths {
    pub tsm_report_root: PathBuf,
    pub sev_guest_dev: PathBuf,
    pub tdx_guest_dev: PathBuf,
    pub ccel: PathBuf,
}

impl Default for AttesterPaths {
    fn default() -> Self {
        AttesterPaths {
            tsm_report_root: TSM_REPORT_ROOT.into(),
            sev_guest_dev: SEV_GUEST_DEV.into(),
            tdx_guest_dev: TDX_GUEST_DEV.into(),
            ccel: CCEL_PATH.into(),
        }
    }
}

/// One configfs-tsm report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    pub provider: String,
    pub outblob: Vec<u8>,
    /// SNP: the GHCB certificate table (may be empty).
    pub auxblob: Option<Vec<u8>>,
}

/// configfs-tsm report client.
#[derive(Debug, Clone)]
pub struct ConfigfsTsm {
    root: PathBuf,
}

static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

fn pad64(report_data: &[u8]) -> Result<[u8; 64], AttesterError> {
    if report_data.len() > 64 {
        return Err(AttesterError::ReportDataTooLong(report_data.len()));
    }
    let mut rd = [0u8; 64];
    rd[..report_data.len()].copy_from_slice(report_data);
    Ok(rd)
}

impl ConfigfsTsm {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigfsTsm { root: root.into() }
    }

    pub fn available(&self) -> bool {
        self.root.is_dir()
    }

    /// mkdir a fresh entry, exchange, rmdir (also on error).
    pub fn report(&self, inblob: &[u8; 64]) -> Result<TsmReport, AttesterError> {
        let n = ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let entry = self.root.join(format!("podvm-{}-{n}", std::process::id()));
        fs::create_dir(&entry).map_err(io_err("mkdir", &entry))?;
        // A fresh entry starts at generation 0; our single inblob write makes it 1.
        let r = Self::exchange(&entry, inblob, 1);
        // configfs removes the attribute files with the directory.
        let _ = fs::remove_dir(&entry);
        r
    }

    /// Write `inblob` into an entry and read outblob/auxblob/provider. The kernel increments
    /// `generation` on every write; if it is not `expected_generation` after the reads, another
    /// writer raced us and the outblob may not be ours.
    pub fn exchange(
        entry: &Path,
        inblob: &[u8; 64],
        expected_generation: u64,
    ) -> Result<TsmReport, AttesterError> {
        let inpath = entry.join("inblob");
        fs::write(&inpath, inblob).map_err(io_err("write", &inpath))?;
        let outpath = entry.join("outblob");
        let outblob = fs::read(&outpath).map_err(io_err("read", &outpath))?;
        let auxpath = entry.join("auxblob");
        let auxblob = match fs::read(&auxpath) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                return Err(AttesterError::Io {
                    op: "read",
                    path: auxpath,
                    source: e,
                });
            }
        };
        let provpath = entry.join("provider");
        let provider = fs::read_to_string(&provpath)
            .map_err(io_err("read", &provpath))?
            .trim()
            .to_string();
        let gen_path = entry.join("generation");
        let s = fs::read_to_string(&gen_path).map_err(io_err("read", &gen_path))?;
        let generation = s
            .trim()
            .parse::<u64>()
            .map_err(|e| AttesterError::Device(format!("{}: {e}", gen_path.display())))?;
        if generation != expected_generation {
            return Err(AttesterError::Concurrent(
                entry.to_path_buf(),
                generation,
                expected_generation,
            ));
        }
        Ok(TsmReport {
            provider,
            outblob,
            auxblob,
        })
    }

    /// The provider name, by creating and removing an entry.
    pub fn provider(&self) -> Result<String, AttesterError> {
        let n = ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .root
            .join(format!("podvm-probe-{}-{n}", std::process::id()));
        match fs::create_dir(&entry) {
            Ok(()) => {}
            // configfs-tsm is built into the kernel but no TEE driver registered a provider:
            // the kernel refuses new report entries with ENXIO. That is "no TEE", not a fault.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(AttesterError::NoTee(format!(
                    "{} has no provider (no TEE driver registered)",
                    self.root.display()
                )));
            }
            Err(e) => return Err(io_err("mkdir", &entry)(e)),
        }
        let p = entry.join("provider");
        let r = fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(io_err("read", &p));
        let _ = fs::remove_dir(&entry);
        r
    }
}

fn guid_le_to_string(b: &[u8]) -> String {
    let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let d2 = u16::from_le_bytes([b[4], b[5]]);
    let d3 = u16::from_le_bytes([b[6], b[7]]);
    format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{}-{}",
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// Parse a GHCB SNP certificate table (GUID, offset, length entries; all-zero terminator).
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertEntry>, AttesterError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(e) = table.get(pos..pos + CERT_TABLE_ENTRY_LEN) else {
            return Err(AttesterError::CertTable(format!(
                "no terminator before byte {}",
                table.len()
            )));
        };
        if e.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        let guid = guid_le_to_string(&e[..16]);
        let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        let data = off
            .checked_add(len)
            .and_then(|end| table.get(off..end))
            .ok_or_else(|| {
                AttesterError::CertTable(format!(
                    "entry {guid}: {off}+{len} beyond {} bytes",
                    table.len()
                ))
            })?;
        let kind = match guid.as_str() {
            GUID_ARK => CertKind::Ark,
            GUID_ASK => CertKind::Ask,
            GUID_VCEK => CertKind::Vcek,
            GUID_VLEK => CertKind::Vlek,
            GUID_CRL => CertKind::Crl,
            _ => CertKind::Other(guid),
        };
        out.push(CertEntry {
            kind,
            data: data.to_vec(),
        });
        pos += CERT_TABLE_ENTRY_LEN;
    }
}

/// Produce evidence for a guest-supplied report_data (at most 64 bytes, zero-padded).
pub trait Attester: Send + Sync {
    fn tee(&self) -> TeeKind;
    fn evidence(&self, report_data: &[u8]) -> Result<Evidence, AttesterError>;
}

/// SEV-SNP attester: configfs-tsm, else `/dev/sev-guest`.
#[derive(Debug, Clone)]
pub struct SnpAttester {
    paths: AttesterPaths,
}

/// TDX attester: configfs-tsm quote plus the CCEL if present.
#[derive(Debug, Clone)]
pub struct TdxAttester {
    paths: AttesterPaths,
}

impl SnpAttester {
    pub fn new(paths: AttesterPaths) -> Self {
        SnpAttester { paths }
    }
}

impl TdxAttester {
    pub fn new(paths: AttesterPaths) -> Self {
        TdxAttester { paths }
    }
}

impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }
    fn evidence(&self, report_data: &[u8]) -> Result<Evidence, AttesterError> {
        let rd = pad64(report_data)?;
        let tsm = ConfigfsTsm::new(&self.paths.tsm_report_root);
        if tsm.available() {
            let r = tsm.report(&rd)?;
            if r.provider != PROVIDER_SNP {
                return Err(AttesterError::WrongProvider {
                    want: TeeKind::Snp,
                    got: r.provider,
                });
            }
            let cert_chain = match r.auxblob.as_deref() {
                Some(aux) if !aux.is_empty() => Some(parse_cert_table(aux)?),
                _ => None,
            };
            return Ok(Evidence::Snp {
                report: r.outblob,
                cert_chain,
            });
        }
        let report = sev_guest_report(&self.paths.sev_guest_dev, &rd, 0)?;
        Ok(Evidence::Snp {
            report,
            cert_chain: None,
        })
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Tdx
    }
    fn evidence(&self, report_data: &[u8]) -> Result<Evidence, AttesterError> {
        let rd = pad64(report_data)?;
        let tsm = ConfigfsTsm::new(&self.paths.tsm_report_root);
        if !tsm.available() {
            return Err(AttesterError::Device(format!(
                "a TDX quote needs configfs-tsm ({} missing; {} only yields a TDREPORT)",
                self.paths.tsm_report_root.display(),
                self.paths.tdx_guest_dev.display()
            )));
        }
        let r = tsm.report(&rd)?;
        if r.provider != PROVIDER_TDX {
            return Err(AttesterError::WrongProvider {
                want: TeeKind::Tdx,
                got: r.provider,
            });
        }
        let cc_eventlog = match fs::read(&self.paths.ccel) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                return Err(AttesterError::Io {
                    op: "read",
                    path: self.paths.ccel.clone(),
                    source: e,
                });
            }
        };
        Ok(Evidence::Tdx {
            quote: r.outblob,
            cc_eventlog,
        })
    }
}

/// Which TEE this guest runs in: `/dev/sev-guest` → SNP, `/dev/tdx_guest` → TDX, else the
/// configfs-tsm provider. No TEE is an error, never a silent switch to emulation.
pub fn detect(paths: &AttesterPaths) -> Result<TeeKind, AttesterError> {
    if paths.sev_guest_dev.exists() {
        return Ok(TeeKind::Snp);
    }
    if paths.tdx_guest_dev.exists() {
        return Ok(TeeKind::Tdx);
    }
    let tsm = ConfigfsTsm::new(&paths.tsm_report_root);
    if tsm.available() {
        // `provider()` answers NoTee when no TEE driver registered with configfs-tsm.
        return match tsm.provider()?.as_str() {
            PROVIDER_SNP => Ok(TeeKind::Snp),
            PROVIDER_TDX => Ok(TeeKind::Tdx),
            other => Err(AttesterError::Device(format!(
                "unknown configfs-tsm provider {other:?}"
            ))),
        };
    }
    Err(AttesterError::NoTee(format!(
        "{}, {}, {}",
        paths.sev_guest_dev.display(),
        paths.tdx_guest_dev.display(),
        paths.tsm_report_root.display()
    )))
}

/// The attester for the detected TEE.
pub fn attester(paths: &AttesterPaths) -> Result<Box<dyn Attester>, AttesterError> {
    Ok(match detect(paths)? {
        TeeKind::Snp => Box::new(SnpAttester::new(paths.clone())),
        TeeKind::Tdx => Box::new(TdxAttester::new(paths.clone())),
    })
}

#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

fn open_dev(path: &Path) -> Result<fs::File, AttesterError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))
}

/// `SNP_GET_REPORT` through `/dev/sev-guest`: returns the 1184-byte report.
pub fn sev_guest_report(
    dev: &Path,
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<Vec<u8>, AttesterError> {
    use std::os::fd::AsRawFd as _;
    let f = open_dev(dev)?;
    let mut req = [0u8; SNP_REPORT_REQ_LEN];
    req[..64].copy_from_slice(report_data);
    req[64..68].copy_from_slice(&vmpl.to_le_bytes());
    let mut resp = vec![0u8; SNP_REPORT_RESP_LEN];
    let mut arg = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: req.as_ptr() as u64,
        resp_data: resp.as_mut_ptr() as u64,
        exitinfo2: 0,
    };
    // SAFETY: `arg` points at live buffers of the sizes the kernel ABI defines for SNP_GET_REPORT;
    // the kernel writes only into `resp` (4000 bytes) and `arg`.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            SNP_GET_REPORT as _,
            &mut arg as *mut SnpGuestRequestIoctl,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(AttesterError::Device(format!(
            "SNP_GET_REPORT on {}: {e} (exitinfo2 {:#x})",
            dev.display(),
            arg.exitinfo2
        )));
    }
    let status = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]);
    let size = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]) as usize;
    if status != 0 {
        return Err(AttesterError::Device(format!(
            "SNP_GET_REPORT status {status:#x}"
        )));
    }
    resp.get(SNP_REPORT_RESP_OFF_REPORT..SNP_REPORT_RESP_OFF_REPORT + size)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            AttesterError::Device(format!("SNP_GET_REPORT report size {size} too large"))
        })
}

/// `TDX_CMD_GET_REPORT0` through `/dev/tdx_guest`: returns the 1024-byte TDREPORT (not a quote).
pub fn tdx_guest_report(dev: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, AttesterError> {
    use std::os::fd::AsRawFd as _;
    let f = open_dev(dev)?;
    let mut req = vec![0u8; 64 + TDREPORT_LEN];
    req[..64].copy_from_slice(report_data);
    // SAFETY: `req` is the 1088-byte `struct tdx_report_req` the ioctl reads and writes.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TDX_CMD_GET_REPORT0 as _, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(AttesterError::Device(format!(
            "TDX_CMD_GET_REPORT0 on {}: {}",
            dev.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(req[64..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid_le(s: &str) -> [u8; 16] {
        let h = hex::decode(s.replace('-', "")).expect("hex");
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
        b[4..6].copy_from_slice(&[h[5], h[4]]);
        b[6..8].copy_from_slice(&[h[7], h[6]]);
        b[8..].copy_from_slice(&h[8..]);
        b
    }

    fn table(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * CERT_TABLE_ENTRY_LEN;
        let mut t = Vec::new();
        let mut data = Vec::new();
        for (g, d) in entries {
            t.extend_from_slice(&guid_le(g));
            t.extend_from_slice(&((header + data.len()) as u32).to_le_bytes());
            t.extend_from_slice(&(d.len() as u32).to_le_bytes());
            data.extend_from_slice(d);
        }
        t.extend_from_slice(&[0u8; CERT_TABLE_ENTRY_LEN]);
        t.extend_from_slice(&data);
        t
    }

    fn fake_entry(
        root: &Path,
        name: &str,
        provider: &str,
        outblob: &[u8],
        aux: Option<&[u8]>,
        generation: u64,
    ) -> PathBuf {
        let e = root.join(name);
        fs::create_dir_all(&e).expect("mkdir");
        fs::write(e.join("provider"), format!("{provider}\n")).expect("provider");
        fs::write(e.join("outblob"), outblob).expect("outblob");
        fs::write(e.join("generation"), format!("{generation}\n")).expect("generation");
        if let Some(a) = aux {
            fs::write(e.join("auxblob"), a).expect("aux");
        }
        e
    }

    #[test]
    fn cert_table_round_trip_and_bounds() {
        let t = table(&[
            (GUID_VCEK, b"vcek"),
            (GUID_ASK, b"ask!"),
            ("11111111-2222-3333-4444-555555555555", b"x"),
        ]);
        let e = parse_cert_table(&t).expect("parse");
        assert_eq!(
            e[0],
            CertEntry {
                kind: CertKind::Vcek,
                data: b"vcek".to_vec()
            }
        );
        assert_eq!(e[1].kind, CertKind::Ask);
        assert_eq!(
            e[2].kind,
            CertKind::Other("11111111-2222-3333-4444-555555555555".into())
        );
        let mut bad = t.clone();
        bad[16] = 0xff; // offset beyond the table
        assert!(parse_cert_table(&bad).is_err());
        assert!(parse_cert_table(&t[..10]).is_err());
    }

    #[test]
    fn exchange_on_fake_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let aux = table(&[(GUID_VCEK, b"vcek")]);
        let e = fake_entry(tmp.path(), "e1", PROVIDER_SNP, b"REPORT", Some(&aux), 1);
        let r = ConfigfsTsm::exchange(&e, &[9; 64], 1).expect("exchange");
        assert_eq!(fs::read(e.join("inblob")).expect("inblob"), vec![9; 64]);
        assert_eq!(r.provider, PROVIDER_SNP);
        assert_eq!(r.outblob, b"REPORT");
        assert_eq!(r.auxblob.as_deref(), Some(aux.as_slice()));
        // Another writer bumped the generation: the outblob may not be ours.
        let e2 = fake_entry(tmp.path(), "e2", PROVIDER_SNP, b"REPORT", None, 2);
        let err = ConfigfsTsm::exchange(&e2, &[9; 64], 1).expect_err("race");
        assert!(matches!(err, AttesterError::Concurrent(_, 2, 1)), "{err}");
        // Missing outblob is named.
        fs::remove_file(e2.join("outblob")).expect("rm");
        let err = ConfigfsTsm::exchange(&e2, &[9; 64], 2).expect_err("no outblob");
        assert!(
            err.to_string().starts_with("read ") && err.to_string().contains("outblob"),
            "{err}"
        );
    }

    #[test]
    fn report_creates_and_removes_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let tsm = ConfigfsTsm::new(tmp.path());
        // A plain directory has no kernel attributes: the error names the file. (On configfs
        // rmdir removes the entry with its attributes; here inblob keeps it, so clean up.)
        let err = tsm
            .report(&[0; 64])
            .expect_err("fake tree without attributes");
        assert!(err.to_string().contains("outblob"), "{err}");
        let entries: Vec<_> = fs::read_dir(tmp.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(entries.len(), 1);
        assert!(
            entries[0]
                .file_name()
                .to_string_lossy()
                .starts_with("podvm-")
        );
    }

    #[test]
    fn detection_is_explicit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let paths = AttesterPaths {
            tsm_report_root: tmp.path().join("tsm/report"),
            sev_guest_dev: tmp.path().join("sev-guest"),
            tdx_guest_dev: tmp.path().join("tdx_guest"),
            ccel: tmp.path().join("CCEL"),
        };
        let err = detect(&paths).expect_err("nothing present");
        assert!(matches!(err, AttesterError::NoTee(_)));
        assert!(
            err.to_string()
                .contains("emulated TEE must be configured explicitly")
        );
        assert!(attester(&paths).is_err());
        fs::write(&paths.tdx_guest_dev, b"").expect("fake dev");
        assert_eq!(detect(&paths).expect("tdx"), TeeKind::Tdx);
        fs::write(&paths.sev_guest_dev, b"").expect("fake dev");
        assert_eq!(detect(&paths).expect("snp"), TeeKind::Snp);
        // TDX without configfs-tsm cannot produce a quote, and says why.
        let err = TdxAttester::new(paths.clone())
            .evidence(b"x")
            .expect_err("no tsm");
        assert!(err.to_string().contains("needs configfs-tsm"), "{err}");
        assert!(matches!(
            SnpAttester::new(paths).evidence(&[0; 65]),
            Err(AttesterError::ReportDataTooLong(65))
        ));
    }
}
