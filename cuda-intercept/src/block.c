/*
 * The process's control block file: created under the shm dir once the driver is up, filled, then
 * renamed into place so a reader never sees a half-written block; removed at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#ifndef GVM_VERSION_STRING
#define GVM_VERSION_STRING "0.1.0"
#endif

struct gvm_control_block *gvm_block;
static char block_path[320];
static pid_t block_owner;
static int block_fd = -1; /* holds the owner lock (GVM_CB_FLAG_OWNER_LOCK) for the process's life */
static void *block_map;   /* our mapping of it: a reference to the same open file, so to the lock */

/* The inode of our PID namespace (what readlink /proc/self/ns/pid shows); 0 if unknown. */
static uint64_t self_pid_ns(void) {
  struct stat st;
  return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static uint64_t self_start_time(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  /* the command name may contain spaces and parentheses: fields resume after the last ')' */
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  p += 2; /* field 3 */
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  return p ? strtoull(p, NULL, 10) : 0;
}

static void self_cmdline(char *out, size_t n) {
  int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t len = read(fd, out, n - 1);
  close(fd);
  if (len <= 0) return;
  for (ssize_t i = 0; i < len; i++)
    if (out[i] == 0) out[i] = ' ';
  while (len > 0 && out[len - 1] == ' ') len--;
  out[len] = 0;
}

static int ensure_dir(const char *dir) {
  if (mkdir(dir, 01777) == 0) {
    /* the umask trimmed the mode: every user must be able to create a block, none remove another's */
    if (chmod(dir, 01777) != 0) gvm_log(GVM_LOG_WARN, "chmod %s: %s", dir, strerror(errno));
    return 0;
  }
  if (errno != EEXIST) return -1;
  struct stat st;
  if (lstat(dir, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* what a failure here means for the user: said in the one warning, which is all they will see */
#define UNCONTROLLED "this process runs without gvm's control (no memory limit, priority or freeze)"

struct gvm_control_block *gvm_block_create(void) {
  const char *dir = gvm_config.shm_dir;
  if (ensure_dir(dir) != 0) {
    gvm_log(GVM_LOG_WARN, "cannot use %s (%s); " UNCONTROLLED, dir, strerror(errno));
    return NULL;
  }
  pid_t pid = getpid();
  uint64_t ns = self_pid_ns();
  /* in a container, pids repeat across the containers that share the directory: the name says whose */
  char name[48];
  if (ns && ns != GVM_INIT_PID_NS) snprintf(name, sizeof name, "%d@%llu", (int)pid, (unsigned long long)ns);
  else snprintf(name, sizeof name, "%d", (int)pid);
  char tmp[320];
  if ((size_t)snprintf(block_path, sizeof block_path, "%s/%s", dir, name) >= sizeof block_path ||
      (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= sizeof tmp) {
    gvm_log(GVM_LOG_WARN, "GVM_SHM_DIR too long; " UNCONTROLLED);
    return NULL;
  }
  unlink(tmp); /* a leftover of an earlier process with our pid and uid; fails harmlessly otherwise */
  gvm_fork_window_enter();
  int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    gvm_fork_window_leave();
    gvm_log(GVM_LOG_WARN, "cannot create %s: %s; " UNCONTROLLED, tmp, strerror(errno));
    return NULL;
  }
  size_t size = sizeof(struct gvm_control_block);
  /* reserve the pages now: on a full /dev/shm a lazily backed mapping would SIGBUS us later */
  int err = posix_fallocate(fd, 0, (off_t)size);
  if (err != 0 && ftruncate(fd, (off_t)size) == 0 && err != ENOSPC) err = 0; /* fs without fallocate */
  if (err != 0) {
    close(fd);
    gvm_fork_window_leave();
    gvm_log(GVM_LOG_WARN, "cannot size %s: %s; " UNCONTROLLED, tmp, strerror(err));
    unlink(tmp);
    return NULL;
  }
  struct gvm_control_block *cb = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (cb == MAP_FAILED) {
    int e = errno;
    close(fd);
    gvm_fork_window_leave();
    gvm_log(GVM_LOG_WARN, "cannot map %s: %s; " UNCONTROLLED, tmp, strerror(e));
    unlink(tmp);
    return NULL;
  }
  /* Liveness that holds across PID namespaces and pid reuse: the kernel drops this lock when the
   * process dies, however it dies, and a reader in any container can test it (F_OFD_GETLK). */
  block_map = cb;
  int e = gvm_owner_lock(fd, 0, true);
  if (e == 0) {
    cb->flags |= GVM_CB_FLAG_OWNER_LOCK;
    block_fd = fd;
    gvm_fork_window_leave();
  } else {
    close(fd);
    gvm_fork_window_leave();
    gvm_log(GVM_LOG_INFO, "no owner lock on %s (%s): readers judge liveness by pid", tmp, strerror(e));
  }
  cb->version_major = GVM_CB_VERSION_MAJOR;
  cb->version_minor = GVM_CB_VERSION_MINOR;
  cb->size = (uint32_t)size;
  cb->gpu_block_size = (uint32_t)sizeof(struct gvm_gpu_block);
  cb->pid = pid;
  cb->pid_ns = ns;
  cb->uid = geteuid();
  cb->start_time = self_start_time();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  cb->created_unix_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  cb->heartbeat_ns = gvm_now_ns();
  cb->agent_state = GVM_AGENT_STARTING;
  snprintf(cb->agent_version, sizeof cb->agent_version, "%s", GVM_VERSION_STRING);
  self_cmdline(cb->cmdline, sizeof cb->cmdline);
  GVM_STORE(&cb->magic, GVM_CB_MAGIC);
  if (rename(tmp, block_path) != 0) {
    gvm_log(GVM_LOG_WARN, "cannot publish %s: %s; " UNCONTROLLED, block_path, strerror(errno));
    gvm_fork_window_enter();
    munmap(cb, size);
    block_map = NULL;
    if (block_fd >= 0) close(block_fd);
    block_fd = -1;
    gvm_fork_window_leave();
    unlink(tmp);
    return NULL;
  }
  block_owner = pid;
  return cb;
}

void gvm_block_remove(void) {
  if (!gvm_block || block_owner != getpid()) return;
  GVM_STORE(&gvm_block->agent_state, (uint32_t)GVM_AGENT_EXITED);
  unlink(block_path);
  /* stay mapped: another thread may still publish a counter while the process exits */
}

void gvm_block_forget(void) {
  /* block_map: also a mapping made just before a fork, not yet in gvm_block */
  if (block_map || gvm_block) munmap(block_map ? block_map : gvm_block, sizeof(struct gvm_control_block));
  block_map = NULL;
  gvm_block = NULL;
  /* a fork child's copy of the parent's descriptor: closing it leaves the parent's lock in place */
  if (block_fd >= 0) close(block_fd);
  block_fd = -1;
  block_path[0] = 0;
  block_owner = 0;
}
