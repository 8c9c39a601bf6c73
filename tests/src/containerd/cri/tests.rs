use super::*;

fn who() -> PodIdentity {
    PodIdentity {
        name: "p".into(),
        namespace: "ns".into(),
        uid: "u1".into(),
    }
}

#[test]
fn pod_config_is_the_kubelets_default() {
    let c = pod_config(&who(), "h", Path::new("/logs"));
    let m = c.metadata.as_ref().unwrap();
    assert_eq!(
        (m.name.as_str(), m.namespace.as_str(), m.uid.as_str()),
        ("p", "ns", "u1")
    );
    assert_eq!(
        (c.hostname.as_str(), c.log_directory.as_str()),
        ("h", "/logs")
    );
    assert_eq!(c.labels["io.kubernetes.pod.uid"], "u1");
    let dns = c.dns_config.as_ref().unwrap();
    assert_eq!(dns.searches[0], "ns.svc.cluster.local");
    let linux = c.linux.as_ref().unwrap();
    assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/podu1");
    let sc = linux.security_context.as_ref().unwrap();
    let ns = sc.namespace_options.as_ref().unwrap();
    assert_eq!(
        (ns.network, ns.pid, ns.ipc),
        (
            api::NamespaceMode::Pod as i32,
            api::NamespaceMode::Container as i32,
            api::NamespaceMode::Pod as i32
        )
    );
    let unconfined = api::security_profile::ProfileType::Unconfined as i32;
    assert_eq!(sc.seccomp.as_ref().unwrap().profile_type, unconfined);
}

#[test]
fn container_config_is_the_kubelets_default() {
    let c = container_config(&who(), "c", "img", &["sh"], &["-c", "x"], &[("A", "1")]);
    assert_eq!(c.metadata.as_ref().unwrap().name, "c");
    assert_eq!(c.image.as_ref().unwrap().image, "img");
    assert_eq!(
        (c.command.len(), c.args.len(), c.envs[0].key.as_str()),
        (1, 2, "A")
    );
    assert_eq!(c.log_path, "c/0.log");
    assert_eq!(c.labels["io.kubernetes.container.name"], "c");
    let linux = c.linux.as_ref().unwrap();
    assert_eq!(linux.resources.as_ref().unwrap().cpu_shares, 2);
    let sc = linux.security_context.as_ref().unwrap();
    assert_eq!(sc.masked_paths.len(), DEFAULT_MASKED_PATHS.len());
    assert!(sc.readonly_paths.iter().any(|p| p == "/proc/sys"));
    let m = bind_mount(Path::new("/h"), "/c", true);
    assert_eq!(
        (m.host_path.as_str(), m.container_path.as_str(), m.readonly),
        ("/h", "/c", true)
    );
}

#[test]
fn connecting_to_no_socket_is_a_typed_error() {
    let e = CriClient::connect(Path::new("/nonexistent/moat-cri.sock")).err();
    let e = e.expect("connected to a socket that does not exist");
    assert!(matches!(e, CriError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/moat-cri.sock"), "{e}");
}
