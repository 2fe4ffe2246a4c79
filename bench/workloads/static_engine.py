"""Serving a transformers LlamaForCausalLM from a static KV cache, every step replayed from a CUDA graph.

Why: run eagerly, a ~1.1B model's decode step costs ~21 ms of Python and launch overhead on the CPU for
~2 ms of GPU work, so a server built that way is CPU-bound and a job beside it on the GPU barely changes
its latency. Serving stacks (vLLM, TensorRT-LLM) capture their steps in CUDA graphs; this does the same
so that the server's latency is the GPU's, which is what a GPU-sharing benchmark has to measure.

The model's own modules (embedding, norms, projections, MLPs, rotary embedding, head) do the work; only
the attention over the cache is done here, because the cache is one fixed tensor per layer:
K, V: [slots, kv_heads, max_len, head_dim]. A request owns a slot from its prefill to its last token.
- prefill(slot, prompt): the prompt padded to a bucket length (one graph per bucket), causal attention
  over itself, its keys and values written into the slot, and the slot's next token and position set on
  the GPU; returns the first output token.
- decode(): one token for every slot at once (free slots compute garbage, at a fixed cost), each row
  attending to its own positions 0..pos; returns the tokens of every slot.
Positions advance inside the graph, so the CPU only copies prompts in and tokens out.
"""
import torch
import torch.nn.functional as F


def _rope():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb


class StaticEngine:
    def __init__(self, model, slots, max_len, buckets, graphs=True):
        cfg = model.config
        m = model.model
        self.model, self.m = model, m
        self.slots, self.max_len = slots, max_len
        self.buckets = sorted(buckets)
        if self.buckets[-1] > max_len:
            raise ValueError(f"bucket {self.buckets[-1]} longer than the cache ({max_len})")
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        self.rope = _rope()
        w = model.lm_head.weight
        dev, dt = w.device, w.dtype
        shape = (slots, self.kv_heads, max_len, self.head_dim)
        self.K = [torch.zeros(shape, dtype=dt, device=dev) for _ in m.layers]
        self.V = [torch.zeros(shape, dtype=dt, device=dev) for _ in m.layers]
        # decode state, one row per slot; the graphs read and write these tensors in place
        self.tok = torch.zeros(slots, dtype=torch.long, device=dev)
        self.pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self.cols = torch.arange(max_len, device=dev)
        # prefill inputs
        self.p_tok = torch.zeros(1, self.buckets[-1], dtype=torch.long, device=dev)
        self.p_len = torch.ones(1, dtype=torch.long, device=dev)
        self.p_slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.p_next = torch.zeros(1, dtype=torch.long, device=dev)
        self.graphs = {}
        if graphs:
            self._capture()

    # ---- the steps, as plain PyTorch (captured once per shape when graphs are on) ----
    def _layer_qkv(self, layer, x, positions):
        b, t, _ = x.shape
        at = layer.self_attn
        h = layer.input_layernorm(x)
        q = at.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = at.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = at.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.m.rotary_emb(v, positions)
        q, k = self.rope(q, k, cos, sin)
        return q, k, v

    def _layer_out(self, layer, x, o):
        b, t = x.shape[:2]
        x = x + layer.self_attn.o_proj(o.reshape(b, t, self.heads * self.head_dim))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _per_query_head(self, t):
        """[b, kv_heads, n, d] -> [b, heads, n, d], each kv head repeated for its group of query heads."""
        b, _, n, d = t.shape
        return t[:, :, None].expand(b, self.kv_heads, self.group, n, d).reshape(b, self.heads, n, d)

    def _decode_step(self):
        s = self.slots
        x = self.m.embed_tokens(self.tok[:, None])
        positions = self.pos[:, None]
        # row r attends to cache columns 0..pos[r]; everything after is padding or another request's past
        masked = (self.cols[None, :] > self.pos[:, None])[:, None, None, :]
        where = self.pos[:, None, None, None].expand(s, self.kv_heads, 1, self.head_dim)
        for i, layer in enumerate(self.m.layers):
            q, k, v = self._layer_qkv(layer, x, positions)
            self.K[i].scatter_(2, where, k)
            self.V[i].scatter_(2, where, v)
            # query heads of one kv head side by side, so the cache is read once per kv head (GQA)
            qg = q.reshape(s, self.kv_heads, self.group, self.head_dim)
            att = torch.matmul(qg, self.K[i].transpose(2, 3)).float() * self.scale
            att = att.masked_fill(masked, float("-inf")).softmax(-1).to(qg.dtype)
            o = torch.matmul(att, self.V[i]).reshape(s, self.heads, 1, self.head_dim).transpose(1, 2)
            x = self._layer_out(layer, x, o)
        nxt = self.model.lm_head(self.m.norm(x[:, -1])).argmax(-1)
        self.tok.copy_(nxt)
        # free slots keep counting; clamped so that their garbage never writes outside the cache
        self.pos.add_(1).clamp_(max=self.max_len - 1)

    def _prefill_step(self, n):
        x = self.m.embed_tokens(self.p_tok[:, :n])
        positions = self.cols[None, :n]
        for i, layer in enumerate(self.m.layers):
            q, k, v = self._layer_qkv(layer, x, positions)
            # the whole row of the slot is rewritten: columns past the prompt become zeros, masked later
            pad = (0, 0, 0, self.max_len - n)
            self.K[i].index_copy_(0, self.p_slot, F.pad(k, pad))
            self.V[i].index_copy_(0, self.p_slot, F.pad(v, pad))
            kk = self._per_query_head(k)
            vv = self._per_query_head(v)
            o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=self.scale).transpose(1, 2)
            x = self._layer_out(layer, x, o)
        last = self.m.norm(x[0].index_select(0, self.p_len - 1))
        self.p_next.copy_(self.model.lm_head(last).argmax(-1))
        # the slot joins the decode batch: its next input is this token, at position len
        self.tok.index_copy_(0, self.p_slot, self.p_next)
        self.pos.index_copy_(0, self.p_slot, self.p_len)

    @torch.no_grad()  # a captured step must not build autograd state (the model's weights require grad)
    def _capture(self):
        steps = [("decode", self._decode_step)] + [(n, (lambda n=n: self._prefill_step(n))) for n in self.buckets]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _, fn in steps:  # warm-up outside the capture: cuBLAS handles, autotuning, lazy modules
                fn()
                fn()
        torch.cuda.current_stream().wait_stream(side)
        for key, fn in steps:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            self.graphs[key] = g
        torch.cuda.synchronize()
        self.reset()

    def _run(self, key, fn):
        g = self.graphs.get(key)
        if g is not None:
            g.replay()
        else:
            fn()

    # ---- what the server calls ----
    def bucket(self, n):
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"prompt of {n} tokens is longer than the largest bucket ({self.buckets[-1]})")

    def reset(self):
        self.tok.zero_()
        self.pos.zero_()

    @torch.no_grad()
    def prefill(self, slot, prompt):
        n = len(prompt)
        b = self.bucket(n)
        self.p_tok[0, :n].copy_(torch.tensor(prompt, dtype=torch.long), non_blocking=False)
        self.p_len.fill_(n)
        self.p_slot.fill_(slot)
        self._run(b, lambda: self._prefill_step(b))
        return int(self.p_next[0])

    @torch.no_grad()
    def decode(self):
        self._run("decode", self._decode_step)
        return self.tok.tolist()


def reference_greedy(model, prompt, steps):
    """The same greedy continuation computed by transformers itself (full forward each token)."""
    ids = torch.tensor([prompt], device=model.lm_head.weight.device)
    out = []
    for _ in range(steps):
        t = int(model(input_ids=ids).logits[0, -1].argmax())
        out.append(t)
        ids = torch.cat([ids, torch.tensor([[t]], device=ids.device)], dim=1)
    return out


@torch.inference_mode()
def self_check(model, slots=4, max_len=96, buckets=(16, 32, 48), graphs=False, seed=3):
    """Requests joining and leaving at different steps must each get exactly transformers' greedy
    tokens. Returns a list of (request, ours, reference) that differ (empty = correct)."""
    import random

    rng = random.Random(seed)
    vocab = model.config.vocab_size
    eng = StaticEngine(model, slots, max_len, buckets, graphs=graphs)
    reqs = [{"prompt": [rng.randrange(vocab) for _ in range(rng.randint(3, buckets[-1]))], "gen": rng.randint(4, 12),
             "join": j * 3} for j in range(slots + 2)]
    free, active, step = list(range(slots)), {}, 0
    todo = list(reqs)
    while todo or active:
        while todo and todo[0]["join"] <= step and free:
            r = todo.pop(0)
            s = free.pop(0)
            r["out"] = [eng.prefill(s, r["prompt"])]
            active[s] = r
        if active:
            toks = eng.decode()
            for s in list(active):
                r = active[s]
                if len(r["out"]) < r["gen"]:
                    r["out"].append(toks[s])
                if len(r["out"]) >= r["gen"]:
                    del active[s]
                    free.append(s)
        step += 1
    bad = []
    for i, r in enumerate(reqs):
        want = reference_greedy(model, r["prompt"], r["gen"])
        if want != r["out"]:
            bad.append((i, r["out"], want))
    return bad


def main():
    """Checks the engine against transformers on a small fp32 model: on the CPU without graphs, and on
    the GPU with its CUDA graphs when one is present. Exit status 1 on any difference."""
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = [("cpu", False)] + ([("cuda", True)] if torch.cuda.is_available() else [])
    failed = False
    for dev, graphs in runs:
        bad = self_check(model.to(dev), graphs=graphs)
        print(f"{dev}{' with CUDA graphs' if graphs else ''}: {'ok' if not bad else f'FAIL {len(bad)} requests differ'}")
        for i, ours, want in bad[:3]:
            print(f"  request {i}: ours {ours} transformers {want}")
        failed |= bool(bad)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
