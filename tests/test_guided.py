"Guided Backprop against captum; Guided Grad-CAM against its definition."
import pytest, torch, torchvision
from torch import nn
from fastcam.guided import GuidedBackprop, guided_gradcam, to_grayscale
from fastcam.core import cam, upsample_maps
from test_safety import _hook_count

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
