#!/usr/bin/env python
"""GPU bench: Grad-CAM against a plain forward pass, side by side in one run, and `fastcam run` files per second.

- Grad-CAM vs forward: torchvision's ViT-B/16 (random weights, 224 px) and ResNet-50, batch 32 and 128, float32 and
  autocast float16. "forward" is `model(xb)` under `torch.no_grad()` (what `get_preds` costs); "Grad-CAM" is
  `fastcam.core.cam(model, xb)` at the automatic layer (one forward with the layer hooked, one backward to that layer,
  the maps). The ratio is Grad-CAM time over forward time, measured in the same process, alternately.
- `fastcam run`: a ResNet-34 Learner (random weights, 224 px squish) exported, then `fastcam run --device cuda` over
  synthetic chest-X-ray PNGs (`fastcam.synth.make_png_set`), called in-process; files/s include reading, overlays and
  all outputs (written by one background thread) and the model's load.

Usage: python bench/gpu.py [--out FILE] [--quick]
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import torch, torchvision
from fastcam.core import cam

def _time(f, n):
    "Median seconds of `n` calls of `f` after two warm-up calls"
    for _ in range(2): f()
    ts = []
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]

def bench_cam(rows, name, model, batches, n):
    for dtype in ('float32', 'float16'):
        for bs in batches:
            xb = torch.randn(bs, 3, 224, 224, device='cuda')
            ac = torch.autocast('cuda', dtype=torch.float16, enabled=dtype=='float16')
            def fwd():
                with torch.no_grad(), ac: model(xb)
            def gc():
                with ac: return cam(model, xb)
            tf,tc = _time(fwd, n),_time(gc, n)
            layer = gc().layer
            rows.append(f"| {name} | {dtype} | {bs} | {layer} | {1e3*tf:.1f} | {1e3*tc:.1f} | {tc/tf:.2f}x | {bs/tc:.0f} |")
            print(rows[-1], flush=True)

def bench_run(n_files, bs):
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner, resnet34
    from fastcam.synth import make_png_set
    from fastcam.cli import run
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        df = make_png_set(root/'train', n=16, seed=1)
        dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader('file', pref=root/'train'), get_y=ColReader('label'),
                           splitter=ColSplitter('is_valid'), item_tfms=Resize(224, method='squish'))
        torch.manual_seed(0)
        learn = vision_learner(dblock.dataloaders(df, bs=8, num_workers=0, device='cpu'), resnet34, pretrained=False)
        learn.export(root/'model.pkl')
        make_png_set(root/'in', n=n_files, seed=2)
        files = sorted((root/'in'/'images').glob('*.png'))
        t = time.perf_counter()
        rc = run(str(root/'model.pkl'), str(root/'in'/'images'), out=str(root/'out'), trust=True, device='cuda', bs=bs, progress=False)
        dt = time.perf_counter()-t
        assert rc == 0, 'fastcam run failed'
        return len(files),dt

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=None, help='write the markdown here (default: print only)')
    p.add_argument('--quick', action='store_true', help='fewer repeats and files')
    a = p.parse_args()
    if not torch.cuda.is_available(): sys.exit('bench/gpu.py needs a CUDA GPU')
    torch.backends.cudnn.benchmark = True
    n = 3 if a.quick else 7
    lines = [f"# GPU bench ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python bench/gpu.py`)", '',
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}; random weights, 224 px; median of {n} after 2 warm-ups.", '',
             '## Grad-CAM (fastcam.core.cam, automatic layer) against a no-grad forward of the same batch', '',
             '| model | precision | batch | layer | forward ms | Grad-CAM ms | ratio | Grad-CAM images/s |', '|---|---|---|---|---|---|---|---|']
    print('\n'.join(lines), flush=True)
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(num_classes=1000).eval().cuda()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)   # torchvision zero-initialises the head: give it a gradient
    bench_cam(lines, 'ViT-B/16', vit, (32, 128), n)
    del vit
    rn = torchvision.models.resnet50().eval().cuda()
    bench_cam(lines, 'ResNet-50', rn, (32, 128), n)
    del rn; torch.cuda.empty_cache()
    nf = 128 if a.quick else 512
    k,dt = bench_run(nf, 64)
    lines += ['', '## fastcam run --device cuda', '', '| model | files | bs | seconds | files/s |', '|---|---|---|---|---|',
              f"| ResNet-34, 224 px squish | {k} | 64 | {dt:.1f} | {k/dt:.1f} |", '',
              f"(CPU cores: {os.cpu_count()}; files/s include the Learner's load, reading, overlays, boxes.csv, COCO, report.)"]
    print('\n'.join(lines[-7:]), flush=True)
    if a.out: Path(a.out).write_text('\n'.join(lines)+'\n')

if __name__ == '__main__': main()
