/* Timing probe for benches/overhead.rs: run once against the simulated driver and once more with
 * libvgpu preloaded; the bench prints the ratio. Linked with -l:libcuda.so.1 (the cheapest door, so
 * only the hook itself is measured).
 *   bench ops <iterations>       `op <name> <ns-per-op>` for launch, alloc+free, meminfo
 *   bench live <count>           alloc+free and free costs with <count> live allocations
 *   bench register <processes>   first-call latency of the k-th process to register in one region
 *   bench paced <launches>       `op <name> <ns-per-launch>` for launches in bursts of 2000 with an idle
 *                                gap after each (the host launching under 5 % of the time), so that an
 *                                SM limit does not throttle: what an unthrottled launch costs
 * Every figure is the median of 7 rounds. */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define ROUNDS 7
static double median(double *v) {
    qsort(v, ROUNDS, sizeof(double), cmp_double);
    return v[ROUNDS / 2];
}

static CUcontext setup(void) {
    CU_OK(cuInit(0));
    CUdevice dev;
    CUcontext ctx;
    CU_OK(cuDeviceGet(&dev, 0));
    CU_OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CU_OK(cuCtxSetCurrent(ctx));
    return ctx;
}

static const char MODULE_IMAGE[] = "SIMGPU-MODULE 1\nkernel vgpu_bench_nop 0\n";

static void bench_ops(long iters) {
    setup();
    CUmodule mod;
    CUfunction fn;
    CU_OK(cuModuleLoadData(&mod, MODULE_IMAGE));
    CU_OK(cuModuleGetFunction(&fn, mod, "vgpu_bench_nop"));
    double launch[ROUNDS], pair[ROUNDS], info[ROUNDS], device[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < iters; i++) CU_OK(cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
        uint64_t t1 = now_ns();
        CU_OK(cuCtxSynchronize());
        launch[r] = (double)(t1 - t0) / (double)iters;

        t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            CUdeviceptr p;
            CU_OK(cuMemAlloc_v2(&p, 1 << 20));
            CU_OK(cuMemFree_v2(p));
        }
        pair[r] = (double)(now_ns() - t0) / (double)iters;

        t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            size_t f, t;
            CU_OK(cuMemGetInfo_v2(&f, &t));
        }
        info[r] = (double)(now_ns() - t0) / (double)iters;

        /* A call nobody intercepts: what the loader alone costs, for reference. */
        t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            CUdevice d;
            CU_OK(cuCtxGetDevice(&d));
        }
        device[r] = (double)(now_ns() - t0) / (double)iters;
    }
    printf("op cuLaunchKernel %.1f\n", median(launch));
    printf("op cuMemAlloc_v2+cuMemFree_v2 %.1f\n", median(pair));
    printf("op cuMemGetInfo_v2 %.1f\n", median(info));
    printf("op cuCtxGetDevice(passthrough) %.1f\n", median(device));
}

/* Bursts of launches with idle gaps: ~0.5 ms of launching, then 20 times as long idle, so that a
 * container's budget (an SM limit of 50 % or more) has room and the limiter's unthrottled path is
 * what is timed. Each burst is timed on its own and the median burst is reported: a burst that did
 * wait (a kernel's estimate is noisy: on an idle device a probe spans the host's launch call) is an
 * outlier, not part of the figure. Two kernels alternate, as in a real loop. */
static void bench_paced(long launches) {
    setup();
    CUmodule mod;
    CUfunction fn[2];
    static const char IMAGE[] = "SIMGPU-MODULE 1\nkernel vgpu_bench_a 0\nkernel vgpu_bench_b 0\n";
    CU_OK(cuModuleLoadData(&mod, IMAGE));
    CU_OK(cuModuleGetFunction(&fn[0], mod, "vgpu_bench_a"));
    CU_OK(cuModuleGetFunction(&fn[1], mod, "vgpu_bench_b"));
    const long burst = 2000;
    long bursts = launches / burst;
    if (bursts < 7) bursts = 7;
    double *per = calloc((size_t)bursts, sizeof *per);
    CHECK(per, "calloc");
    /* Warm up: every kernel's cost learnt before timing. */
    for (long i = 0; i < 4 * burst; i++) {
        CU_OK(cuLaunchKernel(fn[i & 1], 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
        if (i % burst == 0) {
            CU_OK(cuCtxSynchronize());
            usleep(20000);
        }
    }
    for (long b = 0; b < bursts; b++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < burst; i++)
            CU_OK(cuLaunchKernel(fn[i & 1], 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
        uint64_t took = now_ns() - t0;
        per[b] = (double)took / (double)burst;
        CU_OK(cuCtxSynchronize());
        usleep(1000 + (useconds_t)(took / 1000) * 20);
    }
    qsort(per, (size_t)bursts, sizeof(double), cmp_double);
    printf("op cuLaunchKernel(paced) %.1f\n", per[bursts / 2]);
    free(per);
}

static double pair_cost(long iters) {
    double v[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            CUdeviceptr p;
            CU_OK(cuMemAlloc_v2(&p, 256));
            CU_OK(cuMemFree_v2(p));
        }
        v[r] = (double)(now_ns() - t0) / (double)iters;
    }
    return median(v);
}

static void bench_live(long count) {
    setup();
    CUdeviceptr *ptrs = calloc((size_t)count, sizeof *ptrs);
    CHECK(ptrs, "calloc");
    printf("live 0 pair %.1f\n", pair_cost(10000));
    long have = 0;
    for (long mark = 1000; mark <= count; mark *= 10) {
        long before = have;
        uint64_t t0 = now_ns();
        for (; have < mark; have++) CU_OK(cuMemAlloc_v2(&ptrs[have], 256));
        printf("live %ld alloc %.1f\n", mark, (double)(now_ns() - t0) / (double)(mark - before));
        printf("live %ld pair %.1f\n", mark, pair_cost(10000));
    }
    /* Free from the oldest: a table that searches would show it here. */
    uint64_t t0 = now_ns();
    for (long i = 0; i < have; i++) CU_OK(cuMemFree_v2(ptrs[i]));
    printf("live %ld free_each %.1f\n", have, (double)(now_ns() - t0) / (double)have);
    free(ptrs);
}

/* Setup without CHECK: a child that cannot register reports -1 instead of dying silently (the
 * parent would wait for ever on a pipe the other children keep open). */
static double register_once(void) {
    uint64_t t0 = now_ns();
    CUdevice dev;
    CUcontext ctx;
    CUdeviceptr p;
    CUresult rc;
    /* On failure: -(1000 * step + CUresult). */
    if ((rc = cuInit(0))) return -(1000.0 + rc);
    if ((rc = cuDeviceGet(&dev, 0))) return -(2000.0 + rc);
    if ((rc = cuDevicePrimaryCtxRetain(&ctx, dev))) return -(3000.0 + rc);
    if ((rc = cuCtxSetCurrent(ctx))) return -(4000.0 + rc);
    if ((rc = cuMemAlloc_v2(&p, 256))) return -(5000.0 + rc);
    return (double)(now_ns() - t0);
}

static void bench_register(int processes) {
    int report[2], release[2];
    CHECK(pipe(report) == 0 && pipe(release) == 0, "pipe");
    pid_t *pids = calloc((size_t)processes, sizeof *pids);
    double *cost = calloc((size_t)processes, sizeof *cost);
    CHECK(pids && cost, "calloc");
    int started = 0, registered = 0;
    for (int k = 0; k < processes; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) {
            close(report[0]);
            close(release[1]);
            double ns = register_once();
            if (write(report[1], &ns, sizeof ns) != sizeof ns) _exit(2);
            char c;
            while (read(release[0], &c, 1) > 0) {
            }
            _exit(0);
        }
        pids[k] = pid;
        started++;
        double ns = -1;
        if (read(report[0], &ns, sizeof ns) != sizeof ns || ns < 0) {
            /* step 1 cuInit, 2 cuDeviceGet, 3 cuDevicePrimaryCtxRetain, 4 cuCtxSetCurrent, 5 cuMemAlloc_v2 */
            printf("register_failed_at %d step %d code %d\n", k + 1, (int)(-ns) / 1000, (int)(-ns) % 1000);
            break;
        }
        cost[k] = ns;
        registered++;
    }
    close(release[1]);
    for (int k = 0; k < started; k++) waitpid(pids[k], NULL, 0);
    /* Mean first-call cost around a few population sizes. */
    int marks[] = {1, 10, 100, 250, 500, 1000, 0};
    for (int m = 0; marks[m]; m++) {
        int k = marks[m];
        if (k > registered) continue;
        int lo = k - 5 < 1 ? 1 : k - 5, hi = k + 4 > registered ? registered : k + 4;
        double sum = 0;
        for (int i = lo; i <= hi; i++) sum += cost[i - 1];
        printf("register %d %.1f\n", k, sum / (hi - lo + 1));
    }
}

int main(int argc, char **argv) {
    CHECK(argc == 3, "usage: bench ops|live|register|paced <n>");
    long n = (long)parse_u64(argv[2]);
    if (!strcmp(argv[1], "ops")) bench_ops(n);
    else if (!strcmp(argv[1], "live")) bench_live(n);
    else if (!strcmp(argv[1], "register")) bench_register((int)n);
    else if (!strcmp(argv[1], "paced")) bench_paced(n);
    else CHECK(0, "unknown mode %s", argv[1]);
    printf("done\n");
    return 0;
}
