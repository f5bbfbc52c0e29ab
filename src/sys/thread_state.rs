//! The per-thread words every hook reads: the re-entrancy flag and the current-device cache.
//!
//! Why not `thread_local!`: in a shared library Rust's thread-locals use the general-dynamic TLS
//! model, so every access is a call to `__tls_get_addr` (about a dozen instructions, plus the call),
//! and a hook touches its flag at least twice. On x86-64 the block below is an initial-exec TLS
//! variable instead: its offset from the thread pointer sits in the GOT, fixed at load time, so its
//! address is two instructions and no call. Initial-exec TLS lives in the static TLS block that
//! glibc sizes at start-up; that is where a preloaded library belongs anyway, and glibc keeps a
//! surplus of it for a late `dlopen` of a small block like this one (libvgpu's whole TLS segment is
//! under 300 bytes). Other architectures use a const-initialised `thread_local!`.
//!
//! Every field is a `Cell` (or a struct of them) whose all-zero value is the initial state, because the TLS image is
//! zero-filled `.tbss`: no constructor runs and nothing is dropped, so the block works before Rust's
//! runtime is up and while a thread exits (style.md rule 7).

use std::cell::Cell;

/// This thread's hot state. All-zero is the initial value of every field.
#[repr(C)]
pub struct ThreadState {
    /// Set while this thread runs one of our hook bodies (`hooks::shim::Entered`).
    pub in_hook: Cell<bool>,
    /// Region index + 1 of `device_context`'s device, `u8::MAX` when it is not one of the
    /// container's devices, 0 when nothing is cached (`devices::Devices::current`).
    pub device_index_plus_one: Cell<u8>,
    /// The context generation the cached answer was made in (`devices::contexts_changed`).
    pub device_generation: Cell<u32>,
    /// The context of the cached answer (0: none).
    pub device_context: Cell<usize>,
    /// This thread's launch credit and memo (`limiter::Launcher`; all-zero is its empty state).
    pub launcher: crate::limiter::Launcher,
}

/// Runs `f` with this thread's state. The reference cannot leave the closure (or the thread).
#[inline(always)]
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    f(imp::current())
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::ThreadState;

    const SIZE: usize = std::mem::size_of::<ThreadState>();
    const _: () = assert!(std::mem::align_of::<ThreadState>() <= 8);

    // The zero-filled TLS image. Hidden: no other object can name it, and the GOT entry that holds
    // its thread-pointer offset is resolved once, at load time.
    core::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 3",
        ".globl vgpu_thread_state",
        ".hidden vgpu_thread_state",
        ".type vgpu_thread_state, @object",
        ".size vgpu_thread_state, {size}",
        "vgpu_thread_state:",
        ".zero {size}",
        ".popsection",
        size = const SIZE,
    );

    /// This thread's block: the thread pointer (`%fs:0` holds it, x86-64 TLS ABI) plus the block's
    /// offset from the GOT (the initial-exec sequence of the ELF TLS ABI).
    #[inline(always)]
    pub fn current() -> &'static ThreadState {
        let address: usize;
        // SAFETY: reads the thread pointer and a GOT word the loader filled; touches no memory of
        // ours, keeps the stack, and leaves the flags clobbered as declared.
        unsafe {
            core::arch::asm!(
                "mov {address}, qword ptr fs:[0]",
                "add {address}, qword ptr [rip + vgpu_thread_state@GOTTPOFF]",
                address = out(reg) address,
                options(pure, nomem, nostack),
            );
        }
        // SAFETY: the address of this thread's zero-initialised, 8-aligned `ThreadState`, valid for
        // as long as the thread runs. `ThreadState` is `!Sync` (it holds `Cell`s), so the reference
        // is `!Send` and cannot reach another thread; `with` keeps it inside a closure besides.
        unsafe { &*(address as *const ThreadState) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use std::cell::Cell;

    use super::ThreadState;

    thread_local! {
        static STATE: ThreadState = const {
            ThreadState {
                in_hook: Cell::new(false),
                device_index_plus_one: Cell::new(0),
                device_generation: Cell::new(0),
                device_context: Cell::new(0),
                launcher: crate::limiter::Launcher::new(),
            }
        };
    }

    #[inline(always)]
    pub fn current() -> &'static ThreadState {
        // SAFETY: the const-initialised, destructor-free thread-local lives as long as the thread;
        // the reference is `!Send` (see the x86-64 version) and only used inside `with`.
        STATE.with(|state| unsafe { &*(state as *const ThreadState) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_zeroed_and_is_per_thread() {
        with(|s| {
            assert!(!s.in_hook.get());
            assert_eq!(s.device_context.get(), 0);
            s.in_hook.set(true);
            s.device_context.set(0x1234);
        });
        let other = std::thread::spawn(|| {
            with(|s| {
                (
                    s.in_hook.get(),
                    s.device_context.get(),
                    s.device_index_plus_one.get(),
                )
            })
        })
        .join()
        .unwrap();
        assert_eq!(other, (false, 0, 0));
        with(|s| {
            assert!(s.in_hook.get());
            assert_eq!(s.device_context.get(), 0x1234);
            s.in_hook.set(false);
            s.device_context.set(0);
        });
    }
}
