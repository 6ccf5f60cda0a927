"The engine against independent computations: the fastai book's Grad-CAM and CAM, pytorch-grad-cam, per-item calls."
import numpy as np, pytest, torch, torchvision
from torch import nn
from fastcam.core import cam, CamResult, normalize_maps, upsample_maps
from conftest import make_learner

class BookHook:
    "The fastai book's Hook (chapter 18), verbatim"
    def __init__(self, m): self.hook = m.register_forward_hook(self.hook_func)
    def hook_func(self, m, i, o): self.stored = o.detach().clone()
    def __enter__(self, *args): return self
    def __exit__(self, *args): self.hook.remove()

class BookHookBwd:
    "The book's HookBwd, with the full backward hook that replaced the deprecated register_backward_hook"
    def __init__(self, m): self.hook = m.register_full_backward_hook(self.hook_func)
    def hook_func(self, m, gi, go): self.stored = go[0].detach().clone()
    def __enter__(self, *args): return self
    def __exit__(self, *args): self.hook.remove()

def book_gradcam(model, x, layer, cls):
    "The book's Grad-CAM for one item and class: output[0, cls].backward(), mean gradient per channel, weighted sum"
    with BookHookBwd(layer) as hookg:
        with BookHook(layer) as hook:
            output = model.eval()(x)
            act = hook.stored
        output[0, cls].backward()
        grad = hookg.stored
    model.zero_grad(set_to_none=True)
    w = grad[0].mean(dim=[1, 2], keepdim=True)
    return (w * act[0]).sum(0)

def book_norm(m):
    "ReLU then min-max to 0..1, as the book's pictures are scaled; a constant map (all negative before the ReLU) is all 0"
    m = m.relu()
    return (m - m.min())/(m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)

def _plain(x): return x.as_subclass(torch.Tensor)

@pytest.mark.parametrize('layer_path', [None, [0, -2]])
def test_gradcam_equals_book_on_fastai_learner(learn, xb, layer_path):
    xb = _plain(xb)
    model = learn.model
    res = learn.cam(xb, layer=layer_path, target='all')
    layer = model[0] if layer_path is None else model[0][-2]
    assert res.maps.shape[:2] == (8, 3)
    for i in range(8):
        for j in range(3):
            ref = book_gradcam(model, xb[i:i+1], layer, int(res.targets[i, j]))
            torch.testing.assert_close(res.maps[i, j], ref, atol=1e-5, rtol=1e-4)

@pytest.mark.parametrize('layer_name', ['layer4', 'layer3'])
def test_gradcam_equals_book_on_torchvision_resnet(layer_name):
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=5).eval()
    xb = torch.randn(8, 3, 96, 96)
    res = cam(model, xb, layer=layer_name, target=list(range(5)) + [0, 1, 2])
    for i in range(8):
        ref = book_gradcam(model, xb[i:i+1], getattr(model, layer_name), int(res.targets[i, 0]))
        torch.testing.assert_close(res.maps[i, 0], ref, atol=1e-5, rtol=1e-4)

def _pgc_style(maps, size):
    "pytorch-grad-cam's post-processing: ReLU, min-max, resize to the input, min-max again"
    return normalize_maps(upsample_maps(normalize_maps(maps), size), relu=False)

@pytest.mark.parametrize('layer_name', ['layer4', 'layer2'])
def test_gradcam_matches_pytorch_grad_cam(layer_name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=4).eval()
    xb = torch.randn(4, 3, 128, 128)
    targets = [3, 0, 2, 1]
    res = cam(model, xb, layer=layer_name, target=targets)
    with GradCAM(model=model, target_layers=[getattr(model, layer_name)]) as gc:
        ref = gc(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in targets])
    model.zero_grad(set_to_none=True)
    ours = _pgc_style(res.maps, (128, 128))[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-3)

class GapLinear(nn.Module):
    "A small conv net ending in global average pooling and one linear layer"
    def __init__(self, n=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, n)
    def forward(self, x): return self.fc(self.pool(self.features(x)).flatten(1))

def test_cam_equals_einsum_on_gap_linear_model():
    torch.manual_seed(3)
    model = GapLinear().eval()
    xb = torch.randn(5, 3, 20, 20)
    res = cam(model, xb, target='all', method='cam')
    assert res.layer == 'features'
    act = model.features(xb)
    for i in range(5):
        ref = torch.einsum('ck,kij->cij', model.fc.weight, act[i])
        torch.testing.assert_close(res.maps[i], ref[res.targets[i]], atol=1e-5, rtol=1e-4)

def test_cam_folds_batchnorm_of_a_fastai_avgpool_head(dls, xb):
    "vision_learner(concat_pool=False, lin_ftrs=[]): pool, Flatten, BatchNorm1d, Dropout, Linear; CAM is exact"
    learn = make_learner(dls, concat_pool=False, lin_ftrs=[])
    head = learn.model[1]
    bn, lin = head[2], head[4]
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(lin, nn.Linear)
    with torch.no_grad():  # give the BatchNorm non-trivial statistics so folding matters
        bn.running_mean.uniform_(-1, 1); bn.running_var.uniform_(0.5, 2); bn.weight.uniform_(0.5, 1.5); bn.bias.uniform_(-1, 1)
    xb = _plain(xb)
    res = learn.cam(xb, target='all', method='cam')
    act = learn.model.eval()[0](xb).detach()
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    W = lin.weight * s  # BatchNorm1d folded into the linear weights by hand
    for i in range(len(xb)):
        ref = torch.einsum('ck,kij->cij', W, act[i])
        torch.testing.assert_close(res.maps[i], ref[res.targets[i]].detach(), atol=1e-4, rtol=1e-4)
    # the folded map's spatial mean plus the folded bias is the logit itself
    logits = learn.model(xb)
    b = (0 if lin.bias is None else lin.bias) + lin.weight @ (bn.bias - bn.running_mean * s)
    torch.testing.assert_close(res.maps[:, 0].mean((-2, -1)) + b[res.targets[:, 0]], logits.gather(1, res.targets[:, :1])[:, 0], atol=1e-4, rtol=1e-4)

def test_cam_refuses_fastai_concat_pool_head(learn, xb):
    with pytest.raises(ValueError, match="method='gradcam'"): learn.cam(xb, method='cam')

def test_no_cross_talk_with_batchnorm_left_in_train_mode(learn, xb):
    learn.model.train()
    batched = learn.cam(xb, target='all')
    for i in range(len(xb)):
        single = learn.cam(xb[i:i+1], target='all')
        torch.testing.assert_close(batched.maps[i], single.maps[0], atol=1e-5, rtol=1e-4)
        assert batched.targets[i].tolist() == single.targets[0].tolist()
    assert all(m.training for m in learn.model.modules())

def test_items_go_through_test_dl(learn, dls):
    "learn.cam on file paths equals learn.cam on the batch test_dl makes of them"
    items = dls.valid_ds.items[:10]
    res = learn.cam(items, bs=4)
    assert isinstance(res, CamResult) and len(res) == 10
    xb = torch.cat([b[0] for b in dls.test_dl(items, bs=4)])
    ref = learn.cam(xb)
    torch.testing.assert_close(res.maps, ref.maps, atol=1e-5, rtol=1e-4)
    assert res.vocab == list(dls.vocab)
    one = learn.cam(items[3], target='square')
    assert one.target_names == [['square']]
    torch.testing.assert_close(one.maps[0, 0], learn.cam(xb[3:4], target=1).maps[0, 0], atol=1e-5, rtol=1e-4)

def test_binary_single_logit_and_multi_label():
    torch.manual_seed(4)
    model = GapLinear(n=1).eval()
    xb = torch.randn(3, 3, 16, 16)
    res = cam(model, xb, target='all')
    logit = model(xb)[:, 0]
    p1 = torch.sigmoid(logit)
    torch.testing.assert_close(res.probs, torch.stack([1 - p1, p1], 1))
    # class 0's score is the negative logit, so its map is the negative of class 1's
    one, zero = cam(model, xb, target=1).maps, cam(model, xb, target=0).maps
    torch.testing.assert_close(zero, -one)
    ml = GapLinear(n=4).eval()
    with torch.no_grad(): ml.fc.bias.copy_(torch.tensor([5., 5., -5., -5.]))
    r = cam(ml, xb, multi_label=True)
    assert r.targets.shape[1] >= 2 and set(r.targets[0, :2].tolist()) == {0, 1}
    torch.testing.assert_close(r.probs, torch.sigmoid(ml(xb)).detach())

def test_cam_refuses_a_trailing_softmax_with_a_reason():
    "CAM weights logits: a model that ends in Softmax gets a message that says so, not one about concat pooling"
    model = nn.Sequential(GapLinear(), nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match=r"ends in Softmax '1'.*method='gradcam'"):
        cam(model, torch.randn(2, 3, 20, 20), layer='0.features', method='cam')

def test_get_boxes_and_get_cmaps_with_several_layers_use_the_fused_map(learn, dls):
    "layer=[...] in get_cmaps/get_boxes: the book's Grad-CAM at each layer, ReLU, min-max, bilinear to the largest, mean; boxed by hand"
    from skimage.measure import label, regionprops
    from fastcam.boxes import maps_to_original
    from fastcam.show import get_boxes, get_cmaps
    item, layers = dls.valid_ds.items[0], [[0, -3], [0, -2], [0, -1]]
    x = _plain(dls.test_dl([item]).one_batch()[0])
    model = learn.model.eval()
    with torch.no_grad(): cls = int(model(x).argmax(1))
    books = [book_gradcam(model, x, model[0][i], cls).relu() for _, i in layers]
    size = max((b.shape for b in books), key=lambda s: s[0]*s[1])
    ups = [torch.nn.functional.interpolate(((b - b.min())/(b.max() - b.min()))[None, None], size=size, mode='bilinear', align_corners=False)[0, 0]
           for b in books]
    fused = torch.stack(ups).mean(0)
    res = get_cmaps(item, dls, learn, layer=layers, show_maps=False, show_cmap=False, target=None)
    assert res.layer == 'fused' and int(res.targets[0, 0]) == cls
    torch.testing.assert_close(res.maps[0, 0], fused, atol=1e-5, rtol=1e-4)
    # the box of the map's own regions: the fused map in original pixels, min-max, >= the plain mode's threshold of the max, the 8-connected region holding the peak
    H, W = res.orig_sizes[0]
    m = maps_to_original(fused, (H, W), dls).numpy()
    n = (m - m.min())/(m.max() - m.min())
    from fastcam.tune import mode_thresholds
    lab = label(n >= mode_thresholds['threshold'], connectivity=2)
    r = next(r for r in regionprops(lab) if r.label == lab.flat[n.argmax()])
    lb = get_boxes(item, dls, learn, layer=layers, show_img=False, min_prob=0., mode='threshold')   # an untrained model: no gate
    assert lb.bbox.tolist() == [[r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]]]
    assert list(lb.lbl) == [dls.vocab[cls]]
    learn.use_recipe(dict(layer=layers, mode='threshold'))   # a tuned learner: get_cmaps shows the maps its boxes come from, with no layer given
    try:
        tuned = get_cmaps(item, dls, learn, show_maps=False, show_cmap=False, target=None)
        assert tuned.layer == 'fused' and get_boxes(item, dls, learn, show_img=False, min_prob=0.).bbox.tolist() == lb.bbox.tolist()
        torch.testing.assert_close(tuned.maps[0, 0], fused, atol=1e-5, rtol=1e-4)
    finally: learn.use_recipe(None)

def test_tta_averages_the_normalised_maps_of_the_item_and_its_mirror(learn, xb):
    "tta=True: the book's Grad-CAM of each item and of its mirror (for the item's predicted class), ReLU, min-max, the mirror's flipped back, averaged"
    x = _plain(xb)
    model, layer = learn.model.eval(), learn.model[0][-2]
    with torch.no_grad(): cls = model(x).argmax(1)
    exp = torch.stack([(book_norm(book_gradcam(model, x[i:i+1], layer, int(c))) + book_norm(book_gradcam(model, x[i:i+1].flip(-1), layer, int(c))).flip(-1))/2
                       for i, c in enumerate(cls)])
    assert (exp.amax((-2, -1)) > 0).sum() >= len(x)//2                 # most items have a map to compare
    res = learn.cam(xb, layer=[0, -2], tta=True)
    assert res.targets[:, 0].tolist() == cls.tolist() and res.maps.shape[0] == len(x)
    torch.testing.assert_close(res.maps[:, 0], exp, atol=1e-5, rtol=1e-4)
    with torch.no_grad(): torch.testing.assert_close(res.probs, torch.softmax(model(x), 1))     # the items' own probabilities
    # mirrored items get mirrored maps: tta of the mirror batch is the mirror of tta's maps
    torch.testing.assert_close(learn.cam(x.flip(-1), layer=[0, -2], tta=True, target=cls.tolist()).maps, res.maps.flip(-1), atol=1e-5, rtol=1e-4)

def test_show_result_with_too_few_images_says_so(learn, xb):
    res = learn.cam(xb)
    with pytest.raises(ValueError, match=f"{len(xb)} maps but 2 images"): res.show(xb[:2])
