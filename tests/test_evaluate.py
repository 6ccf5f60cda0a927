"evaluate_cams on a model whose maps are known: a bright patch drives the score, so the map peaks on it."
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from PIL import Image
from fastai.vision.all import ImageDataLoaders, Resize, Learner, CrossEntropyLossFlat
from fastcam.metrics import evaluate_cams

class Brightness(nn.Module):
    "8x8 cells of summed brightness, averaged: class 0's logit is the image's brightness, its Grad-CAM map the cells' brightness"
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 1, 8, stride=8, bias=False)
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2, bias=False)
        with torch.no_grad(): self.body.weight.fill_(1/192); self.fc.weight.copy_(torch.tensor([[1.], [-1.]]))
    def forward(self, x): return self.fc(self.flat(self.pool(self.body(x))))

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('ev')
    rng = np.random.default_rng(0)
    files, gt, far = [], {}, {}
    for i in range(6):
        a = rng.integers(0, 40, (64, 64, 3)).astype(np.uint8)
        r, c = 8*int(rng.integers(0, 4)), 8*int(rng.integers(4, 8))     # a bright 8x8 patch on the cell grid, right half
        a[r:r+8, c:c+8] = 250
        f = root/('bright' if i % 2 else 'dark')/f'im{i}.png'; f.parent.mkdir(exist_ok=True)
        Image.fromarray(a).save(f); files.append(f)
        gt[str(f)] = [[c, r, c+8, r+8]]
        far[str(f)] = [[0, 56, 8, 64]]      # bottom-left corner: nowhere near the patch
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.5, seed=0, item_tfms=Resize(64, method='squish'), bs=4, num_workers=0)
    learn = Learner(dls, Brightness(), loss_func=CrossEntropyLossFlat())
    return learn, files, gt, far

def test_known_maps_score_full_marks_and_wrong_truth_none(setup):
    learn, files, gt, far = setup
    ev = evaluate_cams(learn, files, gt, methods=['gradcam', 'layercam'], target=0)
    assert list(ev.method) == ['gradcam', 'layercam'] and len(ev) == 2
    assert (ev.pointing_game == 100).all() and (ev.max_box_acc == 100).all()
    assert ((ev.average_drop >= 0) & (ev.average_drop <= 100)).all()
    bad = evaluate_cams(learn, files, far, methods=['gradcam'], target=0, faithfulness=False)
    assert bad.pointing_game[0] == 0 and bad.max_box_acc[0] == 0 and 'average_drop' not in bad
    ax = ev.show()
    assert len(ax.patches) >= 2 * 5

def test_masks_give_pxap(setup):
    learn, files, gt, far = setup
    masks = {}
    for f, [[x0, y0, x1, y1]] in gt.items():
        m = np.zeros((64, 64)); m[y0:y1, x0:x1] = 1; masks[f] = torch.tensor(m)
    ev = evaluate_cams(learn, files, masks, target=0, faithfulness=False)
    assert ev.pxap[0] > 50 and ev.pointing_game[0] == 100

def test_relu_false_keeps_negative_evidence(setup, tmp_path):
    """Class 1's logit is minus the brightness: its Grad-CAM is negative everywhere, so with the ReLU every map is zero (a miss);
    without it (wsolevaluation's pipeline) the map's maximum is the darkest cell: here a cell set to black in each file."""
    learn, files, gt, far = setup
    dark, black = [], {}
    for f in files:
        a = np.asarray(Image.open(f).convert('RGB')).copy()
        a[48:56, 8:16] = 0
        Image.fromarray(a).save(g := tmp_path/f.name); dark.append(g)
        black[str(g)] = [[8, 48, 16, 56]]
    with_relu = evaluate_cams(learn, dark, black, target=1, faithfulness=False)
    without = evaluate_cams(learn, dark, black, target=1, faithfulness=False, relu=False, protocol='wsol')
    assert with_relu.pointing_game[0] == 0 and with_relu.max_box_acc[0] == 0
    assert without.pointing_game[0] == 100 and without.max_box_acc[0] == 100

def test_extra_metrics_road_and_sanity(setup):
    learn, files, gt, far = setup
    ev = evaluate_cams(learn, files, gt, target=0, faithfulness=False, extra=('road', 'sanity'))
    assert ev.road[0] > 0                                  # removing the bright patch first hurts class 0; removing the rest does not
    assert ev.sanity_passed[0] and ev.sanity_spearman[0] < 0.5
    with pytest.raises(ValueError, match="unknown extra metrics \\['rod'\\]"): evaluate_cams(learn, files, gt, extra='rod')

def test_a_score_function_target(setup):
    """target=f(output): the maps are f's (here class 0's logit, so the same maps as target=0), and the faithfulness metrics measure
    f itself: Average Drop by the hand formula on the raw logit; for minus the brightness (never positive) it is undefined: NaN"""
    from fastcam.metrics import road
    learn, files, gt, far = setup
    ev = evaluate_cams(learn, files, gt, target=lambda o: o[:, 0], extra='road')
    ev0 = evaluate_cams(learn, files, gt, target=0, faithfulness=False)
    assert ev.pointing_game[0] == ev0.pointing_game[0] == 100 and ev.max_box_acc[0] == ev0.max_box_acc[0]
    xb = torch.cat([b[0] for b in learn.dls.test_dl(files)]).as_subclass(torch.Tensor)
    maps = learn.cam(files, target=0).upsampled()[:, 0]
    with torch.no_grad(): Y, O = learn.model(xb)[:, 0].double(), learn.model(xb*maps[:, None])[:, 0].double()
    assert (Y > 0).all()
    assert ev.average_drop[0] == pytest.approx((100*(Y - O).clamp(min=0)/Y).mean().item(), abs=1e-4)
    assert ev.increase_in_confidence[0] == pytest.approx(100*(Y < O).double().mean().item())
    assert ev.road[0] > 0 and ev.road[0] != pytest.approx(road(learn.model, xb, maps, [0]*len(files), progress=False))   # ROAD of the logit, not of class 0's probability
    neg = evaluate_cams(learn, files, gt, target=lambda o: o[:, 1])
    assert np.isnan(neg.average_drop[0]) and 0 <= neg.increase_in_confidence[0] <= 100
