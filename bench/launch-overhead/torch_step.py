#!/usr/bin/env python3
"""A PyTorch "step" made of many small kernels, timed on the host side.

One step = --elementwise elementwise ops on 4096-element fp32 tensors (mul, add, tanh in turn) and
--matmuls small 128x128 matmuls (each followed by a tanh), with no synchronisation inside: the step
is bound by launch/dispatch cost, which is what an interposing agent could slow down.
Timing: --warmup steps, then --measures measurements of --steps-per-measure steps each, each
bracketed by torch.cuda.synchronize(); prints the median.

Output: `AGENT loaded=<0|1>`, then
`RESULT variant=torch_step ms=<median ms/step> min=<> max=<> kernels_per_step=<k> reps=<n>`.
"""

import argparse
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elementwise", type=int, default=300)
    ap.add_argument("--matmuls", type=int, default=4)
    ap.add_argument("--numel", type=int, default=4096)
    ap.add_argument("--measures", type=int, default=20)
    ap.add_argument("--steps-per-measure", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()

    with open("/proc/self/maps") as f:
        loaded = int(any("libgvm" in line for line in f))
    print(f"AGENT loaded={loaded}", flush=True)

    import torch

    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x0 = torch.randn(args.numel, device=dev)
    y = torch.randn(args.numel, device=dev)
    m0 = torch.randn(128, 128, device=dev) * 0.1
    w = torch.randn(128, 128, device=dev) * 0.1

    def step(x, m):
        for i in range(args.elementwise):
            k = i % 3
            if k == 0:
                x = x * 0.999
            elif k == 1:
                x = x + y
            else:
                x = torch.tanh(x)
        for _ in range(args.matmuls):
            m = torch.tanh(m @ w)
        return x, m

    kernels = args.elementwise + 2 * args.matmuls
    with torch.inference_mode():
        x, m = x0, m0
        for _ in range(args.warmup):
            x, m = step(x, m)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.measures):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps_per_measure):
                x, m = step(x, m)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3 / args.steps_per_measure)
        if not (torch.isfinite(x).all() and torch.isfinite(m).all()):
            print("FAIL: non-finite values", file=sys.stderr)
            return 1
    print(f"DEVICE name=\"{torch.cuda.get_device_name(0)}\" torch={torch.__version__} pid={os.getpid()}")
    print(f"RESULT variant=torch_step ms={statistics.median(times):.4f} min={min(times):.4f} "
          f"max={max(times):.4f} kernels_per_step={kernels} reps={len(times)}", flush=True)
    print("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
