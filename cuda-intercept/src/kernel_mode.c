/*
 * Kernel mode: a patched nvidia-uvm module serves memory.limit, compute.priority and compute.freeze
 * for each process and GPU under <debugfs>/nvidia-uvm/processes/<pid>/<gpu>/. The module can only
 * evict managed memory to the host, so plain device allocations become managed allocations that
 * prefer the device; the agent keeps counting memory and kernels, and refuses the settings the
 * module owns so that two places never disagree about a limit or a freeze.
 *
 * GVM_BACKEND=agent|kernel|auto (default auto: kernel when <root>/processes is a directory);
 * GVM_DEBUGFS_ROOT moves <root> (tests).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define DEBUGFS_ROOT_DEFAULT "/sys/kernel/debug/nvidia-uvm"
/* what cuMemAllocPitch gives on every GPU gvm targets; the driver's choice is not queryable */
#define PITCH_ALIGN 512u

bool gvm_kernel_mode;

static const char *debugfs_root(void) {
  const char *r = getenv("GVM_DEBUGFS_ROOT");
  return r && *r ? r : DEBUGFS_ROOT_DEFAULT;
}

static bool tree_present(const char *root) {
  char path[512];
  struct stat st;
  if ((size_t)snprintf(path, sizeof path, "%s/processes", root) >= sizeof path) return false;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool want_kernel_mode(void) {
  const char *want = getenv("GVM_BACKEND");
  const char *root = debugfs_root();
  if (want && strcmp(want, "agent") == 0) return false;
  if (want && strcmp(want, "kernel") == 0) {
    if (!tree_present(root))
      gvm_log(GVM_LOG_WARN, "GVM_BACKEND=kernel but %s/processes is missing: allocations become managed, "
                            "nothing limits them", root);
    return true;
  }
  if (want && *want && strcmp(want, "auto") != 0)
    gvm_log(GVM_LOG_WARN, "GVM_BACKEND=%s is not agent, kernel or auto; using auto", want);
  return tree_present(root);
}

/* Called by gvm_agent_start after the GPUs are described and before the agent is marked active. */
void gvm_kernel_mode_start(struct gvm_control_block *cb) {
  gvm_kernel_mode = want_kernel_mode();
  if (!gvm_kernel_mode) return;
  if (gvm_config.memory_limit || gvm_config.memory_mode != GVM_MEMORY_MODE_OOM || gvm_config.priority != 8)
    gvm_log(GVM_LOG_WARN, "kernel mode: start-up memory limit, mode and priority are ignored; "
                          "write them to %s/processes/%d/<gpu>/", debugfs_root(), (int)getpid());
  for (int i = 0; i < GVM_MAX_GPUS; i++) {
    struct gvm_gpu_block *g = &cb->gpu[i];
    if (!GVM_LOAD(&g->present)) continue;
    /* the agent enforces nothing here: no limit of its own, no timeslice applied to new channels */
    GVM_STORE(&g->memory_limit, GVM_LOAD(&g->total_bytes));
    GVM_STORE(&g->memory_mode, (uint32_t)GVM_MEMORY_MODE_OOM);
    GVM_STORE(&g->priority, 8);
  }
  GVM_STORE(&cb->backend, (uint32_t)GVM_BACKEND_KERNEL);
  gvm_log(GVM_LOG_INFO, "kernel mode: device allocations are managed memory; settings live in %s/processes/%d/",
          debugfs_root(), (int)getpid());
}

/* Managed memory that prefers `gpu`; CUDA_ERROR_NOT_SUPPORTED when the driver has no managed memory. */
static CUresult managed_on_device(CUdeviceptr *dptr, size_t size, int gpu) {
  CUresult r = GVM_REAL(cuMemAllocManaged, dptr, size, CU_MEM_ATTACH_GLOBAL);
  if (r != CUDA_SUCCESS) return r;
  CUdevice dev = gvm_gpus[gpu].device;
  CUmemLocation where = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = dev};
  CUresult a = GVM_REAL(cuMemAdvise_v2, *dptr, size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, where);
  if (a == CUDA_ERROR_NOT_FOUND) a = GVM_REAL(cuMemAdvise, *dptr, size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, dev);
  /* without the advice the memory still works and can still be evicted; it may just start on the host */
  if (a != CUDA_SUCCESS) GVM_LOG_ONCE(GVM_LOG_WARN, "kernel mode: cuMemAdvise(SET_PREFERRED_LOCATION) failed: %d", (int)a);
  return CUDA_SUCCESS;
}

static bool usable(int gpu) { return gpu >= 0 && gpu < GVM_MAX_GPUS && gvm_gpus[gpu].present; }

CUresult gvm_kernel_alloc(CUdeviceptr *dptr, size_t size, int gpu) {
  if (!usable(gpu) || size == 0) return GVM_REAL(cuMemAlloc_v2, dptr, size); /* the driver's own error */
  CUresult r = managed_on_device(dptr, size, gpu);
  if (r == CUDA_ERROR_NOT_SUPPORTED) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "kernel mode: no managed memory on this driver; allocations stay plain");
    r = GVM_REAL(cuMemAlloc_v2, dptr, size);
  }
  gvm_memory_count_device(gpu, r, r == CUDA_SUCCESS ? *dptr : 0, size);
  return r;
}

CUresult gvm_kernel_alloc_pitch(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height, unsigned elem,
                                int gpu) {
  /* the driver's own argument checks, so a bad call fails the same way in both modes */
  if (!usable(gpu) || !pitch || width == 0 || height == 0 || (elem != 4 && elem != 8 && elem != 16))
    return GVM_REAL(cuMemAllocPitch_v2, dptr, pitch, width, height, elem);
  size_t row = (width + PITCH_ALIGN - 1) / PITCH_ALIGN * PITCH_ALIGN;
  if (row < width || height > SIZE_MAX / row) return CUDA_ERROR_INVALID_VALUE;
  CUresult r = managed_on_device(dptr, row * height, gpu);
  if (r == CUDA_ERROR_NOT_SUPPORTED) return GVM_REAL(cuMemAllocPitch_v2, dptr, pitch, width, height, elem);
  if (r == CUDA_SUCCESS) *pitch = row;
  gvm_memory_count_device(gpu, r, r == CUDA_SUCCESS ? *dptr : 0, (uint64_t)row * height);
  return r;
}

/* Settings the module owns are refused with the file to write instead (the library never sends them). */
bool gvm_kernel_mode_refuses(struct gvm_command *cmd, uint32_t key) {
  if (!gvm_kernel_mode) return false;
  const char *file;
  switch (key) {
  case GVM_KEY_MEMORY_LIMIT: file = "memory.limit"; break;
  case GVM_KEY_MEMORY_MODE: file = "memory.limit (the module always swaps)"; break;
  case GVM_KEY_COMPUTE_PRIORITY: file = "compute.priority"; break;
  case GVM_KEY_COMPUTE_FREEZE: file = "compute.freeze"; break;
  default: return false;
  }
  snprintf(cmd->message, sizeof cmd->message, "kernel mode: use nvidia-uvm's processes/%d/<gpu>/%s", (int)getpid(),
           file);
  cmd->status = GVM_STATUS_UNSUPPORTED;
  return true;
}
