//! Memory mappings behind safe signatures: a file mapped shared (the region), and an anonymous
//! `MAP_NORESERVE` mapping (the allocation table), plus growing a file without ever shrinking it.
//!
//! A [`Mapping`] hands out `&AtomicU64` / `&AtomicU32` / `&AtomicI32` / `&AtomicU8` views of naturally
//! aligned offsets, bounds-checked against its length. Callers never get a `&mut` or a plain `&[u8]`
//! into memory that another process may write at the same time; everything goes through atomics.
//! The mapping is unmapped when the [`Mapping`] is dropped, so every reference it hands out borrows it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8};

/// One `mmap`ed range, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    anonymous: bool,
}

// SAFETY: the mapping is plain memory that is only ever accessed through atomics (see the accessors);
// moving the owner to another thread or sharing it between threads is as safe as sharing an
// `&[AtomicU8]`.
unsafe impl Send for Mapping {}
// SAFETY: as above, every access is atomic.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` with `MAP_SHARED`, read-write when `writable` (the file must
    /// then be open for writing), read-only otherwise. The file must already be at least `len` bytes
    /// long: touching a page past its end would raise SIGBUS, so this checks and refuses instead.
    pub fn map_file(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        let file_len = file.metadata()?.len();
        if file_len < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file is {file_len} bytes, {len} needed"),
            ));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel picks; it aliases no Rust object. The fd is
        // valid for the duration of the call (borrowed `File`), and the mapping outlives the fd legally.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        Self::from_raw(ptr, len, writable, false)
    }

    /// Reserves `len` bytes of zeroed, private, anonymous memory with `MAP_NORESERVE`: untouched pages
    /// cost neither RAM nor commit charge, so a large table reserved once at init is cheap.
    pub fn anonymous_noreserve(len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: anonymous mapping at a kernel-chosen address; no file, aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        Self::from_raw(ptr, len, true, true)
    }

    fn from_raw(
        ptr: *mut libc::c_void,
        len: usize,
        writable: bool,
        anonymous: bool,
    ) -> io::Result<Mapping> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        match NonNull::new(ptr.cast::<u8>()) {
            Some(base) => Ok(Mapping {
                base,
                len,
                writable,
                anonymous,
            }),
            None => Err(io::Error::other("mmap returned NULL")),
        }
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping of 0 bytes cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether stores are allowed (a read-only mapping would fault on them).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Drops the contents of a private anonymous mapping: its pages read as zero again and stop
    /// costing memory. Other users must not be using it concurrently (their view is reset under them).
    /// Refused on a file mapping (there it would not zero anything).
    pub fn discard(&self) -> io::Result<()> {
        if !self.anonymous {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only anonymous mappings can be discarded",
            ));
        }
        // SAFETY: the range is exactly this mapping. MADV_DONTNEED on private anonymous memory only
        // replaces page contents with zeros; the range stays mapped, so outstanding references stay
        // valid (they just read zero).
        let rc = unsafe { libc::madvise(self.base.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Checks that `[offset, offset + size)` lies inside the mapping and `offset` is `size`-aligned
    /// (the base is page-aligned, so alignment of the offset is alignment of the address).
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than our rust-version (1.85)
    fn checked(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len || offset % size != 0 {
            return None;
        }
        // SAFETY: offset + size <= len, so the result stays inside the mapped range.
        Some(unsafe { self.base.as_ptr().add(offset) })
    }

    /// The 8-byte word at `offset`, or `None` if out of bounds or misaligned.
    ///
    /// On a read-only mapping only loads are allowed: a store would fault. Callers holding a read-only
    /// mapping ([`Mapping::is_writable`] false) must only load.
    pub fn u64_at(&self, offset: usize) -> Option<&AtomicU64> {
        let p = self.checked(offset, 8)?;
        // SAFETY: p is in bounds, 8-aligned, and mapped for as long as `self` lives (the returned
        // reference borrows `self`). Any bit pattern is a valid AtomicU64, and all accesses to this
        // memory from Rust go through atomics, so there is no data race in Rust's model.
        Some(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// The 4-byte word at `offset` as unsigned.
    pub fn u32_at(&self, offset: usize) -> Option<&AtomicU32> {
        let p = self.checked(offset, 4)?;
        // SAFETY: as in `u64_at`, for a 4-aligned in-bounds word.
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// The 4-byte word at `offset` as signed.
    pub fn i32_at(&self, offset: usize) -> Option<&AtomicI32> {
        let p = self.checked(offset, 4)?;
        // SAFETY: as in `u64_at`, for a 4-aligned in-bounds word.
        Some(unsafe { AtomicI32::from_ptr(p.cast::<i32>()) })
    }

    /// The byte at `offset`.
    pub fn u8_at(&self, offset: usize) -> Option<&AtomicU8> {
        let p = self.checked(offset, 1)?;
        // SAFETY: as in `u64_at`, for an in-bounds byte.
        Some(unsafe { AtomicU8::from_ptr(p) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe exactly the range this object mapped, and every reference handed
        // out borrows `self`, so none outlives the unmap. A failure leaves the range mapped (a leak,
        // not unsoundness), so the result is ignored.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Grows `file` to at least `len` bytes, never shrinking it. Tries `posix_fallocate` first so the
/// blocks exist (a store into a hole on a full disk would SIGBUS the host through the mapping), and
/// falls back to `ftruncate` growth where the file system cannot preallocate.
pub fn grow_file(file: &File, len: u64) -> io::Result<()> {
    let current = file.metadata()?.len();
    if current >= len {
        return Ok(());
    }
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "length does not fit off_t",
        ));
    };
    // SAFETY: plain syscall on a valid fd; posix_fallocate only ever extends the file.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    // EOPNOTSUPP/EINVAL (file system without fallocate): grow with ftruncate. Re-check the size
    // first so a concurrent grower is never undone.
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::Ordering;

    #[test]
    fn anonymous_mapping_is_zeroed_and_bounds_checked() {
        let m = Mapping::anonymous_noreserve(1 << 20).unwrap();
        assert_eq!(m.len(), 1 << 20);
        assert_eq!(m.u64_at(0).unwrap().load(Ordering::Relaxed), 0);
        m.u64_at(8).unwrap().store(7, Ordering::Relaxed);
        assert_eq!(m.u32_at(8).unwrap().load(Ordering::Relaxed), 7);
        assert!(m.u64_at((1 << 20) - 8).is_some());
        assert!(
            m.u64_at((1 << 20) - 4).is_none(),
            "misaligned and past the end"
        );
        assert!(m.u64_at(4).is_none(), "misaligned");
        assert!(m.u32_at(1 << 20).is_none());
        assert!(m.u8_at((1 << 20) - 1).is_some());
        assert!(m.u8_at(1 << 20).is_none());
        assert!(
            m.u64_at(usize::MAX - 3).is_none(),
            "overflowing offsets are rejected"
        );
    }

    #[test]
    fn file_mapping_is_shared_and_refuses_short_files() {
        let dir = std::env::temp_dir().join(format!("vgpu-mmap-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("m.bin");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        assert!(
            Mapping::map_file(&f, 4096, true).is_err(),
            "file shorter than the mapping"
        );
        grow_file(&f, 8192).unwrap();
        grow_file(&f, 10).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192, "grow never shrinks");
        let m = Mapping::map_file(&f, 8192, true).unwrap();
        m.u32_at(16).unwrap().store(0xdead_beef, Ordering::SeqCst);
        drop(m);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[16..20], &0xdead_beef_u32.to_le_bytes());
        let ro = Mapping::map_file(&f, 8192, false).unwrap();
        assert!(!ro.is_writable());
        assert_eq!(ro.u32_at(16).unwrap().load(Ordering::SeqCst), 0xdead_beef);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
