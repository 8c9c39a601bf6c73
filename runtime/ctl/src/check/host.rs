//! Where `moat check` and `moat env` look: every host path they read, in one [`Host`]
//! ([`Host::real`] for this machine; the tests point one at a temporary directory), and the
//! lookups of moat's binaries and configuration file that both commands share.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use moat_runtime::config::{Config, ConfigError};

/// The shim's binary name, as containerd derives it from `io.containerd.moat.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-moat-v2";
/// containerd's configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The host paths the checks read.
#[derive(Debug, Clone)]
pub struct Host {
    /// The KVM device (`/dev/kvm`).
    pub dev_kvm: PathBuf,
    /// The TUN/TAP device (`/dev/net/tun`).
    pub dev_tun: PathBuf,
    /// Loaded kernel modules (`/sys/module`): `kvm_pvm` marks a PVM host.
    pub sys_module: PathBuf,
    /// `/proc/cpuinfo` (vmx / svm flags).
    pub proc_cpuinfo: PathBuf,
    /// `/proc/meminfo` (`MemTotal`).
    pub proc_meminfo: PathBuf,
    /// The cgroup root (`/sys/fs/cgroup`).
    pub sys_fs_cgroup: PathBuf,
    /// The mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// containerd's configuration file.
    pub containerd_config: PathBuf,
    /// The directories searched for binaries (`$PATH`'s value).
    pub path: OsString,
    /// This tool's own binary (a shim beside it is found too: a build directory).
    pub self_exe: Option<PathBuf>,
}

impl Host {
    /// This machine.
    pub fn real() -> Host {
        Host {
            dev_kvm: "/dev/kvm".into(),
            dev_tun: "/dev/net/tun".into(),
            sys_module: "/sys/module".into(),
            proc_cpuinfo: "/proc/cpuinfo".into(),
            proc_meminfo: "/proc/meminfo".into(),
            sys_fs_cgroup: moat_runtime::host::cgroup::CGROUP_ROOT.into(),
            mountinfo: "/proc/self/mountinfo".into(),
            containerd_config: CONTAINERD_CONFIG.into(),
            path: std::env::var_os("PATH")
                .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            self_exe: std::env::current_exe().ok(),
        }
    }

    /// `name` as the host runs it: a path as is, a bare name from [`Host::path`]; `None`
    /// when no executable file of that name is there.
    pub fn which(&self, name: &Path) -> Option<PathBuf> {
        if name.components().count() > 1 || name.is_absolute() {
            return is_executable(name).then(|| name.to_path_buf());
        }
        std::env::split_paths(&self.path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    }

    /// The shim binary: on the search path (what containerd runs), else beside this tool.
    pub fn shim(&self) -> Option<PathBuf> {
        self.which(Path::new(SHIM_BINARY)).or_else(|| {
            self.self_exe
                .as_deref()
                .and_then(Path::parent)
                .map(|d| d.join(SHIM_BINARY))
                .filter(|p| is_executable(p))
        })
    }

    /// The VMM binary the shim runs for `config` ([`Config::vmm_binary`]), looked up as the
    /// shim would; `Err` with the name looked for when there is none.
    pub fn vmm(&self, config: &Config) -> Result<PathBuf, PathBuf> {
        let name = config.vmm_binary(self.shim().as_deref());
        self.which(&name).ok_or(name)
    }
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The configuration as the shim resolves it ([`Config::resolve`]), and which file it read.
pub struct Resolved {
    /// The file read; `None`: the built-in defaults.
    pub path: Option<PathBuf>,
    /// The configuration, or why the file is unusable.
    pub config: Result<Config, ConfigError>,
}

impl Resolved {
    /// Resolves as the shim does: `explicit` (`--config`, which also takes `$MOAT_CONFIG`),
    /// else `$MOAT_CONFIG`, else `/etc/moat/configuration.toml` if it exists, else the defaults.
    pub fn new(explicit: Option<&Path>) -> Resolved {
        let path = Config::source(explicit);
        let config = Config::resolve(explicit).and_then(|c| {
            let shown = path.as_deref().unwrap_or(Path::new("<defaults>"));
            c.validate(shown).map(|()| c)
        });
        Resolved { path, config }
    }

    /// The file read, for people: its path, or that there is none.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "none: built-in defaults".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{temp_host, write_file};

    #[test]
    fn binaries_are_found_on_the_path_then_beside_this_tool() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut host = temp_host(&dir);
        let bin = dir.path().join("bin");
        assert_eq!(host.shim(), None);
        std::fs::create_dir(dir.path().join("build")).unwrap();
        let beside = write_file(
            &dir.path().join("build"),
            SHIM_BINARY,
            b"#!/bin/sh\n",
            0o755,
        );
        host.self_exe = Some(dir.path().join("build/moat"));
        assert_eq!(host.shim(), Some(beside.clone()));
        // moat-vmm beside the shim, as the shim looks for it.
        let vmm = write_file(&dir.path().join("build"), "moat-vmm", b"#!/bin/sh\n", 0o755);
        assert_eq!(host.vmm(&Config::default()), Ok(vmm));
        let on_path = write_file(&bin, SHIM_BINARY, b"#!/bin/sh\n", 0o755);
        assert_eq!(host.shim(), Some(on_path));
        // Not executable: not found.
        write_file(&bin, "tool", b"", 0o644);
        assert_eq!(host.which(Path::new("tool")), None);
        assert_eq!(host.which(&bin.join("tool")), None);
    }

    #[test]
    fn a_missing_vmm_names_what_was_looked_for() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        assert_eq!(host.vmm(&Config::default()), Err(PathBuf::from("moat-vmm")));
        let mut cfg = Config::default();
        cfg.vm.vmm = "/opt/none/moat-vmm".into();
        assert_eq!(host.vmm(&cfg), Err(PathBuf::from("/opt/none/moat-vmm")));
    }

    #[test]
    fn resolved_names_the_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = write_file(dir.path(), "moat.toml", b"[vm]\nvcpus = 2\n", 0o644);
        let r = Resolved::new(Some(&file));
        assert_eq!(r.path.as_deref(), Some(file.as_path()));
        assert_eq!(r.config.as_ref().unwrap().vm.vcpus, 2);
        assert_eq!(r.describe(), file.display().to_string());
    }
}
