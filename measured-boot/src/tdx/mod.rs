//! TDX: TDVF metadata and MRTD ([`tdvf`]), CC event log replay ([`ccel`]), and the *predicted*
//! RTMR1/RTMR2 events of an OVMF direct kernel boot ([`predict_direct_boot`]).

pub mod ccel;
pub mod tdvf;

use sha2::{Digest, Sha384};

use crate::error::{Error, Result};
use crate::ovmf::{le16, le32};

// PE/COFF offsets (Microsoft PE format specification).
const DOS_OFF_LFANEW: usize = 0x3c;
const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";
const COFF_HEADER_SIZE: usize = 20;
const COFF_OFF_NUM_SECTIONS: usize = 2;
const COFF_OFF_SIZE_OF_OPT_HEADER: usize = 16;
const OPT_MAGIC_PE32: u16 = 0x10b;
const OPT_MAGIC_PE32_PLUS: u16 = 0x20b;
const OPT_OFF_CHECKSUM: usize = 64;
const OPT_OFF_SIZE_OF_HEADERS: usize = 60;
const OPT_PE32_OFF_NUM_RVA: usize = 92;
const OPT_PE32_PLUS_OFF_NUM_RVA: usize = 108;
const DATA_DIR_SIZE: usize = 8;
const DATA_DIR_SECURITY: usize = 4;
const SECTION_HEADER_SIZE: usize = 40;
const SECTION_OFF_SIZE_OF_RAW: usize = 16;
const SECTION_OFF_PTR_TO_RAW: usize = 20;

/// The Authenticode SHA-384 of a PE/COFF image (what OVMF's measured-boot library extends for
/// an EFI application such as a bzImage with EFI stub).
pub fn pe_authenticode_sha384(name: &str, img: &[u8]) -> Result<[u8; 48]> {
    let bad = |detail: &str| Error::Invalid {
        what: "kernel",
        value: name.to_string(),
        hint: format!("{detail}; TDX RTMR prediction needs a PE/COFF (EFI stub) kernel image"),
    };
    let get = |at: usize, n: usize| img.get(at..at + n).ok_or_else(|| bad("truncated PE image"));
    let pe = le32(get(DOS_OFF_LFANEW, 4)?) as usize;
    if get(pe, 4)? != PE_SIGNATURE {
        return Err(bad("no PE signature"));
    }
    let coff = pe + 4;
    let nsec = le16(get(coff + COFF_OFF_NUM_SECTIONS, 2)?) as usize;
    let opt_size = le16(get(coff + COFF_OFF_SIZE_OF_OPT_HEADER, 2)?) as usize;
    let opt = coff + COFF_HEADER_SIZE;
    let num_rva_off = match le16(get(opt, 2)?) {
        OPT_MAGIC_PE32 => OPT_PE32_OFF_NUM_RVA,
        OPT_MAGIC_PE32_PLUS => OPT_PE32_PLUS_OFF_NUM_RVA,
        _ => return Err(bad("unknown optional-header magic")),
    };
    let checksum = opt + OPT_OFF_CHECKSUM;
    let size_of_headers = le32(get(opt + OPT_OFF_SIZE_OF_HEADERS, 4)?) as usize;
    let num_rva = le32(get(opt + num_rva_off, 4)?) as usize;
    let dirs = opt + num_rva_off + 4;
    get(0, size_of_headers)?;
    let headers_end = if num_rva > DATA_DIR_SECURITY {
        dirs + (DATA_DIR_SECURITY + 1) * DATA_DIR_SIZE
    } else {
        checksum + 4
    };
    if size_of_headers < headers_end {
        return Err(bad("SizeOfHeaders ends inside the optional header"));
    }
    let mut h = Sha384::new();
    h.update(&img[..checksum]);
    let mut cert_size = 0usize;
    if num_rva > DATA_DIR_SECURITY {
        let sec_dir = dirs + DATA_DIR_SECURITY * DATA_DIR_SIZE;
        get(sec_dir, DATA_DIR_SIZE)?;
        h.update(&img[checksum + 4..sec_dir]);
        h.update(&img[sec_dir + DATA_DIR_SIZE..size_of_headers]);
        cert_size = le32(&img[sec_dir + 4..]) as usize;
    } else {
        h.update(&img[checksum + 4..size_of_headers]);
    }
    let sections_at = opt + opt_size;
    let mut sections = Vec::with_capacity(nsec);
    for i in 0..nsec {
        let s = get(sections_at + i * SECTION_HEADER_SIZE, SECTION_HEADER_SIZE)?;
        let size = le32(&s[SECTION_OFF_SIZE_OF_RAW..]) as usize;
        let ptr = le32(&s[SECTION_OFF_PTR_TO_RAW..]) as usize;
        if size > 0 {
            sections.push((ptr, size));
        }
    }
    sections.sort();
    let mut hashed = size_of_headers;
    for (ptr, size) in sections {
        h.update(get(ptr, size)?);
        hashed += size;
    }
    if img.len() > hashed + cert_size {
        h.update(&img[hashed..img.len() - cert_size]);
    }
    Ok(h.finalize().into())
}

fn ser_hex<S: serde::Serializer>(v: &[u8; 48], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// One predicted event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PredictedEvent {
    /// RTMR number (1 or 2).
    pub rtmr: u8,
    pub description: String,
    #[serde(serialize_with = "ser_hex")]
    pub sha384: [u8; 48],
}

/// The events an OVMF direct kernel boot adds for the kernel, command line and initrd. These are
/// **predicted** (no TDX hardware or TDX OVMF here to confirm them): RTMR1 gets the kernel's
/// Authenticode SHA-384; RTMR2 gets the Linux EFI stub's `LOADED_IMAGE::LoadOptions` event
/// (the command line, with `" initrd=initrd"` appended when an initrd is given, as UTF-16LE with
/// its NUL terminator) and its `Linux initrd` event (SHA-384 of the initrd). The other RTMR1
/// events (boot variables, separators, ExitBootServices) depend on the firmware and are not
/// predicted.
pub fn predict_direct_boot(
    kernel_name: &str,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<Vec<PredictedEvent>> {
    let mut ev = vec![PredictedEvent {
        rtmr: 1,
        description: "EV_EFI_BOOT_SERVICES_APPLICATION kernel (PE Authenticode SHA-384)".into(),
        sha384: pe_authenticode_sha384(kernel_name, kernel)?,
    }];
    let mut full = cmdline.to_string();
    if initrd.is_some() {
        full.push_str(" initrd=initrd");
    }
    let utf16: Vec<u8> = full
        .encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|u| u.to_le_bytes())
        .collect();
    ev.push(PredictedEvent {
        rtmr: 2,
        description: "EV_EVENT_TAG LOADED_IMAGE::LoadOptions (UTF-16LE command line)".into(),
        sha384: Sha384::digest(&utf16).into(),
    });
    if let Some(i) = initrd {
        ev.push(PredictedEvent {
            rtmr: 2,
            description: "EV_EVENT_TAG Linux initrd".into(),
            sha384: Sha384::digest(i).into(),
        });
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers (0x200) + one 0x200-byte section + 16 trailing bytes.
    fn tiny_pe() -> Vec<u8> {
        let mut img = vec![0u8; 0x410];
        img[0..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        img[0x80..0x84].copy_from_slice(PE_SIGNATURE);
        let coff = 0x84;
        img[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        img[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        img[opt..opt + 2].copy_from_slice(&OPT_MAGIC_PE32_PLUS.to_le_bytes());
        img[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        img[opt + 64..opt + 68].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        img[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let sec = opt + 240;
        img[sec + 16..sec + 20].copy_from_slice(&0x200u32.to_le_bytes());
        img[sec + 20..sec + 24].copy_from_slice(&0x200u32.to_le_bytes());
        for (i, b) in img[0x200..].iter_mut().enumerate() {
            *b = i as u8;
        }
        img
    }

    #[test]
    fn authenticode_skips_checksum_and_cert_dir() {
        let img = tiny_pe();
        let a = pe_authenticode_sha384("k", &img).unwrap();
        // Hand-assembled stream: headers minus checksum and security directory, then data.
        let opt = 0x84 + 20;
        let sec_dir = opt + 112 + 4 * 8;
        let mut s = Vec::new();
        s.extend_from_slice(&img[..opt + 64]);
        s.extend_from_slice(&img[opt + 68..sec_dir]);
        s.extend_from_slice(&img[sec_dir + 8..0x200]);
        s.extend_from_slice(&img[0x200..]);
        assert_eq!(a, <[u8; 48]>::from(Sha384::digest(&s)));
        // The checksum does not matter; section data does.
        let mut c = img.clone();
        c[opt + 64] ^= 0xff;
        assert_eq!(pe_authenticode_sha384("k", &c).unwrap(), a);
        c[0x300] ^= 1;
        assert_ne!(pe_authenticode_sha384("k", &c).unwrap(), a);
        assert!(pe_authenticode_sha384("k", &[0u8; 16]).is_err());
    }

    #[test]
    fn predicted_cmdline_is_utf16_with_initrd_suffix() {
        let ev = predict_direct_boot("k", &tiny_pe(), Some(b"initrd"), "console=hvc0").unwrap();
        assert_eq!(ev.len(), 3);
        let mut want = Vec::new();
        for u in "console=hvc0 initrd=initrd".encode_utf16().chain([0]) {
            want.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(ev[1].sha384, <[u8; 48]>::from(Sha384::digest(&want)));
        assert_eq!(ev[2].sha384, <[u8; 48]>::from(Sha384::digest(b"initrd")));
        let no_initrd = predict_direct_boot("k", &tiny_pe(), None, "console=hvc0").unwrap();
        assert_eq!(no_initrd.len(), 2);
        assert_ne!(no_initrd[1].sha384, ev[1].sha384);
    }
}
