#!/usr/bin/env python
"""Benchmark: what limits the boxes' BoxAcc@0.5 on `bench/localization.py`'s domains: the box rule, or where the map
puts the box?

The models and data are `bench/localization.py`'s (run it first: it trains and caches them): 5 synthetic DICOM
domains x 3 model seeds, a small XResNet trained from scratch per (domain, seed), the domain `held_out` used in no
choice. On each run's validation positives (target 'nodule'), for the Grad-CAM map at each layer of `--layers`:

- **map's box**: BoxAcc@0.5 of the top box at the default threshold (`fastcam.tune.default_recipe`), as the
  benchmark measures it;
- **any threshold, per image**: the share of positives for which SOME threshold from 0.05 to 0.95 gives a top box
  with IoU >= 0.5 (an oracle that picks the threshold per image, knowing the truth): the ceiling of every
  threshold rule on this map;
- **true size at the map's centre**: a box of the lesion's TRUE width and height, centred where the map's top box
  is centred (an oracle for the size): the ceiling of every rule that sizes boxes perfectly but centres them from the map;
- **centre error**: the distance from the top box's centre to the nearest lesion's centre, over the lesion's side
  (median); at IoU >= 0.5, two boxes of one size may be apart by at most about 1/6 of their side in each axis.

And one way to centre boxes finer than the map's cells, measured here as a candidate before it was built (it is now the box
mode 'gradient', `fastcam.refine`, which `bench/localization.py` measures beside the plain regions): the model's input
gradient (d logit / d pixel, positive part, Gaussian-smoothed by `sigma` original pixels) inside the map's region
(the connected part at >= `t` of the map's maximum around its peak), thresholded at `u` of its maximum, top
region's box (**gradient-refined box**); its setting is chosen on the tuning domains' mean BoxAcc and reported on the
held-out domain at that setting; and **true size at the gradient's centre** (its centroid, sigma 2, t 0.5).

`--scale 2`: the models of `bench/localization.py --scale 2` (images and input twice the size; box_limits_x2.md).

Usage: python bench/box_limits.py [--jobs 2] [--scale 1] [--layers stage:-1 stage:-2] [--out bench/results/box_limits.md]
"""
from __future__ import annotations
import argparse, json, multiprocessing, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, pandas as pd, torch
from scipy.ndimage import label, gaussian_filter
sys.path.insert(0, str(Path(__file__).parent))
import localization as L
from fastcam.core import learner_cam
from fastcam.metrics import box_iou
from fastcam.boxes import threshold_boxes, maps_to_original
from fastcam.tune import _gts_of, default_recipe, mode_thresholds

SIGMAS,TS,US = (1, 2, 3),(0.3, 0.5),(0.2, 0.3, 0.4, 0.5, 0.6)
ORACLE_T = np.round(np.arange(0.05, 0.96, 0.05), 2)

def _hit(b, g) -> bool: return len(b) > 0 and box_iou(torch.tensor(np.asarray(b, np.float64).reshape(1, 4)), torch.as_tensor(g)).max().item() >= 0.5
def _centre(b): return (b[0]+b[2])/2, (b[1]+b[3])/2

def _nearest(g, cx, cy):
    "The true box of `g` `[K, 4]` whose centre is nearest `(cx, cy)`"
    c = np.stack([(g[:, 0]+g[:, 2])/2, (g[:, 1]+g[:, 3])/2], 1)
    return g[np.argmin(np.hypot(c[:, 0]-cx, c[:, 1]-cy))]

def _sized(cx, cy, w, h): return [cx-w/2, cy-h/2, cx+w/2, cy+h/2]

def input_gradients(learn, files, c, bs=32):
    "d logit_c / d input for each file's model input `[N, C, h, w]` (the model is left as it was)"
    m,out = learn.model,[]
    was = m.training; m.eval()
    try:
        for b in learn.dls.test_dl(files, bs=bs):
            x = b[0].detach().clone().requires_grad_(True)
            g, = torch.autograd.grad(m(x)[:, c].sum(), x)
            out.append(g.detach())
    finally: m.train(was)
    return torch.cat(out)

def one(domain, seed, layers, scale=1):
    torch.set_num_threads(1)
    path,df = L.domain_set(domain, L.FULL['n'], scale)
    learn,info = L.trained(domain, path, df, seed, L.FULL['epochs'], int(96*scale))
    valid = [str(path/f) for f in df.file[df.is_valid]]
    gts = _gts_of(valid, L.gt_dict(path))
    pos = [i for i,g in enumerate(gts) if len(g)]
    files,gts = [valid[i] for i in pos],[gts[i].numpy() for i in pos]
    c = learn.dls.vocab.o2i['nodule']
    thr = mode_thresholds['threshold']   # the map's own box (the default box mode before 'segment')
    row = dict(domain=domain, seed=seed, accuracy=info['accuracy'], positives=len(files))
    grads = input_gradients(learn, files, c)
    negs = [valid[i] for i,g in enumerate(_gts_of(valid, L.gt_dict(path))) if not len(g)]
    rn = learner_cam(learn, negs, layers[0], 'nodule', 'gradcam', bs=32)
    row['negative_boxes'] = sum(len(threshold_boxes(rn.original_maps(i, fill=0.)[0], thr, default_recipe['min_area'], 1)[0]) > 0 for i in range(len(negs)))
    for layer in layers:
        r = learner_cam(learn, files, layer, 'nodule', 'gradcam', bs=32)
        plain,has,any_t,true_size,err,refined,g_true = [],[],[],[],[],{},[]
        for i,g in enumerate(gts):
            mo = r.original_maps(i, fill=0.)[0].numpy().astype(np.float64)
            H,W = mo.shape
            b,_ = threshold_boxes(torch.from_numpy(mo), thr, default_recipe['min_area'], 1)
            plain.append(_hit(b[0] if len(b) else [], g)); has.append(len(b) > 0)
            any_t.append(any(_hit(bb[0], g) for t in ORACLE_T for bb in [threshold_boxes(torch.from_numpy(mo), float(t), default_recipe['min_area'], 1)[0]] if len(bb)))
            if len(b):
                cx,cy = _centre(b[0]); gg = _nearest(g, cx, cy)
                true_size.append(_hit(_sized(cx, cy, gg[2]-gg[0], gg[3]-gg[1]), g))
                err.append(np.hypot(cx - (gg[0]+gg[2])/2, cy - (gg[1]+gg[3])/2)/np.sqrt((gg[2]-gg[0])*(gg[3]-gg[1])))
            else: true_size.append(False)
            if layer != layers[0]: continue
            py,px = divmod(int(np.argmax(mo)), W)
            a = maps_to_original(grads[i].sum(0).clamp(min=0)[None], (H, W), learn.dls, 0.)[0].numpy().astype(np.float64)
            for s in SIGMAS:
                sm = gaussian_filter(a, s)
                for t in TS:
                    lab,_ = label(mo >= t*mo.max())
                    w = np.where(lab == lab[py, px], sm, 0.)
                    if s==2 and t==0.5:
                        ys,xs = np.mgrid[:H, :W]
                        gx,gy = (w*(xs+.5)).sum()/max(w.sum(), 1e-12),(w*(ys+.5)).sum()/max(w.sum(), 1e-12)
                        gg = _nearest(g, gx, gy); g_true.append(_hit(_sized(gx, gy, gg[2]-gg[0], gg[3]-gg[1]), g))
                    for u in US:
                        bb,_ = threshold_boxes(torch.from_numpy(w), u, 4, 1, 'mass')
                        refined.setdefault(f's{s} t{t} u{u}', []).append(_hit(bb[0] if len(bb) else [], g))
        row[layer] = dict(plain=float(np.mean(plain)), any_threshold=float(np.mean(any_t)), true_size=float(np.mean(true_size)),
                          centre_error=float(np.median(err)) if err else float('nan'))
        if layer==layers[0]:   # the AUROC (hit vs miss, every file's top box) of a score that knows which files have a lesion and nothing more
            n,m = row['negative_boxes'],sum(1 for h,b in zip(plain, has) if b and not h)
            row['auroc_ceiling'] = (n + 0.5*m)/(n + m) if n + m else float('nan')
        if refined: row['refined'] = {k: float(np.mean(v)) for k,v in refined.items()}; row['grad_true_size'] = float(np.mean(g_true))
    return row

def ms(v): v = np.asarray(v, float); return f"{100*v.mean():.0f} +- {100*v.std():.0f}"

def report(rows, layers, secs, scale=1):
    tune,ho = [r for r in rows if r['domain']!=L.HELD_OUT],[r for r in rows if r['domain']==L.HELD_OUT]
    keys = list(rows[0]['refined'])
    best = max(keys, key=lambda k: np.mean([r['refined'][k] for r in tune]))
    sc = '' if scale==1 else f' --scale {scale:g}'
    L_ = [f"# What limits the boxes (BoxAcc@0.5 of the top box, validation positives){f', images and input x{scale:g}' if sc else ''}", '',
          f"`python bench/box_limits.py{sc}`: the models of `bench/localization.py{sc}` (5 domains x 3 seeds, {96*scale:g} px, small XResNet), Grad-CAM, target 'nodule'; "
          f"mean +- sd over runs; {secs/60:.1f} min on 2 CPU cores. What each column means: the docstring of bench/box_limits.py.", '',
          "| runs | layer | map's box (t=%.1f) %% | any threshold, per image (oracle) %% | true size at the map's centre (oracle) %% | centre error / lesion side (median) |" % default_recipe['threshold'],
          "|---|---|---|---|---|---|"]
    for name,rs in (('tuning domains', tune), (f'held out ({L.HELD_OUT})', ho)):
        for layer in layers:
            v = lambda k: [r[layer][k] for r in rs]
            L_.append(f"| {name} | {layer} | {ms(v('plain'))} | {ms(v('any_threshold'))} | {ms(v('true_size'))} | {np.mean(v('centre_error')):.2f} |")
    L_ += ['', "Per domain, last stage:", '', "| domain | runs | map's box % | any threshold (oracle) % | true size at the map's centre (oracle) % | gradient-refined box % | true size at the gradient's centre (oracle) % |", "|---|---|---|---|---|---|---|"]
    for d in dict.fromkeys(r['domain'] for r in rows):
        rs = [r for r in rows if r['domain']==d]; v = lambda k: [r[layers[0]][k] for r in rs]
        L_.append(f"| {d} | {len(rs)} | {ms(v('plain'))} | {ms(v('any_threshold'))} | {ms(v('true_size'))} | {ms([r['refined'][best] for r in rs])} | {ms([r['grad_true_size'] for r in rs])} |")
    L_ += ['', "Box-score AUROC (hit vs miss over every validation file's top box, no gate) of a score that knows which files have a lesion "
           "and nothing more (all hits and misses on positives above every box on a negative, hits and misses on positives in random order): "
           "(boxes on negatives + misses on positives / 2) / (boxes on negatives + misses on positives): "
           f"tuning domains {ms([r['auroc_ceiling'] for r in tune])} %, held out {ms([r['auroc_ceiling'] for r in ho])} %. A score goes above it only "
           "by telling a positive's hit from its miss.", '']
    L_ += ['', f"Gradient-refined box, setting chosen on the tuning domains: **{best}** (sigma in original pixels, t the map's region, u the gradient's threshold); "
           f"tuning domains {ms([r['refined'][best] for r in tune])} %, held out {ms([r['refined'][best] for r in ho])} % "
           f"(the map's box at the default threshold: {ms([r[layers[0]]['plain'] for r in tune])} % and {ms([r[layers[0]]['plain'] for r in ho])} %).", '']
    return '\n'.join(L_) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--jobs', type=int, default=2)
    ap.add_argument('--layers', nargs='+', default=['stage:-1', 'stage:-2'], help='Grad-CAM layers measured (the first also gets the gradient-refined boxes)')
    ap.add_argument('--domains', nargs='+', default=None); ap.add_argument('--seeds', type=int, nargs='+', default=None)
    ap.add_argument('--scale', type=float, default=1, help="the models of `bench/localization.py --scale`")
    ap.add_argument('--out', default=None, help='default: bench/results/box_limits.md (box_limits_x2.md for --scale 2)')
    a = ap.parse_args()
    a.out = a.out or str(Path(__file__).parent/'results'/('box_limits.md' if a.scale==1 else f'box_limits_x{a.scale:g}.md'))
    t0,cfg = time.time(),L.FULL
    jobs = [(d, s) for d in (a.domains or cfg['domains']) for s in (a.seeds or cfg['seeds'])]
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context('spawn')) as ex:
        rows = list(ex.map(one, *zip(*jobs), [a.layers]*len(jobs), [a.scale]*len(jobs)))
    rows = [r for r in rows if r['accuracy'] >= cfg['min_acc']]
    md = report(rows, a.layers, time.time()-t0, a.scale)
    Path(a.out).write_text(md); Path(a.out).with_suffix('.json').write_text(json.dumps(rows))
    print(md)

if __name__ == '__main__': main()
