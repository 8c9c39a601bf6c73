//! `moat-share-attack`: what a container that escaped to guest root does to a moat pod's
//! virtio-fs share (tag `pod`), for the hostile-guest test
//! (`tests/tests/containerd_moat_hostile.rs`). Each subcommand prints details, then one final
//! machine-readable line `ATTACK <mode> key=value ...`; results are `ok` or an errno name
//! (`EROFS`, `EPERM`, ...).
//!
//! ```text
//! moat-share-attack mount-share <dir> [--tag pod]
//!     mount(2) virtio-fs tag `pod` at <dir> (created): a second mount of the tag shares the
//!     agent's superblock, so <dir> is the share as the agent sees it.
//!     ATTACK mount-share dir=<dir> tag=<tag> result=ok entries=<n>
//! moat-share-attack race --share <dir> --target <host path> [--predict PREFIX]
//!                        [--seconds N] [--stop-file PATH]
//!     Until N seconds (default 60) passed or PATH exists (at least one round): plants
//!     symlinks to <host path> at every mount point the host creates in the share
//!     (`<cid>/rootfs`, `<cid>/mounts/*`; rename over, unlink then symlink, mkdir then
//!     symlink inside) and at the ids predicted next (PREFIX-<n+1..n+3> for the highest
//!     PREFIX-<n> seen: a symlink, or a directory of symlinks). Prints `race: started ...`
//!     at once.
//!     ATTACK race attempts=N planted=M erofs=K other=J seen=S rounds=R
//! moat-share-attack fill <dir> [--max-mib N] [--max-files N]
//!     1 MiB files until an error, then empty files until an error (or the caps); removes
//!     them afterwards.
//!     ATTACK fill dir=<dir> bytes=B files=F data_errno=E errno=E capped=0|1 removed=R
//! moat-share-attack mknod <dir>
//!     mknod of a char device 1,1 (/dev/mem), a block device 8,0 and a FIFO in <dir>
//!     (created); removes what was made.
//!     ATTACK mknod dir=<dir> chr=EPERM blk=EPERM fifo=ok
//! moat-share-attack setuid <path>
//!     Copies this program to <path>, chowns it 0:0, chmods it 04755.
//!     ATTACK setuid path=<path> copy=ok chown=ok chmod=ok mode=4755 uid=0
//! moat-share-attack whoami
//!     ATTACK whoami euid=<n> uid=<n>
//! ```
//!
//! Exit status: 0 once the final line is printed (the result is in the line), 1 when
//! `mount-share` fails, 2 on a usage error. Built static like `moat-vsock-echo`
//! (`tests/scripts/build-guest-tools.sh`); its logic runs against any directory, which its
//! unit tests use.

mod probes;
mod race;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// What the program prints its final line with.
pub const PREFIX: &str = "ATTACK";

/// The usage text, for errors.
const USAGE: &str = "usage: moat-share-attack mount-share <dir> [--tag TAG] | \
     race --share <dir> --target <path> [--predict PREFIX] [--seconds N] [--stop-file PATH] | \
     fill <dir> [--max-mib N] [--max-files N] | mknod <dir> | setuid <path> | whoami";

/// The name of errno `e` (`EROFS`), or `E<e>` for one not in the table.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

/// `ok`, or the name of the error's errno (`EIO` for an error without one).
pub fn outcome<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The last OS error of a libc call that returned `rc` (`Ok` when `rc` is 0).
pub fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Command-line arguments after the subcommand: positionals and `--flag value` pairs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// The positional arguments, in order.
    pub positional: Vec<String>,
    /// The flags given (without `--`).
    pub flags: BTreeMap<String, String>,
}

impl Args {
    /// Splits `args`; every flag must be one of `known` and have a value.
    pub fn parse(args: &[String], known: &[&str]) -> Result<Args, String> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                out.positional.push(a.clone());
                continue;
            };
            if !known.contains(&flag) {
                return Err(format!("unknown flag --{flag}"));
            }
            let value = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
            out.flags.insert(flag.to_string(), value.clone());
        }
        Ok(out)
    }

    /// The only positional argument.
    pub fn one_positional(&self, what: &str) -> Result<&str, String> {
        match self.positional.as_slice() {
            [one] => Ok(one),
            _ => Err(format!("expected exactly one {what}")),
        }
    }

    /// Flag `name` as a path (required).
    pub fn path(&self, name: &str) -> Result<PathBuf, String> {
        self.flags
            .get(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// Flag `name` as a number, if given.
    pub fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.flags
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{name}: {v:?} is not a number"))
            })
            .transpose()
    }
}

/// Runs subcommand `cmd` with `rest`; returns the lines to print (the final line last) and
/// whether the attack could run at all.
fn run(cmd: &str, rest: &[String]) -> Result<(Vec<String>, bool), String> {
    match cmd {
        "mount-share" => {
            let a = Args::parse(rest, &["tag"])?;
            let tag = a.flags.get("tag").map_or("pod", String::as_str);
            Ok(probes::mount_share(
                a.one_positional("directory")?.as_ref(),
                tag,
            ))
        }
        "race" => {
            let a = Args::parse(
                rest,
                &["share", "target", "predict", "seconds", "stop-file"],
            )?;
            if !a.positional.is_empty() {
                return Err("race takes no positional argument".into());
            }
            let cfg = race::RaceConfig {
                share: a.path("share")?,
                target: a.path("target")?,
                predict: a.flags.get("predict").cloned(),
                duration: Duration::from_secs(a.number("seconds")?.unwrap_or(60)),
                stop_file: a.flags.get("stop-file").map(PathBuf::from),
            };
            // Said at once, so a caller can wait for the race to be under way.
            println!("{}", race::started(&cfg));
            Ok((race::race(&cfg).report(), true))
        }
        "fill" => {
            let a = Args::parse(rest, &["max-mib", "max-files"])?;
            let caps = probes::FillCaps {
                mib: a.number("max-mib")?,
                files: a.number("max-files")?,
            };
            let dir = a.one_positional("directory")?;
            Ok((probes::fill(dir.as_ref(), caps).report(), true))
        }
        "mknod" => {
            let a = Args::parse(rest, &[])?;
            Ok((probes::mknod(a.one_positional("directory")?.as_ref()), true))
        }
        "setuid" => {
            let a = Args::parse(rest, &[])?;
            Ok((probes::setuid(a.one_positional("path")?.as_ref()), true))
        }
        "whoami" if rest.is_empty() => Ok((vec![probes::whoami()], true)),
        _ => Err(format!("unknown subcommand or arguments: {cmd} {rest:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("moat-share-attack: {USAGE}");
        return ExitCode::from(2);
    };
    match run(cmd, rest) {
        Ok((lines, ran)) => {
            for l in lines {
                println!("{l}");
            }
            if ran {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("moat-share-attack: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
