// ControlBlock: one mapping of one control block file (GVM_SHM_DIR/<pid>).
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <mutex>

#include "addon.h"
#include "map_guard.h"
#include "block_command.h"
#include "gvm/control_block.h"

namespace gvm {
namespace {

constexpr size_t kHeaderSize = offsetof(struct gvm_control_block, gpu);
constexpr int kSeqlockSpins = 1000;    // tight retries before sleeping
constexpr int64_t kSeqlockMaxMs = 100;  // an agent never holds rm_seq odd this long

// What open() produced, handed to the constructor through an External.
struct Opened {
  int fd;
  void* map;
  size_t length;
  bool writable;
  std::string path;
  int guard;  // map_guard.h slot
};

std::string Hex32(uint32_t v) {
  char buf[16];
  snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// A fixed-size char field written by another process: copy, stop at the first NUL.
std::string FixedString(const char* field, size_t max) {
  char tmp[GVM_CMDLINE_MAX + 1];
  if (max > GVM_CMDLINE_MAX) max = GVM_CMDLINE_MAX;
  memcpy(tmp, field, max);
  tmp[max] = '\0';
  return std::string(tmp, strnlen(tmp, max));
}

std::string UuidString(const uint8_t* u) {
  char buf[48];
  snprintf(buf, sizeof buf, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
           u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return buf;
}


class ControlBlock : public Napi::ObjectWrap<ControlBlock> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ControlBlock",
                       {
                           StaticMethod<&ControlBlock::Open>("open"),
                           InstanceMethod<&ControlBlock::Header>("header"),
                           InstanceMethod<&ControlBlock::Gpu>("gpu"),
                           InstanceMethod<&ControlBlock::Rm>("rm"),
                           InstanceMethod<&ControlBlock::Policy>("policy"),
                           InstanceMethod<&ControlBlock::Command>("command"),
                           InstanceMethod<&ControlBlock::Close>("close"),
                           InstanceAccessor<&ControlBlock::Closed>("closed"),
                           InstanceAccessor<&ControlBlock::Writable>("writable"),
                           InstanceAccessor<&ControlBlock::Path>("path"),
                       });
  }

  explicit ControlBlock(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ControlBlock>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      Throw(info.Env(), kInvalid, "ControlBlock: use ControlBlock.open(path, writable)");
    }
    Opened* o = info[0].As<Napi::External<Opened>>().Data();
    fd_ = o->fd;
    map_ = o->map;
    length_ = o->length;
    writable_ = o->writable;
    path_ = o->path;
    guard_ = o->guard;
  }

  ~ControlBlock() override { Release(); }

  // Called on the main thread when a command worker finishes.
  void CommandDone() {
    inflight_--;
    if (closed_ && inflight_ == 0) Release();
  }

 private:
  static Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = ArgString(info, 0, "ControlBlock.open", "path");
    bool writable = ArgBool(info, 1, "ControlBlock.open", "writable");

    // O_NONBLOCK: a FIFO in the shared directory would block a read-only open until a writer came
    // (gvm ps hung); it is refused below as not a regular file
    int fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) ThrowErrno(env, errno, "open " + path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
      int err = errno;
      close(fd);
      ThrowErrno(env, err, "fstat " + path);
    }
    if (!S_ISREG(st.st_mode)) {
      close(fd);
      Throw(env, kInvalid, path + " is not a regular file");
    }
    if (static_cast<uint64_t>(st.st_size) < kHeaderSize) {
      close(fd);
      Throw(env, kVersion,
            path + " is not a gvm control block: " + std::to_string(st.st_size) + " bytes, smaller than the " +
                std::to_string(kHeaderSize) + "-byte header");
    }
    size_t length = static_cast<size_t>(st.st_size);
    void* map = mmap(nullptr, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      int err = errno;
      close(fd);
      ThrowErrno(env, err, "mmap " + path);
    }
    // its owner may shrink the file from now on: a SIGBUS must not kill us (map_guard.h)
    const int guard = GuardMapping(map, length);
    auto fail = [&](const std::string& message) {
      UnguardMapping(guard);
      munmap(map, length);
      close(fd);
      Throw(env, kVersion, path + ": " + message);
    };
    auto* cb = static_cast<struct gvm_control_block*>(map);
    uint32_t magic = GVM_LOAD(&cb->magic);
    if (magic != GVM_CB_MAGIC) {
      fail("bad magic " + Hex32(magic) + ", expected " + Hex32(GVM_CB_MAGIC) + " (\"GVMC\")");
    }
    uint16_t major = GVM_LOAD(&cb->version_major);
    uint16_t minor = GVM_LOAD(&cb->version_minor);
    if (major != GVM_CB_VERSION_MAJOR) {
      fail("control block version " + std::to_string(major) + "." + std::to_string(minor) + ", expected " +
           std::to_string(GVM_CB_VERSION_MAJOR) + ".x");
    }
    uint32_t size = GVM_LOAD(&cb->size);
    uint32_t gpuBlockSize = GVM_LOAD(&cb->gpu_block_size);
    if (size != sizeof(struct gvm_control_block) || gpuBlockSize != sizeof(struct gvm_gpu_block)) {
      fail("size fields " + std::to_string(size) + "/" + std::to_string(gpuBlockSize) + ", expected " +
           std::to_string(sizeof(struct gvm_control_block)) + "/" + std::to_string(sizeof(struct gvm_gpu_block)));
    }
    if (length < size) {
      fail("file is " + std::to_string(length) + " bytes, the block says " + std::to_string(size));
    }

    Opened opened{fd, map, length, writable, path, guard};
    AddonData* data = Data(env);
    try {
      return data->controlBlockClass.New({Napi::External<Opened>::New(env, &opened)});
    } catch (...) {
      UnguardMapping(guard);
      munmap(map, length);
      close(fd);
      throw;
    }
  }

  // What a reader built from the mapping, unless the file shrank under it meanwhile (then it read
  // zeros in place of the lost pages: map_guard.h)
  Napi::Value Fresh(Napi::Env env, Napi::Value v) {
    if (MappingTruncated(guard_)) Throw(env, kIo, "control block " + path_ + " was truncated by its owner: its values are gone");
    return v;
  }

  struct gvm_control_block* Block(Napi::Env env) {
    if (closed_ || map_ == nullptr) Throw(env, kClosed, "control block " + path_ + " is closed");
    if (MappingTruncated(guard_)) Throw(env, kIo, "control block " + path_ + " was truncated by its owner: its values are gone");
    return static_cast<struct gvm_control_block*>(map_);
  }

  uint32_t GpuIndex(const Napi::CallbackInfo& info, const char* fn) {
    return ArgU32(info, 0, fn, "gpu", GVM_MAX_GPUS - 1);
  }

  Napi::Value Header(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct gvm_control_block* cb = Block(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("versionMajor", Napi::Number::New(env, GVM_LOAD(&cb->version_major)));
    o.Set("versionMinor", Napi::Number::New(env, GVM_LOAD(&cb->version_minor)));
    o.Set("size", Napi::Number::New(env, GVM_LOAD(&cb->size)));
    o.Set("gpuBlockSize", Napi::Number::New(env, GVM_LOAD(&cb->gpu_block_size)));
    o.Set("pid", Napi::Number::New(env, GVM_LOAD(&cb->pid)));
    o.Set("uid", Napi::Number::New(env, GVM_LOAD(&cb->uid)));
    o.Set("startTime", U64Number(env, GVM_LOAD(&cb->start_time)));
    o.Set("createdUnixMs", U64Number(env, GVM_LOAD(&cb->created_unix_ms)));
    o.Set("heartbeatNs", Napi::BigInt::New(env, static_cast<uint64_t>(GVM_LOAD(&cb->heartbeat_ns))));
    o.Set("agentState", Napi::Number::New(env, GVM_LOAD(&cb->agent_state)));
    o.Set("gpuCount", Napi::Number::New(env, GVM_LOAD(&cb->gpu_count)));
    o.Set("driverVersion", Napi::Number::New(env, GVM_LOAD(&cb->driver_version)));
    o.Set("flags", Napi::Number::New(env, GVM_LOAD(&cb->flags)));
    o.Set("pidNs", Napi::Number::New(env, static_cast<double>(cb->version_minor >= 3 ? GVM_LOAD(&cb->pid_ns) : 0)));
    o.Set("backend", Napi::Number::New(env, GVM_LOAD(&cb->backend)));
    o.Set("agentVersion", FixedString(cb->agent_version, sizeof cb->agent_version));
    o.Set("cmdline", FixedString(cb->cmdline, sizeof cb->cmdline));
    return Fresh(env, o);
  }

  Napi::Value Gpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct gvm_control_block* cb = Block(env);
    const struct gvm_gpu_block* g = &cb->gpu[GpuIndex(info, "ControlBlock.gpu")];
    uint8_t uuid[16];
    memcpy(uuid, g->uuid, sizeof uuid);
    Napi::Object o = Napi::Object::New(env);
    o.Set("present", Napi::Boolean::New(env, GVM_LOAD(&g->present) != 0));
    o.Set("ordinal", Napi::Number::New(env, GVM_LOAD(&g->ordinal)));
    o.Set("uuid", UuidString(uuid));
    o.Set("pciBusId", FixedString(g->pci_bus_id, sizeof g->pci_bus_id));
    o.Set("name", FixedString(g->name, sizeof g->name));
    o.Set("totalBytes", U64Number(env, GVM_LOAD(&g->total_bytes)));
    o.Set("memoryLimit", U64Number(env, GVM_LOAD(&g->memory_limit)));
    o.Set("memoryMode", Napi::Number::New(env, GVM_LOAD(&g->memory_mode)));
    o.Set("priority", Napi::Number::New(env, GVM_LOAD(&g->priority)));
    o.Set("frozen", Napi::Boolean::New(env, GVM_LOAD(&g->frozen) != 0));
    o.Set("controlMode", Napi::Number::New(env, GVM_LOAD(&g->control_mode)));
    o.Set("contexts", Napi::Number::New(env, GVM_LOAD(&g->contexts)));
    o.Set("memoryCurrent", U64Number(env, GVM_LOAD(&g->memory_current)));
    o.Set("memorySwapCurrent", U64Number(env, GVM_LOAD(&g->memory_swap_current)));
    o.Set("memoryPeak", U64Number(env, GVM_LOAD(&g->memory_peak)));
    o.Set("managedBytes", U64Number(env, GVM_LOAD(&g->managed_bytes)));
    o.Set("hostBytes", U64Number(env, GVM_LOAD(&g->host_bytes)));
    o.Set("kernelsSubmitted", U64Number(env, GVM_LOAD(&g->kernels_submitted)));
    o.Set("kernelsEnded", U64Number(env, GVM_LOAD(&g->kernels_ended)));
    o.Set("allocCount", U64Number(env, GVM_LOAD(&g->alloc_count)));
    o.Set("freeCount", U64Number(env, GVM_LOAD(&g->free_count)));
    o.Set("allocFailures", U64Number(env, GVM_LOAD(&g->alloc_failures)));
    o.Set("updatedNs", Napi::BigInt::New(env, static_cast<uint64_t>(GVM_LOAD(&g->updated_ns))));
    return Fresh(env, o);
  }

  // The automatic policy's state on one GPU (minor 1; zeros from an older agent), events oldest first.
  Napi::Value Policy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct gvm_control_block* cb = Block(env);
    const struct gvm_gpu_block* g = &cb->gpu[GpuIndex(info, "ControlBlock.policy")];
    const struct gvm_policy_info* p = &g->policy;
    Napi::Object o = Napi::Object::New(env);
    o.Set("class", Napi::Number::New(env, GVM_LOAD(&p->klass)));
    o.Set("held", Napi::Boolean::New(env, GVM_LOAD(&p->held) != 0));
    o.Set("action", Napi::Number::New(env, GVM_LOAD(&p->action)));
    o.Set("idleMs", Napi::Number::New(env, GVM_LOAD(&p->idle_ms)));
    o.Set("bursts", U64Number(env, GVM_LOAD(&p->bursts)));
    o.Set("holds", U64Number(env, GVM_LOAD(&p->holds)));
    o.Set("heldNs", U64Number(env, GVM_LOAD(&p->held_ns)));
    o.Set("chainLastNs", U64Number(env, GVM_LOAD(&p->chain_last_ns)));
    o.Set("chainMaxNs", U64Number(env, GVM_LOAD(&p->chain_max_ns)));
    o.Set("memoryLent", U64Number(env, GVM_LOAD(&p->memory_lent)));
    o.Set("memoryWaits", U64Number(env, GVM_LOAD(&p->memory_waits)));
    Napi::Array hist = Napi::Array::New(env, GVM_CHAIN_BUCKETS);
    for (uint32_t i = 0; i < GVM_CHAIN_BUCKETS; i++) hist.Set(i, Napi::Number::New(env, GVM_LOAD(&p->chain_hist[i])));
    o.Set("chainHistogram", hist);
    // where the chains went (minor 4): an older agent's block leaves these at zero
    const struct gvm_hold_parts* hp = &g->hold_parts;
    bool parts = GVM_LOAD(&cb->version_minor) >= 4;
    Napi::Object po = Napi::Object::New(env);
    po.Set("holds", U64Number(env, parts ? GVM_LOAD(&hp->holds) : 0));
    po.Set("wakeNsSum", U64Number(env, parts ? GVM_LOAD(&hp->wake_ns_sum) : 0));
    po.Set("lockNsSum", U64Number(env, parts ? GVM_LOAD(&hp->lock_ns_sum) : 0));
    po.Set("lockMaxNs", U64Number(env, parts ? GVM_LOAD(&hp->lock_max_ns) : 0));
    po.Set("rmNsSum", U64Number(env, parts ? GVM_LOAD(&hp->rm_ns_sum) : 0));
    po.Set("rmMaxNs", U64Number(env, parts ? GVM_LOAD(&hp->rm_max_ns) : 0));
    Napi::Array wake = Napi::Array::New(env, GVM_CHAIN_BUCKETS), rm = Napi::Array::New(env, GVM_CHAIN_BUCKETS);
    for (uint32_t i = 0; i < GVM_CHAIN_BUCKETS; i++) {
      wake.Set(i, Napi::Number::New(env, parts ? GVM_LOAD(&hp->wake_hist[i]) : 0));
      rm.Set(i, Napi::Number::New(env, parts ? GVM_LOAD(&hp->rm_hist[i]) : 0));
    }
    po.Set("wakeHistogram", wake);
    po.Set("rmHistogram", rm);
    o.Set("holdParts", po);
    uint32_t head = GVM_LOAD(&p->event_head);
    uint32_t n = head < GVM_POLICY_EVENTS ? head : GVM_POLICY_EVENTS;
    Napi::Array events = Napi::Array::New(env, n);
    for (uint32_t i = 0; i < n; i++) {
      const struct gvm_policy_event* e = &p->events[(head - n + i) % GVM_POLICY_EVENTS];
      Napi::Object ev = Napi::Object::New(env);
      ev.Set("ns", Napi::BigInt::New(env, static_cast<uint64_t>(GVM_LOAD(&e->ns))));
      ev.Set("kind", Napi::Number::New(env, GVM_LOAD(&e->kind)));
      ev.Set("pid", Napi::Number::New(env, GVM_LOAD(&e->pid)));
      ev.Set("value", U64Number(env, GVM_LOAD(&e->value)));
      events.Set(i, ev);
    }
    o.Set("events", events);
    return Fresh(env, o);
  }

  // The RM tables, read under the rm_seq seqlock (retry while odd or changed).
  Napi::Value Rm(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct gvm_control_block* cb = Block(env);
    const struct gvm_gpu_block* g = &cb->gpu[GpuIndex(info, "ControlBlock.rm")];
    struct {
      int32_t fd;
      uint32_t client, device, subdevice, tsgCount, channelCount;
      struct gvm_tsg_info tsg[GVM_MAX_TSGS];
      struct gvm_channel_info channel[GVM_MAX_CHANNELS];
    } s{};
    bool stable = false;
    const int64_t deadline = MonotonicMs() + kSeqlockMaxMs;
    for (int attempt = 0; !stable; attempt++) {
      if (attempt >= kSeqlockSpins) {
        if (MonotonicMs() >= deadline) break;
        SleepMs(1);
      }
      uint32_t before = GVM_LOAD(&g->rm_seq);
      if (before & 1u) continue;
      s.fd = __atomic_load_n(&g->rm_fd, __ATOMIC_RELAXED);
      s.client = __atomic_load_n(&g->rm_client, __ATOMIC_RELAXED);
      s.device = __atomic_load_n(&g->rm_device, __ATOMIC_RELAXED);
      s.subdevice = __atomic_load_n(&g->rm_subdevice, __ATOMIC_RELAXED);
      s.tsgCount = __atomic_load_n(&g->tsg_count, __ATOMIC_RELAXED);
      s.channelCount = __atomic_load_n(&g->channel_count, __ATOMIC_RELAXED);
      if (s.tsgCount > GVM_MAX_TSGS) s.tsgCount = GVM_MAX_TSGS;
      if (s.channelCount > GVM_MAX_CHANNELS) s.channelCount = GVM_MAX_CHANNELS;
      for (uint32_t i = 0; i < s.tsgCount; i++) {
        s.tsg[i].handle = __atomic_load_n(&g->tsg[i].handle, __ATOMIC_RELAXED);
        s.tsg[i].engine_type = __atomic_load_n(&g->tsg[i].engine_type, __ATOMIC_RELAXED);
        s.tsg[i].channel_count = __atomic_load_n(&g->tsg[i].channel_count, __ATOMIC_RELAXED);
        s.tsg[i].parent = __atomic_load_n(&g->tsg[i].parent, __ATOMIC_RELAXED);
        s.tsg[i].timeslice_us = __atomic_load_n(&g->tsg[i].timeslice_us, __ATOMIC_RELAXED);
      }
      for (uint32_t i = 0; i < s.channelCount; i++) {
        s.channel[i].handle = __atomic_load_n(&g->channel[i].handle, __ATOMIC_RELAXED);
        s.channel[i].tsg = __atomic_load_n(&g->channel[i].tsg, __ATOMIC_RELAXED);
        s.channel[i].class_id = __atomic_load_n(&g->channel[i].class_id, __ATOMIC_RELAXED);
      }
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      stable = __atomic_load_n(&g->rm_seq, __ATOMIC_RELAXED) == before;
    }
    if (!stable) Throw(env, kTimeout, "the agent kept rewriting the RM tables of " + path_);

    Napi::Object o = Napi::Object::New(env);
    o.Set("fd", Napi::Number::New(env, s.fd));
    o.Set("client", Napi::Number::New(env, s.client));
    o.Set("device", Napi::Number::New(env, s.device));
    o.Set("subdevice", Napi::Number::New(env, s.subdevice));
    Napi::Array tsgs = Napi::Array::New(env, s.tsgCount);
    for (uint32_t i = 0; i < s.tsgCount; i++) {
      Napi::Object t = Napi::Object::New(env);
      t.Set("handle", Napi::Number::New(env, s.tsg[i].handle));
      t.Set("engineType", Napi::Number::New(env, s.tsg[i].engine_type));
      t.Set("channelCount", Napi::Number::New(env, s.tsg[i].channel_count));
      t.Set("parent", Napi::Number::New(env, s.tsg[i].parent));
      t.Set("timesliceUs", U64Number(env, s.tsg[i].timeslice_us));
      tsgs.Set(i, t);
    }
    o.Set("tsgs", tsgs);
    Napi::Array channels = Napi::Array::New(env, s.channelCount);
    for (uint32_t i = 0; i < s.channelCount; i++) {
      Napi::Object c = Napi::Object::New(env);
      c.Set("handle", Napi::Number::New(env, s.channel[i].handle));
      c.Set("tsg", Napi::Number::New(env, s.channel[i].tsg));
      c.Set("classId", Napi::Number::New(env, s.channel[i].class_id));
      channels.Set(i, c);
    }
    o.Set("channels", channels);
    return Fresh(env, o);
  }

  Napi::Value Command(const Napi::CallbackInfo& info);

  Napi::Value Close(const Napi::CallbackInfo& info) {
    closed_ = true;
    if (inflight_ == 0) Release();
    return info.Env().Undefined();
  }

  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }
  Napi::Value Writable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), writable_); }
  Napi::Value Path(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }

  void Release() {
    if (map_ != nullptr) {
      UnguardMapping(guard_);
      guard_ = -1;
      munmap(map_, length_);
      map_ = nullptr;
    }
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  friend class CommandWorker;

  int fd_ = -1;
  int guard_ = -1;
  void* map_ = nullptr;
  size_t length_ = 0;
  bool writable_ = false;
  bool closed_ = false;
  int inflight_ = 0;  // command workers using the mapping; close() defers the unmap until 0
  std::timed_mutex commandLock_;
  std::string path_;
};

class CommandWorker : public Napi::AsyncWorker {
 public:
  CommandWorker(Napi::Env env, ControlBlock* owner, Napi::Object ownerObject, const CommandBaton& baton)
      : Napi::AsyncWorker(env, "gvm:command"),
        deferred_(Napi::Promise::Deferred::New(env)),
        owner_(owner),
        ownerRef_(Napi::Persistent(ownerObject)),  // keeps the mapping alive while we run
        baton_(baton) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { RunCommand(&baton_); }

  void OnOK() override {
    Napi::Env env = Env();
    owner_->CommandDone();
    if (baton_.err != 0) {
      deferred_.Reject(MakeError(env, CodeForErrno(baton_.err),
                                 std::string(baton_.errWhat) + " " + owner_->path_ + ": " + ErrnoText(baton_.err))
                           .Value());
      return;
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("status", Napi::Number::New(env, baton_.status));
    r.Set("message", Napi::String::New(env, baton_.message));
    r.Set("seq", Napi::Number::New(env, baton_.seq));
    deferred_.Resolve(r);
  }

  void OnError(const Napi::Error& e) override {
    owner_->CommandDone();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  ControlBlock* owner_;
  Napi::ObjectReference ownerRef_;
  CommandBaton baton_;
};

Napi::Value ControlBlock::Command(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "ControlBlock.command";
  struct gvm_control_block* cb = Block(env);
  CommandBaton b;
  b.key = ArgU32(info, 0, fn, "key");
  b.gpu = ArgU32(info, 1, fn, "gpu", GVM_MAX_GPUS - 1);
  b.value = ArgU64(info, 2, fn, "value");
  b.timeoutMs = ArgU32(info, 3, fn, "timeoutMs", 24u * 3600u * 1000u);
  if (!writable_) Throw(env, kPermission, "control block " + path_ + " was opened read-only");
  b.cb = cb;
  b.fd = fd_;
  b.handleLock = &commandLock_;
  auto* worker = new CommandWorker(env, this, Value(), b);  // deletes itself after OnOK/OnError
  inflight_++;
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace

Napi::Function InitControlBlock(Napi::Env env, AddonData* data) {
  Napi::Function ctor = ControlBlock::Define(env);
  data->controlBlockClass = Napi::Persistent(ctor);
  return ctor;
}

}  // namespace gvm
