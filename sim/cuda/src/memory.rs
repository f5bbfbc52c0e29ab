//! Device memory: allocations, pools, arrays, pinned host memory, copies and sets.
//!
//! A device pointer is a real address in this process: one large `MAP_NORESERVE` reservation (the
//! arena) is carved up by a range allocator, so copies are `memcpy`, `fill_u32` really writes, and
//! 40 GiB of "device memory" costs only address space until touched. Every byte handed out is charged
//! to the machine first (`Driver::charge_allocation`), which refuses past the device's capacity,
//! machine-wide, across processes.
//!
//! What is charged: `cuMemAlloc*` and `cuMemAllocManaged` the requested bytes; `cuMemAllocPitch`
//! pitch x height; pools their reserved blocks (2 MiB granules, kept while freed until trimmed or
//! released at a synchronisation above the release threshold); arrays their texel bytes rounded up to
//! 512; `cuMemCreate` its size. Pinned host memory is host memory and is not charged.

use std::collections::BTreeMap;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::handles::Handle;
use crate::ranges::{align_up, RangeAllocator};
use crate::{graph, stream, sys};

/// Allocations at least this big are 2 MiB aligned and their pages are dropped when freed.
const LARGE: u64 = 2 << 20;
/// Alignment of small allocations (`cudaMalloc` promises 256).
const SMALL_ALIGN: u64 = 512;
/// Pools reserve in granules of this size.
pub(crate) const POOL_GRANULE: u64 = 2 << 20;
/// Address space of the low arena for the 32-bit `CUdeviceptr` ABIs (below 2 GiB).
const LOW_ARENA_BYTES: u64 = 512 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocKind {
    Device,
    Managed,
    /// Owned by a pool: freeing returns the block to the pool, which keeps the charge.
    Pool(Handle),
    /// A module's `global` variable: freed when the module is unloaded.
    Global,
}

pub(crate) struct Allocation {
    /// What the program asked for (what `cuMemGetAddressRange` reports).
    pub size: u64,
    /// The arena block behind it.
    pub block: u64,
    pub device: u32,
    pub ctx: Handle,
    /// Bytes charged to the machine for this allocation (0 for pool blocks: the pool holds them).
    pub charged: u64,
    pub kind: AllocKind,
}

pub(crate) struct HostRange {
    pub size: u64,
    pub flags: u32,
    /// `cuMemHostRegister`ed program memory (else we allocated it).
    pub registered: bool,
    pub ctx: Handle,
}

pub(crate) struct Pool {
    pub device: u32,
    pub default: bool,
    pub reserved: u64,
    pub reserved_high: u64,
    pub used: u64,
    pub used_high: u64,
    pub release_threshold: u64,
    pub reuse: [i32; 3],
    /// Freed blocks the pool still holds (and that stay charged): (address, block bytes).
    pub free_blocks: Vec<(u64, u64)>,
}

impl Pool {
    pub(crate) fn new(device: u32, default: bool) -> Pool {
        Pool {
            device,
            default,
            reserved: 0,
            reserved_high: 0,
            used: 0,
            used_high: 0,
            release_threshold: 0,
            reuse: [1, 1, 1],
            free_blocks: Vec::new(),
        }
    }
}

pub(crate) struct ArrayObject {
    pub ctx: Handle,
    pub device: u32,
    pub charged: u64,
}

/// A `cuMemCreate` allocation.
pub(crate) struct Physical {
    pub device: u32,
    pub size: u64,
    /// Where its bytes live in the physical memory file.
    pub offset: u64,
    /// `cuMemCreate` and `cuMemRetainAllocationHandle` references not yet released.
    pub refs: u32,
    /// Live mappings of it.
    pub maps: u32,
    pub prop: AllocationProp,
}

/// A `CUmemAllocationProp` as kept: the Windows-only metadata pointer is dropped (never valid here),
/// which also keeps the driver state free of raw pointers.
#[derive(Clone, Copy)]
pub(crate) struct AllocationProp {
    pub type_: vgpu_abi::cuda::CUmemAllocationType,
    pub handle_types: vgpu_abi::cuda::CUmemAllocationHandleType,
    pub location: vgpu_abi::cuda::CUmemLocation,
    pub flags: vgpu_abi::cuda::CUmemAllocationProp_st__bindgen_ty_1,
}

impl AllocationProp {
    pub(crate) fn from_c(p: &vgpu_abi::cuda::CUmemAllocationProp) -> AllocationProp {
        AllocationProp {
            type_: p.type_,
            handle_types: p.requestedHandleTypes,
            location: p.location,
            flags: p.allocFlags,
        }
    }

    pub(crate) fn to_c(self) -> vgpu_abi::cuda::CUmemAllocationProp {
        vgpu_abi::cuda::CUmemAllocationProp {
            type_: self.type_,
            requestedHandleTypes: self.handle_types,
            location: self.location,
            win32HandleMetaData: std::ptr::null_mut(),
            allocFlags: self.flags,
        }
    }
}

pub(crate) struct Mapping {
    pub size: u64,
    pub handle: Handle,
}

pub(crate) struct Memory {
    arena_bytes: u64,
    arena: Option<RangeAllocator>,
    low: Option<RangeAllocator>,
    pub allocations: BTreeMap<u64, Allocation>,
    pub host: BTreeMap<u64, HostRange>,
    pub reservations: BTreeMap<u64, u64>,
    pub mappings: BTreeMap<u64, Mapping>,
    pub physical_file: Option<sys::PhysicalFile>,
    pub physical_ranges: RangeAllocator,
}

/// Size of the sparse file behind `cuMemCreate` (address space of a file; costs nothing untouched).
pub(crate) const PHYSICAL_FILE_BYTES: u64 = 1 << 42;

impl Memory {
    pub(crate) fn new(total_device_bytes: u64) -> Memory {
        // Room for every device's memory twice over (pools hold freed blocks, alignment wastes some).
        let arena_bytes = align_up(
            total_device_bytes
                .saturating_mul(2)
                .saturating_add(16 << 30),
            LARGE,
        );
        Memory {
            arena_bytes,
            arena: None,
            low: None,
            allocations: BTreeMap::new(),
            host: BTreeMap::new(),
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            physical_file: None,
            physical_ranges: RangeAllocator::new(0, PHYSICAL_FILE_BYTES),
        }
    }

    /// The arena, reserved on first use (halving the size until the OS agrees).
    fn arena(&mut self, low: bool) -> Option<&mut RangeAllocator> {
        let slot = if low { &mut self.low } else { &mut self.arena };
        if slot.is_none() {
            let mut len = if low {
                LOW_ARENA_BYTES
            } else {
                self.arena_bytes
            };
            while len >= (64 << 20) {
                if let Some(base) = sys::reserve_rw(len, low) {
                    *slot = Some(RangeAllocator::new(base, len));
                    break;
                }
                len /= 2;
            }
        }
        slot.as_mut()
    }

    /// An arena block for `bytes`: (address, block bytes).
    fn carve(&mut self, bytes: u64, low: bool) -> Option<(u64, u64)> {
        let (block, align) = if bytes >= LARGE {
            (align_up(bytes, LARGE), LARGE)
        } else {
            (align_up(bytes.max(1), SMALL_ALIGN), SMALL_ALIGN)
        };
        let addr = self.arena(low)?.alloc(block, align)?;
        Some((addr, block))
    }

    fn uncarve(&mut self, addr: u64, block: u64) {
        if block >= LARGE {
            sys::discard(addr, block);
        }
        for arena in [self.arena.as_mut(), self.low.as_mut()]
            .into_iter()
            .flatten()
        {
            if arena.contains(addr) {
                arena.free(addr, block);
                return;
            }
        }
    }

    /// The allocation containing `ptr`: (base, allocation).
    pub(crate) fn allocation_at(&self, ptr: u64) -> Option<(u64, &Allocation)> {
        let (&base, a) = self.allocations.range(..=ptr).next_back()?;
        (ptr < base + a.size.max(1)).then_some((base, a))
    }

    fn host_at(&self, ptr: u64) -> Option<(u64, &HostRange)> {
        let (&base, h) = self.host.range(..=ptr).next_back()?;
        (ptr < base + h.size).then_some((base, h))
    }

    /// Whether [ptr, ptr + len) is memory a kernel or copy may touch as device memory: one
    /// allocation, pinned host memory (unified addressing), or mapped `cuMemMap` ranges.
    pub(crate) fn device_range_ok(&self, ptr: u64, len: u64) -> bool {
        let Some(end) = ptr.checked_add(len) else {
            return false;
        };
        if let Some((base, a)) = self.allocation_at(ptr) {
            return end <= base + a.size;
        }
        if let Some((base, h)) = self.host_at(ptr) {
            return end <= base + h.size;
        }
        self.mapped_range_ok(ptr, end)
    }

    /// Whether [ptr, end) is covered by consecutive `cuMemMap` mappings.
    pub(crate) fn mapped_range_ok(&self, ptr: u64, end: u64) -> bool {
        let mut at = ptr;
        let Some((&base, m)) = self.mappings.range(..=ptr).next_back() else {
            return false;
        };
        if ptr >= base + m.size {
            return false;
        }
        at = at.max(base + m.size);
        while at < end {
            match self.mappings.get(&at) {
                Some(next) => at += next.size,
                None => return false,
            }
        }
        true
    }

    /// Whether `ptr` is any kind of memory the driver knows (for unified-address copies).
    fn known(&self, ptr: u64) -> bool {
        self.allocation_at(ptr).is_some()
            || self.host_at(ptr).is_some()
            || self.mapped_range_ok(ptr, ptr + 1)
    }
}

// ---- plain allocations ----------------------------------------------------------------------------

/// Allocate `bytes` in the current context (`cuMemAlloc*`, `cuMemAllocManaged`). `low` places it
/// below 4 GiB for the 32-bit ABI.
pub(crate) fn alloc(bytes: u64, kind: AllocKind, low: bool) -> CuResult<u64> {
    let drv = driver()?;
    let mut state = drv.lock();
    let (ctx, c) = state.current()?;
    let device = c.device;
    if bytes == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    alloc_in(drv, &mut state, ctx, device, bytes, kind, low)
}

/// Allocate and charge in `ctx` on `device`. Module globals are driver-internal: they are charged
/// to the machine but not counted by `SIMGPU_FAIL_ALLOC_AT`.
pub(crate) fn alloc_in(
    drv: &Driver,
    state: &mut State,
    ctx: Handle,
    device: u32,
    bytes: u64,
    kind: AllocKind,
    low: bool,
) -> CuResult<u64> {
    if kind == AllocKind::Global {
        drv.charge_internal(device, bytes)?;
    } else {
        drv.charge_allocation(device, bytes)?;
    }
    let Some((addr, block)) = state.mem.carve(bytes, low) else {
        drv.uncharge(device, bytes);
        return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
    };
    state.mem.allocations.insert(
        addr,
        Allocation {
            size: bytes,
            block,
            device,
            ctx,
            charged: bytes,
            kind,
        },
    );
    Ok(addr)
}

/// `cuMemAllocPitch`: rows padded to 512 bytes. Returns (pointer, pitch).
pub(crate) fn alloc_pitch(
    width: u64,
    height: u64,
    element_bytes: u32,
    low: bool,
) -> CuResult<(u64, u64)> {
    if !matches!(element_bytes, 4 | 8 | 16) || width == 0 || height == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let pitch = align_up(width, 512);
    let bytes = pitch
        .checked_mul(height)
        .ok_or(E::CUDA_ERROR_OUT_OF_MEMORY)?;
    Ok((alloc(bytes, AllocKind::Device, low)?, pitch))
}

/// `cuMemFree`: NULL is a no-op, as in the driver; a pointer that is not an allocation's base is
/// `CUDA_ERROR_INVALID_VALUE`.
pub(crate) fn free(ptr: u64) -> CuResult {
    let drv = driver()?;
    if ptr == 0 {
        return Ok(());
    }
    let mut state = drv.lock();
    match state.mem.allocations.get(&ptr).map(|a| a.kind) {
        None | Some(AllocKind::Global) => Err(E::CUDA_ERROR_INVALID_VALUE),
        Some(_) => {
            release(drv, &mut state, ptr);
            Ok(())
        }
    }
}

/// Give an arena block back (the caller has removed its allocation record).
pub(crate) fn uncarve_block(state: &mut State, addr: u64, block: u64) {
    state.mem.uncarve(addr, block);
}

/// Free one allocation (a pool's block goes back to its pool).
fn release(drv: &Driver, state: &mut State, ptr: u64) {
    let Some(a) = state.mem.allocations.remove(&ptr) else {
        return;
    };
    if let AllocKind::Pool(pool) = a.kind {
        if let Some(p) = state.pools.get_mut(pool) {
            p.used = p.used.saturating_sub(a.size);
            p.free_blocks.push((ptr, a.block));
            return;
        }
    }
    state.mem.uncarve(ptr, a.block);
    drv.uncharge(a.device, a.charged);
}

/// Everything of a context that dies with it: allocations, pinned host memory, arrays.
pub(crate) fn free_context_memory(drv: &Driver, state: &mut State, ctx: Handle) {
    let doomed: Vec<u64> = state
        .mem
        .allocations
        .iter()
        .filter(|(_, a)| a.ctx == ctx)
        .map(|(p, _)| *p)
        .collect();
    for ptr in doomed {
        release(drv, state, ptr);
    }
    let hosts: Vec<u64> = state
        .mem
        .host
        .iter()
        .filter(|(_, h)| h.ctx == ctx)
        .map(|(p, _)| *p)
        .collect();
    for ptr in hosts {
        if let Some(h) = state.mem.host.remove(&ptr) {
            if !h.registered {
                sys::host_free(ptr, h.size);
            }
        }
    }
    for table in [&mut state.arrays, &mut state.mipmaps] {
        for h in table.handles_where(|a| a.ctx == ctx) {
            if let Some(a) = table.remove(h) {
                drv.uncharge(a.device, a.charged);
            }
        }
    }
}

/// `cuMemGetInfo`: the current device, machine-wide.
pub(crate) fn info() -> CuResult<(u64, u64)> {
    let drv = driver()?;
    let device = drv.lock().current_device()?;
    Ok(drv.mem_info(device))
}

/// `cuMemGetAddressRange`: the allocation (or mapping) containing `ptr`.
pub(crate) fn address_range(ptr: u64) -> CuResult<(u64, u64)> {
    let state = driver()?.lock();
    state.current()?;
    if let Some((base, a)) = state.mem.allocation_at(ptr) {
        return Ok((base, a.size));
    }
    if let Some((&base, m)) = state.mem.mappings.range(..=ptr).next_back() {
        if ptr < base + m.size {
            return Ok((base, m.size));
        }
    }
    Err(E::CUDA_ERROR_NOT_FOUND)
}

// ---- pinned host memory ---------------------------------------------------------------------------

const HOST_ALLOC_FLAGS: u32 = 0x7; // PORTABLE | DEVICEMAP | WRITECOMBINED
const HOST_REGISTER_FLAGS: u32 = 0xf; // PORTABLE | DEVICEMAP | IOMEMORY | READ_ONLY

pub(crate) fn host_alloc(bytes: u64, flags: u32) -> CuResult<u64> {
    if flags & !HOST_ALLOC_FLAGS != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    if bytes == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let ptr = sys::host_alloc(bytes).ok_or(E::CUDA_ERROR_OUT_OF_MEMORY)?;
    state.mem.host.insert(
        ptr,
        HostRange {
            size: bytes,
            flags,
            registered: false,
            ctx,
        },
    );
    Ok(ptr)
}

/// `cuMemFreeHost`: NULL is a no-op (the driver behaves like `free`).
pub(crate) fn host_free(ptr: u64) -> CuResult {
    let mut state = driver()?.lock();
    if ptr == 0 {
        return Ok(());
    }
    match state.mem.host.get(&ptr) {
        Some(h) if !h.registered => {
            let size = h.size;
            state.mem.host.remove(&ptr);
            sys::host_free(ptr, size);
            Ok(())
        }
        _ => Err(E::CUDA_ERROR_INVALID_VALUE),
    }
}

pub(crate) fn host_register(ptr: u64, bytes: u64, flags: u32) -> CuResult {
    if flags & !HOST_REGISTER_FLAGS != 0 || ptr == 0 || bytes == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    let end = ptr.checked_add(bytes).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let overlaps = state
        .mem
        .host
        .range(..end)
        .next_back()
        .is_some_and(|(&b, h)| b + h.size > ptr);
    if overlaps {
        return Err(E::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    }
    state.mem.host.insert(
        ptr,
        HostRange {
            size: bytes,
            flags,
            registered: true,
            ctx,
        },
    );
    Ok(())
}

pub(crate) fn host_unregister(ptr: u64) -> CuResult {
    let mut state = driver()?.lock();
    if ptr == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    match state.mem.host.get(&ptr) {
        Some(h) if h.registered => {
            state.mem.host.remove(&ptr);
            Ok(())
        }
        _ => Err(E::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
    }
}

pub(crate) fn host_flags(ptr: u64) -> CuResult<u32> {
    let state = driver()?.lock();
    state
        .mem
        .host_at(ptr)
        .map(|(_, h)| h.flags)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}

/// `cuMemHostGetDevicePointer`: with unified addressing the device sees pinned memory at its host address.
pub(crate) fn host_device_pointer(ptr: u64, flags: u32) -> CuResult<u64> {
    if flags != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let state = driver()?.lock();
    state.current()?;
    state
        .mem
        .host_at(ptr)
        .map(|_| ptr)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}

// ---- copies and sets ------------------------------------------------------------------------------

/// Which side of a copy is device memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Direction {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
    /// `cuMemcpy`: the driver tells from the addresses (unified addressing).
    Unified,
}

/// How a copy or set is ordered: the stream (NULL = default), whether the `_ptds`/`_ptsz` default
/// applies, and whether the call returns only when done (the synchronous entry points).
#[derive(Clone, Copy)]
pub(crate) struct Order {
    pub stream: Handle,
    pub per_thread: bool,
    pub synchronous: bool,
}

impl Order {
    pub(crate) fn sync(per_thread: bool) -> Order {
        Order {
            stream: 0,
            per_thread,
            synchronous: true,
        }
    }
    pub(crate) fn stream(stream: Handle, per_thread: bool) -> Order {
        Order {
            stream,
            per_thread,
            synchronous: false,
        }
    }
}

/// Resolve the stream, validate, and say when the data may be touched: `Ok(None)` when the operation
/// was recorded into a capturing stream instead.
fn prepare(state: &mut State, order: Order, op: graph::Op) -> CuResult<Option<u64>> {
    let s = stream::resolve(state, order.stream, order.per_thread)?;
    if order.synchronous {
        graph::refuse_while_capturing(state, s)?;
    } else if graph::record_if_capturing(state, s, op)? {
        return Ok(None);
    }
    Ok(Some(if order.synchronous {
        stream::ready_at(state, s)
    } else {
        0
    }))
}

pub(crate) fn copy(dst: u64, src: u64, len: u64, direction: Direction, order: Order) -> CuResult {
    let drv = driver()?;
    let wait_until = {
        let mut state = drv.lock();
        state.current()?;
        let mem = &state.mem;
        let ok = match direction {
            Direction::HostToDevice => mem.device_range_ok(dst, len),
            Direction::DeviceToHost => mem.device_range_ok(src, len),
            Direction::DeviceToDevice => {
                mem.device_range_ok(dst, len) && mem.device_range_ok(src, len)
            }
            Direction::Unified => {
                (!mem.known(dst) || mem.device_range_ok(dst, len))
                    && (!mem.known(src) || mem.device_range_ok(src, len))
            }
        };
        if len > 0 && (!ok || dst == 0 || src == 0) {
            return Err(E::CUDA_ERROR_INVALID_VALUE);
        }
        match prepare(&mut state, order, graph::Op::Memcpy { dst, src, len })? {
            Some(t) => t,
            None => return Ok(()),
        }
    };
    // Synchronous copies wait for the work queued before them; the bytes move now either way (a
    // kernel's effects are already in memory: fill_u32 writes when launched).
    if order.synchronous {
        drv.wait_until(wait_until);
    }
    sys::copy(dst, src, len);
    Ok(())
}

/// `cuMemsetD8/D16/D32`: `count` elements of `element_bytes` bytes.
pub(crate) fn set(dst: u64, value: u32, element_bytes: u64, count: u64, order: Order) -> CuResult {
    let drv = driver()?;
    if dst % element_bytes != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let wait_until = {
        let mut state = drv.lock();
        state.current()?;
        let len = count
            .checked_mul(element_bytes)
            .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
        if count > 0 && !state.mem.device_range_ok(dst, len) {
            return Err(E::CUDA_ERROR_INVALID_VALUE);
        }
        match prepare(
            &mut state,
            order,
            graph::Op::Memset {
                dst,
                value,
                element_bytes,
                count,
            },
        )? {
            Some(t) => t,
            None => return Ok(()),
        }
    };
    if order.synchronous {
        drv.wait_until(wait_until);
    }
    write_pattern(dst, value, element_bytes, count);
    Ok(())
}

/// Store `count` copies of a 1-, 2- or 4-byte pattern (the range is validated).
pub(crate) fn write_pattern(dst: u64, value: u32, element_bytes: u64, count: u64) {
    match element_bytes {
        1 => sys::fill_u8(dst, value as u8, count),
        2 => sys::fill_u16(dst, value as u16, count),
        _ => sys::fill_u32(dst, value, count),
    }
}

// ---- stream-ordered allocation and pools ------------------------------------------------------------

/// `cuMemAllocAsync` (pool `None`: the device's current pool) and `cuMemAllocFromPoolAsync`.
pub(crate) fn alloc_async(
    bytes: u64,
    pool: Option<Handle>,
    stream: Handle,
    per_thread: bool,
) -> CuResult<u64> {
    let drv = driver()?;
    let mut state = drv.lock();
    let s = stream::resolve(&mut state, stream, per_thread)?;
    let device = stream::device_of(&state, s)?;
    let ctx = state.streams.get(s).map_or(0, |st| st.ctx);
    let pool = match pool {
        Some(p) => p,
        None => state.current_pools[device as usize],
    };
    if bytes == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let p = state.pools.get(pool).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let pool_device = p.device;
    let want = align_up(bytes, POOL_GRANULE);
    // Reuse the smallest freed block that fits; else grow the pool (a real device allocation).
    let reuse = p
        .free_blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.1 >= want)
        .min_by_key(|(_, b)| b.1)
        .map(|(i, _)| i);
    let (addr, block) = match reuse {
        Some(i) => state
            .pools
            .get_mut(pool)
            .map(|p| p.free_blocks.swap_remove(i))
            .ok_or(E::CUDA_ERROR_INVALID_VALUE)?,
        None => {
            drv.charge_allocation(pool_device, want)?;
            let Some(carved) = state.mem.carve(want, false) else {
                drv.uncharge(pool_device, want);
                return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
            };
            if let Some(p) = state.pools.get_mut(pool) {
                p.reserved += carved.1;
                p.reserved_high = p.reserved_high.max(p.reserved);
            }
            carved
        }
    };
    if let Some(p) = state.pools.get_mut(pool) {
        p.used += bytes;
        p.used_high = p.used_high.max(p.used);
    }
    state.mem.allocations.insert(
        addr,
        Allocation {
            size: bytes,
            block,
            device: pool_device,
            ctx,
            charged: 0,
            kind: AllocKind::Pool(pool),
        },
    );
    let _ = device;
    Ok(addr)
}

/// `cuMemFreeAsync`: a pool block goes back to its pool (still reserved); other memory is freed.
pub(crate) fn free_async(ptr: u64, stream: Handle, per_thread: bool) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    stream::resolve(&mut state, stream, per_thread)?;
    match state.mem.allocations.get(&ptr).map(|a| a.kind) {
        None | Some(AllocKind::Global) => Err(E::CUDA_ERROR_INVALID_VALUE),
        Some(_) => {
            release(drv, &mut state, ptr);
            Ok(())
        }
    }
}

/// Give back freed pool blocks until the pool holds at most `keep` bytes.
fn trim_pool(drv: &Driver, state: &mut State, pool: Handle, keep: u64) {
    loop {
        let Some(p) = state.pools.get_mut(pool) else {
            return;
        };
        if p.reserved <= keep {
            return;
        }
        let Some((addr, block)) = p.free_blocks.pop() else {
            return;
        };
        p.reserved -= block;
        let device = p.device;
        state.mem.uncarve(addr, block);
        drv.uncharge(device, block);
    }
}

/// At a synchronisation, pools above their release threshold give freed memory back.
pub(crate) fn trim_pools_after_sync(drv: &Driver, state: &mut State, device: Option<u32>) {
    let pools = state.pools.handles_where(|p| {
        device.is_none_or(|d| d == p.device) && p.reserved > p.release_threshold
    });
    for pool in pools {
        let keep = state.pools.get(pool).map_or(0, |p| p.release_threshold);
        trim_pool(drv, state, pool, keep);
    }
}

pub(crate) fn pool_trim_to(pool: Handle, keep: u64) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    if !state.pools.contains(pool) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    trim_pool(drv, &mut state, pool, keep);
    Ok(())
}

pub(crate) fn pool_create(props: vgpu_abi::cuda::CUmemPoolProps) -> CuResult<Handle> {
    let drv = driver()?;
    // Pinned device memory only: CU_MEM_ALLOCATION_TYPE_PINNED (1) at CU_MEM_LOCATION_TYPE_DEVICE (1).
    if props.allocType.0 != 1 || props.location.type_.0 != 1 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    drv.device(props.location.id)
        .map_err(|_| E::CUDA_ERROR_INVALID_VALUE)?;
    let ordinal = props.location.id as u32;
    Ok(drv.lock().pools.insert(Pool::new(ordinal, false)))
}

pub(crate) fn pool_destroy(pool: Handle) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    match state.pools.get(pool) {
        Some(p) if !p.default => {}
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    }
    trim_pool(drv, &mut state, pool, 0);
    let Some(p) = state.pools.remove(pool) else {
        return Ok(());
    };
    // Blocks still in use become plain allocations that carry their own charge.
    for a in state.mem.allocations.values_mut() {
        if a.kind == AllocKind::Pool(pool) {
            a.kind = AllocKind::Device;
            a.charged = a.block;
        }
    }
    let d = p.device as usize;
    if state.current_pools[d] == pool {
        state.current_pools[d] = state.default_pools[d];
    }
    Ok(())
}

pub(crate) fn default_pool(dev: i32) -> CuResult<Handle> {
    let drv = driver()?;
    drv.device(dev)?;
    Ok(drv.lock().default_pools[dev as usize])
}

pub(crate) fn current_pool(dev: i32) -> CuResult<Handle> {
    let drv = driver()?;
    drv.device(dev)?;
    Ok(drv.lock().current_pools[dev as usize])
}

pub(crate) fn set_current_pool(dev: i32, pool: Handle) -> CuResult {
    let drv = driver()?;
    drv.device(dev)?;
    let mut state = drv.lock();
    match state.pools.get(pool) {
        Some(p) if p.device == dev as u32 => {}
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    }
    state.current_pools[dev as usize] = pool;
    Ok(())
}

/// A pool attribute's value: `cuuint64_t` for the byte counts, `int` for the reuse flags.
pub(crate) enum PoolValue {
    Int(i32),
    U64(u64),
}

pub(crate) fn pool_attribute(pool: Handle, attr: u32) -> CuResult<PoolValue> {
    let state = driver()?.lock();
    let p = state.pools.get(pool).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    Ok(match attr {
        1..=3 => PoolValue::Int(p.reuse[attr as usize - 1]),
        4 => PoolValue::U64(p.release_threshold),
        5 => PoolValue::U64(p.reserved),
        6 => PoolValue::U64(p.reserved_high),
        7 => PoolValue::U64(p.used),
        8 => PoolValue::U64(p.used_high),
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    })
}

/// Set a pool attribute; `read` fetches the caller's value with the attribute's C type.
pub(crate) fn set_pool_attribute(
    pool: Handle,
    attr: u32,
    int_value: impl FnOnce() -> CuResult<i32>,
    u64_value: impl FnOnce() -> CuResult<u64>,
) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let p = state
        .pools
        .get_mut(pool)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    match attr {
        1..=3 => p.reuse[attr as usize - 1] = int_value()?,
        4 => p.release_threshold = u64_value()?,
        // The high-water marks can only be reset, by setting 0.
        6 | 8 => {
            if u64_value()? != 0 {
                return Err(E::CUDA_ERROR_INVALID_VALUE);
            }
            if attr == 6 {
                p.reserved_high = p.reserved;
            } else {
                p.used_high = p.used;
            }
        }
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

// ---- arrays ---------------------------------------------------------------------------------------

/// One array (or mipmapped array) description, normalised from the descriptor structs.
pub(crate) struct ArrayShape {
    pub width: u64,
    pub height: u64,
    pub depth: u64,
    pub format: u32,
    pub channels: u32,
    pub levels: u32,
}

fn element_bytes(format: u32) -> CuResult<u64> {
    Ok(match format {
        0x01 | 0x08 => 1,        // (UN)SIGNED_INT8
        0x02 | 0x09 | 0x10 => 2, // (UN)SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => 4, // (UN)SIGNED_INT32, FLOAT
        0 => return Err(E::CUDA_ERROR_INVALID_VALUE),
        // Packed, video and block-compressed formats: counted as 4 bytes per texel (an estimate).
        _ => 4,
    })
}

/// Bytes an array takes on the device: texels times element size, over every mip level, rounded up to 512.
pub(crate) fn array_bytes(shape: &ArrayShape) -> CuResult<u64> {
    if shape.width == 0 || !matches!(shape.channels, 1 | 2 | 4) || shape.levels == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let texel = element_bytes(shape.format)? * shape.channels as u64;
    let mut total: u64 = 0;
    for level in 0..shape.levels.min(32) {
        let w = (shape.width >> level).max(1);
        let h = if shape.height == 0 {
            1
        } else {
            (shape.height >> level).max(1)
        };
        let d = if shape.depth == 0 {
            1
        } else {
            (shape.depth >> level).max(1)
        };
        let level_bytes = w
            .checked_mul(h)
            .and_then(|x| x.checked_mul(d))
            .and_then(|x| x.checked_mul(texel));
        total = total
            .checked_add(level_bytes.ok_or(E::CUDA_ERROR_INVALID_VALUE)?)
            .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    }
    Ok(align_up(total, 512))
}

pub(crate) fn array_create(shape: ArrayShape, mipmapped: bool) -> CuResult<Handle> {
    let drv = driver()?;
    let bytes = array_bytes(&shape)?;
    let mut state = drv.lock();
    let (ctx, c) = state.current()?;
    let device = c.device;
    drv.charge_allocation(device, bytes)?;
    let object = ArrayObject {
        ctx,
        device,
        charged: bytes,
    };
    Ok(if mipmapped {
        state.mipmaps.insert(object)
    } else {
        state.arrays.insert(object)
    })
}

pub(crate) fn array_destroy(handle: Handle, mipmapped: bool) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let table = if mipmapped {
        &mut state.mipmaps
    } else {
        &mut state.arrays
    };
    let a = table.remove(handle).ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    drv.uncharge(a.device, a.charged);
    Ok(())
}

// ---- pointer attributes ---------------------------------------------------------------------------

/// What `cuPointerGetAttribute` reports for one pointer.
pub(crate) struct PointerInfo {
    pub ctx: Handle,
    pub device: u32,
    pub host: bool,
    pub managed: bool,
    pub base: u64,
    pub size: u64,
    pub pool: Handle,
}

pub(crate) fn pointer_info(ptr: u64) -> CuResult<Option<PointerInfo>> {
    let state = driver()?.lock();
    if let Some((base, a)) = state.mem.allocation_at(ptr) {
        let pool = match a.kind {
            AllocKind::Pool(p) => p,
            _ => 0,
        };
        let managed = a.kind == AllocKind::Managed;
        return Ok(Some(PointerInfo {
            ctx: a.ctx,
            device: a.device,
            host: false,
            managed,
            base,
            size: a.size,
            pool,
        }));
    }
    if let Some((base, h)) = state.mem.host_at(ptr) {
        let device = state.contexts.get(h.ctx).map_or(0, |c| c.device);
        return Ok(Some(PointerInfo {
            ctx: h.ctx,
            device,
            host: true,
            managed: false,
            base,
            size: h.size,
            pool: 0,
        }));
    }
    if let Some((&base, m)) = state.mem.mappings.range(..=ptr).next_back() {
        if ptr < base + m.size {
            let device = state.physical.get(m.handle).map_or(0, |p| p.device);
            return Ok(Some(PointerInfo {
                ctx: 0,
                device,
                host: false,
                managed: false,
                base,
                size: m.size,
                pool: 0,
            }));
        }
    }
    Ok(None)
}
