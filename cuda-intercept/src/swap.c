/*
 * The mover: in swap mode, keeps each GPU's device-resident bytes under its limit by moving whole
 * allocations between GPU and host memory at the same virtual address. Past the limit the oldest
 * allocations go to the host; when room appears (a raised limit, frees) the newest come back.
 *
 * A move happens in a quiet window: the application's channels are stopped through the RM (its
 * kernels and copies cannot touch the range), the copy runs on the mover's own context and streams
 * while the range is remapped to the new memory, then the channels resume. The mover is the only agent thread besides
 * the event thread that calls into libcuda, and it holds no agent lock across those calls except
 * the compute control lock, which only the control thread's freeze/thaw also takes.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "backing.h"

#define GVM_RM_AGENT_OWNED (-2) /* tag for RM objects of the mover's own context: never frozen */
#define MAX_MOVES 4096

static pthread_t mover;
static _Atomic bool mover_running; /* read by the control thread, and by IPC hooks on any thread */
static _Atomic int mover_stopping;
static _Atomic uint32_t mover_wake; /* bumped by every kick */
static _Atomic uint32_t mover_done; /* the wake value the last finished pass started from */
static CUcontext mover_ctx[GVM_MAX_GPUS];

/*
 * Copy tuning, read once when the mover starts (the lead measures them with bench/swap):
 *   GVM_SWAP_STREAMS    1..4 (default 1): mover streams; ranges (or chunks) go round-robin over them,
 *                       so several copy engines can work at once
 *   GVM_SWAP_CHUNK_MIB  0 (default): one copy per range; N: copies of at most N MiB, spread over the
 *                       streams, so even one large range uses every stream
 *   GVM_SWAP_PREWARM_MIB 0 (default): host memory made ready ahead of need for the first N MiB of
 *                       swappable memory to move out (counting what is on the host already; the oldest
 *                       ranges on the GPU are next), between passes; creating and
 *                       pinning host memory runs at ~2 GB/s on the H100 against ~45 GB/s for a warm
 *                       move, so a process that expects to be moved out (a best-effort job that lends
 *                       its memory) trades that much pinned host memory for first moves at link speed
 */
#define MAX_STREAMS 4
static CUstream mover_stream[GVM_MAX_GPUS][MAX_STREAMS];
static int stream_count = 1;
static uint64_t chunk_bytes;
static uint64_t prewarm_bytes;
static unsigned next_stream; /* mover thread only */
static bool pass_moved;      /* mover thread only: this pass moved something */

static void read_tuning(void) {
  const char *v = getenv("GVM_SWAP_STREAMS");
  long n = v && *v ? strtol(v, NULL, 10) : 1;
  stream_count = n < 1 ? 1 : n > MAX_STREAMS ? MAX_STREAMS : (int)n;
  v = getenv("GVM_SWAP_CHUNK_MIB");
  chunk_bytes = v && *v ? strtoull(v, NULL, 10) << 20 : 0;
  v = getenv("GVM_SWAP_PREWARM_MIB");
  prewarm_bytes = v && *v ? strtoull(v, NULL, 10) << 20 : 0;
}

/*
 * The driver creates a context's copy channels and loads its copy code lazily, on the first copy.
 * That must happen before any quiet window: measured on the H100, a first copy issued while the
 * application's channels were stopped never completed. So copy once, device to host, right away.
 */
static CUresult warm_up(int gpu) {
  CUdevice dev = gvm_gpus[gpu].device;
  CUdeviceptr a = 0, b = 0;
  CUmemGenericAllocationHandle ha = 0, hb = 0;
  CUresult r = gvm_backing_alloc(dev, GVM_BACKING_GRANULE, true, &a, &ha);
  if (r != CUDA_SUCCESS) return r;
  r = gvm_backing_alloc(dev, GVM_BACKING_GRANULE, false, &b, &hb);
  bool have_b = r == CUDA_SUCCESS;
  for (int i = 0; r == CUDA_SUCCESS && i < stream_count; i++) { /* each stream may get its own channel */
    r = GVM_REAL(cuMemcpyAsync, b, a, GVM_BACKING_GRANULE, mover_stream[gpu][i]);
    if (r == CUDA_SUCCESS) r = GVM_REAL(cuMemcpyAsync, a, b, GVM_BACKING_GRANULE, mover_stream[gpu][i]);
    if (r == CUDA_SUCCESS) r = GVM_REAL(cuStreamSynchronize, mover_stream[gpu][i]);
  }
  if (have_b) gvm_backing_free(b, GVM_BACKING_GRANULE, hb, false);
  gvm_backing_free(a, GVM_BACKING_GRANULE, ha, true);
  return r;
}

static bool ensure_context(int gpu) {
  if (mover_stream[gpu][0]) return GVM_REAL(cuCtxSetCurrent, mover_ctx[gpu]) == CUDA_SUCCESS;
  /* objects the driver allocates for this context are ours: keep them out of the app's freeze */
  gvm_rm_set_creating_gpu(GVM_RM_AGENT_OWNED);
  CUresult r = GVM_REAL(cuCtxCreate_v2, &mover_ctx[gpu], 0, gvm_gpus[gpu].device);
  for (int i = 0; r == CUDA_SUCCESS && i < stream_count; i++)
    r = GVM_REAL(cuStreamCreate, &mover_stream[gpu][i], CU_STREAM_NON_BLOCKING);
  gvm_rm_set_creating_gpu(-1);
  if (r == CUDA_SUCCESS) r = warm_up(gpu);
  if (r != CUDA_SUCCESS) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "cannot create the mover's context on GPU %d (%d); no moves", gpu, (int)r);
    mover_stream[gpu][0] = NULL;
    return false;
  }
  return true;
}

/*
 * Whether the range is remapped while its copy runs (GVM_SWAP_OVERLAP, default 1). The copy reads the
 * old memory through a second mapping of it and writes the new memory through its staging range, so
 * the range itself is free to change its physical side at once: the remap (cuMemSetAccess of host
 * memory costs ~10 ms per GiB on the H100, nearly half the copy) then hides behind the copy instead of
 * following it, inside the application's stopped time. 0 copies through the range, then remaps.
 */
static bool overlap_remap(void) {
  static int on = -1;
  if (on < 0) {
    const char *v = getenv("GVM_SWAP_OVERLAP");
    on = !(v && *v == '0');
  }
  return on;
}

/* One allocation in a batch: its new physical memory, mapped at a staging range while copied. */
struct move {
  struct gvm_swap_candidate c;
  CUdeviceptr stage; /* the new memory, where the copy writes it */
  CUdeviceptr src;   /* the old memory, where the copy reads it: the range, or a second mapping of it */
  CUmemGenericAllocationHandle fresh;
  CUevent copied[MAX_STREAMS]; /* recorded after this range's copies on each stream it used */
  unsigned used;               /* bit per stream */
  bool ready;
  bool kept_stage; /* to the host: the handle's own staging range, which stays mapped (backing.c) */
  bool remapped;   /* the range has the new memory */
  bool moved;
};

/* Where the copy can read the old memory other than through the range (0: only through the range). */
static CUdeviceptr second_mapping(int gpu, struct move *m, bool to_device) {
  CUdevice dev = gvm_gpus[gpu].device;
  CUmemGenericAllocationHandle old = (CUmemGenericAllocationHandle)m->c.handle;
  if (to_device) return gvm_backing_staged_at(old, dev); /* host memory keeps its staging range */
  CUdeviceptr v = 0;
  if (GVM_REAL(cuMemAddressReserve, &v, m->c.size, GVM_BACKING_GRANULE, 0, 0) != CUDA_SUCCESS) return 0;
  if (gvm_backing_attach(v, m->c.size, dev, old) != CUDA_SUCCESS) {
    GVM_REAL(cuMemAddressFree, v, m->c.size);
    return 0;
  }
  return v;
}

/* To the host the second mapping of the device memory was made for the move (to the GPU it is the
 * host memory's own staging range, which stays): it goes once the copy is over. */
static void drop_second_mapping(struct move *m, bool to_device) {
  if (to_device || m->src == m->c.va) return;
  GVM_REAL(cuMemUnmap, m->src, m->c.size);
  GVM_REAL(cuMemAddressFree, m->src, m->c.size);
}

static bool prepare(int gpu, struct move *m, bool to_device) {
  CUdevice dev = gvm_gpus[gpu].device;
  if (!gvm_swap_begin(m->c.va, m->c.handle)) return false; /* freed or moved meanwhile */
  m->kept_stage = !to_device && gvm_backing_stage(dev, m->c.size, &m->fresh, &m->stage) == CUDA_SUCCESS;
  CUresult r = CUDA_SUCCESS;
  if (!m->kept_stage) {
    m->stage = 0;
    r = GVM_REAL(cuMemAddressReserve, &m->stage, m->c.size, GVM_BACKING_GRANULE, 0, 0);
    if (r == CUDA_SUCCESS) {
      r = gvm_backing_create(dev, m->c.size, to_device, &m->fresh);
      if (r == CUDA_SUCCESS) {
        r = gvm_backing_attach(m->stage, m->c.size, dev, m->fresh);
        if (r != CUDA_SUCCESS) gvm_backing_give_back(m->fresh, m->c.size, to_device);
      }
      if (r != CUDA_SUCCESS) GVM_REAL(cuMemAddressFree, m->stage, m->c.size);
    }
    if (r != CUDA_SUCCESS) m->stage = 0;
  }
  int events = 0;
  for (; r == CUDA_SUCCESS && events < stream_count; events++)
    r = GVM_REAL(cuEventCreate, &m->copied[events], CU_EVENT_DISABLE_TIMING);
  if (r != CUDA_SUCCESS) {
    for (int i = 0; i + 1 < events; i++) GVM_REAL(cuEventDestroy_v2, m->copied[i]);
    if (m->stage && !m->kept_stage) {
      GVM_REAL(cuMemUnmap, m->stage, m->c.size);
      GVM_REAL(cuMemAddressFree, m->stage, m->c.size);
    }
    if (m->stage) gvm_backing_give_back(m->fresh, m->c.size, to_device);
    gvm_swap_end(m->c.va, false, 0, false);
    return false;
  }
  CUdeviceptr second = overlap_remap() ? second_mapping(gpu, m, to_device) : 0;
  m->src = second ? second : m->c.va;
  m->ready = true;
  return true;
}

/* Queues a range's copy (in chunks when tuned so) on the mover's streams, round-robin. */
static CUresult issue(int gpu, struct move *m) {
  uint64_t step = chunk_bytes ? chunk_bytes : m->c.size;
  CUresult r = CUDA_SUCCESS;
  m->used = 0;
  for (uint64_t off = 0; r == CUDA_SUCCESS && off < m->c.size; off += step) {
    unsigned s = next_stream++ % (unsigned)stream_count;
    uint64_t n = m->c.size - off < step ? m->c.size - off : step;
    r = GVM_REAL(cuMemcpyAsync, m->stage + off, m->src + off, n, mover_stream[gpu][s]);
    m->used |= 1u << s;
  }
  for (int s = 0; r == CUDA_SUCCESS && s < stream_count; s++)
    if (m->used & (1u << s)) r = GVM_REAL(cuEventRecord, m->copied[s], mover_stream[gpu][s]);
  return r;
}

/* The old memory, which holds the data, goes back under the range. It was mapped there a moment ago,
 * so a failure is transient: try again rather than leave the application a hole. */
static void put_back(int gpu, struct move *m) {
  CUdevice dev = gvm_gpus[gpu].device;
  for (int attempt = 0; attempt < 5; attempt++) {
    if (gvm_backing_attach(m->c.va, m->c.size, dev, (CUmemGenericAllocationHandle)m->c.handle) == CUDA_SUCCESS) return;
    struct timespec ts = {0, 1000000L << attempt};
    nanosleep(&ts, NULL);
  }
  GVM_LOG_ONCE(GVM_LOG_ERROR, "cannot map a range's memory back at %#llx after a failed move; its data is kept, "
               "the range is unmapped", (unsigned long long)m->c.va);
}

/* Inside the quiet window: the range takes its new physical memory (or keeps the old one on failure). */
static void remap(int gpu, struct move *m) {
  CUdevice dev = gvm_gpus[gpu].device;
  if (GVM_REAL(cuMemUnmap, m->c.va, m->c.size) != CUDA_SUCCESS) return;
  m->remapped = gvm_backing_attach(m->c.va, m->c.size, dev, m->fresh) == CUDA_SUCCESS;
  if (!m->remapped) put_back(gpu, m);
}

/* The copy failed after the range was remapped: the old memory comes back. */
static void unremap(int gpu, struct move *m) {
  GVM_REAL(cuMemUnmap, m->c.va, m->c.size);
  put_back(gpu, m);
  m->remapped = false;
}

/* After the copy (or its failure), inside the quiet window: the move is settled either way. */
static void finish(int gpu, struct move *m, bool to_device, bool copied) {
  if (copied && !m->remapped && m->src == m->c.va) remap(gpu, m); /* copied through the range: remap now */
  if (!copied && m->remapped) unremap(gpu, m);
  m->moved = copied && m->remapped;
  if (!m->moved) GVM_LOG_ONCE(GVM_LOG_WARN, "a move to the %s failed; the range stays where it was", to_device ? "GPU" : "host");
  gvm_swap_end(m->c.va, m->moved, (uint64_t)m->fresh, to_device);
}

/* After the window: what no range uses any more goes back (host memory to the pool), out of the
 * application's stopped time. The range itself is no longer ours to touch (gvm_swap_end). */
static void tidy(struct move *m, bool to_device) {
  drop_second_mapping(m, to_device);
  if (!m->kept_stage) {
    GVM_REAL(cuMemUnmap, m->stage, m->c.size);
    GVM_REAL(cuMemAddressFree, m->stage, m->c.size);
  }
  if (m->moved) gvm_backing_give_back((CUmemGenericAllocationHandle)m->c.handle, m->c.size, !to_device);
  else gvm_backing_give_back(m->fresh, m->c.size, to_device);
  for (int s = 0; s < stream_count; s++) GVM_REAL(cuEventDestroy_v2, m->copied[s]);
}

/* Waits for one range's copies, but never past the deadline. */
static CUresult wait_copied(const struct move *m, uint64_t deadline_ns) {
  for (int s = 0; s < stream_count; s++) {
    if (!(m->used & (1u << s))) continue;
    for (;;) {
      CUresult r = GVM_REAL(cuEventQuery, m->copied[s]);
      if (r == CUDA_SUCCESS) break;
      if (r != CUDA_ERROR_NOT_READY) return r;
      if (gvm_now_ns() > deadline_ns) return CUDA_ERROR_TIMEOUT;
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
  }
  return CUDA_SUCCESS;
}

static void sync_streams(int gpu) {
  for (int s = 0; s < stream_count; s++) GVM_REAL(cuStreamSynchronize, mover_stream[gpu][s]);
}

/*
 * One quiet window: every copy is queued at once on the mover's streams; ranges whose old memory has
 * a second mapping are remapped while the copies run, the others as soon as their own copy is done.
 */
static void move_batch(int gpu, struct move *moves, size_t count, bool to_device) {
  size_t ready = 0;
  uint64_t bytes = 0, t_prepare = gvm_now_ns();
  for (size_t i = 0; i < count; i++)
    if (prepare(gpu, &moves[i], to_device)) {
      moves[ready++] = moves[i];
      bytes += moves[i].c.size;
    }
  if (ready == 0) return;
  pass_moved = true;
  if (!gvm_compute_quiesce(gpu)) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "swap moves need the RM path to stop the process's channels; none done");
    for (size_t i = 0; i < ready; i++) finish(gpu, &moves[i], to_device, false);
    for (size_t i = 0; i < ready; i++) tidy(&moves[i], to_device);
    return;
  }
  uint64_t t0 = gvm_now_ns();
  size_t overlapped = 0;
  for (size_t i = 0; i < ready; i++) moves[i].ready = issue(gpu, &moves[i]) == CUDA_SUCCESS;
  for (size_t i = 0; i < ready; i++)
    if (moves[i].ready && moves[i].src != moves[i].c.va) {
      remap(gpu, &moves[i]);
      overlapped++;
    }
  /* at least 10 s, and 10 s per 10 GiB (the link does ~50 GB/s: this is far beyond it) */
  uint64_t deadline = t0 + 10000000000ull + bytes;
  size_t done = 0;
  for (; done < ready; done++) {
    CUresult r = moves[done].ready ? wait_copied(&moves[done], deadline) : CUDA_ERROR_UNKNOWN;
    if (r == CUDA_ERROR_TIMEOUT) break;
    finish(gpu, &moves[done], to_device, r == CUDA_SUCCESS);
  }
  if (done < ready) {
    /* a copy is stuck while the process is stopped: every range not yet settled keeps its old memory
     * (before the process runs again: it must never see a half-copied range), then our copies drain */
    GVM_LOG_ONCE(GVM_LOG_ERROR, "swap copies did not finish in time while the process was stopped; moves abandoned");
    for (; done < ready; done++) finish(gpu, &moves[done], to_device, false);
    gvm_compute_resume(gpu);
    sync_streams(gpu);
    for (size_t i = 0; i < ready; i++) tidy(&moves[i], to_device);
    return;
  }
  gvm_compute_resume(gpu);
  uint64_t t1 = gvm_now_ns();
  for (size_t i = 0; i < ready; i++) tidy(&moves[i], to_device);
  gvm_log(GVM_LOG_DEBUG, "mover: %zu range(s), %llu bytes to the %s in %.1f ms (quiet window; prepared in %.1f ms, "
          "%zu remapped during the copy, %d stream(s), chunk %llu MiB)", ready, (unsigned long long)bytes,
          to_device ? "GPU" : "host", (double)(t1 - t0) / 1e6, (double)(t0 - t_prepare) / 1e6, overlapped,
          stream_count, (unsigned long long)(chunk_bytes >> 20));
}

/* One pass for one GPU: pick what to move, then move it in one quiet window. */
static void rebalance(int gpu, struct gvm_swap_candidate *cands, struct move *moves) {
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  /* ranges exported through IPC while on the host come back first, whatever the limit: another
   * process is about to map their physical memory, which must be the GPU's */
  size_t home = gvm_swap_pinned_away(gpu, cands, MAX_MOVES);
  if (home > 0 && ensure_context(gpu)) {
    for (size_t i = 0; i < home; i++) moves[i] = (struct move){.c = cands[i]};
    move_batch(gpu, moves, home, true);
  }
  if (GVM_LOAD(&b->memory_mode) != GVM_MEMORY_MODE_SWAP) return;
  uint64_t limit = gvm_memory_limit(gpu), current = gvm_memory_current(gpu);
  bool out = current > limit;
  if (!out && atomic_load(&gvm_gpus[gpu].swap_bytes) == 0) return;
  size_t n = gvm_swap_candidates(gpu, out, cands, MAX_MOVES);
  size_t first = 0, count = 0;
  if (out) { /* oldest first, until under the limit */
    for (uint64_t freed = 0; count < n && current - freed > limit; count++) freed += cands[count].size;
  } else { /* newest first, while they fit */
    uint64_t added = 0;
    size_t i = n;
    while (i > 0 && current + added + cands[i - 1].size <= limit) added += cands[--i].size;
    first = i;
    count = n - i;
  }
  if (count == 0 || !ensure_context(gpu)) return;
  for (size_t i = 0; i < count; i++) moves[i] = (struct move){.c = cands[first + i]};
  move_batch(gpu, moves, count, !out);
}

static bool prewarm_given_up;
static uint64_t prewarm_made[GVM_MAX_GPUS]; /* since the target was last reached, for the log */

static int by_size(const void *x, const void *y) {
  const struct gvm_swap_candidate *a = x, *b = y;
  return a->size < b->size ? -1 : a->size > b->size;
}

/*
 * One step of the pre-warm (GVM_SWAP_PREWARM_MIB): host memory for the ranges that would move out
 * first (what is on the host already counts against the budget; the oldest ranges on the GPU are
 * next), in the exact sizes the pool hands out. One handle per call, so that a kick waits for one
 * creation at most. Returns whether it made one.
 */
static bool prewarm_step(int gpu, struct gvm_swap_candidate *cands) {
  if (!prewarm_bytes || prewarm_given_up || GVM_LOAD(&gvm_block->gpu[gpu].memory_mode) != GVM_MEMORY_MODE_SWAP) return false;
  uint64_t covered = 0;
  size_t n = gvm_swap_candidates(gpu, false, cands, MAX_MOVES);
  for (size_t i = 0; i < n; i++) covered += cands[i].size;
  n = gvm_swap_candidates(gpu, true, cands, MAX_MOVES);
  size_t k = 0;
  while (k < n && covered + cands[k].size <= prewarm_bytes) covered += cands[k++].size;
  /* each of those ranges wants a pooled handle of its own size: compare the counts size by size */
  qsort(cands, k, sizeof *cands, by_size);
  for (size_t i = 0, j; i < k; i = j) {
    for (j = i; j < k && cands[j].size == cands[i].size; j++) {}
    if (gvm_backing_pooled(cands[i].size) >= j - i) continue;
    if (!ensure_context(gpu)) return false;
    CUresult r = gvm_backing_prewarm(gvm_gpus[gpu].device, cands[i].size);
    if (r != CUDA_SUCCESS) {
      prewarm_given_up = true; /* the pool is full (GVM_SWAP_POOL_MIB) or the host has no more to pin */
      gvm_log(GVM_LOG_WARN, "swap pre-warm stopped short of %llu MiB for GPU %d: %s (%d)",
              (unsigned long long)(covered >> 20), gpu,
              r == CUDA_ERROR_OUT_OF_MEMORY ? "GVM_SWAP_POOL_MIB is smaller" : "host memory could not be pinned", (int)r);
      return false;
    }
    prewarm_made[gpu] += cands[i].size;
    return true;
  }
  if (prewarm_made[gpu]) {
    gvm_log(GVM_LOG_INFO, "swap pre-warm: host memory ready for %llu MiB on GPU %d (%llu MiB made)",
            (unsigned long long)(covered >> 20), gpu, (unsigned long long)(prewarm_made[gpu] >> 20));
    prewarm_made[gpu] = 0;
  }
  return false;
}

static void *mover_main(void *arg) {
  (void)arg;
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  GVM_REAL(cuThreadExchangeStreamCaptureMode, &mode);
  struct gvm_swap_candidate *cands = malloc(MAX_MOVES * sizeof *cands);
  struct move *moves = malloc(MAX_MOVES * sizeof *moves);
  while (!atomic_load(&mover_stopping)) {
    uint32_t wake = atomic_load(&mover_wake);
    for (int g = 0; cands && moves && g < GVM_MAX_GPUS; g++)
      if (gvm_gpus[g].present) rebalance(g, cands, moves);
    atomic_store(&mover_done, wake);
    gvm_futex(&mover_done, FUTEX_WAKE, INT32_MAX, NULL);
    /* after the answer: host memory a move gave back gets its staging range before the next move out */
    for (int g = 0; pass_moved && g < GVM_MAX_GPUS; g++)
      if (gvm_gpus[g].present && mover_stream[g][0]) {
        gvm_backing_prestage(gvm_gpus[g].device);
        break;
      }
    pass_moved = false;
    bool warmed = false;
    for (int g = 0; cands && !warmed && g < GVM_MAX_GPUS; g++)
      if (gvm_gpus[g].present) warmed = prewarm_step(g, cands);
    if (warmed) continue; /* the next pass comes at once: a kick meanwhile is served first */
    /* memory freed by others or by the app lets data come back: look again now and then */
    struct timespec ts = {0, 250 * 1000000L};
    if (atomic_load(&mover_wake) == wake) gvm_futex(&mover_wake, FUTEX_WAIT_PRIVATE, wake, &ts);
  }
  free(cands);
  free(moves);
  return NULL;
}

void gvm_swap_kick(void) {
  atomic_fetch_add(&mover_wake, 1);
  gvm_futex(&mover_wake, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Control thread: kick the mover and wait (never calling libcuda) until a pass that began after the
 * kick has finished; returns the milliseconds waited, or UINT64_MAX on timeout. */
uint64_t gvm_swap_wait(uint64_t timeout_ms) {
  if (!mover_running) return UINT64_MAX;
  uint32_t ticket = atomic_fetch_add(&mover_wake, 1) + 1;
  gvm_futex(&mover_wake, FUTEX_WAKE_PRIVATE, 1, NULL);
  uint64_t start = gvm_now_ns();
  for (;;) {
    uint32_t done = atomic_load(&mover_done);
    if ((int32_t)(done - ticket) >= 0) return (gvm_now_ns() - start) / 1000000u;
    uint64_t waited = (gvm_now_ns() - start) / 1000000u;
    if (waited >= timeout_ms) return UINT64_MAX;
    struct timespec ts = {0, 20 * 1000000L};
    gvm_futex(&mover_done, FUTEX_WAIT, done, &ts);
  }
}

int gvm_swap_start(void) {
  atomic_store(&mover_stopping, 0);
  read_tuning();
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(&mover, NULL, mover_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  mover_running = r == 0;
  if (r == 0) pthread_setname_np(mover, "gvm-mover");
  return r;
}

void gvm_swap_stop(void) {
  if (!mover_running) return;
  atomic_store(&mover_stopping, 1);
  gvm_swap_kick();
  struct timespec deadline = gvm_realtime_in_ms(1000);
  if (pthread_timedjoin_np(mover, NULL, &deadline) == 0) mover_running = false;
}

void gvm_swap_reset(void) {
  mover_running = false;
  prewarm_given_up = false; /* a forked child's pool starts empty: its pre-warm starts over */
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    mover_ctx[g] = NULL;
    prewarm_made[g] = 0;
    for (int i = 0; i < MAX_STREAMS; i++) mover_stream[g][i] = NULL;
  }
}
