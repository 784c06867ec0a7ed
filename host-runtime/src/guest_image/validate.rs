//! Checks that a kernel and an initrd are what a VM can boot, before a VM is started, so that a
//! wrong or damaged file is one clear error instead of a guest that hangs.

use std::fs;
use std::path::{Path, PathBuf};

use super::cpio;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux` with a PVH entry note (entered directly by QEMU and the
    /// built-in VMM).
    PvhElf,
    /// A compressed `bzImage` (x86 boot protocol).
    BzImage,
}

/// A kernel or initrd that cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootFileError {
    #[error(
        "{what} {path} cannot be read: {source}; pass an existing file (or run `podvm image build-guest`)"
    )]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty; rebuild it with `podvm image build-guest`")]
    Empty { what: &'static str, path: PathBuf },
    #[error(
        "kernel {path} is neither an x86-64 ELF vmlinux nor a bzImage ({detail}); pass a guest kernel built by `podvm image build-guest`"
    )]
    NotAKernel { path: PathBuf, detail: String },
    #[error(
        "kernel {path} is an ELF vmlinux without a PVH entry note (CONFIG_PVH=y is needed to boot it directly); use its bzImage or rebuild with `podvm image build-guest`"
    )]
    NoPvhNote { path: PathBuf },
    #[error(
        "initrd {path} is not a usable initramfs: {detail}; rebuild it with `podvm image build-guest`"
    )]
    BadInitrd { path: PathBuf, detail: String },
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 0x3e;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point, in a note named "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// bzImage: boot-sector signature 0xAA55 at 0x1FE, "HdrS" at 0x202 (x86 boot protocol).
const BZ_BOOT_FLAG_OFFSET: usize = 0x1fe;
const BZ_HEADER_MAGIC_OFFSET: usize = 0x202;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BootFileError> {
    let bytes = fs::read(path).map_err(|source| BootFileError::Unreadable {
        what,
        path: path.into(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(BootFileError::Empty {
            what,
            path: path.into(),
        });
    }
    Ok(bytes)
}

/// Checks that `path` is a bootable x86-64 kernel and says how it is entered.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, BootFileError> {
    let bytes = read("kernel", path)?;
    kernel_format(&bytes).map_err(|detail| match detail {
        KernelProblem::NoPvhNote => BootFileError::NoPvhNote { path: path.into() },
        KernelProblem::Other(detail) => BootFileError::NotAKernel {
            path: path.into(),
            detail,
        },
    })
}

enum KernelProblem {
    NoPvhNote,
    Other(String),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn kernel_format(bytes: &[u8]) -> Result<KernelFormat, KernelProblem> {
    if bytes.starts_with(ELF_MAGIC) {
        if bytes.get(4) != Some(&ELFCLASS64)
            || bytes.get(5) != Some(&ELFDATA2LSB)
            || u16_at(bytes, 18) != Some(EM_X86_64)
        {
            return Err(KernelProblem::Other(
                "an ELF file, but not little-endian x86-64".into(),
            ));
        }
        return if has_pvh_note(bytes)
            .ok_or_else(|| KernelProblem::Other("ELF program headers are truncated".into()))?
        {
            Ok(KernelFormat::PvhElf)
        } else {
            Err(KernelProblem::NoPvhNote)
        };
    }
    if u16_at(bytes, BZ_BOOT_FLAG_OFFSET) == Some(0xaa55)
        && bytes.get(BZ_HEADER_MAGIC_OFFSET..BZ_HEADER_MAGIC_OFFSET + 4) == Some(b"HdrS")
    {
        return Ok(KernelFormat::BzImage);
    }
    let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Err(KernelProblem::Other(format!(
        "it starts with {}",
        head.join(" ")
    )))
}

/// An ELF64 program header: type, file offset and file size of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgramHeader {
    pub kind: u32,
    pub offset: usize,
    pub size: usize,
}

/// The program headers of a little-endian ELF64 image. `None` if they are truncated.
pub(crate) fn program_headers(elf: &[u8]) -> Option<Vec<ProgramHeader>> {
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let phnum = u16_at(elf, 0x38)? as usize;
    (0..phnum)
        .map(|i| {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some(ProgramHeader {
                kind: u32_at(elf, ph)?,
                offset: u64_at(elf, ph + 0x08)? as usize,
                size: u64_at(elf, ph + 0x20)? as usize,
            })
        })
        .collect()
}

/// Whether the ELF image has a PVH entry note. `None` if the headers are truncated.
fn has_pvh_note(elf: &[u8]) -> Option<bool> {
    for ph in program_headers(elf)?
        .into_iter()
        .filter(|ph| ph.kind == PT_NOTE)
    {
        let notes = elf.get(ph.offset..ph.offset.checked_add(ph.size)?)?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = u32_at(notes, at)? as usize;
            let descsz = u32_at(notes, at + 4)? as usize;
            let kind = u32_at(notes, at + 8)?;
            let name = notes.get(at + 12..at + 12 + namesz)?;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.strip_suffix(&[0]).unwrap_or(name) == b"Xen"
            {
                return Some(true);
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Some(false)
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// What the initrd holds, as far as it can be checked without unpacking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdSummary {
    /// Entries in an uncompressed archive (`None` for a gzip archive, which is not unpacked).
    pub entries: Option<usize>,
}

/// Checks that `path` is an initramfs the guest kernel can unpack: an uncompressed newc archive
/// (read completely, and it must have `/init`) or a gzip stream.
pub fn check_initrd(path: &Path) -> Result<InitrdSummary, BootFileError> {
    let bytes = read("initrd", path)?;
    let bad = |detail: String| BootFileError::BadInitrd {
        path: path.into(),
        detail,
    };
    if bytes.starts_with(GZIP_MAGIC) {
        return Ok(InitrdSummary { entries: None });
    }
    let entries = cpio::read_archive(&bytes).map_err(|e| bad(e.to_string()))?;
    if !entries
        .iter()
        .any(|e| e.path == "init" && matches!(e.kind, cpio::EntryKind::File(_)))
    {
        return Err(bad("it has no /init".into()));
    }
    Ok(InitrdSummary {
        entries: Some(entries.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 header with one PT_NOTE segment holding `note`.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = ELFCLASS64;
        elf[5] = ELFDATA2LSB;
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(note.len().div_ceil(4) * 4, 0);
        note.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        let note_offset = elf.len() as u64;
        elf[ph + 8..ph + 16].copy_from_slice(&note_offset.to_le_bytes());
        elf[ph + 0x20..ph + 0x28].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&note);
        elf
    }

    #[test]
    fn pvh_elf_is_recognised() {
        assert!(matches!(
            kernel_format(&elf_with_note(b"Xen\0", 18)),
            Ok(KernelFormat::PvhElf)
        ));
        assert!(matches!(
            kernel_format(&elf_with_note(b"Xen\0", 17)),
            Err(KernelProblem::NoPvhNote)
        ));
        assert!(matches!(
            kernel_format(&elf_with_note(b"GNU\0", 18)),
            Err(KernelProblem::NoPvhNote)
        ));
    }

    #[test]
    fn bzimage_is_recognised_and_junk_is_not() {
        let mut bz = vec![0u8; 0x300];
        bz[BZ_BOOT_FLAG_OFFSET..BZ_BOOT_FLAG_OFFSET + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        bz[BZ_HEADER_MAGIC_OFFSET..BZ_HEADER_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        assert!(matches!(kernel_format(&bz), Ok(KernelFormat::BzImage)));
        assert!(
            matches!(kernel_format(&[0xde, 0xad, 0xbe, 0xef]), Err(KernelProblem::Other(d)) if d.contains("de ad be ef"))
        );
        let mut truncated = elf_with_note(b"Xen\0", 18);
        truncated.truncate(0x50);
        assert!(matches!(
            kernel_format(&truncated),
            Err(KernelProblem::Other(_))
        ));
    }

    #[test]
    fn initrd_checks() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.cpio");
        let mut bytes = Vec::new();
        cpio::write_archive(
            &[cpio::Entry::file("init", 0o755, b"x".to_vec())],
            &mut bytes,
        )
        .unwrap();
        fs::write(&good, &bytes).unwrap();
        assert_eq!(check_initrd(&good).unwrap().entries, Some(1));

        let no_init = dir.path().join("noinit.cpio");
        let mut bytes = Vec::new();
        cpio::write_archive(&[cpio::Entry::dir("dev", 0o755)], &mut bytes).unwrap();
        fs::write(&no_init, &bytes).unwrap();
        assert!(
            check_initrd(&no_init)
                .unwrap_err()
                .to_string()
                .contains("no /init")
        );

        let junk = dir.path().join("junk");
        fs::write(&junk, b"hello world, not an archive").unwrap();
        let err = check_initrd(&junk).unwrap_err().to_string();
        assert!(err.contains("bad magic") && err.contains("junk"), "{err}");

        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert!(matches!(
            check_initrd(&empty),
            Err(BootFileError::Empty { .. })
        ));
        assert!(matches!(
            check_initrd(&dir.path().join("absent")),
            Err(BootFileError::Unreadable { .. })
        ));
    }
}
