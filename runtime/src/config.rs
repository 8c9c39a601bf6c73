//! The shim's TOML configuration: which VMM, kernel and initramfs boot a pod, how big the VM
//! is, where pod state lives and what is logged.
//!
//! Looked up in this order: the `ConfigPath` runtime option containerd passes (CRI
//! `options.ConfigPath`, `ctr run --runtime-config-path`), `$MOAT_CONFIG`, then
//! [`DEFAULT_CONFIG_PATH`]; when none of them names an existing file the built-in defaults
//! apply. Unknown keys and out-of-range values are errors that name the field.

use std::path::{Path, PathBuf};

use moat_vmm_config::{
    check_extra_cmdline, check_memory_mib, check_vcpus, ConfigError as VmmConfigError,
};
use serde::{Deserialize, Serialize};

use crate::host::share::ShareLimits;

pub mod options;

/// The configuration file read when no other is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moat/configuration.toml";

/// The environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "MOAT_CONFIG";

/// Where pod state (sockets, the virtio-fs share, mounts) lives by default.
pub const DEFAULT_STATE_DIR: &str = "/run/moat";

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("moat config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("moat config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A value is out of range or otherwise unusable.
    #[error("moat config {path}: field `{field}`: {why}")]
    Invalid {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// The dotted field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How each pod's microVM is built.
    pub vm: PodVmConfig,
    /// The shim itself.
    pub runtime: RuntimeConfig,
    /// What containers get beyond their spec.
    pub container: ContainerConfig,
    /// Debugging switches that weaken isolation; never for production.
    pub debug: DebugConfig,
}

/// `[debug]`: switches for debugging moat itself, each logged as a warning when on.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Run moat-vmm without its seccomp filters.
    pub no_seccomp: bool,
    /// Run moat-vmm without its jail (host namespaces and root; credentials still cut).
    pub no_jail: bool,
    /// Start pods with the guest's debug console (`moat exec`): the agent listens on its
    /// vsock port and the host's busybox is bound read-only into the pod's share.
    pub console: bool,
    /// The static busybox the debug console runs (bound into pods started with `console`).
    pub console_busybox: PathBuf,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            no_seccomp: false,
            no_jail: false,
            console: false,
            console_busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

impl DebugConfig {
    /// Checks `[debug]`.
    fn check(&self) -> Result<(), FieldError> {
        if !self.console_busybox.is_absolute() {
            return Err(bad(
                "debug.console_busybox",
                format!("{} is not an absolute path", self.console_busybox.display()),
            ));
        }
        Ok(())
    }
}

/// `[container]`: what the guest gives containers beyond their OCI spec.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    /// Give a container whose spec has no `linux.seccomp` (CRI's `Unconfined`, Docker's
    /// `seccomp=unconfined`) moat's default seccomp profile. Off (the default), such a
    /// container runs unfiltered, as the spec says and runc does: the VM is the boundary.
    pub default_seccomp: bool,
}

/// `[vm]`: the microVM of a pod.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PodVmConfig {
    /// The `moat-vmm` binary; empty: `moat-vmm` beside the shim binary, else on `$PATH`.
    pub vmm: PathBuf,
    /// The guest kernel (vmlinux, PVH ELF).
    pub kernel: PathBuf,
    /// The guest initramfs holding moat-agent.
    pub initrd: PathBuf,
    /// vCPUs of each pod VM.
    pub vcpus: u32,
    /// Guest memory of each pod VM, MiB.
    pub memory_mib: u64,
    /// Extra kernel command-line parameters.
    pub kernel_params: String,
    /// How long to wait for the agent to answer after the VMM starts, seconds.
    pub boot_timeout_secs: u64,
    /// The most vCPUs a pod's VM may get from annotations and CRI pod limits
    /// (see [`crate::host::sizing`]); unset: [`DEFAULT_MAX_VCPUS`] or `vcpus` if larger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// The most guest memory a pod's VM may get from annotations and CRI pod limits, MiB;
    /// unset: [`DEFAULT_MAX_MEMORY_MIB`] or `memory_mib` if larger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Whether the pod annotations `moat.vm.vcpus` / `moat.vm.memory_mib` may size the VM
    /// (within the maxima and the pod's own limits, see [`crate::host::sizing`]); when off
    /// (the default: a pod author is not trusted) they are refused.
    pub enable_annotations: bool,
}

impl Default for PodVmConfig {
    fn default() -> Self {
        PodVmConfig {
            vmm: PathBuf::new(),
            kernel: PathBuf::from("/usr/share/moat/vmlinux"),
            initrd: PathBuf::from("/usr/share/moat/moat-agent.cpio.gz"),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            boot_timeout_secs: 120,
            max_vcpus: None,
            max_memory_mib: None,
            enable_annotations: false,
        }
    }
}

/// The default of `[vm] max_vcpus`.
pub const DEFAULT_MAX_VCPUS: u32 = 8;
/// The default of `[vm] max_memory_mib`.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 8192;

impl PodVmConfig {
    /// The effective `max_vcpus`.
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus.unwrap_or(DEFAULT_MAX_VCPUS.max(self.vcpus))
    }

    /// The effective `max_memory_mib`.
    pub fn max_memory_mib(&self) -> u64 {
        self.max_memory_mib
            .unwrap_or(DEFAULT_MAX_MEMORY_MIB.max(self.memory_mib))
    }
}

/// `[runtime]`: the shim.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Root of per-pod state: `<state_dir>/<namespace>/<pod id>/`.
    pub state_dir: PathBuf,
    /// Shim log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// moat-vmm's log level (its `--log-level`), same values.
    pub vmm_log_level: String,
    /// The guest agent's log level (`moat.log=` on the guest's command line), same values.
    pub agent_log_level: String,
    /// Forward the guest's console (kernel and agent logs) to containerd's log.
    pub guest_console: bool,
    /// The guest console also goes to `<pod dir>/console.log`, at most this many KiB, then
    /// rotated to `console.log.1` (one old file kept); 0: no file. Removed with the pod.
    pub console_log_kib: u64,
    /// Size of each pod's staging tmpfs (its share's mount points), KiB.
    pub share_size_kib: u64,
    /// Inodes of each pod's staging tmpfs: bounds its containers' directories and mount
    /// points (about 3 + one per volume for each container).
    pub share_inodes: u64,
    /// Run each pod's moat-vmm in the host cgroup its sandbox (or lone) container names
    /// (`linux.cgroupsPath`), as Kata's `sandbox_cgroup_only`, so the pod's limits and the
    /// node's accounting cover the VM (see [`crate::host::cgroup`]); off: it runs in the
    /// shim's cgroup.
    pub sandbox_cgroup: bool,
    /// Serve CRI `PortForward` (`kubectl port-forward`) into pods: in each pod's network
    /// namespace on the host, TCP connections to `127.0.0.1` are redirected (an iptables
    /// `nat OUTPUT REDIRECT` rule; needs `iptables`) to the shim, which carries them to the
    /// port on the guest's loopback (see [`crate::host::port_forward`]).
    pub port_forward: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_level: "info".into(),
            vmm_log_level: "warn".into(),
            agent_log_level: "info".into(),
            guest_console: true,
            console_log_kib: 1024,
            share_size_kib: 1024,
            share_inodes: 16384,
            sandbox_cgroup: true,
            port_forward: true,
        }
    }
}

impl Config {
    /// The configuration as a TOML file's text (what [`Config::parse`] reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration always serialises to TOML")
    }

    /// Parses and checks `text` read from `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line_no = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!("line {line_no} (`{line}`): {}", e.message())
                }
                None => e.message().to_string(),
            },
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The configuration a shim uses: `explicit` (containerd's `ConfigPath` option) if given,
    /// else `$MOAT_CONFIG`, else [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults.
    /// A named file that is missing is an error; only the default path may be absent.
    pub fn resolve(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = Config::source(explicit) {
            return Config::load(&p);
        }
        let cfg = Config::default();
        cfg.validate(Path::new("<defaults>"))?;
        Ok(cfg)
    }

    /// The file [`Config::resolve`] reads for `explicit`, in its order; `None`: the
    /// built-in defaults.
    pub fn source(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists())
    }

    /// Checks ranges and path shapes; names the first bad field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.vm
            .check()
            .and_then(|_| self.runtime.check())
            .and_then(|_| self.debug.check())
            .map_err(|(field, why)| ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                why,
            })
    }

    /// The VMM binary to run: `vm.vmm`, else `moat-vmm` beside `shim_exe`, else `moat-vmm`
    /// (looked up on `$PATH` when spawned).
    pub fn vmm_binary(&self, shim_exe: Option<&Path>) -> PathBuf {
        if !self.vm.vmm.as_os_str().is_empty() {
            return self.vm.vmm.clone();
        }
        if let Some(beside) = shim_exe
            .and_then(Path::parent)
            .map(|d| d.join("moat-vmm"))
            .filter(|p| p.is_file())
        {
            return beside;
        }
        PathBuf::from("moat-vmm")
    }
}

/// A bad field of the configuration: its dotted name and what is wrong.
type FieldError = (&'static str, String);

fn bad(field: &'static str, why: String) -> FieldError {
    (field, why)
}

impl PodVmConfig {
    /// Checks `[vm]`; sizes by moat-vmm's own rules (the one place they are defined).
    fn check(&self) -> Result<(), FieldError> {
        let vm = self;
        let vmm_rule =
            |field, r: Result<(), VmmConfigError>| r.map_err(|e| bad(field, e.to_string()));
        vmm_rule("vm.vcpus", check_vcpus(vm.vcpus.into()))?;
        vmm_rule("vm.memory_mib", check_memory_mib(vm.memory_mib))?;
        vmm_rule("vm.max_vcpus", check_vcpus(vm.max_vcpus().into()))?;
        vmm_rule("vm.max_memory_mib", check_memory_mib(vm.max_memory_mib()))?;
        vmm_rule("vm.kernel_params", check_extra_cmdline(&vm.kernel_params))?;
        if vm.max_vcpus() < vm.vcpus {
            return Err(bad(
                "vm.max_vcpus",
                format!("{} is less than vm.vcpus ({})", vm.max_vcpus(), vm.vcpus),
            ));
        }
        if vm.max_memory_mib() < vm.memory_mib {
            return Err(bad(
                "vm.max_memory_mib",
                format!(
                    "{} is less than vm.memory_mib ({})",
                    vm.max_memory_mib(),
                    vm.memory_mib
                ),
            ));
        }
        if vm.boot_timeout_secs == 0 || vm.boot_timeout_secs > 3600 {
            return Err(bad(
                "vm.boot_timeout_secs",
                format!("{} is not in 1..=3600", vm.boot_timeout_secs),
            ));
        }
        for (field, p) in [("vm.kernel", &vm.kernel), ("vm.initrd", &vm.initrd)] {
            if !p.is_absolute() {
                return Err(bad(
                    field,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if !vm.vmm.as_os_str().is_empty() && !vm.vmm.is_absolute() {
            return Err(bad(
                "vm.vmm",
                format!("{} is not an absolute path", vm.vmm.display()),
            ));
        }
        if vm.kernel_params.contains('\n') {
            return Err(bad("vm.kernel_params", "contains a newline".into()));
        }
        Ok(())
    }
}

impl RuntimeConfig {
    /// Checks `[runtime]`.
    fn check(&self) -> Result<(), FieldError> {
        if !self.state_dir.is_absolute() {
            return Err(bad(
                "runtime.state_dir",
                format!("{} is not an absolute path", self.state_dir.display()),
            ));
        }
        check_level("runtime.log_level", &self.log_level)?;
        check_level("runtime.vmm_log_level", &self.vmm_log_level)?;
        check_level("runtime.agent_log_level", &self.agent_log_level)?;
        check_range("runtime.console_log_kib", self.console_log_kib, 0..=1 << 20)?;
        check_range("runtime.share_size_kib", self.share_size_kib, 64..=1 << 20)?;
        check_range("runtime.share_inodes", self.share_inodes, 64..=1 << 20)?;
        Ok(())
    }

    /// `log_level` as the shim's log filter (a checked level; `info` otherwise).
    pub fn log_filter(&self) -> log::LevelFilter {
        self.log_level.parse().unwrap_or(log::LevelFilter::Info)
    }

    /// The bounds of a pod's staging tmpfs.
    pub fn share_limits(&self) -> ShareLimits {
        ShareLimits {
            size_kib: self.share_size_kib,
            inodes: self.share_inodes,
        }
    }
}

/// `level` is a log level: error, warn, info, debug or trace.
fn check_level(field: &'static str, level: &str) -> Result<(), FieldError> {
    if ["error", "warn", "info", "debug", "trace"].contains(&level) {
        return Ok(());
    }
    Err(bad(
        field,
        format!("{level:?} is not one of error, warn, info, debug, trace"),
    ))
}

/// `value` of `field` within `range`.
fn check_range(
    field: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), FieldError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{value} is not in {}..={}", range.start(), range.end()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/moat/test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, Config::default());
        // Pod accounting is on, pod authors' sizing annotations are off.
        assert!(cfg.runtime.sandbox_cgroup && !cfg.vm.enable_annotations);
    }

    #[test]
    fn to_toml_round_trips() {
        let mut cfg = Config::default();
        cfg.vm.vcpus = 2;
        cfg.vm.max_memory_mib = Some(4096);
        cfg.runtime.guest_console = false;
        assert_eq!(parse(&cfg.to_toml()).unwrap(), cfg);
        assert_eq!(
            parse(&Config::default().to_toml()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn full_file_parses() {
        let cfg = parse(
            r#"
            [vm]
            vmm = "/opt/moat/moat-vmm"
            kernel = "/k"
            initrd = "/i"
            vcpus = 2
            memory_mib = 512
            kernel_params = "quiet"
            boot_timeout_secs = 30
            [runtime]
            state_dir = "/run/moat-test"
            log_level = "debug"
            guest_console = false
            sandbox_cgroup = false
            "#,
        )
        .unwrap();
        assert!(!cfg.runtime.sandbox_cgroup);
        assert_eq!(cfg.vm.vcpus, 2);
        assert_eq!(cfg.vm.memory_mib, 512);
        assert_eq!(cfg.runtime.state_dir, Path::new("/run/moat-test"));
        assert!(!cfg.runtime.guest_console);
        assert_eq!(cfg.vmm_binary(None), Path::new("/opt/moat/moat-vmm"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("[vm]\nvcpus = 0\n").unwrap_err().to_string();
        assert!(e.contains("vm.vcpus") && e.contains("test.toml"), "{e}");
        let e = parse("[vm]\nmemory_mib = 1\n").unwrap_err().to_string();
        assert!(e.contains("vm.memory_mib"), "{e}");
        let e = parse("[vm]\nkernel = \"rel/k\"\n").unwrap_err().to_string();
        assert!(e.contains("vm.kernel"), "{e}");
        let e = parse("[runtime]\nlog_level = \"loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.log_level"), "{e}");
        for (text, field) in [
            (
                "[runtime]\nvmm_log_level = \"x\"\n",
                "runtime.vmm_log_level",
            ),
            (
                "[runtime]\nagent_log_level = \"\"\n",
                "runtime.agent_log_level",
            ),
            (
                "[runtime]\nconsole_log_kib = 2000000\n",
                "runtime.console_log_kib",
            ),
            (
                "[debug]\nconsole_busybox = \"busybox\"\n",
                "debug.console_busybox",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let e = parse("[vm]\ncpus = 2\n").unwrap_err().to_string();
        assert!(e.contains("cpus"), "{e}");
        let e = parse("[vm]\nvcpus = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2 (`vcpus = \"two\"`)"), "{e}");
        let e = parse("[vm]\nvcpus = 4\nmax_vcpus = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.max_vcpus"), "{e}");
        let e = parse("[vm]\nmax_memory_mib = 100\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.max_memory_mib"), "{e}");
        let e = parse("[vm\n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn a_named_file_must_exist() {
        let e = Config::resolve(Some(Path::new("/nonexistent/moat.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/moat.toml"), "{e}");
    }
}
