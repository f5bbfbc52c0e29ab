//! The real `libcuda.so.1` and `libnvidia-ml.so.1`, opened on first use and resolved once.
//!
//! A table is filled the first time any hook needs it. A call that arrives *while this thread is
//! filling it* (the driver's constructor calling back into one of our exports, say) gets an empty
//! table, whose entries answer "not found", instead of deadlocking on itself.

use std::cell::Cell;
use std::ffi::CStr;
use std::sync::OnceLock;

use super::{RealCuda, RealNvml};
use crate::sys::dl::{self, Library};

/// A resolved table and the library it came from.
pub struct Loaded<T: 'static> {
    pub library: Option<Library>,
    pub table: T,
}

static CUDA: OnceLock<Loaded<RealCuda>> = OnceLock::new();
static NVML: OnceLock<Loaded<RealNvml>> = OnceLock::new();
static EMPTY_CUDA: Loaded<RealCuda> = Loaded {
    library: None,
    table: RealCuda::EMPTY,
};
static EMPTY_NVML: Loaded<RealNvml> = Loaded {
    library: None,
    table: RealNvml::EMPTY,
};

thread_local! {
    static LOADING: Cell<bool> = const { Cell::new(false) };
}

/// The soname libcudart and every other client open (driver-facts.md).
pub const CUDA_LIBRARY: &CStr = c"libcuda.so.1";
pub const NVML_LIBRARY: &CStr = c"libnvidia-ml.so.1";

/// The real CUDA driver table. One acquire load once loaded.
#[inline]
pub fn real_cuda() -> &'static RealCuda {
    &cuda_library().table
}

/// The real NVML table. One acquire load once loaded.
#[inline]
pub fn real_nvml() -> &'static RealNvml {
    &nvml_library().table
}

#[inline]
pub fn cuda_library() -> &'static Loaded<RealCuda> {
    match CUDA.get() {
        Some(loaded) => loaded,
        None => load_once(&CUDA, &EMPTY_CUDA, || load(CUDA_LIBRARY, RealCuda::load)),
    }
}

#[inline]
pub fn nvml_library() -> &'static Loaded<RealNvml> {
    match NVML.get() {
        Some(loaded) => loaded,
        None => load_once(&NVML, &EMPTY_NVML, || load(NVML_LIBRARY, RealNvml::load)),
    }
}

#[cold]
fn load_once<T>(
    cell: &'static OnceLock<Loaded<T>>,
    empty: &'static Loaded<T>,
    load: impl FnOnce() -> Loaded<T>,
) -> &'static Loaded<T> {
    if LOADING.with(Cell::get) {
        return empty;
    }
    LOADING.with(|flag| flag.set(true));
    let loaded = cell.get_or_init(load);
    LOADING.with(|flag| flag.set(false));
    loaded
}

fn load<T>(
    name: &'static CStr,
    fill: fn(&mut dyn FnMut(&'static CStr) -> *mut std::ffi::c_void) -> T,
) -> Loaded<T> {
    match dl::open(name) {
        Ok(library) => {
            let table = fill(&mut |symbol| {
                library
                    .symbol(symbol)
                    .map_or(std::ptr::null_mut(), |a| a as *mut std::ffi::c_void)
            });
            log_debug!("opened {}", name.to_string_lossy());
            Loaded {
                library: Some(library),
                table,
            }
        }
        Err(error) => {
            // Not an error for us: the driver's absence shows up as its own errors in the caller.
            log_info!("cannot open {}: {error}", name.to_string_lossy());
            Loaded {
                library: None,
                table: fill(&mut |_| std::ptr::null_mut()),
            }
        }
    }
}
