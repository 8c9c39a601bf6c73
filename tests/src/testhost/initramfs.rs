//! Builds (and caches) the test host's L1 initramfs: a static busybox plus
//! the `/init` script in `l1_init.sh`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::TestHostError;
use crate::guest::cpio::{self, Archive};

/// The L1 `/init` script.
pub const INIT_SCRIPT: &str = include_str!("l1_init.sh");

/// Where the static busybox is taken from unless `MOAT_BUSYBOX` says otherwise.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Busybox applets `/init` uses; each becomes a `/bin` symlink.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "chmod", "cat", "echo", "env", "chroot", "mv", "sync", "reboot",
    "sleep", "ip", "hostname",
];

/// Returns the path of a gzip'd L1 initramfs for the current busybox and
/// init script, building it under `cache_dir` if it is not there yet.
///
/// The file name carries a hash of its inputs, so a stale cache is never
/// used and concurrent test processes share one file (written atomically).
pub fn l1_initramfs(cache_dir: &Path) -> Result<PathBuf, TestHostError> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref().filter(|p| p.exists()) {
        return Ok(p.clone());
    }
    let bb = busybox_bytes()?;
    let mut h = DefaultHasher::new();
    INIT_SCRIPT.hash(&mut h);
    bb.hash(&mut h);
    APPLETS.hash(&mut h);
    let path = cache_dir.join(format!("l1-initramfs-{:016x}.cpio.gz", h.finish()));
    if !path.exists() {
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| TestHostError::io(format!("creating {}", cache_dir.display()), e))?;
        archive(bb)
            .and_then(|a| a.write_gzip_file(&path))
            .map_err(|e| TestHostError::Initramfs(e.to_string()))?;
        prune_stale(cache_dir, &path);
    }
    *built = Some(path.clone());
    Ok(path)
}

/// Removes initramfs files of other (older) busybox/init versions.
fn prune_stale(cache_dir: &Path, keep: &Path) {
    let Ok(dir) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("l1-initramfs-") && name.ends_with(".cpio.gz") && e.path() != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The static busybox binary (`$MOAT_BUSYBOX`, else `/bin/busybox`).
pub fn busybox_bytes() -> Result<Vec<u8>, TestHostError> {
    let busybox = busybox_path();
    std::fs::read(&busybox).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TestHostError::BusyboxMissing {
                path: busybox.clone(),
            }
        } else {
            TestHostError::io(format!("reading {}", busybox.display()), e)
        }
    })
}

fn busybox_path() -> PathBuf {
    std::env::var_os("MOAT_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
}

fn archive(busybox: Vec<u8>) -> Result<Archive, cpio::CpioError> {
    let mut a = Archive::new();
    for d in ["bin", "dev", "proc", "sys", "moat", "host"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    a.file("init", 0o755, INIT_SCRIPT)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cpio::EntryKind;

    #[test]
    fn archive_has_init_and_busybox() {
        let a = archive(b"fake busybox".to_vec()).unwrap();
        let init = a.entries().iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.perm, 0o755);
        assert_eq!(init.kind, EntryKind::File(INIT_SCRIPT.as_bytes().to_vec()));
        let sh = a.entries().iter().find(|e| e.name == "bin/sh").unwrap();
        assert_eq!(sh.kind, EntryKind::Symlink("busybox".into()));
    }

    #[test]
    fn init_script_parses() {
        // `sh -n` only parses; it runs nothing.
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", INIT_SCRIPT])
            .status()
            .unwrap();
        assert!(st.success());
    }
}
