// gvmd's log from FUSE threads: each line goes to JavaScript through a thread-safe function (or to
// standard error before one is set, or after it is released). Never blocks a FUSE thread.
#pragma once

#include <napi.h>

namespace gvm {
namespace fuse {

// Lines go to `sink(line)` on the JS thread from now on. Call on the JS thread.
void SetLogSink(Napi::Env env, Napi::Function sink);
// Lines go to standard error again; releases the thread-safe function. Call on the JS thread.
void ReleaseLogSink();

void Log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace fuse
}  // namespace gvm
