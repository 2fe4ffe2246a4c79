"""Best-effort job 2: denoising-diffusion training of a UNet written here (residual blocks with
GroupNorm, a sinusoidal time embedding, self-attention at 16x16), DDPM noise-prediction loss on
random 64x64 images, bf16 autocast. Logs every step's end time; throughput = samples per second."""
import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Ballast, StepLog, train  # noqa: E402


def time_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(32, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(32, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, c, heads=4):
        super().__init__()
        self.norm, self.qkv, self.out, self.heads = nn.GroupNorm(32, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1), heads

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        o = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(o)


class UNet(nn.Module):
    def __init__(self, ch=(128, 256, 256, 512), tdim=512):
        super().__init__()
        self.tdim = tdim
        self.temb = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c = ch[0]
        skips = []
        for i, co in enumerate(ch):
            self.down.append(nn.ModuleList([ResBlock(c, co, tdim), ResBlock(co, co, tdim),
                                            Attention(co) if i == 2 else nn.Identity(),
                                            nn.Conv2d(co, co, 3, stride=2, padding=1) if i < len(ch) - 1 else nn.Identity()]))
            skips.append(co)
            c = co
        self.mid = nn.ModuleList([ResBlock(c, c, tdim), Attention(c), ResBlock(c, c, tdim)])
        for i, co in reversed(list(enumerate(ch))):
            self.up.append(nn.ModuleList([ResBlock(c + skips[i], co, tdim), ResBlock(co, co, tdim),
                                          Attention(co) if i == 2 else nn.Identity(),
                                          nn.Upsample(scale_factor=2) if i > 0 else nn.Identity()]))
            c = co
        self.out = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.temb(time_embedding(t, self.tdim))
        h = self.inp(x)
        skips = []
        for r1, r2, attn, down in self.down:
            h = attn(r2(r1(h, temb), temb))
            skips.append(h)
            h = down(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for r1, r2, attn, up in self.up:
            h = attn(r2(r1(torch.cat([h, skips.pop()], 1), temb), temb))
            h = up(h)
        return self.out(h)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ballast-gb", type=float, default=0)
    ap.add_argument("--ready", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    ballast = Ballast(a.ballast_gb)  # first: a cache loaded at start-up is the oldest (and coldest) memory
    model = UNet().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    betas = torch.linspace(1e-4, 0.02, 1000, device="cuda")
    abar = torch.cumprod(1 - betas, 0)
    data = torch.randn(1024, 3, a.size, a.size, device="cuda")
    steps = StepLog(a.out, {"job": "unet", "batch": a.batch, "size": a.size})

    def step_loss():
        idx = torch.randint(0, data.shape[0], (a.batch,), device="cuda")
        x0 = data[idx]
        t = torch.randint(0, 1000, (a.batch,), device="cuda")
        noise = torch.randn_like(x0)
        ab = abar[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return F.mse_loss(model(xt, t).float(), noise)

    train(step_loss, opt, a, steps, ballast)


if __name__ == "__main__":
    main()
