// Module entry: setErrorClass, layout, processStartTime, the block-owner helpers and the ControlBlock class.
#include "addon.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block_owner.h"
#include "gvm/control_block.h"

namespace gvm {

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Error MakeError(Napi::Env env, const char* code, const std::string& message) {
  AddonData* data = Data(env);
  if (data != nullptr && !data->errorClass.IsEmpty()) {
    Napi::Object err = data->errorClass.New({Napi::String::New(env, message), Napi::String::New(env, code)});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

void Throw(Napi::Env env, const char* code, const std::string& message) { throw MakeError(env, code, message); }

const char* CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
      return kNotFound;
    case EACCES:
    case EPERM:
      return kPermission;
    default:
      return kIo;
  }
}

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer (which may not be buf).
  const char* text = strerror_r(err, buf, sizeof buf);
  return std::string(text);
}

void ThrowErrno(Napi::Env env, int err, const std::string& what) {
  Throw(env, CodeForErrno(err), what + ": " + ErrnoText(err));
}

static std::string ArgMessage(const char* fn, const char* name, const char* what) {
  return std::string(fn) + ": " + name + " must be " + what;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) Throw(info.Env(), kInvalid, ArgMessage(fn, name, "a string"));
  return info[i].As<Napi::String>().Utf8Value();
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsBoolean()) Throw(info.Env(), kInvalid, ArgMessage(fn, name, "a boolean"));
  return info[i].As<Napi::Boolean>().Value();
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, uint32_t max) {
  if (info.Length() > i && info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (std::isfinite(d) && d >= 0 && d <= max && std::floor(d) == d) return static_cast<uint32_t>(d);
  }
  std::string what = "an integer from 0 to " + std::to_string(max);
  Throw(info.Env(), kInvalid, ArgMessage(fn, name, what.c_str()));
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() > i && info[i].IsBigInt()) {
    int sign = 0;
    size_t words = 1;
    uint64_t v = 0;
    info[i].As<Napi::BigInt>().ToWords(&sign, &words, &v);
    // ToWords reports the full word count even when it copied fewer: > 1 means >= 2^64.
    if (sign == 0 && words <= 1) return v;
  } else if (info.Length() > i && info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (std::isfinite(d) && d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  }
  Throw(info.Env(), kInvalid, ArgMessage(fn, name, "a bigint from 0 to 2^64-1 (or a safe non-negative integer)"));
}

Napi::Value U64Number(Napi::Env env, uint64_t v) { return Napi::Number::New(env, static_cast<double>(v)); }

// --- layout(): sizes and offsets from the compiler, for the ABI test ---------------------------

#define GVM_OFF(obj, type, field) obj.Set(#field, Napi::Number::New(env, static_cast<double>(offsetof(type, field))))

Napi::Object Layout(Napi::Env env) {
  Napi::Object root = Napi::Object::New(env);

  Napi::Object cb = Napi::Object::New(env);
  cb.Set("sizeof", Napi::Number::New(env, sizeof(struct gvm_control_block)));
  GVM_OFF(cb, struct gvm_control_block, magic);
  GVM_OFF(cb, struct gvm_control_block, version_major);
  GVM_OFF(cb, struct gvm_control_block, version_minor);
  GVM_OFF(cb, struct gvm_control_block, size);
  GVM_OFF(cb, struct gvm_control_block, gpu_block_size);
  GVM_OFF(cb, struct gvm_control_block, pid);
  GVM_OFF(cb, struct gvm_control_block, uid);
  GVM_OFF(cb, struct gvm_control_block, start_time);
  GVM_OFF(cb, struct gvm_control_block, created_unix_ms);
  GVM_OFF(cb, struct gvm_control_block, heartbeat_ns);
  GVM_OFF(cb, struct gvm_control_block, agent_state);
  GVM_OFF(cb, struct gvm_control_block, gpu_count);
  GVM_OFF(cb, struct gvm_control_block, driver_version);
  GVM_OFF(cb, struct gvm_control_block, flags);
  GVM_OFF(cb, struct gvm_control_block, agent_version);
  GVM_OFF(cb, struct gvm_control_block, cmdline);
  GVM_OFF(cb, struct gvm_control_block, pid_ns);
  GVM_OFF(cb, struct gvm_control_block, backend);
  GVM_OFF(cb, struct gvm_control_block, command);
  GVM_OFF(cb, struct gvm_control_block, gpu);
  root.Set("controlBlock", cb);

  Napi::Object cmd = Napi::Object::New(env);
  cmd.Set("sizeof", Napi::Number::New(env, sizeof(struct gvm_command)));
  GVM_OFF(cmd, struct gvm_command, seq);
  GVM_OFF(cmd, struct gvm_command, applied_seq);
  GVM_OFF(cmd, struct gvm_command, key);
  GVM_OFF(cmd, struct gvm_command, gpu);
  GVM_OFF(cmd, struct gvm_command, value);
  GVM_OFF(cmd, struct gvm_command, status);
  GVM_OFF(cmd, struct gvm_command, message);
  root.Set("command", cmd);

  Napi::Object gpu = Napi::Object::New(env);
  gpu.Set("sizeof", Napi::Number::New(env, sizeof(struct gvm_gpu_block)));
  GVM_OFF(gpu, struct gvm_gpu_block, present);
  GVM_OFF(gpu, struct gvm_gpu_block, ordinal);
  GVM_OFF(gpu, struct gvm_gpu_block, uuid);
  GVM_OFF(gpu, struct gvm_gpu_block, pci_bus_id);
  GVM_OFF(gpu, struct gvm_gpu_block, name);
  GVM_OFF(gpu, struct gvm_gpu_block, total_bytes);
  GVM_OFF(gpu, struct gvm_gpu_block, memory_limit);
  GVM_OFF(gpu, struct gvm_gpu_block, memory_mode);
  GVM_OFF(gpu, struct gvm_gpu_block, priority);
  GVM_OFF(gpu, struct gvm_gpu_block, frozen);
  GVM_OFF(gpu, struct gvm_gpu_block, contexts);
  GVM_OFF(gpu, struct gvm_gpu_block, memory_current);
  GVM_OFF(gpu, struct gvm_gpu_block, memory_swap_current);
  GVM_OFF(gpu, struct gvm_gpu_block, memory_peak);
  GVM_OFF(gpu, struct gvm_gpu_block, managed_bytes);
  GVM_OFF(gpu, struct gvm_gpu_block, host_bytes);
  GVM_OFF(gpu, struct gvm_gpu_block, kernels_submitted);
  GVM_OFF(gpu, struct gvm_gpu_block, kernels_ended);
  GVM_OFF(gpu, struct gvm_gpu_block, alloc_count);
  GVM_OFF(gpu, struct gvm_gpu_block, free_count);
  GVM_OFF(gpu, struct gvm_gpu_block, alloc_failures);
  GVM_OFF(gpu, struct gvm_gpu_block, updated_ns);
  GVM_OFF(gpu, struct gvm_gpu_block, rm_seq);
  GVM_OFF(gpu, struct gvm_gpu_block, rm_fd);
  GVM_OFF(gpu, struct gvm_gpu_block, rm_client);
  GVM_OFF(gpu, struct gvm_gpu_block, rm_device);
  GVM_OFF(gpu, struct gvm_gpu_block, rm_subdevice);
  GVM_OFF(gpu, struct gvm_gpu_block, tsg_count);
  GVM_OFF(gpu, struct gvm_gpu_block, channel_count);
  GVM_OFF(gpu, struct gvm_gpu_block, tsg);
  GVM_OFF(gpu, struct gvm_gpu_block, channel);
  root.Set("gpuBlock", gpu);

  Napi::Object tsg = Napi::Object::New(env);
  tsg.Set("sizeof", Napi::Number::New(env, sizeof(struct gvm_tsg_info)));
  GVM_OFF(tsg, struct gvm_tsg_info, handle);
  GVM_OFF(tsg, struct gvm_tsg_info, engine_type);
  GVM_OFF(tsg, struct gvm_tsg_info, channel_count);
  GVM_OFF(tsg, struct gvm_tsg_info, parent);
  GVM_OFF(tsg, struct gvm_tsg_info, timeslice_us);
  root.Set("tsgInfo", tsg);

  Napi::Object ch = Napi::Object::New(env);
  ch.Set("sizeof", Napi::Number::New(env, sizeof(struct gvm_channel_info)));
  GVM_OFF(ch, struct gvm_channel_info, handle);
  GVM_OFF(ch, struct gvm_channel_info, tsg);
  GVM_OFF(ch, struct gvm_channel_info, class_id);
  root.Set("channelInfo", ch);

  Napi::Object k = Napi::Object::New(env);
  k.Set("magic", Napi::Number::New(env, GVM_CB_MAGIC));
  k.Set("versionMajor", Napi::Number::New(env, GVM_CB_VERSION_MAJOR));
  k.Set("versionMinor", Napi::Number::New(env, GVM_CB_VERSION_MINOR));
  k.Set("maxGpus", Napi::Number::New(env, GVM_MAX_GPUS));
  k.Set("maxTsgs", Napi::Number::New(env, GVM_MAX_TSGS));
  k.Set("maxChannels", Napi::Number::New(env, GVM_MAX_CHANNELS));
  k.Set("cmdlineMax", Napi::Number::New(env, GVM_CMDLINE_MAX));
  k.Set("messageMax", Napi::Number::New(env, GVM_MESSAGE_MAX));
  root.Set("constants", k);
  return root;
}

#undef GVM_OFF

// --- processStartTime(pid): /proc/<pid>/stat field 22, or null when the process is gone --------

static Napi::Value ProcessStartTime(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t pid = ArgU32(info, 0, "processStartTime", "pid", INT32_MAX);
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ESRCH) return env.Null();
    ThrowErrno(env, errno, "open " + path);
  }
  char buf[4096];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) {
    if (err == ESRCH) return env.Null();  // the process exited between open and read
    ThrowErrno(env, err, "read " + path);
  }
  buf[n] = '\0';
  // comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
  char* p = strrchr(buf, ')');
  if (p == nullptr) Throw(env, kIo, "unexpected format in " + path);
  p++;
  // After ')' come fields 3 (state) .. ; field 22 is the 20th of them.
  for (int field = 3; field < 22; field++) {
    while (*p == ' ') p++;
    while (*p != ' ' && *p != '\0') p++;
    if (*p == '\0') Throw(env, kIo, "unexpected format in " + path);
  }
  while (*p == ' ') p++;
  char* end = nullptr;
  errno = 0;
  unsigned long long ticks = strtoull(p, &end, 10);
  if (end == p || errno != 0) Throw(env, kIo, "unexpected format in " + path);
  return Napi::Number::New(env, static_cast<double>(ticks));
}

// --- block owners across PID namespaces (block_owner.h) ------------------------------------------

// pidNamespace(): this process's PID namespace inode (0 if unknown).
static Napi::Value PidNamespace(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(SelfPidNs()));
}

// blockName(pid): the block file name of a process of this namespace, or null when there is none.
static Napi::Value BlockName(const Napi::CallbackInfo& info) {
  uint32_t pid = ArgU32(info, 0, "blockName", "pid", INT32_MAX);
  std::string name = BlockNameFor(static_cast<int>(pid));
  return name.empty() ? info.Env().Null() : Napi::String::New(info.Env(), name);
}

// parseBlockName(name): {pid, ns} (ns 0 for a plain "<pid>"), or null when it is not a block name.
static Napi::Value ParseBlockNameFn(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "parseBlockName", "name");
  int pid = 0;
  uint64_t ns = 0;
  if (!ParseBlockName(name.c_str(), &pid, &ns)) return info.Env().Null();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), pid));
  o.Set("ns", Napi::Number::New(info.Env(), static_cast<double>(ns)));
  return o;
}

// pidHere(nspid, ns, startTime, ownerAlive): the pid here of a block's process, 0 when it is not
// visible here (block_owner.h).
static Napi::Value PidHereFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t nspid = ArgU32(info, 0, "pidHere", "nspid", INT32_MAX);
  if (info.Length() < 4 || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsBoolean())
    Throw(env, kInvalid, "pidHere: ns and startTime must be numbers, ownerAlive a boolean");
  double ns = info[1].As<Napi::Number>().DoubleValue(), start = info[2].As<Napi::Number>().DoubleValue();
  if (!(ns >= 0) || !(start >= 0)) Throw(env, kInvalid, "pidHere: ns and startTime must not be negative");
  return Napi::Number::New(env, PidHere(static_cast<int>(nspid), static_cast<uint64_t>(ns), static_cast<uint64_t>(start),
                                        info[3].As<Napi::Boolean>().Value()));
}

// ownerLockHeld(file): true/false whether the owner lock on byte 0 is held; null when it cannot be
// tested (no such regular file, or the file system has no OFD locks).
static Napi::Value OwnerLockHeldFn(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "ownerLockHeld", "file");
  // O_NONBLOCK: a FIFO planted under a block's name must not hang the open
  int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return info.Env().Null();
  struct stat st {};
  int held = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? OwnerLockHeld(fd) : -1;
  close(fd);
  return held < 0 ? info.Env().Null() : Napi::Boolean::New(info.Env(), held == 1);
}

static Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) Throw(info.Env(), kInvalid, "setErrorClass: errorClass must be a function");
  AddonData* data = Data(info.Env());
  data->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

static Napi::Value LayoutFn(const Napi::CallbackInfo& info) { return Layout(info.Env()); }

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted by node-addon-api when the environment goes away
  exports.Set("ControlBlock", InitControlBlock(env, data));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  exports.Set("layout", Napi::Function::New(env, LayoutFn, "layout"));
  exports.Set("processStartTime", Napi::Function::New(env, ProcessStartTime, "processStartTime"));
  exports.Set("pidNamespace", Napi::Function::New(env, PidNamespace, "pidNamespace"));
  exports.Set("blockName", Napi::Function::New(env, BlockName, "blockName"));
  exports.Set("parseBlockName", Napi::Function::New(env, ParseBlockNameFn, "parseBlockName"));
  exports.Set("pidHere", Napi::Function::New(env, PidHereFn, "pidHere"));
  exports.Set("ownerLockHeld", Napi::Function::New(env, OwnerLockHeldFn, "ownerLockHeld"));
  return exports;
}

}  // namespace gvm

static Napi::Object InitGvm(Napi::Env env, Napi::Object exports) { return gvm::Init(env, exports); }

NODE_API_MODULE(gvm, InitGvm)
