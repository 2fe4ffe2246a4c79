// The gvmd file tree: GVM's file names over FUSE (libfuse3, high-level API), served straight from the
// control blocks on FUSE's own threads, without a round trip to JavaScript.
//
//   processes/<pid>/<gpu>/{memory.limit, memory.current, memory.swap.current, memory.mode,
//                          compute.priority, compute.freeze, gcgroup.stat}
//   gpus/<gpu>/{name, memory.total, memory.used, memory.swap, processes, kernels.submitted,
//               kernels.pending}
//
// <gpu> is the machine-wide index (as nvidia-smi numbers GPUs). A process's files belong to the owner
// of its block; the kernel checks permissions (default_permissions), so only that user and root can
// write. A write goes to the agent through the block's command mailbox (block_command.cc, shared with
// the addon) on the FUSE thread that serves it, and returns once the agent applied it.
#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <fcntl.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <napi.h>

#include "block_command.h"
#include "fuse_blocks.h"
#include "map_guard.h"
#include "fuse_files.h"
#include "fuse_log.h"

namespace gvm {
namespace fuse {
namespace {

constexpr int64_t kWriteTimeoutMs = 30000;

// ---- paths ------------------------------------------------------------------------------------

struct Path {
  enum Kind { kNone, kRoot, kProcesses, kGpus, kProcess, kProcessGpu, kProcessFile, kGpu, kGpuFile } kind = kNone;
  int pid = 0, index = -1;
  std::string file;
  const ProcessFile* spec = nullptr;  // for kProcessFile
};

bool ParseIndex(const std::string& s, int* out) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  *out = std::stoi(s);
  return true;
}

Path Parse(const char* raw) {
  std::vector<std::string> parts;
  std::string cur;
  for (const char* p = raw; *p; p++) {
    if (*p != '/') {
      cur += *p;
    } else if (!cur.empty()) {
      parts.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  Path r;
  const size_t n = parts.size();
  if (n == 0) {
    r.kind = Path::kRoot;
  } else if (parts[0] == "processes") {
    if (n == 1) r.kind = Path::kProcesses;
    else if (!ParseIndex(parts[1], &r.pid) || r.pid == 0) r.kind = Path::kNone;
    else if (n == 2) r.kind = Path::kProcess;
    else if (!ParseIndex(parts[2], &r.index)) r.kind = Path::kNone;
    else if (n == 3) r.kind = Path::kProcessGpu;
    else if (n == 4 && (r.spec = FindProcessFile(parts[3])) != nullptr) r.kind = Path::kProcessFile;
    if (r.kind == Path::kProcessFile) r.file = parts[3];
  } else if (parts[0] == "gpus") {
    if (n == 1) r.kind = Path::kGpus;
    else if (!ParseIndex(parts[1], &r.index)) r.kind = Path::kNone;
    else if (n == 2) r.kind = Path::kGpu;
    else if (n == 3 && IsGpuFile(parts[2])) {
      r.kind = Path::kGpuFile;
      r.file = parts[2];
    }
  }
  return r;
}

// The block and slot a process path names, or null when the process or its GPU is gone.
BlockRef Resolve(const Path& p, int* slot, bool fresh = false) {
  BlockRef b = Find(p.pid, fresh);
  if (!b) return nullptr;
  *slot = p.kind == Path::kProcess ? -1 : SlotOf(*b, p.index);
  if (p.kind != Path::kProcess && *slot < 0) return nullptr;
  return b;
}

GpuTotals TotalsOf(int index) {
  GpuTotals t;
  for (int pid : LivePids()) {
    BlockRef b = Find(pid);
    int s = b ? SlotOf(*b, index) : -1;
    if (s >= 0) t.Add(&b->cb->gpu[s]);
  }
  return t;
}

gid_t GidOf(uid_t uid) {
  static std::mutex lock;
  static std::map<uid_t, gid_t> known;  // users do not change primary groups under a running daemon
  std::lock_guard<std::mutex> guard(lock);
  auto it = known.find(uid);
  if (it != known.end()) return it->second;
  struct passwd pw, *out = nullptr;
  char buf[4096];
  gid_t gid = getpwuid_r(uid, &pw, buf, sizeof buf, &out) == 0 && out ? out->pw_gid : static_cast<gid_t>(uid);
  known[uid] = gid;
  return gid;
}

time_t g_mountedAt = 0;  // the times of the top-level entries; a process's are its block's creation

void Attr(struct stat* st, mode_t mode, uid_t uid, time_t when = g_mountedAt) {
  st->st_atime = st->st_mtime = st->st_ctime = when;
  st->st_mode = mode;
  st->st_nlink = S_ISDIR(mode) ? 2 : 1;
  st->st_uid = uid;
  st->st_gid = uid == 0 ? 0 : GidOf(uid);
}

// ---- FUSE operations ----------------------------------------------------------------------------

int DoGetattr(const char* raw, struct stat* st, struct fuse_file_info*) {
  memset(st, 0, sizeof *st);
  Path p = Parse(raw);
  switch (p.kind) {
    case Path::kRoot:
    case Path::kProcesses:
    case Path::kGpus:
      Attr(st, S_IFDIR | 0555, 0);
      return 0;
    case Path::kGpu: {
      auto idx = GpuIndexes();
      if (!std::binary_search(idx.begin(), idx.end(), p.index)) return -ENOENT;
      Attr(st, S_IFDIR | 0555, 0);
      return 0;
    }
    case Path::kGpuFile:
      Attr(st, S_IFREG | 0444, 0);
      return 0;
    case Path::kProcess:
    case Path::kProcessGpu:
    case Path::kProcessFile: {
      int slot;
      BlockRef b = Resolve(p, &slot);
      if (!b) return -ENOENT;
      const time_t created = static_cast<time_t>(b->cb->created_unix_ms / 1000);
      if (p.kind != Path::kProcessFile) Attr(st, S_IFDIR | 0555, b->uid, created);
      else Attr(st, S_IFREG | (p.spec->writable ? 0644 : 0444), b->uid, created);
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
  int slot;
  BlockRef b;
  switch (p.kind) {
    case Path::kRoot:
      for (const char* n : {".", "..", "processes", "gpus"}) add(n);
      return 0;
    case Path::kProcesses:
      add(".");
      add("..");
      for (int pid : LivePids()) add(std::to_string(pid));
      return 0;
    case Path::kGpus:
      add(".");
      add("..");
      for (int i : GpuIndexes()) add(std::to_string(i));
      return 0;
    case Path::kGpu:
      add(".");
      add("..");
      for (const char* f : GpuFiles()) add(f);
      return 0;
    case Path::kProcess:
      if (!(b = Resolve(p, &slot))) return -ENOENT;
      add(".");
      add("..");
      for (int s = 0; s < GVM_MAX_GPUS; s++)
        if (GVM_LOAD(&b->cb->gpu[s].present)) add(std::to_string(MachineIndex(&b->cb->gpu[s])));
      return 0;
    case Path::kProcessGpu:
      if (!(b = Resolve(p, &slot))) return -ENOENT;
      add(".");
      add("..");
      for (const auto& f : ProcessFiles()) add(f.name);
      return 0;
    case Path::kNone:
      return -ENOENT;
    default:
      return -ENOTDIR;
  }
}

int DoOpen(const char* raw, struct fuse_file_info* fi) {
  Path p = Parse(raw);
  bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
  if (p.kind == Path::kGpuFile) {
    if (writing) return -EACCES;
  } else if (p.kind == Path::kProcessFile) {
    if (writing && !p.spec->writable) return -EACCES;
    int slot;
    if (!Resolve(p, &slot)) return -ENOENT;
  } else {
    return -ENOENT;
  }
  fi->direct_io = 1;  // sizes are not known ahead: every read comes to us, never the page cache
  fi->noflush = !writing;  // nothing to flush: a close after reading costs no round trip
  return 0;
}

int DoRead(const char* raw, char* buf, size_t size, off_t off, struct fuse_file_info*) {
  Path p = Parse(raw);
  std::string text;
  if (p.kind == Path::kGpuFile) {
    text = GpuFileText(TotalsOf(p.index), p.file);
  } else if (p.kind == Path::kProcessFile) {
    int slot;
    BlockRef b = Resolve(p, &slot);
    if (!b) return -ENOENT;
    text = ProcessFileText(&b->cb->gpu[slot], *p.spec);
  } else {
    return -ENOENT;
  }
  if (off < 0 || off >= static_cast<off_t>(text.size())) return 0;
  size_t n = std::min(size, text.size() - static_cast<size_t>(off));
  memcpy(buf, text.data() + off, n);
  return static_cast<int>(n);
}

// Sends one command through the block's mailbox, as any controller does (flock + futex). Runs on the
// FUSE thread serving the write; the JS thread never waits on an agent.
CommandBaton Send(const Block& b, uint32_t key, int slot, uint64_t value) {
  CommandBaton c;
  int fd = open(b.path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  void* m = fd < 0 ? MAP_FAILED : mmap(nullptr, sizeof(struct gvm_control_block), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    c.err = errno;
    c.errWhat = fd < 0 ? "open" : "mmap";
    if (fd >= 0) close(fd);
    return c;
  }
  std::timed_mutex lock;  // our own fd: flock alone serialises us with other controllers
  const int guard = GuardMapping(m, sizeof(struct gvm_control_block));
  c.cb = static_cast<struct gvm_control_block*>(m);
  c.fd = fd;
  c.handleLock = &lock;
  c.key = key;
  c.gpu = static_cast<uint32_t>(slot);
  c.value = value;
  c.timeoutMs = kWriteTimeoutMs;
  const int pid = b.pid;
  const uint64_t start = b.startTime;
  c.stillThere = [pid, start] { return StartTimeOf(pid) == start; };
  RunCommand(&c);
  UnguardMapping(guard);
  munmap(m, sizeof(struct gvm_control_block));
  close(fd);
  c.cb = nullptr;
  return c;
}

int DoWrite(const char* raw, const char* buf, size_t size, off_t off, struct fuse_file_info*) {
  Path p = Parse(raw);
  if (p.kind != Path::kProcessFile || !p.spec->writable) return -EACCES;
  if (off != 0) return -EINVAL;  // one whole value per write, as GVM's files take it
  const std::string text(buf, size);
  const std::string shown = text.substr(0, std::min<size_t>(text.find_last_not_of(" \t\r\n") + 1, 64));
  const uid_t caller = fuse_get_context()->uid;
  int slot;
  BlockRef b = Resolve(p, &slot, true);
  if (!b) return -ENOENT;
  uint64_t value = 0;
  if (!ParseValue(*p.spec, text, GVM_LOAD(&b->cb->gpu[slot].total_bytes), &value)) return -EINVAL;
  CommandBaton c = Send(*b, p.spec->key, slot, value);
  if (c.err) {
    Log("%s of process %d GPU %d = %s: %s: %s", p.file.c_str(), p.pid, p.index, shown.c_str(), c.errWhat,
        strerror(c.err));
    return -EIO;
  }
  switch (c.status) {
    case GVM_STATUS_OK:
      Log("%s of process %d GPU %d = %s (by uid %u)", p.file.c_str(), p.pid, p.index, shown.c_str(), caller);
      return static_cast<int>(size);
    case GVM_STATUS_INVALID:
      return -EINVAL;
    case GVM_STATUS_NO_GPU:  // the process exited while we waited, or its GPU went away
      return -ENOENT;
    default:
      Log("%s of process %d GPU %d = %s: agent status %d: %s", p.file.c_str(), p.pid, p.index, shown.c_str(),
          c.status, c.message.c_str());
      return -EIO;
  }
}

int DoTruncate(const char* raw, off_t, struct fuse_file_info*) {
  Path p = Parse(raw);  // `echo 1 > file` truncates first: nothing to do, the write carries the value
  if (p.kind != Path::kProcessFile || !p.spec->writable) return -EACCES;
  return 0;
}

void* DoInit(struct fuse_conn_info*, struct fuse_config* cfg) {
  cfg->direct_io = 1;
  cfg->attr_timeout = 1.0;  // owners and modes only: values are never cached (direct_io)
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

void Unmount(Mount* m) {
  if (!m->mounted) return;
  fuse_exit(m->fuse);
  fuse_unmount(m->fuse);  // the loop's read of /dev/fuse returns: it ends
  if (m->loop.joinable()) m->loop.join();
  fuse_destroy(m->fuse);
  m->mounted = false;
  ReleaseLogSink();  // no FUSE thread is left to log
}

[[noreturn]] void Fail(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

// mountTree(mountPoint, shmDir, allowOther, log?): mounts and serves on a thread of its own.
Napi::Value MountTree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsBoolean() ||
      (info.Length() > 3 && !info[3].IsFunction() && !info[3].IsUndefined()))
    Fail(env, "EGVM_INVALID", "mountTree(mountPoint: string, shmDir: string, allowOther: boolean, log?: (line) => void)");
  std::string mountPoint = info[0].As<Napi::String>();
  Configure(info[1].As<Napi::String>());
  bool allowOther = info[2].As<Napi::Boolean>();
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
  if (info.Length() > 3 && info[3].IsFunction()) SetLogSink(env, info[3].As<Napi::Function>());
  g_mountedAt = time(nullptr);
  m->mounted = true;
  m->loop = std::thread([f = m->fuse] { fuse_loop_mt(f, 0); });  // FUSE 3.1 API: clone_fd off
  return Napi::External<Mount>::New(env, m, [](Napi::Env, Mount* mm) {
    Unmount(mm);
    delete mm;
  });
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
}  // namespace fuse
}  // namespace gvm

// A module of its own (gvm_fuse.node), so the main addon never needs libfuse3.
static Napi::Object InitFuse(Napi::Env env, Napi::Object exports) { return gvm::fuse::Init(env, exports); }
NODE_API_MODULE(gvm_fuse, InitFuse)
