/* Primary and explicit contexts, and the per-thread current-context stack. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>

#define CTX_MAGIC 0xC7C7C7C7u
#define CTX_STACK_DEPTH 64

typedef struct {
    CUcontext ctx;
    int refs;
    unsigned flags;
} fake_primary_t;

static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_primary_t g_primary[FAKE_MAX_DEVICES];
static _Thread_local CUcontext t_stack[CTX_STACK_DEPTH];
static _Thread_local int t_depth;

int fake_ctx_valid(CUcontext ctx) { return ctx && ctx->magic == CTX_MAGIC; }

CUcontext fake_ctx_current(void) { return t_depth ? t_stack[t_depth - 1] : NULL; }

CUresult fake_ctx_require(CUcontext *out)
{
    FAKE_REQUIRE_INIT();
    CUcontext c = fake_ctx_current();
    if (!fake_ctx_valid(c))
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = c;
    return CUDA_SUCCESS;
}

static CUcontext ctx_new(int dev, unsigned flags, int primary)
{
    CUcontext c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->magic = CTX_MAGIC;
    c->device = dev;
    c->flags = flags;
    c->primary = primary;
    c->default_stream = fake_stream_new(c, 0, 0);
    fake_rm_ctx_create(c);
    return c;
}

static void ctx_free(CUcontext c)
{
    fake_ctx_streams_teardown(c);
    fake_rm_ctx_destroy(c);
    fake_mem_drop_ctx(c);
    c->magic = 0;
    free(c);
}

/* A destroyed context must not stay current on this thread. Other threads keep
 * a dangling pointer, which the real driver also leaves them with. */
static void forget_current(CUcontext c)
{
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] == c)
            t_stack[i] = NULL;
}

static CUresult ctx_create(CUcontext *pctx, unsigned flags, CUdevice dev)
{
    FAKE_REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (t_depth == CTX_STACK_DEPTH)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = ctx_new(dev, flags, 0);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    t_stack[t_depth++] = c; /* the new context becomes current, as in the driver */
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    FAKE_ENTER(cuCtxCreate);
    return ctx_create(pctx, flags, dev);
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    FAKE_ENTER(cuCtxCreate_v2);
    return ctx_create(pctx, flags, dev);
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams, unsigned int flags,
                        CUdevice dev)
{
    FAKE_ENTER(cuCtxCreate_v3);
    (void)paramsArray, (void)numParams;
    return ctx_create(pctx, flags, dev);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev)
{
    FAKE_ENTER(cuCtxCreate_v4);
    (void)ctxCreateParams;
    return ctx_create(pctx, flags, dev);
}

static CUresult ctx_destroy(CUcontext ctx)
{
    FAKE_REQUIRE_INIT();
    if (!fake_ctx_valid(ctx) || ctx->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    forget_current(ctx);
    while (t_depth && !t_stack[t_depth - 1])
        t_depth--;
    ctx_free(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxDestroy(CUcontext ctx)
{
    FAKE_ENTER(cuCtxDestroy);
    return ctx_destroy(ctx);
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    FAKE_ENTER(cuCtxDestroy_v2);
    return ctx_destroy(ctx);
}

/* ---- primary contexts ---- */

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxRetain);
    FAKE_REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_ctx_lock);
    fake_primary_t *p = &g_primary[dev];
    if (!p->ctx)
        p->ctx = ctx_new(dev, p->flags, 1);
    if (p->ctx)
        p->refs++;
    *pctx = p->ctx;
    pthread_mutex_unlock(&g_ctx_lock);
    return *pctx ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult primary_release(CUdevice dev)
{
    FAKE_REQUIRE_INIT();
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUcontext dead = NULL;
    pthread_mutex_lock(&g_ctx_lock);
    fake_primary_t *p = &g_primary[dev];
    if (p->refs == 0) {
        pthread_mutex_unlock(&g_ctx_lock);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (--p->refs == 0) {
        dead = p->ctx;
        p->ctx = NULL;
    }
    pthread_mutex_unlock(&g_ctx_lock);
    if (dead) {
        forget_current(dead);
        ctx_free(dead);
    }
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxRelease);
    return primary_release(dev);
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxRelease_v2);
    return primary_release(dev);
}

static CUresult primary_reset(CUdevice dev)
{
    FAKE_REQUIRE_INIT();
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_ctx_lock);
    CUcontext dead = g_primary[dev].ctx;
    g_primary[dev].ctx = NULL;
    g_primary[dev].refs = 0;
    pthread_mutex_unlock(&g_ctx_lock);
    if (dead) {
        forget_current(dead);
        ctx_free(dead);
    }
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxReset);
    return primary_reset(dev);
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxReset_v2);
    return primary_reset(dev);
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    FAKE_ENTER(cuDevicePrimaryCtxGetState);
    FAKE_REQUIRE_INIT();
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_ctx_lock);
    *flags = g_primary[dev].flags;
    *active = g_primary[dev].ctx != NULL;
    pthread_mutex_unlock(&g_ctx_lock);
    return CUDA_SUCCESS;
}

static CUresult primary_set_flags(CUdevice dev, unsigned flags)
{
    FAKE_REQUIRE_INIT();
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (flags & ~(unsigned)CU_CTX_FLAGS_MASK)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_ctx_lock);
    g_primary[dev].flags = flags;
    if (g_primary[dev].ctx)
        g_primary[dev].ctx->flags = flags;
    pthread_mutex_unlock(&g_ctx_lock);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags)
{
    FAKE_ENTER(cuDevicePrimaryCtxSetFlags);
    return primary_set_flags(dev, flags);
}

CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
{
    FAKE_ENTER(cuDevicePrimaryCtxSetFlags_v2);
    return primary_set_flags(dev, flags);
}

/* ---- current-context stack ---- */

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    FAKE_ENTER(cuCtxGetCurrent);
    FAKE_REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = fake_ctx_current();
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx)
{
    FAKE_ENTER(cuCtxSetCurrent);
    FAKE_REQUIRE_INIT();
    if (ctx && !fake_ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!ctx) { /* documented: NULL pops the top, if any */
        if (t_depth)
            t_depth--;
        return CUDA_SUCCESS;
    }
    if (t_depth == 0)
        t_depth = 1;
    t_stack[t_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

static CUresult ctx_push(CUcontext ctx)
{
    FAKE_REQUIRE_INIT();
    if (!fake_ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth == CTX_STACK_DEPTH)
        return CUDA_ERROR_INVALID_VALUE;
    t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent(CUcontext ctx)
{
    FAKE_ENTER(cuCtxPushCurrent);
    return ctx_push(ctx);
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    FAKE_ENTER(cuCtxPushCurrent_v2);
    return ctx_push(ctx);
}

static CUresult ctx_pop(CUcontext *pctx)
{
    FAKE_REQUIRE_INIT();
    if (t_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = t_stack[--t_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent(CUcontext *pctx)
{
    FAKE_ENTER(cuCtxPopCurrent);
    return ctx_pop(pctx);
}

CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    FAKE_ENTER(cuCtxPopCurrent_v2);
    return ctx_pop(pctx);
}

static CUresult ctx_or_current(CUcontext ctx, CUcontext *out)
{
    if (!ctx)
        return fake_ctx_require(out);
    FAKE_REQUIRE_INIT();
    if (!fake_ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device)
{
    FAKE_ENTER(cuCtxGetDevice);
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r == CUDA_SUCCESS && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *device = c->device;
    return r;
}

CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    FAKE_ENTER(cuCtxGetDevice_v2);
    CUcontext c;
    CUresult r = ctx_or_current(ctx, &c);
    if (r == CUDA_SUCCESS && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *device = c->device;
    return r;
}

static CUresult ctx_sync(CUcontext c)
{
    fake_ctx_wait_idle(c);
    fake_pools_trim_device(c->device);
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void)
{
    FAKE_ENTER(cuCtxSynchronize);
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    return r ? r : ctx_sync(c);
}

CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    FAKE_ENTER(cuCtxSynchronize_v2);
    CUcontext c;
    CUresult r = ctx_or_current(ctx, &c);
    return r ? r : ctx_sync(c);
}

CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version)
{
    FAKE_ENTER(cuCtxGetApiVersion);
    CUcontext c;
    CUresult r = ctx_or_current(ctx, &c);
    if (r == CUDA_SUCCESS && !version)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *version = 3020; /* what the driver reports for every context since CUDA 3.2 */
    return r;
}

CUresult cuCtxGetFlags(unsigned int *flags)
{
    FAKE_ENTER(cuCtxGetFlags);
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r == CUDA_SUCCESS && !flags)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *flags = c->flags;
    return r;
}
