//! Building rtnetlink requests and reading replies into plain values ([`Link`], [`Address`],
//! [`Route`]). Pure functions: no socket here.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope as NlScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// The main routing table.
pub const RT_TABLE_MAIN: u8 = RouteHeader::RT_TABLE_MAIN;
/// Flags of a request that creates something new and fails if it exists.
pub const CREATE_EXCL: u16 = NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a request that creates or replaces.
pub const CREATE_REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address, when it is an Ethernet-like 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The loopback device (IFF_LOOPBACK).
    pub loopback: bool,
    /// The bridge (or other master) it is a port of.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `tun`...), when the kernel says.
    pub kind: Option<String>,
}

/// An address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Address {
    /// The interface index.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Link-local or host scope (not worth moving elsewhere).
    pub local_scope: bool,
}

/// Scope of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RouteScope {
    /// Through a gateway, or anywhere (`RT_SCOPE_UNIVERSE`).
    #[default]
    Universe,
    /// On the link (`RT_SCOPE_LINK`).
    Link,
    /// This host (`RT_SCOPE_HOST`).
    Host,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// Destination and prefix length; `None` is the default route.
    pub dst: Option<(IpAddr, u8)>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: RouteScope,
    /// IPv6 (else IPv4): needed when neither destination nor gateway says.
    pub ipv6: bool,
    /// Made by the kernel for an address's prefix (re-created with the address).
    pub kernel: bool,
    /// The table (when read).
    pub table: u32,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst {
            Some((a, p)) => write!(f, "{a}/{p}")?,
            None => write!(f, "default{}", if self.ipv6 { " (IPv6)" } else { "" })?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " dev {i}")?;
        }
        if self.scope != RouteScope::Universe {
            write!(f, " scope {:?}", self.scope)?;
        }
        Ok(())
    }
}

/// What [`crate::Netlink::set_link`] changes; `None` fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// New name (the link must be down).
    pub name: Option<String>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// New hardware address.
    pub mac: Option<[u8; 6]>,
    /// Bring it up (`true`) or down.
    pub up: Option<bool>,
    /// Make it a port of this bridge (`Some(0)`: of none).
    pub master: Option<u32>,
}

impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("name {n}"));
        }
        if let Some(m) = self.mtu {
            parts.push(format!("mtu {m}"));
        }
        if let Some(m) = &self.mac {
            parts.push(format!("address {m:02x?}"));
        }
        if let Some(m) = self.master {
            parts.push(format!("master {m}"));
        }
        if let Some(up) = self.up {
            parts.push(if up { "up" } else { "down" }.into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// `RTM_GETLINK` dump.
pub fn get_links() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(LinkMessage::default())
}

/// `RTM_GETADDR` dump (every family).
pub fn get_addresses() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetAddress(AddressMessage::default())
}

/// `RTM_GETROUTE` dump (every family).
pub fn get_routes() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetRoute(RouteMessage::default())
}

/// `RTM_NEWLINK` changing link `index`.
pub fn set_link(index: u32, change: &LinkChange) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = change.up {
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    }
    if let Some(n) = &change.name {
        m.attributes.push(LinkAttribute::IfName(n.clone()));
    }
    if let Some(mtu) = change.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = change.mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(master) = change.master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` creating bridge `name`.
pub fn new_bridge(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_DELLINK` of link `index`.
pub fn del_link(index: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    RouteNetlinkMessage::DelLink(m)
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `RTM_NEWADDR` (`add`) or `RTM_DELADDR` of `addr/prefix` on link `index`.
pub fn address(index: u32, addr: IpAddr, prefix: u8, add: bool) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(&addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    if addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(addr));
    }
    m.attributes.push(AddressAttribute::Address(addr));
    if add {
        RouteNetlinkMessage::NewAddress(m)
    } else {
        RouteNetlinkMessage::DelAddress(m)
    }
}

/// `RTM_NEWROUTE` (`add`) or `RTM_DELROUTE` of `r` in the main table.
pub fn route(r: &Route, add: bool) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    let ipv6 = match (r.dst, r.gateway) {
        (Some((a, _)), _) | (None, Some(a)) => a.is_ipv6(),
        (None, None) => r.ipv6,
    };
    m.header.address_family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.table = RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match r.scope {
        RouteScope::Universe => NlScope::Universe,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
    };
    if let Some((dst, len)) = r.dst {
        m.header.destination_prefix_length = len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    if let Some(g) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if add {
        RouteNetlinkMessage::NewRoute(m)
    } else {
        RouteNetlinkMessage::DelRoute(m)
    }
}

/// A link reply as a [`Link`].
pub fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        master: None,
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) => l.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(v) if *v != 0 => l.master = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// An address reply as an [`Address`] (`None` without an address attribute).
pub fn parse_address(m: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS the peer.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    Some(Address {
        index: m.header.index,
        addr: addr?,
        prefix: m.header.prefix_len,
        local_scope: matches!(m.header.scope, AddressScope::Link | AddressScope::Host),
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A unicast IPv4/IPv6 route reply as a [`Route`] (`None` for other kinds and families).
pub fn parse_route(m: &RouteMessage) -> Option<Route> {
    let ipv6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut r = Route {
        dst: None,
        gateway: None,
        oif: None,
        scope: match m.header.scope {
            NlScope::Link => RouteScope::Link,
            NlScope::Host => RouteScope::Host,
            _ => RouteScope::Universe,
        },
        ipv6,
        kernel: m.header.protocol == RouteProtocol::Kernel,
        table: u32::from(m.header.table),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.dst = ip_of(d).map(|ip| (ip, m.header.destination_prefix_length))
            }
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload};

    /// Serializes and parses back, as the kernel would see and echo it.
    fn round_trip(m: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut p = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
        p.finalize();
        let mut buf = vec![0; p.buffer_len()];
        p.serialize(&mut buf);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_link_carries_every_change() {
        let change = LinkChange {
            name: Some("eth0".into()),
            mtu: Some(1400),
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: Some(true),
            master: Some(7),
        };
        let RouteNetlinkMessage::NewLink(m) = round_trip(set_link(3, &change)) else {
            panic!()
        };
        assert_eq!(m.header.index, 3);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(m.header.flags.contains(LinkFlags::Up));
        let l = parse_link(&m);
        assert_eq!(l.name, "eth0");
        assert_eq!(
            (l.mtu, l.mac, l.master),
            (1400, Some([2, 0, 0, 0, 0, 1]), Some(7))
        );
        assert_eq!(
            change.to_string(),
            "name eth0, mtu 1400, address [02, 00, 00, 00, 00, 01], master 7, up"
        );

        let down = LinkChange {
            up: Some(false),
            ..Default::default()
        };
        let RouteNetlinkMessage::NewLink(m) = round_trip(set_link(3, &down)) else {
            panic!()
        };
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        assert!(m.attributes.is_empty());
    }

    #[test]
    fn bridge_has_its_kind() {
        let RouteNetlinkMessage::NewLink(m) = round_trip(new_bridge("moat-br0")) else {
            panic!()
        };
        let l = parse_link(&m);
        assert_eq!(
            (l.name.as_str(), l.kind.as_deref()),
            ("moat-br0", Some("bridge"))
        );
    }

    #[test]
    fn addresses_round_trip() {
        for (ip, prefix) in [("10.1.2.3", 24), ("fd00::5", 64)] {
            let ip: IpAddr = ip.parse().unwrap();
            let RouteNetlinkMessage::NewAddress(m) = round_trip(address(4, ip, prefix, true))
            else {
                panic!()
            };
            let a = parse_address(&m).unwrap();
            assert_eq!(
                (a.index, a.addr, a.prefix, a.local_scope),
                (4, ip, prefix, false)
            );
            assert!(matches!(
                address(4, ip, prefix, false),
                RouteNetlinkMessage::DelAddress(_)
            ));
        }
    }

    #[test]
    fn routes_round_trip() {
        let cases = [
            Route {
                dst: None,
                gateway: Some("10.1.2.1".parse().unwrap()),
                oif: Some(2),
                scope: RouteScope::Universe,
                ipv6: false,
                kernel: false,
                table: RT_TABLE_MAIN.into(),
            },
            Route {
                dst: Some(("192.168.0.0".parse().unwrap(), 16)),
                gateway: None,
                oif: Some(2),
                scope: RouteScope::Link,
                ipv6: false,
                kernel: false,
                table: RT_TABLE_MAIN.into(),
            },
            Route {
                dst: None,
                gateway: Some("fd00::1".parse().unwrap()),
                oif: None,
                scope: RouteScope::Universe,
                ipv6: true,
                kernel: false,
                table: RT_TABLE_MAIN.into(),
            },
        ];
        for r in cases {
            let RouteNetlinkMessage::NewRoute(m) = round_trip(route(&r, true)) else {
                panic!()
            };
            assert_eq!(m.header.table, RT_TABLE_MAIN);
            assert_eq!(parse_route(&m).as_ref(), Some(&r), "{r}");
        }
        let r = Route {
            dst: None,
            gateway: None,
            oif: Some(2),
            scope: RouteScope::Link,
            ipv6: true,
            kernel: false,
            table: 0,
        };
        let RouteNetlinkMessage::DelRoute(m) = route(&r, false) else {
            panic!()
        };
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(r.to_string(), "default (IPv6) dev 2 scope Link");
    }

    #[test]
    fn emitted_lengths_are_sane() {
        let m = RouteNetlinkMessage::NewLink(LinkMessage::default());
        assert!(m.buffer_len() >= 16);
    }
}
