//! Test-only (cargo feature `attack-hooks`, never in a release build): makes a running VMM do
//! what a compromised one would, from its device thread (the main thread, which runs every
//! device backend), so tests can show the jail and the filters stop it.
//!
//! The guest kernel command line selects it: `moat.attack=<what>[@<ms>]` fires once, `<ms>`
//! after the guest reached /init (0 by default), where `<what>` is
//! - `execve`: run `/bin/sh` (the filter stops the VMM: status 5);
//! - `ptrace`: attach to PID 1 of its namespace (the filter stops the VMM: status 5);
//! - `open-shadow`: open `/etc/shadow` (the jail has none: refused with ENOENT, the VMM goes
//!   on).

use std::time::Duration;

use crate::metrics::Metrics;

/// What to attempt, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attack {
    what: String,
    after: Duration,
    done: bool,
}

impl Attack {
    /// The attack `cmdline` asks for, if any.
    pub fn from_cmdline(cmdline: &str) -> Option<Attack> {
        let spec = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("moat.attack="))?;
        let (what, ms) = spec.split_once('@').unwrap_or((spec, "0"));
        Some(Attack {
            what: what.to_owned(),
            after: Duration::from_millis(ms.parse().unwrap_or(0)),
            done: false,
        })
    }

    /// Fires once the guest has been at /init for the delay (call from the event loop).
    pub fn poll(&mut self, metrics: &Metrics) {
        let Some(init) = metrics.guest_init_elapsed() else {
            return;
        };
        if self.done || metrics.since_start() < init + self.after {
            return;
        }
        self.done = true;
        eprintln!("moat-vmm: attack-hooks: attempting {}", self.what);
        let outcome = match self.what.as_str() {
            // SAFETY (all three): plain syscalls with valid C strings or integers; this is
            // a test hook whose point is to make them.
            "execve" => unsafe {
                let sh = c"/bin/sh";
                let argv = [sh.as_ptr(), std::ptr::null()];
                libc::execve(sh.as_ptr(), argv.as_ptr(), std::ptr::null())
            },
            "ptrace" => unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0) as i32 },
            "open-shadow" => unsafe {
                libc::openat(libc::AT_FDCWD, c"/etc/shadow".as_ptr(), libc::O_RDONLY)
            },
            other => {
                eprintln!("moat-vmm: attack-hooks: unknown attack {other:?}");
                return;
            }
        };
        let err = std::io::Error::last_os_error();
        eprintln!(
            "moat-vmm: attack-hooks: {} returned {outcome}: refused: {err}",
            self.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_selects_the_attack() {
        assert_eq!(Attack::from_cmdline("console=ttyS0 quiet"), None);
        let a = Attack::from_cmdline("quiet moat.attack=ptrace@1500 x").unwrap();
        assert_eq!(
            (a.what.as_str(), a.after),
            ("ptrace", Duration::from_millis(1500))
        );
        let a = Attack::from_cmdline("moat.attack=execve").unwrap();
        assert_eq!((a.what.as_str(), a.after), ("execve", Duration::ZERO));
    }
}
