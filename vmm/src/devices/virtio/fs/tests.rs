//! virtio-fs tests: confinement of the passthrough file system (through fuse-backend-rs's
//! `FileSystem` API, as the FUSE server calls it), the refusal of device nodes (through that
//! API, and as FUSE requests through the device's queue), the device's config space and its
//! handling of malformed chains.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, MknodIn, Opcode, OpenOut, OutHeader, ReadIn, Rename2In,
    SetattrIn, WriteIn,
};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use tempfile::TempDir;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::confined::{mknod_allowed, rename_allowed};
use super::*;
use crate::devices::virtio::testing::{self, TestQueue};

const ROOT: u64 = 1;
const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// `<tmp>/{secret.txt, share/{hello.txt, sub/, link-etc, link-fd0, link-secret}}`.
fn share() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(dir.join("secret.txt"), "moat-secret-outside\n").unwrap();
    std::fs::write(share.join("hello.txt"), "hello\n").unwrap();
    symlink("/etc/passwd", share.join("link-etc")).unwrap();
    symlink("/proc/self/fd/0", share.join("link-fd0")).unwrap();
    symlink(dir.join("secret.txt"), share.join("link-secret")).unwrap();
    (tmp, share)
}

fn lookup(fs: &impl FileSystem<Inode = u64>, parent: u64, name: &str) -> std::io::Result<Entry> {
    fs.lookup(&Context::new(), parent, &CString::new(name).unwrap())
}

fn is_symlink(e: &Entry) -> bool {
    e.attr.st_mode & libc::S_IFMT == libc::S_IFLNK
}

#[test]
fn tags_are_validated() {
    assert!(valid_tag("moatfs"));
    assert!(valid_tag("A_b-9"));
    assert!(valid_tag(&"x".repeat(36)));
    for bad in ["", "a b", "a/b", "é", &"x".repeat(37)] {
        assert!(!valid_tag(bad), "{bad:?}");
    }
}

#[test]
fn symlinks_are_not_followed_on_the_host() {
    let (_dir, share) = share();
    let fs = new_confined(&share.canonicalize().unwrap()).unwrap();
    let ctx = Context::new();
    for name in ["link-etc", "link-fd0", "link-secret"] {
        let entry = lookup(&fs, ROOT, name).unwrap();
        assert!(is_symlink(&entry), "{name}: lookup resolved the link");
        // Opening the link itself (as a file) must not reach its target.
        let opened = fs.open(&ctx, entry.inode, libc::O_RDONLY as u32, 0);
        assert!(opened.is_err(), "{name}: symlink opened on the host");
        // The guest only gets the link text, to resolve in its own namespace.
        let target = fs.readlink(&ctx, entry.inode).unwrap();
        assert!(target.starts_with(b"/"), "{name}: {target:?}");
    }
    // A regular file opens.
    let hello = lookup(&fs, ROOT, "hello.txt").unwrap();
    assert!(fs.open(&ctx, hello.inode, libc::O_RDONLY as u32, 0).is_ok());
}

#[test]
fn dotdot_stays_inside_the_share() {
    let (_dir, share) = share();
    let fs = new_confined(&share.canonicalize().unwrap()).unwrap();
    let ctx = Context::new();
    let root_ino = fs.getattr(&ctx, ROOT, None).unwrap().0.st_ino;
    let up = lookup(&fs, ROOT, "..").unwrap();
    assert_eq!(up.attr.st_ino, root_ino, ".. of the root left the share");
    // Nothing next to the share is reachable from `..`.
    assert!(lookup(&fs, up.inode, "secret.txt").is_err());
    // `..` from a subdirectory is the share root, and `..` again stays there.
    let sub = lookup(&fs, ROOT, "sub").unwrap();
    let parent = lookup(&fs, sub.inode, "..").unwrap();
    assert_eq!(parent.attr.st_ino, root_ino);
    let again = lookup(&fs, parent.inode, "..").unwrap();
    assert_eq!(again.attr.st_ino, root_ino, "a second `..` left the share");
    assert!(lookup(&fs, again.inode, "secret.txt").is_err());
    assert!(
        lookup(&fs, ROOT, "../secret.txt").is_err(),
        "slash in a name"
    );
}

#[test]
fn config_space_has_tag_and_queue_count() {
    let (_dir, share) = share();
    let dev = VirtioFs::new("moatfs", &share).unwrap();
    let mut cfg = [0xffu8; TAG_LEN + 4];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"moatfs");
    assert!(cfg[6..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(cfg[TAG_LEN..], 1u32.to_le_bytes());
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    assert!(matches!(
        VirtioFs::new("bad tag", &share),
        Err(FsError::BadTag(_))
    ));
}

#[test]
fn malformed_chains_complete_with_zero_bytes() {
    let (_dir, share) = share();
    let mut dev = VirtioFs::new("moatfs", &share).unwrap();
    let t = TestQueue::new(16);
    // Too short for a FUSE header; a reply buffer outside guest memory; an empty chain.
    t.add_chain(&[
        RawDescriptor::from(Descriptor::new(0x10_0000, 8, 0, 0)),
        RawDescriptor::from(Descriptor::new(0x20_0000, 256, WRITE, 0)),
    ]);
    t.add_chain(&[
        RawDescriptor::from(Descriptor::new(0x10_0000, 64, 0, 0)),
        RawDescriptor::from(Descriptor::new(0xffff_ffff_0000, 256, WRITE, 0)),
    ]);
    let queues = vec![t.queue(), t.queue()];
    dev.activate(t.mem.clone(), t.interrupt(), queues).unwrap();
    dev.process_queue(1);
    assert_eq!(t.used_idx(), 2);
    assert_eq!((t.used_len(0), t.used_len(1)), (0, 0));
    let c = dev.counters().values();
    assert_eq!((c.requests, c.errors), (2, 2));
}

/// A FUSE driver on the device's request queue: each call is one chain (request, then room
/// for the reply), served at once.
struct Driver {
    dev: VirtioFs,
    t: TestQueue,
    unique: u64,
}

/// Where [`Driver`] puts requests and replies in guest memory.
const REQUEST_AT: u64 = 0x10_0000;
const REPLY_AT: u64 = 0x20_0000;
const REPLY_LEN: u32 = 4096;

impl Driver {
    /// An activated device over `share`, after a successful INIT.
    fn new(share: &Path) -> Driver {
        let mut dev = VirtioFs::new("moatfs", share).unwrap();
        let t = TestQueue::new(16);
        let queues = vec![t.queue(), t.queue()];
        dev.activate(t.mem.clone(), t.interrupt(), queues).unwrap();
        let mut d = Driver { dev, t, unique: 0 };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 4096,
            flags: 0,
        };
        let (out, body) = d.call(Opcode::Init, 0, init.as_slice());
        assert_eq!(out.error, 0, "INIT");
        assert!(!body.is_empty(), "INIT reply has no body");
        assert!(d.t.irq_raised());
        d
    }

    /// Sends request `opcode` on node `nodeid` with `body`; returns the reply's header and
    /// body.
    fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (OutHeader, Vec<u8>) {
        self.unique += 1;
        let header = InHeader {
            len: (size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(body);
        let mem = &self.t.mem;
        mem.write_slice(&request, GuestAddress(REQUEST_AT)).unwrap();
        self.t.add_chain(&[
            RawDescriptor::from(Descriptor::new(REQUEST_AT, request.len() as u32, 0, 0)),
            RawDescriptor::from(Descriptor::new(REPLY_AT, REPLY_LEN, WRITE, 0)),
        ]);
        let used = self.t.used_idx();
        self.dev.process_queue(1);
        assert_eq!(
            self.t.used_idx(),
            used.wrapping_add(1),
            "{opcode:?} not served"
        );
        let out: OutHeader = mem.read_obj(GuestAddress(REPLY_AT)).unwrap();
        assert_eq!(out.unique, self.unique);
        assert_eq!(self.t.used_len(used), out.len);
        let body_len = out.len as usize - size_of::<OutHeader>();
        let body = testing::read_bytes(mem, REPLY_AT + size_of::<OutHeader>() as u64, body_len);
        (out, body)
    }
}

/// `args` then the NUL-terminated `names`, as FUSE requests carry them.
fn with_names(args: &[u8], names: &[&str]) -> Vec<u8> {
    let mut v = args.to_vec();
    for n in names {
        v.extend_from_slice(n.as_bytes());
        v.push(0);
    }
    v
}

/// The file type of `path` on the host, if it exists (without following a symlink).
fn host_type(path: &Path) -> Option<u32> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some(meta.mode() & libc::S_IFMT)
}

/// Device nodes a guest may try to make: /dev/mem (1,1), a disk (8,0), the whiteout 0/0, and a
/// directory (not a MKNOD type at all); device numbers in the kernel's encoding.
const REFUSED: &[(&str, u32, u32)] = &[
    ("mem", libc::S_IFCHR | 0o666, 0x101),
    ("sda", libc::S_IFBLK | 0o660, 0x800),
    ("whiteout", libc::S_IFCHR, 0),
    ("dir", libc::S_IFDIR | 0o755, 0),
];
/// What MKNOD still creates: (name, mode, the host file type expected).
const ALLOWED: &[(&str, u32, u32)] = &[
    ("fifo", libc::S_IFIFO | 0o600, libc::S_IFIFO),
    ("sock", libc::S_IFSOCK | 0o600, libc::S_IFSOCK),
    ("reg", libc::S_IFREG | 0o600, libc::S_IFREG),
    ("untyped", 0o600, libc::S_IFREG),
];

#[test]
fn init_request_gets_a_reply() {
    let (_dir, share) = share();
    let d = Driver::new(&share);
    assert_eq!(d.unique, 1);
}

#[test]
fn mknod_policy() {
    for (_, mode, _) in REFUSED {
        assert!(!mknod_allowed(*mode), "{mode:#o}");
    }
    for (_, mode, _) in ALLOWED {
        assert!(mknod_allowed(*mode), "{mode:#o}");
    }
    // Type bits the kernel does not know (e.g. S_IFLNK via MKNOD) are refused too.
    assert!(!mknod_allowed(libc::S_IFLNK | 0o777));
    assert!(!mknod_allowed(0o030000));
    assert!(rename_allowed(0));
    assert!(rename_allowed(
        libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
    ));
    assert!(!rename_allowed(libc::RENAME_WHITEOUT));
}

/// Records the requests that reach it; answers them all with `EEXIST`.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl FileSystem for Recorder {
    type Inode = u64;
    type Handle = u64;

    fn mknod(
        &self,
        _: &Context,
        _: u64,
        name: &CStr,
        mode: u32,
        _: u32,
        _: u32,
    ) -> std::io::Result<Entry> {
        let call = format!("mknod {name:?} {mode:o}");
        self.calls.lock().unwrap().push(call);
        Err(std::io::Error::from_raw_os_error(libc::EEXIST))
    }

    fn rename(
        &self,
        _: &Context,
        _: u64,
        old: &CStr,
        _: u64,
        new: &CStr,
        flags: u32,
    ) -> std::io::Result<()> {
        let call = format!("rename {old:?} {new:?} {flags}");
        self.calls.lock().unwrap().push(call);
        Err(std::io::Error::from_raw_os_error(libc::EEXIST))
    }
}

/// The errno of a failed call (`None` when it succeeded).
fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Whatever the kernel would allow the VMM, a refused request never reaches the file system
/// under the wrapper; an allowed one does.
#[test]
fn refused_requests_never_reach_the_passthrough() {
    let fs = ConfinedFs::new(Recorder::default());
    let ctx = Context::new();
    let name = CString::new("n").unwrap();
    for (_, mode, rdev) in REFUSED {
        assert_eq!(
            errno(fs.mknod(&ctx, ROOT, &name, *mode, *rdev, 0)),
            Some(libc::EPERM)
        );
    }
    let whiteout = fs.rename(&ctx, ROOT, &name, ROOT, &name, libc::RENAME_WHITEOUT);
    assert_eq!(errno(whiteout), Some(libc::EPERM));
    assert!(fs.inner().calls.lock().unwrap().is_empty());
    for (_, mode, _) in ALLOWED {
        let r = fs.mknod(&ctx, ROOT, &name, *mode, 0, 0);
        assert_eq!(errno(r), Some(libc::EEXIST));
    }
    let noreplace = fs.rename(&ctx, ROOT, &name, ROOT, &name, libc::RENAME_NOREPLACE);
    assert_eq!(errno(noreplace), Some(libc::EEXIST));
    assert_eq!(fs.inner().calls.lock().unwrap().len(), ALLOWED.len() + 1);
}

/// Whether this process may create a character device at all (root with CAP_MKNOD): then the
/// tests below show the wrapper refusing what the kernel would have done.
fn kernel_allows_mknod(dir: &Path) -> bool {
    let path = CString::new(
        dir.join("control-mem")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mknod(2) with a valid NUL-terminated path; the result is checked.
    let made = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, 0x101) } == 0;
    if made {
        std::fs::remove_file(dir.join("control-mem")).unwrap();
        println!("control: the kernel lets this process mknod 1,1; the refusal is the VMM's");
    } else {
        println!(
            "control: the kernel refuses mknod here too ({}); \
             refused_requests_never_reach_the_passthrough shows the VMM's refusal",
            std::io::Error::last_os_error()
        );
    }
    made
}

/// Through the real passthrough: device nodes are refused with EPERM and nothing appears on
/// the host; FIFOs, sockets and regular files are created.
#[test]
fn mknod_of_devices_is_refused() {
    let (dir, share) = share();
    kernel_allows_mknod(dir.path());
    let fs = new_confined(&share.canonicalize().unwrap()).unwrap();
    let ctx = Context::new();
    for (name, mode, rdev) in REFUSED {
        let c = CString::new(*name).unwrap();
        let e = fs.mknod(&ctx, ROOT, &c, *mode, *rdev, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{name}");
        assert_eq!(host_type(&share.join(name)), None, "{name} was created");
    }
    for (name, mode, ty) in ALLOWED {
        let c = CString::new(*name).unwrap();
        let entry = fs.mknod(&ctx, ROOT, &c, *mode, 0, 0).unwrap();
        assert_eq!(entry.attr.st_mode & libc::S_IFMT, *ty, "{name}");
        assert_eq!(host_type(&share.join(name)), Some(*ty), "{name}");
    }
}

/// The same as FUSE requests from the guest (as guest root): MKNOD of a device gets EPERM
/// and creates nothing; MKNOD of a FIFO works.
#[test]
fn guest_mknod_of_devices_gets_eperm() {
    let (dir, share) = share();
    kernel_allows_mknod(dir.path());
    let mut d = Driver::new(&share);
    for (name, mode, rdev) in REFUSED {
        let args = MknodIn {
            mode: *mode,
            rdev: *rdev,
            ..Default::default()
        };
        let (out, _) = d.call(Opcode::Mknod, ROOT, &with_names(args.as_slice(), &[name]));
        assert_eq!(out.error, -libc::EPERM, "MKNOD {name}");
        assert_eq!(host_type(&share.join(name)), None, "{name} was created");
    }
    let fifo = MknodIn {
        mode: libc::S_IFIFO | 0o600,
        ..Default::default()
    };
    let (out, _) = d.call(Opcode::Mknod, ROOT, &with_names(fifo.as_slice(), &["fifo"]));
    assert_eq!(out.error, 0, "MKNOD fifo");
    assert_eq!(host_type(&share.join("fifo")), Some(libc::S_IFIFO));
}

/// The other requests that create or retype files: CREATE with device type bits makes a
/// regular file, SETATTR cannot change a file's type, RENAME with RENAME_WHITEOUT gets EPERM.
/// No device node is in the share afterwards.
#[test]
fn guest_create_setattr_rename_make_no_devices() {
    let (dir, share) = share();
    kernel_allows_mknod(dir.path());
    let mut d = Driver::new(&share);
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: libc::S_IFCHR | 0o644,
        ..Default::default()
    };
    let (out, body) = d.call(Opcode::Create, ROOT, &with_names(create.as_slice(), &["c"]));
    assert_eq!(out.error, 0, "CREATE");
    assert_eq!(host_type(&share.join("c")), Some(libc::S_IFREG));
    let entry = EntryOut::from_slice(&body[..size_of::<EntryOut>()]).unwrap();
    let setattr = SetattrIn {
        valid: 1, // FATTR_MODE
        mode: libc::S_IFBLK | 0o600,
        ..Default::default()
    };
    let (out, _) = d.call(Opcode::Setattr, entry.nodeid, setattr.as_slice());
    assert_eq!(out.error, 0, "SETATTR");
    let meta = std::fs::symlink_metadata(share.join("c")).unwrap();
    assert!(meta.file_type().is_file(), "{:o}", meta.mode());
    assert_eq!(meta.mode() & 0o7777, 0o600);

    let whiteout = Rename2In {
        newdir: ROOT,
        flags: libc::RENAME_WHITEOUT,
        ..Default::default()
    };
    let body = with_names(whiteout.as_slice(), &["hello.txt", "moved"]);
    let (out, _) = d.call(Opcode::Rename2, ROOT, &body);
    assert_eq!(out.error, -libc::EPERM, "RENAME_WHITEOUT");
    assert_eq!(host_type(&share.join("hello.txt")), Some(libc::S_IFREG));
    assert_eq!(host_type(&share.join("moved")), None);
    for e in std::fs::read_dir(&share).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let name = e.file_name();
        assert!(!ft.is_block_device() && !ft.is_char_device(), "{name:?}");
    }
}

/// The metrics: every request counted, error replies counted, the bytes of READ and WRITE.
#[test]
fn requests_errors_and_bytes_are_counted() {
    let (_dir, share) = share();
    let mut d = Driver::new(&share);
    let create = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let (out, body) = d.call(Opcode::Create, ROOT, &with_names(create.as_slice(), &["f"]));
    assert_eq!(out.error, 0, "CREATE");
    let entry = EntryOut::from_slice(&body[..size_of::<EntryOut>()]).unwrap();
    let open = OpenOut::from_slice(&body[size_of::<EntryOut>()..][..size_of::<OpenOut>()]);
    let fh = open.unwrap().fh;
    let write = WriteIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(&[7u8; 100]);
    assert_eq!(
        d.call(Opcode::Write, entry.nodeid, &body).0.error,
        0,
        "WRITE"
    );
    let read = ReadIn {
        fh,
        size: 4000,
        ..Default::default()
    };
    let (out, data) = d.call(Opcode::Read, entry.nodeid, read.as_slice());
    assert_eq!((out.error, data.len()), (0, 100), "READ");
    let missing = with_names(&[], &["missing"]);
    assert_eq!(
        d.call(Opcode::Lookup, ROOT, &missing).0.error,
        -libc::ENOENT
    );
    let c = d.dev.counters().values();
    // INIT, CREATE, WRITE, READ, LOOKUP.
    assert_eq!((c.requests, c.errors), (5, 1));
    assert_eq!((c.write_bytes, c.read_bytes), (100, 100));
}
