// The gvmd file tree: GVM's file names over FUSE (libfuse3), served straight from the control blocks
// on FUSE's own threads, without a round trip to JavaScript.
//
//   processes/<pid>/<gpu>/{memory.limit, memory.current, memory.swap.current, memory.mode,
//                          compute.priority, compute.freeze, gcgroup.stat}
//   gpus/<gpu>/{name, memory.total, memory.used, memory.swap, processes, kernels.submitted}
//
// <gpu> is the machine-wide index (as nvidia-smi numbers GPUs): the rank of the GPU's PCI bus id
// among /proc/driver/nvidia/gpus, else the CUDA ordinal. A process's files belong to its user; the
// kernel checks permissions (default_permissions), so only that user and root can write. A write
// goes to the agent through the block's command mailbox and returns once the agent applied it.
#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <napi.h>

#include "block_command.h"
#include "gvm/control_block.h"

namespace gvm {
namespace {

std::string g_shmDir = GVM_SHM_DIR;
std::vector<std::string> g_pciOrder;  // machine GPU order, read once at start

// ---- control blocks ------------------------------------------------------------------------------

uint64_t StartTimeOf(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
  return p ? strtoull(p + 1, nullptr, 10) : 0;
}

// A read-only mapping of one live process's block, for the length of one operation.
struct View {
  struct gvm_control_block* cb = nullptr;
  struct stat st {};
  int pid = 0;
  ~View() {
    if (cb) munmap(cb, sizeof *cb);
  }
  bool Open(int p) {
    pid = p;
    std::string path = g_shmDir + "/" + std::to_string(p);
    int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<size_t>(st.st_size) >= sizeof *cb;
    void* m = ok ? mmap(nullptr, sizeof *cb, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED) return false;
    cb = static_cast<struct gvm_control_block*>(m);
    // a dead process, or another one that got its pid, has no files
    return GVM_LOAD(&cb->magic) == GVM_CB_MAGIC && cb->version_major == GVM_CB_VERSION_MAJOR &&
           cb->pid == p && cb->start_time == StartTimeOf(p);
  }
};

int MachineIndex(const struct gvm_gpu_block* g) {
  std::string pci(g->pci_bus_id, strnlen(g->pci_bus_id, sizeof g->pci_bus_id));
  std::transform(pci.begin(), pci.end(), pci.begin(), ::tolower);
  for (size_t i = 0; i < g_pciOrder.size(); i++)
    if (g_pciOrder[i] == pci) return static_cast<int>(i);
  return g->ordinal;
}

// The block slot of machine GPU `index` in this process, or -1.
int SlotOf(const View& v, int index) {
  for (int s = 0; s < GVM_MAX_GPUS; s++)
    if (GVM_LOAD(&v.cb->gpu[s].present) && MachineIndex(&v.cb->gpu[s]) == index) return s;
  return -1;
}

std::vector<int> LivePids() {
  std::vector<int> pids;
  DIR* d = opendir(g_shmDir.c_str());
  if (!d) return pids;
  while (struct dirent* e = readdir(d)) {
    char* end = nullptr;
    long pid = strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end) continue;
    View v;
    if (v.Open(static_cast<int>(pid))) pids.push_back(static_cast<int>(pid));
  }
  closedir(d);
  std::sort(pids.begin(), pids.end());
  return pids;
}

// ---- the files ---------------------------------------------------------------------------------

struct FileSpec {
  const char* name;
  bool writable;
  uint32_t key;  // command key for writable files
};
const FileSpec kProcessFiles[] = {
    {"memory.limit", true, GVM_KEY_MEMORY_LIMIT},       {"memory.current", false, 0},
    {"memory.swap.current", false, 0},                  {"memory.mode", true, GVM_KEY_MEMORY_MODE},
    {"compute.priority", true, GVM_KEY_COMPUTE_PRIORITY}, {"compute.freeze", true, GVM_KEY_COMPUTE_FREEZE},
    {"gcgroup.stat", false, 0},
};
const char* const kGpuFiles[] = {"name", "memory.total", "memory.used", "memory.swap", "processes", "kernels.submitted"};

const FileSpec* ProcessFile(const std::string& name) {
  for (const auto& f : kProcessFiles)
    if (name == f.name) return &f;
  return nullptr;
}

std::string U64(uint64_t v) { return std::to_string(v) + "\n"; }

std::string ProcessFileText(const struct gvm_gpu_block* g, const std::string& name) {
  uint64_t sub = GVM_LOAD(&g->kernels_submitted), end = GVM_LOAD(&g->kernels_ended);
  if (end > sub) end = sub;
  if (name == "memory.limit") return U64(GVM_LOAD(&g->memory_limit));
  if (name == "memory.current") return U64(GVM_LOAD(&g->memory_current));
  if (name == "memory.swap.current") return U64(GVM_LOAD(&g->memory_swap_current));
  if (name == "memory.mode") return GVM_LOAD(&g->memory_mode) == GVM_MEMORY_MODE_SWAP ? "swap\n" : "oom\n";
  if (name == "compute.priority") return std::to_string(GVM_LOAD(&g->priority)) + "\n";
  if (name == "compute.freeze") return GVM_LOAD(&g->frozen) ? "1\n" : "0\n";
  std::string s;
  auto line = [&s](const char* k, uint64_t v) { s += std::string(k) + " " + std::to_string(v) + "\n"; };
  line("nr_submitted_kernels", sub);
  line("nr_ended_kernels", end);
  line("nr_pending_kernels", sub - end);
  line("memory_current", GVM_LOAD(&g->memory_current));
  line("memory_limit", GVM_LOAD(&g->memory_limit));
  line("memory_swap_current", GVM_LOAD(&g->memory_swap_current));
  line("memory_peak", GVM_LOAD(&g->memory_peak));
  line("nr_allocs", GVM_LOAD(&g->alloc_count));
  line("nr_frees", GVM_LOAD(&g->free_count));
  line("nr_alloc_failures", GVM_LOAD(&g->alloc_failures));
  line("priority", static_cast<uint64_t>(GVM_LOAD(&g->priority)));
  line("frozen", GVM_LOAD(&g->frozen));
  return s;
}

std::string GpuFileText(int index, const std::string& name) {
  std::string gpuName;
  uint64_t total = 0, used = 0, swap = 0, procs = 0, kernels = 0;
  for (int pid : LivePids()) {
    View v;
    if (!v.Open(pid)) continue;
    int s = SlotOf(v, index);
    if (s < 0) continue;
    const struct gvm_gpu_block* g = &v.cb->gpu[s];
    gpuName.assign(g->name, strnlen(g->name, sizeof g->name));
    total = GVM_LOAD(&g->total_bytes);
    used += GVM_LOAD(&g->memory_current);
    swap += GVM_LOAD(&g->memory_swap_current);
    kernels += GVM_LOAD(&g->kernels_submitted);
    procs++;
  }
  if (name == "name") return gpuName + "\n";
  if (name == "memory.total") return U64(total);
  if (name == "memory.used") return U64(used);
  if (name == "memory.swap") return U64(swap);
  if (name == "processes") return U64(procs);
  return U64(kernels);
}

std::vector<int> GpuIndexes() {
  std::vector<int> out;
  for (int pid : LivePids()) {
    View v;
    if (!v.Open(pid)) continue;
    for (int s = 0; s < GVM_MAX_GPUS; s++)
      if (GVM_LOAD(&v.cb->gpu[s].present)) out.push_back(MachineIndex(&v.cb->gpu[s]));
  }
  for (size_t i = 0; i < g_pciOrder.size(); i++) out.push_back(static_cast<int>(i));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// ---- paths ------------------------------------------------------------------------------------

struct Path {
  enum Kind { kNone, kRoot, kProcesses, kGpus, kProcess, kProcessGpu, kProcessFile, kGpu, kGpuFile } kind = kNone;
  int pid = 0, index = -1;
  std::string file;
};

bool ParseInt(const std::string& s, int* out) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), ::isdigit)) return false;
  *out = std::stoi(s);
  return true;
}

Path Parse(const char* raw) {
  std::vector<std::string> parts;
  std::string cur;
  for (const char* p = raw; *p; p++) {
    if (*p == '/') {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else {
      cur += *p;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  Path r;
  if (parts.empty()) r.kind = Path::kRoot;
  else if (parts[0] == "processes") {
    if (parts.size() == 1) r.kind = Path::kProcesses;
    else if (ParseInt(parts[1], &r.pid) && parts.size() == 2) r.kind = Path::kProcess;
    else if (r.pid && parts.size() >= 3 && ParseInt(parts[2], &r.index)) {
      if (parts.size() == 3) r.kind = Path::kProcessGpu;
      else if (parts.size() == 4 && ProcessFile(parts[3])) {
        r.kind = Path::kProcessFile;
        r.file = parts[3];
      }
    }
  } else if (parts[0] == "gpus") {
    if (parts.size() == 1) r.kind = Path::kGpus;
    else if (ParseInt(parts[1], &r.index)) {
      if (parts.size() == 2) r.kind = Path::kGpu;
      else if (parts.size() == 3 &&
               std::any_of(std::begin(kGpuFiles), std::end(kGpuFiles), [&](const char* f) { return parts[2] == f; })) {
        r.kind = Path::kGpuFile;
        r.file = parts[2];
      }
    }
  }
  return r;
}

void DirStat(struct stat* st, uid_t uid, gid_t gid) {
  st->st_mode = S_IFDIR | 0555;
  st->st_nlink = 2;
  st->st_uid = uid;
  st->st_gid = gid;
}

gid_t GidOf(uid_t uid) {
  static std::mutex lock;
  static std::map<uid_t, gid_t> known;  // users do not change groups under a running daemon
  std::lock_guard<std::mutex> guard(lock);
  auto it = known.find(uid);
  if (it != known.end()) return it->second;
  struct passwd pw, *out = nullptr;
  char buf[1024];
  gid_t gid = getpwuid_r(uid, &pw, buf, sizeof buf, &out) == 0 && out ? out->pw_gid : static_cast<gid_t>(uid);
  known[uid] = gid;
  return gid;
}

// ---- FUSE operations ----------------------------------------------------------------------------

int DoGetattr(const char* raw, struct stat* st, struct fuse_file_info*) {
  memset(st, 0, sizeof *st);
  Path p = Parse(raw);
  switch (p.kind) {
    case Path::kRoot:
    case Path::kProcesses:
    case Path::kGpus:
      DirStat(st, 0, 0);
      return 0;
    case Path::kGpu: {
      auto idx = GpuIndexes();
      if (!std::binary_search(idx.begin(), idx.end(), p.index)) return -ENOENT;
      DirStat(st, 0, 0);
      return 0;
    }
    case Path::kGpuFile:
      st->st_mode = S_IFREG | 0444;
      st->st_nlink = 1;
      return 0;
    case Path::kProcess:
    case Path::kProcessGpu:
    case Path::kProcessFile: {
      View v;
      if (!v.Open(p.pid)) return -ENOENT;
      if (p.kind != Path::kProcess && SlotOf(v, p.index) < 0) return -ENOENT;
      uid_t uid = v.st.st_uid;  // the block file's owner: set by the kernel, not by what the block says
      if (p.kind != Path::kProcessFile) {
        DirStat(st, uid, GidOf(uid));
      } else {
        st->st_mode = S_IFREG | (ProcessFile(p.file)->writable ? 0644 : 0444);
        st->st_nlink = 1;
        st->st_uid = uid;
        st->st_gid = GidOf(uid);
      }
      return 0;
    }
    default:
      return -ENOENT;
  }
}

int DoReaddir(const char* raw, void* buf, fuse_fill_dir_t fill, off_t, struct fuse_file_info*,
              enum fuse_readdir_flags) {
  Path p = Parse(raw);
  auto add = [&](const std::string& name) { fill(buf, name.c_str(), nullptr, 0, static_cast<fuse_fill_dir_flags>(0)); };
  add(".");
  add("..");
  switch (p.kind) {
    case Path::kRoot:
      add("processes");
      add("gpus");
      return 0;
    case Path::kProcesses:
      for (int pid : LivePids()) add(std::to_string(pid));
      return 0;
    case Path::kGpus:
      for (int i : GpuIndexes()) add(std::to_string(i));
      return 0;
    case Path::kGpu:
      for (const char* f : kGpuFiles) add(f);
      return 0;
    case Path::kProcess: {
      View v;
      if (!v.Open(p.pid)) return -ENOENT;
      for (int s = 0; s < GVM_MAX_GPUS; s++)
        if (GVM_LOAD(&v.cb->gpu[s].present)) add(std::to_string(MachineIndex(&v.cb->gpu[s])));
      return 0;
    }
    case Path::kProcessGpu: {
      View v;
      if (!v.Open(p.pid) || SlotOf(v, p.index) < 0) return -ENOENT;
      for (const auto& f : kProcessFiles) add(f.name);
      return 0;
    }
    default:
      return -ENOTDIR;
  }
}

int DoOpen(const char* raw, struct fuse_file_info* fi) {
  Path p = Parse(raw);
  if (p.kind != Path::kProcessFile && p.kind != Path::kGpuFile) return -ENOENT;
  if ((fi->flags & O_ACCMODE) != O_RDONLY && (p.kind == Path::kGpuFile || !ProcessFile(p.file)->writable))
    return -EACCES;
  fi->direct_io = 1;  // sizes are not known ahead: every read comes to us
  return 0;
}

int DoRead(const char* raw, char* buf, size_t size, off_t off, struct fuse_file_info*) {
  Path p = Parse(raw);
  std::string text;
  if (p.kind == Path::kGpuFile) {
    text = GpuFileText(p.index, p.file);
  } else if (p.kind == Path::kProcessFile) {
    View v;
    int s = v.Open(p.pid) ? SlotOf(v, p.index) : -1;
    if (s < 0) return -ENOENT;
    text = ProcessFileText(&v.cb->gpu[s], p.file);
  } else {
    return -ENOENT;
  }
  if (off >= static_cast<off_t>(text.size())) return 0;
  size_t n = std::min(size, text.size() - static_cast<size_t>(off));
  memcpy(buf, text.data() + off, n);
  return static_cast<int>(n);
}

// Values as GVM's files take them: bytes with an optional K/M/G/T (binary) suffix.
bool ParseBytes(std::string s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t mult = 1;
  std::string unit;
  while (!s.empty() && isalpha(static_cast<unsigned char>(s.back()))) {
    unit.insert(unit.begin(), static_cast<char>(toupper(s.back())));
    s.pop_back();
  }
  if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1ull << 10;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1ull << 20;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1ull << 30;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1ull << 40;
  else if (!unit.empty()) return false;
  if (s.empty() || s.size() > 19 || !std::all_of(s.begin(), s.end(), ::isdigit)) return false;
  uint64_t v = std::stoull(s);
  if (v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

bool ParseValue(const std::string& file, const std::string& text, uint64_t* value) {
  if (file == "memory.limit") return ParseBytes(text, value) && *value > 0;
  if (file == "memory.mode") {
    if (text == "oom") *value = GVM_MEMORY_MODE_OOM;
    else if (text == "swap") *value = GVM_MEMORY_MODE_SWAP;
    else return false;
    return true;
  }
  int v;
  if (!ParseInt(text, &v)) return false;
  *value = static_cast<uint64_t>(v);
  if (file == "compute.priority") return v <= 15;
  return v <= 1;  // compute.freeze
}

int DoWrite(const char* raw, const char* buf, size_t size, off_t off, struct fuse_file_info*) {
  Path p = Parse(raw);
  if (p.kind != Path::kProcessFile) return -EACCES;
  const FileSpec* spec = ProcessFile(p.file);
  if (!spec->writable) return -EACCES;
  if (off != 0) return -EINVAL;  // one value per write, as GVM's files take it
  std::string text(buf, size);
  while (!text.empty() && isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  while (!text.empty() && isspace(static_cast<unsigned char>(text.front()))) text.erase(text.begin());
  uint64_t value = 0;
  if (!ParseValue(p.file, text, &value)) return -EINVAL;
  View v;
  int slot = v.Open(p.pid) ? SlotOf(v, p.index) : -1;
  if (slot < 0) return -ENOENT;
  if (p.file == "memory.limit" && value > GVM_LOAD(&v.cb->gpu[slot].total_bytes)) return -EINVAL;

  std::string path = g_shmDir + "/" + std::to_string(p.pid);
  int fd = open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -errno;
  void* m = mmap(nullptr, sizeof(struct gvm_control_block), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    int err = errno;
    close(fd);
    return -err;
  }
  std::timed_mutex lock;  // our own fd: flock alone serialises us with other controllers
  CommandBaton b;
  b.cb = static_cast<struct gvm_control_block*>(m);
  b.fd = fd;
  b.handleLock = &lock;
  b.key = spec->key;
  b.gpu = static_cast<uint32_t>(slot);
  b.value = value;
  b.timeoutMs = 30000;
  RunCommand(&b);
  munmap(m, sizeof(struct gvm_control_block));
  close(fd);
  if (b.err) return -b.err;
  switch (b.status) {
    case GVM_STATUS_OK:
      return static_cast<int>(size);
    case GVM_STATUS_INVALID:
      return -EINVAL;
    case GVM_STATUS_NO_GPU:
      return -ENOENT;
    default:
      fprintf(stderr, "gvmd: %s of process %d GPU %d = %s: agent status %d: %s\n", p.file.c_str(), p.pid, p.index,
              text.c_str(), b.status, b.message.c_str());
      return -EIO;
  }
}

int DoTruncate(const char* raw, off_t, struct fuse_file_info*) {
  Path p = Parse(raw);  // `echo 1 > file` truncates first: nothing to do, the write carries the value
  if (p.kind != Path::kProcessFile || !ProcessFile(p.file)->writable) return -EACCES;
  return 0;
}

void* DoInit(struct fuse_conn_info*, struct fuse_config* cfg) {
  cfg->direct_io = 1;
  cfg->attr_timeout = 1.0;  // owners and modes: values themselves are never cached (direct_io)
  cfg->entry_timeout = 1.0;
  cfg->negative_timeout = 0;
  return nullptr;
}

// ---- the mount, owned by a JS handle ----------------------------------------------------------

struct Mount {
  struct fuse* fuse = nullptr;
  std::thread loop;
  bool mounted = false;
};

void ReadPciOrder() {
  g_pciOrder.clear();
  DIR* d = opendir("/proc/driver/nvidia/gpus");
  if (!d) return;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string s(e->d_name);
    std::transform(s.begin(), s.end(), s.begin(), ::tolower);
    g_pciOrder.push_back(s);
  }
  closedir(d);
  std::sort(g_pciOrder.begin(), g_pciOrder.end());
}

void Unmount(Mount* m) {
  if (!m->mounted) return;
  fuse_exit(m->fuse);
  fuse_unmount(m->fuse);  // the loop's read of /dev/fuse returns: it ends
  if (m->loop.joinable()) m->loop.join();
  fuse_destroy(m->fuse);
  m->mounted = false;
}

[[noreturn]] void Fail(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

Napi::Value MountTree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsBoolean())
    Fail(env, "EGVM_INVALID", "mountTree(mountPoint: string, shmDir: string, allowOther: boolean)");
  std::string mountPoint = info[0].As<Napi::String>();
  g_shmDir = info[1].As<Napi::String>();
  bool allowOther = info[2].As<Napi::Boolean>();
  ReadPciOrder();
  static struct fuse_operations ops;
  ops.getattr = DoGetattr;
  ops.readdir = DoReaddir;
  ops.open = DoOpen;
  ops.read = DoRead;
  ops.write = DoWrite;
  ops.truncate = DoTruncate;
  ops.init = DoInit;
  std::string opts = "fsname=gvm,subtype=gvm,default_permissions";
  if (allowOther) opts += ",allow_other";
  const char* argv[] = {"gvmd", "-o", opts.c_str()};
  struct fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  auto* m = new Mount();
  m->fuse = fuse_new(&args, &ops, sizeof ops, nullptr);
  if (!m->fuse) {
    delete m;
    Fail(env, "EGVM_IO", "fuse_new failed (is libfuse3 usable here?)");
  }
  if (fuse_mount(m->fuse, mountPoint.c_str()) != 0) {
    fuse_destroy(m->fuse);
    delete m;
    Fail(env, "EGVM_IO", "cannot mount the gvm tree at " + mountPoint + " (is /dev/fuse there, and are we root?)");
  }
  m->mounted = true;
  m->loop = std::thread([f = m->fuse] { fuse_loop_mt(f, 0); });
  auto handle = Napi::External<Mount>::New(env, m, [](Napi::Env, Mount* mm) {
    Unmount(mm);
    delete mm;
  });
  return handle;
}

Napi::Value UnmountTree(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) Fail(info.Env(), "EGVM_INVALID", "unmountTree: expected a mount handle");
  Unmount(info[0].As<Napi::External<Mount>>().Data());
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("mountTree", Napi::Function::New(env, MountTree, "mountTree"));
  exports.Set("unmountTree", Napi::Function::New(env, UnmountTree, "unmountTree"));
  return exports;
}

}  // namespace
}  // namespace gvm

// A module of its own (gvm_fuse.node), so the main addon never needs libfuse3.
static Napi::Object InitFuse(Napi::Env env, Napi::Object exports) { return gvm::Init(env, exports); }
NODE_API_MODULE(gvm_fuse, InitFuse)
