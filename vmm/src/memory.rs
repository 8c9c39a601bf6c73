//! Guest RAM: anonymous, lazily-populated host mappings laid out by `arch`.

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch;

/// Errors allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// Requested size.
        size: u64,
        /// The mapping error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `size` bytes of guest RAM (split around the 32-bit MMIO hole).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = arch::arch_memory_regions(size);
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Allocate { size, source })
}

/// Host virtual address ranges backing guest RAM, as (start, length).
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn memory_is_usable_and_sized() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let ranges = host_ranges(&mem);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 64 << 20);
    }
}
