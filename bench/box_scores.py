#!/usr/bin/env python
"""Benchmark: do the boxes' scores rank them? And which probability gate (`min_prob`) should boxes have by default?

Small models (the demo's: `gap_linear_learner` on `synth_dls`, 96 px, trained from scratch on the CPU) on synthetic
chest-X-ray DICOMs (`fastcam.synth.make_dicom_set`) from two generator settings, two seeds each (data and model):

- `synth` (tuning): the generator's defaults, lesions 18-64 px wide, contrast 0.12-0.22, 250x300 px images;
- `small` (held out: nothing is chosen on it): smaller, fainter lesions (10-30 px, contrast 0.10-0.18) on bigger
  280x340 px images.

For every held-out file (positives and negatives) the demo's recipe explains class 'nodule' (the body's four blocks
fused, `tta`, the box threshold `demo_threshold` picks on training positives) and keeps its best box (`topk=1`), with
no gate (`min_prob=0`): a box on a negative, or one with IoU < 0.5 with the lesion, is a miss. Each box is then ranked
by a constant, by the class probability alone, by the map's mass share alone, and by fastcam's `score` (probability
x mass share); model-confirmed boxes (`confirm=True`) by their `score` (probability x the model's evidence). For
each ranking: AUROC of hit vs miss (scikit-learn) and COCO AP@0.5 (pycocotools COCOeval; ties keep the file order).

The gate: for `min_prob` from 0 to 0.95 the boxes shown are those whose probability reaches it; F1 of the boxes shown
(precision = hits / boxes shown, recall = hits / lesions) on the tuning domain picks the default, and the held-out
domain's F1 is reported at that value.

Cost of confirmation: the time of `res.boxes(confirm=True)` (it remakes the inputs from the files and runs the
candidates in batched forwards) over the time of one Grad-CAM call `learn.cam(files, target='nodule')` (default layer)
and of the recipe's call (four layers, tta), same files, same process, CPU.

Usage: python bench/box_scores.py [--quick] [--n 320] [--epochs 6] [--seeds 0 1] [--threads N] [--out FILE]
"""
from __future__ import annotations
import argparse, contextlib, io, json, os, sys, tempfile, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from fastai.torch_core import set_seed
from fastcam.synth import make_dicom_set
from fastcam.cli import synth_dls, gap_linear_learner, demo_threshold, DEMO_LAYERS, _layer
from fastcam.metrics import box_iou

DOMAINS = {'synth': dict(), 'small': dict(diameter=(10, 30), contrast=(0.10, 0.18), size=(280, 340))}
TUNE, HELD = 'synth', 'small'
GATES = np.round(np.arange(0, 0.951, 0.05), 2)
DUMP = None   # a folder for the per-box tables (--dump)

def train(path, df, seed, epochs):
    set_seed(seed, reproducible=True)
    learn = gap_linear_learner(synth_dls(path, df, 96, seed=seed), size=96)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 5e-3)
    with learn.no_bar(): acc = float(learn.validate()[1])
    return learn, acc

def hits(df, truth):
    "1 where a row's box has IoU >= 0.5 with its file's lesion (negatives have none), else 0; NaN for rows without a box"
    out = []
    for r in df.itertuples():
        if pd.isna(r.x0): out.append(np.nan); continue
        t = truth.get(Path(r.file).name)
        out.append(float(t is not None and box_iou(torch.tensor([[r.x0, r.y0, r.x1, r.y1]], dtype=torch.float32), torch.tensor([t], dtype=torch.float32)).item() >= 0.5))
    return np.array(out)

def coco_ap50(df, s, truth, files):
    "COCO AP@0.5 (pycocotools) of the boxes of `df` ranked by `s`, against the lesions of `files`"
    names = [Path(f).name for f in files]
    ids = {n: i+1 for i,n in enumerate(names)}
    anns = [dict(id=k+1, image_id=ids[n], category_id=1, bbox=[t[0], t[1], t[2]-t[0], t[3]-t[1]], area=float((t[2]-t[0])*(t[3]-t[1])), iscrowd=0)
            for k,(n,t) in enumerate((n, truth[n]) for n in names if n in truth)]
    gt = COCO(); gt.dataset = dict(images=[dict(id=i) for i in ids.values()], annotations=anns, categories=[dict(id=1, name='nodule')])
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dets = [dict(image_id=ids[Path(r.file).name], category_id=1, bbox=[float(r.x0), float(r.y0), float(r.x1-r.x0), float(r.y1-r.y0)], score=float(v))
                for r,v in zip(df.itertuples(), s)]
        if not dets: return 0.
        e = COCOeval(gt, gt.loadRes(dets), 'bbox'); e.params.imgIds = list(ids.values())
        e.evaluate(); e.accumulate(); e.summarize()
    return float(e.stats[1])

def rank_metrics(df, truth, files, rankers):
    b = df[df.x0.notna()].reset_index(drop=True)
    h = hits(b, truth)
    res = {}
    for name,f in rankers.items():
        s = f(b)
        res[name] = dict(auroc=roc_auc_score(h, s) if 0 < h.sum() < len(h) else np.nan, ap50=coco_ap50(b, s, truth, files))
    return res,b,h

def gate_f1(b, h, n_lesions):
    "F1 of the boxes whose probability reaches each gate"
    out = {}
    for g in GATES:
        keep = b.prob.to_numpy() >= g
        tp = h[keep].sum()
        p,r = (tp/keep.sum() if keep.sum() else 0.),tp/max(n_lesions, 1)
        out[float(g)] = 2*p*r/(p+r) if p+r else 0.
    return out

def one(domain, seed, n, epochs, tmp):
    path = Path(tmp)/f'{domain}_{seed}'
    df = make_dicom_set(path, n=n, seed=seed, **DOMAINS[domain])
    learn, acc = train(path, df, seed, epochs)
    gt = pd.read_csv(path/'boxes.csv')
    truth = {Path(r.file).name: [r.x0, r.y0, r.x1, r.y1] for r in gt.itertuples()}
    files = [path/f for f in df.file[df.is_valid]]
    thr = demo_threshold(learn, path, df)
    t0 = time.perf_counter(); learn.cam(files, target='nodule'); t_plain = time.perf_counter()-t0
    t0 = time.perf_counter(); res = learn.cam(files, layer=_layer(DEMO_LAYERS), target='nodule', fused=True, tta=True); t_recipe = time.perf_counter()-t0
    plain = res.boxes(topk=1, threshold=thr, min_prob=0.)
    t0 = time.perf_counter(); conf = res.boxes(topk=1, threshold=thr, min_prob=0., confirm=True); t_conf = time.perf_counter()-t0
    rk = {'constant': lambda b: np.ones(len(b)), 'prob': lambda b: b.prob.to_numpy(), 'mass share': lambda b: (b.score/b.prob).to_numpy(),
          'score (prob x share)': lambda b: b.score.to_numpy(),
          'prob x share^0.5': lambda b: (b.prob*(b.score/b.prob)**0.5).to_numpy(), 'prob x share^0.25': lambda b: (b.prob*(b.score/b.prob)**0.25).to_numpy()}
    m_plain,b,h = rank_metrics(plain, truth, files, rk)
    m_conf,bc,hc = rank_metrics(conf, truth, files, {'constant': rk['constant'], 'prob': rk['prob'], 'score (prob x evidence)': lambda b: b.score.to_numpy()})
    n_les = sum(Path(f).name in truth for f in files)
    if DUMP: b.assign(hit=h, domain=domain, seed=seed).to_csv(DUMP/f'plain_{domain}_{seed}.csv', index=False); bc.assign(hit=hc, domain=domain, seed=seed).to_csv(DUMP/f'conf_{domain}_{seed}.csv', index=False)
    return dict(domain=domain, seed=seed, acc=acc, threshold=thr, files=len(files), lesions=n_les, boxes=len(b), hits=int(h.sum()), hits_conf=int(hc.sum()),
                plain=m_plain, conf=m_conf, gate=gate_f1(b, h, n_les), gate_conf=gate_f1(bc, hc, n_les),
                t_plain=t_plain, t_recipe=t_recipe, t_conf=t_conf)

def ms(v): v = np.asarray(v, float); return f"{np.nanmean(v):.3f} +- {np.nanstd(v):.3f}"

def report(rows, args):
    L = ["# Box scores: ranking and the probability gate", "", f"`python bench/box_scores.py {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
         "See the script's docstring for the protocol. Domain `synth` is the tuning domain; `small` (smaller, fainter lesions, bigger images) is held out: nothing is chosen on it.", "",
         "## Models", "", "| domain | seed | held-out accuracy | box threshold | held-out files | lesions | plain boxes that hit (IoU >= 0.5) | confirmed boxes that hit |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {r['domain']} | {r['seed']} | {r['acc']:.2f} | {r['threshold']:.2f} | {r['files']} | {r['lesions']} | {r['hits']} of {r['boxes']} | {r['hits_conf']} |" for r in rows]
    L += ["", "## Ranking: AUROC of hit vs miss and COCO AP@0.5 (mean +- sd over seeds)", ""]
    for kind,title in (('plain', 'Plain boxes (threshold boxes of the fused map)'), ('conf', 'Model-confirmed boxes (`confirm=True`)')):
        L += [f"### {title}", "", "| domain | ranking | AUROC | COCO AP@0.5 |", "|---|---|---|---|"]
        for d in (TUNE, HELD):
            rs = [r for r in rows if r['domain']==d]
            if not rs: continue
            for name in rs[0][kind]:
                L.append(f"| {d}{' (held out)' if d==HELD else ''} | {name} | {ms([r[kind][name]['auroc'] for r in rs])} | {ms([r[kind][name]['ap50'] for r in rs])} |")
        L.append("")
    tune = [r for r in rows if r['domain']==TUNE]
    f1 = pd.DataFrame([r['gate'] for r in tune]).mean()
    best = float(f1.idxmax())
    L += ["## The gate `min_prob`", "", f"F1 of the plain boxes shown (probability >= gate), mean over the tuning domain's seeds; the best gate on it is **{best:.2f}**.", "",
          "| gate | " + " | ".join(f"{g:.2f}" for g in GATES) + " |", "|---|" + "---|"*len(GATES)]
    for d in (TUNE, HELD):
        rs = [r for r in rows if r['domain']==d]
        if rs: L.append(f"| {d} F1 | " + " | ".join(f"{v:.2f}" for v in pd.DataFrame([r['gate'] for r in rs]).mean()) + " |")
    L += ["", "## Cost of confirmation (CPU)", "", "| domain | seed | files | Grad-CAM call (default layer) s | recipe call (4 layers, tta) s | `boxes(confirm=True)` s | confirm / Grad-CAM | confirm / recipe |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {r['domain']} | {r['seed']} | {r['files']} | {r['t_plain']:.2f} | {r['t_recipe']:.2f} | {r['t_conf']:.2f} | {r['t_conf']/r['t_plain']:.1f}x | {r['t_conf']/r['t_recipe']:.1f}x |" for r in rows]
    return '\n'.join(L) + '\n', best

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--n', type=int, default=320); ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1]); ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--dump', default=None); ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'box_scores.md'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    global DUMP
    if a.dump: DUMP = Path(a.dump); DUMP.mkdir(parents=True, exist_ok=True)
    if a.quick: a.n,a.epochs,a.seeds = 80,1,[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in DOMAINS:
            for s in a.seeds:
                t0 = time.time(); rows.append(one(d, s, a.n, a.epochs, tmp))
                print(f"{d} seed {s}: {time.time()-t0:.0f} s, acc {rows[-1]['acc']:.2f}, plain {json.dumps(rows[-1]['plain'])}, conf {json.dumps(rows[-1]['conf'])}", flush=True)
    md,best = report(rows, a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(md)
    print(md)

if __name__ == '__main__': main()
