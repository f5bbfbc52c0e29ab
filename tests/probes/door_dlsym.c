/* Front door 2: dlopen("libcuda.so.1") + dlsym per function, the way libloading, ctypes and cudarc
 * reach the driver. Only libvgpu's dlsym override can see these calls.
 * Usage: door_dlsym <limit-bytes> [global|local] */
#include "probe_common.h"

int main(int argc, char **argv) {
    CHECK(argc == 2 || argc == 3, "usage: door_dlsym <limit-bytes> [global|local]");
    int mode = (argc == 3 && strcmp(argv[2], "global") == 0) ? RTLD_GLOBAL : RTLD_LOCAL;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | mode);
    CHECK(h, "dlopen libcuda.so.1: %s", dlerror());
    struct door_api api = {
        .door = "dlsym",
        .cuInit = (PFN_cuInit)dlsym(h, "cuInit"),
        .cuDeviceGet = (PFN_cuDeviceGet)dlsym(h, "cuDeviceGet"),
        .cuDevicePrimaryCtxRetain = (PFN_cuDevicePrimaryCtxRetain)dlsym(h, "cuDevicePrimaryCtxRetain"),
        .cuCtxSetCurrent = (PFN_cuCtxSetCurrent)dlsym(h, "cuCtxSetCurrent"),
        .cuMemGetInfo = (PFN_cuMemGetInfo_v2)dlsym(h, "cuMemGetInfo_v2"),
        .cuMemAlloc = (PFN_cuMemAlloc_v2)dlsym(h, "cuMemAlloc_v2"),
        .cuMemFree = (PFN_cuMemFree_v2)dlsym(h, "cuMemFree_v2"),
    };
    /* A repeated lookup answers the same. */
    CHECK(dlsym(h, "cuMemAlloc_v2") == (void *)api.cuMemAlloc, "second dlsym of cuMemAlloc_v2 differs");
    printf("lib cuMemAlloc_v2 %s\n", lib_of((void *)api.cuMemAlloc));
    limit_scenario(&api, parse_u64(argv[1]));
    printf("done\n");
    return 0;
}
