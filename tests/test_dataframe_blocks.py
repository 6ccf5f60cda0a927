"DataBlocks whose items are rows (a DataFrame with ColReader, `df.values` with a lambda as the pneumothorax walkthrough, a list of rows): get_cams knows each item's file, size and boxes; evaluate_cams on fused layers (issue 14 items 2, 3)."
import numpy as np, pydicom, pytest, torch, torch.nn.functional as F
from scipy import ndimage
from torchvision.ops import box_iou
from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter, IndexSplitter, Resize, vision_learner
from fastcam.items import DicomBlock
from fastcam.synth import make_dicom_set
from fastcam.cli import tiny_xresnet
from fastcam.metrics import evaluate_cams
import fastcam.callback  # learn.get_cams

SIZE, FUSED = 64, [[0, -3], [0, -2]]

@pytest.fixture(scope='module')
def dicoms(tmp_path_factory):
    "16 synthetic DICOMs of different, non-square sizes; half of them in the validation set"
    path = tmp_path_factory.mktemp('df_dicoms')
    return path, make_dicom_set(path, n=16, seed=3, size=(72, 96), valid_pct=0.5)

def _dls(path, df, how):
    "The same data as a DataBlock on the DataFrame (ColReader), on `df.values` (a lambda, as walkthrough 000) or on a list of rows"
    kw = dict(blocks=(DicomBlock(), CategoryBlock), item_tfms=Resize(SIZE, method='squish'))
    if how == 'dataframe':
        db, src = DataBlock(get_x=ColReader('file', pref=path), get_y=ColReader('label'), splitter=ColSplitter('is_valid'), **kw), df
    else:
        db = DataBlock(get_x=lambda r: path/f"{r[0]}", get_y=lambda r: r[1], splitter=IndexSplitter(np.flatnonzero(df.is_valid.values)), **kw)
        src = df[['file', 'label']].values
        if how == 'list': src = src.tolist()
    return db.dataloaders(src, bs=4, num_workers=0)

@pytest.fixture(scope='module')
def learn(dicoms):
    torch.manual_seed(0)
    return vision_learner(_dls(*dicoms, 'dataframe'), tiny_xresnet, pretrained=False)

def _top_box(m, hw, threshold=None, min_area=16):
    "The box of the thresholded component holding the maximum of map `m` resized straight to `hw` (scipy, not fastcam), or None; threshold None: the plain mode's"
    from fastcam.tune import mode_thresholds
    threshold = mode_thresholds['threshold'] if threshold is None else threshold
    a = F.interpolate(m[None, None].float(), size=hw, mode='bilinear', align_corners=False)[0, 0].relu().numpy()
    if not a.max() > a.min(): return None
    n = (a - a.min()) / (a.max() - a.min())
    lab, _ = ndimage.label(n >= threshold, structure=np.ones((3, 3)))
    ys, xs = np.nonzero(lab == lab[np.unravel_index(n.argmax(), n.shape)])
    return None if len(ys) < min_area else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

@pytest.mark.parametrize('how', ['dataframe', 'values', 'list'])
def test_get_cams_with_boxes_on_row_items(dicoms, learn, how):
    path, df = dicoms
    valid = df[df.is_valid].reset_index(drop=True)
    res, bx = learn.get_cams(dl=_dls(path, df, how).valid, with_boxes=True, topk=1, mode='threshold')   # the map's own regions: what _top_box computes
    assert [str(o) for o in res.items] == [str(path/f) for f in valid.file]
    sizes = [(d.Rows, d.Columns) for d in (pydicom.dcmread(path/f, stop_before_pixels=True) for f in valid.file)]
    assert [tuple(s) for s in res.orig_sizes] == sizes and len(set(sizes)) > 1
    assert res.maps.shape[:2] == (len(valid), 1)
    bx = bx[bx.x0.notna()] if 'x0' in bx else bx            # rows without a box (a reason instead) do not count
    assert set(bx.file) <= {str(path/f) for f in valid.file}
    n_boxes = 0
    for i, hw in enumerate(sizes):
        want, got = _top_box(res.maps[i, 0], hw), bx[bx.item == i]
        assert len(got) == (want is not None), (i, want, got)
        if want is None: continue
        n_boxes += 1
        iou = box_iou(torch.tensor([want], dtype=torch.float), torch.tensor(got[['x0', 'y0', 'x1', 'y1']].to_numpy(float), dtype=torch.float))
        assert iou.item() > 0.8, (i, want, got)
    assert len(bx) == n_boxes > len(valid) // 2

def _boxes_of(gt, files):
    return [torch.as_tensor(gt.get(str(f), np.zeros((0, 4))), dtype=torch.float) for f in files]

def _max_box_acc(maps, gt_boxes, thresholds=np.arange(0, 1, 0.01), delta=0.5):
    "MaxBoxAcc (Choe et al. 2020) in %, by scipy's components and torchvision's IoU: the largest component's box at the best threshold"
    hits, n = np.zeros(len(thresholds)), 0
    for m, g in zip(maps, gt_boxes):
        if not len(g): continue
        n += 1
        a = m.numpy().astype(np.float64)
        ok = np.isfinite(a)
        lo, hi = a[ok].min(), a[ok].max()
        if not hi > lo: continue
        a = np.where(ok, (np.where(ok, a, lo) - lo) / (hi - lo), -1)
        for k, t in enumerate(thresholds):
            lab, c = ndimage.label(a >= t, structure=np.ones((3, 3)))
            if not c: continue
            big = np.bincount(lab.ravel())[1:].argmax() + 1
            ys, xs = np.nonzero(lab == big)
            hits[k] += box_iou(torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float), g).max().item() >= delta
    return 100 * hits.max() / n

def test_evaluate_cams_on_fused_layers(dicoms, learn):
    "The fused row is the fused map's: MaxBoxAcc as computed by scipy + torchvision, 100% on boxes drawn around its own blobs"
    path, df = dicoms
    learn.dls = _dls(path, df, 'dataframe')
    files = [path/f for f in df.file]
    fused = learn.cam(files, layer=FUSED, fused=True)
    maps = [fused.original_maps(i, fill=float('nan'))[0] for i in range(len(files))]
    truth = {}
    for r in df[df.x0.notna()].itertuples(): truth.setdefault(str(path/r.file), []).append([r.x0, r.y0, r.x1, r.y1])
    blobs = {}                                            # the box of each fused map's largest component at 0.5: a known answer
    for f, m in zip(files, maps):
        a = m.numpy()
        n = (a - np.nanmin(a)) / (np.nanmax(a) - np.nanmin(a))
        lab, _ = ndimage.label(np.nan_to_num(n, nan=-1) >= 0.5, structure=np.ones((3, 3)))
        ys, xs = np.nonzero(lab == np.bincount(lab.ravel())[1:].argmax() + 1)
        blobs[str(f)] = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    ev = evaluate_cams(learn, files, blobs, layers=(None, FUSED), faithfulness=False)
    assert len(ev) == 2 and ev.layer[0] != ev.layer[1] and 'fused' in ev.layer[1]
    assert ev.max_box_acc[1] == pytest.approx(_max_box_acc(maps, _boxes_of(blobs, files))) == pytest.approx(100)
    assert ev.pointing_game[1] == pytest.approx(100)
    ev = evaluate_cams(learn, files, truth, layers=(FUSED,), faithfulness=False)
    assert len(ev) == 1
    assert ev.max_box_acc[0] == pytest.approx(_max_box_acc(maps, _boxes_of(truth, files)))
