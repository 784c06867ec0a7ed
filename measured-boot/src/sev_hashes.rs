//! The SEV kernel/initrd/cmdline hash table that QEMU writes into the guest page announced by
//! OVMF (QEMU `target/i386/sev.c`, `SevHashTable`): a GUIDed header followed by three GUIDed
//! SHA-256 entries in the order cmdline, initrd, kernel, padded to a 16-byte multiple.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256, Sha384};

use crate::error::{Error, Result};
use crate::guid::{GUID_SIZE, Guid};
use crate::ovmf::{PAGE_SIZE, le16};

/// Size of a SHA-256 digest.
pub const SHA256_SIZE: usize = 32;
/// Size of the table header: GUID + u16 length.
pub const TABLE_HEADER_SIZE: usize = GUID_SIZE + 2;
/// Size of one entry: GUID + u16 length + SHA-256.
pub const ENTRY_SIZE: usize = GUID_SIZE + 2 + SHA256_SIZE;
/// Size of the table without padding (the value of its length field).
pub const TABLE_SIZE: usize = TABLE_HEADER_SIZE + 3 * ENTRY_SIZE;
/// Size of the table as QEMU writes it: padded to a multiple of 16 bytes.
pub const PADDED_TABLE_SIZE: usize = (TABLE_SIZE + 15) & !15;

/// GUID of the table header.
pub const SEV_HASH_TABLE_HEADER_GUID: Guid = Guid::from_fields(
    0x9438d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// GUID of the kernel entry.
pub const SEV_KERNEL_ENTRY_GUID: Guid = Guid::from_fields(
    0x4de79437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);
/// GUID of the initrd entry.
pub const SEV_INITRD_ENTRY_GUID: Guid = Guid::from_fields(
    0x44baf731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// GUID of the cmdline entry.
pub const SEV_CMDLINE_ENTRY_GUID: Guid = Guid::from_fields(
    0x97d02dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);

/// The three hashes the table carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashTable {
    pub cmdline: [u8; SHA256_SIZE],
    pub initrd: [u8; SHA256_SIZE],
    pub kernel: [u8; SHA256_SIZE],
}

/// The bytes QEMU hashes for a kernel command line: the string plus a terminating NUL
/// (an absent or empty command line is a single NUL).
pub fn cmdline_bytes(cmdline: Option<&str>) -> Vec<u8> {
    let mut v = cmdline.unwrap_or("").as_bytes().to_vec();
    v.push(0);
    v
}

impl SevHashTable {
    /// Builds the table from the three digests.
    pub fn new(
        kernel: [u8; SHA256_SIZE],
        initrd: [u8; SHA256_SIZE],
        cmdline: [u8; SHA256_SIZE],
    ) -> Self {
        SevHashTable {
            cmdline,
            initrd,
            kernel,
        }
    }

    /// Serialises the padded table.
    pub fn to_bytes(&self) -> [u8; PADDED_TABLE_SIZE] {
        let mut b = [0u8; PADDED_TABLE_SIZE];
        b[..GUID_SIZE].copy_from_slice(SEV_HASH_TABLE_HEADER_GUID.as_bytes());
        b[GUID_SIZE..TABLE_HEADER_SIZE].copy_from_slice(&(TABLE_SIZE as u16).to_le_bytes());
        let entries = [
            (SEV_CMDLINE_ENTRY_GUID, &self.cmdline),
            (SEV_INITRD_ENTRY_GUID, &self.initrd),
            (SEV_KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.iter().enumerate() {
            let at = TABLE_HEADER_SIZE + i * ENTRY_SIZE;
            b[at..at + GUID_SIZE].copy_from_slice(guid.as_bytes());
            b[at + GUID_SIZE..at + GUID_SIZE + 2]
                .copy_from_slice(&(ENTRY_SIZE as u16).to_le_bytes());
            b[at + GUID_SIZE + 2..at + ENTRY_SIZE].copy_from_slice(*hash);
        }
        b
    }

    /// Parses a table (padded or not); `None` if the GUIDs or lengths do not match.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < TABLE_SIZE
            || b[..GUID_SIZE] != SEV_HASH_TABLE_HEADER_GUID.as_bytes()[..]
            || le16(&b[GUID_SIZE..]) as usize != TABLE_SIZE
        {
            return None;
        }
        let entry = |i: usize, guid: Guid| -> Option<[u8; SHA256_SIZE]> {
            let at = TABLE_HEADER_SIZE + i * ENTRY_SIZE;
            if b[at..at + GUID_SIZE] != guid.as_bytes()[..]
                || le16(&b[at + GUID_SIZE..]) as usize != ENTRY_SIZE
            {
                return None;
            }
            b[at + GUID_SIZE + 2..at + ENTRY_SIZE].try_into().ok()
        };
        Some(SevHashTable {
            cmdline: entry(0, SEV_CMDLINE_ENTRY_GUID)?,
            initrd: entry(1, SEV_INITRD_ENTRY_GUID)?,
            kernel: entry(2, SEV_KERNEL_ENTRY_GUID)?,
        })
    }

    /// The 4 KiB page holding the table at `offset_in_page`, zero elsewhere.
    pub fn page(&self, offset_in_page: usize) -> Option<Box<[u8; PAGE_SIZE]>> {
        if offset_in_page + PADDED_TABLE_SIZE > PAGE_SIZE {
            return None;
        }
        let mut page = Box::new([0u8; PAGE_SIZE]);
        page[offset_in_page..offset_in_page + PADDED_TABLE_SIZE].copy_from_slice(&self.to_bytes());
        Some(page)
    }
}

/// Size and digests of one launch input file (kernel, initrd, firmware).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The name as given (path or label).
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// SHA-384, computed only when asked for (exports); `None` otherwise.
    pub sha384: Option<[u8; 48]>,
}

const READ_CHUNK: usize = 1 << 20;

impl FileDigest {
    /// Hashes a file, streaming. `with_sha384` also computes SHA-384 (for exports).
    pub fn from_path(path: impl AsRef<Path>, with_sha384: bool) -> Result<Self> {
        let path = path.as_ref();
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut s256 = Sha256::new();
        let mut s384 = with_sha384.then(Sha384::new);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            s256.update(&buf[..n]);
            if let Some(h) = s384.as_mut() {
                h.update(&buf[..n]);
            }
        }
        Ok(FileDigest {
            name: path.display().to_string(),
            size,
            sha256: s256.finalize().into(),
            sha384: s384.map(|h| h.finalize().into()),
        })
    }

    /// Hashes bytes held in memory.
    pub fn from_bytes(name: impl Into<String>, data: &[u8], with_sha384: bool) -> Self {
        FileDigest {
            name: name.into(),
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
            sha384: with_sha384.then(|| Sha384::digest(data).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout_matches_qemu() {
        assert_eq!(TABLE_SIZE, 168);
        assert_eq!(PADDED_TABLE_SIZE, 176);
    }

    #[test]
    fn table_round_trips() {
        let t = SevHashTable::new([1; 32], [2; 32], [3; 32]);
        let b = t.to_bytes();
        assert_eq!(SevHashTable::parse(&b), Some(t));
        assert_eq!(
            &b[TABLE_HEADER_SIZE + 2 * ENTRY_SIZE + 18..][..32],
            &[1u8; 32]
        );
        assert_eq!(&b[TABLE_SIZE..], &[0u8; 8]);
        let mut corrupt = b;
        corrupt[0] ^= 1;
        assert_eq!(SevHashTable::parse(&corrupt), None);
    }

    #[test]
    fn page_places_table_at_offset() {
        let t = SevHashTable::new([7; 32], [8; 32], [9; 32]);
        let p = t.page(0xc00).unwrap();
        assert!(p[..0xc00].iter().all(|&b| b == 0));
        assert_eq!(SevHashTable::parse(&p[0xc00..]), Some(t));
        assert!(t.page(PAGE_SIZE - 100).is_none());
    }

    #[test]
    fn cmdline_gets_nul() {
        assert_eq!(cmdline_bytes(None), vec![0]);
        assert_eq!(cmdline_bytes(Some("")), vec![0]);
        assert_eq!(cmdline_bytes(Some("a b")), b"a b\0".to_vec());
    }

    #[test]
    fn file_digest_streams_like_one_shot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 17)).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let a = FileDigest::from_path(&p, true).unwrap();
        let b = FileDigest::from_bytes(p.display().to_string(), &data, true);
        assert_eq!(a, b);
    }
}
