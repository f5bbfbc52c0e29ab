//! CUDA graphs: explicit construction, stream capture, instantiation and launch.
//!
//! A graph is a list of nodes in the order they were added (dependencies may only name earlier
//! nodes, so that order is topological). Launching an executable graph runs its nodes one after
//! another on the stream: kernels take their time on the device timeline, memsets and copies write.
//! A launch, copy or set issued to a capturing stream is recorded as a node instead of running.

use std::cell::Cell;

use vgpu_abi::cuda::cudaError_enum as E;

use crate::driver::{driver, Driver, State};
use crate::error::CuResult;
use crate::handles::Handle;
use crate::kernels::{self, Behaviour};
use crate::{memory, stream, sys};

/// One unit of work, as launched or as recorded in a graph.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Kernel(KernelOp),
    Memset {
        dst: u64,
        value: u32,
        element_bytes: u64,
        count: u64,
    },
    Memcpy {
        dst: u64,
        src: u64,
        len: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct KernelOp {
    pub behaviour: Behaviour,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// `fill_u32`'s arguments, read when the launch was issued (kernel parameters are copied then).
    pub fill: Option<(u64, u32, u64)>,
}

/// A write to perform once the state lock is dropped.
pub(crate) enum Effect {
    Fill {
        dst: u64,
        value: u32,
        count: u64,
    },
    Set {
        dst: u64,
        value: u32,
        element_bytes: u64,
        count: u64,
    },
    Copy {
        dst: u64,
        src: u64,
        len: u64,
    },
}

pub(crate) fn apply(effects: Vec<Effect>) {
    for e in effects {
        match e {
            Effect::Fill { dst, value, count } => sys::fill_u32(dst, value, count),
            Effect::Set {
                dst,
                value,
                element_bytes,
                count,
            } => memory::write_pattern(dst, value, element_bytes, count),
            Effect::Copy { dst, src, len } => sys::copy(dst, src, len),
        }
    }
}

/// Run `op` on `stream` now: kernels are placed on the timeline; writes are queued in `effects`.
pub(crate) fn execute(
    drv: &Driver,
    state: &mut State,
    stream: Handle,
    op: &Op,
    effects: &mut Vec<Effect>,
) -> CuResult {
    match op {
        Op::Kernel(k) => {
            let device = stream::device_of(state, stream)?;
            let sms = drv.devices[device as usize].spec.sms;
            stream::schedule(
                drv,
                state,
                stream,
                kernels::duration_ns(k.behaviour, k.grid, k.block, sms),
            )?;
            if let Some((dst, value, count)) = k.fill {
                effects.push(Effect::Fill { dst, value, count });
            }
        }
        Op::Memset {
            dst,
            value,
            element_bytes,
            count,
        } => effects.push(Effect::Set {
            dst: *dst,
            value: *value,
            element_bytes: *element_bytes,
            count: *count,
        }),
        Op::Memcpy { dst, src, len } => effects.push(Effect::Copy {
            dst: *dst,
            src: *src,
            len: *len,
        }),
    }
    Ok(())
}

/// A node. Its dependencies are checked when it is added (they can only name earlier nodes, so the
/// insertion order is a valid execution order) and not kept: nodes run one after another.
pub(crate) struct Node {
    pub op: Option<Op>,
}

/// Where a `CUgraphNode` handle points.
pub(crate) struct NodeRef {
    pub graph: Handle,
    pub index: u32,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    pub handles: Vec<Handle>,
}

pub(crate) struct GraphExec {
    pub ops: Vec<Op>,
}

pub(crate) struct Capture {
    pub id: u64,
    pub graph: Handle,
    pub origin: Handle,
    pub invalidated: bool,
    /// The nodes the next captured node depends on (what `cuStreamGetCaptureInfo` reports).
    pub last: Vec<Handle>,
}

/// `CU_STREAM_CAPTURE_STATUS_*`
pub(crate) const CAPTURE_NONE: u32 = 0;
pub(crate) const CAPTURE_ACTIVE: u32 = 1;
pub(crate) const CAPTURE_INVALIDATED: u32 = 2;

fn add_node(state: &mut State, graph: Handle, op: Option<Op>) -> CuResult<Handle> {
    let g = state
        .graphs
        .get_mut(graph)
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let index = g.nodes.len() as u32;
    g.nodes.push(Node { op });
    let handle = state.nodes.insert(NodeRef { graph, index });
    if let Some(g) = state.graphs.get_mut(graph) {
        g.handles.push(handle);
    }
    Ok(handle)
}

fn node_index(state: &State, graph: Handle, node: Handle) -> CuResult<u32> {
    match state.nodes.get(node) {
        Some(r) if r.graph == graph => Ok(r.index),
        _ => Err(E::CUDA_ERROR_INVALID_VALUE),
    }
}

fn capture_of(state: &State, stream: Handle) -> Option<usize> {
    let id = state.streams.get(stream)?.capture?;
    state.captures.iter().position(|c| c.id == id)
}

/// If `stream` is capturing, record `op` as the next node and return true.
pub(crate) fn record_if_capturing(state: &mut State, stream: Handle, op: Op) -> CuResult<bool> {
    let Some(i) = capture_of(state, stream) else {
        return Ok(false);
    };
    if state.captures[i].invalidated {
        return Err(E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    let graph = state.captures[i].graph;
    let node = add_node(state, graph, Some(op))?;
    state.captures[i].last = vec![node];
    Ok(true)
}

/// A synchronising call on a capturing stream is illegal and invalidates the capture.
pub(crate) fn refuse_while_capturing(state: &mut State, stream: Handle) -> CuResult {
    match capture_of(state, stream) {
        Some(i) => {
            state.captures[i].invalidated = true;
            Err(E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        }
        None => Ok(()),
    }
}

/// `cuStreamWaitEvent` on an event recorded during a capture: the stream joins that capture.
pub(crate) fn join_capture(state: &mut State, stream: Handle, capture: u64) -> CuResult {
    if !state.captures.iter().any(|c| c.id == capture) {
        return Ok(()); // that capture has ended; the event is stale
    }
    let s = state
        .streams
        .get_mut(stream)
        .ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    match s.capture {
        Some(id) if id != capture => Err(E::CUDA_ERROR_STREAM_CAPTURE_MERGE),
        _ => {
            s.capture = Some(capture);
            Ok(())
        }
    }
}

/// A stream is being destroyed: a capture it takes part in cannot complete.
pub(crate) fn stream_gone(state: &mut State, stream: Handle) {
    if let Some(i) = capture_of(state, stream) {
        state.captures[i].invalidated = true;
    }
}

// ---- capture entry points -------------------------------------------------------------------------

thread_local! {
    static CAPTURE_MODE: Cell<u32> = const { Cell::new(0) };
}

pub(crate) fn exchange_capture_mode(mode: u32) -> CuResult<u32> {
    if mode > 2 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(CAPTURE_MODE.try_with(|m| m.replace(mode)).unwrap_or(0))
}

pub(crate) fn begin_capture(stream: Handle, mode: u32, per_thread: bool) -> CuResult {
    if mode > 2 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let s = stream::resolve(&mut state, stream, per_thread)?;
    let st = state.streams.get(s).ok_or(E::CUDA_ERROR_INVALID_HANDLE)?;
    if st.kind == stream::StreamKind::Legacy {
        return Err(E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if st.capture.is_some() {
        return Err(E::CUDA_ERROR_ILLEGAL_STATE);
    }
    let id = state.next_id();
    let graph = state.graphs.insert(Graph::default());
    state.captures.push(Capture {
        id,
        graph,
        origin: s,
        invalidated: false,
        last: Vec::new(),
    });
    if let Some(st) = state.streams.get_mut(s) {
        st.capture = Some(id);
    }
    Ok(())
}

/// `cuStreamEndCapture`: the captured graph (`Err` and no graph when the capture was invalidated).
pub(crate) fn end_capture(stream: Handle, per_thread: bool) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    let s = stream::resolve(&mut state, stream, per_thread)?;
    let i = capture_of(&state, s).ok_or(E::CUDA_ERROR_ILLEGAL_STATE)?;
    if state.captures[i].origin != s {
        return Err(E::CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
    }
    let capture = state.captures.remove(i);
    for (_, st) in state.streams.iter_mut() {
        if st.capture == Some(capture.id) {
            st.capture = None;
        }
    }
    if capture.invalidated {
        destroy_graph(&mut state, capture.graph);
        return Err(E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    Ok(capture.graph)
}

pub(crate) struct CaptureInfo {
    pub status: u32,
    pub id: u64,
    pub graph: Handle,
    pub deps: *const Handle,
    pub deps_count: usize,
}

pub(crate) fn capture_info(stream: Handle, per_thread: bool) -> CuResult<CaptureInfo> {
    let mut state = driver()?.lock();
    let s = stream::resolve(&mut state, stream, per_thread)?;
    Ok(match capture_of(&state, s) {
        None => CaptureInfo {
            status: CAPTURE_NONE,
            id: 0,
            graph: 0,
            deps: std::ptr::null(),
            deps_count: 0,
        },
        Some(i) => {
            let c = &state.captures[i];
            CaptureInfo {
                status: if c.invalidated {
                    CAPTURE_INVALIDATED
                } else {
                    CAPTURE_ACTIVE
                },
                id: c.id,
                graph: c.graph,
                // Valid until the capture records its next node, as the driver documents.
                deps: c.last.as_ptr(),
                deps_count: c.last.len(),
            }
        }
    })
}

// ---- graphs ---------------------------------------------------------------------------------------

pub(crate) fn create(flags: u32) -> CuResult<Handle> {
    if flags != 0 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(driver()?.lock().graphs.insert(Graph::default()))
}

fn destroy_graph(state: &mut State, graph: Handle) -> bool {
    let Some(g) = state.graphs.remove(graph) else {
        return false;
    };
    for h in g.handles {
        state.nodes.remove(h);
    }
    true
}

pub(crate) fn destroy(graph: Handle) -> CuResult {
    let mut state = driver()?.lock();
    if destroy_graph(&mut state, graph) {
        Ok(())
    } else {
        Err(E::CUDA_ERROR_INVALID_VALUE)
    }
}

/// Add a kernel node; `build` makes the kernel op under the lock (it resolves the function).
pub(crate) fn add_kernel_node(
    graph: Handle,
    deps: &[Handle],
    build: impl FnOnce(&Driver, &mut State) -> CuResult<KernelOp>,
) -> CuResult<Handle> {
    let drv = driver()?;
    let mut state = drv.lock();
    if !state.graphs.contains(graph) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    for d in deps {
        node_index(&state, graph, *d)?;
    }
    let op = build(drv, &mut state)?;
    add_node(&mut state, graph, Some(Op::Kernel(op)))
}

/// `cuGraphGetNodes`: all node handles (the caller's buffer holds `capacity`); returns the total.
pub(crate) fn nodes(graph: Handle) -> CuResult<Vec<Handle>> {
    let state = driver()?.lock();
    state
        .graphs
        .get(graph)
        .map(|g| g.handles.clone())
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}

pub(crate) fn instantiate(graph: Handle) -> CuResult<Handle> {
    let mut state = driver()?.lock();
    let g = state.graphs.get(graph).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    let ops = g.nodes.iter().filter_map(|n| n.op.clone()).collect();
    Ok(state.execs.insert(GraphExec { ops }))
}

pub(crate) fn exec_destroy(exec: Handle) -> CuResult {
    let mut state = driver()?.lock();
    state
        .execs
        .remove(exec)
        .map(|_| ())
        .ok_or(E::CUDA_ERROR_INVALID_VALUE)
}

pub(crate) fn upload(exec: Handle, stream: Handle, per_thread: bool) -> CuResult {
    let mut state = driver()?.lock();
    stream::resolve(&mut state, stream, per_thread)?;
    if state.execs.contains(exec) {
        Ok(())
    } else {
        Err(E::CUDA_ERROR_INVALID_VALUE)
    }
}

/// `cuGraphLaunch`: every node on the stream, in order (or into the stream's capture).
pub(crate) fn launch(exec: Handle, stream: Handle, per_thread: bool) -> CuResult {
    let drv = driver()?;
    let mut effects = Vec::new();
    {
        let mut state = drv.lock();
        let s = stream::resolve(&mut state, stream, per_thread)?;
        let ops = state
            .execs
            .get(exec)
            .map(|e| e.ops.clone())
            .ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
        for op in ops {
            if !record_if_capturing(&mut state, s, op.clone())? {
                execute(drv, &mut state, s, &op, &mut effects)?;
            }
        }
    }
    apply(effects);
    Ok(())
}
