//! Every retry after a guest crash, counted where CI shows it.
//!
//! A test that redoes work after the nested test host's guest crashed calls [`record`]. Inside
//! the test host that prints a [`MARK`] line on stdout, which [`super::on_kvm`] relays from the
//! test host's output; outside it the line is appended to the retry log (`$MOAT_RETRY_LOG`,
//! else `<target>/moat-retries.log`). `tests/scripts/test-all.sh` empties the log before the
//! tests, prints `guest-crash retries: N` with every line after them, and fails past its
//! budget: a retry can cost time but cannot hide.

use std::io::Write as _;
use std::path::PathBuf;

use super::on_kvm::in_test_host;

/// Names the retry log file.
pub const RETRY_LOG_ENV: &str = "MOAT_RETRY_LOG";
/// How a retry line starts on a test-host run's stdout.
pub const MARK: &str = "moat-retry: ";

/// Records one retry of `test`: all of `why` (an L1 console tail, say) goes to stderr, its
/// first line to the count.
pub fn record(test: &str, why: &str) {
    let line = format!("{test}: {}", why.lines().next().unwrap_or(""));
    eprintln!("\n!!! GUEST CRASH, retried (counted): {test}: {why}\n");
    if in_test_host() {
        println!("{MARK}{line}");
    } else {
        append(&line);
    }
}

/// Records the retries a test-host run reported on its `stdout`; returns how many.
pub fn relay(stdout: &str) -> usize {
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(MARK))
        .collect();
    for l in &lines {
        append(l);
    }
    lines.len()
}

/// What the test host's kernel printed about each L2 triple fault (its SHUTDOWN-intercept
/// dump, `guest-kernel/patches/test-host/`): the exit, the event in flight, the control
/// registers, RIP/RSP, the IDT and the L2 page walks; `None` when it printed none.
pub fn l1_crash_evidence(console: &str) -> Option<String> {
    const KEYS: [&str; 10] = [
        "moat-diag",
        "exit_code:",
        "exit_int_info",
        "cpl:",
        "cr0:",
        "cr3:",
        "rip:",
        "rsp:",
        "idtr:",
        "cs:",
    ];
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("kvm_amd:") && KEYS.iter().any(|k| l.contains(k)))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// One line per L2 triple fault in [`l1_crash_evidence`]'s dump: `rip R cpl C event E cr2 A
/// idt I` (the event in flight is SVM's EXITINTINFO: vector in the low byte, bit 31 valid; I
/// says whether L2's own page tables, as KVM reads them, map the IDT).
pub fn l1_crash_signature(console: &str) -> Option<String> {
    let mut sigs = Vec::new();
    let mut cur: Option<CrashSig> = None;
    for l in console.lines().filter(|l| l.contains("kvm_amd:")) {
        if l.contains("moat-diag: SHUTDOWN") {
            sigs.extend(cur.take().map(|c| c.line()));
            cur = Some(CrashSig::default());
        }
        let Some(c) = cur.as_mut() else { continue };
        let words: Vec<&str> = l.split_whitespace().collect();
        let after = |key: &str| {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1).map(|v| v.to_string())
        };
        c.event = c.event.take().or_else(|| after("exit_int_info:"));
        c.cpl = c.cpl.take().or_else(|| after("cpl:"));
        c.cr2 = c.cr2.take().or_else(|| after("cr2:"));
        c.rip = c.rip.take().or_else(|| after("rip:"));
        if l.contains("moat-diag: idt ") {
            c.in_idt_walk = true;
        } else if l.contains("moat-diag: ") && !l.contains("moat-diag:   ") {
            c.in_idt_walk = false;
        } else if c.in_idt_walk && l.contains("moat-diag:   L1[") {
            let mapped = words.last().and_then(|v| u64::from_str_radix(v, 16).ok());
            c.idt_mapped = Some(mapped.is_some_and(|e| e & 1 == 1));
        }
    }
    sigs.extend(cur.map(|c| c.line()));
    (!sigs.is_empty()).then(|| sigs.join("; "))
}

/// What [`l1_crash_signature`] reads from one dump.
#[derive(Default)]
struct CrashSig {
    rip: Option<String>,
    cpl: Option<String>,
    event: Option<String>,
    cr2: Option<String>,
    in_idt_walk: bool,
    idt_mapped: Option<bool>,
}

impl CrashSig {
    fn line(self) -> String {
        let v = |o: Option<String>| o.unwrap_or_else(|| "?".into());
        let idt = match self.idt_mapped {
            Some(true) => "mapped",
            Some(false) => "unmapped",
            None => "?",
        };
        format!(
            "rip {} cpl {} event {} cr2 {} idt {idt}",
            v(self.rip),
            v(self.cpl),
            v(self.event),
            v(self.cr2)
        )
    }
}

/// The retry log's path.
pub fn log_path() -> PathBuf {
    match std::env::var_os(RETRY_LOG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::target_dir().join("moat-retries.log"),
    }
}

/// Appends `line` to the retry log; a log that cannot be written fails the test (an uncounted
/// retry is what this module exists to prevent).
fn append(line: &str) {
    let path = log_path();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening the retry log {}: {e}", path.display()));
    writeln!(f, "{line}")
        .unwrap_or_else(|e| panic!("writing the retry log {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_evidence_keeps_the_state_lines() {
        let console =
            "boot\nkvm_amd: moat-diag: SHUTDOWN intercept\nkvm_amd: exit_code:  0000007f\n\
                       kvm_amd: gpat: 0007040600070406\nkvm_amd: rip: ffffffff8141fd0d\nother\n";
        let got = l1_crash_evidence(console).unwrap();
        assert_eq!(
            got,
            "kvm_amd: moat-diag: SHUTDOWN intercept\nkvm_amd: exit_code:  0000007f\n\
             kvm_amd: rip: ffffffff8141fd0d"
        );
        assert_eq!(l1_crash_evidence("no dump here\n"), None);
    }

    #[test]
    fn crash_signature_names_rip_cpl_event_cr2_and_the_idt_walk() {
        let console = "kvm_amd: moat-diag: SHUTDOWN intercept, the VMCB as the CPU left it:\n\
             kvm_amd: exit_int_info:      800000ec\n\
             kvm_amd: exit_int_info_err:  00000007\n\
             kvm_amd: next_rip:           0000000000000000\n\
             kvm_amd: vmpl: 0   cpl:  3               efer:          0000000000001d01\n\
             kvm_amd: cr0:            0000000080050033 cr2:          fffffe0000000080\n\
             kvm_amd: rip:            0000000000566caf rflags:       0000000000000202\n\
             kvm_amd: moat-diag: rip 566caf: cr3 703000 holds 70 non-zero entries\n\
             kvm_amd: moat-diag:   L1[358] @763b30 = 1ce7025\n\
             kvm_amd: moat-diag: idt fffffe0000000000: cr3 703000 holds 70 non-zero entries\n\
             kvm_amd: moat-diag:   L4[508] @703fe0 = 1fed6067\n\
             kvm_amd: moat-diag:   L1[0] @1fe13000 = 8000000001ba6121\n\
             kvm_amd: moat-diag: rsp 7ffcfdf1a518: cr3 703000 holds 70 non-zero entries\n\
             kvm_amd: moat-diag:   L1[282] @7ce8d0 = 0\n\
             kvm_amd: moat-diag: SHUTDOWN intercept, the VMCB as the CPU left it:\n\
             kvm_amd: exit_int_info:      80000b0e\n";
        assert_eq!(
            l1_crash_signature(console).as_deref(),
            Some(
                "rip 0000000000566caf cpl 3 event 800000ec cr2 fffffe0000000080 idt mapped; \
                 rip ? cpl ? event 80000b0e cr2 ? idt ?"
            )
        );
        assert_eq!(l1_crash_signature("nothing"), None);
    }

    #[test]
    fn relayed_lines_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("retries.log");
        std::env::set_var(RETRY_LOG_ENV, &log);
        let out = format!("noise\n{MARK}t1: attempt 1/4: crashed\nmore\n{MARK}t2: redo\n");
        assert_eq!(relay(&out), 2);
        assert_eq!(relay("nothing here"), 0);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "t1: attempt 1/4: crashed\nt2: redo\n");
        std::env::remove_var(RETRY_LOG_ENV);
    }
}
