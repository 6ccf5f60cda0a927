#!/usr/bin/env python
"""Benchmark: fastcam Grad-CAM against a plain no-grad forward and against its peers.

For torchvision resnet18 and resnet50 (random weights, 1000 classes) at 224 px, batch 1 and 8, on CPU
(and on CUDA when there is one), this measures the median time of

- `forward`: `model.eval()` and `torch.no_grad()`, the cheapest thing that looks at the batch;
- `fastcam`: `fastcam.core.cam(model, xb, target=...)` (Grad-CAM at the default layer: layer4);
- `pytorch-grad-cam`: `pytorch_grad_cam.GradCAM(model, [model.layer4])(xb, targets)`;
- `torchcam`: `torchcam.methods.GradCAM(model, 'layer4')`, a forward with grad, then `extractor(class_idx, scores)`;
- `captum`: `captum.attr.LayerGradCam(model, model.layer4).attribute(xb, target=...)`;

all for the same targets (the class the forward predicts for each item), and reports each as a ratio to the
forward's time, with the peak extra memory of one call. Every timed call is one complete use of the library,
as a user would write it: building the extractor (microseconds: it registers a hook), the forward, the
backward, the maps, and removing the hooks. Each library returns what it returns by default (fastcam and captum
the raw layer4 maps, torchcam ReLU'd and min-max scaled layer4 maps, pytorch-grad-cam maps resized to the
input with OpenCV); that post-processing is part of its time.

Calls are interleaved (one call of every method per round, in a seeded shuffled order per round), so that noise on a
shared machine falls on all of them alike. Between calls, hooks are checked to be gone and every parameter's
`.grad` is set to None (pytorch-grad-cam runs a full `loss.backward()`, which writes them).

Usage: `python bench/gradcam.py [--quick] [--out FILE] [--models resnet18,resnet50] [--bs 1,8] [--budget 150]`
"""
from __future__ import annotations
import argparse, ctypes, gc, json, os, platform, random, statistics, subprocess, sys, threading, time, warnings
from importlib.metadata import version, PackageNotFoundError
T0 = time.perf_counter()            # budgets count from here, imports included
warnings.filterwarnings('ignore')   # deprecation chatter from the peers' imports

import numpy as np
import torch, torch.nn.functional as F
import torchvision
from fastcam.core import cam

# ----------------------------------------------------------------------------------------------------------------
# Peers: each is optional, a missing one shows as 'n/a'
try:
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError: PGCGradCAM = None
try: from torchcam.methods import GradCAM as TCGradCAM
except ImportError: TCGradCAM = None
try: from captum.attr import LayerGradCam
except ImportError: LayerGradCam = None

METHODS = ['forward', 'fastcam', 'pytorch-grad-cam', 'torchcam', 'captum']
PEERS = METHODS[2:]
DIST = {'fastcam':'fastcam', 'pytorch-grad-cam':'grad-cam', 'torchcam':'torchcam', 'captum':'captum'}
AVAILABLE = {'forward':True, 'fastcam':True, 'pytorch-grad-cam':PGCGradCAM is not None,
             'torchcam':TCGradCAM is not None, 'captum':LayerGradCam is not None}
MAX_X, TARGET_BS = 1.15, 8
TARGET = f"fastcam Grad-CAM at most {MAX_X}x the forward on batch {TARGET_BS} and faster than every peer"

def _version(dist):
    try: return version(dist)
    except PackageNotFoundError: return 'not installed'

def seed_everything(seed=0):
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)

# ----------------------------------------------------------------------------------------------------------------
# The five calls. `tl` is the list of target classes, one per item.
def make_calls(model, xb, tl):
    layer = model.layer4
    def forward():
        with torch.no_grad(): return model(xb)
    def fastcam():
        return cam(model, xb, target=tl).maps          # layer=None: fastcam picks layer4 itself (checked below)
    def pgc():
        with PGCGradCAM(model=model, target_layers=[layer]) as ex:   # __exit__ releases its hooks
            return ex(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in tl])
    def tc():
        ex = TCGradCAM(model, target_layer='layer4')
        try:
            scores = model(xb)                          # torchcam needs a forward with grad enabled
            return ex(class_idx=tl, scores=scores)[0]   # one map per item, for its own class
        finally: ex.remove_hooks()
    def captum():
        return LayerGradCam(model, layer).attribute(xb, target=tl)
    calls = dict(zip(METHODS, [forward, fastcam, pgc, tc, captum]))
    return {k:f for k,f in calls.items() if AVAILABLE[k]}

def _n_hooks(model):
    return sum(len(m._forward_hooks)+len(m._forward_pre_hooks)+len(m._backward_hooks)+len(m._backward_pre_hooks)
               for m in model.modules())

def cleanup(model, name):
    "Leave the model as we found it: no hooks, no `.grad`"
    for p in model.parameters(): p.grad = None
    if _n_hooks(model): raise RuntimeError(f"{name} left hooks on the model")

# ----------------------------------------------------------------------------------------------------------------
# Time
def sync(dev):
    if dev.type=='cuda': torch.cuda.synchronize(dev)

def timed(fn, dev):
    sync(dev); t0 = time.perf_counter()
    out = fn()
    sync(dev); t = time.perf_counter()-t0
    del out
    return t

# ----------------------------------------------------------------------------------------------------------------
# Memory: the peak extra memory of one call, over what was in use just before it; the call's result is still
# alive when the peak is read.
# - CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus `memory_allocated` before.
# - CPU: torch's CPU allocations do not go through tracemalloc, and `ru_maxrss` only ever grows, so a background
#   thread reads this process's resident set size from /proc/self/statm every ~0.5 ms during the call (torch ops
#   release the GIL while they run) and we take its maximum minus the RSS just before the call. For the RSS to
#   follow what is allocated and freed, glibc must not keep freed buffers in its heap (where they stay resident,
#   and where a later call's buffers can land on pages that were given back and so count them again): CPU memory
#   is measured after all the timing, in one child process (seconds to start, not one per call) that fixes
#   glibc's mmap threshold at 64 KiB from its start (`mallopt`), so that every buffer above that is its own mapping,
#   handed back to the OS when freed. The timing process keeps the allocator as it is, since mapping every buffer
#   anew costs page faults. `gc.collect()` and `malloc_trim(0)` run before each measured call, after untimed
#   warm-up calls. This is an estimate: a peak that lasts less than a sampling interval can be missed, and small
#   allocations or caches can add a little. It counts every allocation of the process (torch, numpy, OpenCV).
class PeakRSS:
    "Peak growth of this process's resident set size (bytes) while the `with` block runs"
    page = os.sysconf('SC_PAGE_SIZE')
    def __init__(self, interval=5e-4): self.interval = interval
    def rss(self): return int(os.pread(self.fd, 128, 0).split()[1]) * self.page
    def _run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)
    def __enter__(self):
        self.fd = os.open('/proc/self/statm', os.O_RDONLY)
        self.switch = sys.getswitchinterval(); sys.setswitchinterval(1e-4)   # let the sampler in promptly
        self.base = self.peak = self.rss()
        self.done = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True); self.th.start()
        return self
    def __exit__(self, *a):
        self.peak = max(self.peak, self.rss())
        self.done.set(); self.th.join()
        sys.setswitchinterval(self.switch); os.close(self.fd)
    @property
    def extra(self): return max(self.peak-self.base, 0)

try: _libc = ctypes.CDLL('libc.so.6')
except OSError: _libc = None

def rss_follows_allocations():
    "Make glibc map every buffer above 64 KiB by itself and trim its heap eagerly (in the memory child only)"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if _libc is not None: _libc.mallopt(M_MMAP_THRESHOLD, 64*1024); _libc.mallopt(M_TRIM_THRESHOLD, 128*1024)

def peak_extra(fn, dev):
    "Peak extra bytes of one call of `fn` on `dev`"
    gc.collect()
    if dev.type=='cuda':
        sync(dev); torch.cuda.reset_peak_memory_stats(dev); base = torch.cuda.memory_allocated(dev)
        out = fn(); sync(dev)
        res = torch.cuda.max_memory_allocated(dev)-base
        del out; return res
    if _libc is not None: _libc.malloc_trim(0)
    with PeakRSS() as p: out = fn()
    del out
    return p.extra

# ----------------------------------------------------------------------------------------------------------------
# Sanity check: the peers compute the same Grad-CAM. pytorch-grad-cam ReLUs, min-max scales, resizes to the input
# with cv2 (bilinear, pixel centres) and min-max scales again; we do the same to the others' layer4 maps.
def _as_pgc(maps, size):
    m = torch.as_tensor(maps).float().reshape(len(maps), 1, *maps.shape[-2:]).relu()
    def mm(t):
        t = t - t.amin((-2,-1), keepdim=True)
        return t / (1e-7 + t.amax((-2,-1), keepdim=True))
    return mm(F.interpolate(mm(m), size=size, mode='bilinear', align_corners=False))[:,0]

def sanity(model, xb, tl, calls):
    if 'pytorch-grad-cam' not in calls: return "sanity check skipped: pytorch-grad-cam is not installed"
    ref = torch.as_tensor(calls['pytorch-grad-cam']()); cleanup(model, 'pytorch-grad-cam')
    res = cam(model, xb, target=tl)
    if res.layer!='layer4': raise RuntimeError(f"fastcam picked layer {res.layer!r}, expected 'layer4'")
    cleanup(model, 'fastcam')
    diffs = []
    for name in ['fastcam', 'torchcam', 'captum']:
        if name not in calls: continue
        maps = calls[name]().detach().cpu(); cleanup(model, name)
        d = (_as_pgc(maps, ref.shape[-2:]) - ref).abs().max().item()
        diffs.append(f"{name} {d:.1e}")
    return ("sanity check (first row): max |map - pytorch-grad-cam map| after the same ReLU, min-max, resize to "
            f"{tuple(ref.shape[-2:])}, min-max: " + ", ".join(diffs))

# ----------------------------------------------------------------------------------------------------------------
def _round_order(names, r):
    "Round `r`'s order of `names`: a shuffle seeded by `r`, so that no method always runs right after the same one (a slow peer warms caches and clocks for the next call)"
    return random.Random(r).sample(list(names), len(names))

def time_row(model, dev, calls, n_warm, reps, deadline=None, min_reps=3):
    """Warm up, then time in interleaved rounds. `reps[name]` is how many timed calls `name` gets; a method stops
    taking part once it has had them. Past `deadline` (a `perf_counter` time), timing stops at the end of the
    first round by which every method has had `min_reps` calls."""
    names = list(calls)
    for r in range(n_warm):
        for name in _round_order(names, r): calls[name](); cleanup(model, name)
    times = {n:[] for n in names}
    for r in range(max(reps.values())):
        if deadline is not None and r>=min_reps and time.perf_counter()>deadline: break
        for name in _round_order(names, r):
            if r < reps[name]: times[name].append(timed(calls[name], dev)); cleanup(model, name)
    return ({n:statistics.median(v) for n,v in times.items()}, {n:min(v) for n,v in times.items()},
            {n:len(v) for n,v in times.items()})

def mem_row(model, dev, calls, n_mem, names=None):
    "Median peak extra memory of each method (of `names`, default all) over `n_mem` interleaved rounds"
    names = list(names or calls)
    mem = {n:[] for n in names}
    for r in range(n_mem):
        for name in _round_order(names, r): mem[name].append(peak_extra(calls[name], dev)); cleanup(model, name)
    return {n:statistics.median(v) for n,v in mem.items()}

GFLOPS = {'resnet18':1.8, 'resnet34':3.7, 'resnet50':4.1, 'resnet101':7.8, 'resnet152':11.6}

def plan(quick):
    """`(warm, mem, reps)`: the median of `reps[method]` timed calls after `warm` untimed warm-up rounds; apart from
    the timing, the median peak memory of `mem` rounds. --quick keeps `python bench/gradcam.py --quick` well within
    3 minutes on 2 CPU cores (about a minute on an idle machine: resnet50 at batch 8 takes ~0.4 s a forward there
    and pytorch-grad-cam, with its full backward, ~3.5x that, so it gets fewer calls)."""
    if not quick: return 2, 3, {n:15 for n in METHODS}
    return 1, 1, {n:(5 if n=='pytorch-grad-cam' else 7) for n in METHODS}

def _threads():
    n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(n)
    return n

class Setups:
    "The model (built once per device and name, seeded) and a row's batch, targets and calls"
    def __init__(self): self.nets = {}
    def __call__(self, dev, name, bs):
        if (dev, name) not in self.nets:
            seed_everything(0)
            self.nets[dev, name] = getattr(torchvision.models, name)(weights=None, num_classes=1000).eval().to(dev)
        model = self.nets[dev, name]
        seed_everything(bs)
        xb = torch.randn(bs, 3, 224, 224, device=dev)
        with torch.no_grad(): tl = model(xb).argmax(1).tolist()     # the targets, for every method
        return model, xb, tl, make_calls(model, xb, tl)

def memory_child(quick, models, bss, seconds=float('inf')):
    """Run in a child process: print, as JSON, the peak extra CPU memory of every method for every row. First the
    forward and fastcam for every row, then the peers, row by row, while `seconds` last (--quick on a busy machine
    may leave some peers out; they show as '-')."""
    rss_follows_allocations()   # first thing, before the heap grows
    _threads()
    t_end = T0 + seconds
    setup, cpu, n_mem = Setups(), torch.device('cpu'), plan(quick)[1]
    cfgs = [(name, bs) for name in models for bs in bss]
    res = []
    # Warm-up: a method's first call in a process allocates a few MB for good, so every method is called once on
    # the first row; then the forward and fastcam (its probe) once on each row. Measured, a further warm-up of the
    # peers on each row changes their numbers by less than 1%.
    for i,(name, bs) in enumerate(cfgs):
        model, xb, tl, calls = setup(cpu, name, bs)
        for k in (calls if i==0 else ['forward', 'fastcam']): calls[k](); cleanup(model, k)
        res.append(mem_row(model, cpu, calls, n_mem, ['forward', 'fastcam']))
    for (name, bs), r in zip(cfgs, res):
        if time.perf_counter() > t_end: break
        model, xb, tl, calls = setup(cpu, name, bs)
        r.update(mem_row(model, cpu, calls, n_mem, [k for k in calls if k in PEERS]))
    print('MEMORY ' + json.dumps(res))

def cpu_memory(quick, models, bss, seconds=float('inf')):
    "The peak extra CPU memory of every row, from a child process (see above)"
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-child', '--models', ','.join(models),
           '--bs', ','.join(map(str, bss)), '--budget', str(seconds)] + (['--quick'] if quick else [])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(p.stdout.split('MEMORY ', 1)[1])

def main(quick=False, out=None, models=('resnet18','resnet50'), bss=(1,8), budget=150.):
    n_cpu = _threads()
    devs = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    n_warm, n_mem, reps = plan(quick)
    # --quick also has a time budget, so that a busy machine cannot push it far past 3 minutes: the timing has 60%
    # of `budget` seconds, each row a share in proportion to its rough cost (plus the slack of the rows before it);
    # a row that runs out of time stops after 3 timed calls per method (the reps column says how many it got). The
    # memory child then measures the forward and fastcam on every row, and the peers while the budget lasts.
    cfgs = [(dev, name, bs) for dev in devs for name in models for bs in bss]
    cost = [bs*GFLOPS.get(name, 4.)+4 for dev,name,bs in cfgs]
    t_start = T0
    deadlines = [t_start + .6*budget*sum(cost[:i+1])/sum(cost) if quick else None for i in range(len(cfgs))]
    setup, rows, sanity_line = Setups(), [], None
    for (dev, name, bs), deadline in zip(cfgs, deadlines):
        model, xb, tl, calls = setup(dev, name, bs)
        if sanity_line is None: sanity_line = sanity(model, xb, tl, calls)
        t0 = time.perf_counter()
        med, mn, n = time_row(model, dev, calls, n_warm, {k:reps[k] for k in calls}, deadline)
        row = dict(model=name, bs=bs, dev=dev.type, med=med, min=mn, n=n)
        if dev.type=='cuda': row['mem'] = mem_row(model, dev, calls, n_mem)
        rows.append(row)
        print(f"  {name} bs {bs} {dev.type}: forward {med['forward']*1e3:.1f} ms, fastcam "
              f"{med['fastcam']/med['forward']:.2f}x  ({time.perf_counter()-t0:.0f} s)", file=sys.stderr, flush=True)
    del setup
    t0 = time.perf_counter()
    left = budget-(time.perf_counter()-t_start) if quick else float('inf')
    for row, mem in zip([r for r in rows if r['dev']=='cpu'], cpu_memory(quick, models, bss, left)): row['mem'] = mem
    print(f"  cpu memory ({time.perf_counter()-t0:.0f} s)", file=sys.stderr, flush=True)
    md = report(rows, sanity_line, quick, n_cpu, time.perf_counter()-t_start)
    print(md)
    if out:
        with open(out, 'w') as f: f.write(md+'\n')

def _x(r, name, stat='med'):
    if name not in r[stat]: return 'n/a'
    return f"{r[stat][name]/r[stat]['forward']:.2f}"

def _verdict(r):
    x = r['med']['fastcam']/r['med']['forward']
    slower = [p for p in PEERS if p in r['med'] and r['med'][p] <= r['med']['fastcam']]
    bad = ([f"{x:.2f}x > {MAX_X}x"] if r['bs']==TARGET_BS and x>MAX_X else []) + [f"not faster than {p}" for p in slower]
    return ('NO: ' + '; '.join(bad)) if bad else ('yes' if r['bs']==TARGET_BS else 'yes (peers only: 1.15x is for bs 8)')

def report(rows, sanity_line, quick, n_cpu, wall):
    MB = 2**20
    vers = ', '.join(f"{m} {_version(DIST[m])}" for m in ['fastcam']+PEERS)
    lines = [f"## fastcam Grad-CAM benchmark{' (--quick)' if quick else ''}", "",
             f"torch {torch.__version__}, torchvision {torchvision.__version__}, {vers}; "
             f"{platform.processor() or platform.machine()}, {n_cpu} CPU threads"
             + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "") + ".",
             "Random-weight torchvision models at 224 px, targets: each item's predicted class; layer4 for every method. "
             "Ratios are the median time of one call over the median time of a plain no-grad forward "
             "(lower is better; 1.00 = free). Memory: peak extra memory of one call over what was in use before it "
             "(CPU: RSS sampled every ~0.5 ms in a separate process whose glibc maps every buffer over 64 KiB by itself, "
             "an estimate; CUDA: max_memory_allocated).", "",
             f"**Target: {TARGET}.**", "",
             "| model | bs | device | forward ms | fastcam x | pytorch-grad-cam x | torchcam x | captum x "
             "| fastcam mem MB | forward mem MB | fastcam mem x | reps | meets target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fm, fw = r['mem']['fastcam'], r['mem']['forward']
        reps = '/'.join(str(r['n'][k]) for k in METHODS if k in r['n'])
        lines.append(f"| {r['model']} | {r['bs']} | {r['dev']} | {r['med']['forward']*1e3:.1f} | "
                     + " | ".join(_x(r, m) for m in ['fastcam']+PEERS)
                     + f" | {fm/MB:.1f} | {fw/MB:.1f} | {fm/fw if fw else float('nan'):.2f} | {reps} | {_verdict(r)} |")
    lines += ["", "Peak extra memory of one call, MB (and x the forward's; '-': not measured, --quick ran out of time):", "",
              "| model | bs | device | forward | " + " | ".join(['fastcam']+PEERS) + " |",
              "|---|---|---|---|" + "---|"*(1+len(PEERS))]
    for r in rows:
        fw = r['mem']['forward']
        cells = [((f"{r['mem'][m]/MB:.1f} ({r['mem'][m]/fw:.2f}x)" if fw else f"{r['mem'][m]/MB:.1f}")
                  if m in r['mem'] else '-' if AVAILABLE[m] else 'n/a') for m in ['fastcam']+PEERS]
        lines.append(f"| {r['model']} | {r['bs']} | {r['dev']} | {fw/MB:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "The same ratios from the fastest call of each method instead of the median (on a shared machine, "
              "load spikes hit single calls; the minimum shows the cost without them):", "",
              "| model | bs | device | forward min ms | " + " | ".join(f"{m} x" for m in ['fastcam']+PEERS) + " |",
              "|---|---|---|---|" + "---|"*(1+len(PEERS))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bs']} | {r['dev']} | {r['min']['forward']*1e3:.1f} | "
                     + " | ".join(_x(r, m, 'min') for m in ['fastcam']+PEERS) + " |")
    ok = all(_verdict(r).startswith('yes') for r in rows)
    lines += ["", "reps: timed calls of forward/fastcam/pytorch-grad-cam/torchcam/captum, after untimed warm-up "
              "rounds. 'meets target' is judged on the medians.",
              sanity_line or "", "",
              f"Target {'met on every row' if ok else 'NOT met on every row (see meets target)'}. "
              f"Total benchmark time {wall:.0f} s."]
    return '\n'.join(lines)

if __name__=='__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer repetitions (~3 minutes on 2 CPU cores)')
    ap.add_argument('--out', default=None, help='also write the markdown report to this file')
    ap.add_argument('--models', default='resnet18,resnet50', help='comma-separated torchvision models')
    ap.add_argument('--bs', default='1,8', help='comma-separated batch sizes')
    ap.add_argument('--budget', type=float, default=150., help='seconds that --quick aims to stay within')
    ap.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    models, bss = tuple(a.models.split(',')), tuple(int(b) for b in a.bs.split(','))
    if a.memory_child: memory_child(a.quick, models, bss, a.budget)
    else: main(a.quick, a.out, models, bss, a.budget)
