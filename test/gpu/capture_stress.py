#!/usr/bin/env python3
"""Many CUDA graph captures in a row, as an LLM server's start-up makes them (bench/workloads/
static_engine.py): eager work on the default stream, then torch.cuda.graph (its synchronize, then a
capture on a side stream), each capture held open a few milliseconds so the agent's event thread ticks
inside it. Run under `gvm run --class latency` (whose first launch of a burst wakes the event thread).
The agent must never invalidate a capture: before its fix, 3 of 10 server starts failed on the H200.

Usage: capture_stress.py [ROUNDS, default 150]. Prints `captures N failed N`; exit 1 if any failed.
"""
import sys
import time

import torch

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 150
x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
w = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
failed, first_error = 0, ""
for i in range(rounds):
    for _ in range(8):  # eager work on the default (legacy) stream: counted, marked lazily by the agent
        y = x @ w
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            for _ in range(20):
                y = torch.tanh(x @ w)
            time.sleep(0.004)  # two ticks of the event thread while work is outstanding
        g.replay()
    except Exception as e:  # an invalidated capture: count it, clear the error, go on
        failed += 1
        first_error = first_error or str(e).splitlines()[0]
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(f"captures {rounds} failed {failed}" + (f" (first: {first_error})" if failed else ""), flush=True)
sys.exit(1 if failed else 0)
