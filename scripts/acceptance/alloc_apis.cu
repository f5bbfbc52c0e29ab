// alloc_apis: case 4 of scripts/gpu-acceptance.sh when CuPy is not installed but nvcc is.
//
// Allocates through three doors and reports, for each, how much the process's own cudaMemGetInfo says
// its usage grew (usage = total - free), whether the memory is usable, what an allocation of more than
// is free returns (limited runs), and what is left after freeing:
//   sync   cudaMalloc / cudaFree                       (libcudart -> cuMemAlloc_v2 via cuGetProcAddress)
//   async  cudaMallocAsync / cudaFreeAsync             (-> cuMemAllocAsync, the device's default pool)
//   vmm    cuMemCreate + cuMemAddressReserve + cuMemMap + cuMemSetAccess (driver API, found with dlsym)
//
// Built by run.py: nvcc -O2 -o alloc_apis alloc_apis.cu -ldl (static libcudart; no -lcuda needed).
// Usage: alloc_apis SIZE_BYTES [--limited]. Prints one line "RESULT {json}", the same shape as
// `cases.py alloc-apis`.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

static decltype(&cuMemGetAllocationGranularity) p_granularity;
static decltype(&cuMemCreate) p_create;
static decltype(&cuMemRelease) p_release;
static decltype(&cuMemAddressReserve) p_reserve;
static decltype(&cuMemAddressFree) p_address_free;
static decltype(&cuMemMap) p_map;
static decltype(&cuMemUnmap) p_unmap;
static decltype(&cuMemSetAccess) p_set_access;

static std::string fatal_json(const std::string &msg) { return "{\"backend\": \"nvcc\", \"fatal\": \"" + msg + "\"}"; }

static bool load_vmm(std::string &err) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        err = "dlopen libcuda.so.1 failed";
        return false;
    }
#define LOAD(var, name)                                                                                                \
    do {                                                                                                               \
        var = reinterpret_cast<decltype(var)>(dlsym(h, name));                                                         \
        if (!var) {                                                                                                    \
            err = std::string("libcuda.so.1 has no ") + name;                                                          \
            return false;                                                                                              \
        }                                                                                                              \
    } while (0)
    LOAD(p_granularity, "cuMemGetAllocationGranularity");
    LOAD(p_create, "cuMemCreate");
    LOAD(p_release, "cuMemRelease");
    LOAD(p_reserve, "cuMemAddressReserve");
    LOAD(p_address_free, "cuMemAddressFree");
    LOAD(p_map, "cuMemMap");
    LOAD(p_unmap, "cuMemUnmap");
    LOAD(p_set_access, "cuMemSetAccess");
#undef LOAD
    return true;
}

static int device;

static void usage_now(size_t &free_b, size_t &total_b) {
    free_b = total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
}

// Write one byte pattern and read back both ends: the memory is really there.
static std::string touch(void *p, size_t n) {
    if (cudaMemset(p, 0x5A, n) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
        return "cudaMemset failed";
    unsigned char b = 0;
    size_t offs[2] = {0, n - 1};
    for (size_t off : offs) {
        if (cudaMemcpy(&b, static_cast<char *>(p) + off, 1, cudaMemcpyDeviceToHost) != cudaSuccess)
            return "cudaMemcpy failed";
        if (b != 0x5A)
            return "read back a wrong byte";
    }
    return "";
}

struct Held {
    void *ptr = nullptr;
    CUmemGenericAllocationHandle handle = 0;
    size_t size = 0;
};

// alloc(n, held) -> error code (0 = success); release(held); over(n) -> error code (frees on success).
static std::string door(size_t size, bool limited, std::function<int(size_t, Held &)> alloc,
                        std::function<void(Held &)> release, std::function<int(size_t)> over) {
    char buf[512];
    size_t f0, t0, f1, t1, f2, t2;
    usage_now(f0, t0);
    Held held;
    int rc = alloc(size, held);
    if (rc != 0) {
        snprintf(buf, sizeof buf, "{\"size\": %zu, \"rc\": %d, \"error\": \"allocation of %zu bytes returned %d\"}", size,
                 rc, size, rc);
        return buf;
    }
    usage_now(f1, t1);
    std::string touch_err = touch(held.ptr, size);
    std::string over_part;
    if (limited) {
        size_t want = f1 + size;
        int orc = over(want);
        snprintf(buf, sizeof buf, ", \"over_size\": %zu, \"over_rc\": %d", want, orc);
        over_part = buf;
    }
    release(held);
    cudaDeviceSynchronize();
    usage_now(f2, t2);
    snprintf(buf, sizeof buf, "{\"size\": %zu, \"rc\": 0, \"delta_alloc\": %lld, \"delta_after_free\": %lld, \"touched\": %s",
             size, static_cast<long long>(f0) - static_cast<long long>(f1),
             static_cast<long long>(f0) - static_cast<long long>(f2), touch_err.empty() ? "true" : "false");
    std::string out = buf;
    if (!touch_err.empty())
        out += ", \"touch_error\": \"" + touch_err + "\"";
    return out + over_part + "}";
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: alloc_apis SIZE_BYTES [--limited]\n");
        return 2;
    }
    size_t size = strtoull(argv[1], nullptr, 10);
    bool limited = argc > 2 && strcmp(argv[2], "--limited") == 0;
    std::string err;
    if (!load_vmm(err)) {
        printf("RESULT %s\n", fatal_json(err).c_str());
        return 1;
    }
    cudaError_t e = cudaSetDevice(0);
    if (e == cudaSuccess)
        e = cudaFree(nullptr); // create the context before the first measurement
    if (e != cudaSuccess) {
        printf("RESULT %s\n", fatal_json(std::string("CUDA runtime init: ") + cudaGetErrorName(e)).c_str());
        return 1;
    }
    device = 0;
    size_t free0, total;
    usage_now(free0, total);
    int runtime_version = 0;
    cudaRuntimeGetVersion(&runtime_version);

    std::string sync = door(
        size, limited,
        [](size_t n, Held &h) {
            h.size = n;
            return static_cast<int>(cudaMalloc(&h.ptr, n));
        },
        [](Held &h) { cudaFree(h.ptr); },
        [](size_t n) {
            void *p = nullptr;
            int rc = static_cast<int>(cudaMalloc(&p, n));
            if (rc == 0)
                cudaFree(p);
            cudaGetLastError(); // clear the sticky-free error state of the runtime for the next call
            return rc;
        });
    std::string async = door(
        size, limited,
        [](size_t n, Held &h) {
            h.size = n;
            int rc = static_cast<int>(cudaMallocAsync(&h.ptr, n, 0));
            if (rc == 0)
                cudaStreamSynchronize(0);
            return rc;
        },
        [](Held &h) {
            cudaFreeAsync(h.ptr, 0);
            cudaStreamSynchronize(0);
        },
        [](size_t n) {
            void *p = nullptr;
            int rc = static_cast<int>(cudaMallocAsync(&p, n, 0));
            if (rc == 0) {
                cudaFreeAsync(p, 0);
                cudaStreamSynchronize(0);
            }
            cudaGetLastError();
            return rc;
        });

    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    size_t gran = 0;
    std::string vmm;
    CUresult grc = p_granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (grc != CUDA_SUCCESS || gran == 0) {
        vmm = "{\"error\": \"cuMemGetAllocationGranularity returned " + std::to_string(static_cast<int>(grc)) + "\"}";
    } else {
        size_t vsize = (size + gran - 1) / gran * gran;
        vmm = door(
            vsize, limited,
            [&prop](size_t n, Held &h) {
                CUresult rc = p_create(&h.handle, n, &prop, 0);
                if (rc != CUDA_SUCCESS)
                    return static_cast<int>(rc);
                CUdeviceptr va = 0;
                rc = p_reserve(&va, n, 0, 0, 0);
                if (rc == CUDA_SUCCESS)
                    rc = p_map(va, n, 0, h.handle, 0);
                CUmemAccessDesc desc;
                memset(&desc, 0, sizeof desc);
                desc.location = prop.location;
                desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
                if (rc == CUDA_SUCCESS)
                    rc = p_set_access(va, n, &desc, 1);
                h.ptr = reinterpret_cast<void *>(va);
                h.size = n;
                return static_cast<int>(rc);
            },
            [](Held &h) {
                CUdeviceptr va = reinterpret_cast<CUdeviceptr>(h.ptr);
                p_unmap(va, h.size);
                p_address_free(va, h.size);
                p_release(h.handle);
            },
            [&prop, gran](size_t n) {
                CUmemGenericAllocationHandle handle = 0;
                CUresult rc = p_create(&handle, (n + gran - 1) / gran * gran, &prop, 0);
                if (rc == CUDA_SUCCESS)
                    p_release(handle);
                return static_cast<int>(rc);
            });
        // Append the granularity inside the vmm object.
        vmm.insert(vmm.size() - 1, ", \"granularity\": " + std::to_string(gran));
    }
    printf("RESULT {\"backend\": \"nvcc\", \"version\": %d, \"size\": %zu, \"total\": %zu, \"free_start\": %zu, "
           "\"apis\": {\"sync\": %s, \"async\": %s, \"vmm\": %s}}\n",
           runtime_version, size, total, free0, sync.c_str(), async.c_str(), vmm.c_str());
    return 0;
}
