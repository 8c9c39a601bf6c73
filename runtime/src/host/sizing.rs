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
//!    `[vm] enable_annotations` is off (the default), when the value is out of range, or when
//!    it exceeds the pod's own limit where that is known: CRI's annotations above, else (with
//!    containerd 1.6, which passes them nowhere else) the memory limit and CPU quota of the
//!    kubelet's pod cgroup ([`crate::host::cgroup::parent_limits`]). A pod author gets no
//!    more than Kubernetes granted the pod: memory at most the limit (MiB, rounded down),
//!    vCPUs at most `ceil(quota / period)`.

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
    /// An annotation asks for more than the pod's own limit.
    #[error("annotation {key}={value}: exceeds the pod's limit of {limit} {unit} ({source_of})")]
    OverPodLimit {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The limit, in the annotation's unit.
        limit: u64,
        /// That unit (`MiB`, `vCPUs`).
        unit: &'static str,
        /// Where the limit was read.
        source_of: String,
    },
    /// Sizing annotations are switched off.
    #[error("annotation {0} is not enabled ([vm] enable_annotations = false)")]
    Disabled(&'static str),
}

/// A CPU limit: `quota` µs of CPU time per `period` µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// µs per period.
    pub quota: u64,
    /// The period, µs.
    pub period: u64,
}

impl CpuQuota {
    /// The vCPUs it amounts to: `ceil(quota / period)`.
    pub fn vcpus(&self) -> u64 {
        self.quota.div_ceil(self.period.max(1))
    }
}

/// A pod's limits as Kubernetes set them, where known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU.
    pub cpu: Option<CpuQuota>,
    /// Where they were read, for messages.
    pub source: String,
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

/// Reads an annotation of a spec as a number.
type Number<'a> = dyn Fn(&'static str) -> Result<Option<u64>, SizingError> + 'a;

/// The VM size for a pod whose sandbox (or lone) container has OCI spec `spec`;
/// `pod_cgroup` are the limits of the kubelet's pod cgroup, if known (the ceiling of the
/// annotations when CRI's own are absent).
pub fn size_for(
    vm: &PodVmConfig,
    spec: &Value,
    pod_cgroup: Option<&PodLimits>,
) -> Result<VmSize, SizingError> {
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
    let cri = cri_limits(&number)?;
    add_cri_limits(vm, &cri, &mut size);
    // 3. Explicit annotations replace the result, within range and the pod's limits.
    let memory_limit = cri
        .memory_bytes
        .map(|b| (b, &cri.source))
        .or_else(|| pod_cgroup.and_then(|l| Some((l.memory_bytes?, &l.source))));
    let cpu_limit = cri
        .cpu
        .map(|q| (q, &cri.source))
        .or_else(|| pod_cgroup.and_then(|l| Some((l.cpu?, &l.source))));
    let vcpus = Explicit {
        key: VCPUS_ANNOTATION,
        min: 1,
        max: u64::from(vm.max_vcpus()),
        limit: cpu_limit.map(|(q, s)| (q.vcpus(), "vCPUs", s.clone())),
    };
    if let Some(v) = vcpus.read(vm, &number)? {
        size.vcpus = v as u32;
        size.notes.push(format!("{VCPUS_ANNOTATION}: {v} vCPUs"));
    }
    let memory = Explicit {
        key: MEMORY_ANNOTATION,
        min: MIN_MEMORY_MIB,
        max: vm.max_memory_mib(),
        limit: memory_limit.map(|(b, s)| (b / MIB, "MiB", s.clone())),
    };
    if let Some(v) = memory.read(vm, &number)? {
        size.memory_mib = v;
        size.notes.push(format!("{MEMORY_ANNOTATION}: {v} MiB"));
    }
    Ok(size)
}

/// One explicit sizing annotation and what bounds it.
struct Explicit {
    key: &'static str,
    min: u64,
    max: u64,
    /// The pod's limit in the annotation's unit, the unit, where it was read.
    limit: Option<(u64, &'static str, String)>,
}

impl Explicit {
    /// The annotation's value, if set, enabled, in range and within the pod's limit.
    fn read(self, vm: &PodVmConfig, number: &Number<'_>) -> Result<Option<u64>, SizingError> {
        let key = self.key;
        let Some(value) = number(key)? else {
            return Ok(None);
        };
        if !vm.enable_annotations {
            return Err(SizingError::Disabled(key));
        }
        if !(self.min..=self.max).contains(&value) {
            return Err(SizingError::OutOfRange {
                key,
                value,
                min: self.min,
                max: self.max,
            });
        }
        match self.limit {
            Some((limit, unit, source_of)) if value > limit => Err(SizingError::OverPodLimit {
                key,
                value,
                limit,
                unit,
                source_of,
            }),
            _ => Ok(Some(value)),
        }
    }
}

/// CRI's pod limits on the sandbox (containerd >= 1.7 annotations; 0 is no limit).
fn cri_limits(number: &Number<'_>) -> Result<PodLimits, SizingError> {
    let quota = number(CRI_SANDBOX_CPU_QUOTA)?.filter(|q| *q > 0);
    let period = number(CRI_SANDBOX_CPU_PERIOD)?.filter(|p| *p > 0);
    Ok(PodLimits {
        memory_bytes: number(CRI_SANDBOX_MEMORY)?.filter(|b| *b > 0),
        cpu: quota
            .zip(period)
            .map(|(quota, period)| CpuQuota { quota, period }),
        source: "CRI's sandbox annotations".into(),
    })
}

/// Step 2 of [`size_for`]: CRI's pod limits on top of the base, capped at the maxima.
fn add_cri_limits(vm: &PodVmConfig, cri: &PodLimits, size: &mut VmSize) {
    if let Some(bytes) = cri.memory_bytes {
        let want = vm.memory_mib.saturating_add(bytes.div_ceil(MIB));
        size.memory_mib = want.min(vm.max_memory_mib());
        size.notes.push(format!(
            "pod memory limit {} MiB: VM memory {} MiB{}",
            bytes.div_ceil(MIB),
            size.memory_mib,
            capped(want, size.memory_mib)
        ));
    }
    if let Some(q) = cri.cpu {
        let extra = u32::try_from(q.vcpus()).unwrap_or(u32::MAX);
        let want = vm.vcpus.saturating_add(extra);
        size.vcpus = want.min(vm.max_vcpus());
        size.notes.push(format!(
            "pod CPU limit {}/{}: {} vCPUs{}",
            q.quota,
            q.period,
            size.vcpus,
            capped(u64::from(want), u64::from(size.vcpus))
        ));
    }
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
            enable_annotations: true,
            ..PodVmConfig::default()
        }
    }

    fn spec(annotations: Value) -> Value {
        json!({ "annotations": annotations })
    }

    #[test]
    fn no_annotations_is_the_base() {
        let s = size_for(&vm(), &json!({}), None).unwrap();
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
            None,
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
            None,
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (4, 2048));
        assert!(
            s.notes.iter().all(|n| n.contains("capped")),
            "{:?}",
            s.notes
        );
        // A quota without a period (or 0: unlimited) changes nothing.
        let s = size_for(
            &vm(),
            &spec(json!({ CRI_SANDBOX_CPU_QUOTA: "50000" })),
            None,
        )
        .unwrap();
        assert_eq!(s.vcpus, 1);
    }

    #[test]
    fn annotations_replace_within_range() {
        let s = size_for(
            &vm(),
            &spec(json!({
                VCPUS_ANNOTATION: "2",
                MEMORY_ANNOTATION: "512",
                CRI_SANDBOX_MEMORY: "1073741824",
            })),
            None,
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
        let e = size_for(&vm(), &spec(json!({ VCPUS_ANNOTATION: "5" })), None).unwrap_err();
        assert!(
            e.to_string().contains("moat.vm.vcpus=5: not in 1..=4"),
            "{e}"
        );
        let e = size_for(&vm(), &spec(json!({ MEMORY_ANNOTATION: "16" })), None).unwrap_err();
        assert!(
            matches!(e, SizingError::OutOfRange { min, .. } if min == MIN_MEMORY_MIB),
            "{e}"
        );
        let e = size_for(&vm(), &spec(json!({ MEMORY_ANNOTATION: "lots" })), None).unwrap_err();
        assert!(e.to_string().contains("\"lots\""), "{e}");
        let e = size_for(&vm(), &spec(json!({ CRI_SANDBOX_MEMORY: "-1" })), None).unwrap_err();
        assert!(matches!(e, SizingError::NotANumber { .. }), "{e}");
    }

    #[test]
    fn annotations_are_off_by_default() {
        let e = size_for(
            &PodVmConfig::default(),
            &spec(json!({ MEMORY_ANNOTATION: "512" })),
            None,
        )
        .unwrap_err();
        assert_eq!(e, SizingError::Disabled(MEMORY_ANNOTATION));
    }

    fn cgroup_limits(memory_mib: Option<u64>, cpu: Option<(u64, u64)>) -> PodLimits {
        PodLimits {
            memory_bytes: memory_mib.map(|m| m * MIB),
            cpu: cpu.map(|(quota, period)| CpuQuota { quota, period }),
            source: "pod cgroup /kubepods/pod1".into(),
        }
    }

    #[test]
    fn annotations_stay_within_cri_pod_limits() {
        let limited = |extra: Value| {
            let mut a = json!({
                CRI_SANDBOX_MEMORY: (512u64 << 20).to_string(),
                CRI_SANDBOX_CPU_QUOTA: "150000",
                CRI_SANDBOX_CPU_PERIOD: "100000",
            });
            a.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec(a)
        };
        // At the limit: allowed (1.5 CPUs allow 2 vCPUs).
        let s = size_for(
            &vm(),
            &limited(json!({ MEMORY_ANNOTATION: "512", VCPUS_ANNOTATION: "2" })),
            None,
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
        let e = size_for(&vm(), &limited(json!({ MEMORY_ANNOTATION: "513" })), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation moat.vm.memory_mib=513: exceeds the pod's limit of 512 MiB \
             (CRI's sandbox annotations)"
        );
        let e = size_for(&vm(), &limited(json!({ VCPUS_ANNOTATION: "3" })), None).unwrap_err();
        assert!(
            matches!(
                e,
                SizingError::OverPodLimit {
                    value: 3,
                    limit: 2,
                    unit: "vCPUs",
                    ..
                }
            ),
            "{e}"
        );
        // CRI's limits win over the pod cgroup's.
        let roomy = cgroup_limits(Some(2048), Some((400_000, 100_000)));
        let e = size_for(
            &vm(),
            &limited(json!({ MEMORY_ANNOTATION: "1024" })),
            Some(&roomy),
        )
        .unwrap_err();
        assert!(e.to_string().contains("limit of 512 MiB"), "{e}");
    }

    #[test]
    fn annotations_stay_within_the_pod_cgroup_limits() {
        // containerd 1.6: no CRI annotations, the kubelet's pod cgroup has the limits.
        let pod = cgroup_limits(Some(300), Some((50_000, 100_000)));
        let s = size_for(
            &vm(),
            &spec(json!({ MEMORY_ANNOTATION: "300", VCPUS_ANNOTATION: "1" })),
            Some(&pod),
        )
        .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (1, 300));
        let e = size_for(
            &vm(),
            &spec(json!({ MEMORY_ANNOTATION: "1024" })),
            Some(&pod),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("moat.vm.memory_mib=1024")
                && msg.contains("300 MiB")
                && msg.contains("pod cgroup /kubepods/pod1"),
            "{msg}"
        );
        let e = size_for(&vm(), &spec(json!({ VCPUS_ANNOTATION: "2" })), Some(&pod)).unwrap_err();
        assert!(e.to_string().contains("limit of 1 vCPUs"), "{e}");
        // Only what is known bounds: a memory-only limit leaves vCPUs to the maxima.
        let memory_only = cgroup_limits(Some(300), None);
        let s = size_for(
            &vm(),
            &spec(json!({ VCPUS_ANNOTATION: "4" })),
            Some(&memory_only),
        );
        assert_eq!(s.unwrap().vcpus, 4);
        // The pod cgroup's limits do not size the VM by themselves (they include overhead).
        let s = size_for(&vm(), &json!({}), Some(&pod)).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (1, 256));
    }

    #[test]
    fn annotations_can_be_switched_off() {
        let vm = PodVmConfig {
            enable_annotations: false,
            ..vm()
        };
        let e = size_for(&vm, &spec(json!({ VCPUS_ANNOTATION: "2" })), None).unwrap_err();
        assert_eq!(e, SizingError::Disabled(VCPUS_ANNOTATION));
        // CRI's own limits still apply.
        let s = size_for(&vm, &spec(json!({ CRI_SANDBOX_MEMORY: "1048576" })), None).unwrap();
        assert_eq!(s.memory_mib, 257);
    }
}
