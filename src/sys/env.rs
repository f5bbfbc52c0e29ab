//! Reading the environment without allocating: walk `environ` and copy a value into a caller's buffer.
//!
//! Why not `std::env::var`: the logger reads `LIBCUDA_LOG_LEVEL` on its first use, which can be inside
//! a `dlsym` call made from another library's constructor, before Rust's runtime has done anything for
//! us. Walking `environ` (as mimalloc does, `src/prim/unix/prim.c`) needs no allocation and no lock.
//! Init-time code that wants every `CUDA_*` variable may use [`for_each`] or `std::env` (init is cold).

use std::ffi::{c_char, CStr};

extern "C" {
    /// The process environment, maintained by libc (`environ(7)`).
    static environ: *const *const c_char;
}

/// Calls `visit(name, value)` for every `NAME=value` entry, in `environ` order. Entries without `=`
/// are skipped.
///
/// Another thread calling `setenv` at the same moment may race with this walk; glibc's own `getenv`
/// has the same caveat, and we only read the environment at init.
pub fn for_each(mut visit: impl FnMut(&[u8], &[u8])) {
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings owned by libc. We read it
    // without holding references past this call.
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let bytes = CStr::from_ptr(*entry).to_bytes();
            if let Some(eq) = bytes.iter().position(|&b| b == b'=') {
                visit(&bytes[..eq], &bytes[eq + 1..]);
            }
            entry = entry.add(1);
        }
    }
}

/// What [`read_into`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvValue<'b> {
    /// The variable is not set.
    Unset,
    /// The value, copied into the caller's buffer.
    Value(&'b [u8]),
    /// The value is longer than the buffer (its full length is given).
    TooLong(usize),
}

/// Copies the value of `name` into `buf`. The first matching entry wins, as with `getenv`.
pub fn read_into<'b>(name: &[u8], buf: &'b mut [u8]) -> EnvValue<'b> {
    let mut found: Option<Result<usize, usize>> = None;
    for_each(|key, value| {
        if found.is_none() && key == name {
            found = Some(if value.len() <= buf.len() {
                buf[..value.len()].copy_from_slice(value);
                Ok(value.len())
            } else {
                Err(value.len())
            });
        }
    });
    match found {
        None => EnvValue::Unset,
        Some(Ok(len)) => EnvValue::Value(&buf[..len]),
        Some(Err(len)) => EnvValue::TooLong(len),
    }
}

/// Every `NAME=value` pair whose name starts with one of `prefixes`, as owned strings. Allocates: for
/// init only. Values that are not UTF-8 are kept lossily (the config parser then rejects them).
pub fn collect_with_prefixes(prefixes: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for_each(|key, value| {
        if prefixes.iter().any(|p| key.starts_with(p.as_bytes())) {
            out.push((
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_variable_into_a_buffer() {
        std::env::set_var("VGPU_ENV_TEST_A", "hello");
        let mut buf = [0u8; 16];
        assert_eq!(
            read_into(b"VGPU_ENV_TEST_A", &mut buf),
            EnvValue::Value(b"hello")
        );
        let mut small = [0u8; 3];
        assert_eq!(
            read_into(b"VGPU_ENV_TEST_A", &mut small),
            EnvValue::TooLong(5)
        );
        assert_eq!(read_into(b"VGPU_ENV_TEST_NOPE", &mut buf), EnvValue::Unset);
        // A prefix of a real name is not a match.
        assert_eq!(read_into(b"VGPU_ENV_TEST_", &mut buf), EnvValue::Unset);
    }

    #[test]
    fn empty_and_equals_in_value() {
        std::env::set_var("VGPU_ENV_TEST_B", "");
        std::env::set_var("VGPU_ENV_TEST_C", "a=b");
        let mut buf = [0u8; 16];
        assert_eq!(
            read_into(b"VGPU_ENV_TEST_B", &mut buf),
            EnvValue::Value(b"")
        );
        assert_eq!(
            read_into(b"VGPU_ENV_TEST_C", &mut buf),
            EnvValue::Value(b"a=b")
        );
    }

    #[test]
    fn collects_by_prefix() {
        std::env::set_var("VGPU_ENV_TEST_PFX_1", "x");
        std::env::set_var("VGPU_ENV_TEST_PFX_2", "y");
        let mut got = collect_with_prefixes(&["VGPU_ENV_TEST_PFX_"]);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("VGPU_ENV_TEST_PFX_1".to_string(), "x".to_string()),
                ("VGPU_ENV_TEST_PFX_2".to_string(), "y".to_string())
            ]
        );
    }
}
