/* gvm-capture-race: graph captures stay valid while the agent's event thread marks the application's
 * streams to learn when kernels end (test/agent.test.ts). Each round leaves kernels running on the
 * legacy stream and on a blocking stream, captures a few kernels on the blocking stream and holds the
 * capture open for a few of the event thread's ticks. A mark recorded on the capturing stream, or on
 * the legacy stream (which depends on every blocking stream), invalidates the capture, as the driver
 * does (the fake models both). With FAKE_CUDA_BEGIN_CAPTURE_DELAY_US the driver's begin returns late,
 * which opens the window between the capture's start and the agent's bookkeeping of it.
 *
 * Usage: gvm-capture-race [ROUNDS] [capturing-only]: with capturing-only, no work on the legacy stream
 * (only the capturing stream's own marks can hit the capture).
 *        gvm-capture-race abandon: begins a capture, destroys its stream without ending it, then runs
 * 5 kernels on the legacy stream, synchronizes, prints `abandoned` and waits for stdin to close (the
 * test reads kernels.pending meanwhile: the abandoned capture must not keep them pending). Prints `captures N ok N invalidated N`, then the kernels the
 * replayed graphs ran, `graph-kernels N`. Exit 1 on a setup failure only: the test judges. */
#define _GNU_SOURCE
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prog_check.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static void launch(CUfunction f, CUstream s, int n) {
  for (int i = 0; i < n; i++) CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 40;
  int legacy = !(argc > 2 && strcmp(argv[2], "capturing-only") == 0);
  CUmodule mod;
  CUfunction f;
  CUstream blocking;
  prog_open_gpu(0, NULL);
  CK(cuModuleLoadData(&mod, "fake fatbin: the fake driver accepts any image"));
  CK(cuModuleGetFunction(&f, mod, "gvm_test_kernel"));
  CK(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
  if (argc > 1 && strcmp(argv[1], "abandon") == 0) {
    CUstream doomed;
    CK(cuStreamCreate(&doomed, CU_STREAM_NON_BLOCKING));
    CK(cuStreamBeginCapture(doomed, CU_STREAM_CAPTURE_MODE_RELAXED));
    launch(f, doomed, 2);
    CK(cuStreamDestroy(doomed));
    launch(f, NULL, 5);
    CK(cuCtxSynchronize());
    printf("abandoned\n");
    fflush(stdout);
    while (getchar() != EOF) {
    }
    return 0;
  }
  int ok = 0, invalidated = 0, replayed = 0;
  for (int i = 0; i < rounds; i++) {
    if (legacy) launch(f, NULL, 2); /* work the event thread wants to mark, on both streams */
    launch(f, blocking, 2);
    CK(cuStreamBeginCapture(blocking, CU_STREAM_CAPTURE_MODE_GLOBAL));
    launch(f, blocking, 3);
    sleep_ms(5); /* a few ticks of the event thread (2 ms while work is outstanding) */
    CUgraph g = NULL;
    CUresult r = cuStreamEndCapture(blocking, &g);
    if (r == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED) {
      invalidated++;
      continue;
    }
    CK(r);
    ok++;
    CUgraphExec exec;
    CK(cuGraphInstantiateWithFlags(&exec, g, 0));
    CK(cuGraphLaunch(exec, blocking));
    replayed += 3;
    CK(cuStreamSynchronize(blocking));
    CK(cuGraphExecDestroy(exec));
    CK(cuGraphDestroy(g));
  }
  CK(cuCtxSynchronize());
  printf("captures %d ok %d invalidated %d\n", rounds, ok, invalidated);
  printf("graph-kernels %d\n", replayed);
  return 0;
}
