/* gvm-thaw-race: a thaw that lands between the agent's decision to disable a new channel and that
 * control's effect must not leave the channel disabled in a thawed process (test/agent.test.ts).
 *
 * The process freezes itself before its first context, then creates the context. libcuda schedules
 * the compute TSG once its channels exist, which enables them, and the agent disables them again.
 * Right before that disable takes effect, the fake RM's before-control hook thaws the process,
 * synchronously: the thaw enables every channel it knows, then the agent's disable lands. An agent
 * that acted once on the state it had read leaves those channels disabled in a thawed process.
 *
 * Lines: `freeze <answer>`, `thaw <status> <answer>` (from inside the hook), `channels N disabled N`,
 * `DONE`. Exit 1 on a setup failure only: the test judges. Needs GVM_RM_ANY_DRIVER=1 on the fake. */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "gvm/control_block.h"
#include "gvm/self_command.h"

#define CMD_DISABLE_CHANNELS 0x2080110bu
#define CMD_TSG_SCHEDULE 0xa06c0101u

static struct gvm_self self;
static pthread_t app_thread;
static atomic_int scheduled, fired;

static void before_control(unsigned cmd, const void *params, unsigned size) {
  if (!pthread_equal(pthread_self(), app_thread)) return;
  if (cmd == CMD_TSG_SCHEDULE) atomic_store(&scheduled, 1);
  /* the agent's disable after libcuda's schedule, issued on the thread that creates the context */
  if (cmd != CMD_DISABLE_CHANNELS || size < 1 || ((const unsigned char *)params)[0] != 1) return;
  if (!atomic_load(&scheduled) || atomic_exchange(&fired, 1)) return;
  char msg[GVM_MESSAGE_MAX];
  int st = gvm_self_command(&self, GVM_KEY_COMPUTE_FREEZE, 0, 0, 5000, msg, sizeof msg);
  printf("thaw %d %s\n", st, msg);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  app_thread = pthread_self();
  CUdevice dev;
  CUcontext ctx;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS) return printf("FAIL no device\n"), 1;
  if (gvm_self_open(&self) != 0) return printf("FAIL no control block (run under the agent)\n"), 1;
  void (*set_hook)(void (*)(unsigned, const void *, unsigned)) =
      (void (*)(void (*)(unsigned, const void *, unsigned)))dlsym(RTLD_DEFAULT, "fakeRmSetBeforeControlHook");
  int (*channel_disabled)(unsigned) = (int (*)(unsigned))dlsym(RTLD_DEFAULT, "fakeRmChannelDisabled");
  if (!set_hook || !channel_disabled) return printf("FAIL libgvmfakerm.so is not preloaded\n"), 1;

  char msg[GVM_MESSAGE_MAX];
  int st = gvm_self_command(&self, GVM_KEY_COMPUTE_FREEZE, 0, 1, 5000, msg, sizeof msg);
  printf("freeze %d %s\n", st, msg);
  set_hook(before_control);
  if (cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS) return printf("FAIL context\n"), 1;
  set_hook(NULL);

  const struct gvm_gpu_block *g = &self.cb->gpu[0];
  unsigned n = GVM_LOAD(&g->channel_count), disabled = 0;
  for (unsigned i = 0; i < n && i < GVM_MAX_CHANNELS; i++) disabled += channel_disabled(g->channel[i].handle) == 1;
  printf("channels %u disabled %u frozen %u\n", n, disabled, GVM_LOAD(&g->frozen));
  cuDevicePrimaryCtxRelease(dev);
  printf("DONE\n");
  return 0;
}
