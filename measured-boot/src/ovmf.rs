//! OVMF firmware image: the GUIDed footer table at the end of the image and the SEV metadata
//! ("ASEV") block it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`): the last 32 bytes of the image hold
//! the reset vector; immediately before them is the footer entry (`u16 size`, GUID
//! [`OVMF_TABLE_FOOTER_GUID`]). `size` covers the whole table including that footer entry. Entries
//! are walked backwards from the footer: each is `data || u16 size || GUID` where `size` includes
//! the 18-byte header.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::guid::{GUID_SIZE, Guid};

/// Page size used by every launch-measurement format here.
pub const PAGE_SIZE: usize = 4096;
/// Firmware is mapped so that it ends at 4 GiB.
pub const FIRMWARE_END_GPA: u64 = 0x1_0000_0000;

/// Bytes between the footer entry and the end of the image (reset vector).
pub const FOOTER_OFFSET_FROM_END: usize = 32;
/// Size of a footer-table entry header: `u16 size` + GUID.
pub const FOOTER_ENTRY_HEADER_SIZE: usize = 2 + GUID_SIZE;

/// GUID of the footer entry that terminates the table.
pub const OVMF_TABLE_FOOTER_GUID: Guid = Guid::from_fields(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// Entry giving the GPA (u32) and size (u32) of the SEV kernel/initrd/cmdline hash table.
pub const SEV_HASH_TABLE_RV_GUID: Guid = Guid::from_fields(
    0x7255371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// Entry giving the AP reset EIP (u32) for SEV-ES/SNP.
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::from_fields(
    0x00f771de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// Entry giving the offset from the end of the image (u32) of the SEV metadata block.
pub const OVMF_SEV_METADATA_GUID: Guid = Guid::from_fields(
    0xdc886566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// Entry giving the offset from the end of the image (u32) of the TDVF metadata descriptor.
pub const TDX_METADATA_OFFSET_GUID: Guid = Guid::from_fields(
    0xe47a6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// SEV metadata header: signature "ASEV", u32 size, u32 version, u32 item count.
pub const SEV_METADATA_SIGNATURE: &[u8; 4] = b"ASEV";
/// Size of the SEV metadata header.
pub const SEV_METADATA_HEADER_SIZE: usize = 16;
/// Size of one SEV metadata section descriptor: u32 gpa, u32 size, u32 type.
pub const SEV_METADATA_SECTION_SIZE: usize = 12;
/// The only SEV metadata version defined.
pub const SEV_METADATA_VERSION: u32 = 1;

/// Type of an SEV metadata section (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevSectionType {
    /// Pre-validated memory for the SEC phase (zero pages; unmeasured on GCE).
    SnpSecMem,
    /// The SNP secrets page.
    SnpSecrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling-area page.
    SvsmCaa,
    /// The page holding the kernel/initrd/cmdline hash table.
    SnpKernelHashes,
    /// A type this crate does not know.
    Unknown(u32),
}

impl SevSectionType {
    /// Numeric section type values.
    pub const SEC_MEM: u32 = 1;
    pub const SECRETS: u32 = 2;
    pub const CPUID: u32 = 3;
    pub const SVSM_CAA: u32 = 4;
    pub const KERNEL_HASHES: u32 = 0x10;

    /// Decodes the on-disk value.
    pub fn from_u32(v: u32) -> Self {
        match v {
            Self::SEC_MEM => Self::SnpSecMem,
            Self::SECRETS => Self::SnpSecrets,
            Self::CPUID => Self::Cpuid,
            Self::SVSM_CAA => Self::SvsmCaa,
            Self::KERNEL_HASHES => Self::SnpKernelHashes,
            other => Self::Unknown(other),
        }
    }

    /// Encodes the on-disk value.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::SnpSecMem => Self::SEC_MEM,
            Self::SnpSecrets => Self::SECRETS,
            Self::Cpuid => Self::CPUID,
            Self::SvsmCaa => Self::SVSM_CAA,
            Self::SnpKernelHashes => Self::KERNEL_HASHES,
            Self::Unknown(v) => v,
        }
    }
}

/// One SEV metadata section descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMetadataSection {
    pub gpa: u32,
    pub size: u32,
    pub section_type: SevSectionType,
}

impl SevMetadataSection {
    /// Parses one 12-byte descriptor.
    pub fn parse(b: &[u8; SEV_METADATA_SECTION_SIZE]) -> Self {
        SevMetadataSection {
            gpa: le32(&b[0..4]),
            size: le32(&b[4..8]),
            section_type: SevSectionType::from_u32(le32(&b[8..12])),
        }
    }

    /// Serialises to the 12-byte on-disk form.
    pub fn to_bytes(&self) -> [u8; SEV_METADATA_SECTION_SIZE] {
        let mut b = [0u8; SEV_METADATA_SECTION_SIZE];
        b[0..4].copy_from_slice(&self.gpa.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.section_type.to_u32().to_le_bytes());
        b
    }
}

/// One footer-table entry: its GUID and data bytes (without the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterEntry {
    pub guid: Guid,
    pub data: Vec<u8>,
}

/// A parsed OVMF image. Cheap to clone (the bytes are shared).
#[derive(Debug, Clone)]
pub struct Firmware {
    name: String,
    data: Arc<[u8]>,
    footer: Option<Vec<FooterEntry>>,
    sev_sections: Vec<SevMetadataSection>,
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

impl Firmware {
    /// Reads and parses a firmware file. `name` in errors is the path as given.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path.display().to_string(), data)
    }

    /// Parses firmware bytes. The footer table is optional at this stage (plain SEV needs none);
    /// the SEV metadata, when announced, must be well formed.
    pub fn from_bytes(name: impl Into<String>, data: impl Into<Arc<[u8]>>) -> Result<Self> {
        let name = name.into();
        let data: Arc<[u8]> = data.into();
        if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(Error::FirmwareSize {
                name,
                size: data.len(),
            });
        }
        let footer = parse_footer_table(&name, &data)?;
        let mut fw = Firmware {
            name,
            data,
            footer,
            sev_sections: Vec::new(),
        };
        fw.sev_sections = fw.parse_sev_metadata()?;
        Ok(fw)
    }

    /// The name used in messages (usually the path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole image.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Shared handle on the image bytes.
    pub fn shared_data(&self) -> Arc<[u8]> {
        Arc::clone(&self.data)
    }

    /// Guest-physical address of the first byte (the image ends at 4 GiB).
    pub fn gpa(&self) -> u64 {
        FIRMWARE_END_GPA - self.data.len() as u64
    }

    /// Footer-table entries, last entry in the image first; `None` if the image has no table.
    pub fn footer_entries(&self) -> Option<&[FooterEntry]> {
        self.footer.as_deref()
    }

    /// The data of the footer-table entry with `guid`, if present.
    pub fn table_entry(&self, guid: &Guid) -> Option<&[u8]> {
        self.footer
            .as_ref()?
            .iter()
            .find(|e| e.guid == *guid)
            .map(|e| e.data.as_slice())
    }

    fn require_entry(&self, guid: &Guid, entry: &'static str) -> Result<&[u8]> {
        if self.footer.is_none() {
            return Err(Error::NoFooterTable {
                name: self.name.clone(),
            });
        }
        let data = self
            .table_entry(guid)
            .ok_or_else(|| Error::MissingFooterEntry {
                name: self.name.clone(),
                entry,
                guid: guid.to_string(),
            })?;
        if data.len() < 4 {
            return Err(Error::BadFooterTable {
                name: self.name.clone(),
                detail: format!(
                    "{entry} entry has {} data bytes, need at least 4",
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    /// The SEV-ES AP reset EIP. Errors when the image has no footer table or no such entry.
    pub fn sev_es_reset_eip(&self) -> Result<u32> {
        Ok(le32(self.require_entry(
            &SEV_ES_RESET_BLOCK_GUID,
            "SEV-ES reset block",
        )?))
    }

    /// GPA of the SEV kernel/initrd/cmdline hash table, when the image announces a non-zero one.
    pub fn sev_hashes_table_gpa(&self) -> Option<u32> {
        let d = self.table_entry(&SEV_HASH_TABLE_RV_GUID)?;
        (d.len() >= 4 && le32(d) != 0).then(|| le32(d))
    }

    /// SEV metadata sections in image order (empty when the image has none).
    pub fn sev_sections(&self) -> &[SevMetadataSection] {
        &self.sev_sections
    }

    /// Whether the SEV metadata declares a section of `ty`.
    pub fn has_sev_section(&self, ty: SevSectionType) -> bool {
        self.sev_sections.iter().any(|s| s.section_type == ty)
    }

    fn parse_sev_metadata(&self) -> Result<Vec<SevMetadataSection>> {
        let Some(entry) = self.table_entry(&OVMF_SEV_METADATA_GUID) else {
            return Ok(Vec::new());
        };
        let bad = |detail: String| Error::BadSevMetadata {
            name: self.name.clone(),
            detail,
        };
        if entry.len() < 4 {
            return Err(bad("SEV metadata footer entry shorter than 4 bytes".into()));
        }
        let offset_from_end = le32(entry) as usize;
        let len = self.data.len();
        if offset_from_end > len || offset_from_end < SEV_METADATA_HEADER_SIZE {
            return Err(bad(format!(
                "metadata offset {offset_from_end} from the end lies outside the {len}-byte image"
            )));
        }
        let start = len - offset_from_end;
        let hdr = &self.data[start..start + SEV_METADATA_HEADER_SIZE];
        if &hdr[0..4] != SEV_METADATA_SIGNATURE {
            return Err(bad(format!(
                "signature {:02x?} is not \"ASEV\"",
                &hdr[0..4]
            )));
        }
        let size = le32(&hdr[4..8]) as usize;
        let version = le32(&hdr[8..12]);
        let count = le32(&hdr[12..16]) as usize;
        if version != SEV_METADATA_VERSION {
            return Err(bad(format!("version {version}, expected 1")));
        }
        let needed = count
            .checked_mul(SEV_METADATA_SECTION_SIZE)
            .and_then(|n| n.checked_add(SEV_METADATA_HEADER_SIZE))
            .unwrap_or(usize::MAX);
        if needed > size || start + needed > len {
            return Err(bad(format!(
                "{count} sections do not fit in the {size}-byte metadata block"
            )));
        }
        let items = &self.data[start + SEV_METADATA_HEADER_SIZE..start + needed];
        Ok(items
            .chunks_exact(SEV_METADATA_SECTION_SIZE)
            .map(|c| {
                let mut b = [0u8; SEV_METADATA_SECTION_SIZE];
                b.copy_from_slice(c);
                SevMetadataSection::parse(&b)
            })
            .collect())
    }
}

fn parse_footer_table(name: &str, data: &[u8]) -> Result<Option<Vec<FooterEntry>>> {
    let bad = |detail: String| Error::BadFooterTable {
        name: name.to_string(),
        detail,
    };
    if data.len() < FOOTER_OFFSET_FROM_END + FOOTER_ENTRY_HEADER_SIZE {
        return Ok(None);
    }
    let footer_start = data.len() - FOOTER_OFFSET_FROM_END - FOOTER_ENTRY_HEADER_SIZE;
    let (size, guid) = entry_header(&data[footer_start..footer_start + FOOTER_ENTRY_HEADER_SIZE]);
    if guid != OVMF_TABLE_FOOTER_GUID {
        return Ok(None);
    }
    let table_size = (size as usize)
        .checked_sub(FOOTER_ENTRY_HEADER_SIZE)
        .ok_or_else(|| bad(format!("footer size {size} is smaller than its own header")))?;
    if table_size > footer_start {
        return Err(bad(format!(
            "table size {table_size} runs past the start of the image"
        )));
    }
    let mut table = &data[footer_start - table_size..footer_start];
    let mut entries = Vec::new();
    while table.len() >= FOOTER_ENTRY_HEADER_SIZE {
        let hdr_at = table.len() - FOOTER_ENTRY_HEADER_SIZE;
        let (esize, eguid) = entry_header(&table[hdr_at..]);
        let esize = esize as usize;
        if esize < FOOTER_ENTRY_HEADER_SIZE || esize > table.len() {
            return Err(bad(format!(
                "entry {eguid} has size {esize}, outside {FOOTER_ENTRY_HEADER_SIZE}..={}",
                table.len()
            )));
        }
        let data_start = table.len() - esize;
        entries.push(FooterEntry {
            guid: eguid,
            data: table[data_start..hdr_at].to_vec(),
        });
        table = &table[..data_start];
    }
    Ok(Some(entries))
}

fn entry_header(b: &[u8]) -> (u16, Guid) {
    let size = le16(&b[0..2]);
    let mut g = [0u8; GUID_SIZE];
    g.copy_from_slice(&b[2..2 + GUID_SIZE]);
    (size, Guid::from_bytes(g))
}

/// Serialises footer-table entries (given last-in-image first, as [`Firmware::footer_entries`]
/// returns them) into the bytes that end at the reset vector, including the footer entry.
pub fn encode_footer_table(entries: &[FooterEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().rev() {
        out.extend_from_slice(&e.data);
        let size = (e.data.len() + FOOTER_ENTRY_HEADER_SIZE) as u16;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(e.guid.as_bytes());
    }
    let total = (out.len() + FOOTER_ENTRY_HEADER_SIZE) as u16;
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(OVMF_TABLE_FOOTER_GUID.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn amdsev_fixture_footer_and_metadata() {
        let fw = Firmware::from_path(testdata::AMDSEV_SUFFIX).unwrap();
        assert_eq!(fw.gpa(), 0xffff_f000);
        assert!(fw.sev_es_reset_eip().unwrap() != 0);
        assert!(fw.sev_hashes_table_gpa().is_some());
        assert!(fw.has_sev_section(SevSectionType::SnpKernelHashes));
        assert!(fw.has_sev_section(SevSectionType::SnpSecrets));
        assert!(fw.has_sev_section(SevSectionType::Cpuid));
        for s in fw.sev_sections() {
            assert_eq!(s.size as usize % PAGE_SIZE, 0, "{s:?}");
        }
    }

    #[test]
    fn ovmfx64_fixture_has_no_kernel_hashes() {
        let fw = Firmware::from_path(testdata::OVMFX64_SUFFIX).unwrap();
        assert!(!fw.has_sev_section(SevSectionType::SnpKernelHashes));
        assert!(fw.table_entry(&TDX_METADATA_OFFSET_GUID).is_some());
    }

    #[test]
    fn footer_table_round_trips() {
        let data = std::fs::read(testdata::AMDSEV_SUFFIX).unwrap();
        let fw = Firmware::from_bytes("fixture", data.clone()).unwrap();
        let entries = fw.footer_entries().unwrap();
        let encoded = encode_footer_table(entries);
        let end = data.len() - FOOTER_OFFSET_FROM_END;
        assert_eq!(&data[end - encoded.len()..end], encoded.as_slice());
    }

    #[test]
    fn sev_section_round_trips() {
        let fw = Firmware::from_path(testdata::AMDSEV_SUFFIX).unwrap();
        for s in fw.sev_sections() {
            assert_eq!(SevMetadataSection::parse(&s.to_bytes()), *s);
        }
    }

    #[test]
    fn truncated_and_footerless_images_fail_clearly() {
        let data = std::fs::read(testdata::AMDSEV_SUFFIX).unwrap();
        let err = Firmware::from_bytes("cut.fd", data[..4000].to_vec()).unwrap_err();
        assert!(err.to_string().contains("cut.fd"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");

        let fw = Firmware::from_bytes("zeros.fd", vec![0u8; PAGE_SIZE]).unwrap();
        let err = fw.sev_es_reset_eip().unwrap_err();
        assert!(matches!(err, Error::NoFooterTable { .. }), "{err}");
        assert!(err.to_string().contains("zeros.fd"));
    }

    #[test]
    fn oversized_footer_is_rejected() {
        let mut data = std::fs::read(testdata::AMDSEV_SUFFIX).unwrap();
        let at = data.len() - FOOTER_OFFSET_FROM_END - FOOTER_ENTRY_HEADER_SIZE;
        data[at..at + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        let err = Firmware::from_bytes("big", data).unwrap_err();
        assert!(matches!(err, Error::BadFooterTable { .. }), "{err}");
    }
}
