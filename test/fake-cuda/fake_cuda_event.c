/* Events. A record bumps the event's generation and queues a marker on the
 * stream; the event is complete once the worker has passed the marker of the
 * latest generation. Queued markers hold a reference so a destroyed event
 * stays valid until the streams are done with it, as in the driver. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>
#include <time.h>

#define EVENT_MAGIC 0xE7E7E7E7u

static int event_valid(CUevent e) { return e && e->magic == EVENT_MAGIC && !e->destroyed; }

void fake_event_op_done(struct CUevent_st *ev, uint64_t gen)
{
    if (gen > ev->done_gen)
        ev->done_gen = gen;
    clock_gettime(CLOCK_MONOTONIC, &ev->stamp);
    ev->stamped = 1;
}

void fake_event_unref_locked(struct CUevent_st *ev)
{
    if (--ev->refs == 0 && ev->destroyed) {
        ev->magic = 0;
        free(ev);
    }
}

CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    FAKE_ENTER(cuEventCreate);
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (!phEvent)
        return CUDA_ERROR_INVALID_VALUE;
    CUevent e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->magic = EVENT_MAGIC;
    e->flags = Flags;
    *phEvent = e;
    return CUDA_SUCCESS;
}

static CUresult event_destroy(CUevent e)
{
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_sched);
    if (!event_valid(e)) {
        pthread_mutex_unlock(&g_sched);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    e->destroyed = 1;
    e->refs++;
    fake_event_unref_locked(e);
    pthread_mutex_unlock(&g_sched);
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent hEvent)
{
    FAKE_ENTER(cuEventDestroy);
    return event_destroy(hEvent);
}

CUresult cuEventDestroy_v2(CUevent hEvent)
{
    FAKE_ENTER(cuEventDestroy_v2);
    return event_destroy(hEvent);
}

static CUresult event_record(CUevent e, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!event_valid(e))
        return CUDA_ERROR_INVALID_HANDLE;
    if ((r = fake_capture_check(s)))
        return r;
    fake_op_t *op = fake_op_new(OP_EVENT_RECORD);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&g_sched);
    op->u.event.ev = e;
    op->u.event.gen = ++e->recorded_gen;
    e->refs++;
    pthread_mutex_unlock(&g_sched);
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    FAKE_ENTER(cuEventRecord);
    return event_record(hEvent, hStream);
}

CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream)
{
    FAKE_ENTER(cuEventRecord_ptsz);
    return event_record(hEvent, hStream);
}

CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    FAKE_ENTER(cuEventRecordWithFlags);
    (void)flags;
    return event_record(hEvent, hStream);
}

CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    FAKE_ENTER(cuEventRecordWithFlags_ptsz);
    (void)flags;
    return event_record(hEvent, hStream);
}

CUresult cuEventQuery(CUevent hEvent)
{
    FAKE_ENTER(cuEventQuery);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_sched);
    CUresult r = !event_valid(hEvent)                        ? CUDA_ERROR_INVALID_HANDLE
                 : hEvent->done_gen >= hEvent->recorded_gen ? CUDA_SUCCESS
                                                            : CUDA_ERROR_NOT_READY;
    pthread_mutex_unlock(&g_sched);
    return r;
}

CUresult cuEventSynchronize(CUevent hEvent)
{
    FAKE_ENTER(cuEventSynchronize);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_sched);
    if (!event_valid(hEvent)) {
        pthread_mutex_unlock(&g_sched);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    uint64_t target = hEvent->recorded_gen;
    while (hEvent->done_gen < target)
        pthread_cond_wait(&g_sched_cv, &g_sched);
    pthread_mutex_unlock(&g_sched);
    return CUDA_SUCCESS;
}

static CUresult elapsed(float *ms, CUevent a, CUevent b)
{
    FAKE_REQUIRE_INIT();
    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_sched);
    CUresult r = CUDA_SUCCESS;
    if (!event_valid(a) || !event_valid(b) || (a->flags | b->flags) & CU_EVENT_DISABLE_TIMING)
        r = CUDA_ERROR_INVALID_HANDLE;
    else if (a->done_gen < a->recorded_gen || b->done_gen < b->recorded_gen)
        r = CUDA_ERROR_NOT_READY;
    else if (!a->stamped || !b->stamped)
        r = CUDA_ERROR_INVALID_HANDLE;
    else
        *ms = (float)((double)(b->stamp.tv_sec - a->stamp.tv_sec) * 1e3 +
                      (double)(b->stamp.tv_nsec - a->stamp.tv_nsec) / 1e6);
    pthread_mutex_unlock(&g_sched);
    return r;
}

CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    FAKE_ENTER(cuEventElapsedTime);
    return elapsed(pMilliseconds, hStart, hEnd);
}

CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    FAKE_ENTER(cuEventElapsedTime_v2);
    return elapsed(pMilliseconds, hStart, hEnd);
}

static CUresult stream_wait_event(CUstream h, CUevent e)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!event_valid(e))
        return CUDA_ERROR_INVALID_HANDLE;
    if ((r = fake_capture_check(s)))
        return r;
    fake_op_t *op = fake_op_new(OP_EVENT_WAIT);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&g_sched);
    op->u.event.ev = e;
    op->u.event.gen = e->recorded_gen; /* waits for the latest record only */
    e->refs++;
    pthread_mutex_unlock(&g_sched);
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    FAKE_ENTER(cuStreamWaitEvent);
    (void)Flags;
    return stream_wait_event(hStream, hEvent);
}

CUresult cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    FAKE_ENTER(cuStreamWaitEvent_ptsz);
    (void)Flags;
    return stream_wait_event(hStream, hEvent);
}
