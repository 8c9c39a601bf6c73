//! moat's own installation: its configuration (`config`), the VMM (`vmm`) and shim (`shim`)
//! binaries, and its state directory (`state-dir`).

use std::path::Path;

use moat_runtime::config::Config;

use super::host::{Host, Resolved, SHIM_BINARY};
use super::probe::version_of;
use super::Finding;

/// `config`: the configuration resolves and validates; the configuration the other checks
/// use (the built-in defaults when it does not).
pub fn config(resolved: &Resolved) -> (Finding, Config) {
    match &resolved.config {
        Ok(c) => (Finding::ok("config", resolved.describe()), c.clone()),
        Err(e) => (
            Finding::fail(
                "config",
                e.to_string(),
                "fix the field it names (runtime/README.md, \"Configuration\"); the other \
                 checks used the built-in defaults",
            ),
            Config::default(),
        ),
    }
}

/// `vmm`: the VMM the shim runs for `config` exists, is executable, and runs.
pub fn vmm(host: &Host, config: &Config) -> Finding {
    let path = match host.vmm(config) {
        Ok(path) => path,
        Err(name) => {
            return Finding::fail(
                "vmm",
                format!(
                    "{}: not found (or not executable){}",
                    name.display(),
                    if name.is_absolute() {
                        ""
                    } else {
                        " beside the shim or on $PATH"
                    }
                ),
                "install moat-vmm beside the shim (runtime/install.sh), or set [vm] vmm",
            )
        }
    };
    match version_of(&path) {
        Ok(v) => Finding::ok("vmm", format!("{}: {v}", path.display())),
        Err(e) => Finding::fail(
            "vmm",
            e.to_string(),
            "reinstall moat-vmm (runtime/install.sh), or set [vm] vmm",
        ),
    }
}

/// `shim`: containerd can find the shim (on `$PATH`; beside this tool is reported too).
pub fn shim(host: &Host) -> Finding {
    let hint = "install it on containerd's $PATH (runtime/install.sh), or name it in \
                containerd's runtime_path";
    match host.shim() {
        None => Finding::warn(
            "shim",
            format!("{SHIM_BINARY} is not on $PATH: containerd cannot start io.containerd.moat.v2"),
            hint,
        ),
        Some(path) => match version_of(&path) {
            Ok(v) => Finding::ok("shim", v),
            Err(e) => Finding::warn("shim", e.to_string(), hint),
        },
    }
}

/// `state-dir`: `dir` exists and this user can make a file in it, or it can be made (this
/// user can make a directory in its nearest existing ancestor). The probes (a file, or a
/// directory beside where `dir` would go) are removed again; `dir` itself is never made, so
/// that a shim making it at the same time is not disturbed.
pub fn state_dir(dir: &Path) -> Finding {
    match probe_dir(dir) {
        Ok(exists) => Finding::ok(
            "state-dir",
            format!(
                "{}: {}",
                dir.display(),
                if exists {
                    "exists, writable"
                } else {
                    "can be created"
                }
            ),
        ),
        Err(why) => Finding::fail(
            "state-dir",
            format!("{}: {why}", dir.display()),
            "run the shim as root, or set [runtime] state_dir to a directory it can write",
        ),
    }
}

/// Probes `dir` (see [`state_dir`]); whether it exists.
fn probe_dir(dir: &Path) -> Result<bool, String> {
    let probe_name = format!(".moat-check-{}", std::process::id());
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return Err("not an absolute path".into());
    };
    if !existing.is_dir() {
        return Err(format!(
            "cannot create: {} is not a directory",
            existing.display()
        ));
    }
    if existing == dir {
        let probe = dir.join(probe_name);
        std::fs::write(&probe, b"probe")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot write {}: {e}", probe.display()))?;
        return Ok(true);
    }
    let probe = existing.join(probe_name);
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::remove_dir(&probe))
        .map_err(|e| format!("cannot create (in {}): {e}", existing.display()))?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{temp_host, write_file};
    use crate::check::Status;

    #[test]
    fn a_bad_config_fails_naming_the_field() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = write_file(dir.path(), "moat.toml", b"[vm]\nvcpus = 0\n", 0o644);
        let (f, used) = config(&Resolved::new(Some(&file)));
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("vm.vcpus") && f.detail.contains("moat.toml"),
            "{f:?}"
        );
        assert_eq!(used, Config::default());
        let (f, _) = config(&Resolved::new(Some(&dir.path().join("absent.toml"))));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("absent.toml: cannot read"), "{f:?}");
        let file = write_file(dir.path(), "ok.toml", b"[vm]\nvcpus = 2\n", 0o644);
        let (f, used) = config(&Resolved::new(Some(&file)));
        assert_eq!((f.status, used.vm.vcpus), (Status::Ok, 2));
    }

    #[test]
    fn a_missing_broken_or_unexecutable_vmm_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let mut cfg = Config::default();
        let f = vmm(&host, &cfg);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("moat-vmm: not found") && f.detail.contains("$PATH"),
            "{f:?}"
        );
        cfg.vm.vmm = write_file(dir.path(), "vmm-noexec", b"#!/bin/sh\n", 0o644);
        let f = vmm(&host, &cfg);
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.detail.contains("not executable"), "{f:?}");
        cfg.vm.vmm = write_file(dir.path(), "vmm-broken", b"#!/bin/sh\nexit 1\n", 0o755);
        let f = vmm(&host, &cfg);
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.detail.contains("--version: exit status: 1"), "{f:?}");
        // On the host's path, as the shim finds it.
        write_file(
            &dir.path().join("bin"),
            "moat-vmm",
            b"#!/bin/sh\necho moat-vmm 9.9\n",
            0o755,
        );
        let f = vmm(&host, &Config::default());
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.detail.ends_with("bin/moat-vmm: moat-vmm 9.9"), "{f:?}");
    }

    #[test]
    fn the_shim_is_reported() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        assert_eq!(shim(&host).status, Status::Warn);
        write_file(
            &dir.path().join("bin"),
            SHIM_BINARY,
            b"#!/bin/sh\nprintf 'shim:\\n  Version: 9.9\\n'\n",
            0o755,
        );
        let f = shim(&host);
        assert_eq!(
            (f.status, f.detail.as_str()),
            (Status::Ok, "shim: Version: 9.9")
        );
    }

    #[test]
    fn an_unwritable_state_dir_fails() {
        let dir = tempfile::TempDir::new().unwrap();
        // Below a regular file: neither root nor anyone can make it.
        let file = write_file(dir.path(), "file", b"", 0o644);
        let f = state_dir(&file.join("state"));
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("cannot create: ") && f.detail.ends_with("file is not a directory"),
            "{f:?}"
        );
        // A regular file as the state dir itself.
        let f = state_dir(&file);
        assert_eq!(f.status, Status::Fail, "{f:?}");
        // Nowhere to make it: /proc takes no new directory, root's neither.
        let f = state_dir(Path::new("/proc/moat-state"));
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.detail.contains("cannot create (in /proc)"), "{f:?}");
        // A directory no one may make files in, root included.
        let f = state_dir(Path::new("/proc"));
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.detail.contains("cannot write /proc/.moat-check-"),
            "{f:?}"
        );
        // Read-only for its owner (root writes anyway: that case needs a user).
        if is_root() {
            eprintln!("as root a mode-0500 directory is writable: that case is not checked");
        } else {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
            let f = state_dir(&ro);
            assert_eq!(f.status, Status::Fail);
            assert!(f.detail.contains("cannot write"), "{f:?}");
        }
    }

    #[test]
    fn a_state_dir_is_probed_and_left_as_it_was() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = state_dir(dir.path());
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.ends_with(": exists, writable"), "{f:?}");
        let f = state_dir(&dir.path().join("a/b/moat"));
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.ends_with(": can be created"), "{f:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
