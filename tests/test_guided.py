"Guided Backprop against captum; Guided Grad-CAM against its definition."
import pytest, torch, torchvision
from torch import nn
from fastcam.guided import GuidedBackprop, guided_gradcam, to_grayscale
from fastcam.core import cam, upsample_maps
from test_safety import _hook_count, _state

def _captum_gb(model, xb, targets):
    from captum.attr import GuidedBackprop as CaptumGB
    out = CaptumGB(model).attribute(xb.clone().requires_grad_(), target=targets)
    model.zero_grad(set_to_none=True)
    return out.detach()

def _relus(model): return [(n, type(m), getattr(m, 'inplace', None)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]

def test_matches_captum_on_torchvision_resnet_with_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    xb, targets = torch.randn(3, 3, 64, 64), [3, 0, 1]
    relus = _relus(model)
    assert any(inplace for *_, inplace in relus)
    gb, t, _ = GuidedBackprop(model)(xb, target=targets)
    torch.testing.assert_close(gb[:, 0], _captum_gb(model, xb, targets), atol=1e-6, rtol=1e-4)
    assert _hook_count(model) == 0 and _relus(model) == relus
    assert all(p.grad is None for p in model.parameters())

def test_matches_captum_on_fastai_learner(learn, xb):
    model = learn.model.eval()
    xb = xb.as_subclass(torch.Tensor)[:4]
    gb, t, _ = GuidedBackprop(model)(xb)
    torch.testing.assert_close(gb[:, 0], _captum_gb(model, xb, t[:, 0].tolist()), atol=1e-6, rtol=1e-4)
    assert _hook_count(model) == 0

def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=4).eval()
    xb = torch.randn(2, 3, 64, 64)
    gc = cam(model, xb, target='all').maps.relu()
    t = [int(gc[i].flatten(1).amax(1).argmax()) for i in range(2)]    # a slot with a non-empty map, per item
    targets = cam(model, xb, target='all').targets[torch.arange(2), t].tolist()
    ggc = guided_gradcam(model, xb, target=targets)
    ref_gb = _captum_gb(model, xb, targets)
    gc = cam(model, xb, target=targets).maps[:, 0].relu()
    assert (gc.flatten(1).amax(1) > 0).all()
    up = torch.nn.functional.interpolate(gc[:, None], size=(64, 64), mode='bilinear', align_corners=False)
    torch.testing.assert_close(ggc[:, 0], ref_gb * up, atol=1e-6, rtol=1e-4)
    g = to_grayscale(ggc[:, 0])
    assert g.shape == (2, 64, 64) and g.min() == 0 and g.max() == 1

def test_matches_captum_for_every_target_slot():
    "Several slots: the graph is kept between the backwards, and each one is guided"
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=4).eval()
    xb = torch.randn(2, 3, 64, 64)
    gb, t, _ = GuidedBackprop(model)(xb, target='all')
    assert gb.shape == (2, 4, 3, 64, 64)
    for j in range(4): torch.testing.assert_close(gb[:, j], _captum_gb(model, xb, t[:, j].tolist()), atol=1e-6, rtol=1e-4)

def _nonempty_targets(model, xb):
    "Per item, a class whose Grad-CAM map is not all zero after ReLU"
    r = cam(model, xb, target='all')
    k = r.maps.relu().flatten(2).amax(2).argmax(1)
    return r.targets[torch.arange(len(xb)), k].tolist()

def test_guided_gradcam_does_not_guide_the_gradcam_part(learn, xb):
    "fastai's head has a ReLU after the body: Grad-CAM's gradient there must be the plain one, as in `cam`"
    model = learn.model.eval()
    xb = xb.as_subclass(torch.Tensor)[:4]
    assert any(isinstance(m, nn.ReLU) for m in model[1].modules())
    targets = _nonempty_targets(model, xb)
    gc = cam(model, xb, target=targets).maps[:, 0].relu()
    assert (gc.flatten(1).amax(1) > 0).all()
    up = torch.nn.functional.interpolate(gc[:, None], size=xb.shape[-2:], mode='bilinear', align_corners=False)
    ggc = guided_gradcam(model, xb, target=targets)
    torch.testing.assert_close(ggc[:, 0], _captum_gb(model, xb, targets) * up, atol=1e-6, rtol=1e-4)
    assert _hook_count(model) == 0 and all(p.grad is None for p in model.parameters())

def _mixed_model():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=4).train()
    model.layer1.eval()                         # mixed modes must come back exactly
    model.conv1.weight.requires_grad_(False)    # so must a frozen parameter
    return model

def _assert_as_found(model, before):
    assert _hook_count(model) == 0 and _state(model) == before and torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())

def test_one_forward_and_model_left_as_found():
    model = _mixed_model()
    before, xb, seen = _state(model), torch.randn(2, 3, 64, 64), []
    h = model.register_forward_pre_hook(lambda m, i: seen.append(len(i[0])))
    try:
        guided_gradcam(model, xb, layer='layer4', target='all')
        assert seen == [2]
        GuidedBackprop(model)(xb)
        assert seen == [2, 2]
    finally: h.remove()
    _assert_as_found(model, before)

@pytest.mark.parametrize('kw, exc, msg', [
    (dict(target=7), IndexError, 'out of range'),                 # after the forward, before any backward
    (dict(layer='fc'), ValueError, r'not a \[B,C,h,w\] map'),    # after the guided backward, in gather
    (dict(layer='nolayer'), ValueError, 'not a module'),          # before the forward
])
def test_state_restored_when_raising(kw, exc, msg):
    model = _mixed_model()
    before, xb = _state(model), torch.randn(2, 3, 64, 64)
    with pytest.raises(exc, match=msg): guided_gradcam(model, xb, **kw)
    _assert_as_found(model, before)
    if 'target' in kw:
        with pytest.raises(exc, match=msg): GuidedBackprop(model)(xb, **kw)
        _assert_as_found(model, before)
    ggc = guided_gradcam(model, xb)                                # and the next call works
    assert ggc.shape == (2, 1, 3, 64, 64) and torch.isfinite(ggc).all()

def test_state_restored_when_the_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__(); self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Linear(4, 2)
        def forward(self, x):
            x = self.relu(self.conv(x))
            if x.shape[0] == 3: raise RuntimeError('bad batch')
            return self.fc(x.mean((2, 3)))
    model = Boom().train()
    for f in (lambda xb: GuidedBackprop(model)(xb)[0], lambda xb: guided_gradcam(model, xb, layer='conv')):
        with pytest.raises(RuntimeError, match='bad batch'): f(torch.randn(3, 3, 8, 8))
        assert _hook_count(model) == 0 and model.training and model.conv.training and torch.is_grad_enabled()
        assert all(p.grad is None for p in model.parameters())
        assert f(torch.randn(2, 3, 8, 8)).shape[:2] == (2, 1)

def test_grad_mode_kept_under_no_grad():
    model = torchvision.models.resnet18(num_classes=3).eval()
    xb = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        gb = GuidedBackprop(model)(xb)[0]
        ggc = guided_gradcam(model, xb)
        assert not torch.is_grad_enabled()
    assert gb.abs().sum() > 0 and ggc.abs().sum() > 0 and not ggc.requires_grad

def test_resolved_targets_with_padding_are_used_as_given():
    "guided_gradcam hands its resolved targets to `gather` as they are: a padding slot (-1) stays padding, not class -1 (the last one)"
    from fastcam.core import CamSession, cam_result
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=4).eval()
    xb = torch.randn(2, 3, 64, 64)
    t = torch.tensor([[1, -1], [2, 0]])
    with CamSession(model, ['layer4'], xb=xb) as s:
        probs, (g,) = s.gather(model(xb), xb=xb, multi_label=True, targets=t)
    assert g.targets.tolist() == t.tolist()
    maps = cam_result('gradcam', g, probs).maps
    assert (maps[0, 1] == 0).all() and maps[1, 1].abs().sum() > 0
    torch.testing.assert_close(maps[1, 1], cam(model, xb[1:], layer='layer4', target=0, multi_label=True).maps[0, 0], atol=1e-5, rtol=1e-4)
    ggc = guided_gradcam(model, xb, layer='layer4', target=[[1, 3], [2, 0]], multi_label=True)
    ref = torch.stack([_captum_gb(model, xb, [1, 2]), _captum_gb(model, xb, [3, 0])], 1)
    up = upsample_maps(cam(model, xb, layer='layer4', target=[[1, 3], [2, 0]], multi_label=True).maps.relu(), (64, 64))
    torch.testing.assert_close(ggc, ref * up[:, :, None], atol=1e-6, rtol=1e-4)
