"`from fastcam.all import *` after `from fastai.vision.all import *`: the book's Hook(m) and fastai's Hook(m, hook_func) both work (issue 14 item 8)."
import torch
from torch import nn

def _namespace():
    ns = {}
    exec("from fastai.vision.all import *\nfrom fastcam.all import *", ns)
    return ns

def test_both_hook_signatures_after_star_imports():
    ns = _namespace()
    Hook, hook_outputs = ns['Hook'], ns['hook_outputs']
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.randn(2, 3, 9, 9)
    want = model[1](model[0](x)).detach()                        # the BatchNorm's output, before the inplace ReLU
    with Hook(model[1]) as h: model(x)                           # the fastai book / walkthrough 000 form
    torch.testing.assert_close(h.stored, want)
    with Hook(model[1], lambda m, i, o: o.amax((2, 3))) as h: model(x)   # fastai's form (its book's chapter 18 too)
    torch.testing.assert_close(h.stored, want.amax((2, 3)))
    assert isinstance(h, __import__('fastai.callback.hook', fromlist=['Hook']).Hook)
    with hook_outputs([model[0]]) as hs: model(x)                # fastai's helpers, which build fastai Hooks, are untouched
    torch.testing.assert_close(hs.stored[0], model[0](x).detach())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
