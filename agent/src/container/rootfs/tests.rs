//! Tests of [`validate`] on specs; [`namespaces`]: real rootfs setups in fresh namespaces.

mod namespaces;

use super::*;
use crate::testing::{spec, tempdir};

/// A spec on `root` with the given mounts and `linux` members spliced in (`linux` starts
/// with a comma or is empty).
fn spec_with(root: &str, mounts: &str, linux: &str) -> Spec {
    spec(&format!(
        r#"{{"ociVersion":"1.1.0",
            "process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},
            "root":{{"path":"{root}","readonly":true}},
            "mounts":[{mounts}],
            "linux":{{"namespaces":[{{"type":"ipc"}},{{"type":"mount"}}]{linux}}}}}"#
    ))
}

#[test]
fn a_good_spec_validates() {
    let t = tempdir("validate-ok");
    let root = t.path().display().to_string();
    let s = spec_with(
        &root,
        &format!(
            r#"{{"destination":"/proc","type":"proc","source":"proc"}},
               {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}},
               {{"destination":"/data","type":"bind","source":"{root}","options":["rbind","ro"]}}"#
        ),
        r#","devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}],
           "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],
           "rootfsPropagation":"rslave","sysctl":{"kernel.shmmax":"1"}"#,
    );
    validate(&s).unwrap();
}

#[test]
fn bad_specs_fail_with_clear_errors() {
    let t = tempdir("validate-bad");
    let root = t.path().display().to_string();
    let file = t.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = |s: Spec| validate(&s).unwrap_err().to_string();
    let e = err(spec_with("relative/root", "", ""));
    assert!(e.contains("not absolute"), "{e}");
    let e = err(spec_with("/nonexistent/moat-root", "", ""));
    assert!(e.contains("/nonexistent/moat-root"), "{e}");
    let e = err(spec_with(&file.display().to_string(), "", ""));
    assert!(e.contains("not a directory"), "{e}");
    let e = err(spec(r#"{"ociVersion":"1.1.0"}"#));
    assert!(e.contains("no root"), "{e}");
    let e = err(spec_with(&root, "", r#","rootfsPropagation":"sideways""#));
    assert!(e.contains("sideways"), "{e}");
    let e = err(spec_with(
        &root,
        "",
        r#","devices":[{"path":"/etc/shadow","type":"c","major":1,"minor":3}]"#,
    ));
    assert!(e.contains("/etc/shadow"), "{e}");
    let e = err(spec_with(&root, "", r#","maskedPaths":["proc/kcore"]"#));
    assert!(e.contains("maskedPaths"), "{e}");
    let e = err(spec_with(&root, "", r#","sysctl":{"kernel.panic":"1"}"#));
    assert!(e.contains("kernel.panic"), "{e}");
    let e = err(spec_with(
        &root,
        "",
        r#","sysctl":{"net.ipv4.ip_forward":"1"}"#,
    ));
    assert!(e.contains("network namespace"), "{e}");
    let e = err(spec_with(
        &root,
        r#"{"destination":"/x","type":"bind","source":"/nonexistent/src","options":["bind"]}"#,
        "",
    ));
    assert!(e.contains("/nonexistent/src"), "{e}");
    let e = err(spec(&format!(
        r#"{{"ociVersion":"1.1.0","root":{{"path":"{root}"}},
            "process":{{"cwd":"work","args":["sh"],"user":{{"uid":0,"gid":0}}}}}}"#
    )));
    assert!(e.contains("process.cwd"), "{e}");
}
