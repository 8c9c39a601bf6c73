//! Metrics text between the shims and Prometheus.
//!
//! Each shim encodes its pod's metrics with `prometheus-client`, whose text encoder writes
//! OpenMetrics 1.0 (`# TYPE x counter` with samples named `x_total`, `# UNIT`, `# EOF`).
//! Prometheus scrapes that, but the classic text format 0.0.4 is what every tool reads
//! (`promtool check metrics` among them), and `moat monitor` has to merge many shims' outputs
//! into one exposition where each family appears once. So [`Exposition`] parses OpenMetrics
//! (or 0.0.4) text into families, merges families of the same name, and renders 0.0.4: a
//! counter family is named with its `_total` suffix, `# UNIT`, `# EOF` and exemplars go.
//!
//! The input comes from this host's own shims, but is still bounded: [`MAX_TEXT`] per source,
//! [`MAX_LINE`] per line; longer lines are dropped.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The most text taken from one source.
pub const MAX_TEXT: usize = 4 << 20;
/// The longest line kept.
pub const MAX_LINE: usize = 4096;
/// The content type of [`Exposition::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: its name (0.0.4), type, help and sample lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    name: String,
    kind: String,
    help: String,
    samples: Vec<String>,
}

/// Families from one or more sources, in order of first appearance.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Adds the families of one source's text (OpenMetrics or 0.0.4). Samples of a family
    /// already present are appended to it.
    pub fn add(&mut self, text: &str) {
        let text = &text[..floor_char_boundary(text, MAX_TEXT)];
        let mut current: Option<usize> = None;
        for line in text.lines().filter(|l| l.len() <= MAX_LINE) {
            if let Some(rest) = line.strip_prefix("# ") {
                current = self.header(rest).or(current);
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                self.sample(line, current);
            }
        }
    }

    /// A `# HELP` or `# TYPE` line (others are dropped); returns the family it names.
    fn header(&mut self, rest: &str) -> Option<usize> {
        let (word, rest) = rest.split_once(' ')?;
        let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "HELP" => {
                let i = self.family(name);
                if self.families[i].help.is_empty() {
                    self.families[i].help = value.to_string();
                }
                Some(i)
            }
            "TYPE" => {
                let i = self.family(name);
                self.families[i].kind = value.to_string();
                Some(i)
            }
            _ => None,
        }
    }

    /// The index of family `name` (as the source names it), made if new.
    fn family(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.families.push(Family {
            name: name.to_string(),
            kind: String::new(),
            help: String::new(),
            samples: Vec::new(),
        });
        let i = self.families.len() - 1;
        self.index.insert(name.to_string(), i);
        i
    }

    /// A sample line: kept (without its exemplar) in the current family when its name
    /// belongs to it, else in a family of its own.
    fn sample(&mut self, line: &str, current: Option<usize>) {
        let line = line.split(" # ").next().unwrap_or(line).trim_end();
        let name = sample_name(line);
        let owner = current
            .filter(|&i| belongs(name, &self.families[i].name))
            .unwrap_or_else(|| self.family(name));
        self.families[owner].samples.push(line.to_string());
    }

    /// The families as text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let (name, kind) = classic(&f.name, &f.kind);
            if !f.help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", f.help);
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }

    /// The names of the families with samples, as rendered (for tests and checks).
    pub fn names(&self) -> Vec<String> {
        self.families
            .iter()
            .filter(|f| !f.samples.is_empty())
            .map(|f| classic(&f.name, &f.kind).0)
            .collect()
    }
}

/// The metric name of a sample line.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// Whether sample `name` is part of family `family` (its own name or a type suffix).
fn belongs(name: &str, family: &str) -> bool {
    match name.strip_prefix(family) {
        Some("") => true,
        Some(suffix) => matches!(
            suffix,
            "_total" | "_bucket" | "_sum" | "_count" | "_created" | "_info" | "_gsum" | "_gcount"
        ),
        None => false,
    }
}

/// A family's 0.0.4 name and type.
fn classic(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
        "counter" => (name.to_string(), "counter"),
        "gauge" => (name.to_string(), "gauge"),
        "histogram" => (name.to_string(), "histogram"),
        "summary" => (name.to_string(), "summary"),
        "info" => (format!("{name}_info"), "gauge"),
        _ => (name.to_string(), "untyped"),
    }
}

/// The largest char boundary of `s` at or below `max`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM_A: &str = "# HELP moat_agent_rpcs Agent RPCs.\n\
        # TYPE moat_agent_rpcs counter\n\
        moat_agent_rpcs_total{method=\"Stats\",sandbox_id=\"a\"} 3\n\
        # HELP moat_vm_boot_seconds Boot time.\n\
        # TYPE moat_vm_boot_seconds gauge\n\
        # UNIT moat_vm_boot_seconds seconds\n\
        moat_vm_boot_seconds{sandbox_id=\"a\"} 1.5\n\
        # HELP moat_rpc_seconds Latency.\n\
        # TYPE moat_rpc_seconds histogram\n\
        moat_rpc_seconds_sum{sandbox_id=\"a\"} 0.5\n\
        moat_rpc_seconds_count{sandbox_id=\"a\"} 2\n\
        moat_rpc_seconds_bucket{le=\"+Inf\",sandbox_id=\"a\"} 2 # {trace=\"x\"} 1\n\
        # EOF\n";

    #[test]
    fn openmetrics_becomes_classic_text() {
        let mut e = Exposition::new();
        e.add(SHIM_A);
        let text = e.render();
        assert!(
            text.contains("# TYPE moat_agent_rpcs_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP moat_agent_rpcs_total Agent RPCs.\n"));
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        assert!(text.contains("moat_rpc_seconds_bucket{le=\"+Inf\",sandbox_id=\"a\"} 2\n"));
        assert_eq!(
            e.names(),
            [
                "moat_agent_rpcs_total",
                "moat_vm_boot_seconds",
                "moat_rpc_seconds"
            ]
        );
    }

    #[test]
    fn families_of_many_shims_merge_once() {
        let mut e = Exposition::new();
        e.add(SHIM_A);
        e.add(&SHIM_A.replace("\"a\"", "\"b\""));
        let text = e.render();
        assert_eq!(text.matches("# TYPE moat_agent_rpcs_total").count(), 1);
        assert_eq!(text.matches("# HELP moat_vm_boot_seconds").count(), 1);
        let rpcs: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("moat_agent_rpcs_total{"))
            .collect();
        assert_eq!(rpcs.len(), 2, "{text}");
        // Samples stay under their own family's header.
        let boot = text.find("# TYPE moat_vm_boot_seconds").unwrap();
        let b_rpc = text.find("sandbox_id=\"b\"} 3").unwrap();
        assert!(b_rpc < boot, "{text}");
    }

    #[test]
    fn stray_samples_and_long_lines_are_handled() {
        let mut e = Exposition::new();
        let long = format!("x{{l=\"{}\"}} 1\n", "y".repeat(MAX_LINE));
        e.add(&format!(
            "lone_metric 7\n{long}# TYPE g gauge\ng 1\nother 2\n"
        ));
        let text = e.render();
        assert!(
            text.contains("# TYPE lone_metric untyped\nlone_metric 7\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE other untyped\nother 2\n"), "{text}");
        assert!(!text.contains("yyyy"));
        // Empty families (headers without samples) are left out.
        let mut e = Exposition::new();
        e.add("# HELP a A.\n# TYPE a gauge\n");
        assert_eq!(e.render(), "");
    }
}
