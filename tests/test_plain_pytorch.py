"Plain-PyTorch users (walkthrough 001, issue 14 item 10): a LogSoftmax head, torchvision test transforms as the geometry, gap_linear_learner where users look."
import copy, numpy as np, pytest, torch, torchvision
from torch import nn
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2
from fastcam.core import cam
from fastcam.boxes import maps_to_original, input_geometry

def test_cam_explains_the_linear_scores_before_a_logsoftmax():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    xb = torch.randn(2, 3, 64, 64)
    feats = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: feats.update(a=o.detach()))
    with torch.no_grad(): logits = model(xb)
    h.remove()
    post = copy.deepcopy(model)
    post.fc = nn.Sequential(post.fc, nn.LogSoftmax(dim=1))    # the blog post's head
    r = cam(post, xb, layer='layer4', method='cam', target='all')
    want = torch.einsum('bkc,bchw->bkhw', model.fc.weight.detach()[r.targets], feats['a'])   # W[c] @ features, by hand
    torch.testing.assert_close(r.maps, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.probs, logits.softmax(1), atol=1e-5, rtol=1e-5)
    post.fc = nn.Sequential(model.fc, nn.Softmax(dim=1))     # probabilities read as logits would be wrong: still refused
    with pytest.raises(ValueError, match="Softmax 'fc.1'.*method='gradcam'"): cam(post, xb, layer='layer4', method='cam')

def _marker(H, W, box):
    a = np.zeros((H, W, 3), np.uint8); x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return Image.fromarray(a)

@pytest.mark.parametrize('tfm', [
    transforms.Compose([transforms.Resize(64), transforms.CenterCrop(56), transforms.ToTensor(), transforms.Normalize([0.5]*3, [0.25]*3)]),
    transforms.Compose([transforms.Resize((64, 64)), transforms.CenterCrop(64), transforms.ToTensor()]),   # walkthrough 001's test transforms
    transforms.Compose([transforms.Resize(48, max_size=56), transforms.ToTensor()]),
    transforms.Compose([transforms.CenterCrop((120, 150)), transforms.ToTensor()]),                       # larger than the image: padded
    v2.Compose([v2.Resize(64), v2.CenterCrop(60), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])])
def test_torchvision_transforms_as_geometry(tfm):
    "A marker drawn on the original, put through torchvision's own transform, maps back onto itself"
    H, W, box = 90, 130, (70, 20, 100, 60)
    x = tfm(_marker(H, W, box))
    assert tuple(input_geometry(tfm).input_size((H, W))) == tuple(x.shape[-2:])
    m = maps_to_original((x[0] > (x[0].min() + x[0].max()) / 2).float(), (H, W), geometry=tfm, fill=float('nan'), input_size=x.shape[-2:])
    ys, xs = np.nonzero((m > 0.5).numpy())
    scale = max(H / x.shape[-2], W / x.shape[-1])          # original pixels per input pixel (at most): the resampling blurs by about one
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1 + scale)

def test_gap_linear_learner_is_public_and_still_in_the_cli():
    import fastcam.all, fastcam.cli, fastcam.methods
    assert fastcam.all.gap_linear_learner is fastcam.methods.gap_linear_learner is fastcam.cli.gap_linear_learner
    assert 'gap_linear_learner' in fastcam.all.__all__ and fastcam.methods.gap_linear_learner.__doc__
