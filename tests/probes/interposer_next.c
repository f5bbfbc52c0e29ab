/* A second preloaded interposer, as a profiler or allocator would be: it defines cuMemAlloc_v2 and
 * cuMemGetInfo_v2 itself and looks up "the next one" with dlsym(RTLD_NEXT). Built by the test with
 * -shared -fPIC. RTLD_NEXT means "next after the calling object", so what it gets depends only on the
 * load order, never on whether libvgpu (which overrides dlsym) sits before or after it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef int (*alloc_fn)(unsigned long long *, size_t);
typedef int (*info_fn)(size_t *, size_t *);

/* What dlsym(RTLD_NEXT, name) answers when this library asks. */
void *interposer_next(const char *name) { return dlsym(RTLD_NEXT, name); }

/* A wrong RTLD_NEXT answer that points back here would recurse for ever: answer 990 instead, so the
 * test sees a code rather than a stack overflow. 999: no next definition at all. */
int cuMemAlloc_v2(unsigned long long *dptr, size_t bytes) {
    alloc_fn next = (alloc_fn)dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    if (next == cuMemAlloc_v2) return 990;
    return next ? next(dptr, bytes) : 999;
}

int cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    info_fn next = (info_fn)dlsym(RTLD_NEXT, "cuMemGetInfo_v2");
    if (next == cuMemGetInfo_v2) return 990;
    return next ? next(free_bytes, total_bytes) : 999;
}
