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

# --- The metrics and Guided Backprop take the same targets as `cam` ---------------------------------------------------

def _tiny(seed=0, n=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n)).eval()

def _hand_deletion(f, x, m, n_steps):
    "One image, one forward per step: the first k*HW//n_steps pixels by decreasing map value (stable) set to 0, the score f of each"
    C, H, W = x.shape
    order = torch.from_numpy(np.argsort(-m.numpy().ravel(), kind='stable').copy())
    res = []
    for k in range(n_steps + 1):
        img = x.clone().reshape(C, -1)
        img[:, order[:k*H*W//n_steps]] = 0
        with torch.no_grad(): res.append(f(img.reshape(1, C, H, W)).item())
    return np.array(res)

def test_deletion_curve_of_a_score_function_is_the_hand_loop():
    "targets=f: the curve is f of the model's output on each perturbed input, as a hand loop computes it"
    from fastcam.metrics import perturbation_curves, deletion_auc, curve_auc
    model = _tiny(0)
    torch.manual_seed(1)
    x, maps = torch.randn(3, 3, 12, 10), torch.rand(3, 12, 10)
    margin = lambda o: o[:, 1] - o[:, 0]
    f, p = perturbation_curves(model, x, maps, margin, n_steps=6, batch_size=5, progress=False)
    for b in range(3): np.testing.assert_allclose(p[b].numpy(), _hand_deletion(lambda t: margin(model(t)), x[b], maps[b], 6), atol=1e-5)
    assert deletion_auc(model, x, maps, margin, n_steps=6, progress=False) == pytest.approx(curve_auc(f, p).mean().item())
    # the margin of a two-class softmax through a sigmoid is class 1's probability: the class curve
    _, ps = perturbation_curves(model, x, maps, margin, n_steps=6, activation='sigmoid', progress=False)
    _, pc = perturbation_curves(model, x, maps, torch.ones(3, dtype=torch.long), n_steps=6, progress=False)
    torch.testing.assert_close(ps, pc, atol=1e-6, rtol=1e-5)

def test_average_drop_of_a_score_is_the_hand_formula():
    "target=lambda o: o[:, k], no activation: 100 max(0, Y-O)/Y of the raw logit where Y > 0, NaN (left out of the mean) where it is not"
    from fastcam.metrics import average_drop_increase
    model = _tiny(2, n=4)
    torch.manual_seed(3)
    x, maps = torch.randn(6, 3, 16, 16), torch.rand(6, 16, 16)
    k = 2
    with torch.no_grad(): Y, O = model(x)[:, k].double(), model(x*maps[:, None])[:, k].double()
    assert (Y > 0).any() and (Y <= 0).any()    # both cases are exercised
    d, i = average_drop_increase(model, x, maps, lambda o: o[:, k], reduce=False)
    exp = torch.where(Y > 0, 100*(Y - O).clamp(min=0)/Y, torch.full_like(Y, float('nan')))
    torch.testing.assert_close(d, exp, equal_nan=True, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(i, 100*(Y < O).double())
    dm, im = average_drop_increase(model, x, maps, lambda o: o[:, k])
    assert dm == pytest.approx(exp[Y > 0].mean().item(), abs=1e-4) and im == pytest.approx(i.mean().item())
    # with activation='sigmoid' the score becomes a probability: the formula on sigmoid(score), defined for every item
    ds, _ = average_drop_increase(model, x, maps, lambda o: o[:, k], activation='sigmoid', reduce=False)
    torch.testing.assert_close(ds, 100*(Y.sigmoid() - O.sigmoid()).clamp(min=0)/Y.sigmoid(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"^average drop of target 'score' is undefined: its score is not positive on any item"):
        average_drop_increase(model, x, maps, lambda o: -o[:, k].abs())
    with pytest.raises(ValueError, match=r"^activation='softmax' with a score target: a score is one number per item"):
        average_drop_increase(model, x, maps, lambda o: o[:, k], activation='softmax')
    with pytest.raises(ValueError, match=r"^target 'score' is one score per item, but maps has 2 per item"):
        average_drop_increase(model, x, torch.rand(6, 2, 16, 16), lambda o: o[:, k])

def test_regression_deletion_falls_when_the_region_it_reads_goes_first():
    "A model whose output is the mean of a known region: deleting that region first takes the output to 0 at once; deleting it last keeps it"
    from fastcam.metrics import perturbation_curves, deletion_auc
    torch.manual_seed(0)
    m = RegionMean(((4, 10), (12, 20))).eval()
    nn.init.uniform_(m.conv.weight, 0.1, 1.0); nn.init.zeros_(m.conv.bias)
    xb = torch.rand(2, 3, 24, 24) + 0.1
    inside = torch.zeros(24, 24); inside[4:10, 12:20] = 1
    ramp = torch.linspace(0, 0.01, 24*24).reshape(24, 24)          # no ties
    first, last = (inside + ramp).expand(2, 24, 24), (1 - inside + ramp).expand(2, 24, 24)
    f, p = perturbation_curves(m, xb, first, 'increase', n_steps=12, progress=False)
    with torch.no_grad(): y = m(xb)[:, 0]
    torch.testing.assert_close(p[:, 0].float(), y)
    gone = f >= 48/576                                              # the region's 48 pixels are deleted from the first step on
    assert (p[:, gone] == 0).all() and (p[:, 0] > 0).all()
    _, q = perturbation_curves(m, xb, last, 'increase', n_steps=12, progress=False)
    assert (q[:, f <= 1 - 48/576] == p[:, :1]).all()              # deleted last: the output holds until the region goes
    # the map the engine makes for 'increase' lies in the region, so its deletion AUC is the low one
    hires = cam(m, xb, layer='conv', target='increase', method='hirescam').upsampled()[:, 0]
    a = deletion_auc(m, xb, hires, 'increase', n_steps=12, progress=False)
    assert a < 0.2*deletion_auc(m, xb, last, 'increase', n_steps=12, progress=False)
    assert deletion_auc(m, xb, first, 'decrease', n_steps=12, progress=False) == pytest.approx(-deletion_auc(m, xb, first, 'increase', n_steps=12, progress=False))

def test_metrics_take_the_chosen_output_of_a_multi_output_model():
    "output=i: every metric equals the same metric of the model that returns only output i"
    from fastcam.metrics import average_drop_increase, perturbation_curves, road
    m = TinyTwoHeads().eval()
    x, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32)
    for i, t in ((0, [2, 1]), (1, [3, 0])):
        assert average_drop_increase(m, x, maps, t, output=i) == average_drop_increase(Only(m, i), x, maps, t)
        torch.testing.assert_close(perturbation_curves(m, x, maps, t, n_steps=4, output=i, progress=False)[1],
                                   perturbation_curves(Only(m, i), x, maps, t, n_steps=4, progress=False)[1])
    f = lambda o: o[:, 3] - o[:, 0]
    torch.testing.assert_close(road(m, x, maps, f, fractions=(.2, .6), noise=0., output=1, reduce=False, progress=False),
                               road(Only(m, 1), x, maps, f, fractions=(.2, .6), noise=0., reduce=False, progress=False))
    with pytest.raises(ValueError, match=r"^output=2: the model returns a tuple of 2 outputs; pass one of positions 0..1$"):
        average_drop_increase(m, x, maps, output=2)

def test_guided_backprop_of_a_logit_function_is_that_class_s():
    "Guided Backprop of f = logit k is Guided Backprop of class k; a margin, through the clamping, is not the difference of the two (not linear)"
    from fastcam.guided import GuidedBackprop, guided_gradcam
    rn = torchvision.models.resnet18(num_classes=3).eval()
    torch.manual_seed(0)
    xb = torch.randn(2, 3, 32, 32)
    gb = GuidedBackprop(rn)
    g2, t, p = gb(xb, target=2)
    gf, tf, pf = gb(xb, target=lambda o: o[:, 2])
    torch.testing.assert_close(gf, g2)
    assert tf.eq(0).all() and pf.isnan().all()      # a score: one slot, no probability
    torch.testing.assert_close(guided_gradcam(rn, xb, 'layer3', target=lambda o: o[:, 2]), guided_gradcam(rn, xb, 'layer3', target=2))
    # Guided Grad-CAM of a margin: the margin's Guided Backprop times the ReLU'd Grad-CAM of the margin (cam's)
    mg = lambda o: o[:, 2] - o[:, 0]
    up = upsample_maps(cam(rn, xb, layer='layer3', target=mg).maps.relu(), (32, 32))
    torch.testing.assert_close(guided_gradcam(rn, xb, 'layer3', target=mg), gb(xb, target=mg)[0] * up[:, :, None])
    assert sum(len(m._forward_hooks) for m in rn.modules()) == 0 and all(q.grad is None for q in rn.parameters())

def test_guided_backprop_of_a_chosen_output():
    from fastcam.guided import GuidedBackprop, guided_gradcam
    m = TinyTwoHeads().eval()
    xb = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(GuidedBackprop(m)(xb, target=[3, 1], output=1)[0], GuidedBackprop(Only(m, 1))(xb, target=[3, 1])[0])
    torch.testing.assert_close(guided_gradcam(m, xb, 'body.2', target=[3, 1], output=1), guided_gradcam(Only(m, 1), xb, 'm.body.2', target=[3, 1]))
    with pytest.raises(ValueError, match=r"^output='x': the model returns a tuple of 2 outputs"):
        GuidedBackprop(m)(xb, output='x')

class TinyTwoHeads(nn.Module):
    "Two heads (3 and `n_b` classes) on one small body: a model returning a tuple"
    def __init__(self, n_b=4, seed=4):
        super().__init__()
        self.body = _tiny(seed)[:4]
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, n_b)
    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return self.a(f), self.b(f)

def test_score_cam_scores_the_chosen_output():
    "Score-CAM runs the model again on masked inputs: it scores the output= head there too (a tuple output crashed it before)"
    m = TinyTwoHeads().eval()
    xb = torch.randn(2, 3, 32, 32)
    ours = cam(m, xb, layer='body.2', target=[3, 1], output=1, method='scorecam', progress=False).maps
    torch.testing.assert_close(ours, cam(Only(m, 1), xb, layer='m.body.2', target=[3, 1], method='scorecam', progress=False).maps)
    f = lambda o: o[:, 2] - o[:, 0]
    torch.testing.assert_close(cam(m, xb, layer='body.2', target=f, output=0, method='scorecam', progress=False).maps,
                               cam(Only(m, 0), xb, layer='m.body.2', target=f, method='scorecam', progress=False).maps)

def test_cli_output_reaches_the_engine(dls, tmp_path):
    "fastcam run --output 1: the saved maps are learn.cam(output=1)'s (not the first head's); a head the model lacks is refused up front in one line"
    import json
    from pathlib import Path
    from fastai.vision.all import Learner, CrossEntropyLossFlat
    from fastcore.script import CliError
    from fastcam.cli import run
    learn = Learner(dls, TinyTwoHeads(n_b=3, seed=5).eval(), loss_func=CrossEntropyLossFlat())   # two three-class heads
    learn.export(tmp_path/'two.pkl')
    files = list(dls.valid.items[:3])
    pkl, args, kw = str(tmp_path/'two.pkl'), [str(f) for f in files], dict(trust=True, device='cpu', save_maps=True, progress=False)
    ref, first = learn.cam(files, output=1), learn.cam(files)
    assert not torch.allclose(ref.maps, first.maps)
    out = tmp_path/'out'
    assert run(pkl, *args, out=str(out), output='1', stability=True, sanity=2, **kw) == 0
    for f, m in zip(files, ref.maps): np.testing.assert_allclose(np.load(next((out/'maps').glob(f'{f.stem}_*.npy'))), m.numpy(), atol=1e-5)
    recs = {Path(r['file']).name: r for r in map(json.loads, map(Path.read_text, (out/'records').glob('*.json')))}
    for f, p, t in zip(files, ref.probs, ref.targets[:, 0]): assert recs[f.name]['prob'] == pytest.approx(float(p[t]), abs=1e-5)   # the head's probability
    assert all('flip_corr' in r for r in recs.values()) and (out/'sanity.csv').is_file()
    assert json.loads((out/'run.json').read_text())['options']['output'] == 1
    with pytest.raises(CliError, match=r"^fastcam run: --output 2: output=2: the model returns a tuple of 2 outputs; pass one of positions 0\.\.1$"):
        run(pkl, *args, out=str(tmp_path/'bad'), output='2', **kw)
    with pytest.raises(CliError, match=r"^fastcam run: --confirm scores regions with the model's first output; it does not take --output 1"):
        run(pkl, *args, out=str(tmp_path/'bad'), output='1', confirm=True, **kw)

class Margin(nn.Module):
    "One logit: the margin f(m(x)) of a classifier (a binary head whose class 1 score is the margin)"
    def __init__(self, m, f): super().__init__(); self.m, self.f = m, f
    def forward(self, x): return self.f(self.m(x))[:, None]

def test_stability_and_sanity_take_score_targets():
    "stability of a score function equals stability of the model whose one logit is that score (class 1 of a binary head); sanity_check runs it (both refused a function before)"
    from fastcam.sanity import stability, sanity_check
    m, f = _tiny(0, n=3), (lambda o: o[:, 2] - o[:, 0])
    xb = torch.randn(3, 3, 32, 32)
    pd_ = stability(m, xb, layer='2', target=f)
    ref = stability(Margin(m, f).eval(), xb, layer='m.2', target=1)
    np.testing.assert_allclose(pd_[['flip_corr', 'shift_corr']].to_numpy(), ref[['flip_corr', 'shift_corr']].to_numpy(), atol=1e-5)
    sc = sanity_check(m, xb, layers=['2'], target=f, progress=False)
    assert len(sc) == len(sc.step.unique()) >= 2 and sc.summary().shape[0] == 1

def test_evaluate_cams_of_a_chosen_output(dls):
    "evaluate_cams(output=1) scores head 1 everywhere (maps, faithfulness, ROAD, sanity): the same table as for the model that returns only head 1"
    from fastai.vision.all import Learner, CrossEntropyLossFlat
    from fastcam.metrics import evaluate_cams
    m = TinyTwoHeads(n_b=3, seed=5).eval()
    files = list(dls.valid.items[:2])
    gt = {str(f): [[8, 8, 40, 40]] for f in files}
    ev = evaluate_cams(Learner(dls, m, loss_func=CrossEntropyLossFlat()), files, gt, output=1, extra=('road', 'sanity'))
    ref = evaluate_cams(Learner(dls, Only(m, 1), loss_func=CrossEntropyLossFlat()), files, gt, extra=('road', 'sanity'))
    first = evaluate_cams(Learner(dls, Only(m, 0), loss_func=CrossEntropyLossFlat()), files, gt)
    cols = ['pointing_game', 'max_box_acc', 'average_drop', 'increase_in_confidence', 'road', 'sanity_spearman']
    np.testing.assert_allclose(ev[cols].to_numpy(float), ref[cols].to_numpy(float), atol=1e-6)
    assert ev.average_drop[0] != pytest.approx(first.average_drop[0])

def test_fastcam_run_explains_a_regression_learner(image_folder, tmp_path):
    "fastcam run on a learner trained with a regression loss: maps of 'increase', boxes scored by their evidence alone (no probability, no gate); it crashed writing the COCO file"
    import json, pandas as pd
    from fastai.vision.all import DataBlock, ImageBlock, RegressionBlock, Resize, vision_learner, MSELossFlat, get_image_files
    from fastcam.cli import run, tiny_xresnet
    files = sorted(get_image_files(image_folder))[:12]
    dls = DataBlock((ImageBlock, RegressionBlock), get_items=lambda _: files, get_y=lambda f: float(f.stem.split('_')[-1]),
                    item_tfms=Resize(64)).dataloaders(image_folder, bs=4, num_workers=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, tiny_xresnet, pretrained=False, n_out=1, loss_func=MSELossFlat())
    learn.export(tmp_path/'reg.pkl')
    out = tmp_path/'out'
    assert run(str(tmp_path/'reg.pkl'), *map(str, files[:3]), out=str(out), trust=True, device='cpu', save_maps=True, progress=False) == 0
    ref = learn.cam(files[:3], target='increase')
    for f, m in zip(files[:3], ref.maps): np.testing.assert_allclose(np.load(next((out/'maps').glob(f'{f.stem}_*.npy'))), m.numpy(), atol=1e-5)
    def strict(p):   # what a strict JSON reader (JavaScript's JSON.parse, jq) accepts: no bare NaN
        return json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p.name} holds a bare {c}, which strict JSON readers refuse"))
    recs = [strict(p) for p in (out/'records').glob('*.json')] + [strict(out/'run.json')]
    assert len(recs) == 4 and all(r['prob'] is None and all(b['prob'] is None for b in r['boxes']) for r in recs[:3])   # no probability: null
    b = pd.read_csv(out/'boxes.csv')
    assert (b['class'] == 'increase').all() and b.prob.isna().all() and (b.reason.fillna('') == '').all()   # no probability: no gate
    assert ((b.score > 0) & (b.score <= 1)).all()                                                          # the box's share of the map's mass
    assert [c['name'] for c in json.loads((out/'boxes.coco.json').read_text())['categories']] == ['increase']
    html = (out/'report.html').read_text()
    assert 'explained <b>increase</b> n/a;' in html and 'nan' not in html.replace('data-p=\'nan\'', '')   # no probability is shown as such
    assert run(str(tmp_path/'reg.pkl'), *map(str, files[:3]), out=str(tmp_path/'down'), target='decrease', trust=True, device='cpu', save_maps=True, progress=False) == 0
    for f, m in zip(files[:3], ref.maps): np.testing.assert_allclose(np.load(next((tmp_path/'down'/'maps').glob(f'{f.stem}_*.npy'))), -m.numpy(), atol=1e-5)
    from fastcore.script import CliError
    with pytest.raises(CliError, match=r"^fastcam run: --confirm weighs regions by a class's probability, but this learner explains a score"):
        run(str(tmp_path/'reg.pkl'), *map(str, files[:3]), out=str(tmp_path/'c'), trust=True, device='cpu', confirm=True, progress=False)
    with pytest.raises(ValueError, match=r"^confirm=True weighs regions by the class's probability, but target 'increase' is a score with no probability"):
        ref.boxes(confirm=True)
