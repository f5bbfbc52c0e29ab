/* A second interposer that overrides dlsym itself (as tracing tools do) and finds the next dlsym with
 * dlvsym(RTLD_NEXT, ...). When it is preloaded before libvgpu, lookups pass through it and then
 * libvgpu's dlsym, which must still hand out its hooks. Built with -shared -fPIC. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef void *(*dlsym_fn)(void *, const char *);
static unsigned long calls;

unsigned long interposer_dlsym_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }

void *dlsym(void *handle, const char *name) {
    static dlsym_fn next;
    if (!next) {
        next = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (!next) next = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    }
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    /* RTLD_NEXT would be resolved relative to this library; this tool does not forward it. */
    return next ? next(handle, name) : NULL;
}
