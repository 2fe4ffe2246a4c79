/*
 * A program steering itself: open its own control block (the agent in the process created it) and
 * send a command through the block's mailbox, the protocol every controller uses (flock on the block,
 * bump seq, futex wake, wait until applied_seq catches up). The device checks and benchmarks use it to
 * change their own limit or freeze themselves without a second process. Header-only, C and C++.
 */
#ifndef GVM_SELF_COMMAND_H
#define GVM_SELF_COMMAND_H

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gvm/control_block.h"

struct gvm_self {
  struct gvm_control_block *cb;
  int fd;
};

/* This process's own block file: $GVM_SHM_DIR (or /dev/shm/gvm), then "<pid>", or in a container
 * "<pid>@<pid namespace inode>" (control_block.h). */
static inline void gvm_self_block_path(char *path, size_t room) {
  const char *dir = getenv("GVM_SHM_DIR");
  struct stat ns;
  if (stat("/proc/self/ns/pid", &ns) == 0 && (unsigned long long)ns.st_ino != GVM_INIT_PID_NS)
    snprintf(path, room, "%s/%d@%llu", dir && *dir ? dir : GVM_SHM_DIR, (int)getpid(), (unsigned long long)ns.st_ino);
  else
    snprintf(path, room, "%s/%d", dir && *dir ? dir : GVM_SHM_DIR, (int)getpid());
}

/* Maps this process's own block. 0, or -errno when there is none (not running under the agent). */
static inline int gvm_self_open(struct gvm_self *self) {
  char path[320];
  gvm_self_block_path(path, sizeof path);
  self->cb = NULL;
  self->fd = open(path, O_RDWR | O_CLOEXEC);
  if (self->fd < 0) return -errno;
  void *m = mmap(NULL, sizeof *self->cb, PROT_READ | PROT_WRITE, MAP_SHARED, self->fd, 0);
  if (m == MAP_FAILED) {
    int e = errno;
    close(self->fd);
    self->fd = -1;
    return -e;
  }
  self->cb = (struct gvm_control_block *)m;
  return 0;
}

/* Sends key/value for a GPU and waits for the agent's answer, at most timeout_ms. Returns the
 * agent's status (0 = applied; its message is copied to msg when given), or -1 on timeout. */
static inline int gvm_self_command(struct gvm_self *self, uint32_t key, uint32_t gpu, uint64_t value, int timeout_ms,
                                   char *msg, size_t room) {
  struct gvm_command *c = &self->cb->command;
  flock(self->fd, LOCK_EX); /* one controller at a time: gvm set, gvmd or another thread */
  c->key = key;
  c->gpu = gpu;
  c->value = value;
  uint32_t seq = __atomic_add_fetch(&c->seq, 1, __ATOMIC_RELEASE);
  syscall(SYS_futex, &c->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  int status = -1;
  /* GVM_COMMAND_SPIN_US: poll the answer that long before sleeping on it, so the agent's wake of this
   * thread is not on the path (bench/freeze's A/B of where a slow thaw's delivery time goes) */
  static long spin_us = -1;
  if (spin_us < 0) {
    const char *v = getenv("GVM_COMMAND_SPIN_US");
    spin_us = v && *v ? atol(v) : 0;
  }
  for (long polls = 0; spin_us > 0; polls++) {
    if (__atomic_load_n(&c->applied_seq, __ATOMIC_ACQUIRE) == seq) break;
    if ((polls & 63) == 0) {
      clock_gettime(CLOCK_MONOTONIC, &now);
      if ((now.tv_sec - start.tv_sec) * 1000000 + (now.tv_nsec - start.tv_nsec) / 1000 >= spin_us) break;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  for (;;) {
    uint32_t applied = __atomic_load_n(&c->applied_seq, __ATOMIC_ACQUIRE);
    if (applied == seq) {
      status = (int)c->status;
      if (msg && room) snprintf(msg, room, "%s", c->message);
      break;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    long waited_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (waited_ms >= timeout_ms) break;
    struct timespec ts = {0, 1000000}; /* the agent wakes applied_seq; 1 ms bounds a missed wake */
    syscall(SYS_futex, &c->applied_seq, FUTEX_WAIT, applied, &ts, NULL, 0);
  }
  flock(self->fd, LOCK_UN);
  return status;
}

#endif
