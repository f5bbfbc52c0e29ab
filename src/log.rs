//! Logging that allocates nothing and costs one relaxed load when the level is off.
//!
//! `log_error!`, `log_warn!`, `log_info!`, `log_debug!` take `format!`-style arguments. The level test
//! comes first, so arguments are not evaluated when the line is off. A line is formatted into a stack
//! buffer as `vgpu[pid:tid] LEVEL message\n` and written with one `write(2)`; long lines are cut, never
//! an error. `log_warn_limited!` (and the `_error_` form) rate-limit a call site: at most one line per
//! second, with the number of lines dropped since the last one. `log_*_once!` print a call site once.
//!
//! The level comes from `LIBCUDA_LOG_LEVEL` (hami-contract.md 2.1: 0 error, 1 warn, 2 warn, 3 info,
//! 4 debug; default 2), read on the first log call by walking `environ`. A malformed value gives one
//! warning and the default; logging never fails closed.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// Severity of a line. The numbers are thresholds: a line prints when `level as u8 <= threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// `LIBCUDA_LOG_LEVEL` default (hami-contract.md 2.1).
const DEFAULT_THRESHOLD: u8 = 2;
/// The threshold before the environment has been read.
const UNREAD: u8 = u8::MAX;
static THRESHOLD: AtomicU8 = AtomicU8::new(UNREAD);

/// Bytes of one formatted line, prefix and newline included; longer lines are cut.
pub const LINE_CAPACITY: usize = 512;

/// Whether a line of `level` would print. One relaxed load in the common case.
#[inline(always)]
pub fn enabled(level: Level) -> bool {
    let mut threshold = THRESHOLD.load(Ordering::Relaxed);
    if threshold == UNREAD {
        threshold = read_threshold();
    }
    level as u8 <= threshold
}

/// Parses `LIBCUDA_LOG_LEVEL`: decimal 0..=4 (larger values mean debug). `None` if malformed.
pub fn parse_threshold(value: &[u8]) -> Option<u8> {
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    Some(n.min(Level::Debug as u32) as u8)
}

#[cold]
fn read_threshold() -> u8 {
    let mut buf = [0u8; 16];
    let (threshold, malformed) = match crate::sys::env::read_into(b"LIBCUDA_LOG_LEVEL", &mut buf) {
        crate::sys::env::EnvValue::Unset => (DEFAULT_THRESHOLD, false),
        crate::sys::env::EnvValue::Value(b"") => (DEFAULT_THRESHOLD, false),
        crate::sys::env::EnvValue::Value(v) => match parse_threshold(v) {
            Some(t) => (t, false),
            None => (DEFAULT_THRESHOLD, true),
        },
        crate::sys::env::EnvValue::TooLong(_) => (DEFAULT_THRESHOLD, true),
    };
    // Two threads may race here; both compute the same answer, and only the winner warns.
    let first = THRESHOLD
        .compare_exchange(UNREAD, threshold, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok();
    if first && malformed {
        write_line(
            Level::Warn,
            format_args!(
                "LIBCUDA_LOG_LEVEL is not a number 0..4; using the default {DEFAULT_THRESHOLD}"
            ),
            0,
        );
    }
    THRESHOLD.load(Ordering::Relaxed)
}

/// Sets the threshold directly (tests, and the CLI when it embeds the library).
pub fn set_threshold(threshold: u8) {
    THRESHOLD.store(threshold.min(Level::Debug as u8), Ordering::Relaxed);
}

/// A `fmt::Write` over a fixed buffer that silently drops what does not fit.
pub struct LineBuffer<'b> {
    buf: &'b mut [u8],
    len: usize,
    truncated: bool,
}

impl<'b> LineBuffer<'b> {
    pub fn new(buf: &'b mut [u8]) -> Self {
        LineBuffer {
            buf,
            len: 0,
            truncated: false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let take = bytes.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        if take < bytes.len() {
            self.truncated = true;
        }
    }
}

impl fmt::Write for LineBuffer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Never report an error: a `fmt::Error` would make `write!` stop, and some Display impls
        // panic on it. Cutting the line is the whole policy.
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Formats one complete line into `buf` and returns its length. The line always ends with `\n`,
/// even when cut (a cut line ends with `...\n`).
pub fn format_line(
    buf: &mut [u8],
    level: Level,
    pid: u32,
    tid: u32,
    args: fmt::Arguments<'_>,
    suppressed: u64,
) -> usize {
    const TAIL: &[u8] = b"...\n";
    if buf.len() < TAIL.len() {
        return 0;
    }
    let body_room = buf.len() - 1;
    let mut line = LineBuffer::new(&mut buf[..body_room]);
    let _ = write!(line, "vgpu[{pid}:{tid}] {} ", level.label());
    let _ = line.write_fmt(args);
    if suppressed > 0 {
        let _ = write!(line, " ({suppressed} similar lines suppressed)");
    }
    let (mut len, truncated) = (line.len, line.truncated);
    if truncated {
        len = body_room - (TAIL.len() - 1);
        buf[len..len + TAIL.len()].copy_from_slice(TAIL);
        return len + TAIL.len();
    }
    buf[len] = b'\n';
    len + 1
}

/// Formats and writes one line to stderr. Call through the macros, which test the level first.
#[cold]
pub fn write_line(level: Level, args: fmt::Arguments<'_>, suppressed: u64) {
    let mut buf = [0u8; LINE_CAPACITY];
    let len = format_line(
        &mut buf,
        level,
        crate::sys::process_id(),
        crate::sys::thread_id(),
        args,
        suppressed,
    );
    crate::sys::write_stderr(&buf[..len]);
}

/// Lets one line through per interval and counts the rest. One per call site (the macros make it).
pub struct RateLimit {
    interval_ns: u64,
    /// Monotonic time before which lines are dropped; 0 = never printed yet.
    next_allowed_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(interval_ns: u64) -> Self {
        RateLimit {
            interval_ns,
            next_allowed_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines dropped since the last one)` if a line may print now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(crate::sys::monotonic_ns())
    }

    /// [`allow`](Self::allow) with the clock passed in (for tests).
    pub fn allow_at(&self, now_ns: u64) -> Option<u64> {
        let next = self.next_allowed_ns.load(Ordering::Relaxed);
        if now_ns >= next
            && self
                .next_allowed_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(self.interval_ns).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// One second: how often a rate-limited call site may print.
pub const RATE_LIMIT_INTERVAL_NS: u64 = 1_000_000_000;

/// Lets exactly one line through, ever (per process; a forked child inherits the state).
pub struct Once(AtomicBool);

impl Once {
    pub const fn new() -> Self {
        Once(AtomicBool::new(false))
    }

    pub fn first(&self) -> bool {
        !self.0.load(Ordering::Relaxed) && !self.0.swap(true, Ordering::Relaxed)
    }
}

impl Default for Once {
    fn default() -> Self {
        Self::new()
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __vgpu_log {
    ($level:expr, $($arg:tt)+) => {{
        if $crate::log::enabled($level) {
            $crate::log::write_line($level, ::core::format_args!($($arg)+), 0);
        }
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __vgpu_log_limited {
    ($level:expr, $($arg:tt)+) => {{
        if $crate::log::enabled($level) {
            static LIMIT: $crate::log::RateLimit =
                $crate::log::RateLimit::new($crate::log::RATE_LIMIT_INTERVAL_NS);
            if let ::core::option::Option::Some(suppressed) = LIMIT.allow() {
                $crate::log::write_line($level, ::core::format_args!($($arg)+), suppressed);
            }
        }
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __vgpu_log_once {
    ($level:expr, $($arg:tt)+) => {{
        if $crate::log::enabled($level) {
            static ONCE: $crate::log::Once = $crate::log::Once::new();
            if ONCE.first() {
                $crate::log::write_line($level, ::core::format_args!($($arg)+), 0);
            }
        }
    }};
}

/// An error line (always printed).
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => { $crate::__vgpu_log!($crate::log::Level::Error, $($arg)+) };
}
/// A warning (LIBCUDA_LOG_LEVEL >= 1).
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => { $crate::__vgpu_log!($crate::log::Level::Warn, $($arg)+) };
}
/// An info line (LIBCUDA_LOG_LEVEL >= 3).
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => { $crate::__vgpu_log!($crate::log::Level::Info, $($arg)+) };
}
/// A debug line (LIBCUDA_LOG_LEVEL >= 4).
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => { $crate::__vgpu_log!($crate::log::Level::Debug, $($arg)+) };
}
/// A warning from this call site at most once a second, with a count of the dropped ones.
#[macro_export]
macro_rules! log_warn_limited {
    ($($arg:tt)+) => { $crate::__vgpu_log_limited!($crate::log::Level::Warn, $($arg)+) };
}
/// An error from this call site at most once a second, with a count of the dropped ones.
#[macro_export]
macro_rules! log_error_limited {
    ($($arg:tt)+) => { $crate::__vgpu_log_limited!($crate::log::Level::Error, $($arg)+) };
}
/// A warning printed once per process from this call site.
#[macro_export]
macro_rules! log_warn_once {
    ($($arg:tt)+) => { $crate::__vgpu_log_once!($crate::log::Level::Warn, $($arg)+) };
}
/// An error printed once per process from this call site.
#[macro_export]
macro_rules! log_error_once {
    ($($arg:tt)+) => { $crate::__vgpu_log_once!($crate::log::Level::Error, $($arg)+) };
}
/// An info line printed once per process from this call site.
#[macro_export]
macro_rules! log_info_once {
    ($($arg:tt)+) => { $crate::__vgpu_log_once!($crate::log::Level::Info, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(cap: usize, level: Level, args: fmt::Arguments<'_>, suppressed: u64) -> String {
        let mut buf = vec![0u8; cap];
        let n = format_line(&mut buf, level, 12, 34, args, suppressed);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn formats_prefix_and_newline() {
        assert_eq!(
            line(
                128,
                Level::Warn,
                format_args!("limit {} request {}", 1u64 << 30, 5),
                0
            ),
            "vgpu[12:34] WARN limit 1073741824 request 5\n"
        );
        assert_eq!(
            line(128, Level::Error, format_args!("x"), 3),
            "vgpu[12:34] ERROR x (3 similar lines suppressed)\n"
        );
    }

    #[test]
    fn long_lines_are_cut_not_lost() {
        let long = "y".repeat(1000);
        let s = line(64, Level::Info, format_args!("{long}"), 0);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("vgpu[12:34] INFO yyy"));
        assert!(s.ends_with("...\n"));
        assert_eq!(line(3, Level::Info, format_args!("z"), 0), "");
    }

    #[test]
    fn parses_levels() {
        assert_eq!(parse_threshold(b"0"), Some(0));
        assert_eq!(parse_threshold(b"2"), Some(2));
        assert_eq!(parse_threshold(b"4"), Some(4));
        assert_eq!(parse_threshold(b"9"), Some(4));
        assert_eq!(parse_threshold(b"-1"), None);
        assert_eq!(parse_threshold(b"x"), None);
        assert_eq!(parse_threshold(b""), None);
        // 1 and 2 both mean warnings; 0 means errors only.
        assert!(Level::Warn as u8 <= 1 && Level::Info as u8 > 2 && Level::Error as u8 == 0);
    }

    #[test]
    fn rate_limit_counts_dropped_lines() {
        let limit = RateLimit::new(1000);
        assert_eq!(limit.allow_at(5), Some(0));
        assert_eq!(limit.allow_at(6), None);
        assert_eq!(limit.allow_at(500), None);
        assert_eq!(limit.allow_at(1005), Some(2));
        assert_eq!(limit.allow_at(1006), None);
    }

    #[test]
    fn once_is_once() {
        let once = Once::new();
        assert!(once.first());
        assert!(!once.first());
    }

    #[test]
    fn macros_do_not_evaluate_arguments_when_off() {
        set_threshold(0);
        let mut evaluated = false;
        log_debug!("{}", {
            evaluated = true;
            1
        });
        assert!(!evaluated);
        log_warn_limited!("not printed {}", 1);
        log_error_once!("printed once by the test: ignore");
        set_threshold(2);
    }
}
