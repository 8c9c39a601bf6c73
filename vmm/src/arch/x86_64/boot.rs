//! PVH boot protocol: `hvm_start_info`, memory map and module list, plus
//! initramfs placement.
//!
//! The kernel is entered at its PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY)
//! with EBX pointing at the `hvm_start_info` written by [`configure_pvh`].

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use thiserror::Error;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{
    BOOT_STACK_POINTER, HIMEM_START, MEMMAP_START, MMIO_GAP_START, MODLIST_START, PVH_INFO_START,
};
use super::memory::e820_entries;

/// Magic value of `hvm_start_info` ("xEn3" with the high bit of 'x' set).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `hvm_start_info` version written (has the memory map fields).
pub const HVM_START_INFO_VERSION: u32 = 1;
/// Guest page size used for initrd alignment.
pub const PAGE_SIZE: u64 = 0x1000;

/// Errors configuring the PVH boot.
#[derive(Debug, Error)]
pub enum BootError {
    /// The command line address is not in guest memory.
    #[error("command line address {0:#x} is not in guest memory")]
    CmdlineAddress(u64),
    /// The initrd range is not (entirely) in guest memory.
    #[error("initrd at {addr:#x} (+{size:#x}) is not in guest memory")]
    InitrdAddress {
        /// Initrd guest address.
        addr: u64,
        /// Initrd size in bytes.
        size: usize,
    },
    /// No RAM below the MMIO gap above the kernel.
    #[error("guest memory has no RAM region at HIMEM_START")]
    NoLowMemory,
    /// The initrd does not fit between the kernel and the end of low RAM.
    #[error("initrd of {size:#x} bytes does not fit between the kernel end {kernel_end:#x} and the end of low RAM {lowmem_end:#x}")]
    InitrdTooLarge {
        /// Initrd size in bytes.
        size: usize,
        /// First byte after the kernel.
        kernel_end: u64,
        /// First byte after low RAM.
        lowmem_end: u64,
    },
    /// The memory map would run into the boot stack.
    #[error("PVH memory map of {0} entries is too large")]
    MemmapTooLarge(usize),
    /// linux-loader failed to write the boot parameters.
    #[error("failed to write PVH boot parameters: {0}")]
    Write(#[source] linux_loader::configurator::Error),
}

/// The guest memory map in PVH format, derived from the regions of `mem`.
pub fn pvh_memmap(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let regions: Vec<(GuestAddress, usize)> = mem
        .iter()
        .map(|r| (r.start_addr(), r.len() as usize))
        .collect();
    e820_entries(&regions)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.type_,
            reserved: 0,
        })
        .collect()
}

/// Writes the PVH `hvm_start_info` at `PVH_INFO_START`, the memory map at
/// `MEMMAP_START` and, with `initrd` = `(address, size)`, a one-entry
/// module list at `MODLIST_START`. Returns the `hvm_start_info` address,
/// to pass in RBX via [`super::regs::setup_pvh_regs`].
///
/// The command line itself must already be (or later be) written at
/// `cmdline_addr` (e.g. with `linux_loader::loader::load_cmdline`), the
/// initrd contents at its address.
pub fn configure_pvh(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<GuestAddress, BootError> {
    if !mem.address_in_range(cmdline_addr) {
        return Err(BootError::CmdlineAddress(cmdline_addr.raw_value()));
    }

    let memmap = pvh_memmap(mem);
    let memmap_bytes = memmap.len() * size_of::<hvm_memmap_table_entry>();
    if MEMMAP_START + memmap_bytes as u64 > BOOT_STACK_POINTER {
        return Err(BootError::MemmapTooLarge(memmap.len()));
    }

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: cmdline_addr.raw_value(),
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };

    let mut modules = Vec::new();
    if let Some((addr, size)) = initrd {
        if size > 0 && !mem.check_range(addr, size) {
            return Err(BootError::InitrdAddress {
                addr: addr.raw_value(),
                size,
            });
        }
        modules.push(hvm_modlist_entry {
            paddr: addr.raw_value(),
            size: size as u64,
            ..Default::default()
        });
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_START;
    }

    let start_info_addr = GuestAddress(PVH_INFO_START);
    let mut params = BootParams::new::<hvm_start_info>(&start_info, start_info_addr);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::Write)?;
    Ok(start_info_addr)
}

/// Chooses where to load an initrd of `initrd_size` bytes: page aligned, as
/// high as possible in the RAM region holding the kernel (below
/// `MMIO_GAP_START`), and not below `kernel_end` (first byte after the
/// loaded kernel, e.g. `KernelLoaderResult::kernel_end`).
pub fn initrd_load_addr(
    mem: &GuestMemoryMmap,
    initrd_size: usize,
    kernel_end: GuestAddress,
) -> Result<GuestAddress, BootError> {
    let region = mem
        .find_region(GuestAddress(HIMEM_START))
        .ok_or(BootError::NoLowMemory)?;
    let lowmem_end = region
        .start_addr()
        .raw_value()
        .saturating_add(region.len())
        .min(MMIO_GAP_START);
    let too_large = BootError::InitrdTooLarge {
        size: initrd_size,
        kernel_end: kernel_end.raw_value(),
        lowmem_end,
    };
    let Some(start) = lowmem_end.checked_sub(initrd_size as u64) else {
        return Err(too_large);
    };
    let start = start & !(PAGE_SIZE - 1);
    if start < kernel_end.raw_value() || start < HIMEM_START {
        return Err(too_large);
    }
    Ok(GuestAddress(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::memory::{E820_RAM, E820_RESERVED};
    use vm_memory::Bytes;

    const MEM_SIZE: usize = 64 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
    }

    fn read_start_info(m: &GuestMemoryMmap) -> hvm_start_info {
        m.read_obj(GuestAddress(PVH_INFO_START))
            .expect("start_info")
    }

    #[test]
    fn start_info_without_initrd() {
        let m = mem();
        let addr = configure_pvh(&m, GuestAddress(0x20000), None).expect("configure");
        assert_eq!(addr, GuestAddress(PVH_INFO_START));
        let si = read_start_info(&m);
        assert_eq!(si.magic, 0x336e_c578);
        assert_eq!(si.version, 1);
        assert_eq!(si.flags, 0);
        assert_eq!(si.cmdline_paddr, 0x20000);
        assert_eq!(si.nr_modules, 0);
        assert_eq!(si.modlist_paddr, 0);
        assert_eq!(si.rsdp_paddr, 0);
        assert_eq!(si.memmap_paddr, MEMMAP_START);
        assert_eq!(si.memmap_entries, 3);
    }

    #[test]
    fn memmap_matches_e820() {
        let m = mem();
        configure_pvh(&m, GuestAddress(0x20000), None).expect("configure");
        let si = read_start_info(&m);
        let expected = e820_entries(&[(GuestAddress(0), MEM_SIZE)]);
        assert_eq!(si.memmap_entries as usize, expected.len());
        for (i, e) in expected.iter().enumerate() {
            let addr = GuestAddress(si.memmap_paddr + (i * 24) as u64);
            let got: hvm_memmap_table_entry = m.read_obj(addr).expect("memmap entry");
            assert_eq!((got.addr, got.size, got.type_), (e.addr, e.size, e.type_));
        }
        let types: Vec<u32> = expected.iter().map(|e| e.type_).collect();
        assert_eq!(types, vec![E820_RAM, E820_RESERVED, E820_RAM]);
    }

    #[test]
    fn start_info_with_initrd() {
        let m = mem();
        let initrd = (GuestAddress(0x300_0000), 0x12345);
        configure_pvh(&m, GuestAddress(0x20000), Some(initrd)).expect("configure");
        let si = read_start_info(&m);
        assert_eq!(si.nr_modules, 1);
        assert_eq!(si.modlist_paddr, MODLIST_START);
        let module: hvm_modlist_entry = m
            .read_obj(GuestAddress(MODLIST_START))
            .expect("modlist entry");
        assert_eq!(module.paddr, 0x300_0000);
        assert_eq!(module.size, 0x12345);
        assert_eq!(module.cmdline_paddr, 0);
        // The module list does not overlap start_info.
        assert!(PVH_INFO_START + size_of::<hvm_start_info>() as u64 <= MODLIST_START);
    }

    #[test]
    fn bad_addresses_rejected() {
        let m = mem();
        assert!(matches!(
            configure_pvh(&m, GuestAddress(MEM_SIZE as u64), None),
            Err(BootError::CmdlineAddress(_))
        ));
        assert!(matches!(
            configure_pvh(
                &m,
                GuestAddress(0x20000),
                Some((GuestAddress(MEM_SIZE as u64 - 0x1000), 0x2000))
            ),
            Err(BootError::InitrdAddress { .. })
        ));
    }

    #[test]
    fn initrd_placement() {
        let m = mem();
        let size = 0x12_3456;
        let kernel_end = GuestAddress(0x200_0000);
        let addr = initrd_load_addr(&m, size, kernel_end).expect("placement");
        assert_eq!(addr.raw_value() % PAGE_SIZE, 0);
        assert!(addr >= kernel_end);
        assert!(addr.raw_value() + size as u64 <= MEM_SIZE as u64);
        // As high as possible: less than a page left above it.
        assert!(MEM_SIZE as u64 - (addr.raw_value() + size as u64) < PAGE_SIZE);
        assert!(m.check_range(addr, size));
    }

    #[test]
    fn initrd_too_large() {
        let m = mem();
        let kernel_end = GuestAddress(0x200_0000);
        assert!(matches!(
            initrd_load_addr(&m, MEM_SIZE + 1, kernel_end),
            Err(BootError::InitrdTooLarge { .. })
        ));
        // Fits in RAM but would overlap the kernel.
        assert!(matches!(
            initrd_load_addr(&m, MEM_SIZE - 0x100_0000, kernel_end),
            Err(BootError::InitrdTooLarge { .. })
        ));
        // Exactly fits above the kernel.
        let exact = MEM_SIZE - 0x200_0000;
        assert_eq!(
            initrd_load_addr(&m, exact, kernel_end).expect("fits"),
            kernel_end
        );
    }

    #[test]
    fn initrd_stays_below_mmio_gap() {
        // Two regions like a >3 GiB VM, but small: the initrd must go in
        // the low one even though the high one is larger.
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MEM_SIZE),
            (GuestAddress(1 << 32), 2 * MEM_SIZE),
        ])
        .expect("guest memory");
        let addr = initrd_load_addr(&m, 0x1000, GuestAddress(HIMEM_START)).expect("placement");
        assert_eq!(addr.raw_value(), MEM_SIZE as u64 - 0x1000);
    }
}
