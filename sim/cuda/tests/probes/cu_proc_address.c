/* Loading the driver like libcudart, cuda-bindings and cudarc do: dlopen + dlsym, then
 * cuGetProcAddress_v2 for base names at several versions and flags. Not linked with -lcuda. */
#include <dlfcn.h>

#include "probe.h"

typedef CUresult (*get_proc_v2_t)(const char *, void **, int, unsigned long long, CUdriverProcAddressQueryResult *);
typedef CUresult (*get_proc_v1_t)(const char *, void **, int, unsigned long long);
typedef CUresult (*init_t)(unsigned int);
typedef CUresult (*version_t)(int *);
typedef CUresult (*retain_t)(CUcontext *, CUdevice);
typedef CUresult (*set_current_t)(CUcontext);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*free_t)(CUdeviceptr);
typedef CUresult (*info_t)(size_t *, size_t *);

static void *lib;
static get_proc_v2_t get_proc;

static void *sym(const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "dlsym(%s): %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

/* cuGetProcAddress_v2(base, version, flags) must hand back exactly the export `want`. */
static void expect_symbol(const char *base, int version, unsigned long long flags, const char *want) {
    void *pfn = (void *)0x1;
    CUdriverProcAddressQueryResult status = -1;
    OK(get_proc(base, &pfn, version, flags, &status));
    ASSERT(status == CU_GET_PROC_ADDRESS_SUCCESS);
    if (pfn != sym(want)) {
        fprintf(stderr, "cuGetProcAddress_v2(%s, %d, %llu) is not %s\n", base, version, flags, want);
        exit(1);
    }
}

static void expect_missing(const char *base, int version, unsigned long long flags, CUdriverProcAddressQueryResult why) {
    void *pfn = (void *)0x1;
    CUdriverProcAddressQueryResult status = -1;
    EXPECT(get_proc(base, &pfn, version, flags, &status), CUDA_ERROR_NOT_FOUND);
    ASSERT(pfn == NULL && status == why);
}

int main(void) {
    int version = 0;
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    get_proc = (get_proc_v2_t)sym("cuGetProcAddress_v2");

    /* Works before cuInit, as libcudart needs. libcudart asks for cuGetProcAddress itself and uses
     * the pointer it gets for 12000 from then on. */
    expect_symbol("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2");
    expect_symbol("cuGetProcAddress", 11030, 0, "cuGetProcAddress");
    expect_symbol("cuMemAlloc", 12000, 0, "cuMemAlloc_v2");
    expect_symbol("cuMemAlloc", 3020, 0, "cuMemAlloc_v2");
    expect_symbol("cuMemAlloc", 2000, 0, "cuMemAlloc");
    expect_symbol("cuMemAlloc", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemAlloc_v2");
    expect_symbol("cuMemGetInfo", 3020, 0, "cuMemGetInfo_v2");
    expect_symbol("cuCtxCreate", 12090, 0, "cuCtxCreate_v4");
    expect_symbol("cuCtxCreate", 11040, 0, "cuCtxCreate_v3");
    expect_symbol("cuCtxCreate", 3020, 0, "cuCtxCreate_v2");
    expect_symbol("cuLaunchKernel", 12000, 0, "cuLaunchKernel");
    expect_symbol("cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, "cuLaunchKernel");
    expect_symbol("cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuLaunchKernel_ptsz");
    expect_symbol("cuMemcpyHtoD", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemcpyHtoD_v2_ptds");
    expect_symbol("cuMemcpyHtoD", 12000, 0, "cuMemcpyHtoD_v2");
    expect_symbol("cuStreamBeginCapture", 12000, 0, "cuStreamBeginCapture_v2");
    expect_symbol("cuStreamBeginCapture", 10000, 0, "cuStreamBeginCapture");
    expect_symbol("cuDevicePrimaryCtxRelease", 11000, 0, "cuDevicePrimaryCtxRelease_v2");
    expect_symbol("cuDeviceGetUuid", 11040, 0, "cuDeviceGetUuid_v2");
    expect_symbol("cuEventElapsedTime", 12080, 0, "cuEventElapsedTime_v2");

    expect_missing("cuLaunchKernel", 3000, 0, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_missing("cuNoSuchFunction", 12000, 0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    expect_missing("cuTexRefSetAddress", 12000, 0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND); /* not simulated */
    {
        void *pfn = NULL;
        CUdriverProcAddressQueryResult status;
        int driver = 0;
        ((version_t)sym("cuDriverGetVersion"))(&driver);
        EXPECT(get_proc("cuMemAlloc", &pfn, driver + 10, 0, &status), CUDA_ERROR_INVALID_VALUE); /* newer than us */
        EXPECT(get_proc("cuMemAlloc", &pfn, 12000, 4, &status), CUDA_ERROR_INVALID_VALUE);       /* unknown flag */
        EXPECT(get_proc("cuMemAlloc", NULL, 12000, 0, &status), CUDA_ERROR_INVALID_VALUE);
        EXPECT(get_proc(NULL, &pfn, 12000, 0, &status), CUDA_ERROR_INVALID_VALUE);
        OK(get_proc("cuMemAlloc", &pfn, 12000, 0, NULL)); /* the status is optional */
    }

    /* The pointer handed back for cuGetProcAddress answers the same; the 11.3 ABI too. */
    {
        get_proc_v2_t again = NULL;
        get_proc_v1_t v1 = NULL;
        void *pfn = NULL;
        OK(get_proc("cuGetProcAddress", (void **)&again, 12000, 0, NULL));
        OK(again("cuMemFree", &pfn, 12000, 0, NULL));
        ASSERT(pfn == sym("cuMemFree_v2"));
        OK(get_proc("cuGetProcAddress", (void **)&v1, 11030, 0, NULL));
        OK(v1("cuMemFree", &pfn, 11030, 0));
        ASSERT(pfn == sym("cuMemFree_v2"));
        EXPECT(v1("cuNoSuchFunction", &pfn, 11030, 0), CUDA_ERROR_NOT_FOUND);
    }

    /* And the functions work when called through those pointers. */
    {
        init_t init;
        version_t get_version;
        retain_t retain;
        set_current_t set_current;
        alloc_t alloc;
        free_t mem_free;
        info_t info;
        CUcontext ctx;
        CUdeviceptr p = 0;
        size_t f0, f1, t;
        OK(get_proc("cuInit", (void **)&init, 12000, 0, NULL));
        OK(get_proc("cuDriverGetVersion", (void **)&get_version, 12000, 0, NULL));
        OK(get_proc("cuDevicePrimaryCtxRetain", (void **)&retain, 12000, 0, NULL));
        OK(get_proc("cuCtxSetCurrent", (void **)&set_current, 12000, 0, NULL));
        OK(get_proc("cuMemAlloc", (void **)&alloc, 12000, 0, NULL));
        OK(get_proc("cuMemFree", (void **)&mem_free, 12000, 0, NULL));
        OK(get_proc("cuMemGetInfo", (void **)&info, 12000, 0, NULL));
        OK(init(0));
        OK(get_version(&version));
        printf("driver version=%d\n", version);
        OK(retain(&ctx, 0));
        OK(set_current(ctx));
        OK(info(&f0, &t));
        OK(alloc(&p, 1 << 20));
        OK(info(&f1, &t));
        ASSERT(f0 - f1 == 1 << 20);
        OK(mem_free(p));
    }
    PROBE_DONE();
}
