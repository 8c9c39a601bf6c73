//! `moat exec POD [CMD...]`: a command, or an interactive shell, in a pod's guest, outside
//! any container, through the shim's ops socket to the agent's debug console
//! (`moat_agent_protocol::console`). Only a pod started with `[debug] console = true` has one;
//! the shim logs every use.

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::Context;
use moat_agent_protocol::console::{ConsoleConnection, ConsoleInput, ConsoleRequest};
use moat_runtime::ops::client;

use crate::pods;
use crate::Globals;

/// `moat exec`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod (`POD`, `NAMESPACE/POD` or a unique prefix).
    pod: String,
    /// Give the command a terminal (default: only for an interactive shell on a terminal).
    #[arg(short = 't', long)]
    tty: bool,
    /// Never give it a terminal.
    #[arg(short = 'T', long, conflicts_with = "tty")]
    no_tty: bool,
    /// The command and its arguments, run by the guest's `sh -c` (default: an interactive
    /// shell).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs `moat exec`; its exit status is the command's (0..=255).
pub fn run(g: &Globals, args: Args) -> anyhow::Result<ExitCode> {
    let all = pods::list(&pods::state_dir(g)?)?;
    let pod = pods::find(&all, &args.pod)?;
    let stdin = std::io::stdin();
    let tty = args.tty || (!args.no_tty && args.command.is_empty() && stdin.is_terminal());
    let (rows, cols) = if tty { window_size() } else { (0, 0) };
    let request = ConsoleRequest {
        argv: args.command,
        tty,
        term: if tty {
            std::env::var("TERM").unwrap_or_default()
        } else {
            String::new()
        },
        rows,
        cols,
    };
    let (stream, _early) = client::console(&pod.socket)?;
    let conn = ConsoleConnection::open(stream, &request).context("starting the session")?;
    let _raw = if tty && stdin.is_terminal() {
        RawMode::enter()
    } else {
        None
    };
    conn.copy_stdin(std::io::stdin())
        .context("starting the stdin thread")?;
    if tty {
        follow_window_size(conn.input(), (rows, cols));
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let status = conn.wait(&mut out, Some(&mut err))?;
    Ok(ExitCode::from(
        u8::try_from(status.clamp(0, 255)).unwrap_or(255),
    ))
}

/// Sends the local terminal's size to the session whenever it changes (looked at twice a
/// second, in a thread that ends with the session).
fn follow_window_size<S>(input: ConsoleInput<S>, mut last: (u16, u16))
where
    S: Send + Sync + 'static,
    for<'a> &'a S: Write,
{
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = window_size();
        if now != last && now != (0, 0) {
            if input.resize(now.0, now.1).is_err() {
                return;
            }
            last = now;
        }
    });
}

/// The local terminal's rows and columns (0, 0 when unknown).
fn window_size() -> (u16, u16) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass.
    let rc = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (0, 0)
    }
}

/// The local terminal in raw mode (keys go to the guest's shell as typed) until dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: an all-zero termios is a valid value for tcgetattr to overwrite.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes the terminal's settings into `saved`.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only changes the fields of the termios we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the termios we pass.
        (unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } == 0).then_some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr gave, from the termios we pass.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
