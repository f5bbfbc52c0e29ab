/* Many threads using one context at once: allocations, copies, launches on their own streams,
 * events, frees. Checks data and that every byte comes back; a deadlock is caught by the test's
 * deadline. */
#include <pthread.h>
#include <stdint.h>

#include "probe.h"

#define THREADS 8
#define ROUNDS 500

static CUcontext ctx;
static CUfunction fill;

static void *worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    CUstream s;
    CUevent e;
    uint32_t buf[1024];
    OK(cuCtxSetCurrent(ctx));
    OK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    OK(cuEventCreate(&e, 0));
    for (int r = 0; r < ROUNDS; r++) {
        CUdeviceptr p = 0;
        uint32_t value = (uint32_t)(id << 16 | r);
        OK(cuMemAlloc_v2(&p, sizeof buf));
        OK(launch_fill(fill, s, p, value, 1024));
        OK(cuEventRecord(e, s));
        OK(cuEventSynchronize(e));
        OK(cuMemcpyDtoHAsync_v2(buf, p, sizeof buf, s));
        OK(cuStreamSynchronize(s));
        for (int i = 0; i < 1024; i++) ASSERT(buf[i] == value);
        OK(cuMemFree_v2(p));
    }
    OK(cuEventDestroy_v2(e));
    OK(cuStreamDestroy_v2(s));
    return NULL;
}

int main(void) {
    CUmodule mod;
    pthread_t threads[THREADS];
    size_t free0, free1, total;
    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));
    OK(cuModuleLoadData(&mod, PROBE_MODULE));
    OK(cuModuleGetFunction(&fill, mod, "fill_u32"));
    OK(cuMemGetInfo_v2(&free0, &total));
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    OK(cuMemGetInfo_v2(&free1, &total));
    ASSERT(free1 == free0);
    PROBE_DONE();
}
