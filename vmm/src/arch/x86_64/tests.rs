//! Tests against a real `/dev/kvm`. They fail (never skip) when KVM is not
//! usable, so a CI run without KVM shows up as a failure.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::cpuid::{KVM_CPUID_SIGNATURE, LEAF1_ECX_HYPERVISOR};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START};
use super::msr::{MSR_IA32_MISC_ENABLE, MSR_IA32_SYSENTER_CS};
use super::regs::{get_klapic_reg, APIC_LVT0, APIC_LVT1, X86_CR0_ET, X86_CR0_PE};
use super::*;

const MEM_SIZE: u64 = 32 << 20;
const ENTRY: u64 = 0x10_0000;

fn open_kvm() -> Kvm {
    match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => panic!(
            "this test needs a usable /dev/kvm (read/write access, KVM loaded): \
             opening it failed: {e}"
        ),
    }
}

/// VM with the in-kernel irqchip, guest memory registered, one vCPU.
fn vm_with_vcpu(kvm: &Kvm) -> (VmFd, VcpuFd, GuestMemoryMmap) {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let mem = GuestMemoryMmap::from_ranges(&arch_memory_regions(MEM_SIZE)).expect("guest memory");
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .expect("host address");
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which the test keeps alive
        // for as long as the VM exists (both are dropped at the end).
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    (vm, vcpu, mem)
}

/// Full per-vCPU setup in the order the VMM uses.
fn configure(kvm: &Kvm, vcpu: &VcpuFd, mem: &GuestMemoryMmap, start_info: GuestAddress) {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    let tsc_khz = vcpu.get_tsc_khz().ok();
    filter_cpuid(&mut cpuid, 0, 1, tsc_khz).expect("filter_cpuid");
    set_tsc_deadline(&mut cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    setup_msrs(vcpu).expect("setup_msrs");
    setup_pvh_regs(vcpu, GuestAddress(ENTRY), start_info).expect("setup_pvh_regs");
    setup_pvh_sregs(mem, vcpu).expect("setup_pvh_sregs");
    setup_fpu(vcpu).expect("setup_fpu");
    setup_lapic(vcpu).expect("setup_lapic");
}

#[test]
fn kvm_vcpu_setup_reads_back() {
    let kvm = open_kvm();
    let (_vm, vcpu, mem) = vm_with_vcpu(&kvm);
    let start_info =
        configure_pvh(&mem, GuestAddress(layout::CMDLINE_START), None).expect("configure_pvh");
    setup_mptable(&mem, 1).expect("setup_mptable");
    configure(&kvm, &vcpu, &mem, start_info);

    let regs = vcpu.get_regs().expect("KVM_GET_REGS");
    assert_eq!(regs.rip, ENTRY);
    assert_eq!(regs.rbx, PVH_INFO_START);
    assert_eq!(regs.rsp, BOOT_STACK_POINTER);
    assert_eq!(regs.rflags, 0x2);

    let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(
        sregs.cr0 & (X86_CR0_PE | X86_CR0_ET),
        X86_CR0_PE | X86_CR0_ET
    );
    assert_eq!(sregs.cr0 & (1 << 31), 0, "paging off");
    assert_eq!(sregs.cr4, 0);
    assert_eq!(sregs.efer, 0);
    assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
    assert_eq!(sregs.idt.base, BOOT_IDT_START);
    assert_eq!(
        (sregs.cs.selector, sregs.cs.db, sregs.cs.type_),
        (0x8, 1, 0xb)
    );
    assert_eq!(sregs.cs.limit, 0xffff_ffff);
    assert_eq!((sregs.ds.selector, sregs.ss.selector), (0x10, 0x10));
    assert_eq!((sregs.tr.selector, sregs.tr.type_), (0x18, 0xb));
    let gdt_code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).expect("gdt");
    assert_eq!(gdt_code, 0x00cf_9b00_0000_ffff);

    let fpu = vcpu.get_fpu().expect("KVM_GET_FPU");
    assert_eq!(fpu.fcw, 0x37f);
    // KVM_GET_FPU does not report MXCSR (KVM never copies it); the XSAVE
    // legacy area has it at byte 24.
    let xsave = vcpu.get_xsave().expect("KVM_GET_XSAVE");
    assert_eq!(xsave.region[6], 0x1f80);

    let lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
    assert_eq!(
        (get_klapic_reg(&lapic, APIC_LVT0) >> 8) & 0x7,
        0x7,
        "ExtINT"
    );
    assert_eq!((get_klapic_reg(&lapic, APIC_LVT1) >> 8) & 0x7, 0x4, "NMI");

    let mut msrs = kvm_bindings::Msrs::from_entries(&[
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_SYSENTER_CS,
            data: 0xdead,
            ..Default::default()
        },
    ])
    .expect("msrs");
    assert_eq!(vcpu.get_msrs(&mut msrs).expect("KVM_GET_MSRS"), 2);
    assert_eq!(msrs.as_slice()[0].data & 1, 1, "fast strings enabled");
    assert_eq!(msrs.as_slice()[1].data, 0);

    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_CPUID2");
    let leaf1 = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .expect("leaf 1");
    assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
    assert_eq!(leaf1.ebx >> 24, 0, "APIC id");
    let sig = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == KVM_CPUID_SIGNATURE)
        .expect("KVM signature leaf");
    assert_eq!(sig.ebx, u32::from_le_bytes(*b"KVMK"));
}

/// Runs a few instructions at the PVH entry point: proves KVM accepts the
/// 32-bit protected-mode state and that EBX carries the start_info address.
#[test]
fn kvm_vcpu_runs_in_protected_mode() {
    let kvm = open_kvm();
    let (_vm, mut vcpu, mem) = vm_with_vcpu(&kvm);
    let start_info =
        configure_pvh(&mem, GuestAddress(layout::CMDLINE_START), None).expect("configure_pvh");
    configure(&kvm, &vcpu, &mem, start_info);

    // mov eax, 0x12345678 ; out 0x10, eax ; mov eax, ebx ; out 0x11, eax ; hlt
    // In 16-bit mode the first instruction would decode as `mov ax, imm16`
    // and the first OUT would be 2 bytes wide.
    let code: [u8; 10] = [0xb8, 0x78, 0x56, 0x34, 0x12, 0xe7, 0x10, 0x89, 0xd8, 0xe7];
    let code = [&code[..], &[0x11, 0xf4]].concat();
    mem.write_slice(&code, GuestAddress(ENTRY))
        .expect("write code");

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => {
                let mut v = [0u8; 4];
                assert_eq!(data.len(), 4, "32-bit OUT expected, got {data:?}");
                v.copy_from_slice(data);
                seen.push((port, u32::from_le_bytes(v)));
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![(0x10, 0x1234_5678), (0x11, PVH_INFO_START as u32)]
    );
}
