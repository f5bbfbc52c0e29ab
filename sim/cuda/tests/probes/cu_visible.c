/* CUDA_VISIBLE_DEVICES: prints what CUDA sees (count, each ordinal's name and UUID); with a device,
 * charges 64 MiB and launches 3 kernels through ordinal 0; then prints what NVML, which ignores the
 * variable, says of every GPU while the memory is still held. */
#include <dlfcn.h>

#include "probe.h"

typedef struct {
    unsigned long long total, free, used;
} nvml_memory;

static void *nvml_symbol(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    ASSERT(p != NULL);
    return p;
}

static void print_nvml(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    ASSERT(lib != NULL);
    int (*init)(void) = (int (*)(void))nvml_symbol(lib, "nvmlInit_v2");
    int (*count)(unsigned int *) = (int (*)(unsigned int *))nvml_symbol(lib, "nvmlDeviceGetCount_v2");
    int (*by_index)(unsigned int, void **) =
        (int (*)(unsigned int, void **))nvml_symbol(lib, "nvmlDeviceGetHandleByIndex_v2");
    int (*uuid)(void *, char *, unsigned int) =
        (int (*)(void *, char *, unsigned int))nvml_symbol(lib, "nvmlDeviceGetUUID");
    int (*memory)(void *, nvml_memory *) = (int (*)(void *, nvml_memory *))nvml_symbol(lib, "nvmlDeviceGetMemoryInfo");
    unsigned int n = 0;
    ASSERT(init() == 0);
    ASSERT(count(&n) == 0);
    printf("nvml count=%u\n", n);
    for (unsigned int i = 0; i < n; i++) {
        void *dev = NULL;
        char id[96];
        nvml_memory m;
        int rc = by_index(i, &dev);
        if (rc != 0) {
            printf("nvml%u rc=%d\n", i, rc); /* a lost GPU */
            continue;
        }
        ASSERT(uuid(dev, id, sizeof id) == 0);
        ASSERT(memory(dev, &m) == 0);
        printf("nvml%u uuid=%s used=%llu\n", i, id, m.used);
    }
}

int main(void) {
    int n = -1;
    CUresult rc = cuInit(0);
    printf("init rc=%d\n", rc);
    if (rc != CUDA_SUCCESS) {
        printf("after count_rc=%d\n", cuDeviceGetCount(&n));
        print_nvml();
        PROBE_DONE();
    }
    OK(cuDeviceGetCount(&n));
    printf("count count=%d\n", n);
    for (int i = 0; i < n; i++) {
        CUdevice dev;
        CUuuid u;
        char name[128];
        OK(cuDeviceGet(&dev, i));
        OK(cuDeviceGetName(name, sizeof name, dev));
        OK(cuDeviceGetUuid_v2(&u, dev));
        printf("cuda%d name=%s uuid=GPU-", i, name);
        for (int b = 0; b < 16; b++) {
            printf("%02x", (unsigned char)u.bytes[b]);
            if (b == 3 || b == 5 || b == 7 || b == 9) printf("-");
        }
        printf("\n");
    }
    {
        CUdevice dev;
        EXPECT(cuDeviceGet(&dev, n), CUDA_ERROR_INVALID_DEVICE);
    }
    CUcontext ctx;
    CUdeviceptr p;
    CUmodule module;
    CUfunction sleep_fn;
    size_t free_bytes = 0, total_bytes = 0;
    rc = cuCtxCreate_v2(&ctx, 0, 0);
    printf("context rc=%d\n", rc);
    if (rc == CUDA_SUCCESS) {
        OK(cuMemAlloc_v2(&p, 64 << 20));
        OK(cuMemGetInfo_v2(&free_bytes, &total_bytes));
        printf("meminfo free=%zu total=%zu\n", free_bytes, total_bytes);
        OK(cuModuleLoadData(&module, "SIMGPU-MODULE 1\n")); /* no globals: nothing charged */
        OK(cuModuleGetFunction(&sleep_fn, module, "sleep_10us"));
        for (int i = 0; i < 3; i++) OK(cuLaunchKernel(sleep_fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
        OK(cuCtxSynchronize());
    }
    print_nvml();
    PROBE_DONE();
}
