/* Stream capture. Only kernels are captured (as a chain of kernel nodes); other
 * asynchronous work on a capturing stream answers
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture, as does work
 * on the legacy stream while a blocking stream of its context captures (an
 * implicit dependency: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT). Capturing the
 * default stream is refused, as the driver refuses capture on the legacy stream.
 * FAKE_CUDA_BEGIN_CAPTURE_DELAY_US: a begin returns that long after the capture
 * started, so a test can land other threads' work in the window an interposer
 * has between the driver's begin and its own bookkeeping. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>

#include "fake_cuda.h"

static atomic_ullong g_capture_ids;
static _Thread_local CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

CUgraph fake_capture_graph(CUstream s)
{
    return __atomic_load_n(&s->capture_graph, __ATOMIC_ACQUIRE);
}

static int invalidate_blocking_captures(CUcontext ctx)
{
    int hit = 0;
    pthread_mutex_lock(&g_sched);
    for (CUstream t = ctx->streams; t; t = t->next_in_ctx) {
        if (t == ctx->default_stream || (t->flags & CU_STREAM_NON_BLOCKING) || !fake_capture_graph(t))
            continue;
        __atomic_store_n(&t->capture_invalid, 1, __ATOMIC_RELEASE);
        hit = 1;
    }
    pthread_mutex_unlock(&g_sched);
    return hit;
}

CUresult fake_capture_check(CUstream s)
{
    if (fake_capture_graph(s)) {
        __atomic_store_n(&s->capture_invalid, 1, __ATOMIC_RELEASE);
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (s == s->ctx->default_stream && invalidate_blocking_captures(s->ctx))
        return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    return CUDA_SUCCESS;
}

static void begin_delay(void)
{
    static long us = -1;
    if (us < 0) {
        const char *v = getenv("FAKE_CUDA_BEGIN_CAPTURE_DELAY_US");
        us = v && *v ? atol(v) : 0;
    }
    if (us > 0) {
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

static CUresult begin_capture(CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (s == s->ctx->default_stream)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (fake_capture_graph(s))
        return CUDA_ERROR_ILLEGAL_STATE;
    CUgraph g;
    r = fake_graph_new(&g);
    if (r)
        return r;
    s->capture_last = NULL;
    s->capture_id = atomic_fetch_add(&g_capture_ids, 1) + 1;
    __atomic_store_n(&s->capture_invalid, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->capture_graph, g, __ATOMIC_RELEASE);
    begin_delay();
    return CUDA_SUCCESS;
}

CUresult cuStreamBeginCapture(CUstream hStream)
{
    FAKE_ENTER(cuStreamBeginCapture);
    return begin_capture(hStream);
}

CUresult cuStreamBeginCapture_ptsz(CUstream hStream)
{
    FAKE_ENTER(cuStreamBeginCapture_ptsz);
    return begin_capture(hStream);
}

CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    FAKE_ENTER(cuStreamBeginCapture_v2);
    (void)mode;
    return begin_capture(hStream);
}

CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
{
    FAKE_ENTER(cuStreamBeginCapture_v2_ptsz);
    (void)mode;
    return begin_capture(hStream);
}

static CUresult end_capture(CUstream h, CUgraph *phGraph)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    CUgraph g = fake_capture_graph(s);
    if (!g)
        return CUDA_ERROR_ILLEGAL_STATE;
    __atomic_store_n(&s->capture_graph, NULL, __ATOMIC_RELEASE);
    s->capture_last = NULL;
    if (__atomic_load_n(&s->capture_invalid, __ATOMIC_ACQUIRE)) {
        *phGraph = NULL;
        fake_graph_release(g);
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *phGraph = g;
    return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    FAKE_ENTER(cuStreamEndCapture);
    return end_capture(hStream, phGraph);
}

CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
{
    FAKE_ENTER(cuStreamEndCapture_ptsz);
    return end_capture(hStream, phGraph);
}

static CUresult is_capturing(CUstream h, CUstreamCaptureStatus *status)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    *status = !fake_capture_graph(s)                                    ? CU_STREAM_CAPTURE_STATUS_NONE
              : __atomic_load_n(&s->capture_invalid, __ATOMIC_ACQUIRE) ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                                                        : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    FAKE_ENTER(cuStreamIsCapturing);
    return is_capturing(hStream, captureStatus);
}

CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    FAKE_ENTER(cuStreamIsCapturing_ptsz);
    return is_capturing(hStream, captureStatus);
}

static CUresult capture_info(CUstream h, CUstreamCaptureStatus *status, cuuint64_t *id, CUgraph *graph,
                             const CUgraphNode **deps, const CUgraphEdgeData **edges, size_t *ndeps)
{
    CUresult r = is_capturing(h, status);
    if (r)
        return r;
    CUstream s;
    fake_stream_resolve(h, &s);
    CUgraph graph_now = fake_capture_graph(s);
    int active = graph_now != NULL;
    if (id && active)
        *id = s->capture_id;
    if (graph)
        *graph = graph_now;
    if (deps)
        *deps = active && s->capture_last ? &s->capture_last : NULL;
    if (edges)
        *edges = NULL;
    if (ndeps)
        *ndeps = active && s->capture_last ? 1 : 0;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out,
                                   CUgraph *graph_out, const CUgraphNode **dependencies_out,
                                   size_t *numDependencies_out)
{
    FAKE_ENTER(cuStreamGetCaptureInfo_v2);
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, NULL, numDependencies_out);
}

CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                        cuuint64_t *id_out, CUgraph *graph_out,
                                        const CUgraphNode **dependencies_out, size_t *numDependencies_out)
{
    FAKE_ENTER(cuStreamGetCaptureInfo_v2_ptsz);
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, NULL, numDependencies_out);
}

CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out,
                                   CUgraph *graph_out, const CUgraphNode **dependencies_out,
                                   const CUgraphEdgeData **edgeData_out, size_t *numDependencies_out)
{
    FAKE_ENTER(cuStreamGetCaptureInfo_v3);
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}

CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                        cuuint64_t *id_out, CUgraph *graph_out,
                                        const CUgraphNode **dependencies_out,
                                        const CUgraphEdgeData **edgeData_out, size_t *numDependencies_out)
{
    FAKE_ENTER(cuStreamGetCaptureInfo_v3_ptsz);
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}

CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    FAKE_ENTER(cuThreadExchangeStreamCaptureMode);
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = t_mode;
    t_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
