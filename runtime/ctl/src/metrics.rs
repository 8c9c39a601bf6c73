//! `moat metrics [POD]`: a pod's metrics, or every pod's merged, in Prometheus text format.

use std::process::ExitCode;

use moat_runtime::ops::client;
use moat_runtime::ops::exposition::Exposition;

use crate::pods::{self, PodEntry};
use crate::Globals;

/// `moat metrics`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod (`POD`, `NAMESPACE/POD` or a unique prefix); default: every pod.
    pod: Option<String>,
}

/// Runs `moat metrics`.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<ExitCode> {
    let all = pods::list(&pods::state_dir(g)?)?;
    let chosen: Vec<PodEntry> = match &args.pod {
        Some(name) => vec![pods::find(&all, name)?.clone()],
        None => all,
    };
    let (text, failed) = gather(&chosen);
    print!("{text}");
    for (pod, e) in &failed {
        eprintln!("moat: {}/{}: {e}", pod.namespace, pod.id);
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The merged metrics of `pods` (asked in parallel), and the pods whose shims failed.
pub fn gather(pods: &[PodEntry]) -> (String, Vec<(PodEntry, client::OpsError)>) {
    let answers: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(move || (p, client::metrics(&p.socket))))
            .collect();
        asks.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut e = Exposition::new();
    let mut failed = Vec::new();
    for (pod, answer) in answers {
        match answer {
            Ok(text) => e.add(&text),
            Err(err) => failed.push((pod.clone(), err)),
        }
    }
    (e.render(), failed)
}
