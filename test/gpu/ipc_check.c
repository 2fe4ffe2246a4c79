/*
 * Device check of CUDA IPC for swap-mode allocations: two processes under the agent in swap mode.
 * The exporter lowers its own memory.limit so that a 64 MiB cuMemAlloc is placed on the host, fills
 * it, exports it with cuIpcGetMemHandle (which must bring it back to the GPU and pin it there), and
 * sends the handle through a pipe to the importer (a child forked before either touched CUDA), which
 * opens it, checks the exporter's bytes, writes its own and closes it. The exporter then checks those.
 * Also: a lowered limit leaves the pinned range on the GPU, and a 1 MiB allocation (not converted)
 * still goes through the driver's own IPC both ways.
 *
 * Across GPUs (issue 8, part 3): `ipc_check E I` puts the exporter on CUDA ordinal E and the importer
 * on ordinal I (default 0 0). With E != I the importer maps the exporter's GPU memory over the peer
 * link (gvm's handle: cuMemSetAccess for its own GPU; the driver's: CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
 * and the exporter's settings and counts stay on GPU E's slot of its block. Fewer GPUs than named, or
 * no peer access between them: "SKIP: ..." and exit 0. CI runs the same source on the fake driver
 * (test/multi-gpu.test.ts), which cannot share plain memory between processes: there the driver's own
 * IPC of the 1 MiB allocation is not checked.
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror -I include -I /usr/local/cuda/include test/gpu/ipc_check.c \
 *          -L/usr/local/cuda/lib64/stubs -lcuda -o build/ipc_check
 * Run:   LD_PRELOAD=$PWD/build/Release/libgvm.so GVM_MEMORY_MODE=swap build/ipc_check [E I]
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gvm/self_command.h"
#include "check.h"

#define MiB ((size_t)1 << 20)
#define BIG (64 * MiB)


static void report(int ok, const char *what) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += !ok;
}

static uint32_t word(uint32_t gen, size_t i) {
  uint64_t x = (i + (uint64_t)gen * 0x100000001B3ull) * 0x9E3779B97F4A7C15ull;
  return (uint32_t)(x >> 32);
}

static void fill(CUdeviceptr p, size_t bytes, uint32_t gen) {
  uint32_t *h = malloc(bytes);
  for (size_t i = 0; i < bytes / 4; i++) h[i] = word(gen, i);
  CU(cuMemcpyHtoD(p, h, bytes));
  free(h);
}

static int check(CUdeviceptr p, size_t bytes, uint32_t gen) {
  uint32_t *h = malloc(bytes);
  CU(cuMemcpyDtoH(h, p, bytes));
  size_t i = 0;
  while (i < bytes / 4 && h[i] == word(gen, i)) i++;
  free(h);
  return i == bytes / 4;
}

static int exporter_gpu, importer_gpu;

static CUcontext open_gpu(int ordinal) {
  CUdevice dev;
  CUcontext ctx;
  CU(cuInit(0));
  CU(cuDeviceGet(&dev, ordinal));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  return ctx;
}

static struct gvm_self self;

static void set_limit(uint64_t bytes) {
  char msg[GVM_MESSAGE_MAX];
  if (gvm_self_command(&self, GVM_KEY_MEMORY_LIMIT, (uint32_t)exporter_gpu, bytes, 60000, msg, sizeof msg) < 0) {
    printf("FAIL no answer to the limit command\n");
    exit(1);
  }
  printf("     limit %llu: %s\n", (unsigned long long)bytes, msg);
}

/* the importer: reads two handles from the pipe, answers one line per step */
static int importer(int in, int out) {
  CUipcMemHandle big, small;
  if (read(in, &big, sizeof big) != (ssize_t)sizeof big || read(in, &small, sizeof small) != (ssize_t)sizeof small)
    return 2;
  open_gpu(importer_gpu);
  char msg[256];
  CUdeviceptr p = 0, q = 0;
  CUresult r = cuIpcOpenMemHandle(&p, big, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
  int ok = r == CUDA_SUCCESS && check(p, BIG, 1);
  if (ok) fill(p, BIG, 2);
  if (ok) CU(cuCtxSynchronize());
  CUresult rc = ok ? cuIpcCloseMemHandle(p) : CUDA_ERROR_UNKNOWN;
  CUresult rs = cuIpcOpenMemHandle(&q, small, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
  int small_ok = rs == CUDA_SUCCESS && check(q, MiB, 5);
  if (small_ok) cuIpcCloseMemHandle(q);
  int n = snprintf(msg, sizeof msg, "%d %d %d %d %d\n", (int)r, ok, (int)rc, (int)rs, small_ok);
  if (write(out, msg, (size_t)n) != n) return 2;
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  exporter_gpu = argc > 1 ? atoi(argv[1]) : 0;
  importer_gpu = argc > 2 ? atoi(argv[2]) : exporter_gpu;
  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) return 2;
  pid_t child = fork(); /* before either process touches CUDA */
  if (child == 0) {
    close(down[1]);
    close(up[0]);
    exit(importer(down[0], up[1]));
  }
  close(down[0]);
  close(up[1]);
  int count = 0, peer = 1;
  CUdevice de, di;
  CU(cuInit(0));
  CU(cuDeviceGetCount(&count));
  int need = (exporter_gpu > importer_gpu ? exporter_gpu : importer_gpu) + 1;
  if (exporter_gpu < 0 || importer_gpu < 0 || count < need) {
    printf("SKIP: %d GPU(s) visible, exporter on %d and importer on %d need %d\n", count, exporter_gpu, importer_gpu, need);
    kill(child, SIGKILL);
    return 0;
  }
  CU(cuDeviceGet(&de, exporter_gpu));
  CU(cuDeviceGet(&di, importer_gpu));
  if (exporter_gpu != importer_gpu) CU(cuDeviceCanAccessPeer(&peer, di, de));
  if (!peer) {
    printf("SKIP: GPU %d cannot access GPU %d's memory (no peer access)\n", importer_gpu, exporter_gpu);
    kill(child, SIGKILL);
    return 0;
  }
  printf("     exporter on GPU %d, importer on GPU %d%s\n", exporter_gpu, importer_gpu,
         exporter_gpu != importer_gpu ? " (peer access)" : "");
  open_gpu(exporter_gpu);
  if (gvm_self_open(&self) != 0 || self.cb->gpu[exporter_gpu].memory_mode != GVM_MEMORY_MODE_SWAP) {
    printf("FAIL run under the agent with GVM_MEMORY_MODE=swap\n");
    kill(child, SIGKILL);
    return 1;
  }
  struct gvm_gpu_block *g = &self.cb->gpu[exporter_gpu];
  CUdeviceptr small, big;
  CU(cuMemAlloc(&small, MiB)); /* below 2 MiB: plain driver memory */
  fill(small, MiB, 5);
  set_limit(g->memory_current + 4 * MiB); /* the 64 MiB allocation will not fit: it starts on the host */
  CU(cuMemAlloc(&big, BIG));
  fill(big, BIG, 1);
  report(g->memory_swap_current == BIG, "the 64 MiB allocation was placed on the host (over the limit)");
  CUipcMemHandle hb, hs;
  CU(cuIpcGetMemHandle(&hb, big));
  report(memcmp(hb.reserved, "gvm-ipc", 7) == 0, "cuIpcGetMemHandle on the swap range returned gvm's handle");
  report(g->memory_swap_current == 0, "exporting brought it back to the GPU");
  CU(cuIpcGetMemHandle(&hs, small));
  report(memcmp(hs.reserved, "gvm-ipc", 7) != 0, "a 1 MiB allocation got the driver's own handle");
  set_limit(2 * MiB);
  report(g->memory_swap_current == 0, "a limit far below it leaves the pinned range on the GPU");
  report(check(big, BIG, 1), "the exporter's bytes intact after the moves");
  if (write(down[1], &hb, sizeof hb) != (ssize_t)sizeof hb || write(down[1], &hs, sizeof hs) != (ssize_t)sizeof hs)
    return 2;
  char line[256] = {0};
  ssize_t n = read(up[0], line, sizeof line - 1);
  int r = -1, ok = 0, rc = -1, rs = -1, small_ok = 0;
  if (n > 0) sscanf(line, "%d %d %d %d %d", &r, &ok, &rc, &rs, &small_ok);
  printf("     importer: open %d, exporter's bytes %s, close %d; driver handle open %d\n", r, ok ? "ok" : "bad", rc, rs);
  report(r == 0 && ok, "the importer opened the handle and read every byte the exporter wrote");
  report(rc == 0, "the importer closed it");
  report(check(big, BIG, 2), "the exporter reads every byte the importer wrote");
  char name[64] = {0};
  CU(cuDeviceGetName(name, (int)sizeof name, de));
  if (strncmp(name, "Fake GPU", 8) == 0) /* CI's fake driver (test/fake-cuda) keeps plain memory private */
    printf("     the driver's own IPC of plain memory: not checked on the fake driver (%d)\n", rs);
  else
    report(rs == 0 && small_ok, "the driver's own IPC still works for plain allocations");
  int elsewhere = 0; /* the exporter's bytes are counted on its own GPU's slot only */
  for (int o = 0; o < count && o < GVM_MAX_GPUS; o++)
    if (o != exporter_gpu) elsewhere += self.cb->gpu[o].memory_current != 0 || self.cb->gpu[o].memory_swap_current != 0;
  report(elsewhere == 0, "the exporter's memory is counted on its own GPU only, none on another GPU's slot");
  int status = 0;
  waitpid(child, &status, 0);
  report(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the importer exited cleanly");
  CU(cuMemFree(big));
  CU(cuMemFree(small));
  return check_summary();
}
