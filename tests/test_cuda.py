"On a CUDA GPU (skipped without one; bench/device_check.sh runs them): the engine, GradCAMCallback under fastai's fp16 MixedPrecision, a timm ViT, and `fastcam run`, each against the same computation in float32 on the CPU."
import copy, numpy as np, pandas as pd, pytest, torch, torchvision
from fastcam.core import cam
import fastcam.callback   # Learner.get_cams

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (bench/device_check.sh)')]

def _corr(a, b): return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]

def _all_close_corr(res, ref, min_corr):
    assert torch.isfinite(res.maps).all() and torch.equal(res.targets.cpu(), ref.targets.cpu())
    for a, b in zip(res.maps.cpu().flatten(0, 1).numpy(), ref.maps.cpu().flatten(0, 1).numpy()): assert _corr(a, b) >= min_corr

@pytest.mark.parametrize('method', ['gradcam', 'gradcampp', 'layercam', 'scorecam'])
def test_engine_on_cuda_equals_cpu(method):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=5).eval()
    xb = torch.randn(8, 3, 96, 96)
    kw = {'progress': False} if method == 'scorecam' else {}
    ref = cam(m, xb, target='all', method=method, **kw)
    mc = copy.deepcopy(m).cuda()
    res = cam(mc, xb.cuda(), target='all', method=method, **kw)
    assert res.maps.device.type == 'cuda'
    torch.testing.assert_close(res.maps.cpu(), ref.maps, atol=1e-3, rtol=1e-3)
    assert all(p.grad is None for p in mc.parameters()) and not mc.training

@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_autocast_and_cast_models_on_cuda(dtype):
    torch.manual_seed(0)
    m = torchvision.models.resnet50(num_classes=5).eval().cuda()
    xb = torch.randn(16, 3, 128, 128, device='cuda')
    every = [[0, 1, 2, 3, 4]] * 16   # fixed order: 'all' orders classes by probabilities that low precision may swap
    ref = cam(m, xb, target=every)
    with torch.autocast('cuda', dtype=getattr(torch, dtype)): _all_close_corr(cam(m, xb, target=every), ref, 0.97)
    _all_close_corr(cam(copy.deepcopy(m).to(getattr(torch, dtype)), xb, target=every), ref, 0.97)
    cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=getattr(torch, dtype)):
        _all_close_corr(cam(cl, xb.to(memory_format=torch.channels_last), target=every), ref, 0.97)

def test_callback_with_fp16_mixed_precision(dls):
    "GradCAMCallback during get_preds of a learner on the GPU under learn.to_fp16() (autocast float16)"
    from fastai.vision.all import vision_learner, resnet34
    torch.manual_seed(0)
    dls = copy.copy(dls); dls.to('cuda')
    learn = vision_learner(dls, resnet34, pretrained=False)
    ref = learn.get_cams(target=1)
    learn.to_fp16()
    try:
        res = learn.get_cams(target=1)
        preds, _ = learn.get_preds()
    finally: learn.to_fp32()
    _all_close_corr(res, ref, 0.97)
    assert preds.dtype == torch.float32 and torch.isfinite(preds).all()

def test_timm_vit_on_cuda_matches_pytorch_grad_cam_in_fp16():
    "vit_tiny at 224 px (14x14 patches) on the GPU: fastcam under autocast float16 against pytorch-grad-cam in float32"
    timm = pytest.importorskip('timm')
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from fastcam.core import normalize_maps, upsample_maps
    torch.manual_seed(0)
    m = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=10).eval().cuda()
    xb = torch.randn(8, 3, 224, 224, device='cuda')
    ref32 = cam(m, xb, target=3)
    assert ref32.layer == 'blocks.11.norm1' and ref32.maps.shape[-2:] == (14, 14)
    with torch.autocast('cuda', dtype=torch.float16): res = cam(m, xb, target=3)
    _all_close_corr(res, ref32, 0.97)
    reshape = lambda t: t[:, 1:].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)
    with pgc.GradCAM(model=m, target_layers=[m.blocks[-1].norm1], reshape_transform=reshape) as c:
        peer = c(input_tensor=xb, targets=[ClassifierOutputTarget(3)] * 8)
    ours = normalize_maps(upsample_maps(normalize_maps(ref32.maps.cpu()), (224, 224)), relu=False)[:, 0].numpy()
    for o, p in zip(ours, peer): assert _corr(o, p) >= 0.99

def test_fastcam_run_on_cuda_equals_cpu(tmp_path):
    "`fastcam run --device cuda` writes the same boxes as on the CPU, and maps within tolerance"
    from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, Resize, vision_learner
    from fastcam.synth import make_png_set, make_dicom_set
    from fastcam.items import DicomBlock
    from fastcam.cli import run, tiny_xresnet
    df = make_dicom_set(tmp_path/'train', n=16, seed=1)
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock), get_x=ColReader('file', pref=tmp_path/'train'), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), item_tfms=Resize(64, method='squish'))
    torch.manual_seed(0)
    learn = vision_learner(dblock.dataloaders(df, bs=8, num_workers=0, device='cpu'), tiny_xresnet, pretrained=False)
    learn.export(tmp_path/'model.pkl')
    make_png_set(tmp_path/'in', n=24, seed=2)
    outs = {}
    for dev in ('cpu', 'cuda'):
        rc = run(str(tmp_path/'model.pkl'), str(tmp_path/'in'/'images'), out=str(tmp_path/dev), trust=True, device=dev, save_maps=True, progress=False)
        assert rc == 0
        outs[dev] = pd.read_csv(tmp_path/dev/'boxes.csv')
    assert len(outs['cuda']) == len(outs['cpu']) and (outs['cuda']['class'] == outs['cpu']['class']).all()
    maps = sorted((tmp_path/'cpu'/'maps').rglob('*.npy'))
    assert len(maps) == 24
    for f in maps: np.testing.assert_allclose(np.load(tmp_path/'cuda'/f.relative_to(tmp_path/'cpu')), np.load(f), atol=2e-3)
