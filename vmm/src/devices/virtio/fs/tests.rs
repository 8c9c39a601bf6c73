//! virtio-fs tests: confinement of the passthrough file system (through fuse-backend-rs's
//! `FileSystem` API, as the FUSE server calls it), the device's config space and its handling
//! of malformed chains.

use std::ffi::CString;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use tempfile::TempDir;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::testing::TestQueue;

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

fn lookup(fs: &Fs, parent: u64, name: &str) -> std::io::Result<Entry> {
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
    let fs = new_passthrough(&share.canonicalize().unwrap()).unwrap();
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
    let fs = new_passthrough(&share.canonicalize().unwrap()).unwrap();
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
}

#[test]
fn init_request_gets_a_reply() {
    let (_dir, share) = share();
    let mut dev = VirtioFs::new("moatfs", &share).unwrap();
    let t = TestQueue::new(16);
    let header = InHeader {
        len: (size_of::<InHeader>() + size_of::<InitIn>()) as u32,
        opcode: Opcode::Init as u32,
        unique: 7,
        ..Default::default()
    };
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 4096,
        flags: 0,
    };
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(init.as_slice());
    t.mem
        .write_slice(&request, GuestAddress(0x10_0000))
        .unwrap();
    t.add_chain(&[
        RawDescriptor::from(Descriptor::new(0x10_0000, request.len() as u32, 0, 0)),
        RawDescriptor::from(Descriptor::new(0x20_0000, 4096, WRITE, 0)),
    ]);
    let queues = vec![t.queue(), t.queue()];
    dev.activate(t.mem.clone(), t.interrupt(), queues).unwrap();
    dev.process_queue(1);
    let out: OutHeader = t.mem.read_obj(GuestAddress(0x20_0000)).unwrap();
    assert_eq!(out.unique, 7);
    assert_eq!(out.error, 0);
    assert_eq!(t.used_len(0), out.len);
    assert!(out.len as usize > size_of::<OutHeader>());
    assert!(t.irq_raised());
}
