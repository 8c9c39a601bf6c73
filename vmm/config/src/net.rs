//! virtio-net devices with a host TAP backend.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_MTU, MAX_NET_DEVICES, MIN_INHERITED_FD, MIN_MTU};
use crate::tap::{check_tap_fd, valid_ifname};
use crate::{check_range, ConfigError, MacAddr};

/// One virtio-net device with a host TAP backend: exactly one of `tap` (an interface name,
/// opened by the VMM) or `fd` (an inherited fd of a TAP queue opened with
/// `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, so the VMM needs no CAP_NET_ADMIN). Command-line form:
/// `tap=NAME[,mac=02:..][,mtu=N]` or `fd=N[,mac=..][,mtu=N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetDeviceConfig {
    /// The TAP interface to attach to (created, transient, if missing and the VMM has
    /// CAP_NET_ADMIN).
    pub tap: Option<String>,
    /// An inherited TAP queue fd (3 or more); the VMM takes it over.
    pub fd: Option<i32>,
    /// The guest's MAC address (unicast); a random locally administered one when absent.
    pub mac: Option<MacAddr>,
    /// MTU announced to the guest with VIRTIO_NET_F_MTU ([`MIN_MTU`]..=[`MAX_MTU`]); not
    /// announced when absent (the guest uses 1500).
    pub mtu: Option<u16>,
}

impl FromStr for NetDeviceConfig {
    type Err = String;

    /// Parses the command-line form `tap=NAME|fd=N[,mac=MAC][,mtu=N]`.
    fn from_str(s: &str) -> Result<NetDeviceConfig, String> {
        fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
            match slot.replace(value) {
                Some(_) => Err(format!("net option {key} given twice")),
                None => Ok(()),
            }
        }
        let mut cfg = NetDeviceConfig::default();
        for opt in s.split(',') {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| format!("expected KEY=VALUE, got {opt:?}"))?;
            let number = |what| format!("net {key}: {value:?} is not a valid {what}");
            match key {
                "tap" => set(&mut cfg.tap, key, value.to_string())?,
                "fd" => set(&mut cfg.fd, key, value.parse().map_err(|_| number("fd"))?)?,
                "mac" => set(
                    &mut cfg.mac,
                    key,
                    value.parse().map_err(|e| format!("{e}"))?,
                )?,
                "mtu" => set(&mut cfg.mtu, key, value.parse().map_err(|_| number("MTU"))?)?,
                _ => {
                    return Err(format!(
                        "unknown net option {key:?} (expected tap, fd, mac or mtu)"
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

/// Checks the virtio-net devices (see [`crate::ValidConfig::net_devices`]).
pub(crate) fn check_net_devices(devices: &[NetDeviceConfig]) -> Result<(), ConfigError> {
    check_range(
        "net_devices (count)",
        devices.len() as u64,
        0,
        MAX_NET_DEVICES as u64,
    )?;
    for (index, dev) in devices.iter().enumerate() {
        let bad = |field, why: String| ConfigError::Net { index, field, why };
        check_backend(dev, &devices[..index]).map_err(|(field, why)| bad(field, why))?;
        if let Some(mac) = dev.mac {
            mac.check_unicast().map_err(|e| bad("mac", e.to_string()))?;
        }
        if let Some(mtu) = dev.mtu.filter(|m| !(MIN_MTU..=MAX_MTU).contains(m)) {
            return Err(bad(
                "mtu",
                format!("{mtu} is out of range ({MIN_MTU}..={MAX_MTU})"),
            ));
        }
    }
    Ok(())
}

/// Checks that `dev` names exactly one backend, valid and not used by an `earlier` device;
/// the error names the field at fault.
fn check_backend(
    dev: &NetDeviceConfig,
    earlier: &[NetDeviceConfig],
) -> Result<(), (&'static str, String)> {
    match (&dev.tap, dev.fd) {
        (Some(name), None) => {
            if !valid_ifname(name) {
                return Err((
                    "tap",
                    format!("{name:?} must be 1..=15 bytes without '/', ':' or spaces"),
                ));
            }
            if earlier.iter().any(|d| d.tap.as_ref() == Some(name)) {
                return Err(("tap", format!("{name} used twice")));
            }
        }
        (None, Some(fd)) => {
            if fd < MIN_INHERITED_FD {
                return Err(("fd", format!("{fd} is stdio; give an fd of 3 or more")));
            }
            if earlier.iter().any(|d| d.fd == Some(fd)) {
                return Err(("fd", format!("{fd} used twice")));
            }
            check_tap_fd(fd).map_err(|e| ("fd", e.to_string()))?;
        }
        (Some(_), Some(_)) => return Err(("tap", "give tap or fd, not both".into())),
        (None, None) => return Err(("tap", "give tap=NAME or fd=N".into())),
    }
    Ok(())
}
