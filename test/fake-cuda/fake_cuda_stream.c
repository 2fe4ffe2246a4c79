/* Streams and the execution engine.
 *
 * Every stream owns one worker thread (started on first use) that runs the
 * stream's operations in order. One global lock and condition variable guard
 * all queues, events and the hold gate: simple to reason about, and fast enough
 * for test workloads. A worker does not start an operation while the gate is
 * held, and does not start a kernel while its context's compute channels are
 * all disabled through the fake RM (a "frozen" context; copies still run). */
#define _GNU_SOURCE
#include "fake_cuda.h"
#include "fake_rm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API __attribute__((visibility("default")))
#define STREAM_MAGIC 0x57A4E3A1u

pthread_mutex_t g_sched = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_sched_cv = PTHREAD_COND_INITIALIZER;
static int g_hold;
static pthread_once_t g_hook_once = PTHREAD_ONCE_INIT;

static void channel_hook(void) { fake_sched_kick(); }
static void stop_hook(void);
static void install_hook(void)
{
    fakeRmSetChannelHook(channel_hook);
    fakeRmSetStopHook(stop_hook);
}

/* Contexts of the copies and memsets running right now (g_sched). */
#define MAX_IN_FLIGHT 256
static CUcontext g_in_flight[MAX_IN_FLIGHT];

static int stopped_op_running(void)
{
    for (int i = 0; i < MAX_IN_FLIGHT; i++)
        if (g_in_flight[i] && fake_rm_ctx_copies_stopped(g_in_flight[i]))
            return 1;
    return 0;
}

/* Caller holds g_sched; -1 when every slot is taken. */
static int take_slot(CUcontext c)
{
    for (int i = 0; i < MAX_IN_FLIGHT; i++)
        if (!g_in_flight[i]) {
            g_in_flight[i] = c;
            return i;
        }
    return -1;
}

static void stop_hook(void)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10; /* never hang a test: a real RM preempt times out too */
    pthread_mutex_lock(&g_sched);
    while (stopped_op_running())
        if (pthread_cond_timedwait(&g_sched_cv, &g_sched, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g_sched);
}

int fake_data_op_begin(CUcontext c)
{
    pthread_once(&g_hook_once, install_hook);
    pthread_mutex_lock(&g_sched);
    int slot;
    while (fake_rm_ctx_copies_stopped(c) || (slot = take_slot(c)) < 0)
        pthread_cond_wait(&g_sched_cv, &g_sched);
    pthread_mutex_unlock(&g_sched);
    return slot;
}

void fake_data_op_end(int slot)
{
    pthread_mutex_lock(&g_sched);
    g_in_flight[slot] = NULL;
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
}

void fake_sched_kick(void)
{
    pthread_mutex_lock(&g_sched);
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
}

API int fakeCudaHoldGpu(int hold)
{
    pthread_mutex_lock(&g_sched);
    int was = g_hold;
    g_hold = hold != 0;
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
    return was;
}

fake_op_t *fake_op_new(enum fake_op_kind kind)
{
    fake_op_t *op = calloc(1, sizeof *op);
    if (op)
        op->kind = kind;
    return op;
}

CUstream fake_stream_new(CUcontext ctx, unsigned flags, int priority)
{
    pthread_once(&g_hook_once, install_hook);
    CUstream s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->magic = STREAM_MAGIC;
    s->ctx = ctx;
    s->flags = flags;
    s->priority = priority;
    pthread_mutex_lock(&g_sched);
    s->next_in_ctx = ctx->streams;
    ctx->streams = s;
    pthread_mutex_unlock(&g_sched);
    return s;
}

CUresult fake_stream_resolve(CUstream h, CUstream *out)
{
    /* The legacy stream, the per-thread stream and NULL all mean the context's one
     * default stream here: the fake does not model their different sync rules. */
    if (h == NULL || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) {
        CUcontext c;
        CUresult r = fake_ctx_require(&c);
        if (r)
            return r;
        *out = c->default_stream;
        return CUDA_SUCCESS;
    }
    FAKE_REQUIRE_INIT();
    if (h->magic != STREAM_MAGIC || h->destroying)
        return CUDA_ERROR_INVALID_HANDLE;
    *out = h;
    return CUDA_SUCCESS;
}

/* ---- worker ---- */

static int event_reached(const fake_op_t *op) { return op->u.event.ev->done_gen >= op->u.event.gen; }

/* Whether the head operation may start now; caller holds g_sched. */
static int head_runnable(CUstream s)
{
    fake_op_t *op = s->head;
    if (!op || g_hold)
        return 0;
    if (op->kind == OP_EVENT_WAIT)
        return event_reached(op);
    if (op->kind == OP_KERNEL)
        return !fake_rm_ctx_frozen(s->ctx);
    if (op->kind == OP_COPY)
        return !fake_rm_ctx_copies_stopped(s->ctx);
    return 1;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void execute(fake_op_t *op)
{
    switch (op->kind) {
    case OP_KERNEL:
        if (g_fake_kernel_us)
            sleep_us(g_fake_kernel_us);
        break;
    case OP_COPY:
        if (g_fake_copy_us)
            sleep_us(g_fake_copy_us);
        memmove(op->u.copy.dst, op->u.copy.src, op->u.copy.n);
        break;
    case OP_HOSTFN:
        op->u.host.fn(op->u.host.data);
        break;
    case OP_POOL_FREE:
        fake_pool_free_now(op->u.pool.ptr);
        break;
    case OP_EVENT_RECORD:
    case OP_EVENT_WAIT:
        break; /* handled under the lock in finish() */
    }
}

static void finish(fake_op_t *op)
{
    if (op->kind == OP_EVENT_RECORD)
        fake_event_op_done(op->u.event.ev, op->u.event.gen);
    if (op->kind == OP_EVENT_RECORD || op->kind == OP_EVENT_WAIT)
        fake_event_unref_locked(op->u.event.ev);
    free(op);
}

static void unlink_stream(CUstream s)
{
    CUstream *pp = &s->ctx->streams;
    while (*pp && *pp != s)
        pp = &(*pp)->next_in_ctx;
    if (*pp)
        *pp = s->next_in_ctx;
}

static void drop_queue(CUstream s)
{
    while (s->head) {
        fake_op_t *op = s->head;
        s->head = op->next;
        if (op->kind == OP_EVENT_RECORD || op->kind == OP_EVENT_WAIT)
            fake_event_unref_locked(op->u.event.ev);
        free(op);
        s->completed++;
    }
    s->tail = NULL;
}

static void *worker_main(void *arg)
{
    CUstream s = arg;
    pthread_mutex_lock(&g_sched);
    for (;;) {
        while (!s->dying && !head_runnable(s) && !(s->destroying && !s->head))
            pthread_cond_wait(&g_sched_cv, &g_sched);
        if (s->dying || (s->destroying && !s->head))
            break;
        fake_op_t *op = s->head;
        int slot = op->kind == OP_COPY ? take_slot(s->ctx) : -1;
        if (op->kind == OP_COPY && slot < 0) {
            pthread_cond_wait(&g_sched_cv, &g_sched);
            continue;
        }
        s->head = op->next;
        if (!s->head)
            s->tail = NULL;
        pthread_mutex_unlock(&g_sched);
        execute(op);
        pthread_mutex_lock(&g_sched);
        if (slot >= 0)
            g_in_flight[slot] = NULL;
        finish(op);
        s->completed++;
        pthread_cond_broadcast(&g_sched_cv);
    }
    CUcontext ctx = s->ctx;
    if (s->dying) {
        drop_queue(s); /* the context frees the stream itself */
    } else {
        unlink_stream(s);
        s->magic = 0;
        free(s);
    }
    ctx->live_workers--;
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
    return NULL;
}

/* Caller holds g_sched. */
static void ensure_worker(CUstream s)
{
    if (s->worker_started)
        return;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker_main, s) == 0) {
        s->worker_started = 1;
        s->ctx->live_workers++;
    }
    pthread_attr_destroy(&attr);
}

void fake_stream_enqueue(CUstream s, fake_op_t *op)
{
    pthread_mutex_lock(&g_sched);
    ensure_worker(s);
    op->next = NULL;
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    s->submitted++;
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
}

void fake_stream_wait_idle(CUstream s)
{
    pthread_mutex_lock(&g_sched);
    uint64_t target = s->submitted;
    while (s->completed < target && !s->dying)
        pthread_cond_wait(&g_sched_cv, &g_sched);
    pthread_mutex_unlock(&g_sched);
}

void fake_ctx_wait_idle(CUcontext ctx)
{
    /* Waits until every stream is drained, including work other threads add meanwhile. */
    pthread_mutex_lock(&g_sched);
    for (;;) {
        int busy = 0;
        for (CUstream s = ctx->streams; s; s = s->next_in_ctx)
            if (!s->destroying && s->completed < s->submitted)
                busy = 1;
        if (!busy)
            break;
        pthread_cond_wait(&g_sched_cv, &g_sched);
    }
    pthread_mutex_unlock(&g_sched);
}

void fake_ctx_streams_teardown(CUcontext ctx)
{
    pthread_mutex_lock(&g_sched);
    for (CUstream s = ctx->streams; s; s = s->next_in_ctx)
        s->dying = 1;
    pthread_cond_broadcast(&g_sched_cv);
    while (ctx->live_workers > 0)
        pthread_cond_wait(&g_sched_cv, &g_sched);
    CUstream s = ctx->streams;
    ctx->streams = NULL;
    while (s) {
        CUstream next = s->next_in_ctx;
        drop_queue(s);
        s->magic = 0;
        free(s);
        s = next;
    }
    pthread_mutex_unlock(&g_sched);
}

/* ---- stream API ---- */

static CUresult stream_create(CUstream *ph, unsigned flags, int priority)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (!ph)
        return CUDA_ERROR_INVALID_VALUE;
    *ph = fake_stream_new(c, flags, priority);
    return *ph ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    FAKE_ENTER(cuStreamCreate);
    return stream_create(phStream, Flags, 0);
}

CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    FAKE_ENTER(cuStreamCreateWithPriority);
    return stream_create(phStream, flags, priority);
}

static CUresult stream_destroy(CUstream h)
{
    FAKE_REQUIRE_INIT();
    if (!h || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD || h->magic != STREAM_MAGIC || h->destroying ||
        h == h->ctx->default_stream)
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_sched);
    h->destroying = 1; /* queued work still runs; the worker frees the stream */
    if (!h->worker_started) {
        unlink_stream(h);
        h->magic = 0;
        free(h);
    }
    pthread_cond_broadcast(&g_sched_cv);
    pthread_mutex_unlock(&g_sched);
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream hStream)
{
    FAKE_ENTER(cuStreamDestroy);
    return stream_destroy(hStream);
}

CUresult cuStreamDestroy_v2(CUstream hStream)
{
    FAKE_ENTER(cuStreamDestroy_v2);
    return stream_destroy(hStream);
}

static CUresult stream_sync(CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if ((r = fake_capture_check(s)))
        return r;
    fake_stream_wait_idle(s);
    fake_pools_trim_device(s->ctx->device);
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream hStream)
{
    FAKE_ENTER(cuStreamSynchronize);
    return stream_sync(hStream);
}

CUresult cuStreamSynchronize_ptsz(CUstream hStream)
{
    FAKE_ENTER(cuStreamSynchronize_ptsz);
    return stream_sync(hStream);
}

static CUresult stream_query(CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    pthread_mutex_lock(&g_sched);
    int idle = s->completed >= s->submitted;
    pthread_mutex_unlock(&g_sched);
    return idle ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuStreamQuery(CUstream hStream)
{
    FAKE_ENTER(cuStreamQuery);
    return stream_query(hStream);
}

CUresult cuStreamQuery_ptsz(CUstream hStream)
{
    FAKE_ENTER(cuStreamQuery_ptsz);
    return stream_query(hStream);
}

static CUresult stream_ctx(CUstream h, CUcontext *pctx, CUgreenCtx *pgreen)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = s->ctx;
    if (pgreen)
        *pgreen = NULL;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx)
{
    FAKE_ENTER(cuStreamGetCtx);
    return stream_ctx(hStream, pctx, NULL);
}

CUresult cuStreamGetCtx_ptsz(CUstream hStream, CUcontext *pctx)
{
    FAKE_ENTER(cuStreamGetCtx_ptsz);
    return stream_ctx(hStream, pctx, NULL);
}

CUresult cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    FAKE_ENTER(cuStreamGetCtx_v2);
    return stream_ctx(hStream, pCtx, pGreenCtx);
}

CUresult cuStreamGetCtx_v2_ptsz(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    FAKE_ENTER(cuStreamGetCtx_v2_ptsz);
    return stream_ctx(hStream, pCtx, pGreenCtx);
}
