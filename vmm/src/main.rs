//! `moat-vmm` binary: parse flags (and an optional JSON config), run one microVM, and exit
//! with the status that says how the guest stopped (see `moat_vmm::exit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use moat_vmm::config::{
    BlockDeviceConfig, JailConfig, NetDeviceConfig, SeccompMode, SerialOutput, SharedDirConfig,
    ValidConfig, VmConfig, VsockDeviceConfig,
};
use moat_vmm::exit::{ExitReason, EXIT_BAD_CONFIG, EXIT_VMM_ERROR};
use moat_vmm::jail::{creds, root, supervisor};
use moat_vmm::metrics::{install_flush_signal, Metrics, MetricsFile};
use moat_vmm::vmm::Vmm;

/// Boot one KVM microVM from a vmlinux (PVH) and an optional initramfs.
#[derive(Parser, Debug)]
#[command(name = "moat-vmm", version, about)]
struct Cli {
    /// JSON configuration file; flags given on the command line override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Guest kernel (uncompressed vmlinux with a PVH note).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs handed to the guest kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Full kernel command line (replaces moat's default).
    #[arg(long)]
    cmdline: Option<String>,
    /// Arguments appended to the kernel command line.
    #[arg(long = "append", allow_hyphen_values = true)]
    extra_cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Serial console output: `stdout`, `null` or `file:PATH`.
    #[arg(long, value_parser = parse_serial)]
    serial: Option<SerialOutput>,
    /// Feed standard input to the guest's serial console.
    #[arg(long)]
    stdin: bool,
    /// A virtio-blk disk backed by PATH, read-write, or read-only with `,ro`; repeat for
    /// more disks (the guest sees them as /dev/vda, /dev/vdb, ... in this order, after any
    /// from the config file).
    #[arg(long = "block", value_name = "PATH[,ro]", value_parser = parse_block)]
    block: Vec<BlockDeviceConfig>,
    /// A hybrid vsock device: guest CID and the host unix socket path.
    #[arg(long, value_name = "CID,UDS_PATH", value_parser = parse_vsock)]
    vsock: Option<VsockDeviceConfig>,
    /// Share host directory PATH with the guest over virtio-fs under mount tag TAG
    /// (`mount -t virtiofs TAG /mnt` in the guest); repeat for more shares.
    #[arg(long = "share", value_name = "TAG=PATH", value_parser = parse_share)]
    share: Vec<SharedDirConfig>,
    /// A virtio-net device on TAP interface NAME, or on an inherited TAP queue fd N (opened
    /// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR); optional guest MAC (default: random, locally
    /// administered) and announced MTU; repeat for more (eth0, eth1, ... after any from the
    /// config file).
    #[arg(
        long = "net",
        value_name = "tap=NAME|fd=N[,mac=MAC][,mtu=N]",
        value_parser = parse_net
    )]
    net: Vec<NetDeviceConfig>,
    /// Do not give the guest a virtio-rng entropy device.
    #[arg(long)]
    no_rng: bool,
    /// Run jailed in DIR (an empty directory): own namespaces, DIR as the root (see
    /// SPECIFICATION.md, "Jail").
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// Run without seccomp filters (debugging only: the VMM warns).
    #[arg(long, conflicts_with = "seccomp_log")]
    no_seccomp: bool,
    /// Let syscalls outside the filters through and have the kernel log them (audit).
    #[arg(long)]
    seccomp_log: bool,
    /// Write metrics as JSON to this file: rewritten in place while the VM runs (every
    /// `--metrics-interval-ms`, and on SIGUSR1) and a last time when the VM stops.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// Milliseconds between two rewrites of the metrics file while the VM runs
    /// (100..=3600000; default 5000).
    #[arg(long, value_name = "MS")]
    metrics_interval_ms: Option<u64>,
    /// Log filter for the VMM's own logs on stderr (e.g. `info`, `moat_vmm=debug`).
    #[arg(long, env = "MOAT_LOG", default_value = "warn")]
    log_level: String,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "null" => Ok(SerialOutput::Null),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err(format!("expected stdout, null or file:PATH, got {s:?}")),
        },
    }
}

fn parse_block(s: &str) -> Result<BlockDeviceConfig, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some((_, opt)) => return Err(format!("unknown block option {opt:?} (expected ro or rw)")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("expected PATH[,ro]".into());
    }
    Ok(BlockDeviceConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_vsock(s: &str) -> Result<VsockDeviceConfig, String> {
    let (cid, path) = s
        .split_once(',')
        .ok_or_else(|| format!("expected CID,UDS_PATH, got {s:?}"))?;
    let guest_cid = cid.parse().map_err(|e| format!("vsock CID {cid:?}: {e}"))?;
    Ok(VsockDeviceConfig {
        guest_cid,
        uds_path: path.into(),
    })
}

fn parse_net(s: &str) -> Result<NetDeviceConfig, String> {
    s.parse()
}

fn parse_share(s: &str) -> Result<SharedDirConfig, String> {
    match s.split_once('=') {
        Some((tag, path)) if !tag.is_empty() && !path.is_empty() => Ok(SharedDirConfig {
            tag: tag.into(),
            path: path.into(),
        }),
        _ => Err(format!("expected TAG=PATH, got {s:?}")),
    }
}

impl Cli {
    fn into_config(self) -> anyhow::Result<VmConfig> {
        let mut cfg = match &self.config {
            Some(path) => VmConfig::from_json_file(path)?,
            None => VmConfig::default(),
        };
        cfg.kernel = self.kernel.or(cfg.kernel);
        cfg.initrd = self.initrd.or(cfg.initrd);
        cfg.cmdline = self.cmdline.or(cfg.cmdline);
        cfg.extra_cmdline = self.extra_cmdline.or(cfg.extra_cmdline);
        cfg.vcpus = self.vcpus.unwrap_or(cfg.vcpus);
        cfg.memory_mib = self.memory_mib.unwrap_or(cfg.memory_mib);
        if let Some(out) = self.serial {
            cfg.serial.output = out;
        }
        cfg.serial.stdin |= self.stdin;
        cfg.metrics_file = self.metrics_file.or(cfg.metrics_file);
        cfg.metrics_interval_ms = self.metrics_interval_ms.or(cfg.metrics_interval_ms);
        cfg.block_devices.extend(self.block);
        cfg.shared_dirs.extend(self.share);
        cfg.net_devices.extend(self.net);
        cfg.rng &= !self.no_rng;
        cfg.vsock = self.vsock.or(cfg.vsock);
        if let Some(dir) = self.jail {
            cfg.jail = Some(JailConfig { dir });
        }
        if self.no_seccomp {
            cfg.seccomp = SeccompMode::Off;
        } else if self.seccomp_log {
            cfg.seccomp = SeccompMode::Log;
        }
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    // One malloc arena for every thread: glibc reads /proc/sys/vm/overcommit_memory the first
    // time it shrinks a thread arena, which a vCPU thread's seccomp filter (no file calls)
    // must never see; fewer arenas also keep the VMM's RSS small.
    // SAFETY: mallopt with integer arguments, before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let metrics = Arc::new(Metrics::new());
    // First of all, so that a SIGUSR1 (a metrics flush request) never kills the VMM, the
    // jail's supervisor included: until the event loop runs it is ignored.
    if let Err(e) = install_flush_signal() {
        eprintln!("moat-vmm: installing the SIGUSR1 handler: {e}");
        return ExitCode::from(EXIT_VMM_ERROR as u8);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let print_only = cli.print_config;
    let config = match cli.into_config().and_then(|c| {
        let valid = c.validate()?;
        Ok((c, valid))
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moat-vmm: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if print_only {
        println!(
            "{}",
            serde_json::to_string_pretty(&config.0).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match run(&config.1, metrics) {
        Ok(reason) => {
            if reason.exit_code() != 0 {
                eprintln!("moat-vmm: {reason}");
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("moat-vmm: {e:#}");
            ExitCode::from(EXIT_VMM_ERROR as u8)
        }
    }
}

fn run(config: &ValidConfig, metrics: Arc<Metrics>) -> anyhow::Result<ExitReason> {
    let jailed = match &config.jail {
        Some(jail) => {
            supervisor::fork_into_pid_namespace()?;
            Some(root::enter(config, jail)?)
        }
        None => None,
    };
    let config = jailed.as_ref().unwrap_or(config);
    let out = match &config.metrics_file {
        Some(path) => {
            Some(Arc::new(MetricsFile::open(path).with_context(|| {
                format!("opening the metrics file {}", path.display())
            })?))
        }
        None => None,
    };
    let mut vmm = Vmm::new(config, metrics.clone()).context("building the microVM")?;
    if let (Some(out), Some(ms)) = (&out, config.metrics_interval_ms) {
        vmm.flush_metrics_to(out.clone(), Duration::from_millis(ms))?;
    }
    if jailed.is_some() {
        root::seal()?;
    }
    creds::restrict(config)?;
    let result = vmm.run().context("running the microVM");
    if let Some(out) = &out {
        let why = match &result {
            Ok(reason) => reason.to_string(),
            Err(e) => format!("VMM error: {e:#}"),
        };
        out.flush(&metrics, Some(why))
            .context("writing the metrics file")?;
    }
    tracing::info!(snapshot = ?metrics.snapshot(), "VM stopped");
    result
}
