"""Shared by the colocation workloads: a ~1.1B Llama-style config with random weights (no download),
a ballast of device memory whose bytes are checked at exit, and a step log that survives SIGTERM."""
import json
import os
import signal
import sys
import time

import torch


def llama_config(layers=22, tiny=False):
    from transformers import LlamaConfig

    if tiny:  # the same structure at a size a CPU runs in seconds: smoke tests of the serving code
        return LlamaConfig(vocab_size=32000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, tie_word_embeddings=False)
    # TinyLlama-1.1B's shape: 2048 hidden, 22 layers, 32 heads with 4 KV heads, 5632 MLP
    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


def random_llama(layers=22, seed=0, device="cuda", tiny=False):
    """The model built directly on the device in bf16 with random weights (seconds, not minutes)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = llama_config(layers, tiny)
    config._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(prev)
    return model


class Ballast:
    """gb GiB of device memory in 1 GiB tensors with known contents, touched only at start and end,
    like a cache a job keeps but rarely reads; verify() proves no byte was lost if gvm moved it."""

    def __init__(self, gb):
        self.tensors, self.sums = [], []
        for i in range(int(gb)):
            t = torch.empty(1 << 28, dtype=torch.int32, device="cuda")
            t.copy_(torch.arange(1 << 28, device="cuda", dtype=torch.int32) * (2 * i + 1))
            self.tensors.append(t)
            self.sums.append(int(t.sum(dtype=torch.int64)))

    def verify(self):
        return all(int(t.sum(dtype=torch.int64)) == s for t, s in zip(self.tensors, self.sums))


class StepLog:
    """Appends (time.monotonic() at the end of a step, samples); written as JSON at exit or SIGTERM.
    time.monotonic() is CLOCK_MONOTONIC on Linux, so the orchestrator compares it across processes."""

    def __init__(self, path, meta):
        self.path, self.meta, self.steps = path, dict(meta), []
        self.stop = False
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)

    def _term(self, *_):
        self.stop = True

    def step(self, samples):
        self.steps.append((time.monotonic(), samples))

    def write(self, **extra):
        self.meta.update(extra)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**self.meta, "steps": self.steps}, f)
        os.replace(tmp, self.path)


def train(step_loss, opt, a, steps, ballast):
    """The best-effort jobs' loop: step_loss() computes one batch's loss; backward, optimizer step, the
    step's end logged, ready once three steps ran (warm), until SIGTERM; then the ballast is verified and
    the log written. a: the parsed options (batch, ready, ballast_gb)."""
    losses = []
    while not steps.stop:
        loss = step_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # syncs: the step is over
        steps.step(a.batch)
        if len(losses) == 3:
            ready_file(a.ready)
    ok = ballast.verify()
    steps.write(losses=losses[-5:], ballast_ok=ok, ballast_gb=a.ballast_gb)
    last = f"{losses[-1]:.4f}" if losses else "-"
    log(f"{len(losses)} steps, last loss {last}, ballast {'intact' if ok else 'CORRUPT'}")


def ready_file(path):
    """Tells the orchestrator this process is up: its pid (the one gvm's block carries) and the time."""
    if path:
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "t": time.monotonic()}, f)


def log(*a):
    print(f"[{os.path.basename(sys.argv[0])} {os.getpid()}]", *a, file=sys.stderr, flush=True)
