//! The guest images: `kernel` (`[vm] kernel`: a vmlinux with the PVH entry note) and
//! `initramfs` (`[vm] initrd`: a gzip'd newc cpio whose `init` is an agent of this version).

use std::path::Path;

use super::image::{read_initramfs, read_kernel, Compression, ImageError};
use super::Finding;

/// This tool's version: the workspace's, which the shim, moat-vmm and the agent share.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `kernel`: the guest kernel exists and has a PVH entry.
pub fn kernel(path: &Path) -> Finding {
    match read_kernel(path) {
        Ok(k) => Finding::ok(
            "kernel",
            format!(
                "{}: PVH entry {:#x}; {}",
                path.display(),
                k.pvh_entry,
                k.linux_version
                    .as_deref()
                    .unwrap_or("no `Linux version` banner found")
            ),
        ),
        Err(e) => {
            let hint = match e {
                ImageError::Absent(_) | ImageError::Read { .. } => {
                    "build it (guest-kernel/build.sh guest) and install it there \
                     (runtime/install.sh), or set [vm] kernel"
                }
                ImageError::NoPvhNote(_) => {
                    "build the kernel with CONFIG_PVH=y (guest-kernel/build.sh guest does)"
                }
                _ => "[vm] kernel must be an uncompressed vmlinux ELF, not a bzImage",
            };
            Finding::fail("kernel", e.to_string(), hint)
        }
    }
}

/// `initramfs`: the guest initramfs exists, is a newc cpio with an `init`, and that agent is
/// of this tool's version.
pub fn initramfs(path: &Path) -> Finding {
    const BUILD: &str = "agent/build-image.sh builds it, runtime/install.sh installs it \
                         (or set [vm] initrd)";
    let image = match read_initramfs(path) {
        Ok(image) => image,
        Err(e) => return Finding::fail("initramfs", e.to_string(), BUILD),
    };
    let what = match image.compression {
        Compression::Gzip => "gzip'd newc cpio",
        Compression::None => "newc cpio (uncompressed)",
    };
    let Some(init) = image.init else {
        return Finding::fail(
            "initramfs",
            format!(
                "{}: {what} without an `init` entry: the guest has no agent to run",
                path.display()
            ),
            BUILD,
        );
    };
    if !init.is_executable_file() {
        return Finding::fail(
            "initramfs",
            format!(
                "{}: its `init` is not an executable file (mode {:o})",
                path.display(),
                init.mode
            ),
            BUILD,
        );
    }
    let detail = format!("{}: {what}, init {} bytes", path.display(), init.size);
    match init.agent_version.as_deref() {
        Some(TOOL_VERSION) => {
            Finding::ok("initramfs", format!("{detail}, moat-agent {TOOL_VERSION}"))
        }
        Some(other) => Finding::warn(
            "initramfs",
            format!("{detail}: moat-agent {other}, this tool is {TOOL_VERSION}"),
            format!("install the initramfs of moat {TOOL_VERSION}: {BUILD}"),
        ),
        None => Finding::warn(
            "initramfs",
            format!("{detail}: no MOAT_AGENT_VERSION marker: an agent image older than this tool"),
            format!("rebuild it: {BUILD}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{
        agent_with_marker, gzip, initramfs as image, pvh_elf, Cpio, ElfNote,
    };
    use crate::check::Status;

    fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join("image");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn kernel_faults_fail() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = kernel(&dir.path().join("vmlinux"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.ends_with("vmlinux: absent") && f.hint.unwrap().contains("build.sh"));
        let f = kernel(&write(&dir, b"MZ a bzImage"));
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("not a 64-bit little-endian ELF")
                && f.hint.unwrap().contains("bzImage")
        );
        let f = kernel(&write(&dir, &pvh_elf(ElfNote::OtherOwner, Some("6.1.0 x"))));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("no PVH entry note"), "{f:?}");
        assert!(f.hint.unwrap().contains("CONFIG_PVH"));
    }

    #[test]
    fn a_pvh_kernel_is_ok_with_its_version() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = kernel(&write(
            &dir,
            &pvh_elf(ElfNote::Pvh, Some("6.12.9 (b@h) #1")),
        ));
        assert_eq!(f.status, Status::Ok);
        assert!(
            f.detail
                .ends_with("PVH entry 0x1000000; Linux version 6.12.9 (b@h) #1"),
            "{f:?}"
        );
    }

    #[test]
    fn initramfs_faults_fail() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = initramfs(&dir.path().join("agent.cpio.gz"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.ends_with("agent.cpio.gz: absent"), "{f:?}");
        let f = initramfs(&write(&dir, &gzip(b"not a cpio at all, but long enough")));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not a gzip'd newc cpio"), "{f:?}");
        let no_init = gzip(&Cpio::default().dir("dev").file("sbin/init", b"x").finish());
        let f = initramfs(&write(&dir, &no_init));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("without an `init` entry"), "{f:?}");
        let dir_init = gzip(&Cpio::default().dir("init").finish());
        let f = initramfs(&write(&dir, &dir_init));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not an executable file"), "{f:?}");
    }

    #[test]
    fn the_agent_version_is_compared() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = initramfs(&write(&dir, &image(&agent_with_marker(TOOL_VERSION))));
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(
            f.detail.contains("gzip'd newc cpio")
                && f.detail.ends_with(&format!("moat-agent {TOOL_VERSION}"))
        );
        let f = initramfs(&write(&dir, &image(&agent_with_marker("0.0.1"))));
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("moat-agent 0.0.1, this tool is"), "{f:?}");
        let f = initramfs(&write(&dir, &image(b"\x7fELF an old agent")));
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail.contains("an agent image older than this tool"),
            "{f:?}"
        );
    }
}
