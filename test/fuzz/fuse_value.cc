// Fuzz target (c): what a write to a file of gvmd's tree may say (native/fuse_files.cc ParseValue):
// sizes with K/M/G/T suffixes, priorities, freeze 0/1, memory modes, surrounding white space,
// overflow, signs, empty text, embedded NUL bytes.
//
// Input: [0] which file (modulo the process files), [1..8] the GPU's total bytes (little-endian;
//        0 = unknown), then the written text, raw.
// Checked against an independent reading of the same rules: an accepted value is in range and is
// what the text says; a rejected text really breaks a rule; and the canonical spelling of an accepted
// value (decimal, or the mode's name, with a newline as `echo` writes it) parses back to the same value.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../../native/fuse_files.h"

using namespace gvm::fuse;

namespace {

void Fail(const char* what, const std::string& text, uint64_t got) {
  fprintf(stderr, "fuse_value: %s: \"", what);
  for (unsigned char c : text) fprintf(stderr, c >= 32 && c < 127 ? "%c" : "\\x%02x", c);
  fprintf(stderr, "\" -> %llu\n", static_cast<unsigned long long>(got));
  abort();
}

bool Space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// The reference: digits (any number, as long as the value fits 64 bits, checked with 128-bit
// arithmetic) and a suffix.
bool Reference(const ProcessFile& f, std::string t, uint64_t total, uint64_t* out) {
  while (!t.empty() && Space(t.back())) t.pop_back();
  size_t i = 0;
  while (i < t.size() && Space(t[i])) i++;
  t = t.substr(i);
  if (f.key == GVM_KEY_MEMORY_MODE) {
    if (t == "oom") *out = GVM_MEMORY_MODE_OOM;
    else if (t == "swap") *out = GVM_MEMORY_MODE_SWAP;
    else return false;
    return true;
  }
  size_t d = 0;
  while (d < t.size() && t[d] >= '0' && t[d] <= '9') d++;
  if (d == 0) return false;
  unsigned __int128 v = 0;
  for (size_t k = 0; k < d; k++) {
    v = v * 10 + static_cast<unsigned>(t[k] - '0');
    if (v > UINT64_MAX) return false;
  }
  std::string unit = t.substr(d);
  for (char& c : unit) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  int shift = -1;
  if (unit.empty()) shift = 0;
  for (const char* u : {"K", "KB", "KIB"}) if (unit == u) shift = 10;
  for (const char* u : {"M", "MB", "MIB"}) if (unit == u) shift = 20;
  for (const char* u : {"G", "GB", "GIB"}) if (unit == u) shift = 30;
  for (const char* u : {"T", "TB", "TIB"}) if (unit == u) shift = 40;
  if (f.key != GVM_KEY_MEMORY_LIMIT && shift != 0) return false;
  if (shift < 0) return false;
  v <<= shift;
  if (v > UINT64_MAX) return false;
  *out = static_cast<uint64_t>(v);
  switch (f.key) {
    case GVM_KEY_MEMORY_LIMIT: return *out >= 1 && (total == 0 || *out <= total);
    case GVM_KEY_COMPUTE_PRIORITY: return *out <= 15;
    case GVM_KEY_COMPUTE_FREEZE: return *out <= 1;
    default: return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 9) return 0;
  const auto& files = ProcessFiles();
  const ProcessFile& f = files[data[0] % files.size()];
  uint64_t total = 0;
  memcpy(&total, data + 1, 8);
  const std::string text(reinterpret_cast<const char*>(data + 9), size - 9);
  uint64_t got = 0xdeadbeef, want = 0;
  bool ok = ParseValue(f, text, total, &got);
  bool ref = f.writable && Reference(f, text, total, &want);
  if (ok != ref) Fail(ok ? "accepted what the rules refuse" : "refused what the rules accept", text, got);
  if (!ok) return 0;
  if (got != want) Fail("parsed to another value", text, got);
  uint64_t again = 0;
  const std::string canonical =
      f.key == GVM_KEY_MEMORY_MODE ? (got == GVM_MEMORY_MODE_SWAP ? "swap\n" : "oom\n") : std::to_string(got) + "\n";
  if (!ParseValue(f, canonical, total, &again) || again != got)
    Fail("the canonical spelling does not parse back", text, got);
  return 0;
}
