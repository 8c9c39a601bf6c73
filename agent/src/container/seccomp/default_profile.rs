//! moat's default seccomp profile, applied when a spec has no `linux.seccomp`.
//!
//! A deny-list: every syscall is allowed except those Docker's and containerd's default
//! profiles deny to a container without extra capabilities, so ordinary containers keep
//! working (including syscalls newer than this table) while the kernel's most exposed
//! surfaces stay closed even to a container that was granted the capability:
//!
//! - `EPERM` always: accounting (`acct`), keyrings (`add_key`, `keyctl`, `request_key`),
//!   `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, setting the clock
//!   (`clock_adjtime`, `clock_settime`, `settimeofday`, `stime`), kernel modules
//!   (`create_module`, `delete_module`, `finit_module`, `init_module`, `get_kernel_syms`,
//!   `query_module`), `kexec_load`, `kexec_file_load`, `reboot`, mounts (`mount`, `umount`,
//!   `umount2`, `move_mount`, `open_tree`, `open_tree_attr`, `fsopen`, `fsconfig`, `fsmount`,
//!   `fspick`, `mount_setattr`, `pivot_root`), file handles (`name_to_handle_at`,
//!   `open_by_handle_at`), `quotactl`, `quotactl_fd`, `swapon`, `swapoff`, `syslog`,
//!   obsolete or legacy interfaces (`lookup_dcookie`, `nfsservctl`, `sysfs`, `_sysctl`,
//!   `uselib`, `ustat`, `vm86`, `vm86old`) and port I/O (`iopl`, `ioperm`);
//! - `EPERM` for `clone` and `unshare` with `CLONE_NEWUSER` in their flags (no user
//!   namespaces: they unlock capabilities over namespaces the container creates);
//! - `EPERM` for `personality` with a persona other than Linux (0x0), Linux32 (0x8),
//!   UNAME26 (0x20000), UNAME26|Linux32 (0x20008) and the query 0xffffffff, as Docker;
//! - `ENOSYS` for `clone3`, whose flags live in memory a filter cannot read: libc then falls
//!   back to `clone`, whose flags the rule above checks (Docker does the same).
//!
//! `ptrace`, `process_vm_*`, `kcmp` and the NUMA calls (`mbind`, `get_mempolicy`,
//! `set_mempolicy`) stay allowed, as Docker allows them on kernels >= 4.8. Names that are not
//! x86_64 syscalls (`stime`, `umount`, `vm86`, `vm86old`) are kept for the record and skipped.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
use syscalls::x86_64::Sysno;

use super::filters::{Action, Profile, Rule};

const EPERM: u16 = libc::EPERM as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// When a row's syscalls are denied.
enum When {
    /// Always.
    Always,
    /// When argument `index` has all bits of `mask` set.
    MaskSet { index: u8, mask: u64 },
    /// When the low 32 bits of argument `index` are none of `allowed`.
    NotIn { index: u8, allowed: &'static [u64] },
}

/// One row of the table: `names` get `errno` when `when` holds.
struct Row {
    errno: u16,
    when: When,
    names: &'static [&'static str],
}

/// The default profile, as data. See the module documentation.
const ROWS: &[Row] = &[
    Row {
        errno: EPERM,
        when: When::Always,
        names: &[
            "acct",
            "add_key",
            "bpf",
            "clock_adjtime",
            "clock_settime",
            "settimeofday",
            "stime",
            "create_module",
            "delete_module",
            "finit_module",
            "init_module",
            "get_kernel_syms",
            "query_module",
            "kexec_file_load",
            "kexec_load",
            "keyctl",
            "request_key",
            "lookup_dcookie",
            "mount",
            "umount",
            "umount2",
            "move_mount",
            "open_tree",
            "open_tree_attr",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "name_to_handle_at",
            "open_by_handle_at",
            "nfsservctl",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "reboot",
            "swapon",
            "swapoff",
            "sysfs",
            "_sysctl",
            "syslog",
            "userfaultfd",
            "uselib",
            "ustat",
            "vm86",
            "vm86old",
            "iopl",
            "ioperm",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    },
    Row {
        errno: EPERM,
        when: When::MaskSet {
            index: 0,
            mask: CLONE_NEWUSER,
        },
        names: &["clone", "unshare"],
    },
    Row {
        errno: EPERM,
        when: When::NotIn {
            index: 0,
            allowed: &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff],
        },
        names: &["personality"],
    },
    Row {
        errno: ENOSYS,
        when: When::Always,
        names: &["clone3"],
    },
];

/// Names in [`ROWS`] that are not x86_64 syscalls (i386-only or long gone).
#[cfg(test)]
const NOT_X86_64: &[&str] = &["stime", "umount", "vm86", "vm86old"];

/// The conditions (ANDed) of a row.
fn conditions(when: &When) -> Vec<SeccompCondition> {
    // The arguments are constants checked by the tests: index <= 5.
    let cond = |index, len, op, value| {
        SeccompCondition::new(index, len, op, value).expect("default profile: argument index")
    };
    match *when {
        When::Always => Vec::new(),
        When::MaskSet { index, mask } => vec![cond(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        )],
        When::NotIn { index, allowed } => allowed
            .iter()
            .map(|&v| cond(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
            .collect(),
    }
}

/// moat's default profile.
pub(super) fn profile() -> Profile {
    let mut rules = Vec::new();
    for row in ROWS {
        let conds = conditions(&row.when);
        for name in row.names {
            if let Ok(sysno) = name.parse::<Sysno>() {
                rules.push(Rule {
                    nr: sysno.id().into(),
                    action: Action::Errno(row.errno),
                    conds: conds.clone(),
                });
            }
        }
    }
    Profile {
        default: Action::Allow,
        rules,
        flags: 0,
        enosys_above: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_an_x86_64_syscall_or_known_not_to_be() {
        for name in ROWS.iter().flat_map(|r| r.names.iter()) {
            let known = name.parse::<Sysno>().is_ok();
            assert_eq!(known, !NOT_X86_64.contains(name), "{name}");
        }
    }

    #[test]
    fn profile_has_a_rule_per_known_name() {
        let p = profile();
        let names: usize = ROWS.iter().map(|r| r.names.len()).sum();
        assert_eq!(p.rules.len(), names - NOT_X86_64.len());
        assert_eq!(p.default, Action::Allow);
        let personality = p
            .rules
            .iter()
            .find(|r| r.nr == Sysno::personality.id() as i64)
            .unwrap();
        assert_eq!(personality.conds.len(), 5);
        let clone3 = p
            .rules
            .iter()
            .find(|r| r.nr == Sysno::clone3.id() as i64)
            .unwrap();
        assert_eq!(clone3.action, Action::Errno(ENOSYS));
    }
}
