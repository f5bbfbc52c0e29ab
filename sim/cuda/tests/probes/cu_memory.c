/* Device memory: allocations and what they charge, copies and sets with real data, pitch, managed,
 * pinned host memory, pools, virtual memory management, arrays. Run alone on its machine, so
 * cuMemGetInfo's free memory moves only with this process's allocations. */
#include <stdint.h>

#include "probe.h"

#define MiB (1024ull * 1024ull)

static size_t free_now(void) {
    size_t f = 0, t = 0;
    OK(cuMemGetInfo_v2(&f, &t));
    return f;
}

static unsigned long long pool_attr(CUmemoryPool pool, int attr) {
    unsigned long long v = 0;
    OK(cuMemPoolGetAttribute(pool, attr, &v));
    return v;
}

int main(void) {
    CUcontext ctx;
    CUdeviceptr a = 0, b = 0;
    size_t free0, total0, dev_total;
    static unsigned char host[1 << 20], back[1 << 20];

    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));
    OK(cuMemGetInfo_v2(&free0, &total0));
    OK(cuDeviceTotalMem_v2(&dev_total, 0));
    ASSERT(total0 == dev_total);
    printf("context used=%zu\n", total0 - free0);

    /* Allocation charges exactly the requested bytes; free gives them back. */
    OK(cuMemAlloc_v2(&a, 10 * MiB + 100));
    ASSERT(a != 0 && a % 256 == 0);
    ASSERT(free0 - free_now() == 10 * MiB + 100);
    OK(cuMemAlloc_v2(&b, 1 * MiB));
    ASSERT(b != a);

    /* Data round-trips. */
    for (size_t i = 0; i < sizeof host; i++) host[i] = (unsigned char)(i * 7 + 3);
    OK(cuMemcpyHtoD_v2(a, host, sizeof host));
    OK(cuMemcpyDtoD_v2(b, a, sizeof host));
    memset(back, 0, sizeof back);
    OK(cuMemcpyDtoH_v2(back, b, sizeof back));
    ASSERT(memcmp(host, back, sizeof host) == 0);
    memset(back, 0, sizeof back);
    OK(cuMemcpy((CUdeviceptr)(uintptr_t)back, a, 4096)); /* unified addressing: device to host */
    ASSERT(memcmp(host, back, 4096) == 0);
    OK(cuMemsetD8_v2(a, 0xab, 3));
    OK(cuMemsetD16_v2(a + 4, 0x1234, 2));
    OK(cuMemsetD32_v2(a + 8, 0xdeadbeef, 2));
    OK(cuMemcpyDtoH_v2(back, a, 16));
    ASSERT(back[0] == 0xab && back[2] == 0xab && back[3] == host[3]);
    ASSERT(*(uint16_t *)(back + 4) == 0x1234 && *(uint16_t *)(back + 6) == 0x1234);
    ASSERT(*(uint32_t *)(back + 8) == 0xdeadbeef && *(uint32_t *)(back + 12) == 0xdeadbeef);
    EXPECT(cuMemsetD32_v2(a + 2, 0, 1), CUDA_ERROR_INVALID_VALUE);                 /* misaligned */
    EXPECT(cuMemcpyHtoD_v2(b + MiB - 4, host, 8), CUDA_ERROR_INVALID_VALUE);       /* past the end */
    EXPECT(cuMemcpyDtoH_v2(back, 0x1000, 8), CUDA_ERROR_INVALID_VALUE);            /* not device memory */
    OK(cuMemcpyHtoD_v2(a, host, 0));                                               /* nothing to copy */

    /* Address range and pointer attributes. */
    {
        CUdeviceptr base = 0;
        size_t size = 0;
        CUcontext owner = NULL;
        unsigned int type = 0;
        int ordinal = -1;
        OK(cuMemGetAddressRange_v2(&base, &size, a + 12345));
        ASSERT(base == a && size == 10 * MiB + 100);
        EXPECT(cuMemGetAddressRange_v2(&base, &size, 0x1000), CUDA_ERROR_NOT_FOUND);
        OK(cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_CONTEXT, a));
        ASSERT(owner == ctx);
        OK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a + 5));
        ASSERT(type == CU_MEMORYTYPE_DEVICE);
        OK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, a));
        ASSERT(ordinal == 0);
        EXPECT(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, 0x1000), CUDA_ERROR_INVALID_VALUE);
    }
    OK(cuMemFree_v2(a));
    OK(cuMemFree_v2(b));
    EXPECT(cuMemFree_v2(a), CUDA_ERROR_INVALID_VALUE); /* double free */
    ASSERT(free_now() == free0);

    /* The 32-bit ABI gets a pointer that fits. */
    {
        CUdeviceptr_v1 p32 = 0;
        OK(cuMemAlloc(&p32, 4096));
        ASSERT(p32 != 0);
        OK(cuMemcpyHtoD_v2(p32, host, 4096));
        OK(cuMemcpyDtoH_v2(back, p32, 4096));
        ASSERT(memcmp(host, back, 4096) == 0);
        ASSERT(free0 - free_now() == 4096);
        OK(cuMemFree(p32));
        ASSERT(free_now() == free0);
    }

    /* Pitch: rows padded to 512 bytes; pitch x height is charged. */
    {
        size_t pitch = 0;
        OK(cuMemAllocPitch_v2(&a, &pitch, 100, 10, 4));
        ASSERT(pitch == 512);
        ASSERT(free0 - free_now() == 5120);
        OK(cuMemFree_v2(a));
        OK(cuMemAllocPitch_v2(&a, &pitch, 1000, 3, 8));
        ASSERT(pitch == 1024);
        OK(cuMemFree_v2(a));
        EXPECT(cuMemAllocPitch_v2(&a, &pitch, 100, 10, 3), CUDA_ERROR_INVALID_VALUE);
    }

    /* Managed memory is device memory the host can touch. */
    {
        CUdeviceptr m = 0;
        EXPECT(cuMemAllocManaged(&m, 4096, 0), CUDA_ERROR_INVALID_VALUE);
        OK(cuMemAllocManaged(&m, 4096, CU_MEM_ATTACH_GLOBAL));
        ASSERT(free0 - free_now() == 4096);
        ((volatile uint32_t *)(uintptr_t)m)[0] = 0x600dcafe;
        OK(cuMemcpyDtoH_v2(back, m, 4));
        ASSERT(*(uint32_t *)back == 0x600dcafe);
        OK(cuMemFree_v2(m));
    }

    /* Pinned host memory is host memory: nothing charged to the device. */
    {
        void *h = NULL, *h2 = NULL;
        static char reg[8192];
        unsigned int type = 0;
        OK(cuMemAllocHost_v2(&h, 4 * MiB));
        OK(cuMemHostAlloc(&h2, MiB, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP));
        ASSERT(free_now() == free0);
        memcpy(h, host, 4096);
        OK(cuMemAlloc_v2(&a, 4096));
        OK(cuMemcpyHtoD_v2(a, h, 4096));
        OK(cuMemcpyDtoH_v2(back, a, 4096));
        ASSERT(memcmp(back, host, 4096) == 0);
        OK(cuMemFree_v2(a));
        OK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)h));
        ASSERT(type == CU_MEMORYTYPE_HOST);
        OK(cuMemFreeHost(h));
        OK(cuMemFreeHost(h2));
        EXPECT(cuMemFreeHost(h), CUDA_ERROR_INVALID_VALUE);
        OK(cuMemHostRegister_v2(reg, sizeof reg, 0));
        EXPECT(cuMemHostRegister_v2(reg + 4096, 16, 0), CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
        OK(cuMemHostUnregister(reg));
        EXPECT(cuMemHostUnregister(reg), CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
        ASSERT(free_now() == free0);
    }

    /* Pools keep freed memory reserved (and charged) until trimmed or released at a sync. */
    {
        CUmemoryPool pool, mine;
        CUstream s;
        CUdeviceptr x = 0, y = 0;
        unsigned long long threshold = 64 * MiB, zero = 0;
        CUmemPoolProps props;
        OK(cuStreamCreate(&s, 0));
        OK(cuDeviceGetDefaultMemPool(&pool, 0));
        OK(cuMemAllocAsync(&x, 3 * MiB, s));
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 4 * MiB); /* 2 MiB granules */
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT) == 3 * MiB);
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuMemcpyHtoDAsync_v2(x, host, 4096, s));
        OK(cuMemcpyDtoHAsync_v2(back, x, 4096, s));
        OK(cuStreamSynchronize(s));
        ASSERT(memcmp(back, host, 4096) == 0);
        OK(cuMemFreeAsync(x, s));
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT) == 0);
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 4 * MiB);
        ASSERT(free0 - free_now() == 4 * MiB); /* freed, still reserved */
        OK(cuMemAllocAsync(&y, MiB, s));
        ASSERT(y == x); /* the reserved block is reused */
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 4 * MiB);
        OK(cuMemFreeAsync(y, s));
        OK(cuStreamSynchronize(s)); /* above the release threshold (0): released */
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 0);
        ASSERT(free_now() == free0);
        OK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold));
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) == 64 * MiB);
        OK(cuMemAllocAsync(&x, 4 * MiB, s));
        OK(cuMemFreeAsync(x, s));
        OK(cuStreamSynchronize(s)); /* below the threshold: kept */
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 4 * MiB);
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuMemPoolTrimTo(pool, 0));
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 0);
        ASSERT(free_now() == free0);
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH) == 4 * MiB);
        OK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &zero));
        ASSERT(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH) == 0);
        EXPECT(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &zero), CUDA_ERROR_INVALID_VALUE);
        EXPECT(cuMemPoolDestroy(pool), CUDA_ERROR_INVALID_VALUE); /* the default pool stays */

        memset(&props, 0, sizeof props);
        props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        props.location.id = 0;
        OK(cuMemPoolCreate(&mine, &props));
        OK(cuMemAllocFromPoolAsync(&x, MiB, mine, s));
        ASSERT(pool_attr(mine, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) == 2 * MiB);
        ASSERT(free0 - free_now() == 2 * MiB);
        OK(cuMemPoolDestroy(mine)); /* x outlives its pool and still holds its memory */
        ASSERT(free0 - free_now() == 2 * MiB);
        OK(cuMemFree_v2(x));
        ASSERT(free_now() == free0);
        props.location.id = 99;
        EXPECT(cuMemPoolCreate(&mine, &props), CUDA_ERROR_INVALID_VALUE);
        OK(cuStreamDestroy_v2(s));
    }

    /* Virtual memory management: physical memory is charged from create to the last reference. */
    {
        CUmemAllocationProp prop;
        CUmemAccessDesc access;
        CUmemGenericAllocationHandle hnd;
        CUdeviceptr va = 0;
        size_t gran = 0;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = 0;
        OK(cuMemGetAllocationGranularity(&gran, &prop, 0));
        ASSERT(gran == 2 * MiB);
        EXPECT(cuMemCreate(&hnd, 3 * MiB, &prop, 0), CUDA_ERROR_INVALID_VALUE);
        OK(cuMemCreate(&hnd, 4 * MiB, &prop, 0));
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuMemAddressReserve(&va, 8 * MiB, 0, 0, 0));
        ASSERT(va % (2 * MiB) == 0);
        OK(cuMemMap(va, 4 * MiB, 0, hnd, 0));
        OK(cuMemMap(va + 4 * MiB, 4 * MiB, 0, hnd, 0)); /* the same physical memory twice */
        EXPECT(cuMemMap(va, 4 * MiB, 0, hnd, 0), CUDA_ERROR_ALREADY_MAPPED);
        access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        access.location.id = 0;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        OK(cuMemSetAccess(va, 8 * MiB, &access, 1));
        OK(cuMemcpyHtoD_v2(va + 100, host, 4096));
        OK(cuMemcpyDtoH_v2(back, va + 4 * MiB + 100, 4096));
        ASSERT(memcmp(back, host, 4096) == 0);
        OK(cuMemRelease(hnd)); /* still mapped: still charged */
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuMemUnmap(va, 4 * MiB));
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuMemUnmap(va + 4 * MiB, 4 * MiB)); /* the last reference */
        ASSERT(free_now() == free0);
        EXPECT(cuMemcpyHtoD_v2(va, host, 16), CUDA_ERROR_INVALID_VALUE); /* unmapped */
        OK(cuMemAddressFree(va, 8 * MiB));
    }

    /* Arrays charge their texels, rounded up to 512 bytes. */
    {
        CUarray arr, arr3;
        CUDA_ARRAY_DESCRIPTOR d = {1024, 1024, CU_AD_FORMAT_FLOAT, 1};
        CUDA_ARRAY3D_DESCRIPTOR d3 = {64, 64, 64, CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
        OK(cuArrayCreate_v2(&arr, &d));
        ASSERT(free0 - free_now() == 4 * MiB);
        OK(cuArray3DCreate_v2(&arr3, &d3));
        ASSERT(free0 - free_now() == 5 * MiB);
        OK(cuArrayDestroy(arr));
        OK(cuArrayDestroy(arr3));
        ASSERT(free_now() == free0);
        d.NumChannels = 3;
        EXPECT(cuArrayCreate_v2(&arr, &d), CUDA_ERROR_INVALID_VALUE);
    }

    /* Destroying a context gives back its memory and its own cost. */
    {
        CUcontext other;
        size_t before = free0;
        OK(cuCtxCreate_v2(&other, 0, 0));
        ASSERT(free_now() < before);
        OK(cuMemAlloc_v2(&a, 8 * MiB));
        printf("second context used=%zu\n", before - free_now() - 8 * MiB);
        OK(cuCtxDestroy_v2(other));
        OK(cuCtxSetCurrent(ctx));
        ASSERT(free_now() == before);
    }
    PROBE_DONE();
}
