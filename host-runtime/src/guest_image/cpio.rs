//! The `newc` cpio format (the initramfs format of the Linux kernel), written byte-reproducibly:
//! entries sorted by path, inode numbers assigned in that order, mtime 0, owner root.
//!
//! Header: 110 ASCII bytes, the magic `070701` then 13 fields of 8 hex digits; then the name with
//! its NUL, padded to 4 bytes (counting the header); then the data, padded to 4 bytes. The archive
//! ends with an entry named `TRAILER!!!`.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const FIELD_LEN: usize = 8;
const TRAILER: &str = "TRAILER!!!";

/// Offsets of the header fields, in order, after the magic.
mod field {
    pub const INO: usize = 0;
    pub const MODE: usize = 1;
    pub const UID: usize = 2;
    pub const GID: usize = 3;
    pub const NLINK: usize = 4;
    pub const MTIME: usize = 5;
    pub const FILESIZE: usize = 6;
    pub const DEVMAJOR: usize = 7;
    pub const DEVMINOR: usize = 8;
    pub const RDEVMAJOR: usize = 9;
    pub const RDEVMINOR: usize = 10;
    pub const NAMESIZE: usize = 11;
    pub const CHECK: usize = 12;
    pub const COUNT: usize = 13;
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive entry. `path` is relative (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Permission bits (`0o755`); the file type comes from `kind`.
    pub permissions: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn dir(path: &str, permissions: u32) -> Self {
        Entry {
            path: path.into(),
            permissions,
            kind: EntryKind::Dir,
        }
    }
    pub fn file(path: &str, permissions: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            permissions,
            kind: EntryKind::File(data),
        }
    }
    pub fn char_device(path: &str, permissions: u32, major: u32, minor: u32) -> Self {
        Entry {
            path: path.into(),
            permissions,
            kind: EntryKind::CharDevice { major, minor },
        }
    }

    fn type_bits(&self) -> u32 {
        match self.kind {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
        }
    }
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("not a newc cpio archive: bad magic at byte {offset}")]
    BadMagic { offset: usize },
    #[error("truncated at byte {offset}: {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("bad header field at byte {offset}: not 8 hex digits")]
    BadField { offset: usize },
    #[error("entry name at byte {offset} is not NUL-terminated UTF-8")]
    BadName { offset: usize },
    #[error("entry {path:?} has an unsupported file type {mode:#o}")]
    UnsupportedType { path: String, mode: u32 },
    #[error("no TRAILER!!! entry: the archive is truncated")]
    NoTrailer,
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Writes `entries` as a byte-reproducible newc archive (sorted by path, inodes 1.., mtime 0,
/// uid/gid 0). Duplicate paths are an error.
pub fn write_archive(entries: &[Entry], mut out: impl Write) -> io::Result<()> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = sorted.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("duplicate cpio entry {:?}", w[0].path),
        ));
    }
    for (index, entry) in sorted.iter().enumerate() {
        let data: &[u8] = match &entry.kind {
            EntryKind::File(data) => data,
            EntryKind::Symlink(target) => target.as_bytes(),
            _ => &[],
        };
        let (rmajor, rminor) = match entry.kind {
            EntryKind::CharDevice { major, minor } => (major, minor),
            _ => (0, 0),
        };
        let nlink = if entry.kind == EntryKind::Dir { 2 } else { 1 };
        let mode = entry.type_bits() | (entry.permissions & 0o7777);
        write_entry(
            &mut out,
            index as u32 + 1,
            mode,
            nlink,
            &entry.path,
            data,
            rmajor,
            rminor,
        )?;
    }
    write_entry(&mut out, 0, 0, 1, TRAILER, &[], 0, 0)
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rmajor: u32,
    rminor: u32,
) -> io::Result<()> {
    let mut fields = [0u32; field::COUNT];
    fields[field::INO] = ino;
    fields[field::MODE] = mode;
    fields[field::NLINK] = nlink;
    fields[field::FILESIZE] = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than 4 GiB"),
        )
    })?;
    fields[field::RDEVMAJOR] = rmajor;
    fields[field::RDEVMINOR] = rminor;
    fields[field::NAMESIZE] = name.len() as u32 + 1;
    let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    header.extend_from_slice(MAGIC);
    for value in fields {
        header.extend_from_slice(format!("{value:08X}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    header.resize(header.len() + pad4(header.len()), 0);
    out.write_all(&header)?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad4(data.len())])
}

/// Reads a newc archive. Fails on anything malformed, and on an archive without its trailer.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        let available = &bytes[offset.min(bytes.len())..];
        if !available.is_empty()
            && !MAGIC.starts_with(&available[..available.len().min(MAGIC.len())])
        {
            return Err(CpioError::BadMagic { offset });
        }
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or(CpioError::Truncated {
                offset,
                what: "header",
            })?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(CpioError::BadMagic { offset });
        }
        let mut fields = [0u32; field::COUNT];
        for (i, value) in fields.iter_mut().enumerate() {
            let start = MAGIC.len() + i * FIELD_LEN;
            let text = std::str::from_utf8(&header[start..start + FIELD_LEN]).map_err(|_| {
                CpioError::BadField {
                    offset: offset + start,
                }
            })?;
            *value = u32::from_str_radix(text, 16).map_err(|_| CpioError::BadField {
                offset: offset + start,
            })?;
        }
        let name_start = offset + HEADER_LEN;
        let name_len = fields[field::NAMESIZE] as usize;
        let name_bytes =
            bytes
                .get(name_start..name_start + name_len)
                .ok_or(CpioError::Truncated {
                    offset: name_start,
                    what: "entry name",
                })?;
        let name = match name_bytes.split_last() {
            Some((0, name)) => {
                std::str::from_utf8(name).map_err(|_| CpioError::BadName { offset: name_start })?
            }
            _ => return Err(CpioError::BadName { offset: name_start }),
        };
        let data_start = name_start + name_len + pad4(HEADER_LEN + name_len);
        let size = fields[field::FILESIZE] as usize;
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or(CpioError::Truncated {
                offset: data_start,
                what: "file data",
            })?;
        offset = data_start + size + pad4(size);
        if name == TRAILER {
            return Ok(entries);
        }
        let mode = fields[field::MODE];
        let kind = match mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(String::from_utf8_lossy(data).into_owned()),
            S_IFCHR => EntryKind::CharDevice {
                major: fields[field::RDEVMAJOR],
                minor: fields[field::RDEVMINOR],
            },
            _ => {
                return Err(CpioError::UnsupportedType {
                    path: name.to_string(),
                    mode,
                });
            }
        };
        entries.push(Entry {
            path: name.to_string(),
            permissions: mode & 0o7777,
            kind,
        });
        if offset >= bytes.len() {
            return Err(CpioError::NoTrailer);
        }
    }
}

// Keep unused field offsets documented without warnings.
const _: [usize; 4] = [field::UID, field::GID, field::MTIME, field::CHECK];
const _: [usize; 2] = [field::DEVMAJOR, field::DEVMINOR];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!agent\n".to_vec()),
            Entry::dir("dev", 0o755),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry {
                path: "bin/sh".into(),
                permissions: 0o777,
                kind: EntryKind::Symlink("busybox".into()),
            },
            Entry::dir("bin", 0o755),
        ]
    }

    #[test]
    fn round_trip_sorts_entries() {
        let mut bytes = Vec::new();
        write_archive(&sample(), &mut bytes).unwrap();
        let read = read_archive(&bytes).unwrap();
        let mut expected = sample();
        expected.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(read, expected);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn output_is_byte_reproducible_whatever_the_input_order() {
        let mut a = Vec::new();
        write_archive(&sample(), &mut a).unwrap();
        let mut reversed = sample();
        reversed.reverse();
        let mut b = Vec::new();
        write_archive(&reversed, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn header_layout_matches_the_kernel_format() {
        let mut bytes = Vec::new();
        write_archive(
            &[Entry::char_device("dev/console", 0o600, 5, 1)],
            &mut bytes,
        )
        .unwrap();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        // magic, ino 1, mode 020600, uid 0, gid 0, nlink 1, mtime 0, size 0, dev 0:0, rdev 5:1,
        // namesize 12 ("dev/console\0"), check 0.
        assert_eq!(
            header,
            "07070100000001000021800000000000000000000000010000000000000000000000000000000000000005000000010000000C00000000"
        );
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 12], b"dev/console\0");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn duplicates_are_refused() {
        let entries = [Entry::dir("a", 0o755), Entry::dir("a", 0o700)];
        assert!(write_archive(&entries, Vec::new()).is_err());
    }

    #[test]
    fn damage_is_detected() {
        let mut bytes = Vec::new();
        write_archive(&sample(), &mut bytes).unwrap();
        for cut in [1, 50, 120, bytes.len() / 2] {
            let err = read_archive(&bytes[..bytes.len() - cut]).unwrap_err();
            assert!(
                matches!(err, CpioError::Truncated { .. } | CpioError::NoTrailer),
                "cut {cut}: {err}"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert_eq!(
            read_archive(&bad).unwrap_err(),
            CpioError::BadMagic { offset: 0 }
        );
        let mut bad = bytes.clone();
        bad[10] = b'Z';
        assert_eq!(
            read_archive(&bad).unwrap_err(),
            CpioError::BadField { offset: 6 }
        );
        assert!(read_archive(b"").is_err());
    }
}
