"""Shared helpers for the GPU compatibility workloads (train_loop.py, cuda_graph.py, generate.py).

Every workload:
  * prints `PID <pid>` first, then `AGENT loaded=<0|1> block=<0|1>` (is libgvm.so mapped into this
    process; does its control block exist),
  * prints `MEMCHECK ...` and, under the agent, `KERNELS <n>` at one checkpoint after warm-up,
  * prints `RESULT <sha256>` as its last line on success and exits 0; any failure exits non-zero with
    a `FAIL: ...` line on stderr.

The memory check compares three views at the checkpoint (after torch.cuda.synchronize()):
  gvm           the agent's memory.current, read with `gvm get <pid> memory.current` (the CLI command is
                taken from $GVM_CLI, default `node dist/cli/gvm.js`); only when GVM_CHECK_MEMORY=1
  reserved      torch.cuda.memory_reserved(): what the caching allocator holds from the driver
  driver_delta  used bytes from torch.cuda.mem_get_info() minus the same figure taken right after the
                CUDA context was created, before any tensor existed (includes lazily loaded kernel
                code, cuBLAS handles, graph exec memory; and any other process on the GPU)
The control block (/dev/shm/gvm/<pid>) is also read directly as a cross-check of the CLI (`shm=`).
"""

import hashlib
import os
import re
import shlex
import struct
import subprocess
import sys
import time

# must be in place before cuBLAS initialises; the runner sets it too
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# control block layout (include/gvm/control_block.h, major version 1)
CB_MAGIC = 0x434D5647
CB_GPU_ARRAY = 4096
CB_GPU_BLOCK = 8192
GPU_MEMORY_CURRENT = 136
GPU_KERNELS_SUBMITTED = 176
GPU_KERNELS_ENDED = 184
GPU_UPDATED_NS = 216


def log(msg):
    print(msg, flush=True)


def fail(msg, code=2):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def announce():
    """Print PID and whether the agent is in this process. Call first."""
    log(f"PID {os.getpid()}")
    loaded = 0
    try:
        with open("/proc/self/maps") as f:
            loaded = int(any("libgvm" in line for line in f))
    except OSError:
        pass
    log(f"AGENT loaded={loaded} preload={os.environ.get('LD_PRELOAD', '') or '-'}")
    return loaded


def block_path(pid=None):
    return os.path.join(os.environ.get("GVM_SHM_DIR", "/dev/shm/gvm"), str(pid or os.getpid()))


def read_block(gpu=0, pid=None):
    """Read counters straight from the control block; None when it is missing or unreadable."""
    try:
        with open(block_path(pid), "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            magic, major, _minor = struct.unpack("<IHH", head)
            if magic != CB_MAGIC or major != 1:
                return {"error": f"bad magic/version {magic:#x}/{major}"}
            f.seek(CB_GPU_ARRAY + gpu * CB_GPU_BLOCK)
            g = f.read(GPU_UPDATED_NS + 8)
            if len(g) < GPU_UPDATED_NS + 8:
                return {"error": "short block"}
    except OSError:
        return None

    def u64(off):
        return struct.unpack_from("<Q", g, off)[0]

    return {
        "present": struct.unpack_from("<I", g, 0)[0],
        "memory_current": u64(GPU_MEMORY_CURRENT),
        "kernels_submitted": u64(GPU_KERNELS_SUBMITTED),
        "kernels_ended": u64(GPU_KERNELS_ENDED),
        "updated_ns": u64(GPU_UPDATED_NS),
    }


def _cli_cmd():
    return shlex.split(os.environ.get("GVM_CLI", "node dist/cli/gvm.js"))


def _cli_env():
    # the CLI must not run under the agent itself (it would create a block of its own)
    env = dict(os.environ)
    pre = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "libgvm" not in p]
    if pre:
        env["LD_PRELOAD"] = " ".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop("GVM_CHECK_MEMORY", None)
    return env


def gvm_get(key, target=None, timeout=30):
    """Run `gvm get <pid> <key>`; returns (int or None, error text or None)."""
    cmd = _cli_cmd() + ["get", str(target or os.getpid()), key]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_cli_env())
    except FileNotFoundError as e:
        return None, f"cannot start {cmd[0]}: {e}"
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` timed out after {timeout}s"
    out = p.stdout.strip()
    if p.returncode != 0:
        err = [ln.strip() for ln in (p.stderr.strip() or out).splitlines() if ln.strip()]
        pick = next((ln for ln in err if "rror" in ln or ln.startswith("gvm:")), err[0] if err else "")
        return None, f"`{' '.join(cmd)}` exited {p.returncode}: {pick[:300]}"
    for line in out.splitlines():
        m = re.match(r"^\s*(\d+)\s*(B|bytes)?\s*$", line)
        if m:
            return int(m.group(1)), None
    m = re.findall(r"\b(\d+)\b", out)
    if m:
        return int(m[-1]), None
    return None, f"`{' '.join(cmd)}` printed no number: {out[:200]!r}"


def driver_used(torch):
    free, total = torch.cuda.mem_get_info()
    return total - free


def context_baseline(torch):
    """Create the CUDA context and take the driver's used-bytes baseline, before any tensor."""
    if not torch.cuda.is_available():
        fail("torch.cuda.is_available() is False: no usable GPU/driver for PyTorch")
    torch.cuda.init()
    base = driver_used(torch)
    log(f"BASELINE driver_used={base} device={torch.cuda.get_device_name(0)} "
        f"alloc_conf={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '') or 'default'}")
    return base


def memcheck(torch, baseline, label="checkpoint"):
    """Print MEMCHECK (always) and KERNELS (under the agent) at a quiescent point."""
    torch.cuda.synchronize()
    t_sync = time.monotonic_ns()
    delta = driver_used(torch) - baseline
    reserved = torch.cuda.memory_reserved()
    allocated = torch.cuda.memory_allocated()
    if os.environ.get("GVM_CHECK_MEMORY") != "1":
        log(f"MEMCHECK gvm=na reserved={reserved} driver_delta={delta} allocated={allocated} "
            f"label={label}")
        return
    # if the agent publishes from a control thread, wait for a publish after this point (<= 3 s)
    blk = read_block()
    deadline = time.monotonic() + 3.0
    while blk and "error" not in blk and 0 < blk["updated_ns"] < t_sync and time.monotonic() < deadline:
        time.sleep(0.05)
        blk = read_block()
    gvm, err = gvm_get("memory.current")
    # counters should be still now (nothing runs); read again to catch a late publish
    if gvm is not None:
        for _ in range(4):
            time.sleep(0.1)
            again, _ = gvm_get("memory.current")
            if again is None or again == gvm:
                break
            gvm = again
    if err:
        log(f"GVMCLI_ERROR memory.current: {err}")
    blk = read_block()
    if blk is None:
        shm = "missing"
    elif "error" in blk:
        shm = "bad"
        log(f"GVMBLOCK_ERROR {blk['error']}")
    else:
        shm = str(blk["memory_current"])
    source = "cli" if gvm is not None else ("shm" if shm.isdigit() else "none")
    if gvm is None and shm.isdigit():
        gvm = int(shm)
    log(f"MEMCHECK gvm={gvm if gvm is not None else 'na'} reserved={reserved} driver_delta={delta} "
        f"allocated={allocated} shm={shm} source={source} label={label}")
    kern, kerr = gvm_get("kernels.submitted")
    if kerr:
        log(f"GVMCLI_ERROR kernels.submitted: {kerr}")
        if blk and "error" not in blk:
            kern = blk["kernels_submitted"]
    ended, _ = gvm_get("kernels.ended")
    if ended is None and blk and "error" not in blk:
        ended = blk["kernels_ended"]
    log(f"KERNELS {kern if kern is not None else 'na'} ended={ended if ended is not None else 'na'}")


class Hasher:
    """sha256 over tensors' raw bytes (moved to the CPU in a fixed order) and plain values."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def tensor(self, name, t):
        import torch

        t = t.detach().contiguous().cpu().reshape(-1)
        self.h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        self.h.update(t.view(torch.uint8).numpy().tobytes())
        self.n += 1

    def module(self, prefix, mod):
        for name, p in sorted(mod.state_dict().items()):
            self.tensor(f"{prefix}.{name}", p)

    def hexdigest(self):
        return self.h.hexdigest()


def setup_determinism(torch, seed, warn_only=False):
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    log(f"DETERMINISM strict={not warn_only} seed={seed} "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}")
