//! `moat env`: the effective configuration — each value with where it came from (`file
//! PATH`, or `default`) — the configuration file used, and the versions of moat's parts
//! (this tool, the shim, moat-vmm, the agent in the initramfs, the guest kernel, containerd).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use moat_runtime::config::Config;
use serde::Serialize;

use crate::check::containerd;
use crate::check::guest::TOOL_VERSION;
use crate::check::host::{Host, Resolved};
use crate::check::image::{read_initramfs, read_kernel};
use crate::check::probe::version_of;
use crate::Globals;

/// `moat env`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// The sections of the configuration, in the order people read them.
const SECTIONS: [&str; 4] = ["vm", "runtime", "container", "debug"];

/// What `moat env` shows.
#[derive(Debug, Serialize)]
pub struct Env {
    /// The configuration file read; `None`: the built-in defaults.
    pub config_file: Option<String>,
    /// Every configuration value.
    pub settings: Vec<Setting>,
    /// The versions of moat's parts.
    pub versions: Vec<Version>,
}

/// One configuration value.
#[derive(Debug, Serialize, PartialEq)]
pub struct Setting {
    /// The dotted key (`vm.vcpus`).
    pub key: String,
    /// Its effective value.
    pub value: toml::Value,
    /// `file PATH` when the file sets it, else `default`.
    pub source: String,
}

/// The version of one of moat's parts.
#[derive(Debug, Serialize)]
pub struct Version {
    /// The part.
    pub name: &'static str,
    /// Its version, when known.
    pub version: Option<String>,
    /// Where it was read from (a binary, an image), or how it is known.
    pub from: Option<String>,
    /// Why the version is not known.
    pub error: Option<String>,
}

/// Runs `moat env`.
pub fn run(g: &Globals, _args: Args) -> anyhow::Result<ExitCode> {
    let env = gather(&Host::real(), g.config.as_deref())?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&env)?);
    } else {
        print!("{}", render(&env));
    }
    Ok(ExitCode::SUCCESS)
}

/// The environment on `host` with the configuration `config` names (or the shim's lookup).
pub fn gather(host: &Host, config: Option<&Path>) -> anyhow::Result<Env> {
    let resolved = Resolved::new(config);
    let cfg = match &resolved.config {
        Ok(cfg) => cfg,
        Err(e) => anyhow::bail!("{e} (moat check says more)"),
    };
    let file = match &resolved.path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("parsing {}", path.display()))?;
            Some((path.as_path(), table))
        }
        None => None,
    };
    Ok(Env {
        config_file: resolved.path.as_ref().map(|p| p.display().to_string()),
        settings: settings(cfg, file.as_ref().map(|(p, t)| (*p, t))),
        versions: versions(host, cfg),
    })
}

/// Every value of `cfg`, marked `file PATH` where `file` (its path and parsed text) sets it.
fn settings(cfg: &Config, file: Option<(&Path, &toml::Table)>) -> Vec<Setting> {
    let mut effective = toml::Table::try_from(cfg).expect("the configuration serialises to TOML");
    // Unset maxima are left out of the file form; show what they come to.
    if let Some(vm) = effective.get_mut("vm").and_then(toml::Value::as_table_mut) {
        vm.entry("max_vcpus")
            .or_insert_with(|| i64::from(cfg.vm.max_vcpus()).into());
        vm.entry("max_memory_mib")
            .or_insert_with(|| (cfg.vm.max_memory_mib() as i64).into());
    }
    let in_file = |section: &str, key: &str| {
        let (path, table) = file?;
        let set = table.get(section)?.as_table()?.contains_key(key);
        set.then(|| format!("file {}", path.display()))
    };
    let mut out = Vec::new();
    for section in SECTIONS {
        let Some(values) = effective.get(section).and_then(toml::Value::as_table) else {
            continue;
        };
        for (key, value) in values {
            out.push(Setting {
                key: format!("{section}.{key}"),
                value: value.clone(),
                source: in_file(section, key).unwrap_or_else(|| "default".into()),
            });
        }
    }
    out
}

/// The versions of this tool, the shim, moat-vmm, the agent, the guest kernel, containerd.
fn versions(host: &Host, cfg: &Config) -> Vec<Version> {
    let shim = match host.shim() {
        Some(path) => binary("shim", &path),
        None => Version::known(
            "shim",
            Some("this tool's build: containerd-shim-moat-v2 is not on $PATH".into()),
            Ok(TOOL_VERSION.into()),
        ),
    };
    let vmm = match host.vmm(cfg) {
        Ok(path) => binary("moat-vmm", &path),
        Err(name) => Version::known(
            "moat-vmm",
            None,
            Err(format!("{}: not found", name.display())),
        ),
    };
    let agent = read_initramfs(&cfg.vm.initrd)
        .map_err(|e| e.to_string())
        .and_then(|i| {
            i.init
                .and_then(|init| init.agent_version)
                .ok_or_else(|| "no MOAT_AGENT_VERSION marker in its init".to_string())
        });
    let kernel = read_kernel(&cfg.vm.kernel)
        .map_err(|e| e.to_string())
        .and_then(|k| {
            k.linux_version
                .ok_or_else(|| "no `Linux version` banner".to_string())
        });
    let this_tool = host.self_exe.as_deref().map(shown);
    vec![
        Version::known("moat", this_tool, Ok(TOOL_VERSION.into())),
        shim,
        vmm,
        Version::known("agent", Some(shown(&cfg.vm.initrd)), agent),
        Version::known("kernel", Some(shown(&cfg.vm.kernel)), kernel),
        Version::known("containerd", None, containerd::version(host)),
    ]
}

/// A binary's version: its `--version`.
fn binary(name: &'static str, path: &Path) -> Version {
    let version = version_of(path).map_err(|e| e.to_string());
    Version::known(name, Some(shown(path)), version)
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

impl Version {
    /// Part `name`'s version read from `from`, or why it is not known.
    fn known(name: &'static str, from: Option<String>, version: Result<String, String>) -> Version {
        let (version, error) = match version {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Version {
            name,
            version,
            from,
            error,
        }
    }
}

/// `env` for people.
fn render(env: &Env) -> String {
    let mut out = format!(
        "config file: {}\n",
        env.config_file
            .as_deref()
            .unwrap_or("none: built-in defaults")
    );
    let pair = |s: &Setting| {
        let key = s.key.split_once('.').map_or(s.key.as_str(), |(_, key)| key);
        format!("{key} = {}", s.value)
    };
    let width = env
        .settings
        .iter()
        .map(|s| pair(s).len())
        .max()
        .unwrap_or(0);
    let mut section = "";
    for s in &env.settings {
        let head = s.key.split_once('.').map_or("", |(head, _)| head);
        if head != section {
            section = head;
            out += &format!("\n[{head}]\n");
        }
        out += &format!("{:<width$}  # {}\n", pair(s), s.source);
    }
    out += "\nversions:\n";
    for v in &env.versions {
        // An error names its file already.
        let what = match (&v.version, &v.error, &v.from) {
            (Some(version), _, Some(from)) => format!("{version}  ({from})"),
            (Some(version), _, None) => version.clone(),
            (None, Some(e), _) => format!("unknown: {e}"),
            (None, None, _) => "unknown".into(),
        };
        out += &format!("  {:<11}{what}\n", v.name);
    }
    out
}

#[cfg(test)]
mod tests;
