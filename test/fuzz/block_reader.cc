// Fuzz target (b): a controller reading a control block file that may hold anything. Drives gvmd's
// reader (native/fuse_blocks.cc: open, size and identity checks, the mapping) and everything gvmd's
// file tree prints from a mapped block (native/fuse_files.cc ProcessFileText / GpuTotals, the PCI
// bus id parsing of MachineIndex). The N-API ControlBlock (native/control_block.cc) is exercised by
// test/fuzz.test.ts through the built addon instead.
//
// Input: [0] flags: bit 0 start from a valid block (gpu 0 and 1 present), bit 1 stamp this process's
//            identity (magic, version, pid, start time) after the patches so the deep paths are
//            reached, bit 2 make the file a FIFO instead (a reader must not block on it)
//        [1..4] file length, little-endian: bit 31 set = exactly sizeof(gvm_control_block), else the
//            low bits modulo sizeof + 2 pages (truncated and oversized files)
//        then patches: u32 offset (modulo the block size), u8 length, that many bytes
// Checked: no crash, no hang, no out-of-bounds read (ASan), printed values are one terminated line
// per field; a block whose identity is not ours is never returned.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../../native/fuse_blocks.h"
#include "../../native/fuse_files.h"
#include "../../native/map_guard.h"
#if __has_include("../../native/block_owner.h")
#include "../../native/block_owner.h"  // a process in a container names its block "<pid>@<pid_ns>"
#define GVM_FUZZ_BLOCK_NAME(pid) gvm::BlockNameFor(pid)
#else
#define GVM_FUZZ_BLOCK_NAME(pid) std::to_string(pid)
#endif

using namespace gvm::fuse;

namespace {

std::string g_dir;

void Fail(const char* what) {
  fprintf(stderr, "block_reader: %s\n", what);
  abort();
}

uint32_t U32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/gvm-fuzz-XXXXXX";
  if (!mkdtemp(tmpl)) Fail("mkdtemp");
  g_dir = tmpl;
  std::string gpus = g_dir + "/nvidia-gpus";
  mkdir(gpus.c_str(), 0755);
  // the machine's GPUs as the driver lists them, so MachineIndex has an order to look bus ids up in
  for (const char* bus : {"0000:41:00.0", "0000:81:00.0", "0000:0a:00.0"}) mkdir((gpus + "/" + bus).c_str(), 0755);
  setenv("GVM_NVIDIA_PROC_DIR", gpus.c_str(), 1);
  std::string shm = g_dir + "/shm";
  mkdir(shm.c_str(), 0755);
  Configure(shm);
  // the temporary directory goes with the process (replay and fuzzer alike)
  atexit([] { std::string cmd = "rm -rf '" + g_dir + "'"; if (system(cmd.c_str())) {} });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const size_t kBlock = sizeof(struct gvm_control_block);
  const int pid = static_cast<int>(getpid());
  const uint64_t start = StartTimeOf(pid);
  uint8_t flags = data[0];
  uint32_t lenField = U32(data + 1);
  size_t length = (lenField & 0x80000000u) ? kBlock : lenField % (kBlock + 8192);

  static uint8_t* image = static_cast<uint8_t*>(malloc(kBlock + 8192));
  memset(image, 0, kBlock + 8192);
  auto* cb = reinterpret_cast<struct gvm_control_block*>(image);
  auto stamp = [&] {
    cb->magic = GVM_CB_MAGIC;
    cb->version_major = GVM_CB_VERSION_MAJOR;
    cb->pid = pid;
    cb->start_time = start;
  };
  if (flags & 1) {
    stamp();
    cb->version_minor = GVM_CB_VERSION_MINOR;
    cb->size = kBlock;
    cb->gpu_block_size = sizeof(struct gvm_gpu_block);
    for (int g = 0; g < 2; g++) {
      cb->gpu[g].present = 1;
      cb->gpu[g].ordinal = g;
      snprintf(cb->gpu[g].pci_bus_id, sizeof cb->gpu[g].pci_bus_id, "0000:%02x:00.0", g ? 0x81 : 0x41);
      snprintf(cb->gpu[g].name, sizeof cb->gpu[g].name, "NVIDIA H100");
      cb->gpu[g].total_bytes = 80ull << 30;
      cb->gpu[g].memory_limit = 8ull << 30;
    }
  }
  for (size_t at = 5; at + 5 <= size;) {
    uint32_t off = U32(data + at) % kBlock;
    size_t n = data[at + 4];
    at += 5;
    if (n > size - at) n = size - at;
    if (n > kBlock - off) n = kBlock - off;
    memcpy(image + off, data + at, n);
    at += n;
  }
  if (flags & 2) stamp();

  static const std::string name = GVM_FUZZ_BLOCK_NAME(pid);
  const std::string path = ShmDir() + "/" + name;
  unlink(path.c_str());
  if (flags & 4) {
    if (mkfifo(path.c_str(), 0644) != 0) Fail("mkfifo");
  } else {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) Fail("create block file");
    if (write(fd, image, length) != static_cast<ssize_t>(length)) Fail("write block file");
    close(fd);
  }

  BlockRef b = Find(pid, true);
  if (flags & 4) {
    if (b) Fail("a FIFO was taken for a block");
  } else if (b) {
    if (length < kBlock) Fail("a truncated file was taken for a block");
    if (b->cb->magic != GVM_CB_MAGIC || b->cb->pid != pid || b->cb->start_time != start) Fail("foreign identity accepted");
    for (int s = 0; s < GVM_MAX_GPUS; s++) {
      const struct gvm_gpu_block* g = &b->cb->gpu[s];
      if (!GVM_LOAD(&g->present)) continue;
      for (const auto& f : ProcessFiles()) {
        std::string text = ProcessFileText(g, f);
        if (text.empty() || text.back() != '\n' || text.find('\0') != std::string::npos) Fail("bad file text");
      }
      GpuTotals t;
      t.Add(g);
      for (const char* name : GpuFiles()) {
        std::string text = GpuFileText(t, name);
        if (text.empty() || text.back() != '\n') Fail("bad gpu file text");
      }
      int index = MachineIndex(g);
      if (SlotOf(*b, index) < 0) Fail("a present GPU's index maps to no slot");
    }
    for (int index = -2; index < 4; index++) SlotOf(*b, index);
    // The block's owner may shrink the file while gvmd has it mapped (native/map_guard.h): reading
    // past the new end must not kill the reader (it was a SIGBUS), and the block must be dropped.
    const size_t cut = U32(data) % kBlock;
    if (truncate(path.c_str(), static_cast<off_t>(cut)) != 0) Fail("truncate");
    uint64_t sum = 0;
    for (int s = 0; s < GVM_MAX_GPUS; s++) sum += GVM_LOAD(&b->cb->gpu[s].memory_current) + GVM_LOAD(&b->cb->gpu[s].present);
    (void)sum;
    const size_t lastRead = offsetof(struct gvm_control_block, gpu[GVM_MAX_GPUS - 1].memory_current);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    if (cut <= lastRead / page * page && !gvm::MappingTruncated(b->guard)) Fail("a read past the new end was not caught");
    if (gvm::MappingTruncated(b->guard) && Find(pid) != nullptr) Fail("a block shrunk under its mapping is still served");
  }
  LivePids();
  GpuIndexes();
  unlink(path.c_str());
  Find(pid, true);  // forget the mapping before the next input
  return 0;
}
