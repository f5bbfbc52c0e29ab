/* An interactive CUDA/NVML client the tests drive line by line, so they can read the region file
 * between two calls. It reaches the driver through dlopen + dlsym (the libloading/ctypes door).
 *
 * Each command line gets exactly one reply line: `= code=<CUresult or nvmlReturn_t> key=value ...`
 * (`code=-1 error=...` for a malformed command). Commands:
 *   init | ctx <ordinal> | info | info_null free|total|both | totalmem <ordinal> | totalmem_null <ordinal>
 *   devices | dev_get <ordinal> | pid | sleep_ms <n> | exit
 *   alloc <bytes> | alloc_null <bytes> | pitch <width-bytes> <height> <element-bytes> | managed <bytes>
 *   async <bytes> | async_ptsz <bytes> | pool_create | pool_alloc <bytes> | pool_destroy | sync | trim
 *   vmm <bytes> | array <w> <h> | array3d <w> <h> <d> | mipmap <w> <h> <levels>
 *   host <bytes> | hostalloc <bytes> | ctx_create <ordinal> | ctx_destroy <id>
 *   free <id> | freeall | free_raw <pointer> | fill <bytes> | churn <bytes> (never replies again)
 *   threads <n> <iterations> <bytes> | launch <n> | gpa_init (cuInit through cuGetProcAddress_v2)
 *   nvml_init | nvml_count | nvml_info <index> | nvml_null <index>
 *   fork_alloc <bytes> | fork_release | exec <path> [args...] (replaces this process) */
#include "probe_common.h"

#include <pthread.h>
#include <sys/wait.h>

#define X_PTR(ret, name, params) static PFN_##name p_##name;
CU_FUNCS(X_PTR)
NVML_FUNCS(X_PTR)

static void *cuda_lib, *nvml_lib;

static void load_cuda(void) {
    cuda_lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(cuda_lib, "dlopen libcuda.so.1: %s", dlerror());
#define X_LOAD_CU(ret, name, params) p_##name = (PFN_##name)dlsym(cuda_lib, #name);
    CU_FUNCS(X_LOAD_CU)
}

static nvmlReturn_t load_nvml(void) {
    if (nvml_lib) return NVML_SUCCESS;
    nvml_lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nvml_lib) return NVML_ERROR_DRIVER_NOT_LOADED;
#define X_LOAD_NV(ret, name, params) p_##name = (PFN_##name)dlsym(nvml_lib, #name);
    NVML_FUNCS(X_LOAD_NV)
    return NVML_SUCCESS;
}

/* A missing entry point reads as CUDA_ERROR_NOT_FOUND instead of a crash. */
#define CALL(name, ...) (p_##name ? p_##name(__VA_ARGS__) : CUDA_ERROR_NOT_FOUND)

enum kind { K_NONE, K_DEVICE, K_ASYNC, K_VMM, K_ARRAY, K_MIPMAP, K_HOST, K_CTX };
struct object {
    enum kind kind;
    CUdeviceptr dptr;
    void *ptr;
    CUmemGenericAllocationHandle handle;
    CUarray array;
    CUmipmappedArray mipmap;
    CUcontext ctx;
};
#define MAX_OBJECTS 4096
static struct object objects[MAX_OBJECTS];
static CUstream stream;
static CUmemoryPool pool;
static CUcontext primary;

static int new_object(enum kind kind) {
    for (int i = 0; i < MAX_OBJECTS; i++)
        if (objects[i].kind == K_NONE) {
            memset(&objects[i], 0, sizeof objects[i]);
            objects[i].kind = kind;
            return i;
        }
    return -1;
}

static CUresult free_object(int id) {
    if (id < 0 || id >= MAX_OBJECTS || objects[id].kind == K_NONE) return CUDA_ERROR_INVALID_VALUE;
    struct object *o = &objects[id];
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    switch (o->kind) {
    case K_DEVICE: rc = CALL(cuMemFree_v2, o->dptr); break;
    case K_ASYNC:
        rc = CALL(cuMemFreeAsync, o->dptr, stream);
        if (rc == CUDA_SUCCESS) rc = CALL(cuStreamSynchronize, stream);
        break;
    case K_VMM: rc = CALL(cuMemRelease, o->handle); break;
    case K_ARRAY: rc = CALL(cuArrayDestroy, o->array); break;
    case K_MIPMAP: rc = CALL(cuMipmappedArrayDestroy, o->mipmap); break;
    case K_HOST: rc = CALL(cuMemFreeHost, o->ptr); break;
    case K_CTX: rc = CALL(cuCtxDestroy_v2, o->ctx); break;
    case K_NONE: break;
    }
    if (rc == CUDA_SUCCESS) o->kind = K_NONE;
    return rc;
}

static CUdevice current_device(void) {
    CUdevice d = 0;
    CALL(cuCtxGetDevice, &d);
    return d;
}

static void uuid_text(const CUuuid *u, char out[64]) {
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, 64, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
             b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static CUresult set_ctx(int ordinal) {
    CUdevice dev = 0;
    CUresult rc = CALL(cuDeviceGet, &dev, ordinal);
    if (rc) return rc;
    rc = CALL(cuDevicePrimaryCtxRetain, &primary, dev);
    if (rc) return rc;
    return CALL(cuCtxSetCurrent, primary);
}

/* ---- threads: every thread allocates and frees on the primary context ---- */
struct thread_job {
    int iterations;
    size_t bytes;
    int ok, oom, other;
};
static void *thread_body(void *arg) {
    struct thread_job *job = arg;
    CALL(cuCtxSetCurrent, primary);
    for (int i = 0; i < job->iterations; i++) {
        CUdeviceptr p = 0;
        CUresult rc = CALL(cuMemAlloc_v2, &p, job->bytes);
        if (rc == CUDA_SUCCESS) {
            job->ok++;
            if (CALL(cuMemFree_v2, p) != CUDA_SUCCESS) job->other++;
        } else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            job->oom++;
        } else {
            job->other++;
        }
    }
    return NULL;
}

/* ---- fork ---- */
static pid_t child_pid = -1;
static int child_release_fd = -1;

static void fork_alloc(size_t bytes) {
    int report[2], release[2];
    CHECK(pipe(report) == 0 && pipe(release) == 0, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(report[0]);
        close(release[1]);
        int codes[3];
        codes[0] = CALL(cuInit, 0);
        codes[1] = set_ctx(0);
        CUdeviceptr p = 0;
        codes[2] = CALL(cuMemAlloc_v2, &p, bytes);
        if (write(report[1], codes, sizeof codes) != sizeof codes) _exit(3);
        char c;
        while (read(release[0], &c, 1) > 0) {
        }
        /* Leave without freeing: the exit path must give the slot back. */
        exit(0);
    }
    close(report[1]);
    close(release[0]);
    int codes[3] = {-1, -1, -1};
    ssize_t n = read(report[0], codes, sizeof codes);
    close(report[0]);
    child_pid = pid;
    child_release_fd = release[1];
    printf("= code=%d child=%d init=%d ctx=%d alloc=%d\n", n == sizeof codes ? 0 : -1, (int)pid, codes[0], codes[1],
           codes[2]);
}

static void fork_release(void) {
    if (child_pid < 0) {
        printf("= code=-1 error=no-child\n");
        return;
    }
    close(child_release_fd);
    int status = 0;
    waitpid(child_pid, &status, 0);
    child_pid = -1;
    printf("= code=%d exited=%d signal=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFEXITED(status),
           WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static const char MODULE_IMAGE[] = "SIMGPU-MODULE 1\nkernel vgpu_probe_nop 0\n";

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    load_cuda();
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        char *argv[32];
        int argc = 0;
        for (char *tok = strtok(line, " \t\r\n"); tok && argc < 31; tok = strtok(NULL, " \t\r\n")) argv[argc++] = tok;
        argv[argc] = NULL;
        if (argc == 0) continue;
        const char *cmd = argv[0];
#define ARG(i) (argc > (i) ? strtoull(argv[i], NULL, 0) : 0ull)
        if (!strcmp(cmd, "exit")) {
            printf("= code=0\n");
            fflush(stdout);
            return 0;
        } else if (!strcmp(cmd, "pid")) {
            printf("= code=0 pid=%d\n", (int)getpid());
        } else if (!strcmp(cmd, "sleep_ms")) {
            usleep((useconds_t)ARG(1) * 1000);
            printf("= code=0\n");
        } else if (!strcmp(cmd, "init")) {
            printf("= code=%d\n", CALL(cuInit, 0));
        } else if (!strcmp(cmd, "ctx")) {
            printf("= code=%d\n", set_ctx((int)ARG(1)));
        } else if (!strcmp(cmd, "info")) {
            size_t f = 0, t = 0;
            CUresult rc = CALL(cuMemGetInfo_v2, &f, &t);
            printf("= code=%d free=%zu total=%zu used=%zu\n", rc, f, t, t - f);
        } else if (!strcmp(cmd, "info_null")) {
            size_t v = 0;
            const char *which = argc > 1 ? argv[1] : "both";
            CUresult rc = !strcmp(which, "free")    ? CALL(cuMemGetInfo_v2, NULL, &v)
                          : !strcmp(which, "total") ? CALL(cuMemGetInfo_v2, &v, NULL)
                                                    : CALL(cuMemGetInfo_v2, NULL, NULL);
            printf("= code=%d\n", rc);
        } else if (!strcmp(cmd, "totalmem")) {
            size_t t = 0;
            CUresult rc = CALL(cuDeviceTotalMem_v2, &t, (CUdevice)ARG(1));
            printf("= code=%d total=%zu\n", rc, t);
        } else if (!strcmp(cmd, "totalmem_null")) {
            printf("= code=%d\n", CALL(cuDeviceTotalMem_v2, NULL, (CUdevice)ARG(1)));
        } else if (!strcmp(cmd, "dev_get")) {
            CUdevice d = -1;
            CUresult rc = CALL(cuDeviceGet, &d, (int)strtol(argc > 1 ? argv[1] : "0", NULL, 0));
            printf("= code=%d device=%d\n", rc, d);
        } else if (!strcmp(cmd, "devices")) {
            int n = 0;
            CUresult rc = CALL(cuDeviceGetCount, &n);
            printf("= code=%d count=%d", rc, n);
            for (int i = 0; rc == CUDA_SUCCESS && i < n; i++) {
                CUdevice d = 0;
                CUuuid u;
                char text[64] = "?";
                size_t t = 0;
                if (CALL(cuDeviceGet, &d, i) == CUDA_SUCCESS && CALL(cuDeviceGetUuid, &u, d) == CUDA_SUCCESS)
                    uuid_text(&u, text);
                CUresult trc = CALL(cuDeviceTotalMem_v2, &t, d);
                printf(" uuid%d=%s total%d=%zu total_code%d=%d", i, text, i, t, i, trc);
            }
            printf("\n");
        } else if (!strcmp(cmd, "alloc")) {
            int id = new_object(K_DEVICE);
            CUresult rc = CALL(cuMemAlloc_v2, &objects[id].dptr, (size_t)ARG(1));
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d ptr=0x%llx\n", rc, rc ? -1 : id, rc ? 0ull : objects[id].dptr);
        } else if (!strcmp(cmd, "alloc_null")) {
            printf("= code=%d\n", CALL(cuMemAlloc_v2, NULL, (size_t)ARG(1)));
        } else if (!strcmp(cmd, "pitch")) {
            int id = new_object(K_DEVICE);
            size_t pitch = 0;
            CUresult rc = CALL(cuMemAllocPitch_v2, &objects[id].dptr, &pitch, (size_t)ARG(1), (size_t)ARG(2),
                               (unsigned)ARG(3));
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d pitch=%zu\n", rc, rc ? -1 : id, pitch);
        } else if (!strcmp(cmd, "managed")) {
            int id = new_object(K_DEVICE);
            CUresult rc = CALL(cuMemAllocManaged, &objects[id].dptr, (size_t)ARG(1), CU_MEM_ATTACH_GLOBAL);
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d\n", rc, rc ? -1 : id);
        } else if (!strcmp(cmd, "async") || !strcmp(cmd, "async_ptsz") || !strcmp(cmd, "pool_alloc")) {
            CUresult rc = CUDA_SUCCESS;
            if (!stream) rc = CALL(cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
            int id = new_object(K_ASYNC);
            if (rc == CUDA_SUCCESS) {
                if (!strcmp(cmd, "async"))
                    rc = CALL(cuMemAllocAsync, &objects[id].dptr, (size_t)ARG(1), stream);
                else if (!strcmp(cmd, "async_ptsz"))
                    rc = CALL(cuMemAllocAsync_ptsz, &objects[id].dptr, (size_t)ARG(1), stream);
                else
                    rc = CALL(cuMemAllocFromPoolAsync, &objects[id].dptr, (size_t)ARG(1), pool, stream);
            }
            if (rc == CUDA_SUCCESS) rc = CALL(cuStreamSynchronize, stream);
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d\n", rc, rc ? -1 : id);
        } else if (!strcmp(cmd, "pool_create")) {
            CUmemPoolProps props;
            memset(&props, 0, sizeof props);
            props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
            props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
            props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            props.location.id = current_device();
            printf("= code=%d\n", CALL(cuMemPoolCreate, &pool, &props));
        } else if (!strcmp(cmd, "pool_destroy")) {
            CUresult rc = CALL(cuMemPoolDestroy, pool);
            pool = NULL;
            printf("= code=%d\n", rc);
        } else if (!strcmp(cmd, "sync")) {
            printf("= code=%d\n", stream ? CALL(cuStreamSynchronize, stream) : CALL(cuCtxSynchronize));
        } else if (!strcmp(cmd, "trim")) {
            CUmemoryPool dflt = NULL;
            CUresult rc = CALL(cuDeviceGetDefaultMemPool, &dflt, current_device());
            if (rc == CUDA_SUCCESS) rc = CALL(cuMemPoolTrimTo, dflt, 0);
            if (rc == CUDA_SUCCESS && pool) rc = CALL(cuMemPoolTrimTo, pool, 0);
            printf("= code=%d\n", rc);
        } else if (!strcmp(cmd, "vmm")) {
            CUmemAllocationProp prop;
            memset(&prop, 0, sizeof prop);
            prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            prop.location.id = current_device();
            size_t gran = 0;
            CUresult rc = CALL(cuMemGetAllocationGranularity, &gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
            size_t bytes = (size_t)ARG(1);
            if (rc == CUDA_SUCCESS && gran) bytes = (bytes + gran - 1) / gran * gran;
            int id = new_object(K_VMM);
            if (rc == CUDA_SUCCESS) rc = CALL(cuMemCreate, &objects[id].handle, bytes, &prop, 0);
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d size=%zu granularity=%zu\n", rc, rc ? -1 : id, bytes, gran);
        } else if (!strcmp(cmd, "array") || !strcmp(cmd, "array3d") || !strcmp(cmd, "mipmap")) {
            int is_mip = !strcmp(cmd, "mipmap");
            int id = new_object(is_mip ? K_MIPMAP : K_ARRAY);
            CUresult rc;
            if (!strcmp(cmd, "array")) {
                CUDA_ARRAY_DESCRIPTOR d = {.Width = ARG(1), .Height = ARG(2), .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
                rc = CALL(cuArrayCreate_v2, &objects[id].array, &d);
            } else {
                CUDA_ARRAY3D_DESCRIPTOR d = {.Width = ARG(1), .Height = ARG(2), .Depth = is_mip ? 0 : ARG(3),
                                             .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4, .Flags = 0};
                rc = is_mip ? CALL(cuMipmappedArrayCreate, &objects[id].mipmap, &d, (unsigned)ARG(3))
                            : CALL(cuArray3DCreate_v2, &objects[id].array, &d);
            }
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d\n", rc, rc ? -1 : id);
        } else if (!strcmp(cmd, "host") || !strcmp(cmd, "hostalloc")) {
            int id = new_object(K_HOST);
            CUresult rc = !strcmp(cmd, "host") ? CALL(cuMemAllocHost_v2, &objects[id].ptr, (size_t)ARG(1))
                                               : CALL(cuMemHostAlloc, &objects[id].ptr, (size_t)ARG(1), 0);
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d\n", rc, rc ? -1 : id);
        } else if (!strcmp(cmd, "ctx_create")) {
            int id = new_object(K_CTX);
            CUdevice d = 0;
            CUresult rc = CALL(cuDeviceGet, &d, (int)ARG(1));
            if (rc == CUDA_SUCCESS) rc = CALL(cuCtxCreate_v2, &objects[id].ctx, 0, d);
            if (rc) objects[id].kind = K_NONE;
            printf("= code=%d id=%d\n", rc, rc ? -1 : id);
        } else if (!strcmp(cmd, "ctx_destroy") || !strcmp(cmd, "free")) {
            printf("= code=%d\n", free_object((int)ARG(1)));
        } else if (!strcmp(cmd, "freeall")) {
            CUresult first = CUDA_SUCCESS;
            int n = 0;
            for (int i = 0; i < MAX_OBJECTS; i++)
                if (objects[i].kind != K_NONE && objects[i].kind != K_CTX) {
                    CUresult rc = free_object(i);
                    if (rc && !first) first = rc;
                    n++;
                }
            printf("= code=%d freed=%d\n", first, n);
        } else if (!strcmp(cmd, "free_raw")) {
            printf("= code=%d\n", CALL(cuMemFree_v2, (CUdeviceptr)ARG(1)));
        } else if (!strcmp(cmd, "fill")) {
            int n = 0;
            CUresult rc;
            for (;;) {
                int id = new_object(K_DEVICE);
                if (id < 0) {
                    rc = -1;
                    break;
                }
                rc = CALL(cuMemAlloc_v2, &objects[id].dptr, (size_t)ARG(1));
                if (rc) {
                    objects[id].kind = K_NONE;
                    break;
                }
                n++;
            }
            printf("= code=%d n=%d\n", rc, n);
        } else if (!strcmp(cmd, "churn")) {
            printf("= code=0 churning=1\n");
            fflush(stdout);
            int last = -1;
            for (int i = MAX_OBJECTS - 1; i >= 0 && last < 0; i--)
                if (objects[i].kind == K_DEVICE) last = i;
            for (;;) {
                if (last >= 0) free_object(last);
                last = new_object(K_DEVICE);
                if (CALL(cuMemAlloc_v2, &objects[last].dptr, (size_t)ARG(1)) != CUDA_SUCCESS) {
                    objects[last].kind = K_NONE;
                    last = -1;
                }
            }
        } else if (!strcmp(cmd, "threads")) {
            int n = (int)ARG(1);
            if (n < 1 || n > 64) n = 4;
            pthread_t tids[64];
            struct thread_job jobs[64];
            for (int i = 0; i < n; i++) {
                jobs[i] = (struct thread_job){.iterations = (int)ARG(2), .bytes = (size_t)ARG(3)};
                pthread_create(&tids[i], NULL, thread_body, &jobs[i]);
            }
            int ok = 0, oom = 0, other = 0;
            for (int i = 0; i < n; i++) {
                pthread_join(tids[i], NULL);
                ok += jobs[i].ok;
                oom += jobs[i].oom;
                other += jobs[i].other;
            }
            printf("= code=%d ok=%d oom=%d other=%d\n", other ? -1 : 0, ok, oom, other);
        } else if (!strcmp(cmd, "launch")) {
            CUmodule mod = NULL;
            CUfunction fn = NULL;
            CUresult rc = CALL(cuModuleLoadData, &mod, MODULE_IMAGE);
            if (rc == CUDA_SUCCESS) rc = CALL(cuModuleGetFunction, &fn, mod, "vgpu_probe_nop");
            for (unsigned long long i = 0; rc == CUDA_SUCCESS && i < ARG(1); i++)
                rc = CALL(cuLaunchKernel, fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
            if (rc == CUDA_SUCCESS) rc = CALL(cuCtxSynchronize);
            printf("= code=%d\n", rc);
        } else if (!strcmp(cmd, "gpa_init")) {
            /* The cuGetProcAddress door, as cuda-bindings and libcudart use it. */
            void *fn = NULL;
            int status = -1;
            CUresult rc = CALL(cuGetProcAddress_v2, "cuInit", &fn, 12000, 0, &status);
            CUresult init = fn ? ((PFN_cuInit)fn)(0) : -1;
            printf("= code=%d status=%d init=%d\n", rc, status, init);
        } else if (!strcmp(cmd, "nvml_init")) {
            nvmlReturn_t rc = load_nvml();
            if (rc == NVML_SUCCESS) rc = CALL(nvmlInit_v2);
            printf("= code=%d\n", rc);
        } else if (!strcmp(cmd, "nvml_count")) {
            unsigned n = 0;
            nvmlReturn_t rc = CALL(nvmlDeviceGetCount_v2, &n);
            printf("= code=%d count=%u\n", rc, n);
        } else if (!strcmp(cmd, "nvml_info") || !strcmp(cmd, "nvml_null")) {
            nvmlDevice_t dev = NULL;
            nvmlReturn_t rc = CALL(nvmlDeviceGetHandleByIndex_v2, (unsigned)ARG(1), &dev);
            if (rc != NVML_SUCCESS) {
                printf("= code=%d\n", rc);
            } else if (!strcmp(cmd, "nvml_null")) {
                nvmlReturn_t rc1 = CALL(nvmlDeviceGetMemoryInfo, dev, NULL);
                nvmlReturn_t rc2 = CALL(nvmlDeviceGetMemoryInfo_v2, dev, NULL);
                printf("= code=0 v1=%d v2=%d\n", rc1, rc2);
            } else {
                char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE] = "";
                nvmlReturn_t urc = CALL(nvmlDeviceGetUUID, dev, uuid, sizeof uuid);
                nvmlMemory_t m1;
                memset(&m1, 0, sizeof m1);
                nvmlMemory_v2_t m2;
                memset(&m2, 0, sizeof m2);
                m2.version = nvmlMemory_v2;
                nvmlReturn_t rc1 = CALL(nvmlDeviceGetMemoryInfo, dev, &m1);
                nvmlReturn_t rc2 = CALL(nvmlDeviceGetMemoryInfo_v2, dev, &m2);
                printf("= code=%d uuid=%s uuid_code=%d total=%llu free=%llu used=%llu code2=%d total2=%llu "
                       "reserved2=%llu free2=%llu used2=%llu\n",
                       rc1, uuid[0] ? uuid : "?", urc, m1.total, m1.free, m1.used, rc2, m2.total, m2.reserved, m2.free,
                       m2.used);
            }
        } else if (!strcmp(cmd, "fork_alloc")) {
            fork_alloc((size_t)ARG(1));
        } else if (!strcmp(cmd, "fork_release")) {
            fork_release();
        } else if (!strcmp(cmd, "exec")) {
            CHECK(argc >= 2, "exec needs a path");
            fflush(stdout);
            execv(argv[1], &argv[1]);
            printf("= code=-1 error=exec-failed errno=%d\n", errno);
        } else {
            printf("= code=-1 error=unknown-command\n");
        }
        fflush(stdout);
    }
    return 0;
}
