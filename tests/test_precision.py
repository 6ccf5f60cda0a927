"Mixed precision and memory formats: maps of models cast to bfloat16/float16, under autocast, and in channels_last equal the float32 maps within tolerance."
import copy, numpy as np, pytest, torch, torchvision
from fastcam.core import cam

def _corr(a, b): return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]

def _rn():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()

def _deit():
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    return timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, num_classes=5, img_size=64, depth=2, embed_dim=48, num_heads=2).eval()

def _close(res, ref, min_corr=0.97):
    "Same targets; every map finite, float32, and correlated with float32's at `min_corr` or more"
    assert res.maps.dtype == torch.float32 and torch.isfinite(res.maps).all()
    assert torch.equal(res.targets, ref.targets)
    for a, b in zip(res.maps.flatten(0, 1).numpy(), ref.maps.flatten(0, 1).numpy()): assert _corr(a, b) >= min_corr

CASTS = {'bfloat16': lambda m: m.bfloat16(), 'float16': lambda m: m.half()}

@pytest.mark.parametrize('model', ['resnet18', 'deit'])
@pytest.mark.parametrize('dtype', sorted(CASTS))
def test_models_cast_to_low_precision(model, dtype):
    "A float32 batch is cast to the model's dtype; the maps are computed in float32 from the low-precision activations and gradients"
    m = _rn() if model == 'resnet18' else _deit()
    torch.manual_seed(1)
    xb = torch.randn(4, 3, 64, 64)
    ref = cam(m, xb, target=[0, 1, 2, 3], method='gradcam')
    low = CASTS[dtype](copy.deepcopy(m))
    for method in ('gradcam', 'layercam'):
        _close(cam(low, xb, target=[0, 1, 2, 3], method=method), cam(m, xb, target=[0, 1, 2, 3], method=method))
    assert all(p.dtype == getattr(torch, dtype) for p in low.parameters())

@pytest.mark.parametrize('model', ['resnet18', 'deit'])
def test_bfloat16_autocast(model):
    m = _rn() if model == 'resnet18' else _deit()
    torch.manual_seed(2)
    xb = torch.randn(4, 3, 64, 64)
    every = [[0, 1, 2, 3, 4]] * 4   # every class in a fixed order ('all' orders them by a probability that bfloat16 may swap)
    ref = cam(m, xb, target=every)
    with torch.autocast('cpu', dtype=torch.bfloat16): res = cam(m, xb, target=every)
    _close(res, ref)

def test_channels_last_equals_contiguous():
    m = _rn()
    torch.manual_seed(3)
    xb = torch.randn(4, 3, 64, 64)
    ref = cam(m, xb, target='all', method='gradcampp')
    cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    res = cam(cl, xb.to(memory_format=torch.channels_last), target='all', method='gradcampp')
    torch.testing.assert_close(res.maps, ref.maps, atol=1e-4, rtol=1e-3)
