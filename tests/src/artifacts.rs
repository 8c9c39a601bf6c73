//! Where the tests find what they run: the workspace's binaries (built by cargo), the
//! cached build outputs that live outside the clone (kernels, the agent initramfs, guest
//! tools; each script prints its output's path with `--print-path`) and tools on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace's root directory (where the top-level `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root if relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// Path of the built kernel of `flavor` (`guest`, `test-host`): the file named by
/// `MOAT_GUEST_KERNEL` / `MOAT_TEST_HOST_KERNEL` if set, else what
/// `guest-kernel/build.sh --print-path <flavor>` prints (that never builds); the error
/// says what failed.
pub fn kernel_path(flavor: &str) -> Result<PathBuf, String> {
    let var = format!("MOAT_{}_KERNEL", flavor.to_uppercase().replace('-', "_"));
    cached_artifact(&var, "guest-kernel/build.sh", &[flavor])
}

/// Path of the moat-agent guest initramfs: `$MOAT_AGENT_INITRAMFS` if set, else what
/// `agent/build-image.sh --print-path` prints (build it with `agent/build-image.sh`).
pub fn agent_initramfs_path() -> Result<PathBuf, String> {
    cached_artifact("MOAT_AGENT_INITRAMFS", "agent/build-image.sh", &[])
}

/// Path of the static guest tool `moat-vsock-echo`: `$MOAT_VSOCK_ECHO_BIN` if set, else what
/// `tests/scripts/build-guest-tools.sh --print-path` prints (build it with that script).
pub fn vsock_echo_bin_path() -> Result<PathBuf, String> {
    cached_artifact(
        "MOAT_VSOCK_ECHO_BIN",
        "tests/scripts/build-guest-tools.sh",
        &[],
    )
}

/// Path of the static guest tool `moat-share-attack` (the hostile-guest test's attacker):
/// `$MOAT_SHARE_ATTACK_BIN` if set, else what
/// `tests/scripts/build-guest-tools.sh --print-path moat-share-attack` prints (build it with
/// that script).
pub fn share_attack_bin_path() -> Result<PathBuf, String> {
    cached_artifact(
        "MOAT_SHARE_ATTACK_BIN",
        "tests/scripts/build-guest-tools.sh",
        &["moat-share-attack"],
    )
}

/// The prefix holding the test host's qemu 10 (`usr/bin/qemu-system-x86_64`, firmware in
/// `usr/share/qemu`): `$MOAT_QEMU_PREFIX` if set, else what `tests/scripts/fetch-qemu.sh
/// --print-path` prints (fetch it with that script).
pub fn qemu_prefix() -> Result<PathBuf, String> {
    cached(
        "MOAT_QEMU_PREFIX",
        "tests/scripts/fetch-qemu.sh",
        &[],
        Path::is_dir,
    )
}

/// The prefix holding Debian 13's Docker Engine 26 and containerd 1.7 (`usr/sbin/dockerd`,
/// `usr/bin/{docker,containerd,ctr}`...): `$MOAT_TRIXIE_PREFIX` if set, else what
/// `tests/scripts/fetch-trixie.sh --print-path` prints (fetch it with that script).
pub fn trixie_prefix() -> Result<PathBuf, String> {
    cached(
        "MOAT_TRIXIE_PREFIX",
        "tests/scripts/fetch-trixie.sh",
        &[],
        Path::is_dir,
    )
}

/// A build output cached outside the clone: the file in `$env_var` if set, else the path
/// `<workspace>/<script> --print-path <args>` prints (such scripts never build in that mode).
fn cached_artifact(env_var: &str, script: &str, args: &[&str]) -> Result<PathBuf, String> {
    cached(env_var, script, args, Path::is_file)
}

/// [`cached_artifact`] for a path that passes `exists` (a file, a directory).
fn cached(
    env_var: &str,
    script: &str,
    args: &[&str],
    exists: fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return match exists(&p) {
            true => Ok(p),
            false => Err(format!("{env_var}={} does not exist", p.display())),
        };
    }
    let script = workspace_root().join(script);
    let shown = format!("{} --print-path {}", script.display(), args.join(" "));
    let out = Command::new(&script)
        .arg("--print-path")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().rev().map(str::trim).find(|l| !l.is_empty());
    match path {
        Some(p) if out.status.success() && exists(Path::new(p)) => Ok(PathBuf::from(p)),
        _ => Err(format!(
            "`{shown}` exited {} (stdout {:?}, stderr {:?}); build it by running the script \
             without --print-path",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A workspace binary that is not built (see [`try_cargo_bin`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "binary `{name}` not found (looked in: {}); build it with \
     `cargo build --release --bin {name}` (or set {env_var})",
    looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct BinMissing {
    /// The binary's name.
    pub name: String,
    /// The env var that overrides its path.
    pub env_var: String,
    /// The paths tried.
    pub looked: Vec<PathBuf>,
}

/// Finds built workspace binary `name`: the path in `$MOAT_<NAME>_BIN` if
/// set, else the one built with the caller's own profile (next to the running executable,
/// or one level up from a test's `deps/`), else the newer of `<target>/release/<name>` and
/// `<target>/debug/<name>`.
///
/// `<NAME>` is `name` upper-cased with `-` as `_` and without a `moat-`
/// prefix: `moat-vmm` uses `MOAT_VMM_BIN`, `foo-bar` `MOAT_FOO_BAR_BIN`.
pub fn try_cargo_bin(name: &str) -> Result<PathBuf, BinMissing> {
    let stem = name.strip_prefix("moat-").unwrap_or(name);
    let env_var = format!("MOAT_{}_BIN", stem.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&env_var).map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BinMissing {
                name: name.into(),
                env_var,
                looked: vec![p],
            })
        };
    }
    let own_profile = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.ends_with("deps") {
            dir.parent()?
        } else {
            dir
        };
        Some(dir.join(name)).filter(|p| p.is_file())
    });
    if let Some(p) = own_profile {
        return Ok(p);
    }
    let looked: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|profile| target_dir().join(profile).join(name))
        .collect();
    let newest = looked
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone());
    newest.ok_or(BinMissing {
        name: name.into(),
        env_var,
        looked,
    })
}

/// [`try_cargo_bin`], panicking with its build instructions if missing.
pub fn cargo_bin(name: &str) -> PathBuf {
    try_cargo_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The first file called `name` in a `$PATH` directory.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_layout() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("tests/Cargo.toml").is_file());
    }

    #[test]
    fn missing_bin_says_how_to_build() {
        let e = try_cargo_bin("moat-no-such-binary").unwrap_err();
        assert_eq!(e.env_var, "MOAT_NO_SUCH_BINARY_BIN");
        let msg = e.to_string();
        assert!(
            msg.contains("cargo build --release --bin moat-no-such-binary"),
            "{msg}"
        );
    }
}
