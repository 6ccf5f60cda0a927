#!/usr/bin/env python
"""Benchmark: every fastcam CAM method against a plain no-grad forward and against the same method in its peers.

For torchvision resnet18 (random weights, seeded, eval) at 224 px, batch 8, on CPU (and on CUDA when there is one),
with each item's predicted class as its target and layer4 as the layer, this measures the median time of

- `forward`: `torch.no_grad()` forward of the batch, the cheapest thing that looks at it;
- for each method name (gradcam, cam, gradcampp, xgradcam, hirescam, layercam, eigencam):
  `fastcam.core.cam(model, xb, target=targets, method=name)`, and pytorch-grad-cam's class of the same name
  (`with GradCAMPlusPlus(model=model, target_layers=[model.layer4]) as ex: ex(input_tensor=xb, targets=[...])`);
  pytorch-grad-cam has no CAM, so `cam` is compared with torchcam's `CAM(model, 'layer4', fc_layer='fc')`;
- Guided Backprop: `fastcam.guided.GuidedBackprop(model)(xb, target=targets)` against captum's `GuidedBackprop`
  and pytorch-grad-cam's `GuidedBackpropReLUModel` (which explains one image at a time: one call per item, on a
  copy of the model's modules that shares its parameters, since it swaps the model's ReLUs for its own);
- Guided Grad-CAM: `fastcam.guided.guided_gradcam(model, xb, target=targets)` against captum's `GuidedGradCam`
  (with `interpolate_mode='bilinear'`, fastcam's upsampling) and pytorch-grad-cam's recipe (its README): `GradCAM`
  on the batch, then `GuidedBackpropReLUModel` per item, multiplied;
- Score-CAM, which needs one forward per channel (512 at layer4): on batch 1, with 64 masked images per forward on
  both sides (fastcam's `batch_size=64`, pytorch-grad-cam's `batch_size` attribute set to 64), against a batch-1
  forward. --quick runs it at 112 px (4x cheaper) and says so.

Every timed call is one complete use of the library as a user would write it (building the extractor, forward,
backward, maps, removing hooks); each returns what it returns by default (pytorch-grad-cam: maps resized to the
input). Calls are interleaved and hooks and `.grad` are cleaned between calls, with `time_row` and `cleanup` from
bench/gradcam.py. A first untimed round calls every method once (warm-up) and checks that the maps agree: the
'max abs diff' column is the largest difference from the peer's output after pytorch-grad-cam's ReLU, min-max,
resize and min-max for maps (`_as_pgc` of bench/gradcam.py), and after dividing each image by its largest |value|
for input-space gradient images (Guided Backprop, Guided Grad-CAM).

On a machine shared with other work, `--cpu-time` gives steadier numbers: torch on one thread, each CPU call timed
in CPU seconds of the process rather than on the wall clock (see `use_cpu_time`).

Usage: `python bench/methods.py [--quick] [--out FILE] [--budget 170] [--cpu-time]`
"""
from __future__ import annotations
import argparse, contextlib, copy, io, json, os, platform, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gradcam
from gradcam import (T0, seed_everything, cleanup, time_row, sync, mem_row, rss_follows_allocations, _as_pgc,
                     _threads, _version)

import numpy as np
import torch, torchvision
from fastcam.core import cam
from fastcam.guided import GuidedBackprop, guided_gradcam

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError: pgc = None
try: import captum.attr as captum
except ImportError: captum = None
try: from torchcam.methods import CAM as TCCAM
except ImportError: TCCAM = None

PGC = {'gradcam':'GradCAM', 'gradcampp':'GradCAMPlusPlus', 'xgradcam':'XGradCAM', 'hirescam':'HiResCAM',
       'layercam':'LayerCAM', 'eigencam':'EigenCAM', 'scorecam':'ScoreCAM'}
CAM_METHODS = ['gradcam', 'cam', 'gradcampp', 'xgradcam', 'hirescam', 'layercam', 'eigencam']
GUIDED = ['guided_backprop', 'guided_gradcam']
LAYER_GRAD = ['gradcampp', 'xgradcam', 'hirescam', 'layercam']   # one backward to the layer, as Grad-CAM
GRAD_FREE = ['cam', 'eigencam', 'scorecam']
MAX_X, BS, SC_BS, SC_CHUNK, PARITY = 1.2, 8, 1, 64, .95
TARGET = (f"the methods that take gradients at the layer ({', '.join(LAYER_GRAD)}) at most {MAX_X}x fastcam's "
          "gradcam on the same batch; every gradient method (those, gradcam and the guided ones) faster than each peer's "
          f"same method; the gradient-free ones ({', '.join(GRAD_FREE)}) no slower than the peer's (speed-up at least "
          f"{PARITY}: CAM and Score-CAM run the same forwards as their peers)")
DIST = {'pytorch-grad-cam':'grad-cam', 'captum':'captum', 'torchcam':'torchcam'}

def setup(dev, bs, size=224):
    "resnet18 (seeded, eval) on `dev`, a seeded batch, each item's predicted class"
    seed_everything(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000).eval().to(dev)
    seed_everything(bs)
    xb = torch.randn(bs, 3, size, size, device=dev)
    with torch.no_grad(): tl = model(xb).argmax(1).tolist()
    return model, xb, tl

def _shared_copy(model):
    "A copy of `model`'s modules that shares its parameters and buffers (for peers that replace modules)"
    return copy.deepcopy(model, {id(t):t for t in [*model.parameters(), *model.buffers()]})

@contextlib.contextmanager
def _quiet():
    "pytorch-grad-cam's ScoreCAM draws a tqdm bar on stderr that cannot be turned off"
    with contextlib.redirect_stderr(io.StringIO()): yield

# ----------------------------------------------------------------------------------------------------------------
# The clock. On a machine shared with other work, the wall clock of a 2-thread run measures the load as much as the
# call (an intra-op parallel region waits for a thread the OS has descheduled). --cpu-time runs torch on one thread
# and times CPU rows with `time.process_time` (CPU seconds of this whole process, OpenCV's threads included), which
# other processes barely change; CUDA rows keep the wall clock. `time_row` (bench/gradcam.py) times each call with
# that module's `timed`, so --cpu-time puts this one in its place.
CPU_TIME = False

def _clock(dev): return time.process_time if CPU_TIME and dev.type=='cpu' else time.perf_counter

def timed(fn, dev):
    clock = _clock(dev)
    sync(dev); t0 = clock()
    out = fn()
    sync(dev); t = clock()-t0
    del out
    return t

def use_cpu_time():
    global CPU_TIME
    CPU_TIME, gradcam.timed = True, timed
    torch.set_num_threads(1)
    return 1

# ----------------------------------------------------------------------------------------------------------------
# The calls, keyed 'forward' and '<library> <method>'
def make_calls(model, xb, tl, methods=CAM_METHODS+GUIDED, recipe=True):
    layer = model.layer4
    pgc_targets = lambda: [ClassifierOutputTarget(t) for t in tl]
    def forward():
        with torch.no_grad(): return model(xb)
    def fc(name):
        if name=='guided_backprop': return lambda: GuidedBackprop(model)(xb, target=tl)[0][:,0]
        if name=='guided_gradcam': return lambda: guided_gradcam(model, xb, target=tl)[:,0]
        kw = dict(batch_size=SC_CHUNK, progress=False) if name=='scorecam' else {}
        return lambda: cam(model, xb, target=tl, method=name, **kw).maps[:,0]
    def pgc_cam(name):
        def f():
            with _quiet(), getattr(pgc, PGC[name])(model=model, target_layers=[layer]) as ex:
                ex.batch_size = SC_CHUNK                        # read by ScoreCAM only
                return ex(input_tensor=xb, targets=pgc_targets())
        return f
    gb_model = _shared_copy(model)
    def pgc_gb():                                               # one image per call; it sets requires_grad on it
        gb = pgc.GuidedBackpropReLUModel(model=gb_model, device=None)
        return [gb(xb[i:i+1].clone(), target_category=t) for i,t in enumerate(tl)]
    def pgc_ggc():
        with pgc.GradCAM(model=model, target_layers=[layer]) as ex: masks = ex(input_tensor=xb, targets=pgc_targets())
        gb = pgc.GuidedBackpropReLUModel(model=gb_model, device=None)
        return [masks[i][...,None] * gb(xb[i:i+1].clone(), target_category=t) for i,t in enumerate(tl)]
    def tc_cam():
        ex = TCCAM(model, target_layer='layer4', fc_layer='fc', input_shape=tuple(xb.shape[1:]))
        try:
            with torch.no_grad(): scores = model(xb)
            return ex(class_idx=tl, scores=scores)[0]
        finally: ex.remove_hooks()
    calls = {'forward': forward}
    for m in methods:
        calls[f'fastcam {m}'] = fc(m)
        if pgc is not None and m in PGC: calls[f'pytorch-grad-cam {m}'] = pgc_cam(m)
    if 'cam' in methods and TCCAM is not None: calls['torchcam cam'] = tc_cam
    if 'guided_backprop' in methods:
        if captum is not None: calls['captum guided_backprop'] = lambda: captum.GuidedBackprop(model).attribute(xb, target=tl)
        if pgc is not None: calls['pytorch-grad-cam guided_backprop'] = pgc_gb
    if 'guided_gradcam' in methods:
        if captum is not None:
            calls['captum guided_gradcam'] = lambda: captum.GuidedGradCam(model, layer).attribute(
                xb, target=tl, interpolate_mode='bilinear')
        if pgc is not None and recipe: calls['pytorch-grad-cam guided_gradcam'] = pgc_ggc
    return calls

def peers_of(calls, method):
    return [k.split(' ')[0] for k in calls if k.endswith(' '+method) and not k.startswith('fastcam')]

# ----------------------------------------------------------------------------------------------------------------
# Sanity: one call of everything (the warm-up round), then each fastcam output against each peer's
def _images(x):
    "Input-space gradient images `[B,C,H,W]` (pytorch-grad-cam's are a list of `[H,W,C]` arrays), each over max |x|"
    x = torch.stack([torch.as_tensor(np.asarray(a)).permute(2,0,1) for a in x]) if isinstance(x, list) else x
    x = x.detach().float().cpu()
    return x / x.abs().amax((1,2,3), keepdim=True).clamp(min=1e-12)

def _diff(method, ours, ref, size):
    "Max abs difference of fastcam's output `ours` from a peer's `ref`, both brought to the same form"
    if method in GUIDED: return (_images(ours) - _images(ref)).abs().max().item()
    ref = _as_pgc(torch.as_tensor(ref).detach().cpu(), size)    # pytorch-grad-cam's are already in that form
    d = lambda m: (_as_pgc(m.detach().cpu(), size) - ref).abs().amax((1,2))
    if method!='eigencam': return d(ours).max().item()
    # the sign of a principal component is arbitrary (fastcam orients it towards high activation, pytorch-grad-cam
    # keeps the SVD's): the diff as is, and with each of fastcam's maps flipped where that matches better
    return d(ours).max().item(), torch.minimum(d(ours), d(-ours)).max().item()

def warm_and_check(model, calls, size, dev):
    "Call every method once; `({(method, peer): max abs diff}, {call: seconds})`"
    outs, times = {}, {}
    for k,f in calls.items():
        clock = _clock(dev)
        sync(dev); t0 = clock(); outs[k] = f(); sync(dev); times[k] = clock()-t0
        cleanup(model, k)
    res = {}
    for k in calls:
        if k=='forward' or k.startswith('fastcam'): continue
        peer, method = k.split(' ')
        res[method, peer] = _diff(method, outs['fastcam '+method], outs[k], size)
    return res, times

# ----------------------------------------------------------------------------------------------------------------
def plan(quick):
    """`(warm, reps, sc_reps, sc_size)`: untimed rounds after the checking round and timed calls of the batch-8 row;
    timed calls of Score-CAM after its checking call (0: the checking call is the timed one) and its image size.
    A round of the batch-8 row costs about 55 forwards (pytorch-grad-cam's methods run a full backward with parameter
    gradients, ~3-4 forwards each, and its Guided Backprop one image at a time), ~45 s on 2 CPU cores shared with
    other work; one Score-CAM call at 224 px ~65 forwards of batch 8, at 112 px a quarter of that. --quick leaves out
    pytorch-grad-cam's Guided Grad-CAM recipe (~12 s a call) and, past 55% of its budget, the third timed round."""
    return (0, 3, 0, 112) if quick else (1, 9, 2, 224)

def memory_child():
    "Run in a child process: print, as JSON, the peak extra CPU memory of one call of every method on the batch-8 row"
    rss_follows_allocations()   # first thing, before the heap grows (see bench/gradcam.py)
    _threads()
    cpu = torch.device('cpu')
    model, xb, tl = setup(cpu, BS)
    calls = make_calls(model, xb, tl)
    for k,f in calls.items(): f(); cleanup(model, k)
    print('MEMORY ' + json.dumps(mem_row(model, cpu, calls, 1)))

def cpu_memory():
    p = subprocess.run([sys.executable, os.path.abspath(__file__), '--memory-child'], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(p.stdout.split('MEMORY ', 1)[1])

def run_row(dev, bs, size, methods, warm, reps, deadline, min_reps, recipe=True):
    model, xb, tl = setup(dev, bs, size)
    calls = make_calls(model, xb, tl, methods, recipe)
    t0 = time.perf_counter()
    diffs, first = warm_and_check(model, calls, (size, size), dev)
    if reps: med, mn, n = time_row(model, dev, calls, warm, {k:reps for k in calls}, deadline, min_reps)
    else:      # the checking call is the only timed one (the forward, cheap, gets 3 more)
        med, mn, n = time_row(model, dev, {'forward':calls['forward']}, 0, {'forward':3})
        for k in calls:
            if k!='forward': med[k] = mn[k] = first[k]; n[k] = 1
    row = dict(dev=dev.type, bs=bs, size=size, med=med, min=mn, n=n, diffs=diffs, calls=list(calls))
    if dev.type=='cuda' and methods!=['scorecam']: row['mem'] = mem_row(model, dev, calls, 1)
    print(f"  {dev.type} bs {bs} {size} px: {len(calls)} calls, {max(n.values())} timed rounds "
          f"({time.perf_counter()-t0:.0f} s)", file=sys.stderr, flush=True)
    return row

def main(quick=False, out=None, budget=170., cpu_time=False):
    n_cpu = use_cpu_time() if cpu_time else _threads()
    devs = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    warm, reps, sc_reps, sc_size = plan(quick)
    rows = []
    for dev in devs:
        # --quick: the batch-8 row stops timing after 2 rounds once 55% of `budget` (imports included) is gone
        deadline = T0 + .55*budget*(devs.index(dev)+1)/len(devs) if quick else None
        rows.append(run_row(dev, BS, 224, CAM_METHODS+GUIDED, warm, reps, deadline, 2, recipe=not quick))
        rows.append(run_row(dev, SC_BS, sc_size, ['scorecam'], 0, sc_reps, None, 1))
    if not quick:
        t0 = time.perf_counter()
        rows[0]['mem'] = cpu_memory()
        print(f"  cpu memory ({time.perf_counter()-t0:.0f} s)", file=sys.stderr, flush=True)
    md = report(rows, quick, n_cpu, time.perf_counter()-T0)
    print(md)
    if out:
        with open(out, 'w') as f: f.write(md+'\n')

# ----------------------------------------------------------------------------------------------------------------
def _ms(t): return f"{t*1e3:.0f}" if t>=1 else f"{t*1e3:.1f}"

def _verdict(method, x_gc, speedups):
    bad = [f"{x_gc:.2f}x gradcam > {MAX_X}x"] if method in LAYER_GRAD and x_gc>MAX_X else []
    bad += [f"not faster than {p}" if method not in GRAD_FREE else f"slower than {p}"
            for p,s in speedups.items() if s <= (PARITY if method in GRAD_FREE else 1)]
    return 'NO: ' + '; '.join(bad) if bad else 'yes'

def _diff_cell(method, peer, d):
    if isinstance(d, tuple): return f"{d[0]:.1e} (sign-aligned {d[1]:.1e})"
    if (method, peer)==('guided_gradcam', 'pytorch-grad-cam'): return f"{d:.1e} (by definition: min-max scaled mask)"
    return f"{d:.1e}"

def _environment(n_cpu):
    "Versions of torch, torchvision, fastcam and the peers; the processor, threads and GPU"
    vers = [('torch', torch.__version__), ('torchvision', torchvision.__version__), ('fastcam', _version('fastcam'))]
    vers += [(p, _version(d)) for p,d in DIST.items()]
    gpu = [torch.cuda.get_device_name()] if torch.cuda.is_available() else []
    threads = f"{n_cpu} CPU thread{'s' if n_cpu>1 else ''}" + (" (--cpu-time: CPU rows timed in CPU seconds of the process)" if CPU_TIME else ", wall clock")
    machine = [platform.processor() or platform.machine(), threads, *gpu]
    return ', '.join(f"{n} {v}" for n,v in vers) + '; ' + ', '.join(machine) + '.'

def report(rows, quick, n_cpu, wall):
    MB = 2**20
    lines = [f"## fastcam CAM methods benchmark{' (--quick)' if quick else ''}", "", _environment(n_cpu),
             "resnet18 (random weights), targets: each item's predicted class, layer4. Times are medians of "
             "interleaved calls; 'x forward' is over the median no-grad forward of the same batch (lower is better); "
             "'x gradcam' is over fastcam's gradcam on the same batch; speed-up is the peer's time over fastcam's.", "",
             f"**Target: {TARGET}.**", "",
             "| device | method | batch | fastcam ms | x forward | x gradcam | peer | peer ms | peer x forward "
             "| fastcam speed-up | max abs diff | fastcam mem MB | peer mem MB | meets target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ok, gc_ms = True, None
    for r in rows:
        med, fw, mem = r['med'], r['med']['forward'], r.get('mem', {})
        mb = lambda k: f"{mem[k]/MB:.0f}" if k in mem else '-'
        if 'fastcam gradcam' in med: gc_ms = med['fastcam gradcam']
        batch = f"{r['bs']}" + (f" ({r['size']} px)" if r['size']!=224 else '')
        lines.append(f"| {r['dev']} | forward (no grad) | {batch} | {_ms(fw)} | 1.00 | | | | | | | {mb('forward')} | | |")
        methods = [k.split(' ',1)[1] for k in r['calls'] if k.startswith('fastcam ')]
        for m in methods:
            t = med['fastcam '+m]
            x_gc = t/gc_ms if m!='scorecam' else float('nan')
            peers = peers_of(r['calls'], m)
            speedups = {p: med[f'{p} {m}']/t for p in peers}
            v = _verdict(m, x_gc, speedups); ok &= v=='yes'
            first = f"| {r['dev']} | {m} | {batch} | {_ms(t)} | {t/fw:.2f} | {'' if m=='scorecam' else f'{x_gc:.2f}'} "
            for i,p in enumerate(peers or [None]):
                head = first if i==0 else "| | | | | | "
                if p is None: lines.append(head + f"| none | | | | | {mb('fastcam '+m)} | | {v} |"); continue
                tp = med[f'{p} {m}']
                lines.append(head + f"| {p} | {_ms(tp)} | {tp/fw:.2f} | {speedups[p]:.2f} | {_diff_cell(m, p, r['diffs'][m,p])} "
                             f"| {mb('fastcam '+m) if i==0 else ''} | {mb(f'{p} {m}')} | {v if i==0 else ''} |")
    reps = '; '.join(f"{r['dev']} batch {r['bs']}: {min(r['n'].values())}-{max(r['n'].values())}" for r in rows)
    lines += ["", "The same ratios from the fastest call of each method instead of the median (on a shared machine, load "
              "spikes hit single calls; the minimum shows the cost without them):", "",
              "| device | method | batch | fastcam x forward | x gradcam | peer x forward |", "|---|---|---|---|---|---|"]
    for r in rows:
        mn = r['min']
        for m in [k.split(' ',1)[1] for k in r['calls'] if k.startswith('fastcam ')]:
            peers = ', '.join(f"{p} {mn[f'{p} {m}']/mn['forward']:.2f}" for p in peers_of(r['calls'], m))
            x_gc = '' if m=='scorecam' else f"{mn['fastcam '+m]/mn['fastcam gradcam']:.2f}"
            lines.append(f"| {r['dev']} | {m} | {r['bs']} | {mn['fastcam '+m]/mn['forward']:.2f} | {x_gc} | {peers} |")
    lines += ["", f"Timed calls per method: {reps}, after one untimed round that also checks the maps"
              + (" (Score-CAM with --quick: that checking call is its one timed call)" if quick else
                 " and, for the batch-8 row, one more warm-up round") + ". "
              "Score-CAM: one forward per channel (512 masked images at layer4, 64 per forward on both sides), so batch 1"
              + (f" at {rows[1]['size']} px in --quick" if quick else "") + "; its 'x forward' is over a batch-1 forward."
              + (" --quick leaves out pytorch-grad-cam's Guided Grad-CAM recipe (its GradCAM plus its per-item "
                 "GuidedBackpropReLUModel, both timed on their own rows)." if quick else ""),
              "max abs diff: maps after pytorch-grad-cam's ReLU, min-max, resize to the input, min-max (torchcam's CAM "
              "maps likewise); gradient images (guided_*) after dividing each by its largest |value|. EigenCAM differs "
              "on purpose: fastcam orients the principal component towards high activation, pytorch-grad-cam keeps the "
              "SVD's arbitrary sign, so the diff is also given with fastcam's map flipped where pytorch-grad-cam's sign "
              "is the other one. pytorch-grad-cam's GuidedBackpropReLUModel explains one image per call (8 calls here); "
              "its Guided Grad-CAM is its README's recipe (GradCAM on the batch, then that per item), whose mask is "
              "pytorch-grad-cam's min-max scaled map, not the ReLU'd map, so it is not proportional to fastcam's (or "
              "captum's) when a map's minimum is above 0, as with these random weights. captum's "
              "GuidedGradCam runs with interpolate_mode='bilinear' (its default is 'nearest').",
              "Guided Backprop needs gradients at the input, through the whole network, where Grad-CAM and the other "
              f"layer methods stop at layer4; so the {MAX_X}x-gradcam part of the target is for {', '.join(LAYER_GRAD)} only.",
              ("Memory: peak extra memory of one call (CPU: RSS sampled in a child process, as bench/gradcam.py does; "
               "CUDA: max_memory_allocated); not measured for Score-CAM." if not quick else
               "Memory: not measured with --quick."), ""]
    verdict = 'met on every row' if ok else 'NOT met on every row (see meets target)'
    return '\n'.join(lines + [f"Target {verdict}. Total benchmark time {wall:.0f} s."])

if __name__=='__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer repetitions, Score-CAM at 112 px (~3 minutes on 2 CPU cores)')
    ap.add_argument('--out', default=None, help='also write the markdown report to this file')
    ap.add_argument('--budget', type=float, default=170., help='seconds that --quick aims to stay within')
    ap.add_argument('--cpu-time', action='store_true', help='one torch thread, CPU seconds instead of the wall clock (for a shared machine)')
    ap.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    memory_child() if a.memory_child else main(a.quick, a.out, a.budget, a.cpu_time)
