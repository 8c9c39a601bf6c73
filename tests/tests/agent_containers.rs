//! Fast container tests: the real `moat-agent` as PID 1 of fresh user/pid/mount/net/uts/ipc
//! namespaces on this host, serving on a unix socket (no VM), driven by `AgentClient` through
//! the shared flows of `moat_tests::agent::container_suite`. After each flow the agent must have no
//! child process left. What needs cgroup v2 (this host has v1) is covered by the real-guest
//! test, which runs the same flows.

use std::time::{Duration, Instant};

use moat_tests::agent::container_suite::{self as suite, Suite};
use moat_tests::agent::ns_agent::NsAgent;
use moat_tests::agent::oci;

fn with_agent(flow: fn(&Suite)) {
    let agent = NsAgent::start(&moat_tests::cargo_bin("moat-agent")).expect("agent in namespaces");
    let client = agent
        .client(Duration::from_secs(20))
        .expect("agent serving");
    let rootfs = agent.dir().join("rootfs");
    oci::busybox_rootfs(&rootfs, std::path::Path::new("/bin/busybox")).expect("rootfs");
    let log = || format!("--- agent log ---\n{}", agent.log());
    let s = Suite {
        client: &client,
        rootfs: rootfs.clone(),
        host_rootfs: rootfs,
        real_guest: false,
        context: &log,
    };
    flow(&s);
    // Nothing left behind: the reaper had its moment once this is empty.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = agent.agent_children();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = agent.agent_children();
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "processes left behind\n{}",
        log()
    );
}

#[test]
fn output_exit_codes_and_signals() {
    with_agent(suite::output_exit_codes_and_signals);
}

#[test]
fn stdio_is_byte_exact_for_10_mib_with_stdin_eof() {
    with_agent(suite::stdio_is_byte_exact_for_10_mib_with_stdin_eof);
}

#[test]
fn exec_joins_the_container_namespaces() {
    with_agent(suite::exec_joins_the_container_namespaces);
}

#[test]
fn tty_with_resize() {
    with_agent(suite::tty_with_resize);
}

#[test]
fn seccomp_capabilities_readonly_and_masked_paths() {
    with_agent(suite::seccomp_capabilities_readonly_and_masked_paths);
}

#[test]
fn bad_specs_get_clear_errors_and_leave_nothing() {
    with_agent(suite::bad_specs_get_clear_errors_and_leave_nothing);
}

#[test]
fn process_attributes() {
    with_agent(suite::process_attributes);
}

#[test]
fn user_namespace_with_id_maps() {
    with_agent(suite::user_namespace_with_id_maps);
}
