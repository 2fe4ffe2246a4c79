/*
 * gvm-make-block: writes a control block file for the addon and CLI tests, and can stand in for the
 * agent's control thread. Test-only; never shipped.
 *
 *   gvm-make-block PATH [FIELD=VALUE ...] [--serve]
 *
 * Header fields: pid uid start_time created_unix_ms heartbeat_ns state gpu_count driver flags pid_ns
 *   agent_version cmdline magic major minor size gpu_block_size truncate (file length) mode (octal)
 * GPU fields, prefixed gpuN. (N = 0..15): present ordinal uuid (32 hex digits) pci name total limit
 *   mode priority frozen contexts current swap peak managed host submitted ended allocs frees
 *   failures updated_ns rm_seq rm_fd rm_client rm_device rm_subdevice
 *   tsgK=handle:engine:channels:parent:timeslice_us   chK=handle:tsg:class_id (counts follow K)
 *
 * --serve: answer commands like the agent would, until SIGTERM. Prints "ready" once waiting.
 *   PING -> OK; MEMORY_LIMIT -> stores value in gpu[gpu].memory_limit, OK;
 *   COMPUTE_PRIORITY with value > 15 -> INVALID "priority V out of range 0..15", else stores it, OK;
 *   COMPUTE_FREEZE -> UNSUPPORTED; gpu not present -> NO_GPU; anything else -> INVALID.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gvm/control_block.h"

static volatile sig_atomic_t stop_requested;

static void on_term(int sig) {
  (void)sig;
  stop_requested = 1;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("gvm-make-block: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static uint64_t num(const char *key, const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || end == s || *end != '\0') die("%s: bad number '%s'", key, s);
  return v;
}

static void copy_str(char *dst, size_t cap, const char *src) {
  memset(dst, 0, cap);
  strncpy(dst, src, cap - 1);
}

static void parse_uuid(uint8_t out[16], const char *s) {
  size_t n = 0;
  if (strncmp(s, "GPU-", 4) == 0) s += 4;
  for (const char *p = s; *p != '\0' && n < 32; p++) {
    if (*p == '-') continue;
    char hex[3] = {p[0], p[1], 0};
    if (p[1] == '\0') die("uuid: odd number of digits");
    out[n / 2] = (uint8_t)strtoul(hex, NULL, 16);
    n += 2;
    p++;
  }
  if (n != 32) die("uuid: need 32 hex digits");
}

static void set_gpu(struct gvm_gpu_block *g, const char *key, const char *val) {
  unsigned k;
  if (strcmp(key, "present") == 0) g->present = (uint32_t)num(key, val);
  else if (strcmp(key, "ordinal") == 0) g->ordinal = (int32_t)strtol(val, NULL, 0);
  else if (strcmp(key, "uuid") == 0) parse_uuid(g->uuid, val);
  else if (strcmp(key, "pci") == 0) copy_str(g->pci_bus_id, sizeof g->pci_bus_id, val);
  else if (strcmp(key, "name") == 0) copy_str(g->name, sizeof g->name, val);
  else if (strcmp(key, "total") == 0) g->total_bytes = num(key, val);
  else if (strcmp(key, "limit") == 0) g->memory_limit = num(key, val);
  else if (strcmp(key, "mode") == 0) g->memory_mode = (uint32_t)num(key, val);
  else if (strcmp(key, "priority") == 0) g->priority = (int32_t)num(key, val);
  else if (strcmp(key, "frozen") == 0) g->frozen = (uint32_t)num(key, val);
  else if (strcmp(key, "contexts") == 0) g->contexts = (uint32_t)num(key, val);
  else if (strcmp(key, "current") == 0) g->memory_current = num(key, val);
  else if (strcmp(key, "swap") == 0) g->memory_swap_current = num(key, val);
  else if (strcmp(key, "peak") == 0) g->memory_peak = num(key, val);
  else if (strcmp(key, "managed") == 0) g->managed_bytes = num(key, val);
  else if (strcmp(key, "host") == 0) g->host_bytes = num(key, val);
  else if (strcmp(key, "submitted") == 0) g->kernels_submitted = num(key, val);
  else if (strcmp(key, "ended") == 0) g->kernels_ended = num(key, val);
  else if (strcmp(key, "allocs") == 0) g->alloc_count = num(key, val);
  else if (strcmp(key, "frees") == 0) g->free_count = num(key, val);
  else if (strcmp(key, "failures") == 0) g->alloc_failures = num(key, val);
  else if (strcmp(key, "updated_ns") == 0) g->updated_ns = num(key, val);
  else if (strcmp(key, "rm_seq") == 0) g->rm_seq = (uint32_t)num(key, val);
  else if (strcmp(key, "rm_fd") == 0) g->rm_fd = (int32_t)strtol(val, NULL, 0);
  else if (strcmp(key, "rm_client") == 0) g->rm_client = (uint32_t)num(key, val);
  else if (strcmp(key, "rm_device") == 0) g->rm_device = (uint32_t)num(key, val);
  else if (strcmp(key, "rm_subdevice") == 0) g->rm_subdevice = (uint32_t)num(key, val);
  else if (sscanf(key, "tsg%u", &k) == 1 && k < GVM_MAX_TSGS) {
    struct gvm_tsg_info *t = &g->tsg[k];
    unsigned long long ts = 0;
    if (sscanf(val, "%i:%i:%i:%i:%lli", (int *)&t->handle, (int *)&t->engine_type, (int *)&t->channel_count,
               (int *)&t->parent, (long long *)&ts) < 4)
      die("%s: want handle:engine:channels:parent[:timeslice]", key);
    t->timeslice_us = ts;
    if (g->tsg_count < k + 1) g->tsg_count = k + 1;
  } else if (sscanf(key, "ch%u", &k) == 1 && k < GVM_MAX_CHANNELS) {
    struct gvm_channel_info *c = &g->channel[k];
    if (sscanf(val, "%i:%i:%i", (int *)&c->handle, (int *)&c->tsg, (int *)&c->class_id) != 3)
      die("%s: want handle:tsg:class", key);
    if (g->channel_count < k + 1) g->channel_count = k + 1;
  } else die("unknown gpu field '%s'", key);
}

static void set_field(struct gvm_control_block *cb, const char *key, const char *val, long long *truncate_to,
                      mode_t *mode) {
  unsigned gi;
  int off = 0;
  if (sscanf(key, "gpu%u.%n", &gi, &off) == 1 && off > 0) {
    if (gi >= GVM_MAX_GPUS) die("gpu index %u out of range", gi);
    set_gpu(&cb->gpu[gi], key + off, val);
  } else if (strcmp(key, "pid") == 0) cb->pid = (int32_t)num(key, val);
  else if (strcmp(key, "uid") == 0) cb->uid = (uint32_t)num(key, val);
  else if (strcmp(key, "start_time") == 0) cb->start_time = num(key, val);
  else if (strcmp(key, "created_unix_ms") == 0) cb->created_unix_ms = num(key, val);
  else if (strcmp(key, "heartbeat_ns") == 0) cb->heartbeat_ns = num(key, val);
  else if (strcmp(key, "state") == 0) cb->agent_state = (uint32_t)num(key, val);
  else if (strcmp(key, "gpu_count") == 0) cb->gpu_count = (uint32_t)num(key, val);
  else if (strcmp(key, "driver") == 0) cb->driver_version = (uint32_t)num(key, val);
  else if (strcmp(key, "flags") == 0) cb->flags = (uint32_t)num(key, val);
  else if (strcmp(key, "backend") == 0) cb->backend = (uint32_t)num(key, val);
  else if (strcmp(key, "pid_ns") == 0) cb->pid_ns = (uint64_t)num(key, val);
  else if (strcmp(key, "agent_version") == 0) copy_str(cb->agent_version, sizeof cb->agent_version, val);
  else if (strcmp(key, "cmdline") == 0) copy_str(cb->cmdline, sizeof cb->cmdline, val);
  else if (strcmp(key, "magic") == 0) cb->magic = (uint32_t)num(key, val);
  else if (strcmp(key, "major") == 0) cb->version_major = (uint16_t)num(key, val);
  else if (strcmp(key, "minor") == 0) cb->version_minor = (uint16_t)num(key, val);
  else if (strcmp(key, "size") == 0) cb->size = (uint32_t)num(key, val);
  else if (strcmp(key, "gpu_block_size") == 0) cb->gpu_block_size = (uint32_t)num(key, val);
  else if (strcmp(key, "truncate") == 0) *truncate_to = (long long)num(key, val);
  else if (strcmp(key, "mode") == 0) *mode = (mode_t)strtoul(val, NULL, 8);
  else die("unknown field '%s'", key);
}

static long futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
  return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static void answer(struct gvm_control_block *cb, int32_t status, const char *fmt, ...) {
  struct gvm_command *cmd = &cb->command;
  char msg[GVM_MESSAGE_MAX];
  memset(msg, 0, sizeof msg);
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
  }
  memcpy(cmd->message, msg, sizeof msg);
  GVM_STORE(&cmd->status, status);
}

static void apply(struct gvm_control_block *cb) {
  struct gvm_command *cmd = &cb->command;
  uint32_t key = GVM_LOAD(&cmd->key);
  uint32_t gpu = GVM_LOAD(&cmd->gpu);
  uint64_t value = GVM_LOAD(&cmd->value);
  if (key == GVM_KEY_PING) {
    answer(cb, GVM_STATUS_OK, NULL);
    return;
  }
  if (gpu >= GVM_MAX_GPUS || !GVM_LOAD(&cb->gpu[gpu].present)) {
    answer(cb, GVM_STATUS_NO_GPU, "no GPU %u in this process", gpu);
    return;
  }
  struct gvm_gpu_block *g = &cb->gpu[gpu];
  switch (key) {
    case GVM_KEY_MEMORY_LIMIT:
      GVM_STORE(&g->memory_limit, value);
      answer(cb, GVM_STATUS_OK, NULL);
      break;
    case GVM_KEY_COMPUTE_PRIORITY:
      if (value > 15) {
        answer(cb, GVM_STATUS_INVALID, "priority %llu out of range 0..15", (unsigned long long)value);
      } else {
        GVM_STORE(&g->priority, (int32_t)value);
        answer(cb, GVM_STATUS_OK, NULL);
      }
      break;
    case GVM_KEY_COMPUTE_FREEZE:
      answer(cb, GVM_STATUS_UNSUPPORTED, "freeze is not supported by this agent");
      break;
    default:
      answer(cb, GVM_STATUS_INVALID, "unknown key %u", key);
      break;
  }
}

static int serve(struct gvm_control_block *cb) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL); /* no SA_RESTART: the futex wait returns EINTR */
  sigaction(SIGINT, &sa, NULL);
  struct gvm_command *cmd = &cb->command;
  printf("ready\n");
  fflush(stdout);
  while (!stop_requested) {
    uint32_t seq = GVM_LOAD(&cmd->seq);
    if (seq != GVM_LOAD(&cmd->applied_seq)) {
      apply(cb);
      GVM_STORE(&cmd->applied_seq, seq);
      futex(&cmd->applied_seq, FUTEX_WAKE, INT_MAX, NULL);
      continue;
    }
    struct timespec ts = {1, 0};
    futex(&cmd->seq, FUTEX_WAIT, seq, &ts);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) die("usage: gvm-make-block PATH [FIELD=VALUE ...] [--serve]");
  const char *path = argv[1];
  struct gvm_control_block *cb = calloc(1, sizeof *cb);
  if (cb == NULL) die("out of memory");
  cb->magic = GVM_CB_MAGIC;
  cb->version_major = GVM_CB_VERSION_MAJOR;
  cb->version_minor = GVM_CB_VERSION_MINOR;
  cb->size = sizeof *cb;
  cb->gpu_block_size = sizeof(struct gvm_gpu_block);
  cb->pid = (int32_t)getppid();
  cb->uid = (uint32_t)getuid();
  cb->agent_state = GVM_AGENT_READY;
  cb->driver_version = 13000;
  copy_str(cb->agent_version, sizeof cb->agent_version, "make-block");
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  cb->created_unix_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
  for (int i = 0; i < GVM_MAX_GPUS; i++) cb->gpu[i].ordinal = i;

  int do_serve = 0;
  long long truncate_to = -1;
  mode_t mode = 0600;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--serve") == 0) {
      do_serve = 1;
      continue;
    }
    char *eq = strchr(argv[i], '=');
    if (eq == NULL) die("expected FIELD=VALUE, got '%s'", argv[i]);
    *eq = '\0';
    set_field(cb, argv[i], eq + 1, &truncate_to, &mode);
  }

  /* Write to a temporary name and rename, like an agent should, so readers never see half a block. */
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
  int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) die("open %s: %s", tmp, strerror(errno));
  fchmod(fd, mode);
  size_t len = truncate_to >= 0 ? (size_t)truncate_to : sizeof *cb;
  size_t n = len < sizeof *cb ? len : sizeof *cb;
  if (write(fd, cb, n) != (ssize_t)n) die("write %s: %s", tmp, strerror(errno));
  if (ftruncate(fd, (off_t)len) != 0) die("ftruncate %s: %s", tmp, strerror(errno));
  if (rename(tmp, path) != 0) die("rename %s: %s", path, strerror(errno));
  free(cb);
  if (!do_serve) {
    close(fd);
    return 0;
  }
  if (len < sizeof *cb) die("--serve needs a full-size block");
  void *map = mmap(NULL, sizeof *cb, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) die("mmap %s: %s", path, strerror(errno));
  close(fd);
  return serve(map);
}
