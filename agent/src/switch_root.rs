//! Leaving the initramfs at boot, as `switch_root` does, so containers get a real
//! `pivot_root`.
//!
//! The kernel starts PID 1 on the initial `rootfs` mount, which has no parent: `pivot_root`
//! refuses to move it (EINVAL), so a container could only be `chroot`ed, and a chroot escape
//! (a container has CAP_SYS_CHROOT by default) would reach the initramfs. So PID 1, before
//! anything else, copies itself onto a fresh tmpfs, deletes the initramfs files (freeing
//! their memory), moves the tmpfs onto `/`, chroots there and re-executes itself. The bottom
//! `rootfs` mount is then empty, and every later root (the agent's, a container's) is a mount
//! with a parent, as on any Linux host.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Where the new root is prepared before it is moved onto `/`.
const NEW_ROOT: &str = "/.moat-root";
/// The agent binary on the initramfs (the kernel runs `/init`).
const INIT: &str = "/init";

/// `statfs` magic of ramfs, the initramfs filesystem when it is not tmpfs.
const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;

/// Set in the environment of the re-executed agent: the switch is done.
const SWITCHED_ENV: &str = "MOAT_SWITCHED_ROOT";

/// Whether this is the agent re-executed on the new root.
pub fn switched() -> bool {
    std::env::var_os(SWITCHED_ENV).is_some()
}

/// Whether PID 1 still runs on the initramfs (ramfs or tmpfs root, not yet switched; with
/// no `/proc` yet, the re-executed agent knows by [`SWITCHED_ENV`]).
pub fn on_initramfs() -> bool {
    let Ok(st) = nix::sys::statfs::statfs("/") else {
        return false;
    };
    let fs = st.filesystem_type();
    !switched()
        && (fs == nix::sys::statfs::FsType(RAMFS_MAGIC) || fs == nix::sys::statfs::TMPFS_MAGIC)
}

fn ctx(what: &str) -> impl FnOnce(nix::Error) -> io::Error + '_ {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Moves the root to a tmpfs and re-executes `/init` there. Returns only on failure (the
/// caller continues on the initramfs, with containers falling back to `chroot`).
pub fn switch_to_tmpfs() -> io::Error {
    match try_switch() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn try_switch() -> io::Result<Never> {
    std::fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(ctx("mounting the new root tmpfs"))?;
    let new = Path::new(NEW_ROOT);
    std::fs::copy(INIT, new.join("init"))?;
    for d in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(new.join(d))?;
    }
    // Free the initramfs: everything but the new root's mount point.
    for entry in std::fs::read_dir("/")? {
        let path = entry?.path();
        if path != new {
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    nix::unistd::chdir(NEW_ROOT).map_err(ctx("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(ctx("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(ctx("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(ctx("chdir /"))?;
    let init = CString::new(INIT).expect("no NUL");
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| init.clone()))
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(CString::new(format!("{SWITCHED_ENV}=1")).expect("no NUL"));
    let e = nix::unistd::execve(&init, &args, &env).unwrap_err();
    Err(ctx("re-executing /init on the new root")(e))
}
