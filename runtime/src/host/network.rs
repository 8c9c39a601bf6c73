//! The pod's network, moved into its VM the way Kata does it.
//!
//! CNI (or whoever made the pod's network namespace) gave the namespace an interface
//! (`eth0`: a veth end, an address, routes). At pod boot, on a thread that joined that
//! namespace, the shim reads the interface, then connects a TAP to it: a bridge
//! ([`BRIDGE_NAME`]) with the interface and the TAP ([`TAP_NAME`]) as ports. The interface's
//! addresses move into the guest (its routes go with them) and it gets a fresh random
//! locally administered MAC, since the guest's NIC takes over its original MAC and MTU
//! (`moat-vmm --net fd=N,mac=..,mtu=..`); after the agent is up the guest's NIC gets the
//! addresses and routes (`UpdateInterface`, `UpdateRoutes`). A bridge, not tc mirroring,
//! because that is what every kernel moat runs on has.
//!
//! What was changed is recorded in the pod directory ([`RECORD_FILE`]) before anything is
//! changed, so teardown — also `delete` after a dead shim — puts the namespace back: the
//! bridge goes, the interface gets its MAC, addresses and routes again. The namespace itself
//! belongs to its creator. The TAP needs no removal: it goes with the last open queue fd.

mod tap;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use moat_agent_protocol::net::{self as pnet, InterfaceSpec, IpNet, RouteSpec};
use moat_netlink::{Address, Link, LinkChange, Netlink, NetlinkError, Route, RouteScope};
use serde::{Deserialize, Serialize};

use crate::host::netns::{self, NetnsError};
use crate::host::record;
use crate::vm::VmNic;

pub use tap::inheritable;

/// The bridge made in the pod's network namespace.
pub const BRIDGE_NAME: &str = "moat-br0";
/// The TAP made in the pod's network namespace.
pub const TAP_NAME: &str = "moat-tap0";
/// What was changed, in the pod directory.
pub const RECORD_FILE: &str = "network.json";

/// Errors setting up (or reading) the pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network namespace could not be joined.
    #[error("joining network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The namespace is the shim's own (the host's): moving its interface into a VM would
    /// take the host off its network.
    #[error("network namespace {0} is the host's own: moat pods cannot use host networking")]
    HostNetns(PathBuf),
    /// A thread for the namespace could not be started.
    #[error("starting the network-namespace thread: {0}")]
    Thread(std::io::Error),
    /// Several candidate interfaces and none named `eth0`.
    #[error("network namespace {path} has several interfaces ({names}) and none is eth0")]
    Ambiguous {
        /// The namespace.
        path: PathBuf,
        /// Their names.
        names: String,
    },
    /// The namespace already has moat's bridge: another pod's, or a leftover.
    #[error("network namespace {0} already has a {BRIDGE_NAME}: is another moat pod using it?")]
    Busy(PathBuf),
    /// A netlink request failed.
    #[error("pod network in {path}: {source}")]
    Netlink {
        /// The namespace.
        path: PathBuf,
        /// The failed request.
        source: NetlinkError,
    },
    /// The TAP could not be created.
    #[error("creating tap {TAP_NAME} in {path}: {source}")]
    Tap {
        /// The namespace.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The record could not be written.
    #[error("writing {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the shim changed in a pod's network namespace, to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    /// The namespace's path.
    pub netns: PathBuf,
    /// The interface's name and index.
    pub interface: String,
    /// Its index.
    pub index: u32,
    /// Its original MAC (the guest NIC's).
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// The addresses moved into the guest.
    pub addresses: Vec<Address>,
    /// Its routes (that vanished with the addresses).
    pub routes: Vec<Route>,
}

/// The guest side of the pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// The NIC's MAC (`--net mac=`).
    pub mac: [u8; 6],
    /// Its MTU (`--net mtu=`).
    pub mtu: u32,
    /// `UpdateInterface` for it.
    pub interface: InterfaceSpec,
    /// `UpdateRoutes` after it.
    pub routes: Vec<RouteSpec>,
}

/// A pod network set up in its namespace.
#[derive(Debug)]
pub struct PodNetwork {
    /// What was changed.
    pub record: NetRecord,
    /// The guest's side.
    pub guest: GuestNic,
    tap: Option<OwnedFd>,
    record_path: PathBuf,
}

/// Runs `f` on a fresh thread that joined network namespace `netns` ([`netns::run_in`]).
fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    netns::run_in(netns, f).map_err(|e| match e {
        NetnsError::Join { path, source } => NetworkError::Netns { path, source },
        NetnsError::Thread(e) | NetnsError::Unshare(e) => NetworkError::Thread(e),
    })?
}

/// Whether `netns` is the network namespace the shim itself runs in.
fn is_own_netns(netns: &Path) -> Result<bool, NetworkError> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| NetworkError::Netns {
                path: p.to_path_buf(),
                source,
            })
    };
    Ok(id(netns)? == id(Path::new("/proc/self/ns/net"))?)
}

/// The interface to move into the guest: `eth0`, else the only one that is not loopback
/// and not moat's own; `None` when there is none.
fn pick_interface(netns: &Path, links: &[Link]) -> Result<Option<Link>, NetworkError> {
    if links.iter().any(|l| l.name == BRIDGE_NAME) {
        return Err(NetworkError::Busy(netns.to_path_buf()));
    }
    let candidates: Vec<&Link> = links
        .iter()
        .filter(|l| !l.loopback && l.mac.is_some() && l.name != TAP_NAME)
        .collect();
    if let Some(eth0) = candidates.iter().find(|l| l.name == "eth0") {
        return Ok(Some((*eth0).clone()));
    }
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(NetworkError::Ambiguous {
            path: netns.to_path_buf(),
            names: many
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The addresses and routes of `link` that move into the guest: not link-local, and routes
/// through it that the kernel does not re-create from an address.
fn what_moves(link: &Link, addrs: Vec<Address>, routes: Vec<Route>) -> (Vec<Address>, Vec<Route>) {
    let addrs = addrs
        .into_iter()
        .filter(|a| a.index == link.index && !a.local_scope)
        .collect();
    let routes = routes
        .into_iter()
        .filter(|r| r.oif == Some(link.index) && !r.kernel)
        .filter(|r| !matches!(r.dst, Some((std::net::IpAddr::V6(a), _)) if a.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    (addrs, routes)
}

/// The guest side of `record`: the NIC keeps the interface's name, MAC and MTU.
fn guest_of(record: &NetRecord) -> Result<GuestNic, pnet::NetSpecError> {
    let interface = InterfaceSpec {
        mac: Some(record.mac),
        name: String::new(),
        new_name: record.interface.clone(),
        mtu: record.mtu,
        addresses: record
            .addresses
            .iter()
            .map(|a| IpNet::new(a.addr, a.prefix.into()))
            .collect::<Result<_, _>>()?,
        up: true,
    };
    let routes: Vec<RouteSpec> = record
        .routes
        .iter()
        .map(|r| {
            Ok(RouteSpec {
                dest: r.dst.map(|(a, p)| IpNet::new(a, p.into())).transpose()?,
                gateway: r.gateway,
                device: record.interface.clone(),
                scope: match r.scope {
                    RouteScope::Universe => pnet::Scope::Universe,
                    RouteScope::Link => pnet::Scope::Link,
                    RouteScope::Host => pnet::Scope::Host,
                },
                ipv6: r.ipv6,
            })
        })
        .collect::<Result<_, pnet::NetSpecError>>()?;
    interface.validate()?;
    routes.iter().try_for_each(RouteSpec::validate)?;
    // Bounded like the requests: a namespace with more is refused now, not half-applied later.
    if routes.len() > pnet::MAX_ROUTES {
        return Err(pnet::NetSpecError(format!(
            "{} routes through {}, at most {}",
            routes.len(),
            record.interface,
            pnet::MAX_ROUTES
        )));
    }
    Ok(GuestNic {
        mac: record.mac,
        mtu: record.mtu,
        interface,
        routes,
    })
}

impl PodNetwork {
    /// Reads the interface of network namespace `netns` and connects a TAP to it (see the
    /// module doc), recording what it changes in `record_path` first. `Ok(None)`: the
    /// namespace has no interface to move (loopback only): the pod gets no NIC. On failure
    /// the namespace is as it was and no record is left.
    pub fn setup(netns: &Path, record_path: &Path) -> Result<Option<PodNetwork>, NetworkError> {
        let nl_err = |source| NetworkError::Netlink {
            path: netns.to_path_buf(),
            source,
        };
        if is_own_netns(netns)? {
            return Err(NetworkError::HostNetns(netns.to_path_buf()));
        }
        in_netns(netns, || {
            let mut nl = Netlink::open().map_err(nl_err)?;
            let links = nl.links().map_err(nl_err)?;
            let Some(link) = pick_interface(netns, &links)? else {
                return Ok(None);
            };
            let (addresses, routes) = what_moves(
                &link,
                nl.addresses().map_err(nl_err)?,
                nl.routes().map_err(nl_err)?,
            );
            let record = NetRecord {
                netns: netns.to_path_buf(),
                interface: link.name.clone(),
                index: link.index,
                mac: link.mac.expect("picked with a MAC"),
                mtu: link.mtu,
                addresses,
                routes,
            };
            let guest = guest_of(&record).map_err(|e| NetworkError::Netlink {
                path: netns.to_path_buf(),
                source: NetlinkError::Decode {
                    op: format!("reading {}", link.name),
                    detail: e.to_string(),
                },
            })?;
            write_record(record_path, &record)?;
            match connect(&mut nl, &record) {
                Ok(tap) => Ok(Some(PodNetwork {
                    record,
                    guest,
                    tap: Some(tap),
                    record_path: record_path.to_path_buf(),
                })),
                Err(e) => {
                    restore(&mut nl, &record);
                    let _ = std::fs::remove_file(record_path);
                    Err(e)
                }
            }
        })
    }

    /// The VM's NIC on this network, once: the TAP queue the VMM inherits, with the guest
    /// MAC (the interface's original one) and MTU.
    pub fn take_nic(&mut self) -> Option<VmNic> {
        Some(VmNic {
            tap: self.tap.take()?,
            mac: self.guest.mac,
            mtu: self.guest.mtu,
        })
    }

    /// Puts the namespace back as it was and removes the record; failures are logged.
    pub fn teardown(mut self) {
        drop(self.tap.take());
        undo(&self.record);
        let _ = std::fs::remove_file(&self.record_path);
    }
}

/// Undoes what `record` says was done (bridge removed, interface restored), in its namespace.
fn undo(record: &NetRecord) {
    let r = in_netns(&record.netns, || {
        let mut nl = Netlink::open().map_err(|source| NetworkError::Netlink {
            path: record.netns.clone(),
            source,
        })?;
        restore(&mut nl, record);
        Ok(())
    });
    match r {
        Ok(()) => crate::plog!(
            Info,
            "pod network: {} restored in {}",
            record.interface,
            record.netns.display()
        ),
        Err(e) => crate::plog!(Warn, "pod network teardown: {e}"),
    }
}

/// `delete` after a dead shim: undoes the record in pod directory `pod_dir`, if any.
/// Returns what it did, for the log.
pub fn cleanup_recorded(record_path: &Path) -> Option<String> {
    let record: NetRecord = match record::read(record_path)? {
        Ok(r) => r,
        Err(why) => return Some(why),
    };
    if netns::is_fd_path(&record.netns) {
        // The dead shim's own namespace (Docker's): gone with it, or soon with dockerd's
        // mount; its path may name another process's descriptor by now.
        let _ = std::fs::remove_file(record_path);
        return Some(format!(
            "network namespace {} was the dead shim's own: nothing to restore",
            record.netns.display()
        ));
    }
    undo(&record);
    let _ = std::fs::remove_file(record_path);
    Some(format!(
        "network of {} in {} restored",
        record.interface,
        record.netns.display()
    ))
}

fn write_record(path: &Path, record: &NetRecord) -> Result<(), NetworkError> {
    record::write(path, record).map_err(|source| NetworkError::Record {
        path: path.to_path_buf(),
        source,
    })
}

/// The changes: TAP, bridge, the interface's MAC and addresses, both ports up.
fn connect(nl: &mut Netlink, rec: &NetRecord) -> Result<OwnedFd, NetworkError> {
    let nl_err = |source| NetworkError::Netlink {
        path: rec.netns.clone(),
        source,
    };
    let tap = tap::create(TAP_NAME).map_err(|source| NetworkError::Tap {
        path: rec.netns.clone(),
        source,
    })?;
    nl.add_bridge(BRIDGE_NAME).map_err(nl_err)?;
    let index_of = |nl: &mut Netlink, name: &str| -> Result<u32, NetworkError> {
        nl.link_by_name(name)
            .map_err(nl_err)?
            .map(|l| l.index)
            .ok_or_else(|| {
                nl_err(NetlinkError::Decode {
                    op: format!("finding {name}"),
                    detail: "not listed after it was created".into(),
                })
            })
    };
    let bridge = index_of(nl, BRIDGE_NAME)?;
    let tap_index = index_of(nl, TAP_NAME)?;
    let fresh_mac = moat_netlink::random_local_mac().map_err(|source| NetworkError::Tap {
        path: rec.netns.clone(),
        source,
    })?;
    for a in &rec.addresses {
        nl.del_address(rec.index, a.addr, a.prefix)
            .map_err(nl_err)?;
    }
    for (index, change) in &link_steps(rec, bridge, tap_index, fresh_mac) {
        nl.set_link(*index, change).map_err(nl_err)?;
    }
    Ok(tap)
}

/// The link changes that bridge the pod's interface to the TAP, in order: the interface
/// down, given a fresh MAC (the guest keeps its original one) and enslaved to the bridge, the
/// TAP enslaved with the interface's MTU, then the bridge, the interface and the TAP up.
fn link_steps(
    rec: &NetRecord,
    bridge: u32,
    tap: u32,
    fresh_mac: [u8; 6],
) -> [(u32, LinkChange); 6] {
    [
        (
            rec.index,
            LinkChange {
                up: Some(false),
                ..Default::default()
            },
        ),
        (
            rec.index,
            LinkChange {
                mac: Some(fresh_mac),
                master: Some(bridge),
                ..Default::default()
            },
        ),
        (
            tap,
            LinkChange {
                mtu: Some(rec.mtu),
                master: Some(bridge),
                ..Default::default()
            },
        ),
        (
            bridge,
            LinkChange {
                mtu: Some(rec.mtu),
                up: Some(true),
                ..Default::default()
            },
        ),
        (
            rec.index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        ),
        (
            tap,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        ),
    ]
}

/// Puts the interface back (out of the bridge, its MAC, addresses and routes) and deletes the
/// bridge; each step is tried whatever the others did (errors are logged).
fn restore(nl: &mut Netlink, rec: &NetRecord) {
    let warn = |what: &str, r: Result<(), NetlinkError>| {
        if let Err(e) = r {
            // Gone already (a half-done setup, a repeated cleanup) is not worth a warning.
            if !matches!(
                e.errno(),
                Some(libc::ENODEV) | Some(libc::EEXIST) | Some(libc::EADDRNOTAVAIL)
            ) {
                crate::plog!(
                    Warn,
                    "pod network teardown in {}: {what}: {e}",
                    rec.netns.display()
                );
            }
        }
    };
    if let Ok(Some(br)) = nl.link_by_name(BRIDGE_NAME) {
        warn("deleting the bridge", nl.del_link(br.index));
    }
    let change = LinkChange {
        mac: Some(rec.mac),
        master: Some(0),
        ..Default::default()
    };
    warn("restoring the interface", nl.set_link(rec.index, &change));
    for a in &rec.addresses {
        warn(
            "restoring an address",
            nl.add_address(rec.index, a.addr, a.prefix),
        );
    }
    let up = LinkChange {
        up: Some(true),
        ..Default::default()
    };
    warn("bringing the interface up", nl.set_link(rec.index, &up));
    for r in &rec.routes {
        warn("restoring a route", nl.add_route(r));
    }
}

#[cfg(test)]
mod tests;
