/* gvm-channel-race: channels libcuda makes or schedules while the agent changes whether the GPU's
 * channels must be stopped end in the right state (test/agent.test.ts). Two cases, each driven by
 * the fake RM's before-control hook, which runs between a caller's decision and its control's effect:
 *
 *   thaw  The process freezes itself before its first context, then creates the context. libcuda
 *         schedules the compute TSG once its channels exist, which enables them, and the agent
 *         disables them again. Right before that disable takes effect the hook thaws the process,
 *         synchronously: the thaw enables every channel it knows, then the agent's disable lands. An
 *         agent that acted once on the state it had read leaves those channels disabled.
 *   move  Swap mode: the process lowers its own limit so the mover moves buffers to the host. When
 *         the mover stops the process's channels for its quiet window, the hook has another thread
 *         create a second context (while the move is under way) and records whether that context's
 *         channels start disabled, as nothing may run while a range changes its backing; after the
 *         move every channel must run again, and every buffer still holds its pattern.
 *
 * Lines: thaw: `freeze <status> <answer>`, `thaw <status> <answer>`; move: `limit <status> <answer>`,
 * `during-move new N disabled N`, `intact N of N`; both: `channels N disabled N frozen N`, `DONE`.
 * Exit 1 on a setup failure only: the test judges. Needs GVM_RM_ANY_DRIVER=1 on the fake. */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gvm/control_block.h"
#include "gvm/self_command.h"

#define CMD_DISABLE_CHANNELS 0x2080110bu
#define CMD_TSG_SCHEDULE 0xa06c0101u
#define MiB ((size_t)1 << 20)
#define BUFFERS 4

static struct gvm_self self;
static pthread_t app_thread;
static atomic_int scheduled, fired;
static int (*channel_disabled)(unsigned);
static CUdevice dev;

/* ---- thaw ---- */
static void before_control_thaw(unsigned cmd, const void *params, unsigned size) {
  if (!pthread_equal(pthread_self(), app_thread)) return;
  if (cmd == CMD_TSG_SCHEDULE) atomic_store(&scheduled, 1);
  /* the agent's disable after libcuda's schedule, issued on the thread that creates the context */
  if (cmd != CMD_DISABLE_CHANNELS || size < 1 || ((const unsigned char *)params)[0] != 1) return;
  if (!atomic_load(&scheduled) || atomic_exchange(&fired, 1)) return;
  char msg[GVM_MESSAGE_MAX];
  int st = gvm_self_command(&self, GVM_KEY_COMPUTE_FREEZE, 0, 0, 5000, msg, sizeof msg);
  printf("thaw %d %s\n", st, msg);
}

/* ---- move ---- */
static sem_t go, made;
static uint32_t before_move[GVM_MAX_CHANNELS];
static unsigned before_count;

static bool known_before(uint32_t h) {
  for (unsigned i = 0; i < before_count; i++)
    if (before_move[i] == h) return true;
  return false;
}

static void *second_context(void *arg) {
  (void)arg;
  sem_wait(&go);
  CUcontext c2;
  if (cuCtxCreate(&c2, NULL, 0, dev) != CUDA_SUCCESS) printf("FAIL second context\n");
  sem_post(&made);
  return NULL;
}

static void before_control_move(unsigned cmd, const void *params, unsigned size) {
  /* the mover's stop of the process's channels: on its own thread */
  if (pthread_equal(pthread_self(), app_thread)) return;
  if (cmd != CMD_DISABLE_CHANNELS || size < 1 || ((const unsigned char *)params)[0] != 1) return;
  if (atomic_exchange(&fired, 1)) return;
  sem_post(&go);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  if (sem_timedwait(&made, &until) != 0) {
    printf("during-move second context still being made after 5 s\n");
    return;
  }
  const struct gvm_gpu_block *g = &self.cb->gpu[0];
  unsigned n = GVM_LOAD(&g->channel_count), fresh = 0, disabled = 0;
  for (unsigned i = 0; i < n && i < GVM_MAX_CHANNELS; i++) {
    if (known_before(g->channel[i].handle)) continue;
    fresh++;
    disabled += channel_disabled(g->channel[i].handle) == 1;
  }
  printf("during-move new %u disabled %u\n", fresh, disabled);
}

static int run_move(void (*set_hook)(void (*)(unsigned, const void *, unsigned))) {
  CUcontext ctx;
  if (cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
    return printf("FAIL context\n"), 1;
  CUdeviceptr buf[BUFFERS];
  const size_t bytes = 4 * MiB;
  for (int i = 0; i < BUFFERS; i++)
    if (cuMemAlloc(&buf[i], bytes) != CUDA_SUCCESS || cuMemsetD32(buf[i], 0xC0FFEE00u + (unsigned)i, bytes / 4) != CUDA_SUCCESS)
      return printf("FAIL buffers\n"), 1;
  const struct gvm_gpu_block *g = &self.cb->gpu[0];
  before_count = GVM_LOAD(&g->channel_count);
  for (unsigned i = 0; i < before_count && i < GVM_MAX_CHANNELS; i++) before_move[i] = g->channel[i].handle;
  sem_init(&go, 0, 0);
  sem_init(&made, 0, 0);
  pthread_t helper;
  pthread_create(&helper, NULL, second_context, NULL);
  set_hook(before_control_move);
  char msg[GVM_MESSAGE_MAX];
  uint64_t limit = GVM_LOAD(&g->memory_current) - 2 * bytes; /* two buffers must go to the host */
  int st = gvm_self_command(&self, GVM_KEY_MEMORY_LIMIT, 0, limit, 30000, msg, sizeof msg);
  printf("limit %d %s\n", st, msg);
  set_hook(NULL);
  if (!atomic_load(&fired)) sem_post(&go); /* no quiet window: let the helper finish */
  pthread_join(helper, NULL);
  unsigned intact = 0;
  static uint32_t host[4 * MiB / 4];
  for (int i = 0; i < BUFFERS; i++) {
    bool ok = cuMemcpyDtoH(host, buf[i], bytes) == CUDA_SUCCESS;
    for (size_t w = 0; ok && w < bytes / 4; w++) ok = host[w] == 0xC0FFEE00u + (unsigned)i;
    intact += ok;
  }
  printf("intact %u of %d\n", intact, BUFFERS);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  const char *mode = argc > 1 ? argv[1] : "thaw";
  app_thread = pthread_self();
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS) return printf("FAIL no device\n"), 1;
  if (gvm_self_open(&self) != 0) return printf("FAIL no control block (run under the agent)\n"), 1;
  void (*set_hook)(void (*)(unsigned, const void *, unsigned)) =
      (void (*)(void (*)(unsigned, const void *, unsigned)))dlsym(RTLD_DEFAULT, "fakeRmSetBeforeControlHook");
  channel_disabled = (int (*)(unsigned))dlsym(RTLD_DEFAULT, "fakeRmChannelDisabled");
  if (!set_hook || !channel_disabled) return printf("FAIL libgvmfakerm.so is not preloaded\n"), 1;

  if (strcmp(mode, "move") == 0) {
    if (run_move(set_hook)) return 1;
  } else {
    char msg[GVM_MESSAGE_MAX];
    int st = gvm_self_command(&self, GVM_KEY_COMPUTE_FREEZE, 0, 1, 5000, msg, sizeof msg);
    printf("freeze %d %s\n", st, msg);
    set_hook(before_control_thaw);
    CUcontext ctx;
    if (cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS) return printf("FAIL context\n"), 1;
    set_hook(NULL);
  }

  const struct gvm_gpu_block *g = &self.cb->gpu[0];
  unsigned n = GVM_LOAD(&g->channel_count), disabled = 0;
  for (unsigned i = 0; i < n && i < GVM_MAX_CHANNELS; i++) disabled += channel_disabled(g->channel[i].handle) == 1;
  printf("channels %u disabled %u frozen %u\n", n, disabled, GVM_LOAD(&g->frozen));
  printf("DONE\n");
  return 0;
}
