//! `runtime/install.sh` into a scratch prefix (no KVM, no root needed): the shim, moat-vmm, moat and
//! the `containerd-shim-kata-v2` link installed and working, the default config created once
//! and never overwritten, `--dry-run` changing nothing, and failures loud. That the kata-named
//! shim serves containerd is `containerd_moat::kata_runtime_name`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moat_runtime::{Config, RUNTIME_ID};

/// The script under test.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/install.sh")
}

/// Runs the script with `args`.
fn install(args: &[&Path]) -> Output {
    Command::new(script())
        .args(args)
        .output()
        .expect("running runtime/install.sh")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn installs_the_shim_the_kata_link_and_the_config_once() {
    let scratch = tempfile::Builder::new()
        .prefix("moat-install-")
        .tempdir()
        .unwrap();
    let prefix = scratch.path().join("usr");
    let config = scratch.path().join("etc/moat/configuration.toml");
    let from = moat_tests::cargo_bin("containerd-shim-moat-v2");
    let from = from.parent().unwrap();
    let args = [
        Path::new("--prefix"),
        &prefix,
        Path::new("--config"),
        &config,
        Path::new("--from"),
        from,
    ];

    let mut dry = args.to_vec();
    dry.push(Path::new("--dry-run"));
    let o = install(&dry);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("+ ln -sfn containerd-shim-moat-v2"));
    assert!(
        !prefix.exists() && !config.exists(),
        "--dry-run changed something"
    );

    let o = install(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bin = prefix.join("bin");
    assert_eq!(
        std::fs::read_link(bin.join("containerd-shim-kata-v2")).unwrap(),
        Path::new("containerd-shim-moat-v2")
    );
    assert!(bin.join("moat-vmm").is_file());
    let v = Command::new(bin.join("moat"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(text(&v.stdout).starts_with("moat "), "{}", text(&v.stdout));
    // The binary does not care what it is called.
    let v = Command::new(bin.join("containerd-shim-kata-v2"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        text(&v.stdout).contains(&format!("Runtime: {RUNTIME_ID}")),
        "{}",
        text(&v.stdout)
    );
    let shipped = std::fs::read_to_string(script().with_file_name("configuration.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shipped);

    // Again (an upgrade): the binaries are replaced, a changed config is kept.
    let mut changed = Config::default();
    changed.vm.vcpus = 2;
    let changed = changed.to_toml();
    std::fs::write(&config, &changed).unwrap();
    let o = install(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("keeping the existing"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), changed);
}

#[test]
fn failures_are_loud() {
    let scratch = tempfile::Builder::new()
        .prefix("moat-install-bad-")
        .tempdir()
        .unwrap();
    let prefix = scratch.path().join("usr");
    let config = scratch.path().join("moat.toml");
    let fails = |args: &[&Path], why: &str| {
        let o = install(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = text(&o.stderr);
        assert!(
            err.contains("install.sh: error:") && err.contains(why),
            "{err}"
        );
    };
    fails(&[Path::new("--bogus")], "unknown argument: --bogus");
    fails(&[Path::new("--prefix")], "--prefix needs a value");
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let base = [
        Path::new("--prefix"),
        &prefix,
        Path::new("--config"),
        &config,
        Path::new("--from"),
    ];
    fails(
        &[&base[..], &[&empty]].concat(),
        "not found or not executable",
    );
    // A real Kata shim in the way is not replaced.
    let from = moat_tests::cargo_bin("containerd-shim-moat-v2");
    let from = from.parent().unwrap();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(prefix.join("bin/containerd-shim-kata-v2"), "kata").unwrap();
    fails(&[&base[..], &[from]].concat(), "is not moat's link");
    assert!(!config.exists());
}
