"""`protocol='wsol'` against clovaai/wsolevaluation's own evaluation.py, and TorchRay's per-class pointing game.

How the expected values were obtained: evaluation.py, util.py, config.py and data_loaders.py of
clovaai/wsolevaluation (commit 96f4b88, unmodified) were run outside this project, with numpy 2.4 and
opencv-python-headless 5.0 (so `np.float = float` was set first and a stub `munch` module was registered:
evaluation.py predates numpy 1.24). `BoxEvaluator` (multi_contour_eval False and True, iou_threshold_list
[30, 50, 70], cam_threshold_list np.arange(0, 1, 0.01)) got the maps below after inference.py's
normalize_scoremap, with `gt_bboxes` set to the boxes below (no resizing); `MaskEvaluator` got the masks
below through a replaced `get_mask`. Their `compute()` results and per-threshold accuracies are recorded
here; the curves as 16ths (0-g), since there are 16 maps.
"""
import numpy as np, pytest, torch
from fastcam.metrics import max_box_acc, max_box_acc_v2, box_acc_curve, pxap, pointing_game, pointing_hits

pytest.importorskip('cv2', reason="protocol='wsol' needs opencv-python-headless")

def smooth(a, k):
    "Box filter of radius k with edge padding"
    c = np.pad(np.cumsum(np.cumsum(np.pad(a, ((k,k),(k,k)), mode='edge'), 0), 1), ((1,0),(1,0)))
    n = 2*k+1
    return (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n])/n/n

def cases():
    "16 maps of several sizes (random, smoothed, blobs on the true box, holes, a constant one), their true boxes and masks"
    rng = np.random.default_rng(0)
    maps, boxes, masks = [], [], []
    for i in range(16):
        H, W = 40 + 3*i, 60 - 2*i
        x0, y0 = int(rng.integers(0, W//2)), int(rng.integers(0, H//2))
        b = [[x0, y0, x0 + int(rng.integers(6, W//2)), y0 + int(rng.integers(6, H//2))]]
        if i % 3 == 2: b.append([1, 2, W//3, H//4])
        r = rng.random((H, W))
        m = r if i % 4 == 0 else smooth(r, 1 + i % 3)
        if i % 4 in (1, 2, 3):                          # evidence on the first true box, blurred by i
            e = np.zeros((H, W)); x0_, y0_, x1_, y1_ = b[0]; e[y0_:y1_, x0_:x1_] = 1
            if i % 4 == 3: e[(y0_+y1_)//2-1:(y0_+y1_)//2+2, (x0_+x1_)//2-1:(x0_+x1_)//2+2] = 0   # a hole
            m = 0.4*m + smooth(e, i % 5 + 1)
        if i == 5: m = np.zeros((H, W))                 # a constant map: the empty-map rule
        m = np.round(m, 3)
        mk = np.zeros((H, W), np.uint8)
        for x0_, y0_, x1_, y1_ in b: mk[y0_:y1_, x0_:x1_] = 1
        if i % 2 == 0: mk[H-6:H-1, :8] = 255            # an ignore region (wsolevaluation's 255)
        maps.append(m); boxes.append(b); masks.append(mk)
    return maps, boxes, masks

OFFICIAL_LARGEST = [75.0, 68.75, 68.75]      # BoxEvaluator(multi_contour_eval=False).compute(), delta 30, 50, 70
OFFICIAL_MULTI = [93.75, 87.5, 75.0]         # BoxEvaluator(multi_contour_eval=True).compute()
OFFICIAL_PXAP = 35.700545016335695           # MaskEvaluator.compute()
CURVES = {  # per delta, the accuracy at each of the 100 CAM thresholds, in 16ths
 ('largest', 30): '00000000255578abbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbcbcbbbbbbabaaaaa9998555554322200',
 ('largest', 50): '00000000003334466677888bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbaaaaa9776666555543333211111000',
 ('largest', 70): '000000000001111111111111112334555566666888abbbbbbbbbbbbbbbbbbbbbbba987766544444421111111111111111000',
 ('multi', 30):   '00001011255578abbbbbbbbbbbbbbbbbbbcccccefffffffffffffdeeddcccccbbcddccdbbbbbbbbaaaaa9998555554322200',
 ('multi', 50):   '00000000013334466677888bbbbbbbbbbbbbbbcccddeeeeeddccbbbbbccccbbbbbbbbbaaaaa9776666555543333211111000',
 ('multi', 70):   '000000000001111111111111112334555566666888abbbbbccccbbbbbbbbbbbbbba987766544444421111111111111111000'}

def _curve(s): return torch.tensor(['0123456789abcdefg'.index(c)*100/16 for c in s], dtype=torch.float64)

@pytest.fixture(scope='module')
def data(): return cases()

def test_wsol_curves_equal_official(data):
    maps, boxes, _ = data
    for kind, multi in (('largest', False), ('multi', True)):
        c = box_acc_curve(maps, boxes, iou_thresholds=(0.3, 0.5, 0.7), all_components=multi, protocol='wsol')
        for j, d in enumerate((30, 50, 70)):
            assert torch.allclose(c[j], _curve(CURVES[kind, d]), atol=1e-6), (kind, d)

def test_wsol_max_box_acc_equals_official(data):
    maps, boxes, _ = data
    for j, d in enumerate((0.3, 0.5, 0.7)):
        assert max_box_acc(maps, boxes, iou_threshold=d, protocol='wsol') == pytest.approx(OFFICIAL_LARGEST[j], abs=1e-6)
    assert max_box_acc_v2(maps, boxes, protocol='wsol') == pytest.approx(np.mean(OFFICIAL_MULTI), abs=1e-6)

def test_wsol_pxap_equals_official(data):
    maps, _, masks = data
    assert pxap(maps, masks, protocol='wsol') == pytest.approx(OFFICIAL_PXAP, abs=1e-6)

def test_fastcam_conventions_differ_on_the_same_maps(data):
    "The default conventions are not the official ones: the same maps give other numbers (the notebook's table says why)"
    maps, boxes, masks = data
    assert max_box_acc_v2(maps, boxes) != pytest.approx(np.mean(OFFICIAL_MULTI), abs=1e-3)
    fg = [np.where(m == 255, 0, m) for m in masks]
    assert pxap(maps, fg) != pytest.approx(OFFICIAL_PXAP, abs=1e-3)

def test_pxap_ignore_value_leaves_pixels_out():
    "Pixels marked 255 are neither foreground nor background: the hand-computed AP of the rest"
    m = np.array([[.9, .8, .1, .7]]); k = np.array([[1, 0, 0, 255]])
    # without the ignored pixel: scores .9 (pos), .8 (neg), .1 (neg) -> AP = 1.0
    assert pxap([m], [k], thresholds=None, ignore_value=255) == pytest.approx(100.)
    # with it counted as foreground: .9 pos, .8 neg, .7 pos, .1 neg -> AP = 1*1/2 + 2/3*1/2
    assert pxap([m], [k], thresholds=None) == pytest.approx(100*(0.5 + 2/3*0.5))

def test_unknown_protocol_is_one_line():
    with pytest.raises(ValueError, match=r"protocol='wsl'.*'fastcam' or 'wsol'"):
        max_box_acc([np.ones((4, 4))], [[[0, 0, 2, 2]]], protocol='wsl')

def test_pointing_per_class_is_the_mean_of_class_accuracies():
    "By hand: class a 3 hits of 3, class b 0 of 1 -> 50 (pooled: 75)"
    hot = lambda y, x: torch.zeros(30, 30).index_put_((torch.tensor([y]), torch.tensor([x])), torch.tensor(1.))
    maps = [hot(2, 2), hot(2, 2), hot(2, 2), hot(2, 2)]
    near, far = [[0, 0, 5, 5]], [[25, 25, 30, 30]]
    gts = [near, near, near, far]
    assert pointing_game(maps, gts) == pytest.approx(75.)
    assert pointing_game(maps, gts, classes=['a', 'a', 'a', 'b']) == pytest.approx(50.)
    assert pointing_game(maps, gts, classes=['a', 'a', 'a', 'b'], difficult=[False, False, True, True]) == pytest.approx(50.)
    assert pointing_game(maps, gts, classes=['a', 'a', 'a', 'b'], difficult=[True, True, True, False]) == pytest.approx(100.)

def test_torchray_point_and_strict_tolerance():
    "A flat top: TorchRay's argmax is the first pixel in raster order; fastcam wants every maximum inside"
    m = torch.zeros(40, 40); m[0, 0] = m[39, 39] = 1.
    box = [[0, 0, 4, 4]]
    assert pointing_hits([m], [box]).item() == 0.
    assert pointing_game([m], [box], protocol='torchray', classes=['x']) == pytest.approx(100.)
    x = torch.zeros(40, 40); x[0, 0] = 1.
    assert pointing_game([x], [[[15, 0, 20, 5]]]) == pytest.approx(100.)                                 # 15 px: a hit (<=)
    assert pointing_game([x], [[[15, 0, 20, 5]]], protocol='torchray', classes=['x']) == pytest.approx(0.)  # TorchRay: < 15
