// Swap-move bandwidth of gvm against the driver's own managed-memory prefetch, in one run.
//
// For each size (default 1, 4 and 16 GiB) a fresh child process (so gvm's pinned host pool starts
// empty) runs under the agent in swap mode:
//   gvm:     the size as cuMemAlloc buffers (--buf-mib, default 1024), each filled with its own
//            pattern by a kernel; then --rounds times (default 3): lower the process's own
//            memory.limit to what it held before the buffers (every buffer moves to the host), check
//            every word by a kernel reading the host-resident range, write a new generation there,
//            raise the limit (every buffer moves back), check every word of the new generation.
//            Round 1 is cold (the pool pins host memory inside the move), later rounds warm; with
//            GVM_SWAP_PREWARM_MIB set, round 1 waits for the agent's pre-warm and is "prewarmed".
//            Time: command written to command answered (swap_check.c's way: what a controller waits,
//            quiet window included), and the mover's own figure for the window (its debug log line).
//   managed: one cuMemAllocManaged of the size, populated on the GPU, then the same rounds with
//            cuMemPrefetchAsync to the host and back, each timed to its stream's completion, checked
//            on the GPU after each round trip.
// The parent prints a table and writes JSON (--json FILE).
//
// Build: nvcc -O2 -std=c++17 -arch=sm_90 -I include bench/swap/swap_bench.cu -lcuda -o build/bench/swap_bench
// Run:   bash bench/swap/run.sh (sets LD_PRELOAD, GVM_MEMORY_MODE=swap and the pool size)
#include <cuda.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "gvm/self_command.h"

#define CU(call)                                                                 \
  do {                                                                           \
    CUresult r_ = (call);                                                        \
    if (r_ != CUDA_SUCCESS) {                                                    \
      const char *s_ = nullptr;                                                  \
      cuGetErrorName(r_, &s_);                                                   \
      fprintf(stderr, "FAIL %s: %s (line %d)\n", #call, s_ ? s_ : "?", __LINE__); \
      exit(2);                                                                   \
    }                                                                            \
  } while (0)

static const uint64_t GiB = 1ull << 30, MiB = 1ull << 20;

static double now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// ---- kernels: every 32-bit word is a hash of its index, its buffer and a generation ----
__device__ __forceinline__ uint32_t word_of(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 32 | seed);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return (uint32_t)(x >> 32);
}

__global__ void fill(uint32_t *p, uint64_t words, uint32_t seed) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < words; i += (uint64_t)gridDim.x * blockDim.x)
    p[i] = word_of(i, seed);
}

__global__ void check(const uint32_t *p, uint64_t words, uint32_t seed, unsigned long long *bad) {
  unsigned long long mine = 0;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < words; i += (uint64_t)gridDim.x * blockDim.x)
    mine += p[i] != word_of(i, seed);
  if (mine) atomicAdd(bad, mine);
}

static int g_blocks = 132 * 8;
static CUdeviceptr g_bad; // device counter (below 2 MiB: never converted by swap mode)

// --host-check: the same patterns written and checked by the CPU through copies, without kernels
// (slower; lets the bench's own logic run on the fake driver, where the CUDA runtime cannot)
static bool g_host_check;
static uint32_t host_word(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 32 | seed);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return (uint32_t)(x >> 32);
}

static unsigned long long host_pass(CUdeviceptr p, uint64_t bytes, uint32_t seed, bool write) {
  static std::vector<uint32_t> chunk(16 << 20);
  unsigned long long bad = 0;
  for (uint64_t at = 0; at < bytes; at += chunk.size() * 4) {
    uint64_t n = std::min<uint64_t>(chunk.size(), (bytes - at) / 4), first = at / 4;
    if (write) {
      for (uint64_t i = 0; i < n; i++) chunk[i] = host_word(first + i, seed);
      CU(cuMemcpyHtoD(p + at, chunk.data(), n * 4));
    } else {
      CU(cuMemcpyDtoH(chunk.data(), p + at, n * 4));
      for (uint64_t i = 0; i < n; i++) bad += chunk[i] != host_word(first + i, seed);
    }
  }
  return bad;
}

static void gpu_fill(CUdeviceptr p, uint64_t bytes, uint32_t seed) {
  if (g_host_check) {
    host_pass(p, bytes, seed, true);
    return;
  }
  fill<<<g_blocks, 512>>>((uint32_t *)p, bytes / 4, seed);
}

static unsigned long long gpu_check(CUdeviceptr p, uint64_t bytes, uint32_t seed) {
  if (g_host_check) return host_pass(p, bytes, seed, false);
  unsigned long long bad = 0;
  CU(cuMemsetD8(g_bad, 0, sizeof bad));
  check<<<g_blocks, 512>>>((const uint32_t *)p, bytes / 4, seed, (unsigned long long *)g_bad);
  CU(cuCtxSynchronize());
  CU(cuMemcpyDtoH(&bad, g_bad, sizeof bad));
  return bad;
}

// ---- the agent's log: stderr goes through a pipe so the mover's own timings can be picked up ----
static int g_real_stderr = -1;
static bool g_echo_debug; // SWAP_BENCH_VERBOSE=1: the agent's debug lines go to stderr too
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static std::vector<double> g_window_ms; // "mover: ... in X ms" lines, in order
static double g_prewarm_ready_mib;       // the latest "swap pre-warm: host memory ready for N MiB"
// GVM_SWAP_PREWARM_MIB set: round 1 waits for the pre-warm, and is labelled "prewarmed", not "cold"
static bool prewarm_asked() {
  const char *v = getenv("GVM_SWAP_PREWARM_MIB");
  return v && atoll(v) > 0;
}

// Raw read(), not stdio: at exit glibc may lock every FILE, and a FILE blocked in fgets on this pipe
// (whose write end is this process's own stderr) would then never let the process end.
static void log_line(const char *line, size_t len) {
  std::string l(line, len);
  if (const char *pw = strstr(l.c_str(), "swap pre-warm: host memory ready for ")) {
    pthread_mutex_lock(&g_log_lock);
    g_prewarm_ready_mib = atof(pw + strlen("swap pre-warm: host memory ready for "));
    pthread_mutex_unlock(&g_log_lock);
  }
  const char *m = strstr(l.c_str(), "] mover: ");
  const char *at = m ? strstr(m, " in ") : nullptr;
  if (at) {
    pthread_mutex_lock(&g_log_lock);
    g_window_ms.push_back(atof(at + 4));
    pthread_mutex_unlock(&g_log_lock);
    if (!g_echo_debug) return; // the bench reports it; no need to echo
  }
  if (!g_echo_debug && strstr(l.c_str(), " debug] ")) return;
  l += '\n';
  ssize_t w = write(g_real_stderr, l.data(), l.size());
  (void)w;
}

static void *log_reader(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[8192];
  size_t have = 0;
  for (;;) {
    ssize_t n = read(fd, buf + have, sizeof buf - have);
    if (n <= 0) break;
    have += (size_t)n;
    size_t start = 0;
    for (char *nl; (nl = (char *)memchr(buf + start, '\n', have - start)) != nullptr; start = nl - buf + 1)
      log_line(buf + start, nl - (buf + start));
    if (start == 0 && have == sizeof buf) { // a line longer than the buffer: pass it on in pieces
      log_line(buf, have);
      have = 0;
      continue;
    }
    memmove(buf, buf + start, have - start);
    have -= start;
  }
  if (have) log_line(buf, have);
  close(fd);
  return nullptr;
}

static pthread_t g_reader;
static bool g_reading;

static void capture_agent_log() {
  const char *v = getenv("SWAP_BENCH_VERBOSE");
  g_echo_debug = v && *v && *v != '0';
  int fds[2];
  if (pipe(fds) != 0) return;
  g_real_stderr = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  close(fds[1]);
  g_reading = pthread_create(&g_reader, nullptr, log_reader, (void *)(intptr_t)fds[0]) == 0;
}

// stderr goes back to where it was (closing the pipe's write end), and the reader drains and ends
static void release_agent_log() {
  if (g_real_stderr < 0) return;
  dup2(g_real_stderr, STDERR_FILENO);
  if (g_reading) pthread_join(g_reader, nullptr);
  g_reading = false;
}

static double take_window_ms(double wait_until_ms) {
  // the mover logs after the window, just before the command is answered: give the reader a moment
  for (;;) {
    pthread_mutex_lock(&g_log_lock);
    double v = -1;
    if (!g_window_ms.empty()) {
      v = 0;
      for (double x : g_window_ms) v += x;
      g_window_ms.clear();
    }
    pthread_mutex_unlock(&g_log_lock);
    if (v >= 0 || now_ms() > wait_until_ms) return v;
    usleep(1000);
  }
}

// ---- progress: every step is announced, and a step that takes too long ends the child ----
// A move that never finishes would otherwise hang the run with no clue where (the parent prints the
// child's output only at its end). SWAP_BENCH_STEP_S (default 120) bounds each step.
static std::atomic<double> g_step_started;
static char g_step[128];

static void step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void step(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_step, sizeof g_step, fmt, ap);
  va_end(ap);
  g_step_started = now_ms();
  dprintf(g_real_stderr >= 0 ? g_real_stderr : STDERR_FILENO, "[swap %d] %s\n", (int)getpid(), g_step);
}

static void *watchdog(void *) {
  const char *v = getenv("SWAP_BENCH_STEP_S");
  double limit_ms = (v && *v ? atof(v) : 120) * 1e3;
  for (;;) {
    sleep(1);
    double started = g_step_started;
    if (started > 0 && now_ms() - started > limit_ms) {
      dprintf(g_real_stderr >= 0 ? g_real_stderr : STDERR_FILENO,
              "[swap %d] FAIL step '%s' still running after %.0f s; giving up\n", (int)getpid(), g_step,
              limit_ms / 1e3);
      const char *dump = getenv("SWAP_BENCH_DUMP"); // bench/lib/hang_dump.py: where every thread waits
      if (dump && *dump) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "python3 '%s' %d 1>&%d 2>&1", dump, (int)getpid(),
                 g_real_stderr >= 0 ? g_real_stderr : STDERR_FILENO);
        int rc = system(cmd);
        (void)rc;
      }
      _exit(3);
    }
  }
  return nullptr;
}

// ---- the process's own control block ----
static gvm_self g_self;
static gvm_control_block *g_cb;

static double set_limit(uint64_t bytes, std::string *msg) {
  char text[GVM_MESSAGE_MAX];
  double t0 = now_ms();
  if (gvm_self_command(&g_self, GVM_KEY_MEMORY_LIMIT, 0, bytes, 120000, text, sizeof text) < 0) {
    fprintf(stderr, "FAIL no answer to the limit command in 120 s\n");
    exit(1);
  }
  double ms = now_ms() - t0;
  if (msg) *msg = text;
  return ms;
}

struct round_result {
  double out_ms, in_ms, out_window_ms, in_window_ms;
  unsigned long long bad_out, bad_back;
  bool all_moved_out, all_moved_back;
};

static void json_rounds(FILE *f, const char *name, const std::vector<round_result> &rs, uint64_t bytes) {
  fprintf(f, "\"%s\":[", name);
  for (size_t i = 0; i < rs.size(); i++) {
    const round_result &r = rs[i];
    fprintf(f,
            "%s{\"round\":%zu,\"pool\":\"%s\",\"out_ms\":%.2f,\"in_ms\":%.2f,\"out_gbs\":%.2f,\"in_gbs\":%.2f,"
            "\"out_window_ms\":%.2f,\"in_window_ms\":%.2f,\"bad_words_out\":%llu,\"bad_words_back\":%llu,"
            "\"all_moved_out\":%s,\"all_moved_back\":%s}",
            i ? "," : "", i + 1, i > 0 ? "warm" : strcmp(name, "gvm") == 0 && prewarm_asked() ? "prewarmed" : "cold", r.out_ms, r.in_ms, bytes / r.out_ms / 1e6,
            bytes / r.in_ms / 1e6, r.out_window_ms, r.in_window_ms, r.bad_out, r.bad_back,
            r.all_moved_out ? "true" : "false", r.all_moved_back ? "true" : "false");
  }
  fprintf(f, "]");
}

// ---- one size, in a child process ----
static int run_one(uint64_t bytes, uint64_t buf_bytes, int rounds, bool managed) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  capture_agent_log();
  pthread_t dog;
  pthread_create(&dog, nullptr, watchdog, nullptr);
  pthread_detach(dog);
  step("%.3g GiB: init", (double)bytes / GiB);
  CU(cuInit(0));
  CUdevice dev;
  CUcontext ctx;
  CU(cuDeviceGet(&dev, 0));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  int sms = 0;
  cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
  if (sms > 0) g_blocks = sms * 8;
  CU(cuMemAlloc(&g_bad, 4096));
  CUstream stream;
  CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  if (!g_host_check && cudaFree(nullptr) != cudaSuccess) { // the runtime adopts the primary context
    fprintf(stderr, "FAIL cudaFree(0)\n");
    return 2;
  }
  CU(cuCtxSynchronize());

  std::vector<round_result> gvm_rounds, managed_rounds;
  const char *gvm_skip = nullptr;
  if (gvm_self_open(&g_self) != 0) gvm_skip = "no control block: not running under the agent";
  else if ((g_cb = g_self.cb)->gpu[0].memory_mode != GVM_MEMORY_MODE_SWAP) gvm_skip = "not in swap mode (GVM_MEMORY_MODE=swap)";
  if (gvm_skip) fprintf(stderr, "gvm part skipped: %s\n", gvm_skip);

  if (!gvm_skip) {
    gvm_gpu_block *g = &g_cb->gpu[0];
    uint64_t base = GVM_LOAD(&g->memory_current), total = GVM_LOAD(&g->total_bytes);
    size_t n = (size_t)((bytes + buf_bytes - 1) / buf_bytes);
    std::vector<CUdeviceptr> bufs(n);
    std::vector<uint64_t> sizes(n);
    step("gvm: allocating and filling %zu buffer(s)", n);
    for (size_t i = 0; i < n; i++) {
      sizes[i] = i + 1 < n ? buf_bytes : bytes - buf_bytes * (n - 1);
      CU(cuMemAlloc(&bufs[i], sizes[i]));
      gpu_fill(bufs[i], sizes[i], (uint32_t)(i * 1000));
    }
    CU(cuCtxSynchronize());
    if (prewarm_asked()) {
      step("gvm: waiting for the swap pre-warm to cover %.3g GiB", (double)bytes / GiB);
      for (int waited = 0;; waited += 10) {
        pthread_mutex_lock(&g_log_lock);
        double ready = g_prewarm_ready_mib;
        pthread_mutex_unlock(&g_log_lock);
        if (ready * (double)(1 << 20) >= (double)bytes) break;
        if (waited >= 300000) {
          fprintf(stderr, "pre-warm not done after 300 s (%.0f MiB ready): round 1 is partly cold\n", ready);
          break;
        }
        usleep(10000);
      }
    }
    take_window_ms(0);
    for (int r = 0; r < rounds; r++) {
      round_result rr = {};
      std::string msg;
      step("gvm round %d: limit lowered, moving out", r + 1);
      rr.out_ms = set_limit(base ? base : 1, &msg);
      rr.out_window_ms = take_window_ms(now_ms() + 200);
      rr.all_moved_out = GVM_LOAD(&g->memory_swap_current) >= bytes;
      if (!rr.all_moved_out) fprintf(stderr, "round %d: not all moved out: %s\n", r + 1, msg.c_str());
      step("gvm round %d: out in %.1f ms; checking on the host side", r + 1, rr.out_ms);
      for (size_t i = 0; i < n; i++) rr.bad_out += gpu_check(bufs[i], sizes[i], (uint32_t)(i * 1000 + r));
      for (size_t i = 0; i < n; i++) gpu_fill(bufs[i], sizes[i], (uint32_t)(i * 1000 + r + 1)); // writes to the host
      CU(cuCtxSynchronize());
      step("gvm round %d: limit raised, moving back", r + 1);
      rr.in_ms = set_limit(total, &msg);
      rr.in_window_ms = take_window_ms(now_ms() + 200);
      rr.all_moved_back = GVM_LOAD(&g->memory_swap_current) == 0;
      if (!rr.all_moved_back) fprintf(stderr, "round %d: not all moved back: %s\n", r + 1, msg.c_str());
      step("gvm round %d: back in %.1f ms; checking", r + 1, rr.in_ms);
      for (size_t i = 0; i < n; i++) rr.bad_back += gpu_check(bufs[i], sizes[i], (uint32_t)(i * 1000 + r + 1));
      gvm_rounds.push_back(rr);
    }
    for (size_t i = 0; i < n; i++) CU(cuMemFree(bufs[i]));
  }

  if (managed) {
    step("managed: allocating");
    CUdeviceptr m;
    CU(cuMemAllocManaged(&m, bytes, CU_MEM_ATTACH_GLOBAL));
    // looked up at run time: the prefetch ABI changed in 12.2, and the bench links against any libcuda
#if CUDA_VERSION >= 12020
    CUmemLocation on_gpu = {}, on_host = {};
    on_gpu.type = CU_MEM_LOCATION_TYPE_DEVICE;
    on_gpu.id = dev;
    on_host.type = CU_MEM_LOCATION_TYPE_HOST;
    on_host.id = 0;
    typedef CUresult (*prefetch_fn)(CUdeviceptr, size_t, CUmemLocation, unsigned int, CUstream);
    const int prefetch_version = 12020;
#define PREFETCH(to) prefetch(m, bytes, (to), 0, stream)
#else
    CUdevice on_gpu = dev, on_host = CU_DEVICE_CPU;
    typedef CUresult (*prefetch_fn)(CUdeviceptr, size_t, CUdevice, CUstream);
    const int prefetch_version = 8000;
#define PREFETCH(to) prefetch(m, bytes, (to), stream)
#endif
    prefetch_fn prefetch = nullptr;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (cuGetProcAddress("cuMemPrefetchAsync", (void **)&prefetch, prefetch_version, CU_GET_PROC_ADDRESS_DEFAULT,
                         &found) != CUDA_SUCCESS || !prefetch) {
      fprintf(stderr, "FAIL cuMemPrefetchAsync not found in this driver\n");
      exit(2);
    }
    CU(PREFETCH(on_gpu));
    CU(cuStreamSynchronize(stream));
    gpu_fill(m, bytes, 7);
    CU(cuCtxSynchronize());
    for (int r = 0; r < rounds; r++) {
      round_result rr = {};
      double t0 = now_ms();
      CU(PREFETCH(on_host));
      CU(cuStreamSynchronize(stream));
      rr.out_ms = now_ms() - t0;
      t0 = now_ms();
      CU(PREFETCH(on_gpu));
      CU(cuStreamSynchronize(stream));
      rr.in_ms = now_ms() - t0;
      rr.out_window_ms = rr.in_window_ms = -1;
      rr.all_moved_out = rr.all_moved_back = true;
      rr.bad_back = gpu_check(m, bytes, (uint32_t)(7 + r));
      gpu_fill(m, bytes, (uint32_t)(7 + r + 1));
      CU(cuCtxSynchronize());
      managed_rounds.push_back(rr);
    }
    CU(cuMemFree(m));
  }

  step("done");
  g_step_started = 0;
  printf("RESULT {\"bytes\":%llu,\"buf_bytes\":%llu,", (unsigned long long)bytes, (unsigned long long)buf_bytes);
  if (gvm_skip) printf("\"gvm_skipped\":\"%s\",", gvm_skip);
  json_rounds(stdout, "gvm", gvm_rounds, bytes);
  printf(",");
  json_rounds(stdout, "managed", managed_rounds, bytes);
  printf("}\n");
  fflush(stdout);
  release_agent_log();
  return 0;
}

// ---- the parent: one child per size, a table, JSON ----
struct parsed {
  double gib;
  std::string json;
};

static double field(const std::string &obj, const char *key, size_t from = 0) {
  std::string k = std::string("\"") + key + "\":";
  size_t at = obj.find(k, from);
  return at == std::string::npos ? -1 : atof(obj.c_str() + at + k.size());
}

// the n-th round object of an array "name":[...] as a substring
static std::string round_of(const std::string &obj, const char *name, int n) {
  size_t at = obj.find(std::string("\"") + name + "\":[");
  if (at == std::string::npos) return "";
  for (int i = 0; i <= n; i++) {
    at = obj.find("{\"round\":", at + 1);
    if (at == std::string::npos) return "";
    size_t end = obj.find('}', at);
    if (i == n) return obj.substr(at, end - at + 1);
    if (obj.compare(end + 1, 1, "]") == 0) return "";
  }
  return "";
}

static bool round_ok(const std::string &r) {
  return r.find("\"bad_words_out\":0,") != std::string::npos && r.find("\"bad_words_back\":0,") != std::string::npos &&
         r.find("false") == std::string::npos;
}

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--sizes 1,4,16] [--buf-mib 1024] [--rounds 3] [--no-managed] [--json FILE] [--target 40]\n"
          "          [--host-check]   (patterns written and checked by the CPU: no kernels, for the fake driver)\n"
          "       %s --one GIB [--buf-mib N] [--rounds N] [--no-managed]   (one size, prints RESULT {json})\n",
          argv0, argv0);
}

int main(int argc, char **argv) {
  std::string sizes = "1,4,16", json_path;
  uint64_t buf_mib = 1024;
  int rounds = 3;
  bool managed = true;
  double one = 0, target = 40;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char * {
      if (i + 1 >= argc) {
        usage(argv[0]);
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--sizes") sizes = next();
    else if (a == "--buf-mib") buf_mib = strtoull(next(), nullptr, 10);
    else if (a == "--rounds") rounds = atoi(next());
    else if (a == "--no-managed") managed = false;
    else if (a == "--json") json_path = next();
    else if (a == "--one") one = atof(next());
    else if (a == "--target") target = atof(next());
    else if (a == "--host-check") g_host_check = true;
    else {
      usage(argv[0]);
      return a == "-h" || a == "--help" ? 0 : 2;
    }
  }
  if (rounds < 2) rounds = 2; // round 1 is cold, the rest warm
  if (buf_mib < 2) buf_mib = 2;
  if (one > 0) return run_one((uint64_t)(one * GiB), buf_mib * MiB, rounds, managed);

  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::vector<parsed> results;
  bool failed = false;
  for (size_t at = 0; at < sizes.size();) {
    size_t comma = sizes.find(',', at);
    std::string s = sizes.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    at = comma == std::string::npos ? sizes.size() : comma + 1;
    double gib = atof(s.c_str());
    if (gib <= 0) continue;
    int out[2];
    if (pipe(out) != 0) return 2;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::string bm = std::to_string(buf_mib), rn = std::to_string(rounds);
      std::vector<const char *> args = {"/proc/self/exe", "--one", s.c_str(), "--buf-mib", bm.c_str(), "--rounds",
                                        rn.c_str()};
      if (!managed) args.push_back("--no-managed");
      if (g_host_check) args.push_back("--host-check");
      args.push_back(nullptr);
      setenv("GVM_LOG", "debug", 1); // the mover's own timing of each quiet window
      execv("/proc/self/exe", (char *const *)args.data());
      _exit(127);
    }
    close(out[1]);
    printf("[swap] %g GiB: child %d\n", gib, (int)pid);
    FILE *in = fdopen(out[0], "r");
    char line[1 << 16];
    std::string result;
    while (fgets(line, sizeof line, in)) {
      if (strncmp(line, "RESULT ", 7) == 0) result = std::string(line + 7, strcspn(line + 7, "\n"));
      else fputs(line, stdout);
    }
    fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || result.empty()) {
      printf("[swap] %g GiB: child failed (status %d)\n", gib, status);
      failed = true;
      continue;
    }
    results.push_back({gib, result});
  }

  printf("\n| size | method | pool / pages | to host ms | GB/s | window ms | back ms | GB/s | window ms | every byte |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|\n");
  double worst_warm_out = 1e30, worst_warm_in = 1e30;
  for (const parsed &p : results) {
    for (const char *method : {"gvm", "managed"}) {
      for (int r = 0;; r++) {
        std::string o = round_of(p.json, method, r);
        if (o.empty()) break;
        bool warm = r > 0;
        double bytes = field(p.json, "bytes");
        double out_ms = field(o, "out_ms"), in_ms = field(o, "in_ms");
        double ow = field(o, "out_window_ms"), iw = field(o, "in_window_ms");
        bool ok = round_ok(o);
        failed |= !ok;
        if (std::string(method) == "gvm" && warm) {
          worst_warm_out = std::min(worst_warm_out, bytes / out_ms / 1e6);
          worst_warm_in = std::min(worst_warm_in, bytes / in_ms / 1e6);
        }
        char ows[32] = "-", iws[32] = "-";
        if (ow >= 0) snprintf(ows, sizeof ows, "%.1f", ow);
        if (iw >= 0) snprintf(iws, sizeof iws, "%.1f", iw);
        printf("| %g GiB | %s | round %d, %s | %.1f | %.1f | %s | %.1f | %.1f | %s | %s |\n", p.gib, method, r + 1,
               warm ? "warm" : std::string(method) == "gvm" && prewarm_asked() ? "prewarmed" : "cold", out_ms,
               bytes / out_ms / 1e6, ows, in_ms, bytes / in_ms / 1e6, iws,
               ok ? "ok" : "FAIL");
      }
    }
  }
  bool met = worst_warm_out >= target && worst_warm_in >= target && worst_warm_out < 1e29;
  printf("\ngvm with a warm pool, slowest round: to host %.1f GB/s, back %.1f GB/s (target >= %.0f both ways): %s\n",
         worst_warm_out < 1e29 ? worst_warm_out : 0.0, worst_warm_in < 1e29 ? worst_warm_in : 0.0, target,
         met ? "met" : "NOT met");
  if (!json_path.empty()) {
    FILE *f = fopen(json_path.c_str(), "w");
    if (!f) {
      fprintf(stderr, "cannot write %s: %s\n", json_path.c_str(), strerror(errno));
      return 2;
    }
    const char *pool = getenv("GVM_SWAP_POOL_MIB");
    fprintf(f, "{\"buf_mib\":%llu,\"rounds\":%d,\"pool_mib\":\"%s\",\"target_gbs\":%.0f,\"warm_target_met\":%s,"
               "\"warm_out_gbs_min\":%.2f,\"warm_in_gbs_min\":%.2f,\"every_byte_ok\":%s,\"sizes\":[",
            (unsigned long long)buf_mib, rounds, pool ? pool : "", target, met ? "true" : "false",
            worst_warm_out < 1e29 ? worst_warm_out : 0.0, worst_warm_in < 1e29 ? worst_warm_in : 0.0,
            failed ? "false" : "true");
    for (size_t i = 0; i < results.size(); i++)
      fprintf(f, "%s{\"gib\":%g,\"result\":%s}", i ? "," : "", results[i].gib, results[i].json.c_str());
    fprintf(f, "]}\n");
    fclose(f);
    printf("[swap] wrote %s\n", json_path.c_str());
  }
  return failed ? 1 : 0;
}
