//! CPUID filtering for moat vCPUs.
//!
//! Input is what `Kvm::get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)` returns;
//! [`filter_cpuid`] adapts a clone of it for one vCPU: APIC ids and topology
//! for `num_cpus` single-threaded cores in one package, the hypervisor bit,
//! the KVM paravirtual leaves (so the guest picks kvm-clock and skips the
//! delay-loop calibration that hangs under nested TCG), no PMU and no nested
//! virtualization. Every step is a small function over the entry slice so it
//! can be tested on a synthetic CPUID without `/dev/kvm`.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use thiserror::Error;

use super::layout::MAX_VCPUS;

/// Leaf 0x1 ECX: VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x1 ECX: TSC-deadline timer mode of the LAPIC.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x1 EDX: HTT (EBX\[23:16\] is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE_8B: u32 = 8;
/// Leaf 0x6 EAX: always-running APIC timer.
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX: SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;

/// Leaf 0xb / 0x1f level type: SMT.
const LEVEL_TYPE_SMT: u32 = 1;
/// Leaf 0xb / 0x1f level type: core.
const LEVEL_TYPE_CORE: u32 = 2;

/// KVM signature leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// KVM paravirtual feature leaf.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// Timing information leaf (TSC and APIC bus frequency in kHz).
pub const CPUID_TIMING_INFO: u32 = 0x4000_0010;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// KVM_FEATURE_CLOCKSOURCE (old kvm-clock MSRs).
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
/// KVM_FEATURE_CLOCKSOURCE2 (kvm-clock MSRs at 0x4b564d0x).
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// KVM_FEATURE_CLOCKSOURCE_STABLE_BIT.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
/// APIC bus frequency advertised in leaf 0x4000_0010 (KVM's LAPIC timer
/// ticks in nanoseconds, i.e. 1 GHz).
pub const APIC_BUS_KHZ: u32 = 1_000_000;

/// Errors from CPUID filtering.
#[derive(Debug, Error)]
pub enum CpuidError {
    /// `num_cpus` is 0 or larger than `MAX_VCPUS`.
    #[error("invalid vCPU count {0} (must be 1..={MAX_VCPUS})")]
    InvalidCpuCount(u8),
    /// `vcpu_id` is not below `num_cpus`.
    #[error("vCPU id {vcpu_id} out of range for {num_cpus} vCPUs")]
    InvalidVcpuId {
        /// The id passed.
        vcpu_id: u8,
        /// The vCPU count passed.
        num_cpus: u8,
    },
    /// The CPUID table is full and a leaf could not be added.
    #[error("cannot add CPUID leaf {0:#x}: {1:?}")]
    Push(u32, vmm_sys_util::fam::Error),
}

/// CPU vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else (or leaf 0 missing).
    Other,
}

/// Returns the vendor named by leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&e.edx.to_le_bytes());
    name[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Iterates mutably over the entries of `function` (all sub-leaves).
fn leaves(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
) -> impl Iterator<Item = &mut kvm_cpuid_entry2> {
    entries.iter_mut().filter(move |e| e.function == function)
}

/// Number of APIC id bits needed to number `n` cores: ceil(log2(n)).
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::from(n - 1).ilog2() + 1
    }
}

/// Leaf 0x1: APIC id, logical processor count, CLFLUSH size, HTT and the
/// hypervisor bit; VMX cleared.
pub fn update_leaf1(entries: &mut [kvm_cpuid_entry2], vcpu_id: u8, num_cpus: u8) {
    for e in leaves(entries, 0x1) {
        e.ebx = (u32::from(vcpu_id) << 24)
            | (u32::from(num_cpus) << 16)
            | (CLFLUSH_LINE_8B << 8)
            | (e.ebx & 0xff);
        e.ecx |= LEAF1_ECX_HYPERVISOR;
        e.ecx &= !LEAF1_ECX_VMX;
        if num_cpus > 1 {
            e.edx |= LEAF1_EDX_HTT;
        } else {
            e.edx &= !LEAF1_EDX_HTT;
        }
    }
}

/// Sets or clears the TSC-deadline bit of leaf 0x1. Pass
/// `kvm.check_extension(Cap::TscDeadlineTimer)` as `supported`.
pub fn set_tsc_deadline(cpuid: &mut CpuId, supported: bool) {
    for e in leaves(cpuid.as_mut_slice(), 0x1) {
        if supported {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        } else {
            e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Cache sharing field (`threads sharing - 1`) for a cache `level`:
/// L1/L2 are per core, L3 is shared by the whole package.
fn cache_sharing(level: u32, num_cpus: u8) -> u32 {
    if level >= 3 {
        u32::from(num_cpus) - 1
    } else {
        0
    }
}

/// Leaf 0x4 (Intel) and 0x8000_001d (AMD) deterministic cache parameters:
/// sharing consistent with `num_cpus` single-threaded cores.
pub fn update_cache_leaves(entries: &mut [kvm_cpuid_entry2], num_cpus: u8) {
    for e in leaves(entries, 0x4) {
        if e.eax & 0x1f == 0 {
            continue; // no more caches
        }
        let level = (e.eax >> 5) & 0x7;
        e.eax &= !((0x3f << 26) | (0xfff << 14));
        e.eax |= ((u32::from(num_cpus) - 1) & 0x3f) << 26;
        e.eax |= (cache_sharing(level, num_cpus) & 0xfff) << 14;
    }
    for e in leaves(entries, 0x8000_001d) {
        if e.eax & 0x1f == 0 {
            continue;
        }
        let level = (e.eax >> 5) & 0x7;
        e.eax &= !(0xfff << 14);
        e.eax |= (cache_sharing(level, num_cpus) & 0xfff) << 14;
    }
}

/// One sub-leaf of leaf 0xb / 0x1f for `num_cpus` single-threaded cores:
/// index 0 is the SMT level (1 thread), 1 the core level, 2 the
/// terminating invalid level.
fn topology_entry(function: u32, index: u32, vcpu_id: u8, num_cpus: u8) -> kvm_cpuid_entry2 {
    let (eax, ebx, level_type) = match index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (id_bits(num_cpus), u32::from(num_cpus), LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | (index & 0xff),
        edx: u32::from(vcpu_id),
        padding: [0; 3],
    }
}

/// Leaves 0xb and 0x1f, rebuilt as three sub-leaves: SMT level with one
/// thread, core level with `num_cpus` cores, terminator; x2APIC id =
/// `vcpu_id` in EDX of each. Leaf 0xb is provided whenever the basic range
/// (leaf 0 EAX) reaches it, even if KVM reported no usable levels; leaf
/// 0x1f only when KVM reported it.
pub fn update_extended_topology(
    cpuid: &mut CpuId,
    vcpu_id: u8,
    num_cpus: u8,
) -> Result<(), CpuidError> {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    for function in [0xb, 0x1f] {
        let present = cpuid.as_slice().iter().any(|e| e.function == function);
        let wanted = present || (function == 0xb && max_basic >= 0xb);
        if !wanted {
            continue;
        }
        cpuid.retain(|e| e.function != function);
        for index in 0..3 {
            cpuid
                .push(topology_entry(function, index, vcpu_id, num_cpus))
                .map_err(|err| CpuidError::Push(function, err))?;
        }
    }
    Ok(())
}

/// Leaf 0x6: keep only ARAT; HWP, energy-perf-bias, APERF/MPERF and the
/// rest are not emulated.
pub fn update_power_leaf(entries: &mut [kvm_cpuid_entry2]) {
    for e in leaves(entries, 0x6) {
        e.eax &= LEAF6_EAX_ARAT;
        e.ebx = 0;
        e.ecx = 0;
        e.edx = 0;
    }
}

/// Leaf 0xa: no architectural PMU, so the guest leaves perf MSRs alone.
pub fn disable_pmu(entries: &mut [kvm_cpuid_entry2]) {
    for e in leaves(entries, 0xa) {
        e.eax = 0;
        e.ebx = 0;
        e.ecx = 0;
        e.edx = 0;
    }
}

/// Leaf 0x8000_0001: clear SVM.
pub fn disable_svm(entries: &mut [kvm_cpuid_entry2]) {
    for e in leaves(entries, 0x8000_0001) {
        e.ecx &= !EXT1_ECX_SVM;
    }
}

/// AMD leaves 0x8000_0008 (core count) and 0x8000_001e (extended APIC id
/// and core id) consistent with `num_cpus` single-threaded cores.
pub fn update_amd_topology(entries: &mut [kvm_cpuid_entry2], vcpu_id: u8, num_cpus: u8) {
    for e in leaves(entries, 0x8000_0008) {
        // ECX[15:12] ApicIdSize, ECX[7:0] NC (cores - 1).
        e.ecx &= !(0xf << 12 | 0xff);
        e.ecx |= (id_bits(num_cpus) & 0xf) << 12;
        e.ecx |= u32::from(num_cpus) - 1;
    }
    for e in leaves(entries, 0x8000_001e) {
        e.eax = u32::from(vcpu_id);
        // EBX[15:8] threads per compute unit - 1 = 0, EBX[7:0] core id.
        e.ebx = u32::from(vcpu_id);
        // One node per package, node id 0.
        e.ecx = 0;
        e.edx = 0;
    }
}

/// Finds `function`, or appends a zeroed entry for it.
fn get_or_push(cpuid: &mut CpuId, function: u32) -> Result<&mut kvm_cpuid_entry2, CpuidError> {
    let pos = match cpuid.as_slice().iter().position(|e| e.function == function) {
        Some(pos) => pos,
        None => {
            cpuid
                .push(kvm_cpuid_entry2 {
                    function,
                    ..Default::default()
                })
                .map_err(|err| CpuidError::Push(function, err))?;
            cpuid.as_slice().len() - 1
        }
    };
    Ok(&mut cpuid.as_mut_slice()[pos])
}

/// KVM paravirtual leaves: signature leaf 0x4000_0000 with "KVMKVMKVM",
/// feature leaf 0x4000_0001 as KVM reports it (added with kvm-clock if
/// absent), and with `tsc_khz` the timing leaf 0x4000_0010
/// (EAX = TSC kHz, EBX = [`APIC_BUS_KHZ`]).
pub fn update_kvm_leaves(cpuid: &mut CpuId, tsc_khz: Option<u32>) -> Result<(), CpuidError> {
    let has_features = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == KVM_CPUID_FEATURES);
    if !has_features {
        // Every KVM with KVM_GET_SUPPORTED_CPUID implements kvm-clock.
        let f = get_or_push(cpuid, KVM_CPUID_FEATURES)?;
        f.eax = KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_CLOCKSOURCE2;
    }

    let mut max_leaf = KVM_CPUID_FEATURES;
    if let Some(khz) = tsc_khz {
        let t = get_or_push(cpuid, CPUID_TIMING_INFO)?;
        t.flags = 0;
        t.index = 0;
        t.eax = khz;
        t.ebx = APIC_BUS_KHZ;
        t.ecx = 0;
        t.edx = 0;
        max_leaf = CPUID_TIMING_INFO;
    }

    let sig = get_or_push(cpuid, KVM_CPUID_SIGNATURE)?;
    sig.flags = 0;
    sig.index = 0;
    sig.eax = sig.eax.max(max_leaf);
    [sig.ebx, sig.ecx, sig.edx] = KVM_SIGNATURE;
    Ok(())
}

/// Adapts `cpuid` (a clone of KVM's supported CPUID) for vCPU `vcpu_id` of
/// a VM with `num_cpus` vCPUs; see the module documentation. Call it once
/// per vCPU on a fresh clone, then `VcpuFd::set_cpuid2`.
///
/// `tsc_khz`, when known (e.g. `VcpuFd::get_tsc_khz`), is advertised in
/// leaf 0x4000_0010. The TSC-deadline bit is left as KVM reports it; use
/// [`set_tsc_deadline`] to set it from `KVM_CAP_TSC_DEADLINE_TIMER`.
pub fn filter_cpuid(
    cpuid: &mut CpuId,
    vcpu_id: u8,
    num_cpus: u8,
    tsc_khz: Option<u32>,
) -> Result<(), CpuidError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(CpuidError::InvalidCpuCount(num_cpus));
    }
    if vcpu_id >= num_cpus {
        return Err(CpuidError::InvalidVcpuId { vcpu_id, num_cpus });
    }
    let entries = cpuid.as_mut_slice();
    let vendor = vendor(entries);
    update_leaf1(entries, vcpu_id, num_cpus);
    update_cache_leaves(entries, num_cpus);
    update_power_leaf(entries);
    disable_pmu(entries);
    disable_svm(entries);
    if vendor == Vendor::Amd {
        update_amd_topology(entries, vcpu_id, num_cpus);
    }
    update_extended_topology(cpuid, vcpu_id, num_cpus)?;
    update_kvm_leaves(cpuid, tsc_khz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    /// Vendor string as (ebx, edx, ecx).
    fn vendor_regs(name: &[u8; 12]) -> [u32; 3] {
        let w = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
        [w(0), w(4), w(8)]
    }

    fn synthetic(vendor_name: &[u8; 12]) -> CpuId {
        let [vb, vd, vc] = vendor_regs(vendor_name);
        let entries = [
            leaf(0x0, 0, [0x1f, vb, vc, vd]),
            leaf(0x1, 0, [0x806f8, 0xff00_0800, LEAF1_ECX_VMX, 0]),
            // L1d, L2, L3 (level in EAX[7:5], type in EAX[4:0]), terminator.
            leaf(0x4, 0, [(1 << 5) | 1 | (0x3f << 26) | (1 << 14), 0, 0, 0]),
            leaf(0x4, 1, [(2 << 5) | 3, 0, 0, 0]),
            leaf(0x4, 2, [(3 << 5) | 3 | (0xfff << 14), 0, 0, 0]),
            leaf(0x4, 3, [0, 0, 0, 0]),
            leaf(0x6, 0, [0xffff_ffff, 1, 0xf, 1]),
            leaf(0xa, 0, [0x0804_8302, 0xff, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 16, 0x201, 7]),
            leaf(0xb, 2, [0, 0, 2, 7]),
            leaf(0x8000_0001, 0, [0, 0, EXT1_ECX_SVM | 1, 0]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0xf00f, 0]),
            leaf(0x8000_001e, 0, [5, 0x105, 0x103, 0]),
            leaf(KVM_CPUID_SIGNATURE, 0, [KVM_CPUID_FEATURES, 0, 0, 0]),
            leaf(KVM_CPUID_FEATURES, 0, [0x0100_00fb, 0, 0, 0]),
        ];
        CpuId::from_entries(&entries).expect("cpuid")
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(synthetic(b"GenuineIntel").as_slice()), Vendor::Intel);
        assert_eq!(vendor(synthetic(b"AuthenticAMD").as_slice()), Vendor::Amd);
        assert_eq!(vendor(synthetic(b"SomethingElz").as_slice()), Vendor::Other);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn id_bits_values() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(64), 6);
    }

    #[test]
    fn leaf1_fields() {
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 3, 4, None).expect("filter");
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_VMX, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 0, 1, None).expect("filter");
        assert_eq!(find(&c, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn tsc_deadline_toggle() {
        let mut c = synthetic(b"GenuineIntel");
        set_tsc_deadline(&mut c, true);
        assert_ne!(find(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut c, false);
        assert_eq!(find(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn cache_topology() {
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 1, 8, None).expect("filter");
        for (idx, sharing) in [(0, 0), (1, 0), (2, 7)] {
            let e = find(&c, 4, idx);
            assert_eq!(e.eax >> 26, 7, "cores per package - 1, subleaf {idx}");
            assert_eq!((e.eax >> 14) & 0xfff, sharing, "sharing, subleaf {idx}");
            assert_ne!(e.eax & 0x1f, 0, "cache type kept");
        }
        assert_eq!(find(&c, 4, 3).eax, 0);
    }

    #[test]
    fn extended_topology() {
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 5, 6, None).expect("filter");
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let inv = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!((inv.eax, inv.ebx, inv.ecx, inv.edx), (0, 0, 2, 5));
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn extended_topology_synthesized() {
        // Like KVM on a host without topology leaves: 0xb has only an
        // invalid sub-leaf 0, but the basic range reaches 0xb.
        let mut c =
            CpuId::from_entries(&[leaf(0x0, 0, [0x10, 0, 0, 0]), leaf(0xb, 0, [0, 0, 0, 1])])
                .expect("cpuid");
        filter_cpuid(&mut c, 1, 2, None).expect("filter");
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
        assert_eq!(find(&c, 0xb, 0).ecx, 0x100);
        assert_eq!(find(&c, 0xb, 2).ecx, 2);
        assert_ne!(find(&c, 0xb, 2).flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));

        // Basic range below 0xb: nothing added.
        let mut c = CpuId::from_entries(&[leaf(0x0, 0, [0xa, 0, 0, 0])]).expect("cpuid");
        filter_cpuid(&mut c, 0, 1, None).expect("filter");
        assert!(!c.as_slice().iter().any(|e| e.function == 0xb));
    }

    #[test]
    fn power_pmu_and_nesting_cleared() {
        let mut c = synthetic(b"AuthenticAMD");
        filter_cpuid(&mut c, 0, 2, None).expect("filter");
        let l6 = find(&c, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
        let la = find(&c, 0xa, 0);
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));
        let ext = find(&c, 0x8000_0001, 0);
        assert_eq!(ext.ecx, 1, "only SVM cleared");
    }

    #[test]
    fn amd_topology() {
        let mut c = synthetic(b"AuthenticAMD");
        filter_cpuid(&mut c, 2, 3, None).expect("filter");
        let e8 = find(&c, 0x8000_0008, 0);
        assert_eq!(e8.ecx & 0xff, 2);
        assert_eq!((e8.ecx >> 12) & 0xf, 2);
        let e1e = find(&c, 0x8000_001e, 0);
        assert_eq!((e1e.eax, e1e.ebx, e1e.ecx), (2, 2, 0));

        // Intel: AMD leaves untouched.
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 2, 3, None).expect("filter");
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, 0xf00f);
    }

    #[test]
    fn kvm_leaves_without_tsc() {
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 0, 1, None).expect("filter");
        let sig = find(&c, KVM_CPUID_SIGNATURE, 0);
        assert_eq!(sig.eax, KVM_CPUID_FEATURES);
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"KVMKVMKVM\0\0\0");
        assert_eq!(find(&c, KVM_CPUID_FEATURES, 0).eax, 0x0100_00fb);
        assert!(!c.as_slice().iter().any(|e| e.function == CPUID_TIMING_INFO));
    }

    #[test]
    fn kvm_leaves_with_tsc() {
        let mut c = synthetic(b"GenuineIntel");
        filter_cpuid(&mut c, 0, 1, Some(2_100_000)).expect("filter");
        assert_eq!(find(&c, KVM_CPUID_SIGNATURE, 0).eax, CPUID_TIMING_INFO);
        let t = find(&c, CPUID_TIMING_INFO, 0);
        assert_eq!((t.eax, t.ebx), (2_100_000, APIC_BUS_KHZ));
    }

    #[test]
    fn kvm_leaves_added_when_missing() {
        let mut c = CpuId::from_entries(&[leaf(0x1, 0, [0; 4])]).expect("cpuid");
        filter_cpuid(&mut c, 0, 1, None).expect("filter");
        let sig = find(&c, KVM_CPUID_SIGNATURE, 0);
        assert_eq!(
            [sig.eax, sig.ebx, sig.ecx, sig.edx],
            [
                KVM_CPUID_FEATURES,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2]
            ]
        );
        let f = find(&c, KVM_CPUID_FEATURES, 0).eax;
        assert_ne!(f & KVM_FEATURE_CLOCKSOURCE2, 0);
    }

    #[test]
    fn bad_arguments() {
        let mut c = synthetic(b"GenuineIntel");
        assert!(matches!(
            filter_cpuid(&mut c, 0, 0, None),
            Err(CpuidError::InvalidCpuCount(0))
        ));
        assert!(matches!(
            filter_cpuid(&mut c, 0, MAX_VCPUS + 1, None),
            Err(CpuidError::InvalidCpuCount(_))
        ));
        assert!(matches!(
            filter_cpuid(&mut c, 4, 4, None),
            Err(CpuidError::InvalidVcpuId { .. })
        ));
        // Max vCPUs still fits the 6-bit leaf 4 field.
        filter_cpuid(&mut c, MAX_VCPUS - 1, MAX_VCPUS, None).expect("filter");
        assert_eq!(find(&c, 4, 0).eax >> 26, u32::from(MAX_VCPUS) - 1);
    }
}
