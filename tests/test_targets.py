"Targets beyond classes: score functions f(output) -> [B], regression heads (increase / decrease), models with several outputs."
import numpy as np, pytest, torch, torchvision
from torch import nn
from fastcam.core import cam, normalize_maps, upsample_maps

@pytest.fixture(scope='module')
def rn():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()

@pytest.mark.parametrize('method', ['gradcam', 'hirescam', 'xgradcam'])
def test_margin_map_is_the_difference_of_two_class_maps(rn, method):
    "These maps are linear in the score's gradient: the margin o[:,2]-o[:,0] gives class 2's map minus class 0's"
    xb = torch.randn(4, 3, 64, 64)
    diff = cam(rn, xb, target=2, method=method).maps - cam(rn, xb, target=0, method=method).maps
    r = cam(rn, xb, target=lambda o: o[:, 2] - o[:, 0], method=method)
    torch.testing.assert_close(r.maps, diff, atol=1e-5, rtol=1e-4)
    assert r.target_names == [['score']] * 4 and r.probs.isnan().all()   # a score has a name, and no probability

def _pgc(cls_name, model, layer, xb, targets):
    import pytorch_grad_cam as pgc
    with getattr(pgc, cls_name)(model=model, target_layers=[layer]) as c:
        if hasattr(c, 'batch_size'): c.batch_size = 64
        out = c(input_tensor=xb, targets=targets)
    model.zero_grad(set_to_none=True)
    return out

def _pgc_style(maps, size): return normalize_maps(upsample_maps(normalize_maps(maps), size), relu=False)[:, 0].numpy()

@pytest.mark.parametrize('method, peer', [('gradcam', 'GradCAM'), ('scorecam', 'ScoreCAM')])
def test_score_functions_match_pytorch_grad_cams_callable_targets(rn, method, peer):
    "pytorch-grad-cam takes one callable per item, of that item's output"
    xb = torch.randn(2, 3, 48, 48)
    kw = {'progress': False} if method == 'scorecam' else {}
    ours = _pgc_style(cam(rn, xb, layer='layer3', target=lambda o: 0.7*o[:, 1] + 0.3*o[:, 4], method=method, **kw).maps, (48, 48))
    ref = _pgc(peer, rn, rn.layer3, xb, [lambda o: 0.7*o[..., 1] + 0.3*o[..., 4]] * 2)
    np.testing.assert_allclose(ours, ref, atol=2e-3)

class RegionMean(nn.Module):
    "A regression model: a 1x1 convolution, then the mean of its output over a known region"
    def __init__(self, region):
        super().__init__()
        self.region = region
        self.conv = nn.Conv2d(3, 4, 1)
    def forward(self, x):
        (y0, y1), (x0, x1) = self.region
        return self.conv(x)[:, :, y0:y1, x0:x1].mean((1, 2, 3))[:, None]

@pytest.mark.parametrize('method', ['hirescam', 'layercam', 'gradcam'])
def test_regression_map_lies_in_the_region_the_output_reads(method):
    torch.manual_seed(0)
    m = RegionMean(((4, 10), (12, 20))).eval()
    nn.init.uniform_(m.conv.weight, 0.1, 1.0); nn.init.zeros_(m.conv.bias)
    xb = torch.rand(3, 3, 24, 24) + 0.1   # positive inputs: positive activations
    inside = torch.zeros(24, 24, dtype=torch.bool); inside[4:10, 12:20] = True
    up = cam(m, xb, layer='conv', target='increase', method=method).maps[:, 0]
    down = cam(m, xb, layer='conv', target='decrease', method=method).maps[:, 0]
    if method == 'gradcam':
        # Grad-CAM weights whole channels by their mean gradient: it can only say the channels matter, everywhere
        assert (up > 0).all() and torch.allclose(down, -up)
        return
    assert (up[:, inside] > 0).all() and (up[:, ~inside] == 0).all()
    assert method == 'layercam' and (down == 0).all() or torch.allclose(down, -up)   # LayerCAM keeps positive gradients only

def test_regression_learner_explains_increase_by_default(dls):
    "A fastai learner trained with a regression loss: target None means 'increase', and the one map is named so"
    from fastai.vision.all import vision_learner, resnet18, MSELossFlat
    torch.manual_seed(0)
    learn = vision_learner(dls, resnet18, pretrained=False, n_out=1, loss_func=MSELossFlat())
    xb = dls.valid.one_batch()[0]
    r = learn.cam(xb)
    torch.testing.assert_close(r.maps, cam(learn.model, xb, target=lambda o: o[:, 0]).maps)
    assert r.target_names[0] == ['increase']
    torch.testing.assert_close(learn.cam(xb, target='decrease').maps, -r.maps)

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.a, self.b = nn.Linear(512, 3), nn.Linear(512, 4)
    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return self.a(f), self.b(f)

class Only(nn.Module):
    def __init__(self, m, i): super().__init__(); self.m, self.i = m, i
    def forward(self, x): return self.m(x)[self.i]

def test_chosen_head_of_a_multi_output_model():
    m = TwoHeads().eval()
    xb = torch.randn(2, 3, 64, 64)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    for i in (0, 1):
        ours = _pgc_style(cam(m, xb, layer='body.7', target=[2, 1], output=i).maps, (64, 64))
        ref = _pgc('GradCAM', Only(m, i), m.body[7], xb, [ClassifierOutputTarget(2), ClassifierOutputTarget(1)])
        np.testing.assert_allclose(ours, ref, atol=2e-3)
    with pytest.raises(ValueError, match=r"^output=2: the model returns a tuple of 2 outputs; pass one of positions 0..1$"):
        cam(m, xb, layer='body.7', output=2)

@pytest.mark.parametrize('target, msg', [
    (lambda o: o, r"^target 'score' returned \(2, 5\) for an output of shape \(2, 5\); a target function must return one score per item, a tensor \[B\]$"),
    ('increase', r"^target 'increase' explains a model with one output per item, but it outputs \(2, 5\); pass a function"),
])
def test_bad_score_targets_are_one_line(rn, target, msg):
    with pytest.raises(ValueError, match=msg): cam(rn, torch.randn(2, 3, 32, 32), target=target)
    with pytest.raises(ValueError, match=r"^CAM weights a class's linear head, but target 'score' is a score function; use method='gradcam'$"):
        cam(rn, torch.randn(2, 3, 32, 32), target=lambda o: o[:, 0], method='cam')
