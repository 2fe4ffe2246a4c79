"""A PyTorch loop for the compute checks: prints 'PID n' first, then appends its iteration count to
the file given as argv[1] every iteration. With --init-only-first it initialises the driver and waits
for argv[2] to exist before creating its context (to freeze a process before its first context)."""
import ctypes
import os
import sys
import time

out = sys.argv[1]
if "--init-only-first" in sys.argv:
    ctypes.CDLL("libcuda.so.1").cuInit(0)
    print("PID", os.getpid(), flush=True)
    go = sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.01)
import torch  # noqa: E402

if "--init-only-first" not in sys.argv:
    print("PID", os.getpid(), flush=True)
x = torch.randn(2048, 2048, device="cuda")
i = 0
t_end = time.time() + float(os.environ.get("LOOP_SECONDS", "20"))
while time.time() < t_end:
    x = torch.tanh(x @ x * 1e-3)
    torch.cuda.synchronize()
    i += 1
    with open(out, "w") as f:
        f.write(f"{i} {time.time():.6f}\n")
print("DONE", i, float(x.sum()), flush=True)
