"""cuda-bindings (cuda.bindings.driver): NVIDIA's own bindings, which dlsym only cuGetProcAddress_v2
and get every other entry point from it, as libcudart does. Takes device memory in chunks until the
driver refuses and prints one JSON line. Usage: cuda_bindings_oom.py [chunk-bytes] [--init-only]"""
import json
import sys

from cuda.bindings import driver as cu


def check(what, result):
    err = result[0]
    if err != cu.CUresult.CUDA_SUCCESS:
        print(json.dumps({"stage": what, "error_code": int(err), "error": str(err)}))
        sys.exit(2)
    return result[1:]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    chunk = int(args[0]) if args else 8 << 20
    (err,) = cu.cuInit(0)
    if "--init-only" in sys.argv:
        print(json.dumps({"stage": "init", "error_code": int(err)}))
        return 0
    if err != cu.CUresult.CUDA_SUCCESS:
        print(json.dumps({"stage": "init", "error_code": int(err)}))
        return 2
    (dev,) = check("cuDeviceGet", cu.cuDeviceGet(0))
    (ctx,) = check("cuDevicePrimaryCtxRetain", cu.cuDevicePrimaryCtxRetain(dev))
    check("cuCtxSetCurrent", cu.cuCtxSetCurrent(ctx))
    free_before, total = check("cuMemGetInfo", cu.cuMemGetInfo())
    held = []
    while True:
        err, ptr = cu.cuMemAlloc(chunk)
        if err != cu.CUresult.CUDA_SUCCESS:
            break
        held.append(ptr)
        if len(held) > 1 << 20:
            raise SystemExit("a million chunks and no error: the limit is not enforced")
    chunks = len(held)
    for ptr in held:
        check("cuMemFree", cu.cuMemFree(ptr))
    free_after, _ = check("cuMemGetInfo", cu.cuMemGetInfo())
    print(json.dumps({
        "chunk": chunk,
        "chunks": chunks,
        "total": int(total),
        "free_before": int(free_before),
        "free_after": int(free_after),
        "error_code": int(err),
        "error": str(err),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
