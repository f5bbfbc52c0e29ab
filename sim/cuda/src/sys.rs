//! Every raw-pointer access and OS call of the simulated driver, behind safe signatures.
//!
//! The driver API hands us C pointers. The rule here: a pointer the API documents as an in- or
//! out-parameter is checked for NULL and then trusted, as the real driver trusts it; device pointers
//! are only dereferenced after `memory` has proved the whole range lies inside a live allocation.

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::error::CuResult;

/// A checked out-parameter: non-NULL, written at most once, after the call has succeeded so far.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// NULL is the caller's error: `CUDA_ERROR_INVALID_VALUE`, as the real driver answers.
    #[inline]
    pub(crate) fn new(ptr: *mut T) -> CuResult<Out<T>> {
        if ptr.is_null() {
            Err(E::CUDA_ERROR_INVALID_VALUE)
        } else {
            Ok(Out(ptr))
        }
    }

    /// An optional out-parameter: NULL means "not wanted".
    #[inline]
    pub(crate) fn optional(ptr: *mut T) -> Option<Out<T>> {
        if ptr.is_null() {
            None
        } else {
            Some(Out(ptr))
        }
    }

    #[inline]
    pub(crate) fn write(self, value: T) {
        // SAFETY: non-NULL (checked in `new`), and the driver API contract makes it writable for a T.
        // `write_unaligned`: C callers may hand us packed buffers (e.g. ctypes), so don't assume alignment.
        unsafe { self.0.write_unaligned(value) }
    }
}

/// Read a C in-parameter struct. NULL is `CUDA_ERROR_INVALID_VALUE`.
#[inline]
pub(crate) fn read<T: Copy>(ptr: *const T) -> CuResult<T> {
    if ptr.is_null() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, and the API contract says it points to a readable T.
    Ok(unsafe { ptr.read_unaligned() })
}

/// Read `count` C structs from an array in-parameter (empty when `count` is 0, whatever the pointer).
pub(crate) fn read_array<T: Copy>(ptr: *const T, count: usize) -> CuResult<Vec<T>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, and the API contract says it points to `count` readable Ts.
    Ok((0..count)
        .map(|i| unsafe { ptr.add(i).read_unaligned() })
        .collect())
}

/// A NUL-terminated C string in-parameter.
#[inline]
pub(crate) fn cstr<'a>(ptr: *const c_char) -> CuResult<&'a CStr> {
    if ptr.is_null() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, and the API contract says it is a NUL-terminated string that outlives the call.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// Copy `text` into a caller's `char` buffer of `len` bytes, truncating and always NUL-terminating.
pub(crate) fn write_c_string(buf: *mut c_char, len: i32, text: &str) -> CuResult {
    if buf.is_null() || len < 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    if len == 0 {
        return Ok(());
    }
    let n = text.len().min(len as usize - 1);
    // SAFETY: non-NULL and `len` bytes long per the API contract; we write n + 1 <= len bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    Ok(())
}

/// The bytes of a module image that starts with text: up to the first NUL, at most `max` bytes.
/// Also returns whether a NUL was found.
pub(crate) fn image_prefix(image: *const c_void, max: usize) -> (Vec<u8>, bool) {
    let base = image as *const u8;
    let mut out = Vec::new();
    for i in 0..max {
        // SAFETY: module images are NUL-terminated text (ours, PTX) or binaries with headers; we stop at
        // the first NUL, and callers only pass `max` beyond a few bytes once the image starts as text.
        let b = unsafe { *base.add(i) };
        if b == 0 {
            return (out, true);
        }
        out.push(b);
    }
    (out, false)
}

/// Read the `index`-th kernel parameter as a `T` (the `kernelParams` array of cuLaunchKernel).
pub(crate) fn kernel_param<T: Copy>(params: *mut *mut c_void, index: usize) -> Option<T> {
    if params.is_null() {
        return None;
    }
    // SAFETY: `kernelParams` holds one pointer per kernel parameter; the kernel's signature says how
    // many (fill_u32 takes three), so `index` is in range for a correct caller.
    let p = unsafe { *params.add(index) };
    if p.is_null() {
        return None;
    }
    // SAFETY: each entry points to the argument's value.
    Some(unsafe { (p as *const T).read_unaligned() })
}

/// The packed argument buffer of `extra` (`CU_LAUNCH_PARAM_BUFFER_POINTER`, `_SIZE`, `_END`).
pub(crate) fn extra_buffer(extra: *mut *mut c_void) -> Option<Vec<u8>> {
    if extra.is_null() {
        return None;
    }
    let (mut buf, mut size) = (std::ptr::null::<u8>(), None::<usize>);
    for i in (0..64).step_by(2) {
        // SAFETY: `extra` is a list of (key, value) pointers ending with CU_LAUNCH_PARAM_END (0).
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            0 => break,
            1 => buf = unsafe { *extra.add(i + 1) } as *const u8, // SAFETY: as above
            2 => {
                // SAFETY: the value of BUFFER_SIZE points to a size_t.
                let p = unsafe { *extra.add(i + 1) } as *const usize;
                size = (!p.is_null()).then(|| unsafe { p.read_unaligned() });
            }
            _ => return None,
        }
    }
    let size = size?;
    if buf.is_null() {
        return None;
    }
    // SAFETY: BUFFER_POINTER points to BUFFER_SIZE readable bytes.
    Some(unsafe { std::slice::from_raw_parts(buf, size) }.to_vec())
}

// ---- memory the simulated device pointers point into --------------------------------------------

/// Reserve `len` bytes of address space, readable and writable, with no memory committed
/// (`MAP_NORESERVE`): pages cost memory only once touched. `low` asks for an address below 2 GiB
/// (`MAP_32BIT`), for the 32-bit `CUdeviceptr` of the CUDA 2.x/3.0 ABIs.
pub(crate) fn reserve_rw(len: u64, low: bool) -> Option<u64> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if low {
        #[cfg(target_arch = "x86_64")]
        {
            flags |= libc::MAP_32BIT;
        }
        #[cfg(not(target_arch = "x86_64"))]
        return None;
    }
    // SAFETY: an anonymous mapping at an address of the kernel's choosing touches nothing of ours.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as u64)
}

/// Reserve `len` bytes of inaccessible address space aligned to `align` (a power of two), as
/// `cuMemAddressReserve` does; `cuMemMap` later maps physical memory into it.
pub(crate) fn reserve_none(len: u64, align: u64) -> Option<u64> {
    let total = len.checked_add(align)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh PROT_NONE anonymous mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total as usize,
            libc::PROT_NONE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let start = p as u64;
    let aligned = (start + align - 1) & !(align - 1);
    // Trim the slack on both sides so only [aligned, aligned + len) stays reserved.
    if aligned > start {
        // SAFETY: [start, aligned) is part of the mapping we just made and nobody else knows of it.
        unsafe { libc::munmap(start as *mut c_void, (aligned - start) as usize) };
    }
    let end = start + total;
    if end > aligned + len {
        // SAFETY: as above, the tail of our own fresh mapping.
        unsafe {
            libc::munmap(
                (aligned + len) as *mut c_void,
                (end - aligned - len) as usize,
            )
        };
    }
    Some(aligned)
}

/// Give back an address range made by `reserve_none` (whatever is mapped in it goes too).
pub(crate) fn release_range(addr: u64, len: u64) {
    // SAFETY: the caller owns [addr, addr + len) (a reservation it made and now frees).
    unsafe { libc::munmap(addr as *mut c_void, len as usize) };
}

/// Drop the pages behind [addr, addr + len) of a private anonymous mapping: the memory goes back to the
/// OS and the range reads as zeros again. Used when large allocations are freed.
pub(crate) fn discard(addr: u64, len: u64) {
    // SAFETY: the range belongs to our arena mapping and no live allocation uses it any more.
    unsafe { libc::madvise(addr as *mut c_void, len as usize, libc::MADV_DONTNEED) };
}

/// The simulated "physical" device memory behind `cuMemCreate`: one sparse memfd per process, so a
/// physical allocation can be mapped at several addresses and they all see the same bytes.
pub(crate) struct PhysicalFile {
    fd: i32,
}

impl PhysicalFile {
    pub(crate) fn create(len: u64) -> Option<PhysicalFile> {
        // SAFETY: the name is a valid C string; MFD_CLOEXEC keeps it out of exec'd children.
        let fd = unsafe { libc::memfd_create(c"simgpu-physical".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is the memfd we own; growing a memfd allocates nothing until pages are touched.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return None;
        }
        Some(PhysicalFile { fd })
    }

    /// Map [offset, offset + len) of the file at `addr`, replacing what was there (a PROT_NONE
    /// reservation of ours).
    pub(crate) fn map_at(&self, addr: u64, len: u64, offset: u64) -> bool {
        // SAFETY: [addr, addr + len) lies in an address reservation we own (checked by the caller),
        // so MAP_FIXED replaces only our own mapping.
        let p = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd,
                offset as libc::off_t,
            )
        };
        p != libc::MAP_FAILED
    }

    /// Free the memory behind [offset, offset + len) (the physical allocation was released).
    pub(crate) fn punch(&self, offset: u64, len: u64) {
        // SAFETY: our own memfd; punching a hole only drops pages no mapping uses any more.
        unsafe {
            libc::fallocate(
                self.fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
    }
}

/// Turn [addr, addr + len) back into an inaccessible reservation (cuMemUnmap).
pub(crate) fn unmap_to_reserved(addr: u64, len: u64) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    // SAFETY: the range lies in an address reservation we own (checked by the caller).
    let p = unsafe {
        libc::mmap(
            addr as *mut c_void,
            len as usize,
            libc::PROT_NONE,
            flags,
            -1,
            0,
        )
    };
    p != libc::MAP_FAILED
}

/// Page-locked host memory (cuMemAllocHost): plain anonymous memory, page aligned.
pub(crate) fn host_alloc(len: u64) -> Option<u64> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as u64)
}

pub(crate) fn host_free(addr: u64, len: u64) {
    // SAFETY: the caller frees a mapping `host_alloc` made, exactly once.
    unsafe { libc::munmap(addr as *mut c_void, len as usize) };
}

// ---- copies and fills on memory the caller has validated -----------------------------------------

/// `memmove` semantics. Device ranges are validated by `memory`; host ranges are the caller's promise,
/// as with the real driver (a bad host pointer faults there too).
pub(crate) fn copy(dst: u64, src: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: see above; `copy` tolerates overlap.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len as usize) };
}

pub(crate) fn fill_u8(dst: u64, value: u8, count: u64) {
    // SAFETY: [dst, dst + count) validated as device memory by the caller.
    unsafe { std::ptr::write_bytes(dst as *mut u8, value, count as usize) };
}

pub(crate) fn fill_u16(dst: u64, value: u16, count: u64) {
    for i in 0..count {
        // SAFETY: [dst, dst + 2 * count) validated by the caller; alignment checked there too.
        unsafe { (dst as *mut u16).add(i as usize).write_unaligned(value) };
    }
}

pub(crate) fn fill_u32(dst: u64, value: u32, count: u64) {
    if value == 0 || value.to_ne_bytes().iter().all(|b| *b == value as u8) {
        return fill_u8(dst, value as u8, count * 4);
    }
    for i in 0..count {
        // SAFETY: [dst, dst + 4 * count) validated by the caller.
        unsafe { (dst as *mut u32).add(i as usize).write_unaligned(value) };
    }
}

/// Read a host file (cuModuleLoad).
pub(crate) fn read_file(path: &CStr) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read(std::ffi::OsStr::from_bytes(path.to_bytes()))
}

/// Call `handler` in the child after every `fork`.
pub(crate) fn on_fork_child(handler: extern "C" fn()) {
    // SAFETY: registering an atfork child handler that only stores to an atomic.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}
