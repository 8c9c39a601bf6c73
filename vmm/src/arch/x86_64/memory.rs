//! Guest RAM regions and the e820-style memory map the guest is told about.
//!
//! RAM is backed contiguously from guest physical address 0 up to
//! `min(size, MMIO_GAP_START)`; whatever does not fit below the 32-bit MMIO
//! hole continues at 4 GiB. The map handed to the guest (PVH memmap) marks
//! the legacy area `[EBDA_START, HIMEM_START)` (MP table, VGA/ROM hole) as
//! reserved even though it is backed, so the guest never allocates from it.

use vm_memory::GuestAddress;

use super::layout::{EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, MMIO_GAP_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address of the range.
    pub addr: u64,
    /// Size of the range in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub type_: u32,
}

/// Splits `size` bytes of guest RAM into the regions to back and register
/// with KVM: `[0, min(size, MMIO_GAP_START))` and, when `size` is larger
/// than the MMIO gap start, the remainder starting at 4 GiB.
///
/// Returns an empty list for `size == 0`.
pub fn arch_memory_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size == 0 {
        return Vec::new();
    }
    // usize is 64 bits on x86_64, so these casts are lossless.
    let low = size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_GAP_START {
        regions.push((
            GuestAddress(FIRST_ADDR_PAST_32BITS),
            (size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

/// Adds the intersection of `[start, end)` with `[lo, hi)` to `map` as an
/// entry of type `type_` when it is not empty.
fn push_clipped(map: &mut Vec<E820Entry>, start: u64, end: u64, lo: u64, hi: u64, type_: u32) {
    let s = start.max(lo);
    let e = end.min(hi);
    if s < e {
        map.push(E820Entry {
            addr: s,
            size: e - s,
            type_,
        });
    }
}

/// Builds the memory map the guest sees from the backed RAM `regions`
/// (as returned by [`arch_memory_regions`], or read from a `GuestMemoryMmap`).
///
/// For every region: the part below `EBDA_START` is usable, the part in
/// `[EBDA_START, HIMEM_START)` is reserved (MP table, legacy hole), the part
/// in `[HIMEM_START, MMIO_GAP_START)` is usable, and anything at or above
/// 4 GiB is usable. Anything inside the MMIO gap is left out. Entries are
/// sorted by address.
pub fn e820_entries(regions: &[(GuestAddress, usize)]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for &(start, len) in regions {
        let start = start.0;
        let end = start.saturating_add(len as u64);
        push_clipped(&mut map, start, end, 0, EBDA_START, E820_RAM);
        push_clipped(&mut map, start, end, EBDA_START, HIMEM_START, E820_RESERVED);
        push_clipped(&mut map, start, end, HIMEM_START, MMIO_GAP_START, E820_RAM);
        push_clipped(
            &mut map,
            start,
            end,
            FIRST_ADDR_PAST_32BITS,
            u64::MAX,
            E820_RAM,
        );
    }
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            type_: E820_RAM,
        }
    }

    fn legacy_reserved() -> E820Entry {
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            type_: E820_RESERVED,
        }
    }

    #[test]
    fn regions_128m() {
        let r = arch_memory_regions(128 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), (128 * MIB) as usize)]);
        assert_eq!(
            e820_entries(&r),
            vec![
                ram(0, EBDA_START),
                legacy_reserved(),
                ram(HIMEM_START, 128 * MIB - HIMEM_START),
            ]
        );
    }

    #[test]
    fn regions_exactly_3g() {
        let r = arch_memory_regions(3 * GIB);
        assert_eq!(MMIO_GAP_START, 3 * GIB);
        assert_eq!(r, vec![(GuestAddress(0), (3 * GIB) as usize)]);
        assert_eq!(
            e820_entries(&r),
            vec![
                ram(0, EBDA_START),
                legacy_reserved(),
                ram(HIMEM_START, MMIO_GAP_START - HIMEM_START),
            ]
        );
    }

    #[test]
    fn regions_5g() {
        let r = arch_memory_regions(5 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(FIRST_ADDR_PAST_32BITS), (2 * GIB) as usize),
            ]
        );
        let total: usize = r.iter().map(|&(_, l)| l).sum();
        assert_eq!(total as u64, 5 * GIB);
        assert_eq!(
            e820_entries(&r),
            vec![
                ram(0, EBDA_START),
                legacy_reserved(),
                ram(HIMEM_START, MMIO_GAP_START - HIMEM_START),
                ram(FIRST_ADDR_PAST_32BITS, 2 * GIB),
            ]
        );
    }

    #[test]
    fn regions_empty_and_tiny() {
        assert!(arch_memory_regions(0).is_empty());
        assert!(e820_entries(&[]).is_empty());
        // Smaller than the EBDA: only a low usable entry.
        let r = arch_memory_regions(0x8_0000);
        assert_eq!(e820_entries(&r), vec![ram(0, 0x8_0000)]);
    }

    #[test]
    fn e820_is_sorted_for_unsorted_input() {
        let r = [
            (GuestAddress(FIRST_ADDR_PAST_32BITS), GIB as usize),
            (GuestAddress(0), (64 * MIB) as usize),
        ];
        let map = e820_entries(&r);
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        assert_eq!(map.len(), 4);
    }
}
