"""Best-effort side: endless 8192x8192 bf16 matmuls, a sync every 4; appends "time count" after each
sync to --log so the runner can compute TFLOP/s over any window. Prints PID, then READY once warm."""
import argparse
import os
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--log", required=True)
ap.add_argument("--seconds", type=float, default=60.0)
args = ap.parse_args()
print("PID", os.getpid(), flush=True)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(8):
    c = a @ b
torch.cuda.synchronize()
print("READY", flush=True)
n = 0
end = time.time() + args.seconds
with open(args.log, "w", buffering=1) as log:
    while time.time() < end:
        for _ in range(4):
            c = a @ b
        torch.cuda.synchronize()
        n += 4
        log.write(f"{time.time():.6f} {n}\n")
