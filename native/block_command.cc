// The command round trip, shared by the addon's ControlBlock and the FUSE tree.
#include "block_command.h"

#include <linux/futex.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>

namespace gvm {

int64_t MonotonicMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

namespace {

long Futex(uint32_t* addr, int op, uint32_t val, const struct timespec* timeout) {
  // Shared futexes (no FUTEX_PRIVATE_FLAG): the block is MAP_SHARED between processes.
  return syscall(SYS_futex, addr, op, val, timeout, nullptr, 0);
}

}  // namespace

void SleepMs(int64_t ms) {
  struct timespec ts = {static_cast<time_t>(ms / 1000), static_cast<long>((ms % 1000) * 1000000)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void RunCommand(CommandBaton* b) {
  const int64_t deadline = MonotonicMs() + b->timeoutMs;
  struct gvm_command* cmd = &b->cb->command;

  // 0. Commands on this handle share its fd (one flock owner): take turns inside the process first.
  std::unique_lock<std::timed_mutex> handleLock(*b->handleLock, std::defer_lock);
  if (!handleLock.try_lock_for(std::chrono::milliseconds(b->timeoutMs))) {
    b->status = GVM_STATUS_TIMEOUT;
    b->message = "timed out waiting for an earlier command on this handle";
    return;
  }

  // 1. Serialise with other controllers: flock with a timeout (LOCK_NB and short sleeps).
  for (;;) {
    if (flock(b->fd, LOCK_EX | LOCK_NB) == 0) break;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      b->err = errno;
      b->errWhat = "flock";
      return;
    }
    int64_t left = deadline - MonotonicMs();
    if (left <= 0) {
      b->status = GVM_STATUS_TIMEOUT;
      b->message = "timed out waiting for another controller to release the block";
      return;
    }
    SleepMs(left < 2 ? left : 2);
  }

  // 2. Fill the mailbox, publish seq (release), wake the agent's control thread.
  GVM_STORE(&cmd->key, b->key);
  GVM_STORE(&cmd->gpu, b->gpu);
  GVM_STORE(&cmd->value, b->value);
  const uint32_t seq = __atomic_add_fetch(&cmd->seq, 1u, __ATOMIC_ACQ_REL);
  b->seq = seq;
  Futex(&cmd->seq, FUTEX_WAKE, INT_MAX, nullptr);

  // 3. Wait for applied_seq == seq, or the deadline.
  bool answered = false;
  for (;;) {
    uint32_t applied = GVM_LOAD(&cmd->applied_seq);
    if (applied == seq) {
      answered = true;
      break;
    }
    int64_t left = deadline - MonotonicMs();
    if (left <= 0) break;
    if (b->stillThere) {
      if (!b->stillThere()) {
        b->gone = true;
        break;
      }
      if (left > 50) left = 50;
    }
    struct timespec ts = {static_cast<time_t>(left / 1000), static_cast<long>((left % 1000) * 1000000)};
    Futex(&cmd->applied_seq, FUTEX_WAIT, applied, &ts);  // EAGAIN, EINTR, ETIMEDOUT: re-check
  }

  if (answered) {
    b->status = GVM_LOAD(&cmd->status);
    char msg[GVM_MESSAGE_MAX + 1];
    memcpy(msg, cmd->message, GVM_MESSAGE_MAX);
    msg[GVM_MESSAGE_MAX] = '\0';
    b->message.assign(msg, strnlen(msg, GVM_MESSAGE_MAX));
  } else if (b->gone) {
    b->status = GVM_STATUS_NO_GPU;
    b->message = "the process exited before answering";
  } else {
    b->status = GVM_STATUS_TIMEOUT;
    b->message = "the agent did not answer within " + std::to_string(b->timeoutMs) + " ms";
  }
  flock(b->fd, LOCK_UN);
}

}  // namespace gvm
