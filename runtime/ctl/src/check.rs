//! `moat check`: whether this host can run moat pods, one line per requirement — `OK`,
//! `FAIL` (a hard requirement is not met: exit status 1) or `WARN` (moat runs, with less),
//! each FAIL and WARN with what to do.
//!
//! Every check reads the host through a [`Host`] of paths ([`Host::real`] here; the tests
//! point one at a temporary directory) and the configuration the shim would use.

pub mod cgroup;
pub mod containerd;
pub mod guest;
pub mod host;
pub mod image;
pub mod kvm;
pub mod probe;
pub mod setup;
pub mod system;
#[cfg(test)]
pub mod testing;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::Globals;
use host::{Host, Resolved};

/// `moat check`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// containerd's configuration file, checked for a moat runtime
    /// (default: /etc/containerd/config.toml).
    #[arg(long, value_name = "PATH")]
    pub containerd_config: Option<PathBuf>,
}

/// How a requirement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Met.
    Ok,
    /// A hard requirement is not met: moat pods cannot run.
    Fail,
    /// moat runs, with less (or something could not be checked).
    Warn,
}

/// One requirement's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The requirement (a stable name for scripts).
    pub name: &'static str,
    /// How it stands.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (FAIL and WARN).
    pub hint: Option<String>,
}

impl Finding {
    /// A met requirement.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    /// A hard requirement not met, and what to do.
    pub fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            name,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    /// A soft requirement not met (or not checkable), and what to do.
    pub fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            name,
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Runs `moat check`.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<ExitCode> {
    let mut host = Host::real();
    if let Some(path) = args.containerd_config {
        host.containerd_config = path;
    }
    let findings = run_checks(&host, g.config.as_deref());
    if g.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    Ok(exit_code(&findings))
}

/// Every check on `host` with the configuration `config` names (or the shim's lookup).
pub fn run_checks(host: &Host, config: Option<&Path>) -> Vec<Finding> {
    let (config_finding, cfg) = setup::config(&Resolved::new(config));
    let mut findings = vec![config_finding];
    findings.extend(kvm::checks(host, &cfg.vm));
    findings.push(system::memory(host, &cfg.vm));
    findings.push(system::tun(host));
    findings.push(cgroup::cgroup(host));
    findings.push(guest::kernel(&cfg.vm.kernel));
    findings.push(guest::initramfs(&cfg.vm.initrd));
    findings.push(setup::vmm(host, &cfg));
    findings.push(setup::shim(host));
    findings.extend(containerd::checks(host));
    findings.push(setup::state_dir(&cfg.runtime.state_dir));
    findings
}

/// 1 when a hard requirement failed, else 0.
pub fn exit_code(findings: &[Finding]) -> ExitCode {
    match findings.iter().any(|f| f.status == Status::Fail) {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    }
}

/// The findings for people: `STATUS name  detail; hint`, one line each (a hint's snippet on
/// indented lines below), then a summary.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        let status = match f.status {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
        };
        out += &format!("{status:<4} {:<width$}  {}", f.name, f.detail);
        if let Some(hint) = &f.hint {
            let mut lines = hint.lines();
            out += &format!("; {}", lines.next().unwrap_or_default());
            for line in lines {
                out += &format!("\n{:indent$}{line}", "", indent = width + 7);
            }
        }
        out.push('\n');
    }
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let (fails, warns) = (count(Status::Fail), count(Status::Warn));
    out += &match fails {
        0 => format!("this host can run moat pods ({warns} warnings)\n"),
        _ => format!("this host cannot run moat pods: {fails} failed, {warns} warnings\n"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use testing::{agent_with_marker, initramfs, pvh_elf, temp_host, write_file, ElfNote};

    #[test]
    fn rendering_and_exit_status() {
        let findings = vec![
            Finding::ok("kvm", "/dev/kvm: fine"),
            Finding::fail("virtualization", "this /dev/kvm is PVM", "run elsewhere"),
            Finding::warn("containerd-config", "no runtime", "add:\n[a]\n  b = 1"),
        ];
        let text = render(&findings);
        assert_eq!(
            text,
            "OK   kvm                /dev/kvm: fine\n\
             FAIL virtualization     this /dev/kvm is PVM; run elsewhere\n\
             WARN containerd-config  no runtime; add:\n\
             \x20                       [a]\n\
             \x20                         b = 1\n\
             this host cannot run moat pods: 1 failed, 1 warnings\n"
        );
        assert_eq!(exit_code(&findings), ExitCode::from(1));
        assert_eq!(exit_code(&findings[..1]), ExitCode::SUCCESS);
        let json = serde_json::to_value(&findings).unwrap();
        assert_eq!(json[1]["status"], "FAIL");
        assert_eq!(json[0]["hint"], serde_json::Value::Null);
        assert_eq!(json[2]["name"], "containerd-config");
    }

    /// A whole run on a temporary host: every line is there once, in order; the faults of
    /// the temporary host (no devices, no cgroups) fail, the good images pass.
    #[test]
    fn a_whole_run() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let kernel = write_file(
            dir.path(),
            "vmlinux",
            &pvh_elf(ElfNote::Pvh, Some("6.1.2 x")),
            0o644,
        );
        let image = initramfs(&agent_with_marker(guest::TOOL_VERSION));
        let initrd = write_file(dir.path(), "agent.cpio.gz", &image, 0o644);
        let config = format!(
            "[vm]\nkernel = {kernel:?}\ninitrd = {initrd:?}\n[runtime]\nstate_dir = {:?}\n",
            dir.path().join("state")
        );
        let config = write_file(dir.path(), "moat.toml", config.as_bytes(), 0o644);
        let findings = run_checks(&host, Some(&config));
        let names: Vec<&str> = findings.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "config",
                "kvm",
                "virtualization",
                "vcpus",
                "memory",
                "tun",
                "cgroup",
                "kernel",
                "initramfs",
                "vmm",
                "shim",
                "containerd",
                "containerd-config",
                "state-dir"
            ]
        );
        let status = |name| findings.iter().find(|f| f.name == name).unwrap().status;
        for ok in ["config", "kernel", "initramfs", "state-dir"] {
            assert_eq!(status(ok), Status::Ok, "{ok}: {findings:?}");
        }
        for fail in ["kvm", "tun", "cgroup", "vmm"] {
            assert_eq!(status(fail), Status::Fail, "{fail}: {findings:?}");
        }
        assert_eq!(exit_code(&findings), ExitCode::from(1));
    }
}
