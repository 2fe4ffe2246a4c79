/* The agent's settings, read from the environment once when the library loads. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent.h"

struct gvm_config gvm_config = {
    .log_level = GVM_LOG_WARN, .event_interval_ms = 2, .priority = 8, .policy_idle_ms = 3, .policy_mem_wait_ms = 5000};

static void copy_env(char *dst, size_t n, const char *name, const char *fallback) {
  const char *v = getenv(name);
  if (!v || !*v) v = fallback;
  if (!v) return;
  size_t len = strlen(v);
  if (len >= n) {
    gvm_log(GVM_LOG_WARN, "%s is longer than %zu bytes; ignored", name, n - 1);
    if (fallback) strncpy(dst, fallback, n - 1);
    return;
  }
  memcpy(dst, v, len + 1);
}

static bool parse_u64(const char *name, uint64_t *out) {
  const char *v = getenv(name);
  if (!v || !*v) return false;
  char *end = NULL;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end || v[0] == '-') {
    gvm_log(GVM_LOG_WARN, "%s=%s is not a byte count; ignored", name, v);
    return false;
  }
  *out = x;
  return true;
}

__attribute__((constructor)) static void gvm_config_load(void) {
  const char *d = getenv("GVM_DISABLE");
  gvm_config.disabled = d && *d && strcmp(d, "0") != 0;
  const char *lvl = getenv("GVM_LOG");
  if (lvl) {
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
      if (strcasecmp(lvl, names[i]) == 0) gvm_config.log_level = i;
  }
  uint64_t v;
  if (parse_u64("GVM_EVENT_INTERVAL_MS", &v) && v >= 1 && v <= 1000) gvm_config.event_interval_ms = (int)v;
  if (parse_u64("GVM_MEMORY_LIMIT", &v)) gvm_config.memory_limit = v;
  if (parse_u64("GVM_PRIORITY", &v)) {
    if (v <= 15) gvm_config.priority = (int)v;
    else gvm_log(GVM_LOG_WARN, "GVM_PRIORITY=%llu is outside 0..15; ignored", (unsigned long long)v);
  }
  const char *mode = getenv("GVM_MEMORY_MODE");
  if (mode && strcmp(mode, "swap") == 0) gvm_config.memory_mode = GVM_MEMORY_MODE_SWAP;
  else if (mode && *mode && strcmp(mode, "oom") != 0)
    gvm_log(GVM_LOG_WARN, "GVM_MEMORY_MODE=%s is not oom or swap; using oom", mode);
  const char *klass = getenv("GVM_CLASS");
  if (klass && strcmp(klass, "latency") == 0) gvm_config.policy_class = GVM_CLASS_LATENCY;
  else if (klass && strcmp(klass, "best-effort") == 0) gvm_config.policy_class = GVM_CLASS_BEST_EFFORT;
  else if (klass && *klass && strcmp(klass, "none") != 0)
    gvm_log(GVM_LOG_WARN, "GVM_CLASS=%s is not latency, best-effort or none; ignored", klass);
  if (parse_u64("GVM_POLICY_IDLE_MS", &v)) {
    if (v <= 10000) gvm_config.policy_idle_ms = (int)v;
    else gvm_log(GVM_LOG_WARN, "GVM_POLICY_IDLE_MS=%llu is above 10000; ignored", (unsigned long long)v);
  }
  if (parse_u64("GVM_POLICY_SPIN_US", &v)) {
    if (v <= 10000000) gvm_config.policy_spin_us = (int)v;
    else gvm_log(GVM_LOG_WARN, "GVM_POLICY_SPIN_US=%llu is above 10000000; ignored", (unsigned long long)v);
  }
  if (parse_u64("GVM_POLICY_MEM_WAIT_MS", &v) && v <= 600000) gvm_config.policy_mem_wait_ms = (int)v;
  const char *action = getenv("GVM_POLICY_ACTION");
  if (action && strcmp(action, "throttle") == 0) gvm_config.policy_throttle = true;
  else if (action && *action && strcmp(action, "freeze") != 0)
    gvm_log(GVM_LOG_WARN, "GVM_POLICY_ACTION=%s is not freeze or throttle; using freeze", action);
  copy_env(gvm_config.shm_dir, sizeof gvm_config.shm_dir, "GVM_SHM_DIR", GVM_SHM_DIR);
  copy_env(gvm_config.libcuda, sizeof gvm_config.libcuda, "GVM_LIBCUDA", NULL);
  copy_env(gvm_config.rm_trace, sizeof gvm_config.rm_trace, "GVM_RM_TRACE", NULL);
}
