//! Tests of the OCI translation, and of real filters installed in forked children.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde_json::json;

use super::*;

fn oci(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).expect("test profile parses")
}

fn compile_json(value: serde_json::Value) -> Result<Option<SeccompProgram>, SeccompError> {
    compile(Some(&oci(value)), false)
}

fn err(value: serde_json::Value) -> SeccompError {
    compile_json(value).expect_err("profile must be refused")
}

#[test]
fn unconfined_compiles_to_nothing() {
    let p = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    assert!(compile_json(p).unwrap().is_none());
    let p = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]});
    assert!(compile_json(p).unwrap().is_none());
}

#[test]
fn no_profile_is_no_filter_as_the_spec_says() {
    assert!(compile(None, false).unwrap().is_none());
}

#[test]
fn no_profile_compiles_the_default_when_asked() {
    let prog = compile(None, true)
        .unwrap()
        .expect("default profile is a filter");
    assert_eq!(prog.filters().len(), 1);
    assert_eq!(prog.flags(), 0);
    let json = serde_json::to_string(&prog).unwrap();
    let back: SeccompProgram = serde_json::from_str(&json).unwrap();
    assert_eq!(back, prog);
}

#[test]
fn refusals_name_the_field() {
    let e = err(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(matches!(e, SeccompError::UnsupportedAction { .. }), "{e}");
    assert!(e.to_string().contains("linux.seccomp.defaultAction"), "{e}");

    let e = err(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}));
    assert!(e.to_string().contains("syscalls[1].action"), "{e}");

    let e = err(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
        "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
    );
    assert!(matches!(e, SeccompError::ArgIndex { index: 6, .. }), "{e}");
    assert!(e.to_string().contains("syscalls[0].args[0].index"), "{e}");

    let e = err(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
        "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": 1, "valueTwo": 3, "op": "SCMP_CMP_LT"}]}]}),
    );
    assert!(
        matches!(e, SeccompError::ValueTwo { value_two: 3, .. }),
        "{e}"
    );

    let e = err(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}));
    assert!(
        e.to_string().contains("linux.seccomp.defaultErrnoRet"),
        "{e}"
    );

    let e = err(json!({"defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}));
    assert!(matches!(e, SeccompError::Architecture { .. }), "{e}");
    assert!(e.to_string().contains("SCMP_ARCH_AARCH64"), "{e}");

    let e = err(json!({"defaultAction": "SCMP_ACT_ERRNO",
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}));
    assert!(matches!(e, SeccompError::Flag { .. }), "{e}");

    let e = err(json!({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"}));
    assert!(matches!(e, SeccompError::Listener { .. }), "{e}");

    // Unknown actions and operators do not even parse as a spec.
    let bad: Result<LinuxSeccomp, _> =
        serde_json::from_value(json!({"defaultAction": "SCMP_ACT_FROB"}));
    assert!(bad.is_err());
}

#[test]
fn accepted_variants() {
    // x86_64 among others; valueTwo 0 with EQ (Docker's JSON spells it out); unknown names,
    // even a rule of only unknown names; the three flags.
    let p = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                  "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [
            {"names": ["read", "chown32", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["stime", "vm86"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let prog = compile_json(p).unwrap().unwrap();
    assert_eq!(prog.flags(), 7);
}

#[test]
fn translation_rules() {
    // Conditions on distinct indexes are ANDed: one rule.
    let p = from_oci(&oci(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 2, "op": "SCMP_CMP_GT"}]}]}),
    ))
    .unwrap();
    assert_eq!(p.rules.len(), 2);
    assert!(p
        .rules
        .iter()
        .all(|r| r.conds.len() == 2 && r.action == Action::Errno(5)));
    assert_eq!(p.enosys_above, None);

    // A repeated index splits every condition into a rule of its own (runc).
    let p = from_oci(&oci(json!({"defaultAction": "SCMP_ACT_KILL", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]}]})))
    .unwrap();
    assert_eq!(p.default, Action::KillThread);
    assert_eq!(p.rules.len(), 3);
    assert!(p.rules.iter().all(|r| r.conds.len() == 1));
    assert_eq!(p.enosys_above, Some(Sysno::read.id() as u32));

    // A MASKED_EQ whose valueTwo has bits outside the mask never matches: no rule.
    let p = from_oci(&oci(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_TRAP", "args": [
            {"index": 0, "value": 1, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}]}),
    ))
    .unwrap();
    assert!(p.rules.is_empty());

    // ERRNO without errnoRet is EPERM; rules with the default action are dropped, but
    // count for the ENOSYS stub.
    let p = from_oci(&oci(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["openat"], "action": "SCMP_ACT_ERRNO"}]}),
    ))
    .unwrap();
    assert_eq!(p.default, Action::Errno(1));
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.enosys_above, Some(Sysno::openat.id() as u32));
}

#[test]
fn large_allow_list_fits() {
    // Every x86_64 syscall allowed by name, as an allow-list profile: one program.
    let names: Vec<String> = Sysno::iter().map(|s| s.name().to_string()).collect();
    let p = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": names, "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]});
    let prog = compile_json(p).unwrap().unwrap();
    assert_eq!(prog.filters().len(), 1);
    assert!(prog.filters()[0].len() <= 4096);
}

// ---- Behaviour: filters installed for real in forked children. ----

/// A raw syscall: its return value, or the errno.
fn sys(nr: libc::c_long, a0: u64, a1: u64, a2: u64) -> Result<libc::c_long, i32> {
    // SAFETY: test syscalls with scalar or null arguments; the kernel checks them.
    let rc = unsafe { libc::syscall(nr, a0, a1, a2, 0u64, 0u64) };
    if rc == -1 {
        // SAFETY: errno is thread-local and always valid.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(rc)
    }
}

/// What a check expects.
#[derive(Clone, Copy)]
enum Want {
    Ok,
    Errno(i32),
}

/// Exit status for the checks: 0 when all pass, else 10 + the index of the first failure.
fn verdict(results: &[(Result<libc::c_long, i32>, Want)]) -> i32 {
    for (i, (got, want)) in results.iter().enumerate() {
        let pass = match (got, want) {
            (Ok(_), Want::Ok) => true,
            (Err(e), Want::Errno(w)) => e == w,
            _ => false,
        };
        if !pass {
            return 10 + i as i32;
        }
    }
    0
}

/// Forks; the child sets no_new_privs, installs `prog` and exits with `body()`. The child
/// makes only raw syscalls (no allocation: the test process is multi-threaded).
fn run_confined(prog: &SeccompProgram, body: fn() -> i32) -> WaitStatus {
    let prepared = Prepared::new(prog).expect("program converts");
    // SAFETY: the child only makes syscalls and `_exit`s.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain syscalls; `_exit` never returns.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2);
                }
                if prepared.install().is_err() {
                    libc::_exit(3);
                }
                libc::_exit(body())
            }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

fn assert_exit_ok(status: WaitStatus, what: &str) {
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "{what}: {status:?} (exit 10+i: check i failed; 2: prctl, 3: install)"
    );
}

fn assert_sigsys(status: WaitStatus, what: &str) {
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "{what}: {status:?}, expected death by SIGSYS"
    );
}

const EPERM: i32 = libc::EPERM;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

fn default_profile_body() -> i32 {
    let null = 0u64;
    verdict(&[
        (sys(libc::SYS_getpid, 0, 0, 0), Want::Ok),
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        (
            sys(libc::SYS_keyctl, 0, -3i64 as u64, 0),
            Want::Errno(EPERM),
        ),
        (
            sys(libc::SYS_unshare, CLONE_NEWUSER, 0, 0),
            Want::Errno(EPERM),
        ),
        // Unfiltered, CLONE_NEWUSER|CLONE_FS is EINVAL: EPERM proves the filter said no.
        (
            sys(libc::SYS_clone, CLONE_NEWUSER | libc::CLONE_FS as u64, 0, 0),
            Want::Errno(EPERM),
        ),
        (sys(libc::SYS_clone3, null, 0, 0), Want::Errno(libc::ENOSYS)),
        (sys(libc::SYS_personality, 0x1234, 0, 0), Want::Errno(EPERM)),
        (sys(libc::SYS_personality, 0xffff_ffff, 0, 0), Want::Ok),
        (sys(libc::SYS_mount, null, null, null), Want::Errno(EPERM)),
        (
            sys(libc::SYS_unshare, libc::CLONE_FILES as u64, 0, 0),
            Want::Ok,
        ),
        (sys(libc::SYS_mkdir, null, 0, 0), Want::Errno(libc::EFAULT)),
    ])
}

fn x32_body() -> i32 {
    // getpid through the x32 ABI: the filter kills before the kernel looks at the number.
    let _ = sys(0x4000_0000 | libc::SYS_getpid, 0, 0, 0);
    0
}

fn allow_list_body() -> i32 {
    verdict(&[
        (sys(libc::SYS_getpid, 0, 0, 0), Want::Ok),
        (sys(libc::SYS_getppid, 0, 0, 0), Want::Errno(28)),
        (sys(libc::SYS_gettid, 0, 0, 0), Want::Errno(13)),
        // Above the largest syscall the profile names (exit_group): ENOSYS stub.
        (sys(libc::SYS_openat, 0, 0, 0), Want::Errno(libc::ENOSYS)),
        // The arguments rule: only fd 1 is allowed for dup.
        (sys(libc::SYS_dup, 1, 0, 0), Want::Ok),
        (sys(libc::SYS_dup, 2, 0, 0), Want::Errno(13)),
    ])
}

fn args_body() -> i32 {
    verdict(&[
        (sys(libc::SYS_personality, 0x1234, 0, 0), Want::Errno(42)),
        (sys(libc::SYS_personality, 0xffff_ffff, 0, 0), Want::Ok),
        // MASKED_EQ: (flags & CLONE_NEWUTS) == CLONE_NEWUTS.
        (
            sys(libc::SYS_unshare, libc::CLONE_NEWUTS as u64, 0, 0),
            Want::Errno(EPERM),
        ),
        (sys(libc::SYS_getpid, 0, 0, 0), Want::Ok),
    ])
}

fn kill_body() -> i32 {
    if sys(libc::SYS_getpid, 0, 0, 0).is_err() {
        return 10;
    }
    // LOG: allowed (and logged).
    if sys(libc::SYS_gettid, 0, 0, 0).is_err() {
        return 11;
    }
    let _ = sys(libc::SYS_getppid, 0, 0, 0);
    12
}

#[test]
fn behaviour_in_forked_children() {
    let default = compile(None, true).unwrap().unwrap();
    assert_exit_ok(
        run_confined(&default, default_profile_body),
        "default profile",
    );
    assert_sigsys(run_confined(&default, x32_body), "x32 syscall");

    // Allow-list: default ERRNO(EACCES), ERRNO(ENOSPC) rule, an args rule.
    let allow_list = compile_json(json!({
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28},
        {"names": ["dup"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}
    ]}))
    .unwrap()
    .unwrap();
    assert_exit_ok(run_confined(&allow_list, allow_list_body), "allow-list");

    // Default ALLOW, deny by argument, errnoRet honoured.
    let args = compile_json(json!({
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
         "args": [{"index": 0, "value": 0x1234, "op": "SCMP_CMP_EQ"}]},
        {"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": libc::CLONE_NEWUTS, "valueTwo": libc::CLONE_NEWUTS,
                   "op": "SCMP_CMP_MASKED_EQ"}]}
    ]}))
    .unwrap()
    .unwrap();
    assert_exit_ok(run_confined(&args, args_body), "argument rules");

    // Default KILL_PROCESS with ALLOW and LOG rules: getppid is not listed, so SIGSYS.
    let kill = compile_json(json!({
    "defaultAction": "SCMP_ACT_KILL_PROCESS",
    "syscalls": [
        {"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["gettid"], "action": "SCMP_ACT_LOG"}
    ]}))
    .unwrap()
    .unwrap();
    assert_sigsys(run_confined(&kill, kill_body), "default KILL_PROCESS");

    // A KILL_PROCESS rule in an otherwise open profile.
    let kill_rule = compile_json(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]}))
    .unwrap()
    .unwrap();
    assert_sigsys(run_confined(&kill_rule, kill_body), "KILL_PROCESS rule");

    // Overlap: ALLOW getpid always, ERRNO getpid with arg 7: the higher precedence wins.
    let overlap = compile_json(json!({
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
         "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getpid"], "action": "SCMP_ACT_LOG"}
    ]}))
    .unwrap()
    .unwrap();
    fn overlap_body() -> i32 {
        verdict(&[
            (sys(libc::SYS_getpid, 7, 0, 0), Want::Errno(9)),
            (sys(libc::SYS_getpid, 8, 0, 0), Want::Ok),
        ])
    }
    assert_exit_ok(run_confined(&overlap, overlap_body), "overlapping rules");
}
