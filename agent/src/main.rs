//! `moat-agent`: PID 1 of moat's microVM guest, serving the agent protocol
//! (`moat-agent-protocol`) over ttrpc on AF_VSOCK port 1024.
//!
//! As PID 1 it mounts the base filesystems, signals the boot timer, reaps orphans and never
//! exits: when it must stop it logs why and reboots the guest (moat-vmm exit status 0).
//! Not as PID 1, or with `--no-guest-init` (tests: `moat-agent --listen unix:PATH`), it skips
//! all of that and stops on SIGTERM/SIGINT.

mod cmdline;
mod container;
mod debug_console;
mod files;
mod guest_info;
mod guest_stats;
mod listener;
mod logging;
mod network;
mod pid1;
mod port_forward;
mod pty;
mod reaper;
mod service;
mod signals;
mod stats;
mod stdio;
mod switch_root;
#[cfg(test)]
mod testing;
mod util;

use anyhow::{bail, Context};
use clap::Parser;
use tracing::{debug, error, info, warn};

use std::sync::Arc;

use crate::container::registry::Containers;
use crate::listener::ListenAddr;
use crate::pid1::MountOutcome;
use crate::reaper::Reaper;

/// `MOAT_AGENT_VERSION=<version>\n` among the binary's data, so that host tools can read the
/// agent's version out of a guest image (`grep -a MOAT_AGENT_VERSION=`). `main` uses it too:
/// `#[used]` alone does not stop the linker from dropping an unreferenced section.
#[used]
static VERSION_MARKER: &[u8] =
    concat!("MOAT_AGENT_VERSION=", env!("CARGO_PKG_VERSION"), "\n").as_bytes();

/// moat's guest agent: ttrpc server for the host, PID 1 of the microVM.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Where to serve ttrpc: vsock:PORT (any CID) or unix:PATH.
    #[arg(long, default_value_t = ListenAddr::default())]
    listen: ListenAddr,
    /// Where to serve process stdio streams; default: vsock:1025, or unix:PATH.stdio with
    /// --listen unix:PATH.
    #[arg(long)]
    stdio_listen: Option<ListenAddr>,
    /// Log filter (`info`, `debug`, `moat_agent=trace`...). Overrides `moat.log=` of the
    /// kernel command line; default `info`.
    #[arg(long, env = "MOAT_AGENT_LOG")]
    log_level: Option<String>,
    /// Act as a plain service even as PID 1: no guest mounts, boot timer or reboot (tests
    /// run the agent as PID 1 of fresh user/pid/mount/net namespaces on a host).
    #[arg(long)]
    no_guest_init: bool,
    /// Where the agent keeps its files (the pod's DNS files, CopyFile's tree).
    #[arg(long, default_value = container::pod::DEFAULT_STATE_DIR)]
    state_dir: std::path::PathBuf,
    /// Serve the debug console here (vsock:PORT or unix:PATH). Not as PID 1 only (tests): in
    /// the guest only `moat.debug_console=1` on the kernel command line turns it on (vsock
    /// port 1026).
    #[arg(long)]
    debug_console_listen: Option<ListenAddr>,
}

/// The flag of [`Cli::no_guest_init`], checked before arguments are parsed.
const NO_GUEST_INIT: &str = "--no-guest-init";

/// What PID 1 did before logging worked, to be logged afterwards.
#[derive(Default)]
struct EarlyBoot {
    mounts: Vec<(&'static pid1::MountSpec, MountOutcome)>,
    console: Option<std::io::Result<Vec<i32>>>,
    boot_timer: Option<std::io::Result<()>>,
    notes: Vec<String>,
    switched_root: bool,
}

fn main() {
    std::hint::black_box(VERSION_MARKER);
    // A container's init process is this binary re-executed: nothing of the agent runs there.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == container::init::INIT_ARG)
    {
        container::init::main();
    }
    // Tests run the agent as PID 1 of fresh namespaces on a host: no guest duties there.
    let pid1 = std::process::id() == 1 && !std::env::args().any(|a| a == NO_GUEST_INIT);
    let mut early = early_boot(pid1);
    let cli = parse_cli(pid1, &mut early);
    let kernel_opts = kernel_options(pid1, &mut early);
    start_logging(&cli, &kernel_opts, &mut early);
    mount_shares(&kernel_opts);
    for opt in &kernel_opts.unknown {
        early
            .notes
            .push(format!("unknown kernel command-line option {opt:?}"));
    }

    info!(
        "moat-agent {} (protocol {}) starting{}",
        service::AGENT_VERSION,
        moat_agent_protocol::PROTOCOL_VERSION,
        if pid1 { " as PID 1" } else { "" }
    );
    let boot_ok = report_early(&early);
    let console = debug_console_addr(&cli, &kernel_opts, pid1);

    let result = if boot_ok {
        run(&cli, pid1, console)
    } else {
        Err(anyhow::anyhow!("essential boot steps failed (see above)"))
    };
    stop(pid1, result)
}

/// What comes before anything else, in this order: the signal mask (before any thread
/// exists: every thread inherits it), the panic hook and, as PID 1, leaving the initramfs,
/// the base mounts, the console fds and the boot timer.
fn early_boot(pid1: bool) -> EarlyBoot {
    let mut early = EarlyBoot::default();
    if let Err(e) = signals::block_handled() {
        early.notes.push(format!("blocking signals failed: {e}"));
    }
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{}panic: {info}", logging::PREFIX);
        if pid1 {
            eprintln!("{}PID 1 panicked: rebooting the guest", logging::PREFIX);
            let e = pid1::reboot();
            eprintln!("{}reboot failed: {e}", logging::PREFIX);
        }
    }));

    if pid1 && switch_root::on_initramfs() {
        // Returns only if the switch failed; then containers are chroot'ed, not pivoted.
        let e = switch_root::switch_to_tmpfs();
        early.notes.push(format!(
            "staying on the initramfs (containers will be chroot'ed): {e}"
        ));
    }
    early.switched_root = pid1 && switch_root::switched();
    if pid1 {
        early.mounts = pid1::mount_all();
        early.console = Some(pid1::ensure_console_fds());
        early.boot_timer = Some(pid1::signal_boot_timer());
    }
    early
}

/// The command line; as PID 1 a parse error is noted and the defaults used.
fn parse_cli(pid1: bool, early: &mut EarlyBoot) -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        // The kernel passes unknown command-line words to init as arguments: as PID 1 a
        // parse error must not stop the guest.
        Err(e) if pid1 => {
            early.notes.push(format!(
                "ignoring arguments {:?}: {e}",
                std::env::args().collect::<Vec<_>>()
            ));
            Cli {
                listen: ListenAddr::default(),
                stdio_listen: None,
                log_level: None,
                no_guest_init: false,
                state_dir: container::pod::DEFAULT_STATE_DIR.into(),
                debug_console_listen: None,
            }
        }
        Err(e) => e.exit(),
    }
}

/// The `moat.*` options of the kernel command line (PID 1 only; none otherwise).
fn kernel_options(pid1: bool, early: &mut EarlyBoot) -> cmdline::CmdlineOptions {
    if !pid1 {
        return Default::default();
    }
    cmdline::CmdlineOptions::from_proc().unwrap_or_else(|e| {
        early
            .notes
            .push(format!("reading {}: {e}", cmdline::PROC_CMDLINE));
        Default::default()
    })
}

/// Starts logging with `--log-level`, else `moat.log=`, else `info`.
fn start_logging(cli: &Cli, kernel_opts: &cmdline::CmdlineOptions, early: &mut EarlyBoot) {
    let filter = cli
        .log_level
        .clone()
        .or_else(|| kernel_opts.log.clone())
        .unwrap_or_else(|| "info".to_string());
    if let Some(w) = logging::init(&filter) {
        early.notes.push(w);
    }
}

/// Mounts the virtio-fs shares of `moat.share=`; a failure is logged.
fn mount_shares(kernel_opts: &cmdline::CmdlineOptions) {
    for (tag, mount_point) in &kernel_opts.shares {
        match pid1::mount_share(tag, mount_point) {
            Ok(()) => info!("mounted virtio-fs share {tag:?} at {mount_point}"),
            Err(e) => error!("cannot mount virtio-fs share {tag:?} at {mount_point}: {e}"),
        }
    }
}

/// Logs how the agent ended and exits; PID 1 reboots the guest instead.
fn stop(pid1: bool, result: anyhow::Result<()>) -> ! {
    match &result {
        Ok(()) => info!("stopped"),
        Err(e) => error!("fatal: {e:#}"),
    }
    if pid1 {
        error!("PID 1 is stopping: rebooting the guest");
        let e = pid1::reboot();
        error!("reboot(RB_AUTOBOOT) failed: {e}; exiting (the kernel will panic)");
        std::process::exit(1);
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

/// Logs what happened before logging worked. Returns false if an essential step failed.
fn report_early(early: &EarlyBoot) -> bool {
    let mut ok = true;
    for note in &early.notes {
        warn!("{note}");
    }
    if early.switched_root {
        info!("left the initramfs for a tmpfs root (containers get pivot_root)");
    }
    for (spec, outcome) in &early.mounts {
        match outcome {
            MountOutcome::Mounted => debug!("mounted {} on {}", spec.fstype, spec.target),
            MountOutcome::AlreadyMounted => info!("{} already mounted", spec.target),
            MountOutcome::Failed(e) if spec.essential => {
                error!("mounting {} on {} failed: {e}", spec.fstype, spec.target);
                ok = false;
            }
            MountOutcome::Failed(e) => {
                error!(
                    "mounting {} on {} failed (continuing): {e}",
                    spec.fstype, spec.target
                )
            }
        }
    }
    match &early.console {
        Some(Ok(fds)) if !fds.is_empty() => {
            warn!("fds {fds:?} were closed; opened /dev/console on them")
        }
        Some(Err(e)) => error!("opening /dev/console for fds 0-2: {e}"),
        _ => {}
    }
    match &early.boot_timer {
        Some(Ok(())) => debug!("signalled the boot timer"),
        Some(Err(e)) => error!("boot timer write failed (boot time will not be measured): {e}"),
        None => {}
    }
    ok
}

/// Where to serve the debug console, if at all: as PID 1, vsock 1026 with
/// `moat.debug_console=1` only; otherwise `--debug-console-listen`.
fn debug_console_addr(
    cli: &Cli,
    kernel_opts: &cmdline::CmdlineOptions,
    pid1: bool,
) -> Option<ListenAddr> {
    if !pid1 {
        return cli.debug_console_listen.clone();
    }
    if cli.debug_console_listen.is_some() {
        warn!("ignoring --debug-console-listen as PID 1 (moat.debug_console=1 decides)");
    }
    kernel_opts
        .debug_console
        .then(ListenAddr::debug_console_default)
}

/// Serves the debug console on `addr`; a failure is logged (the pod works without it).
fn start_debug_console(addr: &ListenAddr, reaper: &Arc<Reaper>) {
    let started = listener::bind(addr)
        .and_then(|fd| Arc::new(debug_console::DebugConsole::new(reaper.clone())).serve(fd));
    match started {
        Ok(_) => info!("serving the debug console on {addr}"),
        Err(e) => error!("cannot serve the debug console on {addr}: {e}"),
    }
}

/// Serves port-forward streams on `addr`; a failure is logged (the pod works without them).
fn start_port_forward(addr: &ListenAddr) {
    let started = listener::bind(addr)
        .and_then(|fd| Arc::new(port_forward::PortForwarder::default()).serve(fd));
    match started {
        Ok(_) => info!("serving port-forward streams on {addr}"),
        Err(e) => error!("cannot serve port-forward streams on {addr}: {e}"),
    }
}

/// Serves ttrpc until a stop signal (not PID 1) or an error.
fn run(cli: &Cli, pid1: bool, console: Option<ListenAddr>) -> anyhow::Result<()> {
    let reaper = Arc::new(Reaper::new());
    if !pid1 {
        // Container processes are grandchildren: they must be re-parented to the agent.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            warn!(
                "PR_SET_CHILD_SUBREAPER: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let stdio_addr = cli
        .stdio_listen
        .clone()
        .unwrap_or_else(|| cli.listen.stdio_default());
    let stdio_fd =
        listener::bind(&stdio_addr).with_context(|| format!("listening on {stdio_addr}"))?;
    let hub = stdio::StdioHub::new();
    hub.serve(stdio_fd)
        .context("starting the stdio stream listener")?;
    info!("serving process stdio streams on {stdio_addr}");
    let port_forward_addr = cli.listen.port_forward_default();
    start_port_forward(&port_forward_addr);
    if let Some(addr) = &console {
        start_debug_console(addr, &reaper);
    }
    let containers = Containers::new(reaper.clone(), hub);
    let services = service::Services::new(containers, cli.state_dir.clone());
    let fd = listener::bind(&cli.listen).with_context(|| format!("listening on {}", cli.listen))?;
    let mut server =
        service::server(listener::into_raw(fd), services).context("creating the ttrpc server")?;
    server.start().context("starting the ttrpc server")?;
    info!("serving ttrpc on {}", cli.listen);

    let stop = signals::run_loop(&reaper, pid1).context("signal loop")?;
    info!("{stop}: shutting down");
    server.shutdown();
    let own = [&cli.listen, &stdio_addr, &port_forward_addr];
    for addr in own.into_iter().chain(console.as_ref()) {
        if let ListenAddr::Unix(path) = addr {
            if let Err(e) = std::fs::remove_file(path) {
                warn!("removing {}: {e}", path.display());
            }
        }
    }
    if pid1 {
        bail!("the signal loop ended");
    }
    Ok(())
}
