//! Telling a frozen L1 from a busy or idle one. Under qemu TCG, L1 at times freezes for good,
//! in one of two ways:
//! - *asleep:* every qemu thread sleeps and nothing reaches the console (an L1 timer interrupt
//!   lost). A qemu that has used no CPU time at all for [`FROZEN_AFTER`] is killed.
//! - *spinning:* a vCPU spins with L1's interrupts masked (seen: qemu 7.2 TCG stuck at
//!   `__svm_vcpu_run`), so qemu burns CPU but L1 runs nothing. `l1_init.sh` writes L1's uptime
//!   to the share's [`HEARTBEAT_FILE`] every few seconds from a shell loop; a heartbeat that
//!   has not changed for [`FROZEN_AFTER`] once it started means L1's userspace is not being
//!   scheduled at all, and qemu is killed.
//!
//! Either way waiting out the run's whole timeout would cost up to 20 minutes and say nothing;
//! a live L1 always has timers, the heartbeat and the test's own polling to run within that
//! time, so a run that times out with a live heartbeat is the test's own hang.

use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::containerd::sys::cpu_ticks;
use crate::process::KillOnDrop;

/// How long qemu may use no CPU time, or L1's heartbeat stand still, before L1 counts as
/// frozen.
pub const FROZEN_AFTER: Duration = Duration::from_secs(120);
/// The file in the scratch share that `l1_init.sh` rewrites with L1's uptime every 5 s.
pub const HEARTBEAT_FILE: &str = "heartbeat";
/// How often the watchdog looks.
const POLL: Duration = Duration::from_millis(200);

/// How waiting for L1's qemu ended.
#[derive(Debug)]
pub enum Waited {
    /// qemu exited by itself.
    Exited(ExitStatus),
    /// The run's timeout passed; qemu was killed.
    TimedOut,
    /// L1 froze (see the module doc); qemu was killed.
    Frozen(Freeze),
}

/// Which way L1 froze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// qemu used no CPU time for [`FROZEN_AFTER`].
    Asleep,
    /// qemu ran, but L1's heartbeat stood still for [`FROZEN_AFTER`].
    Spinning,
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freeze::Asleep => write!(f, "qemu used no CPU for {FROZEN_AFTER:?}"),
            Freeze::Spinning => write!(
                f,
                "qemu ran but L1's heartbeat stood still for {FROZEN_AFTER:?}: L1 schedules nothing"
            ),
        }
    }
}

/// Something that changes while it is alive, and when it last changed.
struct Pulse<T> {
    last: T,
    since: Instant,
}

impl<T: PartialEq> Pulse<T> {
    fn new(value: T, now: Instant) -> Self {
        Pulse {
            last: value,
            since: now,
        }
    }

    /// Records `value` seen at `now`; whether it has stood still for `limit`.
    fn still_for(&mut self, value: T, now: Instant, limit: Duration) -> bool {
        if value != self.last {
            *self = Pulse::new(value, now);
            return false;
        }
        now - self.since >= limit
    }
}

/// Waits for `qemu` until it exits, `timeout` passes, or it freezes (see the module doc);
/// `share` is the run's scratch share, where L1 writes its heartbeat.
pub fn wait(qemu: &mut KillOnDrop, timeout: Duration, share: &Path) -> io::Result<Waited> {
    wait_with(qemu, timeout, &share.join(HEARTBEAT_FILE), FROZEN_AFTER)
}

/// [`wait`] with the heartbeat file and the freeze limit given.
pub fn wait_with(
    qemu: &mut KillOnDrop,
    timeout: Duration,
    heartbeat: &Path,
    frozen_after: Duration,
) -> io::Result<Waited> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut cpu = Pulse::new(cpu_ticks(qemu.id(), None), start);
    let mut beat = Pulse::new(None, start);
    loop {
        if let Some(st) = qemu.try_wait()? {
            return Ok(Waited::Exited(st));
        }
        let now = Instant::now();
        if now >= deadline {
            qemu.kill();
            return Ok(Waited::TimedOut);
        }
        let freeze = if cpu.still_for(cpu_ticks(qemu.id(), None), now, frozen_after) {
            Some(Freeze::Asleep)
        } else {
            // Only once the heartbeat has started: L1 boots before it writes one.
            let b = std::fs::read(heartbeat).ok();
            let started = beat.last.is_some();
            (beat.still_for(b, now, frozen_after) && started).then_some(Freeze::Spinning)
        };
        if let Some(f) = freeze {
            qemu.kill();
            return Ok(Waited::Frozen(f));
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_that_uses_no_cpu_counts_as_frozen() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let mut p = KillOnDrop::new(child);
        let w = wait_with(
            &mut p,
            Duration::from_secs(30),
            &no_beat(),
            Duration::from_secs(1),
        );
        assert!(matches!(w.unwrap(), Waited::Frozen(Freeze::Asleep)));
    }

    /// A heartbeat path that never exists.
    fn no_beat() -> std::path::PathBuf {
        "/nonexistent/moat-heartbeat".into()
    }

    /// A busy loop of `secs` seconds that writes `beat` while `beat_secs` have not passed.
    fn busy(secs: u32, beat: &Path, beat_secs: u32) -> KillOnDrop {
        let script = format!(
            "s=$(date +%s); while [ $(date +%s) -lt $((s + {secs})) ]; do \
             [ $(date +%s) -lt $((s + {beat_secs})) ] && date +%s%N > '{}'; done",
            beat.display()
        );
        KillOnDrop::new(Command::new("sh").args(["-c", &script]).spawn().unwrap())
    }

    #[test]
    fn a_busy_process_whose_heartbeat_stops_counts_as_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let beat = dir.path().join("beat");
        let mut p = busy(20, &beat, 1);
        let w = wait_with(
            &mut p,
            Duration::from_secs(15),
            &beat,
            Duration::from_secs(2),
        );
        assert!(matches!(w.unwrap(), Waited::Frozen(Freeze::Spinning)));
    }

    #[test]
    fn a_live_heartbeat_is_not_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let beat = dir.path().join("beat");
        let mut p = busy(4, &beat, 4);
        let w = wait_with(
            &mut p,
            Duration::from_secs(30),
            &beat,
            Duration::from_secs(2),
        );
        assert!(matches!(w.unwrap(), Waited::Exited(_)));
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
        let w = wait_with(
            &mut p,
            Duration::from_secs(30),
            &no_beat(),
            Duration::from_secs(1),
        );
        assert!(matches!(w.unwrap(), Waited::Exited(_)));
    }

    #[test]
    fn own_cpu_time_is_read() {
        assert!(cpu_ticks(std::process::id(), None).is_some());
        assert_eq!(cpu_ticks(u32::MAX, None), None);
    }
}
