"""A latency-critical LLM server: a transformers Llama-style causal LM (~1.1B parameters, bf16, random
weights) serving requests that arrive as a Poisson process, with continuous batching: a request joins
the running batch as soon as its prompt is prefilled and leaves it when its last token is out, so
decode steps never wait for a whole batch to finish.

The batch's KV cache is kept left-padded ([batch, kv_heads, T, head_dim] per layer, one attention
mask row per request); a new request's cache is padded to the batch's length (or the batch to its)
and concatenated; finished rows are dropped and all-padding columns trimmed.

Timeline: load + warm up, write --ready, stay idle --idle-s seconds (the best-effort job has the GPU),
then --duration-s seconds of arrivals; requests still running after that finish (bounded by --drain-s).
Result JSON (--out): per request TTFT and TPOT (s), every inter-token gap, the phase times
(time.monotonic(), shared across processes) and, with --grow-cache-gb, how long each cache growth
allocation took.
"""
import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, random_llama, ready_file  # noqa: E402


def cache_layers(cache):
    """(keys, values) per layer of a transformers DynamicCache, old (key_cache) or new (layers) API."""
    if hasattr(cache, "layers"):
        return [(l.keys, l.values) for l in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def make_cache(layers):
    from transformers import DynamicCache

    c = DynamicCache()
    for i, (k, v) in enumerate(layers):
        c.update(k, v, i)
    return c


def left_pad(t, n, dim):
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


class Batch:
    def __init__(self):
        self.layers = None  # [(K, V)] with K: [B, kvh, T, hd]
        self.mask = None    # [B, T] long
        self.reqs = []      # active requests, one per row
        self.last = None    # [B] last token per row

    def add(self, req, layers, token):
        p = layers[0][0].shape[2]
        row_mask = torch.ones(1, p, dtype=torch.long, device="cuda")
        tok = torch.tensor([token], device="cuda")
        if self.layers is None:
            self.layers, self.mask, self.last = layers, row_mask, tok
        else:
            t = self.mask.shape[1]
            n = max(t, p)
            self.layers = [(torch.cat([left_pad(K, n - t, 2), left_pad(k, n - p, 2)]),
                            torch.cat([left_pad(V, n - t, 2), left_pad(v, n - p, 2)]))
                           for (K, V), (k, v) in zip(self.layers, layers)]
            self.mask = torch.cat([left_pad(self.mask, n - t, 1), left_pad(row_mask, n - p, 1)])
            self.last = torch.cat([self.last, tok])
        self.reqs.append(req)

    def drop(self, done_rows):
        keep = [i for i in range(len(self.reqs)) if i not in done_rows]
        if not keep:
            self.__init__()
            return
        idx = torch.tensor(keep, device="cuda")
        mask = self.mask.index_select(0, idx)
        first = int(mask.any(0).long().argmax())  # leading columns that are padding in every row
        self.mask = mask[:, first:]
        self.layers = [(K.index_select(0, idx)[:, :, first:], V.index_select(0, idx)[:, :, first:]) for K, V in self.layers]
        self.last = self.last.index_select(0, idx)
        self.reqs = [self.reqs[i] for i in keep]


@torch.inference_mode()
def prefill(model, prompt):
    ids = torch.tensor([prompt], device="cuda")
    out = model(input_ids=ids, position_ids=torch.arange(len(prompt), device="cuda")[None], use_cache=True)
    token = int(out.logits[0, -1].argmax())
    return cache_layers(out.past_key_values), token


@torch.inference_mode()
def decode(model, batch):
    b = len(batch.reqs)
    mask = torch.cat([batch.mask, torch.ones(b, 1, dtype=torch.long, device="cuda")], dim=1)
    pos = (mask.sum(1) - 1)[:, None]
    out = model(input_ids=batch.last[:, None], attention_mask=mask, position_ids=pos,
                past_key_values=make_cache(batch.layers), use_cache=True)
    batch.layers = cache_layers(out.past_key_values)
    batch.mask = mask
    batch.last = out.logits[:, -1].argmax(-1)
    return batch.last.tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1.5, help="mean arrivals per second (Poisson)")
    ap.add_argument("--duration-s", type=float, default=15)
    ap.add_argument("--idle-s", type=float, default=4, help="idle time between warm-up and the first arrival")
    ap.add_argument("--drain-s", type=float, default=20)
    ap.add_argument("--prompt", default="64,512", help="prompt length range, tokens")
    ap.add_argument("--gen", default="32,128", help="output length range, tokens")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grow-cache-gb", type=float, default=0, help="grow a KV block pool by this much during load")
    ap.add_argument("--grow-step-gb", type=float, default=2)
    ap.add_argument("--ready", default="")
    ap.add_argument("--start-file", default="", help="wait for this file before the idle phase")
    ap.add_argument("--out", required=True)
    ap.add_argument("--linger-s", type=float, default=0, help="stay alive after writing --out (to be inspected)")
    a = ap.parse_args()

    # cuDNN's SDPA builds a new graph for every KV length (~30 ms of CPU per layer call): decode
    # steps change that length every time, so use the flash / memory-efficient kernels instead
    torch.backends.cuda.enable_cudnn_sdp(False)
    model = random_llama(a.layers, seed=0).eval()
    rng = random.Random(a.seed)
    pmin, pmax = map(int, a.prompt.split(","))
    gmin, gmax = map(int, a.gen.split(","))
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(a.rate)
        if t >= a.duration_s:
            break
        arrivals.append({"id": len(arrivals), "at": t, "prompt": [rng.randrange(32000) for _ in range(rng.randint(pmin, pmax))],
                         "gen": rng.randint(gmin, gmax)})
    # warm up every shape path once (prefill, join, decode, drop)
    warm = Batch()
    for n in (pmax, pmin):
        layers, tok = prefill(model, list(range(1, n + 1)))
        warm.add({"id": -1}, layers, tok)
    for _ in range(4):
        decode(model, warm)
    warm.drop({0})
    torch.cuda.synchronize()
    del warm
    ready_file(a.ready)
    if a.start_file:
        while not os.path.exists(a.start_file):
            time.sleep(0.01)
    t_idle = time.monotonic()
    time.sleep(a.idle_s)
    t0 = time.monotonic()
    log(f"load: {len(arrivals)} requests over {a.duration_s} s")

    pool, grow_ms = [], []
    next_grow = t0 + 1.0
    batch, pending, done, gaps = Batch(), list(arrivals), [], []
    deadline = t0 + a.duration_s + a.drain_s
    while (pending or batch.reqs) and time.monotonic() < deadline:
        now = time.monotonic()
        if a.grow_cache_gb and len(pool) * a.grow_step_gb < a.grow_cache_gb and now >= next_grow:
            g0 = time.monotonic()
            blk = torch.empty(int(a.grow_step_gb * (1 << 30)), dtype=torch.uint8, device="cuda")
            blk.zero_()
            torch.cuda.synchronize()
            pool.append(blk)
            grow_ms.append((time.monotonic() - g0) * 1e3)
            next_grow = now + 1.0
        while pending and now - t0 >= pending[0]["at"] and len(batch.reqs) < a.max_batch:
            r = pending.pop(0)
            layers, tok = prefill(model, r["prompt"])
            t_first = time.monotonic()
            r.update(ttft=t_first - (t0 + r["at"]), t_first=t_first, t_last=t_first, n=1)
            batch.add(r, layers, tok)
            now = time.monotonic()
        if not batch.reqs:
            if pending:
                time.sleep(max(0.0, min(0.002, t0 + pending[0]["at"] - time.monotonic())))
            continue
        decode(model, batch)
        now = time.monotonic()
        finished = set()
        for i, r in enumerate(batch.reqs):
            gaps.append(now - r["t_last"])
            r["t_last"] = now
            r["n"] += 1
            if r["n"] >= r["gen"]:
                finished.add(i)
                done.append(r)
        if finished:
            batch.drop(finished)
    t_end = time.monotonic()
    reqs = [{"id": r["id"], "prompt": len(r["prompt"]), "gen": r["n"], "ttft": r["ttft"],
             "tpot": (r["t_last"] - r["t_first"]) / max(1, r["n"] - 1)} for r in done]
    with open(a.out + ".tmp", "w") as f:
        json.dump({"requests": reqs, "gaps": gaps, "arrivals": len(arrivals), "completed": len(done),
                   "t_idle": t_idle, "t_load": t0, "t_load_end": t0 + a.duration_s, "t_end": t_end,
                   "grow_ms": grow_ms, "grown_gb": len(pool) * a.grow_step_gb}, f)
    os.replace(a.out + ".tmp", a.out)
    log(f"done: {len(done)}/{len(arrivals)} requests")
    time.sleep(a.linger_s)


if __name__ == "__main__":
    main()
