/* Shared helpers for the probes: a failed expectation prints where and exits 1. */
#ifndef SIMGPU_PROBE_H
#define SIMGPU_PROBE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_min.h"

static int probe_checks;

#define EXPECT(call, want)                                                                                   \
    do {                                                                                                     \
        CUresult got_ = (call);                                                                              \
        probe_checks++;                                                                                      \
        if (got_ != (want)) {                                                                                \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d (%s)\n", __FILE__, __LINE__, #call, got_,    \
                    (int)(want), #want);                                                                     \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

#define OK(call) EXPECT(call, CUDA_SUCCESS)

#define ASSERT(cond)                                                                                         \
    do {                                                                                                     \
        probe_checks++;                                                                                      \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);                     \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A module with the built-ins plus one declared kernel and one global. */
static const char PROBE_MODULE[] = "SIMGPU-MODULE 1\n"
                                   "kernel busy 1000\n"
                                   "global counter 256\n";

static inline CUresult launch_fill(CUfunction fill, CUstream stream, CUdeviceptr dst, unsigned int value,
                                   unsigned long long count) {
    void *params[] = {&dst, &value, &count};
    return cuLaunchKernel(fill, 4, 1, 1, 256, 1, 1, 0, stream, params, NULL);
}

#define PROBE_DONE()                                                                                         \
    do {                                                                                                     \
        printf("ok %d checks\n", probe_checks);                                                              \
        return 0;                                                                                            \
    } while (0)

#endif
