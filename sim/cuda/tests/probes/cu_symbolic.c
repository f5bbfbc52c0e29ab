/* Run with cu_marker_preload preloaded. The program's own calls bind to the preloaded definitions
 * (that is what LD_PRELOAD does), but the simulated driver is linked -Bsymbolic like the real one:
 * its cuGetProcAddress table and its internal calls keep using its own functions. */
#include <dlfcn.h>

#include "probe.h"

typedef CUresult (*info_t)(size_t *, size_t *);
typedef CUresult (*ctx_device_t)(CUdevice *);

int main(void) {
    CUcontext ctx;
    CUdevice dev = -1;
    CUdeviceptr p;
    size_t f0 = 0, f1 = 0, t = 0;
    void *pfn = NULL, *lib;
    info_t own_info;
    ctx_device_t own_device;

    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));

    /* The program's direct calls reach the preloaded library. */
    EXPECT(cuMemGetInfo_v2(&f0, &t), CUDA_ERROR_UNKNOWN);
    EXPECT(cuCtxGetDevice(&dev), CUDA_ERROR_UNKNOWN);

    /* The driver's own definitions, as its handle's scope sees them. */
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    ASSERT(lib != NULL);
    own_info = (info_t)dlsym(lib, "cuMemGetInfo_v2");
    own_device = (ctx_device_t)dlsym(lib, "cuCtxGetDevice");
    ASSERT(own_info != NULL && (void *)own_info != (void *)&cuMemGetInfo_v2);

    /* cuGetProcAddress hands back the simulator's functions, not the interposed ones. */
    OK(cuGetProcAddress_v2("cuMemGetInfo", &pfn, 12000, 0, NULL));
    ASSERT(pfn == (void *)own_info);
    ASSERT(pfn != (void *)&cuMemGetInfo_v2);
    OK(((info_t)pfn)(&f0, &t));
    ASSERT(t > 0 && f0 > 0);
    OK(cuGetProcAddress_v2("cuCtxGetDevice", &pfn, 12000, 0, NULL));
    ASSERT(pfn == (void *)own_device);
    OK(((ctx_device_t)pfn)(&dev));
    ASSERT(dev == 0);

    /* Internal call chains are unaffected: allocation finds the current device and charges it. */
    OK(cuMemAlloc_v2(&p, 1 << 20));
    OK(own_info(&f1, &t));
    ASSERT(f0 - f1 == 1 << 20);
    OK(cuMemFree_v2(p));
    printf("preloaded direct calls: marker; driver table: own functions\n");
    PROBE_DONE();
}
