/*
 * Swap-mode backing: an allocation made through cuMemAlloc becomes a reserved virtual range with
 * physical memory mapped into it, on the GPU while the process is under its limit and on the host
 * (pinned, GPU-readable over the link) past it. The pointer the application gets is the range's
 * start, so the physical side can change later without the application noticing.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "backing.h"

static CUmemAllocationProp prop_for(int device, bool on_device) {
  CUmemAllocationProp prop = {0};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = on_device ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
  prop.location.id = on_device ? device : 0;
  return prop;
}

/*
 * Pinned host memory is slow to create (measured: most of a 1 GiB move's 246 ms is creating and
 * pinning it), so host-side physical memory given back by a move or a free is kept for reuse, up to
 * GVM_SWAP_POOL_MIB (default 16384). Device memory is always given back to the driver.
 */
#define POOL_SLOTS 512
static struct {
  uint64_t size;
  CUmemGenericAllocationHandle handle;
} pool[POOL_SLOTS];
static uint64_t pool_bytes;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t pool_cap(void) {
  static uint64_t cap = UINT64_MAX;
  if (cap == UINT64_MAX) {
    const char *v = getenv("GVM_SWAP_POOL_MIB");
    cap = (v && *v ? strtoull(v, NULL, 10) : 16384ull) << 20;
  }
  return cap;
}

CUresult gvm_backing_create(int device, uint64_t size, bool on_device, CUmemGenericAllocationHandle *handle) {
  if (!on_device) {
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOL_SLOTS; i++)
      if (pool[i].size == size) {
        *handle = pool[i].handle;
        pool[i].size = 0;
        pool_bytes -= size;
        pthread_mutex_unlock(&pool_lock);
        return CUDA_SUCCESS;
      }
    pthread_mutex_unlock(&pool_lock);
  }
  CUmemAllocationProp prop = prop_for(device, on_device);
  return GVM_REAL(cuMemCreate, handle, size, &prop, 0);
}

void gvm_backing_give_back(CUmemGenericAllocationHandle handle, uint64_t size, bool on_device) {
  if (!on_device) {
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOL_SLOTS && pool_bytes + size <= pool_cap(); i++)
      if (pool[i].size == 0) {
        pool[i].size = size;
        pool[i].handle = handle;
        pool_bytes += size;
        pthread_mutex_unlock(&pool_lock);
        return;
      }
    pthread_mutex_unlock(&pool_lock);
  }
  GVM_REAL(cuMemRelease, handle);
}

CUresult gvm_backing_attach(CUdeviceptr va, uint64_t size, int device, CUmemGenericAllocationHandle handle) {
  CUresult r = GVM_REAL(cuMemMap, va, size, 0, handle, 0);
  if (r != CUDA_SUCCESS) return r;
  CUmemAccessDesc access = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device},
                            .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  r = GVM_REAL(cuMemSetAccess, va, size, &access, 1);
  if (r != CUDA_SUCCESS) GVM_REAL(cuMemUnmap, va, size);
  return r;
}

CUresult gvm_backing_map(CUdeviceptr va, uint64_t size, int device, bool on_device,
                         CUmemGenericAllocationHandle *handle) {
  CUresult r = gvm_backing_create(device, size, on_device, handle);
  if (r != CUDA_SUCCESS) return r;
  r = gvm_backing_attach(va, size, device, *handle);
  if (r != CUDA_SUCCESS) gvm_backing_give_back(*handle, size, on_device);
  return r;
}

void gvm_backing_reset(void) {
  pthread_mutex_init(&pool_lock, NULL);
  memset(pool, 0, sizeof pool);
  pool_bytes = 0;
}

CUresult gvm_backing_alloc(int device, uint64_t size, bool on_device, CUdeviceptr *va,
                           CUmemGenericAllocationHandle *handle) {
  CUresult r = GVM_REAL(cuMemAddressReserve, va, size, GVM_BACKING_GRANULE, 0, 0);
  if (r != CUDA_SUCCESS) return r;
  r = gvm_backing_map(*va, size, device, on_device, handle);
  if (r != CUDA_SUCCESS) GVM_REAL(cuMemAddressFree, *va, size);
  return r;
}

CUresult gvm_backing_free(CUdeviceptr va, uint64_t size, CUmemGenericAllocationHandle handle, bool on_device) {
  CUresult r = GVM_REAL(cuMemUnmap, va, size);
  if (r == CUDA_SUCCESS) gvm_backing_give_back(handle, size, on_device);
  else GVM_REAL(cuMemRelease, handle);
  CUresult r3 = GVM_REAL(cuMemAddressFree, va, size);
  return r != CUDA_SUCCESS ? r : r3;
}
