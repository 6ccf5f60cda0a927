"Synthetic chest X-ray sets: real DICOM files, determinism, and ground-truth boxes checked against the pixels."
import numpy as np, pandas as pd, pydicom, pytest
from pathlib import Path
from PIL import Image
from pydicom.pixels import apply_windowing
from pydicom.uid import ExplicitVRLittleEndian, ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from fastcam.synth import synth_xray, make_dicom_set, make_png_set, set_summary

N, SEED = 40, 3

@pytest.fixture(scope='module')
def dcm_set(tmp_path_factory):
    path = tmp_path_factory.mktemp('dcm')
    return path, make_dicom_set(path, n=N, seed=SEED)

@pytest.fixture(scope='module')
def png_set(tmp_path_factory):
    path = tmp_path_factory.mktemp('png')
    return path, make_png_set(path, n=N, seed=SEED)

def _read(path, f): return pydicom.dcmread(Path(path)/f)

def _labels(path): return pd.read_csv(Path(path)/'labels.csv')

def _boxes(path): return pd.read_csv(Path(path)/'boxes.csv')

# --- layout and CSVs ---

def test_layout_and_csv_columns(dcm_set):
    path, df = dcm_set
    names = sorted(p.name for p in (path/'images').iterdir())
    assert names == [f'case_{i:03d}.dcm' for i in range(N)]
    assert sorted(p.name for p in path.iterdir()) == ['boxes.csv', 'images', 'labels.csv']
    lb, bx = _labels(path), _boxes(path)
    assert lb.columns.tolist() == ['file', 'label', 'is_valid', 'rows', 'cols']
    assert bx.columns.tolist() == ['file', 'label', 'x0', 'y0', 'x1', 'y1']
    assert lb.file.tolist() == [f'images/case_{i:03d}.dcm' for i in range(N)]
    assert set(lb.label) == {'normal', 'nodule'}
    assert lb.is_valid.dtype == bool
    assert (df.file == lb.file).all() and (df.label == lb.label).all()

def test_balanced_labels_and_stratified_split(dcm_set):
    lb = _labels(dcm_set[0])
    counts = lb.label.value_counts()
    assert counts['nodule'] == counts['normal'] == N//2
    v = lb[lb.is_valid].label.value_counts()
    assert v['nodule'] == v['normal'] == round(0.2*N/2)

def test_odd_n_is_balanced_to_one(tmp_path):
    lb = make_dicom_set(tmp_path, n=7, seed=5)
    assert (lb.label == 'nodule').sum() in (3, 4)

# --- DICOM files ---

def test_dicom_files_read_back_with_required_tags(dcm_set):
    path, _ = dcm_set
    lb = _labels(path)
    uids = set()
    for f, rows, cols in zip(lb.file, lb.rows, lb.cols):
        raw = (path/f).read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b'DICM'
        ds = _read(path, f)
        fm = ds.file_meta
        assert fm.TransferSyntaxUID == ExplicitVRLittleEndian
        assert fm.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert fm.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.Modality in ('CR', 'DX')
        assert ds.SOPClassUID == {'CR': ComputedRadiographyImageStorage, 'DX': DigitalXRayImageStorageForPresentation}[ds.Modality]
        assert ds.PhotometricInterpretation == 'MONOCHROME2'
        assert (ds.SamplesPerPixel, ds.BitsAllocated, ds.PixelRepresentation) == (1, 16, 0)
        assert ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
        assert (ds.Rows, ds.Columns) == (rows, cols)
        assert len(ds.PixelSpacing) == 2 and 1.0 < float(ds.PixelSpacing[0]) < 2.0
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0
        assert float(ds.WindowWidth) > 1 and 0 < float(ds.WindowCenter) < 2**ds.BitsStored
        assert ds.PatientID
        for u in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert u.is_valid
            uids.add(str(u))
        px = ds.pixel_array
        assert px.dtype == np.uint16 and px.shape == (rows, cols)
        assert px.max() < 2**ds.BitsStored
    assert len(uids) == 3*N   # every study, series and instance UID is unique

def test_sizes_vary_and_are_not_square(dcm_set):
    lb = _labels(dcm_set[0])
    assert (lb.rows != lb.cols).all()
    assert (lb.rows > lb.cols).sum() >= N//4 and (lb.rows < lb.cols).sum() >= N//4   # portrait and landscape
    assert lb.rows.nunique() > 5 and lb.cols.nunique() > 5
    assert lb[['rows', 'cols']].min().min() >= 200 and lb[['rows', 'cols']].max().max() <= 350

def test_both_bit_depths_use_their_range(dcm_set):
    path, _ = dcm_set
    seen = set()
    for f in _labels(path).file:
        ds = _read(path, f)
        seen.add(ds.BitsStored)
        # a 16-bit image really uses 16 bits, a 12-bit one more than 11
        assert ds.pixel_array.max() >= 2**(ds.BitsStored-1)
    assert seen == {12, 16}

# --- boxes against the pixels ---

def test_one_box_per_positive_none_for_negatives(dcm_set):
    path, df = dcm_set
    lb, bx = _labels(path), _boxes(path)
    assert bx.file.is_unique
    assert set(bx.file) == set(lb.file[lb.label == 'nodule'])
    assert (bx.label == 'nodule').all()
    assert df[df.label == 'normal'][['x0', 'y0', 'x1', 'y1']].isna().all().all()

def test_lesions_fall_in_either_lung_alike(tmp_path):
    "No location prior: over a set, the box centres lie about as often in the image's left half as in its right"
    lb = make_dicom_set(tmp_path, n=200, seed=5)
    pos = lb[lb.label == 'nodule']
    left = ((pos.x0 + pos.x1) / 2 < pos.cols / 2).mean()
    assert len(pos) == 100 and 0.38 <= left <= 0.62, left

def test_boxes_inside_image_and_of_lesion_size(dcm_set):
    path, _ = dcm_set
    b = _boxes(path).merge(_labels(path), on=['file', 'label'])
    assert ((0 <= b.x0) & (b.x0 < b.x1) & (b.x1 <= b.cols)).all()
    assert ((0 <= b.y0) & (b.y0 < b.y1) & (b.y1 <= b.rows)).all()
    w, h = b.x1 - b.x0, b.y1 - b.y0
    assert w.between(12, 75).all() and h.between(12, 75).all()
    assert w.min() < 30 and w.max() > 45   # random sizes, small and large
    # lesions in both lungs: box centres on both sides of the middle
    side = (b.x0 + b.x1)/2 < b.cols/2
    assert 0 < side.sum() < len(b)

def _box_and_ring(shape, box, m=6):
    "Masks of the box and of an m-pixel ring around it"
    x0, y0, x1, y1 = box
    inside = np.zeros(shape, bool); inside[y0:y1, x0:x1] = True
    ring = np.zeros(shape, bool); ring[max(0, y0-m):y1+m, max(0, x0-m):x1+m] = True
    return inside, ring & ~inside

def test_lesion_is_brighter_in_its_box_than_around_it(dcm_set):
    "From the files alone: mean stored value inside each box vs a 6-pixel ring around it"
    path, _ = dcm_set
    b = _boxes(path)
    assert len(b) == N//2
    for r in b.itertuples():
        px = _read(path, r.file).pixel_array.astype(float)
        maxv = 2**_read(path, r.file).BitsStored - 1
        inside, ring = _box_and_ring(px.shape, (r.x0, r.y0, r.x1, r.y1))
        assert px[inside].mean() - px[ring].mean() > 0.01*maxv, r.file

def _contrast(px, box):
    inside, ring = _box_and_ring(px.shape, box)
    return px[inside].mean() - px[ring].mean()

def _scaled(ds): return ds.pixel_array.astype(float)/(2**ds.BitsStored - 1)

def test_same_boxes_on_negatives_show_no_lesion(dcm_set):
    "The contrast statistic is about the lesion: at the positives' boxes, negatives show much less"
    path, _ = dcm_set
    lb = _labels(path)
    negs = [_scaled(_read(path, f)) for f in lb.file[lb.label == 'normal']]
    pos_c, neg_c = [], []
    for k, r in enumerate(_boxes(path).itertuples()):
        box = (r.x0, r.y0, r.x1, r.y1)
        pos_c.append(_contrast(_scaled(_read(path, r.file)), box))
        q = next(q for q in negs[k:] + negs[:k] if q.shape[0] >= r.y1 and q.shape[1] >= r.x1)
        neg_c.append(_contrast(q, box))
    assert np.median(pos_c) > np.median(neg_c) + 0.03
    assert np.mean(np.array(pos_c) > 0.01) == 1 and np.mean(np.array(neg_c) > 0.01) < 0.5

@pytest.mark.parametrize('seed', range(40))
def test_box_inside_lung_and_brighter_than_lung(seed):
    "The pure function, with its lung mask: box within the lung, brighter than the lung around it"
    rng = np.random.default_rng([11, seed])
    rows, cols = (int(rng.integers(230, 330)), int(rng.integers(230, 330)))
    px, box, lung = synth_xray(rows, cols, True, rng, masks=True)
    assert px.shape == (rows, cols) and px.dtype == np.uint16 and px.max() <= 4095
    assert lung.shape == (rows, cols) and 0.1 < lung.mean() < 0.5
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows
    assert lung[y0:y1, x0:x1].all()
    inside, ring = _box_and_ring(px.shape, box, m=max(6, (x1-x0+y1-y0)//4))
    assert px[inside].mean() > px[ring & lung].mean()

@pytest.mark.parametrize('seed', range(10))
def test_lesion_is_what_differs_and_lies_in_its_box(seed):
    "Same generator state, with and without a lesion: the difference is a bright blob, mostly inside the box"
    pos, box = synth_xray(260, 300, True, np.random.default_rng(seed))
    neg, none = synth_xray(260, 300, False, np.random.default_rng(seed))
    assert none is None
    d = pos.astype(float) - neg
    assert d.min() >= 0 and d.sum() > 0
    x0, y0, x1, y1 = box
    assert d[y0:y1, x0:x1].sum() > 0.85*d.sum()
    yc, xc = np.unravel_index(d.argmax(), d.shape)
    assert x0 <= xc < x1 and y0 <= yc < y1
    # the box is the blob's visible extent (where it is above ~e^-2 of its peak): neither loose nor tight
    peak = d[y0:y1, x0:x1].max()
    edge = max(d[y0, x0:x1].max(), d[y1-1, x0:x1].max(), d[y0:y1, x0].max(), d[y0:y1, x1-1].max())
    assert 0.05*peak < edge < 0.3*peak

def test_negatives_have_no_box_and_image_brightness_is_no_tell(dcm_set):
    path, _ = dcm_set
    lb = _labels(path)
    means = {}
    for f, l in zip(lb.file, lb.label):
        ds = _read(path, f)
        means.setdefault(l, []).append(ds.pixel_array.mean()/(2**ds.BitsStored - 1))
    p, n = np.array(means['nodule']), np.array(means['normal'])
    auc = (p[:, None] > n[None]).mean()
    assert 0.2 < auc < 0.8

# --- determinism ---

def _all_bytes(path): return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob('*')) if p.is_file()}

def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a, b, c = tmp_path/'a', tmp_path/'b', tmp_path/'c'
    make_dicom_set(a, n=8, seed=1); make_dicom_set(b, n=8, seed=1); make_dicom_set(c, n=8, seed=2)
    ba, bb, bc = _all_bytes(a), _all_bytes(b), _all_bytes(c)
    assert ba.keys() == bb.keys() and all(ba[k] == bb[k] for k in ba)
    for f in _labels(a).file:
        assert np.array_equal(_read(a, f).pixel_array, _read(b, f).pixel_array)
        assert _read(a, f).SOPInstanceUID == _read(b, f).SOPInstanceUID
        assert not np.array_equal(_read(a, f).pixel_array, _read(c, f).pixel_array)
        assert _read(a, f).SOPInstanceUID != _read(c, f).SOPInstanceUID
    assert ba['labels.csv'] != bc['labels.csv'] and ba['boxes.csv'] != bc['boxes.csv']

def test_pure_function_is_deterministic():
    a, ba = synth_xray(250, 300, True, np.random.default_rng(7))
    b, bb = synth_xray(250, 300, True, np.random.default_rng(7))
    c, bc = synth_xray(250, 300, True, np.random.default_rng(8))
    assert np.array_equal(a, b) and ba == bb
    assert not np.array_equal(a, c)

def test_first_cases_do_not_depend_on_n(tmp_path):
    small, big = make_dicom_set(tmp_path/'s', n=6, seed=4), make_dicom_set(tmp_path/'b', n=10, seed=4)
    cols = ['file', 'label', 'rows', 'cols', 'x0', 'y0', 'x1', 'y1']
    assert small[cols].equals(big[cols].iloc[:6])
    for f in small.file: assert (tmp_path/'s'/f).read_bytes() == (tmp_path/'b'/f).read_bytes()

# --- PNG ---

def test_png_set_reads_back_at_the_right_size(png_set):
    path, df = png_set
    lb = _labels(path)
    assert lb.file.tolist() == [f'images/case_{i:03d}.png' for i in range(N)]
    for f, rows, cols in zip(lb.file, lb.rows, lb.cols):
        im = Image.open(path/f)
        assert im.format == 'PNG' and im.mode == 'L' and im.size == (cols, rows)
        a = np.asarray(im)
        assert a.min() == 0 and a.max() == 255   # windowed to the full 8-bit range

def test_png_set_matches_dicom_set(dcm_set, png_set):
    "Same cases and boxes; each PNG is its DICOM through the stored window (pydicom's apply_windowing)"
    (dp, ddf), (pp, pdf) = dcm_set, png_set
    assert _boxes(dp).assign(file=lambda d: d.file.str.replace('.dcm', '.png')).equals(_boxes(pp))
    assert _labels(dp).drop(columns='file').equals(_labels(pp).drop(columns='file'))
    for fd, fp in list(zip(ddf.file, pdf.file))[:10]:
        ds = _read(dp, fd)
        ref = apply_windowing(ds.pixel_array.astype(float), ds)/(2**ds.BitsStored - 1)*255
        png = np.asarray(Image.open(pp/fp)).astype(float)
        assert np.abs(png - ref).max() <= 1.0, fd

# --- summary and errors ---

def test_set_summary(dcm_set):
    s = set_summary(dcm_set[0])
    assert s.startswith(f'{N} images (.dcm)')
    assert f'nodule {N//2}, normal {N//2}' in s and f'{N//2} boxes' in s
    assert 'portrait' in s and 'landscape' in s

def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='at least one'): make_dicom_set(tmp_path, n=0)
    with pytest.raises(ValueError, match='non-negative int'): make_dicom_set(tmp_path, n=2, seed=-1)
    with pytest.raises(ValueError, match='two names'): make_png_set(tmp_path, n=2, classes=('a', 'b', 'c'))

def test_custom_classes_and_folder(tmp_path):
    df = make_png_set(tmp_path, n=4, seed=0, classes=('neg', 'pos'), folder='pngs')
    assert set(df.label) == {'neg', 'pos'}
    assert all((tmp_path/f).exists() and f.startswith('pngs/') for f in df.file)


def test_generator_options(tmp_path):
    "area, lesions, sharpness, text and 8-bit change what the options say, checked on the pixels; defaults stay as they were"
    rows, cols = 100, 124
    for s in range(6):
        px, box = synth_xray(rows, cols, True, s, area=(0.01, 0.02))
        x0, y0, x1, y1 = box
        assert 0.006 < (x1-x0)*(y1-y0)/(rows*cols) < 0.03          # the box's share of the image, up to the elongation and rounding
    px, boxes = synth_xray(rows, cols, True, 3, lesions=(2, 2), area=(0.01, 0.02), bits_stored=8)
    neg, _ = synth_xray(rows, cols, False, 3, lesions=(2, 2), area=(0.01, 0.02), bits_stored=8)
    assert isinstance(boxes, list) and len(boxes) == 2 and px.max() <= 255
    d = px.astype(float) - neg
    for x0, y0, x1, y1 in boxes: assert d[y0:y1, x0:x1].mean() > 3   # each lesion brightens its own box
    # a sharper edge leaves less of the lesion outside its box than a Gaussian (k=1) one
    outside = []
    for k in (1, 4):
        p, b = synth_xray(rows, cols, True, 5, sharpness=(k, k), area=(0.03, 0.03))
        n, _ = synth_xray(rows, cols, False, 5, sharpness=(k, k), area=(0.03, 0.03))
        dd = p.astype(float) - n; x0, y0, x1, y1 = b
        outside.append(1 - dd[y0:y1, x0:x1].sum()/dd.sum())
    assert outside[1] < outside[0] - 0.1, outside
    a, _ = synth_xray(rows, cols, False, 2, text=1.0, marker=0., dots=(0, 0))
    b, _ = synth_xray(rows, cols, False, 2, text=0., marker=0., dots=(0, 0))
    assert (a != b).any() and (a[:12] != b[:12]).any() | (a[-12:] != b[-12:]).any()   # the word lies along the top or bottom edge
    df = make_dicom_set(tmp_path, n=6, seed=2, size=(100, 124), lesions=(2, 2), area=(0.01, 0.02))
    bx = pd.read_csv(tmp_path/'boxes.csv')
    assert len(bx) == 2*(df.label == 'nodule').sum() and bx.groupby('file').size().eq(2).all()
    with pytest.raises(TypeError, match="unknown generator option"): make_dicom_set(tmp_path/'x', n=2, blobs=3)
