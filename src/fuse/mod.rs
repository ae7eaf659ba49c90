//! The FUSE adapter: a thin translation of `fuser` callbacks into [`crate::fs::Fs`] calls.
//!
//! Each callback hands its work to the tokio runtime and replies from there, so a slow remote
//! read never blocks the kernel request loop. No filesystem logic lives here: only argument
//! conversion, errno mapping ([`errno`]) and kernel cache hints.

mod errno;
mod invalidate;
mod session;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::path::Path;

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tokio::runtime::Handle;

pub use errno::errno;
pub use session::{MountHandle, MountOptions, mount};

use crate::fs::{self as core, Attr, FileKind, Fs, SetAttr, TimeSet};
use crate::hub::Remote;

/// Reported as `st_blksize`; large blocks make `cp`/`cat` issue large reads.
const BLKSIZE: u32 = 128 * 1024;

/// The `fuser::Filesystem` of one mount.
pub struct FuseAdapter<R: Remote> {
    fs: Arc<Fs<R>>,
    rt: Handle,
}

impl<R: Remote> FuseAdapter<R> {
    pub fn new(fs: Arc<Fs<R>>, rt: Handle) -> Self {
        FuseAdapter { fs, rt }
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

fn open_flags(flags: OpenFlags) -> core::OpenFlags {
    let raw = flags.0;
    let acc = raw & libc::O_ACCMODE;
    core::OpenFlags {
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        truncate: raw & libc::O_TRUNC != 0,
        append: raw & libc::O_APPEND != 0,
    }
}

impl<R: Remote> Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: take what the kernel offers.
        for (flag, why) in [
            // Let `ls -l` fetch names and attributes in one pass, but only when it helps.
            (InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO, "readdirplus"),
            // Lookups in different directories may run concurrently.
            (InitFlags::FUSE_PARALLEL_DIROPS, "parallel dirops"),
            // Drop cached pages when a file's size or mtime changes under us.
            (InitFlags::FUSE_AUTO_INVAL_DATA, "auto inval data"),
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::debug!(?missing, why, "kernel lacks an optional FUSE capability");
            }
        }
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(e) => reply.entry(&e.ttl, &fuse_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok((a, ttl)) => reply.attr(&ttl, &fuse_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0, open_flags(flags)).await {
                Ok(o) => {
                    let f = if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                    reply.opened(FileHandle(o.fh), f)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(ino.0, fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        match self.fs.flush_handle(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.fsync(ino.0, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Most writes complete at once (a local pwrite); only quota pressure needs to wait.
        match self.fs.write_now(ino.0, fh.0, offset, data) {
            Some(Ok(n)) => return reply.written(n),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        let (fs, data) = (self.fs.clone(), data.to_vec());
        self.rt.spawn(async move {
            match fs.write(ino.0, fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, name, uid, gid) = (self.fs.clone(), name.to_owned(), req.uid(), req.gid());
        self.rt.spawn(async move {
            let exclusive = flags & libc::O_EXCL != 0;
            match fs.create(parent.0, &name, mode, umask, open_flags(OpenFlags(flags)), exclusive, uid, gid).await {
                Ok((e, o)) => reply.created(
                    &e.ttl,
                    &fuse_attr(&e.attr),
                    Generation(0),
                    FileHandle(o.fh),
                    if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() },
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_set),
            atime: atime.map(time_set),
            fh: fh.map(|f| f.0),
        };
        self.rt.spawn(async move {
            match fs.setattr(ino.0, a).await {
                Ok((a, ttl)) => reply.attr(&ttl, &fuse_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (fs, name, uid, gid) = (self.fs.clone(), name.to_owned(), req.uid(), req.gid());
        self.rt.spawn(async move {
            match fs.mkdir(parent.0, &name, mode, umask, uid, gid).await {
                Ok(e) => reply.entry(&e.ttl, &fuse_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (fs, name, uid, gid) = (self.fs.clone(), name.to_owned(), req.uid(), req.gid());
        self.rt.spawn(async move {
            match fs.mknod(parent.0, &name, mode, umask, rdev, uid, gid).await {
                Ok(e) => reply.entry(&e.ttl, &fuse_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (fs, name, target, uid, gid) =
            (self.fs.clone(), link_name.to_owned(), target.to_path_buf(), req.uid(), req.gid());
        self.rt.spawn(async move {
            match fs.symlink(parent.0, &name, &target, uid, gid).await {
                Ok(e) => reply.entry(&e.ttl, &fuse_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        match self.fs.link() {
            Ok(e) => reply.entry(&e.ttl, &fuse_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.rt.spawn(async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.rt.spawn(async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (fs, name, newname) = (self.fs.clone(), name.to_owned(), newname.to_owned());
        self.rt.spawn(async move {
            match fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                        if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                        let dots = e.name == "." || e.name == "..";
                        let Some(entry) = fs.entry_attr(e.ino) else {
                            continue;
                        };
                        let ttl = if dots { Duration::ZERO } else { entry.ttl };
                        let full = reply.add(
                            INodeNo(e.ino),
                            (i + 1) as u64,
                            &e.name,
                            &ttl,
                            &fuse_attr(&entry.attr),
                            Generation(0),
                        );
                        if full {
                            break;
                        }
                        // The kernel now holds a reference, as after a lookup.
                        if !dots {
                            fs.entry_returned(e.ino);
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    // Extended attributes are not stored (the remote has none). ENOSYS tells the kernel once
    // and for all, so `ls -l` does not ask again for every entry.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_available,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }
}
