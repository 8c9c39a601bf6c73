//! How big a pod's VM is. The VM is sized once, when the pod's first (sandbox) container boots
//! it; there is no CPU or memory hotplug, so later containers and `Update` change only the
//! guest cgroups inside that fixed VM.
//!
//! The rules, in order:
//! 1. the configured base: `[vm] vcpus` and `memory_mib` (room for the guest kernel, the agent
//!    and best-effort containers);
//! 2. plus the pod's limits when containerd's CRI passes them on the sandbox (containerd ≥ 1.7:
//!    `io.kubernetes.cri.sandbox-memory` in bytes, `io.kubernetes.cri.sandbox-cpu-quota` /
//!    `-cpu-period`): memory rounded up to MiB, vCPUs `ceil(quota / period)`; the sum is
//!    capped at `[vm] max_vcpus` / `max_memory_mib` (the limits themselves are still enforced
//!    by the guest cgroups);
//! 3. or, replacing both, the pod annotations `moat.vm.vcpus` / `moat.vm.memory_mib` (CRI passes
//!    them with `pod_annotations = ["moat.*"]`; `ctr run --annotation`), refused when
//!    `[vm] enable_annotations` is off or the value is out of range.

use serde_json::Value;

use moat_vmm_config::limits::MIN_MEMORY_MIB;

use crate::config::PodVmConfig;
use crate::pod::spec::annotation;

/// The pod annotation asking for a number of vCPUs.
pub const VCPUS_ANNOTATION: &str = "moat.vm.vcpus";
/// The pod annotation asking for guest memory, MiB.
pub const MEMORY_ANNOTATION: &str = "moat.vm.memory_mib";
/// CRI's pod memory limit on the sandbox container, bytes (containerd ≥ 1.7).
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI's pod CPU quota on the sandbox container, µs per period (containerd ≥ 1.7).
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CRI's pod CPU period on the sandbox container, µs (containerd ≥ 1.7).
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

const MIB: u64 = 1 << 20;

/// A refused sizing request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizingError {
    /// An annotation's value is not a number.
    #[error("annotation {key}={value:?}: not a non-negative integer")]
    NotANumber {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// An annotation asks for more (or less) than the configuration allows.
    #[error(
        "annotation {key}={value}: not in {min}..={max} (see [vm] max_vcpus / max_memory_mib)"
    )]
    OutOfRange {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// Sizing annotations are switched off.
    #[error("annotation {0} is not enabled ([vm] enable_annotations = false)")]
    Disabled(&'static str),
}

/// The size of one pod's VM, and how it was arrived at.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// What changed the configured base, for the log.
    pub notes: Vec<String>,
}

/// The VM size for a pod whose sandbox (or lone) container has OCI spec `spec`.
pub fn size_for(vm: &PodVmConfig, spec: &Value) -> Result<VmSize, SizingError> {
    let mut size = VmSize {
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        notes: Vec::new(),
    };
    let number = |key: &'static str| -> Result<Option<u64>, SizingError> {
        annotation(spec, key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| SizingError::NotANumber {
                        key,
                        value: v.into(),
                    })
            })
            .transpose()
    };
    cri_limits(vm, &number, &mut size)?;
    // 3. Explicit annotations replace the result, within range.
    let explicit = |key: &'static str, min: u64, max: u64| -> Result<Option<u64>, SizingError> {
        let Some(value) = number(key)? else {
            return Ok(None);
        };
        if !vm.enable_annotations {
            return Err(SizingError::Disabled(key));
        }
        if !(min..=max).contains(&value) {
            return Err(SizingError::OutOfRange {
                key,
                value,
                min,
                max,
            });
        }
        Ok(Some(value))
    };
    if let Some(v) = explicit(VCPUS_ANNOTATION, 1, u64::from(vm.max_vcpus()))? {
        size.vcpus = v as u32;
        size.notes.push(format!("{VCPUS_ANNOTATION}: {v} vCPUs"));
    }
    let min_mib = MIN_MEMORY_MIB;
    if let Some(v) = explicit(MEMORY_ANNOTATION, min_mib, vm.max_memory_mib())? {
        size.memory_mib = v;
        size.notes.push(format!("{MEMORY_ANNOTATION}: {v} MiB"));
    }
    Ok(size)
}

/// Step 2 of [`size_for`]: CRI's pod limits (containerd >= 1.7 annotations) on top of the
/// base, capped at the maxima. `number` reads an annotation as a number.
fn cri_limits(
    vm: &PodVmConfig,
    number: &dyn Fn(&'static str) -> Result<Option<u64>, SizingError>,
    size: &mut VmSize,
) -> Result<(), SizingError> {
    if let Some(bytes) = number(CRI_SANDBOX_MEMORY)?.filter(|b| *b > 0) {
        let want = vm.memory_mib.saturating_add(bytes.div_ceil(MIB));
        size.memory_mib = want.min(vm.max_memory_mib());
        size.notes.push(format!(
            "pod memory limit {} MiB: VM memory {} MiB{}",
            bytes.div_ceil(MIB),
            size.memory_mib,
            capped(want, size.memory_mib)
        ));
    }
    let quota = number(CRI_SANDBOX_CPU_QUOTA)?.filter(|q| *q > 0);
    let period = number(CRI_SANDBOX_CPU_PERIOD)?.filter(|p| *p > 0);
    if let (Some(quota), Some(period)) = (quota, period) {
        let extra = u32::try_from(quota.div_ceil(period)).unwrap_or(u32::MAX);
        let want = vm.vcpus.saturating_add(extra);
        size.vcpus = want.min(vm.max_vcpus());
        size.notes.push(format!(
            "pod CPU limit {quota}/{period}: {} vCPUs{}",
            size.vcpus,
            capped(u64::from(want), u64::from(size.vcpus))
        ));
    }
    Ok(())
}

fn capped(want: u64, got: u64) -> String {
    if want > got {
        format!(" (capped from {want})")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vm() -> PodVmConfig {
        PodVmConfig {
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: Some(4),
            max_memory_mib: Some(2048),
            ..PodVmConfig::default()
        }
    }

    fn spec(annotations: Value) -> Value {
        json!({ "annotations": annotations })
    }

    #[test]
    fn no_annotations_is_the_base() {
        let s = size_for(&vm(), &json!({})).unwrap();
        assert_eq!((s.vcpus, s.memory_mib, s.notes.len()), (1, 256, 0));
    }

    #[test]
    fn cri_pod_limits_add_to_the_base_and_are_capped() {
        let s = size_for(
            &vm(),
            &spec(json!({
                CRI_SANDBOX_MEMORY: "134217729",
                CRI_SANDBOX_CPU_QUOTA: "150000",
                CRI_SANDBOX_CPU_PERIOD: "100000",
            })),
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (3, 256 + 129));
        let s = size_for(
            &vm(),
            &spec(json!({
                CRI_SANDBOX_MEMORY: (8u64 << 30).to_string(),
                CRI_SANDBOX_CPU_QUOTA: "1000000",
                CRI_SANDBOX_CPU_PERIOD: "100000",
            })),
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (4, 2048));
        assert!(
            s.notes.iter().all(|n| n.contains("capped")),
            "{:?}",
            s.notes
        );
        // A quota without a period (or 0: unlimited) changes nothing.
        let s = size_for(&vm(), &spec(json!({ CRI_SANDBOX_CPU_QUOTA: "50000" }))).unwrap();
        assert_eq!(s.vcpus, 1);
    }

    #[test]
    fn annotations_replace_within_range() {
        let s = size_for(
            &vm(),
            &spec(json!({
                VCPUS_ANNOTATION: "2",
                MEMORY_ANNOTATION: "512",
                CRI_SANDBOX_MEMORY: "1048576",
            })),
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
        let e = size_for(&vm(), &spec(json!({ VCPUS_ANNOTATION: "5" }))).unwrap_err();
        assert!(
            e.to_string().contains("moat.vm.vcpus=5: not in 1..=4"),
            "{e}"
        );
        let e = size_for(&vm(), &spec(json!({ MEMORY_ANNOTATION: "16" }))).unwrap_err();
        assert!(
            matches!(e, SizingError::OutOfRange { min, .. } if min == MIN_MEMORY_MIB),
            "{e}"
        );
        let e = size_for(&vm(), &spec(json!({ MEMORY_ANNOTATION: "lots" }))).unwrap_err();
        assert!(e.to_string().contains("\"lots\""), "{e}");
        let e = size_for(&vm(), &spec(json!({ CRI_SANDBOX_MEMORY: "-1" }))).unwrap_err();
        assert!(matches!(e, SizingError::NotANumber { .. }), "{e}");
    }

    #[test]
    fn annotations_can_be_switched_off() {
        let vm = PodVmConfig {
            enable_annotations: false,
            ..vm()
        };
        let e = size_for(&vm, &spec(json!({ VCPUS_ANNOTATION: "2" }))).unwrap_err();
        assert_eq!(e, SizingError::Disabled(VCPUS_ANNOTATION));
        // CRI's own limits still apply.
        let s = size_for(&vm, &spec(json!({ CRI_SANDBOX_MEMORY: "1048576" }))).unwrap();
        assert_eq!(s.memory_mib, 257);
    }
}
