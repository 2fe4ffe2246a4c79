/* Legacy CUDA IPC (cuIpcGetMemHandle / cuIpcOpenMemHandle). As in the driver, a handle exists for
 * plain cuMemAlloc memory only: VMM ranges (and so gvm's swap-mode ranges) are refused with
 * CUDA_ERROR_INVALID_VALUE. The fake's plain memory is private to its process, so opening such a
 * handle in another process answers CUDA_ERROR_NOT_SUPPORTED; anything that is not a fake handle
 * (for instance gvm's, when the opener runs without the agent) is CUDA_ERROR_INVALID_VALUE. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <string.h>
#include <unistd.h>

static const char k_marker[8] = "FAKEIPC";

struct fake_ipc {
    char marker[8];
    int32_t pid;
    uint32_t reserved;
    uint64_t ptr, size;
};
_Static_assert(sizeof(struct fake_ipc) <= sizeof(CUipcMemHandle), "fits a handle");

CUresult cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)
{
    FAKE_ENTER(cuIpcGetMemHandle);
    FAKE_REQUIRE_INIT();
    if (!pHandle)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t base;
    size_t size;
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find((uintptr_t)dptr);
    int vmm = fake_vmm_range((uintptr_t)dptr, &base, &size);
    struct fake_ipc h = {.pid = (int32_t)getpid()};
    int ok = !vmm && b && b->kind == MEM_DEVICE;
    if (ok) {
        memcpy(h.marker, k_marker, sizeof h.marker);
        h.ptr = b->base;
        h.size = b->size;
    }
    pthread_mutex_unlock(&g_mem);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    memset(pHandle, 0, sizeof *pHandle);
    memcpy(pHandle->reserved, &h, sizeof h);
    return CUDA_SUCCESS;
}

static CUresult open_handle(CUdeviceptr *pdptr, CUipcMemHandle handle)
{
    FAKE_REQUIRE_INIT();
    struct fake_ipc h;
    memcpy(&h, handle.reserved, sizeof h);
    if (!pdptr || memcmp(h.marker, k_marker, sizeof h.marker) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (h.pid == (int32_t)getpid())
        return CUDA_ERROR_INVALID_CONTEXT; /* the driver refuses to open a handle in its own process */
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
{
    FAKE_ENTER(cuIpcOpenMemHandle);
    (void)Flags;
    return open_handle(pdptr, handle);
}

CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
{
    FAKE_ENTER(cuIpcOpenMemHandle_v2);
    (void)Flags;
    return open_handle(pdptr, handle);
}

CUresult cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    FAKE_ENTER(cuIpcCloseMemHandle);
    FAKE_REQUIRE_INIT();
    (void)dptr;
    return CUDA_ERROR_INVALID_VALUE; /* nothing can have been opened */
}
