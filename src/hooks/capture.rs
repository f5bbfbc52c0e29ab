//! Stream capture: which captures are in progress, so that a limited launch asks the driver whether
//! its stream is being captured only while some capture could be.
//!
//! A launch into a capturing stream does not run; it becomes a graph node, paid for when the graph is
//! launched (`compute::launch`). Asking the driver (`cuStreamIsCapturing`) on every limited launch
//! costs a driver call, so the capture hooks keep a process-wide record of the captures begun and not
//! yet ended, and the launch path asks only while that record is not empty. A stream that *joins*
//! a capture (it waits on an event recorded in a capturing stream) is captured without a begin call of
//! its own, but only while the capture it joined is in progress, so the record covers it.
//!
//! The record errs on the side of asking: a capture whose end we could not confirm (the driver
//! refused `cuStreamEndCapture`, say, from the wrong thread) stays recorded until the driver reports
//! the stream no longer capturing; a full table counts the capture for the rest of the process.

use std::sync::atomic::{AtomicUsize, Ordering};

use vgpu_abi::cuda::{
    cudaError_enum, CUgraph, CUgraphEdgeData, CUgraphNode, CUresult, CUstream, CUstreamCaptureMode,
    CUstreamCaptureStatus, CUstreamCaptureStatus_enum,
};

use super::real_cuda;
use crate::runtime;

const SUCCESS: CUresult = cudaError_enum::CUDA_SUCCESS;

/// Captures a process runs at once; beyond this each one is counted for good.
const MAX_RECORDED: usize = 64;

/// Keys of the streams whose capture is in progress (0 = free slot).
static STREAMS: [AtomicUsize; MAX_RECORDED] = [const { AtomicUsize::new(0) }; MAX_RECORDED];
/// Captures in progress: recorded ones, plus any that did not fit (never taken back).
static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` (cuda.h).
const STREAM_LEGACY: usize = 0x1;
const STREAM_PER_THREAD: usize = 0x2;

/// Whether any capture may be in progress in this process (one relaxed load). A launch that follows
/// the begin of a capture in program order (or through the application's own synchronisation, which
/// any use of a stream captured in another thread needs) sees it.
#[inline(always)]
pub fn any_in_progress() -> bool {
    IN_PROGRESS.load(Ordering::Relaxed) != 0
}

/// A stream as the record keys it: the handle, except for the per-thread default stream, which is a
/// different stream in every thread under one handle. Stream handles are pointers (8-aligned), so a
/// key with the low bits `0b011` cannot collide with one, and no key is 0.
fn key(stream: CUstream, per_thread: bool) -> usize {
    let handle = stream as usize;
    let per_thread_default = handle == STREAM_PER_THREAD || (handle == 0 && per_thread);
    if per_thread_default {
        ((crate::sys::thread_id() as usize) << 3) | 0b011
    } else if handle == 0 {
        STREAM_LEGACY
    } else {
        handle
    }
}

/// After a successful begin on `stream`.
fn record(stream: CUstream, per_thread: bool) {
    let key = key(stream, per_thread);
    if STREAMS
        .iter()
        .any(|slot| slot.load(Ordering::Relaxed) == key)
    {
        return; // already recorded (the driver would have refused a second begin)
    }
    // Counted before the slot is filled, so that a launch never sees the slot without the count.
    IN_PROGRESS.fetch_add(1, Ordering::Relaxed);
    for slot in &STREAMS {
        if slot
            .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    // Full: the count stays up for the rest of the process, so launches keep asking the driver.
    log_warn_once!(
        "more than {MAX_RECORDED} stream captures at once; every limited launch now asks the driver"
    );
}

/// After `cuStreamEndCapture` on `stream` returned `result`: forget the capture when it is over.
fn after_end(stream: CUstream, per_thread: bool, result: CUresult) {
    let key = key(stream, per_thread);
    let Some(slot) = STREAMS
        .iter()
        .find(|slot| slot.load(Ordering::Relaxed) == key)
    else {
        return;
    };
    // A successful end is the end. Otherwise (an invalidated capture also ends, a wrong-thread end
    // does not) the driver says whether the stream still captures.
    if result != SUCCESS && driver_says_capturing(stream, per_thread) {
        return;
    }
    if slot
        .compare_exchange(key, 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        IN_PROGRESS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `cuStreamIsCapturing[_ptsz]`: whether the stream is capturing (or invalidated and not yet ended).
/// A failed query counts as no.
pub fn driver_says_capturing(stream: CUstream, per_thread: bool) -> bool {
    let real = real_cuda();
    let mut status = CUstreamCaptureStatus_enum::CU_STREAM_CAPTURE_STATUS_NONE;
    let status_out: *mut CUstreamCaptureStatus = &mut status;
    // SAFETY: the caller's stream and a valid out-pointer.
    let result = unsafe {
        if per_thread {
            real.cuStreamIsCapturing_ptsz(stream, status_out)
        } else {
            real.cuStreamIsCapturing(stream, status_out)
        }
    };
    result == SUCCESS && status != CUstreamCaptureStatus_enum::CU_STREAM_CAPTURE_STATUS_NONE
}

/// The shape of every begin: refuse in a process that failed closed, call, record on success.
fn begin_with(stream: CUstream, per_thread: bool, call: impl FnOnce() -> CUresult) -> CUresult {
    if runtime::refused() {
        return runtime::CUDA_REFUSED;
    }
    let result = call();
    if result == SUCCESS {
        record(stream, per_thread);
    }
    result
}

fn end_with(stream: CUstream, per_thread: bool, call: impl FnOnce() -> CUresult) -> CUresult {
    if runtime::refused() {
        return runtime::CUDA_REFUSED;
    }
    let result = call();
    after_end(stream, per_thread, result);
    result
}

/// Body of `cuStreamBeginCapture` (CUDA 10.0 ABI, no mode).
pub unsafe fn begin_v1(stream: CUstream) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    begin_with(stream, false, || unsafe {
        real_cuda().cuStreamBeginCapture(stream)
    })
}

/// Body of `cuStreamBeginCapture_ptsz` (CUDA 10.0 ABI).
pub unsafe fn begin_v1_ptsz(stream: CUstream) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    begin_with(stream, true, || unsafe {
        real_cuda().cuStreamBeginCapture_ptsz(stream)
    })
}

/// Body of `cuStreamBeginCapture_v2`.
pub unsafe fn begin(stream: CUstream, mode: CUstreamCaptureMode) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    begin_with(stream, false, || unsafe {
        real_cuda().cuStreamBeginCapture_v2(stream, mode)
    })
}

/// Body of `cuStreamBeginCapture_v2_ptsz`.
pub unsafe fn begin_ptsz(stream: CUstream, mode: CUstreamCaptureMode) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    begin_with(stream, true, || unsafe {
        real_cuda().cuStreamBeginCapture_v2_ptsz(stream, mode)
    })
}

/// Body of `cuStreamBeginCaptureToGraph`.
pub unsafe fn begin_to_graph(
    stream: CUstream,
    graph: CUgraph,
    dependencies: *const CUgraphNode,
    dependency_data: *const CUgraphEdgeData,
    dependency_count: usize,
    mode: CUstreamCaptureMode,
) -> CUresult {
    begin_with(stream, false, || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuStreamBeginCaptureToGraph(
                stream,
                graph,
                dependencies,
                dependency_data,
                dependency_count,
                mode,
            )
        }
    })
}

/// Body of `cuStreamBeginCaptureToGraph_ptsz`.
pub unsafe fn begin_to_graph_ptsz(
    stream: CUstream,
    graph: CUgraph,
    dependencies: *const CUgraphNode,
    dependency_data: *const CUgraphEdgeData,
    dependency_count: usize,
    mode: CUstreamCaptureMode,
) -> CUresult {
    begin_with(stream, true, || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuStreamBeginCaptureToGraph_ptsz(
                stream,
                graph,
                dependencies,
                dependency_data,
                dependency_count,
                mode,
            )
        }
    })
}

/// Body of `cuStreamEndCapture`.
pub unsafe fn end(stream: CUstream, graph_out: *mut CUgraph) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    end_with(stream, false, || unsafe {
        real_cuda().cuStreamEndCapture(stream, graph_out)
    })
}

/// Body of `cuStreamEndCapture_ptsz`.
pub unsafe fn end_ptsz(stream: CUstream, graph_out: *mut CUgraph) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    end_with(stream, true, || unsafe {
        real_cuda().cuStreamEndCapture_ptsz(stream, graph_out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_streams_and_per_thread_defaults_apart() {
        let ordinary = 0x7f00_1234_5678usize as CUstream;
        assert_eq!(key(ordinary, false), 0x7f00_1234_5678);
        assert_eq!(key(ordinary, true), 0x7f00_1234_5678);
        assert_eq!(key(std::ptr::null_mut(), false), STREAM_LEGACY);
        let mine = key(std::ptr::null_mut(), true);
        assert_eq!(mine, key(STREAM_PER_THREAD as CUstream, false));
        assert_eq!(mine & 0b111, 0b011);
        let theirs = std::thread::spawn(|| key(std::ptr::null_mut(), true))
            .join()
            .unwrap();
        assert_ne!(mine, theirs, "each thread has its own per-thread stream");
    }

    #[test]
    fn a_capture_counts_from_begin_to_end() {
        // No real driver in a unit test: a failed end is confirmed by a failed query (not capturing).
        let stream = 0x5000_0000usize as CUstream;
        let before = IN_PROGRESS.load(Ordering::Relaxed);
        record(stream, false);
        record(stream, false);
        assert_eq!(IN_PROGRESS.load(Ordering::Relaxed), before + 1);
        assert!(any_in_progress());
        after_end(0x6000_0000usize as CUstream, false, SUCCESS); // never begun: no change
        assert_eq!(IN_PROGRESS.load(Ordering::Relaxed), before + 1);
        after_end(
            stream,
            false,
            cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );
        assert_eq!(IN_PROGRESS.load(Ordering::Relaxed), before);
    }
}
