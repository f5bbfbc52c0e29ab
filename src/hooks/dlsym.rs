//! What our `dlsym` answers (the entry itself is in `sys::dl`).
//!
//! - `RTLD_DEFAULT` and `RTLD_NEXT`: never substituted. The entry hands these to the real `dlsym` with
//!   the original caller's return address, so glibc answers exactly as if we were not there, and that
//!   answer is already right: in the global search order our preloaded exports come before the driver,
//!   so a program (or an interposer preloaded before us) that asks for a hooked name finds our export,
//!   while an interposer preloaded *after* us gets what really comes after it (the driver), not our
//!   hook, which would call that interposer again and recurse for ever.
//! - An explicit handle (`dlopen("libcuda.so.1")`, libloading, ctypes): for a hooked name whose answer
//!   through that handle is the real driver's function, we return our hook. A library of its own that
//!   happens to define the name keeps its answer.
//!
//! Everything else returns `None`, and the entry hands the call to the real `dlsym` unchanged. This runs
//! for every `dlsym` in the process, so names that cannot be ours are turned away after a two-byte
//! check, with no allocation, lock or lookup.

use std::ffi::CStr;

use super::real;
use crate::sys::dl::{self, RTLD_DEFAULT, RTLD_NEXT};

enum Family {
    Cuda,
    Nvml,
}

/// `Some(our hook)` or `None` (forward to the real `dlsym`).
pub fn decision(handle: usize, name: &CStr) -> Option<usize> {
    if handle == RTLD_DEFAULT || handle == RTLD_NEXT {
        return None;
    }
    let bytes = name.to_bytes();
    let (family, hook) = if bytes.starts_with(b"cu") {
        (Family::Cuda, super::cuda_hook(bytes)?)
    } else if bytes.starts_with(b"nvml") {
        (Family::Nvml, super::nvml_hook(bytes)?)
    } else {
        return None;
    };
    let found = dl::lookup(handle, name)?;
    if found == hook {
        return Some(hook); // a handle whose search reaches our own export first (dlopen(NULL))
    }
    let (real_table_hook, is_driver_handle) = match family {
        Family::Cuda => {
            let loaded = real::cuda_library();
            (
                loaded.table.hook_for_real_address(found),
                loaded.library.map(|l| l.handle()) == Some(handle),
            )
        }
        Family::Nvml => {
            let loaded = real::nvml_library();
            (
                loaded.table.hook_for_real_address(found),
                loaded.library.map(|l| l.handle()) == Some(handle),
            )
        }
    };
    // The real driver's function, compared by address: `dlopen("libcuda.so")` and
    // `dlopen("libcuda.so.1")` name one object when one is a link to the other, and so does a handle
    // of a library that depends on the driver. Or any answer through the very handle we opened the
    // driver with.
    (real_table_hook.is_some() || is_driver_handle).then_some(hook)
}
