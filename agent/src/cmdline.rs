//! Options for the agent on the guest kernel command line (`/proc/cmdline`).
//!
//! The kernel does not hand dotted parameters (`moat.log=debug`) to init as arguments or
//! environment, so the agent reads them from `/proc/cmdline` itself:
//!
//! | parameter | meaning |
//! |---|---|
//! | `moat.log=FILTER` | log filter (`debug`, `moat_agent=trace`...), like `--log-level` |
//! | `moat.share=TAG[:/MOUNT/POINT]` | mount the virtio-fs share `TAG` (default mount point `/run/moat/shares/TAG`); repeatable |
//! | `moat.debug_console=1` | serve the debug console on vsock port 1026 (`0`: don't, the default) |
//!
//! Unknown `moat.*` parameters are reported (logged as warnings), everything else is ignored.

/// Path of the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// The agent options found on a kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CmdlineOptions {
    /// `moat.log=`: log filter.
    pub log: Option<String>,
    /// `moat.share=`: virtio-fs shares to mount, as (tag, absolute mount point).
    pub shares: Vec<(String, String)>,
    /// `moat.debug_console=1`: serve the debug console
    /// ([`moat_agent_protocol::console`]); off unless the last occurrence says `1`.
    pub debug_console: bool,
    /// `moat.*` parameters this agent does not know (or can't use), as written.
    pub unknown: Vec<String>,
}

/// Where `moat.share=TAG` is mounted when no mount point is given.
pub const DEFAULT_SHARE_DIR: &str = "/run/moat/shares";

/// Parses `TAG[:/MOUNT/POINT]`: the tag is 1..=36 bytes of `[A-Za-z0-9_-]` (the virtio-fs
/// limit), the mount point absolute without `..`.
pub fn parse_share(value: &str) -> Option<(String, String)> {
    let (tag, mount_point) = match value.split_once(':') {
        Some((tag, mp)) => (tag, mp.to_string()),
        None => (value, format!("{DEFAULT_SHARE_DIR}/{value}")),
    };
    let tag_ok = (1..=36).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mp_ok = mount_point.starts_with('/') && !mount_point.split('/').any(|c| c == "..");
    (tag_ok && mp_ok).then(|| (tag.to_string(), mount_point))
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
            Some(("debug_console", "1")) => opts.debug_console = true,
            Some(("debug_console", "0")) => opts.debug_console = false,
            Some(("share", v)) => match parse_share(v) {
                Some(share) => opts.shares.push(share),
                None => opts.unknown.push(word),
            },
            _ => opts.unknown.push(word),
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_parsed_and_checked() {
        let o = parse("moat.share=pod moat.share=data:/mnt/data moat.share=bad/tag moat.share=x:rel moat.share=y:/a/../b");
        assert_eq!(
            o.shares,
            vec![
                ("pod".to_string(), "/run/moat/shares/pod".to_string()),
                ("data".to_string(), "/mnt/data".to_string()),
            ]
        );
        assert_eq!(o.unknown.len(), 3, "{:?}", o.unknown);
        assert_eq!(parse_share(&"t".repeat(37)), None);
    }

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
    fn debug_console_is_off_unless_asked() {
        assert!(!parse("console=ttyS0 moat.log=debug").debug_console);
        let o = parse("moat.debug_console=1");
        assert!(o.debug_console && o.unknown.is_empty());
        let o = parse("moat.debug_console=1 moat.debug_console=0");
        assert!(!o.debug_console && o.unknown.is_empty());
        // Anything but 0 or 1 is reported and changes nothing.
        let o = parse(
            "moat.debug_console=1 moat.debug_console=yes moat.debug_console moat.debug_console=",
        );
        assert!(o.debug_console);
        assert_eq!(
            o.unknown,
            vec![
                "moat.debug_console=yes",
                "moat.debug_console",
                "moat.debug_console="
            ]
        );
        let o = parse("moat.debug_console=true");
        assert!(!o.debug_console);
        assert_eq!(o.unknown, vec!["moat.debug_console=true"]);
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
