"""PyTorch peer of the Noise2Atom train step (same architecture and schedule as jaxdn's), CPU eager.

    pip install torch==2.13.0
    python benchmarks/peers/torch_noise2atom.py --variant small --steps 3 [--channels-last]

Times one batch update = critic × n_critic (WGAN-GP) + one generator update of
α·adv + β·cycle + lfc, after one warm-up update. Prints JSON {variant, s_per_step, ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    "paper": dict(widths=(64, 64, 64, 128), bottleneck=192, n_res=16, critic=(64, 64, 128, 128), crop=128, batch=6),
    "small": dict(widths=(16, 16, 16, 32), bottleneck=32, n_res=2, critic=(16, 32, 32, 64), crop=64, batch=6),
}


class INorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        v = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (x - m) / torch.sqrt(v + 1e-3) * self.scale + self.offset


def act(norm=True):
    return nn.Sequential(INorm(), nn.LeakyReLU(0.2)) if norm else nn.LeakyReLU(0.2)


def block(cin, cout, k, norm=True):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, k), act(norm), nn.Conv2d(cout, cout, k), act(norm))


class Multi(nn.Module):
    def __init__(self, cin, cout, kernels):
        super().__init__()
        self.b = nn.ModuleList([block(cin, cout // len(kernels), k) for k in kernels])

    def forward(self, x):
        return torch.cat([b(x) for b in self.b], dim=1)


def down(cin, cout, norm=True):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3), act(norm), nn.Conv2d(cout, cout, 3, stride=2), act(norm))


def up(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2), act(), nn.Conv2d(cout, cout, 3), act())


class Generator(nn.Module):
    def __init__(self, widths, bottleneck, n_res, kf=(1, 3, 5, 7), kd=(3, 5)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.e0 = nn.Sequential(block(1, w0, 3, norm=False), Multi(w0, w0, kf))
        self.e1 = nn.Sequential(down(w0, w1), block(w1, w1, 3), Multi(w1, w1, kd))
        self.e2 = nn.Sequential(down(w1, w2), block(w2, w2, 3), Multi(w2, w2, kd))
        self.e3 = nn.Sequential(down(w2, w3), block(w3, w3, 3), Multi(w3, w3, kd))
        self.b_in = block(w3, bottleneck, 3)
        self.res = nn.ModuleList([block(bottleneck, bottleneck, 3) for _ in range(n_res)])
        self.u2, self.d2 = up(bottleneck, w2), nn.Sequential(block(w2, w2, 3), Multi(w2, w2, kd))
        self.u1, self.d1 = up(w2, w1), nn.Sequential(block(w1, w1, 3), Multi(w1, w1, kd))
        self.u0, self.d0 = up(w1, w0), nn.Sequential(block(w0, w0, 3), Multi(w0, w0, kf))
        self.out = nn.Sequential(nn.ConvTranspose2d(w0, 8, 9), act(), nn.Conv2d(8, 1, 9), nn.Tanh())

    def forward(self, x):
        e0 = self.e0(x)
        e1 = self.e1(e0)
        e2 = self.e2(e1)
        h = self.b_in(self.e3(e2))
        for r in self.res:
            h = r(h) + h
        d2 = self.d2(e2 + self.u2(h))
        d1 = self.d1(e1 + self.u1(d2))
        return self.out(self.d0(e0 + self.u0(d1)))


class Critic(nn.Module):
    def __init__(self, widths, size):
        super().__init__()
        cins = (1,) + tuple(widths[:-1])
        self.d = nn.Sequential(*[nn.Sequential(down(a, b, norm=i > 0), nn.Dropout(0.25))
                                 for i, (a, b) in enumerate(zip(cins, widths))])
        self.fc = nn.Linear((size // 16) ** 2 * widths[-1], 1)

    def forward(self, x):
        return self.fc(self.d(x).flatten(1))[:, 0]


def lowpass(x, k):
    return F.conv2d(x, k)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="small", choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (oneDNN bf16 convolutions), as context for jaxdn's bf16 variants")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--momentum", type=float, default=0.9, help="RMSProp momentum (0: none)")
    ap.add_argument("--lowpass-size", type=int, default=33)
    ap.add_argument("--lowpass-variance", type=float, default=15.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    v = VARIANTS[args.variant]
    torch.manual_seed(0)
    s2c, c2s = Generator(v["widths"], v["bottleneck"], v["n_res"]), Generator(v["widths"], v["bottleneck"], v["n_res"])
    critic = Critic(v["critic"], v["crop"])
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    for mdl in (s2c, c2s, critic):
        mdl.to(memory_format=mf)
    r = torch.arange(args.lowpass_size, dtype=torch.float32) - args.lowpass_size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * args.lowpass_variance))
    kern = (g / g.sum())[None, None]
    opt_g = torch.optim.RMSprop(list(s2c.parameters()) + list(c2s.parameters()), lr=args.lr, alpha=0.9,
                                momentum=args.momentum)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=args.lr, alpha=0.9, momentum=args.momentum)
    b, c = v["batch"], v["crop"]
    s = (torch.rand(b, 1, c, c) * 2 - 1).to(memory_format=mf)
    clean = (torch.rand(b, 1, c, c) * 2 - 1).to(memory_format=mf)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            _step()

    def _step():
        with torch.no_grad():
            fake = s2c(s)
        for _ in range(args.n_critic):
            opt_d.zero_grad(set_to_none=True)
            u = torch.rand(b, 1, 1, 1)
            interp = (u * clean + (1 - u) * fake).requires_grad_(True)
            grad = torch.autograd.grad(critic(interp).sum(), interp, create_graph=True)[0]
            gp = ((1 - grad.flatten(1).norm(dim=1)) ** 2).mean()
            loss = -critic(clean).mean() + critic(fake).mean() + 10 * gp
            loss.backward()
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        fk = s2c(s)
        adv = -critic(fk).mean()
        lfc = (lowpass(s, kern) - lowpass(c2s(fk), kern)).abs().mean()
        cyc = (clean - s2c(c2s(clean))).abs().mean()
        (5 * adv + cyc + lfc).backward()
        opt_g.step()

    step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"peer": "torch", "torch": torch.__version__, "variant": args.variant,
                      "channels_last": args.channels_last, "bf16": args.bf16, "threads": torch.get_num_threads(),
                      "s_per_step": min(times), "all": times}))


if __name__ == "__main__":
    main()
