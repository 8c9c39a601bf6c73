//! containerd: whether it is installed (`containerd`) and whether its configuration names a
//! runtime of type `io.containerd.moat.v2` (`containerd-config`). Neither is a hard
//! requirement: `ctr run --runtime io.containerd.moat.v2` needs no configuration, and
//! another containerd may be in use.

use std::path::Path;

use moat_runtime::RUNTIME_ID;

use super::host::Host;
use super::probe::version_of;
use super::Finding;

/// The `containerd` and `containerd-config` findings.
pub fn checks(host: &Host) -> Vec<Finding> {
    vec![installed(host), config(&host.containerd_config)]
}

/// `containerd --version`, if containerd is on the host's path.
pub fn version(host: &Host) -> Result<String, String> {
    let path = host
        .which(Path::new("containerd"))
        .ok_or_else(|| "containerd: not found on $PATH".to_string())?;
    version_of(&path).map_err(|e| e.to_string())
}

fn installed(host: &Host) -> Finding {
    match version(host) {
        Ok(v) => Finding::ok("containerd", v),
        Err(e) => Finding::warn(
            "containerd",
            e,
            "install containerd (1.6 or later) to run pods with moat",
        ),
    }
}

/// `containerd-config`: the file names a runtime of moat's type.
fn config(path: &Path) -> Finding {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return Finding::warn(
                "containerd-config",
                format!(
                    "{}: cannot read ({e}): no moat runtime for CRI",
                    path.display()
                ),
                snippet(2),
            )
        }
    };
    let doc: toml::Table = match text.parse() {
        Ok(doc) => doc,
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            return Finding::warn(
                "containerd-config",
                format!("{}: not valid TOML: {first}", path.display()),
                "fix the file (containerd does not start with it either)",
            );
        }
    };
    let version = doc
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    match find_runtime(&doc, "") {
        Some(table) => Finding::ok(
            "containerd-config",
            format!(
                "{}: [{table}] has runtime_type = \"{RUNTIME_ID}\"",
                path.display()
            ),
        ),
        None => Finding::warn(
            "containerd-config",
            format!(
                "{}: no runtime has runtime_type = \"{RUNTIME_ID}\" (CRI cannot use moat; \
                 ctr run --runtime {RUNTIME_ID} still can)",
                path.display()
            ),
            snippet(version),
        ),
    }
}

/// The dotted name of the first table (depth first) whose `runtime_type` is moat's.
fn find_runtime(table: &toml::Table, name: &str) -> Option<String> {
    if table.get("runtime_type").and_then(toml::Value::as_str) == Some(RUNTIME_ID) {
        return Some(name.to_string());
    }
    table.iter().find_map(|(key, value)| {
        let key = if key.contains('.') {
            format!("\"{key}\"")
        } else {
            key.clone()
        };
        let child = if name.is_empty() {
            key
        } else {
            format!("{name}.{key}")
        };
        value.as_table().and_then(|t| find_runtime(t, &child))
    })
}

/// What to add to a containerd configuration of format `version` (1: containerd 1.x's
/// first format, 2: containerd 1.x, 3: containerd 2.x).
fn snippet(version: i64) -> String {
    let table = match version {
        3.. => "plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.moat",
        2 => "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat",
        _ => "plugins.cri.containerd.runtimes.moat",
    };
    format!(
        "add to containerd's config and restart it:\n[{table}]\n  runtime_type = \
         \"{RUNTIME_ID}\"\n  pod_annotations = [\"io.katacontainers.*\", \"moat.*\"]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{temp_host, write_file};
    use crate::check::Status;

    #[test]
    fn containerd_is_found_and_asked() {
        let dir = tempfile::TempDir::new().unwrap();
        let host = temp_host(&dir);
        let f = installed(&host);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("not found"), "{f:?}");
        write_file(
            &dir.path().join("bin"),
            "containerd",
            b"#!/bin/sh\necho containerd github.com/containerd/containerd 1.7.0\n",
            0o755,
        );
        let f = installed(&host);
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.ends_with("1.7.0"), "{f:?}");
    }

    #[test]
    fn the_config_must_name_a_moat_runtime() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = config(&dir.path().join("absent.toml"));
        assert_eq!(f.status, Status::Warn);
        assert!(f.hint.unwrap().contains("grpc.v1.cri"));

        let v3 = write_file(dir.path(), "v3.toml", b"version = 3\n[plugins]\n", 0o644);
        let f = config(&v3);
        assert_eq!(f.status, Status::Warn);
        let hint = f.hint.unwrap();
        assert!(
            hint.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.moat]")
        );
        assert!(
            hint.contains("runtime_type = \"io.containerd.moat.v2\""),
            "{hint}"
        );

        let ok = write_file(
            dir.path(),
            "ok.toml",
            b"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat]\n  \
              runtime_type = \"io.containerd.moat.v2\"\n",
            0o644,
        );
        let f = config(&ok);
        assert_eq!(f.status, Status::Ok);
        assert!(
            f.detail
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat]"),
            "{f:?}"
        );
        let bad = write_file(dir.path(), "bad.toml", b"[plugins\n", 0o644);
        let f = config(&bad);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("not valid TOML"), "{f:?}");
    }
}
