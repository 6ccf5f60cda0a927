"Discoverability (issue 14 item 9): layer_summary, a short CamResult repr for big batches, help() that lists parameters and their meanings."
import inspect, pydoc, torch
from torch import nn
from fastai.vision.all import Learner
import fastcam.boxes  # documents CamResult.boxes
from fastcam.core import CamResult, layer_summary, find_layer, auto_layer, trace_modules
from fastcam.cli import tiny_xresnet

def test_layer_summary_paths_names_shapes_and_marks():
    model = nn.Sequential(tiny_xresnet(n_out=3))
    df = layer_summary(model, size=64)
    names = [n for n, _ in model.named_modules() if n]
    assert df.name.tolist() == names                                   # every module, in the model's order
    xb = torch.zeros(1, 3, 64, 64)
    for r in df.itertuples():                                           # each index path finds its module
        assert find_layer(model, [int(i) for i in r.path.split(',')])[0] == r.name
    with torch.no_grad():                                               # output shapes from a hook of our own
        outs = {}
        hs = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, list(o.shape))) for n, m in model.named_modules() if n]
        model.eval()(xb); [h.remove() for h in hs]
    for r in df.itertuples():
        assert r.output == outs[r.name], r.name
        assert r.map == (f"{outs[r.name][2]}x{outs[r.name][3]}" if len(outs[r.name]) == 4 and max(outs[r.name][2:]) > 1 else '')
    assert df.name[df.cam == 'auto'].tolist() == [auto_layer(model, xb)]
    assert (df.cam == 'cam').sum() >= 4 and all(len(o) == 4 for o in df.output[df.cam != ''])

def test_repr_is_short_for_big_batches():
    r = CamResult(torch.zeros(5000, 1, 7, 7), torch.cat([torch.zeros(3000, 1), torch.ones(2000, 1)]).long(), torch.rand(5000, 2), ['cat', 'dog'], '0.7', 'gradcam')
    s = repr(r)
    assert len(s) < 200 and '\n' not in s and "'cat' x3000" in s and "'dog' x2000" in s and '5000' in s
    assert "targets=[['dog']]" in repr(r[4000])                          # small batches still list their targets

def test_help_shows_parameters_and_meanings():
    cam_doc = pydoc.render_doc(Learner.cam, renderer=pydoc.plaintext)
    for p in ('layer: ', 'target: ', 'method: ', 'tta: ', 'bs: ', "'gradcampp'", 'layer_summary'): assert p in cam_doc, p
    box_doc = pydoc.render_doc(CamResult.boxes, renderer=pydoc.plaintext)
    for p in ("threshold: For 'threshold', 'gradient' and 'segment': fraction of the maximum", 'grad_threshold: ', 'min_area: ', 'topk: ', 'geometry: '): assert p in box_doc, p
    sig = inspect.signature(CamResult.boxes).parameters
    from fastcam.tune import default_recipe, mode_thresholds
    assert sig['threshold'].default is None and default_recipe['threshold'] == mode_thresholds[default_recipe['mode']] and sig['min_area'].default == 16 and 'kwargs' not in sig
    own = ', '.join(f"{mode_thresholds[m]:g} for '{m}'" for m in ('threshold', 'gradient', 'segment'))
    assert f"None: the mode's own (`fastcam.tune.mode_thresholds`: {own})" in box_doc   # the doc says the thresholds the code uses
