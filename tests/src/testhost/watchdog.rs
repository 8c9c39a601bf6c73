//! Telling a frozen L1 from a busy or idle one. Under qemu TCG, L1 at times freezes for good:
//! every qemu thread sleeps and nothing reaches the console (an L1 timer interrupt lost).
//! Waiting out the run's whole timeout then costs up to 20 minutes; instead, a qemu that has
//! used no CPU time at all for [`FROZEN_AFTER`] is killed and the run reported frozen. A live
//! L1 always has timers and the test's own polling to run within that time.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::process::KillOnDrop;

/// How long qemu may use no CPU time before L1 counts as frozen.
pub const FROZEN_AFTER: Duration = Duration::from_secs(120);
/// How often the watchdog looks.
const POLL: Duration = Duration::from_millis(200);

/// How waiting for L1's qemu ended.
#[derive(Debug)]
pub enum Waited {
    /// qemu exited by itself.
    Exited(ExitStatus),
    /// The run's timeout passed; qemu was killed.
    TimedOut,
    /// qemu used no CPU for [`FROZEN_AFTER`]; it was killed.
    Frozen,
}

/// Waits for `qemu` until it exits, `timeout` passes, or it freezes (see the module doc).
pub fn wait(qemu: &mut KillOnDrop, timeout: Duration) -> io::Result<Waited> {
    wait_with(qemu, timeout, FROZEN_AFTER)
}

/// [`wait`] with the freeze limit given.
pub fn wait_with(
    qemu: &mut KillOnDrop,
    timeout: Duration,
    frozen_after: Duration,
) -> io::Result<Waited> {
    let deadline = Instant::now() + timeout;
    let mut last = (cpu_ticks(qemu.id()), Instant::now());
    loop {
        if let Some(st) = qemu.try_wait()? {
            return Ok(Waited::Exited(st));
        }
        let now = Instant::now();
        if now >= deadline {
            qemu.kill();
            return Ok(Waited::TimedOut);
        }
        let ticks = cpu_ticks(qemu.id());
        if ticks != last.0 {
            last = (ticks, now);
        } else if now - last.1 >= frozen_after {
            qemu.kill();
            return Ok(Waited::Frozen);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// User plus system CPU time of process `pid`, in clock ticks (`None` once it is gone).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_that_uses_no_cpu_counts_as_frozen() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let mut p = KillOnDrop::new(child);
        let w = wait_with(&mut p, Duration::from_secs(30), Duration::from_secs(1)).unwrap();
        assert!(matches!(w, Waited::Frozen), "{w:?}");
    }

    #[test]
    fn a_busy_process_is_not_frozen() {
        let child = Command::new("sh")
            .args([
                "-c",
                "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done",
            ])
            .spawn()
            .unwrap();
        let mut p = KillOnDrop::new(child);
        let w = wait_with(&mut p, Duration::from_secs(30), Duration::from_secs(1)).unwrap();
        assert!(matches!(w, Waited::Exited(_)), "{w:?}");
    }

    #[test]
    fn own_cpu_time_is_read() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert_eq!(cpu_ticks(u32::MAX), None);
    }
}
