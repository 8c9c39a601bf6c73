//! Docker Engine 26 drives moat (issue 14): a private dockerd from Debian 13 with its own
//! containerd 1.7 (`moat_tests::docker`), moat registered in `daemon.json`, a locally built
//! busybox image loaded with `docker load`. Every flow runs under runc first (the baseline,
//! so a failure is moat's), then under moat, and after each moat flow nothing of moat is
//! left: `docker run --rm` (output, exit code), `-i` (stdin), `-t` (a terminal), `run -d` +
//! `exec` + `logs` + `stats --no-stream` + `stop` / `kill` / `rm -f`, `--memory` / `--cpus`
//! in the guest's cgroup, and `-p HOST:CTR` reaching busybox httpd in the container through
//! Docker's bridge network (dockerd's prestart hook moves the veth into the namespace moat
//! made, moat moves its addresses into the VM).
//!
//! Runs in the test host (nested KVM) unless this machine has hardware KVM; needs the
//! trixie prefix (`tests/scripts/fetch-trixie.sh`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use moat_tests::containerd::moat_stack::{self, leftovers_since, mount_table};
use moat_tests::containerd::oci_image::{build_busybox_image, DEFAULT_BUSYBOX_IMAGE};
use moat_tests::containerd::CtrOutput;
use moat_tests::docker::{Dockerd, DockerdOptions, MOAT_RUNTIME};

/// Fresh test hosts the flow may use when the guest crashes (`moat_tests::on_kvm_retrying`).
const ATTEMPTS: usize = 3;
/// The test host's time limit this test needs, unless the environment sets one.
const TEST_HOST_SECS: &str = "1500";
/// The image as Docker names it.
const IMAGE: &str = "moat/busybox:latest";
/// How long a published port may take to answer.
const PORT_WAIT: Duration = Duration::from_secs(90);
/// How long moat's processes, pod directories and mounts may take to go after a delete.
const LEFTOVER_WAIT: Duration = Duration::from_secs(20);

/// A dockerd with moat registered, the busybox image loaded, the host's mounts at the start.
struct Docker {
    d: Dockerd,
    baseline: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
}

#[test]
fn docker_runs_containers_on_moat_as_on_runc() {
    if std::env::var_os(moat_tests::TIMEOUT_ENV).is_none() {
        std::env::set_var(moat_tests::TIMEOUT_ENV, TEST_HOST_SECS);
    }
    moat_tests::on_kvm_retrying(
        "docker_runs_containers_on_moat_as_on_runc",
        ATTEMPTS,
        || {
            let docker = Docker::start();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for (runtime, port) in [("runc", 18081), (MOAT_RUNTIME, 18080)] {
                    docker.run_rm(runtime);
                    docker.detached(runtime);
                    docker.limits(runtime);
                    docker.published_port(runtime, port);
                }
            }));
            if let Err(p) = r {
                let log = docker.d.log();
                eprintln!("--- dockerd log ---\n{log}");
                docker.remove_all();
                // A flaky nested-virtualization triple fault is worth a fresh test host.
                let crash = log
                    .lines()
                    .find(|l| l.contains("guest crashed") || l.contains("triple fault"));
                if let Some(why) = crash {
                    return Err(why.to_string());
                }
                std::panic::resume_unwind(p);
            }
            let left = docker.d.stop();
            assert!(left.is_empty(), "the docker harness left {left:?}");
            Ok(())
        },
    );
}

impl Docker {
    fn start() -> Docker {
        let scratch = tempfile::Builder::new()
            .prefix("moat-docker-")
            .tempdir()
            .unwrap();
        let config = moat_stack::write_config(scratch.path()).unwrap_or_else(|e| panic!("{e}"));
        let shim =
            moat_tests::try_cargo_bin("containerd-shim-moat-v2").unwrap_or_else(|e| panic!("{e}"));
        let opts = DockerdOptions {
            extra_path: vec![shim.parent().unwrap().to_path_buf()],
            env: vec![(OsString::from("MOAT_CONFIG"), config.into_os_string())],
        };
        let d = Dockerd::start(opts).unwrap_or_else(|e| panic!("{e}"));
        let tar = scratch.path().join("busybox.tar");
        build_busybox_image(&tar, DEFAULT_BUSYBOX_IMAGE).unwrap_or_else(|e| panic!("{e}"));
        d.load(&tar).unwrap_or_else(|e| panic!("{e}"));
        let info = d.docker(&["info", "--format", "{{.ServerVersion}} {{json .Runtimes}}"]);
        println!(
            "docker info: {}",
            info.map(|o| o.stdout_str()).unwrap_or_default()
        );
        Docker {
            d,
            baseline: mount_table(),
            _scratch: scratch,
        }
    }

    /// Force-removes every container (after a failed flow).
    fn remove_all(&self) {
        let ids = self
            .d
            .docker(&["ps", "-aq"])
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self.d.docker(&["rm", "-f", id]);
        }
    }

    /// `docker ARGS`, which must exit with `code`; its stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        self.expect_with(code, args, None)
    }

    fn expect_with(&self, code: i32, args: &[&str], stdin: Option<&[u8]>) -> String {
        let o = self
            .d
            .docker_with(args, stdin, moat_tests::docker::DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.code(), Some(code), "docker {args:?}: {}", show(&o));
        o.stdout_str()
    }

    /// `docker run --rm`: output and exit code, stdin, a terminal.
    fn run_rm(&self, runtime: &str) {
        let rt = format!("--runtime={runtime}");
        let started = Instant::now();
        let out = self.expect(
            7,
            &["run", "--rm", &rt, IMAGE, "sh", "-c", "echo hi; exit 7"],
        );
        assert_eq!(out, "hi\n", "{runtime}");
        // One sample, for the log (the benchmark is `moat-bench docker`).
        let took = started.elapsed().as_secs_f64();
        println!("{runtime}: docker run --rm took {took:.2} s");
        let data = b"stdin reaches the container\n".repeat(1000);
        let out = self.expect_with(
            0,
            &["run", "--rm", "-i", &rt, IMAGE, "sha256sum"],
            Some(&data),
        );
        let want = format!("{}  -\n", sha256_hex(&data));
        assert_eq!(out, want, "{runtime}: stdin");
        let out = self.expect(0, &["run", "--rm", "-t", &rt, IMAGE, "tty"]);
        assert_eq!(out.trim_end(), "/dev/pts/0", "{runtime}: -t");
        self.check_no_leftovers(runtime);
    }

    /// `run -d`, then exec, logs, stats, stop; kill; rm -f.
    fn detached(&self, runtime: &str) {
        let rt = format!("--runtime={runtime}");
        let name = format!("moat-detached-{runtime}");
        let script = "echo logged; trap 'echo bye; exit 0' TERM; while :; do sleep 1; done";
        self.expect(
            0,
            &["run", "-d", "--name", &name, &rt, IMAGE, "sh", "-c", script],
        );
        let out = self.expect(3, &["exec", &name, "sh", "-c", "echo in; exit 3"]);
        assert_eq!(out, "in\n", "{runtime}: exec");
        let logs = self.expect(0, &["logs", &name]);
        assert_eq!(logs, "logged\n", "{runtime}: logs");
        let stats = self.expect(
            0,
            &[
                "stats",
                "--no-stream",
                "--format",
                "{{.Name}} {{.MemUsage}}",
                &name,
            ],
        );
        assert!(
            stats.starts_with(&name) && stats.contains("iB"),
            "{runtime}: stats {stats}"
        );
        self.expect(0, &["stop", "-t", "20", &name]);
        let state = self.expect(0, &["inspect", "-f", "{{.State.ExitCode}}", &name]);
        assert_eq!(state.trim(), "0", "{runtime}: stopped by its TERM trap");
        assert!(
            self.expect(0, &["logs", &name]).ends_with("bye\n"),
            "{runtime}"
        );
        self.expect(0, &["rm", &name]);
        self.expect(
            0,
            &["run", "-d", "--name", &name, &rt, IMAGE, "sleep", "600"],
        );
        self.expect(0, &["kill", &name]);
        let state = self.expect(0, &["inspect", "-f", "{{.State.ExitCode}}", &name]);
        assert_eq!(state.trim(), "137", "{runtime}: killed");
        self.expect(0, &["rm", &name]);
        self.expect(
            0,
            &["run", "-d", "--name", &name, &rt, IMAGE, "sleep", "600"],
        );
        self.expect(0, &["rm", "-f", &name]);
        self.check_no_leftovers(runtime);
    }

    /// `--memory` and `--cpus` reach the container's cgroup.
    fn limits(&self, runtime: &str) {
        let rt = format!("--runtime={runtime}");
        let read = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max";
        let out = self.expect(
            0,
            &[
                "run", "--rm", &rt, "--memory", "200m", "--cpus", "0.5", IMAGE, "sh", "-c", read,
            ],
        );
        assert_eq!(out, "209715200\n50000 100000\n", "{runtime}: limits");
        self.check_no_leftovers(runtime);
    }

    /// `-p PORT:80` reaches busybox httpd in the container through Docker's network.
    fn published_port(&self, runtime: &str, port: u16) {
        let rt = format!("--runtime={runtime}");
        let name = format!("moat-web-{runtime}");
        let publish = format!("{port}:80");
        let web = "mkdir -p /www && echo moat-web > /www/index.html && exec httpd -f -p 80 -h /www";
        self.expect(
            0,
            &[
                "run", "-d", "--name", &name, "-p", &publish, &rt, IMAGE, "sh", "-c", web,
            ],
        );
        let started = Instant::now();
        let page = loop {
            match http_get(port) {
                Ok(page) if page.contains("moat-web") => break page,
                other if started.elapsed() > PORT_WAIT => {
                    let ip = self.expect(
                        0,
                        &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name],
                    );
                    self.network_report(&name, ip.trim());
                    panic!(
                        "{runtime}: port {port} (container {}) gave {other:?}",
                        ip.trim()
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        println!(
            "{runtime}: port {port} answered in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            page.lines().last().unwrap_or("")
        );
        self.expect(0, &["rm", "-f", &name]);
        self.check_no_leftovers(runtime);
    }

    /// Prints what the container and the host see of the container's network.
    fn network_report(&self, name: &str, ip: &str) {
        let inside = "ip addr; ip route; netstat -ltn; cat /proc/net/arp";
        let o = self.d.docker(&["exec", name, "sh", "-c", inside]);
        println!(
            "in {name}: {}",
            o.map(|o| show(&o)).unwrap_or_else(|e| e.to_string())
        );
        let host = format!(
            "ip addr show docker0; ip neigh; ping -c 2 -W 2 {ip}; \
             iptables -t nat -S 2>&1 | head -30"
        );
        let o = std::process::Command::new("sh")
            .args(["-c", &host])
            .output();
        if let Ok(o) = o {
            println!(
                "host: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    /// Nothing of moat is left: no shim or VMM, no pod directory, no mount under the state
    /// dir or anywhere else that was not there when dockerd was up.
    fn check_no_leftovers(&self, runtime: &str) {
        if let Some(left) = leftovers_since(&self.baseline, None, LEFTOVER_WAIT) {
            panic!("after the {runtime} flow: {left}");
        }
    }
}

/// `GET /` on 127.0.0.1:`port`: the whole response.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    Ok(page)
}

fn show(o: &CtrOutput) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        o.stdout_str(),
        o.stderr_str()
    )
}

/// SHA-256 of `data` in hex, as busybox's `sha256sum` prints it.
fn sha256_hex(data: &[u8]) -> String {
    let digest = moat_tests::containerd::oci_image::sha256_digest(data);
    digest.trim_start_matches("sha256:").to_string()
}
