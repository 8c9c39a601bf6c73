//! Container flows against a moat-agent, shared by the fast tests (agent in host namespaces)
//! and the real-guest tests: create, attach stdio, start, collect output, wait, remove.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::stdio::{Channel, Channels};
use moat_agent_protocol::{AgentClient, ClientError, CreateOptions};
use serde_json::Value;

/// How long a test waits for a process.
pub const WAIT: Duration = Duration::from_secs(60);

/// The outcome of a process.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Exit code, or 128 + signal.
    pub status: i32,
    /// Whether a signal killed it.
    pub signaled: bool,
}

impl Outcome {
    /// stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Attached stdio of one process: readers run in threads from the moment of attach.
pub struct Attached {
    stdin: Option<UnixStream>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn reader(mut s: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v
    })
}

impl Attached {
    /// Opens the streams named by `channels` for (`id`, `exec_id`).
    pub fn open(
        client: &AgentClient,
        id: &str,
        exec_id: &str,
        channels: Channels,
    ) -> Result<Attached, ClientError> {
        let open = |c| client.open_stdio(id, exec_id, c);
        Ok(Attached {
            stdin: if channels.stdin {
                Some(open(Channel::Stdin)?)
            } else {
                None
            },
            stdout: if channels.stdout {
                Some(reader(open(Channel::Stdout)?))
            } else {
                None
            },
            stderr: if channels.stderr {
                Some(reader(open(Channel::Stderr)?))
            } else {
                None
            },
        })
    }

    /// The stdin stream (for writes), if attached.
    pub fn stdin(&mut self) -> Option<&mut UnixStream> {
        self.stdin.as_mut()
    }

    /// Writes `data` to stdin in a thread and half-closes it (EOF for the process).
    pub fn feed(&mut self, data: Vec<u8>) -> Option<JoinHandle<std::io::Result<()>>> {
        let mut s = self.stdin.take()?;
        Some(std::thread::spawn(move || {
            s.write_all(&data)?;
            s.shutdown(Shutdown::Write)
        }))
    }

    /// Closes stdin (EOF) without writing.
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.take() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Waits for the output streams to end.
    pub fn collect(self) -> (Vec<u8>, Vec<u8>) {
        let join = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        (join(self.stdout), join(self.stderr))
    }
}

/// Waits for a process and collects its output.
pub fn finish(
    client: &AgentClient,
    id: &str,
    exec_id: &str,
    attached: Attached,
) -> Result<Outcome, ClientError> {
    let w = client.wait_process(id, exec_id, Some(WAIT))?;
    let (stdout, stderr) = attached.collect();
    Ok(Outcome {
        stdout,
        stderr,
        status: w.status,
        signaled: w.signaled,
    })
}

/// Creates container `id` from `spec`, attaches stdout and stderr (and stdin with `input`),
/// starts it, waits, removes it. Returns its outcome.
pub fn run(
    client: &AgentClient,
    id: &str,
    spec: &Value,
    input: Option<Vec<u8>>,
) -> Result<Outcome, ClientError> {
    run_with(client, id, spec, input, CreateOptions::default())
}

/// [`run`] with the agent's create options.
pub fn run_with(
    client: &AgentClient,
    id: &str,
    spec: &Value,
    input: Option<Vec<u8>>,
    options: CreateOptions,
) -> Result<Outcome, ClientError> {
    let channels = Channels {
        stdin: input.is_some(),
        stdout: true,
        stderr: !spec["process"]["terminal"].as_bool().unwrap_or(false),
    };
    client.create_container(id, &spec.to_string(), channels, options)?;
    let mut att = Attached::open(client, id, "", channels)?;
    let feeder = input.and_then(|data| att.feed(data));
    client.start_container(id)?;
    let outcome = finish(client, id, "", att)?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    client.remove_container(id, None)?;
    Ok(outcome)
}

/// An exec'd process: attaches stdout/stderr, waits, returns its outcome.
pub fn exec(
    client: &AgentClient,
    id: &str,
    exec_id: &str,
    process: &Value,
) -> Result<Outcome, ClientError> {
    let channels = Channels {
        stdin: false,
        stdout: true,
        stderr: true,
    };
    client.exec_process(id, exec_id, &process.to_string(), channels)?;
    let att = Attached::open(client, id, exec_id, channels)?;
    finish(client, id, exec_id, att)
}
