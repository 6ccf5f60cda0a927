#!/usr/bin/env python
"""Benchmark: `learn.get_preds` with `GradCAMCallback` against plain `get_preds` on the same DataLoader.

Measured side by side in one run (alternating, median of the repetitions), as ratios: time with the callback over
time without (target: at most 1.3x), and the peak extra resident memory of each call (RSS sampled every ~1 ms by a
thread; torch's CPU allocations don't show in tracemalloc). `--items 5000` checks that the callback's memory stays
within a small constant of plain get_preds on a large DataLoader (maps go to the CPU at layer resolution per batch;
no activation is kept across batches).

Usage: python bench/callback.py [--quick] [--items 256] [--arch resnet18|tiny] [--size 224] [--bs 32] [--out FILE]
"""
from __future__ import annotations
import argparse, os, statistics, sys, tempfile, threading, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, torch
from PIL import Image
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, resnet18
from fastcam.callback import GradCAMCallback
from fastcam.cli import tiny_xresnet

PAGE = os.sysconf('SC_PAGE_SIZE')
def rss(): return int(open('/proc/self/statm').read().split()[1]) * PAGE

def peak_extra(fn):
    "(result, seconds, peak RSS growth in MB) of fn()"
    base, peak, stop = rss(), [0], threading.Event()
    def watch():
        while not stop.is_set(): peak[0] = max(peak[0], rss()); time.sleep(0.001)
    t = threading.Thread(target=watch); t.start()
    t0 = time.perf_counter()
    try: res = fn()
    finally:
        dt = time.perf_counter() - t0; stop.set(); t.join()
    return res, dt, max(0, max(peak[0], rss()) - base) / 2**20

def make_learner(n, size, bs, arch, root):
    rng = np.random.default_rng(0)
    for c in ('a', 'b'): (root/c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root/('a' if i % 2 else 'b')/f'{i}.png')
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.5, seed=0, item_tfms=Resize(size), bs=bs, num_workers=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, resnet18 if arch == 'resnet18' else tiny_xresnet, pretrained=False)
    return learn, dls.test_dl(sorted(root.rglob('*.png')), bs=bs)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--quick', action='store_true'); p.add_argument('--items', type=int, default=256)
    p.add_argument('--arch', default='resnet18'); p.add_argument('--size', type=int, default=224)
    p.add_argument('--bs', type=int, default=32); p.add_argument('--reps', type=int, default=None); p.add_argument('--out')
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    reps = a.reps or (2 if a.quick else 5)
    with tempfile.TemporaryDirectory() as d:
        learn, dl = make_learner(a.items, a.size, a.bs, a.arch, Path(d))
        plain = lambda d=dl: learn.get_preds(dl=d)[0]
        withcb = lambda d=dl: learn.get_preds(dl=d, cbs=GradCAMCallback())[0]
        small = learn.dls.test_dl(dl.items[:2*a.bs], bs=a.bs)
        with learn.no_bar(): plain(small); withcb(small)   # warm-up (and the callback's one-item layer probe) on two batches
        t, m = {'plain': [], 'cam': []}, {'plain': [], 'cam': []}
        with learn.no_bar():
            for r in range(reps):
                for name, fn in ([('plain', plain), ('cam', withcb)] if r % 2 == 0 else [('cam', withcb), ('plain', plain)]):
                    res, dt, mb = peak_extra(fn); t[name].append(dt); m[name].append(mb)
            check = learn.dls.test_dl(dl.items[:256], bs=a.bs)   # the first 256 items (all of a small set): enough to compare
            same = torch.allclose(plain(check), withcb(check), atol=1e-6)
    tp, tc = statistics.median(t['plain']), statistics.median(t['cam'])
    mp, mc = max(m['plain']), max(m['cam'])
    rows = ["| items | arch | size | bs | get_preds s | with GradCAMCallback s | ratio | peak extra MB plain | peak extra MB callback | reps | preds identical |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {a.items} | {a.arch} | {a.size} | {a.bs} | {tp:.2f} | {tc:.2f} | {tc/tp:.2f}x | {mp:.0f} | {mc:.0f} | {reps} | {same} |"]
    txt = '\n'.join(rows) + f"\n\nTarget: at most 1.3x plain get_preds: {'met' if tc/tp <= 1.3 else 'NOT met'}; CPU, {os.cpu_count()} threads, torch {torch.__version__}.\n"
    print(txt)
    if a.out: Path(a.out).write_text(txt)

if __name__ == '__main__': main()
