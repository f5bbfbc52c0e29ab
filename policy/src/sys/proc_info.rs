//! Facts about processes, for telling live region slots from dead ones: is a pid alive, and when did
//! it start (so a recycled pid is told apart from the process that registered the slot).
//!
//! Neither call allocates: the `/proc/<pid>/stat` path and contents live in stack buffers.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether a process with this pid exists in our pid namespace, with `kill(pid, 0)` semantics:
/// success or `EPERM` (it exists but belongs to someone else) mean alive; `ESRCH` means gone.
/// A zombie counts as alive until it is reaped. Pids ≤ 0 are never alive (they name groups).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's pid.
pub fn current_pid() -> i32 {
    // SAFETY: getpid cannot fail. (std::process::id is the same call; this keeps i32.)
    unsafe { libc::getpid() }
}

/// Start time of `pid` in clock ticks after boot (`/proc/<pid>/stat` field 22), or `None` when the
/// process is gone or `/proc` is unreadable. Together with the pid it identifies a process: a reused
/// pid has a later start time.
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let mut path_buf = [0u8; 32];
    let path_len = format_stat_path(pid, &mut path_buf)?;
    let path = Path::new(OsStr::from_bytes(path_buf.get(..path_len)?));
    let mut file = std::fs::File::open(path).ok()?;
    // Field 22 lies within the first ~500 bytes even with a 64-byte comm and 20-digit fields.
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(buf.get_mut(filled..)?) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    parse_start_time(buf.get(..filled)?)
}

/// Start time of the calling process (see [`process_start_time`]).
pub fn current_start_time() -> Option<u64> {
    process_start_time(current_pid())
}

/// Writes `/proc/<pid>/stat` into `buf`, returning its length.
fn format_stat_path(pid: i32, buf: &mut [u8; 32]) -> Option<usize> {
    const PREFIX: &[u8] = b"/proc/";
    const SUFFIX: &[u8] = b"/stat";
    let mut digits = [0u8; 10];
    let mut n = pid.unsigned_abs();
    let mut count = 0;
    loop {
        *digits.get_mut(count)? = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for &b in PREFIX
        .iter()
        .chain(digits.get(..count)?.iter().rev())
        .chain(SUFFIX)
    {
        *buf.get_mut(len)? = b;
        len += 1;
    }
    Some(len)
}

/// Parses field 22 (`starttime`) out of the contents of a `/proc/<pid>/stat` file (possibly only its
/// first part). The second field, the command name, is in parentheses and may itself contain `)`,
/// spaces or digits, so fields are counted from the *last* `)`; every later field is a number or the
/// one-letter state, so no `)` can follow it.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    // After ") " come fields 3 (state), 4, 5, ...; field 22 is the 20th of them.
    let rest = stat.get(close + 1..)?;
    let field = rest
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(19)?;
    let mut value: u64 = 0;
    if field.is_empty() {
        return None;
    }
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, start: u64) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        // cutime cstime priority nice num_threads itrealvalue starttime vsize ...
        format!("1234 ({comm}) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 {start} 1000000 200 18446744073709551615 1 1 0 0 0 0 0\n")
    }

    #[test]
    fn start_time_is_field_22_even_with_hostile_comm() {
        for comm in [
            "bash",
            "a) b) c",
            ") 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 )",
            "x y",
            "((",
            "",
        ] {
            assert_eq!(
                parse_start_time(stat_line(comm, 987654321).as_bytes()),
                Some(987654321),
                "comm {comm:?}"
            );
        }
    }

    #[test]
    fn malformed_stat_is_none() {
        assert_eq!(parse_start_time(b""), None);
        assert_eq!(
            parse_start_time(b"1234 (bash S 1 2"),
            None,
            "no closing paren"
        );
        assert_eq!(
            parse_start_time(b"1234 (bash) S 1 2 3"),
            None,
            "too few fields"
        );
        assert_eq!(
            parse_start_time(
                stat_line("a", 5)
                    .replace(" 5 1000000", " 5x 1000000")
                    .as_bytes()
            ),
            None
        );
        assert_eq!(
            parse_start_time(
                stat_line("a", 0)
                    .replace(" 0 1000000", " 99999999999999999999999 1000000")
                    .as_bytes()
            ),
            None,
            "overflow"
        );
    }

    #[test]
    fn path_formatting() {
        let mut buf = [0u8; 32];
        let n = format_stat_path(2147483647, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"/proc/2147483647/stat");
        let n = format_stat_path(7, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"/proc/7/stat");
    }

    #[test]
    fn this_process_is_alive_with_a_start_time() {
        let me = current_pid();
        assert!(pid_alive(me));
        assert!(current_start_time().is_some());
        assert_eq!(process_start_time(me), current_start_time());
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
        // Above the kernel's pid_max (at most 2^22), so no such process can exist.
        assert!(!pid_alive(0x7fff_fff0));
        assert_eq!(process_start_time(0x7fff_fff0), None);
        // pid 1 exists in every namespace; it may be owned by root (EPERM), which still means alive.
        assert!(pid_alive(1));
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        // The pid could in theory be reused at once; a reused pid would have a different start time,
        // which is what the region compares, so only assert the liveness when nothing took it.
        if !pid_alive(pid) {
            assert_eq!(process_start_time(pid), None);
        }
    }
}
