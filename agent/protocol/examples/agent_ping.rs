//! `agent_ping UDS_PATH [PORT] [TIMEOUT_S]`: connects to moat-agent through a moat-vmm hybrid
//! vsock socket and prints Check, Version and GetGuestDetails. `agent_ping unix:PATH` talks to
//! `moat-agent --listen unix:PATH` directly. For trying a guest by hand.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use moat_agent_protocol::{AgentClient, AGENT_VSOCK_PORT};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(target) = args.first() else {
        eprintln!("usage: agent_ping UDS_PATH|unix:PATH [PORT] [TIMEOUT_S]");
        return ExitCode::from(2);
    };
    let port = args
        .get(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(AGENT_VSOCK_PORT);
    let timeout = Duration::from_secs(args.get(2).and_then(|t| t.parse().ok()).unwrap_or(30));
    let start = Instant::now();
    let client = match target.strip_prefix("unix:") {
        Some(path) => AgentClient::connect_unix(path, timeout),
        None => AgentClient::connect_hybrid_vsock(target, port, timeout),
    };
    let result = client.and_then(|c| {
        println!("connected to {} in {:?}", c.target(), start.elapsed());
        println!("check: {:?}", c.check()?);
        let v = c.version()?;
        println!(
            "version: agent {} protocol {}",
            v.agent_version, v.protocol_version
        );
        let d = c.guest_details()?;
        println!(
            "guest: kernel {} memory {} bytes cpus {} agent {}",
            d.kernel_release, d.memory_total_bytes, d.online_cpus, d.agent_version
        );
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_ping: {e}");
            ExitCode::FAILURE
        }
    }
}
