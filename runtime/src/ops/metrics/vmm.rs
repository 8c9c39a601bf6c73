//! moat-vmm's metrics file (vmm/SPECIFICATION.md, "Metrics") as Prometheus series.
//!
//! Its boot figures, RSS and vCPU exits become named series; each device section (a list of
//! objects, or one object) becomes one counter per numeric field,
//! `moat_vmm_<device>_<field>_total`, labelled by the section's string fields (`backend`,
//! `mac`, ...) and, for lists, the device's index.

use std::collections::BTreeMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::Value;

use super::{gauge, FCounter};

/// The device sections of the file.
const DEVICES: [&str; 5] = ["net", "blk", "vsock", "fs", "rng"];

/// What the shim reads from the metrics file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VmmFigures {
    /// Which flush this is (grows with every rewrite).
    pub seq: u64,
    /// Microseconds since the VMM started.
    pub uptime_us: Option<u64>,
    /// Microseconds from VMM start to the first KVM_RUN.
    pub first_kvm_run_us: Option<u64>,
    /// Microseconds from VMM start to the guest's /init.
    pub guest_init_us: Option<u64>,
    /// The VMM's resident memory without guest RAM, KiB.
    pub rss_excl_guest_kib: Option<u64>,
    /// KVM exits by reason, summed over the vCPUs.
    pub vcpu_exits: BTreeMap<String, u64>,
    /// Everything else, device sections among it.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl VmmFigures {
    /// Parses the file's text.
    pub fn parse(text: &[u8]) -> Result<VmmFigures, serde_json::Error> {
        serde_json::from_slice(text)
    }
}

/// Registers the VMM's series.
pub(super) fn register(r: &mut Registry, v: &VmmFigures) {
    let us = |v: Option<u64>| v.map(|us| us as f64 / 1e6);
    let timings = [
        (
            "moat_vmm_uptime_seconds",
            "Seconds since moat-vmm started",
            us(v.uptime_us),
        ),
        (
            "moat_vmm_first_kvm_run_seconds",
            "Seconds from moat-vmm's start to the first KVM_RUN",
            us(v.first_kvm_run_us),
        ),
        (
            "moat_vmm_guest_init_seconds",
            "Seconds from moat-vmm's start to the guest's /init",
            us(v.guest_init_us),
        ),
        (
            "moat_vmm_rss_excl_guest_bytes",
            "moat-vmm's resident memory without guest RAM",
            v.rss_excl_guest_kib.map(|k| (k << 10) as f64),
        ),
    ];
    for (name, help, value) in timings {
        if let Some(value) = value {
            gauge(r, name, help, value);
        }
    }
    let exits = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, n) in &v.vcpu_exits {
        exits
            .get_or_create(&vec![("reason".into(), reason.clone())])
            .inc_by(*n);
    }
    let help = "KVM_RUN exits of all vCPUs, by reason";
    r.register("moat_vmm_vcpu_exits", help, exits);
    for device in DEVICES {
        if let Some(section) = v.rest.get(device) {
            register_device(r, device, section);
        }
    }
}

/// One counter family per numeric field of a device section.
fn register_device(r: &mut Registry, device: &str, section: &Value) {
    let items: Vec<(Option<usize>, &serde_json::Map<String, Value>)> = match section {
        Value::Array(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((Some(i), v.as_object()?)))
            .collect(),
        Value::Object(o) => vec![(None, o)],
        _ => return,
    };
    let mut families: BTreeMap<String, Family<Vec<(String, String)>, FCounter>> = BTreeMap::new();
    for (index, fields) in items {
        let mut labels: Vec<(String, String)> = index
            .map(|i| ("device".to_string(), i.to_string()))
            .into_iter()
            .collect();
        labels.extend(
            fields
                .iter()
                .filter_map(|(k, v)| Some((metric_part(k)?, v.as_str()?.to_string()))),
        );
        for (field, value) in fields {
            let (Some(field), Some(n)) = (metric_part(field), value.as_u64()) else {
                continue;
            };
            families
                .entry(field)
                .or_default()
                .get_or_create(&labels)
                .inc_by(n as f64);
        }
    }
    for (field, family) in families {
        let help = format!("moat-vmm's virtio-{device} counter {field}");
        r.register(format!("moat_vmm_{device}_{field}"), help, family);
    }
}

/// `name` when it is a safe metric name part (`[a-z0-9_]`, at most 64).
fn metric_part(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then(|| name.to_string())
}
