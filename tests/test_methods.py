"Every CAM method against pytorch-grad-cam's implementation of the same name (or an independent formula)."
import numpy as np, pytest, torch, torchvision
from fastcam.core import cam, normalize_maps, upsample_maps
from fastcam.methods import methods

def _pgc_style(maps, size):
    "pytorch-grad-cam's post-processing: ReLU, min-max, resize to the input, min-max again"
    return normalize_maps(upsample_maps(normalize_maps(maps), size), relu=False)

def _pgc(cls_name, model, layer, xb, targets, **kw):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with getattr(pgc, cls_name)(model=model, target_layers=[layer], **kw) as c:
        if hasattr(c, 'batch_size'): c.batch_size = 64
        out = c(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in targets])
    model.zero_grad(set_to_none=True)
    return out

@pytest.fixture(scope='module')
def rn():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()

PEERS = {'gradcam': 'GradCAM', 'gradcampp': 'GradCAMPlusPlus', 'xgradcam': 'XGradCAM', 'hirescam': 'HiResCAM', 'layercam': 'LayerCAM'}

@pytest.mark.parametrize('layer', ['layer4', 'layer2'])
@pytest.mark.parametrize('method', list(PEERS))
def test_gradient_methods_match_pytorch_grad_cam(rn, method, layer):
    torch.manual_seed(1)
    xb, targets = torch.randn(4, 3, 96, 96), [4, 0, 2, 1]
    ours = _pgc_style(cam(rn, xb, layer=layer, target=targets, method=method).maps, (96, 96))[:, 0].numpy()
    ref = _pgc(PEERS[method], rn, getattr(rn, layer), xb, targets)
    np.testing.assert_allclose(ours, ref, atol=2e-3)

@pytest.mark.parametrize('layer', ['layer4', 'layer2'])
def test_scorecam_matches_pytorch_grad_cam(rn, layer):
    torch.manual_seed(2)
    xb, targets = torch.randn(2, 3, 48, 48), [3, 1]
    ours = _pgc_style(cam(rn, xb, layer=layer, target=targets, method='scorecam', progress=False).maps, (48, 48))[:, 0].numpy()
    ref = _pgc('ScoreCAM', rn, getattr(rn, layer), xb, targets)
    np.testing.assert_allclose(ours, ref, atol=2e-3)

@pytest.mark.parametrize('layer', ['layer4', 'layer2'])
def test_eigencam_is_pytorch_grad_cams_projection_with_a_fixed_sign(rn, layer):
    "Deliberate difference: pytorch-grad-cam leaves the SVD's sign arbitrary; fastcam orients the map to correlate with the mean activation"
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    torch.manual_seed(3)
    xb = torch.randn(4, 3, 96, 96)
    r = cam(rn, xb, layer=layer, target='all', method='eigencam')
    acts = {}
    h = getattr(rn, layer).register_forward_hook(lambda m, i, o: acts.setdefault('a', o.detach().clone()))
    with torch.no_grad(): rn(xb)
    h.remove()
    ref = torch.from_numpy(get_2d_projection(acts['a'].numpy()))
    for i in range(4):
        m = r.maps[i, 0]
        sign = 1 if torch.allclose(m, ref[i], atol=1e-3, rtol=1e-3) else -1
        torch.testing.assert_close(m, sign * ref[i], atol=1e-3, rtol=1e-3)
        mean_act = acts['a'][i].mean(0)
        assert float(((m - m.mean()) * (mean_act - mean_act.mean())).sum()) >= 0
        assert all(torch.equal(r.maps[i, 0], r.maps[i, j]) for j in range(5))   # class-independent

def test_every_method_runs_on_a_fastai_learner(learn, xb):
    for name in methods:
        kw = dict(progress=False, batch_size=256) if name == 'scorecam' else {}
        if name == 'cam': continue   # the default fastai head is not GAP-then-linear; see test_engine
        r = learn.cam(xb[:2], method=name, target='all', **kw)
        assert r.maps.shape[:2] == (2, 3) and torch.isfinite(r.maps).all(), name
        assert all(p.grad is None for p in learn.model.parameters()), name

@pytest.mark.parametrize('method', ['gradcam', 'layercam', 'eigencam'])
def test_several_layers_from_one_call_equal_single_layer_calls(rn, method):
    torch.manual_seed(4)
    xb = torch.randn(3, 3, 96, 96)
    names = ['layer1', 'layer2', 'layer3', 'layer4']
    calls = []
    h = rn.register_forward_hook(lambda *a: calls.append(1))
    try: multi = cam(rn, xb, layer=names, target='all', method=method)
    finally: h.remove()
    assert len(calls) == 1                       # one forward for all four layers
    assert list(multi) == names + ['fused']
    for n in names:
        single = cam(rn, xb, layer=n, target='all', method=method)
        torch.testing.assert_close(multi[n].maps, single.maps, atol=1e-5, rtol=1e-4)
    # fused: mean of the ReLU'd, min-max scaled maps, bilinearly upsampled to layer1's 24x24
    ups = []
    for n in names:
        m = multi[n].maps.relu()
        lo, hi = m.amin((-2, -1), keepdim=True), m.amax((-2, -1), keepdim=True)
        m = torch.where(hi > lo, (m - lo) / (hi - lo), torch.zeros_like(m))
        ups.append(torch.nn.functional.interpolate(m, size=(24, 24), mode='bilinear', align_corners=False))
    torch.testing.assert_close(multi['fused'].maps, torch.stack(ups).mean(0), atol=1e-5, rtol=1e-4)

def test_index_path_is_one_layer_and_learner_items_span_batches(learn, dls):
    r = learn.cam(dls.valid_ds.items[:10], layer=[[0, 5], [0, 6], [0, -1]], bs=4)
    assert list(r) == ['0.5', '0.6', '0.7', 'fused'] and len(r['fused']) == 10
    single = learn.cam(dls.valid_ds.items[:10], layer=[0, 6], bs=4)
    torch.testing.assert_close(r['0.6'].maps, single.maps, atol=1e-5, rtol=1e-4)
