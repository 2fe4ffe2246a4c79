/*
 * Internal interface of the gvm agent (libgvm.so). Everything here is hidden; only the hooks
 * declared from hooks.def (plus ioctl and dlsym) are exported, see ../exports.map.
 */
#ifndef GVM_AGENT_H
#define GVM_AGENT_H

#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gvm/control_block.h"

#define GVM_HIDDEN __attribute__((visibility("hidden")))

/* The futex syscall (glibc has no wrapper); shared words use the plain ops, in-process ones _PRIVATE. */
static inline long gvm_futex(void *addr, int op, uint32_t val, const struct timespec *ts) {
  return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}
/* CLOCK_REALTIME ms from now: the deadline of a pthread_timedjoin_np at exit. */
static inline struct timespec gvm_realtime_in_ms(long ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}
#define GVM_LIKELY(x) __builtin_expect(!!(x), 1)
#define GVM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/*
 * Entry points older than the public cudaTypedefs.h covers (they are still exported by libcuda and
 * returned by cuGetProcAddress for old requested versions). C11 allows repeating identical typedefs.
 */
typedef CUresult(CUDAAPI *PFN_cuDevicePrimaryCtxRelease_v7000)(CUdevice dev);
typedef CUresult(CUDAAPI *PFN_cuDevicePrimaryCtxReset_v7000)(CUdevice dev);
typedef CUresult(CUDAAPI *PFN_cuMemHostRegister_v4000)(void *p, size_t bytesize, unsigned int flags);
typedef CUresult(CUDAAPI *PFN_cuStreamBeginCapture_v10000)(CUstream stream);
typedef CUresult(CUDAAPI *PFN_cuStreamBeginCapture_v10000_ptsz)(CUstream stream);
typedef CUresult(CUDAAPI *PFN_cuGraphInstantiate_v10000)(CUgraphExec *exec, CUgraph graph, CUgraphNode *err_node,
                                                        char *log, size_t log_size);
typedef CUresult(CUDAAPI *PFN_cuIpcOpenMemHandle_v4010)(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int flags);
typedef CUresult(CUDAAPI *PFN_cuGraphInstantiate_v11000)(CUgraphExec *exec, CUgraph graph, CUgraphNode *err_node,
                                                        char *log, size_t log_size);

/* ---- hook declarations: each exported under the driver's own symbol name ---- */
#define GVM_HOOK(sym, api, ver, flavor, pfn) \
  extern __typeof__(*(pfn)0) gvm_hook_##sym __asm__(#sym) __attribute__((visibility("default")));
#include "hooks.def"
#undef GVM_HOOK

/* ---- real driver entry points, resolved once (real.c) ---- */
struct gvm_real {
#define GVM_HOOK(sym, api, ver, flavor, pfn) pfn p_##sym;
#include "hooks.def"
#undef GVM_HOOK
#define GVM_DRIVER(sym, pfn) pfn p_##sym;
#include "driver.def"
#undef GVM_DRIVER
};
GVM_HIDDEN extern struct gvm_real gvm_real;

/* Calls the real entry point, or returns CUDA_ERROR_NOT_FOUND when libcuda lacks it. */
#define GVM_REAL(sym, ...) \
  (gvm_resolve_driver(), gvm_real.p_##sym ? gvm_real.p_##sym(__VA_ARGS__) : CUDA_ERROR_NOT_FOUND)

enum gvm_hook_id {
#define GVM_HOOK(sym, api, ver, flavor, pfn) GVM_HOOK_ID_##sym,
#include "hooks.def"
#undef GVM_HOOK
  GVM_HOOK_COUNT
};

enum gvm_flavor { GVM_FLAVOR_PLAIN = 0, GVM_FLAVOR_PTSZ = 1 };

struct gvm_hook_info {
  const char *symbol; /* exported name, e.g. cuMemAlloc_v2 */
  const char *api;    /* name cuGetProcAddress is asked for, e.g. cuMemAlloc */
  int version;        /* CUDA version that introduced this symbol */
  int flavor;
  void *hook;
};
GVM_HIDDEN extern const struct gvm_hook_info gvm_hooks[GVM_HOOK_COUNT];

GVM_HIDDEN void gvm_resolve_driver(void);
GVM_HIDDEN void *gvm_real_dlsym(void *handle, const char *name);
GVM_HIDDEN void *gvm_real_hook_target(int id); /* real pointer for hook id, or NULL */
GVM_HIDDEN int gvm_hook_by_symbol(const char *symbol); /* hook id or -1 */

/* ---- configuration (environment, read once at load) ---- */
struct gvm_config {
  bool disabled;
  int log_level; /* 0 error, 1 warn, 2 info, 3 debug */
  int event_interval_ms;
  uint64_t memory_limit; /* 0: the GPU's size */
  int memory_mode;
  int priority;
  int policy_class;        /* enum gvm_policy_class (GVM_CLASS) */
  int policy_idle_ms;      /* GVM_POLICY_IDLE_MS */
  int policy_spin_us;      /* GVM_POLICY_SPIN_US: a released best-effort thread polls the board this long before sleeping */
  bool policy_throttle;    /* GVM_POLICY_ACTION=throttle (default freeze) */
  int policy_mem_wait_ms;  /* GVM_POLICY_MEM_WAIT_MS: how long a latency allocation waits for lent memory */
  char shm_dir[256];
  char libcuda[256];
  char rm_trace[256];
};
GVM_HIDDEN extern struct gvm_config gvm_config;

/* ---- logging that never allocates; GVM_LOG_ONCE logs a site's first occurrence only ---- */
enum { GVM_LOG_ERROR = 0, GVM_LOG_WARN = 1, GVM_LOG_INFO = 2, GVM_LOG_DEBUG = 3 };
GVM_HIDDEN void gvm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define GVM_LOG_ONCE(level, ...)                                            \
  do {                                                                      \
    static atomic_flag gvm_logged_ = ATOMIC_FLAG_INIT;                      \
    if (!atomic_flag_test_and_set_explicit(&gvm_logged_, memory_order_relaxed)) \
      gvm_log(level, __VA_ARGS__);                                          \
  } while (0)

/* ---- agent lifecycle (agent.c) ---- */
/* 0: not started, 1: running (block mapped, monitor thread up), 2: disabled for this process */
GVM_HIDDEN extern atomic_int gvm_active;
GVM_HIDDEN extern struct gvm_control_block *gvm_block;
GVM_HIDDEN void gvm_agent_start(void); /* after the driver initialised; idempotent */
GVM_HIDDEN uint64_t gvm_now_ns(void);

/* ---- GPUs and contexts (contexts.c) ---- */
struct gvm_gpu_state {
  /* device memory, split by origin so memory_current can be recomputed exactly */
  _Atomic uint64_t sync_bytes;  /* cuMemAlloc, pitch */
  _Atomic uint64_t vmm_bytes;   /* cuMemCreate with a device location */
  _Atomic uint64_t pool_bytes;  /* reserved by stream-ordered pools */
  _Atomic uint64_t swap_bytes;  /* swap mode: allocations whose physical memory is on the host */
  _Atomic uint64_t managed_bytes;
  _Atomic uint64_t host_bytes;
  _Atomic uint64_t alloc_count, free_count, alloc_failures;
  _Atomic int primary_refs;
  _Atomic int explicit_contexts;
  CUdevice device;
  bool present;
};
GVM_HIDDEN extern struct gvm_gpu_state gvm_gpus[GVM_MAX_GPUS];
GVM_HIDDEN extern _Atomic int gvm_gpu_count;
GVM_HIDDEN int gvm_current_gpu(void);                /* ordinal of the calling thread's context, -1 */
GVM_HIDDEN int gvm_context_gpu(CUcontext ctx);       /* ordinal of ctx, learning it if new; -1 */
GVM_HIDDEN CUcontext gvm_single_context(void);       /* the only live context, or NULL */
GVM_HIDDEN void gvm_contexts_reset(void);            /* fork child */
GVM_HIDDEN void gvm_publish_memory(int gpu);         /* recompute memory_current into the block */
GVM_HIDDEN void gvm_publish_contexts(int gpu);

/* ---- launches and streams (launch.c) ---- */
GVM_HIDDEN void gvm_launch_reset(void);
GVM_HIDDEN void gvm_streams_retire_context(CUcontext ctx);
/* monitor side: mark streams, retire completed marks, sum counters per GPU */
GVM_HIDDEN bool gvm_streams_tick(uint64_t *submitted, uint64_t *ended);
/* true while any stream capture is open: then app threads make no driver queries of their own, since
 * a "potentially unsafe" call during a global-mode capture invalidates it */
GVM_HIDDEN bool gvm_capture_active(void);

/* ---- memory (memory.c) ---- */
GVM_HIDDEN void gvm_memory_reset(void);
GVM_HIDDEN void gvm_pools_refresh(void);
GVM_HIDDEN void gvm_memory_forget_context(CUcontext ctx);

/* ---- swap: moving allocations between GPU and host (memory.c keeps the records, swap.c moves) ---- */
struct gvm_swap_candidate {
  uint64_t va, size, handle, seq;
};
GVM_HIDDEN size_t gvm_swap_candidates(int gpu, bool on_device, struct gvm_swap_candidate *out, size_t room);
GVM_HIDDEN bool gvm_swap_begin(uint64_t va, uint64_t handle);
GVM_HIDDEN void gvm_swap_end(uint64_t va, bool moved, uint64_t new_handle, bool now_on_device);
GVM_HIDDEN void gvm_swap_kick(void);
GVM_HIDDEN int gvm_swap_start(void);
GVM_HIDDEN void gvm_swap_stop(void);
GVM_HIDDEN uint64_t gvm_swap_wait(uint64_t timeout_ms);
GVM_HIDDEN void gvm_swap_reset(void); /* control thread: wait for a rebalance pass */
/* CUDA IPC of swappable ranges (ipc.c): an exported range is pinned, on the GPU, for good */
struct gvm_swap_pin {
  uint64_t va, size, handle;
  int gpu;
  bool on_device;
};
GVM_HIDDEN bool gvm_swap_pin(uint64_t ptr, struct gvm_swap_pin *out); /* the range holding ptr, now pinned */
GVM_HIDDEN bool gvm_swap_state(uint64_t va, struct gvm_swap_pin *out);
GVM_HIDDEN size_t gvm_swap_pinned_away(int gpu, struct gvm_swap_candidate *out, size_t room);
GVM_HIDDEN void gvm_ipc_forget(uint64_t va); /* the range is freed: drop its export */

/* ---- RM observer (rm_observer.c) ---- */
GVM_HIDDEN void gvm_rm_reset(void);
GVM_HIDDEN void gvm_rm_publish_all(void);
GVM_HIDDEN void gvm_rm_set_creating_gpu(int gpu); /* tag objects allocated by this thread; -1 clears */
/* pure observer entry, also fed by tests with recorded byte sequences */
GVM_HIDDEN void gvm_rm_observe(int fd, unsigned nr, unsigned size, const void *arg, int ret);

/* what compute control needs to steer one GPU's channels (a consistent copy) */
struct gvm_rm_target {
  int fd;
  uint32_t client, subdevice;
  uint32_t ntsg, nchan;
  uint32_t tsg[GVM_MAX_TSGS];
  uint32_t tsg_engine[GVM_MAX_TSGS];
  uint32_t chan[GVM_MAX_CHANNELS];
};
GVM_HIDDEN bool gvm_rm_snapshot(int gpu, struct gvm_rm_target *out);
GVM_HIDDEN void gvm_rm_note_timeslice(uint32_t client, uint32_t tsg, uint64_t us);
GVM_HIDDEN bool gvm_rm_compute_only(struct gvm_rm_target *t);
GVM_HIDDEN int gvm_real_ioctl(int fd, unsigned long request, void *arg);

/* ---- compute control (compute.c) ---- */
GVM_HIDDEN extern _Atomic uint32_t gvm_soft_frozen_mask;
GVM_HIDDEN int gvm_compute_set_priority(int gpu, int priority, char *msg, size_t room);
GVM_HIDDEN int gvm_compute_freeze(int gpu, bool freeze, char *msg, size_t room);
GVM_HIDDEN void gvm_compute_adopt(int gpu, int fd, uint32_t client, uint32_t subdevice, uint32_t klass,
                                  uint32_t handle);
/* libcuda scheduled a TSG or channel (which enables channels): a frozen or held GPU's stay stopped */
GVM_HIDDEN void gvm_compute_channels_scheduled(int gpu, int fd, uint32_t client, uint32_t subdevice, const uint32_t *chans,
                                          uint32_t n);
GVM_HIDDEN void gvm_compute_release_all(void);
GVM_HIDDEN void gvm_compute_reset(void);
/* the mover's quiet window: the app's channels stopped (unless the user froze them already) */
GVM_HIDDEN bool gvm_compute_quiesce(int gpu);
GVM_HIDDEN void gvm_compute_resume(int gpu);
GVM_HIDDEN void gvm_launch_gate_wait(void);
/* every launch hook passes this gate first: one relaxed load unless a software freeze is in force */
#define GVM_LAUNCH_GATE()                                                                \
  do {                                                                                   \
    if (GVM_UNLIKELY(atomic_load_explicit(&gvm_soft_frozen_mask, memory_order_relaxed))) \
      gvm_launch_gate_wait();                                                            \
  } while (0)

/* where a policy hold's time went: asked (the call), locked (control_lock taken: the mover may hold it
 * for a whole move), stopped (the hold took effect: earlier than locked when a move's quiet window had
 * already stopped the channels and handed them over) */
struct gvm_hold_timing {
  uint64_t asked_ns, locked_ns, stopped_ns;
};
/* the policy's own hold on a best-effort process, independent of the user's freeze (0 or an RM status) */
GVM_HIDDEN uint32_t gvm_compute_policy_hold(int gpu, bool hold, bool throttle, struct gvm_hold_timing *timing);

/* ---- automatic policy (policy.c) ---- */
GVM_HIDDEN extern _Atomic uint32_t gvm_policy_latency_mask; /* GPUs where this process publishes busy */
GVM_HIDDEN void gvm_policy_start(void);                     /* after the GPUs are described */
GVM_HIDDEN void gvm_policy_stop(void);                      /* exit: leave the boards, release holds */
GVM_HIDDEN void gvm_policy_reset(void);                     /* fork child */
GVM_HIDDEN void gvm_policy_tick(const uint64_t *submitted, const uint64_t *ended); /* event thread */
GVM_HIDDEN int gvm_policy_set_class(int gpu, int klass, char *msg, size_t room);   /* control thread */
GVM_HIDDEN uint64_t gvm_policy_cap(int gpu); /* device bytes allowed while memory is lent; UINT64_MAX: none */
/* a latency allocation failed for lack of memory: ask best-effort peers to give some up; true if worth retrying */
GVM_HIDDEN bool gvm_policy_need_memory(int gpu, uint64_t bytes);
/* per launch: one relaxed load unless this process is latency-class on some GPU */
#define GVM_POLICY_LAUNCH(gpu)                                                                      \
  do {                                                                                              \
    if (GVM_UNLIKELY(atomic_load_explicit(&gvm_policy_latency_mask, memory_order_relaxed))) \
      gvm_policy_on_launch(gpu);                                                                    \
  } while (0)
GVM_HIDDEN void gvm_policy_on_launch(int gpu);
/* launch.c: the GPU's submitted total, re-read to close the race between an idle mark and a launch */
GVM_HIDDEN uint64_t gvm_streams_submitted(int gpu);

/* ---- commands and control block (block.c, commands.c, monitor.c) ---- */
GVM_HIDDEN struct gvm_control_block *gvm_block_create(void);
GVM_HIDDEN void gvm_block_remove(void);
GVM_HIDDEN void gvm_block_forget(void); /* fork child: drop the parent's mapping without removing it */
/* ---- owner locks (owner_lock.c): liveness any namespace can test ---- */
GVM_HIDDEN int gvm_owner_lock(int fd, off_t at, bool lock); /* 0, or the errno of the failed lock/unlock */
GVM_HIDDEN int gvm_owner_alive(int fd, off_t at);           /* 1 held, 0 not held, -1 cannot tell */
GVM_HIDDEN void gvm_fork_window_enter(void); /* from opening a locked file until fd and mapping are recorded */
GVM_HIDDEN void gvm_fork_window_leave(void);
GVM_HIDDEN void gvm_apply_command(struct gvm_command *cmd);
GVM_HIDDEN int gvm_monitor_start(void);
GVM_HIDDEN void gvm_monitor_stop(void);
GVM_HIDDEN void gvm_monitor_kick(void);

/* ---- kernel mode (kernel_mode.c): the patched nvidia-uvm module owns limits, priority, freeze ---- */
GVM_HIDDEN extern bool gvm_kernel_mode; /* set once at agent start, before any hook reads it */
GVM_HIDDEN void gvm_kernel_mode_start(struct gvm_control_block *cb);
GVM_HIDDEN CUresult gvm_kernel_alloc(CUdeviceptr *dptr, size_t size, int gpu);
GVM_HIDDEN CUresult gvm_kernel_alloc_pitch(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                           unsigned elem, int gpu);
GVM_HIDDEN bool gvm_kernel_mode_refuses(struct gvm_command *cmd, uint32_t key);
/* memory.c: count a managed allocation that stands in for device memory */
GVM_HIDDEN void gvm_memory_count_device(int gpu, CUresult r, CUdeviceptr ptr, uint64_t size);

/* ---- memory limit (shared by memory.c and commands.c) ---- */
GVM_HIDDEN uint64_t gvm_memory_current(int gpu);
GVM_HIDDEN uint64_t gvm_memory_limit(int gpu);

#endif
