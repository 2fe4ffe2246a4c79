#!/usr/bin/env python3
"""Greedy generation with a randomly initialised transformers LlamaForCausalLM (no download).

The model is built from a small LlamaConfig on the CPU and every parameter is then re-initialised
from a seeded CPU generator (so the weights do not depend on how a given transformers version
initialises), moved to the GPU in bf16, and asked for --new-tokens greedy tokens for a batch of
left-padded prompts of different lengths (KV cache, attention mask and SDPA paths).
Deterministic algorithms are on with warn_only=True: inference has no atomics-based kernels, and
transformers internals might call an op that has no deterministic variant, which should warn, not
abort the run.

Prints PID / AGENT / MEMCHECK / KERNELS lines (see gvm_workload.py) and finally
`RESULT <sha256 of generated token ids and of the prompt logits>`.
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # keep test/gpu free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gvm_workload as W  # noqa: E402  (also sets HF_HUB_OFFLINE)


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32, help="longest prompt; others are shorter")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--steps", type=int, default=1, help="generate calls (repeats with new prompts)")
    return ap.parse_args()


def main():
    args = parse()
    W.announce()
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    baseline = W.context_baseline(torch)
    W.setup_determinism(torch, args.seed, warn_only=True)
    W.log(f"TRANSFORMERS {transformers.__version__} torch={torch.__version__}")
    dev = torch.device("cuda")
    t0 = time.monotonic()
    PAD = 0

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            else:
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g))
    model = model.to(device=dev, dtype=torch.bfloat16).eval()
    W.log(f"MODEL params={sum(p.numel() for p in model.parameters())} "
          f"attn={getattr(model.config, '_attn_implementation', '?')}")

    def prompts(call):
        ids = torch.full((args.batch, args.prompt_len), PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b in range(args.batch):
            n = args.prompt_len - (b * 3 + call) % (args.prompt_len // 2)  # lengths differ
            ids[b, -n:] = torch.randint(3, args.vocab, (n,), generator=g)
            mask[b, -n:] = 1
        return ids.to(dev), mask.to(dev)

    def gen(ids, mask, n):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=PAD)
        if out.shape != (args.batch, args.prompt_len + n):
            W.fail(f"generate returned shape {tuple(out.shape)}, expected "
                   f"{(args.batch, args.prompt_len + n)}")
        return out

    h = W.Hasher()
    with torch.inference_mode():
        ids, mask = prompts(0)
        gen(ids, mask, 4)  # warm-up: loads kernels, builds the cache path
        W.memcheck(torch, baseline, label="after_warmup_generate")
        for call in range(args.steps):
            if call:
                ids, mask = prompts(call)
            out = gen(ids, mask, args.new_tokens)
            h.tensor(f"tokens.{call}", out)
            logits = model(input_ids=ids, attention_mask=mask).logits
            h.tensor(f"logits.{call}", logits)
    torch.cuda.synchronize()
    elapsed = time.monotonic() - t0
    W.log(f"TOKENS first_row_tail={out[0, -8:].tolist()}")
    W.log(f"TIME compute_s={elapsed:.3f}")
    W.log(f"RESULT {h.hexdigest()}")


if __name__ == "__main__":
    main()
