//! The process-wide state behind every hook, initialised lazily on the first CUDA or NVML call.
//!
//! States move by CAS: `Uninit -> Initializing -> Ready | PassThrough | Refused`.
//! - `Ready`: limits configured, region attached, slot registered; hooks enforce.
//! - `PassThrough`: no limit configured, or no usable driver: hooks forward untouched.
//! - `Refused` (fail closed, hami-contract.md 2.3): a malformed limit, or the region unusable while a
//!   limit is configured. One stderr line at init; from then on CUDA hooks answer
//!   `CUDA_ERROR_NOT_PERMITTED` and NVML init answers `NVML_ERROR_NO_PERMISSION`. Never `exit()`.
//!
//! The fast path ([`gate`]) is one acquire load (a plain load on x86-64). Init is `#[cold]` and may
//! allocate. A thread that arrives while another initialises waits for it (bounded), so that no call
//! slips through unlimited; the initialising thread itself, re-entering through the driver, passes
//! through. Nothing happens before the first call: no constructor work, threads, files or mappings.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU8, Ordering};
use std::sync::OnceLock;

use vgpu_abi::cuda::{cudaError_enum, CUresult};
use vgpu_abi::nvml::{nvmlReturn_enum, nvmlReturn_t};

use crate::accounting::{Accounting, Charge};
use crate::alloc_table::{AllocTable, Key};
use crate::config::Config;
use crate::devices::{self, Devices};
use crate::hooks::compute::Compute;
use crate::limiter::SharedView;
use crate::region::{ChargeRecord, MemKind, Region};

/// What a CUDA hook answers in a process that failed closed.
pub const CUDA_REFUSED: CUresult = cudaError_enum::CUDA_ERROR_NOT_PERMITTED;
/// What an NVML hook answers in a process that failed closed.
pub const NVML_REFUSED: nvmlReturn_t = nvmlReturn_enum::NVML_ERROR_NO_PERMISSION;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const PASS_THROUGH: u8 = 3;
const REFUSED: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Kernel thread id of the initialising thread (0 = none).
static INIT_THREAD: AtomicU32 = AtomicU32::new(0);

/// What a hook should do.
#[derive(Clone, Copy)]
pub enum Gate {
    Ready(&'static Runtime),
    PassThrough,
    Refused,
}

/// The runtime's verdict for this call. Triggers init on the first call of the process.
#[inline(always)]
pub fn gate() -> Gate {
    match STATE.load(Ordering::Acquire) {
        READY => match RUNTIME.get() {
            Some(rt) => Gate::Ready(rt),
            None => Gate::PassThrough,
        },
        PASS_THROUGH => Gate::PassThrough,
        REFUSED => Gate::Refused,
        _ => gate_slow(),
    }
}

/// Whether this process failed closed (for NVML hooks, which answer with their own code).
pub fn refused() -> bool {
    matches!(gate(), Gate::Refused)
}

#[cold]
#[inline(never)]
fn gate_slow() -> Gate {
    let me = crate::sys::thread_id();
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        INIT_THREAD.store(me, Ordering::Release);
        // A bug in init must not leave the state at Initializing (every other thread would wait) or
        // hand out unlimited GPUs: fail closed.
        let state = std::panic::catch_unwind(initialize).unwrap_or_else(|_| {
            log_error!("internal error during initialisation; GPU access is refused");
            REFUSED
        });
        INIT_THREAD.store(0, Ordering::Release);
        STATE.store(state, Ordering::Release);
        return gate();
    }
    if INIT_THREAD.load(Ordering::Acquire) == me {
        // Our own init reached a hook (the driver's constructor, NVML calling CUDA, ...).
        return Gate::PassThrough;
    }
    wait_for_init()
}

/// Another thread is initialising. Init takes milliseconds; if it takes longer than this, that thread
/// is probably blocked on something we hold (the loader lock, in a library constructor), and waiting
/// for ever would deadlock the host.
const INIT_WAIT_LIMIT_NS: u64 = 5_000_000_000;

#[cold]
fn wait_for_init() -> Gate {
    let start = crate::sys::monotonic_ns();
    let mut spins = 0u32;
    loop {
        let state = STATE.load(Ordering::Acquire);
        if state != INITIALIZING && state != UNINIT {
            return gate();
        }
        if state == UNINIT {
            // The initialiser was forked away from (we are the child): try again ourselves.
            return gate_slow();
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else if spins < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(200));
            if crate::sys::monotonic_ns().saturating_sub(start) > INIT_WAIT_LIMIT_NS {
                log_warn_once!("vgpu initialisation by another thread is taking too long; this call is not limited");
                return Gate::PassThrough;
            }
        }
    }
}

/// Everything a ready process holds.
pub struct Runtime {
    // Nothing reads it after init today; kept so hooks can consult the parsed environment.
    #[allow(dead_code)]
    pub config: Config,
    devices: Devices,
    /// Region indices are NVML indices (devices enumerated through NVML), so NVML can be asked about a
    /// region index directly.
    nvml_indexed: bool,
    accounting: Accounting,
    /// The pid whose slot `accounting` charges to. After `fork` it is the parent's until the child
    /// registers its own, lazily, on its first charge.
    slot_owner: AtomicI32,
    /// The compute limiter (SM limits, `recent_kernel`, `last_kernel_time`): the launch hooks'.
    compute: Compute,
}

/// A device's numbers as the process should see them (hami-contract.md 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryView {
    /// The device's limit in bytes.
    pub limit: u64,
    /// What the container has charged on it.
    pub used: u64,
}

impl MemoryView {
    /// `cuMemGetInfo`: (free, total) from the driver's (free, total). total = min(limit, real total);
    /// free = min(limit − used, real free), never below zero.
    pub fn cuda(&self, real_free: u64, real_total: u64) -> (u64, u64) {
        let total = self.limit.min(real_total);
        let free = self
            .limit
            .saturating_sub(self.used)
            .min(real_free)
            .min(total);
        (free, total)
    }

    /// NVML memory info: (total, used, free) from the driver's total, free and `reserved` (0 for the v1
    /// struct). used = the container's usage; free = total − used − reserved, never below zero, and
    /// never above what the device really has free.
    pub fn nvml(&self, real_total: u64, real_free: u64, reserved: u64) -> (u64, u64, u64) {
        let total = self.limit.min(real_total);
        let free = total
            .saturating_sub(self.used)
            .saturating_sub(reserved)
            .min(real_free);
        (total, self.used, free)
    }
}

impl Runtime {
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The limit of a region index, if it has one.
    pub fn memory_limit(&self, device: usize) -> Option<u64> {
        self.accounting.device_limit(device)
    }

    /// The view of a limited device; `None` for an unlimited one (callers then show real values).
    pub fn memory_view(&self, device: usize) -> Option<MemoryView> {
        let limit = self.accounting.device_limit(device)?;
        self.accounting
            .sweep_dead_if_due(crate::sys::coarse_monotonic_ns());
        Some(MemoryView {
            limit,
            used: self.accounting.device_used(device),
        })
    }

    /// Reserves `bytes` on region index `device` before the driver is asked for them. Over the limit:
    /// `CUDA_ERROR_OUT_OF_MEMORY` and one rate-limited warning with the limit and the request.
    pub fn reserve(
        &self,
        device: usize,
        bytes: u64,
        kind: MemKind,
    ) -> Result<Charge<'_>, CUresult> {
        if self.slot_owner.load(Ordering::Relaxed) != FORK_GENERATION_PID.load(Ordering::Relaxed) {
            self.register_after_fork()?;
        }
        self.accounting
            .sweep_dead_if_due(crate::sys::coarse_monotonic_ns());
        self.accounting
            .charge(device, bytes, kind)
            .map_err(|error| {
                log_warn_limited!("refusing {bytes} bytes on device {device}: {error}");
                cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
            })
    }

    /// Takes `key`'s record out of the table (before the real free).
    pub fn untrack(&self, key: Key) -> Option<ChargeRecord> {
        self.accounting.table().remove(key)
    }

    /// Puts a record (back) in the table. If the table has no room the charge is given back instead
    /// and the answer is false.
    pub fn track(&self, key: Key, record: ChargeRecord) -> bool {
        if self.accounting.table().try_insert(key, record).is_err() {
            self.release(record);
            return false;
        }
        true
    }

    /// Gives back a committed charge.
    pub fn release(&self, record: ChargeRecord) {
        self.accounting.release_record(record);
    }

    /// Free bytes on region index `device` as NVML reports them (for measuring contexts).
    pub fn device_free_bytes(&self, device: usize) -> Option<u64> {
        if !self.nvml_indexed {
            return None;
        }
        devices::nvml_free_bytes(device)
    }

    /// The compute limiter the launch hooks ask.
    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// The region words the compute limiter shares with the container's other processes.
    pub fn limiter_view(&self) -> SharedView<'_> {
        self.accounting.region().limiter_view()
    }

    /// In a forked child: register the child's own slot and forget the parent's allocations.
    #[cold]
    fn register_after_fork(&self) -> Result<(), CUresult> {
        let pid = crate::sys::proc_info::current_pid();
        // Threads of the child race here at most once; the loser sees the new owner and returns.
        static REGISTERING: AtomicBool = AtomicBool::new(false);
        while REGISTERING.swap(true, Ordering::Acquire) {
            std::thread::yield_now();
        }
        let result = if self.slot_owner.load(Ordering::Relaxed) == pid {
            Ok(())
        } else {
            let start = crate::sys::proc_info::current_start_time().unwrap_or(0);
            match self.accounting.region().register(pid, start) {
                Ok(slot) => {
                    self.accounting.adopt_after_fork(slot);
                    self.slot_owner.store(pid, Ordering::Relaxed);
                    Ok(())
                }
                Err(error) => {
                    log_error_limited!(
                        "cannot register this forked process in the region: {error}"
                    );
                    Err(CUDA_REFUSED)
                }
            }
        };
        REGISTERING.store(false, Ordering::Release);
        result
    }

    /// At exit: give this process's usage back and free its slot, if the slot is this process's.
    fn unregister(&self) {
        let pid = crate::sys::proc_info::current_pid();
        if self.slot_owner.load(Ordering::Relaxed) != pid {
            return; // a forked child that never charged: the slot is its parent's
        }
        if let Err(error) = self.accounting.region().unregister(self.accounting.slot()) {
            log_warn!("cannot unregister from the region: {error}");
        }
        self.slot_owner.store(0, Ordering::Relaxed);
    }
}

/// This process's pid as last seen by the fork handler (the pid `slot_owner` must equal).
static FORK_GENERATION_PID: AtomicI32 = AtomicI32::new(0);

#[cold]
fn initialize() -> u8 {
    let vars = crate::sys::env::collect_with_prefixes(&[
        "CUDA_",
        "GPU_CORE_",
        "LIBCUDA_",
        "NVIDIA_",
        "RECORD_KERNEL_",
    ]);
    let config = match Config::from_vars(vars) {
        Ok(config) => config,
        Err(error) => {
            log_error!("{error}");
            return REFUSED;
        }
    };
    for warning in &config.warnings {
        log_warn!("{warning}");
    }
    for notice in &config.notices {
        log_info!("{notice}");
    }
    if !config.any_limit() {
        log_debug!("no memory or SM limit configured: pass-through");
        return PASS_THROUGH;
    }
    let (uuids, nvml_indexed) = match devices::enumerate_nvml() {
        Ok(uuids) => (uuids, true),
        Err(nvml_error) => match devices::enumerate_cuda() {
            Ok(uuids) => {
                log_warn!("NVML unavailable ({nvml_error}); device indices follow CUDA ordinals");
                (uuids, false)
            }
            Err(cuda_error) => {
                // No usable driver: its own errors reach the application unchanged.
                log_info!("no usable driver ({nvml_error}; {cuda_error}): pass-through");
                return PASS_THROUGH;
            }
        },
    };
    let (setup, warnings) = config.region_setup(&uuids);
    for warning in &warnings {
        log_warn!("{warning}");
    }
    let region = match Region::open(&config.shared_cache_path, &setup) {
        Ok(region) => region,
        Err(error) => {
            log_error!("{error}; GPU access is refused");
            return REFUSED;
        }
    };
    for notice in region.notices() {
        log_info!("{notice}");
    }
    let pid = crate::sys::proc_info::current_pid();
    let start = crate::sys::proc_info::current_start_time().unwrap_or(0);
    let slot = match region.register(pid, start) {
        Ok(slot) => slot,
        Err(error) => {
            log_error!("{error}; GPU access is refused");
            return REFUSED;
        }
    };
    region.stamp_last_kernel_time(crate::sys::epoch_secs_coarse());
    let table = match AllocTable::with_capacity(crate::alloc_table::DEFAULT_CAPACITY) {
        Ok(table) => table,
        Err(error) => {
            let _ = region.unregister(slot);
            log_error!("cannot reserve the allocation table: {error}; GPU access is refused");
            return REFUSED;
        }
    };
    FORK_GENERATION_PID.store(pid, Ordering::Relaxed);
    // Region index order, as the region's `sm_limit` array (hami-contract.md 2.4).
    let sm_limits: Vec<Option<u32>> = setup.devices.iter().map(|d| d.sm_limit_percent).collect();
    let compute = Compute::new(
        &sm_limits,
        config.core_policy,
        config.record_kernel_interval_secs,
    );
    let runtime = Runtime {
        config,
        devices: Devices::new(uuids),
        nvml_indexed,
        accounting: Accounting::new(region, slot, table),
        slot_owner: AtomicI32::new(pid),
        compute,
    };
    if RUNTIME.set(runtime).is_err() {
        return REFUSED;
    }
    if let Some(rt) = RUNTIME.get() {
        crate::hooks::compute::attach(rt);
    }
    register_process_hooks();
    log_debug!(
        "ready: {} device(s), slot {}",
        setup.devices.len(),
        slot.index()
    );
    READY
}

static PROCESS_HOOKS: AtomicBool = AtomicBool::new(false);

/// `pthread_atfork` and `atexit`, once per process (a forked child inherits both).
fn register_process_hooks() {
    if PROCESS_HOOKS.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handlers are plain `extern "C"` functions that live as long as the library.
    unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
        libc::atexit(at_exit);
    }
}

/// In the child: it is another process, so it must not write into the parent's slot. It registers its
/// own slot on its next CUDA call. An init that another thread was running in the parent is lost with
/// that thread, so it starts again.
extern "C" fn after_fork_in_child() {
    let _ = STATE.compare_exchange(INITIALIZING, UNINIT, Ordering::AcqRel, Ordering::Acquire);
    INIT_THREAD.store(0, Ordering::Release);
    // Only this thread exists in the child now. Its slot is registered on the first charge, which
    // sees that the owner is not this pid.
    FORK_GENERATION_PID.store(crate::sys::proc_info::current_pid(), Ordering::Relaxed);
    // The parent's probes wait on the parent's events; the child's launches start afresh (the
    // shared budget is the container's, so it carries on as it was).
    if let Some(rt) = RUNTIME.get() {
        rt.compute.forget_probes_after_fork();
    }
}

/// Zeroes this process's counters and frees its slot (hami-contract.md 3.5 item 4).
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(rt) = RUNTIME.get() {
            rt.unregister();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn cuda_view_clamps_to_limit_and_real_free() {
        let view = MemoryView {
            limit: 4 * GIB,
            used: GIB,
        };
        assert_eq!(view.cuda(30 * GIB, 40 * GIB), (3 * GIB, 4 * GIB));
        // The device itself has less free than the limit leaves: the driver's number wins.
        assert_eq!(view.cuda(GIB, 40 * GIB), (GIB, 4 * GIB));
        // A limit above the device: the device's total.
        let big = MemoryView {
            limit: 100 * GIB,
            used: 0,
        };
        assert_eq!(big.cuda(40 * GIB, 40 * GIB), (40 * GIB, 40 * GIB));
    }

    #[test]
    fn over_limit_usage_shows_zero_free_not_an_underflow() {
        let view = MemoryView {
            limit: GIB,
            used: 2 * GIB,
        };
        assert_eq!(view.cuda(30 * GIB, 40 * GIB), (0, GIB));
        assert_eq!(view.nvml(40 * GIB, 30 * GIB, 0), (GIB, 2 * GIB, 0));
    }

    #[test]
    fn nvml_view_subtracts_reserved() {
        let view = MemoryView {
            limit: 4 * GIB,
            used: GIB,
        };
        assert_eq!(view.nvml(40 * GIB, 39 * GIB, 0), (4 * GIB, GIB, 3 * GIB));
        assert_eq!(
            view.nvml(40 * GIB, 39 * GIB, GIB / 2),
            (4 * GIB, GIB, 3 * GIB - GIB / 2)
        );
        assert_eq!(view.nvml(40 * GIB, GIB, 0), (4 * GIB, GIB, GIB));
    }
}
