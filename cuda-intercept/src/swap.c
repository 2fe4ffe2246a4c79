/*
 * The mover: in swap mode, keeps each GPU's device-resident bytes under its limit by moving whole
 * allocations between GPU and host memory at the same virtual address. Past the limit the oldest
 * allocations go to the host; when room appears (a raised limit, frees) the newest come back.
 *
 * A move happens in a quiet window: the application's channels are stopped through the RM (its
 * kernels and copies cannot touch the range), the copy runs on the mover's own context and stream,
 * then the range is remapped and the channels resume. The mover is the only agent thread besides
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
static bool mover_running;
static _Atomic int mover_stopping;
static _Atomic uint32_t mover_wake; /* bumped by every kick */
static _Atomic uint32_t mover_done; /* the wake value the last finished pass started from */
static CUcontext mover_ctx[GVM_MAX_GPUS];
static CUstream mover_stream[GVM_MAX_GPUS];

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
  return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
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
  if (r == CUDA_SUCCESS) {
    r = GVM_REAL(cuMemcpyAsync, b, a, GVM_BACKING_GRANULE, mover_stream[gpu]);
    if (r == CUDA_SUCCESS) r = GVM_REAL(cuMemcpyAsync, a, b, GVM_BACKING_GRANULE, mover_stream[gpu]);
    if (r == CUDA_SUCCESS) r = GVM_REAL(cuStreamSynchronize, mover_stream[gpu]);
    gvm_backing_free(b, GVM_BACKING_GRANULE, hb);
  }
  gvm_backing_free(a, GVM_BACKING_GRANULE, ha);
  return r;
}

/* Waits for the mover's copy, but never forever: false if it is not done within the time. */
static CUresult copy_done(int gpu, int timeout_ms) {
  for (int waited = 0;; waited++) {
    CUresult r = GVM_REAL(cuStreamQuery, mover_stream[gpu]);
    if (r != CUDA_ERROR_NOT_READY) return r;
    if (waited >= timeout_ms * 10) return CUDA_ERROR_TIMEOUT;
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
}

static bool ensure_context(int gpu) {
  if (mover_stream[gpu]) return GVM_REAL(cuCtxSetCurrent, mover_ctx[gpu]) == CUDA_SUCCESS;
  /* objects the driver allocates for this context are ours: keep them out of the app's freeze */
  gvm_rm_set_creating_gpu(GVM_RM_AGENT_OWNED);
  CUresult r = GVM_REAL(cuCtxCreate_v2, &mover_ctx[gpu], 0, gvm_gpus[gpu].device);
  if (r == CUDA_SUCCESS) r = GVM_REAL(cuStreamCreate, &mover_stream[gpu], CU_STREAM_NON_BLOCKING);
  gvm_rm_set_creating_gpu(-1);
  if (r == CUDA_SUCCESS) r = warm_up(gpu);
  if (r != CUDA_SUCCESS) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "cannot create the mover's context on GPU %d (%d); no moves", gpu, (int)r);
    mover_stream[gpu] = NULL;
    return false;
  }
  return true;
}

enum move_result { MOVE_DONE, MOVE_SKIPPED, MOVE_ABORTED /* the quiet window was ended early */ };

/* Moves one allocation to the other side. The application is quiet while this runs. */
static enum move_result move_one(int gpu, const struct gvm_swap_candidate *c, bool to_device) {
  if (!gvm_swap_begin(c->va, c->handle)) return MOVE_SKIPPED; /* freed or moved meanwhile */
  CUdevice dev = gvm_gpus[gpu].device;
  CUdeviceptr stage = 0;
  CUmemGenericAllocationHandle fresh = 0;
  CUmemAccessDesc access = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = dev},
                            .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  CUresult r = GVM_REAL(cuMemAddressReserve, &stage, c->size, GVM_BACKING_GRANULE, 0, 0);
  if (r == CUDA_SUCCESS) {
    r = gvm_backing_map(stage, c->size, dev, to_device, &fresh);
    if (r != CUDA_SUCCESS) GVM_REAL(cuMemAddressFree, stage, c->size);
  }
  if (r != CUDA_SUCCESS) {
    gvm_swap_end(c->va, false, 0, false);
    return MOVE_SKIPPED;
  }
  gvm_log(GVM_LOG_DEBUG, "move %#llx (%llu bytes) to the %s: staging ready", (unsigned long long)c->va,
          (unsigned long long)c->size, to_device ? "GPU" : "host");
  r = GVM_REAL(cuMemcpyAsync, stage, c->va, c->size, mover_stream[gpu]);
  if (r == CUDA_SUCCESS) r = copy_done(gpu, 10000);
  bool aborted = r == CUDA_ERROR_TIMEOUT;
  if (aborted) {
    /* let the application run again, then wait for our copy before touching the staging range */
    GVM_LOG_ONCE(GVM_LOG_ERROR, "a swap copy did not finish in 10 s while the process was stopped; moves abandoned");
    gvm_compute_resume(gpu);
    GVM_REAL(cuStreamSynchronize, mover_stream[gpu]);
  }
  gvm_log(GVM_LOG_DEBUG, "move %#llx: copied (%d)", (unsigned long long)c->va, (int)r);
  bool moved = false;
  if (!aborted && r == CUDA_SUCCESS && GVM_REAL(cuMemUnmap, c->va, c->size) == CUDA_SUCCESS) {
    r = GVM_REAL(cuMemMap, c->va, c->size, 0, fresh, 0);
    if (r == CUDA_SUCCESS) r = GVM_REAL(cuMemSetAccess, c->va, c->size, &access, 1);
    if (r == CUDA_SUCCESS) {
      moved = true;
    } else { /* put the old physical memory back where it was: nothing is lost */
      GVM_REAL(cuMemUnmap, c->va, c->size);
      GVM_REAL(cuMemMap, c->va, c->size, 0, (CUmemGenericAllocationHandle)c->handle, 0);
      GVM_REAL(cuMemSetAccess, c->va, c->size, &access, 1);
    }
  }
  GVM_REAL(cuMemUnmap, stage, c->size);
  GVM_REAL(cuMemAddressFree, stage, c->size);
  GVM_REAL(cuMemRelease, moved ? (CUmemGenericAllocationHandle)c->handle : fresh);
  if (!moved) GVM_LOG_ONCE(GVM_LOG_WARN, "a move to the %s failed (%d); the range stays where it was",
                           to_device ? "GPU" : "host", (int)r);
  gvm_swap_end(c->va, moved, (uint64_t)fresh, to_device);
  return aborted ? MOVE_ABORTED : moved ? MOVE_DONE : MOVE_SKIPPED;
}

/* One pass for one GPU: pick what to move, then move it in one quiet window. */
static void rebalance(int gpu, struct gvm_swap_candidate *cands) {
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
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
  gvm_log(GVM_LOG_DEBUG, "mover: %zu allocation(s) to the %s; stopping the process's channels", count,
          out ? "host" : "GPU");
  if (!gvm_compute_quiesce(gpu)) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "swap moves need the RM path to stop the process's channels; none done");
    return;
  }
  for (size_t i = first; i < first + count; i++) {
    enum move_result m = move_one(gpu, &cands[i], !out);
    if (m == MOVE_ABORTED) return; /* already resumed */
    if (m != MOVE_DONE && !out) break; /* the GPU may be full for others: stop */
  }
  gvm_compute_resume(gpu);
  gvm_log(GVM_LOG_DEBUG, "mover: done, channels resumed");
}

static void *mover_main(void *arg) {
  (void)arg;
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  GVM_REAL(cuThreadExchangeStreamCaptureMode, &mode);
  struct gvm_swap_candidate *cands = malloc(MAX_MOVES * sizeof *cands);
  while (!atomic_load(&mover_stopping)) {
    uint32_t wake = atomic_load(&mover_wake);
    for (int g = 0; cands && g < GVM_MAX_GPUS; g++)
      if (gvm_gpus[g].present) rebalance(g, cands);
    atomic_store(&mover_done, wake);
    futex(&mover_done, FUTEX_WAKE, INT32_MAX, NULL);
    /* memory freed by others or by the app lets data come back: look again now and then */
    struct timespec ts = {0, 250 * 1000000L};
    if (atomic_load(&mover_wake) == wake) futex(&mover_wake, FUTEX_WAIT_PRIVATE, wake, &ts);
  }
  free(cands);
  return NULL;
}

void gvm_swap_kick(void) {
  atomic_fetch_add(&mover_wake, 1);
  futex(&mover_wake, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Control thread: kick the mover and wait (never calling libcuda) until a pass that began after the
 * kick has finished; returns the milliseconds waited, or UINT64_MAX on timeout. */
uint64_t gvm_swap_wait(uint64_t timeout_ms) {
  if (!mover_running) return UINT64_MAX;
  uint32_t ticket = atomic_fetch_add(&mover_wake, 1) + 1;
  futex(&mover_wake, FUTEX_WAKE_PRIVATE, 1, NULL);
  uint64_t start = gvm_now_ns();
  for (;;) {
    uint32_t done = atomic_load(&mover_done);
    if ((int32_t)(done - ticket) >= 0) return (gvm_now_ns() - start) / 1000000u;
    uint64_t waited = (gvm_now_ns() - start) / 1000000u;
    if (waited >= timeout_ms) return UINT64_MAX;
    struct timespec ts = {0, 20 * 1000000L};
    futex(&mover_done, FUTEX_WAIT, done, &ts);
  }
}

int gvm_swap_start(void) {
  atomic_store(&mover_stopping, 0);
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
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 1;
  if (pthread_timedjoin_np(mover, NULL, &deadline) == 0) mover_running = false;
}

void gvm_swap_reset(void) {
  mover_running = false;
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    mover_ctx[g] = NULL;
    mover_stream[g] = NULL;
  }
}
