/* Drives the simulated libnvidia-ml.so.1 the way C clients do: dlopen + dlsym, prototypes declared
 * here (no nvml.h). Modes:
 *   api    check the API contract (error codes, NULLs, handles, refcounting); exit 1 on the first failure
 *   query  print what the machine looks like (tab-separated records, see print_machine)
 *   init   print the nvmlInit_v2 result and, if it worked, the device count and lookups */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct { unsigned pid; unsigned long long usedGpuMemory; unsigned gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned pid;
    unsigned long long timeStamp;
    unsigned smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_MEMORY_V2 ((unsigned)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

static void *lib;
static void *sym(const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "missing symbol %s\n", name);
        exit(3);
    }
    return p;
}
#define FN(ret, name, args) ret(*name) args = (ret(*) args)sym(#name)

static int failures;
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond);      \
            failures++;                                                    \
        }                                                                  \
    } while (0)

static void print_machine(void) {
    FN(int, nvmlDeviceGetCount_v2, (unsigned *));
    FN(int, nvmlDeviceGetHandleByIndex_v2, (unsigned, nvmlDevice_t *));
    FN(int, nvmlDeviceGetName, (nvmlDevice_t, char *, unsigned));
    FN(int, nvmlDeviceGetUUID, (nvmlDevice_t, char *, unsigned));
    FN(int, nvmlDeviceGetPciInfo_v3, (nvmlDevice_t, nvmlPciInfo_t *));
    FN(int, nvmlDeviceGetMemoryInfo, (nvmlDevice_t, nvmlMemory_t *));
    FN(int, nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t, unsigned *, nvmlProcessInfo_t *));
    FN(int, nvmlDeviceGetUtilizationRates, (nvmlDevice_t, nvmlUtilization_t *));
    FN(int, nvmlDeviceGetProcessUtilization, (nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned *, unsigned long long));
    FN(int, nvmlDeviceGetCudaComputeCapability, (nvmlDevice_t, int *, int *));
    unsigned count = 0;
    int rc = nvmlDeviceGetCount_v2(&count);
    printf("count\t%u\trc=%d\n", count, rc);
    for (unsigned i = 0; i < count; i++) {
        nvmlDevice_t h = NULL;
        rc = nvmlDeviceGetHandleByIndex_v2(i, &h);
        if (rc != NVML_SUCCESS) {
            printf("device\t%u\trc=%d\n", i, rc);
            continue;
        }
        char name[96] = "", uuid[96] = "";
        nvmlPciInfo_t pci;
        nvmlMemory_t mem;
        int major = 0, minor = 0;
        nvmlDeviceGetName(h, name, sizeof name);
        nvmlDeviceGetUUID(h, uuid, sizeof uuid);
        nvmlDeviceGetPciInfo_v3(h, &pci);
        nvmlDeviceGetMemoryInfo(h, &mem);
        nvmlDeviceGetCudaComputeCapability(h, &major, &minor);
        printf("device\t%u\trc=0\tname=%s\tuuid=%s\tpci=%s\tcc=%d.%d\ttotal=%llu\tfree=%llu\tused=%llu\n", i, name, uuid,
               pci.busId, major, minor, mem.total, mem.free, mem.used);
        nvmlProcessInfo_t procs[64];
        unsigned n = 64;
        rc = nvmlDeviceGetComputeRunningProcesses_v3(h, &n, procs);
        for (unsigned p = 0; rc == NVML_SUCCESS && p < n; p++)
            printf("process\t%u\tpid=%u\tused=%llu\n", i, procs[p].pid, procs[p].usedGpuMemory);
        nvmlUtilization_t util;
        if (nvmlDeviceGetUtilizationRates(h, &util) == NVML_SUCCESS) printf("util\t%u\tgpu=%u\n", i, util.gpu);
        nvmlProcessUtilizationSample_t samples[64];
        n = 64;
        rc = nvmlDeviceGetProcessUtilization(h, samples, &n, 0);
        for (unsigned s = 0; rc == NVML_SUCCESS && s < n; s++)
            printf("sample\t%u\tpid=%u\tsm=%u\tts=%llu\n", i, samples[s].pid, samples[s].smUtil, samples[s].timeStamp);
    }
}

static void api_checks(void) {
    FN(int, nvmlInit_v2, (void));
    FN(int, nvmlInit, (void));
    FN(int, nvmlInitWithFlags, (unsigned));
    FN(int, nvmlShutdown, (void));
    FN(const char *, nvmlErrorString, (int));
    FN(int, nvmlSystemGetDriverVersion, (char *, unsigned));
    FN(int, nvmlSystemGetNVMLVersion, (char *, unsigned));
    FN(int, nvmlSystemGetCudaDriverVersion_v2, (int *));
    FN(int, nvmlDeviceGetCount_v2, (unsigned *));
    FN(int, nvmlDeviceGetCount, (unsigned *));
    FN(int, nvmlDeviceGetHandleByIndex_v2, (unsigned, nvmlDevice_t *));
    FN(int, nvmlDeviceGetHandleByUUID, (const char *, nvmlDevice_t *));
    FN(int, nvmlDeviceGetHandleByPciBusId_v2, (const char *, nvmlDevice_t *));
    FN(int, nvmlDeviceGetName, (nvmlDevice_t, char *, unsigned));
    FN(int, nvmlDeviceGetUUID, (nvmlDevice_t, char *, unsigned));
    FN(int, nvmlDeviceGetIndex, (nvmlDevice_t, unsigned *));
    FN(int, nvmlDeviceGetPciInfo_v3, (nvmlDevice_t, nvmlPciInfo_t *));
    FN(int, nvmlDeviceGetMemoryInfo, (nvmlDevice_t, nvmlMemory_t *));
    FN(int, nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t, nvmlMemory_v2_t *));
    FN(int, nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t, unsigned *, nvmlProcessInfo_t *));
    FN(int, nvmlDeviceGetComputeRunningProcesses, (nvmlDevice_t, unsigned *, nvmlProcessInfo_v1_t *));
    FN(int, nvmlDeviceGetGraphicsRunningProcesses_v3, (nvmlDevice_t, unsigned *, nvmlProcessInfo_t *));
    FN(int, nvmlDeviceGetProcessUtilization, (nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned *, unsigned long long));
    FN(int, nvmlDeviceGetMigMode, (nvmlDevice_t, unsigned *, unsigned *));
    FN(int, nvmlDeviceGetTemperature, (nvmlDevice_t, int, unsigned *));
    FN(int, nvmlDeviceGetFanSpeed, (nvmlDevice_t, unsigned *));           /* a generated stub */
    FN(int, nvmlDeviceSetComputeMode, (nvmlDevice_t, int));               /* a generated stub */
    FN(int, nvmlDeviceGetPciInfo, (nvmlDevice_t, nvmlPciInfo_t *));

    unsigned count = 99;
    nvmlDevice_t h0 = NULL, h1 = NULL, h = NULL;
    /* Before init. */
    CHECK(nvmlDeviceGetCount_v2(&count) == NVML_ERROR_UNINITIALIZED);
    CHECK(nvmlShutdown() == NVML_ERROR_UNINITIALIZED);
    CHECK(strcmp(nvmlErrorString(NVML_ERROR_UNINITIALIZED), "Uninitialized") == 0);
    CHECK(strcmp(nvmlErrorString(12345), "Unknown Error") == 0);

    /* Refcounted init: three inits need three shutdowns. */
    CHECK(nvmlInit_v2() == NVML_SUCCESS);
    CHECK(nvmlInit() == NVML_SUCCESS);
    CHECK(nvmlInitWithFlags(0) == NVML_SUCCESS);
    CHECK(nvmlShutdown() == NVML_SUCCESS);
    CHECK(nvmlShutdown() == NVML_SUCCESS);
    CHECK(nvmlDeviceGetCount_v2(&count) == NVML_SUCCESS && count == 2);
    CHECK(nvmlDeviceGetCount(&count) == NVML_SUCCESS && count == 2);
    CHECK(nvmlDeviceGetCount_v2(NULL) == NVML_ERROR_INVALID_ARGUMENT);

    char text[96];
    int cuda = 0;
    CHECK(nvmlSystemGetDriverVersion(text, sizeof text) == NVML_SUCCESS && strlen(text) > 0);
    CHECK(nvmlSystemGetDriverVersion(text, 2) == NVML_ERROR_INSUFFICIENT_SIZE);
    CHECK(nvmlSystemGetNVMLVersion(text, sizeof text) == NVML_SUCCESS && strncmp(text, "12.", 3) == 0);
    CHECK(nvmlSystemGetCudaDriverVersion_v2(&cuda) == NVML_SUCCESS && cuda == 12090);

    /* Handles. */
    CHECK(nvmlDeviceGetHandleByIndex_v2(0, &h0) == NVML_SUCCESS && h0 != NULL);
    CHECK(nvmlDeviceGetHandleByIndex_v2(1, &h1) == NVML_SUCCESS && h1 != NULL && h1 != h0);
    CHECK(nvmlDeviceGetHandleByIndex_v2(2, &h) == NVML_ERROR_INVALID_ARGUMENT);
    CHECK(nvmlDeviceGetHandleByIndex_v2(0, NULL) == NVML_ERROR_INVALID_ARGUMENT);
    unsigned index = 9;
    CHECK(nvmlDeviceGetIndex(h1, &index) == NVML_SUCCESS && index == 1);
    int bogus_storage[8];
    CHECK(nvmlDeviceGetIndex((nvmlDevice_t)bogus_storage, &index) == NVML_ERROR_INVALID_ARGUMENT);
    CHECK(nvmlDeviceGetIndex(NULL, &index) == NVML_ERROR_INVALID_ARGUMENT);
    CHECK(nvmlDeviceGetIndex(h0, NULL) == NVML_ERROR_INVALID_ARGUMENT);

    CHECK(nvmlDeviceGetName(h0, text, sizeof text) == NVML_SUCCESS && strcmp(text, "NVIDIA A100-SXM4-40GB") == 0);
    CHECK(nvmlDeviceGetName(h1, text, sizeof text) == NVML_SUCCESS && strcmp(text, "NVIDIA L4") == 0);
    CHECK(nvmlDeviceGetName(h0, text, 4) == NVML_ERROR_INSUFFICIENT_SIZE);
    CHECK(nvmlDeviceGetName(h0, NULL, 96) == NVML_ERROR_INVALID_ARGUMENT);
    char uuid[96];
    CHECK(nvmlDeviceGetUUID(h1, uuid, sizeof uuid) == NVML_SUCCESS && strncmp(uuid, "GPU-", 4) == 0 && strlen(uuid) == 40);
    CHECK(nvmlDeviceGetHandleByUUID(uuid, &h) == NVML_SUCCESS && h == h1);
    CHECK(nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000", &h) == NVML_ERROR_NOT_FOUND);
    CHECK(nvmlDeviceGetHandleByUUID(NULL, &h) == NVML_ERROR_INVALID_ARGUMENT);

    nvmlPciInfo_t pci;
    CHECK(nvmlDeviceGetPciInfo_v3(h1, &pci) == NVML_SUCCESS);
    CHECK(pci.pciDeviceId == 0x27B810DE);
    CHECK(strlen(pci.busId) == 16 && strlen(pci.busIdLegacy) == 12);
    CHECK(nvmlDeviceGetHandleByPciBusId_v2(pci.busId, &h) == NVML_SUCCESS && h == h1);
    CHECK(nvmlDeviceGetHandleByPciBusId_v2(pci.busIdLegacy, &h) == NVML_SUCCESS && h == h1);
    CHECK(nvmlDeviceGetHandleByPciBusId_v2("0000:FE:00.0", &h) == NVML_ERROR_NOT_FOUND);
    CHECK(nvmlDeviceGetHandleByPciBusId_v2("not a bus id", &h) == NVML_ERROR_INVALID_ARGUMENT);
    /* The legacy v1 call writes only the 52-byte v1 layout. */
    unsigned char legacy[sizeof(nvmlPciInfo_t)];
    memset(legacy, 0xAB, sizeof legacy);
    CHECK(nvmlDeviceGetPciInfo(h1, (nvmlPciInfo_t *)legacy) == NVML_SUCCESS);
    CHECK(legacy[52] == 0xAB && ((nvmlPciInfo_t *)legacy)->pciDeviceId == 0x27B810DE);

    /* Memory: nothing allocated on this fresh machine. */
    nvmlMemory_t mem;
    CHECK(nvmlDeviceGetMemoryInfo(h0, &mem) == NVML_SUCCESS);
    CHECK(mem.total == 40ULL << 30 && mem.free == mem.total && mem.used == 0);
    CHECK(nvmlDeviceGetMemoryInfo(h0, NULL) == NVML_ERROR_INVALID_ARGUMENT);
    nvmlMemory_v2_t mem2 = {0};
    CHECK(nvmlDeviceGetMemoryInfo_v2(h1, &mem2) == NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    mem2.version = NVML_MEMORY_V2;
    CHECK(nvmlDeviceGetMemoryInfo_v2(h1, &mem2) == NVML_SUCCESS);
    CHECK(mem2.total == 24ULL << 30 && mem2.reserved == 0 && mem2.free + mem2.used + mem2.reserved == mem2.total);

    /* Process lists: the two-call protocol with nothing running. */
    unsigned n = 0;
    CHECK(nvmlDeviceGetComputeRunningProcesses_v3(h0, &n, NULL) == NVML_SUCCESS && n == 0);
    CHECK(nvmlDeviceGetComputeRunningProcesses_v3(h0, NULL, NULL) == NVML_ERROR_INVALID_ARGUMENT);
    n = 0;
    CHECK(nvmlDeviceGetComputeRunningProcesses(h0, &n, NULL) == NVML_SUCCESS && n == 0);
    n = 0;
    CHECK(nvmlDeviceGetGraphicsRunningProcesses_v3(h0, &n, NULL) == NVML_SUCCESS && n == 0);
    n = 0;
    CHECK(nvmlDeviceGetProcessUtilization(h0, NULL, &n, 0) == NVML_ERROR_NOT_FOUND);

    unsigned current = 7, pending = 7, temp = 0;
    CHECK(nvmlDeviceGetMigMode(h0, &current, &pending) == NVML_SUCCESS && current == 0 && pending == 0);
    CHECK(nvmlDeviceGetTemperature(h0, 0, &temp) == NVML_SUCCESS && temp > 0 && temp < 100);
    CHECK(nvmlDeviceGetFanSpeed(h0, &temp) == NVML_ERROR_NOT_SUPPORTED);
    CHECK(nvmlDeviceSetComputeMode(h0, 0) == NVML_ERROR_NOT_SUPPORTED);

    CHECK(nvmlShutdown() == NVML_SUCCESS);
    CHECK(nvmlShutdown() == NVML_ERROR_UNINITIALIZED);
    CHECK(nvmlDeviceGetName(h0, text, sizeof text) == NVML_ERROR_UNINITIALIZED);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "api";
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 3;
    }
    if (strcmp(mode, "api") == 0) {
        api_checks();
        printf("failures=%d\n", failures);
        return failures ? 1 : 0;
    }
    FN(int, nvmlInit_v2, (void));
    FN(int, nvmlShutdown, (void));
    int rc = nvmlInit_v2();
    printf("init\trc=%d\n", rc);
    if (rc != NVML_SUCCESS) return 0;
    print_machine();
    nvmlShutdown();
    return 0;
}
