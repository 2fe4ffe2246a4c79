/* Kernel and host-function launches. A kernel is an OP_KERNEL on its stream
 * that takes FAKE_CUDA_KERNEL_US of simulated time; on a capturing stream it
 * becomes a kernel node of the capture graph instead. */
#define _GNU_SOURCE
#include "fake_cuda.h"

CUresult fake_launch(CUfunction f, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!fake_function_valid(f))
        return CUDA_ERROR_INVALID_HANDLE;
    CUgraph g = fake_capture_graph(s);
    if (g)
        return fake_graph_append_kernel(g, f, &s->capture_last);
    if ((r = fake_capture_check(s)))
        return r;
    fake_op_t *op = fake_op_new(OP_KERNEL);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

static CUresult launch_dims(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, CUstream h)
{
    if (!gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    return fake_launch(f, h);
}

#define LAUNCH_FN(name)                                                                                   \
    CUresult name(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,        \
                  unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,                   \
                  unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)         \
    {                                                                                                     \
        FAKE_ENTER(name);                                                                                 \
        (void)sharedMemBytes, (void)kernelParams, (void)extra;                                            \
        return launch_dims(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, hStream);    \
    }

LAUNCH_FN(cuLaunchKernel)
LAUNCH_FN(cuLaunchKernel_ptsz)

#define LAUNCH_COOP_FN(name)                                                                              \
    CUresult name(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,        \
                  unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,                   \
                  unsigned int sharedMemBytes, CUstream hStream, void **kernelParams)                       \
    {                                                                                                     \
        FAKE_ENTER(name);                                                                                 \
        (void)sharedMemBytes, (void)kernelParams;                                                         \
        return launch_dims(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, hStream);    \
    }

LAUNCH_COOP_FN(cuLaunchCooperativeKernel)
LAUNCH_COOP_FN(cuLaunchCooperativeKernel_ptsz)

static CUresult launch_ex(const CUlaunchConfig *config, CUfunction f)
{
    if (!config)
        return CUDA_ERROR_INVALID_VALUE;
    return launch_dims(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                       config->blockDimY, config->blockDimZ, config->hStream);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{
    FAKE_ENTER(cuLaunchKernelEx);
    (void)kernelParams, (void)extra;
    return launch_ex(config, f);
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{
    FAKE_ENTER(cuLaunchKernelEx_ptsz);
    (void)kernelParams, (void)extra;
    return launch_ex(config, f);
}

static CUresult launch_host(CUstream h, CUhostFn fn, void *data)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    if ((r = fake_capture_check(s)))
        return r;
    fake_op_t *op = fake_op_new(OP_HOSTFN);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.host.fn = fn;
    op->u.host.data = data;
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData)
{
    FAKE_ENTER(cuLaunchHostFunc);
    return launch_host(hStream, fn, userData);
}

CUresult cuLaunchHostFunc_ptsz(CUstream hStream, CUhostFn fn, void *userData)
{
    FAKE_ENTER(cuLaunchHostFunc_ptsz);
    return launch_host(hStream, fn, userData);
}
