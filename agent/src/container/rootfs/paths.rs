//! After the pivot: the read-only root, `linux.readonlyPaths`, `linux.maskedPaths` and
//! sysctls (runc's `setReadonly`, `readonlyPath`, `maskPath`, `writeSystemProperty` and its
//! sysctl validation).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::mounts::remount_bind;
use super::sys::{self, LOCKED_FLAGS};
use super::{has_namespace, mount_err, path_err, RootfsError};

/// `root.readonly`: remounts `/` `MS_BIND|MS_REMOUNT|MS_RDONLY`, retried with the mount's
/// current flags (which a user namespace may lock) as runc's `setReadonly`.
pub(super) fn remount_root_read_only() -> Result<(), RootfsError> {
    let root = Path::new("/");
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    if sys::mount(None, root, None, flags, None).is_ok() {
        return Ok(());
    }
    let st = sys::statfs(root).map_err(path_err("statfs", root))?;
    sys::mount(None, root, None, flags | st.mount_flags, None)
        .map_err(|e| mount_err("remount read-only", root, "", "", e))
}

fn missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// A `linux.readonlyPaths` entry: bound onto itself (recursively) and remounted read-only,
/// keeping its mount's locked flags. Missing paths are skipped.
pub(super) fn readonly_path(path: &Path) -> Result<(), RootfsError> {
    let flags = libc::MS_BIND | libc::MS_REC;
    match sys::mount(Some(path.as_os_str()), path, Some("bind"), flags, None) {
        Ok(()) => {}
        Err(e) if missing(&e) => return Ok(()),
        Err(e) => {
            return Err(mount_err(
                "bind-mount (readonly path)",
                path,
                "bind",
                path,
                e,
            ))
        }
    }
    let st = sys::statfs(path).map_err(path_err("statfs", path))?;
    let flags = (st.mount_flags & LOCKED_FLAGS) | libc::MS_RDONLY;
    remount_bind(path, flags, 0)
        .map_err(|e| mount_err("remount read-only (readonly path)", path, "bind", path, e))
}

/// A `linux.maskedPaths` entry: `/dev/null` bound over a file, an empty read-only tmpfs over
/// a directory. Missing paths are skipped.
pub(super) fn mask_path(path: &Path) -> Result<(), RootfsError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if missing(&e) => return Ok(()),
        Err(e) => return Err(path_err("stat (masked path)", path)(e)),
    };
    if meta.is_dir() {
        sys::mount(
            Some(OsStr::new("tmpfs")),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        )
        .map_err(|e| mount_err("mask", path, "tmpfs", "tmpfs", e))
    } else {
        let null = Path::new("/dev/null");
        match sys::mount(
            Some(null.as_os_str()),
            path,
            Some("bind"),
            libc::MS_BIND,
            None,
        ) {
            Err(e) if !missing(&e) => Err(mount_err("mask", path, "bind", null, e)),
            _ => Ok(()),
        }
    }
}

/// IPC-namespaced sysctls (runc's list; `fs.mqueue.*` too).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

fn sysctl_err(key: &str, reason: impl Into<String>) -> RootfsError {
    RootfsError::Sysctl {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Checks sysctl keys as runc does: well-formed (`[A-Za-z0-9_-]` words joined by single
/// dots: no `/`, no `..`, no empty word) and namespaced — IPC ones need an IPC
/// namespace in the spec, `net.*` a network namespace (in the spec, or `new_net_ns`), and
/// `kernel.hostname`/`kernel.domainname` a UTS namespace. Anything else would change the
/// whole guest and is refused.
pub fn validate_sysctls<'k>(
    spec: &Spec,
    keys: impl IntoIterator<Item = &'k str>,
    new_net_ns: Option<bool>,
) -> Result<(), RootfsError> {
    let ipc = has_namespace(spec, LinuxNamespaceType::Ipc);
    let uts = has_namespace(spec, LinuxNamespaceType::Uts);
    let net = has_namespace(spec, LinuxNamespaceType::Network) || new_net_ns == Some(true);
    for key in keys {
        check_key(key)?;
        let k = key;
        if IPC_SYSCTLS.contains(&k) || k.starts_with("fs.mqueue.") {
            if !ipc {
                return Err(sysctl_err(key, "not allowed without an IPC namespace"));
            }
        } else if k.starts_with("net.") {
            if !net {
                return Err(sysctl_err(key, "not allowed without a network namespace"));
            }
        } else if k == "kernel.hostname" || k == "kernel.domainname" {
            if !uts {
                return Err(sysctl_err(key, "not allowed without a UTS namespace"));
            }
        } else {
            return Err(sysctl_err(key, "not in a separate kernel namespace"));
        }
    }
    Ok(())
}

/// Checks a key's syntax.
fn check_key(key: &str) -> Result<(), RootfsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if key.is_empty()
        || key
            .split('.')
            .any(|w| w.is_empty() || !w.chars().all(ok_char))
    {
        return Err(sysctl_err(
            key,
            "invalid key (words of [A-Za-z0-9_-] joined by dots)",
        ));
    }
    Ok(())
}

/// The `/proc/sys` file of a (valid) key.
fn sysctl_path(dotted: &str) -> PathBuf {
    Path::new("/proc/sys").join(dotted.replace('.', "/"))
}

/// Validates then writes `linux.sysctl` to `/proc/sys`.
pub(super) fn write_sysctls(
    spec: &Spec,
    sysctl: &HashMap<String, String>,
    new_net_ns: bool,
) -> Result<(), RootfsError> {
    validate_sysctls(spec, sysctl.keys().map(String::as_str), Some(new_net_ns))?;
    // Sorted, so that the order (and the first failure) is stable.
    let mut entries: Vec<_> = sysctl.iter().collect();
    entries.sort();
    for (key, value) in entries {
        check_key(key)?;
        let path = sysctl_path(key);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| {
                sysctl_err(key, format!("writing {value:?} to {}: {e}", path.display()))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    fn with_ns(ns: &[&str]) -> Spec {
        let list: Vec<String> = ns.iter().map(|n| format!(r#"{{"type":"{n}"}}"#)).collect();
        spec(&format!(
            r#"{{"ociVersion":"1.1.0","linux":{{"namespaces":[{}]}}}}"#,
            list.join(",")
        ))
    }

    #[test]
    fn sysctl_keys_are_checked() {
        let s = with_ns(&["ipc", "network", "uts"]);
        for key in [
            "kernel.shmmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "kernel.hostname",
        ] {
            validate_sysctls(&s, [key], None).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        for key in [
            "",
            "kernel..shmmax",
            ".net.ipv4",
            "net.ipv4.",
            "net.ipv4/../../x",
            "net/ipv4/ip_forward",
            "net.ipv4 x",
            "net.ipv4.conf.*.x",
        ] {
            let e = validate_sysctls(&s, [key], None).unwrap_err().to_string();
            assert!(e.contains("invalid key"), "{key}: {e}");
        }
        let e = validate_sysctls(&s, ["kernel.panic"], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in a separate kernel namespace"), "{e}");
        let e = validate_sysctls(&s, ["vm.swappiness"], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.swappiness"), "{e}");
    }

    #[test]
    fn sysctls_need_their_namespace() {
        let s = with_ns(&["pid", "mount"]);
        assert!(validate_sysctls(&s, ["kernel.shmmax"], None).is_err());
        assert!(validate_sysctls(&s, ["fs.mqueue.queues_max"], None).is_err());
        assert!(validate_sysctls(&s, ["kernel.hostname"], None).is_err());
        assert!(validate_sysctls(&s, ["net.ipv4.ip_forward"], None).is_err());
        assert!(validate_sysctls(&s, ["net.ipv4.ip_forward"], Some(true)).is_ok());
        assert!(validate_sysctls(&s, ["net.ipv4.ip_forward"], Some(false)).is_err());
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("kernel.shm_rmid_forced"),
            Path::new("/proc/sys/kernel/shm_rmid_forced")
        );
    }
}
