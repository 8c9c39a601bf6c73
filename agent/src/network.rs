//! The guest's network: loopback at pod creation, and the pod's NIC configured as the
//! host asks (`UpdateInterface`, `UpdateRoutes`) over rtnetlink.
//!
//! Requests are untrusted: they arrive as [`moat_agent_protocol::net`] forms, already checked
//! (bounded counts, names, MTU, prefixes); here the interface must exist, and every change is
//! made with one netlink request at a time, serialised across RPCs.

use std::sync::Mutex;

use moat_agent_protocol::net::{InterfaceSpec, RouteSpec, Scope};
use moat_netlink::{Link, LinkChange, Netlink, NetlinkError, Route, RouteScope};

use crate::util::lock;

/// Serialises network changes: two RPCs never interleave their netlink requests.
static NET_LOCK: Mutex<()> = Mutex::new(());

/// Errors configuring the guest's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No interface matches the request.
    #[error("no interface {0}")]
    NotFound(String),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Brings `lo` up (idempotent).
pub fn loopback_up() -> Result<(), NetworkError> {
    let _g = lock(&NET_LOCK);
    let mut nl = Netlink::open()?;
    let lo = nl
        .links()?
        .into_iter()
        .find(|l| l.loopback)
        .ok_or_else(|| NetworkError::NotFound("of type loopback".into()))?;
    if !lo.up {
        nl.set_link(lo.index, &up(true))?;
    }
    Ok(())
}

fn up(up: bool) -> LinkChange {
    LinkChange {
        up: Some(up),
        ..Default::default()
    }
}

/// Finds the interface of `spec` (by MAC, else by name), renames it, sets its MTU, replaces
/// its addresses (link-local ones stay) and brings it up, as asked.
pub fn update_interface(spec: &InterfaceSpec) -> Result<(), NetworkError> {
    let _g = lock(&NET_LOCK);
    let mut nl = Netlink::open()?;
    let link = find_link(&mut nl, spec)?;
    let index = link.index;
    rename_and_set_mtu(&mut nl, spec, &link)?;
    remove_other_addresses(&mut nl, spec, index)?;
    if spec.up {
        nl.set_link(index, &up(true))?;
    }
    for w in &spec.addresses {
        nl.add_address(index, w.addr, w.prefix)?;
    }
    tracing::info!(
        "interface {} (index {index}): mtu {}, addresses [{}], {}",
        if spec.new_name.is_empty() {
            &link.name
        } else {
            &spec.new_name
        },
        if spec.mtu != 0 { spec.mtu } else { link.mtu },
        spec.addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if spec.up || link.up { "up" } else { "down" }
    );
    Ok(())
}

/// The interface `spec` names: by MAC when it gives one, else by name.
fn find_link(nl: &mut Netlink, spec: &InterfaceSpec) -> Result<Link, NetworkError> {
    nl.links()?
        .into_iter()
        .find(|l| match spec.mac {
            Some(mac) => l.mac == Some(mac),
            None => l.name == spec.name,
        })
        .ok_or_else(|| {
            NetworkError::NotFound(match spec.mac {
                Some(m) => format!("with MAC {}", moat_agent_protocol::net::format_mac(&m)),
                None => format!("named {:?}", spec.name),
            })
        })
}

/// Renames `link` (taking it down first: a link is renamed only while down) and sets its
/// MTU, where `spec` asks for a change.
fn rename_and_set_mtu(
    nl: &mut Netlink,
    spec: &InterfaceSpec,
    link: &Link,
) -> Result<(), NetworkError> {
    let index = link.index;
    if !spec.new_name.is_empty() && spec.new_name != link.name {
        if link.up {
            nl.set_link(index, &up(false))?;
        }
        nl.set_link(
            index,
            &LinkChange {
                name: Some(spec.new_name.clone()),
                ..Default::default()
            },
        )?;
    }
    if spec.mtu != 0 && spec.mtu != link.mtu {
        nl.set_link(
            index,
            &LinkChange {
                mtu: Some(spec.mtu),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Deletes the addresses of interface `index` that `spec` does not list (link-local ones
/// stay).
fn remove_other_addresses(
    nl: &mut Netlink,
    spec: &InterfaceSpec,
    index: u32,
) -> Result<(), NetworkError> {
    let current: Vec<_> = nl
        .addresses()?
        .into_iter()
        .filter(|a| a.index == index && !a.local_scope)
        .collect();
    for a in &current {
        if !spec
            .addresses
            .iter()
            .any(|w| w.addr == a.addr && w.prefix == a.prefix)
        {
            nl.del_address(index, a.addr, a.prefix)?;
        }
    }
    Ok(())
}

/// Adds `routes`, in order, to the main table (an existing route to the same destination is
/// replaced). Devices are named; each must exist.
pub fn update_routes(routes: &[RouteSpec]) -> Result<(), NetworkError> {
    let _g = lock(&NET_LOCK);
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    for r in routes {
        let oif = match r.device.as_str() {
            "" => None,
            name => Some(
                links
                    .iter()
                    .find(|l| l.name == name)
                    .ok_or_else(|| NetworkError::NotFound(format!("named {name:?} (route {r})")))?
                    .index,
            ),
        };
        nl.add_route(&to_netlink(r, oif))?;
        tracing::info!("route {r}");
    }
    Ok(())
}

/// The netlink form of a checked route with its output interface index.
fn to_netlink(r: &RouteSpec, oif: Option<u32>) -> Route {
    Route {
        dst: r.dest.map(|d| (d.addr, d.prefix)),
        gateway: r.gateway,
        oif,
        scope: match r.scope {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
        },
        ipv6: r.is_ipv6(),
        kernel: false,
        table: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_netlink::testing::sh;

    /// The RPCs for real, in a private network namespace (this test runs as root; `ip`, a
    /// child of the thread, shares its namespace): a veth end found by MAC is renamed,
    /// re-sized, addressed (an old address removed) and routed.
    #[test]
    fn configures_a_nic_in_a_private_netns() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(NEWNET)");
            loopback_up().unwrap();
            assert!(sh("ip link show lo").contains("UP"));
            sh(
                "ip link add vg0 address 02:00:00:00:aa:01 type veth peer name vg1 \
                && ip link set vg1 up && ip addr add 10.50.0.99/24 dev vg0",
            );
            let spec = InterfaceSpec {
                mac: Some([2, 0, 0, 0, 0xaa, 1]),
                new_name: "eth0".into(),
                mtu: 1400,
                addresses: vec![
                    "10.50.0.2/24".parse().unwrap(),
                    "fd00:50::2/64".parse().unwrap(),
                ],
                up: true,
                ..Default::default()
            };
            update_interface(&spec).unwrap();
            let eth = sh("ip addr show eth0");
            assert!(
                eth.contains("mtu 1400") && eth.contains("inet 10.50.0.2/24"),
                "{eth}"
            );
            assert!(
                eth.contains("fd00:50::2/64") && !eth.contains("10.50.0.99"),
                "{eth}"
            );
            update_routes(&[
                RouteSpec {
                    dest: Some("192.168.7.0/24".parse().unwrap()),
                    device: "eth0".into(),
                    scope: Scope::Link,
                    ..Default::default()
                },
                RouteSpec {
                    gateway: Some("10.50.0.1".parse().unwrap()),
                    device: "eth0".into(),
                    ..Default::default()
                },
            ])
            .unwrap();
            let routes = sh("ip route");
            assert!(
                routes.contains("default via 10.50.0.1 dev eth0"),
                "{routes}"
            );
            assert!(
                routes.contains("192.168.7.0/24 dev eth0 scope link"),
                "{routes}"
            );
            // Idempotent: the same request again changes nothing and succeeds.
            update_interface(&spec).unwrap();
            let missing = InterfaceSpec {
                name: "nope0".into(),
                ..Default::default()
            };
            assert!(matches!(
                update_interface(&missing),
                Err(NetworkError::NotFound(_))
            ));
            let bad_dev = RouteSpec {
                gateway: Some("10.50.0.1".parse().unwrap()),
                device: "nope0".into(),
                ..Default::default()
            };
            assert!(matches!(
                update_routes(&[bad_dev]),
                Err(NetworkError::NotFound(_))
            ));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn routes_convert() {
        let r = RouteSpec {
            dest: Some("10.1.0.0/16".parse().unwrap()),
            device: "eth0".into(),
            scope: Scope::Link,
            ..Default::default()
        };
        let n = to_netlink(&r, Some(2));
        assert_eq!(n.dst, Some(("10.1.0.0".parse().unwrap(), 16)));
        assert_eq!((n.oif, n.scope, n.ipv6), (Some(2), RouteScope::Link, false));
        let d6 = RouteSpec {
            device: "eth0".into(),
            ipv6: true,
            ..Default::default()
        };
        assert!(to_netlink(&d6, Some(2)).ipv6);
    }
}
