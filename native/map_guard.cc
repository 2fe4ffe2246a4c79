// See map_guard.h. The table is lock-free: the SIGBUS handler reads it, and may run on any thread at
// any time, including while a slot is being filled.
#include "map_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace gvm {
namespace {

constexpr int kSlots = 4096;

struct Slot {
  std::atomic<uintptr_t> start{0};  // 0: free; set last when filling, cleared first when freeing
  std::atomic<size_t> length{0};
  std::atomic<int> truncated{0};
};

Slot g_slots[kSlots];
struct sigaction g_previous;
uintptr_t g_pageMask;
std::once_flag g_installed;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  // si_code > 0: raised by the kernel for an access (si_addr is the address). <= 0: kill(),
  // sigqueue() or tgkill(): nothing faulted and si_addr is the sender's pid/uid (or its own data).
  const bool fault = info != nullptr && info->si_code > 0;
  const uintptr_t at = fault ? reinterpret_cast<uintptr_t>(info->si_addr) : 0;
  for (Slot& s : g_slots) {
    if (!fault) break;
    const uintptr_t start = s.start.load(std::memory_order_acquire);
    const size_t length = s.length.load(std::memory_order_relaxed);
    if (start == 0 || at < start || at >= start + length) continue;
    const uintptr_t page = at & g_pageMask;
    // the file ends before this page now: what was past its end reads as zeros from here on
    void* r = mmap(reinterpret_cast<void*>(page), start + length - page, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r != MAP_FAILED) {
      s.truncated.store(1, std::memory_order_release);
      return;  // the access runs again, on the zero page
    }
    break;
  }
  // not one of ours: what would have happened without us
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
  } else if (fault) {
    sigaction(SIGBUS, &g_previous, nullptr);  // the access runs again and gets the default action
  } else if (g_previous.sa_handler == SIG_DFL) {
    // a sent signal does not come again by returning: deliver it with the default action (core)
    sigaction(SIGBUS, &g_previous, nullptr);
    raise(sig);
  }  // SIG_IGN and sent: ignored, as it would have been, and the guard stays
}

void Install() {
  g_pageMask = ~(static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) - 1);
  struct sigaction sa {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_previous);
}

}  // namespace

int GuardMapping(void* addr, size_t length) {
  std::call_once(g_installed, Install);
  for (int i = 0; i < kSlots; i++) {
    size_t expected = 0;
    // a slot is claimed through its length, then published through its start
    if (!g_slots[i].length.compare_exchange_strong(expected, length, std::memory_order_acq_rel)) continue;
    g_slots[i].truncated.store(0, std::memory_order_relaxed);
    g_slots[i].start.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_release);
    return i;
  }
  return -1;
}

void UnguardMapping(int slot) {
  if (slot < 0 || slot >= kSlots) return;
  g_slots[slot].start.store(0, std::memory_order_release);
  g_slots[slot].length.store(0, std::memory_order_release);
}

bool MappingTruncated(int slot) {
  return slot >= 0 && slot < kSlots && g_slots[slot].truncated.load(std::memory_order_acquire) != 0;
}

}  // namespace gvm
