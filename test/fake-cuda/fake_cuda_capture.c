/* Stream capture. Only kernels are captured (as a chain of kernel nodes); other
 * asynchronous work on a capturing stream answers
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED. Capturing the default stream is
 * refused, as the driver refuses capture on the legacy stream. */
#define _GNU_SOURCE
#include "fake_cuda.h"

static atomic_ullong g_capture_ids;
static _Thread_local CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

static CUresult begin_capture(CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (s == s->ctx->default_stream)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (s->capture_graph)
        return CUDA_ERROR_ILLEGAL_STATE;
    r = fake_graph_new(&s->capture_graph);
    if (r)
        return r;
    s->capture_last = NULL;
    s->capture_id = atomic_fetch_add(&g_capture_ids, 1) + 1;
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
    if (!s->capture_graph)
        return CUDA_ERROR_ILLEGAL_STATE;
    *phGraph = s->capture_graph;
    s->capture_graph = NULL;
    s->capture_last = NULL;
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
    *status = s->capture_graph ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
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
    int active = s->capture_graph != NULL;
    if (id && active)
        *id = s->capture_id;
    if (graph)
        *graph = active ? s->capture_graph : NULL;
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
