//! A VMM whose shim died: found from the pod directory's pid file (checked against the
//! process's command line) and killed by `containerd-shim-moat-v2 delete`.

use std::time::{Duration, Instant};

use crate::pod::layout::PodDir;

/// The `moat-vmm` of a pod directory, from its pid file, if that process still runs and is
/// that pod's VMM (its command line names the pod's `vm.json`).
pub fn leftover_vmm(dir: &PodDir) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.vmm_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.vm_config().to_string_lossy().into_owned();
    let text = String::from_utf8_lossy(&cmdline);
    text.contains(&needle).then_some(pid)
}

/// SIGKILLs a VMM that is not our child and waits (up to `timeout`) until it is gone.
pub fn kill_foreign(pid: i32, timeout: Duration) -> bool {
    // SAFETY: kill(2); the pid was just checked to be this pod's VMM.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            // A zombie (state Z) waits for its parent only.
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}
