//! Cross-process lock on the region file: an open-file-description (`F_OFD_SETLKW`) write lock over the
//! whole file, which the kernel drops when the holder dies, however it dies.
//!
//! Each acquisition opens its *own* open file description of the same inode (through
//! `/proc/self/fd/<fd>`, falling back to the path with an inode check). OFD locks belong to the open
//! file description, so:
//! - two threads of one process conflict with each other (no in-process mutex is needed);
//! - a child forked while a parent thread holds the lock does not inherit ownership through the
//!   region's long-lived fd, and the explicit unlock on drop releases it even if the child still holds
//!   a copy of the lock's fd.
//!
//! The whole-file range also conflicts with HAMi-core's `lockf` (a classic POSIX record lock), so a
//! HAMi-core process racing us on the same file is excluded too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A held lock; dropping it unlocks and closes its file description.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are valid (l_pid must be 0 for OFD
    // locks, and l_start = l_len = 0 with SEEK_SET means "the whole file, however long").
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Opens a second open file description of the file behind `file` (which lives at `path`).
fn reopen(file: &File, path: &Path) -> io::Result<File> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if let Ok(f) = OpenOptions::new().read(true).write(true).open(&proc_path) {
        return Ok(f);
    }
    // No /proc: open by path, and make sure it is still the same file (not replaced under us).
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let (a, b) = (file.metadata()?, f.metadata()?);
    if a.dev() != b.dev() || a.ino() != b.ino() {
        return Err(io::Error::other(format!(
            "{} was replaced by another file",
            path.display()
        )));
    }
    Ok(f)
}

impl FileLock {
    /// Blocks until this caller holds the exclusive lock on the file behind `file` (at `path`).
    /// Retries on EINTR. Never times out: holders keep it for microseconds and never across a driver
    /// call, and a holder that dies releases it.
    pub fn lock(file: &File, path: &Path) -> io::Result<FileLock> {
        let lock_file = reopen(file, path)?;
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        loop {
            // SAFETY: valid fd; `fl` is a valid flock that outlives the call.
            let rc = unsafe {
                libc::fcntl(
                    lock_file.as_raw_fd(),
                    libc::F_OFD_SETLKW,
                    &fl as *const libc::flock,
                )
            };
            if rc == 0 {
                return Ok(FileLock { file: lock_file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Takes the lock if nobody holds it; `Ok(None)` when another holder has it.
    pub fn try_lock(file: &File, path: &Path) -> io::Result<Option<FileLock>> {
        let lock_file = reopen(file, path)?;
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: valid fd; `fl` is a valid flock that outlives the call.
        let rc = unsafe {
            libc::fcntl(
                lock_file.as_raw_fd(),
                libc::F_OFD_SETLK,
                &fl as *const libc::flock,
            )
        };
        if rc == 0 {
            return Ok(Some(FileLock { file: lock_file }));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(None),
            _ => Err(err),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let fl = whole_file(libc::F_UNLCK as libc::c_short);
        // SAFETY: valid fd; unlocking explicitly (rather than relying on close) also releases the lock
        // when a forked child still holds a duplicate of this fd.
        unsafe {
            libc::fcntl(
                self.file.as_raw_fd(),
                libc::F_OFD_SETLK,
                &fl as *const libc::flock,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_other_descriptions_in_the_same_process() {
        let dir = std::env::temp_dir().join(format!("vgpu-lock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("l.cache");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let held = FileLock::lock(&f, &path).unwrap();
        assert!(
            FileLock::try_lock(&f, &path).unwrap().is_none(),
            "a second description must conflict"
        );
        drop(held);
        let again = FileLock::try_lock(&f, &path).unwrap();
        assert!(again.is_some(), "unlocked on drop");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
