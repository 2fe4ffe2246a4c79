"""A latency-critical LLM server: a transformers Llama-style causal LM (~1.1B parameters, bf16, random
weights) serving requests that arrive as a Poisson process, with continuous batching: a request joins
the running batch as soon as its prompt is prefilled and leaves it when its last token is out, so
decode steps never wait for a whole batch to finish.

Two engines (--engine):
- graph (default): static_engine.py, a static KV cache of --max-batch slots, prefill and decode steps
  replayed from CUDA graphs; a step costs what it costs the GPU, as in production servers.
- eager: transformers' forward per step. The batch's KV cache is kept left-padded ([batch, kv_heads,
  T, head_dim] per layer, one attention mask row per request); a new request's cache is padded to the
  batch's length (or the batch to its) and concatenated; finished rows are dropped and all-padding
  columns trimmed. ~21 ms of CPU per step for ~2 ms of GPU work: CPU-bound.

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


DEV = "cuda"  # --device cpu runs the whole server on a tiny model: a smoke test where no GPU is


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


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
        row_mask = torch.ones(1, p, dtype=torch.long, device=DEV)
        tok = torch.tensor([token], device=DEV)
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
        idx = torch.tensor(keep, device=DEV)
        mask = self.mask.index_select(0, idx)
        first = int(mask.any(0).long().argmax())  # leading columns that are padding in every row
        self.mask = mask[:, first:]
        self.layers = [(K.index_select(0, idx)[:, :, first:], V.index_select(0, idx)[:, :, first:]) for K, V in self.layers]
        self.last = self.last.index_select(0, idx)
        self.reqs = [self.reqs[i] for i in keep]


@torch.inference_mode()
def prefill(model, prompt):
    ids = torch.tensor([prompt], device=DEV)
    out = model(input_ids=ids, position_ids=torch.arange(len(prompt), device=DEV)[None], use_cache=True)
    token = int(out.logits[0, -1].argmax())
    return cache_layers(out.past_key_values), token


@torch.inference_mode()
def decode(model, batch):
    b = len(batch.reqs)
    mask = torch.cat([batch.mask, torch.ones(b, 1, dtype=torch.long, device=DEV)], dim=1)
    pos = (mask.sum(1) - 1)[:, None]
    out = model(input_ids=batch.last[:, None], attention_mask=mask, position_ids=pos,
                past_key_values=make_cache(batch.layers), use_cache=True)
    batch.layers = cache_layers(out.past_key_values)
    batch.mask = mask
    batch.last = out.logits[:, -1].argmax(-1)
    return batch.last.tolist()


class EagerEngine:
    """transformers' own forward each step, the batch's cache concatenated and trimmed (CPU-bound)."""

    def __init__(self, model, max_batch):
        self.model, self.max_batch, self.batch = model, max_batch, Batch()

    def full(self):
        return len(self.batch.reqs) >= self.max_batch

    def active(self):
        return list(self.batch.reqs)

    def admit(self, req):
        layers, tok = prefill(self.model, req["prompt"])
        self.batch.add(req, layers, tok)
        return tok

    def step(self):
        decode(self.model, self.batch)

    def retire(self, reqs):
        ids = {id(r) for r in reqs}
        self.batch.drop({i for i, r in enumerate(self.batch.reqs) if id(r) in ids})


class GraphEngine:
    """A static KV cache of max_batch slots, prefill and decode replayed from CUDA graphs
    (static_engine.py): the step's cost is the GPU's, as in a production server."""

    def __init__(self, model, max_batch, max_len, buckets):
        from static_engine import StaticEngine

        self.eng = StaticEngine(model, max_batch, max_len, buckets, graphs=DEV == "cuda")
        self.free, self.by_slot = list(range(max_batch)), {}

    def full(self):
        return not self.free

    def active(self):
        return list(self.by_slot.values())

    @torch.inference_mode()
    def admit(self, req):
        slot = self.free.pop(0)
        self.by_slot[slot] = req
        req["slot"] = slot
        return self.eng.prefill(slot, req["prompt"])

    @torch.inference_mode()
    def step(self):
        self.eng.decode()

    def retire(self, reqs):
        for r in reqs:
            del self.by_slot[r["slot"]]
            self.free.append(r["slot"])


@torch.inference_mode()
def graph_matches_eager(model, eng, prompt, steps=8):
    """The captured graphs must compute what the same code computes eagerly: one request through both."""
    from static_engine import StaticEngine

    # the same number of slots: cuBLAS may pick other kernels (other rounding) for other batch sizes
    plain = StaticEngine(model, eng.slots, eng.max_len, eng.buckets, graphs=False)
    got = [eng.prefill(0, prompt)] + [eng.decode()[0] for _ in range(steps)]
    want = [plain.prefill(0, prompt)] + [plain.decode()[0] for _ in range(steps)]
    eng.reset()
    del plain
    return got == want, got, want


def round_up(n, m):
    return (n + m - 1) // m * m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1.5, help="mean arrivals per second (Poisson)")
    ap.add_argument("--duration-s", type=float, default=15)
    ap.add_argument("--idle-s", type=float, default=4, help="idle time between warm-up and the first arrival")
    ap.add_argument("--drain-s", type=float, default=20)
    ap.add_argument("--prompt", default="64,512", help="prompt length range, tokens")
    ap.add_argument("--gen", default="32,128", help="output length range, tokens")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--engine", choices=("graph", "eager"), default="graph",
                    help="graph: static cache and CUDA graphs (GPU-bound, like a production server); "
                         "eager: transformers' forward per step (CPU-bound)")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grow-cache-gb", type=float, default=0, help="grow a KV block pool by this much during load")
    ap.add_argument("--grow-step-gb", type=float, default=2)
    ap.add_argument("--ready", default="")
    ap.add_argument("--start-file", default="", help="wait for this file before the idle phase")
    ap.add_argument("--out", required=True)
    ap.add_argument("--linger-s", type=float, default=0, help="stay alive after writing --out (to be inspected)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a tiny model, to test this program")
    a = ap.parse_args()
    global DEV
    DEV = a.device

    # cuDNN's SDPA builds a new graph for every KV length (~30 ms of CPU per layer call): decode
    # steps change that length every time, so use the flash / memory-efficient kernels instead
    torch.backends.cuda.enable_cudnn_sdp(False)
    model = random_llama(a.layers, seed=0, device=DEV, tiny=DEV == "cpu").eval()
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
    check = None
    if a.engine == "graph":
        max_len = round_up(pmax + gmax, 64)
        buckets = sorted(set(range(64, round_up(pmax, 64) + 1, 64)))
        engine = GraphEngine(model, a.max_batch, max_len, buckets)
        ok, got, want = graph_matches_eager(model, engine.eng, [rng.randrange(32000) for _ in range(pmax)])
        check = {"graph_equals_eager": ok, "graph": got, "eager": want}
        log(f"graph engine: {a.max_batch} slots x {max_len} positions, {len(buckets)} prefill buckets, "
            f"graphs {'match' if ok else 'DIFFER FROM'} eager")
        if not ok:  # recorded and reported by bench/colocation; the latencies are still worth having
            log(f"WARNING: graph tokens {got} != eager tokens {want}")
    else:
        engine = EagerEngine(model, a.max_batch)
    # warm up every path once (prefill of both extreme lengths, join, decode, leave)
    warm = [{"id": -1, "prompt": list(range(1, n + 1))} for n in (pmax, pmin)]
    for r in warm:
        engine.admit(r)
    for _ in range(4):
        engine.step()
    engine.retire(warm)
    sync()
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
    pending, done, gaps = list(arrivals), [], []
    deadline = t0 + a.duration_s + a.drain_s
    while (pending or engine.active()) and time.monotonic() < deadline:
        now = time.monotonic()
        if a.grow_cache_gb and len(pool) * a.grow_step_gb < a.grow_cache_gb and now >= next_grow:
            g0 = time.monotonic()
            blk = torch.empty(int(a.grow_step_gb * (1 << 30)), dtype=torch.uint8, device=DEV)
            blk.zero_()
            sync()
            pool.append(blk)
            grow_ms.append((time.monotonic() - g0) * 1e3)
            next_grow = now + 1.0
        while pending and now - t0 >= pending[0]["at"] and not engine.full():
            r = pending.pop(0)
            engine.admit(r)  # returns the first token: prefill is over
            t_first = time.monotonic()
            r.update(ttft=t_first - (t0 + r["at"]), t_first=t_first, t_last=t_first, n=1)
            now = time.monotonic()
        active = engine.active()
        if not active:
            if pending:
                time.sleep(max(0.0, min(0.002, t0 + pending[0]["at"] - time.monotonic())))
            continue
        engine.step()  # every active request's next token is out
        now = time.monotonic()
        finished = []
        for r in active:
            gaps.append(now - r["t_last"])
            r["t_last"] = now
            r["n"] += 1
            if r["n"] >= r["gen"]:
                finished.append(r)
                done.append(r)
        if finished:
            engine.retire(finished)
    t_end = time.monotonic()
    reqs = [{"id": r["id"], "prompt": len(r["prompt"]), "gen": r["n"], "ttft": r["ttft"],
             "tpot": (r["t_last"] - r["t_first"]) / max(1, r["n"] - 1)} for r in done]
    with open(a.out + ".tmp", "w") as f:
        json.dump({"requests": reqs, "gaps": gaps, "arrivals": len(arrivals), "completed": len(done),
                   "t_idle": t_idle, "t_load": t0, "t_load_end": t0 + a.duration_s, "t_end": t_end,
                   "grow_ms": grow_ms, "grown_gb": len(pool) * a.grow_step_gb,
                   "engine": a.engine, "engine_check": check}, f)
    os.replace(a.out + ".tmp", a.out)
    log(f"done: {len(done)}/{len(arrivals)} requests")
    time.sleep(a.linger_s)


if __name__ == "__main__":
    main()
