//! `moat ps`: the pods and containers this host's shims run, as each shim reports them.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moat_runtime::ops::client;
use moat_runtime::ops::status::PodStatus;
use serde::Serialize;

use crate::pods::{self, PodEntry};
use crate::Globals;

/// `moat ps`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// One pod in the listing: its status, or why its shim did not answer.
#[derive(Debug, Serialize)]
struct Row {
    namespace: String,
    pod_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<PodStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `moat ps`.
pub fn run(g: &Globals, _args: Args) -> anyhow::Result<ExitCode> {
    let rows: Vec<Row> = pods::list(&pods::state_dir(g)?)?
        .into_iter()
        .map(row)
        .collect();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows, SystemTime::now()));
    }
    Ok(ExitCode::SUCCESS)
}

fn row(p: PodEntry) -> Row {
    let (status, error) = match client::status(&p.socket) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Row {
        namespace: p.namespace,
        pod_id: p.id,
        status,
        error,
    }
}

/// The listing for people: a line per pod, an indented line per container.
fn table(rows: &[Row], now: SystemTime) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:>8} {:>5} {:>9} {:>9} {}\n",
        "NAMESPACE", "POD", "VMM PID", "VCPUS", "MEMORY", "UP", "STATE"
    );
    for r in rows {
        let Some(s) = &r.status else {
            let why = r.error.as_deref().unwrap_or("");
            out += &format!(
                "{:<12} {:<24} no shim answers: {why}\n",
                r.namespace, r.pod_id
            );
            continue;
        };
        let started = UNIX_EPOCH + Duration::from_millis(s.started_unix_ms);
        let up = now.duration_since(started).unwrap_or_default();
        let state = match s.debug_console {
            true => format!("{} (debug console)", s.vm_state),
            false => s.vm_state.clone(),
        };
        out += &format!(
            "{:<12} {:<24} {:>8} {:>5} {:>5} MiB {:>9} {state}\n",
            r.namespace,
            r.pod_id,
            s.vmm_pid,
            s.vcpus,
            s.memory_mib,
            human(up)
        );
        for c in &s.containers {
            let role = if c.is_sandbox { " (sandbox)" } else { "" };
            let exit = c
                .exit_status
                .map(|e| format!(", exit {e}"))
                .unwrap_or_default();
            out += &format!(
                "  └ {}{role}: {}{exit}, {} exec(s)\n",
                c.id, c.status, c.execs
            );
        }
    }
    out
}

/// `1h02m`, `3m05s`, `12s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

#[cfg(test)]
mod tests {
    use moat_runtime::ops::status::ContainerStatus;

    use super::*;

    #[test]
    fn pods_and_their_containers_are_listed() {
        let status = PodStatus {
            pod_id: "p1".into(),
            namespace: "default".into(),
            shim_pid: 10,
            vmm_pid: 11,
            vcpus: 2,
            memory_mib: 512,
            started_unix_ms: 1_000_000,
            boot_ms: 900,
            vm_state: "running".into(),
            debug_console: true,
            containers: vec![ContainerStatus {
                id: "p1".into(),
                status: "running".into(),
                is_sandbox: true,
                execs: 1,
                exit_status: None,
            }],
        };
        let rows = [
            Row {
                namespace: "default".into(),
                pod_id: "p1".into(),
                status: Some(status),
                error: None,
            },
            Row {
                namespace: "k8s.io".into(),
                pod_id: "dead".into(),
                status: None,
                error: Some("connection refused".into()),
            },
        ];
        let now = UNIX_EPOCH + Duration::from_millis(1_000_000 + 65_000);
        let t = table(&rows, now);
        assert!(t.contains("p1"), "{t}");
        assert!(t.contains("512 MiB") && t.contains("1m05s"), "{t}");
        assert!(t.contains("running (debug console)"), "{t}");
        assert!(t.contains("└ p1 (sandbox): running, 1 exec(s)"), "{t}");
        assert!(t.contains("dead") && t.contains("no shim answers: connection refused"));
        assert_eq!(human(Duration::from_secs(3 * 3600 + 120)), "3h02m");
    }
}
