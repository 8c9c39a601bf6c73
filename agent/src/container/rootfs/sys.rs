//! Thin wrappers over the mount-related system calls (`mount`, `umount2`, `pivot_root`,
//! `mount_setattr`, `statfs`) and a `/proc/self/mountinfo` reader.
//!
//! Flags are raw `MS_*` values (`libc::c_ulong`) because runc's option table needs flags that
//! nix's `MsFlags` does not name (`MS_NOSYMFOLLOW`, `MS_LAZYTIME`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use libc::c_ulong;

/// `MOUNT_ATTR_*` (linux/mount.h), for `mount_setattr(2)`.
pub(crate) mod attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x0000_0001;
    /// Ignore suid and sgid bits.
    pub const NOSUID: u64 = 0x0000_0002;
    /// Disallow access to device special files.
    pub const NODEV: u64 = 0x0000_0004;
    /// Disallow program execution.
    pub const NOEXEC: u64 = 0x0000_0008;
    /// The atime bits (a setting in `attr_set` needs this in `attr_clr`).
    pub const ATIME: u64 = 0x0000_0070;
    /// Update atime relative to mtime/ctime (the value of the atime field).
    pub const RELATIME: u64 = 0x0000_0000;
    /// Do not update access times.
    pub const NOATIME: u64 = 0x0000_0010;
    /// Always update atime.
    pub const STRICTATIME: u64 = 0x0000_0020;
    /// Do not update directory access times.
    pub const NODIRATIME: u64 = 0x0000_0080;
    /// Do not follow symlinks.
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// The flags a mount in a less privileged mount namespace locks (the kernel refuses a remount
/// that clears them): runc's `mntLockFlags`.
pub(crate) const LOCKED_FLAGS: c_ulong = libc::MS_RDONLY
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOSUID
    | libc::MS_NOATIME
    | libc::MS_RELATIME
    | libc::MS_NODIRATIME;

/// The atime `MS_*` flags.
pub(crate) const ATIME_FLAGS: c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// mount(2). `None` passes NULL.
pub(crate) fn mount(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target.as_os_str())?;
    let fstype = fstype.map(|s| cstr(OsStr::new(s))).transpose()?;
    let data = data
        .filter(|d| !d.is_empty())
        .map(|s| cstr(OsStr::new(s)))
        .transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// umount2(2).
pub(crate) fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target.as_os_str())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// pivot_root(2).
pub(crate) fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstr(new_root.as_os_str())?;
    let put_old = cstr(put_old.as_os_str())?;
    // SAFETY: two valid NUL-terminated paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) with `AT_RECURSIVE`: sets and clears `MOUNT_ATTR_*` on the mount at
/// `target` and every mount below it.
pub(crate) fn mount_setattr_recursive(target: &Path, set: u64, clr: u64) -> io::Result<()> {
    let target = cstr(target.as_os_str())?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path and a `struct mount_attr` of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What statfs(2) says about the filesystem and mount at `path`.
pub(crate) struct StatFs {
    /// `f_type`, the filesystem magic (`libc::PROC_SUPER_MAGIC`...).
    pub fs_type: libc::c_long,
    /// `f_flags` translated to `MS_*` flags.
    pub mount_flags: c_ulong,
}

/// statfs(2) and statvfs(3) on `path` (follows symlinks).
pub(crate) fn statfs(path: &Path) -> io::Result<StatFs> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: statfs only writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; libc's statfs has no f_flags, statvfs has them as f_flag.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The ST_* bits runc maps (statfsToMountFlags); ST_NOSYMFOLLOW is 0x2000.
    let st_flags = vfs.f_flag as u64;
    let map: [(u64, c_ulong); 10] = [
        (libc::ST_MANDLOCK, libc::MS_MANDLOCK),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
        (0x2000, libc::MS_NOSYMFOLLOW),
    ];
    let mount_flags = map
        .iter()
        .filter(|(st, _)| st_flags & st != 0)
        .fold(0, |acc, (_, ms)| acc | ms);
    Ok(StatFs {
        fs_type: st.f_type,
        mount_flags,
    })
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    /// The root of the mount within its filesystem.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The optional fields (`shared:N`, `master:N`...).
    pub optional: Vec<String>,
    /// The filesystem type.
    pub fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 {
                return None;
            }
            Some(MountInfo {
                root: PathBuf::from(unescape(fields[3])),
                mount_point: PathBuf::from(unescape(fields[4])),
                optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Reads and parses `/proc/self/mountinfo`.
pub(crate) fn mountinfo() -> io::Result<Vec<MountInfo>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:5 /sub /mnt/a\\040b rw master:3 shared:4 - tmpfs tmpfs rw\n\
                    bogus line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[0].optional, vec!["shared:1"]);
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[1].root, Path::new("/sub"));
        assert_eq!(m[1].mount_point, Path::new("/mnt/a b"));
        assert_eq!(m[1].optional, vec!["master:3", "shared:4"]);
    }

    #[test]
    fn statfs_of_proc() {
        let st = statfs(Path::new("/proc")).expect("statfs /proc");
        assert_eq!(st.fs_type, libc::PROC_SUPER_MAGIC);
    }
}
