/*
 * The agent's two threads. The control thread applies commands from the control block; it never
 * calls into libcuda, so a frozen GPU (where driver calls can block) cannot stall a thaw. The event
 * thread records and queries the kernel-end events and publishes counters.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

static pthread_t control_thread, event_thread;
static bool control_running, event_running;
static _Atomic int stopping;
static _Atomic uint32_t event_wake; /* futex the event thread sleeps on between ticks */

static struct timespec ms_to_ts(int ms) {
  return (struct timespec){.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
}

static void *control_main(void *arg) {
  (void)arg;
  struct gvm_control_block *cb = gvm_block;
  struct gvm_command *cmd = &cb->command;
  /*
   * Start from what was answered, not from seq: the block is new (both 0), so a higher seq is a
   * command sent after the block appeared and before this thread first ran (a process steering
   * itself right after cuInit, a controller that saw the block). Taking seq as seen would mark it
   * applied without applying it, and its sender would read status 0 and an empty message.
   */
  uint32_t seen = GVM_LOAD(&cmd->applied_seq);
  while (!atomic_load(&stopping)) {
    GVM_STORE(&cb->heartbeat_ns, gvm_now_ns());
    struct timespec ts = ms_to_ts(250);
    /* shared futex: controllers in other processes wake it */
    gvm_futex(&cmd->seq, FUTEX_WAIT, seen, &ts);
    uint32_t seq = GVM_LOAD(&cmd->seq);
    if (seq == seen) continue;
    seen = seq;
    gvm_apply_command(cmd);
    GVM_STORE(&cmd->applied_seq, seq);
    gvm_futex(&cmd->applied_seq, FUTEX_WAKE, INT32_MAX, NULL);
  }
  return NULL;
}

static void publish_kernels(const uint64_t *submitted, const uint64_t *ended) {
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    struct gvm_gpu_block *b = &gvm_block->gpu[g];
    /* counters never go backwards, even while a reused stream's counts are folded */
    if (submitted[g] > GVM_LOAD(&b->kernels_submitted)) GVM_STORE(&b->kernels_submitted, submitted[g]);
    uint64_t end = ended[g] > submitted[g] ? submitted[g] : ended[g];
    if (end > GVM_LOAD(&b->kernels_ended)) GVM_STORE(&b->kernels_ended, end);
    GVM_STORE(&b->updated_ns, gvm_now_ns());
  }
}

static void *event_main(void *arg) {
  (void)arg;
  /* relaxed: our event queries must not count as unsafe calls during another thread's graph capture */
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  GVM_REAL(cuThreadExchangeStreamCaptureMode, &mode);
  uint64_t submitted[GVM_MAX_GPUS], ended[GVM_MAX_GPUS];
  uint64_t last_pool_refresh = 0;
  uint32_t last_wake = atomic_load(&event_wake);
  int idle_ms = gvm_config.event_interval_ms * 10;
  while (!atomic_load(&stopping)) {
    bool outstanding = gvm_streams_tick(submitted, ended);
    publish_kernels(submitted, ended);
    gvm_policy_tick(submitted, ended);
    uint64_t now = gvm_now_ns();
    uint32_t wake = atomic_load(&event_wake);
    /* pools change on frees and trims (a kick) and shrink on their own: re-measure at least every 100 ms */
    if (wake != last_wake || now - last_pool_refresh > 100000000ull) {
      last_wake = wake;
      gvm_pools_refresh();
      last_pool_refresh = now;
    }
    uint32_t w = atomic_load(&event_wake);
    struct timespec ts = ms_to_ts(outstanding ? gvm_config.event_interval_ms : idle_ms);
    gvm_futex((uint32_t *)&event_wake, FUTEX_WAIT_PRIVATE, w, &ts);
  }
  return NULL;
}

static int spawn(pthread_t *t, void *(*fn)(void *)) {
  sigset_t all, old;
  sigfillset(&all);
  /* the application's signal handlers must never run on our threads */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(t, NULL, fn, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return r;
}

int gvm_monitor_start(void) {
  atomic_store(&stopping, 0);
  int r = spawn(&control_thread, control_main);
  control_running = r == 0;
  int e = spawn(&event_thread, event_main);
  event_running = e == 0;
  if (r == 0) pthread_setname_np(control_thread, "gvm-control");
  if (e == 0) pthread_setname_np(event_thread, "gvm-events");
  return (r == 0 && e == 0) ? 0 : -1;
}

void gvm_monitor_kick(void) {
  atomic_fetch_add(&event_wake, 1);
  gvm_futex((uint32_t *)&event_wake, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* At exit: stop both threads, but never wait long for one stuck inside the driver. */
void gvm_monitor_stop(void) {
  atomic_store(&stopping, 1);
  gvm_monitor_kick();
  if (gvm_block) {
    GVM_ADD(&gvm_block->command.seq, 0);
    gvm_futex(&gvm_block->command.seq, FUTEX_WAKE, INT32_MAX, NULL);
  }
  struct timespec deadline = gvm_realtime_in_ms(200);
  if (event_running && pthread_timedjoin_np(event_thread, NULL, &deadline) == 0) event_running = false;
  if (control_running && pthread_timedjoin_np(control_thread, NULL, &deadline) == 0) control_running = false;
  /* one still busy (a command waiting for the mover, a call stuck in the driver) is let go: detached,
   * it cleans up after itself if it ends before the process does */
  if (control_running) pthread_detach(control_thread);
  if (event_running) pthread_detach(event_thread);
  /* final counters: the process is exiting and its work is done or abandoned */
  if (gvm_block && !event_running) {
    uint64_t submitted[GVM_MAX_GPUS], ended[GVM_MAX_GPUS];
    gvm_streams_tick(submitted, ended);
    publish_kernels(submitted, ended);
  }
}
