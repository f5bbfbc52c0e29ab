//! Kernel launches (`cuLaunchKernel`, `Ex`, cooperative) and occupancy.

use std::ffi::c_void;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::device;
use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::graph::{self, KernelOp, Op};
use crate::handles::Handle;
use crate::kernels::Behaviour;
use crate::{module, stream, sys};

/// One launch as the caller described it.
pub(crate) struct Launch {
    pub func: Handle,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    pub stream: Handle,
    pub per_thread: bool,
    pub cooperative: bool,
    pub params: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

fn check_dims(grid: [u32; 3], block: [u32; 3]) -> CuResult {
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    let ok = grid.iter().chain(block.iter()).all(|&d| d > 0)
        && grid[0] <= i32::MAX as u32
        && grid[1] <= 65_535
        && grid[2] <= 65_535
        && block[0] <= 1024
        && block[1] <= 1024
        && block[2] <= 64
        && threads <= 1024;
    if ok {
        Ok(())
    } else {
        Err(E::CUDA_ERROR_INVALID_VALUE)
    }
}

/// `fill_u32`'s (dst, value, count), from `kernelParams` or the packed `extra` buffer.
fn fill_args(params: *mut *mut c_void, extra: *mut *mut c_void) -> Option<(u64, u32, u64)> {
    if !params.is_null() {
        return Some((
            sys::kernel_param::<u64>(params, 0)?,
            sys::kernel_param::<u32>(params, 1)?,
            sys::kernel_param::<u64>(params, 2)?,
        ));
    }
    // Packed with natural alignment: u64 at 0, u32 at 8, u64 at 16.
    let buf = sys::extra_buffer(extra)?;
    let word = |at: usize, n: usize| {
        buf.get(at..at + n)
            .map(|b| b.iter().rev().fold(0u64, |acc, x| acc << 8 | *x as u64))
    };
    Some((word(0, 8)?, word(8, 4)? as u32, word(16, 8)?))
}

/// Validate a launch of `func` and describe it as a kernel op (the launch paths and graph nodes
/// share it). Returns the op and the function's context.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kernel_op(
    drv: &Driver,
    state: &mut State,
    func: Handle,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    cooperative: bool,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<(KernelOp, Handle)> {
    check_dims(grid, block)?;
    let func = module::resolve_function(drv, state, func)?;
    let f = state
        .functions
        .get(func)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let (behaviour, ctx, max_shared) = (f.behaviour, f.ctx, f.max_dynamic_shared);
    if shared_bytes as i64 > max_shared as i64 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let device = state
        .contexts
        .get(ctx)
        .map(|c| c.device)
        .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
    let spec = &drv.devices[device as usize].spec;
    if cooperative {
        let blocks = grid.iter().map(|&g| g as u64).product::<u64>();
        let per_sm =
            device::max_active_blocks_per_sm(spec, block.iter().product(), shared_bytes as u64);
        if blocks > per_sm as u64 * spec.sms as u64 {
            return Err(E::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    let fill = match behaviour {
        Behaviour::Fill { .. } => {
            let (dst, value, count) =
                fill_args(params, extra).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
            let bytes = count.checked_mul(4).ok_or(E::CUDA_ERROR_ILLEGAL_ADDRESS)?;
            if count > 0 && !state.mem.device_range_ok(dst, bytes) {
                return Err(E::CUDA_ERROR_ILLEGAL_ADDRESS);
            }
            Some((dst, value, count))
        }
        _ => None,
    };
    Ok((
        KernelOp {
            behaviour,
            grid,
            block,
            fill,
        },
        ctx,
    ))
}

pub(crate) fn launch(l: Launch) -> CuResult {
    let drv = driver()?;
    let mut effects = Vec::new();
    {
        let mut state = drv.lock();
        let s = stream::resolve(&mut state, l.stream, l.per_thread)?;
        let (op, ctx) = kernel_op(
            drv,
            &mut state,
            l.func,
            l.grid,
            l.block,
            l.shared_bytes,
            l.cooperative,
            l.params,
            l.extra,
        )?;
        if state.streams.get(s).map(|st| st.ctx) != Some(ctx) {
            return Err(E::CUDA_ERROR_INVALID_HANDLE);
        }
        let op = Op::Kernel(op);
        if !graph::record_if_capturing(&mut state, s, op.clone())? {
            graph::execute(drv, &mut state, s, &op, &mut effects)?;
        }
    }
    graph::apply(effects);
    Ok(())
}

/// `cuLaunchKernelEx`: the config's attributes may ask for a cooperative launch.
pub(crate) fn cooperative_attribute(config: &vgpu_abi::cuda::CUlaunchConfig) -> CuResult<bool> {
    let attrs = sys::read_array(
        config.attrs as *const vgpu_abi::cuda::CUlaunchAttribute,
        config.numAttrs as usize,
    )?;
    // CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2; the value's first int is `cooperative`.
    // SAFETY: reading the `cooperative` member of the attribute value union, as the id says it is.
    Ok(attrs
        .iter()
        .any(|a| a.id.0 == 2 && unsafe { a.value.cooperative } != 0))
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessor`.
pub(crate) fn max_active_blocks(
    func: Handle,
    block_size: i32,
    dynamic_shared: u64,
) -> CuResult<i32> {
    if block_size <= 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let drv = driver()?;
    let mut state = drv.lock();
    let func = module::resolve_function(drv, &mut state, func)?;
    let ctx = state
        .functions
        .get(func)
        .map(|f| f.ctx)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let device = state
        .contexts
        .get(ctx)
        .map(|c| c.device)
        .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
    Ok(device::max_active_blocks_per_sm(
        &drv.devices[device as usize].spec,
        block_size as u32,
        dynamic_shared,
    ) as i32)
}
