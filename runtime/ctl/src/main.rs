//! `moat`: the operator's tool for a host that runs moat pods.
//!
//! - `moat check`: does this host run moat, and if not, why (exit 1 when a hard requirement
//!   fails);
//! - `moat env`: the effective configuration, where each value came from, and versions;
//! - `moat ps`: the pods and containers this host's shims run;
//! - `moat exec POD [CMD...]`: a debug shell in a pod's guest (only for a pod started with
//!   `[debug] console = true`);
//! - `moat metrics [POD]`: a pod's (or every pod's) metrics in Prometheus text format;
//! - `moat monitor --listen ADDR`: every pod's metrics for one Prometheus scrape.
//!
//! Output is for people; `--json` gives the same for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod env;
mod exec;
mod metrics;
mod monitor;
mod pods;
mod ps;

/// moat's operator tool.
#[derive(Parser, Debug)]
#[command(
    name = "moat",
    version,
    about = "Check, inspect and debug moat pods on this host"
)]
struct Cli {
    /// The moat configuration file (default: $MOAT_CONFIG, else /etc/moat/configuration.toml,
    /// else the built-in defaults).
    #[arg(long, global = true, env = "MOAT_CONFIG")]
    config: Option<PathBuf>,
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Check that this host can run moat pods; exit status 1 when a hard requirement fails.
    Check(check::Args),
    /// Show the effective configuration (and where each value came from) and versions.
    Env(env::Args),
    /// List the pods and containers this host's shims run.
    Ps(ps::Args),
    /// Run a command (default: a shell) in a pod's guest, outside any container.
    Exec(exec::Args),
    /// Print a pod's metrics (or every pod's) in Prometheus text format.
    Metrics(metrics::Args),
    /// Serve every pod's metrics for Prometheus.
    Monitor(monitor::Args),
}

/// What every subcommand gets besides its own arguments.
pub struct Globals {
    /// `--config`, if given.
    pub config: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = Globals {
        config: cli.config,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Check(a) => check::run(&g, a),
        Command::Env(a) => env::run(&g, a),
        Command::Ps(a) => ps::run(&g, a),
        Command::Exec(a) => exec::run(&g, a),
        Command::Metrics(a) => metrics::run(&g, a),
        Command::Monitor(a) => monitor::run(&g, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat: {e:#}");
            ExitCode::from(2)
        }
    }
}
