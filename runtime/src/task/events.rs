//! Task events to containerd, through the publisher the shim protocol hands the task service
//! (containerd's `TTRPC_ADDRESS`). A failed publish is logged: containerd also learns exits
//! from `Wait`, and a shim must not fail a task because its event bus hiccupped.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// Publishes events for one containerd namespace.
pub struct Events {
    publisher: Option<RemotePublisher>,
    namespace: String,
}

impl Events {
    /// Events through `publisher` in `namespace`; `None` drops them (unit tests).
    pub fn new(publisher: Option<RemotePublisher>, namespace: &str) -> Events {
        Events {
            publisher,
            namespace: namespace.into(),
        }
    }

    /// Publishes `event` on `topic` (one of `containerd_shim::protos::topics`).
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        crate::plog!(Debug, "event {topic}");
        if let Some(p) = &self.publisher {
            if let Err(e) = p.publish(Context::default(), topic, &self.namespace, event) {
                crate::plog!(Warn, "publishing {topic}: {e}");
            }
        }
    }
}
