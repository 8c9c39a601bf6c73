//! Options for the agent on the guest kernel command line (`/proc/cmdline`).
//!
//! The kernel does not hand dotted parameters (`moat.log=debug`) to init as arguments or
//! environment, so the agent reads them from `/proc/cmdline` itself:
//!
//! | parameter | meaning |
//! |---|---|
//! | `moat.log=FILTER` | log filter (`debug`, `moat_agent=trace`...), like `--log-level` |
//!
//! Unknown `moat.*` parameters are reported (logged as warnings), everything else is ignored.

/// Path of the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// The agent options found on a kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CmdlineOptions {
    /// `moat.log=`: log filter.
    pub log: Option<String>,
    /// `moat.*` parameters this agent does not know, as written.
    pub unknown: Vec<String>,
}

impl CmdlineOptions {
    /// Reads and parses `/proc/cmdline`.
    pub fn from_proc() -> std::io::Result<Self> {
        Ok(parse(&std::fs::read_to_string(PROC_CMDLINE)?))
    }
}

/// Splits a command line the way the kernel does: on whitespace, with double quotes grouping
/// (the quotes themselves are dropped, `a="b c"` is the word `a=b c`).
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Parses the agent's options out of a kernel command line. The last occurrence wins.
pub fn parse(cmdline: &str) -> CmdlineOptions {
    let mut opts = CmdlineOptions::default();
    for word in split_words(cmdline) {
        let Some(rest) = word.strip_prefix("moat.") else {
            continue;
        };
        match rest.split_once('=') {
            Some(("log", v)) if !v.is_empty() => opts.log = Some(v.to_string()),
            _ => opts.unknown.push(word),
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_log_level() {
        let o = parse("console=ttyS0 reboot=k panic=1 moat.log=debug rdinit=/init\n");
        assert_eq!(o.log.as_deref(), Some("debug"));
        assert!(o.unknown.is_empty());
    }

    #[test]
    fn last_wins_and_quotes_group() {
        let o = parse(r#"moat.log=info "moat.log=moat_agent=trace,ttrpc=debug""#);
        assert_eq!(o.log.as_deref(), Some("moat_agent=trace,ttrpc=debug"));
        let o = parse(r#"moat.log="warn""#);
        assert_eq!(o.log.as_deref(), Some("warn"));
    }

    #[test]
    fn reports_unknown_and_ignores_foreign() {
        let o = parse("moat.bogus=1 moat.log= moat foo.log=debug moatlog=x");
        assert_eq!(o.log, None);
        assert_eq!(o.unknown, vec!["moat.bogus=1", "moat.log="]);
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split_words("  a  b=\"c d\"\te\n\"\" "),
            vec!["a", "b=c d", "e", ""]
        );
        assert!(split_words("").is_empty());
    }
}
