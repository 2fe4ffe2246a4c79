/*
 * Device check of one process on two GPUs under the agent (issue 8, part 1), steering itself through
 * its own control block (the mailbox gvm set and gvmd use; include/gvm/self_command.h):
 *   1. per GPU: a context, 64 MiB on GPU 0 and 128 MiB on GPU 1, 100 and 200 kernels: each GPU's
 *      block slot shows its own memory.current and kernel counts exactly;
 *   2. memory.limit on GPU 1 (oom mode): GPU 1 refuses past it and cuMemGetInfo there reports the
 *      limit as the GPU's size, while GPU 0 keeps its limit, its room and the driver's own figures;
 *   3. compute.priority 15 on GPU 1: every TSG of GPU 1 reads back 16 us, and GPU 0's TSGs, read back
 *      here through the RM (GET_TIMESLICE on libcuda's own client and fd), keep what they had;
 *   4. freeze of GPU 1 only, CYCLES times: a kernel spinning on each GPU bumps a host-mapped counter
 *      (and a thread per GPU runs launch+synchronize rounds): GPU 1 makes zero progress while frozen,
 *      GPU 0 keeps progressing; thaw resumes GPU 1. Prints the command and resume times;
 *   5. swap mode on GPU 1: its limit lowered moves three of four 64 MiB buffers to the host and back,
 *      every byte intact, GPU 0 untouched.
 * Prints ok/FAIL lines, numbers, and "N failure(s)"; exit 0 when every check held. Fewer than two GPUs:
 * "SKIP: ..." and exit 0. `serve` instead sets both GPUs up, keeps a launch+synchronize loop running on
 * each and answers `progress` (PROGRESS <rounds GPU 0> <rounds GPU 1>) and `exit` on stdin, for
 * multi_gpu_check.sh to steer it through the gvm CLI.
 *
 * The same source runs on the fake driver in CI (test/multi-gpu.test.ts), where kernels do not run:
 * there only the launch+synchronize rounds measure progress.
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror -I include -I /usr/local/cuda/include test/gpu/multi_gpu_check.c \
 *          -L/usr/local/cuda/lib64/stubs -lcuda -lpthread -o build/multi_gpu_check
 * Run:   CUDA_DEVICE_ORDER=PCI_BUS_ID LD_PRELOAD=$PWD/build/Release/libgvm.so build/multi_gpu_check [cycles]
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
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "gvm/self_command.h"
#include "check.h"

#define MiB ((uint64_t)1 << 20)
#define NGPU 2
#define SWAP_BUFFERS 4
#define SWAP_BYTES (64 * MiB)

/* noop, and bump: spins writing ++n to a host-mapped counter until the host sets *stop */
static const char ptx[] =
    ".version 8.0\n"
    ".target sm_90\n"
    ".address_size 64\n"
    ".visible .entry noop()\n"
    "{\n"
    "  ret;\n"
    "}\n"
    ".visible .entry bump(.param .u64 counter, .param .u64 stop)\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .b32 %r<2>;\n"
    "  .reg .b64 %rd<4>;\n"
    "  ld.param.u64 %rd1, [counter];\n"
    "  ld.param.u64 %rd2, [stop];\n"
    "  mov.u64 %rd3, 0;\n"
    "LOOP:\n"
    "  ld.volatile.u32 %r1, [%rd2];\n"
    "  setp.ne.u32 %p1, %r1, 0;\n"
    "  @%p1 bra DONE;\n"
    "  add.u64 %rd3, %rd3, 1;\n"
    "  st.volatile.u64 [%rd1], %rd3;\n"
    "  membar.sys;\n"
    "  bra.uni LOOP;\n"
    "DONE:\n"
    "  ret;\n"
    "}\n";


struct gpu {
  CUdevice dev;
  CUcontext ctx;
  CUfunction noop, bump;
  CUstream work, spin;
  CUdeviceptr base;
  uint64_t base_bytes, kernels, total;
  volatile uint64_t *counter; /* host-mapped: bump's progress */
  volatile uint32_t *stop;    /* host-mapped: ends bump */
  CUdeviceptr counter_d, stop_d;
  atomic_ulong rounds; /* launch+synchronize rounds the worker completed */
  pthread_t worker;
  bool worker_started;
};
static struct gpu gpus[NGPU];
static struct gvm_self self;
static bool fake;          /* the fake driver: kernels do not run, only rounds measure progress */
static atomic_bool stop_workers;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6)};
  nanosleep(&ts, NULL);
}

static struct gvm_gpu_block *block(int g) { return &self.cb->gpu[g]; }

/* A command to this process's agent for GPU g; exits when it does not answer. */
static int command(uint32_t key, int g, uint64_t value, char *msg) {
  char local[GVM_MESSAGE_MAX];
  int st = gvm_self_command(&self, key, (uint32_t)g, value, 60000, msg ? msg : local, GVM_MESSAGE_MAX);
  if (st < 0) {
    printf("FAIL no answer from the agent in 60 s (key %u, GPU %d)\n%d failure(s)\n", key, g, failures + 1);
    exit(2);
  }
  return st;
}

static void use(int g) { CU(cuCtxSetCurrent(gpus[g].ctx)); }

/* ---- RM: the TSGs the agent lists for a GPU, read back through libcuda's own client ---- */
struct nvos54 {
  uint32_t client, object, cmd, flags;
  uint64_t params;
  uint32_t params_size, status;
};

struct rm_view {
  int fd;
  uint32_t client, ntsg;
  uint32_t tsg[GVM_MAX_TSGS];
  uint64_t agent_us[GVM_MAX_TSGS]; /* what the agent last read back or set; 0 = not known */
};

static void rm_view(int g, struct rm_view *v) {
  struct gvm_gpu_block *b = block(g);
  for (int tries = 0; tries < 100000; tries++) { /* the agent rewrites the tables under a seqlock */
    uint32_t seq = GVM_LOAD(&b->rm_seq);
    if (seq & 1) continue;
    v->fd = b->rm_fd;
    v->client = b->rm_client;
    v->ntsg = b->tsg_count < GVM_MAX_TSGS ? b->tsg_count : GVM_MAX_TSGS;
    for (uint32_t i = 0; i < v->ntsg; i++) {
      v->tsg[i] = b->tsg[i].handle;
      v->agent_us[i] = b->tsg[i].timeslice_us;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (GVM_LOAD(&b->rm_seq) == seq) return;
  }
  v->ntsg = 0;
}

/* NVA06C_CTRL_CMD_GET_TIMESLICE on one TSG; 0 when the RM answered. */
static int rm_timeslice(const struct rm_view *v, uint32_t tsg, uint64_t *us) {
  struct nvos54 c = {.client = v->client, .object = tsg, .cmd = 0xa06c0104u, .params = (uint64_t)(uintptr_t)us,
                     .params_size = 8};
  if (ioctl(v->fd, _IOC(_IOC_READ | _IOC_WRITE, 'F', 0x2A, sizeof c), &c) != 0) return -1;
  return (int)c.status;
}

/* Reads every listed TSG's timeslice from the RM; the count read, or -1 on an RM error. */
static int read_timeslices(const struct rm_view *v, uint64_t *out) {
  for (uint32_t i = 0; i < v->ntsg; i++) {
    out[i] = 0;
    if (rm_timeslice(v, v->tsg[i], &out[i]) != 0) return -1;
  }
  return (int)v->ntsg;
}

static void print_slices(const char *what, const uint64_t *us, uint32_t n) {
  printf("     %s:", what);
  for (uint32_t i = 0; i < n; i++) printf(" %llu", (unsigned long long)us[i]);
  printf(" us\n");
}

/* ---- set-up ---- */
static void wait_kernels(int g, uint64_t want) {
  for (int i = 0; i < 2000; i++) {
    if (GVM_LOAD(&block(g)->kernels_submitted) == want && GVM_LOAD(&block(g)->kernels_ended) == want) return;
    sleep_ms(1);
  }
}

static void setup(int g) {
  struct gpu *p = &gpus[g];
  CU(cuDeviceGet(&p->dev, g));
  CU(cuDevicePrimaryCtxRetain(&p->ctx, p->dev));
  use(g);
  size_t total = 0;
  CU(cuDeviceTotalMem(&total, p->dev));
  p->total = total;
  CUmodule mod;
  CU(cuModuleLoadData(&mod, ptx));
  CU(cuModuleGetFunction(&p->noop, mod, "noop"));
  CU(cuModuleGetFunction(&p->bump, mod, "bump"));
  CU(cuStreamCreate(&p->work, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreate(&p->spin, CU_STREAM_NON_BLOCKING));
  p->base_bytes = 64 * MiB * (uint64_t)(g + 1);
  CU(cuMemAlloc(&p->base, p->base_bytes));
  CU(cuMemsetD32(p->base, 0x600d0000u + (unsigned)g, p->base_bytes / 4));
  p->kernels = 100 * (uint64_t)(g + 1);
  for (uint64_t i = 0; i < p->kernels; i++) CU(cuLaunchKernel(p->noop, 1, 1, 1, 32, 1, 1, 0, p->work, NULL, NULL));
  CU(cuStreamSynchronize(p->work));
  void *h;
  CU(cuMemHostAlloc(&h, 64, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE));
  memset(h, 0, 64);
  p->counter = (volatile uint64_t *)h;
  p->stop = (volatile uint32_t *)((char *)h + 32);
  CU(cuMemHostGetDevicePointer(&p->counter_d, h, 0));
  p->stop_d = p->counter_d + 32;
}

static void *worker(void *arg) {
  struct gpu *p = arg;
  if (cuCtxSetCurrent(p->ctx) != CUDA_SUCCESS) return NULL;
  while (!atomic_load(&stop_workers)) {
    if (cuLaunchKernel(p->noop, 1, 1, 1, 32, 1, 1, 0, p->work, NULL, NULL) != CUDA_SUCCESS) break;
    if (cuStreamSynchronize(p->work) != CUDA_SUCCESS) break;
    atomic_fetch_add(&p->rounds, 1);
    usleep(100); /* about 10k rounds a second: enough to see progress, not a flood of launches */
  }
  return NULL;
}

static void start_work(int g) {
  struct gpu *p = &gpus[g];
  if (!fake) {
    use(g);
    void *args[] = {&p->counter_d, &p->stop_d};
    CU(cuLaunchKernel(p->bump, 1, 1, 1, 1, 1, 1, 0, p->spin, args, NULL));
  }
  p->worker_started = pthread_create(&p->worker, NULL, worker, p) == 0;
}

static void stop_work(void) {
  atomic_store(&stop_workers, true);
  for (int g = 0; g < NGPU; g++) {
    *gpus[g].stop = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (gpus[g].worker_started) pthread_join(gpus[g].worker, NULL);
    gpus[g].worker_started = false;
    use(g);
    CU(cuCtxSynchronize());
  }
}

/* The progress measure of a GPU: the spinning kernel's counter (real GPUs), else the worker's rounds. */
static uint64_t progress(int g) { return fake ? atomic_load(&gpus[g].rounds) : *gpus[g].counter; }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)(p * n);
  return n ? v[i < n ? i : n - 1] : 0;
}

/* ---- the checks ---- */
static void check_accounting(void) {
  printf("-- 1. one process, two GPUs: each GPU's own numbers\n");
  for (int g = 0; g < NGPU; g++) {
    struct gvm_gpu_block *b = block(g);
    wait_kernels(g, gpus[g].kernels);
    printf("     GPU %d: %s, %s, %llu MiB\n", g, b->name, b->pci_bus_id, (unsigned long long)(gpus[g].total / MiB));
    CHECK(GVM_LOAD(&b->memory_current) == gpus[g].base_bytes, "GPU %d: memory.current %llu = the %llu MiB allocated there", g,
          (unsigned long long)GVM_LOAD(&b->memory_current), (unsigned long long)(gpus[g].base_bytes / MiB));
    CHECK(GVM_LOAD(&b->kernels_submitted) == gpus[g].kernels && GVM_LOAD(&b->kernels_ended) == gpus[g].kernels,
          "GPU %d: %llu kernels submitted, %llu ended (launched %llu there)", g,
          (unsigned long long)GVM_LOAD(&b->kernels_submitted), (unsigned long long)GVM_LOAD(&b->kernels_ended),
          (unsigned long long)gpus[g].kernels);
    CHECK(GVM_LOAD(&b->contexts) == 1, "GPU %d: one context (%u)", g, GVM_LOAD(&b->contexts));
  }
  CHECK(strcmp(block(0)->pci_bus_id, block(1)->pci_bus_id) != 0, "two different GPUs (PCI %s, %s)", block(0)->pci_bus_id,
        block(1)->pci_bus_id);
  struct rm_view v0, v1;
  rm_view(0, &v0);
  rm_view(1, &v1);
  CHECK(v0.ntsg > 0 && v1.ntsg > 0 && block(0)->rm_subdevice != block(1)->rm_subdevice,
        "RM objects per GPU: %u and %u TSGs, subdevices %#x and %#x", v0.ntsg, v1.ntsg, block(0)->rm_subdevice,
        block(1)->rm_subdevice);
}

static void check_limit(void) {
  printf("-- 2. memory.limit on GPU 1 (oom mode)\n");
  uint64_t cur1 = GVM_LOAD(&block(1)->memory_current), limit = cur1 + 32 * MiB;
  char msg[GVM_MESSAGE_MAX];
  int st = command(GVM_KEY_MEMORY_LIMIT, 1, limit, msg);
  CHECK(st == 0 && GVM_LOAD(&block(1)->memory_limit) == limit, "GPU 1 limit %llu MiB: %s", (unsigned long long)(limit / MiB), msg);
  CHECK(GVM_LOAD(&block(0)->memory_limit) == gpus[0].total, "GPU 0's limit is still its size (%llu MiB)",
        (unsigned long long)(GVM_LOAD(&block(0)->memory_limit) / MiB));
  size_t free1 = 0, total1 = 0, free0 = 0, total0 = 0;
  use(1);
  CU(cuMemGetInfo(&free1, &total1));
  CHECK(total1 == limit && free1 == 32 * MiB, "GPU 1: cuMemGetInfo total %zu MiB (the limit), free %zu MiB", total1 / MiB,
        free1 / MiB);
  CUdeviceptr a = 0, b = 0;
  CUresult r = cuMemAlloc(&a, 48 * MiB);
  CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "GPU 1: 48 MiB past the limit refused with out-of-memory (%d)", (int)r);
  r = cuMemAlloc(&a, 32 * MiB);
  CHECK(r == CUDA_SUCCESS, "GPU 1: exactly the 32 MiB left granted (%d)", (int)r);
  r = cuMemAlloc(&b, MiB);
  CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "GPU 1: then not 1 MiB more (%d)", (int)r);
  if (a) CU(cuMemFree(a));
  use(0);
  CU(cuMemGetInfo(&free0, &total0));
  CHECK(total0 == gpus[0].total, "GPU 0: cuMemGetInfo is the driver's own (total %zu MiB, free %zu MiB)", total0 / MiB,
        free0 / MiB);
  r = cuMemAlloc(&b, 256 * MiB);
  CHECK(r == CUDA_SUCCESS, "GPU 0: 256 MiB granted (%d)", (int)r);
  CHECK(GVM_LOAD(&block(0)->memory_current) == gpus[0].base_bytes + 256 * MiB && GVM_LOAD(&block(0)->alloc_failures) == 0,
        "GPU 0: counted there (%llu MiB), no failure", (unsigned long long)(GVM_LOAD(&block(0)->memory_current) / MiB));
  CHECK(GVM_LOAD(&block(1)->alloc_failures) == 2, "GPU 1: its two refusals counted there (%llu)",
        (unsigned long long)GVM_LOAD(&block(1)->alloc_failures));
  if (r == CUDA_SUCCESS) CU(cuMemFree(b));
  command(GVM_KEY_MEMORY_LIMIT, 1, gpus[1].total, NULL);
}

static void check_priority(void) {
  printf("-- 3. compute.priority on GPU 1\n");
  struct rm_view v0, v1;
  uint64_t before0[GVM_MAX_TSGS], after0[GVM_MAX_TSGS], read1[GVM_MAX_TSGS];
  rm_view(0, &v0);
  int n0 = read_timeslices(&v0, before0);
  CHECK(n0 > 0, "GPU 0: %d TSGs read back through the RM before", n0);
  if (n0 > 0) print_slices("GPU 0 timeslices before", before0, v0.ntsg);
  char msg[GVM_MESSAGE_MAX];
  double t0 = now_ms();
  int st = command(GVM_KEY_COMPUTE_PRIORITY, 1, 15, msg);
  double ms = now_ms() - t0;
  CHECK(st == 0, "GPU 1 priority 15 in %.2f ms: %s", ms, msg);
  rm_view(1, &v1);
  int n1 = read_timeslices(&v1, read1);
  bool all16 = n1 > 0;
  for (int i = 0; i < n1; i++) all16 &= read1[i] == 16 && v1.agent_us[i] == 16;
  CHECK(all16, "GPU 1: all %d TSGs read back 16 us (the RM and the agent's block)", n1);
  if (n1 > 0) print_slices("GPU 1 timeslices", read1, v1.ntsg);
  rm_view(0, &v0);
  int m0 = read_timeslices(&v0, after0);
  bool same = m0 == n0;
  for (int i = 0; same && i < m0; i++) same = after0[i] == before0[i];
  CHECK(same, "GPU 0: its %d TSGs read back what they had before", m0);
  CHECK(GVM_LOAD(&block(0)->priority) == 8 && GVM_LOAD(&block(1)->priority) == 15, "priorities: GPU 0 %d, GPU 1 %d",
        GVM_LOAD(&block(0)->priority), GVM_LOAD(&block(1)->priority));
  st = command(GVM_KEY_COMPUTE_PRIORITY, 1, 8, msg);
  rm_view(1, &v1);
  n1 = read_timeslices(&v1, read1);
  bool back = st == 0 && n1 > 0;
  for (int i = 0; i < n1; i++) back &= read1[i] == 2048;
  CHECK(back, "GPU 1 back to priority 8: %d TSGs read back 2048 us", n1);
}

static void check_freeze(int cycles) {
  printf("-- 4. freeze of GPU 1 only, %d cycles (progress: %s)\n", cycles,
         fake ? "launch+synchronize rounds; the fake driver runs no kernel" : "a spinning kernel's host-mapped counter");
  for (int g = 0; g < NGPU; g++) start_work(g);
  double deadline = now_ms() + 10000;
  while ((progress(0) == 0 || progress(1) == 0) && now_ms() < deadline) sleep_ms(1);
  CHECK(progress(0) > 0 && progress(1) > 0, "both GPUs progressing before the first freeze (%llu, %llu)",
        (unsigned long long)progress(0), (unsigned long long)progress(1));
  double freeze_ms[64], thaw_ms[64], resume_ms[64], ratio[64];
  int frozen_still = 0, gpu0_moved = 0, rounds_still = 0, flags_ok = 0, resumed = 0;
  if (cycles > 64) cycles = 64;
  for (int c = 0; c < cycles; c++) {
    char msg[GVM_MESSAGE_MAX];
    uint64_t r0 = progress(0);
    double w0 = now_ms();
    sleep_ms(100);
    double rate_before = (double)(progress(0) - r0) / (now_ms() - w0);
    double t0 = now_ms();
    int st = command(GVM_KEY_COMPUTE_FREEZE, 1, 1, msg);
    freeze_ms[c] = now_ms() - t0;
    if (c == 0) printf("     GPU 1: %s\n", msg);
    if (st != 0) printf("FAIL freeze of GPU 1 refused: status %d, %s\n", st, msg);
    sleep_ms(50); /* a round whose kernel ended just before the stop may still be counted */
    uint64_t a1 = progress(1), a0 = progress(0), ra1 = atomic_load(&gpus[1].rounds);
    double w1 = now_ms();
    sleep_ms(300);
    uint64_t b1 = progress(1), b0 = progress(0), rb1 = atomic_load(&gpus[1].rounds);
    ratio[c] = rate_before > 0 ? ((double)(b0 - a0) / (now_ms() - w1)) / rate_before : 0;
    frozen_still += b1 == a1;
    rounds_still += rb1 == ra1;
    gpu0_moved += b0 > a0;
    flags_ok += GVM_LOAD(&block(1)->frozen) == 1 && GVM_LOAD(&block(0)->frozen) == 0;
    if (b1 != a1 || b0 <= a0)
      printf("     cycle %d: GPU 1 %llu -> %llu while frozen, GPU 0 %llu -> %llu\n", c, (unsigned long long)a1,
             (unsigned long long)b1, (unsigned long long)a0, (unsigned long long)b0);
    double t2 = now_ms();
    st = command(GVM_KEY_COMPUTE_FREEZE, 1, 0, msg);
    thaw_ms[c] = now_ms() - t2;
    if (c == 0) printf("     GPU 1: %s\n", msg);
    resume_ms[c] = -1;
    while (now_ms() - t2 < 5000) {
      if (progress(1) != b1) {
        resume_ms[c] = now_ms() - t2;
        break;
      }
    }
    resumed += resume_ms[c] >= 0;
    if (resume_ms[c] < 0) resume_ms[c] = 5000;
    sleep_ms(50);
  }
  CHECK(frozen_still == cycles, "GPU 1 made zero progress in %d of %d frozen windows (300 ms each)", frozen_still, cycles);
  if (!fake) CHECK(rounds_still == cycles, "GPU 1's launch+synchronize rounds stood still too (%d of %d)", rounds_still, cycles);
  CHECK(gpu0_moved == cycles, "GPU 0 kept progressing in %d of %d of GPU 1's frozen windows", gpu0_moved, cycles);
  CHECK(flags_ok == cycles, "the blocks said GPU 1 frozen, GPU 0 not, in %d of %d cycles", flags_ok, cycles);
  CHECK(resumed == cycles, "GPU 1 progressed again after each thaw (%d of %d)", resumed, cycles);
  printf("     freeze command (to applied): p50 %.2f ms, max %.2f ms\n", pct(freeze_ms, cycles, 0.5), pct(freeze_ms, cycles, 1));
  printf("     thaw command (to applied):   p50 %.2f ms, max %.2f ms\n", pct(thaw_ms, cycles, 0.5), pct(thaw_ms, cycles, 1));
  printf("     thaw command to GPU 1 progressing: p50 %.2f ms, max %.2f ms\n", pct(resume_ms, cycles, 0.5),
         pct(resume_ms, cycles, 1));
  printf("     GPU 0's progress rate while GPU 1 was frozen / before: p50 %.2f, min %.2f\n", pct(ratio, cycles, 0.5),
         pct(ratio, cycles, 0));
  stop_work();
}

static bool buffer_holds(CUdeviceptr p, uint64_t bytes, uint32_t tag, uint32_t *host) {
  for (uint64_t at = 0; at < bytes; at += MiB) {
    if (cuMemcpyDtoH(host, p + at, MiB) != CUDA_SUCCESS) return false;
    for (size_t i = 0; i < MiB / 4; i++)
      if (host[i] != tag) return false;
  }
  return true;
}

static int buffers_intact(const CUdeviceptr *buf, uint32_t *host) {
  int good = 0;
  for (int i = 0; i < SWAP_BUFFERS; i++) good += buffer_holds(buf[i], SWAP_BYTES, 0x5a000000u + (uint32_t)i, host);
  return good;
}

static void check_swap(void) {
  printf("-- 5. swap mode on GPU 1\n");
  char msg[GVM_MESSAGE_MAX];
  int st = command(GVM_KEY_MEMORY_MODE, 1, GVM_MEMORY_MODE_SWAP, msg);
  CHECK(st == 0 && GVM_LOAD(&block(1)->memory_mode) == GVM_MEMORY_MODE_SWAP &&
            GVM_LOAD(&block(0)->memory_mode) == GVM_MEMORY_MODE_OOM,
        "GPU 1 in swap mode, GPU 0 in oom mode");
  use(1);
  CUdeviceptr buf[SWAP_BUFFERS];
  for (int i = 0; i < SWAP_BUFFERS; i++) {
    CU(cuMemAlloc(&buf[i], SWAP_BYTES));
    CU(cuMemsetD32(buf[i], 0x5a000000u + (uint32_t)i, SWAP_BYTES / 4));
  }
  CU(cuCtxSynchronize());
  uint64_t cur0 = GVM_LOAD(&block(0)->memory_current), cur1 = GVM_LOAD(&block(1)->memory_current);
  uint64_t limit = cur1 - 3 * SWAP_BYTES;
  st = command(GVM_KEY_MEMORY_LIMIT, 1, limit, msg);
  printf("     GPU 1 limit %llu MiB: %s\n", (unsigned long long)(limit / MiB), msg);
  uint64_t on1 = GVM_LOAD(&block(1)->memory_current), host1 = GVM_LOAD(&block(1)->memory_swap_current);
  CHECK(st == 0 && on1 <= limit && host1 == 3 * SWAP_BYTES, "GPU 1: %llu MiB on the GPU, %llu MiB moved to the host",
        (unsigned long long)(on1 / MiB), (unsigned long long)(host1 / MiB));
  CHECK(GVM_LOAD(&block(0)->memory_current) == cur0 && GVM_LOAD(&block(0)->memory_swap_current) == 0,
        "GPU 0 untouched (%llu MiB, none on the host)", (unsigned long long)(cur0 / MiB));
  uint32_t *host = malloc(MiB);
  int good = host ? buffers_intact(buf, host) : 0;
  CHECK(good == SWAP_BUFFERS, "every byte of the %d buffers reads back while three live on the host (%d intact)",
        SWAP_BUFFERS, good);
  st = command(GVM_KEY_MEMORY_LIMIT, 1, gpus[1].total, msg);
  printf("     GPU 1 limit back to its size: %s\n", msg);
  CHECK(st == 0 && GVM_LOAD(&block(1)->memory_swap_current) == 0 && GVM_LOAD(&block(1)->memory_current) == cur1,
        "GPU 1: all back on the GPU (%llu MiB)", (unsigned long long)(GVM_LOAD(&block(1)->memory_current) / MiB));
  good = host ? buffers_intact(buf, host) : 0;
  CHECK(good == SWAP_BUFFERS, "and every byte intact after the move back (%d of %d)", good, SWAP_BUFFERS);
  free(host);
  use(1);
  for (int i = 0; i < SWAP_BUFFERS; i++) CU(cuMemFree(buf[i]));
  command(GVM_KEY_MEMORY_MODE, 1, GVM_MEMORY_MODE_OOM, NULL);
}

/* serve: both GPUs set up and busy; multi_gpu_check.sh steers it through the CLI */
static int serve(void) {
  for (int g = 0; g < NGPU; g++) {
    gpus[g].worker_started = pthread_create(&gpus[g].worker, NULL, worker, &gpus[g]) == 0;
  }
  printf("READY %d %llu %llu\n", (int)getpid(), (unsigned long long)gpus[0].base_bytes,
         (unsigned long long)gpus[1].base_bytes);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (strncmp(line, "progress", 8) == 0)
      printf("PROGRESS %lu %lu\n", atomic_load(&gpus[0].rounds), atomic_load(&gpus[1].rounds));
    else if (strncmp(line, "exit", 4) == 0)
      break;
  }
  stop_work();
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  bool serving = argc > 1 && strcmp(argv[1], "serve") == 0;
  int cycles = !serving && argc > 1 ? atoi(argv[1]) : 5;
  int count = 0;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGetCount(&count) != CUDA_SUCCESS) count = 0;
  if (count < NGPU) {
    printf("SKIP: %d GPU(s) visible, this check needs %d\n", count, NGPU);
    return 0;
  }
  char name[64] = {0};
  CUdevice d0;
  CU(cuDeviceGet(&d0, 0));
  CU(cuDeviceGetName(name, (int)sizeof name, d0));
  fake = strncmp(name, "Fake GPU", 8) == 0;
  for (int g = 0; g < NGPU; g++) setup(g);
  if (gvm_self_open(&self) != 0) {
    printf("FAIL no control block for pid %d: run under the agent (LD_PRELOAD=.../libgvm.so)\n1 failure(s)\n", (int)getpid());
    return 1;
  }
  if (serving) return serve();
  check_accounting();
  check_limit();
  check_priority();
  check_freeze(cycles < 1 ? 1 : cycles);
  check_swap();
  return check_summary();
}
