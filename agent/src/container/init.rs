//! The container init process: the agent binary re-executed as `moat-agent __moat-init`.
//!
//! It is single-threaded and fresh, so it may do what a forked child of the multi-threaded
//! agent may not (allocate, read files, setns into a mount namespace). It reads an
//! [`InitConfig`] from the sync socket (fd [`INIT_SYNC_FD`]) and then:
//!
//! 1. joins the container's cgroup (`cgroup.procs`), so everything after is accounted there;
//! 2. joins the namespaces the config names (user first), creates a user namespace and has
//!    the agent write its id maps, then unshares the new namespaces;
//! 3. forks, so the child is inside the PID namespace; this first process reports the child's
//!    pid and exits (the child is re-parented to the agent, which reaps it);
//! 4. the child: new session, root filesystem and `pivot_root` (containers), hostname; with
//!    a terminal, a pty from the container's own `/dev/ptmx` as controlling terminal and
//!    fds 0-2, its master sent to the agent ([`console`]); rlimits, OOM score; reports
//!    [`InitMessage::Ready`];
//! 5. on [`AgentMessage::Start`]: every fd from 3 up close-on-exec, no_new_privs, capability
//!    bounding set, uid/gids, the other capability sets, cwd, seccomp, `execve`. The sync
//!    socket is close-on-exec: the agent sees end-of-file when the program runs, or an
//!    [`InitMessage::Error`] if a step failed.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec, User};
use serde::{Deserialize, Serialize};

use super::capabilities::{self, CapabilitySets};
use super::console::{self, ConsoleError};
use super::rootfs::{self, RootfsConfig};
use super::seccomp::{self, SeccompProgram};
use super::sync::{self, AgentMessage, InitMessage, INIT_SYNC_FD};

/// `argv[1]` that makes `moat-agent` run [`main`] instead of the agent.
pub const INIT_ARG: &str = "__moat-init";

/// PATH used to find the program when the process environment has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the init process must do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// What kind of process this is.
    pub kind: InitKind,
    /// The process to run (`process` of the spec, or of ExecProcess).
    pub process: Process,
    /// Namespaces to join or create, in the spec's terms.
    pub namespaces: Vec<NamespaceStep>,
    /// `cgroup.procs` of the cgroup to join first, if any.
    pub cgroup_procs: Option<PathBuf>,
    /// Compiled seccomp filters to install before exec, if any.
    pub seccomp: Option<SeccompProgram>,
    /// Whether the process gets a terminal: the init process allocates it inside the
    /// container and sends its master to the agent ([`console`]); fds 0-2 are `/dev/null`
    /// until then.
    pub terminal: bool,
}

/// The kinds of init process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InitKind {
    /// A container's first process: sets up the root filesystem.
    Container {
        /// The container's spec (mounts, hostname, sysctls, masked paths...).
        spec: Box<Spec>,
        /// The root filesystem (absolute guest path).
        rootfs: PathBuf,
    },
    /// A process started in a running container's namespaces.
    Exec,
    /// The holder of a pod-wide PID namespace: PID 1 there, reaps orphans, never execs.
    PidHolder,
}

/// One namespace of the process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceStep {
    /// Which namespace.
    pub typ: LinuxNamespaceType,
    /// Join the namespace at this path; `None` creates a new one.
    pub join: Option<PathBuf>,
}

/// Errors of the init process, sent to the agent as text.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A step's system call failed.
    #[error("{step}: {source}")]
    Sys {
        /// What was being done.
        step: String,
        /// The errno.
        source: nix::Error,
    },
    /// A step failed for another reason.
    #[error("{0}")]
    Other(String),
    /// The agent went away or spoke nonsense.
    #[error(transparent)]
    Sync(#[from] sync::SyncError),
    /// Root filesystem setup failed.
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    /// Capabilities could not be applied.
    #[error(transparent)]
    Caps(#[from] capabilities::CapsError),
    /// seccomp could not be applied.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The terminal could not be set up.
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

fn sys<T>(step: impl Into<String>, r: nix::Result<T>) -> Result<T, InitError> {
    r.map_err(|source| InitError::Sys {
        step: step.into(),
        source,
    })
}

/// The init process's main: never returns.
pub fn main() -> ! {
    // SAFETY: the agent put the sync socket on this fd before exec; nothing else owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(INIT_SYNC_FD) };
    // Close-on-exec, so the agent sees EOF once the program runs.
    let _ = nix::fcntl::fcntl(
        INIT_SYNC_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let err = match run(&mut sock) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = sync::send(&mut sock, &InitMessage::Error(err.to_string()));
    // SAFETY: _exit is always safe; no destructors need to run.
    unsafe {
        libc::_exit(if matches!(err, InitError::Sync(_)) {
            2
        } else {
            127
        })
    }
}

enum Never {}

fn run(sock: &mut UnixStream) -> Result<Never, InitError> {
    let cfg: InitConfig = sync::recv(sock, Some(Duration::from_secs(30)))?;
    if let Some(procs) = &cfg.cgroup_procs {
        std::fs::write(procs, "0")
            .map_err(|e| InitError::Other(format!("joining cgroup {}: {e}", procs.display())))?;
    }
    enter_namespaces(sock, &cfg)?;

    // Fork, so the child is inside the (new or joined) PID namespace. The child waits on a
    // pipe until this process has reported its pid, so their messages never interleave.
    let (barrier_r, barrier_w) = sys("pipe", nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;
    // SAFETY: this process is single-threaded (a fresh exec of the agent binary).
    match sys("fork", unsafe { nix::unistd::fork() })? {
        ForkResult::Parent { child } => {
            let _ = nix::unistd::close(barrier_r);
            sync::send(sock, &InitMessage::Pid(child.as_raw()))?;
            // SAFETY: exiting without running destructors is what this process wants.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Child => {
            let _ = nix::unistd::close(barrier_w);
            // SAFETY: barrier_r is the pipe's read end, owned here only.
            let mut r = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(barrier_r) });
            let _ = r.read(&mut [0u8; 1]);
        }
    }
    child(sock, &cfg)
}

/// Joins (user namespace first) and creates the configured namespaces.
fn enter_namespaces(sock: &mut UnixStream, cfg: &InitConfig) -> Result<(), InitError> {
    // Open every path first: joining a mount namespace changes what paths mean.
    let mut joins = Vec::new();
    for ns in &cfg.namespaces {
        if let Some(path) = &ns.join {
            let fd = nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            );
            let fd = sys(format!("opening namespace {}", path.display()), fd)?;
            // SAFETY: open just returned this fd.
            joins.push((ns.typ, unsafe { OwnedFd::from_raw_fd(fd) }, path));
        }
    }
    joins.sort_by_key(|(typ, _, _)| *typ != LinuxNamespaceType::User);
    for (typ, fd, path) in &joins {
        sys(
            format!("joining {typ} namespace {}", path.display()),
            nix::sched::setns(fd.as_raw_fd(), clone_flag(*typ)),
        )?;
        if *typ == LinuxNamespaceType::User {
            become_root()?;
        }
    }
    let new: Vec<_> = cfg.namespaces.iter().filter(|n| n.join.is_none()).collect();
    if new.iter().any(|n| n.typ == LinuxNamespaceType::User) {
        sys(
            "creating a user namespace",
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER),
        )?;
        sync::send(sock, &InitMessage::MapUserNs)?;
        match sync::recv::<AgentMessage>(sock, Some(Duration::from_secs(10)))? {
            AgentMessage::UserNsMapped => {}
            other => {
                return Err(InitError::Other(format!(
                    "expected UserNsMapped, got {other:?}"
                )))
            }
        }
        become_root()?;
    }
    let flags = new
        .iter()
        .filter(|n| n.typ != LinuxNamespaceType::User)
        .fold(CloneFlags::empty(), |f, n| f | clone_flag(n.typ));
    if !flags.is_empty() {
        sys(
            format!("creating namespaces {flags:?}"),
            nix::sched::unshare(flags),
        )?;
    }
    Ok(())
}

/// uid/gid 0 inside a just-entered user namespace (as runc does).
fn become_root() -> Result<(), InitError> {
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    sys(
        "setresgid(0) in the user namespace",
        nix::unistd::setresgid(g, g, g),
    )?;
    sys(
        "setresuid(0) in the user namespace",
        nix::unistd::setresuid(u, u, u),
    )
}

/// The `CLONE_NEW*` flag of a namespace type.
pub fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // nix 0.26 has no name for CLONE_NEWTIME.
        // SAFETY: the bit is the kernel's CLONE_NEWTIME; CloneFlags is a plain bit set.
        LinuxNamespaceType::Time => unsafe { CloneFlags::from_bits_unchecked(libc::CLONE_NEWTIME) },
    }
}

/// The process inside the PID namespace.
fn child(sock: &mut UnixStream, cfg: &InitConfig) -> Result<Never, InitError> {
    sys("setsid", nix::unistd::setsid())?;
    match &cfg.kind {
        InitKind::Container { spec, rootfs } => setup_container(cfg, spec, rootfs)?,
        InitKind::Exec => {}
        InitKind::PidHolder => {
            sync::send(sock, &InitMessage::Ready)?;
            hold_pid_namespace();
        }
    }
    // Inside the container's root now (its own devpts on /dev/pts).
    if cfg.terminal {
        console::setup_in_init(sock)?;
    }
    set_rlimits(&cfg.process)?;
    if let Some(score) = cfg.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", score.to_string())
            .map_err(|e| InitError::Other(format!("setting oom_score_adj {score}: {e}")))?;
    }
    sync::send(sock, &InitMessage::Ready)?;
    match sync::recv::<AgentMessage>(sock, None)? {
        AgentMessage::Start => {}
        other => return Err(InitError::Other(format!("expected Start, got {other:?}"))),
    }
    exec_process(cfg)
}

/// Root filesystem, hostname and sysctls of a container's first process.
fn setup_container(cfg: &InitConfig, spec: &Spec, rootfs: &Path) -> Result<(), InitError> {
    let creates = |t| {
        cfg.namespaces
            .iter()
            .any(|n| n.typ == t && n.join.is_none())
    };
    let in_user_ns = cfg
        .namespaces
        .iter()
        .any(|n| n.typ == LinuxNamespaceType::User)
        || running_in_user_ns();
    let rcfg = RootfsConfig {
        spec,
        rootfs,
        new_pid_ns: creates(LinuxNamespaceType::Pid),
        new_net_ns: creates(LinuxNamespaceType::Network),
        in_user_ns,
    };
    rootfs::setup_rootfs(&rcfg)?;
    if creates(LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            sys(format!("sethostname {h:?}"), nix::unistd::sethostname(h))?;
        }
        if let Some(d) = spec.domainname() {
            // SAFETY: pointer and length of a live byte slice.
            let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
            sys(format!("setdomainname {d:?}"), nix::errno::Errno::result(r))?;
        }
    }
    rootfs::finish_rootfs(&rcfg)?;
    Ok(())
}

/// Whether this process is in a user namespace other than the initial one.
fn running_in_user_ns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// PID 1 of a pod-wide PID namespace: reaps orphans until killed.
fn hold_pid_namespace() -> ! {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = set.thread_block();
    loop {
        while let Ok(status) = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let _ = set.wait();
    }
}

/// The rlimit number of an OCI rlimit type.
pub fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match typ {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

fn set_rlimits(process: &Process) -> Result<(), InitError> {
    for rl in process.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: setrlimit with a valid resource and a live struct.
        let r = unsafe { libc::setrlimit(rlimit_resource(rl.typ()), &lim) };
        sys(
            format!(
                "setrlimit {:?} soft {} hard {}",
                rl.typ(),
                rl.soft(),
                rl.hard()
            ),
            nix::errno::Errno::result(r),
        )?;
    }
    Ok(())
}

fn prctl(what: &str, option: libc::c_int, arg: libc::c_ulong) -> Result<(), InitError> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    sys(what, nix::errno::Errno::result(r)).map(|_| ())
}

/// Marks every fd from 3 up close-on-exec (runc's `CloseExecFrom`): whatever the agent
/// itself inherited without the flag must not reach the program, only fds 0-2 do.
fn close_fds_on_exec() -> Result<(), InitError> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets fd flags (Linux 5.11+).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: each open fd (the directory's own fd is gone by the time it is set).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| InitError::Other(format!("listing /proc/self/fd: {e}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3)
        .collect();
    for fd in fds {
        let flag = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        match nix::fcntl::fcntl(fd, flag) {
            Ok(_) | Err(nix::errno::Errno::EBADF) => {}
            Err(e) => return sys(format!("marking fd {fd} close-on-exec"), Err(e)),
        }
    }
    Ok(())
}

/// The most of the container's `/etc/passwd` read for [`with_home`].
const MAX_PASSWD_BYTES: u64 = 1 << 20;

/// `env` with `HOME` added when it has none, as runc does: the home directory of user `uid`
/// in the container's `/etc/passwd` (read after the pivot, at most [`MAX_PASSWD_BYTES`]),
/// else `/`.
fn with_home(mut env: Vec<String>, uid: u32) -> Vec<String> {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return env;
    }
    let mut passwd = String::new();
    let _ = std::fs::File::open("/etc/passwd")
        .and_then(|f| f.take(MAX_PASSWD_BYTES).read_to_string(&mut passwd));
    let home = home_of(&passwd, uid).unwrap_or("/");
    env.push(format!("HOME={home}"));
    env
}

/// User `uid`'s home directory in a passwd file's text (`name:pw:uid:gid:gecos:home:shell`).
fn home_of(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5])
    })
}

/// Privileges, cwd, seccomp and `execve` (see the module docs for the order).
fn exec_process(cfg: &InitConfig) -> Result<Never, InitError> {
    close_fds_on_exec()?;
    let p = &cfg.process;
    let user = p.user();
    let nnp = p.no_new_privileges().unwrap_or(false);
    let caps = CapabilitySets::from_spec(p.capabilities().as_ref())?;
    let env = with_home(p.env().clone().unwrap_or_default(), user.uid());
    let args = p.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(InitError::Other("process.args is empty".into()));
    };
    let program = find_program(arg0, &env)?;

    if nnp {
        prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    } else if let Some(prog) = &cfg.seccomp {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
        seccomp::apply(prog)?;
    }
    capabilities::drop_bounding(&caps.bounding)?;
    // Before the uid switch, as root: the user may not be allowed to enter cwd otherwise;
    // it is retried after.
    let cwd_early = nix::unistd::chdir(p.cwd().as_path());

    switch_user(user)?;
    capabilities::apply(&caps)?;
    if cwd_early.is_err() {
        sys(
            format!("chdir {}", p.cwd().display()),
            nix::unistd::chdir(p.cwd().as_path()),
        )?;
    }
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }

    let c_args = cstrings(&args)?;
    let c_env = cstrings(&env)?;
    let c_prog = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| InitError::Other(format!("program path {program:?} contains NUL")))?;
    reset_signals_for_exec();
    if nnp {
        if let Some(prog) = &cfg.seccomp {
            seccomp::apply(prog)?;
        }
    }
    let e = nix::unistd::execve(&c_prog, &c_args, &c_env).unwrap_err();
    let _ = std::io::stderr().flush();
    Err(InitError::Sys {
        step: format!("exec {}", program.display()),
        source: e,
    })
}

/// `process.user`: supplementary groups, then gid and uid, keeping the capabilities across
/// the uid switch (`PR_SET_KEEPCAPS`) for [`capabilities::apply`] to set.
fn switch_user(user: &User) -> Result<(), InitError> {
    let mut groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    groups.dedup();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // Inside a user namespace with setgroups denied, only an empty list could ever work.
        if !(e == nix::errno::Errno::EPERM && groups.is_empty()) {
            return Err(InitError::Sys {
                step: format!("setgroups {groups:?}"),
                source: e,
            });
        }
    }
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 1)?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    sys(
        format!("setresgid {gid}"),
        nix::unistd::setresgid(gid, gid, gid),
    )?;
    sys(
        format!("setresuid {uid}"),
        nix::unistd::setresuid(uid, uid, uid),
    )?;
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 0)
}

/// Everything the agent blocked is unblocked for the program, and SIGPIPE (which Rust's
/// runtime ignores, a disposition exec keeps) is back to its default.
fn reset_signals_for_exec() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    // SAFETY: resetting a signal disposition to SIG_DFL has no preconditions.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, InitError> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| InitError::Other(format!("{s:?} contains NUL")))
        })
        .collect()
}

/// The program to exec: `arg0` itself when it has a `/`, else the first executable file of
/// that name on the process's PATH (as execvp, but with the container's PATH).
pub fn find_program(arg0: &str, env: &[String]) -> Result<PathBuf, InitError> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(InitError::Other(format!(
        "exec {arg0:?}: executable file not found in $PATH ({path})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(find_program("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(find_program("./x", &env).unwrap(), PathBuf::from("./x"));
        let e = find_program("no-such-program-moat", &env).unwrap_err();
        assert!(e.to_string().contains("not found in $PATH"), "{e}");
    }

    #[test]
    fn home_comes_from_passwd_as_under_runc() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbad line\nweb:x:33:33::/var/www:/bin/sh\n\
                      nohome:x:44:44:::/bin/sh\n";
        assert_eq!(home_of(passwd, 0), Some("/root"));
        assert_eq!(home_of(passwd, 33), Some("/var/www"));
        assert_eq!(home_of(passwd, 44), None);
        assert_eq!(home_of(passwd, 1000), None);
        let kept = with_home(vec!["HOME=/x".into()], 0);
        assert_eq!(kept, ["HOME=/x"]);
    }

    #[test]
    fn namespace_flags_match_the_kernel() {
        assert_eq!(
            clone_flag(LinuxNamespaceType::Network),
            CloneFlags::CLONE_NEWNET
        );
        assert_eq!(clone_flag(LinuxNamespaceType::Time).bits(), 0x80);
    }
}
