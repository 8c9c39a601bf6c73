//! Every agent RPC the shim makes, counted by method and result, and timed by method
//! (`moat_agent_rpcs_total`, `moat_agent_rpc_duration_seconds`).

use std::time::Duration;

use moat_agent_protocol::ClientError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of an RPC count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The agent method (`CreateContainer`, ...).
    pub method: &'static str,
    /// `ok`, `error` (the agent answered with an error, or the connection failed) or
    /// `timeout` (no answer within the call's deadline).
    pub result: &'static str,
}

/// The label of an RPC latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// The agent method.
    pub method: &'static str,
}

type Latencies = Family<MethodLabel, Histogram, fn() -> Histogram>;

/// RPC counts and latencies of one pod's agent client.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    calls: Family<RpcLabels, Counter>,
    latency: Latencies,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            calls: Family::default(),
            latency: Latencies::new_with_constructor(latency_histogram),
        }
    }
}

/// 0.5 ms to ~33 s, ×4 a bucket.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 4.0, 9))
}

impl RpcMetrics {
    /// Records one call of `method` that took `took` and ended in `result`.
    pub fn record<T>(&self, method: &'static str, took: Duration, result: &Result<T, ClientError>) {
        let result = match result {
            Ok(_) => "ok",
            Err(e) if e.is_timeout() => "timeout",
            Err(_) => "error",
        };
        self.calls
            .get_or_create(&RpcLabels { method, result })
            .inc();
        self.latency
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    /// Adds the two families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "moat_agent_rpcs",
            "Agent RPCs the shim made, by method and result",
            self.calls.clone(),
        );
        registry.register(
            "moat_agent_rpc_duration_seconds",
            "Time from sending an agent RPC to its answer (or deadline), by method",
            self.latency.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_result() {
        let m = RpcMetrics::default();
        m.record("StatsContainer", Duration::from_millis(2), &Ok::<(), _>(()));
        m.record("StatsContainer", Duration::from_millis(3), &Ok::<(), _>(()));
        let timeout: Result<(), _> = Err(ClientError::CallTimeout {
            method: "CreateContainer",
            timeout: Duration::from_secs(1),
            source: moat_agent_protocol::ttrpc::Error::Others("late".into()),
        });
        m.record("CreateContainer", Duration::from_secs(1), &timeout);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("moat_agent_rpcs_total{method=\"StatsContainer\",result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("moat_agent_rpcs_total{method=\"CreateContainer\",result=\"timeout\"} 1")
        );
        assert!(text.contains("moat_agent_rpc_duration_seconds_count{method=\"StatsContainer\"} 2"));
    }
}
