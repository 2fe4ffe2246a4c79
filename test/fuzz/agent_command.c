/*
 * Fuzz target (a): the agent applying whatever a command slot and a GPU block hold. The block file is
 * writable by every process of the user, so gvm_apply_command (cuda-intercept/src/commands.c) sees
 * any bytes: key, gpu, value, and the GPU block it acts on (present flag, total_bytes, counters).
 * Linked with every agent source, like test/agent/rm_replay.c; no libcuda is loaded (GVM_REAL finds
 * nothing), no RM control reaches a driver (the observer has seen no channels).
 *
 * Input: [0] flags (bit 0: kernel mode, bit 1: the driver counts as verified for RM controls)
 *        [1..2] GPUs this process really has (gvm_gpus[i].present, little-endian bit mask)
 *        [3..130] the command slot, raw (struct gvm_command)
 *        [131..] raw bytes over the GPU block the command names (gpu % GVM_MAX_GPUS)
 * Checked after each command (abort when broken): the answer is a known status with a terminated
 * message; nothing is applied to a GPU this process does not have; an applied value is in range.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda-intercept/src/agent.h"

static void fail(const char *what, const struct gvm_command *c) {
  fprintf(stderr, "agent_command: %s (key %u gpu %u value %llu status %d)\n", what, c->key, c->gpu,
          (unsigned long long)c->value, c->status);
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  gvm_config.log_level = -1; /* the agent's warnings would flood the fuzzer's output */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct gvm_control_block *cb;
  if (!cb) cb = calloc(1, sizeof *cb);
  if (!cb || size < 3 + sizeof(struct gvm_command)) return 0;
  memset(cb, 0, sizeof *cb);
  gvm_block = cb;
  gvm_config.log_level = -1;
  uint8_t flags = data[0];
  uint32_t have = (uint32_t)data[1] | (uint32_t)data[2] << 8;
  gvm_kernel_mode = flags & 1;
  /* driver_verified() caches its answer on first use: the env var decides it for this run */
  if (flags & 2) setenv("GVM_RM_ANY_DRIVER", "1", 1);
  for (int i = 0; i < GVM_MAX_GPUS; i++) gvm_gpus[i].present = (have >> i) & 1;
  atomic_store(&gvm_soft_frozen_mask, 0);
  struct gvm_command *cmd = &cb->command;
  memcpy(cmd, data + 3, sizeof *cmd);
  const uint8_t *rest = data + 3 + sizeof *cmd;
  size_t nrest = size - 3 - sizeof *cmd;
  struct gvm_gpu_block *g = &cb->gpu[cmd->gpu % GVM_MAX_GPUS];
  memcpy(g, rest, nrest < sizeof *g ? nrest : sizeof *g);
  /* a software freeze waits (by design, at most 10 s) for submitted work to end: none is pending */
  g->kernels_ended = g->kernels_submitted;
  uint32_t key = cmd->key, gpu = cmd->gpu;
  uint64_t value = cmd->value;
  uint64_t total = g->total_bytes;

  gvm_apply_command(cmd);

  if (cmd->status < GVM_STATUS_OK || cmd->status > GVM_STATUS_BUSY) fail("unknown status", cmd);
  if (!memchr(cmd->message, 0, sizeof cmd->message)) fail("message not terminated", cmd);
  uint32_t mask = atomic_load(&gvm_soft_frozen_mask);
  if (mask & ~have) fail("software freeze of a GPU the process does not have", cmd);
  if (cmd->status == GVM_STATUS_OK && key != GVM_KEY_PING) {
    if (gpu >= GVM_MAX_GPUS || !gvm_gpus[gpu].present) fail("applied to a GPU the process does not have", cmd);
    switch (key) {
    case GVM_KEY_MEMORY_LIMIT:
      if (value == 0 || value > total || g->memory_limit != value) fail("memory limit out of range", cmd);
      break;
    case GVM_KEY_MEMORY_MODE:
      if (value > GVM_MEMORY_MODE_SWAP || g->memory_mode != value) fail("memory mode out of range", cmd);
      break;
    case GVM_KEY_COMPUTE_PRIORITY:
      if (value > 15) fail("priority out of range", cmd);
      break;
    case GVM_KEY_COMPUTE_FREEZE:
      if (value > 1 || g->frozen != value) fail("freeze value out of range", cmd);
      break;
    case GVM_KEY_POLICY_CLASS:
      if (value > GVM_CLASS_BEST_EFFORT || g->policy.klass != value) fail("policy class out of range", cmd);
      break;
    default:
      fail("unknown key applied", cmd);
    }
  }
  /* undo what a command left in force in this process, so every input starts alike */
  for (int i = 0; i < GVM_MAX_GPUS; i++)
    if (atomic_load(&gvm_soft_frozen_mask) & (1u << i)) gvm_compute_freeze(i, false, cmd->message, sizeof cmd->message);
  atomic_store(&gvm_policy_latency_mask, 0);
  return 0;
}
