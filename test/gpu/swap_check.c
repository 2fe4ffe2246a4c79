/*
 * Device check of swap mode: 1 GiB buffers with known contents are moved to the host by lowering the
 * process's own memory.limit through its control block, read back, moved back by raising the limit,
 * and read back again. Reports the time of each move batch. Run with GVM_MEMORY_MODE=swap under the
 * agent. Build: gcc -std=c11 -O2 -I include -I /usr/local/cuda/include test/gpu/swap_check.c -lcuda
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gvm/self_command.h"
#include "check.h"

static struct gvm_self self;
static struct gvm_control_block *cb;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double set_limit(uint64_t bytes, char *msg) {
  double t0 = now_ms();
  if (gvm_self_command(&self, GVM_KEY_MEMORY_LIMIT, 0, bytes, 60000, msg, GVM_MESSAGE_MAX) < 0) {
    printf("FAIL no answer to the limit command in 60 s\n");
    exit(1);
  }
  return now_ms() - t0;
}

static void verify(CUdeviceptr *bufs, int n, size_t bytes, uint32_t *host, const char *when) {
  int bad = 0;
  for (int i = 0; i < n && !bad; i++) {
    CU(cuMemcpyDtoH(host, bufs[i], bytes));
    for (size_t j = 0; j < bytes / 4; j++)
      if (host[j] != 0x1000u + (uint32_t)i) {
        bad = 1;
        printf("     buffer %d word %zu: %#x\n", i, j, host[j]);
        break;
      }
  }
  printf("%s every byte of %d x %zu MiB intact %s\n", bad ? "FAIL" : "ok  ", n, bytes >> 20, when);
  failures += bad;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  int n = argc > 1 ? atoi(argv[1]) : 8;
  size_t bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 1024) << 20;
  CU(cuInit(0));
  CUdevice dev;
  CUcontext ctx;
  CU(cuDeviceGet(&dev, 0));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  if (gvm_self_open(&self) != 0) {
    printf("FAIL no control block (run under the agent)\n");
    return 1;
  }
  cb = self.cb;
  struct gvm_gpu_block *g = &cb->gpu[0];
  if (g->memory_mode != GVM_MEMORY_MODE_SWAP) {
    printf("FAIL not in swap mode (GVM_MEMORY_MODE=swap)\n");
    return 1;
  }
  CUdeviceptr bufs[64];
  uint64_t base = g->memory_current;
  for (int i = 0; i < n; i++) {
    CU(cuMemAlloc(&bufs[i], bytes));
    CU(cuMemsetD32(bufs[i], 0x1000u + (uint32_t)i, bytes / 4));
  }
  CU(cuCtxSynchronize());
  uint32_t *host = malloc(bytes);
  CU(cuMemHostRegister(host, bytes, 0));
  char msg[GVM_MESSAGE_MAX];
  uint64_t half = base + (uint64_t)(n / 2) * bytes;
  double out_ms = set_limit(half, msg);
  uint64_t moved = (uint64_t)(n - n / 2) * bytes;
  printf("%s lowered the limit: %s (%.1f ms, %.1f GB/s device->host including the quiet window)\n",
         g->memory_swap_current == moved ? "ok  " : "FAIL", msg, out_ms, moved / out_ms / 1e6);
  failures += g->memory_swap_current != moved;
  verify(bufs, n, bytes, host, "after moving half to the host");
  double in_ms = set_limit(g->total_bytes, msg);
  printf("%s raised the limit: %s (%.1f ms, %.1f GB/s host->device)\n", g->memory_swap_current == 0 ? "ok  " : "FAIL",
         msg, in_ms, moved / in_ms / 1e6);
  failures += g->memory_swap_current != 0;
  verify(bufs, n, bytes, host, "after moving it back");
  /* a second round: the host memory given back by the first is reused from the pool */
  out_ms = set_limit(half, msg);
  printf("%s lowered again (warm pool): %s (%.1f ms, %.1f GB/s device->host)\n",
         g->memory_swap_current == moved ? "ok  " : "FAIL", msg, out_ms, moved / out_ms / 1e6);
  failures += g->memory_swap_current != moved;
  in_ms = set_limit(g->total_bytes, msg);
  printf("%s raised again: %s (%.1f ms, %.1f GB/s host->device)\n", g->memory_swap_current == 0 ? "ok  " : "FAIL", msg,
         in_ms, moved / in_ms / 1e6);
  failures += g->memory_swap_current != 0;
  verify(bufs, n, bytes, host, "after the second round");
  for (int i = 0; i < n; i++) CU(cuMemFree(bufs[i]));
  printf("%s memory.current back to %llu after frees (swap %llu)\n", g->memory_current == base ? "ok  " : "FAIL",
         (unsigned long long)g->memory_current, (unsigned long long)g->memory_swap_current);
  failures += g->memory_current != base;
  return check_summary();
}
