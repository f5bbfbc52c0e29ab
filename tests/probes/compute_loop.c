/* A launch loop for the compute-isolation tests (tests/compute.rs).
 *
 * Opens the driver with dlopen("libcuda.so.1") and dlsym (so a preloaded libvgpu answers), loads a
 * simulated module, and launches one kernel in a loop for a while through the chosen API. Optionally
 * a second thread that never launches counts how often it wakes up, to show it is never held.
 *
 * Options:
 *   --device N        CUDA ordinal (default 0)
 *   --kernel NAME     kernel name (default sleep_1000us; "work" is a module kernel of 1000 ns per
 *                     block-wave at 1 SM, use --grid to size it)
 *   --grid G          blocks (default 1)        --block B   threads per block (default 128)
 *   --seconds S       how long to launch (default 2; a decimal)
 *   --sync            synchronise after each launch (default: only at the end)
 *   --api A           kernel | ptsz | ex | ex_ptsz | coop | graph | multi (multi: devices 0 and 1)
 *   --graph-nodes N   kernels captured into the replayed graph (default 4)
 *   --ticker          run a thread that never launches and count its wake-ups (1 ms sleeps)
 *   --progress FILE   rewrite FILE with "<launches>\n" after every launch (for tests that watch)
 *
 * Output (stdout): `launches N`, `wall_ns N`, and with --ticker `ticks N` and `max_tick_gap_ns N`.
 * A failed call prints `FAIL <line>: ...` and exits 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;

/* CUlaunchConfig (cuda.h 12.x). */
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

/* CUDA_LAUNCH_PARAMS (cuda.h). */
typedef struct {
    CUfunction function;
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void **kernelParams;
} CUDA_LAUNCH_PARAMS;

#define CU_STREAM_NON_BLOCKING 1
#define CU_STREAM_CAPTURE_MODE_RELAXED 2

static CUresult (*p_cuInit)(unsigned int);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuStreamCreate)(CUstream *, unsigned int);
static CUresult (*p_cuStreamSynchronize)(CUstream);
static CUresult (*p_cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, CUstream, void **, void **);
static CUresult (*p_cuLaunchKernel_ptsz)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                         unsigned, CUstream, void **, void **);
static CUresult (*p_cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
static CUresult (*p_cuLaunchKernelEx_ptsz)(const CUlaunchConfig *, CUfunction, void **, void **);
static CUresult (*p_cuLaunchCooperativeKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                               unsigned, unsigned, CUstream, void **);
static CUresult (*p_cuLaunchCooperativeKernelMultiDevice)(CUDA_LAUNCH_PARAMS *, unsigned, unsigned);
static CUresult (*p_cuStreamBeginCapture_v2)(CUstream, int);
static CUresult (*p_cuStreamEndCapture)(CUstream, CUgraph *);
static CUresult (*p_cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
static CUresult (*p_cuGraphLaunch)(CUgraphExec, CUstream);

#define FAIL(...) \
    do { \
        printf("FAIL %d: ", __LINE__); \
        printf(__VA_ARGS__); \
        printf("\n"); \
        fflush(stdout); \
        _exit(1); \
    } while (0)
#define CU_OK(call) \
    do { \
        CUresult rc_ = (call); \
        if (rc_ != 0) FAIL("%s returned %d", #call, rc_); \
    } while (0)

static void *lib;
static void *sym(const char *name) {
    void *p = dlsym(lib, name);
    if (!p) FAIL("dlsym %s: %s", name, dlerror());
    return p;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static atomic_int stop_ticker;
static uint64_t ticks, max_gap_ns;

static void *ticker(void *arg) {
    (void)arg;
    uint64_t last = now_ns();
    while (!atomic_load(&stop_ticker)) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        uint64_t t = now_ns();
        if (t - last > max_gap_ns) max_gap_ns = t - last;
        last = t;
        ticks++;
    }
    return NULL;
}

static const char MODULE[] = "SIMGPU-MODULE 1\nkernel work 1000\n";

struct target {
    CUcontext ctx;
    CUstream stream;
    CUfunction fn;
};

static void open_target(int ordinal, const char *kernel, struct target *t) {
    CUdevice dev;
    CUmodule mod;
    CU_OK(p_cuDeviceGet(&dev, ordinal));
    CU_OK(p_cuDevicePrimaryCtxRetain(&t->ctx, dev));
    CU_OK(p_cuCtxSetCurrent(t->ctx));
    CU_OK(p_cuStreamCreate(&t->stream, CU_STREAM_NON_BLOCKING));
    CU_OK(p_cuModuleLoadData(&mod, MODULE));
    CU_OK(p_cuModuleGetFunction(&t->fn, mod, kernel));
}

static void write_progress(const char *path, unsigned long long n) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%llu\n", n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) FAIL("open %s: %s", path, strerror(errno));
    if (write(fd, buf, (size_t)len) != len) FAIL("write %s", path);
    close(fd);
}

int main(int argc, char **argv) {
    int ordinal = 0, sync = 0, want_ticker = 0, graph_nodes = 4;
    unsigned grid = 1, block = 128;
    double seconds = 2.0;
    const char *kernel = "sleep_1000us", *api = "kernel", *progress = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sync")) sync = 1;
        else if (!strcmp(a, "--ticker")) want_ticker = 1;
        else if (!v) FAIL("%s needs a value", a);
        else if (!strcmp(a, "--device")) ordinal = atoi(v), i++;
        else if (!strcmp(a, "--kernel")) kernel = v, i++;
        else if (!strcmp(a, "--grid")) grid = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--block")) block = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(a, "--api")) api = v, i++;
        else if (!strcmp(a, "--graph-nodes")) graph_nodes = atoi(v), i++;
        else if (!strcmp(a, "--progress")) progress = v, i++;
        else FAIL("unknown option %s", a);
    }

    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) FAIL("dlopen libcuda.so.1: %s", dlerror());
    p_cuInit = sym("cuInit");
    p_cuDeviceGet = sym("cuDeviceGet");
    p_cuDevicePrimaryCtxRetain = sym("cuDevicePrimaryCtxRetain");
    p_cuCtxSetCurrent = sym("cuCtxSetCurrent");
    p_cuCtxSynchronize = sym("cuCtxSynchronize");
    p_cuStreamCreate = sym("cuStreamCreate");
    p_cuStreamSynchronize = sym("cuStreamSynchronize");
    p_cuModuleLoadData = sym("cuModuleLoadData");
    p_cuModuleGetFunction = sym("cuModuleGetFunction");
    p_cuLaunchKernel = sym("cuLaunchKernel");
    p_cuLaunchKernel_ptsz = sym("cuLaunchKernel_ptsz");
    p_cuLaunchKernelEx = sym("cuLaunchKernelEx");
    p_cuLaunchKernelEx_ptsz = sym("cuLaunchKernelEx_ptsz");
    p_cuLaunchCooperativeKernel = sym("cuLaunchCooperativeKernel");
    p_cuLaunchCooperativeKernelMultiDevice = sym("cuLaunchCooperativeKernelMultiDevice");
    p_cuStreamBeginCapture_v2 = sym("cuStreamBeginCapture_v2");
    p_cuStreamEndCapture = sym("cuStreamEndCapture");
    p_cuGraphInstantiateWithFlags = sym("cuGraphInstantiateWithFlags");
    p_cuGraphLaunch = sym("cuGraphLaunch");

    CU_OK(p_cuInit(0));
    int multi = !strcmp(api, "multi");
    struct target t[2];
    if (multi) {
        open_target(1, kernel, &t[1]);
        open_target(0, kernel, &t[0]);
    } else {
        open_target(ordinal, kernel, &t[0]);
    }

    CUgraphExec exec = NULL;
    if (!strcmp(api, "graph")) {
        CUgraph graph;
        CU_OK(p_cuStreamBeginCapture_v2(t[0].stream, CU_STREAM_CAPTURE_MODE_RELAXED));
        for (int n = 0; n < graph_nodes; n++)
            CU_OK(p_cuLaunchKernel(t[0].fn, grid, 1, 1, block, 1, 1, 0, t[0].stream, NULL, NULL));
        CU_OK(p_cuStreamEndCapture(t[0].stream, &graph));
        CU_OK(p_cuGraphInstantiateWithFlags(&exec, graph, 0));
    }

    pthread_t tick_thread;
    if (want_ticker && pthread_create(&tick_thread, NULL, ticker, NULL) != 0) FAIL("pthread_create");

    uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9);
    unsigned long long launches = 0;
    CUlaunchConfig config = {grid, 1, 1, block, 1, 1, 0, t[0].stream, NULL, 0};
    while (now_ns() < deadline) {
        if (!strcmp(api, "kernel"))
            CU_OK(p_cuLaunchKernel(t[0].fn, grid, 1, 1, block, 1, 1, 0, t[0].stream, NULL, NULL));
        else if (!strcmp(api, "ptsz"))
            CU_OK(p_cuLaunchKernel_ptsz(t[0].fn, grid, 1, 1, block, 1, 1, 0, t[0].stream, NULL, NULL));
        else if (!strcmp(api, "ex"))
            CU_OK(p_cuLaunchKernelEx(&config, t[0].fn, NULL, NULL));
        else if (!strcmp(api, "ex_ptsz"))
            CU_OK(p_cuLaunchKernelEx_ptsz(&config, t[0].fn, NULL, NULL));
        else if (!strcmp(api, "coop"))
            CU_OK(p_cuLaunchCooperativeKernel(t[0].fn, grid, 1, 1, block, 1, 1, 0, t[0].stream, NULL));
        else if (!strcmp(api, "graph"))
            CU_OK(p_cuGraphLaunch(exec, t[0].stream));
        else if (multi) {
            CUDA_LAUNCH_PARAMS list[2];
            for (int d = 0; d < 2; d++) {
                CUDA_LAUNCH_PARAMS p = {t[d].fn, grid, 1, 1, block, 1, 1, 0, t[d].stream, NULL};
                list[d] = p;
            }
            CU_OK(p_cuLaunchCooperativeKernelMultiDevice(list, 2, 0));
        } else
            FAIL("unknown --api %s", api);
        launches++;
        if (sync) {
            for (int d = 0; d < 1 + multi; d++) CU_OK(p_cuStreamSynchronize(t[d].stream));
        }
        if (progress) write_progress(progress, launches);
    }
    uint64_t wall = now_ns() - start;
    for (int d = 0; d < 1 + multi; d++) CU_OK(p_cuStreamSynchronize(t[d].stream));
    if (want_ticker) {
        atomic_store(&stop_ticker, 1);
        pthread_join(tick_thread, NULL);
    }
    printf("launches %llu\n", launches);
    printf("wall_ns %llu\n", (unsigned long long)wall);
    if (want_ticker) {
        printf("ticks %llu\n", (unsigned long long)ticks);
        printf("max_tick_gap_ns %llu\n", (unsigned long long)max_gap_ns);
    }
    return 0;
}
