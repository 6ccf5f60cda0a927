"DICOM outputs read back by other tools: the standard's validator (dciodvfy) on fastcam.synth's files, box sizes in mm against the files' own spacing (pydicom)."
import hashlib, json, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pydicom, pytest, torch
from fastai.vision.all import vision_learner, DataBlock, CategoryBlock, Resize
from PIL import Image
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.items import DicomBlock
from fastcam.cli import tiny_xresnet, run
from fastcam.dicom_out import model_hash

DCIODVFY = shutil.which('dciodvfy')
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (apt-get install dicom3tools): DICOM validity not checked")

def dciodvfy_errors(f) -> list:
    "The 'Error' lines the standard's validator reports on file `f`"
    out = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True, timeout=60)
    return [l for l in (out.stdout + out.stderr).splitlines() if l.lstrip().startswith('Error')]

@needs_dciodvfy
@pytest.mark.parametrize('kw', [dict(), dict(rescale=(2.0, -1000.0)), dict(bits_stored=(16,), modality=('DX',))])
def test_synth_files_pass_dciodvfy(tmp_path, kw):
    df = make_dicom_set(tmp_path, n=4, seed=5, size=(64, 80), **kw)
    mods = set()
    for f in df.file:
        assert dciodvfy_errors(tmp_path/f) == [], f
        mods.add(pydicom.dcmread(tmp_path/f, stop_before_pixels=True).Modality)
    if not kw: assert mods == {'CR', 'DX'}   # both IODs checked

def _tiny_weights(path):
    "Weights of an untrained tiny model for `fastcam run --weights` (what it explains doesn't matter here: the written objects must match its outputs)"
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock(vocab=['normal', 'nodule'])), get_y=lambda o: 'normal', item_tfms=Resize(64))
    dls = dblock.dataloaders([Image.new('L', (64, 64))]*2, bs=1, num_workers=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, tiny_xresnet, pretrained=False, n_out=2)
    torch.save(learn.model.state_dict(), path)
    return learn

def _edit(f, fn):
    ds = pydicom.dcmread(f); fn(ds); ds.save_as(f)

def _drop(ds, *keys):
    for k in keys:
        if k in ds: del ds[k]

def _sha(f): return hashlib.sha256(Path(f).read_bytes()).hexdigest()

@pytest.fixture(scope='module')
def dicom_run(tmp_path_factory):
    "`fastcam run --dicom-out` over synthetic DICOMs (one with ImagerPixelSpacing only, one without spacing nor Type 2 patient/study attributes, MONOCHROME1, two windows, a rescale), a multi-frame file and a PNG"
    root = tmp_path_factory.mktemp('dcmout')
    inp = root/'in'
    make_dicom_set(inp, n=6, seed=7, size=(64, 80), folder='dcm')
    make_png_set(inp, n=1, seed=8, size=(64, 80), folder='png')
    make_dicom_set(inp/'rescaled', n=1, seed=9, size=(64, 80), rescale=(2.0, -1000.0))   # RescaleSlope/Intercept
    d = inp/'dcm'
    _edit(d/'case_001.dcm', lambda ds: (_drop(ds, 'PixelSpacing'), setattr(ds, 'ImagerPixelSpacing', ['0.25', '0.5'])))   # rows 0.25 mm apart, columns 0.5: the order matters
    _edit(d/'case_002.dcm', lambda ds: _drop(ds, 'PixelSpacing', 'ImagerPixelSpacing', 'PatientBirthDate', 'PatientSex', 'AccessionNumber', 'ReferringPhysicianName', 'StudyTime'))
    _edit(d/'case_003.dcm', lambda ds: setattr(ds, 'PhotometricInterpretation', 'MONOCHROME1'))
    _edit(d/'case_004.dcm', lambda ds: (setattr(ds, 'WindowCenter', [ds.WindowCenter, 100]), setattr(ds, 'WindowWidth', [ds.WindowWidth, 50])))
    def frames(ds): ds.NumberOfFrames = 2; ds.PixelData = ds.PixelData*2
    shutil.copy(d/'case_005.dcm', root/'multi.dcm'); _edit(root/'multi.dcm', frames); shutil.move(root/'multi.dcm', d/'multi.dcm')
    (root/'codes.json').write_text(json.dumps({'nodule': ['27925004', 'SCT', 'Nodule']}))
    _tiny_weights(root/'w.pth')
    before = {f: _sha(f) for f in sorted(inp.rglob('*.*'))}
    out = root/'out'
    rc = run(str(inp), out=str(out), weights=str(root/'w.pth'), arch='tiny_xresnet', vocab='normal,nodule', size=64, progress=False,
             dicom_out=True, dicom_codes=str(root/'codes.json'))
    assert rc == 0
    assert {f: _sha(f) for f in sorted(inp.rglob('*.*'))} == before   # the sources are only read
    return inp, out

def test_boxes_csv_has_mm_from_the_files_spacing(dicom_run):
    inp, out = dicom_run
    bx = pd.read_csv(out/'boxes.csv', keep_default_na=False, na_values=[''])
    assert {'width_mm', 'height_mm', 'area_mm2', 'spacing_source'} <= set(bx.columns)
    seen = set()
    for r in bx.itertuples():
        if pd.isna(r.x0): continue
        name = Path(r.file).name
        if r.file.endswith('.png') or name == 'case_002.dcm':
            assert pd.isna(r.width_mm) and pd.isna(r.area_mm2) and pd.isna(r.spacing_source), r
            seen.add('none'); continue
        ds = pydicom.dcmread(r.file, stop_before_pixels=True)
        key = 'PixelSpacing' if 'PixelSpacing' in ds else 'ImagerPixelSpacing'
        row_mm, col_mm = (float(v) for v in ds[key].value)
        assert r.spacing_source == key
        assert r.width_mm == pytest.approx((r.x1-r.x0)*col_mm) and r.height_mm == pytest.approx((r.y1-r.y0)*row_mm)
        assert r.area_mm2 == pytest.approx((r.x1-r.x0)*col_mm*(r.y1-r.y0)*row_mm)
        seen.add(key)
    assert seen == {'PixelSpacing', 'ImagerPixelSpacing', 'none'}
    assert ' mm' in (out/'report.html').read_text()

def _records(out):
    return {r['file']: r for r in map(json.loads, (p.read_text() for p in (out/'records').glob('*.json')))}

def _texts(ds) -> list:
    "(concept name, text) of every TEXT content item of an SR, at any depth"
    res = []
    for it in ds.get('ContentSequence', []):
        if 'TextValue' in it: res.append((it.ConceptNameCodeSequence[0].CodeMeaning, it.TextValue))
        res += _texts(it)
    return res

def _polygon(x0, y0, x1, y1): return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float32)

def _planar_groups(sr):
    "(finding code, graphic type, points, referenced SOP Instance UID, {measurement: (value, unit)}) of each planar ROI of an SR read back by highdicom"
    res = []
    for g in sr.content.get_planar_roi_measurement_groups():
        roi = g.roi
        ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
        ms = {m.name.meaning: (m.value, m.unit.value) for m in g.get_measurements()}
        res.append(((g.finding_type.value, g.finding_type.scheme_designator), roi.GraphicType, np.asarray(roi.GraphicData, np.float32).reshape(-1, 2),
                    ref.ReferencedSOPInstanceUID, ms))
    return res

def test_sr_rois_and_references_equal_boxes_csv_and_source(dicom_run):
    import highdicom as hd
    inp, out = dicom_run
    bx = pd.read_csv(out/'boxes.csv', keep_default_na=False, na_values=[''])
    recs = _records(out)
    sha = model_hash(_tiny_weights(out.parent/'w2.pth').model)   # the hash of the weights the run loaded
    n_sr = 0
    for f, rows in bx[bx.file.str.endswith('.dcm')].groupby('file'):
        src = pydicom.dcmread(f, stop_before_pixels=True)
        rec = recs[f]
        srf = out/rec['dicom']['sr']
        raw = pydicom.dcmread(srf)
        sr = hd.sr.srread(srf)
        n_sr += 1
        assert raw.SOPClassUID == '1.2.840.10008.5.1.4.1.1.88.34'   # Comprehensive 3D SR
        assert (raw.StudyInstanceUID, raw.PatientID, raw.PatientName) == (src.StudyInstanceUID, src.PatientID, src.PatientName)
        assert raw.SeriesInstanceUID != src.SeriesInstanceUID and raw.SOPInstanceUID != src.SOPInstanceUID
        for k in ('PatientBirthDate', 'PatientSex', 'AccessionNumber', 'ReferringPhysicianName', 'StudyTime', 'StudyID'):   # Type 2: present, even if the source lacks it
            assert k in raw
        ev = raw.CurrentRequestedProcedureEvidenceSequence[0]
        assert ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        groups = _planar_groups(sr)
        rows = rows[rows.x0.notna()]
        assert len(groups) == len(rows)
        for r, (code, gtype, pts, ref, ms) in zip(rows.itertuples(), groups):
            assert gtype == 'POLYLINE' and ref == src.SOPInstanceUID
            np.testing.assert_array_equal(pts, _polygon(r.x0, r.y0, r.x1, r.y1))
            assert code == (('27925004', 'SCT') if r._2 == 'nodule' else (r._2, '99FASTCAM'))
            assert ms['Probability'][0] == pytest.approx(r.prob, abs=1e-6) and ms['Score (attribute)'][0] == pytest.approx(r.score, abs=1e-6)
            if pd.isna(r.width_mm): assert 'Width' not in ms
            else:
                assert ms['Width'] == (pytest.approx(r.width_mm), 'mm') and ms['Height'] == (pytest.approx(r.height_mm), 'mm')
                assert ms['Area'] == (pytest.approx(r.area_mm2), 'mm2')
        img = sr.content.get_image_measurement_groups()
        assert len(img) == 1 and {m.name.meaning: m.value for m in img[0].get_measurements()}['Probability'] == pytest.approx(rec['prob'], abs=1e-6)
        texts = _texts(raw)
        assert ('Algorithm Name', f"fastcam {rec['method']}") in texts and ('Algorithm Parameters', f"layer={rec['layer']}") in texts
        assert ('Algorithm Parameters', f"model_sha256={sha}") in texts
    assert n_sr == 7   # the multi-frame file is refused, the PNG has no DICOM outputs

def test_seg_has_source_size_and_the_map(dicom_run):
    "The SEG of each file read back by highdicom: the source's Rows x Columns, referencing it; its values the map that made the file's boxes"
    import highdicom as hd
    from fastcam.cli import load_for_run
    from fastcam.core import learner_cam
    inp, out = dicom_run
    recs = {f: r for f, r in _records(out).items() if r.get('dicom')}
    learn = load_for_run(arch='tiny_xresnet', weights=str(out.parent/'w.pth'), vocab='normal,nodule', size=64)
    files = sorted(recs)
    res = learner_cam(learn, files, fused=True)
    for i, f in enumerate(files):
        src = pydicom.dcmread(f, stop_before_pixels=True)
        seg = hd.seg.segread(out/recs[f]['dicom']['seg'])
        assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
        assert seg.SegmentationType == 'FRACTIONAL' and seg.MaximumFractionalValue == 255
        assert seg.get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
        assert seg.get_segment_description(1).segmented_property_type.value in (recs[f]['class'], '27925004')
        m = res.original_maps(i)[0].numpy()
        got = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])[0, ..., 0]   # 0..1
        assert np.abs(got - m).max() <= 0.5/255 + 1e-6
        assert m.max() == pytest.approx(1) and got.std() > 0.05   # a map, not a flat field

@needs_dciodvfy
def test_written_objects_pass_dciodvfy(dicom_run):
    inp, out = dicom_run
    fs = sorted((out/'dicom').glob('*.dcm'))
    assert len(fs) == 21   # an SR, a SEG and a GSPS for each of the seven DICOM images
    for f in fs: assert dciodvfy_errors(f) == [], f

def test_gsps_draws_the_boxes_on_the_source(dicom_run):
    "The presentation state read back by pydicom: it references the source, with each box of boxes.csv as a closed polyline in pixels"
    inp, out = dicom_run
    bx = pd.read_csv(out/'boxes.csv', keep_default_na=False, na_values=[''])
    for f, rec in _records(out).items():
        if not rec.get('dicom'): continue
        src = pydicom.dcmread(f, stop_before_pixels=True)
        pr = pydicom.dcmread(out/rec['dicom']['gsps'])
        assert pr.SOPClassUID == '1.2.840.10008.5.1.4.1.1.11.1' and pr.StudyInstanceUID == src.StudyInstanceUID   # Grayscale Softcopy PS
        assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        rows = bx[(bx.file == f) & bx.x0.notna()]
        ga = pr.GraphicAnnotationSequence[0]
        assert ga.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        got = [(o.GraphicType, o.GraphicAnnotationUnits, np.array(o.GraphicData, np.float32).reshape(-1, 2)) for o in ga.GraphicObjectSequence]
        assert len(got) == len(rows)
        for r, (t, u, pts) in zip(rows.itertuples(), got):
            assert (t, u) == ('POLYLINE', 'PIXEL')
            np.testing.assert_array_equal(pts, _polygon(r.x0, r.y0, r.x1, r.y1))

def test_non_dicom_and_multiframe_inputs_get_one_line_errors(dicom_run):
    inp, out = dicom_run
    errs = pd.read_csv(out/'errors.csv')
    by = {Path(f).name: e for f, e in zip(errs.file, errs.error)}
    assert set(by) == {'case_000.png', 'multi.dcm'}
    assert 'not a DICOM file' in by['case_000.png'] and 'frames' in by['multi.dcm']
    assert all('\n' not in e for e in by.values())
    png = [r for r in _records(out).values() if r['file'].endswith('.png')][0]
    assert (out/png['overlay']).exists() and 'dicom' not in png   # its other outputs are written

def test_result_dicom_for_a_camresult(tmp_path):
    "The Python function: a CamResult of a DICOM and a PNG file; SR boxes equal res.boxes(), the SEG the original maps of both classes"
    import highdicom as hd
    from fastcam.dicom_out import result_dicom
    from fastcam.core import learner_cam
    make_dicom_set(tmp_path, n=1, seed=3, size=(64, 80), folder='d')
    make_png_set(tmp_path, n=1, seed=3, size=(64, 80), folder='p')
    learn = _tiny_weights(tmp_path/'w.pth')
    files = [tmp_path/'d'/'case_000.dcm', tmp_path/'p'/'case_000.png']
    res = learner_cam(learn, files, target='all')
    got = result_dicom(res, tmp_path/'out', model=learn, topk=2)
    assert got.error[0] == '' and 'not a DICOM file' in got.error[1] and pd.isna(got.sr[1]) and Path(got.gsps[0]).exists()
    sr = hd.sr.srread(got.sr[0])
    want = res.boxes(topk=2)
    want = want[(want['item'] == 0) & want.x0.notna()]
    groups = _planar_groups(sr)
    assert len(groups) == len(want) >= 1
    for r, g in zip(want.itertuples(), groups): np.testing.assert_array_equal(g[2], _polygon(r.x0, r.y0, r.x1, r.y1))
    seg = hd.seg.segread(got.seg[0])
    assert seg.number_of_segments == 2
    m = res.original_maps(0).numpy()
    got = seg.get_pixels_by_source_instance([pydicom.dcmread(files[0]).SOPInstanceUID], segment_numbers=[1, 2])[0]   # [H, W, segments], 0..1
    assert np.abs(np.moveaxis(got, -1, 0) - m).max() <= 0.5/255 + 1e-6

def test_missing_highdicom_is_one_line(monkeypatch, tmp_path):
    from fastcam.dicom_out import dicom_config
    monkeypatch.setitem(sys.modules, 'highdicom', None)
    with pytest.raises(ImportError, match=r'^DICOM outputs need highdicom: pip install "fastcam\[dicom\]"'): dicom_config()
    (tmp_path/'bad.json').write_text('{"nodule": "27925004"}')
    monkeypatch.delitem(sys.modules, 'highdicom')
    with pytest.raises(ValueError, match=r'must map each class to \[code value, coding scheme, meaning\]'): dicom_config(tmp_path/'bad.json')

def _uids(ds):
    "(concept name, UID) of every UIDREF content item of an SR, at any depth"
    res = []
    for it in ds.get('ContentSequence', []):
        if 'UID' in it: res.append((it.ConceptNameCodeSequence[0].CodeMeaning, it.UID))
        res += _uids(it)
    return res

def test_cross_sectional_source_is_referenced_with_its_frame_of_reference(tmp_path):
    "A CT slice (pydicom's CT_small.dcm): the SR's image library and the SEG carry its Frame of Reference; all three objects valid"
    import highdicom as hd
    from fastcam.dicom_out import boxes_sr, map_seg, boxes_gsps, save_dicom
    f = pydicom.data.get_testdata_file('CT_small.dcm')
    src = pydicom.dcmread(f)
    box = [dict(x0=3, y0=4, x1=20, y1=30, prob=0.9, score=0.5, **{'class': 'nodule'})]
    m = np.random.default_rng(0).random((src.Rows, src.Columns))
    fs = [save_dicom(boxes_sr(f, box, image_finding=('nodule', 0.9)), tmp_path/'sr.dcm'), save_dicom(map_seg(f, m, ['nodule']), tmp_path/'seg.dcm'),
          save_dicom(boxes_gsps(f, box), tmp_path/'pr.dcm')]
    assert ('Frame of Reference UID', src.FrameOfReferenceUID) in _uids(pydicom.dcmread(fs[0]))
    seg = hd.seg.segread(fs[1])
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID and (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    assert np.abs(seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])[0, ..., 0] - m).max() <= 0.5/255 + 1e-6
    if DCIODVFY:
        for o in fs: assert dciodvfy_errors(o) == [], o

def test_colour_source_gets_sr_and_seg_but_no_grayscale_ps(tmp_path):
    "An RGB Secondary Capture (pydicom's SC_rgb_small_odd.dcm): SR and SEG written and valid, no GSPS (one line if asked for directly)"
    from fastcam.dicom_out import dicom_outputs, boxes_gsps
    f = pydicom.data.get_testdata_file('SC_rgb_small_odd.dcm')
    src = pydicom.dcmread(f)
    box = [dict(x0=1, y0=0, x1=3, y1=2, prob=0.8, score=0.4, **{'class': 'nodule'})]
    got = dicom_outputs(f, tmp_path/'sr.dcm', tmp_path/'seg.dcm', box, np.full((1, src.Rows, src.Columns), 0.5), ['nodule'], ('nodule', 0.8),
                        gsps_path=tmp_path/'pr.dcm')
    assert set(got) == {'sr', 'seg'} and not (tmp_path/'pr.dcm').exists()
    with pytest.raises(ValueError, match='a grayscale presentation state is for monochrome images; this one is RGB'): boxes_gsps(f, box)
    if DCIODVFY:
        for o in got.values(): assert dciodvfy_errors(o) == [], o
