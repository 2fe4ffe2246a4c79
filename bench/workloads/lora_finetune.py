"""Best-effort job 1: LoRA fine-tuning (peft) of a ~1.1B Llama-style causal LM with random weights on
random token batches. Logs every optimizer step's end time; throughput = samples per second."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Ballast, StepLog, random_llama, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--ballast-gb", type=float, default=0, help="extra device memory kept (and verified at exit)")
    ap.add_argument("--ready", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    ballast = Ballast(a.ballast_gb)  # first: a cache loaded at start-up is the oldest (and coldest) memory
    model = random_llama(a.layers, seed=1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    steps = StepLog(a.out, {"job": "lora", "batch": a.batch, "seq": a.seq})

    def step_loss():
        x = torch.randint(0, 32000, (a.batch, a.seq), device="cuda", generator=g)
        return model(input_ids=x, labels=x).loss

    train(step_loss, opt, a, steps, ballast)


if __name__ == "__main__":
    main()
