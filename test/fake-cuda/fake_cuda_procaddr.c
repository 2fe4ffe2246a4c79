/* cuGetProcAddress: version-aware lookup driven by the generated table.
 *
 * For a base name and a requested CUDA version the driver returns the newest
 * ABI introduced at or before that version, and its per-thread-stream variant
 * when the caller asks for per-thread semantics and one exists. The pointers
 * are taken inside this library (linked -Bsymbolic-functions), so like the real
 * driver they bypass any LD_PRELOAD interposer of the same names. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <string.h>

typedef struct {
    const char *base;
    int api;   /* CUDA version of the plain ABI this entry belongs to */
    int intro; /* CUDA version that introduced this entry point */
    int per_thread;
    void *fn; /* NULL: an ABI the fake does not export */
} proc_entry_t;

static const proc_entry_t g_table[] = {
#define FAKE_EXPORT(sym, base, api, intro, pt) {base, api, intro, pt, (void *)&sym},
#define FAKE_ABSENT(name, base, api, intro, pt) {base, api, intro, pt, NULL},
#include "fake_symbols.inc"
#undef FAKE_EXPORT
#undef FAKE_ABSENT
};

static const struct {
    const char *base;
    int from;
    const char *target;
} g_aliases[] = {
#define FAKE_EXPORT(sym, base, api, intro, pt)
#define FAKE_ALIAS(base, from, target) {base, from, target},
#include "fake_symbols.inc"
#undef FAKE_EXPORT
#undef FAKE_ALIAS
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static CUresult lookup(const char *symbol, void **pfn, int version, cuuint64_t flags,
                       CUdriverProcAddressQueryResult *status)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void *fn = NULL;
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < COUNT(g_aliases); i++)
        if (strcmp(symbol, g_aliases[i].base) == 0 && version >= g_aliases[i].from)
            symbol = g_aliases[i].target;

    const proc_entry_t *best = NULL;
    int known = 0;
    for (size_t i = 0; i < COUNT(g_table); i++) {
        const proc_entry_t *e = &g_table[i];
        if (strcmp(e->base, symbol) != 0)
            continue;
        known = 1;
        if (!e->per_thread && e->api <= version && (!best || e->api > best->api))
            best = e;
    }
    if (best && (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)) {
        for (size_t i = 0; i < COUNT(g_table); i++) {
            const proc_entry_t *e = &g_table[i];
            if (e->per_thread && e->fn && e->api == best->api && e->intro <= version &&
                strcmp(e->base, symbol) == 0)
                best = e;
        }
    }
    if (best && best->fn) {
        fn = best->fn;
        st = CU_GET_PROC_ADDRESS_SUCCESS;
    } else if (known && !best) {
        st = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    }
    *pfn = fn;
    if (status)
        *status = st;
    return fn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    FAKE_ENTER(cuGetProcAddress);
    return lookup(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    FAKE_ENTER(cuGetProcAddress_v2);
    return lookup(symbol, pfn, cudaVersion, flags, symbolStatus);
}
