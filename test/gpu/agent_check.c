/*
 * Device check of the agent through the driver API alone, reading the process's own control block:
 * exact kernel counts (plain, legacy stream, per-thread stream, graph launches, nothing counted while
 * capturing), memory.current against the driver's own cuMemGetInfo delta, and cuGetProcAddress
 * handing out hooks for every flag and version combination. Exit 0 when every check passes.
 * Build: gcc -std=c11 -I include -I /usr/local/cuda/include test/gpu/agent_check.c -lcuda -ldl -o agent_check
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gvm/self_command.h"
#include "check.h"


static const char *ptx = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry noop() { ret; }\n";

static void settle(void) { usleep(60 * 1000); } /* > several event ticks */

int main(void) {
  CU(cuInit(0));
  CUdevice dev;
  CU(cuDeviceGet(&dev, 0));
  CUcontext ctx;
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  struct gvm_self self;
  struct gvm_control_block *cb = gvm_self_open(&self) == 0 ? self.cb : NULL;
  if (!cb) {
    printf("FAIL no control block for pid %d (agent not preloaded?)\n", getpid());
    return 1;
  }
  struct gvm_gpu_block *g = &cb->gpu[0];
  CUmodule mod;
  CUfunction fn;
  CU(cuModuleLoadData(&mod, ptx));
  CU(cuModuleGetFunction(&fn, mod, "noop"));
  CU(cuCtxSynchronize());
  settle();
  uint64_t base = GVM_LOAD(&g->kernels_submitted);

  CUstream s;
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  for (int i = 0; i < 1000; i++) CU(cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
  for (int i = 0; i < 100; i++) CU(cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
  /* the per-thread default stream variant, reached the way the runtime does with --default-stream per-thread */
  PFN_cuLaunchKernel_v7000_ptsz launch_ptsz = NULL;
  CUdriverProcAddressQueryResult q;
  CU(cuGetProcAddress("cuLaunchKernel", (void **)&launch_ptsz, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q));
  for (int i = 0; i < 50; i++) CU(launch_ptsz(fn, 1, 1, 1, 32, 1, 1, 0, CU_STREAM_PER_THREAD, NULL, NULL));
  CU(cuCtxSynchronize());
  settle();
  uint64_t sub = GVM_LOAD(&g->kernels_submitted) - base, end = GVM_LOAD(&g->kernels_ended) - base;
  CHECK(sub == 1150, "plain+legacy+ptsz launches counted: %llu of 1150", (unsigned long long)sub);
  CHECK(end == sub, "every counted kernel seen ended after sync: ended %llu", (unsigned long long)end);

  /* capture: nothing is submitted while capturing; each graph launch submits its 7 kernels */
  CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
  for (int i = 0; i < 7; i++) CU(cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
  CUgraph graph;
  CU(cuStreamEndCapture(s, &graph));
  settle();
  uint64_t during = GVM_LOAD(&g->kernels_submitted) - base;
  CHECK(during == 1150, "captured launches not counted as submitted: %llu", (unsigned long long)during);
  CUgraphExec exec;
  CU(cuGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 5; i++) CU(cuGraphLaunch(exec, s));
  CU(cuStreamSynchronize(s));
  settle();
  sub = GVM_LOAD(&g->kernels_submitted) - base;
  end = GVM_LOAD(&g->kernels_ended) - base;
  CHECK(sub == 1185, "graph launches count their kernel nodes: %llu of 1185", (unsigned long long)sub);
  CHECK(end == sub, "graph kernels ended: %llu", (unsigned long long)end);

  /* memory.current against the driver's own view */
  size_t free0, total;
  CU(cuMemGetInfo(&free0, &total));
  uint64_t cur0 = GVM_LOAD(&g->memory_current);
  CUdeviceptr bufs[8];
  for (int i = 0; i < 8; i++) CU(cuMemAlloc(&bufs[i], (size_t)64 << 20));
  size_t free1;
  CU(cuMemGetInfo(&free1, &total));
  uint64_t grew = GVM_LOAD(&g->memory_current) - cur0;
  long long driver = (long long)free0 - (long long)free1;
  CHECK(grew == (512ull << 20), "memory.current grew by the 512 MiB allocated: %llu", (unsigned long long)grew);
  CHECK(llabs(driver - (long long)grew) <= (2 << 20), "driver's free memory fell by %lld (gvm %llu)", driver,
        (unsigned long long)grew);
  for (int i = 0; i < 8; i++) CU(cuMemFree(bufs[i]));
  CHECK(GVM_LOAD(&g->memory_current) == cur0, "memory.current back after frees");

  /* cuGetProcAddress: every hooked name, every version and flag the runtimes use, must not escape */
  static const char *names[] = {"cuMemAlloc", "cuMemFree", "cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch",
                                "cuMemAllocAsync", "cuMemFreeAsync", "cuCtxCreate", "cuDevicePrimaryCtxRetain",
                                "cuDevicePrimaryCtxRelease", "cuMemCreate", "cuMemGetInfo", "cuStreamBeginCapture",
                                "cuStreamEndCapture", "cuGraphInstantiate", "cuGraphInstantiateWithParams",
                                "cuMemAllocManaged", "cuMemAllocHost", "cuMemHostAlloc", "cuInit", "cuGetProcAddress",
                                "cuLaunchCooperativeKernel", "cuMemAllocPitch", "cuMemHostRegister", "cuStreamDestroy"};
  static const int versions[] = {11030, 12000, 12080, 13000};
  static const cuuint64_t flags[] = {CU_GET_PROC_ADDRESS_DEFAULT, CU_GET_PROC_ADDRESS_LEGACY_STREAM,
                                     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM};
  int escaped = 0, total_checked = 0;
  for (size_t n = 0; n < sizeof names / sizeof *names; n++)
    for (size_t v = 0; v < 4; v++)
      for (size_t f = 0; f < 3; f++) {
        void *p = NULL;
        if (cuGetProcAddress(names[n], &p, versions[v], flags[f], &q) != CUDA_SUCCESS || !p) continue;
        Dl_info info;
        total_checked++;
        if (dladdr(p, &info) && info.dli_fname && strstr(info.dli_fname, "libcuda")) {
          escaped++;
          printf("     escaped: %s v%d flags %llu -> %s\n", names[n], versions[v], (unsigned long long)flags[f],
                 info.dli_sname ? info.dli_sname : "?");
        }
      }
  CHECK(escaped == 0, "cuGetProcAddress: %d of %d lookups returned libcuda's function instead of gvm's", escaped,
        total_checked);
  CHECK(GVM_LOAD(&g->rm_client) != 0 && GVM_LOAD(&g->tsg_count) >= 1, "RM client %#x, %u TSGs, %u channels seen",
        GVM_LOAD(&g->rm_client), GVM_LOAD(&g->tsg_count), GVM_LOAD(&g->channel_count));
  return check_summary();
}
