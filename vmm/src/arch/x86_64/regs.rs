//! Initial vCPU register state for the PVH entry point, FPU and LAPIC.
//!
//! PVH enters the kernel in 32-bit protected mode with paging off: flat
//! 4 GiB code and data segments, a busy 32-bit TSS in TR, CR0.PE set,
//! CR4 = 0, EFLAGS = 0x2 and EBX = physical address of `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};

/// GDT flags of the 32-bit flat code segment (G, D, P, S, execute/read, accessed).
pub const GDT_CODE32_FLAGS: u16 = 0xc09b;
/// GDT flags of the 32-bit flat data segment (G, B, P, S, read/write, accessed).
pub const GDT_DATA32_FLAGS: u16 = 0xc093;
/// GDT flags of the TSS (G, P, busy 32-bit TSS).
pub const GDT_TSS_FLAGS: u16 = 0x808b;
/// GDT index of the code segment (selector 0x08).
pub const GDT_CODE_INDEX: u8 = 1;
/// GDT index of the data segment (selector 0x10).
pub const GDT_DATA_INDEX: u8 = 2;
/// GDT index of the TSS (selector 0x18).
pub const GDT_TSS_INDEX: u8 = 3;

/// CR0 protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0 extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;

/// x87 control word after FNINIT.
const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset (all exceptions masked).
const FPU_MXCSR: u32 = 0x1f80;

/// Offset of LVT LINT0 in the LAPIC register page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of LVT LINT1 in the LAPIC register page.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;

/// Errors setting up vCPU registers.
#[derive(Debug, Error)]
pub enum RegsError {
    /// Writing the GDT or IDT to guest memory failed.
    #[error("failed to write the boot {0} to guest memory: {1}")]
    WriteTable(&'static str, #[source] vm_memory::GuestMemoryError),
    /// KVM_GET_SREGS / KVM_SET_SREGS failed.
    #[error("failed to get/set special registers: {0}")]
    Sregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("failed to set general purpose registers: {0}")]
    Regs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("failed to set FPU state: {0}")]
    Fpu(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC / KVM_SET_LAPIC failed (is there an in-kernel irqchip?).
    #[error("failed to get/set LAPIC state (in-kernel irqchip created?): {0}")]
    Lapic(#[source] kvm_ioctls::Error),
}

/// Encodes a GDT descriptor from its 16 flag bits (access byte in the low
/// byte, G/DB/L/AVL in bits 15:12), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, flat 32-bit code, flat 32-bit data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(GDT_CODE32_FLAGS, 0, 0xfffff),
    gdt_entry(GDT_DATA32_FLAGS, 0, 0xfffff),
    gdt_entry(GDT_TSS_FLAGS, 0, 0xfffff),
];

/// Decodes GDT descriptor `entry` found at GDT slot `index` into the
/// hidden segment state KVM expects (selector = `index * 8`, byte-granular
/// limit).
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Sets the general purpose registers for the PVH entry: RIP = `entry`,
/// RBX = `start_info` (PVH ABI), RFLAGS = 0x2, stack at
/// `BOOT_STACK_POINTER`.
pub fn setup_pvh_regs(
    vcpu: &VcpuFd,
    entry: GuestAddress,
    start_info: GuestAddress,
) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rbx: start_info.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(RegsError::Regs)
}

/// Writes the boot GDT at `BOOT_GDT_START` and an empty IDT at
/// `BOOT_IDT_START`, and puts `vcpu` in 32-bit protected mode with paging
/// off: CS = code, DS/ES/FS/GS/SS = data, TR = TSS, CR0 = PE | ET,
/// CR3 = CR4 = EFER = 0.
pub fn setup_pvh_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START + (i * 8) as u64);
        mem.write_obj(*e, addr)
            .map_err(|err| RegsError::WriteTable("GDT", err))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|err| RegsError::WriteTable("IDT", err))?;

    let mut sregs = vcpu.get_sregs().map_err(RegsError::Sregs)?;
    let code = kvm_segment_from_gdt(BOOT_GDT[usize::from(GDT_CODE_INDEX)], GDT_CODE_INDEX);
    let data = kvm_segment_from_gdt(BOOT_GDT[usize::from(GDT_DATA_INDEX)], GDT_DATA_INDEX);
    let tss = kvm_segment_from_gdt(BOOT_GDT[usize::from(GDT_TSS_INDEX)], GDT_TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 8 - 1;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;

    vcpu.set_sregs(&sregs).map_err(RegsError::Sregs)
}

/// Initial FPU/SSE state: FCW = 0x37f, MXCSR = 0x1f80.
///
/// Note: KVM_SET_FPU/KVM_GET_FPU ignore the `mxcsr` field; KVM already
/// resets a new vCPU's MXCSR to 0x1f80 (read it back with KVM_GET_XSAVE).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::Fpu)
}

/// Reads the 32-bit LAPIC register at `offset` from a KVM LAPIC page.
pub fn get_klapic_reg(klapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| klapic.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// Writes the 32-bit LAPIC register at `offset` in a KVM LAPIC page.
pub fn set_klapic_reg(klapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        klapic.regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// Replaces the delivery mode (bits 10:8) of LVT register value `reg`.
pub const fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | ((mode & 0x7) << 8)
}

/// Configures the LAPIC's LINT0 as ExtINT (the PIC) and LINT1 as NMI,
/// matching the MP table's local interrupt entries. Needs the in-kernel
/// irqchip (`VmFd::create_irq_chip` before the vCPU was created).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut klapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    let lvt0 = get_klapic_reg(&klapic, APIC_LVT0);
    set_klapic_reg(
        &mut klapic,
        APIC_LVT0,
        set_apic_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_klapic_reg(&klapic, APIC_LVT1);
    set_klapic_reg(
        &mut klapic,
        APIC_LVT1,
        set_apic_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&klapic).map_err(RegsError::Lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_encoding() {
        assert_eq!(BOOT_GDT[0], 0);
        assert_eq!(BOOT_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0x9b, 0x1234_5678, 0xabcde), 0x120a_9b34_5678_bcde);
    }

    #[test]
    fn code_segment_from_gdt() {
        let s = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.selector, 0x8);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.s, 1);
        assert_eq!(s.dpl, 0);
        assert_eq!(s.present, 1);
        assert_eq!(s.db, 1);
        assert_eq!(s.g, 1);
        assert_eq!(s.l, 0);
        assert_eq!(s.avl, 0);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments_from_gdt() {
        let d = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((d.selector, d.type_, d.s, d.db, d.g), (0x10, 0x3, 1, 1, 1));
        assert_eq!(d.limit, 0xffff_ffff);
        let t = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((t.selector, t.type_, t.s, t.db, t.g), (0x18, 0xb, 0, 0, 1));
        assert_eq!(t.present, 1);
    }

    #[test]
    fn segment_round_trip_base_limit() {
        let e = gdt_entry(0x4093, 0xdead_beef, 0x12345);
        let s = kvm_segment_from_gdt(e, 5);
        assert_eq!(s.base, 0xdead_beef);
        assert_eq!(s.limit, 0x12345, "byte granular");
        assert_eq!(s.selector, 40);
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn lapic_register_helpers() {
        let mut k = kvm_lapic_state::default();
        set_klapic_reg(&mut k, APIC_LVT0, 0x0001_0000);
        assert_eq!(get_klapic_reg(&k, APIC_LVT0), 0x0001_0000);
        let v = set_apic_delivery_mode(get_klapic_reg(&k, APIC_LVT0), APIC_MODE_EXTINT);
        assert_eq!(v, 0x0001_0700);
        assert_eq!(set_apic_delivery_mode(0x0000_07ff, APIC_MODE_NMI), 0x4ff);
        set_klapic_reg(&mut k, APIC_LVT1, 0xdead_beef);
        assert_eq!(get_klapic_reg(&k, APIC_LVT1), 0xdead_beef);
        assert_eq!(get_klapic_reg(&k, APIC_LVT0), 0x0001_0000);
    }
}
