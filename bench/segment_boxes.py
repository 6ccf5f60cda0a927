#!/usr/bin/env python
"""Candidate, measured before it is built: size each box by the image segment the model's input gradient points to.

What limits the boxes is their size and centre around a lesion about one map cell wide (`box_limits.md`). The map says
*where* (its region above a threshold), the model's input gradient says *which pixels* inside it raise the class score
(`fastcam.refine`), and the image itself says where a structure *ends*: its segments. This script tries the box of
one image segment inside the map's top region:

- the model input of each file (as `learn.dls.test_dl` makes it), its channel mean min-max scaled to 0..1 per image, is
  cut into segments by Felzenszwalb & Huttenlocher's graph-based segmentation (2004; `skimage.segmentation.felzenszwalb`,
  `scale` k, sigma 0.8, min_size 8 input pixels) at the model input's size, so that k means the same for any original
  size (`fastcam.refine.input_segments`, on the result's `input_image`); the label image is carried to original pixels exactly (nearest input pixel, through the same inverse geometry
  as the maps, `fastcam.boxes.maps_to_original` of the input's pixel coordinates);
- inside the map's top region at threshold 0.7 (the gradient mode's own), **peak segment**: the segment holding the
  input saliency's maximum (`fastcam.refine.original_saliency`); **best segment**: of the segments that meet the
  region, the one whose mean saliency is highest;
- the box is that segment's box; a segment over a quarter of the image (the background) falls back to the gradient
  mode's box (`refine_region`, grad_threshold 0.2).

A simulation of the tune step with it among the choices: on 24 positives of a run drawn at random (50 draws), the best
of the map's own box, the gradient box and the rule's pick, and what that choice boxes on the run's other positives.
And a known-answer probe without a model: a bright square on a flat image, with and without blur and noise.

Since built as the box mode 'segment' (`fastcam.refine`: the best segment at k=100, joined with the segments around
it that lie wholly inside the region, against a finding's rim), measured on its own line beside the candidates (not
part of the rule's choice).

Capped since (a lead found in review, measured here first): a segment box larger than its region's own box falls back
to the gradient box (the map bounds where the evidence is, with no prior on a finding's size); the mode as first built,
without the cap, has its own line.

Ranked by saliency times the map since (`fastcam.refine.segment_evidence`): of the segments a region meets, the one with
the highest mean of input saliency x map over its pixels, not of the saliency alone (on one held-out model seed the
input gradient lit the ribs inside the region); the capped mode ranked by the saliency alone has its own line.

Baselines on the same files: the map's own box (the map's region at 0.8, `mode_thresholds['threshold']`: the default box before the segment mode became it) and the gradient
mode at its own thresholds (0.7, 0.2). BoxAcc@0.5 of the top box on each run's validation positives, Grad-CAM at the
last stage, no tta; the models and data of `bench/localization.py` at both scales (run `bench/localization.py` and
`bench/localization.py --scale 2` first: they train and cache them). The rule, fixed before this script was written:
the variant whose worse tuning-domain mean over the two scales is highest; the held-out domain is reported, not used.

The domains are one generator's (`fastcam.synth.make_dicom_set`) whose lesions are soft blobs with visible edges, the
case segments are made for: a gain here says the idea works where findings have edges, not that it carries to real
X-rays, where nodules are subtler. That is what the tune step is for (it measures on the user's labelled files).

Usage: python bench/segment_boxes.py [--jobs 2] [--out bench/results/segment_boxes.md]
       python bench/segment_boxes.py --picture bench/results/segment_boxes.png   (examples, drawn)
"""
from __future__ import annotations
import argparse, json, multiprocessing, os, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, pandas as pd, torch
sys.path.insert(0, str(Path(__file__).parent))
import localization as L
from fastcam.refine import input_segments, original_segments, _region_segment, max_segment   # the segments as the built mode makes them

KS,BIG = (20, 50, 100),0.25
CANDIDATES = [f'{v} segment k={k}' for v in ('peak', 'best') for k in KS]
PRODUCT = "fastcam's mode 'segment' (t=0.7)"   # built since: the segment at k=100 with the most saliency x map, joined with its neighbours inside the region, its box capped at the region's own (`fastcam.refine.segment_region`)
BY_SALIENCY = "the capped mode ranked by saliency alone (t=0.7)"   # the mode before segments were ranked by saliency x map
UNCAPPED = "the mode before its cap (t=0.7)"   # as first built: no cap (a segment box larger than its region's own box was kept)
VARIANTS = ["map's own box (t=0.8)", 'gradient box (t=0.7, u=0.2)'] + CANDIDATES + [PRODUCT, BY_SALIENCY, UNCAPPED]

def segment_box(region, s:np.ndarray, seg:np.ndarray, how:str, fallback):
    "The box of the chosen segment in `region` (the peak's, or the highest mean saliency's); `fallback` for a segment over BIG of the image"
    ys,xs = region.coords[:, 0],region.coords[:, 1]
    if how=='peak': j = seg[ys[np.argmax(s[ys, xs])], xs[np.argmax(s[ys, xs])]]
    else:
        ids = np.unique(seg[ys, xs]); ids = ids[ids >= 0]
        j = max(ids, key=lambda i: s[seg==i].mean()) if len(ids) else -1
    m = seg==j
    if j < 0 or m.sum() > BIG*m.size: return fallback
    yy,xx = np.nonzero(m)
    return [int(xx.min()), int(yy.min()), int(xx.max())+1, int(yy.max())+1]

def one(scale, name, seed):
    torch.set_num_threads(1)
    from fastcam.core import learner_cam
    from fastcam.boxes import threshold_regions, threshold_boxes
    from fastcam.refine import original_saliency, refine_region, segment_region
    from fastcam.metrics import box_iou
    from fastcam.tune import default_recipe, mode_thresholds
    cfg = L.FULL
    path,df = L.domain_set(name, cfg['n'], scale)
    learn,info = L.trained(name, path, df, seed, cfg['epochs'], int(96*scale))
    gt = L.gt_dict(path)
    files = [str(path/f) for f in df.file[df.is_valid] if str(path/f) in gt]
    t0 = time.perf_counter()
    r = learner_cam(learn, files, None, 'nodule', 'gradcam', bs=32, input_grad=True)
    t_cam = time.perf_counter() - t0
    t0 = time.perf_counter()
    segs = {k: [input_segments(im, k) for im in r.input_image] for k in KS}   # the model input the maps were made from
    t_seg = (time.perf_counter() - t0)/len(KS)
    hits = {v: [] for v in VARIANTS}
    for i,f in enumerate(files):
        g,hw = gt[f].float(),r.orig_sizes[i]
        hit = lambda b: b is not None and box_iou(torch.tensor([[float(v) for v in b]]), g).max().item() >= 0.5
        mo = r.original_maps(i, fill=0.)[0]
        b,_ = threshold_boxes(mo, mode_thresholds['threshold'], default_recipe['min_area'], 1, 'max', relu=False)
        hits[VARIANTS[0]].append(hit(b[0]) if len(b) else False)
        regs,_ = threshold_regions(mo, mode_thresholds['gradient'], default_recipe['min_area'], 'max', relu=False)
        if not regs:
            for v in VARIANTS[1:]: hits[v].append(False)
            continue
        s = original_saliency(r.input_grad[i, 0], hw, r.geometry)
        gb = refine_region(regs[0], s, default_recipe['grad_threshold'], default_recipe['min_area'])
        hits[VARIANTS[1]].append(hit(gb))
        for k in KS:
            seg = original_segments(segs[k][i], hw, r.geometry)
            for how in ('peak', 'best'): hits[f'{how} segment k={k}'].append(hit(segment_box(regs[0], s, seg, how, gb)))
        seg = original_segments(segs[100][i], hw, r.geometry)
        hits[PRODUCT].append(hit(segment_region(regs[0], s, seg, default_recipe['grad_threshold'], default_recipe['min_area'], cam=mo)))
        hits[BY_SALIENCY].append(hit(segment_region(regs[0], s, seg, default_recipe['grad_threshold'], default_recipe['min_area'])))
        m = _region_segment(regs[0], s, seg)
        hits[UNCAPPED].append(hit(gb if m is None or m.sum() > max_segment*m.size else [int(np.nonzero(m)[1].min()), int(np.nonzero(m)[0].min()), int(np.nonzero(m)[1].max())+1, int(np.nonzero(m)[0].max())+1]))
    return dict(scale=scale, domain=name, seed=seed, accuracy=info['accuracy'], positives=len(files), t_cam=t_cam, t_seg=t_seg,
                **{v: float(np.mean(h)) for v,h in hits.items()}, per_file={v: [bool(x) for x in h] for v,h in hits.items()})

def tune_choice(rows, pick, n=24, reps=50, seed=0) -> list:
    "Markdown lines: a tune step that, on `n` labelled positives drawn at random from a run's, picks the best of the map's own box, the gradient box and `pick` (ties to the simpler), and what it then boxes on the run's other positives"
    rng,vs = np.random.default_rng(seed),[VARIANTS[0], VARIANTS[1], pick]
    out = ["| domain | 96 px: reaches | chose (own box / gradient / segment) | 192 px: reaches | chose |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r['domain'] for r in rows):
        cells = []
        for sc in (1, 2):
            got,chose = [],[]
            for r in (r for r in rows if r['domain']==name and r['scale']==sc and r['accuracy'] >= L.FULL['min_acc']):
                h = {v: np.array(r['per_file'][v]) for v in vs}
                for _ in range(reps):
                    idx = rng.permutation(len(h[vs[0]])); a,b = idx[:n],idx[n:]
                    best = max(vs, key=lambda v: (h[v][a].mean(), -vs.index(v)))
                    got.append(h[best][b].mean()); chose.append(vs.index(best))
            cells += [ms(got), ' / '.join(str(chose.count(k)) for k in range(3))]
        out.append(f"| {name}{' (held out)' if name==L.HELD_OUT else ''} | " + " | ".join(cells) + " |")
    return out

def rim_probe() -> list:
    "Markdown lines: the best segment's box on a 16x16 square (in a 40x40 image, the map's region wider than it), flat or blurred, with and without noise"
    from scipy.ndimage import gaussian_filter
    from skimage.measure import regionprops, label
    from fastcam.metrics import box_iou
    from fastcam.refine import segment_region
    rng,reg = np.random.default_rng(0),regionprops(label(np.pad(np.ones((26, 28), int), ((4, 10), (6, 6)))))[0]
    sal = np.zeros((40, 40)); sal[12:20, 16:24] = 1.
    out = ["| noise sd | blur sigma 0 | 1 | 2 |", "|---|---|---|---|"]
    for noise in (0, 0.05, 0.1):
        cells = []
        for sig in (0, 1, 2):
            im = np.zeros((40, 40)); im[8:24, 12:28] = 1.
            im = (gaussian_filter(im, sig) if sig else im) + noise*rng.standard_normal(im.shape)
            seg = input_segments(torch.tensor(im).float(), 100)
            iou = lambda b: f"{box_iou(torch.tensor([b]).float(), torch.tensor([[12., 8, 28, 24]])).item():.2f}"
            cells.append(f"{iou(segment_box(reg, sal, seg, 'best', None))} / {iou(segment_region(reg, sal, seg, 0.2))}")
        out.append(f"| {noise:g} | " + " | ".join(cells) + " |")
    return out

def ms(v): v = pd.Series(v, dtype=float); return f"{100*v.mean():.0f} +- {100*v.std(ddof=0):.0f}"

def report(rows, secs):
    d = pd.DataFrame([{k: v for k,v in r.items() if k!='per_file'} for r in rows])
    d = d[d.accuracy >= L.FULL['min_acc']]
    tr,ho = d[d.domain!=L.HELD_OUT],d[d.domain==L.HELD_OUT]
    worst = {v: min(tr[tr.scale==s][v].mean() for s in (1, 2)) for v in CANDIDATES}
    pick = max(worst, key=worst.get)
    out = ["# The box of the image segment the input gradient points to: measured as a candidate, built (box mode 'segment'), capped, now the default, ranked by saliency x map", "",
           f"`python bench/segment_boxes.py` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {secs/60:.1f} min. "
           "What each line means and the rule: the script's docstring. BoxAcc@0.5 of the top box on the validation positives, % (mean +- sd over runs); "
           f"runs below {L.FULL['min_acc']:.0%} accuracy left out ({int((pd.DataFrame(rows).accuracy < L.FULL['min_acc']).sum())}).", "",
           f"The rule's pick (the best worse tuning-domain mean over the two scales): **{pick}** ({100*worst[pick]:.0f} %).", "",
           "| box | tuning, 96 px | held out, 96 px | tuning, 192 px | held out, 192 px |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        cells = [ms(x[x.scale==s][v]) for s in (1, 2) for x in (tr, ho)]
        out.append(f"| {'**'+v+'**' if v==pick else v}{' (built since, capped since, ranked by saliency x map since)' if v==PRODUCT else ' (as first built)' if v==UNCAPPED else ''} | " + " | ".join(cells) + " |")
    out += ["", "Per domain, the pick against the map's own box and the gradient box (96 px / 192 px):", "",
            "| domain | map's own box | gradient box | " + pick + " | " + PRODUCT + " | " + BY_SALIENCY + " | " + UNCAPPED + " |", "|---|---|---|---|---|---|---|"]
    for name,x in d.groupby('domain', sort=False):
        out.append(f"| {name}{' (held out)' if name==L.HELD_OUT else ''} | " + " | ".join(' / '.join(ms(x[x.scale==s][v]) for s in (1, 2)) for v in (VARIANTS[0], VARIANTS[1], pick, PRODUCT, BY_SALIENCY, UNCAPPED)) + " |")
    out += ["", f"Cost: the segmentation of one model input takes {1000*d.t_seg.sum()/d.positives.sum():.1f} ms on one CPU thread, against "
            f"{1000*d.t_cam.sum()/d.positives.sum():.1f} ms of the Grad-CAM call with the input gradient (the same files, same process)."]
    out += ["", f"With the pick among a tune step's choices (a simulation on the same hits, not `learn.tune_boxes`): on 24 labelled positives drawn at random "
            f"(50 draws a run), the best of the map's own box, the gradient box and {pick}, and its BoxAcc on the run's other positives, %:", ""] + tune_choice(rows, pick)
    out += ["", "A known-answer probe (no model): IoU of the best segment's box with a bright 16x16 square on a flat image, the map's "
            "region wider than the square and the saliency inside it; the square's edge, blurred or not, can be a segment of its own, "
            "so on clean images the box is the square's core (k=100; the candidate / fastcam's mode, which joins the segments around the chosen one that lie inside the region):", ""] + rim_probe()
    return '\n'.join(out) + '\n'

def picture(out, scale=1, name=None, seed=0, k=100, n=8):   # k: the rule's pick in segment_boxes.md
    "Draw `n` validation positives of one run: the truth (white), the map's own box (red), the gradient box (orange), fastcam's segment box at its own threshold (cyan)"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import patches
    from fastcam.core import learner_cam
    from fastcam.boxes import threshold_regions, threshold_boxes
    from fastcam.refine import original_saliency, refine_region, segment_boxes
    from fastcam.show import original_image
    from fastcam.tune import default_recipe, mode_thresholds
    name = name or L.HELD_OUT
    path,df = L.domain_set(name, L.FULL['n'], scale)
    learn,_ = L.trained(name, path, df, seed, L.FULL['epochs'], int(96*scale))
    gt = L.gt_dict(path)
    files = [str(path/f) for f in df.file[df.is_valid] if str(path/f) in gt][:n]
    r = learner_cam(learn, files, None, 'nodule', 'gradcam', input_grad=True)
    segs = [input_segments(im, k) for im in r.input_image]
    fig,axs = plt.subplots(2, n//2, figsize=(3*n//2, 6.4))
    for i,(f,ax) in enumerate(zip(files, axs.flat)):
        hw = r.orig_sizes[i]; mo = r.original_maps(i, fill=0.)[0]
        b,_ = threshold_boxes(mo, mode_thresholds['threshold'], default_recipe['min_area'], 1, 'max', relu=False)
        regs,_ = threshold_regions(mo, mode_thresholds['gradient'], default_recipe['min_area'], 'max', relu=False)
        s = original_saliency(r.input_grad[i, 0], hw, r.geometry)
        gb = refine_region(regs[0], s, default_recipe['grad_threshold'], default_recipe['min_area']) if regs else None
        sb = segment_boxes(mo, s, original_segments(segs[i], hw, r.geometry), mode_thresholds['segment'], default_recipe['grad_threshold'], default_recipe['min_area'])
        sb = sb[0].tolist() if len(sb) else None
        ax.imshow(np.asarray(original_image(f)), cmap='bone'); ax.set_axis_off(); ax.set_title(Path(f).stem, fontsize=9)
        for box,c,lw in [(t, 'white', 2.5) for t in gt[f].tolist()] + [(b[0] if len(b) else None, 'red', 1.5), (gb, 'orange', 1.5), (sb, 'cyan', 1.5)]:
            if box is not None: ax.add_patch(patches.Rectangle((box[0], box[1]), box[2]-box[0], box[3]-box[1], fill=False, ec=c, lw=lw))
    fig.suptitle(f"{name} (scale {scale}, seed {seed}): truth white, map's own box (t=0.8) red, gradient box orange, fastcam's default, the segment box (t={mode_thresholds['segment']}) cyan", fontsize=10)
    fig.tight_layout(); fig.savefig(out, dpi=80); plt.close(fig)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--jobs', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'segment_boxes.md'))
    ap.add_argument('--picture', default=None, help='only draw examples (held-out and large_soft, 96 px, seed 0; held-out seed 1) into this PNG and two beside it')
    a = ap.parse_args()
    if a.picture:
        picture(a.picture); picture(Path(a.picture).with_name(Path(a.picture).stem + '_large_soft.png'), name='large_soft')
        picture(Path(a.picture).with_name(Path(a.picture).stem + '_seed1.png'), seed=1); return   # seed 1: the held-out model whose input gradient lit the ribs
    cfg,t0 = L.FULL,time.time()
    jobs = [(s, d, k) for s in (1, 2) for d in cfg['domains'] for k in cfg['seeds']]
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context('spawn')) as ex: rows = list(ex.map(one, *zip(*jobs)))
    md = report(rows, time.time()-t0)
    Path(a.out).write_text(md); Path(a.out).with_suffix('.json').write_text(json.dumps(rows, default=float))
    print(md)

if __name__ == '__main__': main()
