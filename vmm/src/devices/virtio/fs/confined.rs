//! [`ConfinedFs`]: the file system the virtio-fs device serves, a thin wrapper around the
//! passthrough file system that refuses what a hostile guest must never do on the host
//! through the share, whatever the VMM's own privileges.
//!
//! The VMM runs as host root, and fuse-backend-rs creates files as the guest caller (it
//! switches the serving thread's uid/gid to the request's), so a request from guest root runs
//! with host root's capabilities. Everything is delegated unchanged except:
//!
//! - **MKNOD** creates only regular files, FIFOs and sockets ([`mknod_allowed`]): block and
//!   character devices (any major/minor, the overlayfs whiteout 0/0 included) and any other
//!   file type are refused with `EPERM`, before the passthrough sees the request. Without
//!   this, guest root could create e.g. `/dev/mem` (1,1) or a disk (8,0) on a host file
//!   system (an overlay upper dir, a read-write volume) that is not mounted `nodev`.
//! - **RENAME** with `RENAME_WHITEOUT` (which leaves a 0/0 character device at the old name)
//!   is refused with `EPERM`, as the kernel does for a caller without `CAP_MKNOD`.
//!
//! No other request creates a device node: CREATE is `openat(O_CREAT)` (always a regular
//! file; the type bits of its mode are ignored), MKDIR and SYMLINK make only their own type,
//! SETATTR changes permission bits only (`fchmod` keeps the file type), and LINK and RENAME
//! only give new names, inside the same host mount, to inodes the guest already reached
//! through the share (names are resolved under the share's inode fds, never as host paths).
//! Device nodes that already exist in the share (e.g. shipped in a container image's layer)
//! cannot be opened through it: the passthrough opens only regular files and directories.
//!
//! setuid/setgid files are *not* refused: container images legitimately ship setuid binaries,
//! and guest root may `chmod u+s` its own files. The host keeps them harmless instead: every
//! mount under a pod's directory is `nosuid,nodev` and the pod directory is mode 0700 (the
//! shim's share layout), so no host process runs them with their owner's privileges.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// Whether MKNOD may create a node of `mode`'s file type: a regular file (type bits 0 or
/// `S_IFREG`), a FIFO or a socket. Block and character devices, and every other type, are
/// refused.
pub fn mknod_allowed(mode: u32) -> bool {
    matches!(
        mode & libc::S_IFMT,
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK
    )
}

/// Whether RENAME may run with `flags`: anything but `RENAME_WHITEOUT`, which creates a
/// character device.
pub fn rename_allowed(flags: u32) -> bool {
    flags & libc::RENAME_WHITEOUT == 0
}

/// `EPERM`, what a refused request gets.
fn refused() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// The file system the device serves: `F` (the passthrough over the share) with device-node
/// creation refused. See the module documentation.
pub struct ConfinedFs<F> {
    inner: F,
}

impl<F> ConfinedFs<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> ConfinedFs<F> {
        ConfinedFs { inner }
    }

    /// The wrapped file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }
}

/// Implements the listed `FileSystem` methods by calling the same method of `self.inner`
/// with the same arguments.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)?;)*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                self.inner.$name($($arg),*)
            }
        )*
    };
}

impl<F: FileSystem> FileSystem for ConfinedFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn mknod(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if !mknod_allowed(mode) {
            tracing::debug!("virtio-fs: MKNOD {name:?} mode {mode:#o} rdev {rdev:#x} refused");
            return Err(refused());
        }
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if !rename_allowed(flags) {
            tracing::debug!("virtio-fs: RENAME {oldname:?} with RENAME_WHITEOUT refused");
            return Err(refused());
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    delegate! {
        fn init(&self, capable: FsOptions) -> io::Result<FsOptions>;
        fn destroy(&self);
        fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry>;
        fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64);
        fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>);
        fn getattr(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Option<Self::Handle>,
        ) -> io::Result<(stat64, Duration)>;
        fn setattr(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            attr: stat64,
            handle: Option<Self::Handle>,
            valid: SetattrValid,
        ) -> io::Result<(stat64, Duration)>;
        fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>>;
        fn symlink(
            &self,
            ctx: &Context,
            linkname: &CStr,
            parent: Self::Inode,
            name: &CStr,
        ) -> io::Result<Entry>;
        fn mkdir(
            &self,
            ctx: &Context,
            parent: Self::Inode,
            name: &CStr,
            mode: u32,
            umask: u32,
        ) -> io::Result<Entry>;
        fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()>;
        fn link(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            newparent: Self::Inode,
            newname: &CStr,
        ) -> io::Result<Entry>;
        fn open(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            flags: u32,
            fuse_flags: u32,
        ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)>;
        fn create(
            &self,
            ctx: &Context,
            parent: Self::Inode,
            name: &CStr,
            args: CreateIn,
        ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)>;
        fn read(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            w: &mut dyn ZeroCopyWriter,
            size: u32,
            offset: u64,
            lock_owner: Option<u64>,
            flags: u32,
        ) -> io::Result<usize>;
        fn write(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            r: &mut dyn ZeroCopyReader,
            size: u32,
            offset: u64,
            lock_owner: Option<u64>,
            delayed_write: bool,
            flags: u32,
            fuse_flags: u32,
        ) -> io::Result<usize>;
        fn flush(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            lock_owner: u64,
        ) -> io::Result<()>;
        fn fsync(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            datasync: bool,
            handle: Self::Handle,
        ) -> io::Result<()>;
        fn fallocate(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            mode: u32,
            offset: u64,
            length: u64,
        ) -> io::Result<()>;
        fn release(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            flags: u32,
            handle: Self::Handle,
            flush: bool,
            flock_release: bool,
            lock_owner: Option<u64>,
        ) -> io::Result<()>;
        fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64>;
        fn setxattr(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            name: &CStr,
            value: &[u8],
            flags: u32,
        ) -> io::Result<()>;
        fn getxattr(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            name: &CStr,
            size: u32,
        ) -> io::Result<GetxattrReply>;
        fn listxattr(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            size: u32,
        ) -> io::Result<ListxattrReply>;
        fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()>;
        fn opendir(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            flags: u32,
        ) -> io::Result<(Option<Self::Handle>, OpenOptions)>;
        fn readdir(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            size: u32,
            offset: u64,
            add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
        ) -> io::Result<()>;
        fn readdirplus(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            size: u32,
            offset: u64,
            add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        ) -> io::Result<()>;
        fn fsyncdir(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            datasync: bool,
            handle: Self::Handle,
        ) -> io::Result<()>;
        fn releasedir(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            flags: u32,
            handle: Self::Handle,
        ) -> io::Result<()>;
        fn setupmapping(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            foffset: u64,
            len: u64,
            flags: u64,
            moffset: u64,
            vu_req: &mut dyn FsCacheReqHandler,
        ) -> io::Result<()>;
        fn removemapping(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            requests: Vec<RemovemappingOne>,
            vu_req: &mut dyn FsCacheReqHandler,
        ) -> io::Result<()>;
        fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()>;
        fn lseek(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            offset: u64,
            whence: u32,
        ) -> io::Result<u64>;
        fn getlk(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            owner: u64,
            lock: FileLock,
            flags: u32,
        ) -> io::Result<FileLock>;
        fn setlk(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            owner: u64,
            lock: FileLock,
            flags: u32,
        ) -> io::Result<()>;
        fn setlkw(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            owner: u64,
            lock: FileLock,
            flags: u32,
        ) -> io::Result<()>;
        fn ioctl(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            flags: u32,
            cmd: u32,
            data: IoctlData<'_>,
            out_size: u32,
        ) -> io::Result<IoctlData<'_>>;
        fn bmap(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            block: u64,
            blocksize: u32,
        ) -> io::Result<u64>;
        fn poll(
            &self,
            ctx: &Context,
            inode: Self::Inode,
            handle: Self::Handle,
            khandle: Self::Handle,
            flags: u32,
            events: u32,
        ) -> io::Result<u32>;
        fn notify_reply(&self) -> io::Result<()>;
        fn id_remap(&self, ctx: &mut Context) -> io::Result<()>;
    }
}
