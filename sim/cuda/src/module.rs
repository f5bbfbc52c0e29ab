//! Modules, libraries (context-independent loading) and functions.

use std::ffi::c_void;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::handles::{kind_of, Handle, Kind};
use crate::kernels::{self, Behaviour, ModuleSpec};
use crate::memory::{self, AllocKind};
use crate::sys;

/// Dynamic shared memory a function may use without opting in (48 KiB).
pub(crate) const DEFAULT_DYNAMIC_SHARED: i32 = 48 << 10;

pub(crate) struct Module {
    pub ctx: Handle,
    pub spec: ModuleSpec,
    pub functions: Vec<(String, Handle)>,
    /// (name, device address, bytes)
    pub globals: Vec<(String, u64, u64)>,
}

pub(crate) struct Function {
    pub module: Handle,
    pub ctx: Handle,
    pub behaviour: Behaviour,
    pub max_dynamic_shared: i32,
    pub carveout: i32,
    pub cache_config: u32,
}

pub(crate) struct Library {
    pub spec: ModuleSpec,
    /// The library loaded into each context that used it: (context, module).
    pub modules: Vec<(Handle, Handle)>,
    pub kernels: Vec<(String, Handle)>,
}

pub(crate) struct LibraryKernel {
    pub library: Handle,
    pub name: String,
}

/// Parse an image the caller hands us (module data, fatbin, library code).
pub(crate) fn read_image(image: *const c_void) -> CuResult<ModuleSpec> {
    if image.is_null() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let (prefix, terminated) = sys::image_prefix(image, kernels::MAX_IMAGE_BYTES);
    kernels::classify(&prefix, terminated).map_err(|_| E::CUDA_ERROR_INVALID_IMAGE)
}

/// `cuModuleLoad`: the image is a file.
pub(crate) fn read_image_file(path: *const std::os::raw::c_char) -> CuResult<ModuleSpec> {
    let path = sys::cstr(path)?;
    let bytes = sys::read_file(path).map_err(|_| E::CUDA_ERROR_FILE_NOT_FOUND)?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    kernels::classify(&bytes[..end], true).map_err(|_| E::CUDA_ERROR_INVALID_IMAGE)
}

/// Load `spec` into `ctx`: its globals are allocated (zeroed) on the context's device.
fn load_into(drv: &Driver, state: &mut State, ctx: Handle, spec: ModuleSpec) -> CuResult<Handle> {
    let device = state
        .contexts
        .get(ctx)
        .map(|c| c.device)
        .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
    let mut globals = Vec::new();
    for g in &spec.globals {
        match memory::alloc_in(drv, state, ctx, device, g.bytes, AllocKind::Global, false) {
            Ok(addr) => {
                memory::write_pattern(addr, 0, 1, g.bytes);
                globals.push((g.name.clone(), addr, g.bytes));
            }
            Err(e) => {
                free_globals(drv, state, &globals);
                return Err(e);
            }
        }
    }
    Ok(state.modules.insert(Module {
        ctx,
        spec,
        functions: Vec::new(),
        globals,
    }))
}

fn free_globals(drv: &Driver, state: &mut State, globals: &[(String, u64, u64)]) {
    for (_, addr, _) in globals {
        if let Some(a) = state.mem.allocations.remove(addr) {
            drv.uncharge(a.device, a.charged);
            memory::uncarve_block(state, *addr, a.block);
        }
    }
}

pub(crate) fn load(spec: ModuleSpec) -> CuResult<Handle> {
    let drv = driver()?;
    let mut state = drv.lock();
    let (ctx, _) = state.current()?;
    load_into(drv, &mut state, ctx, spec)
}

fn remove_module(drv: &Driver, state: &mut State, module: Handle) {
    let Some(m) = state.modules.remove(module) else {
        return;
    };
    free_globals(drv, state, &m.globals);
    for (_, f) in &m.functions {
        state.functions.remove(*f);
    }
}

pub(crate) fn unload(module: Handle) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    if !state.modules.contains(module) {
        return Err(E::CUDA_ERROR_INVALID_HANDLE);
    }
    remove_module(drv, &mut state, module);
    for (_, lib) in state.libraries.iter_mut() {
        lib.modules.retain(|(_, m)| *m != module);
    }
    Ok(())
}

/// A context is going away: its modules and functions go too (the globals were freed with its memory).
pub(crate) fn unload_context_modules(drv: &Driver, state: &mut State, ctx: Handle) {
    for m in state.modules.handles_where(|m| m.ctx == ctx) {
        remove_module(drv, state, m);
    }
    for (_, lib) in state.libraries.iter_mut() {
        lib.modules.retain(|(c, _)| *c != ctx);
    }
}

fn function_in(state: &mut State, module: Handle, name: &str) -> CuResult<Handle> {
    let m = state
        .modules
        .get(module)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    if let Some((_, f)) = m.functions.iter().find(|(n, _)| n == name) {
        return Ok(*f);
    }
    let behaviour = m.spec.function(name).ok_or(E::CUDA_ERROR_NOT_FOUND)?;
    let ctx = m.ctx;
    let f = state.functions.insert(Function {
        module,
        ctx,
        behaviour,
        max_dynamic_shared: DEFAULT_DYNAMIC_SHARED,
        carveout: -1,
        cache_config: 0,
    });
    if let Some(m) = state.modules.get_mut(module) {
        m.functions.push((name.to_string(), f));
    }
    Ok(f)
}

pub(crate) fn get_function(module: Handle, name: *const std::os::raw::c_char) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    if !state.modules.contains(module) {
        return Err(E::CUDA_ERROR_INVALID_HANDLE);
    }
    let name = sys::cstr(name)?
        .to_str()
        .map_err(|_| E::CUDA_ERROR_NOT_FOUND)?;
    function_in(&mut state, module, name)
}

pub(crate) fn get_global(
    module: Handle,
    name: *const std::os::raw::c_char,
) -> CuResult<(u64, u64)> {
    let state = driver()?.lock();
    let m = state
        .modules
        .get(module)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let name = sys::cstr(name)?
        .to_str()
        .map_err(|_| E::CUDA_ERROR_NOT_FOUND)?;
    m.globals
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, a, s)| (*a, *s))
        .ok_or(E::CUDA_ERROR_NOT_FOUND)
}

pub(crate) fn function_module(func: Handle) -> CuResult<Handle> {
    let state = driver()?.lock();
    state
        .functions
        .get(func)
        .map(|f| f.module)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)
}

// ---- libraries (CUDA 12 context-independent loading) ------------------------------------------------

pub(crate) fn library_load(spec: ModuleSpec) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    Ok(state.libraries.insert(Library {
        spec,
        modules: Vec::new(),
        kernels: Vec::new(),
    }))
}

pub(crate) fn library_unload(library: Handle) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let lib = state
        .libraries
        .remove(library)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    for (_, m) in lib.modules {
        remove_module(drv, &mut state, m);
    }
    for (_, k) in lib.kernels {
        state.kernels.remove(k);
    }
    Ok(())
}

pub(crate) fn library_kernel(
    library: Handle,
    name: *const std::os::raw::c_char,
) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    let lib = state
        .libraries
        .get(library)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let name = sys::cstr(name)?
        .to_str()
        .map_err(|_| E::CUDA_ERROR_NOT_FOUND)?;
    if let Some((_, k)) = lib.kernels.iter().find(|(n, _)| n == name) {
        return Ok(*k);
    }
    lib.spec.function(name).ok_or(E::CUDA_ERROR_NOT_FOUND)?;
    let k = state.kernels.insert(LibraryKernel {
        library,
        name: name.to_string(),
    });
    if let Some(lib) = state.libraries.get_mut(library) {
        lib.kernels.push((name.to_string(), k));
    }
    Ok(k)
}

/// The library's module in the current context, loaded on first use.
fn library_module(drv: &Driver, state: &mut State, library: Handle) -> CuResult<Handle> {
    let (ctx, _) = state.current()?;
    let lib = state
        .libraries
        .get(library)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    if let Some((_, m)) = lib.modules.iter().find(|(c, _)| *c == ctx) {
        return Ok(*m);
    }
    let spec = lib.spec.clone();
    let m = load_into(drv, state, ctx, spec)?;
    if let Some(lib) = state.libraries.get_mut(library) {
        lib.modules.push((ctx, m));
    }
    Ok(m)
}

pub(crate) fn library_module_handle(library: Handle) -> CuResult<Handle> {
    let drv = driver()?;
    let mut state = drv.lock();
    library_module(drv, &mut state, library)
}

/// The function a `CUkernel` stands for in the current context.
pub(crate) fn kernel_function(drv: &Driver, state: &mut State, kernel: Handle) -> CuResult<Handle> {
    let k = state
        .kernels
        .get(kernel)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let (library, name) = (k.library, k.name.clone());
    let m = library_module(drv, state, library)?;
    function_in(state, m, &name)
}

pub(crate) fn kernel_get_function(kernel: Handle) -> CuResult<Handle> {
    let drv = driver()?;
    let mut state = drv.lock();
    kernel_function(drv, &mut state, kernel)
}

/// A `CUfunction` argument, which in CUDA 12 may also be a `CUkernel`.
pub(crate) fn resolve_function(drv: &Driver, state: &mut State, func: Handle) -> CuResult<Handle> {
    if kind_of(func) == Kind::Kernel as u8 {
        return kernel_function(drv, state, func);
    }
    if state.functions.contains(func) {
        Ok(func)
    } else {
        Err(E::CUDA_ERROR_INVALID_HANDLE)
    }
}

// ---- function attributes --------------------------------------------------------------------------

pub(crate) fn attribute(func: Handle, attr: u32) -> CuResult<i32> {
    let drv = driver()?;
    let mut state = drv.lock();
    let func = resolve_function(drv, &mut state, func)?;
    let f = state
        .functions
        .get(func)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let device = state.contexts.get(f.ctx).map_or(0, |c| c.device);
    let spec = &drv.devices[device as usize].spec;
    let arch = (spec.cc_major * 10 + spec.cc_minor) as i32;
    Ok(match attr {
        0 => 1024,                 // MAX_THREADS_PER_BLOCK
        1..=3 => 0,                // SHARED/CONST/LOCAL_SIZE_BYTES
        4 => 32,                   // NUM_REGS
        5 | 6 => arch,             // PTX_VERSION, BINARY_VERSION
        7 => 0,                    // CACHE_MODE_CA
        8 => f.max_dynamic_shared, // MAX_DYNAMIC_SHARED_SIZE_BYTES
        9 => f.carveout,           // PREFERRED_SHARED_MEMORY_CARVEOUT
        10..=15 => 0,              // cluster attributes
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    })
}

pub(crate) fn set_attribute(func: Handle, attr: u32, value: i32) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let func = resolve_function(drv, &mut state, func)?;
    let device = state
        .functions
        .get(func)
        .and_then(|f| state.contexts.get(f.ctx))
        .map_or(0, |c| c.device);
    let optin = crate::device::shared_memory_optin(&drv.devices[device as usize].spec);
    let f = state
        .functions
        .get_mut(func)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    match attr {
        8 if (0..=optin).contains(&value) => f.max_dynamic_shared = value,
        9 if (-1..=100).contains(&value) => f.carveout = value,
        10 | 14 | 15 => {}
        _ => return Err(E::CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

pub(crate) fn set_cache_config(func: Handle, config: u32) -> CuResult {
    if config > 3 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let drv = driver()?;
    let mut state = drv.lock();
    let func = resolve_function(drv, &mut state, func)?;
    if let Some(f) = state.functions.get_mut(func) {
        f.cache_config = config;
    }
    Ok(())
}
