/* A small multi-purpose client for the multi-process and fault-injection tests. Prints results;
 * the test decides what they must be.
 *   cu_tool hold <dev> <bytes>      allocate, print `alloc=<code>`, then wait to be killed
 *   cu_tool alloc <dev> <bytes>     allocate, print `alloc=<code>`, exit
 *   cu_tool allocs <count> <bytes>  `count` allocations on device 0, print each code
 *   cu_tool kernels <n> <micros>    n sleep kernels on the default stream, sync, print elapsed_ms
 *   cu_tool retain <dev>            print the primary-context retain code, and a launch's
 *   cu_tool timed_info              time one cuMemGetInfo_v2 call (SIMGPU_SLOW)
 */
#include <unistd.h>

#include "probe.h"

static void context_on(int dev) {
    CUcontext ctx;
    OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    OK(cuCtxSetCurrent(ctx));
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    OK(cuInit(0));
    if (!strcmp(mode, "hold") || !strcmp(mode, "alloc")) {
        CUdeviceptr p = 0;
        size_t f = 0, t = 0;
        context_on(atoi(argv[2]));
        CUresult rc = cuMemAlloc_v2(&p, strtoull(argv[3], NULL, 0));
        OK(cuMemGetInfo_v2(&f, &t));
        printf("alloc=%d free=%zu\n", rc, f);
        fflush(stdout);
        if (!strcmp(mode, "hold")) {
            for (;;) pause();
        }
        return 0;
    }
    if (!strcmp(mode, "allocs")) {
        int count = atoi(argv[2]);
        context_on(0);
        for (int i = 1; i <= count; i++) {
            CUdeviceptr p = 0;
            printf("alloc%d=%d\n", i, cuMemAlloc_v2(&p, strtoull(argv[3], NULL, 0)));
        }
        return 0;
    }
    if (!strcmp(mode, "kernels")) {
        CUmodule mod;
        CUfunction f;
        char name[64];
        int n = atoi(argv[2]);
        context_on(0);
        snprintf(name, sizeof name, "sleep_%sus", argv[3]);
        OK(cuModuleLoadData(&mod, PROBE_MODULE));
        OK(cuModuleGetFunction(&f, mod, name));
        double t0 = now_ms();
        for (int i = 0; i < n; i++) OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
        OK(cuCtxSynchronize());
        printf("elapsed_ms=%.3f\n", now_ms() - t0);
        return 0;
    }
    if (!strcmp(mode, "retain")) {
        CUcontext ctx = NULL;
        CUresult rc = cuDevicePrimaryCtxRetain(&ctx, atoi(argv[2]));
        printf("retain=%d\n", rc);
        return 0;
    }
    if (!strcmp(mode, "timed_info")) {
        size_t f, t;
        context_on(0);
        double t0 = now_ms();
        OK(cuMemGetInfo_v2(&f, &t));
        printf("elapsed_ms=%.3f\n", now_ms() - t0);
        return 0;
    }
    return 2;
}
