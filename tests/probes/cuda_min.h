/* The few CUDA driver and NVML declarations the probes use, written from NVIDIA's public headers
 * (cuda.h / cudaTypedefs.h of CUDA 12.9, nvml.h). No toolkit needed. Layouts match the generated
 * bindings in abi/src/generated/ (x86-64 / aarch64 LP64).
 *
 * Every function is listed once in CU_FUNCS / NVML_FUNCS; each list expands to prototypes (for the
 * probes linked against libcuda.so.1) and to PFN_<name> pointer types (for the dlsym and
 * cuGetProcAddress doors). */
#ifndef VGPU_CUDA_MIN_H
#define VGPU_CUDA_MIN_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned int CUdeviceptr_v1; /* the 2000 ABI: 32-bit device pointers and sizes */
typedef unsigned long long cuuint64_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUarray_st *CUarray;
typedef struct CUmipmappedArray_st *CUmipmappedArray;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct { char bytes[16]; } CUuuid;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_PERMITTED = 800,
};

/* CUdriverProcAddressQueryResult */
enum { CU_GET_PROC_ADDRESS_SUCCESS = 0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
       CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2 };
/* cuGetProcAddress flags */
enum { CU_GET_PROC_ADDRESS_DEFAULT = 0, CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1,
       CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 2 };

enum { CU_MEM_ATTACH_GLOBAL = 1 };
enum { CU_AD_FORMAT_UNSIGNED_INT8 = 0x01, CU_AD_FORMAT_FLOAT = 0x20 };
enum { CU_MEM_ALLOCATION_TYPE_PINNED = 1 };
enum { CU_MEM_HANDLE_TYPE_NONE = 0 };
enum { CU_MEM_LOCATION_TYPE_DEVICE = 1 };
enum { CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0 };
enum { CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4 };
enum { CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED = 115 };
enum { CU_STREAM_NON_BLOCKING = 1 };

typedef struct {
    size_t Width;
    size_t Height;
    int Format; /* CUarray_format */
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct {
    size_t Width;
    size_t Height;
    size_t Depth;
    int Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

typedef struct {
    int type; /* CUmemLocationType */
    int id;
} CUmemLocation;

typedef struct {
    int type;                 /* CUmemAllocationType */
    int requestedHandleTypes; /* CUmemAllocationHandleType */
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct {
    int allocType;
    int handleTypes;
    CUmemLocation location;
    void *win32SecurityAttributes;
    size_t maxSize;
    unsigned short usage;
    unsigned char reserved[54];
} CUmemPoolProps;

#define CU_FUNCS(X) \
    X(CUresult, cuInit, (unsigned int flags)) \
    X(CUresult, cuDriverGetVersion, (int *version)) \
    X(CUresult, cuGetErrorName, (CUresult error, const char **name)) \
    X(CUresult, cuDeviceGet, (CUdevice *dev, int ordinal)) \
    X(CUresult, cuDeviceGetCount, (int *count)) \
    X(CUresult, cuDeviceGetName, (char *name, int len, CUdevice dev)) \
    X(CUresult, cuDeviceGetUuid, (CUuuid *uuid, CUdevice dev)) \
    X(CUresult, cuDeviceGetAttribute, (int *value, int attrib, CUdevice dev)) \
    X(CUresult, cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev)) \
    X(CUresult, cuDevicePrimaryCtxRetain, (CUcontext *ctx, CUdevice dev)) \
    X(CUresult, cuDevicePrimaryCtxRelease_v2, (CUdevice dev)) \
    X(CUresult, cuCtxSetCurrent, (CUcontext ctx)) \
    X(CUresult, cuCtxGetCurrent, (CUcontext *ctx)) \
    X(CUresult, cuCtxGetDevice, (CUdevice *dev)) \
    X(CUresult, cuCtxCreate_v2, (CUcontext *ctx, unsigned int flags, CUdevice dev)) \
    X(CUresult, cuCtxDestroy_v2, (CUcontext ctx)) \
    X(CUresult, cuCtxSynchronize, (void)) \
    X(CUresult, cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes)) \
    X(CUresult, cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytes)) \
    X(CUresult, cuMemFree_v2, (CUdeviceptr dptr)) \
    X(CUresult, cuMemAllocPitch_v2, (CUdeviceptr *dptr, size_t *pitch, size_t width_bytes, size_t height, unsigned int element_bytes)) \
    X(CUresult, cuMemAllocManaged, (CUdeviceptr *dptr, size_t bytes, unsigned int flags)) \
    X(CUresult, cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytes, CUstream stream)) \
    X(CUresult, cuMemAllocAsync_ptsz, (CUdeviceptr *dptr, size_t bytes, CUstream stream)) \
    X(CUresult, cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream)) \
    X(CUresult, cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream stream)) \
    X(CUresult, cuMemAllocFromPoolAsync, (CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream stream)) \
    X(CUresult, cuMemPoolCreate, (CUmemoryPool *pool, const CUmemPoolProps *props)) \
    X(CUresult, cuMemPoolDestroy, (CUmemoryPool pool)) \
    X(CUresult, cuMemPoolTrimTo, (CUmemoryPool pool, size_t min_bytes_to_keep)) \
    X(CUresult, cuDeviceGetDefaultMemPool, (CUmemoryPool *pool, CUdevice dev)) \
    X(CUresult, cuMemCreate, (CUmemGenericAllocationHandle *handle, size_t bytes, const CUmemAllocationProp *prop, unsigned long long flags)) \
    X(CUresult, cuMemRelease, (CUmemGenericAllocationHandle handle)) \
    X(CUresult, cuMemGetAllocationGranularity, (size_t *granularity, const CUmemAllocationProp *prop, int option)) \
    X(CUresult, cuArrayCreate_v2, (CUarray *array, const CUDA_ARRAY_DESCRIPTOR *desc)) \
    X(CUresult, cuArray3DCreate_v2, (CUarray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc)) \
    X(CUresult, cuArrayDestroy, (CUarray array)) \
    X(CUresult, cuMipmappedArrayCreate, (CUmipmappedArray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned int levels)) \
    X(CUresult, cuMipmappedArrayDestroy, (CUmipmappedArray array)) \
    X(CUresult, cuMemAllocHost_v2, (void **host_ptr, size_t bytes)) \
    X(CUresult, cuMemHostAlloc, (void **host_ptr, size_t bytes, unsigned int flags)) \
    X(CUresult, cuMemFreeHost, (void *host_ptr)) \
    X(CUresult, cuStreamCreate, (CUstream *stream, unsigned int flags)) \
    X(CUresult, cuStreamSynchronize, (CUstream stream)) \
    X(CUresult, cuStreamDestroy_v2, (CUstream stream)) \
    X(CUresult, cuModuleLoadData, (CUmodule *module, const void *image)) \
    X(CUresult, cuModuleLoad, (CUmodule *module, const char *path)) \
    X(CUresult, cuModuleGetFunction, (CUfunction *fn, CUmodule module, const char *name)) \
    X(CUresult, cuLaunchKernel, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream stream, void **params, void **extra)) \
    X(CUresult, cuLaunchKernel_ptsz, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream stream, void **params, void **extra)) \
    X(CUresult, cuGetExportTable, (const void **table, const CUuuid *id)) \
    X(CUresult, cuGetProcAddress, (const char *symbol, void **pfn, int cuda_version, cuuint64_t flags)) \
    X(CUresult, cuGetProcAddress_v2, (const char *symbol, void **pfn, int cuda_version, cuuint64_t flags, int *symbol_status))

/* The 2000 ABIs (32-bit sizes), reached through cuGetProcAddress at version 2000 or dlsym of the
 * plain name. */
#define CU_V1_FUNCS(X) \
    X(CUresult, cuMemGetInfo, (unsigned int *free_bytes, unsigned int *total_bytes)) \
    X(CUresult, cuMemAlloc, (CUdeviceptr_v1 *dptr, unsigned int bytes)) \
    X(CUresult, cuMemFree, (CUdeviceptr_v1 dptr))

/* NVML */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
};
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
/* NVML_STRUCT_VERSION(Memory, 2) */
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96

#define NVML_FUNCS(X) \
    X(nvmlReturn_t, nvmlInit_v2, (void)) \
    X(nvmlReturn_t, nvmlShutdown, (void)) \
    X(nvmlReturn_t, nvmlDeviceGetCount_v2, (unsigned int *count)) \
    X(nvmlReturn_t, nvmlDeviceGetHandleByIndex_v2, (unsigned int index, nvmlDevice_t *device)) \
    X(nvmlReturn_t, nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int length)) \
    X(nvmlReturn_t, nvmlDeviceGetName, (nvmlDevice_t device, char *name, unsigned int length)) \
    X(nvmlReturn_t, nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory)) \
    X(nvmlReturn_t, nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t device, nvmlMemory_v2_t *memory))

#define VGPU_DECLARE_PFN(ret, name, params) typedef ret(*PFN_##name) params;
CU_FUNCS(VGPU_DECLARE_PFN)
CU_V1_FUNCS(VGPU_DECLARE_PFN)
NVML_FUNCS(VGPU_DECLARE_PFN)

#ifdef VGPU_LINK_DRIVER
/* Only for probes linked with -l:libcuda.so.1 (and -l:libnvidia-ml.so.1 with VGPU_LINK_NVML).
 * Define VGPU_PROTO_ATTR as __attribute__((weak)) to link even where the driver lacks a symbol. */
#ifndef VGPU_PROTO_ATTR
#define VGPU_PROTO_ATTR
#endif
#define VGPU_DECLARE_PROTO(ret, name, params) VGPU_PROTO_ATTR ret name params;
CU_FUNCS(VGPU_DECLARE_PROTO)
#ifdef VGPU_LINK_NVML
NVML_FUNCS(VGPU_DECLARE_PROTO)
#endif
#endif

#endif
