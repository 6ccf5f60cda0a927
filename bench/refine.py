#!/usr/bin/env python
"""Benchmark: what the 'gradient' box mode costs (`fastcam.refine`): `cam(..., input_grad=True)` against `cam(...)` and a plain
no-grad forward, side by side in one run.

For torchvision resnet18 and resnet50 (random weights) at 224 px, batch 1 and 8, on CPU (and CUDA when there is one), the
median time of

- `forward`: `model.eval()` and `torch.no_grad()`;
- `cam`: `fastcam.core.cam(model, xb)` (Grad-CAM at layer4: the backward stops at layer4);
- `cam + input_grad`: `fastcam.core.cam(model, xb, input_grad=True)` (the same backward, carried on to the input);

as ratios to the forward, calls interleaved in a shuffled order per round so that noise on a shared machine falls on all
alike; and the extra memory the result keeps (`input_grad`: one float per input pixel and target).

Usage: python bench/refine.py [--models resnet18,resnet50] [--bs 1,8] [--reps 15] [--out bench/results/refine.md]
"""
from __future__ import annotations
import argparse, platform, random, statistics, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import torch, torchvision
from fastcam.core import cam

def calls(model, xb):
    def forward():
        with torch.no_grad(): return model(xb)
    return {'forward': forward, 'cam': lambda: cam(model, xb), 'cam + input_grad': lambda: cam(model, xb, input_grad=True)}

def timed(f, dev):
    if dev.type=='cuda': torch.cuda.synchronize()
    t0 = time.perf_counter(); f()
    if dev.type=='cuda': torch.cuda.synchronize()
    return time.perf_counter() - t0

def row(name, bs, dev, reps):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(dev)
    xb = torch.randn(bs, 3, 224, 224, device=dev)
    cs = calls(model, xb)
    for f in cs.values(): f()   # warm-up
    ts = {k: [] for k in cs}
    for r in range(reps):
        order = list(cs); random.Random(r).shuffle(order)
        for k in order: ts[k].append(timed(cs[k], dev))
    med = {k: statistics.median(v) for k,v in ts.items()}
    kept = cs['cam + input_grad']().input_grad
    return dict(model=name, bs=bs, device=dev.type, **{k: med[k] for k in cs}, kept_mb=kept.numel()*kept.element_size()/2**20)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', default='resnet18,resnet50'); ap.add_argument('--bs', default='1,8')
    ap.add_argument('--reps', type=int, default=15); ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'refine.md'))
    a = ap.parse_args()
    devs = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    rows = [row(m, int(b), d, a.reps) for d in devs for m in a.models.split(',') for b in a.bs.split(',')]
    L = ["# What the 'gradient' box mode costs", '',
         f"`python bench/refine.py`: median of {a.reps} interleaved calls each, torchvision models with random weights at 224 px; "
         f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.", '',
         "| model | batch | device | forward ms | cam / forward | cam + input_grad / forward | cam + input_grad / cam | input_grad kept (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['bs']} | {r['device']} | {1000*r['forward']:.1f} | {r['cam']/r['forward']:.2f} | {r['cam + input_grad']/r['forward']:.2f} | "
                 f"{r['cam + input_grad']/r['cam']:.2f} | {r['kept_mb']:.2f} |")
    md = '\n'.join(L) + '\n'
    Path(a.out).write_text(md); print(md)

if __name__ == '__main__': main()
