"""Latency-critical side: every 10 ms a request of 8 back-to-back 2048x2048 bf16 matmuls, then a sync.
Prints PID, warms up, then measures for --seconds and writes {"start","stop","latencies_ms"} to --out.
--graph replays the 8 matmuls as one CUDA graph: the GPU then finds the next kernel queued the moment one
ends, instead of waiting on Python's launch, so a time-sliced neighbour gets no gap to run in."""
import argparse
import json
import os
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=6.0)
ap.add_argument("--out", required=True)
ap.add_argument("--graph", action="store_true")
args = ap.parse_args()
print("PID", os.getpid(), flush=True)
a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
b = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)


def matmuls():
    x = a
    for _ in range(8):
        x = x @ b
    return x


def request():
    matmuls()
    torch.cuda.synchronize()


if args.graph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuBLAS picks its workspace outside the capture
        matmuls()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        matmuls()

    def request():  # noqa: F811 (the graphed request replaces the eager one)
        graph.replay()
        torch.cuda.synchronize()


for _ in range(50):
    request()
lat = []
start = time.time()
next_t = time.perf_counter()
while time.time() - start < args.seconds:
    next_t += 0.010
    t0 = time.perf_counter()
    request()
    lat.append((time.perf_counter() - t0) * 1e3)
    delay = next_t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    else:
        next_t = time.perf_counter()
stop = time.time()
with open(args.out, "w") as f:
    json.dump({"start": start, "stop": stop, "latencies_ms": lat}, f)
print("DONE", len(lat), flush=True)
