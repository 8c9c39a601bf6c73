//! `RunPodSandbox` with `linux.resources`: the pod's summed container limits, which the kubelet
//! (CRI v1.27+) sends and containerd ≥ 1.7 passes to the runtime as the sandbox's
//! `io.kubernetes.cri.sandbox-{cpu-period,cpu-quota,cpu-shares,memory}` annotations. k8s-cri
//! 0.5's generated `LinuxPodSandboxConfig` predates the field, so the request is built here:
//! protobuf merges a message field that occurs twice, and the config sent is the generated
//! `PodSandboxConfig` encoded, followed by a patch that holds only `linux.resources`.

use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;

use super::{api, CriClient, CriError};

/// `LinuxPodSandboxConfig` with only `resources` (field 5 of the CRI v1 message).
#[derive(Clone, PartialEq, Message)]
struct LinuxResourcesPatch {
    #[prost(message, optional, tag = "5")]
    resources: Option<api::LinuxContainerResources>,
}

/// `PodSandboxConfig` with only `linux` (field 8).
#[derive(Clone, PartialEq, Message)]
struct ConfigPatch {
    #[prost(message, optional, tag = "8")]
    linux: Option<LinuxResourcesPatch>,
}

/// `RunPodSandboxRequest` with its config as encoded bytes (the same wire type as a message).
#[derive(Clone, PartialEq, Message)]
struct RawRunPodSandboxRequest {
    #[prost(bytes = "vec", tag = "1")]
    config: Vec<u8>,
    #[prost(string, tag = "2")]
    runtime_handler: String,
}

/// `config` encoded with `linux.resources` = `resources`.
fn config_with_resources(
    config: &api::PodSandboxConfig,
    resources: &api::LinuxContainerResources,
) -> Vec<u8> {
    let mut bytes = config.encode_to_vec();
    let patch = ConfigPatch {
        linux: Some(LinuxResourcesPatch {
            resources: Some(resources.clone()),
        }),
    };
    bytes.extend(patch.encode_to_vec());
    bytes
}

impl CriClient {
    /// `RunPodSandbox` of `config` with `linux.resources` = `resources` (see the module doc),
    /// runtime handler `handler`; returns the pod's id.
    pub fn run_pod_sandbox_with_resources(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
        resources: &api::LinuxContainerResources,
    ) -> Result<String, CriError> {
        let req = RawRunPodSandboxRequest {
            config: config_with_resources(config, resources),
            runtime_handler: handler.into(),
        };
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = PathAndQuery::from_static("/runtime.v1.RuntimeService/RunPodSandbox");
            let codec = tonic::codec::ProstCodec::<_, api::RunPodSandboxResponse>::default();
            grpc.unary(tonic::Request::new(req), path, codec).await
        };
        Ok(self.call("RunPodSandbox", call)?.pod_sandbox_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patched bytes decode as the config, and carry the resources at
    /// `linux` (8) / `resources` (5) for a reader that knows the field.
    #[test]
    fn the_patch_merges_into_the_config() {
        let mut config = api::PodSandboxConfig {
            hostname: "h".into(),
            ..Default::default()
        };
        config.linux = Some(api::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/pod1".into(),
            ..Default::default()
        });
        let resources = api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        };
        let bytes = config_with_resources(&config, &resources);
        assert_eq!(api::PodSandboxConfig::decode(&*bytes).unwrap(), config);
        let patch = ConfigPatch::decode(&*bytes).unwrap();
        assert_eq!(patch.linux.unwrap().resources.unwrap(), resources);
    }
}
