/* Call recording and the error-string entry points of the fake libcuda. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

static atomic_ulong g_counts[FAKE_SYM_COUNT];
static const char *const g_names[FAKE_SYM_COUNT] = {
#define FAKE_EXPORT(sym, base, api, intro, pt) [FAKE_SYM_##sym] = #sym,
#include "fake_symbols.inc"
#undef FAKE_EXPORT
};
static pthread_once_t g_trace_once = PTHREAD_ONCE_INIT;
static int g_trace_fd = -1;

static void trace_open(void)
{
    const char *path = getenv("FAKE_CUDA_TRACE");
    if (path && *path)
        g_trace_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

void fake_call_hit(enum fake_sym sym)
{
    atomic_fetch_add_explicit(&g_counts[sym], 1, memory_order_relaxed);
    pthread_once(&g_trace_once, trace_open);
    if (g_trace_fd < 0)
        return;
    /* One write per line keeps lines whole when threads or processes share the file. */
    char line[128];
    size_t n = strlen(g_names[sym]);
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    memcpy(line, g_names[sym], n);
    line[n++] = '\n';
    ssize_t w = write(g_trace_fd, line, n);
    (void)w;
}

static _Thread_local int g_driver_depth;

int fake_scope_enter(enum fake_sym sym)
{
    g_driver_depth++;
    fake_call_hit(sym);
    return 0;
}

void fake_scope_leave(int *scope)
{
    (void)scope;
    g_driver_depth--;
}

/* Async-signal-safe: a seccomp SIGSYS handler asks it whose system call it caught. */
API int fakeCudaInDriver(void)
{
    return g_driver_depth;
}

static unsigned long g_fail_every[FAKE_SYM_COUNT];
static pthread_once_t g_fail_once = PTHREAD_ONCE_INIT;

static void fail_parse(void)
{
    const char *v = getenv("FAKE_CUDA_FAIL");
    while (v && *v) {
        const char *colon = strchr(v, ':'), *comma = strchr(v, ',');
        if (!colon || (comma && comma < colon))
            break;
        unsigned long every = strtoul(colon + 1, NULL, 10);
        for (int i = 0; i < FAKE_SYM_COUNT; i++)
            if (strlen(g_names[i]) == (size_t)(colon - v) && strncmp(g_names[i], v, (size_t)(colon - v)) == 0)
                g_fail_every[i] = every;
        v = comma ? comma + 1 : NULL;
    }
}

int fake_call_fails(enum fake_sym sym)
{
    pthread_once(&g_fail_once, fail_parse);
    unsigned long every = g_fail_every[sym];
    return every > 0 && atomic_load_explicit(&g_counts[sym], memory_order_relaxed) % every == 0;
}

API unsigned long fakeCudaCallCount(const char *exportedName)
{
    for (int i = 0; exportedName && i < FAKE_SYM_COUNT; i++)
        if (strcmp(g_names[i], exportedName) == 0)
            return atomic_load_explicit(&g_counts[i], memory_order_relaxed);
    return 0;
}

static const struct {
    CUresult code;
    const char *name;
    const char *text;
} g_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation is not permitted in the current state"},
    {CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE",
     "the graph update was not performed because it included changes which violated constraints"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static int error_index(CUresult code)
{
    for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++)
        if (g_errors[i].code == code)
            return (int)i;
    return -1;
}

CUresult cuGetErrorString(CUresult error, const char **pStr)
{
    FAKE_ENTER(cuGetErrorString);
    int i = error_index(error);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    *pStr = i < 0 ? NULL : g_errors[i].text;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **pStr)
{
    FAKE_ENTER(cuGetErrorName);
    int i = error_index(error);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    *pStr = i < 0 ? NULL : g_errors[i].name;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

/* The CUDA runtime asks for private tables whose layout only NVIDIA knows;
 * answering "not supported" makes it fail cleanly instead of crashing. */
CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId)
{
    FAKE_ENTER(cuGetExportTable);
    (void)pExportTableId;
    if (ppExportTable)
        *ppExportTable = NULL;
    return CUDA_ERROR_NOT_SUPPORTED;
}
