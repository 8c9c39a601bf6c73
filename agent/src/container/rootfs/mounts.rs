//! The spec's mounts, one by one (runc's `mountToRootfs`).
//!
//! - bind/rbind: the source is bound (recursively for `rbind`), then, when any other flag was
//!   given or cleared, remounted `MS_BIND|MS_REMOUNT` with the flags; if that fails (a user
//!   namespace locks the source mount's `nosuid`/`nodev`/`noexec`/`ro`/atime flags) it is
//!   retried with the source mount's locked flags added, as runc does, unless the options
//!   explicitly clear a locked flag.
//! - proc: a fresh procfs. In a user namespace without its own PID namespace (where the kernel
//!   refuses it) an rbind of `/proc` instead.
//! - sysfs: a fresh sysfs; in a user namespace without its own network namespace, or when the
//!   kernel refuses (EPERM/EBUSY), an rbind of `/sys` with the spec's flags, made recursively
//!   read-only (`mount_setattr`) when the spec says `ro` — runc's rootless fallback.
//! - tmpfs (and anything on `/dev`): mounted read-write, remounted read-only after the pivot
//!   if asked (mount points and nodes may have to be created inside first).
//! - mqueue: fresh; on EPERM in a user namespace a bind of `/dev/mqueue`.
//! - cgroup/cgroup2: a cgroup2 mount (the guest is cgroup v2 only; `cgroup` data options,
//!   which name v1 controllers, are dropped). On EPERM/EBUSY (a user namespace without a
//!   cgroup namespace) a bind of `/sys/fs/cgroup` with the spec's flags, as runc does without
//!   a cgroup namespace, but recursive (and recursively read-only with `ro`): a user namespace
//!   refuses a non-recursive bind of a mount with locked submounts (EINVAL). In the guest the agent is real root and the caller
//!   creates the cgroup namespace the spec asks for, so the fresh mount is expected to work.
//! - devpts: fresh; in a user namespace an EINVAL (unmapped `gid=`) retries without `gid=`.
//! - anything else (a virtio-fs tag, ext4 on a device...) goes to mount(2) as is.
//!
//! After the mount: the propagation options in order, then the recursive attributes.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libc::c_ulong;
use oci_spec::runtime::Mount;
use tracing::warn;

use super::options::MountOptions;
use super::securejoin::{clean, container_path, create_file, mkdir_all, secure_join};
use super::sys::{self, attr, ATIME_FLAGS, LOCKED_FLAGS};
use super::{mount_err, path_err, Ctx, RootfsConfig, RootfsError};

/// Entries under `/proc` that may be mount destinations (what lxcfs emulates), runc's list.
const VALID_PROC_MOUNTS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/pressure/cpu",
    "/proc/pressure/io",
    "/proc/pressure/memory",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

fn is_errno(e: &io::Error, errnos: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|n| errnos.contains(&n))
}

/// runc's `checkProcMount`: only procfs (fresh, or a bind of a procfs) may go on `/proc`, and
/// nothing may go below it except the lxcfs entries. `dest` is a clean container path.
fn check_proc_mount(
    dest: &Path,
    fstype: &str,
    is_bind: bool,
    src: Option<&Path>,
) -> Result<(), RootfsError> {
    let proc = Path::new("/proc");
    if !dest.starts_with(proc) {
        return Ok(());
    }
    if dest == proc {
        let src_is_proc = || {
            src.and_then(|s| sys::statfs(s).ok())
                .is_some_and(|st| st.fs_type == libc::PROC_SUPER_MAGIC)
        };
        if (!is_bind && fstype == "proc") || (is_bind && src_is_proc()) {
            return Ok(());
        }
        return Err(RootfsError::InvalidSpec(format!(
            "{} cannot be mounted because it is not of type proc",
            dest.display()
        )));
    }
    if VALID_PROC_MOUNTS.iter().any(|v| Path::new(v) == dest) {
        return Ok(());
    }
    Err(RootfsError::InvalidSpec(format!(
        "{} cannot be mounted because it is inside /proc",
        dest.display()
    )))
}

/// Parses a spec mount's options, naming the mount in the error.
fn parse_options(m: &Mount) -> Result<MountOptions, RootfsError> {
    MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(|e| {
        RootfsError::InvalidSpec(format!("mount on {}: {e}", m.destination().display()))
    })
}

fn is_bind(m: &Mount, opts: &MountOptions) -> bool {
    opts.is_bind() || m.typ().as_deref() == Some("bind")
}

/// The spec-level checks of one mount (see [`super::validate`]).
pub(super) fn validate_mount(m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination();
    let invalid = |s: String| Err(RootfsError::InvalidSpec(s));
    if !dest.is_absolute() {
        return invalid(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return invalid(format!(
            "mount on {}: idmapped mounts are not supported",
            dest.display()
        ));
    }
    let opts = parse_options(m)?;
    let bind = is_bind(m, &opts);
    let fstype = m.typ().as_deref().unwrap_or("");
    if bind {
        let Some(src) = m.source() else {
            return invalid(format!("bind mount on {} has no source", dest.display()));
        };
        if !src.is_absolute() {
            return invalid(format!(
                "bind mount on {}: source {} is not absolute",
                dest.display(),
                src.display()
            ));
        }
        if let Err(e) = fs::metadata(src) {
            return invalid(format!(
                "bind mount on {}: source {}: {e}",
                dest.display(),
                src.display()
            ));
        }
    } else if fstype.is_empty() {
        return invalid(format!(
            "mount on {} has no type and is not a bind mount",
            dest.display()
        ));
    }
    check_proc_mount(&clean(dest), fstype, bind, m.source().as_deref())
}

/// Mounts the tmpfs containerd's default spec puts on `/dev`, for specs without one.
pub(super) fn mount_default_dev(ctx: &Ctx) -> Result<(), RootfsError> {
    let dev = Path::new("/dev");
    let dest = secure_join(&ctx.rootfs, dev).map_err(path_err("resolving", dev))?;
    mkdir_all(&dest).map_err(path_err("creating", &dest))?;
    sys::mount(
        Some(OsStr::new("tmpfs")),
        &dest,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| mount_err("mount", dev, "tmpfs", "tmpfs", e))
}

/// Mounts one spec mount inside the rootfs.
pub(super) fn mount_entry(ctx: &mut Ctx, m: &Mount) -> Result<(), RootfsError> {
    let spec_dest = m.destination();
    let opts = parse_options(m)?;
    if opts.tmpcopyup {
        warn!(dest = %spec_dest.display(), "mount option tmpcopyup is not supported: ignored");
    }
    let dest = secure_join(&ctx.rootfs, spec_dest)
        .map_err(path_err("resolving mount destination", spec_dest))?;
    let cdest = container_path(&ctx.rootfs, &dest);
    let fstype = m.typ().as_deref().unwrap_or("");
    let src = m.source().as_deref();
    let bind = is_bind(m, &opts);
    check_proc_mount(&cdest, fstype, bind, src)?;
    let entry = Entry {
        spec_dest,
        dest: &dest,
    };
    if bind {
        let Some(src) = src else {
            return Err(RootfsError::InvalidSpec(format!(
                "bind mount on {} has no source",
                spec_dest.display()
            )));
        };
        return entry.bind(src, &opts);
    }
    let fresh = FreshMount {
        entry,
        fstype,
        src,
        opts: &opts,
    };
    let cfg = ctx.cfg;
    match fstype {
        "proc" => fresh.proc(cfg),
        "sysfs" => fresh.sysfs(cfg),
        "mqueue" => fresh.mqueue(cfg),
        "cgroup" | "cgroup2" => fresh.cgroup(),
        "devpts" => fresh.devpts(cfg),
        "" => Err(RootfsError::InvalidSpec(format!(
            "mount on {} has no type and is not a bind mount",
            spec_dest.display()
        ))),
        _ => fresh.other(ctx, cdest),
    }
}

/// A spec mount that is not a bind: a fresh filesystem of `fstype`, with the fallbacks of
/// the module documentation.
struct FreshMount<'a> {
    entry: Entry<'a>,
    fstype: &'a str,
    src: Option<&'a Path>,
    opts: &'a MountOptions,
}

impl FreshMount<'_> {
    /// The spec's source, or `default` when it names none.
    fn src_or(&self, default: &str) -> OsString {
        self.src
            .map_or_else(|| default.into(), |s| s.as_os_str().to_owned())
    }

    /// The error of mounting `fstype` from `src_or(default)`.
    fn err(&self, fstype: &str, default: &str, e: io::Error) -> RootfsError {
        mount_err(
            "mount",
            self.entry.spec_dest,
            fstype,
            self.src_or(default),
            e,
        )
    }

    /// A fresh procfs; in a user namespace without its own PID namespace an rbind of `/proc`.
    fn proc(&self, cfg: &RootfsConfig) -> Result<(), RootfsError> {
        let (entry, opts) = (&self.entry, self.opts);
        let res = entry.fresh(&self.src_or("proc"), "proc", opts.flags, &opts.data());
        match res {
            Err(e) if cfg.in_user_ns && !cfg.new_pid_ns && is_errno(&e, &[libc::EPERM]) => {
                warn!(dest = %entry.spec_dest.display(), "cannot mount proc here: bind-mounting /proc");
                entry.bind(Path::new("/proc"), &with_bind(opts, true))
            }
            res => res
                .map_err(|e| self.err(self.fstype, "proc", e))
                .and_then(|()| entry.post(opts)),
        }
    }

    /// A fresh sysfs, or (in a user namespace without its own network namespace, or when the
    /// kernel refuses) an rbind of `/sys`.
    fn sysfs(&self, cfg: &RootfsConfig) -> Result<(), RootfsError> {
        let (entry, opts) = (&self.entry, self.opts);
        if cfg.new_net_ns || !cfg.in_user_ns {
            match entry.fresh(&self.src_or("sysfs"), "sysfs", opts.flags, &opts.data()) {
                Ok(()) => return entry.post(opts),
                Err(e) if is_errno(&e, &[libc::EPERM, libc::EBUSY]) => {}
                Err(e) => return Err(self.err(self.fstype, "sysfs", e)),
            }
        }
        entry.bind(Path::new("/sys"), &with_rbind(opts))
    }

    /// A fresh mqueue; on EPERM in a user namespace a bind of `/dev/mqueue`.
    fn mqueue(&self, cfg: &RootfsConfig) -> Result<(), RootfsError> {
        let (entry, opts) = (&self.entry, self.opts);
        match entry.fresh(&self.src_or("mqueue"), "mqueue", opts.flags, &opts.data()) {
            Err(e) if cfg.in_user_ns && is_errno(&e, &[libc::EPERM]) => {
                entry.bind(Path::new("/dev/mqueue"), &with_bind(opts, false))
            }
            res => res
                .map_err(|e| self.err(self.fstype, "mqueue", e))
                .and_then(|()| entry.post(opts)),
        }
    }

    /// A cgroup2 mount (v1 data options dropped); on EPERM/EBUSY an rbind of `/sys/fs/cgroup`.
    fn cgroup(&self) -> Result<(), RootfsError> {
        let (entry, opts) = (&self.entry, self.opts);
        let data = if self.fstype == "cgroup" {
            String::new()
        } else {
            opts.data()
        };
        match entry.fresh(&self.src_or("cgroup2"), "cgroup2", opts.flags, &data) {
            Err(e) if is_errno(&e, &[libc::EPERM, libc::EBUSY]) => {
                warn!(dest = %entry.spec_dest.display(), "cannot mount cgroup2 here: bind-mounting /sys/fs/cgroup");
                entry.bind(Path::new("/sys/fs/cgroup"), &with_rbind(opts))
            }
            res => res
                .map_err(|e| self.err("cgroup2", "cgroup2", e))
                .and_then(|()| entry.post(opts)),
        }
    }

    /// A fresh devpts. In a user namespace the spec's gid= (tty, 5) may be unmapped: EINVAL.
    /// Like runc rootless, retry without it.
    fn devpts(&self, cfg: &RootfsConfig) -> Result<(), RootfsError> {
        let (entry, opts) = (&self.entry, self.opts);
        let data = opts.data();
        match entry.fresh(&self.src_or("devpts"), "devpts", opts.flags, &data) {
            Err(e) if cfg.in_user_ns && is_errno(&e, &[libc::EINVAL]) && data.contains("gid=") => {
                let data: Vec<&str> = data.split(',').filter(|o| !o.starts_with("gid=")).collect();
                entry.fresh(
                    &self.src_or("devpts"),
                    "devpts",
                    opts.flags,
                    &data.join(","),
                )
            }
            res => res,
        }
        .map_err(|e| self.err(self.fstype, "devpts", e))
        .and_then(|()| entry.post(opts))
    }

    /// tmpfs and anything else, as is; tmpfs and whatever goes on `/dev` (container path
    /// `cdest`) are remounted read-only after the pivot.
    fn other(&self, ctx: &mut Ctx, cdest: PathBuf) -> Result<(), RootfsError> {
        let (entry, opts, fstype) = (&self.entry, self.opts, self.fstype);
        let mut flags = opts.flags;
        if opts.read_only() && (fstype == "tmpfs" || cdest == Path::new("/dev")) {
            flags &= !libc::MS_RDONLY;
            ctx.deferred_ro.push((cdest, opts.flags));
        }
        entry
            .fresh(&self.src_or(fstype), fstype, flags, &opts.data())
            .map_err(|e| self.err(fstype, fstype, e))?;
        entry.post(opts)
    }
}

/// `opts` turned into a bind (recursive or not) of a fallback source; propagation and
/// recursive attributes are kept.
fn with_bind(opts: &MountOptions, recursive: bool) -> MountOptions {
    let mut b = opts.clone();
    b.flags |= libc::MS_BIND;
    if recursive {
        b.flags |= libc::MS_REC;
    }
    b.data.clear();
    b
}

/// `opts` turned into an rbind of a fallback source, recursively read-only when `ro`.
fn with_rbind(opts: &MountOptions) -> MountOptions {
    let mut b = with_bind(opts, true);
    if opts.read_only() {
        b.rec_attr_set |= attr::RDONLY;
        b.rec_attr_clr &= !attr::RDONLY;
    }
    b
}

/// One mount being made: its destination as the spec says and as resolved on the host.
struct Entry<'a> {
    spec_dest: &'a Path,
    dest: &'a PathBuf,
}

impl Entry<'_> {
    /// mkdir the mount point and mount a fresh filesystem; the raw error for fallbacks.
    fn fresh(&self, src: &OsStr, fstype: &str, flags: c_ulong, data: &str) -> io::Result<()> {
        mkdir_all(self.dest)?;
        sys::mount(Some(src), self.dest, Some(fstype), flags, Some(data))
    }

    /// Bind-mounts `src` (creating a directory or file mount point as `src` is one), applies
    /// the flags with a remount, then [`Entry::post`].
    fn bind(&self, src: &Path, opts: &MountOptions) -> Result<(), RootfsError> {
        let err = |op, e| mount_err(op, self.spec_dest, "bind", src, e);
        let meta = fs::metadata(src).map_err(|e| err("stat the source of", e))?;
        if meta.is_dir() {
            mkdir_all(self.dest)
        } else {
            create_file(self.dest)
        }
        .map_err(|e| err("create the mount point of", e))?;
        let flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
        sys::mount(Some(src.as_os_str()), self.dest, Some("bind"), flags, None)
            .map_err(|e| err("mount", e))?;
        if opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT) != 0 || opts.cleared != 0
        {
            remount_bind(self.dest, opts.flags, opts.cleared).map_err(|e| err("remount", e))?;
        }
        self.post(opts)
    }

    /// The propagation options in order, then the recursive attributes.
    fn post(&self, opts: &MountOptions) -> Result<(), RootfsError> {
        for &p in &opts.propagation {
            sys::mount(None, self.dest, None, p, None)
                .map_err(|e| mount_err("set propagation of", self.spec_dest, "", "", e))?;
        }
        if opts.has_rec_attrs() {
            sys::mount_setattr_recursive(self.dest, opts.rec_attr_set, opts.rec_attr_clr)
                .map_err(|e| mount_err("set recursive attributes of", self.spec_dest, "", "", e))?;
        }
        Ok(())
    }
}

/// `MS_BIND|MS_REMOUNT` with `flags`; on failure, as runc: unless a locked flag of the mount
/// is explicitly cleared or another atime setting is asked for, retried with the mount's
/// locked flags added.
pub(crate) fn remount_bind(dest: &Path, flags: c_ulong, cleared: c_ulong) -> io::Result<()> {
    let want = (flags & !libc::MS_REC) | libc::MS_BIND | libc::MS_REMOUNT;
    let first = match sys::mount(None, dest, None, want, None) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let Ok(st) = sys::statfs(dest) else {
        return Err(first);
    };
    let have = st.mount_flags;
    if have & cleared & LOCKED_FLAGS != 0 {
        return Err(first);
    }
    if flags & ATIME_FLAGS != 0 && have & ATIME_FLAGS != flags & ATIME_FLAGS {
        return Err(first);
    }
    sys::mount(None, dest, None, want | (have & LOCKED_FLAGS), None)
}

/// After the pivot: remounts a container path that was mounted read-write for setup
/// read-only (runc's `remountReadonly`, with its retries on EBUSY).
pub(super) fn remount_read_only(cdest: &Path, flags: c_ulong) -> Result<(), RootfsError> {
    let dest = secure_join(Path::new("/"), cdest).map_err(path_err("resolving", cdest))?;
    let flags = (flags & !libc::MS_REC) | libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    let mut tries = 0;
    loop {
        match remount_bind(&dest, flags, 0) {
            Err(e) if is_errno(&e, &[libc::EBUSY]) && tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            res => return res.map_err(|e| mount_err("remount read-only", cdest, "", "", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spec, tempdir};

    fn mount(json: &str) -> Mount {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn proc_mount_rules() {
        let ok = |d: &str, t: &str, bind: bool, src: Option<&str>| {
            check_proc_mount(Path::new(d), t, bind, src.map(Path::new)).is_ok()
        };
        assert!(ok("/proc", "proc", false, Some("proc")));
        assert!(ok("/proc", "bind", true, Some("/proc")));
        assert!(!ok("/proc", "tmpfs", false, Some("tmpfs")));
        assert!(!ok("/proc", "bind", true, Some("/tmp")));
        assert!(ok("/proc/meminfo", "bind", true, Some("/tmp")));
        assert!(!ok("/proc/sys/kernel", "bind", true, Some("/tmp")));
        assert!(ok("/procfoo", "tmpfs", false, None));
    }

    #[test]
    fn mount_validation() {
        let t = tempdir("mnt-validate");
        let src = t.path().display();
        assert!(validate_mount(&mount(&format!(
            r#"{{"destination":"/data","type":"bind","source":"{src}","options":["rbind","ro"]}}"#
        )))
        .is_ok());
        assert!(validate_mount(&mount(&format!(
            r#"{{"destination":"/data","source":"{src}","options":["bind"]}}"#
        )))
        .is_ok());
        let err = |json: &str| validate_mount(&mount(json)).unwrap_err().to_string();
        assert!(
            err(r#"{"destination":"data","type":"tmpfs","source":"tmpfs"}"#)
                .contains("not absolute")
        );
        assert!(
            err(r#"{"destination":"/x","source":"/nonexistent-moat","options":["rbind"]}"#)
                .contains("/nonexistent-moat")
        );
        assert!(
            err(r#"{"destination":"/x","source":"rel/dir","options":["rbind"]}"#)
                .contains("not absolute")
        );
        assert!(err(r#"{"destination":"/x","source":"none"}"#).contains("no type"));
        assert!(
            err(r#"{"destination":"/x","type":"tmpfs","options":["idmap"]}"#).contains("idmapped")
        );
        assert!(err(&format!(
            r#"{{"destination":"/proc/sys","type":"bind","source":"{src}","options":["rbind"]}}"#
        ))
        .contains("inside /proc"));
        // The whole spec goes through the same checks.
        let s = spec(&format!(
            r#"{{"ociVersion":"1.1.0","root":{{"path":"{src}"}},
                "mounts":[{{"destination":"/x","source":"none"}}]}}"#
        ));
        assert!(super::super::validate(&s).is_err());
    }
}
