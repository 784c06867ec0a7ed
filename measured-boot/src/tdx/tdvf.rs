//! TDVF metadata (Intel "TDX Virtual Firmware Design Guide", section "TDVF Metadata") and MRTD.
//!
//! The OVMF footer entry [`TDX_METADATA_OFFSET_GUID`] gives the offset, from the end of the image,
//! of the descriptor: `"TDVF"`, u32 length, u32 version (1), u32 section count, then 32-byte
//! section entries.

use sha2::{Digest, Sha384};

use crate::error::{Error, Result};
use crate::ovmf::{Firmware, PAGE_SIZE, TDX_METADATA_OFFSET_GUID, le32};

/// Descriptor signature.
pub const TDVF_SIGNATURE: &[u8; 4] = b"TDVF";
/// Size of the descriptor header.
pub const TDVF_HEADER_SIZE: usize = 16;
/// Size of one section entry.
pub const TDVF_SECTION_SIZE: usize = 32;
/// The descriptor version this parser understands.
pub const TDVF_VERSION: u32 = 1;

const SEC_OFF_DATA_OFFSET: usize = 0;
const SEC_OFF_RAW_DATA_SIZE: usize = 4;
const SEC_OFF_MEMORY_ADDRESS: usize = 8;
const SEC_OFF_MEMORY_DATA_SIZE: usize = 16;
const SEC_OFF_TYPE: usize = 24;
const SEC_OFF_ATTRIBUTES: usize = 28;

/// Attribute: the section's pages are extended into MRTD (TDH.MR.EXTEND).
pub const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Attribute: the section's pages are added by the guest (TDH.MEM.PAGE.AUG), not measured.
pub const ATTR_PAGE_AUG: u32 = 1 << 1;

/// Measurement buffer size of TDH.MEM.PAGE.ADD and of the TDH.MR.EXTEND header.
pub const MR_BUFFER_SIZE: usize = 128;
/// Bytes per TDH.MR.EXTEND.
pub const MR_EXTEND_CHUNK: usize = 256;
/// Highest guest-physical address (52-bit physical address width).
const MAX_GPA: u64 = 1 << 52;
/// Largest section this tool measures page by page (TDVF firmware volumes and temporary memory are
/// a few MiB; anything near this is a corrupt descriptor, not firmware).
const MAX_ADDED_SECTION: u64 = 1 << 30;
/// Offset of the GPA in the measurement buffer.
const MR_BUFFER_GPA_OFFSET: usize = 16;

/// TDVF section types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TdvfSectionType {
    Bfv,
    Cfv,
    TdHob,
    TempMem,
    PermMem,
    Payload,
    PayloadParam,
    Unknown(u32),
}

impl TdvfSectionType {
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            o => Self::Unknown(o),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::Bfv => 0,
            Self::Cfv => 1,
            Self::TdHob => 2,
            Self::TempMem => 3,
            Self::PermMem => 4,
            Self::Payload => 5,
            Self::PayloadParam => 6,
            Self::Unknown(o) => o,
        }
    }
}

/// One TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TdvfSection {
    /// Offset of the section's data in the image.
    pub data_offset: u32,
    /// Bytes of data in the image (0 for memory-only sections).
    pub raw_data_size: u32,
    /// GPA of the section.
    pub memory_address: u64,
    /// Size of the section in guest memory.
    pub memory_data_size: u64,
    pub section_type: TdvfSectionType,
    pub attributes: u32,
}

impl TdvfSection {
    /// Parses one 32-byte entry.
    pub fn parse(b: &[u8; TDVF_SECTION_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        TdvfSection {
            data_offset: le32(&b[SEC_OFF_DATA_OFFSET..]),
            raw_data_size: le32(&b[SEC_OFF_RAW_DATA_SIZE..]),
            memory_address: u64_at(SEC_OFF_MEMORY_ADDRESS),
            memory_data_size: u64_at(SEC_OFF_MEMORY_DATA_SIZE),
            section_type: TdvfSectionType::from_u32(le32(&b[SEC_OFF_TYPE..])),
            attributes: le32(&b[SEC_OFF_ATTRIBUTES..]),
        }
    }

    /// Serialises to the 32-byte entry.
    pub fn to_bytes(&self) -> [u8; TDVF_SECTION_SIZE] {
        let mut b = [0u8; TDVF_SECTION_SIZE];
        b[SEC_OFF_DATA_OFFSET..SEC_OFF_DATA_OFFSET + 4]
            .copy_from_slice(&self.data_offset.to_le_bytes());
        b[SEC_OFF_RAW_DATA_SIZE..SEC_OFF_RAW_DATA_SIZE + 4]
            .copy_from_slice(&self.raw_data_size.to_le_bytes());
        b[SEC_OFF_MEMORY_ADDRESS..SEC_OFF_MEMORY_ADDRESS + 8]
            .copy_from_slice(&self.memory_address.to_le_bytes());
        b[SEC_OFF_MEMORY_DATA_SIZE..SEC_OFF_MEMORY_DATA_SIZE + 8]
            .copy_from_slice(&self.memory_data_size.to_le_bytes());
        b[SEC_OFF_TYPE..SEC_OFF_TYPE + 4]
            .copy_from_slice(&self.section_type.to_u32().to_le_bytes());
        b[SEC_OFF_ATTRIBUTES..SEC_OFF_ATTRIBUTES + 4]
            .copy_from_slice(&self.attributes.to_le_bytes());
        b
    }

    /// Whether TDH.MEM.PAGE.ADD adds (and so measures the GPA of) this section's pages at build
    /// time: everything except permanent memory and PAGE.AUG sections.
    pub fn is_added(&self) -> bool {
        self.attributes & ATTR_PAGE_AUG == 0 && self.section_type != TdvfSectionType::PermMem
    }

    /// Whether the section's contents are extended into MRTD.
    pub fn is_extended(&self) -> bool {
        self.is_added() && self.attributes & ATTR_MR_EXTEND != 0
    }
}

/// A parsed TDVF descriptor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TdvfDescriptor {
    pub version: u32,
    pub sections: Vec<TdvfSection>,
}

impl TdvfDescriptor {
    /// Finds and parses the descriptor of `fw` via its footer table.
    pub fn from_firmware(fw: &Firmware) -> Result<Self> {
        let err = |detail: String| Error::Tdvf {
            name: fw.name().to_string(),
            detail,
        };
        let entry = fw.table_entry(&TDX_METADATA_OFFSET_GUID).ok_or_else(|| {
            err(format!(
                "no TDX metadata offset entry (GUID {TDX_METADATA_OFFSET_GUID}) in the OVMF footer table; use a TDX-capable OVMF/TDVF build"
            ))
        })?;
        if entry.len() < 4 {
            return Err(err("TDX metadata offset entry shorter than 4 bytes".into()));
        }
        let off = le32(entry) as usize;
        let data = fw.data();
        if off > data.len() || off < TDVF_HEADER_SIZE {
            return Err(err(format!(
                "TDVF descriptor offset {off} from the end lies outside the {}-byte image; the image is truncated or corrupt",
                data.len()
            )));
        }
        Self::parse(&data[data.len() - off..]).map_err(err)
    }

    /// Parses a descriptor at the start of `b`; the error string says what is wrong.
    pub fn parse(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < TDVF_HEADER_SIZE {
            return Err("TDVF descriptor truncated".into());
        }
        if &b[0..4] != TDVF_SIGNATURE {
            return Err(format!("TDVF signature {:02x?} is not \"TDVF\"", &b[0..4]));
        }
        let length = le32(&b[4..]) as usize;
        let version = le32(&b[8..]);
        let count = le32(&b[12..]) as usize;
        if version != TDVF_VERSION {
            return Err(format!("TDVF descriptor version {version}, expected 1"));
        }
        let needed = count
            .checked_mul(TDVF_SECTION_SIZE)
            .and_then(|n| n.checked_add(TDVF_HEADER_SIZE))
            .unwrap_or(usize::MAX);
        if needed > length || needed > b.len() {
            return Err(format!(
                "{count} TDVF sections do not fit in the {length}-byte descriptor"
            ));
        }
        let sections = b[TDVF_HEADER_SIZE..needed]
            .chunks_exact(TDVF_SECTION_SIZE)
            .map(|c| {
                let mut e = [0u8; TDVF_SECTION_SIZE];
                e.copy_from_slice(c);
                TdvfSection::parse(&e)
            })
            .collect();
        Ok(TdvfDescriptor { version, sections })
    }

    /// Serialises the descriptor.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = TDVF_HEADER_SIZE + self.sections.len() * TDVF_SECTION_SIZE;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(TDVF_SIGNATURE);
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        for s in &self.sections {
            b.extend_from_slice(&s.to_bytes());
        }
        b
    }
}

/// Order of TDH.MEM.PAGE.ADD and TDH.MR.EXTEND operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MrtdOrder {
    /// Per page: PAGE.ADD, then the page's 16 MR.EXTENDs (KVM `KVM_TDX_INIT_MEM_REGION`, current QEMU).
    #[default]
    SinglePass,
    /// All PAGE.ADDs of all sections first, then all MR.EXTENDs (older QEMU/KVM).
    TwoPass,
}

fn page_add_buffer(gpa: u64) -> [u8; MR_BUFFER_SIZE] {
    let mut b = [0u8; MR_BUFFER_SIZE];
    b[..12].copy_from_slice(b"MEM.PAGE.ADD");
    b[MR_BUFFER_GPA_OFFSET..MR_BUFFER_GPA_OFFSET + 8].copy_from_slice(&gpa.to_le_bytes());
    b
}

fn mr_extend_buffer(gpa: u64) -> [u8; MR_BUFFER_SIZE] {
    let mut b = [0u8; MR_BUFFER_SIZE];
    b[..9].copy_from_slice(b"MR.EXTEND");
    b[MR_BUFFER_GPA_OFFSET..MR_BUFFER_GPA_OFFSET + 8].copy_from_slice(&gpa.to_le_bytes());
    b
}

/// MRTD as the TDX module builds it: one SHA-384 over the 128-byte buffer of every
/// TDH.MEM.PAGE.ADD and, for measured pages, every TDH.MR.EXTEND header followed by its 256 bytes,
/// in the order the host issued them. [`mrtd`] drives it from a TDVF descriptor; a VMM's recorded
/// `KVM_TDX_INIT_MEM_REGION` calls can drive it directly.
#[derive(Debug, Clone, Default)]
pub struct MrtdBuilder {
    h: Sha384,
}

impl MrtdBuilder {
    /// An empty MRTD (TDH.MNG.INIT state).
    pub fn new() -> Self {
        Self::default()
    }

    /// TDH.MEM.PAGE.ADD of the page at `gpa`.
    pub fn page_add(&mut self, gpa: u64) {
        self.h.update(page_add_buffer(gpa));
    }

    /// The 16 TDH.MR.EXTENDs of the page at `gpa` holding `page`.
    pub fn extend_page(&mut self, gpa: u64, page: &[u8; PAGE_SIZE]) {
        for (c, chunk) in page.chunks_exact(MR_EXTEND_CHUNK).enumerate() {
            self.h
                .update(mr_extend_buffer(gpa + (c * MR_EXTEND_CHUNK) as u64));
            self.h.update(chunk);
        }
    }

    /// What one page of `KVM_TDX_INIT_MEM_REGION` does: PAGE.ADD, then (if `measure`, i.e.
    /// `KVM_TDX_MEASURE_MEMORY_REGION`) its MR.EXTENDs.
    pub fn add_page(&mut self, gpa: u64, page: &[u8; PAGE_SIZE], measure: bool) {
        self.page_add(gpa);
        if measure {
            self.extend_page(gpa, page);
        }
    }

    /// TDH.MR.FINALIZE: the MRTD value.
    pub fn finish(self) -> [u8; 48] {
        self.h.finalize().into()
    }
}

/// The bytes of one guest page of a section: image data, zero beyond `raw_data_size`.
fn section_page(image: &[u8], s: &TdvfSection, page: u64) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    let start = page * PAGE_SIZE as u64;
    let raw = s.raw_data_size as u64;
    if start < raw {
        let n = (raw - start).min(PAGE_SIZE as u64) as usize;
        let from = s.data_offset as usize + start as usize;
        p[..n].copy_from_slice(&image[from..from + n]);
    }
    p
}

/// Computes MRTD of a TD built from `image` as described by `desc`.
pub fn mrtd(name: &str, image: &[u8], desc: &TdvfDescriptor, order: MrtdOrder) -> Result<[u8; 48]> {
    let err = |detail: String| Error::Tdvf {
        name: name.to_string(),
        detail,
    };
    for (i, s) in desc.sections.iter().enumerate() {
        if let TdvfSectionType::Unknown(t) = s.section_type {
            return Err(err(format!("TDVF section {i} has unknown type {t}")));
        }
        if s.memory_address % PAGE_SIZE as u64 != 0 || s.memory_data_size % PAGE_SIZE as u64 != 0 {
            return Err(err(format!(
                "TDVF section {i} at {:#x}+{:#x} is not page aligned",
                s.memory_address, s.memory_data_size
            )));
        }
        if s.memory_address
            .checked_add(s.memory_data_size)
            .is_none_or(|end| end > MAX_GPA)
        {
            return Err(err(format!(
                "TDVF section {i} at {:#x}+{:#x} lies beyond the guest-physical address space",
                s.memory_address, s.memory_data_size
            )));
        }
        if s.is_added() && s.memory_data_size > MAX_ADDED_SECTION {
            return Err(err(format!(
                "TDVF section {i} adds {:#x} bytes at build time, more than the {MAX_ADDED_SECTION:#x} this tool accepts; the descriptor is corrupt",
                s.memory_data_size
            )));
        }
        if s.raw_data_size as u64 > s.memory_data_size
            || s.data_offset as usize + s.raw_data_size as usize > image.len()
        {
            return Err(err(format!(
                "TDVF section {i} data {:#x}+{:#x} lies outside the {}-byte image; pass the complete firmware image",
                s.data_offset,
                s.raw_data_size,
                image.len()
            )));
        }
    }
    let mut h = MrtdBuilder::new();
    let pages_of = |s: &TdvfSection| 0..s.memory_data_size / PAGE_SIZE as u64;
    let gpa_of = |s: &TdvfSection, page: u64| s.memory_address + page * PAGE_SIZE as u64;
    for s in desc.sections.iter().filter(|s| s.is_added()) {
        for page in pages_of(s) {
            h.page_add(gpa_of(s, page));
            if order == MrtdOrder::SinglePass && s.is_extended() {
                h.extend_page(gpa_of(s, page), &section_page(image, s, page));
            }
        }
    }
    if order == MrtdOrder::TwoPass {
        for s in desc.sections.iter().filter(|s| s.is_extended()) {
            for page in pages_of(s) {
                h.extend_page(gpa_of(s, page), &section_page(image, s, page));
            }
        }
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn parses_descriptor_in_ovmfx64_suffix() {
        let fw = Firmware::from_path(testdata::OVMFX64_SUFFIX).unwrap();
        let d = TdvfDescriptor::from_firmware(&fw).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.sections.len(), 6);
        let bfv = d.sections[0];
        assert_eq!(bfv.section_type, TdvfSectionType::Bfv);
        assert_eq!(bfv.attributes, ATTR_MR_EXTEND);
        // BFV ends at 4 GiB; its data runs to the end of the (4 MiB) image the suffix came from.
        assert_eq!(bfv.memory_address + bfv.memory_data_size, 0x1_0000_0000);
        assert_eq!(bfv.data_offset as u64 + bfv.raw_data_size as u64, 4 << 20);
        assert_eq!(d.sections[1].section_type, TdvfSectionType::Cfv);
        assert_eq!(d.sections[4].section_type, TdvfSectionType::TdHob);
        // Round trip through the on-disk form.
        let bytes = d.to_bytes();
        assert_eq!(TdvfDescriptor::parse(&bytes).unwrap(), d);
        let data = fw.data();
        let at = data.len() - le32(fw.table_entry(&TDX_METADATA_OFFSET_GUID).unwrap()) as usize;
        assert_eq!(&data[at..at + bytes.len()], bytes.as_slice());
        // The suffix does not hold the firmware volumes, so MRTD must refuse clearly.
        let e = mrtd(fw.name(), data, &d, MrtdOrder::SinglePass).unwrap_err();
        assert!(e.to_string().contains("complete firmware image"), "{e}");
    }

    /// A synthetic image: one extended 1-page BFV, one 1-page TempMem, one PermMem (not added).
    fn synthetic() -> (Vec<u8>, TdvfDescriptor) {
        let mut image = vec![0u8; PAGE_SIZE];
        for (i, b) in image.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let desc = TdvfDescriptor {
            version: 1,
            sections: vec![
                TdvfSection {
                    data_offset: 0,
                    raw_data_size: PAGE_SIZE as u32,
                    memory_address: 0xffff_f000,
                    memory_data_size: PAGE_SIZE as u64,
                    section_type: TdvfSectionType::Bfv,
                    attributes: ATTR_MR_EXTEND,
                },
                TdvfSection {
                    data_offset: 0,
                    raw_data_size: 0,
                    memory_address: 0x80_0000,
                    memory_data_size: PAGE_SIZE as u64,
                    section_type: TdvfSectionType::TempMem,
                    attributes: 0,
                },
                TdvfSection {
                    data_offset: 0,
                    raw_data_size: 0,
                    memory_address: 0x100_0000,
                    memory_data_size: 0x10_0000,
                    section_type: TdvfSectionType::PermMem,
                    attributes: ATTR_PAGE_AUG,
                },
            ],
        };
        (image, desc)
    }

    /// Hand-written expectation: the exact byte stream the TDX module hashes, spelled out.
    fn hand_stream(two_pass: bool) -> Vec<u8> {
        let (image, _) = synthetic();
        let add = |gpa: u64| {
            let mut b = vec![0u8; 128];
            b[..12].copy_from_slice(b"MEM.PAGE.ADD");
            b[16..24].copy_from_slice(&gpa.to_le_bytes());
            b
        };
        let mut ext = Vec::new();
        for c in 0..16u64 {
            let mut b = vec![0u8; 128];
            b[..9].copy_from_slice(b"MR.EXTEND");
            b[16..24].copy_from_slice(&(0xffff_f000 + c * 256).to_le_bytes());
            ext.extend_from_slice(&b);
            ext.extend_from_slice(&image[c as usize * 256..(c as usize + 1) * 256]);
        }
        let mut s = add(0xffff_f000);
        if !two_pass {
            s.extend_from_slice(&ext);
        }
        s.extend_from_slice(&add(0x80_0000));
        if two_pass {
            s.extend_from_slice(&ext);
        }
        s
    }

    #[test]
    fn mrtd_single_and_two_pass_match_hand_streams() {
        let (image, desc) = synthetic();
        let one = mrtd("syn", &image, &desc, MrtdOrder::SinglePass).unwrap();
        let two = mrtd("syn", &image, &desc, MrtdOrder::TwoPass).unwrap();
        let want_one: [u8; 48] = Sha384::digest(hand_stream(false)).into();
        let want_two: [u8; 48] = Sha384::digest(hand_stream(true)).into();
        assert_eq!(one, want_one);
        assert_eq!(two, want_two);
        assert_ne!(one, two);
        assert_eq!(hand_stream(false).len(), 128 + 16 * (128 + 256) + 128);
    }

    #[test]
    fn mrtd_changes_with_content_and_rejects_bad_sections() {
        let (mut image, desc) = synthetic();
        let a = mrtd("syn", &image, &desc, MrtdOrder::SinglePass).unwrap();
        image[100] ^= 1;
        let b = mrtd("syn", &image, &desc, MrtdOrder::SinglePass).unwrap();
        assert_ne!(a, b);
        let mut bad = desc.clone();
        bad.sections[0].memory_address += 1;
        assert!(mrtd("syn", &image, &bad, MrtdOrder::SinglePass).is_err());
    }
}
