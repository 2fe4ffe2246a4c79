/*
 * A limit set while the process allocates (issue 4): THREADS threads allocate (cuMemAlloc, 1 MiB up to
 * a quarter of a thread's share of the working set), fill, re-check and free buffers without pause
 * while the main thread changes the process's own
 * memory.limit every few milliseconds through its control block, between a quarter of the working set
 * and all of it. Run under the agent in either mode:
 *   oom:  an allocation succeeds or fails with CUDA_ERROR_OUT_OF_MEMORY, nothing else;
 *   swap: every allocation succeeds (past the limit it lives on the host, and moves).
 * Both: every buffer holds its own pattern whenever it is checked (also right before its free), and
 * once everything is freed memory.current and memory.swap.current are back where they started.
 * Prints ok/FAIL lines and a summary; exit 0 when all held.
 *
 * The same source runs on the GPU and on the fake driver in CI (test/memory.test.ts):
 *   gcc -std=c11 -O2 -I include -I /usr/local/cuda/include test/gpu/limit_race.c -lcuda -lpthread -o build/limit_race
 *   GVM_MEMORY_MODE=swap LD_PRELOAD=$PWD/build/Release/libgvm.so build/limit_race [seconds] [working-set MiB]
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gvm/self_command.h"
#include "check.h"

#define THREADS 4
#define SLOTS 8 /* buffers a thread holds at most */
#define MiB ((size_t)1 << 20)

static struct gvm_self self;
static CUcontext ctx;
static bool swap_mode;
static atomic_bool stop;
static atomic_ulong allocs, refused, checks, bad, other_errors;
static uint64_t per_thread_cap;
static size_t max_alloc_mib; /* sized so SLOTS buffers can fill a thread's share of the working set */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t next_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* The whole buffer must hold `tag` in every 32-bit word; read back in 1 MiB pieces. */
static bool holds(CUdeviceptr p, size_t bytes, uint32_t tag, uint32_t *host) {
  for (size_t at = 0; at < bytes; at += MiB) {
    size_t n = bytes - at < MiB ? bytes - at : MiB;
    if (cuMemcpyDtoH(host, p + at, n) != CUDA_SUCCESS) return false;
    for (size_t i = 0; i < n / 4; i++)
      if (host[i] != tag) return false;
  }
  return true;
}

struct slot {
  CUdeviceptr p;
  size_t bytes;
  uint32_t tag;
};

static void *worker(void *arg) {
  uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
  uint32_t *host = malloc(MiB);
  struct slot slots[SLOTS] = {{0}};
  uint64_t held = 0;
  cuCtxSetCurrent(ctx);
  while (!atomic_load(&stop)) {
    struct slot *s = &slots[next_rand(&seed) % SLOTS];
    if (s->p) { /* check it, then free it */
      atomic_fetch_add(&checks, 1);
      if (!holds(s->p, s->bytes, s->tag, host)) atomic_fetch_add(&bad, 1);
      if (cuMemFree(s->p) != CUDA_SUCCESS) atomic_fetch_add(&other_errors, 1);
      held -= s->bytes;
      s->p = 0;
      continue;
    }
    size_t bytes = (1 + next_rand(&seed) % max_alloc_mib) * MiB;
    if (held + bytes > per_thread_cap) continue;
    CUresult r = cuMemAlloc(&s->p, bytes);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && !swap_mode) {
      atomic_fetch_add(&refused, 1);
      s->p = 0;
      continue;
    }
    if (r != CUDA_SUCCESS) {
      atomic_fetch_add(&other_errors, 1);
      fprintf(stderr, "cuMemAlloc(%zu MiB): CUDA error %d\n", bytes / MiB, (int)r);
      s->p = 0;
      continue;
    }
    atomic_fetch_add(&allocs, 1);
    s->bytes = bytes;
    s->tag = (uint32_t)next_rand(&seed);
    held += bytes;
    if (cuMemsetD32(s->p, s->tag, bytes / 4) != CUDA_SUCCESS) atomic_fetch_add(&other_errors, 1);
  }
  for (int i = 0; i < SLOTS; i++)
    if (slots[i].p) {
      atomic_fetch_add(&checks, 1);
      if (!holds(slots[i].p, slots[i].bytes, slots[i].tag, host)) atomic_fetch_add(&bad, 1);
      cuMemFree(slots[i].p);
    }
  free(host);
  return NULL;
}

/* The process's own limit through its control block: the mailbox gvm set uses. */
static int set_limit(uint64_t bytes) {
  return gvm_self_command(&self, GVM_KEY_MEMORY_LIMIT, 0, bytes, 60000, NULL, 0);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  double seconds = argc > 1 ? atof(argv[1]) : 10;
  uint64_t working = (uint64_t)(argc > 2 ? atoi(argv[2]) : 1024) * MiB;
  per_thread_cap = working / THREADS;
  /* up to twice the mean share per slot: the threads together reach the working set, so the limit
   * (between a quarter of it and all of it) is crossed; with fixed small buffers a large working set
   * was never reached and oom mode had nothing to refuse */
  max_alloc_mib = per_thread_cap * 2 / SLOTS / MiB;
  if (max_alloc_mib < 1) max_alloc_mib = 1;
  CUdevice dev;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
      cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    printf("FAIL no CUDA device\n");
    return 1;
  }
  if (gvm_self_open(&self) != 0) {
    printf("FAIL no control block (run under the agent)\n");
    return 1;
  }
  struct gvm_gpu_block *g = &self.cb->gpu[0];
  swap_mode = GVM_LOAD(&g->memory_mode) == GVM_MEMORY_MODE_SWAP;
  uint64_t base = GVM_LOAD(&g->memory_current), total = GVM_LOAD(&g->total_bytes);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
  uint64_t seed = 42;
  unsigned changes = 0, refused_changes = 0;
  double end = now_s() + seconds;
  while (now_s() < end) {
    uint64_t limit = base + working / 4 + next_rand(&seed) % (working - working / 4);
    if (set_limit(limit) == 0) changes++;
    else refused_changes++;
    usleep(2000 + next_rand(&seed) % 8000);
  }
  atomic_store(&stop, true);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  set_limit(total);
  printf("     %s mode: %u limit changes (%u refused), %lu allocations, %lu refused, %lu checks\n",
         swap_mode ? "swap" : "oom", changes, refused_changes, atomic_load(&allocs), atomic_load(&refused),
         atomic_load(&checks));
  CHECK(changes > 10 && refused_changes == 0, "every limit change applied while %d threads allocated (%u)", THREADS, changes);
  CHECK(atomic_load(&allocs) >= THREADS, "the threads kept allocating throughout (%lu allocations)",
        atomic_load(&allocs));
  CHECK(atomic_load(&other_errors) == 0, "no error but out-of-memory (%lu other errors)", atomic_load(&other_errors));
  if (swap_mode) CHECK(atomic_load(&refused) == 0, "swap mode refused no allocation");
  else CHECK(atomic_load(&refused) > 0, "oom mode refused allocations past the limit (%lu)", atomic_load(&refused));
  CHECK(atomic_load(&bad) == 0, "every buffer held its pattern at every check (%lu bad of %lu)", atomic_load(&bad),
        atomic_load(&checks));
  uint64_t cur = GVM_LOAD(&g->memory_current), swp = GVM_LOAD(&g->memory_swap_current);
  CHECK(cur == base && swp == 0, "all freed: memory.current %llu (started at %llu), swap %llu", (unsigned long long)cur,
        (unsigned long long)base, (unsigned long long)swp);
  return check_summary();
}
