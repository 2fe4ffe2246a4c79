// The controller's side of a command round trip through a control block (see gvm_command in
// include/gvm/control_block.h). Plain C++, no N-API: the addon's worker threads and the FUSE tree's
// threads both call it.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "gvm/control_block.h"

namespace gvm {

// The command "baton": everything the worker thread touches. No N-API inside.
struct CommandBaton {
  // inputs
  struct gvm_control_block* cb = nullptr;
  int fd = -1;
  std::timed_mutex* handleLock = nullptr;  // flock does not serialise commands sharing one fd
  uint32_t key = 0;
  uint32_t gpu = 0;
  uint64_t value = 0;
  int64_t timeoutMs = 0;
  // optional: asked every 50 ms while waiting for the answer; false ends the wait (gone = true), so a
  // process that exits mid-command is reported at once instead of at the timeout
  std::function<bool()> stillThere;
  // outputs
  int32_t status = GVM_STATUS_OK;
  uint32_t seq = 0;
  std::string message;
  bool gone = false;  // stillThere() said the process went away before answering
  int err = 0;  // errno of a failed system call (then errWhat names it)
  const char* errWhat = nullptr;
};

// Serialises with other controllers (flock), fills the mailbox, wakes the agent and waits for its
// answer or the timeout. Never throws.
void RunCommand(CommandBaton* b);

int64_t MonotonicMs();
void SleepMs(int64_t ms);

}  // namespace gvm
