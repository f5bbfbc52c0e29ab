/* Front door 3: cuGetProcAddress / cuGetProcAddress_v2, the way libcudart, CuPy and cuda-bindings
 * reach the driver: one dlsym of the lookup function, then lookups by base name at a CUDA version with
 * stream flags. Checks that each answer is the entry point for exactly that ABI (the same pointer dlsym
 * gives for the versioned name), then runs the limit scenario through what the lookups returned.
 * Usage: door_getproc <v1|v2> <cuda-version> <flags> <limit-bytes> */
#include "probe_common.h"

static void *driver;
static int use_v2;
static PFN_cuGetProcAddress gpa_v1;
static PFN_cuGetProcAddress_v2 gpa_v2;

/* Ask the door; prints `lookup <base> <version> <flags> <code> <status> <lib>` for comparison with a
 * run without libvgpu. */
static void *lookup(const char *base, int version, cuuint64_t flags) {
    void *p = NULL;
    int status = -1;
    CUresult rc = use_v2 ? gpa_v2(base, &p, version, flags, &status) : gpa_v1(base, &p, version, flags);
    printf("lookup %s %d %llu %d %d %s\n", base, version, flags, rc, status, rc == CUDA_SUCCESS ? lib_of(p) : "-");
    if (rc != CUDA_SUCCESS) return NULL;
    if (use_v2) CHECK(status == CU_GET_PROC_ADDRESS_SUCCESS, "%s: success with status %d", base, status);
    return p;
}

/* The lookup must hand back exactly what dlsym gives for the versioned symbol of that ABI. */
static void *expect_abi(const char *base, int version, cuuint64_t flags, const char *symbol) {
    void *p = lookup(base, version, flags);
    void *want = dlsym(driver, symbol);
    CHECK(want, "dlsym(%s) is NULL", symbol);
    CHECK(p == want, "cuGetProcAddress%s(%s, %d, %llu) = %p (%s), dlsym(%s) = %p (%s)", use_v2 ? "_v2" : "", base,
          version, flags, p, lib_of(p), symbol, want, lib_of(want));
    return p;
}

/* The 2000 ABI, adapted to the scenario's shapes. */
static PFN_cuMemGetInfo v1_get_info;
static PFN_cuMemAlloc v1_alloc;
static PFN_cuMemFree v1_free;
static CUresult adapt_get_info(size_t *free_bytes, size_t *total_bytes) {
    unsigned int f = 0, t = 0;
    CUresult rc = v1_get_info(&f, &t);
    *free_bytes = f;
    *total_bytes = t;
    return rc;
}
static CUresult adapt_alloc(CUdeviceptr *dptr, size_t bytes) {
    if (bytes > 0xffffffffu) return CUDA_ERROR_OUT_OF_MEMORY; /* cannot be asked through this ABI */
    CUdeviceptr_v1 p = 0;
    CUresult rc = v1_alloc(&p, (unsigned int)bytes);
    *dptr = p;
    return rc;
}
static CUresult adapt_free(CUdeviceptr dptr) { return v1_free((CUdeviceptr_v1)dptr); }

int main(int argc, char **argv) {
    CHECK(argc == 5, "usage: door_getproc <v1|v2> <cuda-version> <flags> <limit-bytes>");
    use_v2 = strcmp(argv[1], "v2") == 0;
    int version = (int)parse_u64(argv[2]);
    cuuint64_t flags = parse_u64(argv[3]);
    unsigned long long limit = parse_u64(argv[4]);

    driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(driver, "dlopen libcuda.so.1: %s", dlerror());
    gpa_v1 = (PFN_cuGetProcAddress)dlsym(driver, "cuGetProcAddress");
    gpa_v2 = (PFN_cuGetProcAddress_v2)dlsym(driver, "cuGetProcAddress_v2");
    CHECK(gpa_v1 && gpa_v2, "dlsym of cuGetProcAddress[_v2] failed");
    printf("lib cuGetProcAddress %s\nlib cuGetProcAddress_v2 %s\n", lib_of((void *)gpa_v1), lib_of((void *)gpa_v2));

    /* Asked for itself, the lookup function answers with the (hooked) lookup function; libcudart then
     * uses what it got for 12000 for every later lookup. */
    expect_abi("cuGetProcAddress", 11030, 0, "cuGetProcAddress");
    void *self = expect_abi("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2");
    if (use_v2) gpa_v2 = (PFN_cuGetProcAddress_v2)self;

    const int old_abi = version < 3020;
    struct door_api api = {.door = use_v2 ? "getproc_v2" : "getproc_v1"};
    api.cuInit = (PFN_cuInit)expect_abi("cuInit", 12000, 0, "cuInit");
    api.cuDeviceGet = (PFN_cuDeviceGet)expect_abi("cuDeviceGet", 12000, 0, "cuDeviceGet");
    api.cuDevicePrimaryCtxRetain =
        (PFN_cuDevicePrimaryCtxRetain)expect_abi("cuDevicePrimaryCtxRetain", 12000, 0, "cuDevicePrimaryCtxRetain");
    api.cuCtxSetCurrent = (PFN_cuCtxSetCurrent)expect_abi("cuCtxSetCurrent", 12000, 0, "cuCtxSetCurrent");
    if (old_abi) {
        v1_get_info = (PFN_cuMemGetInfo)expect_abi("cuMemGetInfo", version, flags, "cuMemGetInfo");
        v1_alloc = (PFN_cuMemAlloc)expect_abi("cuMemAlloc", version, flags, "cuMemAlloc");
        v1_free = (PFN_cuMemFree)expect_abi("cuMemFree", version, flags, "cuMemFree");
        api.cuMemGetInfo = adapt_get_info;
        api.cuMemAlloc = adapt_alloc;
        api.cuMemFree = adapt_free;
    } else {
        api.cuMemGetInfo = (PFN_cuMemGetInfo_v2)expect_abi("cuMemGetInfo", version, flags, "cuMemGetInfo_v2");
        api.cuMemAlloc = (PFN_cuMemAlloc_v2)expect_abi("cuMemAlloc", version, flags, "cuMemAlloc_v2");
        api.cuMemFree = (PFN_cuMemFree_v2)expect_abi("cuMemFree", version, flags, "cuMemFree_v2");
    }
    expect_abi("cuDeviceTotalMem", version, flags, old_abi ? "cuDeviceTotalMem" : "cuDeviceTotalMem_v2");
    expect_abi("cuMemAllocPitch", version, flags, old_abi ? "cuMemAllocPitch" : "cuMemAllocPitch_v2");
    expect_abi("cuArrayCreate", version, flags, old_abi ? "cuArrayCreate" : "cuArrayCreate_v2");
    const int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    if (version >= 11020) {
        expect_abi("cuMemAllocAsync", version, flags, per_thread ? "cuMemAllocAsync_ptsz" : "cuMemAllocAsync");
        expect_abi("cuMemFreeAsync", version, flags, per_thread ? "cuMemFreeAsync_ptsz" : "cuMemFreeAsync");
        expect_abi("cuMemAllocFromPoolAsync", version, flags,
                   per_thread ? "cuMemAllocFromPoolAsync_ptsz" : "cuMemAllocFromPoolAsync");
        expect_abi("cuMemCreate", version, flags, "cuMemCreate");
    } else {
        /* Too old for the stream-ordered allocator: the answer (code, status) must be the driver's;
         * the test compares these lines with a run without libvgpu. */
        CHECK(lookup("cuMemAllocAsync", version, flags) == NULL, "cuMemAllocAsync found at %d", version);
    }
    if (version >= 7000) {
        expect_abi("cuLaunchKernel", version, flags, per_thread ? "cuLaunchKernel_ptsz" : "cuLaunchKernel");
    } else if (version >= 4000) {
        expect_abi("cuLaunchKernel", version, flags, "cuLaunchKernel");
    }
    /* Entry points nobody hooks come back as the driver's own. */
    expect_abi("cuModuleLoad", version, flags, "cuModuleLoad");
    expect_abi("cuDeviceGetName", version, flags, "cuDeviceGetName");
    CHECK(lookup("cuNoSuchFunction", version, flags) == NULL, "an unknown name was found");

    limit_scenario(&api, limit);
    printf("done\n");
    return 0;
}
