//! The spec's OCI hooks that belong on the host, run there as runc runs them.
//!
//! `createRuntime` and `prestart` hooks run when the pod's (or container's) namespaces exist
//! and before its process starts, `poststart` after it started, `poststop` after it was
//! deleted; each with the container's [state] on stdin, in the shim's (host) namespaces, its
//! `env` as the whole environment, in the bundle directory. That is what Docker relies on:
//! its `libnetwork-setkey` prestart hook moves the container's veth into the network
//! namespace of the state's `pid` (see [`crate::host::netns`]). `createContainer` and
//! `startContainer` hooks would run inside the container, which is in the VM; they are
//! refused (the spec asks for something moat cannot do).
//!
//! A failing `createRuntime`/`prestart` hook fails the create, with its exit status and the
//! end of its output; a failing `poststart`/`poststop` hook is logged, and the rest go on
//! (the spec's rules). Every hook is bounded in time: its `timeout`, else
//! [`DEFAULT_TIMEOUT`]; it is killed when that runs out.
//!
//! [state]: https://github.com/opencontainers/runtime-spec/blob/main/runtime.md#state

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a hook without a `timeout` may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout` a hook may ask for, seconds.
pub const MAX_TIMEOUT_SECS: u64 = 600;
/// How many hooks one phase may list.
pub const MAX_HOOKS: usize = 32;
/// How much of a failed hook's output its error quotes (the end of it).
const OUTPUT_TAIL: usize = 2048;
/// How long the output of a hook that exited may take to reach its end.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How often a running hook is checked for its exit.
const POLL: Duration = Duration::from_millis(10);

/// Errors of hooks.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A hook of the spec is malformed or asks for what moat cannot do.
    #[error("hooks.{phase}[{index}]: {why}")]
    Invalid {
        /// The phase (`prestart`...).
        phase: &'static str,
        /// Its index in the phase.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// A hook could not be started.
    #[error("hooks.{phase}[{index}] {path}: cannot run: {source}")]
    Spawn {
        /// The phase.
        phase: &'static str,
        /// Its index.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A hook failed or ran out of time.
    #[error("hooks.{phase}[{index}] {path}: {outcome}; output: {output:?}")]
    Failed {
        /// The phase.
        phase: &'static str,
        /// Its index.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// Its exit status, or that it timed out.
        outcome: String,
        /// The end of what it printed (stdout, then stderr).
        output: String,
    },
}

/// One hook: what to run and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The program (absolute).
    pub path: PathBuf,
    /// Its argv, `args[0]` included (the path when the spec gives none).
    pub args: Vec<String>,
    /// Its whole environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// The host-side hooks of a spec, by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecHooks {
    /// `createRuntime`, then the deprecated `prestart` (runc's order): before the process
    /// starts, with a pid in the container's network namespace.
    pub before_start: Vec<(&'static str, usize, Hook)>,
    /// `poststart`.
    pub poststart: Vec<Hook>,
    /// `poststop`.
    pub poststop: Vec<Hook>,
}

impl SpecHooks {
    /// Reads and checks the spec's `hooks`.
    pub fn from_spec(spec: &Value) -> Result<SpecHooks, HookError> {
        let mut hooks = SpecHooks::default();
        for phase in ["createContainer", "startContainer"] {
            if phase_of(spec, phase).is_some_and(|list| !list.is_empty()) {
                return Err(HookError::Invalid {
                    phase,
                    index: 0,
                    why: "runs inside the container, which is in a VM: not supported".into(),
                });
            }
        }
        for phase in ["createRuntime", "prestart"] {
            for (index, hook) in parse_phase(spec, phase)?.into_iter().enumerate() {
                hooks.before_start.push((phase, index, hook));
            }
        }
        hooks.poststart = parse_phase(spec, "poststart")?;
        hooks.poststop = parse_phase(spec, "poststop")?;
        Ok(hooks)
    }
}

/// The spec's list for `phase`, if any.
fn phase_of<'a>(spec: &'a Value, phase: &str) -> Option<&'a Vec<Value>> {
    spec.get("hooks")?.get(phase)?.as_array()
}

/// Parses the hooks of one phase (`phase` is one of the spec's phase names).
fn parse_phase(spec: &Value, phase: &'static str) -> Result<Vec<Hook>, HookError> {
    let Some(list) = phase_of(spec, phase) else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_HOOKS {
        return Err(HookError::Invalid {
            phase,
            index: MAX_HOOKS,
            why: format!("{} hooks, at most {MAX_HOOKS}", list.len()),
        });
    }
    list.iter()
        .enumerate()
        .map(|(index, h)| parse_hook(h).map_err(|why| HookError::Invalid { phase, index, why }))
        .collect()
}

/// One hook of the spec.
fn parse_hook(h: &Value) -> Result<Hook, String> {
    let path = h
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| Path::new(p).is_absolute())
        .ok_or("`path` must be an absolute path")?;
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match h.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or(format!("`{key}` must be strings")),
            Some(_) => Err(format!("`{key}` must be an array of strings")),
        }
    };
    let mut args = strings("args")?;
    if args.is_empty() {
        args.push(path.to_string());
    }
    let env = strings("env")?;
    let timeout = match h.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(t) => match t.as_u64() {
            Some(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Duration::from_secs(s),
            _ => return Err(format!("`timeout` must be 1..={MAX_TIMEOUT_SECS} seconds")),
        },
    };
    Ok(Hook {
        path: PathBuf::from(path),
        args,
        env,
        timeout,
    })
}

/// The container's state as hooks get it on stdin.
pub fn state(spec: &Value, id: &str, status: &str, pid: Option<u32>, bundle: &Path) -> Value {
    let or = |key: &str, default: Value| match spec.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    };
    let mut s = json!({
        "ociVersion": or("ociVersion", json!("1.0.2")),
        "id": id,
        "status": status,
        "bundle": bundle,
        "annotations": or("annotations", json!({})),
    });
    if let Some(pid) = pid {
        s["pid"] = json!(pid);
    }
    s
}

/// Runs `hook` with `state` on stdin in directory `dir`; `Err` names the phase and index.
pub fn run(
    (phase, index): (&'static str, usize),
    hook: &Hook,
    state: &Value,
    dir: &Path,
) -> Result<(), HookError> {
    let mut child = spawn(hook, dir).map_err(|source| HookError::Spawn {
        phase,
        index,
        path: hook.path.clone(),
        source,
    })?;
    let input = state.to_string();
    let stdin = child.stdin.take();
    // A hook that does not read its stdin must not block the shim: written from a thread
    // that ends when the hook (or whatever inherited the pipe) closes it.
    std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let readers = [
        child.stdout.take().map(|o| tail_reader(Box::new(o))),
        child.stderr.take().map(|e| tail_reader(Box::new(e))),
    ];
    let outcome = wait_bounded(&mut child, hook.timeout);
    // What a background child of the hook still holds open is not waited for.
    let output: String = readers
        .into_iter()
        .flatten()
        .map(|r| r.recv_timeout(OUTPUT_GRACE).unwrap_or_default())
        .collect();
    match outcome {
        Ok(status) if status.success() => Ok(()),
        other => Err(HookError::Failed {
            phase,
            index,
            path: hook.path.clone(),
            outcome: match other {
                Ok(status) => status.to_string(),
                Err(e) => e,
            },
            output,
        }),
    }
}

/// Starts `hook` in `dir` with its argv and environment only, its stdio piped.
fn spawn(hook: &Hook, dir: &Path) -> std::io::Result<Child> {
    let env = hook
        .env
        .iter()
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")));
    Command::new(&hook.path)
        .arg0(&hook.args[0])
        .args(&hook.args[1..])
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Waits for `child` at most `timeout`; kills it then (`Err` says so).
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after its timeout of {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

/// Reads a stream to its end on a thread, keeping its last [`OUTPUT_TAIL`] bytes, which it
/// sends when the stream ends.
fn tail_reader(mut r: Box<dyn Read + Send>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            let excess = kept.len().saturating_sub(OUTPUT_TAIL);
            kept.drain(..excess);
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    rx
}

/// A container's `poststart` and `poststop` hooks, kept from create with what their state
/// needs of the spec.
#[derive(Debug, Clone, Default)]
pub struct PostHooks {
    poststart: Vec<Hook>,
    poststop: Vec<Hook>,
    /// The spec's `ociVersion` and `annotations`.
    spec: Value,
}

impl PostHooks {
    /// Those of `hooks`, read from `spec`.
    pub fn of(spec: &Value, hooks: &SpecHooks) -> PostHooks {
        PostHooks {
            poststart: hooks.poststart.clone(),
            poststop: hooks.poststop.clone(),
            spec: json!({"ociVersion": spec.get("ociVersion"), "annotations": spec.get("annotations")}),
        }
    }

    /// Runs the `poststart` hooks of container `id` (running, `pid` as containerd knows it).
    pub fn poststart(&self, id: &str, pid: u32, bundle: &Path) {
        let st = state(&self.spec, id, "running", Some(pid), bundle);
        run_logged("poststart", &self.poststart, &st, bundle, id);
    }

    /// Runs the `poststop` hooks of container `id` (deleted).
    pub fn poststop(&self, id: &str, bundle: &Path) {
        let st = state(&self.spec, id, "stopped", None, bundle);
        run_logged("poststop", &self.poststop, &st, bundle, id);
    }
}

/// Runs the `poststart` or `poststop` hooks: each failure is logged, and the rest still run.
fn run_logged(phase: &'static str, hooks: &[Hook], state: &Value, dir: &Path, cid: &str) {
    for (index, hook) in hooks.iter().enumerate() {
        if let Err(e) = run((phase, index), hook, state, dir) {
            crate::plog!(Warn, container = cid; "{cid}: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
