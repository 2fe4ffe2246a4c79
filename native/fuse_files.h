// The files of gvmd's tree: their names, what a read of each prints, and what a write to each takes.
// Pure functions over a control block; no FUSE and no N-API here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gvm/control_block.h"

namespace gvm {
namespace fuse {

// processes/<pid>/<gpu>/<name>
struct ProcessFile {
  const char* name;
  bool writable;
  uint32_t key;  // the command key of a writable file
};

const std::vector<ProcessFile>& ProcessFiles();
const ProcessFile* FindProcessFile(const std::string& name);

// gpus/<gpu>/<name>
const std::vector<const char*>& GpuFiles();
bool IsGpuFile(const std::string& name);

// The text of a process file: the value and a newline; gcgroup.stat is "key value" lines.
std::string ProcessFileText(const struct gvm_gpu_block* g, const ProcessFile& file);

// Totals of one GPU over the processes that see it.
struct GpuTotals {
  std::string name;
  uint64_t totalBytes = 0, usedBytes = 0, swapBytes = 0, processes = 0, submitted = 0, pending = 0;
  void Add(const struct gvm_gpu_block* g);
};
std::string GpuFileText(const GpuTotals& t, const std::string& file);

// A written value as GVM's files take it (surrounding white space ignored). False: EINVAL.
// memory.limit: bytes with an optional K/M/G/T suffix (binary), 1..total; compute.priority 0..15;
// compute.freeze 0 or 1; memory.mode oom or swap.
bool ParseValue(const ProcessFile& file, const std::string& text, uint64_t totalBytes, uint64_t* value);

}  // namespace fuse
}  // namespace gvm
