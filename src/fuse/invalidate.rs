//! Kernel cache invalidation from a dedicated thread, so a notification that waits on a kernel
//! lock can never stall a thread that is needed to answer the request holding that lock.

use std::ffi::OsString;
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use fuser::{INodeNo, Notifier};

use crate::fs::{Ino, Invalidator};

enum Msg {
    Entry(Ino, OsString),
    Inode(Ino),
}

/// Sends invalidations to the kernel through a background thread.
pub struct KernelInvalidator {
    tx: Mutex<Sender<Msg>>,
}

impl KernelInvalidator {
    pub fn start(notifier: Notifier) -> Self {
        let (tx, rx) = channel::<Msg>();
        let spawned = std::thread::Builder::new().name("hf-csi-inval".into()).spawn(move || {
            for msg in rx {
                let r = match &msg {
                    Msg::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                    Msg::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                };
                // ENOENT just means the kernel had nothing cached.
                if let Err(e) = r
                    && e.raw_os_error() != Some(libc::ENOENT)
                {
                    tracing::debug!(error = %e, "kernel invalidation failed");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the invalidation thread; remote changes show after the TTL");
        }
        KernelInvalidator { tx: Mutex::new(tx) }
    }

    fn send(&self, m: Msg) {
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(m);
    }
}

impl Invalidator for KernelInvalidator {
    fn entry(&self, parent: Ino, name: &str) {
        self.send(Msg::Entry(parent, name.into()));
    }

    fn inode(&self, ino: Ino) {
        self.send(Msg::Inode(ino));
    }
}
