/* Main program of the constructor test: by the time main runs, ctor_lib's constructor has already
 * used CUDA. Checks that the limit still holds afterwards (the library initialised correctly even
 * though its first call came from a constructor). Usage: ctor_main <limit-bytes> */
#define VGPU_LINK_DRIVER
#include "probe_common.h"

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: ctor_main <limit>");
    size_t free_bytes = 0, total = 0;
    CU_OK(cuMemGetInfo_v2(&free_bytes, &total));
    CHECK(total == parse_u64(argv[1]), "main: total %zu", total);
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc_v2(&p, total + 1);
    CHECK(rc == CUDA_ERROR_OUT_OF_MEMORY, "main: over-limit allocation returned %d", rc);
    printf("main done\n");
    return 0;
}
