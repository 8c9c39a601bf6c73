//! The stdio listener: accepts streams (AF_VSOCK in the guest, AF_UNIX in tests), reads each
//! one's header, attaches it and runs its copy loop in a thread of its own.

use std::io::Write;
use std::os::unix::io::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_agent_protocol::stdio::{self as wire, Channel, StreamHeader};

use super::{copy, StdioError, StdioHub};
use crate::listener::{self, Conn};

/// Longest wait for a stream's header line (and for the reply to be written).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the accept loop on `listener`: each stream is served in a thread of its own.
pub(super) fn serve(hub: Arc<StdioHub>, listener: OwnedFd) -> Result<JoinHandle<()>, StdioError> {
    listener::serve(listener, "stdio", move |conn| {
        let hub = Arc::clone(&hub);
        if let Err(e) = std::thread::Builder::new()
            .name("stdio-stream".into())
            .spawn(move || handle(&hub, conn))
        {
            tracing::error!("stdio listener: spawning a stream thread: {e}; dropping the stream");
        }
    })
    .map_err(|source| StdioError::Io {
        what: "starting the stdio accept thread".into(),
        source,
    })
}

/// Serves one accepted stream: header, reply, then the copy loop (in the calling thread).
pub(crate) fn handle(hub: &StdioHub, mut conn: Conn) {
    let header = match read_header(&mut conn, hub.header_timeout) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("stdio stream refused: {e}");
            let _ = conn.write_all(&wire::error_reply(&e.to_string()));
            return;
        }
    };
    let who = format!(
        "{:?}/{:?} {}",
        header.container_id, header.exec_id, header.channel
    );
    let attachment = match hub.attach(&header) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!("stdio stream for {who} refused: {e}");
            let _ = conn.write_all(&wire::error_reply(&e.to_string()));
            return;
        }
    };
    if let Err(e) = conn.write_all(wire::REPLY_OK) {
        tracing::warn!("stdio stream for {who}: writing OK: {e}; channel lost");
        return;
    }
    if let Err(e) = conn.set_timeouts(None) {
        tracing::warn!("stdio stream for {who}: clearing timeouts: {e}; channel lost");
        return;
    }
    tracing::debug!("stdio stream for {who} attached");
    match header.channel {
        Channel::Stdin => copy::stdin(&who, conn, attachment),
        Channel::Stdout | Channel::Stderr => copy::output(&who, conn, attachment),
    }
}

/// Reads the header within `timeout` (the timeouts stay set for the reply).
fn read_header(conn: &mut Conn, timeout: Duration) -> Result<StreamHeader, StdioError> {
    conn.set_timeouts(Some(timeout))
        .map_err(|source| StdioError::Io {
            what: "setting the stdio header timeout".into(),
            source,
        })?;
    Ok(wire::read_header(conn)?)
}
