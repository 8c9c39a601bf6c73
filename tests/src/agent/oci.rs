//! OCI pieces for container tests: a busybox root filesystem and a default runtime spec like
//! the one containerd generates (`oci.WithDefaultSpec`), as JSON values tests can adjust.

use std::io;
use std::path::Path;

use serde_json::{json, Value};

/// busybox applets linked into test root filesystems.
pub const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "ls",
    "id",
    "sleep",
    "grep",
    "head",
    "tail",
    "dd",
    "wc",
    "sha256sum",
    "mkdir",
    "touch",
    "hostname",
    "stty",
    "tty",
    "kill",
    "ps",
    "chown",
    "cut",
    "tr",
    "test",
    "true",
    "false",
    "env",
    "yes",
    "seq",
    "printf",
    "mount",
    "rm",
    "readlink",
    "stat",
    "nproc",
    "uname",
    "date",
    "chmod",
    "ln",
    "pwd",
    "cp",
    "mv",
    "awk",
    "sed",
    "find",
    "xargs",
    "md5sum",
    "unshare",
    "nsenter",
    "sync",
    "free",
    "top",
    "timeout",
    "dmesg",
    "mknod",
    "od",
    "hexdump",
];

/// Lays out a busybox root filesystem in `dir` (created): `/bin/busybox` from `busybox`
/// (a static binary), applet links, `/etc/passwd` and `/etc/group` with root and nobody,
/// and the empty directories a container needs.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> io::Result<()> {
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in APPLETS {
        let link = dir.join("bin").join(applet);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    std::fs::write(dir.join("etc/hostname"), "rootfs\n")?;
    Ok(())
}

/// The capabilities containerd gives a non-privileged container.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// An OCI process object running `args` as root in `/`.
pub fn default_process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true
    })
}

/// containerd's default spec for a container with root filesystem `rootfs` running `args`:
/// pid/ipc/uts/mount/network namespaces, the usual mounts, masked and read-only paths.
pub fn default_spec(rootfs: &Path, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.1.0",
        "process": default_process(args),
        "root": { "path": rootfs, "readonly": false },
        "hostname": "moat-test",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                { "type": "network" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/sys/devices/virtual/powercap", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_parses_as_json() {
        let s = default_spec(Path::new("/r"), &["true"]);
        assert_eq!(s["process"]["args"][0], "true");
        assert_eq!(s["linux"]["namespaces"].as_array().unwrap().len(), 5);
    }
}
