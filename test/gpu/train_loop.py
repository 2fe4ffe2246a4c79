#!/usr/bin/env python3
"""A small decoder-only transformer trained for N steps with AdamW on synthetic tokens.

Deterministic by construction: fixed seeds, torch.use_deterministic_algorithms(True), no TF32, and
only ops with deterministic CUDA kernels (the embedding and the loss are written with one-hot
matmuls, attention with plain matmuls + softmax, so no scatter/index_add/atomics). Each step also
allocates a scratch tensor whose size varies, so the caching allocator grows and reuses segments.

Prints PID / AGENT / MEMCHECK / KERNELS lines (see gvm_workload.py) and finally
`RESULT <sha256 of all final parameters, optimizer state and the per-step losses>`.
"""

import argparse
import math
import os
import sys
import time

sys.dont_write_bytecode = True  # keep test/gpu free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gvm_workload as W  # noqa: E402  (sets CUBLAS_WORKSPACE_CONFIG before torch loads)


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5, help="steps before the memory checkpoint")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype")
    ap.add_argument("--ballast-mib", type=int, default=256,
                    help="a buffer held for the whole run so the memory numbers are clearly non-zero")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args()


def main():
    args = parse()
    W.announce()
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    baseline = W.context_baseline(torch)
    W.setup_determinism(torch, args.seed)
    dev = torch.device("cuda")
    t0 = time.monotonic()

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 4 * d)
            self.fc2 = nn.Linear(4 * d, d)

        def forward(self, x, mask):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // self.h))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.V = a.vocab
            self.emb = nn.Linear(a.vocab, a.dim, bias=False)  # one-hot @ W == embedding lookup
            self.pos = nn.Parameter(torch.randn(a.seq, a.dim) * 0.02)
            self.blocks = nn.ModuleList(Block(a.dim, a.heads) for _ in range(a.layers))
            self.ln = nn.LayerNorm(a.dim)
            self.head = nn.Linear(a.dim, a.vocab, bias=False)
            self.register_buffer("ar", torch.arange(a.vocab), persistent=False)
            self.register_buffer("mask", torch.ones(a.seq, a.seq, dtype=torch.bool).triu(1),
                                 persistent=False)

        def onehot(self, ids, dtype):
            return (ids.unsqueeze(-1) == self.ar).to(dtype)

        def forward(self, ids, targets):
            x = self.emb(self.onehot(ids, torch.float32)) + self.pos
            for blk in self.blocks:
                x = blk(x, self.mask)
            logits = self.head(self.ln(x)).float()
            return -(logits.log_softmax(-1) * self.onehot(targets, torch.float32)).sum(-1).mean()

    model = Model(args).to(dev)  # parameters initialised on the CPU from the seed
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ballast = torch.full((args.ballast_mib * 2**20 // 4,), 1.0, device=dev)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    W.log(f"MODEL params={n_params} steps={args.steps} dtype={args.dtype}")

    losses, scratch_sums = [], []
    for step in range(args.steps):
        data = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=dev, generator=gen)
        with torch.autocast("cuda", dtype=amp_dtype, enabled=args.dtype == "bf16"):
            loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
        # allocator churn: a temporary whose size cycles through 1..7 x 4 MiB
        scratch = torch.empty((1 + step % 7) * 2**20, device=dev).normal_(generator=gen)
        scratch_sums.append(scratch.sum())
        del scratch
        if step + 1 == args.warmup:
            W.memcheck(torch, baseline, label=f"after_step_{step + 1}")
    if args.warmup > args.steps:
        W.memcheck(torch, baseline, label="end")

    torch.cuda.synchronize()
    elapsed = time.monotonic() - t0
    losses_t = torch.stack(losses).float().cpu()
    if not torch.isfinite(losses_t).all():
        W.fail(f"non-finite loss: {losses_t.tolist()}")
    W.log(f"LOSS first={losses_t[0].item():.6f} last={losses_t[-1].item():.6f}")
    h = W.Hasher()
    h.module("model", model)
    for i, st in enumerate(opt.state_dict()["state"].values()):
        for k in sorted(st):
            if torch.is_tensor(st[k]):
                h.tensor(f"opt.{i}.{k}", st[k])
    h.tensor("losses", torch.stack(losses))
    h.tensor("scratch", torch.stack(scratch_sums))
    h.tensor("ballast", ballast.sum())
    W.log(f"TIME compute_s={elapsed:.3f}")
    W.log(f"RESULT {h.hexdigest()}")


if __name__ == "__main__":
    main()
