#!/usr/bin/env python3
"""The measuring half of scripts/gpu-acceptance.sh: each subcommand runs inside one GPU process.

run.py starts every subcommand in a process of its own, with or without libvgpu.so preloaded and with the
limits in the environment, and reads the last line of stdout that starts with "RESULT " (a JSON object).
Nothing here decides pass or fail: it measures and reports, and run.py judges.

Subcommands:
  nvml-info DEV          NVML's view of device DEV (stands in for nvidia-smi where there is none)
  worker                 a driver-API process (ctypes on libcuda.so.1) that takes commands on stdin
  alloc-apis             sync, stream-ordered and virtual-memory allocations, usage before/after each
  torch-mem              PyTorch: mem_get_info, fill to the limit, one more, recovery (case 1)
  torch-compute          PyTorch: a saturating matmul loop, eager and as a CUDA graph, timed by events
  torch-launches         PyTorch: a loop of tiny kernels, host time per launch (case 6 without a C compiler)

Only the standard library is needed, plus torch for torch-* and cupy for `alloc-apis --backend cupy`.
"""

import argparse
import ctypes
import json
import os
import statistics
import sys
import time

MiB = 1 << 20

# cuda.h / nvml.h constants (CUDA 12.9 headers; unchanged in 13.x).
CUDA_SUCCESS = 0
CUDA_ERROR_OUT_OF_MEMORY = 2
CU_MEM_ALLOCATION_TYPE_PINNED = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0


def emit(result):
    """The one line run.py reads."""
    sys.stdout.write("RESULT " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------
# ctypes: the driver API and NVML. Loading libcuda.so.1 with ctypes is dlopen + dlsym, the same door that
# cudarc, pynvml and nvidia-smi use; libvgpu.so's dlsym answers it.


class CUmemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class CUmemAllocFlags(ctypes.Structure):
    _fields_ = [
        ("compressionType", ctypes.c_ubyte),
        ("gpuDirectRDMACapable", ctypes.c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", ctypes.c_ubyte * 4),
    ]


class CUmemAllocationProp(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("requestedHandleTypes", ctypes.c_int),
        ("location", CUmemLocation),
        ("win32HandleMetaData", ctypes.c_void_p),
        ("allocFlags", CUmemAllocFlags),
    ]


class CUmemAccessDesc(ctypes.Structure):
    _fields_ = [("location", CUmemLocation), ("flags", ctypes.c_int)]


# Pinned by cuda.h; a wrong layout would make cuMemCreate read garbage, so check before use.
assert ctypes.sizeof(CUmemAllocationProp) == 32
assert ctypes.sizeof(CUmemAccessDesc) == 12


class CudaError(Exception):
    def __init__(self, name, rc):
        Exception.__init__(self, "%s returned %d" % (name, rc))
        self.name = name
        self.rc = rc


class Driver:
    """The few driver entry points the probes need, each with its exact C signature."""

    u64 = ctypes.c_uint64
    size = ctypes.c_size_t
    ptr = ctypes.c_void_p
    P = ctypes.POINTER

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        u64, size, ptr, P, c_int, c_uint = self.u64, self.size, self.ptr, self.P, ctypes.c_int, ctypes.c_uint
        sigs = {
            "cuInit": [c_uint],
            "cuDriverGetVersion": [P(c_int)],
            "cuDeviceGet": [P(c_int), c_int],
            "cuDevicePrimaryCtxRetain": [P(ptr), c_int],
            "cuCtxSetCurrent": [ptr],
            "cuCtxSynchronize": [],
            "cuMemGetInfo_v2": [P(size), P(size)],
            "cuMemAlloc_v2": [P(u64), size],
            "cuMemFree_v2": [u64],
            "cuMemAllocAsync": [P(u64), size, ptr],
            "cuMemFreeAsync": [u64, ptr],
            "cuStreamSynchronize": [ptr],
            "cuMemGetAllocationGranularity": [P(size), P(CUmemAllocationProp), c_int],
            "cuMemCreate": [P(u64), size, P(CUmemAllocationProp), ctypes.c_ulonglong],
            "cuMemRelease": [u64],
            "cuMemAddressReserve": [P(u64), size, size, u64, ctypes.c_ulonglong],
            "cuMemAddressFree": [u64, size],
            "cuMemMap": [u64, size, size, u64, ctypes.c_ulonglong],
            "cuMemUnmap": [u64, size],
            "cuMemSetAccess": [u64, size, P(CUmemAccessDesc), size],
            "cuMemsetD8_v2": [u64, ctypes.c_ubyte, size],
            "cuMemcpyDtoH_v2": [ptr, u64, size],
        }
        for name, argtypes in sigs.items():
            fn = getattr(self.lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int

    def call(self, name, *args):
        """The raw CUresult."""
        return getattr(self.lib, name)(*args)

    def check(self, name, *args):
        rc = self.call(name, *args)
        if rc != CUDA_SUCCESS:
            raise CudaError(name, rc)

    def init_primary(self, ordinal=0):
        """cuInit, then make the device's primary context current, as the runtime does."""
        self.check("cuInit", 0)
        dev = ctypes.c_int()
        self.check("cuDeviceGet", ctypes.byref(dev), ordinal)
        ctx = ctypes.c_void_p()
        self.check("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
        self.check("cuCtxSetCurrent", ctx)
        self.device = dev.value

    def mem_info(self):
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.check("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def alloc(self, nbytes):
        """(rc, pointer)."""
        p = ctypes.c_uint64()
        rc = self.call("cuMemAlloc_v2", ctypes.byref(p), nbytes)
        return rc, p.value

    # Virtual memory management: create physical memory, reserve a range, map, grant access.
    def vmm_prop(self):
        prop = CUmemAllocationProp()
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = self.device
        return prop

    def vmm_granularity(self):
        g = ctypes.c_size_t()
        self.check("cuMemGetAllocationGranularity", ctypes.byref(g), ctypes.byref(self.vmm_prop()),
                   CU_MEM_ALLOC_GRANULARITY_MINIMUM)
        return g.value

    def vmm_create(self, nbytes):
        """(rc, handle)."""
        h = ctypes.c_uint64()
        rc = self.call("cuMemCreate", ctypes.byref(h), nbytes, ctypes.byref(self.vmm_prop()), 0)
        return rc, h.value

    def vmm_map(self, handle, nbytes):
        """Reserve a range, map `handle` there and make it read-write; returns the address."""
        va = ctypes.c_uint64()
        self.check("cuMemAddressReserve", ctypes.byref(va), nbytes, 0, 0, 0)
        self.check("cuMemMap", va.value, nbytes, 0, handle, 0)
        desc = CUmemAccessDesc()
        desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE
        desc.location.id = self.device
        desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.check("cuMemSetAccess", va.value, nbytes, ctypes.byref(desc), 1)
        return va.value

    def vmm_unmap(self, va, nbytes):
        self.check("cuMemUnmap", va, nbytes)
        self.check("cuMemAddressFree", va, nbytes)

    def touch(self, dptr, nbytes):
        """Write and read back one byte at each end: the memory is really there and usable."""
        self.check("cuMemsetD8_v2", dptr, 0x5A, nbytes)
        self.check("cuCtxSynchronize")
        out = (ctypes.c_ubyte * 1)()
        for off in (0, nbytes - 1):
            self.check("cuMemcpyDtoH_v2", ctypes.cast(out, ctypes.c_void_p), dptr + off, 1)
            if out[0] != 0x5A:
                raise RuntimeError("device memory at +%d reads %#x, wrote 0x5a" % (off, out[0]))


class NvmlMemoryV2(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("total", ctypes.c_ulonglong),
        ("reserved", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def nvml_info(index):
    """What nvidia-smi prints for memory, through the same entry points (nvmlDeviceGetMemoryInfo_v2)."""
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    rc = nvml.nvmlInit_v2()
    if rc != 0:
        return {"error": "nvmlInit_v2 returned %d" % rc}
    try:
        h = ctypes.c_void_p()
        rc = nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(h))
        if rc != 0:
            return {"error": "nvmlDeviceGetHandleByIndex_v2(%d) returned %d" % (index, rc)}
        name = ctypes.create_string_buffer(96)
        uuid = ctypes.create_string_buffer(96)
        nvml.nvmlDeviceGetName(h, name, ctypes.c_uint(96))
        nvml.nvmlDeviceGetUUID(h, uuid, ctypes.c_uint(96))
        mem = NvmlMemoryV2()
        mem.version = ctypes.sizeof(NvmlMemoryV2) | (2 << 24)
        rc = nvml.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(mem))
        if rc != 0:
            return {"error": "nvmlDeviceGetMemoryInfo_v2 returned %d" % rc}
        drv = ctypes.create_string_buffer(96)
        nvml.nvmlSystemGetDriverVersion(drv, ctypes.c_uint(96))
        count = ctypes.c_uint()
        nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
        return {
            "name": name.value.decode(errors="replace"),
            "uuid": uuid.value.decode(errors="replace"),
            "total": mem.total,
            "used": mem.used,
            "free": mem.free,
            "reserved": mem.reserved,
            "driver_version": drv.value.decode(errors="replace"),
            "count": count.value,
        }
    finally:
        nvml.nvmlShutdown()


def cmd_nvml_info(args):
    emit(nvml_info(args.index))


# --------------------------------------------------------------------------------------------------------
# worker: a long-lived process for the two-process cases. One JSON line in answer to each command line.


def cmd_worker(args):
    drv = Driver()
    held = []

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        drv.init_primary(0)
        free, total = drv.mem_info()
        reply({"event": "ready", "pid": os.getpid(), "free": free, "total": total})
    except CudaError as e:
        reply({"event": "error", "pid": os.getpid(), "error": str(e), "rc": e.rc})
        return
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        op = words[0]
        try:
            if op == "info":
                free, total = drv.mem_info()
                reply({"free": free, "total": total, "held": sum(n for _, n in held)})
            elif op == "alloc":
                # alloc BYTES COUNT: up to COUNT blocks, stopping at the first refusal.
                nbytes, count = int(words[1]), int(words[2])
                ok, rc = 0, 0
                for _ in range(count):
                    rc, p = drv.alloc(nbytes)
                    if rc != CUDA_SUCCESS:
                        break
                    held.append((p, nbytes))
                    ok += 1
                free, total = drv.mem_info()
                reply({"ok": ok, "rc": rc, "free": free, "total": total, "held": sum(n for _, n in held)})
            elif op == "freeall":
                worst = 0
                for p, _ in held:
                    worst = worst or drv.call("cuMemFree_v2", p)
                held = []
                free, total = drv.mem_info()
                reply({"rc": worst, "free": free, "total": total})
            elif op == "quit":
                reply({"bye": True})
                return
            else:
                reply({"error": "unknown command %r" % op})
        except CudaError as e:
            reply({"error": str(e), "rc": e.rc})


# --------------------------------------------------------------------------------------------------------
# alloc-apis: every allocation door counted (case 4). The nvcc program alloc_apis.cu prints the same JSON.


class CupyApi:
    name = "cupy"

    def __init__(self):
        import cupy  # noqa: F401  (imported for its side effect: CuPy's own runtime and context)
        from cupy.cuda import runtime

        self.rt = runtime
        self.err = runtime.CUDARuntimeError
        runtime.setDevice(0)
        runtime.free(runtime.malloc(1))  # create the context before the first measurement
        self.drv = Driver()
        self.drv.device = 0
        self.version = cupy.__version__

    def usage(self):
        free, total = self.rt.memGetInfo()
        return free, total

    def sync_alloc(self, n):
        try:
            return 0, self.rt.malloc(n)
        except self.err as e:
            return e.status, 0

    def sync_free(self, p):
        self.rt.free(p)

    def async_alloc(self, n):
        try:
            p = self.rt.mallocAsync(n, 0)
            self.rt.streamSynchronize(0)
            return 0, p
        except self.err as e:
            return e.status, 0

    def async_free(self, p):
        self.rt.freeAsync(p, 0)
        self.rt.streamSynchronize(0)
        self.rt.deviceSynchronize()

    def touch(self, p, n):
        self.rt.memset(p, 0x5A, n)
        self.rt.deviceSynchronize()


class DriverApi:
    name = "driver-ctypes"

    def __init__(self):
        self.drv = Driver()
        self.drv.init_primary(0)
        self.version = None

    def usage(self):
        return self.drv.mem_info()

    def sync_alloc(self, n):
        return self.drv.alloc(n)

    def sync_free(self, p):
        self.drv.check("cuMemFree_v2", p)

    def async_alloc(self, n):
        p = ctypes.c_uint64()
        rc = self.drv.call("cuMemAllocAsync", ctypes.byref(p), n, None)
        if rc == CUDA_SUCCESS:
            self.drv.check("cuStreamSynchronize", None)
        return rc, p.value

    def async_free(self, p):
        self.drv.check("cuMemFreeAsync", p, None)
        self.drv.check("cuStreamSynchronize", None)
        self.drv.check("cuCtxSynchronize")

    def touch(self, p, n):
        self.drv.touch(p, n)


def measure_door(api, size, limited, alloc, release, over_attempt):
    """One allocation door: the usage delta of one allocation of `size` bytes, whether the memory is
    usable, an attempt at more than is free (limited runs), and the delta left after releasing it.
    alloc(n) -> (rc, handle, device pointer); release(handle); over_attempt(n) -> rc (frees on success)."""
    rec = {"size": size}
    try:
        free0, total = api.usage()
        rc, handle, dptr = alloc(size)
        rec["rc"] = rc
        if rc != 0:
            rec["error"] = "allocation of %d bytes returned %d" % (size, rc)
            return rec
        free1, _ = api.usage()
        rec["delta_alloc"] = free0 - free1
        try:
            api.touch(dptr, size)
            rec["touched"] = True
        except Exception as e:  # noqa: BLE001  (report it; the other doors still run)
            rec["touched"] = False
            rec["touch_error"] = "%s: %s" % (type(e).__name__, e)
        if limited:
            rec["over_size"] = free1 + size
            rec["over_rc"] = over_attempt(free1 + size)
        release(handle)
        free2, _ = api.usage()
        rec["delta_after_free"] = free0 - free2
    except Exception as e:  # noqa: BLE001
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    return rec


def measure_apis(api, size, limited):
    """Usage is what the process itself is told (total - free from cudaMemGetInfo / cuMemGetInfo_v2)."""
    free0, total = api.usage()
    out = {"backend": api.name, "size": size, "total": total, "free_start": free0, "apis": {}}

    def sync_alloc(n):
        rc, p = api.sync_alloc(n)
        return rc, p, p

    def sync_over(n):
        rc, p = api.sync_alloc(n)
        if rc == 0:
            api.sync_free(p)
        return rc

    def async_alloc(n):
        rc, p = api.async_alloc(n)
        return rc, p, p

    def async_over(n):
        rc, p = api.async_alloc(n)
        if rc == 0:
            api.async_free(p)
        return rc

    out["apis"]["sync"] = measure_door(api, size, limited, sync_alloc, api.sync_free, sync_over)
    out["apis"]["async"] = measure_door(api, size, limited, async_alloc, api.async_free, async_over)

    drv = api.drv
    try:
        gran = drv.vmm_granularity()
    except CudaError as e:
        out["apis"]["vmm"] = {"error": str(e), "rc": e.rc}
        return out
    vsize = (size + gran - 1) // gran * gran

    def vmm_alloc(n):
        rc, h = drv.vmm_create(n)
        if rc != 0:
            return rc, None, None
        va = drv.vmm_map(h, n)
        return 0, (h, va, n), va

    def vmm_release(held):
        h, va, n = held
        drv.vmm_unmap(va, n)
        drv.check("cuMemRelease", h)

    def vmm_over(n):
        rc, h = drv.vmm_create((n + gran - 1) // gran * gran)
        if rc == 0:
            drv.check("cuMemRelease", h)
        return rc

    out["apis"]["vmm"] = measure_door(api, vsize, limited, vmm_alloc, vmm_release, vmm_over)
    out["apis"]["vmm"]["granularity"] = gran
    return out


def cmd_alloc_apis(args):
    try:
        api = CupyApi() if args.backend == "cupy" else DriverApi()
    except Exception as e:  # noqa: BLE001
        emit({"backend": args.backend, "fatal": "%s: %s" % (type(e).__name__, e)})
        return 1
    out = measure_apis(api, args.size, args.limited)
    out["version"] = api.version
    emit(out)
    return 0


# --------------------------------------------------------------------------------------------------------
# torch-mem (case 1).


def is_oom(exc):
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return "torch.cuda.OutOfMemoryError"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc):
        return "RuntimeError(out of memory)"
    return None


def first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0][:300]


def cmd_torch_mem(args):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        emit({"fatal": "import torch: %s: %s" % (type(e).__name__, e)})
        return 1
    if not torch.cuda.is_available():
        emit({"fatal": "torch.cuda.is_available() is False (torch %s)" % torch.__version__})
        return 1
    dev = torch.device("cuda:0")
    out = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    }
    free0, total0 = torch.cuda.mem_get_info(0)
    out.update(free0=free0, total0=total0)
    chunk = args.chunk
    tensors = []

    def take(count):
        """Allocate up to `count` chunks; (how many succeeded, the exception that stopped it)."""
        for i in range(count):
            try:
                tensors.append(torch.empty(chunk, dtype=torch.uint8, device=dev))
            except Exception as e:  # noqa: BLE001
                return i, e
        return count, None

    if args.mode == "baseline":
        # Without the library: the GPU itself holds the limit plus one more chunk, so an out-of-memory
        # under the library is the library's doing.
        want = args.limit // chunk + 1
        ok, err = take(want)
        out.update(want=want, ok=ok, error=None if err is None else first_line(err))
        if ok:
            tensors[-1].fill_(7)
            torch.cuda.synchronize()
            out["last_value"] = int(tensors[-1][-1].item())
        del tensors[:]
        torch.cuda.empty_cache()
        emit(out)
        return 0

    # Limited. Up to the limit: as many whole chunks as the reported free memory holds.
    fit = free0 // chunk
    ok, err = take(fit)
    out.update(fit=fit, ok=ok, fill_error=None if err is None else first_line(err))
    try:
        # Indexing, not a loop variable: a variable left holding a tensor would keep its memory (1.4).
        if tensors:
            tensors[0].fill_(3)
            tensors[-1].fill_(3)
        torch.cuda.synchronize()
        out["fill_values"] = [int(tensors[i][-1].item()) for i in (0, -1)] if tensors else []
    except Exception as e:  # noqa: BLE001
        out["fill_values_error"] = first_line(e)
    free1, _ = torch.cuda.mem_get_info(0)
    out["free_full"] = free1

    # One more chunk: out of memory.
    try:
        extra = torch.empty(chunk, dtype=torch.uint8, device=dev)
        extra.fill_(1)
        torch.cuda.synchronize()
        out["one_more"] = {"raised": False}
        del extra
    except Exception as e:  # noqa: BLE001
        out["one_more"] = {"raised": True, "oom": is_oom(e), "type": type(e).__name__, "message": first_line(e)}
    # A single tensor bigger than the whole limit: out of memory too, not a crash.
    try:
        big = torch.empty(args.limit + chunk, dtype=torch.uint8, device=dev)
        out["over_limit"] = {"raised": False}
        del big
    except Exception as e:  # noqa: BLE001
        out["over_limit"] = {"raised": True, "oom": is_oom(e), "type": type(e).__name__, "message": first_line(e)}

    # After the out-of-memory: the caching allocator still serves, computes, returns memory, and takes it back.
    rec = {}
    try:
        dropped = len(tensors) // 2
        del tensors[:dropped]
        again, err = take(dropped)
        rec["reused"] = again
        rec["reuse_wanted"] = dropped
        rec["reuse_error"] = None if err is None else first_line(err)
        del tensors[:]
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        free2, _ = torch.cuda.mem_get_info(0)
        rec["free_after_empty_cache"] = free2
        x = torch.arange(1 << 20, device=dev, dtype=torch.float64)
        rec["sum_ok"] = float(x.sum().item()) == float((1 << 20) * ((1 << 20) - 1) // 2)
        del x
        # Nearly everything that is free again, as one tensor.
        size = max(chunk, (free2 - chunk) // (2 * MiB) * (2 * MiB))
        y = torch.empty(size, dtype=torch.uint8, device=dev)
        y[-1] = 9
        torch.cuda.synchronize()
        rec["big_after"] = size
        rec["big_after_ok"] = int(y[-1].item()) == 9
        del y
        torch.cuda.empty_cache()
        free3, _ = torch.cuda.mem_get_info(0)
        rec["free_end"] = free3
    except Exception as e:  # noqa: BLE001
        rec["error"] = "%s: %s" % (type(e).__name__, first_line(e))
    out["after_oom"] = rec
    emit(out)
    return 0


# --------------------------------------------------------------------------------------------------------
# torch-compute (case 5): a matmul loop big enough to fill every SM, timed with CUDA events.


def cmd_torch_compute(args):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        emit({"fatal": "import torch: %s: %s" % (type(e).__name__, e)})
        return 1
    if not torch.cuda.is_available():
        emit({"fatal": "torch.cuda.is_available() is False (torch %s)" % torch.__version__})
        return 1
    dev = torch.device("cuda:0")
    cap = torch.cuda.get_device_capability(0)
    dtype = torch.float16 if cap >= (7, 0) else torch.float32
    n = args.n or (8192 if dtype == torch.float16 else 4096)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)

    def step():
        torch.matmul(a, b, out=c)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    out = {"torch": torch.__version__, "n": n, "dtype": str(dtype), "capability": list(cap),
           "sms": torch.cuda.get_device_properties(0).multi_processor_count, "modes": {}}

    per_graph = args.per_graph
    g = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream before capture, as the docs ask
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            step()
    torch.cuda.synchronize()

    def timed(fn, calls, warm_s, cap_s):
        """Warm up for warm_s (the limiter settles), then run `calls` calls between two events, in ~20
        batches with a sync after each, stopping early once `cap_s` of wall time has passed (a throttled
        run must not outlive its timeout)."""
        t_warm = time.perf_counter()
        while time.perf_counter() - t_warm < warm_s:
            fn()
            torch.cuda.synchronize()
        batch = max(1, calls // 20)
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        e0.record()
        done = 0
        while done < calls:
            k = min(batch, calls - done)
            for _ in range(k):
                fn()
            done += k
            torch.cuda.synchronize()
            if time.perf_counter() - t0 > cap_s:
                break
        e1.record()
        e1.synchronize()
        return done, e0.elapsed_time(e1), time.perf_counter() - t0

    def duty_cycled(fn, calls, warm_s, duty):
        """The same calls without any limiter, the device kept busy `duty` % of the time by the host:
        each call is timed with its own event pair and synchronised, and the next one starts on an
        absolute schedule (wall time = kernel time x 100 / duty), so sleep overshoot does not add up.
        What a GPU gives at that duty: under its power limit it clocks higher when it idles part of
        the time, so a call can be faster than in the saturating reference."""
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)

        def run(n_calls, stop_s):
            start = time.perf_counter()
            busy_ms = 0.0
            done = 0
            while done < n_calls and time.perf_counter() - start < stop_s:
                e0.record()
                fn()
                e1.record()
                e1.synchronize()
                busy_ms += e0.elapsed_time(e1)
                done += 1
                wake = start + busy_ms / 1000.0 * 100.0 / duty
                pause = wake - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            return done, busy_ms, time.perf_counter() - start

        run(1 << 30, warm_s)
        done, busy_ms, wall = run(calls, args.cap_s)
        return done, busy_ms, wall

    modes = [("eager", step, 1), ("graph", g.replay, per_graph)]
    for name, fn, per_call in modes:
        if args.duty:
            calls = max(1, (args.iters or 1) // per_call)
            done, busy_ms, wall = duty_cycled(fn, calls, args.warm_s, args.duty)
            iters = max(1, done * per_call)
            out["modes"][name] = {"iters": done * per_call, "planned_iters": calls * per_call,
                                  "ms": wall * 1000.0, "wall_s": wall, "per_iter_ms": wall * 1000.0 / iters,
                                  "kernel_ms_per_iter": busy_ms / iters, "duty_percent": args.duty}
            continue
        if args.iters:
            iters = args.iters
        else:
            # Calibrate: about target_s of work at full speed.
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(max(1, 10 // per_call)):
                fn()
            e1.record()
            e1.synchronize()
            ms_per_iter = e0.elapsed_time(e1) / (max(1, 10 // per_call) * per_call)
            iters = max(per_call * 4, int(args.target_s * 1000.0 / max(ms_per_iter, 1e-3)))
        calls = max(1, iters // per_call)
        done, ms, wall = timed(fn, calls, args.warm_s, args.cap_s)
        out["modes"][name] = {"iters": done * per_call, "planned_iters": calls * per_call, "ms": ms, "wall_s": wall,
                              "per_iter_ms": ms / max(1, done * per_call),
                              "tflops": 2.0 * n ** 3 * done * per_call / (ms / 1000.0) / 1e12 if ms > 0 else None}
    emit(out)
    return 0


# --------------------------------------------------------------------------------------------------------
# torch-launches (case 6 when no C compiler is around): host time per tiny kernel launch.


def cmd_torch_launches(args):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        emit({"fatal": "import torch: %s: %s" % (type(e).__name__, e)})
        return 1
    x = torch.zeros(1, device="cuda:0")
    for _ in range(args.warmup):
        x.add_(1)
    torch.cuda.synchronize()
    per = []
    for _ in range(args.reps):
        t0 = time.perf_counter_ns()
        for _ in range(args.iters):
            x.add_(1)
        torch.cuda.synchronize()
        per.append((time.perf_counter_ns() - t0) / args.iters)
    emit({"backend": "torch", "per_launch_ns": per, "median_ns": statistics.median(per)})
    return 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("nvml-info")
    s.add_argument("index", type=int)
    sub.add_parser("worker")
    s = sub.add_parser("alloc-apis")
    s.add_argument("--backend", choices=["cupy", "driver"], required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--limited", action="store_true")
    s = sub.add_parser("torch-mem")
    s.add_argument("--mode", choices=["baseline", "limited"], required=True)
    s.add_argument("--limit", type=int, required=True)
    s.add_argument("--chunk", type=int, required=True)
    s = sub.add_parser("torch-compute")
    s.add_argument("--iters", type=int, default=0, help="0 = calibrate to --target-s")
    s.add_argument("--target-s", type=float, default=1.5)
    s.add_argument("--cap-s", type=float, default=30.0)
    s.add_argument("--warm-s", type=float, default=0.5)
    s.add_argument("--per-graph", type=int, default=10)
    s.add_argument("--n", type=int, default=0)
    s.add_argument("--duty", type=float, default=0.0,
                   help="no limiter: keep the device busy this %% of the time with host sleeps (0 = saturate)")
    s = sub.add_parser("torch-launches")
    s.add_argument("--iters", type=int, default=20000)
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2000)
    args = p.parse_args(argv)
    handlers = {
        "nvml-info": cmd_nvml_info,
        "worker": cmd_worker,
        "alloc-apis": cmd_alloc_apis,
        "torch-mem": cmd_torch_mem,
        "torch-compute": cmd_torch_compute,
        "torch-launches": cmd_torch_launches,
    }
    if args.cmd not in handlers:
        p.print_help()
        return 2
    return handlers[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
