//! The shim's one error type: every operation of the task service returns a [`TaskError`],
//! and [`TaskError::code`] is the one place that decides which gRPC code containerd sees
//! (containerd maps them to its errdefs: `NOT_FOUND` after a kill is "already finished",
//! `FAILED_PRECONDITION` a wrong state, and so on).
//!
//! Messages may carry the guest's words (an agent error, the console's last lines): on their
//! way to containerd and to the shim's log they are escaped and cut
//! ([`crate::guard::text`]).

use containerd_shim::api::Status;
use containerd_shim::protos::ttrpc::{self, Code};
use moat_agent_protocol::ClientError;

use crate::config::ConfigError;
use crate::guard::limits::MAX_ERROR_MESSAGE;
use crate::guard::text::{escape_message, Untrusted};
use crate::host::hooks::HookError;
use crate::host::netns::NetnsError;
use crate::host::sizing::SizingError;
use crate::pod::io::IoError;
use crate::pod::layout::InvalidId;
use crate::pod::spec::SpecError;
use crate::pod::PodError;

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// An id in the request is not a safe path component.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The request is malformed (missing or undecodable field).
    #[error("{0}")]
    BadRequest(String),
    /// The bundle's OCI spec cannot be read or run in a VM.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The spec's hooks are malformed or ask for what a VM cannot do, or a
    /// `createRuntime`/`prestart` hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// No thread could be lent to the hooks in the container's network namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The shim's configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pod's VM size from annotations / CRI limits is refused.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// A stdio path is unsupported, or a stream to the agent failed.
    #[error(transparent)]
    Stdio(#[from] IoError),
    /// No such container in this shim.
    #[error("container {0:?} not found")]
    NoContainer(String),
    /// No such exec process in the container.
    #[error("exec {0:?} not found")]
    NoExec(String),
    /// The process has exited already (containerd ignores this for kills).
    #[error("process already finished")]
    Finished,
    /// A container with this id exists.
    #[error("container {0} exists")]
    ContainerExists(String),
    /// An exec with this id exists in the container.
    #[error("exec {0} exists")]
    ExecExists(String),
    /// The container's init process is not in the state the operation needs.
    #[error("container {id} is {status:?}")]
    WrongStatus {
        /// The container.
        id: String,
        /// Its init process's status.
        status: Status,
    },
    /// The container's init is still running (delete needs it stopped).
    #[error("container {0} is running: kill it first")]
    Running(String),
    /// The container's init has exited (no new execs).
    #[error("container {0} has exited")]
    Exited(String),
    /// The exec process was started already.
    #[error("exec {0} already started")]
    ExecStarted(String),
    /// The exec process was added but not started.
    #[error("exec {0} is not started")]
    ExecNotStarted(String),
    /// The exec process still runs (delete needs it stopped).
    #[error("exec {0} is running")]
    ExecRunning(String),
    /// The container names a pod other than the one this shim runs.
    #[error("container {container} belongs to pod {pod}, this shim runs pod {running}")]
    OtherPod {
        /// The container.
        container: String,
        /// Its pod.
        pod: String,
        /// The pod this shim runs.
        running: String,
    },
    /// The container's pod has no VM in this shim (its sandbox container was not created).
    #[error("pod {pod} of container {container} is not running in this shim")]
    PodNotHere {
        /// The container.
        container: String,
        /// Its pod.
        pod: String,
    },
    /// The pod has no VM (nothing was created yet, or it was torn down).
    #[error("the pod has no VM")]
    NoVm,
    /// The pod's VMM has exited.
    #[error("the pod's VM is gone ({0})")]
    VmGone(String),
    /// The operation is not supported by moat.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The pod could not be booted.
    #[error("pod {pod}: {source}")]
    Boot {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: Box<PodError>,
    },
    /// The container's host side (rootfs and shared mounts) could not be set up.
    #[error(transparent)]
    HostSetup(Box<PodError>),
    /// The agent refused or failed an RPC.
    #[error("{rpc}: {source}")]
    Agent {
        /// The agent RPC.
        rpc: &'static str,
        /// The client's error (carries the agent's gRPC code).
        #[source]
        source: Box<ClientError>,
    },
    /// The agent did not answer `StatsContainer` in time and no earlier statistics of the
    /// container exist to serve instead.
    #[error("container {id}: no statistics: the agent did not answer in time and never answered before ({source})")]
    NoStats {
        /// The container.
        id: String,
        /// The client's error.
        #[source]
        source: Box<ClientError>,
    },
    /// The shim failed on its own (a bug or an encoding error).
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    /// The gRPC code containerd receives for this error: the one mapping of the shim.
    pub fn code(&self) -> Code {
        use TaskError::*;
        match self {
            InvalidId(_) | BadRequest(_) | Spec(_) | Config(_) | Sizing(_) | OtherPod { .. } => {
                Code::INVALID_ARGUMENT
            }
            Stdio(IoError::Unsupported { .. }) | Hook(HookError::Invalid { .. }) => {
                Code::INVALID_ARGUMENT
            }
            Stdio(IoError::Deadline { .. }) | NoStats { .. } => Code::DEADLINE_EXCEEDED,
            NoContainer(_) | NoExec(_) | Finished => Code::NOT_FOUND,
            ContainerExists(_) | ExecExists(_) => Code::ALREADY_EXISTS,
            WrongStatus { .. }
            | Running(_)
            | Exited(_)
            | ExecStarted(_)
            | ExecNotStarted(_)
            | ExecRunning(_)
            | PodNotHere { .. }
            | NoVm => Code::FAILED_PRECONDITION,
            VmGone(_) => Code::UNAVAILABLE,
            Unsupported(_) => Code::UNIMPLEMENTED,
            Agent { source, .. } if source.is_timeout() => Code::DEADLINE_EXCEEDED,
            Agent { source, .. } => agent_code(source).unwrap_or(Code::UNKNOWN),
            Internal(_) => Code::INTERNAL,
            Stdio(_) | Boot { .. } | HostSetup(_) | Hook(_) | Netns(_) => Code::UNKNOWN,
        }
    }

    /// An agent RPC's error, named by the RPC.
    pub fn agent(rpc: &'static str) -> impl FnOnce(ClientError) -> TaskError {
        move |source| TaskError::Agent {
            rpc,
            source: Box::new(source),
        }
    }

    /// The message with every cause that the message does not already spell out.
    pub fn message(&self) -> String {
        chain_message(self)
    }
}

/// `e`'s message followed by each cause in its `source()` chain that the text so far does not
/// already contain (many errors print their cause inline).
pub fn chain_message(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

impl From<TaskError> for ttrpc::Error {
    /// The status containerd gets: the code, and the message escaped (lines kept) and cut at
    /// [`MAX_ERROR_MESSAGE`]; the log gets it escaped on one line.
    fn from(e: TaskError) -> ttrpc::Error {
        let code = e.code();
        let msg = e.message();
        match code {
            Code::INTERNAL | Code::UNKNOWN | Code::DEADLINE_EXCEEDED => {
                crate::plog!(Warn, "{}", Untrusted(&msg))
            }
            _ => crate::plog!(Debug, "{}", Untrusted(&msg)),
        }
        let msg = escape_message(&msg, MAX_ERROR_MESSAGE);
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
    }
}

/// The gRPC code of an agent error, in the shim protocol's ttrpc (a different ttrpc version
/// than the agent protocol's; the codes are gRPC's in both).
pub fn agent_code(e: &ClientError) -> Option<Code> {
    use containerd_shim::protos::protobuf::Enum;
    e.rpc_code().and_then(|c| Code::from_i32(c as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: TaskError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_containerd_relies_on() {
        assert_eq!(status_of(TaskError::Finished).0, Code::NOT_FOUND);
        assert_eq!(
            status_of(TaskError::NoContainer("c".into())),
            (Code::NOT_FOUND, "container \"c\" not found".into())
        );
        assert_eq!(
            status_of(TaskError::Running("c".into())).0,
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            status_of(TaskError::ContainerExists("c".into())).0,
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status_of(TaskError::VmGone("exit status 4".into())).0,
            Code::UNAVAILABLE
        );
        assert_eq!(
            status_of(TaskError::Unsupported(
                "checkpoint is not supported by moat"
            ))
            .0,
            Code::UNIMPLEMENTED
        );
        let unsupported = IoError::Unsupported { uri: "x".into() };
        assert_eq!(
            status_of(TaskError::Stdio(unsupported)).0,
            Code::INVALID_ARGUMENT
        );
    }

    #[test]
    fn guest_words_reach_containerd_escaped_and_cut() {
        let hostile = format!(
            "boom\" level=fatal msg=\"forged\u{1b}[2J{}",
            "x".repeat(10 << 20)
        );
        let e = TaskError::Boot {
            pod: "p".into(),
            source: Box::new(PodError::GuestPod(format!("first line\n{hostile}"))),
        };
        let (code, msg) = status_of(e);
        assert_eq!(code, Code::UNKNOWN);
        assert!(msg.len() <= MAX_ERROR_MESSAGE + 3, "{}", msg.len());
        // containerd quotes messages itself; what would act on a terminal is escaped.
        assert!(msg.contains(
            r#"first line
boom" level=fatal msg="forged\u{1b}[2J"#
        ));
        let deadline = IoError::Deadline {
            container: "c".into(),
            exec: String::new(),
            channel: moat_agent_protocol::stdio::Channel::Stdout,
            deadline: std::time::Duration::from_secs(10),
        };
        let (code, msg) = status_of(TaskError::Stdio(deadline));
        assert_eq!(code, Code::DEADLINE_EXCEEDED);
        assert!(msg.contains("within 10s"), "{msg}");
    }

    #[test]
    fn the_cause_chain_is_kept_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("middle")]
        struct Middle(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("outer: middle")]
        struct Outer(#[source] Middle);
        assert_eq!(chain_message(&Outer(Middle(Inner))), "outer: middle: inner");
        assert_eq!(TaskError::Internal("top".into()).message(), "top");
    }
}
