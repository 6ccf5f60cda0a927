"DICOM outputs read back by other tools: the standard's validator (dciodvfy) on fastcam.synth's files, box sizes in mm against the files' own spacing (pydicom)."
import shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pydicom, pytest, torch
from fastai.vision.all import vision_learner, DataBlock, CategoryBlock, Resize
from PIL import Image
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.items import DicomBlock
from fastcam.cli import tiny_xresnet, run

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

@pytest.fixture(scope='module')
def dicom_run(tmp_path_factory):
    "`fastcam run` (weights of an untrained tiny model) over synthetic DICOMs, one with ImagerPixelSpacing only, one without spacing, and a PNG"
    root = tmp_path_factory.mktemp('dcmout')
    inp = root/'in'
    make_dicom_set(inp, n=4, seed=7, size=(64, 80), folder='dcm')
    make_png_set(inp, n=1, seed=8, size=(64, 80), folder='png')
    ds = pydicom.dcmread(inp/'dcm'/'case_001.dcm')
    del ds.PixelSpacing; ds.ImagerPixelSpacing = ['0.25', '0.5']   # rows 0.25 mm apart, columns 0.5 mm: the order matters
    ds.save_as(inp/'dcm'/'case_001.dcm')
    ds = pydicom.dcmread(inp/'dcm'/'case_002.dcm')
    for k in ('PixelSpacing', 'ImagerPixelSpacing'):
        if k in ds: del ds[k]
    ds.save_as(inp/'dcm'/'case_002.dcm')
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock(vocab=['normal', 'nodule'])), get_y=lambda o: 'normal', item_tfms=Resize(64))
    dls = dblock.dataloaders([Image.new('L', (64, 64))]*2, bs=1, num_workers=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, tiny_xresnet, pretrained=False, n_out=2)
    torch.save(learn.model.state_dict(), root/'w.pth')
    out = root/'out'
    rc = run(str(inp), out=str(out), weights=str(root/'w.pth'), arch='tiny_xresnet', vocab='normal,nodule', size=64, progress=False)
    assert rc == 0
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
