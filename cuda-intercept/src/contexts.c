/*
 * Contexts and the GPU each belongs to. Launch and allocation hooks ask "which GPU is this for?";
 * the answer comes from a small table filled when contexts are created, read without a lock.
 */
#include <pthread.h>
#include <string.h>

#include "agent.h"

struct gvm_gpu_state gvm_gpus[GVM_MAX_GPUS];
_Atomic int gvm_gpu_count;

#define MAX_CONTEXTS 256
struct ctx_entry {
  _Atomic(CUcontext) ctx; /* NULL: free slot */
  _Atomic int gpu;
  bool primary;
};
static struct ctx_entry contexts[MAX_CONTEXTS];
static _Atomic int live_contexts;
static _Atomic(CUcontext) single_ctx; /* the only live context, NULL when there are none or several */
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER; /* writers only, never across a driver call */
static void update_single(void);

static _Thread_local CUcontext tls_ctx;
static _Thread_local int tls_gpu = -1;
static _Atomic unsigned ctx_generation; /* bumped on every unregister: invalidates the thread caches */
static _Thread_local unsigned tls_generation;

static int lookup(CUcontext ctx) {
  for (int i = 0; i < MAX_CONTEXTS; i++)
    if (atomic_load_explicit(&contexts[i].ctx, memory_order_acquire) == ctx)
      return atomic_load_explicit(&contexts[i].gpu, memory_order_relaxed);
  return -1;
}

static int gpu_of_device(CUdevice dev) {
  int n = atomic_load(&gvm_gpu_count);
  for (int i = 0; i < n; i++)
    if (gvm_gpus[i].present && gvm_gpus[i].device == dev) return i;
  /* before the agent enumerated devices, CUdevice values are the ordinals */
  return (dev >= 0 && dev < GVM_MAX_GPUS) ? (int)dev : -1;
}

static void register_context(CUcontext ctx, int gpu, bool primary) {
  if (!ctx || gpu < 0) return;
  pthread_mutex_lock(&ctx_lock);
  int free_slot = -1;
  for (int i = 0; i < MAX_CONTEXTS; i++) {
    CUcontext c = atomic_load(&contexts[i].ctx);
    if (c == ctx) {
      free_slot = -2;
      break;
    }
    if (!c && free_slot == -1) free_slot = i;
  }
  if (free_slot >= 0) {
    atomic_store(&contexts[free_slot].gpu, gpu);
    contexts[free_slot].primary = primary;
    atomic_store_explicit(&contexts[free_slot].ctx, ctx, memory_order_release);
    atomic_fetch_add(&live_contexts, 1);
  } else if (free_slot == -1) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "more than %d contexts; later ones are attributed by lookup", MAX_CONTEXTS);
  }
  update_single();
  pthread_mutex_unlock(&ctx_lock);
}

static void unregister_context(CUcontext ctx) {
  pthread_mutex_lock(&ctx_lock);
  for (int i = 0; i < MAX_CONTEXTS; i++)
    if (atomic_load(&contexts[i].ctx) == ctx) {
      atomic_store(&contexts[i].ctx, NULL);
      atomic_fetch_sub(&live_contexts, 1);
    }
  atomic_fetch_add(&ctx_generation, 1);
  update_single();
  pthread_mutex_unlock(&ctx_lock);
}

int gvm_context_gpu(CUcontext ctx) {
  if (!ctx) return -1;
  unsigned gen = atomic_load_explicit(&ctx_generation, memory_order_acquire);
  if (ctx == tls_ctx && gen == tls_generation) return tls_gpu;
  int gpu = lookup(ctx);
  if (gpu < 0) {
    /* a context made through a path we did not see: ask the driver once, then remember it */
    CUdevice dev;
    CUcontext popped;
    if (GVM_REAL(cuCtxPushCurrent_v2, ctx) == CUDA_SUCCESS) {
      if (GVM_REAL(cuCtxGetDevice, &dev) == CUDA_SUCCESS) gpu = gpu_of_device(dev);
      GVM_REAL(cuCtxPopCurrent_v2, &popped);
    }
    if (gpu >= 0) register_context(ctx, gpu, false);
  }
  tls_ctx = ctx;
  tls_gpu = gpu;
  tls_generation = gen;
  return gpu;
}

int gvm_current_gpu(void) {
  CUcontext ctx = NULL;
  if (!gvm_real.p_cuCtxGetCurrent || gvm_real.p_cuCtxGetCurrent(&ctx) != CUDA_SUCCESS) return -1;
  return gvm_context_gpu(ctx);
}

CUcontext gvm_single_context(void) { return atomic_load_explicit(&single_ctx, memory_order_acquire); }

/* Called with ctx_lock held after any change to the table. */
static void update_single(void) {
  CUcontext only = NULL;
  if (atomic_load(&live_contexts) == 1)
    for (int i = 0; i < MAX_CONTEXTS && !only; i++) only = atomic_load(&contexts[i].ctx);
  atomic_store_explicit(&single_ctx, only, memory_order_release);
}

void gvm_contexts_reset(void) {
  pthread_mutex_init(&ctx_lock, NULL);
  memset(contexts, 0, sizeof contexts);
  memset(gvm_gpus, 0, sizeof gvm_gpus);
  atomic_store(&live_contexts, 0);
  atomic_store(&single_ctx, NULL);
  atomic_store(&gvm_gpu_count, 0);
  atomic_fetch_add(&ctx_generation, 1);
}

void gvm_publish_contexts(int gpu) {
  if (!gvm_block || gpu < 0 || gpu >= GVM_MAX_GPUS) return;
  int n = atomic_load(&gvm_gpus[gpu].explicit_contexts) + (atomic_load(&gvm_gpus[gpu].primary_refs) > 0);
  GVM_STORE(&gvm_block->gpu[gpu].contexts, (uint32_t)(n < 0 ? 0 : n));
}

/* Everything that dies with a context: the agent's stream marks and the memory it held. */
static void context_ending(CUcontext ctx) {
  gvm_streams_retire_context(ctx);
  gvm_memory_forget_context(ctx);
  unregister_context(ctx);
}

/* ---- primary contexts ---- */
CUresult gvm_hook_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  gvm_agent_start(); /* cuInit may have escaped us (a pointer from a table we never saw) */
  int gpu = gpu_of_device(dev);
  gvm_rm_set_creating_gpu(gpu);
  CUresult r = GVM_REAL(cuDevicePrimaryCtxRetain, pctx, dev);
  gvm_rm_set_creating_gpu(-1);
  if (r == CUDA_SUCCESS && gpu >= 0) {
    register_context(*pctx, gpu, true);
    atomic_fetch_add(&gvm_gpus[gpu].primary_refs, 1);
    gvm_publish_contexts(gpu);
    gvm_rm_publish_all();
  }
  return r;
}

static CUcontext primary_of(CUdevice dev) {
  int gpu = gpu_of_device(dev);
  for (int i = 0; i < MAX_CONTEXTS; i++)
    if (contexts[i].primary && atomic_load(&contexts[i].gpu) == gpu && atomic_load(&contexts[i].ctx))
      return atomic_load(&contexts[i].ctx);
  return NULL;
}

static void primary_released(CUdevice dev, bool reset) {
  int gpu = gpu_of_device(dev);
  if (gpu < 0) return;
  int refs = atomic_load(&gvm_gpus[gpu].primary_refs);
  if (reset || refs <= 1) {
    CUcontext ctx = primary_of(dev);
    if (ctx) context_ending(ctx);
    atomic_store(&gvm_gpus[gpu].primary_refs, 0);
  } else {
    atomic_fetch_sub(&gvm_gpus[gpu].primary_refs, 1);
  }
  gvm_publish_contexts(gpu);
}

/* Streams are retired before the driver destroys the context, so the monitor never touches it. */
CUresult gvm_hook_cuDevicePrimaryCtxRelease(CUdevice dev) {
  primary_released(dev, false);
  return GVM_REAL(cuDevicePrimaryCtxRelease, dev);
}
CUresult gvm_hook_cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  primary_released(dev, false);
  return GVM_REAL(cuDevicePrimaryCtxRelease_v2, dev);
}
CUresult gvm_hook_cuDevicePrimaryCtxReset(CUdevice dev) {
  primary_released(dev, true);
  return GVM_REAL(cuDevicePrimaryCtxReset, dev);
}
CUresult gvm_hook_cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  primary_released(dev, true);
  return GVM_REAL(cuDevicePrimaryCtxReset_v2, dev);
}

/* ---- explicit contexts ---- */
static void explicit_created(CUresult r, CUcontext *pctx, int gpu) {
  if (r != CUDA_SUCCESS || gpu < 0 || !pctx) return;
  register_context(*pctx, gpu, false);
  atomic_fetch_add(&gvm_gpus[gpu].explicit_contexts, 1);
  gvm_publish_contexts(gpu);
  gvm_rm_publish_all();
}

#define CREATE_CONTEXT(call, dev)           \
  gvm_agent_start();                        \
  int gpu = gpu_of_device(dev);             \
  gvm_rm_set_creating_gpu(gpu);             \
  CUresult r = call;                        \
  gvm_rm_set_creating_gpu(-1);              \
  explicit_created(r, pctx, gpu);           \
  return r

CUresult gvm_hook_cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
  CREATE_CONTEXT(GVM_REAL(cuCtxCreate_v2, pctx, flags, dev), dev);
}
CUresult gvm_hook_cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags,
                                 CUdevice dev) {
  CREATE_CONTEXT(GVM_REAL(cuCtxCreate_v3, pctx, params, n, flags, dev), dev);
}
CUresult gvm_hook_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev) {
  CREATE_CONTEXT(GVM_REAL(cuCtxCreate_v4, pctx, params, flags, dev), dev);
}

CUresult gvm_hook_cuCtxDestroy_v2(CUcontext ctx) {
  int gpu = lookup(ctx);
  context_ending(ctx);
  CUresult r = GVM_REAL(cuCtxDestroy_v2, ctx);
  if (r == CUDA_SUCCESS && gpu >= 0) {
    if (atomic_fetch_sub(&gvm_gpus[gpu].explicit_contexts, 1) <= 0)
      atomic_store(&gvm_gpus[gpu].explicit_contexts, 0);
    gvm_publish_contexts(gpu);
  }
  return r;
}
