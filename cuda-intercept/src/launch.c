/*
 * Kernel counting. A launch adds to its stream's "submitted" counter: one relaxed lookup and one
 * atomic add, no lock, no syscall, no allocation. "Ended" is learnt off the launch path: the
 * monitor thread records an event on a stream at most once per tick when it has new launches, and
 * an event that completed proves every launch counted before it was recorded has ended.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

#define STREAM_SLOTS 4096 /* distinct stream handles in a process's life; the driver reuses them */
#define MARKS 16          /* outstanding events per stream */

enum stream_state { STREAM_FREE = 0, STREAM_LIVE, STREAM_DEAD, STREAM_RETIRED };

struct mark {
  CUevent event;
  uint64_t count; /* submitted count read before the event was recorded */
};

struct stream_entry {
  _Atomic uint64_t key;       /* stream handle, or context|1 for the context's default stream */
  _Atomic uint64_t submitted; /* written by launching threads */
  _Atomic int state;
  atomic_flag guard;          /* held by whoever changes state or records/queries; never spun on by the monitor */
  CUcontext ctx;
  /* written under guard (describe) after the key is public; the monitor reads it without the guard
   * (it never waits for one), so it is atomic and every reader loads it once */
  _Atomic int gpu;
  bool default_stream;
  /* below: only under guard */
  uint64_t marked;
  _Atomic uint64_t ended;
  unsigned head, tail; /* ring of marks: head - tail outstanding */
  struct mark ring[MARKS];
  CUevent events[MARKS]; /* reusable events, created in events_ctx */
  CUcontext events_ctx;
} __attribute__((aligned(64)));

static struct stream_entry streams[STREAM_SLOTS];
static _Atomic int captures_active;
/*
 * The event thread records its marks on the application's streams, and a record that lands in a
 * capture invalidates it (the graph fails to build: seen on the H200 as PyTorch's "operation failed
 * due to a previous error during capture"). A begin announces itself in capture_begins before the
 * driver's begin and waits while the event thread is between its check and its record (marking), so
 * the thread either sees the announcement and skips, or records before the capture starts.
 */
static _Atomic int capture_begins;
static _Atomic int marking;
/* counts folded out of entries whose handle was reused for another stream */
static _Atomic uint64_t folded_submitted[GVM_MAX_GPUS], folded_ended[GVM_MAX_GPUS];

static _Thread_local struct stream_entry *tls_entry;
static _Thread_local uint64_t tls_key;

static void guard_lock(struct stream_entry *e) {
  for (unsigned spins = 0; atomic_flag_test_and_set_explicit(&e->guard, memory_order_acquire); spins++)
    if (spins > 64) sched_yield();
}
static bool guard_try(struct stream_entry *e) {
  return !atomic_flag_test_and_set_explicit(&e->guard, memory_order_acquire);
}
static void guard_unlock(struct stream_entry *e) { atomic_flag_clear_explicit(&e->guard, memory_order_release); }

static uint64_t hash_key(uint64_t k) {
  k ^= k >> 31;
  k *= 0x9e3779b97f4a7c15ull;
  return k >> 40;
}

static bool is_default(CUstream s) { return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

static struct stream_entry *find(uint64_t key) {
  for (uint64_t i = hash_key(key) % STREAM_SLOTS, n = 0; n < STREAM_SLOTS; n++, i = (i + 1) % STREAM_SLOTS) {
    uint64_t k = atomic_load_explicit(&streams[i].key, memory_order_acquire);
    if (k == key) return &streams[i];
    if (k == 0) return NULL;
  }
  return NULL;
}

/* Learns which context and GPU a stream belongs to; called once per stream (or per reuse). */
static void describe(struct stream_entry *e, CUstream s, CUcontext ctx_hint) {
  CUcontext ctx = ctx_hint;
  if (!ctx && GVM_REAL(cuStreamGetCtx, s, &ctx) != CUDA_SUCCESS) ctx = NULL;
  e->ctx = ctx;
  atomic_store_explicit(&e->gpu, gvm_context_gpu(ctx), memory_order_relaxed);
  e->default_stream = ctx_hint != NULL;
}

static struct stream_entry *claim(uint64_t key, CUstream s, CUcontext ctx_hint) {
  for (uint64_t i = hash_key(key) % STREAM_SLOTS, n = 0; n < STREAM_SLOTS; n++, i = (i + 1) % STREAM_SLOTS) {
    struct stream_entry *e = &streams[i];
    uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
    if (k == key) return e;
    if (k != 0) continue;
    guard_lock(e);
    uint64_t expected = 0;
    if (atomic_compare_exchange_strong(&e->key, &expected, key)) {
      describe(e, s, ctx_hint);
      atomic_store_explicit(&e->state, STREAM_LIVE, memory_order_release);
      guard_unlock(e);
      return e;
    }
    guard_unlock(e);
    if (expected == key) return e;
  }
  GVM_LOG_ONCE(GVM_LOG_WARN, "more than %d streams seen; further streams are not counted", STREAM_SLOTS);
  return NULL;
}

/* A handle seen again after its stream was destroyed: settle the old stream's counts first. */
static void revive(struct stream_entry *e, CUstream s, CUcontext ctx_hint) {
  guard_lock(e);
  int st = atomic_load(&e->state);
  if (st != STREAM_LIVE) {
    uint64_t sub = atomic_exchange(&e->submitted, 0);
    int gpu = atomic_load_explicit(&e->gpu, memory_order_relaxed);
    if (gpu >= 0 && gpu < GVM_MAX_GPUS) {
      atomic_fetch_add(&folded_submitted[gpu], sub);
      atomic_fetch_add(&folded_ended[gpu], sub); /* its handle was reused: the old work is over */
    }
    atomic_store(&e->ended, 0);
    e->marked = 0;
    e->tail = e->head;
    CUcontext old_ctx = e->ctx;
    describe(e, s, ctx_hint);
    if (st == STREAM_RETIRED || e->ctx != old_ctx) {
      memset(e->events, 0, sizeof e->events); /* they belonged to a context that is gone or other */
      e->events_ctx = NULL;
    }
    atomic_store_explicit(&e->state, STREAM_LIVE, memory_order_release);
  }
  guard_unlock(e);
}

static struct stream_entry *entry_slow(uint64_t key, CUstream s, CUcontext ctx_hint) {
  struct stream_entry *e = find(key);
  if (!e) e = claim(key, s, ctx_hint);
  if (e && atomic_load_explicit(&e->state, memory_order_acquire) != STREAM_LIVE) revive(e, s, ctx_hint);
  return e;
}

static bool capturing(CUstream s, bool ptsz) {
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  PFN_cuStreamIsCapturing_v10000 q = ptsz ? gvm_real.p_cuStreamIsCapturing_ptsz : gvm_real.p_cuStreamIsCapturing;
  if (!q || q(s, &st) != CUDA_SUCCESS) return false;
  return st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* The launch hot path. */
static inline void count_launch(CUstream s, uint64_t kernels, bool ptsz) {
  if (GVM_UNLIKELY(atomic_load_explicit(&gvm_active, memory_order_relaxed) != 1)) return;
  /* a launch into a capturing stream builds a graph; it is counted when the graph is launched */
  if (GVM_UNLIKELY(atomic_load_explicit(&captures_active, memory_order_relaxed) > 0) && capturing(s, ptsz)) return;
  uint64_t key;
  CUcontext ctx = NULL;
  if (is_default(s)) {
    ctx = gvm_single_context();
    if (!ctx && gvm_real.p_cuCtxGetCurrent) gvm_real.p_cuCtxGetCurrent(&ctx);
    if (!ctx) return;
    key = (uint64_t)(uintptr_t)ctx | 1u;
  } else {
    key = (uint64_t)(uintptr_t)s;
  }
  struct stream_entry *e = tls_entry;
  if (GVM_UNLIKELY(key != tls_key || !e ||
                   atomic_load_explicit(&e->state, memory_order_relaxed) != STREAM_LIVE)) {
    e = entry_slow(key, is_default(s) ? NULL : s, ctx);
    if (!e) return;
    tls_entry = e;
    tls_key = key;
  }
  /* release: the monitor reads this count before recording, so the count never runs ahead of the event */
  atomic_fetch_add_explicit(&e->submitted, kernels, memory_order_release);
  GVM_POLICY_LAUNCH(atomic_load_explicit(&e->gpu, memory_order_relaxed));
}

/* ---- launch hooks: the driver call first, counted only when it succeeded ---- */
CUresult gvm_hook_cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                 unsigned bz, unsigned shmem, CUstream s, void **params, void **extra) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchKernel, f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
  if (GVM_LIKELY(r == CUDA_SUCCESS)) count_launch(s, 1, false);
  return r;
}
CUresult gvm_hook_cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                      unsigned bz, unsigned shmem, CUstream s, void **params, void **extra) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchKernel_ptsz, f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
  if (GVM_LIKELY(r == CUDA_SUCCESS)) count_launch(s, 1, true);
  return r;
}
CUresult gvm_hook_cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchKernelEx, config, f, params, extra);
  if (GVM_LIKELY(r == CUDA_SUCCESS) && config) count_launch(config->hStream, 1, false);
  return r;
}
CUresult gvm_hook_cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchKernelEx_ptsz, config, f, params, extra);
  if (GVM_LIKELY(r == CUDA_SUCCESS) && config) count_launch(config->hStream, 1, true);
  return r;
}
CUresult gvm_hook_cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                            unsigned by, unsigned bz, unsigned shmem, CUstream s, void **params) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchCooperativeKernel, f, gx, gy, gz, bx, by, bz, shmem, s, params);
  if (r == CUDA_SUCCESS) count_launch(s, 1, false);
  return r;
}
CUresult gvm_hook_cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                                 unsigned by, unsigned bz, unsigned shmem, CUstream s,
                                                 void **params) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuLaunchCooperativeKernel_ptsz, f, gx, gy, gz, bx, by, bz, shmem, s, params);
  if (r == CUDA_SUCCESS) count_launch(s, 1, true);
  return r;
}

/* ---- graphs: a launch submits every kernel node; the count is taken once at instantiation ---- */
#define GRAPH_SLOTS 8192
struct graph_entry {
  _Atomic uint64_t exec; /* 0 = free; entries stay keyed: a reused handle overwrites the count */
  _Atomic uint64_t kernels;
};
static struct graph_entry graphs[GRAPH_SLOTS];

static uint64_t count_kernel_nodes(CUgraph graph, int depth) {
  size_t n = 0;
  if (depth > 8 || GVM_REAL(cuGraphGetNodes, graph, NULL, &n) != CUDA_SUCCESS || n == 0) return 0;
  CUgraphNode *nodes = malloc(n * sizeof *nodes);
  if (!nodes) return 0;
  uint64_t kernels = 0;
  if (GVM_REAL(cuGraphGetNodes, graph, nodes, &n) == CUDA_SUCCESS) {
    for (size_t i = 0; i < n; i++) {
      CUgraphNodeType type;
      if (GVM_REAL(cuGraphNodeGetType, nodes[i], &type) != CUDA_SUCCESS) continue;
      if (type == CU_GRAPH_NODE_TYPE_KERNEL) {
        kernels++;
      } else if (type == CU_GRAPH_NODE_TYPE_GRAPH) {
        CUgraph child;
        if (GVM_REAL(cuGraphChildGraphNodeGetGraph, nodes[i], &child) == CUDA_SUCCESS)
          kernels += count_kernel_nodes(child, depth + 1);
      }
    }
  }
  free(nodes);
  return kernels;
}

static void graph_set(CUgraphExec exec, uint64_t kernels) {
  uint64_t key = (uint64_t)(uintptr_t)exec;
  if (!key) return;
  for (uint64_t i = hash_key(key) % GRAPH_SLOTS, n = 0; n < GRAPH_SLOTS; n++, i = (i + 1) % GRAPH_SLOTS) {
    uint64_t expected = 0;
    uint64_t k = atomic_load_explicit(&graphs[i].exec, memory_order_acquire);
    if (k == key || (k == 0 && (atomic_compare_exchange_strong(&graphs[i].exec, &expected, key) || expected == key))) {
      atomic_store_explicit(&graphs[i].kernels, kernels, memory_order_release);
      return;
    }
  }
  GVM_LOG_ONCE(GVM_LOG_WARN, "more than %d graphs; later ones count as one kernel per launch", GRAPH_SLOTS);
}

static uint64_t graph_kernels(CUgraphExec exec) {
  uint64_t key = (uint64_t)(uintptr_t)exec;
  for (uint64_t i = hash_key(key) % GRAPH_SLOTS, n = 0; n < GRAPH_SLOTS; n++, i = (i + 1) % GRAPH_SLOTS) {
    uint64_t k = atomic_load_explicit(&graphs[i].exec, memory_order_acquire);
    if (k == key) return atomic_load_explicit(&graphs[i].kernels, memory_order_relaxed);
    if (k == 0) break;
  }
  return 1;
}

static void instantiated(CUresult r, CUgraphExec *exec, CUgraph graph) {
  if (r == CUDA_SUCCESS && exec && atomic_load(&gvm_active) == 1) graph_set(*exec, count_kernel_nodes(graph, 0));
}

CUresult gvm_hook_cuGraphInstantiate(CUgraphExec *exec, CUgraph graph, CUgraphNode *err_node, char *log, size_t n) {
  CUresult r = GVM_REAL(cuGraphInstantiate, exec, graph, err_node, log, n);
  instantiated(r, exec, graph);
  return r;
}
CUresult gvm_hook_cuGraphInstantiate_v2(CUgraphExec *exec, CUgraph graph, CUgraphNode *err_node, char *log,
                                        size_t n) {
  CUresult r = GVM_REAL(cuGraphInstantiate_v2, exec, graph, err_node, log, n);
  instantiated(r, exec, graph);
  return r;
}
CUresult gvm_hook_cuGraphInstantiateWithFlags(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
  CUresult r = GVM_REAL(cuGraphInstantiateWithFlags, exec, graph, flags);
  instantiated(r, exec, graph);
  return r;
}
CUresult gvm_hook_cuGraphInstantiateWithParams(CUgraphExec *exec, CUgraph graph, CUDA_GRAPH_INSTANTIATE_PARAMS *p) {
  CUresult r = GVM_REAL(cuGraphInstantiateWithParams, exec, graph, p);
  instantiated(r, exec, graph);
  return r;
}
CUresult gvm_hook_cuGraphInstantiateWithParams_ptsz(CUgraphExec *exec, CUgraph graph,
                                                    CUDA_GRAPH_INSTANTIATE_PARAMS *p) {
  CUresult r = GVM_REAL(cuGraphInstantiateWithParams_ptsz, exec, graph, p);
  instantiated(r, exec, graph);
  return r;
}
CUresult gvm_hook_cuGraphExecUpdate_v2(CUgraphExec exec, CUgraph graph, CUgraphExecUpdateResultInfo *info) {
  CUresult r = GVM_REAL(cuGraphExecUpdate_v2, exec, graph, info);
  if (r == CUDA_SUCCESS && atomic_load(&gvm_active) == 1) graph_set(exec, count_kernel_nodes(graph, 0));
  return r;
}
CUresult gvm_hook_cuGraphExecDestroy(CUgraphExec exec) {
  CUresult r = GVM_REAL(cuGraphExecDestroy, exec);
  if (r == CUDA_SUCCESS) graph_set(exec, 1);
  return r;
}
CUresult gvm_hook_cuGraphLaunch(CUgraphExec exec, CUstream s) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuGraphLaunch, exec, s);
  if (r == CUDA_SUCCESS) count_launch(s, graph_kernels(exec), false);
  return r;
}
CUresult gvm_hook_cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s) {
  GVM_LAUNCH_GATE();
  CUresult r = GVM_REAL(cuGraphLaunch_ptsz, exec, s);
  if (r == CUDA_SUCCESS) count_launch(s, graph_kernels(exec), true);
  return r;
}

bool gvm_capture_active(void) { return atomic_load_explicit(&captures_active, memory_order_relaxed) > 0; }

/* ---- capture bookkeeping: while none is active, launches skip the capture query entirely ---- */
static void capture_announce(void) {
  atomic_fetch_add(&capture_begins, 1);
  /* one event record at most: the event thread holds no lock and waits for nothing of ours */
  for (unsigned spins = 0; atomic_load(&marking); spins++)
    if (spins > 64) sched_yield();
}
static void capture_began(CUresult r) {
  if (r == CUDA_SUCCESS) atomic_fetch_add(&captures_active, 1);
  atomic_fetch_sub(&capture_begins, 1);
}
static void capture_ended(bool was_capturing) {
  if (was_capturing && atomic_fetch_sub(&captures_active, 1) <= 0) atomic_store(&captures_active, 0);
}
CUresult gvm_hook_cuStreamBeginCapture(CUstream s) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCapture, s);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamBeginCapture_ptsz(CUstream s) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCapture_ptsz, s);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCapture_v2, s, mode);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode mode) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCapture_v2_ptsz, s, mode);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamBeginCaptureToGraph(CUstream s, CUgraph g, const CUgraphNode *deps,
                                              const CUgraphEdgeData *data, size_t n, CUstreamCaptureMode mode) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCaptureToGraph, s, g, deps, data, n, mode);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                   const CUgraphEdgeData *data, size_t n, CUstreamCaptureMode mode) {
  capture_announce();
  CUresult r = GVM_REAL(cuStreamBeginCaptureToGraph_ptsz, s, g, deps, data, n, mode);
  capture_began(r);
  return r;
}
CUresult gvm_hook_cuStreamEndCapture(CUstream s, CUgraph *graph) {
  bool was = capturing(s, false);
  CUresult r = GVM_REAL(cuStreamEndCapture, s, graph);
  capture_ended(was);
  return r;
}
CUresult gvm_hook_cuStreamEndCapture_ptsz(CUstream s, CUgraph *graph) {
  bool was = capturing(s, true);
  CUresult r = GVM_REAL(cuStreamEndCapture_ptsz, s, graph);
  capture_ended(was);
  return r;
}

/* ---- stream and context ends ---- */
static bool ring_full(const struct stream_entry *e) { return e->head - e->tail >= MARKS; }

/* Records a mark covering everything counted so far. Caller holds the guard; the stream is alive. */
static bool record_mark(struct stream_entry *e, CUstream target) {
  uint64_t count = atomic_load_explicit(&e->submitted, memory_order_acquire);
  if (count <= e->marked || ring_full(e)) return false;
  unsigned slot = e->head % MARKS;
  if (!e->events[slot]) return false;
  if (GVM_REAL(cuEventRecord, e->events[slot], target) != CUDA_SUCCESS) return false;
  e->ring[slot] = (struct mark){e->events[slot], count};
  e->head++;
  e->marked = count;
  return true;
}

static CUstream target_of(const struct stream_entry *e) {
  return e->default_stream ? CU_STREAM_LEGACY : (CUstream)(uintptr_t)atomic_load(&e->key);
}

CUresult gvm_hook_cuStreamDestroy_v2(CUstream s) {
  /* a capture its application abandons ends with its stream: it must not hold legacy marks back */
  bool was_capturing = s && !is_default(s) && atomic_load(&captures_active) > 0 && capturing(s, false);
  struct stream_entry *e = (s && !is_default(s)) ? find((uint64_t)(uintptr_t)s) : NULL;
  if (e) {
    guard_lock(e);
    if (atomic_load(&e->state) == STREAM_LIVE) {
      /* a last mark so the launches still queued on the stream can be seen to end */
      if (e->events_ctx == e->ctx && !was_capturing) record_mark(e, s);
      atomic_store(&e->state, STREAM_DEAD);
    }
    guard_unlock(e);
  }
  CUresult r = GVM_REAL(cuStreamDestroy_v2, s);
  if (r == CUDA_SUCCESS) capture_ended(was_capturing);
  return r;
}

/* Before a context is destroyed: its work is complete once the driver returns, its events die with it. */
void gvm_streams_retire_context(CUcontext ctx) {
  if (!ctx) return;
  for (int i = 0; i < STREAM_SLOTS; i++) {
    struct stream_entry *e = &streams[i];
    if (!atomic_load(&e->key) || e->ctx != ctx) continue;
    guard_lock(e);
    if (e->ctx == ctx && atomic_load(&e->state) != STREAM_RETIRED) {
      atomic_store(&e->ended, atomic_load(&e->submitted));
      e->marked = atomic_load(&e->submitted);
      e->tail = e->head;
      memset(e->events, 0, sizeof e->events);
      e->events_ctx = NULL;
      atomic_store(&e->state, STREAM_RETIRED);
    }
    guard_unlock(e);
  }
  tls_entry = NULL;
}

/* ---- monitor side ---- */
static bool ensure_events(struct stream_entry *e) {
  if (e->events_ctx == e->ctx && e->events[0]) return true;
  if (e->head != e->tail) return false; /* old marks still pending in the previous context */
  if (!e->ctx || GVM_REAL(cuCtxSetCurrent, e->ctx) != CUDA_SUCCESS) return false;
  for (int i = 0; i < MARKS; i++) {
    e->events[i] = NULL;
    if (GVM_REAL(cuEventCreate, &e->events[i], CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) {
      GVM_LOG_ONCE(GVM_LOG_WARN, "cannot create events for kernel end tracking; kernels_ended will lag");
      e->events[i] = NULL;
      return false;
    }
  }
  e->events_ctx = e->ctx;
  return true;
}

static void retire_marks(struct stream_entry *e) {
  while (e->tail != e->head) {
    struct mark *m = &e->ring[e->tail % MARKS];
    CUresult q = GVM_REAL(cuEventQuery, m->event);
    if (q == CUDA_ERROR_NOT_READY) break;
    if (q != CUDA_SUCCESS) GVM_LOG_ONCE(GVM_LOG_WARN, "event query failed (%d); dropping a mark", (int)q);
    else if (m->count > atomic_load(&e->ended)) atomic_store(&e->ended, m->count);
    e->tail++;
  }
}

/*
 * Whether a mark may be recorded on the stream now (the caller has set marking). Not while a begin is
 * under way, and while a capture runs not on the legacy stream: work there depends on every blocking
 * stream, a capturing one included, which invalidates its capture (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT).
 * Its marks wait for the capture's end (or its stream's destruction): a capture the application neither
 * ends nor destroys holds them back.
 */
static bool may_mark(const struct stream_entry *e, CUstream target) {
  if (atomic_load(&capture_begins) > 0) return false;
  if (atomic_load(&captures_active) == 0) return true;
  return !e->default_stream && !capturing(target, false);
}

bool gvm_streams_tick(uint64_t *submitted, uint64_t *ended) {
  bool outstanding = false;
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    submitted[g] = atomic_load(&folded_submitted[g]);
    ended[g] = atomic_load(&folded_ended[g]);
  }
  for (int i = 0; i < STREAM_SLOTS; i++) {
    struct stream_entry *e = &streams[i];
    if (!atomic_load_explicit(&e->key, memory_order_acquire)) continue;
    int st = atomic_load(&e->state);
    if ((st == STREAM_LIVE || st == STREAM_DEAD) && guard_try(e)) {
      st = atomic_load(&e->state);
      if (st == STREAM_LIVE || st == STREAM_DEAD) retire_marks(e);
      if (st == STREAM_LIVE && atomic_load(&e->submitted) > e->marked && !ring_full(e) && ensure_events(e)) {
        /* the legacy stream is resolved through the current context */
        CUstream target = target_of(e);
        if (GVM_REAL(cuCtxSetCurrent, e->ctx) == CUDA_SUCCESS) {
          atomic_store(&marking, 1);
          if (may_mark(e, target)) record_mark(e, target);
          atomic_store(&marking, 0);
        }
      }
      if (st == STREAM_DEAD && e->tail == e->head) atomic_store(&e->ended, atomic_load(&e->submitted));
      guard_unlock(e);
    }
    uint64_t sub = atomic_load(&e->submitted), end = atomic_load(&e->ended);
    if (end > sub) end = sub;
    if (sub != end) outstanding = true;
    int gpu = atomic_load_explicit(&e->gpu, memory_order_relaxed); /* once: checked, then an index */
    if (gpu >= 0 && gpu < GVM_MAX_GPUS) {
      submitted[gpu] += sub;
      ended[gpu] += end;
    }
  }
  return outstanding;
}

uint64_t gvm_streams_submitted(int gpu) {
  if (gpu < 0 || gpu >= GVM_MAX_GPUS) return 0;
  uint64_t sum = atomic_load(&folded_submitted[gpu]);
  for (int i = 0; i < STREAM_SLOTS; i++) {
    struct stream_entry *e = &streams[i];
    if (atomic_load_explicit(&e->key, memory_order_acquire) && atomic_load_explicit(&e->gpu, memory_order_relaxed) == gpu)
      sum += atomic_load(&e->submitted);
  }
  return sum;
}

void gvm_launch_reset(void) {
  memset(streams, 0, sizeof streams);
  memset(graphs, 0, sizeof graphs);
  atomic_store(&captures_active, 0);
  atomic_store(&capture_begins, 0);
  atomic_store(&marking, 0);
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    atomic_store(&folded_submitted[g], 0);
    atomic_store(&folded_ended[g], 0);
  }
  tls_entry = NULL;
  tls_key = 0;
}
