// gvmd's view of the control blocks: a short-lived cache of which processes are live, each with one
// read-only mapping shared by every FUSE thread that reads it.
#include "fuse_blocks.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "block_command.h"
#include "block_owner.h"
#include "map_guard.h"

namespace gvm {
namespace fuse {
namespace {

std::string g_shmDir = GVM_SHM_DIR;
std::vector<std::string> g_pciOrder;  // machine GPU order, read once at start

struct Cached {
  BlockRef block;
  int64_t checkedMs = 0;
};

std::mutex g_lock;  // guards the two below
std::map<int, Cached> g_blocks;
std::vector<int> g_pids;
int64_t g_scannedMs = -kRescanMs;

// Maps and checks the block of `pid` (a pid here; its file is "<pid>", or "<nspid>@<ns>" for a
// process in a container). Null when it is not the block of that live process.
BlockRef Load(int pid) {
  std::string name = BlockNameFor(pid);
  int nspid = 0;
  uint64_t ns = 0;
  if (name.empty() || !ParseBlockName(name.c_str(), &nspid, &ns)) return nullptr;
  std::string path = g_shmDir + "/" + name;
  // O_NONBLOCK: anyone may create files in the shared directory, and a FIFO named like a pid would
  // block a read-only open until a writer came, hanging the FUSE thread (the S_ISREG check is after)
  int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return nullptr;
  struct stat st {};
  bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            static_cast<size_t>(st.st_size) >= sizeof(struct gvm_control_block);
  void* m = ok ? mmap(nullptr, sizeof(struct gvm_control_block), PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  if (m == MAP_FAILED) {
    close(fd);
    return nullptr;
  }
  auto b = std::make_shared<Block>();
  b->guard = GuardMapping(m, sizeof(struct gvm_control_block));  // before the first read: see map_guard.h
  b->cb = static_cast<struct gvm_control_block*>(m);
  b->pid = pid;
  b->path = path;
  b->uid = st.st_uid;
  b->startTime = StartTimeOf(pid);
  bool locked = b->cb->version_minor >= 3 && (GVM_LOAD(&b->cb->flags) & GVM_CB_FLAG_OWNER_LOCK);
  int held = locked ? OwnerLockHeld(fd) : -1;
  close(fd);
  // a dead process, or another one that got its pid, has no files; a held owner lock proves it lives
  // (its start time reads differently from another time namespace)
  if (GVM_LOAD(&b->cb->magic) != GVM_CB_MAGIC || b->cb->version_major != GVM_CB_VERSION_MAJOR ||
      b->cb->pid != nspid || b->startTime == 0 || held == 0 || (held != 1 && b->cb->start_time != b->startTime))
    return nullptr;
  return b;
}

// The pid here of the process whose block is the directory entry `name`; 0 if it is not a block
// name or its process is not visible from here (another container's).
int PidOfEntry(const char* name) {
  int nspid = 0;
  uint64_t ns = 0;
  if (!ParseBlockName(name, &nspid, &ns)) return 0;
  const uint64_t self = SelfPidNs();
  const bool host = self == 0 || self == GVM_INIT_PID_NS;
  if (ns == 0 && !host) return 0;  // the host's process: not visible from a container
  if ((ns == 0 && host) || ns == self) return nspid;  // the name is the pid; Load checks the rest
  int fd = open((g_shmDir + "/" + name).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0;
  struct gvm_control_block head;  // the fields before the name: pread, not a mapping (it may shrink)
  const size_t want = offsetof(struct gvm_control_block, agent_version);
  bool ok = pread(fd, &head, want, 0) == static_cast<ssize_t>(want);
  const bool locked = ok && head.version_minor >= 3 && (head.flags & GVM_CB_FLAG_OWNER_LOCK);
  const bool alive = locked && OwnerLockHeld(fd) == 1;
  close(fd);
  return ok ? PidHere(nspid, ns, head.start_time, alive) : 0;
}

// A PCI bus id in one spelling ("0000:41:00.0" for "00000000:41:00.0", "0000:4A:00.0" or "41:00.0"),
// as lib/system.ts normalizePciBusId writes it, so the file tree numbers GPUs as gvm ps and gvm set
// do. Empty when the text is not a bus id (domain required with `needDomain`, as in the driver's list).
std::string NormalizePci(const std::string& text, bool needDomain) {
  unsigned domain = 0, bus = 0, device = 0, function = 0;
  int end = -1;
  bool ok = sscanf(text.c_str(), "%x:%x:%x.%x%n", &domain, &bus, &device, &function, &end) == 4 &&
            static_cast<size_t>(end) == text.size();
  if (!ok && !needDomain) {
    domain = 0;
    end = -1;
    ok = sscanf(text.c_str(), "%x:%x.%x%n", &bus, &device, &function, &end) == 3 && static_cast<size_t>(end) == text.size();
  }
  if (!ok) return "";
  char out[32];
  snprintf(out, sizeof out, "%04x:%02x:%02x.%x", domain, bus, device, function);
  return out;
}

// The machine's GPUs in nvidia-smi order: the bus ids the driver lists, sorted. The list is read where
// the library reads it ($GVM_NVIDIA_PROC_DIR, for tests), or the file tree and gvm would number GPUs
// differently there.
void ReadPciOrder() {
  g_pciOrder.clear();
  const char* dir = getenv("GVM_NVIDIA_PROC_DIR");
  DIR* d = opendir(dir && *dir ? dir : "/proc/driver/nvidia/gpus");
  if (!d) return;
  while (struct dirent* e = readdir(d)) {
    std::string s = NormalizePci(e->d_name, true);
    if (!s.empty()) g_pciOrder.push_back(s);
  }
  closedir(d);
  std::sort(g_pciOrder.begin(), g_pciOrder.end());
}

}  // namespace

Block::~Block() {
  UnguardMapping(guard);
  if (cb) munmap(cb, sizeof *cb);
}

void Configure(const std::string& shmDir) {
  std::lock_guard<std::mutex> guard(g_lock);
  g_shmDir = shmDir;
  g_blocks.clear();
  g_pids.clear();
  g_scannedMs = -kRescanMs;
  ReadPciOrder();
}

const std::string& ShmDir() { return g_shmDir; }

uint64_t StartTimeOf(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char* p = strrchr(buf, ')');  // the command name may hold spaces and parentheses
  for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
  return p ? strtoull(p + 1, nullptr, 10) : 0;
}

BlockRef Find(int pid, bool fresh) {
  if (pid <= 0) return nullptr;
  const int64_t now = MonotonicMs();
  if (!fresh) {
    std::lock_guard<std::mutex> guard(g_lock);
    auto it = g_blocks.find(pid);
    // a block whose file its owner shrank is dropped at once (Load then refuses the short file)
    if (it != g_blocks.end() && now - it->second.checkedMs < kRescanMs && !MappingTruncated(it->second.block->guard))
      return it->second.block;
  }
  BlockRef b = Load(pid);
  std::lock_guard<std::mutex> guard(g_lock);
  if (b) g_blocks[pid] = Cached{b, now};
  else g_blocks.erase(pid);
  return b;
}

std::vector<int> LivePids() {
  {
    std::lock_guard<std::mutex> guard(g_lock);
    if (MonotonicMs() - g_scannedMs < kRescanMs) {
      std::vector<int> pids;  // less any that a fresh check (a write) found gone since the scan
      for (int pid : g_pids)
        if (g_blocks.count(pid)) pids.push_back(pid);
      return pids;
    }
  }
  std::vector<int> pids;
  if (DIR* d = opendir(g_shmDir.c_str())) {
    while (struct dirent* e = readdir(d)) {
      int pid = PidOfEntry(e->d_name);
      if (pid > 0 && Find(pid)) pids.push_back(pid);
    }
    closedir(d);
  }
  std::sort(pids.begin(), pids.end());
  std::lock_guard<std::mutex> guard(g_lock);
  for (auto it = g_blocks.begin(); it != g_blocks.end();)  // forget blocks whose file went away
    it = std::binary_search(pids.begin(), pids.end(), it->first) ? std::next(it) : g_blocks.erase(it);
  g_pids = pids;
  g_scannedMs = MonotonicMs();
  return pids;
}

int MachineIndex(const struct gvm_gpu_block* g) {
  std::string pci = NormalizePci(std::string(g->pci_bus_id, strnlen(g->pci_bus_id, sizeof g->pci_bus_id)), false);
  for (size_t i = 0; !pci.empty() && i < g_pciOrder.size(); i++)
    if (g_pciOrder[i] == pci) return static_cast<int>(i);
  return g->ordinal;
}

int SlotOf(const Block& b, int index) {
  for (int s = 0; s < GVM_MAX_GPUS; s++)
    if (GVM_LOAD(&b.cb->gpu[s].present) && MachineIndex(&b.cb->gpu[s]) == index) return s;
  return -1;
}

std::vector<int> GpuIndexes() {
  std::vector<int> out;
  for (int pid : LivePids()) {
    BlockRef b = Find(pid);
    if (!b) continue;
    for (int s = 0; s < GVM_MAX_GPUS; s++)
      if (GVM_LOAD(&b->cb->gpu[s].present)) out.push_back(MachineIndex(&b->cb->gpu[s]));
  }
  for (size_t i = 0; i < g_pciOrder.size(); i++) out.push_back(static_cast<int>(i));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace fuse
}  // namespace gvm
