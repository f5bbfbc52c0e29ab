//! What our `dlsym` answers (the entry itself is in `sys::dl`).
//!
//! For a hooked name looked up through `RTLD_DEFAULT`, `RTLD_NEXT` or a handle whose answer is the real
//! driver's function, we return our hook. Everything else returns `None`, and the entry hands the call
//! to the real `dlsym` unchanged. This runs for every `dlsym` in the process, so names that cannot be
//! ours are turned away after a two-byte check, with no allocation, lock or lookup.

use std::ffi::CStr;

use super::real;
use crate::sys::dl::{self, RTLD_DEFAULT, RTLD_NEXT};

enum Family {
    Cuda,
    Nvml,
}

/// `Some(our hook)` or `None` (forward to the real `dlsym`).
pub fn decision(handle: usize, name: &CStr) -> Option<usize> {
    let bytes = name.to_bytes();
    let (family, hook) = if bytes.starts_with(b"cu") {
        (Family::Cuda, super::cuda_hook(bytes)?)
    } else if bytes.starts_with(b"nvml") {
        (Family::Nvml, super::nvml_hook(bytes)?)
    } else {
        return None;
    };
    if handle == RTLD_DEFAULT || handle == RTLD_NEXT {
        return Some(hook);
    }
    // A real handle: answer with our hook only if that handle leads to the real driver's function
    // (or to our own export). A library of its own that happens to define the name keeps its answer.
    let found = dl::lookup(handle, name)?;
    if found == hook {
        return Some(hook);
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
    // The real driver's function (compared by address, so a driver opened under another name such
    // as `libcuda.so` counts too), or any answer through the very handle we opened the driver with.
    (real_table_hook.is_some() || is_driver_handle).then_some(hook)
}
