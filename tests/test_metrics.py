"Metrics against hand-computed values and independent implementations: pixel counting, brute-force components, scikit-learn, torchcam, naive one-image loops, SIIM's own run-length code."
import json, math, time
from functools import partial
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score      # a test oracle; scikit-learn comes with fastai
from torchvision.transforms.functional import gaussian_blur
from fastcam.core import cam
from fastcam.metrics import (as_boxes, box_area, box_iou, box_iobb, pointing_hits, pointing_game, map_boxes, box_acc_curve, box_acc_curves, box_acc,
                             max_box_acc, max_box_acc_v2, cam_thresholds, average_precision, pxap, average_drop_increase,
                             perturbation_curves, curve_auc, deletion_auc, insertion_auc, blur, read_boxes_csv, read_coco,
                             rle_decode, rle_encode, read_rle_csv, read_mask, mask_to_boxes)

# ---------------------------------------------------------------------------------------------------------------
# Box overlaps: hand values, and a pixel-counting oracle (rasterise both boxes, count pixels).

def test_box_iou_hand():
    a = [[0, 0, 4, 4], [2, 0, 4, 2], [0, 0, 10, 10]]
    b = [[2, 2, 6, 6], [4, 0, 6, 2], [0, 0, 10, 5], [20, 20, 30, 30]]
    iou = box_iou(a, b)
    assert iou.shape == (3, 4) and iou.dtype == torch.float64
    # overlap 2x2=4 of two 4x4 boxes: 4/(16+16-4)
    assert iou[0, 0].item() == pytest.approx(4/28)
    # touching edges (x=4, and y=2) do not overlap with half-open boxes
    assert iou[0, 1] == 0 and iou[1, 0] == 0 and iou[1, 1] == 0
    # a box containing another: 50/100, exactly 0.5 in float64
    assert iou[2, 2].item() == 0.5
    # no overlap at all
    assert (iou[:, 3] == 0).all()
    iobb = box_iobb(a, b)
    assert iobb[0, 0].item() == pytest.approx(4/16) and iobb[2, 2].item() == 0.5
    assert box_iobb([[3, 3, 4, 4]], [[0, 0, 10, 10]]).item() == 1.0   # detected box inside the ground truth

def test_empty_boxes():
    assert box_iou([[1, 1, 1, 5]], [[0, 0, 9, 9]]).item() == 0      # zero width
    assert box_iou([[1, 1, 1, 5]], [[1, 1, 1, 5]]).item() == 0      # empty with empty: no union
    assert box_iobb([[5, 5, 3, 3]], [[0, 0, 9, 9]]).item() == 0     # inverted
    assert box_iou(None, [[0, 0, 1, 1]]).shape == (0, 1) and box_iou([], []).shape == (0, 0)
    assert box_area([[0, 0, 3, 2], [4, 4, 2, 9]]).tolist() == [6, 0]
    with pytest.raises(ValueError, match=r'\[K, 4\]'): as_boxes([[1, 2, 3]])

def _raster(b, n=16):
    m = np.zeros((n, n), bool)
    x0, y0, x1, y1 = b
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m

def test_box_iou_matches_pixel_counting():
    rng = np.random.default_rng(0)
    def boxes(k):
        x = np.sort(rng.integers(0, 16, (k, 2)), 1); y = np.sort(rng.integers(0, 16, (k, 2)), 1)
        return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)   # some have x0 == x1: empty
    a, b = boxes(30), boxes(20)
    iou, iobb = box_iou(a, b).numpy(), box_iobb(a, b).numpy()
    for i, ba in enumerate(a):
        for j, bb in enumerate(b):
            ra, rb = _raster(ba), _raster(bb)
            inter, union = (ra & rb).sum(), (ra | rb).sum()
            assert iou[i, j] == pytest.approx(inter/union if union else 0.)
            assert iobb[i, j] == pytest.approx(inter/ra.sum() if ra.sum() else 0.)

# ---------------------------------------------------------------------------------------------------------------
# Pointing game. Distances worked out by hand: the distance from pixel (y, x) to a half-open box is the Euclidean
# distance to the box's nearest pixel, (x0 - x) or (x - (x1-1)) along columns, likewise along rows.

def _spot(y, x, shape=(30, 30)):
    m = torch.zeros(shape); m[y, x] = 1.
    return m

def test_pointing_tolerance_by_hand():
    m = _spot(2, 2)
    right = [[17, 0, 20, 5]]          # dx = 17 - 2 = 15, dy = 0: distance 15
    assert pointing_hits([m], [right]).tolist() == [1.]                  # within 15 px (<=)
    assert pointing_hits([m], [right], tolerance=14.9).tolist() == [0.]
    diag = [[12, 14, 20, 20]]         # dx = 10, dy = 12: distance sqrt(244) = 15.62
    assert pointing_hits([m], [diag]).tolist() == [0.]
    assert pointing_hits([m], [diag], tolerance=15.7).tolist() == [1.]
    inside = [[0, 0, 3, 3]]
    assert pointing_hits([m], [inside], tolerance=0).tolist() == [1.]
    assert pointing_hits([m], [[3, 3, 6, 6]], tolerance=0).tolist() == [0.]   # x0=3 > 2: just outside

def test_pointing_border_and_multiple_gt():
    m = _spot(29, 29)                 # bottom-right corner pixel
    assert pointing_hits([m], [[[27, 27, 30, 30]]], tolerance=0).tolist() == [1.]   # box touching the border holds it
    assert pointing_hits([m], [[[0, 0, 29, 29]]], tolerance=0).tolist() == [0.]     # last pixel of that box is (28, 28)
    assert pointing_hits([m], [[[0, 0, 29, 29]]], tolerance=1).tolist() == [0.]     # distance sqrt(2)
    assert pointing_hits([m], [[[0, 0, 29, 29]]], tolerance=1.5).tolist() == [1.]
    far, near = [0, 0, 5, 5], [27, 28, 29, 30]      # near: last column 28, 1 px from the corner
    assert pointing_hits([m, m], [[far], [far, near]], tolerance=2).tolist() == [0., 1.]  # any GT box will do

def test_pointing_constant_ties_nan_and_skips():
    box = [[0, 0, 30, 30]]                                       # the whole image
    assert pointing_hits([torch.zeros(30, 30)], [box]).tolist() == [0.]      # empty map: a miss, even here
    assert pointing_hits([torch.full((30, 30), .4)], [box]).tolist() == [0.]  # all equal: a miss
    assert pointing_hits([torch.full((30, 30), float('nan'))], [box]).tolist() == [0.]
    plateau = torch.zeros(30, 30); plateau[2, 2] = plateau[25, 25] = 1.
    assert pointing_hits([plateau], [[[0, 0, 5, 5]]]).tolist() == [0.]      # one of two maxima is 28 px away
    assert pointing_hits([plateau], [[[0, 0, 5, 5], [24, 24, 26, 26]]]).tolist() == [1.]   # both maxima covered
    withnan = _spot(2, 2); withnan[20:, 20:] = float('nan')
    assert pointing_hits([withnan], [[[0, 0, 3, 3]]], tolerance=0).tolist() == [1.]
    h = pointing_hits([_spot(2, 2)]*4, [[[0, 0, 3, 3]], None, [], [[25, 25, 30, 30]]])
    assert h[0] == 1 and h[1].isnan() and h[2].isnan() and h[3] == 0
    assert pointing_game([_spot(2, 2)]*4, [[[0, 0, 3, 3]], None, [], [[25, 25, 30, 30]]]) == 50.
    with pytest.raises(ValueError, match='no map has a ground-truth box'): pointing_game([_spot(2, 2)], [None])
    with pytest.raises(ValueError, match='2 maps but 1'): pointing_hits([_spot(2, 2)]*2, [None])

def test_pointing_matches_distance_transform():
    "Oracle: the Euclidean distance transform of the ground-truth region, read at the argmax"
    rng = np.random.default_rng(1)
    maps, gts, want = [], [], []
    for i in range(40):
        H, W = rng.integers(20, 50, 2)
        m = rng.random((H, W))
        gt = []
        for _ in range(rng.integers(1, 3)):
            x0, y0 = rng.integers(0, W - 2), rng.integers(0, H - 2)
            gt.append([x0, y0, rng.integers(x0 + 1, W + 1), rng.integers(y0 + 1, H + 1)])
        region = np.zeros((H, W), bool)
        for x0, y0, x1, y1 in gt: region[y0:y1, x0:x1] = True
        dist = ndimage.distance_transform_edt(~region)
        y, x = np.unravel_index(np.argmax(m), m.shape)
        maps.append(torch.from_numpy(m)); gts.append(gt); want.append(float(dist[y, x] <= 15))
    assert pointing_hits(maps, gts).tolist() == want
    assert 0 < sum(want) < len(want)

# ---------------------------------------------------------------------------------------------------------------
# BoxAcc / MaxBoxAcc / MaxBoxAccV2 (Choe et al. 2020).

def _two_blocks():
    "10x10: block A (3x3, 0.805), block B (2x3, 1.0, touching the right border); min 0 and max 1 so normalising changes nothing"
    m = torch.zeros(10, 10)
    m[2:5, 1:4] = .805
    m[7:9, 7:10] = 1.
    return m, [1, 2, 4, 5], [7, 7, 10, 9]

def test_map_boxes_by_hand():
    m, A, B = _two_blocks()
    got = [b.tolist() for b in map_boxes(m, [0, .5, .805, .806, .9, 1.0, 1.01])]
    assert got == [[[0, 0, 10, 10]], [A], [A], [B], [B], [B], []]
    assert [b.tolist() for b in map_boxes(m, [.5, .9], all_components=True)] == [[A, B], [B]]
    assert [len(b) for b in map_boxes(torch.zeros(10, 10), [0, .5])] == [0, 0]          # empty map: no box
    assert [len(b) for b in map_boxes(torch.full((10, 10), 3.), [0, .5])] == [0, 0]      # constant map: no box
    diag = torch.zeros(5, 5); diag[1, 1] = diag[2, 2] = 1.
    assert map_boxes(diag, [.5])[0].tolist() == [[1, 1, 3, 3]]                          # 8-connected
    corner = torch.zeros(6, 8); corner[:3, 5:] = 1.
    assert map_boxes(corner, [.5])[0].tolist() == [[5, 0, 8, 3]]                        # touches top and right borders
    half = torch.rand(6, 8, generator=torch.Generator().manual_seed(0)); half[:, :4] = float('nan')
    assert map_boxes(half, [0])[0].tolist() == [[4, 0, 8, 6]]                          # unseen pixels are never in a box

def test_box_acc_curve_by_hand():
    m, A, B = _two_blocks()
    c = box_acc_curve([m], [[A]])
    assert c.shape == (1, 100)
    assert len(cam_thresholds()) == 100 and cam_thresholds(.25).tolist() == [0, .25, .5, .75]
    assert (box_acc_curve([m], [[A]], thresholds=.25) == c[:, ::25]).all()      # a step, or the thresholds themselves
    # tau = 0: whole image, IoU 9/100 -> miss; 0.01..0.80 (<= 0.805): A is the largest -> hit; 0.81..0.99: only B -> miss
    want = np.zeros(100); want[1:81] = 100
    np.testing.assert_array_equal(c[0].numpy(), want)
    assert box_acc([m], [[A]], 0.0, iou_threshold=0.09) == 100. and box_acc([m], [[A]], 0.0, iou_threshold=0.1) == 0.
    assert max_box_acc([m], [[A]]) == 100.
    assert box_acc([m], [[B]], .5) == 0. and box_acc([m], [[B]], .9) == 100.
    assert box_acc([m], [[B]], .5, all_components=True) == 100.                 # V2 sees every component
    assert box_acc([m], [[[20, 20, 25, 25]]], .5) == 0.                         # no overlap
    assert box_acc([m], [[[20, 20, 25, 25], A]], .5) == 100.                   # multiple GT: the best one counts

def test_box_acc_empty_maps_and_skipped_images():
    m, A, B = _two_blocks()
    z = torch.zeros(10, 10)
    assert max_box_acc([m, z], [[A], [A]]) == 50.                    # the empty map misses at every threshold
    assert max_box_acc([m, torch.full((10, 10), .2)], [[A], [[0, 0, 10, 10]]]) == 50.   # constant map: no box even at tau=0
    assert max_box_acc([m, z], [[A], None]) == 100.                  # no ground truth: skipped
    assert max_box_acc([m, z], [[A], []]) == 100.
    with pytest.raises(ValueError, match='no map has a ground-truth box'): max_box_acc([m], [None])

def test_max_box_acc_v2_by_hand():
    m = torch.zeros(20, 20); m[:10, :10] = 1.
    gt = [[0, 0, 10, 5]]      # CAM box (0,0,10,10) for tau in (0, 1]: IoU 50/100 = 0.5; tau = 0: whole image, 50/400
    c = box_acc_curve([m], [gt], iou_thresholds=(.3, .5, .7), all_components=True)
    assert c.amax(1).tolist() == [100., 100., 0.]                 # IoU exactly 0.5 counts at delta = 0.5
    assert max_box_acc_v2([m], [gt]) == pytest.approx(200/3)
    assert max_box_acc([m], [gt]) == 100. and max_box_acc([m], [gt], iou_threshold=.51) == 0.
    # two maps: (100, 100, 0) and (0, 0, 0) -> mean over delta of (50, 50, 0)
    assert max_box_acc_v2([m, m], [gt, [[15, 15, 20, 20]]]) == pytest.approx(100/3)

def _brute_curve(maps, gts, thresholds, deltas, all_components):
    "Independent BoxAcc: scipy's labelling of the whole map, boxes from np.nonzero, IoU by pixel arithmetic in Python"
    hits, n = np.zeros((len(deltas), len(thresholds))), 0
    for m, gt in zip(maps, gts):
        if not gt: continue
        n += 1
        a = m.numpy().astype(np.float64)
        ok = np.isfinite(a)
        lo, hi = a[ok].min(), a[ok].max()
        s = np.where(ok, (np.where(ok, a, lo) - lo) / (hi - lo), -1.)
        for k, t in enumerate(thresholds):
            lab, nl = ndimage.label(ok & (s >= t), structure=np.ones((3, 3)))
            comps = []
            for l in range(1, nl + 1):
                ys, xs = np.nonzero(lab == l)
                comps.append((len(ys), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
            if not comps: continue
            if not all_components: comps = [max(comps, key=lambda c: c[0])]   # max keeps the first of equal areas
            best = 0.
            for _, (x0, y0, x1, y1) in comps:
                for gx0, gy0, gx1, gy1 in gt:
                    iw, ih = max(0, min(x1, gx1) - max(x0, gx0)), max(0, min(y1, gy1) - max(y0, gy0))
                    inter = iw * ih
                    best = max(best, inter / ((x1 - x0) * (y1 - y0) + (gx1 - gx0) * (gy1 - gy0) - inter))
            for d, delta in enumerate(deltas): hits[d, k] += best >= delta
    return 100 * hits / n

def test_box_acc_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    maps, gts = [], []
    for i in range(12):
        H, W = 24 + 3*i, 40 - 2*i
        m = F.interpolate(torch.rand(1, 1, 4, 5, generator=g), size=(H, W), mode='bilinear')[0, 0]
        m = m + 0.05*torch.rand(H, W, generator=g)               # speckle: many components at some thresholds
        if i % 3 == 0: m[:, :W//4] = float('nan')
        gts.append([] if i % 5 == 4 else [[2, 3, W//2, H//2]] + ([[W//2, H//3, W, H]] if i % 2 else []))
        maps.append(m)
    thr, deltas = np.arange(0, 1, 0.05), (0.3, 0.5, 0.7)
    both = box_acc_curves(maps, gts, thr, deltas)
    for allc in (False, True):
        got = box_acc_curve(maps, gts, thr, deltas, all_components=allc).numpy()
        np.testing.assert_allclose(got, _brute_curve(maps, gts, thr, deltas, allc))
        np.testing.assert_array_equal(both[int(allc)].numpy(), got)
    assert 0 < got.max() <= 100

def test_max_box_acc_is_fast():
    "100 maps at about 230x260, 100 thresholds: seconds, not minutes"
    g = torch.Generator().manual_seed(0)
    maps = [F.interpolate(torch.rand(1, 1, 7, 7, generator=g), size=(224 + i % 5 * 10, 256 - i % 3 * 16), mode='bilinear')[0, 0] for i in range(100)]
    gts = [[[40, 50, 120, 150]]]*100
    t = time.perf_counter()
    c1, c2 = box_acc_curves(maps, gts)                 # both variants, 3 IoU thresholds, from one pass
    dt = time.perf_counter() - t
    assert c1.shape == c2.shape == (3, 100) and (c2 >= c1).all()   # all boxes include the largest
    assert dt < 60, f"MaxBoxAcc and MaxBoxAccV2 on 100 maps took {dt:.1f} s"

# ---------------------------------------------------------------------------------------------------------------
# PxAP against scikit-learn's average_precision_score. sklearn defines AP = sum_n (R_n - R_{n-1}) P_n over the
# distinct score thresholds, which is Choe et al.'s PxAP formula, so the exact path (thresholds=None) must agree to
# float precision. The default binned path (Choe et al.'s histograms) is the exact AP of scores rounded down to a
# threshold, which sklearn computes on those rounded scores.

def _norm(m):
    a = m.numpy().astype(np.float64)
    ok = np.isfinite(a)
    return np.where(ok, (np.where(ok, a, 0) - a[ok].min()) / (a[ok].max() - a[ok].min()), 0.)

def _random_set(seed, quantise=None):
    g = torch.Generator().manual_seed(seed)
    maps, masks = [], []
    for i in range(6):
        H, W = 20 + 4*i, 33 - 2*i
        m = F.interpolate(torch.rand(1, 1, 3, 4, generator=g), size=(H, W), mode='bilinear')[0, 0] + 0.3*torch.rand(H, W, generator=g)
        if quantise: m = (m*quantise).round()/quantise          # many ties
        if i == 2: m[:3] = float('nan')
        mask = F.interpolate(torch.rand(1, 1, 3, 4, generator=g), size=(H, W), mode='nearest')[0, 0] > .6
        if i == 4: mask[:] = False                               # a negative image: background pixels only
        maps.append(m); masks.append(mask)
    return maps, masks

@pytest.mark.parametrize('seed, quantise', [(0, None), (1, None), (2, 5), (3, 20)])
def test_pxap_exact_matches_sklearn(seed, quantise):
    maps, masks = _random_set(seed, quantise)
    s = np.concatenate([_norm(m).ravel() for m in maps])
    y = np.concatenate([k.numpy().ravel() for k in masks])
    want = 100 * average_precision_score(y, s)
    assert pxap(maps, masks, thresholds=None) == pytest.approx(want, abs=1e-9)
    assert 100*average_precision(torch.from_numpy(s), torch.from_numpy(y)) == pytest.approx(want, abs=1e-9)

def test_pxap_binned_matches_sklearn_on_rounded_scores():
    g = torch.Generator().manual_seed(5)
    maps, masks = [], []
    for i in range(4):
        q = torch.randint(0, 100, (16, 18), generator=g).double()
        m = (q + 0.5) / 100                   # well inside a bin of width 0.01: no rounding ambiguity
        m[0, 0], m[0, 1] = 0., 1.             # min 0 and max 1: normalising changes nothing
        maps.append(m); masks.append(torch.rand(16, 18, generator=g) < q.float()/150)
    s = np.concatenate([m.numpy().ravel() for m in maps])
    y = np.concatenate([k.numpy().ravel() for k in masks])
    rounded = np.minimum(np.floor(s*100), 99)   # the threshold index each score reaches; 1.0 counts at 0.99
    want = 100 * average_precision_score(y, rounded)
    assert pxap(maps, masks) == pytest.approx(want, abs=1e-9)
    assert abs(pxap(maps, masks) - pxap(maps, masks, thresholds=None)) < 2   # close to the exact value

def test_pxap_by_hand_and_errors():
    m = torch.zeros(4, 4); m[:2, :2] = 1.
    assert pxap([m], [m > 0]) == 100. and pxap([m], [m > 0], thresholds=None) == 100.
    # constant map: every pixel scores 0, one operating point at tau=0 with precision = share of positives
    k = torch.zeros(4, 4, dtype=torch.bool); k[0] = True
    assert pxap([torch.full((4, 4), .3)], [k]) == pytest.approx(25.)
    assert average_precision([.9, .8, .7, .1], [1, 0, 1, 0]) == pytest.approx((1 + 2/3)/2)
    with pytest.raises(ValueError, match='no mask has a foreground'): pxap([m], [torch.zeros(4, 4)])
    with pytest.raises(ValueError, match='at least one positive'): pxap([m], [torch.zeros(4, 4)], thresholds=None)
    with pytest.raises(ValueError, match='original'): pxap([m], [torch.zeros(5, 4)])

# ---------------------------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence against torchcam's ClassificationMetric. torchcam: scores = softmax(model(x));
# CAM normalised at layer resolution (min-max, +1e-8), upsampled bilinearly (align_corners=False) to the input;
# O = scores of cam * x; drop = relu(Y - O) / (Y + 1e-7); increase = Y < O; summary = mean over images, as FRACTIONS.
# fastcam reports percentages (the paper's x100) and divides by Y exactly, hence the factor 100 and a 1e-4 tolerance.

def _resnet(seed=0, n=3):
    import torchvision
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=n).eval()

def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()

def test_average_drop_increase_matches_torchcam():
    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric
    model = _resnet(0)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 48, 48)
    ext = GradCAM(model, target_layer='layer3')
    try:
        metric = ClassificationMetric(ext, partial(torch.softmax, dim=-1))
        metric.update(x)
        ref = metric.summary()
        # the maps the metric masked with, made the same way outside it: the metric hands the extractor the SOFTMAX
        # scores, so its Grad-CAM is the gradient of the probability, not of the logit
        up = lambda c: F.interpolate(ext.fuse_cams(c)[:, None], size=(48, 48), mode='bilinear', align_corners=False)[:, 0].detach()
        scores = torch.softmax(model(x), -1)
        idx = scores.argmax(1).tolist()
        maps = up(ext(idx, scores))
        logit_maps = up(ext(idx, model(x)))
    finally:
        ext.remove_hooks()
    drop, inc = average_drop_increase(model, x, maps, torch.tensor(idx))
    assert drop == pytest.approx(100*ref['avg_drop'], abs=1e-4)
    assert inc == pytest.approx(100*ref['conf_increase'])
    assert drop > 0
    # fastcam's own maps (Grad-CAM of the logit), CamResult.upsampled(), are torchcam's up to its 1e-8 guard
    r = cam(model, x, layer='layer3', target=idx)
    torch.testing.assert_close(r.upsampled()[:, 0], logit_maps, atol=1e-5, rtol=1e-4)
    d2, i2 = average_drop_increase(model, x, r.upsampled()[:, 0])      # targets=None: the predicted class
    d3, i3 = average_drop_increase(model, x, logit_maps, torch.tensor(idx))
    assert d2 == pytest.approx(d3, abs=1e-3) and i2 == i3

def test_average_drop_formula_per_item_and_padding():
    "Per item, by hand: Y, O one image at a time; and [B, T] maps with -1 padding give the same values per slot"
    model = _tiny(2)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16)
    maps = torch.rand(3, 2, 16, 16)
    targets = torch.tensor([[0, 2], [1, -1], [2, 0]])
    d, i = average_drop_increase(model, x, maps, targets, batch_size=2, reduce=False)
    assert d.shape == (3, 2) and d[1, 1].isnan() and i[1, 1].isnan()
    for b in range(3):
        for t in range(2):
            c = int(targets[b, t])
            if c < 0: continue
            with torch.no_grad():
                Y = torch.softmax(model(x[b:b+1]), 1)[0, c].item()
                O = torch.softmax(model(x[b:b+1]*maps[b, t]), 1)[0, c].item()
            assert d[b, t].item() == pytest.approx(100*max(0., Y - O)/Y, abs=1e-4)
            assert i[b, t].item() == 100*(Y < O)
    dm, im = average_drop_increase(model, x, maps, targets)
    assert dm == pytest.approx(d[~d.isnan()].mean().item(), abs=1e-4) and im == i[~i.isnan()].mean().item()
    with pytest.raises(ValueError, match='0..1'): average_drop_increase(model, x, 2*maps, targets)
    with pytest.raises(ValueError, match='upsample'): average_drop_increase(model, x, maps[..., :8, :8], targets)

def test_average_drop_activation_options():
    "Sigmoid and 'as given' probabilities: the formula with those probabilities"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, m = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    with torch.no_grad(): Y, O = torch.sigmoid(net(x))[:, 1], torch.sigmoid(net(x*m[:, None]))[:, 1]
    d, _ = average_drop_increase(net, x, m, torch.tensor([1, 1]), activation='sigmoid', reduce=False)
    torch.testing.assert_close(d.float(), 100*(Y - O).clamp(min=0)/Y)
    d2, _ = average_drop_increase(nn.Sequential(net, nn.Sigmoid()), x, m, torch.tensor([1, 1]), activation=None, reduce=False)
    torch.testing.assert_close(d2, d)

# ---------------------------------------------------------------------------------------------------------------
# Deletion / insertion (RISE) against a naive one-image-at-a-time implementation.

def _naive(model, x, m, c, n_steps, start, end):
    "One image, one forward per step: pixels sorted by decreasing map value (stable), the first k*HW//n_steps taken from `end`"
    C, H, W = x.shape
    order = np.argsort(-m.numpy().ravel(), kind='stable')
    fr, ps = [], []
    for k in range(n_steps + 1):
        cnt = k*H*W//n_steps
        img = start.clone().reshape(C, -1)
        idx = torch.from_numpy(order[:cnt].copy())
        img[:, idx] = end.reshape(C, -1)[:, idx]
        with torch.no_grad(): ps.append(torch.softmax(model(img.reshape(1, C, H, W)), 1)[0, c].item())
        fr.append(cnt/(H*W))
    fr, ps = np.array(fr), np.array(ps)
    return fr, ps, float(((ps[1:] + ps[:-1])/2*np.diff(fr)).sum())

@pytest.mark.parametrize('mode', ['deletion', 'insertion'])
def test_perturbation_matches_naive(mode):
    model = _tiny(0)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 12, 10)
    maps = (torch.rand(3, 12, 10)*6).round()/6          # ties: order by position within equal values
    targets = torch.tensor([0, 3, 1])
    n_steps = 7                                          # 120 pixels: steps of 17 or 18
    f, p = perturbation_curves(model, x, maps, targets, mode, n_steps=n_steps, batch_size=5, progress=False)
    aucs = (deletion_auc if mode == 'deletion' else insertion_auc)(model, x, maps, targets, n_steps=n_steps, batch_size=5, progress=False, reduce=False)
    base = torch.zeros_like(x) if mode == 'deletion' else gaussian_blur(x, [11, 11], [5., 5.])
    for b in range(3):
        start, end = (x[b], base[b]) if mode == 'deletion' else (base[b], x[b])
        fr, ps, auc = _naive(model, x[b], maps[b], int(targets[b]), n_steps, start, end)
        np.testing.assert_allclose(f.numpy(), fr)
        np.testing.assert_allclose(p[b].numpy(), ps, atol=1e-5)
        assert aucs[b].item() == pytest.approx(auc, abs=1e-5)
    assert f[0] == 0 and f[-1] == 1

def test_perturbation_is_batched_across_items():
    "All (item, step) inputs go through the model in chunks of batch_size, not one image per forward"
    model = _tiny(1)
    sizes = []
    h = model.register_forward_pre_hook(lambda mod, inp: sizes.append(inp[0].shape[0]))
    try:
        x, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
        deletion_auc(model, x, maps, torch.tensor([0, 1, 2]), n_steps=9, batch_size=8, progress=False)
    finally: h.remove()
    # one forward of the batch itself (probabilities, targets), then 3 items x 10 steps = 30 inputs in chunks of 8
    assert sizes == [3, 8, 8, 8, 6]

def test_perturbation_targets_padding_baselines():
    model = _tiny(2)
    torch.manual_seed(4)
    x, maps = torch.randn(2, 3, 9, 9), torch.rand(2, 2, 9, 9)
    targets = torch.tensor([[1, 2], [3, -1]])
    f, p = perturbation_curves(model, x, maps, targets, 'insertion', n_steps=4, baseline='zeros', progress=False)
    assert p.shape == (2, 2, 5) and p[1, 1].isnan().all()
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        _, ps, _ = _naive(model, x[b], maps[b, t], int(targets[b, t]), 4, torch.zeros_like(x[b]), x[b])
        np.testing.assert_allclose(p[b, t].numpy(), ps, atol=1e-5)
    a = insertion_auc(model, x, maps, targets, n_steps=4, baseline='zeros', progress=False)
    assert a == pytest.approx(np.nanmean(curve_auc(f, p).numpy()))
    # a baseline tensor broadcast over the batch, and a function of the batch
    _, p1 = perturbation_curves(model, x, maps[:, 0], targets[:, 0], n_steps=4, baseline=torch.full((3, 1, 1), .5), progress=False)
    _, p2 = perturbation_curves(model, x, maps[:, 0], targets[:, 0], n_steps=4, baseline=lambda xb: torch.full_like(xb, .5), progress=False)
    torch.testing.assert_close(p1, p2)
    _, ps, _ = _naive(model, x[0], maps[0, 0], 1, 4, x[0], torch.full_like(x[0], .5))
    np.testing.assert_allclose(p1[0].numpy(), ps, atol=1e-5)
    torch.testing.assert_close(blur(x), gaussian_blur(x, [11, 11], [5., 5.]))
    with pytest.raises(ValueError, match="unknown mode"): perturbation_curves(model, x, maps, targets, 'remove', progress=False)
    with pytest.raises(ValueError, match="targets=None"): perturbation_curves(model, x, maps, None, progress=False)

# ---------------------------------------------------------------------------------------------------------------
# Run-length masks in the SIIM pneumothorax style: column-major, relative starts.
# The 4x5 mask below, pixels numbered down each column (index = x*4 + y):
#     . # # . .        0  4  8 12 16
#     . # . . #        1  5  9 13 17
#     . . . . #        2  6 10 14 18
#     # . . . .        3  7 11 15 19
# Foreground: 3, 4, 5 | 8 | 17, 18 -> runs (3, len 3), (8, len 1), (17, len 2); relative starts: 3, 8-6=2, 17-9=8.

HAND = np.array([[0, 1, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], bool)
HAND_RLE = '3 3 2 1 8 2'

def siim_rle2mask(rle, width, height):
    "The SIIM-ACR challenge's decoder (mask_functions.py), verbatim apart from names"
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position+lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height).T

def loop_encode(mask):
    "A plain loop encoder: down each column, left to right; start = background pixels since the last run"
    H, W = mask.shape
    out, gap, run = [], 0, 0
    for x in range(W):
        for y in range(H):
            if mask[y, x]: run += 1
            else:
                if run: out += [gap, run]; gap, run = 0, 0
                gap += 1
    if run: out += [gap, run]
    return ' '.join(map(str, out)) if out else '-1'

def test_rle_hand_mask():
    assert rle_encode(HAND) == HAND_RLE
    assert rle_decode(HAND_RLE, (4, 5)).numpy().tolist() == HAND.tolist()
    assert (siim_rle2mask(HAND_RLE, 5, 4) > 0).tolist() == HAND.tolist()
    assert loop_encode(HAND) == HAND_RLE

def test_rle_round_trip_and_siim_reference():
    rng = np.random.default_rng(0)
    for H, W in [(7, 11), (11, 7), (1, 9), (16, 16)]:
        for p in (.1, .5, .9):
            m = rng.random((H, W)) < p
            s = rle_encode(torch.from_numpy(m))
            assert s == loop_encode(m)
            assert (rle_decode(s, (H, W)).numpy() == m).all()
            if s != '-1': assert ((siim_rle2mask(s, W, H) > 0) == m).all()
    full, empty = np.ones((3, 4), bool), np.zeros((3, 4), bool)
    assert rle_encode(full) == '0 12' and (rle_decode('0 12', (3, 4)).numpy() == full).all()
    last = empty.copy(); last[-1, -1] = True                       # a run that ends at the last pixel
    assert rle_encode(last) == '11 1' and (rle_decode('11 1', (3, 4)).numpy() == last).all()
    assert rle_encode(empty) == '-1'
    for e in ('-1', ' -1', '', None, float('nan')): assert not rle_decode(e, (3, 4)).any()
    with pytest.raises(ValueError, match='pairs'): rle_decode('1 2 3', (3, 4))
    with pytest.raises(ValueError, match='reaches pixel'): rle_decode('10 5', (3, 4))

def test_read_rle_csv_ors_rows(tmp_path):
    # SIIM's CSV header is "ImageId, EncodedPixels", with a space
    (tmp_path/'rle.csv').write_text('ImageId, EncodedPixels\np, 3 3\np, 8 1 8 2\nq, -1\nr,0 1\n')
    masks = read_rle_csv(tmp_path/'rle.csv', shape=(4, 5))
    assert sorted(masks) == ['p', 'q', 'r']
    assert masks['p'].numpy().tolist() == HAND.tolist()
    assert not masks['q'].any() and masks['r'].sum() == 1 and masks['r'][0, 0]
    m2 = read_rle_csv(tmp_path/'rle.csv', shape={'p': (4, 5), 'q': (2, 2), 'r': (5, 4)})
    assert m2['q'].shape == (2, 2) and m2['r'].shape == (5, 4)

# ---------------------------------------------------------------------------------------------------------------
# Ground-truth readers and masks to boxes.

def test_read_boxes_csv_synth(tmp_path):
    from fastcam.synth import make_png_set
    df = make_png_set(tmp_path, n=6, seed=3)
    boxes, labels = read_boxes_csv(tmp_path/'boxes.csv')
    pos = df[df.x0.notna()]
    assert sorted(boxes) == sorted(pos.file)
    for r in pos.itertuples():
        assert boxes[r.file].tolist() == [[int(r.x0), int(r.y0), int(r.x1), int(r.y1)]]
        assert boxes[r.file].dtype == torch.int64 and labels[r.file] == [r.label]

def test_read_boxes_csv_formats(tmp_path):
    (tmp_path/'b.csv').write_text('file,x0,y0,x1,y1\na,1,2,3,4\na,5,6,7,8\nb,,,,\n')
    boxes, labels = read_boxes_csv(tmp_path/'b.csv')
    assert boxes['a'].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and boxes['b'].shape == (0, 4)
    assert labels['a'] == [None, None] and labels['b'] == []
    rsna = pd.DataFrame(dict(patientId=['p', 'p', 'q'], x=[264., 562., None], y=[152., 152., None], width=[213., 256., None], height=[379., 453., None]))
    boxes, _ = read_boxes_csv(rsna, 'patientId', ('x', 'y', 'width', 'height'), fmt='xywh')
    assert boxes['p'].tolist() == [[264, 152, 477, 531], [562, 152, 818, 605]] and boxes['q'].shape == (0, 4)
    with pytest.raises(ValueError, match="are not in the CSV"): read_boxes_csv(rsna)

def test_read_coco(tmp_path):
    coco = dict(images=[dict(id=3, file_name='a.png', width=50, height=40), dict(id=4, file_name='b.png', width=50, height=40)],
                categories=[dict(id=1, name='nodule'), dict(id=2, name='mass')],
                annotations=[dict(id=10, image_id=3, category_id=2, bbox=[10, 20, 30, 15]),
                             dict(id=11, image_id=3, category_id=1, bbox=[0.5, 1.2, 2.0, 2.3]),     # fractional: covered
                             dict(id=12, image_id=3, category_id=1, bbox=[4.0000001, 5, 3.9999999, 5])])  # float noise
    (tmp_path/'ann.json').write_text(json.dumps(coco))
    boxes, labels = read_coco(tmp_path/'ann.json')
    assert boxes['a.png'].tolist() == [[10, 20, 40, 35], [0, 1, 3, 4], [4, 5, 8, 10]]
    assert labels['a.png'] == ['mass', 'nodule', 'nodule']
    assert boxes['b.png'].shape == (0, 4) and labels['b.png'] == []
    assert read_coco(coco, key='id')[0][3].shape == (3, 4)

def test_read_mask_png(tmp_path):
    Image.fromarray(HAND.astype(np.uint8)*255).save(tmp_path/'m.png')
    assert read_mask(tmp_path/'m.png').numpy().tolist() == HAND.tolist()
    rgb = np.zeros((4, 5, 3), np.uint8); rgb[..., 2] = HAND*7           # nonzero in any channel
    Image.fromarray(rgb).save(tmp_path/'rgb.png')
    assert read_mask(tmp_path/'rgb.png').numpy().tolist() == HAND.tolist()

def test_mask_to_boxes():
    # components of HAND (8-connected): {(0,1),(0,2),(1,1)}, {(1,4),(2,4)}, {(3,0)} as (row, col)
    assert mask_to_boxes(HAND).tolist() == [[1, 0, 3, 2], [4, 1, 5, 3], [0, 3, 1, 4]]
    assert mask_to_boxes(HAND, min_area=2).tolist() == [[1, 0, 3, 2], [4, 1, 5, 3]]
    assert mask_to_boxes(HAND, separate=False).tolist() == [[0, 0, 5, 4]]
    d = np.eye(3, dtype=bool)
    assert mask_to_boxes(d).tolist() == [[0, 0, 3, 3]] and len(mask_to_boxes(d, connectivity=1)) == 3
    assert mask_to_boxes(np.zeros((3, 3))).shape == (0, 4) and mask_to_boxes(np.zeros((3, 3)), separate=False).shape == (0, 4)
    # a mask decoded from RLE, then boxed, scores IoU 1 against its own box
    m = rle_decode(rle_encode(HAND), (4, 5))
    assert box_iou(mask_to_boxes(m, separate=False), [[0, 0, 5, 4]]).item() == 1.

def test_threshold_accuracy_on_a_squished_non_square_original():
    "A hand-made 12x12 map of a 96x96 input squished from a 240x360 original: a core at 1 in a ring at 0.6; boxes in original pixels"
    from fastai.vision.augment import Resize
    from fastcam.core import CamResult
    from fastcam.metrics import threshold_accuracy, best_threshold
    m = torch.zeros(1, 1, 12, 12); m[0, 0, 2:8, 3:9] = .6; m[0, 0, 4:6, 5:7] = 1.
    res = CamResult(m, torch.tensor([[0]]), torch.tensor([[1.]]), input_size=(96, 96), orig_sizes=[(240, 360)], geometry=Resize(96, method='squish'))
    # a 12x12 cell is 30 x 20 original pixels (360/12 wide, 240/12 high): the ring spans cells 3..9 x 2..8, the core 5..7 x 4..6
    ring, core = [90, 40, 270, 160], [150, 80, 210, 120]
    acc = threshold_accuracy(res, [[ring]], thresholds=(0.0, 0.3, 0.9))
    assert acc.tolist() == [0., 1., 0.]                        # at 0 the box is the whole image, at 0.9 the core
    assert best_threshold(res, [[core]], thresholds=(0.3, 0.8, 0.95)) == 0.8
    with pytest.raises(ValueError, match='1 items'): threshold_accuracy(res, [[ring], [ring]])
    with pytest.raises(ValueError, match='no item has a ground-truth box'): threshold_accuracy(res, [None])

# --- ROAD (Rong et al. 2022) against pytorch-grad-cam's implementation ---

def _grad_cam_road(model, xb, maps, targets, percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90)):
    "pytorch-grad-cam's ROAD pieces with the imputation noise off: per map, the mean over percentiles of (LeRF - MoRF) / 2 of the softmax probability"
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst, RemoveLeastRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    imp = NoisyLinearImputer(noise=0.)
    tg = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    cams = maps.numpy()
    morf = np.mean([PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, imp))(xb, cams, tg, model, return_diff=False) for p in percentiles], 0)
    lerf = np.mean([PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, imp))(xb, cams, tg, model, return_diff=False) for p in percentiles], 0)
    return (lerf - morf)/2

def test_impute_linear_equals_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from fastcam.metrics import impute_linear
    torch.manual_seed(0)
    img = torch.rand(3, 17, 13)
    rm = torch.rand(17, 13) > 0.6
    rm[0, :] = True                                   # a border row: neighbours outside the image are left out
    ref = NoisyLinearImputer(noise=0.)(img, (~rm).float())
    assert torch.allclose(impute_linear(img, rm), ref, atol=1e-5)
    assert torch.equal(impute_linear(img, rm)[:, ~rm], img[:, ~rm])

def test_road_equals_pytorch_grad_cam():
    from fastcam.metrics import road
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    xb = torch.rand(3, 3, 16, 16)
    maps = torch.rand(3, 16, 16)
    targets = [0, 2, 1]
    ours = road(net, xb, maps, targets, noise=0., progress=False, reduce=False)
    ref = _grad_cam_road(net, xb, maps, targets)
    assert torch.allclose(ours.float(), torch.from_numpy(ref).float(), atol=1e-5)
    assert road(net, xb, maps, targets, progress=False) == road(net, xb, maps, targets, progress=False)   # seeded noise
