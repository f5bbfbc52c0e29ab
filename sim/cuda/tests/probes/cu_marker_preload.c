/* Preloaded by the symbolic-binding test: defines two driver entry points that answer with a marker
 * (CUDA_ERROR_UNKNOWN), so a call that reaches them instead of the simulator is visible. */
#include "cuda_min.h"

CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
    (void)free;
    (void)total;
    return CUDA_ERROR_UNKNOWN;
}

CUresult cuCtxGetDevice(CUdevice *dev) {
    (void)dev;
    return CUDA_ERROR_UNKNOWN;
}
