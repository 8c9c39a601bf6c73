//! The VMM process's exit statuses: how the guest (or the VMM) stopped.
//!
//! | status | meaning                                                               |
//! |--------|-----------------------------------------------------------------------|
//! | 0      | the guest shut itself down (reboot or poweroff through the i8042)     |
//! | 1      | VMM error (setup failed, KVM error, I/O error)                        |
//! | 2      | invalid configuration or command line                                 |
//! | 3      | the guest kernel panicked (warm-reset flag set before the reset)      |
//! | 4      | the guest crashed (triple fault, KVM emulation failure, entry failure)|
//! | 5      | the VMM's seccomp filter stopped it (a syscall outside its allow-list)|
//! | 128+N  | the host stopped the VM with signal N (SIGTERM, SIGINT, SIGHUP)       |

/// Exit status: the guest shut down cleanly.
pub const EXIT_OK: i32 = 0;
/// Exit status: the VMM itself failed.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: bad configuration or command-line arguments.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit status: the guest kernel panicked.
pub const EXIT_GUEST_PANIC: i32 = 3;
/// Exit status: the guest crashed (triple fault or an unrecoverable vCPU state).
pub const EXIT_GUEST_CRASH: i32 = 4;
/// Exit status: a VMM thread made a syscall outside its seccomp allow-list (the VMM may be
/// compromised); the syscall is on stderr.
pub const EXIT_SECCOMP: i32 = 5;
/// Exit statuses above this one mean "stopped by signal `status - EXIT_SIGNAL_BASE`".
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// The exit status of a VMM the host stopped with `signal`.
pub fn signal_status(signal: i32) -> i32 {
    EXIT_SIGNAL_BASE + signal
}

/// Says what a VMM exit status means, for logs and errors: "killed by signal N",
/// "exit status 3: the guest panicked", ..., or "exit status N" for any other.
pub fn describe(status: i32) -> String {
    match status {
        s if s > EXIT_SIGNAL_BASE => format!("killed by signal {}", s - EXIT_SIGNAL_BASE),
        EXIT_GUEST_PANIC => format!("exit status {EXIT_GUEST_PANIC}: the guest panicked"),
        EXIT_GUEST_CRASH => format!("exit status {EXIT_GUEST_CRASH}: the guest crashed"),
        EXIT_SECCOMP => {
            format!("exit status {EXIT_SECCOMP}: moat-vmm stopped by its seccomp filter")
        }
        EXIT_BAD_CONFIG => format!("exit status {EXIT_BAD_CONFIG}: bad configuration"),
        EXIT_VMM_ERROR => format!("exit status {EXIT_VMM_ERROR}: the VMM failed"),
        s => format!("exit status {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_what_each_status_means() {
        assert_eq!(describe(0), "exit status 0");
        assert_eq!(describe(1), "exit status 1: the VMM failed");
        assert_eq!(describe(2), "exit status 2: bad configuration");
        assert_eq!(describe(3), "exit status 3: the guest panicked");
        assert_eq!(describe(4), "exit status 4: the guest crashed");
        assert_eq!(
            describe(5),
            "exit status 5: moat-vmm stopped by its seccomp filter"
        );
        assert_eq!(describe(6), "exit status 6");
        assert_eq!(describe(128), "exit status 128");
        assert_eq!(describe(signal_status(9)), "killed by signal 9");
        assert_eq!(describe(128 + 15), "killed by signal 15");
    }

    #[test]
    fn statuses_are_distinct() {
        let mut all = vec![
            EXIT_OK,
            EXIT_VMM_ERROR,
            EXIT_BAD_CONFIG,
            EXIT_GUEST_PANIC,
            EXIT_GUEST_CRASH,
            signal_status(libc::SIGTERM),
        ];
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
