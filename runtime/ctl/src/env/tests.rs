use super::*;
use crate::check::testing::{
    agent_with_marker, initramfs, pvh_elf, temp_host, write_file, ElfNote,
};

fn source_of<'a>(env: &'a Env, key: &str) -> &'a str {
    let s = env.settings.iter().find(|s| s.key == key);
    &s.unwrap_or_else(|| panic!("no {key}: {env:?}")).source
}

/// A file that sets two keys: those two come from the file, every other value is a default.
#[test]
fn keys_the_file_sets_are_marked_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let host = temp_host(&dir);
    let file = write_file(
        dir.path(),
        "moat.toml",
        b"[vm]\nvcpus = 2\n[runtime]\nlog_level = \"debug\"\n",
        0o644,
    );
    let env = gather(&host, Some(&file)).unwrap();
    assert_eq!(env.config_file, Some(file.display().to_string()));
    let from_file = format!("file {}", file.display());
    let marked: Vec<&str> = env
        .settings
        .iter()
        .filter(|s| s.source == from_file)
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(marked, ["vm.vcpus", "runtime.log_level"]);
    assert!(env
        .settings
        .iter()
        .all(|s| s.source == from_file || s.source == "default"));
    let value = |key: &str| &env.settings.iter().find(|s| s.key == key).unwrap().value;
    assert_eq!(value("vm.vcpus"), &toml::Value::Integer(2));
    assert_eq!(value("runtime.log_level"), &toml::Value::from("debug"));
    // Every key of every section, the unset maxima as what they come to.
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let keys: usize = defaults.values().map(|s| s.as_table().unwrap().len()).sum();
    assert_eq!(env.settings.len(), keys + 2, "{:?}", env.settings);
    assert_eq!(value("vm.max_vcpus"), &toml::Value::Integer(8));
    assert_eq!(source_of(&env, "vm.max_vcpus"), "default");
    assert_eq!(source_of(&env, "debug.no_jail"), "default");
    assert_eq!(
        env.settings[0].key, "vm.boot_timeout_secs",
        "sections in order vm, runtime, debug"
    );
}

#[test]
fn no_file_is_all_defaults() {
    let settings = settings(&Config::default(), None);
    assert!(settings.iter().all(|s| s.source == "default"));
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    assert!(
        keys.contains(&"vm.kernel") && keys.contains(&"runtime.state_dir"),
        "{keys:?}"
    );
}

#[test]
fn a_bad_config_is_an_error_naming_the_field() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = write_file(dir.path(), "moat.toml", b"[vm]\nmemory_mib = 1\n", 0o644);
    let e = gather(&temp_host(&dir), Some(&file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("vm.memory_mib"), "{e}");
}

/// A temporary host with moat-vmm and containerd on its path and a configuration naming a
/// kernel and an initramfs; the configuration file.
fn installed(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_file(&bin, "moat-vmm", b"#!/bin/sh\necho moat-vmm 0.1.0\n", 0o755);
    write_file(
        &bin,
        "containerd",
        b"#!/bin/sh\necho containerd 1.7.2\n",
        0o755,
    );
    let kernel = pvh_elf(ElfNote::Pvh, Some("6.12.5 (b@h) #1 SMP"));
    let kernel = write_file(dir.path(), "vmlinux", &kernel, 0o644);
    let initrd = initramfs(&agent_with_marker("0.1.0-rc1"));
    let initrd = write_file(dir.path(), "agent.cpio.gz", &initrd, 0o644);
    let config = format!("[vm]\nkernel = {kernel:?}\ninitrd = {initrd:?}\n");
    write_file(dir.path(), "moat.toml", config.as_bytes(), 0o644)
}

#[test]
fn versions_of_every_part() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = installed(&dir);
    let env = gather(&temp_host(&dir), Some(&config)).unwrap();
    let version = |name: &str| {
        let v = env.versions.iter().find(|v| v.name == name).unwrap();
        v.version
            .clone()
            .unwrap_or_else(|| format!("ERROR {:?}", v.error))
    };
    assert_eq!(version("moat"), TOOL_VERSION);
    assert_eq!(
        version("shim"),
        TOOL_VERSION,
        "not installed: this tool's build"
    );
    assert_eq!(version("moat-vmm"), "moat-vmm 0.1.0");
    assert_eq!(version("agent"), "0.1.0-rc1");
    assert_eq!(version("kernel"), "Linux version 6.12.5 (b@h) #1 SMP");
    assert_eq!(version("containerd"), "containerd 1.7.2");

    let text = render(&env);
    assert!(
        text.starts_with(&format!("config file: {}\n\n[vm]\n", config.display())),
        "{text}"
    );
    assert!(
        text.contains("\n[runtime]\n") && text.contains("\n[debug]\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("# file {}", config.display())),
        "{text}"
    );
    assert!(text.contains("\n  agent      0.1.0-rc1  ("), "{text}");
}

/// What is missing is said, not hidden.
#[test]
fn missing_parts_are_named() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = installed(&dir);
    std::fs::remove_file(dir.path().join("agent.cpio.gz")).unwrap();
    std::fs::remove_file(dir.path().join("bin/moat-vmm")).unwrap();
    let env = gather(&temp_host(&dir), Some(&config)).unwrap();
    let error = |name: &str| {
        let v = env.versions.iter().find(|v| v.name == name).unwrap();
        assert_eq!(v.version, None);
        v.error.clone().unwrap()
    };
    assert!(error("agent").ends_with("agent.cpio.gz: absent"));
    assert_eq!(error("moat-vmm"), "moat-vmm: not found");
}
