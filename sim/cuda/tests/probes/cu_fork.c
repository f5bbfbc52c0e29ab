/* Fork and the driver. argv[1] = "before": fork before cuInit, the child initialises and works.
 * "after": fork after cuInit; like the real driver, the child cannot use CUDA. */
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"

static int child_alloc(void) {
    CUcontext ctx;
    CUdeviceptr p;
    CUresult rc = cuInit(0);
    if (rc != CUDA_SUCCESS) return rc;
    if ((rc = cuDevicePrimaryCtxRetain(&ctx, 0)) != CUDA_SUCCESS) return rc;
    if ((rc = cuCtxSetCurrent(ctx)) != CUDA_SUCCESS) return rc;
    return cuMemAlloc_v2(&p, 4096);
}

int main(int argc, char **argv) {
    int after = argc > 1 && !strcmp(argv[1], "after");
    if (after) {
        CUcontext ctx;
        OK(cuInit(0));
        OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    }
    pid_t pid = fork();
    if (pid == 0) {
        int rc = child_alloc();
        printf("child=%d\n", rc);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (after) {
        CUdeviceptr p;
        CUcontext ctx;
        OK(cuDevicePrimaryCtxRetain(&ctx, 0));
        OK(cuCtxSetCurrent(ctx));
        OK(cuMemAlloc_v2(&p, 4096)); /* the parent is unaffected */
    }
    PROBE_DONE();
}
