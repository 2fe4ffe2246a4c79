// Kernel launch overhead microbenchmark: how much host time one launch costs, measured so that the
// difference with and without an LD_PRELOAD agent (libgvm.so) is the agent's added cost.
//
// Variants (each: a warm-up, then --reps repetitions; the median is printed):
//   driver_submit  cuLaunchKernel of an empty kernel, --n times back to back on one created stream;
//                  host time of the launch loop only / n
//   driver_total   the same loop including the cuStreamSynchronize after it / n
//   driver_burst   --n launches in bursts of --burst, each burst timed on its own with a sync
//                  (untimed) between bursts, so the launch queue never fills and the GPU never
//                  throttles the host: the purest host submit cost / n
//   runtime_submit, runtime_total   kernel<<<1,1,0,stream>>> through the CUDA runtime (which reaches
//                  the driver through cuGetProcAddress, not through the exported symbols)
//   graph_submit, graph_total       cuGraphLaunch of a captured 1-kernel graph, --n/10 times
//
// Output: `AGENT loaded=<0|1>`, one `RESULT variant=<name> ns=<median> min=<> max=<> reps=<> n=<>`
// line per variant, and `DONE`. Exit status 1 with a message on any CUDA error.
//
// Build: nvcc -O2 -std=c++17 -arch=sm_90 launch.cu -o launch -lcuda
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#define CK(call)                                                                      \
  do {                                                                                \
    CUresult r_ = (call);                                                             \
    if (r_ != CUDA_SUCCESS) {                                                         \
      const char *n_ = nullptr;                                                       \
      cuGetErrorName(r_, &n_);                                                        \
      fprintf(stderr, "FAIL: %s:%d: %s -> %s (%d)\n", __FILE__, __LINE__, #call,      \
              n_ ? n_ : "?", (int)r_);                                                \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

#define RT(call)                                                                      \
  do {                                                                                \
    cudaError_t e_ = (call);                                                          \
    if (e_ != cudaSuccess) {                                                          \
      fprintf(stderr, "FAIL: %s:%d: %s -> %s\n", __FILE__, __LINE__, #call,           \
              cudaGetErrorString(e_));                                                \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

extern "C" __global__ void gvm_bench_empty_rt() {}

// The driver-API kernel comes from PTX so the launch loop never touches the runtime.
static const char kPtx[] =
    ".version 7.0\n"
    ".target sm_52\n"
    ".address_size 64\n"
    ".visible .entry gvm_bench_empty()\n"
    "{\n"
    "  ret;\n"
    "}\n";

static inline double now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static bool agent_loaded() {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "libgvm")) found = true;
  fclose(f);
  return found;
}

struct Stats {
  std::vector<double> v;
  void add(double x) { v.push_back(x); }
  double median() const {
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    size_t n = s.size();
    return n == 0 ? 0 : (n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2);
  }
  double min() const { return *std::min_element(v.begin(), v.end()); }
  double max() const { return *std::max_element(v.begin(), v.end()); }
};

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--n LAUNCHES] [--reps R] [--burst B] [--variants driver,runtime,graph]\n",
          argv0);
  exit(2);
}

int main(int argc, char **argv) {
  long n = 200000;
  int reps = 5;
  long burst = 128;
  std::string variants = "driver,runtime,graph";
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char * {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    if (a == "--n") n = atol(next());
    else if (a == "--reps") reps = atoi(next());
    else if (a == "--burst") burst = atol(next());
    else if (a == "--variants") variants = next();
    else usage(argv[0]);
  }
  if (n < 100 || reps < 1 || burst < 1) usage(argv[0]);
  auto want = [&](const char *v) { return ("," + variants + ",").find(std::string(",") + v + ",") != std::string::npos; };

  printf("AGENT loaded=%d\n", agent_loaded() ? 1 : 0);
  fflush(stdout);

  // Runtime first, so the runtime and the driver calls share the primary context.
  RT(cudaSetDevice(0));
  RT(cudaFree(nullptr));
  CUcontext ctx;
  CK(cuCtxGetCurrent(&ctx));
  if (!ctx) {
    fprintf(stderr, "FAIL: no current context after cudaFree(0)\n");
    return 1;
  }
  CUdevice dev;
  CK(cuCtxGetDevice(&dev));
  char name[256] = {0};
  CK(cuDeviceGetName(name, sizeof name, dev));
  int drv = 0;
  CK(cuDriverGetVersion(&drv));
  printf("DEVICE name=\"%s\" driver=%d n=%ld reps=%d burst=%ld\n", name, drv, n, reps, burst);

  CUmodule mod;
  CUfunction fn;
  CUresult lr = cuModuleLoadData(&mod, kPtx);
  if (lr == CUDA_SUCCESS) {
    CK(cuModuleGetFunction(&fn, mod, "gvm_bench_empty"));
    printf("KERNEL source=ptx\n");
  } else {
    const char *en = nullptr;
    cuGetErrorName(lr, &en);
    printf("KERNEL source=cudaGetFuncBySymbol (cuModuleLoadData of PTX failed: %s)\n", en ? en : "?");
    cudaFunction_t f;
    RT(cudaGetFuncBySymbol(&f, (const void *)gvm_bench_empty_rt));
    fn = (CUfunction)f;
  }
  CUstream s;
  CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  cudaStream_t rs = (cudaStream_t)s;

  auto drv_launch = [&]() { CK(cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, s, nullptr, nullptr)); };
  auto rt_launch = [&]() {
    gvm_bench_empty_rt<<<1, 1, 0, rs>>>();
  };

  // graph of one kernel, captured on the stream
  CUgraphExec gexec = nullptr;
  if (want("graph")) {
    CUgraph graph;
    CK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    drv_launch();
    CK(cuStreamEndCapture(s, &graph));
    CK(cuGraphInstantiate(&gexec, graph, 0));
    CK(cuGraphUpload(gexec, s));
    CK(cuGraphDestroy(graph));
  }

  // warm-up: load lazily loaded code, fill caches
  for (int i = 0; i < 2000; i++) drv_launch();
  if (want("runtime")) {
    for (int i = 0; i < 2000; i++) rt_launch();
    RT(cudaGetLastError());
  }
  if (gexec)
    for (int i = 0; i < 200; i++) CK(cuGraphLaunch(gexec, s));
  CK(cuStreamSynchronize(s));

  Stats drv_submit, drv_total, drv_burst, rt_submit, rt_total, g_submit, g_total;
  long gn = std::max(10L, n / 10);
  for (int r = 0; r < reps; r++) {
    if (want("driver")) {
      double t0 = now_ns();
      for (long i = 0; i < n; i++) drv_launch();
      double t1 = now_ns();
      CK(cuStreamSynchronize(s));
      double t2 = now_ns();
      drv_submit.add((t1 - t0) / n);
      drv_total.add((t2 - t0) / n);

      double sum = 0;
      for (long done = 0; done < n; done += burst) {
        long k = std::min(burst, n - done);
        double b0 = now_ns();
        for (long i = 0; i < k; i++) drv_launch();
        sum += now_ns() - b0;
        CK(cuStreamSynchronize(s));
      }
      drv_burst.add(sum / n);
    }
    if (want("runtime")) {
      double t0 = now_ns();
      for (long i = 0; i < n; i++) rt_launch();
      double t1 = now_ns();
      RT(cudaStreamSynchronize(rs));
      double t2 = now_ns();
      RT(cudaGetLastError());
      rt_submit.add((t1 - t0) / n);
      rt_total.add((t2 - t0) / n);
    }
    if (gexec) {
      double t0 = now_ns();
      for (long i = 0; i < gn; i++) CK(cuGraphLaunch(gexec, s));
      double t1 = now_ns();
      CK(cuStreamSynchronize(s));
      double t2 = now_ns();
      g_submit.add((t1 - t0) / gn);
      g_total.add((t2 - t0) / gn);
    }
  }

  auto print = [&](const char *v, const Stats &st, long count) {
    if (st.v.empty()) return;
    printf("RESULT variant=%s ns=%.1f min=%.1f max=%.1f reps=%zu n=%ld\n", v, st.median(), st.min(),
           st.max(), st.v.size(), count);
  };
  print("driver_submit", drv_submit, n);
  print("driver_total", drv_total, n);
  print("driver_burst", drv_burst, n);
  print("runtime_submit", rt_submit, n);
  print("runtime_total", rt_total, n);
  print("graph_submit", g_submit, gn);
  print("graph_total", g_total, gn);

  if (gexec) CK(cuGraphExecDestroy(gexec));
  CK(cuStreamDestroy(s));
  if (lr == CUDA_SUCCESS) CK(cuModuleUnload(mod));
  printf("DONE\n");
  return 0;
}
