#!/usr/bin/env python
"""Benchmark: do the boxes' scores rank them? Which probability gate (`min_prob`) should boxes have? What do
model-confirmed boxes cost and give?

The models and data are `bench/localization.py`'s (run it first: it trains and caches them): 5 synthetic DICOM
domains x 3 model seeds, a small XResNet trained from scratch per (domain, seed), the domain `held_out` used in no
choice. Runs whose model stayed below 60 % validation accuracy are left out, as there.

For every validation file (positives and negatives) the default box recipe (`fastcam.tune.default_recipe`, or
`--recipe JSON`) explains class 'nodule' and keeps its best box (`topk=1`) with no gate (`min_prob=0`). A box is a hit
when its IoU with one of the file's lesions is >= 0.5 (a box on a negative is a miss). Each box is then ranked by a
constant, by the class probability alone, by the map's mass share in the box alone, by the probability x that share
(fastcam's first score), by the probability x the mass beyond a uniform map's ((share - area share) / (1 - area share)),
by the probability x the model's deletion evidence (how much of the probability goes when the box is inpainted,
`fastcam.confirm.region_evidence`: two more forwards per box), by the probability x the map's density in the box (the
mean of the normalised map over its pixels, over the map's maximum), and by fastcam's `score` (that density ranking since
it passed the rule of box_scores.md: beat the probability in AUROC and AP@0.5 on the tuning domains at both scales; before, the probability x the box's mass relative to the map's most massive region), and by the probability x one of two
agreements made without the truth (does another estimate of the same box agree with it?): its IoU with the box the
model's input gradient supports inside its region (the 'gradient' mode's box, `fastcam.refine`), and its stability,
its mean best IoU with the boxes at the threshold -+ 0.1; for each ranking: AUROC of hit vs miss (scikit-learn) and COCO AP@0.5 (pycocotools
COCOeval, through `fastcam.tune.coco_ap50`), per run, then mean +- sd over the runs of the tuning domains and,
apart, of the held-out domain. The same rankings are also given for the boxes the default gate leaves (prob >= 0.5), and for every region's box
(`topk=None`, as an untuned `res.boxes()` gives them: the probability ties an image's regions, the score does not).

The gate: for `min_prob` from 0 to 0.95, the boxes shown are those whose probability reaches it; F1 of the boxes
shown (precision = hits / boxes shown, recall = hits / lesions), mean over the tuning runs, and at the chosen gate
on the held-out runs.

Model-confirmed boxes (`res.boxes(confirm=True)`) on the first `--confirm-n` validation files of each run: their hits
and the ranking by their score (probability x the model's evidence); their cost as the time of `boxes(confirm=True)`
over one Grad-CAM call `learn.cam(files, target='nodule')` (default layer, no tta) on the same files, same process.

`--scale 2` uses `bench/localization.py --scale 2`'s models (192 px input; results in box_scores_x2.md).

Usage: python bench/box_scores.py [--recipe JSON] [--scale 1] [--jobs 2] [--confirm-n 48] [--out bench/results/box_scores.md]
"""
from __future__ import annotations
import argparse, json, multiprocessing, os, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score
sys.path.insert(0, str(Path(__file__).parent))
import localization as L
from fastcam.metrics import box_iou
from fastcam.boxes import box_mass_share
from fastcam.tune import coco_ap50, default_recipe

GATES = np.round(np.arange(0, 0.951, 0.05), 2)
RANKERS = {'constant': lambda b: np.ones(len(b)), 'prob': lambda b: b.prob.to_numpy(), 'mass share': lambda b: b.share.to_numpy(),
           'prob x mass share (the first score)': lambda b: (b.prob*b.share).to_numpy(),
           'prob x mass beyond uniform': lambda b: (b.prob*((b.share-b.area)/(1-b.area)).clip(lower=0)).to_numpy(),
           'prob x deletion evidence (the model, 2 forwards a box)': lambda b: (b.prob*b['drop']).to_numpy(),
           'prob x agreement with the input gradient': lambda b: (b.prob*b.agree).to_numpy(),
           'prob x threshold stability': lambda b: (b.prob*b.stable).to_numpy(),
           'prob x map density in the box': lambda b: (b.prob*b.density).to_numpy(),
           "score (fastcam's: prob x map density)": lambda b: b.score.to_numpy()}
CONF_RANKERS = {'constant': RANKERS['constant'], 'prob': RANKERS['prob'], 'score (prob x evidence)': lambda b: b.score.to_numpy()}

def with_drop(b, res, learn, files):
    "`b` with `drop`: how much of the class's probability (over what a full blur removes) goes when the box is inpainted (`fastcam.confirm.region_evidence`)"
    from fastcam.confirm import region_evidence, to_input_boxes
    from fastcam.boxes import input_geometry
    xb = torch.cat([o[0] for o in learn.dls.test_dl(files, bs=64)]).as_subclass(torch.Tensor)
    g = input_geometry(learn.dls)
    jobs = [(int(r.item), int(res.targets[int(r.item), int(r.target)]), to_input_boxes(np.array([[int(r.x0), int(r.y0), int(r.x1), int(r.y1)]]), tuple(res.orig_sizes[int(r.item)]), g)) for r in b.itertuples()]
    ev = region_evidence(learn.model, xb, jobs) if jobs else []
    return b.assign(drop=[e['drop'][0] for e in ev])

def with_share(b, res):
    "`b` with each box's `share` of its map's mass, its `area` as a share of the image and its map `density` (the mean of the normalised map over the box's pixels)"
    sh,ar,de = [],[],[]
    for r in b.itertuples():
        m = res.original_maps(int(r.item), fill=0.)[int(r.target)]
        x0,y0,x1,y1 = int(r.x0), int(r.y0), int(r.x1), int(r.y1)
        sh.append(float(box_mass_share(m, [[x0, y0, x1, y1]])[0])); ar.append((x1-x0)*(y1-y0)/m.numel())
        de.append(float(m[y0:y1, x0:x1].clamp(min=0).mean()/m.max().clamp(min=1e-12)))   # the normalised map's mean over the box (the map is normalised to max 1 already; divided again for safety)
    return b.assign(share=sh, area=ar, density=de)

def with_agreement(b, res, threshold, grad_threshold=0.2, step=0.1):
    """`b` with two agreements of each box, made without the truth: `agree`, its IoU with the box the model's input gradient
    supports inside the box's own region (`fastcam.refine.refine_region`, the 'gradient' mode's box; 1 when the gradient
    fills the region's box), and `stable`, its mean best IoU with the boxes at `threshold` -+ `step` (1 when the box does not
    move with the threshold)"""
    from fastcam.boxes import threshold_regions, threshold_boxes, region_box
    from fastcam.refine import original_saliency, refine_region
    ag,st,cache = [],[],{}
    for r in b.itertuples():
        i = int(r.item)
        if i not in cache:
            m = res.original_maps(i, fill=0.)[int(r.target)]
            regs,_ = threshold_regions(m, threshold, 16, 'max', relu=False)
            sal = original_saliency(res.input_grad[i, int(r.target)], res.orig_sizes[i], res.geometry)
            near = [threshold_boxes(m, t, 16, None, 'max', relu=False)[0].tolist() for t in (threshold-step, threshold+step)]
            cache[i] = ({tuple(region_box(g)): g for g in regs}, sal, near)
        regs,sal,near = cache[i]
        box = (int(r.x0), int(r.y0), int(r.x1), int(r.y1))
        iou = lambda o: box_iou(torch.tensor([box]), torch.tensor(o).reshape(-1, 4)).reshape(-1)
        ag.append(iou(refine_region(regs[box], sal, grad_threshold, 16)).item() if box in regs else 1.)
        st.append(np.mean([iou(bs).max().item() if len(bs) else 0. for bs in near]))
    return b.assign(agree=ag, stable=st)

def with_hits(df, files, gt):
    "`df`'s rows that have a box, with `iou` (best with the file's lesions, 0 on a negative) and `hit` (iou >= 0.5)"
    b = df[df.x0.notna()].reset_index(drop=True)
    iou = [box_iou(torch.tensor([[int(r.x0), int(r.y0), int(r.x1), int(r.y1)]]).float(), gt[files[r.item]].float()).max().item()
           if files[r.item] in gt else 0. for r in b.itertuples()]
    return b.assign(iou=iou, hit=np.array(iou) >= 0.5)

def rankings(b, files, gt, sizes, rankers):
    "Per ranking: AUROC of hit vs miss and COCO AP@0.5 of the boxes `b`"
    gts = [gt.get(f, torch.zeros(0, 4)) for f in files]
    res = {}
    for name,f in rankers.items():
        s = f(b) if len(b) else np.zeros(0)
        au = roc_auc_score(b.hit, s) if 0 < b.hit.sum() < len(b) else np.nan
        boxes,scores = [[] for _ in files],[[] for _ in files]
        for r,v in zip(b.itertuples(), s): boxes[r.item].append([int(r.x0), int(r.y0), int(r.x1), int(r.y1)]); scores[r.item].append(v)
        dets = [(np.array(x, float).reshape(-1, 4), np.array(v, float)) for x,v in zip(boxes, scores)]
        res[name] = dict(auroc=au, ap50=coco_ap50(dets, gts, sizes))
    return res

def gate_f1(b, n_lesions):
    "F1 of the boxes whose probability reaches each gate"
    out = {}
    for g in GATES:
        keep = b.prob.to_numpy() >= g
        tp = b.hit.to_numpy()[keep].sum()
        p,r = (tp/keep.sum() if keep.sum() else 0.),tp/max(n_lesions, 1)
        out[float(g)] = 2*p*r/(p+r) if p+r else 0.
    return out

def one(name, seed, recipe, confirm_n, scale=1):
    torch.set_num_threads(1)
    cfg = L.FULL
    path,df = L.domain_set(name, cfg['n'], scale)
    learn,info = L.trained(name, path, df, seed, cfg['epochs'], int(96*scale))
    gt,files = L.gt_dict(path),[str(path/f) for f in df.file[df.is_valid]]
    lay = recipe['layer']
    res = learn.cam(files, layer=lay, target='nodule', method=recipe['method'], tta=recipe['tta'], fused=isinstance(lay, list), input_grad=True)
    sizes = [tuple(int(v) for v in s) for s in res.orig_sizes]
    def scored(topk):
        b = with_hits(res.boxes(threshold=recipe['threshold'], topk=topk, min_prob=0.), files, gt)
        return with_agreement(with_drop(with_share(b, res), res, learn, files), res, recipe['threshold'])
    plain,every = scored(1),scored(None)
    n_les = sum(len(gt[f]) for f in files if f in gt)
    out = dict(domain=name, seed=seed, accuracy=info['accuracy'], files=len(files), lesions=n_les, boxes=len(plain), hits=int(plain.hit.sum()),
               plain=rankings(plain, files, gt, sizes, RANKERS), gated=rankings(plain[plain.prob >= 0.5], files, gt, sizes, RANKERS),
               every=rankings(every, files, gt, sizes, RANKERS), regions=len(every), region_hits=int(every.hit.sum()), gate=gate_f1(plain, n_les))
    cf = files[:confirm_n]
    t0 = time.perf_counter(); learn.cam(cf, target='nodule'); t_cam = time.perf_counter() - t0
    sub = res[:len(cf)]
    t0 = time.perf_counter(); conf = sub.boxes(threshold=recipe['threshold'], topk=1, min_prob=0., confirm=True); t_conf = time.perf_counter() - t0
    conf,pl = with_hits(conf, cf, gt),plain[plain.item < len(cf)]
    out.update(confirm_files=len(cf), confirm_lesions=sum(len(gt[f]) for f in cf if f in gt), confirm_hits=int(conf.hit.sum()), confirm_plain_hits=int(pl.hit.sum()),
               confirm=rankings(conf, cf, gt, sizes[:len(cf)], CONF_RANKERS), t_cam=t_cam, t_conf=t_conf)
    return out

def ms(v, k=1, d=3):
    v = pd.Series(v, dtype=float).dropna()
    return 'n/a' if not len(v) else f"{k*v.mean():.{d}f} +- {k*v.std(ddof=0):.{d}f}"

def rank_table(rows, kind, title):
    L_ = [f"### {title}", "", "| runs | ranking | AUROC (hit vs miss) | COCO AP@0.5 |", "|---|---|---|---|"]
    for lab,rs in rows:
        if not rs: continue
        for name in rs[0][kind]:
            L_.append(f"| {lab} | {name} | {ms([r[kind][name]['auroc'] for r in rs])} | {ms([r[kind][name]['ap50'] for r in rs])} |")
    return L_ + [""]

def report(rows, recipe, secs, args):
    learned = [r for r in rows if r['accuracy'] >= L.FULL['min_acc']]
    tr,ho = [r for r in learned if r['domain']!=L.HELD_OUT],[r for r in learned if r['domain']==L.HELD_OUT]
    groups = [(f"tuning domains ({len(tr)} runs)", tr), (f"held out `{L.HELD_OUT}` ({len(ho)} runs)", ho)]
    f1 = pd.DataFrame([r['gate'] for r in tr]).mean()
    best = float(f1.idxmax())
    out = ["# Box scores: ranking, the probability gate, model-confirmed boxes", "",
           f"`python bench/box_scores.py {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPU cores ({args.jobs} processes of one torch thread), "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {secs/60:.1f} min. Models and data: `bench/localization.py`'s ({L.FULL['n']} DICOMs per domain, "
           f"{L.FULL['epochs']} epochs, 3 seeds, {int(96*args.scale)} px model input). Recipe: `{json.dumps(recipe)}`. See the script's docstring for the protocol.", "",
           "## Runs", "", "| domain | seed | accuracy | files | lesions | boxes (no gate) | hits (IoU >= 0.5) |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['domain']}{' (held out)' if r['domain']==L.HELD_OUT else ''} | {r['seed']} | {r['accuracy']:.2f} | {r['files']} | {r['lesions']} | {r['boxes']} | {r['hits']} |" for r in rows]
    out += ["", f"Runs below {L.FULL['min_acc']:.0%} accuracy are left out of every table below.", "",
            "## Ranking boxes: AUROC of hit vs miss and COCO AP@0.5 (mean +- sd over runs)", ""]
    out += rank_table(groups, 'plain', "Every file's best box (no gate)")
    out += rank_table(groups, 'gated', "The boxes the default gate shows (prob >= 0.5)")
    out += [f"Every region's box (`topk=None`, as `res.boxes()` untuned gives them; no gate): {sum(r['regions'] for r in rows)} boxes, {sum(r['region_hits'] for r in rows)} hits, over all runs.", ""]
    out += rank_table(groups, 'every', "Every region's box (no gate)")
    out += ["## The gate `min_prob`", "", f"F1 of the boxes shown (probability >= gate), mean over runs; the best gate on the tuning runs is **{best:.2f}**.", "",
            "| gate | " + " | ".join(f"{g:.2f}" for g in GATES) + " |", "|---|" + "---|"*len(GATES)]
    for lab,rs in groups:
        if rs: out.append(f"| {lab} | " + " | ".join(f"{v:.2f}" for v in pd.DataFrame([r['gate'] for r in rs]).mean()) + " |")
    out += ["", "## Model-confirmed boxes (`confirm=True`)", ""]
    out += rank_table(groups, 'confirm', "Ranking the confirmed boxes")
    out += ["| domain | seed | files | lesions | plain hits | confirmed hits | Grad-CAM call s | `boxes(confirm=True)` s | confirm / Grad-CAM |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['domain']} | {r['seed']} | {r['confirm_files']} | {r['confirm_lesions']} | {r['confirm_plain_hits']} | {r['confirm_hits']} | {r['t_cam']:.2f} | {r['t_conf']:.2f} | {r['t_conf']/r['t_cam']:.1f}x |" for r in rows]
    out += ["", f"Confirmation over one Grad-CAM call: {ms([r['t_conf']/r['t_cam'] for r in rows], d=1)}x (all runs)."]
    return '\n'.join(out) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--recipe', default=None, help='a box recipe JSON (default: fastcam.tune.default_recipe)')
    ap.add_argument('--jobs', type=int, default=2); ap.add_argument('--confirm-n', type=int, default=48)
    ap.add_argument('--domains', nargs='+', default=None, help='a subset of the domains (development)'); ap.add_argument('--seeds', type=int, nargs='+', default=None)
    ap.add_argument('--scale', type=float, default=1, help="bench/localization.py's models at this scale (1: 96 px input; 2: 192 px; run that scale there first)")
    ap.add_argument('--out', default=None, help='default: bench/results/box_scores.md (box_scores_x2.md at --scale 2)')
    a = ap.parse_args()
    a.out = a.out or str(Path(__file__).parent/'results'/('box_scores.md' if a.scale==1 else f'box_scores_x{a.scale:g}.md'))
    recipe = {**default_recipe, **(json.loads(Path(a.recipe).read_text()) if a.recipe else {})}
    recipe['layer'] = recipe['layer'] or 'stage:-1'
    cfg,t0 = L.FULL,time.time()
    jobs = [(d, s) for d in (a.domains or cfg['domains']) for s in (a.seeds or cfg['seeds'])]
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context('spawn')) as ex:
        rows = list(ex.map(one, *zip(*jobs), [recipe]*len(jobs), [a.confirm_n]*len(jobs), [a.scale]*len(jobs)))
    for r in rows: print(r['domain'], r['seed'], f"acc {r['accuracy']:.2f} hits {r['hits']}/{r['lesions']}", json.dumps(r['plain']), flush=True)
    md = report(rows, recipe, time.time()-t0, a)
    Path(a.out).write_text(md); Path(a.out).with_suffix('.json').write_text(json.dumps(rows, default=float))
    print(md)

if __name__ == '__main__': main()
