"Transformers: token and channels-last layers read as maps, the automatic layer, one-line refusals, parity with pytorch-grad-cam's reshape_transform."
import numpy as np, pytest, torch, torchvision
from torch import nn
from fastcam.core import cam, auto_layer, normalize_maps, upsample_maps

timm = pytest.importorskip('timm')

def _tv_vit(size=64, layers=2):
    "torchvision's ViT, small; its head is zero-initialised, so give it random weights"
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=size, patch_size=16, num_layers=layers, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
    nn.init.normal_(m.heads.head.weight, std=0.5)
    return m.eval()

def _timm(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()

def _deit(**kw): return _timm('deit_tiny_distilled_patch16_224', img_size=64, depth=2, embed_dim=48, num_heads=2, **kw)
def _swin(size=128, **kw): return _timm('swin_tiny_patch4_window7_224', img_size=size, embed_dim=24, depths=(1,1,1,1), **({} if size==224 else {'window_size': 4}), **kw)

def _reshape(prefix, h, w):
    "pytorch-grad-cam's reshape_transform for tokens (its tutorial's, with the prefix tokens dropped)"
    return lambda t: t[:, prefix:].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

def _nhwc(t): return t.permute(0, 3, 1, 2)

def _pgc(cls_name, model, layer, xb, targets, reshape):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with getattr(pgc, cls_name)(model=model, target_layers=[layer], reshape_transform=reshape) as c:
        if hasattr(c, 'batch_size'): c.batch_size = 64
        out = c(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in targets])
    model.zero_grad(set_to_none=True)
    return out

def _pgc_style(maps, size): return normalize_maps(upsample_maps(normalize_maps(maps), size), relu=False)[:, 0].numpy()

def _corr(a, b): return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]

# model, the layer pytorch-grad-cam's tutorials use for it, its reshape_transform
CASES = {'torchvision_vit': (_tv_vit, 64, 'encoder.layers.encoder_layer_1.ln_1', _reshape(1, 4, 4)),
         'timm_deit_distilled': (_deit, 64, 'blocks.1.norm1', _reshape(2, 4, 4)),
         'timm_swin': (_swin, 128, 'layers.3.blocks.0', _nhwc)}

@pytest.mark.parametrize('case', sorted(CASES))
def test_gradcam_matches_pytorch_grad_cam_with_its_reshape_transform(case):
    make, size, layer, reshape = CASES[case]
    model = make()
    assert auto_layer(model, torch.randn(1, 3, size, size)) == layer   # the automatic layer is the one pytorch-grad-cam recommends
    torch.manual_seed(1)
    xb, targets = torch.randn(3, 3, size, size), [4, 0, 2]
    ours = _pgc_style(cam(model, xb, target=targets).maps, (size, size))
    ref = _pgc('GradCAM', model, model.get_submodule(layer), xb, targets, reshape)
    assert (ref.reshape(3, -1).max(1) > 0).all()
    for o, r in zip(ours, ref): assert _corr(o, r) >= 0.99

PEERS = {'gradcampp': 'GradCAMPlusPlus', 'xgradcam': 'XGradCAM', 'hirescam': 'HiResCAM', 'layercam': 'LayerCAM', 'scorecam': 'ScoreCAM'}

@pytest.mark.parametrize('method', sorted(PEERS))
def test_every_method_works_on_tokens(method):
    "DeiT with its class and distillation tokens: each method's map equals pytorch-grad-cam's"
    model = _deit()
    torch.manual_seed(2)
    xb, targets = torch.randn(2, 3, 64, 64), [1, 3]
    kw = {'progress': False} if method == 'scorecam' else {}
    ours = _pgc_style(cam(model, xb, target=targets, method=method, **kw).maps, (64, 64))
    ref = _pgc(PEERS[method], model, model.blocks[-1].norm1, xb, targets, _reshape(2, 4, 4))
    for o, r in zip(ours, ref):
        assert _corr(o, r) >= 0.99

def test_eigencam_on_tokens_is_pytorch_grad_cams_projection():
    "up to the sign, which pytorch-grad-cam leaves arbitrary (see tests/test_methods.py)"
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    model = _deit()
    xb = torch.randn(2, 3, 64, 64)
    r = cam(model, xb, method='eigencam')
    acts = {}
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: acts.setdefault('a', o.detach().clone()))
    with torch.no_grad(): model(xb)
    h.remove()
    ref = get_2d_projection(_reshape(2, 4, 4)(acts['a']).numpy())
    for o, p in zip(r.maps[:, 0].numpy(), ref): assert abs(_corr(o, p)) >= 0.999

def test_grids_of_full_size_models():
    "224 px: a ViT with 16 px patches gives a 14x14 map (also with register tokens), Swin-T a 7x7 one"
    x = torch.randn(1, 3, 224, 224)
    vit = _timm('vit_tiny_patch16_224', depth=1, embed_dim=48, num_heads=2)
    reg = _timm('vit_tiny_patch16_224', depth=1, embed_dim=48, num_heads=2, reg_tokens=4, class_token=True)
    swin = _swin(224)
    for m, layer in [(vit, 'blocks.0.norm1'), (reg, 'blocks.0.norm1'), (swin, 'layers.3.blocks.0')]:
        r = cam(m, x)
        assert r.layer == layer
        assert r.maps.shape[-2:] == ((7, 7) if m is swin else (14, 14))
    tv = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    assert auto_layer(tv, x) == 'encoder.layers.encoder_layer_1.ln_1'   # not conv_proj, the patch embedding
    with pytest.raises(ValueError, match=r"^layer 'layers.0.blocks.0.attn' outputs \(64, 49, 24\): its first dimension is not the batch of 1"):
        cam(swin, x, layer='layers.0.blocks.0.attn')

def test_avg_pooled_heads_keep_the_last_blocks_output():
    "When the head averages the patch tokens (BEiT, global_pool='avg') the last block's output reaches the prediction and is explained"
    beit = _timm('beit_base_patch16_224', img_size=64, depth=2, embed_dim=32, num_heads=2)
    avg = _timm('vit_tiny_patch16_224', img_size=64, depth=2, global_pool='avg')
    x = torch.randn(2, 3, 64, 64)
    for m in (beit, avg):
        assert auto_layer(m, x) == 'blocks.1'
        r = cam(m, x)
        assert r.maps.shape == (2, 1, 4, 4) and r.maps.abs().sum() > 0

@pytest.mark.parametrize('layer, msg', [
    ('blocks.1.attn.k_norm', r"^layer 'blocks.1.attn.k_norm' outputs \(2, 2, 18, 24\): an attention internal \[B, heads, tokens, dim\], not a map; explain the output of the block that holds it"),
    ('head', r"^layer 'head' outputs \(2, 5\), not a \[B,C,h,w\] map: a vector per item, with no positions to map; choose a layer before the pooling"),
    ('blocks.1.mlp.fc1', None)])
def test_refusals_are_one_line(layer, msg):
    m = _deit()
    x = torch.randn(2, 3, 64, 64)
    if msg is None: assert cam(m, x, layer=layer).maps.shape == (2, 1, 4, 4); return   # tokens of any width are a map
    with pytest.raises(ValueError, match=msg) as e: cam(m, x, layer=layer)
    assert '\n' not in str(e.value)

def test_explicit_tokens_and_grid():
    "tokens=/grid= settle what the shapes cannot, and wrong ones are refused in one line"
    m = _deit()
    x = torch.randn(2, 3, 64, 64)
    auto = cam(m, x).maps
    torch.testing.assert_close(cam(m, x, tokens=2).maps, auto)
    torch.testing.assert_close(cam(m, x, grid=(4, 4)).maps, auto)
    with pytest.raises(ValueError, match=r"^layer 'blocks.1.norm1' outputs \(2, 18, 48\): 18 tokens are not 3 prefix tokens and a 4x4 grid"):
        cam(m, x, tokens=3, grid=(4, 4))

def test_fastai_vit_learner_end_to_end(dls, tmp_path):
    "vision_learner(dls, 'vit_tiny_patch16_224') through get_cmaps, get_boxes, GradCAMCallback and fastcam run, at 64 px (a 4x4 grid)"
    from fastai.vision.all import vision_learner
    from fastcam.show import get_cmaps, get_boxes
    from fastcam.callback import GradCAMCallback
    from fastcam.cli import run
    torch.manual_seed(0)
    learn = vision_learner(dls, 'vit_tiny_patch16_224', pretrained=False, img_size=64)
    files = list(dls.valid.items[:3])
    ref = learn.cam(files)
    assert ref.layer == '0.model.blocks.11.norm1' and ref.maps.shape == (3, 1, 4, 4) and ref.maps.abs().sum() > 0
    # the maps are pytorch-grad-cam's at that layer
    xb = dls.test_dl(files).one_batch()[0].cpu().as_subclass(torch.Tensor)   # pytorch-grad-cam trips on fastai's tensor subclasses
    model = learn.model.cpu().eval()
    peer = _pgc('GradCAM', model, model.get_submodule(ref.layer), xb, ref.targets[:, 0].tolist(), _reshape(1, 4, 4))
    assert peer.max() > 0
    for o, p in zip(_pgc_style(ref.maps, (64, 64)), peer): assert (o.max() == 0) if p.max() == 0 else _corr(o, p) >= 0.99   # all negative: both blank after the ReLU
    i = int(ref.maps.flatten(1).amax(1).argmax())   # an item whose map has a positive part, to box
    r = get_cmaps(files[i], dls, learn, show_maps=False, show_cmap=False)
    torch.testing.assert_close(r.maps[:, :1], ref.maps[i:i+1])   # 'all' classes, the predicted one first
    lb = get_boxes(files[i], dls, learn, show_img=False)
    assert lb.df.x0.notna().sum() >= 1
    cb = GradCAMCallback()
    learn.get_preds(dl=dls.test_dl(files), cbs=cb)
    torch.testing.assert_close(cb.cams.maps, ref.maps, atol=1e-5, rtol=1e-4)
    learn.export(tmp_path/'vit.pkl')
    assert run(str(tmp_path/'vit.pkl'), *map(str, files), out=str(tmp_path/'out'), trust=True, device='cpu', save_maps=True, progress=False) == 0
    saved = {p.name.rsplit('_', 1)[0]: np.load(p) for p in (tmp_path/'out'/'maps').glob('*.npy')}
    for f, m in zip(files, ref.maps): np.testing.assert_allclose(saved[f.stem], m.numpy(), atol=1e-4)

def test_cli_tokens_and_grid_reach_the_engine(dls, tmp_path):
    "fastcam run --tokens/--grid: the saved maps are the Python call's with tokens=/grid=; wrong values are refused before any file, in one line; they are run options"
    import json
    from fastai.vision.all import vision_learner
    from fastcore.script import CliError
    from fastcam.cli import run
    torch.manual_seed(0)
    learn = vision_learner(dls, 'vit_tiny_patch16_224', pretrained=False, img_size=64, depth=2, embed_dim=48, num_heads=2)
    files = list(dls.valid.items[:3])
    learn.export(tmp_path/'vit.pkl')
    pkl, args = str(tmp_path/'vit.pkl'), [str(f) for f in files]
    kw = dict(trust=True, device='cpu', save_maps=True, progress=False)
    ref = learn.cam(files, tokens=1, grid=(4, 4))
    assert ref.layer == '0.model.blocks.1.norm1' and ref.maps.shape == (3, 1, 4, 4)
    out = tmp_path/'out'
    assert run(pkl, *args, out=str(out), tokens=1, grid='4x4', **kw) == 0
    saved = {p.name.rsplit('_', 1)[0]: np.load(p) for p in (out/'maps').glob('*.npy')}
    for f, m in zip(files, ref.maps): np.testing.assert_allclose(saved[f.stem], m.numpy(), atol=1e-4)
    # a grid the shapes would not give (the 16 patch tokens read as 2x8): the run's maps follow the flags, so they reach the engine
    odd = learn.cam(files, tokens=1, grid=(2, 8))
    assert run(pkl, *args, out=str(tmp_path/'odd'), tokens=1, grid='2x8', **kw) == 0
    assert odd.maps.shape == (3, 1, 2, 8)
    for f, m in zip(files, odd.maps): np.testing.assert_allclose(np.load(next((tmp_path/'odd'/'maps').glob(f'{f.stem}_*.npy'))), m.numpy(), atol=1e-4)
    opts = json.loads((out/'run.json').read_text())['options']
    assert opts['tokens'] == 1 and opts['grid'] == [4, 4] and 'output' not in opts
    with pytest.raises(CliError, match=r"^fastcam run: --tokens 3 --grid 4x4: layer '0.model.blocks.1.norm1' outputs \(1, 17, 48\): 17 tokens are not 3 prefix tokens and a 4x4 grid") as e:
        run(pkl, *args, out=str(tmp_path/'bad'), tokens=3, grid='4x4', **kw)
    assert '\n' not in str(e.value) and not (tmp_path/'bad'/'records').exists()
    with pytest.raises(CliError, match=r"^fastcam run: --grid 4by4: give the patch grid as HxW, e.g. 14x14"): run(pkl, *args, out=str(tmp_path/'bad'), grid='4by4', **kw)
    with pytest.raises(CliError, match=r"^fastcam run: --tokens -1: give the number of class/register tokens"): run(pkl, *args, out=str(tmp_path/'bad'), tokens=-1, **kw)
    with pytest.raises(CliError, match=r"holds results made with other options.*grid: \[4, 4\] -> null; tokens: 1 -> null"):
        run(pkl, *args, out=str(out), **kw)   # a resume without them: other options

def test_evaluate_cams_takes_tokens_and_grid(dls):
    "evaluate_cams(tokens=, grid=) reads the transformer layer as told: its MaxBoxAcc is that of learn.cam's maps with the same options"
    from fastai.vision.all import vision_learner
    from fastcam.metrics import evaluate_cams, max_box_acc
    torch.manual_seed(0)
    learn = vision_learner(dls, 'vit_tiny_patch16_224', pretrained=False, img_size=64, depth=2, embed_dim=48, num_heads=2)
    files = list(dls.valid.items[:4])
    gt = {str(f): [[0, 0, 40, 24]] for f in files}
    ev = evaluate_cams(learn, files, gt, tokens=1, grid=(2, 8), faithfulness=False)
    r = learn.cam(files, tokens=1, grid=(2, 8))
    assert r.maps.shape[-2:] == (2, 8)
    assert ev.max_box_acc[0] == pytest.approx(max_box_acc([r.original_maps(i, fill=float('nan'))[0] for i in range(4)], [gt[str(f)] for f in files]))
