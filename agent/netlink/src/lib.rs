//! A small synchronous rtnetlink client: what moat needs to move a pod's network into its VM.
//!
//! The shim reads the pod network namespace's interface, addresses and routes, creates a
//! bridge and moves the addresses away; the agent configures the guest's NIC with what was
//! read. Both use [`Netlink`]: one `NETLINK_ROUTE` socket in the calling thread's network
//! namespace at the time it was opened, one request at a time, every request acknowledged.
//!
//! Messages are built and parsed by the rust-netlink crates (`netlink-packet-route`); the
//! builders in [`msg`] are pure, so they are unit-tested without a socket.

pub mod msg;
#[cfg(feature = "testing")]
pub mod testing;

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use msg::{Address, Link, LinkChange, Route, RouteScope};

/// How many messages one dump may return before it is refused (a pod netns has a handful).
const MAX_DUMP_MESSAGES: usize = 4096;

/// Errors of [`Netlink`].
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, or a send/receive failed.
    #[error("netlink {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{op}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request, e.g. `adding 10.0.0.2/24 to eth0 (index 2)`.
        op: String,
        /// The errno the kernel answered (positive).
        errno: i32,
    },
    /// A reply could not be parsed.
    #[error("netlink {op}: bad reply: {detail}")]
    Decode {
        /// The request.
        op: String,
        /// What was wrong.
        detail: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A `NETLINK_ROUTE` socket, bound in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let io = |op: &str| {
            let op = op.to_string();
            move |source| NetlinkError::Io { op, source }
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.dump_parsed("listing links", msg::get_links(), |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(msg::parse_link(&l)),
            _ => None,
        })
    }

    /// The link named `name`, if any.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every address of the namespace (IPv4 and IPv6).
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        self.dump_parsed("listing addresses", msg::get_addresses(), |m| match m {
            RouteNetlinkMessage::NewAddress(a) => msg::parse_address(&a),
            _ => None,
        })
    }

    /// Every route of the main table (IPv4 and IPv6).
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let main = u32::from(msg::RT_TABLE_MAIN);
        self.dump_parsed("listing routes", msg::get_routes(), |m| match m {
            RouteNetlinkMessage::NewRoute(r) => msg::parse_route(&r).filter(|r| r.table == main),
            _ => None,
        })
    }

    /// Changes link `index` as `change` says (name, MTU, MAC, master, up/down).
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        let op = format!("changing link {index} ({change})");
        self.request(&op, msg::set_link(index, change), 0)
    }

    /// Creates a bridge named `name` (down).
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let op = format!("creating bridge {name}");
        self.request(&op, msg::new_bridge(name), msg::CREATE_EXCL)
    }

    /// Deletes link `index`.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(&format!("deleting link {index}"), msg::del_link(index), 0)
    }

    /// Adds `addr/prefix` to link `index` (replacing the same address).
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let op = format!("adding {addr}/{prefix} to link {index}");
        let m = msg::address(index, addr, prefix, true);
        self.request(&op, m, msg::CREATE_REPLACE)
    }

    /// Removes `addr/prefix` from link `index`.
    pub fn del_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let op = format!("removing {addr}/{prefix} from link {index}");
        self.request(&op, msg::address(index, addr, prefix, false), 0)
    }

    /// Adds `route` to the main table (replacing one with the same destination).
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = format!("adding route {route}");
        self.request(&op, msg::route(route, true), msg::CREATE_REPLACE)
    }

    /// Removes `route` from the main table.
    pub fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = format!("removing route {route}");
        self.request(&op, msg::route(route, false), 0)
    }

    fn send(&mut self, op: &str, m: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Io {
                op: format!("sending ({op})"),
                source,
            })?;
        Ok(self.seq)
    }

    /// Receives the messages answering `seq`, calling `each` on every inner message, until
    /// the ACK (`dump == false`) or `DONE` (`dump == true`).
    fn receive(
        &mut self,
        op: &str,
        seq: u32,
        dump: bool,
        mut each: impl FnMut(RouteNetlinkMessage) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| NetlinkError::Io {
                    op: format!("receiving ({op})"),
                    source,
                })?;
            let mut offset = 0;
            while offset < data.len() {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[offset..]).map_err(|e| {
                        NetlinkError::Decode {
                            op: op.to_string(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if m.header.sequence_number != seq {
                    continue; // a stale answer of an earlier, failed exchange
                }
                match m.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                errno: -code.get(),
                            })
                        }
                        None if !dump => return Ok(()),
                        None => {}
                    },
                    NetlinkPayload::Done(_) if dump => return Ok(()),
                    NetlinkPayload::InnerMessage(inner) => each(inner)?,
                    _ => {}
                }
            }
        }
    }

    /// One acknowledged request.
    fn request(
        &mut self,
        op: &str,
        m: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(op, m, flags | NLM_F_ACK)?;
        self.receive(op, seq, false, |_| Ok(()))
    }

    /// One dump, each reply turned into a value by `parse` (`None`: skipped).
    fn dump_parsed<T>(
        &mut self,
        op: &str,
        m: RouteNetlinkMessage,
        parse: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        Ok(self.dump(op, m)?.into_iter().filter_map(parse).collect())
    }

    /// One dump, bounded to [`MAX_DUMP_MESSAGES`] messages.
    fn dump(
        &mut self,
        op: &str,
        m: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(op, m, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(op, seq, true, |m| {
            if out.len() == MAX_DUMP_MESSAGES {
                return Err(NetlinkError::Decode {
                    op: op.to_string(),
                    detail: format!("more than {MAX_DUMP_MESSAGES} messages"),
                });
            }
            out.push(m);
            Ok(())
        })?;
        Ok(out)
    }
}

/// A random unicast, locally administered MAC address (from the kernel's random pool).
pub fn random_local_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom(2) writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(io::Error::last_os_error());
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..32 {
            let m = random_local_mac().unwrap();
            assert_eq!(m[0] & 3, 2, "unicast + locally administered: {m:?}");
        }
    }
}
