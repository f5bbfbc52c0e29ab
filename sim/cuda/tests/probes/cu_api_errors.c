/* The driver's argument checks and error codes: before cuInit, NULL out-pointers, invalid devices,
 * bad handles, no current context; the context stack; error names. Linked with -lcuda. */
#include "probe.h"

int main(void) {
    int n = 0, v = 0;
    CUdevice dev = 0;
    CUcontext ctx = NULL, primary = NULL, cur = NULL;
    CUdeviceptr p = 0;
    CUstream stream = NULL;
    size_t free_b = 0, total_b = 0;
    const char *str = NULL;
    char name[64];

    /* Before cuInit: version and error strings work, everything else is NOT_INITIALIZED. */
    OK(cuDriverGetVersion(&v));
    ASSERT(v > 0);
    printf("driver version=%d\n", v);
    EXPECT(cuDriverGetVersion(NULL), CUDA_ERROR_INVALID_VALUE);
    OK(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &str));
    ASSERT(strcmp(str, "CUDA_ERROR_OUT_OF_MEMORY") == 0);
    OK(cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY, &str));
    ASSERT(strcmp(str, "out of memory") == 0);
    EXPECT(cuGetErrorName(12345, &str), CUDA_ERROR_INVALID_VALUE);
    ASSERT(str == NULL);
    EXPECT(cuGetErrorName(CUDA_SUCCESS, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT(cuDeviceGet(&dev, 0), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT(cuCtxGetCurrent(&cur), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT(cuMemAlloc_v2(&p, 16), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_ERROR_NOT_INITIALIZED);

    EXPECT(cuInit(1), CUDA_ERROR_INVALID_VALUE);
    OK(cuInit(0));
    OK(cuInit(0));

    /* NULL out-pointers. */
    EXPECT(cuDeviceGetCount(NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGet(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceTotalMem_v2(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGetAttribute(NULL, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGetName(NULL, 64, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGetUuid(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDevicePrimaryCtxRetain(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuCtxGetCurrent(NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuCtxCreate_v2(NULL, 0, 0), CUDA_ERROR_INVALID_VALUE);

    /* Invalid devices and attributes. */
    OK(cuDeviceGetCount(&n));
    ASSERT(n >= 1);
    EXPECT(cuDeviceGet(&dev, n), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceGet(&dev, -1), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceGetName(name, sizeof name, n), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceTotalMem_v2(&total_b, 99), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 99), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDevicePrimaryCtxRetain(&ctx, n), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuCtxCreate_v2(&ctx, 0, n), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceGetAttribute(&v, 0, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX, 0), CUDA_ERROR_INVALID_VALUE);
    v = 7;
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX - 1, 0)); /* valid but nothing to report */
    ASSERT(v == 0);
    EXPECT(cuDevicePrimaryCtxRelease_v2(0), CUDA_ERROR_INVALID_CONTEXT); /* never retained */

    /* No current context. */
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == NULL);
    EXPECT(cuMemAlloc_v2(&p, 16), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuMemGetInfo_v2(&free_b, &total_b), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuStreamCreate(&stream, 0), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuStreamSynchronize(NULL), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxPopCurrent_v2(&cur), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxSetCurrent((CUcontext)0x1234), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxPushCurrent_v2((CUcontext)0x1234), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuCtxDestroy_v2((CUcontext)0x1234), CUDA_ERROR_INVALID_CONTEXT);

    /* The context stack: cuCtxCreate pushes, push/pop nest, SetCurrent replaces the top. */
    OK(cuCtxCreate_v2(&ctx, 0, 0));
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == ctx);
    OK(cuDevicePrimaryCtxRetain(&primary, 0));
    ASSERT(primary != ctx);
    {
        unsigned int flags = 99;
        int active = 0;
        OK(cuDevicePrimaryCtxGetState(0, &flags, &active));
        ASSERT(active == 1 && flags == 0);
    }
    OK(cuCtxPushCurrent_v2(primary));
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == primary);
    OK(cuCtxPopCurrent_v2(&cur));
    ASSERT(cur == primary);
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == ctx);
    OK(cuCtxSetCurrent(primary));
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == primary);
    OK(cuCtxSetCurrent(NULL));
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == NULL);
    OK(cuCtxSetCurrent(ctx));
    {
        unsigned int api = 0;
        OK(cuCtxGetApiVersion(NULL, &api));
        ASSERT(api >= 3020);
        EXPECT(cuCtxGetApiVersion((CUcontext)0x1234, &api), CUDA_ERROR_INVALID_CONTEXT);
    }
    OK(cuCtxGetDevice(&dev));
    ASSERT(dev == 0);
    EXPECT(cuCtxDestroy_v2(primary), CUDA_ERROR_INVALID_CONTEXT); /* primary contexts are released, not destroyed */

    /* Bad handles with a context. */
    EXPECT(cuStreamSynchronize((CUstream)0x1234), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuEventRecord((CUevent)0x1234, NULL), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuEventSynchronize((CUevent)0x1234), CUDA_ERROR_INVALID_HANDLE);
    {
        CUfunction f;
        EXPECT(cuModuleGetFunction(&f, (CUmodule)0x1234, "busy"), CUDA_ERROR_INVALID_HANDLE);
        EXPECT(cuLaunchKernel((CUfunction)0x1234, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_HANDLE);
    }
    OK(cuStreamCreate(&stream, 0));
    OK(cuStreamDestroy_v2(stream));
    EXPECT(cuStreamSynchronize(stream), CUDA_ERROR_INVALID_HANDLE); /* destroyed */
    EXPECT(cuStreamDestroy_v2(NULL), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuStreamCreate(&stream, 4), CUDA_ERROR_INVALID_VALUE);

    /* Frees: NULL is fine, garbage is not. */
    OK(cuMemFree_v2(0));
    EXPECT(cuMemFree_v2(0x1234), CUDA_ERROR_INVALID_VALUE);
    OK(cuMemFreeHost(NULL));
    EXPECT(cuMemHostUnregister(NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuMemAlloc_v2(&p, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuMemAlloc_v2(NULL, 16), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuMemGetInfo_v2(NULL, &total_b), CUDA_ERROR_INVALID_VALUE);

    /* A destroyed context is gone for every call that names it. */
    OK(cuCtxDestroy_v2(ctx));
    OK(cuCtxGetCurrent(&cur));
    ASSERT(cur == NULL); /* destroying the current context pops it */
    EXPECT(cuCtxSetCurrent(ctx), CUDA_ERROR_INVALID_CONTEXT);
    OK(cuDevicePrimaryCtxRelease_v2(0));
    {
        unsigned int flags = 0;
        int active = 1;
        OK(cuDevicePrimaryCtxGetState(0, &flags, &active));
        ASSERT(active == 0);
    }
    PROBE_DONE();
}
