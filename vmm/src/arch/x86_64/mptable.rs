//! Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI, Linux discovers the vCPUs, the IOAPIC and the ISA interrupt
//! routing from an MP table. The floating pointer structure is written at
//! `EBDA_START` (0x9fc00, the "last KiB of base memory" Linux scans) and the
//! configuration table follows it directly. The table grows by 20 bytes per
//! vCPU: up to 37 vCPUs it stays inside the 1 KiB EBDA window, for more it
//! runs past `EBDA_END` into the legacy hole. That is fine: the hole is
//! backed RAM in a moat VM and the whole `[EBDA_START, HIMEM_START)` range is
//! reserved in the guest memory map, so the table only has to end below
//! [`MPTABLE_LIMIT`].

use std::mem::size_of;

use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_PINS, IOAPIC_START, MAX_VCPUS};

/// The MP table must end at or below this address.
pub const MPTABLE_LIMIT: u64 = HIMEM_START;

const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
const MPC_OEM: [u8; 8] = *b"MOAT    ";
const MPC_PRODUCT_ID: [u8; 12] = *b"MICROVM     ";
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";
const MP_SPEC_REV: u8 = 4;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Integrated xAPIC version, as KVM's LAPIC reports.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_APIC_USABLE: u8 = 1;

const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_NMI: u8 = 1;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the bus" (ISA: edge, active high).
const MP_IRQFLAG_DEFAULT: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors writing the MP table.
#[derive(Debug, Error)]
pub enum MptableError {
    /// More vCPUs than the table (and moat) supports.
    #[error("{0} vCPUs requested, the MP table supports 1..={MAX_VCPUS}")]
    TooManyCpus(u8),
    /// Zero vCPUs requested.
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    /// The table would not end below [`MPTABLE_LIMIT`].
    #[error("MP table of {0} bytes does not fit between EBDA_START and HIMEM_START")]
    TooLarge(usize),
    /// Guest memory does not cover the table's range.
    #[error("guest memory does not cover the MP table at {EBDA_START:#x} (+{0} bytes)")]
    NotEnoughMemory(usize),
    /// Writing the table to guest memory failed.
    #[error("failed to write the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// MP floating pointer structure (16 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: [u8; 3],
}

/// MP configuration table header (44 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (20 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// Bus entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// I/O APIC entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// I/O interrupt assignment entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

/// Local interrupt assignment entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcLintsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbusid: u8,
    srcbusirq: u8,
    destapic: u8,
    destapiclint: u8,
}

// SAFETY: all of these are `repr(C, packed)` structs made only of integers
// and integer arrays: no padding, no pointers, and every bit pattern is a
// valid value, which is what `ByteValued` requires.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: see above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: see above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: see above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: see above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: see above.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: see above.
unsafe impl ByteValued for MpcLintsrc {}

const _: () = assert!(size_of::<MpfIntel>() == 16);
const _: () = assert!(size_of::<MpcTable>() == 44);
const _: () = assert!(size_of::<MpcCpu>() == 20);
const _: () = assert!(size_of::<MpcBus>() == 8);
const _: () = assert!(size_of::<MpcIoapic>() == 8);
const _: () = assert!(size_of::<MpcIntsrc>() == 8);
const _: () = assert!(size_of::<MpcLintsrc>() == 8);

/// Number of configuration table entries for `num_cpus` vCPUs.
fn entry_count(num_cpus: u8) -> usize {
    // CPUs, one bus, one IOAPIC, one INT per IOAPIC pin, ExtINT + NMI.
    usize::from(num_cpus) + 2 + usize::from(IOAPIC_PINS) + 2
}

/// Total size in bytes (floating pointer + configuration table) for
/// `num_cpus` vCPUs.
pub fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + usize::from(num_cpus) * size_of::<MpcCpu>()
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + usize::from(IOAPIC_PINS) * size_of::<MpcIntsrc>()
        + 2 * size_of::<MpcLintsrc>()
}

/// Value that makes the byte sum of `bytes` plus itself zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the whole table (floating pointer first) as it must appear at
/// `base`. `num_cpus` must already be validated.
fn build_mptable(base: u64, num_cpus: u8) -> Vec<u8> {
    let mut out = floating_pointer(base).as_slice().to_vec();
    out.extend_from_slice(&config_table(num_cpus));
    out
}

/// The MP floating pointer at `base`, pointing at the configuration table right after it.
fn floating_pointer(base: u64) -> MpfIntel {
    let mut mpf = MpfIntel {
        signature: MPF_SIGNATURE,
        physptr: (base + size_of::<MpfIntel>() as u64) as u32,
        length: 1, // in 16-byte paragraphs
        specification: MP_SPEC_REV,
        checksum: 0,
        feature1: 0, // a configuration table is present
        feature2: 0,
        feature3: [0; 3],
    };
    mpf.checksum = checksum(mpf.as_slice());
    mpf
}

/// The configuration table: its header (with the checksum over the whole table) and
/// entries.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let hdr_len = size_of::<MpcTable>();
    let entries = table_entries(num_cpus);
    // Sizes are bounded by MAX_VCPUS (checked by the caller): they fit u16.
    let mut hdr = MpcTable {
        signature: MPC_SIGNATURE,
        length: (hdr_len + entries.len()) as u16,
        spec: MP_SPEC_REV,
        checksum: 0,
        oem: MPC_OEM,
        productid: MPC_PRODUCT_ID,
        oemptr: 0,
        oemsize: 0,
        oemcount: entry_count(num_cpus) as u16,
        lapic: APIC_START as u32,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };
    let mut table = hdr.as_slice().to_vec();
    table.extend_from_slice(&entries);
    hdr.checksum = checksum(&table);
    table[..hdr_len].copy_from_slice(hdr.as_slice());
    table
}

/// The configuration table's entries, in the order the MP spec wants them: processors,
/// the ISA bus, the IOAPIC, then the interrupt assignments.
fn table_entries(num_cpus: u8) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::with_capacity(mptable_size(num_cpus));
    for cpu in 0..num_cpus {
        entries.extend_from_slice(processor_entry(cpu).as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: ISA_BUS_ID,
        bustype: BUS_TYPE_ISA,
    };
    entries.extend_from_slice(bus.as_slice());
    // The IOAPIC id follows the LAPIC ids (0..num_cpus).
    let ioapic_id = num_cpus;
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: MPC_APIC_USABLE,
        apicaddr: IOAPIC_START as u32,
    };
    entries.extend_from_slice(ioapic.as_slice());
    push_interrupt_entries(&mut entries, ioapic_id);
    entries
}

/// The processor entry of vCPU `cpu` (APIC id `cpu`; vCPU 0 is the boot processor).
fn processor_entry(cpu: u8) -> MpcCpu {
    let mut cpuflag = CPU_ENABLED;
    if cpu == 0 {
        cpuflag |= CPU_BOOTPROCESSOR;
    }
    MpcCpu {
        type_: MP_PROCESSOR,
        apicid: cpu,
        apicver: APIC_VERSION,
        cpuflag,
        cpufeature: CPU_SIGNATURE,
        featureflag: CPU_FEATURES,
        reserved: [0; 2],
    }
}

/// Appends the interrupt assignments: ISA IRQ `i` to pin `i` of IOAPIC `ioapic_id` for
/// every pin, ExtINT to LINT0 and NMI to LINT1 of every local APIC.
fn push_interrupt_entries(entries: &mut Vec<u8>, ioapic_id: u8) {
    for pin in 0..IOAPIC_PINS {
        let e = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_IRQ_TYPE_INT,
            irqflag: MP_IRQFLAG_DEFAULT,
            srcbus: ISA_BUS_ID,
            srcbusirq: pin,
            dstapic: ioapic_id,
            dstirq: pin,
        };
        entries.extend_from_slice(e.as_slice());
    }
    for (irqtype, lint) in [(MP_IRQ_TYPE_EXTINT, 0), (MP_IRQ_TYPE_NMI, 1)] {
        let e = MpcLintsrc {
            type_: MP_LINTSRC,
            irqtype,
            irqflag: MP_IRQFLAG_DEFAULT,
            srcbusid: ISA_BUS_ID,
            srcbusirq: 0,
            destapic: ALL_LOCAL_APICS,
            destapiclint: lint,
        };
        entries.extend_from_slice(e.as_slice());
    }
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs (APIC ids `0..num_cpus`, vCPU 0 is the BSP) at `EBDA_START`.
///
/// The IOAPIC gets id `num_cpus`; ISA IRQ `i` is routed to IOAPIC pin `i`
/// for every pin; ExtINT goes to LINT0 and NMI to LINT1 of every LAPIC.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let size = mptable_size(num_cpus);
    if EBDA_START + size as u64 > MPTABLE_LIMIT {
        return Err(MptableError::TooLarge(size));
    }
    let base = GuestAddress(EBDA_START);
    if !vm_memory::GuestMemory::check_range(mem, base, size) {
        return Err(MptableError::NotEnoughMemory(size));
    }
    let table = build_mptable(EBDA_START, num_cpus);
    mem.write_slice(&table, base).map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn read_table(m: &GuestMemoryMmap, num_cpus: u8) -> Vec<u8> {
        let mut buf = vec![0u8; mptable_size(num_cpus)];
        m.read_slice(&mut buf, GuestAddress(EBDA_START))
            .expect("read mptable");
        buf
    }

    fn check_table(num_cpus: u8) {
        let m = mem(1 << 20);
        setup_mptable(&m, num_cpus).expect("setup_mptable");
        let buf = read_table(&m, num_cpus);

        // Floating pointer.
        let mpf = MpfIntel::from_slice(&buf[..16]).expect("mpf");
        assert_eq!(&buf[0..4], b"_MP_");
        assert_eq!(sum(&buf[..16]), 0);
        assert_eq!({ mpf.length }, 1);
        assert_eq!({ mpf.specification }, 4);
        let physptr = u64::from(mpf.physptr);
        assert_eq!(physptr, EBDA_START + 16);

        // Configuration table.
        let hdr = MpcTable::from_slice(&buf[16..16 + 44]).expect("hdr");
        assert_eq!(&buf[16..20], b"PCMP");
        let len = usize::from(hdr.length);
        assert_eq!(16 + len, mptable_size(num_cpus));
        assert_eq!(sum(&buf[16..16 + len]), 0);
        assert_eq!(usize::from(hdr.oemcount), entry_count(num_cpus));
        assert_eq!({ hdr.lapic }, APIC_START as u32);
        assert_eq!(&hdr.oem, b"MOAT    ");
        assert_eq!(&hdr.productid, b"MICROVM     ");

        // Walk the entries by type and count them.
        let mut off = 16 + 44;
        let mut counts = [0usize; 5];
        let mut bsps = 0;
        while off < buf.len() {
            let t = buf[off];
            counts[usize::from(t)] += 1;
            off += match t {
                MP_PROCESSOR => {
                    let c = MpcCpu::from_slice(&buf[off..off + 20]).expect("cpu");
                    assert_eq!(usize::from(c.apicid), counts[0] - 1);
                    assert_ne!(c.cpuflag & CPU_ENABLED, 0);
                    if c.cpuflag & CPU_BOOTPROCESSOR != 0 {
                        bsps += 1;
                        assert_eq!(c.apicid, 0);
                    }
                    20
                }
                MP_IOAPIC => {
                    let io = MpcIoapic::from_slice(&buf[off..off + 8]).expect("ioapic");
                    assert_eq!(io.apicid, num_cpus);
                    assert_eq!(io.apicver, 0x11);
                    assert_eq!({ io.apicaddr }, IOAPIC_START as u32);
                    8
                }
                MP_INTSRC => {
                    let i = MpcIntsrc::from_slice(&buf[off..off + 8]).expect("intsrc");
                    assert_eq!(i.srcbusirq, i.dstirq);
                    assert_eq!(i.dstapic, num_cpus);
                    8
                }
                MP_BUS | MP_LINTSRC => 8,
                other => panic!("unexpected entry type {other}"),
            };
        }
        assert_eq!(off, buf.len());
        assert_eq!(counts[0], usize::from(num_cpus));
        assert_eq!(counts[1], 1);
        assert_eq!(counts[2], 1);
        assert_eq!(counts[3], usize::from(IOAPIC_PINS));
        assert_eq!(counts[4], 2);
        assert_eq!(bsps, 1);
    }

    #[test]
    fn one_cpu_table_is_valid() {
        check_table(1);
        // The 1-vCPU table stays inside the EBDA window.
        assert!(EBDA_START + mptable_size(1) as u64 <= super::super::layout::EBDA_END);
    }

    #[test]
    fn max_cpu_table_is_valid() {
        check_table(MAX_VCPUS);
        assert!(EBDA_START + mptable_size(MAX_VCPUS) as u64 <= MPTABLE_LIMIT);
    }

    #[test]
    fn too_many_cpus_refused() {
        let m = mem(1 << 20);
        assert!(matches!(
            setup_mptable(&m, MAX_VCPUS + 1),
            Err(MptableError::TooManyCpus(65))
        ));
        assert!(matches!(setup_mptable(&m, 0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn too_small_memory_errors() {
        // Memory ends inside the EBDA, before the table does.
        let m = mem(EBDA_START as usize + 64);
        assert!(matches!(
            setup_mptable(&m, 1),
            Err(MptableError::NotEnoughMemory(_))
        ));
        let m = mem(0x1000);
        assert!(setup_mptable(&m, 1).is_err());
    }

    #[test]
    fn lint_entries() {
        let m = mem(1 << 20);
        setup_mptable(&m, 2).expect("setup_mptable");
        let buf = read_table(&m, 2);
        let last = buf.len() - 16;
        let extint = MpcLintsrc::from_slice(&buf[last..last + 8]).expect("lint0");
        let nmi = MpcLintsrc::from_slice(&buf[last + 8..]).expect("lint1");
        assert_eq!(
            (extint.irqtype, extint.destapic, extint.destapiclint),
            (3, 0xff, 0)
        );
        assert_eq!((nmi.irqtype, nmi.destapic, nmi.destapiclint), (1, 0xff, 1));
    }
}
