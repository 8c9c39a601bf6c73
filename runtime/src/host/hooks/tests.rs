use super::*;

fn hook(script: &str, timeout: Option<u64>) -> Value {
    let mut h = json!({"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["A=b", "EMPTY="]});
    if let Some(t) = timeout {
        h["timeout"] = json!(t);
    }
    h
}

fn one(script: &str, timeout: Option<u64>) -> Hook {
    parse_hook(&hook(script, timeout)).unwrap()
}

#[test]
fn phases_are_read_in_runcs_order() {
    let spec = json!({"hooks": {
        "prestart": [hook("p", None)],
        "createRuntime": [hook("c", Some(5))],
        "poststart": [hook("s", None)],
        "poststop": [{"path": "/bin/true"}],
    }});
    let h = SpecHooks::from_spec(&spec).unwrap();
    let order: Vec<_> = h.before_start.iter().map(|(p, i, _)| (*p, *i)).collect();
    assert_eq!(order, [("createRuntime", 0), ("prestart", 0)]);
    assert_eq!(h.before_start[0].2.timeout, Duration::from_secs(5));
    assert_eq!(h.before_start[1].2.timeout, DEFAULT_TIMEOUT);
    assert_eq!(h.poststart.len(), 1);
    assert_eq!(h.poststop[0].args, ["/bin/true"]);
    assert_eq!(
        SpecHooks::from_spec(&json!({})).unwrap(),
        SpecHooks::default()
    );
}

#[test]
fn bad_hooks_are_refused_by_name() {
    for (hooks, want) in [
        (
            json!({"prestart": [{"path": "rel/hook"}]}),
            "hooks.prestart[0]: `path`",
        ),
        (
            json!({"poststop": [{"path": "/x"}, {"path": "/x", "args": [1]}]}),
            "hooks.poststop[1]: `args` must be strings",
        ),
        (
            json!({"createRuntime": [{"path": "/x", "timeout": 0}]}),
            "hooks.createRuntime[0]: `timeout`",
        ),
        (
            json!({"createContainer": [{"path": "/x"}]}),
            "hooks.createContainer[0]: runs inside the container",
        ),
        (
            json!({"prestart": vec![json!({"path": "/x"}); MAX_HOOKS + 1]}),
            "hooks.prestart[32]: 33 hooks",
        ),
    ] {
        let e = SpecHooks::from_spec(&json!({ "hooks": hooks })).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[test]
fn a_hook_gets_the_state_its_env_and_the_bundle_dir() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = dir.path().join("seen");
    let script = format!(
        "{{ cat; echo; }} > {0}; pwd >> {0}; env | sort >> {0}; echo \"$0\" >> {0}",
        out.display()
    );
    let spec = json!({"ociVersion": "1.1.0", "annotations": {"k": "v"}});
    let st = state(&spec, "c1", "created", Some(42), dir.path());
    run(("prestart", 0), &one(&script, None), &st, dir.path()).unwrap();
    let seen = std::fs::read_to_string(&out).unwrap();
    let (json_line, rest) = seen.split_once('\n').unwrap();
    let got: Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(got["id"], "c1");
    assert_eq!(got["pid"], 42);
    assert_eq!(got["status"], "created");
    assert_eq!(got["ociVersion"], "1.1.0");
    assert_eq!(got["annotations"]["k"], "v");
    assert_eq!(got["bundle"], json!(dir.path()));
    let dir_text = dir.path().to_string_lossy();
    assert!(rest.contains(&*dir_text), "{rest}");
    assert!(rest.contains("A=b\nEMPTY=\n"), "{rest}");
    assert!(
        !rest.contains("PATH="),
        "the shim's environment leaked: {rest}"
    );
    assert!(rest.trim_end().ends_with("\nsh"), "argv[0]: {rest}");
}

#[test]
fn a_failing_hook_says_how_with_its_output() {
    let dir = tempfile::TempDir::new().unwrap();
    let h = one("echo doing; echo broken >&2; exit 3", None);
    let e = run(("createRuntime", 1), &h, &json!({}), dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("hooks.createRuntime[1] /bin/sh"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("doing") && msg.contains("broken"), "{msg}");
    let missing = Hook {
        path: "/nonexistent/hook".into(),
        args: vec!["hook".into()],
        env: vec![],
        timeout: DEFAULT_TIMEOUT,
    };
    let e = run(("prestart", 0), &missing, &json!({}), dir.path()).unwrap_err();
    assert!(matches!(e, HookError::Spawn { .. }), "{e}");
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_output_is_bounded() {
    let dir = tempfile::TempDir::new().unwrap();
    let h = one("head -c 100000 /dev/zero | tr '\\0' x; sleep 30", Some(1));
    let started = Instant::now();
    let e = run(("prestart", 0), &h, &json!({}), dir.path()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not killed in time"
    );
    let HookError::Failed {
        outcome, output, ..
    } = e
    else {
        panic!("{e}");
    };
    assert!(outcome.contains("timeout"), "{outcome}");
    assert!(
        output.len() <= 2 * OUTPUT_TAIL,
        "{} bytes kept",
        output.len()
    );
}

#[test]
fn a_hook_that_never_reads_stdin_does_not_block() {
    let dir = tempfile::TempDir::new().unwrap();
    let big = json!({"annotations": {"pad": "x".repeat(1 << 20)}});
    run(("prestart", 0), &one("exit 0", None), &big, dir.path()).unwrap();
}
