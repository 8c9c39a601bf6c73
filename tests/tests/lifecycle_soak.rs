//! The pod lifecycle soak (`moat_tests::soak`) at CI size: a few rounds of pods created and
//! torn down at once through containerd (plain runs, exec and stop, VMM or shim killed with
//! SIGKILL, containerd restarted under running pods), nothing left after any round. Runs in
//! the test host unless this machine has hardware KVM. `moat-soak pods` runs it at any size.

use moat_tests::containerd::moat_stack::with_stack_mut;
use moat_tests::soak;

/// Fresh test hosts the soak may use when a guest crashes (`moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 3;
/// Rounds at CI size: two of pods living every life, one with containerd restarted.
const ROUNDS: usize = soak::RESTART_EVERY;
/// Pods at once.
const PODS: usize = 2;

#[test]
fn lifecycle_soak() {
    moat_tests::on_kvm_retrying("lifecycle_soak", ATTEMPTS, || {
        with_stack_mut(
            |_| {},
            |s| {
                let r = soak::run(s, ROUNDS, PODS).unwrap_or_else(|e| panic!("{e}"));
                println!("{r:?}");
                assert_eq!((r.rounds, r.restarts), (ROUNDS, 1));
            },
        )
    });
}
