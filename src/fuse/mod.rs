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

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;

pub use errno::errno;
pub use session::{MountHandle, MountOptions, mount};

use crate::fs::{self as core, Attr, FileKind, Fs};
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
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn open_flags(flags: OpenFlags) -> core::OpenFlags {
    let raw = flags.0;
    let acc = raw & libc::O_ACCMODE;
    core::OpenFlags {
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        truncate: raw & libc::O_TRUNC != 0,
    }
}

impl<R: Remote> Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: take what the kernel offers.
        for (flag, why) in [
            // Let `ls -l` fetch names and attributes in one pass, but only when it helps.
            (
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
                "readdirplus",
            ),
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
                    let f = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
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

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
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

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
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

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
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
