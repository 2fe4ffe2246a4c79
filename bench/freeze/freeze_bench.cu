// bench/freeze: freeze and thaw latency of a process under the gvm agent, measured from inside it.
// A kernel bumps a counter in host-mapped memory; another thread sends compute.freeze through the
// process's own control block (the same mailbox gvm and gvmd use) and watches the counter:
//   freeze latency = command issued -> last counter change; thaw latency = command -> first change.
// Also checks a frozen kernel makes zero progress and that the work's result is unchanged.
// Build: nvcc -O2 -arch=sm_90 -I include bench/freeze/freeze_bench.cu -o freeze_bench -lcuda
// Run:   LD_PRELOAD=build/Release/libgvm.so ./freeze_bench [cycles] [json-out]
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <algorithm>
#include <thread>
#include <vector>

#include "gvm/self_command.h"

// runs until the host sets *stop, so frozen time never eats into its budget
__global__ void bump(volatile unsigned long long *counter, volatile int *stop, unsigned long long *out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  unsigned long long n = 0;
  while (!*stop) {
    *counter = ++n;
    __threadfence_system();
  }
  *out = n;
}

static double now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static gvm_self self;
static gvm_control_block *cb;

// the settings a run compared (printed into its JSON; an A/B's two files then say which is which)
static const char *env_or_empty(const char *name) {
  const char *v = getenv(name);
  return v && strlen(v) < 32 && !strpbrk(v, "\"\\") ? v : "";
}

static int command(uint32_t key, uint64_t value, char *msg) {
  int st = gvm_self_command(&self, key, 0, value, 60000, msg, GVM_MESSAGE_MAX);
  if (st < 0) {
    printf("FAIL no answer to a command in 60 s\n");
    exit(1);
  }
  return st;
}

static double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, (size_t)(p * v.size()))];
}

int main(int argc, char **argv) {
  int cycles = argc > 1 ? atoi(argv[1]) : 100;
  const char *json = argc > 2 ? argv[2] : NULL;
  cudaSetDevice(0);
  cudaFree(0);
  if (gvm_self_open(&self) != 0) {
    printf("no control block: run under the gvm agent\n");
    return 2;
  }
  cb = self.cb;
  volatile unsigned long long *counter;
  unsigned long long *out;
  volatile int *stop;
  cudaError_t setup = cudaHostAlloc((void **)&counter, 64, cudaHostAllocMapped);
  if (setup == cudaSuccess) setup = cudaHostAlloc((void **)&stop, 64, cudaHostAllocMapped);
  if (setup == cudaSuccess) setup = cudaMalloc(&out, 8);
  if (setup != cudaSuccess) {
    printf("FAIL setting up the counters: %s\n", cudaGetErrorString(setup));
    return 2;
  }
  char msg[GVM_MESSAGE_MAX];
  int failures = 0;

  // priority: timeslice read back on every TSG
  for (int p : {15, 0, 8}) {
    int st = command(GVM_KEY_COMPUTE_PRIORITY, p, msg);
    uint64_t want = 524288ull >> p;
    bool all = cb->gpu[0].tsg_count > 0;
    for (uint32_t i = 0; i < cb->gpu[0].tsg_count; i++) all &= cb->gpu[0].tsg[i].timeslice_us == want;
    printf("%s priority %d -> status %d (%s); TSG timeslices read back %s %llu us\n", (st == 0 && all) ? "ok  " : "FAIL",
           p, st, msg, all ? "all" : "NOT all", (unsigned long long)want);
    failures += !(st == 0 && all);
  }

  std::vector<double> freeze_us, thaw_us, cmd_freeze_us, cmd_thaw_us, rm_freeze_us, rm_thaw_us;
  // the agent's answer ends with the RM controls' own time ("... in 0.45 ms"): delivery vs driver.
  // The last " in ": a freeze says how it stopped first ("disabled and preempted in one control").
  auto rm_time_us = [](const char *m, std::vector<double> &into) {
    const char *at = nullptr;
    for (const char *p = strstr(m, " in "); p; p = strstr(p + 1, " in ")) at = p;
    if (at) into.push_back(atof(at + 4) * 1e3);
  };
  *stop = 0;
  *counter = 0;
  bump<<<1, 32>>>(counter, stop, out);
  while (*counter == 0) {}
  // Sends compute.freeze = value from another thread while `watch` runs here from the moment it goes
  // out: the GPU stops (or runs again) once the agent's RM control returns, before its answer wakes
  // the sender. Returns false (and counts a failure) when the agent refused.
  struct Sent {
    double issued, answered;
  };
  auto send_watching = [&](unsigned value, auto watch, Sent &sent) {
    int st = -1;
    sent = {now_us(), 0};
    std::thread sender([&] {
      st = command(GVM_KEY_COMPUTE_FREEZE, value, msg);
      sent.answered = now_us();
    });
    watch(sent.issued);
    sender.join();
    if (st == 0) return true;
    printf("FAIL %s status %d: %s\n", value ? "freeze" : "thaw", st, msg);
    failures++;
    return false;
  };
  int zero_progress_violations = 0;
  for (int i = 0; i < cycles; i++) {
    usleep(10000);
    Sent sent;
    double last_change = 0;
    bool ok = send_watching(1, [&](double t0) {
      unsigned long long last = *counter;
      last_change = t0;
      while (now_us() - t0 < 25000) {
        unsigned long long v = *counter;
        if (v != last) {
          last = v;
          last_change = now_us();
        }
      }
    }, sent);
    if (!ok) break;
    rm_time_us(msg, rm_freeze_us);
    freeze_us.push_back(last_change - sent.issued);
    cmd_freeze_us.push_back(sent.answered - sent.issued);
    unsigned long long frozen_at = *counter;
    usleep(20000);
    if (*counter != frozen_at) zero_progress_violations++;
    double first_change = 0;
    ok = send_watching(0, [&](double t0) {
      while (*counter == frozen_at && now_us() - t0 < 1e6) {}
      first_change = now_us();
    }, sent);
    if (!ok) break;
    rm_time_us(msg, rm_thaw_us);
    thaw_us.push_back(first_change - sent.issued);
    cmd_thaw_us.push_back(sent.answered - sent.issued);
  }
  *stop = 1;
  cudaError_t e = cudaDeviceSynchronize();
  unsigned long long n = 0;
  cudaMemcpy(&n, out, 8, cudaMemcpyDeviceToHost);
  bool result_ok = e == cudaSuccess && n == *counter && n > 0;
  printf("%s kernel finished after %d freeze/thaw cycles: %s, its count %llu matches the host view %llu\n",
         result_ok ? "ok  " : "FAIL", cycles, cudaGetErrorString(e), n, *counter);
  printf("%s frozen kernel made no progress in %d of %d 20 ms frozen windows\n", zero_progress_violations ? "FAIL" : "ok  ",
         cycles - zero_progress_violations, cycles);
  failures += !result_ok + (zero_progress_violations > 0);
  double f99 = pct(freeze_us, 0.99), t99 = pct(thaw_us, 0.99);
  printf("\n| metric (%d cycles) | p50 | p99 | max | target |\n|---|---|---|---|---|\n", cycles);
  printf("| freeze: command -> GPU stopped (ms) | %.3f | %.3f | %.3f | <= 2 |\n", pct(freeze_us, .5) / 1e3, f99 / 1e3,
         pct(freeze_us, 1) / 1e3);
  printf("| thaw: command -> GPU progressing (ms) | %.3f | %.3f | %.3f | <= 1 |\n", pct(thaw_us, .5) / 1e3, t99 / 1e3,
         pct(thaw_us, 1) / 1e3);
  printf("| freeze command round trip (ms) | %.3f | %.3f | %.3f | <= 2 |\n", pct(cmd_freeze_us, .5) / 1e3,
         pct(cmd_freeze_us, .99) / 1e3, pct(cmd_freeze_us, 1) / 1e3);
  printf("| thaw command round trip (ms) | %.3f | %.3f | %.3f | |\n", pct(cmd_thaw_us, .5) / 1e3,
         pct(cmd_thaw_us, .99) / 1e3, pct(cmd_thaw_us, 1) / 1e3);
  printf("| freeze: the RM controls alone (ms) | %.3f | %.3f | %.3f | |\n", pct(rm_freeze_us, .5) / 1e3,
         pct(rm_freeze_us, .99) / 1e3, pct(rm_freeze_us, 1) / 1e3);
  printf("| thaw: the RM control alone (ms) | %.3f | %.3f | %.3f | |\n", pct(rm_thaw_us, .5) / 1e3,
         pct(rm_thaw_us, .99) / 1e3, pct(rm_thaw_us, 1) / 1e3);
  if (json) {
    FILE *f = fopen(json, "w");
    if (f) {
      fprintf(f, "{\"cycles\":%d,\"freeze_ms\":{\"p50\":%.4f,\"p99\":%.4f},\"thaw_ms\":{\"p50\":%.4f,\"p99\":%.4f},"
                 "\"freeze_cmd_ms\":{\"p50\":%.4f,\"p99\":%.4f},\"thaw_cmd_ms\":{\"p50\":%.4f,\"p99\":%.4f},"
                 "\"rm_freeze_ms\":{\"p50\":%.4f,\"p99\":%.4f},\"rm_thaw_ms\":{\"p50\":%.4f,\"p99\":%.4f},"
                 "\"zero_progress_violations\":%d,\"result_ok\":%s,\"mode\":%u,"
                 "\"env\":{\"GVM_RM_STOP\":\"%s\",\"GVM_RM_THAW\":\"%s\",\"GVM_COMMAND_SPIN_US\":\"%s\"}}\n",
              cycles, pct(freeze_us, .5) / 1e3, f99 / 1e3, pct(thaw_us, .5) / 1e3, t99 / 1e3, pct(cmd_freeze_us, .5) / 1e3,
              pct(cmd_freeze_us, .99) / 1e3, pct(cmd_thaw_us, .5) / 1e3, pct(cmd_thaw_us, .99) / 1e3,
              pct(rm_freeze_us, .5) / 1e3, pct(rm_freeze_us, .99) / 1e3, pct(rm_thaw_us, .5) / 1e3,
              pct(rm_thaw_us, .99) / 1e3, zero_progress_violations, result_ok ? "true" : "false", cb->gpu[0].control_mode,
              env_or_empty("GVM_RM_STOP"), env_or_empty("GVM_RM_THAW"), env_or_empty("GVM_COMMAND_SPIN_US"));
      fclose(f);
    }
  }
  printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
