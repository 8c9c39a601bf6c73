//! Bulk byte streams over moat-vmm's virtio-vsock with a real guest: 64 parallel connections
//! each move 1 MiB both ways intact through `moat-vsock-echo` in the guest, and one
//! connection measures host <-> guest throughput (inside the test host here).
//!
//! The host side speaks Firecracker's hybrid protocol on the VMM's unix socket:
//! `CONNECT <port>\n` → `OK <host_port>\n`, then a byte stream to the guest port.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_tests::guest::{GuestImage, VSOCK_ECHO_PORT};
use moat_vmm::exit::EXIT_GUEST_CRASH;

/// Parallel connections in the integrity run, unless `$MOAT_VSOCK_CONNECTIONS` says otherwise.
const CONNECTIONS: usize = 64;
/// Bytes each of them sends (and expects back).
const PER_CONNECTION: usize = 1 << 20;
/// Bytes the single-connection throughput run sends (and expects back), unless
/// `$MOAT_VSOCK_THROUGHPUT_MIB` says otherwise.
const THROUGHPUT_MIB: usize = 64;
/// How long the guest gets to boot and start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// A stream that moves nothing for this long fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per write(2).
const CHUNK: usize = 64 * 1024;
/// Attempts when the guest crashes (only in the nested test host).
const ATTEMPTS: usize = 3;

/// The VMM child; killed on drop if the test fails early.
struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Vm {
    /// The guest console, then the tail of moat-vmm's stderr.
    fn console(&self) -> String {
        let console = std::fs::read_to_string(self.dir.join("console")).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "{console}\n--- moat-vmm stderr ({} lines, last 40) ---\n{tail}",
            lines.len()
        )
    }

    /// `Err` with the console when moat-vmm has exited because the guest crashed (exit
    /// status 4: a triple fault, which the nested test host causes at times).
    fn check_crash(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(st)) if st.code() == Some(EXIT_GUEST_CRASH) => Err(format!(
                "moat-vmm exited {st}: the guest crashed\n{}",
                self.console()
            )),
            _ => Ok(()),
        }
    }

    /// [`Vm::check_crash`] after a stream failed: moat-vmm gets a second to exit first.
    fn check_crash_after_failure(&mut self) -> Result<(), String> {
        std::thread::sleep(Duration::from_secs(1));
        self.check_crash()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$MOAT_VSOCK_ECHO_MAX_WRITE`: cap on the guest echo's write(2) size (default: none, 64 KiB
/// reads echoed in one write, so the guest sends tx packets of up to 64 KiB).
fn echo_max_write() -> String {
    std::env::var("MOAT_VSOCK_ECHO_MAX_WRITE").unwrap_or_default()
}

fn start_vm(image: &GuestImage, dir: &Path) -> Vm {
    let child = Command::new(moat_tests::cargo_bin("moat-vmm"))
        .arg("--kernel")
        .arg(&image.kernel)
        .arg("--initrd")
        .arg(&image.initrd)
        .args(["--vcpus", "2", "--memory-mib", "512"])
        .arg(format!("--vsock=3,{}", dir.join("vm.sock").display()))
        .arg(format!("--serial=file:{}", dir.join("console").display()))
        .arg(format!("--append=-- vsock-echo {}", echo_max_write()).trim_end())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.log")).expect("vmm.log"))
        .spawn()
        .expect("spawn moat-vmm");
    Vm {
        child,
        dir: dir.to_path_buf(),
    }
}

/// One hybrid-vsock connection to guest `port`: the handshake is read byte by byte so no
/// stream data is consumed with it.
fn connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("closed during the handshake after {line:?}"),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    match line.strip_prefix(b"OK ") {
        Some(_) => Ok(s),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handshake answer {:?}", String::from_utf8_lossy(&line)),
        )),
    }
}

/// Retries [`connect`] with backoff until the guest's echo server answers (and echoes a
/// probe), the VMM dies, or [`READY_TIMEOUT`] passes; `Err` if the guest crashed.
fn wait_ready(vm: &mut Vm, uds: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    let mut last = String::from("no attempt yet");
    while start.elapsed() < READY_TIMEOUT {
        vm.check_crash()?;
        if let Ok(Some(st)) = vm.child.try_wait() {
            panic!(
                "moat-vmm exited {st} before the guest listened\n{}",
                vm.console()
            );
        }
        match connect(uds, VSOCK_ECHO_PORT).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"ping")?;
            let mut back = [0u8; 4];
            s.read_exact(&mut back)?;
            Ok(back)
        }) {
            Ok(back) if &back == b"ping" => return Ok(start.elapsed()),
            Ok(back) => last = format!("probe echoed {back:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    panic!(
        "guest echo on vsock port {VSOCK_ECHO_PORT} not reachable in {READY_TIMEOUT:?} \
         (last: {last})\n--- guest console ---\n{}",
        vm.console()
    );
}

/// `len` pseudo-random bytes (xorshift64*), distinct per `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `data` on a fresh connection while reading the echo concurrently; shuts down the
/// write side after sending and reads to EOF. Returns what came back.
fn echo_roundtrip(uds: &Path, data: &[u8]) -> Result<Vec<u8>, String> {
    let stream = connect(uds, VSOCK_ECHO_PORT).map_err(|e| format!("connect: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let mut reader = stream;
    std::thread::scope(|s| {
        let w = s.spawn(move || -> Result<(), String> {
            for chunk in data.chunks(CHUNK) {
                writer.write_all(chunk).map_err(|e| format!("write: {e}"))?;
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))
        });
        let mut back = Vec::with_capacity(data.len());
        let read = reader
            .read_to_end(&mut back)
            .map_err(|e| format!("read after {} bytes: {e}", back.len()));
        let wrote = w.join().map_err(|_| "writer panicked".to_string())?;
        wrote?;
        read?;
        Ok(back)
    })
}

/// Checks `back` against `sent`, describing the first difference and where the bytes
/// received there come from (an offset in `sent`, or in one of `others`).
fn check_echo(what: &str, sent: &[u8], back: &[u8], others: &[Vec<u8>]) -> Result<(), String> {
    if back == sent {
        return Ok(());
    }
    let first = sent
        .iter()
        .zip(back)
        .position(|(a, b)| a != b)
        .unwrap_or(sent.len().min(back.len()));
    let origin = back
        .get(first..first + 32)
        .map(|probe| {
            let find = |hay: &[u8]| hay.windows(probe.len()).position(|w| w == probe);
            if let Some(at) = find(sent) {
                return format!("own stream at offset {at}");
            }
            others
                .iter()
                .enumerate()
                .find_map(|(i, o)| find(o).map(|at| format!("connection {i}'s data at {at}")))
                .unwrap_or_else(|| "no known stream".into())
        })
        .unwrap_or_else(|| "end of the echo".into());
    Err(format!(
        "{what}: sent {} bytes, got {} back; first difference at offset {first}, where the \
         echo continues with {origin}",
        sent.len(),
        back.len()
    ))
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

#[test]
fn vsock_64_parallel_streams_echo_1mib_intact() {
    let image = GuestImage::with_vsock_echo().unwrap_or_else(|e| panic!("guest image: {e}"));
    let throughput_mib = std::env::var("MOAT_VSOCK_THROUGHPUT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(THROUGHPUT_MIB);
    let connections = std::env::var("MOAT_VSOCK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CONNECTIONS);
    let name = "vsock_64_parallel_streams_echo_1mib_intact";
    moat_tests::on_kvm_retrying(name, ATTEMPTS, || {
        // Unix sockets can't live on the test host's 9p shares: use its tmpfs /tmp.
        let scratch = tempfile::Builder::new()
            .prefix("moat-vsock-")
            .tempdir()
            .unwrap();
        let dir = scratch.path();
        let uds = dir.join("vm.sock");
        let mut vm = start_vm(&image, dir);
        let ready = wait_ready(&mut vm, &uds)?;
        println!(
            "guest echo reachable {:.0} ms after moat-vmm spawn",
            ready.as_secs_f64() * 1000.0
        );

        // 64 parallel connections, 1 MiB each way, distinct data per connection.
        let inputs: Vec<Vec<u8>> = (0..connections)
            .map(|i| pattern(i as u64 + 1, PER_CONNECTION))
            .collect();
        let start = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    let uds = &uds;
                    let inputs = &inputs;
                    s.spawn(move || {
                        let back = echo_roundtrip(uds, data)
                            .map_err(|e| format!("connection {i}: {e}"))?;
                        check_echo(&format!("connection {i}"), data, &back, inputs)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                .collect()
        });
        let elapsed = start.elapsed();
        let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if !failures.is_empty() {
            vm.check_crash_after_failure()?;
        }
        assert!(
            failures.is_empty(),
            "{} of {connections} connections failed after {elapsed:?}:\n{}\n--- guest console ---\n{}",
            failures.len(),
            failures
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            vm.console()
        );
        let total = connections * PER_CONNECTION;
        println!(
            "{connections} x 1 MiB echoed intact in {:.2} s: {:.1} MiB/s each way aggregate",
            elapsed.as_secs_f64(),
            mib_per_s(total, elapsed)
        );

        // One connection, throughput both ways at once.
        let data = pattern(0xfeed, throughput_mib << 20);
        let start = Instant::now();
        let back = match echo_roundtrip(&uds, &data) {
            Ok(back) => back,
            Err(e) => {
                vm.check_crash_after_failure()?;
                panic!("throughput connection: {e}\n{}", vm.console())
            }
        };
        let elapsed = start.elapsed();
        if let Err(e) = check_echo("throughput connection", &data, &back, &[]) {
            panic!("{e}\n--- guest console ---\n{}", vm.console());
        }
        println!(
            "single connection: {throughput_mib} MiB each way in {:.2} s: {:.1} MiB/s each way",
            elapsed.as_secs_f64(),
            mib_per_s(data.len(), elapsed)
        );

        // Stopping the VMM tears the VM down and removes its socket.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
        let status = vm.child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", vm.console());
        assert!(!uds.exists(), "vsock socket left behind");
        let console = vm.console();
        assert!(
            console.contains("moat-vsock-echo: listening on 5000"),
            "{console}"
        );
        Ok(())
    });
}
