// The control blocks behind gvmd's file tree: which processes are live, and a read-only mapping of
// each one's block. Existence and ownership are cached for a short time (kRescanMs) so a `cat` does
// not rescan the directory; the values themselves are always read live from the shared mapping.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gvm/control_block.h"

namespace gvm {
namespace fuse {

constexpr int64_t kRescanMs = 200;

// One live process's block, mapped read-only for as long as anyone holds it.
struct Block {
  struct gvm_control_block* cb = nullptr;
  int pid = 0;        // the pid here (a container's process: its host pid)
  std::string path;  // the block file ("<pid>", or "<pid in its namespace>@<namespace>")
  uid_t uid = 0;  // the block file's owner: set by the kernel, not by what the block says
  uint64_t startTime = 0;
  int guard = -1;  // map_guard.h slot of the mapping
  ~Block();
};

using BlockRef = std::shared_ptr<const Block>;

// Where the blocks are (GVM_SHM_DIR), and the machine's GPU order; call once before mounting.
void Configure(const std::string& shmDir);
const std::string& ShmDir();

// The block of a live process, or null (no block, not a block, dead process, reused pid).
// fresh: check now, ignoring the cache (writes do).
BlockRef Find(int pid, bool fresh = false);

// Every live process with a block, sorted.
std::vector<int> LivePids();

// /proc/<pid>/stat field 22 (start time in clock ticks), 0 if there is no such process.
uint64_t StartTimeOf(int pid);

// The machine-wide index of a GPU of a block (rank of its PCI bus id among the machine's NVIDIA GPUs,
// as nvidia-smi numbers them), else its CUDA ordinal.
int MachineIndex(const struct gvm_gpu_block* g);

// The block slot of machine GPU `index` in this process, or -1.
int SlotOf(const Block& b, int index);

// Machine indexes of every GPU any live process sees, plus the machine's own GPUs; sorted, unique.
std::vector<int> GpuIndexes();

}  // namespace fuse
}  // namespace gvm
