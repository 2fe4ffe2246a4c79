"""PyTorch under gvm's swap mode (issue 4 device checks).
  train: an MLP trained with Adam; prints PEAK (bytes the allocator reserved), LOSSES and the time.
         Run unlimited, then with GVM_MEMORY_LIMIT at 2/3 of that peak: losses must be identical.
  infer: the same model's forward in a loop; at iteration 10 the process lowers its own limit to
         half of what it holds (gvm set), at 20 raises it back; prints each output's hash and
         memory.current after each change. Outputs must equal an unlimited run's."""
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

import torch

torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = False
mode = sys.argv[1]
CLI = shlex.split(os.environ.get("GVM_CLI", "node dist/cli/gvm.js"))
pid = str(os.getpid())


def gvm(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


layers = [torch.nn.Linear(4096, 4096) for _ in range(12)]
model = torch.nn.Sequential(*[m for l in layers for m in (l, torch.nn.GELU())]).cuda()
x = torch.randn(2048, 4096, device="cuda")
y = torch.randn(2048, 4096, device="cuda")

if mode == "train":
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    torch.cuda.synchronize()
    t0 = time.time()
    for step in range(20):
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    print("TIME", time.time() - t0)
    print("PEAK", torch.cuda.max_memory_reserved())
    print("LOSSES", json.dumps(losses))
    if "GVM_MEMORY_LIMIT" in os.environ:
        r = gvm("get", pid, "gcgroup.stat")
        print("STAT", " ".join(r.stdout.split()))
else:
    model.eval()
    hashes, notes = [], []
    with torch.no_grad():
        held = 0
        for i in range(30):
            if os.environ.get("GVM_MEMORY_MODE") == "swap" and i in (10, 20):
                held = held or int(gvm("get", pid, "memory.current").stdout)
                target = str(held // 2) if i == 10 else str(held * 4)
                r = gvm("set", f"{pid}:0", "memory.limit", target)
                cur = int(gvm("get", pid, "memory.current").stdout)
                lim = int(gvm("get", pid, "memory.limit").stdout)
                swp = int(gvm("get", pid, "memory.swap.current").stdout)
                notes.append({"iteration": i, "limit": lim, "current": cur, "swap": swp, "answer": r.stdout.strip()})
            out = model(x)
            hashes.append(hashlib.sha256(out.float().cpu().numpy().tobytes()).hexdigest()[:16])
    print("HASHES", json.dumps(hashes))
    print("NOTES", json.dumps(notes))
