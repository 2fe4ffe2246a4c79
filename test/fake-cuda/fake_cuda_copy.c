/* Copies and memsets. Synchronous ones run at once in the calling thread (they
 * do not wait for earlier work on the default stream: a simplification that
 * keeps a held or frozen GPU from blocking test drivers). Async copies run in
 * order on their stream's worker. Device-side ranges are checked against the
 * allocation registry so that a bad pointer fails like on a GPU instead of
 * corrupting the test process. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <string.h>

static int device_range_ok(uintptr_t addr, size_t n)
{
    pthread_mutex_lock(&g_mem);
    uintptr_t base;
    size_t size;
    fake_block_t *b = fake_mem_find(addr);
    int ok;
    if (b) {
        ok = !(b->kind == MEM_POOL && b->pool_free) && n <= b->size - (addr - b->base);
    } else {
        ok = fake_vmm_range(addr, &base, &size) && n <= size - (addr - base);
    }
    pthread_mutex_unlock(&g_mem);
    return ok;
}

static CUresult copy_now(uintptr_t dst, int dst_dev, uintptr_t src, int src_dev, size_t n)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (n == 0)
        return CUDA_SUCCESS;
    int slot = fake_data_op_begin(c);
    if (!dst || !src || (dst_dev && !device_range_ok(dst, n)) || (src_dev && !device_range_ok(src, n))) {
        fake_data_op_end(slot);
        return CUDA_ERROR_INVALID_VALUE;
    }
    memmove((void *)dst, (const void *)src, n);
    fake_data_op_end(slot);
    return CUDA_SUCCESS;
}

#define COPY_FN(name, dst_t, src_t, size_t_, dst_dev, src_dev)                                   \
    CUresult name(dst_t dst, src_t src, size_t_ n)                                                \
    {                                                                                             \
        FAKE_ENTER(name);                                                                         \
        return copy_now((uintptr_t)dst, dst_dev, (uintptr_t)src, src_dev, n);                     \
    }

/* cuMemcpy takes unified addresses that may be host memory: no range check. */
COPY_FN(cuMemcpy, CUdeviceptr, CUdeviceptr, size_t, 0, 0)
COPY_FN(cuMemcpy_ptds, CUdeviceptr, CUdeviceptr, size_t, 0, 0)
COPY_FN(cuMemcpyHtoD, CUdeviceptr_v1, const void *, unsigned int, 1, 0)
COPY_FN(cuMemcpyHtoD_v2, CUdeviceptr, const void *, size_t, 1, 0)
COPY_FN(cuMemcpyHtoD_v2_ptds, CUdeviceptr, const void *, size_t, 1, 0)
COPY_FN(cuMemcpyDtoH, void *, CUdeviceptr_v1, unsigned int, 0, 1)
COPY_FN(cuMemcpyDtoH_v2, void *, CUdeviceptr, size_t, 0, 1)
COPY_FN(cuMemcpyDtoH_v2_ptds, void *, CUdeviceptr, size_t, 0, 1)
COPY_FN(cuMemcpyDtoD, CUdeviceptr_v1, CUdeviceptr_v1, unsigned int, 1, 1)
COPY_FN(cuMemcpyDtoD_v2, CUdeviceptr, CUdeviceptr, size_t, 1, 1)
COPY_FN(cuMemcpyDtoD_v2_ptds, CUdeviceptr, CUdeviceptr, size_t, 1, 1)

static CUresult copy_async(uintptr_t dst, int dst_dev, uintptr_t src, int src_dev, size_t n, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if ((r = fake_capture_check(s)))
        return r;
    if (n == 0)
        return CUDA_SUCCESS;
    if (!dst || !src || (dst_dev && !device_range_ok(dst, n)) || (src_dev && !device_range_ok(src, n)))
        return CUDA_ERROR_INVALID_VALUE;
    fake_op_t *op = fake_op_new(OP_COPY);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.copy.dst = (void *)dst;
    op->u.copy.src = (const void *)src;
    op->u.copy.n = n;
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

#define COPY_ASYNC_FN(name, dst_t, src_t, dst_dev, src_dev)                                      \
    CUresult name(dst_t dst, src_t src, size_t n, CUstream hStream)                               \
    {                                                                                             \
        FAKE_ENTER(name);                                                                         \
        FAKE_MAY_FAIL(name);                                                                      \
        return copy_async((uintptr_t)dst, dst_dev, (uintptr_t)src, src_dev, n, hStream);          \
    }

COPY_ASYNC_FN(cuMemcpyAsync, CUdeviceptr, CUdeviceptr, 0, 0)
COPY_ASYNC_FN(cuMemcpyAsync_ptsz, CUdeviceptr, CUdeviceptr, 0, 0)
COPY_ASYNC_FN(cuMemcpyHtoDAsync_v2, CUdeviceptr, const void *, 1, 0)
COPY_ASYNC_FN(cuMemcpyHtoDAsync_v2_ptsz, CUdeviceptr, const void *, 1, 0)
COPY_ASYNC_FN(cuMemcpyDtoHAsync_v2, void *, CUdeviceptr, 0, 1)
COPY_ASYNC_FN(cuMemcpyDtoHAsync_v2_ptsz, void *, CUdeviceptr, 0, 1)

static CUresult memset_now(uintptr_t dst, unsigned value, size_t count, size_t width)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (count == 0)
        return CUDA_SUCCESS;
    int slot = fake_data_op_begin(c);
    if (!dst || (width == 4 && dst % 4) || !device_range_ok(dst, count * width)) {
        fake_data_op_end(slot);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (width == 1) {
        memset((void *)dst, (int)(value & 0xff), count);
    } else {
        uint32_t v = value;
        for (size_t i = 0; i < count; i++)
            memcpy((char *)dst + 4 * i, &v, 4);
    }
    fake_data_op_end(slot);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8(CUdeviceptr_v1 dstDevice, unsigned char uc, unsigned int N)
{
    FAKE_ENTER(cuMemsetD8);
    return memset_now(dstDevice, uc, N, 1);
}

CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N)
{
    FAKE_ENTER(cuMemsetD8_v2);
    return memset_now((uintptr_t)dstDevice, uc, N, 1);
}

CUresult cuMemsetD8_v2_ptds(CUdeviceptr dstDevice, unsigned char uc, size_t N)
{
    FAKE_ENTER(cuMemsetD8_v2_ptds);
    return memset_now((uintptr_t)dstDevice, uc, N, 1);
}

CUresult cuMemsetD32(CUdeviceptr_v1 dstDevice, unsigned int ui, unsigned int N)
{
    FAKE_ENTER(cuMemsetD32);
    return memset_now(dstDevice, ui, N, 4);
}

CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N)
{
    FAKE_ENTER(cuMemsetD32_v2);
    return memset_now((uintptr_t)dstDevice, ui, N, 4);
}

CUresult cuMemsetD32_v2_ptds(CUdeviceptr dstDevice, unsigned int ui, size_t N)
{
    FAKE_ENTER(cuMemsetD32_v2_ptds);
    return memset_now((uintptr_t)dstDevice, ui, N, 4);
}
