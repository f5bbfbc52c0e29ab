//! Every OS and loader call lives here, behind safe signatures with `// SAFETY:` notes.
//!
//! The few calls that fit no topic of their own (stderr, ids, the clock) are at the bottom of this file.

pub use vgpu_policy::sys::{lock, mmap, proc_info};

pub mod dl;
pub mod env;
pub mod thread_state;

/// Writes `bytes` to stderr with as few `write(2)` calls as the kernel allows. Errors are ignored: there
/// is nowhere left to report them, and a closed stderr must not hurt the host.
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes for the whole call.
        let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[(n as usize).min(rest.len())..];
        } else if n < 0 && last_errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn last_errno() -> i32 {
    // SAFETY: `__errno_location` always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// This process's id (a real syscall each time: after `fork` the child must see its own).
pub fn process_id() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// This thread's kernel id.
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail; it returns a pid_t in a long.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// `CLOCK_MONOTONIC` in nanoseconds (a vDSO read, no syscall on common kernels).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the last clock tick (a few ms of resolution), a few ns to
/// read. For once-a-second housekeeping on hot paths, where the precise clock's cost would show.
pub fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC_COARSE exists since Linux 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Wall-clock seconds since the epoch from `CLOCK_REALTIME_COARSE` (a vDSO read of the last tick:
/// cheap enough for a launch path that stamps at most once a second).
pub fn epoch_secs_coarse() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_REALTIME_COARSE exists since Linux 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec.max(0) as u64
}
