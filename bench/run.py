#!/usr/bin/env python
"""Benchmark: files per second of `fastcam run` against a loop of `fastcam.show.get_boxes`, one file at a time.

Both sides explain the same synthetic chest-X-ray DICOMs (`fastcam.synth.make_dicom_set`) with the same exported
Learner (the demo's tiny XResNet on the demo's DataBlock: `DicomBlock`, squish `Resize`, briefly trained), the same
layer (the default), method (Grad-CAM) and box settings, on the CPU, in one process, measured side by side in one run:

- `fastcam run` (called in-process, from the exported pickle): loads the Learner, finds the files, checks each one,
  explains them in batches of `--bs` (one forward and one backward per batch), and writes per file a full-resolution
  overlay PNG (image, heat map, boxes, title) and a record, then boxes.csv, boxes.coco.json, errors.csv, report.html.
- the loop, row 1: `get_boxes(f, dls, learn, show_img=False)` per file: one `test_dl`, forward and backward per file,
  boxes in original pixels; nothing drawn, nothing written (less work than `fastcam run`).
- the loop, row 2: `get_boxes(f, dls, learn)` with its defaults, which draw the image and its boxes (figure closed,
  not saved).
- the loop, row 3: the same with the figure saved as a PNG per file (the image and its boxes, no heat map: still a
  little less drawing than `fastcam run`'s overlay).

The Learner is loaded once for the loop and its load is not timed; `fastcam run`'s time includes its own load.
The target is `fastcam run` at least 5x the loop's files per second.

On a machine that other jobs keep busy, `--threads 1` gives steadier figures: torch's parallel element-wise
ops then wait for descheduled threads, which slows both sides (more so the loop's one-item batches).

`--memory` measures instead the peak resident memory (RSS) of `fastcam run` explaining ONE large file, for a 4096 x 4096
and a 10000 x 10000 input, each a DICOM (16-bit, uncompressed) and a PNG (8-bit grey), each in a fresh process
(`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of that process), next to the same run on a 128 x 128 file (the
process's baseline: Python, torch, fastai, the Learner). `--code DIR` runs the children with another fastcam
checkout first (e.g. `git archive` of the commit before), so before and after are measured side by side in one run.

Usage: python bench/run.py [--quick] [--files 200] [--bs 16] [--size 128] [--threads N] [--out FILE]
       python bench/run.py --memory [--code DIR] [--out FILE]
"""
from __future__ import annotations
import argparse, os, shutil, subprocess, sys, tempfile, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, torch
from PIL import Image
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner, load_learner
from fastcam.synth import make_dicom_set
from fastcam.items import DicomBlock
from fastcam.show import get_boxes
from fastcam.cli import tiny_xresnet, run

def export_learner(root, size):
    "The demo's DataBlock and tiny XResNet, trained for one epoch on 48 synthetic DICOMs, exported to root/model.pkl"
    df = make_dicom_set(root/'train', n=48, seed=1)
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock), get_x=ColReader('file', pref=root/'train'), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), item_tfms=Resize(size, method='squish'))
    torch.manual_seed(0)
    learn = vision_learner(dblock.dataloaders(df, bs=16, num_workers=0, device='cpu'), tiny_xresnet, pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    learn.export((root/'model.pkl').resolve())
    return root/'model.pkl'

def time_run(pkl, files, out, bs):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rc = run(str(pkl), *map(str, files), out=str(out), trust=True, bs=bs, progress=False)
    dt = time.perf_counter() - t0
    assert rc == 0 and len(list((out/'overlays').glob('*.png'))) == len(files), 'fastcam run did not explain every file'
    return dt

def time_loop(learn, files, show=False, out=None):
    if out: shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in files:
        get_boxes(f, learn.dls, learn, show_img=show)
        if out: plt.gcf().savefig(out/f'{f.stem}.png', dpi=72, bbox_inches='tight')
        if show: plt.close('all')
    return time.perf_counter() - t0

def big_inputs(root, sides=(4096, 10000)):
    "A DICOM and a PNG of each side: a smooth synthetic chest-like picture (a bright disc on a gradient), made without float64 copies"
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    files = []
    for n in sides:
        y, x = np.ogrid[:n, :n]
        px = (x*(1500/n) + y*(500/n)).astype(np.uint16)
        px[(y - n//2)**2 + (x - n//3)**2 < (n//8)**2] += 1500
        meta = FileMetaDataset(); meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1'; meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset(); ds.file_meta = meta; ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 'CR', n, n, 1, 'MONOCHROME2'
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 1500, 3000
        ds.PixelData = px.tobytes()
        ds.save_as(root/f'big_{n}.dcm', enforce_file_format=True)
        Image.fromarray((px >> 4).astype(np.uint8)).save(root/f'big_{n}.png')
        del px
        files += [root/f'big_{n}.dcm', root/f'big_{n}.png']
    return files

def peak_rss_mb(pkl, f, out, code=None) -> float:
    "Peak RSS in MB of a fresh `fastcam run` process explaining file `f` (with fastcam from `code` when given)"
    env = {**os.environ, 'PYTHONPATH': str(code) if code else os.environ.get('PYTHONPATH', '')}
    py = ("import resource, sys; from fastcam.cli import main; rc = main(sys.argv[1:]); "
          "print('RC', rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    r = subprocess.run([sys.executable, '-c', py, 'run', str(pkl), str(f), '--out', str(out), '--trust', '--no-progress'],
                       capture_output=True, text=True, env=env, cwd=out.parent)   # not the repo: `python -c` puts the cwd before PYTHONPATH
    line = [l for l in r.stdout.splitlines() if l.startswith('RC ')]
    if not line: return float('nan')
    rc, kb = line[-1].split()[1:]
    ok = rc == '0' and (Path(out)/'boxes.csv').exists()
    return int(kb)/1024 if ok else float('nan')

def memory(a):
    "The --memory table: peak RSS of `fastcam run` per large file, baseline beside it (and the other code's, with --code)"
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        pkl = export_learner(root, a.size)
        small = root/'small.png'; Image.new('L', (128, 128), 90).save(small)
        files = [small] + big_inputs(root)
        codes = ([('before', a.code)] if a.code else []) + [('this', None)]
        rows = []
        for f in files:
            for name, code in codes:
                out = root/f'out_{name}_{f.stem}_{f.suffix[1:]}'
                mb = peak_rss_mb(pkl, f, out, code)
                rows.append((name, f, mb)); print(name, f.name, f'{mb:.0f} MB', flush=True)
                shutil.rmtree(out, ignore_errors=True)
    base = {name: mb for name, f, mb in rows if f.name=='small.png'}
    lines = [f"Peak RSS of `fastcam run` on one file (a fresh process each; tiny XResNet at {a.size} px, CPU; load average {os.getloadavg()[0]:.1f})", '',
             '| code | input | file MB | peak RSS MB | over the 128 px baseline MB |', '|---|---|---|---|---|']
    for name, f, mb in rows:
        size = f.stem.split('_')[-1] if f.name!='small.png' else '128'
        fmb = f.stat().st_size/2**20 if f.exists() else float('nan')
        lines.append(f"| {name} | {size} x {size} {f.suffix[1:].upper()} | {fmb:.1f} | {mb:.0f} | {mb - base[name]:.0f} |")
    return '\n'.join(lines)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='48 files instead of 200')
    p.add_argument('--files', type=int, default=None, help='number of synthetic DICOMs (default 200, 48 with --quick)')
    p.add_argument('--bs', type=int, default=16, help="fastcam run's batch size")
    p.add_argument('--size', type=int, default=128, help='model input size (squish), as the demo')
    p.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument('--out', default=None, help='also write the markdown table to this file')
    p.add_argument('--memory', action='store_true', help='peak RSS per file for 4096 and 10000 px inputs instead of speed')
    p.add_argument('--code', default=None, help='with --memory: also measure the fastcam in this folder (e.g. the commit before)')
    a = p.parse_args()
    if a.memory:
        md = memory(a); print(md)
        if a.out: Path(a.out).write_text(md + '\n')
        return
    n = a.files or (48 if a.quick else 200)
    if a.threads: torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        pkl = export_learner(root, a.size)
        files = [root/'data'/f for f in make_dicom_set(root/'data', n=n, seed=2).file]
        learn = load_learner(pkl, cpu=True)
        get_boxes(files[0], learn.dls, learn, show_img=False)          # warm-up (first-call costs of both paths)
        time_run(pkl, files[:2], root/'warm', a.bs)
        t_run = time_run(pkl, files, root/'run', a.bs)
        rows = [('get_boxes, show_img=False', time_loop(learn, files)),
                ('get_boxes (default: draws the boxes)', time_loop(learn, files, show=True)),
                ('get_boxes + saved PNG', time_loop(learn, files, show=True, out=root/'loop_png'))]
    lines = [f"fastcam run vs a get_boxes loop: {n} synthetic DICOMs, tiny XResNet at {a.size} px, CPU ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f})", '',
             '| files | bs | `fastcam run` s | files/s | loop | loop s | files/s | ratio | target 5x met |',
             '|---|---|---|---|---|---|---|---|---|']
    for name, t in rows:
        lines.append(f"| {n} | {a.bs} | {t_run:.1f} | {n/t_run:.1f} | {name} | {t:.1f} | {n/t:.1f} | {t/t_run:.1f}x | {'yes' if t/t_run >= 5 else 'no'} |")
    md = '\n'.join(lines)
    print(md)
    if a.out: Path(a.out).write_text(md + '\n')

if __name__ == '__main__': main()
