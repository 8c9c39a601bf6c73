//! Child processes the harness starts (qemu, moat-vmm, containerd, ctr, the agent): a
//! [`KillOnDrop`] guard makes sure none outlives the test that started it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Makes the process `cmd` spawns get SIGKILL when the *thread* that spawned it dies
/// (`PR_SET_PDEATHSIG`): a killed test takes its qemu or containerd with it.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A child process that is killed (SIGKILL) and reaped on drop unless it
/// has already been waited for.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    reaped: bool,
}

/// How waiting for a [`KillOnDrop`] child ended.
#[derive(Debug)]
pub enum WaitOutcome {
    /// The process exited by itself.
    Exited(ExitStatus),
    /// The deadline passed; the process was killed and reaped.
    TimedOut,
}

impl KillOnDrop {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Self {
        Self {
            child,
            reaped: false,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's exit status if it has exited (then it is reaped), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let st = self.child.try_wait()?;
        self.reaped |= st.is_some();
        Ok(st)
    }

    /// Waits until the child exits or `timeout` passes; on timeout kills it.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(5);
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.reaped = true;
                return Ok(WaitOutcome::Exited(st));
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Ok(WaitOutcome::TimedOut);
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    /// Kills and reaps the child (idempotent).
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn child_is_killed_on_timeout_and_drop() {
        let mut c = KillOnDrop::new(Command::new("sleep").arg("600").spawn().unwrap());
        let pid = c.id();
        let out = c.wait_timeout(Duration::from_millis(100)).unwrap();
        assert!(matches!(out, WaitOutcome::TimedOut));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());

        let c = KillOnDrop::new(Command::new("sleep").arg("600").spawn().unwrap());
        let pid = c.id();
        drop(c);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn exit_is_reported() {
        let mut c = KillOnDrop::new(Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap());
        match c.wait_timeout(Duration::from_secs(10)).unwrap() {
            WaitOutcome::Exited(st) => assert_eq!(st.code(), Some(3)),
            WaitOutcome::TimedOut => panic!("timed out"),
        }
    }
}
