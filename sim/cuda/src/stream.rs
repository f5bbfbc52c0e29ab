//! Streams, events, and how work is placed on the device timeline.
//!
//! A stream keeps its tail: the simulated time its last queued work ends. A launch starts no earlier
//! than the stream is ready (its tail, plus the legacy-stream rules below) and no earlier than the
//! device's shared timeline allows (`Machine::launch`, which serialises every process's kernels on
//! one device). Synchronising waits, in real time, until the simulated end.
//!
//! Legacy default stream semantics: work on the legacy stream waits for all earlier work on the
//! context's blocking streams, and blocking streams wait for earlier legacy work. Streams created with
//! `CU_STREAM_NON_BLOCKING` take part in neither. The per-thread default stream is a blocking stream.

use std::cell::RefCell;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::handles::Handle;
use crate::{graph, memory};

/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` (cuda.h).
pub(crate) const STREAM_LEGACY: Handle = 1;
pub(crate) const STREAM_PER_THREAD: Handle = 2;
const STREAM_NON_BLOCKING: u32 = 1;
/// Priorities a stream may have: 0 (lowest) to -5 (greatest), as on A100/H100.
pub(crate) const LEAST_PRIORITY: i32 = 0;
pub(crate) const GREATEST_PRIORITY: i32 = -5;

const EVENT_BLOCKING_SYNC: u32 = 1;
const EVENT_DISABLE_TIMING: u32 = 2;
const EVENT_INTERPROCESS: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StreamKind {
    Legacy,
    PerThread,
    Created,
}

pub(crate) struct Stream {
    pub ctx: Handle,
    pub kind: StreamKind,
    pub flags: u32,
    pub priority: i32,
    pub tail_ns: u64,
    pub id: u64,
    /// The capture sequence this stream records into, if any.
    pub capture: Option<u64>,
}

impl Stream {
    fn blocking(&self) -> bool {
        self.kind == StreamKind::Legacy || self.flags & STREAM_NON_BLOCKING == 0
    }
}

pub(crate) struct Event {
    pub ctx: Handle,
    pub flags: u32,
    /// When the recorded work completes; `None` until recorded.
    pub time_ns: Option<u64>,
    /// Recorded in a capturing stream (then it stands for a point in the graph, not a time).
    pub capture: Option<u64>,
}

pub(crate) fn make_stream(
    state: &mut State,
    ctx: Handle,
    kind: StreamKind,
    flags: u32,
    priority: i32,
) -> Handle {
    let id = state.next_id();
    state.streams.insert(Stream {
        ctx,
        kind,
        flags,
        priority,
        tail_ns: 0,
        id,
        capture: None,
    })
}

thread_local! {
    /// This thread's per-thread default stream in each context it used one in.
    static PER_THREAD: RefCell<Vec<(Handle, Handle)>> = const { RefCell::new(Vec::new()) };
}

fn per_thread_stream(state: &mut State, ctx: Handle) -> Handle {
    let known = PER_THREAD
        .try_with(|m| m.borrow().iter().find(|(c, _)| *c == ctx).map(|(_, s)| *s))
        .ok()
        .flatten();
    if let Some(s) = known.filter(|s| state.streams.get(*s).is_some_and(|st| st.ctx == ctx)) {
        return s;
    }
    let s = make_stream(state, ctx, StreamKind::PerThread, 0, LEAST_PRIORITY);
    let _ = PER_THREAD.try_with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|(c, _)| *c != ctx);
        m.push((ctx, s));
    });
    s
}

/// The stream a `CUstream` argument names. NULL is the legacy stream, or the per-thread stream for
/// the `_ptsz`/`_ptds` entry points (`per_thread_default`).
pub(crate) fn resolve(
    state: &mut State,
    stream: Handle,
    per_thread_default: bool,
) -> CuResult<Handle> {
    let special = match stream {
        0 if per_thread_default => STREAM_PER_THREAD,
        0 => STREAM_LEGACY,
        s => s,
    };
    match special {
        STREAM_LEGACY => Ok(state.current()?.1.legacy),
        STREAM_PER_THREAD => {
            let (ctx, _) = state.current()?;
            Ok(per_thread_stream(state, ctx))
        }
        s if state.streams.contains(s) => {
            let ctx = state.streams.get(s).map(|st| st.ctx).unwrap_or(0);
            if state.contexts.contains(ctx) {
                Ok(s)
            } else {
                Err(E::CUDA_ERROR_INVALID_CONTEXT)
            }
        }
        _ => Err(E::CUDA_ERROR_INVALID_HANDLE),
    }
}

/// When everything `stream` must wait for has finished (simulated ns).
pub(crate) fn ready_at(state: &State, stream: Handle) -> u64 {
    let Some(s) = state.streams.get(stream) else {
        return 0;
    };
    let Some(ctx) = state.contexts.get(s.ctx) else {
        return s.tail_ns;
    };
    match s.kind {
        StreamKind::Legacy => s.tail_ns.max(ctx.blocking_tail_ns),
        _ if s.blocking() => {
            let legacy_tail = state.streams.get(ctx.legacy).map_or(0, |l| l.tail_ns);
            s.tail_ns.max(legacy_tail)
        }
        _ => s.tail_ns,
    }
}

/// Note that work on `stream` ends at `end_ns`.
pub(crate) fn enqueue(state: &mut State, stream: Handle, end_ns: u64) {
    let Some(s) = state.streams.get_mut(stream) else {
        return;
    };
    s.tail_ns = s.tail_ns.max(end_ns);
    let (ctx, blocking) = (s.ctx, s.blocking());
    if blocking {
        if let Some(c) = state.contexts.get_mut(ctx) {
            c.blocking_tail_ns = c.blocking_tail_ns.max(end_ns);
        }
    }
}

/// The device a stream's work runs on.
pub(crate) fn device_of(state: &State, stream: Handle) -> CuResult<u32> {
    let s = state
        .streams
        .get(stream)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    state
        .contexts
        .get(s.ctx)
        .map(|c| c.device)
        .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)
}

/// Queue `duration_ns` of device time on `stream`: after the stream is ready and after the device's
/// shared timeline. Returns the simulated (start, end).
pub(crate) fn schedule(
    drv: &Driver,
    state: &mut State,
    stream: Handle,
    duration_ns: u64,
) -> CuResult<(u64, u64)> {
    let device = device_of(state, stream)?;
    if drv.device_lost(device) {
        return Err(E::CUDA_ERROR_LAUNCH_FAILED);
    }
    let not_before = ready_at(state, stream);
    let (start, end) = drv.launch(device, duration_ns, not_before);
    enqueue(state, stream, end);
    Ok((start, end))
}

/// When all work on `ctx`'s streams ends.
pub(crate) fn context_idle_at(state: &State, ctx: Handle) -> u64 {
    state
        .streams
        .iter()
        .filter(|(_, s)| s.ctx == ctx)
        .map(|(_, s)| s.tail_ns)
        .max()
        .unwrap_or(0)
}

pub(crate) fn remove_context_streams(state: &mut State, ctx: Handle) {
    for s in state.streams.handles_where(|s| s.ctx == ctx) {
        state.streams.remove(s);
    }
    for e in state.events.handles_where(|e| e.ctx == ctx) {
        state.events.remove(e);
    }
}

// ---- stream entry points --------------------------------------------------------------------------

pub(crate) fn create(flags: u32, priority: i32) -> CuResult<Handle> {
    if flags & !STREAM_NON_BLOCKING != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    // Out-of-range priorities are clamped, as the driver does.
    let priority = priority.clamp(GREATEST_PRIORITY, LEAST_PRIORITY);
    Ok(make_stream(
        &mut state,
        ctx,
        StreamKind::Created,
        flags,
        priority,
    ))
}

pub(crate) fn destroy(stream: Handle) -> CuResult {
    let mut state = driver()?.lock();
    match state.streams.get(stream) {
        Some(s) if s.kind == StreamKind::Created => {}
        _ => return Err(E::CUDA_ERROR_INVALID_HANDLE),
    }
    graph::stream_gone(&mut state, stream);
    state.streams.remove(stream);
    Ok(())
}

/// `cuStreamSynchronize`: wait until the stream's work has finished.
pub(crate) fn synchronize(stream: Handle, per_thread_default: bool) -> CuResult {
    let drv = driver()?;
    let until = {
        let mut state = drv.lock();
        let s = resolve(&mut state, stream, per_thread_default)?;
        graph::refuse_while_capturing(&mut state, s)?;
        let device = device_of(&state, s)?;
        if drv.device_lost(device) {
            return Err(E::CUDA_ERROR_LAUNCH_FAILED);
        }
        memory::trim_pools_after_sync(drv, &mut state, Some(device));
        ready_at(&state, s)
    };
    drv.wait_until(until);
    Ok(())
}

pub(crate) fn query(stream: Handle, per_thread_default: bool) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    let s = resolve(&mut state, stream, per_thread_default)?;
    graph::refuse_while_capturing(&mut state, s)?;
    if ready_at(&state, s) <= drv.now_ns() {
        Ok(())
    } else {
        Err(E::CUDA_ERROR_NOT_READY)
    }
}

pub(crate) fn wait_event(
    stream: Handle,
    event: Handle,
    flags: u32,
    per_thread_default: bool,
) -> CuResult {
    if flags > 1 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let s = resolve(&mut state, stream, per_thread_default)?;
    let e = state
        .events
        .get(event)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let (time, capture) = (e.time_ns, e.capture);
    if let Some(capture) = capture {
        // Waiting on an event recorded during capture joins this stream to that capture.
        return graph::join_capture(&mut state, s, capture);
    }
    if let Some(time) = time {
        enqueue_wait(&mut state, s, time);
    }
    Ok(())
}

/// Make `stream` wait for `time` without counting as work on the context's blocking streams.
fn enqueue_wait(state: &mut State, stream: Handle, time: u64) {
    if let Some(s) = state.streams.get_mut(stream) {
        s.tail_ns = s.tail_ns.max(time);
    }
}

pub(crate) fn context_of(stream: Handle, per_thread_default: bool) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    let s = resolve(&mut state, stream, per_thread_default)?;
    Ok(state.streams.get(s).map_or(0, |s| s.ctx))
}

fn with_stream<T>(
    stream: Handle,
    per_thread_default: bool,
    f: impl FnOnce(&Stream) -> T,
) -> CuResult<T> {
    let mut state = driver()?.lock();
    let s = resolve(&mut state, stream, per_thread_default)?;
    state
        .streams
        .get(s)
        .map(f)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)
}

pub(crate) fn flags(stream: Handle, per_thread_default: bool) -> CuResult<u32> {
    with_stream(stream, per_thread_default, |s| s.flags)
}

pub(crate) fn priority(stream: Handle, per_thread_default: bool) -> CuResult<i32> {
    with_stream(stream, per_thread_default, |s| s.priority)
}

pub(crate) fn id(stream: Handle, per_thread_default: bool) -> CuResult<u64> {
    with_stream(stream, per_thread_default, |s| s.id)
}

// ---- events ---------------------------------------------------------------------------------------

pub(crate) fn event_create(flags: u32) -> CuResult<Handle> {
    if flags & !(EVENT_BLOCKING_SYNC | EVENT_DISABLE_TIMING | EVENT_INTERPROCESS) != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    // An interprocess event must not record timing (cuda.h).
    if flags & EVENT_INTERPROCESS != 0 && flags & EVENT_DISABLE_TIMING == 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    Ok(state.events.insert(Event {
        ctx,
        flags,
        time_ns: None,
        capture: None,
    }))
}

pub(crate) fn event_destroy(event: Handle) -> CuResult {
    let mut state = driver()?.lock();
    state
        .events
        .remove(event)
        .map(|_| ())
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)
}

pub(crate) fn event_record(
    event: Handle,
    stream: Handle,
    flags: u32,
    per_thread_default: bool,
) -> CuResult {
    if flags > 1 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let drv = driver()?;
    let mut state = drv.lock();
    let event_ctx = state
        .events
        .get(event)
        .map(|e| e.ctx)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    let s = resolve(&mut state, stream, per_thread_default)?;
    if state.streams.get(s).map(|s| s.ctx) != Some(event_ctx) {
        return Err(E::CUDA_ERROR_INVALID_HANDLE);
    }
    let capture = state.streams.get(s).and_then(|s| s.capture);
    let time = match capture {
        Some(_) => None,
        None => Some(ready_at(&state, s).max(drv.now_ns())),
    };
    if let Some(e) = state.events.get_mut(event) {
        e.time_ns = time;
        e.capture = capture;
    }
    Ok(())
}

/// The time an event stands for: `Ok(None)` if never recorded.
fn event_time(state: &State, event: Handle) -> CuResult<Option<u64>> {
    let e = state
        .events
        .get(event)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    if e.capture.is_some() {
        return Err(E::CUDA_ERROR_CAPTURED_EVENT);
    }
    Ok(e.time_ns)
}

pub(crate) fn event_query(event: Handle) -> CuResult {
    let drv = driver()?;
    let time = event_time(&drv.lock(), event)?;
    match time {
        Some(t) if t > drv.now_ns() => Err(E::CUDA_ERROR_NOT_READY),
        _ => Ok(()),
    }
}

pub(crate) fn event_synchronize(event: Handle) -> CuResult {
    let drv = driver()?;
    let time = {
        let mut state = drv.lock();
        let time = event_time(&state, event)?;
        let device = state
            .events
            .get(event)
            .and_then(|e| state.contexts.get(e.ctx))
            .map(|c| c.device);
        memory::trim_pools_after_sync(drv, &mut state, device);
        time
    };
    if let Some(t) = time {
        drv.wait_until(t);
    }
    Ok(())
}

/// `cuEventElapsedTime`: milliseconds between two completed, timed events.
pub(crate) fn elapsed_ms(start: Handle, end: Handle) -> CuResult<f32> {
    let drv = driver()?;
    let state = drv.lock();
    let (a, b) = match (state.events.get(start), state.events.get(end)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(E::CUDA_ERROR_INVALID_HANDLE),
    };
    if (a.flags | b.flags) & EVENT_DISABLE_TIMING != 0 {
        return Err(E::CUDA_ERROR_INVALID_HANDLE);
    }
    let (Some(ta), Some(tb)) = (a.time_ns, b.time_ns) else {
        return Err(E::CUDA_ERROR_INVALID_HANDLE);
    };
    let now = drv.now_ns();
    if ta > now || tb > now {
        return Err(E::CUDA_ERROR_NOT_READY);
    }
    Ok(((tb as i128 - ta as i128) as f64 / 1e6) as f32)
}
