//! The process-wide driver: the machine it runs on, the devices, and every object the program made.
//!
//! One mutex guards the object tables. Bodies hold it only for bookkeeping: never while they wait for
//! simulated time or copy user data, so a thread in `cuStreamSynchronize` does not stall a thread
//! that launches.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use simgpu_state::{DeviceSpec, Machine};
use vgpu_abi::cuda::cudaError_enum as E;

use crate::error::{from_sim, CuResult};
use crate::handles::{Handle, Kind, Table};
use crate::memory::Memory;
use crate::{context, graph, memory, module, stream, sys};

/// Device memory a context costs, unless `SIMGPU_CONTEXT_BYTES` says otherwise: 304 MiB, about
/// what a CUDA 12 context takes on an A100 (runtime, module and stack reservations).
pub(crate) const DEFAULT_CONTEXT_BYTES: u64 = 304 << 20;

/// What the driver knows of one device beyond its spec. `Driver::devices` is indexed by CUDA ordinal,
/// which `CUDA_VISIBLE_DEVICES` may map to any of the machine's devices.
pub(crate) struct Device {
    /// The machine's device (its `index` is the machine's, not the CUDA ordinal).
    pub spec: DeviceSpec,
    /// Where the machine (memory, timeline, lost flag, NVML) has this device: `spec.index`.
    pub machine_index: u32,
    /// The NVML UUID string's 32 hex digits as the 16 raw bytes `cuDeviceGetUuid` returns.
    pub uuid: [u8; 16],
    /// (domain, bus, device, function)
    pub pci: (u32, u32, u32, u32),
}

pub(crate) struct Driver {
    /// Private: every call that names a device goes through a `Driver` method, which turns the CUDA
    /// ordinal into the machine's index.
    machine: &'static Machine,
    /// By CUDA ordinal: the devices `CUDA_VISIBLE_DEVICES` shows, in its order.
    pub devices: Vec<Device>,
    /// Device memory charged per context (`SIMGPU_CONTEXT_BYTES`).
    pub context_bytes: u64,
    state: Mutex<State>,
}

/// Everything the program has made, by kind.
pub(crate) struct State {
    pub contexts: Table<context::Context>,
    /// Per device: the primary context and its retain count.
    pub primary: Vec<context::Primary>,
    pub streams: Table<stream::Stream>,
    pub events: Table<stream::Event>,
    pub modules: Table<module::Module>,
    pub functions: Table<module::Function>,
    pub libraries: Table<module::Library>,
    pub kernels: Table<module::LibraryKernel>,
    pub pools: Table<memory::Pool>,
    /// Per device: the default pool and the current pool (`cuDeviceSetMemPool`).
    pub default_pools: Vec<Handle>,
    pub current_pools: Vec<Handle>,
    pub arrays: Table<memory::ArrayObject>,
    pub mipmaps: Table<memory::ArrayObject>,
    pub physical: Table<memory::Physical>,
    pub graphs: Table<graph::Graph>,
    pub execs: Table<graph::GraphExec>,
    pub nodes: Table<graph::NodeRef>,
    pub captures: Vec<graph::Capture>,
    pub mem: Memory,
    pub next_id: u64,
}

static DRIVER: OnceLock<Driver> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());
/// Set in a fork child of a process that had initialised the driver: like the real driver, the child
/// cannot use CUDA (every call, `cuInit` included, returns `CUDA_ERROR_NOT_INITIALIZED`).
static FORKED_AFTER_INIT: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    if DRIVER.get().is_some() {
        FORKED_AFTER_INIT.store(true, Ordering::Relaxed);
    }
}

/// The initialised driver, or `CUDA_ERROR_NOT_INITIALIZED` before `cuInit` (and in a fork child).
#[inline]
pub(crate) fn driver() -> CuResult<&'static Driver> {
    match DRIVER.get() {
        Some(d) if !FORKED_AFTER_INIT.load(Ordering::Relaxed) => Ok(d),
        _ => Err(E::CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// The machine, without requiring `cuInit` (for `cuDriverGetVersion`, `cuGetProcAddress`).
pub(crate) fn machine() -> CuResult<&'static Machine> {
    Machine::get().map_err(from_sim)
}

/// `cuInit(flags)`.
pub(crate) fn init(flags: u32) -> CuResult {
    if flags != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    if FORKED_AFTER_INIT.load(Ordering::Relaxed) {
        return Err(E::CUDA_ERROR_NOT_INITIALIZED);
    }
    if DRIVER.get().is_some() {
        return Ok(());
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if DRIVER.get().is_some() {
        return Ok(());
    }
    let machine = machine()?;
    let uuids: Vec<&str> = machine.devices().iter().map(|d| d.uuid.as_str()).collect();
    let visible_var =
        std::env::var_os("CUDA_VISIBLE_DEVICES").map(|v| v.to_string_lossy().into_owned());
    let visible = crate::visible::visible_devices(visible_var.as_deref(), &uuids);
    if visible.is_empty() {
        return Err(E::CUDA_ERROR_NO_DEVICE);
    }
    let context_bytes = match std::env::var("SIMGPU_CONTEXT_BYTES") {
        Ok(v) if !v.trim().is_empty() => match context_bytes_from(v.trim()) {
            Some(n) => n,
            None => {
                eprintln!("simulated libcuda: SIMGPU_CONTEXT_BYTES={v:?} is not a size (bytes, or like 300Mi)");
                return Err(E::CUDA_ERROR_NO_DEVICE);
            }
        },
        _ => DEFAULT_CONTEXT_BYTES,
    };
    let devices: Vec<Device> = visible
        .iter()
        .filter_map(|index| machine.device(*index))
        .map(|spec| Device {
            uuid: uuid_bytes(&spec.uuid),
            pci: spec.pci_parts(),
            machine_index: spec.index,
            spec: spec.clone(),
        })
        .collect();
    let count = devices.len();
    let mut state = State {
        contexts: Table::new(Kind::Context),
        primary: (0..count).map(|_| context::Primary::default()).collect(),
        streams: Table::new(Kind::Stream),
        events: Table::new(Kind::Event),
        modules: Table::new(Kind::Module),
        functions: Table::new(Kind::Function),
        libraries: Table::new(Kind::Library),
        kernels: Table::new(Kind::Kernel),
        pools: Table::new(Kind::Pool),
        default_pools: Vec::new(),
        current_pools: Vec::new(),
        arrays: Table::new(Kind::Array),
        mipmaps: Table::new(Kind::Mipmap),
        physical: Table::new(Kind::Physical),
        graphs: Table::new(Kind::Graph),
        execs: Table::new(Kind::GraphExec),
        nodes: Table::new(Kind::Node),
        captures: Vec::new(),
        mem: Memory::new(devices.iter().map(|d| d.spec.mem_bytes).sum()),
        next_id: 1,
    };
    for dev in 0..count as u32 {
        let pool = state.pools.insert(memory::Pool::new(dev, true));
        state.default_pools.push(pool);
        state.current_pools.push(pool);
    }
    sys::on_fork_child(after_fork_in_child);
    let _ = DRIVER.set(Driver {
        machine,
        devices,
        context_bytes,
        state: Mutex::new(state),
    });
    Ok(())
}

/// `SIMGPU_CONTEXT_BYTES`: a size as `SIMGPU_DEVICES` writes them (`304Mi`, bytes), or 0.
fn context_bytes_from(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    simgpu_state::config::parse_size(text).ok()
}

/// `GPU-01234567-89ab-cdef-0123-456789abcdef` -> its 16 bytes (non-hex input gives zeros there).
pub(crate) fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let hex: Vec<u8> = uuid
        .trim_start_matches("GPU-")
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| (b as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        if let (Some(hi), Some(lo)) = (hex.get(2 * i), hex.get(2 * i + 1)) {
            *byte = hi << 4 | lo;
        }
    }
    out
}

impl Driver {
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock was already turned into an error code; the tables are
        // still consistent enough to keep serving (every mutation is a single insert or remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validate a device ordinal.
    #[inline]
    pub(crate) fn device(&self, dev: i32) -> CuResult<&Device> {
        usize::try_from(dev)
            .ok()
            .and_then(|d| self.devices.get(d))
            .ok_or(E::CUDA_ERROR_INVALID_DEVICE)
    }

    /// The machine's index of CUDA ordinal `dev`; `u32::MAX`, which the machine rejects as no such
    /// device, for an ordinal we do not have.
    #[inline]
    fn on_machine(&self, dev: u32) -> u32 {
        self.devices
            .get(dev as usize)
            .map_or(u32::MAX, |d| d.machine_index)
    }

    /// `SIMGPU_DEVICE_LOST` (which names machine indices), or the machine-wide flag `simgpu-ctl lost`
    /// sets while we run.
    #[inline]
    pub(crate) fn device_lost(&self, dev: u32) -> bool {
        self.machine.device_lost(self.on_machine(dev))
    }

    /// Charge a user-visible device allocation: `SIMGPU_FAIL_ALLOC_AT` counts it, then the machine
    /// accepts it or refuses past capacity.
    pub(crate) fn charge_allocation(&self, dev: u32, bytes: u64) -> CuResult {
        if self.machine.faults().should_fail_alloc() {
            return Err(E::CUDA_ERROR_OUT_OF_MEMORY);
        }
        self.charge_internal(dev, bytes)
    }

    /// Charge driver-internal device memory (contexts, module globals): `SIMGPU_FAIL_ALLOC_AT` does
    /// not count it.
    pub(crate) fn charge_internal(&self, dev: u32, bytes: u64) -> CuResult {
        self.machine
            .alloc(self.on_machine(dev), bytes)
            .map_err(from_sim)
    }

    pub(crate) fn uncharge(&self, dev: u32, bytes: u64) {
        if bytes > 0 {
            self.machine.free(self.on_machine(dev), bytes);
        }
    }

    /// `(free, total)` of device `dev`, machine-wide.
    pub(crate) fn mem_info(&self, dev: u32) -> (u64, u64) {
        self.machine.mem_info(self.on_machine(dev))
    }

    pub(crate) fn context_created(&self, dev: u32) {
        self.machine.context_created(self.on_machine(dev));
    }

    pub(crate) fn context_destroyed(&self, dev: u32) {
        self.machine.context_destroyed(self.on_machine(dev));
    }

    /// Reserve `duration_ns` of device `dev`'s timeline, shared by every process (`Machine::launch`).
    #[inline]
    pub(crate) fn launch(&self, dev: u32, duration_ns: u64, not_before_ns: u64) -> (u64, u64) {
        self.machine
            .launch(self.on_machine(dev), duration_ns, not_before_ns)
    }

    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.machine.now_ns()
    }

    pub(crate) fn wait_until(&self, ns: u64) {
        if ns > self.machine.now_ns() {
            self.machine.wait_until(ns);
        }
    }
}

impl State {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The calling thread's current context, validated.
    #[inline]
    pub(crate) fn current(&self) -> CuResult<(Handle, &context::Context)> {
        let handle = current_context().ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
        let ctx = self
            .contexts
            .get(handle)
            .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
        Ok((handle, ctx))
    }

    /// The device of the current context.
    #[inline]
    pub(crate) fn current_device(&self) -> CuResult<u32> {
        Ok(self.current()?.1.device)
    }
}

// ---- the per-thread context stack -----------------------------------------------------------------

thread_local! {
    static CONTEXT_STACK: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
}

/// The top of the calling thread's context stack.
#[inline]
pub(crate) fn current_context() -> Option<Handle> {
    CONTEXT_STACK
        .try_with(|s| s.borrow().last().copied())
        .ok()
        .flatten()
}

pub(crate) fn push_context(ctx: Handle) {
    let _ = CONTEXT_STACK.try_with(|s| s.borrow_mut().push(ctx));
}

pub(crate) fn pop_context() -> Option<Handle> {
    CONTEXT_STACK
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
}

/// `cuCtxSetCurrent`: replace the top (push onto an empty stack); NULL pops.
pub(crate) fn set_current_context(ctx: Option<Handle>) {
    let _ = CONTEXT_STACK.try_with(|s| {
        let mut s = s.borrow_mut();
        match ctx {
            Some(c) => match s.last_mut() {
                Some(top) => *top = c,
                None => s.push(c),
            },
            None => {
                s.pop();
            }
        }
    });
}

/// Remove a destroyed context from the calling thread's stack (other threads find out on use).
pub(crate) fn forget_context(ctx: Handle) {
    let _ = CONTEXT_STACK.try_with(|s| s.borrow_mut().retain(|c| *c != ctx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_string_to_bytes() {
        let b = uuid_bytes("GPU-01234567-89ab-cdef-0123-456789ABCDEF");
        assert_eq!(
            b,
            [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ]
        );
    }
}
