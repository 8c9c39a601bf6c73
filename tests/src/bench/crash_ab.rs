//! The guest-crash A/B (`moat-crash-ab`): the same guest kernel, initramfs and workload booted
//! over and over under moat-vmm and under `qemu-system-x86_64 -accel kvm -M microvm` on the
//! same KVM, interleaved, each run classified as done, triple fault, kernel panic or hang.
//! If both VMMs' guests crash at the same rate the crashes belong to the KVM below them (the
//! nested TCG test host), not to moat-vmm.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use moat_vmm::exit::{EXIT_GUEST_CRASH, EXIT_GUEST_PANIC, EXIT_OK};

use crate::guest::{
    boot_moat, boot_qemu_until, test_initramfs_with, BootRun, BootSpec, GuestError, GuestImage,
};

/// Where the workload script lands in the image.
pub const WORKLOAD_GUEST_PATH: &str = "bin/crash-workload";
/// The line the workload prints when it ran to its end.
pub const DONE_MARKER: &str = "moat-crash-ab: workload done";

/// The guest workload: for `$1` seconds, two loops per vCPU of what a container-heavy guest
/// does: fork+exec, new namespaces, page-cache and anonymous memory churn, FPU/SSE work
/// (awk's floating point, sha256), and device traffic that interrupts the guest (virtio-rng
/// reads, uncached virtio-blk reads of `/dev/vda`); then [`DONE_MARKER`].
const WORKLOAD: &str = r#"bb=/bin/busybox
end=$(( $($bb date +%s) + $1 ))
work() {
  while [ "$($bb date +%s)" -lt "$end" ]; do
    i=0
    while [ $i -lt 40 ]; do $bb true; i=$((i + 1)); done
    $bb unshare -m -u -i -p -f $bb true 2>/dev/null
    $bb dd if=/dev/urandom of=/tmp/w$1 bs=64k count=16 2>/dev/null
    $bb sha256sum /tmp/w$1 >/dev/null
    $bb awk 'BEGIN { s = 0; for (i = 1; i < 20000; i++) s += i / 3.7 * 1.0001; print s }' >/dev/null
    $bb rm -f /tmp/w$1
    $bb dd if=/dev/hwrng of=/dev/null bs=64 count=64 2>/dev/null
    echo 1 > /proc/sys/vm/drop_caches
    $bb dd if=/dev/vda of=/dev/null bs=4k count=1024 2>/dev/null
  done
}
[ -b /dev/vda ] && [ -c /dev/hwrng ] && echo "moat-crash-ab: devices ready"
n=$(( $($bb nproc) * 2 ))
for c in $($bb seq 1 $n); do work $c & done
wait
echo "moat-crash-ab: workload done"
"#;

/// The line the workload prints when the guest has its disk and entropy device.
pub const DEVICES_MARKER: &str = "moat-crash-ab: devices ready";

/// Size of the read-only disk both VMMs give the guest as `/dev/vda`.
pub const DISK_BYTES: u64 = 8 << 20;

/// What became of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The workload ran to its end.
    Done,
    /// The guest triple-faulted (moat-vmm exit 4; qemu reset with `-no-reboot`).
    TripleFault,
    /// The guest kernel panicked.
    Panic,
    /// Nothing happened before the deadline.
    Hang,
    /// Anything else (a VMM error, a guest that stopped early).
    Other,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Done,
        Outcome::TripleFault,
        Outcome::Panic,
        Outcome::Hang,
        Outcome::Other,
    ];

    /// Its column name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::TripleFault => "triple-fault",
            Outcome::Panic => "panic",
            Outcome::Hang => "hang",
            Outcome::Other => "other",
        }
    }
}

/// The VMMs compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// moat-vmm.
    Moat,
    /// qemu's microvm machine on KVM.
    Qemu,
}

impl Arm {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Moat => "moat-vmm",
            Arm::Qemu => "qemu -M microvm",
        }
    }
}

/// The default test image plus the workload script.
pub fn workload_image() -> Result<GuestImage, GuestError> {
    let kernel = crate::kernel_path("guest").map_err(GuestError::KernelMissing)?;
    let initrd = test_initramfs_with(
        &crate::target_dir().join("moat-test-images"),
        &[(WORKLOAD_GUEST_PATH, WORKLOAD.as_bytes().to_vec())],
    )?;
    Ok(GuestImage { kernel, initrd })
}

/// The boot of `image` that runs the workload for `secs` seconds on `vcpus` vCPUs, with
/// `disk` (a file of [`DISK_BYTES`]) as its read-only `/dev/vda`.
pub fn workload_spec(image: GuestImage, vcpus: u8, secs: u32, disk: &Path) -> BootSpec {
    let mut spec = BootSpec::new(image);
    spec.vcpus = vcpus;
    spec.memory_mib = 512;
    // No `--`: qemu's microvm appends its virtio-mmio device parameters after the command
    // line, where `--` would hand them to init; words without `=` or `.` reach init as
    // arguments (hence a script name without `.sh`).
    spec.append = format!("script /{WORKLOAD_GUEST_PATH} {secs}");
    spec.timeout = Duration::from_secs(u64::from(secs) + 120);
    spec.extra_args = vec![format!("--block={},ro", disk.display())];
    spec
}

/// Writes the disk [`workload_spec`] wants at `path`.
pub fn write_disk(path: &Path) -> std::io::Result<()> {
    let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut data = Vec::with_capacity(DISK_BYTES as usize);
    while (data.len() as u64) < DISK_BYTES {
        data.extend_from_slice(&block);
    }
    std::fs::write(path, data)
}

/// qemu's arguments for the devices moat-vmm gets from `spec` and by default: the disk
/// (read-only virtio-blk) and virtio-rng, both on virtio-mmio as moat's are.
fn qemu_devices(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "id=vda,file={},format=raw,if=none,readonly=on",
            disk.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=vda".into(),
        "-device".into(),
        "virtio-rng-device".into(),
    ]
}

/// Runs `spec` (from [`workload_spec`] with `disk`) once under `arm` and classifies it.
pub fn run_once(
    arm: Arm,
    vmm: &Path,
    spec: &BootSpec,
    disk: &Path,
) -> Result<(Outcome, BootRun), GuestError> {
    let run = match arm {
        Arm::Moat => boot_moat(vmm, spec)?,
        Arm::Qemu => boot_qemu_until(spec, DONE_MARKER, &qemu_devices(disk))?,
    };
    Ok((classify(arm, &run), run))
}

/// What `run` under `arm` shows.
pub fn classify(arm: Arm, run: &BootRun) -> Outcome {
    // A run without the devices did not run the workload both VMMs are compared on.
    let done = run.serial.contains(DONE_MARKER) && run.serial.contains(DEVICES_MARKER);
    let panicked = run.serial.contains("Kernel panic");
    match (arm, run.status) {
        (_, _) if panicked => Outcome::Panic,
        (Arm::Moat, Some(EXIT_OK)) if done => Outcome::Done,
        (Arm::Moat, Some(EXIT_GUEST_CRASH)) => Outcome::TripleFault,
        (Arm::Moat, Some(EXIT_GUEST_PANIC)) => Outcome::Panic,
        // qemu is killed at the marker, so its status stays unset.
        (Arm::Qemu, None) if done => Outcome::Done,
        // With -no-reboot, qemu exits by itself only on a guest reset: the workload never
        // resets before its marker, so that is a triple fault.
        (Arm::Qemu, Some(_)) if !done => Outcome::TripleFault,
        (_, None) => Outcome::Hang,
        _ => Outcome::Other,
    }
}

/// Counts of each [`Outcome`] for one arm.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    counts: [u32; Outcome::ALL.len()],
}

impl Tally {
    /// Counts one run.
    pub fn add(&mut self, o: Outcome) {
        self.counts[o as usize] += 1;
    }

    /// How many runs ended as `o`.
    pub fn get(&self, o: Outcome) -> u32 {
        self.counts[o as usize]
    }

    /// Runs in all.
    pub fn runs(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// Runs that did not end as [`Outcome::Done`].
    pub fn failures(&self) -> u32 {
        self.runs() - self.get(Outcome::Done)
    }
}

/// The side-by-side table of the arms' tallies.
pub fn report(arms: &[(Arm, Tally)]) -> String {
    let mut out = format!("{:<16} {:>5}", "VMM", "runs");
    for o in Outcome::ALL {
        let _ = write!(out, " {:>12}", o.name());
    }
    for (arm, t) in arms {
        let _ = write!(out, "\n{:<16} {:>5}", arm.name(), t.runs());
        for o in Outcome::ALL {
            let _ = write!(out, " {:>12}", t.get(o));
        }
    }
    out
}

/// The evidence to print for a failed run: moat-vmm's crash line (with the vCPU state) or
/// qemu's last `cpu_reset` dump, and the console's last lines.
pub fn evidence(arm: Arm, run: &BootRun) -> String {
    let stderr: Vec<&str> = run.stderr.lines().collect();
    let vmm = match arm {
        Arm::Moat => stderr
            .iter()
            .filter(|l| l.contains("guest crashed") || l.contains("panicked"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
        Arm::Qemu => {
            let last = stderr.iter().rposition(|l| l.starts_with("CPU Reset"));
            last.map(|i| {
                stderr[i..]
                    .iter()
                    .take(12)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
        }
    };
    // A panic's whole oops (its trace names the fault); a crash or hang has only a tail.
    let console: Vec<&str> = run.serial.lines().collect();
    let from = match console
        .iter()
        .position(|l| l.contains("cut here") || l.contains("BUG:"))
    {
        Some(i) => i,
        None => console.len().saturating_sub(8),
    };
    let tail = console[from..].join("\n");
    format!("{vmm}\n--- console tail ---\n{tail}")
}

/// Fork/exec loops beside the guests (`MOAT_CRASH_AB_L1_LOAD=N`), stopped on drop.
pub struct HostLoad(Vec<std::process::Child>);

impl HostLoad {
    /// Starts `$MOAT_CRASH_AB_L1_LOAD` loops of `/bin/true` (none when unset or not a number).
    pub fn from_env() -> HostLoad {
        let n: usize = std::env::var("MOAT_CRASH_AB_L1_LOAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n > 0 {
            println!("moat-crash-ab: {n} fork/exec loop(s) run beside the VMs");
        }
        let loops = (0..n)
            .filter_map(|_| {
                std::process::Command::new("/bin/sh")
                    .args(["-c", "while :; do /bin/true; done"])
                    .spawn()
                    .map_err(|e| eprintln!("moat-crash-ab: cannot start a load loop: {e}"))
                    .ok()
            })
            .collect();
        HostLoad(loops)
    }
}

impl Drop for HostLoad {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: Option<i32>, serial: &str) -> BootRun {
        BootRun {
            status,
            serial: serial.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_are_classified() {
        let done = format!("x\n{DEVICES_MARKER}\n{DONE_MARKER}\n");
        assert_eq!(classify(Arm::Moat, &run(Some(0), &done)), Outcome::Done);
        assert_eq!(classify(Arm::Moat, &run(Some(0), "x")), Outcome::Other);
        let no_devices = format!("{DONE_MARKER}\n");
        assert_eq!(
            classify(Arm::Moat, &run(Some(0), &no_devices)),
            Outcome::Other
        );
        assert_eq!(
            classify(Arm::Moat, &run(Some(4), "x")),
            Outcome::TripleFault
        );
        assert_eq!(classify(Arm::Moat, &run(Some(3), "x")), Outcome::Panic);
        assert_eq!(classify(Arm::Moat, &run(None, "x")), Outcome::Hang);
        assert_eq!(classify(Arm::Qemu, &run(None, &done)), Outcome::Done);
        assert_eq!(
            classify(Arm::Qemu, &run(Some(0), "x")),
            Outcome::TripleFault
        );
        assert_eq!(classify(Arm::Qemu, &run(None, "x")), Outcome::Hang);
        let panic = "Kernel panic - not syncing: x";
        assert_eq!(classify(Arm::Qemu, &run(Some(0), panic)), Outcome::Panic);
    }

    #[test]
    fn the_report_lines_up_the_arms() {
        let mut t = Tally::default();
        t.add(Outcome::Done);
        t.add(Outcome::TripleFault);
        assert_eq!((t.runs(), t.failures()), (2, 1));
        let r = report(&[(Arm::Moat, t.clone()), (Arm::Qemu, Tally::default())]);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("moat-vmm"), "{r}");
        assert!(lines[1]
            .split_whitespace()
            .eq(["moat-vmm", "2", "1", "1", "0", "0", "0"]));
    }
}
