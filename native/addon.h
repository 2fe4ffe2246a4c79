// gvm N-API addon: shared declarations. The addon stays thin: it maps control blocks and reads or
// writes their fields; the API design lives in lib/ (TypeScript).
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace gvm {

// Per-environment state (one per main thread or worker_thread), never global.
struct AddonData {
  Napi::FunctionReference errorClass;  // GvmError, handed over by lib/native.ts via setErrorClass()
  Napi::FunctionReference controlBlockClass;
};

AddonData* Data(Napi::Env env);

// Error codes the addon throws (a subset of lib/errors.ts GvmErrorCode).
constexpr const char* kNotFound = "EGVM_NOT_FOUND";
constexpr const char* kPermission = "EGVM_PERMISSION";
constexpr const char* kInvalid = "EGVM_INVALID";
constexpr const char* kVersion = "EGVM_VERSION";
constexpr const char* kTimeout = "EGVM_TIMEOUT";
constexpr const char* kClosed = "EGVM_CLOSED";
constexpr const char* kIo = "EGVM_IO";

// An instance of the registered error class (or a plain Error with .code before registration).
Napi::Error MakeError(Napi::Env env, const char* code, const std::string& message);
[[noreturn]] void Throw(Napi::Env env, const char* code, const std::string& message);
// Maps errno: ENOENT -> EGVM_NOT_FOUND, EACCES/EPERM -> EGVM_PERMISSION, else EGVM_IO.
const char* CodeForErrno(int err);
std::string ErrnoText(int err);
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& what);

// Argument checks: one place, so every message reads "<fn>: <name> must be <what>".
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name,
                uint32_t max = UINT32_MAX);
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);

// 64-bit values: numbers (exact below 2^53), except nanosecond clocks, which are bigints.
Napi::Value U64Number(Napi::Env env, uint64_t v);

Napi::Function InitControlBlock(Napi::Env env, AddonData* data);
Napi::Object Layout(Napi::Env env);

}  // namespace gvm
