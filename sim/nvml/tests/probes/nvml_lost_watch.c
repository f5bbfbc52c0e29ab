/* A long-running NVML client, like a device plugin's health loop: it initialises NVML and takes every
 * device's handle once, then answers each line on stdin with what the devices say now, so a test can
 * change the machine from another process between two questions. Per line read:
 *   device<TAB><i><TAB>mem=<rc of nvmlDeviceGetMemoryInfo on the handle taken at start><TAB>handle=<rc of a
 *   fresh nvmlDeviceGetHandleByIndex_v2>  (one per device), then "done".
 * Ends at EOF on stdin (exit 0); exit 3 if the library or a symbol is missing, 1 if setup fails. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "missing symbol %s\n", name);
        exit(3);
    }
    return p;
}

int main(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 3;
    }
    int (*init)(void) = (int (*)(void))sym(lib, "nvmlInit_v2");
    int (*count_fn)(unsigned *) = (int (*)(unsigned *))sym(lib, "nvmlDeviceGetCount_v2");
    int (*by_index)(unsigned, nvmlDevice_t *) =
        (int (*)(unsigned, nvmlDevice_t *))sym(lib, "nvmlDeviceGetHandleByIndex_v2");
    int (*mem_info)(nvmlDevice_t, nvmlMemory_t *) =
        (int (*)(nvmlDevice_t, nvmlMemory_t *))sym(lib, "nvmlDeviceGetMemoryInfo");

    unsigned count = 0;
    if (init() != 0 || count_fn(&count) != 0 || count > 16) {
        fprintf(stderr, "nvml setup failed (count %u)\n", count);
        return 1;
    }
    nvmlDevice_t handles[16] = {0};
    for (unsigned i = 0; i < count; i++) {
        int rc = by_index(i, &handles[i]);
        if (rc != 0) {
            fprintf(stderr, "device %u: handle rc=%d at start\n", i, rc);
            return 1;
        }
    }
    printf("ready\tcount=%u\n", count);
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        for (unsigned i = 0; i < count; i++) {
            nvmlMemory_t mem;
            nvmlDevice_t fresh = NULL;
            int mem_rc = mem_info(handles[i], &mem);
            int handle_rc = by_index(i, &fresh);
            printf("device\t%u\tmem=%d\thandle=%d\n", i, mem_rc, handle_rc);
        }
        printf("done\n");
        fflush(stdout);
    }
    return 0;
}
