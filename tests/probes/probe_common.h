/* Shared by the C probes: failure reporting, the limit scenario every front door must pass, and a
 * reader of the HAMi v1 region offsets (hami-contract.md section 3) for probes that sample it.
 *
 * Output convention: result lines are `key value ...` on stdout; a failed check prints
 * `FAIL <file>:<line>: <what>` on stdout and exits 1. Probes never rely on the library's own logs. */
#ifndef VGPU_PROBE_COMMON_H
#define VGPU_PROBE_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_min.h"

#define MiB (1024ull * 1024ull)
#define PROBE_FN static __attribute__((unused))

static void probe_fail(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
static void probe_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    _exit(1);
}

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) probe_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* A CUDA call that must succeed. */
#define CU_OK(call) \
    do { \
        CUresult rc_ = (call); \
        CHECK(rc_ == CUDA_SUCCESS, "%s returned %d", #call, rc_); \
    } while (0)

PROBE_FN unsigned long long parse_u64(const char *s) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    CHECK(errno == 0 && end && *end == '\0', "not a number: %s", s);
    return v;
}

PROBE_FN const char *lib_of(const void *p) {
    Dl_info info;
    if (!p) return "null";
    if (!dladdr(p, &info) || !info.dli_fname) return "unknown";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

/* The API one door hands out. v1 entry points (the 2000 ABI) are adapted to the v2 shapes. */
struct door_api {
    const char *door;
    PFN_cuInit cuInit;
    PFN_cuDeviceGet cuDeviceGet;
    PFN_cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRetain;
    PFN_cuCtxSetCurrent cuCtxSetCurrent;
    PFN_cuMemGetInfo_v2 cuMemGetInfo;
    PFN_cuMemAlloc_v2 cuMemAlloc;
    PFN_cuMemFree_v2 cuMemFree;
};

/* What every door must do under CUDA_DEVICE_MEMORY_LIMIT=limit on device 0:
 *   total = limit; chunks of limit/8 succeed until exactly what fits, then CUDA_ERROR_OUT_OF_MEMORY;
 *   each success lowers free by exactly one chunk; a failed request changes nothing; freeing all
 *   gives every byte back; a request above the limit fails at once. */
PROBE_FN void limit_scenario(const struct door_api *api, unsigned long long limit) {
    CHECK(api->cuInit && api->cuDeviceGet && api->cuDevicePrimaryCtxRetain && api->cuCtxSetCurrent &&
              api->cuMemGetInfo && api->cuMemAlloc && api->cuMemFree,
          "door %s: an entry point is missing", api->door);
    CU_OK(api->cuInit(0));
    CUdevice dev = -1;
    CU_OK(api->cuDeviceGet(&dev, 0));
    CUcontext ctx = NULL;
    CU_OK(api->cuDevicePrimaryCtxRetain(&ctx, dev));
    CU_OK(api->cuCtxSetCurrent(ctx));

    size_t free0 = 0, total0 = 0;
    CU_OK(api->cuMemGetInfo(&free0, &total0));
    CHECK(total0 == limit, "door %s: total %zu, limit %llu", api->door, total0, limit);
    CHECK(free0 <= total0, "door %s: free %zu above total %zu", api->door, free0, total0);
    const unsigned long long base = total0 - free0;
    const size_t chunk = (size_t)(limit / 8);

    CUdeviceptr ptrs[64];
    unsigned n = 0;
    size_t expect_free = free0;
    for (;;) {
        CHECK(n < 64, "door %s: more than 64 chunks of %zu under a limit of %llu", api->door, chunk, limit);
        CUdeviceptr p = 0;
        CUresult rc = api->cuMemAlloc(&p, chunk);
        size_t f = 0, t = 0;
        CU_OK(api->cuMemGetInfo(&f, &t));
        CHECK(t == limit, "door %s: total moved to %zu", api->door, t);
        if (rc != CUDA_SUCCESS) {
            CHECK(rc == CUDA_ERROR_OUT_OF_MEMORY, "door %s: chunk %u failed with %d, want 2", api->door, n, rc);
            CHECK(f == expect_free, "door %s: failed allocation changed free from %zu to %zu", api->door, expect_free, f);
            break;
        }
        CHECK(p != 0, "door %s: success with a NULL pointer", api->door);
        expect_free -= chunk;
        CHECK(f == expect_free, "door %s: after chunk %u free is %zu, want %zu", api->door, n, f, expect_free);
        ptrs[n++] = p;
    }
    CHECK(n == (limit - base) / chunk, "door %s: got %u chunks of %zu; limit %llu, base %llu allows %llu",
          api->door, n, chunk, limit, base, (limit - base) / chunk);

    CUdeviceptr big = 0;
    CUresult rc = api->cuMemAlloc(&big, (size_t)limit + 1);
    CHECK(rc == CUDA_ERROR_OUT_OF_MEMORY, "door %s: limit+1 bytes returned %d", api->door, rc);

    for (unsigned i = 0; i < n; i++) CU_OK(api->cuMemFree(ptrs[i]));
    size_t f = 0, t = 0;
    CU_OK(api->cuMemGetInfo(&f, &t));
    CHECK(f == free0, "door %s: after freeing everything free is %zu, was %zu", api->door, f, free0);
    rc = api->cuMemAlloc(&big, (size_t)limit + 1);
    CHECK(rc == CUDA_ERROR_OUT_OF_MEMORY, "door %s: limit+1 bytes on an empty device returned %d", api->door, rc);
    CU_OK(api->cuMemGetInfo(&f, &t));
    CHECK(f == free0, "door %s: a refused allocation changed free to %zu", api->door, f);
    printf("scenario door=%s chunks=%u chunk=%zu base=%llu total=%zu\n", api->door, n, chunk, base, total0);
    fflush(stdout);
}

/* ---- HAMi v1 region offsets (hami-contract.md section 3), for probes that sample usage ---- */
#define REGION_MAGIC 19920718
#define REGION_V1_SIZE 2008952ull
#define REGION_SLOTS 1024
#define REGION_OFF_DEVICE_NUM 56
#define REGION_OFF_SLOTS 1856
#define REGION_SLOT_SIZE 1960
#define REGION_SLOT_OFF_USED 8
#define REGION_USED_SIZE 64
#define REGION_USED_OFF_TOTAL 32
#define REGION_SLOT_OFF_STATUS 1928
#define REGION_OFF_PROC_NUM 2008896

struct region_view {
    const unsigned char *base;
    size_t size;
};

PROBE_FN int region_open(struct region_view *r, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < REGION_V1_SIZE) {
        close(fd);
        return -1;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    r->base = m;
    r->size = (size_t)st.st_size;
    return 0;
}

PROBE_FN uint64_t region_load_u64(const struct region_view *r, size_t off) {
    return __atomic_load_n((const uint64_t *)(r->base + off), __ATOMIC_ACQUIRE);
}
PROBE_FN int32_t region_load_i32(const struct region_view *r, size_t off) {
    return __atomic_load_n((const int32_t *)(r->base + off), __ATOMIC_ACQUIRE);
}

/* One pass: the sum of used[dev].total over the live slots, the way HAMi's monitor sums. */
PROBE_FN uint64_t region_collect(const struct region_view *r, int dev, uint64_t *per_slot, int *nslots) {
    int n = region_load_i32(r, REGION_OFF_PROC_NUM);
    if (n < 0) n = 0;
    if (n > REGION_SLOTS) n = REGION_SLOTS;
    uint64_t sum = 0;
    for (int k = 0; k < n; k++) {
        size_t slot = REGION_OFF_SLOTS + (size_t)REGION_SLOT_SIZE * k;
        uint64_t v = 0;
        if (region_load_i32(r, slot + REGION_SLOT_OFF_STATUS) != 0)
            v = region_load_u64(r, slot + REGION_SLOT_OFF_USED + REGION_USED_SIZE * dev + REGION_USED_OFF_TOTAL);
        per_slot[k] = v;
        sum += v;
    }
    *nslots = n;
    return sum;
}

/* The container's usage of `dev`, from a consistent snapshot: two passes that read identical
 * per-slot values (slots are written independently, so one pass can mix a free in one slot with a
 * later allocation in another and overcount). Returns 0 and sets *ok=0 when no stable pair came. */
PROBE_FN uint64_t region_usage_snapshot(const struct region_view *r, int dev, int *ok) {
    static __thread uint64_t a[REGION_SLOTS], b[REGION_SLOTS];
    for (int attempt = 0; attempt < 64; attempt++) {
        int na = 0, nb = 0;
        uint64_t sa = region_collect(r, dev, a, &na);
        region_collect(r, dev, b, &nb);
        if (na == nb && memcmp(a, b, sizeof(uint64_t) * (size_t)na) == 0) {
            *ok = 1;
            return sa;
        }
    }
    *ok = 0;
    return 0;
}

#endif
