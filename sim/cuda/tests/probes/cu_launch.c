/* Modules, kernels and what they do to data and time; streams, events, libraries, graphs.
 * argv[1]: a module file for cuModuleLoad. Timing checks are lower bounds only: simulated time can
 * run late on a busy machine, never early. */
#include <stdint.h>

#include "probe.h"

#define MiB (1024ull * 1024ull)

static CUdeviceptr dst;
static uint32_t host[1 << 20];

static int all_equal(const uint32_t *v, size_t n, uint32_t want) {
    for (size_t i = 0; i < n; i++)
        if (v[i] != want) return 0;
    return 1;
}

static void read_back(size_t n) {
    memset(host, 0, n * 4);
    OK(cuMemcpyDtoH_v2(host, dst, n * 4));
}

int main(int argc, char **argv) {
    CUcontext ctx;
    CUmodule mod, bad;
    CUfunction fill, busy, sleep20, f;
    CUstream s, s2, nonblocking;
    CUevent start, end, untimed;
    const size_t n = 1 << 20;
    double t0, dt;
    float ms = 0;

    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));
    OK(cuStreamCreate(&s, 0));
    OK(cuStreamCreate(&s2, 0));
    OK(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING));
    OK(cuMemAlloc_v2(&dst, n * 4));

    /* Modules. */
    OK(cuModuleLoadData(&mod, PROBE_MODULE));
    EXPECT(cuModuleLoadData(&bad, "not a module"), CUDA_ERROR_INVALID_IMAGE);
    EXPECT(cuModuleLoadData(&bad, "SIMGPU-MODULE 1\nkernel k oops\n"), CUDA_ERROR_INVALID_IMAGE);
    EXPECT(cuModuleLoadData(&bad, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuModuleLoad(&bad, "/nonexistent/module.simgpu"), CUDA_ERROR_FILE_NOT_FOUND);
    if (argc > 1) {
        CUmodule from_file;
        OK(cuModuleLoad(&from_file, argv[1]));
        OK(cuModuleGetFunction(&f, from_file, "from_file"));
        OK(cuModuleUnload(from_file));
        EXPECT(cuModuleGetFunction(&f, from_file, "from_file"), CUDA_ERROR_INVALID_HANDLE);
    }
    OK(cuModuleGetFunction(&fill, mod, "fill_u32"));
    OK(cuModuleGetFunction(&busy, mod, "busy"));
    OK(cuModuleGetFunction(&sleep20, mod, "sleep_20000us"));
    EXPECT(cuModuleGetFunction(&f, mod, "missing"), CUDA_ERROR_NOT_FOUND);
    {
        CUdeviceptr g = 0;
        size_t bytes = 0;
        int v = 0, blocks = 0;
        OK(cuModuleGetGlobal_v2(&g, &bytes, mod, "counter"));
        ASSERT(g != 0 && bytes == 256);
        memset(host, 0xff, 256);
        OK(cuMemcpyDtoH_v2(host, g, 256));
        ASSERT(all_equal(host, 64, 0));
        EXPECT(cuModuleGetGlobal_v2(&g, &bytes, mod, "nope"), CUDA_ERROR_NOT_FOUND);
        OK(cuFuncGetAttribute(&v, 0 /* MAX_THREADS_PER_BLOCK */, busy));
        ASSERT(v == 1024);
        OK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, busy, 256, 0));
        ASSERT(blocks == 8); /* 2048 threads per SM on an A100 */
    }

    /* fill_u32 really writes: kernelParams, then the packed `extra` buffer. */
    OK(launch_fill(fill, NULL, dst, 0x5a5a0001u, n));
    read_back(n);
    ASSERT(all_equal(host, n, 0x5a5a0001u));
    {
        struct { CUdeviceptr dst; uint32_t value; uint32_t pad; uint64_t count; } args = {dst, 0x77u, 0, 1000};
        size_t size = sizeof args;
        void *extra[] = {(void *)1 /* BUFFER_POINTER */, &args, (void *)2 /* BUFFER_SIZE */, &size, (void *)0};
        OK(cuLaunchKernel(fill, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
        read_back(1001);
        ASSERT(all_equal(host, 1000, 0x77u) && host[1000] == 0x5a5a0001u);
    }
    EXPECT(launch_fill(fill, NULL, dst + 4, 1, n), CUDA_ERROR_ILLEGAL_ADDRESS); /* one past the end */
    EXPECT(cuLaunchKernel(busy, 1, 1, 1, 2048, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuLaunchKernel(busy, 0, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuLaunchKernel(busy, 1, 1, 1, 32, 1, 1, 1 << 20, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);

    /* A 20 ms kernel takes at least 20 ms to synchronise, and is not ready before. */
    t0 = now_ms();
    OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    EXPECT(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    OK(cuStreamSynchronize(s));
    dt = now_ms() - t0;
    printf("sleep elapsed_ms=%.3f\n", dt);
    ASSERT(dt >= 20.0);
    OK(cuStreamQuery(s));

    /* Events measure the simulated time between them. */
    OK(cuEventCreate(&start, CU_EVENT_DEFAULT));
    OK(cuEventCreate(&end, CU_EVENT_DEFAULT));
    OK(cuEventCreate(&untimed, CU_EVENT_DISABLE_TIMING));
    EXPECT(cuEventElapsedTime(&ms, start, end), CUDA_ERROR_INVALID_HANDLE); /* never recorded */
    OK(cuEventQuery(start));                                                 /* nothing recorded: done */
    OK(cuEventRecord(start, s));
    OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    OK(cuEventRecord(end, s));
    OK(cuEventRecord(untimed, s));
    EXPECT(cuEventQuery(end), CUDA_ERROR_NOT_READY);
    EXPECT(cuEventElapsedTime(&ms, start, end), CUDA_ERROR_NOT_READY);
    OK(cuEventSynchronize(end));
    OK(cuEventQuery(end));
    OK(cuEventElapsedTime(&ms, start, end));
    printf("event elapsed_ms=%.3f\n", ms);
    ASSERT(ms >= 20.0f);
    EXPECT(cuEventElapsedTime(&ms, start, untimed), CUDA_ERROR_INVALID_HANDLE);

    /* A stream waiting on an event starts after it. */
    t0 = now_ms();
    OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    OK(cuEventRecord(end, s));
    OK(cuStreamWaitEvent(nonblocking, end, 0));
    OK(launch_fill(fill, nonblocking, dst, 3, 16));
    OK(cuStreamSynchronize(nonblocking));
    ASSERT(now_ms() - t0 >= 20.0);

    /* The legacy default stream waits for blocking streams; cuCtxSynchronize for every stream. */
    t0 = now_ms();
    OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, s2, NULL, NULL));
    OK(cuStreamSynchronize(NULL));
    ASSERT(now_ms() - t0 >= 20.0);
    t0 = now_ms();
    OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, nonblocking, NULL, NULL));
    OK(cuCtxSynchronize());
    ASSERT(now_ms() - t0 >= 20.0);

    /* The per-thread default stream (_ptsz with NULL) is CU_STREAM_PER_THREAD. */
    t0 = now_ms();
    OK(cuLaunchKernel_ptsz(sleep20, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    OK(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    ASSERT(now_ms() - t0 >= 20.0);
    {
        CUcontext owner = NULL;
        int prio = 1;
        CUstream hi;
        OK(cuStreamGetCtx(CU_STREAM_LEGACY, &owner));
        ASSERT(owner == ctx);
        OK(cuStreamCreateWithPriority(&hi, 0, -100)); /* clamped to the greatest priority */
        OK(cuStreamGetPriority(hi, &prio));
        ASSERT(prio == -5);
        OK(cuStreamDestroy_v2(hi));
    }

    /* Cooperative launches must fit on the device at once: 108 SMs x 8 blocks of 256 threads. */
    {
        CUlaunchAttribute attr;
        CUlaunchConfig cfg;
        memset(&attr, 0, sizeof attr);
        attr.id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
        attr.value.cooperative = 1;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDimX = 108 * 8;
        cfg.gridDimY = cfg.gridDimZ = 1;
        cfg.blockDimX = 256;
        cfg.blockDimY = cfg.blockDimZ = 1;
        cfg.hStream = s;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        OK(cuLaunchKernelEx(&cfg, busy, NULL, NULL));
        cfg.gridDimX += 1;
        EXPECT(cuLaunchKernelEx(&cfg, busy, NULL, NULL), CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        cfg.numAttrs = 0;
        OK(cuLaunchKernelEx(&cfg, busy, NULL, NULL));
        OK(cuLaunchCooperativeKernel(busy, 108 * 8, 1, 1, 256, 1, 1, 0, s, NULL));
        EXPECT(cuLaunchCooperativeKernel(busy, 108 * 8 + 1, 1, 1, 256, 1, 1, 0, s, NULL),
               CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        OK(cuStreamSynchronize(s));
    }

    /* Context-independent loading: a library's kernel, as a function or directly. */
    {
        CUlibrary lib;
        CUkernel k;
        OK(cuLibraryLoadData(&lib, PROBE_MODULE, NULL, NULL, 0, NULL, NULL, 0));
        OK(cuLibraryGetKernel(&k, lib, "fill_u32"));
        EXPECT(cuLibraryGetKernel(&k, lib, "nope"), CUDA_ERROR_NOT_FOUND);
        OK(cuLibraryGetKernel(&k, lib, "fill_u32"));
        OK(cuKernelGetFunction(&f, k));
        OK(launch_fill(f, NULL, dst, 41, n));
        read_back(n);
        ASSERT(all_equal(host, n, 41));
        OK(launch_fill((CUfunction)k, NULL, dst, 42, n));
        read_back(n);
        ASSERT(all_equal(host, n, 42));
        OK(cuLibraryUnload(lib));
    }

    /* Stream capture records work instead of running it; the graph replays it. */
    {
        CUgraph g;
        CUgraphExec exec;
        CUstreamCaptureStatus status;
        unsigned long long id = 0;
        const CUgraphNode *deps = NULL;
        size_t ndeps = 0, nnodes = 0;
        CUgraphNode nodes[8];
        OK(launch_fill(fill, NULL, dst, 1, n));
        OK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
        OK(cuStreamIsCapturing(s, &status));
        ASSERT(status == CU_STREAM_CAPTURE_STATUS_ACTIVE);
        OK(launch_fill(fill, s, dst, 2, n));
        OK(cuMemsetD32Async(dst, 3, 10, s));
        OK(cuLaunchKernel(sleep20, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
        OK(cuStreamGetCaptureInfo_v2(s, &status, &id, NULL, &deps, &ndeps));
        ASSERT(status == CU_STREAM_CAPTURE_STATUS_ACTIVE && id != 0 && ndeps == 1 && deps != NULL);
        OK(cuStreamEndCapture(s, &g));
        OK(cuStreamIsCapturing(s, &status));
        ASSERT(status == CU_STREAM_CAPTURE_STATUS_NONE);
        read_back(n);
        ASSERT(all_equal(host, n, 1)); /* nothing ran while capturing */
        OK(cuGraphGetNodes(g, NULL, &nnodes));
        ASSERT(nnodes == 3);
        nnodes = 2;
        OK(cuGraphGetNodes(g, nodes, &nnodes));
        ASSERT(nnodes == 3 && nodes[0] != NULL && nodes[1] != NULL);
        OK(cuGraphInstantiateWithFlags(&exec, g, 0));
        t0 = now_ms();
        OK(cuGraphLaunch(exec, s));
        OK(cuGraphLaunch(exec, s));
        OK(cuStreamSynchronize(s));
        dt = now_ms() - t0;
        printf("graph elapsed_ms=%.3f\n", dt);
        ASSERT(dt >= 40.0); /* two replays of a 20 ms node */
        read_back(n);
        ASSERT(all_equal(host, 10, 3) && all_equal(host + 10, n - 10, 2));
        OK(cuGraphExecDestroy(exec));
        OK(cuGraphDestroy(g));
    }

    /* A graph built node by node. */
    {
        CUgraph g;
        CUgraphNode a, b;
        CUgraphExec exec;
        CUDA_GRAPH_INSTANTIATE_PARAMS ip;
        CUdeviceptr d = dst;
        uint32_t value = 9;
        unsigned long long count = n;
        void *params[] = {&d, &value, &count};
        CUDA_KERNEL_NODE_PARAMS_v2 kp;
        memset(&kp, 0, sizeof kp);
        kp.func = fill;
        kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1;
        kp.blockDimX = 256;
        kp.blockDimY = kp.blockDimZ = 1;
        kp.kernelParams = params;
        OK(cuGraphCreate(&g, 0));
        OK(cuGraphAddKernelNode_v2(&a, g, NULL, 0, &kp));
        value = 10; /* parameters are copied when the node is added */
        kp.func = sleep20;
        kp.kernelParams = NULL;
        OK(cuGraphAddKernelNode_v2(&b, g, &a, 1, &kp));
        EXPECT(cuGraphAddKernelNode_v2(&b, g, (CUgraphNode *)&g, 1, &kp), CUDA_ERROR_INVALID_VALUE);
        memset(&ip, 0, sizeof ip);
        ip.result_out = -1;
        OK(cuGraphInstantiateWithParams(&exec, g, &ip));
        ASSERT(ip.result_out == 0);
        OK(cuGraphLaunch(exec, s));
        OK(cuStreamSynchronize(s));
        read_back(n);
        ASSERT(all_equal(host, n, 9));
        OK(cuGraphExecDestroy(exec));
        OK(cuGraphInstantiate_v2(&exec, g, NULL, NULL, 0));
        OK(cuGraphExecDestroy(exec));
        OK(cuGraphDestroy(g));
    }

    /* Synchronising a capturing stream is illegal and spoils the capture. */
    {
        CUgraph g = (CUgraph)0x1;
        EXPECT(cuStreamBeginCapture_v2(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        OK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_RELAXED));
        EXPECT(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_ERROR_ILLEGAL_STATE);
        EXPECT(cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        EXPECT(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        ASSERT(g == NULL);
        EXPECT(cuStreamEndCapture(s, &g), CUDA_ERROR_ILLEGAL_STATE);
    }

    OK(cuMemFree_v2(dst));
    OK(cuModuleUnload(mod));
    EXPECT(cuModuleUnload(mod), CUDA_ERROR_INVALID_HANDLE);
    PROBE_DONE();
}
