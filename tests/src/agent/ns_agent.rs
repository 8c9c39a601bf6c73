//! `moat-agent` on this host as PID 1 of fresh user, PID, mount, network, UTS and IPC
//! namespaces (util-linux `unshare`), serving on a unix socket: the fast rung of the container
//! tests, which needs no VM. Root inside is mapped to the caller, so nothing the agent or its
//! containers do can touch the host's namespaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use moat_agent_protocol::AgentClient;
use tempfile::TempDir;

use crate::artifacts::find_on_path;
use crate::process::KillOnDrop;

/// A running agent in its own namespaces; killed (with everything it started) on drop.
pub struct NsAgent {
    // Dropped first: the agent dies before its directory goes.
    _child: KillOnDrop,
    dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
}

impl NsAgent {
    /// Starts `agent_bin` under `unshare`. Fails loudly when `unshare` is missing or user
    /// namespaces are not allowed here.
    pub fn start(agent_bin: &Path) -> Result<NsAgent, String> {
        let unshare = find_on_path("unshare")
            .ok_or("`unshare` (util-linux) is not on PATH: the fast container tests need it")?;
        let dir = tempfile::Builder::new()
            .prefix("moat-ns-agent-")
            .tempdir()
            .map_err(|e| format!("scratch dir: {e}"))?;
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(unshare)
            .args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--mount-proc",
                "--",
            ])
            .arg(agent_bin)
            .arg("--no-guest-init")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("MOAT_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawning unshare: {e}"))?;
        Ok(NsAgent {
            _child: KillOnDrop::new(child),
            dir,
            socket,
            log,
        })
    }

    /// A client connected to the agent (waits up to `timeout` for it to serve).
    pub fn client(&self, timeout: Duration) -> Result<AgentClient, String> {
        AgentClient::connect_unix(&self.socket, timeout)
            .map_err(|e| format!("{e}\n--- agent log ---\n{}", self.log()))
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A scratch directory that lives as long as the agent.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl NsAgent {
    /// The processes the agent has as children right now (`pid comm` each), read from the
    /// host's /proc: the agent is the only child of the `unshare` process.
    pub fn agent_children(&self) -> Vec<String> {
        let children = |pid: u32| -> Vec<u32> {
            let mut out = Vec::new();
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
            out
        };
        let Some(agent) = children(self._child.id()).first().copied() else {
            return vec!["<the agent is gone>".to_string()];
        };
        children(agent)
            .into_iter()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                format!("{p} {}", comm.trim())
            })
            .collect()
    }
}
