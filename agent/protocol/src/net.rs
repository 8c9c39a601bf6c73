//! Typed, validated forms of the network RPCs (`UpdateInterface`, `UpdateRoutes`).
//!
//! The host builds [`InterfaceSpec`] / [`RouteSpec`] values and the client turns them into
//! requests ([`InterfaceSpec::to_proto`], [`routes_to_proto`]); the agent, which must treat
//! requests as untrusted, parses them back with the same checks
//! ([`InterfaceSpec::from_proto`], [`routes_from_proto`]): bounded counts, interface names the
//! kernel accepts, MTU and prefix ranges, addresses that are real unicast addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::agent::{self, IpAddress, UpdateInterfaceRequest};

/// The most addresses one interface request may carry.
pub const MAX_ADDRESSES: usize = 16;
/// The most routes one `UpdateRoutes` may carry.
pub const MAX_ROUTES: usize = 64;
/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// The largest MTU accepted.
pub const MAX_MTU: u32 = 65535;

/// A request that does not pass the checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetSpecError(pub String);

fn bad(msg: impl Into<String>) -> NetSpecError {
    NetSpecError(msg.into())
}

/// An address with its prefix length, `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (checked against the family).
    pub prefix: u8,
}

impl IpNet {
    /// `addr/prefix`, checked: the prefix fits the family.
    pub fn new(addr: IpAddr, prefix: u32) -> Result<IpNet, NetSpecError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(format!(
                "prefix length {prefix} of {addr} is over {max}"
            )));
        }
        Ok(IpNet {
            addr,
            prefix: prefix as u8,
        })
    }

    /// An address an interface may carry: not unspecified, multicast or broadcast.
    fn check_unicast(&self) -> Result<(), NetSpecError> {
        let ok = match self.addr {
            IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
            IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
        };
        ok.then_some(())
            .ok_or_else(|| bad(format!("{self} is not a unicast address")))
    }

    fn from_proto(a: &IpAddress) -> Result<IpNet, NetSpecError> {
        let addr = parse_ip(&a.address)?;
        IpNet::new(addr, a.prefix_len)
    }

    fn to_proto(self) -> IpAddress {
        let mut a = IpAddress::new();
        a.address = self.addr.to_string();
        a.prefix_len = self.prefix.into();
        a
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = NetSpecError;
    fn from_str(s: &str) -> Result<IpNet, NetSpecError> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad(format!("{s:?} is not ADDRESS/PREFIX")))?;
        let prefix = p
            .parse::<u32>()
            .map_err(|_| bad(format!("bad prefix length in {s:?}")))?;
        IpNet::new(parse_ip(a)?, prefix)
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, NetSpecError> {
    if s.len() > 64 {
        return Err(bad("an IP address longer than 64 bytes"));
    }
    s.parse()
        .map_err(|_| bad(format!("{s:?} is not an IP address")))
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether `name` is a usable interface name: 1..=15 printable ASCII bytes without `/` or
/// `:`, not `.` or `..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
}

fn check_ifname(what: &str, name: &str) -> Result<(), NetSpecError> {
    valid_ifname(name)
        .then_some(())
        .ok_or_else(|| bad(format!("{what} {name:?} is not a valid interface name")))
}

/// What `UpdateInterface` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceSpec {
    /// Find the interface by this MAC (else by `name`).
    pub mac: Option<[u8; 6]>,
    /// Its current name, when found by name.
    pub name: String,
    /// New name (empty: keep).
    pub new_name: String,
    /// New MTU (0: keep).
    pub mtu: u32,
    /// Its addresses; others are removed.
    pub addresses: Vec<IpNet>,
    /// Bring it up.
    pub up: bool,
}

impl InterfaceSpec {
    /// Checks every field (see the module doc).
    pub fn validate(&self) -> Result<(), NetSpecError> {
        // Found by name: a name is needed; found by MAC: a name, if any, must be valid.
        if self.mac.is_none() || !self.name.is_empty() {
            check_ifname("interface", &self.name)?;
        }
        if !self.new_name.is_empty() {
            check_ifname("new name", &self.new_name)?;
        }
        if self.mtu != 0 && !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(bad(format!(
                "MTU {} is outside {MIN_MTU}..={MAX_MTU}",
                self.mtu
            )));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(bad(format!(
                "{} addresses, at most {MAX_ADDRESSES}",
                self.addresses.len()
            )));
        }
        self.addresses.iter().try_for_each(IpNet::check_unicast)
    }

    /// The request, after [`Self::validate`].
    pub fn to_proto(&self) -> Result<UpdateInterfaceRequest, NetSpecError> {
        self.validate()?;
        let mut r = UpdateInterfaceRequest::new();
        r.mac = self.mac.as_ref().map(format_mac).unwrap_or_default();
        r.name = self.name.clone();
        r.new_name = self.new_name.clone();
        r.mtu = self.mtu;
        r.addresses = self.addresses.iter().map(|a| a.to_proto()).collect();
        r.up = self.up;
        Ok(r)
    }

    /// Parses and checks a request (the count first, before parsing anything).
    pub fn from_proto(r: &UpdateInterfaceRequest) -> Result<InterfaceSpec, NetSpecError> {
        if r.addresses.len() > MAX_ADDRESSES {
            return Err(bad(format!(
                "{} addresses, at most {MAX_ADDRESSES}",
                r.addresses.len()
            )));
        }
        let mac = match r.mac.as_str() {
            "" => None,
            m => Some(parse_mac(m).ok_or_else(|| bad(format!("{m:?} is not a MAC address")))?),
        };
        let spec = InterfaceSpec {
            mac,
            name: r.name.clone(),
            new_name: r.new_name.clone(),
            mtu: r.mtu,
            addresses: r
                .addresses
                .iter()
                .map(IpNet::from_proto)
                .collect::<Result<_, _>>()?,
            up: r.up,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// Scope of a [`RouteSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Anywhere.
    #[default]
    Universe,
    /// On the link.
    Link,
    /// This host.
    Host,
}

/// One route of `UpdateRoutes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSpec {
    /// Destination (`None`: default route).
    pub dest: Option<IpNet>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface name (empty: any).
    pub device: String,
    /// Scope.
    pub scope: Scope,
    /// IPv6 default route (only read when neither `dest` nor `gateway` is set).
    pub ipv6: bool,
}

impl RouteSpec {
    /// Whether the route is IPv6.
    pub fn is_ipv6(&self) -> bool {
        match (self.dest, self.gateway) {
            (Some(d), _) => d.addr.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => self.ipv6,
        }
    }

    /// Checks the fields: families agree, a gateway or a device, a valid device name.
    pub fn validate(&self) -> Result<(), NetSpecError> {
        if let (Some(d), Some(g)) = (self.dest, self.gateway) {
            if d.addr.is_ipv6() != g.is_ipv6() {
                return Err(bad(format!("route {d} via {g}: mixed IP families")));
            }
        }
        if self.gateway.is_none() && self.device.is_empty() {
            return Err(bad("a route needs a gateway or a device"));
        }
        if !self.device.is_empty() {
            check_ifname("route device", &self.device)?;
        }
        Ok(())
    }

    fn to_proto(&self) -> agent::Route {
        let mut r = agent::Route::new();
        r.dest = self.dest.map(|d| d.to_string()).unwrap_or_default();
        r.gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        r.device = self.device.clone();
        r.scope = match self.scope {
            Scope::Universe => agent::RouteScope::ROUTE_SCOPE_UNIVERSE,
            Scope::Link => agent::RouteScope::ROUTE_SCOPE_LINK,
            Scope::Host => agent::RouteScope::ROUTE_SCOPE_HOST,
        }
        .into();
        r.ipv6 = self.ipv6;
        r
    }

    fn from_proto(r: &agent::Route) -> Result<RouteSpec, NetSpecError> {
        let scope = match r.scope.enum_value() {
            Ok(agent::RouteScope::ROUTE_SCOPE_UNIVERSE) => Scope::Universe,
            Ok(agent::RouteScope::ROUTE_SCOPE_LINK) => Scope::Link,
            Ok(agent::RouteScope::ROUTE_SCOPE_HOST) => Scope::Host,
            Err(v) => return Err(bad(format!("unknown route scope {v}"))),
        };
        let spec = RouteSpec {
            dest: match r.dest.as_str() {
                "" => None,
                d => Some(d.parse()?),
            },
            gateway: match r.gateway.as_str() {
                "" => None,
                g => Some(parse_ip(g)?),
            },
            device: r.device.clone(),
            scope,
            ipv6: r.ipv6,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dest {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if !self.device.is_empty() {
            write!(f, " dev {}", self.device)?;
        }
        Ok(())
    }
}

/// The `UpdateRoutes` request for `routes`, each checked, at most [`MAX_ROUTES`].
pub fn routes_to_proto(routes: &[RouteSpec]) -> Result<agent::UpdateRoutesRequest, NetSpecError> {
    if routes.len() > MAX_ROUTES {
        return Err(bad(format!(
            "{} routes, at most {MAX_ROUTES}",
            routes.len()
        )));
    }
    routes.iter().try_for_each(RouteSpec::validate)?;
    let mut r = agent::UpdateRoutesRequest::new();
    r.routes = routes.iter().map(RouteSpec::to_proto).collect();
    Ok(r)
}

/// The routes of an `UpdateRoutes` request, each checked (the count first).
pub fn routes_from_proto(r: &agent::UpdateRoutesRequest) -> Result<Vec<RouteSpec>, NetSpecError> {
    if r.routes.len() > MAX_ROUTES {
        return Err(bad(format!(
            "{} routes, at most {MAX_ROUTES}",
            r.routes.len()
        )));
    }
    r.routes.iter().map(RouteSpec::from_proto).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipnets() {
        assert_eq!(net("10.0.0.2/24").to_string(), "10.0.0.2/24");
        assert_eq!(net("fd00::2/64").prefix, 64);
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "fd00::1/129",
            "x/1",
            "10.0.0.2/-1",
            "/24",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs_and_names() {
        let m = parse_mac("02:AB:cd:00:01:ff").unwrap();
        assert_eq!(m, [2, 0xab, 0xcd, 0, 1, 0xff]);
        assert_eq!(format_mac(&m), "02:ab:cd:00:01:ff");
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "zz:ab:cd:00:01:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        assert!(valid_ifname("eth0") && valid_ifname("moat-tap0"));
        for bad in ["", ".", "..", "a/b", "a b", "a:1", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn interface_round_trip() {
        let spec = InterfaceSpec {
            mac: Some([2, 0, 0, 0, 0, 9]),
            name: String::new(),
            new_name: "eth0".into(),
            mtu: 1450,
            addresses: vec![net("10.88.0.2/16"), net("fd00::2/64")],
            up: true,
        };
        let p = spec.to_proto().unwrap();
        assert_eq!(p.mac, "02:00:00:00:00:09");
        assert_eq!(InterfaceSpec::from_proto(&p).unwrap(), spec);
    }

    #[test]
    fn interface_refusals() {
        let ok = InterfaceSpec {
            name: "eth0".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let cases: Vec<(InterfaceSpec, &str)> = vec![
            (InterfaceSpec::default(), "interface \"\""),
            (
                InterfaceSpec {
                    new_name: "a/b".into(),
                    ..ok.clone()
                },
                "new name",
            ),
            (
                InterfaceSpec {
                    mtu: 67,
                    ..ok.clone()
                },
                "MTU 67",
            ),
            (
                InterfaceSpec {
                    addresses: vec![net("10.0.0.1/8"); MAX_ADDRESSES + 1],
                    ..ok.clone()
                },
                "17 addresses",
            ),
            (
                InterfaceSpec {
                    addresses: vec![net("224.0.0.1/4")],
                    ..ok.clone()
                },
                "not a unicast",
            ),
            (
                InterfaceSpec {
                    addresses: vec![net("0.0.0.0/0")],
                    ..ok.clone()
                },
                "not a unicast",
            ),
        ];
        for (spec, want) in cases {
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let mut p = ok.to_proto().unwrap();
        p.mac = "nope".into();
        assert!(InterfaceSpec::from_proto(&p).is_err());
        p.mac.clear();
        p.addresses = (0..1000).map(|_| net("10.0.0.1/8").to_proto()).collect();
        let e = InterfaceSpec::from_proto(&p).unwrap_err().to_string();
        assert!(e.contains("1000 addresses"), "{e}");
    }

    #[test]
    fn routes_round_trip_and_refusals() {
        let routes = vec![
            RouteSpec {
                gateway: Some("10.88.0.1".parse().unwrap()),
                device: "eth0".into(),
                ..Default::default()
            },
            RouteSpec {
                dest: Some(net("192.168.0.0/16")),
                device: "eth0".into(),
                scope: Scope::Link,
                ..Default::default()
            },
            RouteSpec {
                device: "eth0".into(),
                ipv6: true,
                ..Default::default()
            },
        ];
        let p = routes_to_proto(&routes).unwrap();
        assert_eq!(routes_from_proto(&p).unwrap(), routes);
        assert!(routes[2].is_ipv6() && !routes[0].is_ipv6());
        assert_eq!(routes[0].to_string(), "default via 10.88.0.1 dev eth0");

        let mixed = RouteSpec {
            dest: Some(net("fd00::/64")),
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        assert!(mixed.validate().unwrap_err().0.contains("mixed"));
        assert!(RouteSpec::default().validate().is_err());
        assert!(routes_to_proto(&vec![routes[0].clone(); MAX_ROUTES + 1]).is_err());
        let mut p = p;
        p.routes[0].scope = protobuf::EnumOrUnknown::from_i32(99);
        assert!(routes_from_proto(&p).unwrap_err().0.contains("scope 99"));
    }
}
