#!/usr/bin/env python3
"""CUDA graphs under PyTorch: whole-step capture with torch.cuda.CUDAGraph, plus
torch.cuda.make_graphed_callables, each replayed many times.

Part A: an MLP regression training step (forward, backward, AdamW(capturable=True).step()) captured
        once into a CUDAGraph and replayed --steps times with new data copied into static inputs.
Part B: a module wrapped by make_graphed_callables (forward and backward graphs), trained with an
        eager SGD step for --steps steps.
Part C: an inference forward pass captured and replayed --steps times; outputs accumulated.

Prints PID / AGENT / MEMCHECK / KERNELS lines (see gvm_workload.py) and finally
`RESULT <sha256 of final parameters, losses and inference outputs>`.
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # keep test/gpu free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gvm_workload as W  # noqa: E402


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="replays per part")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--parts", default="abc", help="which parts to run (letters a, b, c)")
    return ap.parse_args()


def main():
    args = parse()
    W.announce()
    import torch
    import torch.nn as nn

    baseline = W.context_baseline(torch)
    W.setup_determinism(torch, args.seed)
    dev = torch.device("cuda")
    t0 = time.monotonic()
    D, B = args.dim, args.batch
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    # ---- Part A: whole training step in one graph
    model = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, 2 * D), nn.GELU(),
                          nn.Linear(2 * D, D)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=True)
    static_x = torch.randn(B, D, device=dev, generator=gen)
    static_y = torch.randn(B, D, device=dev, generator=gen)

    def train_step():
        out = model(static_x)
        loss = (out - static_y).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as the PyTorch docs require
            opt.zero_grad(set_to_none=True)
            train_step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = train_step()
    W.log("GRAPH A captured (forward+backward+AdamW)")

    losses_a = []
    for i in range(args.steps):
        static_x.copy_(torch.randn(B, D, device=dev, generator=gen))
        static_y.copy_(torch.sin(static_x) * 0.5)
        graph.replay()
        losses_a.append(static_loss.clone())
        if i == min(4, args.steps - 1):
            W.memcheck(torch, baseline, label=f"graph_a_replay_{i + 1}")

    # ---- Part B: make_graphed_callables
    model_b = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D)).to(dev)
    losses_b = []
    if "b" in args.parts:
        sample = torch.randn(B, D, device=dev, generator=gen)
        graphed_b = torch.cuda.make_graphed_callables(model_b, (sample,))
        opt_b = torch.optim.SGD(model_b.parameters(), lr=1e-3, momentum=0.9)
        W.log("GRAPH B made (make_graphed_callables)")
    for _ in range(args.steps if "b" in args.parts else 0):
        x = torch.randn(B, D, device=dev, generator=gen)
        out = graphed_b(x)
        loss = (out - x.flip(-1)).pow(2).mean()
        loss.backward()
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
        losses_b.append(loss.detach())

    # ---- Part C: inference graph
    model.eval()
    inf_x = torch.randn(B, D, device=dev, generator=gen)
    acc = torch.zeros(B, D, device=dev)
    if "c" in args.parts:
        with torch.no_grad():
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    model(inf_x)
            torch.cuda.current_stream().wait_stream(side)
            graph_c = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph_c):
                inf_out = model(inf_x).tanh()
            for _ in range(args.steps):
                inf_x.copy_(torch.randn(B, D, device=dev, generator=gen))
                graph_c.replay()
                acc += inf_out
        W.log("GRAPH C replayed (inference)")

    torch.cuda.synchronize()
    elapsed = time.monotonic() - t0
    la = torch.stack(losses_a).float().cpu()
    lb = torch.stack(losses_b or [torch.zeros((), device=dev)]).float().cpu()
    if not (torch.isfinite(la).all() and torch.isfinite(lb).all()):
        W.fail("non-finite loss in a graphed training loop")
    W.log(f"LOSS a_first={la[0].item():.6f} a_last={la[-1].item():.6f} "
          f"b_first={lb[0].item():.6f} b_last={lb[-1].item():.6f}")
    h = W.Hasher()
    h.module("model_a", model)
    h.module("model_b", model_b)
    h.tensor("losses_a", torch.stack(losses_a))
    if losses_b:
        h.tensor("losses_b", torch.stack(losses_b))
    h.tensor("inference", acc)
    W.log(f"TIME compute_s={elapsed:.3f}")
    W.log(f"RESULT {h.hexdigest()}")


if __name__ == "__main__":
    main()
