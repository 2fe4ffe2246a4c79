// What each file of gvmd's tree reads as, and what a write to it may say.
#include "fuse_files.h"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace gvm {
namespace fuse {
namespace {

std::string Line(uint64_t v) { return std::to_string(v) + "\n"; }

bool AllDigits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A decimal integer that fits uint64_t. Not "at most 19 digits": a limit written as 16777215T reads
// back as 20 digits, and what a read prints must be writable again.
bool ParseUnsigned(const std::string& s, uint64_t* out) {
  if (!AllDigits(s)) return false;
  uint64_t v = 0;
  for (char c : s) {
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;  // overflow: 99999999999999999999 and longer
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

// Bytes with an optional binary suffix: 8G, 512M, 1024K, 1T, 4096 (also KB/KiB and so on).
bool ParseBytes(std::string s, uint64_t* out) {
  std::string unit;
  while (!s.empty() && isalpha(static_cast<unsigned char>(s.back()))) {
    unit.insert(unit.begin(), static_cast<char>(toupper(static_cast<unsigned char>(s.back()))));
    s.pop_back();
  }
  int shift = 0;
  if (unit == "K" || unit == "KB" || unit == "KIB") shift = 10;
  else if (unit == "M" || unit == "MB" || unit == "MIB") shift = 20;
  else if (unit == "G" || unit == "GB" || unit == "GIB") shift = 30;
  else if (unit == "T" || unit == "TB" || unit == "TIB") shift = 40;
  else if (!unit.empty()) return false;
  uint64_t v = 0;
  if (!ParseUnsigned(s, &v) || v > (UINT64_MAX >> shift)) return false;
  *out = v << shift;
  return true;
}

}  // namespace

const std::vector<ProcessFile>& ProcessFiles() {
  static const std::vector<ProcessFile> files = {
      {"memory.limit", true, GVM_KEY_MEMORY_LIMIT},
      {"memory.current", false, 0},
      {"memory.swap.current", false, 0},
      {"memory.mode", true, GVM_KEY_MEMORY_MODE},
      {"compute.priority", true, GVM_KEY_COMPUTE_PRIORITY},
      {"compute.freeze", true, GVM_KEY_COMPUTE_FREEZE},
      {"gcgroup.stat", false, 0},
  };
  return files;
}

const ProcessFile* FindProcessFile(const std::string& name) {
  for (const auto& f : ProcessFiles())
    if (name == f.name) return &f;
  return nullptr;
}

const std::vector<const char*>& GpuFiles() {
  static const std::vector<const char*> files = {"name",      "memory.total",      "memory.used",    "memory.swap",
                                                 "processes", "kernels.submitted", "kernels.pending"};
  return files;
}

bool IsGpuFile(const std::string& name) {
  const auto& f = GpuFiles();
  return std::any_of(f.begin(), f.end(), [&](const char* n) { return name == n; });
}

std::string ProcessFileText(const struct gvm_gpu_block* g, const ProcessFile& file) {
  const std::string name = file.name;
  if (name == "memory.limit") return Line(GVM_LOAD(&g->memory_limit));
  if (name == "memory.current") return Line(GVM_LOAD(&g->memory_current));
  if (name == "memory.swap.current") return Line(GVM_LOAD(&g->memory_swap_current));
  if (name == "memory.mode") return GVM_LOAD(&g->memory_mode) == GVM_MEMORY_MODE_SWAP ? "swap\n" : "oom\n";
  if (name == "compute.priority") return std::to_string(GVM_LOAD(&g->priority)) + "\n";
  if (name == "compute.freeze") return GVM_LOAD(&g->frozen) ? "1\n" : "0\n";
  // gcgroup.stat: GVM's three fields first, then gvm's own
  uint64_t sub = GVM_LOAD(&g->kernels_submitted), end = GVM_LOAD(&g->kernels_ended);
  if (end > sub) end = sub;  // two loads, not one snapshot: never print a negative pending count
  std::string s;
  auto add = [&s](const char* k, uint64_t v) { s += std::string(k) + " " + std::to_string(v) + "\n"; };
  add("nr_submitted_kernels", sub);
  add("nr_ended_kernels", end);
  add("nr_pending_kernels", sub - end);
  add("memory_current", GVM_LOAD(&g->memory_current));
  add("memory_limit", GVM_LOAD(&g->memory_limit));
  add("memory_swap_current", GVM_LOAD(&g->memory_swap_current));
  add("memory_peak", GVM_LOAD(&g->memory_peak));
  add("nr_allocs", GVM_LOAD(&g->alloc_count));
  add("nr_frees", GVM_LOAD(&g->free_count));
  add("nr_alloc_failures", GVM_LOAD(&g->alloc_failures));
  add("priority", static_cast<uint64_t>(GVM_LOAD(&g->priority)));
  add("frozen", GVM_LOAD(&g->frozen) ? 1 : 0);
  return s;
}

void GpuTotals::Add(const struct gvm_gpu_block* g) {
  name.assign(g->name, strnlen(g->name, sizeof g->name));
  totalBytes = GVM_LOAD(&g->total_bytes);
  usedBytes += GVM_LOAD(&g->memory_current);
  swapBytes += GVM_LOAD(&g->memory_swap_current);
  uint64_t sub = GVM_LOAD(&g->kernels_submitted), end = GVM_LOAD(&g->kernels_ended);
  submitted += sub;
  pending += end > sub ? 0 : sub - end;
  processes++;
}

std::string GpuFileText(const GpuTotals& t, const std::string& file) {
  if (file == "name") return t.name + "\n";
  if (file == "memory.total") return Line(t.totalBytes);
  if (file == "memory.used") return Line(t.usedBytes);
  if (file == "memory.swap") return Line(t.swapBytes);
  if (file == "processes") return Line(t.processes);
  if (file == "kernels.pending") return Line(t.pending);
  return Line(t.submitted);
}

bool ParseValue(const ProcessFile& file, const std::string& raw, uint64_t totalBytes, uint64_t* value) {
  size_t first = raw.find_first_not_of(" \t\r\n"), last = raw.find_last_not_of(" \t\r\n");
  const std::string text = first == std::string::npos ? "" : raw.substr(first, last - first + 1);
  switch (file.key) {
    case GVM_KEY_MEMORY_LIMIT:
      return ParseBytes(text, value) && *value >= 1 && (totalBytes == 0 || *value <= totalBytes);
    case GVM_KEY_MEMORY_MODE:
      if (text == "oom") *value = GVM_MEMORY_MODE_OOM;
      else if (text == "swap") *value = GVM_MEMORY_MODE_SWAP;
      else return false;
      return true;
    case GVM_KEY_COMPUTE_PRIORITY:
      return ParseUnsigned(text, value) && *value <= 15;
    case GVM_KEY_COMPUTE_FREEZE:
      return ParseUnsigned(text, value) && *value <= 1;
    default:
      return false;
  }
}

}  // namespace fuse
}  // namespace gvm
