/* One of N processes that allocate and free random sizes at once under one region and one limit.
 * Usage: mp_worker <limit> <iterations> <seed> <board-file> <region-file> <threads>
 *
 * The board is a small file every worker maps (laid out below). Right after an allocation succeeds a
 * thread adds its size to `live`, and it subtracts the size before freeing, so at every instant
 * live <= the bytes really allocated across all workers <= the limit if the library is right. Each
 * success also samples the region's total for device 0 (a consistent double-read snapshot). The test
 * asserts both maxima stay within the limit. */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

#include <pthread.h>

struct board {
    uint64_t live;           /* bytes allocated by all workers, lower bound of the truth */
    uint64_t max_live;       /* highest value of live after an allocation */
    uint64_t max_region;     /* highest region total (device 0) sampled after an allocation */
    uint64_t region_samples; /* how many consistent samples were taken */
    uint32_t go;             /* set by the test once every worker is ready */
    uint32_t ready;          /* workers that finished init */
    uint64_t ooms;
    uint64_t allocs;
};

static struct board *board;
static struct region_view region;
static int have_region;
static unsigned long long limit;
static int iterations;
static unsigned seed;
static CUcontext ctx;

static void atomic_max(uint64_t *slot, uint64_t v) {
    uint64_t cur = __atomic_load_n(slot, __ATOMIC_RELAXED);
    while (v > cur && !__atomic_compare_exchange_n(slot, &cur, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static uint64_t next_random(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *worker(void *arg) {
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)seed << 20) ^ (uint64_t)(uintptr_t)arg;
    CU_OK(cuCtxSetCurrent(ctx));
    CUdeviceptr ptrs[16];
    size_t sizes[16];
    int live = 0;
    const size_t unit = (size_t)(limit / 64);
    for (int i = 0; i < iterations; i++) {
        uint64_t r = next_random(&rng);
        if (live > 0 && (live == 16 || (r & 1))) {
            int k = (int)((r >> 8) % (uint64_t)live);
            __atomic_sub_fetch(&board->live, sizes[k], __ATOMIC_SEQ_CST);
            CU_OK(cuMemFree_v2(ptrs[k]));
            ptrs[k] = ptrs[live - 1];
            sizes[k] = sizes[live - 1];
            live--;
            continue;
        }
        size_t bytes = unit * (1 + (size_t)((r >> 8) % 16)) - (size_t)((r >> 32) % 4096);
        CUdeviceptr p = 0;
        CUresult rc = cuMemAlloc_v2(&p, bytes);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            __atomic_add_fetch(&board->ooms, 1, __ATOMIC_RELAXED);
            continue;
        }
        CHECK(rc == CUDA_SUCCESS, "cuMemAlloc_v2(%zu) returned %d", bytes, rc);
        __atomic_add_fetch(&board->allocs, 1, __ATOMIC_RELAXED);
        atomic_max(&board->max_live, __atomic_add_fetch(&board->live, bytes, __ATOMIC_SEQ_CST));
        if (have_region) {
            int ok = 0;
            uint64_t total = region_usage_snapshot(&region, 0, &ok);
            if (ok) {
                atomic_max(&board->max_region, total);
                __atomic_add_fetch(&board->region_samples, 1, __ATOMIC_RELAXED);
            }
        }
        ptrs[live] = p;
        sizes[live] = bytes;
        live++;
    }
    for (int k = 0; k < live; k++) {
        __atomic_sub_fetch(&board->live, sizes[k], __ATOMIC_SEQ_CST);
        CU_OK(cuMemFree_v2(ptrs[k]));
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 7, "usage: mp_worker <limit> <iterations> <seed> <board> <region> <threads>");
    limit = parse_u64(argv[1]);
    iterations = (int)parse_u64(argv[2]);
    seed = (unsigned)parse_u64(argv[3]);
    int nthreads = (int)parse_u64(argv[6]);
    CHECK(nthreads >= 1 && nthreads <= 64, "threads");
    int fd = open(argv[4], O_RDWR);
    CHECK(fd >= 0, "open board %s", argv[4]);
    board = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(board != MAP_FAILED, "mmap board");
    close(fd);

    CU_OK(cuInit(0));
    CUdevice dev;
    CU_OK(cuDeviceGet(&dev, 0));
    CU_OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CU_OK(cuCtxSetCurrent(ctx));
    size_t free0 = 0, total = 0;
    CU_OK(cuMemGetInfo_v2(&free0, &total));
    CHECK(total == limit, "total %zu, limit %llu", total, limit);
    /* The region exists once this process has registered. */
    have_region = region_open(&region, argv[5]) == 0;
    CHECK(have_region, "cannot map the region %s", argv[5]);

    __atomic_add_fetch(&board->ready, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&board->go, __ATOMIC_SEQ_CST)) usleep(1000);

    pthread_t tids[64];
    for (int i = 0; i < nthreads; i++) pthread_create(&tids[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < nthreads; i++) pthread_join(tids[i], NULL);

    size_t free1 = 0;
    CU_OK(cuMemGetInfo_v2(&free1, &total));
    printf("worker pid=%d free_before=%zu free_after=%zu\n", (int)getpid(), free0, free1);
    printf("done\n");
    return 0;
}
