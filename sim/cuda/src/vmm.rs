//! Virtual memory management: `cuMemCreate` physical allocations (charged to the machine), address
//! reservations, and mappings between them.
//!
//! Physical memory is a range of one sparse memfd per process, so a physical allocation mapped at
//! two addresses shows the same bytes at both, as on a GPU. The charge is given back when the last
//! reference goes: `cuMemRelease` of every handle reference and `cuMemUnmap` of every mapping.

use vgpu_abi::cuda::{cudaError_enum as E, CUmemAccessDesc, CUmemAllocationProp};

use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::handles::Handle;
use crate::memory::{AllocationProp, Mapping, Physical, PHYSICAL_FILE_BYTES};
use crate::sys;

/// `cuMemGetAllocationGranularity`, minimum and recommended alike.
pub(crate) const GRANULARITY: u64 = 2 << 20;

/// Check a `CUmemAllocationProp`: pinned device memory on a valid device. Returns the device.
fn check_prop(drv: &Driver, prop: &CUmemAllocationProp) -> CuResult<u32> {
    // CU_MEM_ALLOCATION_TYPE_PINNED (1), CU_MEM_LOCATION_TYPE_DEVICE (1).
    if prop.type_.0 != 1 || prop.location.type_.0 != 1 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    drv.device(prop.location.id)
        .map_err(|_| E::CUDA_ERROR_INVALID_DEVICE)
        .map(|_| prop.location.id as u32)
}

pub(crate) fn granularity(prop: &CUmemAllocationProp, option: u32) -> CuResult<u64> {
    let drv = driver()?;
    check_prop(drv, prop)?;
    if option > 1 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(GRANULARITY)
}

pub(crate) fn create(size: u64, prop: &CUmemAllocationProp, flags: u64) -> CuResult<Handle> {
    let drv = driver()?;
    let device = check_prop(drv, prop)?;
    if flags != 0 || size == 0 || size % GRANULARITY != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = drv.lock();
    if state.mem.physical_file.is_none() {
        state.mem.physical_file = sys::PhysicalFile::create(PHYSICAL_FILE_BYTES);
    }
    if state.mem.physical_file.is_none() {
        return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
    }
    drv.charge_allocation(device, size)?;
    let Some(offset) = state.mem.physical_ranges.alloc(size, GRANULARITY) else {
        drv.uncharge(device, size);
        return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
    };
    Ok(state.physical.insert(Physical {
        device,
        size,
        offset,
        refs: 1,
        maps: 0,
        prop: AllocationProp::from_c(prop),
    }))
}

/// Drop a physical allocation whose last reference went.
fn maybe_free(drv: &Driver, state: &mut State, handle: Handle) {
    let done = state
        .physical
        .get(handle)
        .is_some_and(|p| p.refs == 0 && p.maps == 0);
    if !done {
        return;
    }
    if let Some(p) = state.physical.remove(handle) {
        if let Some(file) = &state.mem.physical_file {
            file.punch(p.offset, p.size);
        }
        state.mem.physical_ranges.free(p.offset, p.size);
        drv.uncharge(p.device, p.size);
    }
}

pub(crate) fn release(handle: Handle) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let p = state
        .physical
        .get_mut(handle)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    if p.refs == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    p.refs -= 1;
    maybe_free(drv, &mut state, handle);
    Ok(())
}

pub(crate) fn properties(handle: Handle) -> CuResult<CUmemAllocationProp> {
    let state = driver()?.lock();
    state
        .physical
        .get(handle)
        .map(|p| p.prop.to_c())
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}

/// `cuMemRetainAllocationHandle`: the physical allocation mapped at `addr`, with one more reference.
pub(crate) fn retain(addr: u64) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    let handle = mapping_at(&state, addr)
        .map(|(_, m)| m.handle)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let p = state
        .physical
        .get_mut(handle)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    p.refs += 1;
    Ok(handle)
}

fn mapping_at(state: &State, addr: u64) -> Option<(u64, &Mapping)> {
    let (&base, m) = state.mem.mappings.range(..=addr).next_back()?;
    (addr < base + m.size).then_some((base, m))
}

pub(crate) fn address_reserve(size: u64, alignment: u64, _hint: u64, flags: u64) -> CuResult<u64> {
    let drv = driver()?;
    if flags != 0 || size == 0 || size % GRANULARITY != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let alignment = if alignment == 0 {
        GRANULARITY
    } else {
        alignment
    };
    if !alignment.is_power_of_two() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = drv.lock();
    let addr =
        sys::reserve_none(size, alignment.max(GRANULARITY)).ok_or(E::CUDA_ERROR_OUT_OF_MEMORY)?;
    state.mem.reservations.insert(addr, size);
    Ok(addr)
}

pub(crate) fn address_free(ptr: u64, size: u64) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    if state.mem.reservations.get(&ptr) != Some(&size) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    // Mappings still inside go with the reservation.
    let inside: Vec<u64> = state
        .mem
        .mappings
        .range(ptr..ptr + size)
        .map(|(a, _)| *a)
        .collect();
    for addr in inside {
        drop_mapping(drv, &mut state, addr);
    }
    state.mem.reservations.remove(&ptr);
    sys::release_range(ptr, size);
    Ok(())
}

/// Whether [ptr, ptr + size) lies inside one reservation.
fn reserved(state: &State, ptr: u64, size: u64) -> bool {
    state
        .mem
        .reservations
        .range(..=ptr)
        .next_back()
        .is_some_and(|(&base, &len)| ptr + size <= base + len)
}

pub(crate) fn map(ptr: u64, size: u64, offset: u64, handle: Handle, flags: u64) -> CuResult {
    let drv = driver()?;
    if flags != 0
        || size == 0
        || ptr % GRANULARITY != 0
        || size % GRANULARITY != 0
        || offset % GRANULARITY != 0
    {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = drv.lock();
    let phys = state
        .physical
        .get(handle)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let end = offset
        .checked_add(size)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    if end > phys.size || phys.refs == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let file_offset = phys.offset + offset;
    if !reserved(&state, ptr, size) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let overlaps = state
        .mem
        .mappings
        .range(..ptr + size)
        .next_back()
        .is_some_and(|(&b, m)| b + m.size > ptr);
    if overlaps {
        return Err(E::CUDA_ERROR_ALREADY_MAPPED);
    }
    let mapped = state
        .mem
        .physical_file
        .as_ref()
        .is_some_and(|f| f.map_at(ptr, size, file_offset));
    if !mapped {
        return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
    }
    state.mem.mappings.insert(ptr, Mapping { size, handle });
    if let Some(p) = state.physical.get_mut(handle) {
        p.maps += 1;
    }
    Ok(())
}

fn drop_mapping(drv: &Driver, state: &mut State, addr: u64) {
    let Some(m) = state.mem.mappings.remove(&addr) else {
        return;
    };
    sys::unmap_to_reserved(addr, m.size);
    if let Some(p) = state.physical.get_mut(m.handle) {
        p.maps = p.maps.saturating_sub(1);
    }
    maybe_free(drv, state, m.handle);
}

/// `cuMemUnmap`: the range must consist of whole mappings.
pub(crate) fn unmap(ptr: u64, size: u64) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let end = ptr.checked_add(size).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let inside: Vec<(u64, u64)> = state
        .mem
        .mappings
        .range(ptr..end)
        .map(|(a, m)| (*a, m.size))
        .collect();
    let covered: u64 = inside.iter().map(|(_, s)| s).sum();
    if inside.first().map(|(a, _)| *a) != Some(ptr)
        || covered != size
        || inside.iter().any(|(a, s)| a + s > end)
    {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    for (addr, _) in inside {
        drop_mapping(drv, &mut state, addr);
    }
    Ok(())
}

/// `cuMemSetAccess`: mapped memory is always read-write here; check the range and descriptors.
pub(crate) fn set_access(ptr: u64, size: u64, descriptors: &[CUmemAccessDesc]) -> CuResult {
    let drv = driver()?;
    if descriptors.is_empty() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    for d in descriptors {
        // CU_MEM_LOCATION_TYPE_DEVICE (1) with a valid id; flags NONE (0), READ (1) or READWRITE (3).
        if d.location.type_.0 != 1
            || drv.device(d.location.id).is_err()
            || !matches!(d.flags.0, 0 | 1 | 3)
        {
            return Err(E::CUDA_ERROR_INVALID_VALUE);
        }
    }
    let state = drv.lock();
    let end = ptr.checked_add(size).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    if !state.mem.mapped_range_ok(ptr, end) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

/// `cuMemGetAccess`: read-write (3) for mapped memory.
pub(crate) fn access(device: i32, ptr: u64) -> CuResult<u64> {
    let drv = driver()?;
    drv.device(device)
        .map_err(|_| E::CUDA_ERROR_INVALID_VALUE)?;
    let state = drv.lock();
    mapping_at(&state, ptr)
        .map(|_| 3)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}
