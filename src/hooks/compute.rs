//! Compute isolation at the launch hooks: the driver side of the limiter (`crate::limiter`).
//!
//! The limiter is pure policy; this module gives it what it cannot have itself: the clocks, the
//! device of a launch, CUDA timing events around sampled launches, and the launching thread's
//! pauses. Design and numbers: `docs/compute-isolation.md`.
//!
//! One launch (every launch path goes through [`launch`] or [`launch_multi_device`]):
//!
//! 1. Find the region index of the launch's device: the current context's device, or for launches
//!    that name a stream (`cuLaunchKernelEx`, `cuGraphLaunch`) the stream's context's device.
//! 2. If that device is limited right now and the stream is being captured, the launch does not
//!    run (it becomes a graph node, paid when the graph is launched): submit it untouched.
//! 3. [`LaunchGate::admit`] with this thread's `Launcher` (its credit and memo, kept in the hooks'
//!    thread-local block): marks `recent_kernel`, stamps `last_kernel_time`, polls finished probes,
//!    pays from the thread's credit or buys more from the device's shared bucket, and waits in this
//!    thread when the container is over its share or held by priority. No lock of ours is held
//!    while it waits.
//! 4. If the ticket carries a probe: create two timing events in the stream's context and record
//!    the first on the launch stream; the real launch; record the second right after it.
//! 5. [`LaunchGate::launched`]: a refused launch is refunded; a recorded probe goes in flight and a
//!    later launch of this process polls it (`cuEventQuery`, then `cuEventElapsedTime`).
//!
//! Cost of a launch that is not throttled: the runtime gate (one load) and the gate's inline path
//! (relaxed loads; the thread's coarse clock reading, refreshed at most every few launches). A
//! container with an SM limit adds the current-device lookup (nothing when the process sees one
//! device, else `cuCtxGetCurrent` plus a thread-local) and, for a remembered kernel, one
//! thread-local subtraction from the thread's credit; buying credit is one CAS on the device's
//! bucket, and a `cuStreamIsCapturing` is asked only while a stream capture is in progress in the
//! process. No allocation, lock, formatting or syscall.

use std::ffi::c_uint;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use vgpu_abi::cuda::{
    cudaError_enum, CUcontext, CUdevice_attribute_enum, CUevent, CUresult, CUstream,
    CUDA_LAUNCH_PARAMS,
};

use super::real_cuda;
use crate::limiter::{
    Clock, CorePolicy, DeviceLimit, GateConfig, LaunchGate, LaunchOutcome, Pause, ProbeDriver,
    ProbeId, ProbeResult, SharedView, Ticket, Work, MAX_DEVICES,
};
use crate::runtime::Runtime;

const SUCCESS: CUresult = cudaError_enum::CUDA_SUCCESS;
/// `CU_EVENT_DEFAULT` (cuda.h): a timing event.
const EVENT_TIMING: c_uint = 0;
/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` (cuda.h): stream handles that mean "the current
/// context's default stream", like NULL.
const STREAM_LEGACY: usize = 0x1;
const STREAM_PER_THREAD: usize = 0x2;
/// The device index the gate treats as "not one of the container's devices" (never limited).
const NO_DEVICE: usize = MAX_DEVICES;

/// The process's limiter and the timing events of its probes. Built once at init.
///
/// `repr(C)` and line-aligned for the order: what every launch reads (the flags, the view, then
/// the gate, whose own first fields are its hot ones) lies in the first two cache lines.
#[repr(C, align(64))]
pub struct Compute {
    /// Whether any device has an SM limit. Without one, a launch's device does not matter (the
    /// gate only marks `recent_kernel` and stamps `last_kernel_time`), so it is not looked up.
    any_limit: bool,
    /// Whether the devices' SM counts were learnt (needs the application's `cuInit`).
    sm_counts_known: AtomicBool,
    /// The shared words of the region, resolved once after init (`attach`); the region is never
    /// unmapped while the process lives.
    view: OnceLock<SharedView<'static>>,
    gate: LaunchGate,
    /// `start`/`end` event of each probe slot, as integers (0 = none). The gate gives exactly one
    /// thread ownership of a slot at a time, so a slot's two words are never written concurrently.
    events: [ProbeEvents; crate::limiter::tuning::MAX_PROBES],
}

#[derive(Default)]
struct ProbeEvents {
    start: AtomicUsize,
    end: AtomicUsize,
}

impl Compute {
    /// Builds the gate from the region's per-device SM limits (region index order), the policy and
    /// `RECORD_KERNEL_INTERVAL`. Allocates the gate's cost table (init only).
    pub fn new(
        sm_limits: &[Option<u32>],
        policy: crate::config::CorePolicy,
        record_kernel_interval_secs: u64,
    ) -> Compute {
        let mut devices = [DeviceLimit::default(); MAX_DEVICES];
        for (limit, percent) in devices.iter_mut().zip(sm_limits) {
            limit.sm_limit_percent = percent.unwrap_or(0);
        }
        let config = GateConfig {
            devices,
            policy: match policy {
                crate::config::CorePolicy::Default => CorePolicy::Default,
                crate::config::CorePolicy::Force => CorePolicy::Force,
                crate::config::CorePolicy::Disable => CorePolicy::Disable,
            },
            kernel_time_interval_ns: record_kernel_interval_secs
                .max(1)
                .saturating_mul(1_000_000_000),
        };
        let gate = LaunchGate::new(&config);
        let any_limit = gate.limits_any_device();
        Compute {
            any_limit,
            sm_counts_known: AtomicBool::new(false),
            view: OnceLock::new(),
            gate,
            events: Default::default(),
        }
    }

    /// In a forked child: the parent's probes and their events mean nothing here (the events
    /// belong to the parent's contexts), so they are forgotten, not destroyed.
    pub fn forget_probes_after_fork(&self) {
        for pair in &self.events {
            pair.start.store(0, Ordering::Relaxed);
            pair.end.store(0, Ordering::Relaxed);
        }
        self.gate.forget_probes_after_fork();
        // The forking thread is the child's only thread: its credit was paid by the parent.
        crate::sys::thread_state::with(|thread| thread.launcher.clear());
    }

    /// Learns every visible device's SM count (cold, once; retried until the driver answers).
    #[cold]
    fn learn_sm_counts(&self, rt: &Runtime) {
        let real = real_cuda();
        let mut count = 0;
        // SAFETY: valid out-pointer.
        if unsafe { real.cuDeviceGetCount(&mut count) } != SUCCESS {
            return;
        }
        for ordinal in 0..count {
            let Some(device) = rt.devices().of_cuda_ordinal(ordinal) else {
                continue;
            };
            let mut sms = 0;
            // SAFETY: valid out-pointer and an ordinal the driver just counted.
            let result = unsafe {
                real.cuDeviceGetAttribute(
                    &mut sms,
                    CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    ordinal,
                )
            };
            if result == SUCCESS {
                self.gate
                    .set_sm_count(device, u32::try_from(sms).unwrap_or(0));
            }
        }
        self.sm_counts_known.store(true, Ordering::Relaxed);
    }
}

/// After the runtime is in its static: resolve the region's shared words once, and let the gate
/// reset buckets left by another boot.
pub fn attach(rt: &'static Runtime) {
    let view = rt.limiter_view();
    let boot_epoch_s =
        crate::sys::epoch_secs_coarse().saturating_sub(crate::sys::monotonic_ns() / 1_000_000_000);
    rt.compute().gate.attach(&view, boot_epoch_s);
    let _ = rt.compute().view.set(view);
}

/// Where a launch runs, as the launch call names it.
#[derive(Clone, Copy)]
pub struct Placement {
    pub stream: CUstream,
    /// A `_ptsz` entry point: NULL means the per-thread default stream, and the event and capture
    /// calls must be their `_ptsz` forms too.
    pub per_thread: bool,
    /// The launch names its stream's context (`cuLaunchKernelEx`, `cuGraphLaunch`): take the
    /// device from the stream, which may belong to a context other than the current one.
    pub device_of_stream: bool,
}

/// One launch on one device: decide, wait if needed, probe if asked, `submit` (the real call), and
/// tell the gate what happened. Returns `submit`'s result.
#[inline]
pub fn launch(
    rt: &Runtime,
    placement: Placement,
    work: Work,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    let compute = rt.compute();
    let Some(view) = compute.view.get() else {
        return submit();
    };
    let (device, foreign_context) = if compute.any_limit {
        if !compute.sm_counts_known.load(Ordering::Relaxed) {
            compute.learn_sm_counts(rt);
        }
        resolve_device(rt, &placement)
    } else {
        (NO_DEVICE, None)
    };
    if super::capture::any_in_progress()
        && compute.gate.enforcing_on(view, device)
        && capturing(&placement)
    {
        // Captured work does not run now; the graph's replays pay for it.
        return submit();
    }
    let mut probes = HookProbes {
        events: &compute.events,
    };
    let ticket = admit(compute, view, device, &work, &mut probes);
    if ticket.probe().is_none() {
        // The common case: nothing to measure, so nothing around the real call.
        let result = submit();
        finish(
            compute,
            view,
            &mut probes,
            ticket,
            false,
            &placement,
            result,
        );
        return result;
    }
    launch_probed(
        compute,
        view,
        &mut probes,
        ticket,
        &placement,
        foreign_context,
        submit,
    )
}

/// [`LaunchGate::admit`] with the calling thread's `Launcher` (its credit and memo).
#[inline(always)]
fn admit(
    compute: &Compute,
    view: &SharedView<'_>,
    device: usize,
    work: &Work,
    probes: &mut HookProbes<'_>,
) -> Ticket {
    crate::sys::thread_state::with(|thread| {
        compute
            .gate
            .admit(view, device, work, &SystemClock, probes, &thread.launcher)
    })
}

/// [`launch`] for a launch the gate wants measured: the probe's events around the real call.
#[inline(never)]
fn launch_probed(
    compute: &Compute,
    view: &SharedView<'_>,
    probes: &mut HookProbes<'_>,
    ticket: Ticket,
    placement: &Placement,
    foreign_context: Option<CUcontext>,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    let started = ticket
        .probe()
        .is_some_and(|probe| probes.start(probe, placement, foreign_context));
    let result = submit();
    finish(compute, view, probes, ticket, started, placement, result);
    result
}

/// After the real launch: record the probe's second event and hand the outcome to the gate.
#[inline]
fn finish(
    compute: &Compute,
    view: &SharedView<'_>,
    probes: &mut HookProbes<'_>,
    ticket: Ticket,
    started: bool,
    placement: &Placement,
    result: CUresult,
) {
    if ticket.probe().is_none() {
        // No probe (the common case): only the outcome matters to the gate.
        let outcome = if result == SUCCESS {
            LaunchOutcome::Submitted {
                probe_recorded: false,
            }
        } else {
            LaunchOutcome::Refused
        };
        compute.gate.launched(view, ticket, outcome, &SystemClock);
        return;
    }
    let outcome = if result == SUCCESS {
        let recorded = started
            && ticket
                .probe()
                .is_some_and(|probe| probes.end(probe, placement));
        LaunchOutcome::Submitted {
            probe_recorded: recorded,
        }
    } else {
        LaunchOutcome::Refused
    };
    let in_flight = matches!(
        outcome,
        LaunchOutcome::Submitted {
            probe_recorded: true
        }
    );
    if started && !in_flight {
        // No measurement will come: the gate frees the slot, the events are ours to destroy.
        if let Some(probe) = ticket.probe() {
            probes.release(probe);
        }
    }
    compute.gate.launched(view, ticket, outcome, &SystemClock);
}

/// `cuLaunchCooperativeKernelMultiDevice`: each device in the list pays for its own launch. The
/// devices are admitted one after another (each may wait), then the one real call launches all.
pub fn launch_multi_device(
    rt: &Runtime,
    list: *const CUDA_LAUNCH_PARAMS,
    count: c_uint,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    let compute = rt.compute();
    let Some(view) = compute.view.get() else {
        return submit();
    };
    if list.is_null() || count == 0 {
        return submit(); // the driver's own error
    }
    if compute.any_limit && !compute.sm_counts_known.load(Ordering::Relaxed) {
        compute.learn_sm_counts(rt);
    }
    // A device appears at most once in the list, so the container's devices bound what we admit;
    // entries past that are launched but not limited (they cannot be region devices).
    let admitted = (count as usize).min(MAX_DEVICES);
    let mut tickets: [Option<(Ticket, bool, Placement)>; MAX_DEVICES] = [None; MAX_DEVICES];
    let mut probes = HookProbes {
        events: &compute.events,
    };
    for (i, slot) in tickets.iter_mut().enumerate().take(admitted) {
        // SAFETY: the caller passes `count` entries; `i < count`.
        let params = unsafe { &*list.add(i) };
        let placement = Placement {
            stream: params.hStream,
            per_thread: false,
            device_of_stream: true,
        };
        let (device, foreign_context) = if compute.any_limit {
            resolve_device(rt, &placement)
        } else {
            (NO_DEVICE, None)
        };
        if super::capture::any_in_progress()
            && compute.gate.enforcing_on(view, device)
            && capturing(&placement)
        {
            continue;
        }
        let work = Work::kernel(
            params.function as u64,
            blocks(params.gridDimX, params.gridDimY, params.gridDimZ),
            threads(params.blockDimX, params.blockDimY, params.blockDimZ),
        );
        let ticket = admit(compute, view, device, &work, &mut probes);
        let started = ticket
            .probe()
            .is_some_and(|probe| probes.start(probe, &placement, foreign_context));
        *slot = Some((ticket, started, placement));
    }
    let result = submit();
    for (ticket, started, placement) in tickets.iter().flatten() {
        finish(
            compute,
            view,
            &mut probes,
            *ticket,
            *started,
            placement,
            result,
        );
    }
    result
}

/// Blocks of a grid, as the limiter keys launches.
#[inline]
pub fn blocks(x: c_uint, y: c_uint, z: c_uint) -> u64 {
    u64::from(x)
        .saturating_mul(u64::from(y))
        .saturating_mul(u64::from(z))
}

/// Threads of a block.
#[inline]
pub fn threads(x: c_uint, y: c_uint, z: c_uint) -> u32 {
    x.saturating_mul(y).saturating_mul(z)
}

/// The region index of the launch's device (`NO_DEVICE` when it is not one of the container's),
/// and the stream's context when it is not the current one (events must be created in it).
#[inline(always)]
fn resolve_device(rt: &Runtime, placement: &Placement) -> (usize, Option<CUcontext>) {
    let by_default_stream = matches!(
        placement.stream as usize,
        0 | STREAM_LEGACY | STREAM_PER_THREAD
    );
    if !placement.device_of_stream || by_default_stream {
        return (rt.devices().current().unwrap_or(NO_DEVICE), None);
    }
    device_of_stream(rt, placement)
}

/// `resolve_device` for a launch that names its stream: the stream's context may not be current.
#[inline(never)]
fn device_of_stream(rt: &Runtime, placement: &Placement) -> (usize, Option<CUcontext>) {
    let real = real_cuda();
    let mut stream_context: CUcontext = std::ptr::null_mut();
    // SAFETY: the caller's stream and a valid out-pointer.
    let found = unsafe {
        if placement.per_thread {
            real.cuStreamGetCtx_ptsz(placement.stream, &mut stream_context)
        } else {
            real.cuStreamGetCtx(placement.stream, &mut stream_context)
        }
    };
    let mut current: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    let have_current = unsafe { real.cuCtxGetCurrent(&mut current) } == SUCCESS;
    if found != SUCCESS || stream_context.is_null() || (have_current && stream_context == current) {
        // An invalid stream fails the launch itself; charge it to the current device meanwhile
        // (a refused launch is refunded).
        return (rt.devices().current().unwrap_or(NO_DEVICE), None);
    }
    (
        device_of_context(rt, stream_context).unwrap_or(NO_DEVICE),
        Some(stream_context),
    )
}

/// The region index of a context that is not current: made current for the question (cold; the
/// stream of a launch belongs to another context only in multi-GPU code that does not switch).
#[cold]
fn device_of_context(rt: &Runtime, context: CUcontext) -> Option<usize> {
    let real = real_cuda();
    // SAFETY: a context the driver just named; popped again below.
    if unsafe { real.cuCtxPushCurrent_v2(context) } != SUCCESS {
        return None;
    }
    let device = rt.devices().current();
    let mut popped: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer; undoes the push above.
    unsafe { real.cuCtxPopCurrent_v2(&mut popped) };
    device
}

/// Whether the launch's stream is being captured into a graph (a failed query counts as no: the
/// launch then fails or runs, and is paid either way). Callers ask only while a capture is in
/// progress somewhere in the process (`capture::any_in_progress`): otherwise no stream can be
/// capturing.
#[inline]
fn capturing(placement: &Placement) -> bool {
    super::capture::driver_says_capturing(placement.stream, placement.per_thread)
}

/// The system clocks (vDSO reads).
struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn monotonic_ns(&self) -> u64 {
        crate::sys::monotonic_ns()
    }

    #[inline]
    fn coarse_monotonic_ns(&self) -> u64 {
        coarse_monotonic_ns()
    }

    fn epoch_s(&self) -> u64 {
        crate::sys::epoch_secs_coarse()
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the last tick of `CLOCK_MONOTONIC`, never ahead of it, a few ns
/// to read. (Belongs with the other clocks in `sys`; kept here until that module takes it.)
#[inline]
fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC_COARSE exists since Linux 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The gate's view of the driver: timing events of the probes, and the launching thread's pauses.
struct HookProbes<'a> {
    events: &'a [ProbeEvents],
}

impl HookProbes<'_> {
    /// Creates the probe's two events (in `context` when the stream is not in the current one) and
    /// records the first on the launch stream. False (nothing left behind) if any call failed.
    fn start(&mut self, probe: ProbeId, placement: &Placement, context: Option<CUcontext>) -> bool {
        let Some(pair) = self.events.get(probe.index()) else {
            return false;
        };
        let real = real_cuda();
        if let Some(context) = context {
            // SAFETY: a context the driver named for this stream; popped below.
            if unsafe { real.cuCtxPushCurrent_v2(context) } != SUCCESS {
                return false;
            }
        }
        let mut start: CUevent = std::ptr::null_mut();
        let mut end: CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointers.
        let created_start = unsafe { real.cuEventCreate(&mut start, EVENT_TIMING) } == SUCCESS;
        // SAFETY: as above.
        let created_end =
            created_start && unsafe { real.cuEventCreate(&mut end, EVENT_TIMING) } == SUCCESS;
        if context.is_some() {
            let mut popped: CUcontext = std::ptr::null_mut();
            // SAFETY: valid out-pointer; undoes the push above.
            unsafe { real.cuCtxPopCurrent_v2(&mut popped) };
        }
        let recorded = created_end && record(start, placement);
        if !recorded {
            destroy(start);
            destroy(end);
            return false;
        }
        pair.start.store(start as usize, Ordering::Relaxed);
        pair.end.store(end as usize, Ordering::Relaxed);
        true
    }

    /// Records the probe's second event right after the launch.
    fn end(&mut self, probe: ProbeId, placement: &Placement) -> bool {
        self.events
            .get(probe.index())
            .is_some_and(|pair| record(pair.end.load(Ordering::Relaxed) as CUevent, placement))
    }
}

impl ProbeDriver for HookProbes<'_> {
    fn query(&mut self, probe: ProbeId) -> ProbeResult {
        let Some(pair) = self.events.get(probe.index()) else {
            return ProbeResult::Failed;
        };
        let start = pair.start.load(Ordering::Relaxed) as CUevent;
        let end = pair.end.load(Ordering::Relaxed) as CUevent;
        if start.is_null() || end.is_null() {
            return ProbeResult::Failed;
        }
        let real = real_cuda();
        // SAFETY: events this process created and has not destroyed (the slot is ours).
        match unsafe { real.cuEventQuery(end) } {
            SUCCESS => {}
            cudaError_enum::CUDA_ERROR_NOT_READY => return ProbeResult::NotReady,
            _ => return ProbeResult::Failed,
        }
        let mut milliseconds = 0f32;
        // SAFETY: valid out-pointer; both events completed (the later one did).
        if unsafe { real.cuEventElapsedTime(&mut milliseconds, start, end) } != SUCCESS
            || !milliseconds.is_finite()
            || milliseconds < 0.0
        {
            return ProbeResult::Failed;
        }
        ProbeResult::Elapsed {
            device_ns: (f64::from(milliseconds) * 1e6) as u64,
        }
    }

    fn release(&mut self, probe: ProbeId) {
        if let Some(pair) = self.events.get(probe.index()) {
            destroy(pair.start.swap(0, Ordering::Relaxed) as CUevent);
            destroy(pair.end.swap(0, Ordering::Relaxed) as CUevent);
        }
    }

    fn pause(&mut self, pause: Pause) {
        match pause {
            Pause::Spin { iterations } => {
                for _ in 0..iterations {
                    std::hint::spin_loop();
                }
            }
            Pause::Yield => std::thread::yield_now(),
            Pause::Sleep { ns } => std::thread::sleep(Duration::from_nanos(ns)),
        }
    }
}

/// `cuEventRecord[_ptsz]` on the launch's stream.
fn record(event: CUevent, placement: &Placement) -> bool {
    let real = real_cuda();
    // SAFETY: an event this process created, and the caller's stream.
    let result = unsafe {
        if placement.per_thread {
            real.cuEventRecord_ptsz(event, placement.stream)
        } else {
            real.cuEventRecord(event, placement.stream)
        }
    };
    result == SUCCESS
}

fn destroy(event: CUevent) {
    if !event.is_null() {
        // SAFETY: an event this process created; destroying it once (the caller gave up its slot).
        unsafe { real_cuda().cuEventDestroy_v2(event) };
    }
}
