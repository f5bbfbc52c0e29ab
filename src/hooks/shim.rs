//! The machinery every generated export shares: the re-entrancy flag, the panic firewall, and the
//! `hooks!` macro that turns the one list (`list.rs`) into exports, the real-function tables and the
//! name lookups behind `dlsym` and `cuGetProcAddress`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use vgpu_abi::cuda::{cudaError_enum, CUresult};
use vgpu_abi::nvml::{nvmlReturn_enum, nvmlReturn_t};

use crate::sys::thread_state;

/// Proof that this thread entered a hook body; dropping it clears the thread's flag
/// (`sys::thread_state`: set while this thread runs one of our hook bodies, zero-initialised and
/// without a destructor, so it works before Rust's runtime is up and while a thread is exiting).
pub struct Entered(());

impl Entered {
    /// `None` when this thread is already inside a hook (the driver calling back, or our own code
    /// reaching a hooked symbol): such a call must go straight to the real function.
    #[inline(always)]
    pub fn enter() -> Option<Entered> {
        thread_state::with(|state| {
            if state.in_hook.get() {
                None
            } else {
                state.in_hook.set(true);
                Some(Entered(()))
            }
        })
    }
}

impl Drop for Entered {
    #[inline(always)]
    fn drop(&mut self) {
        thread_state::with(|state| state.in_hook.set(false));
    }
}

/// The return types of hooked functions, and the codes we answer with when we cannot do better.
pub trait ReturnCode: Copy {
    /// Our own bug: a hook body panicked.
    fn unknown() -> Self;
    /// The real library lacks the symbol.
    fn not_found() -> Self;
}

impl ReturnCode for CUresult {
    fn unknown() -> Self {
        cudaError_enum::CUDA_ERROR_UNKNOWN
    }
    fn not_found() -> Self {
        cudaError_enum::CUDA_ERROR_NOT_FOUND
    }
}

impl ReturnCode for nvmlReturn_t {
    fn unknown() -> Self {
        nvmlReturn_enum::NVML_ERROR_UNKNOWN
    }
    fn not_found() -> Self {
        nvmlReturn_enum::NVML_ERROR_FUNCTION_NOT_FOUND
    }
}

/// Runs a hook body; a panic is logged once and becomes `R::unknown()` instead of unwinding into C
/// (which aborts the host since Rust 1.81).
#[inline(always)]
pub fn firewall<R: ReturnCode>(symbol: &'static str, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(_) => {
            caught_panic(symbol);
            R::unknown()
        }
    }
}

#[cold]
fn caught_panic(symbol: &'static str) {
    crate::log_error_once!("internal error (panic) in the {symbol} hook; returning an error code");
}

/// Declares the hooks. See `list.rs` for the one invocation and what each section means.
macro_rules! hooks {
    (
        cuda { $($c_name:ident => $c_body:path;)* }
        cuda_uses { $($cu_name:ident),* $(,)? }
        nvml { $($n_name:ident => $n_body:path;)* }
        nvml_uses { $($nu_name:ident),* $(,)? }
    ) => {
        /// The exported symbols, one module so that they are easy to find in `nm` and in docs.
        #[allow(non_snake_case, clippy::missing_safety_doc)]
        pub mod exports {
            use super::*;
            $( with_abi!($c_name, emit_cuda_hook, {$c_body}); )*
            $( with_abi!($n_name, emit_nvml_hook, {$n_body}); )*
        }

        /// The real driver's entry points we hook or call, resolved once. Every entry is optional.
        #[allow(non_snake_case)]
        pub struct RealCuda {
            $( pub $c_name: $crate::hooks::pfn::$c_name, )*
            $( pub $cu_name: $crate::hooks::pfn::$cu_name, )*
        }

        /// The real NVML entry points we hook or call, resolved once. Every entry is optional.
        #[allow(non_snake_case)]
        pub struct RealNvml {
            $( pub $n_name: $crate::hooks::pfn::$n_name, )*
            $( pub $nu_name: $crate::hooks::pfn::$nu_name, )*
        }

        #[allow(non_snake_case, dead_code, clippy::too_many_arguments)]
        impl RealCuda {
            /// A table with nothing in it: every call answers `CUDA_ERROR_NOT_FOUND`.
            pub const EMPTY: RealCuda = RealCuda {
                $( $c_name: None, )* $( $cu_name: None, )*
            };

            /// Fills the table with `lookup(name)` for every entry (NULL = missing).
            pub fn load(lookup: &mut dyn FnMut(&'static ::std::ffi::CStr) -> *mut ::std::ffi::c_void) -> Self {
                RealCuda {
                    $( $c_name: $crate::hooks::shim::from_address(lookup($crate::cstr_of!($c_name))), )*
                    $( $cu_name: $crate::hooks::shim::from_address(lookup($crate::cstr_of!($cu_name))), )*
                }
            }

            /// Our hook standing in for `real`, if `real` is the real address of a hooked symbol.
            pub fn hook_for_real_address(&self, real: usize) -> Option<usize> {
                $( if self.$c_name.map(|f| f as *const () as usize) == Some(real) { return Some(exports::$c_name as *const () as usize); } )*
                None
            }

            $( with_abi!($c_name, emit_real_method, {}); )*
            $( with_abi!($cu_name, emit_real_method, {}); )*
        }

        #[allow(non_snake_case, dead_code, clippy::too_many_arguments)]
        impl RealNvml {
            /// A table with nothing in it: every call answers `NVML_ERROR_FUNCTION_NOT_FOUND`.
            pub const EMPTY: RealNvml = RealNvml { $( $n_name: None, )* $( $nu_name: None, )* };

            /// Fills the table with `lookup(name)` for every entry (NULL = missing).
            pub fn load(lookup: &mut dyn FnMut(&'static ::std::ffi::CStr) -> *mut ::std::ffi::c_void) -> Self {
                RealNvml {
                    $( $n_name: $crate::hooks::shim::from_address(lookup($crate::cstr_of!($n_name))), )*
                    $( $nu_name: $crate::hooks::shim::from_address(lookup($crate::cstr_of!($nu_name))), )*
                }
            }

            /// Our hook standing in for `real`, if `real` is the real address of a hooked symbol.
            pub fn hook_for_real_address(&self, real: usize) -> Option<usize> {
                $( if self.$n_name.map(|f| f as *const () as usize) == Some(real) { return Some(exports::$n_name as *const () as usize); } )*
                None
            }

            $( with_abi!($n_name, emit_real_method, {}); )*
            $( with_abi!($nu_name, emit_real_method, {}); )*
        }

        /// Our CUDA hook exported under `name`, if we hook that symbol.
        pub fn cuda_hook(name: &[u8]) -> Option<usize> {
            $( if name == stringify!($c_name).as_bytes() { return Some(exports::$c_name as *const () as usize); } )*
            None
        }

        /// Our NVML hook exported under `name`, if we hook that symbol.
        pub fn nvml_hook(name: &[u8]) -> Option<usize> {
            $( if name == stringify!($n_name).as_bytes() { return Some(exports::$n_name as *const () as usize); } )*
            None
        }

        /// Every symbol we export as a hook (not `dlsym`), in list order.
        #[allow(dead_code)]
        pub const HOOKED_SYMBOLS: &[&str] = &[
            $( stringify!($c_name), )* $( stringify!($n_name), )*
        ];
    };
}

/// `name` as a `&'static CStr`, checked at compile time.
#[macro_export]
#[doc(hidden)]
macro_rules! cstr_of {
    ($name:ident) => {{
        const NAME: &::std::ffi::CStr = match ::std::ffi::CStr::from_bytes_with_nul(
            concat!(stringify!($name), "\0").as_bytes(),
        ) {
            Ok(name) => name,
            Err(_) => panic!("symbol names have no NUL"),
        };
        NAME
    }};
}

/// One CUDA export with a body: guard, firewall, body. A nested call goes to the real function.
macro_rules! emit_cuda_hook {
    ({$body:path} $name:ident, ($($arg:ident : $ty:ty),* $(,)?), $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            match $crate::hooks::shim::Entered::enter() {
                Some(_entered) => $crate::hooks::shim::firewall(stringify!($name), move || {
                    // SAFETY: the C caller's arguments, passed on unchanged under the same contract.
                    unsafe { $body($($arg),*) }
                }),
                // SAFETY: as above; the real function has this exact signature.
                None => unsafe { $crate::hooks::real_cuda().$name($($arg),*) },
            }
        }
        // The export must have the exact type of the ABI it stands for.
        const _: $crate::hooks::pfn::$name = Some($name);
    };
}

/// One NVML export with a body (as `emit_cuda_hook`).
macro_rules! emit_nvml_hook {
    ({$body:path} $name:ident, ($($arg:ident : $ty:ty),* $(,)?), $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            match $crate::hooks::shim::Entered::enter() {
                Some(_entered) => $crate::hooks::shim::firewall(stringify!($name), move || {
                    // SAFETY: the C caller's arguments, passed on unchanged under the same contract.
                    unsafe { $body($($arg),*) }
                }),
                // SAFETY: as above; the real function has this exact signature.
                None => unsafe { $crate::hooks::real_nvml().$name($($arg),*) },
            }
        }
        const _: $crate::hooks::pfn::$name = Some($name);
    };
}

/// `real.<name>(..)`: calls the real entry point, or answers "not found" when the library lacks it.
macro_rules! emit_real_method {
    ({} $name:ident, ($($arg:ident : $ty:ty),* $(,)?), $ret:ty) => {
        #[inline(always)]
        pub unsafe fn $name(&self, $($arg: $ty),*) -> $ret {
            match self.$name {
                // SAFETY: the pointer came from the real library under this symbol's name, and the
                // caller upholds the C function's contract.
                Some(real) => unsafe { real($($arg),*) },
                None => <$ret as $crate::hooks::shim::ReturnCode>::not_found(),
            }
        }
    };
}

/// A symbol address from `dlsym` as the typed, optional function pointer of that symbol.
#[inline]
pub fn from_address<F: Copy>(address: *mut std::ffi::c_void) -> Option<F> {
    const { assert!(std::mem::size_of::<Option<F>>() == std::mem::size_of::<*mut std::ffi::c_void>()) };
    // SAFETY: `F` is always an `unsafe extern "C" fn` type (the `pfn` aliases are `Option<fn>`, so this
    // is called with their inner type); `Option<fn>` has the same layout as a nullable pointer, NULL
    // being `None`. The assertion above checks the size.
    unsafe { std::mem::transmute_copy::<*mut std::ffi::c_void, Option<F>>(&address) }
}
