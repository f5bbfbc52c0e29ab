/* Front door 1: a program linked against libcuda.so.1 (-l:libcuda.so.1), the way pycuda is. Under
 * LD_PRELOAD the dynamic linker binds these calls to libvgpu's exports.
 * Usage: door_link <limit-bytes> */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: door_link <limit-bytes>");
    struct door_api api = {
        .door = "link",
        .cuInit = cuInit,
        .cuDeviceGet = cuDeviceGet,
        .cuDevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain,
        .cuCtxSetCurrent = cuCtxSetCurrent,
        .cuMemGetInfo = cuMemGetInfo_v2,
        .cuMemAlloc = cuMemAlloc_v2,
        .cuMemFree = cuMemFree_v2,
    };
    printf("lib cuMemAlloc_v2 %s\n", lib_of((void *)cuMemAlloc_v2));
    limit_scenario(&api, parse_u64(argv[1]));
    printf("done\n");
    return 0;
}
