/* driver_probe: the CUDA driver API, timed, without the toolkit.
 *
 * Built by scripts/acceptance/run.py with the system C compiler (cc -O2 driver_probe.c -ldl); it needs no
 * CUDA headers: it opens libcuda.so.1 with dlopen and declares the few prototypes it calls, with opaque
 * handles. The kernel comes from a module image file: PTX text (kernels.ptx) on a real GPU, a
 * "SIMGPU-MODULE 1" text (sim_kernels.txt) on the simulated driver.
 *
 *   driver_probe launches MODULE KERNEL ITERS REPS WARMUP
 *       Host time per launch of a 1-block, 1-thread kernel: REPS timed loops of ITERS launches, each
 *       closed by cuCtxSynchronize (case 6).
 *   driver_probe paced MODULE KERNEL BURSTS BURST
 *       Host time per launch in BURSTS bursts of BURST back-to-back launches, each burst followed by a
 *       sync and an idle gap 20 times its length, so that an SM limit of 50 % never throttles: the median
 *       burst's time per launch (case 6.3 and 6.4: what an unthrottled launch costs under a limit).
 *   driver_probe saturate MODULE KERNEL ITERS TARGET_S CAP_S WARM_S PER_GRAPH BLOCKS_PER_SM THREADS SPIN_US
 *       A loop of kernels that fill every SM, timed with CUDA events, eager and as a replayed CUDA graph of
 *       PER_GRAPH launches (case 5 on the simulated driver, or on a GPU without PyTorch). The kernel takes
 *       one u64 parameter, the clock cycles each block spins (SPIN_US at the device's clock rate; the
 *       simulated driver ignores it). ITERS 0 = calibrate to TARGET_S seconds.
 *
 * Prints one line "RESULT {json}" on stdout; errors name the failing call and its CUresult.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUevent, *CUgraph, *CUgraphExec;

#define CU_DEVICE_ATTRIBUTE_CLOCK_RATE 13
#define CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT 16
#define CU_STREAM_CAPTURE_MODE_GLOBAL 0

static struct {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuCtxSynchronize)(void);
    CUresult (*cuModuleLoadData)(CUmodule *, const void *);
    CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               CUstream, void **, void **);
    CUresult (*cuStreamCreate)(CUstream *, unsigned);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuEventCreate)(CUevent *, unsigned);
    CUresult (*cuEventRecord)(CUevent, CUstream);
    CUresult (*cuEventSynchronize)(CUevent);
    CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent);
    CUresult (*cuStreamBeginCapture_v2)(CUstream, int);
    CUresult (*cuStreamEndCapture)(CUstream, CUgraph *);
    CUresult (*cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
    CUresult (*cuGraphLaunch)(CUgraphExec, CUstream);
    CUresult (*cuGetErrorName)(CUresult, const char **);
} cu;

static void fail(const char *what, CUresult rc) {
    const char *name = "?";
    if (cu.cuGetErrorName)
        cu.cuGetErrorName(rc, &name);
    printf("RESULT {\"fatal\": \"%s returned %d (%s)\"}\n", what, rc, name ? name : "?");
    fflush(stdout);
    exit(1);
}

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        CUresult rc_ = (call);                                                                                         \
        if (rc_ != 0)                                                                                                  \
            fail(#call, rc_);                                                                                          \
    } while (0)

static void load_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        printf("RESULT {\"fatal\": \"dlopen libcuda.so.1 failed\"}\n");
        exit(1);
    }
    /* dlsym, not linking: the door cudarc, pynvml and ctypes use. libvgpu.so answers it with its hooks. */
#define LOAD(name)                                                                                                     \
    do {                                                                                                               \
        *(void **)(&cu.name) = dlsym(h, #name);                                                                        \
        if (!cu.name) {                                                                                                \
            printf("RESULT {\"fatal\": \"libcuda.so.1 has no %s\"}\n", #name);                                        \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
    LOAD(cuGetErrorName);
    LOAD(cuInit);
    LOAD(cuDeviceGet);
    LOAD(cuDeviceGetAttribute);
    LOAD(cuDevicePrimaryCtxRetain);
    LOAD(cuCtxSetCurrent);
    LOAD(cuCtxSynchronize);
    LOAD(cuModuleLoadData);
    LOAD(cuModuleGetFunction);
    LOAD(cuLaunchKernel);
    LOAD(cuStreamCreate);
    LOAD(cuStreamSynchronize);
    LOAD(cuEventCreate);
    LOAD(cuEventRecord);
    LOAD(cuEventSynchronize);
    LOAD(cuEventElapsedTime);
    LOAD(cuStreamBeginCapture_v2);
    LOAD(cuStreamEndCapture);
    LOAD(cuGraphInstantiateWithFlags);
    LOAD(cuGraphLaunch);
#undef LOAD
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("RESULT {\"fatal\": \"cannot open module %s\"}\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = calloc(1, (size_t)n + 1); /* NUL-terminated: PTX is loaded as a C string */
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        printf("RESULT {\"fatal\": \"cannot read module %s\"}\n", path);
        exit(1);
    }
    fclose(f);
    return buf;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static CUdevice device;
static CUfunction kernel;
static CUstream stream;
static unsigned grid_x = 1, block_x = 1;
static void **kernel_params; /* NULL: the kernel takes no parameter */

static void setup(const char *module_path, const char *kernel_name) {
    load_driver();
    CUcontext ctx;
    CUmodule mod;
    CHECK(cu.cuInit(0));
    CHECK(cu.cuDeviceGet(&device, 0));
    CHECK(cu.cuDevicePrimaryCtxRetain(&ctx, device));
    CHECK(cu.cuCtxSetCurrent(ctx));
    char *image = read_file(module_path);
    CHECK(cu.cuModuleLoadData(&mod, image));
    CHECK(cu.cuModuleGetFunction(&kernel, mod, kernel_name));
    CHECK(cu.cuStreamCreate(&stream, 0));
}

static void launch(void) {
    CHECK(cu.cuLaunchKernel(kernel, grid_x, 1, 1, block_x, 1, 1, 0, stream, kernel_params, NULL));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The rest of a RESULT line: the n samples, then their median (sorts `per`). */
static void print_per_launch(double *per, long n) {
    printf("\"per_launch_ns\": [");
    for (long i = 0; i < n; i++)
        printf("%s%.3f", i ? ", " : "", per[i]);
    qsort(per, (size_t)n, sizeof per[0], cmp_double);
    double median = n % 2 ? per[n / 2] : 0.5 * (per[n / 2 - 1] + per[n / 2]);
    printf("], \"median_ns\": %.3f}\n", median);
}

static int cmd_launches(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: driver_probe launches MODULE KERNEL ITERS REPS WARMUP\n");
        return 2;
    }
    long iters = atol(argv[4]), reps = atol(argv[5]), warmup = atol(argv[6]);
    if (iters < 1 || reps < 1 || reps > 1000 || warmup < 0) {
        fprintf(stderr, "driver_probe: bad ITERS/REPS/WARMUP\n");
        return 2;
    }
    setup(argv[2], argv[3]);
    for (long i = 0; i < warmup; i++)
        launch();
    CHECK(cu.cuCtxSynchronize());
    double per[1000];
    for (long r = 0; r < reps; r++) {
        double t0 = now_s();
        for (long i = 0; i < iters; i++)
            launch();
        CHECK(cu.cuCtxSynchronize());
        per[r] = (now_s() - t0) * 1e9 / (double)iters;
    }
    printf("RESULT {\"backend\": \"driver-probe\", \"iters\": %ld, ", iters);
    print_per_launch(per, reps);
    return 0;
}

static int cmd_paced(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: driver_probe paced MODULE KERNEL BURSTS BURST\n");
        return 2;
    }
    long bursts = atol(argv[4]), burst = atol(argv[5]);
    if (bursts < 1 || bursts > 1000 || burst < 1) {
        fprintf(stderr, "driver_probe: bad BURSTS/BURST\n");
        return 2;
    }
    setup(argv[2], argv[3]);
    /* Warm up with the same pattern: the limiter learns the kernel's cost before timing. */
    for (long b = 0; b < 3; b++) {
        for (long i = 0; i < burst; i++)
            launch();
        CHECK(cu.cuCtxSynchronize());
        usleep(20000);
    }
    double per[1000];
    for (long b = 0; b < bursts; b++) {
        double t0 = now_s();
        for (long i = 0; i < burst; i++)
            launch();
        double took = now_s() - t0;
        per[b] = took * 1e9 / (double)burst;
        CHECK(cu.cuCtxSynchronize());
        usleep((useconds_t)(1000 + took * 1e6 * 20));
    }
    printf("RESULT {\"backend\": \"driver-probe\", \"bursts\": %ld, \"burst\": %ld, ", bursts, burst);
    print_per_launch(per, bursts);
    return 0;
}

typedef struct {
    long iters, planned;
    double ms, wall_s;
} Timed;

static CUgraphExec graph_exec;
static int per_graph;

static void call_eager(void) { launch(); }
static void call_graph(void) { CHECK(cu.cuGraphLaunch(graph_exec, stream)); }

/* Warm up for warm_s (a limiter settles), then `calls` calls between two events, in about 20 batches with a
 * stream sync after each, stopping early once cap_s of wall time has passed: a throttled run must not outlive
 * its timeout. */
static Timed timed(void (*fn)(void), long per_call, long calls, double warm_s, double cap_s) {
    CUevent e0, e1;
    CHECK(cu.cuEventCreate(&e0, 0));
    CHECK(cu.cuEventCreate(&e1, 0));
    for (double tw = now_s(); now_s() - tw < warm_s;) {
        fn();
        CHECK(cu.cuStreamSynchronize(stream));
    }
    long batch = calls / 20 > 0 ? calls / 20 : 1, done = 0;
    double t0 = now_s();
    CHECK(cu.cuEventRecord(e0, stream));
    while (done < calls) {
        long k = calls - done < batch ? calls - done : batch;
        for (long i = 0; i < k; i++)
            fn();
        done += k;
        CHECK(cu.cuStreamSynchronize(stream));
        if (now_s() - t0 > cap_s)
            break;
    }
    CHECK(cu.cuEventRecord(e1, stream));
    CHECK(cu.cuEventSynchronize(e1));
    float ms = 0;
    CHECK(cu.cuEventElapsedTime(&ms, e0, e1));
    Timed t = {done * per_call, calls * per_call, ms, now_s() - t0};
    return t;
}

static long calibrate(void (*fn)(void), long per_call, double target_s) {
    CUevent e0, e1;
    CHECK(cu.cuEventCreate(&e0, 0));
    CHECK(cu.cuEventCreate(&e1, 0));
    long calls = 10 / per_call > 0 ? 10 / per_call : 1;
    CHECK(cu.cuEventRecord(e0, stream));
    for (long i = 0; i < calls; i++)
        fn();
    CHECK(cu.cuEventRecord(e1, stream));
    CHECK(cu.cuEventSynchronize(e1));
    float ms = 0;
    CHECK(cu.cuEventElapsedTime(&ms, e0, e1));
    double per_iter = ms / (double)(calls * per_call);
    long iters = (long)(target_s * 1000.0 / (per_iter > 1e-3 ? per_iter : 1e-3));
    return iters > per_call * 4 ? iters : per_call * 4;
}

static int cmd_saturate(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: driver_probe saturate MODULE KERNEL ITERS TARGET_S CAP_S WARM_S PER_GRAPH "
                        "BLOCKS_PER_SM THREADS SPIN_US\n");
        return 2;
    }
    long iters_arg = atol(argv[4]);
    double target_s = atof(argv[5]), cap_s = atof(argv[6]), warm_s = atof(argv[7]);
    per_graph = atoi(argv[8]);
    int blocks_per_sm = atoi(argv[9]), threads = atoi(argv[10]);
    double spin_us = atof(argv[11]);
    if (per_graph < 1 || blocks_per_sm < 1 || threads < 1 || spin_us <= 0) {
        fprintf(stderr, "driver_probe: bad PER_GRAPH/BLOCKS_PER_SM/THREADS/SPIN_US\n");
        return 2;
    }
    setup(argv[2], argv[3]);
    int sms = 0;
    CHECK(cu.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
    int clock_khz = 0;
    CHECK(cu.cuDeviceGetAttribute(&clock_khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, device));
    static unsigned long long spin_cycles;
    static void *params[1];
    spin_cycles = (unsigned long long)((double)clock_khz * spin_us / 1000.0);
    params[0] = &spin_cycles;
    kernel_params = params;
    grid_x = (unsigned)(sms * blocks_per_sm);
    block_x = (unsigned)threads;
    for (int i = 0; i < 3; i++)
        launch();
    CHECK(cu.cuStreamSynchronize(stream));

    CUgraph graph;
    CHECK(cu.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
    for (int i = 0; i < per_graph; i++)
        launch();
    CHECK(cu.cuStreamEndCapture(stream, &graph));
    CHECK(cu.cuGraphInstantiateWithFlags(&graph_exec, graph, 0));

    struct {
        const char *name;
        void (*fn)(void);
        long per_call;
    } modes[2] = {{"eager", call_eager, 1}, {"graph", call_graph, per_graph}};
    Timed results[2];
    for (int m = 0; m < 2; m++) {
        long iters = iters_arg > 0 ? iters_arg : calibrate(modes[m].fn, modes[m].per_call, target_s);
        long calls = iters / modes[m].per_call > 0 ? iters / modes[m].per_call : 1;
        results[m] = timed(modes[m].fn, modes[m].per_call, calls, warm_s, cap_s);
    }
    /* Printed only once everything succeeded: a failure prints its own RESULT line instead. */
    printf("RESULT {\"backend\": \"driver-probe\", \"sms\": %d, \"grid\": %u, \"clock_khz\": %d, "
           "\"spin_cycles\": %llu, \"modes\": {",
           sms, grid_x, clock_khz, spin_cycles);
    for (int m = 0; m < 2; m++) {
        Timed t = results[m];
        printf("%s\"%s\": {\"iters\": %ld, \"planned_iters\": %ld, \"ms\": %.4f, \"wall_s\": %.4f, "
               "\"per_iter_ms\": %.6f}",
               m ? ", " : "", modes[m].name, t.iters, t.planned, t.ms, t.wall_s,
               t.ms / (double)(t.iters > 0 ? t.iters : 1));
    }
    printf("}}\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "launches") == 0)
        return cmd_launches(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "paced") == 0)
        return cmd_paced(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "saturate") == 0)
        return cmd_saturate(argc, argv);
    fprintf(stderr, "usage: driver_probe launches|paced|saturate ... (see the comment at the top of driver_probe.c)\n");
    return 2;
}
