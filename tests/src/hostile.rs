//! Host-side helpers of the hostile-guest test (`tests/tests/containerd_moat_hostile.rs`),
//! where a container that escaped to guest root attacks its pod's virtio-fs share with
//! `moat-share-attack` (`tests/guest-tools`): reading the tool's final `ATTACK` lines, a canary
//! directory the attack aims at, free space, the overlay upper dir of a rootfs mount, and
//! running a planted setuid file as an unprivileged host user.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::containerd::sys;

/// The uid and gid the host runs planted files as (`nobody`).
pub const NOBODY: u32 = 65534;

/// One final line of `moat-share-attack`: `ATTACK <mode> key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttackLine {
    /// The subcommand (`race`, `fill`, ...).
    pub mode: String,
    /// Its `key=value` fields.
    pub fields: BTreeMap<String, String>,
    /// The whole line, for messages.
    pub line: String,
}

impl AttackLine {
    /// The last `ATTACK <mode> ...` line of `output`.
    pub fn find(output: &str, mode: &str) -> Result<AttackLine, String> {
        let prefix = format!("ATTACK {mode} ");
        let line = output
            .lines()
            .rev()
            .find(|l| l.starts_with(&prefix))
            .ok_or_else(|| format!("no `ATTACK {mode}` line in {output:?}"))?;
        let fields = line[prefix.len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(AttackLine {
            mode: mode.to_string(),
            fields,
            line: line.to_string(),
        })
    }

    /// Field `key`; panics (naming the line) without it.
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.line))
    }

    /// Field `key` as a number; panics (naming the line) unless it is one.
    pub fn number(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number in {:?}", self.line))
    }
}

/// What a canary directory holds: `relative path -> (mode, content or link target)`.
pub type CanaryState = BTreeMap<PathBuf, (u32, Vec<u8>)>;

/// A directory outside every pod directory with known content: what the attacker's symlinks
/// point at. It must end exactly as it began, with nothing mounted on or under it.
pub struct Canary {
    dir: TempDir,
    before: CanaryState,
}

impl Canary {
    /// Makes a canary under the system's temporary directory: a file, a subdirectory with a
    /// file, a symlink.
    pub fn create() -> io::Result<Canary> {
        let dir = tempfile::Builder::new().prefix("moat-canary-").tempdir()?;
        let p = dir.path();
        std::fs::write(
            p.join("canary.txt"),
            "moat canary: the host must not change this\n",
        )?;
        std::fs::create_dir(p.join("sub"))?;
        std::fs::write(p.join("sub/inner.txt"), "inner\n")?;
        std::os::unix::fs::symlink("canary.txt", p.join("link"))?;
        let before = snapshot(p)?;
        Ok(Canary { dir, before })
    }

    /// The canary's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `Err` (saying what changed) unless the canary holds what it held at creation and
    /// nothing is mounted on or under it.
    pub fn check(&self) -> Result<(), String> {
        let mounts = sys::mounts_under(self.path());
        if !mounts.is_empty() {
            return Err(format!("mounted on the canary: {mounts:?}"));
        }
        let now = snapshot(self.path()).map_err(|e| format!("reading the canary: {e}"))?;
        match now == self.before {
            true => Ok(()),
            false => Err(format!(
                "the canary {} changed: before {:?}, now {:?}",
                self.path().display(),
                self.before,
                now
            )),
        }
    }
}

/// Everything under `root` (not following symlinks), with modes and contents.
pub fn snapshot(root: &Path) -> io::Result<CanaryState> {
    let mut out = CanaryState::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let data = if meta.is_dir() {
                todo.push(path.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)?
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path)?
            };
            out.insert(rel, (meta.mode(), data));
        }
    }
    Ok(out)
}

/// Bytes free (for unprivileged users) on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out pointer; the result is checked.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// The `upperdir=` of the overlay mounted at `mount_point` (from `/proc/self/mountinfo`), if
/// an overlay is mounted there.
pub fn overlay_upperdir(mount_point: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    upperdir_in(&info, mount_point)
}

/// [`overlay_upperdir`] in mountinfo text `info` (the last matching mount wins).
pub fn upperdir_in(info: &str, mount_point: &Path) -> Option<PathBuf> {
    let want = mount_point.to_str()?;
    info.lines().rev().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        if before.split(' ').nth(4)? != want {
            return None;
        }
        let mut fs = after.split(' ');
        if fs.next()? != "overlay" {
            return None;
        }
        let options = fs.nth(1)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
    })
}

/// How a planted program is reached from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// By its path: the directories on the way must let [`NOBODY`] through.
    Path,
    /// Through an fd root opened (`/proc/self/fd/3`): only the file's own mount decides
    /// (`nosuid`, `noexec`), whatever the directories above it allow.
    Fd,
}

/// What running a planted program as [`NOBODY`] gave.
#[derive(Debug)]
pub struct NobodyRun {
    /// How it was reached.
    pub reach: Reach,
    /// The exit status.
    pub status: std::process::ExitStatus,
    /// What it printed (stdout, then stderr).
    pub output: String,
    /// The effective uid it reported (`ATTACK whoami euid=N`), if it ran.
    pub euid: Option<u64>,
}

/// Runs `program whoami` (a planted `moat-share-attack`) as uid and gid [`NOBODY`] with no
/// supplementary groups and no capabilities, reaching it as `reach` says: `setpriv` runs a
/// shell as nobody, and that shell execs the program (setpriv itself still holds root's
/// capabilities while it execs, which would let it through directories nobody cannot enter).
pub fn run_as_nobody(program: &Path, reach: Reach) -> io::Result<NobodyRun> {
    let setpriv = format!(
        "exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \
         /bin/sh -c 'exec \"$0\" whoami'"
    );
    // `$0` of the outer shell is the program's path.
    let script = match reach {
        Reach::Path => format!("{setpriv} \"$0\""),
        Reach::Fd => format!("exec 3<\"$0\" && {setpriv} /proc/self/fd/3"),
    };
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .arg(program)
        .output()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let euid = AttackLine::find(&output, "whoami")
        .ok()
        .and_then(|l| l.get("euid").parse().ok());
    Ok(NobodyRun {
        reach,
        status: out.status,
        output,
        euid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_lines_parse() {
        let out = "race: errors EROFS=3\nATTACK race attempts=3 planted=0 erofs=3\n";
        let l = AttackLine::find(out, "race").unwrap();
        assert_eq!((l.number("attempts"), l.get("erofs")), (3, "3"));
        assert!(AttackLine::find(out, "fill").is_err());
        let two = "ATTACK fill bytes=1\nATTACK fill bytes=2\n";
        assert_eq!(AttackLine::find(two, "fill").unwrap().number("bytes"), 2);
    }

    #[test]
    fn canary_sees_changes() {
        let c = Canary::create().unwrap();
        c.check().unwrap();
        std::fs::write(c.path().join("sub/inner.txt"), "changed\n").unwrap();
        let e = c.check().unwrap_err();
        assert!(e.contains("changed"), "{e}");
        std::fs::write(c.path().join("sub/inner.txt"), "inner\n").unwrap();
        c.check().unwrap();
        std::fs::write(c.path().join("new"), "").unwrap();
        assert!(c.check().is_err());
    }

    #[test]
    fn upperdir_of_an_overlay() {
        let info = "\
            36 25 0:32 / /run/p/share/c1/rootfs rw,nosuid - overlay overlay \
            rw,lowerdir=/l1:/l2,upperdir=/s/5/fs,workdir=/s/5/work\n\
            37 25 0:33 / /run/p/share/c2/rootfs rw - tmpfs tmpfs rw\n";
        assert_eq!(
            upperdir_in(info, Path::new("/run/p/share/c1/rootfs")),
            Some(PathBuf::from("/s/5/fs"))
        );
        assert_eq!(upperdir_in(info, Path::new("/run/p/share/c2/rootfs")), None);
        assert_eq!(upperdir_in(info, Path::new("/nowhere")), None);
    }

    /// A script standing in for the planted program, in a 0700 directory: nobody cannot reach
    /// it by path, but can through the fd (and runs as nobody).
    #[test]
    fn nobody_runs_through_an_fd_only() {
        let dir = TempDir::new().unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(dir.path(), private).unwrap();
        let prog = dir.path().join("whoami.sh");
        let script = "#!/bin/sh\necho \"ATTACK whoami euid=$(id -u) uid=$(id -ru)\"\n";
        std::fs::write(&prog, script).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&prog, mode).unwrap();
        let by_path = run_as_nobody(&prog, Reach::Path).unwrap();
        assert_eq!(by_path.euid, None, "{by_path:?}");
        assert!(!by_path.status.success(), "{by_path:?}");
        let by_fd = run_as_nobody(&prog, Reach::Fd).unwrap();
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(by_fd.euid, Some(u64::from(NOBODY)), "{by_fd:?}");
        } else {
            println!("not root: setpriv cannot switch to nobody ({by_fd:?})");
            assert_eq!(by_fd.euid, None, "{by_fd:?}");
        }
    }

    #[test]
    fn free_bytes_of_tmp() {
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }
}
