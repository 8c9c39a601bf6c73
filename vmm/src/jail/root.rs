//! The jail's namespaces and root: new mount, IPC, UTS and network namespaces (the PID one
//! comes from [`super::supervisor`]), a tmpfs on the jail directory holding read-only binds
//! of exactly what the VM uses, `pivot_root` into it, and the configuration rewritten to the
//! paths inside. Every mount lives in the VMM's own mount namespace: the host never sees
//! one, and they all vanish with the process, SIGKILL included.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::JailError;
use crate::config::{JailConfig, SerialOutput, ValidConfig};

/// tmpfs options of the jail root: small, few inodes (it holds mount points only).
const ROOT_TMPFS_OPTS: &str = "size=64k,nr_inodes=64,mode=0755";
/// procfs options while the VM is built: only this PID namespace's processes (the VMM),
/// none of the kernel's other files.
const PROC_OPTS: &str = "subset=pid,hidepid=invisible";

/// Enters the jail for `config` (see the module doc); returns the configuration with every
/// path as seen inside. `/proc` stays mounted until [`seal`] (the virtio-fs server opens
/// `/proc/self/fd` while the VM is built).
pub fn enter(config: &ValidConfig, jail: &JailConfig) -> Result<ValidConfig, JailError> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(|e| JailError::nix("unshare mount/IPC/UTS/net namespaces", e))?;
    // Receive the host's mounts (new container root filesystems in the share), never send.
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(|e| JailError::nix("make / a recursive slave", e))?;
    let root = &jail.dir;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTS),
    )
    .map_err(|e| JailError::nix("mount the jail's tmpfs", e))?;
    let inside = populate(config, root)?;
    pivot(root)?;
    Ok(inside)
}

/// Binds what `config` uses under `root`; returns `config` with the paths inside.
fn populate(config: &ValidConfig, root: &Path) -> Result<ValidConfig, JailError> {
    let b = Binder { root };
    let mut c = config.clone();
    c.kernel = b.file(&config.kernel, "kernel", true)?;
    if let Some((path, size)) = &config.initrd {
        c.initrd = Some((b.file(path, "initrd", true)?, *size));
    }
    for (i, d) in c.block_devices.iter_mut().enumerate() {
        d.path = b.file(&d.path, &format!("block{i}"), d.read_only)?;
    }
    for s in &mut c.shared_dirs {
        s.path = b.dir(&s.path, &format!("shares/{}", s.tag), true)?;
    }
    if let Some(v) = &mut c.vsock {
        let name = v
            .uds_path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        let dir = v.uds_path.parent().unwrap_or(Path::new("/"));
        v.uds_path = b.dir(dir, "vsock", false)?.join(name);
    }
    if let SerialOutput::File(path) = &config.serial.output {
        c.serial.output = SerialOutput::File(b.output(path, "console")?);
    }
    if let Some(path) = &config.metrics_file {
        c.metrics_file = Some(b.output(path, "metrics.json")?);
    }
    b.file(Path::new("/dev/kvm"), "dev/kvm", false)?;
    b.file(Path::new("/dev/urandom"), "dev/urandom", true)?;
    let proc = root.join("proc");
    mkdir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        nosuid_nodev_noexec(),
        Some(PROC_OPTS),
    )
    .map_err(|e| JailError::nix("mount the jail's /proc", e))?;
    Ok(c)
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Bind mounts into the jail root.
struct Binder<'a> {
    root: &'a Path,
}

impl Binder<'_> {
    /// Binds file `src` at `name` (read-only if `ro`); returns its path inside.
    fn file(&self, src: &Path, name: &str, ro: bool) -> Result<PathBuf, JailError> {
        let dst = self.root.join(name);
        if let Some(parent) = dst.parent() {
            mkdir(parent)?;
        }
        std::fs::File::create(&dst)
            .map_err(|e| JailError::io(format!("create {}", dst.display()), e))?;
        self.bind(src, &dst, MsFlags::MS_BIND, ro)?;
        Ok(Path::new("/").join(name))
    }

    /// Creates (or truncates) output file `host` on the host and binds it at `name`,
    /// writable; returns its path inside.
    fn output(&self, host: &Path, name: &str) -> Result<PathBuf, JailError> {
        std::fs::File::create(host)
            .map_err(|e| JailError::io(format!("create {}", host.display()), e))?;
        self.file(host, name, false)
    }

    /// Binds directory `src` (with its submounts when `recursive`: a share) at `name`; returns
    /// its path inside.
    fn dir(&self, src: &Path, name: &str, recursive: bool) -> Result<PathBuf, JailError> {
        let dst = self.root.join(name);
        mkdir(&dst)?;
        let flags = if recursive {
            MsFlags::MS_BIND | MsFlags::MS_REC
        } else {
            MsFlags::MS_BIND
        };
        self.bind(src, &dst, flags, false)?;
        Ok(Path::new("/").join(name))
    }

    fn bind(&self, src: &Path, dst: &Path, flags: MsFlags, ro: bool) -> Result<(), JailError> {
        let what = || format!("bind {} at {}", src.display(), dst.display());
        mount::<Path, Path, str, str>(Some(src), dst, None, flags, None)
            .map_err(|e| JailError::nix(what(), e))?;
        if ro {
            let ro_flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec();
            mount::<str, Path, str, str>(None, dst, None, ro_flags, None)
                .map_err(|e| JailError::nix(format!("{} read-only", what()), e))?;
        }
        Ok(())
    }
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(path).map_err(|e| JailError::io(format!("mkdir {}", path.display()), e))
}

/// `pivot_root` into `root`, the old root detached (the `pivot_root(".", ".")` idiom).
fn pivot(root: &Path) -> Result<(), JailError> {
    nix::unistd::chdir(root).map_err(|e| JailError::nix("chdir into the jail", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| JailError::nix("pivot_root into the jail", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| JailError::nix("detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| JailError::nix("chdir /", e))?;
    Ok(())
}

/// After the VM is built: detaches `/proc` (the virtio-fs server keeps its open
/// `/proc/self/fd`) and makes the jail root read-only.
pub fn seal() -> Result<(), JailError> {
    umount2("/proc", MntFlags::MNT_DETACH).map_err(|e| JailError::nix("detach /proc", e))?;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec();
    mount::<str, str, str, str>(None, "/", None, flags, Some(ROOT_TMPFS_OPTS))
        .map_err(|e| JailError::nix("remount the jail root read-only", e))?;
    Ok(())
}
