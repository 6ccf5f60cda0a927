"After any fastcam call, raising or not: no hooks left, modes and requires_grad as before, no parameter .grad, flat memory."
import gc, pytest, torch, torchvision
from torch import nn
from fastcam.core import cam
from fastcam.hooks import Hook, HookBwd

def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, '_backward_pre_hooks', {})) for m in model.modules())

def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])

def _rss_mb():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024

def test_thousand_calls_leave_model_as_found():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    model.train()
    model.layer1.eval()                     # mixed modes must come back exactly
    model.conv1.weight.requires_grad_(False) # so must a frozen parameter
    before = _state(model)
    xb = torch.randn(2, 3, 64, 64)         # layer4 is 2x2 here (at 32 px it would be 1x1, and not the default layer)
    bad = [dict(target=7), dict(layer='nolayer'), dict(layer=[0, 99]), dict(layer='fc'), dict(target='cat'),
           dict(method='cam', layer='layer3')]
    rss = {}
    for i in range(1000):
        if i % 10 == 9:
            with pytest.raises((ValueError, IndexError)): cam(model, xb, **bad[(i // 10) % len(bad)])
        else:
            r = cam(model, xb, target='all' if i % 2 else None, method='cam' if i % 5 == 0 else 'gradcam', tta=i % 3 == 0)
            assert torch.isfinite(r.maps).all()
        if i in (100, 999): gc.collect(); rss[i] = _rss_mb()
    assert _hook_count(model) == 0
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()
    assert rss[999] - rss[100] < 30, f"memory grew by {rss[999] - rss[100]:.1f} MB between call 100 and 1000"

def test_state_restored_when_the_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__(); self.conv = nn.Conv2d(3, 4, 3); self.fc = nn.Linear(4, 2)
        def forward(self, x):
            x = self.conv(x)
            if x.shape[0] == 3: raise RuntimeError('bad batch')
            return self.fc(x.mean((2, 3)))
    model = Boom().train()
    with pytest.raises(RuntimeError, match='bad batch'): cam(model, torch.randn(3, 3, 8, 8), layer='conv')
    assert _hook_count(model) == 0 and model.training and model.conv.training and torch.is_grad_enabled()
    r = cam(model, torch.randn(2, 3, 8, 8), layer='conv')
    assert r.maps.shape == (2, 1, 6, 6)

def test_grad_mode_restored_under_no_grad():
    model = torchvision.models.resnet18(num_classes=2).eval()
    with torch.no_grad():
        r = cam(model, torch.randn(1, 3, 32, 32))
        assert not torch.is_grad_enabled()
    assert r.maps.abs().sum() > 0

@pytest.mark.parametrize('kw, exc, msg', [
    (dict(target='cat'), ValueError, "unknown class 'cat'"),
    (dict(target=5), IndexError, "target 5 is out of range"),
    (dict(layer=[0, 42]), IndexError, "index 0 is out of range|index 42 is out of range"),
    (dict(layer='fc'), ValueError, r"layer 'fc' outputs \(2, 3\), not a \[B,C,h,w\] map"),
    (dict(layer='layer9'), ValueError, "layer 'layer9' is not a module of the model"),
    (dict(method='gradcam+++'), ValueError, "unknown method 'gradcam\\+\\+\\+'"),
    (dict(target=[0, 1, 2]), ValueError, "target has 3 entries but the batch has 2 items"),
])
def test_bad_input_one_line_errors(kw, exc, msg):
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(exc, match=msg) as e: cam(model, torch.randn(2, 3, 32, 32), vocab=['a', 'b', 'c'], **kw)
    assert '\n' not in str(e.value)

def test_empty_batch_and_bad_input_type():
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match='empty batch'): cam(model, torch.randn(0, 3, 32, 32))
    with pytest.raises(ValueError, match='expected a tensor batch'): cam(model, [1, 2])

def test_learner_cam_restores_learner_state(learn, xb):
    learn.model.train()
    before = _state(learn.model)
    with pytest.raises(ValueError, match="unknown class 'dog'"): learn.cam(xb, target='dog')
    learn.cam(xb, target='all')
    with pytest.raises(ValueError, match="unknown class 'dog'"): learn.cam(xb, target='dog', tta=True)
    learn.cam(xb, target='all', tta=True, layer=[[0, -2], [0, -1]])
    assert _state(learn.model) == before and _hook_count(learn.model) == 0
    assert all(p.grad is None for p in learn.model.parameters())

def test_hookbwd_on_module_followed_by_inplace_relu():
    "torchvision's bn1 is followed by ReLU(inplace=True): HookBwd must still give d(out)/d(bn1 output)"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with HookBwd(model.bn1) as hg:
        with Hook(model.bn1) as h: out = model(x)
        out[0, 1].backward()
    model.zero_grad(set_to_none=True)
    # independent: rebuild the forward from bn1's output as a leaf, with no inplace step
    a = model.bn1(model.conv1(x)).detach().requires_grad_()
    y = torch.relu(a)
    y = model.maxpool(y)
    y = model.layer4(model.layer3(model.layer2(model.layer1(y))))
    model.fc(model.avgpool(y).flatten(1))[0, 1].backward()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(h.stored, a.detach())
    torch.testing.assert_close(hg.stored, a.grad)
    assert h.stored.min() < 0          # a copy: the inplace ReLU did not overwrite it
    assert _hook_count(model) == 0

def test_engine_on_a_layer_followed_by_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    r = cam(model, x, layer='bn1', target=[2, 0])
    for i, t in enumerate([2, 0]):
        a = model.bn1(model.conv1(x[i:i+1])).detach().requires_grad_()
        y = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(torch.relu(a))))))
        model.fc(model.avgpool(y).flatten(1))[0, t].backward()
        ref = (a.grad[0].mean((1, 2), keepdim=True) * a[0]).sum(0)
        torch.testing.assert_close(r.maps[i, 0], ref.detach(), atol=1e-5, rtol=1e-4)
