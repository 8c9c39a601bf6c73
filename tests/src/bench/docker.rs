//! The Docker benchmark (`moat-bench docker`): `docker run --rm IMAGE true` through Docker
//! Engine 26 (Debian 13's, on its own containerd 1.7: [`crate::docker`]) with moat and with
//! runc, alternating so drift hits both alike (after one warm-up of each); median wall times
//! and the moat/runc ratio. For moat that is dockerd's network setup, the shim, the hooks,
//! the VM boot, the container and the teardown. Reports, asserts nothing.

use std::ffi::OsString;

use super::report::{median, ms, ratio};
use crate::containerd::moat_stack;
use crate::containerd::oci_image::{build_busybox_image, DEFAULT_BUSYBOX_IMAGE};
use crate::docker::{Dockerd, DockerdOptions, MOAT_RUNTIME};

/// The image as Docker names it.
const IMAGE: &str = "moat/busybox:latest";

/// Starts a private dockerd with moat, runs `runs` alternating `docker run --rm` of each
/// runtime and prints the report; returns the medians (moat, runc), µs.
pub fn run(runs: u32) -> Result<(Option<u64>, Option<u64>), String> {
    let scratch = tempfile::Builder::new()
        .prefix("moat-bench-docker-")
        .tempdir()
        .map_err(|e| format!("a scratch dir: {e}"))?;
    let config = moat_stack::write_config(scratch.path())?;
    let shim = crate::try_cargo_bin("containerd-shim-moat-v2").map_err(|e| e.to_string())?;
    let opts = DockerdOptions {
        extra_path: vec![shim.parent().map(Into::into).unwrap_or_default()],
        env: vec![(OsString::from("MOAT_CONFIG"), config.into_os_string())],
    };
    let d = Dockerd::start(opts).map_err(|e| e.to_string())?;
    let tar = scratch.path().join("busybox.tar");
    build_busybox_image(&tar, DEFAULT_BUSYBOX_IMAGE).map_err(|e| e.to_string())?;
    d.load(&tar)?;
    let (mut moat, mut runc) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        for (runtime, into) in [(MOAT_RUNTIME, &mut moat), ("runc", &mut runc)] {
            let rt = format!("--runtime={runtime}");
            let o = d
                .docker(&["run", "--rm", &rt, IMAGE, "true"])
                .map_err(|e| e.to_string())?;
            if !o.status.success() {
                return Err(format!("docker run --rm {rt}: {}", o.stderr_str()));
            }
            if i > 0 {
                into.push(o.elapsed.as_micros() as u64);
            }
        }
    }
    let (m, r) = (median(moat), median(runc));
    println!(
        "moat-bench docker: docker run --rm IMAGE true, {runs} runs each (Docker 26.1, \
         containerd 1.7):  moat {}  runc {}  ratio moat/runc {}",
        ms(m, 0),
        ms(r, 0),
        ratio(m, r)
    );
    let left = d.stop();
    if !left.is_empty() {
        return Err(format!("the docker harness left {left:?}"));
    }
    Ok((m, r))
}
