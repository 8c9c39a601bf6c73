//! Test fixtures (feature `testing`): a network namespace as CNI leaves it, made and checked
//! with iproute2, for the shim's, the agent's and the containerd tests. Needs root.

use std::path::PathBuf;
use std::process::Command;

/// Runs `cmd` with `sh -c`; panics unless it succeeds; its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("sh -c {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`) with a veth pair: `eth0` inside (up, an address
/// and a default route, lo up), `<name>-h` outside (up, optionally addressed). Dropping it
/// deletes both.
pub struct TestNetns {
    /// The namespace's name (`/run/netns/<name>`).
    pub name: String,
    /// The outer veth end.
    pub host_end: String,
}

impl TestNetns {
    /// Makes namespace `name` (at most 13 bytes) whose eth0 has `pod` (`10.0.0.2/24`), MTU
    /// `mtu` and a default route via `gateway`; the outer end gets `host` (`10.0.0.1/24`)
    /// when given.
    pub fn new(name: &str, pod: &str, gateway: &str, mtu: u32, host: Option<&str>) -> TestNetns {
        let ns = TestNetns {
            name: name.into(),
            host_end: format!("{name}-h"),
        };
        let (n, h) = (&ns.name, &ns.host_end);
        let host_addr = host.map_or(String::new(), |a| format!("ip addr add {a} dev {h} && "));
        sh(&format!(
            "ip netns add {n} && ip link add {h} type veth peer name eth0 netns {n} \
             && {host_addr}ip link set {h} up && ip -n {n} link set lo up \
             && ip -n {n} link set eth0 mtu {mtu} up && ip -n {n} addr add {pod} dev eth0 \
             && ip -n {n} route add default via {gateway}"
        ));
        ns
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n <name> ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// eth0's MAC (`aa:bb:..`).
    pub fn eth0_mac(&self) -> String {
        let line = self.ip("-br link show eth0");
        line.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    }

    /// The links (name, state, MAC), IPv4 addresses and routes: what must look the same
    /// after moat is done with the namespace.
    pub fn snapshot(&self) -> String {
        let links: Vec<String> = self
            .ip("-br link show")
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect();
        format!(
            "{}\n{}\n{}",
            links.join("\n"),
            self.ip("-4 -br addr show"),
            self.ip("route show")
        )
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
