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

/*
 * Device-side physical memory is created exportable as a POSIX file descriptor, so a range can be
 * shared through CUDA IPC (ipc.c) without being copied first. Where the driver refuses that handle
 * type (some containers), memory is created without it and IPC export of swap ranges fails.
 */
static atomic_bool fd_export_refused;

static CUmemAllocationProp prop_for(int device, bool on_device) {
  CUmemAllocationProp prop = {0};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = on_device ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
  prop.location.id = on_device ? device : 0;
  if (on_device && !atomic_load_explicit(&fd_export_refused, memory_order_relaxed))
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

static CUresult create(int device, uint64_t size, bool on_device, CUmemGenericAllocationHandle *handle) {
  CUmemAllocationProp prop = prop_for(device, on_device);
  CUresult r = GVM_REAL(cuMemCreate, handle, size, &prop, 0);
  if (r != CUDA_SUCCESS && r != CUDA_ERROR_OUT_OF_MEMORY && prop.requestedHandleTypes) {
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    if (GVM_REAL(cuMemCreate, handle, size, &prop, 0) == CUDA_SUCCESS) {
      atomic_store(&fd_export_refused, true);
      GVM_LOG_ONCE(GVM_LOG_WARN, "the driver refuses exportable device memory (%d); CUDA IPC of swap-mode "
                                 "allocations will fail", (int)r);
      return CUDA_SUCCESS;
    }
  }
  return r;
}

/*
 * Pinned host memory is slow to create (measured: most of a 1 GiB move's 246 ms is creating and
 * pinning it), so host-side physical memory given back by a move or a free is kept for reuse, up to
 * GVM_SWAP_POOL_MIB (default 16384). Device memory is always given back to the driver.
 *
 * A move to the host copies into the new host memory through a second mapping of it (a staging
 * range) before the application's range is remapped to it. Mapping host memory for the GPU is the
 * slow part of that (cuMemSetAccess builds the GPU's page tables for every page), so each host
 * handle keeps its staging mapping for as long as it lives, in the pool and out of it: a warm move
 * to the host is one copy and one remap. The mover stages pooled handles that lack a staging mapping
 * between passes (gvm_backing_prestage), outside any quiet window. GVM_SWAP_PREWARM_MIB has the mover
 * fill the pool ahead of need (gvm_backing_prewarm, swap.c), so that even the first moves are warm.
 */
#define POOL_SLOTS 512
static struct {
  uint64_t size; /* 0: free slot */
  CUmemGenericAllocationHandle handle;
} pool[POOL_SLOTS];
static uint64_t pool_bytes;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

#define STAGE_SLOTS 4096
static struct stage_entry {
  CUmemGenericAllocationHandle handle; /* 0: free slot */
  CUdeviceptr va;
  uint64_t size;
  int device; /* the GPU given access through it */
} stages[STAGE_SLOTS];

static uint64_t pool_cap(void) {
  static uint64_t cap = UINT64_MAX;
  if (cap == UINT64_MAX) {
    const char *v = getenv("GVM_SWAP_POOL_MIB");
    cap = (v && *v ? strtoull(v, NULL, 10) : 16384ull) << 20;
  }
  return cap;
}

/* pool_lock held */
static struct stage_entry *stage_of(CUmemGenericAllocationHandle handle) {
  for (int i = 0; i < STAGE_SLOTS; i++)
    if (stages[i].handle == handle) return &stages[i];
  return NULL;
}

/* Removes a handle's staging mapping, if it has one (before it is released or restaged). */
static void unstage(CUmemGenericAllocationHandle handle) {
  pthread_mutex_lock(&pool_lock);
  struct stage_entry *e = stage_of(handle), copy = {0};
  if (e) {
    copy = *e;
    *e = (struct stage_entry){0};
  }
  pthread_mutex_unlock(&pool_lock);
  if (!copy.handle) return;
  GVM_REAL(cuMemUnmap, copy.va, copy.size);
  GVM_REAL(cuMemAddressFree, copy.va, copy.size);
}

static void release_host(CUmemGenericAllocationHandle handle) {
  unstage(handle);
  GVM_REAL(cuMemRelease, handle);
}

/* Maps a host handle at a staging range of its own, for good; false when there is no room to remember it. */
static CUresult stage(int device, uint64_t size, CUmemGenericAllocationHandle handle, CUdeviceptr *va) {
  pthread_mutex_lock(&pool_lock);
  struct stage_entry *e = stage_of(0); /* a free slot, claimed below once the mapping exists */
  pthread_mutex_unlock(&pool_lock);
  if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = GVM_REAL(cuMemAddressReserve, va, size, GVM_BACKING_GRANULE, 0, 0);
  if (r != CUDA_SUCCESS) return r;
  r = gvm_backing_attach(*va, size, device, handle);
  if (r != CUDA_SUCCESS) {
    GVM_REAL(cuMemAddressFree, *va, size);
    return r;
  }
  pthread_mutex_lock(&pool_lock);
  e = stage_of(0);
  if (e) *e = (struct stage_entry){handle, *va, size, device};
  pthread_mutex_unlock(&pool_lock);
  if (!e) {
    GVM_REAL(cuMemUnmap, *va, size);
    GVM_REAL(cuMemAddressFree, *va, size);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return CUDA_SUCCESS;
}

/* Takes a pooled host handle of this size, one staged for `device` first; 0 when none. */
static CUmemGenericAllocationHandle pool_take(uint64_t size, int device) {
  CUmemGenericAllocationHandle h = 0;
  pthread_mutex_lock(&pool_lock);
  int pick = -1;
  for (int i = 0; i < POOL_SLOTS; i++)
    if (pool[i].size == size) {
      struct stage_entry *e = stage_of(pool[i].handle);
      if (pick < 0 || (e && e->device == device)) pick = i;
      if (e && e->device == device) break;
    }
  if (pick >= 0) {
    h = pool[pick].handle;
    pool[pick].size = 0;
    pool_bytes -= size;
  }
  pthread_mutex_unlock(&pool_lock);
  return h;
}

CUresult gvm_backing_create(int device, uint64_t size, bool on_device, CUmemGenericAllocationHandle *handle) {
  if (!on_device && (*handle = pool_take(size, device)) != 0) return CUDA_SUCCESS;
  return create(device, size, on_device, handle);
}

CUdeviceptr gvm_backing_staged_at(CUmemGenericAllocationHandle handle, int device) {
  pthread_mutex_lock(&pool_lock);
  struct stage_entry *e = stage_of(handle);
  CUdeviceptr va = e && e->device == device ? e->va : 0;
  pthread_mutex_unlock(&pool_lock);
  return va;
}

CUresult gvm_backing_stage(int device, uint64_t size, CUmemGenericAllocationHandle *handle, CUdeviceptr *va) {
  CUresult r = gvm_backing_create(device, size, false, handle);
  if (r != CUDA_SUCCESS) return r;
  if ((*va = gvm_backing_staged_at(*handle, device)) != 0) return CUDA_SUCCESS;
  unstage(*handle); /* staged for another GPU, if at all */
  r = stage(device, size, *handle, va);
  if (r != CUDA_SUCCESS) gvm_backing_give_back(*handle, size, false);
  return r;
}

void gvm_backing_prestage(int device) {
  for (int round = 0; round < POOL_SLOTS; round++) {
    CUmemGenericAllocationHandle h = 0;
    uint64_t size = 0;
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOL_SLOTS && !h; i++)
      if (pool[i].size && !stage_of(pool[i].handle)) {
        h = pool[i].handle;
        size = pool[i].size;
        pool[i].size = 0;
        pool_bytes -= size;
      }
    pthread_mutex_unlock(&pool_lock);
    if (!h) return;
    CUdeviceptr va;
    bool staged = stage(device, size, h, &va) == CUDA_SUCCESS;
    gvm_backing_give_back(h, size, false);
    if (!staged) return; /* no room to remember stages: leave the rest as they are */
  }
}

size_t gvm_backing_pooled(uint64_t size) {
  size_t n = 0;
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < POOL_SLOTS; i++) n += pool[i].size == size;
  pthread_mutex_unlock(&pool_lock);
  return n;
}

CUresult gvm_backing_prewarm(int device, uint64_t size) {
  pthread_mutex_lock(&pool_lock);
  bool room = pool_bytes + size <= pool_cap();
  pthread_mutex_unlock(&pool_lock);
  if (!room) return CUDA_ERROR_OUT_OF_MEMORY; /* it would be released again at once */
  CUmemGenericAllocationHandle h;
  CUresult r = create(device, size, false, &h);
  if (r != CUDA_SUCCESS) return r;
  CUdeviceptr va;
  (void)stage(device, size, h, &va); /* unstaged it still saves the creation; the mover stages it later */
  gvm_backing_give_back(h, size, false);
  return CUDA_SUCCESS;
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
    release_host(handle);
    return;
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
  memset(stages, 0, sizeof stages);
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
  else if (on_device) GVM_REAL(cuMemRelease, handle);
  else release_host(handle);
  CUresult r3 = GVM_REAL(cuMemAddressFree, va, size);
  return r != CUDA_SUCCESS ? r : r3;
}
