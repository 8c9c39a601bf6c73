//! The iptables rule that sends a pod namespace's loopback TCP connections to the shim's
//! listener: `-t nat OUTPUT -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports <listener>`, with a
//! comment that names it moat's. Run with `iptables` inside the namespace.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;

/// The comment on moat's rule.
pub const RULE_COMMENT: &str = "moat-port-forward";

/// How long iptables waits for the xtables lock, seconds.
const LOCK_WAIT_SECS: &str = "10";

/// The iptables program (looked up on `PATH`, as containerd's CNI plugins do).
const IPTABLES: &str = "iptables";

/// The rule's arguments after the `-A`/`-D`/`-C` and the chain.
fn rule_spec(listen_port: u16) -> Vec<String> {
    [
        "-d",
        "127.0.0.1/32",
        "-p",
        "tcp",
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "REDIRECT",
        "--to-ports",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([listen_port.to_string()])
    .collect()
}

/// Adds the rule in network namespace `netns`.
pub fn add(netns: &Path, listen_port: u16) -> Result<(), String> {
    iptables(netns, "-A", listen_port)
}

/// Deletes the rule from network namespace `netns`; a rule already gone is not an error
/// (only a failed delete costs the second run, `-C`, that tells the two apart).
pub fn delete(netns: &Path, listen_port: u16) -> Result<(), String> {
    match iptables(netns, "-D", listen_port) {
        Err(e) if iptables(netns, "-C", listen_port).is_ok() => Err(e),
        _ => Ok(()),
    }
}

/// Runs `iptables -w -t nat <op> OUTPUT <rule>` inside `netns`; the error quotes its output.
pub(super) fn iptables(netns: &Path, op: &str, listen_port: u16) -> Result<(), String> {
    let ns = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    let mut cmd = Command::new(IPTABLES);
    cmd.args(["-w", LOCK_WAIT_SECS, "-t", "nat", op, "OUTPUT"])
        .args(rule_spec(listen_port))
        .stdin(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let raw = ns.as_raw_fd();
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on a descriptor the parent keeps open until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(raw, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running {IPTABLES}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: String = text
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!(
        "{IPTABLES} -t nat {op} OUTPUT ... in {}: {}: {tail}",
        netns.display(),
        out.status
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_redirects_loopback_tcp_to_the_listener() {
        let spec = rule_spec(41234).join(" ");
        assert_eq!(
            spec,
            "-d 127.0.0.1/32 -p tcp -m comment --comment moat-port-forward -j REDIRECT \
             --to-ports 41234"
        );
    }
}
