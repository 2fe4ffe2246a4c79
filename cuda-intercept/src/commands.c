/*
 * Applying a controller's command (on the control thread). Values are validated here even though
 * controllers validate too: the block is writable by any process of the same user.
 */
#include <stdio.h>
#include <string.h>

#include "agent.h"

static void answer(struct gvm_command *cmd, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#include <stdarg.h>
static void answer(struct gvm_command *cmd, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd->message, sizeof cmd->message, fmt, ap);
  va_end(ap);
  cmd->status = status;
}

/* The block's present flag alone is not enough: anything of the user's may have set it for a GPU this
 * process never saw, and a freeze or class applied there would answer OK for nothing (or hold launches
 * of no GPU). What the agent itself found at cuInit decides. */
static bool gpu_present(uint32_t gpu) {
  return gpu < GVM_MAX_GPUS && gvm_gpus[gpu].present && GVM_LOAD(&gvm_block->gpu[gpu].present);
}

void gvm_apply_command(struct gvm_command *cmd) {
  uint32_t key = GVM_LOAD(&cmd->key);
  uint32_t gpu = GVM_LOAD(&cmd->gpu);
  uint64_t value = GVM_LOAD(&cmd->value);
  if (key == GVM_KEY_PING) {
    answer(cmd, GVM_STATUS_OK, "pong");
    return;
  }
  if (gvm_kernel_mode_refuses(cmd, key)) return; /* the nvidia-uvm module owns these settings */
  if (!gpu_present(gpu)) {
    answer(cmd, GVM_STATUS_NO_GPU, "GPU %u is not visible to this process", gpu);
    return;
  }
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  switch (key) {
  case GVM_KEY_MEMORY_LIMIT: {
    uint64_t total = GVM_LOAD(&b->total_bytes);
    if (value == 0 || value > total) {
      answer(cmd, GVM_STATUS_INVALID, "memory.limit must be 1..%llu bytes", (unsigned long long)total);
      return;
    }
    GVM_STORE(&b->memory_limit, value);
    if (GVM_LOAD(&b->memory_mode) == GVM_MEMORY_MODE_SWAP) {
      /* the write returns once the mover has brought the GPU's bytes under (or back toward) the limit */
      uint64_t waited = gvm_swap_wait(30000);
      uint64_t cur = GVM_LOAD(&b->memory_current), swapped = GVM_LOAD(&b->memory_swap_current);
      if (waited == UINT64_MAX)
        answer(cmd, GVM_STATUS_OK, "limit set; moves still running (on GPU %llu, on host %llu)",
               (unsigned long long)cur, (unsigned long long)swapped);
      else
        answer(cmd, GVM_STATUS_OK, "limit set in %llu ms: %llu bytes on the GPU, %llu on the host",
               (unsigned long long)waited, (unsigned long long)cur, (unsigned long long)swapped);
      return;
    }
    uint64_t cur = GVM_LOAD(&b->memory_current);
    if (cur > value)
      answer(cmd, GVM_STATUS_OK, "limit set; %llu bytes over it: new allocations fail until usage drops",
             (unsigned long long)(cur - value));
    else
      answer(cmd, GVM_STATUS_OK, "limit set");
    return;
  }
  case GVM_KEY_MEMORY_MODE:
    if (value == GVM_MEMORY_MODE_OOM) {
      GVM_STORE(&b->memory_mode, (uint32_t)GVM_MEMORY_MODE_OOM);
      answer(cmd, GVM_STATUS_OK, "mode oom");
    } else if (value == GVM_MEMORY_MODE_SWAP) {
      GVM_STORE(&b->memory_mode, (uint32_t)GVM_MEMORY_MODE_SWAP);
      gvm_swap_kick();
      answer(cmd, GVM_STATUS_OK, "mode swap: new allocations of 2 MiB or more past the limit live on the host");
    } else {
      answer(cmd, GVM_STATUS_INVALID, "memory.mode must be oom or swap");
    }
    return;
  case GVM_KEY_COMPUTE_PRIORITY:
    if (value > 15) {
      answer(cmd, GVM_STATUS_INVALID, "compute.priority must be 0..15");
      return;
    }
    cmd->status = gvm_compute_set_priority((int)gpu, (int)value, cmd->message, sizeof cmd->message);
    return;
  case GVM_KEY_COMPUTE_FREEZE:
    if (value > 1) {
      answer(cmd, GVM_STATUS_INVALID, "compute.freeze must be 0 or 1");
      return;
    }
    cmd->status = gvm_compute_freeze((int)gpu, value == 1, cmd->message, sizeof cmd->message);
    return;
  case GVM_KEY_POLICY_CLASS:
    cmd->status = gvm_policy_set_class((int)gpu, value > 2 ? -1 : (int)value, cmd->message, sizeof cmd->message);
    return;
  default:
    answer(cmd, GVM_STATUS_INVALID, "unknown key %u", key);
  }
}
