/* Every door must hand out the same pointer for the same ABI: the linked symbol, dlsym on the
 * driver's handle, dlsym(RTLD_DEFAULT), and cuGetProcAddress[_v2] at the ABI's version and flags.
 * Prints `sym <name> <library> <offset-in-library>` per name; the test checks which library answered
 * (libvgpu.so for hooks, the driver for everything else, at the same offset as without libvgpu).
 * Linked with -l:libcuda.so.1 -l:libnvidia-ml.so.1; symbols are weak so a missing one links. */
#define VGPU_LINK_DRIVER
#define VGPU_LINK_NVML
#define VGPU_PROTO_ATTR __attribute__((weak))
#include "probe_common.h"

struct named {
    const char *name;
    void *linked;
};
#define VGPU_NAMED(ret, name, params) {#name, (void *)name},
static const struct named cuda_syms[] = {CU_FUNCS(VGPU_NAMED){NULL, NULL}};
static const struct named nvml_syms[] = {NVML_FUNCS(VGPU_NAMED){NULL, NULL}};

/* The cuGetProcAddress request that stands for each exported ABI (abi/src/generated/proc_table.rs). */
struct request {
    const char *symbol, *base;
    int version;
    cuuint64_t flags;
};
static const struct request requests[] = {
    {"cuInit", "cuInit", 2000, 0},
    {"cuMemGetInfo_v2", "cuMemGetInfo", 3020, 0},
    {"cuMemAlloc_v2", "cuMemAlloc", 3020, 0},
    {"cuMemFree_v2", "cuMemFree", 3020, 0},
    {"cuMemAllocPitch_v2", "cuMemAllocPitch", 3020, 0},
    {"cuMemAllocManaged", "cuMemAllocManaged", 6000, 0},
    {"cuMemAllocAsync", "cuMemAllocAsync", 11020, 0},
    {"cuMemAllocAsync_ptsz", "cuMemAllocAsync", 11020, 2},
    {"cuMemFreeAsync", "cuMemFreeAsync", 11020, 0},
    {"cuMemFreeAsync_ptsz", "cuMemFreeAsync", 11020, 2},
    {"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync", 11020, 0},
    {"cuMemPoolTrimTo", "cuMemPoolTrimTo", 11020, 0},
    {"cuMemCreate", "cuMemCreate", 10020, 0},
    {"cuMemRelease", "cuMemRelease", 10020, 0},
    {"cuArrayCreate_v2", "cuArrayCreate", 3020, 0},
    {"cuArray3DCreate_v2", "cuArray3DCreate", 3020, 0},
    {"cuArrayDestroy", "cuArrayDestroy", 2000, 0},
    {"cuMipmappedArrayCreate", "cuMipmappedArrayCreate", 5000, 0},
    {"cuDeviceTotalMem_v2", "cuDeviceTotalMem", 3020, 0},
    {"cuCtxCreate_v2", "cuCtxCreate", 3020, 0},
    {"cuCtxDestroy_v2", "cuCtxDestroy", 4000, 0},
    {"cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain", 7000, 0},
    {"cuLaunchKernel", "cuLaunchKernel", 4000, 0},
    {"cuLaunchKernel_ptsz", "cuLaunchKernel", 7000, 2},
    {"cuGetProcAddress", "cuGetProcAddress", 11030, 0},
    {"cuGetProcAddress_v2", "cuGetProcAddress", 12000, 0},
    {"cuGetExportTable", "cuGetExportTable", 3000, 0},
    {"cuModuleLoad", "cuModuleLoad", 2000, 0},
    {"cuModuleLoadData", "cuModuleLoadData", 2000, 0},
    {"cuDeviceGetName", "cuDeviceGetName", 2000, 0},
    {"cuDriverGetVersion", "cuDriverGetVersion", 2020, 0},
    {NULL, NULL, 0, 0},
};

static void report(const char *name, void *p) {
    Dl_info info;
    if (!p) {
        printf("sym %s null 0\n", name);
    } else if (dladdr(p, &info) && info.dli_fname) {
        printf("sym %s %s %lu\n", name, lib_of(p), (unsigned long)((char *)p - (char *)info.dli_fbase));
    } else {
        printf("sym %s unknown 0\n", name);
    }
}

int main(void) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(cuda && nvml, "dlopen: %s", dlerror());
    void *gpa_v1 = dlsym(cuda, "cuGetProcAddress");
    void *gpa_v2 = dlsym(cuda, "cuGetProcAddress_v2");
    CHECK(gpa_v1 && gpa_v2, "no cuGetProcAddress[_v2]");

    for (const struct named *s = cuda_syms; s->name; s++) {
        void *by_handle = dlsym(cuda, s->name);
        void *by_default = dlsym(RTLD_DEFAULT, s->name);
        void *again = dlsym(cuda, s->name);
        CHECK(by_handle == again, "%s: a repeated dlsym answered %p then %p", s->name, by_handle, again);
        CHECK(s->linked == by_handle, "%s: linked %p (%s), dlsym(handle) %p (%s)", s->name, s->linked, lib_of(s->linked),
              by_handle, lib_of(by_handle));
        CHECK(by_default == by_handle, "%s: dlsym(RTLD_DEFAULT) %p (%s), dlsym(handle) %p (%s)", s->name, by_default,
              lib_of(by_default), by_handle, lib_of(by_handle));
        for (const struct request *r = requests; r->symbol; r++) {
            if (strcmp(r->symbol, s->name) != 0) continue;
            void *p1 = NULL, *p2 = NULL;
            int status = -1;
            CUresult rc1 = ((PFN_cuGetProcAddress)gpa_v1)(r->base, &p1, r->version, r->flags);
            CUresult rc2 = ((PFN_cuGetProcAddress_v2)gpa_v2)(r->base, &p2, r->version, r->flags, &status);
            if (by_handle) {
                CHECK(rc1 == CUDA_SUCCESS && rc2 == CUDA_SUCCESS, "%s: cuGetProcAddress codes %d/%d", s->name, rc1, rc2);
                CHECK(p1 == by_handle, "%s: cuGetProcAddress(%s, %d, %llu) %p (%s), dlsym %p (%s)", s->name, r->base,
                      r->version, r->flags, p1, lib_of(p1), by_handle, lib_of(by_handle));
                CHECK(p2 == by_handle, "%s: cuGetProcAddress_v2(%s, %d, %llu) %p (%s), dlsym %p (%s)", s->name,
                      r->base, r->version, r->flags, p2, lib_of(p2), by_handle, lib_of(by_handle));
            }
        }
        report(s->name, by_handle);
    }
    for (const struct named *s = nvml_syms; s->name; s++) {
        void *by_handle = dlsym(nvml, s->name);
        void *by_default = dlsym(RTLD_DEFAULT, s->name);
        CHECK(s->linked == by_handle, "%s: linked %p (%s), dlsym(handle) %p (%s)", s->name, s->linked, lib_of(s->linked),
              by_handle, lib_of(by_handle));
        CHECK(by_default == by_handle, "%s: dlsym(RTLD_DEFAULT) %p, dlsym(handle) %p", s->name, by_default, by_handle);
        report(s->name, by_handle);
    }
    /* Names outside CUDA and NVML are the loader's business alone. */
    report("malloc", dlsym(RTLD_DEFAULT, "malloc"));
    report("printf", dlsym(RTLD_DEFAULT, "printf"));
    CHECK(dlsym(cuda, "vgpu_no_such_symbol") == NULL, "an unknown name resolved");
    printf("done\n");
    return 0;
}
