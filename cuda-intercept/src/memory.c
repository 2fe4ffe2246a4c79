/*
 * Memory accounting per GPU: every allocation and free path of the driver API, the limit in oom
 * mode, and the virtual totals cuMemGetInfo reports. Device bytes are kept by origin (plain
 * allocations, the application's own VMM handles, stream-ordered pools) so memory.current is their
 * exact sum; pools are measured by what the driver says they reserve, since freed blocks stay in a
 * pool until it is trimmed.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "backing.h"
#include "registry.h"

static struct gvm_registry allocations = {.lock = PTHREAD_MUTEX_INITIALIZER};
static _Atomic uint64_t alloc_seq;

#define MAX_POOLS 64
struct pool_entry {
  CUmemoryPool pool; /* NULL: free */
  int gpu;
  uint64_t reserved;
};
static struct pool_entry pools[MAX_POOLS];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static bool valid_gpu(int gpu) { return gpu >= 0 && gpu < GVM_MAX_GPUS; }

uint64_t gvm_memory_current(int gpu) {
  if (!valid_gpu(gpu)) return 0;
  struct gvm_gpu_state *g = &gvm_gpus[gpu];
  return atomic_load(&g->sync_bytes) + atomic_load(&g->vmm_bytes) + atomic_load(&g->pool_bytes);
}

uint64_t gvm_memory_limit(int gpu) {
  if (!valid_gpu(gpu) || !gvm_block) return UINT64_MAX;
  uint64_t limit = GVM_LOAD(&gvm_block->gpu[gpu].memory_limit);
  if (!limit) return UINT64_MAX;
  /* memory lent to a more important process by the policy lowers the limit until it comes back */
  uint64_t cap = gvm_policy_cap(gpu);
  return cap < limit ? cap : limit;
}

/*
 * Several threads publish at once (allocations and frees on any thread, the mover, the event thread).
 * A plain store of a value read earlier could land after a newer one and leave the block stale until
 * the next change; so each publisher stores, reads its source again and stores again until they agree:
 * whichever store lands last was checked against the source after it landed.
 */
#define PUBLISH(dst, expr)                    \
  do {                                        \
    uint64_t v_ = (expr);                     \
    for (;;) {                                \
      GVM_STORE((dst), v_);                   \
      uint64_t again_ = (expr);               \
      if (again_ == v_) break;                \
      v_ = again_;                            \
    }                                         \
  } while (0)

void gvm_publish_memory(int gpu) {
  if (!gvm_block || !valid_gpu(gpu)) return;
  struct gvm_gpu_state *g = &gvm_gpus[gpu];
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  PUBLISH(&b->memory_current, gvm_memory_current(gpu));
  uint64_t cur = GVM_LOAD(&b->memory_current), peak = GVM_LOAD(&b->memory_peak);
  while (cur > peak && !__atomic_compare_exchange_n(&b->memory_peak, &peak, cur, false, __ATOMIC_RELEASE,
                                                     __ATOMIC_ACQUIRE)) {
  }
  PUBLISH(&b->memory_swap_current, atomic_load(&g->swap_bytes));
  PUBLISH(&b->managed_bytes, atomic_load(&g->managed_bytes));
  PUBLISH(&b->host_bytes, atomic_load(&g->host_bytes));
  PUBLISH(&b->alloc_count, atomic_load(&g->alloc_count));
  PUBLISH(&b->free_count, atomic_load(&g->free_count));
  PUBLISH(&b->alloc_failures, atomic_load(&g->alloc_failures));
}

/*
 * Reserve `size` device bytes against the limit before asking the driver. The check and the add are
 * one step under limit_lock: with separate atomics, threads allocating at once could overshoot the
 * limit together, or fail because of another thread's attempt that was itself about to be refused.
 * Returns false (and counts a failure) when over the limit.
 */
static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;

static bool fits_locked(int gpu, uint64_t size) {
  uint64_t limit = gvm_memory_limit(gpu), current = gvm_memory_current(gpu);
  return size <= limit && current <= limit - size;
}

static bool reserve(int gpu, _Atomic uint64_t *bucket, uint64_t size) {
  if (!valid_gpu(gpu) || size == 0) return true;
  pthread_mutex_lock(&limit_lock);
  bool fits = fits_locked(gpu, size);
  if (fits) atomic_fetch_add(bucket, size);
  pthread_mutex_unlock(&limit_lock);
  if (!fits) {
    atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
    gvm_publish_memory(gpu);
  }
  return fits;
}

static void unreserve(int gpu, _Atomic uint64_t *bucket, uint64_t size) {
  if (valid_gpu(gpu)) atomic_fetch_sub(bucket, size);
}

static void remember(uint64_t key, uint64_t size, int gpu, int kind, uint64_t aux) {
  CUcontext ctx = NULL;
  if (gvm_real.p_cuCtxGetCurrent) gvm_real.p_cuCtxGetCurrent(&ctx);
  struct gvm_alloc a = {.size = size, .aux = aux, .ctx = ctx, .gpu = gpu, .kind = (uint8_t)kind};
  pthread_mutex_lock(&allocations.lock);
  gvm_registry_put(&allocations, key, &a);
  pthread_mutex_unlock(&allocations.lock);
  if (valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].alloc_count, 1);
}

static bool forget(uint64_t key, struct gvm_alloc *out) {
  for (;;) {
    pthread_mutex_lock(&allocations.lock);
    struct gvm_alloc *a = gvm_registry_get(&allocations, key);
    if (a && a->moving) { /* the mover is changing its physical side: wait for it, briefly */
      pthread_mutex_unlock(&allocations.lock);
      struct timespec ts = {0, 200000};
      nanosleep(&ts, NULL);
      continue;
    }
    bool found = gvm_registry_take(&allocations, key, out);
    pthread_mutex_unlock(&allocations.lock);
    return found;
  }
}

/* Gives back what an allocation counted; used by every free path. */
static void release_counts(const struct gvm_alloc *a) {
  if (!valid_gpu(a->gpu)) return;
  struct gvm_gpu_state *g = &gvm_gpus[a->gpu];
  switch (a->kind) {
  case GVM_ALLOC_DEVICE: atomic_fetch_sub(&g->sync_bytes, a->size); break;
  case GVM_ALLOC_SWAPPABLE: atomic_fetch_sub(a->on_device ? &g->sync_bytes : &g->swap_bytes, a->size); break;
  case GVM_ALLOC_MANAGED: atomic_fetch_sub(&g->managed_bytes, a->size); break;
  case GVM_ALLOC_HOST:
  case GVM_ALLOC_HOST_REG: atomic_fetch_sub(&g->host_bytes, a->size); break;
  case GVM_ALLOC_VMM_HANDLE:
    if (a->on_device) atomic_fetch_sub(&g->vmm_bytes, a->size);
    else atomic_fetch_sub(&g->host_bytes, a->size);
    break;
  default: break; /* ASYNC: the pool's reservation is measured, not derived */
  }
  if (a->kind != GVM_ALLOC_VMM_MAPPING) atomic_fetch_add(&g->free_count, 1);
}

static bool active(void) { return atomic_load_explicit(&gvm_active, memory_order_acquire) == 1; }

/* ---- swap mode: past the limit, the new allocation's physical memory is on the host ---- */
static bool swap_mode(int gpu) {
  return valid_gpu(gpu) && gvm_block && GVM_LOAD(&gvm_block->gpu[gpu].memory_mode) == GVM_MEMORY_MODE_SWAP;
}

/* Swap mode admitted memory that cannot move past the limit: the mover moves movable ranges out. */
static void make_room_if_over(int gpu) {
  if (swap_mode(gpu) && gvm_memory_current(gpu) > gvm_memory_limit(gpu)) gvm_swap_kick();
}

static CUresult swap_alloc(CUdeviceptr *dptr, uint64_t size, int gpu) {
  struct gvm_gpu_state *g = &gvm_gpus[gpu];
  uint64_t rounded = (size + GVM_BACKING_GRANULE - 1) & ~(GVM_BACKING_GRANULE - 1);
  pthread_mutex_lock(&limit_lock);
  bool on_device = fits_locked(gpu, rounded);
  if (on_device) atomic_fetch_add(&g->sync_bytes, rounded);
  pthread_mutex_unlock(&limit_lock);
  CUmemGenericAllocationHandle handle = 0;
  CUresult r = gvm_backing_alloc(g->device, rounded, on_device, dptr, &handle);
  if (r == CUDA_ERROR_OUT_OF_MEMORY && on_device) {
    /* under our limit but the GPU itself is full (other processes): the host takes it */
    atomic_fetch_sub(&g->sync_bytes, rounded);
    on_device = false;
    r = gvm_backing_alloc(g->device, rounded, false, dptr, &handle);
  }
  if (r != CUDA_SUCCESS) {
    if (on_device) atomic_fetch_sub(&g->sync_bytes, rounded);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) atomic_fetch_add(&g->alloc_failures, 1);
    gvm_publish_memory(gpu);
    return r;
  }
  if (!on_device) atomic_fetch_add(&g->swap_bytes, rounded);
  CUcontext ctx = NULL;
  if (gvm_real.p_cuCtxGetCurrent) gvm_real.p_cuCtxGetCurrent(&ctx);
  struct gvm_alloc a = {.size = rounded, .aux = (uint64_t)handle, .ctx = ctx, .gpu = gpu,
                        .kind = GVM_ALLOC_SWAPPABLE, .on_device = on_device, .seq = atomic_fetch_add(&alloc_seq, 1)};
  pthread_mutex_lock(&allocations.lock);
  gvm_registry_put(&allocations, (uint64_t)*dptr, &a);
  pthread_mutex_unlock(&allocations.lock);
  atomic_fetch_add(&g->alloc_count, 1);
  gvm_publish_memory(gpu);
  return CUDA_SUCCESS;
}

/* ---- the mover's view of swappable allocations ---- */
struct candidate_query {
  int gpu;
  bool on_device;
  struct gvm_swap_candidate *out;
  size_t room, count;
};

static bool collect(uint64_t key, struct gvm_alloc *a, void *arg) {
  struct candidate_query *q = arg;
  /* a range exported through IPC never leaves the GPU: another process maps its physical memory */
  if (a->kind == GVM_ALLOC_SWAPPABLE && a->gpu == q->gpu && a->on_device == q->on_device && !a->moving &&
      !(a->pinned && a->on_device) && q->count < q->room)
    q->out[q->count++] = (struct gvm_swap_candidate){key, a->size, a->aux, a->seq};
  return false;
}

static int by_seq(const void *x, const void *y) {
  const struct gvm_swap_candidate *a = x, *b = y;
  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Swappable allocations of a GPU on one side, oldest first. */
size_t gvm_swap_candidates(int gpu, bool on_device, struct gvm_swap_candidate *out, size_t room) {
  struct candidate_query q = {gpu, on_device, out, room, 0};
  pthread_mutex_lock(&allocations.lock);
  gvm_registry_sweep(&allocations, collect, &q);
  pthread_mutex_unlock(&allocations.lock);
  qsort(out, q.count, sizeof *out, by_seq);
  return q.count;
}

/* Pinned ranges that are on the host (exported while there): the mover brings them back first. */
static bool collect_pinned(uint64_t key, struct gvm_alloc *a, void *arg) {
  struct candidate_query *q = arg;
  if (a->kind == GVM_ALLOC_SWAPPABLE && a->gpu == q->gpu && a->pinned && !a->on_device && !a->moving &&
      q->count < q->room)
    q->out[q->count++] = (struct gvm_swap_candidate){key, a->size, a->aux, a->seq};
  return false;
}

size_t gvm_swap_pinned_away(int gpu, struct gvm_swap_candidate *out, size_t room) {
  struct candidate_query q = {gpu, false, out, room, 0};
  pthread_mutex_lock(&allocations.lock);
  gvm_registry_sweep(&allocations, collect_pinned, &q);
  pthread_mutex_unlock(&allocations.lock);
  return q.count;
}

struct containing {
  uint64_t ptr, key;
};
static bool find_containing(uint64_t key, struct gvm_alloc *a, void *arg) {
  struct containing *c = arg;
  if (a->kind == GVM_ALLOC_SWAPPABLE && c->ptr - key < a->size) c->key = key;
  return false;
}

static void pin_state(uint64_t va, const struct gvm_alloc *a, struct gvm_swap_pin *out) {
  *out = (struct gvm_swap_pin){va, a->size, a->aux, a->gpu, a->on_device};
}

/* The swappable range holding ptr (its start or any byte of it), marked pinned; false if none. */
bool gvm_swap_pin(uint64_t ptr, struct gvm_swap_pin *out) {
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *a = gvm_registry_get(&allocations, ptr);
  uint64_t va = ptr;
  if (!a || a->kind != GVM_ALLOC_SWAPPABLE) { /* an inner pointer: rare, so a sweep is fine */
    struct containing c = {ptr, 0};
    gvm_registry_sweep(&allocations, find_containing, &c);
    va = c.key;
    a = va ? gvm_registry_get(&allocations, va) : NULL;
  }
  if (a) {
    a->pinned = 1;
    pin_state(va, a, out);
  }
  pthread_mutex_unlock(&allocations.lock);
  return a != NULL;
}

/* Where a range's physical memory is now; false while the mover has it in hand, or once freed. */
bool gvm_swap_state(uint64_t va, struct gvm_swap_pin *out) {
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *a = gvm_registry_get(&allocations, va);
  bool ok = a && a->kind == GVM_ALLOC_SWAPPABLE && !a->moving;
  if (ok) pin_state(va, a, out);
  pthread_mutex_unlock(&allocations.lock);
  return ok;
}

/* Claims an allocation for a move if it is still the one the candidate saw. */
bool gvm_swap_begin(uint64_t va, uint64_t handle) {
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *a = gvm_registry_get(&allocations, va);
  bool ok = a && a->kind == GVM_ALLOC_SWAPPABLE && a->aux == handle && !a->moving;
  if (ok) a->moving = 1;
  pthread_mutex_unlock(&allocations.lock);
  return ok;
}

void gvm_swap_end(uint64_t va, bool moved, uint64_t new_handle, bool now_on_device) {
  int gpu = -1;
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *a = gvm_registry_get(&allocations, va);
  if (a) {
    if (moved && a->on_device != now_on_device) {
      struct gvm_gpu_state *g = &gvm_gpus[a->gpu];
      atomic_fetch_sub(a->on_device ? &g->sync_bytes : &g->swap_bytes, a->size);
      atomic_fetch_add(now_on_device ? &g->sync_bytes : &g->swap_bytes, a->size);
      a->on_device = now_on_device;
      a->aux = new_handle;
    }
    a->moving = 0;
    gpu = a->gpu;
  }
  pthread_mutex_unlock(&allocations.lock);
  gvm_publish_memory(gpu);
}

/* ---- plain device allocations ---- */
static CUresult device_alloc(CUdeviceptr *dptr, uint64_t size, CUresult (*call)(void *), void *arg) {
  if (!active()) return call(arg);
  int gpu = gvm_current_gpu();
  if (gvm_kernel_mode && dptr) return gvm_kernel_alloc(dptr, size, gpu); /* managed, so the module can evict it */
  /* large allocations in swap mode get a range whose physical side can move; small ones stay plain */
  bool plain_in_swap = false;
  if (swap_mode(gpu) && dptr) {
    if (size >= GVM_BACKING_GRANULE) {
      CUresult r = swap_alloc(dptr, size, gpu);
      if (r == CUDA_SUCCESS || r == CUDA_ERROR_OUT_OF_MEMORY) return r;
      /* the driver refused a step of the movable range (not memory): the application still gets its
       * memory, as a plain allocation that cannot move */
      GVM_LOG_ONCE(GVM_LOG_WARN, "a movable range could not be set up (CUDA error %d); the allocation stays plain", (int)r);
    }
    /* small allocations stay plain (2 MiB ranges would waste most of it); swap mode promises that
     * allocations succeed, so past the limit they are admitted and the mover moves large ranges out */
    plain_in_swap = true;
    atomic_fetch_add(&gvm_gpus[gpu].sync_bytes, size);
  } else if (!reserve(gpu, valid_gpu(gpu) ? &gvm_gpus[gpu].sync_bytes : NULL, size)) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  CUresult r = call(arg);
  /* the GPU itself is full: a latency process may get memory best-effort peers move to the host */
  if (r == CUDA_ERROR_OUT_OF_MEMORY && gvm_policy_need_memory(gpu, size)) r = call(arg);
  if (r != CUDA_SUCCESS) {
    unreserve(gpu, valid_gpu(gpu) ? &gvm_gpus[gpu].sync_bytes : NULL, size);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
  } else {
    remember((uint64_t)*dptr, size, gpu, GVM_ALLOC_DEVICE, 0);
  }
  gvm_publish_memory(gpu);
  if (plain_in_swap && r == CUDA_SUCCESS) make_room_if_over(gpu);
  return r;
}

/* Kernel mode's managed stand-ins for cuMemAlloc and pitch count as device memory (no limit here). */
void gvm_memory_count_device(int gpu, CUresult r, CUdeviceptr ptr, uint64_t size) {
  if (r == CUDA_SUCCESS) {
    if (valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].sync_bytes, size);
    remember((uint64_t)ptr, size, gpu, GVM_ALLOC_DEVICE, 0);
  } else if (r == CUDA_ERROR_OUT_OF_MEMORY && valid_gpu(gpu)) {
    atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
  }
  gvm_publish_memory(gpu);
}

struct alloc_args {
  CUdeviceptr *dptr;
  size_t size;
};
static CUresult call_alloc(void *p) {
  struct alloc_args *a = p;
  return GVM_REAL(cuMemAlloc_v2, a->dptr, a->size);
}
CUresult gvm_hook_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
  struct alloc_args a = {dptr, bytesize};
  return device_alloc(dptr, bytesize, call_alloc, &a);
}

struct pitch_args {
  CUdeviceptr *dptr;
  size_t *pitch, width, height;
  unsigned elem;
};
static CUresult call_pitch(void *p) {
  struct pitch_args *a = p;
  return GVM_REAL(cuMemAllocPitch_v2, a->dptr, a->pitch, a->width, a->height, a->elem);
}
CUresult gvm_hook_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t width, size_t height,
                                     unsigned int elem) {
  struct pitch_args a = {dptr, pPitch, width, height, elem};
  if (!active() || !dptr || !pPitch) return call_pitch(&a);
  /* the pitch is the driver's choice: hold width x height against the limit during the call, then the
   * padding the driver added, so a padded allocation cannot end past the limit */
  int gpu = gvm_current_gpu();
  if (gvm_kernel_mode) return gvm_kernel_alloc_pitch(dptr, pPitch, width, height, elem, gpu);
  _Atomic uint64_t *bucket = valid_gpu(gpu) ? &gvm_gpus[gpu].sync_bytes : NULL;
  uint64_t guess = (uint64_t)width * height;
  if (!reserve(gpu, bucket, guess)) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = call_pitch(&a);
  bool counted = false; /* reserve() counts its own refusals */
  if (r == CUDA_SUCCESS) {
    uint64_t size = (uint64_t)*pPitch * height;
    if (size > guess && !reserve(gpu, bucket, size - guess)) {
      GVM_REAL(cuMemFree_v2, *dptr);
      *dptr = 0;
      r = CUDA_ERROR_OUT_OF_MEMORY;
      counted = true;
    } else {
      if (size < guess) unreserve(gpu, bucket, guess - size);
      remember((uint64_t)*dptr, size, gpu, GVM_ALLOC_DEVICE, 0);
    }
  }
  if (r != CUDA_SUCCESS) {
    unreserve(gpu, bucket, guess);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && !counted && valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
  }
  gvm_publish_memory(gpu);
  return r;
}

CUresult gvm_hook_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
  CUresult r = GVM_REAL(cuMemAllocManaged, dptr, bytesize, flags);
  if (r == CUDA_SUCCESS && active()) {
    int gpu = gvm_current_gpu();
    if (valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].managed_bytes, bytesize);
    remember((uint64_t)*dptr, bytesize, gpu, GVM_ALLOC_MANAGED, 0);
    gvm_publish_memory(gpu);
  }
  return r;
}

/*
 * A free forgets the allocation before the driver frees it: once freed, the driver may hand the same
 * address to another thread at once, whose allocation must not be taken for this one. Where the free
 * fails the allocation is remembered again, unchanged.
 */
static bool forget_before_free(uint64_t key, struct gvm_alloc *a) { return active() && key && forget(key, a); }

static void settle_free(CUresult r, bool known, uint64_t key, const struct gvm_alloc *a) {
  if (!known) return;
  if (r != CUDA_SUCCESS) {
    pthread_mutex_lock(&allocations.lock);
    gvm_registry_put(&allocations, key, a);
    pthread_mutex_unlock(&allocations.lock);
    return;
  }
  release_counts(a);
  gvm_publish_memory(a->gpu);
}

/* The body of a free hook whose allocation is known by `key`; the driver call takes the hook's arguments. */
#define FREE_FORGETTING_FIRST(sym, key, ...)                  \
  struct gvm_alloc a;                                         \
  bool known = forget_before_free((uint64_t)(key), &a);       \
  CUresult r = GVM_REAL(sym, __VA_ARGS__);                    \
  settle_free(r, known, (uint64_t)(key), &a);                 \
  return r

CUresult gvm_hook_cuMemFree_v2(CUdeviceptr dptr) {
  struct gvm_alloc a;
  bool known = active() && dptr && forget((uint64_t)dptr, &a);
  if (known && a.kind == GVM_ALLOC_SWAPPABLE && a.pinned) gvm_ipc_forget((uint64_t)dptr);
  CUresult r = known && a.kind == GVM_ALLOC_SWAPPABLE ? gvm_backing_free(dptr, a.size, (CUmemGenericAllocationHandle)a.aux, a.on_device)
                                                      : GVM_REAL(cuMemFree_v2, dptr);
  settle_free(r, known, (uint64_t)dptr, &a);
  if (known && r == CUDA_SUCCESS) {
    if (a.kind == GVM_ALLOC_ASYNC) gvm_monitor_kick();
    if (swap_mode(a.gpu) && atomic_load(&gvm_gpus[a.gpu].swap_bytes) > 0) gvm_swap_kick(); /* room to move back */
  }
  return r;
}

/* ---- host memory ---- */
static void host_allocated(CUresult r, void *p, size_t size, int kind) {
  if (r != CUDA_SUCCESS || !active() || !p) return;
  int gpu = gvm_current_gpu();
  if (gpu < 0) gpu = 0; /* pinned memory is process-wide; shown under the current or first GPU */
  atomic_fetch_add(&gvm_gpus[gpu].host_bytes, size);
  remember((uint64_t)(uintptr_t)p, size, gpu, kind, 0);
  gvm_publish_memory(gpu);
}

CUresult gvm_hook_cuMemAllocHost_v2(void **pp, size_t bytesize) {
  CUresult r = GVM_REAL(cuMemAllocHost_v2, pp, bytesize);
  host_allocated(r, pp ? *pp : NULL, bytesize, GVM_ALLOC_HOST);
  return r;
}
CUresult gvm_hook_cuMemHostAlloc(void **pp, size_t bytesize, unsigned int flags) {
  CUresult r = GVM_REAL(cuMemHostAlloc, pp, bytesize, flags);
  host_allocated(r, pp ? *pp : NULL, bytesize, GVM_ALLOC_HOST);
  return r;
}
CUresult gvm_hook_cuMemFreeHost(void *p) { FREE_FORGETTING_FIRST(cuMemFreeHost, (uintptr_t)p, p); }
CUresult gvm_hook_cuMemHostRegister(void *p, size_t bytesize, unsigned int flags) {
  CUresult r = GVM_REAL(cuMemHostRegister, p, bytesize, flags);
  host_allocated(r, p, bytesize, GVM_ALLOC_HOST_REG);
  return r;
}
CUresult gvm_hook_cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int flags) {
  CUresult r = GVM_REAL(cuMemHostRegister_v2, p, bytesize, flags);
  host_allocated(r, p, bytesize, GVM_ALLOC_HOST_REG);
  return r;
}
CUresult gvm_hook_cuMemHostUnregister(void *p) { FREE_FORGETTING_FIRST(cuMemHostUnregister, (uintptr_t)p, p); }

/* ---- stream-ordered allocation: pools are measured by their reservation ---- */
static void pool_track(CUmemoryPool pool, int gpu) {
  if (!pool || !valid_gpu(gpu)) return;
  pthread_mutex_lock(&pool_lock);
  int free_slot = -1;
  for (int i = 0; i < MAX_POOLS; i++) {
    if (pools[i].pool == pool) {
      free_slot = -2;
      break;
    }
    if (!pools[i].pool && free_slot < 0) free_slot = i;
  }
  if (free_slot >= 0) pools[free_slot] = (struct pool_entry){pool, gpu, 0};
  else if (free_slot == -1) GVM_LOG_ONCE(GVM_LOG_WARN, "more than %d memory pools; later ones not measured", MAX_POOLS);
  pthread_mutex_unlock(&pool_lock);
}

/* Re-reads every pool's reservation (driver calls made outside pool_lock) and republishes. Refreshes
 * run one at a time: two racing ones could otherwise store an older reading over a newer one. */
static pthread_mutex_t refresh_lock = PTHREAD_MUTEX_INITIALIZER;

void gvm_pools_refresh(void) {
  pthread_mutex_lock(&refresh_lock);
  CUmemoryPool snapshot[MAX_POOLS];
  int gpu_of[MAX_POOLS];
  int n = 0;
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < MAX_POOLS; i++)
    if (pools[i].pool) {
      snapshot[n] = pools[i].pool;
      gpu_of[n++] = pools[i].gpu;
    }
  pthread_mutex_unlock(&pool_lock);
  uint64_t per_gpu[GVM_MAX_GPUS] = {0};
  bool touched[GVM_MAX_GPUS] = {false};
  for (int i = 0; i < n; i++) {
    cuuint64_t reserved = 0;
    touched[gpu_of[i]] = true;
    if (GVM_REAL(cuMemPoolGetAttribute, snapshot[i], CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) ==
        CUDA_SUCCESS)
      per_gpu[gpu_of[i]] += reserved;
  }
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    if (!touched[g]) continue;
    if (atomic_exchange(&gvm_gpus[g].pool_bytes, per_gpu[g]) != per_gpu[g]) gvm_publish_memory(g);
  }
  pthread_mutex_unlock(&refresh_lock);
}

/* Would this allocation grow the pool past the limit? A pool with enough idle reservation reuses it. */
/*
 * Stream-ordered pool memory belongs to the driver's pool and cannot be remapped, so it never moves.
 * In swap mode a pool allocation past the limit is still admitted (swap mode promises that
 * allocations succeed), and the mover makes room by moving the process's movable ranges out.
 */
static bool pool_admits(CUmemoryPool pool, int gpu, size_t size) {
  uint64_t limit = gvm_memory_limit(gpu);
  if (limit == UINT64_MAX || !pool || swap_mode(gpu)) return true;
  if (gvm_capture_active()) { /* graph memory: judged by what we know, without asking the pool */
    if (gvm_memory_current(gpu) + size <= limit) return true;
    atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
    return false;
  }
  cuuint64_t reserved = 0, used = 0;
  GVM_REAL(cuMemPoolGetAttribute, pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved);
  GVM_REAL(cuMemPoolGetAttribute, pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used);
  if (reserved >= used && reserved - used >= size) return true;
  if (gvm_memory_current(gpu) + size <= limit) return true;
  atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
  gvm_publish_memory(gpu);
  return false;
}

static _Atomic(CUmemoryPool) known_pool[GVM_MAX_GPUS];

static CUmemoryPool current_pool(int gpu) {
  if (!valid_gpu(gpu)) return NULL;
  if (gvm_capture_active()) return atomic_load(&known_pool[gpu]); /* no queries inside a capture */
  CUmemoryPool pool = NULL;
  if (valid_gpu(gpu) && GVM_REAL(cuDeviceGetMemPool, &pool, gvm_gpus[gpu].device) != CUDA_SUCCESS)
    GVM_REAL(cuDeviceGetDefaultMemPool, &pool, gvm_gpus[gpu].device);
  atomic_store(&known_pool[gpu], pool);
  return pool;
}

static void async_allocated(CUresult r, CUdeviceptr *dptr, size_t size, CUmemoryPool pool, int gpu) {
  if (r != CUDA_SUCCESS) {
    if (r == CUDA_ERROR_OUT_OF_MEMORY && valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].alloc_failures, 1);
    return;
  }
  pool_track(pool, gpu);
  remember((uint64_t)*dptr, size, gpu, GVM_ALLOC_ASYNC, (uint64_t)(uintptr_t)pool);
  if (gvm_capture_active()) gvm_monitor_kick(); /* the event thread measures the pool instead */
  else gvm_pools_refresh();
  gvm_publish_memory(gpu);
  make_room_if_over(gpu);
}

#define ALLOC_ASYNC(sym, pool_expr, ...)                                   \
  if (!active()) return GVM_REAL(sym, __VA_ARGS__);                        \
  int gpu = gvm_current_gpu();                                             \
  CUmemoryPool pool = pool_expr;                                           \
  if (!pool_admits(pool, gpu, bytesize)) return CUDA_ERROR_OUT_OF_MEMORY;  \
  CUresult r = GVM_REAL(sym, __VA_ARGS__);                                 \
  async_allocated(r, dptr, bytesize, pool, gpu);                           \
  return r

CUresult gvm_hook_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream s) {
  ALLOC_ASYNC(cuMemAllocAsync, current_pool(gpu), dptr, bytesize, s);
}
CUresult gvm_hook_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s) {
  ALLOC_ASYNC(cuMemAllocAsync_ptsz, current_pool(gpu), dptr, bytesize, s);
}
CUresult gvm_hook_cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool p, CUstream s) {
  ALLOC_ASYNC(cuMemAllocFromPoolAsync, p, dptr, bytesize, p, s);
}
CUresult gvm_hook_cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool p, CUstream s) {
  ALLOC_ASYNC(cuMemAllocFromPoolAsync_ptsz, p, dptr, bytesize, p, s);
}

/* the pool keeps the bytes until trimmed; the monitor re-measures it */
CUresult gvm_hook_cuMemFreeAsync(CUdeviceptr dptr, CUstream s) { FREE_FORGETTING_FIRST(cuMemFreeAsync, dptr, dptr, s); }
CUresult gvm_hook_cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s) {
  FREE_FORGETTING_FIRST(cuMemFreeAsync_ptsz, dptr, dptr, s);
}

CUresult gvm_hook_cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  CUresult r = GVM_REAL(cuMemPoolTrimTo, pool, keep);
  if (active()) gvm_monitor_kick();
  return r;
}

CUresult gvm_hook_cuMemPoolDestroy(CUmemoryPool pool) {
  /* Out of the table before the driver frees it, and after any refresh that is querying it: the event
   * thread must never hand the driver a destroyed pool (TSan caught it reading one freed by the fake). */
  int gpu = -1;
  pthread_mutex_lock(&refresh_lock);
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < MAX_POOLS; i++)
    if (pools[i].pool == pool) {
      gpu = pools[i].gpu;
      pools[i].pool = NULL;
    }
  pthread_mutex_unlock(&pool_lock);
  pthread_mutex_unlock(&refresh_lock);
  CUresult r = GVM_REAL(cuMemPoolDestroy, pool);
  if (r != CUDA_SUCCESS && gpu >= 0) pool_track(pool, gpu); /* still there: measure it again */
  if (r == CUDA_SUCCESS) {
    for (int g = 0; g < GVM_MAX_GPUS; g++) atomic_store(&gvm_gpus[g].pool_bytes, 0);
    gvm_pools_refresh();
    for (int g = 0; g < GVM_MAX_GPUS; g++) gvm_publish_memory(g);
  }
  return r;
}

/* ---- VMM: physical handles count while they exist (released handles live until unmapped) ---- */
CUresult gvm_hook_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                              unsigned long long flags) {
  if (!active() || !prop) return GVM_REAL(cuMemCreate, handle, size, prop, flags);
  bool on_device = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
  int gpu = on_device ? prop->location.id : gvm_current_gpu();
  if (gpu < 0) gpu = 0;
  _Atomic uint64_t *bucket = valid_gpu(gpu) ? (on_device ? &gvm_gpus[gpu].vmm_bytes : &gvm_gpus[gpu].host_bytes) : NULL;
  if (on_device && !reserve(gpu, bucket, size)) return CUDA_ERROR_OUT_OF_MEMORY;
  if (!on_device && bucket) atomic_fetch_add(bucket, size);
  CUresult r = GVM_REAL(cuMemCreate, handle, size, prop, flags);
  if (r == CUDA_ERROR_OUT_OF_MEMORY && on_device && gvm_policy_need_memory(gpu, size))
    r = GVM_REAL(cuMemCreate, handle, size, prop, flags);
  if (r != CUDA_SUCCESS) {
    unreserve(gpu, bucket, size);
  } else {
    struct gvm_alloc a = {.size = size, .gpu = gpu, .kind = GVM_ALLOC_VMM_HANDLE, .on_device = on_device};
    pthread_mutex_lock(&allocations.lock);
    gvm_registry_put(&allocations, (uint64_t)*handle, &a);
    pthread_mutex_unlock(&allocations.lock);
    if (valid_gpu(gpu)) atomic_fetch_add(&gvm_gpus[gpu].alloc_count, 1);
  }
  gvm_publish_memory(gpu);
  return r;
}

/* Called with the registry lock held: frees a handle's bytes once released and unmapped. */
static bool settle_handle(uint64_t handle, struct gvm_alloc *h) {
  if (!h->released || h->map_count > 0) return false;
  struct gvm_alloc copy = *h;
  gvm_registry_take(&allocations, handle, NULL);
  release_counts(&copy);
  return true;
}

CUresult gvm_hook_cuMemRelease(CUmemGenericAllocationHandle handle) {
  CUresult r = GVM_REAL(cuMemRelease, handle);
  if (r != CUDA_SUCCESS || !active()) return r;
  int gpu = -1;
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *h = gvm_registry_get(&allocations, (uint64_t)handle);
  if (h && h->kind == GVM_ALLOC_VMM_HANDLE) {
    gpu = h->gpu;
    h->released = 1;
    settle_handle((uint64_t)handle, h);
  }
  pthread_mutex_unlock(&allocations.lock);
  gvm_publish_memory(gpu);
  return r;
}

CUresult gvm_hook_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                           unsigned long long flags) {
  CUresult r = GVM_REAL(cuMemMap, ptr, size, offset, handle, flags);
  if (r != CUDA_SUCCESS || !active()) return r;
  pthread_mutex_lock(&allocations.lock);
  struct gvm_alloc *h = gvm_registry_get(&allocations, (uint64_t)handle);
  if (h && h->kind == GVM_ALLOC_VMM_HANDLE) {
    h->map_count++;
    struct gvm_alloc m = {.size = size, .aux = (uint64_t)handle, .gpu = h->gpu, .kind = GVM_ALLOC_VMM_MAPPING};
    gvm_registry_put(&allocations, (uint64_t)ptr, &m);
  }
  pthread_mutex_unlock(&allocations.lock);
  return r;
}

CUresult gvm_hook_cuMemUnmap(CUdeviceptr ptr, size_t size) {
  CUresult r = GVM_REAL(cuMemUnmap, ptr, size);
  if (r != CUDA_SUCCESS || !active()) return r;
  int gpus_touched[GVM_MAX_GPUS] = {0};
  pthread_mutex_lock(&allocations.lock);
  /* the range may span several mappings laid end to end */
  for (uint64_t at = ptr, end = ptr + size; at < end;) {
    struct gvm_alloc m;
    if (!gvm_registry_take(&allocations, at, &m) || m.kind != GVM_ALLOC_VMM_MAPPING || !m.size) break;
    struct gvm_alloc *h = gvm_registry_get(&allocations, m.aux);
    if (h && h->map_count > 0) {
      h->map_count--;
      if (valid_gpu(h->gpu)) gpus_touched[h->gpu] = 1;
      settle_handle(m.aux, h);
    }
    at += m.size;
  }
  pthread_mutex_unlock(&allocations.lock);
  for (int g = 0; g < GVM_MAX_GPUS; g++)
    if (gpus_touched[g]) gvm_publish_memory(g);
  return r;
}

/* ---- virtual totals ---- */
CUresult gvm_hook_cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  CUresult r = GVM_REAL(cuMemGetInfo_v2, free_bytes, total_bytes);
  if (r != CUDA_SUCCESS || !active() || !free_bytes || !total_bytes) return r;
  int gpu = gvm_current_gpu();
  uint64_t limit = gvm_memory_limit(gpu);
  if (limit == UINT64_MAX || limit >= *total_bytes) return r;
  uint64_t used = gvm_memory_current(gpu);
  uint64_t room = used >= limit ? 0 : limit - used;
  *total_bytes = limit;
  if (room < *free_bytes) *free_bytes = room;
  return r;
}

/* ---- contexts going away take their allocations with them ---- */
struct ending_context {
  CUcontext ctx;
  struct swappable_range {
    uint64_t va, size, handle;
    bool on_device;
  } *ranges;
  size_t count, room;
};

static bool owned_by(uint64_t key, struct gvm_alloc *a, void *arg) {
  struct ending_context *end = arg;
  if (a->ctx != end->ctx || a->kind == GVM_ALLOC_VMM_HANDLE || a->kind == GVM_ALLOC_VMM_MAPPING) return false;
  if (a->kind == GVM_ALLOC_SWAPPABLE) {
    /* the driver frees cuMemAlloc memory with its context; ours it does not know: free it after the sweep */
    if (end->count == end->room) return false; /* no room to remember it: keep it rather than leak the record */
    end->ranges[end->count++] = (struct swappable_range){key, a->size, a->aux, a->on_device};
  }
  release_counts(a);
  return true;
}

void gvm_memory_forget_context(CUcontext ctx) {
  if (!ctx) return;
  struct ending_context end = {.ctx = ctx, .room = 4096};
  end.ranges = malloc(end.room * sizeof *end.ranges);
  if (!end.ranges) end.room = 0;
  pthread_mutex_lock(&allocations.lock);
  gvm_registry_sweep(&allocations, owned_by, &end);
  pthread_mutex_unlock(&allocations.lock);
  for (size_t i = 0; i < end.count; i++) gvm_ipc_forget(end.ranges[i].va);
  for (size_t i = 0; i < end.count; i++)
    gvm_backing_free(end.ranges[i].va, end.ranges[i].size, (CUmemGenericAllocationHandle)end.ranges[i].handle,
                     end.ranges[i].on_device);
  free(end.ranges);
  for (int g = 0; g < GVM_MAX_GPUS; g++) gvm_publish_memory(g);
}

void gvm_memory_reset(void) {
  gvm_registry_init(&allocations);
  pthread_mutex_init(&pool_lock, NULL);
  pthread_mutex_init(&limit_lock, NULL);
  pthread_mutex_init(&refresh_lock, NULL);
  memset(pools, 0, sizeof pools);
  for (int g = 0; g < GVM_MAX_GPUS; g++) atomic_store(&known_pool[g], NULL);
}
