"Boxes in original pixels against hand-computed geometry and against fastai's own forward transforms (marker images through real DataLoaders)."
import inspect, math, os
os.environ.setdefault('MPLBACKEND', 'Agg')
from fractions import Fraction
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
import fastai.vision.core as fvc
from fastai.torch_core import retain_type
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, BBoxBlock, BBoxLblBlock, IndexSplitter, Resize, RandomResizedCrop,
                               CropPad, OldRandomCrop, RandomResizedCropGPU, aug_transforms, Transform, TensorBBox, LabeledBBox)
from fastcam.core import CamResult
from fastcam.boxes import (InputGeometry, input_geometry, maps_to_original, cell_to_original, peak_boxes, threshold_boxes, cam_boxes,
                           show_boxes, box_evidence)

# ---------------------------------------------------------------------------------------------------------------
# Exact mapping, by hand. Model input 224x224, map 7x7: one map cell is 32x32 input pixels.
# The geometry of fastai's Resize(224) at validation, worked out from its source for the two orientations:
#   384x288 (rows x cols), squish: the whole image -> 224x224: rows x 384/224 = 12/7, cols x 288/224 = 9/7
#   384x288, crop: m = min(288/224, 384/224) = 288/224, window 288x288 at tl = (0, int(0.5*(384-288))) = (0, 48):
#              cols: 0 + 9/7*u, rows: 48 + 9/7*u
#   384x288, pad:  m = max(...) = 384/224, window 384x384 at tl = (int(0.5*(288-384)), 0) = (-48, 0):
#              cols: -48 + 12/7*u, rows: 0 + 12/7*u
#   288x384: the same with rows and columns swapped.
# Each entry: (rows: (a, b), cols: (a, b)) with original = a + b*input, in pixel-edge coordinates.
F = Fraction
HAND = {
    ('squish', (384, 288)): ((0, F(12, 7)), (0, F(9, 7))),
    ('crop',   (384, 288)): ((48, F(9, 7)), (0, F(9, 7))),
    ('pad',    (384, 288)): ((0, F(12, 7)), (-48, F(12, 7))),
    ('squish', (288, 384)): ((0, F(9, 7)), (0, F(12, 7))),
    ('crop',   (288, 384)): ((0, F(9, 7)), (48, F(9, 7))),
    ('pad',    (288, 384)): ((-48, F(12, 7)), (0, F(12, 7))),
}

# Peak: the hot cell (2, 5) covers input rows [64, 96) and columns [160, 192). The original pixels whose centres
# (p + 0.5) fall in [a + b*64, a + b*96) are p in [ceil(a + b*64 - 1/2), ceil(a + b*96 - 1/2)). Worked out:
#   squish 384x288: rows [109.71, 164.57) -> 110..164; cols [205.71, 246.86) -> 206..246
#   crop   384x288: rows 48+[82.29, 123.43) = [130.29, 171.43) -> 130..170; cols as squish
#   pad    384x288: rows as squish; cols -48+[274.29, 329.14) = [226.29, 281.14) -> 226..280
#   squish 288x384: rows [82.29, 123.43) -> 82..122; cols [274.29, 329.14) -> 274..328
#   crop   288x384: rows as squish; cols 48+[205.71, 246.86) = [253.71, 294.86) -> 254..294
#   pad    288x384: rows -48+[109.71, 164.57) = [61.71, 116.57) -> 62..116; cols as squish
PEAK = {('squish', (384, 288)): (206, 110, 247, 165), ('crop', (384, 288)): (206, 130, 247, 171),
        ('pad', (384, 288)): (226, 110, 281, 165), ('squish', (288, 384)): (274, 82, 329, 123),
        ('crop', (288, 384)): (254, 82, 295, 123), ('pad', (288, 384)): (274, 62, 329, 117)}

# Threshold: cells (2..3, 4..5) are 1, the rest 0. Bilinear (align_corners=False) makes the map 1 between the block's
# cell centres and fall linearly to 0 at the neighbouring centres, 32 input px away, so it is >= 0.7 within 0.3 cells
# (9.6 px) of the block: input rows [2*32+16-9.6, 3*32+16+9.6] = [70.4, 121.6], columns [134.4, 185.6] (both crossings
# lie in linear pieces of the map, so the 224 px intermediate adds no error). The original pixels whose centres map
# in there: p from ceil(a + b*lo - 1/2) to floor(a + b*hi - 1/2), i.e. the half-open end is that + 1. Worked out:
#   squish 384x288: rows 70.4*12/7 = 120.69 .. 121.6*12/7 = 208.46 -> 121..207; cols 172.8 .. 238.63 -> 173..238
#   crop   384x288: rows 48+90.51 = 138.51 .. 48+156.34 = 204.34 -> 139..203; cols as squish
#   pad    384x288: rows as squish; cols -48+230.4 = 182.4 .. -48+318.17 = 270.17 -> 182..269
#   squish 288x384: rows 90.51 .. 156.34 -> 91..155; cols 230.4 .. 318.17 -> 230..317
#   crop   288x384: rows as squish; cols 48+172.8 = 220.8 .. 48+238.63 = 286.63 -> 221..286
#   pad    288x384: rows -48+120.69 = 72.69 .. -48+208.46 = 160.46 -> 73..159; cols as squish
THRESH = {('squish', (384, 288)): (173, 121, 239, 208), ('crop', (384, 288)): (173, 139, 239, 204),
          ('pad', (384, 288)): (182, 121, 270, 208), ('squish', (288, 384)): (230, 91, 318, 156),
          ('crop', (288, 384)): (221, 91, 287, 156), ('pad', (288, 384)): (230, 73, 318, 160)}

CASES = sorted(HAND)

def _hand_peak(rows, cols):
    (ay, by), (ax, bx) = rows, cols
    lo = lambda a, b, u: math.ceil(a + b*u - F(1, 2))
    return lo(ax, bx, 160), lo(ay, by, 64), lo(ax, bx, 192), lo(ay, by, 96)

def _hand_thresh(rows, cols):
    (ay, by), (ax, bx) = rows, cols
    lo = lambda a, b, u: math.ceil(a + b*u - F(1, 2))
    hi = lambda a, b, u: math.floor(a + b*u - F(1, 2)) + 1
    return lo(ax, bx, F(672, 5)), lo(ay, by, F(352, 5)), hi(ax, bx, F(928, 5)), hi(ay, by, F(608, 5))

def test_hand_tables_agree_with_the_formulas():
    "The worked-out numbers above and the formulas from the hand geometry say the same"
    for k in CASES:
        assert _hand_peak(*HAND[k]) == PEAK[k], k
        assert _hand_thresh(*HAND[k]) == THRESH[k], k

def _peak_map():
    m = torch.rand(7, 7, generator=torch.Generator().manual_seed(0)) * 0.3
    m[2, 5] = 2.
    return m

def _block_map():
    m = torch.zeros(7, 7); m[2:4, 4:6] = 1.
    return m

@pytest.mark.parametrize('method,orig', CASES)
def test_peak_box_is_exact(method, orig):
    g = Resize(224, method=method)
    assert cell_to_original(2, 5, (7, 7), orig, g) == PEAK[method, orig]
    b, s = peak_boxes(_peak_map(), orig, g)
    assert b.tolist() == [list(PEAK[method, orig])] and s.tolist() == [1.0]

@pytest.mark.parametrize('method,orig', CASES)
def test_threshold_box_is_exact(method, orig):
    mo = maps_to_original(_block_map(), orig, Resize(224, method=method))
    assert tuple(mo.shape) == orig
    b, s = threshold_boxes(mo, threshold=0.7)
    assert b.tolist() == [list(THRESH[method, orig])]
    assert s.tolist() == pytest.approx([1.0])

@pytest.mark.parametrize('method,orig', CASES)
def test_geometry_matches_hand(method, orig):
    (h, w), rows, cols = input_geometry(Resize(224, method=method)).transform(orig)
    assert (h, w) == (224, 224) and (rows, cols) == HAND[method, orig]

@pytest.mark.parametrize('method,orig', CASES)
def test_cam_boxes_both_modes(method, orig):
    maps = torch.stack([_peak_map(), _block_map()])[:, None]              # 2 items, 1 target each
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    res = CamResult(maps, torch.tensor([[1], [0]]), probs, vocab=['normal', 'nodule'], input_size=(224, 224))
    g = Resize(224, method=method)
    pk = cam_boxes(res, orig, g, mode='peak')
    assert list(pk.columns) == ['item', 'target', 'class', 'label', 'prob', 'x0', 'y0', 'x1', 'y1', 'score', 'reason']
    assert tuple(pk.loc[pk.item == 0, ['x0', 'y0', 'x1', 'y1']].iloc[0]) == PEAK[method, orig]
    assert pk.loc[pk.item == 0, 'label'].iloc[0] == 'nodule' and pk.loc[pk.item == 0, 'prob'].iloc[0] == pytest.approx(0.8)
    th = cam_boxes(res, [orig, orig], g, threshold=0.7)   # THRESH was worked out at 0.7
    row = th[th.item == 1].iloc[0]
    assert tuple(row[['x0', 'y0', 'x1', 'y1']]) == THRESH[method, orig]
    assert (row['class'], row['label'], row['prob']) == (0, 'normal', pytest.approx(0.9))

def test_cam_boxes_checks_input_size_and_sizes():
    res = CamResult(_peak_map()[None, None], torch.tensor([[0]]), torch.tensor([[1.]]), input_size=(128, 128))
    with pytest.raises(ValueError, match=r'\(128, 128\)'): cam_boxes(res, (384, 288), Resize(224))
    with pytest.raises(ValueError, match='orig_sizes'): cam_boxes(res, [(384, 288), (10, 10), (5, 5)], Resize(128))
    with pytest.raises(ValueError, match='mode'): cam_boxes(res, (384, 288), Resize(128), mode='box')
    padded = CamResult(torch.zeros(1, 2, 7, 7), torch.tensor([[0, -1]]), torch.tensor([[1.]]), input_size=(224, 224))
    nobox = cam_boxes(padded, (384, 288), Resize(224))              # constant map: no box; padding target skipped
    assert len(nobox[nobox.x0.notna()]) == 0 and nobox[['target', 'reason']].values.tolist() == [[0, 'no region']]

def test_cells_tile_the_original_and_padding_is_excluded():
    for method in ('squish', 'crop', 'pad'):
        for orig in ((384, 288), (288, 384), (301, 97)):
            cnt = np.zeros(orig, int)
            for i in range(7):
                for j in range(7):
                    x0, y0, x1, y1 = cell_to_original(i, j, (7, 7), orig, Resize(224, method=method))
                    assert 0 <= x0 <= x1 <= orig[1] and 0 <= y0 <= y1 <= orig[0]
                    cnt[y0:y1, x0:x1] += 1
            seen = input_geometry(Resize(224, method=method)).window(orig)
            inside = np.zeros(orig, bool)
            inside[max(0, math.ceil(seen[1]-F(1, 2))):math.ceil(seen[3]-F(1, 2)), max(0, math.ceil(seen[0]-F(1, 2))):math.ceil(seen[2]-F(1, 2))] = True
            assert (cnt[inside] == 1).all() and (cnt[~inside] == 0).all(), (method, orig)
    # 384x192 padded to 384x384: 96 px each side = 56 input px, so column 0 (input 0..32) is all padding
    assert cell_to_original(3, 0, (7, 7), (384, 192), Resize(224, method='pad'))[0:3:2] == (0, 0)

def test_peak_skips_cells_in_the_padding():
    m = torch.zeros(7, 7); m[3, 0] = 5.; m[3, 3] = 1.
    b, s = peak_boxes(m, (384, 192), Resize(224, method='pad'))
    # column 3: input [96, 128) -> -96 + 12/7*[96, 128) = [68.57, 123.43) -> 69..122; row 3: [164.57, 219.43) -> 165..218
    assert b.tolist() == [[69, 165, 123, 219]] and s.tolist() == pytest.approx([0.2])

def test_crop_fill_marks_unseen_pixels():
    mo = maps_to_original(torch.ones(7, 7), (384, 288), Resize(224, method='crop'), fill=float('nan'))
    assert mo[:48].isnan().all() and mo[336:].isnan().all() and (mo[48:336] == 1).all()
    assert (maps_to_original(torch.ones(7, 7), (384, 288), Resize(224, method='crop'))[:48] == 0).all()

def test_fastai_rounding_is_repeated():
    "fastai's int(m*size) loses a pixel for some sizes; the inverse must see the same window"
    w = 61
    m = min(w/224, 288/224)
    assert int(m*224) == 60                                       # the float product is 60.99999...
    assert input_geometry(Resize(224, method='crop')).window((288, w)) == (0, 114, 60, 174)

# ---------------------------------------------------------------------------------------------------------------
# End to end: fastai's own forward transforms on a marker image, inverted by fastcam.

def _marker_file(path, H, W, box):
    a = np.zeros((H, W, 3), np.uint8); x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    f = path/f'marker_{H}x{W}.png'; Image.fromarray(a).save(f)
    return f

def _dls(f, item, batch=None):
    return DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda o: 'a', splitter=IndexSplitter([1]),
                     item_tfms=item, batch_tfms=batch).dataloaders([f, f], bs=1, num_workers=0)

def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max()+1, ys.max()+1])

MARKERS = {(384, 288): (100, 200, 150, 260), (288, 384): (200, 100, 260, 150)}
PIPES = {'squish': (Resize(224, method='squish'), None), 'crop': (Resize(224, method='crop'), None),
         'pad-zeros': (Resize(224, method='pad', pad_mode='zeros'), None),
         'pad-reflection': (Resize(224, method='pad', pad_mode='reflection'), None),
         'pad-rect': (Resize((160, 240), method='pad', pad_mode='zeros'), None),
         'rrc': (RandomResizedCrop(224), None), 'croppad': (CropPad(300), None),
         'batch-resize': (Resize(256, method='squish'), aug_transforms(size=224)),
         'presizing': (Resize(460), aug_transforms(size=224, min_scale=0.75)),
         'none': (None, None)}

@pytest.mark.parametrize('orig', sorted(MARKERS))
@pytest.mark.parametrize('pipe', sorted(PIPES))
def test_inverse_matches_fastai_forward(tmp_path, orig, pipe):
    box = MARKERS[orig]
    f = _marker_file(tmp_path, *orig, box)
    dls = _dls(f, *PIPES[pipe])
    xb, = dls.test_dl([f]).one_batch()
    x = xb[0, 0].float()                                          # the model's input, values 0..1
    g = input_geometry(dls)
    assert g.input_size(orig) == tuple(x.shape)
    # 1. the input itself, as a map at input resolution, back in original pixels
    back = maps_to_original(x, orig, dls, input_size=x.shape)
    assert np.abs(_bbox(back.numpy() > 0.5) - box).max() <= 1
    # 2. the marker's input pixels, as cells of an input-sized map
    rows, cols = np.nonzero(x.numpy() > 0.5)
    tl = cell_to_original(rows.min(), cols.min(), x.shape, orig, dls)
    br = cell_to_original(rows.max(), cols.max(), x.shape, orig, dls)
    assert np.abs(np.array([tl[0], tl[1], br[2], br[3]]) - box).max() <= 2
    # 3. negative control: pretending the pipeline squished would miss the marker (when it did not squish)
    if pipe in ('crop', 'pad-zeros', 'pad-reflection', 'pad-rect', 'rrc', 'croppad', 'presizing'):
        wrong = maps_to_original(x, orig, Resize(x.shape, method='squish'))
        assert np.abs(_bbox(wrong.numpy() > 0.5) - box).max() > 2

@pytest.mark.parametrize('tfm,left', [(Resize(385, method='pad', pad_mode='zeros'), 48), (CropPad(385), 49)])
def test_odd_padding_side_matches_fastai(tmp_path, tfm, left):
    "97 px of padding at scale 1: Resize's int(0.5*(288-385)) = -48 puts 48 px left, CropPad's (288-385)//2 = -49 puts 49"
    box = (100, 200, 150, 260)
    f = _marker_file(tmp_path, 385, 288, box)
    x = _dls(f, tfm).test_dl([f]).one_batch()[0][0, 0]
    assert tuple(x.shape) == (385, 385)
    assert _bbox(x.numpy() > 0.5).tolist() == [100+left, 200, 150+left, 260]           # fastai's forward, by hand
    assert input_geometry(tfm).window((385, 288))[0] == -left
    back = maps_to_original(x, (385, 288), tfm)
    assert _bbox(back.numpy() > 0.5).tolist() == list(box)                              # exact: no resampling
    assert cell_to_original(200, 100+left, (385, 385), (385, 288), tfm) == (100, 200, 101, 201)

RAMPS = {'resize-224': (aug_transforms(size=224), 0.02), 'resize-100x120': (aug_transforms(size=(100, 120)), 0.02),
         'rrc-gpu': ([RandomResizedCropGPU(160, valid_scale=0.8)], 0.02),
         'area-preshrink': (aug_transforms(size=96), 0.6)}      # fastai shrinks by 'area' first: modelled to within half a pixel

@pytest.mark.parametrize('name', sorted(RAMPS))
def test_batch_resize_geometry_subpixel(tmp_path, name):
    "A ramp image (red = column, green = row) through fastai's GPU batch resize: each input pixel's value is where it sampled the original"
    H, W = 200, 256
    a = np.zeros((H, W, 3), np.uint8); a[..., 0] = np.arange(W)[None]; a[..., 1] = np.arange(H)[:, None]
    f = tmp_path/'ramp.png'; Image.fromarray(a).save(f)
    tfms, tol = RAMPS[name]
    dls = _dls(f, None, tfms)
    x = dls.test_dl([f]).one_batch()[0][0].float()*255
    (h, w), (ay, by), (ax, bx) = input_geometry(dls).transform((H, W))
    assert (h, w) == tuple(x.shape[-2:])
    cols = float(ax) + float(bx)*(np.arange(w) + 0.5) - 0.5        # pixel index of the original sampled by each input column
    rows = float(ay) + float(by)*(np.arange(h) + 0.5) - 0.5
    assert np.abs(x[0].mean(0).numpy() - cols).max() < tol
    assert np.abs(x[1].mean(1).numpy() - rows).max() < tol

def test_geometry_errors_name_the_transform():
    class MyResize(Transform):
        def __init__(self, size): self.size = size
    class Brighten(Transform):
        def encodes(self, x): return x
    with pytest.raises(ValueError, match='OldRandomCrop') as e: input_geometry([Resize(224), OldRandomCrop(100)])
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='MyResize'): input_geometry(MyResize(100))
    assert len(input_geometry(Brighten()).steps) == 0
    with pytest.raises(ValueError, match='valid_scale'): input_geometry(RandomResizedCropGPU(224, valid_scale=1.5)).window((300, 300))
    assert isinstance(input_geometry(None), InputGeometry) and input_geometry(None).window((5, 7)) == (0, 0, 7, 5)

# ---------------------------------------------------------------------------------------------------------------
# Threshold boxes

def test_threshold_two_blobs_sorted_min_area_border():
    a = np.zeros((100, 120))
    a[10:20, 15:40] = 1.0                                         # brightest
    a[60:90, 70:110] = 0.8                                        # larger, dimmer
    a[50:52, 5:7] = 0.9                                           # tiny: 4 px
    a[0:5, 110:120] = 0.75                                        # touches the top and right borders
    b, s = threshold_boxes(a, threshold=0.7, min_area=16)
    assert b.tolist() == [[15, 10, 40, 20], [70, 60, 110, 90], [110, 0, 120, 5]]
    assert s.tolist() == pytest.approx([1.0, 0.8, 0.75])
    b, s = threshold_boxes(a, threshold=0.7, min_area=4)
    assert [5, 50, 7, 52] in b.tolist() and s[1] == pytest.approx(0.9)
    b, s = threshold_boxes(a, threshold=0.7, score='mass')
    assert b[0].tolist() == [70, 60, 110, 90] and s[0] == pytest.approx(0.8*30*40)
    assert threshold_boxes(a, threshold=0.85, topk=1)[0].tolist() == [[15, 10, 40, 20]]
    assert threshold_boxes(torch.tensor(a), topk=2)[0].shape == (2, 4)

def test_threshold_is_relative_to_min_and_max():
    a = np.full((40, 40), 10.); a[5:15, 5:15] = 20.; a[20:30, 20:30] = 16.   # min-max: 0, 1, 0.6
    assert threshold_boxes(a, threshold=0.7)[0].tolist() == [[5, 5, 15, 15]]
    assert len(threshold_boxes(a, threshold=0.5)[0]) == 2

def test_threshold_no_boxes_without_crash():
    for a in (np.zeros((30, 30)), np.full((30, 30), 3.), np.full((30, 30), np.nan), -np.ones((30, 30)), np.zeros((0, 0))):
        b, s = threshold_boxes(a)
        assert b.shape == (0, 4) and s.shape == (0,)
    assert len(peak_boxes(torch.zeros(7, 7), (384, 288))[0]) == 0

def test_threshold_ignores_unseen_nan():
    a = np.zeros((50, 50)); a[:10] = np.nan; a[20:30, 20:30] = 1.
    assert threshold_boxes(a, threshold=0.0)[0].tolist() == [[0, 10, 50, 50]]

# ---------------------------------------------------------------------------------------------------------------
# TensorBBox / LabeledBBox: the patched show against fastai's own, copied verbatim

def fastai_tbb_show(self, ctx=None, **kwargs):
    x = self.view(-1,4)
    for b in x: fvc._draw_rect(ctx, b, hw=False, **kwargs)
    return ctx

def fastai_lbb_show(self, ctx=None, **kwargs):
    for b,l in zip(self.bbox, self.lbl):
        if l != '#na#': ctx = retain_type(b, self.bbox).show(ctx=ctx, text=l)
    return ctx

def test_fastai_originals_are_verbatim():
    strip = lambda t: '\n'.join(l.strip() for l in t.splitlines())
    src = strip(inspect.getsource(fvc))
    for f in (fastai_tbb_show, fastai_lbb_show):
        assert strip(inspect.getsource(f).replace('fvc.', '').replace(f.__name__, 'show')) in src, f.__name__

def _drawn(ax):
    "What was drawn on `ax`: every patch and text with its geometry, colors, widths and outline"
    pe = lambda o: [(type(p).__name__, getattr(p, '_gc', {}).get('linewidth'), str(getattr(p, '_gc', {}).get('foreground'))) for p in o.get_path_effects()]
    r = lambda v: round(float(v), 4)   # float32 vs float64 arithmetic may differ in the last bits of a coordinate
    ps = [(type(p).__name__, tuple(map(r, p.get_xy())), r(p.get_width()), r(p.get_height()), p.get_edgecolor(), p.get_fill(),
           p.get_linewidth(), pe(p)) for p in ax.patches]
    ts = [(t.get_text(), tuple(map(r, t.get_position())), t.get_color(), t.get_fontsize(), t.get_weight(), t.get_va(), pe(t)) for t in ax.texts]
    return ps, ts

BB = [[10, 20, 50, 60], [30, 5, 40, 15], [0, 0, 0, 0]]

def test_default_drawing_is_unchanged(monkeypatch):
    bb = TensorBBox.create(BB)
    lbb = LabeledBBox(bb, ['nodule', 'mass', '#na#'])
    _, ax1 = plt.subplots(); _, ax2 = plt.subplots()
    bb.show(ctx=ax1); lbb.show(ctx=ax1); bb.show(ctx=ax1, text='x', color='red')
    with monkeypatch.context() as m:
        m.setattr(TensorBBox, 'show', fastai_tbb_show); m.setattr(LabeledBBox, 'show', fastai_lbb_show)
        bb.show(ctx=ax2); lbb.show(ctx=ax2); bb.show(ctx=ax2, text='x', color='red')
    d1, d2 = _drawn(ax1), _drawn(ax2)
    assert len(d1[0]) == 8 and len(d1[1]) == 5
    assert d1 == d2
    assert d1[0][0][4] == to_rgba('white') and d1[0][0][6] == 2 and d1[0][0][7][0][1] == 4
    plt.close('all')

def test_show_batch_of_a_bbox_datablock_is_unchanged(tmp_path, monkeypatch):
    fs = []
    for i in range(3):
        f = tmp_path/f'b{i}.png'; Image.fromarray(np.full((60, 80, 3), 60*i, np.uint8)).save(f); fs.append(f)
    y = ([[10, 5, 40, 30], [50, 20, 70, 50]], ['nodule', 'mass'])
    db = DataBlock(blocks=(ImageBlock, BBoxBlock, BBoxLblBlock), get_y=[lambda o: y[0], lambda o: y[1]], n_inp=1,
                   splitter=IndexSplitter([2]), item_tfms=Resize(64))
    dls = db.dataloaders(fs, bs=2, num_workers=0)
    b = dls.one_batch()
    _, axs1 = plt.subplots(1, 2); dls.show_batch(b=b, max_n=2, ctxs=axs1)
    with monkeypatch.context() as m:
        m.setattr(TensorBBox, 'show', fastai_tbb_show); m.setattr(LabeledBBox, 'show', fastai_lbb_show)
        _, axs2 = plt.subplots(1, 2); dls.show_batch(b=b, max_n=2, ctxs=axs2)
    for a1, a2 in zip(axs1, axs2):
        assert len(a1.patches) > 0 and _drawn(a1) == _drawn(a2)
    plt.close('all')

def test_fastai_pitfalls_exist():
    "What the patch fixes: fastai's LabeledBBox.show ignores color, TensorBBox.show rejects lw and ctx=None"
    bb = TensorBBox.create(BB[:2])
    _, ax = plt.subplots()
    fastai_lbb_show(LabeledBBox(bb, ['a', 'b']), ctx=ax, color='red')
    assert all(p.get_edgecolor() == to_rgba('white') for p in ax.patches)
    with pytest.raises(TypeError): fastai_tbb_show(bb, ctx=ax, lw=3)
    with pytest.raises(AttributeError): fastai_tbb_show(bb)
    plt.close('all')

def test_color_lw_ctx_none():
    bb = TensorBBox.create(BB[:2], img_size=(64, 80))
    ax = bb.show(color='red')                                     # ctx=None makes an axis in image orientation
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba('red')]*2
    assert ax.get_xlim() == (0, 64) and ax.get_ylim() == (80, 0)
    ax = bb.show(color=['red', 'lime'], lw=5)
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba('red'), to_rgba('lime')]
    assert [p.get_linewidth() for p in ax.patches] == [5, 5]
    ax = bb.show(color=(0.1, 0.2, 0.3))                           # an RGB tuple is one color, not a list
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba((0.1, 0.2, 0.3))]*2
    lbb = LabeledBBox(TensorBBox.create(BB), ['nodule', 'mass', '#na#'])
    ax = lbb.show(color={'nodule': 'red', 'mass': 'blue'}, lw=3, scores=[0.91, 0.4, 0.])
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba('red'), to_rgba('blue')]
    assert [t.get_color() for t in ax.texts] == ['red', 'blue']
    assert [t.get_text() for t in ax.texts] == ['nodule 0.91', 'mass 0.40']
    assert [p.get_linewidth() for p in ax.patches] == [3, 3]
    ax = lbb.show(color='yellow')
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba('yellow')]*2
    with pytest.raises(ValueError, match='colors'): bb.show(color=['red'])
    plt.close('all')

def test_show_boxes_with_a_cam_boxes_frame():
    df = pd.DataFrame(dict(item=[0, 0], target=[0, 0], **{'class': [1, 1]}, label=['nodule', 'nodule'], prob=[.9, .9],
                           x0=[10, 40], y0=[5, 30], x1=[30, 60], y1=[25, 50], score=[1., .75]))
    ax = show_boxes(np.zeros((64, 80)), df, color=['red', 'blue'], cmap='bone')
    assert [t.get_text() for t in ax.texts] == ['nodule 1.00', 'nodule 0.75']
    assert [p.get_edgecolor() for p in ax.patches] == [to_rgba('red'), to_rgba('blue')]
    r = ax.patches[1]
    assert (r.get_x(), r.get_y(), r.get_width(), r.get_height()) == (40, 30, 20, 20)
    plt.close('all')

# ---------------------------------------------------------------------------------------------------------------
# Box confidence and the probability gate. The score is prob x the map's density in the box (the mean of the
# normalised map over the box's pixels, over the map's maximum), checked here against means done by hand.

def test_score_is_prob_times_the_maps_density_in_the_box_by_hand():
    "score = prob x the mean of the upsampled normalised map over the box's pixels, over its maximum (1 for a box wholly at the peak; topk does not change it)"
    m = torch.zeros(7, 7); m[1, 1] = 1.; m[5, 4:6] = 0.5            # at input = original = 224: cells of 32x32 pixels
    res = CamResult(m[None, None], torch.tensor([[1]]), torch.tensor([[0.1, 0.9]]), vocab=['normal', 'nodule'], input_size=(224, 224))
    up = torch.nn.functional.interpolate(m[None, None], (224, 224), mode='bilinear', align_corners=False)[0, 0].double()
    density = lambda b: (up[b[1]:b[3], b[0]:b[2]].mean()/up.max()).item()
    df = cam_boxes(res, (224, 224), None, mode='peak')
    assert df[['x0', 'y0', 'x1', 'y1']].values.tolist() == [[32, 32, 64, 64]]   # the peak cell (1, 1) is pixels 32..63, the only box
    assert df.score[0] == pytest.approx(0.9*density([32, 32, 64, 64]), rel=1e-6) and 0.5 < df.score[0] < 0.9
    th = cam_boxes(res, (224, 224), None, threshold=0.4)            # both blobs
    assert len(th) == 2 and th.score.tolist() == pytest.approx([0.9*density(b) for b in th[['x0', 'y0', 'x1', 'y1']].values.tolist()], rel=1e-6)
    assert 0 < th.score.min() < th.score.max() < 0.9                 # not constant, and never more than the probability
    top = cam_boxes(res, (224, 224), None, threshold=0.4, topk=1)   # a box's score does not depend on the other boxes
    assert top.score.tolist() == pytest.approx(th.score.tolist()[:1], rel=1e-6)
    wide = box_evidence(up, [[32, 32, 64, 64], [0, 32, 96, 64]], 0.9)   # the same region in a box three times as wide: a third of the evidence density
    assert wide[1] == pytest.approx(0.9*up[32:64, 0:96].mean().item()/up.max().item()) and wide[1] < wide[0]/2

def test_min_prob_gates_every_target_and_says_why():
    maps = torch.stack([_block_map(), _block_map()])[None]          # 1 item, 2 targets ('all')
    res = CamResult(maps, torch.tensor([[1, 0]]), torch.tensor([[0.3, 0.7]]), vocab=['normal', 'nodule'], input_size=(224, 224))
    df = cam_boxes(res, (224, 224), None)
    assert df[['label', 'reason']].values.tolist() == [['nodule', ''], ['normal', 'below min_prob']]
    assert df.loc[1, ['x0', 'y0', 'x1', 'y1']].isna().all() and np.isnan(df.score[1]) and str(df.x0.dtype) == 'Int64'
    assert cam_boxes(res, (224, 224), None, min_prob=0.8).reason.tolist() == ['below min_prob']*2
    assert cam_boxes(res, (224, 224), None, min_prob=0.).reason.tolist() == ['', '']
    ax = show_boxes(np.zeros((224, 224)), df)                        # the row without a box draws nothing
    assert len(ax.patches) == 1; plt.close('all')
