//! `moat check` and `moat env` as the real binary runs them on this machine.
//!
//! `check_fails_on_this_pvm_host` EXPECTS THE PVM HOST moat is developed on (its `/dev/kvm`
//! is PVM: `/sys/module/kvm_pvm` exists): there `moat check` must fail, naming PVM. On
//! another host it says so on stderr and checks only that no line claims PVM.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The PVM host's message: the finding's detail and hint, as the text line shows them.
const PVM_LINE: &str = "this /dev/kvm is PVM: ordinary Linux guests do not boot; \
                        run moat on hardware KVM, or in the test host (tests/)";

/// Runs the real `moat` with `args` (no `$MOAT_CONFIG` from the caller's environment).
fn moat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .env_remove("MOAT_CONFIG")
        .output()
        .expect("run moat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The finding `name` of `moat check --json` output.
fn finding<'a>(findings: &'a Value, name: &str) -> &'a Value {
    let list = findings.as_array().expect("an array of findings");
    list.iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {findings:#}"))
}

#[test]
fn check_fails_on_this_pvm_host() {
    let out = moat(&["check"]);
    let stdout = text(&out.stdout);
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "NOT THE PVM HOST: /sys/module/kvm_pvm is absent, so check_fails_on_this_pvm_host \
             only checks that no line claims PVM here\n{stdout}"
        );
        assert!(!stdout.contains("is PVM"), "{stdout}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains("PVM"))
        .unwrap_or_else(|| panic!("no line names PVM:\n{stdout}"));
    assert!(line.starts_with("FAIL virtualization"), "{line}");
    assert!(line.ends_with(PVM_LINE), "{line}");

    let out = moat(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let pvm = finding(&findings, "virtualization");
    assert_eq!(pvm["status"], "FAIL");
    assert_eq!(
        pvm["detail"],
        "this /dev/kvm is PVM: ordinary Linux guests do not boot"
    );
    assert_eq!(
        pvm["hint"],
        "run moat on hardware KVM, or in the test host (tests/)"
    );
}

#[test]
fn json_findings_have_one_shape() {
    let out = moat(&["check", "--json"]);
    let findings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut any_fail = false;
    for f in findings.as_array().unwrap() {
        let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "hint", "name", "status"], "{f}");
        let status = f["status"].as_str().unwrap();
        assert!(["OK", "FAIL", "WARN"].contains(&status), "{f}");
        assert_eq!(
            f["hint"].is_null(),
            status == "OK",
            "a hint for FAIL and WARN only: {f}"
        );
        any_fail |= status == "FAIL";
    }
    assert_eq!(out.status.code(), Some(if any_fail { 1 } else { 0 }));
}

#[test]
fn a_bad_config_fails_the_check_naming_the_field() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("moat.toml");
    std::fs::write(&config, "[runtime]\nlog_level = \"loud\"\n").unwrap();
    let out = moat(&["check", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().next().unwrap();
    assert!(line.starts_with("FAIL config"), "{stdout}");
    assert!(
        line.contains("runtime.log_level") && line.contains("moat.toml"),
        "{line}"
    );
}

#[test]
fn a_containerd_config_with_moat_passes() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat]\n\
         runtime_type = \"io.containerd.moat.v2\"\n",
    )
    .unwrap();
    let out = moat(&[
        "check",
        "--json",
        "--containerd-config",
        file.to_str().unwrap(),
    ]);
    let findings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(finding(&findings, "containerd-config")["status"], "OK");
}

/// `moat env` marks what the file sets as `file PATH`, the rest `default`.
#[test]
fn env_shows_where_each_value_came_from() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("moat.toml");
    std::fs::write(
        &config,
        "[vm]\nmemory_mib = 512\n[debug]\nno_seccomp = true\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let out = moat(&["env", "--json", "--config", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let env: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(env["config_file"], path);
    for s in env["settings"].as_array().unwrap() {
        let key = s["key"].as_str().unwrap();
        let want = match key {
            "vm.memory_mib" | "debug.no_seccomp" => format!("file {path}"),
            _ => "default".to_string(),
        };
        assert_eq!(s["source"], want.as_str(), "{s}");
    }
    let names: Vec<&str> = env["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["moat", "shim", "moat-vmm", "agent", "kernel", "containerd"]
    );
    assert_eq!(env["versions"][0]["version"], env!("CARGO_PKG_VERSION"));

    let out = moat(&["env", "--config", path]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("config file: {path}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("memory_mib = 512"), "{stdout}");
    assert!(stdout.contains("\nversions:\n"), "{stdout}");
}
