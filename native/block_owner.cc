// See block_owner.h.
#include "block_owner.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "gvm/control_block.h"

namespace gvm {
namespace {

// A small /proc file, whole; empty when it cannot be read.
std::string ReadProc(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

// /proc/<pid>/status "NSpid:" values: the pid in this namespace first, in its own namespace last.
std::vector<int> NsPids(int pid) {
  std::vector<int> out;
  std::string status = ReadProc("/proc/" + std::to_string(pid) + "/status");
  size_t at = status.find("\nNSpid:");
  if (at == std::string::npos) return out;
  const char* p = status.c_str() + at + 7;
  for (;;) {
    char* end = nullptr;
    long v = strtol(p, &end, 10);
    if (end == p || v <= 0 || v > INT32_MAX) break;
    out.push_back(static_cast<int>(v));
    p = end;
  }
  return out;
}

// /proc/<pid>/stat field 22, 0 when the process is gone.
uint64_t StartTime(int pid) {
  std::string stat = ReadProc("/proc/" + std::to_string(pid) + "/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  const char* p = stat.c_str() + close + 2;  // field 3
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  return p ? strtoull(p, nullptr, 10) : 0;
}

uint64_t NsOf(int pid) {
  struct stat st {};
  std::string path = "/proc/" + std::to_string(pid) + "/ns/pid";
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

std::string NameOf(int pid, uint64_t ns) {
  if (ns == 0 || ns == GVM_INIT_PID_NS) return std::to_string(pid);
  return std::to_string(pid) + "@" + std::to_string(ns);
}

}  // namespace

uint64_t SelfPidNs() {
  static std::atomic<uint64_t> ns{0};  // FUSE threads ask too
  uint64_t v = ns.load(std::memory_order_relaxed);
  if (v == 0) {
    struct stat st {};
    if (stat("/proc/self/ns/pid", &st) == 0) ns.store(v = static_cast<uint64_t>(st.st_ino), std::memory_order_relaxed);
  }
  return v;
}

bool ParseBlockName(const char* name, int* pid, uint64_t* ns) {
  char* end = nullptr;
  if (name[0] < '1' || name[0] > '9') return false;
  errno = 0;
  long p = strtol(name, &end, 10);
  if (errno || p <= 0 || p > INT32_MAX) return false;
  *pid = static_cast<int>(p);
  *ns = 0;
  if (*end == 0) return true;
  if (*end != '@' || end[1] < '1' || end[1] > '9') return false;
  const char* s = end + 1;
  unsigned long long n = strtoull(s, &end, 10);
  if (errno || *end != 0 || n == 0) return false;
  *ns = n;
  return true;
}

std::string BlockNameFor(int pid) {
  std::vector<int> ids = NsPids(pid);
  if (ids.empty()) {
    // no such process (a stale block of this namespace would have this name), or no NSpid line
    // (kernels before 4.1, where every process is in one namespace)
    return NameOf(pid, SelfPidNs());
  }
  if (ids.size() == 1) return NameOf(pid, SelfPidNs());  // in our own namespace
  uint64_t ns = NsOf(pid);
  return ns ? NameOf(ids.back(), ns) : "";
}

namespace {

// Every process of a nested namespace visible here, by (its pid there, its start time): one pass
// over /proc serves a whole listing (gvm ps, gvmd's scans) instead of one pass per block.
struct Nested {
  int nspid;
  uint64_t start;
  int here;
};
std::mutex g_nestedLock;
std::vector<Nested> g_nested;
std::chrono::steady_clock::time_point g_nestedAt;

constexpr auto kNestedFresh = std::chrono::milliseconds(100);
constexpr auto kNestedRetry = std::chrono::milliseconds(10);

void ScanNested() {
  std::vector<Nested> out;
  if (DIR* d = opendir("/proc")) {
    while (struct dirent* e = readdir(d)) {
      char* end = nullptr;
      long h = strtol(e->d_name, &end, 10);
      if (h <= 0 || *end) continue;
      std::vector<int> ids = NsPids(static_cast<int>(h));
      if (ids.size() < 2) continue;  // in our own namespace
      out.push_back({ids.back(), StartTime(static_cast<int>(h)), static_cast<int>(h)});
    }
    closedir(d);
  }
  g_nested.swap(out);
  g_nestedAt = std::chrono::steady_clock::now();
}

}  // namespace

int PidHere(int nspid, uint64_t ns, uint64_t startTime, bool ownerAlive) {
  uint64_t self = SelfPidNs();
  if (ns == 0) ns = GVM_INIT_PID_NS;
  // With its owner lock held the block's process is alive, and a live pid is unique in its namespace:
  // the pid (and the namespace, where readable) identify it. The start time is only needed without
  // the lock (it also differs when the process runs in another time namespace: /proc shifts it by the
  // reader's boot-time offset).
  if (ns == self || (self == 0 && ns == GVM_INIT_PID_NS)) {
    uint64_t start = StartTime(nspid);
    return start != 0 && (ownerAlive || start == startTime) ? nspid : 0;
  }
  std::lock_guard<std::mutex> guard(g_nestedLock);
  auto find = [&]() {
    for (const Nested& n : g_nested) {
      if (n.nspid != nspid) continue;
      uint64_t its = NsOf(n.here);
      if (its != 0 && its != ns) continue;
      const bool byNamespace = ownerAlive && its == ns;
      if (!byNamespace && n.start != startTime) continue;  // unreadable namespace: the start time decides
      uint64_t now = StartTime(n.here);
      if (now == 0 || now != n.start) continue;  // exited since the scan (its pid may be reused)
      return n.here;
    }
    return 0;
  };
  auto age = std::chrono::steady_clock::now() - g_nestedAt;
  if (age < kNestedFresh) {
    if (int here = find()) return here;
    if (age < kNestedRetry) return 0;  // just scanned: not visible from here
  }
  ScanNested();  // stale, or a process started since the scan
  return find();
}

int OwnerLockHeld(int fd) {
  struct flock l {};
  l.l_type = F_WRLCK;
  l.l_whence = SEEK_SET;
  l.l_start = 0;
  l.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &l) != 0) return -1;
  return l.l_type != F_UNLCK ? 1 : 0;
}

}  // namespace gvm
