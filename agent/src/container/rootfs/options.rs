//! OCI mount options (fstab-style strings) parsed the way runc's `parseMountOptions` does:
//! mount flags set or cleared, propagation changes, recursive `mount_setattr` attributes, and
//! everything else as filesystem data (`mode=755,size=65536k`).

use libc::c_ulong;

use super::sys::attr;

/// A parsed option list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MountOptions {
    /// `MS_*` flags to set.
    pub flags: c_ulong,
    /// `MS_*` flags the options explicitly clear (`rw`, `suid`, `exec`...).
    pub cleared: c_ulong,
    /// Propagation changes (`MS_PRIVATE|MS_REC`...), applied in order after the mount.
    pub propagation: Vec<c_ulong>,
    /// `MOUNT_ATTR_*` to set recursively (`rro`, `rnosuid`...).
    pub rec_attr_set: u64,
    /// `MOUNT_ATTR_*` to clear recursively (`rrw`, `rsuid`...).
    pub rec_attr_clr: u64,
    /// Options that are not flags, passed to the filesystem as data.
    pub data: Vec<String>,
    /// `tmpcopyup` was given (not supported: ignored).
    pub tmpcopyup: bool,
}

/// A flag option: `(name, clears?, MS_* bits)`, runc's `mountFlags` table.
const FLAGS: &[(&str, bool, c_ulong)] = &[
    ("acl", false, libc::MS_POSIXACL),
    ("async", true, libc::MS_SYNCHRONOUS),
    ("atime", true, libc::MS_NOATIME),
    ("bind", false, libc::MS_BIND),
    ("defaults", false, 0),
    ("dev", true, libc::MS_NODEV),
    ("diratime", true, libc::MS_NODIRATIME),
    ("dirsync", false, libc::MS_DIRSYNC),
    ("exec", true, libc::MS_NOEXEC),
    ("iversion", false, libc::MS_I_VERSION),
    ("lazytime", false, libc::MS_LAZYTIME),
    ("loud", true, libc::MS_SILENT),
    ("mand", false, libc::MS_MANDLOCK),
    ("noacl", true, libc::MS_POSIXACL),
    ("noatime", false, libc::MS_NOATIME),
    ("nodev", false, libc::MS_NODEV),
    ("nodiratime", false, libc::MS_NODIRATIME),
    ("noexec", false, libc::MS_NOEXEC),
    ("noiversion", true, libc::MS_I_VERSION),
    ("nolazytime", true, libc::MS_LAZYTIME),
    ("nomand", true, libc::MS_MANDLOCK),
    ("norelatime", true, libc::MS_RELATIME),
    ("nostrictatime", true, libc::MS_STRICTATIME),
    ("nosuid", false, libc::MS_NOSUID),
    ("nosymfollow", false, libc::MS_NOSYMFOLLOW),
    ("rbind", false, libc::MS_BIND | libc::MS_REC),
    ("relatime", false, libc::MS_RELATIME),
    ("remount", false, libc::MS_REMOUNT),
    ("ro", false, libc::MS_RDONLY),
    ("rw", true, libc::MS_RDONLY),
    ("silent", false, libc::MS_SILENT),
    ("strictatime", false, libc::MS_STRICTATIME),
    ("suid", true, libc::MS_NOSUID),
    ("sync", false, libc::MS_SYNCHRONOUS),
    ("symfollow", true, libc::MS_NOSYMFOLLOW),
];

/// Propagation options and their `MS_*` flags.
const PROPAGATION: &[(&str, c_ulong)] = &[
    ("private", libc::MS_PRIVATE),
    ("rprivate", libc::MS_PRIVATE | libc::MS_REC),
    ("shared", libc::MS_SHARED),
    ("rshared", libc::MS_SHARED | libc::MS_REC),
    ("slave", libc::MS_SLAVE),
    ("rslave", libc::MS_SLAVE | libc::MS_REC),
    ("unbindable", libc::MS_UNBINDABLE),
    ("runbindable", libc::MS_UNBINDABLE | libc::MS_REC),
];

/// Recursive attribute options: `(name, clears?, MOUNT_ATTR_*)`, runc's `recAttrFlags`.
const REC_ATTRS: &[(&str, bool, u64)] = &[
    ("rro", false, attr::RDONLY),
    ("rrw", true, attr::RDONLY),
    ("rnosuid", false, attr::NOSUID),
    ("rsuid", true, attr::NOSUID),
    ("rnodev", false, attr::NODEV),
    ("rdev", true, attr::NODEV),
    ("rnoexec", false, attr::NOEXEC),
    ("rexec", true, attr::NOEXEC),
    ("rnodiratime", false, attr::NODIRATIME),
    ("rdiratime", true, attr::NODIRATIME),
    ("rrelatime", false, attr::RELATIME),
    ("rnorelatime", true, attr::RELATIME),
    ("rnoatime", false, attr::NOATIME),
    ("ratime", true, attr::NOATIME),
    ("rstrictatime", false, attr::STRICTATIME),
    ("rnostrictatime", true, attr::STRICTATIME),
    ("rnosymfollow", false, attr::NOSYMFOLLOW),
    ("rsymfollow", true, attr::NOSYMFOLLOW),
];

/// The `MS_*` value of a propagation word (`rslave`...), for `linux.rootfsPropagation`.
pub(crate) fn propagation_flag(word: &str) -> Option<c_ulong> {
    PROPAGATION
        .iter()
        .find(|(name, _)| *name == word)
        .map(|(_, f)| *f)
}

impl MountOptions {
    /// Parses an OCI option list. Errors (with the offending option) only for what moat cannot
    /// honour: idmapped mounts (`idmap`, `ridmap`).
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<Self, String> {
        let mut o = MountOptions::default();
        for opt in options {
            let opt = opt.as_ref();
            if let Some(&(_, clear, flag)) = FLAGS.iter().find(|(n, _, _)| *n == opt) {
                if clear {
                    o.flags &= !flag;
                    o.cleared |= flag;
                } else {
                    o.flags |= flag;
                    o.cleared &= !flag;
                }
            } else if let Some(p) = propagation_flag(opt) {
                o.propagation.push(p);
            } else if let Some(&(_, clear, a)) = REC_ATTRS.iter().find(|(n, _, _)| *n == opt) {
                if clear {
                    o.rec_attr_clr |= a;
                    o.rec_attr_set &= !a;
                } else {
                    o.rec_attr_set |= a;
                    o.rec_attr_clr &= !a;
                    // mount_setattr(2): an atime setting needs MOUNT_ATTR__ATIME in attr_clr.
                    if a & attr::ATIME == a {
                        o.rec_attr_clr |= attr::ATIME;
                    }
                }
            } else if opt == "idmap" || opt == "ridmap" {
                return Err(format!("option {opt:?}: idmapped mounts are not supported"));
            } else if opt == "tmpcopyup" {
                o.tmpcopyup = true;
            } else if !opt.is_empty() {
                o.data.push(opt.to_string());
            }
        }
        Ok(o)
    }

    /// Whether this is a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }

    /// Whether the bind is recursive (`rbind`).
    #[cfg(test)]
    pub fn is_recursive(&self) -> bool {
        self.flags & libc::MS_REC != 0
    }

    /// Whether `ro` was asked for.
    pub fn read_only(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }

    /// Whether any recursive attribute (`rro`...) was given.
    pub fn has_rec_attrs(&self) -> bool {
        self.rec_attr_set != 0 || self.rec_attr_clr != 0
    }

    /// The data string for mount(2): the non-flag options joined with commas.
    pub fn data(&self) -> String {
        self.data.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_and_clear_in_order() {
        let o = MountOptions::parse(&["ro", "nosuid", "nodev", "noexec", "rw"]).unwrap();
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        assert_eq!(o.cleared, libc::MS_RDONLY);
        let o = MountOptions::parse(&["rw", "ro"]).unwrap();
        assert_eq!(o.flags, libc::MS_RDONLY);
        assert_eq!(o.cleared, 0);
        assert!(o.read_only());
    }

    #[test]
    fn every_runc_flag_word_is_known() {
        for word in [
            "ro",
            "rw",
            "suid",
            "nosuid",
            "dev",
            "nodev",
            "exec",
            "noexec",
            "sync",
            "async",
            "dirsync",
            "remount",
            "mand",
            "nomand",
            "atime",
            "noatime",
            "diratime",
            "nodiratime",
            "relatime",
            "norelatime",
            "strictatime",
            "nostrictatime",
            "bind",
            "rbind",
            "defaults",
            "nosymfollow",
            "symfollow",
            "lazytime",
            "iversion",
            "acl",
        ] {
            let o = MountOptions::parse(&[word]).unwrap();
            assert!(o.data.is_empty(), "{word} became data");
        }
    }

    #[test]
    fn bind_and_rbind() {
        let o = MountOptions::parse(&["bind"]).unwrap();
        assert!(o.is_bind() && !o.is_recursive());
        let o = MountOptions::parse(&["rbind", "ro"]).unwrap();
        assert!(o.is_bind() && o.is_recursive() && o.read_only());
        assert!(!MountOptions::parse(&["nosuid"]).unwrap().is_bind());
    }

    #[test]
    fn propagation_words() {
        let o = MountOptions::parse(&["rbind", "rprivate", "slave", "runbindable"]).unwrap();
        assert_eq!(
            o.propagation,
            vec![
                libc::MS_PRIVATE | libc::MS_REC,
                libc::MS_SLAVE,
                libc::MS_UNBINDABLE | libc::MS_REC
            ]
        );
        for (word, flag) in [
            ("private", libc::MS_PRIVATE),
            ("shared", libc::MS_SHARED),
            ("rshared", libc::MS_SHARED | libc::MS_REC),
            ("rslave", libc::MS_SLAVE | libc::MS_REC),
            ("unbindable", libc::MS_UNBINDABLE),
        ] {
            assert_eq!(propagation_flag(word), Some(flag));
        }
        assert_eq!(propagation_flag("bogus"), None);
    }

    #[test]
    fn unknown_options_are_data() {
        let o = MountOptions::parse(&["nosuid", "mode=755", "size=65536k", "strictatime"]).unwrap();
        assert_eq!(o.data(), "mode=755,size=65536k");
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        let o =
            MountOptions::parse(&["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]).unwrap();
        assert_eq!(o.data(), "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert_eq!(o.flags, 0);
    }

    #[test]
    fn recursive_attributes() {
        let o = MountOptions::parse(&["rbind", "rro", "rnosuid"]).unwrap();
        assert_eq!(o.rec_attr_set, attr::RDONLY | attr::NOSUID);
        assert_eq!(o.rec_attr_clr, 0);
        assert!(o.has_rec_attrs());
        let o = MountOptions::parse(&["rnoatime"]).unwrap();
        assert_eq!(o.rec_attr_set, attr::NOATIME);
        assert_eq!(o.rec_attr_clr, attr::ATIME);
        let o = MountOptions::parse(&["rro", "rrw"]).unwrap();
        assert_eq!(o.rec_attr_set, 0);
        assert_eq!(o.rec_attr_clr, attr::RDONLY);
    }

    #[test]
    fn idmap_is_refused_and_tmpcopyup_noted() {
        assert!(MountOptions::parse(&["idmap"]).is_err());
        assert!(MountOptions::parse(&["rbind", "ridmap"]).is_err());
        let o = MountOptions::parse(&["tmpcopyup", "mode=755"]).unwrap();
        assert!(o.tmpcopyup);
        assert_eq!(o.data(), "mode=755");
    }
}
