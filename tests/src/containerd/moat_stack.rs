//! The whole moat stack for tests, the demo and the benchmarks: a private containerd 1.6
//! ([`super::Containerd`]) that runs [`RUNTIME_ID`] (the built `containerd-shim-moat-v2`,
//! configured with a [`Config`] for the built moat-vmm, the cached guest kernel and the agent
//! image), with the locally built busybox image imported; plus the leak checks every flow
//! ends with (no moat process, no pod directory, no mount under moat's state dir and no mount
//! anywhere on the host that was not there when the stack started).
//!
//! The shim's configuration, runtime name and pod directory layout come from the shim itself
//! (`moat_runtime`), so the stack always matches the shim it runs.
//!
//! Must run where KVM boots Linux: in the test host (see [`crate::on_kvm_retrying`]) unless
//! the machine has hardware virtualization.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_runtime::{Config, PodDir, DEFAULT_STATE_DIR, RUNTIME_ID};
use tempfile::TempDir;

use super::{oci_image, sys, Containerd, ContainerdOptions, CtrOutput, LiveCtr};
use crate::guest::GuestImage;

/// The guest memory of the stack's pods, MiB.
pub const VM_MEMORY_MIB: u64 = 256;
/// How long [`Stack::assert_no_leftovers`] waits for teardown (containerd reaps its shims
/// lazily).
const LEFTOVER_WAIT: Duration = Duration::from_secs(10);

/// The shim configuration the stack uses: the shim's defaults with the built moat-vmm, the
/// cached guest kernel, the agent image, 1 vCPU, [`VM_MEMORY_MIB`], state in
/// [`DEFAULT_STATE_DIR`], debug logs and the `moat.vm.*` sizing annotations enabled (the
/// sizing flows use them; off by default).
pub fn config() -> Result<Config, String> {
    let kernel = crate::kernel_path("guest").map_err(|e| format!("guest kernel: {e}"))?;
    let image = GuestImage::agent_image().map_err(|e| format!("agent image: {e}"))?;
    let vmm = crate::try_cargo_bin("moat-vmm").map_err(|e| e.to_string())?;
    let mut cfg = Config::default();
    cfg.vm.vmm = vmm;
    cfg.vm.kernel = kernel;
    cfg.vm.initrd = image.initrd;
    cfg.vm.vcpus = 1;
    cfg.vm.memory_mib = VM_MEMORY_MIB;
    cfg.runtime.state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    cfg.runtime.log_level = "debug".into();
    cfg.vm.enable_annotations = true;
    Ok(cfg)
}

/// Writes [`config`] into `dir` as `moat.toml`; returns the file's path.
pub fn write_config(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("moat.toml");
    std::fs::write(&path, config()?.to_toml())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// A private containerd that finds the shim (target dir on its PATH), with the busybox image
/// imported. Dropping it stops containerd and removes its directories.
pub struct Stack {
    /// The running containerd.
    pub containerd: Containerd,
    /// The imported busybox image's name.
    pub image: String,
    /// The moat config file the shim reads.
    pub config: PathBuf,
    /// Every mount point on the host once the stack was up (see [`mounts_since`]).
    mount_baseline: Vec<PathBuf>,
    /// Every cgroup directory on the host once the stack was up (see [`cgroups_since`]).
    cgroup_baseline: Vec<PathBuf>,
    /// This stack's scratch directory (config, image tar), removed on drop (after
    /// containerd is gone: fields drop in order).
    dir: TempDir,
}

impl Stack {
    /// Starts containerd with default options.
    pub fn start() -> Result<Stack, String> {
        Stack::start_with(|_| {})
    }

    /// Starts containerd after `tune` has adjusted its options (sandbox image, extra TOML...).
    pub fn start_with(tune: impl FnOnce(&mut ContainerdOptions)) -> Result<Stack, String> {
        let dir = tempfile::Builder::new()
            .prefix("moat-ctrd-")
            .tempdir()
            .map_err(|e| format!("creating a scratch dir: {e}"))?;
        let config = write_config(dir.path())?;
        let shim = crate::try_cargo_bin("containerd-shim-moat-v2")
            .map_err(|e| format!("{e} (cargo build -p moat-runtime)"))?;
        let mut opts = ContainerdOptions {
            extra_path: vec![shim.parent().unwrap().to_path_buf()],
            env: vec![(
                OsString::from("MOAT_CONFIG"),
                config.clone().into_os_string(),
            )],
            moat_runtime_path: Some(shim),
            moat_config_path: Some(config.clone()),
            log_level: "debug".into(),
            ..Default::default()
        };
        tune(&mut opts);
        let containerd = Containerd::start(opts).map_err(|e| format!("containerd: {e}"))?;
        let tar = dir.path().join("busybox.tar");
        let image = oci_image::build_busybox_image(&tar, oci_image::DEFAULT_BUSYBOX_IMAGE)
            .map_err(|e| format!("busybox image: {e}"))?;
        containerd
            .import(&tar)
            .map_err(|e| format!("importing the busybox image: {e}"))?;
        Ok(Stack {
            containerd,
            image: image.name,
            config,
            mount_baseline: mount_table(),
            cgroup_baseline: cgroup_table(),
            dir,
        })
    }

    /// This stack's scratch directory (the shim's config, the image tar; tests may add
    /// their own files), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr ARGS` (any exit status); panics when ctr cannot run or times out.
    pub fn ctr(&self, args: &[&str]) -> CtrOutput {
        self.containerd
            .ctr(args)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    /// `ctr ARGS`, which must succeed; panics otherwise.
    pub fn ctr_ok(&self, args: &[&str]) -> CtrOutput {
        self.containerd
            .ctr_ok(args)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    /// `ctr run --rm --runtime RUNTIME IMAGE ID ARGS...` with `stdin`, 60 s at most.
    pub fn run_rm_with(
        &self,
        runtime: &str,
        id: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<CtrOutput, String> {
        let mut all = vec!["run", "--rm", "--runtime", runtime, &self.image, id];
        all.extend_from_slice(args);
        self.containerd
            .ctr_with(&all, stdin, Duration::from_secs(60))
            .map_err(|e| format!("ctr {all:?}: {e}"))
    }

    /// `ctr run --rm --runtime io.containerd.moat.v2 IMAGE ID ARGS...` with `stdin`; panics
    /// when ctr cannot run.
    pub fn run_rm(&self, id: &str, args: &[&str], stdin: Option<&[u8]>) -> CtrOutput {
        self.run_rm_with(RUNTIME_ID, id, args, stdin)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The tail of containerd's log (the shim logs there too), for messages.
    pub fn log(&self) -> String {
        self.containerd.log_tail()
    }

    /// For CRI flows: builds and imports the pause image ([`oci_image::DEFAULT_PAUSE_IMAGE`],
    /// which the stack's `sandbox_image` must name) and connects a CRI client.
    pub fn cri_client(&self) -> super::cri::CriClient {
        let pause = self.dir().join("pause.tar");
        oci_image::build_pause_image(&pause, oci_image::DEFAULT_PAUSE_IMAGE)
            .unwrap_or_else(|e| panic!("{e}"));
        self.containerd
            .import(&pause)
            .unwrap_or_else(|e| panic!("importing the pause image: {e}"));
        super::cri::CriClient::for_containerd(&self.containerd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until task `id` is listed as `status` (`RUNNING`, `STOPPED`...) by `ctr task ls`.
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) {
        self.containerd
            .wait_task_status(id, status, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops containerd, failing if it left anything behind.
    pub fn stop(self) -> Result<(), String> {
        let Stack { containerd, .. } = self;
        containerd
            .stop()
            .map_err(|e| format!("stopping containerd: {e}"))
    }

    /// The host's mount points when the stack had started (containerd up, image imported).
    pub fn mount_baseline(&self) -> &[PathBuf] {
        &self.mount_baseline
    }

    /// What moat left behind, after waiting for teardown: `None` when nothing. Mounts count
    /// anywhere on the host: any under moat's state dir, and any not in [`Self::mount_baseline`];
    /// so do cgroups (a pod's VMM runs in one the shim makes): any not there at the start.
    pub fn leftovers(&self) -> Option<String> {
        leftovers_since(
            &self.mount_baseline,
            Some(&self.cgroup_baseline),
            LEFTOVER_WAIT,
        )
    }

    /// Panics unless no moat process, pod directory or new mount (see [`Self::leftovers`]) is
    /// left.
    pub fn assert_no_leftovers(&self) {
        if let Some(left) = self.leftovers() {
            panic!("left behind: {left}\n--- log ---\n{}", self.log());
        }
    }

    /// `ctr run -d --null-io --runtime io.containerd.moat.v2 IMAGE ID ARGS...`, which must
    /// succeed.
    pub fn run_detached(&self, id: &str, args: &[&str]) -> CtrOutput {
        self.run_detached_with(&[], id, args)
    }

    /// [`Self::run_detached`] with more `ctr run` flags (`--memory-limit N`...).
    pub fn run_detached_with(&self, flags: &[&str], id: &str, args: &[&str]) -> CtrOutput {
        self.ctr_ok(&self.detached_args(flags, id, args))
    }

    /// [`Self::run_detached_with`], whatever its exit status (for runs that may be refused).
    pub fn try_run_detached_with(&self, flags: &[&str], id: &str, args: &[&str]) -> CtrOutput {
        self.ctr(&self.detached_args(flags, id, args))
    }

    fn detached_args<'a>(
        &'a self,
        flags: &[&'a str],
        id: &'a str,
        args: &[&'a str],
    ) -> Vec<&'a str> {
        let mut all = vec!["run", "-d", "--null-io", "--runtime", RUNTIME_ID];
        all.extend_from_slice(flags);
        all.extend([self.image.as_str(), id]);
        all.extend_from_slice(args);
        all
    }

    /// Pod `pod`'s state directory (`<state dir>/<namespace>/<pod>`), laid out as the shim
    /// lays it out.
    pub fn pod_dir(&self, pod: &str) -> PodDir {
        PodDir::new(
            Path::new(DEFAULT_STATE_DIR),
            self.containerd.namespace(),
            pod,
        )
    }

    /// SIGKILLs container `id`'s task (a `sleep` as PID 1 ignores SIGTERM), waits up to
    /// `timeout` until it stopped, and deletes task and container.
    pub fn kill_and_delete(&self, id: &str, timeout: Duration) {
        self.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        self.wait_task_status(id, "STOPPED", timeout);
        self.ctr_ok(&["task", "delete", id]);
        self.ctr_ok(&["container", "delete", id]);
    }

    /// The pid of the jailed moat-vmm of pod `pod` (the one running the VM, in its own PID
    /// namespace), or of [`Stack::vmm_pid`] when it has no jailed child.
    pub fn jailed_vmm_pid(&self, pod: &str) -> Option<u32> {
        let pid = self.vmm_pid(pod)?;
        Some(crate::jail::jailed_child(pid).unwrap_or(pid))
    }

    /// The pid of pod `pod`'s live moat-vmm process the shim spawned (its command line names
    /// the pod's `vm.json`): the jail's supervisor, whose death takes the jailed VMM along.
    pub fn vmm_pid(&self, pod: &str) -> Option<u32> {
        let config = self.pod_dir(pod).vm_config();
        let config = config.as_os_str().as_bytes();
        outer_vmms()
            .into_iter()
            .find(|(_, _, argv)| {
                argv.iter()
                    .any(|a| a.windows(config.len()).any(|w| w == config))
            })
            .map(|(pid, _, _)| pid)
    }

    /// The live shim process serving shim group `group` (a lone container's id, or its
    /// pod's) for this containerd, with its `-socket`: the one `start` spawned (`start` and
    /// `delete` runs have no `-socket`).
    pub fn shim_process(&self, group: &str) -> Option<(u32, PathBuf)> {
        let procs = sys::list();
        let ours = sys::with_address(&procs, self.containerd.address());
        let flag = |argv: &[Vec<u8>], name: &[u8]| {
            argv.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
        };
        procs
            .iter()
            .filter(|(pid, _, _)| ours.contains(pid) && sys::alive(*pid))
            .find_map(|(pid, _, argv)| {
                let socket = flag(argv, b"-socket")?;
                (flag(argv, b"-id")? == group.as_bytes()).then(|| {
                    let socket = OsStr::from_bytes(&socket).to_string_lossy().into_owned();
                    let path = socket.strip_prefix("unix://").unwrap_or(&socket);
                    (*pid, PathBuf::from(path))
                })
            })
    }

    /// `ctr ARGS` with stdin `/dev/null`, its stdout and stderr readable while it runs.
    pub fn ctr_live(&self, args: &[&str]) -> LiveCtr {
        LiveCtr::piped(self.containerd.ctr_command(args), args)
    }

    /// `ctr ARGS` on a fresh pty of `rows` x `cols` (its controlling terminal, as in a
    /// shell: `ctr run -t` needs one); the pty's output is its stdout.
    pub fn ctr_on_pty(&self, args: &[&str], rows: u16, cols: u16) -> LiveCtr {
        LiveCtr::on_pty(self.containerd.ctr_command(args), args, rows, cols)
    }

    /// Kills containerd alone (SIGKILL; shims and VMs keep running) and starts it again on
    /// the same state (see [`Containerd::restart`]).
    pub fn restart_containerd(&mut self) {
        self.containerd
            .restart()
            .unwrap_or_else(|e| panic!("restarting containerd: {e}"));
    }

    /// `ctr run` flags that make a container guest root: CAP_SYS_ADMIN and a seccomp profile
    /// (written to the stack's dir) that allows every syscall.
    pub fn guest_root_flags(&self) -> Vec<String> {
        let unconfined = self.dir().join("unconfined.json");
        std::fs::write(&unconfined, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)
            .unwrap_or_else(|e| panic!("writing {}: {e}", unconfined.display()));
        let profile = unconfined.to_string_lossy().into_owned();
        [
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--seccomp",
            "--seccomp-profile",
            &profile,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Force-deletes every task and container of the namespace, and every CRI pod (after a
    /// failed flow).
    pub fn remove_all(&self) {
        let ids = |what: &str| -> Vec<String> {
            let out = self.ctr(&[what, "ls", "-q"]);
            out.stdout_str()
                .lines()
                .map(|l| l.trim().to_owned())
                .collect()
        };
        for id in ids("task").iter().filter(|id| !id.is_empty()) {
            let _ = self.ctr(&["task", "delete", "--force", id]);
        }
        for id in ids("container").iter().filter(|id| !id.is_empty()) {
            let _ = self.ctr(&["container", "delete", id]);
        }
        // CRI pods (their sandbox shm mounts and netns go only with RemovePodSandbox).
        if let Ok(cri) = super::cri::CriClient::for_containerd(&self.containerd) {
            for pod in cri.list_pod_sandboxes().unwrap_or_default() {
                let _ = cri.stop_pod_sandbox(&pod.id);
                let _ = cri.remove_pod_sandbox(&pod.id);
            }
        }
    }

    /// The log line saying the guest crashed (a flaky nested-virtualization triple fault,
    /// worth a retry in a fresh test host), if any.
    pub fn guest_crashed(&self) -> Option<String> {
        self.guest_crashes().into_iter().next()
    }

    /// containerd's whole log (the shim logs there too).
    pub fn log_all(&self) -> String {
        let log = std::fs::read(self.containerd.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Every log line saying a guest crashed, oldest first.
    pub fn guest_crashes(&self) -> Vec<String> {
        // The whole log: the crash may be far from its tail by the time a test fails.
        self.log_all()
            .lines()
            .filter(|l| l.contains("guest crashed") || l.contains("triple fault"))
            .map(String::from)
            .collect()
    }
}

/// What moat left behind, waiting up to `wait` for teardown: `None` when nothing. Live moat
/// processes, pod directories, mounts under moat's state dir and any not in
/// `mount_baseline` (a [`mount_table`]), and, given a `cgroup_baseline` (a [`cgroup_table`]),
/// cgroups not in it.
pub fn leftovers_since(
    mount_baseline: &[PathBuf],
    cgroup_baseline: Option<&[PathBuf]>,
    wait: Duration,
) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let procs = moat_processes();
        let mut mounts = sys::mounts_under(Path::new(DEFAULT_STATE_DIR));
        for m in mounts_since(mount_baseline) {
            if !mounts.contains(&m) {
                mounts.push(m);
            }
        }
        let dirs = pod_dirs();
        let cgroups = cgroup_baseline.map(cgroups_since).unwrap_or_default();
        if procs.is_empty() && mounts.is_empty() && dirs.is_empty() && cgroups.is_empty() {
            return None;
        }
        if Instant::now() > deadline {
            return Some(format!(
                "processes {procs:?}, mounts {mounts:?}, pod dirs {dirs:?}, cgroups {cgroups:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Live moat-vmm and shim processes (not zombies), as `pid: argv`.
pub fn moat_processes() -> Vec<String> {
    sys::list()
        .into_iter()
        .filter(|(pid, _, _)| sys::alive(*pid))
        .map(|(pid, _, argv)| process_line(pid, &argv))
        .filter(|cmd| {
            cmd.contains("moat-vmm")
                || cmd.contains("containerd-shim-moat")
                || cmd.contains("containerd-shim-kata")
        })
        .collect()
}

/// `pid: argv joined by spaces`.
fn process_line(pid: u32, argv: &[Vec<u8>]) -> String {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into())
        .collect();
    format!("{pid}: {}", argv.join(" "))
}

/// One line (`pid: argv`) per live moat-vmm VM: its outermost process, the jail's
/// supervisor (the jailed VMM, its child, is the same VM).
pub fn vm_processes() -> Vec<String> {
    outer_vmms()
        .iter()
        .map(|(pid, _, argv)| process_line(*pid, argv))
        .collect()
}

/// The live moat-vmm processes whose parent is not one: one per VM (a jailed VMM has the
/// same command line as its parent, the jail's supervisor).
fn outer_vmms() -> Vec<sys::Proc> {
    let procs = sys::list();
    let is_vmm = |argv: &[Vec<u8>]| argv.first().is_some_and(|a| a.ends_with(b"moat-vmm"));
    let vmm_pids: Vec<u32> = procs
        .iter()
        .filter(|(pid, _, argv)| is_vmm(argv) && sys::alive(*pid))
        .map(|(pid, _, _)| *pid)
        .collect();
    procs
        .into_iter()
        .filter(|(pid, ppid, _)| vmm_pids.contains(pid) && !vmm_pids.contains(ppid))
        .collect()
}

/// Every mount point on the host (as this process sees `/proc/self/mountinfo`), in mount
/// order; a path mounted on twice is there twice.
pub fn mount_table() -> Vec<PathBuf> {
    sys::mounts_under(Path::new("/"))
}

/// The host's mounts now that are not in `baseline` (a [`mount_table`]): every mount point,
/// counted, beyond its count in the baseline (so a second mount on a path already mounted
/// counts too).
pub fn mounts_since(baseline: &[PathBuf]) -> Vec<PathBuf> {
    beyond(mount_table(), baseline)
}

/// The entries of `now` beyond their count in `baseline`, in order.
fn beyond(now: Vec<PathBuf>, baseline: &[PathBuf]) -> Vec<PathBuf> {
    let mut before: HashMap<&Path, usize> = HashMap::new();
    for m in baseline {
        *before.entry(m.as_path()).or_default() += 1;
    }
    now.into_iter()
        .filter(|m| match before.get_mut(m.as_path()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// Every cgroup directory on the host (every hierarchy under `/sys/fs/cgroup`, v1 or v2),
/// but systemd's own slices, where units come and go without moat.
pub fn cgroup_table() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let systemd = ["system.slice", "user.slice", "init.scope"]
                .iter()
                .any(|s| e.file_name() == *s);
            if !systemd && e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                if depth < 12 {
                    walk(&e.path(), depth + 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 0, &mut out);
    out
}

/// The cgroup directories now that are not in `baseline` (a [`cgroup_table`]), but a
/// containerd namespace's own parent (`/<namespace>` of `ctr`'s `cgroupsPath`
/// `/<namespace>/<id>`), which runc always leaves behind once it made it (the bench runs
/// runc beside moat).
pub fn cgroups_since(baseline: &[PathBuf]) -> Vec<PathBuf> {
    let namespace_parent = |p: &PathBuf| {
        ["k8s.io", "default", "moby"]
            .iter()
            .any(|ns| p.file_name().is_some_and(|n| n == *ns))
    };
    let tests = TEST_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    beyond(cgroup_table(), baseline)
        .into_iter()
        .filter(|p| !namespace_parent(p) && !tests.contains(p))
        .collect()
}

/// Cgroups a test made itself (a kubelet's pod cgroup, [`super::cri::KubeletCgroup`]): not
/// moat's, so not leftovers; the test removes them.
static TEST_CGROUPS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Records `dir` as a cgroup the test itself made (see [`cgroups_since`]).
pub fn test_made_cgroup(dir: &Path) {
    let mut tests = TEST_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    tests.push(dir.to_path_buf());
}

/// Pod directories under the state dir (`<state>/<namespace>/<pod>`).
pub fn pod_dirs() -> Vec<PathBuf> {
    let Ok(nss) = std::fs::read_dir(DEFAULT_STATE_DIR) else {
        return Vec::new();
    };
    nss.flatten()
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

/// SIGKILLs `pid` (a process a test found with [`Stack::vmm_pid`] or
/// [`Stack::shim_process`]); panics if it cannot be signalled.
pub fn sigkill(pid: u32) {
    let p = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: plain kill(2); the pid was just found among this stack's moat processes.
    let r = unsafe { libc::kill(p, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Runs `flow` on a fresh stack, then checks for leftovers and stops containerd. A panic after
/// a guest crash becomes `Err` (for [`crate::on_kvm_retrying`]); other panics go on, with
/// containerd's log printed.
pub fn with_stack(flow: impl FnOnce(&Stack)) -> Result<(), String> {
    with_stack_tuned(|_| {}, flow)
}

/// [`with_stack`] on a stack whose containerd options `tune` adjusted.
pub fn with_stack_tuned(
    tune: impl FnOnce(&mut ContainerdOptions),
    flow: impl FnOnce(&Stack),
) -> Result<(), String> {
    with_stack_mut(tune, |s| flow(s))
}

/// [`with_stack_tuned`] for a flow that changes the stack itself (restarts containerd).
pub fn with_stack_mut(
    tune: impl FnOnce(&mut ContainerdOptions),
    flow: impl FnOnce(&mut Stack),
) -> Result<(), String> {
    let mut stack = Stack::start_with(tune).unwrap_or_else(|e| panic!("{e}"));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flow(&mut stack)));
    if let Err(p) = r {
        eprintln!("--- containerd log ---\n{}", stack.log());
        if let Some(why) = stack.guest_crashed() {
            // A crashed pod must still be cleaned up completely: the retry keeps the check.
            stack.remove_all();
            if let Some(left) = stack.leftovers() {
                panic!("after the guest crash ({why}), moat left behind: {left}");
            }
            return Err(why);
        }
        std::panic::resume_unwind(p);
    }
    stack.assert_no_leftovers();
    stack.stop().unwrap_or_else(|e| panic!("{e}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_mounts_are_counted() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let base = p(&["/", "/proc", "/run", "/run"]);
        assert!(beyond(base.clone(), &base).is_empty());
        // A third mount on /run, one elsewhere; one gone from the baseline does not count.
        let now = p(&["/", "/run", "/run", "/tmp/x", "/run"]);
        assert_eq!(beyond(now, &base), p(&["/tmp/x", "/run"]));
        // This process's own table, against itself.
        let table = mount_table();
        assert!(table.contains(&PathBuf::from("/")), "{table:?}");
        assert!(beyond(table.clone(), &table).is_empty());
    }
}
