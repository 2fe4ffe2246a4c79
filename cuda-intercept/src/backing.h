#ifndef GVM_BACKING_H
#define GVM_BACKING_H

#include <cuda.h>
#include <stdbool.h>
#include <stdint.h>

/* VMM granularity on the GPUs we measured (H100: 2 MiB); smaller allocations stay plain cuMemAlloc */
#define GVM_BACKING_GRANULE (2ull << 20)

CUresult gvm_backing_alloc(int device, uint64_t size, bool on_device, CUdeviceptr *va,
                           CUmemGenericAllocationHandle *handle);
CUresult gvm_backing_map(CUdeviceptr va, uint64_t size, int device, bool on_device,
                         CUmemGenericAllocationHandle *handle);
CUresult gvm_backing_free(CUdeviceptr va, uint64_t size, CUmemGenericAllocationHandle handle, bool on_device);
/* physical memory: host-side handles come from and go back to a reusable pinned pool */
CUresult gvm_backing_create(int device, uint64_t size, bool on_device, CUmemGenericAllocationHandle *handle);
void gvm_backing_give_back(CUmemGenericAllocationHandle handle, uint64_t size, bool on_device);
/* host memory mapped for `device` at a staging range that stays with the handle (see backing.c) */
CUresult gvm_backing_stage(int device, uint64_t size, CUmemGenericAllocationHandle *handle, CUdeviceptr *va);
void gvm_backing_prestage(int device); /* stages pooled host memory that has no staging range yet */
/* pooled host handles of exactly this size */
size_t gvm_backing_pooled(uint64_t size);
/* one more host handle of this size, staged for `device`, into the pool (CUDA_ERROR_OUT_OF_MEMORY
 * when the pool has no room left for it) */
CUresult gvm_backing_prewarm(int device, uint64_t size);
/* where a host handle is mapped for `device` besides its range; 0 when it has no such staging range */
CUdeviceptr gvm_backing_staged_at(CUmemGenericAllocationHandle handle, int device);
CUresult gvm_backing_attach(CUdeviceptr va, uint64_t size, int device, CUmemGenericAllocationHandle handle);
void gvm_backing_reset(void);

#endif
