//! One line per event on stderr: `<RFC 3339 UTC> <level> <message>`. Kubernetes keeps the pod's
//! stderr, so nothing fancier is needed, and nothing here can fail or panic.

use std::io::Write;

#[doc(hidden)]
pub fn write_line(level: &str, message: std::fmt::Arguments<'_>) {
    let line = format!(
        "{} {level} {message}\n",
        crate::time::rfc3339(crate::time::now_epoch_secs())
    );
    // One write per line so lines of concurrent tasks do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::write_line("info", format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::write_line("warn", format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::write_line("error", format_args!($($arg)*)) };
}
