/*
 * Swap-mode backing: an allocation made through cuMemAlloc becomes a reserved virtual range with
 * physical memory mapped into it, on the GPU while the process is under its limit and on the host
 * (pinned, GPU-readable over the link) past it. The pointer the application gets is the range's
 * start, so the physical side can change later without the application noticing.
 */
#include "agent.h"
#include "backing.h"

static CUmemAllocationProp prop_for(int device, bool on_device) {
  CUmemAllocationProp prop = {0};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = on_device ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
  prop.location.id = on_device ? device : 0;
  return prop;
}

CUresult gvm_backing_map(CUdeviceptr va, uint64_t size, int device, bool on_device,
                         CUmemGenericAllocationHandle *handle) {
  CUmemAllocationProp prop = prop_for(device, on_device);
  CUresult r = GVM_REAL(cuMemCreate, handle, size, &prop, 0);
  if (r != CUDA_SUCCESS) return r;
  r = GVM_REAL(cuMemMap, va, size, 0, *handle, 0);
  if (r != CUDA_SUCCESS) {
    GVM_REAL(cuMemRelease, *handle);
    return r;
  }
  CUmemAccessDesc access = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device},
                            .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  r = GVM_REAL(cuMemSetAccess, va, size, &access, 1);
  if (r != CUDA_SUCCESS) {
    GVM_REAL(cuMemUnmap, va, size);
    GVM_REAL(cuMemRelease, *handle);
  }
  return r;
}

CUresult gvm_backing_alloc(int device, uint64_t size, bool on_device, CUdeviceptr *va,
                           CUmemGenericAllocationHandle *handle) {
  CUresult r = GVM_REAL(cuMemAddressReserve, va, size, GVM_BACKING_GRANULE, 0, 0);
  if (r != CUDA_SUCCESS) return r;
  r = gvm_backing_map(*va, size, device, on_device, handle);
  if (r != CUDA_SUCCESS) GVM_REAL(cuMemAddressFree, *va, size);
  return r;
}

CUresult gvm_backing_free(CUdeviceptr va, uint64_t size, CUmemGenericAllocationHandle handle) {
  CUresult r = GVM_REAL(cuMemUnmap, va, size);
  CUresult r2 = GVM_REAL(cuMemRelease, handle);
  CUresult r3 = GVM_REAL(cuMemAddressFree, va, size);
  return r != CUDA_SUCCESS ? r : r2 != CUDA_SUCCESS ? r2 : r3;
}
