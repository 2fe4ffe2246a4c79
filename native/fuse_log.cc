// Log lines from FUSE threads to JavaScript (a Napi::ThreadSafeFunction).
#include "fuse_log.h"

#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>

namespace gvm {
namespace fuse {
namespace {

std::mutex g_lock;
Napi::ThreadSafeFunction g_sink;
bool g_hasSink = false;

void CallSink(Napi::Env env, Napi::Function fn, std::string* line) {
  if (env != nullptr && !fn.IsEmpty()) fn.Call({Napi::String::New(env, *line)});
  delete line;
}

}  // namespace

void SetLogSink(Napi::Env env, Napi::Function sink) {
  ReleaseLogSink();
  std::lock_guard<std::mutex> guard(g_lock);
  g_sink = Napi::ThreadSafeFunction::New(env, sink, "gvmd log", 0, 1);
  g_sink.Unref(env);  // the log alone does not keep Node running
  g_hasSink = true;
}

void ReleaseLogSink() {
  std::lock_guard<std::mutex> guard(g_lock);
  if (!g_hasSink) return;
  g_sink.Release();
  g_hasSink = false;
}

void Log(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::lock_guard<std::mutex> guard(g_lock);
  if (g_hasSink) {
    auto* line = new std::string(buf);
    if (g_sink.NonBlockingCall(line, CallSink) == napi_ok) return;
    delete line;
  }
  fprintf(stderr, "gvmd: %s\n", buf);
}

}  // namespace fuse
}  // namespace gvm
