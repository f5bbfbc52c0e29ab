//! The dynamic loader: the real `dlsym`, opening the real driver libraries, and our `dlsym` entry.
//!
//! Nothing else in the crate calls `dlsym` by name: inside libvgpu.so that name is our own override.
//! The real one is found once with `dlvsym(RTLD_NEXT, "dlsym", <version>)`, which yields the next
//! definition after us in load order: libc's, or a second interposer's that was preloaded after us.
//!
//! # Our `dlsym` and `RTLD_NEXT`
//!
//! `dlsym(RTLD_NEXT, name)` means "the next definition after the *caller's* object"; glibc finds the
//! caller from the return address of its `dlsym`. If our override *called* the real `dlsym`, glibc would
//! see libvgpu.so as the caller and answer relative to us (driver-facts.md, "Why a thin C shim may be
//! needed"). So our entry is a few instructions of assembly: it asks `hooks::dlsym_decision` (plain Rust) for
//! our hook, and when there is none it restores the caller's registers and return address and *jumps*
//! to the real `dlsym`. The real `dlsym` then sees the original caller, exactly as if we were not there,
//! and also sets `dlerror()` itself. This is sturdier than re-implementing the `RTLD_NEXT` search with
//! `dladdr` + `dl_iterate_phdr` (which would miss `dlmopen` namespaces, `RTLD_LOCAL` objects and glibc's
//! exact ordering rules) and needs no private glibc symbol such as `_dl_sym`.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `dlopen`'s pseudo-handles (dlfcn.h).
pub const RTLD_DEFAULT: usize = 0;
pub const RTLD_NEXT: usize = usize::MAX;

/// A handle from `dlopen`, kept as an integer so that tables holding it are `Send + Sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Library(usize);

impl Library {
    pub fn handle(self) -> usize {
        self.0
    }

    /// The address of `name` in this library (or what `dlsym` finds through it), if any.
    pub fn symbol(self, name: &CStr) -> Option<usize> {
        lookup(self.0, name)
    }
}

/// Opens `name` (a soname such as `libcuda.so.1`) without adding it to the global scope, preferring
/// a copy that is already loaded so that we use the same driver as the application.
///
/// `RTLD_LOCAL`: the driver's own symbols must not become visible to `dlsym(RTLD_DEFAULT, ..)` lookups
/// of the host just because we loaded it.
pub fn open(name: &CStr) -> Result<Library, String> {
    // SAFETY: `name` is NUL-terminated; RTLD_NOLOAD only returns an already-loaded object.
    let loaded = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if !loaded.is_null() {
        return Ok(Library(loaded as usize));
    }
    // SAFETY: as above. Loading runs the library's constructors, which is what its users expect.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(last_dl_error());
    }
    Ok(Library(handle as usize))
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call here.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown dlopen error".to_string();
    }
    // SAFETY: non-NULL, NUL-terminated (above).
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

/// `real_dlsym(handle, name)`. Not for `RTLD_NEXT`, which would be answered relative to libvgpu.so.
pub fn lookup(handle: usize, name: &CStr) -> Option<usize> {
    debug_assert_ne!(handle, RTLD_NEXT);
    let real: RealDlsym = real_dlsym();
    // SAFETY: `real` is libc's dlsym (or the next interposer's); `name` is NUL-terminated.
    let address = unsafe { real(handle as *mut c_void, name.as_ptr()) };
    (!address.is_null()).then_some(address as usize)
}

type RealDlsym = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

/// glibc's symbol versions of `dlsym`: 2.34 moved it into libc proper; before that it lived in libdl
/// under the architecture's base version.
#[cfg(target_arch = "x86_64")]
const DLSYM_VERSIONS: &[&CStr] = &[c"GLIBC_2.34", c"GLIBC_2.2.5"];
#[cfg(target_arch = "aarch64")]
const DLSYM_VERSIONS: &[&CStr] = &[c"GLIBC_2.34", c"GLIBC_2.17"];

/// The `dlsym` that comes after us, resolved on first use (racing threads find the same answer).
pub fn real_dlsym() -> RealDlsym {
    let mut address = REAL_DLSYM.load(Ordering::Acquire);
    if address == 0 {
        address = resolve_real_dlsym();
        REAL_DLSYM.store(address, Ordering::Release);
    }
    // SAFETY: only ever set to the address of a function with dlsym's signature (below).
    unsafe { std::mem::transmute::<usize, RealDlsym>(address) }
}

#[cold]
fn resolve_real_dlsym() -> usize {
    let ours = entry::dlsym as *const () as usize;
    for version in DLSYM_VERSIONS {
        // SAFETY: both strings are NUL-terminated; RTLD_NEXT from here means "after libvgpu.so".
        let found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !found.is_null() && found as usize != ours {
            return found as usize;
        }
    }
    crate::log_error_once!("cannot find the real dlsym; every dlsym lookup will fail");
    no_dlsym as *const () as usize
}

unsafe extern "C" fn no_dlsym(_handle: *mut c_void, _name: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

/// Called from the assembly entry with the caller's `(handle, name)`: our hook's address, or 0 to hand
/// the call to the real `dlsym`.
#[cfg_attr(test, allow(dead_code))]
extern "C" fn decide(handle: *mut c_void, name: *const c_char) -> usize {
    if name.is_null() {
        return 0;
    }
    // SAFETY: dlsym's contract: `name` is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) };
    // A panic here must not unwind into the assembly; forwarding is always a correct answer.
    std::panic::catch_unwind(|| crate::hooks::dlsym_decision(handle as usize, name))
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn real_dlsym_address() -> usize {
    real_dlsym() as usize
}

/// The exported `dlsym`. Kept out of unit-test binaries, where it would replace the test harness's
/// own `dlsym` for no benefit.
///
/// It is exported under glibc's two symbol versions, `dlsym@@GLIBC_2.34` (the default, what programs
/// linked against glibc 2.34+ ask for) and `dlsym@GLIBC_2.2.5` (`GLIBC_2.17` on aarch64: programs
/// linked against an older glibc, whose `dlsym` lived in libdl). An unversioned definition would do for
/// ordinary symbol binding, but not for `dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34")`, which is how a
/// second interposer preloaded before us finds "the next dlsym": glibc's `dlvsym` skips unversioned
/// definitions in an object that has version information, so that interposer would jump straight to
/// libc and our hooks would never see its lookups. build.rs writes the version script that declares
/// the two version nodes; `.symver` gives the entry both names. The entry's own labels are not in
/// rustc's list of exports, so they stay local: nothing else is exported.
///
/// The entry is plain assembly (`global_asm!`) rather than a naked Rust function because `.symver`
/// must name a symbol defined in the same object file, and rustc may put a function and a
/// `global_asm!` block in different codegen units.
#[cfg(not(test))]
pub mod entry {
    extern "C" {
        /// The assembly entry below. (Its versioned labels must not be named from Rust: LLVM then
        /// sees them as undefined declarations and refuses their `.symver`.)
        #[link_name = "vgpu_dlsym_entry"]
        pub fn dlsym(
            handle: *mut std::ffi::c_void,
            name: *const std::ffi::c_char,
        ) -> *mut std::ffi::c_void;
    }
}
#[cfg(test)]
pub mod entry {
    /// Stand-in so that `resolve_real_dlsym` can compare against "our" entry in tests.
    pub extern "C" fn dlsym() {}
}

// `void *dlsym(void *handle, const char *name)`.
//
// On entry `[rsp]` is the caller's return address. We save the two arguments, ask `decide`, and either
// return its answer or restore everything and tail-jump to the real `dlsym`, so the return address it
// sees is the original caller's. `dlsym`'s contract: `name` is NULL or a NUL-terminated string.
#[cfg(all(not(test), target_arch = "x86_64"))]
core::arch::global_asm!(
    ".pushsection .text.vgpu_dlsym,\"ax\",@progbits",
    ".p2align 4",
    ".globl vgpu_dlsym_entry",
    ".hidden vgpu_dlsym_entry",
    ".globl vgpu_dlsym_default_version",
    ".globl vgpu_dlsym_base_version",
    ".type vgpu_dlsym_entry, @function",
    ".type vgpu_dlsym_default_version, @function",
    ".type vgpu_dlsym_base_version, @function",
    ".symver vgpu_dlsym_default_version, dlsym@@GLIBC_2.34",
    ".symver vgpu_dlsym_base_version, dlsym@GLIBC_2.2.5",
    "vgpu_dlsym_entry:",
    "vgpu_dlsym_default_version:",
    "vgpu_dlsym_base_version:",
    ".cfi_startproc",
    "push rdi",
    ".cfi_adjust_cfa_offset 8",
    "push rsi",
    ".cfi_adjust_cfa_offset 8",
    "sub rsp, 8", // entry rsp is 8 mod 16; three slots make the calls 16-aligned
    ".cfi_adjust_cfa_offset 8",
    "call {decide}",
    "test rax, rax",
    "jnz 2f",
    "call {real}",
    "add rsp, 8",
    ".cfi_adjust_cfa_offset -8",
    "pop rsi",
    ".cfi_adjust_cfa_offset -8",
    "pop rdi",
    ".cfi_adjust_cfa_offset -8",
    "jmp rax",
    "2:",
    ".cfi_adjust_cfa_offset 24",
    "add rsp, 24",
    ".cfi_adjust_cfa_offset -24",
    "ret",
    ".cfi_endproc",
    ".size vgpu_dlsym_entry, . - vgpu_dlsym_entry",
    ".size vgpu_dlsym_default_version, . - vgpu_dlsym_default_version",
    ".size vgpu_dlsym_base_version, . - vgpu_dlsym_base_version",
    ".popsection",
    decide = sym decide,
    real = sym real_dlsym_address,
);

// `void *dlsym(void *handle, const char *name)`; see the x86-64 version. Here the caller's return
// address is in x30, which we restore before branching to the real `dlsym`.
#[cfg(all(not(test), target_arch = "aarch64"))]
core::arch::global_asm!(
    ".pushsection .text.vgpu_dlsym,\"ax\",%progbits",
    ".p2align 2",
    ".globl vgpu_dlsym_entry",
    ".hidden vgpu_dlsym_entry",
    ".globl vgpu_dlsym_default_version",
    ".globl vgpu_dlsym_base_version",
    ".type vgpu_dlsym_entry, %function",
    ".type vgpu_dlsym_default_version, %function",
    ".type vgpu_dlsym_base_version, %function",
    ".symver vgpu_dlsym_default_version, dlsym@@GLIBC_2.34",
    ".symver vgpu_dlsym_base_version, dlsym@GLIBC_2.17",
    "vgpu_dlsym_entry:",
    "vgpu_dlsym_default_version:",
    "vgpu_dlsym_base_version:",
    ".cfi_startproc",
    "stp x29, x30, [sp, #-32]!",
    ".cfi_def_cfa_offset 32",
    ".cfi_offset w30, -24",
    ".cfi_offset w29, -32",
    "mov x29, sp",
    "stp x0, x1, [sp, #16]",
    "bl {decide}",
    "cbnz x0, 2f",
    "bl {real}",
    "mov x16, x0",
    "ldp x0, x1, [sp, #16]",
    "ldp x29, x30, [sp], #32",
    ".cfi_remember_state",
    ".cfi_def_cfa_offset 0",
    ".cfi_restore w30",
    ".cfi_restore w29",
    "br x16",
    "2:",
    ".cfi_restore_state",
    "ldp x29, x30, [sp], #32",
    ".cfi_def_cfa_offset 0",
    ".cfi_restore w30",
    ".cfi_restore w29",
    "ret",
    ".cfi_endproc",
    ".size vgpu_dlsym_entry, . - vgpu_dlsym_entry",
    ".size vgpu_dlsym_default_version, . - vgpu_dlsym_default_version",
    ".size vgpu_dlsym_base_version, . - vgpu_dlsym_base_version",
    ".popsection",
    decide = sym decide,
    real = sym real_dlsym_address,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_real_dlsym_and_looks_up_symbols() {
        let libc = open(c"libc.so.6").expect("libc is loaded");
        assert!(libc.symbol(c"getpid").is_some());
        assert!(libc.symbol(c"no_such_symbol_vgpu").is_none());
        assert!(lookup(RTLD_DEFAULT, c"getpid").is_some());
    }

    #[test]
    fn missing_library_is_an_error_not_a_crash() {
        let err = open(c"libvgpu-does-not-exist.so.7").unwrap_err();
        assert!(err.contains("libvgpu-does-not-exist"), "{err}");
    }
}
