/*
 * Agent lifecycle: started by the first successful cuInit (or the first context if cuInit escaped
 * us), reset in a forked child, and torn down at exit. Until it starts, and when it cannot, every
 * hook is a plain pass-through: gvm never takes the application down.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "backing.h"

atomic_int gvm_active;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t started_pid;

uint64_t gvm_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void describe_gpus(struct gvm_control_block *cb) {
  int count = 0;
  int drv = 0;
  if (GVM_REAL(cuDriverGetVersion, &drv) == CUDA_SUCCESS) cb->driver_version = (uint32_t)drv;
  if (GVM_REAL(cuDeviceGetCount, &count) != CUDA_SUCCESS) count = 0;
  if (count > GVM_MAX_GPUS) {
    gvm_log(GVM_LOG_WARN, "%d GPUs visible; gvm tracks the first %d", count, GVM_MAX_GPUS);
    count = GVM_MAX_GPUS;
  }
  for (int i = 0; i < count; i++) {
    struct gvm_gpu_block *g = &cb->gpu[i];
    CUdevice dev = 0;
    if (GVM_REAL(cuDeviceGet, &dev, i) != CUDA_SUCCESS) continue;
    gvm_gpus[i].device = dev;
    g->ordinal = i;
    CUuuid uuid;
    if (GVM_REAL(cuDeviceGetUuid_v2, &uuid, dev) == CUDA_SUCCESS) memcpy(g->uuid, uuid.bytes, 16);
    GVM_REAL(cuDeviceGetPCIBusId, g->pci_bus_id, (int)sizeof g->pci_bus_id, dev);
    GVM_REAL(cuDeviceGetName, g->name, (int)sizeof g->name, dev);
    size_t total = 0;
    GVM_REAL(cuDeviceTotalMem_v2, &total, dev);
    g->total_bytes = total;
    uint64_t limit = gvm_config.memory_limit;
    g->memory_limit = (limit && limit < total) ? limit : total;
    if (limit > total)
      gvm_log(GVM_LOG_WARN, "GVM_MEMORY_LIMIT %llu exceeds GPU %d (%zu bytes); using the GPU's size",
              (unsigned long long)limit, i, total);
    g->memory_mode = (uint32_t)gvm_config.memory_mode;
    g->priority = gvm_config.priority;
    gvm_gpus[i].present = true;
    GVM_STORE(&g->present, 1u);
  }
  cb->gpu_count = (uint32_t)count;
  atomic_store(&gvm_gpu_count, count);
}

static void on_exit_handler(void) {
  if (started_pid != getpid()) return; /* inherited by a forked child: the block is the parent's */
  gvm_swap_stop();
  gvm_policy_stop();
  gvm_compute_release_all();
  gvm_monitor_stop();
  gvm_block_remove();
}

void gvm_agent_start(void) {
  if (GVM_LIKELY(atomic_load_explicit(&gvm_active, memory_order_acquire) != 0)) return;
  if (gvm_config.disabled) {
    atomic_store(&gvm_active, 2);
    return;
  }
  /* held across driver calls only here: nothing can be frozen before the agent exists */
  int visible = 0;
  if (GVM_REAL(cuDeviceGetCount, &visible) != CUDA_SUCCESS) return; /* driver not initialised yet */
  pthread_mutex_lock(&start_lock);
  if (atomic_load(&gvm_active) == 0) {
    struct gvm_control_block *cb = gvm_block_create();
    if (!cb) {
      atomic_store(&gvm_active, 2);
    } else {
      gvm_block = cb;
      describe_gpus(cb);
      for (int i = 0; i < GVM_MAX_GPUS; i++) {
        gvm_publish_memory(i);
        gvm_publish_contexts(i);
      }
      gvm_rm_publish_all();
      gvm_kernel_mode_start(cb);
      started_pid = getpid();
      static bool registered;
      if (!registered && atexit(on_exit_handler) == 0) registered = true;
      /* the mover and the policy boards before the control and event threads: a command applied
       * at once (one sent right after cuInit) must find the mover to wait on, and the event
       * thread's policy tick reads the boards and slots gvm_policy_start() writes */
      if (gvm_swap_start() != 0) gvm_log(GVM_LOG_ERROR, "cannot start the mover thread; swap mode cannot move data");
      gvm_policy_start();
      if (gvm_monitor_start() != 0) {
        gvm_log(GVM_LOG_ERROR, "cannot start the control thread; settings will not be applied");
      }
      GVM_STORE(&cb->agent_state, (uint32_t)GVM_AGENT_READY);
      atomic_store_explicit(&gvm_active, 1, memory_order_release);
      gvm_log(GVM_LOG_INFO, "agent ready: %d GPU(s), block %s/%d", (int)cb->gpu_count, gvm_config.shm_dir,
              (int)getpid());
    }
  }
  pthread_mutex_unlock(&start_lock);
}

/* A forked child shares nothing with the parent's CUDA state: start from scratch on its own cuInit. */
static void after_fork_child(void) {
  pthread_mutex_init(&start_lock, NULL);
  atomic_store(&gvm_active, 0);
  gvm_block_forget();
  gvm_contexts_reset();
  gvm_launch_reset();
  gvm_memory_reset();
  gvm_rm_reset();
  gvm_compute_reset();
  gvm_swap_reset();
  gvm_backing_reset();
  gvm_policy_reset();
  started_pid = 0;
}

__attribute__((constructor)) static void gvm_agent_load(void) {
  pthread_atfork(NULL, NULL, after_fork_child);
}

/* ---- cuInit ---- */
CUresult gvm_hook_cuInit(unsigned int flags) {
  CUresult r = GVM_REAL(cuInit, flags);
  if (r == CUDA_SUCCESS) gvm_agent_start();
  return r;
}
