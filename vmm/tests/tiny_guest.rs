//! Tiny-guest tests: hand-assembled 32-bit PVH guests (a few dozen instructions) booted by the
//! real `moat-vmm` binary on this machine's /dev/kvm. They exercise the ELF/PVH load path,
//! vCPU register setup, port I/O and MMIO dispatch, the serial console, the boot timer, the
//! i8042 reset and every exit-status path, fast enough to run on an emulating (PVM) KVM.
//!
//! No /dev/kvm means these tests FAIL (loudly): they never skip.

use std::path::Path;
use std::process::Command;

use moat_vmm::config::{SerialConfig, SerialOutput, VmConfig};
use tempfile::TempDir;

const LOAD_ADDR: u64 = 0x10_0000;

/// A guest program, assembled by hand (32-bit protected mode, flat segments, paging off).
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    /// `mov dx, 0x3f8; mov al, b; out dx, al` for each byte.
    fn print(mut self, text: &[u8]) -> Self {
        for b in text {
            self.0.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, *b, 0xee]);
        }
        self
    }
    /// `in al, imm8` from `port`, then print AL on COM1.
    fn echo_port(mut self, port: u8) -> Self {
        self.0.extend([0xe4, port, 0x66, 0xba, 0xf8, 0x03, 0xee]);
        self
    }
    /// `mov byte [addr], value`.
    fn store8(mut self, addr: u32, value: u8) -> Self {
        self.0.extend([0xc6, 0x05]);
        self.0.extend(addr.to_le_bytes());
        self.0.push(value);
        self
    }
    /// `mov word [addr], value`.
    fn store16(mut self, addr: u32, value: u16) -> Self {
        self.0.extend([0x66, 0xc7, 0x05]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend(value.to_le_bytes());
        self
    }
    /// Prints `yes` if the dword at [ebx] (the PVH start_info) equals `value`, else `no`.
    fn check_ebx_points_to(self, value: u32, yes: u8, no: u8) -> Self {
        // cmp dword [ebx], imm32 ; jne +N ; print yes ; jmp +M ; print no
        let yes_code = Asm::default().print(&[yes]).0;
        let no_code = Asm::default().print(&[no]).0;
        let mut out = self.0;
        out.extend([0x81, 0x3b]);
        out.extend(value.to_le_bytes());
        out.extend([0x75, (yes_code.len() + 2) as u8]);
        out.extend(&yes_code);
        out.extend([0xeb, no_code.len() as u8]);
        out.extend(&no_code);
        Asm(out)
    }
    /// Prints the first byte of the kernel command line (at 0x20000).
    fn print_cmdline_first_byte(mut self) -> Self {
        // mov al, [0x20000] ; mov dx, 0x3f8 ; out dx, al
        self.0
            .extend([0xa0, 0x00, 0x00, 0x02, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xee]);
        self
    }
    /// Pulses the i8042 CPU-reset line (`mov al, 0xfe; out 0x64, al`), then spins.
    fn reset(mut self) -> Self {
        self.0.extend([0xb0, 0xfe, 0xe6, 0x64]);
        self.spin()
    }
    /// `ud2` with an empty IDT: the exception can't be delivered, so the CPU triple-faults.
    fn triple_fault(mut self) -> Self {
        self.0.extend([0x0f, 0x0b]);
        self
    }
    /// `out imm8, al` to `port` forever (a VM exit each time).
    fn out_forever(mut self, port: u8) -> Self {
        self.0.extend([0xe6, port, 0xeb, 0xfc]);
        self
    }
    /// `jmp $`.
    fn spin(mut self) -> Self {
        self.0.extend([0xeb, 0xfe]);
        self
    }
}

/// Wraps `code` in a minimal ELF64 vmlinux: one PT_LOAD at 1 MiB and a PVH entry note.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes()); // namesz
    note.extend(4u32.to_le_bytes()); // descsz
    note.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend(b"Xen\0");
    note.extend((LOAD_ADDR as u32).to_le_bytes());
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut elf = vec![0u8; code_off];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    elf[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    elf[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |p_type: u32, flags: u32, off: usize, addr: u64, size: usize| {
        let mut h = Vec::with_capacity(PHDR);
        h.extend(p_type.to_le_bytes());
        h.extend(flags.to_le_bytes());
        h.extend((off as u64).to_le_bytes());
        h.extend(addr.to_le_bytes()); // vaddr
        h.extend(addr.to_le_bytes()); // paddr
        h.extend((size as u64).to_le_bytes()); // filesz
        h.extend((size as u64).to_le_bytes()); // memsz
        h.extend(16u64.to_le_bytes());
        h
    };
    elf[EHDR..EHDR + PHDR].copy_from_slice(&phdr(1, 5, code_off, LOAD_ADDR, code.len()));
    elf[EHDR + PHDR..note_off].copy_from_slice(&phdr(4, 4, note_off, 0, note.len()));
    elf[note_off..note_off + note.len()].copy_from_slice(&note);
    elf.extend_from_slice(code);
    elf
}

struct Run {
    status: i32,
    serial: Vec<u8>,
    stderr: String,
    metrics: serde_json::Value,
}

fn scratch() -> TempDir {
    TempDir::new().unwrap()
}

fn assert_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("tiny-guest tests need /dev/kvm and cannot run: {e}");
    }
}

fn boot(code: Asm, extra_args: &[&str]) -> Run {
    assert_kvm();
    let dir = scratch();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, pvh_elf(&code.0)).unwrap();
    let serial = dir.path().join("serial.out");
    let metrics = dir.path().join("metrics.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "64", "--cmdline", "moat-tiny"])
        .arg(format!("--serial=file:{}", serial.display()))
        .arg("--metrics-file")
        .arg(&metrics)
        .args(extra_args);
    run(cmd, &serial, &metrics)
}

/// Runs `cmd` (moat-vmm with info logs) to the end; collects the guest's serial output and
/// the boot metrics from the files it was told to write.
fn run(mut cmd: Command, serial: &Path, metrics: &Path) -> Run {
    let out = cmd.env("MOAT_LOG", "info").output().expect("run moat-vmm");
    Run {
        status: out.status.code().unwrap_or(-1),
        serial: std::fs::read(serial).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        metrics: std::fs::read(metrics)
            .ok()
            .and_then(|m| serde_json::from_slice(&m).ok())
            .unwrap_or_default(),
    }
}

fn check(run: &Run, status: i32, serial: &[u8]) {
    assert_eq!(
        run.status,
        status,
        "exit status; serial={:?} stderr={}",
        String::from_utf8_lossy(&run.serial),
        run.stderr
    );
    assert_eq!(
        String::from_utf8_lossy(&run.serial),
        String::from_utf8_lossy(serial),
        "stderr={}",
        run.stderr
    );
}

#[test]
fn serial_boot_timer_and_clean_reset() {
    let code = Asm::default()
        .print(b"hello\n")
        .store8(0xd000_0000, 123)
        .reset();
    let run = boot(code, &[]);
    check(&run, 0, b"hello\n");
    let m = &run.metrics;
    let first_run = m["first_kvm_run_us"]
        .as_u64()
        .expect("first KVM_RUN recorded");
    let init = m["guest_init_us"].as_u64().expect("boot timer recorded");
    assert!(first_run <= init, "{m}");
    assert!(m["rss_excl_guest_kib"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["exit_reason"], "guest shut down");
}

#[test]
fn pvh_start_info_and_cmdline_are_in_place() {
    // %ebx points at hvm_start_info (magic 0x336ec578); the command line is at 0x20000.
    let code = Asm::default()
        .check_ebx_points_to(0x336e_c578, b'P', b'x')
        .print_cmdline_first_byte()
        .print(b"\n")
        .reset();
    check(&boot(code, &[]), 0, b"Pm\n");
}

#[test]
fn unmapped_ports_read_all_ones_and_writes_are_ignored() {
    let code = Asm::default()
        .echo_port(0x80)
        .store8(0xd000_0800, 1) // unused byte inside the boot timer window
        .store8(0xe000_0000, 7) // nothing mapped there at all
        .print(b"\n")
        .reset();
    check(&boot(code, &[]), 0, b"\xff\n");
}

#[test]
fn warm_reset_reports_a_guest_panic() {
    // Linux with reboot=...,panic_w writes 0x1234 at 0x472 before a panic reset.
    let code = Asm::default().store16(0x472, 0x1234).reset();
    let run = boot(code, &[]);
    check(&run, 3, b"");
    assert!(
        run.stderr.contains("guest kernel panicked"),
        "{}",
        run.stderr
    );
}

#[test]
fn triple_fault_reports_a_crash() {
    let run = boot(Asm::default().print(b"x").triple_fault(), &[]);
    check(&run, 4, b"x");
    assert!(run.stderr.contains("triple fault"), "{}", run.stderr);
}

#[test]
fn secondary_vcpus_are_stopped_at_exit() {
    // vCPUs 1..3 wait for INIT/SIPI inside KVM_RUN; the VMM must still exit promptly.
    let code = Asm::default().print(b"smp\n").reset();
    check(&boot(code, &["--vcpus", "4"]), 0, b"smp\n");
}

#[test]
fn guest_output_is_capped() {
    let dir = scratch();
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, r#"{"serial": {"limit_bytes": 3}}"#).unwrap();
    let code = Asm::default().print(b"0123456789").reset();
    let run = boot(code, &["--config", cfg.to_str().unwrap()]);
    check(&run, 0, b"012");
}

/// The whole configuration from a file written with serde_json, and no other flag (how the
/// shim starts the VMM): every value the file gives is used, none is reset by an absent flag.
#[test]
fn a_config_file_alone_is_the_whole_configuration() {
    assert_kvm();
    let dir = scratch();
    let kernel = dir.path().join("vmlinux");
    // Secondary vCPUs and no rng: values that differ from the defaults and from flag defaults.
    let code = Asm::default()
        .print_cmdline_first_byte()
        .print(b"\n")
        .reset();
    std::fs::write(&kernel, pvh_elf(&code.0)).unwrap();
    let serial = dir.path().join("serial.out");
    let metrics = dir.path().join("metrics.json");
    let config = VmConfig {
        kernel: Some(kernel),
        cmdline: Some("Z-from-the-file".into()),
        vcpus: 2,
        memory_mib: 48,
        serial: SerialConfig {
            output: SerialOutput::File(serial.clone()),
            stdin: false,
            limit_bytes: 1,
        },
        metrics_file: Some(metrics.clone()),
        rng: false,
        ..VmConfig::default()
    };
    let file = dir.path().join("vm.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.arg("--config").arg(&file);
    let run = run(cmd, &serial, &metrics);
    // One byte: the file's serial limit; 'Z': the file's command line.
    check(&run, 0, b"Z");
    assert_eq!(
        run.metrics["exit_reason"], "guest shut down",
        "{}",
        run.stderr
    );

    let printed = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .arg("--config")
        .arg(&file)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let effective: VmConfig = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(effective, config);
}

#[test]
fn bad_arguments_exit_2_with_a_clear_error() {
    let bin = env!("CARGO_BIN_EXE_moat-vmm");
    let cases: [(&[&str], &str); 5] = [
        (&[], "kernel: no kernel image given"),
        (
            &["--kernel", "/nonexistent"],
            "kernel: cannot open /nonexistent",
        ),
        (
            &["--kernel", "/etc/hostname"],
            "kernel: /etc/hostname is not an x86_64 ELF",
        ),
        (&["--memory-mib", "x"], "invalid value 'x'"),
        (&["--serial", "tty"], "expected stdout, null or file:PATH"),
    ];
    for (args, msg) in cases {
        let out = Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }
}

#[test]
fn kernel_without_pvh_note_is_refused() {
    assert_kvm();
    let dir = scratch();
    let mut elf = pvh_elf(&Asm::default().spin().0);
    // Turn the note's type into something else.
    let note_type_at = 64 + 2 * 56 + 8;
    elf[note_type_at] = 17;
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, elf).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no PVH entry note"), "{stderr}");
}

/// A scratch dir with a guest that prints "up" and spins, and the guest's kernel path.
fn spinning_guest() -> (TempDir, std::path::PathBuf) {
    guest(Asm::default().print(b"up\n").spin())
}

/// A scratch dir with `code` as the guest, and the guest's kernel path.
fn guest(code: Asm) -> (TempDir, std::path::PathBuf) {
    assert_kvm();
    let dir = scratch();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, pvh_elf(&code.0)).unwrap();
    (dir, kernel)
}

/// moat-vmm jailed in `<dir>/jail` (made here), seccomp enforced, running `kernel` in 64
/// MiB, its console in `<dir>/serial.out` and its metrics in `<dir>/metrics.json`; the
/// caller adds the rest.
fn jailed_vmm(dir: &Path, kernel: &Path) -> Command {
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--memory-mib", "64"])
        .arg(format!("--jail={}", jail.display()))
        .arg(format!(
            "--serial=file:{}",
            dir.join("serial.out").display()
        ))
        .arg("--metrics-file")
        .arg(dir.join("metrics.json"));
    cmd
}

/// Waits (10 s at most) until the guest has printed "up" into `serial`.
fn wait_for_up(serial: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read(serial).unwrap_or_default() != b"up\n" {
        assert!(std::time::Instant::now() < deadline, "guest never ran");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn sigterm_stops_the_vm_cleanly_and_removes_its_socket() {
    let (dir, kernel) = spinning_guest();
    let sock = dir.path().join("vm.sock");
    let metrics = dir.path().join("metrics.json");
    let serial = dir.path().join("serial.out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "64"])
        .arg(format!("--vsock=3,{}", sock.display()))
        .arg(format!("--serial=file:{}", serial.display()))
        .arg("--metrics-file")
        .arg(&metrics)
        .spawn()
        .unwrap();
    wait_for_up(&serial);
    assert!(sock.exists(), "vsock socket was not created");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "vsock socket left behind");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(m["exit_reason"], "stopped by signal 15");
}

/// A child killed when the test ends, passed or not (a spinning guest never ends).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The jailed VMM's pid: the supervisor's only child.
fn jailed_pid(supervisor: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // By parent pid (`.../children` needs CONFIG_PROC_CHILDREN).
        let child = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == supervisor).then_some(pid)
        });
        if let Some(pid) = child {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "no jailed child");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `field` of `/proc/<pid>/task/<tid>/status`.
fn status_field(pid: u32, tid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")));
    line.unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn jailed_vmm_is_confined_and_leaves_nothing() {
    let (dir, kernel) = spinning_guest();
    let (jail, vsock_dir, share) = (
        dir.path().join("jail"),
        dir.path().join("vsock"),
        dir.path().join("share"),
    );
    for d in [&vsock_dir, &share] {
        std::fs::create_dir(d).unwrap();
    }
    let sock = vsock_dir.join("vm.sock");
    let serial = dir.path().join("serial.out");
    let metrics = dir.path().join("metrics.json");
    let mut child = KillOnDrop(
        jailed_vmm(dir.path(), &kernel)
            .args(["--vcpus", "2"])
            .arg(format!("--vsock=3,{}", sock.display()))
            .arg(format!("--share=fs={}", share.display()))
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    wait_for_up(&serial);
    let vmm = jailed_pid(child.id());
    // Every thread: seccomp filter mode, no_new_privs, only the share capabilities.
    let share_caps = "00000000000000df"; // CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID SETGID SETUID
                                         // KVM's own worker (`kvm-nx-lpage-recovery`, kernel code that runs no VMM code) is a
                                         // task of the process too on 6.x kernels; every other task is a VMM thread.
    let comm = |t: &str| std::fs::read_to_string(format!("/proc/{vmm}/task/{t}/comm")).unwrap();
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|t| !comm(t).starts_with("kvm-"))
        .collect();
    let names: Vec<String> = tids.iter().map(|t| comm(t)).collect();
    assert_eq!(tids.len(), 3, "main + 2 vCPUs: {names:?}");
    for tid in &tids {
        assert_eq!(status_field(vmm, tid, "Seccomp"), "2", "thread {tid}");
        assert_eq!(status_field(vmm, tid, "NoNewPrivs"), "1", "thread {tid}");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                status_field(vmm, tid, set),
                share_caps,
                "{set} of thread {tid}"
            );
        }
        assert_eq!(status_field(vmm, tid, "CapInh"), "0000000000000000");
    }
    // Its own namespaces, its own root with only what the VM uses.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    assert_eq!(
        root,
        [
            "console",
            "dev",
            "kernel",
            "metrics.json",
            "proc",
            "shares",
            "vsock"
        ]
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    points.sort();
    assert_eq!(
        points,
        [
            "/",
            "/console",
            "/dev/kvm",
            "/dev/urandom",
            "/kernel",
            "/metrics.json",
            "/shares/fs",
            "/vsock"
        ],
        "{mountinfo}"
    );
    let net = std::fs::read_to_string(format!("/proc/{vmm}/net/dev")).unwrap();
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net}");
    assert!(sock.exists(), "vsock socket not created in its directory");

    // SAFETY: plain kill(2) on our own child (the supervisor forwards it).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "vsock socket left behind");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(m["exit_reason"], "stopped by signal 15");
    assert!(m["rss_excl_guest_kib"].is_null() || m["rss_excl_guest_kib"].as_u64().is_some());
    // Nothing on the host: the jail directory is empty and no mount of it is left.
    assert_eq!(std::fs::read_dir(&jail).unwrap().count(), 0);
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(jail.to_str().unwrap()),
        "{host_mounts}"
    );
}

/// The metrics file's document, or `None` while it holds none whole (empty before the first
/// flush, or a read torn by a flush: readers retry).
fn read_metrics(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Waits (`within` at most) until the metrics file's `seq` is at least `seq`; the document.
fn wait_for_seq(path: &Path, seq: u64, within: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let doc = read_metrics(path);
        let now = doc.as_ref().and_then(|d| d["seq"].as_u64());
        if let Some(doc) = doc.filter(|_| now >= Some(seq)) {
            return doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seq {now:?}, wanted {seq} within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sends `sig` to `child` (the supervisor, which forwards it to the jailed VMM).
fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// A jailed VMM under seccomp, with a guest doing port I/O all the time: the metrics file is
/// rewritten every 200 ms while the VM runs, SIGUSR1 makes a flush, the last one at exit.
#[test]
fn metrics_are_flushed_while_a_jailed_vm_runs() {
    let (dir, kernel) = guest(Asm::default().print(b"up\n").out_forever(0x80));
    let metrics = dir.path().join("metrics.json");
    let mut child = KillOnDrop(
        jailed_vmm(dir.path(), &kernel)
            .args(["--metrics-interval-ms", "200"])
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    wait_for_up(&dir.path().join("serial.out"));
    let secs = std::time::Duration::from_secs;
    let first = wait_for_seq(&metrics, 1, secs(10));
    let seq = first["seq"].as_u64().unwrap();
    let later = wait_for_seq(&metrics, seq + 2, secs(5));
    assert!(later["exit_reason"].is_null(), "{later}");
    assert!(later["uptime_us"].as_u64() > first["uptime_us"].as_u64());
    assert!(
        later["vcpu_exits"]["io_out"].as_u64().unwrap() > 0,
        "{later}"
    );
    assert!(later["rss_excl_guest_kib"].as_u64().unwrap() > 0, "{later}");
    let seq = later["seq"].as_u64().unwrap();
    signal(child, libc::SIGUSR1);
    wait_for_seq(&metrics, seq + 1, secs(2));

    signal(child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    let last = read_metrics(&metrics).expect("a whole document at exit");
    assert_eq!(last["exit_reason"], "stopped by signal 15");
    assert!(last["seq"].as_u64().unwrap() > seq);
    assert!(last["vcpu_exits"]["io_out"].as_u64() >= later["vcpu_exits"]["io_out"].as_u64());
}

/// With an hour between timed flushes, each flush is SIGUSR1's (forwarded by the jail's
/// supervisor): one each, and the file is empty before the first.
#[test]
fn sigusr1_alone_flushes_the_metrics_file() {
    let (dir, kernel) = spinning_guest();
    let metrics = dir.path().join("metrics.json");
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"metrics_interval_ms": 3600000}"#).unwrap();
    let mut child = KillOnDrop(
        jailed_vmm(dir.path(), &kernel)
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    wait_for_up(&dir.path().join("serial.out"));
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        b"",
        "flushed before asked"
    );
    for seq in [1, 2] {
        signal(child, libc::SIGUSR1);
        let doc = wait_for_seq(&metrics, seq, std::time::Duration::from_secs(2));
        assert_eq!(doc["seq"], seq, "one flush per SIGUSR1");
    }
    signal(child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    let last = read_metrics(&metrics).unwrap();
    assert_eq!(
        (last["seq"].as_u64(), last["exit_reason"].as_str()),
        (Some(3), Some("stopped by signal 15"))
    );
}

#[test]
fn a_bad_metrics_interval_exits_2_naming_the_field() {
    let dir = scratch();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, pvh_elf(&Asm::default().spin().0)).unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"metrics_interval_ms": 0}"#).unwrap();
    let metrics = dir.path().join("metrics.json");
    let flag = ["--metrics-interval-ms", "0"];
    let file = ["--config", config.to_str().unwrap()];
    for args in [flag, file] {
        let out = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
            .arg("--kernel")
            .arg(&kernel)
            .arg("--metrics-file")
            .arg(&metrics)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let msg = "metrics_interval_ms: 0 is out of range (100..=3600000)";
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }
}
