//! Guest physical memory layout of a moat microVM (x86_64).
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (unused)
//! 0x0000_0500  GDT (BOOT_GDT_START), IDT right after (BOOT_IDT_START)
//! 0x0000_6000  PVH hvm_start_info, module list at +0x40
//! 0x0000_7000  PVH memory map (e820-style entries)
//! 0x0000_8ff0  initial stack pointer for the boot vCPU
//! 0x0002_0000  kernel command line (CMDLINE_MAX_SIZE bytes)
//! 0x0009_fc00  MP table (inside the EBDA, where Linux scans for it)
//! 0x000a_0000  legacy VGA / ROM hole (not RAM)
//! 0x0010_0000  HIMEM_START: kernel ELF segments (Linux links at 16 MiB)
//! ...          initramfs, placed page-aligned at the top of low RAM
//! 0xc000_0000  MMIO_GAP_START: 32-bit MMIO hole (devices, IOAPIC, LAPIC)
//! 0xd000_0000  moat MMIO devices: boot timer, then virtio-mmio slots
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above the hole when memory > MMIO_GAP_START
//! ```

// Defined by the configuration contract, which checks configurations against them.
pub use moat_vmm_config::limits::{CMDLINE_MAX_SIZE, MAX_VCPUS, MMIO_GAP_START};

/// Start of the GDT written for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT written for the boot vCPU.
pub const BOOT_IDT_START: u64 = 0x520;
/// Address of the PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// Address of the PVH module list (the initramfs entry).
pub const MODLIST_START: u64 = 0x6040;
/// Address of the PVH memory map.
pub const MEMMAP_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Address of the kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Start of the EBDA, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// End of usable low memory (start of the legacy VGA/ROM hole).
pub const EBDA_END: u64 = 0xa0000;
/// First byte of high memory; kernel segments must load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Size of the 32-bit MMIO hole.
pub const MMIO_GAP_SIZE: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_START;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Base of moat's own MMIO device window (inside the MMIO hole).
pub const MOAT_MMIO_START: u64 = 0xd000_0000;
/// Boot-timer device: the guest writes `BOOT_TIMER_MAGIC` here when it reaches /init.
pub const BOOT_TIMER_ADDR: u64 = MOAT_MMIO_START;
/// Size of the boot-timer MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device slot (each slot `VIRTIO_MMIO_SLOT_SIZE` bytes).
pub const VIRTIO_MMIO_START: u64 = MOAT_MMIO_START + BOOT_TIMER_SIZE;
/// Size of one virtio-mmio device slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// First GSI given to virtio-mmio devices (below: i8042 on 1, COM1 on 4).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
/// Last GSI given to virtio-mmio devices (the IOAPIC's last pin).
pub const VIRTIO_IRQ_LAST: u32 = IOAPIC_PINS as u32 - 1;
/// Physical address of the IOAPIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Physical address of the local APIC.
pub const APIC_START: u64 = 0xfee0_0000;
/// Number of IOAPIC pins (GSIs) the in-kernel irqchip provides.
pub const IOAPIC_PINS: u8 = 24;
/// COM1 legacy interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard interrupt line.
pub const I8042_IRQ: u32 = 1;
