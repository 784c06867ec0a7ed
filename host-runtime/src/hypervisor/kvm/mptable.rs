//! The Intel MultiProcessor Specification 1.4 tables that tell a kernel without ACPI about the
//! vCPUs, the ISA bus, the IOAPIC and how IRQs are wired (`CONFIG_X86_MPPARSE`).
//!
//! Written at [`MPTABLE_START`] = `0x9fc00`: the last KiB of base memory, one of the places
//! Linux scans for the floating pointer (`smp_scan_config(639 * 0x400, 0x400)`), and inside the
//! e820 range reserved for the EBDA ([`super::e820`]), so the kernel never reuses it as RAM.
//!
//! | offset from `0x9fc00` | what | size |
//! |---|---|---|
//! | 0 | MP floating pointer (`_MP_`) → configuration table | 16 |
//! | 16 | configuration table header (`PCMP`) | 44 |
//! | 60 | one processor entry per vCPU (APIC id = vCPU index; vCPU 0 is the BSP) | 20 each |
//! | | bus entry: bus 0 = ISA | 8 |
//! | | IOAPIC entry: id = vCPU count, version 0x11, at [`IOAPIC_ADDR`] | 8 |
//! | | I/O interrupt entries: ISA IRQ `n` → IOAPIC pin `n`, `n` in 0..24 (legacy 0–15 and the virtio-mmio IRQs 5–23 of [`super::platform`]) | 8 each |
//! | | local interrupt entries: ExtINT → LINT0 of APIC 0, NMI → LINT1 of all APICs | 8 each |
//!
//! Every entry is a typed struct with its byte layout spelled out in `to_bytes` / `parse`, and
//! both checksums (floating pointer, base table) make their bytes sum to 0 mod 256.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::HIGH_MEMORY_START;
use super::error::{KvmVmError, Result};
use super::platform::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

/// Where the MP floating pointer (and right after it, the configuration table) is written.
pub const MPTABLE_START: GuestAddress = GuestAddress(0x9_fc00);
/// The most vCPUs the table describes: APIC ids are bytes, and the IOAPIC takes the id after the
/// last vCPU's (0xff means "all" in local interrupt entries).
pub const MAX_VCPUS: u8 = 254;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SHORT_ENTRY_LEN: usize = 8;
/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Local APIC version of an integrated APIC (as KVM's).
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version of the 82093AA (as KVM's).
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature in processor entries: family 6 (only informative to the kernel).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX features in processor entries: FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const OEM_ID: [u8; 8] = *b"PODVM   ";
const PRODUCT_ID: [u8; 12] = *b"KVM MICROVM ";
const ISA_BUS_ID: u8 = 0;

/// The floating pointer: signature, where the configuration table is, and a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatingPointer {
    /// The configuration table's physical address.
    pub config_table: u32,
}

impl FloatingPointer {
    /// The 16 bytes: `_MP_`, table address, length 1 (× 16 bytes), revision, checksum,
    /// feature bytes 0 (a configuration table is present; no IMCR).
    pub fn to_bytes(&self) -> [u8; FLOATING_POINTER_LEN] {
        let mut b = [0u8; FLOATING_POINTER_LEN];
        b[0..4].copy_from_slice(b"_MP_");
        b[4..8].copy_from_slice(&self.config_table.to_le_bytes());
        b[8] = 1;
        b[9] = SPEC_REV;
        b[10] = checksum(&b);
        b
    }

    /// Parses and verifies (signature, length, checksum) a floating pointer.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let b = b
            .get(..FLOATING_POINTER_LEN)
            .ok_or_else(|| malformed("floating pointer is shorter than 16 bytes"))?;
        if &b[0..4] != b"_MP_" || b[8] != 1 || sum(b) != 0 {
            return Err(malformed(
                "bad floating pointer signature, length or checksum",
            ));
        }
        Ok(FloatingPointer {
            config_table: u32_at(b, 4),
        })
    }
}

/// One entry of the configuration table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpEntry {
    /// Type 0: a processor (20 bytes).
    Processor { apic_id: u8, bsp: bool },
    /// Type 1: a bus (8 bytes); `name` is the 6-byte, space-padded bus type.
    Bus { id: u8, name: [u8; 6] },
    /// Type 2: an IOAPIC (8 bytes).
    IoApic { id: u8, addr: u32 },
    /// Type 3: I/O interrupt assignment (8 bytes), ISA IRQ `source_irq` → IOAPIC pin `pin`.
    IoInterrupt {
        kind: InterruptKind,
        source_bus: u8,
        source_irq: u8,
        ioapic: u8,
        pin: u8,
    },
    /// Type 4: local interrupt assignment (8 bytes), to LINT`lint` of APIC `apic` (0xff = all).
    LocalInterrupt {
        kind: InterruptKind,
        source_bus: u8,
        source_irq: u8,
        apic: u8,
        lint: u8,
    },
}

/// The interrupt type of I/O and local interrupt entries. Polarity and trigger are always
/// "conforms to the bus" (flags 0): edge-triggered, active high on ISA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptKind {
    /// A vectored interrupt (the vector comes from the APIC).
    Int = 0,
    /// A non-maskable interrupt.
    Nmi = 1,
    /// A system-management interrupt.
    Smi = 2,
    /// An 8259-compatible external interrupt.
    ExtInt = 3,
}

impl InterruptKind {
    fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => InterruptKind::Int,
            1 => InterruptKind::Nmi,
            2 => InterruptKind::Smi,
            3 => InterruptKind::ExtInt,
            _ => return Err(malformed("unknown interrupt type")),
        })
    }
}

impl MpEntry {
    /// The entry's bytes (20 for a processor, 8 otherwise).
    pub fn to_bytes(&self) -> Vec<u8> {
        match *self {
            MpEntry::Processor { apic_id, bsp } => {
                let mut b = vec![0u8; PROCESSOR_LEN];
                b[0] = 0;
                b[1] = apic_id;
                b[2] = LAPIC_VERSION;
                b[3] = 1 | if bsp { 2 } else { 0 }; // EN, BP
                b[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
                b[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
                b
            }
            MpEntry::Bus { id, name } => {
                let mut b = vec![1, id];
                b.extend_from_slice(&name);
                b
            }
            MpEntry::IoApic { id, addr } => {
                let mut b = vec![2, id, IOAPIC_VERSION, 1]; // flags: EN
                b.extend_from_slice(&addr.to_le_bytes());
                b
            }
            MpEntry::IoInterrupt {
                kind,
                source_bus,
                source_irq,
                ioapic,
                pin,
            } => vec![3, kind as u8, 0, 0, source_bus, source_irq, ioapic, pin],
            MpEntry::LocalInterrupt {
                kind,
                source_bus,
                source_irq,
                apic,
                lint,
            } => vec![4, kind as u8, 0, 0, source_bus, source_irq, apic, lint],
        }
    }

    /// Parses the entry at the start of `b`; returns it and its length.
    pub fn parse(b: &[u8]) -> Result<(Self, usize)> {
        let kind = *b.first().ok_or_else(|| malformed("empty entry"))?;
        let len = if kind == 0 {
            PROCESSOR_LEN
        } else {
            SHORT_ENTRY_LEN
        };
        let b = b
            .get(..len)
            .ok_or_else(|| malformed("entry runs past the table"))?;
        let entry = match kind {
            0 => MpEntry::Processor {
                apic_id: b[1],
                bsp: b[3] & 2 != 0,
            },
            1 => MpEntry::Bus {
                id: b[1],
                name: [b[2], b[3], b[4], b[5], b[6], b[7]],
            },
            2 => MpEntry::IoApic {
                id: b[1],
                addr: u32_at(b, 4),
            },
            3 => MpEntry::IoInterrupt {
                kind: InterruptKind::from_u8(b[1])?,
                source_bus: b[4],
                source_irq: b[5],
                ioapic: b[6],
                pin: b[7],
            },
            4 => MpEntry::LocalInterrupt {
                kind: InterruptKind::from_u8(b[1])?,
                source_bus: b[4],
                source_irq: b[5],
                apic: b[6],
                lint: b[7],
            },
            _ => return Err(malformed("unknown entry type")),
        };
        Ok((entry, len))
    }
}

/// The configuration table: the header's variable fields and the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTable {
    /// The local APICs' address.
    pub lapic_addr: u32,
    /// The entries, in table order.
    pub entries: Vec<MpEntry>,
}

impl ConfigTable {
    /// The table for `vcpus` vCPUs, as described in the module documentation.
    pub fn for_vcpus(vcpus: u8) -> Result<Self> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(KvmVmError::Config(format!(
                "the MP table describes 1..={MAX_VCPUS} vCPUs, not {vcpus}"
            )));
        }
        let ioapic = vcpus;
        let mut entries: Vec<MpEntry> = (0..vcpus)
            .map(|apic_id| MpEntry::Processor {
                apic_id,
                bsp: apic_id == 0,
            })
            .collect();
        entries.push(MpEntry::Bus {
            id: ISA_BUS_ID,
            name: *b"ISA   ",
        });
        entries.push(MpEntry::IoApic {
            id: ioapic,
            addr: IOAPIC_ADDR.0 as u32,
        });
        entries.extend((0..IOAPIC_PINS).map(|irq| MpEntry::IoInterrupt {
            kind: InterruptKind::Int,
            source_bus: ISA_BUS_ID,
            source_irq: irq,
            ioapic,
            pin: irq,
        }));
        entries.push(MpEntry::LocalInterrupt {
            kind: InterruptKind::ExtInt,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            apic: 0,
            lint: 0,
        });
        entries.push(MpEntry::LocalInterrupt {
            kind: InterruptKind::Nmi,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            apic: 0xff,
            lint: 1,
        });
        Ok(ConfigTable {
            lapic_addr: LAPIC_ADDR.0 as u32,
            entries,
        })
    }

    /// The header (`PCMP`, base table length, revision, checksum, OEM and product ids, entry
    /// count, local APIC address; no OEM or extended table) followed by the entries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body: Vec<u8> = self.entries.iter().flat_map(MpEntry::to_bytes).collect();
        let mut b = vec![0u8; HEADER_LEN];
        b[0..4].copy_from_slice(b"PCMP");
        b[4..6].copy_from_slice(&((HEADER_LEN + body.len()) as u16).to_le_bytes());
        b[6] = SPEC_REV;
        b[8..16].copy_from_slice(&OEM_ID);
        b[16..28].copy_from_slice(&PRODUCT_ID);
        b[34..36].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        b[36..40].copy_from_slice(&self.lapic_addr.to_le_bytes());
        b.extend_from_slice(&body);
        b[7] = checksum(&b);
        b
    }

    /// Parses and verifies (signature, length, checksum, entry count) a configuration table.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let header = b
            .get(..HEADER_LEN)
            .ok_or_else(|| malformed("configuration table is shorter than its header"))?;
        if &header[0..4] != b"PCMP" {
            return Err(malformed("no PCMP signature"));
        }
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let table = b
            .get(..len)
            .ok_or_else(|| malformed("base table length runs past the bytes"))?;
        if sum(table) != 0 {
            return Err(malformed("bad configuration table checksum"));
        }
        let count = u16::from_le_bytes([header[34], header[35]]) as usize;
        let mut entries = Vec::with_capacity(count);
        let mut at = HEADER_LEN;
        while at < len {
            let (entry, n) = MpEntry::parse(&table[at..])?;
            entries.push(entry);
            at += n;
        }
        if entries.len() != count {
            return Err(malformed("entry count does not match the entries"));
        }
        Ok(ConfigTable {
            lapic_addr: u32_at(header, 36),
            entries,
        })
    }
}

/// The floating pointer and configuration table for `vcpus` vCPUs as written at
/// [`MPTABLE_START`].
pub fn mptable_bytes(vcpus: u8) -> Result<Vec<u8>> {
    let table = ConfigTable::for_vcpus(vcpus)?.to_bytes();
    let pointer = FloatingPointer {
        config_table: (MPTABLE_START.0 as usize + FLOATING_POINTER_LEN) as u32,
    };
    let mut bytes = pointer.to_bytes().to_vec();
    bytes.extend_from_slice(&table);
    if MPTABLE_START.0 + bytes.len() as u64 > HIGH_MEMORY_START.0 {
        return Err(KvmVmError::Config(format!(
            "the MP table for {vcpus} vCPUs does not fit below 1 MiB"
        )));
    }
    Ok(bytes)
}

/// Writes the MP table for `vcpus` vCPUs at [`MPTABLE_START`].
pub fn write(memory: &GuestMemoryMmap, vcpus: u8) -> Result<()> {
    let bytes = mptable_bytes(vcpus)?;
    memory
        .write_slice(&bytes, MPTABLE_START)
        .map_err(|e| KvmVmError::GuestMemoryWrite {
            what: "MP table",
            addr: MPTABLE_START.0,
            reason: e.to_string(),
        })
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// The byte that makes `b` (whose checksum byte is still 0) sum to 0.
fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(sum(b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn malformed(what: &str) -> KvmVmError {
    KvmVmError::Config(format!("malformed MP table: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_pointer_bytes_and_checksum() {
        let fp = FloatingPointer {
            config_table: 0x9fc10,
        };
        let b = fp.to_bytes();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(&b[4..8], &[0x10, 0xfc, 0x09, 0x00]);
        assert_eq!((b[8], b[9]), (1, 4));
        assert_eq!(&b[11..], &[0, 0, 0, 0, 0]);
        assert_eq!(sum(&b), 0);
        assert_eq!(FloatingPointer::parse(&b).unwrap(), fp);
        let mut bad = b;
        bad[4] ^= 1;
        assert!(FloatingPointer::parse(&bad).is_err());
    }

    #[test]
    fn entry_layouts() {
        let p = MpEntry::Processor {
            apic_id: 3,
            bsp: false,
        };
        assert_eq!(
            p.to_bytes(),
            [
                0, 3, 0x14, 1, 0, 6, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let io = MpEntry::IoApic {
            id: 1,
            addr: 0xfec0_0000,
        };
        assert_eq!(io.to_bytes(), [2, 1, 0x11, 1, 0, 0, 0xc0, 0xfe]);
        let irq = MpEntry::IoInterrupt {
            kind: InterruptKind::Int,
            source_bus: 0,
            source_irq: 5,
            ioapic: 1,
            pin: 5,
        };
        assert_eq!(irq.to_bytes(), [3, 0, 0, 0, 0, 5, 1, 5]);
        let nmi = MpEntry::LocalInterrupt {
            kind: InterruptKind::Nmi,
            source_bus: 0,
            source_irq: 0,
            apic: 0xff,
            lint: 1,
        };
        assert_eq!(nmi.to_bytes(), [4, 1, 0, 0, 0, 0, 0xff, 1]);
        for e in [p, io, irq, nmi] {
            let bytes = e.to_bytes();
            assert_eq!(MpEntry::parse(&bytes).unwrap(), (e, bytes.len()));
        }
    }

    #[test]
    fn table_for_two_vcpus_round_trips_with_valid_checksums() {
        let bytes = mptable_bytes(2).unwrap();
        let fp = FloatingPointer::parse(&bytes).unwrap();
        assert_eq!(fp.config_table, 0x9fc10);
        let table_bytes = &bytes[16..];
        // Header: PCMP, length, revision 4, OEM/product, count, LAPIC address.
        assert_eq!(&table_bytes[0..4], b"PCMP");
        let len = u16::from_le_bytes([table_bytes[4], table_bytes[5]]) as usize;
        assert_eq!(len, 44 + 2 * 20 + 8 + 8 + 24 * 8 + 2 * 8);
        assert_eq!(table_bytes.len(), len);
        assert_eq!(table_bytes[6], 4);
        assert_eq!(sum(table_bytes), 0);
        assert_eq!(&table_bytes[8..16], b"PODVM   ");
        let table = ConfigTable::parse(table_bytes).unwrap();
        assert_eq!(table, ConfigTable::for_vcpus(2).unwrap());
        assert_eq!(table.lapic_addr, 0xfee0_0000);

        let e = &table.entries;
        assert_eq!(
            e[..2],
            [
                MpEntry::Processor {
                    apic_id: 0,
                    bsp: true
                },
                MpEntry::Processor {
                    apic_id: 1,
                    bsp: false
                }
            ]
        );
        assert_eq!(
            e[2],
            MpEntry::Bus {
                id: 0,
                name: *b"ISA   "
            }
        );
        assert_eq!(
            e[3],
            MpEntry::IoApic {
                id: 2,
                addr: 0xfec0_0000
            }
        );
        // ISA IRQ n → IOAPIC 2 pin n for every legacy IRQ and every virtio-mmio IRQ.
        let routed: Vec<(u8, u8)> = e
            .iter()
            .filter_map(|x| match *x {
                MpEntry::IoInterrupt {
                    kind: InterruptKind::Int,
                    source_bus: 0,
                    source_irq,
                    ioapic: 2,
                    pin,
                } => Some((source_irq, pin)),
                _ => None,
            })
            .collect();
        assert_eq!(routed, (0..24).map(|i| (i, i)).collect::<Vec<_>>());
        for i in 0..crate::hypervisor::kvm::platform::VIRTIO_MMIO_MAX_DEVICES {
            let irq = crate::hypervisor::kvm::platform::VirtioMmioSlot::new(i)
                .unwrap()
                .irq;
            assert!(routed.contains(&(irq, irq)), "virtio-mmio IRQ {irq}");
        }
        assert_eq!(
            e[e.len() - 2..],
            [
                MpEntry::LocalInterrupt {
                    kind: InterruptKind::ExtInt,
                    source_bus: 0,
                    source_irq: 0,
                    apic: 0,
                    lint: 0
                },
                MpEntry::LocalInterrupt {
                    kind: InterruptKind::Nmi,
                    source_bus: 0,
                    source_irq: 0,
                    apic: 0xff,
                    lint: 1
                }
            ]
        );
    }

    #[test]
    fn corrupted_table_is_rejected() {
        let bytes = mptable_bytes(1).unwrap();
        let mut table = bytes[16..].to_vec();
        table[60] ^= 0x40;
        assert_eq!(
            ConfigTable::parse(&table).unwrap_err().to_string(),
            "invalid VM configuration: malformed MP table: bad configuration table checksum"
        );
    }

    #[test]
    fn vcpu_count_limits() {
        assert!(ConfigTable::for_vcpus(0).is_err());
        assert!(mptable_bytes(MAX_VCPUS).is_ok());
        assert!(ConfigTable::for_vcpus(255).is_err());
    }

    #[test]
    fn written_into_guest_memory_at_9fc00() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem, 1).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(0x9fc00)).unwrap();
        assert_eq!(FloatingPointer::parse(&fp).unwrap().config_table, 0x9fc10);
    }
}
