//! Every OS call the simulated machine makes, behind safe signatures.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// This process's pid. Not cached here: the machine caches it per fork generation.
pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC/REALTIME always exist on Linux (vDSO call).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in ns: one clock for every process on the machine.
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns since the epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Block until CLOCK_MONOTONIC reaches `deadline_ns`: an absolute sleep for all but the last stretch
/// (timer slack makes sleeps late by tens of µs), then a yielding spin for precision.
pub fn wait_until_ns(deadline_ns: u64) {
    const SPIN_NS: u64 = 100_000;
    let now = monotonic_ns();
    if deadline_ns > now + 2 * SPIN_NS {
        let wake = deadline_ns - SPIN_NS;
        let ts = libc::timespec {
            tv_sec: (wake / 1_000_000_000) as libc::time_t,
            tv_nsec: (wake % 1_000_000_000) as _,
        };
        loop {
            // SAFETY: `ts` is a valid timespec; a NULL remainder is allowed with TIMER_ABSTIME.
            let rc = unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &ts,
                    std::ptr::null_mut(),
                )
            };
            if rc != libc::EINTR {
                break;
            }
        }
    }
    let mut spins = 0u32;
    while monotonic_ns() < deadline_ns {
        spins += 1;
        if spins & 63 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot): with the pid it names one
/// process for good, since a reused pid starts later. `None` when the process is gone.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let after_comm = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[after_comm + 1..]).ok()?;
    // rest starts with field 3 (state); field 22 is the 20th from there.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` with start time `start_time` (0 = unknown) still runs. A zombie counts as
/// gone: it holds no GPU memory once it has exited.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        // No /proc (or not ours to read): trust kill().
        return true;
    };
    let Some(after_comm) = stat.iter().rposition(|b| *b == b')') else {
        return true;
    };
    let rest = String::from_utf8_lossy(&stat[after_comm + 1..]);
    let mut fields = rest.split_ascii_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return false;
    }
    match fields.nth(18).and_then(|f| f.parse::<u64>().ok()) {
        Some(t) if start_time != 0 => t == start_time,
        _ => true,
    }
}

/// A file's device and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

/// An open state file holding an exclusive `flock` until dropped (the kernel drops it if we die).
pub struct LockedFile {
    fd: libc::c_int,
    /// Our entry in `HELD_LOCK_FDS`, if there was room.
    tracked: Option<usize>,
}

/// The fds of every `LockedFile` open in this process (this copy of the library), so that a fork
/// child can close its copies. A child forked while another thread holds the lock shares the
/// locked open file description: it would keep the lock for as long as it lives (the thread that
/// would drop it does not exist in the child), and every other process, the child itself included,
/// would wait for it. Closing the child's copy leaves the lock with the parent, where it belongs.
static HELD_LOCK_FDS: [AtomicI32; 8] = [const { AtomicI32::new(-1) }; 8];

impl LockedFile {
    /// Own `fd` (open, not yet locked) and note it for `after_fork_in_child`.
    fn track(fd: libc::c_int) -> LockedFile {
        let tracked = HELD_LOCK_FDS.iter().position(|held| {
            held.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        LockedFile { fd, tracked }
    }

    /// Open (creating with mode 0666 if missing) and lock `path` exclusively.
    pub fn open_locked(path: &Path) -> std::io::Result<LockedFile> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL")
        })?;
        // SAFETY: a valid C string; O_CLOEXEC keeps the fd out of exec'd children.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o666,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let file = LockedFile::track(fd);
        loop {
            // SAFETY: fd is open.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
        Ok(file)
    }

    /// Open the existing file at `path` (never creating it) and lock it exclusively, if it is still
    /// the file `identity` names. `None` when the path is gone or now names another file.
    ///
    /// A lock of our own open file description: it excludes every other description of the file,
    /// those of this process included (two copies of the machine in one process exclude each
    /// other), and the kernel drops it if we die.
    pub fn reopen_locked(path: &Path, identity: FileIdentity) -> Option<LockedFile> {
        let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid C string; no O_CREAT, so a missing file is an error, not a new file.
        let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let file = LockedFile::track(fd);
        if file.identity().ok()? != identity {
            return None;
        }
        loop {
            // SAFETY: fd is open.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                return Some(file);
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
    }

    fn stat(&self) -> std::io::Result<libc::stat> {
        // SAFETY: fstat writes into a zeroed stat buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open, `st` is a valid out-pointer.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }

    pub fn size(&self) -> std::io::Result<u64> {
        Ok(self.stat()?.st_size as u64)
    }

    /// Which file this is (device and inode), to recognise it when the path is opened again.
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are narrower on some targets
    pub fn identity(&self) -> std::io::Result<FileIdentity> {
        let st = self.stat()?;
        Ok(FileIdentity {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        })
    }

    pub fn set_size(&self, bytes: u64) -> std::io::Result<()> {
        // SAFETY: fd is open for writing.
        if unsafe { libc::ftruncate(self.fd, bytes as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read up to `buf.len()` bytes from offset 0.
    pub fn read_prefix(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::pread(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Map the first `len` bytes shared, read-write.
    ///
    /// The mapping is made through a second open file description (`/proc/self/fd/N` reopens the same
    /// inode): a mapping keeps its description alive, and an `flock` lives as long as its description,
    /// so mapping the locked descriptor itself would hold the lock for as long as the machine lives.
    pub fn map(&self, len: usize) -> std::io::Result<Mapping> {
        let proc_path = CString::new(format!("/proc/self/fd/{}", self.fd))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "fd path"))?;
        // SAFETY: a valid C string; the new fd is closed below.
        let map_fd = unsafe { libc::open(proc_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if map_fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of an open fd; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map_fd,
                0,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: we own map_fd; the mapping keeps the file referenced on its own.
        unsafe { libc::close(map_fd) };
        if ptr == libc::MAP_FAILED {
            return Err(err);
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for LockedFile {
    fn drop(&mut self) {
        // Unlock first: a child forked from here on inherits an unlocked description, harmless
        // even after we stop tracking the fd.
        // SAFETY: we own the fd; unlocking a description that holds no lock is a no-op.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
        if let Some(i) = self.tracked {
            HELD_LOCK_FDS[i].store(-1, Ordering::Release);
        }
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A shared mapping of the state file. Never unmapped while the machine lives (its atomics are
/// handed out as `&'static`-like references through the machine).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only accessed through atomics (and plain reads of fields written before
// the header was published under the file lock).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and nothing borrows the mapping past its owner.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Bumped in every fork child (through `pthread_atfork`), so per-process caches notice the fork.
pub static FORK_GENERATION: AtomicU32 = AtomicU32::new(1);

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    for held in &HELD_LOCK_FDS {
        let fd = held.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the child's copy of an fd a parent thread holds; the `LockedFile` owning it
            // belongs to a thread the child does not have, so nothing here closes it again.
            // close(2) is async-signal-safe, as a fork handler needs.
            unsafe { libc::close(fd) };
        }
    }
}

/// Register the fork handler once per process.
pub fn register_atfork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// Write one line to stderr with a single write(2) (no std locks, safe in any state).
pub fn stderr_line(msg: &str) {
    let line = format!("simgpu[{}]: {msg}\n", getpid());
    // SAFETY: writing a valid buffer to fd 2; a short or failed write is harmless.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked while this process holds the state file's lock must not keep it: once the
    /// parent's holder is gone, the child (and everyone else) can lock the file.
    #[test]
    fn a_fork_child_does_not_inherit_a_held_lock() {
        register_atfork();
        let dir = std::env::temp_dir().join(format!("simgpu-sys-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let held = LockedFile::open_locked(&path).unwrap();
        // SAFETY: the child only locks the file and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match LockedFile::open_locked(&path) {
                Ok(_) => 0,
                Err(_) => 2,
            };
            // SAFETY: leaving a fork child without running the parent's teardown.
            unsafe { libc::_exit(code) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The holder goes away without unlocking, as a killed process does: only closing every fd
        // of the description frees the lock, the child's copy included.
        if let Some(i) = held.tracked {
            HELD_LOCK_FDS[i].store(-1, Ordering::Release);
        }
        // SAFETY: our own fd; `forget` keeps Drop from unlocking or closing it again.
        unsafe { libc::close(held.fd) };
        std::mem::forget(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut status = 0;
        loop {
            // SAFETY: polling our own child.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child, which is stuck on the lock.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the child never got the lock: it kept the parent's");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
