"""NVIDIA's cuda-bindings (cuda.bindings.driver) against the simulated driver.

cuda-bindings finds the driver with dlopen + dlsym("cuGetProcAddress_v2") and resolves every other
entry point through it, so this exercises the cuGetProcAddress path end to end. Prints `ok` lines;
any failure raises (non-zero exit).
"""
import ctypes

from cuda.bindings import driver as cu


def check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise SystemExit(f"CUDA error {err!r}")
    return values[0] if len(values) == 1 else tuple(values)


check(cu.cuInit(0))
version = check(cu.cuDriverGetVersion())
dev = check(cu.cuDeviceGet(0))
name = check(cu.cuDeviceGetName(64, dev)).split(b"\0")[0].decode()
print(f"ok device name={name.replace(' ', '_')} driver={version}")

ctx = check(cu.cuCtxCreate(0, dev))
free0, total = check(cu.cuMemGetInfo())

n = 1 << 16
dptr = check(cu.cuMemAlloc(n * 4))
free1, _ = check(cu.cuMemGetInfo())
assert free0 - free1 == n * 4, (free0, free1)

src = (ctypes.c_uint32 * n)(*range(n))
dst = (ctypes.c_uint32 * n)()
check(cu.cuMemcpyHtoD(dptr, src, n * 4))
check(cu.cuMemcpyDtoH(dst, dptr, n * 4))
assert list(dst) == list(range(n)), "round trip"
print(f"ok round trip bytes={n * 4} free_delta={free0 - free1}")

check(cu.cuMemFree(dptr))
free2, _ = check(cu.cuMemGetInfo())
assert free2 == free0, (free2, free0)
check(cu.cuCtxDestroy(ctx))
print("ok done")
