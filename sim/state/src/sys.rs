//! Every OS call the simulated machine makes, behind safe signatures.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// An open state file holding an exclusive `flock` until dropped (the kernel drops it if we die).
pub struct LockedFile {
    fd: libc::c_int,
}

impl LockedFile {
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
        let file = LockedFile { fd };
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

    pub fn size(&self) -> std::io::Result<u64> {
        // SAFETY: fstat writes into a zeroed stat buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open, `st` is a valid out-pointer.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.st_size as u64)
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
        // SAFETY: we own the fd; closing it drops the flock.
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
