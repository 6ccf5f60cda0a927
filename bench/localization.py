#!/usr/bin/env python
"""Benchmark: weak localization across synthetic domains and model seeds, with one domain held out of all tuning.

Each domain is a `fastcam.synth.make_dicom_set` generator setting (lesion area 0.5 to 5 % of the image, edge
softness, one or two lesions, distractor dots, L/R markers and text in both classes, 8/12/16-bit, non-square
sizes). For each domain and model seed a small XResNet (`fastcam.cli.small_xresnet`, GAP + linear head) is trained
from scratch on the CPU (cached under bench/.cache/, an ignored folder), and every box recipe of a grid
(method x layers x tta x threshold, `fastcam.tune.recipe_table`) is measured on the domain's validation files with
target 'nodule': pointing, BoxAcc@0.5 of the top box, MaxBoxAccV2, COCO AP@0.5 (pycocotools), the box score's AUROC
(hit vs miss) and seconds per item. Results are mean +- sd over (domain, seed) runs.

Runs whose model did not learn the task (validation accuracy < 0.6) are left out of the table (the held-out domain also gets lines over all its runs). The held-out domain is used for nothing but its own lines: the defaults' box mode and thresholds are the ones with the best mean BoxAcc
over the tuning domains at the default layer without tta (see DEFAULTS for why those two are fixed); the "tuned" line runs the tune step (`recipe_table` + `sort_recipes`, what
`learn.tune_boxes` does) on `--labelled` labelled TRAINING files of the held-out domain and reports the chosen
recipe on its validation files.

`--scale 2` runs the same domains with images and model input twice the size (images of about 180-275 px, 192 px input): the
lesions then span several cells of the last-stage map instead of about one, which shows how the defaults and the
box rule carry to another scale (results in bench/results/localization_x2.md).

Usage: python bench/localization.py [--quick] [--scale 1] [--methods gradcam ...] [--no-tta] [--out bench/results/localization.md] [--jobs 2] [--from-csv CSV [--modes segment ...]]
"""
from __future__ import annotations
import argparse, hashlib, json, multiprocessing, os, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, pandas as pd, torch
from fastai.torch_core import set_seed
from fastai.learner import load_learner
from fastcam.synth import make_dicom_set
from fastcam.cli import synth_dls, gap_linear_learner
from fastcam.tune import recipe_table, sort_recipes, default_recipe

CACHE = Path(__file__).parent/'.cache'/'localization'
base = dict(size=(96, 120), contrast=(0.15, 0.25))
DOMAINS = {   # name -> make_dicom_set options; the last one is held out
    'large_soft':  dict(area=(0.02, 0.05), sharpness=(1, 1.5), dots=(0, 3), bits_stored=(12, 16)),
    'small_sharp': dict(area=(0.005, 0.015), sharpness=(3, 4), dots=(0, 3), bits_stored=(8, 12)),
    'two_lesions': dict(area=(0.01, 0.04), lesions=(1, 2), dots=(0, 3), bits_stored=(16,)),
    'shortcuts':   dict(area=(0.01, 0.03), dots=(3, 6), marker=1.0, text=1.0, bits_stored=(12,)),
    'held_out':    dict(area=(0.005, 0.05), sharpness=(1, 4), lesions=(1, 2), dots=(1, 5), text=0.5, bits_stored=(8, 12, 16), size=(104, 128)),
}
HELD_OUT = 'held_out'
FULL = dict(n=600, epochs=12, seeds=(0, 1, 2), methods=('gradcam', 'layercam', 'hirescam'), tta=(False, True),
            thresholds=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), grad_thresholds=(0.2, 0.3, 0.4), labelled=24, domains=tuple(DOMAINS), min_acc=0.6)
QUICK = dict(n=64, epochs=2, seeds=(0,), methods=('gradcam', 'layercam'), tta=(False,), thresholds=(0.4, 0.7), grad_thresholds=(0.3,), labelled=8,
             domains=('large_soft', HELD_OUT), min_acc=0.)   # quick models learn nothing: all kept
DEFAULTS = ("The defaults of `get_boxes`, `CamResult.boxes` (which keeps every region unless given `topk`), `learn.get_cams(with_boxes=True)` and `fastcam run` (`fastcam.tune.default_recipe`) "
            "keep two choices fixed before the table is read: the **layer** is the last stage (Grad-CAM's own, `layer=None`), because which layer boxes best "
            "is what moves most between domains (the table's best on the tuning domains fuses four stages and does worse on the held-out one); and **tta is off**, "
            "because averaging with the mirror image is only right for models trained with mirror images (many chest X-ray models are not; the benchmark's are, "
            "so its tta lines are an upper bound). The **threshold** is the table's: the best mean BoxAcc@0.5 over the tuning domains at that layer without tta, "
            "for the map's own regions ('threshold'): the **plain default box**. The table also measures regions narrowed by the model's input gradient ('gradient', `fastcam.refine`) "
            "and boxes of the image segment where the input gradient and the map agree in each region ('segment', `fastcam.refine`); the same rule's pick in each mode gets its own lines "
            "('best gradient box', 'best segment box'). Such a mode makes every map run the backward on to the input, so it replaces the plain default box only by the rule of "
            "the section 'Can a mode that needs the input gradient be the default?', at both scales. "
            "The tune step (`learn.tune_boxes`, `fastcam tune`) chooses among all of them on the user's own labelled files.")
METRICS = ['pointing', 'box_acc', 'max_box_acc_v2', 'ap50', 'score_auroc', 's_per_item']

def domain_opts(name, scale=1):
    "`make_dicom_set` options of domain `name`, its image sizes times `scale`"
    opts = {**base, **DOMAINS[name]}
    return {**opts, 'size': tuple(int(scale*v) for v in opts['size'])}

def domain_set(name, n, scale=1):
    "The domain's DICOM set at `scale` (made once, cached); returns (folder, labels)"
    opts = domain_opts(name, scale)
    key = hashlib.sha1(json.dumps([opts, n]).encode()).hexdigest()[:8]
    path = CACHE/(f'{name}_{n}_{key}' if scale==1 else f'{name}_{n}_x{scale:g}_{key}')
    if (path/'labels.csv').exists(): return path,pd.read_csv(path/'labels.csv')
    seed = list(DOMAINS).index(name) + 100
    make_dicom_set(path, n=n, seed=seed, valid_pct=0.3, **opts)
    return path,pd.read_csv(path/'labels.csv')

def trained(name, path, df, seed, epochs, size=96):
    "A small XResNet trained from scratch on the domain with model seed `seed` at input `size` (cached export)"
    f = path/(f'model_s{seed}_e{epochs}.pkl' if size==96 else f'model_s{seed}_e{epochs}_{size}px.pkl')
    if f.exists(): return load_learner(f, cpu=True),json.loads(f.with_suffix('.json').read_text())
    set_seed(seed, reproducible=True)
    learn = gap_linear_learner(synth_dls(path, df, size, bs=16, seed=seed), size=size)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, 5e-3)
        acc = float(learn.validate()[1])
    info = dict(domain=name, seed=seed, epochs=epochs, accuracy=acc, train_s=time.time()-t0)
    learn.export(f.resolve()); f.with_suffix('.json').write_text(json.dumps(info))
    return load_learner(f, cpu=True),info

def gt_dict(path):
    bx = pd.read_csv(path/'boxes.csv')
    return {str(path/f): torch.tensor(g[['x0', 'y0', 'x1', 'y1']].to_numpy(np.int64)) for f,g in bx.groupby('file')}

def evaluate(name, seed, cfg):
    "`(rows, tuned, info)`: `recipe_table` of the model of seed `seed` on domain `name`'s validation files (and, held out, the tuned choice)"
    torch.set_num_threads(1)
    path,df = domain_set(name, cfg['n'], cfg['scale'])
    gt,valid = gt_dict(path),[str(path/f) for f in df.file[df.is_valid]]
    learn,info = trained(name, path, df, seed, cfg['epochs'], int(96*cfg['scale']))
    kw = dict(target='nodule', methods=cfg['methods'], tta=cfg['tta'], thresholds=cfg['thresholds'], grad_thresholds=cfg['grad_thresholds'], progress=False,
              **({'modes': cfg['modes']} if cfg.get('modes') else {}))
    t0 = time.time()
    rows = recipe_table(learn, valid, gt, **kw).assign(domain=name, seed=seed, accuracy=info['accuracy'])
    tuned = tuned_row(learn, path, df, gt, rows, cfg) if name==HELD_OUT and not cfg.get('modes') else None   # measuring some modes again: the tune step is redone over all rows after
    return rows,tuned,{**info, 'eval_s': time.time()-t0}

def tuned_row(learn, path, df, gt, rows, cfg):
    "The tune step on `cfg['labelled']` labelled TRAINING files (half with a lesion), judged by its choice's row of `rows` (the validation files)"
    kw = dict(target='nodule', methods=cfg['methods'], tta=cfg['tta'], thresholds=cfg['thresholds'], grad_thresholds=cfg['grad_thresholds'], progress=False)
    tr = df[~df.is_valid]
    few = list(tr[tr.label=='nodule'].file[:cfg['labelled']//2]) + list(tr[tr.label!='nodule'].file[:cfg['labelled']//2])
    pick = sort_recipes(recipe_table(learn, [str(path/f) for f in few], gt, **kw)).iloc[0]
    return _row_of(rows, pick)

def tuned_from_rows(all_rows, cfg):
    "The held-out domain's tuned rows, computed again from the cached models (for --from-csv)"
    torch.set_num_threads(1)
    path,df = domain_set(HELD_OUT, cfg['n'], cfg['scale'])
    res = []
    for seed in cfg['seeds']:
        learn,_ = trained(HELD_OUT, path, df, seed, cfg['epochs'], int(96*cfg['scale']))
        rows = all_rows[(all_rows.domain==HELD_OUT) & (all_rows.seed==seed)]
        res.append(tuned_row(learn, path, df, gt_dict(path), rows, cfg))
    return pd.concat(res)

def _key(df):
    "'method @ layer tta=False t=0.8', or '... gradient t=0.3 u=0.2' for a gradient-narrowed box, '... segment t=0.7' for a segment box (rows of runs from before the modes: 'threshold')"
    mode = df['mode'] if 'mode' in df else pd.Series('threshold', index=df.index)
    u = df['grad_threshold'] if 'grad_threshold' in df else pd.Series(np.nan, index=df.index)
    box = [f' gradient t={t:.1f} u={v:.1f}' if m=='gradient' else f' segment t={t:.1f}' if m=='segment' else f' t={t:.1f}' for m,t,v in zip(mode, df['threshold'], u)]
    return df['method'] + ' @ ' + df['layer'].map(str) + ' tta=' + df['tta'].map(str) + pd.Series(box, index=df.index)

def _row_of(table, r):
    "The row of `table` for the recipe of row `r`"
    return table[_key(table)==_key(pd.DataFrame([r])).iloc[0]]

def ms(v, pct=True):
    v = pd.Series(v, dtype=float).dropna()
    if not len(v): return 'n/a'
    k = 100 if pct else 1000
    return f"{k*v.mean():.0f} +- {k*v.std(ddof=0):.0f}" if pct else f"{k*v.mean():.1f} +- {k*v.std(ddof=0):.1f}"

def _train_times(infos):
    "', N epochs took A-B s per model' from the runs' `train_s` (a cached model keeps the time it took when it was trained)"
    t = [i['train_s'] for i in infos if i.get('train_s') is not None]
    return f", training took {min(t):.0f}-{max(t):.0f} s per model" if t else ''

def summary_line(label, d):
    return f"| {label} | {len(d)} | " + ' | '.join(ms(d[m], m!='s_per_item') for m in METRICS) + ' |'

HOLDS = ("A box mode that needs the input gradient ('gradient', 'segment') may be the default only where it **holds**: fixed before "
         "its first run, at the defaults' layer without tta, the mode's best threshold by the tuning domains' mean BoxAcc@0.5 holds "
         "when on **every** tuning domain its mean BoxAcc@0.5 is at least the plain default's (a default must not box fewer findings "
         "than today's anywhere, the softest lesions included). fastcam's default changes to the holding mode with the higher tuning "
         "mean only if it holds at both scales (96 and 192 px: `localization_gradcam.md`, `localization_x2_gradcam.md`). The held-out "
         "domain is not used. Cost, for the decision: such a mode makes each map's backward run on to the input, about 2.1-2.4x a map "
         "on the CPU (`refine.md`), and 'segment' adds the input's segmentation, about 0.7x (`segment_boxes.md`).")

def holds_section(tr, ho, tune_doms, plain, cands) -> list:
    "Markdown lines: per tuning domain, the plain default's BoxAcc@0.5 beside each input mode's best (`cands`: (mode, key)); whether each holds (HOLDS); their held-out BoxAcc"
    cands = [(m, k) for m,k in cands if k is not None]
    acc = lambda d, k: tr[(tr.domain==d) & (tr.key==k)].box_acc.mean()
    L = ['', "## Can a mode that needs the input gradient be the default?", '', HOLDS, '',
         "| tuning domain | plain default | " + ' | '.join(f"best {m} box ({k.split(' tta=False ')[-1]})" for m,k in cands) + " |", "|---|---|" + "---|"*len(cands)]
    ok = {m: True for m,_ in cands}
    for d in tune_doms:
        p = acc(d, plain)
        for m,k in cands: ok[m] &= bool(acc(d, k) >= p)
        L.append(f"| {d} | {ms(tr[(tr.domain==d) & (tr.key==plain)].box_acc)} | " + ' | '.join(ms(tr[(tr.domain==d) & (tr.key==k)].box_acc) for _,k in cands) + " |")
    L.append(f"| **tuning mean** | {ms(tr[tr.key==plain].box_acc)} | " + ' | '.join(ms(tr[tr.key==k].box_acc) for _,k in cands) + " |")
    L.append(f"| holds (not below the plain default on any tuning domain) | - | " + ' | '.join('**yes**' if ok[m] else 'no' for m,_ in cands) + " |")
    L.append(f"| held out (not used) | {ms(ho[ho.key==plain].box_acc)} | " + ' | '.join(ms(ho[ho.key==k].box_acc) for _,k in cands) + " |")
    held = [(m, k) for m,k in cands if ok[m]]
    pick = max(held, key=lambda mk: tr[tr.key==mk[1]].box_acc.mean())[0] if held else None
    L += ['', f"At this scale: {'**' + pick + '** holds with the higher tuning mean' if pick else 'no such mode holds'}."]
    return L

HEAD = "| recipe | runs | pointing % | BoxAcc@0.5 % | MaxBoxAccV2 % | AP@0.5 % | score AUROC % | ms / item |\n|---|---|---|---|---|---|---|---|"

def report(all_rows, tuned, cfg, infos, secs, a_jobs):
    tune_doms = [d for d in cfg['domains'] if d!=HELD_OUT]
    MIN_ACC = cfg['min_acc']   # runs whose model's validation accuracy is below this are left out (it did not learn to see the lesion)
    learned = all_rows[all_rows.accuracy >= MIN_ACC]
    skipped = sorted({f"{d} seed {s} ({a:.2f})" for d,s,a in all_rows[all_rows.accuracy < MIN_ACC][['domain', 'seed', 'accuracy']].itertuples(index=False)})
    tr,ho = learned[learned.domain.isin(tune_doms)],learned[learned.domain==HELD_OUT]
    if tuned is not None: tuned = tuned[tuned.accuracy >= MIN_ACC]
    tr,ho = tr.assign(key=_key(tr)),ho.assign(key=_key(ho))
    mean = tr.groupby('key')[METRICS].mean()
    order = mean.sort_values(['box_acc', 'pointing', 'max_box_acc_v2'], ascending=False)
    winner = order.index[0]   # the table's best recipe over the tuning domains, every layer and tta
    fixed = tr[(tr.method=='gradcam') & (tr.layer.map(str)=='stage:-1') & (~tr.tta.astype(bool))]   # the defaults' layer and tta are fixed beforehand (see DEFAULTS)
    fixed_order = fixed.groupby('key')[METRICS].mean().sort_values(['box_acc', 'pointing', 'max_box_acc_v2'], ascending=False).index
    best = next(k for k in fixed_order if ' gradient ' not in k and ' segment ' not in k)   # the defaults box with the map's own regions (see DEFAULTS)
    other = next((k for k in fixed_order if ' gradient ' in k), None)     # the same rule among gradient-narrowed boxes, for comparison
    seg = next((k for k in fixed_order if ' segment ' in k), None)        # and among segment boxes
    old = _key(pd.DataFrame([dict(method='gradcam', layer='stage:-1', tta=False, threshold=0.7)])).iloc[0]
    dflt = _key(pd.DataFrame([dict(default_recipe, layer='stage:-1')])).iloc[0]   # fastcam's defaults as they are (chosen at scale 1)
    extra = ([] if dflt==best else [("fastcam's default (default_recipe)", dflt)]) + ([] if other is None else [("best gradient box at the defaults' layer, not the default", other)]) + \
            ([] if seg is None else [("best segment box at the defaults' layer, not the default", seg)])
    chosen = tr[tr.key==best].iloc[0]
    sc = cfg['scale']
    part = cfg['methods']!=FULL['methods'] or cfg['tta']!=FULL['tta']   # a shorter run than the full grid: say which
    flags = (f" --methods {' '.join(cfg['methods'])}" if cfg['methods']!=FULL['methods'] else '') + (' --no-tta' if cfg['tta']==(False,) else '')
    L = [f"# Localization across synthetic domains ({'quick' if cfg.get('quick') else 'part of the grid' if part else 'full'} run{f', images and input x{sc:g}' if sc!=1 else ''})", '',
         f"`python bench/localization.py{' --quick' if cfg.get('quick') else ''}{f' --scale {sc:g}' if sc!=1 else ''}{'' if cfg.get('quick') else flags}`: {len(cfg['domains'])} domains x {len(cfg['seeds'])} model seeds, "
         f"{cfg['n']} DICOMs per domain (30 % validation), small XResNet from scratch, {cfg['epochs']} epochs, {96*sc:g} px squish; " +
         (f"{a_jobs} processes of one torch thread; {secs/60:.1f} min in all; models cached in bench/.cache/" + _train_times(infos) + "." if secs==secs else "this report was made again from the run's CSV (`--from-csv`)" + (f", box mode(s) {', '.join(cfg['modes'])} measured again on the cached models with the current code (`--modes`; their ms / item come from that run, on a differently loaded machine, and compare only with each other)" if cfg.get('modes') else '') + ", the tune step redone on the cached models."), '',
         f"Grid: methods {', '.join(cfg['methods'])}; tta {', '.join(map(str, cfg['tta']))}; layers: `layer_candidates` of the stage ends; "
         f"box modes 'threshold' at {', '.join(map(str, cfg['thresholds']))}, 'gradient' at those x input-gradient thresholds {', '.join(map(str, cfg['grad_thresholds']))}"
         f"{' and segment at those thresholds' if (all_rows['mode']=='segment').any() else ''}.", '',
         f"Domains (`make_dicom_set` options on top of size {domain_opts(tune_doms[0], sc)['size']}, contrast (0.15, 0.25)):", '']
    L += [f"- `{d}`{' (HELD OUT)' if d==HELD_OUT else ''}: {({**DOMAINS[d], 'size': domain_opts(d, sc)['size']} if 'size' in DOMAINS[d] else DOMAINS[d])}; accuracy {ms([i['accuracy'] for i in infos if i['domain']==d])} %" for d in cfg['domains']]
    L += ['', f"Runs whose model did not learn the task (validation accuracy < {MIN_ACC}) are left out of every line below: a map of a model that does not see the lesion says nothing about a box recipe. Left out: {', '.join(skipped) or 'none'}.",
          '', "## Chosen defaults", '', DEFAULTS, '',
          f"With the map's own regions the rule picks **{best}**{' at this scale' if sc!=1 else ''}; fastcam's `default_recipe` is **{dflt}**" +
          (" (the same)." if dflt==best else ", a mode that needs the input gradient, by the rule of the section 'Can a mode that needs the input gradient be the default?' at both scales.") +
          f" The best recipe of the whole table on the tuning domains is {winner}; its held-out line is below, for information only.", '',
          "## Tuning domains: every method x layers x tta x box mode at its best thresholds (mean +- sd over domain x seed runs)", '', HEAD]
    tr_best = order.reset_index().assign(mk=lambda d: d.key.str.rsplit(' t=', n=1).str[0]).drop_duplicates('mk')
    for k in tr_best.key: L.append(summary_line(k, tr[tr.key==k]))
    L += ['', "## Per tuning domain: old defaults, the plain default box and the others", '', HEAD]
    for d in tune_doms:
        for lab,k in (('old defaults', old), ('plain default box', best), *extra, ("table's best", winner)): L.append(summary_line(f"{d}: {lab} ({k})", tr[(tr.domain==d) & (tr.key==k)]))
    L += holds_section(tr, ho, tune_doms, best, (('gradient', other), ('segment', seg)))
    L += ['', f"## Held-out domain `{HELD_OUT}` (used in no choice)", '', HEAD,
          summary_line(f"old defaults ({old})", ho[ho.key==old]),
          summary_line(f"plain default box, no labels ({best})", ho[ho.key==best]),
          *[summary_line(f"{lab}, no labels ({k})", ho[ho.key==k]) for lab,k in extra],
          summary_line(f"the tuning domains' best recipe, not chosen ({winner})", ho[ho.key==winner])]
    if tuned is not None:
        L.append(summary_line(f"tune step on {cfg['labelled']} labelled training files (choices: {', '.join(sorted(set(_key(tuned))))})", tuned))
    ha = all_rows[all_rows.domain==HELD_OUT]; ha = ha.assign(key=_key(ha))
    L += [summary_line(f"all held-out runs, learned or not: old defaults", ha[ha.key==old]), summary_line(f"all held-out runs, learned or not: plain default box", ha[ha.key==best])] + \
         ([] if dflt==best else [summary_line(f"all held-out runs, learned or not: fastcam's default", ha[ha.key==dflt])])
    if len(ho):
        hb = ho.groupby('key')[METRICS].mean().sort_values('box_acc', ascending=False).index[0]
        L.append(summary_line(f"oracle: best recipe on the held-out validation itself ({hb})", ho[ho.key==hb]))
    mode = chosen.get('mode', 'threshold')
    return '\n'.join(L) + '\n', dict(method=chosen['method'], layer=chosen['layer'], tta=bool(chosen['tta']), mode=mode, threshold=float(chosen['threshold']),
                                     **({'grad_threshold': float(chosen['grad_threshold'])} if mode in ('gradient', 'segment') else {}))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='2 domains, 1 seed, tiny sets: a minute, for development')
    ap.add_argument('--out', default=None, help='markdown table (default: bench/results/localization.md; quick: stdout only)')
    ap.add_argument('--from-csv', default=None, help="report again from a full run's CSV (tune step redone on the cached models)")
    ap.add_argument('--jobs', type=int, default=2, help='processes, one (domain, seed) run each, one torch thread each')
    ap.add_argument('--scale', type=float, default=1, help='images and model input this many times the size (1: 96 px input; 2: 192 px)')
    ap.add_argument('--methods', nargs='+', default=None, help="CAM methods measured (default: the grid's; e.g. gradcam alone for a shorter run, which still covers the defaults' rule)")
    ap.add_argument('--no-tta', action='store_true', help='measure without mirroring only (a shorter run that still covers the defaults, which fix tta off)')
    ap.add_argument('--modes', nargs='+', default=None, help="with --from-csv: measure these box modes again on the cached models (after a change to one of them), keep the CSV's rows of the others, and report")
    a = ap.parse_args()
    cfg = {**(QUICK if a.quick else FULL), 'quick': a.quick, 'scale': a.scale}
    if a.methods: cfg['methods'] = tuple(a.methods)
    if a.no_tta: cfg['tta'] = (False,)
    CACHE.mkdir(parents=True, exist_ok=True)
    t0,rows,tuned,infos = time.time(),[],[],[]
    if a.from_csv:   # the report again from a run's CSV (the recipes measured), with the tune step redone on the cached models
        all_rows = pd.read_csv(a.from_csv)
        all_rows['layer'] = all_rows['layer'].map(json.loads)
        if a.modes: cfg['modes'] = tuple(a.modes); all_rows = remeasure(all_rows, cfg, a.jobs)
        md,choice = report(all_rows, tuned_from_rows(all_rows, cfg), cfg, all_rows.drop_duplicates(['domain', 'seed']).to_dict('records'), float('nan'), a.jobs)
        return _write(a, md, choice, all_rows)
    for d in cfg['domains']: domain_set(d, cfg['n'], cfg['scale'])          # the data first, once per domain
    jobs = [(d, s) for s in cfg['seeds'] for d in cfg['domains']]
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context('spawn')) as ex:
        for (d,s),(r,t,info) in zip(jobs, ex.map(evaluate, *zip(*jobs), [cfg]*len(jobs))):
            print(f"{d} seed {s}: validation accuracy {info['accuracy']:.2f}, trained in {info['train_s']:.0f} s, recipes measured in {info['eval_s']:.0f} s", flush=True)
            rows.append(r); infos.append(info)
            if t is not None: tuned.append(t)
    tuned = pd.concat(tuned) if tuned else None
    all_rows = pd.concat(rows)
    infos = [dict(domain=i['domain'], seed=i['seed'], accuracy=i['accuracy'], train_s=i['train_s']) for i in infos]
    md,choice = report(all_rows, tuned, cfg, infos, time.time()-t0, a.jobs)
    _write(a, md, choice, all_rows)

def remeasure(all_rows, cfg, jobs):
    "`all_rows` with the rows of `cfg['modes']` measured again on the cached models (every domain and seed of the CSV)"
    runs = list(all_rows[['domain', 'seed']].drop_duplicates().itertuples(index=False, name=None))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as ex:
        new = [r for r,_,_ in ex.map(evaluate, *zip(*runs), [cfg]*len(runs))]
    print(f"box modes {', '.join(cfg['modes'])} measured again on {len(runs)} runs", flush=True)
    return pd.concat([all_rows[~all_rows['mode'].isin(cfg['modes'])], *new], ignore_index=True)

def _write(a, md, choice, all_rows):
    print(md); print('plain default box:', choice)
    out = a.out or (None if a.quick else str(Path(__file__).parent/'results'/('localization.md' if a.scale==1 else f'localization_x{a.scale:g}.md')))
    if out:
        Path(out).write_text(md)
        all_rows.assign(layer=all_rows.layer.map(json.dumps)).to_csv(Path(out).with_suffix('.csv'), index=False, float_format='%.4f')
        Path(out).with_suffix('.json').write_text(json.dumps(choice))

if __name__ == '__main__': main()
