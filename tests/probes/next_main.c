/* Driver of the two-interposer tests. Linked with -l:libcuda.so.1, run with LD_PRELOAD set to libvgpu
 * and a second interposer in either order.
 *   next_main next <names...>  prints `next <name> <lib>` for dlsym(RTLD_NEXT) asked by the interposer
 *                              and `main_next <name> <lib>` for dlsym(RTLD_NEXT) asked by this program;
 *                              then calls cuMemAlloc_v2 through the whole chain under the limit.
 *   next_main dlsym <limit>    dlsym on the driver handle through a dlsym-overriding interposer. */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    CHECK(argc >= 2, "usage: next_main next|dlsym ...");
    if (strcmp(argv[1], "next") == 0) {
        void *(*interposer_next)(const char *) = (void *(*)(const char *))dlsym(RTLD_DEFAULT, "interposer_next");
        CHECK(interposer_next, "interposer_next not preloaded");
        for (int i = 2; i < argc; i++) {
            printf("next %s %s\n", argv[i], lib_of(interposer_next(argv[i])));
            printf("main_next %s %s\n", argv[i], lib_of(dlsym(RTLD_NEXT, argv[i])));
        }
        /* Whatever the order, the call chain ends in the limited driver. */
        CU_OK(cuInit(0));
        CUdevice dev;
        CUcontext ctx;
        CU_OK(cuDeviceGet(&dev, 0));
        CU_OK(cuDevicePrimaryCtxRetain(&ctx, dev));
        CU_OK(cuCtxSetCurrent(ctx));
        size_t free_bytes = 0, total = 0;
        CUresult info = cuMemGetInfo_v2(&free_bytes, &total);
        CUdeviceptr p = 0;
        CUresult over = cuMemAlloc_v2(&p, total + 1);
        printf("chain info=%d total=%zu over=%d\n", info, total, over);
    } else if (strcmp(argv[1], "dlsym") == 0) {
        CHECK(argc == 3, "usage: next_main dlsym <limit>");
        void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        CHECK(h, "dlopen: %s", dlerror());
        struct door_api api = {
            .door = "dlsym_chain",
            .cuInit = (PFN_cuInit)dlsym(h, "cuInit"),
            .cuDeviceGet = (PFN_cuDeviceGet)dlsym(h, "cuDeviceGet"),
            .cuDevicePrimaryCtxRetain = (PFN_cuDevicePrimaryCtxRetain)dlsym(h, "cuDevicePrimaryCtxRetain"),
            .cuCtxSetCurrent = (PFN_cuCtxSetCurrent)dlsym(h, "cuCtxSetCurrent"),
            .cuMemGetInfo = (PFN_cuMemGetInfo_v2)dlsym(h, "cuMemGetInfo_v2"),
            .cuMemAlloc = (PFN_cuMemAlloc_v2)dlsym(h, "cuMemAlloc_v2"),
            .cuMemFree = (PFN_cuMemFree_v2)dlsym(h, "cuMemFree_v2"),
        };
        unsigned long (*calls)(void) = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "interposer_dlsym_calls");
        CHECK(calls, "interposer_dlsym not preloaded");
        printf("lib cuMemAlloc_v2 %s\n", lib_of((void *)api.cuMemAlloc));
        printf("interposer_calls %lu\n", calls());
        limit_scenario(&api, parse_u64(argv[2]));
    }
    printf("done\n");
    return 0;
}
