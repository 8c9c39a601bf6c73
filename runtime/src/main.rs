//! `containerd-shim-moat-v2`: containerd's shim v2 for runtime `io.containerd.moat.v2`. Each
//! pod runs in its own moat microVM (moat-vmm + moat-agent); see `runtime/README.md`.

use moat_runtime::shim;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "{}:\n  Version: {}\n  Runtime: {}\n  Agent protocol: {}",
            std::env::args().next().unwrap_or_default(),
            env!("CARGO_PKG_VERSION"),
            shim::RUNTIME_ID,
            moat_agent_protocol::PROTOCOL_VERSION
        );
        return;
    }
    containerd_shim::run::<shim::Shim>(shim::RUNTIME_ID, Some(shim::shim_config()));
}
