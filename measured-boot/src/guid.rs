//! EFI GUIDs in their on-disk (mixed-endian, "bytes_le") byte order.

use std::fmt;

/// Size of a GUID on disk.
pub const GUID_SIZE: usize = 16;

/// An EFI GUID stored as the 16 bytes that appear in firmware images and tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid([u8; GUID_SIZE]);

impl Guid {
    /// Builds a GUID from its textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The GUID whose on-disk bytes are `bytes`.
    pub const fn from_bytes(bytes: [u8; GUID_SIZE]) -> Self {
        Guid(bytes)
    }

    /// The on-disk bytes.
    pub const fn as_bytes(&self) -> &[u8; GUID_SIZE] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let d2 = u16::from_le_bytes([b[4], b[5]]);
        let d3 = u16::from_le_bytes([b[6], b[7]]);
        write!(
            f,
            "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{}",
            b[8],
            b[9],
            hex::encode(&b[10..16])
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_the_textual_form() {
        let g = Guid::from_fields(
            0x96b582de,
            0x1fb2,
            0x45f7,
            [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
        );
        assert_eq!(g.to_string(), "96b582de-1fb2-45f7-baea-a366c55a082d");
        // bytes_le: first three fields little-endian
        assert_eq!(&g.as_bytes()[..4], &[0xde, 0x82, 0xb5, 0x96]);
        assert_eq!(Guid::from_bytes(*g.as_bytes()), g);
    }
}
