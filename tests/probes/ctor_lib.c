/* A library whose ELF constructor uses CUDA before main and possibly before libvgpu's own
 * constructor has run (libfaketime's test_constructors idea). Built with -shared -fPIC
 * -l:libcuda.so.1 and either preloaded or linked into ctor_main. Reads the limit from
 * VGPU_PROBE_LIMIT and prints `ctor ...` lines; a failed check prints FAIL and exits 1. */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

__attribute__((constructor)) static void use_cuda_early(void) {
    const char *limit_text = getenv("VGPU_PROBE_LIMIT");
    if (!limit_text) return;
    unsigned long long limit = parse_u64(limit_text);
    struct door_api api = {
        .door = "constructor",
        .cuInit = cuInit,
        .cuDeviceGet = cuDeviceGet,
        .cuDevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain,
        .cuCtxSetCurrent = cuCtxSetCurrent,
        .cuMemGetInfo = cuMemGetInfo_v2,
        .cuMemAlloc = cuMemAlloc_v2,
        .cuMemFree = cuMemFree_v2,
    };
    printf("ctor lib cuMemAlloc_v2 %s\n", lib_of((void *)cuMemAlloc_v2));
    limit_scenario(&api, limit);
    printf("ctor done\n");
    fflush(stdout);
}
