//! The synthetic firmware image of podvm's emulated SEV-SNP launches.
//!
//! # What it is
//!
//! An emulated-SNP pod VM boots its kernel directly (QEMU `microvm`, PVH `vmlinux` + initramfs +
//! command line, no OVMF), yet the emulated PSP must sign reports whose MEASUREMENT is a real SNP
//! launch digest over exactly those inputs, computed by the same [`crate::LaunchPlanBuilder`] that
//! measures real launches. A real SNP digest needs an OVMF image that announces the
//! `SNP_KERNEL_HASHES` page (only the AmdSev OVMF build does; Debian's OVMF does not, and none is
//! available offline). [`emulated_firmware`] is a small, deterministic stand-in with the structure
//! the measurement reads, so that the digest covers the kernel, the initrd and every byte of the
//! command line (through the SEV hash table, as with AmdSev OVMF and `kernel-hashes=on`):
//!
//! * a 64 KiB image mapped to end at 4 GiB (GPA `0xffff_0000`), measured page by page like OVMF;
//! * the body filled with [`BODY_PATTERN`] repeated, so the file is recognisable in a hex dump;
//! * at the end, the OVMF footer GUID table ([`crate::ovmf::encode_footer_table`]) with the SEV-ES
//!   reset block (AP reset EIP), the SEV hash table location and the offset of the SEV metadata;
//! * the SEV metadata ("ASEV") block listing the pages the launch adds after the firmware:
//!   pre-validated SEC memory, the secrets page, the CPUID page and the kernel-hashes page.
//!
//! The section layout mirrors the AmdSev OVMF build (`ovmf_AmdSev_suffix.bin` in the shared test
//! vectors: sections from `0x80_0000` to `0x82_0000`, hash table at `0x81_0c00`, AP reset EIP
//! `0x80_b004`) moved down by `0x78_0000` so that everything lies in conventional memory below
//! 640 KiB, with one difference: AmdSev's SVSM calling-area page (`0x80_f000`) is left out, as
//! podvm runs no SVSM. See [`SECTIONS`].
//!
//! # What it is not
//!
//! It is never executed and is not firmware: it contains no code except a `hlt` loop at the reset
//! vector, and QEMU is never given it. It only gives the emulated launch a real SNP measurement
//! structure. A report signed over it proves nothing beyond what the emulated TEE proves (the
//! emulated PSP's key is on the host); it does let reference values, `podvm measure`,
//! `sev-snp-measure` and the emulated reports agree byte for byte.
//!
//! `podvm image build-guest` writes it next to `vmlinux` as [`FILE_NAME`], so that
//! `podvm measure --mode snp --ovmf <guest>/firmware-snp-emulated.fd --kernel <guest>/vmlinux ...`
//! reproduces the emulated measurement.

use crate::ovmf::{
    FOOTER_OFFSET_FROM_END, FooterEntry, OVMF_SEV_METADATA_GUID, PAGE_SIZE,
    SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_HEADER_SIZE,
    SEV_METADATA_SECTION_SIZE, SEV_METADATA_SIGNATURE, SEV_METADATA_VERSION, SevMetadataSection,
    SevSectionType, encode_footer_table,
};
use crate::{Firmware, sev_hashes};

/// File name of the image inside a guest image directory.
pub const FILE_NAME: &str = "firmware-snp-emulated.fd";

/// Size of the image: 16 pages, mapped at `0xffff_0000..0x1_0000_0000`.
pub const IMAGE_SIZE: usize = 64 * 1024;

/// The text repeated through the image body.
pub const BODY_PATTERN: &[u8] = "podvm emulated SNP firmware — not bootable\n".as_bytes();

/// AP reset EIP announced by the SEV-ES reset block (AmdSev: `0x80_b004`).
pub const AP_RESET_EIP: u32 = 0x0008_b004;

/// GPA of the SEV hash table inside the kernel-hashes page (AmdSev: `0x81_0c00`).
pub const HASH_TABLE_GPA: u32 = 0x0009_0c00;
/// Size of the area reserved for the SEV hash table (AmdSev: `0x400`).
pub const HASH_TABLE_AREA_SIZE: u32 = 0x400;

/// Distance of the SEV metadata block from the end of the image (inside the last page).
pub const METADATA_OFFSET_FROM_END: usize = 0x400;

/// Offset of the 16-byte reset vector (GPA `0xffff_fff0`) from the end of the image.
const RESET_VECTOR_FROM_END: usize = 16;
/// `hlt; jmp $-1`: should anything ever execute the image, the vCPU halts.
const RESET_VECTOR_CODE: [u8; 3] = [0xf4, 0xeb, 0xfd];

/// The SEV metadata sections, in measurement order.
pub const SECTIONS: [SevMetadataSection; 6] = [
    // Pre-validated SEC memory (AmdSev: page tables and GHCB at 0x80_0000, 9 pages).
    section(0x0008_0000, 0x9000, SevSectionType::SnpSecMem),
    // Pre-validated SEC memory (AmdSev: 0x80_a000, 3 pages; holds the AP reset EIP).
    section(0x0008_a000, 0x3000, SevSectionType::SnpSecMem),
    section(0x0008_d000, 0x1000, SevSectionType::SnpSecrets),
    section(0x0008_e000, 0x1000, SevSectionType::Cpuid),
    // 0x8_f000 would be AmdSev's SVSM calling area: no SVSM, no page.
    section(0x0009_0000, 0x1000, SevSectionType::SnpKernelHashes),
    // Pre-validated SEC memory up to the end of conventional memory (AmdSev: 0x81_1000, 15 pages).
    section(0x0009_1000, 0xf000, SevSectionType::SnpSecMem),
];

const fn section(gpa: u32, size: u32, section_type: SevSectionType) -> SevMetadataSection {
    SevMetadataSection {
        gpa,
        size,
        section_type,
    }
}

/// The image bytes. Deterministic: the same on every call and in every build.
pub fn emulated_firmware_bytes() -> Vec<u8> {
    let mut image: Vec<u8> = BODY_PATTERN
        .iter()
        .copied()
        .cycle()
        .take(IMAGE_SIZE)
        .collect();

    // SEV metadata block.
    let metadata_size = SEV_METADATA_HEADER_SIZE + SECTIONS.len() * SEV_METADATA_SECTION_SIZE;
    let mut metadata = Vec::with_capacity(metadata_size);
    metadata.extend_from_slice(SEV_METADATA_SIGNATURE);
    metadata.extend_from_slice(&(metadata_size as u32).to_le_bytes());
    metadata.extend_from_slice(&SEV_METADATA_VERSION.to_le_bytes());
    metadata.extend_from_slice(&(SECTIONS.len() as u32).to_le_bytes());
    for s in &SECTIONS {
        metadata.extend_from_slice(&s.to_bytes());
    }
    let at = IMAGE_SIZE - METADATA_OFFSET_FROM_END;
    image[at..at + metadata.len()].copy_from_slice(&metadata);

    // Footer table, ending FOOTER_OFFSET_FROM_END bytes before the end (entries last-first).
    let le32 = |v: u32| v.to_le_bytes().to_vec();
    let mut hash_table = le32(HASH_TABLE_GPA);
    hash_table.extend_from_slice(&HASH_TABLE_AREA_SIZE.to_le_bytes());
    let footer = encode_footer_table(&[
        FooterEntry {
            guid: SEV_ES_RESET_BLOCK_GUID,
            data: le32(AP_RESET_EIP),
        },
        FooterEntry {
            guid: SEV_HASH_TABLE_RV_GUID,
            data: hash_table,
        },
        FooterEntry {
            guid: OVMF_SEV_METADATA_GUID,
            data: le32(METADATA_OFFSET_FROM_END as u32),
        },
    ]);
    let end = IMAGE_SIZE - FOOTER_OFFSET_FROM_END;
    image[end - footer.len()..end].copy_from_slice(&footer);
    debug_assert!(end - footer.len() >= at + metadata.len());

    // Reset-vector area: zeros and a halt loop at 0xffff_fff0.
    image[end..].fill(0);
    let rv = IMAGE_SIZE - RESET_VECTOR_FROM_END;
    image[rv..rv + RESET_VECTOR_CODE.len()].copy_from_slice(&RESET_VECTOR_CODE);
    image
}

/// The image, parsed (named [`FILE_NAME`] in messages).
pub fn emulated_firmware() -> Firmware {
    Firmware::from_bytes(FILE_NAME, emulated_firmware_bytes())
        .expect("the emulated firmware image is well formed (tested)")
}

// The hash table must fit in its area, inside the kernel-hashes page.
const _: () = assert!(sev_hashes::PADDED_TABLE_SIZE <= HASH_TABLE_AREA_SIZE as usize);
const _: () =
    assert!((HASH_TABLE_GPA as usize % PAGE_SIZE) + HASH_TABLE_AREA_SIZE as usize <= PAGE_SIZE);
const _: () = assert!(IMAGE_SIZE.is_multiple_of(PAGE_SIZE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_deterministic_and_parses() {
        let a = emulated_firmware_bytes();
        assert_eq!(a, emulated_firmware_bytes());
        assert_eq!(a.len(), IMAGE_SIZE);
        let fw = emulated_firmware();
        assert_eq!(fw.gpa(), 0xffff_0000);
        assert_eq!(fw.sev_sections(), &SECTIONS[..]);
        assert_eq!(fw.sev_es_reset_eip().unwrap(), AP_RESET_EIP);
        assert_eq!(fw.sev_hashes_table_gpa(), Some(HASH_TABLE_GPA));
    }

    #[test]
    fn image_digest_is_pinned() {
        // Every emulated-SNP measurement depends on these bytes: a change here invalidates the
        // reference values of every emulated guest. Change the image only on purpose.
        use sha2::Digest as _;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(emulated_firmware_bytes())),
            "b07632dbe5aed13275b70ae8cb359c37d334c87bcc593a802688c1dfcd1fb83a"
        );
    }

    #[test]
    fn footer_round_trips_and_body_carries_the_pattern() {
        let bytes = emulated_firmware_bytes();
        let fw = emulated_firmware();
        let encoded = encode_footer_table(fw.footer_entries().unwrap());
        let end = bytes.len() - FOOTER_OFFSET_FROM_END;
        assert_eq!(&bytes[end - encoded.len()..end], encoded.as_slice());
        assert!(bytes.starts_with(BODY_PATTERN));
        assert_eq!(
            &bytes[bytes.len() - 16..bytes.len() - 13],
            &RESET_VECTOR_CODE
        );
    }

    #[test]
    fn sections_lie_below_640k_and_do_not_overlap() {
        let mut sorted = SECTIONS.to_vec();
        sorted.sort_by_key(|s| s.gpa);
        for w in sorted.windows(2) {
            assert!(w[0].gpa + w[0].size <= w[1].gpa, "{w:?}");
        }
        for s in &SECTIONS {
            assert_eq!(s.gpa as usize % PAGE_SIZE, 0);
            assert_eq!(s.size as usize % PAGE_SIZE, 0);
            assert!(s.gpa + s.size <= 0xa_0000, "{s:?}");
        }
        let hashes = SECTIONS
            .iter()
            .find(|s| s.section_type == SevSectionType::SnpKernelHashes)
            .unwrap();
        assert_eq!(HASH_TABLE_GPA & !0xfff, hashes.gpa);
        // As in AmdSev OVMF, APs start in pre-validated SEC memory.
        assert!(
            SECTIONS
                .iter()
                .any(|s| s.section_type == SevSectionType::SnpSecMem
                    && (s.gpa..s.gpa + s.size).contains(&AP_RESET_EIP))
        );
    }
}
