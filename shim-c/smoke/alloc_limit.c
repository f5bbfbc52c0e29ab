/* Smoke check for the front doors against the simulated driver (not a test; tests/ has those).
 * Build and run: shim-c/smoke/run.sh
 * Opens libcuda.so.1 like libcudart does, allocates 256 MiB blocks until the driver (or libvgpu)
 * refuses, through dlsym and through cuGetProcAddress_v2, and prints what it saw. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int (*init_t)(unsigned);
typedef int (*devget_t)(int *, int);
typedef int (*ctxcreate_t)(void **, unsigned, int);
typedef int (*alloc_t)(CUdeviceptr *, size_t);
typedef int (*free_t)(CUdeviceptr);
typedef int (*info_t)(size_t *, size_t *);
typedef int (*gpa2_t)(const char *, void **, int, unsigned long long, int *);

int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    init_t cuInit = (init_t)dlsym(h, "cuInit");
    devget_t cuDeviceGet = (devget_t)dlsym(h, "cuDeviceGet");
    ctxcreate_t cuCtxCreate = (ctxcreate_t)dlsym(h, "cuCtxCreate_v2");
    alloc_t via_dlsym = (alloc_t)dlsym(h, "cuMemAlloc_v2");
    free_t cuMemFree = (free_t)dlsym(h, "cuMemFree_v2");
    info_t cuMemGetInfo = (info_t)dlsym(h, "cuMemGetInfo_v2");
    gpa2_t gpa = (gpa2_t)dlsym(h, "cuGetProcAddress_v2");
    void *via_gpa = NULL; int status = -1, rc0;
    printf("cuInit=%d\n", cuInit(0));
    int dev = -1; printf("cuDeviceGet=%d\n", cuDeviceGet(&dev, 0));
    void *ctx = NULL; printf("cuCtxCreate=%d\n", cuCtxCreate(&ctx, 0, dev));
    rc0 = gpa("cuMemAlloc", &via_gpa, 12000, 0, &status);
    printf("cuGetProcAddress_v2=%d status=%d\n", rc0, status);
    printf("same_pointer=%d\n", via_gpa == (void *)via_dlsym);
    void *gpa_self = NULL, *legacy = NULL, *ptsz = NULL;
    gpa("cuGetProcAddress", &gpa_self, 12000, 0, &status);
    printf("cuGetProcAddress_for_itself_is_ours=%d\n", gpa_self == (void *)gpa);
    gpa("cuMemAlloc", &legacy, 2000, 0, &status);
    printf("cuMemAlloc@2000_is_legacy_hook=%d\n", legacy == dlsym(RTLD_DEFAULT, "cuMemAlloc"));
    gpa("cuLaunchKernel", &ptsz, 12000, 2, &status);
    printf("cuLaunchKernel_ptsz_is_ours=%d\n", ptsz == dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz"));
    printf("default_is_ours=%d\n", dlsym(RTLD_DEFAULT, "cuMemAlloc_v2") == (void *)via_dlsym);
    size_t free_b = 0, total_b = 0;
    rc0 = cuMemGetInfo(&free_b, &total_b);
    printf("cuMemGetInfo=%d free=%zu total=%zu\n", rc0, free_b, total_b);
    CUdeviceptr ptrs[64]; int n = 0, rc = 0;
    for (n = 0; n < 64; n++) {
        alloc_t a = (n % 2) ? (alloc_t)via_gpa : via_dlsym;
        rc = a(&ptrs[n], 256u << 20);
        if (rc != 0) break;
    }
    printf("allocated=%d blocks of 256 MiB, then rc=%d\n", n, rc);
    rc0 = cuMemGetInfo(&free_b, &total_b);
    printf("cuMemGetInfo=%d free=%zu total=%zu\n", rc0, free_b, total_b);
    for (int i = 0; i < n; i++) cuMemFree(ptrs[i]);
    CUdeviceptr again = 0;
    printf("after free: alloc rc=%d\n", via_dlsym(&again, 256u << 20));
    rc0 = cuMemGetInfo(&free_b, &total_b);
    printf("cuMemGetInfo=%d free=%zu total=%zu\n", rc0, free_b, total_b);
    return 0;
}
