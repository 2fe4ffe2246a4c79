/*
 * Liveness that holds across PID namespaces and pid reuse: the agent keeps an OFD write lock on one
 * byte of a shared file (its control block, its policy-board slot) for as long as it lives. The kernel
 * drops the lock however the process dies, and any process that opens the file can test it.
 *
 * A child forked while such a file is open but not yet recorded would keep an unrecorded reference to
 * the open file, and with it the lock after we die. gvm_fork_window_enter/leave bracket the span from
 * the open until the descriptor and mapping are recorded; fork() waits for it to close.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>

#include "agent.h"

static pthread_mutex_t fork_window = PTHREAD_MUTEX_INITIALIZER;

void gvm_fork_window_enter(void) { pthread_mutex_lock(&fork_window); }
void gvm_fork_window_leave(void) { pthread_mutex_unlock(&fork_window); }

__attribute__((constructor)) static void owner_lock_load(void) {
  pthread_atfork(gvm_fork_window_enter, gvm_fork_window_leave, gvm_fork_window_leave);
}

int gvm_owner_lock(int fd, off_t at, bool lock) {
  struct flock l = {.l_type = lock ? F_WRLCK : F_UNLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
  return fd >= 0 && fcntl(fd, F_OFD_SETLK, &l) == 0 ? 0 : (fd < 0 ? EBADF : errno);
}

int gvm_owner_alive(int fd, off_t at) {
  struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
  if (fd < 0 || fcntl(fd, F_OFD_GETLK, &l) != 0) return -1;
  return l.l_type != F_UNLCK;
}
