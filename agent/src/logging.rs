//! Logging to the console with a `moat-agent:` prefix, so agent lines stand out in the guest's
//! serial log that the host keeps.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Prefix of every log line.
pub const PREFIX: &str = "moat-agent: ";

/// Writes each formatted event to stderr (the console, as PID 1) with [`PREFIX`], in one
/// `write` so lines of concurrent threads do not interleave.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixedStderr;

impl Write for PrefixedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut line = Vec::with_capacity(PREFIX.len() + buf.len());
        line.extend_from_slice(PREFIX.as_bytes());
        line.extend_from_slice(buf);
        io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for PrefixedStderr {
    type Writer = PrefixedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Installs the global subscriber with `filter` (an `EnvFilter` directive such as `debug` or
/// `moat_agent=trace`). A bad filter falls back to `info` and is reported in the returned
/// warning, to be logged once logging works.
pub fn init(filter: &str) -> Option<String> {
    let (env_filter, warning) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new("info"),
            Some(format!("bad log filter {filter:?} ({e}); using \"info\"")),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(PrefixedStderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    warning
}
