#!/usr/bin/env python
"""What the default box mode costs: `fastcam run` with `--mode segment` (the default since it held on every domain at both
scales, `localization_gradcam.md`) against `--mode threshold` (the map's own regions, the default before), side by side.

Both explain the same synthetic chest-X-ray DICOMs with the same exported Learner (the demo's tiny XResNet, as
`bench/run.py` makes it) in one process on the CPU, alternating the two modes `--reps` times (the first pair warms up
and is dropped); the whole run is timed: loading, reading, the maps (with the input gradient and the input for
'segment'), boxes, overlays, records, report. And the engine alone on one batch: `learn.cam` with and without the input
gradient, and the segmentation of the inputs (`fastcam.refine.input_segments`).

Usage: python bench/box_mode_cost.py [--files 64] [--reps 4] [--threads 1] [--out bench/results/box_mode_cost.md]
"""
from __future__ import annotations
import argparse, shutil, sys, tempfile, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).parent))
from run import export_learner
from fastcam.synth import make_dicom_set
from fastcam.cli import run

def time_mode(pkl, files, out, mode):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    assert run(str(pkl), *map(str, files), out=str(out), trust=True, progress=False, mode=mode) == 0
    return time.perf_counter() - t0

def engine(pkl, files, reps):
    "ms per item: learn.cam without / with the input gradient and input, and the segmentation of the inputs"
    from fastai.learner import load_learner
    from fastcam.refine import input_segments
    learn = load_learner(pkl, cpu=True)
    t = {'maps alone': [], 'maps with the input gradient and input': [], 'segmentation of the inputs': []}
    for _ in range(reps):
        t0 = time.perf_counter(); learn.cam(files, input_grad=False); t['maps alone'].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); r = learn.cam(files, input_grad=True); t['maps with the input gradient and input'].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); [input_segments(im) for im in r.input_image]; t['segmentation of the inputs'].append(time.perf_counter() - t0)
    return {k: 1000*float(np.median(v[1:]))/len(files) for k,v in t.items()}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--files', type=int, default=64); ap.add_argument('--reps', type=int, default=4)
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'box_mode_cost.md'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        pkl = export_learner(root, a.size)
        make_dicom_set(root/'in', n=a.files, seed=7)
        files = sorted((root/'in').rglob('*.dcm'))
        ts = {'segment': [], 'threshold': []}
        for k in range(a.reps):
            for m in ('segment', 'threshold') if k % 2 else ('threshold', 'segment'): ts[m].append(time_mode(pkl, files, root/f'out_{m}', m))
        eng = engine(pkl, files, a.reps)
    ms = {m: 1000*float(np.median(v[1:]))/len(files) for m,v in ts.items()}
    lines = [f"# What the default box mode costs", "", f"`python bench/box_mode_cost.py --files {a.files} --reps {a.reps} --threads {a.threads}`: "
             f"{len(files)} synthetic DICOMs, the demo's tiny XResNet at {a.size} px, CPU, {a.threads} torch thread(s); median of {a.reps-1} runs after a warm-up, modes alternated.", "",
             "| `fastcam run` | ms / file | x the plain mode |", "|---|---|---|",
             f"| `--mode threshold` (the map's own regions) | {ms['threshold']:.1f} | 1.00 |",
             f"| `--mode segment` (the default) | {ms['segment']:.1f} | {ms['segment']/ms['threshold']:.2f} |", "",
             "| engine, one batch of all files | ms / item | x maps alone |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v/eng['maps alone']:.2f} |" for k,v in eng.items()]
    md = '\n'.join(lines) + '\n'
    Path(a.out).write_text(md); print(md)

if __name__ == '__main__': main()
