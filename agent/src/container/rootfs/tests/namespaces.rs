//! Real rootfs setups, each in fresh namespaces: the test re-executes the test binary under
//! `unshare --user --map-root-user --mount --pid --fork --net --ipc --mount-proc` (or, for the
//! guest-like case as real root, the same without `--user --map-root-user`) with
//! [`CHILD_ENV`] set, and the child (the same test, run with `--exact`) builds the container
//! from a small busybox rootfs, pivots into it and checks from inside. A child with a failed
//! check exits non-zero, which fails the parent test.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::container::rootfs::{finish_rootfs, setup_rootfs_with, validate, RootfsConfig};
use crate::testing::{spec, tempdir};

/// Set in the child: the prepared directory (rootfs, host dir, marker).
const CHILD_ENV: &str = "MOAT_ROOTFS_NS_CHILD";
/// A destination reached through `rootfs/evil -> /`: must land inside the rootfs.
const ESCAPE_PROBE: &str = "moat-rootfs-escape-probe";

/// Prepares `dir`: `rootfs/` with busybox and `evil -> /`, `host/` (file, subdir), `marker`.
fn prepare(dir: &Path) {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("proc")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copying /bin/busybox (busybox-static) into the test rootfs");
    for tool in ["sh", "cat", "ls"] {
        symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    symlink("/", rootfs.join("evil")).unwrap();
    fs::create_dir_all(dir.join("host/subdir")).unwrap();
    fs::write(dir.join("host/file"), "hello from the host\n").unwrap();
    fs::write(dir.join("host/subdir/inner"), "inner\n").unwrap();
    fs::write(dir.join("marker"), "outside the rootfs\n").unwrap();
}

/// The parent side: prepares a directory and runs `test` (this module's test of that name)
/// in new namespaces (a user namespace with `user_ns`); panics (loudly if `unshare` is
/// missing) unless the child succeeds.
fn run_in_namespaces(test: &str, user_ns: bool) {
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("!!!!!!!! `unshare` (util-linux) is missing: cannot run {test} !!!!!!!!");
        panic!("unshare is missing");
    }
    let tmp = tempdir("ns");
    prepare(tmp.path());
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let mut wrapper = vec!["unshare"];
    if user_ns {
        wrapper.extend(["--user", "--map-root-user"]);
    }
    wrapper.extend([
        "--mount",
        "--pid",
        "--fork",
        "--net",
        "--ipc",
        "--mount-proc",
        "--",
    ]);
    let status = crate::testing::rerun_test(
        &format!("{module}::{test}"),
        &wrapper,
        (CHILD_ENV, tmp.path().as_os_str()),
    );
    assert!(
        !Path::new("/").join(ESCAPE_PROBE).exists(),
        "a mount escaped the rootfs"
    );
    assert!(status.success(), "{test} in namespaces failed: {status}");
}

/// Collects failed checks so that the child reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn ok(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            println!("ok: {what}");
        } else {
            self.0.push(format!("{what}: {detail:?}"));
        }
    }

    fn errno<T: std::fmt::Debug>(&mut self, what: &str, r: std::io::Result<T>, errno: i32) {
        let ok = matches!(&r, Err(e) if e.raw_os_error() == Some(errno));
        self.ok(what, ok, r);
    }

    /// Exits the child non-zero when a check failed.
    fn finish(self) {
        if !self.0.is_empty() {
            for f in &self.0 {
                eprintln!("!!!!!!!! FAILED: {f}");
            }
            std::process::exit(1);
        }
    }
}

fn read(path: &str) -> std::io::Result<String> {
    fs::read_to_string(path)
}

fn fs_magic(path: &str) -> libc::c_long {
    crate::container::rootfs::sys::statfs(Path::new(path)).map_or(-1, |s| s.fs_type)
}

/// Runs setup + finish on `spec_json`, exiting with a message when either fails.
fn setup(spec_json: &str, new_net_ns: bool, force_move_root: bool, in_user_ns: bool) {
    let s = spec(spec_json);
    if let Err(e) = validate(&s) {
        eprintln!("!!!!!!!! validate failed: {e}");
        std::process::exit(2);
    }
    let rootfs = s
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let cfg = RootfsConfig {
        spec: &s,
        rootfs: &rootfs,
        new_pid_ns: true,
        new_net_ns,
        in_user_ns,
    };
    if let Err(e) = setup_rootfs_with(&cfg, force_move_root).and_then(|()| finish_rootfs(&cfg)) {
        eprintln!("!!!!!!!! rootfs setup failed: {e}");
        std::process::exit(2);
    }
}

/// Checks every container gets: proc, /dev nodes and links, the host root gone.
fn common_checks(c: &mut Checks, dir: &Path) {
    c.ok(
        "/proc/self exists",
        Path::new("/proc/self/status").exists(),
        (),
    );
    c.ok(
        "we are PID 1 of the container",
        Path::new("/proc/1").exists(),
        (),
    );
    let null = fs::metadata("/dev/null");
    c.ok(
        "/dev/null is char 1:3",
        null.as_ref()
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 3)),
        &null,
    );
    let w = fs::OpenOptions::new().write(true).open("/dev/null");
    c.ok(
        "/dev/null takes writes",
        w.and_then(|mut f| f.write_all(b"x")).is_ok(),
        (),
    );
    c.ok(
        "/dev/null reads empty",
        read("/dev/null").is_ok_and(|s| s.is_empty()),
        (),
    );
    let mut zero = [1u8; 16];
    let z = fs::File::open("/dev/zero").and_then(|mut f| f.read_exact(&mut zero));
    c.ok("/dev/zero reads zeros", z.is_ok() && zero == [0; 16], z);
    for n in ["full", "random", "urandom", "tty"] {
        let p = format!("/dev/{n}");
        let m = fs::metadata(&p);
        c.ok(&p, m.is_ok_and(|m| m.file_type().is_char_device()), ());
    }
    let fd = fs::read_link("/dev/fd");
    c.ok(
        "/dev/fd -> /proc/self/fd",
        fd.as_deref().ok() == Some(Path::new("/proc/self/fd")),
        &fd,
    );
    let stderr = fs::read_link("/dev/stderr");
    c.ok(
        "/dev/stderr",
        stderr.as_deref().ok() == Some(Path::new("/proc/self/fd/2")),
        &stderr,
    );
    c.ok("in the rootfs", Path::new("/bin/busybox").exists(), ());
    let marker = dir.join("marker");
    c.ok("old root is gone", !marker.exists(), &marker);
    c.ok("no host /usr", !Path::new("/usr").exists(), ());
}

fn child_basic(dir: &Path) {
    let rootfs = dir.join("rootfs");
    let host = dir.join("host");
    let json = format!(
        r#"{{
        "ociVersion": "1.1.0",
        "process": {{"cwd": "/work/dir", "args": ["sh"], "user": {{"uid": 0, "gid": 0}}}},
        "root": {{"path": "{rootfs}", "readonly": false}},
        "mounts": [
            {{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}},
            {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
            {{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}},
            {{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}},
            {{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}},
            {{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}},
            {{"destination": "/data", "type": "bind", "source": "{host}", "options": ["rbind", "ro", "rprivate"]}},
            {{"destination": "/etc/hostfile", "type": "bind", "source": "{host}/file", "options": ["bind", "ro"]}},
            {{"destination": "/evil/{ESCAPE_PROBE}", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "mode=755"]}}
        ],
        "linux": {{
            "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "mount"}}, {{"type": "user"}}],
            "maskedPaths": ["/proc/kcore", "/proc/version", "/proc/acpi", "/data/subdir", "/nonexistent/path"],
            "readonlyPaths": ["/proc/sys", "/proc/bus", "/nonexistent/ro"]
        }}
    }}"#,
        rootfs = rootfs.display(),
        host = host.display(),
    );
    // No new net ns as far as setup knows: /sys must become a read-only rbind of /sys.
    setup(&json, false, false, true);

    let mut c = Checks::default();
    common_checks(&mut c, dir);
    c.ok(
        "/dev is a tmpfs",
        fs_magic("/dev") == libc::TMPFS_MAGIC,
        fs_magic("/dev"),
    );
    let ptmx = fs::read_link("/dev/ptmx");
    c.ok(
        "/dev/ptmx -> pts/ptmx",
        ptmx.as_deref().ok() == Some(Path::new("pts/ptmx")),
        &ptmx,
    );
    c.ok("/dev/pts/ptmx", Path::new("/dev/pts/ptmx").exists(), ());
    c.ok(
        "/dev/pts is devpts",
        fs_magic("/dev/pts") == libc::DEVPTS_SUPER_MAGIC,
        (),
    );
    c.ok(
        "/dev/shm writable",
        fs::write("/dev/shm/x", "x").is_ok(),
        (),
    );
    c.ok(
        "/dev/mqueue is mqueue",
        fs_magic("/dev/mqueue") == 0x1980_0202,
        fs_magic("/dev/mqueue"),
    );
    c.ok(
        "/data/file readable",
        read("/data/file").is_ok_and(|s| s.starts_with("hello")),
        (),
    );
    c.errno(
        "/data is read-only",
        fs::write("/data/new", "x"),
        libc::EROFS,
    );
    c.ok(
        "/etc/hostfile readable",
        read("/etc/hostfile").is_ok_and(|s| s.starts_with("hello")),
        (),
    );
    c.errno(
        "/etc/hostfile is read-only",
        fs::write("/etc/hostfile", "x"),
        libc::EROFS,
    );
    c.ok(
        "/proc/version masked",
        read("/proc/version").is_ok_and(|s| s.is_empty()),
        read("/proc/version"),
    );
    if Path::new("/proc/kcore").exists() {
        c.ok(
            "/proc/kcore masked",
            fs::metadata("/proc/kcore").is_ok_and(|m| m.len() == 0),
            (),
        );
    }
    let entries = fs::read_dir("/data/subdir").map(|d| d.count());
    c.ok(
        "/data/subdir masked (empty)",
        entries.as_ref().is_ok_and(|n| *n == 0),
        &entries,
    );
    c.errno(
        "masked dir is read-only",
        fs::write("/data/subdir/x", "x"),
        libc::EROFS,
    );
    c.errno(
        "/proc/sys is read-only",
        fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/domainname"),
        libc::EROFS,
    );
    c.ok("/sys is populated", Path::new("/sys/kernel").exists(), ());
    c.errno(
        "/sys is read-only",
        fs::write("/sys/moat-x", "x"),
        libc::EROFS,
    );
    if Path::new("/sys/fs/cgroup").is_dir() {
        c.errno(
            "/sys submounts are read-only",
            fs::create_dir("/sys/fs/cgroup/moat-x"),
            libc::EROFS,
        );
    }
    let probe = format!("/{ESCAPE_PROBE}");
    c.ok(
        "symlinked destination stayed inside",
        fs_magic(&probe) == libc::TMPFS_MAGIC,
        (),
    );
    c.errno(
        "ro tmpfs remounted read-only",
        fs::write(format!("{probe}/x"), "x"),
        libc::EROFS,
    );
    c.ok("cwd created", Path::new("/work/dir").is_dir(), ());
    c.ok(
        "root stays writable",
        fs::write("/rootfile", "x").is_ok(),
        (),
    );
    let out = Command::new("/bin/sh")
        .args(["-c", "ls /dev >/dev/null && cat /data/file"])
        .output();
    c.ok(
        "busybox runs in the container",
        out.as_ref()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"hello")),
        &out,
    );
    c.finish();
}

fn child_readonly_moved(dir: &Path) {
    let rootfs = dir.join("rootfs");
    let host = dir.join("host");
    let json = format!(
        r#"{{
        "ociVersion": "1.1.0",
        "root": {{"path": "{rootfs}", "readonly": true}},
        "mounts": [
            {{"destination": "/proc", "type": "proc", "source": "proc"}},
            {{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}},
            {{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}},
            {{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "ro"]}},
            {{"destination": "/run/secret/file", "type": "bind", "source": "{host}/file", "options": ["rbind", "ro"]}}
        ],
        "linux": {{
            "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "mount"}}],
            "rootfsPropagation": "rprivate",
            "devices": [{{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}}],
            "sysctl": {{"net.ipv4.ip_forward": "1", "kernel.shmmax": "12345678"}},
            "readonlyPaths": ["/proc/sys"]
        }}
    }}"#,
        rootfs = rootfs.display(),
        host = host.display(),
    );
    // A fresh sysfs (new net ns), and the initramfs fallback instead of pivot_root.
    setup(&json, true, true, true);

    let mut c = Checks::default();
    common_checks(&mut c, dir);
    c.ok(
        "default /dev is a tmpfs",
        fs_magic("/dev") == libc::TMPFS_MAGIC,
        (),
    );
    c.ok(
        "/dev/fuse from the spec",
        fs::metadata("/dev/fuse").is_ok_and(|m| m.rdev() == libc::makedev(10, 229)),
        (),
    );
    c.ok(
        "no /dev/ptmx without devpts",
        fs::symlink_metadata("/dev/ptmx").is_err(),
        (),
    );
    c.errno("root is read-only", fs::write("/newfile", "x"), libc::EROFS);
    c.ok(
        "/sys is a fresh sysfs",
        fs_magic("/sys") == libc::SYSFS_MAGIC,
        (),
    );
    c.ok(
        "/sys/fs/cgroup mounted",
        Path::new("/sys/fs/cgroup").is_dir(),
        (),
    );
    c.errno("/run is read-only", fs::write("/run/x", "x"), libc::EROFS);
    c.ok(
        "/run/secret/file",
        read("/run/secret/file").is_ok_and(|s| s.starts_with("hello")),
        (),
    );
    let fwd = read("/proc/sys/net/ipv4/ip_forward");
    c.ok(
        "sysctl net.ipv4.ip_forward",
        fwd.as_deref().is_ok_and(|s| s.trim() == "1"),
        &fwd,
    );
    let shm = read("/proc/sys/kernel/shmmax");
    c.ok(
        "sysctl kernel.shmmax",
        shm.as_deref().is_ok_and(|s| s.trim() == "12345678"),
        &shm,
    );
    c.errno(
        "/proc/sys read-only after the sysctls",
        fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/net/ipv4/ip_forward"),
        libc::EROFS,
    );
    c.finish();
}

fn child_real_root(dir: &Path) {
    let rootfs = dir.join("rootfs");
    let json = format!(
        r#"{{
        "ociVersion": "1.1.0",
        "root": {{"path": "{rootfs}"}},
        "mounts": [
            {{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}},
            {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k", "ro"]}},
            {{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}},
            {{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}}
        ],
        "linux": {{
            "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "mount"}}],
            "devices": [
                {{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 384, "uid": 1000, "gid": 1001}},
                {{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438}},
                {{"path": "/dev/loop7", "type": "b", "major": 7, "minor": 7, "fileMode": 432}},
                {{"path": "/dev/myfifo", "type": "p", "fileMode": 420}}
            ],
            "maskedPaths": ["/proc/version", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys"]
        }}
    }}"#,
        rootfs = rootfs.display(),
    );
    // Real root, no new net ns as far as setup knows: a fresh sysfs all the same (as runc).
    setup(&json, false, false, false);

    let mut c = Checks::default();
    common_checks(&mut c, dir);
    let fuse = fs::metadata("/dev/fuse");
    c.ok(
        "/dev/fuse made by mknod with mode and owner",
        fuse.as_ref().is_ok_and(|m| {
            m.file_type().is_char_device()
                && m.rdev() == libc::makedev(10, 229)
                && m.mode() & 0o7777 == 0o600
                && (m.uid(), m.gid()) == (1000, 1001)
        }),
        &fuse,
    );
    let null = fs::metadata("/dev/null");
    c.ok(
        "/dev/null mode 0666",
        null.as_ref().is_ok_and(|m| m.mode() & 0o777 == 0o666),
        &null,
    );
    let tun = fs::metadata("/dev/net/tun");
    c.ok(
        "/dev/net/tun in a subdir",
        tun.is_ok_and(|m| m.rdev() == libc::makedev(10, 200)),
        (),
    );
    let lp = fs::metadata("/dev/loop7");
    c.ok(
        "/dev/loop7 is a block device",
        lp.is_ok_and(|m| m.file_type().is_block_device()),
        (),
    );
    let fifo = fs::metadata("/dev/myfifo");
    c.ok(
        "/dev/myfifo is a fifo",
        fifo.is_ok_and(|m| m.file_type().is_fifo()),
        (),
    );
    c.errno(
        "ro /dev tmpfs remounted read-only",
        fs::write("/dev/x", "x"),
        libc::EROFS,
    );
    c.ok(
        "/sys is a fresh sysfs",
        fs_magic("/sys") == libc::SYSFS_MAGIC,
        fs_magic("/sys"),
    );
    c.ok(
        "/proc/version masked",
        read("/proc/version").is_ok_and(|s| s.is_empty()),
        (),
    );
    c.errno(
        "/proc/sys is read-only",
        fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/domainname"),
        libc::EROFS,
    );
    c.finish();
}

/// The child's prepared directory, when this process is the child.
fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

#[test]
fn rootfs_in_user_namespace() {
    match child_dir() {
        Some(dir) => child_basic(&dir),
        None => run_in_namespaces("rootfs_in_user_namespace", true),
    }
}

#[test]
fn rootfs_readonly_without_pivot_root() {
    match child_dir() {
        Some(dir) => child_readonly_moved(&dir),
        None => run_in_namespaces("rootfs_readonly_without_pivot_root", true),
    }
}

#[test]
fn rootfs_as_real_root() {
    match child_dir() {
        Some(dir) => child_real_root(&dir),
        None => {
            assert!(
                nix::unistd::geteuid().is_root(),
                "rootfs_as_real_root needs root (the README's commands run as root)"
            );
            run_in_namespaces("rootfs_as_real_root", false)
        }
    }
}
